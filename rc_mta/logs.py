"""Logging for people and for log pipelines, switchable while running, that never shows a secret.

Levels include ``trace`` (the SMTP/IMAP protocol exchange, the seed's JavaMail debug).
Formats are ``text`` (one readable line) or ``json`` (one object per line, structured
fields from ``extra={...}`` kept as keys). A running service is steered with signals, as
mail administrators steer their other daemons:

* SIGUSR1 turns ``trace`` on, SIGUSR2 goes back to the configured level;
* SIGHUP re-reads ``[log] level`` and ``format`` from the config file (nothing else is
  applied without a restart, and the log line says so).

The pid file (``var/rc-mta.pid`` under the working directory) tells ``rc-mta log-level``
whom to signal. ``sd_notify`` tells systemd (Type=notify) when the service is ready.

Much of what is logged comes from outside (addresses, HELO names, headers). Neither format
lets it forge a line or drive the terminal: control characters are escaped in the message
and every field, and in ``text`` the lines of a traceback are indented, so every line that
starts at column 0 is a record of its own.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .safetext import escape_controls, has_unsafe, json_escapes

# Every CLI call imports this module, ``--help`` too: asyncio and pydantic only when used.
if TYPE_CHECKING:
    import asyncio

    from pydantic import BaseModel

    from .config import Settings

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = ("trace", "debug", "info", "warning", "error")
FORMATS = ("text", "json")
PIDFILE = Path("var/rc-mta.pid")
# Third-party loggers that write the protocol exchange at DEBUG: shown only at trace.
PROTOCOL_LOGGERS = ("mail.log", "aioimaplib")
MASK = "***"

log = logging.getLogger("rc_mta")

# Attributes every LogRecord has; anything else on a record came from ``extra={...}``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

# Field names whose values are secrets wherever they appear (config keys, URLs, log text).
_SECRET_NAMES = r"(?:password|passwd|pwd|secret|api_?key|tokens?|keys)"
_SECRET_FIELD = re.compile(rf"(?i)\w{{0,64}}{_SECRET_NAMES}")
# Credential shapes in free text, in one pass. Log lines carry what clients send (an SPF
# explanation, a MIME parameter, a protocol line), so every alternative starts at a literal
# keyword and allows only bounded runs before the value it masks: the time is linear in the
# line whatever it holds (tests/test_linear_regex.py). Each alternative's named group is the
# part kept; what follows it is the secret.
_CREDENTIALS = (
    r"(?i)"
    # Authorization: Bearer ..., Basic ...
    r"(?P<scheme>\b(?:bearer|basic)[ \t]{1,16})[A-Za-z0-9._~+/=-]{8,}"
    # user:password@host in URLs
    r"|(?P<userinfo>://[^/\s:@]{0,256}:)[^/\s@]{1,256}(?=@)"
    # SMTP AUTH and IMAP AUTHENTICATE in a protocol trace
    r"|(?P<sasl>\bAUTH(?:ENTICATE)?[ \t]{1,16}(?:PLAIN|LOGIN|XOAUTH2|OAUTHBEARER|CRAM-MD5)[ \t]{1,16})\S+"
    # IMAP "tag LOGIN user password"
    r"|(?P<login>\b[A-Za-z0-9]{1,32}[ \t]{1,16}(?-i:LOGIN)[ \t]{1,16}\S{1,512}[ \t]{1,16})\S+"
    # x-release-personal-token and similar headers
    r"|(?P<header>(?<=\w)-token[ \t]{0,16}:[ \t]{0,16})\S+"
    # password=..., "client_secret": "...", token: ...
    rf"|(?P<named>\b\w{{0,64}}{_SECRET_NAMES}\b[\"']?[ \t]{{0,16}}[=:][ \t]{{0,16}}[\"']?)(?!\*\*\*)[^\s\"',;&}}]+"
)


@cache
def _credentials() -> re.Pattern[str]:
    """``_CREDENTIALS`` compiled when a text first may hold one: every CLI call imports this
    module, most never log, and the pattern takes milliseconds to compile (issue 17)."""
    return re.compile(_CREDENTIALS)


# Every alternative above starts at one of these words (case aside): text holding none of
# them cannot match, and most log text holds none. Looking for them first is one cheap
# scan per string instead of the full pattern tried at every position.
_CREDENTIAL_WORDS = (
    "bearer",
    "basic",
    "://",
    "auth",
    "login",
    "token",
    "passw",
    "pwd",
    "secret",
    "apikey",
    "api_key",
    "keys",
)


def _may_hold_credential(text: str) -> bool:
    lowered = text.lower()
    for word in _CREDENTIAL_WORDS:  # a loop, not any(<generator>): this runs for every field of every line
        if word in lowered:
            return True
    return False


@lru_cache(maxsize=256)
def _is_secret_field(name: str) -> bool:
    """A structured field named like a secret (``password``, ``api_key``…): masked whole.
    Field names are ours (``extra={...}``), so the cache stays small."""
    return _SECRET_FIELD.fullmatch(name) is not None


def _keep_name(match: re.Match[str]) -> str:
    kept = match.group(match.lastgroup) if match.lastgroup else ""
    return kept + MASK


def level_number(level: str) -> int:
    """A configured level name as the logging module's number (``trace`` is ours)."""
    if level == "trace":
        return TRACE
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")
    return number


