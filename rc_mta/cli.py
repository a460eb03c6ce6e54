"""The ``rc-mta`` command. Every error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .app import Service, setup_logging
from .config import Settings, load_settings
from .errors import RcMtaError
from .store import Task

EXIT_ERROR = 1
EXIT_USAGE = 2


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def _task_json(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "title": task.title,
        "owner": task.owner,
        "status": task.status,
        "created_at": _iso(task.created_at),
        "acted_by": task.acted_by,
        "acted_at": _iso(task.acted_at),
        "comments": [{"author": c.author, "text": c.text, "at": _iso(c.at)} for c in task.comments],
    }


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    service = Service.open(settings)
    try:
        asyncio.run(service.serve())
    finally:
        service.close()
    return 0


def cmd_task(settings: Settings, args: argparse.Namespace) -> int:
    service = Service.open(settings)
    store = service.store
    try:
        if args.task_command == "add":
            import time

            task = store.add_task(args.title, args.owner, time.time())
            if args.json:
                _print_json(_task_json(task))
            else:
                print(f"added task {task.id}: {task.title} (owner {task.owner})")
                print(task.id)
        elif args.task_command == "list":
            tasks = store.list_tasks()
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
        service.close()


def cmd_request(settings: Settings, args: argparse.Namespace) -> int:
    service = Service.open(settings)
    try:
        sent = asyncio.run(service.send_request(args.task_id, owner=args.owner))
    finally:
        service.close()
    if args.json:
        _print_json(sent.as_json())
    else:
        where = f" (written to {sent.path})" if sent.path else ""
        print(f"request {sent.request_id} sent to {sent.to}{where}")
        print(f"  complete: {sent.complete_address}\n  fail:     {sent.fail_address}")
    return 0


def cmd_revoke(settings: Settings, args: argparse.Namespace) -> int:
    import time

    service = Service.open(settings)
    try:
        if not service.store.revoke_request(args.request_id, time.time()):
            raise RcMtaError(f"no live request {args.request_id}")
    finally:
        service.close()
    print(f"request {args.request_id} revoked")
    return 0


def cmd_diagnose(settings: Settings, args: argparse.Namespace) -> int:
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        raise RcMtaError(f"cannot read {args.file}: {exc.strerror}") from None
    service = Service.open(settings)
    try:
        result = asyncio.run(service.diagnose(raw, mail_from=args.mail_from, client_ip=args.client_ip, helo=args.helo))
    finally:
        service.close()
    if args.json:
        _print_json(result)
    else:
        for key in ("would", "smtp_reply", "action", "auto_reply", "authentication_results"):
            print(f"{key + ':':<12}{result[key]}")
        print(f"{'token:':<12}{json.dumps(result['token'])}")
        for name, verdict in result["checks"].items():
            print(f"{'check:':<12}{name} {json.dumps(verdict)}")
        print(f"{'comment:':<12}{result['comment']!r}")
    return 0


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    from .store import Store

    failures = 0
    print("✓ config parsed")
    store = Store(settings.store.url, settings.store.busy_timeout)
    try:
        store.ping()
        print("✓ store reachable")
    except RcMtaError as exc:
        failures += 1
        print(f"✗ store: {exc}")
    finally:
        store.close()
    if settings.outbound.transport == "outbox":
        try:
            settings.outbound.outbox_dir.mkdir(parents=True, exist_ok=True)
            print(f"✓ outbox {settings.outbound.outbox_dir} writable")
        except OSError as exc:
            failures += 1
            print(f"✗ outbox {settings.outbound.outbox_dir}: {exc.strerror}")
    return EXIT_ERROR if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rc-mta", description="Complete or fail workflow tasks by email.")
    parser.add_argument("--config", metavar="PATH", help="TOML config (default: $RC_MTA_CONFIG, else conf/rc-mta.toml)")
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

    request = commands.add_parser("request", help="mail a completion request for a task")
    request.add_argument("task_id")
    request.add_argument("--owner", help="send to this address instead of the task's owner")
    request.add_argument("--json", action="store_true")
    request.set_defaults(run=cmd_request)

    revoke = commands.add_parser("revoke", help="withdraw a request: its reply addresses stop working")
    revoke.add_argument("request_id")
    revoke.set_defaults(run=cmd_revoke)

    diagnose = commands.add_parser("diagnose", help="judge a saved reply (.eml) without acting")
    diagnose.add_argument("file")
    diagnose.add_argument("--mail-from", help="the envelope sender, as if received over SMTP")
    diagnose.add_argument("--client-ip", help="the sending host's IP, as if it had connected")
    diagnose.add_argument("--helo", help="the sending host's HELO/EHLO name")
    diagnose.add_argument("--json", action="store_true")
    diagnose.set_defaults(run=cmd_diagnose)

    commands.add_parser("check-config", help="validate the config and reach every part").set_defaults(
        run=cmd_check_config
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        setup_logging(settings.log.level)
        return int(args.run(settings, args))
    except RcMtaError as exc:
        print(f"rc-mta: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, no traceback: the log has the details
        print(f"rc-mta: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
