"""The policy table: what each check's verdict answers, under each configuration."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest

from rc_mta import smtp_replies as R
from rc_mta.checks import CheckContext, Verdict
from rc_mta.checks._base import Result
from rc_mta.checks.policy import PolicyTable
from rc_mta.config import ChecksConfig

RESULTS: tuple[Result, ...] = get_args(Result)
CONTEXT = CheckContext(client_ip="192.0.2.1", helo="mx.example.test", mail_from="a@example.test")


def _config(policy: str, *, softfail: bool = False, quarantine: str = "reject") -> ChecksConfig:
    return ChecksConfig.model_validate(
        {
            "spf": {"policy": policy, "reject_softfail": softfail},
            "rdns": {"policy": policy},
            "dkim": {"policy": policy},
            "dmarc": {"policy": policy, "quarantine": quarantine},
            "whitelist": {"enabled": policy != "off"},
        }
    )


CONFIGS = [
    _config(policy, softfail=softfail, quarantine=quarantine)
    for policy, softfail, quarantine in itertools.product(("off", "tag", "reject"), (False, True), ("reject", "tag"))
]


@pytest.mark.parametrize("config", CONFIGS)
def test_doubt_is_never_a_bounce(config: ChecksConfig) -> None:
    table = PolicyTable(config)
    for name in table.table:
        for published in ("none", "quarantine", "reject"):
            verdict = Verdict("temperror", "DNS timeout", {"domain": "example.test", "policy": published})
            answer = table.answer(name, verdict, CONTEXT)
            assert answer is None or answer.temporary, (name, str(answer))


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.spf.policy == "tag"])
def test_tag_only_notes_failures(config: ChecksConfig) -> None:
    table = PolicyTable(config)
    for name, result in itertools.product(("rdns", "spf", "dkim", "dmarc"), RESULTS):
        if result == "temperror":
            continue
        verdict = Verdict(result, "why", {"domain": "example.test", "policy": "reject"})
        assert table.answer(name, verdict, CONTEXT) is None, (name, result)


def test_off_keeps_a_check_from_running_unless_the_owner_rule_needs_it() -> None:
    off = _config("off")
    assert [name for name in ("rdns", "spf", "whitelist") if PolicyTable(off).runs(name)] == []
    # DKIM and DMARC still run for the owner rule ([checks.owner_auth] required, the default).
    assert PolicyTable(off).runs("dkim") and PolicyTable(off).runs("dmarc")
    alone = off.model_copy(update={"owner_auth": off.owner_auth.model_copy(update={"required": False})})
    assert not PolicyTable(alone).runs("dkim") and not PolicyTable(alone).runs("dmarc")


def test_spf_answers_under_reject() -> None:
    table = PolicyTable(_config("reject"))
    facts = {"domain": "example.test"}
    fail = table.answer("spf", Verdict("fail", "not listed", facts), CONTEXT)
    assert fail is not None and fail.name == "SPF_FAIL"
    assert str(fail) == "550 5.7.23 SPF of example.test does not allow 192.0.2.1 to send its mail: not listed"
    assert table.answer("spf", Verdict("softfail", "~all", facts), CONTEXT) is None
    softfail = PolicyTable(_config("reject", softfail=True)).answer("spf", Verdict("softfail", "", facts), CONTEXT)
    assert softfail is not None and softfail.name == "SPF_SOFTFAIL"
    broken = table.answer("spf", Verdict("permerror", "two records", facts), CONTEXT)
    assert broken is not None and str(broken) == "550 5.7.24 The SPF record of example.test is broken: two records"
    assert table.answer("spf", Verdict("neutral", "", facts), CONTEXT) is None


def test_dmarc_follows_the_published_policy_and_never_a_stamp() -> None:
    facts = {"domain": "example.test", "policy": "quarantine"}
    failing = Verdict("fail", "nothing aligned", facts)
    refused = PolicyTable(_config("reject")).answer("dmarc", failing, CONTEXT)
    expected = "550 5.7.1 Rejected by the DMARC policy of example.test: p=quarantine"
    assert refused is not None and str(refused) == expected
    assert PolicyTable(_config("reject", quarantine="tag")).answer("dmarc", failing, CONTEXT) is None
    none = Verdict("fail", "nothing aligned", {**facts, "policy": "none"})
    assert PolicyTable(_config("reject")).answer("dmarc", none, CONTEXT) is None
    stamped = Verdict("fail", "from trusted Authentication-Results", {**facts, "policy": "reject"}, stamped=True)
    assert PolicyTable(_config("reject")).answer("dmarc", stamped, CONTEXT) is None


def test_reverse_dns_refuses_any_non_pass_under_reject() -> None:
    table = PolicyTable(_config("reject"))
    for result in RESULTS:
        answer = table.answer("rdns", Verdict(result, "no PTR record", {"ip": "192.0.2.1"}), CONTEXT)
        expected = {"pass": None, "temperror": R.RDNS_TEMPERROR.name}.get(result, R.RDNS_FAIL.name)
        assert (answer.name if answer else None) == expected, result
