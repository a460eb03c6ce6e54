"""The schema as instances make it at start, on SQLite and on PostgreSQL: several instances
starting together on one store (new, or made by an older version) all start, and the store
they leave has every table, column and index this version uses."""

from __future__ import annotations

import time

import pytest
from racing import all_at_once
from sqlalchemy import inspect, text
from test_outbound_store import _old_outbound_table
from test_store import store as store  # SQLite and PostgreSQL

from rc_mta.errors import StoreIncompatible
from rc_mta.store import Delivery, NoticeTerms, Request, Store, metadata
from rc_mta.tokens import new_request_id

# What each age of store lacks, newest first: what it takes to make one.
AGES = ["new", "before notices, approvals and idempotency keys", "before attempts, reminders and notices"]


def _make_older(store: Store, age: str) -> Request | None:
    """Turn the fixture's complete store into one of ``age``; the request whose queued mail
    must survive the upgrade, if that age had one."""
    if age == "new":
        with store.engine.begin() as conn:
            metadata.drop_all(conn)
        store.engine.dispose()
        return None
    with store.engine.begin() as conn:
        for table in ("idempotency_keys", "request_notices", "approval_members", "approval_groups"):
            conn.execute(text(f"DROP TABLE {table}"))
    store.engine.dispose()
    if age == "before notices, approvals and idempotency keys":
        return None
    now = time.time()
    request = Request(new_request_id(), "t-1", "alice@example.com", "t", now, now + 3600, None, None)
    store.add_request(request)
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE used_tokens DROP COLUMN attempt"))
    _old_outbound_table(store, request, now)  # keyed by request, one deferred mail in it
    return request


def _start_at_once(url: str, instances: int, probes: int = 0) -> list[str]:
    """What ``instances`` services starting together do first, each with its own Store,
    while ``probes`` readiness probes (``check-config``, /readyz) ask the same store."""
    starting = [Store(url, busy_timeout=5) for _ in range(instances + probes)]

    def start(i: int) -> str | None:
        probe = i >= instances
        try:
            starting[i].ping() if probe else starting[i].create_schema()
        except BaseException as exc:  # collected for the assertion
            return f"{'ping' if probe else 'create_schema'}: {type(exc).__name__}: {exc}"
        return None

    errors = [e for e in all_at_once(len(starting), start) if e is not None]
    for instance in starting:
        instance.close()
    return errors


def _missing(store: Store) -> list[str]:
    """Every table, column and index of this version's schema the store lacks."""
    lacking: list[str] = []
    with store.engine.connect() as conn:
        found = inspect(conn)
        tables = set(found.get_table_names())
        for table in metadata.sorted_tables:
            if table.name not in tables:
                lacking.append(table.name)
                continue
            columns = {c["name"] for c in found.get_columns(table.name)}
            lacking += [f"{table.name}.{c.name}" for c in table.columns if c.name not in columns]
            indexes = {i["name"] for i in found.get_indexes(table.name)}
            lacking += [f"index {i.name}" for i in table.indexes if i.name not in indexes]
            key = found.get_pk_constraint(table.name)["constrained_columns"]
            if key != [c.name for c in table.primary_key.columns]:
                lacking.append(f"{table.name} keyed by {key}")
    return lacking


@pytest.mark.parametrize("age", AGES)
def test_instances_starting_together_on_a_store_of_any_age_all_start_and_complete_it(store: Store, age: str) -> None:
    kept = _make_older(store, age)
    assert _missing(store) != []

    errors = _start_at_once(store.url, 4)

    assert errors == []
    assert _missing(store) == []
    if kept is not None:  # the old mail is still there, now the request mail of its request
        [mail] = store.outbound_mails(kept.id)
        assert (mail.kind, mail.state, mail.attempts) == ("request", Delivery.DEFERRED, 2)
    now = time.time()
    request = Request(new_request_id(), "t-2", "bob@example.com", "t", now, now + 60, None, None)
    store.add_request_with_mail(request, b"Subject: t\r\n\r\n", "rc@x", now, "me", 60)
    failed = NoticeTerms("request_failed", "me", 60)
    assert store.settle_outbound(request.id, "me", Delivery.FAILED, "550 no", now, notice=failed)
    assert store.get_notice(request.id, "request_failed") is not None


def test_readiness_probes_while_instances_start_on_a_new_store_stop_none_of_them(store: Store) -> None:
    """A probe makes its own small table (``check-config`` on a new install, /readyz of an
    instance already up) while the services make the whole schema: none may fail on a
    table another made meanwhile."""
    _make_older(store, "new")

    errors = _start_at_once(store.url, 3, probes=3)

    assert errors == []
    assert _missing(store) == []


def test_a_store_lacking_a_column_no_upgrade_adds_is_refused_in_one_line_and_left_as_it_is(store: Store) -> None:
    """``approval_members.approved_at`` came after its table, with no upgrade: a store that
    lacks it is not one an older version leaves. Refused at once, naming what is missing,
    rather than locked for at every start and never made; the column an upgrade would add
    (``used_tokens.attempt``) is not added either."""
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE approval_members DROP COLUMN approved_at"))
        conn.execute(text("ALTER TABLE used_tokens DROP COLUMN attempt"))
    store.engine.dispose()
    starting = Store(store.url, busy_timeout=5)

    try:
        with pytest.raises(StoreIncompatible) as raised:
            starting.create_schema()
    finally:
        starting.close()

    assert str(raised.value) == (
        "the store's table approval_members lacks column(s) approved_at, which no upgrade adds: it was not made by "
        "rc-mta or was changed by hand; set [store] url to rc-mta's own store, or restore it from a backup"
    )
    assert sorted(_missing(store)) == ["approval_members.approved_at", "used_tokens.attempt"]
