"""Idempotency-Keys in the store (POST /v1/requests), on SQLite and on PostgreSQL: of calls
with one key, on one instance or several, one runs; its answer is kept for the retries."""

from __future__ import annotations

import asyncio
import time

from racing import all_at_once
from test_store import store as store  # SQLite and PostgreSQL

from rc_mta.api import hold_idempotency_key
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


def test_a_running_call_renews_its_hold_so_a_retry_past_one_lease_does_not_take_it_over(store: Store) -> None:
    now = time.time()
    store.reserve_idempotency_key(SCOPE, "k", "body", "slow", now)
    assert store.renew_idempotency_key(SCOPE, "k", "slow", now + IDEMPOTENCY_LEASE - 10)

    retry = store.reserve_idempotency_key(SCOPE, "k", "body", "retry", now + IDEMPOTENCY_LEASE + 1)
    assert retry.state is KeyState.RUNNING  # still its: not run again
    assert not store.renew_idempotency_key(SCOPE, "k", "someone-else", now + IDEMPOTENCY_LEASE + 2)
    assert store.finish_idempotency_key(SCOPE, "k", "slow", 201, "{}")


def test_the_api_keeps_renewing_a_running_calls_hold_until_it_ends(store: Store) -> None:
    started = time.time()
    store.reserve_idempotency_key(SCOPE, "k", "body", "slow", started)

    async def a_slow_call() -> None:
        holding = asyncio.create_task(hold_idempotency_key(store, SCOPE, "k", "slow", every=0.05))
        await asyncio.sleep(0.3)
        holding.cancel()

    asyncio.run(a_slow_call())
    # Past the first lease, though within the renewed one: the call's still.
    retry = store.reserve_idempotency_key(SCOPE, "k", "body", "retry", started + IDEMPOTENCY_LEASE + 0.1)
    assert retry.state is KeyState.RUNNING
