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

_thread: threading.Thread | None = None
_lock = threading.Lock()


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


def install(interval: float = FREEZE_INTERVAL) -> None:
    """Start the freezing thread (once per process; later calls do nothing)."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        _thread = threading.Thread(target=_run, args=(interval,), name="gc-freeze", daemon=True)
        _thread.start()
    LOG.debug("young survivors frozen every %g s", interval)
