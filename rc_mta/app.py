"""Wires the parts together and runs them on one asyncio loop."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from .config import Settings, SigningConfig
from .dns import DnsResolver
from .errors import PermanentRefusal, RcMtaError
from .inbound import start_listener
from .outbound import SentRequest, Transport, compose, make_transport, reply_addresses
from .pipeline import Arrival, Pipeline, Recipient
from .replies import parse_reply
from .sender_auth import Client, SenderAuth
from .store import Request, Store
from .tasks import EmbeddedBackend, TaskBackend, TaskNotFound
from .tokens import Signer, new_request_id

log = logging.getLogger("rc_mta")

TRACE = 5
logging.addLevelName(TRACE, "TRACE")


def load_signer(config: SigningConfig) -> Signer:
    """The configured keys; with none configured, a key generated once under ``var/``."""
    if config.keys:
        assert config.active_key is not None
        return Signer({k: v.get_secret_value().encode() for k, v in config.keys.items()}, config.active_key)
    path = config.generated_key_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return Signer({0: path.read_text().strip().encode()}, 0)


def make_backend(settings: Settings, store: Store) -> TaskBackend:
    return EmbeddedBackend(store)


@dataclass
class Service:
    settings: Settings
    store: Store
    signer: Signer
    backend: TaskBackend
    transport: Transport
    pipeline: Pipeline

    @classmethod
    def open(cls, settings: Settings) -> Service:
        store = Store(settings.store.url, settings.store.busy_timeout)
        store.create_schema()
        signer = load_signer(settings.signing)
        backend = make_backend(settings, store)
        resolver = DnsResolver(settings.dns.nameservers, settings.dns.port, settings.dns.timeout)
        pipeline = Pipeline(settings, store, signer, backend, SenderAuth(settings, resolver))
        return cls(settings, store, signer, backend, make_transport(settings.outbound), pipeline)

    def close(self) -> None:
        self.store.close()

    async def send_request(self, task_id: str, owner: str | None = None, title: str | None = None) -> SentRequest:
        """Record a request for a task and mail it to the owner."""
        try:
            task = await self.backend.get(task_id)
        except TaskNotFound:
            raise RcMtaError(f"no task {task_id}") from None
        now = time.time()
        request = Request(
            id=new_request_id(),
            task_id=task.id,
            owner=(owner or task.owner).strip().lower(),
            title=title or task.title,
            created_at=now,
            expires_at=now + self.settings.signing.request_ttl,
            revoked_at=None,
            message_id=None,
        )
        addresses = reply_addresses(self.settings, self.signer, request)
        request = Request(**{**request.__dict__, "message_id": addresses.message_id})
        await asyncio.to_thread(self.store.add_request, request)
        message = compose(self.settings, request, addresses, now)
        path = await self.transport.send(message, request.id)
        log.info("request sent request=%s task=%s to=%s", request.id, task.id, request.owner)
        return SentRequest(
            request.id,
            addresses.message_id,
            request.owner,
            addresses.reply_to,
            addresses.complete,
            addresses.fail,
            path,
        )

    async def diagnose(
        self, raw: bytes, mail_from: str | None = None, client_ip: str | None = None, helo: str | None = None
    ) -> dict[str, Any]:
        """Judge a saved message as if it had arrived (over SMTP, given the client), without acting."""
        parsed = parse_reply(raw, envelope_sender=mail_from)
        client = Client(ip=client_ip, helo=helo or client_ip, peer_ip=client_ip)
        arrival = Arrival("file", mail_from if mail_from is not None else parsed.from_address, client)
        auth = await self.pipeline.authenticate(arrival, raw, parsed)
        message_id = parsed.message_id or "(none)"
        recipient = Recipient("(none)")
        token_view: dict[str, Any] = {"address": None, "valid": False}
        for address in _our_addresses(parsed.message, self.settings.inbound.reply_domain):
            token_view["address"] = address
            try:
                recipient = await self.pipeline.check_recipient(address)
                token_view["valid"] = True
            except PermanentRefusal as exc:
                token_view["error"] = str(exc.reply)
                checks = {name: verdict.as_json() for name, verdict in auth.verdicts.items()}
                return _diagnosis(token_view, None, parsed.comment, parsed.auto_reply, "refuse", str(exc.reply), checks)
            break
        decision = await self.pipeline.decide(parsed, message_id, recipient, auth, act=False)
        if decision.token is not None:
            token_view.update(
                valid=True,
                request_id=decision.token.request_id,
                key_id=decision.token.key_id,
                token_action=decision.token.action.label,
                expires_at=decision.token.expires_at,
                task_id=decision.request.task_id if decision.request else None,
            )
        return _diagnosis(
            token_view,
            decision.action,
            decision.comment,
            decision.auto_reply or parsed.auto_reply,
            decision.would,
            str(decision.reply),
            decision.checks,
            decision.authentication_results,
        )

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Listen until SIGTERM/SIGINT (or ``stop``)."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        inbound = self.settings.inbound
        servers = [await start_listener(self.pipeline, inbound, lmtp=False)]
        if inbound.lmtp_listen:
            servers.append(await start_listener(self.pipeline, inbound, lmtp=True))
        where = ", ".join(
            f"{'lmtp' if i else 'smtp'}={s.sockets[0].getsockname()[0]}:{s.sockets[0].getsockname()[1]}"
            for i, s in enumerate(servers)
        )
        log.info("rc-mta ready %s reply_domain=%s store=%s", where, inbound.reply_domain, _safe_url(self.store.url))
        await stop.wait()
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        log.info("rc-mta stopped")


def _our_addresses(message: Any, reply_domain: str) -> list[str]:
    headers = [str(v) for name in ("Delivered-To", "X-Original-To", "To", "Cc") for v in message.get_all(name, [])]
    return [addr for _, addr in getaddresses(headers) if addr.lower().endswith("@" + reply_domain)]


def _diagnosis(
    token: dict[str, Any],
    action: str | None,
    comment: str,
    auto_reply: str | None,
    would: str,
    smtp_reply: str,
    checks: dict[str, dict[str, str]],
    authentication_results: str = "",
) -> dict[str, Any]:
    return {
        "checks": checks,
        "token": token,
        "action": action,
        "comment": comment,
        "auto_reply": auto_reply,
        "would": would,
        "smtp_reply": smtp_reply,
        "authentication_results": authentication_results,
    }


def _safe_url(url: str) -> str:
    """A store URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def setup_logging(level: str) -> None:
    numeric = TRACE if level == "trace" else getattr(logging, level.upper())
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # aiosmtpd's protocol exchange is the "trace" level (the seed's -Dmail.debug=true).
    logging.getLogger("mail.log").setLevel(logging.DEBUG if numeric <= TRACE else logging.WARNING)
