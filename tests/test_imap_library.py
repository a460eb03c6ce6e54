"""Pins what ``rc_mta/mailbox/_aioimaplib.py`` relies on in the installed aioimaplib, against
a real Dovecot: a new aioimaplib that changes either shows here, not as a poller that hangs."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioimaplib import aioimaplib as lib
from conftest import require_server
from dovecot import Dovecot, available
from token_introspection import AuthServer

from rc_mta.mailbox._aioimaplib import Client, Protocol


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
