"""Incremental compilation: every hypervisor's flows kept up to date, a change costing what it changes.

Each hypervisor's flows are the union of the contributions of its units (:mod:`flows.units`):
one base unit, one per hosted network, one per port of each network it reaches, per local
port its classification and its conntrack with its security-group memberships, per local group
its conj_id flows and per distinct match of the local groups' rules without a remote group one
clause flow (:mod:`flows.engine_groups`), one per security-group member address its rules need. The engine
keeps, per hypervisor, each unit's flows and a count of the units contributing each cookie;
the switch side takes the cookies that changed since it last looked
(:meth:`FlowEngine.take_changes`) and sends only those.

After each committed write the topology's graph hands over its journal (which records
changed, with the record before); the engine maps each entry to the units it can change:

- a port: its port unit on every hypervisor reaching its network (one shared flow per
  hypervisor for its ARP/ND answers and unicast); the base and network units of its
  binding hosts (old and new); the network units of every host of its network when the set
  of hosts changed (flooding); its security groups' member-address units where a rule
  names them; on its hosts, the units of the groups it makes local there or no longer
  (their conj_id flows, their rules' clauses); routers' hypervisors when it is a router port;
- a rule without a remote group: the clause units of its match pieces on each hypervisor where
  its group is local (one flow per piece per hypervisor, whatever the member count);
- a network, subnet, router, floating IP, security group or remote-group rule: the base units of the
  hypervisors it reaches, whose recomputation says which other units moved (networks now
  reached or not, local ports, member-address clauses); a security group, also its members'
  conntrack units and its units where it is local (unless only its name or description changed);
- a hypervisor record or a switch's port map: that hypervisor is rebuilt (its units all
  recomputed), and the units elsewhere that name its tunnel endpoint.

A controller's engine starts empty and builds its hypervisors a few at a time
(:meth:`FlowEngine.warm_up`), so the API and the switches do not wait for the whole cold build.

:func:`flows.compiler.compile_hypervisor` stays the reference: :meth:`FlowEngine.mismatches`
compares every hypervisor with it (the property-based test does so after every step).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import chain
from operator import attrgetter

from flows.acl import EGRESS, INGRESS, Piece
from flows.compiler import compile_hypervisor
from flows.engine_groups import GroupUnits
from flows.engine_state import (
    HypervisorFlows,
    Plan,
    Stats,
    everything,
    fabric_ports,
    gc_paused,
    member_values,
    same_for_flows,
)
from flows.flow import Flow, MatchValue
from flows.units import (
    BASE,
    BaseInfo,
    Fragment,
    Reach,
    UnitKey,
    acl_unit,
    base_unit,
    member_unit,
    network_unit,
    port_in_unit,
    port_unit,
    remote_view,
)
from flows.warmup import WarmUp
from topology import graph_l3
from topology.graph import TopologyGraph
from topology.model import OVERLAY_TYPES, TUNNEL_PORT_NAMES, Port

LOG = logging.getLogger("tenantflow.engine")
_COOKIE = attrgetter("cookie")
Listener = Callable[[set[str]], None]
MemberKey = tuple[str, int]  # (security group id, eth_type)


class FlowEngine(WarmUp, GroupUnits):
    """Every hypervisor's compiled flows, maintained incrementally from the topology's journal."""

    def __init__(self, graph: TopologyGraph, lock: threading.RLock | None = None, long_lived: bool = False,
                 build: bool = True) -> None:
        """Build every hypervisor's flows from ``graph`` (``build``; else :meth:`warm_up` builds them later).

        ``long_lived``: the engine lives as long as the process (the controller's), so what its first
        build makes is moved out of the garbage collector's generations (``gc.freeze``, as the
        controller does with the graph) rather than rescanned by it from then on.
        """
        self.lock = lock or threading.RLock()
        self.graph = graph
        self.stats = Stats()
        self._listeners: list[Listener] = []
        self.hvs: dict[str, HypervisorFlows] = {}
        self._reach: dict[str, set[str]] = {}  # network id -> hypervisors reaching it
        self._hosts: dict[str, frozenset[str]] = {}  # network id -> hypervisors hosting a port of it
        self._named: dict[str, set[str]] = {}  # security group -> hypervisors whose rules name it as remote
        self._members: dict[MemberKey, Counter] = {}  # (group, eth_type) -> member address -> count
        self._frags: dict[str, dict[int, Fragment]] = {}  # overlay network -> tunnel port number -> fragment
        self._local_hvs: dict[str, set[str]] = {}  # (flows.engine_groups) group -> hypervisors it is local on
        self._pieces: dict[str, dict[Piece, set[str]]] = {}  # group -> match piece of its plain rules -> rule ids
        self._rule_pieces: dict[str, tuple[str, tuple[Piece, ...]]] = {}  # such a rule -> (group, pieces) indexed
        self._dirty: set[str] = set()  # hypervisors whose changed cookies grew in this on_change
        self.generation = 0  # counts the changes that changed some hypervisor's flows
        self._topology = None
        # Which hypervisors this engine compiles: all of them, unless this controller instance is one of a
        # cluster's and masters only a share of the bridges (controller.cluster); see set_ownership.
        self._owns: Callable[[str], bool] = everything if build else self._built
        self._wanted: Callable[[str], bool] = everything  # what it compiles once built (flows.warmup)
        self._long_lived = long_lived
        self._warm_order: tuple[int, list[str]] = (-1, [])  # (hypervisors' version, names to build, reversed)
        with self.lock:
            self._rebuild_all(freeze=long_lived)

    @classmethod
    def attach(cls, topology, build: bool = True) -> FlowEngine:
        """An engine following ``topology`` (:class:`topology.state.Topology`) from now on (``build``: see __init__)."""
        engine = cls(topology.graph, topology.lock, long_lived=True, build=build)
        engine._topology = topology
        topology.subscribe(engine.on_change)
        topology.subscribe_live(engine.on_change)
        return engine

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(hypervisor names)`` after each change that changed their flows."""
        self._listeners.append(listener)

    def _drop(self, name: str) -> None:
        """Forget a hypervisor this engine no longer compiles (its shared fragments and indexes let go)."""
        state = self.hvs.pop(name, None)
        if state is None:
            return
        for net_id in list(state.frags):
            self._detach(state, net_id, count=False)
        self._index(name, state.info, None)
        self._index_groups(state, None)

    # -- what the switches read (under self.lock) -----------------------------------------
    def desired(self, hv_name: str) -> dict[int, Flow]:
        """Cookie -> flow of everything ``hv_name`` must hold (the engine's own dict: do not modify)."""
        state = self.hvs.get(hv_name)
        return state.flows if state is not None else {}

    def compiles(self, hv_name: str) -> bool:
        """Whether this engine holds ``hv_name``'s flows (a cluster's instance: the bridges it masters)."""
        return hv_name in self.hvs

    def take_changes(self, hv_name: str) -> set[int]:
        """The cookies added or removed on ``hv_name`` since the last call."""
        state = self.hvs.get(hv_name)
        if state is None:
            return set()
        taken, state.changed = state.changed, set()
        return taken

    def generation_of(self, hv_name: str) -> int:
        """The generation at which ``hv_name``'s flows last changed (a switch synced to it is up to date)."""
        state = self.hvs.get(hv_name)
        return state.generation if state is not None else 0

    def mismatches(self) -> list[str]:
        """Each hypervisor whose flows differ from a fresh full compile (the reference), described."""
        out = []
        with self.lock:
            names = {h.name for h in self.graph.hypervisors() if self._owns(h.name)} | set(self.hvs)
            for name in sorted(names):
                want = {f.cookie for f in compile_hypervisor(self.graph, name)}
                have = set(self.desired(name))
                if want != have:
                    out.append(f"{name}: {len(have - want)} extra, {len(want - have)} missing: "
                               + "; ".join(sorted(self._describe(name, have ^ want))[:6]))
        return out

    def _describe(self, hv_name: str, cookies: Iterable[int]) -> list[str]:
        ref = {f.cookie: f for f in compile_hypervisor(self.graph, hv_name)}
        have = self.desired(hv_name)
        return [("missing " if c in ref else "extra ") + (ref.get(c) or have[c]).description for c in cookies]

    # -- applying changes --------------------------------------------------------------------
    def on_change(self, _affected: set[str]) -> None:
        """Bring every hypervisor up to date with the graph's journal (a topology subscriber)."""
        with self.lock:
            start = time.thread_time()
            if self._topology is not None and self._topology.graph is not self.graph:
                before = {name: len(s.changed) for name, s in self.hvs.items()}
                self.graph = self._topology.graph
                self._rebuild_all()
                touched = {name for name, s in self.hvs.items() if len(s.changed) != before.get(name, 0)}
            else:
                # Only the hypervisors a change reached: no walk over every hypervisor per change.
                self._dirty = set()
                self._apply(self.graph.take_journal())
                touched = self._dirty
            self._stamp(touched)
            self.stats.seconds += time.thread_time() - start
        self._tell(touched)

    def _stamp(self, touched: set[str]) -> None:
        """A new generation for the hypervisors whose flows just changed (under the lock)."""
        if touched:
            self.generation += 1
            for name in touched:
                self.hvs[name].generation = self.generation

    def _tell(self, touched: set[str]) -> None:
        """The listeners hear which hypervisors' flows changed (outside the lock)."""
        if touched:
            for listener in list(self._listeners):
                listener(touched)

    def _rebuild_all(self, freeze: bool = False) -> None:
        with gc_paused(freeze):
            self._rebuild_every_hypervisor()

    def _rebuild_every_hypervisor(self) -> None:
        self.stats.full_rebuilds += 1
        self.graph.take_journal()
        old = self.hvs
        self.hvs, self._reach, self._hosts, self._named = {}, {}, {}, {}
        self._members, self._frags = {}, {}
        self._reset_groups()
        for port in self.graph.records("port"):
            self._count_members(port, +1)
        for net_id in {p.network_id for p in self.graph.records("port")}:
            self._hosts[net_id] = frozenset(self.graph.network_index(net_id).hosts)
        building = self._owns == self._built  # (a warm-up under way: the ones built so far, not the new empty dict)
        for name in {h.name for h in self.graph.hypervisors()} | set(old):
            if not (name in old if building else self._owns(name)):
                continue
            state = self.hvs[name] = HypervisorFlows(name)
            previous = old.get(name)
            self._rebuild(name)
            if previous is not None:  # what the switches must still be told
                state.changed = previous.changed | (set(previous.flows) ^ set(state.flows))
            else:
                state.changed = set(state.flows)

    def _apply(self, journal: list[tuple[str, str, object]]) -> None:
        # The topology's own notion of who is affected (the subscriber's argument) is coarse:
        # every host of a network. The journal says what changed, the handlers where it matters.
        plan = Plan()
        for kind, ident, old in journal:
            self.stats.changes += 1
            handler = getattr(self, f"_on_{kind}", None)
            if handler is not None:  # no other kind of record makes flows
                handler(plan, ident, old)
        for name in plan.rebuild:
            if self._owns(name):
                self._rebuild(name)
        for name in sorted(plan.base - plan.rebuild):
            if self._owns(name):
                self._update_base(name, plan)
        for name, keys in plan.units.items():
            state = self.hvs.get(name)
            if name in plan.rebuild or state is None or state.info is None:
                continue
            # A port's groups may have changed with it (groups, port security, plugged): its groups' units here too.
            extra = self._regroup(state, [key[1] for key in keys if key[0] == "acl"])
            if extra is None:  # the local groups' conjunction ids are allocated afresh (a collision: rare)
                self._rebuild(name)
                continue
            for key in keys | extra:
                self._set_unit(state, key, self._compute(state.info, key))

    # -- journal handlers: what each kind of change can touch -------------------------------------
    def _on_port(self, plan: Plan, port_id: str, old: Port | None) -> None:
        new = self.graph.port(port_id)
        if same_for_flows(old, new):
            return  # its status, name, timestamps... (its tap coming and going is the port map's change)
        versions = [p for p in (old, new) if p is not None]
        nets = {p.network_id for p in versions}
        hosts = {p.binding_host for p in versions}
        for net_id in nets:
            self._refresh_fragments(plan, net_id, port_id)
            net = self.graph.network(net_id)
            # On a provider network a hypervisor has flows for another's port only where it routes
            # into the network (l2.answered_here): a port bound somewhere touches its host(s) alone.
            everywhere = net is None or net.network_type in OVERLAY_TYPES or not all(hosts)
            for name in self._reach.get(net_id, ()):
                if everywhere or name in hosts or self._routes_into(name, net_id):
                    plan.unit(name, ("port", net_id, port_id))
        for p in versions:
            if p.binding_host:
                plan.base.add(p.binding_host)
                plan.unit(p.binding_host, ("net", p.network_id))
                plan.unit(p.binding_host, ("in", port_id))
                plan.unit(p.binding_host, ("acl", port_id))
                plan.unit(p.binding_host, ("anti", p.network_id, port_id))
        for net_id in nets:
            hosts = frozenset(self.graph.network_index(net_id).hosts)
            previous = self._hosts.get(net_id, frozenset())
            if hosts != previous:
                self._hosts[net_id] = hosts
                for name in hosts | previous:  # the hosts' flood lists
                    plan.unit(name, ("net", net_id))
                plan.base |= hosts ^ previous
        if any(p.device_owner.startswith("network:router") for p in versions):
            for router_id in {p.device_id for p in versions if p.device_id}:
                plan.base |= self._router_hvs(router_id)
            for net_id in nets:
                plan.base |= self._reach.get(net_id, set()) | self._hosts.get(net_id, frozenset())
        if any(p.device_owner == "network:floatingip" for p in versions):
            fip = graph_l3.fip_of_port_port(self.graph, port_id)
            plan.base |= self._fip_hosts([fip] if fip else [])
        self._member_change(plan, old, new)

    def _on_network(self, plan: Plan, net_id: str, old) -> None:
        new = self.graph.network(net_id)
        if old is None or new is None or old != new:  # its flows' fields (name and such are attrs)
            for name in self._reach.get(net_id, ()):
                plan.rebuild.add(name)
            for frag in self._frags.pop(net_id, {}).values():
                for name in list(frag.holders):
                    self._detach(self.hvs[name], net_id)

    def _on_subnet(self, plan: Plan, subnet_id: str, old) -> None:
        new = self.graph.subnet(subnet_id)
        for net_id in {s.network_id for s in (old, new) if s is not None}:
            for port_id in self.graph.network_index(net_id).ports:  # whether DHCP serves them (ls_in_dhcp)
                port = self.graph.port(port_id)
                if port is not None and port.binding_host:
                    plan.unit(port.binding_host, ("in", port_id))
            plan.base |= self._reach.get(net_id, set())
            plan.base |= self._fip_hosts(f for f in self.graph.records("fip") if f.floating_network_id == net_id)
            for router in graph_l3.routers_of_network(self.graph, net_id):
                plan.base |= self._router_hvs(router.id)
            for router in self.graph.records("router"):  # its gateway's subnet: the default route
                if router.gw_network_id == net_id:
                    plan.base |= self._router_hvs(router.id)

    def _on_router(self, plan: Plan, router_id: str, old) -> None:
        plan.base |= self._router_hvs(router_id)
        if old is not None:  # gateways it leaves (those it keeps or joins are in _router_hvs)
            plan.base |= set(old.gateway_hosts)
        if old is not None and getattr(old, "gw_network_id", None):
            plan.base |= self._reach.get(old.gw_network_id, set())

    def _on_fip(self, plan: Plan, fip_id: str, old) -> None:
        plan.base |= self._fip_hosts([f for f in (old, self.graph.get("fip", fip_id)) if f is not None])

    def _on_sg(self, plan: Plan, sg_id: str, old) -> None:
        new = self.graph.get("sg", sg_id)
        if old is not None and new is not None and old.stateful == new.stateful:
            return  # renamed, described: flows say only whether it exists and is stateful (not its 20,000 members')
        plan.base |= self._member_acls(plan, sg_id) | self._named.get(sg_id, set())
        self._group_changed(plan, sg_id)  # its conj_id flows (stateful or not), its rules' clauses (it exists or not)

    def _on_sg_rule(self, plan: Plan, rule_id: str, old) -> None:
        # Without a remote group: a clause unit per match piece where the group is local, nothing per member.
        self._plain_rule_changed(plan, rule_id)
        for rule in (old, self.graph.get("sg_rule", rule_id)):
            if rule is not None and rule.remote_group_id:  # its conjunctions are in the base unit
                members = graph_l3.sg_members(self.graph, rule.security_group_id)
                plan.base |= {p.binding_host for p in members if p.binding_host}

    def _member_acls(self, plan: Plan, sg_id: str) -> set[str]:
        """Recompute the ACL unit of each member of a group; the members' hosts."""
        hosts = set()
        for port in graph_l3.sg_members(self.graph, sg_id):
            if port.binding_host:
                plan.unit(port.binding_host, ("acl", port.id))
                hosts.add(port.binding_host)
        return hosts

    def _on_hv(self, plan: Plan, name: str, old) -> None:
        if not self._owns(name):  # (its datapath id may have moved it to another instance)
            self._drop(name)
        else:
            plan.rebuild.add(name)
            self._state(name)
        for router in self.graph.records("router"):  # its gateway tunnel's name is in their SNAT groups
            if name in router.gateway_hosts:
                plan.base |= self._router_hvs(router.id)
        # The gateways watch their tunnels to the hypervisors that are not gateways (flows.gateway).
        plan.base |= {hv.name for hv in self.graph.hypervisors() if hv.gateway_for and hv.name != name}
        for port in self.graph.ports_on(name):  # their unicast flows elsewhere name our tunnel endpoint
            self._refresh_fragments(plan, port.network_id, port.id)
            for other in self._reach.get(port.network_id, ()):
                plan.unit(other, ("port", port.network_id, port.id))
            for other in self._hosts.get(port.network_id, ()):
                plan.unit(other, ("net", port.network_id))

    def _on_ofports(self, plan: Plan, name: str, old) -> None:
        if not self._owns(name):
            return
        self._state(name)
        if fabric_ports(old or {}) != fabric_ports(self.graph.ofports(name)):
            plan.rebuild.add(name)  # tunnel or provider ports: every unit reaching the fabric
        else:
            plan.base.add(name)  # taps plugged or unplugged: the base unit says which ports are local

    # -- where things are -------------------------------------------------------------------------
    def _router_hvs(self, router_id: str) -> set[str]:
        out: set[str] = set()
        for net_id in graph_l3.router_networks(self.graph, router_id):
            out |= self._reach.get(net_id, set()) | self._hosts.get(net_id, frozenset())
        out |= self._fip_hosts(graph_l3.fips_of_router(self.graph, router_id))
        router = self.graph.get("router", router_id)
        return out | set(router.gateway_hosts if router is not None else ())

    def _fip_hosts(self, fips: Iterable) -> set[str]:
        out: set[str] = set()
        for fip in fips:
            port = self.graph.port(fip.port_id) if fip.port_id else None
            if port is not None and port.binding_host:
                out.add(port.binding_host)
        return out

    # -- security-group members ---------------------------------------------------------------------
    def _member_change(self, plan: Plan, old: Port | None, new: Port | None) -> None:
        before, after = member_values(old), member_values(new)
        if before == after:
            return
        self._count_members(old, -1)
        self._count_members(new, +1)
        for sg_id, eth, value in before ^ after:
            for name in self._named.get(sg_id, ()):
                plan.base.add(name)  # the group may have become empty or not: its rules' liveness
                for d in (EGRESS.name, INGRESS.name):
                    plan.unit(name, ("member", d, eth, value))

    def _count_members(self, port: Port | None, delta: int) -> None:
        for sg_id, eth, value in member_values(port):
            counts = self._members.setdefault((sg_id, eth), Counter())
            counts[value] += delta
            if counts[value] <= 0:
                del counts[value]

    def _holds(self, sg_id: str, eth: int, value: MatchValue) -> bool:
        return self._members.get((sg_id, eth), {}).get(value, 0) > 0

    def _has_members(self, sg_id: str, eth: int) -> bool:
        return bool(self._members.get((sg_id, eth)))

    # -- units ------------------------------------------------------------------------------------------
    def _compute(self, info: BaseInfo, key: UnitKey) -> list[Flow]:
        self.stats.units += 1
        kind = key[0]
        if kind == "port":
            if key[1] in self.hvs[info.view.hv.name].frags and not self._bound_here(info, key[2]):
                return []  # in the shared fragment
            return port_unit(self.graph, info, key[1], key[2])
        if kind == "anti":  # a port of ours, taken out of the fragment (see Fragment)
            frag = self.hvs[info.view.hv.name].frags.get(key[1])
            return list(frag.by_port.get(key[2], ())) if frag is not None and self._bound_here(info, key[2]) else []
        if kind == "net":
            return network_unit(self.graph, info, key[1])
        if kind == "member":
            return member_unit(info, key[1], key[2], key[3], self._holds)
        if kind == "in":
            return port_in_unit(self.graph, info, key[1])
        if kind == "acl":
            return acl_unit(self.graph, info, key[1], self.hvs[info.view.hv.name].gcids)
        if kind in ("gconj", "gclause"):
            return list(self._group_unit(self.hvs[info.view.hv.name], key))
        raise ValueError(f"unknown unit {key!r}")

    def _routes_into(self, name: str, net_id: str) -> bool:
        state = self.hvs.get(name)
        reach = state.info.reach.get(net_id) if state is not None and state.info is not None else None
        return reach is None or reach.routed

    def _state(self, name: str) -> HypervisorFlows:
        state = self.hvs.get(name)
        if state is None:
            state = self.hvs[name] = HypervisorFlows(name)
        return state

    def _bound_here(self, info: BaseInfo, port_id: str) -> bool:
        port = self.graph.port(port_id)
        return port is not None and port.binding_host == info.view.hv.name

    def _unit_keys(self, info: BaseInfo) -> list[UnitKey]:
        keys: list[UnitKey] = [("net", n) for n, r in info.reach.items() if r.hosted]
        keys += [(kind, p) for p in info.local_ids for kind in ("in", "acl")]
        keys += self._group_unit_keys(self.hvs[info.view.hv.name])
        bound = self.graph.ports_on(info.view.hv.name)
        for net_id, reach in info.reach.items():
            if self._fragment_key(info, net_id) is not None:
                here = [p.id for p in bound if p.network_id == net_id]
                keys += [("port", net_id, p) for p in here] + [("anti", net_id, p) for p in here]
            else:
                keys += [("port", net_id, p) for p in self._port_ids(info, net_id, reach)]
        for d, eth, sg_id in info.member_spec:
            keys += [("member", d, eth, v) for v in self._members.get((sg_id, eth), ())]
        return keys

    def _port_ids(self, info: BaseInfo, net_id: str, reach: Reach) -> Iterable[str]:
        """The ports of a reached network that may have flows on this hypervisor."""
        index = self.graph.network_index(net_id)
        net = self.graph.network(net_id)
        if reach.routed or net is None or net.network_type in OVERLAY_TYPES:
            return index.ports
        # A provider network only routed nowhere here: its ports bound here or nowhere (see l2.answered_here).
        here = info.view.hv.name
        return [*index.unbound, *(p.id for p in self.graph.ports_on(here) if p.network_id == net_id)]

    def _rebuild(self, name: str) -> None:
        """Recompute every unit of one hypervisor, and count its flows afresh."""
        self.stats.hypervisor_rebuilds += 1
        state = self._state(name)
        result = base_unit(self.graph, name, self._has_members)
        old_info = state.info
        units: dict[UnitKey, tuple[Flow, ...]] = {}
        if result is None:
            state.info = None
            self._index_groups(state, None)
            for net_id in list(state.frags):
                self._detach(state, net_id, count=False)
        else:
            flows, info = result
            state.info = info
            self._index_groups(state, info)
            self._place_fragments(state, name, info, count=False)
            units[BASE] = tuple(flows)
            for key in self._unit_keys(info):
                unit_flows = tuple(self._compute(info, key))
                if unit_flows:
                    units[key] = unit_flows
        state.units = units
        self._recount(state)
        self._index(name, old_info, state.info)

    def _recount(self, state: HypervisorFlows) -> None:
        """Count every unit's and fragment's contributions from scratch (what _adjust keeps in step).

        A rebuild (every hypervisor's, at start) replaces all of a hypervisor's units at once: counting
        them in bulk (C loops over the concatenated flows) is several times cheaper than counting them
        out and in one by one, and the switch is told the difference from the flows held before.
        """
        everything = [*chain.from_iterable(flows for key, flows in state.units.items() if key[0] != "anti")]
        cookies = [*map(_COOKIE, everything)]
        refs = Counter(cookies)
        held = dict(zip(cookies, everything, strict=True))
        for frag in state.frags.values():  # most of the flows: counted from the fragment's own tables
            frag_cookies, by_cookie = frag.cookies()
            refs.update(frag_cookies)
            held.update(by_cookie)
        anti = [flow.cookie for key, flows in state.units.items() if key[0] == "anti" for flow in flows]
        refs.subtract(anti)  # the hypervisor's own ports, out of its fragments (see Fragment)
        for cookie in anti:
            count = refs.get(cookie, 0)
            if count == 0:
                refs.pop(cookie, None)
            if count <= 0:
                held.pop(cookie, None)
        before = len(state.changed)
        state.changed |= state.flows.keys() ^ held.keys()
        state.refs, state.flows = refs, held
        if len(state.changed) != before:
            self._dirty.add(state.name)

    def _update_base(self, name: str, plan: Plan) -> None:
        """Recompute a hypervisor's base unit, and the units whose reason to be changed with it."""
        state = self._state(name)
        old = state.info
        result = base_unit(self.graph, name, self._has_members)
        if result is None or old is None or result[1].view.hv != old.view.hv \
                or fabric_ports(result[1].view.ofports) != fabric_ports(old.view.ofports):
            self._rebuild(name)
            return
        flows, new = result
        state.info = new
        self._set_unit(state, BASE, flows)
        units = plan.units.setdefault(name, set())
        self._place_fragments(state, name, new)
        for net_id in set(old.reach) | set(new.reach):
            was, now = old.reach.get(net_id), new.reach.get(net_id)
            if was != now:
                units.add(("net", net_id))
                if now is not None:
                    units.update(("port", net_id, p) for p in self._port_ids(new, net_id, now))
                    units.update(("anti", net_id, p.id) for p in self.graph.ports_on(name) if p.network_id == net_id)
                units.update(k for k in state.units if k[0] in ("port", "anti") and k[1] == net_id)
            elif old.local_of(net_id) != new.local_of(net_id):
                units.add(("net", net_id))
                units.update(("port", net_id, p) for p in set(old.local_of(net_id)) ^ set(new.local_of(net_id)))
        for net_id in old.fip_networks ^ new.fip_networks:
            units.add(("net", net_id))
        for port_id in old.local_ids | new.local_ids:
            if port_id not in old.local_ids or port_id not in new.local_ids \
                    or old.tap_ofport(port_id) != new.tap_ofport(port_id):
                units.add(("in", port_id))
                units.add(("acl", port_id))
            elif old.zones.get(port_id) != new.zones.get(port_id):
                units.add(("acl", port_id))
        for key in set(old.member_spec) | set(new.member_spec):
            if old.member_spec.get(key) != new.member_spec.get(key):
                d, eth, sg_id = key
                units.update(("member", d, eth, v) for v in self._members.get((sg_id, eth), ()))
                units.update(k for k in state.units if k[0] == "member" and k[1] == d and k[2] == eth)
        self._index(name, old, new)

    # -- shared fragments (see flows.units.Fragment) ------------------------------------------------
    def _fragment_key(self, info: BaseInfo, net_id: str) -> tuple[str, int] | None:
        """The fragment a hypervisor holds for a network: an overlay it hosts and does not route into."""
        reach = info.reach.get(net_id)
        net = self.graph.network(net_id)
        if reach is None or not reach.hosted or reach.routed or net is None or net.network_type not in OVERLAY_TYPES:
            return None
        tunnel = info.view.ofports.get(TUNNEL_PORT_NAMES[net.network_type])
        return None if tunnel is None else (net_id, tunnel)

    def _place_fragments(self, state: HypervisorFlows, name: str, info: BaseInfo, count: bool = True) -> None:
        """Attach the fragments the hypervisor now needs, detach the others (``count``: their flows too)."""
        wanted = {net_id: key for net_id in info.reach if (key := self._fragment_key(info, net_id)) is not None}
        for net_id, frag in list(state.frags.items()):
            if wanted.get(net_id) != (frag.net_id, frag.tunnel_ofport):
                self._detach(state, net_id, count)
        for net_id, key in wanted.items():
            if net_id not in state.frags:
                by_tunnel = self._frags.setdefault(key[0], {})
                frag = by_tunnel.get(key[1])
                if frag is None:
                    frag = by_tunnel[key[1]] = self._new_fragment(*key)
                frag.holders.add(name)
                state.frags[net_id] = frag
                if count:
                    self._adjust(state, (), frag.flat())

    def _detach(self, state: HypervisorFlows, net_id: str, count: bool = True) -> None:
        frag = state.frags.pop(net_id)
        frag.holders.discard(state.name)
        if count:
            self._adjust(state, frag.flat(), ())
        by_tunnel = self._frags.get(frag.net_id, {})
        if not frag.holders and by_tunnel.get(frag.tunnel_ofport) is frag:
            del by_tunnel[frag.tunnel_ofport]
            if not by_tunnel:
                del self._frags[frag.net_id]

    def _new_fragment(self, net_id: str, tunnel_ofport: int) -> Fragment:
        frag = Fragment(net_id, tunnel_ofport)
        net = self.graph.network(net_id)
        for port in self.graph.network_index(net_id).ports.values():
            flows = remote_view(self.graph, net, port, tunnel_ofport)
            if flows:
                frag.set_port(port.id, flows)
        return frag

    def _refresh_fragments(self, plan: Plan, net_id: str, port_id: str) -> None:
        """A port of ``net_id`` changed: update it in each of the network's fragments, and their holders."""
        port, net = self.graph.port(port_id), self.graph.network(net_id)
        for tunnel, frag in list(self._frags.get(net_id, {}).items()):
            old = frag.by_port.get(port_id, ())
            new = remote_view(self.graph, net, port, tunnel) if port is not None and net is not None \
                and port.network_id == net_id else ()
            if new == old:
                continue
            frag.set_port(port_id, new)
            for name in frag.holders:
                self._adjust(self.hvs[name], old, new)
                plan.unit(name, ("anti", net_id, port_id))

    def _index(self, name: str, old: BaseInfo | None, new: BaseInfo | None) -> None:
        """Keep the reverse indexes (network -> reaching hypervisors, group -> naming ones) in step."""
        for net_id in set(old.reach if old else ()) - set(new.reach if new else ()):
            self._reach.get(net_id, set()).discard(name)
        for net_id in new.reach if new else ():
            self._reach.setdefault(net_id, set()).add(name)
        old_groups = {k[2] for k in (old.member_spec if old else ())}
        new_groups = {k[2] for k in (new.member_spec if new else ())}
        for sg_id in old_groups - new_groups:
            self._named.get(sg_id, set()).discard(name)
        for sg_id in new_groups:
            self._named.setdefault(sg_id, set()).add(name)

    def _set_unit(self, state: HypervisorFlows, key: UnitKey, flows: Iterable[Flow]) -> None:
        new = tuple(flows)
        old = state.units.get(key, ())
        if new:
            state.units[key] = new
        else:
            state.units.pop(key, None)
        if old == new:
            return
        self.stats.contributions += len(old) + len(new)
        if key[0] == "anti":  # subtracted: what it held comes back, what it holds goes
            self._adjust(state, new, old)
        else:
            self._adjust(state, old, new)

    def _adjust(self, state: HypervisorFlows, minus: Iterable[Flow], plus: Iterable[Flow]) -> None:
        """Count contributions out and in; a flow is held while its count is positive."""
        refs, by_cookie, changed = state.refs, state.flows, state.changed
        before = len(changed)
        for sign, flows in ((-1, minus), (1, plus)):
            for flow in flows:
                c = flow.cookie
                was = refs.get(c, 0)
                now = was + sign
                if now:
                    refs[c] = now
                else:
                    del refs[c]
                if now > 0:
                    if was <= 0:
                        by_cookie[c] = flow
                        changed.add(c)
                elif was > 0:
                    del by_cookie[c]
                    changed.add(c)
        if len(changed) != before:
            self._dirty.add(state.name)
