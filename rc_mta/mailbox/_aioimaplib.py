"""The one place that leans on aioimaplib's insides; the IMAP poller uses only this module's
``Client`` and ``Protocol`` and aioimaplib's public calls.

aioimaplib (2.0) has no STARTTLS and no SASL exchange beyond an initial response: a server
that refuses a bearer token sends its reason as a challenge that must be answered before
its NO (RFC 7628 §3.2.3), and aioimaplib would wait out its timeout instead. What here
depends on how the library is built, ``tests/test_imap_library.py`` pins:

- ``Protocol._continuation`` overrides a private method: it is where the library hands a
  ``+`` line to the pending command, and the only place to answer a challenge;
- ``Protocol.data_received`` reads the library's ``incomplete_line``: the library joins what
  it holds of an unfinished line to each chunk that arrives and scans it all again, so a
  line that never ends (a broken server) would cost the event loop quadratic time and
  unbounded memory until the command's timeout; the chunks of such a line are held here
  instead, until one can end it, and past ``MAX_LINE`` the connection is dropped;
- ``Protocol._handle_line`` overrides a private method: the library calls it with each
  response line before it reads the literal that line announces (``{N}``, its
  ``literal_data_re``) into memory, however large; a literal over ``max_literal`` (set by
  the poller to what its partial fetch asked for, plus slack) drops the connection there;
- ``Client.create_client`` swaps in ``Protocol`` after the library's own ``create_client``:
  the connection it starts asks ``client.protocol`` for its protocol only once connected.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from typing import Any

from aioimaplib import aioimaplib as lib

from ..logs import TRACE

log = logging.getLogger("rc_mta.mailbox.imap")

# The longest response line taken (a literal, the message itself, is not a line): far more
# than a SEARCH answer for a folder of a million messages.
MAX_LINE = 16 * 1024 * 1024
# Digits of a literal's size worth reading as a number (a 16 MiB line of digits is not).
_SIZE_DIGITS = 18


class Protocol(lib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol plus STARTTLS and SASL challenge answers."""

    transport: Any
    incomplete_line: bytes  # the library's: what it holds of a line not ended yet
    # The largest literal read; the poller lowers it to its partial fetch's size, plus slack.
    max_literal: int = MAX_LINE

    def __init__(self, loop: asyncio.AbstractEventLoop, conn_lost_cb: Any) -> None:
        super().__init__(loop, conn_lost_cb)
        self.sasl_replies: list[bytes] = []
        self.sasl_challenge = ""
        self._held: list[bytes] = []  # chunks of an unfinished line, none of them ending it
        self._held_bytes = 0

    def data_received(self, d: bytes) -> None:
        """Hand the library a chunk once it may end the line the library holds (it holds one
        only outside a literal): each chunk is then joined and scanned once, not again at
        every chunk after it. A line longer than ``MAX_LINE`` drops the connection."""
        if self.incomplete_line and b"\n" not in d:
            self._held.append(d)
            self._held_bytes += len(d)
            if len(self.incomplete_line) + self._held_bytes > MAX_LINE:
                log.warning("imap: the server sent a line longer than %d bytes; dropping the connection", MAX_LINE)
                self._held.clear()
                self._held_bytes = 0
                self.incomplete_line = b""
                self.transport.close()
            return
        if self._held:
            d = b"".join((*self._held, d))
            self._held.clear()
            self._held_bytes = 0
        super().data_received(d)

    def _handle_line(self, line: bytes, current_cmd: Any) -> Any:
        """The library's line handler, unless ``line`` announces a literal over
        ``max_literal``: the library would buffer all of it (a server answered a partial
        fetch of 64 KiB with 8 GiB), so the connection is dropped before it reads a byte more."""
        announced = lib.literal_data_re.match(line)
        if announced is not None:
            size = announced.group("size")
            if len(size) > _SIZE_DIGITS or int(size) > self.max_literal:
                log.warning(
                    "imap: the server announced a literal of %s bytes, over the %d asked for; dropping the connection",
                    size.decode() if len(size) <= _SIZE_DIGITS else f"{len(size)}-digit",
                    self.max_literal,
                )
                self.transport.close()
                return None
        return super()._handle_line(line, current_cmd)

    def _continuation(self, line: bytes) -> None:
        command = self.pending_sync_command
        if command is None or command.name != "AUTHENTICATE":
            super()._continuation(line)
            return
        # Either the server wants the initial response (no SASL-IR), or it refuses a token and
        # sends its reason as a challenge that must be answered before its NO (RFC 7628 §3.2.3).
        challenge = line[1:].strip()
        if challenge:
            try:
                self.sasl_challenge = base64.b64decode(challenge).decode("utf-8", "replace")
            except ValueError:
                self.sasl_challenge = challenge.decode("ascii", "replace")
        reply = self.sasl_replies.pop(0) if self.sasl_replies else b"*"  # "*" cancels (RFC 3501 §6.2.2)
        log.log(TRACE, "imap C: (SASL response, %d bytes)", len(reply))
        self.transport.write(reply + lib.CRLF)

    @lib.change_state  # type: ignore[untyped-decorator]
    async def authenticate(self, mechanism: str, replies: list[bytes], initial: str | None) -> Any:
        """AUTHENTICATE with ``initial`` on the command line (SASL-IR) when given, and
        ``replies`` sent in turn to the server's challenges; the secret is never logged."""
        self.sasl_replies = list(replies)
        self.sasl_challenge = ""
        args = [mechanism] if initial is None else [mechanism, initial]
        command = lib.Command("AUTHENTICATE", self.new_tag(), *args, loop=self.loop)
        response = await self.execute(command, scrub=initial or None)
        if response.result == "OK":
            self.state = lib.AUTH
        return response

    async def starttls(self, host: str, context: ssl.SSLContext) -> Any:
        response = await self.execute(lib.Command("STARTTLS", self.new_tag(), loop=self.loop))
        if response.result == "OK":
            self.transport = await self.loop.start_tls(self.transport, self, context, server_hostname=host)
            await self.capability()  # RFC 3501 §6.2.1: forget what was said before TLS
        return response


class Client(lib.IMAP4):  # type: ignore[misc]
    """aioimaplib's client, speaking through ``Protocol``."""

    protocol: Protocol

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Any = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().create_client(host, port, loop, conn_lost_cb, ssl_context)
        self.protocol = Protocol(loop or asyncio.get_running_loop(), conn_lost_cb)
