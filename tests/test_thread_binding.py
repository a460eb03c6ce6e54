"""A genuine "yes" from the owner acts on a request only if it answers the request mail.

Mallory, who has seen a reply address of a live request, mails the owner an unrelated
question with ``Reply-To:`` that address; the owner's "Yes, go ahead" is authenticated as
the owner (SPF and DKIM pass) and goes to rc-mta. Its In-Reply-To names Mallory's mail (or
an id she made up to look like the request's): it is refused, and the task is not touched.
Real rc-mta and NSD; the owner's server is 127.0.0.2 (SPF pass for corp.test), as in
test_one_path.py."""

from __future__ import annotations

import email.header
import json
import sqlite3
from pathlib import Path
from typing import Any

import dkim
import pytest
from conftest import REPLY_DOMAIN, RcMta, make_rc_mta, wait_until, with_real_dns
from dnsserver import NsdServer
from mailclient import reply_message
from test_followups import outbox_mail
from test_intent import HELO, raw_smtp
from test_one_path import KEY, OWNER, SIGNED_FIELDS, signed, wire

from rc_mta.reading.message import parse_reply

OWNER_HOST = "127.0.0.2"
MALLORYS_QUESTION = "<cleanup-question.1@corp.test>"
REFUSED = "550 5.7.1 This is a reply to another message"


@pytest.fixture
def rc(auth_rc: RcMta) -> RcMta:
    return auth_rc


def owners_yes(to: str, in_reply_to: str | None, references: str | None = None) -> bytes:
    """The owner's "Yes, go ahead", as their client writes a reply and their domain signs it."""
    message = reply_message(to, "Yes, go ahead", sender=OWNER, subject="Re: Shall I go ahead with the cleanup?")
    if in_reply_to is not None:
        message["In-Reply-To"] = in_reply_to
        message["References"] = references if references is not None else in_reply_to
    return signed(message)


def sent_by_owner(rc: RcMta, raw: bytes, rcpt: str) -> str:
    code, text = raw_smtp(rc.smtp_port, raw, rcpt, OWNER, OWNER_HOST)
    return f"{code} {text}"


def token_of(address: str) -> str:
    return address.split("+", 1)[1].split("@", 1)[0]


def derived_id(address: str) -> str:
    """The Message-ID anyone who saw ``address`` could derive for its request (the old form)."""
    return f"<rc.{token_of(address)}@{REPLY_DOMAIN}>"


def new_request(rc: RcMta) -> tuple[str, dict[str, Any]]:
    task_id = rc.add_task(owner=OWNER)
    return task_id, rc.request(task_id)


@pytest.mark.parametrize("address", ["reply_to", "complete_address"])
def test_a_yes_to_someone_elses_question_is_refused(rc: RcMta, address: str) -> None:
    task_id, request = new_request(rc)

    said = sent_by_owner(rc, owners_yes(request[address], MALLORYS_QUESTION), request[address])

    assert said.startswith(REFUSED), said
    assert MALLORYS_QUESTION in said and "reply to the request mail itself" in said
    assert rc.task(task_id)["status"] == "in_progress"


@pytest.mark.parametrize("malformed", ["<x y@evil.example>", "<>", "< >", "cleanup-question"])
@pytest.mark.parametrize("address", ["reply_to", "complete_address"])
def test_a_yes_to_a_question_whose_id_cannot_be_read_is_refused(rc: RcMta, address: str, malformed: str) -> None:
    # Mallory's question carries a Message-ID no parser reads as an id; the owner's client
    # copies it into In-Reply-To: the reply names some message, not the request.
    task_id, request = new_request(rc)

    said = sent_by_owner(rc, owners_yes(request[address], malformed), request[address])

    assert said.startswith(REFUSED), said
    assert "an id that cannot be read" in said
    assert rc.task(task_id)["status"] == "in_progress"


