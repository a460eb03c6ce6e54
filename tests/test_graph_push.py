"""Graph change notifications, end to end: a real rc-mta subscribes at the Graph stand-in
(tests/graph_server.py), which validates rc-mta's endpoint and POSTs a notification when mail
arrives; the notification wakes the delta poll long before ``sync_interval`` would. Forged
notifications wake nothing; the subscription is renewed, re-created and deleted as Graph
documents."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RcMta, make_rc_mta, wait_until
from dnsserver import NsdServer
from graph_server import GraphServer
from pydantic import ValidationError
from test_graph_poller import completed, mailbox_settings, reply

from rc_mta.config import Settings

SECRET = "a-client-state-only-rc-mta-and-graph-know"
# Long enough that no poll can fall inside a test: whatever happens sooner was a notification.
SLOW_POLL = "300s"
SOON = 15.0  # "acted on within a few seconds": well before the next poll could run


@pytest.fixture
def graph() -> Iterator[GraphServer]:
    server = GraphServer().start()
    yield server
    server.stop()


@pytest.fixture
def rc_push(tmp_path: Path, graph: GraphServer, dns_server: NsdServer) -> Iterator[RcMta]:
    """An rc-mta in Graph mode with push on and a 300 s poll, not started yet."""
    server = make_rc_mta(tmp_path)
    mailbox = mailbox_settings(graph) | {"sync_interval": SLOW_POLL}
    mailbox["graph"]["push"] = {"notification_url": server.http_url + "/graph/notifications", "client_state": SECRET}
    server.settings["mailbox"] = mailbox
    server.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "2s"}
    yield server
    server.stop()


def push_settings(server: RcMta) -> dict[str, str]:
    push: dict[str, str] = server.settings["mailbox"]["graph"]["push"]
    return push


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str, str]:
    """POST as an outsider would; (status, content type, body)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get_content_type(), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read().decode()


def metric(server: RcMta, line_start: str) -> float:
    """The value of the /metrics sample whose line starts with ``line_start`` (0 if absent)."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def subscribed(graph: GraphServer) -> str:
    """Wait for rc-mta's subscription; its id."""
    subscriptions = wait_until(graph.subscriptions, what="a subscription")
    assert len(subscriptions) == 1
    return str(subscriptions[0].id)


def test_reply_is_acted_on_when_graph_notifies_long_before_the_poll(rc_push: RcMta, graph: GraphServer) -> None:
    rc_push.start()
    subscribed(graph)
    (subscription,) = graph.subscriptions()
    assert subscription.change_types == {"created"} and subscription.client_state == SECRET
    assert subscription.notification_url == rc_push.http_url + "/graph/notifications"
    assert subscription.lifecycle_url == subscription.notification_url
    assert subscription.resource.endswith("/mailFolders/inbox/messages")
    first_rounds = graph.count("GET", "/delta")

    task_id = rc_push.add_task()
    graph.add_message(reply(rc_push, task_id))

    wait_until(lambda: completed(rc_push, task_id), timeout=SOON, what="task completed after the notification")
    assert ("change", subscription.notification_url, 202) in graph.deliveries
    assert graph.count("GET", "/delta") > first_rounds
    wait_until(lambda: len(graph.folder("Processed")) == 1, timeout=SOON, what="reply filed")
    assert metric(rc_push, 'rc_mta_graph_notifications_total{kind="change",result="accepted"}') == 1
    assert metric(rc_push, 'rc_mta_graph_subscription_state{state="active"}') == 1


def test_validation_handshake_echoes_the_token_as_plain_text(rc_push: RcMta, graph: GraphServer) -> None:
    rc_push.start()
    subscribed(graph)  # the stand-in created it only after rc-mta echoed its token exactly
    assert [d for d in graph.deliveries if d[0] == "validation"] == [
        ("validation", push_settings(rc_push)["notification_url"], 200)
    ]

    url = push_settings(rc_push)["notification_url"] + "?validationToken=Validation%3A%20Testing%20%3Cb%3E%26"
    assert post(url, b"", "text/plain") == (200, "text/plain", "Validation: Testing <b>&")


