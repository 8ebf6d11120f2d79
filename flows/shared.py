"""Flows that many hypervisors hold identically, built once and shared.

A port's ARP and ND answers are the same flow on every hypervisor hosting its
network, and its L2 unicast flow the same on every hypervisor that reaches it
over the same tunnel (or patch) port number. Each is a pure function of a few
values, so it is memoised on exactly those values: the key is the whole input,
never an object's identity, so a changed port, network or tunnel endpoint is a
new key and cannot be served a stale flow. Besides saving the work per
hypervisor, sharing the objects keeps one copy of each such flow in memory.

The table is bounded: when full it is emptied and refills with what is in use.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

MAX_ENTRIES = 1_000_000
_flows: dict[Hashable, Any] = {}


def shared_flow(key: Hashable, build: Callable[..., Any], *args: Any) -> Any:
    """What ``build(*args)`` returns for ``key`` (a flow, flows, or None), built only the first time.

    ``key`` must hold every value ``build`` reads from ``args``.
    """
    try:
        return _flows[key]
    except KeyError:
        pass
    if len(_flows) >= MAX_ENTRIES:
        _flows.clear()
    flow = _flows[key] = build(*args)
    return flow


def clear() -> None:
    """Forget every shared flow (tests; memory)."""
    _flows.clear()
