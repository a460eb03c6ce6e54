"""What a Complete or Fail button's reply may say: words the grammar reads as no decision
that still say the opposite of the button ("Definitely not", "Do not deploy" to the Complete
address, "Deploy it" to the Fail one) are refused with 550 5.6.0, never acted on.

A table over ``contradicts`` (the rule), and the live path for the reviewer's cases.
"""

from __future__ import annotations

import pytest
from conftest import RcMta
from mailclient import reply_message
from test_one_path import signed
from test_thread_binding import OWNER, new_request, sent_by_owner

from rc_mta.reading import DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS, contradicts

REFUSED = "550 5.6.0 Your words do not agree with the"

#: (words, button): a no to the Complete button, a yes to the Fail one.
AGAINST = [
    *(
        (words, "complete")
        for words in (
            "Definitely not.",
            "Do not deploy.",
            "Don't do it.",
            "Not ready to ship.",
            "I don't think so.",
            "Unacceptable.",
            "Certainly not",
            "Not at all",
            "I'm afraid not",
            "Stop the release",
            "Cancel the deployment",
            "Roll back",
            "Not acceptable",
            "This is not acceptable.",
            "Keinesfalls",
            "Ne pas déployer",
            "Bitte abbrechen.",
            "Annulez.",
            "Para nada.",
            "No deploy today.",
            "Keine Freigabe.",
            "Thanks. Do not deploy.",
            "Looks good. Don't deploy.",
            "I can't.",
            "\u4e2d\u6b62\u3057\u3066\u304f\u3060\u3055\u3044",  # 中止してください: please stop
            "\u56de\u6eda",  # 回滚: roll back
        )
    ),
    *((words, "fail") for words in ("Deploy it.", "Definitely.", "Green light", "Release it now", "Let's go")),
    # When to act, or on what, with no decision: not now (found in review).
    *(
        (words, "complete")
        for words in (
            "Once CI is green.",
            "If CI is green.",
            "Pending QA.",
            "Tomorrow morning.",
            "Please deploy tomorrow.",
            "Go live Monday.",
            "Sobald CI gr\u00fcn ist.",
        )
    ),
    # A yes written as nothing wrong, to the Fail address (found in review).
    *(
        (words, "fail")
        for words in ("I don't object", "Not opposed", "No blockers", "Nothing wrong with it", "No blockers, thanks")
    ),
    # A no with regret, or in other words (found in review).
    *(
        (words, "complete")
        for words in (
            "Unfortunately not",
            "Sadly not",
            "Under no circumstances",
            "By no means",
            "Let's not",
            "Let's not do this",
            "Leider nicht",
            "Helaas niet",
            "Tyv\u00e4rr inte",
            "Surtout pas",
            "Postponed",
            "Cancelled",
            "Changes requested",
            "Needs changes",
        )
    ),
]

#: What a button's reply says in agreement, or not at all: it still acts.
AGREEING = [
    # A no with its reason: the Fail address takes it.
    *((words, "fail") for words in ("No, the migration failed", "No, we found a bug", "No. Tests are red.")),
    *((words, "fail") for words in ("No errors in the log, but it hangs", "Tests are red")),
    # A yes written as nothing against it, to the Complete address.
    *((words, "complete") for words in ("I don't object", "I'm not against it")),
    # A time or a courtesy beside no request to wait.
    *(
        (words, "complete")
        for words in (
            "Thanks, see you tomorrow",
            "Tested this morning, looks good",
            "If possible, add a changelog entry",
        )
    ),
    # A signature's or disclaimer's "do not" (Outlook puts the signature in a button's mail).
    *(
        (words, "complete")
        for words in (
            "Please do not print this email",
            "Do not reply to this address",
            "I do not expect a response outside your working hours",
            "If you are not the intended recipient, do not read, copy or distribute it",
        )
    ),
    *(
        (words, "complete")
        for words in (
            "",
            "Looks good",
            "Thanks",
            "Approved, no changes needed",
            "No comments.",
            "Don't worry, approved",
            "Not bad at all",
            "I didn't find any issues",
            "I don't see any problems.",
            "Looks good. Don't forget the changelog.",
            "No errors",
            "No problem",
            "Pas de problème",
            "Keine Anmerkungen.",
            "Release notes are attached.",
            "Can't wait to see it live!",
            "Nie mam uwag.",
            "Not yet tested in staging, but approved.",
        )
    ),
    *(
        (words, "fail")
        for words in (
            "",
            "Tests are red",
            "Thanks",
            "Definitely not",
            "Do not deploy.",
            "Stop the release",
            "Rejected, definitely.",
            "Release notes are wrong",
            "Merge conflict in main.",
        )
    ),
]


