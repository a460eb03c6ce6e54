"""Authentication-Results (RFC 8601): write ours, strip forgeries of ours, read trusted ones.

Anyone can put an ``Authentication-Results: <our id>; dmarc=pass`` header in a message; if
we kept it, later code (or a downstream filter) might believe it. OpenDMARC did exactly that
(CVE-2019-20790). So before adding our own header, every field claiming our authserv-id is
removed, and headers are only ever read from receivers we were told to trust.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

HEADER = b"authentication-results"

# RFC 2045 token: printable US-ASCII except SPACE, CTLs and tspecials.
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
# RFC 8601 pvalue also allows [local-part] "@" domain-name unquoted (dot-atom local part).
_ATEXT = r"[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+"
_MAILBOX = re.compile(rf"^(?:{_ATEXT}(?:\.{_ATEXT})*)?@[0-9A-Za-z](?:[0-9A-Za-z\-.]*[0-9A-Za-z])?$")
_KEYWORD = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?$")
_PROPERTY = re.compile(r"^[A-Za-z0-9\-]+\.[A-Za-z0-9\-_.]+$")
_WORD = re.compile(r'[^\s;=/"()]+')


def _quote(value: str, allow_mailbox: bool = False) -> str:
    """A value as RFC 8601 wants it: bare if it may be, else a quoted-string (never a CR or LF)."""
    value = re.sub(r"[\x00-\x1f\x7f]+", " ", value)
    if _TOKEN.match(value) or (allow_mailbox and _MAILBOX.match(value)):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _keyword(value: str, what: str) -> str:
    if not _KEYWORD.match(value):
        raise ValueError(f"not a valid {what} keyword: {value!r}")
    return value


def format_authentication_results(authserv_id: str, results: Sequence[tuple[str, str, dict[str, str]]]) -> str:
    """The header field's value (without the name): ``id; method=result (comment)
    reason=... ptype.prop=value ...``; the properties "comment" and "reason" are those two."""
    parts = [_quote(authserv_id)]
    if not results:
        return f"{parts[0]}; none"
    for method, result, properties in results:
        item = f"{_keyword(method, 'method')}={_keyword(result, 'result')}"
        if "comment" in properties:  # RFC 8601 CFWS, as RFC 8617 receivers note an ARC chain
            item += " (" + re.sub(r"[\x00-\x1f\x7f()\\]+", " ", properties["comment"]) + ")"
        if "reason" in properties:
            item += f" reason={_quote(properties['reason'])}"
        for name, value in properties.items():
            if name in ("reason", "comment"):
                continue
            if not _PROPERTY.match(name):
                raise ValueError(f"not a valid Authentication-Results property: {name!r}")
            item += f" {name}={_quote(value, allow_mailbox=True)}"
        parts.append(item)
    return "; ".join(parts)


# Reading header fields ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: bytes  # lower-cased, without trailing whitespace
    raw: bytes  # the field exactly as received, all its lines with their line endings
    value: str  # unfolded value, decoded leniently


def _header_fields(raw: bytes) -> tuple[list[_Field], bytes]:
    """The header section as fields (continuation lines joined to their field), and the rest."""
    lines = raw.splitlines(keepends=True)
    fields: list[_Field] = []
    current: list[bytes] = []
    consumed = 0

    def flush() -> None:
        if current:
            whole = b"".join(current)
            name, _, value = whole.partition(b":")
            unfolded = re.sub(rb"\r?\n", b"", value).decode("utf-8", "replace")
            fields.append(_Field(name.rstrip(b" \t").lower(), whole, unfolded))
            current.clear()

    for line in lines:
        if line in (b"\r\n", b"\n", b"\r"):
            break
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
        else:
            flush()
            current.append(line)
        consumed += len(line)
    flush()
    return fields, raw[consumed:]


def header_fields(raw: bytes) -> list[tuple[bytes, str]]:
    """The header section's fields, top down: (name lower-cased, unfolded value)."""
    return [(item.name, item.value) for item in _header_fields(raw)[0]]


