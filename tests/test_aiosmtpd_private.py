"""What rc-mta takes from aiosmtpd's private side (rc_mta/inbound/aiosmtpd_private.py),
pinned against the installed aiosmtpd: a plain aiosmtpd server on loopback, spoken to by
smtplib. An aiosmtpd upgrade that renames a member or rewords a reply fails here."""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import free_port
from hypothesis import given, settings
from hypothesis import strategies as st

from rc_mta.inbound import aiosmtpd_private as P
from rc_mta.inbound.data import LINE_TOO_LONG, TOO_MUCH_DATA, DataReading
from rc_mta.inbound.handler import ReplyEnvelope, ReplySession


class Probe(P.ReplyObjects):
    """aiosmtpd's server with our session and envelope classes, as rc-mta's front has."""


class Recorder:
    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.seen["session"], self.seen["envelope"] = type(session), type(envelope)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reader = P.stream_reader(server)
        self.seen["reader"] = type(reader).__name__
        self.seen["reader_limit"] = reader._limit  # type: ignore[attr-defined]
        P.new_transaction(server)
        self.seen["after_data"] = (type(server.envelope), server.envelope is not envelope)
        before = server.envelope
        P.reset_transaction(server)
        self.seen["after_rset"] = (type(server.envelope), server.envelope is not before)
        return "250 OK"


class ProbeController(Controller):
    server_class: type[SMTP] = Probe

    def factory(self) -> SMTP:
        return self.server_class(self.handler, data_size_limit=4096, hostname="probe.example.test")


class OurDataController(ProbeController):
    server_class = type("OurData", (DataReading, Probe), {})


