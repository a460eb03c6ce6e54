"""Recognise mail a machine wrote, so that it never completes or fails a task.

Bounces, out-of-office notices, feedback and read reports and challenge-response mails
reach the reply addresses too, often from the owner's own address; acted on, "No access
to email until Monday" would fail a task. Each detector in ``DETECTORS`` reads one kind
of signal and returns a short ASCII reason (shown in the 250 reply and the logs) or None.

Headers and MIME structure come first. Subjects and body openings count only where their
shape is unmistakable and anchored at the very start, because a person may well write
"I'm out of office tomorrow but approved" or quote an "Automatic reply" in the text.
Reasons of delivery, feedback and read reports end in " report" (the metrics kind).
Every text a pattern sees is cut to a few KiB first, so no input can make this slow.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from html.parser import HTMLParser

from .headers import structured_header, unfold

__all__ = ["DETECTORS", "Detector", "Mail", "machine_reason", "read_mail"]

_MAX_HEADERS = 500  # header fields looked at, in order
_MAX_PARTS = 64  # MIME parts looked at
_MAX_DEPTH = 8  # MIME nesting followed
_HEADER_CHARS = 2048  # of a raw header value, before decoding
_SUBJECT_CHARS = 300
_BODY_BYTES = 16 * 1024  # of the first text part, before decoding
_BODY_CHARS = 1000  # of its opening, whitespace collapsed
_JSON_BYTES = 64 * 1024  # a notification larger than this is not read as JSON


@dataclass(frozen=True)
class Mail:
    """The bounded facts of one message that the detectors look at."""

    message: Message
    envelope_sender: str | None
    headers: dict[str, tuple[str, ...]]  # lower-case name -> unfolded raw values, in order
    subject: str  # decoded, NFC, whitespace collapsed, cut
    sender_local: str  # From's local part, lower case
    sender_name: str  # From's display name, lower case
    opening: str  # the first text part's opening as a reader sees it, whitespace collapsed
    body: str  # the first text part's start, as sent (for JSON notifications)

    def header(self, name: str) -> tuple[str, ...]:
        return self.headers.get(name.lower(), ())


Detector = Callable[[Mail], "str | None"]


def machine_reason(message: Message, envelope_sender: str | None = None) -> str | None:
    """Why this message was written by a machine, or None for a person's reply.

    ``envelope_sender=""`` is the null reverse-path of a bounce; ``None`` means unknown
    (a saved file), which must not be read as a bounce. Never raises.
    """
    try:
        mail = read_mail(message, envelope_sender)
    except Exception:
        return None
    for _name, detect in DETECTORS:
        try:
            reason = detect(mail)
        except Exception:
            reason = None
        if reason:
            return reason
    return None


# --------------------------------------------------------------------------
# Reading the message, bounded
# --------------------------------------------------------------------------


def read_mail(message: Message, envelope_sender: str | None) -> Mail:
    """Collect what the detectors need, each piece cut to a fixed size."""
    headers = _headers(message)
    local, name = _sender(headers)
    body = _first_text(message)
    return Mail(
        message=message,
        envelope_sender=envelope_sender,
        headers=headers,
        subject=_subject(headers),
        sender_local=local,
        sender_name=name,
        opening=_opening(body),
        body=body[1],
    )


def _fix_surrogates(value: str) -> str:
    """Undecodable 8-bit header bytes (kept as surrogates) become UTF-8 text, or are replaced."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _headers(message: Message) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    try:
        items = message.raw_items()
        for index, (key, value) in enumerate(items):
            if index >= _MAX_HEADERS:
                break
            unfolded = unfold(str(value)[: _HEADER_CHARS * 2])
            found.setdefault(str(key).strip().lower(), []).append(_fix_surrogates(unfolded).strip())
    except Exception:
        pass
    return {key: tuple(values) for key, values in found.items()}


