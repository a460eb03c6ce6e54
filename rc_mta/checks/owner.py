"""The owner rule, "who": an SPF or a DKIM pass aligned with the From domain.

Each such pass is kept as a proof with what it binds to (``OwnerProof``), and so is a
trusted ARC sealer's record of one (``arc.py``: its ARC-Message-Signature shows what it
signed); the pipeline then asks whether one of them covers the request acted on ("for
what", ``binding.py``).
A DMARC pass is itself made of these, and a DMARC or DKIM pass stamped by another server
shows neither which fields were signed nor for whom: it is no proof here.
"""

from __future__ import annotations

from ._base import CheckContext, OwnerProof, Verdict
from .binding import RequestAddresses
from .dmarc import organizational_domain


class OwnerCheck:
    """Reads the SPF and DKIM verdicts already reached; the proofs ride on its verdict."""

    name = "owner_auth"

    def __init__(self, addresses: RequestAddresses) -> None:
        self.addresses = addresses

    async def evaluate(self, context: CheckContext) -> Verdict:
        from_domain = context.from_domain
        if not from_domain:
            return Verdict("fail", "no usable From address")
        org = organizational_domain(from_domain)
        proofs: list[OwnerProof] = []
        spf = context.verdicts.get("spf")
        if spf is not None and spf.result == "pass":
            spf_domain = spf.facts.get("domain", "")
            if spf_domain and organizational_domain(spf_domain) == org:
                proofs.append(OwnerProof("spf", spf_domain, self.addresses.tokens_bound_by(context.addressed)))
        dkim = context.verdicts.get("dkim")
        for signature in dkim.signatures if dkim else ():
            if signature.result == "pass" and organizational_domain(signature.domain) == org:
                tokens = self.addresses.tokens_bound_by(signature.binding_fields)
                proofs.append(OwnerProof("dkim", signature.domain, tokens))
        arc = context.verdicts.get("arc")
        proofs.extend(arc.proofs if arc else ())  # a trusted sealer vouching for from_domain
        facts = {"domain": from_domain}
        if proofs:
            via = ", ".join(f"aligned {p.method.upper()} pass ({p.domain})" for p in proofs)
            return Verdict("pass", via, facts, proofs=tuple(proofs))
        if any(v.temporary for v in context.verdicts.values()):
            return Verdict("temperror", "DNS trouble while authenticating", facts)
        return Verdict("fail", f"no aligned SPF or DKIM pass for {from_domain}", facts)
