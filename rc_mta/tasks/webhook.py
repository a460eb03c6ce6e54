"""A signed JSON POST of each action to a URL of the user's choice.

For workflow systems rc-mta has no client for: the user's receiver acts on the task. Each
action is one ``POST`` of a JSON object::

    {"task_id", "action": "complete" | "fail", "comment", "actor", "request_id",
     "message_id", "source", "verdicts": {check: result}, "sent_at": unix seconds}

signed the way GitHub and Stripe sign theirs, so the receiver knows it comes from us and is
fresh::

    X-RC-MTA-Timestamp: <unix seconds>
    X-RC-MTA-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.".encode() + body)>

The receiver recomputes the HMAC over the raw body it received, compares in constant time,
and rejects timestamps older than a few minutes (replays). Its answer decides ours:

* 2xx: done (``250``), as soon as its status arrives: its body is not read.
* 409: the task is no longer in progress; ``{"status": "completed", "acted_by": ...}``
  (or ``"detail"``) says how (``550``).
* 401: it did not accept our signature: an operator must fix the secret (``451``, retried).
* other 4xx: it refuses, ``{"detail": "why"}`` (or ``"error"``, or the text body) is
  quoted to the person in the ``550 5.7.1`` (in a ``451 4.3.0`` when an earlier try of
  the same answer may have acted: below).
* 5xx, timeout, no connection: ``451``; the sender's server retries.

When a request mail cannot be delivered (the relay answered 5xx, or it waited longer than
``[outbound] queue_lifetime``), the receiver is told with one POST of the same signing::

    {"event": "request_failed", "task_id", "request_id", "owner", "answer", "sent_at"}

It has no ``action``: a receiver that does not know the event answers 4xx and nothing acts.
When a request expires unanswered it is told the same way, with ``"event": "expired"``.
Both events are answered by one rule (``_noticed``): 2xx is taken; while the receiver
cannot take it (down, timeout, 5xx, 408/425/429, 401: our secret), it is kept in the store
and POSTed again each follow-up round with the outbound queue's back-off, until
``queue_lifetime`` (``followups.Notices``); any other 4xx is the receiver's final answer,
logged once and never POSTed again. A POST that timed out may have arrived, so a receiver
may see it more than once, with the same ``request_id``.

A POST that timed out may have acted: the retry carries the same ``request_id``, so a
receiver answers a repeat of an action it already took with 2xx (or 409 naming the same
status and ``acted_by``), and nothing is done twice. In an N-of-M group such a POST keeps
its decision (``BackendOutcomeUnknown``): until its claim is taken for dead, the group's
other members get ``451``, so the receiver is never told the other way beside it. So do
answers to the task's other requests outside a group (``reads_tasks`` is False: rc-mta's
own record stands in, ``Store.decided_by_sibling``): a lone answer's claim stands too.
Once that claim is taken for dead, whether it acted is unknown until its sender tries
again, and they wait (451) rather than being POSTed on a guess: a group's decision is not
taken back then either (``Store.count_approval``'s ``take_back_stale``), as it is for a
backend that can be read and shows it did not act. Nor does the retry's own failure end the
doubt: answered 503, not reached, or refused, it says nothing of the first POST, so the
claim and the decision stand as before (``Pipeline._keeps_doubt``), and a refusal is told as
a 451, so that the sender tries again; only a 409 (the task is closed) gives them back.
Meanwhile another answer to the same request (the other action) is not POSTed under its
request id, which the receiver would take for a repeat: it gets ``451 4.3.0`` too, saying
the earlier answer may have acted (``ClaimOutcome.IN_DOUBT``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..config import WebhookConfig
from ..errors import BackendAuthFailed, BackendOutcomeUnknown, BackendRefused, BackendUnavailable, ConfigError
from ..http_client import SMALL_BODY, read_text
from ..registry import TASK_BACKENDS
from ..safetext import one_line
from ..store import Store
from ._base import ActionContext, TaskInfo, TaskNotInProgress, http_timeout

log = logging.getLogger("rc_mta.tasks.webhook")

TIMESTAMP_HEADER = "X-RC-MTA-Timestamp"
SIGNATURE_HEADER = "X-RC-MTA-Signature"
# 4xx that mean "try again later", in the receiver's words: not its answer to what we sent.
_TRY_LATER = frozenset({408, 425, 429})


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-RC-MTA-Signature`` value for one body sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookBackend:
    name = "webhook"
    reads_tasks = False  # ``get`` only assumes a task in progress: rc-mta's own record stands in

    def __init__(self, config: WebhookConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    async def get(self, task_id: str) -> TaskInfo:
        """A webhook only speaks when we act, so there is no one to ask: the task is taken
        as in progress (``known=False``: assumed, not read), titled by its id, with no owner
        (requests name the owner)."""
        return TaskInfo(task_id, title=task_id, owner="", status="in_progress", known=False)

    async def complete(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        await self._post(task_id, "complete", comment, actor, context)

    async def fail(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        await self._post(task_id, "fail", comment, actor, context)

    async def check(self) -> str:
        """A receiver has no agreed read-only call, and POSTing a probe could be taken for an
        action: prove only that its host accepts a connection (and a TLS handshake for https)."""
        parts = urlsplit(self._config.url)
        secure = parts.scheme == "https"
        host, port = parts.hostname or "", parts.port or (443 if secure else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=secure or None), 10)
        except (OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"cannot reach webhook {parts.scheme}://{host}:{port}: {exc}") from None
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return f"{parts.scheme}://{host}:{port} accepts connections{' over TLS' if secure else ''} (nothing POSTed)"

    async def close(self) -> None:
        # A session made on a loop that has ended cannot be closed from this one.
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None
        self._session_loop = None

    async def request_failed(self, task_id: str, request_id: str, owner: str, answer: str) -> None:
        """Tell the receiver a request mail will never arrive; its answer means what
        ``_noticed`` says."""
        payload = {
            "event": "request_failed",
            "task_id": task_id,
            "request_id": request_id,
            "owner": owner,
            "answer": answer,
            "sent_at": int(time.time()),
        }
        self._noticed("request_failed", request_id, *await self._send(payload))

    def _noticed(self, event: str, request_id: str, status: int, text: str) -> None:
        """What the receiver's answer to a notice (an event that acts on nothing) means, the
        same for every event. 2xx: taken. It cannot take it now (5xx, 408/425/429, 401: our
        signature, or no answer of its own: a redirect, which is not followed): raises
        BackendUnavailable, and the caller POSTs it again later. Any other 4xx is its final
        answer: it does not want the event (409: the task is closed anyway), logged once,
        here, and taken; POSTing it again would get the same answer until ``queue_lifetime``."""
        if 200 <= status < 300:
            return
        if status == 401:
            raise BackendAuthFailed("webhook refused our signature (HTTP 401)")
        if not 400 <= status < 500 or status in _TRY_LATER:
            raise BackendUnavailable(f"webhook {self._config.url} answered HTTP {status} to the {event} event")
        level = logging.INFO if status == 409 else logging.WARNING
        why = _why(_json(text), text, status)
        message = "webhook answered HTTP %d to the %s event of request %s, for good: %s"
        log.log(level, message, status, event, request_id, why)

    async def _send(self, payload: dict[str, Any]) -> tuple[int, str]:
        """POST one signed JSON body; its status and text (none for a 2xx: its status says
        all, and its body is not waited for). BackendUnavailable when unreachable."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        timestamp = str(payload["sent_at"])
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self._config.secret.get_secret_value().encode(), timestamp, body),
        }
        timeout = http_timeout(self._config.timeout)
        try:
            async with self._client().post(
                self._config.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return response.status, ""  # taken: that is the answer, however slow its body
                return response.status, await read_text(response, SMALL_BODY)
        except aiohttp.ConnectionTimeoutError:  # never connected: nothing was sent
            raise BackendUnavailable(
                f"cannot reach webhook {self._config.url}: no connection within {timeout.sock_connect:g}s"
            ) from None
        except TimeoutError:
            raise BackendOutcomeUnknown(
                f"webhook {self._config.url} did not answer within {self._config.timeout}s"
            ) from None
        except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
            raise BackendUnavailable(f"cannot reach webhook {self._config.url}: {exc}") from None
        except aiohttp.ClientError as exc:  # sent, perhaps received: no answer to tell
            raise BackendOutcomeUnknown(f"webhook {self._config.url} gave no answer: {exc}") from None

    async def _post(self, task_id: str, action: str, comment: str, actor: str, context: ActionContext) -> None:
        now = int(time.time())
        payload: dict[str, Any] = {
            "task_id": task_id,
            "action": action,
            "comment": comment,
            "actor": actor,
            "request_id": context.request_id,
            "message_id": context.message_id,
            "source": context.source,
            "verdicts": dict(context.verdicts),
            "sent_at": now,
        }
        status, text = await self._send(payload)
        if 200 <= status < 300:
            return
        answer = _json(text)
        if status == 409:
            raise TaskNotInProgress(_closed_task(task_id, answer))
        if status == 401:
            log.error(
                "webhook %s refused our signature (HTTP 401): check [tasks.webhook] secret against the receiver's",
                self._config.url,
            )
            raise BackendAuthFailed("webhook refused our signature (HTTP 401)")
        if status in _TRY_LATER:
            raise BackendUnavailable(f"webhook {self._config.url} answered HTTP {status}")
        if 400 <= status < 500:
            why = _why(answer, text, status)
            log.info("webhook refused %s of task %s: HTTP %d %s", action, task_id, status, why)
            raise BackendRefused(why)
        if status == 503:  # not taking requests now: nothing was done
            raise BackendUnavailable(f"webhook {self._config.url} answered HTTP {status}")
        # A 500 may come after the receiver acted, a 502 or 504 from a proxy that lost its answer.
        raise BackendOutcomeUnknown(f"webhook {self._config.url} answered HTTP {status}: it may have acted")

    async def expired(self, task_id: str, owner: str, request_id: str, expired_at: float) -> None:
        """``{"event": "expired", "task_id", "owner", "request_id", "expired_at", "sent_at"}``,
        signed like an action; its answer means what ``_noticed`` says, as for ``request_failed``."""
        payload: dict[str, Any] = {
            "event": "expired",
            "task_id": task_id,
            "owner": owner,
            "request_id": request_id,
            "expired_at": int(expired_at),
            "sent_at": int(time.time()),
        }
        self._noticed("expired", request_id, *await self._send(payload))

    def _client(self) -> aiohttp.ClientSession:
        """One session per event loop, made on first use."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession()
            self._session_loop = loop
        return self._session


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _why(answer: dict[str, Any], text: str, status: int) -> str:
    """The receiver's reason for a 4xx, on one short line: its ``detail`` (or ``error``, or text)."""
    return one_line(str(answer.get("detail") or answer.get("error") or text), 200) or f"HTTP {status}"


def _closed_task(task_id: str, answer: dict[str, Any]) -> TaskInfo:
    """What a 409 tells us: its status (else its detail, else just "closed") and who acted."""
    status = one_line(str(answer.get("status") or ""), 40).lower()
    detail = one_line(str(answer.get("detail") or ""), 200)
    if not status:
        status = f"closed ({detail})" if detail else "closed"
    acted_by = answer.get("acted_by")
    return TaskInfo(
        task_id,
        title=task_id,
        owner="",
        status=status,
        acted_by=str(acted_by) if acted_by else None,
    )


@TASK_BACKENDS.register("webhook", WebhookConfig)
def create(config: WebhookConfig, store: Store) -> WebhookBackend:
    for key, value in (("url", config.url), ("secret", config.secret.get_secret_value())):
        if not value:
            raise ConfigError(f"config key tasks.webhook.{key}: backend 'webhook' needs it")
    return WebhookBackend(config)
