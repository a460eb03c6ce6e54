"""The one place that leans on aioimaplib's insides; the IMAP poller uses only this module's
``Client`` and ``Protocol`` and aioimaplib's public calls.

aioimaplib (2.0) has no STARTTLS and no SASL exchange beyond an initial response: a server
that refuses a bearer token sends its reason as a challenge that must be answered before
its NO (RFC 7628 §3.2.3), and aioimaplib would wait out its timeout instead. Two things here
depend on how the library is built, and ``tests/test_imap_library.py`` pins both:

- ``Protocol._continuation`` overrides a private method: it is where the library hands a
  ``+`` line to the pending command, and the only place to answer a challenge;
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


class Protocol(lib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol plus STARTTLS and SASL challenge answers."""

    transport: Any

    def __init__(self, loop: asyncio.AbstractEventLoop, conn_lost_cb: Any) -> None:
        super().__init__(loop, conn_lost_cb)
        self.sasl_replies: list[bytes] = []
        self.sasl_challenge = ""

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
