"""The person's own words, cut out of a reply body: each shape a client writes, as a table,
and the bounds that keep the reading linear on hostile input."""

from __future__ import annotations

import email.policy
import time
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import make_msgid

import pytest
from conftest import RcMta
from mailclient import reply_message, send_smtp

from rc_mta.reading import MAX_TEXT_CHARS, extract_comment, parse_reply

ROBOT = "rc-mta <rc-mta@corp.example>"
QUOTE = "> Task T-1042 is waiting for you\n> To complete it, reply starting with the word Complete"

SHAPES: dict[str, tuple[str, str]] = {
    # Attribution lines, in more languages and shapes.
    "Gmail, wrapped before the address": (
        f"Approved\n\nOn Mon, Jun 3, 2024 at 9:14 AM rc-mta <\nrc-mta@corp.example> wrote:\n\n{QUOTE}",
        "Approved",
    ),
    "Gmail, wrapped before 'wrote:'": (
        f"Approved\n\nOn Mon, Jun 3, 2024 at 9:14 AM {ROBOT}\nwrote:\n{QUOTE}",
        "Approved",
    ),
    "wrapped after the date": (f"Approved\nOn Mon, Jun 3, 2024 at 9:14 AM\n{ROBOT} wrote:\n{QUOTE}", "Approved"),
    "Danish skrev": (f"Godkendt.\n\nDen man. 3. jun. 2024 kl. 09.14 skrev {ROBOT}:\n{QUOTE}", "Godkendt."),
    "Polish napisał(a)": (f"Zatwierdzam\n\npon., 3 cze 2024 o 09:14 {ROBOT} napisał(a):\n{QUOTE}", "Zatwierdzam"),
    "Japanese, date first": (f"承認します。\n\n2024年6月3日(月) 9:14 {ROBOT}:\n{QUOTE}", "承認します。"),
    "Chinese, glued 写道": (f"同意\n\n{ROBOT} 于2024年6月3日周一 09:14写道：\n{QUOTE}", "同意"),
    "date first with a zone": (f"Approved\n\n2014-10-17 11:28 GMT+03:00 {ROBOT}:\n{QUOTE}", "Approved"),
    "name first, schrieb am": (f"Freigegeben\n\n{ROBOT} schrieb am Mo., 3. Juni 2024, 09:14:\n{QUOTE}", "Freigegeben"),
    "wrote: glued to the address": (f"Approved\n\nOn Mon, Jun 3, 2024 at 9:14 AM {ROBOT}wrote:\n{QUOTE}", "Approved"),
    "Yahoo's --- On … wrote:": (f"Approved\n\n--- On Mon, 6/3/24, {ROBOT} wrote:\n\n{QUOTE}", "Approved"),
    "Android's ---- Name wrote ----": ("Approved\n\n---- rc-mta wrote ----\n\nTask T-1042 is waiting", "Approved"),
    "Yandex, address and colon": (
        f'Approved\n\n03.06.2024, 09:14, "rc-mta" <rc-mta@corp.example>:\n{QUOTE}',
        "Approved",
    ),
    "attribution over unquoted history": (
        f"Approved\n\nOn Mon, Jun 3, 2024 at 9:14 AM {ROBOT} wrote:\n\nTask T-1042 is waiting. Approve?",
        "Approved",
    ),
    "a weak attribution over unquoted text stays": (
        "Here is what Bob wrote:\nthe numbers are fine\nApproved",
        "Here is what Bob wrote:\nthe numbers are fine\nApproved",
    ),
    # Outlook-style header blocks.
    "Swedish block": (
        f"Godkänt\n\nFrån: {ROBOT}\nSkickat: den 3 juni 2024 09:14\nTill: Alice\nÄmne: Approve\nTask",
        "Godkänt",
    ),
    "Spanish 'Enviado el:'": (
        f"Aprobado.\n\nDe: {ROBOT}\nEnviado el: lunes, 3 de junio de 2024 9:14\nPara: A\n",
        "Aprobado.",
    ),
    "Japanese block": (
        f"承認します。\n\n差出人: {ROBOT}\n送信日時: 2024年6月3日 9:14\n宛先: A\n件名: x\n",
        "承認します。",
    ),
    "French labels with a space before the colon": (f"Oui\n\nDe : {ROBOT}\nEnvoyé : lundi\nÀ : A\nObjet : x", "Oui"),
    "From: wrapped onto two lines": (
        "Approved\n\nFrom: rc-mta\n<rc-mta@corp.example>\nSent: Monday, June 3, 2024 9:14 AM\nTo: A",
        "Approved",
    ),
    "block that starts with Date:": (f"Done.\n\nDate: Mon, 3 Jun 2024 09:14:00 +0000\nFrom: {ROBOT}\nTo: A", "Done."),
    "block with Reply-To:": (f"Done.\n\nFrom: {ROBOT}\nReply-To: rc@corp.example\nTo: A\nSubject: x", "Done."),
    "bold labels, tabs": (f"Ok\n\n*From:*\t{ROBOT}\n*Sent:*\tMonday\n*To:*\tA", "Ok"),
    "Danish separator": ("Godkendt\n\n-----Oprindelig meddelelse-----\nFra: rc-mta\nSendt: 3. juni", "Godkendt"),
    "QQ Mail separator": ("同意\n\n------------------\u00a0原始邮件\u00a0------------------\n发件人: rc-mta", "同意"),
    # Signatures without "-- ", and separator lines.
    "Sent from my iPhone": (f"Yes\n\nSent from my iPhone\n\n> On 3 Jun 2024, at 09:14, {ROBOT} wrote:", "Yes"),
    "Envoyé depuis mon iPhone": ("Oui\n\nEnvoyé depuis mon iPhone", "Oui"),
    "Von meinem … gesendet": ("Ja\n\nVon meinem Samsung Galaxy Smartphone gesendet.", "Ja"),
    "Get Outlook for iOS, with its link": ("Approved\n\nGet Outlook for iOS<https://aka.ms/o0ukef>", "Approved"),
    "iPhoneから送信": ("承認します\n\niPhoneから送信", "承認します"),
    "a bare separator line is dropped": ("Approved.\n\n---\nAlice Example", "Approved.\n\nAlice Example"),
    "underscores above a header block": (
        f"Approved.\n\n________________________________\nFrom: {ROBOT}\nSent: x",
        "Approved.",
    ),
    "image placeholders are no words": (
        "Approved.\n\nAlice\n[cid:image001.png@01DAB5C2.5F1A0B70]\n[image: logo.png]",
        "Approved.\n\nAlice",
    ),
    # Text below and between quotes.
    "bottom-posting (Thunderbird)": (
        f"On 03/06/2024 09:14, rc-mta wrote:\n{QUOTE}\n\nApproved, thanks.\n\n-- \nCarol",
        "Approved, thanks.",
    ),
    "answers between quotes": (
        "On 03/06/2024 09:14, rc-mta wrote:\n> Question 1?\nYes\n\n> Question 2?\nAlso fine",
        "Yes\n\nAlso fine",
    ),
    # Mail gateways' warnings.
    "CAUTION banner": (
        "CAUTION: This email originated from outside of the organization. Do not click links or open attachments "
        "unless you recognize the sender and know the content is safe.\n\nApproved",
        "Approved",
    ),
    "wrapped CAUTION banner, no blank line": (
        "CAUTION: This email originated from outside of the organization. Do not click links or open\n"
        "attachments unless you recognize the sender and know the content is safe.\nApproved",
        "Approved",
    ),
    "[EXTERNAL] on its own line": ("[EXTERNAL]\nApproved", "Approved"),
    "[EXTERNAL] before the words": ("[EXTERNAL] Approved", "Approved"),
    "German banner": ("ACHTUNG: Diese E-Mail stammt von einem externen Absender.\nNein", "Nein"),
    "Japanese tag and banner": ("【外部メール】このメールは組織外から送信されました。\n\n承認します。", "承認します。"),
    "a person's own 'Warning:' stays": (
        "Warning: the deploy takes an hour.\nApproved",
        "Warning: the deploy takes an hour.\nApproved",
    ),
    # Our request quoted with no marker at all: cut at its first sentence, its title too.
    "request text unmarked": (
        "Rejected, wrong window.\n\nApprove deploy\n==============\n\nYour decision is needed.\nWhere: prod",
        "Rejected, wrong window.",
    ),
    "request HTML rendered unmarked": (
        "Rejected.\nNot this week.\n\nApprove deploy\nIhre Entscheidung wird gebraucht\nApprove",
        "Rejected.\nNot this week.",
    ),
}


