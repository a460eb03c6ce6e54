"""The HTTP API workflow systems call (requests, tasks). Routes are added to the app that
also serves /metrics and health.

Every /v1 answer is JSON; every error has one shape, ``{"error": {"code", "message",
"details"?}}``, so a client needs one error handler. Bodies are validated by the same
pydantic models the OpenAPI document at ``/openapi.json`` is generated from, so the
document cannot drift from what the server accepts and answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from . import __version__
from .errors import RcMtaError, Refusal, TaskNotFound, TemporaryFailure
from .request_mail import MAX_DESCRIPTION_CHARS, RequestContext
from .shapes import Email, Link, TaskCreate, TaskId, TaskOut, Text, Timestamp, task_json
from .shapes import StrictBody as _Body
from .shapes import iso as _iso
from .shapes import iso_or_none as _iso_or_none
from .store import (
    IDEMPOTENCY_KEY_TTL,
    IDEMPOTENCY_LEASE,
    REQUEST_MAIL,
    STALE_CLAIM_SECONDS,
    Claim,
    Delivery,
    KeyState,
    OutboundMail,
    Request,
    Store,
    new_holder,
)

if TYPE_CHECKING:
    from .app import Service

log = logging.getLogger("rc_mta.api")

MAX_OWNERS = 20
MIN_EXPIRES_IN = 60
MAX_EXPIRES_IN = 90 * 86400

_REQUEST_ID = re.compile(r"[0-9a-f]{16}")
_GROUP_ID = r"^g-[0-9a-f]{16}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# An Idempotency-Key: an RFC 8941 sf-string (quoted) as the draft has it, or the bare
# token most clients send (Stripe's style); visible ASCII, at most 255 characters (a bare
# one without quote or backslash).
_IDEMPOTENCY_KEY = re.compile(r'"((?:[ !#-\[\]-~]|\\["\\]){1,255})"|([!#-\[\]-~]{1,255})')
_IDEMPOTENCY_KEY_PATTERN = f"^(?:{_IDEMPOTENCY_KEY.pattern})$"
# Where ``_authenticate`` leaves whose call it is: the key's scope.
_CLIENT = web.RequestKey("rc_mta_client", str)

# Paragraphs: line breaks and tabs, but no other control character.
Description = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_DESCRIPTION_CHARS, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]+$"),
]


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 3600.0 as an integer, so we do too; 3600.5 and "3600" stay wrong."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Seconds = Annotated[int, Field(ge=MIN_EXPIRES_IN, le=MAX_EXPIRES_IN), BeforeValidator(_whole_number)]
M = TypeVar("M", bound=BaseModel)
ErrorCode = Literal["not_found", "unauthorized", "invalid_request", "conflict", "key_reused", "unavailable", "internal"]


# Bodies ------------------------------------------------------------------------------------


class RequestCreate(_Body):
    """Mail a completion request for a task to one owner or to several (any one may answer)."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {"not": {"required": ["owner", "owners"]}},
                {"not": {"required": ["approvals", "approval_group"]}},
            ]
        }
    )

    task_id: TaskId
    owners: Annotated[list[Email], Field(min_length=1, max_length=MAX_OWNERS)] | None = Field(
        None, description="Who may answer; each gets their own signed addresses. Not together with owner."
    )
    owner: Email | None = Field(None, description="One owner. Without owner and owners: the task's owner.")
    title: Text | None = Field(None, description="The subject; default: the task's title.")
    context_title: Text | None = Field(None, description="Where the task lives (a release, a pipeline).")
    link: Link | None = Field(None, description="An http(s) link to the task, shown in the mail.")
    requested_by: Text | None = Field(None, description="Who asks for the decision, as the mail shows it.")
    due: AwareDatetime | None = Field(None, description="When the decision is due (with a time zone).")
    description: Description | None = Field(
        None, description="What the task is about: plain text, paragraphs separated by an empty line."
    )
    language: Literal["en", "de", "fr"] | None = Field(
        None, description="The mail's language; default: [outbound] language."
    )
    expires_in: Seconds | None = Field(
        None, description="Seconds until the reply addresses stop working; default: [signing] request_ttl."
    )
    approvals: (
        Annotated[int, Field(ge=1, le=MAX_OWNERS), BeforeValidator(_whole_number)] | Literal["any", "all"] | None
    ) = Field(
        None,
        description="How many owners must approve: any (one; the default), all, or a number (more than"
        " the owners means all). A fail from anyone fails the task; the task acts once, when the rule is met."
        " While such a group may still decide the task, a request outside it is refused (409).",
    )
    approval_group: Annotated[str, StringConstraints(pattern=_GROUP_ID)] | None = Field(
        None,
        description="Ask these owners in the task's undecided approval group (its id, as approval_group in an"
        " earlier answer), under its rule: as many approvals as it needed, from more people. Not together with"
        " approvals.",
    )

    @model_validator(mode="after")
    def _one_way_to_name_owners(self) -> RequestCreate:
        if {"owner", "owners"} <= self.model_fields_set:
            raise ValueError("give owner or owners, not both")
        if {"approvals", "approval_group"} <= self.model_fields_set:
            raise ValueError("give approvals (a new group) or approval_group (an existing one), not both")
        return self

    def needed(self, owners: int) -> int:
        """Approvals the task needs from ``owners`` owners (a new group's rule)."""
        if self.approvals is None or self.approvals == "any":
            return 1
        # More than there are owners is all of them: the answer's approvals_needed says so.
        return owners if self.approvals == "all" else min(self.approvals, owners)

    def recipients(self) -> list[str | None]:
        """Distinct owners, case-insensitively; [None] means the task's own owner."""
        named = self.owners if self.owners is not None else [self.owner] if self.owner is not None else []
        distinct: dict[str, str] = {}
        for address in named:
            distinct.setdefault(address.strip().lower(), address)
        return list(distinct) or [None]


