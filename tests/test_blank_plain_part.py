"""A multipart/alternative reply whose text/plain part is blank is read from its HTML: the
client shows the HTML ("Rejected."), and a blank plain part must not make a Complete
button's reply a reply with no words (which completes)."""

from __future__ import annotations

import pytest
from conftest import RcMta
from mailclient import reply_message
from test_one_path import signed
from test_thread_binding import OWNER, new_request, sent_by_owner

from rc_mta.reading import DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS, interpret_action, parse_reply


@pytest.mark.parametrize("blank", ["", " ", "\r\n\r\n", " \t\r\n \r\n"])
def test_a_blank_plain_alternative_gives_way_to_the_html(blank: str) -> None:
    message = reply_message("rc@reply.example", blank or " ", sender=OWNER, html="<p>Rejected.</p>")
    if not blank:
        message.get_payload()[0].set_payload("")  # type: ignore[index, union-attr]

    reply = parse_reply(bytes(message))

    assert reply.comment == "Rejected."
    assert interpret_action(reply.comment, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS) == "fail"


def test_a_plain_alternative_with_words_is_still_the_one_read() -> None:
    message = reply_message("rc@reply.example", "Approved", sender=OWNER, html="<p>Approved, html</p>")

    assert parse_reply(bytes(message)).comment == "Approved"


@pytest.fixture
def rc(auth_rc: RcMta) -> RcMta:
    return auth_rc


def test_the_htmls_no_behind_a_blank_plain_part_is_no_complete(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(
        request["complete_address"], " ", sender=OWNER, subject="Complete: deploy", html="<p>Rejected.</p>"
    )

    said = sent_by_owner(rc, signed(answer), request["complete_address"])

    assert said.startswith("550 5.6.0 Your words do not agree with the Complete address"), said
    assert rc.task(task_id)["status"] == "in_progress"


def test_the_htmls_no_behind_a_blank_plain_part_fails_at_the_reply_address(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["reply_to"], "\r\n", sender=OWNER, subject="Re: deploy", html="<div>Rejected.</div>")
    answer["In-Reply-To"] = answer["References"] = request["message_id"]

    said = sent_by_owner(rc, signed(answer), request["reply_to"])

    assert said.startswith("250"), said
    assert rc.task(task_id)["status"] == "failed"
