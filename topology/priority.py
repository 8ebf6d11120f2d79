"""The API's writes first: background work steps aside while one is in flight.

A controller busy with a cold sync (a thousand bridges connecting, each rebuilding its
hypervisor's flows and receiving them) runs its background threads flat out; an API write then
waits for the topology's lock behind them and, in CPython, for the GIL at every step that gives it
up (each SQLite statement, each socket read). The write path counts itself in flight
(:func:`foreground`, from before it queues for the write lock); background work that can wait a
little asks :func:`after_foreground` before its next step, which returns at once when no write is
in flight, and otherwise when the last one ends, or after ``limit`` seconds at most: a stream of
writes delays background work by a bounded amount, never starves it.

Process-wide on purpose: the GIL is.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_in_flight = 0  # write methods running or queued, under _done
_done = threading.Condition(threading.Lock())


@contextlib.contextmanager
def foreground() -> Iterator[None]:
    """Count the caller (an API write) as in flight while the block runs."""
    global _in_flight
    with _done:
        _in_flight += 1
    try:
        yield
    finally:
        with _done:
            _in_flight -= 1
            if not _in_flight:
                _done.notify_all()


def busy() -> bool:
    """Whether a write is in flight now (a lock-free read: a hint for a hot loop)."""
    return _in_flight > 0


def after_foreground(limit: float) -> None:
    """Wait until no write is in flight, ``limit`` seconds at most (at once if none is)."""
    if not _in_flight:
        return
    with _done:
        _done.wait_for(lambda: not _in_flight, limit)