def test_endpoint_that_does_not_echo_means_no_subscription_and_polling_goes_on(
    rc_push: RcMta, graph: GraphServer
) -> None:
    push_settings(rc_push)["notification_url"] = rc_push.http_url + "/not-our-route"
    rc_push.settings["mailbox"]["sync_interval"] = "1s"
    rc_push.start()
    wait_until(lambda: graph.validations_refused >= 1, what="the subscription refused")
    assert graph.subscriptions() == []

    task_id = rc_push.add_task()
    graph.add_message(reply(rc_push, task_id))
    wait_until(lambda: completed(rc_push, task_id), what="task completed by polling")
    assert metric(rc_push, 'rc_mta_graph_subscription_state{state="failed"}') == 1
    assert "no subscription" in rc_push.log_path.read_text()


def test_notification_with_a_wrong_client_state_triggers_nothing(rc_push: RcMta, graph: GraphServer) -> None:
    rc_push.start()
    subscription_id = subscribed(graph)
    task_id = rc_push.add_task()
    graph.add_message(reply(rc_push, task_id), notify=False)  # only a notification can wake the poll now
    rounds = graph.count("GET", "/delta")

    def forged(client_state: str) -> bytes:
        item = {
            "subscriptionId": subscription_id,
            "changeType": "created",
            "resource": "Users/x/Messages/y",
            "clientState": client_state,
            "tenantId": graph.tenant_id,
        }
        return json.dumps({"value": [item]}).encode()

    url = push_settings(rc_push)["notification_url"]
    assert post(url, forged(SECRET[:-1] + "X"))[0] == 202  # Graph's answer: nothing to learn from it
    assert post(url, json.dumps({"value": [{"subscriptionId": subscription_id}]}).encode())[0] == 202
    wait_until(
        lambda: metric(rc_push, 'rc_mta_graph_notifications_total{kind="change",result="rejected"}') == 2,
        what="two rejections counted",
    )
    assert "wrong clientState" in rc_push.log_path.read_text()

    # A marker after them: the same notification with the right clientState. Its round is the
    # only one since, so the forged ones woke nothing (a round they woke would come first).
    assert post(url, forged(SECRET))[0] == 202
    wait_until(lambda: completed(rc_push, task_id), timeout=SOON, what="task completed after the genuine one")
    assert graph.count("GET", "/delta") == rounds + 1


def test_hostile_bodies_are_bounded(rc_push: RcMta, graph: GraphServer) -> None:
    push_settings(rc_push)["max_body"] = "4KiB"
    rc_push.start()
    subscribed(graph)
    url = push_settings(rc_push)["notification_url"]

    assert post(url, b"[" * 5000)[0] == 413
    assert post(url, b"[" * 4000)[0] == 400
    assert post(url, b'{"value": "no"}')[0] == 400
    assert metric(rc_push, 'rc_mta_graph_notifications_total{kind="change",result="rejected"}') == 3
    assert graph.count("GET", "/delta") >= 1 and rc_push.proc is not None and rc_push.proc.poll() is None


def test_subscription_is_renewed_before_it_expires_and_recreated_when_renewal_fails(
    rc_push: RcMta, graph: GraphServer
) -> None:
    graph.max_subscription_lifetime = 8  # Graph refuses longer: rc-mta must ask for what it is configured
    push_settings(rc_push).update(subscription_lifetime="6s", renew_before="3s")
    rc_push.start()
    subscription_id = subscribed(graph)

    wait_until(lambda: graph.count("PATCH", "/subscriptions/{sid}") >= 3, what="three renewals")
    assert [s.id for s in graph.subscriptions()] == [subscription_id]  # never lapsed: 9 s > its 6 s
    assert graph.count("POST", "/subscriptions") == 1

    graph.forget_subscriptions()  # Graph lost it: the next renewal answers 404
    wait_until(lambda: [s.id for s in graph.subscriptions()] not in ([], [subscription_id]), what="a new one")
    assert graph.count("POST", "/subscriptions") == 2
    assert "creating a new one" in rc_push.log_path.read_text()

    task_id = rc_push.add_task()
    graph.add_message(reply(rc_push, task_id))
    wait_until(lambda: completed(rc_push, task_id), timeout=SOON, what="task completed after the notification")


