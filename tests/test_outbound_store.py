"""The outbound queue's table, on SQLite and on PostgreSQL: of several senders asking at
once only one takes a mail, a lease that runs out hands it on, a deferred mail waits for
its time, a reminder is one more mail of its request (once, whoever queues it), and a
store from before reminders were queued is re-keyed as it starts."""

from __future__ import annotations

import time

from racing import all_at_once
from sqlalchemy import Column, Float, ForeignKey, Integer, LargeBinary, MetaData, String, Table, Text, inspect, text
from test_store import store as store  # the same store fixture: SQLite and PostgreSQL

from rc_mta.api import request_json
from rc_mta.refusal_notices import notice_kind
from rc_mta.store import Delivery, NoticeQueued, Request, Store, requests
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
    claimed = all_at_once(6, lambda i: store.claim_outbound(f"sender-{i}", now, 60, 10))
    taken = [f"sender-{i}:{mail.request_id}" for i, mails in enumerate(claimed) for mail in mails]

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


def _reminder(store: Store, request: Request, holder: str, now: float) -> None:
    """Reminder 1 of ``request`` taken by ``holder`` and queued, as a follow-up round does."""
    assert store.claim_followup(request.id, "reminder-1", holder, now, 300)
    mail = store.queue_followup_mail(request, "reminder-1", holder, b"Subject: again\r\n\r\n", "rc@x", now, "q", 1)
    assert mail is not None and (mail.kind, mail.name) == ("reminder-1", f"{request.id}-reminder-1")


def test_a_reminder_is_a_mail_of_its_own_beside_the_request_mail(store: Store) -> None:
    now = time.time()
    request = _queued(store, now)
    _reminder(store, request, "round", now)

    taken = store.claim_outbound("loop", now + 2, 60, 10)
    assert sorted(mail.kind for mail in taken) == ["reminder-1", "request"]
    assert all(mail.request_id == request.id for mail in taken)
    assert store.settle_outbound(request.id, "loop", Delivery.FAILED, "550 no", now + 3, kind="reminder-1")
    assert store.settle_outbound(request.id, "loop", Delivery.SENT, "250 OK", now + 3)

    first, second = store.outbound_mails(request.id)
    assert (first.kind, first.state, first.last_answer) == ("request", Delivery.SENT, "250 OK")
    assert (second.kind, second.state, second.last_answer) == ("reminder-1", Delivery.FAILED, "550 no")
    assert store.followup_state(request.id, "reminder-1") == "done"  # queued and done in one go


def test_a_reminder_is_queued_once_even_when_its_step_was_taken_over(store: Store) -> None:
    """The first holder stalled past the stale time: the one that took the step over queues
    the reminder, the first one's late attempt writes nothing."""
    now = time.time()
    request = _queued(store, now)
    assert store.claim_followup(request.id, "reminder-1", "slow", now, 300)
    assert store.claim_followup(request.id, "reminder-1", "fast", now + 301, 300)

    assert store.queue_followup_mail(request, "reminder-1", "slow", b"x", "rc@x", now + 302, "q1", 60) is None
    assert store.queue_followup_mail(request, "reminder-1", "fast", b"x", "rc@x", now + 302, "q2", 60) is not None
    assert store.queue_followup_mail(request, "reminder-1", "fast", b"x", "rc@x", now + 303, "q2", 60) is None

    assert [mail.kind for mail in store.outbound_mails(request.id)] == ["request", "reminder-1"]


