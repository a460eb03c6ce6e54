"""A genuine reply's latency while hostile clients do their worst, in one run.

Why: one message built to be expensive to read (a References field with tens of thousands
of ids, MIME nested thousands deep, RFC 2231 continuations, an HTML body of ``</``, of ``<p>`` or ``<b>x</b>``) or a
crowd of slow clients must not stall the service for everyone else. What: start rc-mta
(embedded SQLite store, its HTTP listener for /healthz) on loopback; run a mix of hostile
senders in parallel, each sending its kind of message again and again, plus clients that
hold a session open with a NOOP now and then; meanwhile a genuine client sends real replies,
one after another, and a probe session sends NOOP every 50 ms. Print the genuine replies'
p50/p99 latency (connect until the final answer after DATA), the probe's worst NOOP round
trip, the worst event-loop lag /healthz reported, and what the hostile senders were told.

    python bench/hostile.py [--mix references=1,deep_mime=1,...] [--size BYTES]
                            [--replies N] [--noop-clients N] [--json]

``--mix`` names hostile kinds (tests/hostile_messages.py) with the number of parallel
senders of each; the default is ten senders of ten kinds. ``--size`` is each hostile
message's size (default: rc-mta's max_message_size, 1 MiB). Everything stays on loopback
and stops by itself: a hostile message rc-mta has not answered after ``--hostile-timeout``
seconds is counted as "no answer", and genuine replies not answered within
``--max-seconds`` of the start as refused. Exit status 1 when a genuine reply is not accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
from throughput import free_port, start_server, stop_server, tail  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hostile_messages import HOSTILE, hostile  # type: ignore[import-not-found]

from rc_mta.app import Service
from rc_mta.config import load_settings

REPLY_DOMAIN = "reply.bench.test"
CLIENT_HOSTNAME = "mta.bench.test"
DEFAULT_MIX = (
    "references=1,deep_mime=1,many_parts=1,rfc2231=1,mime_parameters=1,many_headers=1,from_comments=1,html=1,"
    "html_paragraphs=1,html_bold_letters=1"
)


@dataclass
class Figures:
    """What one run saw."""

    genuine_ms: list[float] = field(default_factory=list)
    genuine_errors: Counter[str] = field(default_factory=Counter)
    hostile_answers: Counter[str] = field(default_factory=Counter)
    hostile_ms: list[float] = field(default_factory=list)
    noop_ms: list[float] = field(default_factory=list)
    loop_lag_s: list[float] = field(default_factory=list)
    healthz_ms: list[float] = field(default_factory=list)
    noop_clients_held: int = 0
    probe_reconnects: int = 0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def write_config(workdir: Path, smtp_port: int, http_port: int, size: int, extra: Sequence[str]) -> Path:
    path = workdir / "rc-mta.toml"
    lines = [
        "[inbound]",
        f'listen = "127.0.0.1:{smtp_port}"',
        f'reply_domain = "{REPLY_DOMAIN}"',
        'hostname = "mx.reply.bench.test"',
        f"max_message_size = {size}",
        *extra,
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
        f'listen = "127.0.0.1:{http_port}"',
        "[log]",
        'level = "warning"',
        "",
    ]
    path.write_text("\n".join(lines))
    return path


async def prepare(service: Service, count: int) -> tuple[list[tuple[str, str, bytes]], str]:
    """``count`` genuine replies (sender, address, bytes), and the address hostile senders use."""
    replies = []
    for i in range(count + 1):
        owner = f"owner{i}@example.com"
        task = service.store.add_task(f"Approve deploy #{i}", owner, time.time())
        sent = await service.send_request(task.id)
        if i == count:
            return replies, sent.complete_address
        message = EmailMessage()
        message["From"] = owner
        message["To"] = sent.complete_address
        message["Subject"] = f"Complete: Approve deploy #{i}"
        message["Message-ID"] = make_msgid(domain="example.com")
        message.set_content("Ship it")
        replies.append((owner, sent.complete_address, bytes(message)))
    raise AssertionError("unreachable")


async def connect(port: int, timeout: float) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, local_hostname=CLIENT_HOSTNAME, start_tls=False, timeout=timeout
    )
    await client.connect()
    await client.ehlo()
    return client


async def send_one(port: int, sender: str, rcpt: str, data: bytes, timeout: float) -> str:
    """One message on its own connection, as an MTA sends it: the final answer's code."""
    client = await connect(port, timeout)
    try:
        await client.sendmail(sender, [rcpt], data)
        return "250"
    except aiosmtplib.SMTPRecipientsRefused as exc:
        return f"{exc.recipients[0].code} at RCPT"
    except aiosmtplib.SMTPResponseException as exc:
        return f"{exc.code} {exc.message.split(' ', 1)[0]}"
    finally:
        client.close()


