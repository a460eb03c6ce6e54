"""Struck-through words are taken back, not said: a reply whose struck-out words decide
("<s>Approved</s>", "~~Approved~~") is refused as unclear (550 5.6.0), never read as the
decision it strikes; struck words that decide nothing ("~~teh~~") are left out of the
reading. HTML strike (<s>, <del>, <strike>, text-decoration: line-through, inline or from
the message's style sheet) is rendered as plain text writes it: "~~…~~"."""

from __future__ import annotations

import pytest
from conftest import RcMta
from mailclient import reply_message
from test_one_path import signed
from test_thread_binding import OWNER, new_request, sent_by_owner

from rc_mta.reading import (
    DEFAULT_COMPLETE_WORDS,
    DEFAULT_FAIL_WORDS,
    contradicts,
    html_to_text,
    interpret_action,
    parse_reply,
)


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p><s>Approved</s></p>", "~~Approved~~"),
        ("<p><del>Rejected</del> Approved</p>", "~~Rejected~~ Approved"),
        ("<p><strike>Approved</strike></p>", "~~Approved~~"),
        ('<p><span style="text-decoration: line-through red">Approved</span></p>', "~~Approved~~"),
        ('<p><span style="text-decoration-line:line-through">Approved</span></p>', "~~Approved~~"),
        ("<style>.gone { text-decoration: line-through }</style><p class=gone>Approved</p>", "~~Approved~~"),
        ("<p><s>Appro<b>ved</b></s></p>", "~~Approved~~"),
        ("<p><s>Approved</p>", "~~Approved~~"),  # never closed: struck to the end
        ("<del><p>Approved</p><p>Thanks</p></del>", "~~Approved~~\n~~Thanks~~\n~~~~"),
    ],
)
def test_html_strike_is_rendered_as_struck_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


def decides(comment: str) -> str | None:
    return interpret_action(comment, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS)


@pytest.mark.parametrize(
    "comment", ["~~Approved~~", "~~Rejected~~ Approved", "Approved ~~not~~", "~~Deploy it~~", "~~No~~, approved"]
)
def test_a_struck_decision_decides_nothing_and_answers_no_button(comment: str) -> None:
    assert decides(comment) is None
    assert contradicts(comment, "complete", DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS)
    assert contradicts(comment, "fail", DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS)


@pytest.mark.parametrize(
    ("comment", "action"),
    [
        ("Approved ~~teh~~", "complete"),
        ("~~~~~~~~\nRejected\n~~~~~~~~", "fail"),
        ("Approved, ~~ ~~ thanks", "complete"),
    ],
)
def test_struck_words_that_decide_nothing_are_left_out(comment: str, action: str) -> None:
    assert decides(comment) == action


@pytest.fixture
def rc(auth_rc: RcMta) -> RcMta:
    return auth_rc


@pytest.mark.parametrize("html", ["<p><s>Approved</s></p>", '<div style="text-decoration:line-through">Approved</div>'])
def test_a_struck_approval_is_refused_at_the_reply_address(rc: RcMta, html: str) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["reply_to"], "", sender=OWNER, html=html, in_reply_to=request["message_id"])

    said = sent_by_owner(rc, signed(answer), request["reply_to"])

    assert said.startswith("550 5.6.0 Could not tell whether to complete or fail"), said
    assert rc.task(task_id)["status"] == "in_progress"


def test_a_plain_struck_approval_is_refused_at_the_reply_address(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["reply_to"], "~~Approved~~", sender=OWNER, in_reply_to=request["message_id"])

    said = sent_by_owner(rc, signed(answer), request["reply_to"])

    assert said.startswith("550 5.6.0"), said
    assert rc.task(task_id)["status"] == "in_progress"


@pytest.mark.parametrize("body", ["~~Approved~~", "~~Approved~~\nThanks"])
def test_a_plain_struck_line_is_the_persons_words_not_a_dashed_title(body: str) -> None:
    # "~~Approved~~" on a line of its own was read as "---- Bob wrote ----" and dropped with
    # all below it: an empty comment, which a Complete button acts on.
    reply = parse_reply(bytes(reply_message("rc@reply.example", body, sender=OWNER)))

    assert reply.comment == body


def test_a_struck_go_ahead_is_no_answer_to_the_complete_button(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["complete_address"], "", sender=OWNER, html="<p><del>Go ahead</del></p>")

    said = sent_by_owner(rc, signed(answer), request["complete_address"])

    assert said.startswith("550 5.6.0 Your words do not agree with the Complete address"), said
    assert rc.task(task_id)["status"] == "in_progress"
