"""Keep the controller's long-lived heap out of the cyclic garbage collector's full passes.

Why: CPython's full collection (generation 2) is stop-the-world: it walks every tracked
object not frozen, holding the GIL, so no thread runs meanwhile, the connections' reader
threads that answer echo requests included. The controller starts with ``gc.freeze()``
after loading the topology, and the engine freezes its first build; but a topology that
grows through the API afterwards (the scale bench creates all 20,000 ports that way) leaves
millions of flows, graph records and their tuples in generation 2, and CPython runs a full
pass each time that generation grows by a quarter, and at least every few seconds while
writes and syncs churn. Measured on the 1,000-bridge scale lab (2.2 M flows, probe in
``scripts/storm_probe.py``): full passes every ~30 s during batches of port creates, each
longer than the last (1.1, 1.4, 2.6, 3.3 s on an otherwise quiet 2-core machine), with the
process silent for as long; on a loaded machine one pass left every bridge's echo request
unanswered past OVS's inactivity probe (5 s + 5 s): 955 of 1,000 bridges dropped the
controller within 10 s, reconnected, and were read and reconciled again.

What: a housekeeping thread (:func:`install`) collects the young generations and then
freezes what survived, every ``FREEZE_INTERVAL`` seconds. Everything that has lived that
long goes to the permanent generation, which no collection walks; a full pass then only
walks the last interval's survivors (milliseconds). Frozen objects are still freed by
reference counting the moment nothing refers to them: only a reference cycle that becomes
garbage after it was frozen is never reclaimed, so the controller's long-lived objects
that die (a disconnected switch's connection and worker) break their cycles themselves
(``Switch.stop``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time

LOG = logging.getLogger("tenantflow.heap")
FREEZE_INTERVAL = 1.0  # seconds between "collect the young generations, freeze the survivors"

# Counting the permanent generation walks it (``gc.get_freeze_count`` follows a linked list of
# every frozen object, holding the GIL): 20 ns an object freshly built (45 ms for the 2.3 M of an
# engine at 1,000 hypervisors), 70-90 ns in a controller's scattered heap (11-14 ms for the
# 154,000 of a controller with a few switches); the scale lab's controller holds 2.2-5.2 M, and
# each scrape of /metrics held every thread for the walk. So the count is exact while it costs
# under COUNT_EXACT_BELOW seconds of CPU, and reused for COUNT_REUSE_FACTOR times what it cost
# after (at most 0.1 % of the time spent walking, whoever scrapes how often).
COUNT_EXACT_BELOW = 0.05
COUNT_REUSE_FACTOR = 1000.0

_thread: threading.Thread | None = None
_lock = threading.Lock()
_count_lock = threading.Lock()
_counted: tuple[int, float] = (0, 0.0)  # (the last count, until when it is reused: time.monotonic())


def freeze_survivors() -> int:
    """Collect generations 0 and 1 (young cyclic garbage), then freeze every object left; the freed count."""
    freed = gc.collect(1)
    gc.freeze()
    return freed


def _run(interval: float) -> None:
    while True:
        time.sleep(interval)
        if gc.isenabled():  # a full build pauses the collector (flows.engine_state.gc_paused): leave it be
            freeze_survivors()


def frozen_objects(clock=time.monotonic, cpu_clock=time.thread_time) -> int:
    """Objects in the permanent generation, counted anew unless the last count was costly and recent (see above).

    The cost is the walk's CPU time (``cpu_clock``): on a busy controller the wall time around it
    also holds the wait for the interpreter, which is not the walk's.
    """
    global _counted
    with _count_lock:  # one walk at a time, the others reuse it
        count, reuse_until = _counted
        now = clock()
        if now < reuse_until:
            return count
        cpu = cpu_clock()
        count = gc.get_freeze_count()
        cost = cpu_clock() - cpu
        _counted = (count, now + cost * COUNT_REUSE_FACTOR if cost >= COUNT_EXACT_BELOW else 0.0)
        return count


def install(interval: float = FREEZE_INTERVAL) -> None:
    """Start the freezing thread (once per process; later calls do nothing)."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        _thread = threading.Thread(target=_run, args=(interval,), name="gc-freeze", daemon=True)
        _thread.start()
    LOG.debug("young survivors frozen every %g s", interval)
