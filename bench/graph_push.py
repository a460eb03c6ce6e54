"""Graph mode with change notifications: reply-to-done latency against the Graph stand-in.

Why: polling Graph every ``sync_interval`` (60 s here, as mail_room does) makes a reply wait
30 s on average; a change notification should wake the delta poll at once. The goal (issue
18): a reply is acted on within 5 s of landing in the mailbox, polling still at 60 s.

What: start NSD and the Graph stand-in (the tests' own, from tests/), run rc-mta in Graph mode
with ``sync_interval`` 60 s and ``[mailbox.graph.push]`` pointing at its own HTTP listener,
wait until it has subscribed, then drop the prepared replies into the stand-in's inbox one at
a time; the stand-in POSTs a notification for each, as Graph does. Each is timed from its
arrival in the mailbox until its task is completed in the store (polled every 10 ms, same
SQLite file). With ``--baseline N``, N more replies go through the same rc-mta without
notifications (the stand-in loses them), for the polling figure to compare.

    python bench/graph_push.py [--replies N] [--gap S] [--baseline N] [--json]

With ``--json`` the last line is one JSON object: ``push_p50_ms``, ``push_p99_ms``,
``push_max_ms``, ``goal_met``, and ``poll_p50_ms``, ``poll_max_ms`` with ``--baseline``.
Exit status 1 when a task is left incomplete, 2 when NSD is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import make_rc_mta  # type: ignore[import-not-found]
from dns_fixtures import free_udp_tcp_port, stop_nsd  # type: ignore[import-not-found]
from dnsserver import NsdServer  # type: ignore[import-not-found]
from graph_server import GraphServer  # type: ignore[import-not-found]
from imap import Reply, completed, finite, percentile, prepare, wait_until
from test_graph_poller import mailbox_settings  # type: ignore[import-not-found]

from rc_mta.app import Service
from rc_mta.config import load_settings

GOAL_MS = 5000.0
SYNC_INTERVAL = "60s"
TASK_TIMEOUT_S = 90.0  # past the 60 s poll: a reply whose notification was lost still completes


def measure(graph: Any, service: Service, replies: Sequence[Reply], gap: float, *, notify: bool) -> list[float]:
    """Latency (ms) from each reply's arrival in the mailbox to its task completed."""
    latencies = []
    for i, reply in enumerate(replies):
        graph.add_message(reply.data, notify=notify)
        arrived = time.perf_counter()
        wait_until(functools.partial(completed, service, reply.task_id), TASK_TIMEOUT_S, f"reply {i}")
        latencies.append((time.perf_counter() - arrived) * 1000)
        time.sleep(gap)
    return latencies


def report(push: Sequence[float], poll: Sequence[float], gap: float, as_json: bool) -> None:
    p50, p99 = percentile(push, 50), percentile(push, 99)
    worst = max(push) if push else math.nan
    goal_met = worst <= GOAL_MS
    print(f"\nGraph push: {len(push)} replies, {gap:.1f}s apart; sync_interval {SYNC_INTERVAL}")
    print(f"  in mailbox -> task completed  p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   max {worst:8.1f} ms")
    print(f"  goal every reply <= {GOAL_MS / 1000:.0f} s: {'met' if goal_met else 'NOT met'}")
    figures: dict[str, Any] = {
        "push_p50_ms": finite(p50, 1),
        "push_p99_ms": finite(p99, 1),
        "push_max_ms": finite(worst, 1),
        "goal_met": goal_met,
    }
    if poll:
        print(f"Polling only (notifications lost): {len(poll)} replies")
        print(f"  in mailbox -> task completed  p50 {percentile(poll, 50):8.1f} ms   max {max(poll):8.1f} ms")
        figures |= {"poll_p50_ms": finite(percentile(poll, 50), 1), "poll_max_ms": finite(max(poll), 1)}
    if as_json:
        print(json.dumps(figures))


def run(replies: int, baseline: int, gap: float, as_json: bool) -> int:
    if shutil.which("nsd") is None:
        print("needs NSD (nsd)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rc-mta-bench-graph-") as tmp:
        workdir = Path(tmp)
        (workdir / "nsd").mkdir()
        nsd: Any = NsdServer(workdir / "nsd", free_udp_tcp_port())
        graph: Any = GraphServer()
        rc: Any = None
        service: Service | None = None
        try:
            nsd.start()
            graph.start()
            rc = make_rc_mta(workdir)
            rc.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": nsd.port, "timeout": "2s"}
            rc.settings["checks"] = {"dmarc": {"policy": "tag"}}
            # The tests' Graph settings (trusting TRUSTED_MX's stamps), polling at 60 s, push on.
            mailbox = mailbox_settings(graph) | {"sync_interval": SYNC_INTERVAL}
            mailbox["graph"]["push"] = {
                "notification_url": rc.http_url + "/graph/notifications",
                "client_state": "bench-client-state-0123456789",
            }
            rc.settings["mailbox"] = mailbox
            rc.write_config()
            service = Service.open(load_settings(str(rc.config_path)))  # in-process: same store and key
            print(f"preparing {replies + baseline} tasks and requests ...", file=sys.stderr)
            push_replies = asyncio.run(prepare(service, replies, "Push"))
            poll_replies = asyncio.run(prepare(service, baseline, "Poll"))
            rc.start()
            wait_until(lambda: bool(graph.subscriptions()), 30.0, "rc-mta to subscribe", interval=0.1)
            print(f"push: {replies} replies ...", file=sys.stderr)
            push = measure(graph, service, push_replies, gap, notify=True)
            print(f"polling only: {baseline} replies (up to {SYNC_INTERVAL} each) ...", file=sys.stderr)
            poll = measure(graph, service, poll_replies, gap, notify=False)
        except (RuntimeError, TimeoutError) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            if rc is not None:
                print("\n".join(rc.log_path.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
            return 1
        finally:
            if rc is not None:
                rc.stop()
            if service is not None:
                service.close()
            graph.stop()
            stop_nsd(nsd)
    report(push, poll, gap, as_json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replies", type=int, default=30, help="replies announced by Graph (default 30)")
    parser.add_argument("--baseline", type=int, default=0, help="replies left to the 60 s poll (default 0)")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between replies (default 0.3)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object, last line")
    args = parser.parse_args(argv)
    if args.replies < 1 or args.baseline < 0 or args.gap < 0:
        parser.error("--replies must be at least 1, --baseline and --gap not negative")
    return run(args.replies, args.baseline, args.gap, args.json)


if __name__ == "__main__":
    sys.exit(main())
