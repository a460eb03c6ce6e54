"""Throughput of rc-mta against a bare aiosmtpd sink, in one run.

Why: rc-mta does real work before it answers 250 (verify the signed token at RCPT, parse
the reply, claim the request, complete the task), so the useful question is how much that
costs next to an SMTP server that does nothing. What: start rc-mta (embedded SQLite store)
and a bare aiosmtpd sink as subprocesses on loopback, prepare N tasks and requests before
timing, then send the same N valid replies (same bytes, same envelopes) to each at the
same concurrency, over connections reused like an MTA's. Print both throughputs, their
ratio, p50/p99 reply-to-completion latency (MAIL FROM until the final 250 after DATA,
which rc-mta sends only once the task is completed) and the servers' peak RSS.

    python bench/throughput.py [--messages N] [--concurrency C] [--json]

With ``--json`` the last line is one JSON object: ``rc_msgs_per_s``, ``sink_msgs_per_s``,
``ratio``, ``p50_ms``, ``p99_ms``, ``peak_rss_mb``. Exit status 1 when any reply is not
accepted or any task is left incomplete. Linux only (peak RSS is ``VmHWM`` from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import json
import math
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib

from rc_mta.app import Service
from rc_mta.config import load_settings

REPLY_DOMAIN = "reply.bench.test"
CLIENT_HOSTNAME = "mta.bench.test"  # set explicitly: the default is a getfqdn() lookup per connection

# The sink: aiosmtpd with a handler that accepts everything. It advertises PIPELINING as
# rc-mta does, so the client speaks exactly the same protocol to both servers.
SINK_SCRIPT = """
import asyncio, signal, sys
from aiosmtpd.smtp import SMTP

class Sink:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(
        lambda: SMTP(Sink(), hostname="sink.bench.test", enable_SMTPUTF8=True, decode_data=False),
        "127.0.0.1",
        int(sys.argv[1]),
        reuse_address=True,
    )
    await stop.wait()
    server.close()
    await server.wait_closed()

asyncio.run(main())
"""


@dataclass(frozen=True)
class Reply:
    """One prepared reply: its envelope and wire bytes, and the task it should complete."""

    task_id: str
    mail_from: str
    rcpt_to: str
    data: bytes


@dataclass
class RunResult:
    """What one timed run against one server measured."""

    name: str
    messages: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return len(self.latencies_ms)

    @property
    def msgs_per_s(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the accepted messages' latencies, in ms."""
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]


# Servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(name: str, port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s:\n{tail(log_path)}")


def start_server(name: str, argv: list[str], port: int, workdir: Path) -> subprocess.Popen[bytes]:
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(name, port, proc, log_path)
    return proc


def stop_server(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB; NaN where /proc has none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # reported in kB
    except OSError:
        pass
    return float("nan")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def write_config(workdir: Path, port: int) -> Path:
    path = workdir / "rc-mta.toml"
    path.write_text(
        "\n".join(
            [
                "[inbound]",
                f'listen = "127.0.0.1:{port}"',
                f'reply_domain = "{REPLY_DOMAIN}"',
                'hostname = "mx.reply.bench.test"',
                "[signing]",
                f'keys = {{ 1 = "{secrets.token_hex(32)}" }}',
                "active_key = 1",
                'request_ttl = "1d"',
                "[outbound]",
                'transport = "outbox"',
                f"outbox_dir = {json.dumps(str(workdir / 'outbox'))}",
                "[store]",
                f"url = {json.dumps('sqlite:///' + str(workdir / 'rc-mta.db'))}",
                "[http]",
                'listen = ""',
                "[log]",
                'level = "warning"',
                "",
            ]
        )
    )
    return path


# Preparation (untimed) ----------------------------------------------------------------


async def prepare(service: Service, count: int) -> list[Reply]:
    """N tasks, one request each, and the owner's reply to each request's Complete address."""
    replies = []
    for i in range(count):
        owner = f"owner{i}@example.com"
        task = service.store.add_task(f"Approve deploy #{i}", owner, time.time())
        sent = await service.send_request(task.id)
        message = EmailMessage()
        message["From"] = owner
        message["To"] = sent.complete_address
        message["Subject"] = f"Complete: Approve deploy #{i}"
        message["Message-ID"] = make_msgid(domain="example.com")
        message.set_content("Ship it")
        replies.append(Reply(task.id, owner, sent.complete_address, message.as_bytes(policy=email.policy.SMTP)))
    return replies


# Sending (timed) ----------------------------------------------------------------------


async def connect(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, local_hostname=CLIENT_HOSTNAME, start_tls=False, timeout=60
    )
    await client.connect()
    await client.ehlo()
    return client


async def send_all(name: str, port: int, replies: Sequence[Reply], concurrency: int) -> RunResult:
    """C workers, each on its own connection, take the next reply until none are left."""
    clients = [await connect(port) for _ in range(min(concurrency, len(replies)))]
    result = RunResult(name, len(replies), 0.0)
    queue: asyncio.Queue[Reply] = asyncio.Queue()
    for reply in replies:
        queue.put_nowait(reply)

    async def worker(index: int) -> None:
        while True:
            try:
                reply = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            client = clients[index]
            began = time.perf_counter()
            try:
                # sendmail raises on any refusal: MAIL, RCPT, or the final answer after DATA.
                await client.sendmail(reply.mail_from, [reply.rcpt_to], reply.data)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients[0]
                result.errors[f"{refused.code} {refused.message}"] += 1
                continue
            except aiosmtplib.SMTPResponseException as exc:
                result.errors[f"{exc.code} {exc.message}"] += 1
                continue
            except (aiosmtplib.SMTPException, OSError) as exc:
                result.errors[f"connection: {exc!r}"] += 1
                client.close()
                clients[index] = await connect(port)
                continue
            result.latencies_ms.append((time.perf_counter() - began) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(len(clients))))
    result.elapsed_s = time.perf_counter() - started
    for client in clients:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
    return result


