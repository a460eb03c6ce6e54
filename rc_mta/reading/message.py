"""Read one inbound reply message without doing any I/O: headers, body text, comment.

Everything here is a pure function of the raw message bytes so that the SMTP
handler, the pipeline and offline diagnosis of a saved ``.eml`` file all see
exactly the same reading.  Inbound mail is hostile and frequently malformed, so
nothing in this module raises on bad input: the worst case is an empty body and
no action.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses

from ..headers import structured_header, unfold
from ..machine_mail import machine_reason
from .comment import MAX_TEXT_CHARS, extract_comment
from .html import MAX_HTML_CHARS, MAX_HTML_TAGS, QUOTE_MARK, render_html

__all__ = ["ParsedReply", "decode_bytes", "parse_reply", "typed_subject"]


@dataclass(frozen=True)
class ParsedReply:
    """What one inbound reply says, reduced to the facts the pipeline acts on."""

    message: Message  # parsed with ``compat32``: header values are the raw strings
    message_id: str | None
    from_address: str | None
    subject: str
    text: str
    comment: str
    auto_reply: str | None
    referenced_ids: tuple[str, ...]
    # To, Cc, In-Reply-To and References as sent (names lower case, values unfolded): what
    # ties the message to a request where a signature does not (``checks/binding.py``).
    addressed: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def parse_reply(raw: bytes, *, envelope_sender: str | None = None) -> ParsedReply:
    """Parse a raw reply; ``envelope_sender=""`` (the null reverse-path) marks a bounce.

    ``None`` for the envelope sender means "unknown" (e.g. a saved file), which
    must not be confused with the null sender of a bounce.
    """
    message = _parse_message(raw)
    subject = (_header_text(message, "Subject") or "").strip()
    marked = _extract_text(message)
    return ParsedReply(
        message=message,
        message_id=_message_id(message),
        from_address=_from_address(message),
        subject=subject,
        text=_without_quote_marks(marked),
        comment=extract_comment(marked),
        auto_reply=machine_reason(message, envelope_sender),
        referenced_ids=_referenced_ids(message),
        addressed=_addressed(message),
    )


def typed_subject(subject: str, title: str) -> str:
    """What of ``subject`` the person may have typed: all of it but the request's ``title``
    (which a button's ``mailto:`` and a reply carry, and which may hold any word: "Reject
    stale branches"). A button's reply whose Subject was retyped to "Reject" says so there,
    and an empty body does not make it a Complete (found in review)."""
    folded, wanted = " ".join(subject.split()).casefold(), " ".join(title.split()).casefold()
    at = folded.find(wanted) if wanted else -1
    return folded if at < 0 else folded[:at] + " " + folded[at + len(wanted) :]


# --------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------


def _parse_message(raw: bytes) -> Message:
    """Parse with ``compat32``; fall back to an empty message rather than raise.

    Why not the modern policy: it builds a structured header object (and a class) on every
    header access, and the body's MIME walk asks for Content-Type and its parameters many
    times, which cost ten times the parse itself. ``compat32`` hands back the raw value,
    which the MIME methods read the same way; the two headers whose meaning we need
    decoded (Subject, From) go through the modern header parser once each, below."""
    try:
        return BytesParser(policy=policy.compat32).parsebytes(raw)
    except Exception:
        return Message(policy=policy.compat32)


def _fix_surrogates(value: str) -> str:
    """Turn undecodable 8-bit header bytes (kept as surrogates) into real text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        data = value.encode("utf-8", "surrogateescape")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", "replace")
    return value


def _raw_headers_kept(message: Message, name: str) -> list[str]:
    """Values of every header called ``name`` exactly as received (still folded); never raises."""
    wanted = name.lower()
    try:
        return [str(value) for key, value in message.raw_items() if str(key).lower() == wanted]
    except Exception:
        return []


def _raw_headers(message: Message, name: str) -> list[str]:
    """Unparsed, unfolded values of every header called ``name``; never raises."""
    return [_fix_surrogates(unfold(value)).strip() for value in _raw_headers_kept(message, name)]


def _header_text(message: Message, name: str) -> str | None:
    """Decoded (RFC 2047) first header value, falling back to the raw value if decoding fails."""
    raw = _raw_headers_kept(message, name)
    if not raw:
        return None
    try:
        return _fix_surrogates(str(structured_header(name, raw[0])))
    except Exception:
        return _fix_surrogates(unfold(raw[0])).strip()


_ADDRESSING = frozenset({"to", "cc", "in-reply-to", "references"})
_THREADING = frozenset({"in-reply-to", "references"})


def _addressed(message: Message) -> tuple[tuple[str, str], ...]:
    """``ParsedReply.addressed``: the header section was bounded before it was parsed, and
    ``checks/binding.py`` bounds each value it reads. Of In-Reply-To and References only
    the first field each, as ``_referenced_ids`` reads them: the binding and the threading
    rule must judge the same ids (a client writes one of each; RFC 5322 3.6.4)."""
    found: list[tuple[str, str]] = []
    threading_seen: set[str] = set()
    try:
        for name, value in message.raw_items():
            lowered = str(name).lower()
            if lowered not in _ADDRESSING or lowered in threading_seen:
                continue
            if lowered in _THREADING:
                threading_seen.add(lowered)
            found.append((lowered, unfold(str(value)).strip()))
    except Exception:  # a header the library cannot give back: nothing is addressed
        return ()
    return tuple(found)


def _message_id(message: Message) -> str | None:
    """Raw Message-ID, as sent, so it can be compared byte-for-byte with stored ids."""
    values = _raw_headers(message, "Message-ID")
    if not values or not values[0]:
        return None
    return values[0]


_ADDR_SPEC_RE = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\.][^\s@<>()\[\],;:\"\\]*")