# Secrets ---------------------------------------------------------------------------------


def secret_values(settings: BaseModel) -> list[str]:
    """Every secret the configuration holds: SecretStr fields (passwords, signing keys, API
    tokens) and the password of the store URL. Their literal values are masked in every log line."""
    from pydantic import BaseModel, SecretStr

    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(settings)
    store = getattr(settings, "store", None)
    url = getattr(store, "url", "")
    match = re.match(r"^[a-z0-9+]+://[^/@:]*:([^/@]+)@", url or "")
    if match:
        found.append(match.group(1))
    # Longest first, so a secret that contains another is masked whole.
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the configured secret values (found as they are, not by pattern) and
    anything shaped like a credential replaced by ***; linear in the text's length."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _credentials().sub(_keep_name, text) if _may_hold_credential(text) else text


class SecretFilter(logging.Filter):
    """Masks secrets in the message, its structured fields and its traceback before any
    handler formats it. On the handler, so records of every logger pass through it."""

    # Short texts found to hold no secret, kept so that the same text (a reply's sentence,
    # a reason, a client's address: most of a refusal's line) is not read again; only
    # clean ones, so no secret is kept. Emptied when full: a bound, whatever clients send.
    CLEAN_KEPT = 1024
    CLEAN_LENGTH = 256

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    @secrets.setter
    def secrets(self, secrets: Iterable[str]) -> None:
        """New secrets: every text is read again (one found clean may hold one of them)."""
        self._secrets = tuple(secrets)
        self._clean: set[str] = set()

    def _masked(self, text: str) -> str:
        if text in self._clean:
            return text
        masked = mask_secrets(text, self.secrets)
        if masked == text and len(text) <= self.CLEAN_LENGTH:
            if len(self._clean) >= self.CLEAN_KEPT:
                self._clean.clear()
            self._clean.add(text)
        return masked

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._masked(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text, self.secrets)
        fields = record.__dict__
        for key in fields.keys() - _RECORD_ATTRS:  # the structured fields (``extra={...}``) alone
            if _is_secret_field(key):  # a named secret: masked whole, its text unread
                fields[key] = MASK
            elif isinstance(value := fields[key], str):
                fields[key] = self._masked(value)
        return True


# Formats ---------------------------------------------------------------------------------


