"""Parts the config chooses by name: task backends (``[tasks] backend``) and mailbox
pollers (``[mailbox] source``).

Each part registers itself, in its own module, with the factory that builds it::

    @TASK_BACKENDS.register("release", ReleaseConfig)
    def create(config: ReleaseConfig, store: Store) -> ReleaseBackend: ...

A name is known when it is registered or when its package has a module of that name
(``rc_mta/tasks/<name>.py``), which is imported only once that part is built: so the
config is checked without importing any part, and a fourth backend is one new file.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Part:
    """One registered part: its name, its factory, and the model of its own config section
    (``[tasks.<name>]``; None when it has none of its own)."""

    name: str
    factory: Callable[..., Any]
    config: type[Any] | None


class Registry:
    """The parts of one kind, by name; ``key`` is the config key that names one."""

    def __init__(self, package: str, key: str) -> None:
        self.package = package
        self.key = key
        self.parts: dict[str, Part] = {}

    def register(self, name: str, config: type[Any] | None = None) -> Callable[[F], F]:
        """Decorate the factory of part ``name``; ``config`` validates its section."""

        def add(factory: F) -> F:
            self.parts[name] = Part(name, factory, config)
            return factory

        return add

    def _modules(self) -> set[str]:
        """The package's public module names, found without importing any of them."""
        spec = importlib.util.find_spec(self.package)
        paths = list(spec.submodule_search_locations or []) if spec else []
        return {m.name for m in pkgutil.iter_modules(paths) if not m.name.startswith("_")}

    def names(self) -> list[str]:
        return sorted(set(self.parts) | self._modules())

    def check(self, name: str) -> str:
        """``name`` if it is a known part, else a ValueError listing the known ones (no import)."""
        if name not in self.parts and name not in self._modules():
            raise ValueError(f"{name!r} is not one of {', '.join(self.names())}")
        return name

    def get(self, name: str) -> Part:
        """The part ``name``, importing its module first if it has not registered yet."""
        if name not in self.parts and name in self._modules():
            importlib.import_module(f"{self.package}.{name}")
        try:
            return self.parts[name]
        except KeyError:
            raise LookupError(f"{self.key}: {name!r} is not one of {', '.join(self.names())}") from None


TASK_BACKENDS = Registry("rc_mta.tasks", "tasks.backend")
MAILBOX_SOURCES = Registry("rc_mta.mailbox", "mailbox.source")
