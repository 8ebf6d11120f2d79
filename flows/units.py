"""A hypervisor's flows as the union of small contributions ("units"), each a pure function.

:func:`flows.compiler.compile_hypervisor` builds a hypervisor's flows in one go; the
incremental engine (:mod:`flows.engine`) builds the same flows as a union of units, so
that a change recomputes only the units it touches:

- ``("base",)``: what depends only on the hypervisor and its local ports: the default
  flows, the ACL stages' defaults and the remote-group rules' conjunctions
  (:func:`flows.acl.acl_base`), the routers' own flows (:func:`flows.routing.routing_base`)
  and the floating IPs hosted here. It also says (:class:`BaseInfo`) which networks the
  hypervisor reaches and how, which are the other units;
- ``("net", network)``: one network hosted here: from the fabric into it, and its flooding;
- ``("port", network, port)``: one port of a reached network as seen from here: its ARP and
  ND answers, its unicast flow (local or to its host), its next-hop entry where routed. Most
  of these flows are the same on every hypervisor and shared (:mod:`flows.shared`);
- ``("member", direction, eth_type, address)``: a security-group member address's
  conjunction clause (:func:`flows.acl.member_clause`);
- ``("in", port)``, ``("acl", port)``: a local port's classification, port security and DHCP;
  its conntrack and security-group membership clauses;
- ``("gconj", group)``: a group local here (a local port with port security is a member):
  its conj_id flows; ``("gclause", direction, match)``: one match of the local groups' rules
  without a remote group, with the conjunctions of the groups having it (:func:`flows.acl.group_flows`).

A flow may be contributed by several units (the DAD pass of a network by each of its
IPv6 ports): the hypervisor holds it while any unit contributes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flows.acl import MemberSpec, Piece, acl_base, acl_port, ct_zones, gclause_flow, gconj_flows, member_clause
from flows.dhcp import dhcp_default, dhcp_port
from flows.flow import Flow, MatchValue
from flows.gateway import gateway_externals, gateway_flows, snat_routers
from flows.l2 import (
    answered_here,
    arp_port,
    classify_from_fabric,
    classify_local_ports,
    default_flows,
    deliver,
    flood,
    remote_unicast,
    unicast_port,
)
from flows.nat import local_fips, nat_flows
from flows.nd import nd_port
from flows.northsouth6 import externals6, northsouth6_flows, routers6
from flows.portsec import local_port_security, port_security_flows
from flows.routing import routed_port, routing_base
from flows.stages import EXT_IN_FIP, L2_LOOKUP
from flows.view import HypervisorView, view_of
from topology.graph import TopologyGraph
from topology.model import OVERLAY_TYPES, TUNNEL_PORT_NAMES, Network, Port, dvr_mac, provider_patch_name

UnitKey = tuple
BASE: UnitKey = ("base",)


@dataclass(frozen=True)
class Reach:
    """How a hypervisor reaches a network: it hosts a port of it, and/or routes into it."""

    hosted: bool
    routed: bool


@dataclass
class BaseInfo:
    """What the base unit found out: what the other units of the hypervisor are, and need."""

    view: HypervisorView
    reach: dict[str, Reach] = field(default_factory=dict)  # network id -> how it is reached
    fip_networks: frozenset[str] = frozenset()  # external networks whose frames go to ext_in_fip first
    local_ids: frozenset[str] = frozenset()  # plugged local ports
    member_spec: MemberSpec = field(default_factory=dict)
    dvr_mac: str = ""  # this hypervisor's DVR MAC (routed frames to other hypervisors carry it)
    zones: dict[str, int] = field(default_factory=dict)  # local port id -> its conntrack zone

    def local_port(self, port_id: str) -> Port | None:
        """A plugged local port's record, or None."""
        return next((p for p in self.view.local_ports if p.id == port_id), None)

    def tap_ofport(self, port_id: str) -> int | None:
        """The OpenFlow port number of a local port's tap."""
        port = self.local_port(port_id)
        return self.view.ofports.get(port.ofport_name) if port is not None else None

    def local_of(self, net_id: str) -> tuple[str, ...]:
        """Ids of the local ports in a network (in flood order)."""
        return tuple(p.id for p in self.view.local_ports if p.network_id == net_id)


