"""What several instances on one store share besides the exactly-once claims: who handles
a message of a polled mailbox, and the rate-limit counters (PostgreSQL only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import wait_until
from racing import all_at_once
from sqlalchemy import select
from test_store import store as store  # the same store fixture: SQLite and PostgreSQL

from rc_mta.ratelimit import SharedRateLimiter
from rc_mta.store import MAILBOX_NAME_LENGTH, MailboxMessage, SharedCounters, Store, mailbox_claims

T = TypeVar("T")

MESSAGE = MailboxMessage("imap://replies@imap.example.test/INBOX", 4_000_000_000, 7)  # UIDVALIDITY > 2**31
STALE = 600.0


def test_racing_pollers_get_a_mailbox_message_once(store: Store) -> None:
    now = time.time()
    claims = all_at_once(6, lambda i: store.claim_mailbox_message(MESSAGE, f"poller-{i}", now, STALE).ours)

    assert sorted(claims) == [False] * 5 + [True]


def test_a_poller_keeps_its_own_claim_and_others_take_it_only_when_stale(store: Store) -> None:
    now = time.time()
    assert store.claim_mailbox_message(MESSAGE, "a", now, STALE).ours

    assert store.claim_mailbox_message(MESSAGE, "a", now + 1, STALE).ours  # a reconnect of the same process
    held = store.claim_mailbox_message(MESSAGE, "b", now + 2, STALE)
    assert not held.ours and not held.filed  # "b" looks again later: "a" may die
    assert store.claim_mailbox_message(MESSAGE, "b", now + STALE + 10, STALE).ours  # "a" died
    assert not store.claim_mailbox_message(MESSAGE, "a", now + STALE + 11, STALE).ours


def test_a_handled_message_is_only_filed_by_whoever_takes_it_over(store: Store) -> None:
    now = time.time()
    store.claim_mailbox_message(MESSAGE, "a", now, STALE)
    store.settle_mailbox_message(MESSAGE, "a", "rejected", now)  # then "a" died before filing it

    taken = store.claim_mailbox_message(MESSAGE, "b", now + STALE + 1, STALE)

    assert taken.ours and taken.disposition == "rejected"  # file it as decided, don't handle it again


def test_a_filed_message_is_never_taken_again_until_pruned(store: Store) -> None:
    now = time.time()
    store.claim_mailbox_message(MESSAGE, "a", now, STALE)
    store.mailbox_message_filed(MESSAGE, "a", now)

    assert not store.claim_mailbox_message(MESSAGE, "a", now + 1, STALE).ours
    late = store.claim_mailbox_message(MESSAGE, "b", now + 10 * STALE, STALE)
    assert not late.ours and late.filed  # no poller needs to look at it again
    assert store.prune_mailbox_claims(older_than=now + 1) == 1
    assert store.claim_mailbox_message(MESSAGE, "b", now + 10 * STALE, STALE).ours


def test_a_released_message_is_free_for_any_poller(store: Store) -> None:
    now = time.time()
    store.claim_mailbox_message(MESSAGE, "a", now, STALE)
    store.release_mailbox_message(MESSAGE, "b")  # not b's to give back
    assert not store.claim_mailbox_message(MESSAGE, "b", now, STALE).ours

    store.release_mailbox_message(MESSAGE, "a")

    assert store.claim_mailbox_message(MESSAGE, "b", now, STALE).ours


def test_a_mailbox_named_longer_than_its_column_is_claimed_under_a_short_name_every_instance_agrees_on(
    store: Store,
) -> None:
    """A folder name of 600 characters: its claims are kept under a name that fits the
    column, its start and a digest of all of it, the same for another instance (another
    Store on the database); a folder that differs only after the column's length is another."""
    now = time.time()
    server = "imap://replies@imap.example.test/"
    long = MailboxMessage(server + "Replies/" + "x" * 600, 1, 7)
    beside = MailboxMessage(server + "Replies/" + "x" * 600 + "y", 1, 7)
    assert store.claim_mailbox_message(long, "a", now, STALE).ours
    assert store.claim_mailbox_message(beside, "b", now, STALE).ours
    store.settle_mailbox_message(long, "a", "processed", now)
    store.mailbox_message_filed(long, "a", now)

    other = Store(store.engine.url.render_as_string(hide_password=False))
    try:
        late = other.claim_mailbox_message(long, "c", now + 10 * STALE, STALE)
        assert not late.ours and late.filed  # filed by "a": the other instance names it alike
        with other.engine.connect() as conn:
            names = conn.execute(select(mailbox_claims.c.mailbox)).scalars().all()
    finally:
        other.close()
    assert len(names) == 2 and len(set(names)) == 2
    assert all(len(n) <= MAILBOX_NAME_LENGTH and n.startswith(server + "Replies/xxx") for n in names), names
    assert not store.claim_mailbox_message(beside, "a", now + 1, STALE).ours  # still b's


