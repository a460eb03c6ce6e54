"""Serve an aiohttp application from a thread with its own event loop: how the local
stand-ins (Release, the webhook receiver, Graph) run beside a synchronous test."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


async def listen_on_free_port(runner: web.AppRunner) -> int:
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return int(runner.addresses[-1][1])


class AppThread:
    def __init__(self, app: web.Application, name: str) -> None:
        self.app = app
        self.name = name
        self.runner = web.AppRunner(app, handle_signals=False)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, listen: Callable[[web.AppRunner], Awaitable[int]] = listen_on_free_port) -> int:
        """Set up, listen (``listen`` returns the port), and serve until ``stop``."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self.runner.setup())
                self.port = loop.run_until_complete(listen(self.runner))
            except BaseException as exc:
                failed.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} did not start")
        if failed:
            raise RuntimeError(f"{self.name} did not start: {failed[0]!r}")
        return self.port

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (e.g. stop listening) and wait for it."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start a coroutine on the server's loop without waiting for it (e.g. a callback)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None