# Answers -----------------------------------------------------------------------------------


class SentRequestOut(BaseModel):
    request_id: str
    owner: str
    message_id: str
    reply_to: str
    complete_address: str
    fail_address: str
    expires_at: Timestamp
    delivery: Delivery = Field(description="Where the mail is after the first attempt to send it.")
    last_answer: str | None = Field(description="The relay's answer to that attempt (or the file written).")


class RequestsCreated(BaseModel):
    task_id: str
    approvals_needed: int
    approval_group: str | None = Field(
        description="The group the requests decide in (when more than one approval is needed): give it as"
        " approval_group to ask more people in it."
    )
    requests: list[SentRequestOut]


class Answer(BaseModel):
    action: Literal["complete", "fail"]
    by: str
    at: Timestamp
    message_id: str


class DeliveryOut(BaseModel):
    """The request mail's way to the relay: the outbound queue's record of it."""

    state: Delivery
    attempts: int
    last_answer: str | None
    queued_at: Timestamp
    next_attempt_at: Timestamp | None = Field(description="When it is tried again (queued or deferred only).")
    done_at: Timestamp | None = Field(description="When it was sent, or failed.")


class ReminderOut(DeliveryOut):
    """A reminder mail of the request (``[requests] reminders``), queued when it was due."""

    kind: str = Field(description="Which reminder: reminder-1, reminder-2, ...")


class RequestOut(BaseModel):
    request_id: str
    task_id: str
    owner: str
    title: str
    created_at: Timestamp
    expires_at: Timestamp
    state: Literal["sent", "answered", "expired", "revoked"]
    answered: Answer | None
    revoked_at: Timestamp | None
    delivery: DeliveryOut | None = Field(
        description="The request mail's (the first mail's); None for requests made before the outbound queue existed."
    )
    reminders: list[ReminderOut] = Field(
        default_factory=list,
        description="Each reminder mail queued so far, in order; one withheld in the queue before it was sent"
        " (its request revoked, expired or answered, its task decided meanwhile) is `failed` with `last_answer`"
        " saying why. A reminder withdrawn by the follow-up round when it came due was never queued and is not"
        " listed (the log says why).",
    )


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    details: list[ErrorDetail] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


