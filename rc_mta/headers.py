"""The modern ``email`` header parser, for the few header fields whose meaning we need.

Messages are parsed with ``compat32`` (raw values, no parsing on access); Subject and From
are then read once each with ``policy.default``'s structured headers (RFC 2047 decoding,
addresses). Its registry builds a new class on every call; the class for a name is the
same each time, so it is built once here. Parsing is the costly part (a From field takes
some 0.3 ms), and the same values come again and again (each message's From is read by the
reader and by the machine-mail detector; an owner answers many requests with one From), so
the last few hundred parsed values are kept: a parsed header is never changed after.
"""

from __future__ import annotations

import re
from email.headerregistry import BaseHeader, HeaderRegistry
from functools import lru_cache

_LINE_BREAKS = re.compile(r"[\r\n]")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def unfold(value: str) -> str:
    """A raw header value with its folding line breaks removed (RFC 5322 2.2.3). Most
    values are one line: they are returned as they are, without running the pattern."""
    return _FOLD.sub("", value) if "\n" in value else value


_REGISTRY = HeaderRegistry()  # the registry policy.default has: the same classes


@lru_cache(maxsize=32)
def _header_class(name: str) -> type[BaseHeader]:
    return _REGISTRY[name]


def structured_header(name: str, value: str) -> BaseHeader:
    """``value`` as ``policy.default`` reads a field ``name``: its line breaks removed (as
    ``EmailPolicy.header_fetch_parse`` does), then parsed. ``name`` is one of ours, never
    the message's: the caches are keyed on it. Folding white space around the value means
    nothing to the parsers: it is trimmed, so both readers share one parse."""
    value = _LINE_BREAKS.sub("", value).strip(" \t")
    if len(value) > KEPT_VALUE_CHARS:
        return _header_class(name.lower())(name, value)
    return _parsed(name.lower(), value)


# A parsed value keeps its whole parse tree (some 8 MiB for a 16 KiB Subject): only short
# ones are kept, which is what From and Subject fields are.
KEPT_VALUE_CHARS = 512


@lru_cache(maxsize=256)
def _parsed(name: str, value: str) -> BaseHeader:
    return _header_class(name)(name, value)
