"""N of M approvals: a request to several owners may need any one (the default), all, or a
count; a fail from anyone fails it; the task acts once when the rule is met; a late answer
is refused saying who decided. While a group may still decide its task, nothing outside it
may: no request is made outside it, and an answer to one (made before that rule) is
refused. Real rc-mta processes, replies over real SMTP, on SQLite and PostgreSQL where the
store's own statements decide."""

from __future__ import annotations

import email.policy
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import RcMta, make_rc_mta, store_write_locked, wait_until
from mailclient import SmtpOutcome, reply_message, send_smtp
from racing import all_at_once
from release_server import FakeRelease
from sqlalchemy import select, update
from webhook_receiver import WebhookReceiver

from rc_mta import smtp_replies as R
from rc_mta.errors import ApprovalConflict
from rc_mta.store import (
    STALE_CLAIM_SECONDS,
    ApprovalCheck,
    Request,
    Store,
    approval_rule,
    requests,
    used_tokens,
)
from rc_mta.tokens import new_request_id

TOKEN = "approvals-api-token-5d1e"
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
DAVE = "dave@example.com"


def post(server: RcMta, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
    """POST ``body`` to the API (GET when None): the status and the JSON answer."""
    request = urllib.request.Request(
        server.http_url + path,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
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


def alice_approved(server: RcMta, task_id: str) -> tuple[dict[str, Any], EmailMessage]:
    """2 of 3 asked of Alice, Bob and Carol, Alice's approval counted: what was sent, and
    Bob's approval (not sent yet), which decides."""
    sent = ask(server, task_id, [ALICE, BOB, CAROL], 2)
    assert "1 of the 2" in answer(server, sent, ALICE).text
    return sent, reply_message(sent[BOB]["complete_address"], "Approved", sender=BOB)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RcMta]:
    server = make_rc_mta(tmp_path, http={"api_tokens": [TOKEN]})
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def both(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RcMta]:
    """The API server on each store: what may still decide a task is asked of the store."""
    server = make_rc_mta(tmp_path, http={"api_tokens": [TOKEN]})
    if request.param == "postgresql":
        server.settings["store"] = {"url": request.getfixturevalue("pg_url"), "busy_timeout": "2s"}
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


def test_two_approvals_at_the_same_moment_are_both_counted_and_act_once(both: RcMta) -> None:
    task = both.add_task(owner=ALICE)
    sent = ask(both, task, [ALICE, BOB, CAROL], 2)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda owner: answer(both, sent, owner), [ALICE, BOB]))
    assert [o.code for o in outcomes] == [250, 250], outcomes
    assert sum("is recorded: 1 of the 2" in o.text for o in outcomes) == 1
    shown = both.task(task)
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


