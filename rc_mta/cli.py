"""The ``rc-mta`` command. Every error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from . import __version__
from .errors import RcMtaError
from .logs import LEVELS, PIDFILE, mask_secrets, running_pid, secret_values, setup_logging

# Imported by the commands that use them: ``--help`` and the store-only commands must not
# pay for the API, the SMTP server, the checks, the HTTP client or asyncio (issue 17: ≤ 0.3 s;
# tests/test_cli_imports.py holds the task commands and --help to it).
if TYPE_CHECKING:
    from .config import Settings
    from .shapes import TaskCreate
    from .store import Store, Task

EXIT_ERROR = 1
EXIT_USAGE = 2


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from .app import Service
    from .eventloop import run

    service = Service.open(settings, generate_key=True)
    try:
        run(service.serve())
    finally:
        service.close()
    return 0


_TASK_OPTION_RULES = {
    "title": "--title must be one line of 1 to 500 characters, without line breaks or control characters",
    "owner": "--owner must be an email address like alice@example.com",
}


def _new_task(title: str, owner: str) -> TaskCreate:
    """The API's rules for a new task, so a title fit for a Subject line is the only kind stored."""
    from pydantic import ValidationError

    from .shapes import TaskCreate

    try:
        return TaskCreate(title=title, owner=owner)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        raise RcMtaError(_TASK_OPTION_RULES.get(field, f"--{field} is not valid")) from None


def _task_json(task: Task) -> dict[str, Any]:
    """A task as the API shows it; its pydantic models are loaded for ``--json`` only."""
    from .shapes import task_json

    return task_json(task)


def cmd_task(settings: Settings, args: argparse.Namespace) -> int:
    """The embedded backend's tasks, straight from the store: no signer, transport or checks."""
    from .store import Store

    new = _new_task(args.title, args.owner) if args.task_command == "add" else None
    store = Store(settings.store.url, settings.store.busy_timeout)
    try:
        store.create_schema()
        if new is not None:
            task = store.add_task(new.title, new.owner, time.time())
            if args.json:
                _print_json(_task_json(task))
            else:
                print(f"added task {task.id}: {task.title} (owner {task.owner})")
                print(task.id)
        elif args.task_command == "list":
            tasks = store.list_tasks_with_comments()
            if args.json:
                _print_json([_task_json(t) for t in tasks])
            else:
                for t in tasks:
                    print(f"{t.id}  {t.status:<11}  {t.owner:<30}  {t.title}")
        else:
            found = store.get_task(args.task_id)
            if found is None:
                raise RcMtaError(f"no task {args.task_id}")
            if args.json:
                _print_json(_task_json(found))
            else:
                print(f"{found.id}: {found.title}\n  owner:  {found.owner}\n  status: {found.status}")
                for c in found.comments:
                    print(f"  comment by {c.author} at {_iso(c.at)}: {c.text}")
        return 0
    finally:
        store.close()


# What only sending a request takes: ``request show`` refuses them rather than drop them.
_SENDING_OPTIONS = {"owner": "--owner", "language": "--language", "approval_group": "--approval-group"}


def cmd_request(settings: Settings, args: argparse.Namespace) -> int:
    if args.task_id == "show":  # always the word: ``request show`` alone never asks a task "show"
        if args.request_id is None:
            raise RcMtaError("request show needs the request's id: rc-mta request show REQUEST_ID")
        given = [option for name, option in _SENDING_OPTIONS.items() if getattr(args, name) is not None]
        if given:
            raise RcMtaError(f"{given[0]} is for sending a request; request show takes REQUEST_ID and --json")
        return cmd_request_show(settings, args)
    if args.request_id is not None:
        raise RcMtaError(f"unexpected argument {args.request_id!r} (to see a request: rc-mta request show REQUEST_ID)")
    from . import eventloop  # look-ups off the executor: a hung one never holds the exit
    from .app import Service
    from .errors import ApprovalConflict

    service = Service.open(settings)
    try:
        asked = service.send_request_once(
            args.task_id, owner=args.owner, language=args.language, approval_group=args.approval_group
        )
        sent = eventloop.run(asked)
    except ApprovalConflict as exc:
        raise RcMtaError(exc.said(f"--approval-group {exc.group_id}")) from None
    finally:
        service.close()
    if args.json:
        _print_json(sent.as_json())
    else:
        where = f" (written to {sent.path})" if sent.path else ""
        if sent.delivery.value == "sent":
            print(f"request {sent.request_id} sent to {sent.to}{where}")
        elif sent.delivery.value == "failed":
            print(f"request {sent.request_id} to {sent.to} FAILED: {sent.last_answer}")
        else:
            why = sent.last_answer or "not tried yet"
            print(f"request {sent.request_id} to {sent.to} queued ({why}); rc-mta serve delivers it")
        print(f"  complete: {sent.complete_address}\n  fail:     {sent.fail_address}")
    return EXIT_ERROR if sent.delivery.value == "failed" else 0


