"""Sender authentication at SMTP time, end to end: a real rc-mta, a real NSD serving the
test zones, clients bound to 127.0.0.2, .3, ... to be different hosts.

corp.test (the owners' domain) allows only 127.0.0.2 in SPF, signs with DKIM selector
"sel" and publishes DMARC p=reject. 127.0.0.5 and .6 have good reverse DNS but are not
corp.test's servers; .3's PTR name points elsewhere; .4 has no PTR at all."""

from __future__ import annotations

import email.policy
import smtplib
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from conftest import REPLY_DOMAIN, RcMta, make_rc_mta, with_real_dns
from dnsserver import BlackHole, NsdServer
from mailclient import SmtpOutcome, reply_message
from mailclient import send_smtp as _send_smtp

OWNER = "alice@corp.test"
KEY = (Path(__file__).parent / "keys" / "good-sel2048.pem").read_bytes()


# The HELO names the test hosts use: each resolves in the test zones.
HELO = {
    "127.0.0.1": "relay.spf.test",
    "127.0.0.2": "mail.pass.spf.test",
    "127.0.0.3": "liar.spf.test",
    "127.0.0.4": "nameless.spf.test",
    "127.0.0.5": "mx.sender.spf.test",
    "127.0.0.6": "mail.evil.spf.test",
}


def send_smtp(port: int, message: EmailMessage | bytes, rcpt: str, mail_from: str, source_address: str) -> SmtpOutcome:
    return _send_smtp(
        port, message, rcpt, mail_from=mail_from, source_address=source_address, helo=HELO[source_address]
    )


def signed(message: EmailMessage, domain: str = "corp.test", selector: str = "sel") -> bytes:
    raw = message.as_bytes(policy=email.policy.SMTP)
    signature = dkim.sign(raw, selector.encode(), domain.encode(), KEY, include_headers=[b"from", b"to", b"subject"])
    return bytes(signature) + raw


def reply(rc: RcMta, task_id: str, body: str = "Ship it", sender: str = OWNER, **kw: str) -> tuple[str, EmailMessage]:
    address = str(rc.request(task_id)["complete_address"])
    return address, reply_message(address, body, sender=sender, **kw)


def assert_untouched(rc: RcMta, task_id: str) -> None:
    task = rc.task(task_id)
    assert task["status"] == "in_progress"
    assert task["comments"] == []


def test_reply_from_the_owners_own_server_completes_the_task(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id)

    outcome = send_smtp(auth_rc.smtp_port, message, address, mail_from=OWNER, source_address="127.0.0.2")

    assert outcome.code == 250, outcome
    assert auth_rc.task(task_id)["status"] == "completed"


def test_aligned_dkim_pass_authenticates_even_when_spf_does_not(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id)

    # A mailing service sends for corp.test from .5 with its own bounce domain (no SPF record).
    outcome = send_smtp(
        auth_rc.smtp_port, signed(message), address, mail_from="bounces@noreply.spf.test", source_address="127.0.0.5"
    )

    assert outcome.code == 250, outcome
    assert auth_rc.task(task_id)["status"] == "completed"


def test_spf_fail_is_refused_at_mail_with_5_7_23(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id)

    outcome = send_smtp(auth_rc.smtp_port, message, address, mail_from=OWNER, source_address="127.0.0.5")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.23")
    assert "corp.test" in outcome.text
    assert_untouched(auth_rc, task_id)


def test_client_whose_reverse_dns_lies_is_refused_with_5_7_25(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id)

    liar = send_smtp(auth_rc.smtp_port, message, address, mail_from=OWNER, source_address="127.0.0.3")
    nameless = send_smtp(auth_rc.smtp_port, message, address, mail_from=OWNER, source_address="127.0.0.4")

    assert (liar.code, liar.enhanced) == (550, "5.7.25")
    assert (nameless.code, nameless.enhanced) == (550, "5.7.25")
    assert_untouched(auth_rc, task_id)


def test_forged_from_without_dkim_is_refused_by_dmarc_reject(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id)

    # mallory's own server, SPF-valid for evil.test, writes From: alice@corp.test.
    outcome = send_smtp(auth_rc.smtp_port, message, address, mail_from="mallory@evil.test", source_address="127.0.0.6")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "DMARC" in outcome.text
    assert_untouched(auth_rc, task_id)


