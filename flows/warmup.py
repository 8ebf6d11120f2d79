"""Building hypervisors' flows a chunk per hold of the topology's lock (a mixin of :class:`flows.engine.FlowEngine`).

Two builds would otherwise hold the lock for seconds at 1,000 hypervisors, the API's writes and
every ``GET /sync`` waiting behind them: a single controller's first build after its start, and
a cluster's instance building the share of bridges it gains (a member joined, or died and left
its bridges to the others). Both build here, :data:`WARM_CHUNK` hypervisors (or
:data:`WARM_BUDGET_S` of work) per hold, with a pause between holds; meanwhile the engine
compiles only the hypervisors built so far (its ``_owns`` is ``_built``), writes reach them as
increments and the rest with their build, and a switch whose hypervisor is not built yet waits
for it (``compiles`` is False, ``GET /sync`` counts it as pending).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from flows.engine_state import HypervisorFlows, gc_paused
from topology.graph import TopologyGraph

# The lock is held for at most one hypervisor's build past WARM_BUDGET_S (about 13 ms each at 1,000
# hypervisors of 20 ports), and for at most WARM_CHUNK builds.
WARM_BUDGET_S = 0.01
WARM_CHUNK = 64
WARM_PAUSE_S = 0.001  # between two holds


class WarmUp:
    """The chunked builds of :class:`flows.engine.FlowEngine` (see the module's doc). The engine has ``lock``,
    ``graph``, ``hvs``, ``_owns``, ``_wanted`` (which hypervisors it is to compile once built), ``_long_lived``,
    ``_warm_order``, and ``_rebuild``, ``_drop``, ``_stamp``, ``_tell``."""

    lock: threading.RLock
    graph: TopologyGraph
    hvs: dict[str, HypervisorFlows]
    _owns: Callable[[str], bool]
    _wanted: Callable[[str], bool]
    _long_lived: bool
    _warm_order: tuple[int, list[str]]
    _rebuild: Callable[[str], None]
    _drop: Callable[[str], None]
    _stamp: Callable[[set[str]], None]
    _tell: Callable[[set[str]], None]

    def _built(self, name: str) -> bool:
        return name in self.hvs

    def set_ownership(self, owns: Callable[[str], bool], first: Callable[[], Iterable[str]] = tuple) -> int:
        """Compile only the hypervisors ``owns`` accepts from now on: forget those lost now, build those gained a
        chunk at a time (:meth:`warm_up`, ``first()`` first); returns how many were built.

        A cluster's instance masters a share of the bridges and compiles only theirs (the others'
        masters compile the rest); the hypervisors it gains are built before this returns, and their
        listeners hear of them like of any change.
        """
        with self.lock:
            self._wanted = owns
            self._owns = self._built  # until the warm-up has built the gained ones
            self._warm_order = (-1, [])  # (it drops what this share does not want)
            for name in [n for n in self.hvs if not owns(n)]:
                self._drop(name)
        return self.warm_up(first)

    def warm_up(self, first: Callable[[], Iterable[str]] = tuple, chunk: int = WARM_CHUNK,
                budget: float = WARM_BUDGET_S) -> int:
        """Build every hypervisor this engine is to compile and does not hold yet, a few at a time.

        The topology's lock is held for one chunk at a time (at most ``chunk`` hypervisors, and no
        more once ``budget`` seconds are spent), so the API's writes and the switches' syncs go on
        meanwhile. ``first()``: names to build before the others (the connected bridges'), asked
        again before each chunk. Then every hypervisor wanted is compiled, as after a full build.
        Returns how many were built.
        """
        count = 0
        while built := self.warm_step(first, chunk, budget):
            count += len(built)
            # Let a writer waiting for the lock have it: released and taken again at once, the lock would
            # go back to this thread nearly every time (Python's locks are not fair), starving the API.
            time.sleep(WARM_PAUSE_S)
        return count

    def warm_step(self, first: Callable[[], Iterable[str]] = tuple, chunk: int = WARM_CHUNK,
                  budget: float = WARM_BUDGET_S) -> list[str]:
        """Build one chunk of the hypervisors not built yet (see :meth:`warm_up`); which. None left: every
        hypervisor wanted is this engine's to compile from now on, and the answer is empty."""
        built: list[str] = []
        with self.lock:
            names = self._next_to_build(first, chunk)
            if not names:
                if self._owns == self._built:
                    self._owns = self._wanted
                return []
            deadline = time.perf_counter() + budget
            with gc_paused(self._long_lived):
                for name in names:
                    self._build_new(name)
                    built.append(name)
                    if time.perf_counter() >= deadline:
                        break
            self._stamp(set(built))
        self._tell(set(built))
        return built

    def _build_new(self, name: str) -> None:
        """Build a hypervisor this engine did not compile: every flow is news to its switch."""
        self._rebuild(name)
        state = self.hvs[name]
        state.changed = set(state.flows)

    def _next_to_build(self, first: Callable[[], Iterable[str]], chunk: int) -> list[str]:
        """Up to ``chunk`` wanted hypervisors not built yet, the ones ``first()`` names before the others (under the
        lock).

        The others come in name order from a list made once per version of the hypervisors (a
        registration meanwhile makes it again), not from a sort of every name at each step.
        """
        wanted = self._wanted
        if self._warm_order[0] != self.graph.hv_generation:
            names = sorted((h.name for h in self.graph.hypervisors()), reverse=True)
            self._warm_order = (self.graph.hv_generation, names)
        order = self._warm_order[1]
        while order and (order[-1] in self.hvs or not wanted(order[-1])):  # (sorted backwards: done come off)
            order.pop()
        todo = [n for n in dict.fromkeys(first())
                if n not in self.hvs and wanted(n) and self.graph.hypervisor(n) is not None][:chunk]
        for name in reversed(order):
            if len(todo) >= chunk:
                break
            if name not in self.hvs and name not in todo and wanted(name):
                todo.append(name)
        return todo