def _collapse(text: str, limit: int) -> str:
    text = unicodedata.normalize("NFC", text[: limit * 4])
    return " ".join(text.split())[:limit]  # what re.sub(r"\s+", " ", text).strip() gives, in a fifth of the time


def _decoded(name: str, raw: str) -> str:
    """RFC 2047-decoded value of a header cut to a few KiB first: the library's header
    parser is not linear on a long value, so it never sees one."""
    try:
        return _fix_surrogates(str(structured_header(name, raw[:_HEADER_CHARS])))
    except Exception:
        return raw[:_HEADER_CHARS]


def _subject(headers: dict[str, tuple[str, ...]]) -> str:
    raw = headers.get("subject", ())
    return _collapse(_decoded("subject", raw[0]), _SUBJECT_CHARS) if raw else ""


def _sender(headers: dict[str, tuple[str, ...]]) -> tuple[str, str]:
    """From's local part and display name; empty when there is no single From."""
    if len(headers.get("from", ())) != 1:
        return "", ""
    value = _decoded("from", headers["from"][0])
    try:
        pairs = getaddresses([value])
    except Exception:
        return "", ""
    if len(pairs) != 1:
        return "", ""
    name, address = pairs[0]
    local = address.rsplit("@", 1)[0] if "@" in address else address
    return local.strip().lower(), _collapse(name, 80).lower()


def _leaves(part: Message, depth: int = 0) -> Iterator[Message]:
    """Body leaves in order, not into attached messages: a forwarded bounce is the
    person's attachment, not their words."""
    if depth > _MAX_DEPTH:
        return
    if depth > 0 and part.get_content_maintype() == "message":
        return
    if part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload[:_MAX_PARTS]:
                if isinstance(sub, Message):
                    yield from _leaves(sub, depth + 1)
        return
    yield part


def _parts(message: Message) -> Iterator[Message]:
    """Every part, containers too, not into attached messages, at most ``_MAX_PARTS``."""
    stack: list[tuple[Message, int]] = [(message, 0)]
    seen = 0
    while stack and seen < _MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        yield part
        if depth >= _MAX_DEPTH or (depth > 0 and part.get_content_maintype() == "message"):
            continue
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            stack.extend((sub, depth + 1) for sub in reversed(payload[:_MAX_PARTS]) if isinstance(sub, Message))


def _first_text(message: Message) -> tuple[str, str]:
    """(subtype, start of the text) of the first inline text/plain part, else text/html."""
    html: Message | None = None
    try:
        for index, part in enumerate(_leaves(message)):
            if index >= _MAX_PARTS:
                break
            if part.get_content_maintype() != "text" or part.get_content_disposition() == "attachment":
                continue
            subtype = part.get_content_subtype()
            if subtype == "plain":
                return "plain", _decoded_start(part)
            if subtype == "html" and html is None:
                html = part
    except Exception:
        return "plain", ""
    return ("html", _decoded_start(html)) if html is not None else ("plain", "")


