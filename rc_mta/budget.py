"""What reading one message may cost, checked before any parser sees it, and where reading runs.

Python's ``email`` parser and dkimpy are fine on mail people write and ruinous on mail built
against them: a From field of 64 KiB of comments takes the address parser 98 s, a
Content-Type of 1,000 parameters seconds, MIME nested a thousand deep or ten thousand parts
as long, and each of those holds a worker (and, in C, the interpreter lock) the whole time.
So ``check_budget`` walks the message once, cheaply (finding bytes, never parsing values),
and refuses what no mail client writes, before the reader or DKIM starts:

- the header section: more than ``header_bytes`` bytes or ``header_fields`` fields (in the
  whole message, MIME parts included) → ``552 5.3.4``; a From field over 1 KiB, a Subject
  over 16 KiB, a Content-Type/-Disposition/-Transfer-Encoding over 2 KiB → ``552 5.3.4``;
- structure: more than ``mime_parts`` parts, nesting deeper than ``mime_depth``, more than
  ``mime_parameters`` MIME parameters, a field of more than ``parameter_continuations`` RFC
  2231 continuations,
  a field with more quotes, comments or spaces than any client writes, a charset the reader
  would decode in quadratic time (punycode, idna) → ``554 5.6.0``.

Where a genuine reply can exceed a cap, the reader gets only what it needs instead
(``reader_view``: of a References field with thousands of ids, the first and the last ones).

The walk follows the MIME structure as Python's parser finds it: the type and boundary of
each part are read by the ``email`` package itself, on that one field once its size is
checked, and delimiter lines are found as its feed parser finds them.

``HeavyWork`` is the small thread pool this reading (and DKIM verification) runs in, apart
from the default executor that store calls use, with a queue that answers ``451 4.3.2``
when full rather than making a sender wait behind a crowd.
"""

from __future__ import annotations

import asyncio
import codecs
import re
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from functools import cached_property, partial
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from . import smtp_replies as R
from .errors import MessageRefused, ReaderBusy

if TYPE_CHECKING:
    from .config import InboundConfig

T = TypeVar("T")

# Fields the reader parses with the ``email`` package's structured parsers, whose time grows
# with the square of a field's length on hostile shapes: their own, tighter caps.
FROM_BYTES = 1024
SUBJECT_BYTES = 16 * 1024
MIME_FIELD_BYTES = 2048
MIME_FIELDS = (b"content-type", b"content-disposition", b"content-transfer-encoding")
# Quotes, parentheses, backslashes and white space in the fields parsed: each is a token to
# the parser and its slow shapes are made of them (each costs some 0.2 ms to read). A file
# name has a dozen; a message with a hundred attachments a few hundred.
FIELD_SPECIALS = 64
MESSAGE_SPECIALS = 512
_SPECIALS = re.compile(rb'["()\\ \t]')
_CONTINUATION = re.compile(rb"\*[0-9]")
# A charset given as RFC 2231 parts could hide its name from the checks below.
_ENCODED_NAME = re.compile(rb"(?i)[;\s](?:charset|boundary)\s*\*")
_CHARSET = re.compile(rb'(?i)[;\s]charset\s*=\s*"?([^";\s()]{1,64})')
# Text codecs implemented in Python in quadratic time: no mail is written in them.
_SLOW_CODECS = frozenset({"punycode", "idna"})
_IDS = re.compile(rb"<[^<>]*>")


@dataclass(frozen=True)
class Limits:
    """The per-message caps ([inbound] ``max_header_bytes`` …)."""

    header_bytes: int = 256 * 1024
    header_fields: int = 1000
    mime_parts: int = 100
    mime_depth: int = 16
    mime_parameters: int = 256
    parameter_continuations: int = 32
    references: int = 100

    @classmethod
    def of(cls, inbound: InboundConfig) -> Limits:
        return cls(
            inbound.max_header_bytes,
            inbound.max_header_fields,
            inbound.max_mime_parts,
            inbound.max_mime_depth,
            inbound.max_mime_parameters,
            inbound.max_parameter_continuations,
            inbound.max_references,
        )


DEFAULT_LIMITS = Limits()


