"""Self-healing: systemd's watchdog hears from rc-mta only while its event loop runs, and
/healthz fails once the loop has been late.

rc-mta runs as a subprocess with a real Unix datagram socket as ``$NOTIFY_SOCKET`` and
``$WATCHDOG_USEC`` set, as systemd starts it. To hold its loop without a hook of our own,
the tests use a stall that happens in production: rc-mta logs to stderr on the loop, and
a log reader that stops reading (journald stuck, a full ``docker logs`` pipe) blocks the
write once the pipe is full. Only a ping sent from the loop itself stops then.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from conftest import ROOT, RcMta, wait_for_port
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from rc_mta.watchdog import LoopLag, watchdog_interval

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s
PING_EVERY = WATCHDOG_USEC / 2_000_000
MAX_LOOP_LAG = 1.0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket bound where systemd's would be: what rc-mta tells systemd arrives here."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        yield listener


def serve(rc: RcMta, listener: socket.socket, stderr: int) -> subprocess.Popen[bytes]:
    """``rc-mta serve`` as systemd starts it with ``WatchdogSec=1s``."""
    rc.settings["http"]["max_loop_lag"] = f"{MAX_LOOP_LAG}s"
    rc.write_config()
    env = {**os.environ, "NOTIFY_SOCKET": listener.getsockname(), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    rc.proc = subprocess.Popen(
        [sys.executable, "-m", "rc_mta", "--config", str(rc.config_path), "serve"],
        cwd=rc.workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    return rc.proc


def next_state(listener: socket.socket, timeout: float) -> list[bytes] | None:
    """The assignments of the next notification, or None when none came within ``timeout``."""
    listener.settimeout(timeout)
    try:
        return listener.recv(4096).split(b"\n")
    except TimeoutError:
        return None


def wait_for_ping(listener: socket.socket) -> None:
    for _ in range(40):
        state = next_state(listener, 10)
        assert state is not None, "no notification from rc-mta"
        if b"WATCHDOG=1" in state:
            return
    raise AssertionError("no WATCHDOG=1 among 40 notifications")


def test_systemd_hears_ready_then_a_watchdog_ping_every_half_period(fresh_rc: RcMta, tmp_path: Path) -> None:
    with notify_socket(tmp_path) as listener:
        serve(fresh_rc, listener, subprocess.DEVNULL)

        first = next_state(listener, 20)
        assert first is not None and b"READY=1" in first
        pings = [next_state(listener, 10 * PING_EVERY) for _ in range(4)]

    assert pings == [[b"WATCHDOG=1"]] * 4


def test_a_stuck_loop_stops_the_pings_and_healthz_then_reports_the_lag(fresh_rc: RcMta, tmp_path: Path) -> None:
    fresh_rc.settings["log"] = {"level": "trace"}  # every SMTP line is logged, on the loop
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: fills fast
    reading = threading.Event()
    reading.set()

    def log_reader() -> None:
        """rc-mta's stderr, read as journald would, except while the test holds it."""
        while reading.wait():
            try:
                if not os.read(read_end, 65536):
                    return
            except OSError:
                return

    threading.Thread(target=log_reader, daemon=True).start()
    try:
        with notify_socket(tmp_path) as listener:
            proc = serve(fresh_rc, listener, write_end)
            wait_for_port(fresh_rc.smtp_port, proc)
            wait_for_port(int(fresh_rc.http_url.rsplit(":", 1)[1]), proc)
            wait_for_ping(listener)
            status, _ = get(fresh_rc.http_url + "/healthz")
            assert status == 200

            reading.clear()  # the log reader stops reading: the pipe fills up
            with ExitStack() as clients:
                silent = None
                for _ in range(200):
                    # Each its own session (a session cap on NOOPs must not end the noise).
                    client = clients.enter_context(socket.create_connection(("127.0.0.1", fresh_rc.smtp_port), 5))
                    client.sendall(b"NOOP " + b"x" * 500 + b"\r\n")
                    silent = next_state(listener, 4 * PING_EVERY)
                    if silent is None:
                        break
                assert silent is None, "the pings went on while rc-mta could not log"
                assert proc.poll() is None  # alive, only its loop is stuck
                # Still nothing: the loop waits on the log pipe, and nobody else pings.
                assert next_state(listener, 6 * PING_EVERY) is None

                reading.set()  # the log reader reads again: the loop runs on
                wait_for_ping(listener)
                status, body = get(fresh_rc.http_url + "/healthz")
                metrics_status, metrics_body = get(fresh_rc.http_url + "/metrics")
    finally:
        reading.set()
        os.close(write_end)

    report = json.loads(body)
    assert status == 503, report
    assert report["status"] == "failing" and report["loop_lag_seconds"] > MAX_LOOP_LAG
    assert report["error"]["code"] == "unavailable"
    assert [d["field"] for d in report["error"]["details"]] == ["loop_lag_seconds"]
    assert metrics_status == 200
    (gauge,) = [
        s.value
        for family in text_string_to_metric_families(metrics_body.decode())
        for s in family.samples
        if s.name == "rc_mta_event_loop_lag_seconds"
    ]
    assert gauge > MAX_LOOP_LAG


def test_no_pings_when_systemd_watches_another_process_or_nothing() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


def test_the_unit_restarts_a_service_whose_pings_stop() -> None:
    unit = (ROOT / "systemd" / "rc-mta.service").read_text()

    assert re.search(r"^Type=notify$", unit, re.M)
    assert re.search(r"^WatchdogSec=\d+s$", unit, re.M)
    assert re.search(r"^Restart=on-failure$", unit, re.M)  # a watchdog kill counts as a failure


@pytest.fixture(autouse=True)
def _no_inherited_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test runner started by systemd must not hand its own watchdog to rc-mta."""
    monkeypatch.delenv("WATCHDOG_PID", raising=False)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 2.0)), max_size=60))
def test_the_lag_reported_is_the_worst_of_the_window(steps: list[tuple[float, float]]) -> None:
    # The probe keeps only the samples that may still be the worst; what it reports must be
    # what a scan of every sample of the window would say.
    now = [1000.0]
    probe = LoopLag(interval=0.1, window=5.0, clock=lambda: now[0])
    seen: list[tuple[float, float]] = []
    for advance, lag in steps:
        now[0] += advance
        probe.record(now[0], lag)
        seen.append((now[0], lag))
        assert probe.worst() == max(late for at, late in seen if at >= now[0] - 5.0)
    now[0] += 6.0
    assert probe.worst() == 0.0  # the window moved past every sample
