"""Instructions per reply on the one path, counted by callgrind: a figure load cannot move.

Why: on a shared machine the CPU time of bench/throughput.py moves by 20-40% from run to
run with the load of other processes, more than most changes to the hot path. callgrind
counts instructions, not seconds: the same code and input give the same count whatever
else runs. This measures the work of one reply as the SMTP front asks for it (MAIL's
sender checks, RCPT's token, DATA's reading, DKIM, DMARC, claiming and completing the
task), with everything real but the socket: NSD for DNS, the SQLite store, info logging.

    python bench/instructions.py [--replies N] [--json]

It prepares 2 x N signed replies (as bench/throughput.py does), then runs the path under
``valgrind --tool=callgrind`` twice, over N/5 and over N replies of the same set; the
difference divided by the difference in replies is the cost of one reply once warm.
With ``--json`` the last line is ``{"instructions_per_reply": ..., "replies": ...}``.
Needs valgrind and nsd (Debian packages).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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
    out = run / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
    done = subprocess.run([*argv, "--measure", str(run), str(replies)], capture_output=True, text=True, check=False)
    accepted = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or accepted != str(replies):
        raise SystemExit(f"measuring {replies} replies failed ({accepted!r} accepted):\n{done.stderr[-3000:]}")
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.M)
    if found is None:
        raise SystemExit(f"no instruction count in {out}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=100, help="replies in the longer run (default 100)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # inside callgrind: DIR COUNT
    args = parser.parse_args()
    if args.measure:
        print(asyncio.run(_measure(Path(args.measure[0]), int(args.measure[1]))))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    few, many = max(1, args.replies // 5), args.replies
    with throughput.workdir_with_dns("rc-mta-instructions-") as (workdir, dns):
        print(f"preparing {many} signed replies ...", file=sys.stderr)
        asyncio.run(_prepare(workdir, dns.port, many))
        print(f"counting {few} and {many} replies under callgrind ...", file=sys.stderr)
        small, large = _count(workdir, few), _count(workdir, many)
    per_reply = (large - small) / (many - few)
    print(f"instructions: {small:,} for {few} replies, {large:,} for {many}")
    print(f"instructions per reply (MAIL + RCPT + DATA, warm): {per_reply:,.0f}")
    if args.json:
        print(json.dumps({"instructions_per_reply": round(per_reply), "replies": many}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
