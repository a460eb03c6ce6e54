"""Release without scripting: with ``[tasks.release] watch = true`` a task tagged for email
gets its request when it starts, and loses it when it leaves its owner in the UI. Real
rc-mta processes against the Release stand-in; two of them on one PostgreSQL store."""

from __future__ import annotations

import email
import email.policy
import sqlite3
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import RcMta, make_rc_mta, wait_until
from mailclient import reply_message, send_smtp
from release_server import FakeRelease
from test_approvals import TOKEN as API_TOKEN
from test_approvals import post

from rc_mta import smtp_replies as R
from rc_mta.store import STALE_CLAIM_SECONDS, ClaimOutcome, Store

TASK = "Applications/Folder1/Release1/Phase1/Task1"
TAG = "email-completion"
TOKEN = "release-personal-token-0123"
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


@pytest.fixture
def release() -> Iterator[FakeRelease]:
    server = FakeRelease(token=TOKEN).start()
    server.add_user("alice", ALICE)
    server.add_user("bob", BOB)
    server.add_user("carol", CAROL)
    yield server
    server.stop()


def watching(workdir: Path, release: FakeRelease, *, basic: bool = False, **store: Any) -> RcMta:
    """An rc-mta watching the stand-in every 0.2 s (by token, or by basic auth to tell two apart)."""
    workdir.mkdir(exist_ok=True)
    server = make_rc_mta(workdir, **({"store": store} if store else {}))
    credentials = {"username": release.username, "password": release.password} if basic else {"token": TOKEN}
    server.settings["tasks"] = {
        "backend": "release",
        "release": {"url": release.url, "timeout": "2s", "retries": 1, "watch": True, "watch_interval": "0.2s"}
        | credentials,
    }
    return server


@pytest.fixture
def rc_watch(tmp_path: Path, release: FakeRelease) -> Iterator[RcMta]:
    server = watching(tmp_path, release)
    server.start()
    yield server
    server.stop()


def mailed(*servers: RcMta) -> list[EmailMessage]:
    """Every request in the servers' outboxes."""
    found = []
    for server in servers:
        outbox = server.workdir / "outbox"
        for path in sorted(outbox.glob("*.eml")) if outbox.is_dir() else []:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
    return found


def mailed_to(address: str, *servers: RcMta) -> list[EmailMessage]:
    return [m for m in mailed(*servers) if m["To"] == address]


def wait_for_request(address: str, *servers: RcMta) -> EmailMessage:
    found: list[EmailMessage] = wait_until(lambda: mailed_to(address, *servers), what=f"a request mailed to {address}")
    return found[0]


def complete_address(request: EmailMessage) -> str:
    body = request.get_body(("plain",))
    assert body is not None
    lines = body.get_content().splitlines()
    return lines[lines.index("To complete it, write to:") + 1].strip()


def watched_again(release: FakeRelease, user: str = "token-user", rounds: int = 2) -> None:
    """Wait until the watcher has looked at Release ``rounds`` more times."""
    seen = release.calls_by(user, "POST", "/api/v1/releases/search")
    wait_until(
        lambda: release.calls_by(user, "POST", "/api/v1/releases/search") >= seen + rounds,
        what="more watch rounds",
    )


# Part 1: the request goes out when the task starts ----------------------------------------


def test_task_tagged_for_email_gets_its_request_when_it_starts(rc_watch: RcMta, release: FakeRelease) -> None:
    release.add_task(TASK, owner="alice", status="PLANNED", tags=(TAG,))
    watched_again(release)
    assert mailed(rc_watch) == []  # planned: not yet
    release.set_status(TASK, "IN_PROGRESS")
    request = wait_for_request(ALICE, rc_watch)
    assert request["X-RC-MTA-Task"] == TASK
    assert request["Subject"] == "Action needed: Approve deploy to prod"
    watched_again(release)
    assert len(mailed(rc_watch)) == 1  # once, however many rounds see it


def test_reply_to_a_watched_request_completes_the_release_task(rc_watch: RcMta, release: FakeRelease) -> None:
    release.add_task(TASK, owner="alice", tags=("Email-Completion",))
    address = complete_address(wait_for_request(ALICE, rc_watch))
    outcome = send_smtp(rc_watch.smtp_port, reply_message(address, "Ship it"), address)
    assert outcome.code == 250, outcome
    assert release.status(TASK) == "COMPLETED"


def test_task_without_the_tag_gets_no_request(rc_watch: RcMta, release: FakeRelease) -> None:
    release.add_task(TASK, owner="alice", tags=("other",))
    watched_again(release)
    assert mailed(rc_watch) == []


def test_team_task_goes_to_each_member_with_an_email(rc_watch: RcMta, release: FakeRelease) -> None:
    release.add_user("dave", None)  # no email in Release: left out
    release.teams["Applications/Folder1/Release1"] = [
        {
            "id": "Team1",
            "teamName": "Approvers",
            "members": [{"name": n, "type": "PRINCIPAL"} for n in ("bob", "carol", "dave")],
        }
        | {"roles": []},
    ]
    release.add_task(TASK, owner=None, team="Approvers", tags=(TAG,))
    wait_for_request(BOB, rc_watch)
    wait_for_request(CAROL, rc_watch)
    watched_again(release)
    assert sorted(m["To"] for m in mailed(rc_watch)) == [BOB, CAROL]


