"""TLS of the SMTP and LMTP listeners: the server context, its reload, and what a session
negotiated.

Every listener is handed one *front* context. Its SNI callback, which OpenSSL runs for every
ClientHello (with or without a server name), gives the handshake the *current* context. A
reload (SIGHUP, or the certificate or key file changing, as an ACME client renews them)
builds a whole new context from the files and, only once it loaded and proved itself, makes
it current: new handshakes get the new certificate, sessions already encrypted keep theirs,
and a broken renewal leaves the old pair serving (logged at ERROR).

The standard library does the work: ``ssl.SSLContext.load_cert_chain`` refuses a key that
does not match its certificate, and an in-memory handshake of the context with itself
(``inspect``) reads the certificate's names and expiry the way a client sees them, without
a parser of our own or a dependency (``cryptography`` is not one of rc-mta's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .. import metrics
from ..config import InboundTlsConfig
from ..errors import ConfigError

log = logging.getLogger("rc_mta.inbound")

# TLS 1.2 suites: forward secrecy and AEAD only (Mozilla's "intermediate" set without DHE).
# TLS 1.3 suites are OpenSSL's, all of them AEAD.
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# A certificate expiring sooner than this is worth a warning (check-config "!", the log).
EXPIRY_WARNING_DAYS = 14
# Where ``self_signed`` keeps the pair it makes.
SELF_SIGNED_DIR = Path("var/tls")
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: ``inspect`` reads an expired certificate's dates
# too (its expiry is ours to judge, not the handshake's).
_NO_CHECK_TIME = 0x200000


@dataclass(frozen=True)
class TlsFacts:
    """What one session negotiated: for the Received field, the log line and the metric."""

    version: str  # TLSv1.3
    cipher: str  # TLS_AES_256_GCM_SHA384
    bits: int

    def __str__(self) -> str:
        return f"{self.version} {self.cipher}"


def negotiated(transport: object) -> TlsFacts | None:
    """The TLS a session's transport speaks, or None in clear (asyncio's public
    ``get_extra_info("ssl_object")``, after STARTTLS and on the implicit TLS port alike)."""
    get = getattr(transport, "get_extra_info", None)
    ssl_object = get("ssl_object") if get is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    cipher = ssl_object.cipher()
    if cipher is None:
        return None
    name, version, bits = cipher
    return TlsFacts(ssl_object.version() or version, name, int(bits or 0))


def count_handshake(protocol: str, facts: TlsFacts | None) -> None:
    if facts is not None:
        metrics.TLS_SESSIONS.labels(protocol, facts.version, facts.cipher).inc()


@dataclass(frozen=True)
class CertificateInfo:
    """The certificate as clients see it."""

    subject: str
    names: tuple[str, ...]
    not_after: float  # Unix time

    def days_left(self, now: float | None = None) -> float:
        return (self.not_after - (time.time() if now is None else now)) / 86400

    def covers(self, hostname: str) -> bool:
        host = hostname.lower().rstrip(".")
        for name in self.names:
            if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
                return True
        return False

    def describe(self) -> str:
        expiry = time.strftime("%Y-%m-%d", time.gmtime(self.not_after))
        return f"{self.subject} ({', '.join(self.names) or 'no DNS names'}), valid until {expiry}"


def build_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context for the pair; a ConfigError in one line naming the file and why."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS: cannot read {exc.filename or cert_file}: no such file") from None
    except PermissionError as exc:
        raise ConfigError(f"TLS: cannot read {exc.filename or key_file}: permission denied") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"TLS: {key_file} is not the key of the certificate in {cert_file}") from None
        raise ConfigError(f"TLS: {cert_file} / {key_file} is not a PEM certificate and key: {exc.reason}") from None
    return context


def inspect(context: ssl.SSLContext, cert_file: Path) -> CertificateInfo:
    """Shake hands with ``context`` in memory, as a client that trusts the certificate
    itself, and read what it presented (subject, DNS names, expiry)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cafile=cert_file)
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | _NO_CHECK_TIME
    wires = [ssl.MemoryBIO() for _ in range(4)]
    server_side = context.wrap_bio(wires[0], wires[1], server_side=True)
    client_side = client.wrap_bio(wires[2], wires[3])
    done = 0
    try:
        for _ in range(8):  # a TLS 1.2 or 1.3 handshake takes at most three flights each way
            done = 0
            for side, inbox, outbox in ((client_side, wires[0], wires[3]), (server_side, wires[2], wires[1])):
                try:
                    side.do_handshake()
                    done += 1
                except ssl.SSLWantReadError:
                    pass
                if data := outbox.read():
                    inbox.write(data)
            if done == 2:
                break
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS: {cert_file}: a test handshake with it failed: {exc.reason or exc}") from None
    if done != 2:
        raise ConfigError(f"TLS: {cert_file}: a test handshake with it did not finish")
    seen = client_side.getpeercert()
    if not seen:
        raise ConfigError(f"TLS: {cert_file}: no certificate presented in a test handshake")
    subject = ", ".join(f"{pair[0]}={pair[1]}" for rdn in seen.get("subject", ()) for pair in rdn)
    names = tuple(str(pair[1]).lower() for pair in seen.get("subjectAltName", ()) if pair[0] == "DNS")
    not_after = ssl.cert_time_to_seconds(str(seen["notAfter"]))
    return CertificateInfo(subject or "no subject", names, float(not_after))


