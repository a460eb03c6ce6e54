"""aiosmtpd handler hooks: one SMTP stage, one pipeline call, one reply. No policy here."""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.proxy_protocol import V2_CMD, ProxyData
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from .. import metrics
from .. import smtp_replies as R
from ..errors import Refusal, TemporaryFailure, TokenForged, TokenKeyRetired, TokenMalformed
from ..pipeline import Decision, Inbound, Pipeline, Recipient
from ..sender_auth import AuthState, Client
from ..tokens import redact_address
from .tls import negotiated

log = logging.getLogger("rc_mta.inbound")


class ReplySession(Session):
    """aiosmtpd's session plus the original client a trusted relay told us about."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.xclient: dict[str, str] = {}
        self.xclient_used = False
        self.proxied = False  # a PROXY header spoke for the client (proxy_ip may be None: unknown)
        self.proxy_ip: str | None = None
        self.bad_recipients = 0


class ReplyEnvelope(Envelope):
    """aiosmtpd's envelope plus this transaction's XFORWARD facts, verdicts and recipients."""

    def __init__(self) -> None:
        super().__init__()
        self.xforward: dict[str, str] = {}
        self.xforward_used = False
        self.auth: AuthState | None = None
        self.recipients: list[Recipient] = []


def _reverse_path(address: str | None) -> str | None:
    """aiosmtpd keeps the null reverse-path of a bounce as "<>"; the checks want ""."""
    return "" if address == "<>" else address


def peer_ip(session: Session) -> str | None:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else None


def original_client(session: Session, envelope: Envelope) -> Client:
    """XFORWARD (this transaction) beats XCLIENT beats PROXY beats the TCP peer."""
    assert isinstance(session, ReplySession) and isinstance(envelope, ReplyEnvelope)
    facts = {**session.xclient, **envelope.xforward}
    relayed = session.xclient_used or envelope.xforward_used or session.proxied
    if session.xclient_used or envelope.xforward_used:
        # A relay spoke for the client: without its ADDR the client is unknown, never the
        # relay itself (which may sit in exempt_networks).
        ip = facts.get("ADDR")
    elif session.proxied:
        # Likewise PROXY UNKNOWN (v1) or LOCAL (v2): unknown, not the load balancer.
        ip = session.proxy_ip
    else:
        ip = peer_ip(session)
    helo = facts.get("HELO") or session.host_name
    return Client(ip=ip, helo=helo, peer_ip=peer_ip(session), relayed=relayed)


class ReplyHandler:
    def __init__(self, pipeline: Pipeline, source: str, max_recipients: int, *, require_tls: bool = False) -> None:
        self.pipeline = pipeline
        self.source = source
        self.max_recipients = max_recipients
        self.require_tls = require_tls  # MAIL only once the session is encrypted

    def connect_refusal(self, ip: str | None) -> R.SmtpReply | None:
        """The connection rate limit of a client at ``ip`` (the TCP peer)."""
        refusal = self.pipeline.sender_auth.at_connect(ip)
        if refusal is None:
            return None
        self.pipeline.count_refusal("connect", refusal)
        return refusal

    def may_relay_facts(self, session: Session) -> bool:
        """Only configured trusted relays may tell us who the original client is."""
        return self.pipeline.sender_auth.is_trusted_relay(peer_ip(session))

    async def handle_PROXY(self, server: SMTP, session: Session, envelope: Envelope, proxy: ProxyData) -> bool:
        if not self.may_relay_facts(session):
            log.warning("PROXY header refused from untrusted %s", peer_ip(session))
            return False
        assert isinstance(session, ReplySession)
        session.proxied = True
        # v1 UNKNOWN and v2 LOCAL carry no client address: the client stays unknown.
        local = proxy.command == V2_CMD.LOCAL
        session.proxy_ip = str(proxy.src_addr) if proxy.src_addr and not local else None
        return True

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # Everything we answer carries an enhanced code; aiosmtpd reads pipelined commands.
        extensions = ["250-ENHANCEDSTATUSCODES", "250-PIPELINING"]
        if self.may_relay_facts(session):
            extensions += [
                "250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN",
                "250-XFORWARD NAME ADDR PORT PROTO HELO SOURCE IDENT",
            ]
        # aiosmtpd offers AUTH once TLS is on; rc-mta has no logins to offer.
        offered = [line for line in responses[:-1] if not line.startswith("250-AUTH")]
        return [*offered, *extensions, responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(envelope, ReplyEnvelope)
        if self.require_tls and negotiated(server.transport) is None:
            self.pipeline.count_refusal("mail", R.TLS_REQUIRED)
            return str(R.TLS_REQUIRED)
        client = original_client(session, envelope)
        try:
            envelope.auth = await self.pipeline.check_sender(client, _reverse_path(address) or "")
        except Exception:
            log.exception("sender checks failed for %s", client.ip)
            return str(R.INTERNAL_ERROR)
        if envelope.auth.refusal is not None:
            refusal = envelope.auth.refusal
            log.info(
                "mail refused",
                extra={
                    "source": self.source,
                    "client": client.ip,
                    "mail_from": address,
                    "reply": str(refusal),
                    "reason": refusal.reason,
                    "checks": {k: v.result for k, v in envelope.auth.verdicts.items()},
                },
            )
            self.pipeline.count_refusal("mail", envelope.auth.refusal)
            return str(envelope.auth.refusal)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(R.SENDER_OK)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(envelope, ReplyEnvelope)
        if len(envelope.recipients) >= self.max_recipients:
            self.pipeline.count_refusal("rcpt", R.TOO_MANY_RECIPIENTS)
            return str(R.TOO_MANY_RECIPIENTS)
        try:
            recipient = await self.pipeline.check_recipient(address)
        except Refusal as exc:
            reply = R.reply_for(exc)
            if isinstance(exc, _FORGED_RECIPIENT) or reply.name == "UNKNOWN_MAILBOX":
                refusal = self._bad_recipient(server, session, envelope)
                if refusal is not None:
                    return str(refusal)
            log.info(
                "rcpt refused",
                extra={
                    "source": self.source,
                    "client": peer_ip(session),
                    "rcpt": address,
                    "reply": str(reply),
                    "reason": reply.reason,
                },
            )
            self.pipeline.count_refusal("rcpt", reply)
            return str(reply)
        except TemporaryFailure as exc:
            log.warning("rcpt deferred: %s", exc, extra={"source": self.source, "rcpt": redact_address(address)})
            return str(R.reply_for(exc))  # the one table: a busy store says so, as a 4xx
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.recipients.append(recipient)
        return str(R.RECIPIENT_OK)

    def _bad_recipient(self, server: SMTP, session: Session, envelope: ReplyEnvelope) -> R.SmtpReply | None:
        """A forged or unknown reply address counts as a failed authentication of the client;
        after a few in one session the session ends (421), so guessing costs reconnects."""
        assert isinstance(session, ReplySession)
        client = original_client(session, envelope)
        self.pipeline.sender_auth.count_failure(client.ip, envelope.auth)
        session.bad_recipients += 1
        limit = self.pipeline.settings.checks.rate_limits.bad_recipients_per_session
        if limit and session.bad_recipients >= limit:
            self.pipeline.count_refusal("rcpt", R.TOO_MANY_BAD_RECIPIENTS)
            transport = server.transport
            if transport is not None:
                # Closed once our 421 is written: asyncio flushes a transport before closing it.
                server.loop.call_soon(transport.close)
            return R.TOO_MANY_BAD_RECIPIENTS
        return None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        decisions = await self.decide(server, session, envelope)
        return str(_one_reply_for_all(decisions))

    async def decide(self, server: SMTP, session: Session, envelope: Envelope) -> list[Decision]:
        assert isinstance(envelope, ReplyEnvelope)
        inbound = Inbound(
            raw=envelope.original_content or b"",
            source=self.source,
            client=original_client(session, envelope),
            tls=negotiated(server.transport),
            mail_from=_reverse_path(envelope.mail_from),
            recipients=tuple(envelope.recipients),
            mail_auth=envelope.auth,
        )
        return await self.pipeline.process(inbound, act=True)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # The client's handshake after STARTTLS failed (no common version or cipher, or
            # it hung up): aiosmtpd closes the connection; nothing of ours went wrong.
            metrics.TLS_HANDSHAKE_FAILURES.labels(self.source).inc()
            log.info("TLS handshake failed: %s", error.__cause__ or error, extra={"source": self.source})
            return str(R.TLS_UNAVAILABLE)  # never sent: the connection is closed
        # aiosmtpd's default is a 500: our own trouble must never bounce a reply.
        log.error("session error: %r", error, exc_info=error)
        return str(R.INTERNAL_ERROR)


class LmtpReplyHandler(ReplyHandler):
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # RFC 2033: one reply per accepted recipient, in RCPT order. aiosmtpd writes
        # whatever we return followed by CRLF, so CRLF-joined lines go out as N replies.
        decisions = await self.decide(server, session, envelope)
        return "\r\n".join(str(d.reply) for d in decisions)


# RCPT refusals that say the address was forged or guessed, not merely out of date.
_FORGED_RECIPIENT = (TokenMalformed, TokenForged, TokenKeyRetired)


def _one_reply_for_all(decisions: list[Decision]) -> R.SmtpReply:
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
