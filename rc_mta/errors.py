"""Every error rc-mta raises on purpose, in one tree, about the domain (a token expired, the
workflow system is down), never about the edge it surfaces at.

Two tables turn them into answers: ``smtp_replies.reply_for`` (a named SMTP reply) and the
HTTP API's statuses (``api.py``). Whether the sender should retry follows from the branch:
a ``TemporaryFailure`` may work later (4xx), a ``Refusal`` never will (5xx).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .smtp_replies import SmtpReply
    from .tasks import TaskInfo


class RcMtaError(Exception):
    """Base of every error rc-mta raises on purpose."""


class ConfigError(RcMtaError):
    """The configuration is wrong; the message names the key."""


class StoreIncompatible(RcMtaError):
    """The store lacks what this version needs and cannot add: an operator must act."""


# May work later: the sender (or the poller, or the API client) retries. ----------------------


class TemporaryFailure(RcMtaError):
    """Something that may work later (store busy, backend down)."""


class StoreUnavailable(TemporaryFailure):
    """The database is busy, locked, read-only or gone for now."""


class ReaderBusy(TemporaryFailure):
    """Too many messages wait to be read: the sender retries in a few minutes."""


class BackendUnavailable(TemporaryFailure):
    """The workflow system (or a service it needs) could not be reached or answered oddly."""


class BackendOutcomeUnknown(BackendUnavailable):
    """The backend was asked to act and no answer came back (its own timeout, or the
    connection dropped once the request was sent): it may have acted, or not. An N-of-M
    decision stands meanwhile (``Pipeline._act_together``): taken back, another member's
    answer could act the other way beside it. With the webhook it stands even once its
    claim is taken for dead (``SiblingOutcomeUnknown``)."""


class ActionOutcomeUnknown(BackendOutcomeUnknown):
    """An action on the task was cut at ``[tasks] action_deadline``: the backend may have
    acted or not. The answer's claim (and its N-of-M decision) is kept, so no other answer
    acts until it is taken for dead; the sender retries."""

    def __init__(self, task_id: str, deadline: float) -> None:
        super().__init__(f"acting on task {task_id} did not end within {deadline:g}s: whether it acted is unknown")
        self.task_id = task_id


class DecisionPending(TemporaryFailure):
    """Another answer decided this N-of-M task and is telling the backend right now: the
    decision is not final (if the backend cannot be told, it is taken back), so this one
    waits and is tried again. So it does while another request's answer to the task is
    being acted on, where the backend cannot be asked how that ended (the webhook)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} is being decided by another answer right now")
        self.task_id = task_id


class ActionNotRecorded(StoreUnavailable):
    """The task was acted on, but the store could not record it: the sender's retry of the
    same reply records it and is answered as done, without acting again."""

    def __init__(self, task_id: str, action_past: str, why: str) -> None:
        super().__init__(f"task {task_id} was {action_past}, but the store could not record it: {why}")
        self.task_id = task_id
        self.action_past = action_past


class EarlierAnswerOutcomeUnknown(TemporaryFailure):
    """An earlier answer to this same request, another action (or another sender's), was
    cut off while it was acted on, and the backend cannot be asked whether it acted (the
    webhook): this one is not sent under the same request id, which the receiver may take
    for a repeat of that one (and answer 2xx for what it did) or act on beside it. That
    answer's claim stays as it was: its sender's retry settles it, or a person deciding the
    task in the workflow system."""

    def __init__(self, task_id: str, request_id: str, action: str) -> None:
        super().__init__(f"an earlier answer to request {request_id}, to {action} task {task_id}, may have acted")
        self.task_id, self.request_id, self.action = task_id, request_id, action


class RefusedInDoubt(TemporaryFailure):
    """The backend refused this try of an answer whose earlier try may have acted (the
    webhook, ``Pipeline._keeps_doubt``): the refusal says nothing of that try, so the
    claim and the doubt stand, and the sender is told a 4xx, not the refusal's 5xx: only
    its retry can settle the doubt, and a 5xx would end its retries."""

    def __init__(self, task_id: str, refusal: Refusal) -> None:
        super().__init__(f"{refusal}; an earlier try of this answer may have acted on task {task_id}")
        self.task_id, self.refusal = task_id, refusal


