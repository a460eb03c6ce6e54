"""Task backends: one small interface (``TaskBackend``), one file per backend, each
registered by name (``rc_mta.registry.TASK_BACKENDS``) and chosen by ``[tasks] backend``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..config import Settings
from ..errors import ConfigError
from ..registry import TASK_BACKENDS
from ..store import Store
from ._base import (
    ActionContext,
    RequestFailureListener,
    TaskBackend,
    TaskInfo,
    TaskNotFound,
    TaskNotInProgress,
    reads_tasks,
)
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
    "reads_tasks",
]


def make_backend(settings: Settings, store: Store) -> TaskBackend:
    """The configured backend; only its own module is imported."""
    name = settings.tasks.backend
    part = TASK_BACKENDS.get(name)
    section: Any = settings.tasks.section(name)
    if part.config is not None and not isinstance(section, part.config):
        try:
            section = part.config.model_validate(section)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(["tasks", name, *(str(p) for p in first["loc"])])
            raise ConfigError(f"config key {key}: {first['msg'].removeprefix('Value error, ')}") from None
    backend: TaskBackend = part.factory(section, store)
    return backend
