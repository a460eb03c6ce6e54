"""The one path every reply takes, whichever door it came through.

SMTP, LMTP, the IMAP and Graph pollers and ``rc-mta diagnose`` each build one ``Inbound``
(the raw message, the connection facts or none, the recipients or none) and call
``Pipeline.process``. Read top to bottom: the bytes are read once (``read_message``), the
recipients found, the sender authenticated (SMTP facts, or a mailbox's trusted stamps),
each recipient judged (``evaluate``: no side effects), acted on when asked (``act``: claim
the request, drive the task backend), and only then recorded, counted, archived and
logged (``_after``), the same way for every door. So ``diagnose`` answers what the live
path would, by construction. Anything that may work later is a 4xx: the sender retries.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from email.message import Message
from email.utils import formatdate, getaddresses
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import budget, metrics
from . import smtp_replies as R
from .authresults import strip_forged_authentication_results
from .checks import ExchangeOnlineTrust
from .checks.binding import others_addressed, tokens_addressed
from .checks.framing import unread_framing
from .checks.owner import sent_on_behalf
from .config import Settings
from .errors import (
    ActionNotRecorded,
    ActionOutcomeUnknown,
    BackendAuthFailed,
    BackendOutcomeUnknown,
    DecisionMade,
    DecisionPending,
    EarlierAnswerOutcomeUnknown,
    MessageRefused,
    NotInApprovalGroup,
    RcMtaError,
    ReaderBusy,
    Refusal,
    RefusedInDoubt,
    RequestAnswered,
    RequestRevoked,
    SiblingOutcomeUnknown,
    TaskNotFound,
    TaskNotInProgress,
    TemporaryFailure,
    TokenExpired,
    TokenForged,
)
from .rawmessage import canonical_message, measured_message
from .reading import (
    DEFAULT_COMPLETE_WORDS,
    DEFAULT_FAIL_WORDS,
    ParsedReply,
    answer_of,
    contradicts,
    interpret_action,
    parse_reply,
)
from .reading.message import typed_subject
from .sender_auth import AuthState, Client, SenderAuth
from .smtp_replies import SmtpReply
from .store import (
    COMPLETED,
    FAILED,
    STALE_CLAIM_SECONDS,
    Answer,
    ApprovalGroup,
    ApprovalStanding,
    Claim,
    ClaimOutcome,
    GroupState,
    ReadWouldWait,
    Request,
    Store,
    new_attempt_id,
)
from .tasks import ActionContext, EmbeddedBackend, TaskBackend, reads_tasks
from .tokens import Action, Signer, Token, redact_address

if TYPE_CHECKING:
    from .inbound.tls import TlsFacts

log = logging.getLogger("rc_mta.pipeline")

# A HELO name fit to stand in our Received field (anything else shows as "unknown").
_TRACE_NAME = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")
# Owners of the requests whose tokens verified lately (an id and an address each).
OWNERS_KEPT = 10_000
# Recording an action that happened (finishing its claim) is tried again after these pauses
# while the sender waits: a store down for a moment costs seconds, not a 451.
FINISH_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)
# Attempts that acted but could not record it, remembered for the sender's retry.
UNRECORDED_KEPT = 10_000

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class _Recent(Generic[K, V]):
    """The last ``size`` values put, by key (least recently used dropped first)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)


def _same_answer(decision: Decision, claim: Claim, actor: str) -> bool:
    """Whether ``claim`` was taken by this very answer (message, action), from this very sender."""
    action = decision.action
    return action is not None and claim.message_id == decision.message_id and claim.same_answer(action.value, actor)


class Outcome(enum.Enum):
    """What a message comes to, for one recipient."""

    COMPLETE = "complete"
    FAIL = "fail"
    DROP = "drop"  # machine mail: accepted and discarded
    APPROVE = "approve"  # N of M: the approval is counted, the task waits for more
    REFUSE = "refuse"
    ALREADY_DONE = "already_done"  # this very message acted before (a retry)
    RETRY = "retry"  # a 4xx: the sender (or the poller) tries again


class TaskAction(enum.Enum):
    COMPLETE = "complete"
    FAIL = "fail"

    @property
    def past(self) -> str:
        return "completed" if self is TaskAction.COMPLETE else "failed"


@dataclass(frozen=True)
class Recipient:
    """A recipient accepted at RCPT: its verified token and request, or a bare address."""

    address: str
    token: Token | None = None
    request: Request | None = None


@dataclass(frozen=True)
class Inbound:
    """One message at one door: all that differs between SMTP, LMTP, a mailbox and diagnose.

    ``client`` is the sending host as the SMTP session knew it; without one (a mailbox), the
    sender is judged by the stamps of the receivers in ``trusted_ids`` and by DKIM, and, for a
    mailbox Exchange Online hosts whose admin trusts it, by Exchange Online's (``exchange_online``).
    ``recipients`` are those accepted at RCPT; without them, they are found in the headers.
    """

    raw: bytes
    source: str  # smtp | lmtp | imap | graph | file
    client: Client | None = None
    mail_from: str | None = None  # envelope sender; "" is the null sender <>
    recipients: tuple[Recipient, ...] | None = None
    mail_auth: AuthState | None = None  # the MAIL stage's verdicts, when it already ran
    trusted_ids: tuple[str, ...] = ()
    exchange_online: ExchangeOnlineTrust | None = None
    received_at: float = field(default_factory=time.monotonic)
    tls: TlsFacts | None = None  # what the SMTP/LMTP session negotiated; None: in clear


@dataclass(frozen=True)
class Decision:
    """What the pipeline makes of one message for one recipient: always the verdicts and the
    Authentication-Results with it, whichever way it ends."""

    reply: SmtpReply
    outcome: Outcome
    recipient: Recipient
    token: Token | None = None
    request: Request | None = None
    action: TaskAction | None = None
    comment: str = ""
    auto_reply: str | None = None
    checks: dict[str, dict[str, str]] = field(default_factory=dict)
    authentication_results: str = ""
    message_id: str = ""
    recorded: bool = False  # processed_messages has it already (written with the action)
    group: ApprovalGroup | None = None  # N of M: the group this answer decides in, with others
    # Judged without reading how the task's N-of-M groups stand (``evaluate``, acting on a
    # task in the store): ``act`` tries ``Store.answer_at_once``, which asks it as it writes.
    groups_unread: bool = False


