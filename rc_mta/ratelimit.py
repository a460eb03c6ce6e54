"""Sliding-window counters for the seed's DoS advice, per client IP and per sender domain.

``RateLimiter`` counts in this process: right for one instance (the SQLite store).
``SharedRateLimiter`` counts in the PostgreSQL store, so N instances behind one MX enforce
one limit together; when that store does not answer in time it falls back to its own
in-process counts for a while (logged), never to a refusal of its own making.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from .store import SharedCounters, Store

log = logging.getLogger("rc_mta.ratelimit")

T = TypeVar("T")

# The event loop waits at most this long for the shared counters on one check...
SHARED_TIMEOUT = 0.5
# ...and after a failure counts in this process alone for this long before asking again.
SHARED_RETRY_AFTER = 30.0
_MAX_KEY = 255  # the store's column; longer keys are hashed


class RateLimiter:
    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.window = window
        self._clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._max_keys = max_keys

    def _recent(self, kind: str, key: str) -> deque[float]:
        now = self._clock()
        hits = self._hits.get((kind, key))
        if hits is None:
            if len(self._hits) >= self._max_keys:
                self._prune(now)
            hits = self._hits[(kind, key)] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    async def over(self, kind: str, key: str, limit: int) -> bool:
        """True when ``key`` already used its ``limit`` in the window (0 means no limit)."""
        return self._over_here(kind, key, limit)

    async def hit(self, kind: str, key: str, limit: int) -> bool:
        """Count one event; True when that goes over the limit (the event is refused)."""
        return self._hit_here(kind, key, limit)

    def hit_now(self, kind: str, key: str, limit: int) -> bool:
        """``hit``, answered at once, for a caller that cannot wait (a connection's greeting)."""
        return self._hit_here(kind, key, limit)

    def _over_here(self, kind: str, key: str, limit: int) -> bool:
        return limit > 0 and len(self._recent(kind, key)) >= limit

    def _hit_here(self, kind: str, key: str, limit: int) -> bool:
        if self._over_here(kind, key, limit):
            return True
        self._recent(kind, key).append(self._clock())
        return False

    def record(self, kind: str, key: str) -> None:
        """Count one event that is not itself limited here (e.g. a failed authentication)."""
        self._recent(kind, key).append(self._clock())

    def close(self) -> None:
        """Let go of what the counters hold (nothing, in memory)."""

    def _prune(self, now: float) -> None:
        for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[k]


class SharedRateLimiter(RateLimiter):
    """The same limits, counted in the shared store (one statement per check).

    The store's answers come from one worker thread (its connection is its own, and the
    checks keep their order); the event loop never waits for one: ``over`` and ``hit`` are
    awaited, for at most ``timeout``. The connect stage decides at once (``hit_now``): from
    this instance's own counts and the store's last word on that client, brought up to
    date on the worker meanwhile — so N instances hold a connection limit together up to
    one connection each that slips through before the store's "over" reaches it.

    Every event is also counted in memory, as ``RateLimiter`` does: when the store fails or
    is slow, those counts decide for ``retry_after`` seconds — this instance still limits
    by itself, it just no longer knows what the others counted. A 5xx for a store fault
    would bounce good mail, and a 4xx for every client would make a counter outage a mail
    outage; a limit is a brake on abuse, and the per-instance brake holds meanwhile.
    """

    def __init__(
        self,
        window: float,
        counters: SharedCounters,
        timeout: float = SHARED_TIMEOUT,
        retry_after: float = SHARED_RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        super().__init__(window, clock, max_keys)
        self._counters = counters
        self._timeout = timeout
        self._retry_after = retry_after
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rate-limits")
        self._local_until = float("-inf")
        self._next_prune = clock() + window
        # (kind, key) the store last said were over their limit (hit_now's view; the worker writes it)
        self._over_elsewhere: set[tuple[str, str]] = set()

    async def over(self, kind: str, key: str, limit: int) -> bool:
        if limit <= 0:
            return False
        used = await self._shared(lambda: self._counters.count(kind, _stored(key)))
        return self._over_here(kind, key, limit) if used is None else used >= limit

    async def hit(self, kind: str, key: str, limit: int) -> bool:
        if limit <= 0:
            return False
        counted = await self._shared(lambda: self._counters.add(kind, _stored(key), limit))
        if counted is None:
            return self._hit_here(kind, key, limit)
        if counted:
            self._recent(kind, key).append(self._clock())
        return not counted

    def hit_now(self, kind: str, key: str, limit: int) -> bool:
        if limit <= 0:
            return False
        if not self._asking_store():
            return self._hit_here(kind, key, limit)
        stored, slot = _stored(key), (kind, key)
        if slot in self._over_elsewhere:
            # Refused; whether the window has moved on is asked without counting this one.
            self._learn(slot, lambda: self._counters.count(kind, stored) >= limit)
            return True
        if self._hit_here(kind, key, limit):
            return True
        self._learn(slot, lambda: not self._counters.add(kind, stored, limit))
        return False

    def record(self, kind: str, key: str) -> None:
        super().record(kind, key)
        if self._clock() >= self._local_until:
            # Nothing waits for the answer; the worker keeps the order of the checks.
            self._worker.submit(self._quietly, lambda: self._counters.add(kind, _stored(key)))

    def close(self) -> None:
        if self._local_until == float("inf"):
            return
        self._local_until = float("inf")  # from now on, only the local counts
        # On the worker, after what it still has to do: the connection is its own.
        self._worker.submit(self._quietly, self._counters.close)
        self._worker.shutdown(wait=False)

    def _asking_store(self) -> bool:
        """False while this instance counts alone; also prunes the store once per window."""
        now = self._clock()
        if now < self._local_until:
            return False
        if now >= self._next_prune:
            self._next_prune = now + self.window
            self._worker.submit(self._quietly, self._counters.prune)
        return True

    async def _shared(self, question: Callable[[], T]) -> T | None:
        """The store's answer, or None when it is unavailable (then the local counts decide)."""
        if not self._asking_store():
            return None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self._worker.submit(question)), self._timeout)
        except TimeoutError:
            self._fall_back(f"no answer within {self._timeout:g}s")
        except Exception as exc:  # any store trouble: count locally, never refuse for it
            self._fall_back(str(exc))
        return None

    def _learn(self, slot: tuple[str, str], over: Callable[[], bool]) -> None:
        """Ask the store on the worker whether ``slot`` is over its limit; remember the answer."""

        def ask() -> None:
            if not over():
                self._over_elsewhere.discard(slot)
            elif len(self._over_elsewhere) < self._max_keys:
                self._over_elsewhere.add(slot)

        self._worker.submit(self._quietly, ask)

    def _fall_back(self, why: str) -> None:
        self._local_until = self._clock() + self._retry_after
        log.warning(
            "rate limits: shared counters unavailable (%s); this instance counts alone for %gs",
            why,
            self._retry_after,
        )

    @staticmethod
    def _quietly(action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # a lost count is not worth a failure
            log.debug("rate limits: could not update shared counters: %s", exc)


def _stored(key: str) -> str:
    if len(key) <= _MAX_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def rate_limiter(window: float, store: Store) -> RateLimiter:
    """Shared counters when the store is PostgreSQL (several instances); else in memory."""
    counters = store.shared_counters(window, SHARED_TIMEOUT)
    if counters is None:
        return RateLimiter(window)
    log.info("rate limits: counted in the shared store, for every instance together")
    return SharedRateLimiter(window, counters)
