"""Exchange Online's word that a user of its own tenant sent a message: what authenticates a
colleague's reply in a mailbox Exchange Online hosts, where nothing else can.

Mail between users of one Microsoft 365 tenant is not DKIM-signed by Exchange Online and
carries no SPF verdict (it never crossed SMTP from outside). What Exchange does record is
how it authenticated the message's source, in ``X-MS-Exchange-Organization-AuthAs``:
``Internal`` for a user or server of the organization, ``Anonymous`` for the Internet,
``Partner`` for a partner's connector. Its header firewall removes every
``X-MS-Exchange-Organization-*`` field from a message entering from an untrusted source, so
an outsider cannot bring that mark along. Where the facts come from: README, "Exchange
Online" (Microsoft's documentation of the header firewall, of the AuthenticationSource
values, of Graph's MIME content; samples of real messages).

Exchange writes these fields at the end of the header block, among and below the fields the
sender wrote (Graph's own example of a message's MIME shows it), so their place proves
nothing. What this check asks instead, all of it:

- exactly one ``X-MS-Exchange-Organization-AuthAs``, saying ``Internal``: with two, one of
  them is not Exchange's;
- no sign that Exchange Online received the message from outside over SMTP: it stamps such
  a message with its SPF verdict (``Received-SPF``, and ``spf=`` in its
  Authentication-Results); a message a colleague submitted has neither. This also leaves out
  mail an on-premises server relays in over a hybrid connector (also ``Internal``): there,
  Exchange's SPF verdict is what authenticates it;
- not auto-forwarded (``X-MS-Exchange-Organization-AutoForwarded``): a rule's forward is
  Exchange's submission, not its author's;
- no Sender field naming someone else: Exchange writes one when a delegate sends on behalf
  of the From, and then the delegate answered, not the owner (``owner.sent_on_behalf``, the
  rule every door applies);
- its From domain is one of ``tenant_domains``, the tenant's accepted domains the admin named.

What ties the From address to the user who signed in is Exchange's own rule: a user may send
only as a mailbox they hold, or hold Send As permission for (Send on Behalf shows in Sender), and an
application with the Mail.Send application permission may send as any mailbox the admin did
not scope it away from. So this proves "sent by someone Exchange lets send as this address",
which is why it is off unless the admin turns it on (README).

Like an SPF pass, it vouches for the sender, not for any field: it acts only on a request the
message's own To/Cc name (``binding.py``).
"""

from __future__ import annotations

from ..authresults import EXCHANGE_ONLINE_AUTH_AS, header_fields
from ..config import MailboxConfig
from ._base import CheckContext, ExchangeOnlineTrust, OwnerProof, Verdict
from .binding import RequestAddresses
from .owner import sent_on_behalf

AUTH_AS = EXCHANGE_ONLINE_AUTH_AS
AUTO_FORWARDED = b"x-ms-exchange-organization-autoforwarded"
RECEIVED_SPF = b"received-spf"
AUTHENTICATION_RESULTS = b"authentication-results"
SENDER = b"sender"
METHOD = "exchange-online"


def exchange_online_trust(config: MailboxConfig) -> ExchangeOnlineTrust | None:
    """The trust ``[mailbox.graph]`` grants Exchange Online, or None when it grants none."""
    graph = config.graph
    if config.source != "graph" or not graph.trust_exchange_online:
        return None
    return ExchangeOnlineTrust(frozenset(graph.tenant_domains))


class ExchangeOnlineCheck:
    """Reads Exchange Online's mark; a pass carries the proof the owner rule takes."""

    name = "exchange_online"

    def __init__(self, addresses: RequestAddresses) -> None:
        self.addresses = addresses

    async def evaluate(self, context: CheckContext) -> Verdict | None:
        trust = context.exchange_online
        from_domain = context.from_domain
        if trust is None or not from_domain:
            return None
        fields = header_fields(context.raw)
        marks = [value.strip() for name, value in fields if name == AUTH_AS]
        facts = {"domain": from_domain, "authas": ", ".join(marks)}
        if len(marks) > 1:
            return Verdict(
                "fail", f"{len(marks)} X-MS-Exchange-Organization-AuthAs fields: one is not Exchange's", facts
            )
        if not marks or marks[0].lower() != "internal":
            return Verdict("none", "Exchange Online does not mark it as sent inside the organization", facts)
        # Exchange's field is not told by its place on a colleague's message (its author could
        # have written one on top): any SPF verdict in any Authentication-Results counts here,
        # which only ever refuses.
        spf_noted = any(name == AUTHENTICATION_RESULTS and "spf=" in value.lower() for name, value in fields)
        if spf_noted or any(name == RECEIVED_SPF for name, _ in fields):
            why = "marked Internal, but Exchange Online received it from outside over SMTP (it holds an SPF verdict)"
            return Verdict("fail", why, facts)
        if any(name == AUTO_FORWARDED and value.strip().lower() == "true" for name, value in fields):
            return Verdict("none", "auto-forwarded inside the organization, not submitted by its author", facts)
        on_behalf = sent_on_behalf((value for name, value in fields if name == SENDER), context.header_from)
        if on_behalf:
            why = f"sent on behalf of its From by {', '.join(on_behalf)} (Sender), not by its From"
            return Verdict("none", why, facts)
        if from_domain not in trust.tenant_domains:
            return Verdict("none", f"{from_domain} is not one of [mailbox.graph] tenant_domains", facts)
        proof = OwnerProof(METHOD, from_domain, self.addresses.tokens_bound_by(context.addressed))
        reason = "sent by a user of the tenant (X-MS-Exchange-Organization-AuthAs: Internal)"
        return Verdict("pass", reason, facts, proofs=(proof,))
