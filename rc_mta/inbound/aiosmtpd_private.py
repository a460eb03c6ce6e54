"""Every use rc-mta makes of aiosmtpd's private members and exact wording, in one place.

aiosmtpd (1.4) has no public way to read DATA ourselves, to start a new transaction, to
give a session or envelope our own class, or to recognise its canned replies. What the
front needs of each is a one-line function or constant here, and
``tests/test_aiosmtpd_private.py`` pins each against the installed aiosmtpd, so an upgrade
that changes one fails there, loudly, rather than in production.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from .handler import ReplyEnvelope, ReplySession

# aiosmtpd's canned replies that rc-mta replaces with its own sentence.
TOO_BIG_PREFIX = "552 Error:"  # SIZE= too large, and DATA over the limit
UNKNOWN_COMMAND_PATTERN = r'500 Error: command "(.*)" not recognized'  # repeats the command
VRFY_UNPARSEABLE_PREFIX = "502 Could not VRFY "  # repeats the whole argument


def stream_reader(server: SMTP) -> asyncio.StreamReader:
    """The session's reader, which aiosmtpd keeps as ``_reader``."""
    reader: asyncio.StreamReader = server._reader
    return reader


def new_transaction(server: SMTP) -> None:
    """A fresh envelope, as after a message (``_set_post_data_state``)."""
    server._set_post_data_state()  # type: ignore[no-untyped-call]


def reset_transaction(server: SMTP) -> None:
    """A fresh envelope, as after RSET or a new greeting (``_set_rset_state``)."""
    server._set_rset_state()  # type: ignore[no-untyped-call]


# ``<dot-atom@domain>`` and what follows it: the form nearly every MAIL FROM and RCPT TO
# takes. aiosmtpd reads an address with the email package's header parser (and defines a
# class on every call), some 0.1 ms; this form it reads to exactly these two parts.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ANGLE_ADDRESS = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9-]{{0,62}})(?:\.[A-Za-z0-9][A-Za-z0-9-]{{0,62}})*)>"
)


# RFC 5321 4.5.3.1.3: a path is at most 256 octets; longer text is aiosmtpd's to read.
MAX_PATH = 256


def plain_address(arg: str) -> re.Match[str] | None:
    """The plain ``<dot-atom@domain>`` at the start of a MAIL/RCPT argument; the pattern
    never looks past the longest path there is, whatever the client sent."""
    return _PLAIN_ANGLE_ADDRESS.match(arg, 0, MAX_PATH + 2)


class ReplyObjects(SMTP):
    """Sessions and envelopes of our own classes, which carry XCLIENT/XFORWARD facts and
    verdicts: aiosmtpd makes them in ``_create_session`` / ``_create_envelope``. And the
    plain address form read without the header parser (``_getaddr``, same answer)."""

    def _create_session(self) -> Session:
        return ReplySession(self.loop)

    def _create_envelope(self) -> Envelope:
        return ReplyEnvelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = plain_address(arg)
        rest = arg[plain.end() :] if plain else ""
        if rest[:1] in (" ", "\t"):
            rest = rest.lstrip()  # folding white space: the parser then takes every kind there
        limit = self.local_part_limit
        if plain is None or rest.startswith("(") or (limit and plain.group(1).index("@") > limit):
            return super()._getaddr(arg)  # and comments after the address: its own reading
        return plain.group(1), rest


class _BoundMethods(Mapping[str, Callable[..., Any]]):
    """``name`` -> ``owner``'s method ``prefix + name``, bound when asked for: what aiosmtpd's
    ``_smtp_methods`` holds, without a dict of some 30 bound methods in every session."""

    __slots__ = ("_names", "_owner", "_prefix")

    def __init__(self, owner: object, prefix: str, names: tuple[str, ...]) -> None:
        self._owner, self._prefix, self._names = owner, prefix, names

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in self._names:
            raise KeyError(name)
        method: Callable[..., Any] = getattr(self._owner, self._prefix + name)
        return method

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


_COMMANDS: dict[type, tuple[str, ...]] = {}


def _command_names(cls: type) -> tuple[str, ...]:
    """The commands a protocol class answers (its ``smtp_*`` methods), in aiosmtpd's order."""
    names = _COMMANDS.get(cls)
    if names is None:
        names = _COMMANDS[cls] = tuple(m.removeprefix("smtp_") for m in dir(cls) if m.startswith("smtp_"))
    return names


@functools.lru_cache(maxsize=8)  # a process serves with one or two (SMTP, LMTP)
def _hooks(handler: object) -> dict[str, Callable[..., Any]]:
    """The handler's hooks (``handle_*``): one handler serves every session, so one table."""
    return {m.removeprefix("handle_"): getattr(handler, m) for m in dir(handler) if m.startswith("handle_")}


class SharedTables(SMTP):
    """aiosmtpd builds, for every session, a dict of the handler's hooks and one of its own
    command methods, all bound anew, and keeps them for the session's life: some 3 KiB a
    session, 3 MB of 1,000 idle ones. Here the hooks' table is the handler's, made once, and
    the commands are bound when a command is read (``_smtp_methods``, ``_handle_hooks``)."""

    def __init__(self, handler: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(handler, *args, **kwargs)
        self._handle_hooks = _hooks(handler)
        commands = _command_names(type(self))
        self._smtp_methods = _BoundMethods(self, "smtp_", commands)  # type: ignore[assignment]