# A message at most this large, and as plain as ``Cost.light`` asks, is read (and its DKIM
# verified) on the event loop: that takes less than handing it to a thread and back (two
# hops of ~0.2 ms and the interpreter lock passed back and forth), and within these caps at
# most a few milliseconds whatever its shape (bench/inline_read.py measures the worst). The
# reader's cost grows with lines of text (the comment's lines are weighed one by one, some
# 5-30 µs each), decoded text (base64 turns short lines into many; NFKC can make one
# character eighteen) and signatures (each hashes the body again): each has its cap.
INLINE_BYTES = 8 * 1024
# A comment judged on the loop (``Pipeline.words_say``); its worst shape, a clause a line,
# costs the grammar some 20 ms (most replies' comments are a few hundred characters).
INLINE_COMMENT_CHARS = 2 * 1024
INLINE_LINES = 200
INLINE_FIELDS = 50
INLINE_PARTS = 8
INLINE_PARAMETERS = 16
INLINE_SPECIALS = 32
INLINE_SUBJECT_BYTES = 512
INLINE_NON_ASCII_BYTES = 512
INLINE_SIGNATURES = 2
INLINE_SIGNATURE_BYTES = 2048
# HTML is what costs most per byte (``</`` repeated: ~1.2 µs a byte in the HTML parser).
INLINE_HTML_BYTES = 1024
# dkimpy's relaxed canonicalization on white space (``relaxed_body_cost``): 5-7 ns a step,
# this is at most ~0.7 ms (bench/dkim_whitespace.py; bench/inline_read.py the whole read).
INLINE_WHITESPACE_COST = 100_000
# What one run of white space costs dkimpy beyond the starts its pattern tries: a match and a
# replaced piece of the result, ~240 ns, some 48 steps (bench/dkim_whitespace.py: 1 MiB of
# single spaces between letters, 0.5 M runs of one, takes 130-145 ms).
RUN_STEPS = 48
# Runs shorter than this are counted by ``bytes.count`` (one pass each), longer ones one by one.
_COUNTED_BELOW = 5
_LONGER_RUN = re.compile(rb" {%d,}" % _COUNTED_BELOW)
# Tab and space as a space, every other byte as an "x": a run is what follows an "x".
_AS_RUNS = bytes(0x20 if byte in b"\t " else 0x78 for byte in range(256))


