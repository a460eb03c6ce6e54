"""Mailbox mode's bounce: a short notice to the sender of a refused reply.

Over SMTP a refused reply gets a 5xx with a sentence, and the sender's own server bounces
it to them. A poller has no one to answer: it files the reply in Rejected. So, for a reply
refused for good, it mails the sender that very sentence and enhanced code, and how to
answer, through the outbound queue like a request mail.

Who is told (avoiding backscatter, RFC 3834):

- only the message's From, and only when that From is authenticated (the owner rule's
  aligned SPF or DKIM pass for its domain, ``owner_auth``): the one address that provably
  sent it, as the SMTP bounce reaches only the sender's own server. Not the request's
  owner as such: an owner who replied from another authenticated address of theirs is the
  person who most needs telling. Never a Reply-To, which no one vouches for;
- only for a reply that names a request of ours (its token verified): a person in a
  conversation with rc-mta, never a stranger who wrote to the reply domain;
- never for machine mail (the reader's own verdict, and RFC 3834's signs: a null
  Return-Path, Auto-Submitted other than "no", Precedence bulk/list/junk, any List-* field);
- never for a temporary refusal (4xx): the reply stays in the folder and is tried again;
- one notice per reply (keyed in the store by request and Message-ID, whoever handles it,
  however often) and at most ``[mailbox] refusal_notices_per_hour`` to one address.

The notice itself is ``Auto-Submitted: auto-replied``, answers the reply (``In-Reply-To``,
``References``, ``Re:``), so no auto-responder answers it. It goes out from the address
request mails come from (not the null reverse-path RFC 3834 suggests: a submission server
takes mail only from the account it logged in, Microsoft 365's among them); a bounce of it
comes back to the mailbox as machine mail, which is filed and never told.
"""

from __future__ import annotations

import email.policy
import hashlib
import logging
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import formatdate, getaddresses
from typing import TYPE_CHECKING

from . import metrics
from .config import Settings
from .dkim_signing import signed
from .machine_mail import machine_reason
from .outbound import reply_addresses, wire_bytes
from .pipeline import Decision, MailboxOutcome
from .request_mail import MAIL_POLICY
from .safetext import one_line
from .store import REFUSAL_NOTICE, NoticeQueued, Request

if TYPE_CHECKING:
    from .dkim_signing import DkimSigner
    from .outbound_queue import OutboundQueue
    from .tokens import Signer

log = logging.getLogger("rc_mta.refusal_notices")

_HEADER_BYTES = 64 * 1024  # of the reply, read for the fields below
_REFERENCES_KEPT = 10  # of the reply's References, carried on (RFC 5322 3.6.4)
# Refusals an answer sent again can cure (the request still open, from its owner): the
# notice gives the request's reply addresses, and a Reply-To that decides from the words.
_ANSWER_AGAIN = frozenset(
    {
        "ACTION_UNCLEAR",
        "ACTION_CONTRADICTS_BUTTON",
        "BUTTON_WITH_OTHERS",
        "NOT_BOUND_TO_REQUEST",
        "NOT_ADDRESSED_TO_REQUEST",
    }
)
# Of those, refusals of a mail that may have been about something else entirely (an answer
# to someone's question that reached a reply address): the notice says so before "how to".
_MAYBE_NOT_FOR_THE_REQUEST = frozenset({"BUTTON_WITH_OTHERS", "NOT_BOUND_TO_REQUEST", "NOT_ADDRESSED_TO_REQUEST"})


@dataclass(frozen=True)
class ReplyFields:
    """What the notice needs of the refused reply's header, read bounded."""

    from_address: str | None  # the one From address, lower case; None when not exactly one
    subject: str
    references: tuple[str, ...]
    machine: str | None  # RFC 3834's signs that no one should be answered

    @classmethod
    def read(cls, raw: bytes) -> ReplyFields:
        head = BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[:_HEADER_BYTES])
        found = [a for _, a in getaddresses([str(v) for v in head.get_all("From", [])]) if a]
        # The thread's first id (where a request mail's thread starts) and the last ones.
        every = str(head.get("References", "")).split()
        references = tuple(every[:1] + every[1:][-(_REFERENCES_KEPT - 1) :])
        return cls(
            found[0].strip().lower() if len(found) == 1 else None,
            one_line(str(head.get("Subject", "")), 200),
            tuple(r for r in references if r.startswith("<") and r.endswith(">") and len(r) <= 250),
            _machine_signs(head),
        )


def _machine_signs(head: email.message.Message) -> str | None:
    """RFC 3834 §2: a message no automatic response may answer. The reader's own detectors
    (a null Return-Path, Auto-Submitted, Precedence, MAILER-DAEMON, no-reply...), asked
    again of the header here, and what makes it a list's message: any List-* field."""
    return_path = head.get("Return-Path")
    envelope_sender = None if return_path is None else str(return_path).strip().strip("<>").strip()
    if reason := machine_reason(head, envelope_sender):
        return reason
    listed = [str(name) for name in head.keys() if str(name).lower().startswith("list-")]
    return f"{listed[0]}: a list's message" if listed else None


def notice_kind(message_id: str) -> str:
    """The outbound queue's kind of the notice of the reply ``message_id``: one per reply."""
    return REFUSAL_NOTICE + hashlib.sha256(message_id.encode()).hexdigest()[: 16 - len(REFUSAL_NOTICE)]


