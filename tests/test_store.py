"""The store suite, on SQLite and on PostgreSQL: exactly-once rests on the database."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from racing import all_at_once
from sqlalchemy import event, inspect, text

from rc_mta.errors import SiblingOutcomeUnknown
from rc_mta.store import (
    STALE_CLAIM_SECONDS,
    Answer,
    ApprovalStanding,
    ClaimOutcome,
    GroupState,
    ReadWouldWait,
    Request,
    Store,
    new_attempt_id,
)
from rc_mta.tokens import new_request_id

ALICE = "alice@example.com"


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
    results = all_at_once(
        8, lambda i: store.set_task_status(task.id, "completed", f"c{i}", "alice@example.com", time.time())
    )

    assert sorted(results) == [False] * 7 + [True]
    stored = store.get_task(task.id)
    assert stored is not None and len(stored.comments) == 1


def test_racing_claims_on_one_request_let_exactly_one_win(store: Store) -> None:
    request = _request(store, "t-1")
    outcomes = all_at_once(
        6, lambda i: store.claim(request.id, f"a{i}", f"<m{i}@x>", "complete", ALICE, time.time(), 600)[0]
    )
    wins = [f"<m{i}@x>" for i, outcome in enumerate(outcomes) if outcome is ClaimOutcome.OURS]

    assert len(wins) == 1
    claim_row = store.get_claim(request.id)
    assert claim_row is not None and claim_row.message_id == wins[0]


def test_racing_copies_of_one_message_let_exactly_one_act(store: Store) -> None:
    request = _request(store, "t-1b")
    outcomes = all_at_once(
        6, lambda i: store.claim(request.id, f"a{i}", "<same@x>", "complete", ALICE, time.time(), 600)[0]
    )

    assert sorted(o.value for o in outcomes) == ["busy"] * 5 + ["ours"]


def test_another_copy_of_a_message_being_answered_is_not_ours_until_stale(store: Store) -> None:
    request = _request(store, "t-2")
    now = time.time()
    assert store.claim(request.id, "a", "<a@x>", "complete", ALICE, now, 600)[0] is ClaimOutcome.OURS

    outcome, claim = store.claim(request.id, "b", "<a@x>", "complete", ALICE, now + 1, 600)
    assert outcome is ClaimOutcome.BUSY and claim is not None and claim.message_id == "<a@x>"
    assert store.claim(request.id, "c", "<c@x>", "fail", ALICE, now + 2, 600)[0] is ClaimOutcome.BUSY
    taken = store.claim(request.id, "c", "<c@x>", "fail", ALICE, now + 700, 600)[0]
    assert taken is ClaimOutcome.TAKEN_OVER  # stale: ours, and whether "a" acted is unknown
    assert store.claim(request.id, "c", "<c@x>", "fail", ALICE, now + 1400, 600)[0] is ClaimOutcome.OURS  # its own


def test_a_copy_that_loses_the_claim_cannot_give_back_or_finish_the_winners(store: Store) -> None:
    request = _request(store, "t-2b")
    now = time.time()
    store.claim(request.id, "a", "<a@x>", "complete", ALICE, now, 600)
    store.claim(request.id, "b", "<a@x>", "complete", ALICE, now, 600)  # BUSY

    store.release_claim(request.id, "b")  # b's backend call "failed": it gives back what it holds
    assert not store.finish_claim(request.id, "b", now)

    claim = store.get_claim(request.id)
    assert claim is not None and claim.attempt == "a" and not claim.done
    assert store.claim(request.id, "c", "<c@x>", "fail", ALICE, now + 1, 600)[0] is ClaimOutcome.BUSY
    assert store.finish_claim(request.id, "a", now + 2)
    outcome, claim = store.claim(request.id, "d", "<a@x>", "complete", ALICE, now + 3, 600)
    assert outcome is ClaimOutcome.DONE and claim is not None and claim.message_id == "<a@x>"


def test_finishing_a_claim_again_says_it_is_finished_and_only_for_its_own_attempt(store: Store) -> None:
    request = _request(store, "t-2e")
    now = time.time()
    store.claim(request.id, "a", "<a@x>", "complete", ALICE, now, 600)

    assert store.finish_claim(request.id, "a", now + 1)
    assert store.finish_claim(request.id, "a", now + 2)  # a commit whose answer was lost, tried again
    assert not store.finish_claim(request.id, "b", now + 3)  # never another attempt's
    claim = store.get_claim(request.id)
    assert claim is not None and claim.done and claim.done_at == now + 1


def test_the_first_attempt_giving_back_lets_the_copys_retry_claim(store: Store) -> None:
    request = _request(store, "t-2c")
    now = time.time()
    store.claim(request.id, "a", "<a@x>", "complete", ALICE, now, 600)
    assert store.claim(request.id, "b", "<a@x>", "complete", ALICE, now, 600)[0] is ClaimOutcome.BUSY

    store.release_claim(request.id, "a")  # a's backend call failed

    assert store.claim(request.id, "b", "<a@x>", "complete", ALICE, now + 1, 600)[0] is ClaimOutcome.OURS
    assert not store.finish_claim(request.id, "a", now + 2)  # a holds nothing any more
    assert store.finish_claim(request.id, "b", now + 2)


def test_a_stale_attempt_taken_over_can_no_longer_finish_or_release(store: Store) -> None:
    request = _request(store, "t-2d")
    now = time.time()
    store.claim(request.id, "a", "<a@x>", "complete", ALICE, now, 600)
    assert store.claim(request.id, "b", "<b@x>", "fail", ALICE, now + 700, 600)[0] is ClaimOutcome.TAKEN_OVER

    store.release_claim(request.id, "a")
    assert not store.finish_claim(request.id, "a", now + 701)

    claim = store.get_claim(request.id)
    assert claim is not None and (claim.attempt, claim.message_id, claim.done) == ("b", "<b@x>", False)


def test_keeping_doubt_a_dead_claim_is_taken_over_only_by_the_same_answer(store: Store) -> None:
    """Where whether a dead attempt acted cannot be read (the webhook): another action, or
    another sender, finds it IN_DOUBT and leaves it as it was; the same action by the same
    sender (another message, the address in another case) takes it over; a live claim is BUSY."""
    request = _request(store, "t-2f")
    now = time.time()
    store.claim(request.id, "a", "<a@x>", "complete", ALICE, now, 600)
    for attempt, action, actor in (("b", "fail", ALICE), ("c", "complete", "bob@example.com")):
        outcome, claim = store.claim(request.id, attempt, "<b@x>", action, actor, now + 700, 600, keep_doubt=True)
        assert outcome is ClaimOutcome.IN_DOUBT, (action, actor)
        assert claim == store.get_claim(request.id)
        assert claim is not None and (claim.attempt, claim.message_id, claim.action, claim.claimed_at) == (
            "a",
            "<a@x>",
            "complete",
            now,
        )

    same = store.claim(request.id, "d", "<d@x>", "complete", ALICE.upper(), now + 700, 600, keep_doubt=True)
    assert same[0] is ClaimOutcome.TAKEN_OVER and same[1] is not None and same[1].attempt == "d"
    assert store.claim(request.id, "e", "<e@x>", "fail", ALICE, now + 701, 600, keep_doubt=True)[0] is ClaimOutcome.BUSY


def test_a_claim_given_back_between_insert_and_read_is_claimed_not_called_withdrawn(store: Store) -> None:
    """The window the fault campaign hit: B's insert collides with A's claim, A gives it
    back, and only then does B look at the row."""
    request = _request(store, "t-2e")
    now = time.time()
    store.claim(request.id, "a", "<a@x>", "complete", ALICE, now, 600)
    other = Store(store.url, busy_timeout=5)
    collided: list[bool] = []

    @event.listens_for(store.engine, "handle_error")
    def _collided(context: Any) -> None:
        collided.append(True)

    @event.listens_for(store.engine, "before_cursor_execute")
    def _release_after_collision(*_: Any) -> None:
        if collided == [True]:
            collided.append(True)
            other.release_claim(request.id, "a")  # on its own connection, as another process

    try:
        outcome, claim = store.claim(request.id, "b", "<b@x>", "fail", ALICE, now + 1, 600)
    finally:
        event.remove(store.engine, "handle_error", _collided)
        event.remove(store.engine, "before_cursor_execute", _release_after_collision)
        other.close()

    assert collided == [True, True]  # the interleaving happened
    assert outcome is ClaimOutcome.OURS
    assert claim is not None and (claim.attempt, claim.message_id) == ("b", "<b@x>")


def test_finished_claim_is_never_taken_over(store: Store) -> None:
    request = _request(store, "t-3")
    now = time.time()
    store.claim(request.id, "a", "<a@x>", "complete", ALICE, now, 600)
    assert store.finish_claim(request.id, "a", now)

    outcome, claim = store.claim(request.id, "b", "<a@x>", "complete", ALICE, now + 10_000, 600)

    assert outcome is ClaimOutcome.DONE
    assert claim is not None and claim.done and claim.message_id == "<a@x>"


def test_released_claim_lets_a_later_reply_try(store: Store) -> None:
    request = _request(store, "t-4")
    now = time.time()
    store.claim(request.id, "a", "<a@x>", "complete", ALICE, now, 600)
    store.release_claim(request.id, "a")

    assert store.claim(request.id, "b", "<b@x>", "fail", ALICE, now, 600)[0] is ClaimOutcome.OURS


def test_revoked_request_is_marked(store: Store) -> None:
    request = _request(store, "t-5")

    assert store.revoke_request(request.id, time.time())
    assert not store.revoke_request(request.id, time.time())
    stored = store.get_request(request.id)
    assert stored is not None and stored.revoked_at is not None


def test_revoked_request_cannot_be_claimed(store: Store) -> None:
    request = _request(store, "t-6")
    store.revoke_request(request.id, time.time())

    outcome, claim = store.claim(request.id, "a", "<a@x>", "complete", ALICE, time.time(), 600)

    assert (outcome, claim) == (ClaimOutcome.REVOKED, None)
    assert store.get_claim(request.id) is None


def test_a_request_revoked_while_a_claim_is_pending_is_withdrawn_for_the_next_reply(store: Store) -> None:
    request = _request(store, "t-7")
    store.claim(request.id, "a", "<a@x>", "complete", ALICE, time.time(), 600)
    store.revoke_request(request.id, time.time())

    assert store.claim(request.id, "b", "<b@x>", "fail", ALICE, time.time(), 600)[0] is ClaimOutcome.REVOKED


def test_a_store_from_before_attempt_ids_is_upgraded_and_its_pending_claims_only_go_stale(store: Store) -> None:
    request = _request(store, "t-8")
    now = time.time()
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE used_tokens DROP COLUMN attempt"))
        conn.execute(
            text(
                "INSERT INTO used_tokens (request_id, message_id, action, actor, state, claimed_at)"
                " VALUES (:r, '<old@x>', 'complete', :a, 'pending', :t)"
            ),
            {"r": request.id, "a": ALICE, "t": now},
        )
    store.engine.dispose()  # SQLite caches the old table shape per connection

    store.create_schema()  # what the new version does at start

    assert store.claim(request.id, "a", "<old@x>", "complete", ALICE, now + 1, 600)[0] is ClaimOutcome.BUSY
    assert store.claim(request.id, "a", "<old@x>", "complete", ALICE, now + 700, 600)[0] is ClaimOutcome.TAKEN_OVER
    assert store.finish_claim(request.id, "a", now + 701)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_readiness_probes_at_the_same_moment_all_pass_even_before_the_schema_exists(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """As ``check-config`` does on a new install: the store and the embedded backend are
    probed at once, and no service has created the schema yet."""
    url = f"sqlite:///{tmp_path / 'new.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    fresh = Store(url, busy_timeout=5)

    def probe(_: int) -> Exception | None:
        try:
            fresh.ping()
        except Exception as exc:  # collected for the assertion
            return exc
        return None

    errors = [e for e in all_at_once(6, probe) if e is not None]
    fresh.close()

    assert errors == []


def _answer(request: Request, attempt: str = "a1", comment: str = "ship it") -> Answer:
    return Answer(
        request.id,
        attempt,
        "<m1@example.com>",
        "complete",
        ALICE,
        time.time(),
        request.task_id,
        "completed",
        comment,
        "smtp",
        "TASK_ACTED",
        250,
    )


def _records(store: Store, request_id: str) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        query = text("SELECT reply, code FROM processed_messages WHERE request_id = :r")
        return [tuple(row) for row in conn.execute(query, {"r": request_id})]


def test_an_answer_at_once_writes_claim_task_comment_and_record_together(store: Store) -> None:
    task = store.add_task("Deploy", ALICE, time.time())
    request = _request(store, task.id)

    assert store.answer_at_once(_answer(request)) is True

    claim = store.get_claim(request.id)
    assert claim is not None and claim.done and claim.attempt == "a1"
    stored = store.get_task(task.id)
    assert stored is not None and stored.status == "completed" and stored.acted_by == ALICE
    assert [c.text for c in stored.comments] == ["ship it"]
    assert _records(store, request.id) == [("TASK_ACTED", 250)]


def test_an_answer_at_once_to_a_task_no_longer_in_progress_writes_nothing(store: Store) -> None:
    task = store.add_task("Deploy", ALICE, time.time())
    request = _request(store, task.id)
    store.set_task_status(task.id, "failed", "", "bob@example.com", time.time())

    assert store.answer_at_once(_answer(request)) is False

    assert store.get_claim(request.id) is None  # the general path may still claim it and say why
    stored = store.get_task(task.id)
    assert stored is not None and stored.status == "failed" and stored.comments == ()
    assert _records(store, request.id) == []


def test_an_answer_at_once_leaves_a_request_another_attempt_holds(store: Store) -> None:
    task = store.add_task("Deploy", ALICE, time.time())
    request = _request(store, task.id)
    outcome, _ = store.claim(request.id, "other", "<m1@example.com>", "complete", ALICE, time.time(), 300)
    assert outcome is ClaimOutcome.OURS

    assert store.answer_at_once(_answer(request, attempt="mine")) is False

    claim = store.get_claim(request.id)
    assert claim is not None and claim.attempt == "other" and not claim.done
    stored = store.get_task(task.id)
    assert stored is not None and stored.status == "in_progress"


def test_racing_answers_at_once_let_exactly_one_act(store: Store) -> None:
    task = store.add_task("Deploy", ALICE, time.time())
    request = _request(store, task.id)
    results = all_at_once(8, lambda i: store.answer_at_once(_answer(request, attempt=f"a{i}", comment=f"c{i}")))

    assert sorted(results) == [False] * 7 + [True]
    stored = store.get_task(task.id)
    assert stored is not None and len(stored.comments) == 1
    assert len(_records(store, request.id)) == 1


# N of M: an approval counts once, whatever retries its reply ---------------------------------


def _claimed(store: Store, request: Request, at: float, action: str = "complete") -> str:
    """The claim an answer takes before it counts (as ``Pipeline.act`` does): its attempt id."""
    attempt = new_attempt_id()
    outcome, _ = store.claim(request.id, attempt, f"<{attempt}@x>", action, request.owner, at, STALE_CLAIM_SECONDS)
    assert outcome in (ClaimOutcome.OURS, ClaimOutcome.TAKEN_OVER)  # taken over from a dead attempt's
    return attempt


def test_a_retried_approval_is_counted_once_and_only_the_deciding_answer_may_finish(store: Store) -> None:
    group = store.add_approval_group("t-nofm", 2, 1.0)
    alice, bob, carol = (_asked(store, "t-nofm", f"{n}@example.com", group) for n in ("alice", "bob", "carol"))
    now = time.time()
    for request in (alice, bob, carol):
        _claimed(store, request, now)

    assert store.count_approval(group, alice.id, alice.owner, now + 1) == 1
    # Alice's reply again (her first attempt died before it answered): still one approval.
    assert store.count_approval(group, alice.id, alice.owner, now + 2) == 1
    assert store.count_approval(group, bob.id, bob.owner, now + 3) == 2  # decides
    # Bob's own retry may finish telling the backend; Carol may not act meanwhile.
    assert store.count_approval(group, bob.id, bob.owner, now + 4) == 2
    assert store.count_approval(group, carol.id, carol.owner, now + 5) is None

    # The backend could not be told: Bob's decision and approval are taken back, once.
    store.undo_group_decision(group, bob.id, counted=True)
    store.undo_group_decision(group, bob.id, counted=True)
    assert store.count_approval(group, carol.id, carol.owner, now + 6) == 2


def test_a_fail_decides_once_and_its_retry_may_finish(store: Store) -> None:
    group = store.add_approval_group("t-nofm-fail", 2, 1.0)
    dave, erin = (_asked(store, "t-nofm-fail", f"{n}@example.com", group) for n in ("dave", "erin"))
    now = time.time()
    _claimed(store, dave, now, "fail")
    _claimed(store, erin, now)

    assert store.decide_group_fail(group, dave.id, dave.owner, now + 1) is True
    assert store.decide_group_fail(group, dave.id, dave.owner, now + 2) is True  # its retry
    assert store.decide_group_fail(group, erin.id, erin.owner, now + 3) is False
    assert store.count_approval(group, erin.id, erin.owner, now + 4) is None


def _state(store: Store, request: Request, at: float) -> GroupState:
    found = store.approval_group_of(request.id, at)
    assert found is not None
    return found.state


def _bob_deciding(store: Store, task_id: str) -> tuple[str, tuple[Request, Request], str, float]:
    """A 2-of-3 group of ``task_id``: Alice's approval counted and finished, Bob's deciding
    approval counted under his claim (the attempt returned), not finished; Carol not yet."""
    group = store.add_approval_group(task_id, 2, 1.0)
    alice, bob, carol = (_asked(store, task_id, f"{n}@example.com", group) for n in ("alice", "bob", "carol"))
    now = time.time()
    alices = _claimed(store, alice, now)
    assert store.count_approval(group, alice.id, alice.owner, now) == 1
    assert store.finish_claim(alice.id, alices, now)
    bobs = _claimed(store, bob, now + 1)
    assert store.count_approval(group, bob.id, bob.owner, now + 1) == 2
    return group, (bob, carol), bobs, now


def test_a_decision_is_final_only_once_its_answer_told_the_backend(store: Store) -> None:
    """Decided is not final: while Bob's deciding answer is telling the backend, Carol's is
    neither counted nor refused for good, and the group still stands in anyone's way."""
    group, (bob, carol), bobs, now = _bob_deciding(store, "t-deciding")
    _claimed(store, carol, now + 2, "fail")

    assert _state(store, carol, now + 2) is GroupState.DECIDING
    assert store.decide_group_fail(group, carol.id, carol.owner, now + 2) is False
    assert store.count_approval(group, carol.id, carol.owner, now + 2) is None
    assert [g.id for g in store.task_approvals("t-deciding", now + 2).groups] == [group]

    assert store.finish_claim(bob.id, bobs, now + 3)
    assert _state(store, carol, now + 3) is GroupState.DECIDED
    assert store.task_approvals("t-deciding", now + 3).groups == ()
    # Final now, however long ago Bob's claim was taken.
    assert _state(store, carol, now + 10 * STALE_CLAIM_SECONDS) is GroupState.DECIDED
    assert store.decide_group_fail(group, carol.id, carol.owner, now + 10 * STALE_CLAIM_SECONDS) is False


