"""The IMAP poller: reads replies from a mailbox folder and files each one only after its
action is committed, so a crash or a dropped connection never loses or doubles a reply.

One connection searches and waits in IDLE; it and ``pool_size - 1`` more connections fetch,
handle and file messages in parallel (the seed's ``mail.imap.connectionpoolsize``). Messages
are read with ``BODY.PEEK[]`` and addressed by UID only, so a human reading the same mailbox
sees nothing marked \\Seen and expunges elsewhere never shift what we act on. A message
flagged \\Draft is never read, acted on or filed (the search asks for UNDRAFT, RFC 3501
§6.4.4): nobody received it, whoever can write to the mailbox can save one (a client's
unsent reply to the request, say), and its owner may still be writing it.

Several instances may poll one folder: each message is claimed in the shared store by
(mailbox, UIDVALIDITY, UID) before it is fetched, so only one instance handles and files
it; a message another session moved or expunged meanwhile counts as filed, not as an error.

Built on aioimaplib (asyncio, IDLE); what it lacks for a poller (STARTTLS, answering the
SASL challenge a server sends when it refuses a bearer token) is added in ``_aioimaplib``,
the one module that depends on the library's insides.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from aioimaplib import aioimaplib as lib

from .. import metrics
from ..config import MailboxConfig
from ..errors import ConfigError
from ..logs import TRACE
from ..oauth2 import TokenProvider
from ..pipeline import Pipeline
from ..registry import MAILBOX_SOURCES
from ..store import MailboxMessage
from ._aioimaplib import Client
from ._claims import MessageClaims
from ._watcher import Watcher

if TYPE_CHECKING:
    from ..refusal_notices import RefusalNotices

log = logging.getLogger("rc_mta.mailbox.imap")

T = TypeVar("T")

COMMAND_TIMEOUT = 60.0  # a server silent this long on one command is gone: reconnect
IDLE_MAX = 29 * 60.0  # RFC 2177: servers may drop an IDLE client after 30 minutes
KEEPALIVE = 10 * 60.0  # pool connections say NOOP when unused this long
# A partial fetch's literal is at most what it asked for (RFC 3501 6.4.5); past this much
# more the server is broken or hostile, and the connection is dropped (``_aioimaplib``).
LITERAL_SLACK = 64 * 1024
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_BODY_LITERAL = re.compile(rb"BODY\[\](?:<0>)? \{\d+\}$")  # <0>: a partial fetch's (RFC 3501 §7.4.2)
# RFC 5530: the message named is gone (moved or expunged by another session meanwhile).
_GONE = ("[EXPUNGEISSUED]", "[NONEXISTENT]")


class ImapError(Exception):
    """The server answered NO/BAD, or said something a poller cannot work with."""


class _TraceOnly(logging.Filter):
    """aioimaplib logs the protocol exchange at DEBUG; rc-mta shows it at TRACE (the seed's
    -Dmail.debug), so ``level = "debug"`` stays readable and message bodies stay out of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = TRACE, "TRACE"
        return log.isEnabledFor(TRACE)


def _show_exchange_at_trace() -> None:
    library_log = logging.getLogger(lib.__name__)
    if not any(isinstance(f, _TraceOnly) for f in library_log.filters):
        library_log.addFilter(_TraceOnly())


def _text(response: Any) -> str:
    lines = [line for line in response.lines if isinstance(line, bytes)]
    return lines[-1].decode("utf-8", "replace") if lines else ""