def cmd_request_show(settings: Settings, args: argparse.Namespace) -> int:
    """``request show REQUEST_ID``: the request, its mail's delivery and its answer, as the API shows them."""
    from .api import request_json
    from .store import Store

    store = Store(settings.store.url, settings.store.busy_timeout)
    try:
        store.create_schema()
        found = store.get_request_with_claim(args.request_id.lower())
        mails = store.outbound_mails(args.request_id.lower()) if found else []
    finally:
        store.close()
    if found is None:
        raise RcMtaError(f"no request {args.request_id}")
    shown = request_json(*found, time.time(), mails)
    if args.json:
        _print_json(shown)
        return 0
    print(f"request {shown['request_id']} for task {shown['task_id']}: {shown['title']}")
    print(f"  owner:    {shown['owner']}\n  state:    {shown['state']} (expires {shown['expires_at']})")
    delivery = shown["delivery"]
    if delivery is None:
        print("  delivery: not recorded (sent before the outbound queue existed)")
    else:
        when = delivery["done_at"] or f"next try {delivery['next_attempt_at']}"
        print(f"  delivery: {delivery['state']} after {delivery['attempts']} attempt(s), {when}")
        print(f"  answer:   {delivery['last_answer'] or '-'}")
    for reminder in shown["reminders"]:
        when = reminder["done_at"] or f"next try {reminder['next_attempt_at']}"
        print(f"  {reminder['kind']}: {reminder['state']} after {reminder['attempts']} attempt(s), {when}")
        print(f"    answer: {reminder['last_answer'] or '-'}")
    if shown["answered"]:
        answered = shown["answered"]
        print(f"  answered: {answered['action']} by {answered['by']} at {answered['at']}")
    return 0


def cmd_revoke(settings: Settings, args: argparse.Namespace) -> int:
    """Withdraw a request unless it was answered (the API's DELETE does the same)."""
    from .store import STALE_CLAIM_SECONDS, Store

    store = Store(settings.store.url, settings.store.busy_timeout)
    try:
        found = store.find_request(args.request)
        if found is None:
            raise RcMtaError(f"no request {args.request} (give the request id or the request mail's Message-ID)")
        if found.revoked_at is not None:
            raise RcMtaError(f"request {found.id} was already revoked")
        if not store.revoke_unanswered_request(found.id, time.time(), STALE_CLAIM_SECONDS):
            claim = store.get_request_with_claim(found.id)
            answer = claim[1] if claim else None
            if answer is not None and answer.done:
                raise RcMtaError(f"request {found.id} was already answered: {answer.action} by {answer.actor}")
            raise RcMtaError(f"request {found.id} is being answered right now; try again in a minute")
    finally:
        store.close()
    print(f"request {found.id} revoked")
    return 0


