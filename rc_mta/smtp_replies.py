"""Every SMTP reply rc-mta can give, in one table.

A newcomer reads this file and knows every refusal. Each reply has a name; tests
assert on the name, and the metrics' ``reason`` label is the same name in lower case.
Enhanced status codes follow RFC 3463 and RFC 7372.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import errors as E
from .safetext import excerpt


@dataclass(frozen=True)
class SmtpReply:
    """A reply: basic code, enhanced code, and a sentence a person understands.

    ``echo_limit`` caps each value filled into the sentence: values are often the client's
    own words (an address, a HELO name) or a DNS record's, and a reply repeats no more
    than a short, escaped excerpt of them.
    """

    name: str
    code: int
    enhanced: str
    text: str
    echo_limit: int = 64

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def reason(self) -> str:
        """The metrics label and log field for this reply."""
        return self.name.lower()

    def with_text(self, **values: object) -> SmtpReply:
        """Fill the sentence's ``{placeholders}`` with the facts of one case, each as a short
        excerpt with control characters escaped: nothing a client sent can break the reply."""
        shown = {name: excerpt(str(value), self.echo_limit) for name, value in values.items()}
        return replace(self, text=self.text.format(**shown))

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


def _reply(name: str, code: int, enhanced: str, text: str, echo_limit: int = 64) -> SmtpReply:
    return SmtpReply(name, code, enhanced, text, echo_limit)


# Accepted.
OK = _reply("OK", 250, "2.0.0", "OK")
RECIPIENT_OK = _reply("RECIPIENT_OK", 250, "2.1.5", "Recipient OK")
SENDER_OK = _reply("SENDER_OK", 250, "2.1.0", "Sender OK")
TASK_ACTED = _reply("TASK_ACTED", 250, "2.0.0", "Task {task_id} {action_past}; thank you")
APPROVAL_RECORDED = _reply(
    "APPROVAL_RECORDED",
    250,
    "2.0.0",
    "Your approval of task {task_id} is recorded: {count} of the {needed} needed; thank you",
)
ALREADY_DONE = _reply("ALREADY_DONE", 250, "2.0.0", "This reply was already processed: task {task_id} {action_past}")
AUTO_REPLY_DROPPED = _reply("AUTO_REPLY_DROPPED", 250, "2.0.0", "Automatic reply accepted and discarded ({why})")

# Recipient (RCPT) refusals.
NOT_OUR_DOMAIN = _reply(
    "NOT_OUR_DOMAIN", 550, "5.7.1", "Relaying denied: {domain} is not a reply domain of this server"
)
UNKNOWN_MAILBOX = _reply(
    "UNKNOWN_MAILBOX", 550, "5.1.1", "No such mailbox here: replies go to the address in the request"
)
TOKEN_MALFORMED = _reply(
    "TOKEN_MALFORMED", 550, "5.1.1", "This reply address is damaged or incomplete: reply to the request email itself"
)
TOKEN_INVALID = _reply(
    "TOKEN_INVALID", 550, "5.7.1", "This reply address was not issued by this server (signature check failed)"
)
TOKEN_UNKNOWN_KEY = _reply(
    "TOKEN_UNKNOWN_KEY", 550, "5.7.1", "This reply address was signed with a key this server no longer accepts"
)
TOKEN_EXPIRED = _reply(
    "TOKEN_EXPIRED", 550, "5.7.1", "This completion request expired at {expired_at}: ask for a new one"
)
TOKEN_REVOKED = _reply(
    "TOKEN_REVOKED", 550, "5.7.1", "This completion request was withdrawn (the task was reassigned or re-sent)"
)
TOKEN_HANDED_OVER = _reply(
    "TOKEN_HANDED_OVER",
    550,
    "5.7.1",
    "This completion request was withdrawn (the task was reassigned): {now_with} has the task now",
)
TOO_MANY_RECIPIENTS = _reply(
    "TOO_MANY_RECIPIENTS", 452, "4.5.3", "Too many reply addresses in one message; send the others separately"
)

# Message (DATA) refusals.
TOKEN_USED = _reply(
    "TOKEN_USED", 550, "5.7.1", "This completion request was already answered: task {task_id} {action_past}"
)
DECISION_MADE = _reply(
    "DECISION_MADE",
    550,
    "5.7.1",
    "The decision on task {task_id} was already made: {action_past} by {by}; nothing was changed",
    echo_limit=200,
)
NOT_IN_APPROVAL_GROUP = _reply(
    "NOT_IN_APPROVAL_GROUP",
    550,
    "5.7.1",
    "Task {task_id} is decided by a group of approvers ({needed} of them must approve), and this request is not"
    " one of theirs; nothing was changed",
)
NO_TOKEN = _reply(
    "NO_TOKEN", 550, "5.7.1", "Could not find which request this reply answers: reply to the request email itself"
)
OWNER_MISMATCH = _reply(
    "OWNER_MISMATCH", 550, "5.7.1", "This reply comes from {sender}, but the request was sent to {owner}"
)
# From: the owner, Sender: someone else (a delegate's Send on Behalf): not the owner's answer.
SENT_ON_BEHALF = _reply(
    "SENT_ON_BEHALF",
    550,
    "5.7.1",
    "This reply was sent by {delegate} on behalf of {owner} (its Sender field), but the request asks {owner}"
    " to answer: {owner} should reply from their own mailbox, or have the task reassigned",
)
ACTION_UNCLEAR = _reply(
    "ACTION_UNCLEAR",
    550,
    "5.6.0",
    "Could not tell whether to complete or fail the task now: start your reply with Complete or Fail"
    " (or press a button in the request), and send it when the task should move; rc-mta acts as soon as it reads it",
)
# A Complete or Fail button's reply whose own words decide the other way: two readings.
ACTION_CONTRADICTS_BUTTON = _reply(
    "ACTION_CONTRADICTS_BUTTON",
    550,
    "5.6.0",
    "Your words do not agree with the {button} address this reply went to (or ask for it later): press the button"
    " you mean in the request when the task should move, or reply to the request email starting with Complete or Fail",
)
TASK_NOT_FOUND = _reply("TASK_NOT_FOUND", 550, "5.1.1", "Task {task_id} no longer exists")
# Until that answer's sender tries again (which settles it), or a person decides the task.
SIBLING_OUTCOME_UNKNOWN = _reply(
    "SIBLING_OUTCOME_UNKNOWN",
    451,
    "4.3.0",
    "Another answer to task {task_id} (request {request_id}) was cut off while it was acted on, and whether it"
    " was is not known yet; nothing was changed: try again later, or decide task {task_id} in the workflow system",
)
TASK_NOT_IN_PROGRESS = _reply(
    "TASK_NOT_IN_PROGRESS", 550, "5.7.1", "Task {task_id} was already {status}{by}; nothing was changed"
)
# The workflow system's own reason (already one line of at most 200 characters) is the
# owner's best clue, so it may be longer than a client's echoed words.
BACKEND_REFUSED = _reply(
    "BACKEND_REFUSED", 550, "5.7.1", "The workflow system refused this action: {why}", echo_limit=200
)
MESSAGE_MALFORMED = _reply(
    "MESSAGE_MALFORMED", 554, "5.6.0", "Message refused: {why}; send it again from an ordinary mail client"
)
# Two fields where a message has one (rawmessage.SINGLE_FIELDS): readers would disagree on it.
DUPLICATE_FIELD = _reply(
    "DUPLICATE_FIELD",
    550,
    "5.6.0",
    "Message refused: it has more than one {field} field, where a message has one (RFC 5322);"
    " send your reply again from your mail client, as it wrote it",
)
MESSAGE_TOO_BIG = _reply("MESSAGE_TOO_BIG", 552, "5.3.4", "Message too big: replies are limited to {limit} bytes")
# A message built to be expensive to read (rc_mta/budget.py): refused before any parser runs.
HEADER_TOO_BIG = _reply(
    "HEADER_TOO_BIG", 552, "5.3.4", "Message header too big: {why}; send a reply without it", echo_limit=120
)
MESSAGE_TOO_COMPLEX = _reply(
    "MESSAGE_TOO_COMPLEX",
    554,
    "5.6.0",
    "Message refused: {why}; send your reply from an ordinary mail client",
    echo_limit=120,
)

# Sender authentication (RFC 7372 codes where one exists).
RDNS_FAIL = _reply("RDNS_FAIL", 550, "5.7.25", "Reverse DNS of {ip} does not check out: {why}")
RDNS_TEMPERROR = _reply("RDNS_TEMPERROR", 450, "4.7.25", "Could not check the reverse DNS of {ip} now: {why}")
SPF_FAIL = _reply("SPF_FAIL", 550, "5.7.23", "SPF of {domain} does not allow {ip} to send its mail: {why}")
SPF_SOFTFAIL = _reply("SPF_SOFTFAIL", 550, "5.7.23", "SPF of {domain} does not authorize {ip} (softfail)")
SPF_TEMPERROR = _reply("SPF_TEMPERROR", 451, "4.7.24", "Could not evaluate the SPF of {domain} now: {why}")
SPF_PERMERROR = _reply("SPF_PERMERROR", 550, "5.7.24", "The SPF record of {domain} is broken: {why}")
WHITELIST = _reply("WHITELIST", 550, "5.7.1", "Replies are not accepted from this domain: {why}")
NOT_BOUND_TO_REQUEST = _reply(
    "NOT_BOUND_TO_REQUEST",
    550,
    "5.7.21",
    "The signature of {domain} on this message does not show it was written as an answer to this request "
    "(its signed To/Cc must name the reply address): answer with Reply or a button of the request email",
)
# Only an SPF pass authenticates it: the owner's server sent it, addressed to someone else
# (a list or alias the reply address was added to): its own To/Cc must name the address.
NOT_ADDRESSED_TO_REQUEST = _reply(
    "NOT_ADDRESSED_TO_REQUEST",
    550,
    "5.7.21",
    "This message from a server of {domain} was not written as an answer to this request "
    "(its To/Cc must name the reply address): answer with Reply or a button of the request email",
)
# Signed, but not what says how the body is read (checks/framing.py), and the body does not
# read as its author's client wrote it: changed on the way, maybe, to unquote quoted words.
UNSIGNED_FRAMING = _reply(
    "UNSIGNED_FRAMING",
    550,
    "5.6.0",
    "The signature of {domain} does not cover how this message's text is to be read, and {why}: it may have"
    " been changed on the way; send your reply again from your mail client",
    echo_limit=120,
)
# Addressed to the request, but an answer to another message (its In-Reply-To/References name
# no mail of the request): someone asked the owner something else with Reply-To our address.
REPLY_TO_ANOTHER_MESSAGE = _reply(
    "REPLY_TO_ANOTHER_MESSAGE",
    550,
    "5.7.1",
    "This is a reply to another message ({message_id}), not to the request; reply to the request mail itself",
    echo_limit=100,
)
# A button's address (a fixed action) on a message that also went to other people: it may
# answer one of them (a reply-all to a question whose Cc someone gave a button address).
BUTTON_WITH_OTHERS = _reply(
    "BUTTON_WITH_OTHERS",
    550,
    "5.7.1",
    "This message went to {others} as well as to the {action} address of task {task_id}, so it may answer"
    " something else: to {action} the task, press the button in the request email and send its message to"
    " rc-mta alone, or reply to the request email starting with {word}",
)
# The Complete and the Fail address of one request on one message: it says both.
BOTH_BUTTONS = _reply(
    "BOTH_BUTTONS",
    550,
    "5.6.0",
    "This message went to both the Complete and the Fail address of task {task_id}, so it says both: press"
    " one button in the request email and send its message alone, or reply to the request email starting"
    " with Complete or Fail",
)
DKIM_FAIL = _reply("DKIM_FAIL", 550, "5.7.20", "No valid DKIM signature: {why}")
# {why}: the policy, and what an ARC seal on the message did not do (checks/arc.py).
DMARC_REJECT = _reply("DMARC_REJECT", 550, "5.7.1", "Rejected by the DMARC policy of {domain}: {why}", echo_limit=120)
AUTH_TEMPERROR = _reply(
    "AUTH_TEMPERROR", 451, "4.4.3", "Could not verify the sender now (DNS trouble); please try again"
)
OWNER_NOT_AUTHENTICATED = _reply(
    "OWNER_NOT_AUTHENTICATED",
    550,
    "5.7.26",
    "Could not verify that this reply comes from {owner}: no aligned SPF, DKIM or DMARC pass",
)
RATE_LIMIT_CONNECTIONS = _reply("RATE_LIMIT_CONNECTIONS", 421, "4.7.0", "Too many connections from {ip}; try later")
RATE_LIMIT_MESSAGES = _reply("RATE_LIMIT_MESSAGES", 450, "4.7.1", "Too many messages from {who}; try later")
TOO_MANY_BAD_RECIPIENTS = _reply(
    "TOO_MANY_BAD_RECIPIENTS", 421, "4.7.0", "Too many invalid reply addresses in one session; closing"
)
# Session limits (rc_mta/inbound/limits.py): no crowd and no single client can hold the
# file descriptors; the sender's server retries later or on a new connection.
TOO_MANY_SESSIONS = _reply("TOO_MANY_SESSIONS", 421, "4.7.0", "Too many sessions open right now; try again later")
TOO_MANY_SESSIONS_FROM_IP = _reply(
    "TOO_MANY_SESSIONS_FROM_IP", 421, "4.7.0", "Too many sessions open from {ip}; finish one, then try again"
)
SESSION_TOO_LONG = _reply(
    "SESSION_TOO_LONG", 421, "4.4.2", "This session has lasted longer than {limit}; closing (connect again to go on)"
)
NO_PROGRESS = _reply(
    "NO_PROGRESS", 421, "4.7.0", "Too many commands without a recipient or message being accepted; closing"
)
# RFC 3463 X.3.2: the system is not accepting network messages (for now).
DESCRIPTORS_SHORT = _reply(
    "DESCRIPTORS_SHORT", 421, "4.3.2", "Out of connection resources right now; please try again later"
)
RATE_LIMIT_AUTH_FAILURES = _reply(
    "RATE_LIMIT_AUTH_FAILURES", 450, "4.7.1", "Too many failed authentications from {who}; try later"
)
# TLS (rc_mta/inbound/tls.py): [inbound.tls] require_tls refuses MAIL before STARTTLS.
TLS_REQUIRED = _reply(
    "TLS_REQUIRED", 530, "5.7.0", "Must issue a STARTTLS command first: this server accepts mail only over TLS"
)
TLS_ACTIVE = _reply("TLS_ACTIVE", 503, "5.5.1", "TLS is already active on this connection")
TLS_UNAVAILABLE = _reply("TLS_UNAVAILABLE", 454, "4.7.0", "TLS is not available on this listener")
XCLIENT_DENIED = _reply("XCLIENT_DENIED", 550, "5.7.0", "{command} is not allowed from {ip}")
XCLIENT_SYNTAX = _reply("XCLIENT_SYNTAX", 501, "5.5.4", "Bad {command} attribute: {why}")
XFORWARD_OK = _reply("XFORWARD_OK", 250, "2.0.0", "Ok")
PROXY_DENIED = _reply("PROXY_DENIED", 550, "5.7.0", "PROXY protocol is not allowed from {ip}")

# Bytes no command may hold: undecodable (not UTF-8) or control characters. RFC 3463:
# X.1.7 / X.1.3 bad sender / destination address syntax, X.5.2 syntax error.
SENDER_SYNTAX = _reply("SENDER_SYNTAX", 553, "5.1.7", "The sender address holds {problem}: it cannot be a mailbox")
RECIPIENT_SYNTAX = _reply(
    "RECIPIENT_SYNTAX", 553, "5.1.3", "The recipient address holds {problem}: it cannot be a mailbox"
)
HELO_SYNTAX = _reply("HELO_SYNTAX", 501, "5.5.2", "The {command} name holds {problem}: give the client's host name")
# VRFY is implemented (an address gets 252), so an argument that is no address is a syntax
# error in parameters (RFC 5321 4.2.2: 501, one of VRFY's replies in 4.3.2), not 502 "command
# not implemented" as aiosmtpd says; X.5.4 invalid command arguments (RFC 3463 3.6).
VRFY_UNPARSEABLE = _reply("VRFY_UNPARSEABLE", 501, "5.5.4", "Could not VRFY {argument}: not an address")
UNKNOWN_COMMAND = _reply("UNKNOWN_COMMAND", 500, "5.5.2", 'Command "{command}" is not recognized')

# Temporary trouble: the sender's server retries, nothing is lost.
BACKEND_UNAVAILABLE = _reply(
    "BACKEND_UNAVAILABLE", 451, "4.3.0", "Temporary problem acting on the task; please try again later"
)
# The action was cut at its deadline: done or not, only the backend knows; nothing else acts
# on the request until its claim is taken for dead, then the retry finds out.
ACTION_OUTCOME_UNKNOWN = _reply(
    "ACTION_OUTCOME_UNKNOWN",
    451,
    "4.3.0",
    "The workflow system is slow to act on task {task_id}; please try again later",
)
INTERNAL_ERROR = _reply("INTERNAL_ERROR", 451, "4.3.0", "Temporary local problem; please try again later")
# RFC 3463 X.3.2: system not accepting network messages (for now). Many messages are being
# read at once: the sender retries rather than wait behind them.
READER_BUSY = _reply(
    "READER_BUSY", 451, "4.3.2", "Too many messages are being read right now; please try again in a few minutes"
)
DECISION_IN_PROGRESS = _reply(
    "DECISION_IN_PROGRESS",
    451,
    "4.3.0",
    "Task {task_id} is being decided by another answer right now; please try again later",
)
# The action happened, its record did not: the retry records it (250), never acts again.
ACTION_NOT_RECORDED = _reply(
    "ACTION_NOT_RECORDED",
    451,
    "4.3.0",
    "Task {task_id} was {action_past}, but this could not be recorded yet; please try again later"
    " (it will not be done twice)",
)
MESSAGE_IN_PROGRESS = _reply(
    "MESSAGE_IN_PROGRESS",
    451,
    "4.3.0",
    "Another delivery of this same message is being processed right now; please try again later",
)
REQUEST_IN_PROGRESS = _reply(
    "REQUEST_IN_PROGRESS",
    451,
    "4.3.0",
    "Another reply to this completion request is being processed right now; please try again later",
)
# The webhook: an earlier answer to the same request, the other way, may have acted; until
# its sender tries it again (which settles it), or a person decides the task.
EARLIER_ANSWER_OUTCOME_UNKNOWN = _reply(
    "EARLIER_ANSWER_OUTCOME_UNKNOWN",
    451,
    "4.3.0",
    "An earlier answer to this request, to {action} task {task_id}, was cut off while it was acted on and may"
    " have been; this one was not acted on: that answer's retry settles it, or decide task {task_id} in the"
    " workflow system",
)
# The webhook refused the retry of an answer whose earlier try may have acted: its reason,
# and a 4xx, since only the sender's retry can settle whether that try acted.
RETRY_REFUSED_IN_DOUBT = _reply(
    "RETRY_REFUSED_IN_DOUBT",
    451,
    "4.3.0",
    "{refused}; but an earlier try of this answer may have acted on task {task_id}, so it will be tried again",
    echo_limit=300,
)
BACKEND_AUTH_FAILED = _reply(
    "BACKEND_AUTH_FAILED",
    451,
    "4.3.0",
    "Temporary problem acting on the task (the server's credentials were refused); please try again later",
)
SHUTTING_DOWN = _reply("SHUTTING_DOWN", 421, "4.3.2", "{hostname} Service shutting down, closing")


def _protocol_enhanced(code: int) -> str:
    """An enhanced code for aiosmtpd's own canned replies, which carry none."""
    by_code = {
        221: "2.0.0",
        250: "2.0.0",
        252: "2.0.0",
        451: "4.3.0",
        452: "4.3.1",
        500: "5.5.2",
        501: "5.5.4",
        502: "5.5.1",
        503: "5.5.1",
        504: "5.5.4",
        530: "5.7.0",
        550: "5.0.0",
        552: "5.3.4",
        553: "5.1.3",
        554: "5.7.0",
    }
    if code in by_code:
        return by_code[code]
    return f"{code // 100}.0.0"


