"""A stand-in for Digital.ai Release's public REST API, for the tests.

No real Release can run here, so this small aiohttp server follows the documented API
for the calls rc-mta makes, with the documented shapes and codes:

* ``GET /api/v1/tasks/{taskId}``: the task as JSON (``id``, ``type``, ``title``, ``status``,
  ``owner``, ``team``, ``comments``, ``startDate``, ``endDate``); 404 if unknown.
* ``POST /api/v1/tasks/{taskId}/complete`` and ``/fail`` with ``{"comment": "..."}``: the
  updated task; 400 for a body that is not a JSON object, 400 (or 409, a knob) when the task
  is not ``IN_PROGRESS``.
* ``GET /api/v1/releases?page=&resultsPerPage=``: a page of releases (for ``check()``).
* 401 for wrong basic credentials or personal token (``x-release-personal-token``); 403
  when the account lacks permission on a task.

Task ids are paths (``Applications/Folder1/Release1/Phase1/Task1``) and arrive unencoded.
It runs on 127.0.0.1, a free port, in a thread with its own event loop. Knobs: tasks,
credentials, ``go_down()``/``come_back()`` (stop and resume listening), ``unavailable``
(answer 503), ``delay`` (every answer is late), ``action_delay`` (complete/fail take effect
at once, the answer comes late, as a slow Release that commits before it answers),
``gateway_errors`` (a proxy's 502 for the next calls, before or after Release acted), and
``calls``/``actions`` (what arrived, what changed).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from appthread import AppThread

STATUSES = (
    "PLANNED",
    "PENDING",
    "IN_PROGRESS",
    "COMPLETED",
    "SKIPPED",
    "FAILED",
    "FAILING",
    "ABORTED",
    "COMPLETED_IN_ADVANCE",
    "SKIPPED_IN_ADVANCE",
    "WAITING_FOR_INPUT",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Action:
    task_id: str
    action: str  # complete | fail
    comment: str
    user: str


@dataclass
class FakeRelease:
    username: str = "rc-mta"
    password: str = "s3cret-password"
    token: str = ""
    conflict_status: int = 400  # what a complete/fail of a task not in progress answers
    unavailable: bool = False
    delay: float = 0.0
    action_delay: float = 0.0
    gateway_errors: int = 0  # the next N complete/fail calls get a proxy's 502 ...
    gateway_error_acts: bool = False  # ... after Release did act (True) or before it saw them
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=set)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (task id, action) -> POSTs received
    actions: list[Action] = field(default_factory=list)  # each change of a task's status
    port: int = 0
    _server: AppThread | None = None
    _site: web.SockSite | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # Test-side API ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_task(
        self,
        task_id: str = "Applications/Folder1/Release1/Phase1/Task1",
        title: str = "Approve deploy to prod",
        owner: str = "alice",
        status: str = "IN_PROGRESS",
        team: str | None = "Release Admin",
    ) -> str:
        assert status in STATUSES, status
        with self._lock:
            self.tasks[task_id] = {
                "id": task_id,
                "type": "xlrelease.Task",
                "title": title,
                "status": status,
                "owner": owner,
                "team": team,
                "comments": [],
                "startDate": _now(),
                "endDate": None,
            }
        return task_id

    def status(self, task_id: str) -> str:
        with self._lock:
            return str(self.tasks[task_id]["status"])

    def comments(self, task_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.tasks[task_id]["comments"])

    def actions_on(self, task_id: str) -> list[Action]:
        with self._lock:
            return [a for a in self.actions if a.task_id == task_id]

    def start(self) -> FakeRelease:
        self._server = AppThread(self._app(), "fake-release")
        self._server.start(self._listen)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None

    def go_down(self) -> None:
        """Stop listening: connections are refused, as when Release is not running."""
        assert self._server is not None
        self._server.call(self._stop_listening())

    def come_back(self) -> None:
        assert self._server is not None
        self._server.call(self._listen(self._server.runner))

    # Server side -----------------------------------------------------------------------

    async def _listen(self, runner: web.AppRunner) -> int:
        """Listen on our port (a free one the first time, the same one after come_back)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = int(sock.getsockname()[1])
        self._site = web.SockSite(runner, sock)
        await self._site.start()
        return self.port

    async def _stop_listening(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
        assert self._server is not None and self._server.runner.server is not None
        for connection in self._server.runner.server.connections:  # kept-alive clients see it go, too
            connection.close()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/api/v1/releases", self._releases)
        app.router.add_get("/api/v1/tasks/{task_id:.+}", self._get_task)
        app.router.add_post("/api/v1/tasks/{task_id:.+}/{action:complete|fail}", self._act)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.unavailable:
            return web.Response(status=503, text="Service Unavailable")
        if not self._authenticated(request):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="Release"'})
        response: web.StreamResponse = await handler(request)
        return response

    def _authenticated(self, request: web.Request) -> bool:
        token = request.headers.get("x-release-personal-token")
        if token is not None:
            return bool(self.token) and token == self.token
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return user == self.username and password == self.password

    def _user(self, request: web.Request) -> str:
        return "token-user" if "x-release-personal-token" in request.headers else self.username

    async def _releases(self, request: web.Request) -> web.Response:
        size = int(request.query.get("resultsPerPage", "100"))
        page = [{"id": "Applications/Folder1/Release1", "type": "xlrelease.Release", "status": "IN_PROGRESS"}]
        return web.json_response(page[:size])

    async def _get_task(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, f"Repository entity [{task_id}] not found")
            if task_id in self.forbidden:
                return _error(403, f"You do not have view permission on {task_id}")
            return web.json_response(json.loads(json.dumps(task)))

    async def _act(self, request: web.Request) -> web.Response:
        task_id, action = request.match_info["task_id"], request.match_info["action"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        with self._lock:
            self.calls[task_id, action] += 1
            bad_gateway = self.gateway_errors > 0
            self.gateway_errors -= bad_gateway
            if bad_gateway and not self.gateway_error_acts:
                return _error(502, "Bad Gateway")
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, f"Repository entity [{task_id}] not found")
            if task_id in self.forbidden:
                return _error(403, f"You do not have task#edit permission on {task_id}")
            if not isinstance(body, dict) or not isinstance(body.get("comment", ""), str):
                return _error(400, f"Can't parse the following as a JSON object: {body!r}")
            if task["status"] != "IN_PROGRESS":
                return _error(self.conflict_status, f"Task '{task['title']}' is not in progress: {task['status']}")
            comment, user = body.get("comment", ""), self._user(request)
            task["status"] = "COMPLETED" if action == "complete" else "FAILED"
            task["endDate"] = _now()
            task["comments"].append(
                {"id": f"{task_id}/Comment{len(task['comments']) + 1}", "type": "xlrelease.Comment", "author": user}
                | {"date": _now(), "text": comment}
            )
            self.actions.append(Action(task_id, action, comment, user))
            answer = json.loads(json.dumps(task))
        if self.action_delay:
            await asyncio.sleep(self.action_delay)
        if bad_gateway:
            return _error(502, "Bad Gateway")
        return web.json_response(answer)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain")
