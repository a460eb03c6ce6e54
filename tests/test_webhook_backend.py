"""The webhook backend: each action a signed JSON POST, checked by a receiver written as a
user would write one; end to end through a real rc-mta and real SMTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import RcMta, make_rc_mta, wait_until
from mailclient import reply_message, send_smtp
from pydantic import SecretStr
from racing import all_at_once
from silent_dns import run_where_names_hang
from sqlalchemy import update
from test_approvals import diagnose
from webhook_receiver import WebhookReceiver

from rc_mta import smtp_replies as R
from rc_mta.config import WebhookConfig
from rc_mta.errors import (
    BackendAuthFailed,
    BackendOutcomeUnknown,
    BackendRefused,
    BackendUnavailable,
    TemporaryFailure,
)
from rc_mta.store import STALE_CLAIM_SECONDS, Store, requests, used_tokens
from rc_mta.tasks import ActionContext, TaskNotInProgress
from rc_mta.tasks.webhook import WebhookBackend

TASK = "JIRA-1234"
ALICE = "alice@example.com"
CONTEXT = ActionContext("req-42", "<m42@example.com>", "smtp", {"spf": "pass", "owner": "pass"})


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def backend_for(receiver: WebhookReceiver, secret: str | None = None, timeout: float = 2.0) -> WebhookBackend:
    return WebhookBackend(WebhookConfig(url=receiver.url, secret=SecretStr(secret or receiver.secret), timeout=timeout))


def act(receiver: WebhookReceiver, action: str = "complete", secret: str | None = None, timeout: float = 2.0) -> None:
    backend = backend_for(receiver, secret, timeout)

    async def go() -> None:
        try:
            if action == "complete":
                await backend.complete(TASK, "Ship it", ALICE, CONTEXT)
            else:
                await backend.fail(TASK, "Broken", ALICE, CONTEXT)
        finally:
            await backend.close()

    asyncio.run(go())


def post_raw(receiver: WebhookReceiver, body: bytes, timestamp: str, signature: str) -> int:
    request = urllib.request.Request(
        receiver.url,
        data=body,
        headers={"X-RC-MTA-Timestamp": timestamp, "X-RC-MTA-Signature": signature},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# The signature -------------------------------------------------------------------------


def test_receiver_verifies_the_signature_and_gets_every_documented_field(receiver: WebhookReceiver) -> None:
    before = int(time.time())
    act(receiver)
    assert receiver.rejected == []
    (payload,) = receiver.payloads
    assert payload == {
        "task_id": TASK,
        "action": "complete",
        "comment": "Ship it",
        "actor": ALICE,
        "request_id": "req-42",
        "message_id": "<m42@example.com>",
        "source": "smtp",
        "verdicts": {"spf": "pass", "owner": "pass"},
        "sent_at": payload["sent_at"],
    }
    assert before <= payload["sent_at"] <= time.time()
    assert receiver.headers[0]["X-RC-MTA-Signature"].startswith("sha256=")


def test_fail_is_sent_as_action_fail(receiver: WebhookReceiver) -> None:
    act(receiver, "fail")
    assert (receiver.payloads[0]["action"], receiver.payloads[0]["comment"]) == ("fail", "Broken")


def test_receiver_refuses_a_tampered_body(receiver: WebhookReceiver) -> None:
    timestamp = str(int(time.time()))
    body = b'{"task_id":"JIRA-1234","action":"complete"}'
    good = "sha256=" + hmac.new(receiver.secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert post_raw(receiver, body, timestamp, good) == 200
    assert post_raw(receiver, body.replace(b"complete", b"fail"), timestamp, good) == 401
    assert receiver.rejected == ["bad signature"]


def test_receiver_refuses_a_replay_older_than_five_minutes(receiver: WebhookReceiver) -> None:
    old = str(int(time.time()) - 301)
    body = b"{}"
    signed = "sha256=" + hmac.new(receiver.secret.encode(), f"{old}.".encode() + body, hashlib.sha256).hexdigest()
    assert post_raw(receiver, body, old, signed) == 401
    assert receiver.rejected == ["stale timestamp"] and receiver.payloads == []


def test_wrong_secret_is_an_auth_failure_the_sender_retries(receiver: WebhookReceiver) -> None:
    with pytest.raises(BackendAuthFailed):
        act(receiver, secret="not-the-receivers-secret")
    assert receiver.rejected == ["bad signature"] and receiver.payloads == []


# The receiver's answers ----------------------------------------------------------------


def test_409_means_the_task_is_no_longer_in_progress_with_its_status(receiver: WebhookReceiver) -> None:
    receiver.answer = (409, {"status": "Completed", "acted_by": "bob@example.com"})
    with pytest.raises(TaskNotInProgress) as refused:
        act(receiver)
    assert (refused.value.task.status, refused.value.task.acted_by) == ("completed", "bob@example.com")


def test_409_with_only_a_detail_says_it_is_closed_and_why(receiver: WebhookReceiver) -> None:
    receiver.answer = (409, {"detail": "resolved in Jira"})
    with pytest.raises(TaskNotInProgress) as refused:
        act(receiver)
    assert refused.value.task.status == "closed (resolved in Jira)"


def test_422_refusal_carries_the_receivers_reason_on_one_short_line(receiver: WebhookReceiver) -> None:
    receiver.answer = (422, {"detail": "change freeze\nuntil Monday " + "x" * 300})
    with pytest.raises(BackendRefused) as refused:
        act(receiver)
    text = R.reply_for(refused.value).text
    assert text.startswith("The workflow system refused this action: change freeze until Monday x")
    assert "\n" not in text and len(text) <= len("The workflow system refused this action: ") + 200


def test_400_with_a_text_body_quotes_the_text(receiver: WebhookReceiver) -> None:
    receiver.answer = (400, "unknown task")
    with pytest.raises(BackendRefused) as refused:
        act(receiver)
    assert R.reply_for(refused.value).text.endswith("unknown task")


def test_500_and_an_unreachable_receiver_are_temporary(receiver: WebhookReceiver) -> None:
    receiver.answer = (500, {"error": "database down"})
    with pytest.raises(TemporaryFailure):
        act(receiver)
    receiver.stop()
    with pytest.raises(TemporaryFailure):
        act(receiver)


def test_a_connect_that_times_out_sent_nothing_but_a_post_left_unanswered_may_have_acted() -> None:
    """SYNs dropped without a word (a full accept queue here, a firewall in life): the POST
    never left, so nothing was done. A receiver that took the POST and never answered may
    have acted: the pipeline keeps an N-of-M decision for that one."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        port = hole.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # fills the queue: the next SYNs are dropped
            backend = WebhookBackend(
                WebhookConfig(url=f"http://127.0.0.1:{port}/hook", secret=SecretStr("s" * 16), timeout=2.0)
            )

            async def go() -> None:
                try:
                    await backend.complete(TASK, "Ship it", ALICE, CONTEXT)
                finally:
                    await backend.close()

            with pytest.raises(BackendUnavailable) as unsent:
                asyncio.run(go())
    assert not isinstance(unsent.value, BackendOutcomeUnknown), unsent.value
    assert "no connection within 1s" in str(unsent.value)

    gate = threading.Event()
    held = WebhookReceiver(gate=gate).start()
    try:
        with pytest.raises(BackendOutcomeUnknown):
            act(held, timeout=1.0)
        assert len(held.payloads) == 1  # it arrived
    finally:
        gate.set()
        held.stop()