def test_dkim_of_another_domain_does_not_authenticate_the_owner(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id)
    key = (Path(__file__).parent / "keys" / "evil-sel2048.pem").read_bytes()
    raw = message.as_bytes(policy=email.policy.SMTP)
    raw = bytes(dkim.sign(raw, b"evil", b"evil.test", key, include_headers=[b"from", b"to", b"subject"])) + raw

    outcome = send_smtp(auth_rc.smtp_port, raw, address, mail_from="mallory@evil.test", source_address="127.0.0.6")

    assert outcome.code == 550
    assert_untouched(auth_rc, task_id)


def test_valid_token_replayed_from_another_address_is_refused(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id, sender="mallory@evil.test")

    outcome = send_smtp(auth_rc.smtp_port, message, address, mail_from="mallory@evil.test", source_address="127.0.0.6")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "mallory@evil.test" in outcome.text
    assert_untouched(auth_rc, task_id)


def test_display_name_spoofing_is_judged_on_the_address(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id, sender="mallory@evil.test")
    del message["From"]
    message["From"] = '"alice@corp.test" <mallory@evil.test>'

    outcome = send_smtp(auth_rc.smtp_port, message, address, mail_from="mallory@evil.test", source_address="127.0.0.6")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert "comes from mallory@evil.test" in outcome.text
    assert_untouched(auth_rc, task_id)


def test_two_from_addresses_are_refused(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id)
    del message["From"]
    message["From"] = "alice@corp.test, mallory@evil.test"

    outcome = send_smtp(auth_rc.smtp_port, message, address, mail_from=OWNER, source_address="127.0.0.2")

    assert outcome.code == 550
    assert_untouched(auth_rc, task_id)


def test_injected_authentication_results_claiming_our_id_are_ignored(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id)
    message["Authentication-Results"] = "mx.reply.example.test; spf=pass smtp.mailfrom=corp.test; dmarc=pass"

    outcome = send_smtp(auth_rc.smtp_port, message, address, mail_from="mallory@evil.test", source_address="127.0.0.6")

    assert outcome.code == 550
    assert "DMARC" in outcome.text
    assert_untouched(auth_rc, task_id)


def test_null_sender_never_acts(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id, body="Yes, complete")

    outcome = send_smtp(auth_rc.smtp_port, message, address, mail_from="", source_address="127.0.0.2")

    assert outcome.code in (250, 550)
    assert_untouched(auth_rc, task_id)


def _session(port: int, source: str) -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=30, source_address=(source, 0))
    client.connect("127.0.0.1", port)
    client.ehlo(HELO[source])
    return client


def test_xclient_from_an_untrusted_host_is_refused(auth_rc: RcMta) -> None:
    with _session(auth_rc.smtp_port, "127.0.0.2") as client:
        assert b"XCLIENT" not in (client.ehlo_resp or b"")
        code, text = client.docmd("XCLIENT", "ADDR=127.0.0.2 HELO=mail.pass.spf.test")
    assert (code, text.decode().split()[0]) == (550, "5.7.0")


def test_xclient_from_a_trusted_relay_makes_checks_see_the_original_client(auth_rc: RcMta) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    address, message = reply(auth_rc, task_id)

    with _session(auth_rc.smtp_port, "127.0.0.1") as client:
        assert b"XCLIENT" in (client.ehlo_resp or b"")
        assert client.docmd("XCLIENT", "ADDR=127.0.0.5 NAME=mx.sender.spf.test HELO=mx.sender.spf.test")[0] == 220
        client.ehlo("front.example.test")
        as_five = client.mail(OWNER)
        client.rset()
        assert client.docmd("XCLIENT", "ADDR=127.0.0.2 HELO=mail.pass.spf.test")[0] == 220
        client.ehlo("front.example.test")
        as_two = client.mail(OWNER)
        client.rcpt(address)
        data = client.data(message.as_bytes(policy=email.policy.SMTP))

    assert (as_five[0], as_five[1].decode().split()[0]) == (550, "5.7.23")
    assert as_two[0] == 250
    assert data[0] == 250, data
    assert auth_rc.task(task_id)["status"] == "completed"


def test_xforward_from_a_trusted_relay_applies_to_the_next_transaction(auth_rc: RcMta) -> None:
    with _session(auth_rc.smtp_port, "127.0.0.1") as client:
        assert b"XFORWARD" in (client.ehlo_resp or b"")
        assert client.docmd("XFORWARD", "ADDR=127.0.0.5 HELO=mx.sender.spf.test")[0] == 250
        refused = client.mail(OWNER)
    with _session(auth_rc.smtp_port, "127.0.0.3") as client:
        untrusted = client.docmd("XFORWARD", "ADDR=127.0.0.2")

    assert (refused[0], refused[1].decode().split()[0]) == (550, "5.7.23")
    assert untrusted[0] == 550


