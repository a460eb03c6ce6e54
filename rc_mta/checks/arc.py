"""ARC (RFC 8617): a named gateway's seal vouching for a message whose DKIM it broke.

Company gateways (Microsoft 365 with a filter, Mimecast, Proofpoint, list-like forwarders)
rewrite bodies and subjects on the way out, which breaks the owner's DKIM signature, so
DMARC fails a genuine reply. Such a gateway records what it found, before it changed
anything, in an ARC set (ARC-Authentication-Results, ARC-Message-Signature, ARC-Seal).

Only the operator says whose record is believed (``[checks.arc] trusted_sealers``). When the
chain validates (cv=pass) and the latest seal is a trusted sealer's, that sealer's
ARC-Authentication-Results stand for the owner's domain if they say ``dmarc=pass`` for the
From domain with an aligned ``dkim=pass`` (header.d) or ``spf=pass`` (smtp.mailfrom). The
verdict then carries an owner proof whose binding to the request is read from what the
sealer's ARC-Message-Signature signs, by the same rule as a DKIM signature's
(``binding.py``). A chain sealed last by anyone else is not even verified: it changes
nothing, and costs no lookup at a domain the sender chose.

dkimpy verifies; as for DKIM (``dkim.py``), the keys are looked up on the loop first, the
crypto runs in the reading pool, and DNS trouble, which dkimpy reports as a mere failure,
is read from the DNS function's own record and answered ``temperror``.
"""

from __future__ import annotations

from dataclasses import dataclass

import dkim
import dkim.util

from rc_mta.authresults import ReceivedAuthResult, arc_authentication_results
from rc_mta.budget import SIGNATURE_STEPS, Charge, VerificationCost, heavy_work
from rc_mta.checks._base import CheckContext, OwnerProof, Verdict, domain_of
from rc_mta.checks.binding import RequestAddresses
from rc_mta.checks.dkim import (
    MAX_SIGNATURE_BYTES,
    KeyLookup,
    Keys,
    canonicalization_cost,
    key_name,
    look_up_keys,
    parse,
    prefetched_dnsfunc,
    signed_binding_fields,
    verifier_of,
)
from rc_mta.checks.dmarc import organizational_domain
from rc_mta.checks.framing import open_fields
from rc_mta.checks.whitelist import domain_listed
from rc_mta.dns import DnsResolver

__all__ = ["MAX_ARC_SETS", "ArcCheck"]

# Each set costs two key lookups and two RSA verifications; real chains have a few sets
# (a filter, a tenant, a list). RFC 8617 5.1.1 stops at 50.
MAX_ARC_SETS = 8
_SEAL = b"arc-seal"
_AMS = b"arc-message-signature"


@dataclass(frozen=True)
class _Survey:
    """The ARC sets as dkimpy's own parse finds them, before any verification."""

    sets: int  # the highest instance, 0 for none
    sealer: str = ""  # d= of the latest ARC-Seal
    key_names: frozenset[str] = frozenset()
    unusable: str | None = None  # why the chain is not verified
    cost: Charge = Charge(0)  # noqa: RUF009 (immutable) of verifying it, in ``budget`` steps


def _survey(raw: bytes) -> _Survey:
    """Who sealed last, the keys the chain names, and what verifying it costs. Blocking: runs
    in the reading pool."""
    parsed = parse(raw)
    if not any(name.lower() in dkim.ARC.ARC_HEADERS for name, _ in parsed[0]):
        return _Survey(0)  # most mail: not sorted (a relaxed canonicalization of every field)
    arc = verifier_of(dkim.ARC, parsed, 1024)  # the key size matters only to verify
    latest, fields = arc.sorted_arc_headers()
    if latest == 0:
        return _Survey(0)
    seals = [(i, value) for i, (name, value) in fields if name.lower() == _SEAL and i == latest]
    sealer = _tag(seals[0][1], b"d").lower().rstrip(".") if seals else ""
    if latest > MAX_ARC_SETS or len(fields) > 3 * MAX_ARC_SETS:
        return _Survey(latest, sealer, unusable=f"more than {MAX_ARC_SETS} ARC sets")
    signatures = [value for _, (name, value) in fields if name.lower() in (_SEAL, _AMS)]
    # Measured as they stand in the message: dkimpy's b= pattern runs on the raw fields,
    # whose folded white space the canonical values above no longer show.
    raw_fields = [value for name, value in arc.headers if name.lower() in (_SEAL, _AMS)]
    if any(len(value) > MAX_SIGNATURE_BYTES for value in raw_fields):
        return _Survey(latest, sealer, unusable=f"an ARC field over {MAX_SIGNATURE_BYTES} bytes")
    cost = _chain_cost(VerificationCost.of(*parsed), fields)
    if isinstance(cost, str):
        return _Survey(latest, sealer, unusable=cost)
    pairs = [(_tag(value, b"s"), _tag(value, b"d")) for value in signatures]
    names = frozenset(key_name(f"{s}._domainkey.{d}") for s, d in pairs if s and d)
    return _Survey(latest, sealer, names, cost=cost)


