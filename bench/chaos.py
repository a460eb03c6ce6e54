"""Exactly-once under faults: three rc-mta instances on one PostgreSQL, a flaky webhook,
SIGKILL and SIGTERM while replies arrive.

Why: an MX answers ``250`` only after the task was acted on, and ``4xx`` whenever it is in
doubt, so that the sender's retries make every reply act exactly once. This drives that
promise the way the internet does: each reply is delivered by a simulated sending MTA that
picks one of three MX hosts, retries 4xx and dropped connections with backoff, and sometimes
delivers the same message to two hosts at once (a retry after a timeout, or two MX records).
Meanwhile one instance after another is killed (SIGKILL) or stopped (SIGTERM) and restarted,
and the webhook answers some POSTs with 500 or slowly.

What it prints: sent (replies), 250, 4xx, 5xx answers, backend calls (POSTs the webhook
verified), actions (POSTs it accepted), duplicates (tasks accepted more than once), lost
(tasks never accepted although a sender was told 250, or whose sender gave up), and false
5xx (every reply here is genuine, so any 5xx is false). The goal is 0, 0, 0.

    python bench/chaos.py [--tasks N] [--seconds S] [--fail-rate P] [--json]

Needs PostgreSQL at $RC_MTA_BENCH_PG (default postgresql://postgres@127.0.0.1:5432/test);
a throw-away schema is made and dropped. Everything stays on loopback and stops by itself.
Exit status 1 when a duplicate, a lost reply or a false 5xx was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import hashlib
import hmac
import json
import os
import random
import secrets
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from aiohttp import web
from appthread import AppThread  # type: ignore[import-not-found]
from conftest import free_port, toml_value, wait_for_port  # type: ignore[import-not-found]
from mailclient import reply_message  # type: ignore[import-not-found]

PG_URL = os.environ.get("RC_MTA_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
REPLY_DOMAIN = "reply.chaos.test"
OWNER = "alice@example.com"
API_TOKEN = "chaos-bench-token-" + secrets.token_hex(8)
WEBHOOK_SECRET = "chaos-webhook-secret"


@dataclass
class FlakyWebhook:
    """A webhook receiver that verifies each POST and then, by chance, fails or dawdles."""

    fail_rate: float
    slow_rate: float = 0.1
    calls: Counter[str] = field(default_factory=Counter)  # task -> verified POSTs
    accepted: Counter[str] = field(default_factory=Counter)  # task -> POSTs answered 2xx
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    _server: AppThread | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        stamp = request.headers.get("X-RC-MTA-Timestamp", "")
        mac = hmac.new(WEBHOOK_SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        expected = "sha256=" + mac.hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-RC-MTA-Signature", "")):
            return web.json_response({"detail": "bad signature"}, status=401)
        task = str(json.loads(body).get("task_id"))
        with self.lock:
            self.calls[task] += 1
        if random.random() < self.slow_rate:
            await asyncio.sleep(random.uniform(0.5, 2.0))
        if random.random() < self.fail_rate:
            return web.json_response({"detail": "flaky"}, status=500)
        with self.lock:
            self.accepted[task] += 1
        return web.json_response({"ok": True})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> FlakyWebhook:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._server = AppThread(app, "chaos-webhook")
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


@dataclass
class Instance:
    """One rc-mta process with its own ports and config, sharing the store and the key."""

    workdir: Path
    settings: dict[str, dict[str, Any]]
    smtp_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        config = self.workdir / "rc-mta.toml"
        lines = []
        for section, values in self.settings.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        config.write_text("\n".join(lines) + "\n")
        log = (self.workdir / "rc-mta.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rc_mta", "--config", str(config), "serve"],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.smtp_port, self.proc, timeout=30)
        wait_for_port(self.http_port, self.proc, timeout=30)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_instances(root: Path, schema: str, webhook: FlakyWebhook) -> list[Instance]:
    key = secrets.token_hex(32)
    instances = []
    for n in range(3):
        smtp_port, http_port = free_port(), free_port()
        workdir = root / f"mx{n}"
        workdir.mkdir()
        settings: dict[str, dict[str, Any]] = {
            "inbound": {"listen": f"127.0.0.1:{smtp_port}", "reply_domain": REPLY_DOMAIN, "timeout": "30s"},
            "signing": {"keys": {1: key}, "active_key": 1, "request_ttl": "1d"},
            "outbound": {"transport": "outbox", "outbox_dir": str(workdir / "outbox")},
            "store": {"url": f"{PG_URL}?options=-csearch_path%3D{schema}", "busy_timeout": "2s"},
            "http": {"listen": f"127.0.0.1:{http_port}", "api_tokens": [API_TOKEN]},
            "tasks": {
                "backend": "webhook",
                "webhook": {"url": webhook.url, "secret": WEBHOOK_SECRET, "timeout": "5s"},
            },
            "checks": {"rate_limits": {"connections_per_ip": 0, "messages_per_ip": 0, "auth_failures_per_ip": 0}},
            "log": {"level": "warning"},
        }
        instances.append(Instance(workdir, settings, smtp_port, http_port))
    return instances


def create_request(instance: Instance, task: str) -> str:
    body = json.dumps({"task_id": task, "owner": OWNER, "title": f"Chaos {task}"}).encode()
    ask = urllib.request.Request(
        f"http://127.0.0.1:{instance.http_port}/v1/requests",
        data=body,
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(ask, timeout=30) as answer:
        sent = json.loads(answer.read())
    return str(sent["requests"][0]["complete_address"])


@dataclass
class Tally:
    answers: Counter[str] = field(default_factory=Counter)  # "250", "4xx", "5xx", "dropped"
    told_250: set[str] = field(default_factory=set)
    gave_up: set[str] = field(default_factory=set)
    false_5xx: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, task: str, outcome: str, text: str = "") -> None:
        with self.lock:
            self.answers[outcome] += 1
            if outcome == "250":
                self.told_250.add(task)
            if outcome == "5xx":
                self.false_5xx.append(f"{task}: {text}")


def deliver_once(instance: Instance, raw: bytes, address: str) -> tuple[int, str]:
    """One SMTP transaction, as a sending MTA makes it; (0, why) when the connection failed."""
    try:
        with smtplib.SMTP("127.0.0.1", instance.smtp_port, timeout=30) as client:
            client.ehlo("mail.example.com")
            code, text = client.mail(OWNER)
            if code == 250:
                code, text = client.rcpt(address)
            if code == 250:
                code, text = client.data(raw)
            return code, text.decode(errors="replace")
    except (OSError, smtplib.SMTPException) as exc:
        return 0, type(exc).__name__


def sending_mta(task: str, address: str, instances: list[Instance], tally: Tally, deadline: float) -> None:
    """Deliver one reply until a final answer: 4xx and dropped connections are retried."""
    message = reply_message(address, "Approved by chaos", sender=OWNER)
    raw = message.as_bytes(policy=email.policy.SMTP)
    delay = 0.2
    while time.monotonic() < deadline:
        targets = random.sample(instances, 2) if random.random() < 0.15 else [random.choice(instances)]
        with ThreadPoolExecutor(len(targets)) as pool:
            results = list(pool.map(lambda target: deliver_once(target, raw, address), targets))
        final = False
        for code, text in results:
            if code == 0:
                tally.note(task, "dropped")
            elif 200 <= code < 300:
                tally.note(task, "250")
                final = True
            elif 400 <= code < 500:
                tally.note(task, "4xx")
            else:
                tally.note(task, "5xx", f"{code} {text}")
                final = True
        if final:
            return
        time.sleep(delay + random.uniform(0, delay))
        delay = min(delay * 1.6, 3.0)
    with tally.lock:
        tally.gave_up.add(task)


def chaos_monkey(instances: list[Instance], until: float, stop: threading.Event, events: Counter[str]) -> None:
    """Every couple of seconds, kill or stop one instance and bring it back (until ``until``,
    so the senders' last retries meet three live instances)."""
    while not stop.wait(random.uniform(1.0, 3.0)) and time.monotonic() < until:
        victim = random.choice(instances)
        with victim.lock:
            sig = random.choice([signal.SIGKILL, signal.SIGTERM])
            victim.signal(sig)
            events[sig.name] += 1
            time.sleep(random.uniform(0.2, 1.0))
            victim.start()


def run(tasks: int, seconds: float, fail_rate: float) -> dict[str, Any]:
    import psycopg

    schema = "rc_chaos_" + secrets.token_hex(4)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    webhook = FlakyWebhook(fail_rate).start()
    root = Path(tempfile.mkdtemp(prefix="rc-chaos-"))
    instances = make_instances(root, schema, webhook)
    try:
        for instance in instances:
            instance.start()  # one at a time: the first creates the schema
        names = [f"CHAOS-{n}" for n in range(tasks)]
        addresses = {task: create_request(random.choice(instances), task) for task in names}
        tally, events, stop = Tally(), Counter[str](), threading.Event()
        started = time.monotonic()
        deadline = started + seconds
        monkey = threading.Thread(target=chaos_monkey, args=(instances, started + 0.7 * seconds, stop, events))
        monkey.start()
        senders = []
        for task in names:
            sender = threading.Thread(target=sending_mta, args=(task, addresses[task], instances, tally, deadline))
            sender.start()
            senders.append(sender)
            time.sleep(seconds / (3 * tasks))  # replies arrive over the first third of the run
        for sender in senders:
            sender.join()
        stop.set()
        monkey.join()
        elapsed = time.monotonic() - started
    finally:
        for instance in instances:
            instance.signal(signal.SIGTERM)
        webhook.stop()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    duplicates = sorted(t for t, n in webhook.accepted.items() if n > 1)
    lost = sorted((tally.told_250 | tally.gave_up) - set(webhook.accepted))
    return {
        "sent": tasks,
        "answers_250": tally.answers["250"],
        "answers_4xx": tally.answers["4xx"],
        "answers_5xx": tally.answers["5xx"],
        "dropped_connections": tally.answers["dropped"],
        "backend_calls": sum(webhook.calls.values()),
        "actions": sum(webhook.accepted.values()),
        "duplicates": len(duplicates),
        "lost": len(lost),
        "false_5xx": len(tally.false_5xx),
        "gave_up": len(tally.gave_up),
        "sigkill": events["SIGKILL"],
        "sigterm": events["SIGTERM"],
        "seconds": round(elapsed, 1),
        "examples": {"duplicates": duplicates[:5], "lost": lost[:5], "false_5xx": tally.false_5xx[:5]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--fail-rate", type=float, default=0.2, help="share of webhook POSTs answered 500")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.tasks, args.seconds, args.fail_rate)
    for key, value in result.items():
        if key != "examples":
            print(f"{key:>20}: {value}")
    if any(result["examples"].values()):
        print("examples:", json.dumps(result["examples"]))
    if args.json:
        print(json.dumps(result))
    return 1 if result["duplicates"] or result["lost"] or result["false_5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
