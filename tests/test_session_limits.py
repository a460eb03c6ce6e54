"""Session limits through the real listener: no crowd of clients, no single client and no
shortage of file descriptors leaves a new client with silence, and none holds a session
forever with NOOP. Beyond a limit a client is told 421 with a sentence and closed; the
sessions already open go on.

rc-mta runs as a subprocess; 127.0.0.1 is its only trusted relay (exempt from the per-IP
cap), clients bind 127.0.0.2, .3 ... to be other clients."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import os
import re
import resource
import statistics
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from conftest import REPLY_DOMAIN, RcMta, make_rc_mta, wait_until
from test_hostile_protocol import RawSmtp, read_until_closed

from rc_mta import smtp_replies as R
from rc_mta.eventloop import ServingLoop


def configure(rc: RcMta, **inbound: object) -> RcMta:
    rc.settings["inbound"].update(trusted_relays=["127.0.0.1/32"], **inbound)
    return rc


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcMta]:
    """At most four sessions in all, two per client IP, five replies without progress."""
    rc = configure(
        make_rc_mta(tmp_path_factory.mktemp("rc-mta-limits")),
        max_sessions=4,
        max_sessions_per_ip=2,
        max_idle_commands=5,
    )
    rc.start()
    yield rc
    rc.stop()


def sessions_open(rc: RcMta) -> float:
    with urllib.request.urlopen(rc.http_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(r"^rc_mta_sessions_active\{[^}]*\} (\S+)$", text, re.M))


def no_sessions_left(rc: RcMta) -> None:
    """The sessions of earlier tests have ended on the server's side too."""
    wait_until(lambda: sessions_open(rc) == 0, what="no session open")


def assert_told(reply: tuple[int, bytes], expected: R.SmtpReply) -> None:
    code, text = reply
    assert (code, text.split(b" ", 1)[0].decode()) == (expected.code, expected.enhanced), reply
    assert len(text.split(b" ", 1)[1]) > 20, reply  # a sentence


