"""Every pattern rc-mta runs on text from outside takes time linear in that text.

Python's ``re`` holds the interpreter lock for a whole match, so one super-linear pattern on
an attacker's megabyte stalls every session. Each family below runs on inputs shaped to
hurt it (long runs of its repeated atom, nearly matching prefixes, many separators) of
2 KiB, 16 KiB, 128 KiB and 1 MiB. No clock is compared with a number: each step is 8 times
the input, so a linear pattern takes about 8 times as long (we allow 24) and a quadratic
one 64 times. A new family is one row of ``FAMILIES``: a name, the call under test, and a
function building its hostile input of a given size.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from rc_mta import authresults, budget, config, logs, rawmessage, safetext, tokens
from rc_mta.checks import dmarc
from rc_mta.checks.binding import RequestAddresses, others_addressed
from rc_mta.checks.framing import FRAMING_FIELDS, unread_framing
from rc_mta.inbound import aiosmtpd_private as private
from rc_mta.inbound import protocol
from rc_mta.mailbox import imap
from rc_mta.reading import DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS, contradicts, intent, interpret_action
from rc_mta.reading.html import html_to_text
from rc_mta.reading.message import parse_reply
from rc_mta.tasks import release

SIZES = (2 * 1024, 16 * 1024, 128 * 1024, 1024 * 1024)
LINEAR_RATIO = 24.0  # per step of 8x; quadratic is 64x
NOISE = 0.002  # seconds: below this at 1 MiB nothing can stall anyone


@dataclass(frozen=True)
class Family:
    name: str
    run: Callable[[Any], object]
    build: Callable[[int], Any]


def repeat(atom: str, size: int, tail: str = "") -> str:
    return atom * (size // len(atom)) + tail


def brepeat(atom: bytes, size: int, tail: bytes = b"") -> bytes:
    return atom * (size // len(atom)) + tail


def lines(atom: bytes, size: int) -> bytes:
    """``atom`` repeated on lines of at most 998 bytes, as a message body carries it."""
    line = brepeat(atom, 990) + b"\r\n"
    return line * (size // len(line))


def message(head: bytes, body: bytes = b"ok\r\n") -> bytes:
    return b"From: a@b.example\r\nTo: rc@reply.example\r\n" + head + b"\r\n" + body


def _quietly(call: Callable[[Any], object]) -> Callable[[Any], object]:
    """Run ``call``; a refusal or error is an outcome too (what counts is how long it took)."""

    def run(value: Any) -> object:
        try:
            return call(value)
        except Exception as exc:
            return exc

    return run


ADDRESSES = RequestAddresses("rc", "reply.example")


def _framing(raw: bytes) -> object:
    return unread_framing(parse_reply(raw).message, FRAMING_FIELDS)


# The grammar's readings are kept for the last few comments (``intent._readings``): each
# timed call reads its words afresh.
def _read_words(comment: str) -> object:
    intent._readings.cache_clear()
    return interpret_action(comment, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS)


def _at_complete(comment: str) -> object:
    intent._readings.cache_clear()
    return contradicts(comment, "complete", DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS)


def _at_fail(comment: str) -> object:
    intent._readings.cache_clear()
    return contradicts(comment, "fail", DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS)


FAMILIES: list[Family] = [
    # logs.py: the secret filter sees every log line, attacker text included.
    Family("mask: scheme-like runs", logs.mask_secrets, lambda n: repeat("a.", n)),
    Family("mask: header-like runs", logs.mask_secrets, lambda n: repeat("a-", n)),
    Family("mask: many ://", logs.mask_secrets, lambda n: repeat("x://a:", n)),
    Family("mask: :// then a long password", logs.mask_secrets, lambda n: "x://u:" + "p" * n),
    Family("mask: bearer then spaces", logs.mask_secrets, lambda n: repeat("bearer" + " " * 30, n)),
    Family("mask: LOGIN lines", logs.mask_secrets, lambda n: repeat("a LOGIN b ", n)),
    Family("mask: words before LOGIN", logs.mask_secrets, lambda n: repeat("abc ", n, "LOGIN")),
    Family("mask: secret names", logs.mask_secrets, lambda n: repeat("password ", n)),
    Family("mask: a long word", logs.mask_secrets, lambda n: "a" * n + "password"),
    Family("mask: name= runs", logs.mask_secrets, lambda n: repeat("token=", n)),
    Family("mask: -token: runs", logs.mask_secrets, lambda n: repeat("a-token:", n)),
    Family("mask: AUTH runs", logs.mask_secrets, lambda n: repeat("AUTH ", n)),
    Family("log field quoting", logs._text_value, lambda n: repeat("a=\x1b", n)),
    # safetext.py
    Family("escape controls", safetext.escape_controls, lambda n: repeat("a\x1b\u202e", n)),
    Family("one line", safetext.one_line, lambda n: repeat(" \t\r\n", n)),
    Family("command check", safetext.hostile_character, lambda n: "a" * n + "\x00"),
    # authresults.py: stamps and forged stamps in headers anyone writes.
    Family("A-R value quoting", authresults._quote, lambda n: repeat("a.", n, "!")),
    Family("A-R mailbox value", lambda v: authresults._quote(v, allow_mailbox=True), lambda n: "@a" + "-" * n + "!"),
    Family(
        "A-R strip forged",
        lambda raw: authresults.strip_forged_authentication_results(raw, "mx.example"),
        lambda n: message(b"Authentication-Results: " + brepeat(b"(", n - 100) + b"\r\n"),
    ),
    Family(
        "A-R trusted, many Received",
        lambda raw: authresults.trusted_authentication_results(raw, ["mx.example"]),
        lambda n: message(b"".join(b"Received: by by by\r\n" for _ in range(n // 20))),
    ),
    Family("A-R lexer", authresults._parse_results, lambda n: "mx; " + repeat('a=b (c "d', n)),
    # An ARC-Authentication-Results value from any sealer on the message (checks/arc.py).
    Family("ARC-A-R instance", authresults.arc_authentication_results, lambda n: " " * n + "i" + " " * n + "=1"),
    Family("ARC-A-R value", authresults.arc_authentication_results, lambda n: "i=1; mx; " + repeat('a=b (c "d', n)),
    # rawmessage.py and budget.py: the walk before any parser.
    Family(
        "budget: many header lines",
        _quietly(rawmessage.canonical_message),
        lambda n: message(b"".join(b"X-A: b\r\n" for _ in range(n // 8))),
    ),
    Family(
        "budget: near-delimiters",
        _quietly(rawmessage.canonical_message),
        lambda n: message(b"Content-Type: multipart/mixed; boundary=b\r\n", brepeat(b"--bX\r\n", n)),
    ),
    Family(
        "budget: near-delimiters, one long line",
        _quietly(rawmessage.canonical_message),
        lambda n: message(b"Content-Type: multipart/mixed; boundary=b\r\n", b"--b" + b"-" * n + b"\r\n"),
    ),
    Family(
        "budget: body lines",
        _quietly(rawmessage.canonical_message),
        lambda n: message(b"Content-Type: text/plain\r\n", lines(b"a:", n)),
    ),
    Family(
        "fields a message has once, each twice",
        _quietly(rawmessage.canonical_message),
        lambda n: message(b"".join(b"Subject: s\r\n\tt\r\n" for _ in range(n // 15))),
    ),
    Family(
        "reader view: References",
        lambda raw: budget.reader_view(raw, 100),
        lambda n: message(b"References: " + b"\r\n ".join(b"<%d@x>" % i for i in range(n // 9)) + b"\r\n"),
    ),
    Family(
        "reader view: bare ids",
        lambda raw: budget.reader_view(raw, 100),
        lambda n: message(b"In-Reply-To: " + b"\r\n ".join(b"a@x" for _ in range(n // 6)) + b"\r\n"),
    ),
    Family(
        "reader: many References fields of distinct ids",
        lambda raw: parse_reply(budget.reader_view(raw, 100)),
        lambda n: message(
            b"".join(
                b"References: " + b" ".join(b"<%d.%d@x>" % (f, i) for i in range(100)) + b"\r\n"
                for f in range(n // 1100)
            )
        ),
    ),
    # checks/framing.py: a body read under fields its signature leaves open.
    Family(
        "framing: quoted-printable near-escapes",
        _framing,
        lambda n: message(b"Content-Transfer-Encoding: quoted-printable\r\n", lines(b"=0=3=", n)),
    ),
    Family(
        "framing: base64 then one stray character",
        _framing,
        lambda n: message(b"Content-Transfer-Encoding: base64\r\n", lines(b"QUJD", n) + b"!\r\n"),
    ),
    Family(
        "framing: a body of near MIME parts",
        _framing,
        lambda n: message(b"Content-Type: text/plain\r\n", b" \r\n" * (n // 3) + b"--" + b"-" * 60 + b"\r\n"),
    ),
    # checks/: tokens in Message-IDs, DMARC records, DKIM's white space scan.
    Family("request tokens in ids", ADDRESSES.tokens_in, lambda n: repeat("rc+" + "a" * 39, n)),
    Family("request tokens, near-misses", ADDRESSES.tokens_in, lambda n: repeat("rc.", n)),
    Family(
        "others addressed: near an empty group",
        lambda value: others_addressed([("cc", value)], ADDRESSES, None, bool),
        lambda n: " " * n + ":",
    ),
    Family(
        "others addressed: many unreadable addresses",
        lambda value: others_addressed([("cc", value)], ADDRESSES, None, bool),
        lambda n: repeat("m@[1.2.3.4], ", n),
    ),
    Family("DMARC version", dmarc._VERSION.match, lambda n: "v" + " " * n + "x"),
    Family("DKIM white space cost, runs of 31", budget.relaxed_body_cost, lambda n: lines(b" " * 31 + b"x", n)),
    Family("DKIM white space cost, runs of 4", budget.relaxed_body_cost, lambda n: lines(b" \t  x", n)),
    Family("DKIM white space cost, one run", budget.relaxed_body_cost, lambda n: b" " * n + b"x"),
    Family("DKIM header cost, folded", lambda h: budget.relaxed_header_cost(1, h), lambda n: b"a\r\n " * n),
    Family(
        "DKIM signature cost",
        lambda h: budget.VerificationCost.of([(b"X", h)], h).canonicalization(True, True),
        lambda n: b" \t" * n + b"\r\n" * n,
    ),
    # inbound/aiosmtpd_private.py: MAIL FROM / RCPT TO read without the header parser.
    Family("SMTP address, near-miss", private.plain_address, lambda n: "<" + repeat("a.", n, "@a-")),
    Family("SMTP address, long domain", private.plain_address, lambda n: "<a@" + repeat("a.", n, "!")),
    # tokens.py and config.py: secrets and durations written by people, checked anyway.
    Family("secret as hex", tokens._HEX.fullmatch, lambda n: "a" * n + "!"),
    Family("secret as base64", tokens._BASE64.fullmatch, lambda n: "A" * n + "=" * 8 + "!"),
    Family("config duration", _quietly(config._parse_duration), lambda n: "1" + " " * n + "x"),
    Family("config size", _quietly(config._parse_size), lambda n: "1" + " " * n + "x"),
    Family("config host:port", _quietly(config.parse_host_port), lambda n: repeat("a", n, ":x")),
    Family("config domain", config._DOMAIN.match, lambda n: repeat("a-", n, "!")),
    # inbound, mailbox, tasks: lines from clients, servers and back ends.
    Family("unknown command echo", protocol._UNKNOWN_COMMAND.match, lambda n: '500 Error: command "' + "a" * n),
    Family("xtext decoding", protocol._xtext_decode, lambda n: repeat("+4", n)),
    Family("IMAP UIDVALIDITY", imap._UIDVALIDITY.search, lambda n: brepeat(b"[UIDVALIDITY 1", n)),
    Family("IMAP literal", imap._BODY_LITERAL.search, lambda n: brepeat(b"BODY[] {1", n)),
    Family("Release attribution", release._ATTRIBUTED.search, lambda n: repeat(release.ATTRIBUTION + "a", n, " x")),
    # reading/html.py: a reply's own style sheets, read before its text.
    Family("style sheet: selector brackets", html_to_text, lambda n: repeat("[a(", n - 30, "{display:none}")),
    Family("style sheet: selector escapes", html_to_text, lambda n: "<style>" + repeat("\\2e ", n - 30, "{c:d}")),
    Family("style sheet: selector lists", html_to_text, lambda n: "<style>" + repeat(".a,", n - 30, "{color:#000}")),
    Family("style sheet: colour rules", html_to_text, lambda n: "<style>" + repeat(".a{color:#123}", n - 30)),
    Family(
        "style sheet: painted elements",
        html_to_text,
        lambda n: "<style>.a{color:#123}.b{background:#123}</style>" + repeat('<b class="a b c">x</b>', n - 60),
    ),
    Family(
        "style sheet: one rule, many selectors and declarations",
        html_to_text,
        # Distinct selectors (fewer than the sheet's cap of rules), declarations the rest.
        lambda n: (
            "<style>" + ",".join(f".c{i}" for i in range(n // 60)) + "{" + "color:#123;" * (n // 13) + "}</style>x"
        ),
    ),
    Family("style sheet in SVG: markup", html_to_text, lambda n: "<svg><style>" + repeat("<&#", n - 30)),
    # reading/intent.py: what a button's reply may not say (``contradicts``).
    Family("button words: one clause of negations", _at_complete, lambda n: repeat("don't ", n)),
    Family("button words: clauses of prohibitions", _at_complete, lambda n: repeat("Don't see any issues, ", n)),
    Family("button words: go words", _at_fail, lambda n: repeat("please definitely ", n, "deploy")),
    # Struck-through text: plain "~~" marks, and HTML strike elements rendered with them.
    Family("struck text: unpaired marks", _read_words, lambda n: repeat("~~ approved ~", n)),
    Family("struck text: long spans", _read_words, lambda n: repeat("~~" + "no " * 50 + "~~", n)),
    Family("struck text: nested strike elements", html_to_text, lambda n: repeat("<s><del>a<p>b", n)),
    # reading/html.py: short tags, each costing the parser and the checks (read to MAX_HTML_TAGS).
    Family("HTML: <p> runs", html_to_text, lambda n: repeat("<p>", n)),
    Family("HTML: <b>x</b> runs", html_to_text, lambda n: repeat("<b>x</b>", n)),
    # reading/intent.py: the decision words inside a run of Chinese, Japanese or Korean.
    Family("CJK run: negated decisions", _read_words, lambda n: repeat("\u6211\u4e0d\u80fd\u6279\u51c6", n)),
    Family("CJK run: near decisions", _read_words, lambda n: repeat("\u627f\u8a8d\u3057", n)),
    Family("CJK run: negations only", _read_words, lambda n: repeat("\u6ca1\u6709", n, "\u6279\u51c6")),
    # reading/intent.py: the times inside such a run ("明日承認", "月曜日に"), and times in words.
    Family("CJK run: times", _read_words, lambda n: repeat("\u660e\u65e5\u627f\u8a8d", n)),
    Family("CJK run: near times", _read_words, lambda n: repeat("\u6708\u66dc", n, "\u306b")),
    Family("times and conditions", _read_words, lambda n: repeat("approve on the next once ", n)),
]


def seconds(run: Callable[[Any], object], value: Any) -> float:
    """The least CPU time (this thread's: other processes' load does not count) of a few
    rounds, each long enough (20 ms) for the clock to be exact. The collector is off while
    timing: a collection the input's garbage set off is not the pattern's cost."""
    best = float("inf")
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(3):
            calls, started = 0, time.thread_time()
            while True:
                run(value)
                calls += 1
                elapsed = time.thread_time() - started
                if elapsed > 0.02:
                    break
            best = min(best, elapsed / calls)
    finally:
        if collecting:
            gc.enable()
    return best


def step_ratio(family: Family, smaller: int, larger: int, before: float) -> tuple[float, float, float]:
    """How many times longer ``larger`` bytes took than ``smaller`` (which took ``before``),
    with both times. A step over the bound is measured again (twice at most) and the least
    ratio kept: a busy machine (CI runs several test processes per core) can slow one
    measurement, but a super-linear pattern is slow every time."""
    after = seconds(family.run, family.build(larger))
    best = (after / max(before, 1e-7), before, after)
    for _ in range(2):
        if best[0] < LINEAR_RATIO or best[2] <= NOISE:
            break
        before = seconds(family.run, family.build(smaller))
        after = seconds(family.run, family.build(larger))
        best = min(best, (after / max(before, 1e-7), before, after))
    return best


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_pattern_time_grows_linearly_on_hostile_input(family: Family) -> None:
    before = seconds(family.run, family.build(SIZES[0]))
    for smaller, larger in itertools.pairwise(SIZES):
        ratio, least_before, after = step_ratio(family, smaller, larger, before)
        assert after <= NOISE or ratio < LINEAR_RATIO, (
            f"{family.name}: {smaller} → {larger} bytes took {ratio:.0f}x as long "
            f"({least_before * 1000:.2f} ms → {after * 1000:.2f} ms)"
        )
        before = after
