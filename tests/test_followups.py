"""Reminders and expiry: a request nobody answers is mailed again in its thread after the
configured delays, and when it expires the backend is told (a comment on the embedded or
Release task, an ``expired`` event to the webhook). Real rc-mta processes throughout."""

from __future__ import annotations

import email
import email.policy
import smtplib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import RcMta, make_rc_mta, wait_until
from mailclient import reply_message, send_smtp
from release_server import FakeRelease
from test_approvals import TOKEN as API_TOKEN
from test_approvals import answer, ask, claim_taken_earlier
from test_webhook_backend import all_earlier
from webhook_receiver import WebhookReceiver

from rc_mta.store import STALE_CLAIM_SECONDS, ClaimOutcome, Store, new_attempt_id

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
DAVE = "dave@example.com"
TASK = "Applications/Folder1/Release1/Phase1/Task1"
TASK2 = "Applications/Folder1/Release1/Phase1/Task2"
TOKEN = "release-personal-token-0123"


def following_up(workdir: Path, *, reminders: list[str], ttl: str = "1d") -> RcMta:
    server = make_rc_mta(workdir)
    server.settings["signing"]["request_ttl"] = ttl
    server.settings["requests"] = {"reminders": reminders, "followup_interval": "0.2s"}
    return server


@pytest.fixture
def reminding(tmp_path: Path) -> Iterator[RcMta]:
    server = following_up(tmp_path, reminders=["1s", "2s"])
    server.start()
    yield server
    server.stop()


def outbox_mail(server: RcMta, name: str) -> EmailMessage | None:
    path = server.workdir / "outbox" / f"{name}.eml"
    if not path.exists():
        return None
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def wait_for_mail(server: RcMta, name: str) -> EmailMessage:
    found: EmailMessage = wait_until(lambda: outbox_mail(server, name), what=f"{name}.eml in the outbox")
    return found


def test_reminders_go_out_in_the_requests_thread_with_the_same_addresses(reminding: RcMta) -> None:
    task = reminding.add_task()
    sent = reminding.request(task)
    first = wait_for_mail(reminding, f"{sent['request_id']}-reminder-1")
    second = wait_for_mail(reminding, f"{sent['request_id']}-reminder-2")
    for n, reminder in enumerate((first, second), 1):
        assert reminder["To"] == ALICE
        assert reminder["Subject"] == "Reminder: Action needed: Approve deploy to prod"
        assert reminder["In-Reply-To"] == sent["message_id"]
        # The request's thread id first (it passes a relay that replaces Message-IDs), then the request.
        assert reminder["References"].split() == [f"<thread.{sent['message_id'][1:]}", sent["message_id"]]
        assert reminder["Message-ID"] != sent["message_id"]
        assert reminder["Reply-To"] == sent["reply_to"]
        body = reminder.get_body(("plain",))
        assert body is not None and sent["complete_address"] in body.get_content(), n
    address = sent["complete_address"]
    outcome = send_smtp(reminding.smtp_port, reply_message(address, "Done"), address)
    assert outcome.code == 250, outcome
    assert reminding.task(task)["status"] == "completed"


def test_an_answered_request_gets_no_reminder(tmp_path: Path) -> None:
    server = following_up(tmp_path, reminders=["6s"])  # time to answer before the reminder is due
    server.start()
    try:
        answered = server.request(server.add_task())
        address = answered["complete_address"]
        assert send_smtp(server.smtp_port, reply_message(address, "Done"), address).code == 250
        later = server.request(server.add_task())
        wait_for_mail(server, f"{later['request_id']}-reminder-1")  # the answered one's delay passed earlier
        assert outbox_mail(server, f"{answered['request_id']}-reminder-1") is None
    finally:
        server.stop()