# Rate-limit counters ------------------------------------------------------------------


@pytest.fixture
def counters(pg_url: str) -> Iterator[Callable[[float], SharedCounters]]:
    """Opens counters on one PostgreSQL schema, each on its own connection, as instances do."""
    shared = Store(pg_url)
    shared.create_schema()
    opened: list[SharedCounters] = []

    def open_counters(window: float = 60.0) -> SharedCounters:
        made = shared.shared_counters(window, timeout=2.0)
        assert made is not None
        opened.append(made)
        return made

    yield open_counters
    for c in opened:
        c.close()
    shared.close()


def test_sqlite_has_no_shared_counters(tmp_path: Path) -> None:
    single = Store(f"sqlite:///{tmp_path}/store.db")
    assert single.shared_counters(60.0, timeout=1.0) is None


def test_instances_counting_at_once_admit_exactly_the_limit(counters: Callable[[float], SharedCounters]) -> None:
    instances = [counters(60.0) for _ in range(4)]

    admitted = all_at_once(4, lambda i: sum(instances[i].add("messages", "192.0.2.1", 30) for _ in range(20)))

    assert sum(admitted) == 30
    assert instances[0].count("messages", "192.0.2.1") == 30


def test_events_leave_the_count_when_their_window_has_passed(counters: Callable[[float], SharedCounters]) -> None:
    c = counters(1.0)
    assert [c.add("messages", "192.0.2.1", 2) for _ in range(3)] == [True, True, False]
    c.add("auth_failures", "192.0.2.1")
    assert c.count("auth_failures", "192.0.2.1") == 1

    time.sleep(1.2)
    c.prune()

    assert c.count("auth_failures", "192.0.2.1") == 0
    assert c.add("messages", "192.0.2.1", 2)


# The limiter on the event loop ------------------------------------------------------------


@pytest.fixture
def locked_counters(pg_url: str) -> Iterator[None]:
    """The shared counts held by someone else's transaction: every question waits for it."""
    import psycopg

    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE rate_counts IN ACCESS EXCLUSIVE MODE")
        yield


def test_the_loop_runs_on_while_a_rate_check_waits_for_the_store(
    counters: Callable[[float], SharedCounters], pg_url: str, locked_counters: None
) -> None:
    limiter = SharedRateLimiter(60.0, counters(60.0), timeout=1.0)
    ran: list[str] = []

    async def other_session() -> None:
        await asyncio.sleep(0)
        ran.append("another session")

    async def check() -> bool:
        other = asyncio.create_task(other_session())
        refused = await limiter.hit("messages", "192.0.2.1", 2)
        ran.append("rate check")
        await other
        return refused

    try:
        refused = asyncio.run(check())
    finally:
        limiter.close()

    assert ran == ["another session", "rate check"]  # served while the store was asked
    assert refused is False  # the store did not answer: this instance's own count decides


def test_a_connection_is_decided_at_once_and_counted_in_the_store_meanwhile(
    counters: Callable[[float], SharedCounters], pg_url: str
) -> None:
    import psycopg

    other_instance = counters(60.0)
    limiter = SharedRateLimiter(60.0, counters(60.0), timeout=30.0)
    try:
        with psycopg.connect(pg_url) as holder:
            holder.execute("LOCK TABLE rate_counts IN ACCESS EXCLUSIVE MODE")
            # The store cannot answer for now: the greeting is decided without it.
            assert limiter.hit_now("connections", "192.0.2.7", 3) is False
        wait_until(lambda: other_instance.count("connections", "192.0.2.7") == 1, what="the count to reach the store")

        assert other_instance.add("connections", "192.0.2.7", 3) and other_instance.add("connections", "192.0.2.7", 3)
        # The limit is reached across instances (this one counted 1 of 3 itself): the next
        # connection here still slips through, and the store's "over" comes back meanwhile
        # (``over`` asks on the same worker, after it) ...
        assert limiter.hit_now("connections", "192.0.2.7", 3) is False
        assert asyncio.run(limiter.over("connections", "192.0.2.7", 3)) is True
        # ... so the one after is refused, though this instance counted only 2 itself.
        assert limiter.hit_now("connections", "192.0.2.7", 3) is True
    finally:
        limiter.close()
    assert other_instance.count("connections", "192.0.2.7") == 3  # refused ones are not counted
