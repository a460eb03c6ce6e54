"""The event loop ``serve`` runs on: asyncio's own, made to behave when file descriptors run out.

Why: when ``accept()`` fails for want of a descriptor (EMFILE and its kin), CPython before
the fix of gh-151615 (3.11 on Debian 12 among them) takes the listener off the loop and
schedules its return in a second, but then goes on calling ``accept()`` up to the backlog
(1,024 here): each failure logs an ERROR with its traceback and schedules one more return,
and each return that comes back while descriptors are still short does it all again. Seen
here: 56,000 tracebacks in 27 s, and clients left ungreeted for a minute, from a limit set
a little too low. rc-mta tells new clients ``421`` well before the limit
(``inbound.limits``), so this happens only when the process's other descriptors eat the
reserve; then it must stay one warning a second and a loop that keeps serving.

And name look-ups (``getaddrinfo``: aiohttp's, aiosmtplib's, aioimaplib's connects) run in
threads of their own, not in asyncio's default executor, where the store's calls run: a DNS
server that never answers holds a look-up until glibc's resolver gives up (30 s for each
nameserver at most, with each retry), and in that executor every store call queued behind
such look-ups (aiohttp lets a look-up run on after the request that wanted it was cut),
and the end of the loop waited for them all. A look-up's thread is a daemon: no one waits
for it, and its answer is dropped once no one wants it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("rc_mta.inbound")

# What accept() fails with when the process or the system is out of a resource.
_SHORT_OF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message for it


class _ListenerOnce:
    """The listening socket as asyncio's accept loop sees it for one round: after one
    ``accept()`` failed for want of a resource, the next says nothing is pending, so the
    round ends there (one error, one return scheduled) as it does on the fixed versions."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._short = False

    def accept(self) -> tuple[socket.socket, Any]:
        if self._short:
            raise BlockingIOError(errno.EAGAIN, "accept() failed for want of a resource this round")
        try:
            return self.sock.accept()
        except OSError as exc:
            self._short = exc.errno in _SHORT_OF
            raise

    def __getattr__(self, name: str) -> Any:  # fileno, family, type...: the socket's own
        return getattr(self.sock, name)


class ServingLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, with accept() ending its round at the first resource error
    (two private methods overridden, by passing through: their arguments stay asyncio's),
    and name look-ups each in a daemon thread of its own (``getaddrinfo``)."""

    def __init__(self) -> None:
        super().__init__()
        self.set_exception_handler(_exception_handler)

    async def getaddrinfo(
        self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        """``socket.getaddrinfo`` as asyncio's, but off the default executor (see above)."""
        found: asyncio.Future[list[Any]] = self.create_future()

        def answer(result: list[Any] | None, error: BaseException | None) -> None:
            if found.done():
                return  # no one waits for it any more
            if error is not None:
                found.set_exception(error)
            else:
                found.set_result(result or [])

        def look_up() -> None:
            try:
                result: list[Any] | None = socket.getaddrinfo(host, port, family, type, proto, flags)
                error: BaseException | None = None
            except Exception as exc:  # handed to the caller, as the executor would
                result, error = None, exc
            try:
                self.call_soon_threadsafe(answer, result, error)
            except RuntimeError:
                pass  # the loop is closed: rc-mta is gone

        threading.Thread(target=look_up, name="getaddrinfo", daemon=True).start()
        return await found

    def _accept_connection(self, protocol_factory: Any, sock: Any, *args: Any, **kwargs: Any) -> None:
        listener = sock.sock if isinstance(sock, _ListenerOnce) else sock
        super()._accept_connection(protocol_factory, _ListenerOnce(listener), *args, **kwargs)  # type: ignore[misc]

    def _start_serving(self, protocol_factory: Any, sock: Any, *args: Any, **kwargs: Any) -> None:
        # A return scheduled after a resource error, for a listener closed meanwhile
        # (rc-mta stopping): nothing to serve. asyncio would log "Invalid file descriptor".
        if sock.fileno() < 0:
            return
        super()._start_serving(protocol_factory, sock, *args, **kwargs)  # type: ignore[misc]


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """accept()'s resource errors as one line that says what it means; the rest as asyncio does."""
    exc = context.get("exception")
    if context.get("message") == _ACCEPT_FAILED and isinstance(exc, OSError):
        descriptors = exc.errno in (errno.EMFILE, errno.ENFILE)
        log.warning(
            "%s: a new connection waits in the listen queue (accept: %s); trying again in a second%s",
            "file descriptors run short" if descriptors else "memory runs short",
            exc.strerror or exc,
            " (raise LimitNOFILE / ulimit -n)" if descriptors else "",
        )
        return
    loop.default_exception_handler(context)


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a ``ServingLoop``."""
    with asyncio.Runner(loop_factory=ServingLoop) as runner:
        return runner.run(main)
