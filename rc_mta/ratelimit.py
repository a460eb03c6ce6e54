"""Sliding-window counters for the seed's DoS advice, per client IP and per sender domain.

Counters live in this process: with several instances behind one MX each enforces its
own share, which is what a per-connection limit means anyway.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


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

    def _prune(self, now: float) -> None:
        for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[k]
