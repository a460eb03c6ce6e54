"""Machine mail never acts: bounces, out-of-office notices, reports and challenge-response
mails are recognised (tests/corpus/machine), and no reply a person wrote is taken for one
(tests/corpus/human_not_machine). Each corpus case goes through the real parse path
(rc_mta.pipeline.read_message); the end-to-end cases through a real rc-mta listener."""

from __future__ import annotations

import time
import tomllib
import urllib.request
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from conftest import RcMta
from mailclient import reply_message, send_smtp
from prometheus_client.parser import text_string_to_metric_families

from rc_mta import machine_mail
from rc_mta.machine_mail import DETECTORS, machine_reason, read_mail
from rc_mta.pipeline import read_message

CORPUS = Path(__file__).parent / "corpus"
MACHINE = CORPUS / "machine"
HUMAN = CORPUS / "human_not_machine"


def cases(folder: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = tomllib.loads((folder / "cases.toml").read_text(encoding="utf-8"))["case"]
    return found


MACHINE_CASES = cases(MACHINE)
HUMAN_CASES = cases(HUMAN)


def parse(raw: bytes) -> Message:
    return BytesParser(policy=policy.default).parsebytes(raw)


# --------------------------------------------------------------------------
# The corpora
# --------------------------------------------------------------------------


def test_corpora_are_large_and_multilingual() -> None:
    assert len(MACHINE_CASES) >= 40
    assert len({case["lang"] for case in MACHINE_CASES}) >= 12
    assert len({case["lang"] for case in HUMAN_CASES}) >= 12
    listed = {case["file"] for case in MACHINE_CASES} | {case["file"] for case in HUMAN_CASES}
    on_disk = {path.name for path in (*MACHINE.glob("*.eml"), *HUMAN.glob("*.eml"))}
    assert listed == on_disk


@pytest.mark.parametrize("case", MACHINE_CASES, ids=[case["file"] for case in MACHINE_CASES])
def test_machine_mail_is_recognised(case: dict[str, Any]) -> None:
    # No envelope: a saved message must be recognised by what it says, not by a null sender.
    _, parsed = read_message((MACHINE / case["file"]).read_bytes(), None)

    assert parsed.auto_reply == case["reason"]


@pytest.mark.parametrize("case", HUMAN_CASES, ids=[case["file"] for case in HUMAN_CASES])
def test_human_reply_is_not_taken_for_machine_mail(case: dict[str, Any]) -> None:
    _, parsed = read_message((HUMAN / case["file"]).read_bytes(), "alice@corp.example")

    assert parsed.auto_reply is None, case["why"]


@pytest.mark.parametrize("name", [name for name, _ in DETECTORS])
def test_every_detector_recognises_some_corpus_message_and_no_human_one(name: str) -> None:
    detect = dict(DETECTORS)[name]
    envelope = {"null envelope sender": ""}.get(name)
    machine = [detect(read_mail(parse((MACHINE / c["file"]).read_bytes()), envelope)) for c in MACHINE_CASES]
    human = [detect(read_mail(parse((HUMAN / c["file"]).read_bytes()), envelope)) for c in HUMAN_CASES]

    assert any(machine)
    assert not any(human) or name == "null envelope sender"


def test_reasons_are_short_ascii_for_the_smtp_reply() -> None:
    for case in MACHINE_CASES:
        assert case["reason"].isascii() and len(case["reason"]) <= 64, case


# --------------------------------------------------------------------------
# One signal at a time
# --------------------------------------------------------------------------


def message(subject: str = "Re: Action needed: Approve", body: str = "Approved", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Alice <alice@corp.example>")
    msg["To"] = "rc+d.token@reply.example.test"
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (message(X_Failed_Recipients="bob@gone.example"), "x-failed-recipients - delivery report"),
        (message(X_Precedence="junk"), "precedence: junk"),
        (message(X_Autoresponse="1"), "x-autoresponse"),
        (message(X_Mail_Autoreply="yes"), "x-mail-autoreply"),
        (
            message(X_MS_Exchange_Inbox_Rules_Loop="alice@corp.example", X_Auto_Response_Suppress="All"),
            "x-ms-exchange-inbox-rules-loop",
        ),
        (message(From="MAILER-DAEMON"), "from: mailer-daemon - delivery report"),
        (
            message(From="Mail Delivery Subsystem <mailer-daemon@relay.example>"),
            "from: mailer-daemon - delivery report",
        ),
        (message(From="Mail Delivery System <postmaster@relay.example>"), "from: postmaster - delivery report"),
        (message(From="Shop <no-reply@shop.example>"), "from: no-reply address"),
        (message(From="ops-bounces@lists.example"), "from: no-reply address"),
        (message(From="bounces+123-abc@mail.example"), "from: no-reply address"),
        (
            message(body="Hi. This is the qmail-send program at mx.example.\nI'm afraid"),
            "body: qmail - delivery report",
        ),
        (
            message(body="This message was created automatically by mail delivery software.\n"),
            "body: exim - delivery report",
        ),
        (message(body="This is the mail system at host mx.example.\n"), "body: postfix - delivery report"),
        (
            message(body="The original message was received at Mon, 2 Jun 2025\nfrom a.example [192.0.2.1]\n"),
            "body: sendmail - delivery report",
        ),
        (message(body="Delivery to the following recipients failed.\n\n  bob@x"), "body: gmail - delivery report"),
        (message(body="** Message not delivered **\n\nYour message"), "body: gmail - delivery report"),
        (
            message(body="Sorry, we were unable to deliver your message to the following address.\n"),
            "body: yahoo - delivery report",
        ),
        (
            message(body="Your message to bob@gone.example couldn't be delivered.\nbob wasn't found"),
            "body: exchange - delivery report",
        ),
        (
            message(body="[EXTERNAL]\n\nThis is the mail system at host mx.example.\n"),
            "body: postfix - delivery report",
        ),
        (
            message(
                body="Ihre Nachricht\n\n  An: Alice\n  Betreff: X\n  Gesendet: Mo\n\nwurde am Mo, 2. Juni gelesen."
            ),
            "body: read receipt - disposition report",
        ),
        (message("Please confirm your message to Alice"), "challenge-response"),
        (message(body="Hi, I'm using a challenge-response filter. Click to confirm."), "challenge-response"),
        (
            message("Mail delivery failed: returning message to sender"),
            "subject: mail delivery failed - delivery report",
        ),
        (
            message("Warning: could not send message for past 4 hours"),
            "subject: warning: could not send message - delivery report",
        ),
        (message("Nie można dostarczyć: X"), "subject: nie mozna dostarczyc - delivery report"),
        (message("[SPAM] [EXTERNAL] Automatic reply: X"), "subject: automatic reply"),
        (message("[Auto-Reply] Re: X"), "subject: auto reply"),
        (message("Automatiskt  svar: X"), "subject: automatiskt svar"),
        (message("Vacation: back on the 16th"), "subject: vacation"),
        (message("自動返信：X"), "subject: automatic reply (ja)"),
        (message("Alicja Nowak is out of the office."), "subject: away notice"),
        (message("Alice Martin est absente du bureau"), "subject: away notice"),
    ],
)
def test_each_signal_alone_is_recognised(msg: EmailMessage, reason: str) -> None:
    assert machine_reason(parse(msg.as_bytes()), "alice@corp.example") == reason


