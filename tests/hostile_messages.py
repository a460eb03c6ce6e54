"""Messages built to be expensive to read, each of about ``size`` bytes, for the budget tests
and ``bench/hostile.py``.

Each is what an attacker can send through any MTA: every line ends in CRLF and is at most
998 bytes long (longer fields are folded), so the shape reaches rc-mta's reader intact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache

LINE = 900  # bytes per folded line, under SMTP's 998


def _head(to: str, sender: str) -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: {to}\r\nSubject: Re: Action needed\r\n"
        "Message-ID: <hostile.%d@example.com>\r\nMIME-Version: 1.0\r\n"
    ).encode()


def _folded(name: bytes, pieces: Iterable[bytes], separator: bytes = b" ") -> bytes:
    """One header field of many pieces, folded as a mail client folds it."""
    lines: list[bytes] = []
    line = name + b":"
    for piece in pieces:
        if len(line) + len(separator) + len(piece) > LINE:
            lines.append(line)
            line = b" "  # a folded line starts with white space
        line += separator + piece
    lines.append(line)
    return b"\r\n".join(lines) + b"\r\n"


def _with_id(raw: bytes, number: int) -> bytes:
    return raw.replace(b"%d", str(number).encode(), 1)


def references(size: int, to: str, sender: str) -> bytes:
    """A References field with tens of thousands of message ids."""
    count = size // 18
    field = _folded(b"References", (b"<%d@x.example>" % i for i in range(count)))
    return _head(to, sender) + field + b"Content-Type: text/plain\r\n\r\nApproved\r\n"


def deep_mime(size: int, to: str, sender: str) -> bytes:
    """Multiparts nested inside multiparts, thousands deep."""
    depth = size // 64
    parts = [_head(to, sender)]
    for level in range(depth):
        parts.append(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level))
    parts.append(b"Content-Type: text/plain\r\n\r\nApproved\r\n")
    return b"".join(parts)


def many_parts(size: int, to: str, sender: str) -> bytes:
    """One multipart with tens of thousands of tiny parts."""
    count = size // 40
    body = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(count))
    return _head(to, sender) + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body + b"--b--\r\n"


def rfc2231(size: int, to: str, sender: str) -> bytes:
    """A Content-Type whose parameter is split into thousands of RFC 2231 continuations."""
    count = size // 17
    field = _folded(b"Content-Type", [b"text/plain", *(b"; t*%d*=aaaaaa" % i for i in range(count))], b"")
    return _head(to, sender) + field + b"\r\nApproved\r\n"


def mime_parameters(size: int, to: str, sender: str) -> bytes:
    """A Content-Type with tens of thousands of parameters (empty ones cost the most)."""
    field = _folded(b"Content-Type", [b"text/plain", *(b";" for _ in range(size * 98 // 100))], b"")
    return _head(to, sender) + field + b"\r\nApproved\r\n"


def many_headers(size: int, to: str, sender: str) -> bytes:
    """Tens of thousands of header fields."""
    fields = b"".join(b"X-Filler-%d: a\r\n" % i for i in range(size // 18))
    return _head(to, sender) + fields + b"Content-Type: text/plain\r\n\r\nApproved\r\n"


def from_comments(size: int, to: str, sender: str) -> bytes:
    """A From field of nested-looking comments: the address parser's slowest shape."""
    head = _head(to, sender).replace(f"From: Alice <{sender}>\r\n".encode(), b"")
    field = _folded(b"From", [f"<{sender}>".encode(), *(b"(a)" for _ in range(size // 3))], b"")
    return field + head + b"Content-Type: text/plain\r\n\r\nApproved\r\n"


def html_close_tags(size: int, to: str, sender: str) -> bytes:
    """An HTML body of nothing but ``</``: the HTML parser's slowest shape."""
    lines = b"".join(b"</" * (LINE // 2) + b"\r\n" for _ in range(size // LINE))
    return _head(to, sender) + b"Content-Type: text/html\r\n\r\n" + lines


def _html_of(atom: bytes, size: int, to: str, sender: str) -> bytes:
    """An HTML body of ``atom`` over and over, on lines of ``LINE`` bytes, after a person's words."""
    line = atom * (LINE // len(atom)) + b"\r\n"
    body = b"<p>Approved</p>\r\n" + line * (size // len(line))
    return _head(to, sender) + b"Content-Type: text/html\r\n\r\n" + body


def html_paragraphs(size: int, to: str, sender: str) -> bytes:
    """An HTML body of ``<p>`` runs: each tag costs the reader some 20 µs (4.8 s a MiB)."""
    return _html_of(b"<p>", size, to, sender)


def html_bold_letters(size: int, to: str, sender: str) -> bytes:
    """An HTML body of ``<b>x</b>``: two tags a letter (4.1 s a MiB read whole)."""
    return _html_of(b"<b>x</b>", size, to, sender)


Builder = Callable[[int, str, str], bytes]

HOSTILE: dict[str, Builder] = {
    "references": references,
    "deep_mime": deep_mime,
    "many_parts": many_parts,
    "rfc2231": rfc2231,
    "mime_parameters": mime_parameters,
    "many_headers": many_headers,
    "from_comments": from_comments,
    "html": html_close_tags,
    "html_paragraphs": html_paragraphs,
    "html_bold_letters": html_bold_letters,
}


def hostile(kind: str, size: int, to: str, sender: str = "alice@example.com", number: int = 0) -> bytes:
    """The ``kind`` message of at most ``size`` bytes (and not much less), with its own
    Message-ID ``number``."""
    return _with_id(_template(kind, size, to, sender), number)


@lru_cache(maxsize=64)
def _template(kind: str, size: int, to: str, sender: str) -> bytes:
    """Built once: a sender sending it again should not spend its time building it."""
    budget = size
    raw = HOSTILE[kind](budget, to, sender)
    while len(raw) > size - 32:  # the shape's overhead (folding, long ids) is more than it guessed
        budget = budget * size // len(raw) - 512
        raw = HOSTILE[kind](budget, to, sender)
    return raw
