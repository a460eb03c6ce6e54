"""aiosmtpd's SMTP and LMTP servers, with an enhanced status code on every reply, and the
XCLIENT / XFORWARD commands (Postfix's, which aiosmtpd lacks) for trusted relays.

aiosmtpd decodes a command's argument with ``surrogateescape`` and hands it, unchecked,
to the command's ``smtp_<VERB>`` method. Commands that carry a name or an address are
screened there first: bytes that are not UTF-8 and control characters get a 5xx syntax
reply, before anything parses, stores or logs them. Every reply line leaves escaped.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, syntax

from .. import metrics
from .. import smtp_replies as R
from ..config import InboundConfig, parse_host_port
from ..pipeline import Pipeline
from ..safetext import escape_controls, hostile_character
from .aiosmtpd_private import (
    TOO_BIG_PREFIX,
    UNKNOWN_COMMAND_PATTERN,
    VRFY_UNPARSEABLE_PREFIX,
    ReplyObjects,
    SharedTables,
    reset_transaction,
)
from .data import DataReading
from .handler import LmtpReplyHandler, ReplyEnvelope, ReplyHandler, ReplySession, peer_ip
from .limits import SessionLimits
from .shutdown import ClosableSession, Listener, Sessions
from .tls import TlsContexts, count_handshake, negotiated

log = logging.getLogger("rc_mta.inbound")

_UNKNOWN_COMMAND = re.compile(UNKNOWN_COMMAND_PATTERN)
# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
_MAX_REPLY_LINE = 510
# aiosmtpd reads DATA and pipelined commands a line at a time on the event loop, and
# asyncio's StreamReader hands out lines it already holds without yielding: one 256 KiB
# read of short lines would keep every other session waiting for a quarter of a second.
# So the socket's bytes reach the reader a slice per turn of the loop: READ_SLICE bytes, or
# fewer so that a slice holds about READ_SLICE_LINES lines (the cost is per line). While
# more than READ_HIGH_WATER bytes wait, the socket is not read.
READ_SLICE = 4096
READ_SLICE_LINES = 128
READ_HIGH_WATER = 64 * 1024
_XCLIENT_ATTRIBUTES = {"NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT"}
_XFORWARD_ATTRIBUTES = {"NAME", "ADDR", "PORT", "PROTO", "HELO", "SOURCE", "IDENT"}


def _xtext_decode(value: str) -> str:
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def parse_relay_attributes(arg: str | None, allowed: set[str]) -> dict[str, str]:
    """``NAME=x ADDR=y`` → dict; unavailable values dropped; raises ValueError saying why."""
    if arg is None or not arg.strip():
        raise ValueError("none given (attribute=value ...)")
    problem = hostile_character(arg)
    if problem is not None:
        raise ValueError(f"the command holds {problem}")
    facts: dict[str, str] = {}
    for item in arg.split():
        name, sep, raw = item.partition("=")
        name = name.upper()
        if not sep or name not in allowed:
            raise ValueError(f"unknown attribute {name or item!r}")
        value = _xtext_decode(raw)
        problem = hostile_character(value)
        if problem is not None:  # xtext can spell any byte: +0D+0A, +1B
            raise ValueError(f"{name} holds {problem}")
        if value.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
            continue
        if name == "ADDR":
            value = value[5:] if value.upper().startswith("IPV6:") else value
            try:
                value = str(ipaddress.ip_address(value))
            except ValueError:
                raise ValueError(f"ADDR {value!r} is not an IP address") from None
        facts[name] = value
    return facts


def _outgoing_line(line: str) -> str:
    """``SmtpServer._reply_line`` but for the size reply, which is the listener's own."""
    if line.startswith(VRFY_UNPARSEABLE_PREFIX):
        return str(R.VRFY_UNPARSEABLE.with_text(argument=line[len(VRFY_UNPARSEABLE_PREFIX) :]))
    unknown = _UNKNOWN_COMMAND.fullmatch(line)
    if unknown is not None:
        return str(R.UNKNOWN_COMMAND.with_text(command=unknown.group(1)))
    line = escape_controls(R.with_enhanced_code(line))
    return line if len(line) <= _MAX_REPLY_LINE else line[: _MAX_REPLY_LINE - 3] + "..."


