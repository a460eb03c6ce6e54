"""One typed configuration tree: TOML file, then ``RC_MTA_<SECTION>__<KEY>`` overrides.

Defaults live here; ``conf/rc-mta.toml`` documents every key with its default. The
environment is read here too (``_env_tree``), as pydantic-settings read it before, without
its import and sources on every CLI call (issue 17).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .registry import MAILBOX_SOURCES, TASK_BACKENDS

DEFAULT_CONFIG_PATH = Path("conf/rc-mta.toml")

# Matched on stripped text: two runs of optional white space around an optional unit would
# try every split of a long run between them.
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_SIZE = re.compile(r"(\d+)\s*([kmg]i?b?|b)?", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def _parse_duration(value: Any) -> Any:
    """Accept ``30``, ``"30s"``, ``"15m"``, ``"7d"``: people write durations, not seconds."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if not match:
            raise ValueError(f"{value!r} is not a duration like 30s, 15m, 12h or 7d")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]


def _parse_size(value: Any) -> Any:
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if not match:
            raise ValueError(f"{value!r} is not a size like 1048576, 512KiB or 1MiB")
        unit = (match.group(2) or "b").lower()[0]
        return int(match.group(1)) * {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    return value


Bytes = Annotated[int, BeforeValidator(_parse_size), Field(gt=0)]


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``."""
    match = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$|^([^:\[\]]*):(\d{1,5})$", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:2525 or [::1]:2525)")
    host = match.group(1) or match.group(3) or "0.0.0.0"
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


def _check_listen(value: str) -> str:
    if value:
        parse_host_port(value)
    return value


Listen = Annotated[str, BeforeValidator(lambda v: _check_listen(str(v)))]

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _domain_names(value: list[str], *, wildcard: bool = False) -> list[str]:
    """Domain names as compared later: lower case, no trailing dot; "*.D" too if ``wildcard``."""
    out = [name.strip().lower().rstrip(".") for name in value]
    for name in out:
        if not _DOMAIN.match(name.removeprefix("*.") if wildcard else name):
            raise ValueError(f"{name!r} is not a domain name" + (" (or *.domain)" if wildcard else ""))
    return out


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_networks(value: list[str]) -> list[str]:
    import ipaddress

    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{network!r} is not a network like 10.0.0.0/8 or ::1/128") from None
    return value


Networks = Annotated[list[str], AfterValidator(_check_networks)]


class InboundTlsConfig(Section):
    """TLS of the SMTP/LMTP listeners (rc_mta/inbound/tls.py): STARTTLS is offered, and the
    ``[inbound] tls_listen`` port speaks TLS from the first byte, once a pair is set."""

    cert_file: Path | None = None  # PEM: the certificate, then its chain
    key_file: Path | None = None  # PEM private key (mode 0600)
    # Listeners that refuse MAIL (530 5.7.0) until the client said STARTTLS. A public MX
    # must not require it (RFC 3207); a front MTA handing over LMTP may well.
    require_tls: list[Literal["smtp", "lmtp"]] = Field(default_factory=list)
    # The pair is re-read when either file changes (polled this often) and on SIGHUP; new
    # handshakes use it, open sessions keep theirs.
    reload_interval: Seconds = 60.0
    # With no cert_file: make a self-signed pair under var/tls/ and use it (make run sets
    # this: for trying rc-mta out, never for mail from the internet).
    self_signed: bool = False

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None or self.self_signed

    @model_validator(mode="after")
    def _pair(self) -> InboundTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both, or neither")
        if self.require_tls and not self.enabled:
            raise ValueError("require_tls needs cert_file and key_file")
        return self


class InboundConfig(Section):
    listen: Listen = "127.0.0.1:2525"
    lmtp_listen: Listen = ""
    # SMTP over TLS from the first byte (implicit TLS, like port 465), besides STARTTLS on
    # ``listen``; needs [inbound.tls]. "" turns it off.
    tls_listen: Listen = ""
    reply_domain: str = "reply.localhost"
    local_part: str = "rc"
    hostname: str = "localhost"
    max_message_size: Bytes = 1024 * 1024
    max_recipients: int = Field(default=10, ge=1, le=1000)
    timeout: Seconds = 300.0
    shutdown_grace: Seconds = 10.0
    trusted_relays: Networks = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    proxy_protocol: bool = False
    archive_dir: Path | None = None
    # Session limits (rc_mta/inbound/limits.py); beyond them a client is told 421 and closed.
    # Sessions open at once over SMTP and LMTP together, and from one client IP (trusted
    # relays apart: they speak for many clients).
    max_sessions: int = Field(default=1000, ge=1, le=100_000)
    max_sessions_per_ip: int = Field(default=20, ge=1)
    # A session ends after this long whatever it does (a message being received or acted
    # on finishes first), and after this many replies without an accepted recipient or
    # message (NOOP, RSET, HELP, VRFY, refused commands...).
    session_lifetime: Seconds = 1800.0
    max_idle_commands: int = Field(default=25, ge=5)
    # Connections the kernel queues for rc-mta to accept (capped by net.core.somaxconn).
    listen_backlog: int = Field(default=1024, ge=1, le=65535)
    # What reading one message may cost (rc_mta/budget.py): over a cap, 552 5.3.4 / 554 5.6.0.
    max_header_bytes: Bytes = 256 * 1024
    max_header_fields: int = Field(default=1000, ge=10)
    max_mime_parts: int = Field(default=100, ge=1)
    max_mime_depth: int = Field(default=16, ge=1, le=40)
    max_mime_parameters: int = Field(default=256, ge=1)
    max_parameter_continuations: int = Field(default=32, ge=0)
    max_references: int = Field(default=100, ge=2)
    # Messages are read (parsed, DKIM-verified) by this many threads of their own; when more
    # than parse_queue wait for one, a new message is answered 451 4.3.2 at once.
    parse_workers: int = Field(default=2, ge=1, le=64)
    parse_queue: int = Field(default=8, ge=0)
    tls: InboundTlsConfig = InboundTlsConfig()

    @model_validator(mode="after")
    def _tls_listen_has_tls(self) -> InboundConfig:
        if self.tls_listen and not self.tls.enabled:
            raise ValueError("tls_listen needs [inbound.tls] cert_file and key_file")
        return self

    @field_validator("reply_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().lower().rstrip(".")
        if not _DOMAIN.match(value):
            raise ValueError(f"{value!r} is not a domain name")
        return value

    @field_validator("local_part")
    @classmethod
    def _local_part(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,15}", value.lower()):
            raise ValueError("must be 1-16 letters, digits, '.', '_' or '-'")
        return value.lower()


class SigningConfig(Section):
    keys: dict[int, SecretStr] = Field(default_factory=dict)
    active_key: int | None = None
    request_ttl: Seconds = 7 * 86400.0
    generated_key_file: Path = Path("var/signing.key")

    @field_validator("keys")
    @classmethod
    def _keys(cls, value: dict[int, SecretStr]) -> dict[int, SecretStr]:
        for key_id in value:
            if not 1 <= key_id <= 255:
                raise ValueError(f"key id {key_id} must be a number from 1 to 255")
        return value  # strength is checked where keys are loaded, so check-config can report it

    @model_validator(mode="after")
    def _active_is_known(self) -> SigningConfig:
        if self.keys and self.active_key is None:
            raise ValueError("active_key must name one of [signing.keys]")
        if self.active_key is not None and self.active_key not in self.keys:
            raise ValueError(f"active_key {self.active_key} is not one of [signing.keys]")
        return self


class OutboundDkimConfig(Section):
    """DKIM-signing of the requests we send: off until selector, domain and key_file are set."""

    selector: str = ""
    domain: str = ""
    key_file: Path | None = None
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"

    @property
    def enabled(self) -> bool:
        return bool(self.selector)

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        value = value.strip().lower()
        if value and not _DOMAIN.match(value):
            raise ValueError(f"{value!r} is not a selector (DNS labels like s2025 or mail.s1)")
        return value

    @field_validator("domain")
    @classmethod
    def _dkim_domain(cls, value: str) -> str:
        value = value.strip().lower().rstrip(".")
        if value and not _DOMAIN.match(value):
            raise ValueError(f"{value!r} is not a domain name")
        return value

    @model_validator(mode="after")
    def _all_or_nothing(self) -> OutboundDkimConfig:
        given = [bool(self.selector), bool(self.domain), self.key_file is not None]
        if any(given) and not all(given):
            raise ValueError("selector, domain and key_file go together: set all three, or none")
        return self


class OutboundConfig(Section):
    transport: Literal["outbox", "smtp"] = "outbox"
    outbox_dir: Path = Path("var/outbox")
    from_address: str = ""
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_tls: bool = False
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_timeout: Seconds = 30.0
    # False behind a relay that replaces Message-IDs, where owners' replies lose the
    # request's thread: a reply's In-Reply-To/References are then not checked (thread_ids).
    relay_keeps_message_id: bool = True
    language: Literal["en", "de", "fr"] = "en"  # of request mails; a request may choose its own
    # The queue: a request is stored first, then delivered; a relay that answers 4xx or
    # cannot be reached is tried again after retry_min, doubling up to retry_max, until
    # queue_lifetime has passed (then the request fails). 5xx fails it at once.
    retry_min: Seconds = 60.0
    retry_max: Seconds = 1800.0
    queue_lifetime: Seconds = 5 * 86400.0
    queue_poll_interval: Seconds = 5.0
    # /readyz warns when a request has waited for delivery longer than this.
    queue_warn_after: Seconds = 3600.0
    dkim: OutboundDkimConfig = OutboundDkimConfig()

    @model_validator(mode="after")
    def _one_tls_mode(self) -> OutboundConfig:
        if self.smtp_tls and self.smtp_starttls:
            raise ValueError("smtp_tls and smtp_starttls cannot both be true")
        return self


class RequestsConfig(Section):
    """Follow-ups of each request sent (rc_mta/followups.py): reminder mails in the request's
    thread ``reminders`` after it was sent while no one answered, and, when it expires
    unanswered, a word to the backend (a Release comment, a webhook ``expired`` event)."""

    reminders: list[Seconds] = Field(default_factory=list, max_length=10)
    followup_interval: Seconds = 60.0

    @field_validator("reminders")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(later <= earlier for earlier, later in itertools.pairwise(value)):
            raise ValueError('reminders must be increasing delays, like ["1d", "3d"]')
        return value


class StoreConfig(Section):
    url: str = "sqlite:///var/rc-mta.db"
    busy_timeout: Seconds = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


# The longest one action on a task backend may take, its claim included
# (``[tasks] action_deadline`` at most): half the age at which an unfinished answer's claim
# is taken for dead (``store.STALE_CLAIM_SECONDS``), so a claim is never taken over while
# its attempt can still act, and the backend has as long again to finish what it was told.
ACTION_DEADLINE_MAX = 300.0


def _within_action_deadline(worst: float, what: str, remedy: str) -> None:
    """Refuse a backend's settings whose own worst case could outlast any action deadline."""
    if worst > ACTION_DEADLINE_MAX:
        raise ValueError(
            f"{what} may take {worst:g}s, over the {ACTION_DEADLINE_MAX:g}s one action on a task may take"
            f" (half the time after which an unfinished answer is taken for dead): {remedy}"
        )


# Release's pause before trying a call again (``ReleaseConfig.backoff``): doubling from the
# first, at most the cap, and never longer than one call's timeout.
RELEASE_BACKOFF_SECONDS = 0.2
RELEASE_BACKOFF_CAP_SECONDS = 2.0


class ReleaseConfig(Section):
    """Digital.ai Release's public REST API."""

    url: str = ""
    username: str = ""
    password: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")
    timeout: Seconds = 10.0
    retries: int = Field(default=2, ge=0, le=10)
    # Watch mode (rc_mta/tasks/release_watch.py): tasks tagged ``watch_tag`` get their
    # request mailed when they start, with no script task; revoked when they leave.
    watch: bool = False
    watch_tag: str = Field(default="email-completion", min_length=1, max_length=100)
    watch_interval: Seconds = 10.0

    @model_validator(mode="after")
    def _fits_an_action(self) -> ReleaseConfig:
        tries = self.retries + 1
        _within_action_deadline(
            self.worst_case(),
            f"timeout {self.timeout:g}s × {tries} tries (retries + 1), with back-offs between, for the POST"
            f" and each of the {self.retries + 2} reads of the task around it",
            "lower timeout or retries",
        )
        return self

    def backoff(self, attempt: int) -> float:
        """The pause after the failed try number ``attempt`` (from 0) of a call, before the next."""
        return float(min(RELEASE_BACKOFF_SECONDS * 2**attempt, RELEASE_BACKOFF_CAP_SECONDS, self.timeout))

    def worst_case(self) -> float:
        """The longest one action on a task can take (``ReleaseBackend._act``): a read of the
        task and a POST are each up to ``retries + 1`` tries of ``timeout`` with back-offs
        between; the task is read before the first POST, after each POST that may be tried
        again, and once after the last (a 400 or 409 is told apart by a read): ``retries + 2``
        reads and the POST, every one at its worst. ``_act``'s shape and this must agree."""
        one = self.timeout * (self.retries + 1) + sum(self.backoff(attempt) for attempt in range(self.retries))
        return round((self.retries + 3) * one, 3)  # to the millisecond: 19.8 × 3 + 0.6 is not over 60


class WebhookConfig(Section):
    """A signed JSON POST of each action to a URL of the user's choice."""

    url: str = ""
    secret: SecretStr = SecretStr("")
    timeout: Seconds = 10.0

    @field_validator("timeout")
    @classmethod
    def _fits_an_action(cls, value: float) -> float:
        _within_action_deadline(value, "a POST", "lower timeout")
        return value


class TasksConfig(Section):
    """``backend`` names a task backend (``rc_mta/tasks/<name>.py``, or one registered in
    ``rc_mta.registry``); ``[tasks.<name>]`` is its own section. The built-in ones are typed
    here; another backend's section is checked against the model it registered when it is
    built. What a backend needs of its section it says itself, when it is built."""

    model_config = ConfigDict(extra="allow", frozen=True)

    backend: str = "embedded"
    # One action on the backend (complete or fail, its retries included) ends by then,
    # counted from the answer's claim; past it, whether it acted is unknown: 451, and the
    # claim is kept until taken for dead, so no other answer acts meanwhile.
    action_deadline: Seconds = ACTION_DEADLINE_MAX
    release: ReleaseConfig = ReleaseConfig()
    webhook: WebhookConfig = WebhookConfig()

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return TASK_BACKENDS.check(value)

    @field_validator("action_deadline")
    @classmethod
    def _below_staleness(cls, value: float) -> float:
        if value > ACTION_DEADLINE_MAX:
            raise ValueError(
                f"must be at most {ACTION_DEADLINE_MAX:g}s, half the time after which an unfinished answer"
                " is taken for dead"
            )
        return value

    @model_validator(mode="after")
    def _sections_are_backends(self) -> TasksConfig:
        for name, value in (self.model_extra or {}).items():
            try:
                TASK_BACKENDS.check(name)
            except ValueError:
                raise ValueError(f"{name!r} is neither a key nor a task backend's section") from None
            if not isinstance(value, dict):
                raise ValueError(f"[tasks.{name}] must be a table of that backend's keys")
        if self.release.watch and self.backend != "release":
            raise ValueError("[tasks.release] watch = true needs backend 'release'")
        least = 2 * self.release.timeout + 1
        if self.backend == "release" and self.action_deadline < least:
            # An action reads the task, then POSTs; each may take the timeout, and the backend
            # starts no POST it could not end before the deadline (``ReleaseBackend._act``).
            raise ValueError(
                f"action_deadline {self.action_deadline:g}s leaves no time to read a Release task and then POST"
                f" within [tasks.release] timeout {self.release.timeout:g}s: make it at least {least:g}s"
            )
        return self

    def section(self, name: str) -> Any:
        """The section of backend ``name``: typed for the built-in ones, as written otherwise."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.model_extra or {}).get(name, {})


class MtaStsConfig(Section):
    """The MTA-STS policy (RFC 8461) served at /.well-known/mta-sts.txt; off while ``mx`` is
    empty. The operator fronts it with HTTPS on mta-sts.<reply domain>."""

    mode: Literal["enforce", "testing", "none"] = "testing"
    mx: list[str] = Field(default_factory=list)  # the MX host names, "*.example.com" allowed
    max_age: Annotated[int, BeforeValidator(_parse_duration), Field(ge=0, le=31557600)] = 604800

    @property
    def enabled(self) -> bool:
        return bool(self.mx)

    @field_validator("mx")
    @classmethod
    def _mx(cls, value: list[str]) -> list[str]:
        names = []
        for name in value:
            name = name.strip().lower().rstrip(".")
            if not _DOMAIN.match(name.removeprefix("*.")):
                raise ValueError(f"{name!r} is not an MX host name (mx.example.com or *.example.com)")
            names.append(name)
        return names


class HttpConfig(Section):
    listen: Listen = "127.0.0.1:8025"
    metrics_listen: Listen = ""
    api_tokens: list[SecretStr] = Field(default_factory=list)
    # A client that has not sent a whole request line and headers by header_timeout (also:
    # an idle keep-alive connection) is closed; a body not in by body_timeout gets a 408.
    header_timeout: Seconds = 20.0
    body_timeout: Seconds = 10.0
    # /healthz answers 503 while the event loop ran a timer later than this (worst of 10 s).
    max_loop_lag: Seconds = 1.0
    mta_sts: MtaStsConfig = MtaStsConfig()


class OAuth2Config(Section):
    token_url: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    refresh_token: SecretStr = SecretStr("")

    @property
    def enabled(self) -> bool:
        return bool(self.token_url)


# Graph keeps a subscription to Outlook mail at most 4230 minutes.
GRAPH_MAX_SUBSCRIPTION = 4230 * 60.0


class GraphPushConfig(Section):
    """Change notifications: Graph POSTs to ``notification_url`` when mail arrives, which
    only wakes the delta poll early. Off while ``notification_url`` is empty."""

    notification_url: str = ""  # public HTTPS URL the operator fronts onto ``path``
    lifecycle_notification_url: str = ""  # default: notification_url
    client_state: SecretStr = SecretStr("")  # shared secret Graph echoes in every notification
    path: str = "/graph/notifications"  # the route on [http] listen
    subscription_lifetime: Annotated[
        float, BeforeValidator(_parse_duration), Field(gt=0, le=GRAPH_MAX_SUBSCRIPTION)
    ] = 4200 * 60.0  # 70 h: Graph refuses more than 70.5 h for mail
    renew_before: Seconds = 24 * 3600.0  # renew when this much of the lifetime is left
    max_body: Bytes = 256 * 1024
    max_notifications: int = Field(default=100, ge=1, le=10_000)

    @property
    def enabled(self) -> bool:
        return bool(self.notification_url)

    @model_validator(mode="after")
    def _usable(self) -> GraphPushConfig:
        if not self.enabled:
            return self
        secret = self.client_state.get_secret_value()
        if not 16 <= len(secret) <= 128:
            raise ValueError("client_state must be 16 to 128 characters (Graph allows 128)")
        if not self.path.startswith("/"):
            raise ValueError("path must start with /")
        for url in (self.notification_url, self.lifecycle_notification_url):
            if url and not url.startswith(("https://", "http://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return self


class GraphConfig(Section):
    tenant_id: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    user: str = ""
    base_url: str = "https://graph.microsoft.com/v1.0"
    token_url: str = "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token"
    push: GraphPushConfig = GraphPushConfig()
    # Believe Exchange Online about the mailbox it hosts: its own Authentication-Results
    # (which name no authserv-id), and its mark on mail a user of the tenant sent from one of
    # tenant_domains (README, "Exchange Online").
    trust_exchange_online: bool = False
    tenant_domains: list[str] = Field(default_factory=list)

    @field_validator("tenant_domains")
    @classmethod
    def _tenant_domains(cls, value: list[str]) -> list[str]:
        return _domain_names(value)

    @model_validator(mode="after")
    def _domains_need_trust(self) -> GraphConfig:
        if self.tenant_domains and not self.trust_exchange_online:
            raise ValueError("tenant_domains needs trust_exchange_online = true: nothing reads them otherwise")
        return self


class MailboxConfig(Section):
    """``source`` names a poller (``rc_mta/mailbox/<name>.py``, or one registered), or
    ``none``; what a poller needs of these keys it says itself, when it is built."""

    source: str = "none"
    host: str = ""
    port: int = Field(default=993, ge=1, le=65535)
    tls: bool = True
    starttls: bool = False
    username: str = ""
    password: SecretStr = SecretStr("")
    from_address: str = ""
    folder: str = "INBOX"
    sync_interval: Seconds = 30.0
    startup_delay: Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)] = 30.0
    pool_size: int = Field(default=1, ge=1, le=32)
    disposition: Literal["delete", "move", "keep"] = "move"
    processed_folder: str = "Processed"
    rejected_folder: str = "Rejected"
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    # A refused reply's sender is told, as SMTP's bounce would tell them (refusal_notices.py).
    notify_refusals: bool = True
    refusal_notices_per_hour: int = Field(default=3, ge=1, le=100)
    oauth2: OAuth2Config = OAuth2Config()
    graph: GraphConfig = GraphConfig()

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value != "none" and value not in MAILBOX_SOURCES.names():
            raise ValueError(f"{value!r} is not one of none, {', '.join(MAILBOX_SOURCES.names())}")
        return value

    @model_validator(mode="after")
    def _one_tls_mode(self) -> MailboxConfig:
        if self.tls and self.starttls:
            raise ValueError("tls and starttls cannot both be true")
        return self


class RepliesConfig(Section):
    """The decision words of decide-by-reply answers; empty lists use the built-in ones."""

    complete_words: list[str] = Field(default_factory=list)
    fail_words: list[str] = Field(default_factory=list)

    @field_validator("complete_words", "fail_words")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        if not value:  # the file's ``complete_words = []``: no reply reader to load (issue 17)
            return value
        from .reading.intent import normalise, tokens  # the reply reader, loaded only when words are set

        for word in value:
            if not tokens(normalise(word)):
                raise ValueError(f"{word!r} has no letter, digit or symbol to match a reply with")
        return value

    @model_validator(mode="after")
    def _disjoint(self) -> RepliesConfig:
        if not (self.complete_words and self.fail_words):
            return self
        from .reading.intent import normalise

        both = {normalise(w) for w in self.complete_words} & {normalise(w) for w in self.fail_words}
        if both:
            raise ValueError(f"{sorted(both)[0]!r} is both a complete word and a fail word")
        return self


class DnsConfig(Section):
    nameservers: list[str] = Field(default_factory=list)
    port: int = Field(default=53, ge=1, le=65535)
    timeout: Seconds = 5.0


class PolicyCheck(Section):
    policy: Literal["off", "tag", "reject"] = "reject"


class SpfCheck(PolicyCheck):
    reject_softfail: bool = False
    # pyspf blocks a thread per lookup: these threads are SPF's own, so slow DNS never
    # holds the store's; past ``queue`` waiting checks, or ``time_limit`` (RFC 7208 4.6.4
    # asks for at least 20 s), a check is temperror → 451 4.7.24.
    workers: int = Field(default=4, ge=1, le=64)
    queue: int = Field(default=32, ge=0)
    time_limit: Seconds = 20.0


class DkimCheck(PolicyCheck):
    # "tag": a failed signature alone proves little (lists and forwarders break them); DMARC
    # and the owner rule decide. The section's own default, so a [checks.dkim] that sets
    # only min_key_bits keeps it too.
    policy: Literal["off", "tag", "reject"] = "tag"
    min_key_bits: int = Field(default=1024, ge=512, le=8192)


class DmarcCheck(PolicyCheck):
    quarantine: Literal["reject", "tag"] = "reject"


class ArcCheck(Section):
    """Gateways whose ARC seal (RFC 8617) may vouch for a message whose DKIM they broke."""

    # The d= of their ARC-Seal: exact, "*.D" for D's subdomains. Empty: ARC changes nothing.
    trusted_sealers: list[str] = Field(default_factory=list)

    @field_validator("trusted_sealers")
    @classmethod
    def _sealers(cls, value: list[str]) -> list[str]:
        return _domain_names(value, wildcard=True)


class WhitelistCheck(Section):
    enabled: bool = False
    domains: list[str] = Field(default_factory=list)


class OwnerAuthCheck(Section):
    required: bool = True


class RateLimits(Section):
    window: Seconds = 60.0
    connections_per_ip: int = Field(default=60, ge=0)
    messages_per_ip: int = Field(default=120, ge=0)
    messages_per_domain: int = Field(default=600, ge=0)
    auth_failures_per_ip: int = Field(default=10, ge=0)
    auth_failures_per_network: int = Field(default=100, ge=0)
    auth_failures_per_domain: int = Field(default=50, ge=0)
    bad_recipients_per_session: int = Field(default=5, ge=0)


class ChecksConfig(Section):
    authserv_id: str = ""
    exempt_networks: Networks = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    spf: SpfCheck = SpfCheck()
    rdns: PolicyCheck = PolicyCheck()
    dkim: DkimCheck = DkimCheck()
    dmarc: DmarcCheck = DmarcCheck()
    arc: ArcCheck = ArcCheck()
    whitelist: WhitelistCheck = WhitelistCheck()
    owner_auth: OwnerAuthCheck = OwnerAuthCheck()
    rate_limits: RateLimits = RateLimits()


class LogConfig(Section):
    level: Literal["trace", "debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Settings(BaseModel):
    """The whole configuration. Sections mirror the TOML file's tables; ``load_settings``
    fills it from the file and the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    inbound: InboundConfig = InboundConfig()
    signing: SigningConfig = SigningConfig()
    outbound: OutboundConfig = OutboundConfig()
    store: StoreConfig = StoreConfig()
    requests: RequestsConfig = RequestsConfig()
    tasks: TasksConfig = TasksConfig()
    http: HttpConfig = HttpConfig()
    replies: RepliesConfig = RepliesConfig()
    dns: DnsConfig = DnsConfig()
    checks: ChecksConfig = ChecksConfig()
    mailbox: MailboxConfig = MailboxConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _push_needs_http(self) -> Settings:
        if self.mailbox.source == "graph" and self.mailbox.graph.push.enabled and not self.http.listen:
            raise ValueError("[mailbox.graph.push] notification_url needs [http] listen: Graph posts to it")
        return self

    @property
    def authserv_id(self) -> str:
        return self.checks.authserv_id or self.inbound.hostname

    @property
    def from_address(self) -> str:
        return self.outbound.from_address or f"rc-mta@{self.inbound.reply_domain}"


def config_path(explicit: str | None) -> Path | None:
    """``--config``, else ``RC_MTA_CONFIG``, else ``conf/rc-mta.toml`` if present."""
    if explicit:
        return Path(explicit)
    if os.environ.get("RC_MTA_CONFIG"):
        return Path(os.environ["RC_MTA_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


ENV_PREFIX = "RC_MTA_"
# RC_MTA_ variables that are not config keys: the file's path, and the test/bench suites'.
_ENV_NOT_KEYS = frozenset({"RC_MTA_CONFIG"})


def load_settings(explicit_path: str | None = None, *, require_file: bool = False) -> Settings:
    """Load and validate; any problem is one ConfigError line naming the key and where it
    was set. ``require_file``: a command run away from its config must say so rather than
    quietly use the defaults (and a database in the wrong directory)."""
    path = config_path(explicit_path)
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path is None and require_file:
        raise ConfigError(
            f"no config file: {DEFAULT_CONFIG_PATH} is not in {Path.cwd()}; "
            "run from the directory that holds it, or give --config FILE (or RC_MTA_CONFIG)"
        )
    _check_env_names(os.environ)
    try:
        values = _file_tree(path) if path is not None else {}
    except (OSError, ValueError) as exc:  # TOML syntax errors are ValueErrors
        raise ConfigError(f"{path}: {exc}") from None
    overrides = _env_tree(os.environ)
    try:
        return Settings.model_validate(_merged(values, overrides))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, path, os.environ, overrides, values)) from None
    except (OSError, ValueError) as exc:  # a validator's own trouble, as before
        raise ConfigError(f"{path}: {exc}") from None


def _file_tree(path: Path) -> dict[str, Any]:
    """The TOML file's tables, a section's name in any case (``[Inbound]`` is ``inbound``);
    two spellings of one section are refused rather than one of them dropped."""
    import tomllib

    with path.open("rb") as file:
        found = tomllib.load(file)
    sections = {name.lower(): name for name in Settings.model_fields}
    tree: dict[str, Any] = {}
    for key, value in found.items():
        section = sections.get(key.lower())
        if section is None:
            tree[key] = value  # refused as an unknown key
        elif section in tree:
            raise ConfigError(f"{path}: [{key}] and another spelling of it are the same section: keep one")
        else:
            tree[section] = value
    return tree


def _merged(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top, table by table: the environment sets one key of a
    section and the file's other keys stay."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    """``RC_MTA_<SECTION>__<KEY>[__<KEY>…]`` variables (names in any case) as a tree of the
    config's shape. A list, table or section is written as JSON (``RC_MTA_DNS__NAMESERVERS=
    '["10.0.0.53"]'``, or a whole section as ``RC_MTA_LOG='{"level": "debug"}'``); anything
    else as it is, for pydantic to check. Keys no model knows are kept, so they are refused
    naming their variable (``_one_line``)."""
    names = sorted((name.lower(), name, value) for name, value in environ.items())
    tree: dict[str, Any] = {}
    for section, field in Settings.model_fields.items():
        whole = f"rc_mta_{section}"
        for lowered, name, value in names:
            if lowered == whole:
                tree[section] = _json_value(name, section, value)
            elif lowered.startswith(whole + "__"):
                *keys, last = lowered[len(whole) + 2 :].split("__")
                for depth in range(1, len(keys) + 1):  # a key below a value is no key
                    above = _key_type(field.annotation, keys[:depth])
                    if above is not _UNKNOWN and not _is_table(above):
                        raise ConfigError(
                            f"environment variable {name}: {'.'.join([section, *keys[:depth]])} is not a table"
                        )
                found: Any = value
                target = _key_type(field.annotation, [*keys, last])
                if target is not _UNKNOWN and value and _is_complex(target):
                    found = _json_value(name, ".".join([section, *keys, last]), value)
                where = tree.setdefault(section, {})
                for key in keys:  # sorted names: a table's own variable came first
                    where = where.setdefault(key, {}) if isinstance(where, dict) else where
                if not isinstance(where, dict):
                    raise ConfigError(f"environment variable {name}: {'.'.join([section, *keys])} is not a table")
                if isinstance(where.get(last), dict) and isinstance(found, dict):
                    found = _merged(where[last], found)
                where[last] = found
    return tree


def _json_value(name: str, key: str, value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        # The value itself is not repeated: it may be an API token or a signing key.
        raise ConfigError(
            f"environment variable {name}: config key {key}: its value ({len(value)} characters) is not JSON, "
            'as a list, table or section is written here (e.g. ["a", "b"] or {"key": "value"})'
        ) from None


_UNKNOWN = object()


def _key_type(annotation: Any, keys: list[str]) -> Any:
    """The type of the key at ``keys`` below ``annotation`` (a section, a table, a dict's
    values), or ``_UNKNOWN`` where no model says."""
    for key in keys:
        annotation = _inner_type(annotation, key)
        if annotation is _UNKNOWN:
            break
    return annotation


def _inner_type(annotation: Any, key: str) -> Any:
    annotation = _unannotated(annotation)
    origin = get_origin(annotation)
    if origin is dict:
        return get_args(annotation)[-1]
    if origin in (Union, types.UnionType):
        for member in get_args(annotation):
            found = _inner_type(member, key)
            if found is not _UNKNOWN:
                return found
        return _UNKNOWN
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(key)
        return field.annotation if field is not None else _UNKNOWN
    return _UNKNOWN


def _unannotated(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_complex(annotation: Any) -> bool:
    """A list, table or model: written as JSON in the environment (a union when any of its
    members is)."""
    annotation = _unannotated(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_complex(member) for member in get_args(annotation))
    kind = origin if origin is not None else annotation
    return isinstance(kind, type) and issubclass(kind, (BaseModel, dict, list, tuple, set, frozenset))


def _is_table(annotation: Any) -> bool:
    """A model or a dict: it has keys, so a variable may set one of them (a union when
    any of its members does; ``Any`` as well)."""
    annotation = _unannotated(annotation)
    if annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_table(member) for member in get_args(annotation))
    kind = origin if origin is not None else annotation
    return isinstance(kind, type) and issubclass(kind, (BaseModel, dict))


def _check_env_names(environ: Mapping[str, str]) -> None:
    """A misspelt override would be ignored silently (``_env_tree`` reads the sections'
    names only), and the service would run on a value nobody chose."""
    sections = set(Settings.model_fields)
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in _ENV_NOT_KEYS:
            continue
        rest = upper.removeprefix(ENV_PREFIX).lower()
        section, nested, _ = rest.partition("__")
        if nested and section not in sections:
            raise ConfigError(f"environment variable {name}: no config section {section!r}")
        if not nested and any(rest.startswith(f"{known}_") for known in sections):
            known = next(known for known in sections if rest.startswith(f"{known}_"))
            hint = f"{ENV_PREFIX}{known.upper()}__{rest.removeprefix(known + '_').upper()}"
            raise ConfigError(f"environment variable {name}: sections and keys are joined by two underscores: {hint}")


def _env_name_for(
    loc: tuple[int | str, ...], environ: Mapping[str, str], overrides: Mapping[str, Any], from_file: Mapping[str, Any]
) -> str | None:
    """The environment variable that set the key at ``loc``, if one did: the key's own, else
    one that set a key below a key the file does not have (``RC_MTA_INBOUND__NOPE__X`` made
    ``inbound.nope``), else the nearest that set a table above it as JSON
    (``RC_MTA_LOG='{"level": …}'``)."""
    wanted = tuple(str(part).lower() for part in loc)
    if not _holds(overrides, wanted):
        return None
    paths = sorted(
        (tuple(name.lower().removeprefix(ENV_PREFIX.lower()).split("__")), name)
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
    )
    exact = [name for path, name in paths if path == wanted]
    below = [name for path, name in paths if path[: len(wanted)] == wanted and not _holds(from_file, wanted)]
    above = [name for path, name in paths if wanted[: len(path)] == path]
    return next(iter(exact + below + above[::-1]), None)


def _holds(tree: Any, path: tuple[str, ...]) -> bool:
    """Whether ``tree`` (the file's or the environment's, before validation) has a value at
    ``path``."""
    for key in path:
        if isinstance(tree, dict) and key in tree:
            tree = tree[key]
        elif isinstance(tree, list) and key.isdigit() and int(key) < len(tree):
            tree = tree[int(key)]
        else:
            return False
    return True


def _one_line(
    exc: ValidationError,
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any],
    from_file: Mapping[str, Any],
) -> str:
    errors = exc.errors()
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    env_name = _env_name_for(first["loc"], environ, overrides, from_file)
    where = f"environment variable {env_name}: " if env_name else f"{path}: " if path else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}config key {key}: {message}{more}"
