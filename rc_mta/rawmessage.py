"""The one byte sequence that every reader of a message sees.

DKIM (dkimpy) and the reader (Python's ``email``) split a message into lines and fields
by different rules: a bare CR or LF inside the header block, or a line that is neither a
field nor a continuation, makes "headers" appear to one parser that the other never saw.
An attacker holding a genuinely signed message would then choose the words we read while
the signature still verifies. So, before either looks at it, a message is brought to one
form or refused:

- a message with no CR at all (a mailbox file's LF-only lines), or a header block whose
  lines all end in a bare LF (an old script's), is converted to CRLF;
- in the header block, a bare CR, CRLF mixed with bare LF, or a line that is neither a
  field (``name:``) nor a folded continuation refuses the message;
- in the body, a bare CR or LF becomes CRLF (both parsers then agree on the lines);
- a field RFC 5322 (3.6) or MIME allows once (``SINGLE_FIELDS``) that is there twice with
  another value refuses the message: the reader reads the first of a kind, DKIM signs the
  bottom-most, so empty In-Reply-To and References fields put on top of the owner's signed
  reply to someone's question made it look like an answer to nothing. No mail client writes
  two that differ (Gmail refuses such mail since 2024). Two alike are let through: both
  readers see the same, and some mailers write a MIME field twice (Tine 2.0's ActiveSync
  replies from Android phones, PHP mailers).

Every step is a linear scan of the bytes. Last, ``check_budget`` refuses what would cost
more to read than any genuine reply does (rc_mta/budget.py), before DKIM or the reader start.
"""

from __future__ import annotations

import re

from . import smtp_replies as R
from .budget import DEFAULT_LIMITS, Cost, Limits, check_budget
from .errors import MessageRefused

# RFC 5322 field name: printable US-ASCII except ":", then the colon (no space before it).
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")
# At most one each (or copies alike): RFC 5322 3.6's table (the eleven Gmail also counts) and
# the MIME fields that say how the one body is read (RFC 2045, RFC 2183; not MIME-Version,
# which says nothing the reader uses). Trace and Resent-* fields, Comments, Keywords and
# every other field may repeat.
SINGLE_FIELDS = frozenset(
    {
        *(b"date", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"),
        *(b"message-id", b"in-reply-to", b"references", b"subject"),
        *(b"content-type", b"content-transfer-encoding", b"content-disposition"),
    }
)


def _refuse(why: str) -> MessageRefused:
    return MessageRefused(R.MESSAGE_MALFORMED.with_text(why=why))


def canonical_message(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """``raw`` in the one form DKIM and the reader both parse alike, within ``limits``;
    refuses what can't be."""
    return measured_message(raw, limits)[0]


def measured_message(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, Cost]:
    """``canonical_message``, and what reading it will cost (``budget.Cost``)."""
    if b"\r" not in raw:
        raw = raw.replace(b"\n", b"\r\n")
    end = _header_end(raw)
    if end > limits.header_bytes:
        raise MessageRefused(R.HEADER_TOO_BIG.with_text(why=f"the header section is over {limits.header_bytes} bytes"))
    head, body = raw[:end], raw[end:]
    if head.count(b"\r") != head.count(b"\r\n"):
        raise _refuse("a bare CR in the header section")
    crlf, lf = head.count(b"\r\n"), head.count(b"\n")
    if crlf == 0 and lf:
        head = head.replace(b"\n", b"\r\n")  # every line ends in a bare LF: one format, not two
    elif crlf != lf:
        raise _refuse("CRLF and bare LF line endings mixed in the header section")
    twice = _check_header_block(head)
    if body.count(b"\r") != body.count(b"\n") or body.count(b"\r\n") != body.count(b"\n"):
        body = _ANY_NEWLINE.sub(b"\r\n", body)
    raw = head + body
    cost = check_budget(raw, limits)  # a flood of fields is refused as one, for its size
    if twice is not None:
        raise MessageRefused(R.DUPLICATE_FIELD.with_text(field=twice))
    return raw, cost


def _header_end(raw: bytes) -> int:
    """Where the header section ends (its empty line included in the body part), reading
    lines the most permissive way: an LF ends a line, an empty line may carry a CR."""
    if raw.startswith((b"\n", b"\r\n")):
        return 0
    ends = [i + 1 for i in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    return min(ends) if ends else len(raw)


def _check_header_block(head: bytes) -> str | None:
    """Refuses a header section two parsers would split differently; else the name of the
    first field of ``SINGLE_FIELDS`` found twice with another value (None: none is)."""
    if not head:
        return None
    if b"\x00" in head:
        raise _refuse("a NUL byte in the header section")
    lines = head.split(b"\r\n")
    if lines[-1] != b"":
        raise _refuse("the header section does not end with a line break")
    seen: dict[bytes, bytes] = {}  # a single field's value, its white space made one space
    twice: str | None = None
    field: tuple[bytes, str, list[bytes]] | None = None  # (lowercase name, name, value lines)
    for number, line in enumerate(lines[:-1]):
        if line[:1] in (b" ", b"\t"):
            if number == 0:
                raise _refuse("the message starts with a continuation line")
            if field is not None:
                field[2].append(line)
            continue
        start = _FIELD_START.match(line)
        if not start:
            raise _refuse(f"header line {number + 1} is not a header field")
        twice = twice or _differs(field, seen)
        name = line[: start.end() - 1]
        field = (name.lower(), name.decode("ascii"), [line[start.end() :]]) if name.lower() in SINGLE_FIELDS else None
    return twice or _differs(field, seen)


def _differs(field: tuple[bytes, str, list[bytes]] | None, seen: dict[bytes, bytes]) -> str | None:
    """The field's name if one of its kind came before with another value; else None (and
    its value is kept)."""
    if field is None:
        return None
    key, name, parts = field
    value = b" ".join(b" ".join(parts).split())
    if seen.setdefault(key, value) != value:
        return name
    return None