def test_a_decision_whose_attempt_died_is_taken_back_by_the_next_answer(store: Store) -> None:
    """Bob's deciding attempt died (its claim went stale), and the backend can be read (it
    did not show his action, ``Pipeline._stale_decision_acted``): Carol's fail decides
    instead, and Bob's dead claim is given back, so that attempt can never finish it; Bob's
    retry is told."""
    group, (bob, carol), bobs, now = _bob_deciding(store, "t-died")

    later = now + 1 + STALE_CLAIM_SECONDS + 1
    assert _state(store, carol, later - 2) is GroupState.DECIDING
    assert _state(store, carol, later) is GroupState.OPEN
    carols = _claimed(store, carol, later, "fail")
    assert store.decide_group_fail(group, carol.id, carol.owner, later, take_back_stale=True) is True

    assert store.get_claim(bob.id) is None
    assert not store.finish_claim(bob.id, bobs, later)  # the dead attempt, woken up, cannot finish
    found = store.approval_group(group, later)
    assert found is not None
    decided = found[0]
    assert (decided.decision, decided.decided_by, decided.approvals) == ("fail", carol.owner, 1)
    assert decided.state is GroupState.DECIDING
    _claimed(store, bob, later + 1)
    assert store.count_approval(group, bob.id, bob.owner, later + 1) is None  # Carol's is being told
    assert store.finish_claim(carol.id, carols, later + 2)
    assert _state(store, bob, later + 2) is GroupState.DECIDED


