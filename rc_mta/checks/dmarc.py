"""DMARC (RFC 7489): does an SPF or DKIM pass belong to the domain the reader sees in From:?

SPF and DKIM each authenticate *some* domain; only alignment with the From: domain stops a
sender from passing both with its own domain while showing someone else's. The record is
looked up at the From: domain, then at its organizational domain (where ``sp=`` governs
subdomains). DNS trouble is ``temperror`` so the caller answers 4xx, never 5xx.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from publicsuffixlist import PublicSuffixList

from rc_mta.checks._base import CheckContext, DkimSignature, Verdict, domain_of
from rc_mta.dns import DnsResolver, DnsTemporaryError

POLICIES = ("none", "quarantine", "reject")
_VERSION = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)")


@dataclass(frozen=True)
class DmarcRecord:
    """A parsed DMARC policy record and the domain it was published for."""

    policy: str
    subdomain_policy: str | None
    adkim: str
    aspf: str
    pct: int
    domain: str


class DmarcRecordError(ValueError):
    """The record is DMARC but has no usable policy."""


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    """The bundled list (offline, no fetching); loading it takes a moment, so once."""
    return PublicSuffixList()


def _normalize(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    return domain.rsplit("@", 1)[-1]


# Domains the public suffix list does not name though each of their subdomains belongs to
# another customer: every Microsoft 365 tenant gets <tenant>.onmicrosoft.com, and Exchange
# Online signs with it. Relaxed alignment must not let one tenant speak for another.
SHARED_SUFFIXES = ("onmicrosoft.com",)


def organizational_domain(domain: str) -> str:
    """The registered domain (RFC 7489 3.2): one label below the public suffix."""
    domain = _normalize(domain)
    labels = domain.split(".")
    if labels[-1] == "test":  # RFC 2606 test names: not in the list; treat "test" as the suffix.
        return ".".join(labels[-2:])
    for suffix in SHARED_SUFFIXES:
        if domain.endswith("." + suffix):
            return ".".join(labels[-(suffix.count(".") + 2) :])
    private = _psl().privatesuffix(domain)
    return str(private) if private else domain


def parse_dmarc_record(text: str, domain: str) -> DmarcRecord:
    """Tags per RFC 7489 6.3; unknown tags ignored, bad optional values fall back to defaults."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        # 6.6.3 step 6: without a valid p=, a record with rua= is treated as p=none.
        if "rua" not in tags:
            raise DmarcRecordError(f"no valid p= tag in DMARC record for {domain}: {text!r}")
        policy = "none"
    subdomain_policy: str | None = tags.get("sp", "").lower() or None
    if subdomain_policy not in (None, *POLICIES):
        subdomain_policy = None
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcRecord(
        policy=policy,
        subdomain_policy=subdomain_policy,
        adkim=_mode(tags.get("adkim")),
        aspf=_mode(tags.get("aspf")),
        pct=pct,
        domain=domain,
    )


def _mode(value: str | None) -> Literal["r", "s"]:
    return "s" if (value or "").strip().lower() == "s" else "r"


class _MultipleRecords(Exception):
    pass


async def _lookup(resolver: DnsResolver, domain: str) -> str | None:
    """The one DMARC record at ``_dmarc.<domain>``, or None. Raises on several (6.6.3 step 3)."""
    records = [r for r in await resolver.resolve(f"_dmarc.{domain}", "TXT") if _VERSION.match(r)]
    if len(records) > 1:
        raise _MultipleRecords(f"{len(records)} DMARC records at _dmarc.{domain}")
    return records[0] if records else None


async def find_dmarc_record(resolver: DnsResolver, from_domain: str) -> DmarcRecord | None:
    """Policy discovery (RFC 7489 6.6.3): the From: domain first, then its organizational domain."""
    domain = _normalize(from_domain)
    text = await _lookup(resolver, domain)
    if text is not None:
        return parse_dmarc_record(text, domain)
    org = organizational_domain(domain)
    if org == domain:
        return None
    text = await _lookup(resolver, org)
    return parse_dmarc_record(text, org) if text is not None else None


def aligned(authenticated: str, from_domain: str, mode: str) -> bool:
    """``authenticated`` speaks for ``from_domain`` under ``mode``: "s" the very domain, "r"
    (relaxed) any of its organizational domain."""
    authenticated, from_domain = _normalize(authenticated), _normalize(from_domain)
    if mode == "s":
        return authenticated == from_domain
    return organizational_domain(authenticated) == organizational_domain(from_domain)


async def alignment_modes(resolver: DnsResolver, from_domain: str) -> tuple[str, str]:
    """(adkim, aspf): the alignment the From domain's DMARC record asks of DKIM and SPF;
    relaxed, RFC 7489's default, where it publishes no usable record. DNS trouble raises
    ``DnsTemporaryError``."""
    try:
        record = await find_dmarc_record(resolver, from_domain)
    except (_MultipleRecords, DmarcRecordError):
        return "r", "r"
    return (record.adkim, record.aspf) if record is not None else ("r", "r")


