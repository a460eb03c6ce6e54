"""Is the event loop responsive? How late it runs a timer, and systemd's watchdog.

Everything rc-mta serves — SMTP, LMTP, the HTTP API, /healthz — runs on one asyncio loop,
so a loop held by one call (a stuck write to stderr, a parse that slipped past its budget)
freezes all of it. Two ways out, from the loop itself:

* ``LoopLag`` measures how late the loop wakes a sleeping task; /healthz fails while the
  worst lag of the last ``LAG_WINDOW`` seconds is over ``[http] max_loop_lag``, and the
  gauge ``rc_mta_event_loop_lag_seconds`` shows the same figure.
* ``keep_alive`` sends systemd ``WATCHDOG=1`` (unit: ``WatchdogSec=``) every half
  watchdog period, as a task on the loop: a stuck loop sends nothing, and systemd kills
  and restarts the service (SIGABRT; ``faulthandler`` then writes every thread's stack
  to the journal, so the cause is on record).
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping

from . import metrics
from .logs import sd_notify

log = logging.getLogger("rc_mta.watchdog")

LAG_INTERVAL = 0.1  # seconds between two wake-ups of the lag probe
LAG_WINDOW = 10.0  # /healthz and the gauge report the worst lag over this many seconds


class LoopLag:
    """How late the loop runs a timer: the worst of the last ``window`` seconds.

    ``worst()`` also counts the probe's own wake-up when it is overdue right now, so a
    caller that runs first after a stall (a /healthz request queued behind it) sees it too.
    """

    def __init__(
        self,
        interval: float = LAG_INTERVAL,
        window: float = LAG_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.window = window
        self._clock = clock
        # (when, lag), lags decreasing: the worst of the window is always the first one left.
        self._samples: deque[tuple[float, float]] = deque()
        self._due: float | None = None

    async def run(self) -> None:
        """Sleep ``interval`` again and again; how much later than asked we woke is the lag."""
        while True:
            self._due = self._clock() + self.interval
            await asyncio.sleep(self.interval)
            now = self._clock()
            self.record(now, max(0.0, now - self._due))
            metrics.LOOP_LAG.set(self.worst())

    def record(self, now: float, lag: float) -> None:
        """One wake-up ``lag`` seconds late, at ``now``."""
        while self._samples and self._samples[-1][1] <= lag:
            self._samples.pop()  # never the worst again: a later sample lags as much
        self._samples.append((now, lag))

    def worst(self) -> float:
        now = self._clock()
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()
        overdue = 0.0 if self._due is None else max(0.0, now - self._due)
        return max(overdue, self._samples[0][1]) if self._samples else overdue


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of systemd's ``WATCHDOG_USEC``, or None
    when systemd wants no pings from this process (no watchdog, or another process's)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def keep_alive(interval: float) -> None:
    """``WATCHDOG=1`` every ``interval`` seconds, for as long as the loop runs this task."""
    faulthandler.enable()  # systemd's SIGABRT on a missed ping: the stacks go to the journal
    log.info("systemd watchdog: a ping every %gs from the event loop", interval)
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)
