"""The completion request a person receives, written to the outbox or sent over SMTP."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from conftest import REPLY_DOMAIN, RcMta, free_port
from silent_dns import run_where_names_hang
from smtpsink import SmtpRelay, running_relay


def _load(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_request_mail_has_buttons_reply_to_and_token_in_message_id(rc: RcMta) -> None:
    task_id = rc.add_task(title="Approve deploy to prod")
    sent = rc.request(task_id)
    message = _load(Path(sent["path"]).read_bytes())

    assert message["To"] == "alice@example.com"
    assert message["Reply-To"] == sent["reply_to"]
    assert message["Auto-Submitted"] == "auto-generated"
    assert "Approve deploy to prod" in message["Subject"]
    decide_token = sent["reply_to"].split("+")[1].split("@")[0]
    assert message["Message-ID"] == sent["message_id"]
    assert decide_token in message["Message-ID"]
    assert len({sent["complete_address"], sent["fail_address"], sent["reply_to"]}) == 3
    for address in (sent["complete_address"], sent["fail_address"], sent["reply_to"]):
        assert address.endswith("@" + REPLY_DOMAIN)
        assert len(address.split("@")[0]) <= 64

    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert sent["reply_to"] in text.get_content()  # the metadata block, for clients that drop +tokens
    links = [part.split('"')[0] for part in html.get_content().split('href="')[1:]]
    mailtos = [urlparse(link.replace("&amp;", "&")) for link in links if link.startswith("mailto:")]
    assert [unquote(m.path) for m in mailtos] == [sent["complete_address"], sent["fail_address"]]
    subjects = [parse_qs(m.query)["subject"][0] for m in mailtos]
    assert subjects == ["Complete: Approve deploy to prod", "Fail: Approve deploy to prod"]
    assert all(parse_qs(m.query, keep_blank_values=True)["body"][0].strip() == "" for m in mailtos)


@pytest.fixture
def smtp_sink() -> Iterator[tuple[SmtpRelay, int]]:
    port = free_port()
    with running_relay(port, "s3cret") as relay:
        yield relay, port


def test_request_is_sent_through_the_configured_smtp_server(fresh_rc: RcMta, smtp_sink: tuple[SmtpRelay, int]) -> None:
    sink, port = smtp_sink
    fresh_rc.settings["outbound"].update(
        transport="smtp",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_username="release",
        smtp_password="s3cret",
        from_address="release@example.com",
    )
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()

    sent = fresh_rc.request(task_id)

    assert sent["path"] is None
    assert sink.logins == [(b"release", b"s3cret")]
    [(mail_from, rcpts, raw)] = sink.received
    assert (mail_from, rcpts) == ("release@example.com", ["alice@example.com"])
    assert _load(raw)["Reply-To"] == sent["reply_to"]


def test_unreachable_smtp_server_keeps_the_request_queued_with_one_line_saying_why(fresh_rc: RcMta) -> None:
    fresh_rc.settings["outbound"].update(transport="smtp", smtp_host="127.0.0.1", smtp_port=free_port())
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()

    result = fresh_rc.cli("request", task_id, check=False)

    assert result.returncode == 0
    first = result.stdout.splitlines()[0]
    assert first.startswith("request ") and "queued (could not send through 127.0.0.1" in first
    assert "rc-mta serve delivers it" in first
    assert "Traceback" not in result.stderr


UNRESOLVED_RELAY = """
import json, subprocess, sys, time
started = time.monotonic()
done = subprocess.run([sys.executable, "-m", "rc_mta", *{argv!r}], capture_output=True, text=True, cwd={cwd!r})
print(json.dumps({{"code": done.returncode, "out": done.stdout, "err": done.stderr,
                  "took": time.monotonic() - started}}), flush=True)
"""


def test_a_relay_whose_name_never_resolves_leaves_the_request_deferred_within_its_timeout(
    fresh_rc: RcMta, tmp_path: Path
) -> None:
    """The command gives up on the relay at ``smtp_timeout``; its name look-up, which glibc
    keeps trying for 30 s here, must not keep it from exiting (asyncio.run waits for the
    executor's threads at the end, and the look-up was one of them)."""
    fresh_rc.settings["outbound"].update(transport="smtp", smtp_host="relay.silent.test", smtp_timeout="2s")
    fresh_rc.write_config()
    task_id = fresh_rc.add_task()
    argv = ["--config", str(fresh_rc.config_path), "request", task_id, "--json"]

    outcome = run_where_names_hang(tmp_path, UNRESOLVED_RELAY.format(argv=argv, cwd=str(fresh_rc.workdir)))

    assert outcome["code"] == 0, outcome
    assert json.loads(outcome["out"])["delivery"] == "deferred", outcome  # kept for serve to retry
    assert outcome["took"] < 10.0, outcome
