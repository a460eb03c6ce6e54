"""Inbound TLS against real clients: Python's smtplib verifying against a CA of the test's
own, raw sockets where a client must misbehave, and Postfix's smtp client with
``smtp_tls_security_level = encrypt``. Also check-config's word on the pair, and the
MTA-STS policy the HTTP listener serves."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPLY_DOMAIN, RcMta, free_port, make_rc_mta, require_server, wait_for_port, wait_until
from mailclient import reply_message, send_smtp
from postfix import Postfix, postfix_available
from testca import TestCa, serial_of

HOST = "mx.reply.example.test"  # make_rc_mta's [inbound] hostname
MTA_STS_MX = [HOST, "*.backup.example.test"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"))


def with_tls(server: RcMta, ca: TestCa, **tls: Any) -> RcMta:
    cert, key, _ = ca.issue(HOST, stem=f"live-{server.smtp_port}")
    server.settings["inbound"]["tls_listen"] = f"127.0.0.1:{free_port()}"
    server.settings["inbound"]["archive_dir"] = str(server.workdir / "archive")
    server.settings["inbound.tls"] = {"cert_file": str(cert), "key_file": str(key), **tls}
    return server


def tls_port(server: RcMta) -> int:
    return int(server.settings["inbound"]["tls_listen"].rsplit(":", 1)[1])


def start(server: RcMta) -> None:
    server.start()
    assert server.proc is not None
    wait_for_port(tls_port(server), server.proc)


@pytest.fixture(scope="module")
def tls_rc(tmp_path_factory: pytest.TempPathFactory, ca: TestCa) -> Iterator[RcMta]:
    """TLS required on SMTP and LMTP, the pair re-read within a second of changing."""
    server = with_tls(
        make_rc_mta(tmp_path_factory.mktemp("rc-mta-tls")), ca, require_tls=["smtp", "lmtp"], reload_interval="1s"
    )
    server.settings["http.mta_sts"] = {"mode": "enforce", "mx": MTA_STS_MX, "max_age": "7d"}
    start(server)
    yield server
    server.stop()


def renew(server: RcMta, ca: TestCa) -> int:
    """What an ACME client does: a new pair, moved over the served files; its serial."""
    cert, key, serial = ca.issue(HOST)
    os.replace(key, server.settings["inbound.tls"]["key_file"])
    os.replace(cert, server.settings["inbound.tls"]["cert_file"])
    return serial


def serial_served(port: int, ca: TestCa) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=ca.client_context())
        assert isinstance(client.sock, ssl.SSLSocket)
        return serial_of(client.sock)


def new_request(server: RcMta) -> tuple[str, dict[str, Any]]:
    task_id = server.add_task()
    return task_id, server.request(task_id)


def send_reply(client: smtplib.SMTP, request: dict[str, Any]) -> tuple[int, bytes]:
    address = request["complete_address"]
    message = reply_message(address, in_reply_to=request["message_id"])
    client.ehlo("mail.example.com")
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt(address)[0] == 250
    return client.data(message.as_bytes())


def test_a_reply_over_starttls_acts_and_its_encryption_is_recorded(tls_rc: RcMta, ca: TestCa) -> None:
    task_id, request = new_request(tls_rc)
    with smtplib.SMTP("127.0.0.1", tls_rc.smtp_port, timeout=30) as client:
        client.ehlo("mail.example.com")
        assert client.has_extn("starttls")
        client.starttls(context=ca.client_context())  # verifies the chain and 127.0.0.1
        assert isinstance(client.sock, ssl.SSLSocket)
        version = client.sock.version()
        cipher, _, bits = client.sock.cipher()
        code, _ = send_reply(client, request)
    assert code == 250
    assert tls_rc.task(task_id)["status"] == "completed"
    assert version in ("TLSv1.2", "TLSv1.3")

    # The archived message carries our Received field naming the TLS spoken (RFC 3848 ESMTPS).
    archived = [p.read_bytes() for p in (tls_rc.workdir / "archive").glob("*.eml")]
    stamped = [m for m in archived if request["message_id"].encode() in m]
    assert stamped, "the accepted reply was not archived"
    received = re.search(rb"Received: from mail\.example\.com \(\[127\.0\.0\.1\]\)\r\n\tby (.+?);", stamped[0])
    assert received is not None, stamped[0][:400]
    assert received.group(1).decode() == f"{HOST} with ESMTPS (using {version} with cipher {cipher} ({bits} bits))"

    # The transaction's log line and the metric say the same.
    line = next(line for line in tls_rc.log_path.read_text().splitlines() if f"task={task_id}" in line)
    assert f"{version} {cipher}" in line
    scraped = urllib.request.urlopen(tls_rc.http_url + "/metrics", timeout=10).read().decode()
    counted = re.search(
        rf'rc_mta_tls_sessions_total\{{cipher="{cipher}",protocol="smtp",version="{version}"\}} (\d+)', scraped
    )
    assert counted is not None and float(counted.group(1)) >= 1
    assert re.search(r"rc_mta_tls_certificate_expiry_timestamp_seconds \d\.\d+e\+09", scraped)


def test_mail_before_starttls_is_refused_over_smtp_and_lmtp(tls_rc: RcMta, ca: TestCa) -> None:
    with smtplib.SMTP("127.0.0.1", tls_rc.smtp_port, timeout=30) as client:
        client.ehlo("mail.example.com")
        code, text = client.mail("alice@example.com")
        assert (code, text.decode().split(":")[0]) == (530, "5.7.0 Must issue a STARTTLS command first")
        client.starttls(context=ca.client_context())
        client.ehlo("mail.example.com")
        assert client.mail("alice@example.com")[0] == 250

    with smtplib.LMTP("127.0.0.1", tls_rc.lmtp_port, timeout=30) as lmtp:
        lmtp.ehlo("front.example.test")  # LHLO
        code, text = lmtp.mail("alice@example.com")
        assert (code, text.decode().split(":")[0]) == (530, "5.7.0 Must issue a STARTTLS command first")
        lmtp.starttls(context=ca.client_context())
        lmtp.ehlo("front.example.test")
        assert lmtp.mail("alice@example.com")[0] == 250


def test_the_implicit_tls_port_speaks_tls_from_the_first_byte(tls_rc: RcMta, ca: TestCa) -> None:
    task_id, request = new_request(tls_rc)
    with smtplib.SMTP_SSL("127.0.0.1", tls_port(tls_rc), timeout=30, context=ca.client_context()) as client:
        client.ehlo("mail.example.com")
        assert not client.has_extn("starttls")  # already encrypted
        assert client.docmd("STARTTLS")[0] == 503
        code, _ = send_reply(client, request)
    assert code == 250
    assert tls_rc.task(task_id)["status"] == "completed"


def test_weak_ciphers_and_old_protocols_get_no_session(tls_rc: RcMta) -> None:
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    weak.check_hostname, weak.verify_mode = False, ssl.CERT_NONE
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    # CBC suites, which Python's default server list still takes: not in rc-mta's (AEAD only).
    weak.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384")
    with smtplib.SMTP("127.0.0.1", tls_rc.smtp_port, timeout=30) as client, pytest.raises(ssl.SSLError):
        client.starttls(context=weak)

    # (OpenSSL 3's own defaults refuse TLS 1.1 too: this pins rc-mta's minimum_version.)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with smtplib.SMTP("127.0.0.1", tls_rc.smtp_port, timeout=30) as client, pytest.raises(ssl.SSLError):
        client.starttls(context=old)


def test_plaintext_pipelined_after_starttls_is_never_a_command(tls_rc: RcMta, ca: TestCa) -> None:
    """RFC 3207 4.2 (the STARTTLS command injection of CVE-2011-0411)."""
    with socket.create_connection(("127.0.0.1", tls_rc.smtp_port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220")
        raw.sendall(b"EHLO mail.example.com\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nEHLO injected.example\r\nMAIL FROM:<mallory@example.com>\r\n")
        assert reader.readline().startswith(b"220")
        with ca.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"NOOP\r\n")
            assert tls.recv(512).startswith(b"250 2.0.0 OK")  # no answer to the injected lines first


def test_a_renewed_certificate_serves_new_sessions_while_an_open_one_goes_on(tls_rc: RcMta, ca: TestCa) -> None:
    task_id, request = new_request(tls_rc)
    with smtplib.SMTP("127.0.0.1", tls_rc.smtp_port, timeout=60) as open_session:
        open_session.starttls(context=ca.client_context())
        assert isinstance(open_session.sock, ssl.SSLSocket)
        before = serial_of(open_session.sock)

        renewed = renew(tls_rc, ca)
        wait_until(lambda: serial_served(tls_rc.smtp_port, ca) == renewed, what="the renewed certificate served")
        assert serial_served(tls_rc.smtp_port, ca) != before

        code, _ = send_reply(open_session, request)  # the session opened before the renewal
    assert code == 250
    assert tls_rc.task(task_id)["status"] == "completed"
    assert "TLS: reloaded (the files changed)" in tls_rc.log_path.read_text()


def test_sighup_reloads_the_certificate(tmp_path: Path, ca: TestCa) -> None:
    server = with_tls(make_rc_mta(tmp_path), ca, reload_interval="1h")
    start(server)
    try:
        first = serial_served(server.smtp_port, ca)
        renewed = renew(server, ca)
        assert serial_served(server.smtp_port, ca) == first  # no poll within the hour
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: serial_served(server.smtp_port, ca) == renewed, what="the certificate reloaded on SIGHUP")
    finally:
        server.stop()


def check_config_line(server: RcMta) -> tuple[str, int]:
    server.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": free_port(), "timeout": "1s"}
    server.write_config()
    result = server.cli("check-config", check=False)
    lines = [line for line in result.stdout.splitlines() if "inbound tls:" in line]
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0], result.returncode


def test_check_config_proves_the_pair_and_warns_before_it_expires(tmp_path: Path, ca: TestCa) -> None:
    server = with_tls(make_rc_mta(tmp_path), ca)
    line, _ = check_config_line(server)
    assert line.startswith("✓ inbound tls: ") and "matches its key" in line and f"({HOST})" in line

    soon, soon_key, _ = ca.issue(HOST, days=5)
    server.settings["inbound.tls"].update(cert_file=str(soon), key_file=str(soon_key))
    line, _ = check_config_line(server)
    assert line.startswith("! inbound tls: ") and "expires in 5 days" in line

    other, _, _ = ca.issue(HOST)
    server.settings["inbound.tls"].update(cert_file=str(other), key_file=str(soon_key))
    line, code = check_config_line(server)
    assert line == f"✗ inbound tls: TLS: {soon_key} is not the key of the certificate in {other}"
    assert code != 0


def test_the_mta_sts_policy_is_served_in_rfc_8461_form(tls_rc: RcMta) -> None:
    with urllib.request.urlopen(tls_rc.http_url + "/.well-known/mta-sts.txt", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers.get_content_type() == "text/plain"
        body = answer.read().decode("ascii")
    assert body.endswith("\r\n")
    fields = [line.split(": ", 1) for line in body[:-2].split("\r\n")]
    assert all(len(f) == 2 and re.fullmatch(r"[a-zA-Z0-9_]+", f[0]) for f in fields), body
    assert fields[0] == ["version", "STSv1"]  # RFC 8461 3.2: version comes first
    policy: dict[str, list[str]] = {}
    for key, value in fields:
        policy.setdefault(key, []).append(value)
    assert policy["mode"] == ["enforce"]
    assert policy["mx"] == MTA_STS_MX
    assert policy["max_age"] == ["604800"]
    assert set(policy) == {"version", "mode", "mx", "max_age"}


class PostfixOverTls(Postfix):
    """Postfix relaying the reply domain to rc-mta's SMTP port with its smtp client, which
    must encrypt (``smtp_tls_security_level = encrypt``) or defer."""

    def instance_settings(self) -> str:
        return super().instance_settings() + "smtp_tls_security_level = encrypt\nsmtp_tls_loglevel = 1\n"

    def write_config(self) -> None:
        super().write_config()
        with (self.config_dir / "master.cf").open("a") as master:
            master.write("tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n")
        (self.config_dir / "transport").write_text(f"{self.reply_domain} smtp:[{self.rc_mta_smtp.replace(':', ']:')}\n")
        self.postfix_command("postmap", "-c", str(self.config_dir), f"hash:{self.config_dir / 'transport'}")


def test_postfix_delivers_over_starttls_when_it_must_encrypt(tmp_path: Path, ca: TestCa) -> None:
    require_server(postfix_available(), "postfix (Debian package postfix), run as root")
    (tmp_path / "rc").mkdir()
    server = with_tls(make_rc_mta(tmp_path / "rc"), ca, require_tls=["smtp"])
    start(server)
    front = PostfixOverTls(
        reply_domain=REPLY_DOMAIN,
        rc_mta_smtp=f"127.0.0.1:{server.smtp_port}",
        rc_mta_lmtp=f"127.0.0.1:{server.lmtp_port}",
        keep_log_in=tmp_path,
    )
    try:
        front.start()
        task_id, request = new_request(server)
        address = request["complete_address"]
        message = reply_message(address, in_reply_to=request["message_id"])
        assert send_smtp(front.mx_port, message, address).code == 250  # queued by Postfix

        def delivered() -> bool:
            front.flush()
            return server.task(task_id)["status"] == "completed"

        wait_until(delivered, timeout=30, what=f"Postfix's delivery over TLS{front.log_tail()}")
        assert re.search(r"TLS connection established to \S+: TLSv1\.[23] with cipher", front.log())
        line = next(line for line in server.log_path.read_text().splitlines() if f"task={task_id}" in line)
        assert "source=smtp" in line and "TLSv1." in line
    finally:
        front.stop()
        server.stop()


def test_a_key_that_is_not_the_certificates_stops_serve_with_one_line(tmp_path: Path, ca: TestCa) -> None:
    server = with_tls(make_rc_mta(tmp_path), ca)
    _, other_key, _ = ca.issue(HOST)
    server.settings["inbound.tls"]["key_file"] = str(other_key)
    server.write_config()
    result = server.cli("serve", check=False)
    cert = server.settings["inbound.tls"]["cert_file"]
    assert result.returncode != 0
    assert result.stderr.strip() == f"rc-mta: error: TLS: {other_key} is not the key of the certificate in {cert}"
