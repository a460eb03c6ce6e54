"""LMTP behind a front MTA: one reply per recipient after DATA (RFC 2033)."""

from __future__ import annotations

from conftest import RcMta
from mailclient import LmtpClient, reply_message


def test_lmtp_gives_each_recipient_its_own_reply(rc: RcMta) -> None:
    fresh, answered = rc.add_task(), rc.add_task()
    fresh_address = rc.request(fresh)["reply_to"]  # a button's mail would name another request's address
    answered_request = rc.request(answered)
    client = LmtpClient(rc.lmtp_port)
    try:
        assert (
            client.send(
                reply_message(answered_request["complete_address"], "Yes"), [answered_request["complete_address"]]
            )[0].code
            == 250
        )
        message = reply_message(fresh_address, "Approved")
        del message["To"]
        message["To"] = f"{fresh_address}, {answered_request['fail_address']}"

        replies = client.send(message, [fresh_address, answered_request["fail_address"]])
    finally:
        client.close()

    assert [r.code for r in replies] == [250, 550]
    assert replies[1].enhanced == "5.7.1"
    assert rc.task(fresh)["status"] == "completed"
    assert rc.task(answered)["status"] == "completed"


def test_lmtp_message_to_both_buttons_of_one_request_acts_on_neither(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    # The front MTA hands over both recipients; the Fail address was in Bcc.
    message = reply_message(request["complete_address"], "")
    client = LmtpClient(rc.lmtp_port)
    try:
        replies = client.send(message, [request["complete_address"], request["fail_address"]])
    finally:
        client.close()

    assert [(r.code, r.enhanced) for r in replies] == [(550, "5.6.0")] * 2
    assert "both the Complete and the Fail address" in replies[0].text
    assert rc.task(task_id)["status"] == "in_progress"


def test_lmtp_reply_a_delegate_sent_on_behalf_of_the_owner_is_refused(rc: RcMta) -> None:
    task_id = rc.add_task()
    request = rc.request(task_id)
    message = reply_message(request["complete_address"], "Approved")
    message["Sender"] = "Bob <bob@example.com>"
    client = LmtpClient(rc.lmtp_port)
    try:
        replies = client.send(message, [request["complete_address"]])
    finally:
        client.close()

    assert [(r.code, r.enhanced) for r in replies] == [(550, "5.7.1")]
    assert "sent by bob@example.com on behalf of" in replies[0].text
    assert rc.task(task_id)["status"] == "in_progress"


def test_lmtp_advertises_enhanced_status_codes_and_pipelining(rc: RcMta) -> None:
    client = LmtpClient(rc.lmtp_port)
    try:
        lhlo = client.command("LHLO mail.example.com")
        ehlo = client.command("EHLO mail.example.com")
    finally:
        client.close()
    assert lhlo.code == 250
    assert "ENHANCEDSTATUSCODES" in lhlo.text and "PIPELINING" in lhlo.text
    assert ehlo.code == 500


def test_lmtp_oversized_message_is_refused_for_every_recipient(rc: RcMta) -> None:
    a, b = rc.add_task(), rc.add_task()
    addresses = [rc.request(a)["complete_address"], rc.request(b)["complete_address"]]
    client = LmtpClient(rc.lmtp_port)
    try:
        replies = client.send(reply_message(addresses[0], ("z" * 70 + "\n") * 2000), addresses)
    finally:
        client.close()
    assert [(r.code, r.enhanced) for r in replies] == [(552, "5.3.4"), (552, "5.3.4")]
    assert rc.task(a)["status"] == rc.task(b)["status"] == "in_progress"
