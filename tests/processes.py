"""Stopping the server processes the tests (and bench/imap.py) start."""

from __future__ import annotations

import subprocess
from typing import Any

from launcher import LaunchedProcess


def stop_process(proc: subprocess.Popen[Any] | LaunchedProcess | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; always reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