def self_signed_pair(hostname: str, directory: Path = SELF_SIGNED_DIR) -> tuple[Path, Path]:
    """A self-signed pair for ``hostname`` (made once, kept under ``directory``), with the
    ``openssl`` command: the standard library cannot make certificates, and ``cryptography``
    is not worth a dependency for a pair that is only for trying rc-mta out."""
    cert, key = directory / "self-signed.crt", directory / "self-signed.key"
    if cert.is_file() and key.is_file():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError(
            "TLS: no openssl command to make a self-signed certificate; set [inbound.tls] cert_file and key_file"
        )
    directory.mkdir(parents=True, exist_ok=True)
    # openssl writes the key with the umask's mode: make it ours alone first.
    key.touch(mode=0o600)
    os.chmod(key, 0o600)
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "365", "-subj", f"/CN={hostname}",
        "-addext", f"subjectAltName=DNS:{hostname}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        cert.unlink(missing_ok=True)
        key.unlink(missing_ok=True)
        why = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise ConfigError(f"TLS: openssl could not make a self-signed certificate: {why}")
    log.warning("TLS: made a self-signed certificate for %s in %s (for trying rc-mta out only)", hostname, cert)
    return cert, key


class TlsContexts:
    """The current server context of the process's listeners, and its reloads."""

    def __init__(self, cert_file: Path, key_file: Path, reload_interval: float = 60.0) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.reload_interval = reload_interval
        self.current, self.info = self._load()
        self._stamp = self._files_stamp()
        # Handed to every listener once; the SNI callback swaps in ``current`` per handshake.
        self.front = build_context(cert_file, key_file)
        self.front.sni_callback = self._pick

    @classmethod
    def from_config(cls, config: InboundTlsConfig, hostname: str) -> TlsContexts | None:
        if config.cert_file is not None and config.key_file is not None:
            return cls(config.cert_file, config.key_file, config.reload_interval)
        if config.self_signed:
            cert, key = self_signed_pair(hostname)
            return cls(cert, key, config.reload_interval)
        return None

    def _pick(self, ssl_object: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext) -> None:
        ssl_object.context = self.current

    def _load(self) -> tuple[ssl.SSLContext, CertificateInfo]:
        context = build_context(self.cert_file, self.key_file)
        info = inspect(context, self.cert_file)
        metrics.TLS_CERTIFICATE_EXPIRY.set(info.not_after)
        days = info.days_left()
        if days < 0:
            log.error("TLS: the certificate in %s has expired: %s", self.cert_file, info.describe())
        elif days < EXPIRY_WARNING_DAYS:
            log.warning("TLS: the certificate in %s expires in %.0f days: %s", self.cert_file, days, info.describe())
        return context, info

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self.cert_file, self.key_file):
            try:
                found = os.stat(path)  # follows symlinks: certbot's live/ links change target
                stamps.append((found.st_mtime_ns, found.st_size, found.st_ino))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    def reload(self, why: str) -> bool:
        """Build a new context from the files and make it current; on any trouble keep the
        one serving (and say so at ERROR). True when the new pair serves."""
        self._stamp = self._files_stamp()
        try:
            context, info = self._load()
        except (ConfigError, OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.error("TLS: reload (%s) failed, the previous certificate still serves: %s", why, exc)
            return False
        self.current, self.info = context, info
        log.warning("TLS: reloaded (%s): %s", why, info.describe(), extra={"reloaded": "tls"})
        return True

    def changed(self) -> bool:
        return self._files_stamp() != self._stamp

    async def watch(self) -> None:
        """Reload when the certificate or key file changes (ACME renewals): a stat of two
        files every ``reload_interval``; the reload itself runs off the event loop."""
        while True:
            await asyncio.sleep(self.reload_interval)
            if await asyncio.to_thread(self.changed):
                await asyncio.to_thread(self.reload, "the files changed")


def check_pair(config: InboundTlsConfig, hostname: str) -> tuple[str, bool]:
    """check-config's line for [inbound.tls]: what serves, and whether it needs a look
    (expires within EXPIRY_WARNING_DAYS, or does not name ``hostname``). Raises ConfigError
    for a pair that cannot serve (missing, unreadable, mismatched, expired)."""
    if config.cert_file is None or config.key_file is None:
        if config.self_signed:
            return "no cert_file: serve makes a self-signed pair under var/tls/ (for trying out only)", True
        return "off: no [inbound.tls] cert_file and key_file; replies arrive in clear", True
    info = inspect(build_context(config.cert_file, config.key_file), config.cert_file)
    days = info.days_left()
    if days < 0:
        raise ConfigError(f"TLS: the certificate in {config.cert_file} has expired: {info.describe()}")
    detail = f"{config.cert_file} matches its key: {info.describe()}"
    if days < EXPIRY_WARNING_DAYS:
        return f"{detail}; expires in {days:.0f} days: renew it", True
    if not info.covers(hostname):
        return f"{detail}; does not name [inbound] hostname {hostname} (MTA-STS senders will refuse it)", True
    return detail, False