class _Connection:
    """One logged-in IMAP connection with the folder SELECTed."""

    def __init__(self, poller: ImapPoller, name: str) -> None:
        self.poller = poller
        self.config = poller.config
        self.name = name
        self.capabilities: set[str] = set()
        self.uidvalidity = 0
        self._lost = asyncio.Event()
        self._client: Any = None
        self.last_used = 0.0

    def _on_lost(self, exc: Exception | None) -> None:
        self._lost.set()

    async def _guard(self, awaitable: Awaitable[T]) -> T:
        """Await a library call, but fail at once when the server hangs up: aioimaplib would
        otherwise wait out its timeout for an answer that can no longer come."""
        if self._lost.is_set():
            raise ConnectionError(f"IMAP connection {self.name} is closed")
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        raise ConnectionError(f"IMAP server closed connection {self.name}")

    async def _ok(self, awaitable: Awaitable[Any], what: str) -> Any:
        self.last_used = asyncio.get_running_loop().time()
        response = await self._guard(asyncio.wait_for(awaitable, COMMAND_TIMEOUT))
        if response.result != "OK":
            raise ImapError(f"{what}: {response.result} {_text(response)}")
        return response

    async def open(self) -> None:
        config = self.config
        context = ssl.create_default_context() if config.tls or config.starttls else None
        self._client = Client(
            config.host,
            config.port,
            timeout=COMMAND_TIMEOUT,
            conn_lost_cb=self._on_lost,
            ssl_context=context if config.tls else None,
        )
        await self._guard(self._client.wait_hello_from_server())
        protocol = self._client.protocol
        if config.starttls:
            assert context is not None
            if "STARTTLS" not in {c.upper() for c in protocol.capabilities}:
                raise ImapError("server does not offer STARTTLS")
            await self._ok(protocol.starttls(config.host, context), "STARTTLS")
        await self._login()
        await self._guard(asyncio.wait_for(protocol.capability(), COMMAND_TIMEOUT))
        self.capabilities = {c.upper() for c in protocol.capabilities}
        response = await self._ok(self._client.select(lib.quoted(config.folder)), f"SELECT {config.folder}")
        found = (_UIDVALIDITY.search(bytes(line)) for line in response.lines)
        self.uidvalidity = next((int(m.group(1)) for m in found if m), 0)

    async def _login(self) -> None:
        config = self.config
        tokens = self.poller.tokens
        if tokens is None:
            await self._ok(self._client.login(lib.quoted(config.username), config.password.get_secret_value()), "LOGIN")
            return
        token = await tokens.access_token()
        protocol = self._client.protocol
        offered = {c.upper() for c in protocol.capabilities}
        if "AUTH=XOAUTH2" in offered or "AUTH=OAUTHBEARER" not in offered:
            mechanism = "XOAUTH2"  # Google's format; what Microsoft 365 accepts
            message = f"user={config.username}\x01auth=Bearer {token}\x01\x01"
            refusal_ack = b""
        else:
            mechanism = "OAUTHBEARER"  # RFC 7628 §3.1
            message = (
                f"n,a={config.username},\x01host={config.host}\x01port={config.port}\x01auth=Bearer {token}\x01\x01"
            )
            refusal_ack = base64.b64encode(b"\x01")
        encoded = base64.b64encode(message.encode()).decode("ascii")
        if "SASL-IR" in offered:
            initial, replies = encoded, [refusal_ack]
        else:
            initial, replies = None, [encoded.encode("ascii"), refusal_ack]
        response = await self._guard(
            asyncio.wait_for(protocol.authenticate(mechanism, replies, initial), COMMAND_TIMEOUT)
        )
        if response.result != "OK":
            tokens.invalidate()  # the next attempt fetches a fresh one
            reason = f" ({protocol.sasl_challenge})" if protocol.sasl_challenge else ""
            raise ImapError(f"AUTHENTICATE {mechanism}: {response.result} {_text(response)}{reason}")

    async def keepalive(self) -> None:
        """NOOP on a pool connection unused for a while, before the server's autologout
        (30 minutes at least, RFC 3501 §5.4) drops it between two batches of mail."""
        if asyncio.get_running_loop().time() - self.last_used > KEEPALIVE:
            await self._ok(self._client.noop(), "NOOP")

    async def ensure_folder(self, folder: str) -> None:
        response = await self._ok(self._client.list('""', lib.quoted(folder)), f"LIST {folder}")
        if len(response.lines) > 1:  # a "* LIST" line before the tagged OK: it exists
            return
        response = await self._guard(asyncio.wait_for(self._client.create(lib.quoted(folder)), COMMAND_TIMEOUT))
        if response.result != "OK" and "ALREADYEXISTS" not in _text(response).upper():
            raise ImapError(f"CREATE {folder}: {response.result} {_text(response)}")
        log.info("imap: created folder %s", folder)

    async def search(self, *criteria: str) -> list[int]:
        response = await self._ok(self._client.uid_search(*criteria, charset=None), "UID SEARCH")
        # aioimaplib hands over each "* SEARCH" line without its name, then the tagged text.
        return [int(uid) for line in response.lines[:-1] for uid in bytes(line).split() if uid.isdigit()]

    async def fetch(self, uid: int, limit: int) -> bytes | None:
        """The message, at most ``limit`` bytes of it (a partial fetch: the server sends no
        more), without setting \\Seen; None when it is gone meanwhile."""
        part = f"BODY.PEEK[]<0.{limit}>"
        self._client.protocol.max_literal = limit + LITERAL_SLACK  # more: the connection is dropped
        response = await self._ok(self._client.uid("FETCH", str(uid), part), f"UID FETCH {uid}")
        lines = response.lines
        for line, following in itertools.pairwise(lines):
            if isinstance(line, bytes) and isinstance(following, bytearray) and _BODY_LITERAL.search(line):
                return bytes(following)
        return None

    async def _ok_unless_gone(self, awaitable: Awaitable[Any], what: str) -> bool:
        """Like ``_ok``, but False when the server says the message is no longer there
        (another session moved or expunged it after we looked: nothing left to file)."""
        self.last_used = asyncio.get_running_loop().time()
        response = await self._guard(asyncio.wait_for(awaitable, COMMAND_TIMEOUT))
        if response.result == "OK":
            return True
        if response.result == "NO" and any(code in _text(response).upper() for code in _GONE):
            log.info("imap %s: the message was already gone (%s)", what, _text(response))
            return False
        raise ImapError(f"{what}: {response.result} {_text(response)}")

    async def _store(self, uid: int, flag: str) -> bool:
        return await self._ok_unless_gone(
            self._client.uid("STORE", str(uid), "+FLAGS.SILENT", f"({flag})"), f"UID STORE {uid}"
        )

    async def _delete(self, uid: int) -> None:
        if not await self._store(uid, "\\Deleted"):
            return
        if "UIDPLUS" in self.capabilities:
            await self._ok(self._client.uid("EXPUNGE", str(uid)), f"UID EXPUNGE {uid}")
        else:  # also expunges whatever else is marked \Deleted: the best plain IMAP4rev1 allows
            await self._ok(self._client.expunge(), "EXPUNGE")

    async def dispose(self, uid: int, disposition: str) -> str:
        """File a handled message: delete it, move it to Processed/Rejected, or flag it; say
        which. A UID that no longer exists is filed already (UID commands skip it, or say so)."""
        config = self.config
        if config.disposition == "keep":
            await self._store(uid, "\\Flagged")
            return "flagged"
        if config.disposition == "delete":
            await self._delete(uid)
            return "deleted"
        folder = config.processed_folder if disposition == "processed" else config.rejected_folder
        if "MOVE" in self.capabilities:
            await self._ok_unless_gone(self._client.uid("MOVE", str(uid), lib.quoted(folder)), f"UID MOVE {uid}")
        elif await self._ok_unless_gone(self._client.uid("COPY", str(uid), lib.quoted(folder)), f"UID COPY {uid}"):
            await self._delete(uid)
        return f"moved to {folder}"

    async def wait(self, timeout: float) -> None:
        """IDLE until new mail (EXISTS) or ``timeout``; a plain sleep when there is no IDLE."""
        if "IDLE" not in self.capabilities:
            await self._guard(asyncio.sleep(timeout))  # still ends early if the server hangs up
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            if await self._idle(min(left, IDLE_MAX)):
                return

    async def _idle(self, seconds: float) -> bool:
        client = self._client
        queue = client.protocol.idle_queue
        while not queue.empty():  # pushes left over from an earlier IDLE are old news
            queue.get_nowait()
        idle = await self._guard(asyncio.wait_for(client.idle_start(timeout=seconds), COMMAND_TIMEOUT))
        gauge = metrics.POLLER_IDLE.labels(self.poller.source)
        gauge.set(1)
        new_mail = False
        try:
            while client.has_pending_idle():
                pushed = await self._guard(client.wait_server_push(timeout=seconds + COMMAND_TIMEOUT))
                if pushed == lib.STOP_WAIT_SERVER_PUSH:
                    break
                if any(isinstance(line, bytes) and line.endswith(b" EXISTS") for line in pushed):
                    new_mail = True
                    break
                if any(isinstance(line, bytes) and line.startswith(b"BYE") for line in pushed):
                    raise ConnectionError(f"IMAP server ended the session: {pushed[-1]!r}")
        finally:
            gauge.set(0)
        if client.has_pending_idle():
            client.idle_done()
        response = await self._guard(asyncio.wait_for(idle, COMMAND_TIMEOUT))
        if response.result != "OK":
            raise ImapError(f"IDLE: {response.result} {_text(response)}")
        return new_mail

    async def close(self) -> None:
        """LOGOUT politely if the connection still works, then drop it either way."""
        client = self._client
        if client is None:
            return
        try:
            if client.has_pending_idle():
                client.idle_done()
            if not self._lost.is_set() and client.protocol.state in (lib.AUTH, lib.SELECTED):
                await asyncio.wait_for(self._guard(client.logout()), 5)
        except Exception as exc:  # closing anyway
            log.debug("imap %s: logout failed: %s", self.name, exc)
        finally:
            transport = client.protocol.transport
            if transport is not None:
                transport.close()
            self._client = None


