"""SPF through pyspf and our resolver, against a real NSD serving tests/zones/spf.test.zone."""

from __future__ import annotations

import asyncio
import time

import spf
from dns_fixtures import black_hole_resolver as black_hole_resolver
from dns_fixtures import dns_server as dns_server
from dns_fixtures import resolver as resolver

from rc_mta.checks.spf import check_spf
from rc_mta.dns import DnsResolver


def test_spf_pass_when_client_is_listed(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.2", "alice@pass.spf.test", "mail.pass.spf.test"))
    assert verdict.result == "pass"
    assert verdict.reason == "sender SPF authorized"
    assert verdict.facts == {
        "domain": "pass.spf.test",
        "smtp.mailfrom": "alice@pass.spf.test",
        "smtp.helo": "mail.pass.spf.test",
    }


def test_spf_fail_when_client_not_listed(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.3", "alice@pass.spf.test", "liar.spf.test"))
    assert verdict.result == "fail"
    assert verdict.reason == "SPF fail - not authorized"


def test_spf_softfail_for_tilde_all(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.3", "bob@softfail.spf.test", "liar.spf.test"))
    assert verdict.result == "softfail"
    listed = asyncio.run(check_spf(resolver, "127.0.0.2", "bob@softfail.spf.test", "liar.spf.test"))
    assert listed.result == "pass"


def test_spf_neutral_for_question_mark_all(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.3", "bob@neutral.spf.test", "liar.spf.test"))
    assert verdict.result == "neutral"


def test_spf_none_when_domain_publishes_no_spf(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.2", "bob@noreply.spf.test", "mail.pass.spf.test"))
    assert verdict.result == "none"
    assert verdict.reason == "noreply.spf.test publishes no SPF record"
    assert verdict.facts["domain"] == "noreply.spf.test"


def test_spf_none_when_sender_domain_does_not_exist(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.2", "bob@nowhere.spf.test", "mail.pass.spf.test"))
    assert verdict.result == "none"


def test_spf_include_chain_three_deep_passes_the_last_listed_client(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.7", "ops@chain.spf.test", "mail.chain.spf.test"))
    assert verdict.result == "pass"
    other = asyncio.run(check_spf(resolver, "127.0.0.2", "ops@chain.spf.test", "mail.pass.spf.test"))
    assert other.result == "fail"


def test_mx_mechanism_passes_the_domains_mail_exchanger(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.5", "ops@mx.spf.test", "mx.sender.spf.test"))
    assert verdict.result == "pass"
    other = asyncio.run(check_spf(resolver, "127.0.0.6", "ops@mx.spf.test", "mail.evil.spf.test"))
    assert other.result == "fail"


def test_more_than_two_void_lookups_is_permerror(resolver: DnsResolver) -> None:
    # The record ends in ip4:127.0.0.2, so without the limit this client would pass.
    verdict = asyncio.run(check_spf(resolver, "127.0.0.2", "x@voidbomb.spf.test", "mail.pass.spf.test"))
    assert verdict.result == "permerror"
    assert "Void lookup limit" in verdict.reason


def test_more_than_ten_dns_mechanisms_is_permerror(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.2", "x@toomany.spf.test", "mail.pass.spf.test"))
    assert verdict.result == "permerror"
    assert "Too many DNS lookups" in verdict.reason


def test_exactly_ten_dns_mechanisms_is_allowed(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.2", "x@ten.spf.test", "mail.pass.spf.test"))
    assert verdict.result == "pass"


def test_syntax_error_in_record_is_permerror(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.2", "x@broken.spf.test", "mail.pass.spf.test"))
    assert verdict.result == "permerror"
    assert "bogus" in verdict.reason


def test_null_sender_is_checked_as_postmaster_at_helo(resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(resolver, "127.0.0.5", "", "helo.spf.test"))
    assert verdict.result == "pass"
    assert verdict.facts == {
        "domain": "helo.spf.test",
        "smtp.mailfrom": "postmaster@helo.spf.test",
        "smtp.helo": "helo.spf.test",
    }
    forged = asyncio.run(check_spf(resolver, "127.0.0.6", "", "helo.spf.test"))
    assert forged.result == "fail"


def test_helo_is_not_used_when_there_is_a_mail_from(resolver: DnsResolver) -> None:
    # helo.spf.test would pass 127.0.0.5; pass.spf.test (the MAIL FROM domain) does not.
    verdict = asyncio.run(check_spf(resolver, "127.0.0.5", "a@pass.spf.test", "helo.spf.test"))
    assert verdict.result == "fail"
    assert verdict.facts["domain"] == "pass.spf.test"


def test_ipv6_client_matches_ip6_mechanism(resolver: DnsResolver) -> None:
    assert asyncio.run(check_spf(resolver, "::1", "a@v6.spf.test", "relay.spf.test")).result == "pass"
    assert asyncio.run(check_spf(resolver, "::2", "a@v6.spf.test", "relay.spf.test")).result == "fail"


def test_dns_timeout_is_temperror_not_fail(black_hole_resolver: DnsResolver) -> None:
    verdict = asyncio.run(check_spf(black_hole_resolver, "127.0.0.2", "a@pass.spf.test", "mail.pass.spf.test"))
    assert verdict.result == "temperror"
    assert verdict.temporary
    assert "DNS timeout" in verdict.reason


def test_second_check_is_answered_from_the_cache(resolver: DnsResolver) -> None:
    first = asyncio.run(check_spf(resolver, "127.0.0.5", "ops@mx.spf.test", "mx.sender.spf.test"))
    queries, hits = resolver.stats.queries, resolver.stats.cache_hits
    second = asyncio.run(check_spf(resolver, "127.0.0.5", "ops@mx.spf.test", "mx.sender.spf.test"))
    assert first == second
    assert first.result == "pass"
    # The verdict itself was kept: no query, not even a read of the cached records.
    assert (resolver.stats.queries, resolver.stats.cache_hits) == (queries, hits)
    # Its records are still cached: evaluated again (other HELO), no query either.
    third = asyncio.run(check_spf(resolver, "127.0.0.5", "ops@mx.spf.test", "other.spf.test"))
    assert third.result == "pass"
    assert resolver.stats.queries == queries
    assert resolver.stats.cache_hits >= hits + 3  # TXT, MX, and the exchanger's A


def test_a_kept_verdict_lasts_no_longer_than_the_records_it_read(resolver: DnsResolver) -> None:
    # short.spf.test's TXT record has a TTL of 1 s.
    first = asyncio.run(check_spf(resolver, "127.0.0.2", "a@short.spf.test", "mail.pass.spf.test"))
    queries = resolver.stats.queries
    assert asyncio.run(check_spf(resolver, "127.0.0.2", "a@short.spf.test", "mail.pass.spf.test")) == first
    assert resolver.stats.queries == queries
    time.sleep(1.2)
    again = asyncio.run(check_spf(resolver, "127.0.0.2", "a@short.spf.test", "mail.pass.spf.test"))
    assert again.result == first.result == "pass"
    assert resolver.stats.queries == queries + 1  # the record was asked for again


def test_dns_trouble_is_never_kept(black_hole_resolver: DnsResolver) -> None:
    asyncio.run(check_spf(black_hole_resolver, "127.0.0.2", "a@pass.spf.test", "mail.pass.spf.test"))
    failures = black_hole_resolver.stats.failures
    verdict = asyncio.run(check_spf(black_hole_resolver, "127.0.0.2", "a@pass.spf.test", "mail.pass.spf.test"))
    assert verdict.result == "temperror"
    assert black_hole_resolver.stats.failures > failures  # asked again, not answered from a kept verdict


def test_concurrent_checks_each_use_their_own_resolver(resolver: DnsResolver, black_hole_resolver: DnsResolver) -> None:
    async def both() -> tuple[str, str]:
        dead, alive = await asyncio.gather(
            check_spf(black_hole_resolver, "127.0.0.2", "a@pass.spf.test", "mail.pass.spf.test"),
            check_spf(resolver, "127.0.0.2", "a@pass.spf.test", "mail.pass.spf.test"),
        )
        return dead.result, alive.result

    assert asyncio.run(both()) == ("temperror", "pass")
    assert resolver.stats.failures == 0
    assert black_hole_resolver.stats.failures >= 1


def test_pyspf_outside_a_check_never_falls_back_to_system_dns(resolver: DnsResolver) -> None:
    # Importing the check claimed pyspf's DNS hook; with no check running there is no resolver.
    result, _code, explanation = spf.query(i="127.0.0.2", s="a@pass.spf.test", h="mail.pass.spf.test").check()
    assert result == "temperror"
    assert "no resolver" in explanation
