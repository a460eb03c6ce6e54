"""One caching DNS resolver for every check.

Async callers (rDNS, DMARC) use ``resolve``; the synchronous libraries (pyspf, dkimpy)
get ``resolve_sync`` and the adapters below, backed by the same TTL-respecting cache,
and are run off the event loop. Trouble (timeout, SERVFAIL, no server answering) is a
``DnsTemporaryError``: it must become a 4xx, never a 5xx. A name that does not exist, or
has no record of the type, is an empty answer.

A verdict computed from DNS answers alone (SPF for one client, sender and HELO name) may
be kept beside them (``derived``/``keep_derived``) for as long as the first of the records
it read stays cached (``reading``): asking again would read the same records and come to
the same verdict, so the cached one is what a new evaluation would say.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
import dns.reversename

NEGATIVE_TTL = 60.0
MAX_TTL = 86400.0
# A derived verdict is kept at most this long, whatever the TTLs of the records it read.
MAX_DERIVED_SECONDS = 300.0

# The expiry times of the cache entries read in this context, while ``reading`` records them.
_reads: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("rc_mta_dns_reads", default=None)


class DnsTemporaryError(Exception):
    """DNS could not give an answer now (timeout, SERVFAIL); retry later."""


@dataclass(frozen=True)
class _Cached:
    expires: float
    records: tuple[str, ...]


@dataclass
class DnsStats:
    queries: int = 0
    cache_hits: int = 0
    failures: int = 0


def _to_text(rdata: dns.rdata.Rdata) -> str:
    """A record's value as the checks want it (TXT strings joined, names without the dot)."""
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
    if rdata.rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME):
        return str(rdata.target.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
    if rdata.rdtype == dns.rdatatype.MX:
        return f"{rdata.preference} {rdata.exchange.to_text(omit_final_dot=True)}"  # type: ignore[attr-defined]
    return str(rdata.to_text())


class DnsResolver:
    def __init__(
        self,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 5.0,
        max_entries: int = 10_000,
        observe: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        configure = not nameservers
        self._async = dns.asyncresolver.Resolver(configure=configure)
        self._sync = dns.resolver.Resolver(configure=configure)
        for resolver in (self._async, self._sync):
            if nameservers:
                resolver.nameservers = list(nameservers)
            resolver.port = port
            resolver.timeout = timeout
            resolver.lifetime = timeout
        self.timeout = timeout
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._derived: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._observe = observe
        self.stats = DnsStats()

    # The one entry point for async checks.
    async def resolve(self, name: str, rdtype: str) -> list[str]:
        key = (name.lower().rstrip("."), rdtype.upper())
        cached = self._get(key)
        if cached is not None:
            return cached
        started = time.monotonic()
        try:
            answer = await self._async.resolve(key[0] + ".", key[1], raise_on_no_answer=False, search=False)
        except Exception as exc:
            return self._settle(key, exc, started)
        return self._store(key, answer, started)

    def resolve_sync(self, name: str, rdtype: str, lifetime: float | None = None) -> list[str]:
        """``resolve`` for a worker thread; ``lifetime`` shortens the wait (a check's time left)."""
        key = (name.lower().rstrip("."), rdtype.upper())
        cached = self._get(key)
        if cached is not None:
            return cached
        started = time.monotonic()
        wait = self.timeout if lifetime is None else min(self.timeout, lifetime)
        try:
            answer = self._sync.resolve(key[0] + ".", key[1], raise_on_no_answer=False, search=False, lifetime=wait)
        except Exception as exc:
            return self._settle(key, exc, started)
        return self._store(key, answer, started)

    async def reverse(self, ip: str) -> list[str]:
        return await self.resolve(dns.reversename.from_address(ip).to_text(omit_final_dot=True), "PTR")

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._derived.clear()

    # Verdicts derived from the cached records ---------------------------------------------

    @staticmethod
    @contextmanager
    def reading() -> Iterator[list[float]]:
        """Collect the expiry of every record read in this context (this thread, or the
        copy of the context a worker thread runs in) until the block ends."""
        reads: list[float] = []
        token = _reads.set(reads)
        try:
            yield reads
        finally:
            _reads.reset(token)

    def derived(self, key: Hashable) -> Any | None:
        """A verdict kept by ``keep_derived`` whose records are all still fresh, or None."""
        with self._lock:
            entry = self._derived.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._derived[key]
                return None
            self._derived.move_to_end(key)
            return entry[1]

    def keep_derived(self, key: Hashable, value: Any, reads: list[float]) -> None:
        """Keep ``value`` until the first of the records it was computed from (``reads``,
        from ``reading``) expires; never longer than ``MAX_DERIVED_SECONDS``."""
        expires = min([*reads, time.monotonic() + MAX_DERIVED_SECONDS])
        with self._lock:
            self._derived[key] = (expires, value)
            self._derived.move_to_end(key)
            while len(self._derived) > self._max_entries:
                self._derived.popitem(last=False)

    # Cache ------------------------------------------------------------------------------

    def _get(self, key: tuple[str, str]) -> list[str] | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if entry.expires <= time.monotonic():
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
        if (reads := _reads.get()) is not None:
            reads.append(entry.expires)
        self.stats.cache_hits += 1
        if self._observe:
            self._observe(key[1], 0.0, True)
        return list(entry.records)

    def _put(self, key: tuple[str, str], records: tuple[str, ...], ttl: float) -> None:
        expires = time.monotonic() + min(ttl, MAX_TTL)
        if (reads := _reads.get()) is not None:
            reads.append(expires)
        with self._lock:
            self._cache[key] = _Cached(expires, records)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)

    def _store(self, key: tuple[str, str], answer: dns.resolver.Answer, started: float) -> list[str]:
        self._count(key, started)
        if answer.rrset is None:
            self._put(key, (), _negative_ttl(answer.response))
            return []
        records = tuple(_to_text(r) for r in answer.rrset)
        self._put(key, records, float(answer.rrset.ttl))
        return list(records)

    def _settle(self, key: tuple[str, str], exc: Exception, started: float) -> list[str]:
        """NXDOMAIN is an (empty, cached) answer; everything else is temporary trouble."""
        self._count(key, started)
        if isinstance(exc, dns.resolver.NXDOMAIN):
            self._put(key, (), NEGATIVE_TTL)
            return []
        self.stats.failures += 1
        if isinstance(exc, dns.exception.Timeout):
            raise DnsTemporaryError(f"DNS timeout looking up {key[0]} {key[1]}") from exc
        if isinstance(exc, dns.resolver.NoNameservers):
            raise DnsTemporaryError(f"no DNS server answered for {key[0]} {key[1]} (SERVFAIL)") from exc
        if isinstance(exc, (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong)):
            return []
        raise DnsTemporaryError(f"DNS error looking up {key[0]} {key[1]}: {exc}") from exc

    def _count(self, key: tuple[str, str], started: float) -> None:
        self.stats.queries += 1
        if self._observe:
            self._observe(key[1], time.monotonic() - started, False)

    # Adapters for the synchronous libraries ----------------------------------------------

    def pyspf_lookup(
        self, name: str, qtype: str, strict: bool = True, timeout: float = 0
    ) -> list[tuple[tuple[str, str], object]]:
        """pyspf's ``DNSLookup`` signature: [((name, type), value), ...]; a ``timeout`` (the
        check's time left) shortens the wait, 0 leaves ``[dns] timeout``."""
        import spf

        try:
            records = self.resolve_sync(name, qtype, timeout or None)
        except DnsTemporaryError as exc:
            raise spf.TempError(f"DNS {exc}") from exc
        values: list[tuple[tuple[str, str], object]] = []
        for record in records:
            value: object = record
            if qtype in ("TXT", "SPF"):
                value = (record.encode("utf-8"),)
            elif qtype == "MX":
                preference, exchange = record.split(" ", 1)
                value = (int(preference), exchange)
            values.append(((name, qtype), value))
        return values

    def dkim_txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's ``dnsfunc`` signature: the TXT record as bytes, or None."""
        import dkim

        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            records = self.resolve_sync(text, "TXT")
        except DnsTemporaryError as exc:
            raise dkim.DnsTimeoutError(str(exc)) from exc
        return records[0].encode("utf-8") if records else None


def _negative_ttl(response: object) -> float:
    """The SOA minimum of a NODATA answer (RFC 2308), bounded."""
    for rrset in getattr(response, "authority", []):
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, rrset[0].minimum, 3600))
    return NEGATIVE_TTL
