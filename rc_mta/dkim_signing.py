"""DKIM-signing of the requests we send (dkimpy), and proof that DNS publishes our key.

A signed request lets the owner's provider see that the mail comes from the domain it
names, so it lands in the inbox rather than in spam. The header fields signed are the ones
a person reads and the ones that carry the reply tokens (Reply-To, Message-ID), plus the
MIME fields that say how to read the body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key, parse_public_key

from . import dkim_rsa
from .config import OutboundDkimConfig
from .dns import DnsResolver, DnsTemporaryError
from .errors import ConfigError

dkim_rsa.install()  # OpenSSL signs: dkimpy's own RSA held the interpreter lock ~20 ms at a time

SIGNED_HEADERS = (
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"Reply-To",
    b"MIME-Version",
    b"Content-Type",
    b"Content-Transfer-Encoding",
    b"Auto-Submitted",
)

# A TXT record is bounded by DNS itself; the p= value of a 4096-bit key is ~740 characters.
_TAG = re.compile(r"\s*([a-z][a-z0-9_]{0,31})\s*=\s*([^;]{0,4096})", re.IGNORECASE)
_RSA_OID = bytes.fromhex("06092a864886f70d010101")


@dataclass(frozen=True)
class _Key:
    """The private key as dkimpy wants it, and its public half as DNS should carry it."""

    private: bytes
    public: bytes  # rsa: DER SubjectPublicKeyInfo; ed25519: the 32 raw bytes


class DkimSigner:
    """Signs outgoing requests with one configured key; the key is read once, at start."""

    def __init__(self, config: OutboundDkimConfig) -> None:
        assert config.key_file is not None
        self.config = config
        self.selector = config.selector
        self.domain = config.domain
        self.key_file: Path = config.key_file
        self._key = _load_key(config.key_file, config.algorithm)

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_record(self) -> str:
        """The TXT record to publish at ``record_name``."""
        kind = "rsa" if self.config.algorithm == "rsa-sha256" else "ed25519"
        return f"v=DKIM1; k={kind}; p={base64.b64encode(self._key.public).decode()}"

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header in front."""
        header = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self._key.private,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=self.config.algorithm.encode(),
            include_headers=list(SIGNED_HEADERS),
            linesep=b"\r\n",
        )
        return bytes(header) + message

    async def probe(self, resolver: DnsResolver) -> str:
        """Whether DNS publishes the public half of our key: one sentence either way (a
        mismatch or a missing record raises ConfigError with the record to publish)."""
        name = self.record_name
        try:
            records = await resolver.resolve(name, "TXT")
        except DnsTemporaryError as exc:
            raise ConfigError(f"cannot look up {name} TXT: {exc}") from None
        keys = [_published_key(record) for record in records if "p=" in record]
        if not keys:
            raise ConfigError(f"{name} has no DKIM key; publish: TXT {self.dns_record()!r}")
        if not any(self._matches(k) for k in keys):
            raise ConfigError(
                f"{name} publishes a different key than {self.key_file}; publish: TXT {self.dns_record()!r}"
            )
        return f"{name} publishes the public key of {self.key_file} ({self.config.algorithm})"

    def _matches(self, published: bytes | None) -> bool:
        if published is None:
            return False
        if self.config.algorithm == "ed25519-sha256":
            return published == self._key.public
        try:
            theirs = parse_public_key(published)
        except UnparsableKeyError:
            return False
        mine = parse_public_key(self._key.public)
        return bool(theirs["modulus"] == mine["modulus"] and theirs["publicExponent"] == mine["publicExponent"])


def _published_key(record: str) -> bytes | None:
    """The decoded p= of a DKIM key record; None when it is empty (revoked) or not base64."""
    tags = {m.group(1).lower(): m.group(2).strip() for m in _TAG.finditer(record[:8192])}
    value = "".join(tags.get("p", "").split())
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _load_key(path: Path, algorithm: str) -> _Key:
    where = f"config key outbound.dkim.key_file: {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None
    if algorithm == "ed25519-sha256":
        return _ed25519_key(data, where)
    try:
        key = parse_pem_private_key(data)
    except UnparsableKeyError:
        raise ConfigError(f"{where}: not an RSA private key in PEM form (openssl genrsa makes one)") from None
    return _Key(data, _rsa_public_key_info(key["modulus"], key["publicExponent"]))


def _ed25519_key(data: bytes, where: str) -> _Key:
    import nacl.encoding
    import nacl.exceptions
    import nacl.signing

    try:
        signing_key = nacl.signing.SigningKey(data.strip(), encoder=nacl.encoding.Base64Encoder)
    except (nacl.exceptions.CryptoError, ValueError, TypeError, binascii.Error):
        raise ConfigError(f"{where}: not a base64 ed25519 seed (32 bytes)") from None
    return _Key(data.strip(), bytes(signing_key.verify_key))


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _rsa_public_key_info(modulus: int, exponent: int) -> bytes:
    """The SubjectPublicKeyInfo DER that a DKIM p= carries for an RSA key (RFC 6376 §3.6.1)."""
    rsa_public_key = _der(0x30, _der_int(modulus) + _der_int(exponent))
    algorithm = _der(0x30, _RSA_OID + b"\x05\x00")
    return _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public_key))


async def signed(signer: DkimSigner | None, message: bytes) -> bytes:
    """``message`` as it goes out: signed when outbound DKIM is on, in a thread (the RSA
    maths would hold the loop), as it is when off."""
    return message if signer is None else await asyncio.to_thread(signer.sign, message)


def make_dkim_signer(config: OutboundDkimConfig) -> DkimSigner | None:
    return DkimSigner(config) if config.enabled else None
