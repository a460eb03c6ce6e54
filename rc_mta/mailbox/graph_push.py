"""Graph change notifications: wake the delta poll as soon as mail arrives.

A subscription on the mailbox folder's messages makes Graph POST to our HTTP listener (which
the operator fronts with HTTPS) when a message is created. A notification carries no message
to act on: it only ends the poller's wait early, and the delta query stays the one source of
truth. So a lost, forged or late notification costs nothing: the poll still runs every
``sync_interval``. The subscription is renewed well before it expires, renewed when Graph
asks for reauthorization, created afresh when renewal fails or Graph removes it, and deleted
on a clean shutdown.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from .. import metrics
from ..config import GraphPushConfig
from ..errors import TemporaryFailure

log = logging.getLogger("rc_mta.mailbox.graph")

MAX_VALIDATION_TOKEN = 4096  # Graph's tokens are far shorter; anything longer is not Graph
MAX_RETRY = 900.0  # a failing subscription call is retried at most this far apart
FIRST_RETRY = 5.0
RENEWAL_REFUSED = {400, 403, 404, 410}  # a renewal answered so is not worth repeating
MIN_RENEWAL_GAP = 1.0  # seconds between two renewals, whatever Graph grants

# One Graph call: (method, url, JSON body) -> the answer's body; raises TemporaryFailure.
GraphCall = Callable[[str, str, dict[str, Any] | None], Awaitable[bytes]]


class SubscriptionState(enum.Enum):
    NONE = "none"  # not created yet, or deleted at shutdown
    ACTIVE = "active"
    FAILED = "failed"  # the last create/renew failed: polling only until a retry works


class _Notification(BaseModel):
    """The parts of a changeNotification (or lifecycle notification) we read."""

    model_config = ConfigDict(extra="ignore")
    subscriptionId: str = ""  # Graph's camelCase names
    clientState: str | None = None
    lifecycleEvent: str | None = None


class _Collection(BaseModel):
    model_config = ConfigDict(extra="ignore")
    value: list[Any]


class GraphPush:
    """The subscription and the endpoint its notifications reach; the poller's connection
    waits on it instead of sleeping."""

    def __init__(self, config: GraphPushConfig, base_url: str, body_timeout: float = 10.0) -> None:
        self.config = config
        self.subscriptions_url = base_url.rstrip("/") + "/subscriptions"
        self.body_timeout = body_timeout
        self._secret = config.client_state.get_secret_value().encode("utf-8")
        self.subscription_id: str | None = None
        self.expires_at = 0.0  # wall-clock expiry Graph confirmed
        self._confirmed_at = 0.0  # when it did
        self.state = SubscriptionState.NONE
        self._changed = False  # a notification says mail arrived: sync now
        self._renew = False  # Graph asked for reauthorization
        self._recreate = False  # Graph removed the subscription
        self._wake = asyncio.Event()
        self._retry_at = 0.0
        self._failures = 0
        self._set_state(SubscriptionState.NONE)

    # -- the endpoint -----------------------------------------------------------------------

    def add_route(self, app: web.Application) -> None:
        app.router.add_post(self.config.path, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """Answer the validation handshake, or take a batch of notifications: 202 at once."""
        token = request.query.get("validationToken")
        if token is not None:
            if not token or len(token) > MAX_VALIDATION_TOKEN:
                return web.Response(status=400, text="bad validationToken\n")
            metrics.GRAPH_NOTIFICATIONS.labels("validation", "accepted").inc()
            # Plain text, never sniffed as HTML: the echo is someone else's string.
            return web.Response(text=token, content_type="text/plain", headers={"X-Content-Type-Options": "nosniff"})
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            items = _Collection.model_validate_json(body).value
        except ValidationError:
            metrics.GRAPH_NOTIFICATIONS.labels("change", "rejected").inc()
            return web.Response(status=400, text="expected a changeNotificationCollection\n")
        for item in items[: self.config.max_notifications]:
            self._take(item)
        return web.Response(status=202)

    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        """The body, at most ``max_body`` bytes and within ``body_timeout`` seconds."""
        limit = self.config.max_body
        if request.content_length is not None and request.content_length > limit:
            metrics.GRAPH_NOTIFICATIONS.labels("change", "rejected").inc()
            return web.Response(status=413, text="body too large\n")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while chunk := await request.content.read(65536):
                    size += len(chunk)
                    if size > limit:
                        metrics.GRAPH_NOTIFICATIONS.labels("change", "rejected").inc()
                        return web.Response(status=413, text="body too large\n", headers={"Connection": "close"})
                    chunks.append(chunk)
        except TimeoutError:
            return web.Response(status=408, text="body too slow\n", headers={"Connection": "close"})
        return b"".join(chunks)

    def _take(self, item: Any) -> None:
        """One notification: believed only with our clientState, and then only as a nudge."""
        try:
            notification = _Notification.model_validate(item)
        except ValidationError:
            metrics.GRAPH_NOTIFICATIONS.labels("change", "rejected").inc()
            return
        kind = "lifecycle" if notification.lifecycleEvent else "change"
        presented = (notification.clientState or "").encode("utf-8")
        if not hmac.compare_digest(presented, self._secret):
            metrics.GRAPH_NOTIFICATIONS.labels(kind, "rejected").inc()
            log.warning("graph push: %s notification with a wrong clientState ignored", kind)
            return
        metrics.GRAPH_NOTIFICATIONS.labels(kind, "accepted").inc()
        event = notification.lifecycleEvent
        ours = notification.subscriptionId == self.subscription_id
        if event is None or event == "missed":
            self._changed = True  # missed: changes went unannounced; the delta finds them
        elif event == "reauthorizationRequired" and ours:
            self._renew = True
        elif event == "subscriptionRemoved" and ours:
            self._recreate = self._changed = True
        if event:
            log.info("graph push: lifecycle %s for subscription %s", event, notification.subscriptionId)
        self._wake.set()

    # -- the poller's side ------------------------------------------------------------------

    async def wait(self, timeout: float, call: GraphCall, resource: str) -> None:
        """Return after ``timeout`` seconds, or as soon as a notification says mail arrived;
        keep the subscription alive meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self.maintain(call, resource)
            if self._changed:
                self._changed = False
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(remaining, self._until_due()))
            except TimeoutError:
                pass

    def _until_due(self) -> float:
        """Seconds until the subscription next needs a call."""
        now = time.time()
        if self._renew or self._recreate or self.subscription_id is None:
            return max(0.0, self._retry_at - now)
        return max(0.0, self._renew_at() - now, self._retry_at - now)

    def _renew_at(self) -> float:
        """When ``renew_before`` is left, but never before half of what Graph granted has
        passed: a short grant must not turn into a stream of renewals."""
        granted = self.expires_at - self._confirmed_at
        return max(self.expires_at - min(self.config.renew_before, granted / 2), self._confirmed_at + MIN_RENEWAL_GAP)

    async def maintain(self, call: GraphCall, resource: str) -> None:
        """Create, renew or re-create the subscription when due; a failure leaves polling
        as it was and is retried with backoff."""
        now = time.time()
        due = self._renew or self._recreate or self.subscription_id is None or now >= self._renew_at()
        if not due or now < self._retry_at:
            return
        from .graph import GraphError  # here: graph.py imports this module

        if self.subscription_id is not None and now >= self.expires_at:
            self._recreate = True  # lapsed while renewals failed: Graph has dropped it
        try:
            if self.subscription_id is None or self._recreate:
                await self._create(call, resource)
            else:
                try:
                    await self._patch(call)
                except GraphError as exc:
                    # Graph refused this renewal (gone, or no longer allowed): a new one. A
                    # transient failure (network, 5xx) is retried on the same subscription.
                    if exc.status not in RENEWAL_REFUSED:
                        raise
                    log.warning(
                        "graph push: renewing subscription %s failed (%s); creating a new one",
                        self.subscription_id,
                        exc,
                    )
                    self.subscription_id = None
                    await self._create(call, resource)
        except TemporaryFailure as exc:
            self._failures += 1
            delay = min(MAX_RETRY, FIRST_RETRY * 2.0 ** min(self._failures - 1, 10))
            self._retry_at = now + delay
            self._set_state(SubscriptionState.FAILED)
            log.warning("graph push: no subscription (%s); polling every sync_interval, retrying in %.0fs", exc, delay)
            return
        self._renew = self._recreate = False
        self._failures = 0
        self._retry_at = 0.0
        self._set_state(SubscriptionState.ACTIVE)

    async def _create(self, call: GraphCall, resource: str) -> None:
        """POST /subscriptions: Graph validates our endpoint before it answers."""
        body = {
            "changeType": "created",
            "notificationUrl": self.config.notification_url,
            "lifecycleNotificationUrl": self.config.lifecycle_notification_url or self.config.notification_url,
            "resource": resource,
            "expirationDateTime": _iso(time.time() + self.config.subscription_lifetime),
            "clientState": self._secret.decode("utf-8"),
        }
        answer = _object(await call("POST", self.subscriptions_url, body))
        subscription_id = answer.get("id")
        if not isinstance(subscription_id, str) or not subscription_id:
            raise TemporaryFailure("Graph created a subscription without an id")
        self.subscription_id = subscription_id
        self._confirmed(answer)
        log.info("graph push: subscription %s on %s until %s", subscription_id, resource, _iso(self.expires_at))

    async def _patch(self, call: GraphCall) -> None:
        """PATCH /subscriptions/{id}: a renewal, which also answers reauthorizationRequired."""
        body = {"expirationDateTime": _iso(time.time() + self.config.subscription_lifetime)}
        answer = _object(await call("PATCH", f"{self.subscriptions_url}/{self.subscription_id}", body))
        self._confirmed(answer)
        log.info("graph push: subscription %s renewed until %s", self.subscription_id, _iso(self.expires_at))

    def _confirmed(self, answer: dict[str, Any]) -> None:
        """Take Graph's expirationDateTime: it may grant less than we asked."""
        granted = _parse_iso(answer.get("expirationDateTime"))
        self._confirmed_at = time.time()
        self.expires_at = granted if granted is not None else self._confirmed_at + self.config.subscription_lifetime
        metrics.GRAPH_SUBSCRIPTION_EXPIRY.set(self.expires_at)

    async def unsubscribe(self, call: GraphCall) -> None:
        """DELETE the subscription (clean shutdown): Graph stops posting to us."""
        if self.subscription_id is None:
            return
        subscription_id, self.subscription_id = self.subscription_id, None
        try:
            await call("DELETE", f"{self.subscriptions_url}/{subscription_id}", None)
            log.info("graph push: subscription %s deleted", subscription_id)
        except TemporaryFailure as exc:
            log.warning("graph push: could not delete subscription %s (%s); it expires by itself", subscription_id, exc)
        self._set_state(SubscriptionState.NONE)

    def _set_state(self, state: SubscriptionState) -> None:
        self.state = state
        for each in SubscriptionState:
            metrics.GRAPH_SUBSCRIPTION_STATE.labels(each.value).set(1 if each is state else 0)


def _object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise TemporaryFailure("Graph answered a subscription call with something not JSON") from None
    if not isinstance(value, dict):
        raise TemporaryFailure("Graph answered a subscription call with something not a JSON object")
    return value


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)?")


def _parse_iso(value: object) -> float | None:
    """Graph's timestamps carry seven fractional digits, more than datetime reads."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    match = _ISO.fullmatch(value.strip())
    if match is None:
        return None
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = match.group(3) or "Z"
    try:
        parsed = datetime.fromisoformat(f"{match.group(1)}.{fraction}{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        return None
    return parsed.timestamp()


def add_push_route(app: web.Application, poller: object) -> None:
    """Serve the notification endpoint on the HTTP listener when the poller is Graph with push."""
    push = getattr(poller, "push", None)
    if isinstance(push, GraphPush):
        push.add_route(app)
