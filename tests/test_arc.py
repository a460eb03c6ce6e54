"""ARC through named gateways (RFC 8617), through a real rc-mta listener and NSD.

Alice (corp.test: SPF only 127.0.0.2, DKIM selector "sel", DMARC p=reject) answers a
request; her company's gateway (sealer.test, ARC key "arc") checks her mail on the way out,
records what it found in an ARC set, adds a footer to the body (breaking her DKIM
signature) and relays it from 127.0.0.5 with an envelope sender of its own, so nothing of
corp.test's aligns any more: only the gateway's seal can vouch for her.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from conftest import REPLY_DOMAIN, RcMta, make_rc_mta, wait_until, with_real_dns
from dns_fixtures import black_hole_resolver as black_hole_resolver
from dns_fixtures import resolver as resolver
from dnsserver import NsdServer
from mailclient import SmtpOutcome, reply_message
from mailclient import send_smtp as _send_smtp

from rc_mta.checks import CheckContext, Verdict
from rc_mta.checks.arc import MAX_ARC_SETS, ArcCheck
from rc_mta.checks.binding import RequestAddresses
from rc_mta.checks.dkim import DkimCheck
from rc_mta.checks.dmarc import DmarcCheck
from rc_mta.dns import DnsResolver

OWNER = "alice@corp.test"
KEYS = Path(__file__).parent / "keys"
OWNER_KEY = (KEYS / "good-sel2048.pem").read_bytes()
SEALER_KEY = (KEYS / "sealer-arc2048.pem").read_bytes()
GATEWAY = "127.0.0.5"  # mx.sender.spf.test: good reverse DNS, SPF-valid for noreply.spf.test
OWNER_SIGNS = ["from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references"]
SEALER_SIGNS = ["from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references"]
FOOTER = b"\r\n-- \r\n[External] Scanned by the corp.test mail filter\r\n"
# What the gateway records for mail that failed on arrival.
RECORDED_FAIL = "spf=fail smtp.mailfrom=alice@corp.test; dkim=fail header.d=corp.test; dmarc=fail header.from=corp.test"


def owner_signed(message: EmailMessage) -> bytes:
    """``message`` as Alice's own server sends it: DKIM-signed by corp.test."""
    raw = message.as_bytes(policy=email.policy.SMTP)
    names = [name.encode() for name in OWNER_SIGNS]
    return bytes(dkim.sign(raw, b"sel", b"corp.test", OWNER_KEY, include_headers=names)) + raw


def through_gateway(
    raw: bytes,
    recorded: str = "spf=pass smtp.mailfrom=alice@corp.test; dkim=pass header.d=corp.test;"
    " dmarc=pass header.from=corp.test",
    sealer_signs: list[str] = SEALER_SIGNS,
) -> bytes:
    """What the gateway relays: its Authentication-Results of what arrived, a footer that
    breaks Alice's DKIM signature, and its ARC set sealing the message as it leaves."""
    stamped = f"Authentication-Results: gw.sealer.test; {recorded}\r\n".encode() + raw
    altered = stamped.rstrip(b"\r\n") + FOOTER
    names = [name.encode() for name in sealer_signs]
    arc_set = dkim.arc_sign(altered, b"arc", b"sealer.test", SEALER_KEY, b"gw.sealer.test", include_headers=names)
    assert arc_set, "dkimpy sealed nothing"
    return b"".join(arc_set) + altered


def relay(rc: RcMta, raw: bytes, rcpt: str) -> SmtpOutcome:
    """The gateway hands the message over, with an envelope sender of its own (as SRS does)."""
    return _send_smtp(
        rc.smtp_port, raw, rcpt, mail_from="b@noreply.spf.test", source_address=GATEWAY, helo="mx.sender.spf.test"
    )


def new_request(rc: RcMta) -> tuple[str, dict[str, Any]]:
    task_id = rc.add_task(owner=OWNER)
    return task_id, rc.request(task_id)


def answer(request: dict[str, Any], body: str = "Approved", to: str | None = None) -> EmailMessage:
    return reply_message(to or request["reply_to"], body, sender=OWNER, in_reply_to=request["message_id"])


