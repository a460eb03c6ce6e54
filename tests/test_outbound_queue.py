"""The durable outbound queue, against a real relay on loopback (tests/smtpsink.py): a
request is stored first and delivered by the sender loop, so a relay that is down, or
answers 4xx, loses nothing; a 5xx fails the request where everyone can see it; two
instances on one PostgreSQL store send each request once; and reminders are mails of the
same queue."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import RcMta, free_port, make_rc_mta, wait_until
from mailclient import reply_message, send_smtp
from release_server import FakeRelease
from smtpsink import RELAY_USER, running_relay
from sqlalchemy import update
from test_store import store as store  # SQLite and PostgreSQL
from webhook_receiver import WebhookReceiver

from rc_mta.store import Delivery, Notice, OutboundMail, Request, Store, request_notices, requests
from rc_mta.tokens import new_request_id

TOKEN = "queue-test-token"
PASSWORD = "relay-secret"
RELEASE_TOKEN = "release-personal-token-0123"


def _relay_outbound(port: int) -> dict[str, Any]:
    """The [outbound] keys that send through the test relay at ``port``."""
    return {
        "transport": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_username": RELAY_USER,
        "smtp_password": PASSWORD,
        "smtp_timeout": "5s",
        "from_address": "release@example.com",
    }


def _with_relay(server: RcMta, port: int) -> RcMta:
    """Send through the relay at ``port``, retry after a second, look twice a second."""
    server.settings["outbound"].update(
        _relay_outbound(port), retry_min="1s", retry_max="2s", queue_poll_interval="0.3s"
    )
    server.settings["http"]["api_tokens"] = [TOKEN]
    server.write_config()
    return server


def _get(server: RcMta, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(server.http_url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return int(status), json.loads(body) if body.startswith((b"{", b"[")) else body.decode()


def _delivery(server: RcMta, request_id: str) -> dict[str, Any]:
    status, body = _get(server, f"/v1/requests/{request_id}")
    assert status == 200, body
    delivery: dict[str, Any] = body["delivery"]
    return delivery


def _queue_gauge(server: RcMta, state: str) -> float:
    _, text = _get(server, "/metrics")
    line = f'rc_mta_outbound_queue{{state="{state}"}} '
    found = [float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)]
    return found[0] if found else -1.0


def _message_ids(received: list[tuple[str, list[str], bytes]]) -> list[str]:
    return [str(email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"]) for _, _, raw in received]


def test_request_made_while_the_relay_is_down_is_sent_once_it_is_up(fresh_rc: RcMta) -> None:
    port = free_port()
    rc = _with_relay(fresh_rc, port)
    rc.settings["outbound"]["queue_warn_after"] = "1s"
    rc.start()
    task_id = rc.add_task()

    sent = rc.request(task_id)  # the relay is not there yet

    assert sent["delivery"] == "deferred"
    assert "could not send through 127.0.0.1" in sent["last_answer"]
    shown = rc.cli_json("request", "show", sent["request_id"])
    assert shown["delivery"]["state"] == "deferred"
    assert shown["delivery"]["attempts"] >= 1
    assert "could not send through" in rc.cli("request", "show", sent["request_id"]).stdout
    # /readyz stays ready (inbound works) but says the queue is stuck.
    status, ready = wait_until(
        lambda: (r := _get(rc, "/readyz"))[1].get("warnings") and r, what="a queue warning in /readyz"
    )
    assert status == 200 and ready["status"] == "ready"
    assert "waiting for delivery" in ready["warnings"]["outbound_queue"]
    wait_until(lambda: _queue_gauge(rc, "deferred") == 1, what="rc_mta_outbound_queue{state=deferred} 1")

    with running_relay(port, PASSWORD) as relay:
        wait_until(lambda: _delivery(rc, sent["request_id"])["state"] == "sent", what="the request sent")
        assert _message_ids(relay.received) == [sent["message_id"]]
    delivery = _delivery(rc, sent["request_id"])
    assert delivery["last_answer"].startswith("127.0.0.1:") and "OK" in delivery["last_answer"]
    assert delivery["done_at"] is not None
    wait_until(lambda: _queue_gauge(rc, "sent") == 1 and _queue_gauge(rc, "deferred") == 0, what="gauge: sent 1")
    assert "warnings" not in _get(rc, "/readyz")[1]


def test_relay_answering_4xx_defers_the_request_and_the_retry_sends_it(fresh_rc: RcMta) -> None:
    port = free_port()
    rc = _with_relay(fresh_rc, port)
    rc.start()
    task_id = rc.add_task()
    with running_relay(port, PASSWORD, answers=["451 4.3.0 Try again later"]) as relay:
        sent = rc.request(task_id)

        assert sent["delivery"] == "deferred"
        assert sent["last_answer"].endswith("451 4.3.0 Try again later")
        wait_until(lambda: _delivery(rc, sent["request_id"])["state"] == "sent", what="the retry sent")
        assert relay.answered == ["451 4.3.0 Try again later", "250 2.0.0 OK"]
        assert _message_ids(relay.received) == [sent["message_id"]]
    assert _delivery(rc, sent["request_id"])["attempts"] == 2


def test_relay_answering_5xx_fails_the_request_visibly_and_tells_the_webhook(fresh_rc: RcMta) -> None:
    receiver = WebhookReceiver().start()
    try:
        port = free_port()
        rc = _with_relay(fresh_rc, port)
        rc.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
        rc.write_config()
        with running_relay(port, PASSWORD, answers=["550 5.7.1 Sender not allowed"]) as relay:
            result = rc.cli("request", "JIRA-7", "--owner", "bob@example.com", check=False)
            assert result.returncode == 1
            assert "FAILED" in result.stdout and "550 5.7.1 Sender not allowed" in result.stdout
            request_id = result.stdout.split()[1]
            assert relay.received == []
        shown = rc.cli_json("request", "show", request_id)
        assert shown["delivery"]["state"] == "failed"
        assert shown["delivery"]["last_answer"].endswith("550 5.7.1 Sender not allowed")
        [event] = receiver.payloads
        assert event["event"] == "request_failed"
        assert (event["task_id"], event["request_id"], event["owner"]) == ("JIRA-7", request_id, "bob@example.com")
        assert "550 5.7.1" in event["answer"]
        assert "action" not in event  # nothing a receiver could take for a task action
    finally:
        receiver.stop()


def test_a_request_the_relay_never_takes_fails_after_the_queue_lifetime(fresh_rc: RcMta) -> None:
    rc = _with_relay(fresh_rc, free_port())  # no relay there, ever
    rc.settings["outbound"]["queue_lifetime"] = "2s"
    rc.start()

    sent = rc.request(rc.add_task())

    assert sent["delivery"] == "deferred"
    wait_until(lambda: _delivery(rc, sent["request_id"])["state"] == "failed", what="the request failed")
    answer = _delivery(rc, sent["request_id"])["last_answer"]
    assert answer.startswith("not delivered within 2s; last: could not send through 127.0.0.1")


def test_a_request_revoked_while_it_waits_is_never_sent(fresh_rc: RcMta) -> None:
    port = free_port()
    rc = _with_relay(fresh_rc, port)
    rc.start()
    sent = rc.request(rc.add_task())
    assert sent["delivery"] == "deferred"

    rc.cli("revoke", sent["request_id"])
    with running_relay(port, PASSWORD) as relay:
        wait_until(lambda: _delivery(rc, sent["request_id"])["state"] == "failed", what="the revoked request failed")
        assert relay.received == []
    assert _delivery(rc, sent["request_id"])["last_answer"] == "revoked before it was sent"


def test_a_request_mail_answered_decided_or_expired_while_it_waits_is_withdrawn_not_sent(fresh_rc: RcMta) -> None:
    """As a reminder is: asked again before each attempt, the request mail of a request
    answered (its owner had the address some other way), of a task decided by another
    owner's answer, or of a request that expired, never goes out, and says why."""
    port = free_port()
    rc = _with_relay(fresh_rc, port)
    rc.start()
    task = rc.add_task(title="Approve B")
    alice = rc.request(task)
    bob = rc.cli_json("request", task, "--owner", "bob@example.com")
    expiring = rc.request(rc.add_task(title="Approve C"))
    everyone = (alice, bob, expiring)
    assert [s["delivery"] for s in everyone] == ["deferred"] * 3  # the relay is down

    store = Store(rc.settings["store"]["url"])  # as if its day had passed
    try:
        with store.engine.begin() as conn:
            conn.execute(update(requests).where(requests.c.id == expiring["request_id"]).values(expires_at=time.time()))
    finally:
        store.close()

    address = bob["complete_address"]
    reply = reply_message(address, "Done", sender="bob@example.com")
    assert send_smtp(rc.smtp_port, reply, address, mail_from="bob@example.com").code == 250
    with running_relay(port, PASSWORD) as relay:
        wait_until(
            lambda: all(_delivery(rc, s["request_id"])["state"] == "failed" for s in everyone),
            what="every request mail withdrawn",
        )
        assert relay.received == []
    answers = {s["request_id"]: _delivery(rc, s["request_id"])["last_answer"] for s in everyone}
    assert answers == {
        alice["request_id"]: f"not sent: task {task} is completed by bob@example.com",
        bob["request_id"]: "not sent: the request was answered (complete by bob@example.com)",
        expiring["request_id"]: "not sent: the request expired",
    }
    assert f"request {alice['request_id']} withdrawn, nothing sent" in rc.log_path.read_text()