async def hostile_sender(
    kind: str, number: int, port: int, rcpt: str, size: int, timeout: float, stop: asyncio.Event, figures: Figures
) -> None:
    serial = 0
    while not stop.is_set():
        serial += 1
        data = hostile(kind, size, rcpt, number=number * 100_000 + serial)
        began = time.perf_counter()
        try:
            answer = await asyncio.wait_for(send_one(port, "alice@example.com", rcpt, data, timeout), timeout)
        except (TimeoutError, aiosmtplib.SMTPTimeoutError):
            answer = "no answer"
        except (aiosmtplib.SMTPException, OSError) as exc:
            answer = f"connection: {type(exc).__name__}"
        figures.hostile_answers[f"{kind}: {answer}"] += 1
        figures.hostile_ms.append((time.perf_counter() - began) * 1000)


async def noop_holder(port: int, stop: asyncio.Event, figures: Figures) -> None:
    """A slow client: connects, then sends NOOP every few seconds while the run lasts."""
    try:
        client = await connect(port, 30)
    except (aiosmtplib.SMTPException, OSError):
        return
    figures.noop_clients_held += 1
    try:
        while not stop.is_set():
            await client.noop()
            try:
                await asyncio.wait_for(stop.wait(), 5)
            except TimeoutError:
                pass
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        client.close()


async def noop_probe(port: int, stop: asyncio.Event, figures: Figures) -> None:
    """A genuine session's view of the loop: the round trip of a NOOP every 50 ms. Told 421
    after ``max_idle_commands`` NOOPs (as any client that sends no mail is), it reconnects."""
    client = await connect(port, 60)
    try:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                await client.noop()
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code != 421:
                    raise
                client.close()
                client = await connect(port, 60)
                figures.probe_reconnects += 1
                continue
            figures.noop_ms.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.05)
    finally:
        client.close()


