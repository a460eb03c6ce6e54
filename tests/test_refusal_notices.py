"""Who is told of a refused reply in mailbox mode (``rc_mta/refusal_notices.py``): the rule
alone, on a reply's header as a poller reads it. The tests of the IMAP and Graph pollers
show it end to end, through the outbound queue to a relay."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rc_mta import smtp_replies as R
from rc_mta.pipeline import Decision, Outcome, Recipient
from rc_mta.refusal_notices import ReplyFields, why_not_noticed
from rc_mta.store import Request

REQUEST = Request("0123456789abcdef", "T-1", "alice@example.com", "Approve", 0.0, 4e9, None, None)
AUTHENTICATED = {"owner_auth": {"result": "pass", "reason": "aligned SPF pass", "domain": "example.com"}}
HEADER = "From: Alice <alice@example.com>\r\nTo: rc@reply.example.test\r\nSubject: Re: Approve\r\n"


def refused(reply: R.SmtpReply = R.ACTION_UNCLEAR, **changes: object) -> Decision:
    decision = Decision(
        reply, Outcome.REFUSE, Recipient("rc@reply.example.test"), request=REQUEST, checks=dict(AUTHENTICATED)
    )
    return replace(decision, **changes)  # type: ignore[arg-type]


def fields(extra: str = "", header: str = HEADER) -> ReplyFields:
    return ReplyFields.read(f"{extra}{header}\r\nMaybe\r\n".encode())


def test_an_unclear_reply_from_an_authenticated_from_is_told() -> None:
    assert why_not_noticed(refused(), fields()) is None
    assert fields().from_address == "alice@example.com" and fields().subject == "Re: Approve"


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ("Return-Path: <>\r\n", "null sender"),
        ("Auto-Submitted: auto-replied\r\n", "auto-submitted: auto-replied"),
        ("Precedence: bulk\r\n", "precedence: bulk"),
        ("List-Id: <team.example.com>\r\n", "List-Id: a list's message"),
        ("List-Unsubscribe: <mailto:leave@example.com>\r\n", "List-Unsubscribe: a list's message"),
    ],
)
def test_machine_and_list_mail_is_never_told(extra: str, why: str) -> None:
    assert why_not_noticed(refused(), fields(extra)) == f"machine or list mail ({why})"


def test_auto_submitted_no_is_a_person_and_is_told() -> None:
    assert why_not_noticed(refused(), fields("Auto-Submitted: no\r\n")) is None


def test_a_mailer_daemon_from_is_never_told() -> None:
    daemon = HEADER.replace("Alice <alice@example.com>", "Mail Delivery System <MAILER-DAEMON@example.com>")
    why = why_not_noticed(refused(), fields(header=daemon))
    assert why == "machine or list mail (from: mailer-daemon - delivery report)"


def test_an_unauthenticated_or_other_domain_from_is_never_told() -> None:
    failed = {"owner_auth": {"result": "fail", "reason": "no aligned pass", "domain": "example.com"}}
    assert why_not_noticed(refused(checks=failed), fields()) == "its From (example.com) is not authenticated"
    # A pass for another domain than the From's (two From addresses, a parse that differs) is no pass.
    other = HEADER.replace("alice@example.com", "alice@elsewhere.test")
    assert why_not_noticed(refused(), fields(header=other)) == "its From (elsewhere.test) is not authenticated"
    two = HEADER.replace("Alice <alice@example.com>", "alice@example.com, bob@example.com")
    assert why_not_noticed(refused(), fields(header=two)) == "no single From address"


def test_a_temporary_refusal_an_acceptance_and_a_reply_naming_no_request_are_never_told() -> None:
    assert why_not_noticed(refused(R.BACKEND_UNAVAILABLE), fields()) == "a temporary refusal: the reply is tried again"
    assert why_not_noticed(refused(R.TASK_ACTED), fields()) == "not refused"
    assert why_not_noticed(refused(R.NO_TOKEN, request=None), fields()) == "it names no request of ours"