def _from_address(message: Message) -> str | None:
    """The one From address, or None if there is any doubt about who sent it.

    The address decides who may act on a task, so two independent parsers must
    agree on it; a disagreement is a sign of a crafted header.
    """
    raw_values = _raw_headers(message, "From")
    if len(raw_values) != 1:
        return None
    try:
        header = structured_header("From", _raw_headers_kept(message, "From")[0])
        addresses = tuple(getattr(header, "addresses", ()))
        if len(addresses) != 1:
            return None
        structured = str(addresses[0].addr_spec)
    except Exception:
        return None
    try:
        simple = [addr for _name, addr in getaddresses(raw_values) if addr]
    except Exception:
        return None
    if len(simple) != 1 or simple[0].lower() != structured.lower():
        return None
    if not _ADDR_SPEC_RE.fullmatch(structured) or ".." in structured or structured.endswith("."):
        return None
    return structured.lower()


def _words_decoded(value: str) -> str:
    """``value`` with RFC 2047 encoded words decoded: Python's own ``policy.default`` writes
    a long In-Reply-To as one (``=?utf-8?q?=3C...?=``), and the ids inside are still the
    ones the sender meant. Left as it is when it does not decode."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def _referenced_ids(message: Message) -> tuple[str, ...]:
    """Message-IDs this reply points at, in header order, so the caller can find the request.

    Only the first In-Reply-To and the first References field (RFC 5322 3.6.4 allows one
    each; a client writes one): a hostile message may carry hundreds, each of the ids
    ``budget.reader_view`` leaves (a first and the last 99). Duplicates are dropped in a
    dict: in a list that was quadratic (30,000 ids, 6 s)."""
    found: dict[str, None] = {}
    for name in ("In-Reply-To", "References"):
        for value in _raw_headers(message, name)[:1]:
            value = _words_decoded(value)
            ids = re.findall(r"<\s*([^<>\s]+)\s*>", value)
            if not ids and "<" not in value:
                # Some broken clients drop the angle brackets entirely.
                ids = [token for token in value.split() if "@" in token]
            found.update(dict.fromkeys(ids))
    return tuple(found)


# Machine mail (auto-replies, bounces, reports) is told apart in ``rc_mta.machine_mail``.


# --------------------------------------------------------------------------
# Body text
# --------------------------------------------------------------------------


def _body_parts(part: Message, kind: str, depth: int = 0) -> list[Message]:
    """The inline ``kind`` parts a reader sees, in order, not descending into attached or
    forwarded messages: each one of a mixed body (Apple Mail splits the text around an
    attachment placed in it), and of an alternative only the first choice that has any."""
    if depth > 40:
        return []
    try:
        if depth > 0 and part.get_content_maintype() == "message":
            return []
        if not part.is_multipart():
            return [part] if part.get_content_type() == kind and not _is_attachment(part) else []
        payload = part.get_payload()
        if not isinstance(payload, list):
            return []
        choices = (_body_parts(sub, kind, depth + 1) for sub in payload if isinstance(sub, Message))
        if part.get_content_subtype() == "alternative":
            return next((found for found in choices if found), [])
        return [found for parts in choices for found in parts]
    except Exception:
        return []


def _is_attachment(part: Message) -> bool:
    try:
        return part.get_content_disposition() == "attachment" or bool(part.get_filename())
    except Exception:
        return True


def _extract_text(message: Message) -> str:
    """The reply body as plain text: its inline text/plain parts, else (none, or only blank
    ones) its text/html ones, with a ``QUOTE_MARK`` line where the HTML had a
    quote block (and nowhere else). A blank plain alternative beside an HTML "Rejected"
    hides nothing: a client shows the HTML, so that is what the person wrote."""
    try:
        plain = "\n\n".join(_plain_part_text(part) for part in _body_parts(message, "text/plain"))
        plain = plain.replace(QUOTE_MARK, "")
        if plain.strip():
            return plain
        shown: list[str] = []
        left = MAX_HTML_CHARS  # for all the parts together: rendering is the costly read
        tags = MAX_HTML_TAGS  # and so is each tag: a part beyond them is not read
        for part in _body_parts(message, "text/html"):
            html = _decoded_part(part)
            left -= len(html)
            if left < 0 or tags <= 0:
                break  # too long to read, so the rest decides nothing
            shown.append(render_html(html, tags))
            tags -= html.count("<")
        return "\n\n".join(shown)
    except Exception:
        return ""


def _without_quote_marks(text: str) -> str:
    if QUOTE_MARK not in text:
        return text
    lines = [line for line in text.split("\n") if line != QUOTE_MARK]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _plain_part_text(part: Message) -> str:
    text = _decoded_part(part)
    try:
        flowed = str(part.get_param("format") or "").lower() == "flowed"
        delsp = str(part.get_param("delsp") or "").lower() == "yes"
    except Exception:
        flowed = delsp = False
    return _unflow(text, delsp=delsp) if flowed else text


def _decoded_part(part: Message) -> str:
    """Undo the transfer encoding and decode the declared charset, never raising."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        try:
            raw = part.get_payload()
        except Exception:
            return ""
        if not isinstance(raw, str):
            return ""
        payload = raw.encode("utf-8", "surrogateescape")
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    text = decode_bytes(payload, charset)
    return text.replace("\r\n", "\n").replace("\r", "\n")