def failed_rounds(server: RcMta) -> int:
    """Rounds the watcher logged as failed (it tries again next round)."""
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    return sum(1 for line in text.splitlines() if "release watch: " in line and "trying again in" in line)


# Where Release answers 503 from: the round's first call, a read part-way through it, or
# reading the task to write the request, after this instance claimed the (task, owner).
OUTAGES = {
    "whole round": ("POST", "/api/v1/releases/search"),
    "user lookup": ("GET", "/api/v1/users/"),
    "task read after the claim": ("GET", "/api/v1/tasks/"),
}


@pytest.mark.parametrize(("method", "down"), OUTAGES.values(), ids=OUTAGES.keys())
def test_release_down_during_a_round_sends_once_it_is_back(
    rc_watch: RcMta, release: FakeRelease, method: str, down: str
) -> None:
    release.unavailable_paths = (down,)
    release.add_task(TASK, owner="alice", tags=(TAG,))
    # Two rounds really met the outage (503s counted at Release, failures logged by rc-mta)...
    wait_until(
        lambda: release.refusals(method, down) and failed_rounds(rc_watch) >= 2, what="two rounds that met a 503"
    )
    assert mailed(rc_watch) == []  # ...and sent nothing

    release.unavailable_paths = ()
    request = wait_for_request(ALICE, rc_watch)
    assert request["X-RC-MTA-Task"] == TASK
    assert release.calls_by("token-user", method, down) >= 1  # served once back
    watched_again(release)
    assert len(mailed(rc_watch)) == 1  # once: the failed rounds left no half-sent request behind


def test_two_instances_on_one_postgresql_store_send_once(tmp_path: Path, pg_url: str, release: FakeRelease) -> None:
    first = watching(tmp_path / "one", release, url=pg_url, busy_timeout="2s")
    second = watching(tmp_path / "two", release, basic=True, url=pg_url, busy_timeout="2s")
    try:
        first.start()
        second.start()
        for n in range(1, 4):
            release.add_task(f"Applications/Folder1/Release{n}/Phase1/Task1", owner="alice", tags=(TAG,))
        wait_until(lambda: len(mailed(first, second)) == 3, what="three requests")
        watched_again(release, "token-user")  # both looked at every task after it started
        watched_again(release, release.username)
        assert len(mailed(first, second)) == 3
        assert sorted(m["X-RC-MTA-Task"] for m in mailed(first, second)) == [
            f"Applications/Folder1/Release{n}/Phase1/Task1" for n in range(1, 4)
        ]
    finally:
        first.stop()
        second.stop()


def test_a_task_an_approval_group_decides_is_not_mailed_alone_and_that_is_logged_once(
    tmp_path: Path, release: FakeRelease
) -> None:
    """Bob and Carol were asked (2 of 2) through the API before the watch was on: Alice's
    request would decide past their rule, so it is refused each round, said once at WARNING;
    once the group's requests are revoked, Alice is mailed."""
    server = watching(tmp_path, release)
    server.settings["http"]["api_tokens"] = [API_TOKEN]
    server.settings["tasks"]["release"]["watch"] = False
    try:
        server.start()
        release.add_task(TASK, owner="alice", tags=(TAG,))
        status, body = post(server, "/v1/requests", {"task_id": TASK, "owners": [BOB, CAROL], "approvals": "all"})
        assert status == 201, body
        server.stop()
        server.settings["tasks"]["release"]["watch"] = True
        server.start()

        refused = f"release watch: task {TASK} to {ALICE} not mailed: ApprovalConflict: task {TASK} is decided by"
        wait_until(lambda: refused in server.log_path.read_text(errors="replace"), what="Alice's request refused")
        watched_again(release, rounds=3)
        assert server.log_path.read_text(errors="replace").count(refused) == 1
        assert mailed_to(ALICE, server) == []

        for asked in body["requests"]:
            server.cli("revoke", asked["request_id"])
        assert wait_for_request(ALICE, server)["X-RC-MTA-Task"] == TASK
    finally:
        server.stop()


# Part 2: reassigned, skipped, aborted or done in the UI -----------------------------------


def withdrawn(server: RcMta, address: str) -> Any:
    """The answer to a reply to ``address`` once it says the request was withdrawn, else None
    (until the watcher sees the change, Release's own state refuses it: not in progress)."""
    outcome = send_smtp(server.smtp_port, reply_message(address, "Ship it"), address)
    return outcome if "withdrawn" in outcome.text else None


