"""Mailbox mode over Microsoft Graph, end to end: a real rc-mta process polls the Graph
stand-in (tests/graph_server.py), completes tasks from the replies it finds there and files
each message as configured — only after the action is committed."""

from __future__ import annotations

import asyncio
import email.policy
import json
import re
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import dkim
import pytest
from conftest import RcMta, free_port, instances_sharing, make_rc_mta, wait_until
from dnsserver import NsdServer
from graph_server import GraphServer, exchange_online_delivery
from mailclient import reply_message
from smtpsink import relay_outbound, running_relay
from webhook_receiver import WebhookReceiver

from rc_mta import smtp_replies as R
from rc_mta.config import MailboxConfig
from rc_mta.errors import TemporaryFailure
from rc_mta.http import Health
from rc_mta.mailbox._claims import CLAIMS_KEPT
from rc_mta.mailbox.graph import GraphConnection, GraphPoller
from rc_mta.pipeline import Decision, Inbound, Outcome, Pipeline, Recipient
from rc_mta.store import STALE_CLAIM_SECONDS, Store

AUTH_RESULTS = "mx.example.com; spf=pass smtp.mailfrom=alice@example.com; dmarc=pass header.from=example.com"


@pytest.fixture
def graph() -> Iterator[GraphServer]:
    server = GraphServer().start()
    yield server
    server.stop()


def mailbox_settings(graph: GraphServer, disposition: str = "move", **graph_overrides: str) -> dict[str, Any]:
    return {
        "source": "graph",
        "sync_interval": "1s",
        "startup_delay": 0,
        "disposition": disposition,
        "trusted_authserv_ids": ["mx.example.com"],
        "graph": {
            "tenant_id": graph.tenant_id,
            "client_id": graph.client_id,
            "client_secret": graph.client_secret,
            "user": graph.user,
            "base_url": graph.base_url,
            "token_url": graph.token_url,
        }
        | graph_overrides,
    }


@pytest.fixture
def rc_graph(tmp_path: Path, graph: GraphServer, dns_server: NsdServer) -> Iterator[RcMta]:
    """An rc-mta in Graph mailbox mode, not started yet: the test picks the disposition."""
    server = make_rc_mta(tmp_path)
    server.settings["mailbox"] = mailbox_settings(graph)
    server.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "2s"}
    yield server
    server.stop()


def reply(server: RcMta, task_id: str, body: str = "Looks good, ship it", *, forged: bool = False) -> bytes:
    """The owner's reply as the mailbox's MX stored it, with its Authentication-Results; a forged
    one comes from a domain in the test zones, so its DMARC lookup answers (and fails)."""
    request = server.cli_json("request", task_id)
    if forged:
        message = reply_message(request["complete_address"], body, sender="mallory@good.test")
    else:
        message = reply_message(request["complete_address"], body, headers={"Authentication-Results": AUTH_RESULTS})
    return message.as_bytes(policy=email.policy.SMTP)


