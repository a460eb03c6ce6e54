"""dkimpy's RSA signature check and signing, with the arithmetic done by OpenSSL.

Why: dkimpy verifies RSA signatures in pure Python. The public-key power of a 2048-bit
signature (CPython's ``pow``) and two byte conversions written as Python loops cost about
1 ms per signature: a fifth to a quarter of the CPU one whole reply takes, DKIM's part of
every reply and ARC's of every sealed one. OpenSSL (through ``cryptography``, PyCA's
binding) does the same power in some 30 µs.

The answer is dkimpy's own, computed the same way: dkimpy raises the signature to the
key's exponent and compares the whole encoded message (RFC 8017 EMSA-PKCS1-v1_5: ``00 01``,
padding of ``ff``, ``00``, the DigestInfo) with the one it builds from the hash. Here OpenSSL
raises it and checks the padding, and the DigestInfo it returns is compared with dkimpy's.
A signature dkimpy would reduce modulo the key first (a number not below the modulus) is
reduced here too, so no signature is accepted or refused that dkimpy would not. Everything
else (parsing, canonicalization, the key record, the hash) stays dkimpy's.

Signing (the request mails rc-mta sends, ``[outbound.dkim]``) is worse: dkimpy's private-key
power took 46 ms a mail, in two calls of ``pow`` that hold the interpreter lock some 20 ms
each, so the event loop stalled while a request or reminder was signed. OpenSSL signs in
about 1 ms and lets go of the lock. PKCS#1 v1.5 signatures are deterministic: the bytes are
the ones dkimpy would write.

``install()`` puts both in dkimpy's namespace (where ``DKIM.verify``, ``ARC.verify`` and
``dkim.sign`` look them up). tests/test_check_dkim.py compares them with dkimpy's own: the
check on good, forged and malformed signatures, the signing byte for byte.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import dkim
import dkim.crypto
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

# The hashes dkimpy signs with (``dkim.crypto.HASH_ID_MAP``), as OpenSSL names them.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}


class _Hash(Protocol):
    name: str

    def digest(self) -> bytes: ...


def _openssl_takes(modulus: int, exponent: int) -> bool:
    """OpenSSL's own limits (rsa_local.h): a modulus of at most 16384 bits, and above 3072
    bits an exponent of at most 64. It refuses such a key only when it checks a signature,
    as it would a forged one: so those keys (rc-mta's checks refuse them before, at
    ``checks.dkim.MAX_KEY_BITS`` and ``MAX_KEY_EXPONENT``) keep dkimpy's maths."""
    bits = modulus.bit_length()
    return bits <= 16384 and (bits <= 3072 or exponent.bit_length() <= 64)


@functools.lru_cache(maxsize=64)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    """OpenSSL's key for a DKIM key record (a few keys sign nearly every reply)."""
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def verify_pkcs1_v1_5(hash: _Hash, signature: bytes, public_key: dict[str, Any]) -> bool:
    """dkimpy's ``RSASSA_PKCS1_v1_5_verify``: True if ``signature`` signs ``hash``."""
    modulus, exponent = public_key["modulus"], public_key["publicExponent"]
    length = (modulus.bit_length() + 7) // 8
    expected = dkim.crypto.EMSA_PKCS1_v1_5_encode(hash, length)  # raises as dkimpy's does
    digest_info = expected[expected.index(b"\x00", 2) + 1 :]
    try:
        key = _public_key(modulus, exponent) if _openssl_takes(modulus, exponent) else None
    except ValueError:  # an exponent or modulus OpenSSL will not take
        key = None
    if key is None:  # dkimpy's own maths
        return bool(dkim.crypto.RSASSA_PKCS1_v1_5_verify(hash, signature, public_key))
    reduced = (int.from_bytes(signature, "big") % modulus).to_bytes(length, "big")
    try:
        recovered = key.recover_data_from_signature(reduced, padding.PKCS1v15(), None)
    except InvalidSignature:
        return False
    return bool(recovered == digest_info)


# dkimpy's names of a private key's parts (``dkim.crypto.parse_private_key``), in our order.
_PRIVATE_PARTS = (
    "modulus",
    "publicExponent",
    "privateExponent",
    "prime1",
    "prime2",
    "exponent1",
    "exponent2",
    "coefficient",
)


@functools.lru_cache(maxsize=8)
def _private_key(numbers: tuple[int, ...]) -> rsa.RSAPrivateKey:
    """OpenSSL's key for rc-mta's signing key (one, or two while keys are rolled over)."""
    n, e, d, p, q, dmp1, dmq1, iqmp = numbers
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n)).private_key()


def sign_pkcs1_v1_5(hash: _Hash, private_key: dict[str, Any]) -> bytes:
    """dkimpy's ``RSASSA_PKCS1_v1_5_sign``: the signature of ``hash``."""
    algorithm = _HASHES.get(hash.name.lower())
    numbers = tuple(private_key[name] for name in _PRIVATE_PARTS)
    try:
        key = _private_key(numbers) if algorithm is not None else None
    except ValueError:  # parts OpenSSL finds inconsistent: dkimpy's own maths, as before
        key = None
    if key is None or algorithm is None:
        return bytes(dkim.crypto.RSASSA_PKCS1_v1_5_sign(hash, private_key))
    length = (private_key["modulus"].bit_length() + 7) // 8
    dkim.crypto.EMSA_PKCS1_v1_5_encode(hash, length)  # raises DigestTooLargeError as dkimpy's does
    return key.sign(hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm()))


def install() -> None:
    """Make dkimpy's DKIM and ARC verification, and its signing, use OpenSSL's RSA."""
    dkim.RSASSA_PKCS1_v1_5_verify = verify_pkcs1_v1_5
    dkim.RSASSA_PKCS1_v1_5_sign = sign_pkcs1_v1_5
