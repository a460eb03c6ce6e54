"""The owner rule, "who": an SPF or a DKIM pass aligned with the From domain.

Aligned as the From domain's DMARC record asks (``adkim``/``aspf``): relaxed by default,
any domain of the same organizational domain; strict, the From domain itself, which a
domain asks for when others hold some of its subdomains.

Each such pass is kept as a proof with what it binds to (``OwnerProof``), and so is a
trusted ARC sealer's record of one (``arc.py``: its ARC-Message-Signature shows what it
signed); the pipeline then asks whether one of them covers the request acted on ("for
what", ``binding.py``).
A DMARC pass is itself made of these, and a DMARC or DKIM pass stamped by another server
shows neither which fields were signed nor for whom: it is no proof here.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import parseaddr

from rc_mta.dns import DnsResolver, DnsTemporaryError

from ._base import CheckContext, DkimSignature, OwnerProof, Verdict
from .binding import RequestAddresses
from .dmarc import aligned, alignment_modes


def sent_on_behalf(senders: Iterable[str], header_from: str | None) -> list[str]:
    """Who the Sender fields ``senders`` name besides ``header_from``: a delegate's Send on
    Behalf (Exchange, Outlook, Gmail's delegation write From: the owner, Sender: the delegate).
    Then the delegate answered, not the owner; whatever authenticates the message vouches for
    the mailbox it came from, which the owner shared. Every door refuses it (the pipeline's
    owner rule), and Exchange Online's word does not count for it (``exchange_online.py``).
    An address the parser cannot read is someone else too."""
    own = (header_from or "").lower()
    return sorted({parseaddr(value)[1].lower() for value in senders} - {own})


class OwnerCheck:
    """Reads the SPF and DKIM verdicts already reached; the proofs ride on its verdict."""

    name = "owner_auth"

    def __init__(self, resolver: DnsResolver, addresses: RequestAddresses) -> None:
        self.resolver = resolver
        self.addresses = addresses

    async def evaluate(self, context: CheckContext) -> Verdict:
        from_domain = context.from_domain
        if not from_domain:
            return Verdict("fail", "no usable From address")
        facts = {"domain": from_domain}
        proofs: list[OwnerProof] = []
        spf = context.verdicts.get("spf")
        spf_domain = spf.facts.get("domain", "") if spf is not None and spf.result == "pass" else ""
        dkim = context.verdicts.get("dkim")
        signatures = [s for s in (dkim.signatures if dkim else ()) if s.result == "pass"]
        if spf_domain or signatures:
            try:
                adkim, aspf = await self._modes(from_domain, spf_domain, signatures, context.verdicts.get("dmarc"))
            except DnsTemporaryError:
                return Verdict("temperror", f"the DMARC record of {from_domain} could not be fetched", facts)
            if spf_domain and aligned(spf_domain, from_domain, aspf):
                proofs.append(OwnerProof("spf", spf_domain, self.addresses.tokens_bound_by(context.addressed)))
            for signature in signatures:
                if aligned(signature.domain, from_domain, adkim):
                    tokens = self.addresses.tokens_bound_by(signature.binding_fields)
                    proofs.append(OwnerProof("dkim", signature.domain, tokens, signature.open_fields))
        arc = context.verdicts.get("arc")
        proofs.extend(arc.proofs if arc else ())  # a trusted sealer vouching for from_domain
        exchange_online = context.verdicts.get("exchange_online")
        proofs.extend(exchange_online.proofs if exchange_online else ())  # a colleague, per the tenant
        if proofs:
            via = ", ".join(f"aligned {p.method.upper()} pass ({p.domain})" for p in proofs)
            return Verdict("pass", via, facts, proofs=tuple(proofs))
        if any(v.temporary for v in context.verdicts.values()):
            return Verdict("temperror", "DNS trouble while authenticating", facts)
        return Verdict("fail", f"no aligned SPF or DKIM pass for {from_domain}", facts)

    async def _modes(
        self, from_domain: str, spf_domain: str, signatures: list[DkimSignature], dmarc: Verdict | None
    ) -> tuple[str, str]:
        """(adkim, aspf) for ``from_domain``: as our DMARC evaluation read its record; strict
        where every pass is for the From domain itself (both modes agree: nothing to look up,
        as in most mailbox replies); else the record looked up (a cached answer, mostly).
        A trusted receiver's stamped DMARC pass does not stand in for the record: it may rest
        on another pass (a replayed signature) than the one aligned here, and relaxing then
        let a subdomain the record excludes speak for the owner."""
        if dmarc is not None and not dmarc.stamped and "adkim" in dmarc.facts:
            return dmarc.facts["adkim"], dmarc.facts.get("aspf", "r")
        domains = {spf_domain} if spf_domain else set()
        domains.update(signature.domain for signature in signatures)
        if all(aligned(domain, from_domain, "s") for domain in domains):
            return "s", "s"
        return await alignment_modes(self.resolver, from_domain)
