"""The completion request as the owner reads it: a mail they trust and act on at a glance.

It leads with the task's title and the context the workflow gave (where the task lives,
who asked, when it is due, what it is about), then the two buttons, the plain-Reply rule
and when the request expires, in the recipient's language. The reference block for the
reply service (``METADATA_START`` … ``METADATA_END``) stays, quiet, at the end: the
reading code strips it from a quoted reply, and clients that drop plus-addressing still
carry the signed address back in it.

The HTML follows what mail clients allow: inline styles only (a ``<style>`` block adds the
dark-mode colours for clients that keep it), no external images or fonts, real text on
solid colours, and a ``lang`` attribute. The plain-text part says the same.
"""

from __future__ import annotations

import email.policy
import html
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, formataddr
from typing import Literal
from urllib.parse import quote

from .config import Settings
from .reading import METADATA_END, METADATA_START, REQUEST_LEADS
from .safetext import one_line
from .store import Request
from .thread_ids import thread_id

Language = Literal["en", "de", "fr"]
LANGUAGES: tuple[Language, ...] = ("en", "de", "fr")
MAX_DESCRIPTION_CHARS = 4000


class _MessageIds(UnstructuredHeader, BaseHeader):
    """In-Reply-To and References of our own mails: each id whole on its line, as the
    library writes a Message-ID (as unstructured text, an id longer than a line, such as
    ``thread_ids``' with a long reply domain, would be written as an RFC 2047 encoded word,
    which no client takes for an id)."""

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: " + f"{policy.linesep} ".join(str(self).split()) + policy.linesep


_HEADERS = HeaderRegistry()
_HEADERS.map_to_type("in-reply-to", _MessageIds)
_HEADERS.map_to_type("references", _MessageIds)
# The policy of request and reminder mails.
MAIL_POLICY = email.policy.default.clone(header_factory=_HEADERS)


@dataclass(frozen=True)
class ReplyAddresses:
    complete: str
    fail: str
    reply_to: str
    message_id: str


@dataclass(frozen=True)
class RequestContext:
    """What the workflow tells us about the task, each part optional: shown, never acted on."""

    context_title: str | None = None  # where the task lives: a release and phase, a pipeline
    link: str | None = None  # the task in the workflow's UI (http or https)
    requested_by: str | None = None
    due: datetime | None = None
    description: str | None = None


@dataclass(frozen=True)
class _Words:
    """One language's sentences. ``{…}`` fields are filled in; every value is escaped."""

    subject: str
    lead: str
    where: str
    requested_by: str
    due: str
    open_task: str
    complete: str
    fail: str
    complete_prefix: str
    fail_prefix: str
    buttons_hint: str
    reply_rule: str
    write_to_complete: str
    write_to_fail: str
    expires: str
    in_days: tuple[str, str]  # one, many
    in_hours: tuple[str, str]
    reference: str
    weekdays: tuple[str, ...]
    months: tuple[str, ...]
    date_format: str  # {weekday} {day} {month} {year}, {time}