def _decoded_start(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        return ""
    if not isinstance(payload, bytes):
        return ""
    data = payload[:_BODY_BYTES]
    try:
        charset = part.get_content_charset() or "utf-8"
        return data.decode(charset, "replace")
    except Exception:  # unknown or non-text charset label
        return data.decode("utf-8", "replace")


class _VisibleText(HTMLParser):
    """Text of an HTML opening, without head, style and script (input is already cut)."""

    _SKIP = frozenset({"head", "style", "script", "title"})
    _BREAK = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "table", "blockquote", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BREAK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


# A gateway banner stamped above the text ("[EXTERNAL]", "CAUTION: This email originated
# from outside..."): skipped, one paragraph at most, so the opening is the sender's.
_BANNER_RE = re.compile(
    r"(?:\[\s*(?:external|extern|externe|ext|caution|warning)\b[^\]\n]{0,40}\]"
    r"|(?:caution|warning|attention|external(?: email| sender| message)?)\s*:"
    r"|this (?:e-?mail|message) (?:originated|came|was sent|is) from (?:an )?(?:outside|external))",
    re.IGNORECASE,
)


def _opening(body: tuple[str, str]) -> str:
    subtype, text = body
    if subtype == "html":
        reader = _VisibleText()
        try:
            reader.feed(text)
            reader.close()
        except Exception:
            pass
        text = "".join(reader.parts)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines and _BANNER_RE.match(lines[0].strip()):
        end = next((i for i, line in enumerate(lines[:8]) if not line.strip()), 1)
        lines = lines[end:]
    return _collapse("\n".join(lines), _BODY_CHARS)


# --------------------------------------------------------------------------
# Envelope and headers
# --------------------------------------------------------------------------


def _null_sender(mail: Mail) -> str | None:
    """RFC 5321: bounces and RFC 3834 responses are sent with the null reverse-path."""
    sender = mail.envelope_sender
    if sender is not None and sender.strip().strip("<>").strip() == "":
        return "null sender"
    return None


_REPORT_PARTS = {
    "message/delivery-status": "delivery-status",
    "message/global-delivery-status": "delivery-status",
    "message/disposition-notification": "disposition-notification",
    "message/global-disposition-notification": "disposition-notification",
    "message/feedback-report": "feedback-report",
}


def _report(mail: Mail) -> str | None:
    """RFC 6522 multipart/report of any report-type (RFC 3464 DSN, RFC 8098 MDN, RFC 5965
    ARF), or a report's machine part found inside another container."""
    message = mail.message
    if message.get_content_type() == "multipart/report":
        report_type = message.get_param("report-type")
        kind = str(report_type).strip().lower() if isinstance(report_type, str) else ""
        kind = kind if re.fullmatch(r"[a-z0-9][a-z0-9.\-]{0,39}", kind) else "delivery-status"
        return f"{kind} report"
    for part in _parts(message):
        found = _REPORT_PARTS.get(part.get_content_type())
        if found:
            return f"{found} report"
    return None


# iTIP (RFC 5546) methods a calendar sends on a click (an attendee's Accept, Decline or
# new-time proposal, an organiser's invitation, update or cancellation): never a person's
# answer to a request, whatever address an invitation named. PUBLISH (an event shared as
# a file) is no scheduling message.
_CALENDAR_METHODS = frozenset({"reply", "counter", "request", "cancel", "refresh", "declinecounter", "add"})
_CALENDAR_TYPES = frozenset({"text/calendar", "application/ics"})
_CALENDAR_METHOD_RE = re.compile(r"^method[ \t]*:[ \t]*([a-z-]{1,20})[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def _calendar(mail: Mail) -> str | None:
    """A calendar's meeting message: a text/calendar part whose iTIP method (its
    Content-Type parameter, else its own METHOD line) schedules, or Outlook's
    Content-Class of meeting mail. A declined meeting whose organiser was the Complete
    address is no completion (found in review), nor is an accepted one."""
    for value in mail.header("Content-Class"):
        if value.strip().lower() == "urn:content-classes:calendarmessage":
            return "calendar message"
    for part in _parts(mail.message):
        if part.get_content_type() not in _CALENDAR_TYPES or _attached(part):
            continue
        method = part.get_param("method")
        found = str(method).strip().lower() if isinstance(method, str) else ""
        if not found:
            match = _CALENDAR_METHOD_RE.search(_decoded_start(part))
            found = match.group(1).lower() if match else ""
        if found in _CALENDAR_METHODS:
            return f"calendar {found}"
    return None


def _attached(part: Message) -> bool:
    """A file a person attached ("invite attached", an .ics with a name), not the calendar
    message itself, which a calendar sends inline (Google's adds a named copy beside it)."""
    return part.get_content_disposition() == "attachment" or part.get_filename() is not None


def _keyword(value: str) -> str:
    return value.split(";", 1)[0].split("(", 1)[0].strip().lower()


def _auto_submitted(mail: Mail) -> str | None:
    """RFC 3834: anything but "no" was sent automatically."""
    for value in mail.header("Auto-Submitted"):
        keyword = _keyword(value)
        if keyword != "no":
            return f"auto-submitted: {keyword[:32]}" if keyword else "auto-submitted"
    return None


# Headers auto-responders set before (or besides) RFC 3834; present and not "no", they mark one.
_AUTO_REPLY_HEADERS = (
    "X-Autoreply",
    "X-Autorespond",
    "X-Autoresponder",
    "X-Autoresponse",
    "X-AutoReply-From",
    "X-Mail-Autoreply",
    "X-Autogenerated",
)
_NEGATIVE_VALUES = frozenset({"no", "false", "0", "off"})


def _auto_reply_headers(mail: Mail) -> str | None:
    for name in _AUTO_REPLY_HEADERS:
        values = mail.header(name)
        if any(_keyword(value) not in _NEGATIVE_VALUES for value in values):
            return name.lower()
    return None


_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})


