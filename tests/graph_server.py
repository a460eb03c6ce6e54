"""A local stand-in for Microsoft Graph v1.0 mail and the Microsoft identity platform token
endpoint. No real Graph can run here, so this follows Microsoft's documented API for the calls
rc-mta makes — URL shapes, JSON envelopes (``value``, ``@odata.nextLink``, ``@odata.deltaLink``,
``@removed``), status codes, ``{"error": {"code", "message"}}`` bodies, Retry-After on 429/503,
bearer tokens checked on every call — and nothing more. Runs aiohttp in a background thread.

Change notifications follow the documented webhook API too: ``POST /subscriptions`` first
POSTs ``?validationToken=...`` (text/plain) to the notificationUrl and the
lifecycleNotificationUrl and refuses the subscription (400 ValidationError) unless each
answers 200 with exactly that token within 10 s; the expiry may not pass
``max_subscription_lifetime`` (4230 minutes for mail); ``PATCH /subscriptions/{id}`` renews,
``DELETE`` removes, an expired subscription is gone (404). A message created in a subscribed
folder is announced by a changeNotificationCollection POSTed to the notificationUrl, carrying
the subscription's clientState and no message content. ``send_lifecycle()`` sends a lifecycle
notification (reauthorizationRequired, subscriptionRemoved, missed). One deviation: Graph
requires an https:// notificationUrl; the tests have no TLS, so http://127.0.0.1 is accepted.

A message's JSON carries ``isDraft`` (the v1.0 message resource: "a message is a draft if it
hasn't been sent yet"; read-only, kept by a move), and a listing or a delta honours ``$select``
as a GET does, ``id`` always returned (the "message: delta" page: it supports ``$select``).
Graph's ``POST /messages`` with MIME creates a draft of whatever headers it is given ("Create
message"), and a mail client saves an unsent reply as one: ``add_message(draft=True)`` stands
in for both, rather than serving that POST.

``deliver()`` stores a message as Exchange Online hands it to Graph's ``/$value``, where
``add_message()`` stores it as given (a message appended to the mailbox). What real Exchange
Online does, and where it is shown (README, "Exchange Online", has the list of sources):

- At its edge (``*.mail.protection.outlook.com``), a message from the Internet gets, above
  the Received field of that hand-over, ``Received-SPF: ... receiver=protection.outlook.com``
  and its Authentication-Results, which name no authserv-id (``spf=pass (sender IP is
  209.85.220.41) smtp.mailfrom=example.com; dkim=pass (signature was verified)
  header.d=example.com;dmarc=pass action=none header.from=example.com;compauth=pass
  reason=100``; lately some tenants get ``mx.microsoft.com 1;`` in front); then its own
  internal hops prepend their Received fields (``by *.outlook.office365.com``, ``by
  *.prod.outlook.com``). Samples: messages Exchange Online delivered, quoted in public
  repositories (a Proofpoint-fronted tenant's, and Microsoft's own tenant's in a bounce).
- Every Authentication-Results already in the message is renamed
  Authentication-Results-Original (the same Proofpoint-fronted sample).
- Its header firewall removes the ``X-MS-Exchange-Organization-*`` fields of a message that
  enters from an untrusted source (Exchange's "Header firewall" documentation), and Exchange
  writes its own at the end of the header block: ``AuthAs: Anonymous`` for the Internet,
  ``AuthAs: Internal`` for mail a user of the organization submitted, with ``AuthMechanism``
  and ``AuthSource`` (Graph's "Get MIME content of a message" example; delivered samples).
- A colleague's message (Outlook, over MAPI) is not DKIM-signed and gets no SPF verdict:
  its Received fields are Exchange's own (``with mapi id``, then ``via Mailbox Transport``),
  and Exchange notes ``dkim=none (message not signed) header.d=none;dmarc=none action=none``.
- Outlook does not store messages as MIME (Graph's documentation): ``/$value`` is MIME made
  again from what Exchange stored, which can re-encode a body and so break its sender's
  DKIM signature (``rewrites_body``).

Two knobs exist only to test defences: ``header_firewall=False`` keeps the sender's
``X-MS-Exchange-Organization-*`` fields (as if the firewall had failed) and ``own_mark=False``
leaves out Exchange's own.
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from appthread import AppThread

ROOT_ID = "AAMkRoot" + "A" * 8 + "="
WELL_KNOWN = {"inbox": "Inbox", "deleteditems": "Deleted Items", "msgfolderroot": ""}


def _new_id(prefix: str = "AAMkAGI") -> str:
    """Graph ids are opaque base64-ish strings; these include '=', '-' and '_' like the real ones."""
    return prefix + base64.urlsafe_b64encode(secrets.token_bytes(24)).decode() + "="


EXO_MAILBOX = "DM4PR12MB6448.namprd12.prod.outlook.com"
EXO_FRONTEND = "BN1PR10CA0002.outlook.office365.com"
EXO_EDGE = "BN1PEPF00004687.mail.protection.outlook.com"
EXO_ORGANIZATION_FIELD = re.compile(rb"^x-ms-exchange-organization-[^:]*:", re.IGNORECASE)


def _fields_and_body(raw: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its continuation lines and line ends) and the rest."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, body


def _rewrite_body(fields: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    """A single-part text body as Exchange may write it again: base64, the same text."""
    encoding = b"Content-Transfer-Encoding: base64\r\n"
    kept = [f for f in fields if not f.lower().startswith(b"content-transfer-encoding:")]
    text = body.replace(b"\r\n", b"\n").decode()
    encoded = base64.encodebytes(text.replace("\n", "\r\n").encode()).replace(b"\n", b"\r\n")
    return [*kept, encoding], encoded


def exchange_online_delivery(
    raw: bytes,
    *,
    internal: bool = False,
    authentication_results: str = "",
    client_ip: str = "203.0.113.25",
    helo: str = "mail.example.net",
    header_firewall: bool = True,
    own_mark: bool = True,
    rewrites_body: bool = False,
) -> bytes:
    """``raw`` (CRLF line ends) as Exchange Online stores it in a mailbox and Graph serves it:
    from a user of the tenant (``internal``), or from the Internet at ``client_ip``/``helo``
    with Exchange's ``authentication_results`` value (see the module's docstring)."""
    when = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    server = "Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)"
    fields, body = _fields_and_body(raw)
    if rewrites_body:
        fields, body = _rewrite_body(fields, body)
    if internal:
        from_header = next((f for f in fields if f.lower().startswith(b"from:")), b"")
        domain = from_header.rsplit(b"@", 1)[-1].strip().rstrip(b">").decode()
        top = [
            f"Received: from {EXO_MAILBOX} (2603:10b6:8:8a::7) by {EXO_MAILBOX}\r\n"
            f" (2603:10b6:8:8a::7) with {server} id 15.20.8511.27 via Mailbox Transport; {when}",
            f"Authentication-Results: dkim=none (message not signed)\r\n"
            f" header.d=none;dmarc=none action=none header.from={domain};",
            f"Received: from {EXO_MAILBOX} ([fe80::5bf:5059:4ca0:5017]) by\r\n"
            f" {EXO_MAILBOX} ([fe80::5bf:5059:4ca0:5017%4]) with mapi id 15.20.8511.027; {when}",
        ]
        marks = [("AuthAs", "Internal"), ("AuthMechanism", "04"), ("AuthSource", EXO_MAILBOX), ("SCL", "-1")]
    else:
        found = re.search(r"smtp\.mailfrom=([^;\s]+)", authentication_results)
        mailfrom = found.group(1) if found else helo
        passed = "spf=pass" in authentication_results
        says = "designates" if passed else "does not designate"
        spf = f"{'Pass' if passed else 'Fail'} (protection.outlook.com: domain of {mailfrom} {says}\r\n"
        spf += f" {client_ip} as permitted sender)"
        top = [
            f"Received: from {EXO_FRONTEND} (2603:10b6:408:e0::7) by {EXO_MAILBOX}\r\n"
            f" (2603:10b6:8:8a::7) with {server} id 15.20.8511.27; {when}",
            f"Received: from {EXO_EDGE} (2603:10b6:408:e0:cafe::b7) by\r\n"
            f" {EXO_FRONTEND} (2603:10b6:408:e0::7) with {server} id 15.20.8534.21 via\r\n"
            f" Frontend Transport; {when}",
            f"Authentication-Results: {authentication_results}",
            f"Received-SPF: {spf}\r\n receiver=protection.outlook.com; client-ip={client_ip}; helo={helo};",
            f"Received: from {helo} ({client_ip}) by {EXO_EDGE} (10.167.243.132) with\r\n"
            f" {server} id 15.20.8534.20 via Frontend Transport; {when}",
        ]
        marks = [("AuthSource", EXO_EDGE), ("AuthAs", "Anonymous"), ("SCL", "1")]
        renamed = []
        for field_ in fields:
            if header_firewall and EXO_ORGANIZATION_FIELD.match(field_):
                continue
            if field_.lower().startswith(b"authentication-results:"):
                field_ = b"Authentication-Results-Original:" + field_.split(b":", 1)[1]
            renamed.append(field_)
        fields = renamed
    stamped = [f"X-MS-Exchange-Organization-{name}: {value}\r\n".encode() for name, value in marks]
    head = [f"{line}\r\n".encode() for line in top] + fields + (stamped if own_mark else [])
    return b"".join(head) + b"\r\n" + body


@dataclass
class Folder:
    id: str
    display_name: str
    parent_id: str
    well_known: str = ""


@dataclass
class Message:
    id: str
    raw: bytes
    folder_id: str
    changed: int
    flag: str = "notFlagged"
    draft: bool = False  # isDraft: saved, never sent (read-only in Graph)

    def resource(self) -> dict[str, Any]:
        return {
            "@odata.etag": f'W/"{self.changed}"',
            "id": self.id,
            "parentFolderId": self.folder_id,
            "isDraft": self.draft,
            "flag": {"flagStatus": self.flag},
        }


@dataclass
class Token:
    value: str
    expires_at: float


@dataclass
class Subscription:
    id: str
    resource: str
    folder_id: str
    change_types: frozenset[str]
    notification_url: str
    lifecycle_url: str
    client_state: str | None
    expires_at: float

    def resource_json(self, application_id: str) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": application_id,
            "changeType": ",".join(sorted(self.change_types)),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url or None,
            "expirationDateTime": graph_time(self.expires_at),
            "creatorId": application_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


def graph_time(timestamp: float) -> str:
    """Graph's timestamps: UTC, seven fractional digits, Z."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def parse_graph_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)", value)
    if match is None:
        return None
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    fraction = (match.group(2) or "0")[:6]
    return datetime.fromisoformat(f"{match.group(1)}.{fraction.ljust(6, '0')}{zone}").timestamp()


