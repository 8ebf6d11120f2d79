"""Flows that many hypervisors hold identically, built once and shared.

A port's ARP and ND answers are the same flow on every hypervisor hosting its
network, and its L2 unicast flow the same on every hypervisor that reaches it
over the same tunnel (or patch) port number. Each is a pure function of a few
values, so it is memoised on exactly those values: the key is the whole input,
never an object's identity, so a changed port, network or tunnel endpoint is a
new key and cannot be served a stale flow. Besides saving the work per
hypervisor, sharing the objects keeps one copy of each such flow in memory.

The table is swept as it grows (:func:`sweep`): an entry nothing else holds any more (a
deleted port's flows, a changed port's old ones) goes, so the table stays about twice what
the hypervisors hold; when full regardless it is emptied and refills with what is in use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from typing import Any

MAX_ENTRIES = 1_000_000  # a last resort: sweep() keeps the table to about twice what is held elsewhere
SWEEP_MIN = 256  # entries before the first sweep (and the least a sweep waits for)
_flows: dict[Hashable, Any] = {}
_sweep_at = SWEEP_MIN  # the table's size that triggers the next sweep
# What sys.getrefcount sees in _held for a value only the table holds (the table, _held's ``value``, the
# argument), and for an item only its tuple holds (the tuple, the loop's ``item``, the argument): tests/test_memo.py.
_ALONE = 3
_ALONE_ITEM = 3


def shared_flow(key: Hashable, build: Callable[..., Any], *args: Any) -> Any:
    """What ``build(*args)`` returns for ``key`` (a flow, flows, or None), built only the first time.

    ``key`` must hold every value ``build`` reads from ``args``.
    """
    try:
        return _flows[key]
    except KeyError:
        pass
    global _sweep_at
    if len(_flows) >= _sweep_at:
        sweep()
        _sweep_at = max(SWEEP_MIN, 2 * len(_flows))  # twice what is left: O(1) per entry added
    if len(_flows) >= MAX_ENTRIES:
        _flows.clear()
    flow = _flows[key] = build(*args)
    return flow


def sweep() -> int:
    """Forget the shared flows nothing but this table holds any more; how many entries went.

    A flow in use is held by a hypervisor's flows in the engine (or the units' memo): it stays
    shared, and so does a tuple of flows any of which is held. One that nothing holds is a
    deleted port's, or a changed port's old value (the keys are whole inputs, so a changed
    input never asks for it again); before the table was swept they stayed until it held a
    million entries (README, "Soak"). Dropping an entry that is asked for again costs only its
    rebuilding.
    """
    try:
        keys = list(_flows)  # a copy in C: engines in other threads add meanwhile
    except RuntimeError:  # changed during the copy after all (another thread ran in a finalizer): next time
        return 0
    stale = [key for key in keys if not _held(_flows.get(key))]
    for key in stale:
        _flows.pop(key, None)
    return len(stale)


def _held(value: Any) -> bool:
    """Whether anything but the table (and this call) refers to ``value``, or to a flow of a tuple of flows."""
    if not value:  # None or (): nothing to share, cheap to recompute
        return False
    if sys.getrefcount(value) > _ALONE:
        return True
    return type(value) is tuple and any(sys.getrefcount(item) > _ALONE_ITEM for item in value)


def clear() -> None:
    """Forget every shared flow (tests; memory)."""
    _flows.clear()
