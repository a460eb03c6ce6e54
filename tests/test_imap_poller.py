"""Mailbox mode over IMAP, end to end: a real rc-mta process polls a real Dovecot, replies
are delivered with a real IMAP client, and the tests look where a user would look: the
task, the mailbox folders, the servers' logs."""

from __future__ import annotations

import base64
import email.policy
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import dkim
import pytest
from conftest import (
    RcMta,
    free_port,
    instances_sharing,
    make_rc_mta,
    require_server,
    store_write_locked,
    wait_until,
)
from dnsserver import NsdServer
from dovecot import Dovecot, available
from huge_literal_imap import HugeLiteralImap
from mailclient import reply_message
from smtpsink import SmtpRelay, relay_outbound, running_relay
from token_introspection import AuthServer
from webhook_receiver import WebhookReceiver

from rc_mta import smtp_replies as R

CORP_KEY = (Path(__file__).parent / "keys" / "good-sel2048.pem").read_bytes()  # corp.test's selector "sel"
TRUSTED_STAMP = "mx.example.com; spf=pass smtp.mailfrom=alice@example.com; dmarc=pass header.from=example.com"
CORP_OWNER = "alice@corp.test"


def polling(server: RcMta, dovecot: Dovecot, dns_server: NsdServer, **mailbox: Any) -> RcMta:
    """``server`` configured to poll ``dovecot``, trusting mx.example.com's stamps; config written,
    since the CLI (task add, request) reads it before the server starts."""
    server.workdir.mkdir(exist_ok=True)
    server.settings["mailbox"] = {
        "source": "imap",
        "host": "127.0.0.1",
        "port": dovecot.port,
        "tls": False,
        "username": dovecot.username,
        "password": dovecot.password,
        "sync_interval": "2s",
        "startup_delay": 0,
        "trusted_authserv_ids": ["mx.example.com"],
        **mailbox,
    }
    server.settings["checks"] = {"dmarc": {"policy": "tag"}}
    server.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "2s"}
    server.settings["log"] = {"level": "trace"}
    server.write_config()
    return server


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    require_server(available(), "dovecot (Debian package dovecot-imapd)")
    server = Dovecot(tmp_path / "dovecot").start()
    yield server
    server.cleanup()


@pytest.fixture
def servers(tmp_path: Path, dovecot: Dovecot, dns_server: NsdServer) -> Iterator[Callable[..., RcMta]]:
    """Builds the rc-mta under test, polling ``dovecot``; stops it afterwards."""
    started: list[RcMta] = []

    def build(**mailbox: Any) -> RcMta:
        server = polling(make_rc_mta(tmp_path / "rc-mta"), dovecot, dns_server, **mailbox)
        started.append(server)
        return server

    yield build
    for server in started:
        server.stop()


def good_reply(server: RcMta, task_id: str, body: str = "Looks good, ship it") -> EmailMessage:
    """A reply from the owner, stamped by the receiving MX we trust."""
    address = server.request(task_id)["complete_address"]
    return reply_message(address, body, headers={"Authentication-Results": TRUSTED_STAMP})


def completed(server: RcMta, task_id: str) -> bool:
    return bool(server.task(task_id)["status"] == "completed")


def rc_log(server: RcMta) -> str:
    return server.log_path.read_text(errors="replace") if server.log_path.exists() else ""


