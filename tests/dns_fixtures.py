"""DNS fixtures for the sender checks: a real NSD serving tests/zones/, a resolver aimed at
it, and one aimed at a server that never answers (for timeouts). Imported by the test
modules (and later conftest), so conftest's helpers are imported lazily to avoid a cycle."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from dnsserver import BlackHole, NsdServer

from rc_mta.dns import DnsResolver


def free_udp_tcp_port() -> int:
    """A loopback port free for both UDP and TCP, since NSD listens on both."""
    from conftest import free_port

    return free_port(udp=True)


def stop_nsd(server: NsdServer) -> None:
    """Stop NSD and close the stderr pipe NsdServer opened (else a ResourceWarning at exit)."""
    proc = server.proc
    server.stop()
    if proc is not None and proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture(scope="session")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdServer]:
    """One NSD for the whole run: it serves static zones, so tests cannot disturb each other."""
    from conftest import require_server

    require_server(shutil.which("nsd") is not None, "nsd (Debian package nsd)")
    server = NsdServer(tmp_path_factory.mktemp("nsd"), free_udp_tcp_port())
    server.start()
    try:
        yield server
    finally:
        stop_nsd(server)


@pytest.fixture
def resolver(dns_server: NsdServer) -> DnsResolver:
    """A fresh resolver per test, so cache contents and stats start empty."""
    return DnsResolver(["127.0.0.1"], dns_server.port, timeout=2.0)


@pytest.fixture
def black_hole_resolver() -> Iterator[DnsResolver]:
    """A resolver whose server never answers: every uncached lookup times out."""
    hole = BlackHole()
    try:
        yield DnsResolver(["127.0.0.1"], hole.port, timeout=1.0)
    finally:
        hole.close()
