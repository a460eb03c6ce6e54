"""SPF (RFC 7208) through pyspf, with every DNS lookup going through our caching resolver.

pyspf looks DNS up through its module global ``spf.DNSLookup``, shared by every thread.
We point it, once and for all, at ``_lookup``, which uses the resolver of the check running
in the current thread (a context variable set in the worker thread), so concurrent checks
with different resolvers never cross, and pyspf never falls back to the system's DNS.

A verdict is kept (``DnsResolver.keep_derived``) for one client address, envelope sender
and HELO name until the first DNS record it read expires: the next MAIL FROM of that
client for that sender is answered without a thread or a lookup. DNS trouble is never kept.

pyspf blocks a thread for each lookup, and a record may ask for 111 of them (10 ``mx``
mechanisms of 10 hosts each): against a DNS server that answers late but in time, one check
ran 55 s. So checks run in ``SpfPool``, a few threads of their own (never the default
executor, where the store's calls of every reply wait), each check under one time limit
counted from its submission (RFC 7208 4.6.4: past it, ``temperror`` → ``451 4.7.24``), and a
check whose SMTP session ended is dropped from the queue, or stops at its next lookup.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import spf

from rc_mta.dns import DnsResolver, DnsTemporaryError

from ._base import CheckContext, Result, Verdict, client_address_text

_current_resolver: contextvars.ContextVar[DnsResolver | None] = contextvars.ContextVar(
    "rc_mta_spf_resolver", default=None
)


@dataclass(frozen=True)
class _Limit:
    """When one check must end (a ``time.monotonic`` deadline), or ``stop`` once nobody waits."""

    deadline: float
    seconds: float
    stop: threading.Event = field(default_factory=threading.Event)

    def remaining(self) -> float:
        """Seconds left for the next lookup; raises pyspf's TempError when there are none."""
        if self.stop.is_set():
            raise spf.TempError("the SMTP session ended before the SPF check")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise spf.TempError(f"the SPF check took longer than {self.seconds:g}s (its DNS answers are slow)")
        return left


_current_limit: contextvars.ContextVar[_Limit | None] = contextvars.ContextVar("rc_mta_spf_limit", default=None)

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
    limit = _current_limit.get()
    if limit is None:
        return resolver.pyspf_lookup(name, qtype, strict)
    try:
        return resolver.pyspf_lookup(name, qtype, strict, limit.remaining())
    except spf.TempError:
        limit.remaining()  # the time limit, rather than the lookup cut short by it, says why
        raise


def _install() -> None:
    """(Re)claim pyspf's DNS hook; cheap, and survives anyone else assigning it."""
    spf.DNSLookup = _lookup


_install()


def _run(resolver: DnsResolver, ip: str, sender: str, helo: str, limit: _Limit) -> tuple[str, str, str, list[float]]:
    """In a worker thread: bind this check's resolver and limit, run pyspf, return (result,
    explanation, domain, and when the records it read expire)."""
    _install()
    _current_resolver.set(resolver)
    _current_limit.set(limit)
    with resolver.reading() as reads:
        query: Any = spf.query(i=ip, s=sender, h=helo, timeout=resolver.timeout * 4)
        result, _code, explanation = query.check()
    return str(result), str(explanation), str(query.o), reads


@dataclass
class SpfPool:
    """The threads pyspf runs in ([checks.spf] ``workers``), apart from the default executor.

    At most ``queue`` checks wait for a worker; one more is ``temperror`` at once (the sender
    retries), so a flood of slow checks waits among itself and never for long.
    """

    workers: int = 4
    queue: int = 32
    time_limit: float = 20.0
    _executor: ThreadPoolExecutor | None = field(default=None, repr=False)
    _in_flight: int = 0

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="rc-mta-spf")
        return self._executor

    async def run(self, resolver: DnsResolver, ip: str, sender: str, helo: str) -> tuple[str, str, str, list[float]]:
        """``_run`` in a worker: a cancelled caller (the client hung up) takes its check
        off the queue, or stops it at its next lookup."""
        if self._in_flight >= self.workers + self.queue:
            raise DnsTemporaryError(f"{self._in_flight} SPF checks are in progress; try again later")
        limit = _Limit(time.monotonic() + self.time_limit, self.time_limit)
        # run_in_executor runs _run in this thread's context, not a copy: the copy keeps the
        # resolver and limit _run sets to this one check.
        work = partial(contextvars.copy_context().run, _run, resolver, ip, sender, helo, limit)
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except asyncio.CancelledError:
            limit.stop.set()
            raise
        finally:
            self._in_flight -= 1


_default_pool = SpfPool()


async def check_spf(
    resolver: DnsResolver, client_ip: str, mail_from: str, helo: str, pool: SpfPool | None = None
) -> Verdict:
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
        result, explanation, domain, reads = await (pool or _default_pool).run(resolver, address, mail_from, helo)
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

    def __init__(self, resolver: DnsResolver, pool: SpfPool | None = None) -> None:
        self.resolver = resolver
        self.pool = pool or SpfPool()

    async def evaluate(self, context: CheckContext) -> Verdict | None:
        if not context.client_ip:
            return None
        return await check_spf(self.resolver, context.client_ip, context.mail_from or "", context.helo, self.pool)
