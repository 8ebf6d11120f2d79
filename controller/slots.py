"""A FIFO semaphore: what bounds how many bridges are read and pushed at a time (controller.switch)."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator


class SyncSlots:
    """At most ``limit`` holders at a time, admitted in arrival order (a FIFO semaphore)."""

    def __init__(self, limit: int):
        self._lock = threading.Lock()
        self._limit = limit
        self._busy = 0
        self._queue: deque[threading.Event] = deque()

    @property
    def limit(self) -> int:
        """How many may hold a slot at once."""
        return self._limit

    def set_limit(self, limit: int) -> None:
        """Change the bound (at least 1); waiters the new bound lets in are admitted now."""
        if limit < 1:
            raise ValueError(f"sync concurrency must be at least 1, not {limit}")
        with self._lock:
            self._limit = limit
            while self._queue and self._busy < self._limit:
                self._busy += 1
                self._queue.popleft().set()

    def acquire(self, first: bool = False) -> None:
        """Wait for a slot (after everyone who asked before; ``first``: before them, to take back a slot lent)."""
        with self._lock:
            if self._busy < self._limit and (first or not self._queue):
                self._busy += 1
                return
            turn = threading.Event()
            (self._queue.appendleft if first else self._queue.append)(turn)
        turn.wait()  # release() handed its slot over to us

    def release(self) -> None:
        """Give the slot to the longest waiter, or free it."""
        with self._lock:
            if self._queue and self._busy <= self._limit:
                self._queue.popleft().set()
            else:
                self._busy -= 1

    def __enter__(self) -> SyncSlots:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @contextlib.contextmanager
    def lent(self) -> Iterator[None]:
        """Give the caller's slot to the next waiter for a while (it waits on something slow); take one back
        first after."""
        self.release()
        try:
            yield
        finally:
            self.acquire(first=True)
