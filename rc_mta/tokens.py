"""Signed reply tokens: short, case-insensitive, bound to one request and one owner.

Layout (25 bytes, 40 base32 characters, fits in a mail local part with room to spare)::

    version(1) key_id(1) request_id(8) action(1) expires_at(4, unix seconds) mac(10)

The MAC is HMAC-SHA256 over the first 15 bytes *and* the owner's address, truncated to
80 bits. Keys have ids, so a secret can be rotated: the active key signs, every
configured key verifies. Single use is the store's job (a unique row per request).

A secret must look like at least 32 bytes of random material (``secret_weakness``): a
weak key lets anyone who guesses it mint reply addresses, so a weak one stops start-up.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import struct
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from .errors import ConfigError, RcMtaError, TokenExpired, TokenForged, TokenKeyRetired, TokenMalformed

VERSION = 1
_HEADER = struct.Struct(">BB8sBI")
_MAC_BYTES = 10
TOKEN_LENGTH = 40  # base32 characters of 25 bytes

GENERATED_KEY_ID = 0  # the generated key's id; configured ones are 1-255
MIN_SECRET_BYTES = 32
MIN_SECRET_CHARACTERS = 10  # different characters; random keys have 12+ (hex) or 20+ (base64)
_HEX = re.compile(r"[0-9A-Fa-f]+")
_BASE64 = re.compile(r"([A-Za-z0-9+/_-]+)=*")  # standard or URL-safe alphabet, padding optional


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


def secret_weakness(secret: str) -> str | None:
    """Why ``secret`` is too weak to sign with, or None when it will do.

    The rule, as documented: the secret's material must be at least 32 bytes — a secret
    of only hex digits counts 4 bits a character, one of only base64 (or base64url)
    characters 6 bits, any other text its UTF-8 length — and it needs at least 10
    different characters and must not be one shorter piece repeated ("changeme" four
    times). Generators of 32 random bytes (``openssl rand -hex 32``, ``openssl rand
    -base64 32``, ``rc-mta keys generate``) always pass.
    """
    if _HEX.fullmatch(secret):
        size, how = len(secret) // 2, f" ({len(secret)} hex digits)"
    elif match := _BASE64.fullmatch(secret):
        size, how = len(match.group(1)) * 6 // 8, f" ({len(match.group(1))} base64 characters)"
    else:
        size, how = len(secret.encode("utf-8")), ""
    if size < MIN_SECRET_BYTES:
        return f"secret is {size} bytes{how}; at least {MIN_SECRET_BYTES} are needed"
    different = len(set(secret))
    if different < MIN_SECRET_CHARACTERS:
        return f"secret has only {different} different characters; at least {MIN_SECRET_CHARACTERS} are needed"
    if secret in (secret + secret)[1:-1]:  # true exactly when it is a shorter piece repeated
        return "secret is one short piece repeated"
    return None


def new_secret() -> str:
    """32 random bytes as base64url (43 characters): what ``keys generate`` writes or prints."""
    while True:  # a random draw fails the rule with negligible odds; never hand one out
        secret = secrets.token_urlsafe(MIN_SECRET_BYTES)
        if secret_weakness(secret) is None:
            return secret


class WeakKeyFile(ConfigError):
    """The generated key file exists but holds no usable secret (empty, short, not text)."""


def read_key_file(path: Path) -> str | None:
    """The secret in a generated key file; None when there is none yet.

    A file that exists but is empty or weak (a full disk, a hand edit) is an error, never
    a reason to make a new key silently: that would void every request already sent.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read signing key file {path}: {exc.strerror}") from None
    try:
        secret = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise WeakKeyFile(f"signing key file {path}: not UTF-8 text") from None
    if weakness := secret_weakness(secret):
        raise WeakKeyFile(f"signing key file {path}: {weakness}")
    return secret


