"""Fixtures that start real servers: rc-mta itself (as a subprocess, through its CLI),
and PostgreSQL schemas. A server a test needs that is missing fails the run when CI=true."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import secrets
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dns_fixtures import black_hole_resolver as black_hole_resolver  # fixtures for every module
from dns_fixtures import dns_server as dns_server
from dns_fixtures import resolver as resolver
from dnsserver import NsdServer
from launcher import LaunchedProcess, launcher
from processes import stop_process

ROOT = Path(__file__).resolve().parent.parent
REPLY_DOMAIN = "reply.example.test"


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy (its value is returned) or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def store_write_locked(db: Path) -> Iterator[None]:
    """Hold SQLite's write lock on rc-mta's store from another connection, as a busy or
    failing database would: rc-mta can still read (WAL) but not commit an action."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, timeout=5)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(60)
        conn.rollback()
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(5), "could not take the store's write lock"
        yield
    finally:
        release.set()
        holder.join()


# Servers get ports from below Linux's ephemeral range (32768 and up), so no client
# connection's source port takes one between free_port() and the server's bind; each
# pytest-xdist worker draws from its own slice, so two workers never hand out the same.
_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def _worker_ports() -> range:
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % count
    size = len(_PORTS) // count
    return range(_PORTS.start + worker * size, _PORTS.start + (worker + 1) * size)