# A session sends the same few lines again and again (250 2.1.0, 250 2.0.0 after RSET, a
# refusal): each is made once. Lines echoing a client's words only make it churn: it holds
# at most 512 lines, of at most _MAX_REPLY_LINE characters (longer ones are made each time).
_known_outgoing_line = functools.lru_cache(maxsize=512)(_outgoing_line)

SmtpMethod = Callable[[Any, str | None], Awaitable[None]]


def _screened(verb: str, reply: R.SmtpReply) -> Callable[[SmtpMethod], SmtpMethod]:
    """Answer ``reply`` to a ``verb`` whose argument holds undecodable bytes or control
    characters; otherwise run the command. Keeps the method's HELP text."""

    def decorate(method: SmtpMethod) -> SmtpMethod:
        @functools.wraps(method)
        async def screened(server: SmtpServer, arg: str | None) -> None:
            problem = hostile_character(arg) if arg else None
            if problem is None:
                await method(server, arg)
                return
            refusal = reply.with_text(command=verb, problem=problem)
            assert server.session is not None
            log.info(
                "%s refused: %s", verb, problem, extra={"client": peer_ip(server.session), "reason": refusal.reason}
            )
            await server.push(str(refusal))

        return screened

    return decorate


def _progress(method: SmtpMethod) -> SmtpMethod:
    """A command that may advance a transaction (RCPT): an accepted recipient starts the
    count of commands without progress anew. Keeps the method's HELP text."""

    @functools.wraps(method)
    async def counted(server: SmtpServer, arg: str | None) -> None:
        before = len(server.envelope.rcpt_tos) if server.envelope is not None else 0
        await method(server, arg)
        if server.envelope is not None and len(server.envelope.rcpt_tos) > before:
            server.idle_replies = 0

    return counted