def graph_metric(server: RcMta, name: str) -> float:
    """The value of rc-mta's ``name{source="graph"}`` sample on /metrics (0 if absent)."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf'^{re.escape(name)}\{{source="graph"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def synced_again(*servers: RcMta, rounds: int = 2) -> None:
    """Wait until each server finished ``rounds`` more mailbox syncs (so at least one more
    began after this call): what a later sync would do again has had its chance to show."""
    name = "rc_mta_poller_messages_per_cycle_count"
    targets = [(server, graph_metric(server, name) + rounds) for server in servers]
    wait_until(lambda: all(graph_metric(s, name) >= n for s, n in targets), what=f"{rounds} more syncs of each")


def completed(server: RcMta, *task_ids: str) -> bool:
    """All these tasks completed, read with one CLI call."""
    statuses = {t["id"]: t["status"] for t in server.cli_json("task", "list")}
    return all(statuses.get(t) == "completed" for t in task_ids)


def test_reply_completes_task_and_is_moved_to_processed(rc_graph: RcMta, graph: GraphServer) -> None:
    rc_graph.start()
    task_id = rc_graph.add_task()
    graph.add_message(reply(rc_graph, task_id))

    wait_until(lambda: completed(rc_graph, task_id), what="task completed")
    task = rc_graph.task(task_id)
    assert [(c["author"], c["text"]) for c in task["comments"]] == [("alice@example.com", "Looks good, ship it")]
    wait_until(lambda: len(graph.folder("Processed")) == 1, what="message moved to Processed")
    assert graph.folder("inbox") == []
    assert graph.count("GET", "/$value") == 1
    wait_until(lambda: "processed" in rc_graph.log_path.read_text(), what="log line")
    assert "moved to Processed" in rc_graph.log_path.read_text()


def test_forged_reply_is_moved_to_rejected_and_task_untouched(rc_graph: RcMta, graph: GraphServer) -> None:
    rc_graph.start()
    task_id = rc_graph.add_task()
    graph.add_message(reply(rc_graph, task_id, forged=True))

    wait_until(lambda: len(graph.folder("Rejected")) == 1, what="message moved to Rejected")
    assert graph.folder("Processed") == [] and graph.folder("inbox") == []
    task = rc_graph.task(task_id)
    assert task["status"] == "in_progress" and task["comments"] == []
    assert "rejected" in rc_graph.log_path.read_text()


def test_an_unclear_authenticated_reply_gets_one_notice_and_a_forged_one_none(
    rc_graph: RcMta, graph: GraphServer
) -> None:
    port = free_port()
    rc_graph.settings["outbound"].update(relay_outbound(port, "relay-secret"))
    rc_graph.write_config()
    unclear_task, forged_task = rc_graph.add_task("Unclear"), rc_graph.add_task("Forged", owner="alice@good.test")
    request = rc_graph.cli_json("request", unclear_task)
    unclear = reply_message(request["reply_to"], "Maybe next week", headers={"Authentication-Results": AUTH_RESULTS})
    with running_relay(port, "relay-secret") as relay:
        rc_graph.start()
        raw = unclear.as_bytes(policy=email.policy.SMTP)
        graph.add_messages([raw, reply(rc_graph, forged_task, "Maybe", forged=True), raw])  # the unclear one twice

        def told() -> list[tuple[str, list[str], email.message.EmailMessage]]:
            parsed = [(f, r, email.message_from_bytes(m, policy=email.policy.default)) for f, r, m in relay.received]
            return [(f, r, cast(Any, m)) for f, r, m in parsed if m["Auto-Submitted"] == "auto-replied"]

        wait_until(lambda: len(graph.folder("Rejected")) == 3, what="the three replies in Rejected")
        wait_until(told, what="a notice at the relay")
        synced_again(rc_graph)
        [(mail_from, rcpts, notice)] = told()
    assert mail_from == rc_graph.settings["outbound"]["from_address"] and rcpts == ["alice@example.com"]
    assert notice["In-Reply-To"] == unclear["Message-ID"]
    assert notice["Subject"] == "Your reply was not acted on: Unclear"  # the task, not the refused mail
    assert str(R.ACTION_UNCLEAR) in notice.get_content()
    assert notice["Reply-To"] == request["reply_to"]
    assert rc_graph.task(unclear_task)["status"] == rc_graph.task(forged_task)["status"] == "in_progress"
    assert "no notice (its From (good.test) is not authenticated)" in rc_graph.log_path.read_text()


def test_a_reply_over_max_message_size_is_moved_to_rejected_unread(rc_graph: RcMta, graph: GraphServer) -> None:
    """As SMTP refuses it at DATA: at most one byte past [inbound] max_message_size is read of
    a message's MIME, and a message over it is refused unread, its task untouched."""
    limit = 64 * 1024
    rc_graph.settings["inbound"]["max_message_size"] = limit
    rc_graph.start()
    task_id = rc_graph.add_task()
    padding = "".join(f"line {i} of what was quoted below the answer\n" for i in range(4000))  # ~180 KB
    graph.add_message(reply(rc_graph, task_id, f"Looks good, ship it\n\n{padding}"))

    wait_until(lambda: len(graph.folder("Rejected")) == 1, what="message moved to Rejected")
    task = rc_graph.task(task_id)
    assert task["status"] == "in_progress" and task["comments"] == []
    assert f"Message too big: replies are limited to {limit} bytes" in rc_graph.log_path.read_text()


def test_delete_disposition_deletes_after_completing(rc_graph: RcMta, graph: GraphServer) -> None:
    rc_graph.settings["mailbox"]["disposition"] = "delete"
    rc_graph.start()
    task_id = rc_graph.add_task()
    graph.add_message(reply(rc_graph, task_id))

    wait_until(lambda: completed(rc_graph, task_id), what="task completed")
    wait_until(lambda: graph.count("DELETE", "/messages/{id}") == 1, what="DELETE")
    assert graph.folder("inbox") == [] and graph.folder("Processed") == []


def test_a_move_whose_answer_was_lost_counts_as_filed(rc_graph: RcMta, graph: GraphServer) -> None:
    """Graph moved the message but the connection closed before its answer: the message is
    gone from the folder (a GET says 404), so it counts as filed at once, never moved again
    each round (404) with a growing back-off while new replies wait."""
    graph.lost_move_answers = 1
    first_reply_filed(rc_graph, graph, "its answer was lost")
    assert len(graph.folder("Processed")) == 1 and graph.folder("inbox") == []
    second_reply_acts_at_once(rc_graph, graph, processed=2)
    assert graph.count("POST", "/move") == 2  # the first, the second's: never the old id again


