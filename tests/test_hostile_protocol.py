"""Hostile bytes at every door: the SMTP/LMTP listener, the log, the CLI, the HTTP API and
what a backend sends back. Each gets a clear refusal (a 5xx syntax reply, a 400, one
line), never a 451 or a 500 from an exception, and nothing it sent can forge a log line,
drive the operator's terminal, inject a mail header or hold a connection open.

Real servers: rc-mta as a subprocess (127.0.0.1 its only trusted relay; clients bind
127.0.0.2 to be someone else), the Release stand-in as the task backend."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPLY_DOMAIN, RcMta, make_rc_mta, wait_until
from release_server import FakeRelease

from rc_mta import smtp_replies as R
from rc_mta.logs import JsonFormatter, TextFormatter

TOKEN = "hostile-api-token-0123456789"
RELEASE_TOKEN = "release-personal-token-0123"
TASK = "Applications/Folder1/Release1/Phase1/Task1"
INJECTED_TITLE = "Approve\r\nBcc: evil@example.test"
ESC = b"\x1b[31m"
# A generous bound for "the server closed it": the configured timeouts are 1 s.
CLOSED_WITHIN = 15.0


@pytest.fixture(scope="module")
def release() -> Iterator[FakeRelease]:
    server = FakeRelease(token=RELEASE_TOKEN).start()
    server.add_task(TASK, title=INJECTED_TITLE, owner="alice")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, release: FakeRelease) -> Iterator[RcMta]:
    """rc-mta with Release as its backend, the API on, 1 s HTTP timeouts, and only
    127.0.0.1 trusted to send XCLIENT/XFORWARD."""
    rc = make_rc_mta(
        tmp_path_factory.mktemp("rc-mta-hostile"),
        tasks={"backend": "release"},
        # Release answers at once: a generous timeout, so a loaded machine does not make it "down".
        **{"tasks.release": {"url": release.url, "token": RELEASE_TOKEN, "timeout": "15s", "retries": 0}},
    )
    rc.settings["inbound"]["trusted_relays"] = ["127.0.0.1/32"]
    rc.settings["http"].update(api_tokens=[TOKEN], header_timeout="1s", body_timeout="1s")
    rc.start()
    yield rc
    rc.stop()


class RawSmtp:
    """A client that sends exactly the bytes it is given, one command line at a time."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.greeting = self.read_reply()

    def read_reply(self) -> tuple[int, bytes]:
        """Code and the last line's text (enhanced code first), as bytes: nothing decoded."""
        while True:
            line = self.file.readline()
            assert line.endswith(b"\r\n"), f"connection closed or reply cut short: {line!r}"
            if line[3:4] != b"-":
                return int(line[:3]), line[4:-2]

    def command(self, line: bytes) -> tuple[int, bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.read_reply()

    def close(self) -> None:
        self.command(b"QUIT")
        self.sock.close()


def session(port: int, source: str = "127.0.0.1", hello: bytes = b"EHLO relay.example.test") -> RawSmtp:
    client = RawSmtp(port, source)
    assert client.command(hello)[0] == 250
    return client


def assert_syntax_refusal(reply: tuple[int, bytes], expected: R.SmtpReply) -> None:
    """The named 5xx syntax reply, with its enhanced code and sentence, escaped to ASCII."""
    code, text = reply
    assert (code, text.split(b" ", 1)[0].decode()) == (expected.code, expected.enhanced), reply
    assert code != 451 and len(text) > 20
    assert not re.search(rb"[\x00-\x1f\x7f-\xff]", text), reply


def http(server: RcMta, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.http_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def http_port(server: RcMta) -> int:
    return int(str(server.settings["http"]["listen"]).rsplit(":", 1)[1])


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails if it is still open after the bound."""
    sock.settimeout(CLOSED_WITHIN)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        pytest.fail(f"the server still held the connection after {CLOSED_WITHIN} s; sent {received!r}")
    return received


# SMTP: addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize("smtputf8", [b"", b" SMTPUTF8"], ids=["plain", "smtputf8"])
def test_mail_from_that_is_not_utf8_is_a_553_bad_sender_syntax(server: RcMta, smtputf8: bytes) -> None:
    client = session(server.smtp_port)

    reply = client.command(b"MAIL FROM:<al\xffice@example.com>" + smtputf8)

    assert_syntax_refusal(reply, R.SENDER_SYNTAX)
    assert b"not UTF-8" in reply[1] and b"\\xff" in reply[1]
    assert client.command(b"MAIL FROM:<alice@example.com>")[0] == 250  # the session goes on
    client.close()


@pytest.mark.parametrize("smtputf8", [b"", b" SMTPUTF8"], ids=["plain", "smtputf8"])
def test_rcpt_to_that_is_not_utf8_is_a_553_bad_recipient_syntax(server: RcMta, smtputf8: bytes) -> None:
    client = session(server.smtp_port)
    assert client.command(b"MAIL FROM:<alice@example.com>" + smtputf8)[0] == 250

    for address in (b"\xff\xfe@" + REPLY_DOMAIN.encode(), b"rc+\xc3@" + REPLY_DOMAIN.encode()):
        assert_syntax_refusal(client.command(b"RCPT TO:<" + address + b">"), R.RECIPIENT_SYNTAX)
    client.close()


@pytest.mark.parametrize(
    "bad", [b"\x00", ESC, b"\x1b", b"\x7f", b"\x08"], ids=["nul", "csi-sequence", "bare-esc", "del", "backspace"]
)
def test_control_characters_in_addresses_are_refused_as_bad_syntax(server: RcMta, bad: bytes) -> None:
    client = session(server.smtp_port)

    assert_syntax_refusal(client.command(b"MAIL FROM:<al" + bad + b"ice@example.com>"), R.SENDER_SYNTAX)
    assert client.command(b"MAIL FROM:<alice@example.com>")[0] == 250
    assert_syntax_refusal(
        client.command(b"RCPT TO:<rc+" + bad + b"x@" + REPLY_DOMAIN.encode() + b">"), R.RECIPIENT_SYNTAX
    )
    client.close()


# SMTP: greetings, relay commands, unknown commands ---------------------------------------------


@pytest.mark.parametrize("hello", [b"EHLO", b"HELO"])
@pytest.mark.parametrize("name", [b"mx" + ESC + b".example.test", b"mx\x00.example.test", b"mx\xff.example.test"])
def test_a_greeting_with_control_characters_or_bad_bytes_is_a_501(server: RcMta, hello: bytes, name: bytes) -> None:
    client = RawSmtp(server.smtp_port)

    assert_syntax_refusal(client.command(hello + b" " + name), R.HELO_SYNTAX)
    assert client.command(b"MAIL FROM:<alice@example.com>")[0] == 503  # no greeting was taken
    client.close()


def test_lmtp_lhlo_and_addresses_are_screened_alike(server: RcMta) -> None:
    client = RawSmtp(server.lmtp_port)

    assert_syntax_refusal(client.command(b"LHLO mx" + ESC + b".example.test"), R.HELO_SYNTAX)
    assert client.command(b"LHLO mx.example.test")[0] == 250
    assert_syntax_refusal(client.command(b"MAIL FROM:<al\xffice@example.com>"), R.SENDER_SYNTAX)
    client.close()


@pytest.mark.parametrize("command", [b"XCLIENT", b"XFORWARD", b"XCLIENT ", b"XFORWARD "])
def test_a_bare_xclient_or_xforward_is_a_501_from_a_relay_and_550_from_anyone_else(
    server: RcMta, command: bytes
) -> None:
    relay = session(server.smtp_port, "127.0.0.1")
    stranger = session(server.smtp_port, "127.0.0.2")

    assert_syntax_refusal(relay.command(command), R.XCLIENT_SYNTAX)
    code, text = stranger.command(command)

    assert (code, text.split(b" ", 1)[0]) == (R.XCLIENT_DENIED.code, R.XCLIENT_DENIED.enhanced.encode())
    relay.close()
    stranger.close()


@pytest.mark.parametrize(
    "line",
    [
        b"XCLIENT NAME=mx\xff.example.test",
        b"XCLIENT NAME=mx" + ESC,
        b"XCLIENT ADDR=192.0.2.1 HELO=mx+1B+5B2J",
        b"XFORWARD NAME=a+0D+0Ab",
    ],
    ids=["not-utf8", "raw-esc", "xtext-esc", "xtext-crlf"],
)
def test_relay_attributes_that_hold_control_characters_are_refused(server: RcMta, line: bytes) -> None:
    relay = session(server.smtp_port)

    assert_syntax_refusal(relay.command(line), R.XCLIENT_SYNTAX)
    relay.close()


def test_an_unknown_command_is_echoed_escaped(server: RcMta) -> None:
    client = session(server.smtp_port)

    code, text = client.command(b"FOO" + ESC + b"\x00BAR")

    assert (code, text.split(b" ", 1)[0].decode()) == (R.UNKNOWN_COMMAND.code, R.UNKNOWN_COMMAND.enhanced)
    assert b"\x1b" not in text and b"\x00" not in text
    assert b"\\x1b" in text and b"\\x00" in text
    client.close()


def test_a_reply_echoes_at_most_a_short_excerpt_of_what_the_client_sent(server: RcMta) -> None:
    client = session(server.smtp_port)
    assert client.command(b"MAIL FROM:<alice@example.com>")[0] == 250
    domain = ".".join(["a" * 60] * 6) + ".example"

    code, text = client.command(f"RCPT TO:<rc@{domain}>".encode())

    assert (code, text.split(b" ", 1)[0].decode()) == (R.NOT_OUR_DOMAIN.code, R.NOT_OUR_DOMAIN.enhanced)
    assert domain.encode() not in text and b"..." in text
    assert len(text) < len(R.NOT_OUR_DOMAIN.text) + 64 + 10
    client.close()


def test_a_backend_reason_cannot_split_or_colour_the_reply() -> None:
    reply = str(R.BACKEND_REFUSED.with_text(why="frozen\r\n250 2.0.0 Task completed\x1b[2J"))

    assert "\r" not in reply and "\n" not in reply and "\x1b" not in reply
    assert reply.startswith("550 5.7.1 The workflow system refused this action: frozen\\r\\n250")


# Logs -------------------------------------------------------------------------------------------


def hostile_session(port: int) -> None:
    """Everything at once: what used to answer 451 with a traceback, and what used to
    reach the log raw."""
    client = session(port)
    for line in (
        b"XCLIENT",
        b"XFORWARD",
        b"FOO" + ESC + b"\x00BAR\x9b2J",
        b"MAIL FROM:<al\x00ice@example.com>",
        b"EHLO mx" + ESC + b".example.test",
        b"HELO \xff\xfe",
    ):
        code, _ = client.command(line)
        assert 500 <= code < 600, (line, code)
    client.close()


def test_a_hostile_session_leaves_no_traceback_and_no_raw_control_character_in_the_log(server: RcMta) -> None:
    hostile_session(server.smtp_port)

    log = wait_until(lambda: (t := server.log_path.read_bytes()) and b"HELO refused" in t and t, what="the log")
    assert b"Traceback" not in log
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", log), "a raw control character reached the log"
    for line in log.decode().splitlines():  # a record, or a traceback's indented line
        assert line.startswith("  ") or re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line), line


def test_json_log_lines_stay_one_parseable_object_each(fresh_rc: RcMta) -> None:
    fresh_rc.settings["inbound"]["trusted_relays"] = ["127.0.0.1/32"]
    fresh_rc.settings["log"] = {"format": "json"}
    fresh_rc.start()

    hostile_session(fresh_rc.smtp_port)

    log = wait_until(lambda: (t := fresh_rc.log_path.read_bytes()) and b"HELO refused" in t and t, what="the log")
    assert b"Traceback" not in log
    entries = [json.loads(line) for line in log.decode().splitlines()]
    assert any(e["msg"].startswith("HELO refused") for e in entries)


def log_record(message: str, *args: object, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("rc_mta.inbound", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(fields)
    try:
        raise ValueError("bad input\n2026-01-01 00:00:00,000 INFO rc_mta forged\x1b[2J")
    except ValueError:
        record.exc_info = sys.exc_info()
    return record


FORGED = "x\r\n2026-01-01 00:00:00,000 INFO rc_mta task completed\x1b]0;owned\x07\x9b31m\u2028\u202e\udcff"


def test_text_log_lines_escape_control_characters_in_message_fields_and_traceback() -> None:
    line = TextFormatter().format(log_record("rcpt %s refused", FORGED, rcpt=FORGED, client="192.0.2.1"))

    first, *rest = line.split("\n")
    assert rest and all(part.startswith("  ") for part in rest)  # the traceback, indented
    assert "forged" in line and "task completed" in first and "rcpt=" in first and "client=192.0.2.1" in first
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u202e\udcff]", line)


def test_json_log_lines_escape_what_json_itself_leaves_raw() -> None:
    line = JsonFormatter().format(log_record("rcpt %s refused", FORGED, rcpt=FORGED))

    assert "\n" not in line and not re.search("[\x00-\x1f\x7f-\x9f\u2028\u202e\udcff]", line)
    entry = json.loads(line)
    assert entry["rcpt"] == FORGED and entry["msg"] == f"rcpt {FORGED} refused"  # nothing lost


# Titles and owners: CLI, API, backend ------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--title", INJECTED_TITLE),
        ("--title", "Approve\nnow"),
        ("--title", "Approve\x1b[2J"),
        ("--title", "Approve\u2028now"),
        ("--owner", "alice@example.com\r\nBcc: evil@example.test"),
    ],
    ids=["title-crlf", "title-lf", "title-esc", "title-line-separator", "owner-crlf"],
)
def test_cli_refuses_a_task_whose_title_or_owner_breaks_lines_in_one_line(
    fresh_rc: RcMta, option: str, value: str
) -> None:
    fresh_rc.write_config()
    values = {"--title": "Approve deploy", "--owner": "alice@example.com", option: value}

    result = fresh_rc.cli("task", "add", *(x for pair in values.items() for x in pair), check=False)

    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and option in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert fresh_rc.cli_json("task", "list") == []


def outbox(server: RcMta) -> list[Path]:
    return sorted((server.workdir / "outbox").glob("*.eml"))


def test_api_refuses_to_mail_a_backend_title_that_breaks_lines_unless_given_one(server: RcMta) -> None:
    before = outbox(server)

    status, body = http(server, "POST", "/v1/requests", {"task_id": TASK, "owners": ["alice@example.com"]})

    assert (status, body["error"]["code"]) == (400, "invalid_request"), body
    assert [d["field"] for d in body["error"]["details"]] == ["title"]
    assert outbox(server) == before

    status, body = http(
        server, "POST", "/v1/requests", {"task_id": TASK, "owners": ["alice@example.com"], "title": "Approve"}
    )
    assert status == 201, body


def test_a_backend_title_with_crlf_cannot_inject_a_header_into_the_request_mail(server: RcMta) -> None:
    sent = server.cli_json("request", TASK, "--owner", "alice@example.com")

    message = email.message_from_bytes(Path(sent["path"]).read_bytes(), policy=email.policy.default)
    assert message["Bcc"] is None
    assert message["Subject"] == "Action needed: Approve Bcc: evil@example.test"


# HTTP timeouts ---------------------------------------------------------------------------------


def test_a_client_that_never_finishes_its_request_line_is_disconnected(server: RcMta) -> None:
    with socket.create_connection(("127.0.0.1", http_port(server))) as sock:
        sock.sendall(b"GET /healthz HT")

        assert read_until_closed(sock) == b""


def test_a_body_that_trickles_in_is_answered_408_and_the_connection_closed(server: RcMta) -> None:
    with socket.create_connection(("127.0.0.1", http_port(server))) as sock:
        sock.sendall(
            b"POST /v1/requests HTTP/1.1\r\nHost: rc-mta\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
            b'{"task_id": '
        )

        answer = read_until_closed(sock)

    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(payload)["error"]["code"] == "invalid_request"
