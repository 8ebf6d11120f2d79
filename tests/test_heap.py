"""Freezing the heap out of the collector leaks nothing a controller lets go of (controller.heap).

What lives a second is frozen into the permanent generation, which no collection walks; a
frozen object is still freed by reference counting, but a reference cycle that dies after
it was frozen would never be. The one the controller makes per connection (switch,
datapath, socket, reader callbacks) is broken when the switch disconnects: a bridge that
connects, lives past a freeze, and goes, again and again, must leave the permanent
generation where it was (``tenantflow_gc_frozen_objects``, a real controller process and
a fake switch over TCP). Measured: 0 objects per connection; 71 without the cycle broken.
"""

from __future__ import annotations

import time
from pathlib import Path

from apps.lab.controller import ControllerProcess
from tests.e2e_fixtures import wait_until
from tests.fake_switch import FakeSwitch

CYCLES = 10


def _frozen(ctl: ControllerProcess) -> float:
    return ctl.metrics()["tenantflow_gc_frozen_objects"]


def _disconnects(ctl: ControllerProcess) -> float:
    return ctl.metrics().get("tenantflow_switch_disconnects_total", 0.0)


def test_switches_that_come_and_go_after_a_freeze_leave_nothing_frozen(tmp_path: Path) -> None:
    with ControllerProcess(str(tmp_path / "ctl")) as ctl:
        counts = []
        for i in range(CYCLES):
            sw = FakeSwitch(("127.0.0.1", ctl.of_port), dpid=0xF00 + i % 3)
            wait_until(lambda s=sw: s.flow_dumps, 10, "the flow dump of a connecting switch")
            time.sleep(1.3)  # lives past a freeze (controller.heap.FREEZE_INTERVAL)
            sw.close()
            wait_until(lambda n=i: _disconnects(ctl) > n, 10, "the disconnect")
            time.sleep(1.3)  # and what it left is frozen by now too, if anything
            counts.append(_frozen(ctl))
        # After a warm-up (first connections create lasting state: metrics series, os-ken's caches),
        # each further connection that came and went leaves nothing behind in the permanent generation.
        growth = (counts[-1] - counts[3]) / (CYCLES - 4)
        assert growth < 20, f"frozen objects per connection that came and went: {growth:.0f} ({counts})"


def _clock(*readings: float):
    """A monotonic clock that gives ``readings`` one after the other."""
    it = iter(readings)
    return lambda: next(it)


def test_the_frozen_count_is_exact_while_cheap_and_reused_while_costly(monkeypatch) -> None:
    import gc

    from controller import heap

    monkeypatch.setattr(heap, "_counted", (0, 0.0))
    kept = [[i] for i in range(1000)]
    try:
        # A cheap count (1 ms) is counted anew at every call: the objects frozen meanwhile show at once.
        before = heap.frozen_objects(_clock(0.0), _clock(0.0, 0.001))
        gc.freeze()
        assert heap.frozen_objects(_clock(0.002), _clock(0.0, 0.001)) >= before + len(kept)
        # A costly one (60 ms) is reused for 1,000 times its cost: the objects unfrozen meanwhile do not show
        # until then (the walk holds the interpreter: a scrape must not repeat it at will).
        costly = heap.frozen_objects(_clock(10.0), _clock(0.0, 0.06))
        gc.unfreeze()
        assert heap.frozen_objects(_clock(69.0)) == costly
        assert heap.frozen_objects(_clock(70.1), _clock(0.0, 0.06)) == gc.get_freeze_count() < costly
    finally:
        gc.unfreeze()
