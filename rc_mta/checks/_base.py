"""What every check is: one object with a name that turns a ``CheckContext`` into a Verdict.

A check only judges; what its verdict means for the answer (refuse, defer, or note it in
Authentication-Results) is the policy table's business (``checks/policy.py``), and which
check runs when is ``sender_auth``'s.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, Protocol

from rc_mta.budget import VerificationBudget

Result = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    # Content-Type / Content-Transfer-Encoding when h= leaves them out (``framing.py``).
    open_fields: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OwnerProof:
    """One thing that shows the From domain sent this message, and what it ties it to.

    ``tokens`` are the reply tokens it may act on (``checks/binding.py``): for a DKIM
    signature, or a trusted sealer's ARC-Message-Signature, those its signed fields name; for
    an aligned SPF pass (the owner's server handed over this transaction, which covers no
    field), those the message's own To/Cc name: the server may have sent it where its author
    never addressed it (a list, an alias, a forwarding rule the reply address was added to).
    """

    method: str  # spf | dkim | arc | exchange-online
    domain: str
    tokens: frozenset[str]
    # What says how the body is read and the signature does not cover (``framing.py``):
    # whoever holds the message may change it. None for what vouches for the transaction
    # itself (SPF, Exchange Online), which no one changed on the way.
    open_fields: frozenset[str] = frozenset()

    @property
    def signs_fields(self) -> bool:
        """Whether it covers fields of the message (a signature), or only vouches for the
        sender (an SPF pass, Exchange Online's word), and so binds through the message's own To/Cc."""
        return self.method in ("dkim", "arc")


@dataclass(frozen=True)
class ExchangeOnlineTrust:
    """What the admin of a mailbox hosted by Exchange Online lets it vouch for
    (``[mailbox.graph] trust_exchange_online``): its own Authentication-Results, and its
    mark on a message a user of its tenant sent from one of ``tenant_domains``."""

    tenant_domains: frozenset[str]


@dataclass(frozen=True)
class Verdict:
    """One check's result (RFC 8601 vocabulary) and why, plus the facts it looked at.

    ``signatures`` holds each DKIM signature's own verdict (for DMARC, the owner rule and
    Authentication-Results), ``proofs`` what the owner rule found; ``stamped`` marks a
    verdict read from a trusted receiver's Authentication-Results rather than reached here.
    None of them shows in ``as_json``.
    """

    result: Result
    reason: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    signatures: tuple[DkimSignature, ...] = ()
    proofs: tuple[OwnerProof, ...] = ()
    stamped: bool = False

    @property
    def temporary(self) -> bool:
        return self.result == "temperror"

    def as_json(self) -> dict[str, str]:
        return {"result": self.result, "reason": self.reason, **self.facts}


@lru_cache(maxsize=4096)
def client_address(client_ip: str) -> IPAddress:
    """The client's address; an IPv4-mapped IPv6 one (dual-stack sockets) as the IPv4 it is.
    ValueError for text that is no address. Every MAIL asks it of the same few clients, in
    more than one check: the answers (immutable) are kept."""
    address = ipaddress.ip_address(client_ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=4096)
def client_address_text(client_ip: str) -> str:
    """``client_address`` written out: the key the checks keep their verdicts under."""
    return str(client_address(client_ip))


def domain_of(address: str | None) -> str | None:
    """The domain of an address, lower case, without a trailing dot; None if it has none."""
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].lower().rstrip(".") or None


@dataclass(frozen=True)
class CheckContext:
    """All a check may look at: the connection's facts and, from DATA on, the message.

    ``verdicts`` are those reached so far for this message (DMARC reads SPF's and DKIM's);
    ``stamped`` those a trusted receiver wrote in its Authentication-Results.
    """

    client_ip: str = ""  # "" when the original client is unknown (or a mailbox)
    helo: str = ""
    mail_from: str | None = None  # envelope sender; "" is the null sender
    raw: bytes = b""
    header_from: str | None = None
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    stamped: Mapping[str, Verdict] = field(default_factory=dict)
    light: bool = False  # small and plain enough to verify on the event loop (budget.Cost.light)
    # The message's own To, Cc, In-Reply-To and References fields (name lower case, value
    # unfolded): what binds an SPF pass, which signs nothing, to a request.
    addressed: tuple[tuple[str, str], ...] = ()
    # What DKIM and then ARC may still spend verifying this message (one for the message).
    verification: VerificationBudget = field(default_factory=VerificationBudget, compare=False)
    # Set for a message read from a mailbox Exchange Online hosts, when its admin trusts it.
    exchange_online: ExchangeOnlineTrust | None = None

    @property
    def from_domain(self) -> str | None:
        return domain_of(self.header_from)


class Check(Protocol):
    """One sender check. ``evaluate`` returns None when there is nothing for it to judge
    (no client address, no sender address): then no verdict is recorded at all."""

    name: str

    async def evaluate(self, context: CheckContext) -> Verdict | None: ...