def test_expiry_is_noted_on_the_embedded_task_and_a_late_reply_is_told_it_expired(tmp_path: Path) -> None:
    server = following_up(tmp_path, reminders=[], ttl="1s")
    server.start()
    try:
        task = server.add_task()
        request = server.request(task)
        address = request["complete_address"]
        comments = wait_until(lambda: server.task(task)["comments"], what="the expiry noted on the task")
        assert [c["author"] for c in comments] == ["rc-mta"]
        assert comments[0]["text"].startswith(f"The email request to {ALICE} expired unanswered at ")
        assert comments[0]["text"].endswith(f"; rc-mta sends no more reminders (request {request['request_id']}).")
        outcome = send_smtp(server.smtp_port, reply_message(address, "Done"), address)
        assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
        assert "This completion request expired at " in outcome.text
        assert server.task(task)["status"] == "in_progress"
    finally:
        server.stop()


def expiring_on(tmp_path: Path, release: FakeRelease) -> RcMta:
    """A server whose requests expire after a second, noted on ``release``'s task ``TASK``
    (Alice's), and noted again (if need be) after 1s, then 2s."""
    release.add_task(TASK, owner="alice")
    server = following_up(tmp_path, reminders=[], ttl="1s")
    server.settings["tasks"] = {"backend": "release", "release": {"url": release.url, "token": TOKEN, "timeout": "2s"}}
    server.settings["outbound"].update(retry_min="1s", retry_max="2s")
    return server


def test_expiry_is_a_comment_on_the_release_task(tmp_path: Path) -> None:
    release = FakeRelease(token=TOKEN).start()
    server = expiring_on(tmp_path, release)
    try:
        server.start()
        sent = server.cli_json("request", TASK, "--owner", ALICE)
        comments: list[dict[str, Any]] = wait_until(lambda: release.comments(TASK), what="a comment in Release")
        assert comments[0]["text"].startswith(f"The email request to {ALICE} expired unanswered at ")
        assert comments[0]["text"].endswith(f"(request {sent['request_id']}).")
        assert release.status(TASK) == "IN_PROGRESS" and not release.calls
    finally:
        server.stop()
        release.stop()


def test_an_expiry_comment_whose_answer_was_lost_is_told_on_the_retry_without_saying_it_twice(
    tmp_path: Path,
) -> None:
    """Release adds the expiry comment and the connection drops before it answers: the notice
    is kept and tried again with back-off, and that try finds the comment on the task and
    counts it told, so the people in Release read it once."""
    release = FakeRelease(token=TOKEN, lost_comment_answers=["drop"]).start()
    server = expiring_on(tmp_path, release)
    try:
        server.start()
        request_id = server.cli_json("request", TASK, "--owner", ALICE)["request_id"]
        store = Store(server.settings["store"]["url"])
        try:
            told = wait_until(
                lambda: (n := store.get_notice(request_id, "expired")) is not None and n.state == "told" and n,
                what="the expiry told",
            )
        finally:
            store.close()
        assert told.attempts == 2
        assert logged(server, f"could not tell the backend that request {request_id} expired unanswered (Backend")
        comments = [c["text"] for c in release.comments(TASK)]
        assert len(comments) == 1 and comments[0].startswith(f"The email request to {ALICE} expired unanswered at ")
        assert release.calls_by("token-user", "POST", f"/api/v1/tasks/{TASK}/comment") == 1
    finally:
        server.stop()
        release.stop()


def test_expiry_is_an_expired_event_to_the_webhook(tmp_path: Path) -> None:
    receiver = WebhookReceiver().start()
    server = following_up(tmp_path, reminders=[], ttl="1s")
    server.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    try:
        server.start()
        sent = server.cli_json("request", "ticket-42", "--owner", ALICE)
        payloads = wait_until(lambda: receiver.payloads, what="an expired event")
        assert len(payloads) == 1 and not receiver.rejected
        event = payloads[0]
        assert (event["event"], event["task_id"], event["owner"], event["request_id"]) == (
            "expired",
            "ticket-42",
            ALICE,
            sent["request_id"],
        )
        assert "action" not in event
    finally:
        server.stop()
        receiver.stop()