def _precedence(mail: Mail) -> str | None:
    """The de-facto Precedence header (and its X- twin) that responders and lists set."""
    for name in ("Precedence", "X-Precedence"):
        for value in mail.header(name):
            keyword = _keyword(value)
            if keyword in _BULK_PRECEDENCE:
                return f"precedence: {keyword}"
    return None


def _microsoft(mail: Mail) -> str | None:
    """Exchange stamps what its rules agent generates; an out-of-office reply carries the
    rules-loop counter together with X-Auto-Response-Suppress (a person's message carries
    neither: Outlook's own suppress header alone is not enough)."""
    if mail.header("X-MS-Exchange-Generated-Message-Source"):
        return "x-ms-exchange-generated-message-source"
    if mail.header("X-MS-Exchange-Inbox-Rules-Loop") and mail.header("X-Auto-Response-Suppress"):
        return "x-ms-exchange-inbox-rules-loop"
    return None


def _failed_recipients(mail: Mail) -> str | None:
    """Exim (and others) list the addresses a bounce is about in X-Failed-Recipients."""
    if mail.header("X-Failed-Recipients"):
        return "x-failed-recipients - delivery report"
    return None


_DAEMON_LOCALS = frozenset({"mailer-daemon", "mailer_daemon", "mailerdaemon", "mail-daemon", "maildaemon"})
_DELIVERY_SYSTEM_NAMES = re.compile(
    r"(?:mail delivery (?:system|subsystem|service)|mail administrator|mailer-daemon|microsoft outlook"
    r"|microsoft exchange|mail system|postmaster at \S+)$"
)
_NOREPLY_RE = re.compile(
    r"(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|bounces?)(?:$|[-+=_.])|.{1,64}?[-+_.](?:no[-_.]?reply|bounces?)$"
)


def _machine_sender(mail: Mail) -> str | None:
    """A From only machines use: MAILER-DAEMON, a postmaster named as a delivery system
    (a person may answer from postmaster@), or a no-reply / bounce address."""
    local = mail.sender_local[:64]
    if local in _DAEMON_LOCALS:
        return "from: mailer-daemon - delivery report"
    if local == "postmaster" and _DELIVERY_SYSTEM_NAMES.match(mail.sender_name):
        return "from: postmaster - delivery report"
    if _NOREPLY_RE.match(local):
        return "from: no-reply address"
    return None


# --------------------------------------------------------------------------
# Body shapes
# --------------------------------------------------------------------------

