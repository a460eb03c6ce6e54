"""DKIM (RFC 6376): verify every signature on a message, not only the first.

dkimpy is synchronous and swallows DNS and key trouble inside ``verify`` (it logs and
returns False), so each signature is verified with a DNS function that records what the key
lookup saw: that is how a DNS timeout becomes ``temperror`` (retry later) and a missing key
``permerror``, instead of all three looking like a bad signature.

Verifying is CPU work (hashing, RSA) and runs in the reading pool (rc_mta/budget.py); the
keys are looked up before, on the loop, so no worker of that small pool ever waits on DNS.
dkimpy holds the interpreter lock through each of its regular expressions and redoes for
each signature what costs most: the relaxed canonicalization of the whole header section
and of the body (quadratic on runs of spaces and tabs), the scan of every field for each
name of h=. So each signature's cost is estimated before it is verified and charged to the
message's ``VerificationBudget`` (shared with ARC), the From domain's own signatures first
(the first verified does not pay its one pass over the body's bytes, which the message's size
bounds); one that does not fit, or lists more names than any signer, is not verified, and
says why.
A signature field over 4 KiB is not verified either (dkimpy's check of its b= is quadratic).
"""

from __future__ import annotations

import asyncio
import base64
import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import dkim
import dkim.crypto
import dkim.util

from rc_mta import dkim_rsa
from rc_mta.budget import (
    MAX_VERIFICATION_COST,
    SIGNATURE_STEPS,
    Charge,
    VerificationBudget,
    VerificationCost,
    heavy_work,
)
from rc_mta.checks._base import CheckContext, DkimSignature, Verdict
from rc_mta.checks.dmarc import organizational_domain
from rc_mta.checks.framing import open_fields

__all__ = ["MAX_SIGNATURES", "DkimCheck", "DkimSignature", "check_dkim"]
from rc_mta.dns import DnsResolver, DnsTemporaryError

# Each signature may cost a DNS lookup to a domain the sender chose; a message stuffed with
# signatures must not turn one delivery into hundreds of lookups.
MAX_SIGNATURES = 16
# Real signatures are under 2 KiB (a 4096-bit b= is 684 characters).
MAX_SIGNATURE_BYTES = 4096
# Real signers list under ~40 names in h= (oversigning lists a name once more than it is
# present, RFC 6376 8.15): a signature listing more is not verified. dkimpy looks for every
# field for each distinct name (``budget.SELECT_STEPS``): 1,000 names over 1,000 fields cost
# 50 ms a signature, twice for one that passes (its signed To and References are read again).
MAX_SIGNED_NAMES = 100
UNSIGNED_FROM = "h= does not list From, which every signature must sign (RFC 6376 5.4)"

dkim_rsa.install()  # OpenSSL does the RSA maths of every DKIM and ARC signature check


def signed_names(tags: dict[bytes, bytes]) -> list[bytes]:
    """The names of h=, as dkimpy reads them."""
    return [name.strip().lower() for name in tags.get(b"h", b"").split(b":")]


def canonicalization_cost(cost: VerificationCost, tags: dict[bytes, bytes], default: bytes) -> Charge | str:
    """What one signature (or ARC-Message-Signature) with ``tags`` costs to canonicalize,
    hash and select the fields of, once (``default`` is the c= assumed where it is absent);
    or why it is not verified at any cost."""
    names = signed_names(tags)
    if len(names) > MAX_SIGNED_NAMES:
        return f"h= lists {len(names)} header fields, more than the {MAX_SIGNED_NAMES} any signer lists"
    header, _, body = tags.get(b"c", default).lower().partition(b"/")
    header_relaxed, body_relaxed = header.strip() == b"relaxed", body.strip() == b"relaxed"
    if body_relaxed and cost.relaxed_body > MAX_VERIFICATION_COST:
        return "the body has more white space than text has"
    # The fields are selected twice: to verify, and to read what a passing one signs (``signed_binding_fields``).
    steps = SIGNATURE_STEPS + cost.canonicalization(header_relaxed, body_relaxed) + 2 * cost.selection(len(set(names)))
    return Charge(steps, cost.body_pass(body_relaxed))