# The decision words these sentences teach ("Complete", "Erledigt", "Approuvé"…) are among
# the reading code's own (rc_mta/reading/words.py), so the rule in the mail is the rule applied.
_WORDS: dict[Language, _Words] = {
    "en": _Words(
        subject="Action needed: {title}",
        lead=REQUEST_LEADS["en"],  # where a reply quoting the request unmarked is cut
        where="In",
        requested_by="Requested by",
        due="Due",
        open_task="Open the task",
        complete="Complete",
        fail="Fail",
        complete_prefix="Complete",
        fail_prefix="Fail",
        buttons_hint="Press a button, add a comment if you like, and send.",
        reply_rule=(
            "Or simply reply to this email: start with the word Complete or Fail. "
            "Anything else you write becomes the task's comment."
        ),
        write_to_complete="To complete it, write to:",
        write_to_fail="To fail it, write to:",
        expires="This request expires {relative}, on {date}.",
        in_days=("in {n} day", "in {n} days"),
        in_hours=("in {n} hour", "in {n} hours"),
        reference="Reference for the reply service (keep it when replying)",
        weekdays=("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
        months=("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        date_format="{weekday} {day} {month} {year}, {time} UTC",
    ),
    "de": _Words(
        subject="Ihre Entscheidung: {title}",
        lead=REQUEST_LEADS["de"],  # where a reply quoting the request unmarked is cut
        where="In",
        requested_by="Angefragt von",
        due="Fällig",
        open_task="Aufgabe öffnen",
        complete="Erledigt",
        fail="Abgelehnt",
        complete_prefix="Erledigt",
        fail_prefix="Abgelehnt",
        buttons_hint="Drücken Sie einen Knopf, fügen Sie bei Bedarf einen Kommentar hinzu und senden Sie.",
        reply_rule=(
            "Oder antworten Sie einfach auf diese E-Mail und beginnen Sie mit dem Wort Erledigt "
            "oder Abgelehnt. Alles Weitere wird zum Kommentar der Aufgabe."
        ),
        write_to_complete="Zum Erledigen schreiben Sie an:",
        write_to_fail="Zum Ablehnen schreiben Sie an:",
        expires="Diese Anfrage läuft {relative} ab, am {date}.",
        in_days=("in {n} Tag", "in {n} Tagen"),
        in_hours=("in {n} Stunde", "in {n} Stunden"),
        reference="Referenz für den Antwortdienst (beim Antworten bitte stehen lassen)",
        weekdays=("Mo.", "Di.", "Mi.", "Do.", "Fr.", "Sa.", "So."),
        months=("Jan.", "Feb.", "März", "Apr.", "Mai", "Juni", "Juli", "Aug.", "Sept.", "Okt.", "Nov.", "Dez."),
        date_format="{weekday} {day}. {month} {year}, {time} UTC",
    ),
    "fr": _Words(
        subject="Décision attendue : {title}",
        lead=REQUEST_LEADS["fr"],  # where a reply quoting the request unmarked is cut
        where="Dans",
        requested_by="Demandé par",
        due="Échéance",
        open_task="Ouvrir la tâche",
        complete="Approuvé",
        fail="Refusé",
        complete_prefix="Approuvé",
        fail_prefix="Refusé",
        buttons_hint="Appuyez sur un bouton, ajoutez un commentaire si vous le souhaitez, puis envoyez.",
        reply_rule=(
            "Ou répondez simplement à ce message en commençant par le mot Approuvé ou Refusé. "
            "Tout le reste devient le commentaire de la tâche."
        ),
        write_to_complete="Pour l'approuver, écrivez à :",
        write_to_fail="Pour la refuser, écrivez à :",
        expires="Cette demande expire {relative}, le {date}.",
        in_days=("dans {n} jour", "dans {n} jours"),
        in_hours=("dans {n} heure", "dans {n} heures"),
        reference="Référence pour le service de réponse (à conserver en répondant)",
        weekdays=("lun.", "mar.", "mer.", "jeu.", "ven.", "sam.", "dim."),
        months=(
            *("janv.", "févr.", "mars", "avr.", "mai", "juin"),
            *("juil.", "août", "sept.", "oct.", "nov.", "déc."),
        ),
        date_format="{weekday} {day} {month} {year}, {time} UTC",
    ),
}

# Colours with at least 4.5:1 contrast for their text, in light and in dark mode.
_COMPLETE_COLOUR = "#1b5e20"
_FAIL_COLOUR = "#b71c1c"
_QUIET_LIGHT = "#5f6368"
_QUIET_DARK = "#b0b4b8"
_LINK_LIGHT = "#1a56db"
_LINK_DARK = "#8ab4f8"
_PAGE_STYLE = (
    "max-width:600px;margin:0 auto;padding:24px 16px;font-size:15px;line-height:1.5;"
    "font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif"
)


def _date(moment: datetime, words: _Words) -> str:
    moment = moment.astimezone(UTC)
    return words.date_format.format(
        weekday=words.weekdays[moment.weekday()],
        day=moment.day,
        month=words.months[moment.month - 1],
        year=moment.year,
        time=moment.strftime("%H:%M"),
    )


def _relative(seconds: float, words: _Words) -> str:
    """ "in 7 days" rather than a timestamp to convert: how people plan."""
    hours = max(1, round(seconds / 3600))
    if hours < 48:
        one, many = words.in_hours
        return (one if hours == 1 else many).format(n=hours)
    days = round(hours / 24)
    one, many = words.in_days
    return (one if days == 1 else many).format(n=days)


def _mailto(address: str, subject: str) -> str:
    # Two empty lines: the cursor lands where the comment goes.
    return f"mailto:{address}?subject={quote(subject)}&body={quote(chr(10) + chr(10))}"


def _paragraphs(text: str) -> list[str]:
    """A description as paragraphs of one-line text (its line breaks kept as paragraph ends)."""
    text = text[:MAX_DESCRIPTION_CHARS]
    return [one_line(part) for part in text.replace("\r\n", "\n").split("\n\n") if one_line(part)]


def compose(
    settings: Settings,
    request: Request,
    addresses: ReplyAddresses,
    now: float,
    *,
    context: RequestContext | None = None,
    language: Language = "en",
) -> EmailMessage:
    """The request mail, text and HTML, ready for a transport."""
    context = context or RequestContext()
    words = _WORDS[language]
    # The title and context may come from a backend: a line break would start a header of
    # its own in the Subject, or a line of the reference block in the body.
    title = one_line(request.title)
    facts: list[tuple[str, str]] = []
    if context.context_title:
        facts.append((words.where, one_line(context.context_title)))
    if context.requested_by:
        facts.append((words.requested_by, one_line(context.requested_by)))
    if context.due:
        facts.append((words.due, _date(context.due, words)))
    description = _paragraphs(context.description) if context.description else []
    expires = words.expires.format(
        relative=_relative(request.expires_at - now, words),
        date=_date(datetime.fromtimestamp(request.expires_at, UTC), words),
    )
    complete_subject = f"{words.complete_prefix}: {title}"
    fail_subject = f"{words.fail_prefix}: {title}"
    reference = [f"Request: {addresses.reply_to}", f"Task: {request.task_id}"]

    text = "\n".join(
        [
            title,
            "=" * min(len(title), 72),
            "",
            f"{words.lead}.",
            *(f"{label}: {value}" for label, value in facts),
            *([f"{words.open_task}: {context.link}"] if context.link else []),
            *(line for paragraph in description for line in ("", paragraph)),
            "",
            words.write_to_complete,
            f"  {addresses.complete}",
            words.write_to_fail,
            f"  {addresses.fail}",
            words.reply_rule,
            "",
            expires,
            "",
            METADATA_START,
            f"{words.reference}:",
            *reference,
            METADATA_END,
            "",
        ]
    )
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = formataddr(("rc-mta", settings.from_address))
    message["To"] = request.owner
    message["Reply-To"] = addresses.reply_to
    message["Subject"] = words.subject.format(title=title)
    message["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = addresses.message_id
    if (thread := thread_id(addresses.message_id)) is not None:
        # Kept by a relay that replaces the Message-ID, and by the reply (``thread_ids``).
        message["References"] = thread
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    message["X-RC-MTA-Task"] = request.task_id
    message.set_content(text)
    message.add_alternative(
        _html(
            language,
            words,
            title=title,
            facts=facts,
            link=context.link,
            description=description,
            complete_href=_mailto(addresses.complete, complete_subject),
            fail_href=_mailto(addresses.fail, fail_subject),
            expires=expires,
            reference=reference,
        ),
        subtype="html",
    )
    message["Content-Language"] = language  # after the parts: setting content clears Content-* headers
    return message


def _html(
    language: Language,
    words: _Words,
    *,
    title: str,
    facts: list[tuple[str, str]],
    link: str | None,
    description: list[str],
    complete_href: str,
    fail_href: str,
    expires: str,
    reference: list[str],
) -> str:
    e = html.escape
    button = (
        '<a href="{href}" style="display:inline-block;padding:12px 24px;margin:0 12px 8px 0;'
        "border-radius:6px;background-color:{colour};color:#ffffff;text-decoration:none;"
        'font-weight:bold;font-size:16px;border:2px solid {colour}">{label}</a>'
    )
    rows = "".join(
        f'<tr><td style="padding:2px 16px 2px 0;color:{_QUIET_LIGHT}" class="quiet">{e(label)}</td>'
        f'<td style="padding:2px 0">{e(value)}</td></tr>'
        for label, value in facts
    )
    facts_table = f'<table role="presentation" style="border-collapse:collapse;margin:0 0 16px">{rows}</table>'
    open_link = (
        f'<p style="margin:0 0 16px"><a href="{e(link)}" class="link" style="color:{_LINK_LIGHT}">'
        f"{e(words.open_task)}</a></p>"
        if link
        else ""
    )
    paragraphs = "".join(f'<p style="margin:0 0 12px">{e(p)}</p>' for p in description)
    reference_lines = "<br>".join(e(line) for line in (*reference, METADATA_END))
    return f"""<!DOCTYPE html>
<html lang="{language}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="supported-color-schemes" content="light dark">
<title>{e(title)}</title>
<style>
@media (prefers-color-scheme: dark) {{
  .quiet {{ color: {_QUIET_DARK} !important; }}
  .link {{ color: {_LINK_DARK} !important; }}
}}
</style>
</head>
<body style="margin:0;padding:0">
<div style="{_PAGE_STYLE}">
<p style="margin:0 0 4px;color:{_QUIET_LIGHT}" class="quiet">{e(words.lead)}</p>
<h1 style="margin:0 0 16px;font-size:22px;line-height:1.3">{e(title)}</h1>
{facts_table if facts else ""}{open_link}{paragraphs}
<p style="margin:8px 0 8px">
{button.format(href=e(complete_href), colour=_COMPLETE_COLOUR, label=e(words.complete))}
{button.format(href=e(fail_href), colour=_FAIL_COLOUR, label=e(words.fail))}
</p>
<p style="margin:0 0 8px">{e(words.buttons_hint)}</p>
<p style="margin:0 0 16px">{e(words.reply_rule)}</p>
<p style="margin:0 0 24px">{e(expires)}</p>
<p style="margin:0;font-size:12px;color:{_QUIET_LIGHT}" class="quiet">{e(METADATA_START)}<br>
{e(words.reference)}:<br>
<span style="font-size:11px">{reference_lines}</span></p>
</div>
</body>
</html>
"""