def test_a_2xx_whose_body_trickles_in_is_done_at_once_not_a_post_that_may_have_acted() -> None:
    """The receiver answered 200 (it acted) and sends its body a byte a second: the status is
    its answer, so the action is done without waiting for the body. Waiting for it ran into
    the timeout and called the outcome unknown: 451, Alice's claim and doubt kept, and her
    sender's retry POSTed the same action again."""
    receiver = WebhookReceiver(trickle=1.0).start()
    try:
        started = time.monotonic()
        act(receiver, timeout=2.0)
        took = time.monotonic() - started
    finally:
        receiver.stop()
    assert len(receiver.payloads) == 1 and took < 1.5, took


# The receiver's name, in a process whose DNS never answers (silent_dns).
UNRESOLVED_POST = """
import asyncio, json, os, time
from pydantic import SecretStr
from rc_mta.config import WebhookConfig
from rc_mta.errors import BackendOutcomeUnknown
from rc_mta.tasks import ActionContext
from rc_mta.tasks.webhook import WebhookBackend

async def main():
    config = WebhookConfig(url="http://hooks.example.test/hook", secret=SecretStr("s" * 16), timeout=2.0)
    backend = WebhookBackend(config)
    started = time.monotonic()
    try:
        await backend.complete("JIRA-1234", "Ship it", "alice@example.com", ActionContext("req-42", "<m>", "smtp"))
        return {"raised": None}
    except Exception as exc:
        unknown = isinstance(exc, BackendOutcomeUnknown)
        return {"raised": type(exc).__name__, "unknown": unknown, "why": str(exc), "took": time.monotonic() - started}
    finally:
        await backend.close()

print(json.dumps(asyncio.new_event_loop().run_until_complete(main())), flush=True)
os._exit(0)  # not waiting for the resolver's thread
"""


