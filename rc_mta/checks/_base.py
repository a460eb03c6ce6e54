"""What every check returns, and what a policy does with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Result = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"]
Policy = Literal["off", "tag", "reject"]


@dataclass(frozen=True)
class Verdict:
    """One check's result (RFC 8601 vocabulary) and why, plus the facts it looked at."""

    result: Result
    reason: str = ""
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def temporary(self) -> bool:
        return self.result == "temperror"

    def as_json(self) -> dict[str, str]:
        return {"result": self.result, "reason": self.reason, **self.facts}