# Errors ------------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success; the middleware renders it in the one error shape."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers
        self.close = close

    def response(self) -> web.Response:
        body = ErrorOut(error=ErrorBody(code=self.code, message=self.message, details=self.details))
        response = web.json_response(
            body.model_dump(mode="json", exclude_none=True), status=self.status, headers=self.headers
        )
        if self.close:  # the connection is in an unknown state (e.g. half a body read)
            response.force_close()
        return response


_HTTP_CODES: dict[int, ErrorCode] = {400: "invalid_request", 404: "not_found", 405: "invalid_request"}


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    """aiohttp's own refusals (no such route, wrong method, body too large) in our shape."""
    code: ErrorCode = _HTTP_CODES.get(exc.status, "invalid_request" if exc.status < 500 else "internal")
    allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return ApiError(exc.status, code, exc.reason, headers=allow)


def _validation_details(exc: ValidationError) -> list[ErrorDetail]:
    return [
        ErrorDetail(field=".".join(str(part) for part in e["loc"]) or "(body)", message=e["msg"])
        for e in exc.errors(include_url=False)
    ]


# Helpers -----------------------------------------------------------------------------------


def delivery_out(mail: OutboundMail | None) -> DeliveryOut | None:
    if mail is None:
        return None
    return DeliveryOut(
        state=mail.state,
        attempts=mail.attempts,
        last_answer=mail.last_answer,
        queued_at=_iso(mail.created_at),
        next_attempt_at=_iso(mail.next_attempt_at) if mail.state.pending else None,
        done_at=_iso_or_none(mail.done_at),
    )


def request_json(
    request: Request, claim: Claim | None, now: float, mails: Sequence[OutboundMail] = ()
) -> dict[str, Any]:
    """Only a finished (``done``) claim is an answer: a pending one may still be given back.
    ``mails``: the request's mails in the queue (``Store.outbound_mails``): ``delivery`` is
    the request mail's, ``reminders`` the reminders' (not the notices of refused replies,
    which answer someone's reply, not the request)."""
    mail = next((m for m in mails if m.kind == REQUEST_MAIL), None)
    reminders = [
        ReminderOut(kind=m.kind, **delivery.model_dump())
        for m in mails
        if m.kind.startswith("reminder-") and (delivery := delivery_out(m)) is not None
    ]
    answered = None
    if claim is not None and claim.done:
        answered = Answer(
            action="fail" if claim.action == "fail" else "complete",
            by=claim.actor,
            at=_iso(claim.done_at if claim.done_at is not None else claim.claimed_at),
            message_id=claim.message_id,
        )
    state: Literal["sent", "answered", "expired", "revoked"]
    if answered is not None:
        state = "answered"
    elif request.revoked_at is not None:
        state = "revoked"
    elif request.expires_at <= now:
        state = "expired"
    else:
        state = "sent"
    out = RequestOut(
        request_id=request.id,
        task_id=request.task_id,
        owner=request.owner,
        title=request.title,
        created_at=_iso(request.created_at),
        expires_at=_iso(request.expires_at),
        state=state,
        answered=answered,
        revoked_at=_iso_or_none(request.revoked_at),
        delivery=delivery_out(mail),
        reminders=reminders,
    )
    return out.model_dump(mode="json")


async def _body(request: web.Request, model: type[M], timeout: float) -> M:
    """The JSON body as ``model``. A body that trickles in slower than ``timeout`` (a client
    holding the connection open on purpose) is answered 408 and the connection closed."""
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(
            408, "invalid_request", f"the request body did not arrive within {timeout:g} seconds", close=True
        ) from None
    if not raw.strip():
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", "the body is not valid", _validation_details(exc)) from None


def _request_id(request: web.Request) -> str:
    """A request id as we issue them; anything else cannot exist, so it is not looked up."""
    value = request.match_info["request_id"].lower()
    if not _REQUEST_ID.fullmatch(value):
        raise ApiError(404, "not_found", f"no request {value[:64]!r}")
    return value