def test_a_decision_whose_attempt_died_stands_where_the_backend_cannot_say_whether_it_acted(store: Store) -> None:
    """The webhook cannot be asked whether Bob's deciding approval acted before his attempt
    died: another request's answer, fail or approval, does not take it back (nothing of the
    group or of Bob's claim changes) but learns that its outcome is unknown; Bob's own
    retry takes his dead claim over and decides again, as his request."""
    group, (bob, carol), bobs, now = _bob_deciding(store, "t-unknown")
    later = now + 1 + STALE_CLAIM_SECONDS + 1
    _claimed(store, carol, later, "fail")

    with pytest.raises(SiblingOutcomeUnknown) as failing:
        store.decide_group_fail(group, carol.id, carol.owner, later)
    with pytest.raises(SiblingOutcomeUnknown) as approving:
        store.count_approval(group, carol.id, carol.owner, later)
    for unknown in (failing.value, approving.value):
        assert (unknown.task_id, unknown.request_id) == ("t-unknown", bob.id)
    found = store.approval_group(group, later)
    assert found is not None
    assert (found[0].decision, found[0].decided_request, found[0].approvals) == ("complete", bob.id, 2)
    held = store.get_claim(bob.id)
    assert held is not None and (held.state, held.attempt) == ("pending", bobs)

    _claimed(store, bob, later + 1)  # his sender's retry: the dead claim taken over
    assert store.count_approval(group, bob.id, bob.owner, later + 1) == 2


