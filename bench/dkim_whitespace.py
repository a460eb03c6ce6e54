"""What dkimpy's relaxed body canonicalization really costs, beside what rc-mta estimates.

Why: ``budget.relaxed_body_cost`` estimates the steps dkimpy's relaxed canonicalization takes
on a body, and checks/dkim.py (and arc.py) refuse to verify a body whose estimate is over
``MAX_WHITESPACE_COST``; ``budget.INLINE_WHITESPACE_COST`` keeps such bodies off the event loop.
That holds only if the estimate bounds the real cost for every body. This builds bodies of the
largest size rc-mta accepts by default (1 MiB) and of the inline size, shaped against the
estimate (runs just short of what it counted, tabs and spaces mixed, runs ending in a bare CR,
single spaces between letters, one long run beside many short ones) and as people write
them (prose, a 3 KiB reply with a tab); times dkimpy's ``canonicalize_body`` (what each relaxed
signature runs, in C, holding the interpreter lock) and the estimate itself; and prints, for
each, the estimate, the real time, the nanoseconds per estimated step and whether DKIM would
verify it. Then the header side: relaxed header canonicalization, which each signature runs
over the whole header section.

    python bench/dkim_whitespace.py [--json]

With ``--json`` the last line is ``{"worst_verified_ms": …, "worst_inline_ms": …, …}``: the
slowest body DKIM would still verify, and the slowest the loop would read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dkim
from dkim.canonicalization import CanonicalizationPolicy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rc_mta import budget  # noqa: E402
from rc_mta.checks.dkim import MAX_WHITESPACE_COST  # noqa: E402

MIB = 1024 * 1024
RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
REPLY = (
    b"Approved.\r\n\r\nThe change board met today and agreed to go ahead with the deploy on\r\n"
    b"Thursday.\tPlease keep the rollback plan at hand.\r\n\r\n-- \r\nAlice\r\n\r\n"
    b"On Mon, 3 Mar 2025 at 10:02, Release <rc@reply.example.com> wrote:\r\n"
)


def repeated(unit: bytes, size: int) -> bytes:
    return unit * max(1, size // len(unit))


def reply(size: int) -> bytes:
    """A reply as people write it: text, a tab, a quoted request."""
    quoted = b"".join(b"> Line %d of the request, with its words and a number or two.\r\n" % i for i in range(80))
    return (REPLY + quoted)[:size]


def one_long_run_among_short(size: int) -> bytes:
    """Runs of 31 (never counted before) beside one run the old estimate put just under its cap."""
    long_run = b" " * 4400 + b"x\r\n"
    return long_run + repeated(b" " * 31 + b"x", size - len(long_run))


SHAPES: dict[str, Callable[[int], bytes]] = {
    "3 KiB reply with a tab": lambda size: reply(3 * 1024),
    "prose": lambda size: repeated(b"The change board met today and agreed. " * 2 + b"\r\n", size),
    "no white space": lambda size: repeated(b"x" * 76 + b"\r\n", size),
    "' x' (single spaces)": lambda size: repeated(b" x", size),
    "'  x'": lambda size: repeated(b"  x", size),
    "' \\tx'": lambda size: repeated(b" \tx", size),
    "runs of 8": lambda size: repeated(b" " * 8 + b"x", size),
    "runs of 31": lambda size: repeated(b" " * 31 + b"x", size),
    "runs of 31 tabs": lambda size: repeated(b"\t" * 31 + b"x", size),
    "runs of 31, tab and space": lambda size: repeated(b" \t" * 15 + b" x", size),
    "runs of 31 then bare CR": lambda size: repeated(b" " * 31 + b"\r", size),
    "runs of 1..31": lambda size: repeated(b"".join(b" " * n + b"x" for n in range(1, 32)), size),
    "one long run among 31s": one_long_run_among_short,
    "runs of 32": lambda size: repeated(b" " * 32 + b"x", size),
    "runs of 300": lambda size: repeated(b" " * 300 + b"x", size),
    "runs of 1000 ending lines": lambda size: repeated(b" " * 1000 + b"\r\n", size),
}


def best_of(runs: int, work: Callable[[], object]) -> float:
    """Least CPU time of ``runs`` calls, in seconds (least: the machine's other load apart)."""
    best = float("inf")
    for _ in range(runs):
        started = time.thread_time()
        work()
        best = min(best, time.thread_time() - started)
    return best


def measure(body: bytes) -> tuple[int, float, float]:
    """(estimate, the estimate's own time in µs, dkimpy's canonicalization in ms)."""
    estimate = budget.relaxed_body_cost(body)
    estimate_us = best_of(9, lambda: budget.relaxed_body_cost(body)) * 1e6
    real_ms = best_of(3 if len(body) > 64 * 1024 else 9, lambda: RELAXED.canonicalize_body(body)) * 1e3
    return estimate, estimate_us, real_ms


def header_side() -> dict[str, float]:
    """Per signature, over a header section of 256 KiB (the budget's cap) in 1,000 fields."""
    fields = [(b"X-F%d" % i, b" " + b"a " * 120 + b"\r\n") for i in range(1000)]
    absent = [b"n%d" % i for i in range(1000)]  # an h= of 1,000 names (under 5 KiB) no field has
    return {
        "relaxed header canonicalization (ms)": best_of(3, lambda: RELAXED.canonicalize_headers(fields)) * 1e3,
        "select_headers, h= of 1,000 absent names (ms)": best_of(3, lambda: dkim.select_headers(fields, absent)) * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"MAX_WHITESPACE_COST {MAX_WHITESPACE_COST:,}; INLINE_WHITESPACE_COST {budget.INLINE_WHITESPACE_COST:,}")
    print(f"{'body':28} {'bytes':>8} {'estimate':>12} {'est. µs':>8} {'real ms':>8} {'ns/step':>8}  verdict")
    worst_verified = (0.0, "")
    worst_inline = (0.0, "")
    for size in (MIB, budget.INLINE_BYTES):
        for name, build in SHAPES.items():
            body = build(size)
            estimate, estimate_us, real_ms = measure(body)
            verified = estimate <= MAX_WHITESPACE_COST
            inline = len(body) <= budget.INLINE_BYTES and estimate <= budget.INLINE_WHITESPACE_COST
            per_step = f"{real_ms * 1e6 / estimate:8.1f}" if estimate else f"{'-':>8}"
            verdict = ("verified" if verified else "not verified") + (", on the loop" if inline else "")
            print(f"{name:28} {len(body):8} {estimate:12,} {estimate_us:8.0f} {real_ms:8.2f} {per_step}  {verdict}")
            if verified and real_ms > worst_verified[0]:
                worst_verified = (real_ms, f"{name}, {len(body)} bytes")
            if inline and real_ms > worst_inline[0]:
                worst_inline = (real_ms, f"{name}, {len(body)} bytes")
        print()
    print(f"worst verified: {worst_verified[0]:.1f} ms ({worst_verified[1]})")
    print(f"worst on the loop: {worst_inline[0]:.2f} ms ({worst_inline[1]})")
    headers = header_side()
    for what, ms in headers.items():
        print(f"header side, each signature: {what} {ms:.1f}")
    if args.json:
        print(
            json.dumps(
                {
                    "worst_verified_ms": round(worst_verified[0], 1),
                    "worst_verified": worst_verified[1],
                    "worst_inline_ms": round(worst_inline[0], 2),
                    "worst_inline": worst_inline[1],
                    **{what: round(ms, 1) for what, ms in headers.items()},
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
