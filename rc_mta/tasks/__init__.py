"""Task backends: one small interface (``TaskBackend``), one file per backend."""

from __future__ import annotations

from ..config import Settings
from ..store import Store
from ._base import ActionContext, RequestFailureListener, TaskBackend, TaskInfo, TaskNotFound, TaskNotInProgress
from .embedded import EmbeddedBackend

__all__ = [
    "ActionContext",
    "EmbeddedBackend",
    "RequestFailureListener",
    "TaskBackend",
    "TaskInfo",
    "TaskNotFound",
    "TaskNotInProgress",
    "make_backend",
]


def make_backend(settings: Settings, store: Store) -> TaskBackend:
    """The configured backend; the others are imported only when chosen."""
    if settings.tasks.backend == "release":
        from .release import ReleaseBackend

        return ReleaseBackend(settings.tasks.release)
    if settings.tasks.backend == "webhook":
        from .webhook import WebhookBackend

        return WebhookBackend(settings.tasks.webhook)
    return EmbeddedBackend(store)
