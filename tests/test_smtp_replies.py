"""A reply by email completes or fails the task exactly once; everything else is refused
with its own code and leaves the task untouched. Real SMTP over loopback."""

from __future__ import annotations

import email.policy
import smtplib
import time
from pathlib import Path

from conftest import REPLY_DOMAIN, RcMta, store_write_locked
from mailclient import rcpt_reply, reply_message, send_smtp

QUOTED_REQUEST = """

On Tue, 24 Nov 2026 at 10:00, rc-mta <rc-mta@reply.example.test> wrote:
> Task is waiting for you: Approve deploy to prod
> To complete it, reply to this email starting with the word Complete
"""


def test_complete_button_reply_completes_task_with_comment(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    assert Path(request["path"]).is_file()

    outcome = send_smtp(
        rc.smtp_port,
        reply_message(request["complete_address"], "Looks good, ship it" + QUOTED_REQUEST),
        request["complete_address"],
    )

    assert outcome.code == 250, outcome
    task = rc.task(task_id)
    assert task["status"] == "completed"
    assert [(c["author"], c["text"]) for c in task["comments"]] == [("alice@example.com", "Looks good, ship it")]


def test_fail_button_reply_fails_task(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)

    outcome = send_smtp(rc.smtp_port, reply_message(request["fail_address"], "Tests are red"), request["fail_address"])

    assert outcome.code == 250, outcome
    task = rc.task(task_id)
    assert task["status"] == "failed"
    assert task["comments"][0]["text"] == "Tests are red"


def test_button_reply_whose_own_words_decide_the_other_way_is_refused(rc: RcMta) -> None:
    # Complete pressed, then "Rejected…" written (or the other way round): two readings.
    answers = (
        ("complete_address", "Rejected, the numbers are wrong"),
        ("complete_address", "Absolutely not."),
        ("complete_address", "Sorry, I can't\napprove this one."),  # wrapped by the client
        ("fail_address", "Approved"),
    )
    outcomes = []
    for button, body in answers:
        task_id = rc.add_task()
        address = rc.request(task_id)[button]
        outcome = send_smtp(rc.smtp_port, reply_message(address, body + QUOTED_REQUEST), address)
        outcomes.append((outcome.code, outcome.text, rc.task(task_id)["status"], rc.task(task_id)["comments"]))

    refused = (
        "5.6.0 Your words do not agree with the {} address this reply went to (or ask for it later): press the"
        " button you mean in the request when the task should move, or reply to the request email starting with"
        " Complete or Fail"
    )
    assert outcomes == [
        (550, refused.format("Complete"), "in_progress", []),
        (550, refused.format("Complete"), "in_progress", []),
        (550, refused.format("Complete"), "in_progress", []),
        (550, refused.format("Fail"), "in_progress", []),
    ]


def test_plain_reply_decides_from_first_word(rc: RcMta) -> None:
    approve, reject = rc.add_task(), rc.add_task()
    for task_id, body, expected in ((approve, "Approved. Go ahead", "completed"), (reject, "No, not today", "failed")):
        request = rc.request(task_id)
        outcome = send_smtp(
            rc.smtp_port,
            reply_message(request["reply_to"], body + QUOTED_REQUEST, in_reply_to=request["message_id"]),
            request["reply_to"],
        )
        assert outcome.code == 250, outcome
        assert rc.task(task_id)["status"] == expected


def test_plain_reply_without_a_decision_is_refused(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)

    outcome = send_smtp(rc.smtp_port, reply_message(request["reply_to"], "Let me think about it"), request["reply_to"])

    assert (outcome.code, outcome.enhanced) == (550, "5.6.0")
    assert "start your reply with Complete or Fail (or press a button in the request)" in outcome.text
    assert rc.task(task_id)["status"] == "in_progress"


def test_plain_reply_that_both_approves_and_rejects_is_refused_not_guessed(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    body = "Approved for staging.\n\nRejected for production." + QUOTED_REQUEST

    outcome = send_smtp(rc.smtp_port, reply_message(request["reply_to"], body), request["reply_to"])

    assert (outcome.code, outcome.enhanced) == (550, "5.6.0")
    task = rc.task(task_id)
    assert (task["status"], task["comments"]) == ("in_progress", [])


def test_plain_reply_written_below_the_quote_decides(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    body = QUOTED_REQUEST.strip() + "\n\nNo problem, approved.\n\n-- \nAlice\n"

    outcome = send_smtp(rc.smtp_port, reply_message(request["reply_to"], body), request["reply_to"])

    assert outcome.code == 250, outcome
    task = rc.task(task_id)
    assert task["status"] == "completed"
    assert [comment["text"] for comment in task["comments"]] == ["No problem, approved."]


def test_reply_to_bare_address_finds_request_through_in_reply_to(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    bare = f"rc@{REPLY_DOMAIN}"

    outcome = send_smtp(rc.smtp_port, reply_message(bare, "Done", in_reply_to=request["message_id"]), bare)

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "completed"


def test_used_token_is_refused_but_the_same_message_retried_gets_250(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    address = request["complete_address"]
    first = reply_message(address, "Ship it")

    assert send_smtp(rc.smtp_port, first, address).code == 250
    retry = send_smtp(rc.smtp_port, first, address)  # the sender lost our 250 and retries
    replay = send_smtp(rc.smtp_port, reply_message(address, "Ship it again"), address)
    other_token = send_smtp(rc.smtp_port, reply_message(request["fail_address"], "No"), request["fail_address"])

    assert retry.code == 250, retry
    assert (replay.code, replay.enhanced) == (550, "5.7.1")
    assert "already answered" in replay.text
    assert other_token.code == 550
    task = rc.task(task_id)
    assert task["status"] == "completed"
    assert len(task["comments"]) == 1


def test_forged_signature_is_refused_at_rcpt(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["fail_address"]
    local, domain = address.split("@")
    last = local[-1]
    forged = f"{local[:-1]}{'a' if last != 'a' else 'b'}@{domain}"

    outcome = rcpt_reply(rc.smtp_port, forged)

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "signature" in outcome.text
    assert rc.task(task_id)["status"] == "in_progress"


def test_a_forged_signature_is_refused_alike_once_the_genuine_token_was_seen(rc: RcMta) -> None:
    # The owner of a request whose token verified is kept, so a forged MAC for that request
    # is refused without a store read: with the same answer, and the genuine one still works.
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]
    local, domain = address.split("@")
    forged = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"
    before = rcpt_reply(rc.smtp_port, forged)
    assert rcpt_reply(rc.smtp_port, address).code == 250  # verified: its owner is now known

    after = rcpt_reply(rc.smtp_port, forged)
    reply = send_smtp(rc.smtp_port, reply_message(address, "Approved"), address)

    assert (
        (after.code, after.enhanced, after.text)
        == (before.code, before.enhanced, before.text)
        == (
            550,
            "5.7.1",
            before.text,
        )
    )
    assert "signature" in after.text
    assert reply.code == 250, reply
    assert rc.task(task_id)["status"] == "completed"


def test_damaged_token_and_unknown_mailbox_are_refused_at_rcpt(rc: RcMta) -> None:
    damaged = rcpt_reply(rc.smtp_port, f"rc+abc@{REPLY_DOMAIN}")
    unknown = rcpt_reply(rc.smtp_port, f"postmaster2@{REPLY_DOMAIN}")

    assert (damaged.code, damaged.enhanced) == (550, "5.1.1")
    assert (unknown.code, unknown.enhanced) == (550, "5.1.1")


def test_foreign_recipient_domain_is_refused_as_relaying(rc: RcMta) -> None:
    outcome = rcpt_reply(rc.smtp_port, "bob@example.org")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "Relaying denied" in outcome.text


def test_expired_token_is_refused_at_rcpt(fresh_rc: RcMta) -> None:
    fresh_rc.settings["signing"]["request_ttl"] = "1s"
    fresh_rc.start()
    task_id = fresh_rc.add_task()
    address = fresh_rc.request(task_id)["complete_address"]
    time.sleep(1.5)

    outcome = rcpt_reply(fresh_rc.smtp_port, address)

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "expired" in outcome.text
    assert fresh_rc.task(task_id)["status"] == "in_progress"


def test_revoked_request_is_refused_at_rcpt(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    rc.cli("revoke", request["request_id"])

    outcome = rcpt_reply(rc.smtp_port, request["complete_address"])

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "withdrawn" in outcome.text


def test_reply_from_someone_else_is_refused(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]

    outcome = send_smtp(
        rc.smtp_port,
        reply_message(address, "Sure", sender="mallory@example.com"),
        address,
        mail_from="mallory@example.com",
    )

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "mallory@example.com" in outcome.text
    assert rc.task(task_id)["status"] == "in_progress"


def test_owner_address_matches_case_insensitively(rc: RcMta) -> None:
    task_id = rc.add_task(owner="Carol.Smith@Example.com")
    address = rc.request(task_id)["complete_address"]

    outcome = send_smtp(
        rc.smtp_port, reply_message(address.upper(), "OK", sender="carol.smith@EXAMPLE.COM"), address.upper()
    )

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "completed"


def test_oversized_message_is_refused(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]

    outcome = send_smtp(rc.smtp_port, reply_message(address, "x" * 70 + "\n" + ("y" * 76 + "\n") * 1000), address)

    assert (outcome.code, outcome.enhanced) == (552, "5.3.4")
    assert rc.task(task_id)["status"] == "in_progress"


def test_out_of_office_reply_is_accepted_and_dropped(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["reply_to"]
    message = reply_message(
        address,
        "Yes, I am out of the office until Monday.",
        subject="Automatic reply: Action needed",
        headers={"Auto-Submitted": "auto-replied"},
    )

    outcome = send_smtp(rc.smtp_port, message, address)

    assert outcome.code == 250
    assert "discarded" in outcome.text
    assert rc.task(task_id)["status"] == "in_progress"


def test_delivery_status_notification_is_accepted_and_dropped(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]
    dsn = (
        f"From: MAILER-DAEMON@example.com\r\nTo: {address}\r\nSubject: Undelivered Mail\r\n"
        "Message-ID: <dsn1@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nYes delivery failed.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
        "Final-Recipient: rfc822; alice@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n"
    ).encode()

    outcome = send_smtp(rc.smtp_port, dsn, address, mail_from="")

    assert outcome.code == 250
    assert rc.task(task_id)["status"] == "in_progress"


def test_html_only_reply_completes_with_its_text(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]
    html = (
        '<html><body><div>Fine by me &amp; the team</div><div class="gmail_quote">On Tue wrote:'
        "<blockquote>Task is waiting</blockquote></div></body></html>"
    )

    outcome = send_smtp(rc.smtp_port, reply_message(address, "", html=html), address)

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["comments"][0]["text"] == "Fine by me & the team"


def test_latin1_reply_keeps_its_comment(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]

    outcome = send_smtp(rc.smtp_port, reply_message(address, "Passt, schöne Grüße", charset="iso-8859-1"), address)

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["comments"][0]["text"] == "Passt, schöne Grüße"


def test_a_second_reply_address_in_one_smtp_message_is_deferred(rc: RcMta) -> None:
    first, second = rc.add_task(), rc.add_task()
    a, b = rc.request(first)["complete_address"], rc.request(second)["complete_address"]

    with smtplib.SMTP("127.0.0.1", rc.smtp_port) as client:
        _, features = client.ehlo("mail.example.com")
        assert b"ENHANCEDSTATUSCODES" in features and b"PIPELINING" in features
        client.mail("alice@example.com")
        codes = [client.rcpt(a), client.rcpt(b)]
        data = client.data(reply_message(a, "Ship it").as_bytes(policy=email.policy.SMTP))

    assert codes[0][0] == 250
    assert (codes[1][0], codes[1][1].decode().split()[0]) == (452, "4.5.3")
    assert data[0] == 250
    assert rc.task(first)["status"] == "completed"
    assert rc.task(second)["status"] == "in_progress"  # its own transaction, later


def test_protocol_errors_carry_enhanced_codes(rc: RcMta) -> None:
    with smtplib.SMTP("127.0.0.1", rc.smtp_port) as client:
        client.ehlo("mail.example.com")
        code, text = client.docmd("RCPT", f"TO:<rc@{REPLY_DOMAIN}>")
    assert code == 503
    assert text.decode().startswith("5.5.1 ")


def test_store_trouble_answers_451_and_the_retry_acts_once(rc: RcMta) -> None:
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]
    message = reply_message(address, "Ship it")
    with store_write_locked(rc.workdir / "rc-mta.db"):
        deferred = send_smtp(rc.smtp_port, message, address)
    retried = send_smtp(rc.smtp_port, message, address)

    assert (deferred.code, deferred.enhanced) == (451, "4.3.0")
    assert retried.code == 250, retried
    task = rc.task(task_id)
    assert task["status"] == "completed"
    assert len(task["comments"]) == 1


def test_task_already_completed_elsewhere_is_explained(rc: RcMta) -> None:
    task_id = rc.add_task()
    first, second = rc.request(task_id), rc.request(task_id)
    assert (
        send_smtp(rc.smtp_port, reply_message(first["complete_address"], "Yes"), first["complete_address"]).code == 250
    )

    outcome = send_smtp(rc.smtp_port, reply_message(second["fail_address"], "No"), second["fail_address"])

    assert outcome.code == 550
    assert f"Task {task_id} was already completed by alice@example.com" in outcome.text
    assert rc.task(task_id)["status"] == "completed"


def test_reply_to_bare_address_decides_from_the_words_not_the_quoted_buttons(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    bare = f"rc@{REPLY_DOMAIN}"
    # A client that dropped In-Reply-To and the +token, quoting the whole request text,
    # where the Complete address comes first.
    quoted = "\n".join(
        f"> {line}"
        for line in (
            "To complete it, reply starting with the word Complete, or write to:",
            f"  {request['complete_address']}",
            "To fail it, write to:",
            f"  {request['fail_address']}",
            "-- rc-mta request --",
            f"Request: {request['reply_to']}",
            "-- end of rc-mta request --",
        )
    )

    outcome = send_smtp(rc.smtp_port, reply_message(bare, "No, reject this\n\n" + quoted), bare)

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "failed"


def test_quoted_button_address_alone_is_not_taken_as_the_answer(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    bare = f"rc@{REPLY_DOMAIN}"

    outcome = send_smtp(rc.smtp_port, reply_message(bare, "No\n\n> write to " + request["complete_address"]), bare)

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert rc.task(task_id)["status"] == "in_progress"
