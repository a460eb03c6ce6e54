"""A real SMTP server (aiosmtpd) standing in for the site's relay that rc-mta sends
completion requests through: it wants AUTH, and keeps what it receives."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

RELAY_USER = "release"


class SmtpRelay:
    def __init__(self, password: str) -> None:
        self.password = password
        self.received: list[tuple[str, list[str], bytes]] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append((envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 2.0.0 OK"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object) -> object:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        return AuthResult(success=data.login == RELAY_USER.encode() and data.password == self.password.encode())


@contextmanager
def running_relay(port: int, password: str) -> Iterator[SmtpRelay]:
    relay = SmtpRelay(password)
    controller = Controller(
        relay, hostname="127.0.0.1", port=port, authenticator=relay.authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        yield relay
    finally:
        controller.stop()
