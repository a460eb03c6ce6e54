"""Throughput of rc-mta doing its production work, against a bare aiosmtpd sink, fairly.

Why: rc-mta does real work before it answers 250 (SPF, FCrDNS, DKIM, DMARC, the signed
token, reading the reply, claiming the request, completing the task), so the useful
question is how much that costs next to an SMTP server that does nothing, measured the
same way on the same machine at the same moment.

What, so that the comparison is fair:

- rc-mta runs as in production: checks on (no exempt network), a real DNS server (NSD,
  serving tests/zones/: SPF, PTR, DKIM and DMARC for corp.test), ``info`` logging, the
  default SQLite store. Clients connect from 127.0.0.2, a non-exempt address whose SPF
  and FCrDNS pass; each reply is a ~3 KiB DKIM-signed answer from the task's owner.
- The load client runs in a process of its own (``--client``), never in a server's.
- Both servers are warmed up, then measured in interleaved rounds (sink, rc-mta, sink,
  rc-mta…); the report gives each figure's median and range over the rounds, and the
  throughput ratio of each round's pair.
- Refusals: forged-token RCPTs per second (MAIL, RCPT with a bad MAC, RSET, repeated),
  against the sink's rate for the same commands: an MX spends most of its life refusing.
- Memory: the servers' RSS while holding 1,000 idle sessions (after EHLO).

    python bench/throughput.py [--messages N] [--refusals F] [--rounds R] [--concurrency C] [--json]

A round's refusals (``--refusals``, default 4,000: over a second each) are many more than its
replies: a few hundred took a fifth of a second, and the ratio moved from 0.7 to 1.9 from
round to round with the machine's other load.

With ``--json`` the last line is one JSON object: ``rc_msgs_per_s``, ``sink_msgs_per_s``,
``ratio``, ``p50_ms``, ``p99_ms``, ``peak_rss_mb`` (medians over the rounds; ``ratio`` is
the median of the per-round ratios), plus ``refusal_ratio`` and ``idle_rss_mb``.
Exit status 1 when any reply is not accepted or any task is left incomplete.
Linux only (RSS from /proc); needs ``nsd`` (scripts/system-deps.sh installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.policy
import json
import math
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

REPLY_DOMAIN = "reply.bench.test"
CLIENT_HOSTNAME = "mail.pass.spf.test"  # 127.0.0.2's PTR name in tests/zones: FCrDNS passes
CLIENT_IP = "127.0.0.2"  # not exempt, and SPF-authorised for corp.test
OWNER = "alice@corp.test"  # DKIM selector "sel", DMARC p=reject
DKIM_KEY = TESTS / "keys" / "good-sel2048.pem"
SIGNED_FIELDS = [b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to", b"references"]
IDLE_SESSIONS = 1000

T = TypeVar("T")

# The sink (bench/sink.py), a process of its own: ``sink_argv(port)``.
SINK = REPO / "bench" / "sink.py"


def sink_argv(port: int) -> list[str]:
    """The command that serves the bare aiosmtpd sink on 127.0.0.1:``port``."""
    return [sys.executable, str(SINK), str(port)]


@dataclass(frozen=True)
class Reply:
    """One prepared reply: its envelope and wire bytes, and the task it should complete."""

    task_id: str
    mail_from: str
    rcpt_to: str
    data: bytes


@dataclass
class RunResult:
    """What one timed run against one server measured (computed in the client process)."""

    name: str
    messages: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    server_cpu_s: float = math.nan  # the server's CPU time during the run, measured by the driver

    @property
    def cpu_ms_each(self) -> float:
        """Server CPU per message: unlike throughput, hardly moved by other load on the machine."""
        return self.server_cpu_s * 1000 / self.messages if self.messages else math.nan

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

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "messages": self.messages,
            "elapsed_s": self.elapsed_s,
            "latencies_ms": self.latencies_ms,
            "errors": dict(self.errors),
        }

    @classmethod
    def of(cls, data: dict[str, Any]) -> RunResult:
        return cls(data["name"], data["messages"], data["elapsed_s"], data["latencies_ms"], Counter(data["errors"]))


# Servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def workdir_with_dns(prefix: str) -> Iterator[tuple[Path, Any]]:
    """A bench run's temporary directory, and NSD serving tests/zones from it (the benches
    that drive rc-mta's path in process share this with this one)."""
    sys.path.insert(0, str(TESTS))
    from dnsserver import NsdServer

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        (workdir / "nsd").mkdir()
        dns = NsdServer(workdir / "nsd", free_port())
        dns.start()
        try:
            yield workdir, dns
        finally:
            dns.stop()


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


