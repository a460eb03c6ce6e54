"""aiosmtpd handler hooks: one SMTP stage, one pipeline call, one reply. No policy here."""

from __future__ import annotations

import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from .. import smtp_replies as R
from ..errors import PermanentRefusal, TemporaryFailure
from ..pipeline import Arrival, Decision, Pipeline, Recipient

log = logging.getLogger("rc_mta.inbound")


class ReplyEnvelope(Envelope):
    """aiosmtpd's envelope plus the recipients' verified tokens, in RCPT order."""

    def __init__(self) -> None:
        super().__init__()
        self.recipients: list[Recipient] = []


class ReplyHandler:
    def __init__(self, pipeline: Pipeline, source: str, max_recipients: int) -> None:
        self.pipeline = pipeline
        self.source = source
        self.max_recipients = max_recipients

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # Everything we answer carries an enhanced code; aiosmtpd reads pipelined commands.
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(R.SENDER_OK)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(envelope, ReplyEnvelope)
        if len(envelope.recipients) >= self.max_recipients:
            return str(R.TOO_MANY_RECIPIENTS)
        try:
            recipient = await self.pipeline.check_recipient(address)
        except PermanentRefusal as exc:
            log.info("rcpt refused source=%s peer=%s rcpt=%s reply=%s", self.source, session.peer, address, exc.reply)
            return str(exc.reply)
        except TemporaryFailure as exc:
            log.warning("rcpt deferred rcpt=%s: %s", address, exc)
            return str(R.BACKEND_UNAVAILABLE)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.recipients.append(recipient)
        return str(R.RECIPIENT_OK)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        decisions = await self.decide(session, envelope)
        return str(_one_reply_for_all(decisions))

    async def decide(self, session: Session, envelope: Envelope) -> list[Decision]:
        assert isinstance(envelope, ReplyEnvelope)
        raw = envelope.original_content or b""
        peer = session.peer
        arrival = Arrival(
            source=self.source,
            mail_from=envelope.mail_from,
            client_ip=peer[0] if isinstance(peer, tuple) else None,
            helo=session.host_name,
        )
        return await self.pipeline.handle_message(arrival, raw, envelope.recipients)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is a 500: our own trouble must never bounce a reply.
        log.error("session error: %r", error, exc_info=error)
        return str(R.INTERNAL_ERROR)


class LmtpReplyHandler(ReplyHandler):
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # RFC 2033: one reply per accepted recipient, in RCPT order. aiosmtpd writes
        # whatever we return followed by CRLF, so CRLF-joined lines go out as N replies.
        decisions = await self.decide(session, envelope)
        return "\r\n".join(str(d.reply) for d in decisions)


def _one_reply_for_all(decisions: list[Decision]) -> Any:
    """SMTP has one reply per message: a retry beats a refusal beats success.

    A retry is safe for recipients already acted on: the same Message-ID is recognised
    and answered 250 without acting twice.
    """
    replies = [d.reply for d in decisions] or [R.OK]
    for reply in replies:
        if reply.temporary:
            return reply
    for reply in replies:
        if not reply.accepted:
            return reply
    return replies[0]
