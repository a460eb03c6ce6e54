"""Digital.ai Release as the task backend, through its public REST API.

``GET /api/v1/tasks/{id}`` reads a task, ``POST /api/v1/tasks/{id}/complete`` and ``/fail``
act with ``{"comment": ...}``, and ``POST /api/v1/tasks/{id}/comment`` tells the people watching
it that a request expired unanswered (``expired``) or that its mail was never delivered
(``request_failed``). Task ids are paths (``Applications/Folder1/Release1/Phase1/Task1``)
and go into the URL as they are. Authentication is HTTP basic or a personal access token
(``x-release-personal-token``).

Watch mode (``release_watch.py``) also reads ``POST /api/v1/releases/search``,
``GET /api/v1/releases/{id}/active-tasks``, ``…/teams`` and ``GET /api/v1/users/{username}``.

Acting twice is the one thing that must never happen, so: a task is read before acting and
only an ``IN_PROGRESS`` one is acted on; a POST is retried only when it surely did not reach
Release (no connection, or none within connecting's own deadline: ``http_timeout``) or a
proxy said Release was unavailable (502/503), and the task is read again before each retry.
A POST that timed out once connected is not retried here: the sender's retry reads the task
first, and finds our own attribution line in its comments if the first attempt did act —
the pipeline then finishes instead of refusing. Saying a thing twice is no better, so a
comment (``add_comment``) goes the same way: the task is read before each POST, and a
comment with exactly its text already there counts as said.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import aiohttp

from ..config import ReleaseConfig
from ..errors import (
    BackendAuthFailed,
    BackendOutcomeUnknown,
    BackendRefused,
    BackendUnavailable,
    ConfigError,
    RequestRevoked,
)
from ..http_client import LARGE_BODY, SMALL_BODY, read_text
from ..registry import TASK_BACKENDS
from ..safetext import one_line
from ..store import Store
from ._base import (
    ActionContext,
    TaskInfo,
    TaskNotFound,
    TaskNotInProgress,
    expiry_note,
    http_timeout,
    undelivered_note,
)

log = logging.getLogger("rc_mta.tasks.release")

IN_PROGRESS = "IN_PROGRESS"
ATTRIBUTION = "— answered by email by "
_ATTRIBUTED = re.compile(re.escape(ATTRIBUTION) + r"(\S+)\s*$")
# Proxies in front of Release answer these when it is down: the POST did not reach it.
# 502/503: the proxy could not hand the POST to Release. Not 504: the proxy did hand it
# over and gave up waiting, so Release may have acted; re-POSTing could act twice.
_RETRYABLE_POST_STATUS = frozenset({502, 503})
# What ``_post_unrepeated`` keeps between its own ends and the action deadline: a POST
# ends on its own timeout at least this long before the reads around it are cut, and they at
# least this long before the deadline.
_DEADLINE_SLACK_SECONDS = 0.5
# Watch mode reads releases a page at a time, and at most this many pages per round.
_PAGE_SIZE = 100
_MAX_PAGES = 50


def attributed(comment: str, actor: str) -> str:
    """The comment recorded in Release: the reply's words, then who answered by email."""
    line = f"{ATTRIBUTION}{actor}"
    return f"{comment.rstrip()}\n\n{line}" if comment.strip() else line


@dataclass(frozen=True)
class StartedTask:
    """A task that is in progress and marked for email (watch mode)."""

    id: str
    title: str
    release_id: str
    release_title: str
    owner: str | None  # a Release username
    team: str | None