def imap_metric(server: RcMta, name: str) -> float:
    """The value of rc-mta's ``name{source="imap"}`` sample on /metrics (0 if absent)."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf'^{re.escape(name)}\{{source="imap"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def idle_gauge(server: RcMta) -> float:
    return imap_metric(server, "rc_mta_poller_idle")


def synced_again(*servers: RcMta, rounds: int = 2) -> None:
    """Wait until each server finished ``rounds`` more mailbox syncs (so at least one more
    began after this call): what a later sync would do again has had its chance to show."""
    name = "rc_mta_poller_messages_per_cycle_count"
    targets = [(server, imap_metric(server, name) + rounds) for server in servers]
    wait_until(lambda: all(imap_metric(s, name) >= n for s, n in targets), what=f"{rounds} more syncs of each")


def message_ids(messages: list[tuple[set[str], bytes]]) -> list[str]:
    parsed = (email.message_from_bytes(raw, policy=email.policy.default) for _, raw in messages)
    return [str(m["Message-ID"]) for m in parsed]


def test_reply_arriving_while_idle_completes_the_task_within_seconds(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    # No sync is due within the test: whatever completes the task was woken by IDLE.
    server = servers(sync_interval="1h", disposition="delete")
    task_id = server.add_task()
    reply = good_reply(server, task_id)
    server.start()
    wait_until(lambda: idle_gauge(server) == 1.0, what="the poller to idle")

    dovecot.deliver(reply)
    wait_until(lambda: completed(server, task_id), timeout=60, what="the task to complete")

    task = server.task(task_id)
    assert [c["text"] for c in task["comments"]] == ["Looks good, ship it"]
    assert wait_until(lambda: dovecot.messages() == [], what="the reply to be deleted") is not None


def test_pool_of_three_connections_handles_six_replies_side_by_side(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    server = servers(pool_size=3, disposition="delete")
    tasks = [server.add_task(f"Task {i}") for i in range(6)]
    for task_id in tasks:
        dovecot.deliver(good_reply(server, task_id))
    server.start()

    def all_done() -> bool:
        statuses = {t["id"]: t["status"] for t in server.cli_json("task", "list")}
        return all(statuses[t] == "completed" for t in tasks)

    wait_until(all_done, timeout=30, what="all six tasks")

    # rc-mta says which connection handled each reply; all three did some of the work...
    used = set(re.findall(r"imap uid=\d+ processed: .*connection (#\d)\)", rc_log(server)))
    assert used == {"#0", "#1", "#2"}
    # ...and Dovecot saw three sessions of that user logged in at the same time.
    log = dovecot.log_text()
    logins = log.count(f"Login: user=<{dovecot.username}>")
    gone = len(re.findall(rf"imap\({re.escape(dovecot.username)}\).*Disconnected", log))
    assert logins - gone >= 3  # the test's own sessions logged out; rc-mta's three stay open
    assert wait_until(lambda: dovecot.messages() == [], what="the replies to be deleted") is not None


def test_move_files_replies_in_processed_and_forgeries_in_rejected(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    server = servers(disposition="move")
    good_task, forged_task = server.add_task("Good"), server.add_task("Forged", owner="alice@good.test")
    good = good_reply(server, good_task)
    # good.test publishes DMARC p=reject; this unsigned reply's only "pass" is from an untrusted stamp.
    forged_address = server.request(forged_task)["complete_address"]
    forged = reply_message(
        forged_address, "Ship it", sender="alice@good.test", headers={"Authentication-Results": "evil.test; dmarc=pass"}
    )
    dovecot.deliver(good)
    dovecot.deliver(forged)
    server.start()

    wait_until(lambda: len(dovecot.messages("Rejected")) == 1, what="the forgery in Rejected")
    wait_until(lambda: len(dovecot.messages("Processed")) == 1, what="the reply in Processed")

    assert dovecot.messages() == []
    assert message_ids(dovecot.messages("Processed")) == [good["Message-ID"]]
    assert message_ids(dovecot.messages("Rejected")) == [forged["Message-ID"]]
    assert completed(server, good_task)
    forged_task_now = server.task(forged_task)
    assert forged_task_now["status"] not in ("completed", "failed") and forged_task_now["comments"] == []
    # Read with BODY.PEEK: filed as they arrived, not marked read for whoever looks next.
    assert all("\\Seen" not in flags for flags, _ in dovecot.messages("Processed"))


def test_a_post_stamped_spf_pass_but_addressed_to_a_list_acts_on_nothing(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    server = servers(disposition="move")
    task_id = server.add_task()
    address = server.request(task_id)["complete_address"]
    # The owner's post to a list someone added the reply address to: the owner's own server
    # sent it (the trusted receiver stamped spf=pass), but to the list, not to the request.
    post = reply_message(
        "team@example.com",
        "Approved, the offsite is on Friday",
        headers={"Authentication-Results": TRUSTED_STAMP, "Delivered-To": address},
    )
    dovecot.deliver(post)
    server.start()

    wait_until(lambda: len(dovecot.messages("Rejected")) == 1, what="the post in Rejected")

    assert message_ids(dovecot.messages("Rejected")) == [post["Message-ID"]]
    task = server.task(task_id)
    assert task["status"] == "in_progress" and task["comments"] == []


def test_keep_flags_handled_replies_and_never_acts_on_them_twice(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    server = servers(disposition="keep")
    task_id = server.add_task()
    dovecot.deliver(good_reply(server, task_id))
    server.start()

    wait_until(lambda: completed(server, task_id), what="the task to complete")
    wait_until(lambda: all("\\Flagged" in f for f, _ in dovecot.messages()), what="the reply to be flagged")
    synced_again(server)

    [(flags, _)] = dovecot.messages()
    assert "\\Flagged" in flags and "\\Seen" not in flags
    assert len(server.task(task_id)["comments"]) == 1
    assert len(re.findall(r"imap uid=\d+ processed", rc_log(server))) == 1


def test_a_draft_in_the_folder_is_never_read_acted_on_or_filed(servers: Callable[..., RcMta], dovecot: Dovecot) -> None:
    """A draft was never received: whoever can write to the mailbox, or a client saving the
    owner's unsent reply there, can make one look like anything. One holding the owner's
    stamped "Approved" stays where it is, unread; a reply delivered beside it acts."""
    server = servers(disposition="move")
    drafted, answered = server.add_task("Drafted"), server.add_task("Answered")
    draft = good_reply(server, drafted, "Approved")
    dovecot.deliver(draft, flags="(\\Draft)")  # uid 1
    dovecot.deliver(good_reply(server, answered))
    server.start()

    wait_until(lambda: completed(server, answered), what="the reply's task to complete")
    wait_until(lambda: len(dovecot.messages("Processed")) >= 1, what="the reply in Processed")
    synced_again(server)  # a later round would read the draft by now

    task = server.task(drafted)
    assert task["status"] == "in_progress" and task["comments"] == []
    [(flags, _)] = dovecot.messages()
    assert message_ids(dovecot.messages()) == [draft["Message-ID"]]
    assert "\\Draft" in flags and "\\Seen" not in flags
    log = rc_log(server)
    assert log.count("imap uid=1 draft: left alone") == 1  # said once, not every round
    assert "UID FETCH 1 " not in log  # the protocol trace: never fetched


def test_dovecot_restart_midway_loses_no_reply_and_doubles_none(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    server = servers(disposition="move")
    first, second = server.add_task("First"), server.add_task("Second")
    second_reply = good_reply(server, second)
    dovecot.deliver(good_reply(server, first))
    server.start()
    wait_until(lambda: completed(server, first), what="the first task")

    dovecot.restart()
    dovecot.deliver(second_reply)
    wait_until(lambda: completed(server, second), timeout=30, what="the second task after the restart")

    assert "reconnecting" in rc_log(server)
    for task_id in (first, second):
        assert len(server.task(task_id)["comments"]) == 1
    assert dovecot.messages() == []
    assert len(dovecot.messages("Processed")) == 2


def test_reply_stays_in_the_mailbox_while_the_store_is_down_and_acts_once_later(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    server = servers(disposition="move")
    task_id = server.add_task()
    reply = good_reply(server, task_id)

    with store_write_locked(server.workdir / "rc-mta.db"):
        server.start()
        dovecot.deliver(reply)
        wait_until(lambda: re.search(r"imap uid=\d+ retry", rc_log(server)), timeout=30, what="a deferral")
        [(flags, _)] = dovecot.messages()  # still in INBOX, untouched
        assert flags & {"\\Flagged", "\\Deleted", "\\Seen"} == set()

    wait_until(lambda: len(dovecot.messages("Processed")) == 1, timeout=30, what="the reply in Processed")
    task = server.task(task_id)
    assert task["status"] == "completed"
    assert len(task["comments"]) == 1
    assert dovecot.messages() == []


def test_xoauth2_login_with_a_token_from_the_authorization_server(tmp_path: Path, dns_server: NsdServer) -> None:
    require_server(available(), "dovecot (Debian package dovecot-imapd)")
    with AuthServer(username="replies@example.test") as auth:
        dovecot = Dovecot(tmp_path / "dovecot", oauth2_introspection_url=auth.introspection_url).start()
        server = make_rc_mta(tmp_path / "rc-mta")
        try:
            polling(
                server,
                dovecot,
                dns_server,
                password="",
                disposition="delete",
                oauth2={
                    "token_url": auth.token_url,
                    "client_id": auth.client_id,
                    "client_secret": auth.client_secret,
                    "refresh_token": auth.refresh_token,
                },
            )
            task_id = server.add_task()
            dovecot.deliver(good_reply(server, task_id))
            server.start()

            wait_until(lambda: completed(server, task_id), what="the task to complete")

            assert auth.issued and auth.issued[0] in auth.introspected
            # The exchange is logged at trace level, but never the token, raw or inside the SASL string.
            sasl = base64.b64encode(f"user={dovecot.username}\x01auth=Bearer {auth.issued[0]}".encode()).decode()
            logged = rc_log(server)
            assert "AUTHENTICATE XOAUTH2" in logged
            assert auth.issued[0] not in logged and sasl[:40] not in logged
            assert re.search(rf"Login: user=<{re.escape(dovecot.username)}>, method=XOAUTH2", dovecot.log_text())
            assert wait_until(lambda: dovecot.messages() == [], what="the reply to be deleted") is not None
        finally:
            server.stop()
            dovecot.cleanup()


def test_starttls_connection_verifies_the_server_certificate(
    tmp_path: Path, dns_server: NsdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_server(available(), "dovecot (Debian package dovecot-imapd)")
    dovecot = Dovecot(tmp_path / "dovecot", tls=True).start()
    server = polling(make_rc_mta(tmp_path / "rc-mta"), dovecot, dns_server, starttls=True, disposition="delete")
    try:
        assert dovecot.ca_file is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))  # rc-mta trusts the test certificate
        task_id = server.add_task()
        dovecot.deliver(good_reply(server, task_id))
        server.start()

        wait_until(lambda: completed(server, task_id), what="the task to complete")

        assert "STARTTLS" in rc_log(server)
        assert re.search(rf"Login: user=<{re.escape(dovecot.username)}>, method=PLAIN, .*\bTLS\b", dovecot.log_text())
    finally:
        server.stop()
        dovecot.cleanup()


def deliver_signed_by_corp(dovecot: Dovecot, stamp: str, *messages: EmailMessage) -> None:
    """Each message signed by corp.test (To and the threading fields), as the mailbox's MX
    stamped it (``stamp``)."""
    for message in messages:
        raw = message.as_bytes(policy=email.policy.SMTP)
        headers = [b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to", b"references"]
        raw = bytes(dkim.sign(raw, b"sel", b"corp.test", CORP_KEY, include_headers=headers)) + raw
        dovecot.deliver(f"Authentication-Results: {stamp}\r\n".encode() + raw)


def owners_signed_forward(request: dict[str, Any]) -> EmailMessage:
    """Alice forwarded the request to bob; mallory re-sends that signed forward to the mailbox."""
    forward = reply_message("bob@corp.test", "Approve? I think yes.", sender=CORP_OWNER, subject="Fwd: Approve")
    forward["References"] = request["message_id"]
    return forward


def owners_yes_to_someone_elses_question(request: dict[str, Any]) -> EmailMessage:
    """Mallory asked alice something else, Reply-To the request's address; alice said yes to her."""
    return reply_message(request["reply_to"], "Yes, go ahead", sender=CORP_OWNER, in_reply_to="<cleanup-1@corp.test>")


