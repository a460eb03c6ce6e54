"""How a signed body is to be read, where the signature leaves that open.

A DKIM signature covers the body's bytes, and of the header only the fields its h= lists.
Gmail's lists neither Content-Type nor Content-Transfer-Encoding, which say how those bytes
are read: whoever holds the owner's signed reply may change them and the signature still
verifies. Text the owner quoted then stops being quoted: a 7bit reply declared
quoted-printable turns ``=0A`` in the quoted words into line breaks, so ``> Heads-up.=0A=0AApproved.``
becomes a line "Approved." of the owner's own; a text/plain reply declared ``charset=utf-7``
does the same with ``+AAo-``; declared text/html, ``<br>`` does; declared multipart with
a boundary found further down (Outlook's ``-----Original Message-----``), the owner's words
become a preamble no one reads and the quoted message the part that is read.

Nothing tells what the fields said when the owner's client wrote them, but genuine encoders
and clients write bodies these changes cannot imitate (``unread_framing``):

- quoted-printable writes a line break of text as a line break (RFC 2045 6.7, rule 4: text
  in canonical form has CRLF only, and a CRLF "must be represented by a line break"): never
  ``=0D`` or ``=0A``; and it writes "<" and ">" as they are (rule 2: printable characters
  other than "=" may stand for themselves), never ``=3C``/``=3E``, which in an HTML body
  declared quoted-printable would close the quote the owner's client put her text in. Old
  Exchange auto-replies wrote ``=0A`` (tests/corpus/machine), machine mail that never acts;
  base64 writes nothing but its alphabet and line breaks; no client writes another encoding
  (uuencode and the like) on a reply;
- a charset reads plain ASCII as ASCII (of those any client labels a reply with, only the
  long dead UTF-7, UTF-16/32 and EBCDIC ones do not);
- an HTML body starts with a tag, a plain one does not, and a plain one is not MIME parts;
- a multipart body starts with its boundary, after at most the one or two lines some
  clients write about MIME, and each of its parts says its Content-Type.

So where the signature that binds the action leaves a field open, a body that breaks the
rule for it is refused: it may have been changed on the way. Only the top-level entity
matters: the fields of the parts are in the body, which the signature covers.
"""

from __future__ import annotations

import re
from email.message import Message
from functools import lru_cache

from rc_mta.reading.message import decode_bytes

CONTENT_TYPE = "content-type"
TRANSFER_ENCODING = "content-transfer-encoding"
# The fields that say how the signed body is read.
FRAMING_FIELDS = frozenset({CONTENT_TYPE, TRANSFER_ENCODING})

_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
# Line breaks and angle brackets, written as "=XX": what turns quoted text into the author's
# own (a line of its own; a tag that closes the quote), and what no encoder writes so.
_ENCODED_STRUCTURE = re.compile(r"=(?:0[adAD]|3[ceCE])")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=\r\n]")
# What the first 1,000 characters of a body may show: an HTML tag, MIME part headers.
_LOOK = 1000
_BOM = b"\xef\xbb\xbf"
_TAG = re.compile(rb"\s*<[A-Za-z!?]")
# What an HTML body starts with, and a plain one does not (a plain reply may start with a link).
_HTML = re.compile(rb"(?i)\s*<(?:!doctype|html|head|body|meta|div|p|span|table|font|style|title|pre|br)\b")
_MIME_PART = re.compile(rb"\s*--[^\r\n]{1,70}\r?\n(?i:content-)[!-9;-~]*:")
_PROBE = bytes(range(0x20, 0x7F)) + b"\r\n"


def open_fields(signed_names: list[bytes] | frozenset[bytes]) -> frozenset[str]:
    """Of ``FRAMING_FIELDS``, those a signature whose h= lists ``signed_names`` leaves open."""
    names = {name.strip().lower() for name in signed_names}
    return frozenset(field for field in FRAMING_FIELDS if field.encode() not in names)


def unread_framing(message: Message, open_fields: frozenset[str]) -> str | None:
    """Why the body could be read otherwise than its author's client meant, through the
    fields in ``open_fields``; None when it could not. Never raises: a body the library
    cannot give back is refused."""
    if not open_fields:
        return None
    try:
        if message.is_multipart():
            return _multipart(message) if CONTENT_TYPE in open_fields else None
        payload = message.get_payload()
        if not isinstance(payload, str):
            return None
        if TRANSFER_ENCODING in open_fields and (why := _encoding(message, payload)):
            return why
        return _single(message, payload) if CONTENT_TYPE in open_fields else None
    except Exception:
        return "its MIME structure cannot be read"


def _encoding(message: Message, payload: str) -> str | None:
    encoding = str(message.get("content-transfer-encoding", "")).strip().lower()
    if encoding in _IDENTITY:
        return None
    if encoding == "quoted-printable":
        if _ENCODED_STRUCTURE.search(payload):
            return "its quoted-printable text writes line breaks or angle brackets as =0A, =0D, =3C or =3E"
        return None
    if encoding == "base64":
        if _NOT_BASE64.search(payload):
            return "its base64 text holds characters that are not base64"
        return None
    return f"it has a transfer encoding no mail client writes on a reply ({encoding[:40]})"


def _single(message: Message, payload: str) -> str | None:
    kind = message.get_content_type()
    if not kind.startswith("text/"):
        return None
    charset = message.get_content_charset()
    if charset and not _reads_ascii_as_ascii(charset):
        return f"its charset ({charset[:40]}) does not read plain text as it is"
    start = _start_of(message, payload)
    if kind == "text/html" and not _TAG.match(start):
        return "its Content-Type says HTML, but its text does not start with a tag"
    if kind == "text/plain" and _HTML.match(start):
        return "its Content-Type says plain text, but its text is HTML"
    if _MIME_PART.match(start):
        return "its Content-Type says text, but its body is MIME parts"
    return None


def _start_of(message: Message, payload: str) -> bytes:
    """The first bytes of the body as the reader decodes them (a byte order mark left out)."""
    data = message.get_payload(decode=True)
    if not isinstance(data, bytes):
        data = payload[:_LOOK].encode("utf-8", "surrogateescape")
    data = data[:_LOOK]
    return data[len(_BOM) :] if data.startswith(_BOM) else data


@lru_cache(maxsize=64)
def _reads_ascii_as_ascii(charset: str) -> bool:
    return decode_bytes(_PROBE, charset) == _PROBE.decode("ascii")


def _multipart(message: Message) -> str | None:
    if any(type(defect).__name__ in _NO_BOUNDARY for defect in message.defects):
        return "its boundary is not in its body"
    preamble = (message.preamble or "").strip()
    lines = [line for line in preamble.splitlines() if line.strip()]
    if lines and (len(lines) > 2 or "mime" not in preamble.lower()):
        return "text comes before its first part"
    parts = message.get_payload()
    if isinstance(parts, list) and any(
        isinstance(part, Message) and part.get("content-type") is None for part in parts
    ):
        return "a part of it does not say its Content-Type"
    return None


_NO_BOUNDARY = frozenset({"StartBoundaryNotFoundDefect", "NoBoundaryInMultipartDefect"})