@dataclass(frozen=True)
class MailboxOutcome:
    """What a poller does with a message: processed | rejected | retry (leave it)."""

    disposition: str
    decisions: list[Decision]
    message_id: str

    @classmethod
    def of(cls, decisions: list[Decision]) -> MailboxOutcome:
        if any(d.reply.temporary for d in decisions):
            disposition = "retry"
        elif any(d.reply.accepted for d in decisions):
            disposition = "processed"
        else:
            disposition = "rejected"
        return cls(disposition, decisions, decisions[0].message_id if decisions else "")

    @property
    def reason(self) -> str:
        return "; ".join(str(d.reply) for d in self.decisions)


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
        # Reading a message (and verifying its DKIM) runs in a pool of its own, within limits.
        self.limits = budget.Limits.of(settings.inbound)
        self.reader = budget.configure(settings.inbound.parse_workers, settings.inbound.parse_queue)

        self.store = store
        self.signer = signer
        self._owners = _Recent[str, str](OWNERS_KEPT)
        # Request id -> the attempt that acted on it here but could not record it (``_finish``).
        self._unrecorded = _Recent[str, str](UNRECORDED_KEPT)
        # Attempts whose POST got no answer and that kept their claim (the webhook): request
        # id -> attempt. The very same answer, sent again, posts again as that attempt.
        self._unanswered = _Recent[str, str](UNRECORDED_KEPT)
        self.backend = backend
        # Tasks in this very store: claim, task, comment and record go in one transaction.
        self._acts_in_store = isinstance(backend, EmbeddedBackend) and backend.keeps_tasks_in(store)
        # A backend that cannot read a task (the webhook): rc-mta's record of its other requests
        # stands in, and an N-of-M decision whose attempt died is never taken back by another
        # request's answer (``Store.count_approval``'s ``take_back_stale``): whether it acted is unknown.
        self._reads_tasks = reads_tasks(backend)
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
        metrics.count_rejection(stage, reply.reason)

    # RCPT ------------------------------------------------------------------------------

    async def check_recipient(self, address: str) -> Recipient:
        """Accept only our reply domain and only a well-formed, signed, live token."""
        local, _, domain = address.rpartition("@")
        inbound = self.settings.inbound
        if domain.lower().rstrip(".") != inbound.reply_domain:
            raise MessageRefused(R.NOT_OUR_DOMAIN.with_text(domain=domain or "(none)"))
        base, plus, token_text = local.partition("+")
        if base.lower() != inbound.local_part:
            raise MessageRefused(R.UNKNOWN_MAILBOX)
        if not plus:
            # A client that dropped the +token: the token is looked for in the message.
            return Recipient(address)
        token, request = await self.verify_token(token_text)
        return Recipient(address, token, request)

    async def _request_named(self, address: str) -> Request | None:
        """The request a reply address of ours names, read without judging it (None when
        the store cannot say now)."""
        try:
            token = self.signer.decode(address.rpartition("@")[0].partition("+")[2])
            return await self._read_by_key(self.store.get_request, token.request_id)
        except (Refusal, TemporaryFailure):
            return None

    async def verify_token(self, token_text: str) -> tuple[Token, Request]:
        token = self.signer.decode(token_text)
        if (owner := self._owners.get(token.request_id)) is not None:
            # A request's owner never changes: a forged MAC is refused without a store read.
            self.signer.verify(token, owner, self.clock())
        request = await self._read_by_key(self.store.get_request, token.request_id)
        if request is None:
            # Never issued here (or deleted): the same answer as a forged signature.
            raise TokenForged(f"request {token.request_id} was never issued here")
        self.signer.verify(token, request.owner, self.clock())
        self._owners.put(request.id, request.owner)
        if request.revoked_at is not None:
            now_with = await asyncio.to_thread(self.store.handover_of, request.id)
            raise RequestRevoked(f"request {request.id} was withdrawn", now_with)
        return token, request

    async def _read_by_key(self, read: Callable[..., T], *args: Any) -> T:
        """A read of the store by key, on every reply's path. On a SQLite file it runs here on
        the loop, where it costs less than the thread hop (``Store.reads_on_loop``): in WAL
        mode it waits for no writer; one that would wait for a lock all the same is read in a
        thread. Writes, and every PostgreSQL statement (a network round trip), stay in threads."""
        if self.store.reads_on_loop:
            try:
                return read(*args, waits=False)
            except ReadWouldWait:
                pass
        return await asyncio.to_thread(read, *args)

    # DATA: one entry for every door ---------------------------------------------------

    async def process(self, inbound: Inbound, *, act: bool) -> list[Decision]:
        """Judge one message for each recipient (and act, if ``act``): one decision each.

        Without ``act`` (``diagnose``) nothing is claimed, recorded or counted.
        """
        if act:
            metrics.MESSAGES_RECEIVED.labels(inbound.source).inc()
        envelope_sender = inbound.mail_from
        if inbound.client is None:  # a mailbox's message: the final server recorded it
            envelope_sender = _return_path(inbound.raw, self.limits.header_bytes)
        try:
            raw, parsed, light = await self._read(inbound.raw, envelope_sender)
        except ReaderBusy:
            if act:
                self.count_refusal("mailbox" if inbound.client is None else "data", R.READER_BUSY)
            return [Decision(R.READER_BUSY, Outcome.RETRY, r) for r in _named(inbound)]
        except MessageRefused as exc:
            message_id = _synthetic_message_id(inbound.raw)
            unread = [Decision(exc.reply, Outcome.REFUSE, r, message_id=message_id) for r in _named(inbound)]
            if act:
                await self._after(inbound, inbound.raw, unread)
            return unread
        message_id = parsed.message_id or _synthetic_message_id(raw)
        decisions: list[Decision]
        if inbound.recipients is not None:
            recipients, decisions = list(inbound.recipients), []
        else:
            recipients, decisions = await self.recipients_from_headers(parsed, message_id)
        auth = await self.authenticate(inbound, raw, parsed, envelope_sender, light)
        if decisions:  # refused at the address: they carry the verdicts too, as every decision does
            results = self.sender_auth.authentication_results(auth)
            decisions = [
                replace(d, checks={n: v.as_json() for n, v in auth.verdicts.items()}, authentication_results=results)
                for d in decisions
            ]
        both = _both_buttons(recipients)  # LMTP: the envelope may name both where To/Cc do not
        for recipient in recipients:
            if recipient.request is not None and recipient.request.id in both:
                refusal = R.BOTH_BUTTONS.with_text(task_id=recipient.request.task_id)
                decisions.append(self._judged(parsed, message_id, recipient, auth, refusal, Outcome.REFUSE))
                continue
            decisions.append(await self.decide(parsed, message_id, recipient, auth, act=act, source=inbound.source))
        if act:
            await self._after(inbound, raw, decisions)
        return decisions

    async def _read(self, raw: bytes, envelope_sender: str | None) -> tuple[bytes, ParsedReply, bool]:
        """The message read once: a small, plain one (``budget.Cost.light``) here on the loop,
        where it costs less than a thread hop; any other in the reading pool, where store calls
        keep their own threads, and a pool with a queue already answers 451 now rather than
        make the sender wait. The flag says which, so DKIM verification follows suit.

        Over ``[inbound] max_message_size`` it is refused unread, whatever the door: SMTP
        refuses it at DATA already, and a mailbox's poller reads no more of it than one byte
        past the limit (``message_limit``), so no message costs more to read than SMTP allows."""
        if len(raw) > self.message_limit:
            raise MessageRefused(R.MESSAGE_TOO_BIG.with_text(limit=self.message_limit))
        if len(raw) <= budget.INLINE_BYTES:
            canonical, cost = measured_message(raw, self.limits)
            if cost.light:
                view = budget.reader_view(canonical, self.limits.references)
                return canonical, parse_reply(view, envelope_sender=envelope_sender), True
        canonical, parsed = await self.reader.admit(read_message, raw, envelope_sender, self.limits)
        return canonical, parsed, False

    async def words_say(self, judge: Callable[..., T], comment: str, *args: Any) -> T:
        """What the words decide (``interpret_action``, ``contradicts``): a short comment here
        on the loop; a long one in the reading pool, since the grammar costs some 10 µs a
        character and a 64 KiB comment (a log pasted into a reply) held the loop 0.5 s."""
        if len(comment) <= budget.INLINE_COMMENT_CHARS:
            return judge(comment, *args)
        return await self.reader.run(judge, comment, *args)

    @property
    def message_limit(self) -> int:
        """The largest message read (``[inbound] max_message_size``); a door that reads a
        message itself (a mailbox) reads at most one byte more, enough to know it is over."""
        return int(self.settings.inbound.max_message_size)

    async def recipients_from_headers(
        self, parsed: ParsedReply, message_id: str
    ) -> tuple[list[Recipient], list[Decision]]:
        """Without an SMTP envelope (a mailbox, a saved file): the reply addresses of ours the
        message names, checked as at RCPT, once per request; refused ones as decisions.
        Naming none, it is the bare address: the token is looked for in the message."""
        recipients: list[Recipient] = []
        refused: list[Decision] = []
        seen: set[str] = set()
        for address in our_addresses(parsed.message, self.settings.inbound.reply_domain):
            named = Decision(R.OK, Outcome.REFUSE, Recipient(address), comment=parsed.comment, message_id=message_id)
            try:
                recipient = await self.check_recipient(address)
            except (Refusal, TemporaryFailure) as exc:
                refusal = replace(named, reply=R.reply_for(exc), outcome=_failed(R.reply_for(exc)))
                if isinstance(exc, (TokenExpired, RequestRevoked)):
                    # A genuine address (its MAC verified) of a request no longer open: the
                    # decision names the request (the record, a mailbox's notice to its owner).
                    refusal = replace(refusal, request=await self._request_named(address))
                refused.append(refusal)
                continue
            key = recipient.request.id if recipient.request else address.lower()
            if key not in seen:
                seen.add(key)
                recipients.append(recipient)
        if not recipients and not refused:
            recipients.append(Recipient("(bare address)"))
        return recipients, refused

    async def authenticate(
        self, inbound: Inbound, raw: bytes, parsed: ParsedReply, envelope_sender: str | None, light: bool = False
    ) -> AuthState:
        """Who sent it: the SMTP checks on the connection's facts (the MAIL stage's, if it ran,
        then DKIM, DMARC, the From whitelist and the owner rule), or a mailbox's trusted stamps.
        ``light``: the message is small and plain enough to verify on the loop."""
        auth = self.sender_auth
        addressed = parsed.addressed
        try:
            if inbound.client is None:
                return await auth.at_mailbox(
                    raw,
                    envelope_sender,
                    parsed.from_address,
                    inbound.trusted_ids,
                    light,
                    addressed,
                    exchange_online=inbound.exchange_online,
                )
            state = inbound.mail_auth or await auth.at_mail(inbound.client, inbound.mail_from or "")
            return await auth.at_data(
                inbound.client, inbound.mail_from, raw, parsed.from_address, state, light, addressed
            )
        except Exception:
            log.exception("sender authentication failed")
            return AuthState(refusal=R.INTERNAL_ERROR)

    def _judged(
        self,
        parsed: ParsedReply,
        message_id: str,
        recipient: Recipient,
        auth: AuthState,
        reply: SmtpReply,
        outcome: Outcome,
    ) -> Decision:
        """A decision that carries the verdicts and Authentication-Results gathered so far."""
        return Decision(
            reply,
            outcome,
            recipient,
            recipient.token,
            recipient.request,
            comment=parsed.comment,
            checks={name: verdict.as_json() for name, verdict in auth.verdicts.items()},
            authentication_results=self.sender_auth.authentication_results(auth),
            message_id=message_id,
        )

    async def evaluate(
        self, parsed: ParsedReply, message_id: str, recipient: Recipient, auth: AuthState, *, acting: bool = False
    ) -> Decision:
        """Everything short of acting: whose reply, which request, what action, what comment.
        Refusals are raised; ``decide`` turns them into decisions that keep the verdicts."""
        base = self._judged(parsed, message_id, recipient, auth, R.OK, Outcome.REFUSE)
        if parsed.auto_reply:
            reply = R.AUTO_REPLY_DROPPED.with_text(why=parsed.auto_reply)
            return replace(base, reply=reply, outcome=Outcome.DROP, comment="", auto_reply=parsed.auto_reply)
        if auth.refusal is not None:
            return replace(base, reply=auth.refusal, outcome=_failed(auth.refusal))
        token, request = (recipient.token, recipient.request)
        if token is None or request is None:
            token, request = await self._token_from_message(parsed)
        base = replace(base, token=token, request=request)
        try:
            return await self._answer(parsed, auth, base, token, request, acting=acting)
        except Refusal as exc:
            # Refused with the request known: the decision names it (the log line, the
            # processed record, ``diagnose``'s token), and keeps the owner and binding checks.
            return replace(base, reply=R.reply_for(exc), outcome=Outcome.REFUSE)
        except TemporaryFailure as exc:
            log.warning("temporary failure for request %s: %s", request.id, exc)
            return replace(base, reply=R.reply_for(exc), outcome=Outcome.RETRY)

    async def _answer(
        self, parsed: ParsedReply, auth: AuthState, base: Decision, token: Token, request: Request, *, acting: bool
    ) -> Decision:
        """The reply of the request's owner, or not; bound to it, or not; what it answers."""
        sender = parsed.from_address
        owner_ok = sender is not None and sender == request.owner.lower()
        base.checks["owner"] = {"result": "pass" if owner_ok else "fail", "from": sender or "", "owner": request.owner}
        if not owner_ok:
            sender_text = sender or "an unknown sender"
            return replace(base, reply=R.OWNER_MISMATCH.with_text(sender=sender_text, owner=request.owner))
        if delegates := sent_on_behalf(_raw_values(parsed.message, "sender"), sender):
            base.checks["owner"] |= {"result": "fail", "sender": ", ".join(delegates)}
            shown = delegates[0] or "an address that cannot be read"
            return replace(base, reply=R.SENT_ON_BEHALF.with_text(delegate=shown, owner=request.owner))
        owner_auth = auth.verdicts.get("owner_auth")
        if self.settings.checks.owner_auth.required and not auth.exempt:
            if owner_auth is not None and owner_auth.temporary:
                return replace(base, reply=R.AUTH_TEMPERROR, outcome=Outcome.RETRY)
            if owner_auth is None or owner_auth.result != "pass":
                return replace(base, reply=R.OWNER_NOT_AUTHENTICATED.with_text(owner=request.owner))
            # "For what": what authenticated the message must also tie it to this request.
            proof = auth.binds(token.text)
            base.checks["binding"] = {
                "result": "pass" if proof else "fail",
                "via": f"{proof.method} {proof.domain}" if proof else "",
            }
            if proof is None:
                domains = ", ".join(dict.fromkeys(p.domain for p in auth.proofs))
                unbound = R.NOT_BOUND_TO_REQUEST
                if not any(p.signs_fields for p in auth.proofs):  # no signature: the fields it sent
                    unbound = R.NOT_ADDRESSED_TO_REQUEST
                return replace(base, reply=unbound.with_text(domain=domains or request.owner))
            # Nor may what the signature leaves open read its signed body otherwise.
            if why := unread_framing(parsed.message, proof.open_fields):
                base.checks["binding"] |= {"result": "fail", "framing": why}
                return replace(base, reply=R.UNSIGNED_FRAMING.with_text(domain=proof.domain, why=why))

        # Both buttons of the request on one message: it says both, whichever was delivered first.
        addresses = self.sender_auth.addresses
        named = {
            self.signer.action_for(t, request.id, request.owner) for t in tokens_addressed(parsed.addressed, addresses)
        }
        if {Action.COMPLETE, Action.FAIL} <= named:
            return replace(base, reply=R.BOTH_BUTTONS.with_text(task_id=request.task_id))

        if token.action is not Action.REPLY:
            others = others_addressed(
                parsed.addressed,
                addresses,
                sender,
                lambda text: self.signer.of_request(text, request.id, request.owner),
            )
            if others:
                shown = others[0] + (f" and {len(others) - 1} more" if len(others) > 1 else "")
                word = token.action.label.capitalize()
                refusal = R.BUTTON_WITH_OTHERS.with_text(
                    others=shown, action=token.action.label, task_id=request.task_id, word=word
                )
                return replace(base, reply=refusal)

        if self.settings.outbound.relay_keeps_message_id:
            # An answer to the request mail, not to someone's question that set Reply-To our address.
            # A threading field present but empty names some message too: not "a new mail".
            threaded = any(name in ("in-reply-to", "references") for name, _ in parsed.addressed)
            elsewhere = addresses.answered_elsewhere(parsed.referenced_ids, threaded, request.message_id, request.id)
            base.checks["thread"] = {"result": "fail" if elsewhere else "pass", "answers": elsewhere or ""}
            if elsewhere is not None:
                return replace(base, reply=R.REPLY_TO_ANOTHER_MESSAGE.with_text(message_id=elsewhere))

        # Acting, the claim itself says whether the request was answered: no extra read.
        claim = await self._read_by_key(self.store.get_claim, request.id) if not acting else None
        if claim is not None and claim.done:
            return _answered(base, request, claim)

        if token.action is Action.REPLY:
            decided = await self.words_say(answer_of, parsed.comment, self.complete_words, self.fail_words)
            if decided is None:
                raise MessageRefused(R.ACTION_UNCLEAR)
            action = TaskAction(decided)
        else:
            action = TaskAction(token.action.label)
            # A button's address decides, unless the person's own words read the other way: in
            # the body, or a Subject retyped to decide the other way ("Reject"; the request's
            # title, which may hold any word, left out).
            words = (self.complete_words, self.fail_words)
            subject = await self.words_say(interpret_action, typed_subject(parsed.subject, request.title), *words)
            if subject not in (None, action.value) or await self.words_say(
                contradicts, parsed.comment, action.value, *words
            ):
                answered = await self._read_by_key(self.store.get_claim, request.id) if acting else None
                if answered is not None and answered.done:
                    return _answered(base, request, answered)  # told so first, as any other answer is
                raise MessageRefused(R.ACTION_CONTRADICTS_BUTTON.with_text(button=action.value.title()))
        if acting and self._acts_in_store:
            # The usual case, an answer that decides alone, is tried first in the store's one
            # transaction, which asks as it writes what the standing would say (``act``).
            reply = R.TASK_ACTED.with_text(task_id=request.task_id, action_past=action.past)
            return replace(base, reply=reply, outcome=Outcome(action.value), action=action, groups_unread=True)
        return await self._as_groups_stand(base, request, action, acting=acting, claim=claim, sender=sender or "")

    async def _as_groups_stand(
        self,
        base: Decision,
        request: Request,
        action: TaskAction,
        *,
        acting: bool,
        claim: Claim | None = None,
        sender: str = "",
    ) -> Decision:
        """The decision as the task's N-of-M groups stand: refused, an approval to count, or
        an action (in its group, or alone). Without acting (``diagnose``), ``claim`` is the
        request's as read, and ``sender`` the reply's From: what ``act`` would find in doubt."""
        # N of M: the one place that asks which group this answer decides in, or stands outside.
        standing = await self._read_by_key(self.store.approval_standing, request.id, request.task_id, self.clock())
        refusal = _group_refusal(request, standing)
        if refusal is not None:
            # The claim speaks first: the very message that acted, sent again, still gets its 250.
            if acting and (mine := await self._read_by_key(self.store.get_claim, request.id)) and mine.done:
                return _answered(base, request, mine)
            raise refusal
        group = standing.group
        # Acting, these are asked as the claim is taken (``act``): two answers at once each see the
        # other's; in an N-of-M group the store asks it as it counts (``take_back_stale``).
        if not acting and claim is not None and self._doubts(claim, action, sender):
            raise self._in_doubt(request, claim, action, sender)
        if not acting and (stopped := await self._stopped_by_sibling(request)) is not None:
            raise stopped
        if group is not None and action is TaskAction.COMPLETE:
            counted = standing.counted or standing.owner_counted or group.decided_request == request.id
            count = group.approvals + (0 if counted else 1)
            if count < group.needed:
                reply = R.APPROVAL_RECORDED.with_text(task_id=request.task_id, count=count, needed=group.needed)
                return replace(base, reply=reply, outcome=Outcome.APPROVE, action=action, group=group)
        reply = R.TASK_ACTED.with_text(task_id=request.task_id, action_past=action.past)
        return replace(base, reply=reply, outcome=Outcome(action.value), action=action, group=group)

    async def act(self, decision: Decision, actor: str, source: str) -> Decision:
        """Claim the request for this attempt, then drive the backend; answer only after.

        The attempt has its own claim identity: a copy of this message delivered at the
        same moment elsewhere holds a claim that is not ours (451), and only our own claim
        is finished or given back.
        """
        request, action, message_id = decision.request, decision.action, decision.message_id
        if decision.outcome not in _ACTING or request is None or action is None:
            return decision
        attempt = new_attempt_id()
        inherited = False  # this attempt took up a claim whose earlier action may have acted
        if decision.groups_unread:
            if await self._act_at_once(decision, request, action, attempt, actor, source):
                return replace(decision, recorded=True)
            # Nothing written: judged now as the groups stand, it takes the general path.
            decision = await self._as_groups_stand(replace(decision, groups_unread=False), request, action, acting=True)
            if decision.outcome not in _ACTING:
                return decision  # answered already, by this very message
        # Counted from the claim: the action ends well before the claim may be taken for dead.
        deadline = asyncio.get_running_loop().time() + self.settings.tasks.action_deadline
        outcome, claim = await asyncio.to_thread(
            self.store.claim,
            request.id,
            attempt,
            message_id,
            action.value,
            actor,
            self.clock(),
            STALE_CLAIM_SECONDS,
            keep_doubt=not self._reads_tasks,
        )
        if outcome is ClaimOutcome.REVOKED:
            raise RequestRevoked(f"request {request.id} was withdrawn")
        if outcome is ClaimOutcome.IN_DOUBT and claim is not None:
            raise self._in_doubt(request, claim, action, actor)  # the claim left as it was
        if outcome is ClaimOutcome.TAKEN_OVER:
            outcome, inherited = ClaimOutcome.OURS, True  # from an attempt that died: it may have acted
        if outcome is ClaimOutcome.BUSY and claim is not None and await self._posts_again(decision, claim, actor):
            attempt, outcome, inherited = str(claim.attempt), ClaimOutcome.OURS, True  # as that attempt
        if outcome is ClaimOutcome.BUSY and claim is not None and await self._acted_unrecorded(decision, claim, actor):
            outcome = ClaimOutcome.DONE  # recorded now, on that attempt's behalf: this is its retry
        if outcome is not ClaimOutcome.OURS:
            return _not_ours(decision, request, outcome, claim)
        if decision.group is not None:
            return await self._act_together(decision, decision.group, attempt, actor, source, deadline, inherited)
        try:
            if (stopped := await self._stopped_by_sibling(request)) is not None:
                raise stopped  # our claim is given back below, unless in doubt
            verdicts = {name: v["result"] for name, v in decision.checks.items()}
            context = ActionContext(request.id, message_id, source, verdicts, deadline, request.owner)
            await self._drive_backend(action, request.task_id, decision.comment, actor, context, deadline)
        except ActionOutcomeUnknown:
            raise  # cut at the deadline: the claim stays ours until it is taken for dead
        except TaskNotInProgress as exc:
            task = exc.task
            if task.acted_by == actor and task.status == action.past:
                # Our own earlier attempt acted but lost its answer: finish, don't refuse.
                pass
            else:
                await asyncio.to_thread(self.store.release_claim, request.id, attempt)
                raise
        except TaskNotFound:
            await asyncio.to_thread(self.store.release_claim, request.id, attempt)
            raise
        except BaseException as exc:
            if not self._keeps_doubt(exc, inherited):
                await self._give_back(request.id, attempt)
                raise
            self._keep_doubt(request, attempt, exc)
            raise
        metrics.TASKS_ACTED.labels(self.backend.name, action.value).inc()
        await self._finish(request, attempt, action)
        return decision

    def _keeps_doubt(self, failure: BaseException, inherited: bool) -> bool:
        """The one rule of when a failed action leaves the task perhaps acted on, with a
        backend that cannot be read (the webhook): then the attempt's claim, and the N-of-M
        decision it holds, stand, so no other request's answer is POSTed under a request id
        the receiver cannot tie to this one; only this answer, sent again, settles it (the
        same request id: the receiver dedupes). A backend that reads tasks is read again by
        the retry: never.

        Its own POST may have acted (``BackendOutcomeUnknown``: no answer, or one that does
        not say). Or it took up a claim whose earlier POST may have (``inherited``: that
        attempt got no answer, ``_posts_again``, or died, ``ClaimOutcome.TAKEN_OVER``): then
        any failure of its own keeps that doubt. One without acting (503, no connection, our
        signature refused, another answer seen beside it) says nothing of the earlier POST;
        nor does a refusal (422: a receiver may refuse a repeat for a reason of the moment,
        or the earlier POST may still be at work there): the sender is told the refusal as a
        4xx (``_keep_doubt``), and the same answer sent again asks again. Except the
        receiver's word that the task is closed, or unknown to it (``TaskNotInProgress`` not
        by this answer, ``TaskNotFound``): no answer can act on it now, so the claim is given
        back, and another request's answer is refused by the receiver in turn rather than
        wait on a doubt that no longer matters."""
        if self._reads_tasks:
            return False
        if isinstance(failure, BackendOutcomeUnknown):
            return True
        return inherited and not isinstance(failure, (TaskNotInProgress, TaskNotFound))

    def _keep_doubt(self, request: Request, attempt: str, failure: BaseException) -> None:
        """After a failure that leaves the task perhaps acted on (``_keeps_doubt``): the claim
        stays this attempt's, holding the task's other answers back (``_stopped_by_sibling``),
        and this very answer, sent again, posts again with the same request id
        (``_posts_again``, here; elsewhere once it is taken for dead). So a refusal is told as
        a 4xx (``RefusedInDoubt``): a 5xx would end the sender's retries, the one thing that
        can settle the doubt."""
        self._unanswered.put(request.id, attempt)
        if isinstance(failure, Refusal):
            raise RefusedInDoubt(request.task_id, failure) from failure

    def _doubts(self, claim: Claim, action: TaskAction, actor: str) -> bool:
        """Whether ``claim`` holds this request for another answer (action or sender) whose
        attempt died, and the backend cannot say whether it acted (the webhook): then this
        answer may not act. Acting, ``Store.claim`` says so itself (``keep_doubt``: IN_DOUBT)."""
        return not self._reads_tasks and claim.in_doubt_for(action.value, actor, self.clock(), STALE_CLAIM_SECONDS)

    def _in_doubt(self, request: Request, claim: Claim, action: TaskAction, actor: str) -> EarlierAnswerOutcomeUnknown:
        """Why this answer is not acted on (``_doubts``): an earlier answer to the same request,
        cut off mid-action, may have acted, and this one, under the same request id, could be
        taken by the receiver for a repeat of it, or done beside it. An operator is warned."""
        log.warning(
            "request %s: the answer to %s task %s (by %s) was not acted on: an earlier answer to the request, to %s"
            " it (by %s), was cut off mid-action and the %s backend cannot say whether it acted; its sender's retry"
            " settles it, or decide task %s there",
            request.id,
            action.value,
            request.task_id,
            actor,
            claim.action,
            claim.actor,
            self.backend.name,
            request.task_id,
        )
        return EarlierAnswerOutcomeUnknown(request.task_id, request.id, claim.action)

    async def _give_back(self, request_id: str, attempt: str) -> None:
        """Our claim back after a failure, so a later answer may act; if the store cannot
        take it back now, the claim goes stale and is taken over later."""
        try:
            await asyncio.to_thread(self.store.release_claim, request_id, attempt)
        except TemporaryFailure:
            pass

    async def _stopped_by_sibling(self, request: Request) -> RcMtaError | None:
        """Where the backend cannot read the task (the webhook), what stops an answer that
        decides alone, by rc-mta's own record of the task's other requests
        (``Store.decided_by_sibling``): one decided it (refused, saying by whom); one is
        being acted on (451: it may yet land, and the backend must not get two); one's
        attempt was cut off mid-action (451 too: whether it acted is settled when its sender
        tries again, or by a person in the workflow system; an operator is warned). Asked while this
        answer holds its claim, so of two answers at once each sees the other's. Without
        acting (``diagnose``) it is asked of an N-of-M answer too, and says what the store
        says acting: its group's decision cut off mid-action is not taken back (451)."""
        if self._reads_tasks:
            return None
        sibling = await asyncio.to_thread(self.store.decided_by_sibling, request.id, self.clock())
        if sibling is None:
            return None
        if sibling.unknown:
            log.warning(
                "request %s: not acted on: the %s of task %s by %s (request %s) was cut off mid-action and the %s"
                " backend cannot say whether it acted; its sender's retry settles it, or decide task %s there",
                request.id,
                sibling.action,
                request.task_id,
                sibling.actor,
                sibling.request_id,
                self.backend.name,
                request.task_id,
            )
            return SiblingOutcomeUnknown(request.task_id, sibling.request_id)
        if not sibling.final:
            return DecisionPending(request.task_id)
        return DecisionMade(request.task_id, TaskAction(sibling.action).past, sibling.actor)

    async def _act_together(
        self,
        decision: Decision,
        group: ApprovalGroup,
        attempt: str,
        actor: str,
        source: str,
        deadline: float,
        inherited: bool,
    ) -> Decision:
        """N of M: an approval is counted (in one statement, so two at once are both
        counted); the one that reaches ``needed``, or any fail, decides and drives the
        backend, once. The decision is final once this claim is finished: until then
        another answer waits (451), and if the backend cannot be told it is taken back.
        An answer after the final decision is refused, saying by whom. A decision whose
        attempt died is taken back by another answer only where the backend can say it did
        not act (``take_back_stale``): with the webhook that answer waits (451) instead. Nor
        is it taken back when the retry of the answer that made it (``inherited``) fails
        without acting: the first POST may have acted all the same (``_keeps_doubt``)."""
        request, action = decision.request, decision.action
        assert request is not None and action is not None
        store, now = self.store, self.clock()
        counted = decided = False
        try:
            if await self._stale_decision_acted(request, group):
                raise await self._decision_made(request)
            if action is TaskAction.FAIL:
                decided = await asyncio.to_thread(
                    store.decide_group_fail, group.id, request.id, actor, now, take_back_stale=self._reads_tasks
                )
                if not decided:
                    raise await self._decision_made(request)
            else:
                count = await asyncio.to_thread(
                    store.count_approval, group.id, request.id, actor, now, take_back_stale=self._reads_tasks
                )
                if count is None:
                    raise await self._decision_made(request)
                counted = True
                if count < group.needed:
                    await self._finish(request, attempt, None)  # counted only: undone below if it fails
                    log.info("request %s: approval %d of %d by %s", request.id, count, group.needed, actor)
                    reply = R.APPROVAL_RECORDED.with_text(task_id=request.task_id, count=count, needed=group.needed)
                    return replace(decision, reply=reply, outcome=Outcome.APPROVE)
                decided = True
            settled = await asyncio.to_thread(store.approval_group_of, request.id)
            by = settled.decided_by if settled is not None and settled.decided_by else actor
            comment = (
                decision.comment if action is TaskAction.FAIL else f"{decision.comment}\n\nApproved by {by}".strip()
            )
            context = ActionContext(
                request.id,
                decision.message_id,
                source,
                {name: v["result"] for name, v in decision.checks.items()},
                deadline,
                request.owner,
            )
            try:
                await self._drive_backend(action, request.task_id, comment, actor, context, deadline)
            except TaskNotInProgress as exc:
                if not (exc.task.acted_by == actor and exc.task.status == action.past):
                    raise
        except BackendOutcomeUnknown:
            # Told or not, only the backend knows (cut at the deadline, or no answer came):
            # the decision and the claim stand (others wait, 451) until the claim is taken
            # for dead, long after this attempt ended, or the backend shows it acted.
            raise
        except BaseException as exc:
            # Doubt comes along only with a decision this request made before: else its earlier
            # attempt never POSTed (with the webhook no other answer takes such a decision back).
            if self._keeps_doubt(exc, inherited and group.decided_request == request.id):
                self._keep_doubt(request, attempt, exc)
                raise
            try:
                mine = await asyncio.to_thread(store.get_claim, request.id)
                # Done for us (a retry saw the backend show our action, ``_acted_unrecorded``): it stands.
                if not (mine is not None and mine.done and mine.attempt == attempt):
                    if decided:
                        await asyncio.to_thread(store.undo_group_decision, group.id, request.id, counted)
                    elif counted:
                        await asyncio.to_thread(store.uncount_approval, group.id, request.id)
                    await asyncio.to_thread(store.release_claim, request.id, attempt)
            except TemporaryFailure:
                pass  # the claim goes stale and is taken over later
            raise
        metrics.TASKS_ACTED.labels(self.backend.name, action.value).inc()
        await self._finish(request, attempt, action)  # the decision is final from here
        # Judged an approval to be counted, it may have been the one that decided meanwhile.
        reply = R.TASK_ACTED.with_text(task_id=request.task_id, action_past=action.past)
        return replace(decision, reply=reply, outcome=Outcome(action.value))

    async def _finish(self, request: Request, attempt: str, acted: TaskAction | None) -> None:
        """Record that this attempt is done: its claim is answered. When the backend ``acted``,
        that happened, so a store that fails for a moment is tried again a few times while
        the sender waits. If it still fails, the attempt is remembered and the sender is told
        451 (``ActionNotRecorded``): its retry of the same reply finds the claim held by this
        attempt, records it and is answered as done (``_acted_unrecorded``), instead of
        waiting for the claim to go stale."""
        for delay in (*FINISH_RETRY_DELAYS, None):
            try:
                finished = await asyncio.to_thread(self.store.finish_claim, request.id, attempt, self.clock())
                break
            except TemporaryFailure as exc:
                if acted is None:
                    raise  # only counted: nothing happened that must be recorded, the caller undoes it
                if delay is None:
                    self._unrecorded.put(request.id, attempt)
                    log.warning("request %s: acted, but the store could not record it: %s", request.id, exc)
                    raise ActionNotRecorded(request.task_id, acted.past, str(exc)) from exc
                await asyncio.sleep(delay)
        if not finished:
            log.error(
                "request %s: acted, but the claim was taken over as stale meanwhile (the action took over %ss)",
                request.id,
                STALE_CLAIM_SECONDS,
            )

    async def _posts_again(self, decision: Decision, claim: Claim, actor: str) -> bool:
        """Whether this is the very answer whose POST got no answer here (that attempt has
        ended and kept its claim, ``_unanswered``): then it posts again as that attempt, its
        claim counted from now, and the receiver takes the same request id as a repeat.
        Taken once: of two copies sent again at the same moment, the other waits."""
        request = decision.request
        if request is None or claim.attempt is None or not _same_answer(decision, claim, actor):
            return False
        if self._unanswered.pop(request.id) != claim.attempt:
            return False
        return await asyncio.to_thread(self.store.renew_claim, request.id, claim.attempt, self.clock())

    async def _acted_unrecorded(self, decision: Decision, claim: Claim, actor: str) -> bool:
        """Whether the attempt holding the claim, with this very message, already acted and
        only failed to record it, and if so record it now, on its behalf. Known when this
        process remembers that attempt (``_finish``), or when the backend shows the task in
        the state this answer asks for, attributed to this sender: what ``act`` takes as its
        own earlier attempt's doing. Anything else (the holder may still be at work) is no."""
        request, action = decision.request, decision.action
        if request is None or action is None or claim.attempt is None or not _same_answer(decision, claim, actor):
            return False
        if self._unrecorded.get(request.id) != claim.attempt and not await self._backend_shows(
            request.task_id, action, actor
        ):
            return False
        if not await asyncio.to_thread(self.store.finish_claim, request.id, claim.attempt, self.clock()):
            return False  # released or taken over meanwhile: not what we saw
        log.info("request %s: recorded the action of an earlier delivery of message %s", request.id, claim.message_id)
        return True

    async def _backend_shows(self, task_id: str, action: TaskAction, actor: str) -> bool:
        """Whether the backend shows the task in the state ``action`` leaves it, attributed
        to ``actor``: the evidence that an attempt which never recorded its action did act.
        No when the backend cannot read a task (the webhook: ``known`` is False) or cannot
        be asked now."""
        try:
            task = await self.backend.get(task_id)
        except (TemporaryFailure, Refusal):
            return False
        acted_by = (task.acted_by or "").lower()
        return task.known and task.status == action.past and acted_by == actor.lower()

    async def _stale_decision_acted(self, request: Request, group: ApprovalGroup) -> bool:
        """Whether another answer's decision of ``group``, whose claim went stale, did act:
        the backend shows the task as that decision leaves it, by its decider. Then the
        decider only failed to record it (its process died first, or the store was down),
        and its claim is finished here on its behalf: the decision is final, never taken
        back to act again. So it is when this process remembers the attempt acting. Where
        neither tells, the store decides (``Store.count_approval``): a backend that reads
        tasks did not show it acting, so it is taken back; the webhook cannot show anything,
        so it stands, and this answer waits (``take_back_stale``: SiblingOutcomeUnknown)."""
        decider, decision = group.decided_request, group.decision
        if group.decided_at is None or group.state is not GroupState.OPEN or decider in (None, request.id):
            return False  # undecided, final, still being told, or our own earlier attempt's
        assert decider is not None and decision is not None
        claim = await asyncio.to_thread(self.store.get_claim, decider)
        if claim is None or claim.done or claim.attempt is None or claim.action != decision:
            return False
        # This process remembers that attempt acting (``_finish``), or the backend shows it
        # for a claim gone stale (a fresh one may still be at work: it finishes itself).
        acted_here = self._unrecorded.get(decider) == claim.attempt
        stale = claim.stale(self.clock(), STALE_CLAIM_SECONDS)
        if not acted_here and not (
            stale and await self._backend_shows(group.task_id, TaskAction(decision), claim.actor)
        ):
            return False
        if not await asyncio.to_thread(self.store.finish_claim, decider, claim.attempt, self.clock()):
            return False  # taken back meanwhile by another answer: it decides anew
        log.warning(
            "approval group %s: the %s decided by request %s acted but was never recorded (the backend shows it):"
            " recorded now, and it stands",
            group.id,
            decision,
            decider,
        )
        return True

    async def _decision_made(self, request: Request) -> DecisionMade | DecisionPending:
        """Why another answer's decision stops this one: made for good (refused), or still
        being told to the backend, or taken back meanwhile (the sender retries)."""
        group = await asyncio.to_thread(self.store.approval_group_of, request.id, self.clock())
        if group is None:
            return DecisionMade(request.task_id, "decided", "the other owners")
        if group.state is not GroupState.DECIDED or group.decision is None:
            return DecisionPending(request.task_id)
        return DecisionMade(request.task_id, TaskAction(group.decision).past, group.decided_by or "the other owners")

    async def _act_at_once(
        self, decision: Decision, request: Request, action: TaskAction, attempt: str, actor: str, source: str
    ) -> bool:
        """The usual case of an embedded task in one transaction and one thread hop; False
        when it does not apply and nothing was written (see ``Store.answer_at_once``)."""
        answer = Answer(
            request.id,
            attempt,
            decision.message_id,
            action.value,
            actor,
            self.clock(),
            request.task_id,
            COMPLETED if action is TaskAction.COMPLETE else FAILED,
            decision.comment,
            source,
            decision.reply.name,
            decision.reply.code,
        )
        started = time.monotonic()
        done = await asyncio.to_thread(self.store.answer_at_once, answer)
        if done:
            metrics.BACKEND_LATENCY.labels(self.backend.name, action.value).observe(time.monotonic() - started)
            metrics.TASKS_ACTED.labels(self.backend.name, action.value).inc()
        return done

    async def decide(
        self, parsed: ParsedReply, message_id: str, recipient: Recipient, auth: AuthState, *, act: bool, source: str
    ) -> Decision:
        """Evaluate (and, if ``act``, act); refusals and trouble become a 5xx or 4xx decision
        that keeps the verdicts and Authentication-Results gathered so far."""
        refused = self._judged(parsed, message_id, recipient, auth, R.INTERNAL_ERROR, Outcome.RETRY)
        try:
            decision = await self.evaluate(parsed, message_id, recipient, auth, acting=act)
            if not act:
                return decision
            refused = replace(refused, checks=decision.checks, token=decision.token, request=decision.request)
            # Shielded: a sender hanging up (or a poller's worker cancelled) must not stop an
            # action half way; shutdown waits for it in ``drain``.
            action = asyncio.ensure_future(self.act(decision, parsed.from_address or "", source))
            self._inflight.add(action)
            action.add_done_callback(self._inflight.discard)
            return await asyncio.shield(action)
        except Refusal as exc:
            return replace(refused, reply=R.reply_for(exc), outcome=Outcome.REFUSE)
        except BackendAuthFailed as exc:
            log.error("task backend refused our credentials: %s (fix [tasks] config)", exc)
            return replace(refused, reply=R.reply_for(exc))
        except TemporaryFailure as exc:
            log.warning("temporary failure for %s: %s", redact_address(recipient.address), exc)
            return replace(refused, reply=R.reply_for(exc))
        except Exception:
            log.exception("unexpected error handling a reply to %s", redact_address(recipient.address))
            return refused

    # After: the side effects, once, for every door ---------------------------------------

    async def _after(self, inbound: Inbound, raw: bytes, decisions: Sequence[Decision]) -> None:
        """Record, count, archive and log what was decided."""
        for decision in decisions:
            await self._record(inbound, decision)
            if decision.outcome in (Outcome.COMPLETE, Outcome.FAIL):
                metrics.REPLY_TO_COMPLETION.labels(inbound.source).observe(time.monotonic() - inbound.received_at)
        accepted = [d for d in decisions if d.reply.accepted]
        if self.settings.inbound.archive_dir and accepted:
            received = self._received_field(inbound)
            first = accepted[0]
            await asyncio.to_thread(self._archive, raw, first.authentication_results, first.message_id, received)

    def _received_field(self, inbound: Inbound) -> str:
        """Our Received trace field (RFC 5321 4.4) for a message an SMTP/LMTP session handed
        us: the client, and the TLS it spoke (RFC 3848's ESMTPS/LMTPS, with version and
        cipher as a comment, as Postfix writes them); "" for a mailbox's message."""
        client = inbound.client
        if client is None or inbound.source not in ("smtp", "lmtp"):
            return ""
        helo = client.helo if client.helo and _TRACE_NAME.fullmatch(client.helo) else "unknown"
        protocol = "ESMTP" if inbound.source == "smtp" else "LMTP"
        using = ""
        if inbound.tls is not None:
            protocol += "S"
            using = f" (using {inbound.tls.version} with cipher {inbound.tls.cipher} ({inbound.tls.bits} bits))"
        when = formatdate(self.clock(), usegmt=True)
        by = self.settings.inbound.hostname
        client_ip = client.ip or "unknown"
        return f"Received: from {helo} ([{client_ip}])\r\n\tby {by} with {protocol}{using};\r\n\t{when}\r\n"

    def _archive(self, raw: bytes, authentication_results: str, message_id: str, received: str = "") -> None:
        """Keep an accepted reply for audit, stamped with our verdicts (and our Received
        field); forged stamps removed."""
        directory = self.settings.inbound.archive_dir
        assert directory is not None
        name = f"{int(self.clock() * 1000)}-{hashlib.sha256(message_id.encode()).hexdigest()[:16]}.eml"
        stamped = (
            f"Authentication-Results: {authentication_results}\r\n{received}".encode()
            + strip_forged_authentication_results(raw, self.settings.authserv_id)
        )
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(stamped)
        except OSError as exc:
            log.error("could not archive %s in %s: %s", message_id, directory, exc)

    async def _record(self, inbound: Inbound, decision: Decision) -> None:
        request_id = decision.request.id if decision.request else None
        try:
            if not decision.recorded:  # else written with the action, in its transaction
                await asyncio.to_thread(
                    self.store.record_processed,
                    decision.message_id,
                    request_id,
                    inbound.source,
                    decision.reply.name,
                    decision.reply.code,
                    self.clock(),
                )
        except TemporaryFailure as exc:
            log.warning("could not record processed message %s: %s", decision.message_id, exc)
        if not decision.reply.accepted:
            self.count_refusal("mailbox" if inbound.client is None else "data", decision.reply)
        if decision.outcome is Outcome.DROP and decision.auto_reply:
            report = decision.auto_reply == "null sender" or decision.auto_reply.endswith(" report")
            kind = "delivery_report" if report else "auto_reply"
            metrics.AUTO_REPLIES_DROPPED.labels(kind).inc()
        # One line per message and recipient: who, which task, verdicts, answer.
        log.info(
            "reply %s",
            decision.outcome.value,
            extra={
                "source": inbound.source,
                "client": inbound.client.ip if inbound.client else None,
                "mail_from": inbound.mail_from,
                "rcpt": redact_address(decision.recipient.address),
                "request": request_id,
                "task": decision.request.task_id if decision.request else None,
                "would": decision.outcome.value,
                "reply": str(decision.reply),
                "reason": decision.reply.reason,
                "auth": decision.authentication_results,
                "tls": str(inbound.tls) if inbound.tls else None,
            },
        )

    # Helpers ---------------------------------------------------------------------------

    async def _drive_backend(
        self, action: TaskAction, task_id: str, comment: str, actor: str, context: ActionContext, deadline: float
    ) -> None:
        """One backend call, timed and counted, cut at ``deadline`` (loop time) whatever the
        backend's own timeouts and retries: then ActionOutcomeUnknown. The backend's own
        refusals pass through."""
        name = self.backend.name
        started = time.monotonic()
        cut = asyncio.timeout_at(deadline)
        try:
            async with cut:
                if action is TaskAction.COMPLETE:
                    await self.backend.complete(task_id, comment, actor, context)
                else:
                    await self.backend.fail(task_id, comment, actor, context)
        except TimeoutError:
            if not cut.expired():
                metrics.BACKEND_ERRORS.labels(name, "error").inc()
                raise
            metrics.BACKEND_ERRORS.labels(name, "deadline").inc()
            log.error(
                "acting on task %s did not end within [tasks] action_deadline (%ss): whether the %s backend acted"
                " is unknown; the answer's claim is kept until taken for dead",
                task_id,
                self.settings.tasks.action_deadline,
                name,
            )
            raise ActionOutcomeUnknown(task_id, self.settings.tasks.action_deadline) from None
        except Refusal:
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
            metrics.BACKEND_LATENCY.labels(name, action.value).observe(time.monotonic() - started)

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
                except Refusal:
                    continue
                if token.action is Action.REPLY:
                    return await self.verify_token(text)
        raise MessageRefused(R.NO_TOKEN)


