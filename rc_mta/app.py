"""Wires the parts together and runs them on one asyncio loop."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from typing import Any

from . import metrics
from .api import add_api_routes
from .config import Settings, SigningConfig
from .dns import DnsResolver
from .errors import RcMtaError
from .http import Health, make_app, metrics_app, start_http
from .inbound import start_listener
from .logs import install_runtime_controls, sd_notify
from .mailbox import make_poller
from .outbound import SentRequest, Transport, compose, make_transport, reply_addresses
from .pipeline import Arrival, Pipeline
from .replies import parse_reply
from .sender_auth import Client, SenderAuth
from .store import Request, Store
from .tasks import TaskBackend, TaskNotFound, make_backend
from .tokens import Signer, new_request_id

log = logging.getLogger("rc_mta")


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
        resolver = DnsResolver(
            settings.dns.nameservers, settings.dns.port, settings.dns.timeout, observe=metrics.observe_dns
        )
        pipeline = Pipeline(settings, store, signer, backend, SenderAuth(settings, resolver))
        return cls(settings, store, signer, backend, make_transport(settings.outbound), pipeline)

    def close(self) -> None:
        self.store.close()

    async def send_request_once(self, task_id: str, owner: str | None = None) -> SentRequest:
        """For one-shot commands: send, then let go of the backend's connections."""
        try:
            return await self.send_request(task_id, owner=owner)
        finally:
            await self.backend.close()

    async def send_request(
        self,
        task_id: str,
        owner: str | None = None,
        title: str | None = None,
        *,
        context_title: str | None = None,
        link: str | None = None,
        expires_in: float | None = None,
    ) -> SentRequest:
        """Record a request for a task and mail it to the owner (one request per owner)."""
        try:
            task = await self.backend.get(task_id)
        except TaskNotFound:
            raise RcMtaError(f"no task {task_id}") from None
        address = (owner or task.owner).strip().lower()
        if "@" not in address:
            raise RcMtaError(f"task {task_id} is owned by {address!r}, not an email address: give --owner")
        now = time.time()
        request = Request(
            id=new_request_id(),
            task_id=task.id,
            owner=address,
            title=title or task.title,
            created_at=now,
            expires_at=now + (expires_in or self.settings.signing.request_ttl),
            revoked_at=None,
            message_id=None,
        )
        addresses = reply_addresses(self.settings, self.signer, request)
        request = Request(**{**request.__dict__, "message_id": addresses.message_id})
        await asyncio.to_thread(self.store.add_request, request)
        message = compose(self.settings, request, addresses, now, context_title=context_title, link=link)
        try:
            path = await self.transport.send(message, request.id)
        except BaseException:
            # Never mailed: its addresses must not work if they leak from a log or a retry.
            await asyncio.to_thread(self.store.revoke_request, request.id, time.time())
            raise
        metrics.REQUESTS_SENT.labels(self.settings.outbound.transport).inc()
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
        recipients, refused = await self.pipeline.recipients_from_headers(parsed)
        checks = {name: verdict.as_json() for name, verdict in auth.verdicts.items()}
        if refused and not recipients:
            address, reply = refused[0].recipient.address, str(refused[0].reply)
            token = {"address": address, "valid": False, "error": reply}
            return _diagnosis(token, None, parsed.comment, parsed.auto_reply, refused[0].would, reply, checks)
        recipient = recipients[0]
        token_view: dict[str, Any] = {"address": recipient.address, "valid": False}
        decision = await self.pipeline.decide(parsed, message_id, recipient, auth, act=False, source="file")
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
        """Run every part on this loop until SIGTERM/SIGINT (or ``stop``)."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        install_runtime_controls(loop, self.settings)
        health = Health()
        background = [asyncio.create_task(health.watch_loop(), name="loop-lag")]
        inbound, http = self.settings.inbound, self.settings.http

        servers = [await start_listener(self.pipeline, inbound, lmtp=False)]
        if inbound.lmtp_listen:
            servers.append(await start_listener(self.pipeline, inbound, lmtp=True))
        health.listeners_bound = True
        health.readiness["store"] = lambda: asyncio.to_thread(self.store.ping)
        health.readiness["backend"] = self.backend.check

        runners = []
        if http.listen:
            app = make_app(health, with_metrics=not http.metrics_listen)
            add_api_routes(app, self)
            runners.append(await start_http(app, http.listen, http))
        if http.metrics_listen:
            runners.append(await start_http(metrics_app(), http.metrics_listen, http))

        poller = make_poller(self.settings, self.pipeline)
        if poller is not None:
            health.liveness[poller.source] = poller.staleness
            background.append(asyncio.create_task(poller.run(), name=f"poller-{poller.source}"))

        where = " ".join(
            f"{'lmtp' if i else 'smtp'}={s.sockets[0].getsockname()[0]}:{s.sockets[0].getsockname()[1]}"
            for i, s in enumerate(servers)
        )
        sd_notify("READY=1")  # systemd Type=notify: listeners are bound, the service is up
        log.info(
            "rc-mta ready %s http=%s reply_domain=%s backend=%s store=%s mailbox=%s",
            where,
            http.listen or "off",
            inbound.reply_domain,
            self.backend.name,
            _safe_url(self.store.url),
            self.settings.mailbox.source,
        )
        await stop.wait()
        sd_notify("STOPPING=1")
        for server in servers:
            server.close()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for runner in runners:
            await runner.cleanup()
        await self.pipeline.drain(timeout=30)
        for server in servers:
            await server.wait_closed()
        await self.backend.close()
        log.info("rc-mta stopped")


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