def webhook_server(tmp_path: Path, store: str, request: pytest.FixtureRequest, receiver: WebhookReceiver) -> RcMta:
    """An API server whose tasks are a webhook's, on the ``store`` named (sqlite, postgresql)."""
    server = make_rc_mta(tmp_path, http={"api_tokens": [TOKEN]})
    webhook = {"url": receiver.url, "secret": receiver.secret, "timeout": "30s"}
    server.settings["tasks"] = {"backend": "webhook", "webhook": webhook}
    if store == "postgresql":
        server.settings["store"] = {"url": request.getfixturevalue("pg_url"), "busy_timeout": "2s"}
    return server


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_an_answer_while_the_decision_is_being_told_waits_and_counts_once_it_is_taken_back(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Bob's approval decides 2 of 3, but a decision is final only once the backend was told:
    Carol's fail meanwhile is asked to come again (451), the webhook answers 503 so Bob's
    decision is taken back, and Carol's fail, retried, decides. Bob's retry is refused."""
    gate = threading.Event()
    receiver = WebhookReceiver(answer=(503, {"detail": "maintenance"}), gate=gate).start()
    server = webhook_server(tmp_path, store, request, receiver)
    try:
        server.start()
        sent, bobs = alice_approved(server, "CHANGE-9")
        carols = reply_message(sent[CAROL]["fail_address"], "No, not this week", sender=CAROL)
        waiting = R.DECISION_IN_PROGRESS.with_text(task_id="CHANGE-9")
        with ThreadPoolExecutor(1) as pool:
            deciding = pool.submit(send_smtp, server.smtp_port, bobs, sent[BOB]["complete_address"], BOB)
            wait_until(lambda: len(receiver.payloads) == 1, what="Bob's deciding POST under way")
            predicted = diagnose(server, tmp_path, carols, CAROL)
            told = send_smtp(server.smtp_port, carols, sent[CAROL]["fail_address"], mail_from=CAROL)
            assert f"{told.code} {told.text}" == predicted["smtp_reply"] == str(waiting), predicted
            assert predicted["would"] == "retry"
            gate.set()
            bob_first = deciding.result()
        assert (bob_first.code, bob_first.enhanced) == (451, "4.3.0"), bob_first  # the webhook's 503

        receiver.answer = None
        again = send_smtp(server.smtp_port, carols, sent[CAROL]["fail_address"], mail_from=CAROL)
        assert again.code == 250 and again.text.endswith(
            R.TASK_ACTED.with_text(task_id="CHANGE-9", action_past="failed").text
        ), again
        bob_again = send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)
        assert (bob_again.code, bob_again.enhanced) == (550, "5.7.1"), bob_again
        assert bob_again.text.endswith(
            R.DECISION_MADE.with_text(task_id="CHANGE-9", action_past="failed", by=CAROL).text
        )
        assert [(p["action"], p["actor"]) for p in receiver.payloads] == [("complete", BOB), ("fail", CAROL)]
    finally:
        gate.set()
        server.stop()
        receiver.stop()


def claim_taken_earlier(server: RcMta, request_id: str, seconds: float) -> None:
    """As if ``seconds`` had passed since the request's answer was claimed."""
    store = Store(server.settings["store"]["url"])
    try:
        with store.engine.begin() as conn:
            claim = used_tokens.c
            conn.execute(
                update(used_tokens).where(claim.request_id == request_id).values(claimed_at=claim.claimed_at - seconds)
            )
    finally:
        store.close()


# Two ways a deciding POST ends with no answer: cut at [tasks] action_deadline (under the
# webhook's own timeout), or the webhook's own timeout (under the deadline).
# Or an answer that does not say whether it acted: a 502 from a proxy in front of it.
_NO_ANSWER = {
    "action deadline": (
        {"action_deadline": "1s"},
        "30s",
        None,
        R.ACTION_OUTCOME_UNKNOWN.with_text(task_id="CHANGE-11"),
    ),
    "webhook timeout": ({}, "1s", None, R.BACKEND_UNAVAILABLE),
    "bad gateway": ({}, "30s", 502, R.BACKEND_UNAVAILABLE),
}


@pytest.mark.parametrize("cut", list(_NO_ANSWER))
def test_a_decider_with_no_answer_from_the_backend_keeps_its_decision_even_once_its_claim_is_dead(
    tmp_path: Path, cut: str
) -> None:
    """Bob's approval decides 2 of 3, and the webhook holds his POST until his attempt gives
    up (at the action deadline, or at the webhook's own timeout): Bob gets 451, since the
    receiver may yet act on it. His decision and claim stand, so Carol's fail waits (451)
    rather than act beside it; once Bob's claim is taken for dead (ten minutes on, long
    after his attempt ended) she still waits, since the webhook cannot say whether his
    acted: the receiver is never told fail beside the complete it may have taken."""
    tasks, timeout, status, bobs_answer = _NO_ANSWER[cut]
    gate = threading.Event()
    receiver = WebhookReceiver(gate=gate).start()
    if status is not None:  # answered at once, with a status that says nothing of the action
        receiver.answer = (status, {"detail": "upstream gave no answer"})
        gate.set()
    server = make_rc_mta(tmp_path, http={"api_tokens": [TOKEN]})
    webhook = {"url": receiver.url, "secret": receiver.secret, "timeout": timeout}
    server.settings["tasks"] = {"backend": "webhook", **tasks, "webhook": webhook}
    try:
        server.start()
        sent, bobs = alice_approved(server, "CHANGE-11")
        bob = send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)
        assert f"{bob.code} {bob.text}" == str(bobs_answer), bob
        assert [(p["action"], p["actor"]) for p in receiver.payloads] == [("complete", BOB)]  # still held

        waiting = answer(server, sent, CAROL, "fail")
        assert f"{waiting.code} {waiting.text}" == str(R.DECISION_IN_PROGRESS.with_text(task_id="CHANGE-11"))
        again = send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)
        assert f"{again.code} {again.text}" == str(R.MESSAGE_IN_PROGRESS), again  # his claim, kept
        assert len(receiver.payloads) == 1

        receiver.answer = (200, {})
        gate.set()  # the receiver ends what Bob's cut attempt sent; then Bob's claim is taken for dead
        claim_taken_earlier(server, sent[BOB]["request_id"], STALE_CLAIM_SECONDS + 1)
        still = answer(server, sent, CAROL, "fail")
        unknown = R.SIBLING_OUTCOME_UNKNOWN.with_text(task_id="CHANGE-11", request_id=sent[BOB]["request_id"])
        assert f"{still.code} {still.text}" == str(unknown), still
        assert [(p["action"], p["actor"]) for p in receiver.payloads] == [("complete", BOB)]
    finally:
        gate.set()
        server.stop()
        receiver.stop()


def group_of(server: RcMta, request_id: str) -> str:
    """The id of the approval group the request decides in."""
    store = Store(server.settings["store"]["url"])
    try:
        group = store.approval_group_of(request_id)
    finally:
        store.close()
    assert group is not None
    return group.id