class _Lexer:
    """RFC 8601 values: words, quoted strings and the specials ``; = /``, with comments skipped."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _skip_cfws(self) -> bool:
        """Skip whitespace and (nested) comments; True if anything was skipped."""
        start = self.pos
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "(":
                depth = 0
                while self.pos < len(self.text):
                    char = self.text[self.pos]
                    if char == "\\":
                        self.pos += 1
                    elif char == "(":
                        depth += 1
                    elif char == ")":
                        depth -= 1
                        if depth == 0:
                            self.pos += 1
                            break
                    self.pos += 1
            else:
                break
        return self.pos > start

    def tokens(self) -> Iterator[tuple[str, str, bool]]:
        """(kind, text, spaced): kind is "word", "quoted" or the special itself."""
        while True:
            spaced = self._skip_cfws()
            if self.pos >= len(self.text):
                return
            char = self.text[self.pos]
            if char in ";=/":
                self.pos += 1
                yield char, char, spaced
            elif char == '"':
                self.pos += 1
                out: list[str] = []
                while self.pos < len(self.text) and self.text[self.pos] != '"':
                    if self.text[self.pos] == "\\" and self.pos + 1 < len(self.text):
                        self.pos += 1
                    out.append(self.text[self.pos])
                    self.pos += 1
                self.pos += 1
                yield "quoted", "".join(out), spaced
            else:
                match = _WORD.match(self.text, self.pos)
                if match is None:  # a stray ")": skip it
                    self.pos += 1
                    continue
                self.pos = match.end()
                yield "word", match.group(), spaced


def _authserv_id(value: str) -> str:
    """The first value of the field (token or quoted-string), lower-cased, trailing dot dropped."""
    for kind, text, _ in _Lexer(value).tokens():
        if kind in ("word", "quoted"):
            return text.lower().rstrip(".")
        return ""
    return ""


def strip_forged_authentication_results(raw: bytes, authserv_id: str) -> bytes:
    """Drop every Authentication-Results field claiming our authserv-id; keep every other byte."""
    ours = authserv_id.lower().rstrip(".")
    fields, rest = _header_fields(raw)
    kept = [f.raw for f in fields if not (f.name == HEADER and _authserv_id(f.value) == ours)]
    return b"".join(kept) + rest


@dataclass(frozen=True)
class ReceivedAuthResult:
    """One method's result from a trusted Authentication-Results header."""

    method: str
    result: str
    properties: dict[str, str]


_RECEIVED_BY = re.compile(r"\bby\s+([^\s;()]+)", re.IGNORECASE)


_RECEIVED_FROM = re.compile(r"^\s*from\s+([^\s;()]+)", re.IGNORECASE)


def _received_from(value: str) -> str:
    match = _RECEIVED_FROM.match(value[:4096])
    return match.group(1).lower().rstrip(".") if match else ""


def _received_by(value: str) -> str:
    match = _RECEIVED_BY.search(value[:4096])
    return match.group(1).lower().rstrip(".") if match else ""


def trusted_authentication_results(raw: bytes, trusted_ids: Sequence[str]) -> list[ReceivedAuthResult]:
    """The results in the topmost Authentication-Results field from a receiver we trust,
    if it stands above that receiver's own Received field.

    Header fields are prepended as a message travels, so whatever a sender wrote lies below
    the Received field of the receiver we trust ("by <its authserv-id>"); only a field above
    it can be that receiver's. Without such a Received field (a message appended to a
    mailbox), the field must stand above every Received field.
    """
    trusted = {t.lower().rstrip(".") for t in trusted_ids}
    fields, _ = _header_fields(raw)
    received = [i for i, item in enumerate(fields) if item.name == b"received"]
    ours = [i for i in received if _received_by(fields[i].value) in trusted]
    boundary = ours[0] if ours else (received[0] if received else len(fields))
    for item in fields[:boundary]:
        if item.name == HEADER and _authserv_id(item.value) in trusted:
            return _parse_results(item.value)
    return []


# Exchange Online's own hosts, as its Received fields name them (``by BN1PR10CA0002.outlook.
# office365.com``, ``by CH2PEPF00000140.mail.protection.outlook.com``, ``by
# VI1PR08MB5423.eurprd08.prod.outlook.com``); the national clouds' too.
EXCHANGE_ONLINE_HOSTS = (".outlook.com", ".office365.com", ".office365.us", ".outlook.cn")
# The authserv-id Exchange Online has begun to write ("mx.microsoft.com 1; spf=..."); most
# tenants still get its older form, with no authserv-id at all ("spf=pass (sender IP is ...").
EXCHANGE_ONLINE_AUTHSERV_ID = "mx.microsoft.com"
# How Exchange marks where a message came from (Anonymous: the Internet; Internal: a user of
# the tenant); its header firewall removes the field from mail arriving from outside.
EXCHANGE_ONLINE_AUTH_AS = b"x-ms-exchange-organization-authas"


def is_exchange_online_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host.endswith(suffix) for suffix in EXCHANGE_ONLINE_HOSTS)