def with_enhanced_code(line: str) -> str:
    """Give a bare protocol reply (``"503 Error: need MAIL command"``) an enhanced code.

    Replies that already carry one, greetings, EHLO lines and ``354``/``334`` are
    returned unchanged.
    """
    if len(line) < 4 or not line[:3].isdigit() or line[3] != " ":
        return line
    code = int(line[:3])
    if code in (220, 334, 354) or not 200 <= code < 600:
        return line
    rest = line[4:]
    first = rest.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return line
    return f"{code} {_protocol_enhanced(code)} {rest}"


# The SMTP edge's table: which reply each domain error gets. ------------------------------


def reply_for(error: BaseException) -> SmtpReply:
    """The reply for an error raised anywhere below the SMTP edge (the HTTP API has its own
    table); anything unexpected is our own trouble, a 4xx."""
    match error:
        case E.MessageRefused():
            return error.reply
        case E.TokenMalformed():
            return TOKEN_MALFORMED
        case E.TokenForged():
            return TOKEN_INVALID
        case E.TokenKeyRetired():
            return TOKEN_UNKNOWN_KEY
        case E.TokenExpired():
            return TOKEN_EXPIRED.with_text(expired_at=error.expired_at)
        case E.RequestRevoked() if error.now_with:
            return TOKEN_HANDED_OVER.with_text(now_with=error.now_with)
        case E.RequestRevoked():
            return TOKEN_REVOKED
        case E.RequestAnswered():
            return TOKEN_USED.with_text(task_id=error.task_id, action_past=error.action_past)
        case E.DecisionMade():
            return DECISION_MADE.with_text(task_id=error.task_id, action_past=error.action_past, by=error.by)
        case E.SiblingOutcomeUnknown():
            return SIBLING_OUTCOME_UNKNOWN.with_text(task_id=error.task_id, request_id=error.request_id)
        case E.NotInApprovalGroup():
            return NOT_IN_APPROVAL_GROUP.with_text(task_id=error.task_id, needed=error.needed)
        case E.TaskNotFound():
            return TASK_NOT_FOUND.with_text(task_id=error.task_id)
        case E.TaskNotInProgress():
            task = error.task
            by = f" by {task.acted_by}" if task.acted_by else ""
            return TASK_NOT_IN_PROGRESS.with_text(task_id=task.id, status=task.status, by=by)
        case E.BackendRefused():
            return BACKEND_REFUSED.with_text(why=error.why)
        case E.BackendAuthFailed():
            return BACKEND_AUTH_FAILED
        case E.ReaderBusy():
            return READER_BUSY
        case E.ActionOutcomeUnknown():
            return ACTION_OUTCOME_UNKNOWN.with_text(task_id=error.task_id)
        case E.DecisionPending():
            return DECISION_IN_PROGRESS.with_text(task_id=error.task_id)
        case E.EarlierAnswerOutcomeUnknown():
            return EARLIER_ANSWER_OUTCOME_UNKNOWN.with_text(task_id=error.task_id, action=error.action)
        case E.RefusedInDoubt():
            return RETRY_REFUSED_IN_DOUBT.with_text(refused=reply_for(error.refusal).text, task_id=error.task_id)
        case E.ActionNotRecorded():
            return ACTION_NOT_RECORDED.with_text(task_id=error.task_id, action_past=error.action_past)
        case E.TemporaryFailure():
            return BACKEND_UNAVAILABLE
    return INTERNAL_ERROR
