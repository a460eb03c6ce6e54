"""The HTTP API, over real HTTP against a running rc-mta, with replies sent over real SMTP."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import RcMta, make_rc_mta
from hypothesis import HealthCheck, given, settings
from mailclient import rcpt_reply, reply_message, send_smtp
from openapi_spec_validator import validate
from schemathesis import GenerationMode

from rc_mta.api import openapi_document

TOKEN = "test-token-3f9a1c2e7b"


class Answer:
    """One HTTP answer: status, headers, and the JSON body."""

    def __init__(self, status: int, headers: dict[str, str], body: Any) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def error_code(self) -> str:
        return str(self.body["error"]["code"])

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body!r})"


def call(
    server: RcMta,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
    authorization: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(server.http_url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    elif token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, headers, payload = exc.code, dict(exc.headers), exc.read()
    assert headers.get("Content-Type", "").startswith("application/json"), (status, payload)
    return Answer(status, headers, json.loads(payload))


def wait_for_http(server: RcMta, timeout: float = 20.0) -> None:
    """``start()`` waits for SMTP; the HTTP listener binds a moment later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(server.http_url + "/healthz", timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no HTTP on {server.http_url}")


def start_with_api(server: RcMta, tokens: list[str] | None = None) -> RcMta:
    server.settings["http"]["api_tokens"] = [TOKEN] if tokens is None else tokens
    server.start()
    wait_for_http(server)
    return server


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcMta]:
    server = start_with_api(make_rc_mta(tmp_path_factory.mktemp("rc-mta-api")))
    yield server
    server.stop()


def new_task(server: RcMta, title: str = "Approve deploy to prod", owner: str = "alice@example.com") -> str:
    created = call(server, "POST", "/v1/tasks", {"title": title, "owner": owner})
    assert created.status == 201, created
    return str(created.body["id"])


def send_request(server: RcMta, body: dict[str, Any]) -> dict[str, Any]:
    sent = call(server, "POST", "/v1/requests", body)
    assert sent.status == 201, sent
    result: dict[str, Any] = sent.body
    return result


def reply_as(server: RcMta, sender: str, to: str, body: str = "Looks good, ship it") -> tuple[int, str]:
    outcome = send_smtp(server.smtp_port, reply_message(to, body=body, sender=sender), to, mail_from=sender)
    return outcome.code, outcome.text


# Tasks -------------------------------------------------------------------------------------


def test_a_task_added_over_the_api_reads_the_same_as_rc_mta_task_show(api: RcMta) -> None:
    created = call(api, "POST", "/v1/tasks", {"title": "Sign the release notes", "owner": "Carol@Example.com"})

    assert created.status == 201
    assert created.body["owner"] == "carol@example.com"
    assert created.body["status"] == "in_progress"
    assert call(api, "GET", f"/v1/tasks/{created.body['id']}").body == api.task(created.body["id"])
    listed = call(api, "GET", "/v1/tasks")
    assert listed.status == 200
    assert created.body in listed.body


def test_an_answered_task_lists_its_comment(api: RcMta) -> None:
    task_id = new_task(api, owner="dave@example.com")
    sent = send_request(api, {"task_id": task_id})
    assert reply_as(api, "dave@example.com", sent["requests"][0]["fail_address"], "Tests are red")[0] == 250

    (task,) = [t for t in call(api, "GET", "/v1/tasks").body if t["id"] == task_id]
    assert task["status"] == "failed"
    assert [(c["author"], c["text"]) for c in task["comments"]] == [("dave@example.com", "Tests are red")]


def test_an_unknown_task_is_404(api: RcMta) -> None:
    answer = call(api, "GET", "/v1/tasks/t-0000000000")
    assert (answer.status, answer.error_code) == (404, "not_found")


# Requests ----------------------------------------------------------------------------------


