"""Instructions per reply and per refusal, counted by callgrind: figures load cannot move.

Why: on a shared machine the CPU time of bench/throughput.py moves by 20-40% from run to
run with the load of other processes, more than most changes to the hot path. callgrind
counts instructions, not seconds: the same code and input give the same count whatever
else runs. This measures the work of one reply as the SMTP front asks for it (MAIL's
sender checks, RCPT's token, DATA's reading, DKIM, DMARC, claiming and completing the
task), with everything real but the socket: NSD for DNS, the SQLite store, info logging.

It prepares 2 x N signed replies (as bench/throughput.py does), then runs the path under
``valgrind --tool=callgrind`` twice, over N/5 and over N replies of the same set; the
difference divided by the difference in replies is the cost of one reply once warm.

Refusals (MAIL, RCPT of a forged token, RSET: what bench/throughput.py's "forged RCPTs"
sends) are counted through the real SMTP front: rc-mta's listener on loopback, as ``serve``
runs it (info logging to a file, secrets masked, start-up garbage frozen), and a client on
the same loop speaking one command at a time from 127.0.0.2, the tokens' owners known (the
forged MAC is refused without a store read, as once their requests were answered). The
bare aiosmtpd sink (bench/sink.py) is counted with the same client (some 170,000 of the
instructions are the client's, in both figures). Instructions are not time: where rc-mta
and the sink count alike (rc-mta reads addresses without aiosmtpd's header parser, which
the sink pays for), rc-mta's refusal still takes more CPU time, a larger process touching
more memory; fewer instructions of its own are what moves that.

    python bench/instructions.py [--replies N] [--refusals M] [--json]

``--replies 0`` or ``--refusals 0`` leaves that part out. With ``--json`` the last line is
``{"instructions_per_reply": ..., "replies": ..., "instructions_per_refusal": ...,
"sink_instructions_per_refusal": ..., "refusals": ...}`` (the keys of the parts run).
Needs valgrind and nsd (Debian packages).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import throughput  # noqa: E402  (its config, its replies: the same work as the throughput bench)


async def _prepare(workdir: Path, dns_port: int, count: int) -> None:
    from rc_mta.app import Service
    from rc_mta.config import load_settings

    settings = load_settings(str(throughput.write_config(workdir, throughput.free_port(), dns_port)))
    service = Service.open(settings)
    try:
        replies = await throughput.prepare(service, count)
    finally:
        service.close()
    items = [{"rcpt": r.rcpt_to, "raw": base64.b64encode(r.data).decode()} for r in replies]
    (workdir / "replies.json").write_text(json.dumps(items))


async def _measure(workdir: Path, count: int) -> int:
    """Inside callgrind: ``count`` replies through the path; the number accepted."""
    from rc_mta.app import Service
    from rc_mta.config import load_settings
    from rc_mta.pipeline import Inbound
    from rc_mta.sender_auth import Client

    service = Service.open(load_settings(str(workdir / "rc-mta.toml")))
    pipeline = service.pipeline
    client = Client(ip=throughput.CLIENT_IP, helo=throughput.CLIENT_HOSTNAME, peer_ip=throughput.CLIENT_IP)
    accepted = 0
    try:
        for item in json.loads((workdir / "replies.json").read_text())[:count]:
            state = await pipeline.check_sender(client, throughput.OWNER)
            recipient = await pipeline.check_recipient(item["rcpt"])
            raw = base64.b64decode(item["raw"])
            inbound = Inbound(raw, "smtp", client, throughput.OWNER, (recipient,), state)
            decisions = await pipeline.process(inbound, act=True)
            accepted += all(d.reply.accepted for d in decisions)
    finally:
        service.close()
    return accepted


def _count(workdir: Path, replies: int) -> int:
    """Instructions of a whole process handling ``replies`` replies (a fresh copy of the store)."""
    run = workdir / f"run-{replies}"
    run.mkdir()
    for name in ("rc-mta.toml", "replies.json", "rc-mta.db"):
        shutil.copy(workdir / name, run / name)
    config = (run / "rc-mta.toml").read_text().replace(str(workdir / "rc-mta.db"), str(run / "rc-mta.db"))
    (run / "rc-mta.toml").write_text(config)
    return _callgrind(run, ["--measure", str(run), str(replies)], replies)


def _callgrind(run: Path, measure: list[str], expected: int) -> int:
    """Instructions of this script run with ``measure`` under callgrind, whose last line of
    output must be ``expected`` (replies accepted, refusals refused)."""
    out = run / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
    # One hash seed for every run: the order of sets and dicts, and so the work, is the same.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run([*argv, *measure], capture_output=True, text=True, check=False, env=env)
    counted = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or counted != str(expected):
        raise SystemExit(f"measuring {' '.join(measure)} failed ({counted!r} of {expected}):\n{done.stderr[-3000:]}")
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.M)
    if found is None:
        raise SystemExit(f"no instruction count in {out}")
    return int(found.group(1))


# Refusals ----------------------------------------------------------------------------

# Requests whose forged reply addresses the refusals cycle through.
FORGED_KEPT = 20


async def _smtp_client(port: int, rcpts: list[str], count: int, refusal: str) -> int:
    """``count`` times MAIL, RCPT, RSET on one connection from the bench's client address,
    a command at a time as bench/throughput.py's client speaks; the number of RCPTs answered
    ``refusal`` (a reply's first three characters)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(throughput.CLIENT_IP, 0))

    async def command(line: str) -> bytes:
        if line:
            writer.write(f"{line}\r\n".encode())
        while (answer := await reader.readline())[3:4] == b"-":
            pass
        if not answer:
            raise SystemExit(f"the server hung up after {line!r}")
        return answer

    await command("")  # the greeting
    await command(f"EHLO {throughput.CLIENT_HOSTNAME}")
    refused = 0
    for i in range(count):
        await command(f"MAIL FROM:<{throughput.OWNER}>")
        refused += (await command(f"RCPT TO:<{rcpts[i % len(rcpts)]}>")).startswith(refusal.encode())
        await command("RSET")
    await command("QUIT")
    writer.close()
    await writer.wait_closed()
    return refused


async def _measure_refusals(workdir: Path, count: int, server: str) -> int:
    """Inside callgrind: ``count`` forged RCPTs through ``server`` (rc-mta or the sink)
    on loopback; the number refused (for the sink, which refuses none: accepted)."""
    valid = [item["rcpt"] for item in json.loads((workdir / "replies.json").read_text())[:FORGED_KEPT]]
    forged = [throughput.forged(rcpt) for rcpt in valid]
    if server == "sink":  # rc-mta is not even imported: the sink's process is as small as its own
        import sink

        listening = await sink.start("127.0.0.1", 0)
        gc.collect()
        gc.freeze()
        try:
            return await _smtp_client(int(listening.sockets[0].getsockname()[1]), forged, count, "250")
        finally:
            listening.close()

    from rc_mta.app import Service
    from rc_mta.config import load_settings
    from rc_mta.inbound import start_listener
    from rc_mta.logs import secret_values, setup_logging

    settings = load_settings(str(workdir / "rc-mta.toml"))
    # Logged as ``serve`` logs, to a file as under systemd: info, text, secrets masked.
    sys.stderr = (workdir / "rc-mta.log").open("w")
    setup_logging(settings.log.level, settings.log.format, secrets=secret_values(settings))
    service = Service.open(settings)
    try:
        for rcpt in valid:  # the owners known, as once their requests were answered
            await service.pipeline.check_recipient(rcpt)
        inbound = settings.inbound.model_copy(update={"listen": "127.0.0.1:0"})
        listener = await start_listener(service.pipeline, inbound, lmtp=False)
        gc.collect()
        gc.freeze()  # as ``serve`` does once started
        try:
            return await _smtp_client(listener.address[1], forged, count, "550")
        finally:
            listener.server.close()
    finally:
        service.close()


def _count_refusals(workdir: Path, refusals: int, server: str) -> int:
    """Instructions of a whole process serving ``refusals`` forged RCPTs on ``server``."""
    run = workdir / f"refusals-{server}-{refusals}"
    run.mkdir()
    for name in ("rc-mta.toml", "replies.json"):
        shutil.copy(workdir / name, run / name)
    return _callgrind(run, ["--measure-refusals", str(run), str(refusals), server], refusals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=100, help="replies in the longer run (default 100)")
    parser.add_argument("--refusals", type=int, default=500, help="refusals in the longer run (default 500)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # inside callgrind: DIR COUNT
    parser.add_argument("--measure-refusals", nargs=3, help=argparse.SUPPRESS)  # DIR COUNT SERVER
    args = parser.parse_args()
    if args.measure:
        print(asyncio.run(_measure(Path(args.measure[0]), int(args.measure[1]))))
        return 0
    if args.measure_refusals:
        where, refusals, server = args.measure_refusals
        # rc-mta on the loop ``serve`` runs (``eventloop.run``); the sink on asyncio's own.
        measure = _measure_refusals(Path(where), int(refusals), server)
        if server == "sink":
            print(asyncio.run(measure))
        else:
            from rc_mta import eventloop

            print(eventloop.run(measure))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    if args.replies < 0 or args.refusals < 0 or args.replies == args.refusals == 0:
        parser.error("--replies and --refusals are at least 0, and one of them more")
    figures: dict[str, int] = {}
    with throughput.workdir_with_dns("rc-mta-instructions-") as (workdir, dns):
        print(f"preparing {max(args.replies, FORGED_KEPT)} signed replies ...", file=sys.stderr)
        asyncio.run(_prepare(workdir, dns.port, max(args.replies, FORGED_KEPT)))
        if args.replies:
            figures |= _replies_figures(workdir, args.replies)
        if args.refusals:
            figures |= _refusals_figures(workdir, args.refusals)
    if args.json:
        print(json.dumps(figures))
    return 0


def _replies_figures(workdir: Path, many: int) -> dict[str, int]:
    few = max(1, many // 5)
    print(f"counting {few} and {many} replies under callgrind ...", file=sys.stderr)
    small, large = _count(workdir, few), _count(workdir, many)
    per_reply = (large - small) / (many - few)
    print(f"instructions: {small:,} for {few} replies, {large:,} for {many}")
    print(f"instructions per reply (MAIL + RCPT + DATA, warm): {per_reply:,.0f}")
    return {"instructions_per_reply": round(per_reply), "replies": many}


def _refusals_figures(workdir: Path, many: int) -> dict[str, int]:
    few = max(1, many // 5)
    print(f"counting {few} and {many} refusals under callgrind, rc-mta's and the sink's ...", file=sys.stderr)
    per_refusal = {}
    for server in ("rc-mta", "sink"):
        small, large = _count_refusals(workdir, few, server), _count_refusals(workdir, many, server)
        per_refusal[server] = (large - small) / (many - few)
        print(f"instructions, {server}: {small:,} for {few} refusals, {large:,} for {many}")
    rc_mta, sink = per_refusal["rc-mta"], per_refusal["sink"]
    print(f"instructions per refusal (MAIL + forged RCPT + RSET, the client's with it): {rc_mta:,.0f}")
    print(f"  the sink's, with the same client: {sink:,.0f} (sink / rc-mta {sink / rc_mta:.3f})")
    return {
        "instructions_per_refusal": round(rc_mta),
        "sink_instructions_per_refusal": round(sink),
        "refusals": many,
    }


if __name__ == "__main__":
    sys.exit(main())
