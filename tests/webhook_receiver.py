"""A webhook receiver as a user would write one, for the tests of the webhook backend.

It verifies each POST the documented way: HMAC-SHA256 over ``f"{timestamp}."`` + the raw
body, compared in constant time, and the timestamp no older than five minutes (a replayed
request is refused). Verified payloads are recorded; refusals are counted. ``answer`` makes
it reply 409/422/500 (or anything) to verified requests; ``delay`` makes it slow to answer,
and ``gate`` holds each answer until the test opens it (a verified request is recorded
first, so a test can wait for it to be under way); ``trickle`` sends the answer's status at
once and its body a byte every so many seconds (a receiver, or a proxy, streaming slowly).
It runs on 127.0.0.1, a free port (or ``port``), in a thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from appthread import AppThread

MAX_AGE_SECONDS = 300


@dataclass
class WebhookReceiver:
    secret: str = "webhook-secret-for-tests"
    answer: tuple[int, Any] | None = None  # (status, JSON object or text) for verified requests
    payloads: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # why each refused request was refused
    delay: float = 0.0  # seconds to wait before answering a verified request
    gate: threading.Event | None = None  # when given, each answer waits until it is set
    trickle: float = 0.0  # seconds between the bytes of the answer's body (0: all at once)
    port: int = 0
    _server: AppThread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/rc-mta"

    def verify(self, timestamp: str, signature: str, body: bytes, now: float | None = None) -> str | None:
        """None when the request is authentic and fresh, else why not."""
        if not timestamp.isdigit():
            return "missing or malformed timestamp"
        if abs((now or time.time()) - int(timestamp)) > MAX_AGE_SECONDS:
            return "stale timestamp"
        expected = (
            "sha256=" + hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return "bad signature"
        return None

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        why = self.verify(
            request.headers.get("X-RC-MTA-Timestamp", ""), request.headers.get("X-RC-MTA-Signature", ""), body
        )
        if why is not None:
            self.rejected.append(why)
            return web.json_response({"detail": why}, status=401)
        self.payloads.append(json.loads(body))
        self.headers.append(dict(request.headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await asyncio.to_thread(self.gate.wait, 60)
        status, content = self.answer or (200, {"ok": True})
        if self.trickle:
            return await self._trickled(request, status, content)
        if isinstance(content, str):
            return web.Response(status=status, text=content)
        return web.json_response(content, status=status)

    async def _trickled(self, request: web.Request, status: int, content: Any) -> web.StreamResponse:
        body = (content if isinstance(content, str) else json.dumps(content)).encode()
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        try:
            for i in range(len(body)):
                await response.write(body[i : i + 1])
                await asyncio.sleep(self.trickle)
        except ConnectionResetError:
            pass  # the client did not wait for the rest
        return response

    def start(self) -> WebhookReceiver:
        """Listen on ``port``, or on a free one when it is 0 (a receiver that comes up late
        is made with the port its URL was given out with)."""
        app = web.Application()
        app.router.add_post("/hooks/rc-mta", self._receive)
        self._server = AppThread(app, "webhook-receiver")
        self.port = self._server.start(self._listen)
        return self

    async def _listen(self, runner: web.AppRunner) -> int:
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        return int(runner.addresses[-1][1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None
