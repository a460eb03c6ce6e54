"""A request's signed reply addresses, and the transports that hand its mail on (outbox
directory or SMTP); ``request_mail`` writes the mail itself.

One request mail carries three signed reply addresses: Complete, Fail (the two mailto
buttons) and Reply-To (decide from the reply's first words). The decide token also sits
in the Message-ID, beside a random part (``thread_ids``), so a plain Reply still finds its
request through In-Reply-To, and in a metadata block in the body for clients that drop
plus-addressing.
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
from .errors import RcMtaError, TemporaryFailure
from .request_mail import ReplyAddresses
from .safetext import one_line
from .store import Delivery, OutboundMail, Request
from .thread_ids import request_message_id
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
    delivery: Delivery = Delivery.QUEUED
    last_answer: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {
            "delivery": self.delivery.value,
            "last_answer": self.last_answer,
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
        # A request sent already keeps its id (a reminder's thread names it).
        message_id=request.message_id or request_message_id(inbound.local_part, decide_token, inbound.reply_domain),
    )


@dataclass(frozen=True)
class Delivered:
    """What the transport did with a mail: the relay's answer (or the file written)."""

    answer: str
    path: str | None = None


class DeliveryDeferred(TemporaryFailure):
    """Not delivered this time (relay down, 4xx, timeout): the queue tries again later."""


class DeliveryRefused(RcMtaError):
    """The relay refused the mail for good (5xx): the request fails."""


def wire_bytes(message: EmailMessage) -> bytes:
    """The mail as it goes on the wire (CRLF line ends): what is signed, stored and sent."""
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


class Transport(Protocol):
    name: str  # outbox | smtp

    async def deliver(self, mail: OutboundMail) -> Delivered:
        """Hand one queued mail on; DeliveryDeferred or DeliveryRefused when that did not work."""
        ...

    async def probe(self) -> str:
        """Prove the transport works without sending anything; say what was proven."""
        ...


class OutboxTransport:
    """Writes each mail as an .eml file (``<request>.eml``, ``<request>-reminder-1.eml``):
    the default, no mail server needed."""

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

    async def deliver(self, mail: OutboundMail) -> Delivered:
        path = self.directory / f"{mail.name}.eml"

        def write() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".eml.tmp")
            partial.write_bytes(mail.message)
            os.replace(partial, path)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise DeliveryDeferred(f"cannot write {path}: {exc.strerror or exc}") from None
        return Delivered(f"written to {path}", str(path))


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

    async def deliver(self, mail: OutboundMail) -> Delivered:
        """Only a 5xx to MAIL, RCPT or DATA refuses the mail; anything else (no connection,
        a 4xx, a refused greeting or login, which an operator fixes) defers it."""
        relay = f"{self.config.smtp_host}:{self.config.smtp_port}"
        try:
            async with self._client() as client:
                _, answer = await client.sendmail(mail.sender, [mail.recipient], mail.message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            code, text = (exc.recipients[0].code, exc.recipients[0].message) if exc.recipients else (451, str(exc))
        except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as exc:
            code, text = exc.code, exc.message
        except (aiosmtplib.SMTPException, OSError) as exc:
            why = one_line(str(exc)) or type(exc).__name__
            raise DeliveryDeferred(f"could not send through {relay}: {why}") from exc
        else:
            return Delivered(f"{relay} answered: {one_line(answer)}")
        said = f"{relay} answered: {code} {one_line(text)}"
        if 500 <= code < 600:
            raise DeliveryRefused(said)
        raise DeliveryDeferred(said)

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
