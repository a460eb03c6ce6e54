"""The store suite, on SQLite and on PostgreSQL: exactly-once rests on the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rc_mta.store import Request, Store
from rc_mta.tokens import new_request_id


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store(url, busy_timeout=5)
    s.create_schema()
    yield s
    s.close()


def _request(store: Store, task_id: str) -> Request:
    now = time.time()
    request = Request(new_request_id(), task_id, "alice@example.com", "t", now, now + 60, None, None)
    store.add_request(request)
    return request


def test_task_changes_state_once(store: Store) -> None:
    task = store.add_task("Deploy", "Alice@Example.com", time.time())

    first = store.set_task_status(task.id, "completed", "ship it", "alice@example.com", time.time())
    second = store.set_task_status(task.id, "failed", "no", "alice@example.com", time.time())

    assert (first, second) == (True, False)
    stored = store.get_task(task.id)
    assert stored is not None and stored.status == "completed"
    assert stored.owner == "alice@example.com"
    assert [c.text for c in stored.comments] == ["ship it"]


def test_racing_actions_on_one_task_let_exactly_one_win(store: Store) -> None:
    task = store.add_task("Deploy", "alice@example.com", time.time())
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def act(i: int) -> None:
        barrier.wait()
        results.append(store.set_task_status(task.id, "completed", f"c{i}", "alice@example.com", time.time()))

    threads = [threading.Thread(target=act, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(results) == [False] * 7 + [True]
    stored = store.get_task(task.id)
    assert stored is not None and len(stored.comments) == 1


def test_racing_claims_on_one_request_let_exactly_one_win(store: Store) -> None:
    request = _request(store, "t-1")
    wins: list[str] = []
    barrier = threading.Barrier(6)

    def claim(i: int) -> None:
        barrier.wait()
        ours, _ = store.claim(request.id, f"<m{i}@x>", "complete", "alice@example.com", time.time(), 600)
        if ours:
            wins.append(f"<m{i}@x>")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(wins) == 1
    claim_row = store.get_claim(request.id)
    assert claim_row is not None and claim_row.message_id == wins[0]


def test_same_message_may_retake_its_pending_claim_and_others_may_not(store: Store) -> None:
    request = _request(store, "t-2")
    now = time.time()
    assert store.claim(request.id, "<a@x>", "complete", "alice@example.com", now, 600)[0]

    assert store.claim(request.id, "<a@x>", "complete", "alice@example.com", now + 1, 600)[0]
    assert not store.claim(request.id, "<b@x>", "fail", "alice@example.com", now + 2, 600)[0]
    assert store.claim(request.id, "<b@x>", "fail", "alice@example.com", now + 700, 600)[0]  # stale


def test_finished_claim_is_never_taken_over(store: Store) -> None:
    request = _request(store, "t-3")
    now = time.time()
    store.claim(request.id, "<a@x>", "complete", "alice@example.com", now, 600)
    store.finish_claim(request.id, "<a@x>", now)

    ours, claim = store.claim(request.id, "<a@x>", "complete", "alice@example.com", now + 10_000, 600)

    assert not ours
    assert claim is not None and claim.done and claim.message_id == "<a@x>"


def test_released_claim_lets_a_later_reply_try(store: Store) -> None:
    request = _request(store, "t-4")
    now = time.time()
    store.claim(request.id, "<a@x>", "complete", "alice@example.com", now, 600)
    store.release_claim(request.id, "<a@x>")

    assert store.claim(request.id, "<b@x>", "fail", "alice@example.com", now, 600)[0]


def test_revoked_request_is_marked(store: Store) -> None:
    request = _request(store, "t-5")

    assert store.revoke_request(request.id, time.time())
    assert not store.revoke_request(request.id, time.time())
    stored = store.get_request(request.id)
    assert stored is not None and stored.revoked_at is not None


def test_revoked_request_cannot_be_claimed(store: Store) -> None:
    request = _request(store, "t-6")
    store.revoke_request(request.id, time.time())

    ours, claim = store.claim(request.id, "<a@x>", "complete", "alice@example.com", time.time(), 600)

    assert (ours, claim) == (False, None)
    assert store.get_claim(request.id) is None
