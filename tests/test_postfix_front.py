"""Real Postfix in front of a real rc-mta, configured from the recipe in conf/postfix/.

The test client connects to Postfix from other loopback addresses (127.0.0.2, .5), so
only XFORWARD can tell rc-mta who the original client was: Postfix itself is 127.0.0.1.
corp.test's SPF allows 127.0.0.2 only; both .2 and .5 pass FCrDNS (tests/zones/).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REPLY_DOMAIN, RcMta, make_rc_mta, require_server, with_real_dns
from dnsserver import NsdServer
from mailclient import SmtpOutcome, reply_message, send_smtp
from postfix import Postfix, postfix_available

OWNER = "alice@corp.test"
ALLOWED_BY_SPF = "127.0.0.2"
NOT_IN_SPF = "127.0.0.5"


@pytest.fixture(scope="module")
def rc_behind_postfix(tmp_path_factory: pytest.TempPathFactory, dns_server: NsdServer) -> Iterator[RcMta]:
    server = with_real_dns(make_rc_mta(tmp_path_factory.mktemp("rc-mta-behind-postfix")), dns_server)
    server.settings["inbound"]["trusted_relays"] = ["127.0.0.1/32"]
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory, rc_behind_postfix: RcMta) -> Iterator[Postfix]:
    require_server(postfix_available(), "postfix (Debian package postfix), run as root")
    front = Postfix(
        reply_domain=REPLY_DOMAIN,
        rc_mta_smtp=f"127.0.0.1:{rc_behind_postfix.smtp_port}",
        rc_mta_lmtp=f"127.0.0.1:{rc_behind_postfix.lmtp_port}",
        keep_log_in=tmp_path_factory.mktemp("postfix"),
    )
    try:
        front.start()
        yield front
    finally:
        front.stop()


def new_request(rc: RcMta) -> tuple[str, dict[str, Any]]:
    task_id = rc.add_task(title="Approve deploy to prod", owner=OWNER)
    return task_id, rc.request(task_id)


def reply_through(port: int, request: dict[str, Any], source_address: str) -> SmtpOutcome:
    """Alice presses Complete; her provider's server at source_address sends it to Postfix."""
    address = request["complete_address"]
    message = reply_message(address, "Looks good, ship it", sender=OWNER, in_reply_to=request["message_id"])
    return send_smtp(port, message, address, mail_from=OWNER, source_address=source_address)


def status_after_delivery(rc: RcMta, postfix: Postfix, task_id: str, log_needle: str, timeout: float = 20.0) -> str:
    """The task's status once Postfix has logged the LMTP outcome (flushing the queue meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and log_needle not in postfix.log():
        postfix.flush()
        time.sleep(0.5)
    status: str = rc.task(task_id)["status"]
    return status


def rc_mta_line_about(rc: RcMta, task_id: str, source: str) -> str:
    """rc-mta's log line for the reply that acted on task_id: it names the client the checks saw."""
    lines = [line for line in rc.log_path.read_text().splitlines() if f"task={task_id}" in line and source in line]
    return lines[-1] if lines else ""


def diagnostics(rc: RcMta, postfix: Postfix) -> str:
    return f"{postfix.log_tail()}\nrc-mta log:\n{rc.log_path.read_text()[-3000:]}"


def test_reply_through_postfix_filter_completes_the_task(rc_behind_postfix: RcMta, postfix: Postfix) -> None:
    task_id, request = new_request(rc_behind_postfix)

    outcome = reply_through(postfix.filter_port, request, ALLOWED_BY_SPF)

    assert outcome.code == 250, f"{outcome}{diagnostics(rc_behind_postfix, postfix)}"
    assert rc_behind_postfix.task(task_id)["status"] == "completed"
    assert f"client={ALLOWED_BY_SPF}" in rc_mta_line_about(rc_behind_postfix, task_id, "source=smtp")


def test_sender_outside_spf_is_refused_to_its_face_through_postfix_filter(
    rc_behind_postfix: RcMta, postfix: Postfix
) -> None:
    task_id, request = new_request(rc_behind_postfix)

    outcome = reply_through(postfix.filter_port, request, NOT_IN_SPF)

    # rc-mta judged SPF on the original client (.5), not on Postfix (127.0.0.1, which
    # corp.test does not allow either: the reason names the address that was checked).
    assert (outcome.code, outcome.enhanced) == (550, "5.7.23"), f"{outcome}{diagnostics(rc_behind_postfix, postfix)}"
    assert NOT_IN_SPF in outcome.text
    assert rc_behind_postfix.task(task_id)["status"] == "in_progress"


def test_reply_queued_by_postfix_and_delivered_over_lmtp_completes_the_task(
    rc_behind_postfix: RcMta, postfix: Postfix
) -> None:
    task_id, request = new_request(rc_behind_postfix)

    outcome = reply_through(postfix.mx_port, request, ALLOWED_BY_SPF)

    assert outcome.code == 250, f"{outcome}{diagnostics(rc_behind_postfix, postfix)}"
    assert "queued as" in outcome.text  # Postfix, not rc-mta, accepted it
    status = status_after_delivery(rc_behind_postfix, postfix, task_id, f"to=<{request['complete_address']}>")
    assert status == "completed", diagnostics(rc_behind_postfix, postfix)
    assert f"client={ALLOWED_BY_SPF}" in rc_mta_line_about(rc_behind_postfix, task_id, "source=lmtp")


def test_lmtp_delivery_from_sender_outside_spf_bounces_with_spf_reason(
    rc_behind_postfix: RcMta, postfix: Postfix
) -> None:
    task_id, request = new_request(rc_behind_postfix)

    outcome = reply_through(postfix.mx_port, request, NOT_IN_SPF)

    assert outcome.code == 250, f"{outcome}{diagnostics(rc_behind_postfix, postfix)}"  # after the queue
    delivery = f"to=<{request['complete_address']}>"
    status = status_after_delivery(rc_behind_postfix, postfix, task_id, delivery)
    lmtp_lines = [line for line in postfix.log().splitlines() if delivery in line and "/lmtp[" in line]
    assert lmtp_lines, diagnostics(rc_behind_postfix, postfix)
    assert "status=bounced" in lmtp_lines[-1] and "said: 550 5.7.23" in lmtp_lines[-1]
    assert f"does not allow {NOT_IN_SPF}" in lmtp_lines[-1]  # judged on the original client
    assert status == "in_progress"