def bobs_decision_unanswered(
    server: RcMta, receiver: WebhookReceiver, task_id: str
) -> tuple[dict[str, Any], EmailMessage]:
    """2 of 3 asked of Alice, Bob and Carol, Alice's approval counted, and Bob's deciding
    approval POSTed and answered 502 (a proxy's: the receiver may have acted; 451 to Bob):
    what was sent, and Bob's message, for his server to send again."""
    receiver.answer = (502, {"detail": "upstream gave no answer"})
    sent, bobs = alice_approved(server, task_id)
    bob = send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)
    assert f"{bob.code} {bob.text}" == str(R.BACKEND_UNAVAILABLE), bob
    return sent, bobs


def bobs_decision_dead(server: RcMta, receiver: WebhookReceiver, task_id: str) -> tuple[dict[str, Any], EmailMessage]:
    """``bobs_decision_unanswered``, and ten minutes on: his claim is dead, and the receiver
    answers as usual again."""
    sent, bobs = bobs_decision_unanswered(server, receiver, task_id)
    receiver.answer = None
    claim_taken_earlier(server, sent[BOB]["request_id"], STALE_CLAIM_SECONDS + 1)
    return sent, bobs


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_webhook_decision_whose_attempt_died_is_not_taken_back_by_another_members_answer(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Bob's approval decides 2 of 3 and the webhook answers his POST 502 (a proxy's: it may
    have acted); ten minutes on, his claim is taken for dead. The webhook cannot be asked
    whether it acted, so neither Carol's fail nor her approval is POSTed beside it: 451,
    saying whether Bob's answer acted is unknown, and a WARNING names the task and the group.
    Bob's sender's retry settles it: POSTed again with his request id (the receiver dedupes);
    then Carol is refused, saying who decided."""
    receiver = WebhookReceiver().start()
    server = webhook_server(tmp_path, store, request, receiver)
    try:
        server.start()
        sent, bobs = bobs_decision_dead(server, receiver, "CHANGE-13")
        bobs_request = sent[BOB]["request_id"]

        unknown = R.SIBLING_OUTCOME_UNKNOWN.with_text(task_id="CHANGE-13", request_id=bobs_request)
        for action in ("fail", "complete"):
            carols_says = reply_message(sent[CAROL][f"{action}_address"], "My answer", sender=CAROL)
            predicted = diagnose(server, tmp_path, carols_says, CAROL)
            waiting = send_smtp(server.smtp_port, carols_says, sent[CAROL][f"{action}_address"], mail_from=CAROL)
            assert f"{waiting.code} {waiting.text}" == predicted["smtp_reply"] == str(unknown), (action, waiting)
        assert [(p["action"], p["request_id"]) for p in receiver.payloads] == [("complete", bobs_request)]
        group, carols = group_of(server, bobs_request), sent[CAROL]["request_id"]
        log = server.log_path.read_text().splitlines()
        warned = [line for line in log if " WARNING " in line and "task CHANGE-13" in line and group in line]
        assert any(bobs_request in line and carols in line for line in warned), warned

        settled = send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)
        acted = R.TASK_ACTED.with_text(task_id="CHANGE-13", action_past="completed")
        assert settled.code == 250 and settled.text.endswith(acted.text), settled
        assert [(p["action"], p["request_id"]) for p in receiver.payloads] == [("complete", bobs_request)] * 2
        after = answer(server, sent, CAROL, "fail")
        decided = R.DECISION_MADE.with_text(task_id="CHANGE-13", action_past="completed", by=f"{ALICE}, {BOB}")
        assert f"{after.code} {after.text}" == str(decided), after
    finally:
        server.stop()
        receiver.stop()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_deciders_retry_that_fails_cleanly_after_a_post_that_may_have_acted_keeps_the_decision(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Bob's approval decides 2 of 3 and the webhook answers his POST 502 (it may have
    acted); ten minutes on his claim is dead, and his sender's retry takes it over and POSTs
    again with his request id, answered 503 (nothing done this time; the first may still
    have acted). Bob gets 451, and his decision stands: sent again at once it POSTs again,
    and once his claim is dead again Carol's fail is not POSTed beside it (451, whether
    Bob's acted is unknown). Bob's retry, answered 2xx, settles it: Carol is refused."""
    receiver = WebhookReceiver().start()
    server = webhook_server(tmp_path, store, request, receiver)
    try:
        server.start()
        sent, bobs = bobs_decision_unanswered(server, receiver, "CHANGE-14")
        bobs_request = sent[BOB]["request_id"]

        def bob_sends() -> SmtpOutcome:  # the very same message each time, as his server retries it
            return send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)

        claim_taken_earlier(server, bobs_request, STALE_CLAIM_SECONDS + 1)
        receiver.answer = (503, {"detail": "maintenance"})
        for _ in range(2):  # the retry taking the dead claim over, and its retry: each POSTs again
            retried = bob_sends()
            assert f"{retried.code} {retried.text}" == str(R.BACKEND_UNAVAILABLE), retried
        assert [(p["action"], p["request_id"]) for p in receiver.payloads] == [("complete", bobs_request)] * 3

        claim_taken_earlier(server, bobs_request, STALE_CLAIM_SECONDS + 1)
        waiting = answer(server, sent, CAROL, "fail")
        unknown = R.SIBLING_OUTCOME_UNKNOWN.with_text(task_id="CHANGE-14", request_id=bobs_request)
        assert f"{waiting.code} {waiting.text}" == str(unknown), waiting
        assert [(p["action"], p["request_id"]) for p in receiver.payloads] == [("complete", bobs_request)] * 3

        receiver.answer = None  # answering as usual from here
        settled = bob_sends()
        acted = R.TASK_ACTED.with_text(task_id="CHANGE-14", action_past="completed")
        assert settled.code == 250 and settled.text.endswith(acted.text), settled
        after = answer(server, sent, CAROL, "fail")
    finally:
        server.stop()
        receiver.stop()

    decided = R.DECISION_MADE.with_text(task_id="CHANGE-14", action_past="completed", by=f"{ALICE}, {BOB}")
    assert f"{after.code} {after.text}" == str(decided), after
    assert [(p["action"], p["request_id"]) for p in receiver.payloads] == [("complete", bobs_request)] * 4


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_deciders_other_answer_is_not_posted_while_its_decision_may_have_acted(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Bob's approval decides 2 of 3 and the webhook answers his POST 502 (it may have
    acted); ten minutes on his claim is dead, and he answers Fail to the same request.
    POSTed under his request id, the receiver could take it for a repeat of the complete it
    did (2xx, while rc-mta records a fail), or fail what it completed. So it is not: 451
    saying his earlier complete may have acted, as diagnose predicts, and his claim left
    as it was: his first answer's retry settles it, and the fail is then refused."""
    receiver = WebhookReceiver().start()
    server = webhook_server(tmp_path, store, request, receiver)
    try:
        server.start()
        sent, bobs = bobs_decision_dead(server, receiver, "CHANGE-15")
        bobs_request = sent[BOB]["request_id"]
        bobs_fail = reply_message(sent[BOB]["fail_address"], "No after all", sender=BOB)
        predicted = diagnose(server, tmp_path, bobs_fail, BOB)
        refused = send_smtp(server.smtp_port, bobs_fail, sent[BOB]["fail_address"], mail_from=BOB)
        unknown = R.EARLIER_ANSWER_OUTCOME_UNKNOWN.with_text(task_id="CHANGE-15", action="complete")
        assert f"{refused.code} {refused.text}" == predicted["smtp_reply"] == str(unknown), (refused, predicted)
        assert [(p["action"], p["request_id"]) for p in receiver.payloads] == [("complete", bobs_request)]

        settled = send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)
        acted = R.TASK_ACTED.with_text(task_id="CHANGE-15", action_past="completed")
        assert settled.code == 250 and settled.text.endswith(acted.text), settled
        again = send_smtp(server.smtp_port, bobs_fail, sent[BOB]["fail_address"], mail_from=BOB)
    finally:
        server.stop()
        receiver.stop()

    used = R.TOKEN_USED.with_text(task_id="CHANGE-15", action_past="completed")
    assert f"{again.code} {again.text}" == str(used), again
    assert [(p["action"], p["request_id"]) for p in receiver.payloads] == [("complete", bobs_request)] * 2


