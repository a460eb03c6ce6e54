"""What happens to a request after it was sent, while no one answers it.

Every ``[requests] followup_interval`` one round, on every instance (the store decides who
does each step, once):

* ``reminder-N``: ``[requests] reminders`` delays after it was sent, the request again, in
  its thread (``In-Reply-To``/``References`` its Message-ID, ``Reminder:`` subject), with
  the same reply addresses. A round that comes late sends only the latest reminder due.
  The reminder goes into the outbound queue (``outbound_queue.py``) like the request mail,
  keyed by (request, ``reminder-N``): the same lease, back-off and lifetime, and the step is
  done once it is queued.
* ``expired``: once it expired, the backend is told (``TaskBackend.expired``: a comment on
  a Release or embedded task, an ``expired`` event to a webhook), as a notice (below)
  recorded with the step. A reply after that gets the expired-token refusal, which says
  when it expired.

Each round also tells the backend what it has not yet been told (``Notices``): the
``expired`` notices, and, where it listens (``RequestFailureListener``), the request mails
that failed for good. Each is recorded with what causes it (the step, the mail's failure:
one transaction) and tried at once, then again with the outbound queue's back-off until
``[outbound] queue_lifetime``, then given up with an ERROR.

Answered and revoked requests get neither (an answer being acted on holds them back a
round at a time; one whose attempt died mid-action, its claim taken for dead after
``STALE_CLAIM_SECONDS``, does not: see ``withheld_because``), and neither goes out for a
task that was decided another way: before each step the task is read (``TaskBackend.get``:
the embedded store, Release), and where the backend cannot be read (the webhook) rc-mta's
own record says whether another request of the task was answered since, or its N-of-M
group decided (with the group's decision and approvers). A task no longer in progress
withdraws the step (logged, recorded, never tried again); a backend that cannot tell now
(down), or a group decision still being told to the backend (it may yet be taken back),
leaves the step for the next round: nothing is sent blindly, nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from email.message import EmailMessage
from typing import TYPE_CHECKING, ClassVar

from .config import Settings
from .dkim_signing import signed
from .errors import BackendUnavailable, DecisionPending, StoreUnavailable, TemporaryFailure
from .outbound import reply_addresses, wire_bytes
from .request_mail import compose
from .store import IN_PROGRESS, STALE_CLAIM_SECONDS, Notice, NoticeTerms, Request, new_holder
from .tasks import EmbeddedBackend, RequestFailureListener, TaskNotFound
from .thread_ids import reminder_id, thread_id
from .tokens import Signer

if TYPE_CHECKING:
    from .app import Service

log = logging.getLogger("rc_mta.followups")

# A follow-up claimed this long ago and not finished: its instance died; another may take it.
STALE_SECONDS = 300.0
# Requests that expired longer ago than this are not reported (a store from before follow-ups).
EXPIRY_NOTICE_WINDOW = 86400.0


def reminder(settings: Settings, signer: Signer, request: Request, number: int, now: float) -> EmailMessage:
    """The request mailed again, in its own thread, with the same reply addresses."""
    addresses = reply_addresses(settings, signer, request)
    message = compose(settings, request, addresses, now, language=settings.outbound.language)
    inbound = settings.inbound
    subject = str(message["Subject"])
    del message["Subject"], message["Message-ID"]
    message["Subject"] = f"Reminder: {subject}"
    local_part, domain = inbound.local_part, inbound.reply_domain
    message["Message-ID"] = reminder_id(request.message_id, request.id, number, local_part, domain)
    if request.message_id:
        del message["References"]
        message["In-Reply-To"] = request.message_id
        thread = thread_id(request.message_id)
        message["References"] = f"{thread} {request.message_id}" if thread else request.message_id
    return message


async def withheld_because(service: Service, request: Request) -> str | None:
    """Why no follow-up of ``request`` may go out, or None when it is still wanted: the
    request is open and its task in progress. Raises TemporaryFailure when that cannot be
    told now (the backend or the store is down, a reply is being handled): ask again later.

    An answer whose attempt died mid-action (its claim pending and stale) may or may not
    have acted: the task says which where the backend can be read (in progress: it did
    not, and the follow-up goes; a reply to it takes the dead claim over). Where it cannot
    (the webhook) nothing is guessed: the follow-up is withdrawn, and an operator warned. So
    it is for such an answer to another request of the task, the one that decided its N-of-M
    group included; one of them being acted on now leaves the follow-up for the next round."""
    store = service.store
    found = await asyncio.to_thread(store.get_request_with_claim, request.id)
    if found is None:
        return "the request is gone"
    current, claim = found
    if current.revoked_at is not None:
        return "the request was revoked"
    if claim is not None:
        if claim.done:
            return f"the request was answered ({claim.action} by {claim.actor})"
        if not claim.stale(time.time(), STALE_CLAIM_SECONDS):
            raise TemporaryFailure(f"request {request.id} is being answered right now")
    try:
        task = await service.backend.get(request.task_id)
    except TaskNotFound:
        return f"task {request.task_id} no longer exists"
    if task.known:
        if task.status == IN_PROGRESS:
            return None
        by = f" by {task.acted_by}" if task.acted_by else ""
        return f"task {request.task_id} is {task.status}{by}"
    if claim is not None:
        why = (
            f"an answer's action was interrupted ({claim.action} by {claim.actor}, claimed"
            f" {time.time() - claim.claimed_at:.0f}s ago, never finished) and its outcome is unknown"
        )
        return _interrupted(service, request, why)
    sibling = await asyncio.to_thread(store.decided_by_sibling, request.id, time.time())
    if sibling is None:
        return None
    if sibling.unknown:
        why = (
            f"the answer to request {sibling.request_id} of the same task was interrupted ({sibling.action} by"
            f" {sibling.actor}, never finished) and its outcome is unknown"
        )
        return _interrupted(service, request, why)
    if not sibling.final:
        # Being acted on now, or a decision that may yet be taken back: not withdrawn for it.
        raise DecisionPending(request.task_id)
    past = "failed" if sibling.action == "fail" else "completed"
    return f"task {request.task_id} was {past} by {sibling.actor} (request {sibling.request_id})"


def _interrupted(service: Service, request: Request, why: str) -> str:
    """Why a follow-up is withdrawn after an answer's attempt (to this request or another of
    its task) died mid-action, where the backend cannot be asked whether the task was acted
    on: said to an operator, who can."""
    log.warning(
        "request %s: %s: the %s backend cannot say whether task %s was acted on, so nothing more is mailed"
        " for this request; check the task there",
        request.id,
        why,
        service.backend.name,
        request.task_id,
    )
    return why


class Notices:
    """What the backend must be told for good about a request: ``request_failed`` (its mail
    will never arrive) and ``expired`` (unanswered). A record in the store first, with what
    causes it (so neither a backend that is down nor a crash loses it), an attempt at once,
    then one in each follow-up round that finds it due, with the outbound queue's back-off,
    until ``[outbound] queue_lifetime``. Of several instances one tells it at a time (a lease)."""

    REQUEST_FAILED = "request_failed"
    EXPIRED = "expired"
    # How the log says what the backend is told of a request.
    _TOLD: ClassVar[dict[str, str]] = {REQUEST_FAILED: "failed", EXPIRED: "expired unanswered"}

    def __init__(self, service: Service, holder: str | None = None) -> None:
        self._service = service
        self.holder = holder or new_holder()

    @classmethod
    def terms(cls, holder: str, event: str = REQUEST_FAILED) -> NoticeTerms:
        """The notice written with what causes it (a request mail's FAILED state, the
        expired step: one transaction, so nothing between the two can lose it), held by
        ``holder`` (who tells it at once: ``tell_recorded``) for as long as a stale step lasts."""
        return NoticeTerms(event, holder, STALE_SECONDS)

    def events(self) -> tuple[str, ...]:
        """What this backend is told: ``request_failed`` only where it listens."""
        listens = isinstance(self._service.backend, RequestFailureListener)
        return (self.REQUEST_FAILED, self.EXPIRED) if listens else (self.EXPIRED,)

    async def tell_recorded(self, request_id: str, event: str = REQUEST_FAILED) -> None:
        """A notice held by us was written with what caused it (the queue calls this only
        when ``settle_outbound`` says ``WITH_NOTICE``: a notice that was there already is its
        own holder's, or a round's, to tell): tell the backend now; should that not work,
        the follow-up rounds try again."""
        notice = await asyncio.to_thread(self._service.store.get_notice, request_id, event)
        if notice is not None and notice.state == "pending":
            await self._tell(notice)

    async def round(self) -> None:
        """Tell what is due again."""
        store = self._service.store
        for notice in await asyncio.to_thread(
            store.claim_notices, self.holder, time.time(), STALE_SECONDS, self.events()
        ):
            await self._tell(notice)

    async def _tell(self, notice: Notice) -> None:
        service, store = self._service, self._service.store
        backend = service.backend
        told = self._TOLD.get(notice.event, notice.event)
        try:
            async with asyncio.timeout(STALE_SECONDS / 2):
                if (
                    notice.event == self.EXPIRED
                    and isinstance(backend, EmbeddedBackend)
                    and backend.keeps_tasks_in(store)
                ):
                    # Comment and settlement in one transaction: told once, whatever dies when.
                    if await backend.tell_expired(notice, self.holder):
                        log.info("backend told that request %s to %s %s", notice.request_id, notice.owner, told)
                    return
                if notice.event == self.EXPIRED:
                    await backend.expired(notice.task_id, notice.owner, notice.request_id, notice.expires_at)
                else:
                    assert isinstance(backend, RequestFailureListener)
                    await backend.request_failed(notice.task_id, notice.request_id, notice.owner, notice.answer)
        except asyncio.CancelledError:
            raise  # still held: another round takes it after the lease
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            now, attempts = time.time(), notice.attempts + 1
            lifetime = service.settings.outbound.queue_lifetime
            if now - notice.created_at >= lifetime:
                await asyncio.to_thread(store.settle_notice, notice, self.holder, "given_up", now, error=why)
                log.error(
                    "gave up telling the backend that request %s to %s %s, after %d attempt(s) in %gs: %s",
                    notice.request_id,
                    notice.owner,
                    told,
                    attempts,
                    lifetime,
                    why,
                )
                return
            delay = service.queue.backoff(attempts)
            await asyncio.to_thread(
                store.settle_notice, notice, self.holder, "pending", now, error=why, next_attempt_at=now + delay
            )
            log.warning(
                "could not tell the backend that request %s %s (%s); next try in %gs",
                notice.request_id,
                told,
                why,
                delay,
            )
            return
        await asyncio.to_thread(store.settle_notice, notice, self.holder, "told", time.time())
        log.info("backend told that request %s to %s %s", notice.request_id, notice.owner, told)


class FollowUps:
    source = "followups"

    def __init__(self, service: Service) -> None:
        self._service = service
        self._config = service.settings.requests
        self.holder = new_holder()
        self._notices = Notices(service)

    async def run(self) -> None:
        """Until cancelled; a failed round is logged and the next one tries again."""
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("follow-ups: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self._config.followup_interval)

    async def round(self) -> None:
        """The steps due, then the notices due: trouble with the one does not stop the other."""
        try:
            await self._steps()
        except Exception as exc:
            log.warning("follow-ups: %s: %s", type(exc).__name__, exc)
        await self._notices.round()

    async def _steps(self) -> None:
        store, now = self._service.store, time.time()
        due = await asyncio.to_thread(
            store.due_followups, now, tuple(self._config.reminders), now - EXPIRY_NOTICE_WINDOW
        )
        for request, step in due:
            # Stamped when taken (not when the round began), and never held longer than a
            # stale claim lasts, so no other instance takes it while it is being done.
            taken_at = time.time()
            if not await asyncio.to_thread(
                store.claim_followup, request.id, step, self.holder, taken_at, STALE_SECONDS
            ):
                continue
            try:
                async with asyncio.timeout(STALE_SECONDS / 2):
                    why_not = await withheld_because(self._service, request)
                    if why_not is None:
                        await self._do(request, step)
            except asyncio.CancelledError:
                await asyncio.to_thread(store.release_followup, request.id, step, self.holder)
                raise
            except Exception as exc:
                await asyncio.to_thread(store.release_followup, request.id, step, self.holder)
                log.warning(
                    "follow-up %s of request %s left for the next round: %s: %s",
                    step,
                    request.id,
                    type(exc).__name__,
                    exc,
                )
                if isinstance(exc, (BackendUnavailable, StoreUnavailable)):
                    break  # the others would only wait for it too
                continue
            if why_not is not None:
                await asyncio.to_thread(store.followup_done, request.id, step, self.holder, time.time(), withdrawn=True)
                log.info("request %s: %s withdrawn, nothing sent: %s", request.id, step, why_not)

    async def _do(self, request: Request, step: str) -> None:
        """Do one step this instance holds, and mark it done (or leave it to the caller's
        error path, which gives it back for the next round)."""
        service, store = self._service, self._service.store
        if step == "expired":
            # Recorded with the step: told now, else again with back-off (``Notices``).
            terms = Notices.terms(self._notices.holder, Notices.EXPIRED)
            done = time.time()
            if not await asyncio.to_thread(store.followup_done, request.id, step, self.holder, done, notice=terms):
                return  # taken over meanwhile (this instance was too slow): the holder tells it
            log.info("request %s to %s expired unanswered: telling task %s", request.id, request.owner, request.task_id)
            await self._notices.tell_recorded(request.id, Notices.EXPIRED)
            return
        number = int(step.removeprefix("reminder-"))
        message = wire_bytes(reminder(service.settings, service.signer, request, number, time.time()))
        message = await signed(service.dkim, message)
        # Into the outbound queue, the step marked done with it in one transaction: from
        # here the sender loop delivers it (back-off, lifetime, a revocation honoured) and
        # the step is never taken again, so no relay trouble can make a second reminder.
        mail = await service.queue.submit_followup(request, step, message, service.settings.from_address, self.holder)
        if mail is None:
            log.warning("request %s: %s was taken over by another instance meanwhile", request.id, step)
            return
        log.info("request %s: %s queued for %s (%s)", request.id, step, request.owner, mail.state.value)
