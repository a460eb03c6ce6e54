"""TokenProvider against the identity-platform stand-in: both grants, caching, refresh before
expiry, rotated refresh tokens, and which failures are permanent and which are temporary."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from graph_server import GraphServer

from rc_mta.errors import TemporaryFailure
from rc_mta.oauth2 import OAuth2Error, TokenProvider

SCOPE = "https://graph.microsoft.com/.default"


@pytest.fixture
def idp() -> Iterator[GraphServer]:
    server = GraphServer().start()
    yield server
    server.stop()


def url(server: GraphServer) -> str:
    return server.token_url.replace("{tenant_id}", server.tenant_id)


def run_provider(provider: TokenProvider, *steps: str) -> list[str]:
    """Ask for a token once per step ('get', or 'invalidate' first); close afterwards."""

    async def go() -> list[str]:
        tokens = []
        try:
            for step in steps:
                if step == "invalidate":
                    provider.invalidate()
                    continue
                tokens.append(await provider.access_token())
        finally:
            await provider.close()
        return tokens

    return asyncio.run(go())


def test_client_credentials_token_is_cached(idp: GraphServer) -> None:
    provider = TokenProvider(url(idp), "c1", "s1", scope=SCOPE)
    first, second = run_provider(provider, "get", "get")
    assert first == second and first
    assert idp.tokens_issued == 1 and idp.grants == ["client_credentials"]


def test_invalidate_fetches_a_new_token(idp: GraphServer) -> None:
    provider = TokenProvider(url(idp), "c1", "s1", scope=SCOPE)
    first, second = run_provider(provider, "get", "invalidate", "get")
    assert first != second
    assert idp.tokens_issued == 2


def test_token_near_expiry_is_refreshed(idp: GraphServer) -> None:
    clock = [1000.0]
    idp.token_lifetime = 120
    provider = TokenProvider(url(idp), "c1", "s1", scope=SCOPE, clock=lambda: clock[0])

    async def go() -> list[str]:
        try:
            tokens = [await provider.access_token()]
            clock[0] += 59  # 61 s left: still good
            tokens.append(await provider.access_token())
            clock[0] += 2  # 59 s left: refresh now, before it dies mid-call
            tokens.append(await provider.access_token())
            return tokens
        finally:
            await provider.close()

    a, b, c = asyncio.run(go())
    assert a == b != c
    assert idp.tokens_issued == 2


def test_refresh_token_grant_keeps_the_rotated_refresh_token(idp: GraphServer) -> None:
    idp.refresh_tokens = {"rt-original"}
    provider = TokenProvider(url(idp), "c1", "s1", refresh_token="rt-original", scope=SCOPE + " offline_access")
    first, second = run_provider(provider, "get", "invalidate", "get")
    assert first != second
    # The server rotated after the first call and revoked the original: the second call
    # could only succeed with the new refresh token.
    assert idp.grants == ["refresh_token", "refresh_token"]
    assert "rt-original" not in idp.refresh_tokens


def test_wrong_secret_is_a_permanent_oauth2_error_without_the_secret(
    idp: GraphServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = TokenProvider(url(idp), "c1", "wrong-secret-123", scope=SCOPE)
    with pytest.raises(OAuth2Error) as raised:
        run_provider(provider, "get")
    assert "invalid_client" in str(raised.value)
    assert "AADSTS7000215" in str(raised.value)
    assert "wrong-secret-123" not in str(raised.value) + caplog.text + repr(provider)


def test_revoked_refresh_token_is_invalid_grant(idp: GraphServer) -> None:
    provider = TokenProvider(url(idp), "c1", "s1", refresh_token="rt-unknown", scope=SCOPE)
    with pytest.raises(OAuth2Error, match="invalid_grant"):
        run_provider(provider, "get")


def test_server_error_is_temporary(idp: GraphServer) -> None:
    idp.fail_token_endpoint(1, status=503)
    provider = TokenProvider(url(idp), "c1", "s1", scope=SCOPE)
    with pytest.raises(TemporaryFailure):
        run_provider(provider, "get")
    # The next attempt works: nothing was cached from the failure.
    assert run_provider(TokenProvider(url(idp), "c1", "s1", scope=SCOPE), "get")


def test_unreachable_endpoint_is_temporary() -> None:
    provider = TokenProvider("http://127.0.0.1:9/t1/oauth2/v2.0/token", "c1", "s1", timeout=2)
    with pytest.raises(TemporaryFailure):
        run_provider(provider, "get")
