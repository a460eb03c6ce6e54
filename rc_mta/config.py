"""One typed configuration tree: TOML file, then ``RC_MTA_<SECTION>__<KEY>`` overrides.

Defaults live here; ``conf/rc-mta.toml`` documents every key with its default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

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
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError

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


class InboundConfig(Section):
    listen: Listen = "127.0.0.1:2525"
    lmtp_listen: Listen = ""
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

    @model_validator(mode="after")
    def _one_tls_mode(self) -> OutboundConfig:
        if self.smtp_tls and self.smtp_starttls:
            raise ValueError("smtp_tls and smtp_starttls cannot both be true")
        return self


class StoreConfig(Section):
    url: str = "sqlite:///var/rc-mta.db"
    busy_timeout: Seconds = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class ReleaseConfig(Section):
    """Digital.ai Release's public REST API."""

    url: str = ""
    username: str = ""
    password: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")
    timeout: Seconds = 10.0
    retries: int = Field(default=2, ge=0, le=10)


class WebhookConfig(Section):
    """A signed JSON POST of each action to a URL of the user's choice."""

    url: str = ""
    secret: SecretStr = SecretStr("")
    timeout: Seconds = 10.0


class TasksConfig(Section):
    backend: Literal["embedded", "release", "webhook"] = "embedded"
    release: ReleaseConfig = ReleaseConfig()
    webhook: WebhookConfig = WebhookConfig()

    @model_validator(mode="after")
    def _backend_configured(self) -> TasksConfig:
        if self.backend == "release" and not self.release.url:
            raise ValueError("backend 'release' needs [tasks.release] url")
        if self.backend == "webhook" and not (self.webhook.url and self.webhook.secret.get_secret_value()):
            raise ValueError("backend 'webhook' needs [tasks.webhook] url and secret")
        return self


class HttpConfig(Section):
    listen: Listen = "127.0.0.1:8025"
    metrics_listen: Listen = ""
    api_tokens: list[SecretStr] = Field(default_factory=list)
    # A client that has not sent a whole request line and headers by header_timeout (also:
    # an idle keep-alive connection) is closed; a body not in by body_timeout gets a 408.
    header_timeout: Seconds = 20.0
    body_timeout: Seconds = 10.0


class OAuth2Config(Section):
    token_url: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    refresh_token: SecretStr = SecretStr("")

    @property
    def enabled(self) -> bool:
        return bool(self.token_url)


class GraphConfig(Section):
    tenant_id: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    user: str = ""
    base_url: str = "https://graph.microsoft.com/v1.0"
    token_url: str = "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token"


class MailboxConfig(Section):
    source: Literal["none", "imap", "graph"] = "none"
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
    oauth2: OAuth2Config = OAuth2Config()
    graph: GraphConfig = GraphConfig()

    @model_validator(mode="after")
    def _source_configured(self) -> MailboxConfig:
        if self.source == "imap" and not (self.host and self.username):
            raise ValueError("source 'imap' needs host and username")
        if self.source == "graph" and not (self.graph.tenant_id and self.graph.client_id and self.graph.user):
            raise ValueError("source 'graph' needs [mailbox.graph] tenant_id, client_id and user")
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


class DkimCheck(PolicyCheck):
    min_key_bits: int = Field(default=1024, ge=512, le=8192)


class DmarcCheck(PolicyCheck):
    quarantine: Literal["reject", "tag"] = "reject"


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
    dkim: DkimCheck = DkimCheck(policy="tag")
    dmarc: DmarcCheck = DmarcCheck()
    whitelist: WhitelistCheck = WhitelistCheck()
    owner_auth: OwnerAuthCheck = OwnerAuthCheck()
    rate_limits: RateLimits = RateLimits()


class LogConfig(Section):
    level: Literal["trace", "debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    """The whole configuration. Sections mirror the TOML file's tables."""

    model_config = SettingsConfigDict(
        env_prefix="RC_MTA_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )
    _toml_path: ClassVar[Path | None] = None

    inbound: InboundConfig = InboundConfig()
    signing: SigningConfig = SigningConfig()
    outbound: OutboundConfig = OutboundConfig()
    store: StoreConfig = StoreConfig()
    tasks: TasksConfig = TasksConfig()
    http: HttpConfig = HttpConfig()
    replies: RepliesConfig = RepliesConfig()
    dns: DnsConfig = DnsConfig()
    checks: ChecksConfig = ChecksConfig()
    mailbox: MailboxConfig = MailboxConfig()
    log: LogConfig = LogConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)

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


def load_settings(explicit_path: str | None = None) -> Settings:
    """Load and validate; any problem is one ConfigError line naming the key."""
    path = config_path(explicit_path)
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    Settings._toml_path = path
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, path)) from None
    except (OSError, ValueError) as exc:  # TOML syntax errors are ValueErrors
        raise ConfigError(f"{path}: {exc}") from None
    finally:
        Settings._toml_path = None


def _one_line(exc: ValidationError, path: Path | None) -> str:
    errors = exc.errors()
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    where = f"{path}: " if path else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}config key {key}: {message}{more}"