def test_outbox_delivery_is_the_queue_writing_the_file(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()

    sent = fresh_rc.request(task_id)

    assert sent["delivery"] == "sent"
    assert Path(sent["path"]).read_bytes().count(b"Message-ID: " + sent["message_id"].encode()) == 1
    shown = fresh_rc.cli_json("request", "show", sent["request_id"])
    assert shown["delivery"]["state"] == "sent"
    assert shown["delivery"]["last_answer"] == f"written to {sent['path']}"


@contextmanager
def _two_instances(
    tmp_path: Path, pg_url: str, port: int, configure: Callable[[RcMta, int], RcMta]
) -> Iterator[list[RcMta]]:
    """Two instances of one deployment (the same keys) on one PostgreSQL store, running."""
    instances = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        instances.append(make_rc_mta(tmp_path / name, store={"url": pg_url, "busy_timeout": "5s"}))
    for rc in instances:
        rc.settings["signing"] = instances[0].settings["signing"]
        configure(rc, port)
    try:
        for rc in instances:
            rc.start()
        yield instances
    finally:
        for rc in instances:
            rc.stop()


def test_two_instances_on_one_postgresql_store_send_each_request_once(tmp_path: Path, pg_url: str) -> None:
    port = free_port()
    with _two_instances(tmp_path, pg_url, port, _with_relay) as instances:
        first = instances[0]
        # Made while the relay is down: every one is waiting when it comes up, for both.
        requests = [first.request(first.add_task(title=f"Approve release {n}")) for n in range(6)]
        assert {r["delivery"] for r in requests} == {"deferred"}

        with running_relay(port, PASSWORD) as relay:
            wait_until(
                lambda: all(_delivery(first, r["request_id"])["state"] == "sent" for r in requests),
                timeout=60,
                what="every request sent",
            )
            received = _message_ids(relay.received)
        assert sorted(received) == sorted(r["message_id"] for r in requests)  # each once, none twice
        senders = [rc.log_path.read_text().count("sent to alice@example.com") for rc in instances]
        assert sum(senders) == len(requests)


# Reminders go through the same queue ---------------------------------------------------------


def _reminding(server: RcMta, port: int) -> RcMta:
    """Reminder 1 a second after each request, looked for five times a second."""
    server.settings["requests"] = {"reminders": ["1s"], "followup_interval": "0.2s"}
    return _with_relay(server, port)


def _mails(server: RcMta, request_id: str) -> list[dict[str, Any]]:
    """The request mail's delivery, then each reminder's, as the API shows them."""
    status, body = _get(server, f"/v1/requests/{request_id}")
    assert status == 200, body
    return [{"kind": "request", **body["delivery"]}, *body["reminders"]]


def _reminder_state(server: RcMta, request_id: str) -> str | None:
    mails = _mails(server, request_id)
    return str(mails[1]["state"]) if len(mails) > 1 else None


def test_a_reminder_waits_in_the_queue_while_the_relay_is_down_and_is_sent_once_it_is_up(fresh_rc: RcMta) -> None:
    port = free_port()
    rc = _reminding(fresh_rc, port)
    rc.start()
    sent = rc.request(rc.add_task())
    assert sent["delivery"] == "deferred"

    wait_until(lambda: _reminder_state(rc, sent["request_id"]) == "deferred", what="the reminder deferred")
    shown = rc.cli("request", "show", sent["request_id"]).stdout
    assert "reminder-1: deferred after " in shown and "could not send through" in shown

    with running_relay(port, PASSWORD) as relay:
        wait_until(
            lambda: [m["state"] for m in _mails(rc, sent["request_id"])] == ["sent", "sent"], what="both mails sent"
        )
        received = [email.message_from_bytes(raw, policy=email.policy.default) for _, _, raw in relay.received]
    reminders = [m for m in received if m["In-Reply-To"] == sent["message_id"]]
    assert len(received) == 2 and len(reminders) == 1  # each mail once
    assert str(reminders[0]["Subject"]).startswith("Reminder: ")
    assert rc.cli_json("request", "show", sent["request_id"])["delivery"]["state"] == "sent"  # the request mail's


def test_a_queued_reminder_of_a_request_revoked_answered_or_decided_meanwhile_is_never_sent(fresh_rc: RcMta) -> None:
    port = free_port()
    rc = _reminding(fresh_rc, port)
    rc.start()
    revoked = rc.request(rc.add_task(title="Approve A"))
    task = rc.add_task(title="Approve B")
    alice = rc.request(task)
    bob = rc.cli_json("request", task, "--owner", "bob@example.com")
    everyone = (revoked, alice, bob)
    for sent in everyone:  # queued while the relay is down, before anything was decided
        wait_until(lambda s=sent: _reminder_state(rc, s["request_id"]) == "deferred", what="a reminder deferred")

    rc.cli("revoke", revoked["request_id"])
    address = bob["complete_address"]
    reply = reply_message(address, "Done", sender="bob@example.com")
    assert send_smtp(rc.smtp_port, reply, address, mail_from="bob@example.com").code == 250

    with running_relay(port, PASSWORD) as relay:
        wait_until(
            lambda: all(m["state"] in ("sent", "failed") for s in everyone for m in _mails(rc, s["request_id"])),
            what="every mail settled",
        )
        received = _message_ids(relay.received)
    assert received == []  # nor their request mails, queued as long (each withdrawn for the same reason)
    answers = {s["request_id"]: _mails(rc, s["request_id"])[1]["last_answer"] for s in everyone}
    assert answers == {
        revoked["request_id"]: "revoked before it was sent",
        alice["request_id"]: f"not sent: task {task} is completed by bob@example.com",
        bob["request_id"]: "not sent: the request was answered (complete by bob@example.com)",
    }
    assert f"reminder-1 of request {alice['request_id']} withdrawn, nothing sent" in rc.log_path.read_text()


def test_a_reminder_the_relay_refuses_is_not_told_to_the_webhook_as_a_failed_request(fresh_rc: RcMta) -> None:
    receiver = WebhookReceiver().start()
    port = free_port()
    rc = _reminding(fresh_rc, port)
    rc.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    try:
        with running_relay(port, PASSWORD, answers=["250 2.0.0 OK", "550 5.7.1 No more"]) as relay:
            rc.start()
            sent = rc.cli_json("request", "JIRA-8", "--owner", "bob@example.com")
            assert sent["delivery"] == "sent"
            wait_until(lambda: _reminder_state(rc, sent["request_id"]) == "failed", what="the reminder refused")
            assert relay.answered == ["250 2.0.0 OK", "550 5.7.1 No more"]
        assert _mails(rc, sent["request_id"])[1]["last_answer"].endswith("550 5.7.1 No more")
        assert f"reminder-1 of request {sent['request_id']} to bob@example.com failed" in rc.log_path.read_text()
        assert receiver.payloads == []  # the request itself did arrive
    finally:
        receiver.stop()


def test_two_instances_on_one_postgresql_store_send_each_reminder_once(tmp_path: Path, pg_url: str) -> None:
    port = free_port()
    with _two_instances(tmp_path, pg_url, port, _reminding) as instances:
        first = instances[0]
        # Made while the relay is down: both instances' rounds find every reminder due, and
        # both sender loops find every mail waiting when it comes up.
        requests = [first.request(first.add_task(title=f"Approve release {n}")) for n in range(4)]
        wait_until(
            lambda: all(_reminder_state(first, r["request_id"]) == "deferred" for r in requests),
            what="every reminder queued",
        )
        with running_relay(port, PASSWORD) as relay:
            wait_until(
                lambda: all([m["state"] for m in _mails(first, r["request_id"])] == ["sent", "sent"] for r in requests),
                timeout=60,
                what="every mail sent",
            )
            received = [email.message_from_bytes(raw, policy=email.policy.default) for _, _, raw in relay.received]
        ids = [str(m["Message-ID"]) for m in received]
        assert len(ids) == len(set(ids)) == 2 * len(requests)  # each once, none twice
        assert sorted(str(m["In-Reply-To"]) for m in received if m["In-Reply-To"]) == sorted(
            r["message_id"] for r in requests
        )


# A failed request told to a webhook that is down ---------------------------------------------


def _notice(server: RcMta, request_id: str) -> Notice | None:
    store = Store(server.settings["store"]["url"])
    try:
        return store.get_notice(request_id, "request_failed")
    finally:
        store.close()


def _failed_request_to_a_webhook(rc: RcMta, receiver: WebhookReceiver, port: int) -> str:
    """A request the relay refuses (5xx), made while rc-mta serves; its id."""
    rc.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    rc.settings["requests"] = {"followup_interval": "0.2s"}
    rc.start()
    with running_relay(port, PASSWORD, answers=["550 5.7.1 Sender not allowed"]):
        result = rc.cli("request", "JIRA-9", "--owner", "bob@example.com", check=False)
    assert result.returncode == 1 and "FAILED" in result.stdout
    return result.stdout.split()[1]


def test_request_failed_is_told_to_a_webhook_that_was_down_once_it_is_up(fresh_rc: RcMta) -> None:
    port = free_port()
    receiver = WebhookReceiver(port=free_port())  # its URL given out, nothing listening yet
    rc = _with_relay(fresh_rc, port)
    try:
        request_id = _failed_request_to_a_webhook(rc, receiver, port)
        # Kept, and tried again by the serving instance with back-off, not dropped.
        wait_until(
            lambda: (n := _notice(rc, request_id)) is not None and n.attempts >= 2, what="request_failed tried again"
        )
        notice = _notice(rc, request_id)
        assert notice is not None and notice.state == "pending" and "cannot reach webhook" in (notice.last_error or "")

        receiver.start()
        wait_until(lambda: (n := _notice(rc, request_id)) is not None and n.state == "told", what="request_failed told")
        [event] = receiver.payloads  # once: nothing after it was told
        assert (event["event"], event["task_id"], event["request_id"]) == ("request_failed", "JIRA-9", request_id)
        assert "550 5.7.1 Sender not allowed" in event["answer"]
        assert f"backend told that request {request_id} to bob@example.com failed" in rc.log_path.read_text()
    finally:
        receiver.stop()


def test_request_failed_a_webhook_never_takes_is_given_up_with_an_error_after_the_lifetime(fresh_rc: RcMta) -> None:
    port = free_port()
    receiver = WebhookReceiver(answer=(503, {"detail": "maintenance"})).start()
    rc = _with_relay(fresh_rc, port)
    rc.settings["outbound"]["queue_lifetime"] = "2s"
    try:
        request_id = _failed_request_to_a_webhook(rc, receiver, port)

        wait_until(
            lambda: (n := _notice(rc, request_id)) is not None and n.state == "given_up", what="request_failed given up"
        )
        log = rc.log_path.read_text()
        assert (
            f"ERROR rc_mta.followups gave up telling the backend that request {request_id} to bob@example.com failed"
            in log
        )
        assert "HTTP 503" in log
        attempts = len(receiver.payloads)
        notice = _notice(rc, request_id)
        assert notice is not None and notice.attempts == attempts >= 2  # each try reached it; none after
    finally:
        receiver.stop()


# A failed request told to Release: a comment on the task ---------------------------------------

RELEASE_TASK = "Applications/Folder1/Release1/Phase1/Task1"
ADVICE = "Check the address, then send the request again with `rc-mta request` or POST /v1/requests"


def _failed_request_on_release(rc: RcMta, release: FakeRelease, port: int, answer: str) -> str:
    """A request for the Release task that the relay refuses (``answer``), made while rc-mta
    serves (its follow-up rounds tell the notice again); its id."""
    release.add_task(RELEASE_TASK, owner="bob")
    rc.settings["tasks"] = {
        "backend": "release",
        "release": {"url": release.url, "token": RELEASE_TOKEN, "timeout": "2s", "retries": 0},
    }
    rc.settings["requests"] = {"followup_interval": "0.2s"}
    rc.start()
    with running_relay(port, PASSWORD, answers=[answer]) as relay:
        result = rc.cli("request", RELEASE_TASK, "--owner", "bob@example.com", check=False)
        assert relay.received == []
    assert result.returncode == 1 and "FAILED" in result.stdout
    return result.stdout.split()[1]


def _told(rc: RcMta, request_id: str) -> Notice:
    found: Notice = wait_until(
        lambda: (n := _notice(rc, request_id)) is not None and n.state == "told" and n, what="request_failed told"
    )
    return found


def test_a_request_mail_the_relay_refuses_is_one_comment_on_the_release_task(fresh_rc: RcMta) -> None:
    """The people watching the task in Release read that its owner never got the mail, the
    relay's answer (one line, its bidi override escaped, cut short), and what to do; once,
    though rc-mta's rounds go on."""
    release = FakeRelease(token=RELEASE_TOKEN).start()
    port = free_port()
    rc = _with_relay(fresh_rc, port)
    answer = "550 5.1.1 <bob@example.com>: No such user \u202egnp.exe" + " and more from the relay" * 40
    try:
        request_id = _failed_request_on_release(rc, release, port, answer)

        assert _told(rc, request_id).attempts == 1  # at once, by the call that made it
        time.sleep(1.0)  # five more follow-up rounds of the serving instance
        [comment] = [c["text"] for c in release.comments(RELEASE_TASK)]
        assert comment.startswith(
            "The email request to bob@example.com could not be delivered (127.0.0.1:"
            f"{port} answered: 550 5.1.1 <bob@example.com>: No such user \\u202egnp.exe and more from the relay"
        )
        assert comment.endswith(f"...), so its owner was not asked by email. {ADVICE} (request {request_id}).")
        assert "\u202e" not in comment and "\n" not in comment and len(comment) < 540  # the answer cut at 300
        assert release.calls_by("token-user", "POST", f"/api/v1/tasks/{RELEASE_TASK}/comment") == 1
        assert release.status(RELEASE_TASK) == "IN_PROGRESS" and not release.calls
    finally:
        release.stop()


def test_two_requests_refused_in_the_same_words_are_two_comments_each_naming_its_request(fresh_rc: RcMta) -> None:
    """A notice counts as said when the task holds its very text (``add_comment``): a second
    request to the same owner, refused by the relay in the same words, must not pass for
    the first one's notice, said already."""
    release = FakeRelease(token=RELEASE_TOKEN).start()
    port = free_port()
    rc = _with_relay(fresh_rc, port)
    refusal = "550 5.1.1 <bob@example.com>: No such user"
    try:
        first = _failed_request_on_release(rc, release, port, refusal)
        _told(rc, first)
        with running_relay(port, PASSWORD, answers=[refusal]):
            again = rc.cli("request", RELEASE_TASK, "--owner", "bob@example.com", check=False)
        second = again.stdout.split()[1]
        _told(rc, second)

        comments = [c["text"] for c in release.comments(RELEASE_TASK)]
        assert first != second and len(comments) == 2
        assert [c.endswith(f"(request {r}).") for c, r in zip(comments, (first, second), strict=True)] == [True, True]
    finally:
        release.stop()


def test_a_failed_request_is_commented_on_once_release_can_be_reached_again(fresh_rc: RcMta) -> None:
    """Release cannot take the notice when the mail fails (503, as from its proxy, to the
    reads before the comment): it is kept and tried again by the follow-up rounds with
    back-off, and the task gets its comment once Release answers, once."""
    release = FakeRelease(token=RELEASE_TOKEN).start()
    port = free_port()
    rc = _with_relay(fresh_rc, port)
    rc.settings["outbound"].update(retry_min="0.5s", retry_max="0.5s")
    try:
        # The read that makes the request goes through; the next three calls (the call's own
        # try at once, then two rounds') get 503.
        release.script = [(0.0, None), (0.0, 503), (0.0, 503), (0.0, 503)]
        request_id = _failed_request_on_release(rc, release, port, "550 5.7.1 Sender not allowed")

        told = _told(rc, request_id)
        assert told.attempts == 4 and "503" in (told.last_error or "")
        assert not release.script
        [comment] = [c["text"] for c in release.comments(RELEASE_TASK)]
        assert comment == (
            f"The email request to bob@example.com could not be delivered (127.0.0.1:{port} answered:"
            f" 550 5.7.1 Sender not allowed), so its owner was not asked by email. {ADVICE} (request {request_id})."
        )
        assert release.calls_by("token-user", "POST", f"/api/v1/tasks/{RELEASE_TASK}/comment") == 1
        log = rc.log_path.read_text()
        assert f"could not tell the backend that request {request_id} failed (BackendUnavailable" in log
    finally:
        release.stop()


# The look at whether a reminder is still wanted counts against its lease ----------------------


async def _until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """``wait_until`` for a test that runs rc-mta's loops on its own event loop: the
    condition (a store read) runs off the loop, so the loops go on meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := await asyncio.to_thread(condition):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.parametrize("look", [5.0, 1.5])
def test_a_reminder_whose_task_cannot_be_read_within_its_lease_is_deferred_and_sent_once_by_two_instances(
    store: Store, tmp_path: Path, look: float
) -> None:
    """Release answers the look at the task (is it still in progress?) later than the
    mail's lease lasts (5 s), or so late that the delivery would start with too little of
    its time left (1.5 s of 2: cut after its final dot, it would be sent again). Were the
    look outside the time that bounds the delivery, the instance holding the reminder would
    send it after its lease ran out, and the other instance, which took it meanwhile,
    would send it too. Each attempt defers it instead, and once Release answers in time
    one instance sends it, once."""
    from rc_mta.app import Service
    from rc_mta.config import OutboundConfig, ReleaseConfig, Settings, SigningConfig, StoreConfig, TasksConfig

    release = FakeRelease(token=RELEASE_TOKEN).start()
    task = release.add_task()
    port = free_port()
    settings = Settings(
        store=StoreConfig(url=store.url),
        signing=SigningConfig(generated_key_file=tmp_path / "key"),
        tasks=TasksConfig(backend="release", release=ReleaseConfig(url=release.url, token=RELEASE_TOKEN, retries=0)),
        outbound=OutboundConfig(
            **_relay_outbound(port), retry_min="0.2s", retry_max="0.2s", queue_poll_interval="0.1s"
        ),
    )
    instances = [Service.open(settings, generate_key=True) for _ in range(2)]
    for service in instances:
        service.queue.lease = 4.0  # of at least 60 s otherwise: the look takes longer than this
    now = time.time()
    request = Request(new_request_id(), task, "alice@example.com", "Approve deploy", now, now + 3600, None, None)
    store.add_request(request)
    assert store.claim_followup(request.id, "reminder-1", "round", now, 300)
    message = b"Subject: Reminder: Approve deploy\r\nMessage-ID: <reminder-1@example.com>\r\n\r\nStill waiting.\r\n"
    # Queued as a follow-up round does, its lease over at once: either sender loop takes it.
    assert store.queue_followup_mail(request, "reminder-1", "round", message, "release@example.com", now, "-", 0)
    release.delay = look

    def reminder() -> OutboundMail:
        mail = store.get_outbound(request.id, "reminder-1")
        assert mail is not None
        return mail

    async def scenario() -> OutboundMail:
        loops = [asyncio.create_task(service.queue.run()) for service in instances]
        try:
            deferred = await _until(lambda: (m := reminder()).attempts >= 2 and m, what="two attempts deferred")
            release.delay = 0.0
            await _until(lambda: reminder().state is Delivery.SENT, what="the reminder sent")
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            for service in instances:
                await service.backend.close()
        assert isinstance(deferred, OutboundMail)
        return deferred

    try:
        with running_relay(port, PASSWORD) as relay:
            deferred = asyncio.run(scenario())
            received = _message_ids(relay.received)
    finally:
        for service in instances:
            service.close()
        release.stop()

    assert deferred.state is Delivery.DEFERRED
    assert deferred.last_answer == "not sent yet, as it could not be told within 1s whether it is still wanted"
    assert received == ["<reminder-1@example.com>"]  # once, by one of the two
    assert reminder().attempts >= 3


# The failure notice is told by the transaction that wrote it -----------------------------------


def test_a_failed_request_is_told_to_the_webhook_only_where_its_failing_transaction_wrote_the_notice(
    store: Store, tmp_path: Path
) -> None:
    """Of two request mails the relay refuses, one already has its notice in the store (held
    by another instance, which is telling it): failing the mail writes no second notice, so
    this instance does not tell it too. The other's notice is written with its failure and
    told at once."""
    from rc_mta.app import Service
    from rc_mta.config import OutboundConfig, Settings, SigningConfig, StoreConfig, TasksConfig, WebhookConfig

    receiver = WebhookReceiver().start()
    port = free_port()
    settings = Settings(
        store=StoreConfig(url=store.url),
        signing=SigningConfig(generated_key_file=tmp_path / "key"),
        tasks=TasksConfig(backend="webhook", webhook=WebhookConfig(url=receiver.url, secret=receiver.secret)),
        outbound=OutboundConfig(**_relay_outbound(port)),
    )
    service = Service.open(settings, generate_key=True)
    now = time.time()
    fresh, known = (
        Request(new_request_id(), task, "bob@example.com", "Approve deploy", now, now + 3600, None, None)
        for task in ("JIRA-1", "JIRA-2")
    )
    for request in (fresh, known):  # queued, their leases over at once: the sender loop takes them
        store.add_request_with_mail(request, b"Subject: t\r\n\r\nt\r\n", "release@example.com", now, "-", 0)
    with store.engine.begin() as conn:
        conn.execute(
            request_notices.insert().values(
                request_id=known.id,
                event="request_failed",
                answer="550 5.7.1 refused before",
                state="pending",
                attempts=0,
                created_at=now,
                next_attempt_at=now,
                holder="another-instance",
                lease_until=now + 300,
            )
        )

    async def one_round() -> None:
        try:
            await service.queue.round()
        finally:
            await service.backend.close()

    try:
        with running_relay(port, PASSWORD, answers=["550 5.7.1 Sender not allowed"] * 2) as relay:
            asyncio.run(one_round())
            assert relay.answered == ["550 5.7.1 Sender not allowed"] * 2
    finally:
        service.close()
        receiver.stop()

    assert [(p["event"], p["request_id"]) for p in receiver.payloads] == [("request_failed", fresh.id)]
    told = store.get_notice(fresh.id, "request_failed")
    assert told is not None and (told.state, told.attempts) == ("told", 1)
    theirs = store.get_notice(known.id, "request_failed")
    assert theirs is not None and (theirs.state, theirs.attempts, theirs.answer) == (
        "pending",
        0,
        "550 5.7.1 refused before",
    )
    assert [m.state for m in (store.get_outbound(fresh.id), store.get_outbound(known.id)) if m] == [Delivery.FAILED] * 2