def test_a_claim_exactly_stale_claim_seconds_old_is_alive_to_the_pipeline_as_to_the_store(
    store: Store, tmp_path: Path
) -> None:
    """When a claim is dead is one rule (``claim_stale``), strict, as ``claim``'s take-over.
    Bob's deciding claim exactly STALE_CLAIM_SECONDS old still stands for the store (his
    retry is busy, his decision is being told, Carol's fail does not take it back) and for
    the pipeline, which judges the claim it reads itself: it does not finish it on Bob's
    behalf though the task shows his approval acted. A second later it is dead to both."""
    from rc_mta.app import Service
    from rc_mta.config import Settings, SigningConfig, StoreConfig

    task = store.add_task("Deploy", ALICE, time.time())
    group, (bob, carol), bobs, _ = _bob_deciding(store, task.id)
    assert store.set_task_status(task.id, "completed", "Approved", bob.owner, time.time())  # acted, unrecorded
    held = store.get_claim(bob.id)
    assert held is not None
    at = held.claimed_at + STALE_CLAIM_SECONDS
    assert at - STALE_CLAIM_SECONDS == held.claimed_at  # exactly at the limit, no rounding
    clock = [at]
    service = Service.open(
        Settings(store=StoreConfig(url=store.url), signing=SigningConfig(generated_key_file=tmp_path / "key"))
    )
    service.pipeline.clock = lambda: clock[0]
    found = store.approval_group_of(carol.id, at + 1)  # a group read a moment later: open, Bob's claim dead
    assert found is not None and found.state is GroupState.OPEN
    try:
        retry = store.claim(bob.id, new_attempt_id(), "<retry@x>", "complete", bob.owner, at, STALE_CLAIM_SECONDS)
        assert retry[0] is ClaimOutcome.BUSY
        assert _state(store, carol, at) is GroupState.DECIDING
        assert store.decide_group_fail(group, carol.id, carol.owner, at) is False
        assert store.revoke_unanswered_request(bob.id, at, STALE_CLAIM_SECONDS) is False
        assert asyncio.run(service.pipeline._stale_decision_acted(carol, found)) is False
        still = store.get_claim(bob.id)
        assert still is not None and (still.state, still.attempt) == ("pending", bobs)

        clock[0] = at + 1
        assert asyncio.run(service.pipeline._stale_decision_acted(carol, found)) is True
        recorded = store.get_claim(bob.id)
        assert recorded is not None and recorded.done and recorded.attempt == bobs
    finally:
        service.close()