def _failed(reply: SmtpReply) -> Outcome:
    return Outcome.RETRY if reply.temporary else Outcome.REFUSE


# What ``act`` acts on: a decision, or an approval to count (N of M).
_ACTING = (Outcome.COMPLETE, Outcome.FAIL, Outcome.APPROVE)


def _answered(base: Decision, request: Request, claim: Claim) -> Decision:
    """A request answered already: by this very message (a retry, 250) or another (refused)."""
    done = TaskAction(claim.action)
    if claim.message_id == base.message_id:
        reply = R.ALREADY_DONE.with_text(task_id=request.task_id, action_past=done.past)
        return replace(base, reply=reply, outcome=Outcome.ALREADY_DONE, action=done)
    raise RequestAnswered(request.task_id, done.past)


def _group_refusal(request: Request, standing: ApprovalStanding) -> RcMtaError | None:
    """Why this answer may not act, as its task's N-of-M groups stand: another group of the
    task may still decide it (then no answer outside that group acts, whatever its own
    request), or its own group was decided by another answer: for good (refused), or that
    answer is still telling the backend (a 4xx: if it cannot, the decision is taken back,
    and this answer counts when it comes again). ``Store.count_approval`` and
    ``decide_group_fail`` apply the same rule when acting. The request that decided is let
    through: its claim says whether it is done or still being answered."""
    if standing.blocking is not None:
        if standing.blocking.state is GroupState.DECIDING:
            # Its decision is being told to the backend: once told, this answer is judged
            # as any other; if it can't be told, the group still stands. A 4xx either way.
            return DecisionPending(request.task_id)
        return NotInApprovalGroup(request.task_id, standing.blocking.needed)
    group = standing.group
    if group is None or group.state is GroupState.OPEN or group.decided_request == request.id:
        return None
    if group.state is GroupState.DECIDING:
        return DecisionPending(request.task_id)
    past = TaskAction(group.decision).past if group.decision else "decided"
    return DecisionMade(request.task_id, past, group.decided_by or "the other owners")


