"""Schema and queries, the same code on SQLite (default) and PostgreSQL.

Exactly-once rests on the database: a task changes state with a conditional UPDATE
(``WHERE status = 'in_progress'``), and a request is answered at most once because
``used_tokens`` has the request id as its primary key. Each attempt at answering holds
the claim under its own random attempt id, so two deliveries of one message (a sender
retrying, several MX hosts) never both act, and one never gives back the other's claim.
No lock in the process is needed, so several instances can share one PostgreSQL.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    cast,
    create_engine,
    event,
    func,
    insert,
    inspect,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.schema import CreateTable

from .errors import StoreUnavailable, TemporaryFailure

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


class ClaimOutcome(Enum):
    """What trying to claim a request found."""

    OURS = "ours"  # this attempt holds the claim: it may act
    DONE = "done"  # answered already; the claim row says by which message
    BUSY = "busy"  # another live attempt (maybe a copy of this very message) is answering it
    REVOKED = "revoked"  # the request row says it was withdrawn


# Claiming retries this often when the row it collided with was given back meanwhile.
CLAIM_TRIES = 5


def new_attempt_id() -> str:
    """A fresh identity for one attempt at acting on a request (one delivery of a reply)."""
    return secrets.token_hex(12)


class Store:
    """Synchronous queries; the service calls them off the event loop."""

    def __init__(self, url: str, busy_timeout: float = 5.0) -> None:
        self.url = url
        self.engine = _make_engine(url, busy_timeout)
        self._file = _sqlite_file(url)
        self._file_identity: tuple[int, int] | None = None
        self._probe_table_seen = False

    def create_schema(self) -> None:
        with self._begin() as conn:
            metadata.create_all(conn)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a store made by an older version up to date (``create_all`` adds tables,
        not columns). Several instances may start at once: a column another one added
        between our look and our ALTER is fine."""
        with self._begin() as conn:
            have = {c["name"] for c in inspect(conn).get_columns("used_tokens")}
        if "attempt" in have:
            return
        try:
            with self._begin() as conn:
                conn.execute(text("ALTER TABLE used_tokens ADD COLUMN attempt VARCHAR(32)"))
        except TemporaryFailure:
            with self._begin() as conn:
                if "attempt" not in {c["name"] for c in inspect(conn).get_columns("used_tokens")}:
                    raise

    def ping(self) -> None:
        """Prove the store takes a write, not only that it answers: a store that can only
        be read (a SQLite file opened while it was not writable, a PostgreSQL standby) or
        whose file was deleted must not look ready. Creates its small table if missing,
        so ``check-config`` can ask a store no service has started on yet."""
        if not self._probe_table_seen:
            try:
                with self._begin() as conn:
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
        """A transaction; database trouble becomes StoreUnavailable (the sender retries)."""
        self._check_file()
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
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

    def get_request(self, request_id: str) -> Request | None:
        with self._begin() as conn:
            row = conn.execute(select(requests).where(requests.c.id == request_id)).mappings().first()
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
    ) -> tuple[ClaimOutcome, Claim | None]:
        """Claim a request for one attempt at answering it with one message.

        OURS when the row is new or when a pending claim went stale (its process died).
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
            with self._begin() as conn:
                # The write first: on SQLite it takes the write lock, so the read below is current.
                taken = conn.execute(
                    update(used_tokens)
                    .where(
                        used_tokens.c.request_id == request_id,
                        used_tokens.c.state == "pending",
                        (used_tokens.c.attempt == attempt) | (used_tokens.c.claimed_at < now - stale_after),
                        used_tokens.c.request_id.in_(select(requests.c.id).where(live)),
                    )
                    .values(message_id=message_id, action=action, actor=actor, claimed_at=now, attempt=attempt)
                ).rowcount
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
            if taken == 1:
                return ClaimOutcome.OURS, current
            if current.done:
                return ClaimOutcome.DONE, current
            if found["revoked_at"] is not None:
                return ClaimOutcome.REVOKED, current
            return ClaimOutcome.BUSY, current
        raise StoreUnavailable(f"the claim on request {request_id} kept changing hands")

    def finish_claim(self, request_id: str, attempt: str, now: float) -> bool:
        """Mark this attempt's claim answered; False if it no longer holds it (it was
        taken over as stale while the backend call took longer than that)."""
        with self._begin() as conn:
            changed = conn.execute(
                update(used_tokens)
                .where(
                    used_tokens.c.request_id == request_id,
                    used_tokens.c.attempt == attempt,
                    used_tokens.c.state == "pending",
                )
                .values(state="done", done_at=now)
            ).rowcount
        return changed == 1

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

    def get_claim(self, request_id: str) -> Claim | None:
        with self._begin() as conn:
            row = conn.execute(select(used_tokens).where(used_tokens.c.request_id == request_id)).mappings().first()
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
            row = conn.execute(select(requests).where(requests.c.id == request_id)).mappings().first()
            if row is None:
                return None
            claim = conn.execute(select(used_tokens).where(used_tokens.c.request_id == request_id)).mappings().first()
        return Request(**row), (Claim(**claim) if claim else None)

    def revoke_unanswered_request(self, request_id: str, now: float, stale_after: float) -> bool:
        """Revoke unless answered or being answered, in one statement, so a reply racing the
        revocation cannot both act and be withdrawn. False when a claim stopped it (or it was
        already revoked, or is unknown). A pending claim older than ``stale_after`` is dead."""
        blocking_claim = (
            select(used_tokens.c.request_id)
            .where(
                used_tokens.c.request_id == requests.c.id,
                (used_tokens.c.state == "done") | (used_tokens.c.claimed_at >= now - stale_after),
            )
            .exists()
        )
        with self._begin() as conn:
            changed = conn.execute(
                update(requests)
                .where(requests.c.id == request_id, requests.c.revoked_at.is_(None), ~blocking_claim)
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
        other holder's claim went stale (its process died). Never ours once it was filed.
        """
        row = {
            "mailbox": message.mailbox,
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
            if taken != 1:
                return MailboxClaim(False, None)
            disposition = conn.execute(
                select(mailbox_claims.c.disposition).where(*_mailbox_key(message))
            ).scalar_one_or_none()
        return MailboxClaim(True, disposition)

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
        with self._begin() as conn:
            conn.execute(
                mailbox_claims.delete().where(
                    *_mailbox_key(message), mailbox_claims.c.holder == holder, mailbox_claims.c.state == "handling"
                )
            )

    def prune_mailbox_claims(self, older_than: float) -> int:
        """Forget claims untouched since ``older_than``: their messages left the folder long ago."""
        with self._begin() as conn:
            return int(conn.execute(mailbox_claims.delete().where(mailbox_claims.c.claimed_at < older_than)).rowcount)

    def shared_counters(self, window: float, timeout: float) -> SharedCounters | None:
        """Counters every instance on this store sees, for the rate limits; None on SQLite,
        which one instance has to itself (its limiter counts in memory)."""
        if self.engine.dialect.name != "postgresql":
            return None
        return SharedCounters(self.engine.url, window, timeout)


# Several instances on one store --------------------------------------------------------

mailbox_claims = Table(
    "mailbox_claims",
    metadata,
    # One row per message a poller took from a folder, so two instances polling the same
    # mailbox never both handle or both file it. UIDVALIDITY is 32-bit unsigned: BigInteger.
    Column("mailbox", String(512), primary_key=True),
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

# A window is counted in this many slots: the limit slides with the clock, a slot at a time.
RATE_SLOTS = 10


@dataclass(frozen=True)
class MailboxMessage:
    """A message in a mailbox folder, as IMAP names it for good (RFC 3501 §2.3.1.1)."""

    mailbox: str  # imap://user@host/folder
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class MailboxClaim:
    """Whether this poller may handle (or file) a message, and how, if that was decided."""

    ours: bool
    disposition: str | None  # processed | rejected: handled already, only filing is left


def _mailbox_key(message: MailboxMessage) -> tuple[Any, ...]:
    c = mailbox_claims.c
    return (c.mailbox == message.mailbox, c.uidvalidity == message.uidvalidity, c.uid == message.uid)


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
