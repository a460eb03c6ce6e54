"""`rc-mta diagnose` says what the live server does, by construction: each case is judged by
diagnose (with the connection's facts) and then sent to the real SMTP listener, and the two
answers must be the same line. corp.test and the client addresses are as in test_intent.py."""

from __future__ import annotations

import email.policy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from conftest import REPLY_DOMAIN, RcMta, make_rc_mta, with_real_dns
from dnsserver import NsdServer
from mailclient import reply_message
from test_intent import HELO, raw_smtp

OWNER = "alice@corp.test"
KEY = (Path(__file__).parent / "keys" / "good-sel2048.pem").read_bytes()
SIGNED_FIELDS = [b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to", b"references"]


@dataclass(frozen=True)
class Case:
    """One message as a sending host hands it over: bytes, envelope, and which host."""

    raw: bytes
    rcpt: str
    mail_from: str
    source: str


def wire(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=email.policy.SMTP)


def signed(message: EmailMessage) -> bytes:
    raw = wire(message)
    return bytes(dkim.sign(raw, b"sel", b"corp.test", KEY, include_headers=SIGNED_FIELDS)) + raw


def spf_pass(request: dict[str, Any]) -> Case:
    return Case(
        wire(reply_message(request["complete_address"], "Ship it", sender=OWNER)),
        request["complete_address"],
        OWNER,
        "127.0.0.2",
    )


def dkim_only(request: dict[str, Any]) -> Case:
    message = reply_message(request["reply_to"], "Approved", sender=OWNER, in_reply_to=request["message_id"])
    return Case(signed(message), request["reply_to"], "b@noreply.spf.test", "127.0.0.5")


def forged_from(request: dict[str, Any]) -> Case:
    message = reply_message(request["complete_address"], "Ship it", sender=OWNER)
    return Case(wire(message), request["complete_address"], "mallory@evil.test", "127.0.0.6")


def signed_forward_replayed(request: dict[str, Any]) -> Case:
    forward = reply_message("bob@corp.test", "Approve? yes", sender=OWNER, in_reply_to=request["message_id"])
    return Case(signed(forward), request["complete_address"], "mallory@evil.test", "127.0.0.6")


def undecidable_words(request: dict[str, Any]) -> Case:
    message = reply_message(request["reply_to"], "Let me think about it", sender=OWNER)
    return Case(wire(message), request["reply_to"], OWNER, "127.0.0.2")


def out_of_office(request: dict[str, Any]) -> Case:
    message = reply_message(request["complete_address"], "I am away until Monday", sender=OWNER)
    message["Auto-Submitted"] = "auto-replied"
    return Case(wire(message), request["complete_address"], OWNER, "127.0.0.2")


def bare_address_by_in_reply_to(request: dict[str, Any]) -> Case:
    bare = f"rc@{REPLY_DOMAIN}"
    message = reply_message(bare, "No, tests are red", sender=OWNER, in_reply_to=request["message_id"])
    return Case(wire(message), bare, OWNER, "127.0.0.2")


def smuggled_header(request: dict[str, Any]) -> Case:
    raw = b"X-Note: x\rFrom: mallory@evil.test\r\n" + signed(
        reply_message(request["complete_address"], "Ok", sender=OWNER)
    )
    return Case(raw, request["complete_address"], "b@noreply.spf.test", "127.0.0.5")


CASES: list[Callable[[dict[str, Any]], Case]] = [
    spf_pass,
    dkim_only,
    forged_from,
    signed_forward_replayed,
    undecidable_words,
    out_of_office,
    bare_address_by_in_reply_to,
    smuggled_header,
]


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory, dns_server: NsdServer) -> Iterator[RcMta]:
    server = with_real_dns(make_rc_mta(tmp_path_factory.mktemp("rc-mta-one-path")), dns_server)
    server.start()
    yield server
    server.stop()


def diagnose(rc: RcMta, case: Case, tmp_path: Path) -> dict[str, Any]:
    saved = tmp_path / "reply.eml"
    saved.write_bytes(case.raw)
    args = ["--client-ip", case.source, "--helo", HELO[case.source], "--mail-from", case.mail_from]
    report: dict[str, Any] = json.loads(rc.cli("diagnose", "--json", *args, str(saved)).stdout)
    return report


@pytest.mark.parametrize("build", CASES, ids=[c.__name__ for c in CASES])
def test_diagnose_answers_what_the_server_answers(rc: RcMta, tmp_path: Path, build: Callable[..., Case]) -> None:
    task_id = rc.add_task(owner=OWNER)
    case = build(rc.request(task_id))

    predicted = diagnose(rc, case, tmp_path)
    code, text = raw_smtp(rc.smtp_port, case.raw, case.rcpt, case.mail_from, case.source)

    assert predicted["smtp_reply"] == f"{code} {text}", predicted
    assert predicted["assumed"].startswith(f"SMTP from {case.source}")
    acted = rc.task(task_id)["status"] != "in_progress"
    assert acted == (predicted["would"] in ("complete", "fail"))


def test_diagnose_of_the_readme_reply_agrees_with_the_server(fresh_rc: RcMta, tmp_path: Path) -> None:
    # The README's walk-through: a local client, checks at their defaults (loopback exempt).
    fresh_rc.start()
    task_id = fresh_rc.add_task()
    request = fresh_rc.request(task_id)
    raw = wire(reply_message(request["complete_address"], "Looks good, ship it\n\n-- \nAlice"))
    saved = tmp_path / "reply.eml"
    saved.write_bytes(raw)

    predicted = json.loads(fresh_rc.cli("diagnose", "--json", "--client-ip", "127.0.0.1", str(saved)).stdout)
    code, text = raw_smtp(fresh_rc.smtp_port, raw, request["complete_address"], "alice@example.com", "127.0.0.1")

    assert predicted["smtp_reply"] == f"{code} {text}"
    assert predicted["would"] == "complete" and code == 250
    assert predicted["comment"] == "Looks good, ship it"


def test_diagnose_judges_every_recipient_the_message_names(rc: RcMta, tmp_path: Path) -> None:
    first, second = rc.add_task(owner=OWNER), rc.add_task(owner=OWNER)
    to_first = rc.request(first)["complete_address"]
    message = reply_message(to_first, "Ship it", sender=OWNER)
    message.replace_header("To", f"{to_first}, rc+{'a' * 40}@{REPLY_DOMAIN}")
    saved = tmp_path / "reply.eml"
    saved.write_bytes(wire(message))

    report = json.loads(rc.cli("diagnose", "--json", "--as-mailbox", str(saved)).stdout)

    assert len(report["decisions"]) == 2
    assert {d["smtp_reply"].split()[0] for d in report["decisions"]} == {"550"}
    assert report["assumed"].startswith("read from a mailbox")
    assert rc.task(first)["status"] == "in_progress" and rc.task(second)["status"] == "in_progress"
