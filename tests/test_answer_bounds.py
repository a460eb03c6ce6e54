"""What rc-mta reads of a back end's answer is bounded: a hostile or broken Release, webhook
receiver, Graph or token endpoint that answers with a body of gigabytes (declared, or just
sent) makes rc-mta read at most its bound, log why, and fail for now (retried later:
nothing is lost), not buffer it all."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import SecretStr
from test_graph_poller import run_for

from rc_mta.config import MailboxConfig, ReleaseConfig, WebhookConfig
from rc_mta.errors import BackendOutcomeUnknown, BackendUnavailable, TemporaryFailure
from rc_mta.http_client import LARGE_BODY, SMALL_BODY
from rc_mta.mailbox.graph import JSON_BODY, GraphPoller
from rc_mta.oauth2 import TokenProvider
from rc_mta.pipeline import Pipeline
from rc_mta.store import Store
from rc_mta.tasks import ActionContext
from rc_mta.tasks.release import ReleaseBackend
from rc_mta.tasks.webhook import WebhookBackend

TASK = "Applications/Folder1/Release1/Phase1/Task1"
CONTEXT = ActionContext("request-1", "<m1@example.com>", "smtp", {"spf": "pass"})
CHUNK = b"x" * (1024 * 1024)


@dataclass
class Answer:
    """What the server answers one request with: a small JSON body, or ``endless`` bytes
    of junk (sent as fast as the client reads, up to ``total``; ``declared`` as
    Content-Length, else chunked)."""

    status: int
    body: Any = None
    endless: bool = False
    total: int = 0
    declared: int | None = None


@dataclass
class HostileServer:
    """An HTTP/1.1 server on a thread that answers by ``route(method, path)`` and counts the
    bytes of each endless body the client took before it hung up. A body that declares
    more than ``total`` stalls after it, until the client hangs up."""

    route: Callable[[str, str], Answer]
    sent: list[int] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.sock.close()

    def most_taken(self) -> int:
        """The most bytes of an endless body a client took, once the server knows."""
        deadline = time.monotonic() + 10
        while not self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.sent, "no endless body was sent"
        return max(self.sent)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].decode().split(" ", 2)
            length = next((int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length:")), 0)
            rest = head.split(b"\r\n\r\n", 1)[1]
            while len(rest) < length:
                rest += conn.recv(65536)
            self.requests.append(f"{method} {path}")
            answer = self.route(method, path)
            if not answer.endless:
                body = json.dumps(answer.body).encode()
                conn.sendall(
                    f"HTTP/1.1 {answer.status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: close\r\n\r\n".encode()
                    + body
                )
                return
            framing = f"Content-Length: {answer.declared}" if answer.declared else "Transfer-Encoding: chunked"
            conn.sendall(f"HTTP/1.1 {answer.status} X\r\nContent-Type: text/plain\r\n{framing}\r\n\r\n".encode())
            sent = 0
            try:
                while sent < answer.total:
                    piece = CHUNK if answer.declared else b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
                    conn.sendall(piece)
                    sent += len(CHUNK)
                if answer.declared:  # less than declared: hold on, as a stalled back end does
                    conn.settimeout(30)
                    conn.recv(1)
                else:
                    conn.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the client hung up: what it took is counted
            self.sent.append(sent)


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[str, str], Answer]], HostileServer]]:
    servers: list[HostileServer] = []

    def make(route: Callable[[str, str], Answer]) -> HostileServer:
        servers.append(HostileServer(route))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def huge(status: int, bound: int) -> Answer:
    """A body of the bound and 32 MiB more, sent without a length."""
    return Answer(status, endless=True, total=bound + 32 * 1024 * 1024)


def told_why(caplog: pytest.LogCaptureFixture, bound: int) -> bool:
    return any(
        r.name == "rc_mta.http_client" and r.levelno == logging.WARNING and f"over the {bound} bytes" in r.getMessage()
        for r in caplog.records
    )


def run_then_close(call: Callable[[], Awaitable[Any]], close: Callable[[], Awaitable[None]]) -> None:
    """One call on a loop of its own, its client closed afterwards (as rc-mta does)."""

    async def go() -> None:
        try:
            await call()
        finally:
            await close()

    asyncio.run(go())


def in_progress_task(method: str, path: str) -> Answer:
    return Answer(200, {"id": TASK, "title": "Deploy", "owner": "alice", "status": "IN_PROGRESS", "comments": []})


def test_a_release_task_read_as_a_huge_body_is_no_answer_and_not_buffered(
    hostile: Callable[..., HostileServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = hostile(lambda method, path: huge(200, LARGE_BODY))
    backend = ReleaseBackend(ReleaseConfig(url=server.url, token=SecretStr("t"), timeout=20.0, retries=0))

    with pytest.raises(BackendUnavailable) as raised:
        run_then_close(lambda: backend.get(TASK), backend.close)

    assert f"answer over {LARGE_BODY} bytes" in str(raised.value)
    assert told_why(caplog, LARGE_BODY)
    assert server.most_taken() < LARGE_BODY + 16 * 1024 * 1024  # not read to its end


def test_a_release_post_answered_with_a_huge_error_body_is_an_unknown_outcome_not_a_refusal(
    hostile: Callable[..., HostileServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Sent, perhaps applied: the reply waits (451) and its retry reads the task first."""
    server = hostile(lambda method, path: in_progress_task(method, path) if method == "GET" else huge(409, SMALL_BODY))
    backend = ReleaseBackend(ReleaseConfig(url=server.url, token=SecretStr("t"), timeout=20.0, retries=0))

    with pytest.raises(BackendOutcomeUnknown):
        run_then_close(lambda: backend.complete(TASK, "ship it", "alice@example.com", CONTEXT), backend.close)

    assert told_why(caplog, SMALL_BODY)
    assert server.most_taken() < SMALL_BODY + 16 * 1024 * 1024