@pytest.mark.parametrize(("words", "button"), AGAINST, ids=[f"{b}: {w!r}" for w, b in AGAINST])
def test_words_against_the_button_are_refused(words: str, button: str) -> None:
    assert contradicts(words, button, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS) is True


@pytest.mark.parametrize(("words", "button"), AGREEING, ids=[f"{b}: {w!r}" for w, b in AGREEING])
def test_words_that_agree_or_say_nothing_still_act(words: str, button: str) -> None:
    assert contradicts(words, button, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS) is False


@pytest.fixture
def rc(auth_rc: RcMta) -> RcMta:
    return auth_rc


@pytest.mark.parametrize(
    ("words", "address"),
    [
        ("Definitely not.", "complete_address"),
        ("Do not deploy.", "complete_address"),
        ("Stop the release", "complete_address"),
        ("Deploy it.", "fail_address"),
        ("Green light", "fail_address"),
    ],
)
def test_a_buttons_reply_that_says_the_opposite_leaves_the_task(rc: RcMta, words: str, address: str) -> None:
    task_id, request = new_request(rc)
    subject = "Complete: deploy" if address == "complete_address" else "Fail: deploy"
    answer = reply_message(request[address], words, sender=OWNER, subject=subject)

    said = sent_by_owner(rc, signed(answer), request[address])

    assert said.startswith(REFUSED), said
    assert "press the button you mean" in said
    assert rc.task(task_id)["status"] == "in_progress"


def test_a_plain_comment_to_the_complete_button_still_completes(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    answer = reply_message(request["complete_address"], "Don't forget the changelog.", sender=OWNER)

    said = sent_by_owner(rc, signed(answer), request["complete_address"])

    assert said.startswith("250"), said
    assert rc.task(task_id)["status"] == "completed"


@pytest.mark.parametrize(
    "words",
    [
        "Yes, stop the release.",
        "Agreed, do not deploy.",
        "I agree, it's not ready.",
        "No, deploy it.",
        # A bare no, then nothing is wrong: the no answered a question about trouble.
        "No, I don't have any concerns.",
        "No, nothing blocking.",
    ],
)
def test_a_reply_whose_answer_a_button_would_refuse_decides_nothing(rc: RcMta, words: str) -> None:
    # To the address that decides from the words: "Yes, stop the release" completed the task
    # and "No, deploy it" failed it (found in review). Its words read both ways.
    task_id, request = new_request(rc)
    answer = reply_message(request["reply_to"], words, sender=OWNER, in_reply_to=request["message_id"])

    said = sent_by_owner(rc, signed(answer), request["reply_to"])

    assert said.startswith("550 5.6.0 Could not tell whether to complete or fail"), said
    assert rc.task(task_id)["status"] == "in_progress"


def test_a_plan_for_what_may_go_wrong_is_no_answer_against_the_approval(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    words = "Approved. If anything goes wrong, roll back."
    answer = reply_message(request["reply_to"], words, sender=OWNER, in_reply_to=request["message_id"])

    said = sent_by_owner(rc, signed(answer), request["reply_to"])

    assert said.startswith("250"), said
    assert rc.task(task_id)["status"] == "completed"