def cmd_diagnose(settings: Settings, args: argparse.Namespace) -> int:
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        raise RcMtaError(f"cannot read {args.file}: {exc.strerror}") from None
    from . import eventloop
    from .app import Service
    from .sender_auth import Client

    service = Service.open(settings, require_key=True)
    try:
        as_mailbox = args.as_mailbox or (args.client_ip is None and settings.mailbox.source != "none")
        client = Client(ip=args.client_ip, helo=args.helo or args.client_ip, peer_ip=args.client_ip)
        result = eventloop.run(service.diagnose(raw, client=client, mail_from=args.mail_from, as_mailbox=as_mailbox))
    finally:
        service.close()
    if args.json:
        _print_json(result)
    else:
        width = len("authentication_results:") + 1
        print(f"{'assumed:':<{width}}{result['assumed']}")
        for decision in result["decisions"]:
            for key in ("would", "smtp_reply", "action", "auto_reply", "authentication_results"):
                print(f"{key + ':':<{width}}{decision[key]}")
            print(f"{'token:':<{width}}{json.dumps(decision['token'])}")
            for name, verdict in decision["checks"].items():
                print(f"{'check:':<{width}}{name} {json.dumps(verdict)}")
            print(f"{'comment:':<{width}}{decision['comment']!r}")
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """``keys generate``: the one way besides ``serve`` to make a signing key, and the way
    to replace a damaged key file (a sound one is never overwritten)."""
    from .tokens import WeakKeyFile, new_secret, read_key_file, write_key_file

    secret = new_secret()
    if args.print:
        print(secret)
        return 0
    if settings.signing.keys:
        raise RcMtaError(
            "[signing] keys are configured, so generated_key_file is not used: "
            "run rc-mta keys generate --print for a secret to add there"
        )
    path = settings.signing.generated_key_file
    try:
        damaged, existing = False, read_key_file(path)
    except WeakKeyFile:
        damaged, existing = True, None
    if existing is not None:
        raise RcMtaError(
            f"{path} already holds a signing key; replacing it voids every request sent, so remove it first"
        )
    try:
        write_key_file(path, secret, replace=damaged)
    except OSError as exc:
        raise RcMtaError(f"cannot write signing key file {path}: {exc.strerror}") from None
    print(f"{'replaced the damaged' if damaged else 'wrote a new'} signing key {path} (mode 0600)")
    return 0


CHECK_TIMEOUT = 10.0  # seconds per part of check-config, on top of the part's own timeout


@dataclass
class _Check:
    """One line of check-config: which part, whether it works, and why (not)."""

    part: str
    ok: bool
    detail: str
    warn: bool = False

    def __str__(self) -> str:
        mark = "✗" if not self.ok else "!" if self.warn else "✓"
        return f"{mark} {self.part}: {self.detail}"


class _Warning(str):
    """A probe's answer that works but needs the operator's eye (shown with "!", not a ✗)."""


async def _run_check(part: str, probe: Callable[[], Awaitable[str]], timeout: float) -> _Check:
    """Run one probe with a deadline; any exception is a ✗ with its one-line reason."""
    import asyncio

    try:
        detail = await asyncio.wait_for(probe(), timeout)
        return _Check(part, True, detail, warn=isinstance(detail, _Warning))
    except TimeoutError:
        return _Check(part, False, f"no answer within {timeout:g}s")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _Check(part, False, mask_secrets(reason))


async def _check_store(store: Store) -> str:
    import asyncio

    await asyncio.to_thread(store.ping)
    return f"{mask_secrets(store.url)} answers"


async def _check_dns(settings: Settings) -> str:
    """A real query through the configured resolver: the reply domain's MX (an empty answer
    still proves the resolver works; a timeout or SERVFAIL does not)."""
    from .dns import DnsResolver

    dns = settings.dns
    resolver = DnsResolver(dns.nameservers, dns.port, dns.timeout)
    servers = ", ".join(f"{ns}:{dns.port}" for ns in dns.nameservers) or "/etc/resolv.conf"
    domain = settings.inbound.reply_domain
    started = time.monotonic()
    records = await resolver.resolve(domain, "MX")
    took = (time.monotonic() - started) * 1000
    answered = f"{servers} answered in {took:.0f} ms: {domain} MX"
    if not records:
        return _Warning(f"{answered}: none; mail to it won't arrive until an MX points at rc-mta or the front MTA")
    return f"{answered} {', '.join(records)}"


def _check_signing_key(settings: Settings) -> str:
    """The signing keys are strong enough; a missing generated key is fine (serve makes it)."""
    from .app import signing_secrets

    found = signing_secrets(settings.signing)
    if settings.signing.keys:
        return f"{len(settings.signing.keys)} configured, active key {settings.signing.active_key}, each strong enough"
    if found is None:
        return f"{settings.signing.generated_key_file} does not exist yet; rc-mta serve creates it"
    return f"{settings.signing.generated_key_file} holds a strong enough key"


