"""The durable outbound queue, against a real relay on loopback (tests/smtpsink.py): a
request is stored first and delivered by the sender loop, so a relay that is down, or
answers 4xx, loses nothing; a 5xx fails the request where everyone can see it; and two
instances on one PostgreSQL store send each request once."""

from __future__ import annotations

import email
import email.policy
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import RcMta, free_port, make_rc_mta, wait_until
from smtpsink import RELAY_USER, running_relay
from webhook_receiver import WebhookReceiver

TOKEN = "queue-test-token"
PASSWORD = "relay-secret"


def _with_relay(server: RcMta, port: int) -> RcMta:
    """Send through the relay at ``port``, retry after a second, look twice a second."""
    server.settings["outbound"].update(
        transport="smtp",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_username=RELAY_USER,
        smtp_password=PASSWORD,
        smtp_timeout="5s",
        from_address="release@example.com",
        retry_min="1s",
        retry_max="2s",
        queue_poll_interval="0.3s",
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


def test_outbox_delivery_is_the_queue_writing_the_file(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()

    sent = fresh_rc.request(task_id)

    assert sent["delivery"] == "sent"
    assert Path(sent["path"]).read_bytes().count(b"Message-ID: " + sent["message_id"].encode()) == 1
    shown = fresh_rc.cli_json("request", "show", sent["request_id"])
    assert shown["delivery"]["state"] == "sent"
    assert shown["delivery"]["last_answer"] == f"written to {sent['path']}"


def test_two_instances_on_one_postgresql_store_send_each_request_once(tmp_path: Path, pg_url: str) -> None:
    port = free_port()
    instances = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        instances.append(make_rc_mta(tmp_path / name, store={"url": pg_url, "busy_timeout": "5s"}))
    for rc in instances:
        rc.settings["signing"] = instances[0].settings["signing"]  # one deployment: the same keys
        _with_relay(rc, port)
    try:
        for rc in instances:
            rc.start()
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
    finally:
        for rc in instances:
            rc.stop()
