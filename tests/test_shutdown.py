"""SIGTERM stops rc-mta in order and within its grace period: the listeners close, idle
sessions are told ``421 4.3.2``, a reply being acted on still gets its ``250``, and a
session that holds on cannot keep the process alive. Real rc-mta processes, real signals."""

from __future__ import annotations

import email.policy
import re
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import ROOT, RcMta, make_rc_mta, wait_until
from mailclient import LmtpClient, SmtpOutcome, reply_message, send_smtp
from silent_dns import run_where_names_hang
from webhook_receiver import WebhookReceiver

from rc_mta import smtp_replies as R
from rc_mta.config import InboundConfig

GRACE = 4.0  # [inbound] shutdown_grace of these servers, in seconds
SLOW_ACTION = 2.0  # how long the slow workflow system takes to answer an action
TASK = "JIRA-1234"
# 421 4.3.2 with the server's name, as every session still open is told.
SHUTTING_DOWN = str(R.SHUTTING_DOWN.with_text(hostname="mx.reply.example.test"))
ALICE = "alice@example.com"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RcMta]:
    """An rc-mta with a short grace period, its own backend unless the test sets one."""
    rc = make_rc_mta(tmp_path, inbound={"shutdown_grace": f"{GRACE:g}s"})
    yield rc
    rc.stop()


@pytest.fixture
def slow_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(delay=SLOW_ACTION).start()
    yield receiver
    receiver.stop()


def with_slow_webhook(rc: RcMta, receiver: WebhookReceiver) -> RcMta:
    rc.settings["tasks"] = {
        "backend": "webhook",
        "webhook": {"url": receiver.url, "secret": receiver.secret, "timeout": "20s"},
    }
    return rc


def sigterm(rc: RcMta) -> subprocess.Popen[bytes]:
    assert rc.proc is not None
    rc.proc.send_signal(signal.SIGTERM)
    return rc.proc


def exits(proc: subprocess.Popen[bytes], within: float) -> bool:
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return True


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # connected as the listener closed (its backlog is reset): ask again


def said(outcome: SmtpOutcome) -> str:
    return f"{outcome.code} {outcome.text}"


def closed_by_server(client: LmtpClient) -> bool:
    return client.file.readline() == b""


def data_bytes(message: EmailMessage) -> bytes:
    """The message as DATA carries it: dot-stuffed, ending with the lone dot."""
    raw = message.as_bytes(policy=email.policy.SMTP)
    lines = (b"." + line if line.startswith(b".") else line for line in raw.split(b"\r\n"))
    return b"\r\n".join(lines).rstrip(b"\r\n") + b"\r\n.\r\n"


def send_and_quit(port: int, address: str, message: EmailMessage) -> tuple[SmtpOutcome, SmtpOutcome]:
    """One transaction as an MTA sends it: the reply to DATA, and to the QUIT it sends a
    moment later (Postfix keeps a session a while for its next message before it quits)."""
    client = LmtpClient(port)
    client.command("EHLO mail.example.com")
    client.command(f"MAIL FROM:<{ALICE}>")
    client.command(f"RCPT TO:<{address}>")
    client.command("DATA")
    client.sock.sendall(data_bytes(message))
    reply = client.read_reply()
    time.sleep(0.2)
    return reply, client.command("QUIT")


def test_reply_being_acted_on_at_sigterm_still_gets_its_250(server: RcMta, slow_receiver: WebhookReceiver) -> None:
    with_slow_webhook(server, slow_receiver).start()
    address = server.cli_json("request", TASK, "--owner", ALICE)["complete_address"]
    message = reply_message(address, "Ship it")

    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(send_and_quit, server.smtp_port, address, message)
        wait_until(lambda: slow_receiver.payloads, what="the webhook to receive the action")
        proc = sigterm(server)  # while the workflow system is still working on it
        outcome, quit_reply = sending.result(timeout=30)

    assert (outcome.code, outcome.enhanced) == (250, "2.0.0"), outcome
    assert quit_reply.code == 221, quit_reply  # the session ends as the sender expects
    assert exits(proc, within=3 * GRACE)
    ((payload),) = slow_receiver.payloads
    assert (payload["task_id"], payload["action"]) == (TASK, "complete")
    # rc-mta recorded the action before it stopped: the sender's retry is not acted on again.
    server.start()
    retried = send_smtp(server.smtp_port, message, address)
    assert retried.code == 250 and "already processed" in retried.text, retried
    assert len(slow_receiver.payloads) == 1


@pytest.mark.parametrize("protocol", ["smtp", "lmtp"])
def test_idle_session_is_told_421_service_shutting_down_at_sigterm(server: RcMta, protocol: str) -> None:
    server.start()
    client = LmtpClient(server.smtp_port if protocol == "smtp" else server.lmtp_port)
    assert client.command("EHLO mail.example.com" if protocol == "smtp" else "LHLO mail.example.com").code == 250

    proc = sigterm(server)
    told = client.read_reply()

    assert said(told) == SHUTTING_DOWN
    assert closed_by_server(client)
    assert exits(proc, within=3 * GRACE)