RELEASE_TASK = "Applications/Folder1/Release1/Phase1/Task1"
RELEASE_TOKEN = "release-token-for-approvals"


def on_release(tmp_path: Path, release: FakeRelease, **settings: str | int) -> RcMta:
    """An rc-mta (not started) whose API asks groups, acting on Alice's ``RELEASE_TASK`` in ``release``."""
    release.add_task(RELEASE_TASK, owner="alice")
    tasks = {"backend": "release", "release": {"url": release.url, "token": RELEASE_TOKEN, **settings}}
    return make_rc_mta(tmp_path, http={"api_tokens": [TOKEN]}, tasks=tasks)


def test_a_deciding_post_that_never_connected_to_release_leaves_nothing_standing(tmp_path: Path) -> None:
    """Bob's approval decides 2 of 3, and Release goes silent between rc-mta's read of the
    task and its POST (SYNs dropped: a full accept queue here, a firewall in life), so the
    POST is never sent. Bob gets 451, as when Release is down, and his decision and claim are
    taken back at once: his retry, once Release takes connections again, completes the task,
    once, without waiting ten minutes for his claim to be taken for dead."""
    release = FakeRelease(token=RELEASE_TOKEN).start()
    server = on_release(tmp_path, release, timeout="1s", retries=0)
    try:
        server.start()
        sent, bobs = alice_approved(server, RELEASE_TASK)
        release.silent_after_read = True
        bob = send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)
        assert not release.calls and release.status(RELEASE_TASK) == "IN_PROGRESS"
        release.come_back()
        bob_again = send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)
    finally:
        server.stop()
        release.stop()

    assert f"{bob.code} {bob.text}" == str(R.BACKEND_UNAVAILABLE), bob
    acted = R.TASK_ACTED.with_text(task_id=RELEASE_TASK, action_past="completed")
    assert bob_again.code == 250 and bob_again.text.endswith(acted.text), bob_again
    assert [(a.action, a.task_id) for a in release.actions_on(RELEASE_TASK)] == [("complete", RELEASE_TASK)]
    assert release.calls[(RELEASE_TASK, "complete")] == 1