@dataclass
class KeyLookup:
    """What dkimpy's DNS callback saw for one signature (or, for ARC, one chain)."""

    called: bool = False
    record: bytes | None = None
    error: str | None = None
    names: list[str] = field(default_factory=list)
    on_loop: bool = False  # verifying on the event loop: a lookup not made ahead can't wait here
    unusable: str | None = None  # the key found, refused before dkimpy computes with it
    deferred: bool = False  # so it was not made: verify again in the reading pool


class NeedsThread(Exception):
    """Verification on the loop met a key not looked up ahead: do it again in the pool."""


def _tag(sig: dict[bytes, bytes], name: bytes) -> str:
    return sig.get(name, b"").decode("ascii", "replace").strip()


BINDING_FIELDS = frozenset({b"to", b"cc", b"in-reply-to", b"references"})


def signed_binding_fields(verifier: dkim.DomainSigner, fields: dict[bytes, bytes]) -> tuple[tuple[str, str], ...]:
    """The To/Cc/In-Reply-To/References instances the signature covers (RFC 6376 5.4.2:
    each name in h= picks the next instance from the bottom), as dkimpy itself selects them."""
    names = [name for name in signed_names(fields) if name]
    signed = dkim.select_headers(getattr(verifier, "headers", None) or [], names)
    out: list[tuple[str, str]] = []
    for name, value in signed:
        if name.lower() in BINDING_FIELDS:
            text = value.replace(b"\r\n", b"").replace(b"\n", b"").decode("utf-8", "replace").strip()
            out.append((name.lower().decode("ascii"), text))
    return tuple(out)


# A key record, None for no record, or the DNS trouble met looking it up.
Keys = dict[str, bytes | DnsTemporaryError | None]


def key_name(name: bytes | str) -> str:
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    return text.lower().rstrip(".")


@dataclass(frozen=True)
class _Signed:
    """One DKIM-Signature field as dkimpy's own header parse found it, and whether to verify it."""

    index: int
    key_name: str | None = None  # s._domainkey.d, the name dkimpy will look up
    unusable: str | None = None  # why it is not verified
    domain: str = ""
    selector: str = ""


# A message as dkimpy splits it (``rfc822_parse``): its header fields and its body.
Parsed = tuple[list[tuple[bytes, bytes]], bytes]
_Signer = TypeVar("_Signer", dkim.DKIM, dkim.ARC)


def parse(raw: bytes) -> Parsed:
    """dkimpy's split of ``raw``, made once for all its signatures and ARC sets: dkimpy's own
    parse splits the body into lines and joins them again (1 MiB of blank lines: ~100 ms,
    which each ``dkim.DKIM(raw)`` paid again). Where every line ends in CRLF (as
    ``canonical_message`` makes them), the body it would join is the bytes as they stand:
    only the header section is given to dkimpy's parse."""
    header_end = 0 if raw.startswith(b"\r\n") else raw.find(b"\r\n\r\n") + 2
    if header_end == 1 or raw.count(b"\n") != raw.count(b"\r\n"):  # no blank line, or a bare LF
        headers, body = dkim.rfc822_parse(raw)
        return headers, body
    headers, _ = dkim.rfc822_parse(raw[:header_end])
    return headers, raw[header_end + 2 :]


def verifier_of(signer: type[_Signer], parsed: Parsed, min_key_bits: int) -> _Signer:
    """dkimpy's verifier (``dkim.DKIM`` or ``dkim.ARC``) on the split made once already."""
    verifier = signer(minkey=min_key_bits)
    verifier.headers, verifier.body = list(parsed[0]), parsed[1]
    return verifier


