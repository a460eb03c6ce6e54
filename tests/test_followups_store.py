"""The follow-ups' own queries, on SQLite and on PostgreSQL: rc-mta's record of whether a
sibling request decided a task (what a webhook task's follow-ups go by), that a withdrawn
step is never due again, and that a notice for the backend is recorded once and taken by
one instance at a time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest
from racing import all_at_once
from sqlalchemy import text
from test_store import store as store  # the same store fixture: SQLite and PostgreSQL

from rc_mta.errors import StoreUnavailable
from rc_mta.followups import STALE_SECONDS, Notices
from rc_mta.store import (
    STALE_CLAIM_SECONDS,
    Delivery,
    NoticeTerms,
    Request,
    SiblingDecision,
    Store,
    new_attempt_id,
)
from rc_mta.tasks._base import expiry_note
from rc_mta.tasks.embedded import EmbeddedBackend
from rc_mta.tokens import new_request_id

if TYPE_CHECKING:
    from rc_mta.app import Service

EVENTS = ("request_failed", "expired")


def _request(store: Store, task_id: str, owner: str, created: float) -> Request:
    request = Request(new_request_id(), task_id, owner, "t", created, created + 3600, None, None)
    store.add_request(request)
    return request


def _answer(store: Store, request: Request, action: str, at: float) -> None:
    store.claim(request.id, f"a-{request.id}", f"<{request.id}@x>", action, request.owner, at, 600)
    assert store.finish_claim(request.id, f"a-{request.id}", at)


def test_a_sibling_answered_since_decides_the_task(store: Store) -> None:
    now = time.time()
    alice = _request(store, "ticket-1", "alice@example.com", now)
    bob = _request(store, "ticket-1", "bob@example.com", now)
    other_task = _request(store, "ticket-2", "carol@example.com", now)
    assert store.decided_by_sibling(alice.id) is None

    _answer(store, other_task, "complete", now + 1)
    assert store.decided_by_sibling(alice.id) is None  # another task's answer says nothing
    _answer(store, bob, "fail", now + 2)

    assert store.decided_by_sibling(alice.id) == SiblingDecision("fail", "bob@example.com", bob.id)
    assert store.decided_by_sibling(bob.id) is None  # its own answer is not a sibling's


def test_an_answer_from_before_the_request_was_made_decides_nothing(store: Store) -> None:
    """The task was in progress again when the later request was made (a retried task)."""
    now = time.time()
    earlier = _request(store, "ticket-3", "bob@example.com", now)
    _answer(store, earlier, "fail", now + 1)
    later = _request(store, "ticket-3", "alice@example.com", now + 2)

    assert store.decided_by_sibling(later.id) is None


def _group(store: Store, task_id: str, needed: int, *names: str) -> tuple[str, list[Request]]:
    now = time.time()
    group = store.add_approval_group(task_id, needed, now)
    members = [_request(store, task_id, f"{name}@example.com", now) for name in names]
    for member in members:
        store.add_approval_member(member.id, group)
    return group, members


def _claim(store: Store, request: Request, action: str, at: float) -> str:
    attempt = new_attempt_id()
    store.claim(request.id, attempt, f"<{attempt}@x>", action, request.owner, at, STALE_CLAIM_SECONDS)
    return attempt


def test_an_approval_decides_only_once_its_group_is_decided(store: Store) -> None:
    """What decided is the group: its decision and approvers, final once the deciding
    answer told the backend (until then it may yet be taken back)."""
    now = time.time()
    group, (alice, bob, carol) = _group(store, "ticket-4", 2, "alice", "bob", "carol")

    alices = _claim(store, alice, "complete", now + 1)
    assert store.count_approval(group, alice.id, alice.owner, now + 1) == 1
    assert store.finish_claim(alice.id, alices, now + 1)
    assert store.decided_by_sibling(carol.id, now + 1) is None  # one approval of two: still open

    bobs = _claim(store, bob, "complete", now + 2)
    assert store.count_approval(group, bob.id, bob.owner, now + 2) == 2
    approvers = f"{alice.owner}, {bob.owner}"
    being_told = SiblingDecision("complete", approvers, bob.id, final=False)
    assert store.decided_by_sibling(carol.id, now + 2) == being_told
    assert store.finish_claim(bob.id, bobs, now + 2)
    assert store.decided_by_sibling(carol.id, now + 2) == SiblingDecision("complete", approvers, bob.id)
    assert store.decided_by_sibling(alice.id, now + 2) == SiblingDecision("complete", approvers, bob.id)


def test_a_group_failed_by_one_is_reported_failed_by_them(store: Store) -> None:
    now = time.time()
    group, (alice, dave, carol) = _group(store, "ticket-8", 2, "alice", "dave", "carol")
    alices = _claim(store, alice, "complete", now + 1)
    assert store.count_approval(group, alice.id, alice.owner, now + 1) == 1
    assert store.finish_claim(alice.id, alices, now + 1)
    daves = _claim(store, dave, "fail", now + 2)
    assert store.decide_group_fail(group, dave.id, dave.owner, now + 2)
    assert store.finish_claim(dave.id, daves, now + 2)

    assert store.decided_by_sibling(carol.id, now + 3) == SiblingDecision("fail", dave.owner, dave.id)


def test_a_group_decision_whose_attempt_died_is_of_unknown_outcome(store: Store) -> None:
    """Bob's fail decided the group and his attempt died telling the webhook: whether it
    acted is unknown, as for a lone answer's (its follow-ups are withdrawn, not sent)."""
    group, (alice, bob) = _group(store, "ticket-9", 2, "alice", "bob")
    now = time.time()
    _claim(store, bob, "fail", now)
    assert store.decide_group_fail(group, bob.id, bob.owner, now)
    assert store.decided_by_sibling(alice.id, now + 1) == SiblingDecision("fail", bob.owner, bob.id, final=False)

    lost = SiblingDecision("fail", bob.owner, bob.id, final=False, unknown=True)
    assert store.decided_by_sibling(alice.id, now + STALE_CLAIM_SECONDS + 1) == lost