def _old_outbound_table(store: Store, request: Request, now: float) -> None:
    """``outbound_queue`` as versions before queued reminders made it (keyed by request), with
    one mail in it."""
    old = MetaData()
    requests.to_metadata(old)
    table = Table(
        "outbound_queue",
        old,
        Column("request_id", String(16), ForeignKey("requests.id"), primary_key=True),
        Column("message", LargeBinary, nullable=False),
        Column("sender", String(320), nullable=False),
        Column("recipient", String(320), nullable=False),
        Column("state", String(16), nullable=False, index=True),
        Column("attempts", Integer, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("next_attempt_at", Float, nullable=False),
        Column("last_answer", Text),
        Column("done_at", Float),
        Column("path", Text),
        Column("holder", String(32)),
        Column("lease_until", Float),
    )
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE outbound_queue"))
        table.create(conn)
        conn.execute(
            table.insert().values(
                request_id=request.id,
                message=b"Subject: hi\r\n\r\n",
                sender="rc@x",
                recipient=request.owner,
                state="deferred",
                attempts=2,
                created_at=now,
                next_attempt_at=now + 30,
                last_answer="451 later",
            )
        )
    store.engine.dispose()  # SQLite caches the old table shape per connection


def test_a_refused_replys_notice_is_queued_once_by_racing_pollers_and_a_few_an_hour_per_address(
    store: Store,
) -> None:
    now = time.time()
    request = _queued(store, now)
    notice = b"Subject: Re: hi\r\nAuto-Submitted: auto-replied\r\n\r\nnot acted on\r\n"

    def queue(message_id: str, at: float, recipient: str = "Alice@Example.com", holder: str = "p") -> NoticeQueued:
        kind = notice_kind(message_id)
        return store.queue_refusal_notice(
            request.id, kind, notice, "rc-mta@reply.example", recipient, at, holder, 60, per_hour=3
        )[0]

    # Two pollers (or a restart) handling the same reply at once: one notice.
    raced = all_at_once(4, lambda i: queue("<r1@example.com>", now, holder=f"poller-{i}"))
    assert sorted(r.value for r in raced) == ["duplicate", "duplicate", "duplicate", "queued"]
    mail = store.get_outbound(request.id, notice_kind("<r1@example.com>"))
    assert mail is not None and mail.sender == "rc-mta@reply.example" and mail.recipient == "Alice@Example.com"
    assert mail.label == f"{notice_kind('<r1@example.com>')} of request {request.id}"
    # Other replies of the same address: three an hour, whatever its case, then none.
    assert queue("<r2@example.com>", now + 1, "alice@example.com") is NoticeQueued.QUEUED
    assert queue("<r3@example.com>", now + 2) is NoticeQueued.QUEUED
    assert queue("<r4@example.com>", now + 3) is NoticeQueued.RATE_LIMITED
    assert queue("<r4@example.com>", now + 3, "bob@example.com") is NoticeQueued.QUEUED  # not another's
    assert queue("<r4@example.com>", now + 3601) is NoticeQueued.DUPLICATE  # bob's has that key
    # The API shows the request's reminders, not the notices of replies to it.
    shown = request_json(request, None, now, store.outbound_mails(request.id))
    assert shown["reminders"] == [] and shown["delivery"] is not None
    assert queue("<r5@example.com>", now + 3601) is NoticeQueued.QUEUED  # an hour on


def test_a_store_from_before_queued_reminders_is_rekeyed_at_start_by_one_of_several(store: Store) -> None:
    now = time.time()
    request = Request(new_request_id(), "t-1", "alice@example.com", "t", now, now + 3600, None, None)
    store.add_request(request)
    _old_outbound_table(store, request, now)
    starting = [Store(store.url, busy_timeout=5) for _ in range(3)]

    def start(i: int) -> BaseException | None:
        try:
            starting[i].create_schema()  # what each new instance does as it starts
        except BaseException as exc:
            return exc
        return None

    errors = [e for e in all_at_once(len(starting), start) if e is not None]
    for instance in starting:
        instance.close()

    assert errors == []
    with store.engine.connect() as conn:
        assert inspect(conn).get_pk_constraint("outbound_queue")["constrained_columns"] == ["request_id", "kind"]
        assert any(index["column_names"] == ["state"] for index in inspect(conn).get_indexes("outbound_queue"))
    [kept] = store.outbound_mails(request.id)
    assert (kept.kind, kept.state, kept.attempts, kept.last_answer) == ("request", Delivery.DEFERRED, 2, "451 later")
    _reminder(store, request, "round", now)
    assert sorted(mail.kind for mail in store.claim_outbound("loop", now + 31, 60, 10)) == ["reminder-1", "request"]