def _signatures(
    parsed: Parsed, budget: VerificationBudget, from_domain: str | None = None
) -> tuple[list[_Signed], int]:
    """The first ``MAX_SIGNATURES`` DKIM-Signature fields in dkimpy's order (its own parse, so
    indexes agree), and how many there are; each charged to ``budget`` before it is verified,
    the From domain's own (aligned) first, then the others from the top, so that a relay's
    signatures above the owner's cannot spend the message's budget before it. Blocking: in
    the reading pool, or on the loop for a light message."""
    headers, body = parsed
    fields = [value for name, value in headers if name.lower() == b"dkim-signature"]
    found: list[_Signed] = []
    tags_of: dict[int, dict[bytes, bytes]] = {}
    for index, value in enumerate(fields[:MAX_SIGNATURES]):
        if len(value) > MAX_SIGNATURE_BYTES:
            found.append(_Signed(index, unusable=f"signature field over {MAX_SIGNATURE_BYTES} bytes"))
            continue
        try:
            tags = dkim.util.parse_tag_value(value)
            dkim.validate_signature_fields(tags)
        except Exception:
            found.append(_Signed(index))  # dkimpy says what is wrong, before any key lookup
            continue
        domain, selector = (tags.get(tag, b"").decode("ascii", "replace").strip() for tag in (b"d", b"s"))
        if b"from" not in signed_names(tags):
            # RFC 6376 6.1.1: ignored, PERMFAIL. dkimpy verifies it, yet a From written
            # after signing rides on it: it would authenticate any sender for its domain.
            found.append(_Signed(index, unusable=UNSIGNED_FROM, domain=domain.lower(), selector=selector))
            continue
        name = key_name(tags[b"s"] + b"._domainkey." + tags[b"d"]) if b"s" in tags and b"d" in tags else None
        found.append(_Signed(index, name, None, domain.lower(), selector))
        tags_of[index] = tags
    if not tags_of:
        return found, len(fields)
    owner = organizational_domain(from_domain) if from_domain else None
    aligned = [s for s in found if s.index in tags_of and owner and organizational_domain(s.domain) == owner]
    cost = VerificationCost.of(headers, body)
    for signed in aligned + [s for s in found if s.index in tags_of and s not in aligned]:
        why = _charge(budget, canonicalization_cost(cost, tags_of[signed.index], b"simple/simple"))
        if why is not None:
            found[found.index(signed)] = replace(signed, unusable=why)
    return found, len(fields)


def _charge(budget: VerificationBudget, cost: Charge | str) -> str | None:
    """None when ``cost`` is within ``budget`` (and spent), else why it is not verified."""
    return cost if isinstance(cost, str) else budget.spend(cost)


def _read_signatures(
    raw: bytes, budget: VerificationBudget, from_domain: str | None
) -> tuple[Parsed, list[_Signed], int]:
    """The message's split and ``_signatures``, in one go (one hop to the pool)."""
    parsed = parse(raw)
    return (parsed, *_signatures(parsed, budget, from_domain))


async def look_up_keys(resolver: DnsResolver, names: set[str]) -> Keys:
    """Every key record the signatures name, at once, on the loop (through the shared cache)."""

    async def one(name: str) -> tuple[str, bytes | DnsTemporaryError | None]:
        try:
            records = await resolver.resolve(name, "TXT")
        except DnsTemporaryError as exc:
            return name, exc
        return name, records[0].encode("utf-8") if records else None

    return dict(await asyncio.gather(*(one(name) for name in sorted(names))))


# RSA keys beyond these cost seconds in one pow() that holds the interpreter lock (a
# 16384-bit key with a huge exponent: 7.9 s), wherever it runs. Real keys are 1024-4096 bits
# with exponent 65537 (RFC 8301 asks verifiers for 1024-4096).
MAX_KEY_BITS = 8192
MAX_KEY_EXPONENT = 2**32


# A key record a real key fits in (8192 bits: about 1.4 KB of base64): only such are kept.
_KEPT_RECORD_BYTES = 4096


def unreasonable_key(record: bytes | None) -> str | None:
    """Why a published RSA key is refused before use (too large a modulus or exponent), or
    None: also None for what is not an RSA key dkimpy could use (it says why itself).
    Kept per record of a real key's size: a domain's next reply meets the same key, and
    parsing it each time cost 40 µs; larger ones (a sender's 64 KiB TXT) are not kept."""
    if record and len(record) <= _KEPT_RECORD_BYTES:
        return _kept_verdict(record)
    return _key_verdict(record)


@functools.lru_cache(maxsize=256)
def _kept_verdict(record: bytes) -> str | None:
    return _key_verdict(record)


