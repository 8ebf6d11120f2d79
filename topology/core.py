"""The one write path of :class:`topology.state.Topology`, shared by every resource.

A write method validates against the graph (under :attr:`TopologyCore.lock`), builds
the write's operations (records to put, :class:`topology.records.Deleted`), and calls
:meth:`TopologyCore._commit`:

1. the store commits them atomically (:meth:`topology.store.Store.commit`), refusing a
   broken unique key or parent (:class:`Conflict`) or a view older than its own
   (:class:`Stale`);
2. the store delivers the commit to :meth:`TopologyCore._on_commit`, the one place
   where the graph changes, for this instance's writes and every other instance's
   alike (SQLite at once, in the writer's thread; etcd from its watch);
3. the writer waits until its graph holds its own commit (read-your-writes), and
   the method tells the subscribers which hypervisors its change touched.

:func:`write` wraps every public write method: on :class:`Stale` it waits until the
graph has caught up with the store and runs the method again, validation included
(optimistic concurrency, as etcd's own clients do). Nothing changes before a commit,
so a method that raises leaves the store, the graph and the allocations as they were.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from topology import graph_l3
from topology.graph import TopologyGraph
from topology.model import Hypervisor, Network, Port, Subnet
from topology.model_l3 import FloatingIP, Router, SecurityGroup, SecurityGroupRule
from topology.records import KINDS, Op, Record, op_key
from topology.store import Commit, Conflict, Snapshot, Stale, Store, StoreUnavailable

LOG = logging.getLogger(__name__)

Callback = Callable[[set[str]], None]
F = TypeVar("F", bound=Callable[..., Any])

STALE_RETRIES = 8  # a write validated on a stale view runs again at most this often
APPLY_TIMEOUT = 10.0  # s a writer waits for its own commit to reach the graph
KEY_COUNTERS = {"network": "network_key", "port": "port_key", "router": "router_key"}
# How each kind of record goes into the graph (a port with its live status added first).
_GRAPH_PUT: dict[type, Callable[[TopologyGraph, Any], None]] = {
    Port: TopologyGraph.put_port, Network: TopologyGraph.put_network, Subnet: TopologyGraph.put_subnet,
    Hypervisor: TopologyGraph.put_hypervisor, Router: graph_l3.put_router, FloatingIP: graph_l3.put_fip,
    SecurityGroup: graph_l3.put_sg, SecurityGroupRule: graph_l3.put_sg_rule,
}


def write(method: F) -> F:
    """Run a write method again, on a caught-up graph, while the store finds its view stale."""
    @functools.wraps(method)
    def retrying(self: TopologyCore, *args: Any, **kwargs: Any) -> Any:
        # One write at a time per instance, from validation until its commit is in the graph:
        # the instance's own writes never find each other's views stale (only other instances' can).
        with self._writing:
            # Validate on everything committed before this write began, whoever wrote it: a client
            # creating a network through one instance and its port through another right after
            # must not be told the network does not exist (one round trip to etcd; SQLite: none).
            self._catch_up(self.store.latest_revision())
            for _ in range(STALE_RETRIES):
                self._begin_write()
                try:
                    return method(self, *args, **kwargs)
                except Stale as exc:
                    self.stats["stale_retries"] += 1
                    self._catch_up(exc.revision)
        raise Conflict("Conflict", "The request kept conflicting with concurrent writes; try again.")
    return retrying  # type: ignore[return-value]


class TopologyCore:
    """The graph, kept equal to the store's content by the store's stream of commits."""

    store: Store
    graph: TopologyGraph

    def _init_core(self, store: Store) -> None:
        self.lock = threading.RLock()  # the graph's: readers, the commit stream, writers validating
        self._writing = threading.RLock()  # held by a write from validation until its commit is applied
        self._applied = threading.Condition(self.lock)
        self.graph = TopologyGraph()
        self.revision = 0  # of the last commit the graph holds
        self.counters: dict[str, int] = {}
        self._pending: dict[str, int] = {}  # counters advanced by the write being built
        self._reserved: set[tuple[str, int]] = set()  # (counter, key) it took
        self._keys_used: dict[str, set[int]] = {name: set() for name in KEY_COUNTERS.values()}
        self._subscribers: list[Callback] = []
        self._live_subscribers: list[Callback] = []
        self.stats = {"stale_retries": 0, "remote_commits": 0, "reloads": 0}
        self.store = store
        with self.lock:
            self._load()
            store.listen(self._on_commit, self.revision)

    # -- loading -----------------------------------------------------------------------
    def _load(self, snapshot: Snapshot | None = None) -> None:
        """(Re)build the graph from the store (or a snapshot of it), keeping the live port maps."""
        graph = self.graph
        live = {hv: (graph.ofports(hv), graph.connected(hv)) for kind, hv in graph.g.nodes if kind == "hv"}
        snapshot = snapshot or self.store.load()
        self.graph = TopologyGraph()
        self._keys_used = {name: set() for name in KEY_COUNTERS.values()}
        # Kinds in KINDS order (a record only refers to kinds before it); the live port maps
        # go in before the ports, whose status they decide.
        for name in KINDS:
            if name == "port":
                for hv_name, (ofports, connected) in live.items():
                    self.graph.set_ofports(hv_name, ofports)
                    self.graph.set_connected(hv_name, connected)
            for record in snapshot.records.get(name, ()):
                self._graph_put(record)
        self.counters = dict(snapshot.counters)
        self.revision = snapshot.revision

    # -- the commit stream -----------------------------------------------------------------
    def _on_commit(self, commit: Commit) -> None:
        """Apply one committed write to the graph (every instance's, in revision order)."""
        with self.lock:
            if commit.snapshot is not None:
                self.stats["reloads"] += 1
                self._load(commit.snapshot)
                self._applied.notify_all()
                self._notify({h.name for h in self.graph.hypervisors()})
                return
            if commit.revision <= self.revision:
                return  # already held (a reload got past it)
            own = commit.origin == self.store.instance
            affected = set() if own else self._affected_by(commit)
            try:
                for kind, ident, record in commit.ops:
                    if record is None:
                        self._graph_remove(kind, ident)
                    else:
                        self._graph_put(record)
            except Exception:
                LOG.exception("applying commit %d to the graph failed: reloading from the store", commit.revision)
                self.stats["reloads"] += 1
                self._load()
            self.counters.update(commit.counters)
            self.revision = max(self.revision, commit.revision)
            self._applied.notify_all()
            if not own:
                self.stats["remote_commits"] += 1
                self._notify(affected | self._affected_by(commit))

    def _affected_by(self, commit: Commit) -> set[str]:
        """Hypervisors whose flows another instance's commit may change (the graph before or after it)."""
        nets, hosts = set(), set()
        for kind, ident, record in commit.ops:
            for rec in (self.graph.get(kind, ident), record):
                if isinstance(rec, (Port, Subnet)):
                    nets.add(rec.network_id)
                    hosts.add(getattr(rec, "binding_host", None))
                elif isinstance(rec, Network):
                    nets.add(rec.id)
                elif isinstance(rec, Hypervisor):
                    hosts |= {rec.name} | self.graph.networks_on(rec.name)
                elif isinstance(rec, Router):
                    hosts |= graph_l3.hypervisors_of_router(self.graph, rec.id)
                elif isinstance(rec, SecurityGroup):
                    hosts |= graph_l3.hypervisors_of_sgs(self.graph, [rec.id])
                elif isinstance(rec, SecurityGroupRule):
                    hosts |= graph_l3.hypervisors_of_sgs(self.graph, [rec.security_group_id])
                elif isinstance(rec, FloatingIP) and rec.port_id:
                    hosts.add(getattr(self.graph.port(rec.port_id), "binding_host", None))
        known = {h.name for h in self.graph.hypervisors()}
        return {h for h in hosts if h in known} | graph_l3.hypervisors_depending_on(self.graph, nets)

    def _graph_put(self, record: Record) -> None:
        kind = KINDS[op_key(record)[0]]
        counter = KEY_COUNTERS.get(kind.name)
        if counter is not None:
            old = self.graph.get(kind.name, kind.ident(record))
            if old is not None:
                self._keys_used[counter].discard(old.key)
            self._keys_used[counter].add(record.key)
        if isinstance(record, Port):
            record = self._with_status(record)
        _GRAPH_PUT[type(record)](self.graph, record)

    def _graph_remove(self, kind: str, ident: str) -> None:
        counter = KEY_COUNTERS.get(kind)
        old = self.graph.get(kind, ident)
        if counter is not None and old is not None:
            self._keys_used[counter].discard(old.key)
        self.graph.remove(kind, ident)

    def _catch_up(self, revision: int, timeout: float = APPLY_TIMEOUT) -> None:
        """Wait (the lock released meanwhile) until the graph holds ``revision``."""
        with self._applied:
            if not self._applied.wait_for(lambda: self.revision >= revision, timeout):
                raise StoreUnavailable("StoreUnavailable", f"The topology store's changes up to revision "
                                       f"{revision} did not arrive within {timeout:.0f} s; try again.")

    # -- writing -----------------------------------------------------------------------------
    def _commit(self, ops: list[Op]) -> int:
        """Commit ``ops`` (validated on the graph at :attr:`revision`); return once the graph holds them."""
        ops = [self._persistable(op) if isinstance(op, Port) else op for op in ops]
        before = {key: self.graph.get(*key) for key in map(op_key, ops)}
        counters = self._pending
        self._begin_write()
        revision = self.store.commit(ops, before=before, counters=counters, based_on=self.revision)
        self._catch_up(revision)
        return revision

    def _write(self, records: list[Op], affected_before: set[str] | None = None,
               affected_after: Callable[[], set[str]] | None = None) -> None:
        """Commit ``records``, then one notification: ``affected_before`` | ``affected_after()``."""
        self._commit(records)
        after = affected_after() if affected_after is not None else set()
        self._notify((affected_before or set()) | after)

    def _next_key(self, kind: str, lo: int, hi: int) -> int | None:
        """A free logical key for a new ``kind`` record in [lo, hi] (None: all taken), reserved for this write.

        Keys go up from a persisted counter and only wrap around when the range is
        used up, so a deleted resource's key is not handed out again at once (a switch
        may still hold flows with it until its next sync). The store's unique keys
        make two instances that pick the same one at once conflict.
        """
        counter = KEY_COUNTERS[kind]
        used, reserved = self._keys_used[counter], self._reserved
        hint = self._pending.get(counter, self.counters.get(counter, lo))
        start = hint if lo <= hint <= hi else lo
        candidate = start
        while candidate in used or (counter, candidate) in reserved:
            candidate = lo if candidate >= hi else candidate + 1
            if candidate == start:
                return None
        self._pending[counter] = candidate + 1
        reserved.add((counter, candidate))
        return candidate

    def _begin_write(self) -> None:
        """Forget what an abandoned (or committed) write reserved."""
        self._pending, self._reserved = {}, set()

    # -- subscribers ----------------------------------------------------------------------------
    def subscribe(self, callback: Callback) -> None:
        """Call ``callback(affected_hypervisor_names)`` after every committed write."""
        with self.lock:
            self._subscribers.append(callback)

    def subscribe_live(self, callback: Callback) -> None:
        """Call ``callback({hypervisors})`` after switches' port maps or connections changed (not a committed write)."""
        with self.lock:
            self._live_subscribers.append(callback)

    def _notify(self, affected: Iterable[str | None]) -> None:
        hvs = {h for h in affected if h}
        for callback in list(self._subscribers):
            try:
                callback(set(hvs))
            except Exception:  # a subscriber's bug must not turn a committed write into an error
                LOG.exception("topology subscriber %r failed", callback)

    # -- ports' live status (hooks the Topology provides) ------------------------------------------
    def _with_status(self, port: Port) -> Port:
        raise NotImplementedError

    @staticmethod
    def _persistable(port: Port) -> Port:
        """The port without its live ``status``, which is not stored."""
        return replace(port, attrs={k: v for k, v in port.attrs.items() if k != "status"})