async def _json_or_none(request: web.Request) -> Any:
    """The request's JSON body, or None when it is not JSON (the handler says what it wanted)."""
    try:
        return await request.json()
    except ValueError:
        return None


# The mail resources a subscription may name here: a folder's messages.
_RESOURCE = re.compile(r"/?(?:users|Users)/([^/]+)/mailFolders(?:\('([^']+)'\)|/([^/()]+))/messages")
VALIDATION_TIMEOUT = 10.0  # Graph's: the endpoint must echo the token within 10 seconds


@dataclass
class Failures:
    remaining: int = 0
    status: int = 429
    retry_after: str | None = "1"
    route: str = ""  # only calls whose "METHOD /route" ends with this


@dataclass
class GraphServer:
    """Knobs: add_message() (draft=True for a draft), throttle(), fail_token_endpoint(), token_lifetime, page_size,
    expire_delta_links(), revoke_tokens(), lost_move_answers, taken_after_read; observation: calls, folder(),
    tokens_issued."""

    tenant_id: str = "t1"
    client_id: str = "c1"
    client_secret: str = "s1"
    user: str = "replies@example.com"
    token_lifetime: int = 3600
    page_size: int = 10
    rotate_refresh_tokens: bool = True
    calls: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0
    unauthorized: int = 0  # Graph calls answered 401
    throttled: int = 0  # Graph calls answered 429/503 by throttle()
    grants: list[str] = field(default_factory=list)
    refresh_tokens: set[str] = field(default_factory=set)
    max_subscription_lifetime: float = 4230 * 60.0  # Outlook messages: 4230 minutes
    # Observation: every POST to a subscriber, (kind, url, HTTP status or -1 when unreachable).
    deliveries: list[tuple[str, str, int]] = field(default_factory=list)
    validations_refused: int = 0
    # The next N moves are done, but their connection closes without an answer (a lost 201).
    lost_move_answers: int = 0
    # The next N messages read (/$value) are deleted by a person right after, before rc-mta files them.
    taken_after_read: int = 0

    def __post_init__(self) -> None:
        self.port = 0
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._folders: dict[str, Folder] = {ROOT_ID: Folder(ROOT_ID, "", "", "msgfolderroot")}
        for name, display in WELL_KNOWN.items():
            if name != "msgfolderroot":
                folder_id = _new_id("AAMkFolder")
                self._folders[folder_id] = Folder(folder_id, display, ROOT_ID, name)
        self._messages: dict[str, Message] = {}
        self._removed: list[tuple[int, str, str]] = []  # (seq, folder id, message id)
        self._tokens: dict[str, Token] = {}
        self._failures = Failures()
        self._token_failures = Failures(status=503)
        self._delta_floor = 0  # delta tokens below this answer 410 (sync state lost)
        self._pending_pages: dict[str, list[dict[str, Any]]] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._server: AppThread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> GraphServer:
        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        graph = "/v1.0/users/{user}"
        app.router.add_get(graph + "/mailFolders", self._list_folders)
        app.router.add_post(graph + "/mailFolders", self._create_folder)
        app.router.add_get(graph + "/mailFolders/{folder}/messages", self._list_messages)
        app.router.add_get(graph + "/mailFolders/{folder}/messages/delta", self._delta)
        app.router.add_get(graph + "/messages/{id}/$value", self._mime)
        app.router.add_get(graph + "/messages/{id}", self._get_message)
        app.router.add_post(graph + "/messages/{id}/move", self._move)
        app.router.add_patch(graph + "/messages/{id}", self._update)
        app.router.add_delete(graph + "/messages/{id}", self._delete)
        app.router.add_post("/v1.0/subscriptions", self._subscribe)
        app.router.add_patch("/v1.0/subscriptions/{sid}", self._renew)
        app.router.add_delete("/v1.0/subscriptions/{sid}", self._unsubscribe)
        self._server = AppThread(app, "graph-server")
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1.0"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{{tenant_id}}/oauth2/v2.0/token"

    # -- knobs ------------------------------------------------------------------------------

    def add_message(self, raw: bytes, folder: str = "inbox", *, notify: bool = True, draft: bool = False) -> str:
        """Deliver raw MIME into a folder (well-known name or display name); returns its id.
        ``draft``: saved there as a draft instead (``isDraft``), as ``POST .../messages`` with
        MIME or a mail client's unsent reply would, headers and all as given."""
        return self.add_messages([raw], folder, notify=notify, draft=draft)[0]

    def deliver(self, raw: bytes, **exchange: Any) -> str:
        """Deliver ``raw`` to the inbox as Exchange Online would (``exchange_online_delivery``)."""
        return self.add_message(exchange_online_delivery(raw, **exchange))

    def add_messages(
        self, raws: list[bytes], folder: str = "inbox", *, notify: bool = True, draft: bool = False
    ) -> list[str]:
        """Deliver several at once, so that no listing sees only some of them; subscribers
        to the folder are notified (unless ``notify`` is False: a notification Graph lost)."""
        with self._lock:
            messages = []
            for raw in raws:
                message = Message(_new_id(), raw, self._resolve(folder).id, next(self._seq), draft=draft)
                self._messages[message.id] = message
                messages.append(message)
            if notify:
                for message in messages:
                    self._announce(message)
            return [m.id for m in messages]

    def throttle(self, calls: int, status: int = 429, retry_after: str | None = "1", route: str = "") -> None:
        """The next ``calls`` Graph calls (to a route ending in ``route``) answer ``status``
        with this Retry-After."""
        with self._lock:
            self._failures = Failures(calls, status, retry_after, route)

    def fail_token_endpoint(self, calls: int, status: int = 503) -> None:
        with self._lock:
            self._token_failures = Failures(calls, status, None)

    def revoke_tokens(self) -> None:
        """Every access token issued so far stops working (as after a password reset)."""
        with self._lock:
            self._tokens.clear()

    def expire_delta_links(self) -> None:
        """Every delta link issued so far answers 410 Gone, as when the sync state is lost."""
        with self._lock:
            self._delta_floor = next(self._seq)

    def folder(self, name: str) -> list[Message]:
        """The messages now in a folder (well-known or display name); empty when it doesn't exist."""
        with self._lock:
            try:
                folder_id = self._resolve(name).id
            except KeyError:
                return []
            return [m for m in self._messages.values() if m.folder_id == folder_id]

    def subscriptions(self) -> list[Subscription]:
        """The subscriptions alive now (an expired one is gone)."""
        with self._lock:
            self._expire_subscriptions()
            return list(self._subscriptions.values())

    def forget_subscriptions(self) -> None:
        """Every subscription is gone without a word, as when Graph loses one: renewals 404."""
        with self._lock:
            self._subscriptions.clear()

    def send_lifecycle(self, event: str, subscription_id: str | None = None) -> None:
        """Post a lifecycle notification for a subscription (default: the only one), as Graph
        does; ``subscriptionRemoved`` also removes it."""
        with self._lock:
            self._expire_subscriptions()
            subscription = (
                self._subscriptions[subscription_id] if subscription_id else next(iter(self._subscriptions.values()))
            )
            if event == "subscriptionRemoved":
                del self._subscriptions[subscription.id]
            item = {
                "subscriptionId": subscription.id,
                "subscriptionExpirationDateTime": graph_time(subscription.expires_at),
                "tenantId": self.tenant_id,
                "clientState": subscription.client_state,
                "lifecycleEvent": event,
            }
            url = subscription.lifecycle_url or subscription.notification_url
        self._post_soon("lifecycle", url, {"value": [item]})

    def count(self, method: str, suffix: str) -> int:
        """How many calls of ``method`` to a route ending in ``suffix`` (e.g. 'GET', '/$value')."""
        return sum(n for key, n in self.calls.items() if key.startswith(method + " ") and key.endswith(suffix))

    # -- helpers ----------------------------------------------------------------------------

    def _resolve(self, ref: str) -> Folder:
        """A folder by id, well-known name or display name (the last only for test knobs)."""
        if ref in self._folders:
            return self._folders[ref]
        for folder in self._folders.values():
            if folder.well_known and folder.well_known == ref.lower():
                return folder
        for folder in self._folders.values():
            if folder.display_name == ref:
                return folder
        raise KeyError(ref)

    @staticmethod
    def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)

    def _gate(self, request: web.Request) -> web.Response | None:
        """What Graph does before any resource: count, throttle, authenticate, find the user."""
        route = request.match_info.route.resource
        key = f"{request.method} {route.canonical if route else request.path}"
        self.calls[key] += 1
        if self._failures.remaining > 0 and key.endswith(self._failures.route):
            self.throttled += 1
            self._failures.remaining -= 1
            headers = {"Retry-After": self._failures.retry_after} if self._failures.retry_after else {}
            if self._failures.status == 429:
                return self._error(429, "TooManyRequests", "Application is over its MailboxConcurrency limit.", headers)
            return self._error(self._failures.status, "ServiceUnavailable", "Service is unavailable.", headers)
        auth = request.headers.get("Authorization", "")
        token = self._tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if token is None or token.expires_at < time.time():
            self.unauthorized += 1
            return self._error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
        if "user" in request.match_info and request.match_info["user"].lower() != self.user.lower():
            return self._error(404, "ErrorInvalidUser", "The requested user is invalid.")
        return None

    def _gated_message(self, request: web.Request) -> Message | web.Response:
        """The gate, then the message the path names: what every /messages/{id} call does first."""
        if (denied := self._gate(request)) is not None:
            return denied
        message = self._messages.get(request.match_info["id"])
        if message is None:
            return self._error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return message

    def _folder_resource(self, folder: Folder) -> dict[str, Any]:
        inside = [m for m in self._messages.values() if m.folder_id == folder.id]
        return {
            "id": folder.id,
            "displayName": folder.display_name,
            "parentFolderId": folder.parent_id,
            "childFolderCount": sum(1 for f in self._folders.values() if f.parent_id == folder.id),
            "totalItemCount": len(inside),
            "unreadItemCount": len(inside),
        }

    # -- change notifications ---------------------------------------------------------------

    def _expire_subscriptions(self) -> None:
        now = time.time()
        for subscription in [s for s in self._subscriptions.values() if s.expires_at <= now]:
            del self._subscriptions[subscription.id]

    def _announce(self, message: Message) -> None:
        """A changeNotificationCollection per subscriber to the message's folder (lock held)."""
        self._expire_subscriptions()
        for subscription in self._subscriptions.values():
            if subscription.folder_id != message.folder_id or "created" not in subscription.change_types:
                continue
            path = f"Users/{self.user}/Messages/{message.id}"
            item = {
                "subscriptionId": subscription.id,
                "subscriptionExpirationDateTime": graph_time(subscription.expires_at),
                "changeType": "created",
                "resource": path,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Message",
                    "@odata.id": path,
                    "@odata.etag": f'W/"{message.changed}"',
                    "id": message.id,
                },
                "clientState": subscription.client_state,
                "tenantId": self.tenant_id,
            }
            self._post_soon("change", subscription.notification_url, {"value": [item]})

    def _post_soon(self, kind: str, url: str, body: dict[str, Any]) -> None:
        """Deliver from the server's loop, after the call that caused it has returned."""
        if self._server is not None:
            self._server.submit(self._post_notification(kind, url, body))

    async def _post_notification(self, kind: str, url: str, body: dict[str, Any]) -> None:
        # Graph expects an answer within 3 seconds; slower endpoints get dropped notifications.
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
                session.post(url, json=body) as response,
            ):
                status = response.status
        except (TimeoutError, aiohttp.ClientError):
            status = -1
        with self._lock:
            self.deliveries.append((kind, url, status))

    async def _validate_endpoint(self, url: str) -> bool:
        """Graph's handshake: POST ?validationToken=... and expect it back, 200 text/plain."""
        token = (
            f"Validation: Testing client application reachability for subscription Request-Id: {secrets.token_hex(16)}"
        )
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=VALIDATION_TIMEOUT)) as session,
                session.post(
                    url,
                    params={"validationToken": token},
                    data=b"",
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                ) as response,
            ):
                text = await response.text()
                ok = response.status == 200 and response.content_type == "text/plain" and text == token
                status = response.status
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError):
            ok, status = False, -1
        with self._lock:
            self.deliveries.append(("validation", url, status))
        return ok

    def _subscription_fields(self, body: Any) -> dict[str, Any] | web.Response:
        """The create request's fields, checked as Graph checks them."""
        if not isinstance(body, dict):
            return self._error(400, "InvalidRequest", "The request body must be a subscription.")
        change_types = frozenset(str(body.get("changeType", "")).split(","))
        if not change_types or not change_types <= {"created", "updated", "deleted"}:
            return self._error(400, "InvalidRequest", "changeType must be created, updated or deleted.")
        urls = [body.get("notificationUrl"), body.get("lifecycleNotificationUrl") or ""]
        for url in urls:
            if not isinstance(url, str) or (url and not url.startswith(("https://", "http://127.0.0.1"))):
                return self._error(400, "InvalidRequest", "The notification URL must use https.")
        if not urls[0]:
            return self._error(400, "InvalidRequest", "notificationUrl is required.")
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str) or len(client_state) > 128):
            return self._error(400, "InvalidRequest", "clientState may be at most 128 characters.")
        expires = self._expiry_or_error(body)
        if isinstance(expires, web.Response):
            return expires
        resource = body.get("resource")
        match = _RESOURCE.fullmatch(resource) if isinstance(resource, str) else None
        if match is None or match.group(1).lower() != self.user.lower():
            return self._error(400, "InvalidRequest", "Resource is not supported for change notifications.")
        try:
            folder = self._resolve_ref(match.group(2) or match.group(3))
        except KeyError:
            return self._error(404, "ResourceNotFound", "The specified folder was not found.")
        return {
            "resource": resource,
            "folder_id": folder.id,
            "change_types": change_types,
            "notification_url": urls[0],
            "lifecycle_url": urls[1],
            "client_state": client_state,
            "expires_at": expires,
        }

    def _resolve_ref(self, ref: str) -> Folder:
        """A folder as the API names it: its id or a well-known name."""
        folder = self._folders.get(ref) or next(
            (f for f in self._folders.values() if f.well_known == ref.lower()), None
        )
        if folder is None:
            raise KeyError(ref)
        return folder

    def _expiry_or_error(self, body: dict[str, Any]) -> float | web.Response:
        expires = parse_graph_time(body.get("expirationDateTime"))
        if expires is None:
            return self._error(400, "InvalidRequest", "expirationDateTime is required, in ISO 8601 UTC.")
        now = time.time()
        if expires <= now:
            return self._error(400, "InvalidRequest", "Subscription expiration must be in the future.")
        if expires > now + self.max_subscription_lifetime + 60:  # a minute's clock skew
            minutes = self.max_subscription_lifetime / 60
            return self._error(
                400, "InvalidRequest", f"Subscription expiration can only be {minutes:g} minutes in the future."
            )
        return expires

    async def _subscribe(self, request: web.Request) -> web.Response:
        """POST /subscriptions: validate the endpoints, then 201 with the subscription."""
        body = await _json_or_none(request)
        with self._lock:
            if (denied := self._gate(request)) is not None:
                return denied
            fields = self._subscription_fields(body)
            if isinstance(fields, web.Response):
                return fields
        for url in dict.fromkeys(u for u in (fields["notification_url"], fields["lifecycle_url"]) if u):
            if not await self._validate_endpoint(url):
                with self._lock:
                    self.validations_refused += 1
                return self._error(
                    400,
                    "ValidationError",
                    "Subscription validation request failed."
                    " Response must exactly match validationToken query parameter.",
                )
        with self._lock:
            subscription = Subscription(_new_id("sub-").rstrip("="), **fields)
            self._subscriptions[subscription.id] = subscription
            return web.json_response(subscription.resource_json(self.client_id), status=201)

    async def _renew(self, request: web.Request) -> web.Response:
        """PATCH /subscriptions/{id}: a new expirationDateTime (renewal, reauthorization)."""
        body = await _json_or_none(request)
        with self._lock:
            subscription = self._gated_subscription(request)
            if isinstance(subscription, web.Response):
                return subscription
            expires = self._expiry_or_error(body if isinstance(body, dict) else {})
            if isinstance(expires, web.Response):
                return expires
            subscription.expires_at = expires
            return web.json_response(subscription.resource_json(self.client_id))

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        with self._lock:
            subscription = self._gated_subscription(request)
            if isinstance(subscription, web.Response):
                return subscription
            del self._subscriptions[subscription.id]
            return web.Response(status=204)

    def _gated_subscription(self, request: web.Request) -> Subscription | web.Response:
        """The gate, then the live subscription the path names (lock held)."""
        if (denied := self._gate(request)) is not None:
            return denied
        self._expire_subscriptions()
        subscription = self._subscriptions.get(request.match_info["sid"])
        if subscription is None:
            return self._error(404, "ResourceNotFound", "The object was not found.")
        return subscription

    def _remove(self, message: Message) -> None:
        del self._messages[message.id]
        self._removed.append((next(self._seq), message.folder_id, message.id))

    # -- identity platform ------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        with self._lock:
            self.calls["POST token"] += 1
            if self._token_failures.remaining > 0:
                self._token_failures.remaining -= 1
                return web.json_response(
                    {"error": "temporarily_unavailable", "error_description": "AADSTS50196: try again"},
                    status=self._token_failures.status,
                )
            if request.match_info["tenant"] != self.tenant_id:
                return self._oauth_error(
                    "invalid_request", f"AADSTS90002: Tenant '{request.match_info['tenant']}' not found."
                )
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
                return self._oauth_error("invalid_client", "AADSTS7000215: Invalid client secret provided.")
            grant = str(form.get("grant_type", ""))
            scope = str(form.get("scope", ""))
            body: dict[str, Any] = {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
            }
            if grant == "client_credentials":
                if not scope.endswith("/.default"):
                    return self._oauth_error(
                        "invalid_scope", "AADSTS1002012: The provided value for scope is not valid."
                    )
            elif grant == "refresh_token":
                presented = str(form.get("refresh_token", ""))
                if presented not in self.refresh_tokens:
                    return self._oauth_error("invalid_grant", "AADSTS70000: The provided refresh token is invalid.")
                if self.rotate_refresh_tokens:
                    self.refresh_tokens.discard(presented)
                    rotated = "rt-" + secrets.token_urlsafe(16)
                    self.refresh_tokens.add(rotated)
                    body["refresh_token"] = rotated
                body["scope"] = scope
            else:
                return self._oauth_error("unsupported_grant_type", f"AADSTS70003: grant_type {grant!r} not supported.")
            value = "eyJ0eXAi." + secrets.token_urlsafe(24)
            self._tokens[value] = Token(value, time.time() + self.token_lifetime)
            self.tokens_issued += 1
            self.grants.append(grant)
            body["access_token"] = value
            return web.json_response(body)

    @staticmethod
    def _oauth_error(error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=400)

    # -- Graph mail -------------------------------------------------------------------------

    async def _list_folders(self, request: web.Request) -> web.Response:
        """GET /users/{id}/mailFolders: the folders directly under msgfolderroot, $filter on displayName."""
        with self._lock:
            if (denied := self._gate(request)) is not None:
                return denied
            folders = [f for f in self._folders.values() if f.parent_id == ROOT_ID]
            odata_filter = request.query.get("$filter")
            if odata_filter is not None:
                match = re.fullmatch(r"displayName eq '((?:[^']|'')*)'", odata_filter.strip())
                if match is None:
                    return self._error(
                        400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes."
                    )
                wanted = match.group(1).replace("''", "'")
                folders = [f for f in folders if f.display_name == wanted]
            return web.json_response({"value": [self._folder_resource(f) for f in folders]})

    async def _create_folder(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            if (denied := self._gate(request)) is not None:
                return denied
            name = body.get("displayName") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name:
                return self._error(400, "ErrorInvalidRequest", "displayName is required.")
            if any(f.parent_id == ROOT_ID and f.display_name == name for f in self._folders.values()):
                return self._error(409, "ErrorFolderExists", "A folder with the specified name already exists.")
            folder = Folder(_new_id("AAMkFolder"), name, ROOT_ID)
            self._folders[folder.id] = folder
            return web.json_response(self._folder_resource(folder), status=201)

    def _folder_or_error(self, request: web.Request) -> Folder | web.Response:
        try:
            return self._resolve_ref(request.match_info["folder"])
        except KeyError:
            return self._error(404, "ErrorItemNotFound", "The specified object was not found in the store.")

    async def _list_messages(self, request: web.Request) -> web.Response:
        """GET .../mailFolders/{id}/messages with $top and $skip; nextLink carries $skip."""
        with self._lock:
            if (denied := self._gate(request)) is not None:
                return denied
            folder = self._folder_or_error(request)
            if isinstance(folder, web.Response):
                return folder
            try:
                top = min(int(request.query.get("$top", "10")), 1000, self.page_size)
                skip = int(request.query.get("$skip", "0"))
            except ValueError:
                return self._error(400, "BadRequest", "Invalid $top or $skip.")
            inside = sorted((m for m in self._messages.values() if m.folder_id == folder.id), key=lambda m: -m.changed)
            page = inside[skip : skip + top]
            body: dict[str, Any] = {"value": [self._select(m.resource(), request) for m in page]}
            if skip + top < len(inside):
                query = {k: v for k, v in request.query.items() if k != "$skip"} | {"$skip": str(skip + top)}
                body["@odata.nextLink"] = str(request.url.with_query(query))
            return web.json_response(body)

    async def _delta(self, request: web.Request) -> web.Response:
        """GET .../messages/delta: first round lists everything, then only changes and @removed.
        Pages carry $skiptoken; the last page a $deltatoken for the next round."""
        with self._lock:
            if (denied := self._gate(request)) is not None:
                return denied
            folder = self._folder_or_error(request)
            if isinstance(folder, web.Response):
                return folder
            skiptoken = request.query.get("$skiptoken")
            if skiptoken is not None:
                items = self._pending_pages.pop(skiptoken, None)
                if items is None:
                    return self._error(400, "SyncStateInvalid", "The sync state is invalid.")
            else:
                deltatoken = request.query.get("$deltatoken")
                try:
                    since = int(deltatoken) if deltatoken is not None else 0
                except ValueError:
                    return self._error(400, "SyncStateInvalid", "The delta token is malformed.")
                if deltatoken is not None and since < self._delta_floor:
                    return self._error(410, "SyncStateNotFound", "The sync state has expired; resync.")
                items = [
                    self._select(m.resource(), request)
                    for m in sorted(self._messages.values(), key=lambda m: m.changed)
                    if m.folder_id == folder.id and m.changed > since
                ]
                if deltatoken is not None:
                    items += [
                        {"id": mid, "@removed": {"reason": "deleted"}}
                        for seq, fid, mid in self._removed
                        if fid == folder.id and seq > since
                    ]
                items.append({"@deltatoken": str(next(self._seq))})  # sentinel: where this round ends
            page, rest = items[: self.page_size], items[self.page_size :]
            body: dict[str, Any] = {"value": [i for i in page if "@deltatoken" not in i]}
            base = request.url.with_query({k: v for k, v in request.query.items() if not k.endswith("token")})
            if rest:
                token = secrets.token_urlsafe(12)
                self._pending_pages[token] = rest
                body["@odata.nextLink"] = str(base.update_query({"$skiptoken": token}))
            else:
                end = next(i for i in page if "@deltatoken" in i)["@deltatoken"]
                body["@odata.deltaLink"] = str(base.update_query({"$deltatoken": end}))
            return web.json_response(body)

    @staticmethod
    def _select(resource: dict[str, Any], request: web.Request) -> dict[str, Any]:
        wanted = request.query.get("$select")
        if not wanted:
            return resource
        fields = {f.strip() for f in wanted.split(",")} | {"id", "@odata.etag"}
        return {k: v for k, v in resource.items() if k in fields}

    async def _get_message(self, request: web.Request) -> web.Response:
        """GET /users/{id}/messages/{id}: the message resource ($select honoured), wherever it is
        filed; 404 ErrorItemNotFound once it was moved (it has a new id there) or deleted."""
        with self._lock:
            message = self._gated_message(request)
            if isinstance(message, web.Response):
                return message
            return web.json_response(self._select(message.resource(), request))

    async def _mime(self, request: web.Request) -> web.StreamResponse:
        """GET /users/{id}/messages/{id}/$value: the message's MIME content."""
        with self._lock:
            message = self._gated_message(request)
            if isinstance(message, web.Response):
                return message
            if self.taken_after_read > 0:
                self.taken_after_read -= 1
                self._remove(message)
            return web.Response(body=message.raw, content_type="message/rfc822")

    async def _move(self, request: web.Request) -> web.Response:
        """POST .../messages/{id}/move: a copy in the destination under a new id; 201 with it."""
        body = await request.json()
        with self._lock:
            message = self._gated_message(request)
            if isinstance(message, web.Response):
                return message
            destination = body.get("destinationId") if isinstance(body, dict) else None
            try:
                folder = self._resolve(str(destination)) if destination else None
            except KeyError:
                folder = None
            if folder is None or (destination not in self._folders and destination not in WELL_KNOWN):
                return self._error(404, "ErrorItemNotFound", "The specified destination folder was not found.")
            self._remove(message)
            moved = Message(_new_id(), message.raw, folder.id, next(self._seq), message.flag, message.draft)
            self._messages[moved.id] = moved
            lost = self.lost_move_answers > 0
            self.lost_move_answers -= lost
        if lost:
            assert request.transport is not None
            request.transport.close()  # moved; the answer never reaches the client
        return web.json_response(moved.resource(), status=201)

    async def _update(self, request: web.Request) -> web.Response:
        """PATCH /users/{id}/messages/{id}: only flag is writable here."""
        body = await request.json()
        with self._lock:
            message = self._gated_message(request)
            if isinstance(message, web.Response):
                return message
            flag = body.get("flag", {}).get("flagStatus") if isinstance(body, dict) else None
            if flag not in ("notFlagged", "flagged", "complete"):
                return self._error(400, "ErrorInvalidProperty", "Only flag.flagStatus can be updated here.")
            message.flag = flag
            message.changed = next(self._seq)
            return web.json_response(message.resource())

    async def _delete(self, request: web.Request) -> web.Response:
        """DELETE /users/{id}/messages/{id}: 204, the message is gone from its folder."""
        with self._lock:
            message = self._gated_message(request)
            if isinstance(message, web.Response):
                return message
            self._remove(message)
            return web.Response(status=204)
