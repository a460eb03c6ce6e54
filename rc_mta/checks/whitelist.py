"""Sender-domain whitelist: only mail from listed domains may complete tasks.

Matching is exact on purpose: "D" is only D, and "*.D" only D's subdomains, so an entry
never grants more than its author wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ._base import CheckContext, Verdict


def _normalize(domain: str) -> str:
    return domain.strip().lower().rstrip(".")


def _domain_of(address: str) -> str:
    """The domain after the last "@" (a quoted local part may itself hold one); "" if none."""
    _local, at, domain = address.strip().strip("<>").rpartition("@")
    return _normalize(domain) if at else ""


def _allowed(domain: str, allowed: Sequence[str]) -> bool:
    for entry in allowed:
        entry = _normalize(entry)
        if entry.startswith("*."):
            suffix = entry[1:]  # ".D"
            if len(domain) > len(suffix) and domain.endswith(suffix):
                return True
        elif entry and domain == entry:
            return True
    return False


def check_whitelist(allowed: Sequence[str], **addresses: str | None) -> Verdict:
    """pass if every given address's domain is listed; a null (None, "" or "<>") address is skipped."""
    given = [address for address in addresses.values() if address and address.strip().strip("<>")]
    domains: list[str] = []
    for address in given:
        domain = _domain_of(address)
        if domain and domain not in domains:
            domains.append(domain)
    facts = {"domains": ",".join(domains)}
    if not given:
        return Verdict("none", "no sender address to check (null sender)", facts)
    for address in given:
        if not _domain_of(address):
            return Verdict("fail", f"sender address {address!r} has no domain", facts)
    for domain in domains:
        if not _allowed(domain, allowed):
            return Verdict("fail", f"sender domain {domain} is not whitelisted", facts)
    return Verdict("pass", f"sender domain {', '.join(domains)} whitelisted", facts)


Address = Literal["envelope_from", "header_from"]


class WhitelistCheck:
    """The whitelist applied to the envelope sender (at MAIL), the From (at DATA), or both
    (a mailbox): one check under as many names as it is used at stages."""

    def __init__(self, name: str, domains: Sequence[str], addresses: tuple[Address, ...]) -> None:
        self.name = name
        self.domains = tuple(domains)
        self.addresses = addresses

    async def evaluate(self, context: CheckContext) -> Verdict | None:
        given = {
            "envelope_from": context.mail_from if "envelope_from" in self.addresses else None,
            "header_from": context.header_from if "header_from" in self.addresses else None,
        }
        if len(self.addresses) == 1 and not any(given.values()):
            return None  # the one address this stage judges is null: nothing to check here
        return check_whitelist(self.domains, **{name: value for name, value in given.items() if name in self.addresses})