def _transport_peer_ip(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def _transport_fileno(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    return int(sock.fileno()) if sock is not None else -1


class SmtpServer(ClosableSession, DataReading, ReplyObjects, SharedTables):
    def __init__(
        self,
        handler: ReplyHandler,
        config: InboundConfig,
        limits: SessionLimits,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            handler,
            data_size_limit=config.max_message_size,
            hostname=config.hostname,
            ident="rc-mta",
            timeout=config.timeout,
            enable_SMTPUTF8=True,
            decode_data=False,
            proxy_protocol_timeout=10.0 if config.proxy_protocol else None,
            tls_context=tls_context,  # STARTTLS offered when set (require_tls is the handler's, at MAIL)
        )
        self.reply_handler = handler
        self._size_reply = str(R.MESSAGE_TOO_BIG.with_text(limit=config.max_message_size))
        self.limits = limits
        self._lifetime = config.session_lifetime
        self._max_idle_replies = config.max_idle_commands
        self.idle_replies = 0  # replies since the last accepted recipient
        self._refused = False  # told 421 at connect: aiosmtpd never saw this connection
        self._admitted_ip: str | None = None
        self._lifetime_call: asyncio.TimerHandle | None = None
        self._pending: deque[memoryview] = deque()
        self._pending_bytes = 0
        self._feeding = False
        self._held = False
        self._eof_held = False
        self._starting_tls = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Session caps, descriptors and the connection rate limit first: a refused client is
        told 421 and closed without a session (aiosmtpd never sees it)."""
        if self._starting_tls:
            self._tls_established(transport)
            return
        metrics.CONNECTIONS.labels(self.reply_handler.source).inc()
        ip = _transport_peer_ip(transport)
        refusal = self.limits.admit(ip, _transport_fileno(transport))
        if refusal is None:
            self._admitted_ip = ip
            refusal = self.reply_handler.connect_refusal(ip)
            if refusal is not None:
                self.limits.release(ip)
        else:
            self.reply_handler.pipeline.count_refusal("connect", refusal)
        if refusal is not None:
            self._refused = True
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(f"{refusal}\r\n".encode())
            transport.close()  # what is written is sent first
            return
        metrics.SESSIONS_ACTIVE.labels(self.reply_handler.source).inc()
        self._lifetime_call = self.loop.call_later(self._lifetime, self._lifetime_over)
        super().connection_made(transport)
        count_handshake(self.reply_handler.source, negotiated(transport))  # the implicit TLS port

    # STARTTLS (RFC 3207) ------------------------------------------------------------------

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if negotiated(self.transport) is not None:
            await self.push(str(R.TLS_ACTIVE))
            return
        if self.tls_context is None:
            await self.push(str(R.TLS_UNAVAILABLE))
            return
        # Whatever the client pipelined after STARTTLS came in clear: it is never a command.
        self._discard_pending()
        self._starting_tls = not arg
        await SMTP.smtp_STARTTLS(self, arg)

    def _tls_established(self, transport: asyncio.BaseTransport) -> None:
        """The handshake after STARTTLS is done and asyncio hands us the encrypted transport:
        aiosmtpd starts the session over (RFC 3207 4.2); the session's caps, lifetime and
        forged-recipient count go on."""
        self._starting_tls = False
        self._discard_pending()
        session = self.session
        bad_recipients = session.bad_recipients if isinstance(session, ReplySession) else 0
        super().connection_made(transport)
        if isinstance(self.session, ReplySession):
            self.session.bad_recipients = bad_recipients
        count_handshake(self.reply_handler.source, negotiated(transport))

    def _discard_pending(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        if self._held:
            self._held = False
            if isinstance(self.transport, asyncio.ReadTransport):
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.limits.release(self._admitted_ip)
        if self._lifetime_call is not None:
            self._lifetime_call.cancel()
        self._pending.clear()
        self._pending_bytes = 0
        metrics.SESSIONS_ACTIVE.labels(self.reply_handler.source).dec()
        super().connection_lost(exc)

    def _lifetime_over(self) -> None:
        log.info("session of %s ended: it lasted %g s", self._admitted_ip, self._lifetime)
        self.end(str(R.SESSION_TOO_LONG.with_text(limit=f"{self._lifetime:g} seconds")))

    # Reading, a slice per turn of the loop (READ_SLICE) ----------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused or not data:
            return
        small = len(data) <= READ_SLICE and data.count(b"\n") <= READ_SLICE_LINES
        if small and not self._pending and self.transport is not None:
            super().data_received(data)  # a slice already, and nothing waits before it: as _feed would
            return
        self._pending.append(memoryview(data))
        self._pending_bytes += len(data)
        if not self._feeding:
            self._feed()
        elif self._pending_bytes > READ_HIGH_WATER:
            self._hold()

    def _feed(self) -> None:
        """Hand the reader one slice; the next one on the loop's next turn."""
        self._feeding = False
        if self.transport is None or not self._pending:
            return
        first = self._pending[0]
        size = min(len(first), READ_SLICE)
        lines = first[:size].tobytes().count(b"\n")
        if lines > READ_SLICE_LINES:
            size = max(1, size * READ_SLICE_LINES // lines)
        if size == len(first):
            self._pending.popleft()
            chunk = first.tobytes()
        else:
            chunk = first[:size].tobytes()
            self._pending[0] = first[size:]
        self._pending_bytes -= len(chunk)
        super().data_received(chunk)
        if self._pending:
            self._feeding = True
            self.loop.call_soon(self._feed)
            if self._pending_bytes > READ_HIGH_WATER:
                self._hold()  # again: the reader may have resumed the socket meanwhile
            return
        if self._held:
            self._held = False
            assert isinstance(self.transport, asyncio.ReadTransport)
            self.transport.resume_reading()
        if self._eof_held:
            self._eof_held = False
            if not super().eof_received() and self.transport is not None:
                self.transport.close()

    def _hold(self) -> None:
        transport = self.transport
        if not self._held and isinstance(transport, asyncio.ReadTransport) and not transport.is_closing():
            transport.pause_reading()
            self._held = True

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        if self._pending:  # the client's last bytes are read before its end of stream
            self._eof_held = True
            return True
        return super().eof_received()

    smtp_HELO = _screened("HELO", R.HELO_SYNTAX)(SMTP.smtp_HELO)
    smtp_EHLO = _screened("EHLO", R.HELO_SYNTAX)(SMTP.smtp_EHLO)
    smtp_MAIL = _screened("MAIL", R.SENDER_SYNTAX)(SMTP.smtp_MAIL)
    smtp_RCPT = _progress(_screened("RCPT", R.RECIPIENT_SYNTAX)(SMTP.smtp_RCPT))

    async def push(self, status: AnyStr) -> None:
        text = status.decode(errors="surrogateescape") if isinstance(status, bytes) else status
        lines = text.split("\r\n")
        if self._idle_too_long(lines[-1]):
            log.info("session of %s ended: %d replies without progress", self._admitted_ip, self.idle_replies - 1)
            self.end(str(R.NO_PROGRESS))
            return
        if len(lines) == 1:
            await super().push(self._reply_line(text))
        else:
            await super().push("\r\n".join([self._reply_line(line) for line in lines]))

    def _idle_too_long(self, last: str) -> bool:
        """Count one reply (a multi-line one once, at its ``last`` line) outside a transaction;
        True when this one is over ``max_idle_commands`` since the last accepted recipient."""
        if self.in_transaction or last[3:4] == "-":
            return False
        self.idle_replies += 1
        return self.idle_replies > self._max_idle_replies

    def _reply_line(self, line: str) -> str:
        """One reply line as it leaves: our sentence for aiosmtpd's canned ones, an enhanced
        code, and no control character or undecodable byte (a reply is never a terminal's
        escape sequence, nor a way to end the line early)."""
        if line.startswith(TOO_BIG_PREFIX):
            return self._size_reply
        return _known_outgoing_line(line) if len(line) <= _MAX_REPLY_LINE else _outgoing_line(line)

    async def _relay_command(self, command: str, arg: str | None, allowed: set[str]) -> dict[str, str] | None:
        """Shared checks of XCLIENT and XFORWARD: who may send them, when, and their syntax."""
        assert self.session is not None
        if not self.reply_handler.may_relay_facts(self.session):
            await self.push(str(R.XCLIENT_DENIED.with_text(command=command, ip=peer_ip(self.session))))
            return None
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return None
        try:
            return parse_relay_attributes(arg, allowed)
        except ValueError as exc:
            await self.push(str(R.XCLIENT_SYNTAX.with_text(command=command, why=exc)))
            return None

    @syntax("XCLIENT attribute=value ...")
    async def smtp_XCLIENT(self, arg: str | None) -> None:
        """Postfix XCLIENT: the relay speaks for the original client; the session starts over."""
        facts = await self._relay_command("XCLIENT", arg, _XCLIENT_ATTRIBUTES)
        if facts is None:
            return
        session = self.session
        assert isinstance(session, ReplySession)
        session.xclient.update(facts)
        session.xclient_used = True
        session.host_name = None
        session.extended_smtp = False
        reset_transaction(self)
        await self.push(f"220 {self.hostname} {self.__ident__}")

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix XFORWARD: facts about the original client for the next mail transaction."""
        facts = await self._relay_command("XFORWARD", arg, _XFORWARD_ATTRIBUTES)
        if facts is None:
            return
        assert isinstance(self.envelope, ReplyEnvelope)
        self.envelope.xforward.update(facts)
        self.envelope.xforward_used = True
        await self.push(str(R.XFORWARD_OK))


class LmtpServer(SmtpServer, LMTP):
    """LMTP (RFC 2033) as aiosmtpd's ``LMTP`` speaks it (LHLO instead of HELO/EHLO), with
    our screening and limits, and one DATA reply per recipient."""

    # LMTP's greetings come before the SMTP ones SmtpServer screens; LHLO is screened alike.
    smtp_LHLO = _screened("LHLO", R.HELO_SYNTAX)(LMTP.smtp_LHLO)

    async def smtp_HELO(self, arg: str | None) -> None:
        await LMTP.smtp_HELO(self, arg or "")

    async def smtp_EHLO(self, arg: str | None) -> None:
        await LMTP.smtp_EHLO(self, arg or "")

    # Per session (ints: assigning one on the instance never touches the class's).
    _data_recipients = 0
    _owed_error_replies = 0

    async def smtp_DATA(self, arg: str) -> None:
        self._data_recipients = len(self.envelope.rcpt_tos) if self.envelope else 0
        try:
            await super().smtp_DATA(arg)
        except Exception:
            # aiosmtpd answers our own exception once, through handle_exception: owe one per recipient.
            self._owed_error_replies = self._data_recipients
            raise
        finally:
            self._data_recipients = 0

    async def handle_exception(self, error: Exception) -> str:
        status: str = await super().handle_exception(error)
        owed, self._owed_error_replies = self._owed_error_replies, 0
        return "\r\n".join([status] * max(1, owed))

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        # A DATA failure aiosmtpd answers once (size, line length) is owed to every recipient.
        if self._data_recipients > 1 and not text.startswith("354") and "\r\n" not in text:
            text = "\r\n".join([text] * self._data_recipients)
        await super().push(text)


def session_limits(pipeline: Pipeline, config: InboundConfig) -> SessionLimits:
    """The session caps every listener of one process shares; trusted relays are exempt
    from the per-IP cap."""
    return SessionLimits(config, pipeline.sender_auth.is_trusted_relay)


async def start_listener(
    pipeline: Pipeline,
    config: InboundConfig,
    *,
    lmtp: bool,
    limits: SessionLimits | None = None,
    tls: TlsContexts | None = None,
    implicit_tls: bool = False,
) -> Listener:
    """Serve SMTP (or LMTP) on the running loop, at ``listen`` (or ``lmtp_listen``; with
    ``implicit_tls``, SMTP over TLS at ``tls_listen``), within ``limits`` (shared by the
    process's listeners; a listener of its own if none). With ``tls``, STARTTLS is offered."""
    limits = limits or session_limits(pipeline, config)
    where = config.tls_listen if implicit_tls else config.lmtp_listen if lmtp else config.listen
    host, port = parse_host_port(where)
    handler: ReplyHandler
    source = "lmtp" if lmtp else "smtp"
    require_tls = source in config.tls.require_tls
    if lmtp:
        handler = LmtpReplyHandler(pipeline, "lmtp", config.max_recipients, require_tls=require_tls)
    else:
        # SMTP has one answer per message: with two reply addresses, one could act and the
        # other be refused, and the sender would get a bounce for a task that was done.
        # A 452 for the second makes the sending MTA deliver it in a transaction of its own.
        handler = ReplyHandler(pipeline, "smtp", 1, require_tls=require_tls)
    server_class = LmtpServer if lmtp else SmtpServer
    sessions = Sessions()
    # The implicit TLS port encrypts before the session starts, so it offers no STARTTLS.
    starttls = tls.front if tls is not None and not implicit_tls else None

    def new_session() -> SmtpServer:
        session = server_class(handler, config, limits, starttls)
        session.sessions = sessions
        return session

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        new_session,
        host,
        port,
        reuse_address=True,
        backlog=config.listen_backlog,
        ssl=tls.front if implicit_tls and tls is not None else None,
        ssl_handshake_timeout=min(config.timeout, 30.0) if implicit_tls else None,
    )
    return Listener(server, sessions, "smtps" if implicit_tls else handler.source)
