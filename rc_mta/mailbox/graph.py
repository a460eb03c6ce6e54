"""Mailbox mode over Microsoft Graph v1.0: read replies from an Exchange Online mailbox.

Each sync lists the folder (a delta query, so a round costs one call when nothing changed),
fetches each new message's MIME, hands it to the pipeline and, only once the pipeline has
committed the action, files the message away (move, delete or flag). The poll loop itself
(interval, reconnect, backoff, liveness) is the shared Watcher's.

A draft (``isDraft``) is left alone: never read, acted on or filed. Nobody received it:
whoever can write to the mailbox can save one (a client's unsent reply, or Graph's own
``POST /messages`` with MIME, which makes a draft of any header, Authentication-Results and
Received included), and its owner may still be writing it.

Several instances may poll one mailbox: each message is claimed in the shared store before
it is read (``MessageClaims``, as for IMAP), under a name made of the mailbox, the folder
and a digest of Graph's id (ids are opaque and long), so only one instance handles and
files it. A message another instance holds stays pending here: if that instance dies, its
claim goes stale and this one takes it over.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from ..checks.exchange_online import exchange_online_trust
from ..config import MailboxConfig
from ..errors import ConfigError, TemporaryFailure
from ..http_client import LARGE_BODY, SMALL_BODY, read_body
from ..oauth2 import OAuth2Error, TokenProvider
from ..pipeline import Pipeline
from ..registry import MAILBOX_SOURCES
from ..store import MailboxMessage
from ._claims import Handled, MessageClaims
from ._graph_push import GraphPush
from ._watcher import Watcher

if TYPE_CHECKING:
    from ..refusal_notices import RefusalNotices

log = logging.getLogger("rc_mta.mailbox.graph")

SOURCE = "graph"
SCOPE = "https://graph.microsoft.com/.default"
PAGE_SIZE = 50
MAX_THROTTLE_RETRIES = 5  # 429/503 answers honoured per call before the round gives up
MAX_RETRY_AFTER = 120.0  # never sleep longer than this on one Retry-After
DEFAULT_RETRY_AFTER = 2.0  # when a 429/503 comes without a usable Retry-After
UNSUBSCRIBE_SECONDS = 5.0  # at shutdown, for deleting the change-notification subscription
MAX_PAGES = 10_000  # a nextLink loop is a server bug; don't follow it forever
# Answers to a stale or unusable delta link: start again with a full listing.
BAD_DELTA_CODES = {"syncstatenotfound", "syncstateinvalid", "invalidsynctoken", "resyncrequired"}
# What a listing asks of each message: its id, whether it is a draft (message resource,
# isDraft: "a message is a draft if it hasn't been sent yet"), and its flag (disposition
# "keep" files a message by flagging it); delta honours $select too.
LISTED = {"$select": "id,isDraft,flag"}
WELL_KNOWN_FOLDERS = {"inbox": "inbox", "junk email": "junkemail", "junkemail": "junkemail", "archive": "archive"}


class GraphError(TemporaryFailure):
    """Graph answered an error we cannot fix by retrying this call; the round is retried later."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"Graph {status} {code}: {message}")
        self.status = status
        self.code = code


@dataclass
class _State:
    """What survives a reconnect: where the delta left off and which messages need another look."""

    delta_link: str | None = None
    delta_supported: bool = True
    # Listed but not yet filed: disposition "retry", a round cut short, filing failed, or
    # another instance holds it. The delta link has moved past these, so they are looked at
    # again from here.
    pending_ids: set[str] = field(default_factory=set)
    kept_ids: set[str] = field(default_factory=set)  # disposition "keep": handled, left in place
    folder_ids: dict[str, str] = field(default_factory=dict)  # displayName -> folder id
    drafts: set[str] = field(default_factory=set)  # drafts passed over (and said so) while listed


