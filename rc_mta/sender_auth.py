"""Who is really sending? Which check runs at which stage, in what order, between the limits.

Each check (``checks/*``) is one object that turns a ``CheckContext`` into a Verdict; the
policy table (``checks/policy.py``) says what a verdict answers: refuse, defer or only
note it. This module runs them: at MAIL the rate limits, FCrDNS, SPF and the envelope
whitelist; at DATA DKIM, ARC, DMARC, the From whitelist and the owner rule; for a mailbox, the
trusted receiver's stamps instead of the connection's facts. The first answer stops a stage.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from . import smtp_replies as R
from .authresults import format_authentication_results
from .checks import Check, CheckContext, DkimSignature, OwnerProof, Verdict
from .checks._base import ExchangeOnlineTrust, domain_of
from .checks.arc import ArcCheck
from .checks.binding import RequestAddresses
from .checks.dkim import DkimCheck
from .checks.dmarc import DmarcCheck
from .checks.exchange_online import ExchangeOnlineCheck
from .checks.owner import OwnerCheck
from .checks.policy import PolicyTable
from .checks.rdns import RdnsCheck
from .checks.spf import SpfCheck, SpfPool
from .checks.stamped import exchange_online_verdicts, trusted_verdicts
from .checks.whitelist import WhitelistCheck
from .config import Settings
from .dns import DnsResolver
from .ratelimit import RateLimiter
from .smtp_replies import SmtpReply

__all__ = ["AuthState", "Client", "OwnerProof", "SenderAuth"]


@dataclass(frozen=True)
class Client:
    """The sending host as the checks must see it: the original client, even behind a relay."""

    ip: str | None
    helo: str | None
    peer_ip: str | None = None  # who is actually connected (a trusted relay, or the client itself)
    relayed: bool = False  # a relay spoke for the client (XCLIENT, XFORWARD or PROXY)


@dataclass
class AuthState:
    """Verdicts gathered for one message, MAIL stage first, then DATA."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    refusal: SmtpReply | None = None
    exempt: bool = False
    # MAIL FROM's domain, once SPF passed for it: only then may counters be keyed on it.
    authenticated_domain: str | None = None

    @property
    def dkim_signatures(self) -> tuple[DkimSignature, ...]:
        dkim = self.verdicts.get("dkim")
        return dkim.signatures if dkim else ()

    @property
    def proofs(self) -> tuple[OwnerProof, ...]:
        owner = self.verdicts.get("owner_auth")
        return owner.proofs if owner else ()

    def binds(self, token: str) -> OwnerProof | None:
        """The proof that authenticates an action on reply token ``token``, if any: of several,
        one that leaves the least of how the body is read open (``OwnerProof.open_fields``)."""
        binding = [proof for proof in self.proofs if token.lower() in proof.tokens]
        return min(binding, key=lambda proof: len(proof.open_fields), default=None)

    def header(self, authserv_id: str) -> str:
        """The RFC 8601 Authentication-Results value for these verdicts."""
        methods: list[tuple[str, str, dict[str, str]]] = []
        if spf := self.verdicts.get("spf"):
            methods.append(("spf", spf.result, {"smtp.mailfrom": spf.facts.get("smtp.mailfrom", "")}))
        if self.dkim_signatures:
            methods += [
                ("dkim", s.result, {"header.d": s.domain, "header.s": s.selector}) for s in self.dkim_signatures
            ]
        elif dkim := self.verdicts.get("dkim"):
            methods.append(
                ("dkim", dkim.result, {"header.d": dkim.facts["domains"]} if dkim.facts.get("domains") else {})
            )
        if (arc := self.verdicts.get("arc")) and arc.result != "neutral":  # neutral: not evaluated
            methods.append(("arc", arc.result, _arc_comment(arc)))
        if dmarc := self.verdicts.get("dmarc"):
            via = {"reason": f"via ARC from {dmarc.facts['via_arc']}"} if "via_arc" in dmarc.facts else {}
            if "via_exchange_online" in dmarc.facts:
                via = {"reason": "via Exchange Online: sent by a user of the tenant"}
            methods.append(("dmarc", dmarc.result, {**via, "header.from": dmarc.facts.get("domain", "")}))
        if rdns := self.verdicts.get("rdns"):
            methods.append(("iprev", rdns.result, {"policy.iprev": rdns.facts.get("ip", "")}))
        return format_authentication_results(authserv_id, methods)


