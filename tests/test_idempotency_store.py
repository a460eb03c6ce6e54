"""Idempotency-Keys in the store (POST /v1/requests), on SQLite and on PostgreSQL: of calls
with one key, on one instance or several, one runs; its answer is kept for the retries."""

from __future__ import annotations

import time

from racing import all_at_once
from test_store import store as store  # SQLite and PostgreSQL

from rc_mta.store import IDEMPOTENCY_KEY_TTL, IDEMPOTENCY_LEASE, IdempotentAnswer, KeyState, Store

SCOPE = "a" * 32


def test_of_calls_with_one_key_at_once_exactly_one_runs(store: Store) -> None:
    now = time.time()
    found = all_at_once(8, lambda i: store.reserve_idempotency_key(SCOPE, "k", "body", f"call-{i}", now).state)

    assert sorted(s.value for s in found) == sorted([KeyState.NEW.value] + [KeyState.RUNNING.value] * 7)


def test_a_finished_call_is_replayed_for_the_same_body_and_refused_for_another(store: Store) -> None:
    now = time.time()
    assert store.reserve_idempotency_key(SCOPE, "k", "body", "first", now).state is KeyState.NEW
    assert store.finish_idempotency_key(SCOPE, "k", "first", 201, '{"made": 1}')

    assert store.reserve_idempotency_key(SCOPE, "k", "body", "retry", now + 1) == IdempotentAnswer(
        KeyState.DONE, 201, '{"made": 1}'
    )
    assert store.reserve_idempotency_key(SCOPE, "k", "other", "retry", now + 1).state is KeyState.MISMATCH
    assert store.reserve_idempotency_key("b" * 32, "k", "other", "theirs", now + 1).state is KeyState.NEW


def test_a_key_given_back_after_an_error_runs_again(store: Store) -> None:
    now = time.time()
    store.reserve_idempotency_key(SCOPE, "k", "body", "first", now)
    store.release_idempotency_key(SCOPE, "k", "first")

    assert store.reserve_idempotency_key(SCOPE, "k", "other body", "retry", now).state is KeyState.NEW


def test_a_key_is_forgotten_after_its_time(store: Store) -> None:
    then = time.time() - IDEMPOTENCY_KEY_TTL - 1
    store.reserve_idempotency_key(SCOPE, "k", "body", "first", then)
    store.finish_idempotency_key(SCOPE, "k", "first", 201, "{}")

    assert store.reserve_idempotency_key(SCOPE, "k", "other body", "later", time.time()).state is KeyState.NEW


def test_a_call_cut_off_holds_its_key_until_its_lease_runs_out_then_a_retry_takes_it(store: Store) -> None:
    now = time.time()
    store.reserve_idempotency_key(SCOPE, "k", "body", "died", now)

    assert store.reserve_idempotency_key(SCOPE, "k", "body", "early", now + IDEMPOTENCY_LEASE - 1).state is (
        KeyState.RUNNING
    )
    late = now + IDEMPOTENCY_LEASE + 1
    assert store.reserve_idempotency_key(SCOPE, "k", "body", "late", late).state is KeyState.TAKEN_OVER
    assert not store.finish_idempotency_key(SCOPE, "k", "died", 201, '{"made": "twice"}')
    assert store.finish_idempotency_key(SCOPE, "k", "late", 201, '{"made": 1}')
    assert store.reserve_idempotency_key(SCOPE, "k", "body", "retry", late).response == '{"made": 1}'