def test_the_deciding_requests_next_attempt_decides_anew(store: Store) -> None:
    """Bob approved and decided, his attempt died; his next reply says fail: it decides."""
    group = store.add_approval_group("t-anew", 2, 1.0)
    alice, bob = (_asked(store, "t-anew", f"{n}@example.com", group) for n in ("alice", "bob"))
    now = time.time()
    alices = _claimed(store, alice, now)
    assert store.count_approval(group, alice.id, alice.owner, now) == 1
    assert store.finish_claim(alice.id, alices, now)
    _claimed(store, bob, now)
    assert store.count_approval(group, bob.id, bob.owner, now) == 2

    later = now + STALE_CLAIM_SECONDS + 1
    _claimed(store, bob, later, "fail")  # the stale claim taken over
    assert store.decide_group_fail(group, bob.id, bob.owner, later) is True
    found = store.approval_group(group, later)
    assert found is not None and (found[0].decision, found[0].approvals) == ("fail", 1)


def test_an_undo_leaves_a_decision_that_is_no_longer_its_own(store: Store) -> None:
    group = store.add_approval_group("t-undo", 2, 1.0)
    bob, carol = (_asked(store, "t-undo", f"{n}@example.com", group) for n in ("bob", "carol"))
    now = time.time()
    _claimed(store, bob, now)
    assert store.decide_group_fail(group, bob.id, bob.owner, now) is True
    later = now + STALE_CLAIM_SECONDS + 1
    _claimed(store, carol, later, "fail")
    assert store.decide_group_fail(group, carol.id, carol.owner, later, take_back_stale=True) is True  # Bob's died

    store.undo_group_decision(group, bob.id, counted=False)  # Bob's attempt, late, could not tell
    found = store.approval_group(group, later)
    assert found is not None and (found[0].decision, found[0].decided_request) == ("fail", carol.id)


