"""DKIM-signed requests: a request sent through the real outbound path to a real relay
(tests/smtpsink.py) carries a signature that dkimpy verifies against the test DNS (NSD,
tests/zones/good.test.zone), and check-config says in one line whether DNS publishes the
key rc-mta signs with."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from conftest import RcMta, free_port
from dnsserver import NsdServer
from smtpsink import RELAY_USER, SmtpRelay, running_relay

from rc_mta.dns import DnsResolver

KEYS = Path(__file__).parent / "keys"
PASSWORD = "relay-secret"


@pytest.fixture
def relay() -> Iterator[tuple[SmtpRelay, int]]:
    port = free_port()
    with running_relay(port, PASSWORD) as sink:
        yield sink, port


def _signing(rc: RcMta, dns: NsdServer, port: int, selector: str, key: str, algorithm: str) -> RcMta:
    rc.settings["outbound"].update(
        transport="smtp",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_username=RELAY_USER,
        smtp_password=PASSWORD,
        from_address="release@good.test",
        dkim={"selector": selector, "domain": "good.test", "key_file": str(KEYS / key), "algorithm": algorithm},
    )
    rc.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": "2s"}
    rc.write_config()
    return rc


@pytest.mark.parametrize(
    ("selector", "key", "algorithm"),
    [("sel", "good-sel2048.pem", "rsa-sha256"), ("ed", "good-ed25519.key", "ed25519-sha256")],
)
def test_request_sent_through_the_relay_has_a_dkim_signature_that_verifies_against_dns(
    fresh_rc: RcMta,
    dns_server: NsdServer,
    relay: tuple[SmtpRelay, int],
    selector: str,
    key: str,
    algorithm: str,
) -> None:
    sink, port = relay
    rc = _signing(fresh_rc, dns_server, port, selector, key, algorithm)

    sent = rc.request(rc.add_task())

    assert sent["delivery"] == "sent"
    [(_, _, raw)] = sink.received
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Message-ID"] == sent["message_id"]
    signature = message["DKIM-Signature"]
    tags = {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in str(signature).split(";"))}
    assert (tags["d"], tags["s"], tags["a"]) == ("good.test", selector, algorithm)
    signed = {h.strip().lower() for h in tags["h"].replace(" ", "").split(":")}
    assert {"from", "to", "subject", "date", "message-id", "reply-to", "mime-version", "content-type"} <= signed
    resolver = DnsResolver(["127.0.0.1"], dns_server.port, timeout=2.0)
    assert dkim.verify(raw, dnsfunc=resolver.dkim_txt)
    # The signature covers what the reply tokens ride on: change Reply-To and it fails.
    forged = raw.replace(sent["reply_to"].encode(), b"rc+forged@" + sent["reply_to"].split("@")[1].encode())
    assert forged != raw
    assert not dkim.verify(forged, dnsfunc=resolver.dkim_txt)


def _dkim_line(result_stdout: str) -> str:
    [line] = [row for row in result_stdout.splitlines() if "outbound dkim:" in row]
    return line


def test_check_config_says_dns_publishes_our_key(fresh_rc: RcMta, dns_server: NsdServer) -> None:
    rc = _signing(fresh_rc, dns_server, free_port(), "sel", "good-sel2048.pem", "rsa-sha256")

    line = _dkim_line(rc.cli("check-config", check=False).stdout)

    key = KEYS / "good-sel2048.pem"
    assert line == f"✓ outbound dkim: sel._domainkey.good.test publishes the public key of {key} (rsa-sha256)"


def test_check_config_says_dns_publishes_another_key_and_what_to_publish(
    fresh_rc: RcMta, dns_server: NsdServer
) -> None:
    # evil.test's key, while good.test's "sel" record publishes good-sel2048's.
    rc = _signing(fresh_rc, dns_server, free_port(), "sel", "evil-sel2048.pem", "rsa-sha256")

    result = rc.cli("check-config", check=False)

    line = _dkim_line(result.stdout)
    assert line.startswith(f"✗ outbound dkim: sel._domainkey.good.test publishes a different key than {KEYS}")
    assert "publish: TXT 'v=DKIM1; k=rsa; p=MII" in line
    assert result.returncode == 1
    assert "outbound dkim" in result.stderr


def test_check_config_says_when_no_key_is_published(fresh_rc: RcMta, dns_server: NsdServer) -> None:
    rc = _signing(fresh_rc, dns_server, free_port(), "gone", "good-sel2048.pem", "rsa-sha256")

    line = _dkim_line(rc.cli("check-config", check=False).stdout)

    assert line.startswith("✗ outbound dkim: gone._domainkey.good.test has no DKIM key; publish: TXT 'v=DKIM1; k=rsa;")


def test_a_key_file_that_is_not_a_key_stops_sending_with_one_line(
    fresh_rc: RcMta, dns_server: NsdServer, tmp_path: Path
) -> None:
    (tmp_path / "dkim.pem").write_text("not a key\n")
    rc = _signing(fresh_rc, dns_server, free_port(), "sel", "good-sel2048.pem", "rsa-sha256")
    rc.settings["outbound"]["dkim"]["key_file"] = str(tmp_path / "dkim.pem")
    rc.write_config()

    result = rc.cli("request", "t-1", check=False)

    assert result.returncode == 1
    assert result.stderr == (
        f"rc-mta: error: config key outbound.dkim.key_file: {tmp_path / 'dkim.pem'}: "
        "not an RSA private key in PEM form (openssl genrsa makes one)\n"
    )