def test_two_owners_get_their_own_addresses_and_only_the_first_answer_counts(api: RcMta) -> None:
    task_id = new_task(api, owner="alice@example.com")
    sent = send_request(api, {"task_id": task_id, "owners": ["alice@example.com", "Bob@Example.com"]})

    alice, bob = sent["requests"]
    assert sent["task_id"] == task_id
    assert (alice["owner"], bob["owner"]) == ("alice@example.com", "bob@example.com")
    assert len({alice["complete_address"], bob["complete_address"], alice["fail_address"]}) == 3

    assert reply_as(api, "bob@example.com", bob["complete_address"])[0] == 250
    code, text = reply_as(api, "alice@example.com", alice["fail_address"], "No.")

    assert code == 550
    assert "already completed by bob@example.com" in text
    answered = call(api, "GET", f"/v1/requests/{bob['request_id']}").body
    assert answered["state"] == "answered"
    assert answered["answered"]["by"] == "bob@example.com"
    assert answered["answered"]["action"] == "complete"
    assert answered["answered"]["message_id"].startswith("<")
    not_answered = call(api, "GET", f"/v1/requests/{alice['request_id']}").body
    assert (not_answered["state"], not_answered["answered"]) == ("sent", None)
    assert api.task(task_id)["acted_by"] == "bob@example.com"


def test_a_request_without_owners_goes_to_the_tasks_owner(api: RcMta) -> None:
    task_id = new_task(api, title="Rotate the keys", owner="erin@example.com")
    (only,) = send_request(api, {"task_id": task_id})["requests"]

    shown = call(api, "GET", f"/v1/requests/{only['request_id']}").body
    assert (shown["owner"], shown["title"], shown["state"]) == ("erin@example.com", "Rotate the keys", "sent")


def test_the_mail_carries_title_context_link_and_expiry(api: RcMta) -> None:
    task_id = new_task(api)
    body = {
        "task_id": task_id,
        "owner": "alice@example.com",
        "title": "Approve deploy 42",
        "context_title": "Release 2025.1",
        "link": "https://release.example.com/tasks/42",
        "expires_in": 3600,
    }
    before = time.time()
    (sent,) = send_request(api, body)["requests"]

    mail = (Path(api.settings["outbound"]["outbox_dir"]) / f"{sent['request_id']}.eml").read_text()
    assert "Subject: Action needed: Approve deploy 42" in mail
    assert "In: Release 2025.1" in mail
    assert "https://release.example.com/tasks/42" in mail
    expires = datetime.fromisoformat(sent["expires_at"]).timestamp()
    assert before + 3600 - 2 <= expires <= time.time() + 3600 + 1


def test_a_revoked_request_is_refused_at_rcpt_and_reads_revoked(api: RcMta) -> None:
    task_id = new_task(api)
    (sent,) = send_request(api, {"task_id": task_id, "owner": "alice@example.com"})["requests"]

    revoked = call(api, "DELETE", f"/v1/requests/{sent['request_id']}")

    assert revoked.status == 200
    assert revoked.body["state"] == "revoked"
    assert revoked.body["revoked_at"] is not None
    refused = rcpt_reply(api.smtp_port, sent["complete_address"])
    assert (refused.code, refused.enhanced) == (550, "5.7.1")
    assert "withdrawn" in refused.text
    assert call(api, "GET", f"/v1/requests/{sent['request_id']}").body["state"] == "revoked"
    assert api.task(task_id)["status"] == "in_progress"
    again = call(api, "DELETE", f"/v1/requests/{sent['request_id']}")
    assert (again.status, again.body["revoked_at"]) == (200, revoked.body["revoked_at"])


def test_revoking_an_answered_request_is_a_conflict(api: RcMta) -> None:
    task_id = new_task(api)
    (sent,) = send_request(api, {"task_id": task_id})["requests"]
    assert reply_as(api, "alice@example.com", sent["complete_address"])[0] == 250

    conflict = call(api, "DELETE", f"/v1/requests/{sent['request_id']}")

    assert (conflict.status, conflict.error_code) == (409, "conflict")
    assert call(api, "GET", f"/v1/requests/{sent['request_id']}").body["state"] == "answered"


