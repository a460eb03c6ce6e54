"""Mailbox mode: pollers that read replies from a mailbox (IMAP, Microsoft Graph) and feed
them to the same pipeline as SMTP. One poller per file, behind one small interface, each
registered by name (``rc_mta.registry.MAILBOX_SOURCES``) and chosen by ``[mailbox] source``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..config import Settings
from ..pipeline import Pipeline
from ..registry import MAILBOX_SOURCES

if TYPE_CHECKING:
    from ..refusal_notices import RefusalNotices


class Poller(Protocol):
    source: str  # "imap" | "graph": the metrics and health label

    async def run(self) -> None:
        """Poll until cancelled; reconnect with backoff after any error."""
        ...

    def staleness(self) -> tuple[float, float]:
        """(seconds since the last successful sync, how old is too old) for /healthz."""
        ...

    async def probe(self) -> str:
        """Reach the mailbox the way a sync does (check-config); say what was proven."""
        ...

    def notify_refusals(self, notices: RefusalNotices) -> None:
        """Tell the sender of each reply refused for good (``[mailbox] notify_refusals``)."""
        ...


def make_poller(settings: Settings, pipeline: Pipeline) -> Poller | None:
    """The configured poller (only its own module is imported), or None when replies
    arrive over SMTP/LMTP only."""
    if settings.mailbox.source == "none":
        return None
    poller: Poller = MAILBOX_SOURCES.get(settings.mailbox.source).factory(settings.mailbox, pipeline)
    return poller