def expiring_to(tmp_path: Path, receiver: WebhookReceiver) -> RcMta:
    """A server whose requests expire after a second, told to ``receiver``'s webhook, and
    told again (if need be) after 1s, then 2s."""
    server = following_up(tmp_path, reminders=[], ttl="1s")
    server.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    server.settings["outbound"].update(retry_min="1s", retry_max="2s")
    return server


def test_an_expired_event_the_webhook_refuses_with_a_4xx_is_its_answer_logged_once_not_posted_again(
    tmp_path: Path,
) -> None:
    """As request_failed is: a 4xx (other than "try again later") is the receiver's final
    answer, not a receiver that is down: one POST, one warning, and the notice is settled."""
    receiver = WebhookReceiver(answer=(410, {"detail": "no such workflow"})).start()
    server = expiring_to(tmp_path, receiver)
    try:
        server.start()
        request_id = server.cli_json("request", "ticket-44", "--owner", ALICE)["request_id"]
        store = Store(server.settings["store"]["url"])
        try:
            settled = wait_until(
                lambda: (n := store.get_notice(request_id, "expired")) and (n.state != "pending" or n.attempts >= 2),
                what="the expired event settled, or tried again",
            )
            notice = store.get_notice(request_id, "expired")
        finally:
            store.close()
        assert settled and notice is not None
        assert (notice.state, notice.attempts, len(receiver.payloads)) == ("told", 1, 1), notice
        refused = f"webhook answered HTTP 410 to the expired event of request {request_id}, for good: no such workflow"
        assert server.log_path.read_text(errors="replace").count(refused) == 1
        assert not logged(server, f"could not tell the backend that request {request_id}")
    finally:
        server.stop()
        receiver.stop()


def test_an_expired_event_the_webhook_cannot_take_is_kept_and_posted_again_with_back_off(tmp_path: Path) -> None:
    """As request_failed is: recorded with the step, tried at once, then again with the
    outbound queue's back-off (not every round) until the receiver takes it, once."""
    receiver = WebhookReceiver(answer=(503, {"detail": "maintenance"}))
    receiver.start()
    server = expiring_to(tmp_path, receiver)
    try:
        server.start()
        sent = server.cli_json("request", "ticket-43", "--owner", ALICE)
        request_id = sent["request_id"]
        store = Store(server.settings["store"]["url"])
        try:
            kept = wait_until(
                lambda: (n := store.get_notice(request_id, "expired")) is not None and n.attempts >= 2 and n,
                what="the expired event tried again",
            )
            assert kept.state == "pending" and "HTTP 503" in (kept.last_error or "")
            assert logged(server, f"could not tell the backend that request {request_id} expired unanswered")
            assert logged(server, "next try in 2s")  # the back-off doubled: 1s, then 2s
            assert followup_state(server, request_id, "expired") == "done"  # the step, once

            receiver.answer = None
            wait_until(lambda: (n := store.get_notice(request_id, "expired")) and n.state == "told", what="told")
            tries = len(receiver.payloads)
            told = store.get_notice(request_id, "expired")
        finally:
            store.close()
        assert told is not None and told.attempts == tries  # one POST per attempt, none after it was told
        assert all(p["event"] == "expired" and p["request_id"] == request_id for p in receiver.payloads)
        assert logged(server, f"backend told that request {request_id} to {ALICE} expired unanswered")
    finally:
        server.stop()
        receiver.stop()


def followup_state(server: RcMta, request_id: str, step: str) -> str | None:
    """What the store recorded for one follow-up step (None: not taken yet)."""
    store = Store(server.settings["store"]["url"])
    try:
        return store.followup_state(request_id, step)
    finally:
        store.close()


def logged(server: RcMta, text: str) -> bool:
    return text in server.log_path.read_text(errors="replace")


