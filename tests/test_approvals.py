"""N of M approvals: a request to several owners may need any one (the default), all, or a
count; a fail from anyone fails it; the task acts once when the rule is met; a late answer
is refused saying who decided. Real rc-mta processes, replies over real SMTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import RcMta, make_rc_mta
from mailclient import SmtpOutcome, reply_message, send_smtp
from webhook_receiver import WebhookReceiver

from rc_mta import smtp_replies as R

TOKEN = "approvals-api-token-5d1e"
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


def post(server: RcMta, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.http_url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ask(server: RcMta, task_id: str, owners: list[str], approvals: int | str) -> dict[str, str]:
    """Request the owners' answers; each owner's complete and fail addresses."""
    status, body = post(server, "/v1/requests", {"task_id": task_id, "owners": owners, "approvals": approvals})
    assert status == 201, body
    return {r["owner"]: r for r in body["requests"]}


def answer(server: RcMta, sent: dict[str, Any], owner: str, action: str = "complete") -> SmtpOutcome:
    address = sent[owner][f"{action}_address"]
    return send_smtp(server.smtp_port, reply_message(address, "My answer", sender=owner), address, mail_from=owner)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RcMta]:
    server = make_rc_mta(tmp_path, http={"api_tokens": [TOKEN]})
    server.start()
    yield server
    server.stop()


def test_two_of_three_completes_on_the_second_approval_and_refuses_the_third(api: RcMta) -> None:
    task = api.add_task(owner=ALICE)
    sent = ask(api, task, [ALICE, BOB, CAROL], 2)
    first = answer(api, sent, ALICE)
    assert first.code == 250 and first.text.endswith(
        R.APPROVAL_RECORDED.with_text(task_id=task, count=1, needed=2).text
    )
    assert api.task(task)["status"] == "in_progress"
    second = answer(api, sent, BOB)
    assert second.code == 250 and "completed" in second.text, second
    shown = api.task(task)
    assert (shown["status"], shown["acted_by"]) == ("completed", BOB)
    assert shown["comments"][-1]["text"].endswith(f"Approved by {ALICE}, {BOB}")
    late = answer(api, sent, CAROL)
    assert (late.code, late.enhanced) == (550, "5.7.1")
    assert f"The decision on task {task} was already made: completed by {ALICE}, {BOB}" in late.text


def test_a_fail_from_anyone_fails_a_request_that_needs_all(api: RcMta) -> None:
    task = api.add_task(owner=ALICE)
    sent = ask(api, task, [ALICE, BOB, CAROL], "all")
    assert answer(api, sent, ALICE).code == 250
    failed = answer(api, sent, BOB, "fail")
    assert failed.code == 250, failed
    assert api.task(task)["status"] == "failed"
    late = answer(api, sent, CAROL)
    assert (late.code, late.enhanced) == (550, "5.7.1")
    assert f"already made: failed by {BOB}" in late.text


def test_two_approvals_at_the_same_moment_are_both_counted_and_act_once(api: RcMta) -> None:
    task = api.add_task(owner=ALICE)
    sent = ask(api, task, [ALICE, BOB, CAROL], 2)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda owner: answer(api, sent, owner), [ALICE, BOB]))
    assert [o.code for o in outcomes] == [250, 250], outcomes
    assert sum("is recorded: 1 of the 2" in o.text for o in outcomes) == 1
    shown = api.task(task)
    assert shown["status"] == "completed"


def test_more_approvals_than_owners_means_all_of_them(api: RcMta) -> None:
    task = api.add_task(owner=ALICE)
    status, body = post(api, "/v1/requests", {"task_id": task, "owners": [ALICE, BOB], "approvals": 3})
    assert status == 201 and body["approvals_needed"] == 2
    sent = {r["owner"]: r for r in body["requests"]}
    assert "1 of the 2" in answer(api, sent, ALICE).text
    assert answer(api, sent, BOB).code == 250
    assert api.task(task)["status"] == "completed"


def test_any_one_stays_the_default(api: RcMta) -> None:
    task = api.add_task(owner=ALICE)
    status, body = post(api, "/v1/requests", {"task_id": task, "owners": [ALICE, BOB]})
    assert status == 201 and body["approvals_needed"] == 1
    sent = {r["owner"]: r for r in body["requests"]}
    assert answer(api, sent, BOB).code == 250
    assert api.task(task)["status"] == "completed"


def test_webhook_is_posted_once_when_two_of_three_approved(tmp_path: Path) -> None:
    receiver = WebhookReceiver().start()
    server = make_rc_mta(tmp_path, http={"api_tokens": [TOKEN]})
    server.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    try:
        server.start()
        sent = ask(server, "CHANGE-7", [ALICE, BOB, CAROL], 2)
        assert answer(server, sent, CAROL).code == 250
        assert receiver.payloads == []
        assert answer(server, sent, ALICE).code == 250
        assert answer(server, sent, BOB).code == 550
        assert len(receiver.payloads) == 1
        posted = receiver.payloads[0]
        assert (posted["task_id"], posted["action"], posted["actor"]) == ("CHANGE-7", "complete", ALICE)
        assert posted["comment"].endswith(f"Approved by {CAROL}, {ALICE}")
    finally:
        server.stop()
        receiver.stop()