def started(controller_class: type[ProbeController], handler: object) -> tuple[Controller, int]:
    port = free_port()
    controller = controller_class(handler, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port


@pytest.fixture(params=[ProbeController, OurDataController], ids=["aiosmtpd-data", "our-data"])
def probe(request: pytest.FixtureRequest) -> Iterator[tuple[Recorder, int]]:
    """aiosmtpd's own server, and the same with rc-mta's DATA reader: both must pass."""
    recorder = Recorder()
    controller, port = started(request.param, recorder)
    yield recorder, port
    controller.stop()


class Keeper:
    def __init__(self) -> None:
        self.content: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.content.append(bytes(envelope.original_content or b""))
        return "250 OK"


def raw_data(port: int, data: bytes) -> tuple[int, bytes]:
    """One transaction whose DATA is ``data`` as given (dot-stuffing, end mark): the reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.example.test")
        client.mail("alice@example.com")
        client.rcpt("rc@reply.example.test")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        client.send(data)
        return client.getreply()


def test_our_data_reader_keeps_exactly_the_bytes_aiosmtpd_keeps() -> None:
    # Dot-stuffed lines (one only a stuffed dot), a bare LF inside a line, a line of 992 bytes.
    body = b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\n..\r\nbare\nLF inside\r\n" + b"z" * 990 + b"\r\n.\r\n"
    kept = []
    for controller_class in (ProbeController, OurDataController):
        keeper = Keeper()
        controller, port = started(controller_class, keeper)
        try:
            assert raw_data(port, body)[0] == 250
        finally:
            controller.stop()
        kept.append(keeper.content)

    assert kept[0] == kept[1] and len(kept[0]) == 1
    assert kept[0][0].startswith(b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nbare\nLF")


def test_the_session_envelope_and_reader_members_are_what_the_front_uses(probe: tuple[Recorder, int]) -> None:
    recorder, port = probe
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@example.com", ["rc@reply.example.test"], b"Subject: x\r\n\r\nhi\r\n")

    assert recorder.seen["session"] is ReplySession and recorder.seen["envelope"] is ReplyEnvelope
    assert recorder.seen["reader"] == "StreamReader" and recorder.seen["reader_limit"] == SMTP.line_length_limit
    assert recorder.seen["after_data"] == (ReplyEnvelope, True)
    assert recorder.seen["after_rset"] == (ReplyEnvelope, True)


def test_the_canned_replies_the_front_rewords_are_worded_as_expected(probe: tuple[Recorder, int]) -> None:
    _, port = probe
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.example.test")
        code, text = client.docmd("MAIL", "FROM:<alice@example.com> SIZE=999999")
        assert f"{code} {text.decode()}".startswith(P.TOO_BIG_PREFIX)
        code, text = client.docmd("FROB")
        assert re.fullmatch(P.UNKNOWN_COMMAND_PATTERN, f"{code} {text.decode()}")
        code, text = client.docmd("VRFY", "<<<x")
        assert f"{code} {text.decode()}" == P.VRFY_UNPARSEABLE_PREFIX + "<<<x"


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"x" * 2000 + b"\r\n", LINE_TOO_LONG), ((b"y" * 100 + b"\r\n") * 60, TOO_MUCH_DATA)],
    ids=["line-too-long", "too-much-data"],
)
def test_our_data_reader_answers_in_aiosmtpds_words(probe: tuple[Recorder, int], body: bytes, expected: str) -> None:
    _, port = probe
    code, text = raw_data(port, body + b".\r\n")

    assert f"{code} {text.decode()}" == expected


# Addresses: the plain form read without the header parser, to aiosmtpd's own answer ---------

_ATEXT = "abcXYZ09!#$%&'*+/=?^_`{|}~-"
_atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=8)
_labels = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,10}", fullmatch=True)
_plain = st.builds(
    lambda local, domain, rest: f"<{'.'.join(local)}@{'.'.join(domain)}>{rest}",
    st.lists(_atoms, min_size=1, max_size=3),
    st.lists(_labels, min_size=1, max_size=3),
    st.sampled_from(
        [
            *["", " SIZE=1024", "\tBODY=8BITMIME SMTPUTF8", "  ", "x", " (comment) SIZE=1", "(c)", " \t(a(b))"],
            *[" \x0b", "\x0b", " \x0c\x1c x", "\x85", " \u3000(c)", "\t\x85 SIZE=1"],  # other white space
        ]
    ),
)
# Near misses: the fast path must step aside and leave them to aiosmtpd.
_odd = st.one_of(
    st.text(alphabet=_ATEXT + '<>@."() \\[]:;,\t', max_size=40),
    _plain.map(lambda a: " " + a),
    _plain.map(lambda a: a.replace("@", "@@", 1)),
    _plain.map(lambda a: a.replace("<", '<"q"', 1)),
    _plain.map(lambda a: a.replace(">", "", 1)),
    _plain.map(lambda a: a.replace("@", "..@", 1)),
)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SMTP, SMTP]]:
    loop = asyncio.new_event_loop()
    ours, theirs = P.ReplyObjects(Recorder(), loop=loop), SMTP(Recorder(), loop=loop)
    yield ours, theirs
    loop.close()


@settings(max_examples=400, deadline=None)
@given(arg=st.one_of(_plain, _odd))
def test_an_address_is_read_as_aiosmtpd_reads_it(servers: tuple[SMTP, SMTP], arg: str) -> None:
    ours, theirs = servers
    assert _read(ours, arg) == _read(theirs, arg)


def _read(server: SMTP, arg: str) -> object:
    """What ``_getaddr`` answers, or the exception it raises (aiosmtpd's own: "<" alone)."""
    try:
        return server._getaddr(arg)
    except Exception as exc:
        return type(exc)


def test_the_local_part_limit_still_applies_to_plain_addresses(servers: tuple[SMTP, SMTP]) -> None:
    ours, _ = servers
    ours.local_part_limit = 8
    try:
        assert ours._getaddr("<toolongalocalpart@example.com>") == (None, None)
        assert ours._getaddr("<short@example.com> SIZE=1") == ("short@example.com", "SIZE=1")
    finally:
        ours.local_part_limit = 0


def test_shared_tables_answer_as_aiosmtpds_own_and_are_not_made_per_session() -> None:
    """aiosmtpd's per-session tables of commands and hooks, replaced by one per handler and
    methods bound when used: the same commands, the same methods, the same hooks."""
    loop = asyncio.new_event_loop()
    handler = Recorder()
    try:
        plain = SMTP(handler, loop=loop)
        one, two = P.SharedTables(handler, loop=loop), P.SharedTables(handler, loop=loop)
    finally:
        loop.close()

    assert list(one._smtp_methods) == list(plain._smtp_methods)
    functions = {name: method.__func__ for name, method in plain._smtp_methods.items()}
    assert {name: method.__func__ for name, method in one._smtp_methods.items()} == functions
    assert one._smtp_methods.get("MAIL").__func__ is functions["MAIL"] and one._smtp_methods.get("NOPE") is None
    assert one._handle_hooks == plain._handle_hooks
    assert one._handle_hooks is two._handle_hooks  # one table for every session of a handler
    assert one._smtp_methods["EHLO"].__self__ is one and two._smtp_methods["EHLO"].__self__ is two
