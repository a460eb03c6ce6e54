"""Verdicts a receiver we trust already reached and stamped in its Authentication-Results:
what stands in for SPF and DMARC where we have no SMTP facts (a mailbox, or a front MTA
that did not pass on the original client). DKIM is never taken from a stamp: only our own
verification shows which fields were signed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..authresults import ReceivedAuthResult, exchange_online_authentication_results, trusted_authentication_results
from ._base import Verdict, domain_of


def trusted_verdicts(raw: bytes, trusted_ids: Sequence[str], from_domain: str | None) -> dict[str, Verdict]:
    """SPF and DMARC as a receiver we trust stamped them, to stand in for checks we cannot
    run without the SMTP facts. A DMARC verdict counts only for the From's own domain
    (``header.from``); the first statement of each method wins."""
    return _verdicts(
        trusted_authentication_results(raw, trusted_ids), from_domain, "from trusted Authentication-Results"
    )


def exchange_online_verdicts(raw: bytes, from_domain: str | None) -> dict[str, Verdict]:
    """SPF and DMARC as Exchange Online stamped them where only it can have written them
    (``exchange_online_authentication_results``): for a mailbox it hosts, when its admin
    trusts it (``[mailbox.graph] trust_exchange_online``)."""
    results = exchange_online_authentication_results(raw) or []
    return _verdicts(results, from_domain, "from Exchange Online's Authentication-Results")


def _verdicts(results: Iterable[ReceivedAuthResult], from_domain: str | None, reason: str) -> dict[str, Verdict]:
    verdicts: dict[str, Verdict] = {}
    for result in results:
        if result.method not in ("spf", "dmarc") or result.method in verdicts:
            continue
        facts = dict(result.properties)
        if result.method == "spf":
            mailfrom = facts.get("smtp.mailfrom", "")
            facts["domain"] = domain_of(mailfrom) or mailfrom
        else:
            facts["domain"] = facts.get("header.from", "").lower().rstrip(".")
            if not from_domain or facts["domain"] != from_domain:
                continue
        verdicts[result.method] = Verdict(result.result, reason, facts, stamped=True)  # type: ignore[arg-type]
    return verdicts
