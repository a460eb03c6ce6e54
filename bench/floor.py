"""The least CPU a reply can cost in CPython, step by step: the floor under bench/throughput.py.

Why: issue 14 asks rc-mta for half the bare aiosmtpd sink's throughput with every check on.
Whatever the server, each reply needs at the least: the SMTP exchange itself (what the sink
does, and nothing more), a DKIM verification (dkimpy, as the brief asks), one parse of the
message (the standard library's cheapest policy, compat32), the token's MAC (HMAC-SHA-256),
and one write transaction that records the answer (SQLite in WAL mode, as the default store).
SPF, FCrDNS and DMARC cost nothing here: rc-mta keeps their verdicts for the records' TTL,
and a client's next reply reads them from memory.

Each step is measured alone, on the throughput bench's own replies (the same ~3 KiB reply,
signed with the same 2048-bit key), with nothing of rc-mta around it. Their sum is the floor
for a server that parses, verifies and records each reply once: ``sink / floor`` bounds the
ratio of CPU per reply any such server can reach (a design that shares commits between
replies saves only the small last step; the sink and DKIM alone bound it nearly as tight),
and the throughput ratio with it, unless the load client holds the sink back. Beside it,
rc-mta's whole path as the SMTP front asks
for it (MAIL's sender checks, RCPT's token, DATA's reading and checks, claiming and completing
the task, with the store's threads), in process, the way bench/instructions.py drives it.

    python bench/floor.py [--replies N] [--json]

Figures are CPU milliseconds per reply, each step's the median of three passes over N
replies (rc-mta's path: one pass over the second N, after a quarter of them to warm up).
With ``--json`` the last line is one object: each step's figure, ``floor_ms``,
``ratio_ceiling`` and ``rc_path_ms``. Needs nsd (scripts/system-deps.sh installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import secrets
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import throughput  # noqa: E402  (its replies, its sink, its config: the same work)

PASSES = 3


def per_reply_ms(work: Callable[[], object], count: int) -> float:
    """CPU ms per reply of ``work`` (one pass over ``count`` replies), the median of PASSES."""
    work()  # warm: caches, first imports
    times = []
    for _ in range(PASSES):
        began = time.process_time()
        work()
        times.append((time.process_time() - began) * 1000 / count)
    return statistics.median(times)


def dkim_key_record() -> bytes:
    """The owner's DKIM key record, as the DNS would give it (from tests/zones)."""
    zone = (REPO / "tests" / "zones" / "corp.test.zone").read_text()
    start = zone.index("sel._domainkey")
    record = zone[start : zone.index(")", start)]
    return "".join(record.split('"')[1::2]).encode()


def dkim_step(raws: Sequence[bytes]) -> Callable[[], object]:
    import dkim

    record = dkim_key_record()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return record

    def run() -> None:
        for raw in raws:
            if not dkim.verify(raw, dnsfunc=dnsfunc):
                raise SystemExit("a bench reply failed DKIM verification")

    return run


def parse_step(raws: Sequence[bytes]) -> Callable[[], object]:
    """Parse, and decode the text the comment is read from: the least a reader does."""

    def run() -> None:
        for raw in raws:
            message = email.message_from_bytes(raw, policy=email.policy.compat32)
            for part in message.walk():
                if part.get_content_type() == "text/plain":
                    part.get_payload(decode=True)
                    break

    return run


def token_step(addresses: Sequence[str]) -> Callable[[], object]:
    key = secrets.token_bytes(32)
    macs = {a: hmac.new(key, a.encode(), hashlib.sha256).digest() for a in addresses}

    def run() -> None:
        for address in addresses:
            if not hmac.compare_digest(hmac.new(key, address.encode(), hashlib.sha256).digest(), macs[address]):
                raise SystemExit("MAC mismatch")

    return run


