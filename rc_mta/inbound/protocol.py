"""aiosmtpd's SMTP and LMTP servers, with an enhanced status code on every reply."""

from __future__ import annotations

import asyncio
from typing import AnyStr

from aiosmtpd.smtp import SMTP, Envelope, syntax

from .. import smtp_replies as R
from ..config import InboundConfig, parse_host_port
from ..pipeline import Pipeline
from .handler import LmtpReplyHandler, ReplyEnvelope, ReplyHandler

_TOO_BIG_PREFIX = "552 Error:"  # aiosmtpd's words for SIZE= too large and DATA too long


class SmtpServer(SMTP):
    def __init__(self, handler: ReplyHandler, config: InboundConfig) -> None:
        super().__init__(
            handler,
            data_size_limit=config.max_message_size,
            hostname=config.hostname,
            ident="rc-mta",
            timeout=config.timeout,
            enable_SMTPUTF8=True,
            decode_data=False,
        )
        self._size_reply = str(R.MESSAGE_TOO_BIG.with_text(limit=config.max_message_size))

    def _create_envelope(self) -> Envelope:
        return ReplyEnvelope()

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        lines = [
            self._size_reply if line.startswith(_TOO_BIG_PREFIX) else R.with_enhanced_code(line)
            for line in text.split("\r\n")
        ]
        await super().push("\r\n".join(lines))


class LmtpServer(SmtpServer):
    """LMTP (RFC 2033): LHLO instead of HELO/EHLO, one DATA reply per recipient."""

    show_smtp_greeting = False

    def __init__(self, handler: ReplyHandler, config: InboundConfig) -> None:
        super().__init__(handler, config)
        self._data_recipients = 0

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, arg: str) -> None:
        await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:
        await self.push('500 5.5.1 Error: command "HELO" not recognized')

    async def smtp_EHLO(self, arg: str) -> None:
        await self.push('500 5.5.1 Error: command "EHLO" not recognized')

    async def smtp_DATA(self, arg: str) -> None:
        self._data_recipients = len(self.envelope.rcpt_tos) if self.envelope else 0
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_recipients = 0

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        # A DATA failure aiosmtpd answers once (size, line length) is owed to every recipient.
        if self._data_recipients > 1 and not text.startswith("354") and "\r\n" not in text:
            text = "\r\n".join([text] * self._data_recipients)
        await super().push(text)


async def start_listener(pipeline: Pipeline, config: InboundConfig, *, lmtp: bool) -> asyncio.Server:
    """Serve SMTP (or LMTP) on the running loop, at ``listen`` (or ``lmtp_listen``)."""
    host, port = parse_host_port(config.lmtp_listen if lmtp else config.listen)
    handler: ReplyHandler
    if lmtp:
        handler = LmtpReplyHandler(pipeline, "lmtp", config.max_recipients)
    else:
        handler = ReplyHandler(pipeline, "smtp", config.max_recipients)
    server_class = LmtpServer if lmtp else SmtpServer
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: server_class(handler, config), host, port, reuse_address=True)