NOT_ANSWERS = {
    "signed_forward": (owners_signed_forward, "5.7.21"),
    "yes_to_someone_elses_question": (
        owners_yes_to_someone_elses_question,
        "This is a reply to another message (<cleanup-1@corp.test>)",
    ),
}


@pytest.mark.parametrize("case", NOT_ANSWERS)
def test_an_owners_signed_mail_that_is_not_an_answer_acts_on_nothing(
    servers: Callable[..., RcMta], dovecot: Dovecot, case: str
) -> None:
    build, refused = NOT_ANSWERS[case]
    server = servers(disposition="move")
    other_task, answered_task = (
        server.add_task("Other", owner=CORP_OWNER),
        server.add_task("Answered", owner=CORP_OWNER),
    )
    other, answered = server.request(other_task), server.request(answered_task)
    # The mailbox's MX stamps what it saw: corp.test's signature verified, no SPF of corp.test.
    stamp = "mx.example.com; spf=none; dkim=pass header.d=corp.test; dmarc=pass header.from=corp.test"
    not_an_answer = build(other)
    # Alice answered the other with Reply: her signature covers To and In-Reply-To.
    answer = reply_message(answered["reply_to"], "Approved", sender=CORP_OWNER, in_reply_to=answered["message_id"])
    deliver_signed_by_corp(dovecot, stamp, not_an_answer, answer)
    server.start()

    wait_until(lambda: len(dovecot.messages("Rejected")) == 1, what="the message in Rejected")
    wait_until(lambda: len(dovecot.messages("Processed")) == 1, what="the answer in Processed")

    assert message_ids(dovecot.messages("Rejected")) == [not_an_answer["Message-ID"]]
    assert server.task(other_task)["status"] == "in_progress"
    assert completed(server, answered_task)
    assert refused in rc_log(server)