def test_diagnose_shows_every_verdict_and_our_authentication_results(auth_rc: RcMta, tmp_path: Path) -> None:
    task_id = auth_rc.add_task(owner=OWNER)
    _, message = reply(auth_rc, task_id)
    saved = tmp_path / "reply.eml"
    saved.write_bytes(signed(message))

    import json

    report = json.loads(
        auth_rc.cli(
            "diagnose",
            "--json",
            "--client-ip",
            "127.0.0.2",
            "--helo",
            "mail.pass.spf.test",
            "--mail-from",
            OWNER,
            str(saved),
        ).stdout
    )

    checks = report["checks"]
    assert {name: checks[name]["result"] for name in ("spf", "rdns", "dkim", "dmarc", "owner_auth", "owner")} == {
        "spf": "pass",
        "rdns": "pass",
        "dkim": "pass",
        "dmarc": "pass",
        "owner_auth": "pass",
        "owner": "pass",
    }
    assert report["would"] == "complete"
    assert report["authentication_results"].startswith("mx.reply.example.test;")
    assert "dmarc=pass" in report["authentication_results"]
    assert auth_rc.task(task_id)["status"] == "in_progress"


@pytest.fixture
def strict_rc(tmp_path: Path, dns_server: NsdServer) -> Iterator[RcMta]:
    server = with_real_dns(make_rc_mta(tmp_path), dns_server)
    yield server
    server.stop()