def test_a_request_for_an_unknown_task_is_404_and_sends_nothing(api: RcMta) -> None:
    outbox = Path(api.settings["outbound"]["outbox_dir"])
    before = set(outbox.glob("*.eml")) if outbox.exists() else set()

    answer = call(api, "POST", "/v1/requests", {"task_id": "t-doesnotexist", "owner": "alice@example.com"})

    assert (answer.status, answer.error_code) == (404, "not_found")
    assert (set(outbox.glob("*.eml")) if outbox.exists() else set()) == before


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("request_id", ["0123456789abcdef", "not-a-request-id"])
def test_an_unknown_request_is_404(api: RcMta, method: str, request_id: str) -> None:
    answer = call(api, method, f"/v1/requests/{request_id}")
    assert (answer.status, answer.error_code) == (404, "not_found")


# Refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"owner": "alice@example.com"}, "task_id"),
        ({"task_id": "t-1", "owner": "not-an-email"}, "owner"),
        ({"task_id": "t-1", "owners": ["alice@example.com", "bob@"]}, "owners.1"),
        ({"task_id": "t-1", "owners": []}, "owners"),
        ({"task_id": "t-1", "owners": [f"u{i}@example.com" for i in range(21)]}, "owners"),
        ({"task_id": "t-1", "assignee": "alice@example.com"}, "assignee"),
        ({"task_id": "t-1", "expires_in": 59}, "expires_in"),
        ({"task_id": "t-1", "expires_in": 90 * 86400 + 1}, "expires_in"),
        ({"task_id": "t-1", "expires_in": "3600"}, "expires_in"),
        ({"task_id": 42}, "task_id"),
        ({"task_id": "t-1", "link": "ftp://example.com/x"}, "link"),
        ({"task_id": "t-1", "title": "Line one\nBcc: someone@evil.test"}, "title"),
        ({"task_id": "t-1", "owner": "alice@example.com", "owners": ["bob@example.com"]}, "(body)"),
        (["t-1"], "(body)"),
    ],
)
def test_a_bad_request_body_is_400_naming_the_field(api: RcMta, body: Any, field: str) -> None:
    answer = call(api, "POST", "/v1/requests", body)

    assert (answer.status, answer.error_code) == (400, "invalid_request")
    assert field in [d["field"] for d in answer.body["error"]["details"]]