# Report -------------------------------------------------------------------------------


def print_table(rc: RunResult, sink: RunResult, completed: int, rc_rss: float, sink_rss: float, c: int) -> None:
    def row(label: str, a: str, b: str) -> None:
        print(f"{label:<28}{a:>14}{b:>14}")

    print(f"\n{rc.messages} valid replies, {c} concurrent connections, loopback")
    row("", "rc-mta", "sink")
    row("accepted (250)", f"{rc.accepted}", f"{sink.accepted}")
    row("errors", f"{sum(rc.errors.values())}", f"{sum(sink.errors.values())}")
    row("wall time (s)", f"{rc.elapsed_s:.3f}", f"{sink.elapsed_s:.3f}")
    row("throughput (msgs/s)", f"{rc.msgs_per_s:.1f}", f"{sink.msgs_per_s:.1f}")
    row("latency p50 (ms)", f"{rc.percentile(50):.2f}", f"{sink.percentile(50):.2f}")
    row("latency p99 (ms)", f"{rc.percentile(99):.2f}", f"{sink.percentile(99):.2f}")
    row("peak RSS (MiB)", f"{rc_rss:.1f}", f"{sink_rss:.1f}")
    ratio = rc.msgs_per_s / sink.msgs_per_s if sink.msgs_per_s else float("nan")
    print(f"ratio rc-mta / sink: {ratio:.3f}")
    print(f"tasks completed in the store: {completed}/{rc.messages}")
    for result in (rc, sink):
        for text, count in result.errors.most_common(5):
            print(f"{result.name} error x{count}: {text}", file=sys.stderr)


def finite(value: float, digits: int) -> float | None:
    """Rounded, or None (JSON null) for NaN: json.dumps would write NaN, which is not JSON."""
    return round(value, digits) if math.isfinite(value) else None


async def run(messages: int, concurrency: int, as_json: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="rc-mta-bench-") as tmp:
        workdir = Path(tmp)
        rc_port, sink_port = free_port(), free_port()
        settings = load_settings(str(write_config(workdir, rc_port)))
        service = Service.open(settings)
        rc_proc: subprocess.Popen[bytes] | None = None
        sink_proc: subprocess.Popen[bytes] | None = None
        try:
            print(f"preparing {messages} tasks and requests ...", file=sys.stderr)
            replies = await prepare(service, messages)
            rc_argv = [sys.executable, "-m", "rc_mta", "--config", str(workdir / "rc-mta.toml"), "serve"]
            rc_proc = start_server("rc-mta", rc_argv, rc_port, workdir)
            sink_proc = start_server("sink", [sys.executable, "-c", SINK_SCRIPT, str(sink_port)], sink_port, workdir)

            print("sending to rc-mta ...", file=sys.stderr)
            rc = await send_all("rc-mta", rc_port, replies, concurrency)
            completed = sum(
                1
                for reply in replies
                if (task := service.store.get_task(reply.task_id)) is not None and task.status == "completed"
            )
            print("sending to sink ...", file=sys.stderr)
            sink = await send_all("sink", sink_port, replies, concurrency)

            rc_rss, sink_rss = peak_rss_mb(rc_proc.pid), peak_rss_mb(sink_proc.pid)
            if rc_proc.poll() is not None:
                print(f"rc-mta exited during the run:\n{tail(workdir / 'rc-mta.log')}", file=sys.stderr)
        finally:
            stop_server(rc_proc)
            stop_server(sink_proc)
            service.close()

        print_table(rc, sink, completed, rc_rss, sink_rss, concurrency)
        ok = rc.accepted == messages and completed == messages and sink.accepted == messages
        if not ok:
            print(f"FAILED: rc-mta log tail:\n{tail(workdir / 'rc-mta.log')}", file=sys.stderr)
        if as_json:
            figures = {
                "rc_msgs_per_s": finite(rc.msgs_per_s, 1),
                "sink_msgs_per_s": finite(sink.msgs_per_s, 1),
                "ratio": finite(rc.msgs_per_s / sink.msgs_per_s if sink.msgs_per_s else math.nan, 4),
                "p50_ms": finite(rc.percentile(50), 2),
                "p99_ms": finite(rc.percentile(99), 2),
                "peak_rss_mb": finite(rc_rss, 1),
            }
            print(json.dumps(figures))
        return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=500, help="replies sent to each server (default 500)")
    parser.add_argument("--concurrency", type=int, default=10, help="concurrent SMTP connections (default 10)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last line")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.concurrency < 1:
        parser.error("--messages and --concurrency must be at least 1")
    return asyncio.run(run(args.messages, args.concurrency, args.json))


if __name__ == "__main__":
    sys.exit(main())