def _fields(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The structured fields, in the order given."""
    return [(k, v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")]


class TextFormatter(logging.Formatter):
    """``2026-01-02 10:00:00,123 INFO rc_mta.pipeline message key=value ...``

    One line per record, control characters escaped; a traceback follows on lines indented
    by two spaces."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The library's default time format, with the date and time of a second made once
        for every line written in it (strftime costs more than the rest of a line)."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime(self.default_time_format, self.converter(record.created)))
        return f"{self._second[1]},{int(record.msecs):03d}"  # the library's default_msec_format

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = escape_controls(self.formatMessage(record))
        extra = " ".join(f"{key}={_text_value(value)}" for key, value in _fields(record))
        if extra:
            line = f"{line} {extra}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for details in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if details:
                line += "".join(f"\n  {escape_controls(part)}" for part in details.split("\n"))
        return line


_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _text_value(value: Any) -> str:
    """A field's value bare, or JSON-quoted (and so escaped) when it holds space, quote,
    equals sign or a control character."""
    text = str(value)
    quote = not text or _NEEDS_QUOTES.search(text) is not None or has_unsafe(text)
    return encode_basestring_ascii(text) if quote else text  # json.dumps(text), without its set-up


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record):
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        # json escapes C0 controls; DEL, C1, separators, bidi and lone surrogates it leaves
        # raw inside strings, where a \u escape means the same and shows on no terminal.
        return json.dumps(entry, ensure_ascii=False, default=str).translate(json_escapes())


# Set-up and runtime changes ----------------------------------------------------------------


@dataclass
class _Runtime:
    """What the running process was configured with, so signals can go back to it."""

    level: str = "info"
    fmt: str = "text"
    secrets: list[str] = field(default_factory=list)
    config_file: Path | None = None
    handler: logging.Handler | None = None
    pidfile: Path | None = None
    pidfile_lock: int | None = None  # the open pid file, locked while we run


_runtime = _Runtime()