class GraphPoller:
    """The Poller for ``[mailbox] source = "graph"``."""

    source = SOURCE

    def __init__(self, config: MailboxConfig, pipeline: Pipeline, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.pipeline = pipeline
        self.state = _State()
        trusted, exchange_online = tuple(config.trusted_authserv_ids), exchange_online_trust(config)
        self.claims = MessageClaims(SOURCE, pipeline, trusted, clock, exchange_online)
        self.watcher = Watcher(SOURCE, self._connect, config.sync_interval, config.startup_delay, clock=clock)
        # Change notifications only wake the poll early; the delta stays the source of truth.
        self.push = GraphPush(config.graph.push, config.graph.base_url) if config.graph.push.enabled else None

    def staleness(self) -> tuple[float, float]:
        return self.watcher.staleness()

    def notify_refusals(self, notices: RefusalNotices) -> None:
        self.claims.notices = notices

    async def run(self) -> None:
        try:
            await self.watcher.run()
        finally:
            if self.push is not None and self.push.subscription_id is not None:
                await self._unsubscribe(self.push)

    async def _unsubscribe(self, push: GraphPush) -> None:
        """Clean shutdown: delete the subscription, within a few seconds or not at all."""
        try:
            async with asyncio.timeout(UNSUBSCRIBE_SECONDS), self._connect() as connection:
                await push.unsubscribe(connection._call)
        except (TimeoutError, TemporaryFailure, OAuth2Error) as exc:
            log.warning("graph push: subscription left to expire: %s", exc)

    async def probe(self) -> str:
        """Sign in and read the folder exactly as a sync does; nothing is changed."""
        async with self._connect() as connection:
            await connection._json("GET", await connection._folder_url())
            client = connection.tokens.client_id
        return f"signed in as client {client}; {self.config.graph.user}'s folder {self.config.folder} readable"

    def _token_provider(self) -> TokenProvider:
        graph, oauth2 = self.config.graph, self.config.oauth2
        refresh_token = oauth2.refresh_token.get_secret_value()
        token_url = (oauth2.token_url if refresh_token and oauth2.token_url else graph.token_url).replace(
            "{tenant_id}", graph.tenant_id
        )
        client_id = oauth2.client_id if refresh_token and oauth2.client_id else graph.client_id
        secret = oauth2.client_secret if refresh_token and oauth2.client_id else graph.client_secret
        # Delegated (refresh-token) access needs offline_access to keep getting refresh tokens.
        scope = SCOPE + " offline_access" if refresh_token else SCOPE
        return TokenProvider(token_url, client_id, secret.get_secret_value(), refresh_token=refresh_token, scope=scope)

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[GraphConnection]:
        tokens = self._token_provider()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            try:
                await tokens.access_token()  # fail here, with the identity platform's reason
            except OAuth2Error as exc:
                log.error("graph poller: cannot sign in as client %s: %s", tokens.client_id, exc)
                raise
            yield GraphConnection(self.config, self.claims, self.state, session, tokens, self.push)
        finally:
            await session.close()
            await tokens.close()


class GraphConnection:
    """One signed-in HTTP session to Graph; the Watcher makes a new one after any error."""

    def __init__(
        self,
        config: MailboxConfig,
        claims: MessageClaims,
        state: _State,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        push: GraphPush | None = None,
    ) -> None:
        self.config = config
        self.push = push
        self.claims = claims
        self.state = state
        self.session = session
        self.tokens = tokens
        self.base = config.graph.base_url.rstrip("/") + "/users/" + quote(config.graph.user, safe="@")
        folder = config.folder
        self.folder_ref = WELL_KNOWN_FOLDERS.get(folder.lower(), folder) if folder.upper() != "INBOX" else "inbox"
        self.folder_url: str | None = None
        # What names this folder's messages in the store's claims (see ``_claimed``).
        self.mailbox = f"graph://{config.graph.user.lower()}/{self.folder_ref}"

    async def wait(self, timeout: float) -> None:
        if self.push is None:
            await asyncio.sleep(timeout)  # no change notifications configured: poll
            return
        folder_url = await self._folder_url()
        resource = folder_url[len(self.config.graph.base_url.rstrip("/")) :] + "/messages"
        await self.push.wait(timeout, self._call, resource)

    async def sync(self) -> int:
        """Handle every message waiting now: new ones from the listing, earlier retries, and
        those another instance held last time."""
        await self.claims.prune()
        ids = await self._list_ids()
        ids.extend(sorted(self.state.pending_ids.difference(ids)))
        self.state.pending_ids.update(ids)
        handled = 0
        for message_id in ids:
            if message_id in self.state.kept_ids:
                self.state.pending_ids.discard(message_id)
                continue
            outcome = await self._handle(message_id)
            if not outcome.again:
                self.state.pending_ids.discard(message_id)
            handled += outcome.counted
        return handled

    # -- listing ----------------------------------------------------------------------------

    async def _folder_url(self) -> str:
        if self.folder_url is None:
            ref = self.folder_ref
            if ref not in WELL_KNOWN_FOLDERS.values():
                ref = await self._find_folder(ref, create=False)
            self.folder_url = f"{self.base}/mailFolders/{quote(ref, safe='')}"
        return self.folder_url

    async def _list_ids(self) -> list[str]:
        """The ids of the messages to handle now; the drafts among those listed are left out."""
        folder_url = await self._folder_url()
        if self.state.delta_supported:
            try:
                return self._leave_drafts(await self._delta_items(folder_url), every=False)
            except GraphError as exc:
                if self.state.delta_link is None and exc.status in (400, 404, 405, 501):
                    log.warning("graph: delta query not available (%s); listing the folder every round", exc)
                    self.state.delta_supported = False
                elif exc.status == 410 or exc.code.lower() in BAD_DELTA_CODES:
                    log.info("graph: delta link no longer valid (%s); listing the whole folder", exc)
                else:
                    raise
                self.state.delta_link = None
        return self._leave_drafts(await self._full_items(folder_url), every=True)

    def _leave_drafts(self, listed: dict[str, bool], *, every: bool) -> list[str]:
        """The ids of ``listed`` (id -> isDraft) that are not drafts. A draft is said once,
        the first time it is passed over; ``every``: the listing is the whole folder, so a
        draft it lacks is gone."""
        drafts = {message_id for message_id, draft in listed.items() if draft}
        for message_id in sorted(drafts - self.state.drafts):
            log.info("graph message %s draft: left alone, unread (a draft was never received)", message_id)
        self.state.drafts = drafts if every else (self.state.drafts - listed.keys()) | drafts
        self.state.pending_ids -= drafts
        return [message_id for message_id, draft in listed.items() if not draft]

    async def _delta_items(self, folder_url: str) -> dict[str, bool]:
        """What changed since the last round: id -> isDraft, in order, each once (a message
        changed twice shows twice); a message gone is forgotten."""
        url: str | URL = self.state.delta_link or URL(folder_url + "/messages/delta").with_query(LISTED)
        items: dict[str, bool] = {}
        for _ in range(MAX_PAGES):
            page = await self._json("GET", url)
            for item in page.get("value", []):
                if "@removed" in item:
                    gone = str(item.get("id"))
                    self.state.kept_ids.discard(gone)  # gone: no need to remember it
                    self.state.drafts.discard(gone)
                elif item.get("id") and not self._kept(item):
                    items[str(item["id"])] = _is_draft(item)
            if "@odata.nextLink" in page:
                url = str(page["@odata.nextLink"])
                continue
            if "@odata.deltaLink" in page:
                self.state.delta_link = str(page["@odata.deltaLink"])
            return items
        raise GraphError(200, "tooManyPages", "the delta query did not end")

    async def _full_items(self, folder_url: str) -> dict[str, bool]:
        """Every message in the folder: id -> isDraft."""
        query = {**LISTED, "$top": str(PAGE_SIZE)}
        url: str | URL = URL(folder_url + "/messages").with_query(query)
        items: dict[str, bool] = {}
        for _ in range(MAX_PAGES):
            page = await self._json("GET", url)
            items.update(
                (str(m["id"]), _is_draft(m)) for m in page.get("value", []) if m.get("id") and not self._kept(m)
            )
            if "@odata.nextLink" not in page:
                return items
            url = str(page["@odata.nextLink"])
        raise GraphError(200, "tooManyPages", "the folder listing did not end")

    def _kept(self, item: dict[str, Any]) -> bool:
        """Disposition "keep": a flagged message was filed (by us, or flagged by a person, as
        IMAP searches UNFLAGGED) and is never read again. Its claim is forgotten after a week
        (``CLAIMS_KEPT``) and ``kept_ids`` at a restart, but the flag stays in the mailbox: else
        a reply that acted would be read again and its owner told it was refused (expired)."""
        if self.config.disposition != "keep" or not _is_flagged(item):
            return False
        self.state.pending_ids.discard(str(item["id"]))
        return True

    # -- one message ------------------------------------------------------------------------

    def _claimed(self, message_id: str) -> MailboxMessage:
        """The message as the store's claims name it: Graph's ids are opaque and may be long,
        so a digest of the id stands in for IMAP's UID (an id is stable while the message
        stays in this folder; a move gives it a new one, elsewhere)."""
        digest = hashlib.sha256(message_id.encode()).hexdigest()
        return MailboxMessage(f"{self.mailbox}#{digest}", 0, 0)

    async def _handle(self, message_id: str) -> Handled:
        """Claim, fetch, decide, file (``MessageClaims``)."""
        message_url = f"{self.base}/messages/{quote(message_id, safe='')}"

        async def fetch() -> bytes | None:
            try:
                return await self._bytes(message_url + "/$value", self.claims.pipeline.message_limit + 1)
            except GraphError as exc:
                if exc.status != 404:
                    raise
                return None  # gone: someone else filed it

        async def file(disposition: str) -> str:
            return await self._file(message_url, message_id, disposition)

        return await self.claims.handle(self._claimed(message_id), f"message {message_id}", fetch, file)

    async def _file(self, message_url: str, message_id: str, handled_as: str) -> str:
        """Dispose of a handled message as configured; returns what was done, for the log."""
        disposition = self.config.disposition
        if disposition == "delete":
            await self._ignore_gone("DELETE", message_url)
            return "deleted"
        if disposition == "keep":
            await self._ignore_gone("PATCH", message_url, {"flag": {"flagStatus": "flagged"}})
            self.state.kept_ids.add(message_id)
            return "flagged"
        name = self.config.processed_folder if handled_as == "processed" else self.config.rejected_folder
        for attempt in range(2):
            folder_id = await self._find_folder(name, create=True)
            try:
                await self._ignore_gone("POST", message_url + "/move", {"destinationId": folder_id})
                return f"moved to {name}"
            except GraphError as exc:
                if exc.status == 404 and await self._gone(message_url):
                    # Moved by an earlier move whose answer was lost (the message has a new
                    # id there), or filed by someone else: nothing is left to file.
                    log.info("graph: POST %s/move: message already gone from the folder", message_url)
                    return f"already gone (moved to {name} before, or filed elsewhere)"
                # Else a 400/404 most likely means the folder was deleted since we cached its id.
                if attempt or exc.status not in (400, 404):
                    raise
                self.state.folder_ids.pop(name, None)
            except TemporaryFailure as lost:
                # No answer (the connection closed, a timeout): the move may be done all the
                # same. Gone from the folder, it is; else (or Graph cannot say) the next round
                # moves it again, and a 404 then is read as above.
                try:
                    gone = await self._gone(message_url)
                except TemporaryFailure:
                    raise lost from None
                if not gone:
                    raise
                log.info("graph: POST %s/move: no answer, and the message is gone from the folder", message_url)
                return f"moved to {name} (its answer was lost; the message is gone from the folder)"
        raise AssertionError("unreachable")

    async def _gone(self, message_url: str) -> bool:
        """Whether the message no longer exists under its id (GET answers 404), as IMAP's
        ``_ok_unless_gone`` takes a UID the server no longer has: a move's 404 names either
        the message or the destination, and only this read tells them apart."""
        try:
            await self._call("GET", URL(message_url, encoded=True).with_query({"$select": "id"}))
        except GraphError as exc:
            if exc.status == 404:
                return True
            raise
        return False

    async def _ignore_gone(self, method: str, url: str, body: dict[str, Any] | None = None) -> None:
        """A message already gone from the folder needs no filing."""
        try:
            await self._call(method, url, body)
        except GraphError as exc:
            if exc.status != 404 or method == "POST":
                raise
            log.info("graph: %s %s: message already gone", method, url)

    async def _find_folder(self, name: str, *, create: bool) -> str:
        """The id of the top-level folder called ``name``, created when ``create`` and missing."""
        if name in self.state.folder_ids:
            return self.state.folder_ids[name]
        escaped = name.replace("'", "''")  # OData string literal
        url = URL(f"{self.base}/mailFolders").with_query({"$filter": f"displayName eq '{escaped}'"})
        page = await self._json("GET", url)
        found = [f for f in page.get("value", []) if f.get("displayName") == name and f.get("id")]
        if found:
            folder_id = str(found[0]["id"])
        elif not create:
            raise GraphError(404, "folderNotFound", f"no folder {name!r} under the mailbox root")
        else:
            try:
                folder_id = str((await self._json("POST", f"{self.base}/mailFolders", {"displayName": name}))["id"])
                log.info("graph: created folder %r", name)
            except GraphError as exc:
                if exc.status != 409:  # someone created it meanwhile
                    raise
                return await self._find_folder(name, create=False)
        self.state.folder_ids[name] = folder_id
        return folder_id

    # -- HTTP -------------------------------------------------------------------------------

    async def _json(self, method: str, url: str | URL, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JSON object answer (a listing page, a folder), of at most ``JSON_BODY`` bytes: a
        64 MiB page stalled the loop 1.3 s as it was parsed. (Parsing in a thread would not
        help: json holds the interpreter lock throughout, the loop waits all the same.)"""
        data = await self._call(method, url, body, bound=JSON_BODY)
        try:
            parsed = json.loads(data)
        except ValueError:
            raise GraphError(502, "badJson", f"{method} {url} did not answer JSON") from None
        if not isinstance(parsed, dict):
            raise GraphError(502, "badJson", f"{method} {url} did not answer a JSON object")
        return parsed

    async def _bytes(self, url: str, limit: int) -> bytes:
        return await self._call("GET", url, limit=limit)

    async def _call(
        self,
        method: str,
        url: str | URL,
        body: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
        bound: int = LARGE_BODY,
    ) -> bytes:
        """One Graph call, honouring 429/503 Retry-After (bounded) and renewing the token once on 401.
        A 2xx body is read up to ``limit`` bytes (a message: what is past it is never read);
        without one, a 2xx body over ``bound`` bytes is no answer."""
        target = url if isinstance(url, URL) else URL(url, encoded=True)
        throttled = 0
        renewed = False
        while True:
            headers = {"Authorization": f"Bearer {await self.tokens.access_token()}"}
            try:
                async with self.session.request(method, target, json=body, headers=headers) as response:
                    status = response.status
                    data = await _read(response, limit if status < 300 else None, bound)
                    retry_after = response.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise TemporaryFailure(f"Graph {method} {target.path}: {type(exc).__name__}: {exc}") from None
            if status < 300:
                return data
            if status in (429, 503) and throttled < MAX_THROTTLE_RETRIES:
                throttled += 1
                delay = _retry_after(retry_after)
                log.info("graph: %s %s throttled (%s); retrying in %.0fs", method, target.path, status, delay)
                await asyncio.sleep(delay)
                continue
            if status == 401 and not renewed:
                renewed = True
                self.tokens.invalidate()
                continue
            code, message = _error(data)
            raise GraphError(status, code, message)


# A listing page or folder (ids and flags: 50 to a page, some 10 KiB): a body past this is
# no answer (parsed, 2 MiB holds the loop some 30 ms).
JSON_BODY = 2 * 1024 * 1024


async def _read(response: aiohttp.ClientResponse, limit: int | None, bound: int = LARGE_BODY) -> bytes:
    """The body, or its first ``limit`` bytes (the connection is dropped on the rest).
    Without ``limit`` (JSON, an error), at most ``bound`` (an error: ``SMALL_BODY``), else no answer."""
    if limit is None:
        return await read_body(response, bound if response.status < 300 else SMALL_BODY)
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) >= limit:
            break
    return bytes(data[:limit])


def _is_draft(item: dict[str, Any]) -> bool:
    """Graph's ``isDraft``: only ``true`` is a draft (a server that leaves it out lists mail, as before)."""
    return item.get("isDraft") is True


def _is_flagged(item: dict[str, Any]) -> bool:
    """Graph's ``flag.flagStatus``: ``flagged`` is what "keep" sets (``notFlagged`` and
    ``complete`` are not it)."""
    flag = item.get("flag")
    return isinstance(flag, dict) and flag.get("flagStatus") == "flagged"


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (Graph sends delta-seconds); an HTTP-date or junk gets the default."""
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value else DEFAULT_RETRY_AFTER
    except ValueError:
        return DEFAULT_RETRY_AFTER


def _error(data: bytes) -> tuple[str, str]:
    """Graph's ``{"error": {"code", "message"}}``, tolerating anything else."""
    try:
        error = json.loads(data).get("error", {})
        return str(error.get("code", "unknown")), str(error.get("message", ""))[:300]
    except (ValueError, AttributeError):
        return "unknown", data[:200].decode("utf-8", "replace")


@MAILBOX_SOURCES.register(SOURCE)
def create(config: MailboxConfig, pipeline: Pipeline) -> GraphPoller:
    """``[mailbox] source = "graph"``: its keys are [mailbox.graph]."""
    for key in ("tenant_id", "client_id", "user"):
        if not getattr(config.graph, key):
            raise ConfigError(f"config key mailbox.graph.{key}: source 'graph' needs it")
    return GraphPoller(config, pipeline)
