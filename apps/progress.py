"""Progress and an ETA for long work, on a terminal only: the scale lab, the bench, ``tenantflow check``.

One line, redrawn in place (``label: 340/1000 (34%), 12 s, ETA 23 s``), at most every
``interval`` seconds and once at the end. Nothing at all unless the stream is a terminal: a
log file, a pipe or CI sees exactly what it saw before. Thread-safe: the scale lab's worker
threads advance one counter.

Work is counted in units: items (bridges, ports), or weights (seconds a bench section took
last time), so the ETA is ``elapsed * (total - done) / done`` either way.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

CLEAR = "\r\033[K"  # back to the line's start, erase it


def human(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) is a terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or no isatty
        return False


class Progress:
    """``label: done/total (pct), elapsed, ETA`` on one terminal line; silent when not a terminal."""

    def __init__(self, label: str, total: float, *, stream: TextIO | None = None, enabled: bool | None = None,
                 interval: float = 0.25, unit: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = float(total)
        self.done = 0.0
        self.unit = unit  # shown after the counts ("bridges"); "" for none
        self.stream = sys.stdout if stream is None else stream
        self.enabled = on_terminal(self.stream) if enabled is None else enabled
        self.interval = interval
        self._clock = clock
        self._start = clock()
        self._drawn = -1.0e9
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return self._clock() - self._start

    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before any work is done)."""
        if self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed * max(0.0, self.total - self.done) / self.done

    def line(self) -> str:
        """The text of the progress line."""
        counts = (f"{self.done:.0f}/{self.total:.0f}" if self.total == int(self.total) and self.done == int(self.done)
                  else f"{self.done:.1f}/{self.total:.1f}")
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total > 0 else ""
        eta = self.eta()
        tail = f", ETA {human(eta)}" if eta is not None and self.done < self.total else ""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.label}: {counts}{unit}{pct}, {human(self.elapsed)}{tail}"

    def advance(self, amount: float = 1.0) -> None:
        """``amount`` more units done (from any thread); the line is redrawn if ``interval`` has passed."""
        with self._lock:
            self.done += amount
            self._draw()

    def update(self, done: float) -> None:
        """Set how many units are done (e.g. bridges connected so far)."""
        with self._lock:
            self.done = float(done)
            self._draw()

    def close(self) -> None:
        """Draw the final state and end the line."""
        with self._lock:
            if self.enabled:
                self._draw(force=True)
                self.stream.write("\n")
                self.stream.flush()
                self.enabled = False

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if not force and now - self._drawn < self.interval and self.done < self.total:
            return
        self._drawn = now
        self.stream.write(CLEAR + self.line())
        self.stream.flush()
