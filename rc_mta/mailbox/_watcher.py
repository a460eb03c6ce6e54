"""The poll loop every poller shares: start-up delay, a full sync every ``sync_interval``
(sooner when the connection is woken, e.g. by IMAP IDLE), reconnect with backoff after
any error, and the last successful sync for /healthz. The protocol lives elsewhere: a
poller only says how to open a connection, sync it and wait on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from .. import metrics

log = logging.getLogger("rc_mta.mailbox")

MAX_BACKOFF = 300.0


class MailboxConnection(Protocol):
    async def sync(self) -> int:
        """Handle every message waiting now; return how many were handled."""
        ...

    async def wait(self, timeout: float) -> None:
        """Return after ``timeout`` seconds, or earlier when new mail is announced."""
        ...


class Watcher:
    def __init__(
        self,
        source: str,
        connect: Callable[[], AbstractAsyncContextManager[MailboxConnection]],
        sync_interval: float,
        startup_delay: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self._connect = connect
        self.sync_interval = sync_interval
        self.startup_delay = startup_delay
        self._clock = clock
        self.started_at = clock()
        self.last_sync: float | None = None
        self.consecutive_failures = 0

    def staleness(self) -> tuple[float, float]:
        """Seconds since the last good sync (or since start), and the limit /healthz allows."""
        since = self.last_sync if self.last_sync is not None else self.started_at + self.startup_delay
        limit = 3 * self.sync_interval + 60
        return max(0.0, self._clock() - since), limit

    def _synced(self, handled: int) -> None:
        self.last_sync = self._clock()
        self.consecutive_failures = 0
        metrics.POLLER_LAST_SYNC.labels(self.source).set(self.last_sync)
        metrics.POLLER_MESSAGES.labels(self.source).observe(handled)

    async def run(self) -> None:
        await asyncio.sleep(self.startup_delay)
        while True:
            try:
                async with self._connect() as connection:
                    while True:
                        self._synced(await connection.sync())
                        await connection.wait(self.sync_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.consecutive_failures += 1
                metrics.POLLER_ERRORS.labels(self.source).inc()
                delay = min(MAX_BACKOFF, 2.0 ** min(self.consecutive_failures - 1, 9))
                log.warning("%s poller: %s: %s; reconnecting in %.0fs", self.source, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