def test_a_release_answer_declaring_gigabytes_is_not_read_at_all(
    hostile: Callable[..., HostileServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Content-Length says more than the bound: refused before a byte of it is read, at
    once, not at the call's timeout."""
    gigabytes = 8 * 1024**3
    server = hostile(lambda method, path: Answer(200, endless=True, total=LARGE_BODY // 4, declared=gigabytes))
    backend = ReleaseBackend(ReleaseConfig(url=server.url, token=SecretStr("t"), timeout=20.0, retries=0))

    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        run_then_close(lambda: backend.get(TASK), backend.close)

    assert time.monotonic() - started < 10
    assert any(f"(Content-Length {gigabytes})" in r.getMessage() for r in caplog.records)
    assert server.most_taken() < LARGE_BODY // 4


def test_a_webhook_refusal_with_a_huge_body_is_a_temporary_failure(
    hostile: Callable[..., HostileServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = hostile(lambda method, path: huge(400, SMALL_BODY))
    backend = WebhookBackend(WebhookConfig(url=server.url + "/hook", secret=SecretStr("s" * 16), timeout=20.0))

    with pytest.raises(BackendOutcomeUnknown):
        run_then_close(lambda: backend.complete("t-1", "ship it", "alice@example.com", CONTEXT), backend.close)

    assert told_why(caplog, SMALL_BODY)
    assert server.most_taken() < SMALL_BODY + 16 * 1024 * 1024


def test_a_token_endpoint_answering_a_huge_body_is_a_temporary_failure(
    hostile: Callable[..., HostileServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = hostile(lambda method, path: huge(200, SMALL_BODY))
    provider = TokenProvider(server.url + "/token", "c1", "s1", scope="x", timeout=20.0)

    with pytest.raises(TemporaryFailure):
        run_then_close(lambda: provider.access_token(), provider.close)

    assert told_why(caplog, SMALL_BODY)
    assert server.most_taken() < SMALL_BODY + 16 * 1024 * 1024


def test_a_graph_listing_answered_with_a_huge_body_is_retried_not_buffered(
    hostile: Callable[..., HostileServer], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    def graph(method: str, path: str) -> Answer:
        if path.endswith("/token"):
            return Answer(200, {"access_token": "at", "token_type": "Bearer", "expires_in": 3600})
        return huge(200, LARGE_BODY)

    server = hostile(graph)
    config = MailboxConfig.model_validate(
        {
            "source": "graph",
            "sync_interval": "1s",
            "startup_delay": 0,
            "trusted_authserv_ids": ["mx.example.com"],
            "graph": {
                "tenant_id": "tenant",
                "client_id": "client",
                "client_secret": "secret",
                "user": "replies@example.com",
                "base_url": server.url + "/v1.0",
                "token_url": server.url + "/token",
            },
        }
    )
    store = Store(f"sqlite:///{tmp_path / 'claims.db'}")
    store.create_schema()
    poller = GraphPoller(config, cast(Pipeline, SimpleNamespace(store=store, message_limit=1024 * 1024)))

    try:
        asyncio.run(run_for(poller, 4))
    finally:
        store.close()

    assert told_why(caplog, JSON_BODY)  # a listing of ids: a few MiB at most
    assert server.most_taken() < JSON_BODY + 16 * 1024 * 1024
    assert len([r for r in server.requests if not r.endswith("/token")]) >= 2  # and tried again
