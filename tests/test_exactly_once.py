"""Exactly-once across processes and store faults: real rc-mta instances sharing one
PostgreSQL, the same message delivered to each at once (a sender's retry, several MX
hosts); a store that is locked, was not writable for a while, or was deleted. One action
reaches the backend; no live reply gets a 5xx; nothing hangs; /readyz tells the truth."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import RcMta, make_rc_mta, require_server, store_write_locked, wait_until
from mailclient import SmtpOutcome, reply_message, send_smtp
from release_server import FakeRelease
from webhook_receiver import WebhookReceiver

TASK = "JIRA-77"
ALICE = "alice@example.com"
API_TOKEN = "exactly-once-token-5d1e"
RELEASE_TASK = "Applications/Folder1/Release1/Phase1/Task1"
RELEASE_TOKEN = "release-token-for-exactly-once"


@pytest.fixture
def slow_receiver() -> Iterator[WebhookReceiver]:
    """A webhook that takes a few seconds to answer: time for a second copy to arrive."""
    server = WebhookReceiver(delay=3.0).start()
    yield server
    server.stop()


@pytest.fixture
def twins(tmp_path: Path, pg_url: str, slow_receiver: WebhookReceiver) -> Iterator[tuple[RcMta, RcMta]]:
    """Two rc-mta instances, as behind two MX records: one PostgreSQL schema, one signing
    key, one webhook."""
    shared: dict[str, dict[str, Any]] = {
        "store": {"url": pg_url, "busy_timeout": "2s"},
        "tasks": {
            "backend": "webhook",
            "webhook": {"url": slow_receiver.url, "secret": slow_receiver.secret, "timeout": "10s"},
        },
        "http": {"api_tokens": [API_TOKEN]},
    }
    first = make_rc_mta(tmp_path / "mx1", **shared)
    second = make_rc_mta(tmp_path / "mx2", **shared)
    second.settings["signing"] = first.settings["signing"]
    for server in (first, second):
        server.workdir.mkdir()
    try:
        first.start()  # one at a time: each creates the schema if missing
        second.start()
        yield first, second
    finally:
        first.stop()
        second.stop()


def request_state(server: RcMta, request_id: str) -> dict[str, Any]:
    ask = urllib.request.Request(
        f"{server.http_url}/v1/requests/{request_id}", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    with urllib.request.urlopen(ask, timeout=10) as answer:
        state: dict[str, Any] = json.loads(answer.read())
    return state


def test_one_message_delivered_to_two_instances_at_once_acts_once(
    twins: tuple[RcMta, RcMta], slow_receiver: WebhookReceiver
) -> None:
    first, second = twins
    sent = first.cli_json("request", TASK, "--owner", ALICE)
    address = sent["complete_address"]
    message = reply_message(address, "Ship it")
    start = threading.Barrier(2)

    def deliver(server: RcMta) -> SmtpOutcome:
        start.wait()
        return send_smtp(server.smtp_port, message, address)

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(deliver, twins))

    assert len(slow_receiver.payloads) == 1, slow_receiver.payloads
    acted = [o for o in outcomes if o.code == 250 and "completed; thank you" in o.text]
    assert len(acted) == 1, outcomes
    (other,) = [o for o in outcomes if o is not acted[0]]
    # The copy that lost: told to come back (the first still at work), or already processed.
    assert (other.code, other.enhanced) == (451, "4.3.0") or "already processed" in other.text, other
    for server in twins:
        retried = send_smtp(server.smtp_port, message, address)
        assert retried.code == 250 and "already processed" in retried.text, retried

    changed_mind = send_smtp(second.smtp_port, reply_message(sent["fail_address"], "Fail"), sent["fail_address"])
    assert (changed_mind.code, changed_mind.enhanced) == (550, "5.7.1"), changed_mind
    assert "already answered" in changed_mind.text
    assert len(slow_receiver.payloads) == 1

    state = request_state(second, sent["request_id"])
    assert state["state"] == "answered" and state["answered"]["action"] == "complete"


@contextmanager
def table_locked(url: str, table: str, at_most: float) -> Iterator[Callable[[], bool]]:
    """Hold ACCESS EXCLUSIVE on ``table`` from another connection, as a migration or a
    stuck administrator would; let go after ``at_most`` seconds whatever happens. Yields a
    question: is the lock still held (it did not run out)?"""
    locked, release, let_go = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as conn:
            conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(at_most)
            let_go.set()
            conn.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10), f"could not lock {table}"
        yield lambda: not let_go.is_set()
    finally:
        release.set()
        holder.join()


def test_a_locked_postgresql_table_answers_451_within_the_busy_timeout(tmp_path: Path, pg_url: str) -> None:
    busy_timeout = 1.0
    server = make_rc_mta(tmp_path, store={"url": pg_url, "busy_timeout": f"{busy_timeout}s"})
    try:
        server.start()
        task_id = server.add_task()
        address = server.request(task_id)["complete_address"]
        message = reply_message(address, "Ship it")

        with table_locked(pg_url, "used_tokens", at_most=20 * busy_timeout) as still_held:
            deferred = send_smtp(server.smtp_port, message, address)
            answered_while_locked = still_held()
        retried = send_smtp(server.smtp_port, message, address)
        task = server.task(task_id)
    finally:
        server.stop()

    assert answered_while_locked  # rc-mta gave up after its busy_timeout, not when the lock went
    assert (deferred.code, deferred.enhanced) == (451, "4.3.0"), deferred
    assert retried.code == 250, retried
    assert task["status"] == "completed" and len(task["comments"]) == 1


# SQLite store faults ---------------------------------------------------------------------


def readiness(server: RcMta) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server.http_url + "/readyz", timeout=10) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


@contextmanager
def not_writable(path: Path) -> Iterator[None]:
    """Make the file unwritable even for root (the tests run as root, so chmod would not do)."""
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    require_server(made.returncode == 0, f"chattr +i on {path.parent} ({made.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_store_file_not_writable_for_a_while_is_written_again_without_a_restart(fresh_rc: RcMta) -> None:
    server = fresh_rc
    server.write_config()
    task_id = server.add_task()  # the CLI creates the store
    address = server.request(task_id)["complete_address"]
    message = reply_message(address, "Ship it")

    with not_writable(server.workdir / "rc-mta.db"):
        server.start()  # each connection it opens now is read-only
        unready, report = readiness(server)
        deferred = send_smtp(server.smtp_port, message, address)
    wait_until(lambda: readiness(server)[0] == 200, what="/readyz ready once the file is writable")
    acted = send_smtp(server.smtp_port, message, address)

    assert unready == 503 and "readonly" in report["store"], report
    assert (deferred.code, deferred.enhanced) == (451, "4.3.0"), deferred
    assert acted.code == 250, acted
    assert server.task(task_id)["status"] == "completed"


@pytest.mark.parametrize("removed", ["file", "directory"])
def test_a_deleted_store_makes_rc_mta_unready_and_answer_451_not_250(fresh_rc: RcMta, removed: str) -> None:
    server = fresh_rc
    store_dir = server.workdir / "store"
    server.settings["store"]["url"] = f"sqlite:///{store_dir / 'rc-mta.db'}"
    server.start()
    task_id = server.add_task()
    address = server.request(task_id)["complete_address"]
    ready_before = readiness(server)[0]

    if removed == "directory":
        shutil.rmtree(store_dir)
    else:
        for path in store_dir.glob("rc-mta.db*"):
            path.unlink()
    outcome = send_smtp(server.smtp_port, reply_message(address, "Ship it"), address)
    ready_after, report = readiness(server)

    assert ready_before == 200
    assert (outcome.code, outcome.enhanced) == (451, "4.3.0"), outcome
    assert ready_after == 503 and "removed or replaced" in report["store"], report


# The action happened, its record did not -------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def gated(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RcMta, WebhookReceiver, Callable[[], Any]]]:
    """An rc-mta on SQLite or PostgreSQL whose webhook holds each answer until the test
    opens its gate, and a way to take the store down: its claims table locked from another
    connection, so every write to it fails after the busy timeout (1 s)."""
    receiver = WebhookReceiver(gate=threading.Event()).start()
    server = make_rc_mta(
        tmp_path,
        tasks={"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret, "timeout": "30s"}},
        http={"api_tokens": [API_TOKEN]},
    )
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        server.settings["store"]["url"] = url
        down: Callable[[], Any] = lambda: table_locked(url, "used_tokens", at_most=60)  # noqa: E731
    else:
        down = lambda: store_write_locked(server.workdir / "rc-mta.db")  # noqa: E731
    try:
        server.start()
        yield server, receiver, down
    finally:
        server.stop()
        receiver.stop()


def _answer_while_the_store_goes_down(
    server: RcMta, receiver: WebhookReceiver, down: Callable[[], Any], down_for: float | None
) -> tuple[dict[str, Any], EmailMessage, SmtpOutcome]:
    """Send Alice's reply; once the backend is being told, take the store down, let the
    backend answer (it acts), and keep the store down for ``down_for`` seconds (None: until
    rc-mta has answered the sender)."""
    sent = server.cli_json("request", TASK, "--owner", ALICE)
    address = sent["complete_address"]
    message = reply_message(address, "Ship it")
    assert receiver.gate is not None
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(send_smtp, server.smtp_port, message, address)
        wait_until(lambda: receiver.payloads, what="the backend to be told")  # the claim is taken
        with down():
            receiver.gate.set()  # the backend acts; rc-mta now records it, in a store that is down
            if down_for is None:
                answer.result(timeout=60)
            else:
                time.sleep(down_for)
        first = answer.result(timeout=60)
    return sent, message, first


def test_a_store_down_for_a_moment_after_the_action_is_waited_out_and_answered_250(
    gated: tuple[RcMta, WebhookReceiver, Callable[[], Any]],
) -> None:
    server, receiver, down = gated
    sent, _, first = _answer_while_the_store_goes_down(server, receiver, down, down_for=1.5)

    assert first.code == 250 and "completed; thank you" in first.text, first
    assert len(receiver.payloads) == 1
    state = request_state(server, sent["request_id"])
    assert state["state"] == "answered" and state["answered"]["action"] == "complete"


def test_an_action_the_store_could_not_record_is_recorded_by_the_senders_retry_not_done_again(
    gated: tuple[RcMta, WebhookReceiver, Callable[[], Any]],
) -> None:
    server, receiver, down = gated
    sent, message, first = _answer_while_the_store_goes_down(server, receiver, down, down_for=None)
    retried = send_smtp(server.smtp_port, message, sent["complete_address"])  # the sender's server retries

    assert (first.code, first.enhanced) == (451, "4.3.0"), first
    assert "could not be recorded" in first.text and "not be done twice" in first.text, first
    assert retried.code == 250 and "already processed" in retried.text, retried  # at once, not in 10 minutes
    assert len(receiver.payloads) == 1  # acted once
    state = request_state(server, sent["request_id"])
    assert state["state"] == "answered" and state["answered"]["action"] == "complete"


def test_after_a_restart_the_retry_of_an_action_not_recorded_is_recognised_in_release(tmp_path: Path) -> None:
    """The process that acted is gone with what it remembered: Release itself shows the task
    completed by this sender's email, so the retry records it and gets its 250, and Release
    is not asked again."""
    release = FakeRelease(token=RELEASE_TOKEN, action_delay=2.0).start()  # acts at once, answers late
    release.add_task(RELEASE_TASK, owner="alice")
    settings = {"url": release.url, "token": RELEASE_TOKEN, "timeout": "10s"}
    server = make_rc_mta(tmp_path, tasks={"backend": "release", "release": settings})
    try:
        server.start()
        address = server.cli_json("request", RELEASE_TASK, "--owner", ALICE)["complete_address"]
        message = reply_message(address, "Ship it")
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(send_smtp, server.smtp_port, message, address)
            wait_until(lambda: release.status(RELEASE_TASK) == "COMPLETED", what="Release to act")
            with store_write_locked(server.workdir / "rc-mta.db"):  # down until rc-mta has answered
                first = answer.result(timeout=60)
        server.restart()
        retried = send_smtp(server.smtp_port, message, address)
    finally:
        server.stop()
        release.stop()

    assert (first.code, first.enhanced) == (451, "4.3.0") and "could not be recorded" in first.text, first
    assert retried.code == 250 and "already processed" in retried.text, retried
    assert len(release.actions_on(RELEASE_TASK)) == 1