def setup_logging(
    level: str, fmt: str = "text", *, secrets: Iterable[str] = (), config_file: Path | None = None
) -> None:
    """Log to stderr (journald and ``docker logs`` read it) in the chosen format.

    ``secrets`` are masked wherever they appear; ``config_file`` is the file SIGHUP re-reads.
    Calling it again replaces the handler it installed before.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (one of {', '.join(FORMATS)})")
    _runtime.level, _runtime.fmt = level, fmt
    _runtime.secrets = list(secrets)
    if config_file is not None:
        _runtime.config_file = config_file
    root = logging.getLogger()
    if _runtime.handler is not None:
        root.removeHandler(_runtime.handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter(_runtime.secrets))
    root.addHandler(handler)
    _runtime.handler = handler
    # Neither format shows where a line was logged from, nor which thread or process logged
    # it: the stack walk and the look-ups that find them for every record are skipped, as
    # the logging HOWTO's "Optimization" section advises.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    set_level(level)


def set_level(level: str) -> None:
    """Change the level now; the protocol loggers speak only at trace."""
    number = level_number(level)
    logging.getLogger().setLevel(number)
    for name in PROTOCOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if number <= TRACE else logging.WARNING)


def current_level() -> str:
    number = logging.getLogger().getEffectiveLevel()
    return "trace" if number <= TRACE else logging.getLevelName(number).lower()


def install_runtime_controls(
    loop: asyncio.AbstractEventLoop, settings: Settings, also_on_reload: Callable[[], object] | None = None
) -> None:
    """SIGUSR1 → trace, SIGUSR2 → configured level, SIGHUP → re-read ``[log]`` (and run
    ``also_on_reload``: the TLS certificate's reload); and the pid file ``rc-mta log-level``
    signals. Called by ``Service.serve`` once its loop runs."""
    _runtime.level, _runtime.fmt = settings.log.level, settings.log.format
    loop.add_signal_handler(signal.SIGUSR1, _trace_on)
    loop.add_signal_handler(signal.SIGUSR2, _trace_off)

    def on_hup() -> None:
        _reload(settings)
        if also_on_reload is not None:
            also_on_reload()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        write_pidfile(PIDFILE)
    except OSError as exc:  # the signals still work; only ``rc-mta log-level`` cannot find us
        log.warning("cannot write pid file %s (%s): rc-mta log-level will not find this process", PIDFILE, exc)


def _trace_on() -> None:
    set_level("trace")
    log.warning("log level trace (SIGUSR1): protocol exchanges are logged; SIGUSR2 turns it off")


def _trace_off() -> None:
    set_level(_runtime.level)
    log.warning("log level %s (SIGUSR2): back to the configured level", _runtime.level)


def _reload(running: Settings) -> None:
    """Apply a changed ``[log]`` section; report other changed sections as needing a restart."""
    from .config import load_settings
    from .errors import RcMtaError

    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        where = str(_runtime.config_file) if _runtime.config_file is not None else None
        fresh = load_settings(where)
    except RcMtaError as exc:
        log.error("reload (SIGHUP) failed, nothing changed: %s", exc)
        sd_notify("READY=1")
        return
    before = (_runtime.level, _runtime.fmt)
    setup_logging(fresh.log.level, fresh.log.format, secrets=secret_values(fresh))
    changed = [
        name for name in type(running).model_fields if name != "log" and getattr(running, name) != getattr(fresh, name)
    ]
    restart = (
        f"; changed and needing a restart: {', '.join(changed)}"
        if changed
        else "; every other setting needs a restart to change"
    )
    log.warning(
        "reloaded %s (SIGHUP): log level %s → %s, format %s → %s%s",
        _runtime.config_file or "config from the environment",
        before[0],
        fresh.log.level,
        before[1],
        fresh.log.format,
        restart,
        extra={"reloaded": "log", "restart_needed": changed},
    )
    sd_notify("READY=1")


# Pid file --------------------------------------------------------------------------------


def write_pidfile(path: Path) -> None:
    """Write our pid (removed again at exit) so ``rc-mta log-level`` finds us, and hold a lock
    on the file while we run: a second ``serve`` here is refused (RcMtaError) instead of
    taking the file over and deleting it when it exits. The kernel drops the lock of a
    process that dies, so a stale file never blocks a start."""
    import fcntl

    from .errors import RcMtaError

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise RcMtaError(f"rc-mta is already running here (pid {other}, pid file {path}): stop it first") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _runtime.pidfile, _runtime.pidfile_lock = path.resolve(), fd
    atexit.register(_remove_pidfile, _runtime.pidfile, os.getpid())


def _remove_pidfile(path: Path, pid: int) -> None:
    try:
        if path.read_text().strip() == str(pid):
            path.unlink()
    except OSError:
        pass


def running_pid(path: Path = PIDFILE) -> int:
    """The pid of the running service from its pid file; ProcessLookupError when none runs."""
    try:
        pid = int(path.read_text().strip())
    except FileNotFoundError:
        raise ProcessLookupError(f"no pid file {path}: is rc-mta serve running in this directory?") from None
    except (OSError, ValueError) as exc:
        raise ProcessLookupError(f"unreadable pid file {path}: {exc}") from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise ProcessLookupError(f"stale pid file {path}: process {pid} is not running") from None
    except PermissionError:
        pass  # running, as another user: signalling will say whether we may
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ")
        except OSError:
            argv = b"rc-mta"
        if b"rc-mta" not in argv and b"rc_mta" not in argv:
            raise ProcessLookupError(f"stale pid file {path}: process {pid} is not rc-mta")
    return pid


# systemd readiness -------------------------------------------------------------------------


def sd_notify(state: str) -> bool:
    """Tell systemd our state (``READY=1``, ``STOPPING=1``...) over $NOTIFY_SOCKET.

    The sd_notify protocol is one datagram on a Unix socket: no library needed. Returns
    False when not run by systemd with Type=notify (no socket), True once sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.send(state.encode(), socket.MSG_DONTWAIT)  # a listener that stopped reading never blocks us
    except OSError as exc:
        log.warning("sd_notify %s to %s failed: %s", state.split("\n", 1)[0], address.lstrip("\0"), exc)
        return False
    return True