def _both_buttons(recipients: Sequence[Recipient]) -> set[str]:
    """The requests whose Complete and Fail addresses are both among ``recipients``."""
    actions: dict[str, set[Action]] = {}
    for recipient in recipients:
        if recipient.request is not None and recipient.token is not None:
            actions.setdefault(recipient.request.id, set()).add(recipient.token.action)
    return {request for request, named in actions.items() if {Action.COMPLETE, Action.FAIL} <= named}


def _raw_values(message: Message, name: str) -> list[str]:
    """The values of every field called ``name`` (lower case), as sent, bounded."""
    return [str(value)[:_MAX_ADDRESS_FIELD] for key, value in message.raw_items() if str(key).lower() == name]


def _named(inbound: Inbound) -> tuple[Recipient, ...]:
    return inbound.recipients or (Recipient("(none)"),)


def _not_ours(decision: Decision, request: Request, outcome: ClaimOutcome, claim: Claim | None) -> Decision:
    """The answer when another attempt holds the claim: answered already (by this message:
    250, by another: refused), or still being answered (451, the sender retries)."""
    assert claim is not None
    if outcome is ClaimOutcome.DONE:
        done = TaskAction(claim.action)
        if claim.message_id != decision.message_id:
            raise RequestAnswered(request.task_id, done.past)
        reply = R.ALREADY_DONE.with_text(task_id=request.task_id, action_past=done.past)
        return replace(decision, reply=reply, outcome=Outcome.ALREADY_DONE)
    log.info("request %s is being answered by another attempt (message %s)", request.id, claim.message_id)
    busy = R.MESSAGE_IN_PROGRESS if claim.message_id == decision.message_id else R.REQUEST_IN_PROGRESS
    return replace(decision, reply=busy, outcome=Outcome.RETRY)