def _chain_cost(cost: VerificationCost, fields: list[tuple[int, tuple[bytes, bytes]]]) -> Charge | str:
    """What dkimpy's validation of the chain costs (``budget`` steps), or why it is not made:
    the sets sorted twice more (each time a relaxed canonicalization of the header section);
    each ARC-Message-Signature verified as a DKIM signature (relaxed, as ARC canonicalizes,
    unless its c= says otherwise); each ARC-Seal over the header section again. Its pass over
    the body is one AMS's (free if no DKIM signature was verified before)."""
    total, body_pass = 2 * cost.header, 0
    for _, (name, value) in fields:
        if name.lower() == _SEAL:
            total += SIGNATURE_STEPS + cost.header + cost.selection(3)  # its h= is the ARC fields
            continue
        try:
            tags = dkim.util.parse_tag_value(value)
        except Exception:
            continue  # dkimpy stops there, saying why
        if name.lower() == _AMS:
            one = canonicalization_cost(cost, tags, b"relaxed/relaxed")
            if isinstance(one, str):
                return f"an ARC-Message-Signature: {one}" if one.startswith("h=") else one
            total, body_pass = total + one.steps, max(body_pass, one.body_pass)
    return Charge(total, body_pass)


def _tag(value: bytes, name: bytes) -> str:
    """One tag of an ARC-Seal or ARC-Message-Signature, "" if absent or unparsable (dkimpy
    says what is wrong when it verifies)."""
    try:
        tags = dkim.util.parse_tag_value(value)
    except Exception:
        return ""
    return str(tags.get(name, b"").decode("ascii", "replace")).strip()


@dataclass(frozen=True)
class _Chain:
    """What verifying the chain gave, and what the latest set records and signs."""

    cv: str  # pass | fail
    reason: str
    dns_error: str | None = None
    ams_domain: str = ""
    ams_selector: str = ""
    aar: str = ""  # the latest ARC-Authentication-Results value
    ams_partial: bool = False  # l=: only the first bytes of the body are signed
    ams_signs_from: bool = False
    binding_fields: tuple[tuple[str, str], ...] = ()
    open_fields: frozenset[str] = frozenset()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")


def _verify_chain(resolver: DnsResolver, raw: bytes, min_key_bits: int, keys: Keys, latest: int) -> _Chain:
    """dkimpy's chain validation with the keys looked up ahead (blocking: in the reading pool)."""
    lookup = KeyLookup()
    arc = verifier_of(dkim.ARC, parse(raw), min_key_bits)
    try:
        cv, results, reason = arc.verify(dnsfunc=prefetched_dnsfunc(resolver, keys, lookup))
    except Exception as exc:  # dkimpy raises more than DKIMException on hostile input
        cv, results, reason = dkim.CV_Fail, [], str(exc) or type(exc).__name__
    chain = _Chain("pass" if cv == dkim.CV_Pass else "fail", _text(reason), lookup.error)
    if chain.cv != "pass" or not results:
        return chain
    newest = results[0]  # dkimpy lists the sets from the latest down
    # The very field dkimpy verified as the latest AMS: found as dkimpy found it (by its
    # instance in dkimpy's own sort), not by a parse of ours that might pick another.
    _, fields = arc.sorted_arc_headers()
    ams = [value for instance, (name, value) in fields if instance == latest and name.lower() == _AMS]
    tags: dict[bytes, bytes] = dkim.util.parse_tag_value(ams[0]) if len(ams) == 1 else {}
    signed = [n.strip().lower() for n in tags.get(b"h", b"").split(b":")]
    return _Chain(
        "pass",
        chain.reason,
        None,
        _text(newest.get("ams-domain")).strip().lower().rstrip("."),
        _text(newest.get("ams-selector")).strip(),
        _text(newest.get("aar-value")),
        b"l" in tags,
        b"from" in signed,
        signed_binding_fields(arc, tags),
        open_fields(signed),
    )


def _aligned(domain: str, from_domain: str) -> bool:
    domain = domain.strip().lower().rstrip(".")
    return bool(domain) and organizational_domain(domain) == organizational_domain(from_domain)