def proc_status_mb(pid: int, key: str) -> float:
    """A ``/proc/PID/status`` size (``VmHWM`` peak, ``VmRSS`` now), in MiB; NaN where none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024  # reported in kB
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (user + system, all threads), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def write_config(workdir: Path, port: int, dns_port: int) -> Path:
    """rc-mta as in production: every check on, real DNS, info logging, default store.
    Only the rate limits and per-client session caps are off: the bench is one client
    address sending thousands, on a thousand idle sessions and on long refusal sessions."""
    path = workdir / "rc-mta.toml"
    path.write_text(
        "\n".join(
            [
                "[inbound]",
                f'listen = "127.0.0.1:{port}"',
                f'reply_domain = "{REPLY_DOMAIN}"',
                'hostname = "mx.reply.bench.test"',
                'trusted_relays = ["127.0.0.1/32"]',
                "max_sessions = 5000",
                "max_sessions_per_ip = 5000",
                "max_idle_commands = 1000000000",
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
                "[dns]",
                'nameservers = ["127.0.0.1"]',
                f"port = {dns_port}",
                'timeout = "2s"',
                "[checks]",
                "exempt_networks = []",
                "[checks.rate_limits]",
                "connections_per_ip = 0",
                "messages_per_ip = 0",
                "messages_per_domain = 0",
                "auth_failures_per_ip = 0",
                "auth_failures_per_network = 0",
                "auth_failures_per_domain = 0",
                "bad_recipients_per_session = 0",
                "[log]",
                'level = "info"',
                "",
            ]
        )
    )
    return path


# Preparation (untimed) ----------------------------------------------------------------

QUOTED_REQUEST = """\
> Hello Alice,
>
> The task "Approve deploy #{i}" in release "Quarterly platform upgrade" is waiting
> for you. It was assigned to you by the release manager and is due today.
>
> To complete it, reply to this message with "complete" (or just "yes"), or send an
> empty message to the Complete address below. To fail it, reply with "fail" and a
> sentence saying why; your words are kept as the task's comment.
>
> Release: Quarterly platform upgrade
> Phase:   Production rollout
> Task:    Approve deploy #{i}
> Owner:   alice@corp.test
> Due:     today, 18:00 UTC
>
> Checklist before approving:
>   - the staging smoke tests passed (see the release's test report)
>   - the database migration was reviewed by the on-call DBA
>   - the rollback plan is attached to the change ticket
>   - customer support was told about the maintenance window
>
> This message was sent by rc-mta on behalf of the release automation. Replies are
> read by a machine: write your answer in the first lines, above this quote.
"""

SIGNATURE = """\
--
Alice Example
Release manager, Platform team
Corp Inc. - 1 Example Street - Example City
Phone +1 555 0100 (office) - +1 555 0199 (mobile)
This e-mail may contain confidential information. If you are not the intended
recipient, please tell the sender and delete it; do not copy or forward it.
"""


def reply_bytes(i: int, to: str, in_reply_to: str) -> bytes:
    """A ~3 KiB reply as a mail client writes it, DKIM-signed by the owner's domain."""
    import dkim

    message = EmailMessage()
    message["From"] = f"Alice Example <{OWNER}>"
    message["To"] = to
    message["Subject"] = f"Re: Action needed: Approve deploy #{i}"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="corp.test")
    message["In-Reply-To"] = in_reply_to
    message["References"] = in_reply_to
    message["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"
    body = f"Ship it, the checklist is done.\n\nThanks,\nAlice\n\n{SIGNATURE}\nOn Mon, Alice wrote:\n"
    message.set_content(body + QUOTED_REQUEST.format(i=i) * 2)
    raw = message.as_bytes(policy=email.policy.SMTP)
    signature = dkim.sign(raw, b"sel", b"corp.test", DKIM_KEY.read_bytes(), include_headers=SIGNED_FIELDS)
    return bytes(signature) + raw


async def prepare(service: Any, count: int) -> list[Reply]:
    """N tasks, one request each, and the owner's signed reply to each Complete address."""
    replies = []
    for i in range(count):
        task = service.store.add_task(f"Approve deploy #{i}", OWNER, time.time())
        sent = await service.send_request(task.id)
        data = reply_bytes(i, sent.complete_address, sent.message_id)
        replies.append(Reply(task.id, OWNER, sent.complete_address, data))
    return replies


def forged(address: str) -> str:
    """The same reply address with one character of its token changed: a bad MAC."""
    local, _, domain = address.partition("@")
    last = local[-1]
    return f"{local[:-1]}{'a' if last != 'a' else 'b'}@{domain}"


# The load client (a process of its own) -----------------------------------------------


async def connect(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        local_hostname=CLIENT_HOSTNAME,
        source_address=(CLIENT_IP, 0),
        start_tls=False,
        timeout=60,
    )
    await client.connect()
    await client.ehlo()
    return client


async def on_connections(
    name: str,
    port: int,
    items: Sequence[T],
    concurrency: int,
    one: Callable[[aiosmtplib.SMTP, T, RunResult], Awaitable[bool]],
) -> RunResult:
    """C workers, each on its own connection, take the next item until none are left;
    ``one`` does an item's exchange and says whether to time it (False: an error, or the
    connection was lost and is to be opened again)."""
    clients = [await connect(port) for _ in range(min(concurrency, len(items)))]
    result = RunResult(name, len(items), 0.0)
    queue: asyncio.Queue[T] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker(index: int) -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            began = time.perf_counter()
            try:
                timed = await one(clients[index], item, result)
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError) as exc:
                result.errors[f"connection: {exc!r}"] += 1
                clients[index].close()
                clients[index] = await connect(port)
                continue
            if timed:
                result.latencies_ms.append((time.perf_counter() - began) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(len(clients))))
    result.elapsed_s = time.perf_counter() - started
    await quit_all(clients)
    return result