def base_unit(graph: TopologyGraph, hv_name: str,
              has_members: Callable[[str, int], bool]) -> tuple[list[Flow], BaseInfo] | None:
    """The base unit of ``hv_name`` and what it says about the others (None: no such hypervisor)."""
    view = view_of(graph, hv_name)
    if view is None:
        return None
    fips = local_fips(graph, view)
    # Each local port's own flows are units of their own (port_in_unit, acl_unit).
    flows: list[Flow] = [*default_flows(), *port_security_flows([]), *dhcp_default()]
    acl, spec = acl_base(graph, view.local_ports, has_members)
    flows += acl
    routing, routed = routing_base(graph, view)
    flows += routing
    snat, r6 = snat_routers(graph, view), routers6(graph, view)
    externals = gateway_externals(snat) + externals6(r6)
    flows += nat_flows(view, fips, externals)
    flows += gateway_flows(view, snat)
    flows += northsouth6_flows(view, r6)
    routed_ids = {n.id for n in routed}
    reach = {n: Reach(n in view.networks, n in routed_ids) for n in set(view.networks) | routed_ids}
    fip_networks = frozenset(f.ext.id for f in fips) | {ext.id for ext, _ in externals}
    info = BaseInfo(view, reach, fip_networks, frozenset(p.id for p in view.local_ports), spec,
                    dvr_mac(view.hv), ct_zones(view.local_ports))
    return flows, info


def port_in_unit(graph: TopologyGraph, info: BaseInfo, port_id: str) -> list[Flow]:
    """A local port's classification, delivery, port security and DHCP."""
    port = info.local_port(port_id)
    if port is None:
        return []
    view = info.view
    alone = HypervisorView(view.hv, view.ofports, [port], view.networks)  # dataclasses.replace, without its cost
    return [*classify_local_ports(alone), *deliver(alone), *local_port_security(port), *dhcp_port(graph, port)]


def acl_unit(graph: TopologyGraph, info: BaseInfo, port_id: str, gcids: dict[str, int]) -> list[Flow]:
    """A local port's way into conntrack, and its membership clauses (``gcids``: the local groups' conjunction
    ids); what its groups' rules match is in the ``gclause`` units."""
    port = info.local_port(port_id)
    return acl_port(graph, port, info.zones[port_id], gcids) if port is not None else []


def gconj_unit(graph: TopologyGraph, sg_id: str, gcids: dict[str, int]) -> tuple[Flow, ...]:
    """A local group's conj_id flows (none unless it is local here, in ``gcids``, and exists)."""
    sg = graph.get("sg", sg_id) if sg_id in gcids else None
    return gconj_flows(sg, gcids[sg_id]) if sg is not None else ()


def gclause_unit(graph: TopologyGraph, piece: Piece, local: Iterable[str], pieces: dict[str, dict[Piece, set[str]]],
                 gcids: dict[str, int]) -> tuple[Flow, ...]:
    """The rule clause flow of one match here: the ``local`` groups (existing) having a rule with that piece.

    ``pieces``: group -> piece -> ids of its rules with that piece (the engine's index of every plain rule).
    """
    groups = {}
    for sg_id in local:
        ids = pieces.get(sg_id, {}).get(piece)
        if ids and graph.get("sg", sg_id) is not None:
            groups[sg_id] = ids
    return gclause_flow(piece[0], piece[1], groups, gcids)


def network_unit(graph: TopologyGraph, info: BaseInfo, net_id: str) -> list[Flow]:
    """A hosted network's flows here that do not depend on each of its ports."""
    net = info.view.networks.get(net_id)
    if net is None:
        return []
    goto = EXT_IN_FIP if net_id in info.fip_networks else L2_LOOKUP
    return [*classify_from_fabric(info.view, net, goto), *flood(graph, info.view, net)]


