"""Watch mode for Digital.ai Release: requests go out when tasks start, no script task.

Every ``[tasks.release] watch_interval`` one round:

1. find the ``IN_PROGRESS`` tasks tagged ``watch_tag`` (``ReleaseBackend.started_tasks``)
   and where each one's request goes (the owner's email, or the team members' emails);
2. for each (task, email) mailed earlier that is no longer wanted — the task was
   reassigned, skipped, aborted, completed or failed in the UI — close it and revoke its
   unanswered requests; when the task went to someone else, a late reply is told who;
3. for each (task, email) not mailed yet, claim it in the store (``watched_tasks``) and
   send through ``Service.send_request``: one instance sends, however many run.

A round that could not read everything (Release down, a user lookup failed) changes
nothing: an absent task is never taken for a task that left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..errors import RcMtaError, TemporaryFailure
from ..request_mail import RequestContext
from ..store import STALE_CLAIM_SECONDS, new_holder
from .release import ReleaseBackend, StartedTask

if TYPE_CHECKING:
    from ..app import Service

log = logging.getLogger("rc_mta.tasks.release_watch")

# A send claimed this long ago and not finished: its instance died; another may take it.
STALE_SEND_SECONDS = 300.0
# A reply's claim blocks a revocation until it is taken for dead, as for the API's revoke:
# ``STALE_CLAIM_SECONDS``, twice the longest an action may run (``[tasks] action_deadline``),
# so a request is never withdrawn while its answer may still be telling Release.


class ReleaseWatcher:
    source = "release-watch"

    def __init__(self, service: Service) -> None:
        if not isinstance(service.backend, ReleaseBackend):
            raise RcMtaError("[tasks.release] watch = true needs backend 'release'")
        self._service = service
        self._backend: ReleaseBackend = service.backend
        self._config = service.settings.tasks.release
        self._store = service.store
        self.holder = new_holder()
        self.last_round: float | None = None
        # Why each (task, email) was last not mailed: a refusal that lasts (an N-of-M group
        # of the task stands in the way until its requests are revoked) is logged once.
        self._not_mailed: dict[tuple[str, str], str] = {}

    async def run(self) -> None:
        """Watch until cancelled; a failed round is logged and the next one tries again."""
        while True:
            try:
                await self.round()
                self.last_round = time.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("release watch: %s: %s; trying again in %gs", type(exc).__name__, exc, self._interval)
            await asyncio.sleep(self._interval)

    @property
    def _interval(self) -> float:
        return self._config.watch_interval

    async def round(self) -> None:
        wanted: dict[str, tuple[StartedTask, tuple[str, ...]]] = {}
        for task in await self._backend.started_tasks(self._config.watch_tag):
            emails = await self._backend.owner_emails(task)
            if not emails:
                self._not_mailed_because(task.id, "anyone", "the task has no owner with an email in Release")
            wanted[task.id] = (task, emails)
        # Withdraw first: a task reassigned to someone else is never answerable by both.
        await self._close_the_ones_that_left(wanted)
        for task, emails in wanted.values():
            for email in emails:
                try:
                    await self._send(task, email)
                except (asyncio.CancelledError, TemporaryFailure):
                    raise  # the round is retried as a whole
                except Exception as exc:  # this task's trouble (it moved on, a bad owner): not the others'
                    self._not_mailed_because(task.id, email, f"{type(exc).__name__}: {exc}")
        # What left Release is forgotten: should it come back, its trouble is told again.
        self._not_mailed = {key: why for key, why in self._not_mailed.items() if key[0] in wanted}

    def _not_mailed_because(self, task_id: str, email: str, why: str) -> None:
        """A WARNING the first round it happens, then DEBUG each round while the reason stays."""
        again = self._not_mailed.get((task_id, email)) == why
        self._not_mailed[(task_id, email)] = why
        level = logging.DEBUG if again else logging.WARNING
        until = "" if again else " (tried each round; logged again only if the reason changes)"
        log.log(level, "release watch: task %s to %s not mailed: %s%s", task_id, email, why, until)

    async def _send(self, task: StartedTask, email: str) -> None:
        store = self._store
        claimed = await asyncio.to_thread(
            store.claim_watched_task, task.id, email, self.holder, time.time(), STALE_SEND_SECONDS
        )
        if not claimed:
            return
        try:
            context = RequestContext(context_title=task.release_title)
            sent = await self._service.send_request(task.id, owner=email, context=context)
        except BaseException:
            await asyncio.to_thread(store.release_watched_task, task.id, email, self.holder)
            raise
        await asyncio.to_thread(store.watched_task_sent, task.id, email, self.holder, time.time())
        self._not_mailed.pop((task.id, email), None)
        log.info("release watch: task %s started: request %s mailed to %s", task.id, sent.request_id, email)

    async def _close_the_ones_that_left(self, wanted: dict[str, tuple[StartedTask, tuple[str, ...]]]) -> None:
        """Withdraw what is no longer wanted. A request being answered at this very moment
        cannot be withdrawn (the reply may be acting): it is tried again next round, and the
        (task, owner) is closed only once each of its requests is withdrawn or answered."""
        store = self._store
        for task_id, owner in await asyncio.to_thread(store.sent_watched_tasks):
            now_with = wanted[task_id][1] if task_id in wanted else ()
            if owner in now_with:
                continue
            settled = True
            for request_id in await asyncio.to_thread(store.open_requests_for, task_id, owner):
                if now_with:
                    await asyncio.to_thread(store.record_handover, request_id, ", ".join(now_with), time.time())
                if await asyncio.to_thread(
                    store.revoke_unanswered_request, request_id, time.time(), STALE_CLAIM_SECONDS
                ):
                    why = f"now with {', '.join(now_with)}" if now_with else "no longer in progress for them"
                    log.info("release watch: task %s %s: request %s to %s revoked", task_id, why, request_id, owner)
                    continue
                claim = await asyncio.to_thread(store.get_claim, request_id)
                settled = settled and claim is not None and claim.done
            if settled:
                await asyncio.to_thread(store.close_watched_task, task_id, owner, time.time())