def test_a_request_whose_only_claim_is_dead_is_due_for_its_follow_ups(store: Store) -> None:
    """An answer being acted on holds the follow-ups back; one whose attempt died (its claim
    pending for longer than a claim lives) does not, and an answered request stays answered."""
    now = time.time()
    dead, young, answered = (_request(store, "ticket-6", "alice@example.com", now - 12 + n) for n in range(3))
    long_ago = now - STALE_CLAIM_SECONDS - 1
    for request, taken in ((dead, long_ago), (young, now)):
        store.claim(request.id, f"a-{request.id}", f"<{request.id}@x>", "complete", request.owner, taken, 600)
    _answer(store, answered, "complete", long_ago)

    assert store.due_followups(now, (5.0,), now - 86400) == [(dead, "reminder-1")]
    expired = now + 3600
    assert store.due_followups(expired, (), now - 86400) == [(dead, "expired"), (young, "expired")]


def test_a_withdrawn_step_is_never_due_again(store: Store) -> None:
    now = time.time()
    request = _request(store, "ticket-5", "alice@example.com", now - 10)
    assert store.due_followups(now, (5.0,), now - 86400) == [(request, "reminder-1")]
    assert store.claim_followup(request.id, "reminder-1", "me", now, 300)

    store.followup_done(request.id, "reminder-1", "me", now, withdrawn=True)

    assert store.followup_state(request.id, "reminder-1") == "withdrawn"
    assert store.due_followups(now + 1, (5.0,), now - 86400) == []
    assert not store.claim_followup(request.id, "reminder-1", "other", now + 1000, 300)


def test_a_steps_notice_is_told_by_the_holder_whose_transaction_wrote_it(store: Store) -> None:
    """A slow instance's expired step is taken over as stale and done by another; the slow
    one, ending late, writes nothing and is told so, so it does not tell the notice too."""
    now = time.time()
    request = _request(store, "ticket-12", "alice@example.com", now - 10)
    assert store.claim_followup(request.id, "expired", "slow", now, 300)
    assert store.claim_followup(request.id, "expired", "fast", now + 301, 300)  # slow's claim went stale

    assert store.followup_done(request.id, "expired", "fast", now + 302, notice=NoticeTerms("expired", "fast", 300))
    assert not store.followup_done(request.id, "expired", "slow", now + 303, notice=NoticeTerms("expired", "slow", 300))
    notice = store.get_notice(request.id, "expired")
    assert notice is not None and notice.state == "pending", notice


def _request_mail(store: Store, task_id: str, owner: str, now: float, holder: str) -> Request:
    """A request whose mail ``holder`` is sending."""
    request = Request(new_request_id(), task_id, owner, "t", now, now + 3600, None, None)
    store.add_request_with_mail(request, b"Subject: t\r\n\r\n", "rc@x", now, holder, 300)
    return request


