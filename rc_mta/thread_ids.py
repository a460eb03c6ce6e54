"""The Message-IDs of a request's mails, and which ids are a request's.

Someone who has seen a reply address of a request (``rc+<token>@``) must not be able to
write a mail that the owner's reply to it looks threaded to the request. So a request's
Message-ID carries, besides the decide-from-reply token (a reply to the bare ``rc@`` finds
its request through In-Reply-To: ``RequestAddresses.tokens_in``), a random part of its own,
stored with the request (``Request.message_id``)::

    request    <NONCE.rc.TOKEN@reply-domain>
    thread     <thread.NONCE.rc.TOKEN@reply-domain>   the request mail's References
    reminder N <reminderN.NONCE.rc.TOKEN@reply-domain>

The thread id is there for relays that replace the Message-ID they are given (Amazon SES,
Outlook.com, Brevo): References passes them unchanged, and a client's reply keeps it.

Requests sent before (``<rc.TOKEN@reply-domain>``, reminders ``<rc.reminderN.ID@…>``) keep
their ids, which anyone who saw the address can derive: they are answered as before.
"""

from __future__ import annotations

import base64
import re
import secrets

# 16 random bytes, base32 without padding: 26 characters.
NONCE_CHARS = 26
_NONCE = re.compile(rf"[a-z2-7]{{{NONCE_CHARS}}}")
_PREFIX = re.compile(r"thread|reminder\d{1,2}")


def request_message_id(local_part: str, token: str, reply_domain: str) -> str:
    """A new request mail's Message-ID: unguessable, yet holding its decide token."""
    nonce = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
    return f"<{nonce}.{local_part}.{token}@{reply_domain}>"


def _inner(message_id: str) -> str:
    return message_id.strip().strip("<>").strip().lower()


def _unguessable(stored: str) -> bool:
    return bool(_NONCE.fullmatch(_inner(stored).partition(".")[0]))


def thread_id(stored: str) -> str | None:
    """The id a request mail names in its References (None for an old-format request)."""
    return f"<thread.{_inner(stored)}>" if _unguessable(stored) else None


def reminder_id(stored: str | None, request_id: str, number: int, local_part: str, reply_domain: str) -> str:
    """Reminder ``number``'s Message-ID; a request of the old format keeps its old form."""
    if stored is not None and _unguessable(stored):
        return f"<reminder{number}.{_inner(stored)}>"
    return f"<{local_part}.reminder{number}.{request_id}@{reply_domain}>"


def names_request(message_id: str, stored: str, request_id: str, local_part: str, reply_domain: str) -> bool:
    """Whether ``message_id`` (with or without its angle brackets) is one rc-mta gave a mail
    of the request whose Message-ID is ``stored``: the request mail, its thread or a reminder."""
    candidate, inner = _inner(message_id), _inner(stored)
    if candidate == inner:
        return True
    if _unguessable(stored):
        prefix, _, rest = candidate.partition(".")
        return rest == inner and bool(_PREFIX.fullmatch(prefix))
    old_reminder = rf"{re.escape(local_part)}\.reminder\d{{1,2}}\.{re.escape(request_id)}@{re.escape(reply_domain)}"
    return re.fullmatch(old_reminder, candidate, re.IGNORECASE) is not None