def test_a_stale_decision_that_release_shows_acted_stands_and_is_not_taken_back(tmp_path: Path) -> None:
    """Bob's approval decides 2 of 3 and Release completes the task, but the store is down
    when rc-mta would record it (451), and rc-mta restarts. Ten minutes on, Bob's claim is
    stale: Carol's fail asks Release first, which shows the task completed by Bob's email,
    so his decision is recorded and stands: Carol is told who decided, and Release is not
    asked to act again. Bob's retry is answered as done."""
    release = FakeRelease(token=RELEASE_TOKEN, action_delay=2.0).start()  # acts at once, answers late
    server = on_release(tmp_path, release, timeout="10s")
    try:
        server.start()
        sent, bobs = alice_approved(server, RELEASE_TASK)
        with ThreadPoolExecutor(1) as pool:
            deciding = pool.submit(send_smtp, server.smtp_port, bobs, sent[BOB]["complete_address"], BOB)
            wait_until(lambda: release.status(RELEASE_TASK) == "COMPLETED", what="Release to act")
            with store_write_locked(server.workdir / "rc-mta.db"):  # down until rc-mta has answered
                bob = deciding.result(timeout=60)
        assert (bob.code, bob.enhanced) == (451, "4.3.0") and "could not be recorded" in bob.text, bob
        server.restart()
        claim_taken_earlier(server, sent[BOB]["request_id"], STALE_CLAIM_SECONDS + 1)

        carol = answer(server, sent, CAROL, "fail")
        _, bobs_request = post(server, f"/v1/requests/{sent[BOB]['request_id']}", None)
        bob_again = send_smtp(server.smtp_port, bobs, sent[BOB]["complete_address"], mail_from=BOB)
    finally:
        server.stop()
        release.stop()

    decided = R.DECISION_MADE.with_text(task_id=RELEASE_TASK, action_past="completed", by=f"{ALICE}, {BOB}")
    assert f"{carol.code} {carol.text}" == str(decided), carol
    assert bobs_request["state"] == "answered" and bobs_request["answered"]["by"] == BOB, bobs_request
    done = R.ALREADY_DONE.with_text(task_id=RELEASE_TASK, action_past="completed")
    assert f"{bob_again.code} {bob_again.text}" == str(done), bob_again
    assert [(a.action, a.task_id) for a in release.actions_on(RELEASE_TASK)] == [("complete", RELEASE_TASK)]
    assert release.calls[(RELEASE_TASK, "fail")] == 0


def test_a_stale_decision_this_process_saw_act_stands_though_the_webhook_cannot_say(tmp_path: Path) -> None:
    """The webhook cannot be asked how a task stands; but the process that POSTed Bob's
    deciding complete, answered 2xx, remembers it when the store could not record it. Ten
    minutes on, Bob's claim is stale, and Carol's fail finds his decision standing instead
    of taking it back: the receiver is never told fail beside the complete it took."""
    gate = threading.Event()
    receiver = WebhookReceiver(gate=gate).start()
    webhook = {"url": receiver.url, "secret": receiver.secret, "timeout": "30s"}
    server = make_rc_mta(tmp_path, http={"api_tokens": [TOKEN]}, tasks={"backend": "webhook", "webhook": webhook})
    try:
        server.start()
        sent, bobs = alice_approved(server, "CHANGE-12")
        with ThreadPoolExecutor(1) as pool:
            deciding = pool.submit(send_smtp, server.smtp_port, bobs, sent[BOB]["complete_address"], BOB)
            wait_until(lambda: len(receiver.payloads) == 1, what="Bob's POST to arrive")
            with store_write_locked(server.workdir / "rc-mta.db"):  # down until rc-mta has answered
                gate.set()  # the receiver takes the complete
                bob = deciding.result(timeout=60)
        assert (bob.code, bob.enhanced) == (451, "4.3.0") and "could not be recorded" in bob.text, bob
        claim_taken_earlier(server, sent[BOB]["request_id"], STALE_CLAIM_SECONDS + 1)
        carol = answer(server, sent, CAROL, "fail")
    finally:
        gate.set()
        server.stop()
        receiver.stop()

    decided = R.DECISION_MADE.with_text(task_id="CHANGE-12", action_past="completed", by=f"{ALICE}, {BOB}")
    assert f"{carol.code} {carol.text}" == str(decided), carol
    assert [(p["action"], p["actor"]) for p in receiver.payloads] == [("complete", BOB)]


# Nothing outside the group decides while the group may ----------------------------------------


def refused_cli(server: RcMta, *args: str) -> str:
    """A CLI command that must fail: its one line of error."""
    result = server.cli(*args, check=False)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rc-mta: error: "), result.stderr
    return lines[0]