def test_a_reply_someone_filed_before_its_move_counts_as_filed(rc_graph: RcMta, graph: GraphServer) -> None:
    """A person deleted the reply after rc-mta read it and before it moved it: the move's 404
    names the message, not the folder (a GET says it is gone), so it counts as filed."""
    graph.taken_after_read = 1
    first_reply_filed(rc_graph, graph, "already gone")
    second_reply_acts_at_once(rc_graph, graph, processed=1)
    assert graph.count("POST", "/move") == 2  # the first (404), the second's


def first_reply_filed(rc_graph: RcMta, graph: GraphServer, said: str) -> None:
    """Start; a first reply completes its task and its filing is logged as ``said``."""
    rc_graph.start()
    first = rc_graph.add_task("first")
    graph.add_message(reply(rc_graph, first))
    wait_until(lambda: completed(rc_graph, first), what="first task completed")
    wait_until(lambda: said in rc_graph.log_path.read_text(), what=f"the first reply filed: {said}")


def second_reply_acts_at_once(rc_graph: RcMta, graph: GraphServer, processed: int) -> None:
    """A new reply is acted on and moved (``processed`` in the folder then) while the poller
    stays well: no failed round, healthy."""
    second = rc_graph.add_task("second")
    graph.add_message(reply(rc_graph, second))
    wait_until(lambda: completed(rc_graph, second), what="second task completed")
    wait_until(lambda: len(graph.folder("Processed")) == processed, what="second reply moved")
    synced_again(rc_graph)
    assert "reconnecting" not in rc_graph.log_path.read_text()
    assert graph_metric(rc_graph, "rc_mta_poller_errors_total") == 0
    with urllib.request.urlopen(rc_graph.http_url + "/healthz", timeout=5) as response:
        assert response.status == 200


def kept_reply(rc_graph: RcMta, graph: GraphServer) -> str:
    """With disposition "keep": a reply that completed its task and was flagged; its id."""
    rc_graph.settings["mailbox"]["disposition"] = "keep"
    rc_graph.start()
    task_id = rc_graph.add_task()
    message_id = graph.add_message(reply(rc_graph, task_id))
    wait_until(lambda: completed(rc_graph, task_id), what="task completed")
    wait_until(lambda: [m.flag for m in graph.folder("inbox")] == ["flagged"], what="message flagged")
    return message_id


def test_keep_disposition_flags_and_handles_once(rc_graph: RcMta, graph: GraphServer) -> None:
    message_id = kept_reply(rc_graph, graph)
    rounds = graph.count("GET", "/delta")
    wait_until(lambda: graph.count("GET", "/delta") >= rounds + 3, what="three more rounds")
    assert [m.id for m in graph.folder("inbox")] == [message_id]
    assert graph.count("GET", "/$value") == 1  # the flag change shows in the delta, but it is not read again


def test_a_kept_reply_is_not_read_again_once_its_claim_is_forgotten(rc_graph: RcMta, graph: GraphServer) -> None:
    """Disposition "keep": the flag is what says a message was handled. A week on, its claim is
    pruned, and after a restart (a full delta) the listing shows it again: flagged, it is left
    alone, never read again nor refused to its owner (whose reply did complete the task)."""
    message_id = kept_reply(rc_graph, graph)
    rc_graph.stop()
    with sqlite3.connect(rc_graph.workdir / "rc-mta.db") as db:  # a week passes: prune forgets the claim
        db.execute("UPDATE mailbox_claims SET claimed_at = claimed_at - ?", (CLAIMS_KEPT + 86400,))

    rc_graph.start()
    synced_again(rc_graph, rounds=3)
    assert graph.count("GET", "/$value") == 1  # read once, before the restart
    assert [(m.id, m.flag) for m in graph.folder("inbox")] == [(message_id, "flagged")]
    assert "rejected" not in rc_graph.log_path.read_text()