def why_not_noticed(decision: Decision, fields: ReplyFields) -> str | None:
    """Why the sender of this refused reply is not told (None: they are)."""
    if decision.reply.accepted:
        return "not refused"
    if decision.reply.temporary:
        return "a temporary refusal: the reply is tried again"
    if decision.request is None:
        return "it names no request of ours"
    if decision.auto_reply:
        return f"machine mail ({decision.auto_reply})"
    if fields.machine:
        return f"machine or list mail ({fields.machine})"
    if fields.from_address is None:
        return "no single From address"
    owner_auth = decision.checks.get("owner_auth", {})
    domain = fields.from_address.rpartition("@")[2]
    if owner_auth.get("result") != "pass" or owner_auth.get("domain", "").lower() != domain:
        return f"its From ({domain}) is not authenticated"
    return None


def compose_notice(
    settings: Settings,
    signer: Signer,
    decision: Decision,
    request: Request,
    fields: ReplyFields,
    now: float,
) -> EmailMessage:
    """The notice: the refusal as SMTP words it, and how to answer."""
    assert fields.from_address is not None
    inbound = settings.inbound
    reply = decision.reply
    message = EmailMessage(policy=MAIL_POLICY)  # ids as ids, never as encoded words
    message["From"] = settings.from_address
    message["To"] = fields.from_address
    owner = fields.from_address == request.owner.lower()
    if owner:
        # The task's title, not the refused mail's Subject: that may be someone else's
        # question the owner answered, and a notice under it inviting "Complete or Fail"
        # would read as being about that question.
        message["Subject"] = f"Your reply was not acted on: {one_line(request.title, 200)}"
    else:
        subject = fields.subject or "your reply"
        message["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    message["Date"] = formatdate(now, usegmt=True)
    digest = notice_kind(decision.message_id).removeprefix(REFUSAL_NOTICE)
    message["Message-ID"] = f"<{inbound.local_part}.notice.{request.id}.{digest}@{inbound.reply_domain}>"
    message["In-Reply-To"] = decision.message_id
    # To the owner, the request mail first: an answer to this notice is an answer to the
    # request too (``RequestAddresses.answered_elsewhere``), whatever the refused reply's own
    # threading. Never to anyone else: its random part is what keeps someone who knows only
    # a reply address from threading a question of theirs to the request.
    thread = [request.message_id] if request.message_id and owner else []
    earlier = [r for r in fields.references if r not in (decision.message_id, request.message_id)]
    message["References"] = " ".join([*thread, *earlier, decision.message_id])
    message["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5
    message["X-Auto-Response-Suppress"] = "All"  # Exchange: no out-of-office answers this
    about = f"task {request.task_id} ({one_line(request.title, 200)})" if owner else f"task {request.task_id}"
    lines = [
        f"Your reply about {about} was not acted on; the task is unchanged.",
        "",
        "Why, as a mail server would have bounced it:",
        "",
        f"    {reply.code} {reply.enhanced} {reply.text}",
        "",
    ]
    if owner and reply.name in _ANSWER_AGAIN and request.expires_at > now and request.revoked_at is None:
        addresses = reply_addresses(settings, signer, request)
        message["Reply-To"] = addresses.reply_to
        if reply.name in _MAYBE_NOT_FOR_THE_REQUEST:
            lines += ["If your mail was not meant as an answer to this task, nothing more is needed.", ""]
        lines += [
            "How to answer: reply to this message starting with Complete or Fail, or send a mail",
            "to one of these addresses:",
            "",
            f"    Complete: {addresses.complete}",
            f"    Fail: {addresses.fail}",
            "",
        ]
    elif not owner:
        lines += [f"How to answer: only {request.owner}, to whom the request was sent, can answer it.", ""]
    else:
        lines += ["How to answer: the sentence above says what to do; nothing more is needed from you.", ""]
    lines.append("This notice was sent automatically, once for this reply; please do not answer it otherwise.")
    message.set_content("\n".join(lines) + "\n")
    return message


class RefusalNotices:
    """Tells the sender of a reply a poller refused (see the module's words)."""

    def __init__(
        self, settings: Settings, signer: Signer, queue: OutboundQueue, dkim: DkimSigner | None = None
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.queue = queue
        self.dkim = dkim

    async def refused(self, raw: bytes, outcome: MailboxOutcome) -> None:
        """A reply filed as rejected: queue its notice where one is due. A store that cannot
        be written raises TemporaryFailure (the reply is left for the next round)."""
        fields = ReplyFields.read(raw)
        why = "no decision"
        for decision in outcome.decisions:
            why = why_not_noticed(decision, fields) or ""
            if not why:
                await self._notice(decision, fields)
                return  # one notice per reply
        metrics.REFUSAL_NOTICES.labels("not_due").inc()
        log.info("refused reply %s: no notice (%s)", outcome.message_id, why)

    async def _notice(self, decision: Decision, fields: ReplyFields) -> None:
        request = decision.request
        assert request is not None and fields.from_address is not None
        now = time.time()
        message = wire_bytes(compose_notice(self.settings, self.signer, decision, request, fields, now))
        message = await signed(self.dkim, message)
        queued, mail = await self.queue.submit_notice(
            request.id,
            notice_kind(decision.message_id),
            message,
            self.settings.from_address,
            fields.from_address,
            per_hour=self.settings.mailbox.refusal_notices_per_hour,
        )
        metrics.REFUSAL_NOTICES.labels(queued.value).inc()
        if queued is NoticeQueued.RATE_LIMITED:
            log.warning(
                "refused reply %s: no notice, %s had %d this hour already",
                decision.message_id,
                fields.from_address,
                self.settings.mailbox.refusal_notices_per_hour,
            )
        elif mail is not None:
            log.info(
                "refused reply %s: notice queued for %s (%s, %s)",
                decision.message_id,
                fields.from_address,
                decision.reply.name,
                mail.state.value,
            )
