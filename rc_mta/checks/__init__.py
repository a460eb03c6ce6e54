"""Sender-authentication checks: one module per check, each returning a Verdict."""

from ._base import Policy, Verdict

__all__ = ["Policy", "Verdict"]