def assert_refused(rc: RcMta, task_id: str, outcome: SmtpOutcome, code: tuple[int, str], *why: str) -> None:
    """Refused with ``code``, saying each of ``why``, and the task left as it was."""
    assert (outcome.code, outcome.enhanced) == code, outcome
    for words in why:
        assert words in outcome.text, outcome
    assert rc.task(task_id)["status"] == "in_progress"


def _running(factory: pytest.TempPathFactory, dns: NsdServer, sealers: list[str]) -> Iterator[RcMta]:
    server = with_real_dns(make_rc_mta(factory.mktemp("rc-mta-arc")), dns)
    server.settings["checks"]["arc"] = {"trusted_sealers": sealers}
    server.settings["inbound"]["archive_dir"] = str(server.workdir / "archive")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory, dns_server: NsdServer) -> Iterator[RcMta]:
    """rc-mta trusting the gateway's seal."""
    yield from _running(tmp_path_factory, dns_server, ["sealer.test"])


@pytest.fixture(scope="module")
def untrusting_rc(tmp_path_factory: pytest.TempPathFactory, dns_server: NsdServer) -> Iterator[RcMta]:
    """rc-mta trusting some other gateway only."""
    yield from _running(tmp_path_factory, dns_server, ["microsoft.com"])


def test_reply_whose_dkim_a_trusted_gateway_broke_acts_on_its_seal(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    raw = through_gateway(owner_signed(answer(request)))
    assert not dkim.verify(raw, dnsfunc=lambda name, timeout=5: None)  # the footer broke it

    outcome = relay(rc, raw, request["reply_to"])

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "completed"


def test_acted_reply_records_dmarc_pass_via_arc_in_authentication_results(rc: RcMta) -> None:
    _, request = new_request(rc)

    outcome = relay(rc, through_gateway(owner_signed(answer(request))), request["reply_to"])

    assert outcome.code == 250, outcome

    def archived() -> list[bytes]:
        files = [p.read_bytes() for p in (rc.workdir / "archive").glob("*.eml")]
        return [m for m in files if request["reply_to"].encode() in m]

    header = wait_until(archived, what="the acted reply archived")[0].split(b"\r\n", 1)[0].decode()
    assert header.startswith("Authentication-Results: mx.reply.example.test;"), header
    assert "arc=pass (as.1.d=sealer.test as.1.s=arc)" in header
    assert 'dmarc=pass reason="via ARC from sealer.test" header.from=corp.test' in header


def test_plain_reply_to_the_bare_address_is_bound_by_the_seals_signed_in_reply_to(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    bare = f"rc@{REPLY_DOMAIN}"

    outcome = relay(rc, through_gateway(owner_signed(answer(request, to=bare))), bare)

    assert outcome.code == 250, outcome
    assert rc.task(task_id)["status"] == "completed"


def test_same_sealed_reply_is_refused_where_the_gateway_is_not_trusted(untrusting_rc: RcMta) -> None:
    task_id, request = new_request(untrusting_rc)

    outcome = relay(untrusting_rc, through_gateway(owner_signed(answer(request))), request["reply_to"])

    assert_refused(
        untrusting_rc,
        task_id,
        outcome,
        (550, "5.7.1"),
        "DMARC policy of corp.test: p=reject",
        "sealed by sealer.test, not a trusted ARC sealer",
    )


def test_broken_chain_is_refused_as_if_unsealed(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    # The gateway found Alice's signature broken already; someone rewrote its record to
    # claim a pass. The seal covers the record, so the chain no longer validates.
    sealed = through_gateway(owner_signed(answer(request)), recorded=RECORDED_FAIL)
    forged = sealed.replace(b"dkim=fail", b"dkim=pass").replace(b"dmarc=fail", b"dmarc=pass")
    assert forged != sealed

    outcome = relay(rc, forged, request["reply_to"])

    assert_refused(rc, task_id, outcome, (550, "5.7.1"), "the ARC chain sealed by sealer.test does not validate")


def test_seal_replayed_onto_another_message_is_refused(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    # A genuine sealed answer of Alice's saying no; the seal copied onto one saying yes.
    genuine = through_gateway(owner_signed(answer(request, body="No, the tests are red")))
    head, _, _body = genuine.partition(b"\r\n\r\n")
    replayed = head + b"\r\n\r\nApproved\r\n" + FOOTER

    outcome = relay(rc, replayed, request["reply_to"])

    assert_refused(rc, task_id, outcome, (550, "5.7.1"), "the ARC chain sealed by sealer.test does not validate")


def test_seal_whose_message_signature_does_not_sign_to_is_not_bound_to_the_request(rc: RcMta) -> None:
    task_id, request = new_request(rc)
    unbound = ["from", "subject", "date", "message-id", "in-reply-to", "references"]

    outcome = relay(rc, through_gateway(owner_signed(answer(request)), sealer_signs=unbound), request["reply_to"])

    assert_refused(
        rc, task_id, outcome, (550, "5.7.21"), "The signature of sealer.test", "written as an answer to this request"
    )


def test_seal_that_recorded_no_pass_for_the_owner_changes_nothing(rc: RcMta) -> None:
    task_id, request = new_request(rc)

    outcome = relay(rc, through_gateway(owner_signed(answer(request)), recorded=RECORDED_FAIL), request["reply_to"])

    assert_refused(rc, task_id, outcome, (550, "5.7.1"), "the ARC seal of sealer.test does not vouch for corp.test")


def test_diagnose_as_mailbox_shows_the_seal_vouching_for_the_owner(rc: RcMta, tmp_path: Path) -> None:
    task_id, request = new_request(rc)
    saved = tmp_path / "sealed.eml"
    saved.write_bytes(through_gateway(owner_signed(answer(request))))

    report = json.loads(rc.cli("diagnose", "--json", "--as-mailbox", str(saved)).stdout)

    assert report["would"] == "complete", report
    assert report["checks"]["dkim"]["result"] == "fail"
    assert report["checks"]["arc"]["result"] == "pass"
    assert report["checks"]["arc"]["sealer"] == "sealer.test"
    assert report["checks"]["dmarc"]["result"] == "pass"
    assert report["checks"]["dmarc"]["via_arc"] == "sealer.test"
    assert report["checks"]["binding"]["via"] == "arc sealer.test"
    assert rc.task(task_id)["status"] == "in_progress"


# The check on its own: what reaches no listener -----------------------------------------


def arc_verdict(resolver: DnsResolver, raw: bytes, sealers: list[str] | None = None) -> Verdict | None:
    check = ArcCheck(resolver, sealers or ["sealer.test"], RequestAddresses("rc", REPLY_DOMAIN), 1024)
    return asyncio.run(check.evaluate(CheckContext(raw=raw, header_from=OWNER)))


def sealed_sample() -> bytes:
    message = reply_message(f"rc@{REPLY_DOMAIN}", "Approved", sender=OWNER, in_reply_to="<x@reply.example.test>")
    return through_gateway(owner_signed(message))


def test_dns_trouble_with_a_trusted_seal_defers_rather_than_refuses(
    black_hole_resolver: DnsResolver, resolver: DnsResolver
) -> None:
    arc = arc_verdict(black_hole_resolver, sealed_sample())
    assert arc is not None and arc.result == "temperror", arc

    dkim_failed = Verdict("fail", "signature did not verify")
    context = CheckContext(raw=b"", header_from=OWNER, verdicts={"dkim": dkim_failed, "arc": arc})
    dmarc = asyncio.run(DmarcCheck(resolver).evaluate(context))

    assert dmarc is not None and dmarc.result == "temperror", dmarc
    assert "sealer.test" in dmarc.reason


def test_untrusted_seal_is_not_verified_at_all(black_hole_resolver: DnsResolver) -> None:
    # Its keys would be looked up at a black hole: not looking is what keeps this quick and sure.
    verdict = arc_verdict(black_hole_resolver, sealed_sample(), sealers=["microsoft.com"])

    assert verdict is not None and verdict.result == "neutral", verdict
    assert verdict.facts["trusted"] == "no"


def test_chain_longer_than_any_real_one_is_not_verified(black_hole_resolver: DnsResolver) -> None:
    sets = b"".join(
        b"ARC-Seal: i=%d; cv=pass; a=rsa-sha256; d=sealer.test; s=arc; b=AAAA\r\n"
        b"ARC-Message-Signature: i=%d; a=rsa-sha256; d=sealer.test; s=arc; h=from; bh=AAAA; b=AAAA\r\n"
        b"ARC-Authentication-Results: i=%d; gw.sealer.test; dmarc=pass header.from=corp.test\r\n" % (i, i, i)
        for i in range(MAX_ARC_SETS + 1, 0, -1)
    )

    verdict = arc_verdict(black_hole_resolver, sets + sealed_sample())

    assert verdict is not None and verdict.result == "fail", verdict
    assert f"more than {MAX_ARC_SETS} ARC sets" in verdict.reason


def unverifiable_chain(sets: int) -> bytes:
    """An ARC chain of ``sets`` sets sealed last by sealer.test, whose b= verify nothing."""
    return b"".join(
        b"ARC-Seal: i=%d; cv=%s; a=rsa-sha256; d=sealer.test; s=arc; b=AAAA\r\n"
        b"ARC-Message-Signature: i=%d; a=rsa-sha256; d=sealer.test; s=arc; h=from; bh=AAAA; b=AAAA\r\n"
        b"ARC-Authentication-Results: i=%d; gw.sealer.test; dmarc=pass header.from=corp.test\r\n"
        % (i, b"pass" if i > 1 else b"none", i, i)
        for i in range(sets, 0, -1)
    )


# 1 MiB of runs of 31 spaces: ~100 ms to canonicalize relaxed, each time.
_LINE = (b" " * 31 + b"x") * 30 + b"\r\n"
COSTLY_MESSAGE = f"From: {OWNER}\r\nTo: rc@{REPLY_DOMAIN}\r\nSubject: Re: deploy\r\n\r\n".encode() + _LINE * (
    1024 * 1024 // len(_LINE)
)


def test_a_large_body_is_not_canonicalized_once_for_each_set_of_a_chain(black_hole_resolver: DnsResolver) -> None:
    # dkimpy canonicalizes the body for each set's ARC-Message-Signature: 1 MiB of runs of 31
    # spaces (~100 ms each time) is worth verifying under one set, not under two.
    one_set = arc_verdict(black_hole_resolver, unverifiable_chain(1) + COSTLY_MESSAGE)
    two_sets = arc_verdict(black_hole_resolver, unverifiable_chain(2) + COSTLY_MESSAGE)

    assert one_set is not None and one_set.result == "temperror", one_set  # verified: its key at a black hole
    assert two_sets is not None and two_sets.result == "fail", two_sets
    assert "over what is left (20.0 M) of the message's 20 M" in two_sets.reason


def test_a_chain_is_verified_only_within_what_the_messages_dkim_signatures_left(
    black_hole_resolver: DnsResolver,
) -> None:
    # DKIM and then ARC spend one budget for the message: the owner's signature, canonicalized
    # over the costly body first, leaves too little for the chain to canonicalize it again.
    signature = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=corp.test; s=sel; h=from; bh=AAAA; b=AAAA\r\n"
    raw = unverifiable_chain(1) + signature + COSTLY_MESSAGE
    context = CheckContext(raw=raw, header_from=OWNER)
    dkim_check = DkimCheck(black_hole_resolver, 1024)
    arc_check = ArcCheck(black_hole_resolver, ["sealer.test"], RequestAddresses("rc", REPLY_DOMAIN), 1024)

    dkim_verdict = asyncio.run(dkim_check.evaluate(context))
    arc = asyncio.run(arc_check.evaluate(context))

    assert dkim_verdict.result == "temperror", dkim_verdict  # verified: its key at a black hole
    assert arc is not None and arc.result == "fail", arc
    assert "chain not verified" in arc.reason and "after" in arc.reason and "on other signatures" in arc.reason