def test_a_draft_in_the_folder_is_never_read_acted_on_or_filed(rc_graph: RcMta, graph: GraphServer) -> None:
    """A draft was never received: Graph's POST /messages with MIME makes one of any header
    (Authentication-Results included), and a client saves the owner's unsent reply as one.
    One holding the owner's stamped "Approved" stays where it is, unread, in a delta and in a
    full listing alike; replies delivered beside it act."""
    rc_graph.write_config()  # the CLI needs it; the server starts once the mailbox is full
    drafted, answered, later = (rc_graph.add_task(title) for title in ("Drafted", "Answered", "Later"))
    draft_id = graph.add_message(reply(rc_graph, drafted, "Approved"), draft=True)
    graph.add_message(reply(rc_graph, answered))
    rc_graph.start()
    wait_until(lambda: completed(rc_graph, answered), what="the reply's task completed")

    # The sync state is lost: a full listing, then a fresh delta, list the draft again.
    graph.expire_delta_links()
    graph.add_message(reply(rc_graph, later))
    wait_until(lambda: completed(rc_graph, later), what="the later reply's task completed")
    wait_until(lambda: len(graph.folder("Processed")) >= 2, what="both replies moved")
    synced_again(rc_graph)

    task = rc_graph.task(drafted)
    assert task["status"] == "in_progress" and task["comments"] == []
    assert [(m.id, m.draft) for m in graph.folder("inbox")] == [(draft_id, True)]
    assert graph.count("GET", "/$value") == 2  # the replies', never the draft's
    assert graph.count("GET", "/mailFolders/{folder}/messages") >= 1
    assert rc_graph.log_path.read_text().count(f"graph message {draft_id} draft: left alone") == 1


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_with_retry_after_is_honoured(rc_graph: RcMta, graph: GraphServer, status: int) -> None:
    rc_graph.start()
    wait_until(lambda: graph.count("GET", "/delta") >= 1, what="first sync")
    task_id = rc_graph.add_task()
    graph.throttle(3, status=status, retry_after="1")
    started = time.monotonic()
    graph.add_message(reply(rc_graph, task_id))

    wait_until(lambda: len(graph.folder("Processed")) == 1, what="message processed")
    assert time.monotonic() - started >= 2.5  # three answers of Retry-After: 1, each waited out
    assert graph.throttled == 3
    assert completed(rc_graph, task_id)
    assert graph.count("GET", "/$value") >= 1
    assert rc_graph.task(task_id)["comments"][0]["text"] == "Looks good, ship it"
    log = rc_graph.log_path.read_text()
    assert "throttled" in log and "reconnecting" not in log  # waited within the call, no error round
    assert log.count("graph message") == 1


def test_listing_follows_pages_and_recovers_from_a_lost_delta(rc_graph: RcMta, graph: GraphServer) -> None:
    graph.page_size = 2
    rc_graph.write_config()  # the CLI needs it; the server starts once the mailbox is full
    tasks = [rc_graph.add_task(title=f"Task {i}") for i in range(5)]
    graph.add_messages([reply(rc_graph, task_id) for task_id in tasks])
    rc_graph.start()

    wait_until(lambda: completed(rc_graph, *tasks), what="five tasks completed")
    wait_until(lambda: len(graph.folder("Processed")) == 5, what="five messages moved")
    assert graph.count("GET", "/delta") >= 3  # 5 messages, 2 a page

    # The sync state is lost (410 Gone): the poller lists the folder in full, page by page.
    more = [rc_graph.add_task(title=f"More {i}") for i in range(3)]
    replies = [reply(rc_graph, task_id) for task_id in more]
    graph.expire_delta_links()
    graph.add_messages(replies)
    wait_until(lambda: completed(rc_graph, *more), what="three more tasks completed")
    wait_until(lambda: len(graph.folder("Processed")) == 8, what="eight messages moved")
    assert graph.count("GET", "/mailFolders/{folder}/messages") >= 2
    assert graph.count("GET", "/$value") == 8


def test_expired_and_revoked_tokens_are_replaced(rc_graph: RcMta, graph: GraphServer) -> None:
    graph.token_lifetime = 62  # our provider renews with < 60 s left: every couple of seconds
    rc_graph.start()
    wait_until(lambda: graph.tokens_issued >= 2, what="a renewed token")

    assert graph.unauthorized == 0  # renewed before expiry, never refused

    graph.token_lifetime = 3600
    graph.revoke_tokens()  # the next Graph call answers 401: invalidate and fetch a new one
    issued = graph.tokens_issued
    task_id = rc_graph.add_task()
    graph.add_message(reply(rc_graph, task_id))
    wait_until(lambda: completed(rc_graph, task_id), what="task completed")
    assert graph.tokens_issued > issued and graph.unauthorized >= 1
    assert set(graph.grants) == {"client_credentials"}


def test_wrong_client_secret_processes_nothing_and_says_why(rc_graph: RcMta, graph: GraphServer) -> None:
    rc_graph.settings["mailbox"]["graph"]["client_secret"] = "not-the-secret"
    rc_graph.start()
    task_id = rc_graph.add_task()
    graph.add_message(reply(rc_graph, task_id))

    wait_until(lambda: "invalid_client" in rc_graph.log_path.read_text(), what="the reason in the log")
    log = rc_graph.log_path.read_text()
    assert "not-the-secret" not in log
    assert graph.count("GET", "") == 0  # no Graph call without a token
    assert len(graph.folder("inbox")) == 1
    assert rc_graph.task(task_id)["status"] == "in_progress"
    with urllib.request.urlopen(rc_graph.http_url + "/healthz") as response:  # not stale yet: limit 63 s
        assert response.status == 200


# -- Exchange Online's own stamps (README, "Exchange Online") ---------------------------------

CORP_KEY = (Path(__file__).parent / "keys" / "good-sel2048.pem").read_bytes()  # corp.test's selector "sel"
# Exchange Online's Authentication-Results for corp.test's own server (127.0.0.2, its SPF):
# no authserv-id, or the "mx.microsoft.com 1;" some tenants now get in front.
EXO_PASS = (
    "spf=pass (sender IP is 127.0.0.2) smtp.mailfrom=corp.test; dkim=pass (signature was verified)"
    " header.d=corp.test;dmarc=pass action=none header.from=corp.test;compauth=pass reason=100"
)