async def _all(awaitables: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run side by side; the first failure cancels the rest and is raised as itself (the
    Watcher logs it and reconnects), not wrapped in an ExceptionGroup."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(a) for a in awaitables]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


class _Session:
    """The pool: connection 0 searches and idles, and every connection handles messages."""

    def __init__(self, poller: ImapPoller) -> None:
        self.poller = poller
        size = poller.config.pool_size
        self.connections = [_Connection(poller, f"#{i}") for i in range(size)]

    async def open(self) -> None:
        main, *others = self.connections
        await main.open()
        self.poller.uidvalidity_is(main.uidvalidity)
        if self.poller.config.disposition == "move":
            for folder in (self.poller.config.processed_folder, self.poller.config.rejected_folder):
                await main.ensure_folder(folder)
        await _all(c.open() for c in others)
        if any(c.uidvalidity != main.uidvalidity for c in others):
            raise ImapError("UIDVALIDITY changed while connecting")

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)

    async def sync(self) -> int:
        criteria = ["UNDELETED", "UNDRAFT"]
        if self.poller.config.disposition == "keep":
            criteria.append("UNFLAGGED")
        await self.poller.claims.prune()
        main, *others = self.connections
        await _all(c.keepalive() for c in others)
        uids = await main.search(*criteria)
        self.poller.drafts_passed_over(await main.search("UNDELETED", "DRAFT"))
        queue: asyncio.Queue[int] = asyncio.Queue()
        for uid in uids:
            queue.put_nowait(uid)
        return sum(await _all(self._work(c, queue) for c in self.connections))

    async def _work(self, connection: _Connection, queue: asyncio.Queue[int]) -> int:
        handled = 0
        while not queue.empty():
            handled += await self.poller.handle(connection, queue.get_nowait())
        return handled

    async def wait(self, timeout: float) -> None:
        await self.connections[0].wait(timeout)