def relaxed_body_cost(body: bytes) -> int:
    """About how many steps dkimpy's relaxed body canonicalization takes on ``body``, at
    most: each run of spaces and tabs costs it ``RUN_STEPS`` and its pattern ``[\\t ]+\\r\\n``
    tries every start of the run, L(L+1)/2 steps for a run of L (counted so for a run that
    ends a line too, which costs only L). Text (a run every six bytes) comes to some 10 a byte.

    Linear and cheap: the sum over runs of L(L+1)/2 is the sum over k of k times the number
    of runs of at least k, which ``bytes.count`` finds for short runs; only the longer runs
    are listed. The bytes it costs whatever they hold (~25 ns each) are not counted here."""
    if b"\t" not in body and b"  " not in body:
        return body.count(b" ") * (RUN_STEPS + 1)  # each space a run of its own (most text)
    marks = b"x" + body.translate(_AS_RUNS)
    runs = marks.count(b"x ")
    steps = runs * (RUN_STEPS + 1)
    for length in range(2, _COUNTED_BELOW):
        at_least = marks.count(b"x" + b" " * length)
        if not at_least:
            return steps
        steps += length * at_least
    counted = _COUNTED_BELOW * (_COUNTED_BELOW - 1) // 2  # of a long run, by the counts above
    for length, many in Counter(map(len, _LONGER_RUN.findall(marks))).items():
        steps += many * (length * (length + 1) // 2 - counted)
    return steps


# What verifying a message's DKIM signatures and ARC sets costs dkimpy, all of them together.
# It runs in the reading pool (on the loop for a light message) and holds the interpreter lock
# through each of its regular expressions, so it is bounded per message, in the steps of
# ``relaxed_body_cost`` (5-7 ns each): 20 million is 100-150 ms, what all but one pass over
# the body may take (white space, header fields, each further signature or ARC set).
# One pass over the body's bytes is not counted in it (``VerificationBudget.spend``): any
# verification makes one, [inbound] max_message_size bounds it (a 5 MiB reply of base64 under
# one relaxed signature: ~180 ms the whole check; 10 MiB ~400 ms), and counted here it would
# leave the owner's own signature on a reply over ~4 MiB unverified, whatever the limit.
MAX_VERIFICATION_COST = 20_000_000
# Each of these was measured in bench/dkim_whitespace.py, in ns, and is given here in steps of
# ~5 ns. dkimpy's relaxed canonicalization of the header section, which it runs over every
# field for each relaxed signature and twice for each ARC set (and three times more to sort
# the sets): ~3 µs a field, ~21 ns a byte (two scans and a strip), and a match, ~100-160 ns,
# for each run of white space and each line break (256 KiB of "a a a": 21-26 ms).
HEADER_FIELD_STEPS = 600
HEADER_BYTE_STEPS = 4
HEADER_RUN_STEPS = 32
# ``dkim.select_headers`` looks at every field, from the bottom, for each distinct name of h=
# (another instance of a name goes on from the last one): ~55 ns a field looked at (1,000
# names over 1,000 fields: 50-55 ms).
SELECT_STEPS = 11
# The body, again for each signature: relaxed, ~25 ns a byte that is not white space (1 MiB
# without any: 25-27 ms; ``relaxed_body_cost`` counts the rest); simple, a copy and SHA-256,
# ~1 ns a byte (these two: ``VerificationCost.body_pass``, free to the first signature
# verified); either way each empty line ending it, stripped one at a time (~110-145 ns).
RELAXED_BODY_BYTE_STEPS = 5
SIMPLE_BODY_BYTES_A_STEP = 4
TRAILING_LINE_STEPS = 28
# A signature's own work: its tags, its key, one RSA verification (well under 0.5 ms).
SIGNATURE_STEPS = 100_000


def relaxed_header_cost(fields: int, header: bytes) -> int:
    """About how many steps dkimpy's relaxed canonicalization of a header section of
    ``fields`` fields, ``header`` bytes, takes: a pass over its bytes, a match for each run of
    white space and each line break. Linear; cheap."""
    runs = (b"x" + header.translate(_AS_RUNS)).count(b"x ")
    return (
        fields * HEADER_FIELD_STEPS + len(header) * HEADER_BYTE_STEPS + (runs + header.count(b"\n")) * HEADER_RUN_STEPS
    )


@dataclass
class VerificationCost:
    """One message's figures that a signature's cost is made of, each counted once: dkimpy's
    split (its header fields, its body) gives them."""

    fields: int
    header: int  # ``relaxed_header_cost`` of the header section
    body: bytes = field(repr=False)

    @classmethod
    def of(cls, headers: list[tuple[bytes, bytes]], body: bytes) -> VerificationCost:
        section = b"".join(name + b":" + value for name, value in headers)
        return cls(len(headers), relaxed_header_cost(len(headers), section), body)

    @cached_property
    def relaxed_body(self) -> int:
        """``relaxed_body_cost`` of the body."""
        return relaxed_body_cost(self.body)

    @cached_property
    def _relaxed_body_text(self) -> int:
        return (len(self.body) - self.body.count(b" ") - self.body.count(b"\t")) * RELAXED_BODY_BYTE_STEPS

    @cached_property
    def _trailing_lines(self) -> int:
        return (len(self.body) - len(self.body.rstrip(b"\r\n"))) // 2 * TRAILING_LINE_STEPS

    def body_pass(self, body_relaxed: bool) -> int:
        """One pass over the body's bytes, as ``c=`` canonicalizes it, its white space apart:
        what verifying any one signature costs, however plain the message."""
        return self._relaxed_body_text if body_relaxed else len(self.body) // SIMPLE_BODY_BYTES_A_STEP

    def canonicalization(self, header_relaxed: bool, body_relaxed: bool) -> int:
        """The header section and the body canonicalized and hashed once, as ``c=`` says."""
        cost = self._trailing_lines + (self.header if header_relaxed else 0) + self.body_pass(body_relaxed)
        return cost + self.relaxed_body if body_relaxed else cost

    def selection(self, names: int) -> int:
        """``select_headers`` for an h= of ``names`` distinct names."""
        return (names + 1) * self.fields * SELECT_STEPS  # +1: dkimpy looks for one more From


class Charge(NamedTuple):
    """What verifying one signature (or one ARC chain) costs, in steps, and how many of them
    are its pass over the body's bytes (``VerificationCost.body_pass``)."""

    steps: int
    body_pass: int = 0


@dataclass
class VerificationBudget:
    """The steps left of ``MAX_VERIFICATION_COST`` for one message: the DKIM check and then the
    ARC check (one ``CheckContext``) spend the same one, each signature or chain before dkimpy
    starts on it, so that what is not verified is known and said. The first to be verified
    (the From domain's own signature comes first) does not pay its pass over the body's bytes,
    which the message's size bounds: so one signature fits on a message of any size the limit
    admits, unless its white space (prose: ~9 M steps a MiB) or header section alone is over
    the budget; every further signature or chain pays in full."""

    left: int = MAX_VERIFICATION_COST
    body_passed: bool = False  # a signature or chain has had its pass over the body free

    def spend(self, charge: Charge) -> str | None:
        """None when ``charge`` fits, and then it is spent; else why it is not verified."""
        cost = charge.steps - (0 if self.body_passed else charge.body_pass)
        if cost > self.left:
            spent = MAX_VERIFICATION_COST - self.left
            return (
                f"verifying it would cost ~{cost / 1e6:.1f} M steps, over what is left ({self.left / 1e6:.1f} M) "
                f"of the message's {MAX_VERIFICATION_COST / 1e6:.0f} M"
                + (f" after {spent / 1e6:.1f} M on other signatures" if spent else "")
                + ("; only the first verified reads the body free" if self.body_passed and charge.body_pass else "")
            )
        self.left -= cost
        self.body_passed = True
        return None


@dataclass
class Cost:
    """What ``check_budget`` counted in a message: what its reading will cost."""

    size: int = 0
    fields: int = 0
    parts: int = 0
    parameters: int = 0
    specials: int = 0
    signatures: int = 0  # DKIM-Signature and ARC fields of the message's own header
    signature_bytes: int = 0  # and their size
    subject_bytes: int = 0
    html_bytes: int = 0  # bodies of text/html parts
    base64_parts: int = 0  # parts whose text the reader would decode from base64
    # Measured only for a message of INLINE_BYTES at most (it can't be light otherwise):
    lines: int = 0  # of the body
    non_ascii_bytes: int = 0
    whitespace_cost: int = 0  # ``relaxed_body_cost`` of the body

    @property
    def light(self) -> bool:
        """Cheap enough to read on the event loop (see ``INLINE_BYTES``)."""
        return (
            self.size <= INLINE_BYTES
            and self.lines <= INLINE_LINES
            and self.fields <= INLINE_FIELDS
            and self.parts <= INLINE_PARTS
            and self.parameters <= INLINE_PARAMETERS
            and self.specials <= INLINE_SPECIALS
            and self.subject_bytes <= INLINE_SUBJECT_BYTES
            and self.non_ascii_bytes <= INLINE_NON_ASCII_BYTES
            and self.signatures <= INLINE_SIGNATURES
            and self.signature_bytes <= INLINE_SIGNATURE_BYTES
            and self.html_bytes <= INLINE_HTML_BYTES
            and self.base64_parts == 0
            and self.whitespace_cost <= INLINE_WHITESPACE_COST
        )


def _too_big(why: str) -> MessageRefused:
    return MessageRefused(R.HEADER_TOO_BIG.with_text(why=why))


def _too_complex(why: str) -> MessageRefused:
    return MessageRefused(R.MESSAGE_TOO_COMPLEX.with_text(why=why))


def check_budget(raw: bytes, limits: Limits) -> Cost:
    """Refuse ``raw`` (CRLF lines, as ``canonical_message`` makes it) when reading it would cost
    more than any genuine reply does; else say what it will cost. Linear in the message's size."""
    tally = Cost(size=len(raw))
    _entity(raw, 0, len(raw), 0, "text/plain", limits, tally)
    if tally.size <= INLINE_BYTES:
        body = raw[_header_end(raw, 0, len(raw))[1] :]
        tally.lines = body.count(b"\n")
        tally.non_ascii_bytes = len(raw.translate(None, _ASCII))
        tally.whitespace_cost = relaxed_body_cost(body)
    return tally


_ASCII = bytes(range(128))


def _header_end(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """Where an entity's header block ends and its body starts (a blank line between them)."""
    if raw.startswith(b"\r\n", start, end):
        return start, start + 2
    blank = raw.find(b"\r\n\r\n", start, end)
    if blank < 0:
        return end, end
    return blank + 2, blank + 4


def _fields(raw: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """The fields of a header block as (lower-case name, start, end), continuations joined;
    one at a time, so a caller counting them stops at its cap."""
    name, first, position = b"", -1, start
    while position < end:
        line_end = raw.find(b"\r\n", position, end)
        line_end = end if line_end < 0 else line_end + 2
        if raw[position : position + 1] not in (b" ", b"\t") or first < 0:
            if first >= 0:
                yield name, first, position
            colon = raw.find(b":", position, line_end)
            name, first = (raw[position:colon].rstrip(b" \t").lower() if colon >= 0 else b""), position
        position = line_end
    if first >= 0:
        yield name, first, end


def _entity(raw: bytes, start: int, end: int, depth: int, default_type: str, limits: Limits, tally: Cost) -> None:
    """Check one entity (the message, a part, an attached message) and everything inside it."""
    top = depth == 0
    if depth > limits.mime_depth:
        raise _too_complex(f"MIME parts are nested more than {limits.mime_depth} deep")
    header_end, body = _header_end(raw, start, end)
    if top and header_end - start > limits.header_bytes:
        raise _too_big(f"the header section is over {limits.header_bytes} bytes")
    content_type: bytes | None = None
    for name, first, last in _fields(raw, start, header_end):
        tally.fields += 1
        if tally.fields > limits.header_fields:
            raise _too_big(f"more than {limits.header_fields} header fields")
        value = raw[first:last]
        if name in MIME_FIELDS:
            _check_mime_field(name, value, limits, tally)
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"content-transfer-encoding" and b"base64" in value.lower():
                tally.base64_parts += 1
        elif top and name == b"from":
            _check_parsed_field("From", value, FROM_BYTES, tally)
        elif top and name == b"subject":
            if len(value) > SUBJECT_BYTES:
                raise _too_big(f"the Subject field is over {SUBJECT_BYTES} bytes")
            tally.subject_bytes += len(value)
        elif top and (name == b"dkim-signature" or name.startswith(b"arc-")):
            tally.signatures += 1
            tally.signature_bytes += len(value)
    if not top:
        tally.parts += 1
        if tally.parts > limits.mime_parts:
            raise _too_complex(f"more than {limits.mime_parts} MIME parts")
    maintype, subtype, boundary = _type_of(content_type, default_type)
    if maintype == "multipart" and boundary is not None:
        child_default = "message/rfc822" if subtype == "digest" else "text/plain"
        for part_start, part_end in _parts(raw, body, end, boundary):
            _entity(raw, part_start, part_end, depth + 1, child_default, limits, tally)
    elif (maintype, subtype) == ("message", "delivery-status"):
        # Blocks of fields separated by blank lines, each parsed as a message of its own.
        tally.parts += raw.count(b"\r\n\r\n", body, end) + 1
        tally.fields += raw.count(b"\r\n", body, end)
        if tally.parts > limits.mime_parts or tally.fields > limits.header_fields:
            raise _too_complex("a delivery report with too many parts or fields")
    elif maintype == "message":
        _entity(raw, body, end, depth + 1, "text/plain", limits, tally)
    elif (maintype, subtype) == ("text", "html"):
        tally.html_bytes += end - body


def _check_parsed_field(label: str, value: bytes, limit: int, tally: Cost) -> None:
    if len(value) > limit:
        raise _too_big(f"the {label} field is over {limit} bytes")
    specials = len(_SPECIALS.findall(value))
    if specials > FIELD_SPECIALS:
        raise _too_complex(f"the {label} field holds more quotes, comments or spaces than a mail client writes")
    tally.specials += specials
    if tally.specials > MESSAGE_SPECIALS:
        raise _too_complex("its MIME fields hold more quotes, comments or spaces than a mail client writes")


def _check_mime_field(name: bytes, value: bytes, limits: Limits, tally: Cost) -> None:
    label = name.decode("ascii").title()
    _check_parsed_field(label, value, MIME_FIELD_BYTES, tally)
    tally.parameters += value.count(b";")
    if tally.parameters > limits.mime_parameters:
        raise _too_complex(f"more than {limits.mime_parameters} MIME parameters")
    # Continuations cost most when many are in one field (the parser joins them per lookup);
    # over the message they count as parameters like any other.
    if len(_CONTINUATION.findall(value)) > limits.parameter_continuations:
        raise _too_complex(f"a {label} field of more than {limits.parameter_continuations} RFC 2231 continuations")
    if _ENCODED_NAME.search(value):
        raise _too_complex(f"a {label} field with an encoded charset or boundary")
    for charset in _CHARSET.findall(value):
        try:
            codec = codecs.lookup(charset.decode("ascii", "replace")).name
        except LookupError:
            continue  # unknown: the reader falls back to a lenient decoding
        if codec in _SLOW_CODECS:
            raise _too_complex(f"text in the {codec} charset, which is not a mail charset")


def _type_of(field: bytes | None, default_type: str) -> tuple[str, str, str | None]:
    """(maintype, subtype, boundary) of an entity, as the ``email`` package reads them.

    Only called on a Content-Type field whose size and tokens are already checked."""
    message = Message(policy=policy.compat32)  # as the reader parses (rc_mta/reading/message.py)
    message.set_default_type(default_type)
    if field is not None:
        lines = field.decode("ascii", "surrogateescape").splitlines(keepends=True)
        message.set_raw(*policy.compat32.header_source_parse(lines))
    try:
        maintype, subtype = message.get_content_maintype(), message.get_content_subtype()
        boundary = message.get_boundary() if maintype == "multipart" else None
    except Exception:  # the parser's own trouble with a field: it reads it as plain text too
        return "text", "plain", None
    return maintype, subtype, boundary


def _parts(raw: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """The parts of a multipart body (``start`` is a line start): regions between its
    delimiter lines, found as the feed parser finds them: ``--boundary``, an optional ``--``
    (the closing one), spaces or tabs, then the line end."""
    try:
        needle = b"\r\n--" + boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return []  # a boundary no line of bytes can hold: the parser finds no parts either
    starts: list[int] = []  # where each part's first line starts
    ends: list[int] = []  # where each part ends: the line break before the next delimiter
    position = start
    while True:
        found = raw.find(needle, max(position - 2, 0), end)
        if found < 0:
            break
        line_end = raw.find(b"\r\n", found + 2, end)
        next_line = end if line_end < 0 else line_end + 2
        rest = raw[found + len(needle) : end if line_end < 0 else line_end]
        closing = rest.startswith(b"--")
        position = next_line
        if (rest[2:] if closing else rest).strip(b" \t"):
            continue  # --boundary followed by more: not a delimiter line
        if starts:
            ends.append(found)
        if closing:
            break
        starts.append(next_line)
    if len(ends) < len(starts):  # no closing delimiter: the last part runs to the end
        ends.append(end)
    return list(zip(starts, ends, strict=True))


def reader_view(raw: bytes, keep: int) -> bytes:
    """``raw`` as the reader sees it: References and In-Reply-To trimmed to ``keep`` ids.

    The reader looks there only for the request's Message-ID: the thread's first id (a
    request starts its thread) and the last ones (the message answered). A long thread's
    References may list thousands; the reader gets those ids and no others, so it can only
    find less than DKIM verified, never more."""
    header_end, _ = _header_end(raw, 0, len(raw))
    pieces: list[bytes] = []
    last = 0
    for name, first, end in _fields(raw, 0, header_end):
        if name not in (b"references", b"in-reply-to"):
            continue
        colon = raw.find(b":", first, end) + 1
        value = raw[colon:end]
        ids = _IDS.findall(value) or [token for token in value.split() if b"@" in token]
        if len(ids) <= keep:
            continue
        kept = [ids[0], *ids[len(ids) - keep + 1 :]] if name == b"references" else ids[:keep]
        pieces += [raw[last:colon], b" ", b"\r\n ".join(kept), b"\r\n"]
        last = end
    return b"".join([*pieces, raw[last:]]) if pieces else raw


# Where the reading runs -----------------------------------------------------------------


@dataclass
class HeavyWork:
    """A bounded pool for parsing and DKIM, apart from the default executor the store uses.

    ``admit`` runs a message's first step only if it would find a worker or at most ``queue``
    jobs waiting before it; otherwise the sender hears ``451 4.3.2`` at once and retries
    later. Later steps of an admitted message (``run``) always queue: it is being read.
    """

    workers: int = 2
    queue: int = 8
    _executor: ThreadPoolExecutor | None = field(default=None, repr=False)
    _in_flight: int = 0  # jobs submitted and not finished: running, then waiting

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="rc-mta-read")
        return self._executor

    @property
    def waiting(self) -> int:
        """Jobs submitted that no worker has taken yet."""
        return max(0, self._in_flight - self.workers)

    async def admit(self, work: Callable[..., T], *args: object) -> T:
        if self._in_flight >= self.workers + self.queue:
            raise ReaderBusy(str(R.READER_BUSY))
        return await self.run(work, *args)

    async def run(self, work: Callable[..., T], *args: object) -> T:
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, partial(work, *args))
        finally:
            self._in_flight -= 1

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


_pool = HeavyWork()


def heavy_work() -> HeavyWork:
    """The process's reading pool (configured by ``configure``; two workers until then)."""
    return _pool


def configure(workers: int, queue: int) -> HeavyWork:
    """Size the process's reading pool from [inbound] ``parse_workers`` and ``parse_queue``."""
    global _pool
    if (_pool.workers, _pool.queue) != (workers, queue):
        _pool.shutdown()
        _pool = HeavyWork(workers, queue)
    return _pool
