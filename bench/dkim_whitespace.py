"""What dkimpy's relaxed body canonicalization really costs, beside what rc-mta estimates.

Why: ``budget.relaxed_body_cost`` estimates the steps dkimpy's relaxed canonicalization takes
on a body, and checks/dkim.py (and arc.py) refuse to verify a body whose estimate is over
``budget.MAX_VERIFICATION_COST``; ``budget.INLINE_WHITESPACE_COST`` keeps such bodies off the event loop.
That holds only if the estimate bounds the real cost for every body. This builds bodies of the
largest size rc-mta accepts by default (1 MiB) and of the inline size, shaped against the
estimate (runs just short of what it counted, tabs and spaces mixed, runs ending in a bare CR,
single spaces between letters, one long run beside many short ones) and as people write
them (prose, a 3 KiB reply with a tab); times dkimpy's ``canonicalize_body`` (what each relaxed
signature runs, in C, holding the interpreter lock) and the estimate itself; and prints, for
each, the estimate, the real time, the nanoseconds per estimated step and whether DKIM would
verify it. Then the header side: relaxed header canonicalization, which each signature runs
over the whole header section, and ``select_headers``, which scans the fields for each name
of h=. Last, whole messages shaped against all of it (16 signatures or 8 ARC sets over a 256
KiB header, an h= of 1,150 names, a body of blank lines, a relay signing above the owner),
as rc-mta accepts them, each verified as rc-mta does (its DKIM then its ARC check, keys
answered from the test zones with no server): the CPU time of one message, all threads.

    python bench/dkim_whitespace.py [--json] [--messages]

With ``--messages`` only the whole messages are measured. With ``--json`` the last line is
``{"worst_verified_ms": …, "worst_inline_ms": …, "worst_message_ms": …, …}``: the slowest
body DKIM would still verify, the slowest the loop would read, the slowest whole message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dkim
import dkim.crypto
from dkim.canonicalization import CanonicalizationPolicy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rc_mta import budget  # noqa: E402
from rc_mta.budget import MAX_VERIFICATION_COST  # noqa: E402
from rc_mta.checks import CheckContext  # noqa: E402
from rc_mta.checks.arc import ArcCheck  # noqa: E402
from rc_mta.checks.binding import RequestAddresses  # noqa: E402
from rc_mta.checks.dkim import DkimCheck  # noqa: E402

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


KEYS = REPO / "tests" / "keys"
ZONES = REPO / "tests" / "zones"
OWNER = "alice@good.test"
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]


def published_key(zone: str, selector: str) -> bytes:
    """The TXT record of ``selector`` in tests/zones/``zone``.zone (its quoted strings joined)."""
    text = (ZONES / f"{zone}.zone").read_text()
    record = re.search(rf"^{selector}\._domainkey\s+IN TXT (\([^)]*\)|.*)$", text, re.M)
    assert record, (zone, selector)
    return "".join(re.findall(r'"([^"]*)"', record.group(1))).encode()


class Keys:
    """A resolver answering the key lookups of the test zones, with no server: only CPU is timed."""

    def __init__(self) -> None:
        self.records = {
            "sel._domainkey.good.test": published_key("good.test", "sel"),
            "evil._domainkey.evil.test": published_key("evil.test", "evil"),
            "arc._domainkey.sealer.test": published_key("sealer.test", "arc"),
        }

    async def resolve(self, name: str, rdtype: str) -> list[str]:
        record = self.records.get(name.lower().rstrip("."))
        return [record.decode()] if record else []

    def dkim_txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        return self.records.get(text.lower().rstrip("."))


def message(fields: int, field_value: bytes, body: bytes) -> bytes:
    """A reply from alice@good.test with ``fields`` more header fields of ``field_value``."""
    head = b"From: Alice <%s>\r\nTo: rc@reply.example.test\r\nSubject: Re: deploy\r\n" % OWNER.encode()
    head += b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <r1@good.test>\r\n"
    head += b"".join(b"X-F%d:%s\r\n" % (i, field_value) for i in range(fields))
    return head + b"\r\n" + body


def signed(
    raw: bytes, times: int, names: list[bytes] = SIGNED, c: bytes = b"relaxed", domain: bytes = b"good.test"
) -> bytes:
    """``raw`` with ``times`` signatures of ``domain`` on top, each signing ``names``: written as
    compactly as a sender shaping them would (``h=a:b``; dkimpy's signer writes ``a : b``)."""
    selector, key_file = (b"sel", "good-sel2048.pem") if domain == b"good.test" else (b"evil", "evil-sel2048.pem")
    key = dkim.crypto.parse_pem_private_key((KEYS / key_file).read_bytes())
    policy = CanonicalizationPolicy.from_c_value(c + b"/" + c)
    for _ in range(times):
        message = dkim.DKIM(raw)
        body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(message.body)).digest())
        tags = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", c + b"/" + c), (b"d", domain), (b"s", selector)]
        tags += [(b"h", b":".join(names)), (b"bh", body_hash), (b"b", b"")]
        value = b"; ".join(b"=".join(tag) for tag in tags)
        hasher = hashlib.sha256()
        canonical = policy.canonicalize_headers(message.headers)
        dkim.hash_headers(hasher, policy, canonical, list(names), (b"DKIM-Signature", b" " + value), dict(tags))
        signature = base64.b64encode(dkim.crypto.RSASSA_PKCS1_v1_5_sign(hasher, key))
        raw = b"DKIM-Signature: " + value + signature + b"\r\n" + raw
    return raw


