"""Wires the parts together and runs them on one asyncio loop."""

from __future__ import annotations

import asyncio
import email.policy
import gc
import logging
import signal
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import Any

from aiohttp import web

from . import metrics
from .api import add_api_routes
from .checks.exchange_online import exchange_online_trust
from .config import Settings, SigningConfig
from .dkim_signing import DkimSigner, make_dkim_signer, signed
from .dns import DnsResolver
from .errors import ConfigError, RcMtaError
from .http import Health, add_mta_sts_route, make_app, metrics_app, start_http
from .inbound import Listener, session_limits, start_listener
from .inbound.shutdown import FLUSH_SECONDS
from .inbound.tls import TlsContexts
from .logs import install_runtime_controls, sd_notify
from .mailbox import make_poller
from .mailbox._graph_push import add_push_route
from .outbound import SentRequest, Transport, make_transport, reply_addresses, wire_bytes
from .outbound_queue import OutboundQueue
from .pipeline import Decision, Inbound, Pipeline
from .ratelimit import rate_limiter
from .request_mail import Language, RequestContext, compose
from .sender_auth import Client, SenderAuth
from .store import IN_PROGRESS, ApprovalCheck, Request, Store, approval_rule
from .tasks import RequestFailureListener, TaskBackend, TaskNotFound, TaskNotInProgress, make_backend
from .tokens import (
    GENERATED_KEY_ID,
    Signer,
    WeakKeyFile,
    new_request_id,
    new_secret,
    read_key_file,
    secret_weakness,
    write_key_file,
)
from .watchdog import keep_alive, watchdog_interval

log = logging.getLogger("rc_mta")


def signing_secrets(config: SigningConfig) -> dict[int, str] | None:
    """The secrets to sign with: the configured keys, else the generated key file's
    (None: no file yet). A weak or unreadable one is a ConfigError naming it."""
    if config.keys:
        for key_id, secret in sorted(config.keys.items()):
            if weakness := secret_weakness(secret.get_secret_value()):
                raise ConfigError(
                    f"config key signing.keys.{key_id}: {weakness} (generate one with: rc-mta keys generate --print)"
                )
        return {k: v.get_secret_value() for k, v in config.keys.items()}
    try:
        generated = read_key_file(config.generated_key_file)
    except WeakKeyFile as exc:
        raise ConfigError(f"{exc} (replace it with: rc-mta keys generate)") from None
    return None if generated is None else {GENERATED_KEY_ID: generated}


def load_signer(config: SigningConfig, *, generate: bool = False, require: bool = False) -> Signer:
    """The configured keys, else the generated key file. Only ``serve`` generates that
    file (``generate``); other commands get a keyless signer, or an error (``require``)."""
    found = signing_secrets(config)
    path = config.generated_key_file
    if found is None and generate:
        try:
            write_key_file(path, new_secret())
        except FileExistsError:
            pass  # another start made one first: use it
        except OSError as exc:
            raise ConfigError(f"cannot write signing key file {path}: {exc.strerror}") from None
        found = signing_secrets(config)
    if found is None:
        missing = f"no signing key yet: {path} does not exist (rc-mta serve creates it, or run: rc-mta keys generate)"
        if require:
            raise ConfigError(missing)
        return Signer({}, None, missing=missing)
    keys = {key_id: secret.encode("utf-8") for key_id, secret in found.items()}
    return Signer(keys, config.active_key if config.keys else GENERATED_KEY_ID)


