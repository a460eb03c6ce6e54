"""The durable outbound queue: a request mail is stored with its request, then delivered.

The sender loop takes due mails from the store under a lease (so of several instances on
one PostgreSQL only one sends a given mail), hands each to the transport, and records the
answer: sent; deferred with a doubling back-off when the relay is down or answers 4xx;
failed when it answers 5xx or the mail waited longer than ``queue_lifetime``. A failure is
told to the task backend where it listens (``RequestFailureListener``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from . import metrics
from .config import OutboundConfig
from .errors import TemporaryFailure
from .outbound import Delivered, DeliveryDeferred, DeliveryRefused, Transport
from .store import Delivery, OutboundMail, Request, Store

log = logging.getLogger("rc_mta.outbound")

# Mails taken per claim. One: each lease starts right before its own delivery, so slow
# deliveries earlier in a batch can never run a later mail's lease out while it waits
# (another instance would then take it and send it too).
BATCH = 1

# Told when a request could not be delivered: (request id, the relay's answer).
FailureHook = Callable[[str, str], Awaitable[None]]


class OutboundQueue:
    """Delivers what the store holds; one per process, with an identity of its own."""

    def __init__(
        self, config: OutboundConfig, store: Store, transport: Transport, on_failure: FailureHook | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.transport = transport
        self.on_failure = on_failure
        self.holder = secrets.token_hex(8)
        # Long enough for one delivery attempt (bounded below), short enough that a
        # crashed instance's mails are picked up by another within minutes.
        self.lease = max(60.0, 4 * config.smtp_timeout)

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` tries: doubling, capped."""
        return float(min(self.config.retry_max, self.config.retry_min * 2 ** min(attempts - 1, 30)))

    async def submit(self, request: Request, message: bytes, sender: str) -> OutboundMail:
        """Store a new request with its mail, then try to deliver it at once: its state
        after that attempt. The row is ours from the start, so no sender loop (ours or
        another instance's) takes it meanwhile; should we die, the lease hands it on."""
        now = time.time()
        mail = await asyncio.to_thread(
            self.store.add_request_with_mail, request, message, sender, now, self.holder, self.lease
        )
        # Stored: from here the sender loop delivers it whatever happens, so a failure of
        # this first attempt must not reach the caller (who would retry and make a twin).
        try:
            await self._deliver(mail)
            return await asyncio.to_thread(self.store.get_outbound, request.id) or mail
        except Exception as exc:
            log.warning("request %s queued; its first delivery attempt failed: %s", request.id, exc)
            return mail

    async def run(self) -> None:
        """The sender loop: every ``queue_poll_interval``, deliver what is due."""
        while True:
            try:
                await self.round()
            except TemporaryFailure as exc:
                log.warning("outbound queue: %s; trying again in %gs", exc, self.config.queue_poll_interval)
            await asyncio.sleep(self.config.queue_poll_interval)

    async def round(self) -> None:
        """Deliver every mail due now (in batches), then publish the queue's counts."""
        while True:
            taken = await asyncio.to_thread(self.store.claim_outbound, self.holder, time.time(), self.lease, BATCH)
            for mail in taken:
                await self._deliver(mail)
            if len(taken) < BATCH:
                break
        summary = await asyncio.to_thread(self.store.outbound_summary)
        for state, count in summary.counts.items():
            metrics.OUTBOUND_QUEUE.labels(state.value).set(count)

    async def oldest_waiting(self) -> str | None:
        """A warning for /readyz when a mail has waited longer than ``queue_warn_after``."""
        summary = await asyncio.to_thread(self.store.outbound_summary)
        if summary.oldest_pending_at is None:
            return None
        waited = time.time() - summary.oldest_pending_at
        if waited <= self.config.queue_warn_after:
            return None
        waiting = summary.counts[Delivery.QUEUED] + summary.counts[Delivery.DEFERRED]
        return (
            f"{waiting} request mail(s) waiting for delivery, the oldest for {waited:.0f}s "
            f"(warn after {self.config.queue_warn_after:g}s): is the relay down?"
        )

    async def _deliver(self, mail: OutboundMail) -> None:
        request = await asyncio.to_thread(self.store.get_request, mail.request_id)
        if request is not None and request.revoked_at is not None:
            await self._settle(mail, Delivery.FAILED, "revoked before it was sent")
            return
        try:
            async with asyncio.timeout(self.lease / 2):
                delivered: Delivered = await self.transport.deliver(mail)
        except DeliveryRefused as exc:
            await self._fail(mail, str(exc))
        except (DeliveryDeferred, TimeoutError) as exc:
            answer = str(exc) or f"no answer within {self.lease / 2:g}s"
            now = time.time()
            if now - mail.created_at >= self.config.queue_lifetime:
                waited = self.config.queue_lifetime
                await self._fail(mail, f"not delivered within {waited:g}s; last: {answer}")
                return
            delay = self.backoff(mail.attempts + 1)
            log.warning("request %s deferred, next try in %gs: %s", mail.request_id, delay, answer)
            await self._settle(mail, Delivery.DEFERRED, answer, next_attempt_at=now + delay)
        else:
            metrics.REQUESTS_SENT.labels(self.transport.name).inc()
            log.info("request %s sent to %s: %s", mail.request_id, mail.recipient, delivered.answer)
            await self._settle(mail, Delivery.SENT, delivered.answer, path=delivered.path)

    async def _fail(self, mail: OutboundMail, answer: str) -> None:
        log.error("request %s to %s failed: %s", mail.request_id, mail.recipient, answer)
        if await self._settle(mail, Delivery.FAILED, answer) and self.on_failure is not None:
            try:
                await self.on_failure(mail.request_id, answer)
            except Exception as exc:  # the failure is recorded either way; telling is best effort
                log.warning("could not tell the task backend that request %s failed: %s", mail.request_id, exc)

    async def _settle(
        self,
        mail: OutboundMail,
        state: Delivery,
        answer: str,
        *,
        next_attempt_at: float | None = None,
        path: str | None = None,
    ) -> bool:
        settled = await asyncio.to_thread(
            self.store.settle_outbound,
            mail.request_id,
            self.holder,
            state,
            answer,
            time.time(),
            next_attempt_at=next_attempt_at,
            path=path,
        )
        if not settled:
            log.warning("request %s: our lease ran out during delivery; another instance has it", mail.request_id)
        return settled
