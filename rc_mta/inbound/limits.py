"""How many sessions rc-mta holds, and for how long: so that a crowd of clients, or one
client that keeps a session alive with NOOP, cannot use up the file descriptors and leave
new clients (and /healthz) with nothing.

A new connection is told ``421`` and closed at once when the process already holds
``max_sessions`` sessions, when its IP already holds ``max_sessions_per_ip`` (trusted relays
apart: a front MTA or load balancer speaks for many clients), or when file descriptors run
short. A session ends with ``421`` after ``session_lifetime``, or after
``max_idle_commands`` replies without an accepted recipient or message.
"""

from __future__ import annotations

import logging
import resource
from collections import Counter
from collections.abc import Callable

from .. import smtp_replies as R
from ..config import InboundConfig

log = logging.getLogger("rc_mta.inbound")

# Descriptors kept free for everything but new sessions (store, DNS, HTTP, logs, the 421s
# themselves): a connection whose descriptor number reaches soft limit - reserve is told 421.
DESCRIPTOR_RESERVE = 64


def descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE, read each time: an operator may change it with prlimit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def raise_descriptor_limit(max_sessions: int) -> int:
    """Raise the soft RLIMIT_NOFILE as far as the hard one allows, up to what ``max_sessions``
    needs; warn when the hard limit is lower (sessions beyond it are told 421). Returns the
    soft limit now in force."""
    needed = max_sessions + 2 * DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if wanted > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (OSError, ValueError):  # e.g. systemd's SystemCallFilter=~@resources
                pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "[inbound] max_sessions = %d needs %d file descriptors, but the limit is %d: "
            "new clients are told 421 once it runs short (raise LimitNOFILE / ulimit -n)",
            max_sessions,
            needed,
            soft,
        )
    return int(soft)


def descriptors_short(fileno: int) -> bool:
    """A new socket got descriptor ``fileno`` (the lowest free one): is the reserve reached?"""
    return fileno >= descriptor_limit() - DESCRIPTOR_RESERVE


class SessionLimits:
    """The live sessions of the whole process (SMTP and LMTP together), by client IP."""

    def __init__(self, config: InboundConfig, exempt: Callable[[str], bool]) -> None:
        self.max_sessions = config.max_sessions
        self.max_per_ip = config.max_sessions_per_ip
        self.exempt = exempt  # trusted relays: one IP for many clients
        self.total = 0
        self.by_ip: Counter[str] = Counter()
        raise_descriptor_limit(config.max_sessions)

    def admit(self, ip: str | None, fileno: int) -> R.SmtpReply | None:
        """Count a new session in, or say (421) why it may not start."""
        if fileno >= 0 and descriptors_short(fileno):
            log.warning("file descriptors run short (descriptor %d): a new client is told 421", fileno)
            return R.DESCRIPTORS_SHORT
        if self.total >= self.max_sessions:
            log.warning("%d sessions open: a new client (%s) is told 421", self.total, ip)
            return R.TOO_MANY_SESSIONS
        if ip is not None and self.by_ip[ip] >= self.max_per_ip and not self.exempt(ip):
            log.info("%d sessions open from %s: one more is told 421", self.by_ip[ip], ip)
            return R.TOO_MANY_SESSIONS_FROM_IP.with_text(ip=ip)
        self.total += 1
        if ip is not None:
            self.by_ip[ip] += 1
        return None

    def release(self, ip: str | None) -> None:
        self.total -= 1
        if ip is not None:
            self.by_ip[ip] -= 1
            if self.by_ip[ip] <= 0:
                del self.by_ip[ip]