def test_no_request_outside_an_undecided_group_is_made(both: RcMta) -> None:
    task = both.add_task(owner=ALICE)
    status, body = post(both, "/v1/requests", {"task_id": task, "owners": [ALICE, BOB, CAROL], "approvals": 2})
    assert status == 201, body
    group = body["approval_group"]
    assert group.startswith("g-")

    line = refused_cli(both, "request", task, "--owner", DAVE)
    assert f"task {task} is decided by approval group {group} (2 must approve, 0 did so far)" in line
    assert line.endswith(
        f"revoke the group's requests first, or add the person to the group (--approval-group {group})"
    )
    for alone in ({"task_id": task, "owner": DAVE}, {"task_id": task, "owners": [DAVE, ALICE], "approvals": "any"}):
        status, refused = post(both, "/v1/requests", alone)
        assert status == 409, refused
        assert refused["error"]["code"] == "conflict"
        assert refused["error"]["message"].endswith(
            f'revoke the group\'s requests first, or add the person to the group ("approval_group": "{group}")'
        )
    # A second group would decide past the first one's rule just the same.
    status, refused = post(both, "/v1/requests", {"task_id": task, "owners": [DAVE, ALICE], "approvals": "all"})
    assert status == 409 and f"decided by approval group {group}" in refused["error"]["message"], refused

    sent = {r["owner"]: r for r in body["requests"]}
    assert "1 of the 2" in answer(both, sent, ALICE).text
    assert answer(both, sent, BOB).code == 250
    assert both.task(task)["status"] == "completed"


def test_no_group_is_made_while_a_request_outside_one_may_still_decide(both: RcMta) -> None:
    task = both.add_task(owner=ALICE)
    alone = both.request(task)
    status, refused = post(both, "/v1/requests", {"task_id": task, "owners": [ALICE, BOB], "approvals": "all"})
    assert status == 409, refused
    assert refused["error"]["message"] == (
        f"task {task} has 1 request(s) outside any approval group that may still decide it alone"
        f" ({alone['request_id']}): revoke them first, then ask the group"
    )

    both.cli("revoke", alone["request_id"])
    ask(both, task, [ALICE, BOB], "all")


def test_two_groups_asked_for_at_the_same_moment_one_is_made_the_other_refused(both: RcMta) -> None:
    task = both.add_task(owner=ALICE)
    groups = ({"owners": [ALICE, BOB], "approvals": "all"}, {"owners": [CAROL, DAVE], "approvals": "all"})
    outcomes = all_at_once(2, lambda i: post(both, "/v1/requests", {"task_id": task, **groups[i]}))
    assert sorted(status for status, _ in outcomes) == [201, 409], outcomes
    made = next(body for status, body in outcomes if status == 201)
    refused = next(body for status, body in outcomes if status == 409)
    assert refused["error"]["message"].startswith(
        f"task {task} is decided by approval group {made['approval_group']} (2 must approve, 0 did so far)"
    ), refused

    store = Store(str(both.settings["store"]["url"]))
    try:
        assert sum(store.outbound_summary().counts.values()) == 2  # the made group's two mails, no more
    finally:
        store.close()
    sent = {r["owner"]: r for r in made["requests"]}
    first, second = sorted(sent)
    assert "1 of the 2" in answer(both, sent, first).text
    assert answer(both, sent, second).code == 250
    assert both.task(task)["status"] == "completed"


MAIL = b"Subject: t\r\n\r\nt\r\n"


