"""A CLI call imports what its command uses and nothing more (issue 17: ``task show`` in
0.3 s). Counted in modules, not seconds: which modules a command loaded is the same on any
machine, and each of these costs tens of milliseconds on every call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RcMta

# What serving mail needs and a store command does not: the reply reader, the SMTP and HTTP
# servers, the pipeline and its checks, outbound mail, and the settings library we replaced.
NOT_FOR_STORE_COMMANDS = (
    "rc_mta.reading",
    "rc_mta.machine_mail",
    "rc_mta.app",
    "rc_mta.api",
    "rc_mta.pipeline",
    "rc_mta.inbound",
    "rc_mta.checks",
    "rc_mta.outbound",
    "rc_mta.request_mail",
    "aiosmtpd",
    "aiohttp",
    "dkim",
    "dns.resolver",
    "pydantic_settings",
)
# ``--help`` needs neither the config's models nor the store's engine, nor an event loop.
NOT_FOR_HELP = ("pydantic", "sqlalchemy", "asyncio", "rc_mta.config", "rc_mta.store")


def _run(rc: RcMta, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``rc-mta ARGS`` as the console script does, and list the modules it had loaded."""
    listing = rc.workdir / "modules.json"
    probe = (
        "import json, sys\n"
        "from rc_mta.cli import main\n"
        "try:\n"
        f"    code = main({[*args]!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"open({str(listing)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=rc.workdir, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result, set(json.loads(Path(listing).read_text()))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize("command", ["show", "list"])
def test_task_commands_load_the_store_and_not_the_service(fresh_rc: RcMta, command: str) -> None:
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()
    args = ("task", "show", task_id) if command == "show" else ("task", "list")

    result, modules = _run(fresh_rc, "--config", str(fresh_rc.config_path), *args)

    assert task_id in result.stdout
    assert {"rc_mta.store", "rc_mta.config"} <= modules  # the probe saw the command's own imports
    assert _loaded(modules, NOT_FOR_STORE_COMMANDS) == []


def test_help_loads_neither_config_models_nor_store(fresh_rc: RcMta) -> None:
    result, modules = _run(fresh_rc, "--help")

    assert "task" in result.stdout and "serve" in result.stdout
    assert _loaded(modules, NOT_FOR_HELP) == []