def port_unit(graph: TopologyGraph, info: BaseInfo, net_id: str, port_id: str) -> tuple[Flow, ...]:
    """One port's flows here, for a network this hypervisor reaches.

    Memoised on everything they are made of: the port and network records (by identity: records
    are immutable, and the memo holds them, so an identity cannot be reused while it is cached),
    how the network is reached, whether the port is local or bound here, the tunnel or patch port
    and remote endpoint its frames take, and this hypervisor's DVR MAC where it routes. So a
    remote port's flows are built once per change, and shared by every hypervisor reaching it.
    """
    reach = info.reach.get(net_id)
    net = graph.network(net_id)
    port = graph.port(port_id)
    if reach is None or net is None or port is None or port.network_id != net_id:
        return ()
    here = info.view.hv.name
    local = port_id in info.local_ids
    key = (id(port), id(net), reach, local, port.binding_host == here, _via(graph, info, net, port),
           info.dvr_mac if reach.routed else None)
    hit = _memo.get(key)
    if hit is not None and hit[0] is port and hit[1] is net:
        return hit[2]
    flows: list[Flow] = []
    if reach.hosted and answered_here(net, port, here):
        flows += arp_port(net, port, local)
        flows += nd_port(net, port, local)
        flows += unicast_port(graph, info.view, net, port, local)
    if reach.routed:
        flows += routed_port(graph, info.view, net, port)
    return _remember(graph, key, port, net, flows)


def _via(graph: TopologyGraph, info: BaseInfo, net: Network, port: Port) -> tuple:
    """The local port (and remote endpoint) a frame to ``port`` leaves through."""
    if net.network_type in OVERLAY_TYPES:
        return info.view.ofports.get(TUNNEL_PORT_NAMES[net.network_type]), _remote_ip(graph, port)
    return info.view.ofports.get(provider_patch_name(net.physical_network or "")), None


MEMO_ENTRIES = 1_000_000  # a last resort: sweep_memo keeps the memo to about twice the current records' entries
MEMO_SWEEP_MIN = 256  # entries before the first sweep (and the least a sweep waits for)
_memo: dict[tuple, tuple[Port, Network, tuple[Flow, ...]]] = {}
_sweep_at = MEMO_SWEEP_MIN  # the memo's size that triggers the next sweep


class Fragment:
    """Every port of one overlay network as seen from any hypervisor it is remote to, via one tunnel port.

    A remote port's flows (its ARP and ND answers, its unicast flow to its host) are the same on
    every hypervisor reaching it over the same tunnel port number, so each hypervisor hosting the
    network without routing into it holds this one fragment, shared: a port added costs one
    computation and one small delta per hypervisor, not a recomputation per hypervisor. A
    hypervisor's own ports are subtracted there (the "anti" units) and added as it sees them.
    """

    __slots__ = ("_by_cookie", "_cookies", "_flat", "by_port", "holders", "net_id", "tunnel_ofport")

    def __init__(self, net_id: str, tunnel_ofport: int) -> None:
        self.net_id = net_id
        self.tunnel_ofport = tunnel_ofport
        self.by_port: dict[str, tuple[Flow, ...]] = {}  # port id -> its flows as a remote port (set_port)
        self.holders: set[str] = set()  # hypervisors holding this fragment
        self._flat: tuple[Flow, ...] | None = None  # flat(), until a port changes
        self._cookies: tuple[int, ...] = ()  # their cookies, in order (with flat())
        self._by_cookie: dict[int, Flow] = {}  # cookie -> flow (with flat())

    def set_port(self, port_id: str, flows: tuple[Flow, ...]) -> None:
        """A port's flows as a remote port (none: the port is gone from the fragment)."""
        if flows:
            self.by_port[port_id] = flows
        else:
            self.by_port.pop(port_id, None)
        self._flat = None

    def flat(self) -> tuple[Flow, ...]:
        """Every flow of the fragment (with repeats: the DAD pass once per IPv6 port).

        Kept between changes: each of the hypervisors attaching the fragment reads it whole.
        """
        if self._flat is None:
            self._flat = tuple(f for flows in self.by_port.values() for f in flows)
            self._cookies = tuple(f.cookie for f in self._flat)
            self._by_cookie = dict(zip(self._cookies, self._flat, strict=True))
        return self._flat

    def cookies(self) -> tuple[tuple[int, ...], dict[int, Flow]]:
        """The cookies of flat(), in order, and cookie -> flow: what a hypervisor counts in bulk."""
        self.flat()
        return self._cookies, self._by_cookie


