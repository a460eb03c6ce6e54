"""A button's reply whose Subject the person retyped to the other decision ("Reject" to the
Complete address, with no words in the body) is refused: the Subject was not read at all,
and an empty body completes. The request's title in the Subject (which a button's mailto
and a reply carry) may hold any word and is not read."""

from __future__ import annotations

import pytest
from conftest import RcMta
from mailclient import reply_message
from test_one_path import signed
from test_thread_binding import OWNER, sent_by_owner

from rc_mta.reading.message import typed_subject

TITLE = "Reject stale branches"


@pytest.mark.parametrize(
    ("subject", "typed"),
    [
        ("Complete: Reject stale branches", "complete:"),
        ("Re: Action needed:  Reject   stale branches", "re: action needed:"),
        ("Reject", "reject"),
        ("", ""),
    ],
)
def test_the_title_is_not_what_the_person_typed(subject: str, typed: str) -> None:
    assert typed_subject(subject, TITLE).strip() == typed


@pytest.fixture
def rc(auth_rc: RcMta) -> RcMta:
    return auth_rc


@pytest.mark.parametrize(
    ("subject", "address"),
    [("Reject", "complete_address"), ("Rejected, sorry", "complete_address"), ("Approved", "fail_address")],
)
def test_a_retyped_subject_against_the_button_is_refused(rc: RcMta, subject: str, address: str) -> None:
    task_id = rc.add_task(title="Deploy to prod", owner=OWNER)
    request = rc.request(task_id)
    answer = reply_message(request[address], "", sender=OWNER, subject=subject)

    said = sent_by_owner(rc, signed(answer), request[address])

    assert said.startswith("550 5.6.0 Your words do not agree with the"), said
    assert rc.task(task_id)["status"] == "in_progress"


def test_the_buttons_own_subject_acts_whatever_the_title_says(rc: RcMta) -> None:
    task_id = rc.add_task(title=TITLE, owner=OWNER)
    request = rc.request(task_id)
    answer = reply_message(request["complete_address"], "", sender=OWNER, subject=f"Complete: {TITLE}")

    said = sent_by_owner(rc, signed(answer), request["complete_address"])

    assert said.startswith("250"), said
    assert rc.task(task_id)["status"] == "completed"