def test_renewal_that_fails_for_a_while_is_retried_on_the_same_subscription(rc_push: RcMta, graph: GraphServer) -> None:
    push_settings(rc_push).update(subscription_lifetime="20s", renew_before="20s")  # renew after 10 s
    rc_push.start()
    subscription_id = subscribed(graph)
    graph.throttle(6, status=503, retry_after="0", route="/subscriptions/{sid}")  # more than one call waits out

    wait_until(lambda: graph.throttled == 6, what="the renewal refused", timeout=30)
    wait_until(lambda: graph.count("PATCH", "/subscriptions/{sid}") == 7, what="a renewal that works", timeout=30)
    assert [s.id for s in graph.subscriptions()] == [subscription_id]
    assert graph.count("POST", "/subscriptions") == 1
    assert "no subscription" in rc_push.log_path.read_text()


def test_reauthorization_required_leads_to_a_renewal(rc_push: RcMta, graph: GraphServer) -> None:
    rc_push.start()
    subscription_id = subscribed(graph)
    (before,) = graph.subscriptions()
    expiry = before.expires_at
    assert graph.count("PATCH", "/subscriptions/{sid}") == 0

    graph.send_lifecycle("reauthorizationRequired")
    wait_until(lambda: graph.count("PATCH", "/subscriptions/{sid}") == 1, what="a renewal")
    (after,) = graph.subscriptions()
    assert after.id == subscription_id and after.expires_at > expiry
    assert ("lifecycle", before.lifecycle_url, 202) in graph.deliveries
    assert metric(rc_push, 'rc_mta_graph_notifications_total{kind="lifecycle",result="accepted"}') == 1


def test_removed_subscription_is_created_again(rc_push: RcMta, graph: GraphServer) -> None:
    rc_push.start()
    subscription_id = subscribed(graph)

    graph.send_lifecycle("subscriptionRemoved")
    new_id = wait_until(
        lambda: [s.id for s in graph.subscriptions() if s.id != subscription_id], what="a new subscription"
    )
    assert len(new_id) == 1 and graph.count("POST", "/subscriptions") == 2

    task_id = rc_push.add_task()
    graph.add_message(reply(rc_push, task_id))
    wait_until(lambda: completed(rc_push, task_id), timeout=SOON, what="task completed after the notification")


def test_clean_shutdown_deletes_the_subscription(rc_push: RcMta, graph: GraphServer) -> None:
    rc_push.start()
    subscribed(graph)

    rc_push.stop()
    assert graph.subscriptions() == []
    assert graph.count("DELETE", "/subscriptions/{sid}") == 1


def test_missed_lifecycle_notification_runs_a_delta_round(rc_push: RcMta, graph: GraphServer) -> None:
    rc_push.start()
    subscribed(graph)
    task_id = rc_push.add_task()
    graph.add_message(reply(rc_push, task_id), notify=False)  # the notification Graph could not deliver

    graph.send_lifecycle("missed")
    wait_until(lambda: completed(rc_push, task_id), timeout=SOON, what="task completed after 'missed'")


@pytest.mark.parametrize(
    ("push", "http", "error"),
    [
        ({"client_state": "short"}, {}, "client_state must be 16 to 128 characters"),
        ({"client_state": SECRET}, {"listen": ""}, "needs [http] listen"),
        ({"client_state": SECRET, "notification_url": "ftp://x/"}, {}, "is not an http(s) URL"),
    ],
)
def test_push_config_mistakes_are_named(push: dict[str, str], http: dict[str, str], error: str) -> None:
    graph = {"tenant_id": "t", "client_id": "c", "user": "u@example.com"}
    mailbox = {"source": "graph", "graph": graph | {"push": {"notification_url": "https://h/graph"} | push}}
    with pytest.raises(ValidationError, match=re.escape(error)):
        Settings(mailbox=mailbox, http=http)  # type: ignore[arg-type]