@pytest.mark.parametrize(
    "msg",
    [
        message(X_Auto_Response_Suppress="All"),  # Outlook sets it on ordinary mail too
        message(X_MS_Exchange_Inbox_Rules_Loop="alice@corp.example"),  # a rule forwarded the person's mail
        message(X_Autoreply="no"),
        message(From="Postmaster <postmaster@corp.example>"),
        message(From="noreen.ply@corp.example"),
        message("Re: Mail delivery failed: returning message to sender"),
        message("Vacation plans"),
        message("Away team results"),
        message("Automatically approve small changes?"),
        message(body="> Hi. This is the qmail-send program at mx.example.\nApproved"),
        message(body="Approved.\n\nThis message was created automatically by mail delivery software."),
        message(body="Your message couldn't be delivered to me earlier; approved now."),
        message(body="Please confirm you received this. Approved."),
        message(body='{"notificationType": "Bounce", "note": "no mail key"}'),
        message(body="Delivery status: fine. Approved."),
    ],
)
def test_lookalikes_a_person_writes_are_not_recognised(msg: EmailMessage) -> None:
    assert machine_reason(parse(msg.as_bytes()), "alice@corp.example") is None


def test_null_envelope_sender_and_unknown_envelope_differ() -> None:
    msg = parse(message().as_bytes())

    assert machine_reason(msg, "") == "null sender"
    assert machine_reason(msg, "<>") == "null sender"
    assert machine_reason(msg, None) is None


