"""The worst a message light enough to be read on the event loop costs there.

Why: ``budget.Cost.light`` lets a small, plain message be read and DKIM-verified on the
loop instead of in the reading pool (a thread hop costs more than reading it). That is only
safe if no message it admits holds the loop long. This builds every hostile shape of
tests/hostile_messages.py, and relaxed-signed bodies of long white-space runs, at sizes up
to ``budget.INLINE_BYTES``; keeps those ``Cost.light`` admits; and prints the CPU time
reading each (and verifying its signature) takes, worst first.

    python bench/inline_read.py [--json]

With ``--json`` the last line is ``{"worst_ms": …, "worst_kind": …}``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import dkim

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from hostile_messages import HOSTILE, hostile  # noqa: E402

from rc_mta import budget  # noqa: E402
from rc_mta.errors import MessageRefused  # noqa: E402
from rc_mta.pipeline import read_message  # noqa: E402
from rc_mta.rawmessage import measured_message  # noqa: E402

KEY = (REPO / "tests" / "keys" / "good-sel2048.pem").read_bytes()
ZONE = (REPO / "tests" / "zones" / "good.test.zone").read_text()
HEAD = b"From: Alice <alice@good.test>\r\nTo: rc@reply.example.test\r\nSubject: Re: deploy\r\n\r\n"
SIZES = (1024, 2048, 4096, 6144, budget.INLINE_BYTES - 256)


def public_key() -> bytes:
    found = re.search(r"sel\._domainkey\s+IN TXT \((.*?)\)", ZONE, re.S)
    assert found is not None
    return "".join(re.findall(r'"([^"]*)"', found.group(1))).encode()


def white_space(size: int, run: int) -> bytes:
    """A relaxed-signed body of runs of spaces that do not end a line."""
    raw = HEAD + (b" " * run + b"x\r\n") * max(1, (size - len(HEAD)) // (run + 3))
    signature = dkim.sign(
        raw, b"sel", b"good.test", KEY, canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from"]
    )
    return bytes(signature) + raw


def lines_of(size: int, line: bytes) -> bytes:
    """A text body of ``line`` repeated, with two relaxed signatures."""
    body = (line + b"\r\n") * max(1, (size - len(HEAD) - 1200) // (len(line) + 2))
    raw = HEAD.replace(b"\r\n\r\n", b"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n") + body
    for _ in range(2):
        raw = bytes(dkim.sign(raw, b"sel", b"good.test", KEY, canonicalize=(b"relaxed", b"relaxed"))) + raw
    return raw


def cost_ms(raw: bytes, record: bytes) -> float | None:
    """CPU time to read ``raw`` and verify its signatures, if it is light; else None."""
    try:
        canonical, cost = measured_message(raw)
    except MessageRefused:
        return None
    if not cost.light:
        return None
    started = time.thread_time()
    for _ in range(3):
        read_message(raw, None)
        verifier = dkim.DKIM(canonical)
        for index in range(len([h for h, _ in verifier.headers if h.lower() == b"dkim-signature"])):
            verifier.verify(idx=index, dnsfunc=lambda _name, timeout=5: record)
    return (time.thread_time() - started) / 3 * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    record = public_key()
    worst: dict[str, tuple[float, int]] = {}
    shapes = {kind: (lambda size, kind=kind: hostile(kind, size, "rc@reply.example.test")) for kind in HOSTILE}
    for run in (1, 4, 31, 40, 100, 300, 1000):
        shapes[f"white space runs of {run}"] = lambda size, run=run: white_space(size, run)
    # Lines the comment reader weighs one by one (quote headers, attributions, banners,
    # NFKC-expanding characters), as many as fit, signed twice (each hashes the body).
    for line in (b"Sent: a", b"From: a", b"1 a:", b"On 1 a wrote:", b"[EXTERNAL] a", "\ufdfa".encode(), b"a"):
        shapes[f"lines of {line[:14]!r}"] = lambda size, line=line: lines_of(size, line)
    for kind, build in shapes.items():
        for size in SIZES:
            spent = cost_ms(build(size), record)
            if spent is not None and spent > worst.get(kind, (-1.0, 0))[0]:
                worst[kind] = (spent, size)
    print(f"{'shape':32} {'worst light (ms)':>18} {'at bytes':>9}")
    for kind in shapes:
        spent, size = worst.get(kind, (0.0, 0))
        print(f"{kind:32} {spent:18.2f} {size:9}" if size else f"{kind:32} {'never light':>18}")
    top = max(worst.items(), key=lambda item: item[1][0], default=("none", (0.0, 0)))
    print(f"worst: {top[1][0]:.2f} ms ({top[0]})")
    if args.json:
        print(json.dumps({"worst_ms": round(top[1][0], 2), "worst_kind": top[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