def trusting_exchange_online(server: RcMta, *tenant_domains: str, trust: bool = True) -> None:
    graph_settings = server.settings["mailbox"]["graph"]
    graph_settings.pop("tenant_domains", None)
    graph_settings["trust_exchange_online"] = trust
    if tenant_domains:
        graph_settings["tenant_domains"] = list(tenant_domains)


def corp_reply(server: RcMta, task_id: str, *, sender: str = "alice@corp.test", **headers: str) -> bytes:
    request = server.cli_json("request", task_id)
    message = reply_message(request["complete_address"], sender=sender, headers=headers)
    return message.as_bytes(policy=email.policy.SMTP)


def signed(raw: bytes) -> bytes:
    """Signed by corp.test's server, as it left for the Internet."""
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    return bytes(dkim.sign(raw, b"sel", b"corp.test", CORP_KEY, include_headers=headers)) + raw


def rejected_untouched(server: RcMta, graph: GraphServer, task_id: str, count: int = 1) -> None:
    wait_until(lambda: len(graph.folder("Rejected")) == count, what=f"{count} message(s) in Rejected")
    task = server.task(task_id)
    assert task["status"] == "in_progress" and task["comments"] == []


def test_a_colleagues_reply_acts_once_exchange_online_is_trusted_for_the_tenant(
    rc_graph: RcMta, graph: GraphServer
) -> None:
    """Mail inside a Microsoft 365 tenant is neither DKIM-signed nor SPF-checked: as today,
    nothing authenticates it; with trust_exchange_online, Exchange's mark (AuthAs: Internal)
    on a From in tenant_domains does."""
    trusting_exchange_online(rc_graph, trust=False)
    rc_graph.start()
    before = rc_graph.add_task("Before", owner="alice@corp.test")
    graph.deliver(corp_reply(rc_graph, before), internal=True)
    rejected_untouched(rc_graph, graph, before)
    rc_graph.stop()

    trusting_exchange_online(rc_graph, "corp.test")
    rc_graph.start()
    task_id = rc_graph.add_task(owner="alice@corp.test")
    graph.deliver(corp_reply(rc_graph, task_id), internal=True)

    wait_until(lambda: completed(rc_graph, task_id), what="task completed")
    assert [c["author"] for c in rc_graph.task(task_id)["comments"]] == ["alice@corp.test"]
    assert len(graph.folder("Processed")) == 1


def test_a_colleagues_reply_from_a_domain_outside_tenant_domains_does_not_act(
    rc_graph: RcMta, graph: GraphServer
) -> None:
    trusting_exchange_online(rc_graph, "example.com")
    rc_graph.start()
    task_id = rc_graph.add_task(owner="alice@corp.test")
    graph.deliver(corp_reply(rc_graph, task_id), internal=True)
    rejected_untouched(rc_graph, graph, task_id)


@pytest.mark.parametrize("stamp", [EXO_PASS, f"mx.microsoft.com 1; {EXO_PASS}"], ids=["no-authserv-id", "mx"])
def test_an_outside_reply_acts_on_exchange_onlines_own_stamp_once_trusted(
    rc_graph: RcMta, graph: GraphServer, stamp: str
) -> None:
    """A partner's reply, signed by corp.test, whose signature Exchange's MIME broke: as
    today, no configured authserv-id can name Exchange's field, and nothing acts; trusted, its
    SPF pass for corp.test (aligned, and the reply addressed to the request) does."""
    trusting_exchange_online(rc_graph, trust=False)
    rc_graph.start()
    exchange = {"authentication_results": stamp, "client_ip": "127.0.0.2", "helo": "mx.corp.test"}
    before = rc_graph.add_task("Before", owner="alice@corp.test")
    graph.deliver(signed(corp_reply(rc_graph, before)), rewrites_body=True, **exchange)
    rejected_untouched(rc_graph, graph, before)
    rc_graph.stop()

    trusting_exchange_online(rc_graph)
    rc_graph.start()
    task_id = rc_graph.add_task(owner="alice@corp.test")
    graph.deliver(signed(corp_reply(rc_graph, task_id)), rewrites_body=True, **exchange)

    wait_until(lambda: completed(rc_graph, task_id), what="task completed")
    assert [c["text"] for c in rc_graph.task(task_id)["comments"]] == ["Looks good, ship it"]