# Several instances on one mailbox ---------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver(delay=0.5).start()  # a slow backend: the other poller has time to look
    yield hook
    hook.stop()


def test_two_instances_polling_one_inbox_act_on_and_file_each_reply_once(
    tmp_path: Path, dovecot: Dovecot, dns_server: NsdServer, pg_url: str, receiver: WebhookReceiver
) -> None:
    """Two rc-mta processes share one PostgreSQL store and poll the same INBOX every second:
    each reply reaches the task backend once and lands in Processed once, and neither
    instance trips over the other (no error, no reconnect)."""
    a, b = (
        polling(server, dovecot, dns_server, sync_interval="1s", pool_size=2, disposition="move")
        for server in instances_sharing(tmp_path, pg_url, receiver.url, receiver.secret)
    )
    tasks = [f"T-{i}" for i in range(10)]
    replies = []
    for task_id in tasks:
        address = a.cli_json("request", task_id, "--owner", "alice@example.com")["complete_address"]
        replies.append(reply_message(address, f"Ship {task_id}", headers={"Authentication-Results": TRUSTED_STAMP}))
    try:
        for reply in replies[:4]:  # waiting before either starts: both find them in their first sync
            dovecot.deliver(reply)
        starting = threading.Thread(target=b.start)
        starting.start()
        a.start()
        starting.join()
        for reply in replies[4:]:  # and the rest while both idle on the folder
            dovecot.deliver(reply)

        wait_until(lambda: len(dovecot.messages("Processed")) >= len(replies), timeout=60, what="every reply filed")
        synced_again(a, b)  # a double action or filing would show by then
    finally:
        a.stop()
        b.stop()

    acted = sorted(p["task_id"] for p in receiver.payloads)
    assert acted == sorted(tasks)  # the backend heard of each task exactly once
    assert sorted(message_ids(dovecot.messages("Processed"))) == sorted(r["Message-ID"] for r in replies)
    assert dovecot.messages() == [] and dovecot.messages("Rejected") == []
    for server in (a, b):
        log = rc_log(server)
        assert "selected" in log  # both really polled the folder
        assert "Traceback" not in log and " ERROR " not in log and "reconnecting" not in log, log[-3000:]