def test_a_notice_is_recorded_once_with_its_failed_mail_and_retried_by_one_instance_at_a_time(store: Store) -> None:
    now = time.time()
    request = _request_mail(store, "ticket-6", "bob@example.com", now, "failer")
    failed = NoticeTerms("request_failed", "failer", 300)
    assert store.settle_outbound(request.id, "failer", Delivery.FAILED, "550 no", now, notice=failed)
    first = store.get_notice(request.id, "request_failed")
    assert first is not None and (first.task_id, first.owner, first.state) == ("ticket-6", request.owner, "pending")
    assert first.answer == "550 no"
    twin = NoticeTerms("request_failed", "twin", 300)  # one that no longer holds the mail
    assert not store.settle_outbound(request.id, "twin", Delivery.FAILED, "550 other", now, notice=twin)
    assert store.get_notice(request.id, "request_failed") == first

    assert store.claim_notices("round", now + 1, 300, EVENTS) == []  # its recorder holds it for the first try
    assert store.settle_notice(first, "failer", "pending", now + 1, error="down", next_attempt_at=now + 60)
    assert store.claim_notices("round", now + 59, 300, EVENTS) == []  # backing off

    claimed = all_at_once(4, lambda i: store.claim_notices(f"instance-{i}", now + 61, 300, EVENTS))
    taken = [f"{i}:{n.request_id}" for i, notices in enumerate(claimed) for n in notices]
    assert len(taken) == 1
    holder = "instance-" + taken[0].split(":")[0]

    again = store.get_notice(request.id, "request_failed")
    assert again is not None and (again.attempts, again.last_error) == (1, "down")
    assert not store.settle_notice(again, "failer", "told", now + 62)  # no longer the holder
    assert store.settle_notice(again, holder, "told", now + 62)
    told = store.get_notice(request.id, "request_failed")
    assert told is not None and (told.state, told.attempts) == ("told", 2)
    assert store.claim_notices("round", now + 10_000, 300, EVENTS) == []


def test_a_request_mail_is_failed_only_with_its_notice_written_too(store: Store) -> None:
    """What cannot keep the notice (here its table is gone) does not fail the mail either:
    it stays held, and after the lease another attempt fails it with its notice."""
    now = time.time()
    request = _request_mail(store, "ticket-7", "bob@example.com", now, "failer")
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE request_notices"))
    store.engine.dispose()

    with pytest.raises(StoreUnavailable):
        store.settle_outbound(
            request.id, "failer", Delivery.FAILED, "550 no", now, notice=NoticeTerms("request_failed", "failer", 300)
        )

    mail = store.get_outbound(request.id)
    assert mail is not None and (mail.state, mail.attempts, mail.last_answer) == (Delivery.QUEUED, 0, None)
    store.create_schema()
    [again] = store.claim_outbound("other", now + 301, 60, 10)
    retry = NoticeTerms("request_failed", "other", 300)
    assert store.settle_outbound(again.request_id, "other", Delivery.FAILED, "550 no", now + 302, notice=retry)
    notice = store.get_notice(request.id, "request_failed")
    assert notice is not None and (notice.state, notice.answer) == ("pending", "550 no")


def test_a_mail_sent_or_deferred_records_no_notice(store: Store) -> None:
    now = time.time()
    terms = NoticeTerms("request_failed", "sender", 300)
    sent = _request_mail(store, "ticket-8", "bob@example.com", now, "sender")
    assert store.settle_outbound(sent.id, "sender", Delivery.SENT, "250 ok", now, notice=terms)
    deferred = _request_mail(store, "ticket-8", "carol@example.com", now, "sender")
    assert store.settle_outbound(deferred.id, "sender", Delivery.DEFERRED, "451 later", now, notice=terms)

    assert store.get_notice(sent.id, "request_failed") is None
    assert store.get_notice(deferred.id, "request_failed") is None


def test_a_sibling_answer_under_way_or_cut_off_is_said_so_and_a_finished_one_goes_first(store: Store) -> None:
    """Another request's answer being acted on is not final (it may yet land); one whose
    attempt died may or may not have acted (unknown); a finished one decides, whatever
    else is under way."""
    now = time.time()
    alice = _request(store, "ticket-11", "alice@example.com", now)
    bob = _request(store, "ticket-11", "bob@example.com", now)
    carol = _request(store, "ticket-11", "carol@example.com", now)
    _claim(store, bob, "complete", now + 1)

    assert store.decided_by_sibling(alice.id, now + 2) == SiblingDecision("complete", bob.owner, bob.id, final=False)
    dead = now + 2 + STALE_CLAIM_SECONDS
    cut_off = SiblingDecision("complete", bob.owner, bob.id, final=False, unknown=True)
    assert store.decided_by_sibling(alice.id, dead) == cut_off
    carols = _claim(store, carol, "fail", dead)  # under way: it may yet decide, so it goes first
    assert store.decided_by_sibling(alice.id, dead) == SiblingDecision("fail", carol.owner, carol.id, final=False)
    assert store.finish_claim(carol.id, carols, dead)
    assert store.decided_by_sibling(alice.id, dead) == SiblingDecision("fail", carol.owner, carol.id)


