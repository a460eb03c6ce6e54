"""What a verdict makes of a message: one table, per check, built from ``[checks.*]``.

Checks only say what they found (mailman's rules); this table decides what that means
(its chains): refuse with a 5xx, defer with a 4xx, or — no rule matching — only note the
verdict (Authentication-Results, ``diagnose``, the log). Doubt is never a 5xx: every rule
for ``temperror`` defers. ``policy = "off"`` keeps a check from running at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import get_args

from .. import smtp_replies as R
from ..config import ChecksConfig
from ..smtp_replies import SmtpReply
from ._base import CheckContext, Result, Verdict

TEMPERROR: frozenset[Result] = frozenset({"temperror"})
NOT_PASS: frozenset[Result] = frozenset(get_args(Result)) - {"pass", "temperror"}


def _always(verdict: Verdict) -> bool:
    return True


def _reason(verdict: Verdict) -> str:
    return verdict.reason


def _dmarc_why(verdict: Verdict) -> str:
    """The policy, and what an ARC seal on the message did not do (``checks/arc.py``)."""
    note = verdict.facts.get("arc_note")
    return f"p={verdict.facts.get('policy', 'none')}" + (f"; {note}" if note else "")


@dataclass(frozen=True)
class Rule:
    """A verdict with one of ``results`` (and ``when`` it holds) is answered ``reply``."""

    results: frozenset[Result]
    reply: SmtpReply
    when: Callable[[Verdict], bool] = _always
    why: Callable[[Verdict], str] = _reason

    def answer(self, verdict: Verdict, context: CheckContext) -> SmtpReply:
        domain = verdict.facts.get("domain", "?")
        return self.reply.with_text(ip=context.client_ip, domain=domain, why=self.why(verdict))


@dataclass(frozen=True)
class CheckPolicy:
    """Whether a check runs, and the rules for its verdicts, first match wins."""

    runs: bool
    rules: tuple[Rule, ...] = ()


def _rejecting(policy: str, *rules: Rule) -> tuple[Rule, ...]:
    """Rules that refuse only under ``policy = "reject"`` (``tag`` notes the verdict)."""
    return rules if policy == "reject" else ()


def policy_table(config: ChecksConfig) -> dict[str, CheckPolicy]:
    """The whole policy, check by check, as configured."""
    rdns, spf, dkim, dmarc = config.rdns, config.spf, config.dkim, config.dmarc
    owner_rule = config.owner_auth.required  # the owner rule needs DKIM's and DMARC's verdicts
    refused_dmarc = ("reject", "quarantine") if dmarc.quarantine == "reject" else ("reject",)
    whitelist = CheckPolicy(config.whitelist.enabled, (Rule(frozenset({"fail"}), R.WHITELIST),))
    return {
        "rdns": CheckPolicy(
            rdns.policy != "off",
            (Rule(TEMPERROR, R.RDNS_TEMPERROR), *_rejecting(rdns.policy, Rule(NOT_PASS, R.RDNS_FAIL))),
        ),
        "spf": CheckPolicy(
            spf.policy != "off",
            (
                Rule(TEMPERROR, R.SPF_TEMPERROR),
                *_rejecting(
                    spf.policy,
                    Rule(frozenset({"fail"}), R.SPF_FAIL),
                    *([Rule(frozenset({"softfail"}), R.SPF_SOFTFAIL)] if spf.reject_softfail else []),
                    Rule(frozenset({"permerror"}), R.SPF_PERMERROR),
                ),
            ),
        ),
        "whitelist": whitelist,
        # Refuses nothing by itself: what a trusted seal vouches for counts in DMARC's
        # verdict and the owner rule; without trusted sealers it does not run at all.
        "arc": CheckPolicy(bool(config.arc.trusted_sealers)),
        "whitelist_from": whitelist,
        # Refuses nothing by itself: its pass counts in DMARC's verdict and the owner rule;
        # it judges only what a Graph poller trusting Exchange Online hands over.
        "exchange_online": CheckPolicy(True),
        "dkim": CheckPolicy(
            dkim.policy != "off" or dmarc.policy != "off" or owner_rule,
            _rejecting(dkim.policy, Rule(TEMPERROR, R.AUTH_TEMPERROR), Rule(frozenset({"fail"}), R.DKIM_FAIL)),
        ),
        "dmarc": CheckPolicy(
            dmarc.policy != "off" or owner_rule,
            (
                Rule(TEMPERROR, R.AUTH_TEMPERROR),
                # The domain's own published policy decides; a stamped verdict is another
                # receiver's to act on, not ours.
                *_rejecting(
                    dmarc.policy,
                    Rule(
                        frozenset({"fail"}),
                        R.DMARC_REJECT,
                        when=lambda v: not v.stamped and v.facts.get("policy", "none") in refused_dmarc,
                        why=_dmarc_why,
                    ),
                ),
            ),
        ),
    }


class PolicyTable:
    """The table, asked per check: does it run, and what does its verdict answer?"""

    def __init__(self, config: ChecksConfig) -> None:
        self.table: Mapping[str, CheckPolicy] = policy_table(config)

    def runs(self, name: str) -> bool:
        return self.table[name].runs

    def answer(self, name: str, verdict: Verdict, context: CheckContext) -> SmtpReply | None:
        """The refusal or deferral ``verdict`` earns, or None: only noted."""
        for rule in self.table[name].rules:
            if verdict.result in rule.results and rule.when(verdict):
                return rule.answer(verdict, context)
        return None