@pytest.mark.parametrize(("body", "expected"), SHAPES.values(), ids=SHAPES.keys())
def test_comment_is_the_persons_own_words(body: str, expected: str) -> None:
    assert extract_comment(body) == expected


def _reply(body: str, subtype: str = "plain") -> bytes:
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["Subject"] = "Re: task"
    message.set_content(body, subtype=subtype)
    return message.as_bytes()


def test_only_the_first_64_kib_of_the_text_is_read() -> None:
    # Written below a quote longer than the bound: the words are never reached.
    reply = parse_reply(_reply("> quoted history\n" * (MAX_TEXT_CHARS // 17 + 1) + "\nApproved\n"))

    assert reply.comment == ""
    assert "Approved" in reply.text  # the text itself is kept whole


def test_html_longer_than_its_bound_shows_nothing() -> None:
    html = "<div>Approved</div>" + "<p>padding</p>" * (1024 * 1024 // 14 + 1)

    assert parse_reply(_reply(html, "html")).comment == ""


def test_html_parts_together_longer_than_the_bound_show_nothing_past_it() -> None:
    message = MIMEMultipart("mixed")
    message["From"] = "alice@example.com"
    padding = "<p>padding</p>" * (600 * 1024 // 14)
    for words in ("Let me check", "Approved"):
        message.attach(MIMEText(f"<div>{words}</div>{padding}", "html"))

    reply = parse_reply(message.as_bytes())

    assert reply.comment.startswith("Let me check")
    assert "Approved" not in reply.text


HOSTILE_TEXT: dict[str, Callable[[int], str]] = {
    "words of attributions": lambda n: "On " + " wrote" * (n // 6),
    "colon lines": lambda n: "On 1 wrote:\n" * (n // 12),
    "wrapped attribution starts": lambda n: "On 1 x\n" * (n // 7),
    "header labels": lambda n: "From: a\n" * (n // 8),
    "blank lines after an attribution": lambda n: "On 1 Jan, a@b wrote:" + "\n" * n,
    "dashes": lambda n: "-" * n,
    "dashed titles": lambda n: "-- a --\n" * (n // 8),
    "banner words": lambda n: "CAUTION: external " + "links " * (n // 6),
    "banner tags": lambda n: "[external]" * (n // 10),
    "signature-like lines": lambda n: ("Sent from my " + "x" * 50 + "\n") * (n // 64),
}


def _best_of(run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        run()
        best = min(best, time.thread_time() - start)
    return best


@pytest.mark.parametrize("make", HOSTILE_TEXT.values(), ids=HOSTILE_TEXT.keys())
def test_hostile_text_takes_linear_time(make: Callable[[int], str]) -> None:
    small_text, large_text = make(8 * 1024), make(64 * 1024)  # within the 64 KiB that is read
    small = _best_of(lambda: extract_comment(small_text))
    large = _best_of(lambda: extract_comment(large_text))

    assert large < 16 * max(small, 0.005)  # eight times the input; quadratic would be 64


@pytest.mark.parametrize("make", HOSTILE_TEXT.values(), ids=HOSTILE_TEXT.keys())
def test_hostile_replies_of_a_mebibyte_take_linear_time(make: Callable[[int], str]) -> None:
    small_raw, large_raw = _reply(make(128 * 1024)), _reply(make(1024 * 1024))
    small = _best_of(lambda: parse_reply(small_raw))
    large = _best_of(lambda: parse_reply(large_raw))

    assert large < 16 * max(small, 0.005)  # eight times the input; quadratic would be 64


def _raw_reply(address: str, charset: str, body: bytes) -> bytes:
    head = (
        f"From: Alice <alice@example.com>\r\nTo: {address}\r\nSubject: Re: Action needed\r\n"
        f"Message-ID: {make_msgid(domain='example.com')}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.parametrize(
    ("charset", "encoding"),
    [("utf-8", "cp1252"), ("iso-8859-1", "utf-8")],
    ids=["windows-1252 labelled utf-8", "utf-8 labelled latin-1"],
)
def test_mislabelled_charset_keeps_the_owners_words(rc: RcMta, charset: str, encoding: str) -> None:
    # What Windows clients and webmails send under another charset's label.
    task_id = rc.add_task()
    address = rc.request(task_id)["reply_to"]
    words = "Bestätigt – schöne Grüße"

    outcome = send_smtp(rc.smtp_port, _raw_reply(address, charset, words.encode(encoding) + b"\r\n"), address)

    assert outcome.code == 250, outcome
    task = rc.task(task_id)
    assert task["status"] == "completed"
    assert [c["text"] for c in task["comments"]] == [words]


def _apple_mail_split_reply(address: str, before: str, after: str) -> bytes:
    """Apple Mail's plain text with an attachment placed in it: text, the file, text."""
    message = MIMEMultipart("mixed")
    message["From"] = "Alice <alice@example.com>"
    message["To"] = address
    message["Subject"] = "Re: Action needed"
    message["Message-ID"] = make_msgid(domain="example.com")
    report = MIMEApplication(b"%PDF-1.4\n", "pdf")
    report.add_header("Content-Disposition", "inline", filename="report.pdf")
    for part in (MIMEText(before, "plain"), report, MIMEText(f"\n{after}\n\n> Complete\n", "plain")):
        message.attach(part)
    return message.as_bytes()


@pytest.mark.parametrize(
    ("before", "after", "status", "comments"),
    [
        ("Here is the report from QA:", "Rejected, the numbers are wrong.", "failed", 1),
        ("Approved the layout, here is the report:", "But the budget is wrong: rejected.", "in_progress", 0),
    ],
    ids=["decided below the attachment", "changed below the attachment"],
)
def test_words_on_both_sides_of_an_attachment_are_read(
    rc: RcMta, before: str, after: str, status: str, comments: int
) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["reply_to"]

    outcome = send_smtp(rc.smtp_port, _apple_mail_split_reply(address, before, after), address)

    task = rc.task(task_id)
    assert task["status"] == status, outcome
    assert [c["text"] for c in task["comments"]] == [f"{before}\n\n{after}"] * comments
    if status == "in_progress":
        assert (outcome.code, outcome.enhanced) == (550, "5.6.0")


OUTLOOK_BLOCKS = {
    "Ukrainian": "Від: {robot}\nНадіслано: 30 листопада 2026 р. 10:00\nКому: {owner}\nТема: {subject}",
    "Romanian": "De la: {robot}\nTrimis: luni, 30 noiembrie 2026 10:00\nCătre: {owner}\nSubiect: {subject}",
    "Indonesian": "Dari: {robot}\nDikirim: Senin, 30 November 2026 10.00\nKepada: {owner}\nPerihal: {subject}",
}


@pytest.mark.parametrize("block", OUTLOOK_BLOCKS.values(), ids=OUTLOOK_BLOCKS.keys())
def test_request_quoted_below_a_header_block_in_any_language_is_not_the_comment(rc: RcMta, block: str) -> None:
    # Outlook's plain text: the owner's words, a rule, the header block, the request unquoted.
    task_id = rc.add_task()  # "Approve deploy to prod": the title must not decide
    sent = rc.request(task_id)
    with open(sent["path"], "rb") as saved:
        request = message_from_bytes(saved.read(), _class=EmailMessage, policy=email.policy.default)
    original = request.get_body(("plain",))
    assert original is not None
    header = block.format(robot=request["From"], owner="Alice <alice@example.com>", subject=request["Subject"])
    body = f"Let me check with the team.\n\n{'_' * 32}\n{header}\n\n{original.get_content()}"

    outcome = send_smtp(rc.smtp_port, reply_message(sent["reply_to"], body), sent["reply_to"])

    assert (outcome.code, outcome.enhanced) == (550, "5.6.0"), outcome
    assert rc.task(task_id)["status"] == "in_progress"


@pytest.mark.parametrize("language", ["en", "de", "fr"])
@pytest.mark.parametrize("shape", ["text", "rendered html"])
def test_request_quoted_with_no_marker_at_all_is_not_the_comment(rc: RcMta, language: str, shape: str) -> None:
    # A client that quotes with no ">", no attribution and no header block: the request's own
    # text follows the owner's words as it came, or as its HTML renders (no underline).
    task_id = rc.add_task()  # "Approve deploy to prod": the title must not decide
    rc.settings.setdefault("outbound", {})["language"] = language
    rc.write_config()
    sent = rc.request(task_id)
    with open(sent["path"], "rb") as saved:
        request = message_from_bytes(saved.read(), _class=EmailMessage, policy=email.policy.default)
    original = request.get_body(("plain",))
    assert original is not None
    quoted = original.get_content()
    if shape == "rendered html":
        quoted = "\n".join(line for line in quoted.splitlines() if not set(line) <= {"="})
    body = f"Let me check with the team.\n\n{quoted}"

    outcome = send_smtp(rc.smtp_port, reply_message(sent["reply_to"], body), sent["reply_to"])

    assert (outcome.code, outcome.enhanced) == (550, "5.6.0"), outcome
    assert rc.task(task_id)["status"] == "in_progress"
