"""Text from outside (a client's SMTP command, a mail header, a backend's answer) made safe
to show: in a log line, on an operator's terminal, in an SMTP reply.

Control characters are what let such text forge a log line (CR, LF), drive a terminal (ESC,
C1 CSI), hide or reorder what a reader sees (bidi controls) or cut a reply short (NUL). Each
becomes a visible escape (``\\x1b``, ``\\n``, ``\\u202e``); bytes that were not UTF-8 (kept
by ``surrogateescape`` as U+DC80..U+DCFF) show as the byte they were (``\\xff``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

Ranges = tuple[tuple[int, int], ...]
# C0 and C1 controls, DEL, line and paragraph separators; TAB apart, as commands may hold it.
_CONTROLS: Ranges = ((0x00, 0x08), (0x0A, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029))
_TAB: Ranges = ((0x09, 0x09),)
# Bidi marks, embeddings, overrides and isolates: they reorder what a reader sees.
_BIDI: Ranges = ((0x200E, 0x200F), (0x202A, 0x202E), (0x2066, 0x2069))
# Surrogates: only undecodable bytes (or broken input) put them in a str.
_SURROGATES: Ranges = ((0xD800, 0xDFFF),)


def _char_class(*groups: Ranges) -> Callable[[], re.Pattern[str]]:
    """The class's pattern, compiled when first used: every CLI call imports this module,
    and classes beyond U+00FF cost milliseconds to compile (issue 17)."""
    source = "[" + "".join(f"\\u{lo:04x}-\\u{hi:04x}" for group in groups for lo, hi in group) + "]"
    return cache(lambda: re.compile(source))


_unsafe = _char_class(_CONTROLS, _TAB, _BIDI, _SURROGATES)
_unfit_for_command = _char_class(_CONTROLS, _SURROGATES)
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def _escape_of(code: int) -> str:
    if code in _NAMED:
        return _NAMED[code]
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape kept it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unsafe_codes() -> list[int]:
    return [code for group in (_CONTROLS, _TAB, _BIDI, _SURROGATES) for lo, hi in group for code in range(lo, hi + 1)]


@cache
def _escapes() -> dict[int, str]:
    return {code: _escape_of(code) for code in _unsafe_codes()}


@cache
def json_escapes() -> dict[int, str]:
    """The same characters as JSON escapes, for ``str.translate``: a JSON reader gets the
    very same string back."""
    return {code: f"\\u{code:04x}" for code in _unsafe_codes()}


def has_unsafe(text: str) -> bool:
    """Whether ``text`` holds a character ``escape_controls`` would escape."""
    return _unsafe().search(text) is not None


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape; one line always."""
    if not has_unsafe(text):
        return text
    return text.translate(_escapes())


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
    found = _unfit_for_command().search(text)
    if found is None:
        return None
    char = found.group()
    shown = escape_controls(char)
    if 0xD800 <= ord(char) <= 0xDFFF:
        return f"bytes that are not UTF-8 ({shown})"
    return f"a control character ({shown})"


_line_breaking = _char_class(_CONTROLS, _TAB)


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` for a mail header or a line of its own: control characters and line breaks
    become spaces, runs of spaces one; cut at ``limit`` characters when given (what another
    system answered, told in a log line or an error)."""
    return " ".join(_line_breaking().sub(" ", text).split())[:limit]
