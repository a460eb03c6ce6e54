"""SPF (RFC 7208) through pyspf, with every DNS lookup going through our caching resolver.

pyspf looks DNS up through its module global ``spf.DNSLookup``, shared by every thread.
We point it, once and for all, at ``_lookup``, which uses the resolver of the check running
in the current thread (a context variable set in the worker thread), so concurrent checks
with different resolvers never cross, and pyspf never falls back to the system's DNS.

A verdict is kept (``DnsResolver.keep_derived``) for one client address, envelope sender
and HELO name until the first DNS record it read expires: the next MAIL FROM of that
client for that sender is answered without a thread or a lookup. DNS trouble is never kept.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import spf

from rc_mta.dns import DnsResolver, DnsTemporaryError

from ._base import CheckContext, Result, Verdict, client_address_text

_current_resolver: contextvars.ContextVar[DnsResolver | None] = contextvars.ContextVar(
    "rc_mta_spf_resolver", default=None
)

_RESULTS: dict[str, Result] = {
    "pass": "pass",
    "fail": "fail",
    "softfail": "softfail",
    "neutral": "neutral",
    "none": "none",
    "temperror": "temperror",
    "permerror": "permerror",
}


def _lookup(name: str, qtype: str, strict: bool = True, timeout: float = 0) -> list[tuple[tuple[str, str], object]]:
    """pyspf's ``DNSLookup``: the current check's resolver, or a TempError if there is none."""
    resolver = _current_resolver.get()
    if resolver is None:
        raise spf.TempError("DNS lookup outside an rc-mta SPF check (no resolver)")
    return resolver.pyspf_lookup(name, qtype, strict, timeout)


def _install() -> None:
    """(Re)claim pyspf's DNS hook; cheap, and survives anyone else assigning it."""
    spf.DNSLookup = _lookup


_install()


def _run(resolver: DnsResolver, ip: str, sender: str, helo: str) -> tuple[str, str, str, list[float]]:
    """In a worker thread: bind this check's resolver, run pyspf, return (result,
    explanation, domain, and when the records it read expire)."""
    _install()
    _current_resolver.set(resolver)
    with resolver.reading() as reads:
        query: Any = spf.query(i=ip, s=sender, h=helo, timeout=resolver.timeout * 4)
        result, _code, explanation = query.check()
    return str(result), str(explanation), str(query.o), reads


async def check_spf(resolver: DnsResolver, client_ip: str, mail_from: str, helo: str) -> Verdict:
    """The SPF verdict for MAIL FROM (or, for a null sender, postmaster@HELO) from client_ip."""
    identity = mail_from or f"postmaster@{helo}"
    facts = {"domain": identity.rpartition("@")[2], "smtp.mailfrom": identity, "smtp.helo": helo}
    try:
        address = client_address_text(client_ip)  # an IPv4-mapped IPv6 address as the IPv4 it is
    except ValueError:
        return Verdict("permerror", f"{client_ip!r} is not an IP address", facts)
    if not mail_from and not helo:
        return Verdict("none", "null sender and no HELO name: no identity to check", facts)
    key = ("spf", address, mail_from, helo)  # as given: the verdict's facts and text quote them
    kept = resolver.derived(key)
    if isinstance(kept, Verdict):
        return Verdict(kept.result, kept.reason, dict(kept.facts))
    try:
        # asyncio.to_thread runs _run in a copy of this context: the resolver it sets stays in that copy.
        result, explanation, domain, reads = await asyncio.to_thread(_run, resolver, address, mail_from, helo)
    except DnsTemporaryError as exc:
        return Verdict("temperror", f"SPF Temporary Error: {exc}", facts)
    facts["domain"] = domain
    if result == "none" and not explanation:
        explanation = f"{domain} publishes no SPF record"
    verdict = Verdict(_RESULTS.get(result, "permerror"), explanation, facts)
    if not verdict.temporary:
        resolver.keep_derived(key, Verdict(verdict.result, verdict.reason, dict(facts)), reads)
    return verdict


class SpfCheck:
    """SPF of MAIL FROM (of the HELO name for the null sender), for a known client only."""

    name = "spf"

    def __init__(self, resolver: DnsResolver) -> None:
        self.resolver = resolver

    async def evaluate(self, context: CheckContext) -> Verdict | None:
        if not context.client_ip:
            return None
        return await check_spf(self.resolver, context.client_ip, context.mail_from or "", context.helo)