# The opening line each bounce generator writes, matched at the very start of the body.
_BOUNCE_OPENINGS: tuple[tuple[str, str], ...] = (
    ("qmail", r"hi\. this is the qmail-send program at "),
    ("exim", r"this message was created automatically by mail delivery software"),
    ("postfix", r"this is the mail system at host "),
    ("postfix", r"i'm sorry to have to inform you that your message could not be delivered"),
    ("sendmail", r"the original message was received at .{1,120}? from "),
    ("sendmail", r"-+ the following addresses had (?:permanent )?fatal errors -+"),
    ("gmail", r"delivery to the following recipients? (?:failed|has been delayed)"),
    ("gmail", r"\*\* (?:address not found|message not delivered|message blocked) \*\*"),
    ("gmail", r"this is an automatically generated delivery status notification"),
    ("yahoo", r"sorry, we were unable to deliver your message to the following address"),
    ("yahoo", r"message from yahoo\.com\. unable to deliver message to the following address"),
    ("exchange", r"delivery has failed to these recipients or groups"),
    ("exchange", r"delivery is delayed to these recipients or groups"),
    ("exchange", r"your message to \S{1,254}@\S{1,254} couldn't be delivered\."),
    ("exchange", r"your message did not reach some or all of the intended recipients"),
    ("exchange", r"die zustellung an folgende empfänger oder gruppen ist fehlgeschlagen"),
    ("exchange", r"la remise à ces destinataires ou groupes a échoué"),
    ("exchange", r"error en la entrega a estos destinatarios o grupos"),
    ("lotus notes", r"your message subject: .{0,200}? was not delivered to:"),
    ("mail server", r"unable to deliver (?:your )?message to the following (?:recipients?|address(?:es)?)"),
    ("mail server", r"your (?:e-?mail|message) could not be delivered to (?:one or more|the following) recipients?"),
)
_BOUNCE_OPENING_RE = re.compile(
    "|".join(f"(?P<b{index}>{pattern})" for index, (_, pattern) in enumerate(_BOUNCE_OPENINGS)), re.IGNORECASE
)

# A read receipt written as text ("Your message ... was read on ..."), Outlook's layout.
_READ_RECEIPT_RE = re.compile(
    r"(?:your message to: .{0,300}? subject: .{0,300}? was read on "
    r"|ihre nachricht an: .{0,300}? betreff: .{0,300}? wurde am .{0,80}? gelesen"
    r"|votre message à ?: .{0,300}? objet ?: .{0,300}? a été lu le )",
    re.IGNORECASE,
)

# Challenge-response: the sender must prove to be a person before the mail is delivered.
_CHALLENGE_OPENING_RE = re.compile(
    r"(?:(?:hello|hi|dear sender)[,.!]? )?"
    r"(?:i apologi[sz]e for this automatic reply"
    r"|please (?:confirm|verify) (?:that )?you are (?:a )?(?:human|real person|person|not a robot)"
    r"|to reach me,? please (?:confirm|verify)"
    r"|(?:please )?verify your (?:e-?mail(?: address)?|address|message) (?:so as |in order )?to reach me"
    r"|your (?:e-?mail|message) (?:to \S{1,254} )?(?:is being|has been|was) held (?:until|pending) "
    r"(?:you|your|the sender)"
    r"|i(?: am|'m|’m) (?:now )?using a challenge[- ]response)",
    re.IGNORECASE,
)


def _bounce_body(mail: Mail) -> str | None:
    """Non-DSN bounces: the first words of each generator's notice, at the body's start."""
    match = _BOUNCE_OPENING_RE.match(mail.opening)
    if match and match.lastgroup:
        return f"body: {_BOUNCE_OPENINGS[int(match.lastgroup[1:])][0]} - delivery report"
    if _READ_RECEIPT_RE.match(mail.opening):
        return "body: read receipt - disposition report"
    return None


