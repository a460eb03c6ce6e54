"""Named errors; their type decides 4xx or 5xx in one place (the pipeline)."""

from __future__ import annotations

from .smtp_replies import SmtpReply


class RcMtaError(Exception):
    """Base of every error rc-mta raises on purpose."""


class ConfigError(RcMtaError):
    """The configuration is wrong; the message names the key."""


class TemporaryFailure(RcMtaError):
    """Something that may work later (store busy, backend down): the sender retries."""


class BackendAuthFailed(TemporaryFailure):
    """The workflow system refused our credentials: an operator must act; the sender retries."""


class PermanentRefusal(RcMtaError):
    """The reply is refused for good, with the SMTP reply that says why."""

    def __init__(self, reply: SmtpReply) -> None:
        super().__init__(str(reply))
        self.reply = reply