def test_a_sibling_answer_dead_before_the_request_was_made_decides_nothing(store: Store) -> None:
    """The request was made after the other answer's attempt was taken for dead (the task
    asked again): that answer stands in its way no more than one finished before it."""
    now = time.time()
    bob = _request(store, "ticket-12", "bob@example.com", now)
    _claim(store, bob, "complete", now)
    alive_then = _request(store, "ticket-12", "alice@example.com", now + STALE_CLAIM_SECONDS)
    dead_then = _request(store, "ticket-12", "carol@example.com", now + STALE_CLAIM_SECONDS + 1)

    later = now + 2 * STALE_CLAIM_SECONDS
    assert store.decided_by_sibling(alive_then.id, later) == SiblingDecision(
        "complete", bob.owner, bob.id, final=False, unknown=True
    )
    assert store.decided_by_sibling(dead_then.id, later) is None


def _cut_when_told(store: Store, cut: bool) -> None:
    """The database refuses (or again allows) settling a notice ``told``: the moment a crash,
    or a store that fails, falls between telling an embedded task and recording it."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER cut_told BEFORE UPDATE ON request_notices WHEN NEW.state = 'told'"
                    " BEGIN SELECT RAISE(ABORT, 'cut'); END"
                )
                if cut
                else text("DROP TRIGGER cut_told")
            )
        elif cut:
            cut_told = "CREATE FUNCTION cut_told() RETURNS trigger AS $$ BEGIN RAISE 'cut'; END $$ LANGUAGE plpgsql"
            conn.execute(text(cut_told))
            conn.execute(
                text(
                    "CREATE TRIGGER cut_told BEFORE UPDATE ON request_notices FOR EACH ROW"
                    " WHEN (NEW.state = 'told') EXECUTE FUNCTION cut_told()"
                )
            )
        else:
            conn.execute(text("DROP TRIGGER cut_told ON request_notices"))


def test_an_embedded_tasks_expiry_comment_is_written_once_whatever_fails_between(store: Store) -> None:
    """The expiry comment and the notice's ``told`` are one transaction: the store failing at
    the notice undoes the comment too, and the notice's next holder writes it once."""
    now = time.time()
    task = store.add_task("Deploy", "alice@example.com", now - 100)
    request = Request(new_request_id(), task.id, "alice@example.com", "t", now - 100, now - 10, None, None)
    store.add_request(request)
    backend = EmbeddedBackend(store)
    settings = SimpleNamespace(outbound=SimpleNamespace(queue_lifetime=5 * 86400))
    service = cast("Service", SimpleNamespace(store=store, backend=backend, settings=settings, queue=Queue))
    first = Notices(service, holder="instance-a")
    assert store.claim_followup(request.id, "expired", "instance-a", now, STALE_SECONDS)
    terms = Notices.terms("instance-a", Notices.EXPIRED)
    assert store.followup_done(request.id, "expired", "instance-a", now, notice=terms)

    _cut_when_told(store, True)
    with contextlib.suppress(Exception):  # the old way: the comment stayed, the error went up
        asyncio.run(first.tell_recorded(request.id, Notices.EXPIRED))
    _cut_when_told(store, False)

    later = now + 86400  # the holder's lease, and any back-off, long over: another instance tells it
    second = Notices(service, holder="instance-b")
    for notice in store.claim_notices("instance-b", later, STALE_SECONDS, second.events()):
        asyncio.run(second._tell(notice))
    task_now = store.get_task(task.id)
    assert task_now is not None
    assert [c.text for c in task_now.comments] == [expiry_note(request.owner, request.id, request.expires_at)]
    notice = store.get_notice(request.id, "expired")
    assert notice is not None and notice.state == "told"


class Queue:
    """The outbound queue's back-off, as the notices use it."""

    @staticmethod
    def backoff(attempts: int) -> float:
        return 60.0