def test_broken_message_is_read_without_raising() -> None:
    raw = b'From: =?x?q?\xff?=\nSubject: =?utf-8?b?!!!?=\nContent-Type: multipart/report; report-type="\xff"\n\n--'
    assert machine_reason(parse(raw), None) == "delivery-status report"


# --------------------------------------------------------------------------
# Linear on hostile input (issue 11): ratios, never absolute times
# --------------------------------------------------------------------------


def _elapsed(func: Any, *args: Any) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        func(*args)
        best = min(best, time.thread_time() - start)
    return best


HOSTILE_UNITS = ["a ", "[", "[a] ", "Automatic ", "your message to: ", "is out of ", "-", "a@", "\u3000", "{"]


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_every_pattern_is_linear_on_a_mebibyte(unit: str) -> None:
    patterns = [value for value in vars(machine_mail).values() if hasattr(value, "pattern") and hasattr(value, "match")]
    assert len(patterns) >= 10
    small, large = unit * (128 * 1024 // len(unit)), unit * (1024 * 1024 // len(unit))

    def run(text: str) -> None:
        for pattern in patterns:
            pattern.match(text)
            pattern.search(text[:4096])

    assert _elapsed(run, large) / max(_elapsed(run, small), 1e-6) < 16


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_recognising_a_mebibyte_message_costs_what_its_size_does(unit: str) -> None:
    def hostile(size: int) -> Message:
        text = unit * (size // len(unit))
        raw = f"From: {text[:2000]}\nSubject: {text}\nX-Autoreply: no\n\n{text}".encode()
        return parse(raw)

    small, large = hostile(128 * 1024), hostile(1024 * 1024)

    assert _elapsed(machine_reason, large, None) / max(_elapsed(machine_reason, small, None), 1e-6) < 16


# --------------------------------------------------------------------------
# End to end: a real rc-mta listener answers, and the task stays untouched
# --------------------------------------------------------------------------


def dropped_delivery_reports(rc: RcMta) -> float:
    with urllib.request.urlopen(rc.http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rc_mta_auto_replies_dropped_total" and sample.labels == {"kind": "delivery_report"}:
                return float(sample.value)
    return 0.0


def test_swedish_out_of_office_from_the_owner_to_complete_is_discarded(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    oof = reply_message(
        request["complete_address"],
        "Hej,\n\nJag är på semester till och med 16 juni och läser inte min e-post.\n\nMvh Alice",
        subject="Automatiskt svar: Action needed: Approve deploy to prod",
        in_reply_to=request["message_id"],
    )

    outcome = send_smtp(rc.smtp_port, oof, request["complete_address"])

    assert outcome.code == 250, outcome
    assert "discarded (subject: automatiskt svar)" in outcome.text
    assert rc.task(task_id)["status"] == "in_progress"


def test_finnish_no_access_to_email_notice_to_the_decide_address_does_not_fail_the_task(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    oof = reply_message(
        request["reply_to"],
        "No access to email until 16 June. / Ei pääsyä sähköpostiin 16.6. asti.",
        subject="Automaattinen vastaus: Action needed: Approve deploy to prod",
        in_reply_to=request["message_id"],
    )

    outcome = send_smtp(rc.smtp_port, oof, request["reply_to"])

    assert outcome.code == 250, outcome
    assert "discarded" in outcome.text
    task = rc.task(task_id)
    assert (task["status"], task["comments"]) == ("in_progress", [])


def test_qmail_bounce_with_a_forwarders_envelope_sender_is_discarded(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]
    bounce = (
        f"From: MAILER-DAEMON@mx1.gone.example\r\nTo: {address}\r\nSubject: failure notice\r\n"
        "Date: Mon, 02 Jun 2025 09:14:03 +0200\r\nMessage-ID: <20250602071403.4242.qmail@mx1.gone.example>\r\n\r\n"
        "Hi. This is the qmail-send program at mx1.gone.example.\r\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        "<bob@gone.example>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        "--- Below this line is a copy of the message.\r\n\r\nSubject: Action needed: Approve deploy to prod\r\n"
    ).encode()
    before = dropped_delivery_reports(rc)

    # A forwarder re-sent the bounce under its own (SRS) reverse-path: not the null sender.
    outcome = send_smtp(
        rc.smtp_port, bounce, address, mail_from="SRS0=x1Yz=TT=mx1.gone.example=MAILER-DAEMON@fwd.example"
    )

    assert outcome.code == 250, outcome
    assert "discarded" in outcome.text
    assert rc.task(task_id)["status"] == "in_progress"
    assert dropped_delivery_reports(rc) == before + 1