class BackendAuthFailed(BackendUnavailable):
    """The workflow system refused our credentials: an operator must act; the sender retries."""


# Never will: the answer is no, with the reason. ----------------------------------------------


class Refusal(RcMtaError):
    """A reply (or request) refused for good."""


class TokenMalformed(Refusal):
    """The reply address is damaged: not one we could have issued."""


class TokenForged(Refusal):
    """The reply address is well-formed but its signature does not check out (or it was never issued)."""


class TokenKeyRetired(Refusal):
    """The reply address was signed with a key this server no longer has."""


class TokenExpired(Refusal):
    def __init__(self, expired_at: str) -> None:
        super().__init__(f"the reply address expired at {expired_at}")
        self.expired_at = expired_at


class RequestRevoked(Refusal):
    """The completion request was withdrawn; ``now_with`` says who has the task now, when
    it was withdrawn because the task went to someone else."""

    def __init__(self, message: str, now_with: str | None = None) -> None:
        super().__init__(message)
        self.now_with = now_with


class RequestAnswered(Refusal):
    """Another message already answered the request."""

    def __init__(self, task_id: str, action_past: str) -> None:
        super().__init__(f"the request was already answered: task {task_id} {action_past}")
        self.task_id, self.action_past = task_id, action_past


class DecisionMade(Refusal):
    """Several owners decide this task together, and they already did (or one failed it)."""

    def __init__(self, task_id: str, action_past: str, by: str) -> None:
        super().__init__(f"the decision on task {task_id} was already made: {action_past} by {by}")
        self.task_id, self.action_past, self.by = task_id, action_past, by


class SiblingOutcomeUnknown(TemporaryFailure):
    """Another request's answer to the task (alone, or the one that decided its N-of-M
    group) was cut off while it was acted on (its attempt died, or the backend gave no
    answer), and the backend cannot be asked whether it acted (the webhook): this answer is
    not acted on beside it on a guess, nor is such a group decision taken back. The doubt is
    settled when that answer's sender tries again (it takes the dead claim over and
    finishes; a try that fails again without acting keeps it), so this one waits too; a
    person may also decide the task in the workflow system."""

    def __init__(self, task_id: str, request_id: str) -> None:
        super().__init__(f"whether the answer to request {request_id} acted on task {task_id} is unknown")
        self.task_id, self.request_id = task_id, request_id


class NotInApprovalGroup(Refusal):
    """An answer to a request outside the N-of-M group that decides its task: one person's
    answer must not decide what several must decide together."""

    def __init__(self, task_id: str, needed: int) -> None:
        super().__init__(f"task {task_id} is decided by a group of approvers ({needed} must approve)")
        self.task_id, self.needed = task_id, needed


class ApprovalConflict(Refusal):
    """A new request that would let its task be decided past an N-of-M group's rule (or a
    group past requests that may already decide it); the message says what to do instead.
    ``group_id`` names the group the person may be added to instead."""

    def __init__(self, why: str, remedy: str, group_id: str | None = None) -> None:
        self.why, self.remedy, self.group_id = why, remedy, group_id
        super().__init__(self.said(f'"approval_group": "{group_id}"'))

    def said(self, how_to_add: str) -> str:
        """The sentence, with how to add the person to the group as the door spells it."""
        return f"{self.why}: {self.remedy}" + (f" ({how_to_add})" if self.group_id else "")


class TaskNotFound(Refusal):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class TaskNotInProgress(Refusal):
    def __init__(self, task: TaskInfo) -> None:
        super().__init__(f"task {task.id} is {task.status}")
        self.task = task


class BackendRefused(Refusal):
    """The workflow system said no, for its own reason."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the workflow system refused: {why}")
        self.why = why


class MessageRefused(Refusal):
    """A refusal whose SMTP reply is decided where it happens (the message itself is at
    fault: unreadable, not the owner's, undecidable…); ``reply`` says which, and why."""

    def __init__(self, reply: SmtpReply) -> None:
        super().__init__(reply.text)
        self.reply = reply