async def check_dmarc(
    resolver: DnsResolver,
    from_domain: str,
    spf_result: str,
    spf_domain: str | None,
    dkim: Sequence[DkimSignature],
) -> Verdict:
    """Pass when a passing SPF or DKIM identity aligns with the From: domain."""
    domain = _normalize(from_domain)
    if not domain or "." not in domain:
        return Verdict("permerror", f"no usable From: domain ({from_domain!r})", {"domain": from_domain})
    try:
        record = await find_dmarc_record(resolver, domain)
    except DnsTemporaryError as exc:
        return Verdict("temperror", str(exc), {"domain": domain})
    except _MultipleRecords as exc:
        return Verdict("none", f"{exc}: DMARC not applied (RFC 7489 6.6.3)", {"domain": domain})
    except DmarcRecordError as exc:
        return Verdict("permerror", str(exc), {"domain": domain})
    if record is None:
        return Verdict("none", f"no DMARC record for {domain}", {"domain": domain})

    policy = record.policy
    if record.domain != domain and record.subdomain_policy is not None:
        policy = record.subdomain_policy
    spf_aligned = spf_result == "pass" and bool(spf_domain) and aligned(spf_domain or "", domain, record.aspf)
    dkim_passes = [s.domain for s in dkim if s.result == "pass"]
    dkim_aligned = any(aligned(d, domain, record.adkim) for d in dkim_passes)
    facts = {
        "policy": policy,
        "domain": domain,
        "record_domain": record.domain,
        "spf_aligned": "yes" if spf_aligned else "no",
        "dkim_aligned": "yes" if dkim_aligned else "no",
        "adkim": record.adkim,  # the alignment the record asks for (the owner rule's too)
        "aspf": record.aspf,
    }
    if spf_aligned or dkim_aligned:
        how = " and ".join(n for n, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned)) if ok)
        return Verdict("pass", f"{how} aligned with {domain}", facts)
    seen = ", ".join(
        [f"SPF {spf_result} for {spf_domain or '?'} (aspf={record.aspf})"]
        + [f"DKIM pass for {d} (adkim={record.adkim})" for d in dkim_passes]
    )
    return Verdict("fail", f"nothing aligned with {domain}: {seen}; policy {policy}", facts)


def _arc_note(arc: Verdict, from_domain: str) -> str | None:
    """Why an ARC seal on a failing message did not help, for the refusal's sentence."""
    sealer = arc.facts.get("sealer")
    if not sealer:
        return None
    if arc.result == "neutral":
        return f"sealed by {sealer}, not a trusted ARC sealer"
    if arc.result in ("fail", "permerror"):
        return f"the ARC chain sealed by {sealer} does not validate"
    return f"the ARC seal of {sealer} does not vouch for {from_domain}"


class DmarcCheck:
    """DMARC of the From domain, from the SPF and DKIM verdicts already reached for this
    message, and a trusted ARC sealer's record where our own evaluation fails."""

    name = "dmarc"

    def __init__(self, resolver: DnsResolver) -> None:
        self.resolver = resolver

    async def evaluate(self, context: CheckContext) -> Verdict | None:
        from_domain = context.from_domain
        if not from_domain:
            return None
        spf = context.verdicts.get("spf")
        dkim = context.verdicts.get("dkim")
        signatures = dkim.signatures if dkim else ()
        spf_domain = spf.facts.get("domain") if spf else domain_of(context.mail_from)
        verdict = await check_dmarc(self.resolver, from_domain, spf.result if spf else "none", spf_domain, signatures)
        arc = context.verdicts.get("arc")
        if verdict.result == "fail" and arc is not None:
            # A trusted gateway's seal recorded the pass its own changes broke (checks/arc.py).
            sealer = arc.facts.get("sealer", "?")
            if arc.proofs:
                return Verdict("pass", f"via ARC from {sealer}: {arc.reason}", {**verdict.facts, "via_arc": sealer})
            if arc.temporary:
                why = f"the ARC seal of trusted sealer {sealer} could not be checked now"
                return Verdict("temperror", why, verdict.facts)
            if note := _arc_note(arc, from_domain):
                verdict = replace(
                    verdict, reason=f"{verdict.reason}; {note}", facts={**verdict.facts, "arc_note": note}
                )
        exchange_online = context.verdicts.get("exchange_online")
        if verdict.result == "fail" and exchange_online is not None and exchange_online.proofs:
            # Mail inside a Microsoft 365 tenant is neither signed nor SPF-checked: the
            # tenant's own mark is what authenticates it (checks/exchange_online.py).
            reason = f"via Exchange Online: {exchange_online.reason}"
            return Verdict("pass", reason, {**verdict.facts, "via_exchange_online": from_domain})
        org = organizational_domain(from_domain)
        if verdict.result == "fail" and any(
            sig.result == "temperror" and organizational_domain(sig.domain) == org for sig in signatures
        ):
            # An aligned signature we could not check might have passed: not a failure yet.
            reason = "the key of an aligned DKIM signature could not be fetched"
            return Verdict("temperror", reason, verdict.facts)
        return verdict
