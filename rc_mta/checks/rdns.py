"""Forward-confirmed reverse DNS (FCrDNS): the client's PTR name must point back at it.

A PTR record alone proves nothing (whoever owns the address block writes it); the forward
lookup of that name, controlled by the name's owner, must agree.
"""

from __future__ import annotations

import asyncio
import ipaddress

from rc_mta.dns import DnsResolver, DnsTemporaryError

from ._base import CheckContext, IPAddress, Verdict, client_address, client_address_text

# Bound the work one client can cause, as RFC 7208 5.5 does for the ptr mechanism.
MAX_PTR_NAMES = 10


async def _points_back(resolver: DnsResolver, name: str, address: IPAddress) -> bool:
    rdtype = "AAAA" if address.version == 6 else "A"
    for record in await resolver.resolve(name, rdtype):
        try:
            if ipaddress.ip_address(record) == address:
                return True
        except ValueError:
            continue
    return False


async def check_rdns(resolver: DnsResolver, client_ip: str) -> Verdict:
    """pass if some PTR name of the client resolves back to it; temperror if DNS can't say.
    A verdict is kept for as long as the records it read (``DnsResolver.keep_derived``)."""
    try:
        address = client_address(client_ip)
    except ValueError:
        return Verdict("permerror", f"{client_ip!r} is not an IP address")
    key = ("rdns", client_address_text(client_ip))
    kept = resolver.derived(key)
    if isinstance(kept, Verdict):
        return Verdict(kept.result, kept.reason, dict(kept.facts))
    with resolver.reading() as reads:
        verdict = await _check(resolver, address)
    if not verdict.temporary:
        resolver.keep_derived(key, Verdict(verdict.result, verdict.reason, dict(verdict.facts)), reads)
    return verdict


async def _check(resolver: DnsResolver, address: IPAddress) -> Verdict:
    ip = str(address)
    try:
        names = (await resolver.reverse(ip))[:MAX_PTR_NAMES]
    except DnsTemporaryError as exc:
        return Verdict("temperror", f"reverse DNS of {ip} unavailable: {exc}")
    if not names:
        return Verdict("fail", f"no PTR record for {ip}")
    # Look the names up together; one confirming name is enough, even if another timed out.
    outcomes = await asyncio.gather(*(_points_back(resolver, name, address) for name in names), return_exceptions=True)
    for name, outcome in zip(names, outcomes, strict=True):
        if outcome is True:
            return Verdict("pass", f"{ip} → {name} → {ip}", {"ptr": name})
    for outcome in outcomes:
        if isinstance(outcome, DnsTemporaryError):
            return Verdict("temperror", f"forward DNS for {ip}'s PTR names unavailable: {outcome}")
        if isinstance(outcome, BaseException):
            raise outcome
    listed = ", ".join(names)
    verb = "does" if len(names) == 1 else "do"
    return Verdict("fail", f"{ip} → {listed} {verb} not resolve back to {ip}", {"ptr": names[0]})


class RdnsCheck:
    """FCrDNS of a known client; the verdict names the address it judged (``policy.iprev``)."""

    name = "rdns"

    def __init__(self, resolver: DnsResolver) -> None:
        self.resolver = resolver

    async def evaluate(self, context: CheckContext) -> Verdict | None:
        if not context.client_ip:
            return None
        verdict = await check_rdns(self.resolver, context.client_ip)
        return Verdict(verdict.result, verdict.reason, {**verdict.facts, "ip": context.client_ip})