def _asked(store: Store, task_id: str, owner: str, group: str | None = None, expires_in: float = 60) -> Request:
    now = time.time()
    request = Request(new_request_id(), task_id, owner, "t", now, now + expires_in, None, None)
    if group is not None:
        store.add_approval_member(request.id, group)
    store.add_request(request)
    return request


def _one_person_approves_twice_at_once(store: Store, task_id: str) -> None:
    group = store.add_approval_group(task_id, 2, 1.0)
    first, second = _asked(store, task_id, ALICE, group), _asked(store, task_id, ALICE, group)
    bob = _asked(store, task_id, "bob@example.com", group)
    counts = all_at_once(2, lambda i: store.count_approval(group, (first, second)[i].id, ALICE, time.time()))

    assert counts == [1, 1], counts
    found = store.approval_group(group)
    assert found is not None and found[0].approvals == 1
    assert store.approval_standing(first.id, task_id, time.time()).owner_counted != (
        store.approval_standing(second.id, task_id, time.time()).owner_counted
    )
    assert store.count_approval(group, bob.id, "bob@example.com", time.time()) == 2  # Bob's decides


def test_one_person_asked_twice_in_a_group_is_counted_once_even_at_the_same_moment(store: Store) -> None:
    for round_ in range(5):
        _one_person_approves_twice_at_once(store, f"t-twice-{round_}")


