"""A tiny OAuth2 authorization server for the XOAUTH2 tests: an RFC 6749 token endpoint
(refresh_token grant) that issues access tokens, and the RFC 7662 introspection endpoint
Dovecot's oauth2 passdb asks whether such a token is active and whose it is. Real HTTP on
loopback, so both rc-mta's TokenProvider and Dovecot talk to it as they would in production."""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs


@dataclass
class AuthServer:
    """Knows one client (id, secret, refresh token) acting for one mailbox user."""

    username: str
    client_id: str = "rc-mta"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    refresh_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    issued: list[str] = field(default_factory=list)
    introspected: list[str] = field(default_factory=list)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def introspection_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/introspect"

    def start(self) -> AuthServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.path == "/token":
                    status, body = server.token(form)
                elif self.path == "/introspect":
                    status, body = server.introspect(form)
                else:
                    status, body = 404, {"error": "not_found"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> AuthServer:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """RFC 6749 §6: a refresh_token grant from the known client yields a fresh access token."""
        if (form.get("client_id"), form.get("client_secret")) != (self.client_id, self.client_secret):
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != self.refresh_token:
            return 400, {"error": "invalid_grant"}
        access = secrets.token_urlsafe(24)
        self.issued.append(access)
        return 200, {"access_token": access, "token_type": "Bearer", "expires_in": 3600}

    def introspect(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """RFC 7662 §2: only tokens this server issued are active, and they are the user's."""
        token = form.get("token", "")
        self.introspected.append(token)
        if token in self.issued:
            return 200, {"active": True, "username": self.username, "token_type": "Bearer"}
        return 200, {"active": False}