@pytest.mark.parametrize("own_mark", [True, False], ids=["exchange-marks-it-anonymous", "no-mark-of-exchange"])
def test_an_outsiders_forged_internal_mark_does_not_act(rc_graph: RcMta, graph: GraphServer, own_mark: bool) -> None:
    """Mallory writes ``X-MS-Exchange-Organization-AuthAs: Internal`` and Alice's From into
    her message. Exchange's header firewall removes such a field; here it is left in, below
    Exchange's own fields, and still counts for nothing: beside Exchange's own mark there are
    two, and without it Exchange's SPF verdict shows the message came in from outside."""
    trusting_exchange_online(rc_graph, "corp.test")
    rc_graph.start()
    task_id = rc_graph.add_task(owner="alice@corp.test")
    forged = corp_reply(
        rc_graph,
        task_id,
        **{
            "X-MS-Exchange-Organization-AuthAs": "Internal",
            "X-MS-Exchange-Organization-AuthSource": "DM4PR12MB6448.namprd12.prod.outlook.com",
        },
    )
    stamp = (
        "spf=fail (sender IP is 192.0.2.66) smtp.mailfrom=evil.test; dkim=none (message not signed)"
        " header.d=none;dmarc=fail action=none header.from=corp.test;compauth=fail reason=000"
    )
    exchange = {"client_ip": "192.0.2.66", "helo": "mail.evil.test", "authentication_results": stamp}
    graph.deliver(forged, header_firewall=False, own_mark=own_mark, **exchange)

    rejected_untouched(rc_graph, graph, task_id)
    assert graph.folder("Processed") == []


def test_diagnose_as_mailbox_explains_exchange_onlines_word_as_the_poller_takes_it(
    rc_graph: RcMta, graph: GraphServer, tmp_path: Path
) -> None:
    """One path: ``diagnose --as-mailbox`` reads Exchange's mark as the Graph poller does, and
    says why a second mark, a rule's forward or a delegate's Send on Behalf counts for nothing."""
    trusting_exchange_online(rc_graph, "corp.test")
    rc_graph.write_config()
    task_id = rc_graph.add_task(owner="alice@corp.test")
    genuine = exchange_online_delivery(corp_reply(rc_graph, task_id), internal=True)
    forwarded = exchange_online_delivery(
        corp_reply(rc_graph, task_id, **{"X-MS-Exchange-Organization-AutoForwarded": "true"}), internal=True
    )
    doubled = genuine.replace(b"\r\n\r\n", b"\r\nX-MS-Exchange-Organization-AuthAs: Internal\r\n\r\n", 1)
    on_behalf = exchange_online_delivery(corp_reply(rc_graph, task_id, Sender="Bob <bob@corp.test>"), internal=True)

    def diagnosed(raw: bytes) -> dict[str, Any]:
        saved = tmp_path / "reply.eml"
        saved.write_bytes(raw)
        report = json.loads(rc_graph.cli("diagnose", "--json", "--as-mailbox", str(saved)).stdout)
        assert "Exchange Online" in report["assumed"]
        return cast(dict[str, Any], report["decisions"][0])

    decision = diagnosed(genuine)
    assert decision["would"] == "complete", decision
    assert decision["checks"]["exchange_online"]["result"] == "pass"
    assert decision["checks"]["binding"] == {"result": "pass", "via": "exchange-online corp.test"}
    # On mail inside the tenant Exchange's own note (dmarc=none) is not read: its place proves
    # nothing there, as its author could have written one on top. corp.test's DMARC (p=reject)
    # is evaluated, and passes on Exchange's mark: our Authentication-Results says so.
    assert 'dmarc=pass reason="via Exchange Online: sent by a user of the tenant"' in decision["authentication_results"]
    # So too without the note.
    unstamped = re.sub(rb"Authentication-Results: dkim=none[^\r]*\r\n [^\r]*\r\n", b"", genuine)
    decision = diagnosed(unstamped)
    assert decision["would"] == "complete", decision
    assert 'dmarc=pass reason="via Exchange Online: sent by a user of the tenant"' in decision["authentication_results"]
    refused = (
        (doubled, "fail", "2 X-MS-Exchange-Organization-AuthAs"),
        (forwarded, "none", "auto-forwarded"),
        (on_behalf, "none", "on behalf of its From by bob@corp.test"),
    )
    for raw, result, why in refused:
        decision = diagnosed(raw)
        assert decision["would"] == "refuse", decision
        assert decision["checks"]["exchange_online"]["result"] == result
        assert why in decision["checks"]["exchange_online"]["reason"]
    assert rc_graph.task(task_id)["status"] == "in_progress"


# -- in-process: staleness and retry, where a subprocess would be too slow or too coarse ----


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """The store the pollers claim messages in (a real one: SQLite)."""
    made = Store(f"sqlite:///{tmp_path / 'claims.db'}")
    made.create_schema()
    yield made
    made.close()