def _bindable(port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(udp: bool = False) -> int:
    """A loopback port free now for a server started next (TCP, and UDP too with ``udp``),
    never handed out before in this process."""
    ports = _worker_ports()
    if len(_handed_out) > len(ports) // 2:
        _handed_out.clear()  # a long run: the early servers are long gone
    for _ in range(1000):
        port = random.choice(ports)
        if port in _handed_out:
            continue
        if _bindable(port, socket.SOCK_STREAM) and (not udp or _bindable(port, socket.SOCK_DGRAM)):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {ports}")


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | LaunchedProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"rc-mta exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"rc-mta did not listen on {port} within {timeout}s")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


@dataclass
class RcMta:
    """One rc-mta instance: its config file, its server process, and its CLI."""

    workdir: Path
    settings: dict[str, dict[str, Any]]
    smtp_port: int = 0
    lmtp_port: int = 0
    proc: subprocess.Popen[bytes] | LaunchedProcess | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "rc-mta.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "rc-mta.toml"

    def write_config(self) -> None:
        lines = []
        for section, values in self.settings.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        self.config_path.write_text("\n".join(lines) + "\n")

    def cli(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = launcher().run(
            ["--config", str(self.config_path), *args], cwd=self.workdir, env={**os.environ, **(env or {})}
        )
        if check and result.returncode != 0:
            raise AssertionError(f"rc-mta {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    @property
    def http_url(self) -> str:
        return "http://" + str(self.settings["http"]["listen"])

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def start(self) -> None:
        self.write_config()
        log = self.log_path.open("ab")
        with log:
            self.proc = launcher().popen(
                ["--config", str(self.config_path), "serve"],
                cwd=self.workdir,
                stdout=log.fileno(),
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.smtp_port, self.proc)
        if self.lmtp_port:
            wait_for_port(self.lmtp_port, self.proc)
        http_listen = str(self.settings.get("http", {}).get("listen", ""))
        if http_listen:
            wait_for_port(int(http_listen.rsplit(":", 1)[1]), self.proc)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # The walk-through, as a user types it.
    def add_task(self, title: str = "Approve deploy to prod", owner: str = "alice@example.com") -> str:
        out = self.cli("task", "add", "--title", title, "--owner", owner).stdout
        return out.strip().splitlines()[-1]

    def request(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.cli_json("request", task_id)
        return result

    def task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.cli_json("task", "show", task_id)
        return result


def make_rc_mta(workdir: Path, **overrides: dict[str, Any]) -> RcMta:
    smtp_port, lmtp_port = free_port(), free_port()
    settings: dict[str, dict[str, Any]] = {
        "inbound": {
            "listen": f"127.0.0.1:{smtp_port}",
            "lmtp_listen": f"127.0.0.1:{lmtp_port}",
            "reply_domain": REPLY_DOMAIN,
            "hostname": "mx.reply.example.test",
            "max_message_size": 64 * 1024,
        },
        "signing": {"keys": {1: secrets.token_hex(32)}, "active_key": 1, "request_ttl": "1d"},
        "outbound": {"transport": "outbox", "outbox_dir": str(workdir / "outbox")},
        "store": {"url": f"sqlite:///{workdir / 'rc-mta.db'}", "busy_timeout": "1s"},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
    }
    for section, values in overrides.items():
        settings.setdefault(section, {}).update(values)
    return RcMta(workdir, settings, smtp_port=smtp_port, lmtp_port=lmtp_port)


def instances_sharing(tmp_path: Path, store_url: str, webhook_url: str, webhook_secret: str) -> list[RcMta]:
    """Two rc-mta instances as behind one reply domain, not started: one store, one signing
    key, one webhook backend (a test adds what each polls or listens on)."""
    instances: list[RcMta] = []
    for name in ("a", "b"):
        server = make_rc_mta(tmp_path / name)
        server.settings["store"]["url"] = store_url
        server.settings["tasks"] = {
            "backend": "webhook",
            "webhook": {"url": webhook_url, "secret": webhook_secret, "timeout": "5s"},
        }
        if instances:
            server.settings["signing"] = instances[0].settings["signing"]
        instances.append(server)
    return instances


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcMta]:
    """A running rc-mta on its embedded default, shared by one test module."""
    server = make_rc_mta(tmp_path_factory.mktemp("rc-mta"))
    server.start()
    yield server
    server.stop()


def with_real_dns(server: RcMta, dns: NsdServer) -> RcMta:
    """Checks on, as in production: no exempt networks, DNS from the test NSD, only
    127.0.0.1 trusted as a relay (clients bind 127.0.0.2, .3, ... to be someone else)."""
    server.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": "2s"}
    server.settings["checks"] = {"exempt_networks": [], "authserv_id": "mx.reply.example.test"}
    server.settings["inbound"]["trusted_relays"] = ["127.0.0.1/32"]
    return server


@pytest.fixture(scope="module")
def auth_rc(tmp_path_factory: pytest.TempPathFactory, dns_server: NsdServer) -> Iterator[RcMta]:
    """A running rc-mta that authenticates senders against the test zones."""
    server = with_real_dns(make_rc_mta(tmp_path_factory.mktemp("rc-mta-auth")), dns_server)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_rc(tmp_path: Path) -> Iterator[RcMta]:
    """An rc-mta of the test's own, not yet started: the test may change its settings."""
    server = make_rc_mta(tmp_path)
    yield server
    server.stop()


def require_server(available: bool, what: str) -> None:
    """Skip locally when a server is missing; in CI, a missing server is a failure."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI but is not available")
    pytest.skip(f"{what} is not available")


class PostgresCluster:
    """A throw-away PostgreSQL cluster in a temporary directory, from Debian's own binaries
    (initdb, pg_ctl), on a free loopback port with trust auth and a database ``test``: the
    machine's cluster is never used. Durability is off (fsync, synchronous_commit): the data
    lives only as long as the run. As root, the server runs as the ``postgres`` user (or
    ``nobody``), since PostgreSQL refuses to run as root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="rc-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgresql.log"
        self.port = 0
        self.user: str | None = None
        if os.getuid() == 0:
            self.user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.dir, self.user)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def _run(self, *argv: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, user=self.user, cwd=self.dir)
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{Path(argv[0]).name} failed: {result.stderr.strip()}\n{log}")

    def start(self) -> None:
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        self._run(*initdb, "--no-sync", "--no-instructions")
        for attempt in range(5):  # a port taken between free_port() and the bind: take another
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log_path),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                )
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        import psycopg

        with psycopg.connect(self.url.replace("/test", "/postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE test")

    def stop(self) -> None:
        if self.port:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL's binaries (package postgresql), if installed."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0) if found else None


def _reachable(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_base_url() -> Iterator[str]:
    """A PostgreSQL server for the run: $RC_MTA_TEST_PG if set, else a throw-away cluster
    of this test process's own (each xdist worker starts one)."""
    configured = os.environ.get("RC_MTA_TEST_PG")
    if configured:
        require_server(_reachable(configured), f"PostgreSQL at $RC_MTA_TEST_PG ({configured})")
        yield configured
        return
    bindir = postgres_bindir()
    require_server(bindir is not None, "PostgreSQL's initdb and pg_ctl (Debian package postgresql)")
    assert bindir is not None
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_base_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    import psycopg

    schema = "rc_test_" + secrets.token_hex(6)
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{pg_base_url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg_base_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