def test_reassigning_revokes_the_old_request_and_mails_the_new_owner(rc_watch: RcMta, release: FakeRelease) -> None:
    release.add_task(TASK, owner="alice", tags=(TAG,))
    old = complete_address(wait_for_request(ALICE, rc_watch))
    release.reassign(TASK, "bob")
    new = complete_address(wait_for_request(BOB, rc_watch))
    # The old request is withdrawn before the new one goes out.
    outcome = send_smtp(rc_watch.smtp_port, reply_message(old, "Ship it"), old)
    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert outcome.text.endswith(R.TOKEN_HANDED_OVER.with_text(now_with=BOB).text)
    assert release.status(TASK) == "IN_PROGRESS"
    done = send_smtp(rc_watch.smtp_port, reply_message(new, "Ship it", sender=BOB), new, mail_from=BOB)
    assert done.code == 250, done
    assert release.status(TASK) == "COMPLETED"


@pytest.mark.parametrize("status", ["SKIPPED", "ABORTED", "COMPLETED"])
def test_task_that_left_in_the_ui_has_its_request_withdrawn(rc_watch: RcMta, release: FakeRelease, status: str) -> None:
    release.add_task(TASK, owner="alice", tags=(TAG,))
    address = complete_address(wait_for_request(ALICE, rc_watch))
    release.set_status(TASK, status)

    outcome = wait_until(lambda: withdrawn(rc_watch, address), what="the request withdrawn")
    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert R.TOKEN_REVOKED.text in outcome.text
    assert not release.calls  # nothing was acted on


def test_aborted_release_withdraws_its_requests(rc_watch: RcMta, release: FakeRelease) -> None:
    release.add_task(TASK, owner="alice", tags=(TAG,))
    address = complete_address(wait_for_request(ALICE, rc_watch))
    release.abort_release("Applications/Folder1/Release1")

    outcome = wait_until(lambda: withdrawn(rc_watch, address), what="the request withdrawn")
    assert R.TOKEN_REVOKED.text in outcome.text
    assert not release.calls


def test_task_back_with_its_first_owner_is_mailed_again(rc_watch: RcMta, release: FakeRelease) -> None:
    release.add_task(TASK, owner="alice", tags=(TAG,))
    wait_for_request(ALICE, rc_watch)
    release.reassign(TASK, "bob")
    wait_for_request(BOB, rc_watch)
    release.reassign(TASK, "alice")
    wait_until(lambda: len(mailed_to(ALICE, rc_watch)) == 2, what="a second request to alice")


def test_a_task_reassigned_while_its_answer_is_acting_is_not_acted_on(rc_watch: RcMta, release: FakeRelease) -> None:
    """Alice's answer read the task (hers, in progress), and a proxy answered its POST 502
    before Release saw it; meanwhile the task went to Bob in the UI. The retry reads the task
    again before it POSTs: it is Bob's now, so Alice's answer is refused as a withdrawn
    request's is, and Bob's request still completes it."""
    release.add_task(TASK, owner="alice", tags=(TAG,))
    address = complete_address(wait_for_request(ALICE, rc_watch))
    release.gateway_errors = 1
    release.gateway_meanwhile = lambda: release.reassign(TASK, "bob")

    outcome = send_smtp(rc_watch.smtp_port, reply_message(address, "Ship it"), address)
    assert (outcome.code, outcome.enhanced) == (550, "5.7.1"), outcome
    assert outcome.text.endswith(R.TOKEN_HANDED_OVER.with_text(now_with=BOB).text)
    assert release.status(TASK) == "IN_PROGRESS"
    assert release.calls[TASK, "complete"] == 1  # the one the proxy answered, never a second

    new = complete_address(wait_for_request(BOB, rc_watch))
    done = send_smtp(rc_watch.smtp_port, reply_message(new, "Ship it", sender=BOB), new, mail_from=BOB)
    assert done.code == 250, done
    assert [a.comment.rsplit(" ", 1)[-1] for a in release.actions_on(TASK)] == [BOB]


def test_a_request_whose_answer_may_still_be_acting_is_not_withdrawn(rc_watch: RcMta, release: FakeRelease) -> None:
    """An answer's claim stands as long as its action may run ([tasks] action_deadline, up to
    300 s): the watch withdraws the request only once the claim is taken for dead, as the API's
    revoke does, never while the answer may still be telling Release."""
    release.add_task(TASK, owner="alice", tags=(TAG,))
    wait_for_request(ALICE, rc_watch)
    store = Store(f"sqlite:///{rc_watch.workdir / 'rc-mta.db'}", busy_timeout=5)
    (request_id,) = store.open_requests_for(TASK, ALICE)
    # Alice's answer has been acting for 200 s (Release slow, its reads retried): still in time.
    outcome, _ = store.claim(request_id, "a1", "<m1@example.com>", "complete", ALICE, time.time() - 200, 600)
    assert outcome is ClaimOutcome.OURS
    release.reassign(TASK, "dave")  # no email: no one is mailed, alice's request is to go
    watched_again(release, rounds=3)
    request = store.get_request(request_id)
    assert request is not None and request.revoked_at is None

    # Once the claim is taken for dead, the next round withdraws the request.
    with sqlite3.connect(rc_watch.workdir / "rc-mta.db") as db:
        db.execute("UPDATE used_tokens SET claimed_at = claimed_at - ?", (STALE_CLAIM_SECONDS,))
    wait_until(lambda: (r := store.get_request(request_id)) is not None and r.revoked_at, what="request withdrawn")