async def send_reply(client: aiosmtplib.SMTP, reply: Reply, result: RunResult) -> bool:
    """One whole transaction; only an accepted reply is timed."""
    try:
        # sendmail raises on any refusal: MAIL, RCPT, or the final answer after DATA.
        await client.sendmail(reply.mail_from, [reply.rcpt_to], reply.data)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients[0]
        result.errors[f"{refused.code} {refused.message}"] += 1
        return False
    except aiosmtplib.SMTPResponseException as exc:
        result.errors[f"{exc.code} {exc.message}"] += 1
        return False
    return True


async def send_rcpt(client: aiosmtplib.SMTP, rcpt: str, result: RunResult) -> bool:
    """MAIL, RCPT, RSET: timed whatever RCPT's answer (a refusal is what rc-mta should say),
    which is counted under its code in ``errors``."""
    await client.mail(OWNER)
    try:
        answer = await client.rcpt(rcpt)
        result.errors[f"{answer.code}"] += 1
    except aiosmtplib.SMTPRecipientRefused as exc:
        result.errors[f"{exc.code}"] += 1
    await client.rset()
    return True


async def hold_idle(port: int, count: int) -> None:
    """Open ``count`` sessions (greeting and EHLO read), say so, hold them until told."""
    clients: list[aiosmtplib.SMTP] = []
    for _ in range(count):
        clients.append(await connect(port))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for client in clients:
        client.close()


async def quit_all(clients: Sequence[aiosmtplib.SMTP]) -> None:
    for client in clients:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


def client_main(job_path: str) -> int:
    """``--client JOB``: run one job (written by the driver as JSON) and print its result."""
    job = json.loads(Path(job_path).read_text())
    port, concurrency = job["port"], job["concurrency"]
    if job["kind"] == "replies":
        replies = [Reply(r["task_id"], r["mail_from"], r["rcpt_to"], base64.b64decode(r["data"])) for r in job["items"]]
        result = asyncio.run(on_connections(job["name"], port, replies, concurrency, send_reply))
    elif job["kind"] == "refusals":
        result = asyncio.run(on_connections(job["name"], port, job["items"], concurrency, send_rcpt))
    else:
        asyncio.run(hold_idle(port, job["count"]))
        return 0
    print(json.dumps(result.as_json()))
    return 0