def exchange_online_authentication_results(raw: bytes) -> list[ReceivedAuthResult] | None:
    """The results of Exchange Online's own Authentication-Results, if the message shows
    Exchange Online's layout; None if it does not (then nothing here is Exchange Online's).

    Exchange Online writes its field without an authserv-id (or, lately, ``mx.microsoft.com``),
    so no configured id can pick it out: its place does. It stamps the field where the message
    enters it, just above the Received field of that hand-over, and renames every
    Authentication-Results already in the message to Authentication-Results-Original; after
    that only its own hops prepend Received fields. So the topmost Authentication-Results is
    its own when every Received field above it was written by an Exchange Online host and
    there is at least one (a message appended to the mailbox shows none). Whatever a sender
    wrote lies below Exchange Online's entry (the Received field from a host outside it, with
    its Received-SPF just above), under its field: reading stops there.

    (A sender may name itself after an Exchange host in HELO, so that its entry looks like an
    inner hop: then Exchange's own field, always written on entry, is still the topmost.)

    Only on mail Exchange received from outside (its one mark ``AuthAs: Anonymous``, or
    ``Partner`` over a partner's connector): a message a user of the tenant submitted
    (``Internal``) holds only Exchange's inner hops above what its author wrote, so an
    Authentication-Results its author put on top would stand where Exchange's would."""
    fields, _ = _header_fields(raw)
    marks = [item.value.strip().lower() for item in fields if item.name == EXCHANGE_ONLINE_AUTH_AS]
    if len(marks) != 1 or marks[0] not in ("anonymous", "partner"):
        return None
    hops_above = 0
    for item in fields:
        if item.name == b"received":
            if not is_exchange_online_host(_received_by(item.value)):
                return None  # another receiver's hop above any stamp: not Exchange Online's layout
            if not is_exchange_online_host(_received_from(item.value)):
                return None  # its entry from outside, and no stamp of its own above it
            hops_above += 1
        elif item.name == b"received-spf":
            return None  # Exchange writes its SPF verdict below its own field: this one is lower
        elif item.name == HEADER:
            if not hops_above:
                return None
            return _exchange_online_results(item.value)
    return None


def _exchange_online_results(value: str) -> list[ReceivedAuthResult] | None:
    """Exchange Online's field value: ``spf=pass (sender IP is 1.2.3.4) smtp.mailfrom=d;
    dkim=...;dmarc=... header.from=d;compauth=...``, or the same after ``mx.microsoft.com 1;``.
    None for a field with any other authserv-id (then it is not Exchange Online's)."""
    tokens = list(_Lexer(value).tokens())
    if len(tokens) >= 2 and tokens[0][0] == "word" and tokens[1][0] in ("=", "/"):
        return _parse_results(";" + value)  # no authserv-id: the first statement is a result
    if _authserv_id(value) == EXCHANGE_ONLINE_AUTHSERV_ID:
        return _parse_results(value)
    return None


_ARC_INSTANCE = re.compile(r"^\s*i\s*=\s*[0-9]{1,3}\s*;")


def arc_authentication_results(value: str) -> list[ReceivedAuthResult]:
    """The results an ARC-Authentication-Results value (RFC 8617 4.1.1: ``i=N;`` and then
    an Authentication-Results value) records; none if it does not start with its instance."""
    match = _ARC_INSTANCE.match(value)
    return _parse_results(value[match.end() :]) if match else []


def _parse_results(value: str) -> list[ReceivedAuthResult]:
    """``id [version] ; method[/v]=result [reason=..] [ptype.prop=value ...] ; ...`` (lenient)."""
    statements: list[list[tuple[str, str, bool]]] = [[]]
    for token in _Lexer(value).tokens():
        if token[0] == ";":
            statements.append([])
        else:
            statements[-1].append(token)
    results: list[ReceivedAuthResult] = []
    for statement in statements[1:]:  # the first is the authserv-id and version
        parsed = _parse_resinfo(statement)
        if parsed is not None:
            results.append(parsed)
    return results


def _parse_resinfo(tokens: list[tuple[str, str, bool]]) -> ReceivedAuthResult | None:
    if len(tokens) < 3 or tokens[0][0] != "word":
        return None  # "none", or garbage: no result here
    method = tokens[0][1].lower()
    i = 1
    if tokens[i][0] == "/":  # method-version: "dkim/1=pass"
        i += 2
    if i + 1 >= len(tokens) or tokens[i][0] != "=" or tokens[i + 1][0] != "word":
        return None
    result = tokens[i + 1][1].lower()
    i += 2
    properties: dict[str, str] = {}
    while i < len(tokens):
        if not (tokens[i][0] == "word" and i + 2 < len(tokens) and tokens[i + 1][0] == "="):
            i += 1  # something we do not understand: skip it
            continue
        name = tokens[i][1].lower()
        i += 2
        value = [tokens[i][1]]
        i += 1
        # Unquoted values seen in the wild carry "/" and "=" (header.b=ab/c+d=), and a quoted
        # local-part is followed directly by "@domain": glue what touches without space.
        while i < len(tokens) and not tokens[i][2] and tokens[i][0] in ("word", "/", "="):
            value.append(tokens[i][1])
            i += 1
        properties.setdefault(name, "".join(value))
    return ReceivedAuthResult(method, result, properties)
