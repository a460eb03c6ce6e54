"""The built-in task store: tasks live in rc-mta's own database."""

from __future__ import annotations

import asyncio
import time

from ..registry import TASK_BACKENDS
from ..store import COMPLETED, FAILED, Notice, Store
from ._base import ActionContext, TaskInfo, TaskNotFound, TaskNotInProgress, expiry_note


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, store: Store) -> None:
        self._store = store

    def keeps_tasks_in(self, store: Store) -> bool:
        """Whether the tasks live in ``store``: the pipeline may then act in its transaction."""
        return self._store is store

    async def get(self, task_id: str) -> TaskInfo:
        task = await asyncio.to_thread(self._store.get_task, task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return TaskInfo(task.id, task.title, task.owner, task.status, task.acted_by, task.acted_at)

    async def complete(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        await self._set(task_id, COMPLETED, comment, actor)

    async def fail(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        await self._set(task_id, FAILED, comment, actor)

    async def expired(self, task_id: str, owner: str, request_id: str, expired_at: float) -> None:
        text = expiry_note(owner, request_id, expired_at)
        await asyncio.to_thread(self._store.add_task_comment, task_id, "rc-mta", text, time.time())

    async def tell_expired(self, notice: Notice, holder: str) -> bool:
        """``expired`` for a notice held by ``holder``: the comment written with the notice
        settled, in one transaction of the store the task lives in (``tell_notice_in_comment``),
        so a crash never leaves the comment written and the notice to tell again. False when
        ``holder`` no longer held the notice (another instance tells it)."""
        text = expiry_note(notice.owner, notice.request_id, notice.expires_at)
        return await asyncio.to_thread(self._store.tell_notice_in_comment, notice, holder, "rc-mta", text, time.time())

    async def check(self) -> str:
        await asyncio.to_thread(self._store.ping)
        return "store answers"

    async def close(self) -> None:
        pass

    async def _set(self, task_id: str, status: str, comment: str, actor: str) -> None:
        changed = await asyncio.to_thread(self._store.set_task_status, task_id, status, comment, actor, time.time())
        if not changed:
            raise TaskNotInProgress(await self.get(task_id))


@TASK_BACKENDS.register("embedded")
def create(config: object, store: Store) -> EmbeddedBackend:
    """rc-mta's own task store: no section of its own."""
    return EmbeddedBackend(store)