def asked(task_id: str, owner: str, now: float) -> Request:
    return Request(new_request_id(), task_id, owner, "Approve deploy to prod", now, now + 3600, None, None)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_of_two_groups_that_passed_the_early_look_the_store_writes_one(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two instances (a store each) make a group for one task at the same moment: both pass
    the early look, before either request is written; the store writes one, refuses the other
    with nothing written, and the group written decides the task."""
    url = f"sqlite:///{tmp_path / 'store.db'}" if kind == "sqlite" else request.getfixturevalue("pg_url")
    stores = [Store(url, busy_timeout=5) for _ in range(2)]
    try:
        stores[0].create_schema()
        now = time.time()
        task = stores[0].add_task("Approve deploy to prod", ALICE, now).id
        groups = [store.add_approval_group(task, 2, now) for store in stores]
        made = [asked(task, owner, now) for owner in (ALICE, BOB)]
        for store, group, one in zip(stores, groups, made, strict=True):
            found, known = store.task_approvals(task, now), store.approval_group(group)
            approval_rule(task, one.owner, group, found, known, new_group=False)  # both pass it

        def write(i: int) -> ApprovalConflict | None:
            try:
                stores[i].add_request_with_mail(made[i], MAIL, "rc@x", now, "i", 60, approvals=ApprovalCheck(groups[i]))
            except ApprovalConflict as exc:
                return exc
            return None

        if kind == "sqlite":
            # Both writers come while another connection holds the write lock, and go on when
            # it is let go: without the lock taken before the rule is read, both would pass.
            with ThreadPoolExecutor(1) as pool:
                with store_write_locked(tmp_path / "store.db"):
                    racing = pool.submit(all_at_once, 2, write)
                    time.sleep(0.5)  # for both to be waiting; shorter only makes the test weaker
                outcomes = racing.result()
        else:
            outcomes = all_at_once(2, write)
        assert sorted(o is None for o in outcomes) == [False, True], outcomes
        won = outcomes.index(None)
        lost = 1 - won
        assert str(outcomes[lost]).startswith(
            f"task {task} is decided by approval group {groups[won]} (2 must approve, 0 did so far), and another group"
            " would decide past its rule"
        )
        assert stores[0].get_request(made[lost].id) is None and stores[0].get_outbound(made[lost].id) is None
        unasked = stores[0].approval_group(groups[lost])
        assert unasked is not None and unasked[1] == frozenset()  # no one asked in the group refused

        # The group written decides: a second person asked in it, then both approve.
        carol = asked(task, CAROL, now)
        stores[lost].add_request_with_mail(carol, MAIL, "rc@x", now, "me", 60, approvals=ApprovalCheck(groups[won]))
        assert stores[0].count_approval(groups[won], made[won].id, made[won].owner, now) == 1
        assert stores[1].count_approval(groups[won], carol.id, CAROL, now) == 2
        decided = stores[0].approval_group(groups[won])
        assert decided is not None and decided[0].decision == "complete"
    finally:
        for store in stores:
            store.close()


def test_the_person_is_added_to_the_group_under_its_rule(api: RcMta) -> None:
    task = api.add_task(owner=ALICE)
    status, body = post(api, "/v1/requests", {"task_id": task, "owners": [ALICE, BOB], "approvals": "all"})
    assert status == 201, body
    group = body["approval_group"]
    sent = {r["owner"]: r for r in body["requests"]}

    added = api.cli_json("request", task, "--owner", DAVE, "--approval-group", group)
    status, joined = post(api, "/v1/requests", {"task_id": task, "owners": [CAROL], "approval_group": group})
    assert status == 201 and (joined["approvals_needed"], joined["approval_group"]) == (2, group), joined
    sent[DAVE], sent[CAROL] = added, joined["requests"][0]

    # One person is asked once in a group: twice, their one approval could count twice.
    line = refused_cli(api, "request", task, "--owner", ALICE, "--approval-group", group)
    assert line.endswith(
        f"{ALICE} is already asked in approval group {group}: one person's approval counts once;"
        " revoke their request first to ask them again"
    )
    other = api.add_task(owner=ALICE)
    status, refused = post(api, "/v1/requests", {"task_id": other, "owner": DAVE, "approval_group": group})
    assert (status, refused["error"]["details"][0]["field"]) == (404, "approval_group"), refused

    assert "1 of the 2" in answer(api, sent, DAVE).text
    assert answer(api, sent, CAROL).code == 250
    shown = api.task(task)
    assert (shown["status"], shown["acted_by"]) == ("completed", CAROL)
    assert shown["comments"][-1]["text"].endswith(f"Approved by {DAVE}, {CAROL}")
    late = answer(api, sent, ALICE)
    assert (late.code, late.enhanced) == (550, "5.7.1")


def test_people_added_together_are_each_checked_before_anyone_is_asked(api: RcMta, tmp_path: Path) -> None:
    """Carol and Alice added to a group Alice is asked in already: refused before Carol is
    mailed, so she gets no request that is withdrawn at once."""
    task = api.add_task(owner=ALICE)
    status, body = post(api, "/v1/requests", {"task_id": task, "owners": [ALICE, BOB], "approvals": "all"})
    assert status == 201, body
    group = body["approval_group"]
    outbox = tmp_path / "outbox"
    mailed = sorted(p.name for p in outbox.glob("*.eml"))
    assert mailed == sorted(f"{r['request_id']}.eml" for r in body["requests"])

    status, refused = post(api, "/v1/requests", {"task_id": task, "owners": [CAROL, ALICE], "approval_group": group})
    assert status == 409, refused
    assert refused["error"]["message"].startswith(f"{ALICE} is already asked in approval group {group}")
    assert sorted(p.name for p in outbox.glob("*.eml")) == mailed  # the send is done before the answer
    store = Store(str(api.settings["store"]["url"]))
    try:
        with store.engine.connect() as conn:
            owners = conn.execute(select(requests.c.owner).where(requests.c.task_id == task)).scalars().all()
    finally:
        store.close()
    assert sorted(owners) == [ALICE, BOB]  # no request for Carol, not even a withdrawn one

    status, joined = post(api, "/v1/requests", {"task_id": task, "owners": [CAROL], "approval_group": group})
    assert status == 201, joined
    assert (outbox / f"{joined['requests'][0]['request_id']}.eml").exists()


def test_once_the_groups_requests_are_withdrawn_a_request_alone_decides(both: RcMta) -> None:
    task = both.add_task(owner=ALICE)
    sent = ask(both, task, [ALICE, BOB, CAROL], 2)
    assert "1 of the 2" in answer(both, sent, ALICE).text  # answered: it can no longer be withdrawn
    refused_cli(both, "request", task, "--owner", DAVE)
    for owner in (BOB, CAROL):
        both.cli("revoke", sent[owner]["request_id"])

    alone = both.cli_json("request", task, "--owner", DAVE)
    acted = send_smtp(
        both.smtp_port,
        reply_message(alone["complete_address"], "Ship it", sender=DAVE),
        alone["complete_address"],
        mail_from=DAVE,
    )
    assert acted.code == 250 and acted.text.endswith(R.TASK_ACTED.with_text(task_id=task, action_past="completed").text)
    assert (both.task(task)["status"], both.task(task)["acted_by"]) == ("completed", DAVE)


def write_older_group(server: RcMta, task_id: str, owners: list[str], needed: int) -> None:
    """A group beside a request alone, as a version before the rule let them be made: its
    member requests written straight into the store (no mail needed: they are only there)."""
    store = Store(str(server.settings["store"]["url"]))
    try:
        now = time.time()
        group = store.add_approval_group(task_id, needed, now)
        for owner in owners:
            request = Request(new_request_id(), task_id, owner, "Approve deploy to prod", now, now + 3600, None, None)
            store.add_approval_member(request.id, group)
            store.add_request(request)
    finally:
        store.close()


def diagnose(server: RcMta, tmp_path: Path, message: Any, sender: str) -> dict[str, Any]:
    saved = tmp_path / f"reply-{time.monotonic_ns()}.eml"
    saved.write_bytes(message.as_bytes(policy=email.policy.SMTP))
    args = ["--client-ip", "127.0.0.1", "--helo", "mail.example.com", "--mail-from", sender]
    report: dict[str, Any] = json.loads(server.cli("diagnose", "--json", *args, str(saved)).stdout)
    return report


def test_an_older_request_outside_the_group_cannot_decide_alone(both: RcMta, tmp_path: Path) -> None:
    task = both.add_task(owner=ALICE)
    alone = both.request(task)
    write_older_group(both, task, [BOB, CAROL], 2)
    for address in (alone["complete_address"], alone["fail_address"]):
        message = reply_message(address, "As discussed", sender=ALICE)  # words that fit either button
        predicted = diagnose(both, tmp_path, message, ALICE)
        refused = send_smtp(both.smtp_port, message, address, mail_from=ALICE)

        assert (refused.code, refused.enhanced) == (550, "5.7.1")
        assert refused.text.endswith(R.NOT_IN_APPROVAL_GROUP.with_text(task_id=task, needed=2).text)
        assert predicted["smtp_reply"] == f"{refused.code} {refused.text}" and predicted["would"] == "refuse"
    assert both.task(task)["status"] == "in_progress"
    assert both.cli_json("request", "show", alone["request_id"])["state"] == "sent"


def test_diagnose_of_each_members_answer_says_what_the_server_answers(api: RcMta, tmp_path: Path) -> None:
    task = api.add_task(owner=ALICE)
    sent = ask(api, task, [ALICE, BOB, CAROL], 2)
    expected = [
        (ALICE, "approve", R.APPROVAL_RECORDED.with_text(task_id=task, count=1, needed=2)),
        (BOB, "complete", R.TASK_ACTED.with_text(task_id=task, action_past="completed")),
        (CAROL, "refuse", R.DECISION_MADE.with_text(task_id=task, action_past="completed", by=f"{ALICE}, {BOB}")),
    ]
    for owner, would, reply in expected:
        address = sent[owner]["complete_address"]
        message = reply_message(address, "Approved", sender=owner)
        predicted = diagnose(api, tmp_path, message, owner)
        told = send_smtp(api.smtp_port, message, address, mail_from=owner)

        assert predicted["smtp_reply"] == f"{told.code} {told.text}" == str(reply), (owner, predicted)
        assert predicted["would"] == would
        assert predicted["action"] == (None if would == "refuse" else "complete")
    assert api.task(task)["status"] == "completed"


def test_an_answer_outside_a_group_whose_decision_is_being_told_waits_rather_than_bounces() -> None:
    # The group may still decide (it is told to the backend now, and taken back if that
    # fails): a doubt that lasts seconds is a 4xx, and only a group that may still decide
    # for itself refuses the answer for good.
    from rc_mta.errors import DecisionPending, NotInApprovalGroup
    from rc_mta.pipeline import _group_refusal
    from rc_mta.store import ApprovalGroup, ApprovalStanding, GroupState

    lone = Request(new_request_id(), "CHANGE-11", ALICE, "Approve", 0.0, 3600.0, None, None)

    def blocking(state: GroupState) -> ApprovalStanding:
        group = ApprovalGroup("g-1", "CHANGE-11", 1, 1 if state is GroupState.DECIDING else 0, 0.0, None, None, None)
        if state is GroupState.DECIDING:
            group = replace(group, decided_at=1.0, decision="complete", decided_by=BOB, decided_request="r-bob")
        return ApprovalStanding(None, blocking=replace(group, state=state))

    deciding = _group_refusal(lone, blocking(GroupState.DECIDING))
    open_group = _group_refusal(lone, blocking(GroupState.OPEN))

    assert isinstance(deciding, DecisionPending) and R.reply_for(deciding).code == 451
    assert isinstance(open_group, NotInApprovalGroup) and R.reply_for(open_group).code == 550