def _vouches(results: list[ReceivedAuthResult], from_domain: str) -> str | None:
    """What in the sealer's recorded results vouches for ``from_domain``, or None: a DMARC
    pass for it, with an aligned DKIM (header.d) or SPF (smtp.mailfrom) pass."""
    dmarc = [
        r
        for r in results
        if r.method == "dmarc"
        and r.result == "pass"
        and r.properties.get("header.from", "").lower().rstrip(".") == from_domain
    ]
    if not dmarc:
        return None
    for r in results:
        if r.result != "pass":
            continue
        if r.method == "dkim" and _aligned(r.properties.get("header.d", ""), from_domain):
            return f"dkim=pass header.d={r.properties['header.d']}, dmarc=pass header.from={from_domain}"
        mailfrom = r.properties.get("smtp.mailfrom", "")
        if r.method == "spf" and _aligned(domain_of(mailfrom) or mailfrom, from_domain):
            return f"spf=pass smtp.mailfrom={mailfrom}, dmarc=pass header.from={from_domain}"
    return None


class ArcCheck:
    """The chain of a message sealed last by a trusted sealer; its proof rides on the verdict."""

    name = "arc"

    def __init__(
        self, resolver: DnsResolver, trusted_sealers: list[str], addresses: RequestAddresses, min_key_bits: int
    ) -> None:
        self.resolver = resolver
        self.trusted_sealers = tuple(trusted_sealers)
        self.addresses = addresses
        self.min_key_bits = min_key_bits

    def trusts(self, domain: str) -> bool:
        """Exactly a listed sealer; "*.D" lists D's subdomains (as the whitelist matches)."""
        return bool(domain) and domain_listed(domain, self.trusted_sealers)

    async def evaluate(self, context: CheckContext) -> Verdict | None:
        pool = heavy_work()
        try:
            survey = await pool.run(_survey, context.raw)
        except Exception as exc:  # dkimpy's parser on hostile input
            return Verdict("permerror", f"message could not be parsed for ARC: {exc}")
        if survey.sets == 0:
            return Verdict("none", "message is not ARC-sealed")
        sealer = survey.sealer or "?"
        facts = {"sealer": sealer, "instance": str(survey.sets)}
        if not self.trusts(survey.sealer):
            why = f"sealed last by {sealer}, not in [checks.arc] trusted_sealers: not evaluated, changes nothing"
            return Verdict("neutral", why, {**facts, "trusted": "no"})
        facts["trusted"] = "yes"
        unusable = survey.unusable or context.verification.spend(survey.cost)  # what DKIM left
        if unusable is not None:
            return Verdict("fail", f"chain not verified: {unusable}; changes nothing", facts)
        keys = await look_up_keys(self.resolver, set(survey.key_names))
        chain = await pool.run(_verify_chain, self.resolver, context.raw, self.min_key_bits, keys, survey.sets)
        if chain.dns_error is not None:
            return Verdict("temperror", f"an ARC key could not be fetched: {chain.dns_error}", facts)
        if chain.cv != "pass":
            return Verdict("fail", f"chain does not validate (cv=fail): {chain.reason}; changes nothing", facts)
        facts["selector"] = chain.ams_selector
        return self._judged(chain, sealer, facts, context.from_domain)

    def _judged(self, chain: _Chain, sealer: str, facts: dict[str, str], from_domain: str | None) -> Verdict:
        """A valid chain from a trusted sealer: does its record vouch for the From domain?"""
        if not self.trusts(chain.ams_domain):
            why = f"the latest ARC-Message-Signature is by {chain.ams_domain}, not a trusted sealer"
            return Verdict("pass", f"chain verified, but {why}; changes nothing", facts)
        if chain.ams_partial or not chain.ams_signs_from:
            why = "signs only part of the body (l=)" if chain.ams_partial else "does not sign From"
            return Verdict("pass", f"chain verified, but its ARC-Message-Signature {why}; changes nothing", facts)
        vouched = _vouches(arc_authentication_results(chain.aar), from_domain) if from_domain else None
        if vouched is None:
            why = f"{sealer} recorded no aligned DKIM or SPF pass and DMARC pass for {from_domain or 'the From'}"
            return Verdict("pass", f"chain verified, but {why}; changes nothing", facts)
        tokens = self.addresses.tokens_bound_by(chain.binding_fields)
        proof = OwnerProof("arc", sealer, tokens, chain.open_fields)
        reason = f"chain of {facts['instance']} ARC set(s) verified; trusted sealer {sealer} recorded {vouched}"
        return Verdict("pass", reason, facts, proofs=(proof,))
