"""Mailbox mode over IMAP against a real Dovecot: IDLE latency and pool throughput, in one run.

Why: in mailbox mode a reply reaches rc-mta only through the IMAP poller, so two numbers
matter that the SMTP bench cannot show. How soon after a reply lands in the mailbox is its
task completed, while the poller waits in IDLE (the goal: p99 under 2 s, far sooner than the
full sync every ``sync_interval``)? And how many messages per second does the poller work
through a backlog with one connection, and with a pool of four?

What: start a throw-away Dovecot and NSD (the tests' own starters, from tests/), prepare
every task and request in-process before timing, then

1. run rc-mta with ``sync_interval`` 60 s and ``pool_size`` 1, wait until it idles, APPEND
   the replies one at a time with a short gap, and time each from the APPEND's completion
   until the task is completed in the store (polled every 10 ms, same SQLite file);
2. for pool sizes 1 and 4: APPEND M replies first, start rc-mta with a start-up delay, and
   time from the end of that delay until all M tasks are completed.

    python bench/imap.py [--replies N] [--messages M] [--json]

With ``--json`` the last line is one JSON object: ``idle_p50_ms``, ``idle_p99_ms``,
``idle_max_ms``, ``idle_goal_met``, ``pool1_msgs_per_s``, ``pool4_msgs_per_s``, ``speedup``.
Exit status 1 when a task is left incomplete, 2 when Dovecot or NSD is missing. Dovecot runs
as in the tests: as root, the mail belongs to ``nobody``.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import functools
import imaplib
import json
import math
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dns_fixtures import free_udp_tcp_port, stop_nsd  # type: ignore[import-not-found]
from dnsserver import NsdServer  # type: ignore[import-not-found]
from dovecot import Dovecot, available  # type: ignore[import-not-found]
from mailclient import reply_message  # type: ignore[import-not-found]
from processes import stop_process  # type: ignore[import-not-found]

from rc_mta.app import Service
from rc_mta.config import load_settings

REPLY_DOMAIN = "reply.bench.test"
OWNER = "alice@example.com"
TRUSTED_MX = "mx.example.com"
# What the receiving MX in front of the mailbox stamps on a good reply; rc-mta believes it
# because TRUSTED_MX is in [mailbox] trusted_authserv_ids.
STAMP = f"{TRUSTED_MX}; spf=pass smtp.mailfrom={OWNER}; dmarc=pass header.from=example.com"
IDLE_GOAL_MS = 2000.0
SYNC_INTERVAL_S = 60.0
STARTUP_DELAY_S = 3.0
POLL_S = 0.01
TASK_TIMEOUT_S = 90.0  # past the 60 s sync: a reply IDLE missed still completes, just late


@dataclass(frozen=True)
class Reply:
    """One prepared reply (wire bytes, CRLF) and the task it should complete."""

    task_id: str
    data: bytes


@dataclass(frozen=True)
class Bed:
    """What every rc-mta run of this bench shares: workdir, store, signing key, Dovecot, NSD."""

    workdir: Path
    secret: str
    imap_port: int
    imap_username: str
    imap_password: str
    dns_port: int


@dataclass(frozen=True)
class PoolRun:
    pool_size: int
    messages: int
    elapsed_s: float

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else math.nan


# rc-mta ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(bed: Bed, name: str, smtp_port: int, http_port: int, pool_size: int, startup_delay: float) -> Path:
    path = bed.workdir / f"{name}.toml"
    path.write_text(
        "\n".join(
            [
                "[inbound]",
                f'listen = "127.0.0.1:{smtp_port}"',
                f'reply_domain = "{REPLY_DOMAIN}"',
                'hostname = "mx.reply.bench.test"',
                "[signing]",
                f'keys = {{ 1 = "{bed.secret}" }}',
                "active_key = 1",
                'request_ttl = "1d"',
                "[outbound]",
                'transport = "outbox"',
                f"outbox_dir = {json.dumps(str(bed.workdir / 'outbox'))}",
                "[store]",
                f"url = {json.dumps('sqlite:///' + str(bed.workdir / 'rc-mta.db'))}",
                "[http]",
                f'listen = "127.0.0.1:{http_port}"',
                "[mailbox]",
                'source = "imap"',
                'host = "127.0.0.1"',
                f"port = {bed.imap_port}",
                "tls = false",
                f"username = {json.dumps(bed.imap_username)}",
                f"password = {json.dumps(bed.imap_password)}",
                f"sync_interval = {SYNC_INTERVAL_S}",
                f"startup_delay = {startup_delay}",
                f"pool_size = {pool_size}",
                'disposition = "move"',
                f'trusted_authserv_ids = ["{TRUSTED_MX}"]',
                "[checks.dmarc]",
                'policy = "tag"',
                "[dns]",
                'nameservers = ["127.0.0.1"]',
                f"port = {bed.dns_port}",
                'timeout = "2s"',
                "[log]",
                'level = "info"',
                "",
            ]
        )
    )
    return path


class RcMta:
    """rc-mta serving as a subprocess, polling the bench's Dovecot."""

    def __init__(self, bed: Bed, name: str, pool_size: int, startup_delay: float) -> None:
        self.name = name
        self.smtp_port, self.http_port = free_port(), free_port()
        self.config = write_config(bed, name, self.smtp_port, self.http_port, pool_size, startup_delay)
        self.log_path = bed.workdir / f"{name}.log"
        self.workdir = bed.workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start and wait until SMTP and HTTP listen; the monotonic time they did, which is
        when the poller's start-up delay began (it is created right after the listeners)."""
        argv = [sys.executable, "-m", "rc_mta", "--config", str(self.config), "serve"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        for port in (self.smtp_port, self.http_port):
            wait_until(functools.partial(self._listens, port), 30.0, f"{self.name} to listen on {port}")
        return time.monotonic()

    def _listens(self, port: int) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def idling(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        found = re.search(r'^rc_mta_poller_idle\{source="imap"\} (\S+)$', text, re.M)
        return found is not None and float(found.group(1)) == 1.0

    def stop(self) -> None:
        stop_process(self.proc)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = POLL_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# Preparation (untimed) ---------------------------------------------------------------


async def prepare(service: Service, count: int, label: str) -> list[Reply]:
    """``count`` tasks owned by OWNER, a request for each, and OWNER's stamped reply to it."""
    replies = []
    for i in range(count):
        task = service.store.add_task(f"{label} #{i}", OWNER, time.time())
        sent = await service.send_request(task.id)
        message = reply_message(sent.complete_address, "Looks good, ship it", headers={"Authentication-Results": STAMP})
        replies.append(Reply(task.id, message.as_bytes(policy=email.policy.SMTP)))
    return replies


# IMAP client side --------------------------------------------------------------------


def append(conn: imaplib.IMAP4, reply: Reply) -> None:
    status, data = conn.append("INBOX", "", imaplib.Time2Internaldate(time.time()), reply.data)
    if status != "OK":
        raise RuntimeError(f"APPEND failed: {status} {data!r}")


def inbox_count(dovecot: Any) -> int:
    """Messages in INBOX not yet filed away (read-only: the poller sees no difference)."""
    conn: imaplib.IMAP4 = dovecot.client()
    try:
        conn.select("INBOX", readonly=True)
        _, data = conn.uid("SEARCH", "UNDELETED")
        return len((data[0] or b"").split())
    finally:
        conn.logout()


# Measurements (timed) ----------------------------------------------------------------


def completed(service: Service, task_id: str) -> bool:
    task = service.store.get_task(task_id)
    return task is not None and task.status == "completed"


def measure_idle(bed: Bed, dovecot: Any, service: Service, replies: Sequence[Reply], gap: float) -> list[float]:
    """Latency (ms) from each APPEND's completion to its task completed, rc-mta idling between."""
    rc = RcMta(bed, "rc-mta-idle", pool_size=1, startup_delay=0)
    conn: imaplib.IMAP4 = dovecot.client()
    latencies = []
    try:
        rc.start()
        wait_until(rc.idling, 30.0, "the poller to idle", interval=0.1)
        for i, reply in enumerate(replies):
            append(conn, reply)
            appended = time.perf_counter()
            wait_until(functools.partial(completed, service, reply.task_id), TASK_TIMEOUT_S, f"reply {i}")
            latencies.append((time.perf_counter() - appended) * 1000)
            time.sleep(gap)
        wait_until(lambda: inbox_count(dovecot) == 0, 30.0, "the replies to be filed", interval=0.1)
    except Exception:
        print(f"rc-mta log tail:\n{rc.log_tail()}", file=sys.stderr)
        raise
    finally:
        conn.logout()
        rc.stop()
    return latencies


def measure_pool(bed: Bed, dovecot: Any, service: Service, replies: Sequence[Reply], pool_size: int) -> PoolRun:
    """Seconds from the poller's start until every pre-filled reply's task is completed."""
    if (left := inbox_count(dovecot)) != 0:
        raise RuntimeError(f"INBOX holds {left} message(s) before pool run {pool_size}")
    conn: imaplib.IMAP4 = dovecot.client()
    try:
        for reply in replies:
            append(conn, reply)
    finally:
        conn.logout()
    pending = {reply.task_id for reply in replies}

    def all_done() -> bool:
        done = {task.id for task in service.store.list_tasks() if task.status == "completed"}
        return pending <= done

    rc = RcMta(bed, f"rc-mta-pool{pool_size}", pool_size=pool_size, startup_delay=STARTUP_DELAY_S)
    try:
        began = rc.start() + STARTUP_DELAY_S
        wait_until(all_done, TASK_TIMEOUT_S + len(replies), f"{len(replies)} tasks with pool_size {pool_size}")
        elapsed = time.monotonic() - began
        # Let the last replies be filed, so the next run starts from an empty INBOX.
        wait_until(lambda: inbox_count(dovecot) == 0, 30.0, "the replies to be filed", interval=0.1)
    except Exception:
        print(f"rc-mta log tail:\n{rc.log_tail()}", file=sys.stderr)
        raise
    finally:
        rc.stop()
    return PoolRun(pool_size, len(replies), elapsed)


# Report ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def finite(value: float, digits: int) -> float | None:
    """Rounded, or None (JSON null) for NaN, which JSON cannot say."""
    return round(value, digits) if math.isfinite(value) else None


def report(latencies: Sequence[float], gap: float, runs: Sequence[PoolRun], as_json: bool) -> None:
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    worst = max(latencies) if latencies else math.nan
    goal_met = p99 < IDLE_GOAL_MS
    one, four = runs
    speedup = four.msgs_per_s / one.msgs_per_s if one.msgs_per_s else math.nan

    print(f"\nIDLE: {len(latencies)} replies APPENDed one at a time, {gap:.1f}s apart; pool_size 1, sync 60s")
    print(f"  APPEND done -> task completed  p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   max {worst:8.1f} ms")
    print(f"  goal p99 < {IDLE_GOAL_MS / 1000:.0f} s: {'met' if goal_met else 'NOT met'}")
    print(f"\nPool: {one.messages} replies waiting in INBOX; from the poller's start to all tasks completed")
    for run in runs:
        print(f"  pool_size {run.pool_size}: {run.elapsed_s:7.2f} s   {run.msgs_per_s:7.1f} msgs/s")
    print(f"  speed-up pool 4 / pool 1: {speedup:.2f}x")
    if as_json:
        figures = {
            "idle_p50_ms": finite(p50, 1),
            "idle_p99_ms": finite(p99, 1),
            "idle_max_ms": finite(worst, 1),
            "idle_goal_met": goal_met,
            "pool1_msgs_per_s": finite(one.msgs_per_s, 1),
            "pool4_msgs_per_s": finite(four.msgs_per_s, 1),
            "speedup": finite(speedup, 2),
        }
        print(json.dumps(figures))


def run(replies: int, messages: int, gap: float, as_json: bool) -> int:
    if not available() or shutil.which("nsd") is None:
        print("needs Dovecot (/usr/sbin/dovecot, dovecot-imapd) and NSD (nsd)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rc-mta-bench-imap-") as tmp:
        workdir = Path(tmp)
        (workdir / "nsd").mkdir()
        nsd: Any = NsdServer(workdir / "nsd", free_udp_tcp_port())
        dovecot: Any = Dovecot(workdir / "dovecot")
        service: Service | None = None
        try:
            nsd.start()
            dovecot.start()
            bed = Bed(workdir, secrets.token_hex(32), dovecot.port, dovecot.username, dovecot.password, nsd.port)
            config = write_config(bed, "prepare", free_port(), free_port(), pool_size=1, startup_delay=0)
            service = Service.open(load_settings(str(config)))  # in-process: same store and key as rc-mta
            print(f"preparing {replies + 2 * messages} tasks and requests ...", file=sys.stderr)
            idle_replies = asyncio.run(prepare(service, replies, "Idle"))
            pool_replies = {size: asyncio.run(prepare(service, messages, f"Pool{size}")) for size in (1, 4)}

            print(f"IDLE latency: {replies} replies ...", file=sys.stderr)
            latencies = measure_idle(bed, dovecot, service, idle_replies, gap)
            runs = []
            for size, prepared in pool_replies.items():
                print(f"pool_size {size}: {messages} replies ...", file=sys.stderr)
                runs.append(measure_pool(bed, dovecot, service, prepared, size))
        except (RuntimeError, TimeoutError) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        finally:
            if service is not None:
                service.close()
            dovecot.cleanup()
            stop_nsd(nsd)
    report(latencies, gap, runs, as_json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replies", type=int, default=50, help="replies for the IDLE latency (default 50)")
    parser.add_argument("--messages", type=int, default=200, help="pre-filled replies per pool run (default 200)")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between IDLE replies (default 0.3)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last line")
    args = parser.parse_args(argv)
    if args.replies < 1 or args.messages < 1 or args.gap < 0:
        parser.error("--replies and --messages must be at least 1, --gap not negative")
    return run(args.replies, args.messages, args.gap, args.json)


if __name__ == "__main__":
    sys.exit(main())