async def _check_all(settings: Settings, store: Store) -> list[_Check]:
    """Every part the service needs, concurrently, each with its own deadline. Each part
    proves itself with its own code (``probe``/``check``), the very code the service runs."""
    import asyncio

    from .mailbox import make_poller
    from .outbound import make_transport
    from .tasks import make_backend

    transport = make_transport(settings.outbound)
    poller = make_poller(settings, cast(Any, None))  # a probe never reaches the pipeline
    backend = make_backend(settings, store)

    async def check_backend() -> str:
        try:
            return await backend.check()
        finally:
            await backend.close()

    async def check_dkim() -> str:
        from .dkim_signing import DkimSigner
        from .dns import DnsResolver

        dns = settings.dns
        signer = DkimSigner(settings.outbound.dkim)
        return await signer.probe(DnsResolver(dns.nameservers, dns.port, dns.timeout))

    async def check_tls() -> str:
        from .inbound.tls import check_pair

        detail, look = await asyncio.to_thread(check_pair, settings.inbound.tls, settings.inbound.hostname)
        return _Warning(detail) if look else detail

    probes: list[Awaitable[_Check]] = [
        _run_check("signing key", lambda: asyncio.to_thread(_check_signing_key, settings), CHECK_TIMEOUT),
        _run_check("store", lambda: _check_store(store), CHECK_TIMEOUT),
        _run_check("dns", lambda: _check_dns(settings), settings.dns.timeout + 1),
        _run_check(f"outbound {transport.name}", transport.probe, CHECK_TIMEOUT + 1),
    ]
    if settings.inbound.tls.enabled:
        probes.append(_run_check("inbound tls", check_tls, CHECK_TIMEOUT))
    if settings.outbound.dkim.enabled:
        probes.append(_run_check("outbound dkim", check_dkim, settings.dns.timeout + 1))
    if poller is not None:
        probes.append(_run_check(f"mailbox {poller.source}", poller.probe, 2 * CHECK_TIMEOUT + 1))
    probes.append(_run_check(f"tasks {backend.name}", check_backend, CHECK_TIMEOUT))
    return list(await asyncio.gather(*probes))


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    """Reach every part with the real settings, so a mistake shows before the service starts."""
    from . import eventloop
    from .config import config_path
    from .store import Store

    where = config_path(args.config)
    print(_Check("config", True, f"{where or 'defaults and environment'} parsed"), flush=True)
    store = Store(settings.store.url, settings.store.busy_timeout)
    try:
        results = eventloop.run(_check_all(settings, store))
    finally:
        store.close()
    for result in results:
        print(result)
    failed = [r.part for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results) + 1} checks failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


# status -------------------------------------------------------------------------------------


def _local_url(listen: str) -> str:
    """Where a local client reaches a listener (a wildcard address means loopback)."""
    from .config import parse_host_port

    host, port = parse_host_port(listen)
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """GET that returns (status, body) for error statuses too; OSError when unreachable."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise OSError(str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)) from None


def _json_status(status: int, body: bytes) -> dict[str, Any]:
    """A health endpoint's JSON report, or what was wrong with its answer."""
    try:
        report = json.loads(body)
    except ValueError:
        report = None
    return report if isinstance(report, dict) else {"status": f"HTTP {status} without a JSON report"}


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The scrape's samples by name (counters with their _total suffix)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def _status_report(health: dict[str, Any], ready: dict[str, Any], samples: dict[str, Any]) -> dict[str, Any]:
    def by(name: str, *labels: str) -> dict[str, float]:
        return {"/".join(s[0].get(label, "") for label in labels): s[1] for s in samples.get(name, [])}

    rejections = sorted(by("rc_mta_rejections_total", "stage", "reason").items(), key=lambda kv: -kv[1])
    now = time.time()
    pollers = {
        source: {"last_sync_age_seconds": round(now - ts, 1) if ts else None}
        for source, ts in by("rc_mta_poller_last_sync_timestamp_seconds", "source").items()
    }
    for source, idle in by("rc_mta_poller_idle", "source").items():
        pollers.setdefault(source, {"last_sync_age_seconds": None})["idle"] = bool(idle)
    version = next((s[0].get("version") for s in samples.get("rc_mta_build_info", [])), None)
    return {
        "version": version,
        "health": health,
        "ready": ready,
        "messages_received": by("rc_mta_messages_received_total", "source"),
        "rejections_top10": dict(rejections[:10]),
        "tasks_acted": by("rc_mta_tasks_acted_total", "backend", "action"),
        "pollers": pollers,
    }


