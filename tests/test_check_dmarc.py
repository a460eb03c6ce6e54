"""DMARC against real DNS (NSD serving tests/zones/dmarc.test.zone and friends): one
subdomain of dmarc.test per policy case, plus end-to-end runs with real DKIM signatures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dkim
import pytest
from dns_fixtures import black_hole_resolver as black_hole_resolver
from dns_fixtures import dns_server as dns_server
from dns_fixtures import resolver as resolver

from rc_mta.checks._base import Verdict
from rc_mta.checks.dkim import DkimSignature, check_dkim
from rc_mta.checks.dmarc import (
    DmarcRecord,
    aligned,
    check_dmarc,
    find_dmarc_record,
    organizational_domain,
    parse_dmarc_record,
)
from rc_mta.dns import DnsResolver

KEYS = Path(__file__).parent / "keys"


def passing(domain: str) -> DkimSignature:
    return DkimSignature(domain, "sel", "pass", "signature verified", 2048)


def failing(domain: str) -> DkimSignature:
    return DkimSignature(domain, "sel", "fail", "signature did not verify", 2048)


def dmarc(
    resolver: DnsResolver,
    from_domain: str,
    spf: tuple[str, str | None] = ("none", None),
    dkim_sigs: list[DkimSignature] | None = None,
) -> Verdict:
    return asyncio.run(check_dmarc(resolver, from_domain, spf[0], spf[1], dkim_sigs or []))


def test_aligned_dkim_passes_a_reject_policy(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "reject.dmarc.test", dkim_sigs=[passing("reject.dmarc.test")])
    assert verdict.result == "pass"
    assert verdict.facts == {
        "policy": "reject",
        "domain": "reject.dmarc.test",
        "record_domain": "reject.dmarc.test",
        "spf_aligned": "no",
        "dkim_aligned": "yes",
        "adkim": "r",
        "aspf": "r",
    }


def test_nothing_aligned_under_reject_policy_fails_with_policy_reject(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "reject.dmarc.test", spf=("pass", "evil.test"), dkim_sigs=[passing("evil.test")])
    assert verdict.result == "fail"
    assert verdict.facts["policy"] == "reject"
    assert (verdict.facts["spf_aligned"], verdict.facts["dkim_aligned"]) == ("no", "no")
    assert "nothing aligned with reject.dmarc.test" in verdict.reason


def test_quarantine_policy_is_reported_and_other_txt_records_are_ignored(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "quarantine.dmarc.test")
    assert verdict.result == "fail"
    assert verdict.facts["policy"] == "quarantine"


def test_monitor_only_policy_still_fails_but_says_none(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "monitor.dmarc.test", dkim_sigs=[failing("monitor.dmarc.test")])
    assert verdict.result == "fail"
    assert verdict.facts["policy"] == "none"
    assert verdict.facts["dkim_aligned"] == "no"


def test_domain_without_record_has_no_dmarc_result(resolver: DnsResolver) -> None:
    # evil.test publishes no _dmarc record, and it is its own organizational domain.
    verdict = dmarc(resolver, "evil.test", spf=("pass", "evil.test"))
    assert verdict.result == "none"
    assert verdict.reason == "no DMARC record for evil.test"


def test_subdomain_without_record_uses_the_organizational_sp_policy(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "news.dmarc.test")
    assert verdict.result == "fail"
    assert verdict.facts["record_domain"] == "dmarc.test"
    assert verdict.facts["policy"] == "quarantine"  # sp=, not the p=reject of dmarc.test itself


def test_organizational_domain_itself_uses_p_not_sp(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "dmarc.test")
    assert verdict.facts["policy"] == "reject"
    assert verdict.facts["record_domain"] == "dmarc.test"


def test_subdomain_without_sp_falls_back_to_p(resolver: DnsResolver) -> None:
    # good.test has p=reject and no sp=.
    verdict = dmarc(resolver, "mail.good.test")
    assert (verdict.facts["policy"], verdict.facts["record_domain"]) == ("reject", "good.test")


def test_relaxed_alignment_accepts_a_parent_domain_signature(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "reject.dmarc.test", dkim_sigs=[passing("dmarc.test")])
    assert verdict.result == "pass"
    assert verdict.facts["dkim_aligned"] == "yes"


def test_strict_alignment_requires_the_exact_from_domain(resolver: DnsResolver) -> None:
    parent = dmarc(resolver, "strict.dmarc.test", spf=("pass", "dmarc.test"), dkim_sigs=[passing("dmarc.test")])
    assert parent.result == "fail"
    assert (parent.facts["spf_aligned"], parent.facts["dkim_aligned"]) == ("no", "no")
    exact = dmarc(resolver, "strict.dmarc.test", dkim_sigs=[passing("Strict.DMARC.test.")])
    assert exact.result == "pass"


def test_one_microsoft_365_tenant_does_not_align_with_another() -> None:
    # Not in the public suffix list, yet each <tenant>.onmicrosoft.com is another customer's.
    assert organizational_domain("mail.Contoso.onmicrosoft.com.") == "contoso.onmicrosoft.com"
    assert not aligned("fabrikam.onmicrosoft.com", "contoso.onmicrosoft.com", "r")
    assert aligned("contoso.onmicrosoft.com", "contoso.onmicrosoft.com", "s")


def test_spf_alone_can_align(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "quarantine.dmarc.test", spf=("pass", "bounces.dmarc.test"))
    assert verdict.result == "pass"
    assert (verdict.facts["spf_aligned"], verdict.facts["dkim_aligned"]) == ("yes", "no")


def test_spf_softfail_on_the_right_domain_does_not_align(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "quarantine.dmarc.test", spf=("softfail", "quarantine.dmarc.test"))
    assert verdict.result == "fail"
    assert verdict.facts["spf_aligned"] == "no"


def test_failed_dkim_signature_of_the_from_domain_does_not_align(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "reject.dmarc.test", dkim_sigs=[failing("reject.dmarc.test"), passing("evil.test")])
    assert verdict.result == "fail"


def test_two_dmarc_records_mean_no_dmarc_processing(resolver: DnsResolver) -> None:
    verdict = dmarc(resolver, "twice.dmarc.test", dkim_sigs=[passing("twice.dmarc.test")])
    assert verdict.result == "none"
    assert "2 DMARC records at _dmarc.twice.dmarc.test" in verdict.reason


def test_dns_timeout_is_a_temporary_error(black_hole_resolver: DnsResolver) -> None:
    verdict = dmarc(black_hole_resolver, "reject.dmarc.test", dkim_sigs=[passing("reject.dmarc.test")])
    assert verdict.result == "temperror"
    assert verdict.temporary


def test_record_is_found_where_published(resolver: DnsResolver) -> None:
    record = asyncio.run(find_dmarc_record(resolver, "quarantine.dmarc.test"))
    assert record == DmarcRecord("quarantine", None, "r", "r", 50, "quarantine.dmarc.test")


def test_evil_signature_on_good_from_passes_dkim_but_fails_dmarc(resolver: DnsResolver) -> None:
    message = b"From: Alice <alice@good.test>\r\nTo: tasks@reply.example.test\r\nSubject: Re: deploy\r\n\r\napprove\r\n"
    signed = dkim.sign(message, b"evil", b"evil.test", (KEYS / "evil-sel2048.pem").read_bytes()) + message
    dkim_verdict, signatures = asyncio.run(check_dkim(resolver, signed))
    assert dkim_verdict.result == "pass"
    verdict = dmarc(resolver, "good.test", spf=("pass", "evil.test"), dkim_sigs=signatures)
    assert verdict.result == "fail"
    assert verdict.facts["policy"] == "reject"
    assert verdict.facts["dkim_aligned"] == "no"


def test_real_signature_of_the_organizational_domain_passes_subdomain_from(resolver: DnsResolver) -> None:
    message = b"From: ops@reject.dmarc.test\r\nTo: tasks@reply.example.test\r\nSubject: ok\r\n\r\napprove\r\n"
    signed = dkim.sign(message, b"sel", b"dmarc.test", (KEYS / "dmarc-sel2048.pem").read_bytes()) + message
    _, signatures = asyncio.run(check_dkim(resolver, signed))
    verdict = dmarc(resolver, "reject.dmarc.test", dkim_sigs=signatures)
    assert verdict.result == "pass"
    assert verdict.facts["dkim_aligned"] == "yes"


@pytest.mark.parametrize(
    ("domain", "organizational"),
    [
        ("a.b.good.test", "good.test"),
        ("good.test", "good.test"),
        ("mail.example.co.uk", "example.co.uk"),
        ("Mail.Example.COM.", "example.com"),
        ("co.uk", "co.uk"),
    ],
)
def test_organizational_domain_comes_from_the_public_suffix_list(domain: str, organizational: str) -> None:
    assert organizational_domain(domain) == organizational


def test_record_tags_have_rfc_defaults_and_bad_values_fall_back() -> None:
    assert parse_dmarc_record("v=DMARC1; p=Reject", "x.test") == DmarcRecord("reject", None, "r", "r", 100, "x.test")
    odd = parse_dmarc_record("v=DMARC1;p=quarantine;sp=bogus;adkim=s;aspf=x;pct=250", "x.test")
    assert odd == DmarcRecord("quarantine", None, "s", "r", 100, "x.test")
    assert parse_dmarc_record("v=DMARC1; rua=mailto:r@x.test", "x.test").policy == "none"