class ImapPoller:
    """Mailbox mode over IMAP: the Watcher's loop around a pool of IMAP connections."""

    source = "imap"

    def __init__(self, config: MailboxConfig, pipeline: Pipeline) -> None:
        self.config = config
        self.pipeline = pipeline
        oauth2 = config.oauth2
        self.tokens: TokenProvider | None = None
        if oauth2.enabled:
            self.tokens = TokenProvider(
                oauth2.token_url,
                oauth2.client_id,
                oauth2.client_secret.get_secret_value(),
                refresh_token=oauth2.refresh_token.get_secret_value(),
            )
        self.uidvalidity: int | None = None
        self.drafts: set[int] = set()  # the folder's drafts, each said once (UIDs)
        # Several instances on one folder: each message is claimed in the store first.
        self.claims = MessageClaims(self.source, pipeline, tuple(config.trusted_authserv_ids))
        self.mailbox = f"imap://{config.username}@{config.host.lower()}/{config.folder}"
        self.watcher = Watcher(self.source, self._session, config.sync_interval, config.startup_delay)
        _show_exchange_at_trace()

    async def run(self) -> None:
        try:
            await self.watcher.run()
        finally:
            metrics.POLLER_IDLE.labels(self.source).set(0)
            if self.tokens is not None:
                await self.tokens.close()

    def staleness(self) -> tuple[float, float]:
        return self.watcher.staleness()

    def notify_refusals(self, notices: RefusalNotices) -> None:
        self.claims.notices = notices

    async def probe(self) -> str:
        """Connect, (STARTTLS,) log in and select the folder exactly as a sync does; log out."""
        config = self.config
        connection = _Connection(self, "probe")
        try:
            await connection.open()
        except ImapError as exc:
            raise ImapError(f"{config.host}:{config.port} refused: {exc}") from None
        finally:
            await connection.close()
            if self.tokens is not None:
                await self.tokens.close()
        how = "OAuth2" if self.tokens is not None else "password"
        return f"{config.host}:{config.port} logged in as {config.username} ({how}), folder {config.folder} opened"

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[_Session]:
        session = _Session(self)
        try:
            await session.open()
            log.info(
                "imap: %s@%s:%d/%s selected, %d connection(s), as poller %s",
                self.config.username,
                self.config.host,
                self.config.port,
                self.config.folder,
                len(session.connections),
                self.claims.holder,
            )
            yield session
        finally:
            await session.close()

    def uidvalidity_is(self, value: int) -> None:
        """A new UIDVALIDITY means every UID we remember now names another message (RFC 3501 §2.3.1.1)."""
        if self.uidvalidity is not None and value != self.uidvalidity:
            log.warning("imap: UIDVALIDITY of %s changed (%d -> %d)", self.config.folder, self.uidvalidity, value)
            self.claims.forget_settled()
            self.drafts.clear()
        self.uidvalidity = value

    def drafts_passed_over(self, uids: list[int]) -> None:
        """Say once of each draft in the folder that it is left alone (not every round)."""
        for uid in sorted(set(uids) - self.drafts):
            log.info("imap uid=%d draft: left alone, unread (a draft was never received)", uid)
        self.drafts = set(uids)

    async def handle(self, connection: _Connection, uid: int) -> int:
        """Claim, fetch, handle and file one message (``MessageClaims``); 1 when it was
        handled (even if left to retry), 0 when it was gone or is another instance's."""
        message = MailboxMessage(self.mailbox, connection.uidvalidity, uid)

        async def fetch() -> bytes | None:
            return await connection.fetch(uid, self.pipeline.message_limit + 1)

        async def dispose(disposition: str) -> str:
            return f"{await connection.dispose(uid, disposition)} (connection {connection.name})"

        handled = await self.claims.handle(message, f"uid={uid}", fetch, dispose)
        return 1 if handled.counted else 0


@MAILBOX_SOURCES.register("imap")
def create(config: MailboxConfig, pipeline: Pipeline) -> ImapPoller:
    """``[mailbox] source = "imap"``: the IMAP keys are [mailbox]'s own."""
    for key in ("host", "username"):
        if not getattr(config, key):
            raise ConfigError(f"config key mailbox.{key}: source 'imap' needs it")
    return ImapPoller(config, pipeline)
