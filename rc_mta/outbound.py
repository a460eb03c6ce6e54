"""A request's signed reply addresses, and the transports that hand its mail on (outbox
directory or SMTP); ``request_mail`` writes the mail itself.

One request mail carries three signed reply addresses: Complete, Fail (the two mailto
buttons) and Reply-To (decide from the reply's first words). The decide token also sits
in the Message-ID, so a plain Reply still finds its request through In-Reply-To, and in
a metadata block in the body for clients that drop plus-addressing.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from .config import OutboundConfig, Settings
from .errors import TemporaryFailure
from .request_mail import ReplyAddresses
from .store import Request
from .tokens import Action, Signer


@dataclass(frozen=True)
class SentRequest:
    request_id: str
    message_id: str
    to: str
    reply_to: str
    complete_address: str
    fail_address: str
    path: str | None

    def as_json(self) -> dict[str, str | None]:
        return {
            "request_id": self.request_id,
            "message_id": self.message_id,
            "to": self.to,
            "reply_to": self.reply_to,
            "complete_address": self.complete_address,
            "fail_address": self.fail_address,
            "path": self.path,
        }


def reply_addresses(settings: Settings, signer: Signer, request: Request) -> ReplyAddresses:
    inbound = settings.inbound

    def address(action: Action) -> str:
        token = signer.issue(request.id, action, int(request.expires_at), request.owner)
        return f"{inbound.local_part}+{token}@{inbound.reply_domain}"

    reply_to = address(Action.REPLY)
    decide_token = reply_to.split("+", 1)[1].split("@", 1)[0]
    return ReplyAddresses(
        complete=address(Action.COMPLETE),
        fail=address(Action.FAIL),
        reply_to=reply_to,
        message_id=f"<{inbound.local_part}.{decide_token}@{inbound.reply_domain}>",
    )


class Transport(Protocol):
    name: str  # outbox | smtp

    async def send(self, message: EmailMessage, request_id: str) -> str | None:
        """Deliver the message; return a path when it was written to disk."""
        ...

    async def probe(self) -> str:
        """Prove the transport works without sending anything; say what was proven."""
        ...


class OutboxTransport:
    """Writes each request as an .eml file: the default, no mail server needed."""

    name = "outbox"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def probe(self) -> str:
        def write_and_remove() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()

        await asyncio.to_thread(write_and_remove)
        return f"{self.directory} writable"

    async def send(self, message: EmailMessage, request_id: str) -> str | None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{request_id}.eml"
        partial = path.with_suffix(".eml.tmp")
        partial.write_bytes(bytes(message))
        os.replace(partial, path)
        return str(path)


class SmtpTransport:
    """Sends through the site's SMTP server (the seed's SMTP settings)."""

    name = "smtp"

    def __init__(self, config: OutboundConfig) -> None:
        self.config = config

    def _client(self) -> aiosmtplib.SMTP:
        """One client for sending and probing alike: what check-config proves is what sends."""
        cfg = self.config
        return aiosmtplib.SMTP(
            hostname=cfg.smtp_host,
            port=cfg.smtp_port,
            use_tls=cfg.smtp_tls,
            start_tls=cfg.smtp_starttls,
            username=cfg.smtp_username or None,
            password=cfg.smtp_password.get_secret_value() or None,
            timeout=cfg.smtp_timeout,
        )

    async def send(self, message: EmailMessage, request_id: str) -> str | None:
        cfg = self.config
        try:
            async with self._client() as client:
                await client.send_message(message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TemporaryFailure(f"could not send through {cfg.smtp_host}:{cfg.smtp_port}: {exc}") from exc
        return None

    async def probe(self) -> str:
        """Connect, EHLO, TLS and AUTH as configured (on connect, as for sending), QUIT."""
        cfg = self.config
        async with self._client():
            pass
        steps = ["connected over TLS" if cfg.smtp_tls else "connected", "EHLO", "STARTTLS" if cfg.smtp_starttls else ""]
        steps.append(f"AUTH as {cfg.smtp_username}" if cfg.smtp_username else "")
        return f"{cfg.smtp_host}:{cfg.smtp_port} " + ", ".join(s for s in steps if s)


def make_transport(config: OutboundConfig) -> Transport:
    if config.transport == "smtp":
        return SmtpTransport(config)
    return OutboxTransport(config.outbox_dir)