def store_step(path: Path, count: int) -> Callable[[], object]:
    """One transaction per reply: the claim, the task's new status and its comment."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY, status TEXT, comment TEXT)")
    db.execute("CREATE TABLE claims (request_id TEXT PRIMARY KEY, action TEXT, actor TEXT, at REAL)")
    # The tasks every pass completes (the warm-up and PASSES), written before any is timed.
    with db:
        db.execute("BEGIN")
        rows = [(f"t{n}-{i}",) for n in range(PASSES + 1) for i in range(count)]
        db.executemany("INSERT INTO tasks VALUES (?, 'in_progress', '')", rows)
    passes = iter(range(PASSES + 1))

    def run() -> None:
        n = next(passes)
        for i in range(count):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO claims VALUES (?, 'complete', 'alice@corp.test', ?)", (f"r{n}-{i}", time.time()))
            db.execute("UPDATE tasks SET status = 'completed', comment = ? WHERE id = ?", ("Ship it", f"t{n}-{i}"))
            db.execute("COMMIT")

    return run


def sink_ms(workdir: Path, replies: Sequence[throughput.Reply]) -> float:
    """The bare aiosmtpd sink's CPU per reply, measured as bench/throughput.py measures it."""
    port = throughput.free_port()
    sink = throughput.start_server("sink", throughput.sink_argv(port), port, workdir)
    try:
        throughput.run_client(workdir, throughput.reply_job("sink", port, replies, 10), sink.pid)
        return statistics.median(
            throughput.run_client(workdir, throughput.reply_job("sink", port, replies, 10), sink.pid).cpu_ms_each
            for _ in range(PASSES)
        )
    finally:
        throughput.stop_server(sink)


async def rc_path_ms(service: object, replies: Sequence[throughput.Reply]) -> float:
    """rc-mta's own path per reply, in process (the store's threads' CPU included)."""
    from rc_mta.pipeline import Inbound
    from rc_mta.sender_auth import Client

    pipeline = service.pipeline  # type: ignore[attr-defined]
    client = Client(ip=throughput.CLIENT_IP, helo=throughput.CLIENT_HOSTNAME, peer_ip=throughput.CLIENT_IP)

    async def one(reply: throughput.Reply) -> None:
        state = await pipeline.check_sender(client, throughput.OWNER)
        recipient = await pipeline.check_recipient(reply.rcpt_to)
        inbound = Inbound(reply.data, "smtp", client, throughput.OWNER, (recipient,), state)
        if not all(d.reply.accepted for d in await pipeline.process(inbound, act=True)):
            raise SystemExit(f"rc-mta did not accept the reply for {reply.task_id}")

    warm, measured = replies[: len(replies) // 4], replies[len(replies) // 4 :]
    for reply in warm:
        await one(reply)
    began = time.process_time()
    for reply in measured:
        await one(reply)
    return (time.process_time() - began) * 1000 / len(measured)


async def measure(count: int) -> dict[str, float]:
    from rc_mta.app import Service
    from rc_mta.config import load_settings

    with throughput.workdir_with_dns("rc-mta-floor-") as (workdir, dns):
        settings = load_settings(str(throughput.write_config(workdir, throughput.free_port(), dns.port)))
        service = Service.open(settings)
        try:
            print(f"preparing {count} + {count} signed replies ...", file=sys.stderr)
            replies = await throughput.prepare(service, 2 * count)
            steps, path_replies = replies[:count], replies[count:]
            raws = [r.data for r in steps]
            figures = {
                "sink_ms": sink_ms(workdir, steps),
                "dkim_ms": per_reply_ms(dkim_step(raws), count),
                "parse_ms": per_reply_ms(parse_step(raws), count),
                "token_ms": per_reply_ms(token_step([r.rcpt_to for r in steps]), count),
                "store_ms": per_reply_ms(store_step(workdir / "floor.db", count), count),
            }
            figures["rc_path_ms"] = await rc_path_ms(service, path_replies)
        finally:
            service.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=300, help="replies per pass (default 300)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    f = asyncio.run(measure(args.replies))
    floor = f["sink_ms"] + f["dkim_ms"] + f["parse_ms"] + f["token_ms"] + f["store_ms"]
    ceiling = f["sink_ms"] / floor
    rows = [
        ("SMTP exchange (the bare aiosmtpd sink)", f["sink_ms"]),
        ("DKIM verification (dkimpy, RSA-2048)", f["dkim_ms"]),
        ("parse + text part (email, compat32)", f["parse_ms"]),
        ("token MAC (HMAC-SHA-256)", f["token_ms"]),
        ("one write transaction (SQLite, WAL)", f["store_ms"]),
    ]
    print(f"\nCPU ms per reply, median of {PASSES} passes over {args.replies} replies")
    for label, value in rows:
        print(f"  {label:<44}{value:8.3f}")
    print(f"  {'floor: the sum':<44}{floor:8.3f}")
    print(f"throughput ratio ceiling, sink / floor: {ceiling:.3f} (issue 14 asks >= 0.5)")
    print(f"rc-mta's path beside it, in process (no SMTP): {f['rc_path_ms']:.3f} ms per reply")
    if args.json:
        print(
            json.dumps(
                {
                    **{k: round(v, 4) for k, v in f.items()},
                    "floor_ms": round(floor, 4),
                    "ratio_ceiling": round(ceiling, 4),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