def refused_at_connect(port: int, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """The greeting is a 421, and the server closes the connection after it."""
    client = RawSmtp(port, source)
    assert read_until_closed(client.sock) == b""
    client.sock.close()
    return client.greeting


def genuine_reply_is_accepted(client: RawSmtp, rc: RcMta) -> None:
    """A whole transaction with a real reply address."""
    task_id = rc.add_task()
    address = rc.request(task_id)["complete_address"]
    assert client.command(b"EHLO mail.example.com")[0] == 250
    assert client.command(b"MAIL FROM:<alice@example.com>")[0] == 250
    assert client.command(f"RCPT TO:<{address}>".encode())[0] == 250
    assert client.command(b"DATA")[0] == 354
    message = f"From: alice@example.com\r\nTo: {address}\r\nSubject: Re: Action needed\r\n\r\nApproved\r\n.".encode()
    assert client.command(message)[0] == 250
    assert rc.task(task_id)["status"] == "completed"


# Caps on sessions ------------------------------------------------------------------------------


def test_beyond_max_sessions_a_new_client_is_told_421_while_open_sessions_go_on(limited: RcMta) -> None:
    no_sessions_left(limited)
    held = [RawSmtp(limited.smtp_port) for _ in range(4)]
    assert all(client.greeting[0] == 220 for client in held)

    assert_told(refused_at_connect(limited.smtp_port), R.TOO_MANY_SESSIONS)

    genuine_reply_is_accepted(held[0], limited)
    for client in held:
        client.close()
    no_sessions_left(limited)
    assert RawSmtp(limited.smtp_port).greeting[0] == 220  # room again


def test_the_per_ip_cap_of_one_client_leaves_other_clients_alone(limited: RcMta) -> None:
    no_sessions_left(limited)
    first = [RawSmtp(limited.smtp_port, "127.0.0.2") for _ in range(2)]

    assert_told(refused_at_connect(limited.smtp_port, "127.0.0.2"), R.TOO_MANY_SESSIONS_FROM_IP)
    other = RawSmtp(limited.smtp_port, "127.0.0.3")

    assert other.greeting[0] == 220
    assert other.command(b"EHLO mx.example.test")[0] == 250
    first[0].close()
    wait_until(lambda: sessions_open(limited) == 2, what="one session fewer")
    assert RawSmtp(limited.smtp_port, "127.0.0.2").greeting[0] == 220  # its slot is free again


# A session that makes no progress ends -------------------------------------------------------


def test_a_noop_loop_is_told_421_after_max_idle_commands(limited: RcMta) -> None:
    client = RawSmtp(limited.smtp_port)  # the greeting is reply 1
    assert client.command(b"EHLO mx.example.test")[0] == 250  # 2

    answers = [client.command(b"NOOP")[0] for _ in range(3)]  # 3, 4, 5
    over = client.command(b"NOOP")  # 6

    assert answers == [250, 250, 250]
    assert_told(over, R.NO_PROGRESS)
    assert read_until_closed(client.sock) == b""


@pytest.mark.parametrize("junk", [b"RSET", b"HELP", b"VRFY <bob@example.com>", b"MAIL FROM:<"])
def test_any_command_that_does_not_advance_a_transaction_counts(limited: RcMta, junk: bytes) -> None:
    client = RawSmtp(limited.smtp_port)
    assert client.command(b"EHLO mx.example.test")[0] == 250

    replies = [client.command(junk) for _ in range(4)]

    assert all(code != 421 for code, _ in replies[:3]), replies
    assert_told(replies[3], R.NO_PROGRESS)
    assert read_until_closed(client.sock) == b""


def test_an_accepted_recipient_starts_the_count_again(limited: RcMta) -> None:
    address = limited.request(limited.add_task())["complete_address"]
    client = RawSmtp(limited.smtp_port)
    assert client.command(b"EHLO mx.example.test")[0] == 250
    assert client.command(b"MAIL FROM:<alice@example.com>")[0] == 250
    assert client.command(f"RCPT TO:<{address}>".encode())[0] == 250

    answers = [client.command(b"NOOP")[0] for _ in range(5)]

    assert answers == [250] * 5
    assert_told(client.command(b"NOOP"), R.NO_PROGRESS)


def test_a_session_ends_with_421_after_its_lifetime_however_busy(fresh_rc: RcMta) -> None:
    configure(fresh_rc, session_lifetime="2s", max_idle_commands=1000).start()
    client = RawSmtp(fresh_rc.smtp_port)
    assert client.command(b"EHLO mx.example.test")[0] == 250

    def noop() -> tuple[int, bytes] | None:
        reply = client.command(b"NOOP")
        return reply if reply[0] != 250 else None

    reply = wait_until(noop, timeout=30, what="the session's end")
    assert_told(reply, R.SESSION_TOO_LONG)
    assert read_until_closed(client.sock) == b""


# Replies echo little -------------------------------------------------------------------------


def test_vrfy_of_something_not_an_address_echoes_a_short_excerpt(limited: RcMta) -> None:
    client = RawSmtp(limited.smtp_port)
    junk = b"<<<" + b"x" * 400

    code, text = client.command(b"VRFY " + junk)

    # 501 5.5.4: VRFY exists, its argument is wrong (RFC 5321 4.2.2, RFC 3463 X.5.4); the
    # argument's first 64 characters are echoed, then "...".
    assert (code, text) == (501, b"5.5.4 Could not VRFY " + junk[:64] + b"...: not an address")
    client.close()


# The listen queue and file descriptors ------------------------------------------------------


def listen_backlog(port: int) -> int:
    """What the kernel says the listening socket's accept queue may hold (ss's Send-Q)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[2])


async def greetings(port: int, count: int, source: str = "127.0.0.1") -> list[bytes]:
    """``count`` clients connecting at once; each one's first line (b"" for none)."""

    async def one() -> tuple[bytes, asyncio.StreamWriter | None]:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError as exc:
            return f"connect: {exc}".encode(), None
        try:
            return await asyncio.wait_for(reader.readline(), 60), writer
        except (TimeoutError, OSError):
            return b"", writer

    results = await asyncio.gather(*(one() for _ in range(count)))
    for _, writer in results:
        if writer is not None:
            writer.close()
    return [line for line, _ in results]


def test_500_clients_connecting_at_once_are_all_greeted(fresh_rc: RcMta) -> None:
    configure(fresh_rc).start()

    assert listen_backlog(fresh_rc.smtp_port) == 1024
    lines = asyncio.run(greetings(fresh_rc.smtp_port, 500))

    assert [line[:4] for line in lines] == [b"220 "] * 500


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_the_serving_loop_still_finds_the_asyncio_methods_it_passes_through() -> None:
    # rc_mta.eventloop overrides these two private methods of asyncio's selector loop; a
    # Python that renamed them would silently bring the accept() storm back.
    for name in ("_accept_connection", "_start_serving"):
        assert name in vars(asyncio.selector_events.BaseSelectorEventLoop)
        assert name in vars(ServingLoop)


def test_when_file_descriptors_run_short_new_clients_get_421_and_service_resumes(fresh_rc: RcMta) -> None:
    configure(fresh_rc).start()
    assert fresh_rc.proc is not None
    pid = fresh_rc.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # Room for a few sessions above the reserve rc-mta keeps for the rest of its work.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_descriptors(pid) + 64 + 4, hard))
    try:
        lines = asyncio.run(greetings(fresh_rc.smtp_port, 40))
        # Below what even the 421s need: accept() itself fails (EMFILE) now and then, and
        # the listener is retried a second later (so a few clients here, not 40).
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_descriptors(pid) + 2, hard))
        starved = asyncio.run(greetings(fresh_rc.smtp_port, 10))
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    log = fresh_rc.log_path.read_text()

    refusal = f"{R.DESCRIPTORS_SHORT.code} {R.DESCRIPTORS_SHORT.enhanced} ".encode()
    for batch in (lines, starved):
        assert all(line.startswith((b"220 ", refusal)) for line in batch), batch
    assert any(line.startswith(b"220 ") for line in lines) and any(line.startswith(refusal) for line in lines)
    assert all(line.startswith(refusal) for line in starved)
    # Each failed accept() is at most one warning line, not asyncio's traceback for every
    # try up to the backlog (thousands of them: rc_mta.eventloop).
    assert "Traceback" not in log and "out of system resource" not in log
    assert log.count("file descriptors run short: a new connection waits") <= len(starved)
    assert fresh_rc.proc.poll() is None
    client = RawSmtp(fresh_rc.smtp_port)  # served again once descriptors are free
    assert client.greeting[0] == 220 and client.command(b"EHLO mx.example.test")[0] == 250