def _print_status(url: str, report: dict[str, Any]) -> None:
    health, ready = report["health"], report["ready"]
    print(f"rc-mta {report['version'] or '?'} at {url}")
    parts = ", ".join(f"{k} {v}" for k, v in health.items() if k != "status")
    print(f"  health: {health.get('status')} ({parts})")
    parts = ", ".join(f"{k} {v}" for k, v in ready.items() if k != "status")
    print(f"  ready:  {ready.get('status')} ({parts})")

    def table(title: str, values: dict[str, float]) -> None:
        print(f"{title}:" + ("" if values else " none"))
        for key, value in values.items():
            print(f"  {key:<40} {value:g}")

    table("messages received (by source)", report["messages_received"])
    table("rejections (stage/reason, top 10)", report["rejections_top10"])
    table("tasks acted (backend/action)", report["tasks_acted"])
    print("pollers:" + ("" if report["pollers"] else " none"))
    for source, poller in report["pollers"].items():
        age = poller.get("last_sync_age_seconds")
        since = f"last sync {age:g}s ago" if age is not None else "no sync yet"
        idle = {True: ", in IDLE", False: ", not in IDLE"}.get(poller.get("idle"), "")
        print(f"  {source:<40} {since}{idle}")


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Ask the running service how it is: /healthz, /readyz and key counters from /metrics."""
    http = settings.http
    if not http.listen:
        raise RcMtaError("[http] listen is off: the service has no health endpoints to ask")
    url = _local_url(http.listen)
    metrics_url = _local_url(http.metrics_listen) if http.metrics_listen else url
    try:
        health_status, health_body = _http_get(url + "/healthz", args.timeout)
        ready_status, ready_body = _http_get(url + "/readyz", args.timeout)
        metrics_status, metrics_body = _http_get(metrics_url + "/metrics", args.timeout)
    except OSError as exc:
        raise RcMtaError(f"rc-mta is not answering at {url}: {exc}") from None
    health, ready = _json_status(health_status, health_body), _json_status(ready_status, ready_body)
    samples = _samples(metrics_body.decode()) if metrics_status == 200 else {}
    report = _status_report(health, ready, samples)
    if args.json:
        _print_json(report)
    else:
        _print_status(url, report)
    if health_status != 200:
        print(f"rc-mta: unhealthy: /healthz answered {health_status}", file=sys.stderr)
        return EXIT_ERROR
    if ready_status != 200:
        print(f"rc-mta: not ready: /readyz answered {ready_status}", file=sys.stderr)
        return EXIT_ERROR
    return 0


# log-level ----------------------------------------------------------------------------------


def cmd_log_level(settings: Settings, args: argparse.Namespace) -> int:
    """Switch the running service's log level with a signal (no control port to secure):
    ``trace`` is SIGUSR1, the configured level SIGUSR2."""
    configured = settings.log.level
    level = configured if args.level == "configured" else args.level
    if level == "trace" and configured != "trace":
        sig, what = signal.SIGUSR1, "trace (protocol exchanges logged)"
    elif level == configured:
        sig, what = signal.SIGUSR2, f"its configured level, {configured}"
    else:
        raise RcMtaError(
            f"the running service switches between trace and its configured level ({configured}); "
            f'for {level}, set [log] level = "{level}" and reload it (systemctl reload rc-mta, or kill -HUP)'
        )
    try:
        pid = running_pid(Path(args.pidfile))
        os.kill(pid, sig)
    except ProcessLookupError as exc:
        raise RcMtaError(str(exc) or "rc-mta is not running") from None
    except PermissionError:
        raise RcMtaError(f"not allowed to signal rc-mta (pid {pid}): run as its user or root") from None
    print(f"rc-mta (pid {pid}) switched to {what} ({signal.Signals(sig).name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rc-mta", description="Complete or fail workflow tasks by email.")
    parser.add_argument("--config", metavar="PATH", help="TOML config (default: $RC_MTA_CONFIG, else conf/rc-mta.toml)")
    parser.add_argument("--version", action="version", version=f"rc-mta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", help="receive replies over SMTP/LMTP").set_defaults(run=cmd_serve)

    task = commands.add_parser("task", help="tasks of the embedded backend")
    task.set_defaults(run=cmd_task)
    task_commands = task.add_subparsers(dest="task_command", required=True, metavar="ACTION")
    add = task_commands.add_parser("add", help="add a task; prints its id as the last line")
    add.add_argument("--title", required=True)
    add.add_argument("--owner", required=True, help="the owner's email address")
    add.add_argument("--json", action="store_true")
    task_commands.add_parser("list", help="list tasks").add_argument("--json", action="store_true")
    show = task_commands.add_parser("show", help="show one task and its comments")
    show.add_argument("task_id")
    show.add_argument("--json", action="store_true")

    request = commands.add_parser(
        "request",
        help="mail a completion request for a task (or: request show REQUEST_ID, to see one)",
        usage="%(prog)s [--owner OWNER] [--language {en,de,fr}] [--approval-group GROUP] [--json] TASK_ID\n"
        "       %(prog)s show REQUEST_ID [--json]",
    )
    request.add_argument("task_id", metavar="TASK_ID", help="the task to ask its owner about")
    request.add_argument("request_id", metavar="REQUEST_ID", nargs="?", help="after the word show: the request to see")
    request.add_argument("--owner", help="send to this address instead of the task's owner")
    request.add_argument("--language", choices=["en", "de", "fr"], help="of the mail (default: [outbound] language)")
    request.add_argument(
        "--approval-group",
        metavar="GROUP",
        help="ask the owner in this N-of-M approval group of the task (its rule stays), instead of alone",
    )
    request.add_argument("--json", action="store_true")
    request.set_defaults(run=cmd_request)

    revoke = commands.add_parser("revoke", help="withdraw a request: its reply addresses stop working")
    revoke.add_argument("request", metavar="REQUEST", help="the request id, or the request mail's Message-ID")
    revoke.set_defaults(run=cmd_revoke)

    diagnose = commands.add_parser("diagnose", help="judge a saved reply (.eml) without acting")
    diagnose.add_argument("file")
    diagnose.add_argument("--mail-from", help="the envelope sender, as if received over SMTP")
    diagnose.add_argument("--client-ip", help="the sending host's IP, as if it had connected")
    diagnose.add_argument("--helo", help="the sending host's HELO/EHLO name")
    diagnose.add_argument(
        "--as-mailbox",
        action="store_true",
        help="judge it as a mailbox poller would (the default when [mailbox] source is set and no --client-ip)",
    )
    diagnose.add_argument("--json", action="store_true")
    diagnose.set_defaults(run=cmd_diagnose)

    keys = commands.add_parser("keys", help="signing keys")
    keys.set_defaults(run=cmd_keys)
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys_commands.add_parser(
        "generate", help="write a new key into [signing] generated_key_file (mode 0600)"
    )
    generate.add_argument("--print", action="store_true", help="print a new secret for [signing] keys instead")

    commands.add_parser("check-config", help="validate the config and reach every part").set_defaults(
        run=cmd_check_config
    )

    status = commands.add_parser("status", help="health and key counters of the running service")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds per HTTP request (default 5)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    log_level = commands.add_parser("log-level", help="switch the running service's log level (trace or back)")
    log_level.add_argument("level", choices=[*LEVELS, "configured"])
    log_level.add_argument(
        "--pidfile", default=str(PIDFILE), help=f"the service's pid file (default {PIDFILE}, under its directory)"
    )
    log_level.set_defaults(run=cmd_log_level)
    return parser


def _reader_gone() -> int:
    """The reader of our output left (``rc-mta status --json | head -c1``): stop quietly, as
    a command killed by SIGPIPE would, without Python's complaint when it flushes at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def run() -> NoReturn:
    """The ``rc-mta`` program: the process ends with the command, so ``main`` may leave the
    cycle collector off on its way out (Python would otherwise walk every object once more)."""
    sys.exit(main(exiting=True))


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    args = build_parser().parse_args(argv)
    # A one-shot command runs without the cycle collector: it lives for a moment, and the
    # collector would spend a twentieth of ``task show`` walking what its imports made,
    # none of it garbage (issue 17). ``serve`` runs for months and keeps it.
    collecting = gc.isenabled()
    if args.run is not cmd_serve:
        gc.disable()
    # rc-mta uses no pydantic plugin, and looking for one reads the metadata of every
    # installed package when the first model is made, on every call. Setting the variable
    # (even to "") before rc-mta starts keeps pydantic's own behaviour.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        return _run(args)
    finally:
        if collecting and not exiting:
            gc.enable()


def _run(args: argparse.Namespace) -> int:
    try:
        from .config import config_path, load_settings

        # Only check-config may run on the built-in defaults: it says which file it read.
        settings = load_settings(args.config, require_file=args.run is not cmd_check_config)
        setup_logging(
            settings.log.level,
            settings.log.format,
            secrets=secret_values(settings),
            config_file=config_path(args.config),
        )
        code = int(args.run(settings, args))
        sys.stdout.flush()  # here, so a reader that went away is handled below, not at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except RcMtaError as exc:
        print(f"rc-mta: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, no traceback: the log has the details
        print(f"rc-mta: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    run()
