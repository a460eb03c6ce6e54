"""Every Prometheus metric rc-mta exports, defined in one place.

Label values are bounded: ``reason`` is the name of an SMTP reply from
``smtp_replies.py`` in lower case, ``stage`` one of connect/mail/rcpt/data/mailbox,
``source`` one of smtp/lmtp/imap/graph/file, ``backend`` a backend's name; TLS ``version``
and ``cipher`` are those of rc-mta's own short list (rc_mta/inbound/tls.py).
"""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from . import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

BUILD = Info("rc_mta_build", "Version of the running rc-mta.", registry=REGISTRY)
BUILD.info({"version": __version__})

CONNECTIONS = Counter("rc_mta_connections", "SMTP/LMTP connections accepted.", ["protocol"], registry=REGISTRY)
SESSIONS_ACTIVE = Gauge("rc_mta_sessions_active", "SMTP/LMTP sessions open now.", ["protocol"], registry=REGISTRY)
TLS_SESSIONS = Counter(
    "rc_mta_tls_sessions",
    "SMTP/LMTP sessions encrypted (STARTTLS or the implicit TLS port), by TLS version and cipher.",
    ["protocol", "version", "cipher"],
    registry=REGISTRY,
)
TLS_HANDSHAKE_FAILURES = Counter(
    "rc_mta_tls_handshake_failures", "STARTTLS handshakes that failed.", ["protocol"], registry=REGISTRY
)
TLS_CERTIFICATE_EXPIRY = Gauge(
    "rc_mta_tls_certificate_expiry_timestamp_seconds",
    "Unix time the serving TLS certificate expires (alert well before: ACME renews at 30 days).",
    registry=REGISTRY,
)
LOOP_LAG = Gauge(
    "rc_mta_event_loop_lag_seconds",
    "Worst lag of the event loop over the last 10 s: how late it ran a timer (/healthz's figure).",
    registry=REGISTRY,
)
MESSAGES_RECEIVED = Counter(
    "rc_mta_messages_received", "Messages received, by how they arrived.", ["source"], registry=REGISTRY
)
REJECTIONS = Counter(
    "rc_mta_rejections",
    "Refusals and deferrals, by SMTP stage and reason (the reply's name).",
    ["stage", "reason"],
    registry=REGISTRY,
)
TASKS_ACTED = Counter(
    "rc_mta_tasks_acted", "Tasks completed or failed by a reply.", ["backend", "action"], registry=REGISTRY
)
REFUSAL_NOTICES = Counter(
    "rc_mta_refusal_notices",
    "Replies a poller refused for good, by what was done about telling their sender:"
    " queued, duplicate (told before), rate_limited, not_due (unauthenticated, machine mail...).",
    ["result"],
    registry=REGISTRY,
)
AUTO_REPLIES_DROPPED = Counter(
    "rc_mta_auto_replies_dropped",
    "Auto-replies and delivery reports accepted and dropped without acting.",
    ["kind"],
    registry=REGISTRY,
)
BACKEND_ERRORS = Counter(
    "rc_mta_backend_errors", "Task backend calls that failed, by kind.", ["backend", "kind"], registry=REGISTRY
)
BACKEND_LATENCY = Histogram(
    "rc_mta_backend_request_seconds",
    "Task backend call latency.",
    ["backend", "operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
DNS_LATENCY = Histogram(
    "rc_mta_dns_query_seconds",
    "DNS query latency (cache misses).",
    ["rdtype"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
DNS_CACHE = Counter(
    "rc_mta_dns_cache_lookups", "DNS look-ups by cache outcome (hit or miss).", ["outcome"], registry=REGISTRY
)
REQUESTS_SENT = Counter(
    "rc_mta_requests_sent", "Completion requests mailed, by transport.", ["transport"], registry=REGISTRY
)
OUTBOUND_QUEUE = Gauge(
    "rc_mta_outbound_queue",
    "Request and reminder mails in the outbound queue (shared by every instance on the store), by state.",
    ["state"],
    registry=REGISTRY,
)
REPLY_TO_COMPLETION = Histogram(
    "rc_mta_reply_to_completion_seconds",
    "From a reply's arrival to its task action being committed.",
    ["source"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
POLLER_LAST_SYNC = Gauge(
    "rc_mta_poller_last_sync_timestamp_seconds",
    "Unix time of the poller's last successful mailbox sync.",
    ["source"],
    registry=REGISTRY,
)
POLLER_MESSAGES = Histogram(
    "rc_mta_poller_messages_per_cycle",
    "Messages handled in one poller cycle.",
    ["source"],
    buckets=(0, 1, 2, 5, 10, 25, 50, 100, 250, 1000),
    registry=REGISTRY,
)
POLLER_IDLE = Gauge(
    "rc_mta_poller_idle", "1 while the IMAP poller waits in IDLE, else 0.", ["source"], registry=REGISTRY
)
POLLER_ERRORS = Counter("rc_mta_poller_errors", "Poller cycles that failed.", ["source"], registry=REGISTRY)
GRAPH_NOTIFICATIONS = Counter(
    "rc_mta_graph_notifications",
    "Graph change notifications received, by kind (change, lifecycle, validation) and result"
    " (accepted, or rejected: wrong clientState, malformed, too large).",
    ["kind", "result"],
    registry=REGISTRY,
)
GRAPH_SUBSCRIPTION_STATE = Gauge(
    "rc_mta_graph_subscription_state",
    "1 for the Graph change-notification subscription's state (none, active, or failed:"
    " polling only), 0 for the others.",
    ["state"],
    registry=REGISTRY,
)
GRAPH_SUBSCRIPTION_EXPIRY = Gauge(
    "rc_mta_graph_subscription_expiry_timestamp_seconds",
    "Unix time at which Graph will drop the subscription unless it is renewed.",
    registry=REGISTRY,
)


@lru_cache(maxsize=1024)
def _counter(counter: Counter, *values: str) -> Counter:
    """``counter.labels(*values)``, looked up once: ``labels`` checks the values and takes a
    lock every time, and the hot counters are counted at nearly every RCPT (a refusal) or
    DNS look-up. Label values are bounded (see above), and so is the cache."""
    return counter.labels(*values)


def count_rejection(stage: str, reason: str) -> None:
    _counter(REJECTIONS, stage, reason).inc()


def observe_dns(rdtype: str, seconds: float, cached: bool) -> None:
    """The DNS resolver's hook: cache outcome and, for real queries, latency."""
    _counter(DNS_CACHE, "hit" if cached else "miss").inc()
    if not cached:
        DNS_LATENCY.labels(rdtype).observe(seconds)