def _notification_json(mail: Mail) -> str | None:
    """Amazon SES bounce/complaint notifications, as mailed raw or wrapped by SNS: the body
    is nothing but that JSON object."""
    text = mail.body.strip()
    if not text.startswith("{") or len(text.encode("utf-8", "replace")) >= _JSON_BYTES:
        return None
    try:
        data = json.loads(text)
        if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
            data = json.loads(data["Message"][:_JSON_BYTES])
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or "mail" not in data:
        return None
    kind = data.get("notificationType", data.get("eventType"))
    if kind == "Bounce":
        return "body: amazon ses bounce - delivery report"
    if kind == "Complaint":
        return "body: amazon ses complaint - feedback report"
    return None


def _challenge(mail: Mail) -> str | None:
    if _CHALLENGE_OPENING_RE.match(mail.opening) or _CHALLENGE_SUBJECT_RE.match(mail.subject):
        return "challenge-response"
    return None


# --------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------

# Up to two gateway tags ("[EXTERNAL]", "[SPAM]") may precede what the machine wrote.
_TAGS = r"(?:\[[^\[\]:]{1,30}\]\s?){0,2}[\[(]?"


def _phrases(entries: tuple[tuple[str, str], ...]) -> str:
    """Alternation of phrases; a word-final phrase must end at a word boundary, a spaced
    or hyphenated one matches either way ("out of office", "out-of-office")."""
    parts = []
    for _lang, phrase in sorted(entries, key=lambda entry: -len(entry[1])):
        pattern = re.escape(phrase).replace(r"\ ", r"[\s\-]?")
        if phrase[-1].isalpha() and ord(phrase[-1]) < 0x2E80:  # not CJK: words end at boundaries
            pattern += r"(?!\w)"
        parts.append(pattern)
    return "|".join(parts)


def _label(match: str, entries: tuple[tuple[str, str], ...], what: str) -> str:
    """The matched phrase as ASCII for the reply ("réponse automatique" -> "reponse
    automatique"), or the language's code where it has no Latin spelling."""
    text = re.sub(r"[\s\-]+", " ", match.lower().strip(" [(")).strip()
    letters = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    if letters.isascii():
        return letters
    wanted = re.sub(r"[\s\-]+", "", text)
    lang = next((lang for lang, phrase in entries if re.sub(r"[\s\-]+", "", phrase) == wanted), "")
    return f"{what} ({lang})" if lang else what