_LATIN1_NAMES = frozenset({"iso-8859-1", "iso8859-1", "iso_8859-1", "latin-1", "latin1", "l1", "8859-1"})
_ASCII_NAMES = frozenset({"us-ascii", "ascii", "ansi_x3.4-1968", "us"})
# Labels that mail clients emit but whose bytes usually use a wider superset.
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "ks_c_5601-1987": "cp949", "euc-kr": "cp949"}


def _bytes_as_cp1252(error: UnicodeError) -> tuple[str, int]:
    """Decoding error handler: bytes that are not UTF-8 are read as windows-1252, one by one."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start : error.end].decode("cp1252", "replace"), error.end


codecs.register_error("rc_mta_cp1252", _bytes_as_cp1252)
_UTF8_NAMES = frozenset({"utf-8", "utf8", "utf_8"})
_STRAY_BYTES_READ = 4 * MAX_TEXT_CHARS


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode body bytes using a declared charset, tolerating mislabelled and unknown ones.

    iso-8859-1 is read as windows-1252 (as browsers do) because Windows clients
    routinely label cp1252 text (curly quotes, euro sign) as latin-1; and text labelled
    latin-1 that is valid UTF-8 with 8-bit bytes is UTF-8 (a client's default label on
    UTF-8 text), as windows-1252 text almost never is. Text labelled UTF-8 whose bytes
    are not all UTF-8 keeps its UTF-8 and reads the rest as windows-1252 (a Windows
    client's text under a gateway's or webmail's label), so "Bestätigt" is not "Best\ufffdtigt".
    """
    label = (charset or "").strip().strip("\"'").lower()
    label = _SUPERSETS.get(label, label)
    if label in _LATIN1_NAMES:
        encodings = ("utf-8", "cp1252") if not data.isascii() else ("cp1252",)
        return _first_decoding(data, encodings, fallback="latin-1")
    if not label or label in _ASCII_NAMES:
        return _first_decoding(data, ("ascii", "utf-8", "cp1252"), fallback="latin-1")
    if label in _UTF8_NAMES:
        # The handler is a call per stray byte: only as far as the comment is read (64 KiB
        # of text is at most 256 KiB of UTF-8); beyond, where only tokens are looked for,
        # a stray byte is a replacement character.
        head, tail = data[:_STRAY_BYTES_READ], data[_STRAY_BYTES_READ:]
        return head.decode("utf-8", "rc_mta_cp1252") + tail.decode("utf-8", "replace")
    try:
        return data.decode(label, "replace")
    except Exception:
        # Unknown label, or a non-text codec such as "base64" or "zlib".
        return _first_decoding(data, ("utf-8", "cp1252"), fallback="latin-1")


def _first_decoding(data: bytes, encodings: Sequence[str], *, fallback: str) -> str:
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode(fallback, "replace")


def _unflow(text: str, *, delsp: bool) -> str:
    """Join RFC 3676 format=flowed soft line breaks so wrapped attributions are whole lines."""
    out: list[str] = []
    pending: tuple[int, str] | None = None
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing or the space after the quote marks
        if pending is not None:
            pending_depth, pending_text = pending
            pending = None
            if pending_depth == depth and content != "-- ":
                content = pending_text + content
            else:
                out.append(_requote(pending_depth, pending_text))
        if content.endswith(" ") and content != "-- ":
            pending = (depth, content[:-1] if delsp else content)
        else:
            out.append(_requote(depth, content))
    if pending is not None:
        out.append(_requote(*pending))
    return "\n".join(out)


def _requote(depth: int, content: str) -> str:
    if depth == 0:
        return content
    return ">" * depth + (" " + content if content else "")