def answered_by_bob(server: RcMta, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Requests for ``task`` to Alice and to Bob, and Bob's answer (Complete) to his."""
    alice = server.cli_json("request", task, "--owner", ALICE)
    bob = server.cli_json("request", task, "--owner", BOB)
    address = bob["complete_address"]
    outcome = send_smtp(server.smtp_port, reply_message(address, "Done", sender=BOB), address, mail_from=BOB)
    assert outcome.code == 250, outcome
    return alice, bob


def test_no_reminder_for_a_task_another_owners_request_completed(tmp_path: Path) -> None:
    # First no reminders at all, while Bob answers; then reminders due at once for both.
    server = following_up(tmp_path, reminders=[])
    try:
        server.start()
        task = server.add_task()
        alice, bob = answered_by_bob(server, task)
        assert server.task(task)["status"] == "completed"
        server.stop()
        server.settings["requests"]["reminders"] = ["1s"]
        server.start()

        line = f"request {alice['request_id']}: reminder-1 withdrawn, nothing sent: task {task} is completed by {BOB}"
        wait_until(lambda: logged(server, line), what="the reminder withdrawn")
        assert followup_state(server, alice["request_id"], "reminder-1") == "withdrawn"  # never tried again
        assert outbox_mail(server, f"{alice['request_id']}-reminder-1") is None
        assert followup_state(server, bob["request_id"], "reminder-1") is None  # answered: never due
    finally:
        server.stop()


def test_webhook_task_decided_by_a_sibling_request_gets_no_reminder_and_no_expired_event(tmp_path: Path) -> None:
    """The webhook cannot be asked about a task: rc-mta's own record of Bob's answer tells."""
    receiver = WebhookReceiver().start()
    server = following_up(tmp_path, reminders=[], ttl="15s")
    server.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    try:
        server.start()
        alice, _ = answered_by_bob(server, "ticket-7")
        [action] = receiver.payloads
        assert (action["action"], action["actor"]) == ("complete", BOB)
        server.stop()
        server.settings["requests"]["reminders"] = ["1s"]
        server.start()

        why = f"task ticket-7 was completed by {BOB}"
        request_id = alice["request_id"]
        wait_until(lambda: logged(server, f"request {request_id}: reminder-1 withdrawn, nothing sent: {why}"))
        wait_until(
            lambda: logged(server, f"request {request_id}: expired withdrawn, nothing sent: {why}"),
            timeout=30,
            what="the expiry notice withdrawn",
        )
        assert followup_state(server, request_id, "expired") == "withdrawn"
        assert receiver.payloads == [action]  # no expired event
        assert outbox_mail(server, f"{request_id}-reminder-1") is None
    finally:
        server.stop()
        receiver.stop()


def _group_on_webhook(tmp_path: Path, receiver: WebhookReceiver) -> RcMta:
    """An rc-mta (not started) whose API asks groups, acting through ``receiver``; no reminders yet."""
    server = following_up(tmp_path, reminders=[])
    server.settings["http"]["api_tokens"] = [API_TOKEN]
    server.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    return server


def test_a_webhook_group_failed_by_one_withdraws_reminders_saying_who_failed_it(tmp_path: Path) -> None:
    """What decided is the group: Alice approved, then Dave failed it; Carol's reminder is
    withdrawn saying Dave failed it, not that Alice's approval completed it."""
    receiver = WebhookReceiver().start()
    server = _group_on_webhook(tmp_path, receiver)
    try:
        server.start()
        sent = ask(server, "CHANGE-5", [ALICE, DAVE, CAROL], 2)
        assert "1 of the 2" in answer(server, sent, ALICE).text
        assert answer(server, sent, DAVE, "fail").code == 250
        server.stop()
        server.settings["requests"]["reminders"] = ["1s"]
        server.start()

        carols, daves = sent[CAROL]["request_id"], sent[DAVE]["request_id"]
        why = f"task CHANGE-5 was failed by {DAVE} (request {daves})"
        line = f"request {carols}: reminder-1 withdrawn, nothing sent: {why}"
        wait_until(lambda: logged(server, line), what="Carol's reminder withdrawn")
        assert followup_state(server, carols, "reminder-1") == "withdrawn"
        assert not logged(server, f"was completed by {ALICE}")
    finally:
        server.stop()
        receiver.stop()


def test_a_group_decision_not_yet_told_defers_a_reminder_and_one_whose_attempt_died_withdraws_it(
    tmp_path: Path,
) -> None:
    """Bob's approval decides 2 of 3 and the instance dies while telling the webhook. Carol's
    reminder is due: while Bob's decision may still be told (his claim is young) it waits,
    neither sent nor withdrawn; once his attempt is taken for dead, whether it acted is
    unknown (the webhook cannot be asked), as for a lone answer's: nothing more is mailed
    to Carol, an operator is warned, and her answer waits (451) rather than decide beside
    it. Bob's sender's retry decides, with his request id."""
    gate = threading.Event()
    receiver = WebhookReceiver(gate=gate).start()
    server = _group_on_webhook(tmp_path, receiver)
    try:
        server.start()
        sent = ask(server, "CHANGE-4", [ALICE, BOB, CAROL], 2)
        assert answer(server, sent, ALICE).code == 250  # 1 of 2
        with ThreadPoolExecutor(1) as pool:
            bobs = pool.submit(answer, server, sent, BOB)
            wait_until(lambda: len(receiver.payloads) == 1, what="Bob's deciding POST under way")
            assert server.proc is not None
            server.proc.kill()  # the instance dies mid-action
            server.proc.wait()
            assert isinstance(bobs.exception(), (smtplib.SMTPException, OSError))
        gate.set()
        server.settings["requests"]["reminders"] = ["1s"]
        server.start()

        carols = sent[CAROL]["request_id"]
        waits = f"follow-up reminder-1 of request {carols} left for the next round: DecisionPending: task CHANGE-4"
        wait_until(lambda: logged(server, waits), what="Carol's reminder deferred")
        assert followup_state(server, carols, "reminder-1") is None  # not withdrawn
        assert outbox_mail(server, f"{carols}-reminder-1") is None

        bobs = sent[BOB]["request_id"]
        claim_taken_earlier(server, bobs, STALE_CLAIM_SECONDS + 1)
        interrupted = f"the answer to request {bobs} of the same task was interrupted (complete by {ALICE}, {BOB},"
        withdrawn = f"request {carols}: reminder-1 withdrawn, nothing sent: {interrupted}"
        wait_until(lambda: logged(server, withdrawn), what="Carol's reminder withdrawn")
        assert followup_state(server, carols, "reminder-1") == "withdrawn"
        assert outbox_mail(server, f"{carols}-reminder-1") is None
        warned = [line for line in server.log_path.read_text().splitlines() if " WARNING " in line]
        assert any(carols in line and "task CHANGE-4" in line and interrupted in line for line in warned), warned

        waiting = answer(server, sent, CAROL, "fail")
        assert (waiting.code, waiting.enhanced) == (451, "4.3.0") and f"(request {bobs})" in waiting.text, waiting
        assert not logged(server, "is taken back")
        settled = answer(server, sent, BOB)  # Bob's sender tries again: his dead claim is taken over
        assert settled.code == 250 and "CHANGE-4 completed" in settled.text, settled
        late = answer(server, sent, CAROL, "fail")
        assert (late.code, late.enhanced) == (550, "5.7.1") and "already made: completed by" in late.text, late
        assert [(p["action"], p["request_id"]) for p in receiver.payloads] == [("complete", bobs)] * 2
    finally:
        gate.set()
        server.stop()
        receiver.stop()


# A follow-up step, and the reminders and request_ttl that make it due for a request sent
# before rc-mta serves: the reminder's delay passed (a day to live), or the request expired.
_STEPS: dict[str, tuple[list[str], str]] = {"reminder-1": (["1s"], "1d"), "expired": ([], "1s")}


def claim_left_by_a_dead_attempt(server: RcMta, request_id: str, age: float, actor: str = ALICE) -> None:
    """What the store holds when an answer's attempt died mid-action ``age`` seconds ago:
    its claim on the request, pending, never finished nor given back."""
    store = Store(server.settings["store"]["url"])
    try:
        taken = time.time() - age
        outcome, _ = store.claim(
            request_id, new_attempt_id(), "<died@example.com>", "complete", actor, taken, STALE_CLAIM_SECONDS
        )
    finally:
        store.close()
    assert outcome is ClaimOutcome.OURS


def followed_up(server: RcMta, step: str, task: str, request_id: str) -> bool:
    """Whether ``step`` reached the owner or the embedded task: the reminder mailed, the
    expiry noted on the task."""
    if step == "expired":
        noted = f"The email request to {ALICE} expired unanswered at "
        return any(c["text"].startswith(noted) for c in server.task(task)["comments"])
    return outbox_mail(server, f"{request_id}-{step}") is not None


@pytest.mark.parametrize("step", list(_STEPS))
def test_an_answer_whose_attempt_died_holds_the_follow_ups_back_only_until_its_claim_is_dead(
    tmp_path: Path, step: str
) -> None:
    """Two answers' attempts died mid-action, one just now, one longer ago than a claim
    lives. The young claim may still be at work: its request's step waits (neither sent nor
    withdrawn). The dead one's task is still in progress, so its action never happened:
    the reminder goes (and an answer to it takes the dead claim over), the expiry is told.
    Once the young claim is dead too, its step goes as well."""
    reminders, ttl = _STEPS[step]
    server = following_up(tmp_path, reminders=reminders, ttl=ttl)
    server.write_config()
    young_task, dead_task = server.add_task(), server.add_task()
    young = server.request(young_task)["request_id"]  # the older request: due first in each round
    dead = server.request(dead_task)
    claim_left_by_a_dead_attempt(server, young, 0)
    claim_left_by_a_dead_attempt(server, dead["request_id"], STALE_CLAIM_SECONDS + 60)
    try:
        server.start()

        wait_until(
            lambda: followed_up(server, step, dead_task, dead["request_id"]),
            what=f"the {step} of the dead claim's request",
        )
        assert followup_state(server, dead["request_id"], step) == "done"
        assert server.task(dead_task)["status"] == "in_progress"
        assert followup_state(server, young, step) is None  # waits: not done, not withdrawn
        assert not followed_up(server, step, young_task, young)

        claim_taken_earlier(server, young, STALE_CLAIM_SECONDS + 1)
        wait_until(lambda: followed_up(server, step, young_task, young), what=f"the {step} once the claim is dead")
        assert followup_state(server, young, step) == "done"

        if step == "reminder-1":
            address = dead["complete_address"]
            outcome = send_smtp(server.smtp_port, reply_message(address, "Done"), address)
            assert outcome.code == 250, outcome
            assert server.task(dead_task)["status"] == "completed"
    finally:
        server.stop()


def webhook_due(tmp_path: Path, step: str, receiver: WebhookReceiver) -> RcMta:
    """An rc-mta (its config written, not started) acting through ``receiver``, for whose
    requests made now ``step`` is due at its first round."""
    reminders, ttl = _STEPS[step]
    server = following_up(tmp_path, reminders=reminders, ttl=ttl)
    server.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    server.write_config()
    return server


@pytest.mark.parametrize("step", list(_STEPS))
def test_a_webhook_answer_whose_attempt_died_withdraws_the_follow_ups_and_warns(tmp_path: Path, step: str) -> None:
    """The webhook cannot say whether a dead attempt's action reached it: nothing is
    guessed. The step is withdrawn (no reminder, no expired event) and an operator warned."""
    receiver = WebhookReceiver().start()
    server = webhook_due(tmp_path, step, receiver)
    try:
        request_id = server.cli_json("request", "ticket-9", "--owner", ALICE)["request_id"]
        claim_left_by_a_dead_attempt(server, request_id, STALE_CLAIM_SECONDS + 60)
        server.start()

        why = f"an answer's action was interrupted (complete by {ALICE}, claimed "
        wait_until(lambda: logged(server, f"request {request_id}: {step} withdrawn, nothing sent: {why}"))
        assert followup_state(server, request_id, step) == "withdrawn"
        warning = f"WARNING rc_mta.followups request {request_id}: {why}"
        lines = [line for line in server.log_path.read_text(errors="replace").splitlines() if warning in line]
        assert len(lines) == 1, lines
        assert (
            "and its outcome is unknown: the webhook backend cannot say whether task ticket-9 was acted on" in lines[0]
        )
        assert receiver.payloads == []
        assert outbox_mail(server, f"{request_id}-reminder-1") is None
    finally:
        server.stop()
        receiver.stop()


@pytest.mark.parametrize("step", list(_STEPS))
def test_a_webhook_request_waits_while_another_of_its_task_is_answered_and_is_withdrawn_if_that_died(
    tmp_path: Path, step: str
) -> None:
    """Bob's answer to his request of Alice's task is being acted on: Alice's step waits
    (neither sent nor withdrawn), as his action may yet land. Once his claim is dead,
    whether it acted is unknown and the webhook cannot be asked: nothing is guessed, her
    step is withdrawn (no reminder, no expired event) and an operator warned."""
    receiver = WebhookReceiver().start()
    server = webhook_due(tmp_path, step, receiver)
    try:
        alices = server.cli_json("request", "ticket-10", "--owner", ALICE)["request_id"]
        bobs = server.cli_json("request", "ticket-10", "--owner", BOB)["request_id"]
        claim_left_by_a_dead_attempt(server, bobs, 0, BOB)  # under way: young
        server.start()

        waits = f"follow-up {step} of request {alices} left for the next round: DecisionPending: task ticket-10"
        wait_until(lambda: logged(server, waits), what="Alice's step deferred")
        assert followup_state(server, alices, step) is None  # not withdrawn

        all_earlier(server, STALE_CLAIM_SECONDS + 1)
        why = f"the answer to request {bobs} of the same task was interrupted (complete by {BOB}, never finished)"
        wait_until(lambda: logged(server, f"request {alices}: {step} withdrawn, nothing sent: {why}"))
        assert followup_state(server, alices, step) == "withdrawn"
        warning = f"WARNING rc_mta.followups request {alices}: {why}"
        lines = [line for line in server.log_path.read_text(errors="replace").splitlines() if warning in line]
        assert len(lines) == 1 and "cannot say whether task ticket-10 was acted on" in lines[0], lines
        assert receiver.payloads == []
        assert outbox_mail(server, f"{alices}-reminder-1") is None
    finally:
        server.stop()
        receiver.stop()


def test_release_task_completed_in_the_ui_gets_no_reminder_and_release_down_defers_it(tmp_path: Path) -> None:
    release = FakeRelease(token=TOKEN).start()
    release.add_task(TASK, owner="alice")
    release.add_task(TASK2, owner="alice")
    server = following_up(tmp_path, reminders=["1s"])
    server.settings["tasks"] = {
        "backend": "release",
        "release": {"url": release.url, "token": TOKEN, "timeout": "2s", "retries": 0},
    }
    server.write_config()
    try:
        # Made before rc-mta serves: the reminders are due at its first round.
        done_in_ui = server.cli_json("request", TASK, "--owner", ALICE)
        still_open = server.cli_json("request", TASK2, "--owner", ALICE)
        release.set_status(TASK, "COMPLETED")
        release.go_down()
        server.start()

        # Release cannot tell: nothing is sent, nothing is withdrawn; the next round asks again.
        wait_until(lambda: logged(server, "reminder-1 of request") and logged(server, "left for the next round"))
        for sent in (done_in_ui, still_open):
            assert outbox_mail(server, f"{sent['request_id']}-reminder-1") is None
            assert followup_state(server, sent["request_id"], "reminder-1") is None

        release.come_back()
        wait_for_mail(server, f"{still_open['request_id']}-reminder-1")
        line = f"request {done_in_ui['request_id']}: reminder-1 withdrawn, nothing sent: task {TASK} is completed"
        wait_until(lambda: logged(server, line), what="the reminder of the completed task withdrawn")
        assert followup_state(server, done_in_ui["request_id"], "reminder-1") == "withdrawn"
        assert outbox_mail(server, f"{done_in_ui['request_id']}-reminder-1") is None
        assert followup_state(server, still_open["request_id"], "reminder-1") == "done"
    finally:
        server.stop()
        release.stop()
