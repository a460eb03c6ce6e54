"""The outbound queue's table, on SQLite and on PostgreSQL: of several senders asking at
once only one takes a mail, a lease that runs out hands it on, and a deferred mail waits
for its time."""

from __future__ import annotations

import threading
import time

from test_store import store as store  # the same store fixture: SQLite and PostgreSQL

from rc_mta.store import Delivery, Request, Store
from rc_mta.tokens import new_request_id


def _queued(store: Store, now: float) -> Request:
    request = Request(new_request_id(), "t-1", "alice@example.com", "t", now, now + 3600, None, None)
    # Held by its creator for a moment (its first attempt), as the service does.
    store.add_request_with_mail(request, b"Subject: hi\r\n\r\nbody\r\n", "rc-mta@reply.test", now, "creator", 1)
    return request


def test_a_new_mail_is_its_creators_until_the_first_attempt_lease_ends(store: Store) -> None:
    now = time.time()
    request = _queued(store, now)

    assert store.claim_outbound("loop", now, 60, 10) == []
    [mail] = store.claim_outbound("loop", now + 2, 60, 10)
    assert mail.request_id == request.id and mail.state is Delivery.QUEUED


def test_racing_senders_take_a_queued_mail_once(store: Store) -> None:
    start = time.time()
    request = _queued(store, start)
    now = start + 2
    taken: list[str] = []
    barrier = threading.Barrier(6)

    def sender(i: int) -> None:
        barrier.wait()
        for mail in store.claim_outbound(f"sender-{i}", now, 60, 10):
            taken.append(f"sender-{i}:{mail.request_id}")

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(taken) == 1 and taken[0].endswith(request.id)


def test_a_mail_held_by_a_sender_that_died_is_taken_after_its_lease(store: Store) -> None:
    now = time.time() + 2
    request = _queued(store, now - 2)
    [mail] = store.claim_outbound("dead", now, 60, 10)

    assert store.claim_outbound("alive", now + 59, 60, 10) == []
    [again] = store.claim_outbound("alive", now + 61, 60, 10)

    assert again.request_id == mail.request_id == request.id
    # The first sender, back too late, can no longer record an outcome over the second's.
    assert not store.settle_outbound(request.id, "dead", Delivery.SENT, "250 late", now + 62)
    assert store.settle_outbound(request.id, "alive", Delivery.SENT, "250 OK", now + 62)
    stored = store.get_outbound(request.id)
    assert stored is not None and (stored.state, stored.last_answer, stored.attempts) == (Delivery.SENT, "250 OK", 1)


def test_a_deferred_mail_waits_for_its_next_attempt_and_sent_is_never_taken_again(store: Store) -> None:
    created = time.time()
    request = _queued(store, created)
    now = created + 2
    assert store.settle_outbound(
        request.id, "creator", Delivery.DEFERRED, "451 4.3.0 later", now, next_attempt_at=now + 30
    )

    assert store.claim_outbound("s", now + 29, 60, 10) == []
    summary = store.outbound_summary()
    assert summary.counts[Delivery.DEFERRED] == 1 and summary.oldest_pending_at == created
    [mail] = store.claim_outbound("s", now + 31, 60, 10)
    assert mail.attempts == 1
    assert store.settle_outbound(request.id, "s", Delivery.SENT, "250 OK", now + 31)

    assert store.claim_outbound("s", now + 10_000, 60, 10) == []
    summary = store.outbound_summary()
    assert summary.counts[Delivery.SENT] == 1 and summary.oldest_pending_at is None
