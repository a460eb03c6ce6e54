"""Forward-confirmed reverse DNS against a real NSD (zones: 127.in-addr.arpa, spf.test)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import dns.reversename
import dnsserver
import pytest
from dns_fixtures import black_hole_resolver as black_hole_resolver
from dns_fixtures import dns_server as dns_server
from dns_fixtures import free_udp_tcp_port, stop_nsd
from dns_fixtures import resolver as resolver

from rc_mta.checks.rdns import check_rdns
from rc_mta.dns import DnsResolver


def test_fcrdns_passes_when_ptr_name_points_back(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(resolver, "127.0.0.2"))
    assert verdict.result == "pass"
    assert verdict.facts == {"ptr": "mail.pass.spf.test"}


def test_default_test_client_passes_fcrdns(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(resolver, "127.0.0.1"))
    assert (verdict.result, verdict.facts) == ("pass", {"ptr": "relay.spf.test"})


def test_fcrdns_fails_when_forward_name_points_elsewhere(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(resolver, "127.0.0.3"))
    assert verdict.result == "fail"
    assert verdict.reason == "127.0.0.3 → liar.spf.test does not resolve back to 127.0.0.3"


def test_fcrdns_fails_when_there_is_no_ptr(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(resolver, "127.0.0.4"))
    assert verdict.result == "fail"
    assert verdict.reason == "no PTR record for 127.0.0.4"


def test_one_confirming_name_among_several_ptrs_is_enough(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(resolver, "127.0.0.8"))
    assert (verdict.result, verdict.facts) == ("pass", {"ptr": "mail8.spf.test"})


def test_ipv4_client_seen_on_a_dual_stack_socket_is_checked_as_ipv4(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(resolver, "::ffff:127.0.0.4"))
    assert verdict.reason == "no PTR record for 127.0.0.4"
    passing = asyncio.run(check_rdns(resolver, "::ffff:127.0.0.7"))
    assert (passing.result, passing.facts) == ("pass", {"ptr": "mail.chain.spf.test"})


def test_dns_timeout_is_temperror_not_fail(black_hole_resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(black_hole_resolver, "127.0.0.2"))
    assert verdict.result == "temperror"
    assert verdict.temporary
    assert "DNS timeout" in verdict.reason


def test_second_check_of_same_client_is_answered_from_cache(resolver: DnsResolver) -> None:
    first = asyncio.run(check_rdns(resolver, "127.0.0.5"))
    queries, hits = resolver.stats.queries, resolver.stats.cache_hits
    second = asyncio.run(check_rdns(resolver, "127.0.0.5"))
    assert first == second
    assert first.facts == {"ptr": "mx.sender.spf.test"}
    # The verdict itself was kept: not even the cached PTR and A records were read again.
    assert (resolver.stats.queries, resolver.stats.cache_hits) == (queries, hits)
    resolver.clear()  # the records gone, the verdict goes with them
    assert asyncio.run(check_rdns(resolver, "127.0.0.5")) == first
    assert resolver.stats.queries == queries + 2  # PTR and A asked again


def test_dns_trouble_is_never_kept(black_hole_resolver: DnsResolver) -> None:
    asyncio.run(check_rdns(black_hole_resolver, "127.0.0.2"))
    failures = black_hole_resolver.stats.failures
    assert asyncio.run(check_rdns(black_hole_resolver, "127.0.0.2")).temporary
    assert black_hole_resolver.stats.failures > failures


def test_garbage_client_address_is_permerror(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(resolver, "not-an-ip"))
    assert verdict.result == "permerror"


# IPv6: reverse names live under ip6.arpa, so these tests run a second NSD serving our
# zones plus an ip6.arpa zone written here (::1 → relay.spf.test, which has AAAA ::1;
# ::3 → liar.spf.test, which has no AAAA; ::2 has no PTR).


def _ip6_zone() -> str:
    def ptr(ip: str, name: str) -> str:
        return f"{dns.reversename.from_address(ip).to_text()} PTR {name}"

    return "\n".join(
        [
            "$ORIGIN ip6.arpa.",
            "$TTL 300",
            "@ SOA ns.spf.test. hostmaster.spf.test. 2024010101 3600 600 86400 60",
            "@ NS ns.spf.test.",
            ptr("::1", "relay.spf.test."),
            ptr("::3", "liar.spf.test."),
            "",
        ]
    )


@pytest.fixture(scope="module")
def ip6_resolver_server(tmp_path_factory: pytest.TempPathFactory, dns_server: dnsserver.NsdServer) -> Iterator[int]:
    zones = tmp_path_factory.mktemp("zones6")
    for name in ("spf.test.zone", "127.in-addr.arpa.zone"):
        shutil.copy(Path(dnsserver.ZONES_DIR) / name, zones / name)
    (zones / "ip6.arpa.zone").write_text(_ip6_zone())
    server = dnsserver.NsdServer(tmp_path_factory.mktemp("nsd6"), free_udp_tcp_port())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dnsserver, "ZONES_DIR", zones)  # NsdServer reads it when writing its config
        server.start()
    try:
        yield server.port
    finally:
        stop_nsd(server)


@pytest.fixture
def ip6_resolver(ip6_resolver_server: int) -> DnsResolver:
    return DnsResolver(["127.0.0.1"], ip6_resolver_server, timeout=2.0)


def test_ipv6_client_passes_when_ptr_name_has_matching_aaaa(ip6_resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(ip6_resolver, "::1"))
    assert (verdict.result, verdict.facts) == ("pass", {"ptr": "relay.spf.test"})


def test_ipv6_client_without_ptr_fails(ip6_resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(ip6_resolver, "0:0::2"))
    assert verdict.result == "fail"
    assert verdict.reason == "no PTR record for ::2"


def test_ipv6_client_fails_when_ptr_name_has_only_an_ipv4_address(ip6_resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_rdns(ip6_resolver, "::3"))
    assert verdict.result == "fail"
    assert verdict.reason == "::3 → liar.spf.test does not resolve back to ::3"
