"""Mailbox mode: pollers that read replies from a mailbox (IMAP, Microsoft Graph) and feed
them to the same pipeline as SMTP. One poller per file, behind one small interface."""

from __future__ import annotations

from typing import Protocol

from ..config import Settings
from ..pipeline import Pipeline


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


def make_poller(settings: Settings, pipeline: Pipeline) -> Poller | None:
    """The configured poller, or None when replies arrive over SMTP/LMTP only."""
    if settings.mailbox.source == "imap":
        from .imap import ImapPoller

        return ImapPoller(settings.mailbox, pipeline)
    if settings.mailbox.source == "graph":
        from .graph import GraphPoller

        return GraphPoller(settings.mailbox, pipeline)
    return None
