"""Racing the store against itself: the same call from several threads released at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def all_at_once(count: int, act: Callable[[int], T]) -> list[T]:
    """``act(0)`` … ``act(count - 1)``, each in a thread of its own, all let go together (a
    barrier), so they meet inside the store; their results in that order. A call that
    raises makes this raise: no thread's failure is lost."""
    barrier = threading.Barrier(count)

    def one(i: int) -> T:
        barrier.wait()
        return act(i)

    with ThreadPoolExecutor(count) as threads:
        return [future.result() for future in [threads.submit(one, i) for i in range(count)]]
