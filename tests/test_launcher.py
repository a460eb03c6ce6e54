"""The forking launcher the suite runs rc-mta through (tests/launcher.py) must be
indistinguishable from ``python -m rc_mta`` in what a test can see: output, exit status,
working directory, environment, signals. Each case runs both ways and compares."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RcMta, wait_for_port
from launcher import LaunchedProcess, launcher


def interpreter(rc: RcMta, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rc_mta", "--config", str(rc.config_path), *args],
        cwd=rc.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args",
    [
        ("task", "show", "t-0000000000"),  # an error: one line on stderr, status 1
        ("task", "list", "--no-such-flag"),  # a usage error: argparse's status 2
        ("task", "list", "--json"),  # output on stdout, status 0
    ],
)
def test_a_command_gives_the_same_output_and_status_as_a_new_interpreter(
    fresh_rc: RcMta, args: tuple[str, ...]
) -> None:
    fresh_rc.write_config()
    interpreter(fresh_rc, "task", "list")  # the store exists before either runs

    forked = fresh_rc.cli(*args, check=False)
    started = interpreter(fresh_rc, *args)

    assert (forked.returncode, forked.stdout, forked.stderr) == (started.returncode, started.stdout, started.stderr)


def test_the_working_directory_and_the_environment_are_the_callers(fresh_rc: RcMta, tmp_path: Path) -> None:
    fresh_rc.write_config()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A relative store path is read from the working directory, and the environment
    # overrides the file: both must be the caller's, not the forking process's.
    env = {**os.environ, "RC_MTA_STORE__URL": "sqlite:///relative.db"}

    added = launcher().run(
        ["--config", str(fresh_rc.config_path), "task", "add", "--title", "here", "--owner", "a@example.com"],
        cwd=elsewhere,
        env=env,
    )

    assert added.returncode == 0, added.stderr
    assert (elsewhere / "relative.db").is_file()
    assert not (fresh_rc.workdir / "rc-mta.db").exists()


def test_a_served_rc_mta_is_its_own_process_and_stops_on_sigterm_with_status_0(fresh_rc: RcMta) -> None:
    fresh_rc.start()
    assert fresh_rc.proc is not None
    pidfile = fresh_rc.workdir / "var" / "rc-mta.pid"

    written = pidfile.read_text().strip()
    signalled = fresh_rc.cli("log-level", "trace")  # by its pid file, which it checks is rc-mta's
    fresh_rc.proc.send_signal(signal.SIGTERM)
    code = fresh_rc.proc.wait(30)

    assert written == str(fresh_rc.proc.pid) != str(os.getpid())
    assert signalled.returncode == 0
    assert code == 0
    assert not pidfile.exists()
    fresh_rc.proc = None


def test_a_killed_server_reports_the_signal_as_popen_does(fresh_rc: RcMta) -> None:
    fresh_rc.write_config()
    with open(fresh_rc.log_path, "ab") as log:
        child = launcher().popen(
            ["--config", str(fresh_rc.config_path), "serve"], cwd=fresh_rc.workdir, stdout=log.fileno()
        )
    wait_for_port(fresh_rc.smtp_port, child)
    assert child.poll() is None

    child.kill()

    assert child.wait(30) == -signal.SIGKILL


def test_a_command_that_changes_what_an_interpreter_reads_at_start_gets_a_new_interpreter(tmp_path: Path) -> None:
    same = launcher().popen(["--version"], cwd=tmp_path, stdout=subprocess.DEVNULL)
    new_zone = launcher().popen(
        ["--version"], cwd=tmp_path, env={**os.environ, "TZ": "Pacific/Auckland"}, stdout=subprocess.DEVNULL
    )
    asked = launcher().popen(
        ["--version"], cwd=tmp_path, env={**os.environ, "RC_MTA_TEST_LAUNCHER": "exec"}, stdout=subprocess.DEVNULL
    )

    assert isinstance(same, LaunchedProcess)
    assert isinstance(new_zone, subprocess.Popen) and isinstance(asked, subprocess.Popen)
    assert same.wait(60) == new_zone.wait(60) == asked.wait(60) == 0
