"""For what: does the thing that authenticated a message also tie it to *this* request?

A valid DKIM signature proves that the owner's domain sent a message, not that the owner
meant it as this answer: a forward of the request to a colleague, or an old reply, is
just as validly signed. So a signature authenticates an action only through the fields it
signs. The rule (README, "Sender authentication"):

- its signed To or Cc names the very reply address acted on (``rc+<token>@``), or
- its signed To or Cc names our bare address (``rc@``, a client that dropped the
  ``+token``) and its signed In-Reply-To or References holds the request's Message-ID,
  which carries the request's decide-from-reply token (a Complete or Fail token there
  was put in a Message-ID by whoever wrote the message answered: it binds nothing).

An SPF pass aligned with the From domain shows that the owner's own server handed this
transaction to us (or to the trusted receiver that stamped it), and nothing about its
fields: a server also relays what its author sent elsewhere (a list or an alias that the
reply address was added to, a forwarding rule). So it is bound by the same rule, read on
the message's own To/Cc and threading fields (``ParsedReply.addressed``): whatever the server
handed over, its author addressed it to the request, or it acts on nothing.

Nor does an address alone show that the owner saw the request: someone who has seen a reply
address can ask the owner something else with ``Reply-To:`` that address, and the owner's
"yes" goes to it, authenticated and addressed. So a reply that names the message it answers
(In-Reply-To, References) must name a mail of the request (``thread_ids``: the request mail,
its thread id, a reminder), whose ids carry a random part no address reveals
(``RequestAddresses.answered_elsewhere``). One that names none (a button's mailto opens a
new mail) is judged by the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from email.utils import getaddresses
from functools import lru_cache

from rc_mta.thread_ids import names_request
from rc_mta.tokens import TOKEN_LENGTH, Action, claimed_action

MAX_FIELD_CHARS = 16384
# What ``answered_elsewhere`` names for threading fields that hold no id it can read.
UNREADABLE_ID = "an id that cannot be read"


def others_addressed(
    fields: Iterable[tuple[str, str]], ours: RequestAddresses, sender: str | None, mine: Callable[[str], bool]
) -> list[str]:
    """Who else the To and Cc of ``fields`` (``ParsedReply.addressed``) name: neither a reply
    address of this request (``rc@``, or ``rc+<token>@`` whose token ``mine`` says is one of
    its own) nor the sender's own. A Complete or Fail button's mail names no one else; one that
    does may be a reply-all to someone's question that also went to a button address (put in
    its Cc by whoever asked), and acting on it would take "yes, it's broken" for Complete.

    Someone else too: an address the parser cannot read (``mallory@[127.0.0.6]``, a domain
    literal, comes back empty), shown as written; and any other ``rc+…@`` address (one she
    wrote as her own From). A field that is empty, or an empty group
    (``undisclosed-recipients:;``), names no one."""
    own = (sender or "").lower()
    found: dict[str, None] = {}
    for name, value in fields:
        if name not in ("to", "cc") or not value.strip() or _EMPTY_GROUP.fullmatch(value):
            continue
        bounded = value[:MAX_FIELD_CHARS]
        for lowered in dict.fromkeys(_parsed_addresses((bounded,))):
            if not lowered:
                found[" ".join(bounded.split())] = None  # unreadable: who it is, as written
                continue
            token = ours.token_of(lowered)
            if lowered != own and token != "" and not (token and mine(token)):
                found[lowered] = None
    return list(found)


def tokens_addressed(fields: Iterable[tuple[str, str]], ours: RequestAddresses) -> list[str]:
    """The tokens of the ``rc+<token>@`` addresses the To and Cc of ``fields`` name."""
    tokens = (ours.token_of(address) for address in _addresses_in(fields))
    return list(dict.fromkeys(token for token in tokens if token))


# A group with no one in it (RFC 5322 3.4): what a client writes in To when all are in Bcc.
# No class here overlaps the next: linear on any field.
_EMPTY_GROUP = re.compile(r'[^:;,@<>"]*:\s*;\s*')


def _addresses_in(fields: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The addresses (lower case) the To and Cc of ``fields`` name, each value bounded first."""
    return _parsed_addresses(tuple(value[:MAX_FIELD_CHARS] for name, value in fields if name in ("to", "cc")))


