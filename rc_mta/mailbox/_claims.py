"""What every poller does with one message, whatever its protocol: claim it in the shared
store, read it, hand it to the pipeline, file it, and note each step in the store.

Several instances may poll one mailbox. Each message is claimed by the poller process
(``holder``) before it is read, so only one instance acts on it and files it; a claim whose
holder died goes stale (``STALE_CLAIM_SECONDS``) and another instance takes it over. A
message handled but not filed yet (the connection dropped in between) is filed by whoever
holds it next, without being handled again: the claim keeps its disposition, and
``settled`` keeps it in this process for when the store could not be written.

The protocol is the poller's: it names the message (``MailboxMessage``), reads it and files
it; this module owns the rest, once for IMAP and Graph alike.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..checks import ExchangeOnlineTrust
from ..errors import TemporaryFailure
from ..pipeline import Inbound, MailboxOutcome, Pipeline
from ..store import STALE_CLAIM_SECONDS, MailboxMessage, Store, new_holder

if TYPE_CHECKING:
    from ..refusal_notices import RefusalNotices

log = logging.getLogger("rc_mta.mailbox")

CLAIMS_KEPT = 7 * 86400.0  # a filed message's claim is forgotten after this long
CLAIMS_PRUNED_EVERY = 3600.0


class Handled(enum.Enum):
    """What became of one message this round."""

    FILED = "filed"  # acted on (or refused) and filed
    LEFT = "left"  # left in the folder for a later round: the pipeline said retry, or handling failed
    GONE = "gone"  # no longer in the folder (someone else moved or deleted it)
    NOT_OURS = "not_ours"  # another instance holds it, or the store could not say: look again later
    FILED_ELSEWHERE = "filed_elsewhere"  # another instance filed it

    @property
    def counted(self) -> bool:
        """Whether this poller handled it this round (the per-sync metric)."""
        return self in (Handled.FILED, Handled.LEFT)

    @property
    def again(self) -> bool:
        """Whether it must be looked at again in a later round."""
        return self in (Handled.LEFT, Handled.NOT_OURS)


class MessageClaims:
    """One poller process's claims on messages, in the pipeline's store."""

    def __init__(
        self,
        source: str,
        pipeline: Pipeline,
        trusted_ids: tuple[str, ...],
        clock: Callable[[], float] = time.time,
        exchange_online: ExchangeOnlineTrust | None = None,
    ) -> None:
        self.source = source
        self.clock = clock
        self.pipeline = pipeline
        self.trusted_ids = trusted_ids
        self.exchange_online = exchange_online  # what the mailbox's host may vouch for (Graph)
        # Names this process in the store's claims: unique per process, so two instances
        # with the same configuration never take each other's claims for their own.
        self.holder = new_holder()
        # Messages acted on but not yet filed, and how to file them: the store's claim says
        # the same to every instance; this covers a store that could not be written.
        self.settled: dict[MailboxMessage, str] = {}
        self._next_prune = 0.0
        # Tells the sender of a reply refused for good (``[mailbox] notify_refusals``).
        self.notices: RefusalNotices | None = None

    @property
    def store(self) -> Store:
        """The pipeline's store (a probe, which has no pipeline, never needs it)."""
        return self.pipeline.store

    async def handle(
        self,
        message: MailboxMessage,
        name: str,
        read: Callable[[], Awaitable[bytes | None]],
        file: Callable[[str], Awaitable[str]],
    ) -> Handled:
        """Claim, read, handle and file one message. ``read`` gives its bytes (None when it
        is gone); ``file`` files it as processed|rejected and says how, for the log. An
        error reading or filing is the connection's: it is raised, and the claim stays."""
        try:
            claim = await asyncio.to_thread(
                self.store.claim_mailbox_message, message, self.holder, self.clock(), STALE_CLAIM_SECONDS
            )
        except TemporaryFailure as exc:
            log.warning("%s %s retry: cannot claim it (%s); left for the next round", self.source, name, exc)
            return Handled.NOT_OURS
        if not claim.ours:
            return Handled.FILED_ELSEWHERE if claim.filed else Handled.NOT_OURS
        disposition = claim.disposition or self.settled.get(message)
        outcome: MailboxOutcome | None = None
        if disposition is None:
            raw = await read()
            if raw is None:
                await self._note(self.store.release_mailbox_message, message, self.holder)
                log.info("%s %s: gone before it was read", self.source, name)
                return Handled.GONE
            try:
                inbound = Inbound(raw, self.source, trusted_ids=self.trusted_ids, exchange_online=self.exchange_online)
                outcome = MailboxOutcome.of(await self.pipeline.process(inbound, act=True))
            except Exception:
                # One bad message must not stop the round for the others.
                log.exception("%s %s: handling failed; left for the next round", self.source, name)
                await self._note(self.store.release_mailbox_message, message, self.holder)
                return Handled.LEFT
            if outcome.disposition == "retry":
                # Untouched: the next round (of any instance) tries again.
                log.info("%s %s retry: %s (message-id %s)", self.source, name, outcome.reason, outcome.message_id)
                await self._note(self.store.release_mailbox_message, message, self.holder)
                return Handled.LEFT
            if outcome.disposition == "rejected" and self.notices is not None:
                # Before the claim is settled: handled again (we die first), the reply finds
                # its notice queued already, by its Message-ID; never one more.
                try:
                    await self.notices.refused(raw, outcome)
                except TemporaryFailure as exc:
                    log.info("%s %s retry: its notice cannot be queued now (%s)", self.source, name, exc)
                    await self._note(self.store.release_mailbox_message, message, self.holder)
                    return Handled.LEFT
                except Exception:
                    log.exception("%s %s: its refusal notice failed; filed without one", self.source, name)
            disposition = self.settled[message] = outcome.disposition
            await self._note(self.store.settle_mailbox_message, message, self.holder, disposition, self.clock())
        said = f"{outcome.reason} (message-id {outcome.message_id})" if outcome else "handled before"
        try:
            filed = await file(disposition)
        except Exception as exc:
            log.warning(
                "%s %s %s: %s; filing failed (%s), left for the next round", self.source, name, disposition, said, exc
            )
            raise
        self.settled.pop(message, None)
        await self._note(self.store.mailbox_message_filed, message, self.holder, self.clock())
        log.info("%s %s %s: %s -> %s", self.source, name, disposition, said, filed)
        return Handled.FILED

    def forget_settled(self) -> None:
        """The names of the messages changed (a new UIDVALIDITY): what we remember is void."""
        self.settled.clear()

    async def _note(self, write: Callable[..., None], *args: Any) -> None:
        """Note a message's progress in the store. If that fails, the claim stays as it was
        and goes stale: this process (``settled``) or, later, another files it, not acts again."""
        try:
            await asyncio.to_thread(write, *args)
        except TemporaryFailure as exc:
            log.warning("%s: could not note a message's progress in the store: %s", self.source, exc)

    async def prune(self) -> None:
        """Now and then, forget the claims on messages filed long ago."""
        now = self.clock()
        if now < self._next_prune:
            return
        self._next_prune = now + CLAIMS_PRUNED_EVERY
        try:
            await asyncio.to_thread(self.store.prune_mailbox_claims, now - CLAIMS_KEPT)
        except TemporaryFailure as exc:
            log.warning("%s: could not prune old message claims: %s", self.source, exc)
