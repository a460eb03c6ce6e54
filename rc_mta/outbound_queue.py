"""The durable outbound queue: a request mail is stored with its request, a reminder when
it is due (``followups.py``), then each is delivered.

The sender loop takes due mails from the store under a lease (so of several instances on
one PostgreSQL only one sends a given mail), hands each to the transport, and records the
answer: sent; deferred with a doubling back-off when the relay is down or answers 4xx;
failed when it answers 5xx or the mail waited longer than ``queue_lifetime``. No mail, the
request mail or a reminder, is sent for a request revoked, answered or expired meanwhile,
or whose task was decided meanwhile (asked again before each attempt): it is recorded as
withdrawn, with why. A request mail's
failure is told to the task backend where it listens (``RequestFailureListener``); a
reminder's is only logged (its request did arrive).
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
from .store import (
    REFUSAL_NOTICE,
    REQUEST_MAIL,
    ApprovalCheck,
    Delivery,
    NoticeQueued,
    NoticeTerms,
    OutboundMail,
    Request,
    Settled,
    Store,
)

log = logging.getLogger("rc_mta.outbound")

# Mails taken per claim. One: each lease starts right before its own delivery, so slow
# deliveries earlier in a batch can never run a later mail's lease out while it waits
# (another instance would then take it and send it too).
BATCH = 1

# Told when a request mail failed for good and that very transaction wrote its notice
# (``failure_notice``): (request id, the relay's answer).
FailureHook = Callable[[str, str], Awaitable[None]]
# Asked before a mail is sent: why it must not be (None: send it); TemporaryFailure
# when that cannot be told now (the mail is deferred, never sent on a guess).
WithheldHook = Callable[[Request], Awaitable[str | None]]


class OutboundQueue:
    """Delivers what the store holds; one per process, with an identity of its own."""

    def __init__(
        self, config: OutboundConfig, store: Store, transport: Transport, on_failure: FailureHook | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.transport = transport
        self.on_failure = on_failure
        # Set where the task backend must be told of a request mail that failed for good:
        # that notice is written with the mail's FAILED state, in one transaction (so no
        # crash or store error between the two loses it); ``on_failure`` then tells it.
        self.failure_notice: NoticeTerms | None = None
        self.withheld: WithheldHook | None = None
        self.holder = secrets.token_hex(8)
        # Long enough for one delivery attempt (bounded below), short enough that a
        # crashed instance's mails are picked up by another within minutes.
        self.lease = max(60.0, 4 * config.smtp_timeout)

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` tries: doubling, capped."""
        return float(min(self.config.retry_max, self.config.retry_min * 2 ** min(attempts - 1, 30)))

    async def submit(
        self, request: Request, message: bytes, sender: str, *, approvals: ApprovalCheck | None = None
    ) -> OutboundMail:
        """Store a new request with its mail, then try to deliver it at once: its state
        after that attempt. The row is ours from the start, so no sender loop (ours or
        another instance's) takes it meanwhile; should we die, the lease hands it on.
        ``approvals``: written under the N-of-M rule, or refused (ApprovalConflict) with
        nothing stored (``Store.add_request_with_mail``)."""
        now = time.time()
        mail = await asyncio.to_thread(
            self.store.add_request_with_mail,
            request,
            message,
            sender,
            now,
            self.holder,
            self.lease,
            approvals=approvals,
        )
        # Stored: from here the sender loop delivers it whatever happens, so a failure of
        # this first attempt must not reach the caller (who would retry and make a twin).
        try:
            # Its creator has just found the task in progress: asked again from the next attempt on.
            await self._deliver(mail, now, checked=True)
            return await asyncio.to_thread(self.store.get_outbound, request.id) or mail
        except Exception as exc:
            log.warning("request %s queued; its first delivery attempt failed: %s", request.id, exc)
            return mail

    async def submit_followup(
        self, request: Request, step: str, message: bytes, sender: str, step_holder: str
    ) -> OutboundMail | None:
        """Queue the mail of a follow-up step ``step_holder`` holds (the step is marked done
        with it, in one transaction), then try it at once, as ``submit`` does: its state
        after that attempt. None when the step was no longer ours: nothing was queued."""
        now = time.time()
        mail = await asyncio.to_thread(
            self.store.queue_followup_mail, request, step, step_holder, message, sender, now, self.holder, self.lease
        )
        if mail is None:
            return None
        try:
            await self._deliver(mail, now, checked=True)
            return await asyncio.to_thread(self.store.get_outbound, request.id, step) or mail
        except Exception as exc:
            log.warning("%s queued; its first delivery attempt failed: %s", mail.label, exc)
            return mail

    async def submit_notice(
        self, request_id: str, kind: str, message: bytes, sender: str, recipient: str, *, per_hour: int
    ) -> tuple[NoticeQueued, OutboundMail | None]:
        """Queue a refused reply's notice (``Store.queue_refusal_notice``: one per reply, a
        few per recipient an hour), then try it at once, as ``submit`` does."""
        now = time.time()
        queued, mail = await asyncio.to_thread(
            self.store.queue_refusal_notice,
            request_id,
            kind,
            message,
            sender,
            recipient,
            now,
            self.holder,
            self.lease,
            per_hour=per_hour,
        )
        if mail is None:
            return queued, None
        try:
            await self._deliver(mail, now, checked=True)
            return queued, await asyncio.to_thread(self.store.get_outbound, request_id, kind) or mail
        except Exception as exc:
            log.warning("%s queued; its first delivery attempt failed: %s", mail.label, exc)
            return queued, mail

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
            now = time.time()
            taken = await asyncio.to_thread(self.store.claim_outbound, self.holder, now, self.lease, BATCH)
            for mail in taken:
                await self._deliver(mail, now)
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
            f"{waiting} mail(s) waiting for delivery, the oldest for {waited:.0f}s "
            f"(warn after {self.config.queue_warn_after:g}s): is the relay down?"
        )

    async def _deliver(self, mail: OutboundMail, leased_at: float, *, checked: bool = False) -> None:
        """One attempt at a mail held since ``leased_at``. ``checked``: its request was just
        made, or its follow-up step has just asked whether it is still wanted (not asked
        twice in a row).

        The look at whether it is still wanted (the task, asked of a backend
        that may retry for long) and the delivery end together within half the lease: past
        the lease another instance may take the mail, and both would send it. A look that
        cannot finish in time defers the mail: it is never sent blindly. The look ends a
        quarter lease (at least the relay's timeout) before that, so a delivery never starts
        too late to finish: cut after its final dot, it would be sent again."""
        budget = leased_at + self.lease / 2 - time.time()
        sending = False
        try:
            async with asyncio.timeout(max(0.0, budget)):
                async with asyncio.timeout(max(0.0, budget - self.lease / 4)):
                    not_sent = await self._not_wanted(mail, checked)
                if not_sent is None:
                    sending = True
                    delivered: Delivered = await self.transport.deliver(mail)
        except DeliveryRefused as exc:
            await self._fail(mail, str(exc))
        except DeliveryDeferred as exc:
            await self._defer(mail, str(exc))
        except TimeoutError as exc:
            if sending:
                await self._defer(mail, str(exc) or f"no answer within {self.lease / 2:g}s")
            else:
                why = f"could not be told within {self.lease / 4:g}s whether it is still wanted"
                await self._defer(mail, f"not sent yet, as it {why}")
        except TemporaryFailure as exc:  # the look, not the delivery (DeliveryDeferred above)
            await self._defer(mail, f"not sent yet, as it cannot be told whether it is still wanted: {exc}")
        else:
            if not_sent is not None:
                await self._settle(mail, Delivery.FAILED, not_sent)
                return
            if mail.kind == REQUEST_MAIL:
                metrics.REQUESTS_SENT.labels(self.transport.name).inc()
            log.info("%s sent to %s: %s", mail.label, mail.recipient, delivered.answer)
            await self._settle(mail, Delivery.SENT, delivered.answer, path=delivered.path)

    async def _not_wanted(self, mail: OutboundMail, checked: bool) -> str | None:
        """Why ``mail`` must not be sent (what its row records), None when it may be; raises
        TemporaryFailure when that cannot be told now."""
        if mail.kind.startswith(REFUSAL_NOTICE):
            return None  # it tells of a reply already refused: nothing since makes it untrue
        request = await asyncio.to_thread(self.store.get_request, mail.request_id)
        if request is not None and request.revoked_at is not None:
            return "revoked before it was sent"
        if request is not None and not checked:
            why_not = await self._withheld(request)
            if why_not is not None:
                log.info("%s withdrawn, nothing sent: %s", mail.label, why_not)
                return f"not sent: {why_not}"
        return None

    async def _withheld(self, request: Request) -> str | None:
        """Why no mail of ``request`` may go out now (None: it may)."""
        if request.expires_at <= time.time():
            return "the request expired"
        return await self.withheld(request) if self.withheld is not None else None

    async def _defer(self, mail: OutboundMail, answer: str) -> None:
        """Not this time: again after the back-off, or failed once ``queue_lifetime`` is up."""
        now = time.time()
        if now - mail.created_at >= self.config.queue_lifetime:
            waited = self.config.queue_lifetime
            await self._fail(mail, f"not delivered within {waited:g}s; last: {answer}")
            return
        delay = self.backoff(mail.attempts + 1)
        log.warning("%s deferred, next try in %gs: %s", mail.label, delay, answer)
        await self._settle(mail, Delivery.DEFERRED, answer, next_attempt_at=now + delay)

    async def _fail(self, mail: OutboundMail, answer: str) -> None:
        log.error("%s to %s failed: %s", mail.label, mail.recipient, answer)
        # Only the request mail's failure means the owner was never asked: a reminder's
        # request did arrive.
        told = mail.kind == REQUEST_MAIL
        settled = await self._settle(mail, Delivery.FAILED, answer, notice=self.failure_notice if told else None)
        # Told by whoever wrote the notice: one already there is another's (or a round's) to tell.
        if settled is Settled.WITH_NOTICE and self.on_failure is not None:
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
        notice: NoticeTerms | None = None,
    ) -> Settled:
        settled = await asyncio.to_thread(
            self.store.settle_outbound,
            mail.request_id,
            self.holder,
            state,
            answer,
            time.time(),
            next_attempt_at=next_attempt_at,
            path=path,
            kind=mail.kind,
            notice=notice,
        )
        if not settled:
            log.warning("%s: our lease ran out during delivery; another instance has it", mail.label)
        return settled