# Subject prefixes of out-of-office and auto-responders (Outlook's localised "Automatic
# reply", Exchange 2003's, Lotus Notes', Zimbra's, webmail responders'), by language.
_AUTO_REPLY_SUBJECTS: tuple[tuple[str, str], ...] = (
    ("en", "automatic reply"),
    ("en", "auto reply"),
    ("en", "autoreply"),
    ("en", "auto response"),
    ("en", "autoresponse"),
    ("en", "autoresponder"),
    ("en", "out of office"),
    ("en", "out of the office"),
    ("en", "out of office autoreply"),
    ("en", "on vacation"),
    ("en", "vacation reply"),
    ("en", "away from the office"),
    ("en", "away from office"),
    ("de", "automatische antwort"),
    ("de", "abwesenheitsnotiz"),
    ("de", "automatische abwesenheitsnotiz"),
    ("de", "abwesenheitsmeldung"),
    ("fr", "réponse automatique"),
    ("fr", "absent du bureau"),
    ("es", "respuesta automática"),
    ("es", "fuera de la oficina"),
    ("es", "fuera de oficina"),
    ("it", "risposta automatica"),
    ("it", "fuori sede"),
    ("it", "fuori ufficio"),
    ("nl", "automatisch antwoord"),
    ("nl", "afwezigheidsbericht"),
    ("pt", "resposta automática"),
    ("pt", "ausente do escritório"),
    ("pt", "fora do escritório"),
    ("ca", "resposta automàtica"),
    ("sv", "automatiskt svar"),
    ("sv", "frånvaromeddelande"),
    ("da", "automatisk svar"),
    ("da", "autosvar"),
    ("no", "fraværsmelding"),
    ("fi", "automaattinen vastaus"),
    ("fi", "poissaoloviesti"),
    ("et", "automaatvastus"),
    ("lv", "automātiskā atbilde"),
    ("lt", "automatinis atsakymas"),
    ("pl", "automatyczna odpowiedź"),
    ("cs", "automatická odpověď"),
    ("sk", "automatická odpoveď"),
    ("hu", "automatikus válasz"),
    ("ro", "răspuns automat"),
    ("sl", "samodejni odgovor"),
    ("hr", "automatski odgovor"),
    ("tr", "otomatik yanıt"),
    ("tr", "otomatik cevap"),
    ("el", "αυτόματη απάντηση"),
    ("ru", "автоматический ответ"),
    ("ru", "автоответ"),
    ("uk", "автоматична відповідь"),
    ("bg", "автоматичен отговор"),
    ("he", "תשובה אוטומטית"),
    ("ar", "رد تلقائي"),
    ("ja", "自動応答"),
    ("ja", "自動返信"),
    ("ja", "不在通知"),
    ("zh", "自动回复"),
    ("zh", "自動回覆"),
    ("zh", "自動回復"),
    ("ko", "자동 회신"),
    ("ko", "자동 응답"),
    ("ko", "부재중"),
    ("vi", "trả lời tự động"),
    ("th", "ตอบกลับอัตโนมัติ"),
    ("id", "balasan otomatis"),
)
# Words people also use at the start of a subject of their own: machine only with a colon.
_AUTO_REPLY_WORDS: tuple[tuple[str, str], ...] = (
    ("en", "auto"),
    ("en", "vacation"),
    ("en", "away"),
    ("en", "ooo"),
    ("en", "oof"),
    ("fr", "absence"),
    ("fr", "absent"),
    ("de", "abwesend"),
    ("de", "urlaub"),
    ("nl", "afwezig"),
    ("es", "ausente"),
    ("es", "ausencia"),
    ("it", "assente"),
    ("sv", "frånvaro"),
    ("sv", "autosvar"),
    ("no", "fravær"),
    ("fi", "poissa"),
    ("pl", "nieobecność"),
    ("ja", "不在"),
)
_AUTO_REPLY_SUBJECT_RE = re.compile(
    rf"{_TAGS}(?P<p>{_phrases(_AUTO_REPLY_SUBJECTS)}|(?:{_phrases(_AUTO_REPLY_WORDS)})(?=\s?[:：]))",
    re.IGNORECASE,
)
# Lotus Notes and others: the whole subject is "Alice Smith/ACME is out of the office.",
# perhaps with "(returning 06/12/2024)"; a colon before it ("Re: Bob is out of office,
# ...") or words after it are a person's.
_AWAY_SUBJECT_RE = re.compile(
    r"[^:：\[\]]{1,80}? (?:is (?:currently )?out of (?:the )?office|ist (?:nicht im büro|außer haus|abwesend)"
    r"|est absente? du bureau|está fuera de la oficina|è fuori (?:sede|ufficio))"
    r" ?[.!]? ?(?:\([^()]{0,60}\))? ?[.!]?$",
    re.IGNORECASE,
)