# One big DATA does not hold the event loop -----------------------------------------------------


def noop_round_trips_while(port: int, send: Callable[[], None]) -> list[float]:
    """A genuine session's NOOP round trips (seconds) while ``send`` runs in another thread."""
    probe = RawSmtp(port)
    assert probe.command(b"EHLO probe.example.test")[0] == 250
    sender = threading.Thread(target=send)
    round_trips: list[float] = []
    sender.start()
    while sender.is_alive():
        began = time.perf_counter()
        code, _ = probe.command(b"NOOP")
        round_trips.append(time.perf_counter() - began)
        if code == 421:  # max_idle_commands: a fresh probe session
            probe = RawSmtp(port)
    sender.join()
    probe.sock.close()
    return round_trips


def data_of(port: int, line: bytes, size: int) -> Callable[[], None]:
    """A client sending ``size`` bytes of ``line`` as one message's DATA."""

    def send() -> None:
        client = RawSmtp(port, "127.0.0.2")
        assert client.command(b"EHLO mx.example.test")[0] == 250
        address = f"rc@{REPLY_DOMAIN}".encode()
        assert client.command(b"MAIL FROM:<alice@example.com>")[0] == 250
        client.command(b"RCPT TO:<" + address + b">")
        client.sock.sendall(b"DATA\r\n" + line * (size // len(line)) + b".\r\n")
        client.read_reply()
        client.sock.close()

    return send


def test_a_big_data_of_short_lines_stalls_other_sessions_no_more_than_one_of_long_lines(
    fresh_rc: RcMta,
) -> None:
    """The same 4 MiB as 1.4 million lines or as four thousand (over max_message_size, so
    only read, never parsed): the loop's turns stay short either way. A ratio of a probe
    session's median NOOP round trips, never a clock value."""
    configure(fresh_rc, max_message_size="1MiB", max_idle_commands=1000).start()
    size = 4 * 1024 * 1024

    long_lines = statistics.median(
        noop_round_trips_while(fresh_rc.smtp_port, data_of(fresh_rc.smtp_port, b"x" * 998 + b"\r\n", size))
    )
    short_lines = statistics.median(
        noop_round_trips_while(fresh_rc.smtp_port, data_of(fresh_rc.smtp_port, b"a\r\n", size))
    )

    # Against the long lines' round trip, or 5 ms when that one was as short as an idle
    # loop's (0.08 ms seen): a turn of a few ms stalls no one; a slice read a line at a time
    # in one turn would take hundreds.
    assert short_lines < max(10 * long_lines, 0.005), (short_lines, long_lines)
