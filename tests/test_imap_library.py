"""Pins what ``rc_mta/mailbox/_aioimaplib.py`` relies on in the installed aioimaplib, against
a real Dovecot: a new aioimaplib that changes either shows here, not as a poller that hangs."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioimaplib import aioimaplib as lib
from conftest import require_server
from dovecot import Dovecot, available
from token_introspection import AuthServer

from rc_mta.mailbox._aioimaplib import MAX_LINE, Client, Protocol


@pytest.fixture
def oauth_dovecot(tmp_path: Path) -> Iterator[tuple[Dovecot, AuthServer]]:
    require_server(available(), "dovecot (Debian package dovecot-imapd)")
    with AuthServer(username="replies@example.test") as auth:
        dovecot = Dovecot(tmp_path / "dovecot", oauth2_introspection_url=auth.introspection_url).start()
        try:
            yield dovecot, auth
        finally:
            dovecot.cleanup()


async def _connected(dovecot: Dovecot) -> Client:
    client = Client("127.0.0.1", dovecot.port, timeout=10)
    await client.wait_hello_from_server()
    return client


def test_the_connection_speaks_through_the_protocol_create_client_set(
    oauth_dovecot: tuple[Dovecot, AuthServer],
) -> None:
    dovecot, _ = oauth_dovecot

    async def greet() -> tuple[object, str, set[str]]:
        client = await _connected(dovecot)
        try:
            return client.protocol, client.protocol.state, set(client.protocol.capabilities)
        finally:
            client.protocol.transport.close()

    protocol, state, capabilities = asyncio.run(greet())
    # Our Protocol received the connection and the greeting (aioimaplib's own would lack
    # authenticate and starttls, and the poller could not log in with a token).
    assert isinstance(protocol, Protocol) and state == lib.NONAUTH
    assert "AUTH=XOAUTH2" in capabilities and "SASL-IR" in capabilities


def test_a_refused_tokens_challenge_is_answered_and_the_refusal_comes_at_once(
    oauth_dovecot: tuple[Dovecot, AuthServer],
) -> None:
    dovecot, auth = oauth_dovecot
    message = f"user={dovecot.username}\x01auth=Bearer not-a-token-we-issued\x01\x01"
    initial = base64.b64encode(message.encode()).decode("ascii")

    async def refused() -> tuple[str, str, str]:
        client = await _connected(dovecot)
        try:
            # Unanswered, the challenge would keep the command open until a timeout.
            response = await asyncio.wait_for(client.protocol.authenticate("XOAUTH2", [b""], initial), 10)
            return response.result, client.protocol.sasl_challenge, client.protocol.state
        finally:
            client.protocol.transport.close()

    result, challenge, state = asyncio.run(refused())
    assert result == "NO" and state == lib.NONAUTH
    assert json.loads(challenge)["status"]  # the server's reason, as RFC 7628 §3.2.2 sends it
    assert auth.introspected == ["not-a-token-we-issued"]


class EndlessLine:
    """An IMAP server that greets, answers CAPABILITY, then answers the next command with a
    line it never ends, sending as fast as the client reads (a broken server)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as commands:
            connection.sendall(b"* OK IMAP4rev1 ready\r\n")
            tag = commands.readline().split()[0]
            connection.sendall(b"* CAPABILITY IMAP4rev1\r\n" + tag + b" OK CAPABILITY done\r\n")
            commands.readline()
            connection.sendall(b"* OK ")
            chunk = b"x" * 65536
            try:
                while self.sent < 8 * MAX_LINE:
                    connection.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                return  # the client hung up

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def test_a_response_line_that_never_ends_drops_the_connection_not_the_event_loop() -> None:
    """aioimaplib scans all it holds of an unfinished line again at each chunk: a line that
    never ends held the event loop longer at every chunk (half a second a chunk after 20 s)
    and grew until the command's timeout. Held here until a chunk can end it, it costs one
    pass, and past MAX_LINE the connection is dropped, long before any command timeout."""
    server = EndlessLine()

    async def noop() -> tuple[str, float, float]:
        lost = asyncio.Event()
        client = Client("127.0.0.1", server.port, timeout=30, conn_lost_cb=lambda exc: lost.set())
        await client.wait_hello_from_server()
        loop = asyncio.get_running_loop()
        longest = 0.0

        async def ticks() -> None:
            nonlocal longest
            while True:
                started = loop.time()
                await asyncio.sleep(0.005)
                longest = max(longest, loop.time() - started - 0.005)

        ticking = asyncio.ensure_future(ticks())
        started = loop.time()
        command = asyncio.ensure_future(client.protocol.simple_command("NOOP"))
        ended = asyncio.ensure_future(lost.wait())
        await asyncio.wait({command, ended}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        took = loop.time() - started
        for task in (ticking, command, ended):
            task.cancel()
        client.protocol.transport.close()
        return ("dropped" if lost.is_set() else "still reading"), took, longest

    try:
        outcome, took, longest = asyncio.run(noop())
    finally:
        server.close()
    assert outcome == "dropped" and took < 10, (outcome, took, server.sent)
    assert MAX_LINE <= server.sent < 2 * MAX_LINE
    assert longest < 0.25, longest