def write_key_file(path: Path, secret: str, *, replace: bool = False) -> None:
    """Write a key file atomically with mode 0600: a crash leaves no file or a whole one.

    The secret goes to a temporary file in the same directory, is fsynced, then linked
    into place (``replace``: renamed over the old file) and the directory fsynced. Without
    ``replace`` an existing file wins (FileExistsError): two starts never clobber a key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(secret + "\n")
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def new_request_id() -> str:
    return secrets.token_hex(8)


_ACTIONS = {action.value: action for action in Action}
# A token as issued: 40 characters of the base32 alphabet, either case. Read as one base-32
# number (int() is C; base64.b32decode loops in Python), the same 25 bytes b32decode gives.
_BASE32_TOKEN = re.compile(r"[A-Za-z2-7]{40}")
_BASE32_AS_DIGITS = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567abcdefghijklmnopqrstuvwxyz",
    "0123456789abcdefghijklmnopqrstuv0123456789abcdefghijklmnop",
)


def _b32decode(text: str) -> bytes:
    """``base64.b32decode(text.upper())``, at once for a token as issued (any other text,
    padding or odd letters included, is decoded by b32decode itself, as before)."""
    if _BASE32_TOKEN.fullmatch(text) is None:
        return base64.b32decode(text.upper())
    return int(text.translate(_BASE32_AS_DIGITS), 32).to_bytes(TOKEN_LENGTH * 5 // 8, "big")


def claimed_action(text: str) -> Action | None:
    """The action a token's text says, before any check of its MAC; None for text that is
    no token. Only to tell which of the tokens a message names could be a request's own."""
    if len(text) != TOKEN_LENGTH:
        return None
    try:
        raw = _b32decode(text)
    except (binascii.Error, ValueError):
        return None
    return _ACTIONS.get(_HEADER.unpack(raw[: _HEADER.size])[3])


def _owner_bytes(owner: str) -> bytes:
    return owner.strip().lower().encode("utf-8")


class Signer:
    """Issues and verifies tokens with a set of keys, one of them active."""

    def __init__(self, keys: dict[int, bytes], active_key: int | None, *, missing: str = "no signing key") -> None:
        """``active_key`` None (with no keys) is a signer for commands that need no key
        before one exists: every token is of an unknown key, and issuing one is an error
        that says ``missing`` (how to get a key)."""
        if (active_key is None) != (not keys) or (active_key is not None and active_key not in keys):
            raise ValueError(f"active key {active_key} is not among the keys")
        self._keys = dict(keys)
        # Each key's HMAC set up once (its padded key hashed): a MAC copies it, ~1.5 us less
        # than hmac.new or hmac.digest, whose OpenSSL set-up is paid at every call.
        self._keyed = {key_id: hmac.new(key, digestmod=hashlib.sha256) for key_id, key in self._keys.items()}
        self.active_key = active_key
        self.missing = missing

    def _mac(self, key_id: int, signed: bytes, owner: str) -> bytes:
        mac = self._keyed[key_id].copy()
        mac.update(signed + b"\0" + _owner_bytes(owner))
        return mac.digest()[:_MAC_BYTES]

    def issue(self, request_id: str, action: Action, expires_at: int, owner: str) -> str:
        if self.active_key is None:
            raise RcMtaError(self.missing)
        signed = _HEADER.pack(VERSION, self.active_key, bytes.fromhex(request_id), action.value, expires_at)
        raw = signed + self._mac(self.active_key, signed, owner)
        return base64.b32encode(raw).decode("ascii").lower()

    def decode(self, text: str) -> Token:
        """Parse a token's structure; raises a ``Token*`` refusal naming what is wrong."""
        if len(text) != TOKEN_LENGTH:
            raise TokenMalformed("the reply address is damaged")
        try:
            raw = _b32decode(text)
        except (binascii.Error, ValueError):
            raise TokenMalformed("the reply address is damaged") from None
        signed, mac = raw[: _HEADER.size], raw[_HEADER.size :]
        version, key_id, request_id, action_value, expires_at = _HEADER.unpack(signed)
        action = _ACTIONS.get(action_value)
        if version != VERSION or action is None:
            raise TokenMalformed("the reply address is damaged")
        if key_id not in self._keys:
            raise TokenKeyRetired(f"signed with key {key_id}, which this server no longer has")
        return Token(key_id, request_id.hex(), action, expires_at, signed, mac)

    def of_request(self, text: str, request_id: str, owner: str) -> bool:
        """Whether ``text`` is a token issued for request ``request_id`` (its MAC checks out
        for ``owner``; expired or not)."""
        return self.action_for(text, request_id, owner) is not None

    def action_for(self, text: str, request_id: str, owner: str) -> Action | None:
        """The action of ``text`` when it is a token issued for request ``request_id`` (its
        MAC checks out for ``owner``; expired or not), else None."""
        try:
            token = self.decode(text)
        except RcMtaError:
            return None
        expected = self._mac(token.key_id, token.signed, owner)
        if token.request_id != request_id or not hmac.compare_digest(expected, token.mac):
            return None
        return token.action

    def verify(self, token: Token, owner: str, now: float) -> None:
        """Check the MAC (constant time) against the request's owner, then the expiry."""
        expected = self._mac(token.key_id, token.signed, owner)
        if not hmac.compare_digest(expected, token.mac):
            raise TokenForged("the reply address's signature does not check out")
        if token.expires_at <= now:
            when = datetime.fromtimestamp(token.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            raise TokenExpired(when)