# Subject prefixes of bounces (Postfix, Exim, sendmail, qmail, Gmail's DSN subjects and
# Exchange's localised "Undeliverable:"), by language.
_BOUNCE_SUBJECTS: tuple[tuple[str, str], ...] = (
    ("en", "undelivered mail returned to sender"),
    ("en", "undeliverable"),
    ("en", "undelivered mail"),
    ("en", "undelivered message"),
    ("en", "delivery status notification"),
    ("en", "mail delivery failed"),
    ("en", "mail delivery failure"),
    ("en", "message delivery failure"),
    ("en", "delivery failure"),
    ("en", "delivery failed"),
    ("en", "delivery notification"),
    ("en", "returned mail"),
    ("en", "failure notice"),
    ("en", "delayed mail"),
    ("en", "warning: could not send message"),
    ("en", "mail system error"),
    ("en", "nondeliverable mail"),
    ("en", "non-deliverable"),
    ("en", "message not delivered"),
    ("en", "message could not be delivered"),
    ("de", "unzustellbar"),
    ("de", "nicht zustellbar"),
    ("de", "unzustellbare nachricht"),
    ("de", "zustellung fehlgeschlagen"),
    ("de", "benachrichtigung zum übermittlungsstatus"),
    ("fr", "non remis"),
    ("fr", "échec de la remise"),
    ("fr", "échec de distribution"),
    ("fr", "notification d'état de remise"),
    ("es", "no se puede entregar"),
    ("es", "no entregado"),
    ("es", "notificación de estado de entrega"),
    ("it", "non recapitabile"),
    ("it", "mancato recapito"),
    ("nl", "onbestelbaar"),
    ("nl", "niet bezorgd"),
    ("pt", "não é possível entregar"),
    ("pt", "não entregue"),
    ("sv", "kunde inte levereras"),
    ("sv", "det gick inte att leverera"),
    ("da", "kan ikke leveres"),
    ("no", "kan ikke leveres"),
    ("fi", "ei voitu toimittaa"),
    ("pl", "niedostarczalne"),
    ("pl", "nie można dostarczyć"),
    ("cs", "nedoručitelné"),
    ("hu", "kézbesíthetetlen"),
    ("tr", "teslim edilemedi"),
    ("ru", "недоставляемое сообщение"),
    ("ru", "не удается доставить"),
    ("ru", "не доставлено"),
    ("ja", "配信不能"),
    ("ja", "配信できませんでした"),
    ("zh", "无法投递"),
    ("zh", "无法传递"),
    ("zh", "無法傳遞"),
    ("ko", "배달되지 않음"),
)
_BOUNCE_SUBJECT_RE = re.compile(rf"{_TAGS}(?P<p>{_phrases(_BOUNCE_SUBJECTS)})", re.IGNORECASE)

_CHALLENGE_SUBJECT_RE = re.compile(
    rf"{_TAGS}(?:please confirm your (?:e-?mail|message)|confirm your (?:e-?mail|message) to"
    r"|verify your (?:e-?mail|message) to|sender verification|e-?mail verification required"
    r"|(?:please )?verify (?:that )?you are (?:a )?human)(?!\w)",
    re.IGNORECASE,
)


def _bounce_subject(mail: Mail) -> str | None:
    match = _BOUNCE_SUBJECT_RE.match(mail.subject)
    if match:
        return f"subject: {_label(match.group('p'), _BOUNCE_SUBJECTS, 'undeliverable')} - delivery report"
    return None


def _auto_reply_subject(mail: Mail) -> str | None:
    match = _AUTO_REPLY_SUBJECT_RE.match(mail.subject)
    if match:
        return f"subject: {_label(match.group('p'), _AUTO_REPLY_SUBJECTS + _AUTO_REPLY_WORDS, 'automatic reply')}"
    if _AWAY_SUBJECT_RE.match(mail.subject):
        return "subject: away notice"
    return None


#: The detectors in the order they are asked: envelope, structure and headers before
#: sender, body and subject shapes. The first reason found is the answer.
DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("null envelope sender", _null_sender),
    ("multipart/report", _report),
    ("calendar meeting message", _calendar),
    ("RFC 3834 Auto-Submitted", _auto_submitted),
    ("X-Autoreply and friends", _auto_reply_headers),
    ("Precedence", _precedence),
    ("Microsoft Exchange", _microsoft),
    ("X-Failed-Recipients", _failed_recipients),
    ("machine sender", _machine_sender),
    ("bounce body", _bounce_body),
    ("SES notification", _notification_json),
    ("challenge-response", _challenge),
    ("bounce subject", _bounce_subject),
    ("auto-reply subject", _auto_reply_subject),
)