def _name(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


class _Answer:
    """An HTTP answer read in full, up to a bound (``http_client``)."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.text)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class ReleaseBackend:
    name = "release"

    def __init__(self, config: ReleaseConfig) -> None:
        self._config = config
        self._base = config.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    # The interface ------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskInfo:
        return _task_info(task_id, await self._read_task(task_id))

    async def complete(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        await self._act(task_id, "complete", comment, actor, context.deadline, context.owner)

    async def fail(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        await self._act(task_id, "fail", comment, actor, context.deadline, context.owner)

    async def expired(self, task_id: str, owner: str, request_id: str, expired_at: float) -> None:
        """A comment on the task, so the people watching it in Release see it."""
        await self.add_comment(task_id, expiry_note(owner, request_id, expired_at))

    async def request_failed(self, task_id: str, request_id: str, owner: str, answer: str) -> None:
        """``RequestFailureListener``: a comment on the task, as for ``expired``, so the people
        watching it in Release learn that its owner never got the mail."""
        await self.add_comment(task_id, undelivered_note(owner, request_id, answer))

    async def check(self) -> str:
        """A cheap authenticated read: proves Release answers and accepts our credentials."""
        answer = await self._get_with_retries("/api/v1/releases?page=0&resultsPerPage=1")
        self._raise_for_auth(answer, "GET /api/v1/releases")
        if answer.status >= 400:
            raise BackendUnavailable(f"Release answered {answer.status} to GET /api/v1/releases")
        return f"{self._base} answers and accepts our credentials"

    async def close(self) -> None:
        # A session made on a loop that has ended cannot be closed from this one.
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None
        self._session_loop = None

    # Watch mode: finding the tasks that started -----------------------------------------

    async def started_tasks(self, tag: str) -> list[StartedTask]:
        """Every ``IN_PROGRESS`` task tagged ``tag`` (case-insensitively) in a release that is
        in progress: ``POST /api/v1/releases/search`` pages through the releases, then
        ``GET /api/v1/releases/{id}/active-tasks`` lists each one's active tasks."""
        found: list[StartedTask] = []
        for release in await self._releases_in_progress():
            release_id = str(release.get("id") or "")
            if not _plausible_id(release_id):
                continue
            path = f"/api/v1/releases/{release_id}/active-tasks"
            for task in await self._read_list(path):
                task_id = str(task.get("id") or "")
                if not _tagged(task, tag) or task.get("status") != IN_PROGRESS or not _plausible_id(task_id):
                    continue
                found.append(
                    StartedTask(
                        id=task_id,
                        title=str(task.get("title") or task_id),
                        release_id=release_id,
                        release_title=str(release.get("title") or release_id),
                        owner=_name(task.get("owner")),
                        team=_name(task.get("team")),
                    )
                )
        return found

    async def owner_emails(self, task: StartedTask) -> tuple[str, ...]:
        """Where the request goes: the owner's email (``GET /api/v1/users/{username}``), or,
        for a task assigned to a team only, the emails of the team's user members
        (``GET /api/v1/releases/{id}/teams``). Users without an email are left out."""
        if task.owner:
            names: list[str] = [task.owner]
        elif task.team:
            names = await self._team_members(task.release_id, task.team)
        else:
            names = []
        emails: dict[str, None] = {}
        for name in names:
            email = await self.user_email(name)
            if email:
                emails.setdefault(email)
        return tuple(emails)

    async def user_email(self, username: str) -> str | None:
        if "@" in username:
            return username.strip().lower()
        if not _plausible_id(username) or "/" in username:
            return None
        path = f"/api/v1/users/{username}"
        answer = await self._get_with_retries(path)
        self._raise_for_auth(answer, f"GET {path}")
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise BackendUnavailable(f"Release answered {answer.status} to GET {path}")
        email = str(answer.json().get("email") or "").strip().lower()
        return email if "@" in email and not any(c.isspace() or ord(c) < 32 for c in email) else None

    async def add_comment(self, task_id: str, text: str) -> None:
        """``POST /api/v1/tasks/{id}/comment``: tell the people in Release something, once.

        The task is read before every POST, the first one too, and a comment with exactly this
        text already there counts as said: an earlier attempt whose answer was lost may have
        added it, and that attempt may be this process's last round, another instance's, or
        one that died before it could record anything, so this call cannot know whether its
        POST is the first; only the task can. Notices are rare (one per request that expired
        or whose mail was never delivered), so a GET before each costs nothing worth saving.
        A POST that surely did not reach Release is tried again here (``_post_unrepeated``);
        one whose answer was lost, or a 504, is not: it may still be being applied, so the
        caller's next round reads and decides."""
        path = f"/api/v1/tasks/{task_id}/comment"

        async def said(task: dict[str, Any]) -> bool:
            return _said(task, text)

        answer = await self._post_unrepeated(task_id, path, {"comment": text}, said)
        if answer is None or answer.status < 300:
            return
        self._raise_for_auth(answer, f"POST {path}")
        if answer.status == 404:
            raise TaskNotFound(task_id)
        raise BackendUnavailable(f"Release answered {answer.status} to POST {path}")

    async def _releases_in_progress(self) -> list[dict[str, Any]]:
        releases: list[dict[str, Any]] = []
        for page in range(_MAX_PAGES):
            path = f"/api/v1/releases/search?page={page}&resultsPerPage={_PAGE_SIZE}"
            try:
                answer = await self._call("POST", path, {"inProgress": True})
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise BackendUnavailable(f"Release did not answer POST {path}: {_describe(exc)}") from None
            batch = self._listed(answer, f"POST {path}")
            releases.extend(batch)
            if len(batch) < _PAGE_SIZE:
                break
        return releases

    async def _team_members(self, release_id: str, team: str) -> list[str]:
        for found in await self._read_list(f"/api/v1/releases/{release_id}/teams"):
            if found.get("teamName") == team and isinstance(found.get("members"), list):
                return [
                    str(m["name"])
                    for m in found["members"]
                    if isinstance(m, dict) and m.get("type", "PRINCIPAL") == "PRINCIPAL" and m.get("name")
                ]
        return []

    async def _read_list(self, path: str) -> list[dict[str, Any]]:
        return self._listed(await self._get_with_retries(path), f"GET {path}")

    def _listed(self, answer: _Answer, what: str) -> list[dict[str, Any]]:
        self._raise_for_auth(answer, what)
        if answer.status != 200:
            raise BackendUnavailable(f"Release answered {answer.status} to {what}")
        try:
            value = json.loads(answer.text)
        except ValueError:
            value = None
        if not isinstance(value, list):
            raise BackendUnavailable(f"Release answered {what} with something other than a list")
        return [item for item in value if isinstance(item, dict)]

    # Acting -------------------------------------------------------------------------------

    async def _act(
        self,
        task_id: str,
        action: str,
        comment: str,
        actor: str,
        deadline: float | None = None,
        owner: str | None = None,
    ) -> None:
        # At its longest: a read; each POST but the last, a back-off and a read; the last POST
        # and the read that tells a 400/409 apart (``_refused``). Every read, and the POSTs
        # together, up to retries + 1 tries with back-offs between. ReleaseConfig.worst_case
        # counts just these, for the config's check against the action deadline: change both.
        # (In watch mode a user lookup may come with a read, ``_still_with``: the action's
        # cut below ends it, nothing sent, should Release be that slow.)
        emails: dict[tuple[str | None, str | None], tuple[str, ...]] = {}

        async def still_in_progress(found: dict[str, Any]) -> bool:
            task = _task_info(task_id, found)
            if task.status != "in_progress":
                raise TaskNotInProgress(task)
            await self._still_with(task_id, found, owner, emails)
            log.info("release: %s task %s (owner %s) for %s", action, task_id, task.owner or "-", actor)
            return False

        path = f"/api/v1/tasks/{task_id}/{action}"
        body = {"comment": attributed(comment, actor)}
        # By the deadline (loop time) the action has ended, and said whether anything was
        # sent: a POST starts only with time to end on its own timeout before it, and the
        # reads and back-offs around POSTs that never reached Release, or after one Release
        # refused, are cut just short of it (BackendUnavailable: the sender tries again), so
        # the pipeline's own cut at the deadline, which must call the outcome unknown, never
        # falls here.
        stop = None if deadline is None else deadline - _DEADLINE_SLACK_SECONDS
        cut = asyncio.timeout_at(stop)
        try:
            async with cut:
                answer = await self._post_unrepeated(task_id, path, body, still_in_progress, stop)
                if answer is not None and answer.status >= 300:
                    await self._refused(task_id, path, answer)
        except TimeoutError:
            if not cut.expired():
                raise
            raise BackendUnavailable(
                f"Release: POST {path} did not end before the action deadline; nothing was sent, or Release refused it"
            ) from None

    async def _still_with(
        self,
        task_id: str,
        found: Mapping[str, Any],
        owner: str | None,
        emails: dict[tuple[str | None, str | None], tuple[str, ...]],
    ) -> None:
        """Watch mode: a watched task's request belongs to whom Release gives the task now
        (``owner_emails``, as the watch reads it). One that left the request's ``owner`` while
        the answer was on its way (reassigned in the UI between the answer's reads and its
        POST, before the watch's next round withdraws the request) is not acted on: the answer
        gets what a withdrawn request gets (``RequestRevoked``), saying who has the task now.
        ``emails`` keeps the lookups of this one action, so its retries read no user twice."""
        if owner is None or not self._config.watch or not _tagged(found, self._config.watch_tag):
            return
        started = StartedTask(
            id=task_id,
            title=task_id,
            release_id=_release_of(task_id),
            release_title="",
            owner=_name(found.get("owner")),
            team=_name(found.get("team")),
        )
        key = (started.owner, started.team)
        if key not in emails:
            emails[key] = await self.owner_emails(started)
        now_with = emails[key]
        if owner.strip().lower() in now_with:
            return
        log.warning(
            "release: task %s is no longer with %s (now with %s): their answer was not acted on",
            task_id,
            owner,
            ", ".join(now_with) or "no one with an email",
        )
        raise RequestRevoked(f"task {task_id} left {owner} in Release", ", ".join(now_with) or None)

    async def _post_unrepeated(
        self,
        task_id: str,
        path: str,
        body: Mapping[str, Any],
        done: Callable[[dict[str, Any]], Awaitable[bool]],
        stop: float | None = None,
    ) -> _Answer | None:
        """POST ``body`` to ``path`` unless ``done`` (which may raise instead) finds in the task,
        read before each try, that it needs no POST (None then). Tried again, after back-off,
        only when it surely did not reach Release: no connection (``http_timeout``), or a
        proxy's 502/503. Once sent, a lost answer is ``BackendOutcomeUnknown``: only a read
        some time later can tell what became of it. Else Release's answer, whatever it is.
        No POST is started that could not end on its own timeout by ``stop`` (loop time)."""
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            if await done(await self._read_task(task_id)):
                return None
            if stop is not None and stop - loop.time() < self._config.timeout + _DEADLINE_SLACK_SECONDS:
                raise BackendUnavailable(
                    f"too little of the action deadline is left for POST {path} within Release's timeout"
                    f" ({self._config.timeout:g}s); nothing was sent"
                )
            last = attempt == self._config.retries
            try:
                answer = await self._call("POST", path, body)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Never connected, so the request was not sent: safe to try again.
                if last:
                    raise BackendUnavailable(f"cannot reach Release at {self._base}: {_describe(exc)}") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Sent, perhaps applied (perhaps still being applied): only a later read can tell.
                raise BackendOutcomeUnknown(f"Release did not answer POST {path}: {_describe(exc)}") from None
            else:
                if answer.status not in _RETRYABLE_POST_STATUS or last:
                    return answer
            await asyncio.sleep(self._config.backoff(attempt))
            attempt += 1

    async def _refused(self, task_id: str, path: str, answer: _Answer) -> NoReturn:
        """Turn a POST's error answer into the exception the pipeline maps to a reply."""
        self._raise_for_auth(answer, f"POST {path}")
        if answer.status == 404:
            raise TaskNotFound(task_id)
        if answer.status in (400, 409):
            # Usually "not in progress" (someone acted in between): the task says which.
            task = _task_info(task_id, await self._read_task(task_id))
            if task.status != "in_progress":
                raise TaskNotInProgress(task)
            reason = one_line(str(answer.json().get("message") or answer.text), 200) or f"HTTP {answer.status}"
            raise BackendRefused(reason)
        raise BackendUnavailable(f"Release answered {answer.status} to POST {path}")

    # Reading ------------------------------------------------------------------------------

    async def _read_task(self, task_id: str) -> dict[str, Any]:
        if not _plausible_id(task_id):
            raise TaskNotFound(task_id)
        path = f"/api/v1/tasks/{task_id}"
        answer = await self._get_with_retries(path)
        self._raise_for_auth(answer, f"GET {path}")
        if answer.status == 404:
            raise TaskNotFound(task_id)
        if answer.status != 200:
            raise BackendUnavailable(f"Release answered {answer.status} to GET {path}")
        task = answer.json()
        if not task:
            raise BackendUnavailable(f"Release answered GET {path} with something other than a task")
        return task

    async def _get_with_retries(self, path: str) -> _Answer:
        """A GET changes nothing, so connection errors, timeouts and 5xx are retried."""
        problem = ""
        for attempt in range(self._config.retries + 1):
            if attempt:
                await asyncio.sleep(self._config.backoff(attempt - 1))
            try:
                answer = await self._call("GET", path)
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = _describe(exc)
                continue
            if answer.status < 500:
                return answer
            problem = f"HTTP {answer.status}"
        raise BackendUnavailable(f"Release at {self._base} did not answer GET {path}: {problem}")

    # HTTP ---------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> _Answer:
        session = self._client()
        timeout = http_timeout(self._config.timeout)
        async with session.request(method, self._base + path, json=body, timeout=timeout) as response:
            limit = LARGE_BODY if response.status < 300 else SMALL_BODY
            return _Answer(response.status, await read_text(response, limit))

    def _client(self) -> aiohttp.ClientSession:
        """One session per event loop, made on first use (the CLI runs its own short loops)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            headers = {"Accept": "application/json"}
            token = self._config.token.get_secret_value()
            if token:
                headers["x-release-personal-token"] = token
            elif self._config.username:
                pair = f"{self._config.username}:{self._config.password.get_secret_value()}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
            self._session = aiohttp.ClientSession(headers=headers)
            self._session_loop = loop
        return self._session

    def _raise_for_auth(self, answer: _Answer, what: str) -> None:
        if answer.status in (401, 403):
            how = "token" if self._config.token.get_secret_value() else f"user {self._config.username or '(none)'}"
            log.error(
                "Release at %s refused our credentials (%s, HTTP %d on %s): fix [tasks.release] username/password "
                "or token, or the account's permissions",
                self._base,
                how,
                answer.status,
                what,
            )
            raise BackendAuthFailed(f"Release refused our credentials (HTTP {answer.status})")


def _plausible_id(task_id: str) -> bool:
    """A task id is a path of plain segments; anything else must not reach the URL."""
    segments = task_id.split("/")
    return all(s and s not in (".", "..") for s in segments) and not any(c in task_id for c in "?#%\\\r\n\t ")


def _task_info(task_id: str, task: Mapping[str, Any]) -> TaskInfo:
    status = str(task.get("status") or "unknown")
    acted_by: str | None = None
    if status != IN_PROGRESS:
        acted_by = _our_actor(task.get("comments"))
    return TaskInfo(
        id=str(task.get("id") or task_id),
        title=str(task.get("title") or task_id),
        owner=str(task.get("owner") or ""),
        status=status.lower(),
        acted_by=acted_by,
        acted_at=_epoch(task.get("endDate")),
    )


def _our_actor(comments: Any) -> str | None:
    """Who answered by email, from the attribution line of the latest comment we wrote."""
    if not isinstance(comments, list):
        return None
    for comment in reversed(comments):
        text = comment.get("text") if isinstance(comment, dict) else None
        if isinstance(text, str):
            match = _ATTRIBUTED.search(text)
            if match:
                return match.group(1)
    return None


def _tagged(task: Mapping[str, Any], tag: str) -> bool:
    """Whether the task carries ``tag`` (case-insensitively): the watch's mark."""
    tags, wanted = task.get("tags"), tag.strip().lower()
    return isinstance(tags, list) and any(isinstance(t, str) and t.strip().lower() == wanted for t in tags)


def _release_of(task_id: str) -> str:
    """The release a task lives in: its id up to its ``Release…`` segment (ids are paths:
    ``Applications/Folder1/Release1/Phase1/Task1``), else all but its phase and task."""
    segments = task_id.split("/")
    for i, segment in enumerate(segments):
        if segment.startswith("Release"):
            return "/".join(segments[: i + 1])
    return "/".join(segments[:-2])


def _said(task: Mapping[str, Any], text: str) -> bool:
    """Whether the task's comments hold one with exactly ``text`` (an earlier attempt's)."""
    comments = task.get("comments")
    return isinstance(comments, list) and any(isinstance(c, dict) and c.get("text") == text for c in comments)


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connecting timed out"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


@TASK_BACKENDS.register("release", ReleaseConfig)
def create(config: ReleaseConfig, store: Store) -> ReleaseBackend:
    if not config.url:
        raise ConfigError("config key tasks.release.url: backend 'release' needs the URL of Release")
    return ReleaseBackend(config)
