"""Sender-authentication checks: one module per check, each one object with a ``name`` and
``evaluate(context) -> Verdict``; ``policy.py`` says what each verdict means."""

from ._base import Check, CheckContext, DkimSignature, ExchangeOnlineTrust, OwnerProof, Verdict

__all__ = ["Check", "CheckContext", "DkimSignature", "ExchangeOnlineTrust", "OwnerProof", "Verdict"]
