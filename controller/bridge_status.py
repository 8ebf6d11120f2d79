"""Each hypervisor's bridge as an operator sees it: connected, synced, flows per stage, last sync.

What the topology page (``/ui``, :mod:`apps.ui`) shows on each hypervisor, read from the
controller's own state, never from a switch: the flows compiled for it (the engine's),
the flows the controller knows it holds (the cookies read on connect and every committed
bundle since; a cookie's top byte is its table), and when its last sync completed.

Counting a hypervisor's flows by stage walks its cookies: at 1,000 bridges of 2,200 flows,
2.2 M of them. The page polls every second, so each count is kept until what it counted
changes (the engine's generation of that hypervisor; the switch's installed set and last
commit), and a poll of an unchanged cloud costs a dictionary lookup per hypervisor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from flows.pipeline import COOKIE_STAGE_SHIFT, STAGE_BY_TABLE

_COUNTS: dict[tuple, tuple[object, dict[str, int]]] = {}  # (what, hypervisor) -> (its version, counts)


def stage_counts(cookies: Iterable[int]) -> dict[str, int]:
    """How many of ``cookies`` each stage holds, by stage name, in table order."""
    by_table = Counter(c >> COOKIE_STAGE_SHIFT for c in cookies)
    return {_stage_name(t): by_table[t] for t in sorted(by_table)}


def _stage_name(table_id: int) -> str:
    stage = STAGE_BY_TABLE.get(table_id)
    return stage.name if stage is not None else f"table {table_id}"


def _cached(key: tuple, version: object, cookies: Iterable[int]) -> dict[str, int]:
    """``stage_counts(cookies)``, computed again only when ``version`` changed."""
    hit = _COUNTS.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    counts = stage_counts(cookies)
    _COUNTS[key] = (version, counts)
    return counts


def bridge_status(app: Any) -> dict[str, dict[str, Any]]:
    """Hypervisor name -> the state of its bridge, for every registered hypervisor.

    ``state``: ``up`` (connected, and its last bundle holds every change: synced), ``syncing``
    (connected, changes not confirmed yet, or its last sync failed and is being retried),
    ``standby`` (connected, mastered by another instance of a cluster) or ``down`` (no bridge
    connected). ``flows``: compiled flows per stage; ``installed``: the flows the controller
    knows the bridge holds, per stage; ``last_sync``: Unix time of its last completed sync on this
    connection, a bundle committed or nothing left to send (None: none yet).
    """
    engine = app.engine
    out: dict[str, dict[str, Any]] = {}
    generations: dict[str, int] = {}
    with app.topology.lock:  # the engine's flows change under it
        switches = {sw.hv_name: sw for sw in list(app.switches.values()) if sw.hv_name}
        for hv in app.topology.graph.hypervisors():
            generations[hv.name] = generation = engine.generation_of(hv.name)
            flows = _cached(("compiled", hv.name), (id(engine), generation), engine.desired(hv.name))
            out[hv.name] = {"state": "down", "connected": False, "mastered": False, "flows": flows,
                            "flow_count": sum(flows.values()), "installed": {}, "last_sync": None}
    for name, generation in generations.items():  # a switch's own state needs no lock: outside it
        sw = switches.get(name)
        if sw is not None:
            out[name].update(_connected(app, sw, generation))
    for key in [k for k in _COUNTS if k[1] not in generations]:  # hypervisors deleted since
        _COUNTS.pop(key, None)
    return out


def _connected(app: Any, sw: Any, generation: int) -> dict[str, Any]:
    """The part of a hypervisor's status its connected switch gives."""
    mastered = sw.mastering and app.cluster.owns(sw.dpid)
    synced = mastered and sw.holds(generation) and not sw.diverged
    installed = sw.installed
    # dict.copy: one C call, atomic under the GIL, while the switch's worker may be changing it.
    counts = _cached(("installed", sw.hv_name), (id(sw), id(installed), sw.synced_at, len(installed)),
                     dict.copy(installed))
    state = "up" if synced else "syncing" if mastered else "standby"
    return {"state": state, "connected": True, "mastered": mastered, "installed": counts,
            "last_sync": sw.synced_at or None, "datapath_id": f"{sw.dpid:016x}"}


def flows_of(app: Any, hv_name: str) -> list:
    """The flows the controller keeps for ``hv_name`` (under the topology's lock, as the engine's are).

    The engine's when it compiles that hypervisor; else (a cluster's instance, for a bridge another
    masters) a full compile of the graph as it is, the same flows by construction.
    """
    from flows.compiler import compile_hypervisor

    with app.topology.lock:
        if app.engine.compiles(hv_name):
            return list(app.engine.desired(hv_name).values())
        return compile_hypervisor(app.topology.graph, hv_name)
