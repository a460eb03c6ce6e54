"""The one path every reply takes, whichever way it arrived (SMTP, LMTP, a mailbox).

Read top to bottom: a recipient is checked when it is named (RCPT), then the message is
judged (``evaluate``: no side effects, also what ``diagnose`` shows), then acted on
(``act``: claim the request, drive the task backend, answer). Refusals are
``PermanentRefusal``; anything that may work later becomes a 4xx so the sender retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses

from . import metrics
from . import smtp_replies as R
from .authresults import strip_forged_authentication_results
from .config import Settings
from .errors import BackendAuthFailed, PermanentRefusal, TemporaryFailure
from .rawmessage import canonical_message
from .replies import (
    DEFAULT_COMPLETE_WORDS,
    DEFAULT_FAIL_WORDS,
    ParsedReply,
    interpret_action,
    parse_reply,
)
from .sender_auth import AuthState, Client, SenderAuth
from .smtp_replies import SmtpReply
from .store import Claim, ClaimOutcome, Request, Store, new_attempt_id
from .tasks import ActionContext, TaskBackend, TaskNotFound, TaskNotInProgress
from .tokens import Action, Signer, Token, redact_address

log = logging.getLogger("rc_mta.pipeline")

# A pending claim older than this belongs to a process that died mid-action.
STALE_CLAIM_SECONDS = 600.0


@dataclass(frozen=True)
class Arrival:
    """What we know about how a message reached us."""

    source: str  # smtp | lmtp | file
    mail_from: str | None  # envelope sender; "" is the null sender <>
    client: Client | None = None  # the original sending host; None when unknown (a saved file)
    auth: AuthState | None = None  # verdicts of the MAIL stage, when there was one
    received_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Recipient:
    """A recipient accepted at RCPT: its verified token and request, or a bare address."""

    address: str
    token: Token | None = None
    request: Request | None = None


@dataclass
class Decision:
    """What the pipeline makes of one message for one recipient."""

    reply: SmtpReply
    would: str  # complete | fail | drop | refuse | already_done | retry
    recipient: Recipient
    token: Token | None = None
    request: Request | None = None
    action: str | None = None
    comment: str = ""
    auto_reply: str | None = None
    checks: dict[str, dict[str, str]] = field(default_factory=dict)
    authentication_results: str = ""


@dataclass(frozen=True)
class MailboxOutcome:
    """What a poller does with a message: processed | rejected | retry (leave it)."""

    disposition: str
    decisions: list[Decision]
    message_id: str

    @property
    def reason(self) -> str:
        return "; ".join(str(d.reply) for d in self.decisions)


_PAST = {"complete": "completed", "fail": "failed"}


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        signer: Signer,
        backend: TaskBackend,
        sender_auth: SenderAuth,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sender_auth = sender_auth
        self._inflight: set[asyncio.Future[Decision]] = set()

        self.store = store
        self.signer = signer
        self.backend = backend
        self.clock = clock
        self.complete_words: Sequence[str] = settings.replies.complete_words or DEFAULT_COMPLETE_WORDS
        self.fail_words: Sequence[str] = settings.replies.fail_words or DEFAULT_FAIL_WORDS

    async def drain(self, timeout: float) -> None:
        """At shutdown: let task actions under way finish (they are shielded from cancellation)."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)

    # MAIL ------------------------------------------------------------------------------

    async def check_sender(self, client: Client, mail_from: str) -> AuthState:
        """Who is sending: rate limits, FCrDNS, SPF, whitelist (``sender_auth`` applies policy)."""
        return await self.sender_auth.at_mail(client, mail_from)

    def count_refusal(self, stage: str, reply: SmtpReply) -> None:
        metrics.REJECTIONS.labels(stage, reply.reason).inc()

    # RCPT ------------------------------------------------------------------------------

    async def check_recipient(self, address: str) -> Recipient:
        """Accept only our reply domain and only a well-formed, signed, live token."""
        local, _, domain = address.rpartition("@")
        inbound = self.settings.inbound
        if domain.lower().rstrip(".") != inbound.reply_domain:
            raise PermanentRefusal(R.NOT_OUR_DOMAIN.with_text(domain=domain or "(none)"))
        base, plus, token_text = local.partition("+")
        if base.lower() != inbound.local_part:
            raise PermanentRefusal(R.UNKNOWN_MAILBOX)
        if not plus:
            # A client that dropped the +token: the token is looked for in the message.
            return Recipient(address)
        token, request = await self.verify_token(token_text)
        return Recipient(address, token, request)

    async def verify_token(self, token_text: str) -> tuple[Token, Request]:
        token = self.signer.decode(token_text)
        request = await asyncio.to_thread(self.store.get_request, token.request_id)
        if request is None:
            # Never issued here (or deleted): the same answer as a forged signature.
            raise PermanentRefusal(R.TOKEN_INVALID)
        self.signer.verify(token, request.owner, self.clock())
        if request.revoked_at is not None:
            raise PermanentRefusal(R.TOKEN_REVOKED)
        return token, request

    # DATA ------------------------------------------------------------------------------

    async def handle_message(self, arrival: Arrival, raw: bytes, recipients: Sequence[Recipient]) -> list[Decision]:
        """Judge and act on one message for each recipient; one decision per recipient."""
        metrics.MESSAGES_RECEIVED.labels(arrival.source).inc()
        try:
            # Off the loop: a large message must not stall every other session while it parses.
            raw, parsed = await asyncio.to_thread(read_message, raw, arrival.mail_from)
        except PermanentRefusal as exc:
            return await self._refuse_unreadable(arrival, raw, recipients, exc.reply)
        message_id = parsed.message_id or _synthetic_message_id(raw)
        auth = await self.authenticate(arrival, raw, parsed)
        decisions = []
        for recipient in recipients:
            decision = await self.decide(parsed, message_id, recipient, auth, act=True, source=arrival.source)
            await self._record(arrival, message_id, decision)
            decisions.append(decision)
            if decision.would in ("complete", "fail"):
                metrics.REPLY_TO_COMPLETION.labels(arrival.source).observe(time.monotonic() - arrival.received_at)
        if self.settings.inbound.archive_dir and any(d.reply.accepted for d in decisions):
            await asyncio.to_thread(self._archive, raw, self.sender_auth.authentication_results(auth), message_id)
        return decisions

    async def _refuse_unreadable(
        self, arrival: Arrival, raw: bytes, recipients: Sequence[Recipient], reply: SmtpReply
    ) -> list[Decision]:
        """A message the parsers could read two ways: refused whole, for every recipient."""
        decisions = [Decision(reply, "refuse", recipient) for recipient in recipients or [Recipient("(none)")]]
        for decision in decisions:
            await self._record(arrival, _synthetic_message_id(raw), decision)
        return decisions

    def _archive(self, raw: bytes, authentication_results: str, message_id: str) -> None:
        """Keep an accepted reply for audit, stamped with our verdicts; forged stamps removed."""
        directory = self.settings.inbound.archive_dir
        assert directory is not None
        name = f"{int(self.clock() * 1000)}-{hashlib.sha256(message_id.encode()).hexdigest()[:16]}.eml"
        stamped = (
            f"Authentication-Results: {authentication_results}\r\n".encode()
            + strip_forged_authentication_results(raw, self.settings.authserv_id)
        )
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(stamped)
        except OSError as exc:
            log.error("could not archive %s in %s: %s", message_id, directory, exc)

    async def handle_mailbox_message(self, raw: bytes, source: str, trusted_ids: Sequence[str]) -> MailboxOutcome:
        """The same path for a message read from a mailbox: its disposition tells the poller
        to file it as processed, as rejected, or to leave it for the next round."""
        arrival = Arrival(source=source, mail_from=None)
        metrics.MESSAGES_RECEIVED.labels(source).inc()
        try:
            raw, parsed = await asyncio.to_thread(read_message, raw, _return_path(raw))
        except PermanentRefusal as exc:
            refused = await self._refuse_unreadable(arrival, raw, [Recipient("(mailbox)")], exc.reply)
            return MailboxOutcome("rejected", refused, _synthetic_message_id(raw))
        message_id = parsed.message_id or _synthetic_message_id(raw)
        recipients, decisions = await self.recipients_from_headers(parsed)
        auth = await self.sender_auth.at_mailbox(raw, _return_path(raw), parsed.from_address, trusted_ids)
        for recipient in recipients:
            decision = await self.decide(parsed, message_id, recipient, auth, act=True, source=source)
            if decision.would in ("complete", "fail"):
                metrics.REPLY_TO_COMPLETION.labels(source).observe(time.monotonic() - arrival.received_at)
            decisions.append(decision)
        for decision in decisions:
            await self._record(arrival, message_id, decision)
        if any(d.reply.temporary for d in decisions):
            disposition = "retry"
        elif any(d.reply.accepted for d in decisions):
            disposition = "processed"
        else:
            disposition = "rejected"
        return MailboxOutcome(disposition, decisions, message_id)

    async def recipients_from_headers(self, parsed: ParsedReply) -> tuple[list[Recipient], list[Decision]]:
        """Without an SMTP envelope (a mailbox, a saved file): the reply addresses of ours the
        message names, checked as at RCPT, once per request; refused ones as decisions.
        Naming none, it is the bare address: the token is looked for in the message."""
        recipients: list[Recipient] = []
        refused: list[Decision] = []
        seen: set[str] = set()
        for address in our_addresses(parsed.message, self.settings.inbound.reply_domain):
            try:
                recipient = await self.check_recipient(address)
            except PermanentRefusal as exc:
                refused.append(Decision(exc.reply, "refuse", Recipient(address), comment=parsed.comment))
                continue
            except TemporaryFailure:
                refused.append(Decision(R.BACKEND_UNAVAILABLE, "retry", Recipient(address)))
                continue
            key = recipient.request.id if recipient.request else address.lower()
            if key not in seen:
                seen.add(key)
                recipients.append(recipient)
        if not recipients and not refused:
            recipients.append(Recipient("(bare address)"))
        return recipients, refused

    async def authenticate(self, arrival: Arrival, raw: bytes, parsed: ParsedReply) -> AuthState:
        """The DATA-stage checks (DKIM, DMARC, From whitelist, From authenticated)."""
        client = arrival.client or Client(ip=None, helo=None)
        state = arrival.auth
        if state is None:
            if client.ip is None:
                # Judging a saved file with no SMTP facts: only what the message itself proves.
                state = AuthState()
            else:
                state = await self.sender_auth.at_mail(client, arrival.mail_from or "")
        try:
            return await self.sender_auth.at_data(client, arrival.mail_from, raw, parsed.from_address, state)
        except Exception:
            log.exception("sender authentication failed")
            state.refusal = R.INTERNAL_ERROR
            return state

    async def evaluate(
        self, parsed: ParsedReply, message_id: str, recipient: Recipient, auth: AuthState, *, acting: bool = False
    ) -> Decision:
        """Everything short of acting: whose reply, which request, what action, what comment."""
        if parsed.auto_reply:
            return Decision(
                R.AUTO_REPLY_DROPPED.with_text(why=parsed.auto_reply), "drop", recipient, auto_reply=parsed.auto_reply
            )
        checks = {name: verdict.as_json() for name, verdict in auth.verdicts.items()}
        authentication_results = self.sender_auth.authentication_results(auth)
        if auth.refusal is not None:
            would = "retry" if auth.refusal.temporary else "refuse"
            return Decision(
                auth.refusal,
                would,
                recipient,
                checks=checks,
                comment=parsed.comment,
                authentication_results=authentication_results,
            )
        token, request = (recipient.token, recipient.request)
        if token is None or request is None:
            token, request = await self._token_from_message(parsed)
        decision = Decision(
            R.OK,
            "refuse",
            recipient,
            token,
            request,
            comment=parsed.comment,
            checks=checks,
            authentication_results=authentication_results,
        )

        sender = parsed.from_address
        owner_ok = sender is not None and sender == request.owner.lower()
        decision.checks["owner"] = {
            "result": "pass" if owner_ok else "fail",
            "from": sender or "",
            "owner": request.owner,
        }
        if not owner_ok:
            decision.reply = R.OWNER_MISMATCH.with_text(sender=sender or "an unknown sender", owner=request.owner)
            return decision
        owner_auth = auth.verdicts.get("owner_auth")
        if self.settings.checks.owner_auth.required and not auth.exempt:
            if owner_auth is not None and owner_auth.temporary:
                decision.reply, decision.would = R.AUTH_TEMPERROR, "retry"
                return decision
            if owner_auth is None or owner_auth.result != "pass":
                decision.reply = R.OWNER_NOT_AUTHENTICATED.with_text(owner=request.owner)
                return decision
            # "For what": what authenticated the message must also tie it to this request.
            proof = auth.binds(token.text)
            decision.checks["binding"] = {
                "result": "pass" if proof else "fail",
                "via": f"{proof.method} {proof.domain}" if proof else "",
            }
            if proof is None:
                domains = ", ".join(dict.fromkeys(p.domain for p in auth.proofs))
                decision.reply = R.NOT_BOUND_TO_REQUEST.with_text(domain=domains or request.owner)
                return decision

        # Acting, the claim itself says whether the request was answered: no extra read.
        claim = await asyncio.to_thread(self.store.get_claim, request.id) if not acting else None
        if claim is not None and claim.done:
            if claim.message_id == message_id:
                decision.reply = R.ALREADY_DONE.with_text(task_id=request.task_id, action_past=_PAST[claim.action])
                decision.would, decision.action = "already_done", claim.action
                return decision
            raise PermanentRefusal(R.TOKEN_USED.with_text(task_id=request.task_id, action_past=_PAST[claim.action]))

        if token.action is Action.REPLY:
            decision.action = interpret_action(parsed.comment, self.complete_words, self.fail_words)
            if decision.action is None:
                raise PermanentRefusal(R.ACTION_UNCLEAR)
        else:
            decision.action = token.action.label
        decision.would = decision.action
        decision.reply = R.TASK_ACTED.with_text(task_id=request.task_id, action_past=_PAST[decision.action])
        return decision

    async def act(self, decision: Decision, message_id: str, actor: str, source: str) -> Decision:
        """Claim the request for this attempt, then drive the backend; answer only after.

        The attempt has its own claim identity: a copy of this message delivered at the
        same moment elsewhere holds a claim that is not ours (451), and only our own claim
        is finished or given back.
        """
        request, action = decision.request, decision.action
        if decision.would not in ("complete", "fail") or request is None or action is None:
            return decision
        attempt = new_attempt_id()
        outcome, claim = await asyncio.to_thread(
            self.store.claim, request.id, attempt, message_id, action, actor, self.clock(), STALE_CLAIM_SECONDS
        )
        if outcome is ClaimOutcome.REVOKED:
            raise PermanentRefusal(R.TOKEN_REVOKED)
        if outcome is not ClaimOutcome.OURS:
            return _not_ours(decision, request, message_id, outcome, claim)
        try:
            context = ActionContext(
                request.id, message_id, source, {name: v["result"] for name, v in decision.checks.items()}
            )
            await self._drive_backend(action, request.task_id, decision.comment, actor, context)
        except TaskNotInProgress as exc:
            task = exc.task
            if task.acted_by == actor and task.status == _PAST[action]:
                # Our own earlier attempt acted but lost its answer: finish, don't refuse.
                pass
            else:
                await asyncio.to_thread(self.store.release_claim, request.id, attempt)
                by = f" by {task.acted_by}" if task.acted_by else ""
                raise PermanentRefusal(
                    R.TASK_NOT_IN_PROGRESS.with_text(task_id=task.id, status=task.status, by=by)
                ) from None
        except TaskNotFound:
            await asyncio.to_thread(self.store.release_claim, request.id, attempt)
            raise PermanentRefusal(R.TASK_NOT_FOUND.with_text(task_id=request.task_id)) from None
        except BaseException:
            try:
                await asyncio.to_thread(self.store.release_claim, request.id, attempt)
            except TemporaryFailure:
                pass  # the claim goes stale and is taken over later
            raise
        if not await asyncio.to_thread(self.store.finish_claim, request.id, attempt, self.clock()):
            log.error(
                "request %s: acted, but the claim was taken over as stale meanwhile (the action took over %ss)",
                request.id,
                STALE_CLAIM_SECONDS,
            )
        metrics.TASKS_ACTED.labels(self.backend.name, action).inc()
        return decision

    # Helpers ---------------------------------------------------------------------------

    async def _drive_backend(self, action: str, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        """One backend call, timed and counted; the backend's own refusals pass through."""
        name = self.backend.name
        started = time.monotonic()
        try:
            if action == "complete":
                await self.backend.complete(task_id, comment, actor, context)
            else:
                await self.backend.fail(task_id, comment, actor, context)
        except (TaskNotInProgress, TaskNotFound, PermanentRefusal):
            raise
        except BackendAuthFailed:
            metrics.BACKEND_ERRORS.labels(name, "auth").inc()
            raise
        except TemporaryFailure:
            metrics.BACKEND_ERRORS.labels(name, "temporary").inc()
            raise
        except Exception:
            metrics.BACKEND_ERRORS.labels(name, "error").inc()
            raise
        finally:
            metrics.BACKEND_LATENCY.labels(name, action).observe(time.monotonic() - started)

    async def decide(
        self, parsed: ParsedReply, message_id: str, recipient: Recipient, auth: AuthState, *, act: bool, source: str
    ) -> Decision:
        """Evaluate (and, if ``act``, act); refusals and trouble become a 5xx or 4xx decision."""
        try:
            decision = await self.evaluate(parsed, message_id, recipient, auth, acting=act)
            if not act:
                return decision
            # Shielded: a sender hanging up (or a poller's worker cancelled) must not stop an
            # action half way; shutdown waits for it in ``drain``.
            action = asyncio.ensure_future(self.act(decision, message_id, parsed.from_address or "", source))
            self._inflight.add(action)
            action.add_done_callback(self._inflight.discard)
            return await asyncio.shield(action)
        except PermanentRefusal as exc:
            return Decision(exc.reply, "refuse", recipient, recipient.token, recipient.request, comment=parsed.comment)
        except BackendAuthFailed as exc:
            log.error("task backend refused our credentials: %s (fix [tasks] config)", exc)
            return Decision(R.BACKEND_AUTH_FAILED, "retry", recipient, comment=parsed.comment)
        except TemporaryFailure as exc:
            log.warning("temporary failure for %s: %s", redact_address(recipient.address), exc)
            return Decision(R.BACKEND_UNAVAILABLE, "retry", recipient, comment=parsed.comment)
        except Exception:
            log.exception("unexpected error handling a reply to %s", redact_address(recipient.address))
            return Decision(R.INTERNAL_ERROR, "retry", recipient, comment=parsed.comment)

    async def _token_from_message(self, parsed: ParsedReply) -> tuple[Token, Request]:
        """For a bare ``rc@`` address: the decide-from-reply token of the request, from
        In-Reply-To/References, else the quoted request's metadata block.

        Only that token counts: the quoted request also shows the Complete and Fail
        addresses, and their fixed actions must never stand in for what the person wrote.
        """
        for candidate in [*parsed.referenced_ids, parsed.text]:
            for text in self.sender_auth.addresses.tokens_in(candidate):
                try:
                    token = self.signer.decode(text)
                except PermanentRefusal:
                    continue
                if token.action is Action.REPLY:
                    return await self.verify_token(text)
        raise PermanentRefusal(R.NO_TOKEN)

    async def _record(self, arrival: Arrival, message_id: str, decision: Decision) -> None:
        request_id = decision.request.id if decision.request else None
        try:
            await asyncio.to_thread(
                self.store.record_processed,
                message_id,
                request_id,
                arrival.source,
                decision.reply.name,
                decision.reply.code,
                self.clock(),
            )
        except TemporaryFailure as exc:
            log.warning("could not record processed message %s: %s", message_id, exc)
        if not decision.reply.accepted:
            self.count_refusal("mailbox" if arrival.source in ("imap", "graph") else "data", decision.reply)
        if decision.would == "drop" and decision.auto_reply:
            report = decision.auto_reply == "null sender" or decision.auto_reply.endswith(" report")
            kind = "delivery_report" if report else "auto_reply"
            metrics.AUTO_REPLIES_DROPPED.labels(kind).inc()
        # One line per message and recipient: who, which task, verdicts, answer.
        log.info(
            "reply %s",
            decision.would,
            extra={
                "source": arrival.source,
                "client": arrival.client.ip if arrival.client else None,
                "mail_from": arrival.mail_from,
                "rcpt": redact_address(decision.recipient.address),
                "request": request_id,
                "task": decision.request.task_id if decision.request else None,
                "would": decision.would,
                "reply": str(decision.reply),
                "reason": decision.reply.reason,
                "auth": decision.authentication_results,
            },
        )


def _not_ours(
    decision: Decision, request: Request, message_id: str, outcome: ClaimOutcome, claim: Claim | None
) -> Decision:
    """The answer when another attempt holds the claim: answered already (by this message:
    250, by another: refused), or still being answered (451, the sender retries)."""
    assert claim is not None
    if outcome is ClaimOutcome.DONE:
        if claim.message_id != message_id:
            raise PermanentRefusal(R.TOKEN_USED.with_text(task_id=request.task_id, action_past=_PAST[claim.action]))
        decision.reply = R.ALREADY_DONE.with_text(task_id=request.task_id, action_past=_PAST[claim.action])
        decision.would = "already_done"
        return decision
    log.info("request %s is being answered by another attempt (message %s)", request.id, claim.message_id)
    decision.reply = R.MESSAGE_IN_PROGRESS if claim.message_id == message_id else R.REQUEST_IN_PROGRESS
    decision.would = "retry"
    return decision


def our_addresses(message: EmailMessage, reply_domain: str) -> list[str]:
    """The reply addresses of ours a message was sent to, as the delivering server recorded them."""
    headers = [str(v) for name in ("Delivered-To", "X-Original-To", "To", "Cc") for v in message.get_all(name, [])]
    return [addr for _, addr in getaddresses(headers) if addr.lower().endswith("@" + reply_domain)]


def _return_path(raw: bytes) -> str | None:
    """The envelope sender the final server recorded; "" for a bounce's <>."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    for line in head.splitlines():
        if line[:12].lower() == b"return-path:":
            value = line[12:].decode("utf-8", "replace").strip().strip("<>").strip()
            return value
    return None


def _synthetic_message_id(raw: bytes) -> str:
    """A stable id for a message without Message-ID, so its retries are recognised."""
    return f"<sha256.{hashlib.sha256(raw).hexdigest()[:32]}@rc-mta.invalid>"


def read_message(raw: bytes, envelope_sender: str | None) -> tuple[bytes, ParsedReply]:
    """The bytes DKIM and the reader both see, and what they say (blocking: off the loop)."""
    raw = canonical_message(raw)
    return raw, parse_reply(raw, envelope_sender=envelope_sender)