def sealed(raw: bytes, sets: int, names: list[bytes] = SIGNED) -> bytes:
    """``raw`` sealed ``sets`` times by sealer.test, each ARC-Message-Signature signing ``names``."""
    key = (KEYS / "sealer-arc2048.pem").read_bytes()
    for _ in range(sets):
        raw = b"Authentication-Results: gw.sealer.test; dmarc=pass header.from=good.test\r\n" + raw
        raw = b"".join(dkim.arc_sign(raw, b"arc", b"sealer.test", key, b"gw.sealer.test", include_headers=names)) + raw
    return raw


# h= names no field has, two letters each, distinct (select_headers scans the fields again
# for each distinct name): as many as a 4 KiB signature field holds.
ABSENT = [bytes((a, b)) for a in b"abcdefghijklmnopqrstuvwyz0123456789" for b in b"abcdefghijklmnopqrsuvwyz0123456789"]
HEADER_256K = (1000 - 8 - 48, b" " + b"a " * 125)  # fields, value: 256 KiB of header, a space every 2 bytes


def whole_messages() -> dict[str, bytes]:
    """Messages shaped against the header side, as rc-mta accepts them (256 KiB, 1,000 fields)."""
    fields, value = HEADER_256K
    small_body = b"Approved.\r\n"
    costly_body = repeated(b" " * 31 + b"x", 700 * 1024)
    no_space = repeated(b"x" * 76 + b"\r\n", MIB - 8 * 1024)
    return {
        "3 KiB reply, 1 signature": signed(message(0, b"", reply(3 * 1024)), 1),
        "16 relaxed signatures, 256 KiB header": signed(message(fields, value, small_body), 16),
        "16 signatures of h= 1,150 absent names, 1,000 fields": signed(
            message(fields + 24, b" x", small_body), 16, SIGNED + ABSENT[:1150], c=b"simple"
        ),
        "16 signatures of h= 95 absent names, 1,000 fields": signed(
            message(fields + 24, b" x", small_body), 16, SIGNED + ABSENT[:95], c=b"simple"
        ),
        "16 relaxed signatures, 700 KiB costly body": signed(message(0, b"", costly_body), 16),
        "16 relaxed signatures, 1 MiB without white space": signed(message(0, b"", no_space), 16),
        "16 simple signatures, 1 MiB of blank lines": signed(
            message(0, b"", b"\r\n" * ((MIB - 16 * 1024) // 2)), 16, c=b"simple"
        ),
        "relay on top of the owner, 700 KiB costly body": signed(
            signed(message(0, b"", costly_body), 1), 2, domain=b"evil.test"
        ),
        "8 ARC sets, 256 KiB header, h= 550 names": sealed(
            message(fields - 40, value, small_body), 8, SIGNED + ABSENT[:550]
        ),
        "8 ARC sets, 256 KiB header, h= 95 names": sealed(
            message(fields - 40, value, small_body), 8, SIGNED + ABSENT[:95]
        ),
        "16 relaxed signatures and 8 ARC sets, 256 KiB header": sealed(
            signed(message(fields - 64, value, small_body), 16), 8, SIGNED + ABSENT[:95]
        ),
    }


def verification(raw: bytes) -> tuple[float, str, str]:
    """(CPU ms of DKIM then ARC on ``raw``, as rc-mta runs them for one message, and their verdicts)."""
    resolver = Keys()
    dkim_check = DkimCheck(resolver, 1024)  # type: ignore[arg-type]
    arc_check = ArcCheck(resolver, ["sealer.test"], RequestAddresses("rc", "reply.example.test"), 1024)  # type: ignore[arg-type]

    async def both() -> tuple[str, str]:
        context = CheckContext(raw=raw, header_from=OWNER)
        dkim_verdict = await dkim_check.evaluate(context)
        arc_verdict = await arc_check.evaluate(context)
        domains = dkim_verdict.facts.get("domains", "")
        return dkim_verdict.result + ": " + dkim_verdict.reason[:90] + (f" ({domains})" if domains else ""), (
            arc_verdict.result + ": " + arc_verdict.reason[:90]
        ) if arc_verdict else "-"

    best, verdicts = float("inf"), ("", "")
    for _ in range(3):
        started = time.process_time()
        verdicts = asyncio.run(both())
        best = min(best, time.process_time() - started)
    return best * 1e3, *verdicts


def bodies() -> dict[str, object]:
    """Each body shape beside its estimate; the slowest verified and the slowest on the loop."""
    print(f"MAX_VERIFICATION_COST {MAX_VERIFICATION_COST:,}; INLINE_WHITESPACE_COST {budget.INLINE_WHITESPACE_COST:,}")
    print(f"{'body':28} {'bytes':>8} {'estimate':>12} {'est. µs':>8} {'real ms':>8} {'ns/step':>8}  verdict")
    worst_verified = (0.0, "")
    worst_inline = (0.0, "")
    for size in (MIB, budget.INLINE_BYTES):
        for name, build in SHAPES.items():
            body = build(size)
            estimate, estimate_us, real_ms = measure(body)
            verified = estimate <= MAX_VERIFICATION_COST
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
    print()
    return {
        "worst_verified_ms": round(worst_verified[0], 1),
        "worst_verified": worst_verified[1],
        "worst_inline_ms": round(worst_inline[0], 2),
        "worst_inline": worst_inline[1],
        **{what: round(ms, 1) for what, ms in headers.items()},
    }


def messages() -> dict[str, object]:
    """Each whole message's DKIM and ARC verification: its CPU time and verdicts; the slowest."""
    worst_message = (0.0, "")
    for name, raw in whole_messages().items():
        ms, dkim_verdict, arc_verdict = verification(raw)
        print(f"{name:55} {len(raw):8} bytes {ms:8.1f} ms\n    DKIM {dkim_verdict}\n    ARC {arc_verdict}")
        if ms > worst_message[0]:
            worst_message = (ms, name)
    print(f"worst message, DKIM and ARC: {worst_message[0]:.1f} ms ({worst_message[1]})")
    return {"worst_message_ms": round(worst_message[0], 1), "worst_message": worst_message[1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--messages", action="store_true", help="only the whole messages")
    args = parser.parse_args()
    figures = {} if args.messages else bodies()
    figures.update(messages())
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
