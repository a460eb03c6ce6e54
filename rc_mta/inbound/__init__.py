"""The SMTP and LMTP front: translates protocol stages into pipeline calls."""

from .handler import ReplyHandler
from .protocol import LmtpServer, SmtpServer, session_limits, start_listener
from .shutdown import Listener

__all__ = ["Listener", "LmtpServer", "ReplyHandler", "SmtpServer", "session_limits", "start_listener"]