def client_argv(job: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--client", str(job)]


def run_client(workdir: Path, job: dict[str, Any], server_pid: int) -> RunResult:
    """Run one job in a fresh client process; its stdout's last line is the result. The
    server's CPU time is read around it (the client's start-up is in it, the server idles)."""
    path = workdir / "job.json"
    path.write_text(json.dumps(job))
    cpu_before = cpu_seconds(server_pid)
    done = subprocess.run(client_argv(path), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load client failed:\n{done.stderr[-2000:]}")
    result = RunResult.of(json.loads(done.stdout.strip().splitlines()[-1]))
    result.server_cpu_s = cpu_seconds(server_pid) - cpu_before
    return result


def reply_job(name: str, port: int, replies: Sequence[Reply], concurrency: int) -> dict[str, Any]:
    items = [
        {
            "task_id": r.task_id,
            "mail_from": r.mail_from,
            "rcpt_to": r.rcpt_to,
            "data": base64.b64encode(r.data).decode(),
        }
        for r in replies
    ]
    return {"kind": "replies", "name": name, "port": port, "concurrency": concurrency, "items": items}


def idle_rss_mb(workdir: Path, pid: int, port: int) -> float:
    """The server's RSS while a client process holds IDLE_SESSIONS idle sessions on it."""
    path = workdir / "idle.json"
    path.write_text(json.dumps({"kind": "idle", "port": port, "concurrency": 1, "count": IDLE_SESSIONS}))
    client = subprocess.Popen(client_argv(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    try:
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("the idle client could not open its sessions")
        time.sleep(1.0)  # let the server settle: every session greeted and idle
        return proc_status_mb(pid, "VmRSS")
    finally:
        client.stdin.write("\n")
        client.stdin.close()
        client.wait(timeout=60)
        client.stdout.close()


# Report -------------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int = 1) -> str:
    """Median and range, e.g. ``412.3 [398.0–431.2]``."""
    if not values:
        return "n/a"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def finite(value: float, digits: int) -> float | None:
    """Rounded, or None (JSON null) for NaN: json.dumps would write NaN, which is not JSON."""
    return round(value, digits) if math.isfinite(value) else None


@dataclass
class Figures:
    """Everything measured, round by round."""

    rc: list[RunResult] = field(default_factory=list)
    sink: list[RunResult] = field(default_factory=list)
    rc_refusals: list[RunResult] = field(default_factory=list)
    sink_refusals: list[RunResult] = field(default_factory=list)
    completed: int = 0
    rc_rss: float = math.nan
    sink_rss: float = math.nan
    rc_idle_rss: float = math.nan
    sink_idle_rss: float = math.nan

    def ratios(self) -> list[float]:
        return [r.msgs_per_s / s.msgs_per_s for r, s in zip(self.rc, self.sink, strict=True) if s.msgs_per_s]

    def cpu_ratios(self) -> list[float]:
        """How many replies rc-mta serves in the CPU time the sink needs for one, per round."""
        pairs = zip(self.rc, self.sink, strict=True)
        return [s.cpu_ms_each / r.cpu_ms_each for r, s in pairs if r.cpu_ms_each > 0]

    def refusal_ratios(self) -> list[float]:
        pairs = zip(self.rc_refusals, self.sink_refusals, strict=True)
        return [r.msgs_per_s / s.msgs_per_s for r, s in pairs if s.msgs_per_s]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def print_table(f: Figures, messages: int, concurrency: int) -> None:
    def row(label: str, a: str, b: str) -> None:
        print(f"{label:<30}{a:>26}{b:>26}")

    rounds = len(f.rc)
    print(f"\n{rounds} interleaved rounds of {messages} signed replies, {concurrency} connections, from {CLIENT_IP}")
    print("figures: median [min–max] over the rounds")
    row("", "rc-mta", "sink")
    row("accepted (250)", f"{sum(r.accepted for r in f.rc)}", f"{sum(s.accepted for s in f.sink)}")
    row("errors", f"{sum(sum(r.errors.values()) for r in f.rc)}", f"{sum(sum(s.errors.values()) for s in f.sink)}")
    row("throughput (msgs/s)", spread([r.msgs_per_s for r in f.rc]), spread([s.msgs_per_s for s in f.sink]))
    row("latency p50 (ms)", spread([r.percentile(50) for r in f.rc], 2), spread([s.percentile(50) for s in f.sink], 2))
    row("latency p99 (ms)", spread([r.percentile(99) for r in f.rc], 2), spread([s.percentile(99) for s in f.sink], 2))
    row(
        "server CPU per reply (ms)",
        spread([r.cpu_ms_each for r in f.rc], 2),
        spread([s.cpu_ms_each for s in f.sink], 2),
    )
    rc_ref = [r.msgs_per_s for r in f.rc_refusals]
    row("forged RCPTs (/s)", spread(rc_ref), spread([s.msgs_per_s for s in f.sink_refusals]))
    rc_ref_cpu = [r.cpu_ms_each for r in f.rc_refusals]
    row("server CPU per refusal (ms)", spread(rc_ref_cpu, 3), spread([s.cpu_ms_each for s in f.sink_refusals], 3))
    row("peak RSS (MiB)", f"{f.rc_rss:.1f}", f"{f.sink_rss:.1f}")
    row(f"RSS, {IDLE_SESSIONS} idle sessions (MiB)", f"{f.rc_idle_rss:.1f}", f"{f.sink_idle_rss:.1f}")
    print(f"throughput ratio rc-mta / sink: {spread(f.ratios(), 3)}")
    print(f"refusal ratio rc-mta / sink:    {spread(f.refusal_ratios(), 3)}")
    print(f"CPU ratio sink / rc-mta per reply (the load-independent figure): {spread(f.cpu_ratios(), 3)}")
    print(f"tasks completed in the store: {f.completed}/{sum(r.messages for r in f.rc)}")
    refusal_answers = Counter[str]()
    for r in f.rc_refusals:
        refusal_answers.update(r.errors)
    print(f"rc-mta's answers to forged RCPTs: {dict(refusal_answers)}")
    for results in (f.rc, f.sink):
        errors = Counter[str]()
        for result in results:
            errors.update(result.errors)
        for text, count in errors.most_common(5):
            print(f"{results[0].name} error x{count}: {text}", file=sys.stderr)


async def run(messages: int, refusals: int, rounds: int, warmup: int, concurrency: int, as_json: bool) -> int:
    sys.path.insert(0, str(TESTS))
    from dnsserver import NsdServer

    from rc_mta.app import Service
    from rc_mta.config import load_settings

    with tempfile.TemporaryDirectory(prefix="rc-mta-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "nsd").mkdir()
        dns = NsdServer(workdir / "nsd", free_port())
        dns.start()
        rc_port, sink_port = free_port(), free_port()
        settings = load_settings(str(write_config(workdir, rc_port, dns.port)))
        service = Service.open(settings)
        rc_proc: subprocess.Popen[bytes] | None = None
        sink_proc: subprocess.Popen[bytes] | None = None
        figures = Figures()
        try:
            total = warmup + rounds * messages
            print(f"preparing {total} tasks, requests and signed replies ...", file=sys.stderr)
            replies = await prepare(service, total)
            rc_argv = [sys.executable, "-m", "rc_mta", "--config", str(workdir / "rc-mta.toml"), "serve"]
            rc_proc = start_server("rc-mta", rc_argv, rc_port, workdir)
            sink_proc = start_server("sink", sink_argv(sink_port), sink_port, workdir)

            print(f"warming up with {warmup} replies each ...", file=sys.stderr)
            warm = replies[:warmup]
            run_client(workdir, reply_job("sink", sink_port, warm, concurrency), sink_proc.pid)
            run_client(workdir, reply_job("rc-mta", rc_port, warm, concurrency), rc_proc.pid)
            measured = replies[warmup:]
            forged_rcpts = [forged(r.rcpt_to) for r in measured[:messages]]
            bad = [forged_rcpts[i % len(forged_rcpts)] for i in range(refusals)]
            for i in range(rounds):
                batch = measured[i * messages : (i + 1) * messages]
                print(f"round {i + 1}/{rounds} ...", file=sys.stderr)
                sink_job, rc_job = (
                    reply_job("sink", sink_port, batch, concurrency),
                    reply_job("rc-mta", rc_port, batch, concurrency),
                )
                figures.sink.append(run_client(workdir, sink_job, sink_proc.pid))
                figures.rc.append(run_client(workdir, rc_job, rc_proc.pid))
                refusals = {"kind": "refusals", "port": sink_port, "concurrency": concurrency, "items": bad}
                figures.sink_refusals.append(run_client(workdir, {**refusals, "name": "sink"}, sink_proc.pid))
                rc_refusals = {**refusals, "name": "rc-mta", "port": rc_port}
                figures.rc_refusals.append(run_client(workdir, rc_refusals, rc_proc.pid))
            figures.completed = sum(
                1
                for reply in measured
                if (task := service.store.get_task(reply.task_id)) is not None and task.status == "completed"
            )
            figures.rc_rss = proc_status_mb(rc_proc.pid, "VmHWM")
            figures.sink_rss = proc_status_mb(sink_proc.pid, "VmHWM")
            print(f"holding {IDLE_SESSIONS} idle sessions on each ...", file=sys.stderr)
            figures.sink_idle_rss = idle_rss_mb(workdir, sink_proc.pid, sink_port)
            figures.rc_idle_rss = idle_rss_mb(workdir, rc_proc.pid, rc_port)
            if rc_proc.poll() is not None:
                print(f"rc-mta exited during the run:\n{tail(workdir / 'rc-mta.log')}", file=sys.stderr)
        finally:
            stop_server(rc_proc)
            stop_server(sink_proc)
            service.close()
            dns.stop()
            if dns.proc is not None and dns.proc.stderr is not None:
                dns.proc.stderr.close()

        print_table(figures, messages, concurrency)
        expected = rounds * messages
        ok = (
            sum(r.accepted for r in figures.rc) == expected
            and figures.completed == expected
            and sum(s.accepted for s in figures.sink) == expected
        )
        if not ok:
            print(f"FAILED: rc-mta log tail:\n{tail(workdir / 'rc-mta.log')}", file=sys.stderr)
        if as_json:
            out = {
                "rc_msgs_per_s": finite(median([r.msgs_per_s for r in figures.rc]), 1),
                "sink_msgs_per_s": finite(median([s.msgs_per_s for s in figures.sink]), 1),
                "ratio": finite(median(figures.ratios()), 4),
                "p50_ms": finite(median([r.percentile(50) for r in figures.rc]), 2),
                "p99_ms": finite(median([r.percentile(99) for r in figures.rc]), 2),
                "peak_rss_mb": finite(figures.rc_rss, 1),
                "refusal_ratio": finite(median(figures.refusal_ratios()), 4),
                "idle_rss_mb": finite(figures.rc_idle_rss, 1),
                "cpu_ms_per_reply": finite(median([r.cpu_ms_each for r in figures.rc]), 3),
                "sink_cpu_ms_per_reply": finite(median([s.cpu_ms_each for s in figures.sink]), 3),
                "cpu_ratio": finite(median(figures.cpu_ratios()), 4),
            }
            print(json.dumps(out))
        return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=400, help="replies per round and server (default 400)")
    parser.add_argument("--refusals", type=int, default=4000, help="forged RCPTs per round and server (default 4000)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed replies to each server first (default 100)")
    parser.add_argument("--concurrency", type=int, default=10, help="concurrent SMTP connections (default 10)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last line")
    parser.add_argument("--client", metavar="JOB", help=argparse.SUPPRESS)  # the load client's own process
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args.client)
    if min(args.messages, args.refusals, args.concurrency, args.rounds) < 1 or args.warmup < 0:
        parser.error("--messages, --refusals, --rounds and --concurrency must be at least 1, --warmup at least 0")
    return asyncio.run(run(args.messages, args.refusals, args.rounds, args.warmup, args.concurrency, args.json))


if __name__ == "__main__":
    sys.exit(main())
