"""People's replies as their mail clients lay them out (tests/corpus/human): each is read
through the real parse path and must decide what the person meant, with exactly their
words as the comment; a sample goes through a running rc-mta over SMTP as well."""

from __future__ import annotations

import email.policy
from collections import Counter
from email import message_from_bytes
from email.message import EmailMessage

import pytest
from conftest import RcMta
from corpus_reader import HumanCase, human_cases, read
from mailclient import send_smtp

CASES = human_cases()


@pytest.mark.parametrize("case", CASES, ids=[case.file for case in CASES])
def test_reply_is_read_as_the_person_meant_it(case: HumanCase) -> None:
    reading = read(case.path)

    assert reading.machine is None  # a person's reply is never machine mail
    assert reading.comment == case.comment
    assert reading.action == case.action


def test_corpus_spans_twelve_languages_every_action_and_the_clients() -> None:
    languages = Counter(case.language for case in CASES)
    actions = Counter(case.action for case in CASES)
    clients = {case.client.split(" (")[0] for case in CASES}

    assert len(languages) >= 12, languages
    assert {"complete", "fail", "none"} <= set(actions), actions
    for client in ("Gmail web", "Outlook desktop", "Outlook on the web", "Apple Mail", "iOS Mail", "Thunderbird"):
        assert client in clients
    for client in ("Yahoo Mail", "Samsung Email", "Hotmail", "Zimbra", "Mail.ru", "Yandex Mail", "QQ Mail"):
        assert client in clients


def _sample() -> list[HumanCase]:
    """Each decision in English, one more language each, and four shapes the issue named
    (a live rc-mta costs seconds per reply; the parse test above covers every case)."""
    wanted = {("en", "complete"), ("en", "fail"), ("en", "none"), ("ja", "complete"), ("ru", "fail"), ("de", "none")}
    named = {"banner-html-en-1.eml", "interleaved-en-1.eml", "thread-en-2.eml", "attr-napisal-pl.eml"}
    sample = []
    for case in CASES:
        if (case.language, case.action) in wanted or case.file in named:
            wanted.discard((case.language, case.action))
            sample.append(case)
    return sample


SAMPLE = _sample()


@pytest.mark.parametrize("case", SAMPLE, ids=[case.file for case in SAMPLE])
def test_reply_sent_to_a_running_rc_mta_acts_as_the_person_meant_it(rc: RcMta, case: HumanCase) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    message = message_from_bytes(case.path.read_bytes(), _class=EmailMessage, policy=email.policy.default)
    # The same reply, from this task's owner to this request's reply address.
    for name, value in (
        ("From", "Alice <alice@example.com>"),
        ("To", request["reply_to"]),
        ("In-Reply-To", request["message_id"]),
        ("References", request["message_id"]),
    ):
        del message[name]
        message[name] = value

    outcome = send_smtp(rc.smtp_port, message, request["reply_to"])

    task = rc.task(task_id)
    if case.action == "none":
        assert (outcome.code, outcome.enhanced) == (550, "5.6.0"), outcome
        assert task["status"] == "in_progress"
    else:
        assert outcome.code == 250, outcome
        assert task["status"] == {"complete": "completed", "fail": "failed"}[case.action]
        assert [comment["text"] for comment in task["comments"]] == [case.comment]