def test_a_group_stands_in_the_way_while_one_of_its_requests_may_still_be_answered(store: Store) -> None:
    task_id = "t-standing"
    alone = _asked(store, task_id, "dave@example.com")
    group = store.add_approval_group(task_id, 2, 1.0)
    alice, bob = _asked(store, task_id, ALICE, group), _asked(store, task_id, "bob@example.com", group)
    _asked(store, task_id, "carol@example.com", group, expires_in=-1)  # expired: answers no one

    found = store.task_approvals(task_id, time.time())
    assert ([g.id for g in found.groups], found.alone) == ([group], (alone.id,))
    standing = store.approval_standing(alone.id, task_id, time.time())
    assert (standing.group, standing.blocking and standing.blocking.id) == (None, group)
    member = store.approval_standing(alice.id, task_id, time.time())
    assert member.group is not None and (member.group.id, member.blocking) == (group, None)

    # Alice approves (answered: no longer answerable), Bob's is withdrawn: nothing of the group is left.
    assert store.claim(alice.id, "attempt-a", "<m1@x>", "complete", ALICE, time.time(), 600)[0] is ClaimOutcome.OURS
    assert store.count_approval(group, alice.id, ALICE, time.time()) == 1
    assert store.finish_claim(alice.id, "attempt-a", time.time())
    assert [g.id for g in store.task_approvals(task_id, time.time()).groups] == [group]
    assert store.revoke_unanswered_request(bob.id, time.time(), 600)

    assert store.task_approvals(task_id, time.time()).groups == ()
    assert store.approval_standing(alone.id, task_id, time.time()).blocking is None


