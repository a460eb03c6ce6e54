"""DKIM (RFC 6376): verify every signature on a message, not only the first.

dkimpy is synchronous and swallows DNS and key trouble inside ``verify`` (it logs and
returns False), so each signature is verified in a worker thread with a DNS function that
records what the key lookup saw: that is how a DNS timeout becomes ``temperror`` (retry
later) and a missing key ``permerror``, instead of all three looking like a bad signature.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import dkim

from rc_mta.checks._base import Result, Verdict
from rc_mta.dns import DnsResolver

# Each signature may cost a DNS lookup to a domain the sender chose; a message stuffed with
# signatures must not turn one delivery into hundreds of lookups.
MAX_SIGNATURES = 16


@dataclass(frozen=True)
class DkimSignature:
    """One DKIM-Signature header field and what verifying it gave."""

    domain: str
    selector: str
    result: Result
    reason: str
    key_bits: int | None
    # The signed instances of the fields that can tie a message to a request (To, Cc,
    # In-Reply-To, References), exactly as dkimpy selected them for verification.
    binding_fields: tuple[tuple[str, str], ...] = ()


@dataclass
class _KeyLookup:
    """What dkimpy's DNS callback saw for one signature."""

    called: bool = False
    record: bytes | None = None
    error: str | None = None
    names: list[str] = field(default_factory=list)


def _tag(sig: dict[bytes, bytes], name: bytes) -> str:
    return sig.get(name, b"").decode("ascii", "replace").strip()


BINDING_FIELDS = frozenset({b"to", b"cc", b"in-reply-to", b"references"})


def _signed_binding_fields(verifier: dkim.DKIM, fields: dict[bytes, bytes]) -> tuple[tuple[str, str], ...]:
    """The To/Cc/In-Reply-To/References instances the signature covers (RFC 6376 5.4.2:
    each name in h= picks the next instance from the bottom), as dkimpy itself selects them."""
    names = [name.strip().lower() for name in fields.get(b"h", b"").split(b":")]
    signed = dkim.select_headers(getattr(verifier, "headers", None) or [], [n for n in names if n])
    out: list[tuple[str, str]] = []
    for name, value in signed:
        if name.lower() in BINDING_FIELDS:
            text = value.replace(b"\r\n", b"").replace(b"\n", b"").decode("utf-8", "replace").strip()
            out.append((name.lower().decode("ascii"), text))
    return tuple(out)


def _verify_one(resolver: DnsResolver, raw: bytes, idx: int, min_key_bits: int) -> DkimSignature:
    """Verify signature ``idx`` (blocking: runs in a worker thread)."""
    lookup = _KeyLookup()

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        lookup.called = True
        lookup.names.append(name.decode("ascii", "replace") if isinstance(name, bytes) else name)
        try:
            lookup.record = resolver.dkim_txt(name, timeout=timeout)
        except dkim.DnsTimeoutError as exc:
            lookup.error = str(exc)
            raise
        return lookup.record

    verifier: dkim.DKIM | None = None
    try:
        verifier = dkim.DKIM(raw, minkey=min_key_bits)
        ok = bool(verifier.verify(idx=idx, dnsfunc=dnsfunc))
        failure: str | None = None if ok else "signature did not verify"
    except Exception as exc:  # dkimpy raises more than DKIMException on hostile input
        ok, failure = False, str(exc) or type(exc).__name__
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
        bound = _signed_binding_fields(verifier, fields) if verifier is not None else ()
        return DkimSignature(domain, selector, "pass", "signature verified", key_bits, bound)
    return DkimSignature(domain, selector, "fail", failure or "signature did not verify", key_bits)


def _count_signatures(raw: bytes) -> int:
    """How many DKIM-Signature fields dkimpy sees (its own header parse, so indexes agree)."""
    verifier = dkim.DKIM(raw)
    return sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")


async def check_dkim(
    resolver: DnsResolver, raw: bytes, min_key_bits: int = 1024
) -> tuple[Verdict, list[DkimSignature]]:
    """Verify every DKIM signature off the event loop; pass if any one passes."""
    try:
        count = await asyncio.to_thread(_count_signatures, raw)
    except Exception as exc:  # dkimpy's parser on hostile input
        return Verdict("permerror", f"message could not be parsed for DKIM: {exc}"), []
    if count == 0:
        return Verdict("none", "message is not DKIM-signed"), []
    checked = min(count, MAX_SIGNATURES)
    signatures = list(
        await asyncio.gather(
            *(asyncio.to_thread(_verify_one, resolver, raw, idx, min_key_bits) for idx in range(checked))
        )
    )
    verdict = _overall(signatures)
    if checked < count:
        note = f" (only the first {checked} of {count} signatures were checked)"
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
