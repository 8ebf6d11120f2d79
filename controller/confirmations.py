"""Who waits for which bridges to confirm a change (``GET /sync?wait=``), woken once, when the last one has.

A bridge confirms a change by committing its bundle (controller.switch). A waiter used to sleep
on one condition every confirmation notified, and re-check its bridges at each: a create that
touches 41 bridges woke each ``GET /sync?wait`` 41 times, each wake a wait for the interpreter
among thousands of threads. Here the confirming switch's thread checks the waiters that name it
(a few lookups) and wakes a waiter only when nothing it waits for is left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

RECHECK = 0.5  # s between a waiter's own checks: what a missed notification (a role granted) could cost

Target = Callable[[Any, "int | None"], "int | None"]  # (switch, generation or None) -> generation to reach


class _Waiting:
    """One waiter: the switches it still waits for, each with the engine generation it must reach."""

    def __init__(self, pending: dict[Any, int | None], target: Target) -> None:
        self.pending = pending
        self.target = target
        self.event = threading.Event()

    def check(self, sw: Any) -> None:
        """Drop ``sw`` if it is gone or holds its generation (a generation None: its flows were not built)."""
        generation = self.target(sw, self.pending[sw])
        if not sw.alive or (generation is not None and sw.holds(generation)):
            del self.pending[sw]
        else:
            self.pending[sw] = generation
        if not self.pending:
            self.event.set()


class Confirmations:
    """The waiters of ``GET /sync?wait=`` and the switches they wait for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: set[_Waiting] = set()

    def confirmed(self, sw: Any) -> None:
        """``sw`` confirmed a sync or went away (from its own thread): wake whoever waited for it last."""
        with self._lock:
            for waiting in self._waiting:
                if sw in waiting.pending:
                    waiting.check(sw)

    def wait(self, pending: dict[Any, int | None], target: Target, timeout: float) -> bool:
        """Wait until every switch of ``pending`` (switch -> generation to reach, None: not built yet) holds its
        generation or is gone, at most ``timeout`` s; True if they all do."""
        deadline = time.monotonic() + timeout
        waiting = _Waiting(dict(pending), target)
        with self._lock:  # a check and the registration in one hold: no confirmation falls in between
            for sw in list(waiting.pending):
                waiting.check(sw)
            if not waiting.pending:
                return True
            self._waiting.add(waiting)
        try:
            while (left := deadline - time.monotonic()) > 0:
                if waiting.event.wait(min(left, RECHECK)):
                    return True
                with self._lock:  # role grants do not notify: check everything now and then
                    for sw in list(waiting.pending):
                        waiting.check(sw)
                if not waiting.pending:
                    return True
            return False
        finally:
            with self._lock:
                self._waiting.discard(waiting)
