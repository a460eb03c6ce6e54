"""OAuth2 access tokens for mailbox pollers (Microsoft Graph, IMAP XOAUTH2).

One small client for the token endpoint, so each poller only asks for "a valid token" and
says "that one was refused". Secrets and tokens never reach a log line or an exception.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .errors import TemporaryFailure
from .http_client import SMALL_BODY, read_body

log = logging.getLogger("rc_mta.oauth2")

REFRESH_MARGIN = 60.0  # refresh this many seconds before expiry so a token never dies mid-call
DEFAULT_LIFETIME = 3600.0  # when the server omits expires_in (RFC 6749 §5.1 makes it optional)


class OAuth2Error(Exception):
    """The token endpoint refused the request (invalid_grant, invalid_client, ...): retrying won't help."""


class TokenProvider:
    """Fetches and caches an OAuth2 access token; refreshes it shortly before expiry."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        refresh_token: str = "",
        scope: str = "",
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self.scope = scope
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._token = ""
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the secret or the tokens
        return f"TokenProvider({self.token_url!r}, client_id={self.client_id!r})"

    @property
    def grant_type(self) -> str:
        return "refresh_token" if self._refresh_token else "client_credentials"

    async def access_token(self) -> str:
        """A token with at least REFRESH_MARGIN seconds of life left; fetched only when needed."""
        async with self._lock:  # concurrent callers share one fetch
            if not self._token or self._clock() >= self._expires_at - REFRESH_MARGIN:
                await self._fetch()
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token, e.g. after the resource server answered 401."""
        self._token = ""
        self._expires_at = 0.0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _form(self) -> dict[str, str]:
        form = {"client_id": self.client_id}
        if self._client_secret:
            form["client_secret"] = self._client_secret
        if self._refresh_token:
            form["grant_type"] = "refresh_token"
            form["refresh_token"] = self._refresh_token
        else:
            form["grant_type"] = "client_credentials"
        if self.scope:
            form["scope"] = self.scope
        return form

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        grant = self.grant_type
        started = self._clock()
        try:
            async with self._session.post(
                self.token_url, data=self._form(), headers={"Accept": "application/json"}
            ) as response:
                status = response.status
                try:
                    body: Any = json.loads(await read_body(response, SMALL_BODY))
                except ValueError:
                    body = None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TemporaryFailure(f"token endpoint {self.token_url} unreachable: {type(exc).__name__}") from None
        if status >= 500 or status == 429:
            raise TemporaryFailure(f"token endpoint {self.token_url} answered {status}")
        if status >= 400:
            raise OAuth2Error(f"token endpoint refused {grant} grant ({status}): {_describe(body)}")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise TemporaryFailure(f"token endpoint {self.token_url} answered {status} without an access_token")
        token_type = str(body.get("token_type", "Bearer"))
        if token_type.lower() != "bearer":
            raise OAuth2Error(f"token endpoint issued an unsupported token_type {token_type!r}")
        try:
            lifetime = float(body.get("expires_in", DEFAULT_LIFETIME))
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        self._token = body["access_token"]
        self._expires_at = started + lifetime
        rotated = body.get("refresh_token")
        if self._refresh_token and isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            self._refresh_token = rotated  # RFC 6749 §6: the old one may now be revoked
            log.info("oauth2: %s rotated the refresh token", self.token_url)
        log.debug("oauth2: new access token from %s (%s grant), valid %.0fs", self.token_url, grant, lifetime)


def _describe(body: Any) -> str:
    """error and error_description from an RFC 6749 §5.2 error body, nothing else (no echoing)."""
    if not isinstance(body, dict):
        return "no error details"
    error = body.get("error")
    if isinstance(error, dict):  # some providers nest it
        error = error.get("code")
    parts = [str(error or "unknown_error")]
    description = body.get("error_description")
    if description:
        parts.append(str(description).splitlines()[0][:300])
    return ": ".join(parts)
