"""A stand-in for Digital.ai Release's public REST API, for the tests.

No real Release can run here, so this small aiohttp server follows the documented API
for the calls rc-mta makes, with the documented shapes and codes:

* ``GET /api/v1/tasks/{taskId}``: the task as JSON (``id``, ``type``, ``title``, ``status``,
  ``owner``, ``team``, ``comments``, ``startDate``, ``endDate``); 404 if unknown.
* ``POST /api/v1/tasks/{taskId}/complete`` and ``/fail`` with ``{"comment": "..."}``: the
  updated task; 400 for a body that is not a JSON object, 400 (or 409, a knob) when the task
  is not ``IN_PROGRESS``.
* ``GET /api/v1/releases?page=&resultsPerPage=``: a page of releases (for ``check()``).
* Watch mode: ``POST /api/v1/releases/search?page=&resultsPerPage=`` with a ReleasesFilters
  body (``{"inProgress": true}``): a page of the releases in that state;
  ``GET /api/v1/releases/{releaseId}/active-tasks``: the release's active tasks (in
  progress, failing, failed, waiting for input), each with its ``tags``;
  ``GET /api/v1/releases/{releaseId}/teams``: its teams (``teamName``, ``members`` with
  ``name`` and ``type``); ``GET /api/v1/users/{username}``: a user (``username``,
  ``email``, ``fullName``), 404 if unknown.
* ``POST /api/v1/tasks/{taskId}/comment`` with ``{"comment": "..."}``: adds a comment, answers
  the task.
* 401 for wrong basic credentials or personal token (``x-release-personal-token``); 403
  when the account lacks permission on a task.

Task ids are paths (``Applications/Folder1/Release1/Phase1/Task1``) and arrive unencoded.
It runs on 127.0.0.1, a free port, in a thread with its own event loop. Knobs: tasks,
credentials, ``go_down()``/``come_back()`` (stop and resume listening), ``silent_after_read``
(answer the next read of a task, close its connection, then take no connection and refuse
none until ``come_back()``: connecting hangs, as behind a firewall that drops SYNs, between
rc-mta's read and its POST), ``silent_connects`` (with ``silent_after_read``: come back by
itself once that many connects were given up, ``dropped_connects`` counting them, and run
``meanwhile`` first, what people did in the UI while rc-mta could not reach Release),
``unavailable`` (answer 503 to every call while set) and ``unavailable_paths`` (only to
calls whose path starts with one of these: a Release failing part-way through a round),
``delay`` (every answer is late), ``action_delay`` (complete/fail
take effect at once, the answer comes late, as a slow Release that commits before it
answers), ``gateway_errors`` (a proxy's 502, or ``gateway_status``: a 504 that gave up
waiting, a 500, for the next calls, before or after Release acted; ``gateway_meanwhile`` is
what people did in the UI as the proxy answered one that never reached Release), ``script`` (the next
calls, in order: each answered late, with a status or as usual),
``lost_comment_answers`` (how the answers to the next comment POSTs go astray after
Release added the comment, one each: ``"drop"`` the connection closes without an answer,
``"504"`` a proxy that gave up waiting, ``"late"`` the answer comes ``LATE_SECONDS`` late),
and ``calls``/``actions`` (what arrived, what changed), ``seen`` (every call served:
method, path, who), ``refused`` (every call answered 503 for being unavailable: method, path).
A task's release is its id up to the ``Release…`` segment; ``users``, ``teams``,
``release_status``, ``reassign()``, ``set_status()`` and ``abort_release()`` play what
people do in the UI.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable
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


LATE_SECONDS = 3.0  # how late a "late" comment answer is: past any client timeout the tests use
_LOST_ANSWERS = ("drop", "504", "late")


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
    unavailable: bool = False  # every call answers 503 ...
    unavailable_paths: tuple[str, ...] = ()  # ... or only those whose path starts with one of these
    delay: float = 0.0
    action_delay: float = 0.0
    silent_after_read: bool = False
    silent_connects: int = 0  # ... and silent for only this many connects (0: until come_back())
    meanwhile: Callable[[], None] | None = None  # ... done as it comes back by itself
    dropped_connects: int = 0  # connects given up while silent (counted when silent_connects is set)
    gateway_errors: int = 0  # the next N complete/fail calls get a proxy's 502 ...
    gateway_error_acts: bool = False  # ... after Release did act (True) or before it saw them
    gateway_status: int = 502  # ... with this status
    gateway_meanwhile: Callable[[], None] | None = None  # ... done as a proxy answers one Release never saw
    script: list[tuple[float, int | None]] = field(default_factory=list)  # next calls: (late by, status or None)
    lost_comment_answers: list[str] = field(default_factory=list)  # drop | 504 | late, one per comment POST
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=set)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (task id, action) -> POSTs received
    actions: list[Action] = field(default_factory=list)  # each change of a task's status
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, user) of every call served
    refused: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every call answered 503
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # username -> Release user
    teams: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # release id -> its teams
    release_status: dict[str, str] = field(default_factory=dict)  # release id -> status (IN_PROGRESS)
    port: int = 0
    _server: AppThread | None = None
    _site: web.SockSite | None = None
    _hole: list[socket.socket] = field(default_factory=list)  # silent: the port's socket, and what fills its queue
    _watch: asyncio.Task[None] | None = None  # silent_connects: counts the dropped connects, comes back
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
        tags: tuple[str, ...] = (),
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
                "tags": list(tags),
                "comments": [],
                "startDate": _now(),
                "endDate": None,
            }
        return task_id

    def add_user(self, username: str, email: str | None) -> None:
        with self._lock:
            self.users[username] = {"username": username, "email": email, "fullName": username.title()}

    def reassign(self, task_id: str, owner: str | None) -> None:
        with self._lock:
            self.tasks[task_id]["owner"] = owner

    def set_status(self, task_id: str, status: str) -> None:
        assert status in STATUSES, status
        with self._lock:
            self.tasks[task_id]["status"] = status

    def abort_release(self, release_id: str) -> None:
        """As Release does: the release and its unfinished tasks are aborted."""
        with self._lock:
            self.release_status[release_id] = "ABORTED"
            for task_id, task in self.tasks.items():
                if _release_of(task_id) == release_id and task["status"] not in ("COMPLETED", "SKIPPED", "FAILED"):
                    task["status"] = "ABORTED"

    def calls_by(self, user: str, method: str, path_start: str) -> int:
        with self._lock:
            return sum(1 for m, p, u in self.seen if u == user and m == method and p.startswith(path_start))

    def refusals(self, method: str, path_start: str) -> int:
        """How many calls were answered 503 for being unavailable (method, path starting so)."""
        with self._lock:
            return sum(1 for m, p in self.refused if m == method and p.startswith(path_start))

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
            if self._watch is not None:
                self._server.call(self._stop_watching())
            self._server.stop()
        self._server = None
        self._close_hole()

    def go_down(self) -> None:
        """Stop listening: connections are refused, as when Release is not running."""
        assert self._server is not None
        self._server.call(self._stop_listening())

    def come_back(self) -> None:
        assert self._server is not None
        self._server.call(self._come_back())

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

    async def _go_silent(self) -> None:
        """Stop listening and hold the port with a socket whose accept queue is full, so the
        kernel drops every SYN (as a firewall does); connections already open stay open."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        hole = socket.socket()
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind(("127.0.0.1", self.port))
        hole.listen(0)
        self._hole = [hole, socket.create_connection(("127.0.0.1", self.port))]  # the one place it queues
        if self.silent_connects:
            self._watch = asyncio.create_task(self._come_back_after(self.silent_connects))

    async def _come_back(self) -> None:
        """Listen again (if silent_connects has not made it so already)."""
        self._close_hole()
        if self._site is None:
            assert self._server is not None
            await self._listen(self._server.runner)

    async def _come_back_after(self, connects: int) -> None:
        """Count the connects given up while silent (a socket here that was trying to connect
        to our port is gone: its connect timed out), and after ``connects`` come back."""
        trying: set[tuple[str, str]] = set()
        while self._hole:
            now = _connecting_to(self.port)
            gone = len(trying - now)
            trying = now
            with self._lock:
                self.dropped_connects += gone
            connects -= gone
            if connects <= 0:
                if self.meanwhile is not None:
                    self.meanwhile()
                await self._come_back()
                return
            await asyncio.sleep(0.01)  # far shorter than any back-off: listening before the next try

    async def _stop_watching(self) -> None:
        assert self._watch is not None
        self._watch.cancel()
        await asyncio.wait([self._watch])

    def _close_hole(self) -> None:
        for sock in self._hole:
            sock.close()
        self._hole = []

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/api/v1/releases", self._releases)
        app.router.add_post("/api/v1/releases/search", self._search_releases)
        app.router.add_get("/api/v1/releases/{release_id:.+}/active-tasks", self._active_tasks)
        app.router.add_get("/api/v1/releases/{release_id:.+}/teams", self._teams)
        app.router.add_get("/api/v1/users/{username}", self._get_user)
        app.router.add_post("/api/v1/tasks/{task_id:.+}/comment", self._comment)
        app.router.add_get("/api/v1/tasks/{task_id:.+}", self._get_task)
        app.router.add_post("/api/v1/tasks/{task_id:.+}/{action:complete|fail}", self._act)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self._lock:
            late, status = self.script.pop(0) if self.script else (0.0, None)
        if late:
            await asyncio.sleep(late)
        if status is not None:
            return _error(status, f"scripted {status} to {request.method} {request.path}")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.unavailable or request.path.startswith(self.unavailable_paths):
            with self._lock:
                self.refused.append((request.method, request.path))
            return web.Response(status=503, text="Service Unavailable")
        if not self._authenticated(request):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="Release"'})
        with self._lock:
            self.seen.append((request.method, request.path, self._user(request)))
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

    async def _search_releases(self, request: web.Request) -> web.Response:
        try:
            filters = await request.json()
        except ValueError:
            filters = None
        if not isinstance(filters, dict):
            return _error(400, f"Can't parse the following as a JSON object: {filters!r}")
        page, size = int(request.query.get("page", "0")), int(request.query.get("resultsPerPage", "100"))
        wanted = {status for key, status in _RELEASE_FILTERS.items() if filters.get(key) is True}
        with self._lock:
            ids = sorted({_release_of(task_id) for task_id in self.tasks})
            found = [
                {"id": i, "type": "xlrelease.Release", "title": i.rsplit("/", 1)[-1], "status": status}
                for i in ids
                if (status := self.release_status.get(i, "IN_PROGRESS")) in wanted or not wanted
            ]
        return web.json_response(found[page * size : (page + 1) * size])

    async def _active_tasks(self, request: web.Request) -> web.Response:
        release_id = request.match_info["release_id"]
        with self._lock:
            found = [
                json.loads(json.dumps(task))
                for task_id, task in self.tasks.items()
                if _release_of(task_id) == release_id and task["status"] in _ACTIVE
            ]
        if not found and not any(_release_of(t) == release_id for t in self.tasks):
            return _error(404, f"Repository entity [{release_id}] not found")
        return web.json_response(found)

    async def _teams(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(list(self.teams.get(request.match_info["release_id"], [])))

    async def _get_user(self, request: web.Request) -> web.Response:
        with self._lock:
            user = self.users.get(request.match_info["username"])
        if user is None:
            return _error(404, f"User [{request.match_info['username']}] not found")
        return web.json_response(user)

    async def _comment(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("comment"), str):
            return _error(400, f"Can't parse the following as a JSON object: {body!r}")
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, f"Repository entity [{task_id}] not found")
            task["comments"].append(
                {"id": f"{task_id}/Comment{len(task['comments']) + 1}", "type": "xlrelease.Comment"}
                | {"author": self._user(request), "date": _now(), "text": body["comment"]}
            )
            answer = web.json_response(json.loads(json.dumps(task)))
            lost = self.lost_comment_answers.pop(0) if self.lost_comment_answers else None
        assert lost in (None, *_LOST_ANSWERS), lost
        if lost == "drop":
            assert request.transport is not None
            request.transport.close()  # added, and no answer at all
        elif lost == "504":
            return _error(504, "Gateway Timeout")
        elif lost == "late":
            await asyncio.sleep(LATE_SECONDS)
        return answer

    async def _get_task(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, f"Repository entity [{task_id}] not found")
            if task_id in self.forbidden:
                return _error(403, f"You do not have view permission on {task_id}")
            answer = web.json_response(json.loads(json.dumps(task)))
            silence, self.silent_after_read = self.silent_after_read, False
        if silence:
            await self._go_silent()
            answer.force_close()  # the next call must connect again
        return answer

    async def _act(self, request: web.Request) -> web.Response:
        task_id, action = request.match_info["task_id"], request.match_info["action"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        meanwhile: Callable[[], None] | None = None
        with self._lock:
            self.calls[task_id, action] += 1
            bad_gateway = self.gateway_errors > 0
            self.gateway_errors -= bad_gateway
            if bad_gateway and not self.gateway_error_acts:
                meanwhile, self.gateway_meanwhile = self.gateway_meanwhile, None
        if bad_gateway and not self.gateway_error_acts:
            if meanwhile is not None:
                meanwhile()  # outside the lock: what people do in the UI takes it
            return _error(self.gateway_status, "Bad Gateway")
        with self._lock:
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
            return _error(self.gateway_status, "Bad Gateway")
        return web.json_response(answer)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain")


# ReleasesFilters keys and the release status each one selects.
_RELEASE_FILTERS = {
    "planned": "PLANNED",
    "inProgress": "IN_PROGRESS",
    "paused": "PAUSED",
    "failing": "FAILING",
    "failed": "FAILED",
    "completed": "COMPLETED",
    "aborted": "ABORTED",
}
# What Release counts as a release's active tasks.
_ACTIVE = frozenset({"IN_PROGRESS", "FAILING", "FAILED", "WAITING_FOR_INPUT"})


def _connecting_to(port: int) -> set[tuple[str, str]]:
    """The sockets on this host still connecting to 127.0.0.1:``port`` (local address, inode):
    Linux's table of TCP sockets, state 02 (SYN_SENT), addresses as the kernel prints them."""
    wanted = f"{int.from_bytes(socket.inet_aton('127.0.0.1'), sys.byteorder):08X}:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        rows = [line.split() for line in table]
    return {(row[1], row[9]) for row in rows[1:] if row[2] == wanted and row[3] == "02"}


def _release_of(task_id: str) -> str:
    """The release a task lives in: its id up to the ``Release…`` segment."""
    segments = task_id.split("/")
    for i, segment in enumerate(segments):
        if segment.startswith("Release"):
            return "/".join(segments[: i + 1])
    return "/".join(segments[:-2])