def _arc_comment(arc: Verdict) -> dict[str, str]:
    """RFC 8617 style: which seal the chain ends with (``as.2.d=… as.2.s=…``)."""
    facts = arc.facts
    if "sealer" not in facts or "instance" not in facts:
        return {}
    instance = facts["instance"]
    seal = f"as.{instance}.d={facts['sealer']}"
    return {"comment": f"{seal} as.{instance}.s={facts['selector']}" if facts.get("selector") else seal}


@lru_cache(maxsize=4096)
def _network_of(ip: str) -> str | None:
    """The client's network for shared limits: its /24 (IPv4) or /64 (IPv6). Asked at every
    MAIL and every refusal, by the same few clients: the answers are kept."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@lru_cache(maxsize=64)
def _networks(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Configured networks, read once (asked at every connection and MAIL)."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


@lru_cache(maxsize=4096)
def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``ip`` spells, None for text that is none; the same few clients ask."""
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def _in(ip: str | None, networks: Sequence[str]) -> bool:
    address = _address(ip) if ip else None
    if address is None or not networks:
        return False
    return any(address in network for network in _networks(tuple(networks)))


class SenderAuth:
    def __init__(self, settings: Settings, resolver: DnsResolver, limiter: RateLimiter | None = None) -> None:
        self.settings = settings
        self.checks = settings.checks
        self.resolver = resolver
        self.limiter = limiter or RateLimiter(settings.checks.rate_limits.window)
        self.addresses = RequestAddresses(settings.inbound.local_part, settings.inbound.reply_domain)
        self.policy = PolicyTable(settings.checks)
        listed = settings.checks.whitelist.domains
        dkim, dmarc = DkimCheck(resolver, settings.checks.dkim.min_key_bits), DmarcCheck(resolver)
        arc = ArcCheck(resolver, settings.checks.arc.trusted_sealers, self.addresses, settings.checks.dkim.min_key_bits)
        # The stages, in order. Between MAIL's two groups come the per-domain limits.
        spf = settings.checks.spf
        spf_pool = SpfPool(spf.workers, spf.queue, spf.time_limit)
        self.mail_checks: tuple[Check, ...] = (RdnsCheck(resolver), SpfCheck(resolver, spf_pool))
        self.mail_checks_after_limits: tuple[Check, ...] = (WhitelistCheck("whitelist", listed, ("envelope_from",)),)
        from_listed = WhitelistCheck("whitelist_from", listed, ("header_from",))
        self.data_checks: tuple[Check, ...] = (dkim, arc, dmarc, from_listed)
        both = WhitelistCheck("whitelist", listed, ("envelope_from", "header_from"))
        # Exchange Online's word on a mailbox it hosts, before DMARC, which may rest on it.
        exchange_online = ExchangeOnlineCheck(self.addresses)
        self.mailbox_checks: tuple[Check, ...] = (both, dkim, arc, exchange_online, dmarc)
        self.owner = OwnerCheck(resolver, self.addresses)

    def is_trusted_relay(self, ip: str | None) -> bool:
        return _in(ip, self.settings.inbound.trusted_relays)

    def relays_verdicts(self, client: Client) -> bool:
        """True for a trusted front MTA that connected without XCLIENT/XFORWARD/PROXY facts:
        only then are its Authentication-Results its own verdict about this transaction."""
        return (
            bool(self.checks.trusted_authserv_ids)
            and not client.relayed
            and client.ip == client.peer_ip
            and self.is_trusted_relay(client.ip)
        )

    def is_exempt(self, client: Client) -> bool:
        return _in(client.ip, self.checks.exempt_networks)

    async def _run(self, checks: Sequence[Check], context: CheckContext, state: AuthState) -> bool:
        """Run ``checks`` in order, recording each verdict (a trusted stamp stands in for a
        check's own); True when one earned a refusal or deferral, which ends the stage."""
        for check in checks:
            verdict = context.stamped.get(check.name)
            if verdict is None and self.policy.runs(check.name):
                verdict = await check.evaluate(context)
            if verdict is None:
                continue
            state.verdicts[check.name] = verdict
            if (answer := self.policy.answer(check.name, verdict, context)) is not None:
                state.refusal = answer
                return True
        return False

    # Connect ----------------------------------------------------------------------------

    def at_connect(self, peer_ip: str | None) -> SmtpReply | None:
        if not peer_ip or self.is_trusted_relay(peer_ip):
            return None
        if self.limiter.hit_now("connections", peer_ip, self.checks.rate_limits.connections_per_ip):
            return R.RATE_LIMIT_CONNECTIONS.with_text(ip=peer_ip)
        return None

    # MAIL -------------------------------------------------------------------------------

    async def at_mail(self, client: Client, mail_from: str) -> AuthState:
        """Rate limits, FCrDNS, SPF and the envelope-sender whitelist, while MAIL is pending."""
        state = AuthState(exempt=self.is_exempt(client))
        if state.exempt:
            state.verdicts["exempt"] = Verdict("pass", f"{client.ip} is in exempt_networks")
            return state
        if self.relays_verdicts(client):
            # A front MTA that did not tell us the original client: its own
            # Authentication-Results (trusted_authserv_ids) speak for SPF at DATA.
            state.verdicts["relay"] = Verdict("pass", f"{client.ip} is a trusted relay stamping its verdicts")
            return state
        ip = client.ip or ""
        if not ip:
            # PROXY UNKNOWN / LOCAL, or a relay that could not say: an unknown client is never
            # the relay itself (which may be exempt). Nothing about it can pass; only what the
            # message itself proves (a DKIM signature bound to the request) can authenticate.
            state.verdicts["client"] = Verdict("none", "the original client's address is unknown")
        if refusal := await self._client_limits(ip):
            state.refusal = refusal
            return state
        context = CheckContext(client_ip=ip, helo=client.helo or "", mail_from=mail_from)
        if await self._run(self.mail_checks, context, state):
            return self._failed(state, ip)
        domain = domain_of(mail_from)
        spf = state.verdicts.get("spf")
        if spf is not None and spf.result == "pass" and domain and spf.facts.get("domain", domain) == domain:
            state.authenticated_domain = domain
            if refusal := await self._domain_limits(domain):
                state.refusal = refusal
                return state
        if await self._run(self.mail_checks_after_limits, context, state):
            return self._failed(state, ip)
        return state

    async def _client_limits(self, ip: str) -> SmtpReply | None:
        limits = self.checks.rate_limits
        if ip and await self.limiter.over("auth_failures", ip, limits.auth_failures_per_ip):
            return R.RATE_LIMIT_AUTH_FAILURES.with_text(who=ip)
        network = _network_of(ip)
        if network and await self.limiter.over("auth_failures_network", network, limits.auth_failures_per_network):
            return R.RATE_LIMIT_AUTH_FAILURES.with_text(who=network)
        if ip and await self.limiter.hit("messages", ip, limits.messages_per_ip):
            return R.RATE_LIMIT_MESSAGES.with_text(who=ip)
        return None

    async def _domain_limits(self, domain: str) -> SmtpReply | None:
        """Keyed on the sender domain only once it authenticated: else fifty forged MAIL
        FROMs would lock a whole domain out."""
        limits = self.checks.rate_limits
        if await self.limiter.over("auth_failures_domain", domain, limits.auth_failures_per_domain):
            return R.RATE_LIMIT_AUTH_FAILURES.with_text(who=domain)
        if await self.limiter.hit("messages_domain", domain, limits.messages_per_domain):
            return R.RATE_LIMIT_MESSAGES.with_text(who=domain)
        return None

    def _failed(self, state: AuthState, ip: str) -> AuthState:
        """Count a failed authentication (not DNS trouble) towards the per-IP/network limits."""
        if state.refusal is not None and not state.refusal.temporary:
            self.count_failure(ip, state)
        return state

    def count_failure(self, ip: str | None, state: AuthState | None) -> None:
        """One refused authentication or forged reply address: per client IP and network,
        and per sender domain only when that domain authenticated this transaction."""
        if ip:
            self.limiter.record("auth_failures", ip)
            if network := _network_of(ip):
                self.limiter.record("auth_failures_network", network)
        if state is not None and state.authenticated_domain:
            self.limiter.record("auth_failures_domain", state.authenticated_domain)

    # DATA -------------------------------------------------------------------------------

    async def at_data(
        self,
        client: Client,
        mail_from: str | None,
        raw: bytes,
        header_from: str | None,
        state: AuthState,
        light: bool = False,
        addressed: tuple[tuple[str, str], ...] = (),
    ) -> AuthState:
        """DKIM, DMARC, the header-From whitelist, and whether the From is authenticated.
        ``addressed``: the message's own To/Cc/In-Reply-To/References (``CheckContext``)."""
        if state.exempt or state.refusal:
            return state
        # A front MTA's own verdicts about the transaction it received (SPF, DMARC). DKIM we
        # still verify ourselves: only our own verification shows which fields were signed.
        trusted = self.checks.trusted_authserv_ids if self.relays_verdicts(client) else ()
        stamped = self._stamped(raw, trusted, header_from)
        context = CheckContext(
            client.ip or "", client.helo or "", mail_from, raw, header_from, state.verdicts, stamped, light, addressed
        )
        return await self._data_stage(self.data_checks, context, state)

    async def at_mailbox(
        self,
        raw: bytes,
        mail_from: str | None,
        header_from: str | None,
        trusted_ids: Sequence[str],
        light: bool = False,
        addressed: tuple[tuple[str, str], ...] = (),
        exchange_online: ExchangeOnlineTrust | None = None,
    ) -> AuthState:
        """Mailbox mode has no SMTP facts: DKIM is verified here; SPF and DMARC are taken from
        the Authentication-Results of the receiving server we trust (by authserv-id) only, or,
        where the admin trusts it (``exchange_online``), from Exchange Online's own, told by
        its place; a receiver named by id speaks first."""
        state = AuthState()
        stamped = self._stamped(raw, trusted_ids, header_from)
        if exchange_online is not None:
            stamped = exchange_online_verdicts(raw, domain_of(header_from)) | stamped
        context = CheckContext(
            "",
            "",
            mail_from,
            raw,
            header_from,
            state.verdicts,
            stamped,
            light,
            addressed,
            exchange_online=exchange_online,
        )
        return await self._data_stage(self.mailbox_checks, context, state)

    async def _data_stage(self, checks: Sequence[Check], context: CheckContext, state: AuthState) -> AuthState:
        if "spf" in context.stamped:
            state.verdicts["spf"] = context.stamped["spf"]
        await self._run(checks, context, state)
        # The owner rule is judged by the pipeline, per request; its verdict is kept here.
        state.verdicts[self.owner.name] = await self.owner.evaluate(context)
        return state

    def _stamped(self, raw: bytes, trusted_ids: Sequence[str], header_from: str | None) -> dict[str, Verdict]:
        return trusted_verdicts(raw, trusted_ids, domain_of(header_from)) if trusted_ids else {}

    def authentication_results(self, state: AuthState) -> str:
        return state.header(self.settings.authserv_id)