def test_session_stalled_in_data_cannot_keep_rc_mta_running_past_the_grace_period(server: RcMta) -> None:
    server.start()
    task_id = server.add_task()
    address = server.request(task_id)["complete_address"]
    client = LmtpClient(server.smtp_port)
    client.command("EHLO mail.example.com")
    assert client.command(f"MAIL FROM:<{ALICE}>").code == 250
    assert client.command(f"RCPT TO:<{address}>").code == 250
    assert client.command("DATA").code == 354
    client.sock.sendall(data_bytes(reply_message(address))[:40])  # ... and the rest never comes

    proc = sigterm(server)

    assert exits(proc, within=3 * GRACE), "rc-mta still running three grace periods after SIGTERM"
    told = client.read_reply()  # the grace period is over: the session is told, then closed
    assert said(told) == SHUTTING_DOWN
    assert closed_by_server(client)
    assert server.task(task_id)["status"] == "in_progress"  # half a message acts on nothing


@pytest.mark.parametrize("then", ["MAIL FROM:<alice@example.com>\r\n", ""], ids=["next-command", "silence"])
def test_after_sigterm_new_connections_are_refused_and_new_commands_get_421(
    server: RcMta, slow_receiver: WebhookReceiver, then: str
) -> None:
    with_slow_webhook(server, slow_receiver).start()
    address = server.cli_json("request", TASK, "--owner", ALICE)["complete_address"]
    client = LmtpClient(server.smtp_port)
    client.command("EHLO mail.example.com")
    # A pipelining client: the message, then at once the next transaction's first command
    # (or nothing more: after its 250 it is told 421 all the same).
    client.sock.sendall(
        f"MAIL FROM:<{ALICE}>\r\nRCPT TO:<{address}>\r\nDATA\r\n".encode()
        + data_bytes(reply_message(address))
        + then.encode()
    )
    assert [client.read_reply().code for _ in range(3)] == [250, 250, 354]
    wait_until(lambda: slow_receiver.payloads, what="the webhook to receive the action")

    proc = sigterm(server)  # while the message is being acted on: rc-mta is still running

    wait_until(lambda: refused(server.smtp_port), timeout=3 * GRACE, what="the SMTP listener to close")
    assert refused(server.lmtp_port)
    http_port = int(str(server.settings["http"]["listen"]).rsplit(":", 1)[1])
    wait_until(lambda: refused(http_port), timeout=3 * GRACE, what="the HTTP listener to close")
    acted, next_command = client.read_reply(), client.read_reply()
    assert acted.code == 250, acted
    assert said(next_command) == SHUTTING_DOWN
    assert closed_by_server(client)
    assert exits(proc, within=3 * GRACE)
    assert len(slow_receiver.payloads) == 1  # nothing started after the SIGTERM


def test_systemd_waits_longer_than_the_grace_period_before_killing() -> None:
    """Else systemd SIGKILLs rc-mta while replies in flight are still getting their answer."""
    unit = (ROOT / "systemd" / "rc-mta.service").read_text()
    (stop_timeout,) = re.findall(r"^TimeoutStopSec=(\d+)s$", unit, re.MULTILINE)
    documented = tomllib.loads((ROOT / "conf" / "rc-mta.toml").read_text())["inbound"]["shutdown_grace"]
    assert InboundConfig(shutdown_grace=documented).shutdown_grace == InboundConfig().shutdown_grace
    assert int(stop_timeout) >= 2 * InboundConfig().shutdown_grace


# On the loop `rc-mta serve` runs on, in a process whose DNS never answers (silent_dns): a
# webhook POST to each of more hosts than asyncio's default executor has threads (32 at most).
LOOK_UPS_HANG = """
import asyncio, json, time
from pydantic import SecretStr
from rc_mta.config import WebhookConfig
from rc_mta.eventloop import run
from rc_mta.tasks import ActionContext
from rc_mta.tasks.webhook import WebhookBackend

async def main():
    loop = asyncio.get_running_loop()
    backends = [
        WebhookBackend(WebhookConfig(url=f"http://hooks{i}.example.test/hook", secret=SecretStr("s" * 16), timeout=2.0))
        for i in range(40)
    ]
    context = ActionContext("req-42", "<m>", "smtp")
    acting = (b.complete("T-1", "ok", "alice@example.com", context) for b in backends)
    posts = await asyncio.gather(*acting, return_exceptions=True)
    started = loop.time()
    await asyncio.to_thread(time.sleep, 0)  # what every store call does
    store_call = loop.time() - started
    for backend in backends:
        await backend.close()
    return {"posts": sorted({type(p).__name__ for p in posts}), "store_call": store_call}

print(json.dumps(run(main())), flush=True)
"""


def test_name_look_ups_that_hang_hold_neither_the_store_calls_nor_the_end_of_the_loop(tmp_path: Path) -> None:
    """Name look-ups run where the store's calls run, asyncio's default executor, and it
    waits for each at the end of the loop: with DNS down, a store call waited behind them
    (every reply's claim: SMTP answers held) and stopping waited out glibc's resolver timeout
    (30 s here; up to minutes with several nameservers), past the unit's TimeoutStopSec."""
    outcome = run_where_names_hang(tmp_path, LOOK_UPS_HANG)
    assert outcome["posts"] == ["BackendUnavailable"], outcome
    assert outcome["store_call"] < 1.0, outcome
    assert outcome["exited_after"] < 10.0, outcome