def _healthz(url: str) -> float:
    """The lag /healthz reports, also when it answers 503 because of it."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # loopback only
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    return float(json.loads(body)["loop_lag_seconds"])


async def health_probe(http_port: int, stop: asyncio.Event, figures: Figures) -> None:
    """/healthz every 200 ms: the loop lag rc-mta measured itself, and how long it took to say."""
    url = f"http://127.0.0.1:{http_port}/healthz"
    while not stop.is_set():
        began = time.perf_counter()
        try:
            lag = await asyncio.to_thread(_healthz, url)
        except (OSError, ValueError):
            lag = math.nan
        figures.healthz_ms.append((time.perf_counter() - began) * 1000)
        if math.isfinite(lag):
            figures.loop_lag_s.append(lag)
        await asyncio.sleep(0.2)


async def genuine(
    port: int, replies: Sequence[tuple[str, str, bytes]], warmup: float, deadline: float, figures: Figures
) -> None:
    await asyncio.sleep(warmup)
    for sender, rcpt, data in replies:
        began = time.perf_counter()
        left = deadline - time.monotonic()
        if left <= 0:
            figures.genuine_errors["not sent: the run's time was up"] += 1
            continue
        try:
            answer = await asyncio.wait_for(send_one(port, sender, rcpt, data, left), left)
        except (TimeoutError, aiosmtplib.SMTPTimeoutError):
            answer = "no answer before the run's time was up"
        except (aiosmtplib.SMTPException, OSError) as exc:
            answer = f"connection: {exc!r}"
        if answer == "250":
            figures.genuine_ms.append((time.perf_counter() - began) * 1000)
        else:
            figures.genuine_errors[answer] += 1
        await asyncio.sleep(0.25)


def parse_mix(text: str) -> dict[str, int]:
    mix: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, count = item.partition("=")
        if kind not in HOSTILE:
            raise ValueError(f"unknown hostile kind {kind!r} (one of {', '.join(HOSTILE)})")
        mix[kind] = int(count or "1")
    return mix


async def run(args: argparse.Namespace) -> int:
    mix = parse_mix(args.mix)
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="rc-mta-hostile-") as tmp:
        workdir = Path(tmp)
        smtp_port, http_port = free_port(), free_port()
        config = write_config(workdir, smtp_port, http_port, args.size, args.inbound)
        service = Service.open(load_settings(str(config)))
        proc = None
        try:
            replies, hostile_rcpt = await prepare(service, args.replies)
            argv = [sys.executable, "-m", "rc_mta", "--config", str(config), "serve"]
            proc = start_server("rc-mta", argv, smtp_port, workdir)
            stop = asyncio.Event()
            background = [
                asyncio.create_task(
                    hostile_sender(kind, n, smtp_port, hostile_rcpt, args.size, args.hostile_timeout, stop, figures)
                )
                for kind, count in mix.items()
                for n in range(count)
            ]
            background += [asyncio.create_task(noop_holder(smtp_port, stop, figures)) for _ in range(args.noop_clients)]
            background += [
                asyncio.create_task(noop_probe(smtp_port, stop, figures)),
                asyncio.create_task(health_probe(http_port, stop, figures)),
            ]
            print(
                f"hostile mix {mix}, {args.noop_clients} NOOP clients; {args.replies} genuine replies ...",
                file=sys.stderr,
            )
            await genuine(smtp_port, replies, args.warmup, time.monotonic() + args.max_seconds, figures)
            stop.set()
            await asyncio.wait(background, timeout=args.hostile_timeout + 5)
            for task in background:
                task.cancel()
            if proc.poll() is not None:
                print(f"rc-mta exited during the run:\n{tail(workdir / 'rc-mta.log')}", file=sys.stderr)
        finally:
            stop_server(proc)
            service.close()
    report(figures, args)
    return 0 if not figures.genuine_errors and len(figures.genuine_ms) == args.replies else 1


def finite(value: float, digits: int = 1) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def report(figures: Figures, args: argparse.Namespace) -> None:
    lag_ms = [lag * 1000 for lag in figures.loop_lag_s]
    rows = {
        "genuine replies accepted": f"{len(figures.genuine_ms)}/{args.replies}",
        "genuine latency p50 (ms)": f"{percentile(figures.genuine_ms, 50):.1f}",
        "genuine latency p99 (ms)": f"{percentile(figures.genuine_ms, 99):.1f}",
        "NOOP round trip p99 (ms)": f"{percentile(figures.noop_ms, 99):.1f}",
        "NOOP round trip max (ms)": f"{max(figures.noop_ms, default=math.nan):.1f}",
        "loop lag max, /healthz (ms)": f"{max(lag_ms, default=math.nan):.1f}",
        "/healthz answer max (ms)": f"{max(figures.healthz_ms, default=math.nan):.1f}",
        "hostile answer p50 (ms)": f"{percentile(figures.hostile_ms, 50):.1f}",
        "NOOP clients held": f"{figures.noop_clients_held}/{args.noop_clients}",
        "NOOP probe reconnects (421)": f"{figures.probe_reconnects}",
    }
    print(f"\nhostile messages of {args.size} bytes; mix {args.mix}")
    for label, value in rows.items():
        print(f"{label:<30}{value:>14}")
    for answer, count in sorted(figures.hostile_answers.items()):
        print(f"  hostile {answer} x{count}")
    for answer, count in figures.genuine_errors.most_common():
        print(f"  genuine refused: {answer} x{count}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "genuine_accepted": len(figures.genuine_ms),
                    "genuine_p50_ms": finite(percentile(figures.genuine_ms, 50)),
                    "genuine_p99_ms": finite(percentile(figures.genuine_ms, 99)),
                    "noop_p99_ms": finite(percentile(figures.noop_ms, 99)),
                    "noop_max_ms": finite(max(figures.noop_ms, default=math.nan)),
                    "loop_lag_max_ms": finite(max(lag_ms, default=math.nan)),
                    "healthz_max_ms": finite(max(figures.healthz_ms, default=math.nan)),
                    "hostile_answers": dict(figures.hostile_answers),
                }
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"hostile kinds and senders of each (default {DEFAULT_MIX})")
    parser.add_argument("--size", type=int, default=1024 * 1024, help="bytes per hostile message and max_message_size")
    parser.add_argument("--replies", type=int, default=20, help="genuine replies sent one after another (default 20)")
    parser.add_argument("--noop-clients", type=int, default=20, help="slow clients holding a session (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of hostile traffic before the first reply")
    parser.add_argument(
        "--hostile-timeout", type=float, default=60.0, help="seconds a hostile sender waits for an answer"
    )
    parser.add_argument("--max-seconds", type=float, default=300.0, help="the genuine client gives up after this")
    parser.add_argument(
        "--inbound", action="append", default=[], help="an extra [inbound] line, e.g. 'parse_workers = 2'"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last line")
    args = parser.parse_args(argv)
    if args.replies < 1 or args.size < 1024:
        parser.error("--replies must be at least 1 and --size at least 1024")
    try:
        parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