@dataclass
class Service:
    settings: Settings
    store: Store
    signer: Signer
    backend: TaskBackend
    transport: Transport
    pipeline: Pipeline
    queue: OutboundQueue
    dkim: DkimSigner | None

    @classmethod
    def open(cls, settings: Settings, *, generate_key: bool = False, require_key: bool = False) -> Service:
        """``generate_key``: make the signing key if there is none (``serve`` only);
        ``require_key``: a missing key is an error rather than a signer that has none."""
        signer = load_signer(settings.signing, generate=generate_key, require=require_key)
        store = Store(settings.store.url, settings.store.busy_timeout)
        store.create_schema()
        backend = make_backend(settings, store)
        resolver = DnsResolver(
            settings.dns.nameservers, settings.dns.port, settings.dns.timeout, observe=metrics.observe_dns
        )
        pipeline = Pipeline(settings, store, signer, backend, SenderAuth(settings, resolver))
        transport = make_transport(settings.outbound)
        dkim = make_dkim_signer(settings.outbound.dkim)
        queue = OutboundQueue(settings.outbound, store, transport)
        service = cls(settings, store, signer, backend, transport, pipeline, queue, dkim)
        service.queue.on_failure = service._request_failed
        if isinstance(backend, RequestFailureListener):
            from .followups import Notices

            service.queue.failure_notice = Notices.terms(service.queue.holder)
        service.queue.withheld = service._mail_withheld
        return service

    async def _mail_withheld(self, request: Request) -> str | None:
        """Why a queued mail of ``request`` (its request mail, a reminder) must not go out
        now (see ``followups``)."""
        from .followups import withheld_because

        return await withheld_because(self, request)

    async def _request_failed(self, request_id: str, answer: str) -> None:
        """Tell the workflow, where its backend listens, that a request will never arrive:
        now, or in a later follow-up round while it cannot be reached. The notice was
        written with the mail's failure, held by the queue (``queue.failure_notice``)."""
        if not isinstance(self.backend, RequestFailureListener):
            return
        from .followups import Notices

        await Notices(self, holder=self.queue.holder).tell_recorded(request_id)

    def close(self) -> None:
        self.store.close()

    async def send_request_once(
        self,
        task_id: str,
        owner: str | None = None,
        language: Language | None = None,
        approval_group: str | None = None,
    ) -> SentRequest:
        """For one-shot commands: send, then let go of the backend's connections."""
        try:
            return await self.send_request(task_id, owner=owner, language=language, approval_group=approval_group)
        finally:
            await self.backend.close()

    async def check_approvals(self, task_id: str, owner: str | None, group_id: str | None, *, new_group: bool) -> None:
        """The rule around N-of-M groups (``store.approval_rule``), for a new request (to
        ``owner``; in ``group_id``, or in a group about to be made, or alone), looked at
        early: a clear refusal before a mail is composed and signed, or a group made. It is
        looked at again as the request is written (``Store.add_request_with_mail``), in a
        transaction no other request of the task passes meanwhile: of two made at the same
        moment (two groups made at once for one task, say) one is written, the other refused
        the same way, with nothing written or queued. Answers keep the rule too
        (``Pipeline.evaluate``): an answer is refused while a group of its task it is not
        part of may still decide it. One person's approvals count once in a group
        (``Store.count_approval``)."""
        found = await asyncio.to_thread(self.store.task_approvals, task_id, time.time())
        known = None
        if group_id is not None:
            known = await asyncio.to_thread(self.store.approval_group, group_id)
        approval_rule(task_id, owner, group_id, found, known, new_group=new_group)

    async def send_request(
        self,
        task_id: str,
        owner: str | None = None,
        title: str | None = None,
        *,
        context: RequestContext | None = None,
        language: Language | None = None,
        expires_in: float | None = None,
        approval_group: str | None = None,
    ) -> SentRequest:
        """Record a request for a task and mail it to the owner (one request per owner), in
        ``language`` (default: ``[outbound] language``); ``approval_group``: it decides the
        task together with others (N of M)."""
        try:
            task = await self.backend.get(task_id)
        except TaskNotFound:
            raise RcMtaError(f"no task {task_id}") from None
        if task.status != IN_PROGRESS:
            # A reply to it could only be refused, or worse, look answered while its
            # comment goes nowhere.
            raise TaskNotInProgress(task)
        address = (owner or task.owner).strip().lower()
        if "@" not in address:
            raise RcMtaError(f"task {task_id} is owned by {address!r}, not an email address: give --owner")
        await self.check_approvals(task.id, address, approval_group, new_group=False)
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
        language = language or self.settings.outbound.language
        message = wire_bytes(compose(self.settings, request, addresses, now, context=context, language=language))
        message = await signed(self.dkim, message)
        # Stored before any attempt to send, with its group (no answer to it may act alone),
        # under the rule looked at again: from here on the request is not lost.
        checked = ApprovalCheck(approval_group)
        mail = await self.queue.submit(request, message, self.settings.from_address, approvals=checked)
        log.info(
            "request queued request=%s task=%s to=%s delivery=%s",
            request.id,
            task.id,
            request.owner,
            mail.state.value,
        )
        return SentRequest(
            request.id,
            addresses.message_id,
            request.owner,
            addresses.reply_to,
            addresses.complete,
            addresses.fail,
            mail.path,
            mail.state,
            mail.last_answer,
        )

    async def diagnose(
        self, raw: bytes, *, client: Client | None, mail_from: str | None = None, as_mailbox: bool = False
    ) -> dict[str, Any]:
        """Judge a saved message exactly as the live path would, without acting: over SMTP
        from ``client`` (unknown when None), or, ``as_mailbox``, as a poller reads it."""
        if as_mailbox:
            trusted = tuple(self.settings.mailbox.trusted_authserv_ids)
            exchange_online = exchange_online_trust(self.settings.mailbox)
            inbound = Inbound(raw, "file", trusted_ids=trusted, exchange_online=exchange_online)
            believed = [*trusted, *(["Exchange Online"] if exchange_online else [])]
            assumed = f"read from a mailbox, believing the stamps of {', '.join(believed) or 'no receiver'}"
        else:
            client = client or Client(ip=None, helo=None)
            mail_from = mail_from if mail_from is not None else _header_from(raw)
            inbound = Inbound(raw, "file", client=client, mail_from=mail_from)
            assumed = (
                f"SMTP from {client.ip or 'an unknown client'}"
                f" (HELO {client.helo or '-'}, MAIL FROM <{mail_from or ''}>)"
            )
        decisions = await self.pipeline.process(inbound, act=False)
        views = [_decision_view(d) for d in decisions]
        return {**views[0], "assumed": assumed, "decisions": views}

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Run every part on this loop until SIGTERM/SIGINT (or ``stop``)."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        inbound, http = self.settings.inbound, self.settings.http
        tls = await asyncio.to_thread(TlsContexts.from_config, inbound.tls, inbound.hostname)
        reload_tls = None if tls is None else (lambda: loop.run_in_executor(None, tls.reload, "SIGHUP"))
        install_runtime_controls(loop, self.settings, reload_tls)
        health = Health(max_loop_lag=http.max_loop_lag)
        background = [asyncio.create_task(health.loop_lag.run(), name="loop-lag")]
        # Serving instances count together in a PostgreSQL store; one-shot commands
        # (diagnose) keep the in-memory limiter and never use up a client's allowance.
        limiter = rate_limiter(self.settings.checks.rate_limits.window, self.store)
        self.pipeline.sender_auth.limiter = limiter

        limits = session_limits(self.pipeline, inbound)  # SMTP and LMTP together
        listeners = [await start_listener(self.pipeline, inbound, lmtp=False, limits=limits, tls=tls)]
        if inbound.lmtp_listen:
            listeners.append(await start_listener(self.pipeline, inbound, lmtp=True, limits=limits, tls=tls))
        if inbound.tls_listen:
            listeners.append(
                await start_listener(self.pipeline, inbound, lmtp=False, limits=limits, tls=tls, implicit_tls=True)
            )
        if tls is not None:
            background.append(asyncio.create_task(tls.watch(), name="tls-reload"))
        health.listeners_bound = True
        health.readiness["store"] = lambda: asyncio.to_thread(self.store.ping)
        health.readiness["backend"] = self.backend.check
        health.warnings["outbound_queue"] = self.queue.oldest_waiting
        background.append(asyncio.create_task(self.queue.run(), name="outbound-queue"))

        poller = make_poller(self.settings, self.pipeline)
        if poller is not None and self.settings.mailbox.notify_refusals:
            from .refusal_notices import RefusalNotices

            poller.notify_refusals(RefusalNotices(self.settings, self.signer, self.queue, self.dkim))
        runners = []
        if http.listen:
            app = make_app(health, with_metrics=not http.metrics_listen)
            add_api_routes(app, self)
            if http.mta_sts.enabled:
                add_mta_sts_route(app, http.mta_sts)
            add_push_route(app, poller)
            runners.append(await start_http(app, http.listen, http, inbound.shutdown_grace))
        if http.metrics_listen:
            runners.append(await start_http(metrics_app(), http.metrics_listen, http, inbound.shutdown_grace))

        if poller is not None:
            health.liveness[poller.source] = poller.staleness
            background.append(asyncio.create_task(poller.run(), name=f"poller-{poller.source}"))
        if self.settings.tasks.release.watch:
            from .tasks.release_watch import ReleaseWatcher

            background.append(asyncio.create_task(ReleaseWatcher(self).run(), name="release-watch"))
        from .followups import FollowUps

        background.append(asyncio.create_task(FollowUps(self).run(), name="followups"))

        where = " ".join(f"{listener.protocol}={':'.join(map(str, listener.address))}" for listener in listeners)
        if tls is not None:
            where += f" tls={tls.info.describe()}"
        # What start-up built (modules, config, compiled statements) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it (a
        # pause of tens of ms in the middle of some SMTP answer).
        gc.collect()
        gc.freeze()
        sd_notify("READY=1")  # systemd Type=notify: listeners are bound, the service is up
        if (every := watchdog_interval()) is not None:  # systemd WatchdogSec=
            background.append(asyncio.create_task(keep_alive(every), name="watchdog"))
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
        await self._shut_down(listeners, runners, background)
        limiter.close()
        log.info("rc-mta stopped")

    async def _shut_down(
        self, listeners: list[Listener], runners: list[web.AppRunner], background: list[asyncio.Task[None]]
    ) -> None:
        """In order, and never longer than ``[inbound] shutdown_grace`` (STYLE lesson 16):
        stop accepting and 421 the idle sessions; stop the pollers and HTTP; let the replies
        being received or acted on finish and get their answer; then 421 and close the rest."""
        sd_notify("STOPPING=1")
        grace = self.settings.inbound.shutdown_grace
        for listener in listeners:
            listener.stop_accepting()
        log.info(
            "rc-mta stopping: listeners closed, %d session(s) in a transaction get up to %gs",
            sum(listener.sessions.in_transaction() for listener in listeners),
            grace,
        )
        for task in background:
            task.cancel()  # a poller's action under way is shielded: ``drain`` waits for it
        steps = [
            *background,
            *(asyncio.create_task(runner.cleanup(), name="http") for runner in runners),
            asyncio.create_task(self.pipeline.drain(timeout=grace), name="actions"),
        ]
        # Each listener gives its transactions the grace period, then 421s and closes the rest.
        sessions = [asyncio.create_task(listener.finish(grace)) for listener in listeners]
        await asyncio.wait(steps, timeout=grace)
        await asyncio.gather(*sessions)
        for step in steps:
            if not step.done():
                step.cancel()
                log.warning("rc-mta stopping: %s did not finish within %gs: cancelled", step.get_name(), grace)
        await asyncio.wait(steps, timeout=FLUSH_SECONDS)
        await self.backend.close()


def _decision_view(decision: Decision) -> dict[str, Any]:
    token: dict[str, Any] = {"address": decision.recipient.address, "valid": decision.token is not None}
    if decision.token is not None:
        token.update(
            request_id=decision.token.request_id,
            key_id=decision.token.key_id,
            token_action=decision.token.action.label,
            expires_at=decision.token.expires_at,
            task_id=decision.request.task_id if decision.request else None,
        )
    elif not decision.reply.accepted:
        token["error"] = str(decision.reply)
    return {
        "checks": decision.checks,
        "token": token,
        "action": decision.action.value if decision.action else None,
        "comment": decision.comment,
        "auto_reply": decision.auto_reply,
        "would": decision.outcome.value,
        "smtp_reply": str(decision.reply),
        "authentication_results": decision.authentication_results,
    }


def _header_from(raw: bytes) -> str | None:
    """The From address, standing in for MAIL FROM when diagnose is not told one."""
    parsed = BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[:65536])
    found = [address for _, address in getaddresses([str(parsed.get("From", ""))]) if address]
    return found[0] if len(found) == 1 else None


def _safe_url(url: str) -> str:
    """A store URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