class _TunnelView:
    """The part of a hypervisor view a remote port's unicast flow reads: the tunnel port number."""

    def __init__(self, ofports: dict[str, int]) -> None:
        self.ofports = ofports


def remote_view(graph: TopologyGraph, net: Network, port: Port, tunnel_ofport: int) -> tuple[Flow, ...]:
    """A port's flows on a hypervisor hosting its overlay network, it being bound elsewhere (or nowhere)."""
    key = (id(port), id(net), tunnel_ofport, _remote_ip(graph, port))
    hit = _memo.get(key)
    if hit is not None and hit[0] is port and hit[1] is net:
        return hit[2]
    flows: list[Flow] = [*_remote_answers(graph, net, port)]
    if port.binding_host:
        flow = remote_unicast(graph, _TunnelView({TUNNEL_PORT_NAMES[net.network_type]: tunnel_ofport}), net, port)
        if flow is not None:
            flows.append(flow)
    return _remember(graph, key, port, net, flows)


def _remote_answers(graph: TopologyGraph, net: Network, port: Port) -> tuple[Flow, ...]:
    """A port's ARP and ND answers as a remote port: the same through whichever tunnel port (one per bridge)."""
    key = ("answers", id(port), id(net))
    hit = _memo.get(key)
    if hit is not None and hit[0] is port and hit[1] is net:
        return hit[2]
    return _remember(graph, key, port, net, [*arp_port(net, port, False), *nd_port(net, port, False)])


def _remote_ip(graph: TopologyGraph, port: Port) -> str | None:
    remote = graph.hypervisor(port.binding_host) if port.binding_host else None
    return remote.tunnel_ip if remote else None


def _remember(graph: TopologyGraph, key: tuple, port: Port, net: Network, flows: list[Flow]) -> tuple[Flow, ...]:
    """Memoise ``flows`` (returned as kept) for ``port`` and ``net`` under ``key``."""
    global _sweep_at
    if len(_memo) >= _sweep_at:
        sweep_memo(graph)
        # twice what is left: sweeps cost O(1) per entry remembered, however many entries are current
        _sweep_at = max(MEMO_SWEEP_MIN, 2 * len(_memo))
    if len(_memo) >= MEMO_ENTRIES:
        _memo.clear()
    kept = _memo[key] = (port, net, tuple(flows))
    return kept[2]  # not _memo[key]: a sweep in another thread (another graph's engine) may have dropped it


def sweep_memo(graph: TopologyGraph) -> int:
    """Forget what was memoised for records ``graph`` no longer holds; how many entries went.

    A hit needs the very port and network records the graph holds now (records are immutable:
    a changed port is a new record), so an entry for a deleted port, a superseded version of
    one (each bind, status or address change) or a network's old record is never read again;
    nor is one for another graph's records (a compilation of a stored snapshot, the audit's).
    Without this the memo grew by every such record until ``MEMO_ENTRIES`` (a million entries,
    gigabytes): a few kB per port operation under churn, for good (README, "Soak").
    """
    try:
        entries = list(_memo.items())  # a copy in C: engines of other graphs (other threads) add meanwhile
    except RuntimeError:  # changed during the copy after all (another thread ran in a finalizer): next time
        return 0
    stale = [key for key, (port, net, _) in entries
             if graph.port(port.id) is not port or graph.network(net.id) is not net]
    for key in stale:
        _memo.pop(key, None)
    return len(stale)


def member_unit(info: BaseInfo, direction: str, eth: int, address: MatchValue,
                holds: Callable[[str, int, MatchValue], bool]) -> list[Flow]:
    """A security-group member address's clause flow here."""
    return member_clause(info.member_spec, direction, eth, address, holds)