@lru_cache(maxsize=8)
def _parsed_addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    # The same To/Cc are read for the SPF pass, each DKIM signature and the buttons' rule, and
    # the standard library's parser costs ~0.1 ms a call: once a message. 8 entries, each at
    # most a header section as budget bounds it (256 KiB).
    return tuple(address.lower() for _, address in getaddresses(list(values)))


class RequestAddresses:
    """Finds our reply addresses and their tokens in header values."""

    def __init__(self, local_part: str, reply_domain: str) -> None:
        self.local_part = local_part.lower()
        self.reply_domain = reply_domain.lower().rstrip(".")
        self._token_in_id = re.compile(
            rf"{re.escape(self.local_part)}[+.]([a-z2-7]{{{TOKEN_LENGTH}}})@{re.escape(self.reply_domain)}",
            re.IGNORECASE,
        )

    def token_of(self, address: str) -> str | None:
        """The token of a reply address of ours (``address`` in lower case): "" for the bare
        ``rc@``; None for an address that is not ours."""
        local, _, domain = address.rpartition("@")
        base, _, token = local.partition("+")
        if domain.rstrip(".") != self.reply_domain or base != self.local_part:
            return None
        return token

    def tokens_in(self, text: str) -> list[str]:
        """Tokens of ours inside a Message-ID list or text (``rc.<token>@`` or ``rc+<token>@``)."""
        return [match.group(1) for match in self._token_in_id.finditer(text)]

    def tokens_bound_by(self, signed_fields: Iterable[tuple[str, str]]) -> frozenset[str]:
        """The tokens (lower case) a signature covering ``signed_fields`` may act on."""
        fields = list(signed_fields)
        tokens: set[str] = set()
        bare = False
        for address in _addresses_in(fields):  # bounded: a real To/Cc list fits in far less
            local, _, domain = address.rpartition("@")
            if domain.rstrip(".") != self.reply_domain:
                continue
            base, plus, token = local.partition("+")
            if base != self.local_part:
                continue
            if not plus:
                bare = True
            elif len(token) == TOKEN_LENGTH:
                tokens.add(token)
        if bare:
            for name, value in fields:
                if name in ("in-reply-to", "references"):
                    # The end: the request a reply answers is the last id of a long References.
                    threaded = self.tokens_in(value[-MAX_FIELD_CHARS:])
                    tokens.update(t.lower() for t in threaded if claimed_action(t) is Action.REPLY)
        return frozenset(tokens)

    def answered_elsewhere(
        self, referenced: Sequence[str], threaded: bool, stored: str | None, request_id: str
    ) -> str | None:
        """The message a reply answers when it is not a mail of the request, else None.

        ``referenced`` are the ids of its In-Reply-To, then its References
        (``ParsedReply.referenced_ids``); ``stored`` the request mail's Message-ID. Any of
        them naming a mail of the request will do: behind a relay that replaced our
        Message-ID, In-Reply-To names the relay's id and References still holds the
        request's thread id, which no one who has not seen the request mail knows either.
        With threading fields (``threaded``, empty ones too) that name no id we can read, it
        answers some message, not the request: a question with a malformed Message-ID, copied
        by the owner's client, must not pass as naming nothing. Naming no message at all (a
        button's mailto), or a request stored without an id, there is nothing to judge."""
        if stored is None:
            return None
        if not referenced:
            return UNREADABLE_ID if threaded else None
        if any(names_request(i, stored, request_id, self.local_part, self.reply_domain) for i in referenced):
            return None
        return f"<{referenced[0]}>"
