"""Task backends and mailbox pollers are chosen by name: a new one is one new file that
registers itself, and the config selects it without any other module knowing of it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import BaseModel, ConfigDict

from rc_mta.config import load_settings
from rc_mta.errors import ConfigError
from rc_mta.mailbox import make_poller
from rc_mta.pipeline import Pipeline
from rc_mta.registry import MAILBOX_SOURCES, TASK_BACKENDS, Registry
from rc_mta.store import Store
from rc_mta.tasks import ActionContext, TaskInfo, make_backend


class LedgerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    account: str = "ops"


class LedgerBackend:
    """A fourth backend: tasks kept in a ledger file (in memory here)."""

    name = "ledger"

    def __init__(self, config: LedgerConfig) -> None:
        self.config = config
        self.done: list[tuple[str, str]] = []

    async def get(self, task_id: str) -> TaskInfo:
        return TaskInfo(task_id, "Ledger task", "alice@example.test", "in_progress")

    async def complete(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        self.done.append((task_id, "complete"))

    async def fail(self, task_id: str, comment: str, actor: str, context: ActionContext) -> None:
        self.done.append((task_id, "fail"))

    async def check(self) -> str:
        return f"ledger {self.config.path}"

    async def close(self) -> None:
        pass


@pytest.fixture
def registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test registers is gone after it."""
    monkeypatch.setattr(TASK_BACKENDS, "parts", dict(TASK_BACKENDS.parts))
    monkeypatch.setattr(MAILBOX_SOURCES, "parts", dict(MAILBOX_SOURCES.parts))


def _settings(tmp_path: Path, toml: str) -> Any:
    path = tmp_path / "rc-mta.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/rc.db"\n{toml}')
    return load_settings(str(path))


def test_a_registered_backend_is_selected_from_the_config_with_its_own_typed_section(
    registries: None, tmp_path: Path
) -> None:
    @TASK_BACKENDS.register("ledger", LedgerConfig)
    def create(config: LedgerConfig, store: Store) -> LedgerBackend:
        return LedgerBackend(config)

    settings = _settings(tmp_path, '[tasks]\nbackend = "ledger"\n[tasks.ledger]\npath = "/srv/ledger"\n')
    store = Store(settings.store.url)
    try:
        backend = make_backend(settings, store)
    finally:
        store.close()
    assert isinstance(backend, LedgerBackend)
    assert backend.config == LedgerConfig(path="/srv/ledger", account="ops")


def test_a_registered_backends_section_is_checked_against_its_model(registries: None, tmp_path: Path) -> None:
    TASK_BACKENDS.register("ledger", LedgerConfig)(lambda config, store: LedgerBackend(config))
    settings = _settings(tmp_path, '[tasks]\nbackend = "ledger"\n[tasks.ledger]\npath = "/srv"\nacount = "x"\n')
    with pytest.raises(ConfigError, match=r"^config key tasks\.ledger\.acount: Extra inputs are not permitted$"):
        make_backend(settings, cast(Store, None))


def test_an_unknown_backend_or_section_stops_loading_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config key tasks\.backend: 'ledger' is not one of embedded, release"):
        _settings(tmp_path, '[tasks]\nbackend = "ledger"\n')
    with pytest.raises(ConfigError, match=r"config key tasks: 'relase' is neither a key nor a task backend's section"):
        _settings(tmp_path, '[tasks.relase]\nurl = "https://release.example.test"\n')


def test_a_builtin_backend_says_what_it_needs_when_built(tmp_path: Path) -> None:
    settings = _settings(tmp_path, '[tasks]\nbackend = "webhook"\n[tasks.webhook]\nurl = "http://127.0.0.1:9/hook"\n')
    with pytest.raises(ConfigError, match=r"^config key tasks\.webhook\.secret: backend 'webhook' needs it$"):
        make_backend(settings, cast(Store, None))


def test_a_registered_poller_is_selected_from_the_config(registries: None, tmp_path: Path) -> None:
    class Maildir:
        source = "maildir"

        def __init__(self, folder: str) -> None:
            self.folder = folder

    MAILBOX_SOURCES.register("maildir")(lambda config, pipeline: Maildir(config.folder))
    settings = _settings(tmp_path, '[mailbox]\nsource = "maildir"\nfolder = "/var/mail/rc"\n')
    poller = make_poller(settings, cast(Pipeline, None))
    assert isinstance(poller, Maildir) and poller.folder == "/var/mail/rc"
    with pytest.raises(ConfigError, match=r"config key mailbox\.source: 'mbox' is not one of none, graph, imap"):
        _settings(tmp_path, '[mailbox]\nsource = "mbox"\n')


def test_a_new_file_in_the_package_is_a_part_and_is_imported_only_when_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "more_backends"
    package.mkdir()
    (package / "__init__.py").write_text("from rc_mta.registry import Registry\nPARTS = Registry(__name__, 'x')\n")
    (package / "ledger.py").write_text(
        "from . import PARTS\n\n@PARTS.register('ledger')\ndef create(config, store):\n    return ('ledger', config)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from more_backends import PARTS  # type: ignore[import-not-found]

    parts = cast(Registry, PARTS)
    assert parts.check("ledger") == "ledger" and parts.names() == ["ledger"]
    assert "more_backends.ledger" not in sys.modules  # known by its file, not imported
    assert parts.get("ledger").factory({"k": 1}, None) == ("ledger", {"k": 1})
    assert "more_backends.ledger" in sys.modules
    for name in ("more_backends", "more_backends.ledger"):
        monkeypatch.delitem(sys.modules, name)
