"""One message can't stall the service: what would cost more to read than any reply does is
refused before a parser runs, a long References is read only as far as needed, and reading
runs in a small pool of its own whose full queue answers 451 at once.

Real SMTP over loopback to rc-mta as a subprocess, with max_message_size 1 MiB; the hostile
messages are tests/hostile_messages.py's, each as large as the server accepts.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import RcMta, make_rc_mta, wait_until
from hostile_messages import hostile
from hypothesis import given, settings
from hypothesis import strategies as st
from mailclient import SmtpOutcome, reply_message, send_smtp

from rc_mta import smtp_replies as R
from rc_mta.budget import (
    DEFAULT_LIMITS,
    INLINE_BYTES,
    INLINE_WHITESPACE_COST,
    RUN_STEPS,
    Cost,
    HeavyWork,
    check_budget,
    reader_view,
    relaxed_body_cost,
)
from rc_mta.errors import MessageRefused, ReaderBusy
from rc_mta.pipeline import _return_path
from rc_mta.rawmessage import canonical_message, measured_message

if TYPE_CHECKING:
    from rc_mta.app import Service

MIB = 1024 * 1024

# What each hostile shape is refused with (it is refused before any parser runs).
REFUSED = {
    "deep_mime": R.MESSAGE_TOO_COMPLEX,
    "many_parts": R.MESSAGE_TOO_COMPLEX,
    "rfc2231": R.HEADER_TOO_BIG,
    "mime_parameters": R.HEADER_TOO_BIG,
    "many_headers": R.HEADER_TOO_BIG,
    "from_comments": R.HEADER_TOO_BIG,
}


@pytest.fixture(scope="module")
def big_rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcMta]:
    """rc-mta accepting messages of up to 1 MiB."""
    server = make_rc_mta(tmp_path_factory.mktemp("rc-mta-budget"), inbound={"max_message_size": MIB})
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_a_message_built_to_be_expensive_to_read_gets_its_5xx(big_rc: RcMta, kind: str) -> None:
    task_id = big_rc.add_task()
    to = big_rc.request(task_id)["complete_address"]

    outcome = send_smtp(big_rc.smtp_port, hostile(kind, MIB, to), to)

    expected = REFUSED[kind]
    assert (outcome.code, outcome.enhanced) == (expected.code, expected.enhanced), outcome
    assert big_rc.task(task_id)["status"] == "in_progress"


def test_a_reply_in_a_thread_of_thousands_of_messages_finds_its_request(big_rc: RcMta) -> None:
    task_id = big_rc.add_task()
    request = big_rc.request(task_id)
    bare = "rc@" + request["reply_to"].split("@", 1)[1]
    # The request started the thread; thousands of messages followed it.
    thread = [request["message_id"], *(f"<{i}.thread@example.com>" for i in range(8000))]
    message = (
        f"From: Alice <alice@example.com>\r\nTo: {bare}\r\nSubject: Re: Approve deploy to prod\r\n"
        "Message-ID: <long-thread@example.com>\r\nIn-Reply-To: <7999.thread@example.com>\r\n"
        "References: " + "\r\n ".join(thread) + "\r\nContent-Type: text/plain\r\n\r\nApproved\r\n"
    ).encode()

    outcome = send_smtp(big_rc.smtp_port, message, bare)

    assert outcome.code == 250, outcome
    assert big_rc.task(task_id)["status"] == "completed"


def test_a_genuine_reply_is_accepted_while_eight_hostile_messages_are_in_flight(big_rc: RcMta) -> None:
    hostile_to = big_rc.request(big_rc.add_task())["complete_address"]
    task_id = big_rc.add_task()
    to = big_rc.request(task_id)["complete_address"]
    kinds = sorted(REFUSED)
    messages = [hostile(kind, MIB, hostile_to, number=n) for n, kind in enumerate(kinds)]
    stop = threading.Event()
    answers: list[tuple[int, str, SmtpOutcome]] = []  # (sender, kind sent, answer)

    def keep_sending(number: int) -> None:
        kind = number % len(kinds)
        while not stop.is_set():
            answers.append((number, kinds[kind], send_smtp(big_rc.smtp_port, messages[kind], hostile_to)))

    with ThreadPoolExecutor(8) as senders:
        running = [senders.submit(keep_sending, n) for n in range(8)]
        try:
            # All eight keep a hostile message in flight (each has had one answered already)...
            wait_until(lambda: {n for n, _, _ in answers} == set(range(8)), what="every hostile sender answered")
            # ...when the reply arrives. Read unchecked, the hostile ones cost seconds to a minute
            # and a half each: a reply queued behind them would outlast smtplib's 30 s deadline.
            outcome = send_smtp(big_rc.smtp_port, reply_message(to, "Approved"), to)
        finally:
            stop.set()
        for sender in running:
            sender.result(timeout=60)

    assert outcome.code == 250, outcome
    assert big_rc.task(task_id)["status"] == "completed"
    # Each hostile message got its own refusal (refused before any parser ran), or 451 4.3.2
    # when the reading queue was full: none was read.
    refused = [(kind, a.code, a.enhanced) for _, kind, a in answers]
    expected = {(k, r.code, r.enhanced) for k, r in REFUSED.items()} | {
        (k, R.READER_BUSY.code, R.READER_BUSY.enhanced) for k in kinds
    }
    assert set(refused) <= expected, refused


def test_a_full_reading_queue_answers_451_at_once() -> None:
    async def scenario() -> tuple[list[str], int]:
        pool = HeavyWork(workers=1, queue=1)
        release = threading.Event()
        first = asyncio.ensure_future(pool.admit(release.wait, 30))  # holds the one worker
        await asyncio.sleep(0.2)
        second = asyncio.ensure_future(pool.admit(lambda: "second"))  # waits for it
        await asyncio.sleep(0.05)
        outcomes = []
        try:
            await pool.admit(lambda: "third")
        except ReaderBusy as exc:
            outcomes.append(str(exc))
        waiting = pool.waiting
        release.set()
        await asyncio.gather(first, second)
        outcomes.append(await pool.admit(lambda: "fourth"))
        pool.shutdown()
        no_queue = HeavyWork(workers=1, queue=0)  # an idle worker takes a message at once
        outcomes.append(await no_queue.admit(lambda: "alone"))
        no_queue.shutdown()
        return outcomes, waiting

    outcomes, waiting = asyncio.run(scenario())

    assert outcomes == [str(R.READER_BUSY), "fourth", "alone"]
    assert R.READER_BUSY.code == 451 and R.READER_BUSY.enhanced == "4.3.2"
    assert waiting == 1


def one_reader_service(tmp_path: Path) -> Service:
    """A service whose reading pool has one worker and no queue: holding the worker shows
    what waits for the pool and what does not."""
    from rc_mta.app import Service
    from rc_mta.config import InboundConfig, Settings, SigningConfig, StoreConfig

    return Service.open(
        Settings(
            store=StoreConfig(url=f"sqlite:///{tmp_path / 'db.sqlite'}"),
            signing=SigningConfig(generated_key_file=tmp_path / "key"),
            inbound=InboundConfig(parse_workers=1, parse_queue=0),
        )
    )


def test_a_light_reply_is_read_at_once_while_the_reading_pool_is_full(tmp_path: Path) -> None:
    # A small plain reply is read on the loop (budget.Cost.light): a pool full of expensive
    # messages makes the heavy ones wait or hear 451, not the ordinary replies.
    service = one_reader_service(tmp_path)
    plain = bytes(reply_message("rc@reply.example.com", "Approved, thanks"))
    html = bytes(reply_message("rc@reply.example.com", "Approved", html="<p>" + "Approved, thanks. " * 200 + "</p>"))
    assert canonical_message_cost(plain).light and not canonical_message_cost(html).light

    async def scenario() -> tuple[str, str]:
        release = threading.Event()
        held = asyncio.ensure_future(service.pipeline.reader.admit(release.wait, 30))
        await asyncio.sleep(0)  # admitted: the one worker is taken, no queue
        try:
            light = await service.diagnose(plain, client=None)
            heavy = await service.diagnose(html, client=None)
        finally:
            release.set()
            await held
        return light["smtp_reply"], heavy["smtp_reply"]

    try:
        light, heavy = asyncio.run(scenario())
    finally:
        service.close()
    assert heavy == str(R.READER_BUSY)
    assert not light.startswith("451"), light  # read and judged (no request matches: refused)


def test_a_long_comment_is_judged_in_the_reading_pool_and_a_short_one_at_once(tmp_path: Path) -> None:
    # The grammar costs some 10 µs a character: a log pasted into a reply (64 KiB, a clause a
    # line) held the event loop half a second. Judged in the pool, it waits for a worker there.
    from rc_mta.reading.intent import interpret_action

    service = one_reader_service(tmp_path)
    words = (("approve", "approved"), ("reject", "rejected"))
    pasted = "Approved\n" + "worker 7: cannot connect\nretrying\n" * 1800

    async def scenario() -> tuple[str | None, bool, str | None]:
        pipeline = service.pipeline
        release = threading.Event()
        held = asyncio.ensure_future(pipeline.reader.admit(release.wait, 30))
        await asyncio.sleep(0)  # the one worker is taken
        try:
            long = asyncio.ensure_future(pipeline.words_say(interpret_action, pasted, *words))
            short = await pipeline.words_say(interpret_action, "Rejected, sorry", *words)
            await asyncio.sleep(0.3)
            waited = not long.done()
        finally:
            release.set()
            await held
        return short, waited, await long

    try:
        short, waited, long = asyncio.run(scenario())
    finally:
        service.close()
    assert short == "fail"  # judged on the loop while the pool was busy
    assert waited  # the long one waited for the pool's worker, not run on the loop
    assert long == "complete"


def canonical_message_cost(raw: bytes) -> Cost:
    return measured_message(raw)[1]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([b" ", b"\t", b"x", b"\r", b"\r\n", b"  ", b" " * 4, b" " * 5, b" " * 31, b"\t" * 40]),
        max_size=60,
    )
)
def test_white_space_cost_counts_every_run_as_dkimpy_pays_for_it(pieces: list[bytes]) -> None:
    """Every run of spaces and tabs costs dkimpy's relaxed canonicalization a match and each
    start its pattern tries (L(L+1)/2 for a run of L), however the estimate counts them."""
    body = b"".join(pieces)
    expected = sum(RUN_STEPS + len(run) * (len(run) + 1) // 2 for run in re.findall(rb"[\t ]+", body))
    assert relaxed_body_cost(body) == expected


def test_what_makes_a_message_too_heavy_to_read_on_the_loop() -> None:
    plain = bytes(reply_message("rc@reply.example.com", "Approved"))
    assert canonical_message_cost(plain).light
    too_big = bytes(reply_message("rc@reply.example.com", "Approved\n" + "Our change board met today. " * 1500))
    assert not canonical_message_cost(too_big).light
    spaced = bytes(reply_message("rc@reply.example.com", "Approved\n" + ("x" + " " * 200 + "y\n") * 20))
    assert canonical_message_cost(spaced).whitespace_cost > INLINE_WHITESPACE_COST
    assert not canonical_message_cost(spaced).light
    # Runs just short of what a long run once was (32), in a message small enough for the loop.
    short_runs = bytes(reply_message("rc@reply.example.com", "Approved\n" + (("x" + " " * 31) * 2 + "y\n") * 110))
    assert len(short_runs) < INLINE_BYTES
    assert canonical_message_cost(short_runs).whitespace_cost > INLINE_WHITESPACE_COST
    assert not canonical_message_cost(short_runs).light
    assert not canonical_message_cost(ordinary_reply_with_attachments()).light  # parts and size
    for kind in ("references", "html", "from_comments"):
        try:
            cost = canonical_message_cost(hostile(kind, 16 * 1024, "rc@reply.example.com"))
        except MessageRefused:
            continue
        assert not cost.light or kind == "references", kind  # a long References is cut for the reader


# What the budget lets through: mail people write ------------------------------------------


def ordinary_reply_with_attachments() -> bytes:
    """Text and HTML, an inline image, attachments with long non-ASCII names (RFC 2231), and
    a forwarded message: more than most replies carry."""
    forwarded = EmailMessage()
    forwarded["From"], forwarded["To"], forwarded["Subject"] = "bob@example.com", "alice@example.com", "Numbers"
    forwarded.set_content("See the numbers")
    forwarded.add_alternative("<p>See the numbers</p>", subtype="html")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "Alice <alice@example.com>", "rc@reply.example", "Re: Approve"
    message["References"] = " ".join(f"<{i}@example.com>" for i in range(40))
    message.set_content("Approved, see attached")
    message.add_alternative("<p>Approved, see <img src='cid:logo'> attached</p>", subtype="html")
    message.get_payload()[1].add_related(b"\x89PNG" * 100, "image", "png", cid="logo")
    for i in range(12):
        name = f"Übersicht der Quartalszahlen für den Vorstand, Teil {i} – endgültige Fassung (korrigiert).pdf"
        message.add_attachment(b"%PDF" * 500, "application", "pdf", filename=name)
    message.add_attachment(forwarded)
    return bytes(message)


def test_an_ordinary_reply_with_attachments_is_within_the_budget() -> None:
    raw = canonical_message(ordinary_reply_with_attachments())

    check_budget(raw, DEFAULT_LIMITS)


def test_text_in_a_quadratic_charset_is_refused_before_reading() -> None:
    raw = b"From: a@b.example\r\nContent-Type: text/plain; charset=punycode\r\n\r\n" + b"a-" + b"9" * 60000 + b"\r\n"

    with pytest.raises(MessageRefused) as refused:
        canonical_message(raw)

    assert refused.value.reply.name == "MESSAGE_TOO_COMPLEX" and "punycode" in refused.value.reply.text


def test_the_reader_keeps_the_first_and_last_references() -> None:
    ids = [f"<{i}@x.example>".encode() for i in range(5000)]
    raw = b"From: a@b.example\r\nReferences: " + b"\r\n ".join(ids) + b"\r\nSubject: s\r\n\r\nok\r\n"

    view = reader_view(raw, 100)

    references = view.split(b"References:", 1)[1].split(b"\r\nSubject:", 1)[0].split()
    assert references == [ids[0], *ids[-99:]]
    assert view.endswith(b"\r\nSubject: s\r\n\r\nok\r\n")
    assert reader_view(raw.replace(b"References", b"X-Other"), 100) == raw.replace(b"References", b"X-Other")


def test_every_message_of_the_corpus_is_within_the_budget() -> None:
    corpus = sorted((Path(__file__).parent / "corpus").rglob("*.eml"))
    assert corpus
    for path in corpus:
        try:
            check_budget(canonical_message(path.read_bytes()), DEFAULT_LIMITS)
        except MessageRefused as exc:
            if exc.reply.name in ("HEADER_TOO_BIG", "MESSAGE_TOO_COMPLEX"):
                raise AssertionError(f"{path.name}: {exc.reply}") from None


# The envelope sender of a mailbox's message, read on the event loop -------------------------


def test_a_mailbox_messages_return_path_is_read_from_the_top_of_its_header_only() -> None:
    top = b"Return-Path: <alice@example.com>\r\nFrom: alice@example.com\r\n"
    filler = b"X-Filler: " + b"a" * 60 + b"\r\n"
    deep = filler * (DEFAULT_LIMITS.header_bytes // len(filler) + 1) + b"Return-Path: <late@example.com>\r\n"

    assert _return_path(top + b"\r\nbody\r\n") == "alice@example.com"
    assert _return_path(b"return-path: <>\nFrom: x@example.com\n\nbody\n") == ""
    assert _return_path(b"From: x@example.com\r\n\r\nReturn-Path: <in@body.example>\r\n") is None
    # Past what a header may hold (the budget refuses such a header anyway): never looked at.
    assert _return_path(deep + b"\r\nbody\r\n") is None


def test_reading_the_return_path_costs_the_same_for_a_header_of_any_size() -> None:
    """A mailbox message has no SMTP size limit; its header may be 16 MiB of short lines.
    Cost is compared with a 256 KiB header's, never with a clock: a scan of the whole
    header takes 64 times as long, a bounded one about as long."""
    line = b"X: a\r\n"

    def cost(size: int) -> float:
        raw = line * (size // len(line)) + b"Return-Path: <late@example.com>\r\n\r\nbody\r\n"
        best = float("inf")
        for _ in range(3):
            began = time.thread_time()
            _return_path(raw)
            best = min(best, time.thread_time() - began)
        return best

    small, huge = cost(256 * 1024), cost(16 * MIB)
    assert huge < 16 * small, (small, huge)
