"""Ordered, bounded shutdown of the SMTP/LMTP listeners (STYLE lesson 16, as uvicorn does it).

Each listener keeps a registry of its live sessions (added in ``connection_made``, removed in
``connection_lost``), so shutdown never waits on ``asyncio.Server.wait_closed()``, which on
Python 3.12+ waits for every client however long it stays. A session is *in a transaction*
from its DATA command until the reply to it is written: those may finish within the grace
period; every other session is told ``421 4.3.2`` and closed at once. A session whose
transaction has just ended may still say QUIT (and get its ``221``, which many clients
insist on); any other command gets the 421.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AnyStr

from aiosmtpd.smtp import SMTP

from .. import smtp_replies as R

log = logging.getLogger("rc_mta.inbound")

# After the last 421s: how long closed transports get to flush before they are aborted
# (a client that stopped reading would otherwise keep its socket open).
FLUSH_SECONDS = 1.0
# After the reply to a transaction that ended during shutdown: how long the client has to
# say QUIT before it is told 421 anyway.
QUIT_SECONDS = 1.0


class ClosableSession(SMTP):
    """An aiosmtpd session that registers itself and can be told the service is closing."""

    sessions: Sessions | None = None  # set by the listener that made it
    in_transaction = False
    farewell: str | None = None  # this session's own 421, once it must end (rc_mta/inbound/limits.py)
    _last_call: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.sessions is not None:
            self.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._last_call is not None:
            self._last_call.cancel()
        if self.sessions is not None:
            self.sessions.discard(self)
        super().connection_lost(exc)

    def _service_closing(self) -> bool:
        return self.sessions is not None and self.sessions.closing

    def _closing(self) -> bool:
        return self.farewell is not None or self._service_closing()

    def end(self, reply: str) -> None:
        """This session must end with ``reply`` (a 421): now, or once the reply to its
        transaction is written, as at shutdown."""
        self.farewell = reply
        if not self.in_transaction:
            self.goodbye()

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's DATA reads the message, runs the handler and writes its reply(ies):
        # all of it is the transaction shutdown lets finish.
        self.in_transaction = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_transaction = False
            if self._closing():
                self._last_call = self.loop.call_later(QUIT_SECONDS, self.goodbye)

    async def push(self, status: AnyStr) -> None:
        """While closing, outside a transaction, every answer but QUIT's 221 becomes the 421."""
        text = status if isinstance(status, str) else status.decode(errors="replace")
        if self._closing() and not self.in_transaction and not text.startswith("221"):
            self.goodbye()
            return
        await super().push(status)

    def goodbye(self) -> None:
        """Write the 421 (4.3.2 at shutdown, else this session's farewell) and close: asyncio
        sends what is buffered before closing, and aiosmtpd's ``connection_lost`` ends the
        session's task."""
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        reply = self.farewell
        if reply is None or self._service_closing():
            reply = str(R.SHUTTING_DOWN.with_text(hostname=self.hostname))
        transport.write(f"{reply}\r\n".encode())
        transport.close()

    def abort(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()


class Sessions:
    """The live sessions of one listener."""

    def __init__(self) -> None:
        self.live: set[ClosableSession] = set()
        self.closing = False
        self._all_gone = asyncio.Event()

    def add(self, session: ClosableSession) -> None:
        self.live.add(session)
        self._all_gone.clear()
        if self.closing:  # accepted in the instant before the listener closed
            session.goodbye()

    def discard(self, session: ClosableSession) -> None:
        self.live.discard(session)
        if not self.live:
            self._all_gone.set()

    def in_transaction(self) -> int:
        return sum(session.in_transaction for session in self.live)

    def close_idle(self) -> None:
        """From now on every session ends with 421; those not in a transaction end now."""
        self.closing = True
        for session in list(self.live):
            if not session.in_transaction:
                session.goodbye()

    async def wait_gone(self, timeout: float) -> None:
        """Until every session has ended, or ``timeout`` seconds: never longer."""
        if self.live:
            try:
                await asyncio.wait_for(self._all_gone.wait(), max(0.0, timeout))
            except TimeoutError:
                pass

    async def close_all(self) -> None:
        """The grace period is over: 421 to whoever is left, then cut who does not read it."""
        self.closing = True
        for session in list(self.live):
            session.goodbye()
        await self.wait_gone(FLUSH_SECONDS)
        for session in list(self.live):
            session.abort()


@dataclass
class Listener:
    """One SMTP or LMTP listening socket and the sessions it accepted."""

    server: asyncio.Server
    sessions: Sessions
    protocol: str

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def stop_accepting(self) -> None:
        """Close the listening socket (new connections are refused) and 421 the idle sessions."""
        self.server.close()
        self.sessions.close_idle()

    async def finish(self, timeout: float) -> None:
        """Let transactions under way end within ``timeout`` seconds, then close the rest."""
        await self.sessions.wait_gone(timeout)
        if self.sessions.live:
            log.warning(
                "%s: %d session(s) still open when the shutdown grace period ended: told 421 and closed",
                self.protocol,
                len(self.sessions.live),
            )
        await self.sessions.close_all()
