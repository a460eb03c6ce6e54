"""The DATA command, read in one pass with bounded work per line.

aiosmtpd's own DATA keeps the message as a list of lines and, after the final dot, walks
that list again to undo dot-stuffing and joins it: for a message of a million bytes in
short lines that is a third of a million objects handled in one step of the event loop,
which stalls every other session for a few hundred milliseconds. Here each line is
appended, unstuffed, to one buffer as it arrives, and nothing is left to do after the dot
but hand the buffer on. Replies and limits are aiosmtpd's: a message over
``data_size_limit`` gets its 552, a line over ``line_length_limit`` its 500, both once the
whole message has been read (RFC 5321 4.2.5).
"""

from __future__ import annotations

import asyncio
import enum
import logging

from aiosmtpd.smtp import SMTP, syntax

from .aiosmtpd_private import new_transaction, stream_reader

# aiosmtpd's protocol logger: at trace (it speaks only then) each DATA line is shown, as
# aiosmtpd's own DATA does; the secret filter masks what needs masking.
protocol_log = logging.getLogger("mail.log")

# aiosmtpd's words for a line or a message too long (the session maps them to ours).
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 Error: Too much mail data"


class _Read(enum.Enum):
    NOMINAL = "nominal"
    LINE_TOO_LONG = "line too long"
    TOO_MUCH = "too much"


class DataReading(SMTP):
    """aiosmtpd's SMTP with DATA read line by line into one buffer."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content, state = await self._read_content()
        if state is _Read.LINE_TOO_LONG:
            await self.push(LINE_TOO_LONG)
        elif state is _Read.TOO_MUCH:
            await self.push(TOO_MUCH_DATA)
        else:
            self.envelope.content = self.envelope.original_content = content
            status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
            new_transaction(self)
            await self.push(status)
            return
        new_transaction(self)

    async def _read_content(self) -> tuple[bytes, _Read]:
        """The message up to the line holding only a dot, unstuffed (RFC 5321 4.5.2)."""
        reader = stream_reader(self)
        limit = self.data_size_limit or 0
        content = bytearray()
        size = 0
        state = _Read.NOMINAL
        in_long_line = False  # the rest of a line the reader could not hold is no end mark
        trace = protocol_log.isEnabledFor(logging.DEBUG)  # asked once: a message has many lines
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
                if trace:
                    protocol_log.debug("DATA readline: %s", line)
            except asyncio.LimitOverrunError as exc:
                size += len(await reader.read(exc.consumed))
                in_long_line = True
                state = _Read.LINE_TOO_LONG if state is _Read.NOMINAL else state
                content = bytearray()  # nothing of it will be used: free it now
                continue
            if line == b".\r\n" and not in_long_line:
                return bytes(content), state
            in_long_line = False
            size += len(line)
            if state is not _Read.NOMINAL:
                continue
            if limit and size > limit:
                state, content = _Read.TOO_MUCH, bytearray()
            elif len(line) > self.line_length_limit:
                state, content = _Read.LINE_TOO_LONG, bytearray()
            elif line[:1] == b".":
                content += memoryview(line)[1:]
            else:
                content += line
