"""Who is really sending? The sender-authentication checks, stage by stage, with policy.

Each check lives in its own module under ``checks/`` and only returns a Verdict. This
module decides, per configured policy, what a verdict means for the SMTP answer:
``off`` skips the check, ``tag`` records it (Authentication-Results, diagnose, logs),
``reject`` refuses with the RFC 7372 code. DNS trouble is always a 4xx.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import smtp_replies as R
from .authresults import format_authentication_results, trusted_authentication_results
from .checks import Verdict
from .checks.binding import RequestAddresses
from .checks.dkim import DkimSignature, check_dkim
from .checks.dmarc import check_dmarc, organizational_domain
from .checks.rdns import check_rdns
from .checks.spf import check_spf
from .checks.whitelist import check_whitelist
from .config import Settings
from .dns import DnsResolver
from .ratelimit import RateLimiter
from .smtp_replies import SmtpReply


@dataclass(frozen=True)
class Client:
    """The sending host as the checks must see it: the original client, even behind a relay."""

    ip: str | None
    helo: str | None
    peer_ip: str | None = None  # who is actually connected (a trusted relay, or the client itself)
    relayed: bool = False  # a relay spoke for the client (XCLIENT, XFORWARD or PROXY)


@dataclass(frozen=True)
class OwnerProof:
    """One thing that shows the From domain sent this message, and what it ties it to.

    ``tokens`` is None for an aligned SPF pass (the owner's own server handed over this
    very transaction: it is bound by itself); for a DKIM signature it is the reply tokens
    its signed fields name (``checks/binding.py``).
    """

    method: str  # spf | dkim
    domain: str
    tokens: frozenset[str] | None


@dataclass
class AuthState:
    """Verdicts gathered for one message, MAIL stage first, then DATA."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    dkim_signatures: list[DkimSignature] = field(default_factory=list)
    proofs: list[OwnerProof] = field(default_factory=list)
    refusal: SmtpReply | None = None
    exempt: bool = False
    # MAIL FROM's domain, once SPF passed for it: only then may counters be keyed on it.
    authenticated_domain: str | None = None

    def binds(self, token: str) -> OwnerProof | None:
        """The proof that authenticates an action on reply token ``token``, if any."""
        for proof in self.proofs:
            if proof.tokens is None or token.lower() in proof.tokens:
                return proof
        return None

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
        if dmarc := self.verdicts.get("dmarc"):
            methods.append(("dmarc", dmarc.result, {"header.from": dmarc.facts.get("domain", "")}))
        if rdns := self.verdicts.get("rdns"):
            methods.append(("iprev", rdns.result, {"policy.iprev": rdns.facts.get("ip", "")}))
        return format_authentication_results(authserv_id, methods)


def _domain_of(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].lower().rstrip(".") or None


