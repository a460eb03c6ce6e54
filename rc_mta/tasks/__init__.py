"""Task backends: one small interface, one file per backend."""

from ._base import TaskBackend, TaskInfo, TaskNotFound, TaskNotInProgress
from .embedded import EmbeddedBackend

__all__ = ["EmbeddedBackend", "TaskBackend", "TaskInfo", "TaskNotFound", "TaskNotInProgress"]