def test_reply_moved_away_by_someone_else_while_handled_is_not_an_error(
    servers: Callable[..., RcMta], dovecot: Dovecot, receiver: WebhookReceiver
) -> None:
    receiver.delay = 3.0  # the backend thinks; meanwhile a person files the reply elsewhere
    server = servers(disposition="move")
    server.settings["tasks"] = {
        "backend": "webhook",
        "webhook": {"url": receiver.url, "secret": receiver.secret, "timeout": "10s"},
    }
    server.write_config()
    address = server.cli_json("request", "T-1", "--owner", "alice@example.com")["complete_address"]
    dovecot.deliver(reply_message(address, "Ship it", headers={"Authentication-Results": TRUSTED_STAMP}))
    server.start()

    wait_until(lambda: receiver.payloads, what="the backend to be called")
    with dovecot.client() as person:
        person.create("Elsewhere")
        person.select("INBOX")
        status, _ = person.uid("MOVE", "1", "Elsewhere")
        assert status == "OK"
    wait_until(lambda: "imap uid=1 processed" in rc_log(server), what="the reply to be handled")
    synced_again(server)

    assert [p["task_id"] for p in receiver.payloads] == ["T-1"]
    assert len(dovecot.messages("Elsewhere")) == 1
    assert dovecot.messages() == [] and dovecot.messages("Processed") == []
    log = rc_log(server)
    assert "reconnecting" not in log and "Traceback" not in log and " ERROR " not in log