def test_an_answer_at_once_asks_as_it_writes_whether_a_group_may_still_decide_the_task(store: Store) -> None:
    """``answer_at_once`` applies exactly where ``approval_standing`` would let the answer act
    alone: the pipeline reads the standing only when it did not."""
    task = store.add_task("Deploy", ALICE, time.time())
    alone = _asked(store, task.id, ALICE)
    _asked(store, task.id, "erin@example.com", store.add_approval_group(task.id, 1, 1.0))  # one decides: no N of M
    group = store.add_approval_group(task.id, 2, 2.0)
    bob, carol = (_asked(store, task.id, f"{n}@example.com", group) for n in ("bob", "carol"))
    assert store.approval_standing(alone.id, task.id, time.time()).blocking is not None

    assert store.answer_at_once(_answer(alone)) is False

    assert store.get_claim(alone.id) is None and _records(store, alone.id) == []
    stored = store.get_task(task.id)
    assert stored is not None and stored.status == "in_progress" and stored.comments == ()

    for member in (bob, carol):  # nothing of the group is left to decide
        assert store.revoke_unanswered_request(member.id, time.time(), 600)
    assert store.approval_standing(alone.id, task.id, time.time()) == ApprovalStanding(None)

    assert store.answer_at_once(_answer(alone)) is True

    stored = store.get_task(task.id)
    assert stored is not None and (stored.status, stored.acted_by) == ("completed", ALICE)
    assert _records(store, alone.id) == [("TASK_ACTED", 250)]


def test_an_answer_to_a_task_without_groups_stands_alone_after_one_statement(store: Store) -> None:
    """Every answer asks where it stands; nearly every task has no N-of-M group."""
    alone = _asked(store, "t-no-groups", ALICE)
    statements: list[str] = []

    def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", _count)
    try:
        standing = store.approval_standing(alone.id, alone.task_id, time.time())
    finally:
        event.remove(store.engine, "before_cursor_execute", _count)

    assert standing == ApprovalStanding(None)
    assert len(statements) == 1, statements


def test_a_read_for_the_event_loop_is_sent_to_a_thread_rather_than_open_a_connection(tmp_path: Path) -> None:
    """Opening a connection to a SQLite file may sleep in the busy handler (here: another
    process holds the file in exclusive locking mode); a read on the loop never does."""
    path = tmp_path / "store.db"
    store = Store(f"sqlite:///{path}", busy_timeout=2)
    store.create_schema()
    request = _request(store, "t-loop")
    store.engine.dispose()  # no connection open: as at start, or once the pool was emptied
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("DELETE FROM store_probe")  # a write: the exclusive lock is held from now on
    try:
        started = time.monotonic()
        with pytest.raises(ReadWouldWait):
            store.get_request(request.id, waits=False)
        assert time.monotonic() - started < 0.5
    finally:
        holder.close()
    assert store.get_request(request.id) == request  # where waiting is harmless: opens one
    assert store.get_request(request.id, waits=False) == request  # and on the loop, on that one
    store.close()


def test_a_store_from_before_the_task_index_of_approval_groups_gets_it(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_approval_groups_task_id"))
    store.engine.dispose()

    store.create_schema()  # what the new version does at start

    with store.engine.connect() as conn:
        indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("approval_groups")}
    assert indexes["ix_approval_groups_task_id"] == ["task_id"]