_MAX_ADDRESS_FIELD = 16384


def our_addresses(message: Message, reply_domain: str) -> list[str]:
    """The reply addresses of ours a message was sent to, as the delivering server recorded them.

    Read from the raw, bounded values: the email library's structured address parser is
    not linear in a hostile To/Cc, and this runs on the event loop."""
    wanted = {"delivered-to", "x-original-to", "to", "cc"}
    headers = [str(value)[:_MAX_ADDRESS_FIELD] for name, value in message.raw_items() if str(name).lower() in wanted]
    return [addr for _, addr in getaddresses(headers) if addr.lower().endswith("@" + reply_domain)]


def _return_path(raw: bytes, header_bytes: int = budget.DEFAULT_LIMITS.header_bytes) -> str | None:
    """The envelope sender the final server recorded; "" for a bounce's <>.

    Runs on the event loop, on a message of any size (a mailbox's), before the budget is
    checked: it reads no more than the header may hold (``header_bytes``), with searches
    over bytes rather than a Python loop over a header of ten thousand lines."""
    head = raw[:header_bytes]
    for blank in (b"\r\n\r\n", b"\n\n"):
        if (end := head.find(blank)) >= 0:
            head = head[:end]
    found = (b"\n" + head.lower()).find(b"\nreturn-path:")
    if found < 0:
        return None
    value = head[found + 12 :].split(b"\n", 1)[0]
    return value.decode("utf-8", "replace").strip().strip("<>").strip()


def _synthetic_message_id(raw: bytes) -> str:
    """A stable id for a message without Message-ID, so its retries are recognised."""
    return f"<sha256.{hashlib.sha256(raw).hexdigest()[:32]}@rc-mta.invalid>"


def read_message(
    raw: bytes, envelope_sender: str | None, limits: budget.Limits = budget.DEFAULT_LIMITS
) -> tuple[bytes, ParsedReply]:
    """The bytes DKIM and the reader both see, and what they say (blocking: off the loop).

    Refused unread when reading would cost more than ``limits`` allow; the reader gets the
    same bytes, with only the ids of a long References field it needs (``reader_view``)."""
    raw = canonical_message(raw, limits)
    return raw, parse_reply(budget.reader_view(raw, limits.references), envelope_sender=envelope_sender)
