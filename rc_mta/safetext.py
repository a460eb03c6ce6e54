"""Text from outside (a client's SMTP command, a mail header, a backend's answer) made safe
to show: in a log line, on an operator's terminal, in an SMTP reply.

Control characters are what let such text forge a log line (CR, LF), drive a terminal (ESC,
C1 CSI), hide or reorder what a reader sees (bidi controls) or cut a reply short (NUL). Each
becomes a visible escape (``\\x1b``, ``\\n``, ``\\u202e``); bytes that were not UTF-8 (kept
by ``surrogateescape`` as U+DC80..U+DCFF) show as the byte they were (``\\xff``).
"""

from __future__ import annotations

import re

Ranges = tuple[tuple[int, int], ...]
# C0 and C1 controls, DEL, line and paragraph separators; TAB apart, as commands may hold it.
_CONTROLS: Ranges = ((0x00, 0x08), (0x0A, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029))
_TAB: Ranges = ((0x09, 0x09),)
# Bidi marks, embeddings, overrides and isolates: they reorder what a reader sees.
_BIDI: Ranges = ((0x200E, 0x200F), (0x202A, 0x202E), (0x2066, 0x2069))
# Surrogates: only undecodable bytes (or broken input) put them in a str.
_SURROGATES: Ranges = ((0xD800, 0xDFFF),)


def _char_class(*groups: Ranges) -> re.Pattern[str]:
    return re.compile("[" + "".join(f"\\u{lo:04x}-\\u{hi:04x}" for group in groups for lo, hi in group) + "]")


UNSAFE = _char_class(_CONTROLS, _TAB, _BIDI, _SURROGATES)
_UNFIT_FOR_COMMAND = _char_class(_CONTROLS, _SURROGATES)
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def _escape_of(code: int) -> str:
    if code in _NAMED:
        return _NAMED[code]
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape kept it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_UNSAFE_CODES = [
    code for group in (_CONTROLS, _TAB, _BIDI, _SURROGATES) for lo, hi in group for code in range(lo, hi + 1)
]
_ESCAPES = {code: _escape_of(code) for code in _UNSAFE_CODES}
# The same characters as JSON escapes: a JSON reader gets the very same string back.
JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _UNSAFE_CODES}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape; one line always."""
    if UNSAFE.search(text) is None:
        return text
    return text.translate(_ESCAPES)


def excerpt(text: str, limit: int = 64) -> str:
    """A short, escaped excerpt of ``text`` for an answer to whoever sent it."""
    shown = escape_controls(text[:limit])
    return shown if len(text) <= limit and len(shown) <= limit else shown[:limit] + "..."  # ASCII, for SMTP


def hostile_character(text: str) -> str | None:
    """What makes ``text`` unfit for an SMTP command line, escaped; None when it is fine.

    Undecodable bytes (not UTF-8) and control characters are never part of a command. TAB
    is left to the protocol's own parser (some senders use it for a space), and bidi marks
    to the checks (an internationalised address may hold them); logs escape both.
    """
    found = _UNFIT_FOR_COMMAND.search(text)
    if found is None:
        return None
    char = found.group()
    shown = escape_controls(char)
    if 0xD800 <= ord(char) <= 0xDFFF:
        return f"bytes that are not UTF-8 ({shown})"
    return f"a control character ({shown})"


_LINE_BREAKING = _char_class(_CONTROLS, _TAB)


def one_line(text: str) -> str:
    """``text`` for a mail header or a line of its own: control characters and line breaks
    become spaces, runs of spaces one."""
    return " ".join(_LINE_BREAKING.sub(" ", text).split())