@pytest.mark.parametrize("raw", [b"", b"{", b"null", b'"task"', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_400(api: RcMta, raw: bytes) -> None:
    answer = call(api, "POST", "/v1/tasks", raw=raw)
    assert (answer.status, answer.error_code) == (400, "invalid_request")


def test_a_bad_task_body_is_400(api: RcMta) -> None:
    answer = call(api, "POST", "/v1/tasks", {"title": "", "owner": "alice@example.com", "priority": 1})

    assert answer.status == 400
    assert {d["field"] for d in answer.body["error"]["details"]} == {"title", "priority"}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"],
    ids=["missing", "wrong", "not-bearer", "longer", "empty"],
)
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/tasks"), ("POST", "/v1/requests"), ("GET", "/v1/nowhere")])
def test_without_the_right_token_every_v1_call_is_401(
    api: RcMta, authorization: str | None, method: str, path: str
) -> None:
    answer = call(api, method, path, {"task_id": "x"}, token=None, authorization=authorization)

    assert (answer.status, answer.error_code) == (401, "unauthorized")
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("tokens", [[], [""]], ids=["none", "empty"])
def test_with_no_tokens_configured_the_api_is_closed(fresh_rc: RcMta, tokens: list[str]) -> None:
    start_with_api(fresh_rc, tokens=tokens)

    answer = call(fresh_rc, "GET", "/v1/tasks", authorization="Bearer ")

    assert (answer.status, answer.error_code) == (401, "unauthorized")
    assert "api_tokens" in answer.body["error"]["message"]
    assert call(fresh_rc, "GET", "/openapi.json", token=None).status == 200


def test_any_configured_token_opens_the_api(fresh_rc: RcMta) -> None:
    start_with_api(fresh_rc, tokens=["first-token-aaaaaaaa", "second-token-bbbbbbb"])

    assert call(fresh_rc, "GET", "/v1/tasks", token="second-token-bbbbbbb").status == 200
    assert call(fresh_rc, "GET", "/v1/tasks", token="first-token-aaaaaaaa").status == 200


def test_unknown_routes_and_methods_answer_in_the_error_shape(api: RcMta) -> None:
    missing = call(api, "GET", "/v1/nowhere")
    wrong_method = call(api, "PUT", "/v1/tasks", {})

    assert (missing.status, missing.error_code) == (404, "not_found")
    assert (wrong_method.status, wrong_method.error_code) == (405, "invalid_request")
    assert "POST" in wrong_method.headers["Allow"]


def test_when_the_smtp_relay_is_down_the_requests_are_kept_and_deferred(fresh_rc: RcMta) -> None:
    fresh_rc.settings["outbound"] = {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": 9, "smtp_timeout": 2}
    start_with_api(fresh_rc)
    task_id = new_task(fresh_rc)

    answer = call(fresh_rc, "POST", "/v1/requests", {"task_id": task_id, "owners": ["a@example.com", "b@example.com"]})

    assert answer.status == 201
    for made in answer.body["requests"]:
        assert made["delivery"] == "deferred"
        assert "could not send through 127.0.0.1:9" in made["last_answer"]
        shown = call(fresh_rc, "GET", f"/v1/requests/{made['request_id']}").body
        assert (shown["state"], shown["delivery"]["state"]) == ("sent", "deferred")
        assert shown["delivery"]["next_attempt_at"] is not None


def test_task_endpoints_are_404_when_tasks_live_elsewhere(fresh_rc: RcMta) -> None:
    fresh_rc.settings["tasks"] = {"backend": "webhook"}
    fresh_rc.settings["tasks.webhook"] = {"url": "http://127.0.0.1:9/hook", "secret": "s" * 32}
    start_with_api(fresh_rc)

    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/tasks", None),
        ("POST", "/v1/tasks", {}),
        ("GET", "/v1/tasks/t-1", None),
    ]
    for method, path, body in calls:
        answer = call(fresh_rc, method, path, body)
        assert (answer.status, answer.error_code) == (404, "not_found")
        assert answer.body["error"]["details"][0]["field"] == "tasks.backend"


# Retries: Idempotency-Key -----------------------------------------------------------------


def mails_of(server: RcMta, task_id: str) -> list[Path]:
    """The request mails written to the outbox for ``task_id`` (the outbox transport)."""
    outbox = Path(server.settings["outbound"]["outbox_dir"])
    return [p for p in outbox.glob("*.eml") if task_id in p.read_text()]


def keyed(server: RcMta, body: dict[str, Any], key: str) -> Answer:
    return call(server, "POST", "/v1/requests", body, headers={"Idempotency-Key": key})


def test_a_retry_with_the_same_idempotency_key_gets_the_first_answer_and_mails_no_one_again(api: RcMta) -> None:
    task_id = new_task(api, owner="frank@example.com")
    body = {"task_id": task_id, "owners": ["frank@example.com", "gina@example.com"]}

    first = keyed(api, body, '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    again = keyed(api, body, '"8e03978e-40d5-43e8-bc93-6894a57f9324"')

    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    assert (again.status, again.headers["Idempotent-Replayed"]) == (201, "true")
    assert again.body == first.body
    assert len(mails_of(api, task_id)) == 2  # one per owner, once
    for made in first.body["requests"]:
        assert call(api, "GET", f"/v1/requests/{made['request_id']}").body["state"] == "sent"
    # The same body sent differently (key order, spacing) is the same call.
    reordered = json.dumps({"owners": body["owners"], "task_id": task_id}, indent=2).encode()
    replayed = call(
        api, "POST", "/v1/requests", raw=reordered, headers={"Idempotency-Key": "8e03978e-40d5-43e8-bc93-6894a57f9324"}
    )
    assert (replayed.status, replayed.body) == (201, first.body)
    assert len(mails_of(api, task_id)) == 2


def test_the_same_idempotency_key_with_another_body_is_422_and_mails_no_one(api: RcMta) -> None:
    task_id = new_task(api, owner="hank@example.com")
    assert keyed(api, {"task_id": task_id}, "key-hank-1").status == 201

    reused = keyed(api, {"task_id": task_id, "title": "Another title"}, "key-hank-1")

    assert (reused.status, reused.error_code) == (422, "key_reused")
    assert reused.body["error"]["details"] == [
        {"field": "Idempotency-Key", "message": "already used with another body"}
    ]
    assert len(mails_of(api, task_id)) == 1


def test_keys_are_per_api_token(fresh_rc: RcMta) -> None:
    start_with_api(fresh_rc, tokens=[TOKEN, "second-token-bbbbbbb"])
    task_id = new_task(fresh_rc)
    request = urllib.request.Request(
        fresh_rc.http_url + "/v1/requests",
        data=json.dumps({"task_id": task_id}).encode(),
        method="POST",
        headers={"Authorization": "Bearer second-token-bbbbbbb", "Idempotency-Key": "shared-key"},
    )
    with urllib.request.urlopen(request, timeout=30) as other:
        assert other.status == 201

    mine = keyed(fresh_rc, {"task_id": task_id}, "shared-key")

    assert mine.status == 201 and "Idempotent-Replayed" not in mine.headers
    assert keyed(fresh_rc, {"task_id": task_id}, "shared-key").headers.get("Idempotent-Replayed") == "true"
    assert len(mails_of(fresh_rc, task_id)) == 2


def test_an_idempotency_key_holds_across_a_restart(fresh_rc: RcMta) -> None:
    start_with_api(fresh_rc)
    task_id = new_task(fresh_rc)
    first = keyed(fresh_rc, {"task_id": task_id}, "restart-key")
    assert first.status == 201

    fresh_rc.restart()
    wait_for_http(fresh_rc)
    again = keyed(fresh_rc, {"task_id": task_id}, "restart-key")

    assert (again.status, again.headers.get("Idempotent-Replayed"), again.body) == (201, "true", first.body)
    assert len(mails_of(fresh_rc, task_id)) == 1


def test_an_idempotency_key_holds_across_two_instances_on_one_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The client's retry reaches the other instance behind the load balancer."""
    first, second = make_rc_mta(tmp_path / "a"), make_rc_mta(tmp_path / "b")
    for server in (first, second):
        server.workdir.mkdir()
        server.settings["store"]["url"] = pg_url
    second.settings["signing"] = first.settings["signing"]
    try:
        for server in (first, second):
            start_with_api(server)
        task_id = new_task(first)
        made = keyed(first, {"task_id": task_id}, "across-instances")
        again = keyed(second, {"task_id": task_id}, "across-instances")
    finally:
        first.stop()
        second.stop()

    assert made.status == 201
    assert (again.status, again.headers.get("Idempotent-Replayed"), again.body) == (201, "true", made.body)
    assert (len(mails_of(first, task_id)), mails_of(second, task_id)) == (1, [])


def test_a_retry_while_the_first_call_still_runs_is_409_and_then_gets_its_answer(fresh_rc: RcMta) -> None:
    """The relay accepts the connection and says nothing: the first call waits for it
    (``smtp_timeout``) while the client, having given up on it, retries."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    fresh_rc.settings["outbound"] = {
        "transport": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_timeout": 4,
    }
    start_with_api(fresh_rc)
    task_id = new_task(fresh_rc)
    body = {"task_id": task_id}
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(keyed, fresh_rc, body, "slow-key")
            time.sleep(1.5)
            running = keyed(fresh_rc, body, "slow-key")
            answered = first.result(timeout=30)
    finally:
        silent.close()
    after = keyed(fresh_rc, body, "slow-key")

    assert (running.status, running.error_code, running.headers["Retry-After"]) == (409, "conflict", "1")
    assert "still being processed" in running.body["error"]["message"]
    assert answered.status == 201
    assert answered.body["requests"][0]["delivery"] == "deferred"
    assert (after.status, after.headers.get("Idempotent-Replayed"), after.body) == (201, "true", answered.body)


def test_after_an_error_the_key_is_given_back_and_a_retry_runs_again(api: RcMta) -> None:
    """An error is not kept: the call made nothing, and a retry once the cause is gone acts."""
    task_id = new_task(api, owner="ivy@example.com")
    group = send_request(
        api, {"task_id": task_id, "owners": ["ivy@example.com", "jack@example.com"], "approvals": "all"}
    )
    body = {"task_id": task_id, "owner": "kim@example.com"}

    refused = keyed(api, body, "after-error")
    for made in group["requests"]:
        assert call(api, "DELETE", f"/v1/requests/{made['request_id']}").status == 200
    retried = keyed(api, body, "after-error")

    assert (refused.status, refused.error_code) == (409, "conflict")
    assert retried.status == 201 and "Idempotent-Replayed" not in retried.headers
    assert [r["owner"] for r in retried.body["requests"]] == ["kim@example.com"]
    assert keyed(api, body, "after-error").body == retried.body
    assert len(mails_of(api, task_id)) == 3  # the group's two, and kim's once


@pytest.mark.parametrize(
    "key",
    ["", '""', '"unterminated', "a b", "x" * 256, "caf\u00e9", "two\\backslash"],
    ids=["empty", "empty-quoted", "unterminated", "space", "long", "non-ascii", "bare-backslash"],
)
def test_a_malformed_idempotency_key_is_400_and_mails_no_one(api: RcMta, key: str) -> None:
    task_id = new_task(api)
    answer = call(api, "POST", "/v1/requests", {"task_id": task_id}, headers={"Idempotency-Key": key})

    assert (answer.status, answer.error_code) == (400, "invalid_request")
    assert answer.body["error"]["details"][0]["field"] == "Idempotency-Key"
    assert mails_of(api, task_id) == []


# The OpenAPI document ----------------------------------------------------------------------


def test_the_openapi_document_is_valid_and_public(api: RcMta) -> None:
    document = call(api, "GET", "/openapi.json", token=None)

    assert document.status == 200
    validate(document.body)
    assert document.body["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_route_the_server_answers_is_documented(api: RcMta, tmp_path: Path) -> None:
    from aiohttp import web

    from rc_mta.api import add_api_routes, openapi_document
    from rc_mta.app import Service
    from rc_mta.config import Settings, SigningConfig, StoreConfig
    from rc_mta.http import Health, make_app

    service = Service.open(
        Settings(
            store=StoreConfig(url=f"sqlite:///{tmp_path / 'db.sqlite'}"),
            signing=SigningConfig(generated_key_file=tmp_path / "key"),
        )
    )
    try:
        app: web.Application = make_app(Health())
        add_api_routes(app, service)
    finally:
        service.close()
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/v1") and route.method != "HEAD"
    }
    documented = {
        (path, method)
        for path, item in call(api, "GET", "/openapi.json", token=None).body["paths"].items()
        for method in item
        if method != "parameters"
    }

    assert served == documented
    assert openapi_document()["paths"].keys() == {path for path, _ in served}


# No input makes the API fail -----------------------------------------------------------------


@pytest.fixture(scope="module")
def api_schema(api: RcMta) -> Any:
    return schemathesis.openapi.from_url(api.http_url + "/openapi.json")


@pytest.fixture(scope="module")
def real_task(api: RcMta) -> str:
    return new_task(api, title="Fuzzed", owner="fuzz@example.com")


OPERATIONS = [
    (path, method.upper())
    for path, item in openapi_document()["paths"].items()
    for method in item
    if method != "parameters"
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_input_makes_the_api_answer_500(
    api_schema: Any, real_task: str, path: str, method: str, mode: GenerationMode
) -> None:
    """Fifty requests that fit the document and fifty that do not, per operation: none is
    answered with a 500, and each answer is one the document describes."""
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def answers_without_failing(case: Any) -> None:
        positive = mode is GenerationMode.POSITIVE
        if (
            positive
            and path == "/v1/requests"
            and isinstance(case.body, dict)
            and isinstance(case.body.get("task_id"), str)
        ):
            # Reach the sending path, not only "no such task". (Not for negative cases: a
            # real id could mend the very field that was made invalid.)
            case.body["task_id"] = real_task
        if positive and case.headers and "Idempotency-Key" in case.headers:
            # Each generated call is a new call: one key reused with another body is the
            # client's mistake (422), which positive data must not make.
            case.headers["Idempotency-Key"] = f'"{uuid.uuid4()}"'
        response = case.call(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert response.status_code < 500, response.text
        case.validate_response(response)  # every schemathesis check: the document says what we answer

    answers_without_failing()