def _key_verdict(record: bytes | None) -> str | None:
    if not record:
        return None
    try:
        tags = dkim.util.parse_tag_value(record)
        if tags.get(b"k", b"rsa").strip().lower() != b"rsa" or not tags.get(b"p"):
            return None
        key = dkim.crypto.parse_public_key(base64.b64decode(b"".join(tags[b"p"].split())))
    except Exception:
        return None  # dkimpy's own parse will refuse it with its reason
    bits = int(key["modulus"]).bit_length()
    if bits > MAX_KEY_BITS:
        return f"a {bits}-bit key, over the {MAX_KEY_BITS} bits verified here"
    if int(key["publicExponent"]) > MAX_KEY_EXPONENT:
        return "a public exponent over 2^32 (real keys use 65537)"
    return None


def prefetched_dnsfunc(resolver: DnsResolver, keys: Keys, lookup: KeyLookup) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc``, answering from ``keys`` (looked up ahead on the loop) and
    recording in ``lookup`` what it was asked and met: DNS trouble raises dkimpy's own
    timeout error, which dkimpy then reports as a mere failure, so the caller reads it here."""

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        lookup.called = True
        lookup.names.append(name.decode("ascii", "replace") if isinstance(name, bytes) else name)
        key = key_name(name)
        if key in keys:
            found = keys[key]
            if isinstance(found, DnsTemporaryError):
                lookup.error = str(found)
                raise dkim.DnsTimeoutError(str(found))
            lookup.record = found
            return _usable(found, lookup)
        if lookup.on_loop:  # no blocking lookup on the loop: the caller goes to the pool
            lookup.deferred = True
            raise dkim.DnsTimeoutError(f"{key} was not looked up ahead")
        try:  # a name not looked up ahead (dkimpy read the tags otherwise): ask now
            lookup.record = resolver.dkim_txt(name, timeout=timeout)
        except dkim.DnsTimeoutError as exc:
            lookup.error = str(exc)
            raise
        return _usable(lookup.record, lookup)

    return dnsfunc


def _usable(record: bytes | None, lookup: KeyLookup) -> bytes | None:
    """``record``, or None (no key for dkimpy) when it is unreasonable (``lookup.unusable``)."""
    lookup.unusable = unreasonable_key(record)
    return None if lookup.unusable else record


def _verify_one(
    resolver: DnsResolver, parsed: Parsed, idx: int, min_key_bits: int, keys: Keys, on_loop: bool = False
) -> DkimSignature:
    """Verify signature ``idx`` of the message split as ``parsed``, with the keys looked up
    ahead (blocking: in the reading pool; or ``on_loop`` for a light message, raising
    NeedsThread if a key was not looked up ahead)."""
    lookup = KeyLookup(on_loop=on_loop)
    dnsfunc = prefetched_dnsfunc(resolver, keys, lookup)
    verifier: dkim.DKIM | None = None
    try:
        verifier = verifier_of(dkim.DKIM, parsed, min_key_bits)
        ok = bool(verifier.verify(idx=idx, dnsfunc=dnsfunc))
        failure: str | None = None if ok else "signature did not verify"
    except Exception as exc:  # dkimpy raises more than DKIMException on hostile input
        ok, failure = False, str(exc) or type(exc).__name__
    if lookup.deferred:
        raise NeedsThread(f"signature {idx}: a key was not looked up ahead")
    fields: dict[bytes, bytes] = getattr(verifier, "signature_fields", None) or {}
    domain = _tag(fields, b"d").lower()
    selector = _tag(fields, b"s")
    keysize = getattr(verifier, "keysize", 0)
    key_bits = int(keysize) if lookup.called and keysize else None

    if not lookup.called:
        # dkimpy gave up before looking for the key: the signature header itself is unusable.
        return DkimSignature(domain, selector, "permerror", f"unusable signature: {failure}", None)
    if lookup.error is not None:
        return DkimSignature(domain, selector, "temperror", f"key lookup failed: {lookup.error}", None)
    key_name = lookup.names[-1].rstrip(".")
    if lookup.unusable is not None:
        return DkimSignature(domain, selector, "permerror", f"unusable key at {key_name}: {lookup.unusable}", None)
    if lookup.record is None:
        return DkimSignature(domain, selector, "permerror", f"no key published at {key_name}", None)
    if key_bits is None:
        return DkimSignature(domain, selector, "permerror", f"unusable key record at {key_name}", None)
    if key_bits < min_key_bits:
        # dkimpy only enforces minkey on signatures that verify; a short key fails either way.
        reason = f"key too short: {key_bits} bits, at least {min_key_bits} required"
        return DkimSignature(domain, selector, "fail", reason, key_bits)
    if ok and b"l" in fields:
        # l= signs only the first bytes of the body: text appended after them (a new
        # text/plain part, say) would ride on the signature. Not good enough to act on.
        return DkimSignature(domain, selector, "policy", "l= tag: only part of the body is signed", key_bits)
    if ok:
        bound = signed_binding_fields(verifier, fields) if verifier is not None else ()
        unsigned = open_fields(signed_names(fields))
        return DkimSignature(domain, selector, "pass", "signature verified", key_bits, bound, unsigned)
    return DkimSignature(domain, selector, "fail", failure or "signature did not verify", key_bits)


async def check_dkim(
    resolver: DnsResolver,
    raw: bytes,
    min_key_bits: int = 1024,
    *,
    on_loop: bool = False,
    from_domain: str | None = None,
    budget: VerificationBudget | None = None,
) -> tuple[Verdict, list[DkimSignature]]:
    """Verify every DKIM signature that ``budget`` (the message's, shared with ARC) covers,
    ``from_domain``'s first; pass if any one passes. In the reading pool, or here on the loop
    when the caller found the message light (``budget.Cost.light``: small, with short
    signature fields), which costs less than the thread hops would."""
    pool, budget = heavy_work(), budget or VerificationBudget()
    try:
        read = (raw, budget, from_domain)
        parsed, checked, count = _read_signatures(*read) if on_loop else await pool.run(_read_signatures, *read)
    except Exception as exc:  # dkimpy's parser on hostile input
        return Verdict("permerror", f"message could not be parsed for DKIM: {exc}"), []
    if count == 0:
        return Verdict("none", "message is not DKIM-signed"), []
    keys = await look_up_keys(resolver, {s.key_name for s in checked if s.key_name and s.unusable is None})

    async def verify(signed: _Signed) -> DkimSignature:
        if signed.unusable is not None:
            return DkimSignature(signed.domain, signed.selector, "permerror", f"not verified: {signed.unusable}", None)
        if on_loop:
            try:
                return _verify_one(resolver, parsed, signed.index, min_key_bits, keys, on_loop=True)
            except NeedsThread:
                pass
        return await pool.run(_verify_one, resolver, parsed, signed.index, min_key_bits, keys)

    signatures = list(await asyncio.gather(*(verify(signed) for signed in checked)))
    verdict = _overall(signatures)
    if len(checked) < count:
        note = f" (only the first {len(checked)} of {count} signatures were checked)"
        verdict = Verdict(verdict.result, verdict.reason + note, verdict.facts)
    return verdict, signatures


def _overall(signatures: list[DkimSignature]) -> Verdict:
    passing = [s for s in signatures if s.result == "pass"]
    if passing:
        domains = ",".join(dict.fromkeys(s.domain for s in passing))
        return Verdict("pass", f"{len(passing)} of {len(signatures)} signatures verified", {"domains": domains})
    summary = "; ".join(f"{s.domain or '?'}/{s.selector or '?'}: {s.result} ({s.reason})" for s in signatures)
    if any(s.result == "temperror" for s in signatures):
        return Verdict("temperror", summary)
    if all(s.result == "permerror" for s in signatures):
        return Verdict("permerror", summary)
    return Verdict("fail", summary)


class DkimCheck:
    """Every signature verified; the verdict carries each one's own (``Verdict.signatures``)."""

    name = "dkim"

    def __init__(self, resolver: DnsResolver, min_key_bits: int) -> None:
        self.resolver = resolver
        self.min_key_bits = min_key_bits

    async def evaluate(self, context: CheckContext) -> Verdict:
        verdict, signatures = await check_dkim(
            self.resolver,
            context.raw,
            self.min_key_bits,
            on_loop=context.light,
            from_domain=context.from_domain,
            budget=context.verification,
        )
        return replace(verdict, signatures=tuple(signatures))
