"""The interface every task backend implements (embedded store, Release, webhook).

A backend raises ``TaskNotFound`` / ``TaskNotInProgress`` for refusals a person can
understand, ``BackendRefused`` when the workflow system says no for its own reason, and
``BackendUnavailable`` (``BackendAuthFailed``) when it cannot be reached (the sender
retries). All of them live in ``rc_mta.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import TaskNotFound, TaskNotInProgress
from ..safetext import excerpt, one_line

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ActionContext",
    "RequestFailureListener",
    "TaskBackend",
    "TaskInfo",
    "TaskNotFound",
    "TaskNotInProgress",
    "expiry_note",
    "http_timeout",
    "reads_tasks",
    "undelivered_note",
]

CONNECT_SECONDS = 10.0  # connecting's own deadline: at most this, and half the call's timeout
# How much of a relay's answer a task's comment quotes (the relay's text is untrusted).
ANSWER_CHARS = 300


def http_timeout(total: float) -> aiohttp.ClientTimeout:
    """A backend call's timeout, with half of it (at most ``CONNECT_SECONDS``) for connecting:
    a connect that never finished sent nothing, so it must be told apart from a lost answer
    (aiohttp raises ``ConnectionTimeoutError`` for it, a plain ``TimeoutError`` for the rest).
    Connecting is all of it: resolving the host's name (``connect``: a DNS server that never
    answers must not pass for a receiver that took the request and never answered), the TCP
    connect and the TLS handshake (``sock_connect`` for each of these two as well)."""
    import aiohttp  # here, so the embedded backend and the CLI never load it (0.14 s)

    connecting = min(CONNECT_SECONDS, total / 2)
    # ceil_threshold: aiohttp would round a timeout of 5 s or more up to the next whole
    # second; the config's worst case and the action deadline count the timeout as given.
    return aiohttp.ClientTimeout(total=total, connect=connecting, sock_connect=connecting, ceil_threshold=float("inf"))


def expiry_note(owner: str, request_id: str, expired_at: float) -> str:
    """What the task's comments say when a request expired unanswered. The request's id
    tells it from the task's other requests to the same owner (``rc-mta revoke``, the logs)."""
    when = datetime.fromtimestamp(expired_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"The email request to {owner} expired unanswered at {when}; rc-mta sends no more reminders"
        f" (request {request_id})."
    )


def undelivered_note(owner: str, request_id: str, answer: str) -> str:
    """What the task's comments say when a request mail failed for good: ``answer`` is the
    relay's (or "not delivered within …" when the queue gave up), so it is made one line, its
    control characters escaped, and cut short. The same notice gives the same text, so a
    retry can find it already said; the request's id keeps another request's notice, the
    same owner refused in the same words, from passing for said."""
    why = excerpt(one_line(answer), ANSWER_CHARS) or "no reason given"
    return (
        f"The email request to {owner} could not be delivered ({why}), so its owner was not asked by email."
        f" Check the address, then send the request again with `rc-mta request` or POST /v1/requests"
        f" (request {request_id})."
    )


@dataclass(frozen=True)
class TaskInfo:
    id: str
    title: str
    owner: str
    status: str  # in_progress | completed | failed | other backend-specific states
    acted_by: str | None = None
    acted_at: float | None = None
    # False when the backend has no way to read a task (the webhook) and ``status`` is only
    # assumed: callers that must not act on a closed task look for other evidence then.
    known: bool = True


def reads_tasks(backend: object) -> bool:
    """Whether ``backend.get`` reads a task (``TaskInfo.known``). One that cannot, only
    assumes it in progress (the webhook), says so with ``reads_tasks = False``; then before
    acting, rc-mta's own record of the task's other requests stands in for it
    (``Store.decided_by_sibling``)."""
    return getattr(backend, "reads_tasks", True) is not False


@dataclass(frozen=True)
class ActionContext:
    """Facts about the reply that acted, for backends that pass them on (the webhook)."""

    request_id: str
    message_id: str
    source: str  # smtp | lmtp | imap | graph
    verdicts: dict[str, str] = field(default_factory=dict)  # check name -> result
    # When the action must have ended (the event loop's clock; ``[tasks] action_deadline``
    # from the claim), None for none. Past it the pipeline takes the outcome for unknown, so
    # a backend that retries starts no call it could not finish by then.
    deadline: float | None = None
    # The email of the request's owner, that the answer came from: a backend that tells who
    # has the task now (Release in watch mode) acts only while the task is still theirs.
    owner: str | None = None


class TaskBackend(Protocol):
    name: str

    async def get(self, task_id: str) -> TaskInfo:
        """The task's status and owner; raises TaskNotFound."""
        ...

    async def complete(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        """Complete an in-progress task; raises TaskNotFound or TaskNotInProgress."""
        ...

    async def fail(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        """Fail an in-progress task; raises TaskNotFound or TaskNotInProgress."""
        ...

    async def expired(self, task_id: str, owner: str, request_id: str, expired_at: float) -> None:
        """Tell the workflow that the request to ``owner`` expired unanswered."""
        ...

    async def check(self) -> str:
        """Raise if the backend cannot be reached now; else say what was proven (check-config)."""
        ...

    async def close(self) -> None:
        """Release connections at shutdown."""
        ...


@runtime_checkable
class RequestFailureListener(Protocol):
    """A backend that can be told a request mail will never arrive (the relay refused it),
    so the workflow can reach its owner another way. Backends without a channel for it
    (the embedded store: the request API shows it) leave it out."""

    async def request_failed(self, task_id: str, request_id: str, owner: str, answer: str) -> None: ...
