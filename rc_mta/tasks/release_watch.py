"""Watch mode for Digital.ai Release: requests go out when tasks start, no script task.

Every ``[tasks.release] watch_interval`` one round:

1. find the ``IN_PROGRESS`` tasks tagged ``watch_tag`` (``ReleaseBackend.started_tasks``)
   and where each one's request goes (the owner's email, or the team members' emails);
2. for each (task, email) not mailed yet, claim it in the store (``watched_tasks``) and
   send through ``Service.send_request``: one instance sends, however many run.

A round that could not read everything (Release down, a user lookup failed) changes
nothing: an absent task is never taken for a task that left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING

from ..errors import RcMtaError
from .release import ReleaseBackend, StartedTask

if TYPE_CHECKING:
    from ..app import Service

log = logging.getLogger("rc_mta.tasks.release_watch")

# A send claimed this long ago and not finished: its instance died; another may take it.
STALE_SEND_SECONDS = 300.0


class ReleaseWatcher:
    source = "release-watch"

    def __init__(self, service: Service) -> None:
        if not isinstance(service.backend, ReleaseBackend):
            raise RcMtaError("[tasks.release] watch = true needs backend 'release'")
        self._service = service
        self._backend: ReleaseBackend = service.backend
        self._config = service.settings.tasks.release
        self._store = service.store
        self.holder = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.last_round: float | None = None

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
                log.warning("release watch: task %s has no owner with an email in Release: not mailed", task.id)
            wanted[task.id] = (task, emails)
        for task, emails in wanted.values():
            for email in emails:
                await self._send(task, email)

    async def _send(self, task: StartedTask, email: str) -> None:
        store = self._store
        claimed = await asyncio.to_thread(
            store.claim_watched_task, task.id, email, self.holder, time.time(), STALE_SEND_SECONDS
        )
        if not claimed:
            return
        try:
            sent = await self._service.send_request(task.id, owner=email, context_title=task.release_title)
        except BaseException:
            await asyncio.to_thread(store.release_watched_task, task.id, email, self.holder)
            raise
        await asyncio.to_thread(store.watched_task_sent, task.id, email, self.holder, time.time())
        log.info("release watch: task %s started: request %s mailed to %s", task.id, sent.request_id, email)
