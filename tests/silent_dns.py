"""Running a few lines of rc-mta where host names never resolve: the system resolver (glibc's
getaddrinfo, which aiohttp calls in a thread) asks a DNS server that takes every query and
never answers. The lines run in a process of their own, in a mount namespace where
/etc/resolv.conf names that server (``unshare``, as root), so nothing else on the machine
sees it; the server listens on port 53 of a loopback address of its own."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import require_server
from dnsserver import BlackHole

# glibc's longest wait for one query (RES_TIMEOUT's cap), once: a look-up that outlives what
# the tests wait for, and still ends (the process waits for the resolver's thread at exit).
RESOLV_CONF = "nameserver {address}\noptions timeout:30 attempts:1\n"


def run_where_names_hang(tmp_path: Path, code: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``code`` (a Python script that prints one JSON object last) with every DNS look-up
    unanswered; its object, with ``"exited_after"``: the seconds the process took in all.
    A script that leaves asyncio's executor a look-up in flight waits for it as it ends (up
    to glibc's 30 s) unless it leaves by ``os._exit``."""
    usable = os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("mount") is not None
    require_server(usable, "root, unshare and mount (util-linux: a resolv.conf of the test's own)")
    address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    hole = BlackHole(address)
    try:
        conf = tmp_path / "resolv.conf"
        conf.write_text(RESOLV_CONF.format(address=address))
        script = tmp_path / "script.py"
        script.write_text(code)
        bind = 'mount --bind "$1" /etc/resolv.conf && exec "$2" "$3"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind, "sh"]
        started = time.monotonic()
        try:
            done = subprocess.run(
                [*command, str(conf), sys.executable, str(script)], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as late:
            raise AssertionError(f"the script did not end within {timeout:g}s: {late.stdout!r}") from None
        exited_after = time.monotonic() - started
    finally:
        hole.close()
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found | {"exited_after": exited_after}
