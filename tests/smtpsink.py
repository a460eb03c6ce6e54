"""A real SMTP server (aiosmtpd) standing in for the site's relay that rc-mta sends
completion requests through: it wants AUTH, and keeps what it receives. ``answers`` are
its replies to DATA, one per message, in order (then 250): a relay that says 451 4.3.0
first, or 550 5.7.1; only a message answered 250 is kept."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

RELAY_USER = "release"


class SmtpRelay:
    def __init__(self, password: str, answers: Sequence[str] = ()) -> None:
        self.password = password
        self.answers = list(answers)
        self.answered: list[str] = []
        self.received: list[tuple[str, list[str], bytes]] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        answer = self.answers.pop(0) if self.answers else "250 2.0.0 OK"
        self.answered.append(answer)
        if not answer.startswith("250"):
            return answer
        self.received.append((envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 2.0.0 OK"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object) -> object:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        return AuthResult(success=data.login == RELAY_USER.encode() and data.password == self.password.encode())


@contextmanager
def running_relay(port: int, password: str, answers: Sequence[str] = ()) -> Iterator[SmtpRelay]:
    relay = SmtpRelay(password, answers)
    controller = Controller(
        relay, hostname="127.0.0.1", port=port, authenticator=relay.authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        yield relay
    finally:
        controller.stop()


def relay_outbound(port: int, password: str) -> dict[str, object]:
    """The [outbound] keys that send through a ``running_relay`` at ``port``."""
    return {
        "transport": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_username": RELAY_USER,
        "smtp_password": password,
        "smtp_timeout": "5s",
        "from_address": "release@example.com",
    }
