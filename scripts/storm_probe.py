"""Run ``tenantflow controller`` with stall probes: every GC pass over 50 ms, and every gap over 0.5 s
in a 50 ms heartbeat thread (the GIL held, or the process not running), logged to stderr."""

import gc
import os
import signal
import sys
import threading
import time

_t: dict[str, float] = {}


def _gc(phase: str, info: dict) -> None:
    if phase == "start":
        _t["gc"] = time.perf_counter()
        return
    took = time.perf_counter() - _t.get("gc", time.perf_counter())
    if took > 0.05:
        print(f"{time.strftime('%H:%M:%S')} PROBE gc gen{info['generation']} {took * 1000:.0f} ms "
              f"collected {info['collected']} counts {gc.get_count()} tracked?", file=sys.stderr, flush=True)


def _heartbeat() -> None:
    last = time.perf_counter()
    while True:
        time.sleep(0.05)
        now = time.perf_counter()
        if now - last > 0.5:
            print(f"{time.strftime('%H:%M:%S')} PROBE heartbeat gap {(now - last) * 1000:.0f} ms",
                  file=sys.stderr, flush=True)
        last = now


def _leaks(*_args) -> None:
    """SIGUSR1: every object (frozen or not) in unreachable cycles, by type: what a frozen heap leaks."""
    from collections import Counter

    t0 = time.perf_counter()
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    n = gc.collect()
    top = Counter(type(o).__name__ for o in gc.garbage).most_common(12)
    gc.garbage.clear()
    gc.set_debug(0)
    print(f"{time.strftime('%H:%M:%S')} PROBE leaks: {n} unreachable in {time.perf_counter() - t0:.1f} s: {top}",
          file=sys.stderr, flush=True)


signal.signal(signal.SIGUSR1, _leaks)
gc.callbacks.append(_gc)
threading.Thread(target=_heartbeat, name="probe", daemon=True).start()
sys.argv = ["tenantflow", *sys.argv[1:]]
# this checkout's code, not the one the venv's editable install points at
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from apps.cli import main  # noqa: E402

sys.exit(main())