class StubPipeline:
    """Answers from a script, so a test can make the pipeline say "retry"; the claims on
    messages go to a real store."""

    message_limit = 1024 * 1024  # [inbound] max_message_size's default: the poller reads no more

    def __init__(self, dispositions: list[str], store: Store) -> None:
        self.dispositions = dispositions
        self.store = store
        self.seen: list[bytes] = []

    async def process(self, inbound: Inbound, *, act: bool) -> list[Decision]:
        self.seen.append(inbound.raw)
        disposition = self.dispositions.pop(0) if self.dispositions else "processed"
        reply, outcome = {
            "processed": (R.OK, Outcome.COMPLETE),
            "rejected": (R.NO_TOKEN, Outcome.REFUSE),
            "retry": (R.BACKEND_UNAVAILABLE, Outcome.RETRY),
        }[disposition]
        return [Decision(reply, outcome, Recipient("rc@stub"), message_id="<stub@example.com>")]


def poller(
    graph: GraphServer, pipeline: StubPipeline, clock: Callable[[], float] = time.time, **graph_overrides: str
) -> GraphPoller:
    config = MailboxConfig.model_validate(mailbox_settings(graph, **graph_overrides))
    return GraphPoller(config, cast(Pipeline, pipeline), clock=clock)


async def run_for(target: GraphPoller, seconds: float) -> None:
    task = asyncio.create_task(target.run())
    await asyncio.sleep(seconds)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def test_healthz_fails_once_a_poller_that_cannot_sign_in_is_stale(graph: GraphServer, store: Store) -> None:
    now = [time.time()]
    bad = poller(graph, StubPipeline([], store), clock=lambda: now[0], client_secret="wrong")
    health = Health(liveness={"graph": bad.staleness})

    asyncio.run(run_for(bad, 1.5))
    assert bad.watcher.consecutive_failures >= 1 and bad.watcher.last_sync is None
    assert health.live()[0]  # within 3 × sync_interval + 60 s of start

    now[0] += 3 * 1 + 60 + 1
    ok, report = health.live()
    assert not ok and report["graph"] == {"ok": False, "age_seconds": 64.0, "limit_seconds": 63.0}

    good = poller(graph, StubPipeline([], store), clock=lambda: now[0])
    asyncio.run(run_for(good, 0.5))
    assert good.staleness()[0] < 1 and good.watcher.last_sync is not None


def test_retry_is_seen_again_although_the_delta_does_not_list_it(graph: GraphServer, store: Store) -> None:
    pipeline = StubPipeline(["retry", "retry"], store)
    graph.add_message(b"From: alice@example.com\r\nSubject: hi\r\n\r\nyes\r\n")
    target = poller(graph, pipeline)

    asyncio.run(run_for(target, 3.5))
    assert len(pipeline.seen) == 3  # retry, retry, processed: once per round until it sticks
    assert graph.folder("inbox") == [] and len(graph.folder("Processed")) == 1
    assert target.state.pending_ids == set()
    assert graph.count("GET", "/delta") >= 3 and graph.count("GET", "/mailFolders/{folder}/messages") == 0


def test_a_round_cut_short_leaves_its_messages_pending_for_the_next(graph: GraphServer, store: Store) -> None:
    pipeline = StubPipeline([], store)
    graph.add_message(b"From: alice@example.com\r\nSubject: hi\r\n\r\nyes\r\n")
    graph.throttle(6, status=503, retry_after="0", route="/$value")  # more than the poller waits out
    target = poller(graph, pipeline)

    asyncio.run(run_for(target, 2.5))  # round 1 fails, the Watcher reconnects after 1 s
    assert graph.throttled == 6 and target.watcher.consecutive_failures == 0
    assert len(pipeline.seen) == 1 and len(graph.folder("Processed")) == 1


def test_refresh_token_flow_when_configured(graph: GraphServer, store: Store) -> None:
    graph.refresh_tokens = {"rt-1"}
    pipeline = StubPipeline([], store)
    graph.add_message(b"From: alice@example.com\r\nSubject: hi\r\n\r\nyes\r\n")
    settings = mailbox_settings(graph) | {"oauth2": {"refresh_token": "rt-1"}}
    target = GraphPoller(MailboxConfig.model_validate(settings), cast(Pipeline, pipeline))

    asyncio.run(run_for(target, 1.5))
    assert graph.grants and set(graph.grants) == {"refresh_token"}
    assert len(pipeline.seen) == 1 and len(graph.folder("Processed")) == 1


# -- several instances on one mailbox ------------------------------------------------------


