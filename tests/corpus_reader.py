"""The reply corpora in tests/corpus, and each message read the way rc-mta reads it.

``human/cases.toml`` lists people's replies (file, client, language, the action their
words decide, their words exactly); ``machine/cases.toml`` lists machine-written mail
(file, kind) that must never act; ``human_not_machine/cases.toml``, when present, lists
more people's replies that must not be taken for machines. Used by tests/test_corpus.py
and bench/replies.py, so both measure the same thing.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from rc_mta.pipeline import _return_path, read_message
from rc_mta.reading import DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS, answer_of

CORPUS = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class HumanCase:
    file: str
    client: str
    language: str
    action: str  # complete | fail | none
    comment: str
    note: str = ""

    @property
    def path(self) -> Path:
        return CORPUS / "human" / self.file


@dataclass(frozen=True)
class MachineCase:
    file: str
    kind: str

    @property
    def path(self) -> Path:
        return CORPUS / "machine" / self.file


@dataclass(frozen=True)
class Reading:
    """What rc-mta makes of one message: the action its words decide ("none" when they
    decide nothing), the comment, and why it is machine mail (None for a person)."""

    action: str
    comment: str
    machine: str | None


def _cases(folder: str) -> list[dict[str, str]]:
    path = CORPUS / folder / "cases.toml"
    if not path.exists():
        return []
    cases: list[dict[str, str]] = tomllib.loads(path.read_text(encoding="utf-8")).get("case", [])
    return cases


def human_cases() -> list[HumanCase]:
    fields = HumanCase.__dataclass_fields__
    return [HumanCase(**{k: v for k, v in case.items() if k in fields}) for case in _cases("human")]


def machine_cases() -> list[MachineCase]:
    return [MachineCase(case["file"], case.get("kind", "")) for case in _cases("machine")]


def human_controls() -> list[Path]:
    """People's replies kept to prove they are not taken for machine mail."""
    return [CORPUS / "human_not_machine" / case["file"] for case in _cases("human_not_machine")]


def read(path: Path) -> Reading:
    """Read a saved message as the mailbox doors do (envelope sender from Return-Path)."""
    raw = path.read_bytes()
    _, parsed = read_message(raw, _return_path(raw))
    action = answer_of(parsed.comment, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS)  # as the pipeline reads
    return Reading(action or "none", parsed.comment, parsed.auto_reply)
