"""Signed reply tokens: short, case-insensitive, bound to one request and one owner.

Layout (25 bytes, 40 base32 characters, fits in a mail local part with room to spare)::

    version(1) key_id(1) request_id(8) action(1) expires_at(4, unix seconds) mac(10)

The MAC is HMAC-SHA256 over the first 15 bytes *and* the owner's address, truncated to
80 bits. Keys have ids, so a secret can be rotated: the active key signs, every
configured key verifies. Single use is the store's job (a unique row per request).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from .errors import PermanentRefusal
from .smtp_replies import (
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOKEN_MALFORMED,
    TOKEN_UNKNOWN_KEY,
)

VERSION = 1
_HEADER = struct.Struct(">BB8sBI")
_MAC_BYTES = 10
TOKEN_LENGTH = 40  # base32 characters of 25 bytes


class Action(Enum):
    """What answering with this token does."""

    COMPLETE = 1
    FAIL = 2
    REPLY = 3  # decide from the reply's first words

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Token:
    """A decoded token. ``verify`` must pass before any of it is trusted."""

    key_id: int
    request_id: str  # 16 hex characters
    action: Action
    expires_at: int
    signed: bytes
    mac: bytes

    @property
    def text(self) -> str:
        """The token as it appears in an address (base32, lower case): one spelling per token."""
        return base64.b32encode(self.signed + self.mac).decode("ascii").lower()


def redact_address(address: str) -> str:
    """``rc+abcdef…@domain``: enough to tell addresses apart in a log, not enough to use one."""
    local, at, domain = address.partition("@")
    base, plus, token = local.partition("+")
    if not plus or len(token) <= 8:
        return address
    return f"{base}+{token[:6]}…{at}{domain}"


def new_request_id() -> str:
    return secrets.token_hex(8)


def _owner_bytes(owner: str) -> bytes:
    return owner.strip().lower().encode("utf-8")


class Signer:
    """Issues and verifies tokens with a set of keys, one of them active."""

    def __init__(self, keys: dict[int, bytes], active_key: int) -> None:
        if active_key not in keys:
            raise ValueError(f"active key {active_key} is not among the keys")
        self._keys = dict(keys)
        self.active_key = active_key

    def _mac(self, key_id: int, signed: bytes, owner: str) -> bytes:
        digest = hmac.new(self._keys[key_id], signed + b"\0" + _owner_bytes(owner), hashlib.sha256)
        return digest.digest()[:_MAC_BYTES]

    def issue(self, request_id: str, action: Action, expires_at: int, owner: str) -> str:
        signed = _HEADER.pack(VERSION, self.active_key, bytes.fromhex(request_id), action.value, expires_at)
        raw = signed + self._mac(self.active_key, signed, owner)
        return base64.b32encode(raw).decode("ascii").lower()

    def decode(self, text: str) -> Token:
        """Parse a token's structure; raises PermanentRefusal naming what is wrong."""
        if len(text) != TOKEN_LENGTH:
            raise PermanentRefusal(TOKEN_MALFORMED)
        try:
            raw = base64.b32decode(text.upper())
        except (binascii.Error, ValueError):
            raise PermanentRefusal(TOKEN_MALFORMED) from None
        signed, mac = raw[: _HEADER.size], raw[_HEADER.size :]
        version, key_id, request_id, action_value, expires_at = _HEADER.unpack(signed)
        if version != VERSION or action_value not in {a.value for a in Action}:
            raise PermanentRefusal(TOKEN_MALFORMED)
        if key_id not in self._keys:
            raise PermanentRefusal(TOKEN_UNKNOWN_KEY)
        return Token(key_id, request_id.hex(), Action(action_value), expires_at, signed, mac)

    def verify(self, token: Token, owner: str, now: float) -> None:
        """Check the MAC (constant time) against the request's owner, then the expiry."""
        expected = self._mac(token.key_id, token.signed, owner)
        if not hmac.compare_digest(expected, token.mac):
            raise PermanentRefusal(TOKEN_INVALID)
        if token.expires_at <= now:
            when = datetime.fromtimestamp(token.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            raise PermanentRefusal(TOKEN_EXPIRED.with_text(expired_at=when))
