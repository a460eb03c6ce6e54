"""The sender-domain whitelist: exact domains, "*.D" for subdomains only, nothing more."""

from __future__ import annotations

from rc_mta.checks.whitelist import check_whitelist

ALLOWED = ["example.com", "*.corp.example"]


def test_listed_domain_passes_for_both_addresses() -> None:
    verdict = check_whitelist(ALLOWED, envelope_from="a@example.com", header_from="b@x.corp.example")
    assert verdict.result == "pass"
    assert verdict.facts == {"domains": "example.com,x.corp.example"}


def test_unlisted_header_from_fails_and_names_the_domain() -> None:
    verdict = check_whitelist(ALLOWED, envelope_from="a@example.com", header_from="boss@evil.test")
    assert verdict.result == "fail"
    assert verdict.reason == "sender domain evil.test is not whitelisted"
    assert verdict.facts == {"domains": "example.com,evil.test"}


def test_first_unlisted_domain_is_the_one_reported() -> None:
    verdict = check_whitelist(ALLOWED, envelope_from="a@first.test", header_from="b@second.test")
    assert verdict.reason == "sender domain first.test is not whitelisted"


def test_domain_match_ignores_case_and_trailing_dot() -> None:
    assert check_whitelist(["Example.COM."], envelope_from="A@EXAMPLE.com.").result == "pass"
    assert check_whitelist(["*.Corp.Example"], header_from="b@X.CORP.example.").result == "pass"


def test_wildcard_does_not_match_the_domain_itself() -> None:
    verdict = check_whitelist(["*.corp.example"], header_from="b@corp.example")
    assert verdict.result == "fail"
    assert verdict.reason == "sender domain corp.example is not whitelisted"


def test_plain_domain_does_not_match_its_subdomains() -> None:
    assert check_whitelist(["example.com"], header_from="b@mail.example.com").result == "fail"


def test_lookalike_suffix_is_not_a_subdomain() -> None:
    assert check_whitelist(["*.corp.example"], header_from="b@evilcorp.example").result == "fail"
    assert check_whitelist(["example.com"], header_from="b@notexample.com").result == "fail"


def test_null_sender_is_skipped_but_header_from_still_checked() -> None:
    assert check_whitelist(ALLOWED, envelope_from="", header_from="b@example.com").result == "pass"
    verdict = check_whitelist(ALLOWED, envelope_from="<>", header_from="b@evil.test")
    assert verdict.result == "fail"
    assert verdict.facts == {"domains": "evil.test"}


def test_no_address_at_all_is_none() -> None:
    verdict = check_whitelist(ALLOWED, envelope_from=None, header_from="")
    assert verdict.result == "none"
    assert verdict.facts == {"domains": ""}


def test_address_without_domain_fails() -> None:
    verdict = check_whitelist(ALLOWED, envelope_from="example.com")
    assert verdict.result == "fail"
    assert "has no domain" in verdict.reason


def test_domain_is_taken_after_the_last_at_sign() -> None:
    verdict = check_whitelist(ALLOWED, envelope_from='"x@example.com"@evil.test')
    assert verdict.result == "fail"
    assert verdict.facts == {"domains": "evil.test"}


def test_empty_whitelist_allows_nobody() -> None:
    assert check_whitelist([], envelope_from="a@example.com").result == "fail"
