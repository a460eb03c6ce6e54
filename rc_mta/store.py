"""Schema and queries, the same code on SQLite (default) and PostgreSQL.

Exactly-once rests on the database: a task changes state with a conditional UPDATE
(``WHERE status = 'in_progress'``), and a request is answered at most once because
``used_tokens`` has the request id as its primary key. Each attempt at answering holds
the claim under its own random attempt id, so two deliveries of one message (a sender
retrying, several MX hosts) never both act, and one never gives back the other's claim.
No lock in the process is needed, so several instances can share one PostgreSQL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    create_engine,
    event,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import QueuePool
from sqlalchemy.schema import CreateTable

from .config import ACTION_DEADLINE_MAX
from .errors import (
    ApprovalConflict,
    RcMtaError,
    SiblingOutcomeUnknown,
    StoreIncompatible,
    StoreUnavailable,
    TemporaryFailure,
)

log = logging.getLogger("rc_mta.store")

metadata = MetaData()

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("title", Text, nullable=False),
    Column("owner", String(320), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("acted_by", String(320)),
    Column("acted_at", Float),
)

task_comments = Table(
    "task_comments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(32), ForeignKey("tasks.id"), nullable=False, index=True),
    Column("author", String(320), nullable=False),
    Column("text", Text, nullable=False),
    Column("at", Float, nullable=False),
)

requests = Table(
    "requests",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("task_id", String(255), nullable=False, index=True),
    Column("owner", String(320), nullable=False),
    Column("title", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("message_id", String(255)),
)

used_tokens = Table(
    "used_tokens",
    metadata,
    # The primary key is what makes a request answerable once.
    Column("request_id", String(16), ForeignKey("requests.id"), primary_key=True),
    Column("message_id", String(998), nullable=False),
    Column("action", String(16), nullable=False),
    Column("actor", String(320), nullable=False),
    Column("state", String(16), nullable=False),  # pending | done
    Column("claimed_at", Float, nullable=False),
    Column("done_at", Float),
    # Which attempt holds the claim: only it may finish or release it. Nullable because
    # rows written before this column existed have none (they can only go stale).
    Column("attempt", String(32)),
)

processed_messages = Table(
    "processed_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(998), index=True),
    Column("request_id", String(16)),
    Column("source", String(16), nullable=False),
    Column("reply", String(64), nullable=False),
    Column("code", Integer, nullable=False),
    Column("at", Float, nullable=False),
)

# Rows of the writability probe are kept this long.
PROBE_KEPT_SECONDS = 60.0

store_probe = Table(
    "store_probe",
    metadata,
    # Each readiness probe writes a row here: ready means writable.
    Column("id", String(32), primary_key=True),
    Column("at", Float, nullable=False),
)

# What a store made before reminders went through the queue lacks (``_key_outbound_by_kind``).
REQUEST_MAIL = "request"

outbound_queue = Table(
    "outbound_queue",
    metadata,
    # One row per mail of a request: the request mail, written with the request, and each
    # reminder, written when it is due. What the sender loop delivers.
    Column("request_id", String(16), ForeignKey("requests.id"), primary_key=True),
    # request | reminder-1 | reminder-2 ... | notice-<digest> (a refused reply's, mailbox mode):
    # one mail of each kind per request, ever.
    Column("kind", String(16), primary_key=True, server_default=REQUEST_MAIL),
    Column("message", LargeBinary, nullable=False),  # the mail as sent, signature included
    Column("sender", String(320), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("state", String(16), nullable=False, index=True),  # queued | deferred | sent | failed
    Column("attempts", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_answer", Text),  # the relay's last answer, or what went wrong reaching it
    Column("done_at", Float),
    Column("path", Text),  # where the outbox transport wrote it
    # Which sender holds the row, until when: another instance takes it only after the lease.
    Column("holder", String(32)),
    Column("lease_until", Float),
)

# How long an Idempotency-Key is kept (POST /v1/requests), and how long a call that holds
# one may take before a retry with the same key may take it over (its instance died).
IDEMPOTENCY_KEY_TTL = 24 * 3600.0
IDEMPOTENCY_LEASE = 600.0

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # One row per Idempotency-Key a client sent (draft-ietf-httpapi-idempotency-key-header):
    # the first call holds it while it runs, then keeps its answer for the retries.
    Column("scope", String(64), primary_key=True),  # whose key: a hash of the API token
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # the call's body, normalised and hashed
    Column("state", String(16), nullable=False),  # running | done
    Column("created_at", Float, nullable=False, index=True),
    Column("holder", String(64)),  # the call running it, until lease_until
    Column("lease_until", Float),
    Column("status", Integer),  # the answer kept once done
    Column("response", Text),
)

# The kind of a refused reply's notice (mailbox mode): this, and a digest of the reply's Message-ID.
REFUSAL_NOTICE = "notice-"

IN_PROGRESS = "in_progress"
COMPLETED = "completed"
FAILED = "failed"


@dataclass(frozen=True)
class Comment:
    author: str
    text: str
    at: float


@dataclass(frozen=True)
class Task:
    id: str
    title: str
    owner: str
    status: str
    created_at: float
    acted_by: str | None
    acted_at: float | None
    comments: tuple[Comment, ...] = ()


@dataclass(frozen=True)
class Request:
    id: str
    task_id: str
    owner: str
    title: str
    created_at: float
    expires_at: float
    revoked_at: float | None
    message_id: str | None


@dataclass(frozen=True)
class Claim:
    """The row that says a request was answered (or is being answered) by one message."""

    request_id: str
    message_id: str
    action: str
    actor: str
    state: str
    claimed_at: float
    done_at: float | None
    attempt: str | None = None

    @property
    def done(self) -> bool:
        return self.state == "done"

    def stale(self, now: float, stale_after: float) -> bool:
        """Pending and older than ``stale_after``: its attempt can no longer act (its process
        died), so another may take it over (``claim_stale``)."""
        return claim_stale(self.state, self.claimed_at, now, stale_after)

    def same_answer(self, action: str, actor: str) -> bool:
        """Whether this claim was taken to do ``action`` for ``actor`` (``_same_answer_sql``)."""
        return self.action == action and self.actor.lower() == actor.lower()

    def in_doubt_for(self, action: str, actor: str, now: float, stale_after: float) -> bool:
        """Dead, and taken for another answer (another action or sender): where the backend
        cannot say whether that answer acted, this one may not take it over (``Store.claim``'s
        ``keep_doubt``: IN_DOUBT)."""
        return self.stale(now, stale_after) and not self.same_answer(action, actor)


def claim_stale(state: str, claimed_at: float, now: float, stale_after: float) -> bool:
    """The one rule of when a claim is dead, for a claim read into Python: pending, and
    taken strictly more than ``stale_after`` before ``now``. ``_claim_is_stale`` is the same
    in SQL, and is what lets another attempt take it over (``Store.claim``), so whatever
    judges a claim here agrees with that at the very boundary."""
    return state == "pending" and claimed_at < now - stale_after


class Delivery(Enum):
    """Where a request mail is on its way to the relay."""

    QUEUED = "queued"  # stored, not tried yet
    DEFERRED = "deferred"  # tried; the relay was down or answered 4xx: tried again later
    SENT = "sent"  # the relay took it (or the outbox file is written)
    FAILED = "failed"  # the relay refused it (5xx), or it waited longer than the queue lifetime

    @property
    def pending(self) -> bool:
        return self in (Delivery.QUEUED, Delivery.DEFERRED)


class Settled(Enum):
    """What ``settle_outbound`` wrote. False only as ``LOST``: the holder's lease had run out
    and someone else held the mail, so nothing was written."""

    LOST = "lost"
    SETTLED = "settled"  # the attempt, and no notice (none asked for, or one was there already)
    WITH_NOTICE = "with_notice"  # the attempt, and the notice to the task backend with it

    def __bool__(self) -> bool:
        return self is not Settled.LOST


@dataclass(frozen=True)
class OutboundMail:
    """A mail of a request in the outbound queue and what became of it so far."""

    request_id: str
    message: bytes
    sender: str
    recipient: str
    state: Delivery
    attempts: int
    created_at: float
    next_attempt_at: float
    last_answer: str | None
    done_at: float | None
    path: str | None
    kind: str = REQUEST_MAIL  # request | reminder-N | notice-<digest>

    @property
    def name(self) -> str:
        """Unique among mails: the request id, with the kind for any but the request mail
        (the outbox file's name: ``<request>.eml``, ``<request>-reminder-1.eml``)."""
        return self.request_id if self.kind == REQUEST_MAIL else f"{self.request_id}-{self.kind}"

    @property
    def label(self) -> str:
        """How logs name it: ``request X``, ``reminder-1 of request X``."""
        return (
            f"request {self.request_id}" if self.kind == REQUEST_MAIL else f"{self.kind} of request {self.request_id}"
        )


@dataclass(frozen=True)
class QueueSummary:
    """How many mails are in each state, and how long the oldest undelivered one waited."""

    counts: dict[Delivery, int]
    oldest_pending_at: float | None


class KeyState(Enum):
    """What reserving an Idempotency-Key found (``Store.reserve_idempotency_key``)."""

    NEW = "new"  # this call holds the key: it runs, then keeps or gives back its answer
    TAKEN_OVER = "taken_over"  # held by a call whose lease ran out (its instance died): now this one's
    RUNNING = "running"  # another call with this key runs now
    DONE = "done"  # answered: ``IdempotentAnswer`` holds the answer to replay
    MISMATCH = "mismatch"  # the key was used with another body


@dataclass(frozen=True)
class IdempotentAnswer:
    """An Idempotency-Key's row: the state found and, once done, the answer kept."""

    state: KeyState
    status: int | None = None
    response: str | None = None


class NoticeQueued(Enum):
    """What ``queue_refusal_notice`` did."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"  # this reply's notice was queued before (a retry, another poller)
    RATE_LIMITED = "rate_limited"  # its recipient had enough notices this hour


class ClaimOutcome(Enum):
    """What trying to claim a request found."""

    OURS = "ours"  # this attempt holds the claim: it may act
    # This attempt holds the claim, taken over from one that died mid-answer (``claim_stale``):
    # it may act, and whether that one acted only the backend knows.
    TAKEN_OVER = "taken_over"
    # Dead, but another answer's, and whether it acted cannot be read (``keep_doubt``): left
    # as it was, and this answer may not act (``Claim.in_doubt_for``).
    IN_DOUBT = "in_doubt"
    DONE = "done"  # answered already; the claim row says by which message
    BUSY = "busy"  # another live attempt (maybe a copy of this very message) is answering it
    REVOKED = "revoked"  # the request row says it was withdrawn


@dataclass(frozen=True)
class Answer:
    """Everything ``Store.answer_at_once`` writes for one reply to an embedded task."""

    request_id: str
    attempt: str
    message_id: str
    action: str
    actor: str
    now: float
    task_id: str
    status: str  # COMPLETED or FAILED
    comment: str
    source: str  # for processed_messages, as ``record_processed`` takes them
    reply: str
    code: int


class _NotAtOnce(Exception):
    """Raised inside ``answer_at_once``'s transaction to roll it back."""


# Claiming retries this often when the row it collided with was given back meanwhile.
CLAIM_TRIES = 5
# A pending claim older than this belongs to an attempt that can no longer act (its process
# died, or its action was cut at ``[tasks] action_deadline``, at most half this): another
# attempt may take it over, and an N-of-M decision it made is taken back (``GroupState``),
# unless the backend shows it acted (then it is recorded: ``Pipeline._stale_decision_acted``)
# or cannot say (the webhook: it stands until its own request's retry, ``take_back_stale``).
STALE_CLAIM_SECONDS = 2 * ACTION_DEADLINE_MAX


def new_holder() -> str:
    """Who holds a claim, a lease or a step in the shared store: this host, this process,
    and this one object in it (64 characters at most, as the holder columns)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def new_attempt_id() -> str:
    """A fresh identity for one attempt at acting on a request (one delivery of a reply)."""
    return secrets.token_hex(12)


class Store:
    """Synchronous queries; the service calls them off the event loop."""

    def __init__(self, url: str, busy_timeout: float = 5.0) -> None:
        self.url = url
        self.engine = _make_engine(url, busy_timeout)
        # SQLite takes one writer at a time, and a writer that finds the lock taken sleeps in
        # its busy handler (1, 2, 5, 10… ms, whatever happens meanwhile). Our own threads
        # queue here instead and go on the moment the lock is free; other processes on the
        # file (CLI commands) still meet the busy handler. PostgreSQL needs no such lock.
        self._one_at_a_time: threading.Lock | None = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        self._file = _sqlite_file(url)
        # A SQLite file in WAL mode: a reader never waits for the writer, so the service reads
        # by key on its event loop, for less than a thread hop costs (``_reading``).
        self.reads_on_loop = self._file is not None and isinstance(self.engine.pool, QueuePool)
        self._file_identity: tuple[int, int] | None = None
        self._probe_table_seen = False

    def create_schema(self) -> None:
        """Make what this version uses and the store lacks, on a new store or one an older
        version made. A store already complete is only read (a service may start on a file
        it cannot write yet, a CLI command on a busy store). Otherwise everything is done in
        one transaction under the schema lock (``_lock_schema``): of several instances
        starting at once one makes it, the others wait, look again and find it done."""
        with self._begin() as conn:
            if not _schema_lacks(conn):
                return
        with self._begin() as conn:
            _lock_schema(conn)
            if not _schema_lacks(conn):
                return  # made by another instance while we waited
            metadata.create_all(conn)
            _add_missing_columns(conn)
            _add_missing_indexes(conn)

    def ping(self) -> None:
        """Prove the store takes a write, not only that it answers: a store that can only
        be read (a SQLite file opened while it was not writable, a PostgreSQL standby) or
        whose file was deleted must not look ready. Creates its small table if missing,
        so ``check-config`` can ask a store no service has started on yet."""
        if not self._probe_table_seen:
            try:
                with self._begin() as conn:
                    _lock_schema(conn)  # not in the middle of an instance's create_all
                    conn.execute(CreateTable(store_probe, if_not_exists=True))
                self._probe_table_seen = True
            except (IntegrityError, TemporaryFailure):
                pass  # created this moment by a probe elsewhere, or the store is in trouble: the write tells
        now = time.time()
        with self._begin() as conn:
            # A fresh row each time: concurrent probes (several instances, or /readyz asked
            # twice at once) never collide; old rows of anyone's are cleared on the way.
            conn.execute(store_probe.delete().where(store_probe.c.at < now - PROBE_KEPT_SECONDS))
            conn.execute(insert(store_probe).values(id=secrets.token_hex(8), at=now))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A transaction; database trouble becomes StoreUnavailable (the sender retries).
        On SQLite, one of this process's transactions at a time (see ``__init__``)."""
        self._check_file()
        lock = self._one_at_a_time
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc.orig or exc}") from exc
        finally:
            if lock is not None:
                lock.release()

    @contextmanager
    def _reading(self, waits: bool) -> Iterator[Connection]:
        """A read. ``waits=False`` (``reads_on_loop``): for the event loop, so it must not wait.
        In WAL mode a reader waits neither for the writer nor for a checkpoint: it takes no
        ``_one_at_a_time``. SQLite tells a reader "busy" (and sleeps in its busy handler) only
        while no connection holds the file open: another's exclusive locking mode, the last
        connection's clean-up, recovery after a crash (wal.html, "Sometimes queries return
        SQLITE_BUSY"); on a connection already open none of them can arise (nor did, tried:
        an exclusive locking mode, BEGIN EXCLUSIVE, a TRUNCATE checkpoint, VACUUM, a change of
        journal mode, a writer killed mid-transaction). So it reads on one the pool holds open,
        and without one (at start, or after the pool was emptied) raises ReadWouldWait: opening
        one may wait, the caller reads in a thread instead. The loop's read and the one
        transaction ``_begin`` lets run at a time hold at most two: the pool never runs dry."""
        if waits:
            with self._begin() as conn:
                yield conn
            return
        pool = self.engine.pool  # a new one after dispose()
        assert self.reads_on_loop and isinstance(pool, QueuePool), "only a SQLite file is read on the loop"
        if not pool.checkedin():
            raise ReadWouldWait("no connection to the store is open yet")
        self._check_file()
        try:
            with self.engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc.orig or exc}") from exc

    def _check_file(self) -> None:
        """SQLite keeps writing into a database file that was deleted (or its directory
        removed) through the connections it has open: every answer would go into a file
        no one will read. Refuse (451, not ready) once the path no longer leads to the file
        we opened, until an operator restores it and restarts."""
        if self._file is None:
            return
        known = self._file_identity  # read once: other threads may set it meanwhile
        try:
            found = self._file.stat()
        except FileNotFoundError:
            if known is None:
                return  # not created yet: the first connection creates it
            found = None
        identity = (found.st_dev, found.st_ino) if found else None
        if known is None:
            self._file_identity = identity
        elif identity != known:
            self.engine.dispose()  # let go of the deleted file's space
            raise StoreUnavailable(f"the store file {self._file} was removed or replaced since rc-mta opened it")

    # Tasks (embedded backend) -------------------------------------------------------

    def add_task(self, title: str, owner: str, now: float) -> Task:
        task_id = "t-" + secrets.token_hex(5)
        row: dict[str, Any] = {
            "id": task_id,
            "title": title,
            "owner": owner.strip().lower(),
            "status": IN_PROGRESS,
            "created_at": now,
            "acted_by": None,
            "acted_at": None,
        }
        with self._begin() as conn:
            conn.execute(insert(tasks).values(**row))
        return Task(**row)

    def get_task(self, task_id: str) -> Task | None:
        with self._begin() as conn:
            row = conn.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()
            if row is None:
                return None
            comments = conn.execute(
                select(task_comments).where(task_comments.c.task_id == task_id).order_by(task_comments.c.id)
            ).mappings()
            return Task(**row, comments=tuple(Comment(c["author"], c["text"], c["at"]) for c in comments))

    def list_tasks(self) -> list[Task]:
        with self._begin() as conn:
            rows = conn.execute(select(tasks).order_by(tasks.c.created_at)).mappings().all()
        return [Task(**row) for row in rows]

    def set_task_status(self, task_id: str, status: str, comment: str, actor: str, now: float) -> bool:
        """Move an in-progress task to ``status``; False if it was not in progress."""
        with self._begin() as conn:
            changed = conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status == IN_PROGRESS)
                .values(status=status, acted_by=actor, acted_at=now)
            ).rowcount
            if changed != 1:
                return False
            if comment:
                conn.execute(insert(task_comments).values(task_id=task_id, author=actor, text=comment, at=now))
            return True

    # Requests -----------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        with self._begin() as conn:
            conn.execute(insert(requests).values(**request.__dict__))

    def get_request(self, request_id: str, *, waits: bool = True) -> Request | None:
        """``waits=False``: on the event loop (``_reading``)."""
        with self._reading(waits) as conn:
            row = conn.execute(_REQUEST_BY_ID, {"request_id": request_id}).mappings().first()
        return Request(**row) if row else None

    def find_request(self, reference: str) -> Request | None:
        """A request by its id or by the Message-ID of its mail (with or without <>): people
        hold whichever the command or the mail showed them."""
        reference = reference.strip()
        message_id = reference if reference.startswith("<") else f"<{reference}>"
        with self._begin() as conn:
            row = (
                conn.execute(
                    select(requests)
                    .where((requests.c.id == reference) | (requests.c.message_id == message_id))
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return Request(**row) if row else None

    def revoke_request(self, request_id: str, now: float) -> bool:
        with self._begin() as conn:
            return bool(
                conn.execute(
                    update(requests)
                    .where(requests.c.id == request_id, requests.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                ).rowcount
            )

    # Idempotency keys (POST /v1/requests) --------------------------------------------

    def reserve_idempotency_key(
        self, scope: str, key: str, fingerprint: str, holder: str, now: float
    ) -> IdempotentAnswer:
        """Take ``key`` for the call ``holder`` with the body ``fingerprint``, or say why not:
        it runs elsewhere, it was answered (the answer to replay), or it came with another
        body. A key older than ``IDEMPOTENCY_KEY_TTL`` is forgotten (old keys of anyone's
        are cleared on the way); one whose call held it past ``IDEMPOTENCY_LEASE`` (its
        instance died mid-call) is taken over. The primary key decides between two calls
        at once, on one instance or several."""
        k = idempotency_keys.c
        this = (k.scope == scope, k.key == key)
        row = {"scope": scope, "key": key, "fingerprint": fingerprint, "state": "running", "created_at": now}
        for _ in range(CLAIM_TRIES):
            try:
                with self._begin() as conn:
                    conn.execute(idempotency_keys.delete().where(k.created_at < now - IDEMPOTENCY_KEY_TTL))
                    conn.execute(insert(idempotency_keys).values(**row, **_leased_to(holder, now, IDEMPOTENCY_LEASE)))
                return IdempotentAnswer(KeyState.NEW)
            except IntegrityError:
                pass
            with self._begin() as conn:
                found = conn.execute(select(idempotency_keys).where(*this)).mappings().first()
                if found is None:
                    continue  # forgotten or given back meanwhile: try again
                if found["fingerprint"] != fingerprint:
                    return IdempotentAnswer(KeyState.MISMATCH)
                if found["state"] == "done":
                    return IdempotentAnswer(KeyState.DONE, found["status"], found["response"])
                if _take_lease(conn, idempotency_keys, holder, now, IDEMPOTENCY_LEASE, *this, k.state == "running"):
                    return IdempotentAnswer(KeyState.TAKEN_OVER)
                return IdempotentAnswer(KeyState.RUNNING)
        return IdempotentAnswer(KeyState.RUNNING)

    def renew_idempotency_key(self, scope: str, key: str, holder: str, now: float) -> bool:
        """Hold ``key`` for ``IDEMPOTENCY_LEASE`` more from ``now``, while its call still runs
        (one that sends many request mails may outlast one lease); False when no longer held."""
        k = idempotency_keys.c
        with self._begin() as conn:
            renewed = conn.execute(
                update(idempotency_keys)
                .where(k.scope == scope, k.key == key, k.holder == holder, k.state == "running")
                .values(**_leased_to(holder, now, IDEMPOTENCY_LEASE))
            )
            return bool(renewed.rowcount == 1)

    def finish_idempotency_key(self, scope: str, key: str, holder: str, status: int, response: str) -> bool:
        """Keep the answer of the call that holds ``key``; False when it no longer held it."""
        k = idempotency_keys.c
        with self._begin() as conn:
            done = conn.execute(
                update(idempotency_keys)
                .where(k.scope == scope, k.key == key, k.holder == holder, k.state == "running")
                .values(state="done", status=status, response=response, holder=None, lease_until=None)
            )
            return bool(done.rowcount == 1)

    def release_idempotency_key(self, scope: str, key: str, holder: str) -> None:
        """Give ``key`` back after a call that answered an error: a retry runs again."""
        k = idempotency_keys.c
        with self._begin() as conn:
            conn.execute(
                idempotency_keys.delete().where(
                    k.scope == scope, k.key == key, k.holder == holder, k.state == "running"
                )
            )

    # Outbound queue: a request mail is stored with its request, then delivered ---------

    def add_request_with_mail(
        self,
        request: Request,
        message: bytes,
        sender: str,
        now: float,
        holder: str,
        lease: float,
        *,
        approvals: ApprovalCheck | None = None,
    ) -> OutboundMail:
        """Record a request and its mail in one transaction: from here on it is not lost.
        ``holder`` holds it for its first delivery attempt (others take it after ``lease``).
        ``approvals``: the request is made under the N-of-M rule (``approval_rule``), in
        its group or alone; the rule is looked at again in this transaction, which no other
        request of the task passes meanwhile (``_lock_task_approvals``), and the request is
        written with its membership, or not at all (ApprovalConflict)."""
        row = _new_mail(request.id, REQUEST_MAIL, message, sender, request.owner, now)
        with self._begin() as conn:
            if approvals is not None:
                _lock_task_approvals(conn, request.task_id)
                found = _task_approvals(conn, request.task_id, now, STALE_CLAIM_SECONDS)
                group_id = approvals.group_id
                known = None if group_id is None else _approval_group(conn, group_id, now, STALE_CLAIM_SECONDS)
                approval_rule(request.task_id, request.owner, group_id, found, known, new_group=False)
            conn.execute(insert(requests).values(**request.__dict__))
            if approvals is not None and approvals.group_id is not None:
                conn.execute(insert(approval_members).values(request_id=request.id, group_id=approvals.group_id))
            conn.execute(insert(outbound_queue).values(**row, **_leased_to(holder, now, lease)))
        return _outbound_mail(row)

    def queue_followup_mail(
        self,
        request: Request,
        step: str,
        step_holder: str,
        message: bytes,
        sender: str,
        now: float,
        holder: str,
        lease: float,
    ) -> OutboundMail | None:
        """Queue the mail of a follow-up step (a reminder) and mark the step done, in one
        transaction: the step's claim (``step_holder``'s) and the key (request, kind) make
        it one mail whatever happens. None, with nothing written, when ``step_holder`` no
        longer holds the step. ``holder`` holds the mail for its first attempt, as above."""
        f = request_followups.c
        row = _new_mail(request.id, step, message, sender, request.owner, now)
        try:
            with self._begin() as conn:
                took = conn.execute(
                    update(request_followups)
                    .where(f.request_id == request.id, f.step == step, f.holder == step_holder, f.state == "sending")
                    .values(state="done", at=now)
                ).rowcount
                if took != 1:
                    raise _NotAtOnce  # taken over as stale: the other holder queues it
                conn.execute(insert(outbound_queue).values(**row, **_leased_to(holder, now, lease)))
        except (IntegrityError, _NotAtOnce):
            return None
        return _outbound_mail(row)

    def queue_refusal_notice(
        self,
        request_id: str,
        kind: str,
        message: bytes,
        sender: str,
        recipient: str,
        now: float,
        holder: str,
        lease: float,
        *,
        per_hour: int,
    ) -> tuple[NoticeQueued, OutboundMail | None]:
        """Queue the notice of a refused reply (mailbox mode) to ``recipient``, as mail
        ``kind`` of the request it answered (``REFUSAL_NOTICE`` and a digest of the reply's
        Message-ID): so one reply gets one notice, however often it is handled, by however
        many pollers. Not queued when that notice is there already, or when ``recipient``
        was sent ``per_hour`` notices in the last hour (no loop of mail can form). ``holder``
        holds it for its first attempt, as ``add_request_with_mail``'s."""
        q = outbound_queue.c
        row = _new_mail(request_id, kind, message, sender, recipient, now)
        with self._begin() as conn:
            if conn.execute(select(q.kind).where(q.request_id == request_id, q.kind == kind)).first():
                return NoticeQueued.DUPLICATE, None
            recent = conn.execute(
                select(func.count()).where(
                    q.kind.like(f"{REFUSAL_NOTICE}%"),
                    func.lower(q.recipient) == recipient.lower(),
                    q.created_at > now - 3600.0,
                )
            ).scalar()
            if int(recent or 0) >= per_hour:
                return NoticeQueued.RATE_LIMITED, None
            added = conn.execute(
                _insert_unless_there(conn, outbound_queue)
                .values(**row, **_leased_to(holder, now, lease))
                .execution_options(preserve_rowcount=True)
            )
            if added.rowcount != 1:
                return NoticeQueued.DUPLICATE, None  # another instance queued it meanwhile
        return NoticeQueued.QUEUED, _outbound_mail(row)

    def claim_outbound(self, holder: str, now: float, lease: float, limit: int) -> list[OutboundMail]:
        """Take up to ``limit`` mails that are due for ``holder`` until ``now + lease``. Each
        row is taken by a conditional UPDATE, so of two instances asking at once only one
        gets it; a holder that died loses it when its lease runs out."""
        q = outbound_queue.c
        due = (q.state.in_([Delivery.QUEUED.value, Delivery.DEFERRED.value]), q.next_attempt_at <= now)
        with self._begin() as conn:
            wanted = (
                select(q.request_id, q.kind)
                .where(*due, _lease_free(outbound_queue, now))
                .order_by(q.next_attempt_at)
                .limit(limit)
            )
            candidates = [(row[0], row[1]) for row in conn.execute(wanted)]
        taken: list[OutboundMail] = []
        for request_id, kind in candidates:
            this = (q.request_id == request_id, q.kind == kind)
            with self._begin() as conn:
                if not _take_lease(conn, outbound_queue, holder, now, lease, *this, *due):
                    continue  # another instance took it first
                row = conn.execute(select(outbound_queue).where(*this)).mappings().one()
            taken.append(_outbound_mail(row))
        return taken

    def settle_outbound(
        self,
        request_id: str,
        holder: str,
        state: Delivery,
        answer: str,
        now: float,
        *,
        next_attempt_at: float | None = None,
        path: str | None = None,
        kind: str = REQUEST_MAIL,
        notice: NoticeTerms | None = None,
    ) -> Settled:
        """Record what one delivery attempt found and give the row back; ``LOST`` when
        ``holder`` no longer held it (its lease ran out and someone else took it), and then
        nothing was written. ``notice``: a FAILED request mail's notice to the task backend,
        written in the same transaction, so no crash or store error between the two loses
        it (``request_notices``); ``WITH_NOTICE`` when this transaction wrote it, so its
        writer tells it, and no one else's notice (one already there) is told twice."""
        q = outbound_queue.c
        values = _attempt_over(outbound_queue, state.value, state.pending, now, next_attempt_at)
        values["last_answer"] = answer[:1000]
        if state is Delivery.SENT:
            values["message"] = b""  # the relay has it: the store keeps the record, not the mail
        if path is not None:
            values["path"] = path
        written = False
        with self._begin() as conn:
            held = _settle_lease(conn, outbound_queue, holder, values, q.request_id == request_id, q.kind == kind)
            if held and notice is not None and state is Delivery.FAILED:
                written = _add_notice(conn, request_id, notice, answer, now)
        if not held:
            return Settled.LOST
        return Settled.WITH_NOTICE if written else Settled.SETTLED

    def get_outbound(self, request_id: str, kind: str = REQUEST_MAIL) -> OutboundMail | None:
        """One mail of a request: by default the request mail itself."""
        q = outbound_queue.c
        with self._begin() as conn:
            row = (
                conn.execute(select(outbound_queue).where(q.request_id == request_id, q.kind == kind))
                .mappings()
                .first()
            )
        return _outbound_mail(row) if row else None

    def outbound_mails(self, request_id: str) -> list[OutboundMail]:
        """Every mail of a request, the request mail first, then its reminders as queued."""
        q = outbound_queue.c
        with self._begin() as conn:
            rows = conn.execute(
                select(outbound_queue).where(q.request_id == request_id).order_by(q.created_at, q.kind)
            ).mappings()
            mails = [_outbound_mail(row) for row in rows]
        return sorted(mails, key=lambda mail: mail.kind != REQUEST_MAIL)

    def outbound_summary(self) -> QueueSummary:
        q = outbound_queue.c
        pending = q.state.in_([Delivery.QUEUED.value, Delivery.DEFERRED.value])
        with self._begin() as conn:
            rows = conn.execute(select(q.state, func.count()).group_by(q.state)).all()
            oldest = conn.execute(select(func.min(q.created_at)).where(pending)).scalar()
        counts = dict.fromkeys(Delivery, 0)
        for state, count in rows:
            counts[Delivery(state)] = int(count)
        return QueueSummary(counts, float(oldest) if oldest is not None else None)

    # Used tokens: the exactly-once claim ----------------------------------------------

    def claim(
        self,
        request_id: str,
        attempt: str,
        message_id: str,
        action: str,
        actor: str,
        now: float,
        stale_after: float,
        *,
        keep_doubt: bool = False,
    ) -> tuple[ClaimOutcome, Claim | None]:
        """Claim a request for one attempt at answering it with one message.

        OURS when the row is new (or already this attempt's); TAKEN_OVER when it held
        another attempt's pending claim that went stale (its process died, maybe mid-action).
        With ``keep_doubt`` (a backend that cannot read the task: the webhook) only the same
        answer (action and sender) takes a stale claim over, and another finds it IN_DOUBT,
        left as it was: that attempt may have acted, and another action under the same
        request id may be taken by the receiver for a repeat of it, or done beside it.
        A pending claim of another attempt is BUSY even when it is for this same message:
        that is another delivery of it, still at work. REVOKED only when the request row
        says so; a claim given back between our insert and our read is claimed again.
        """
        row: dict[str, Any] = {
            "request_id": request_id,
            "message_id": message_id,
            "action": action,
            "actor": actor,
            "state": "pending",
            "claimed_at": now,
            "done_at": None,
            "attempt": attempt,
        }
        live = requests.c.revoked_at.is_(None)
        columns = ["request_id", "message_id", "action", "actor", "state", "claimed_at", "attempt"]
        # Only a request that is not revoked can be claimed: the check and the insert are one statement.
        if_live = select(*(literal(row[c]) for c in columns)).where(requests.c.id == request_id, live)
        # SQLAlchemy keeps an INSERT's rowcount only when asked (it reads -1 on psycopg otherwise).
        claim_row = insert(used_tokens).from_select(columns, if_live).execution_options(preserve_rowcount=True)
        for _ in range(CLAIM_TRIES):
            try:
                with self._begin() as conn:
                    inserted = conn.execute(claim_row).rowcount
                if inserted == 1:
                    return ClaimOutcome.OURS, Claim(**row)
                # Nothing to insert from: the request is revoked (or gone), and no one answered it.
                return ClaimOutcome.REVOKED, None
            except IntegrityError:
                pass
            take = (
                update(used_tokens)
                .where(
                    used_tokens.c.request_id == request_id,
                    used_tokens.c.state == "pending",
                    used_tokens.c.request_id.in_(select(requests.c.id).where(live)),
                )
                .values(message_id=message_id, action=action, actor=actor, claimed_at=now, attempt=attempt)
            )
            with self._begin() as conn:
                # The writes first: on SQLite they take the write lock, so the read below is current.
                taken = conn.execute(take.where(used_tokens.c.attempt == attempt)).rowcount
                dead = _claim_is_stale(now, stale_after)
                if keep_doubt:
                    dead = dead & _same_answer_sql(action, actor)
                taken_over = not taken and conn.execute(take.where(dead)).rowcount == 1
                found = (
                    conn.execute(
                        select(used_tokens, requests.c.revoked_at)
                        .join(requests, requests.c.id == used_tokens.c.request_id)
                        .where(used_tokens.c.request_id == request_id)
                    )
                    .mappings()
                    .first()
                )
            if found is None:
                continue  # given back between our insert and our read: try again
            current = Claim(**{c.name: found[c.name] for c in used_tokens.c})
            if taken_over:
                return ClaimOutcome.TAKEN_OVER, current
            if taken == 1:
                return ClaimOutcome.OURS, current
            if current.done:
                return ClaimOutcome.DONE, current
            if found["revoked_at"] is not None:
                return ClaimOutcome.REVOKED, current
            if keep_doubt and current.in_doubt_for(action, actor, now, stale_after):
                return ClaimOutcome.IN_DOUBT, current
            return ClaimOutcome.BUSY, current
        raise StoreUnavailable(f"the claim on request {request_id} kept changing hands")

    def answer_at_once(self, answer: Answer) -> bool:
        """The usual case of an embedded task, in one write transaction: claim the request
        for this attempt (already done), move the task, keep the comment, record the message.

        True when all of it was written. False when nothing was: the request was claimed
        before (by anyone, this very message included), is revoked, is one of a group, or
        its task has an N-of-M group that may still decide it (what ``approval_standing``
        calls ``blocking``, asked here as the claim is written), or its task is not in
        progress; the caller then reads the standing and takes the general path (``claim``
        and the backend), which tells those cases apart. Exactly-once is the claim row's
        primary key, as there.
        """
        values = {
            "request_id": answer.request_id,
            "message_id": answer.message_id,
            "action": answer.action,
            "actor": answer.actor,
            "attempt": answer.attempt,
            "now": answer.now,
            "task_id": answer.task_id,
            "status": answer.status,
            "text": answer.comment,
            "source": answer.source,
            "reply": answer.reply,
            "code": answer.code,
        }
        try:
            with self._begin() as conn:
                if conn.execute(_ANSWER.claim_done, values).rowcount != 1:
                    raise _NotAtOnce  # revoked, one of several approvals, a group's to decide, or no such request
                if conn.execute(_ANSWER.move_task, values).rowcount != 1:
                    raise _NotAtOnce  # not in progress (or unknown): the general path says which
                if answer.comment:
                    conn.execute(_ANSWER.add_comment, values)
                conn.execute(_ANSWER.record, values)
        except (IntegrityError, _NotAtOnce):
            return False  # rolled back: nothing of it was written
        return True

    def finish_claim(self, request_id: str, attempt: str, now: float) -> bool:
        """Mark this attempt's claim answered; True also when it is already (a commit whose
        acknowledgement was lost, then tried again; or a retry of the same message that
        recorded it on this attempt's behalf). False if the attempt no longer holds it (it
        was taken over as stale while the backend call took longer than that)."""
        mine = (used_tokens.c.request_id == request_id, used_tokens.c.attempt == attempt)
        with self._begin() as conn:
            changed = conn.execute(
                update(used_tokens).where(*mine, used_tokens.c.state == "pending").values(state="done", done_at=now)
            ).rowcount
            if changed == 1:
                return True
            return conn.execute(select(used_tokens.c.state).where(*mine)).scalar_one_or_none() == "done"

    def renew_claim(self, request_id: str, attempt: str, now: float) -> bool:
        """This attempt's claim, still pending, counted from ``now`` again: its own retry acts
        as it (``Pipeline._posts_again``), with as long before it may be taken for dead as a
        new claim. False when the attempt no longer holds it."""
        t = used_tokens.c
        with self._begin() as conn:
            changed = conn.execute(
                update(used_tokens)
                .where(t.request_id == request_id, t.attempt == attempt, t.state == "pending")
                .values(claimed_at=now)
            ).rowcount
        return bool(changed)

    def release_claim(self, request_id: str, attempt: str) -> None:
        """Give this attempt's claim back after a failure, so any later reply may try.
        Another attempt's claim (a copy of the same message included) is left alone."""
        with self._begin() as conn:
            conn.execute(
                used_tokens.delete().where(
                    used_tokens.c.request_id == request_id,
                    used_tokens.c.attempt == attempt,
                    used_tokens.c.state == "pending",
                )
            )

    def get_claim(self, request_id: str, *, waits: bool = True) -> Claim | None:
        """``waits=False``: on the event loop (``_reading``)."""
        with self._reading(waits) as conn:
            row = conn.execute(_CLAIM_BY_ID, {"request_id": request_id}).mappings().first()
        return Claim(**row) if row else None

    def record_processed(
        self, message_id: str | None, request_id: str | None, source: str, reply: str, code: int, now: float
    ) -> None:
        with self._begin() as conn:
            conn.execute(
                insert(processed_messages).values(
                    message_id=message_id, request_id=request_id, source=source, reply=reply, code=code, at=now
                )
            )

    # Request API queries ----------------------------------------------------------------

    def get_request_with_claim(self, request_id: str) -> tuple[Request, Claim | None] | None:
        """A request and its answer (if any) read together, so the API never shows a torn state."""
        with self._begin() as conn:
            row = conn.execute(_REQUEST_BY_ID, {"request_id": request_id}).mappings().first()
            if row is None:
                return None
            claim = conn.execute(select(used_tokens).where(used_tokens.c.request_id == request_id)).mappings().first()
        return Request(**row), (Claim(**claim) if claim else None)

    def revoke_unanswered_request(self, request_id: str, now: float, stale_after: float) -> bool:
        """Revoke unless answered or being answered, in one statement, so a reply racing the
        revocation cannot both act and be withdrawn. False when a claim stopped it (or it was
        already revoked, or is unknown). A pending claim older than ``stale_after`` is dead."""
        with self._begin() as conn:
            changed = conn.execute(
                update(requests)
                .where(
                    requests.c.id == request_id,
                    requests.c.revoked_at.is_(None),
                    ~_claim_stands(requests.c.id, now, stale_after),
                )
                .values(revoked_at=now)
            ).rowcount
        return bool(changed)

    def list_tasks_with_comments(self) -> list[Task]:
        """Every task with its comments, in two queries (``list_tasks`` leaves comments out)."""
        with self._begin() as conn:
            rows = conn.execute(select(tasks).order_by(tasks.c.created_at, tasks.c.id)).mappings().all()
            comment_rows = conn.execute(select(task_comments).order_by(task_comments.c.id)).mappings().all()
        by_task: dict[str, list[Comment]] = {}
        for c in comment_rows:
            by_task.setdefault(c["task_id"], []).append(Comment(c["author"], c["text"], c["at"]))
        return [Task(**row, comments=tuple(by_task.get(row["id"], ()))) for row in rows]

    # Several instances on one mailbox: who handles which message -------------------------

    def claim_mailbox_message(
        self, message: MailboxMessage, holder: str, now: float, stale_after: float
    ) -> MailboxClaim:
        """Take a mailbox message for ``holder`` (one poller process) before fetching it.

        Ours when no one had it, when ``holder`` already had it (a reconnect), or when the
        other holder's claim went stale (its process died). Never ours once it was filed
        (``filed`` then says so: no poller needs to look at it again).
        """
        row = {
            "mailbox": _claimed_mailbox(message.mailbox),
            "uidvalidity": message.uidvalidity,
            "uid": message.uid,
            "holder": holder,
            "state": "handling",
            "disposition": None,
            "claimed_at": now,
        }
        try:
            with self._begin() as conn:
                conn.execute(insert(mailbox_claims).values(**row))
            return MailboxClaim(True, None)
        except IntegrityError:
            pass  # someone has (or had) it
        with self._begin() as conn:
            taken = conn.execute(
                update(mailbox_claims)
                .where(
                    *_mailbox_key(message),
                    mailbox_claims.c.state != "filed",
                    (mailbox_claims.c.holder == holder) | (mailbox_claims.c.claimed_at < now - stale_after),
                )
                .values(holder=holder, claimed_at=now)
            ).rowcount
            found = conn.execute(
                select(mailbox_claims.c.state, mailbox_claims.c.disposition).where(*_mailbox_key(message))
            ).first()
        if taken != 1:
            return MailboxClaim(False, None, filed=found is not None and found.state == "filed")
        return MailboxClaim(True, found.disposition if found is not None else None)

    def settle_mailbox_message(self, message: MailboxMessage, holder: str, disposition: str, now: float) -> None:
        """Handled: only filing it as ``disposition`` is left (whoever holds it next does that)."""
        with self._begin() as conn:
            conn.execute(
                update(mailbox_claims)
                .where(*_mailbox_key(message), mailbox_claims.c.holder == holder)
                .values(state="settled", disposition=disposition, claimed_at=now)
            )

    def mailbox_message_filed(self, message: MailboxMessage, holder: str, now: float) -> None:
        """Filed: no poller touches this UID again."""
        with self._begin() as conn:
            conn.execute(
                update(mailbox_claims)
                .where(*_mailbox_key(message), mailbox_claims.c.holder == holder)
                .values(state="filed", claimed_at=now)
            )

    def release_mailbox_message(self, message: MailboxMessage, holder: str) -> None:
        """Not handled after all (gone, or left for a retry): any poller may take it next round."""
        self._give_back(mailbox_claims, holder, "handling", *_mailbox_key(message))

    def prune_mailbox_claims(self, older_than: float) -> int:
        """Forget claims untouched since ``older_than``: their messages left the folder long ago."""
        with self._begin() as conn:
            return int(conn.execute(mailbox_claims.delete().where(mailbox_claims.c.claimed_at < older_than)).rowcount)

    # Claims that age: a mailbox message, a watched task, a follow-up step is claimed by
    # inserting its row (the key lets one instance in), or, when the row is there, by taking
    # it over with a conditional UPDATE whose where-clause says when that is allowed (its
    # holder's ``claimed_at``/``at`` is older than ``stale_after``: that process died).
    # ``claim_mailbox_message`` writes the two steps out itself: it reads the row in the
    # take-over's own transaction, to say how the message was settled or that it was filed.

    def _insert_or_take_over(self, table: Table, row: dict[str, Any], take_over: Any) -> bool:
        """Claim by inserting ``row``, or else by ``take_over``: True for the one instance
        whose insert or update wrote."""
        try:
            with self._begin() as conn:
                conn.execute(insert(table).values(**row))
            return True
        except IntegrityError:
            pass  # someone has (or had) it
        with self._begin() as conn:
            return bool(conn.execute(take_over).rowcount == 1)

    def _give_back(self, table: Table, holder: str, unfinished: str, *key: Any) -> None:
        """``holder`` lets go of a claim it did not finish (still in state ``unfinished``):
        the row goes, so the next round (of any instance) claims it anew. A claim taken
        over meanwhile, or finished, is left alone."""
        with self._begin() as conn:
            conn.execute(table.delete().where(*key, table.c.holder == holder, table.c.state == unfinished))

    def shared_counters(self, window: float, timeout: float) -> SharedCounters | None:
        """Counters every instance on this store sees, for the rate limits; None on SQLite,
        which one instance has to itself (its limiter counts in memory)."""
        if self.engine.dialect.name != "postgresql":
            return None
        return SharedCounters(self.engine.url, window, timeout)

    # Watch mode: which instance mails the request for a task that started ---------------

    def claim_watched_task(self, task_id: str, owner: str, holder: str, now: float, stale_after: float) -> bool:
        """Take the sending of ``task_id``'s request to ``owner`` for ``holder`` (one rc-mta).

        True when no one had it, when it was closed (the task came back to this owner), or
        when another holder's send went stale (its process died mid-send). The insert or
        the conditional update is the one decision: two instances never both send."""
        row = {"task_id": task_id, "owner": owner, "holder": holder, "state": "sending", "claimed_at": now}
        c = watched_tasks.c
        take_over = (
            update(watched_tasks)
            .where(
                c.task_id == task_id,
                c.owner == owner,
                (c.state == "closed") | ((c.state == "sending") & (c.claimed_at < now - stale_after)),
            )
            .values(holder=holder, state="sending", claimed_at=now)
        )
        return self._insert_or_take_over(watched_tasks, row, take_over)

    def watched_task_sent(self, task_id: str, owner: str, holder: str, now: float) -> None:
        c = watched_tasks.c
        with self._begin() as conn:
            conn.execute(
                update(watched_tasks)
                .where(c.task_id == task_id, c.owner == owner, c.holder == holder, c.state == "sending")
                .values(state="sent", claimed_at=now)
            )

    def release_watched_task(self, task_id: str, owner: str, holder: str) -> None:
        """The send failed: give it back so the next round (of anyone) tries again."""
        c = watched_tasks.c
        self._give_back(watched_tasks, holder, "sending", c.task_id == task_id, c.owner == owner)

    def sent_watched_tasks(self) -> list[tuple[str, str]]:
        """(task id, owner) of every request sent in watch mode whose task was not seen leave yet."""
        c = watched_tasks.c
        with self._begin() as conn:
            rows = conn.execute(select(c.task_id, c.owner).where(c.state == "sent")).all()
        return [(row[0], row[1]) for row in rows]

    def close_watched_task(self, task_id: str, owner: str, now: float) -> bool:
        """The task left ``owner`` (reassigned, skipped, aborted, done): True for the one
        instance that closes it, which then revokes its requests."""
        c = watched_tasks.c
        with self._begin() as conn:
            changed = conn.execute(
                update(watched_tasks)
                .where(c.task_id == task_id, c.owner == owner, c.state == "sent")
                .values(state="closed", claimed_at=now)
            ).rowcount
        return changed == 1

    def open_requests_for(self, task_id: str, owner: str) -> list[str]:
        """Ids of the requests for ``task_id`` to ``owner`` that were not revoked."""
        with self._begin() as conn:
            rows = conn.execute(
                select(requests.c.id).where(
                    requests.c.task_id == task_id, requests.c.owner == owner, requests.c.revoked_at.is_(None)
                )
            ).all()
        return [row[0] for row in rows]

    def record_handover(self, request_id: str, now_with: str, now: float) -> None:
        """Say who has the task of a request that is being withdrawn, for a late reply."""
        with self._begin() as conn:
            conn.execute(request_handovers.delete().where(request_handovers.c.request_id == request_id))
            conn.execute(insert(request_handovers).values(request_id=request_id, now_with=now_with, at=now))

    def handover_of(self, request_id: str) -> str | None:
        with self._begin() as conn:
            found = conn.execute(
                select(request_handovers.c.now_with).where(request_handovers.c.request_id == request_id)
            ).scalar_one_or_none()
        return str(found) if found is not None else None

    # Follow-ups of a request: reminders, the expiry notice ---------------------------

    def due_followups(
        self,
        now: float,
        reminders: tuple[float, ...],
        expired_since: float,
        limit: int = 100,
        stale_after: float = STALE_CLAIM_SECONDS,
    ) -> list[tuple[Request, str]]:
        """Unanswered, unrevoked requests with a follow-up due: ``reminder-N`` once the
        N-th delay has passed (and not the next one: a late round sends the latest only),
        ``expired`` once it expired (since ``expired_since``). Each step at most once.
        A request whose only claim is pending and older than ``stale_after`` counts as
        unanswered: that attempt died mid-action, and what it did is for the caller to
        find out (``followups.withheld_because``), not a reason for silence for good."""
        r = requests.c
        unanswered = ~_claim_stands(r.id, now, stale_after)

        def not_done(step: str) -> Any:
            f = request_followups.c
            return ~select(f.request_id).where(f.request_id == r.id, f.step == step).exists()

        due: list[tuple[Request, str]] = []
        with self._begin() as conn:
            for n, delay in enumerate(reminders, 1):
                step = f"reminder-{n}"
                window = [r.created_at <= now - delay]
                if n < len(reminders):
                    window.append(r.created_at > now - reminders[n])
                rows = conn.execute(
                    select(requests)
                    .where(r.revoked_at.is_(None), r.expires_at > now, *window, unanswered, not_done(step))
                    .order_by(r.created_at)
                    .limit(limit)
                ).mappings()
                due.extend((Request(**row), step) for row in rows)
            rows = conn.execute(
                select(requests)
                .where(r.revoked_at.is_(None), r.expires_at <= now, r.expires_at > expired_since, unanswered)
                .where(not_done("expired"))
                .order_by(r.expires_at)
                .limit(limit)
            ).mappings()
            due.extend((Request(**row), "expired") for row in rows)
        return due

    def claim_followup(self, request_id: str, step: str, holder: str, now: float, stale_after: float) -> bool:
        """Take one follow-up for ``holder``: True for exactly one instance (or for anyone
        once the holder's claim went stale: it died before finishing)."""
        row = {"request_id": request_id, "step": step, "holder": holder, "state": "sending", "at": now}
        f = request_followups.c
        take_over = (
            update(request_followups)
            .where(f.request_id == request_id, f.step == step, f.state == "sending", f.at < now - stale_after)
            .values(holder=holder, at=now)
        )
        return self._insert_or_take_over(request_followups, row, take_over)

    def followup_done(
        self,
        request_id: str,
        step: str,
        holder: str,
        now: float,
        *,
        withdrawn: bool = False,
        notice: NoticeTerms | None = None,
    ) -> bool:
        """The step is over: done, or ``withdrawn`` (nothing was sent: the task was decided
        another way). Either way no round takes it again. ``notice``: what the step tells the
        backend, recorded with it (one transaction) and held by its holder for a first try:
        True when this wrote it (then its holder tells it; a step taken over meanwhile, or
        a notice already there, is someone else's to tell)."""
        f = request_followups.c
        with self._begin() as conn:
            changed = conn.execute(
                update(request_followups)
                .where(f.request_id == request_id, f.step == step, f.holder == holder)
                .values(state="withdrawn" if withdrawn else "done", at=now)
            ).rowcount
            if changed == 1 and notice is not None and not withdrawn:
                return _add_notice(conn, request_id, notice, "", now)
        return False

    def followup_state(self, request_id: str, step: str) -> str | None:
        """``sending``, ``done`` or ``withdrawn``; None when the step was not taken yet."""
        f = request_followups.c
        with self._begin() as conn:
            found = conn.execute(select(f.state).where(f.request_id == request_id, f.step == step)).scalar_one_or_none()
        return str(found) if found is not None else None

    def decided_by_sibling(
        self, request_id: str, now: float | None = None, stale_after: float = STALE_CLAIM_SECONDS
    ) -> SiblingDecision | None:
        """What decided this request's task since the request was made, by rc-mta's own
        record (for a backend that cannot be asked, the webhook): another request's answer,
        or an N-of-M group's decision, with its approvers. An approval that did not decide
        its group decided nothing. A group decision still being told to the backend is
        returned not ``final`` (it may yet be taken back: ask again later). Another
        request's answer being acted on (its claim pending, and not yet dead when this
        request was made) is returned not ``final`` too: it may yet land. One whose attempt
        died (``claim_stale``), a lone answer's or a group decision's, may or may not have
        acted, which only the backend knows: returned ``unknown`` (such a decision is not
        taken back either: ``count_approval``'s ``take_back_stale``). A finished answer goes
        before one under way, and that before a dead one."""
        mine = requests.alias("mine")
        r, u, m, g = requests.c, used_tokens.c, approval_members.c, approval_groups.c
        in_group = (
            select(m.request_id)
            .join(approval_groups, g.id == m.group_id)
            .where(m.request_id == r.id, g.needed > 1)
            .exists()
        )
        at = _now(now)
        dead = _claim_is_stale(at, stale_after)
        alone = (
            select(u.action, u.actor, r.id, u.state, u.claimed_at, u.done_at)
            .select_from(used_tokens.join(requests, r.id == u.request_id).join(mine, mine.c.task_id == r.task_id))
            .where(
                mine.c.id == request_id,
                r.id != request_id,
                # Finished since this request was made, or under way (not yet dead) then.
                (u.done_at >= mine.c.created_at)
                | ((u.state == "pending") & (u.claimed_at >= mine.c.created_at - stale_after)),
                ~in_group,
            )
            .order_by(case((u.state == "done", 0), (dead, 2), else_=1), u.done_at, u.claimed_at)
            .limit(1)
        )
        d = _DECIDER.c
        groups = (
            select(g.decision, g.decided_by, g.decided_request, d.state, d.claimed_at, d.done_at)
            .select_from(
                approval_groups.join(mine, mine.c.task_id == g.task_id).join(
                    _DECIDER, d.request_id == g.decided_request
                )
            )
            .where(
                mine.c.id == request_id,
                g.needed > 1,
                g.decided_at >= mine.c.created_at,
                g.decided_request != request_id,
            )
        )
        with self._begin() as conn:
            lone = conn.execute(alone).first()
            decided = conn.execute(groups).all()
        found: list[tuple[float, SiblingDecision]] = []
        being_told = lost = None
        if lone is not None:
            answer = SiblingDecision(str(lone.action), str(lone.actor), str(lone.id))
            if lone.state == "done":
                found.append((float(lone.done_at), answer))
            elif claim_stale(lone.state, lone.claimed_at, at, stale_after):
                lost = replace(answer, final=False, unknown=True)
            else:
                being_told = replace(answer, final=False)
        for row in decided:
            by = str(row.decided_by or "the other owners")
            group = SiblingDecision(str(row.decision), by, str(row.decided_request))
            if row.state == "done":
                found.append((float(row.done_at), group))
            elif not claim_stale(row.state, row.claimed_at, at, stale_after):
                being_told = replace(group, final=False)
            else:
                lost = lost or replace(group, final=False, unknown=True)
        if found:
            return min(found, key=lambda at_and_decision: at_and_decision[0])[1]
        return being_told or lost

    def release_followup(self, request_id: str, step: str, holder: str) -> None:
        """It failed: the next round (of anyone) tries again."""
        f = request_followups.c
        self._give_back(request_followups, holder, "sending", f.request_id == request_id, f.step == step)

    # Notices to the task backend about a request (request_failed, expired), until told ----

    def claim_notices(
        self, holder: str, now: float, lease: float, events: tuple[str, ...], limit: int = 100
    ) -> list[Notice]:
        """Take the notices of ``events`` due for another attempt, each by a conditional
        UPDATE: of several instances asking at once only one gets it; a dead holder's goes
        after its lease."""
        n = request_notices.c
        due = (n.state == "pending", n.event.in_(events), n.next_attempt_at <= now)
        with self._begin() as conn:
            rows = conn.execute(
                select(n.request_id, n.event)
                .where(*due, _lease_free(request_notices, now))
                .order_by(n.next_attempt_at)
                .limit(limit)
            )
            candidates = [(row[0], row[1]) for row in rows]
        taken: list[Notice] = []
        for request_id, what in candidates:
            with self._begin() as conn:
                took = _take_lease(
                    conn, request_notices, holder, now, lease, n.request_id == request_id, n.event == what, *due
                )
            if took and (notice := self.get_notice(request_id, what)) is not None:
                taken.append(notice)
        return taken

    def settle_notice(
        self,
        notice: Notice,
        holder: str,
        state: str,
        now: float,
        *,
        error: str | None = None,
        next_attempt_at: float | None = None,
    ) -> bool:
        """Record one attempt (``told``, ``given_up``, or ``pending`` again until
        ``next_attempt_at``) and let go; False when ``holder`` no longer held it."""
        n = request_notices.c
        values = _attempt_over(request_notices, state, state == "pending", now, next_attempt_at)
        if error is not None:
            values["last_error"] = error[:1000]
        with self._begin() as conn:
            return _settle_lease(
                conn, request_notices, holder, values, n.request_id == notice.request_id, n.event == notice.event
            )

    def tell_notice_in_comment(self, notice: Notice, holder: str, author: str, text: str, now: float) -> bool:
        """Tell an embedded task's notice (an expiry): its comment added and the notice settled
        ``told`` in one transaction, so neither is written without the other (in two, a crash
        between them left the notice pending and its next holder wrote the comment again).
        False, with nothing written, when ``holder`` no longer held the notice."""
        n = request_notices.c
        values = _attempt_over(request_notices, "told", False, now, None)
        with self._begin() as conn:
            where = (n.request_id == notice.request_id, n.event == notice.event)
            if not _settle_lease(conn, request_notices, holder, values, *where):
                return False
            conn.execute(insert(task_comments).values(task_id=notice.task_id, author=author, text=text, at=now))
        return True

    def get_notice(self, request_id: str, event: str) -> Notice | None:
        n, r = request_notices.c, requests.c
        with self._begin() as conn:
            row = (
                conn.execute(
                    select(request_notices, r.task_id, r.owner, r.expires_at)
                    .join(requests, r.id == n.request_id)
                    .where(n.request_id == request_id, n.event == event)
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return Notice(**{k: row[k] for k in Notice.__dataclass_fields__})

    def add_task_comment(self, task_id: str, author: str, text: str, now: float) -> None:
        """A comment on an embedded task that changes nothing else (an expiry notice)."""
        with self._begin() as conn:
            conn.execute(insert(task_comments).values(task_id=task_id, author=author, text=text, at=now))

    # N-of-M approvals: several owners' requests that decide one task together ---------
    #
    # The rule around a group: while it may still decide its task (undecided, with a member
    # request someone may still answer), no request outside it may decide that task alone,
    # and no group is made while requests outside any group may still decide it. Requests are
    # checked when made (``approval_rule``: early, then again as written, ``add_request_with_mail``)
    # and answers when they come (``approval_standing``).

    def add_approval_group(self, task_id: str, needed: int, now: float) -> str:
        group_id = "g-" + secrets.token_hex(8)
        with self._begin() as conn:
            conn.execute(
                insert(approval_groups).values(id=group_id, task_id=task_id, needed=needed, approvals=0, created_at=now)
            )
        return group_id

    def add_approval_member(self, request_id: str, group_id: str) -> None:
        """Before the request is mailed: no answer to it may act alone."""
        with self._begin() as conn:
            conn.execute(insert(approval_members).values(request_id=request_id, group_id=group_id))

    def approval_group_of(
        self, request_id: str, now: float | None = None, stale_after: float = STALE_CLAIM_SECONDS
    ) -> ApprovalGroup | None:
        """The group the request decides in, with how its decision stands at ``now``."""
        g = approval_groups.c
        with self._begin() as conn:
            row = (
                conn.execute(
                    select(approval_groups, *_DECIDER_COLUMNS)
                    .select_from(
                        approval_groups.join(approval_members, approval_members.c.group_id == g.id).outerjoin(
                            _DECIDER, _DECIDER.c.request_id == g.decided_request
                        )
                    )
                    .where(approval_members.c.request_id == request_id)
                )
                .mappings()
                .first()
            )
        return _group(row, _now(now), stale_after) if row else None

    def approval_group(
        self, group_id: str, now: float | None = None, stale_after: float = STALE_CLAIM_SECONDS
    ) -> tuple[ApprovalGroup, frozenset[str]] | None:
        """A group, and the owners asked in it (by a request not withdrawn): one person is
        asked once, or their one approval could count twice."""
        with self._begin() as conn:
            return _approval_group(conn, group_id, _now(now), stale_after)

    def task_approvals(self, task_id: str, now: float, stale_after: float = STALE_CLAIM_SECONDS) -> TaskApprovals:
        """What may still decide ``task_id``, for a new request to be checked against: its
        groups that may still decide it (a decision not yet told to the backend included),
        and its requests outside any group that may still be answered."""
        with self._begin() as conn:
            return _task_approvals(conn, task_id, now, stale_after)

    def approval_standing(
        self, request_id: str, task_id: str, now: float, stale_after: float = STALE_CLAIM_SECONDS, *, waits: bool = True
    ) -> ApprovalStanding:
        """Where an answer to this request stands: the group it decides in (None: alone) and
        how its decision stands, whether its owner's approval is counted there already, and a
        group of its task it is not part of that may still decide the task (then this answer
        must not act). Every answer asks this (but one ``answer_at_once`` writes: it asks the
        same as it writes), so its statements are built once (``_APPROVALS``).
        ``waits=False``: on the event loop (``_reading``)."""
        values = {"request_id": request_id, "task_id": task_id, "now": now}
        with self._reading(waits) as conn:
            if not conn.execute(_APPROVALS.any_group, values).scalar():
                return ApprovalStanding(None)  # the usual case, in one statement of two key lookups
            _one_snapshot(conn)  # the statements below read the groups as they stand at one moment
            own = conn.execute(_APPROVALS.own_group, values).mappings().first()
            group = _group(own, now, stale_after) if own else None
            owner_counted = False
            if group is not None:
                found = conn.execute(_APPROVALS.owner_counted, {**values, "group_id": group.id}).first()
                owner_counted = found is not None
            live = conn.execute(_APPROVALS.live_groups, values).mappings().all()
        blocking = next((_group(row, now, stale_after) for row in live if group is None or row["id"] != group.id), None)
        return ApprovalStanding(group, own is not None and own["approved_at"] is not None, owner_counted, blocking)

    # Deciding a group. Each of these is called by the attempt that holds the request's claim
    # (``claim``), so a decision this request made earlier was made by an attempt that is gone.
    # A decision is final once its deciding claim is finished (``finish_claim``): until then
    # it may still be taken back (``undo_group_decision``), and other answers wait (``DECIDING``).
    # One whose deciding claim went stale (its process died) is taken back by the next answer
    # when ``take_back_stale`` (a backend that reads tasks: the pipeline asked it first whether
    # that decision acted, ``_stale_decision_acted``). Without it (the webhook; the default, the
    # side that never acts twice) only the decider's own request may take it up again: another
    # request's answer gets SiblingOutcomeUnknown.

    def count_approval(
        self, group_id: str, request_id: str, actor: str, now: float, *, take_back_stale: bool = False
    ) -> int | None:
        """This request's approval, counted once however often its reply comes again, and
        once per person however many of the group's requests name them: the group's count,
        or None when the group was decided by another answer (for good, or being told to
        the backend). The approval that reaches ``needed`` decides (complete); its retry
        gets the count again, to finish the job. A decision whose attempt died is taken back
        only ``take_back_stale`` (``_decider_gone``)."""
        g, m, r = approval_groups.c, approval_members.c, requests.c
        with self._begin() as conn:
            group = self._lock_group(conn, group_id)
            if group is None:
                return None
            approvals = int(group.approvals)
            if group.decided_at is not None:
                if group.decided_request == request_id and group.decision == "complete":
                    return approvals  # our own earlier attempt decided: finish telling the backend
                if group.decided_request != request_id and not self._decider_gone(
                    conn, group, request_id, now, take_back_stale=take_back_stale
                ):
                    return None
                approvals = self._take_back(conn, group)  # gone, or our own earlier fail: decide anew
            others = approval_members.alias("others")
            owner = select(r.owner).where(r.id == request_id).scalar_subquery()
            owner_counted = (
                select(others.c.request_id)
                .join(requests, r.id == others.c.request_id)
                .where(others.c.group_id == group_id, others.c.approved_at.is_not(None), r.owner == owner)
                .exists()
            )
            marked = conn.execute(
                update(approval_members)
                .where(m.request_id == request_id, m.group_id == group_id, m.approved_at.is_(None), ~owner_counted)
                .values(approved_at=now)
            ).rowcount
            if not marked:  # counted before (a retry), or its owner approved through another request
                return approvals
            count = approvals + 1
            values: dict[str, Any] = {"approvals": g.approvals + 1}
            if count >= group.needed:
                values.update(
                    decided_at=now,
                    decision="complete",
                    decided_by=self._approvers(conn, group_id, actor),
                    decided_request=request_id,
                )
            conn.execute(update(approval_groups).where(g.id == group_id).values(**values))
            return count

    def decide_group_fail(
        self, group_id: str, request_id: str, actor: str, now: float, *, take_back_stale: bool = False
    ) -> bool:
        """A fail from anyone decides: True for the one answer that did (and for its retry);
        False when another answer decided (for good, or being told to the backend). A
        decision whose attempt died is taken back only ``take_back_stale`` (``_decider_gone``)."""
        g = approval_groups.c
        with self._begin() as conn:
            group = self._lock_group(conn, group_id)
            if group is None:
                return False
            if group.decided_at is not None:
                if group.decided_request == request_id and group.decision == "fail":
                    return True
                if group.decided_request != request_id and not self._decider_gone(
                    conn, group, request_id, now, take_back_stale=take_back_stale
                ):
                    return False
                self._take_back(conn, group)  # gone, or our own earlier approval: decide anew
            conn.execute(
                update(approval_groups)
                .where(g.id == group_id)
                .values(decided_at=now, decision="fail", decided_by=actor, decided_request=request_id)
            )
            return True

    def undo_group_decision(self, group_id: str, request_id: str, counted: bool) -> None:
        """The backend could not be told: this request's decision (and its approval) are
        taken back, so the sender's retry decides again. A decision that is no longer this
        request's (taken back meanwhile, and maybe made by another answer) is left alone."""
        g = approval_groups.c
        cleared = {"decided_at": None, "decision": None, "decided_by": None, "decided_request": None}
        with self._begin() as conn:
            conn.execute(
                update(approval_groups).where(g.id == group_id, g.decided_request == request_id).values(**cleared)
            )
            if counted and self._unmark_approval(conn, request_id):
                conn.execute(update(approval_groups).where(g.id == group_id).values(approvals=g.approvals - 1))

    def uncount_approval(self, group_id: str, request_id: str) -> None:
        g = approval_groups.c
        with self._begin() as conn:
            if self._unmark_approval(conn, request_id):
                conn.execute(
                    update(approval_groups)
                    .where(g.id == group_id, g.decided_at.is_(None))
                    .values(approvals=g.approvals - 1)
                )

    @staticmethod
    def _lock_group(conn: Connection, group_id: str) -> Any:
        """The group's row, taken by a write (a row lock on PostgreSQL, the write lock on
        SQLite): two answers at once take turns, and the second sees what the first did."""
        g = approval_groups.c
        return conn.execute(
            update(approval_groups)
            .where(g.id == group_id)
            .values(approvals=g.approvals)
            .returning(g.id, g.task_id, g.approvals, g.needed, g.decided_at, g.decision, g.decided_request)
        ).first()

    @staticmethod
    def _decider_gone(conn: Connection, group: Any, request_id: str, now: float, *, take_back_stale: bool) -> bool:
        """Whether the attempt that decided ``group`` is gone, so ``request_id``'s answer may
        decide anew: its claim was given back (it ended knowing it had not acted), or it is
        pending and stale (``STALE_CLAIM_SECONDS``, as the pipeline judges it) and
        ``take_back_stale`` (then it is given back here, so that attempt can no longer finish
        it). A finished claim (final) or a live one (telling the backend) stands. A stale one
        without ``take_back_stale`` (a backend that cannot be asked whether it acted) stands
        too, and this answer waits for it: SiblingOutcomeUnknown (451), until the decider's
        own retry settles it or a person decides the task in the workflow system."""
        t = used_tokens.c
        decider_dead = (t.request_id == group.decided_request, _claim_is_stale(now, STALE_CLAIM_SECONDS))
        if not take_back_stale:
            if conn.execute(select(t.request_id).where(*decider_dead)).first() is not None:
                log.warning(
                    "approval group %s of task %s: the %s decided by request %s was cut off mid-action and the"
                    " backend cannot say whether it acted: not taken back, so request %s is not acted on; its"
                    " sender's retry settles it, or decide task %s in the workflow system",
                    group.id,
                    group.task_id,
                    group.decision,
                    group.decided_request,
                    request_id,
                    group.task_id,
                )
                raise SiblingOutcomeUnknown(group.task_id, group.decided_request)
        elif conn.execute(used_tokens.delete().where(*decider_dead)).rowcount:
            return True
        return conn.execute(select(t.state).where(t.request_id == group.decided_request)).first() is None

    def _take_back(self, conn: Connection, group: Any) -> int:
        """Clear a decision whose deciding attempt is gone, and its approval with it (its
        sender's retry counts it again): the group's count after."""
        g = approval_groups.c
        unmarked = self._unmark_approval(conn, group.decided_request)
        conn.execute(
            update(approval_groups)
            .where(g.id == group.id)
            .values(
                decided_at=None,
                decision=None,
                decided_by=None,
                decided_request=None,
                approvals=g.approvals - (1 if unmarked else 0),
            )
        )
        log.warning(
            "approval group %s: the %s decided by request %s is taken back: its attempt ended without telling"
            " the backend for sure; the group decides again",
            group.id,
            group.decision,
            group.decided_request,
        )
        return int(group.approvals) - (1 if unmarked else 0)

    @staticmethod
    def _unmark_approval(conn: Connection, request_id: str) -> bool:
        m = approval_members.c
        return bool(
            conn.execute(
                update(approval_members)
                .where(m.request_id == request_id, m.approved_at.is_not(None))
                .values(approved_at=None)
            ).rowcount
        )

    @staticmethod
    def _approvers(conn: Connection, group_id: str, actor: str) -> str:
        """Who approved: the answered requests of the group, then ``actor``, each once."""
        rows = conn.execute(
            select(used_tokens.c.actor)
            .join(approval_members, approval_members.c.request_id == used_tokens.c.request_id)
            .where(
                approval_members.c.group_id == group_id,
                used_tokens.c.state == "done",
                used_tokens.c.action == "complete",
            )
            .order_by(used_tokens.c.done_at)
        ).all()
        names: dict[str, None] = {}
        for name in [*(row[0] for row in rows), actor]:
            names.setdefault(name)
        return ", ".join(names)


# Several instances on one store --------------------------------------------------------

# The longest mailbox name a claim keeps; longer ones are kept shortened (``_claimed_mailbox``).
MAILBOX_NAME_LENGTH = 512

mailbox_claims = Table(
    "mailbox_claims",
    metadata,
    # One row per message a poller took from a folder, so two instances polling the same
    # mailbox never both handle or both file it. UIDVALIDITY is 32-bit unsigned: BigInteger.
    Column("mailbox", String(MAILBOX_NAME_LENGTH), primary_key=True),  # as ``_claimed_mailbox`` names it
    Column("uidvalidity", BigInteger, primary_key=True, autoincrement=False),
    Column("uid", BigInteger, primary_key=True, autoincrement=False),
    Column("holder", String(64), nullable=False),  # the poller process that has it
    Column("state", String(16), nullable=False),  # handling | settled | filed
    Column("disposition", String(16)),  # processed | rejected, once settled
    Column("claimed_at", Float, nullable=False),
)

rate_counts = Table(
    "rate_counts",
    metadata,
    # Rate-limit events per (kind, key) in slots of window/RATE_SLOTS seconds, numbered by
    # the database's clock so every instance agrees which slot is now (PostgreSQL only).
    Column("kind", String(32), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("slot", BigInteger, primary_key=True, autoincrement=False),
    Column("count", Integer, nullable=False),
)

watched_tasks = Table(
    "watched_tasks",
    metadata,
    # Watch mode: one row per (Release task, owner) a request was mailed for, so one
    # instance sends however many run, and the one that sees the task leave revokes.
    Column("task_id", String(255), primary_key=True),
    Column("owner", String(320), primary_key=True),
    Column("holder", String(64), nullable=False),  # the instance sending (or that sent) it
    Column("state", String(16), nullable=False),  # sending | sent | closed
    Column("claimed_at", Float, nullable=False),
)

request_handovers = Table(
    "request_handovers",
    metadata,
    # A request withdrawn because its task went to someone else: who has it now.
    Column("request_id", String(16), primary_key=True),
    Column("now_with", Text, nullable=False),
    Column("at", Float, nullable=False),
)

request_followups = Table(
    "request_followups",
    metadata,
    # What was done after a request was sent, once each: reminder-1, reminder-2, ..., expired.
    Column("request_id", String(16), primary_key=True),
    Column("step", String(16), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # sending | done | withdrawn (the task was decided another way)
    Column("at", Float, nullable=False),
)

request_notices = Table(
    "request_notices",
    metadata,
    # What the task backend must still be told about a request, until it was: ``request_failed``
    # (its mail will never arrive), ``expired`` (unanswered). Tried at once, then each
    # follow-up round with back-off.
    Column("request_id", String(16), ForeignKey("requests.id"), primary_key=True),
    Column("event", String(32), primary_key=True),
    Column("answer", Text, nullable=False),  # the relay's answer that failed the mail ("" for expired)
    Column("state", String(16), nullable=False),  # pending | told | given_up
    Column("attempts", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_error", Text),  # why the last attempt did not reach the backend
    Column("done_at", Float),
    # Which instance is telling it, until when: another takes it only after the lease.
    Column("holder", String(64)),
    Column("lease_until", Float),
)

approval_groups = Table(
    "approval_groups",
    metadata,
    # Requests to several owners that decide one task together: ``needed`` approvals
    # complete it, one fail fails it. ``approvals`` is counted in one statement per answer.
    Column("id", String(32), primary_key=True),
    Column("task_id", String(255), nullable=False, index=True),
    Column("needed", Integer, nullable=False),
    Column("approvals", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("decided_at", Float),
    Column("decision", String(16)),  # complete | fail
    Column("decided_by", Text),  # who: the approvers, or the one who failed it
    Column("decided_request", String(16)),  # whose answer decided: its retry may finish the job
)

approval_members = Table(
    "approval_members",
    metadata,
    Column("request_id", String(16), primary_key=True),
    Column("group_id", String(32), nullable=False, index=True),
    # Set when this request's approval was counted: a retried reply is never counted twice.
    Column("approved_at", Float),
)


# The schema: made, or brought up to date, as an instance starts --------------------------

# PostgreSQL advisory lock key (with the schema's name hashed as the second half) that
# ``create_schema`` takes: any number, as long as it is the same in every version.
SCHEMA_LOCK = 0x72636D74  # "rcmt"


def _lock_schema(conn: Connection) -> None:
    """Take, for the rest of ``conn``'s transaction, the lock that makes schema changes one
    instance at a time: ``create_all`` looks whether a table exists, then creates it, and
    two instances doing that at once fail on each other's table. PostgreSQL: an advisory
    lock for this schema (search_path), held until commit; SQLite: the write lock, taken
    now (Python's sqlite3 would begin only at the first INSERT, leaving DDL before it
    outside the transaction). Waits as long as any lock: busy_timeout."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK}, hashtext(current_schema()))"))


def _schema_lacks(conn: Connection) -> bool:
    """Whether any table, column or index of this version is missing (only reads). A column
    missing that no upgrade adds (``_UPGRADES``) is no store an older version left: refused
    (StoreIncompatible), rather than the schema lock taken at every start for nothing."""
    found = inspect(conn)
    tables = set(found.get_table_names())
    columns = found.get_multi_columns()
    indexes = found.get_multi_indexes()
    upgraded = {(table, column) for table, column, _ in _UPGRADES}
    lacks = False
    for table in metadata.tables.values():
        if table.name not in tables:
            lacks = True  # create_all makes it, whole
            continue
        key = (None, table.name)
        have = {c["name"] for c in columns.get(key, [])}
        missing = [c.name for c in table.columns if c.name not in have]
        if unknown := [name for name in missing if (table.name, name) not in upgraded]:
            raise StoreIncompatible(
                f"the store's table {table.name} lacks column(s) {', '.join(unknown)}, which no upgrade adds: "
                "it was not made by rc-mta or was changed by hand; set [store] url to rc-mta's own store, "
                "or restore it from a backup"
            )
        if missing or not {i.name for i in table.indexes} <= {i["name"] for i in indexes.get(key, [])}:
            lacks = True
    return lacks


def _add_missing_columns(conn: Connection) -> None:
    """Bring a store made by an older version up to date (``create_all`` adds tables, not
    columns): each column of ``_UPGRADES`` it lacks. Under the schema lock, in
    ``create_schema``'s transaction: no other instance changes it meanwhile, and all of it
    is done or nothing."""
    for table, column, upgrade in _UPGRADES:
        if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
            upgrade(conn)


def _add_attempt(conn: Connection) -> None:
    """A store from before each attempt at answering held its claim under its own id."""
    conn.execute(text("ALTER TABLE used_tokens ADD COLUMN attempt VARCHAR(32)"))


def _key_outbound_by_kind(conn: Connection) -> None:
    """A store from before reminders went through the queue keys ``outbound_queue`` by
    request alone: key it by (request, kind), each row it holds a request mail."""
    if conn.dialect.name == "sqlite":
        # SQLite cannot change a primary key: a new table, the rows copied, renamed.
        scratch = MetaData()
        requests.to_metadata(scratch)
        rekeyed = outbound_queue.to_metadata(scratch, name="outbound_queue_rekeyed")
        conn.execute(CreateTable(rekeyed))
        old = ", ".join(c.name for c in outbound_queue.c if c.name != "kind")
        conn.exec_driver_sql(
            f"INSERT INTO outbound_queue_rekeyed ({old}, kind) SELECT {old}, '{REQUEST_MAIL}' FROM outbound_queue"
        )
        conn.exec_driver_sql("DROP TABLE outbound_queue")
        conn.exec_driver_sql("ALTER TABLE outbound_queue_rekeyed RENAME TO outbound_queue")
        for index in outbound_queue.indexes:
            index.create(conn)
    else:
        key = inspect(conn).get_pk_constraint("outbound_queue")["name"]
        conn.exec_driver_sql(
            f"ALTER TABLE outbound_queue ADD COLUMN kind VARCHAR(16) DEFAULT '{REQUEST_MAIL}' NOT NULL"
        )
        conn.exec_driver_sql(f'ALTER TABLE outbound_queue DROP CONSTRAINT "{key}"')
        conn.exec_driver_sql("ALTER TABLE outbound_queue ADD PRIMARY KEY (request_id, kind)")


# The columns of this version an older version's tables may lack, and the step that adds
# each: the one list both the look at start (``_schema_lacks``) and the upgrade go by.
_UPGRADES: tuple[tuple[str, str, Callable[[Connection], None]], ...] = (
    ("used_tokens", "attempt", _add_attempt),
    ("outbound_queue", "kind", _key_outbound_by_kind),
)


def _add_missing_indexes(conn: Connection) -> None:
    """``create_all`` makes the indexes of the tables it creates only: an index added to a
    table an older version made (approval_groups by task, which every answer looks up)
    is made here. Under the schema lock."""
    found = inspect(conn)
    for table in metadata.tables.values():
        have = {i["name"] for i in found.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in have:
                index.create(conn)


@dataclass(frozen=True)
class Notice:
    """Something the task backend must be told about a request (``request_failed``, ``expired``)."""

    request_id: str
    event: str
    task_id: str
    owner: str
    expires_at: float
    answer: str
    state: str  # pending | told | given_up
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None


class GroupState(Enum):
    """How an N-of-M group's decision stands. Decided is not yet final: the deciding answer
    still has to tell the backend, and if it cannot, the decision is taken back."""

    # Undecided, or decided by an attempt that died: the next answer decides again, where the
    # backend can say whether that decision acted (``Store.count_approval``'s ``take_back_stale``).
    OPEN = "open"
    DECIDING = "deciding"  # decided; the deciding answer is telling the backend: others wait (4xx)
    DECIDED = "decided"  # decided, and the deciding answer finished: for good


@dataclass(frozen=True)
class NoticeTerms:
    """The notice ``settle_outbound`` writes with a request mail's FAILED state (or
    ``followup_done`` with the expired step): ``event``, held by ``holder`` for its first
    attempt, for ``lease`` seconds."""

    event: str
    holder: str
    lease: float


@dataclass(frozen=True)
class ApprovalGroup:
    id: str
    task_id: str
    needed: int
    approvals: int
    created_at: float
    decided_at: float | None
    decision: str | None
    decided_by: str | None
    decided_request: str | None = None
    state: GroupState = GroupState.OPEN


@dataclass(frozen=True)
class SiblingDecision:
    """What decided a task, by rc-mta's own record: another request's answer, or its N-of-M
    group's decision (its decision and approvers, and the answer that decided)."""

    action: str  # complete | fail
    actor: str  # who answered; for a group, who approved (or who failed it)
    request_id: str  # the answer that decided
    final: bool = True  # False: that answer is telling the backend now and may still be taken back
    # That answer's attempt died telling the backend (its claim pending and dead): whether
    # it acted only the backend knows.
    unknown: bool = False


# The claim of the answer that decided a group: whether it finished says whether the decision is final.
_DECIDER = used_tokens.alias("decider")
_DECIDER_COLUMNS = (_DECIDER.c.state.label("decider_state"), _DECIDER.c.claimed_at.label("decider_claimed_at"))


def _group(row: Any, now: float, stale_after: float) -> ApprovalGroup:
    """A group read with its deciding claim (``_DECIDER_COLUMNS``), and how its decision stands."""
    state = GroupState.OPEN
    if row["decided_at"] is not None:
        if row["decider_state"] == "done":
            state = GroupState.DECIDED
        elif row["decider_state"] == "pending" and not claim_stale(
            row["decider_state"], row["decider_claimed_at"], now, stale_after
        ):
            state = GroupState.DECIDING
    return ApprovalGroup(**{c.name: row[c.name] for c in approval_groups.c}, state=state)


def _now(now: float | None) -> float:
    return time.time() if now is None else now


@dataclass(frozen=True)
class ApprovalStanding:
    """Where an answer to one request stands among its task's N-of-M groups."""

    group: ApprovalGroup | None  # the group the request decides in; None: it decides alone
    counted: bool = False  # this request's approval is counted in it
    owner_counted: bool = False  # its owner's approval is counted there through another request
    blocking: ApprovalGroup | None = None  # a group it is not part of that may still decide the task


@dataclass(frozen=True)
class TaskApprovals:
    """What may still decide a task, against which a new request for it is checked."""

    groups: tuple[ApprovalGroup, ...]  # undecided, with a member request someone may still answer
    alone: tuple[str, ...]  # ids of requests outside any group someone may still answer


@dataclass(frozen=True)
class _ApprovalStatements:
    """The statements that say what may still decide a task, built once with named
    parameters (as ``_AnswerStatements``): every answer runs them, and building them each
    time cost more than running them."""

    any_group: Any  # whether the request is in a group (N of M), or its task has one: else it stands alone
    own_group: Any  # the request's group (N of M) and its approval mark
    owner_counted: Any  # another request of the group, of the same owner, whose approval counted
    live_groups: Any  # the task's groups that may still decide it (not decided for good), oldest first
    any_live_group: Any  # whether ``live_groups`` has one: a condition, for ``answer_at_once``'s claim
    alone: Any  # the task's requests outside any group that may still be answered


def _approval_statements() -> _ApprovalStatements:
    p = bindparam
    g, m, r, t = approval_groups.c, approval_members.c, requests.c, used_tokens.c
    now = p("now", type_=Float)
    # A request someone may still answer: not withdrawn, not expired, not answered.
    answered = select(t.request_id).where(t.request_id == r.id, t.state == "done").exists()
    may_be_answered = and_(r.revoked_at.is_(None), r.expires_at > now, ~answered)
    others = approval_members.alias("others")
    owner = select(r.owner).where(r.id == p("request_id")).scalar_subquery()
    # Undecided, with a member request someone may still answer: a group whose requests were
    # all withdrawn, expired or answered without deciding stands in no one's way.
    member_may_answer = (
        select(m.request_id).join(requests, r.id == m.request_id).where(m.group_id == g.id, may_be_answered).exists()
    )
    # Decided for good: the answer that decided finished telling the backend. A group whose
    # decision is still being told (or whose deciding attempt died) may still decide.
    decided_for_good = and_(
        g.decided_at.is_not(None),
        select(t.request_id).where(t.request_id == g.decided_request, t.state == "done").exists(),
    )
    with_decider = approval_groups.outerjoin(_DECIDER, _DECIDER.c.request_id == g.decided_request)
    may_still_decide = (g.task_id == p("task_id"), ~decided_for_good, g.needed > 1, member_may_answer)
    return _ApprovalStatements(
        # Without a group of more than one approval, of the task or holding the request, the
        # request decides alone and nothing stands in its way: what the others then say.
        any_group=select(
            or_(
                select(g.id).where(g.task_id == p("task_id"), g.needed > 1).exists(),
                select(m.request_id)
                .join(approval_groups, g.id == m.group_id)
                .where(m.request_id == p("request_id"), g.needed > 1)
                .exists(),
            )
        ),
        own_group=select(approval_groups, m.approved_at, *_DECIDER_COLUMNS)
        .select_from(with_decider.join(approval_members, m.group_id == g.id))
        .where(m.request_id == p("request_id"), g.needed > 1),
        owner_counted=select(others.c.request_id)
        .join(requests, r.id == others.c.request_id)
        .where(
            others.c.group_id == p("group_id"),
            others.c.request_id != p("request_id"),
            others.c.approved_at.is_not(None),
            r.owner == owner,
        )
        .limit(1),
        live_groups=select(approval_groups, *_DECIDER_COLUMNS)
        .select_from(with_decider)
        .where(*may_still_decide)
        .order_by(g.created_at, g.id),
        any_live_group=select(g.id).where(*may_still_decide).exists(),
        alone=select(r.id)
        .where(r.task_id == p("task_id"), may_be_answered)
        .where(~select(m.request_id).where(m.request_id == r.id).exists())
        .order_by(r.created_at),
    )


_APPROVALS = _approval_statements()

# Every reply's RCPT reads its request by id: built here once, as the statements above, it
# is run for a third of what building it each time cost (55 vs 120 µs with the commit).
_REQUEST_BY_ID = select(requests).where(requests.c.id == bindparam("request_id"))
_CLAIM_BY_ID = select(used_tokens).where(used_tokens.c.request_id == bindparam("request_id"))


class ReadWouldWait(Exception):
    """A read asked not to wait (``Store._reading``) might: read it again where waiting is harmless."""


def _one_snapshot(conn: Connection) -> None:
    """On SQLite, let the rest of ``conn``'s transaction read the store as it is at one moment:
    Python's sqlite3 begins none before a SELECT, so each statement would read it as it is
    then. ``_begin``'s lock keeps this process's writes from between them; a read on the loop
    takes no lock. (PostgreSQL: unchanged, each statement reads what was committed before it.)"""
    driver = conn.connection.driver_connection
    if conn.dialect.name == "sqlite" and driver is not None and not driver.in_transaction:
        conn.exec_driver_sql("BEGIN")


@dataclass(frozen=True)
class ApprovalCheck:
    """A new request made under the N-of-M rule: in ``group_id`` (None: alone)."""

    group_id: str | None


def approval_rule(
    task_id: str,
    owner: str | None,
    group_id: str | None,
    found: TaskApprovals,
    known: tuple[ApprovalGroup, frozenset[str]] | None,
    *,
    new_group: bool,
) -> None:
    """The rule around N-of-M groups, for a new request (to ``owner``; in ``group_id``, or
    in a group about to be made, or alone), against what may decide its task (``found``)
    and its group with the owners asked there (``known``): while a group may still decide
    the task, no request outside it may (it would decide alone); a group is not made, or
    added to, while requests outside any group may still decide it; a person is asked once
    in a group. Raises ApprovalConflict (RcMtaError: no such group of the task)."""
    if group_id is not None:
        if known is None or known[0].task_id != task_id:
            raise RcMtaError(f"task {task_id} has no approval group {group_id}")
        group, asked = known
        if group.state is GroupState.DECIDED:
            past = "completed" if group.decision == "complete" else "failed"
            why = f"approval group {group_id} of task {task_id} was already decided: {past} by {group.decided_by}"
            raise ApprovalConflict(why, "nothing is left to approve")
        if group.state is GroupState.DECIDING:
            why = f"approval group {group_id} of task {task_id} is being decided right now"
            raise ApprovalConflict(why, "ask again once the backend was told (or the decision taken back)")
        if owner is not None and owner in asked:
            raise ApprovalConflict(
                f"{owner} is already asked in approval group {group_id}",
                "one person's approval counts once; revoke their request first to ask them again",
            )
    for other in found.groups:
        if other.id != group_id:
            many = f"{other.needed} must approve, {other.approvals} did so far"
            outside = "a request outside it" if group_id is None and not new_group else "another group"
            raise ApprovalConflict(
                f"task {task_id} is decided by approval group {other.id} ({many}), and {outside} would decide"
                " past its rule",
                "revoke the group's requests first, or add the person to the group",
                other.id,
            )
    if (group_id is not None or new_group) and found.alone:
        raise ApprovalConflict(
            f"task {task_id} has {len(found.alone)} request(s) outside any approval group that may still decide"
            f" it alone ({', '.join(found.alone)})",
            "revoke them first, then ask the group",
        )


def _task_approvals(conn: Connection, task_id: str, now: float, stale_after: float) -> TaskApprovals:
    values = {"task_id": task_id, "now": now}
    groups = conn.execute(_APPROVALS.live_groups, values).mappings().all()
    alone = conn.execute(_APPROVALS.alone, values).scalars().all()
    return TaskApprovals(tuple(_group(row, now, stale_after) for row in groups), tuple(alone))


def _approval_group(
    conn: Connection, group_id: str, now: float, stale_after: float
) -> tuple[ApprovalGroup, frozenset[str]] | None:
    g, m, r = approval_groups.c, approval_members.c, requests.c
    row = (
        conn.execute(
            select(approval_groups, *_DECIDER_COLUMNS)
            .select_from(approval_groups.outerjoin(_DECIDER, _DECIDER.c.request_id == g.decided_request))
            .where(g.id == group_id)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    owners = conn.execute(
        select(r.owner)
        .join(approval_members, m.request_id == r.id)
        .where(m.group_id == group_id, r.revoked_at.is_(None))
    ).scalars()
    return _group(row, now, stale_after), frozenset(owners)


# PostgreSQL advisory lock key (with the task's id hashed as the second half) that a request
# made under the N-of-M rule takes (``_lock_task_approvals``); not ``SCHEMA_LOCK``.
APPROVALS_LOCK = 0x72636D61  # "rcma"


def _lock_task_approvals(conn: Connection, task_id: str) -> None:
    """Take, for the rest of ``conn``'s transaction, the lock that makes the new requests of
    one task pass the N-of-M rule one at a time, so that the rule looked at and the request
    written are one decision. PostgreSQL: an advisory lock for the task, held until commit
    (the reads after it, each a new snapshot under READ COMMITTED, see what the previous
    holder wrote); SQLite: the write lock, taken now, before the reads (a deferred
    transaction would read first, and two could both pass). Waits as long as any lock."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:key, hashtext(:task_id))"), {"key": APPROVALS_LOCK, "task_id": task_id}
        )


# A window is counted in this many slots: the limit slides with the clock, a slot at a time.
RATE_SLOTS = 10


@dataclass(frozen=True)
class MailboxMessage:
    """A message in a mailbox folder, as IMAP names it for good (RFC 3501 §2.3.1.1). A
    source with other names (Graph's opaque ids) puts its own in ``mailbox``, with 0, 0."""

    mailbox: str  # imap://user@host/folder
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class MailboxClaim:
    """Whether this poller may handle (or file) a message, and how, if that was decided."""

    ours: bool
    disposition: str | None  # processed | rejected: handled already, only filing is left
    filed: bool = False  # not ours because it was filed: done with for good


def _new_mail(request_id: str, kind: str, message: bytes, sender: str, recipient: str, now: float) -> dict[str, Any]:
    """The row of a mail just queued: due at once, not tried yet."""
    return {
        "request_id": request_id,
        "kind": kind,
        "message": message,
        "sender": sender,
        "recipient": recipient,
        "state": Delivery.QUEUED.value,
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "last_answer": None,
        "done_at": None,
        "path": None,
    }


def _new_notice(request_id: str, event: str, answer: str, now: float) -> dict[str, Any]:
    """The row of a notice just recorded: due at once, not tried yet."""
    return {
        "request_id": request_id,
        "event": event,
        "answer": answer[:1000],
        "state": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "last_error": None,
        "done_at": None,
    }


def _claim_stands(request_id: Any, now: float, stale_after: float) -> Any:
    """Where the request ``request_id`` (a column, for a correlated subquery) has a claim
    that counts: answered, or being answered by an attempt not yet taken for dead (a pending
    claim older than ``stale_after`` is: its process died, another answer may take it over)."""
    t = used_tokens.c
    return select(t.request_id).where(t.request_id == request_id, ~_claim_is_stale(now, stale_after)).exists()


def _claim_is_stale(now: float, stale_after: float) -> ColumnElement[bool]:
    """Where a ``used_tokens`` row is a dead claim: ``claim_stale``, in SQL (the same
    boundary, strict); ``Store.claim`` takes such a claim over."""
    t = used_tokens.c
    return (t.state == "pending") & (t.claimed_at < now - stale_after)


def _same_answer_sql(action: str, actor: str) -> ColumnElement[bool]:
    """Where a ``used_tokens`` row was taken to do ``action`` for ``actor``: ``Claim.same_answer``, in SQL."""
    t = used_tokens.c
    return (t.action == action) & (func.lower(t.actor) == actor.lower())


# Leases: a row of ``outbound_queue`` or ``request_notices`` is worked on by one instance at a
# time. Its ``holder`` has it until ``lease_until``; a row no one holds, or whose holder's lease
# ran out (that instance died or hangs), may be taken by anyone. Each taking or settling is
# one conditional UPDATE, so of several instances at once exactly one sees its row count be 1.


def _lease_free(table: Table, now: float) -> Any:
    """Where the row is free to take: no one holds it, or its holder's lease ran out."""
    c = table.c
    return c.lease_until.is_(None) | (c.lease_until < now)


def _leased_to(holder: str, now: float, lease: float) -> dict[str, Any]:
    """The columns that make ``holder`` hold a row until ``now + lease``."""
    return {"holder": holder, "lease_until": now + lease}


def _take_lease(conn: Connection, table: Table, holder: str, now: float, lease: float, *where: Any) -> bool:
    """Take the row ``where`` says for ``holder`` if it is free (``_lease_free``): False
    when another instance holds it, or took it first."""
    taken = update(table).where(*where, _lease_free(table, now)).values(**_leased_to(holder, now, lease))
    return bool(conn.execute(taken).rowcount == 1)


def _attempt_over(table: Table, state: str, pending: bool, now: float, next_attempt_at: float | None) -> dict[str, Any]:
    """The columns of one attempt recorded and its lease given back: due again at
    ``next_attempt_at`` (default ``now``) while ``pending``, else done at ``now``."""
    values: dict[str, Any] = {"state": state, "attempts": table.c.attempts + 1, "holder": None, "lease_until": None}
    if pending:
        values["next_attempt_at"] = next_attempt_at if next_attempt_at is not None else now
    else:
        values["done_at"] = now
    return values


def _settle_lease(conn: Connection, table: Table, holder: str, values: dict[str, Any], *where: Any) -> bool:
    """Write ``values`` (``_attempt_over``) to the row ``where`` says if ``holder`` still holds
    it; False, with nothing written, when its lease ran out and another instance took it."""
    settled = update(table).where(*where, table.c.holder == holder).values(**values)
    return bool(conn.execute(settled).rowcount == 1)


def _add_notice(conn: Connection, request_id: str, notice: NoticeTerms, answer: str, now: float) -> bool:
    """Record ``notice`` held by its ``holder`` for a first try, unless that notice of the
    request is recorded already: True when this wrote it (then its holder tells it)."""
    row = _new_notice(request_id, notice.event, answer, now)
    added = (
        _insert_unless_there(conn, request_notices)
        .values(**row, **_leased_to(notice.holder, now, notice.lease))
        .execution_options(preserve_rowcount=True)  # an INSERT's is kept only when asked
    )
    return bool(conn.execute(added).rowcount == 1)


def _insert_unless_there(conn: Connection, table: Table) -> Any:
    """An INSERT that leaves a row with the same key alone (ON CONFLICT DO NOTHING): in a
    transaction that must go on, unlike an IntegrityError, which on PostgreSQL ends it."""
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert(table).on_conflict_do_nothing()


def _outbound_mail(row: Any) -> OutboundMail:
    return OutboundMail(
        kind=row["kind"],
        request_id=row["request_id"],
        message=bytes(row["message"]),
        sender=row["sender"],
        recipient=row["recipient"],
        state=Delivery(row["state"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        last_answer=row["last_answer"],
        done_at=row["done_at"],
        path=row["path"],
    )


def _mailbox_key(message: MailboxMessage) -> tuple[Any, ...]:
    c = mailbox_claims.c
    return (c.mailbox == _claimed_mailbox(message.mailbox), c.uidvalidity == message.uidvalidity, c.uid == message.uid)


def _claimed_mailbox(name: str) -> str:
    """The name a mailbox's claims are kept under: ``name`` where it fits the column, else
    its start (readable) and a SHA-256 of all of it, which every instance and every restart
    computes alike. A long IMAP user, host or folder, or Graph user or folder, would
    otherwise fail every claim on that mailbox (PostgreSQL keeps to the length)."""
    if len(name) <= MAILBOX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{name[: MAILBOX_NAME_LENGTH - len(digest) - 1]}~{digest}"


class SharedCounters:
    """Rate-limit counters in PostgreSQL, on one connection of their own held open: each
    question is one statement, one round trip (no pool check-out, no pre-ping), bounded by
    ``statement_timeout``; the statements are built once. Used from one thread at a time
    (the limiter's)."""

    def __init__(self, url: Any, window: float, timeout: float) -> None:
        milliseconds = max(1, int(timeout * 1000))
        self._engine = create_engine(
            url,
            pool_size=1,
            max_overflow=0,
            connect_args={"connect_timeout": max(2, int(timeout + 0.999)), "tcp_user_timeout": milliseconds},
        )

        @event.listens_for(self._engine, "connect")
        def _bounded(dbapi_conn: Any, _record: Any) -> None:
            # SET rather than the ``options`` parameter, which would replace the URL's own.
            with dbapi_conn.cursor() as cursor:
                cursor.execute(f"SET statement_timeout = {milliseconds}")
                cursor.execute(f"SET lock_timeout = {milliseconds}")
                # A count lost in a database crash is harmless; waiting for the disk on
                # every SMTP command is not.
                cursor.execute("SET synchronous_commit = off")
            dbapi_conn.commit()

        self._conn: Connection | None = None
        self._step = window / RATE_SLOTS
        self._count, self._add, self._add_under, self._prune = _counter_statements()

    def _run(self, statement: Any, **params: Any) -> Any:
        try:
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            return self._conn.execute(statement, {"step": self._step, **params})
        except (OperationalError, DBAPIError) as exc:
            self._drop()
            raise StoreUnavailable(f"rate counters unavailable: {exc.orig or exc}") from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
            except Exception:  # the connection is broken anyway
                pass

    def count(self, kind: str, key: str) -> int:
        """Events of ``kind`` for ``key`` in the window."""
        return int(self._run(self._count, kind=kind, key=key).scalar_one())

    def add(self, kind: str, key: str, limit: int | None = None) -> bool:
        """Count one event, unless that would make more than ``limit`` in the window (then
        False, nothing counted). Check and count are one statement: the row lock of the
        slot orders instances counting the same key at the same moment."""
        if limit is None:
            self._run(self._add, kind=kind, key=key)
            return True
        return self._run(self._add_under, kind=kind, key=key, limit=limit).first() is not None

    def prune(self) -> None:
        """Drop slots that fell out of the window."""
        self._run(self._prune)

    def close(self) -> None:
        self._drop()
        self._engine.dispose()


def _counter_statements() -> tuple[Any, Any, Any, Any]:
    """count, add, add-unless-over-the-limit and prune, with bound parameters ``step``
    (seconds per slot), ``kind``, ``key`` and ``limit``."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert  # only shared (PostgreSQL) stores count here

    c = rate_counts.c
    now = cast(func.floor(func.extract("epoch", func.now()) / bindparam("step", type_=Float)), BigInteger)

    def in_window(table: Any, *, earlier_only: bool) -> Any:
        last = table.c.slot < now if earlier_only else table.c.slot <= now
        return select(func.coalesce(func.sum(table.c.count), 0)).where(
            table.c.kind == bindparam("kind"), table.c.key == bindparam("key"), table.c.slot > now - RATE_SLOTS, last
        )

    count = in_window(rate_counts, earlier_only=False)
    add = pg_insert(rate_counts).values(kind=bindparam("kind"), key=bindparam("key"), slot=now, count=1)
    add = add.on_conflict_do_update(index_elements=["kind", "key", "slot"], set_={"count": c.count + 1})
    # The slots before this one, read from an alias: never correlated with the row updated.
    earlier = in_window(rate_counts.alias("earlier"), earlier_only=True).scalar_subquery()
    limit = bindparam("limit", type_=Integer)
    new_row: Any = select(bindparam("kind"), bindparam("key"), now, literal(1)).where(earlier < limit)
    add_under = (
        pg_insert(rate_counts)
        .from_select(["kind", "key", "slot", "count"], new_row)
        .on_conflict_do_update(
            index_elements=["kind", "key", "slot"], set_={"count": c.count + 1}, where=c.count + earlier < limit
        )
        .returning(c.count)
    )
    prune = rate_counts.delete().where(c.slot <= now - RATE_SLOTS)
    return count, add, add_under, prune


@dataclass(frozen=True)
class _AnswerStatements:
    """``answer_at_once``'s statements, built once with named parameters: SQLAlchemy then
    compiles each once and reuses it (its compiled cache is keyed on the statement)."""

    claim_done: Any
    move_task: Any
    add_comment: Any
    record: Any


def _answer_statements() -> _AnswerStatements:
    p = bindparam
    columns = ["request_id", "message_id", "action", "actor", "state", "claimed_at", "done_at", "attempt"]
    claim_values = select(
        p("request_id", type_=String),
        p("message_id", type_=String),
        p("action", type_=String),
        p("actor", type_=String),
        literal("done"),
        p("now", type_=Float),
        p("now", type_=Float),
        p("attempt", type_=String),
    ).where(
        requests.c.id == p("request_id"),
        requests.c.revoked_at.is_(None),
        # N of M: one answer never acts alone; the general path counts it.
        ~select(approval_members.c.request_id).where(approval_members.c.request_id == p("request_id")).exists(),
        # Nor does one outside a group that may still decide its task (``approval_standing``'s
        # ``blocking``): the general path refuses it, or waits.
        ~_APPROVALS.any_live_group,
    )
    return _AnswerStatements(
        claim_done=insert(used_tokens).from_select(columns, claim_values).execution_options(preserve_rowcount=True),
        move_task=update(tasks)
        .where(tasks.c.id == p("task_id"), tasks.c.status == IN_PROGRESS)
        .values(status=p("status"), acted_by=p("actor"), acted_at=p("now")),
        add_comment=insert(task_comments).values(task_id=p("task_id"), author=p("actor"), text=p("text"), at=p("now")),
        record=insert(processed_messages).values(
            message_id=p("message_id"),
            request_id=p("request_id"),
            source=p("source"),
            reply=p("reply"),
            code=p("code"),
            at=p("now"),
        ),
    )


_ANSWER = _answer_statements()


def _sqlite_file(url: str) -> Path | None:
    """The absolute path of a SQLite store's file; None for PostgreSQL or in memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).absolute()


def _make_engine(url: str, busy_timeout: float) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False})

        @event.listens_for(engine, "handle_error")
        def _reopen_when_read_only(context: ExceptionContext) -> None:
            # A connection opened while the file was not writable stays read-only for good:
            # treat it as lost, so the pool reopens its connections once the file is writable.
            if "readonly database" in str(context.original_exception):
                context.is_disconnect = True

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.close()

        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args={"connect_timeout": max(1, int(busy_timeout))},
    )
    if parsed.get_backend_name() == "postgresql":
        # PostgreSQL has no busy_timeout: a held lock would stall every transaction for as
        # long as it is held. Waiting for a lock gives up after busy_timeout, any statement
        # a while later; both raise OperationalError, which ``_begin`` turns into a 451.
        lock_ms = max(1, int(busy_timeout * 1000))
        statement_ms = 3 * lock_ms

        @event.listens_for(engine, "connect")
        def _postgresql_timeouts(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute(f"SET lock_timeout = {lock_ms}")
            cursor.execute(f"SET statement_timeout = {statement_ms}")
            cursor.close()
            dbapi_conn.commit()  # else the pool's reset rolls the settings back

    return engine