def _network_of(ip: str) -> str | None:
    """The client's network for shared limits: its /24 (IPv4) or /64 (IPv6)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _in(ip: str | None, networks: Sequence[str]) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


class SenderAuth:
    def __init__(self, settings: Settings, resolver: DnsResolver, limiter: RateLimiter | None = None) -> None:
        self.settings = settings
        self.checks = settings.checks
        self.resolver = resolver
        self.limiter = limiter or RateLimiter(settings.checks.rate_limits.window)
        self.addresses = RequestAddresses(settings.inbound.local_part, settings.inbound.reply_domain)

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
        domain = _domain_of(mail_from)
        limits = self.checks.rate_limits
        if not ip:
            # PROXY UNKNOWN / LOCAL, or a relay that could not say: an unknown client is never
            # the relay itself (which may be exempt). Nothing about it can pass; only what the
            # message itself proves (a DKIM signature bound to the request) can authenticate.
            state.verdicts["client"] = Verdict("none", "the original client's address is unknown")
        if ip and await self.limiter.over("auth_failures", ip, limits.auth_failures_per_ip):
            state.refusal = R.RATE_LIMIT_AUTH_FAILURES.with_text(who=ip)
            return state
        network = _network_of(ip)
        if network and await self.limiter.over("auth_failures_network", network, limits.auth_failures_per_network):
            state.refusal = R.RATE_LIMIT_AUTH_FAILURES.with_text(who=network)
            return state
        if ip and await self.limiter.hit("messages", ip, limits.messages_per_ip):
            state.refusal = R.RATE_LIMIT_MESSAGES.with_text(who=ip)
            return state

        if self.checks.rdns.policy != "off" and ip:
            rdns = await check_rdns(self.resolver, ip)
            state.verdicts["rdns"] = Verdict(rdns.result, rdns.reason, {**rdns.facts, "ip": ip})
            if rdns.temporary:
                state.refusal = R.RDNS_TEMPERROR.with_text(ip=ip, why=rdns.reason)
            elif rdns.result != "pass" and self.checks.rdns.policy == "reject":
                state.refusal = R.RDNS_FAIL.with_text(ip=ip, why=rdns.reason)
            if state.refusal:
                return self._failed(state, ip)

        if self.checks.spf.policy != "off" and ip:
            spf = await check_spf(self.resolver, ip, mail_from, client.helo or "")
            state.verdicts["spf"] = spf
            state.refusal = self._spf_refusal(spf, ip)
            if state.refusal:
                return self._failed(state, ip)
            if spf.result == "pass" and domain and spf.facts.get("domain", domain) == domain:
                state.authenticated_domain = domain

        # Keyed on the sender domain only once it authenticated: else fifty forged MAIL
        # FROMs would lock a whole domain out.
        if state.authenticated_domain:
            authenticated = state.authenticated_domain
            if await self.limiter.over("auth_failures_domain", authenticated, limits.auth_failures_per_domain):
                state.refusal = R.RATE_LIMIT_AUTH_FAILURES.with_text(who=authenticated)
                return state
            if await self.limiter.hit("messages_domain", authenticated, limits.messages_per_domain):
                state.refusal = R.RATE_LIMIT_MESSAGES.with_text(who=authenticated)
                return state

        if self.checks.whitelist.enabled and mail_from:
            listed = check_whitelist(self.checks.whitelist.domains, envelope_from=mail_from)
            state.verdicts["whitelist"] = listed
            if listed.result == "fail":
                state.refusal = R.WHITELIST.with_text(why=listed.reason)
                return self._failed(state, ip)
        return state

    def _spf_refusal(self, spf: Verdict, ip: str) -> SmtpReply | None:
        domain = spf.facts.get("domain", "?")
        if spf.result == "temperror":
            return R.SPF_TEMPERROR.with_text(domain=domain, why=spf.reason)
        if self.checks.spf.policy != "reject":
            return None
        if spf.result == "fail":
            return R.SPF_FAIL.with_text(domain=domain, ip=ip, why=spf.reason)
        if spf.result == "softfail" and self.checks.spf.reject_softfail:
            return R.SPF_SOFTFAIL.with_text(domain=domain, ip=ip)
        if spf.result == "permerror":
            return R.SPF_PERMERROR.with_text(domain=domain, why=spf.reason)
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
        self, client: Client, mail_from: str | None, raw: bytes, header_from: str | None, state: AuthState
    ) -> AuthState:
        """DKIM, DMARC, the header-From whitelist, and whether the From is authenticated."""
        if state.exempt or state.refusal:
            return state
        from_domain = _domain_of(header_from)
        stamped_dmarc: Verdict | None = None
        if self.relays_verdicts(client):
            # A front MTA's own verdicts about the transaction it received. DKIM we still
            # verify ourselves: only our own verification shows which fields were signed.
            stamped = self._stamped_verdicts(raw, self.checks.trusted_authserv_ids, from_domain)
            if "spf" in stamped:
                state.verdicts["spf"] = stamped["spf"]
            stamped_dmarc = stamped.get("dmarc")
        await self._dkim_and_dmarc(raw, mail_from, from_domain, state, stamped_dmarc=stamped_dmarc)
        if state.refusal:
            return state

        if self.checks.whitelist.enabled and header_from:
            listed = check_whitelist(self.checks.whitelist.domains, header_from=header_from)
            state.verdicts["whitelist_from"] = listed
            if listed.result == "fail":
                state.refusal = R.WHITELIST.with_text(why=listed.reason)
        state.verdicts["owner_auth"] = self._from_authenticated(from_domain, state)
        return state

    async def at_mailbox(
        self, raw: bytes, mail_from: str | None, header_from: str | None, trusted_ids: Sequence[str]
    ) -> AuthState:
        """Mailbox mode has no SMTP facts: DKIM is verified here; SPF and DMARC are taken from
        the Authentication-Results of the receiving server we trust (by authserv-id) only."""
        state = AuthState()
        from_domain = _domain_of(header_from)
        stamped = self._stamped_verdicts(raw, trusted_ids, from_domain)
        if "spf" in stamped:
            state.verdicts["spf"] = stamped["spf"]
        if self.checks.whitelist.enabled:
            listed = check_whitelist(self.checks.whitelist.domains, envelope_from=mail_from, header_from=header_from)
            state.verdicts["whitelist"] = listed
            if listed.result == "fail":
                state.refusal = R.WHITELIST.with_text(why=listed.reason)
                return state
        await self._dkim_and_dmarc(raw, mail_from, from_domain, state, stamped_dmarc=stamped.get("dmarc"))
        state.verdicts["owner_auth"] = self._from_authenticated(from_domain, state)
        return state

    async def _dkim_and_dmarc(
        self,
        raw: bytes,
        mail_from: str | None,
        from_domain: str | None,
        state: AuthState,
        stamped_dmarc: Verdict | None = None,
    ) -> None:
        dkim_policy, dmarc_policy = self.checks.dkim.policy, self.checks.dmarc.policy
        if dkim_policy != "off" or dmarc_policy != "off" or self.checks.owner_auth.required:
            dkim, signatures = await check_dkim(self.resolver, raw, self.checks.dkim.min_key_bits)
            state.verdicts["dkim"], state.dkim_signatures = dkim, signatures
            if dkim.temporary and dkim_policy == "reject":
                state.refusal = R.AUTH_TEMPERROR
                return
            if dkim.result == "fail" and dkim_policy == "reject":
                state.refusal = R.DKIM_FAIL.with_text(why=dkim.reason)
                return
        if stamped_dmarc is not None:
            state.verdicts["dmarc"] = stamped_dmarc
        elif from_domain and (dmarc_policy != "off" or self.checks.owner_auth.required):
            spf = state.verdicts.get("spf")
            spf_domain = spf.facts.get("domain") if spf else _domain_of(mail_from)
            computed = await check_dmarc(
                self.resolver, from_domain, spf.result if spf else "none", spf_domain, state.dkim_signatures
            )
            org = organizational_domain(from_domain)
            if computed.result == "fail" and any(
                sig.result == "temperror" and organizational_domain(sig.domain) == org for sig in state.dkim_signatures
            ):
                # An aligned signature we could not check might have passed: not a failure yet.
                computed = Verdict(
                    "temperror", "the key of an aligned DKIM signature could not be fetched", computed.facts
                )
            state.verdicts["dmarc"] = computed
        if (dmarc := state.verdicts.get("dmarc")) is not None and from_domain:
            if dmarc.temporary:
                state.refusal = R.AUTH_TEMPERROR
            elif dmarc.result == "fail" and dmarc_policy == "reject" and stamped_dmarc is None:
                policy = dmarc.facts.get("policy", "none")
                if policy == "reject" or (policy == "quarantine" and self.checks.dmarc.quarantine == "reject"):
                    state.refusal = R.DMARC_REJECT.with_text(domain=from_domain, why=f"p={policy}")

    def _from_authenticated(self, from_domain: str | None, state: AuthState) -> Verdict:
        """The owner rule, "who": an SPF pass or a DKIM pass aligned with the From domain.

        Each such pass is kept as a proof with what it binds to (``OwnerProof``); the
        pipeline then asks whether one of them covers the request acted on ("for what").
        A DMARC pass is itself made of these, and a DMARC or DKIM pass stamped by another
        server shows neither which fields were signed nor for whom: it is no proof here.
        """
        if not from_domain:
            return Verdict("fail", "no usable From address")
        org = organizational_domain(from_domain)
        spf = state.verdicts.get("spf")
        if spf is not None and spf.result == "pass":
            spf_domain = spf.facts.get("domain", "")
            if spf_domain and organizational_domain(spf_domain) == org:
                state.proofs.append(OwnerProof("spf", spf_domain, None))
        for signature in state.dkim_signatures:
            if signature.result == "pass" and organizational_domain(signature.domain) == org:
                tokens = self.addresses.tokens_bound_by(signature.binding_fields)
                state.proofs.append(OwnerProof("dkim", signature.domain, tokens))
        if state.proofs:
            via = ", ".join(f"aligned {p.method.upper()} pass ({p.domain})" for p in state.proofs)
            return Verdict("pass", via, {"domain": from_domain})
        if any(v.temporary for v in state.verdicts.values()):
            return Verdict("temperror", "DNS trouble while authenticating", {"domain": from_domain})
        return Verdict("fail", f"no aligned SPF or DKIM pass for {from_domain}", {"domain": from_domain})

    def _stamped_verdicts(self, raw: bytes, trusted_ids: Sequence[str], from_domain: str | None) -> dict[str, Verdict]:
        """SPF/DKIM/DMARC verdicts stamped by a receiving server we trust (by authserv-id).

        A DMARC verdict counts only for the From's own domain (``header.from``)."""
        if not trusted_ids:
            return {}
        verdicts: dict[str, Verdict] = {}
        results = trusted_authentication_results(raw, trusted_ids)
        for result in results:
            if result.method not in ("spf", "dkim", "dmarc") or result.method in verdicts:
                continue
            facts = dict(result.properties)
            if result.method == "spf":
                mailfrom = facts.get("smtp.mailfrom", "")
                facts["domain"] = _domain_of(mailfrom) or mailfrom
            if result.method == "dkim":
                facts["domains"] = facts.get("header.d", "")
            if result.method == "dmarc":
                facts["domain"] = facts.get("header.from", "").lower().rstrip(".")
                if not from_domain or facts["domain"] != from_domain:
                    continue
            verdicts[result.method] = Verdict(result.result, "from trusted Authentication-Results", facts)  # type: ignore[arg-type]
        return verdicts

    def authentication_results(self, state: AuthState) -> str:
        return state.header(self.settings.authserv_id)