def test_a_question_whose_message_id_was_made_to_look_like_the_requests_is_refused(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    forged = derived_id(request["reply_to"])

    said = sent_by_owner(rc, owners_yes(request["reply_to"], forged), request["reply_to"])

    assert said.startswith(REFUSED), said
    assert rc.task(task_id)["status"] == "in_progress"


def test_a_yes_to_the_bare_address_threaded_to_a_made_up_id_is_refused(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    bare = f"rc@{REPLY_DOMAIN}"

    said = sent_by_owner(rc, owners_yes(bare, derived_id(request["reply_to"])), bare)

    assert said.startswith(REFUSED), said
    assert rc.task(task_id)["status"] == "in_progress"


def test_the_request_mails_id_cannot_be_derived_from_its_reply_addresses(rc: RcMta) -> None:
    _, request = new_request(rc)
    _, again = new_request(rc)

    assert request["message_id"] != derived_id(request["reply_to"])
    # The token stays in it, so a reply to the bare address still finds its request.
    assert token_of(request["reply_to"]) in request["message_id"]
    assert request["message_id"].split(".", 1)[0] != again["message_id"].split(".", 1)[0]


def test_a_reply_to_the_request_mail_still_acts(rc: RcMta) -> None:
    task_id, request = new_request(rc)

    said = sent_by_owner(rc, owners_yes(request["reply_to"], request["message_id"]), request["reply_to"])

    assert said.startswith("250"), said
    assert rc.task(task_id)["status"] == "completed"


def test_a_button_mail_without_in_reply_to_still_acts(rc: RcMta) -> None:
    # A mailto: button opens a new mail: no In-Reply-To, no References.
    task_id, request = new_request(rc)

    said = sent_by_owner(rc, owners_yes(request["complete_address"], None), request["complete_address"])

    assert said.startswith("250"), said
    assert rc.task(task_id)["status"] == "completed"


def test_a_reply_through_a_relay_that_replaced_the_message_id_acts_by_its_references(rc: RcMta) -> None:
    # Amazon SES (and Outlook.com, Brevo) put an id of their own in the request mail's
    # Message-ID; its References, rc-mta's thread id, passes unchanged, and the client's
    # reply keeps it before the relay's id.
    task_id, request = new_request(rc)
    mail = outbox_mail(rc, request["request_id"])
    assert mail is not None
    thread = str(mail["References"])
    relays = "<0100018c1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d-000000@email.amazonses.com>"

    said = sent_by_owner(rc, owners_yes(request["reply_to"], relays, f"{thread} {relays}"), request["reply_to"])

    assert said.startswith("250"), said
    assert rc.task(task_id)["status"] == "completed"


def test_references_naming_a_made_up_id_do_not_stand_for_the_request(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    forged = derived_id(request["reply_to"])

    raw = owners_yes(request["reply_to"], MALLORYS_QUESTION, f"{forged} {MALLORYS_QUESTION}")
    said = sent_by_owner(rc, raw, request["reply_to"])

    assert said.startswith(REFUSED), said
    assert rc.task(task_id)["status"] == "in_progress"


def test_diagnose_shows_the_refusal_the_server_gives(rc: RcMta, tmp_path: Path) -> None:
    _, request = new_request(rc)
    raw = owners_yes(request["reply_to"], MALLORYS_QUESTION)
    saved = tmp_path / "reply.eml"
    saved.write_bytes(raw)
    args = ["--client-ip", OWNER_HOST, "--helo", HELO[OWNER_HOST], "--mail-from", OWNER]

    predicted = json.loads(rc.cli("diagnose", "--json", *args, str(saved)).stdout)
    said = sent_by_owner(rc, raw, request["reply_to"])

    assert predicted["smtp_reply"] == said
    assert said.startswith(REFUSED)
    assert predicted["would"] == "refuse"
    assert predicted["checks"]["thread"] == {"result": "fail", "answers": MALLORYS_QUESTION}


def test_a_reply_to_a_reminder_acts_and_a_guessed_reminder_id_does_not(tmp_path: Path, dns_server: NsdServer) -> None:
    server = with_real_dns(make_rc_mta(tmp_path), dns_server)
    server.settings["requests"] = {"reminders": ["1s"], "followup_interval": "0.2s"}
    server.start()
    try:
        task_id, request = new_request(server)
        reminder = wait_until(
            lambda: outbox_mail(server, f"{request['request_id']}-reminder-1"), what="the reminder in the outbox"
        )
        reminder_id = str(reminder["Message-ID"])
        assert reminder_id not in (request["message_id"], f"<rc.reminder1.{request['request_id']}@{REPLY_DOMAIN}>")

        guessed = f"<rc.reminder1.{request['request_id']}@{REPLY_DOMAIN}>"
        refused = sent_by_owner(server, owners_yes(request["reply_to"], guessed), request["reply_to"])
        said = sent_by_owner(server, owners_yes(request["reply_to"], reminder_id), request["reply_to"])

        assert refused.startswith(REFUSED), refused
        assert said.startswith("250"), said
        assert server.task(task_id)["status"] == "completed"
    finally:
        server.stop()


def test_with_the_check_off_a_relays_id_alone_acts(tmp_path: Path, dns_server: NsdServer) -> None:
    # Behind a relay that replaces Message-IDs, for owners whose client drops References.
    server = with_real_dns(make_rc_mta(tmp_path), dns_server)
    server.settings["outbound"]["relay_keeps_message_id"] = False
    server.start()
    try:
        task_id, request = new_request(server)
        relays = "<0100018c1a2b3c4d@email.amazonses.com>"

        said = sent_by_owner(server, owners_yes(request["reply_to"], relays), request["reply_to"])

        assert said.startswith("250"), said
        assert server.task(task_id)["status"] == "completed"
    finally:
        server.stop()


def test_a_request_sent_before_keeps_its_old_ids(rc: RcMta) -> None:
    # A request mailed by an earlier version: <rc.TOKEN@…>, reminders <rc.reminderN.ID@…>.
    first, request = new_request(rc)
    second, other = new_request(rc)
    with sqlite3.connect(rc.workdir / "rc-mta.db") as db:
        for one in (request, other):
            db.execute(
                "UPDATE requests SET message_id = ? WHERE id = ?", (derived_id(one["reply_to"]), one["request_id"])
            )

    to_request = sent_by_owner(
        rc, owners_yes(request["reply_to"], derived_id(request["reply_to"])), request["reply_to"]
    )
    old_reminder = f"<rc.reminder1.{other['request_id']}@{REPLY_DOMAIN}>"
    to_reminder = sent_by_owner(rc, owners_yes(other["reply_to"], old_reminder), other["reply_to"])

    assert to_request.startswith("250") and to_reminder.startswith("250"), (to_request, to_reminder)
    assert rc.task(first)["status"] == rc.task(second)["status"] == "completed"


def test_a_reply_whose_client_wrote_its_in_reply_to_as_an_encoded_word_still_acts(rc: RcMta) -> None:
    # Python's own email.policy.default writes a long id as an RFC 2047 word: still the id.
    task_id, request = new_request(rc)
    encoded = email.header.Header(request["message_id"], "utf-8").encode(maxlinelen=998)
    assert encoded.startswith("=?utf-8?q?=3C")
    threading = f"In-Reply-To: {encoded}\r\nReferences: {encoded}\r\n".encode()
    raw = threading + wire(reply_message(request["reply_to"], "Yes, go ahead", sender=OWNER))
    raw = bytes(dkim.sign(raw, b"sel", b"corp.test", KEY, include_headers=SIGNED_FIELDS)) + raw

    said = sent_by_owner(rc, raw, request["reply_to"])

    assert said.startswith("250"), said
    assert rc.task(task_id)["status"] == "completed"


@pytest.mark.parametrize("empty", [b"In-Reply-To:\r\n", b"References: \r\n"])
def test_a_reply_whose_threading_field_is_empty_answers_some_other_message(rc: RcMta, empty: bytes) -> None:
    # An empty In-Reply-To or References names a message no one can read, not "a new mail".
    task_id, request = new_request(rc)
    raw = empty + wire(reply_message(request["reply_to"], "Yes, go ahead", sender=OWNER))
    raw = bytes(dkim.sign(raw, b"sel", b"corp.test", KEY, include_headers=SIGNED_FIELDS)) + raw

    said = sent_by_owner(rc, raw, request["reply_to"])

    assert said.startswith(REFUSED) and "an id that cannot be read" in said, said
    assert rc.task(task_id)["status"] == "in_progress"


def test_the_binding_and_the_threading_rule_read_the_same_first_threading_fields() -> None:
    raw = (
        b"From: owner@corp.test\r\nTo: rc@reply.example.test\r\n"
        b"In-Reply-To: <first@x>\r\nIn-Reply-To: <second@x>\r\n"
        b"References: <a@x> <b@x>\r\nReferences: <c@x>\r\n\r\nYes\r\n"
    )
    parsed = parse_reply(raw)

    threading = [(name, value) for name, value in parsed.addressed if name in ("in-reply-to", "references")]
    assert threading == [("in-reply-to", "<first@x>"), ("references", "<a@x> <b@x>")]
    assert parsed.referenced_ids == ("first@x", "a@x", "b@x")
