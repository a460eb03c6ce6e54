"""Sliding-window counters for the seed's DoS advice, per client IP and per sender domain.

``RateLimiter`` counts in this process: right for one instance (the SQLite store).
``SharedRateLimiter`` counts in the PostgreSQL store, so N instances behind one MX enforce
one limit together; when that store does not answer in time it falls back to its own
in-process counts for a while (logged), never to a refusal of its own making.
"""

from __future__ import annotations

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

    def over(self, kind: str, key: str, limit: int) -> bool:
        """True when ``key`` already used its ``limit`` in the window (0 means no limit)."""
        return limit > 0 and len(self._recent(kind, key)) >= limit

    def hit(self, kind: str, key: str, limit: int) -> bool:
        """Count one event; True when that goes over the limit (the event is refused)."""
        if self.over(kind, key, limit):
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

    The checks are synchronous calls on the event loop (a connection's greeting is decided
    in aiosmtpd's ``connection_made``), so each runs on one worker thread and the loop
    waits at most ``timeout`` for it. Every event is also counted in memory, as
    ``RateLimiter`` does: when the store fails or is slow, those counts decide for
    ``retry_after`` seconds — this instance still limits by itself, it just no longer
    knows what the others counted. A 5xx for a store fault would bounce good mail, and
    a 4xx for every client would make a counter outage a mail outage; a limit is a brake
    on abuse, and the per-instance brake holds meanwhile.
    """

    def __init__(
        self,
        window: float,
        counters: SharedCounters,
        timeout: float = SHARED_TIMEOUT,
        retry_after: float = SHARED_RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(window, clock)
        self._counters = counters
        self._timeout = timeout
        self._retry_after = retry_after
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rate-limits")
        self._local_until = float("-inf")
        self._next_prune = clock() + window

    def over(self, kind: str, key: str, limit: int) -> bool:
        if limit <= 0:
            return False
        used = self._shared(lambda: self._counters.count(kind, _stored(key)))
        return super().over(kind, key, limit) if used is None else used >= limit

    def hit(self, kind: str, key: str, limit: int) -> bool:
        if limit <= 0:
            return False
        counted = self._shared(lambda: self._counters.add(kind, _stored(key), limit))
        if counted is None:
            return super().hit(kind, key, limit)
        if counted:
            self._recent(kind, key).append(self._clock())
        return not counted

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

    def _shared(self, question: Callable[[], T]) -> T | None:
        """The store's answer, or None when it is unavailable (then the local counts decide)."""
        now = self._clock()
        if now < self._local_until:
            return None
        if now >= self._next_prune:
            self._next_prune = now + self.window
            self._worker.submit(self._quietly, self._counters.prune)
        try:
            return self._worker.submit(question).result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            self._fall_back(f"no answer within {self._timeout:g}s")
        except Exception as exc:  # any store trouble: count locally, never refuse for it
            self._fall_back(str(exc))
        return None

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
