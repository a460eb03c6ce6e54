"""SPF against a DNS server that answers every query right but late (``SlowDns``, test-only:
NSD cannot answer late on purpose). One such check asks 111 names; before it had threads of
its own it held the default executor, where the store's calls of every reply wait, for 55 s.
A check now ends at its time limit (temperror → 451 4.7.24), stops when its client hangs up,
and never holds a thread the store needs."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RcMta, make_rc_mta
from dnsserver import SlowDns
from mailclient import reply_message, send_smtp

from rc_mta.checks.spf import SpfPool, check_spf
from rc_mta.dns import DnsResolver

ATTACKER = "127.0.0.2"  # not in exempt_networks: its MAIL FROM gets an SPF check


@pytest.fixture
def slow_dns() -> Iterator[SlowDns]:
    server = SlowDns(delay=0.5)  # far inside the [dns] timeout of 5 s
    try:
        yield server
    finally:
        server.close()


def test_a_check_against_slow_dns_ends_at_its_time_limit_as_temperror(slow_dns: SlowDns) -> None:
    resolver = DnsResolver(["127.0.0.1"], slow_dns.port, timeout=5.0)
    pool = SpfPool(workers=1, queue=0, time_limit=2.0)
    started = time.monotonic()
    verdict = asyncio.run(check_spf(resolver, "198.51.100.7", "x@spf.limit.test", "mail.limit.test", pool))
    took = time.monotonic() - started
    assert verdict.result == "temperror"
    assert "longer than 2s" in verdict.reason, verdict.reason
    assert took < 3.0, f"the check ran {took:.1f}s past its 2 s limit"


def test_a_check_whose_caller_is_gone_looks_nothing_more_up(slow_dns: SlowDns) -> None:
    resolver = DnsResolver(["127.0.0.1"], slow_dns.port, timeout=5.0)

    async def abandon() -> tuple[int, int]:
        check = asyncio.create_task(check_spf(resolver, "198.51.100.7", "x@spf.gone.test", "mail.gone.test"))
        await asyncio.sleep(1.2)  # the TXT and a few MX lookups
        check.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await check
        await asyncio.sleep(0.6)  # the lookup in flight ends
        asked = slow_dns.queries
        await asyncio.sleep(2.0)
        return asked, slow_dns.queries

    asked, later = asyncio.run(abandon())
    assert asked >= 2
    assert later == asked, f"{later - asked} more lookups for a check nobody waits for"


@pytest.fixture
def slow_rc(tmp_path: Path, slow_dns: SlowDns) -> Iterator[RcMta]:
    server = make_rc_mta(
        tmp_path,
        dns={"nameservers": ["127.0.0.1"], "port": slow_dns.port, "timeout": "5s"},
        checks={
            "exempt_networks": ["127.0.0.1/32"],
            "rdns": {"policy": "off"},
            "spf": {"workers": 4, "queue": 32, "time_limit": "3s"},
        },
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _mail_from_attacker(port: int, domain: str, answers: list[tuple[int, str, float]]) -> None:
    """MAIL FROM a sender of ``domain`` and wait for the answer (at most a minute)."""
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(ATTACKER, 0)) as client:
        client.ehlo("mail.attacker.test")
        code, text = client.mail(f"x@spf.{domain}")
        answers.append((code, text.decode(), time.monotonic() - started))


def test_a_genuine_reply_is_answered_at_once_while_slow_spf_checks_are_in_flight(slow_rc: RcMta) -> None:
    task_id = slow_rc.add_task()
    address = str(slow_rc.request(task_id)["complete_address"])
    answers: list[tuple[int, str, float]] = []
    attackers = [
        threading.Thread(target=_mail_from_attacker, args=(slow_rc.smtp_port, f"b{i}.attacker.test", answers))
        for i in range(8)
    ]
    for attacker in attackers:
        attacker.start()
    time.sleep(1.0)  # every check is looking up, or waiting for an SPF thread
    started = time.monotonic()
    outcome = send_smtp(slow_rc.smtp_port, reply_message(address), address)
    took = time.monotonic() - started
    for attacker in attackers:
        attacker.join()
    assert outcome.code == 250, outcome.text
    assert took < 2.0, f"a genuine reply took {took:.1f}s while 8 SPF checks waited on DNS"
    assert slow_rc.task(task_id)["status"] == "completed"
    # Each slow check ended at the 3 s limit (counted from MAIL, queued or not): a deferral.
    assert len(answers) == 8
    for code, text, waited in answers:
        assert (code, text.split(" ", 1)[0]) == (451, "4.7.24"), text
        assert "longer than 3s" in text, text
        assert waited < 5.0


def test_slow_checks_of_clients_that_hung_up_stop_looking_up(slow_rc: RcMta, slow_dns: SlowDns) -> None:
    def hang_up_after_mail(i: int) -> None:
        with socket.create_connection(("127.0.0.1", slow_rc.smtp_port), source_address=(ATTACKER, 0)) as sock:
            stream = sock.makefile("rb")
            stream.readline()
            sock.sendall(b"HELO mail.attacker.test\r\n")
            stream.readline()
            sock.sendall(f"MAIL FROM:<x@spf.h{i}.attacker.test>\r\n".encode())
            time.sleep(0.3)

    clients = [threading.Thread(target=hang_up_after_mail, args=(i,)) for i in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    time.sleep(1.0)  # the lookups in flight as they hung up end
    asked = slow_dns.queries
    time.sleep(2.0)
    assert slow_dns.queries == asked, f"{slow_dns.queries - asked} lookups for clients long gone"