def _idempotency_key(request: web.Request) -> str | None:
    """The call's Idempotency-Key, if it has one; 400 when it is not one we take."""
    values = request.headers.getall("Idempotency-Key", [])
    if not values:
        return None
    match = _IDEMPOTENCY_KEY.fullmatch(values[0].strip()) if len(values) == 1 else None
    if match is None:
        raise ApiError(
            400,
            "invalid_request",
            "Idempotency-Key must be one key of 1 to 255 visible ASCII characters, quoted or not",
            [ErrorDetail(field="Idempotency-Key", message="not a key of 1 to 255 visible ASCII characters")],
        )
    quoted, bare = match.groups()
    return bare if quoted is None else re.sub(r"\\(.)", r"\1", quoted)


async def hold_idempotency_key(
    store: Store, scope: str, key: str, holder: str, every: float = IDEMPOTENCY_LEASE / 3
) -> None:
    """Renew a running call's hold on its key every ``every`` seconds, until cancelled: a
    call that mails many owners through a slow relay may outlast one lease, and a retry
    must not take the key over and mail them all again while it still runs."""
    while True:
        await asyncio.sleep(every)
        try:
            held = await asyncio.to_thread(store.renew_idempotency_key, scope, key, holder, time.time())
        except TemporaryFailure as exc:
            log.warning("api idempotency key %r: its hold not renewed (tried again later): %s", key, exc)
            continue
        if not held:
            log.warning("api idempotency key %r: no longer held by its call (taken over)", key)
            return


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Api:
    """The handlers, bound to one service."""

    def __init__(self, service: Service) -> None:
        self.service = service
        # An empty token would let in 'Bearer ' with nothing after it: it counts as none.
        self.tokens = [t.get_secret_value().encode() for t in service.settings.http.api_tokens if t.get_secret_value()]

    # Middleware ----------------------------------------------------------------------------

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Auth and the one error shape for /v1 (also for unknown routes there: 401 before 404,
        so an unauthenticated caller learns nothing about which routes exist)."""
        path = request.path
        is_api = path == "/v1" or path.startswith("/v1/")
        if not is_api and path != "/openapi.json":
            try:
                return await handler(request)
            except web.HTTPException as exc:  # GET / and other unknown paths: the same JSON shape
                if exc.status < 400:
                    raise
                return _from_http_exception(exc).response()
        try:
            if is_api:
                self._authenticate(request)
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _from_http_exception(exc).response()
        except (Refusal, TemporaryFailure) as exc:
            if isinstance(exc, TemporaryFailure):
                log.warning("api %s %s: temporary failure: %s", request.method, path, exc)
            return _api_error_for(exc).response()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("api %s %s failed", request.method, path)
            return ApiError(500, "internal", "internal error; the server log has the details").response()

    def _authenticate(self, request: web.Request) -> None:
        challenge = {"WWW-Authenticate": 'Bearer realm="rc-mta"'}
        if not self.tokens:
            raise ApiError(
                401, "unauthorized", "the API is off: no [http] api_tokens are configured", headers=challenge
            )
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        given = presented.strip().encode("utf-8", "surrogatepass")
        matched = False
        for token in self.tokens:  # every token compared: timing tells nothing about which
            matched |= scheme.lower() == "bearer" and hmac.compare_digest(given, token)
        if not matched:
            challenge["WWW-Authenticate"] += ', error="invalid_token"' if presented else ""
            raise ApiError(
                401, "unauthorized", "a valid 'Authorization: Bearer <token>' is required", headers=challenge
            )
        request[_CLIENT] = hashlib.sha256(given).hexdigest()[:32]

    # Requests ------------------------------------------------------------------------------

    async def create_request(self, request: web.Request) -> web.Response:
        key = _idempotency_key(request)
        body = await _body(request, RequestCreate, self.service.settings.http.body_timeout)
        if key is None:
            return await self._create_request(body)
        return await self._once(request[_CLIENT], key, body, self._create_request)

    async def _once(self, scope: str, key: str, body: M, call: Callable[[M], Awaitable[web.Response]]) -> web.Response:
        """``call`` once per Idempotency-Key (draft-ietf-httpapi-idempotency-key-header):
        a retry with the same body gets the first answer again (``Idempotent-Replayed:
        true``), one with another body 422, one while the first still runs 409. Only a
        success is kept, for ``IDEMPOTENCY_KEY_TTL``: after an error the key is given back,
        and a retry runs again (the call is all or nothing). A running call renews its hold
        (``hold_idempotency_key``); one cut off with its instance holds the key until
        ``IDEMPOTENCY_LEASE`` ran out, then a retry takes it."""
        store = self.service.store
        fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        holder = new_holder()
        found = await asyncio.to_thread(store.reserve_idempotency_key, scope, key, fingerprint, holder, time.time())
        if found.state is KeyState.MISMATCH:
            raise ApiError(
                422,
                "key_reused",
                f"Idempotency-Key {key!r} was used with another body: a new call needs a new key",
                [ErrorDetail(field="Idempotency-Key", message="already used with another body")],
            )
        if found.state is KeyState.RUNNING:
            raise ApiError(
                409,
                "conflict",
                f"a call with Idempotency-Key {key!r} is still being processed: try again in a moment",
                headers={"Retry-After": "1"},
            )
        if found.state is KeyState.DONE:
            log.info("api idempotency key %r: the first answer replayed", key)
            return web.Response(
                text=found.response,
                status=found.status or 200,
                content_type="application/json",
                headers={"Idempotent-Replayed": "true"},
            )
        if found.state is KeyState.TAKEN_OVER:
            log.warning(
                "api idempotency key %r: its first call was cut off (its instance died?); running it again", key
            )
        holding = asyncio.create_task(hold_idempotency_key(store, scope, key, holder))
        try:
            response = await call(body)
        except BaseException:
            try:
                await asyncio.to_thread(store.release_idempotency_key, scope, key, holder)
            except TemporaryFailure as exc:
                log.warning("api idempotency key %r not given back (a retry waits for its lease): %s", key, exc)
            raise
        finally:
            holding.cancel()
        assert isinstance(response.text, str)
        try:
            kept = await asyncio.to_thread(
                store.finish_idempotency_key, scope, key, holder, response.status, response.text
            )
        except TemporaryFailure as exc:  # the call acted: its answer goes out all the same
            kept, why = False, f"the store failed: {exc}"
        else:
            why = "held past its lease"
        if not kept:
            log.warning("api idempotency key %r: its answer is not kept (%s); a retry would run again", key, why)
        return response

    async def _create_request(self, body: RequestCreate) -> web.Response:
        service = self.service
        task = await service.backend.get(body.task_id)
        recipients = body.recipients()
        # The backend's title and owner go into the mail's headers: they must be one line.
        if recipients == [None] and ("@" not in task.owner or _CONTROL.search(task.owner)):
            raise ApiError(
                400,
                "invalid_request",
                f"task {task.id}'s owner {task.owner!r} is not an email: give owners",
                [ErrorDetail(field="owners", message="required: the task's owner is not an email address")],
            )
        if body.title is None and _CONTROL.search(task.title):
            raise ApiError(
                400,
                "invalid_request",
                f"task {task.id}'s title holds a line break or control character: give a title",
                [ErrorDetail(field="title", message="required: the task's own title is not one line of text")],
            )
        context = RequestContext(
            context_title=body.context_title,
            link=body.link,
            requested_by=body.requested_by,
            due=body.due,
            description=body.description,
        )
        needed, group = await self._approval_group(body, task.id, len(recipients))
        # Every owner is checked before anyone is asked: a 409 for one (already asked in the
        # group, say) must not come after another's mail went out.
        for owner in recipients:
            await service.check_approvals(task.id, (owner or task.owner).strip().lower(), group, new_group=False)
        sent = []
        try:
            for owner in recipients:
                one = await service.send_request(
                    task.id,
                    owner,
                    body.title,
                    context=context,
                    language=body.language,
                    expires_in=body.expires_in,
                    approval_group=group,
                )
                stored = await asyncio.to_thread(service.store.get_request, one.request_id)
                assert stored is not None
                sent.append((one, stored))
        except BaseException:
            # All or nothing: a client that retries must not leave live twins behind.
            now = time.time()
            for one, _ in sent:
                try:
                    await asyncio.to_thread(service.store.revoke_request, one.request_id, now)
                except TemporaryFailure:
                    log.warning("could not withdraw request %s after a failed send", one.request_id)
            raise
        out = RequestsCreated(
            task_id=task.id,
            approvals_needed=needed,
            approval_group=group,
            requests=[
                SentRequestOut(
                    request_id=one.request_id,
                    owner=one.to,
                    message_id=one.message_id,
                    reply_to=one.reply_to,
                    complete_address=one.complete_address,
                    fail_address=one.fail_address,
                    expires_at=_iso(stored.expires_at),
                    delivery=one.delivery,
                    last_answer=one.last_answer,
                )
                for one, stored in sent
            ],
        )
        return web.json_response(out.model_dump(mode="json"), status=201)

    async def _approval_group(self, body: RequestCreate, task_id: str, owners: int) -> tuple[int, str | None]:
        """The approvals needed and the group the new requests decide in: the one named (it
        must be this task's), a new one when more than one approval is needed, else none.
        Refused (409) when the task's groups or lone requests stand in the way."""
        store = self.service.store
        if body.approval_group is not None:
            found = await asyncio.to_thread(store.approval_group, body.approval_group)
            if found is None or found[0].task_id != task_id:
                raise ApiError(
                    404,
                    "not_found",
                    f"task {task_id} has no approval group {body.approval_group}",
                    [ErrorDetail(field="approval_group", message=f"not a group of task {task_id}")],
                )
            return found[0].needed, body.approval_group
        needed = body.needed(owners)
        if needed == 1:
            return 1, None
        await self.service.check_approvals(task_id, None, None, new_group=True)
        return needed, await asyncio.to_thread(store.add_approval_group, task_id, needed, time.time())

    async def get_request(self, request: web.Request) -> web.Response:
        request_id = _request_id(request)
        found = await asyncio.to_thread(self.service.store.get_request_with_claim, request_id)
        if found is None:
            raise ApiError(404, "not_found", f"no request {request_id}")
        mails = await asyncio.to_thread(self.service.store.outbound_mails, request_id)
        return web.json_response(request_json(*found, time.time(), mails))

    async def revoke_request(self, request: web.Request) -> web.Response:
        """Withdraw a request (e.g. the task was reassigned): its addresses are refused at RCPT."""
        request_id = _request_id(request)
        store = self.service.store
        now = time.time()
        await asyncio.to_thread(store.revoke_unanswered_request, request_id, now, STALE_CLAIM_SECONDS)
        found = await asyncio.to_thread(store.get_request_with_claim, request_id)
        if found is None:
            raise ApiError(404, "not_found", f"no request {request_id}")
        stored, claim = found
        if stored.revoked_at is None and claim is not None:
            if claim.done:
                message = f"request {request_id} was already answered: {claim.action} by {claim.actor}"
            else:
                message = f"request {request_id} is being answered right now by {claim.actor}"
            raise ApiError(409, "conflict", message)
        mails = await asyncio.to_thread(store.outbound_mails, request_id)
        return web.json_response(request_json(stored, claim, now, mails))

    # Tasks (embedded backend) --------------------------------------------------------------

    def _embedded_only(self) -> None:
        backend = self.service.settings.tasks.backend
        if backend != "embedded":
            raise ApiError(
                404,
                "not_found",
                f"task endpoints serve the embedded task store, and [tasks] backend is {backend!r}",
                [ErrorDetail(field="tasks.backend", message=f"is {backend!r}, not 'embedded'")],
            )

    async def create_task(self, request: web.Request) -> web.Response:
        self._embedded_only()
        body = await _body(request, TaskCreate, self.service.settings.http.body_timeout)
        task = await asyncio.to_thread(self.service.store.add_task, body.title, body.owner, time.time())
        return web.json_response(task_json(task), status=201)

    async def list_tasks(self, request: web.Request) -> web.Response:
        self._embedded_only()
        tasks = await asyncio.to_thread(self.service.store.list_tasks_with_comments)
        return web.json_response([task_json(t) for t in tasks])

    async def get_task(self, request: web.Request) -> web.Response:
        self._embedded_only()
        task_id = request.match_info["task_id"]
        if len(task_id) > 255 or _CONTROL.search(task_id):
            raise ApiError(404, "not_found", "no such task")
        task = await asyncio.to_thread(self.service.store.get_task, task_id)
        if task is None:
            raise ApiError(404, "not_found", f"no task {task_id}")
        return web.json_response(task_json(task))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


# OpenAPI -----------------------------------------------------------------------------------

_ERROR_TEXT = {
    400: "The body is not valid: `details` names each field.",
    401: "No valid bearer token (or no [http] api_tokens configured).",
    404: "No such resource.",
    408: "The body did not arrive in time ([http] body_timeout); the connection is closed.",
    409: "The resource's state forbids this.",
    413: "The body is too large.",
    422: "The Idempotency-Key was used with another body: a new call needs a new key.",
    500: "A bug: the server log has the details.",
    503: "Something needed is unavailable now (store, task backend): retry later.",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": _ERROR_TEXT[s],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
        }
        for s in sorted({401, 500, 503, *statuses})
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _body_spec(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


_openapi_cache: dict[str, Any] = {}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of /v1, its schemas generated from the models above."""
    if _openapi_cache:
        return _openapi_cache
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (RequestCreate, "validation"),
        (TaskCreate, "validation"),
        (RequestsCreated, "serialization"),
        (RequestOut, "serialization"),
        (TaskOut, "serialization"),
        (ErrorOut, "serialization"),
    ]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    request_id = _path_param(
        "request_id", {"type": "string", "pattern": "^[0-9a-f]{16}$"}, "A request id, as POST /v1/requests returned it."
    )
    task_id = _path_param("task_id", {"type": "string", "maxLength": 255}, "A task id of the embedded store.")
    embedded = ' Only with `[tasks] backend = "embedded"`; otherwise 404.'
    paths: dict[str, Any] = {
        "/v1/requests": {
            "post": {
                "operationId": "createRequest",
                "summary": "Mail a completion request for a task to its owner(s)",
                "description": "One request per owner, each with its own signed reply addresses. Any one owner "
                "may answer (or, with `approvals`, as many as it says); once the task is decided, the others' "
                "replies are refused. 409 when the task's approval group (or, for a new group, its requests "
                "outside any group) may still decide it: the message says what to do. Each request is stored "
                "with its mail before the mail is sent; `delivery` says how the first attempt went (a relay that "
                "is down or answers 4xx defers it, and it is tried again; a 5xx fails it). All or nothing: when "
                "storing fails (503), the requests already made by this call are revoked. A client that may "
                "retry (a timeout after the server acted) sends an `Idempotency-Key`: the retry then gets the "
                "first answer, and no second request is made or mailed. Without one, each call makes new "
                "requests (a deliberate re-ask: the task still acts once, on the first answer).",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "draft-ietf-httpapi-idempotency-key-header: a unique key for this call"
                        ' (a UUID, say), quoted (`"8e03978e-..."`, an RFC 8941 string) or bare; 1 to 255 visible'
                        " ASCII characters. A retry with the same key and the same body gets the first call's"
                        " answer again, with `Idempotent-Replayed: true`; the same key with another body is 422;"
                        " while the first call still runs, 409 (retry). Keys are kept"
                        f" {IDEMPOTENCY_KEY_TTL / 3600:g} hours, per API token, in the store (across restarts and"
                        " instances). Only a success is kept: after an error the key may be used again.",
                        "schema": {"type": "string", "pattern": _IDEMPOTENCY_KEY_PATTERN},
                    }
                ],
                "requestBody": _body_spec(RequestCreate),
                "responses": {
                    "201": {
                        **_json(
                            "Sent (or, with `Idempotent-Replayed: true`, sent by an earlier call with this"
                            " Idempotency-Key).",
                            _ref(RequestsCreated),
                        ),
                        "headers": {
                            "Idempotent-Replayed": {
                                "description": "`true` when this is the earlier call's answer, replayed.",
                                "schema": {"type": "string", "enum": ["true"]},
                            }
                        },
                    },
                    **_errors(400, 404, 408, 409, 413, 422),
                },
            }
        },
        "/v1/requests/{request_id}": {
            "parameters": [request_id],
            "get": {
                "operationId": "getRequest",
                "summary": "A request, its mails' delivery (request, reminders), and whether it was answered",
                "responses": {"200": _json("The request.", _ref(RequestOut)), **_errors(404)},
            },
            "delete": {
                "operationId": "revokeRequest",
                "summary": "Revoke a request: its reply addresses are refused from now on",
                "description": "Idempotent. 409 when the request was already answered (or is being answered).",
                "responses": {"200": _json("Revoked.", _ref(RequestOut)), **_errors(404, 409)},
            },
        },
        "/v1/tasks": {
            "post": {
                "operationId": "createTask",
                "summary": "Add a task to the embedded store",
                "description": "Like `rc-mta task add`." + embedded,
                "requestBody": _body_spec(TaskCreate),
                "responses": {"201": _json("Added.", _ref(TaskOut)), **_errors(400, 404, 408, 413)},
            },
            "get": {
                "operationId": "listTasks",
                "summary": "Every task of the embedded store, oldest first",
                "description": "Like `rc-mta task list --json`." + embedded,
                "responses": {"200": _json("The tasks.", {"type": "array", "items": _ref(TaskOut)}), **_errors(404)},
            },
        },
        "/v1/tasks/{task_id}": {
            "parameters": [task_id],
            "get": {
                "operationId": "getTask",
                "summary": "One task and its comments",
                "description": "Like `rc-mta task show --json`." + embedded,
                "responses": {"200": _json("The task.", _ref(TaskOut)), **_errors(404)},
            },
        },
    }
    _openapi_cache.update(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "rc-mta",
                "version": __version__,
                "description": "Mail completion requests and see how they were answered. Errors always have "
                "the shape of ErrorOut.",
            },
            "security": [{"bearer": []}],
            "paths": paths,
            "components": {
                "schemas": defs["$defs"],
                "securitySchemes": {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "One of the configured `[http] api_tokens`.",
                    }
                },
            },
        }
    )
    return _openapi_cache


def add_api_routes(app: web.Application, service: Service) -> None:
    """Register the /v1 API and /openapi.json on ``app`` (before it starts)."""
    api = _Api(service)

    @web.middleware
    async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await api.middleware(request, handler)

    app.middlewares.append(api_middleware)
    app.router.add_post("/v1/requests", api.create_request)
    app.router.add_get("/v1/requests/{request_id}", api.get_request)
    app.router.add_delete("/v1/requests/{request_id}", api.revoke_request)
    app.router.add_post("/v1/tasks", api.create_task)
    app.router.add_get("/v1/tasks", api.list_tasks)
    app.router.add_get("/v1/tasks/{task_id}", api.get_task)
    app.router.add_get("/openapi.json", api.openapi)


# The HTTP edge's table: the status each domain error gets (the SMTP edge's is
# ``smtp_replies.reply_for``). The message is the error's own sentence.
_HTTP_STATUS: tuple[tuple[type[RcMtaError], int, ErrorCode], ...] = (
    (TaskNotFound, 404, "not_found"),
    (Refusal, 409, "conflict"),
    (TemporaryFailure, 503, "unavailable"),
)


def _api_error_for(error: RcMtaError) -> ApiError:
    for kind, status, code in _HTTP_STATUS:
        if isinstance(error, kind):
            message = f"temporarily unavailable, try again: {error}" if status == 503 else str(error)
            return ApiError(status, code, message)
    return ApiError(500, "internal", "internal error; the server log has the details")
