"""The interface every task backend implements (embedded store, Release, webhook).

A backend raises ``TaskNotFound`` / ``TaskNotInProgress`` for refusals a person can
understand, and ``TemporaryFailure`` when it cannot be reached (the sender retries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TaskInfo:
    id: str
    title: str
    owner: str
    status: str  # in_progress | completed | failed | other backend-specific states
    acted_by: str | None = None
    acted_at: float | None = None


class TaskNotFound(Exception):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class TaskNotInProgress(Exception):
    def __init__(self, task: TaskInfo) -> None:
        super().__init__(f"task {task.id} is {task.status}")
        self.task = task


class TaskBackend(Protocol):
    name: str

    async def get(self, task_id: str) -> TaskInfo:
        """The task's status and owner; raises TaskNotFound."""
        ...

    async def complete(self, task_id: str, comment: str, actor: str) -> None:
        """Complete an in-progress task; raises TaskNotFound or TaskNotInProgress."""
        ...

    async def fail(self, task_id: str, comment: str, actor: str) -> None:
        """Fail an in-progress task; raises TaskNotFound or TaskNotInProgress."""
        ...