def test_sender_outside_the_whitelist_is_refused(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["whitelist"] = {"enabled": True, "domains": ["corp.test"]}
    strict_rc.start()
    task_id = strict_rc.add_task(owner=OWNER)
    address, message = reply(strict_rc, task_id)

    outsider = send_smtp(
        strict_rc.smtp_port, message, address, mail_from="mallory@evil.test", source_address="127.0.0.6"
    )
    insider = send_smtp(strict_rc.smtp_port, message, address, mail_from=OWNER, source_address="127.0.0.2")

    assert (outsider.code, outsider.enhanced) == (550, "5.7.1")
    assert "evil.test" in outsider.text
    assert insider.code == 250, insider


def test_dns_timeout_is_a_temporary_failure_never_a_bounce(strict_rc: RcMta) -> None:
    hole = BlackHole()
    try:
        strict_rc.settings["dns"].update(port=hole.port, timeout="1s")
        strict_rc.start()
        task_id = strict_rc.add_task(owner=OWNER)
        address, message = reply(strict_rc, task_id)

        outcome = send_smtp(strict_rc.smtp_port, message, address, mail_from=OWNER, source_address="127.0.0.2")
    finally:
        hole.close()

    assert 400 <= outcome.code < 500, outcome
    assert outcome.enhanced.startswith("4.")
    assert_untouched(strict_rc, task_id)


def test_too_many_connections_from_one_client_get_421(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["rate_limits"] = {"connections_per_ip": 3}
    strict_rc.start()

    greetings = []
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", strict_rc.smtp_port), source_address=("127.0.0.2", 0)) as sock:
            greetings.append(sock.makefile("rb").readline().decode())
    from_relay = socket.create_connection(("127.0.0.1", strict_rc.smtp_port), source_address=("127.0.0.1", 0))
    relay_greeting = from_relay.makefile("rb").readline().decode()
    from_relay.close()

    assert [g[:3] for g in greetings] == ["220", "220", "220", "421"]
    assert greetings[3].startswith("421 4.7.0")
    assert relay_greeting.startswith("220")  # trusted relays are not limited


def test_too_many_messages_from_one_client_get_450(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["rate_limits"] = {"messages_per_ip": 2}
    strict_rc.start()

    with _session(strict_rc.smtp_port, "127.0.0.2") as client:
        replies = []
        for _ in range(3):
            replies.append(client.mail(OWNER))
            client.rset()

    assert [r[0] for r in replies] == [250, 250, 450]
    assert replies[2][1].decode().startswith("4.7.1")


def test_repeated_failed_authentication_is_slowed_down(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["rate_limits"] = {"auth_failures_per_ip": 2}
    strict_rc.start()

    with _session(strict_rc.smtp_port, "127.0.0.5") as client:
        codes = []
        for _ in range(3):
            codes.append(client.mail(OWNER)[0])
            client.rset()

    assert codes == [550, 550, 450]


def test_owner_rule_can_be_relaxed_by_configuration(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"].update(owner_auth={"required": False}, dmarc={"policy": "tag"})
    strict_rc.start()
    task_id = strict_rc.add_task(owner=OWNER)
    address, message = reply(strict_rc, task_id)

    outcome: SmtpOutcome = send_smtp(
        strict_rc.smtp_port, message, address, mail_from="mallory@evil.test", source_address="127.0.0.6"
    )

    assert outcome.code == 250, outcome
    assert strict_rc.task(task_id)["status"] == "completed"


def test_owner_not_authenticated_is_refused_with_5_7_26(strict_rc: RcMta) -> None:
    # corp2: the owner's domain has no DMARC; .6 is not its server and there is no DKIM.
    strict_rc.settings["checks"].update(dmarc={"policy": "tag"})
    strict_rc.start()
    task_id = strict_rc.add_task(owner="bob@pass.spf.test")
    address, message = reply(strict_rc, task_id, sender="bob@pass.spf.test")

    outcome = send_smtp(strict_rc.smtp_port, message, address, mail_from="bounce@evil.test", source_address="127.0.0.6")

    assert (outcome.code, outcome.enhanced) == (550, "5.7.26")
    assert "bob@pass.spf.test" in outcome.text
    assert_untouched(strict_rc, task_id)


def test_reply_domain_is_still_never_relayed(auth_rc: RcMta) -> None:
    outcome = send_smtp(
        auth_rc.smtp_port, reply_message("x@example.org"), "x@example.org", mail_from=OWNER, source_address="127.0.0.2"
    )
    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert REPLY_DOMAIN not in outcome.text or "Relaying denied" in outcome.text


def _proxy_session(port: int, source: str, header: bytes) -> tuple[bytes, bytes]:
    """Speak PROXY protocol v1, then EHLO and MAIL; return the greeting and the MAIL reply."""
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=15) as sock:
        sock.sendall(header)
        reader = sock.makefile("rb")
        greeting = reader.readline()
        if not greeting:
            return b"", b""
        sock.sendall(b"EHLO mx.sender.spf.test\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        sock.sendall(f"MAIL FROM:<{OWNER}>\r\n".encode())
        return greeting, reader.readline()


def test_proxy_protocol_from_a_trusted_balancer_gives_checks_the_original_client(strict_rc: RcMta) -> None:
    strict_rc.settings["inbound"]["proxy_protocol"] = True
    strict_rc.start()

    greeting, mail = _proxy_session(strict_rc.smtp_port, "127.0.0.1", b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 25\r\n")
    untrusted_greeting, _ = _proxy_session(
        strict_rc.smtp_port, "127.0.0.2", b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n"
    )

    assert greeting.startswith(b"220")
    assert mail.startswith(b"550 5.7.23")  # judged on 127.0.0.5, not on the balancer
    assert untrusted_greeting == b""  # an untrusted host may not claim to be a proxy: closed


def test_accepted_reply_is_archived_with_our_verdicts_and_forged_stamps_removed(strict_rc: RcMta) -> None:
    archive = strict_rc.workdir / "archive"
    strict_rc.settings["inbound"]["archive_dir"] = str(archive)
    strict_rc.start()
    task_id = strict_rc.add_task(owner=OWNER)
    address, message = reply(strict_rc, task_id)
    message["Authentication-Results"] = "mx.reply.example.test; dmarc=pass header.from=corp.test"
    message["Authentication-Results"] = "other.example.net; spf=pass smtp.mailfrom=corp.test"

    outcome = send_smtp(strict_rc.smtp_port, message, address, mail_from=OWNER, source_address="127.0.0.2")

    assert outcome.code == 250, outcome
    [archived] = list(archive.glob("*.eml"))
    stamps = email.message_from_bytes(archived.read_bytes(), policy=email.policy.default).get_all(
        "Authentication-Results"
    )
    assert stamps is not None
    ours = [s for s in stamps if str(s).startswith("mx.reply.example.test;")]
    assert len(ours) == 1
    assert "spf=pass" in str(ours[0]) and "iprev=pass" in str(ours[0])
    assert any(str(s).startswith("other.example.net;") for s in stamps)


def test_verdicts_of_a_trusted_front_mta_are_used_only_from_that_front(strict_rc: RcMta) -> None:
    strict_rc.settings["checks"]["trusted_authserv_ids"] = ["front.example.test"]
    strict_rc.start()
    task_id = strict_rc.add_task(owner=OWNER)
    address, message = reply(strict_rc, task_id)
    message["Authentication-Results"] = (
        "front.example.test; spf=pass smtp.mailfrom=alice@corp.test; dmarc=pass header.from=corp.test"
    )

    from_elsewhere = send_smtp(
        strict_rc.smtp_port, message, address, mail_from="mallory@evil.test", source_address="127.0.0.6"
    )
    from_front = send_smtp(strict_rc.smtp_port, message, address, mail_from=OWNER, source_address="127.0.0.1")

    assert from_elsewhere.code == 550  # the stamp is ignored: DMARC fails on our own evaluation
    assert from_front.code == 250, from_front
    assert strict_rc.task(task_id)["status"] == "completed"


def test_relay_that_cannot_name_the_client_does_not_lend_its_own_exemption(strict_rc: RcMta) -> None:
    # Postfix on this host, in exempt_networks, forwarding a client it could not identify.
    strict_rc.settings["checks"]["exempt_networks"] = ["127.0.0.0/8"]
    strict_rc.start()
    task_id = strict_rc.add_task(owner=OWNER)
    address, message = reply(strict_rc, task_id)

    with _session(strict_rc.smtp_port, "127.0.0.1") as client:
        assert client.docmd("XFORWARD", "ADDR=[UNAVAILABLE] HELO=mx.sender.spf.test")[0] == 250
        assert client.mail(OWNER)[0] == 250
        assert client.rcpt(address)[0] == 250
        code, _ = client.data(message.as_bytes(policy=email.policy.SMTP))

    assert code == 550  # judged on what the message proves (no DKIM, DMARC p=reject), not exempted
    assert_untouched(strict_rc, task_id)


# Rate limits across instances --------------------------------------------------------------


@pytest.fixture
def two_rc(tmp_path: Path, dns_server: NsdServer) -> Iterator[tuple[RcMta, RcMta]]:
    """Two rc-mta instances, not yet started, each with a store of its own (SQLite)."""
    pair = (
        with_real_dns(make_rc_mta(tmp_path / "a"), dns_server),
        with_real_dns(make_rc_mta(tmp_path / "b"), dns_server),
    )
    for server in pair:
        server.workdir.mkdir()
    yield pair
    for server in pair:
        server.stop()


def mail_alternating(first: RcMta, second: RcMta, times: int) -> list[int]:
    """MAIL FROM the owner's server (127.0.0.2) ``times`` times, to each instance in turn."""
    with _session(first.smtp_port, "127.0.0.2") as one, _session(second.smtp_port, "127.0.0.2") as other:
        codes = []
        for i in range(times):
            client = (one, other)[i % 2]
            code, text = client.mail(OWNER)
            codes.append(code)
            if code == 450:
                assert text.decode().startswith("4.7.1"), text
            client.rset()
    return codes


def test_instances_on_one_postgresql_enforce_one_message_limit_together(
    two_rc: tuple[RcMta, RcMta], pg_url: str
) -> None:
    for server in two_rc:
        server.settings["store"]["url"] = pg_url
        server.settings["checks"]["rate_limits"] = {"messages_per_ip": 4}
        server.start()

    # Four messages from one client in the window, however they are spread over the MX hosts.
    assert mail_alternating(*two_rc, times=6) == [250, 250, 250, 250, 450, 450]


def test_instances_on_sqlite_each_count_alone(two_rc: tuple[RcMta, RcMta]) -> None:
    first, second = two_rc
    for server in two_rc:
        server.settings["checks"]["rate_limits"] = {"messages_per_ip": 4}
        server.start()

    assert mail_alternating(first, second, times=6) == [250] * 6  # three each
    assert mail_alternating(first, first, times=2) == [250, 450]  # the first's own fifth


def test_shared_counters_out_of_reach_fall_back_to_each_instances_own_limit(
    two_rc: tuple[RcMta, RcMta], pg_url: str
) -> None:
    import psycopg

    server, _ = two_rc
    server.settings["store"]["url"] = pg_url
    server.settings["checks"]["rate_limits"] = {"messages_per_ip": 2}
    server.start()
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE rate_counts IN ACCESS EXCLUSIVE MODE")  # until this transaction ends

        codes = mail_alternating(server, server, times=3)

    # Neither a bounce nor a 4xx for the store's trouble: the instance's own count still limits.
    assert codes == [250, 250, 450]
    assert "shared counters unavailable" in server.log_path.read_text()
