"""The task shapes the HTTP API and the CLI share: a new task's rules and a task's JSON.

Apart from ``api.py`` so that ``rc-mta task …`` validates and prints exactly as the API
does without importing the HTTP server and the pipeline behind it (a CLI call stays fast).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

if TYPE_CHECKING:
    from .store import Task

# Text that ends up in mail headers (Subject, To, X-RC-MTA-Task) must not hold anything
# str.splitlines() breaks on, or composing the mail fails: no C0/C1 controls, no U+2028/9.
_NO_CONTROLS = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{_LABEL}(?:\.{_LABEL})+$"
_LINK = r"^https?://[^\x00-\x20\x7f-\x9f\u2028\u2029]+$"

Email = Annotated[
    str,
    StringConstraints(max_length=254, pattern=_EMAIL),
    Field(description="An email address.", examples=["alice@example.com"]),
]
Text = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=_NO_CONTROLS)]
TaskId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_NO_CONTROLS)]
Link = Annotated[str, StringConstraints(max_length=2048, pattern=_LINK)]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, examples=["2025-01-31T12:00:00+00:00"])]


class StrictBody(BaseModel):
    """Strict: unknown fields and wrong JSON types are refused, never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TaskCreate(StrictBody):
    """A task in the embedded store (what ``rc-mta task add`` does)."""

    title: Text
    owner: Email


class CommentOut(BaseModel):
    author: str
    text: str
    at: Timestamp


class TaskOut(BaseModel):
    """The shape of ``rc-mta task show --json``."""

    id: str
    title: str
    owner: str
    status: str
    created_at: Timestamp
    acted_by: str | None
    acted_at: Timestamp | None
    comments: list[CommentOut]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def iso_or_none(ts: float | None) -> str | None:
    return iso(ts) if ts is not None else None


def task_json(task: Task) -> dict[str, Any]:
    """A task as ``rc-mta task show --json`` prints it."""
    out = TaskOut(
        id=task.id,
        title=task.title,
        owner=task.owner,
        status=task.status,
        created_at=iso(task.created_at),
        acted_by=task.acted_by,
        acted_at=iso_or_none(task.acted_at),
        comments=[CommentOut(author=c.author, text=c.text, at=iso(c.at)) for c in task.comments],
    )
    return out.model_dump(mode="json")