def test_two_instances_polling_one_mailbox_read_act_on_and_file_each_reply_once(
    tmp_path: Path, graph: GraphServer, dns_server: NsdServer, pg_url: str
) -> None:
    """Two rc-mta processes share one PostgreSQL store and poll the same inbox every second:
    each reply is read once (the other instance skips it unread), reaches the task backend
    once and is moved to Processed once, and neither instance trips over the other."""
    receiver = WebhookReceiver(delay=0.5).start()  # a slow backend: the other poller has time to look
    instances = instances_sharing(tmp_path, pg_url, receiver.url, receiver.secret)
    a, b = instances
    try:
        for server in instances:
            server.settings["mailbox"] = mailbox_settings(graph)
            server.settings["dns"] = {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "2s"}
            server.workdir.mkdir(exist_ok=True)
            server.write_config()
        tasks = [f"T-{i}" for i in range(8)]
        replies = []
        for task_id in tasks:
            address = a.cli_json("request", task_id, "--owner", "alice@example.com")["complete_address"]
            message = reply_message(address, f"Ship {task_id}", headers={"Authentication-Results": AUTH_RESULTS})
            replies.append(message.as_bytes(policy=email.policy.SMTP))
        graph.add_messages(replies[:4])  # waiting before either starts: both list them in their first sync
        a.start()
        b.start()
        for raw in replies[4:]:  # and the rest one by one while both poll
            graph.add_message(raw)

        wait_until(lambda: len(graph.folder("Processed")) >= len(replies), timeout=60, what="every reply filed")
        synced_again(a, b)  # a double read, action or filing would show by then
    finally:
        for server in instances:
            server.stop()
        receiver.stop()

    assert sorted(p["task_id"] for p in receiver.payloads) == sorted(tasks)  # each acted on once
    assert graph.count("GET", "/$value") == len(replies)  # each read by one instance only
    assert graph.count("POST", "/move") == len(replies)  # and filed once
    assert len(graph.folder("Processed")) == len(replies) and graph.folder("inbox") == []
    for server in (a, b):
        log = server.log_path.read_text(errors="replace")
        assert "graph message" in log  # both really handled replies
        assert "Traceback" not in log and " ERROR " not in log and "reconnecting" not in log, log[-3000:]


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The store two pollers share: SQLite (one host) or PostgreSQL (several)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    made = Store(url)
    made.create_schema()
    yield made
    made.close()


class DyingPipeline(StubPipeline):
    """An instance that took a message and then hung (or was killed) in the middle of it."""

    async def process(self, inbound: Inbound, *, act: bool) -> list[Decision]:
        self.seen.append(inbound.raw)
        await asyncio.Event().wait()  # until cancelled: nothing after this runs
        raise AssertionError("unreachable")


def test_a_message_another_instance_holds_is_skipped_until_its_claim_is_stale(
    graph: GraphServer, shared_store: Store
) -> None:
    message_id = graph.add_message(b"From: alice@example.com\r\nSubject: hi\r\n\r\nyes\r\n")
    dying = DyingPipeline([], shared_store)
    asyncio.run(run_for(poller(graph, dying), 1.5))
    assert len(dying.seen) == 1  # it claimed and read the message, then died mid-action

    later = [0.0]
    survivor = StubPipeline([], shared_store)
    other = poller(graph, survivor, clock=lambda: time.time() + later[0])
    asyncio.run(run_for(other, 2.5))
    assert survivor.seen == []  # a live claim of another instance: skipped, unread
    assert [m.id for m in graph.folder("inbox")] == [message_id]
    assert other.state.pending_ids == {message_id}  # but looked at again each round

    later[0] = STALE_CLAIM_SECONDS + 1  # the dead instance's claim has gone stale
    asyncio.run(run_for(other, 1.5))
    assert len(survivor.seen) == 1  # taken over: handled once
    assert graph.folder("inbox") == [] and len(graph.folder("Processed")) == 1
    assert other.state.pending_ids == set()


class _FixedToken:
    """The token provider's two calls; the page server below checks no token."""

    async def access_token(self) -> str:
        return "token"

    def invalidate(self) -> None:
        pass


def _listing_page(size: int) -> bytes:
    """A listing page of ``size`` bytes, as Graph writes one (ids and isDraft)."""
    item = b'{"id":"AAMkAGI2TG93AAA=","isDraft":false},'
    return b'{"value":[' + (item * ((size - 20) // len(item)))[:-1] + b"]}"


def test_a_listing_page_past_a_few_mib_is_no_answer() -> None:
    """A page of 50 ids is some 10 KiB; one of 64 MiB was parsed on the event loop (1.3 s
    stalled). A JSON answer past 2 MiB is now no answer (a WARNING, the round retried)."""
    from aiohttp import web

    pages = {"/small": _listing_page(512 * 1024), "/large": _listing_page(3 * 1024 * 1024)}

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=pages[request.path], content_type="application/json")

    async def scenario() -> tuple[int, str]:
        app = web.Application()
        app.router.add_get("/{name}", page)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                connection = GraphConnection.__new__(GraphConnection)  # _json needs only these two
                connection.session, connection.tokens = session, cast(Any, _FixedToken())
                small = await connection._json("GET", f"http://127.0.0.1:{port}/small")
                try:
                    await connection._json("GET", f"http://127.0.0.1:{port}/large")
                except TemporaryFailure as exc:  # as any Graph trouble: the round is retried
                    return len(small["value"]), str(exc)
                return len(small["value"]), "parsed"
        finally:
            await runner.cleanup()

    listed, large = asyncio.run(scenario())
    assert listed > 10_000
    assert large == "Graph GET /large: AnswerTooLarge: HTTP 200 answer over 2097152 bytes"