def test_a_receiver_whose_name_never_resolves_was_sent_nothing(tmp_path: Path) -> None:
    """The receiver's DNS server takes the queries and never answers: no connection was made,
    so nothing was sent, and the POST is unavailable within connecting's own deadline (half
    the timeout), not 'may have acted' at the whole timeout, which would hold the task's
    other answers back and withdraw the request's follow-ups until this sender tried again."""
    outcome = run_where_names_hang(tmp_path, UNRESOLVED_POST)
    assert (outcome["raised"], outcome["unknown"]) == ("BackendUnavailable", False), outcome
    assert "no connection within 1s" in outcome["why"] and outcome["took"] < 1.8, outcome


# Notices: events that act on nothing --------------------------------------------------


def notify(receiver: WebhookReceiver, event: str) -> None:
    """Tell the receiver one notice: a request mail that failed, or a request that expired."""
    backend = backend_for(receiver)

    async def go() -> None:
        try:
            if event == "expired":
                await backend.expired(TASK, ALICE, "req-42", time.time())
            else:
                await backend.request_failed(TASK, "req-42", ALICE, "550 5.1.1 no such user")
        finally:
            await backend.close()

    asyncio.run(go())


@pytest.mark.parametrize("event", ["expired", "request_failed"])
def test_every_notice_takes_a_4xx_as_the_receivers_final_answer_and_retries_the_rest(
    receiver: WebhookReceiver, event: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One rule for both events: a 4xx says the receiver does not want it (logged once, not
    sent again); 5xx, 408, 429 and no answer at all say try again later."""
    caplog.set_level(logging.INFO, "rc_mta.tasks.webhook")
    for status in (404, 410, 422, 409):
        receiver.answer = (status, {"detail": f"no thanks {status}"})
        notify(receiver, event)  # taken: nothing raised
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m.split(": ")[-1] for m in warned] == ["no thanks 404", "no thanks 410", "no thanks 422"], warned
    assert all(f"to the {event} event of request req-42, for good" in m for m in warned)
    for status in (408, 429, 500, 503):
        receiver.answer = (status, {"detail": "later"})
        with pytest.raises(TemporaryFailure, match=f"HTTP {status} to the {event} event"):
            notify(receiver, event)
    receiver.stop()
    with pytest.raises(TemporaryFailure, match="cannot reach webhook"):
        notify(receiver, event)
    assert len(receiver.payloads) == 8 and {p["event"] for p in receiver.payloads} == {event}


def test_get_asks_no_one_and_check_only_knocks() -> None:
    backend = WebhookBackend(WebhookConfig(url="http://127.0.0.1:9/never", secret=SecretStr("s" * 16)))

    task = asyncio.run(backend.get(TASK))  # answers without asking anyone (port 9 would refuse)
    assert (task.id, task.title, task.owner, task.status) == (TASK, TASK, "", "in_progress")
    # check() only opens a connection (a POST could be taken for an action): port 9 refuses it.
    with pytest.raises(TemporaryFailure):
        asyncio.run(backend.check())


# End to end ----------------------------------------------------------------------------


@pytest.fixture
def rc_webhook(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[RcMta]:
    server = make_rc_mta(tmp_path)
    server.settings["tasks"] = {
        "backend": "webhook",
        "webhook": {"url": receiver.url, "secret": receiver.secret, "timeout": "2s"},
    }
    server.start()
    yield server
    server.stop()


def reply_to_request(server: RcMta, body: str = "Ship it") -> tuple[Any, str]:
    address = server.cli_json("request", TASK, "--owner", ALICE)["complete_address"]
    return send_smtp(server.smtp_port, reply_message(address, body), address), address


def test_reply_by_email_posts_a_signed_action_and_answers_250(rc_webhook: RcMta, receiver: WebhookReceiver) -> None:
    outcome, _ = reply_to_request(rc_webhook)
    assert outcome.code == 250, outcome
    assert receiver.rejected == []
    (payload,) = receiver.payloads
    assert (payload["task_id"], payload["action"], payload["comment"], payload["actor"]) == (
        TASK,
        "complete",
        "Ship it",
        ALICE,
    )
    assert payload["source"] == "smtp" and payload["message_id"]
    assert payload["verdicts"]["owner"] == "pass"  # the checks' results travel along


def test_receiver_refusing_with_422_bounces_with_its_reason(rc_webhook: RcMta, receiver: WebhookReceiver) -> None:
    receiver.answer = (422, {"detail": "Change freeze until Monday"})
    outcome, _ = reply_to_request(rc_webhook)
    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "Change freeze until Monday" in outcome.text


def test_receiver_failing_with_500_answers_451_and_the_retry_succeeds(
    rc_webhook: RcMta, receiver: WebhookReceiver
) -> None:
    receiver.answer = (500, "oops")
    address = rc_webhook.cli_json("request", TASK, "--owner", ALICE)["complete_address"]
    message = reply_message(address, "Ship it")
    first = send_smtp(rc_webhook.smtp_port, message, address)
    receiver.answer = None
    retried = send_smtp(rc_webhook.smtp_port, message, address)
    assert (first.code, first.enhanced) == (451, "4.3.0")
    assert retried.code == 250
    first_try, second_try = receiver.payloads  # the receiver saw both; the retry is the same request
    assert first_try["request_id"] == second_try["request_id"] and first_try["message_id"] == second_try["message_id"]


# Several requests of one task (not an N-of-M group): the webhook cannot be asked whether the
# task is still in progress, so rc-mta's own record of the other requests' answers stands in.

BOB = "bob@example.com"


def all_earlier(server: RcMta, seconds: float) -> None:
    """As if ``seconds`` had passed since every request was made and every answer claimed
    (one transaction: a claim made dead is never seen beside requests made after it)."""
    store = Store(server.settings["store"]["url"])
    try:
        r, u = requests.c, used_tokens.c
        with store.engine.begin() as conn:
            conn.execute(update(requests).values(created_at=r.created_at - seconds, expires_at=r.expires_at - seconds))
            conn.execute(update(used_tokens).values(claimed_at=u.claimed_at - seconds))
    finally:
        store.close()


def on_webhook(
    tmp_path: Path, receiver: WebhookReceiver, store: str = "sqlite", request: pytest.FixtureRequest | None = None
) -> RcMta:
    """An rc-mta (not started) acting on tasks through ``receiver``, on the ``store`` named
    (sqlite, or postgresql: the test's ``request`` gives its ``pg_url``)."""
    server = make_rc_mta(tmp_path)
    server.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    if store == "postgresql":
        assert request is not None
        server.settings["store"] = {"url": request.getfixturevalue("pg_url"), "busy_timeout": "2s"}
    return server


def answer_as(server: RcMta, sent: dict[str, Any], owner: str) -> Any:
    address = sent["complete_address"]
    return send_smtp(server.smtp_port, reply_message(address, "Ship it", sender=owner), address, mail_from=owner)


def test_an_answer_while_another_requests_answer_is_acted_on_waits_then_is_refused_saying_who(
    tmp_path: Path,
) -> None:
    """Bob's answer to his request is being POSTed (the receiver holds it) when Alice answers
    hers: nothing is POSTed beside it (451, try again); once Bob's is done, Alice's retry is
    refused saying Bob decided, and the receiver saw one action."""
    gate = threading.Event()
    held = WebhookReceiver(gate=gate).start()
    server = on_webhook(tmp_path, held)
    try:
        server.start()
        alices, bobs = (server.cli_json("request", TASK, "--owner", owner) for owner in (ALICE, BOB))
        with ThreadPoolExecutor(1) as pool:
            bob = pool.submit(answer_as, server, bobs, BOB)
            wait_until(lambda: len(held.payloads) == 1, what="Bob's POST under way")
            alice_says = reply_message(alices["complete_address"], "Ship it", sender=ALICE)
            predicted = diagnose(server, tmp_path, alice_says, ALICE)
            waiting = answer_as(server, alices, ALICE)
            in_progress = str(R.DECISION_IN_PROGRESS.with_text(task_id=TASK))
            assert f"{waiting.code} {waiting.text}" == predicted["smtp_reply"] == in_progress, (waiting, predicted)
            gate.set()
            assert bob.result().code == 250

        refused = answer_as(server, alices, ALICE)
        decided = R.DECISION_MADE.with_text(task_id=TASK, action_past="completed", by=BOB)
        assert f"{refused.code} {refused.text}" == str(decided), refused
        assert [(p["request_id"], p["actor"]) for p in held.payloads] == [(bobs["request_id"], BOB)]
    finally:
        gate.set()
        server.stop()
        held.stop()


def test_an_answer_beside_another_requests_answer_cut_off_mid_post_waits_for_its_retry_and_an_operator_is_warned(
    tmp_path: Path,
) -> None:
    """Bob's POST got no answer before the action deadline (451 to him) and his attempt was
    never finished: once his claim is taken for dead, whether the receiver acted on it is
    unknown and cannot be asked. Alice's answer is not POSTed on a guess: 451 (the doubt is
    temporary), saying so and that the task may be decided in the workflow system, with a
    WARNING naming the task. Bob's sender's retry settles it (his POST again, same request
    id); then Alice is refused saying Bob decided."""
    gate = threading.Event()
    held = WebhookReceiver(gate=gate).start()
    server = make_rc_mta(tmp_path)
    webhook = {"url": held.url, "secret": held.secret, "timeout": "30s"}
    server.settings["tasks"] = {"backend": "webhook", "action_deadline": "1s", "webhook": webhook}
    try:
        server.start()
        alices = server.cli_json("request", TASK, "--owner", ALICE)
        bobs = server.cli_json("request", TASK, "--owner", BOB)
        cut = answer_as(server, bobs, BOB)
        assert f"{cut.code} {cut.text}" == str(R.ACTION_OUTCOME_UNKNOWN.with_text(task_id=TASK)), cut
        gate.set()  # the receiver ends what it was sent; rc-mta never learns how
        all_earlier(server, STALE_CLAIM_SECONDS + 1)

        refused = answer_as(server, alices, ALICE)
        unknown = R.SIBLING_OUTCOME_UNKNOWN.with_text(task_id=TASK, request_id=bobs["request_id"])
        assert f"{refused.code} {refused.text}" == str(unknown), refused
        assert (refused.code, refused.enhanced) == (451, "4.3.0")
        assert [p["request_id"] for p in held.payloads] == [bobs["request_id"]]
        warned = [line for line in server.log_path.read_text().splitlines() if " WARNING " in line and TASK in line]
        assert any(alices["request_id"] in line and bobs["request_id"] in line for line in warned), warned

        settled = answer_as(server, bobs, BOB)  # Bob's sender tries again: his dead claim is taken over
        assert settled.code == 250, settled
        assert [p["request_id"] for p in held.payloads] == [bobs["request_id"]] * 2  # the receiver dedupes
        after = answer_as(server, alices, ALICE)
        decided = R.DECISION_MADE.with_text(task_id=TASK, action_past="completed", by=BOB)
        assert f"{after.code} {after.text}" == str(decided), after
    finally:
        gate.set()
        server.stop()
        held.stop()


def test_an_answer_whose_post_may_have_acted_keeps_its_claim_so_another_requests_answer_waits(
    tmp_path: Path,
) -> None:
    """Bob's POST is answered 500: the receiver may have acted on it (451 to Bob). His claim
    stays, so Alice's answer to her request of the same task waits (451) instead of being
    POSTed beside an action that may have happened; the receiver saw Bob's alone."""
    receiver = WebhookReceiver().start()
    receiver.answer = (500, {"detail": "crashed after the commit"})
    server = on_webhook(tmp_path, receiver)
    try:
        server.start()
        alices, bobs = (server.cli_json("request", TASK, "--owner", owner) for owner in (ALICE, BOB))
        bob = answer_as(server, bobs, BOB)
        assert bob.code == 451, bob
        receiver.answer = None  # answering as usual from here
        alice = answer_as(server, alices, ALICE)
    finally:
        server.stop()
        receiver.stop()

    assert f"{alice.code} {alice.text}" == str(R.DECISION_IN_PROGRESS.with_text(task_id=TASK)), alice
    assert [(p["request_id"], p["actor"]) for p in receiver.payloads] == [(bobs["request_id"], BOB)]


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_two_requests_answers_at_the_same_moment_post_one_action(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Alice and Bob answer their requests of one task at once: each answer looks at the
    other's once its own claim is taken, so at least one of them sees the other and waits
    (451), or is refused if the other was done by then; the receiver never gets both.
    Retried, one acts and the other is refused."""
    receiver = WebhookReceiver().start()
    server = on_webhook(tmp_path, receiver, store, request)
    try:
        server.start()
        sent = [(server.cli_json("request", TASK, "--owner", owner), owner) for owner in (ALICE, BOB)]
        first = all_at_once(2, lambda i: answer_as(server, *sent[i]))
        assert sorted(o.code for o in first) in ([250, 451], [250, 550], [451, 451]), first
        assert len(receiver.payloads) == [o.code for o in first].count(250)

        for (made, owner), outcome in zip(sent, first, strict=True):
            if outcome.code == 451:
                assert f"{outcome.code} {outcome.text}" == str(R.DECISION_IN_PROGRESS.with_text(task_id=TASK))
                outcome = answer_as(server, made, owner)  # the sender's retry
            assert outcome.code in (250, 550), outcome
        [posted] = receiver.payloads
        refused = answer_as(server, *next(s for s in sent if s[1] != posted["actor"]))
        decided = R.DECISION_MADE.with_text(task_id=TASK, action_past="completed", by=posted["actor"])
        assert f"{refused.code} {refused.text}" == str(decided), refused
    finally:
        server.stop()
        receiver.stop()


# A retry of an answer whose POST may have acted inherits that doubt: if the retry's own POST
# fails without acting (503), the first may still have acted, so the doubt is kept.

_INHERITED = {
    "remembered": False,  # this process remembers the POST that got no answer: posted again at once
    "taken over": True,  # the claim taken for dead first: the retry takes it over
}


def bobs_post_may_have_acted(server: RcMta) -> tuple[dict[str, Any], dict[str, Any], Callable[[], Any]]:
    """``server`` started, Alice's and Bob's requests of TASK, and Bob's answer sent once to a
    receiver that answers 502 (it may have acted): his 451. With the two requests, the way
    Bob's server sends that very message again."""
    server.start()
    alices, bobs = (server.cli_json("request", TASK, "--owner", owner) for owner in (ALICE, BOB))
    bobs_answer = reply_message(bobs["complete_address"], "Ship it", sender=BOB)

    def bob_sends() -> Any:  # the very same message each time, as his server retries it
        return send_smtp(server.smtp_port, bobs_answer, bobs["complete_address"], mail_from=BOB)

    first = bob_sends()
    assert f"{first.code} {first.text}" == str(R.BACKEND_UNAVAILABLE), first
    return alices, bobs, bob_sends


@pytest.mark.parametrize("inherited", list(_INHERITED))
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_retry_that_fails_cleanly_after_a_post_that_may_have_acted_keeps_the_doubt(
    store: str, inherited: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Bob's POST is answered 502 (a proxy's: the receiver may have acted). His sender's
    retry POSTs again with his request id, and the receiver answers 503 (nothing done this
    time, but the first may still have acted): Bob gets 451, and his claim stands, so sent
    again at once it POSTs again. Once that claim is dead, Alice's answer to her request of
    the same task waits (451, whether Bob's acted is unknown) and nothing is POSTed under her
    request id; Bob's retry, answered 2xx, settles it, and then Alice is refused saying Bob
    decided."""
    receiver = WebhookReceiver(answer=(502, {"detail": "upstream gave no answer"})).start()
    server = on_webhook(tmp_path, receiver, store, request)
    try:
        alices, bobs, bob_sends = bobs_post_may_have_acted(server)
        if _INHERITED[inherited]:
            all_earlier(server, STALE_CLAIM_SECONDS + 1)

        receiver.answer = (503, {"detail": "maintenance"})
        for _ in range(2):  # the retry, and the retry of that retry: each POSTs again at once
            retried = bob_sends()
            assert f"{retried.code} {retried.text}" == str(R.BACKEND_UNAVAILABLE), retried
        assert [p["request_id"] for p in receiver.payloads] == [bobs["request_id"]] * 3

        all_earlier(server, STALE_CLAIM_SECONDS + 1)
        waiting = answer_as(server, alices, ALICE)
        unknown = R.SIBLING_OUTCOME_UNKNOWN.with_text(task_id=TASK, request_id=bobs["request_id"])
        assert f"{waiting.code} {waiting.text}" == str(unknown), waiting
        assert [p["request_id"] for p in receiver.payloads] == [bobs["request_id"]] * 3

        receiver.answer = None  # answering as usual from here
        settled = bob_sends()
        assert settled.code == 250, settled
        after = answer_as(server, alices, ALICE)
    finally:
        server.stop()
        receiver.stop()

    decided = R.DECISION_MADE.with_text(task_id=TASK, action_past="completed", by=BOB)
    assert f"{after.code} {after.text}" == str(decided), after
    assert [p["request_id"] for p in receiver.payloads] == [bobs["request_id"]] * 4  # the receiver dedupes


@pytest.mark.parametrize("inherited", list(_INHERITED))
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_refusal_of_the_retry_after_a_post_that_may_have_acted_is_told_and_the_doubt_kept(
    store: str, inherited: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Bob's POST is answered 502 (it may have acted); his sender's retry is refused 422. The
    refusal is his to read (the receiver's reason), but it does not say the first POST did
    not act: his claim stands, and Alice's answer to her request waits (451) with nothing
    POSTed under her request id. Since the doubt stands, Bob is told 451, not the 550 of a
    refusal without it: only his sender's retry can settle it, and it does (answered 2xx:
    250, then Alice is refused saying Bob decided). Only that, or the receiver's word that
    the task is closed (409), ends the doubt."""
    receiver = WebhookReceiver(answer=(502, {"detail": "upstream gave no answer"})).start()
    server = on_webhook(tmp_path, receiver, store, request)
    try:
        alices, bobs, bob_sends = bobs_post_may_have_acted(server)
        if _INHERITED[inherited]:
            all_earlier(server, STALE_CLAIM_SECONDS + 1)
        receiver.answer = (422, {"detail": "Change freeze until Monday"})
        refused = bob_sends()
        alice = answer_as(server, alices, ALICE)
        receiver.answer = None  # answering as usual from here
        settled = bob_sends()
        after = answer_as(server, alices, ALICE)
    finally:
        server.stop()
        receiver.stop()

    # Was 550 5.7.1: a 5xx ends the sender's retries, and the doubt, kept, could never be
    # settled by the one answer that may: any doubt that is temporary is told as a 4xx.
    said = R.BACKEND_REFUSED.with_text(why="Change freeze until Monday").text
    kept = R.RETRY_REFUSED_IN_DOUBT.with_text(refused=said, task_id=TASK)
    assert f"{refused.code} {refused.text}" == str(kept), refused
    assert (refused.code, refused.enhanced) == (451, "4.3.0") and "Change freeze until Monday" in refused.text
    assert f"{alice.code} {alice.text}" == str(R.DECISION_IN_PROGRESS.with_text(task_id=TASK)), alice
    assert settled.code == 250, settled
    decided = R.DECISION_MADE.with_text(task_id=TASK, action_past="completed", by=BOB)
    assert f"{after.code} {after.text}" == str(decided), after
    assert [p["request_id"] for p in receiver.payloads] == [bobs["request_id"]] * 3


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_another_answer_to_a_request_whose_answer_may_have_acted_is_not_posted_and_leaves_its_claim(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Alice answers Complete and the POST is answered 502 (the receiver may have acted:
    451). Once her claim is taken for dead, she answers Fail to the same request. POSTed
    under the same request id, a receiver that dedupes by it could answer 2xx for the
    complete it did while rc-mta records a fail, or fail what it completed. So it is not
    POSTed: 451 saying the earlier complete may have acted (as diagnose predicts), with a
    WARNING naming the request and the task, and the claim left to the complete, whose
    sender's retry then POSTs it and settles it; the fail is then refused as answered."""
    receiver = WebhookReceiver(answer=(502, {"detail": "upstream gave no answer"})).start()
    server = on_webhook(tmp_path, receiver, store, request)
    try:
        server.start()
        sent = server.cli_json("request", TASK, "--owner", ALICE)
        complete = reply_message(sent["complete_address"], "Ship it", sender=ALICE)
        fail = reply_message(sent["fail_address"], "Broken after all", sender=ALICE)

        def alice_sends(message: Any, action: str) -> Any:
            return send_smtp(server.smtp_port, message, sent[f"{action}_address"], mail_from=ALICE)

        first = alice_sends(complete, "complete")
        assert f"{first.code} {first.text}" == str(R.BACKEND_UNAVAILABLE), first
        all_earlier(server, STALE_CLAIM_SECONDS + 1)
        receiver.answer = None  # answering as usual from here

        predicted = diagnose(server, tmp_path, fail, ALICE)
        other = alice_sends(fail, "fail")
        unknown = R.EARLIER_ANSWER_OUTCOME_UNKNOWN.with_text(task_id=TASK, action="complete")
        assert f"{other.code} {other.text}" == predicted["smtp_reply"] == str(unknown), (other, predicted)
        assert (other.code, other.enhanced) == (451, "4.3.0")
        assert [p["action"] for p in receiver.payloads] == ["complete"]
        with closing(Store(server.settings["store"]["url"])) as store_now:
            claim = store_now.get_claim(sent["request_id"])
        assert claim is not None and (claim.action, claim.message_id, claim.done) == (
            "complete",
            complete["Message-ID"],
            False,
        )
        log = server.log_path.read_text().splitlines()
        warned = [line for line in log if " WARNING " in line and "earlier answer" in line]
        assert any(sent["request_id"] in line and f"task {TASK}" in line for line in warned), warned

        settled = alice_sends(complete, "complete")  # her server's retry takes the dead claim over
        assert settled.code == 250, settled
        refused = alice_sends(fail, "fail")
    finally:
        server.stop()
        receiver.stop()

    used = R.TOKEN_USED.with_text(task_id=TASK, action_past="completed")
    assert f"{refused.code} {refused.text}" == str(used), refused
    assert [(p["action"], p["request_id"]) for p in receiver.payloads] == [("complete", sent["request_id"])] * 2