def test_a_reply_over_max_message_size_is_filed_as_rejected_and_never_read_whole(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    """SMTP refuses a message over [inbound] max_message_size at DATA. The poller fetched a
    mailbox's message whole, whatever its size, and checked and read all of it (a 20 MB
    signed one held the event loop 1.3 s while its DKIM body hash was computed). It fetches
    one byte past the limit now, and such a message is refused unread, as at DATA: filed in
    Rejected, its task untouched, while a reply within the limit is handled as ever."""
    server = servers(disposition="move")
    limit = 64 * 1024
    server.settings["inbound"]["max_message_size"] = limit
    server.write_config()
    big_task, small_task = server.add_task("Big"), server.add_task("Small")
    padding = "".join(f"line {i} of what was quoted below the answer\n" for i in range(4000))  # ~180 KB
    big = good_reply(server, big_task, body=f"Looks good, ship it\n\n{padding}")
    small = good_reply(server, small_task)
    dovecot.deliver(big)
    dovecot.deliver(small)
    server.start()

    wait_until(lambda: len(dovecot.messages("Rejected")) == 1, what="the big reply in Rejected")
    wait_until(lambda: len(dovecot.messages("Processed")) == 1, what="the small reply in Processed")
    assert message_ids(dovecot.messages("Rejected")) == [big["Message-ID"]]
    assert message_ids(dovecot.messages("Processed")) == [small["Message-ID"]]
    assert completed(server, small_task)
    big_now = server.task(big_task)
    assert big_now["status"] not in ("completed", "failed") and big_now["comments"] == []
    log = rc_log(server)
    assert f"Message too big: replies are limited to {limit} bytes" in log
    assert f"BODY[]<0> {{{limit + 1}}}" in log  # the server sent no more than that


# Mailbox mode's bounce: a notice to the sender of a refused reply -------------------------

RELAY_PASSWORD = "relay-secret"


def notices(relay: SmtpRelay) -> list[tuple[str, list[str], EmailMessage]]:
    """What the relay took that is a notice (the request mails, queued while it was down, may
    reach it too): envelope sender, recipients and the mail."""
    found = []
    for mail_from, rcpts, raw in relay.received:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        if message["Auto-Submitted"] == "auto-replied":
            found.append((mail_from, rcpts, cast(EmailMessage, message)))
    return found


def test_an_unclear_authenticated_reply_gets_one_notice_and_forged_list_and_automatic_ones_none(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    port = free_port()
    server = servers(disposition="move")
    server.settings["outbound"].update(relay_outbound(port, RELAY_PASSWORD))
    server.write_config()
    unclear_task, list_task, auto_task, wrong_task = (
        server.add_task(t) for t in ("Unclear", "Listed", "Automatic", "Wrong sender")
    )
    forged_task = server.add_task("Forged", owner="alice@good.test")
    request = server.request(unclear_task)
    stamped = {"Authentication-Results": TRUSTED_STAMP}
    unclear = reply_message(request["reply_to"], "Maybe, let me think", headers=stamped)
    # The owner's own words through a list the reply address was put on: no one is answered.
    listed = reply_message(
        server.request(list_task)["reply_to"], "Maybe", headers={**stamped, "List-Id": "<team.example.com>"}
    )
    automatic = reply_message(
        server.request(auto_task)["reply_to"], "Maybe", headers={**stamped, "Auto-Submitted": "auto-replied"}
    )
    # good.test publishes DMARC p=reject: this unsigned reply's only "pass" is an untrusted stamp.
    forged = reply_message(
        server.request(forged_task)["reply_to"],
        "Maybe",
        sender="alice@good.test",
        headers={"Authentication-Results": "evil.test; dmarc=pass"},
    )
    # Authenticated (example.com's SPF), but not the owner: told who may answer.
    wrong_request = server.request(wrong_task)
    wrong = reply_message(wrong_request["reply_to"], "Approved", sender="bob@example.com", headers=stamped)
    with running_relay(port, RELAY_PASSWORD) as relay:
        for message in (unclear, listed, automatic, forged, wrong, unclear):  # the unclear one twice: a copy
            dovecot.deliver(message)
        server.start()
        wait_until(lambda: len(dovecot.messages("Rejected")) == 5, what="five replies in Rejected")
        wait_until(lambda: len(dovecot.messages("Processed")) == 1, what="the automatic one in Processed")
        wait_until(lambda: len(notices(relay)) >= 2, what="two notices at the relay")
        synced_again(server)  # a third would have been sent by then

        [(mail_from, rcpts, notice), (_, to_bob, bobs)] = sorted(notices(relay), key=lambda n: n[1])
    # From the request mails' address: a submission server takes mail only from its account.
    assert mail_from == server.settings["outbound"]["from_address"] and rcpts == ["alice@example.com"]
    assert notice["To"] == "alice@example.com" and notice["Auto-Submitted"] == "auto-replied"
    assert notice["Subject"] == "Your reply was not acted on: Unclear"  # the task, not the refused mail
    assert notice["In-Reply-To"] == unclear["Message-ID"] and unclear["Message-ID"] in notice["References"]
    body = notice.get_content()
    assert str(R.ACTION_UNCLEAR) in body  # what SMTP's 550 would have said, code and sentence
    assert f"Complete: {request['complete_address']}" in body and f"Fail: {request['fail_address']}" in body
    assert notice["Reply-To"] == request["reply_to"]  # answering the notice decides from the words
    assert to_bob == ["bob@example.com"] and bobs["In-Reply-To"] == wrong["Message-ID"]
    assert "550 5.7.1 This reply comes from bob@example.com, but the request was sent to alice@example.com" in (
        bobs.get_content()
    )
    assert "only alice@example.com, to whom the request was sent, can answer it" in bobs.get_content()
    assert bobs["Reply-To"] is None  # no reply address of the request for someone else
    # Nor its title, nor the request mail's id, whose random part keeps someone who knows only
    # a reply address from threading a question of theirs to the request.
    assert wrong_request["message_id"] not in bobs["References"] and "Wrong sender" not in bobs.get_content()
    # To the owner it names the request mail first, as an id (an encoded word is no id).
    [raw_notice] = [
        raw for _, rcpts, raw in relay.received if rcpts == ["alice@example.com"] and b"auto-replied" in raw
    ]
    raw_head = raw_notice.split(b"\r\n\r\n", 1)[0]
    assert b"=?" not in raw_head and request["message_id"].encode() in raw_head
    assert notice["References"].split()[0] == request["message_id"]
    for task_id in (unclear_task, list_task, auto_task, forged_task, wrong_task):
        assert server.task(task_id)["status"] == "in_progress"
    # The owner answers the notice itself, quoting it: that answer decides.
    quoted = "\n".join(f"> {line}" for line in body.splitlines())
    answer = reply_message(
        notice["Reply-To"],
        f"Complete, the rollout is fine\n\nOn Monday rc-mta wrote:\n{quoted}",
        subject=f"Re: {notice['Subject']}",
        in_reply_to=notice["Message-ID"],
        headers=stamped,
    )
    # As a client threads it: the notice's References, then the notice. They name the
    # request mail though the unclear reply (from a mailto button) named nothing.
    del answer["References"]
    answer["References"] = f"{notice['References']} {notice['Message-ID']}"
    dovecot.deliver(answer)
    wait_until(lambda: completed(server, unclear_task), what="the task completed by the answer to the notice")
    assert [c["text"] for c in server.task(unclear_task)["comments"]] == ["Complete, the rollout is fine"]
    log = rc_log(server)
    assert "no notice (machine or list mail (List-Id: a list's message))" in log
    assert "no notice (its From (good.test) is not authenticated)" in log


def test_a_temporary_refusal_gets_no_notice_and_its_retry_refused_for_good_gets_one(
    servers: Callable[..., RcMta], dovecot: Dovecot, receiver: WebhookReceiver
) -> None:
    port = free_port()
    receiver.delay, receiver.answer = 0.0, (503, {"detail": "down for maintenance"})
    server = servers(disposition="move", sync_interval="1s")
    server.settings["outbound"].update(relay_outbound(port, RELAY_PASSWORD))
    server.settings["tasks"] = {"backend": "webhook", "webhook": {"url": receiver.url, "secret": receiver.secret}}
    server.write_config()
    address = server.cli_json("request", "T-1", "--owner", "alice@example.com")["complete_address"]
    reply = reply_message(address, "Ship it", headers={"Authentication-Results": TRUSTED_STAMP})
    with running_relay(port, RELAY_PASSWORD) as relay:
        dovecot.deliver(reply)
        server.start()
        wait_until(lambda: len(receiver.payloads) >= 2, what="the backend tried twice")
        synced_again(server)
        assert notices(relay) == []  # a 451: the reply stays, nobody is told
        [(flags, _)] = dovecot.messages()
        assert "\\Deleted" not in flags

        receiver.answer = (422, {"detail": "T-1 is locked by a release freeze"})
        wait_until(lambda: len(dovecot.messages("Rejected")) == 1, what="the reply refused for good")
        wait_until(lambda: notices(relay), what="its notice")
        synced_again(server)
        [(_, _, notice)] = notices(relay)
    assert "550 5.7.1 The workflow system refused this action:" in notice.get_content()
    assert "T-1 is locked by a release freeze" in notice.get_content()
    assert notice["In-Reply-To"] == reply["Message-ID"]


def test_a_reply_to_an_expired_request_tells_its_owner_to_ask_for_a_new_one(
    servers: Callable[..., RcMta], dovecot: Dovecot
) -> None:
    port = free_port()
    server = servers(disposition="move")
    server.settings["outbound"].update(relay_outbound(port, RELAY_PASSWORD))
    server.settings["signing"]["request_ttl"] = "1s"
    server.write_config()
    task_id = server.add_task()
    reply = good_reply(server, task_id)
    time.sleep(2.1)  # the request expires before its answer is read
    with running_relay(port, RELAY_PASSWORD) as relay:
        dovecot.deliver(reply)
        server.start()
        wait_until(lambda: len(dovecot.messages("Rejected")) == 1, what="the late reply in Rejected")
        wait_until(lambda: notices(relay), what="its notice")
        [(_, rcpts, notice)] = notices(relay)
    assert rcpts == ["alice@example.com"] and notice["In-Reply-To"] == reply["Message-ID"]
    body = notice.get_content()
    assert "550 5.7.1 This completion request expired at " in body and ": ask for a new one" in body
    assert f"task {task_id}" in body and server.task(task_id)["status"] == "in_progress"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_literal_far_larger_than_the_partial_fetch_drops_the_connection(tmp_path: Path) -> None:
    """aioimaplib buffers every literal whole, whatever a partial fetch asked for: a server
    answering BODY.PEEK[]<0.N> with {8589934592} grew rc-mta by 1.4 GiB in 10 s. Past the
    limit (plus slack) the connection is dropped with a WARNING and the message retried."""
    imap = HugeLiteralImap()
    server = make_rc_mta(tmp_path)
    server.settings["mailbox"] = {
        "source": "imap",
        "host": "127.0.0.1",
        "port": imap.port,
        "tls": False,
        "username": "u",
        "password": "p",
        "sync_interval": "1s",
        "startup_delay": 0,
        "pool_size": 1,
    }
    server.start()
    try:
        assert server.proc is not None
        before = _rss_mib(server.proc.pid)
        peak = before
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and imap.fetches < 2:
            time.sleep(0.2)
            peak = max(peak, _rss_mib(server.proc.pid))
        assert imap.fetches >= 2, f"one fetch, {imap.sent >> 20} MiB read and still reading"
        assert imap.sent < 16 * 1024 * 1024, f"{imap.sent >> 20} MiB of a 64 KiB fetch read"
        assert peak - before < 32, f"rc-mta grew {peak - before:.0f} MiB"
        # Asked for 64 KiB + 1 (to tell a message over the limit), taken with 64 KiB of slack.
        assert "announced a literal of 8589934592 bytes, over the 131073 asked for" in rc_log(server)
    finally:
        server.stop()
        imap.close()
