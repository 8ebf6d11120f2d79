"""The logical topology as a networkx graph.

Nodes are ``(kind, id)`` tuples with the record in the ``obj`` attribute:
``("network", id)``, ``("subnet", id)``, ``("port", id)``, ``("hv", name)``.
Edges: subnet-network, port-network, port-hv (the port's binding). Routers, floating
IPs and security groups (``("router", id)``, ``("fip", id)``, ``("sg", id)``,
``("sg_rule", id)``) are added by :mod:`topology.graph_l3`, which also answers
the queries about them.

Besides the logical records, each hypervisor node carries what the controller
learns from its switch: ``ofports`` (OVS port name -> OpenFlow port number, the
last map reported, which its flows use) and ``connected`` (whether the switch is
connected now, which its ports' status shows). Neither is in the store: a switch
reports its map on every connect (controller.portmaps remembers the last ones
across restarts, so a restarted controller compiles them before the switches are back).

Per network, the graph also keeps indexes of its ports (:class:`NetworkIndex`:
MACs, addresses per subnet, ports per binding host, router interfaces),
maintained by :meth:`TopologyGraph.put_port` and :meth:`TopologyGraph.remove`, so
that allocating a port's MAC and addresses, or finding the hypervisors a network
is on, does not walk every port of the network.

The graph is not thread-safe by itself: :class:`topology.state.Topology` wraps it
with the lock and the durable store.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import networkx as nx

from topology.ipam import AddressIndex
from topology.model import Hypervisor, Network, Port, Subnet
from topology.model_l3 import ROUTER_GATEWAY

PORT_LINKS = frozenset({"network", "hv", "sg", "router"})  # neighbour kinds put_port derives from the record


def _n(kind: str, ident: str) -> tuple[str, str]:
    return (kind, ident)


class NetworkIndex:
    """What the ports of one network hold, kept up to date by :class:`TopologyGraph` (read-only to others)."""

    __slots__ = ("_sorted_hosts", "addresses", "hosts", "macs", "ports", "router_ports", "subnets", "unbound")

    def __init__(self) -> None:
        self.subnets: dict[str, None] = {}  # ids of the subnets linked to the network, in subnets_of order
        self.ports: dict[str, Port] = {}  # id -> record, in the order ports_of lists them
        self.macs: dict[str, int] = {}  # MAC -> number of ports having it
        self.addresses: dict[str, AddressIndex] = {}  # subnet id -> addresses held there
        self.hosts: dict[str, int] = {}  # binding host -> number of ports bound there
        self.router_ports: dict[str, str] = {}  # router interface port id -> its router's id (not gateways)
        self.unbound: dict[str, None] = {}  # ids of the ports bound to no hypervisor
        self._sorted_hosts: tuple[str, ...] | None = None  # sorted_hosts(), until a bound port comes or goes

    def sorted_hosts(self) -> tuple[str, ...]:
        """The hosts, sorted (each host's flood lists them all: sorted once, not once per host)."""
        if self._sorted_hosts is None:
            self._sorted_hosts = tuple(sorted(self.hosts))
        return self._sorted_hosts

    def add(self, port: Port) -> None:
        self.ports[port.id] = port
        self.macs[port.mac_address] = self.macs.get(port.mac_address, 0) + 1
        for f in port.fixed_ips:
            self.addresses.setdefault(f.subnet_id, AddressIndex()).add(f.ip_address)
        if port.binding_host:
            self.hosts[port.binding_host] = self.hosts.get(port.binding_host, 0) + 1
            self._sorted_hosts = None
        else:
            self.unbound[port.id] = None
        if port.device_owner.startswith("network:router") and port.device_id \
                and port.device_owner != ROUTER_GATEWAY:
            self.router_ports[port.id] = port.device_id

    def discard(self, port_id: str) -> None:
        port = self.ports.pop(port_id, None)
        if port is None:
            return
        _decrement(self.macs, port.mac_address)
        for f in port.fixed_ips:
            held = self.addresses.get(f.subnet_id)
            if held is not None:
                held.discard(f.ip_address)
                if not held:
                    del self.addresses[f.subnet_id]
        if port.binding_host:
            _decrement(self.hosts, port.binding_host)
            self._sorted_hosts = None
        self.unbound.pop(port_id, None)
        self.router_ports.pop(port_id, None)


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0)
    if n > 1:
        counts[key] = n - 1
    else:
        counts.pop(key, None)


_EMPTY_INDEX = NetworkIndex()
_GENERATIONS = itertools.count(1)


class TopologyGraph:
    """Logical resources and their relations, answering what the compiler asks."""

    def __init__(self) -> None:
        self.g: nx.Graph = nx.Graph()
        self._dpid_to_hv: dict[int, str] = {}
        self._net_index: dict[str, NetworkIndex] = {}
        self._port_net: dict[str, str] = {}  # port id -> the network whose index holds it
        # Kind -> the ids of its nodes (records and placeholders), in the graph's node order: what
        # records() walks instead of every node (20,000 ports to list a thousand hypervisors).
        self._by_kind: dict[str, dict[str, None]] = {}
        # What changed since the last take_journal(): (kind, id, the record before), in order;
        # None while nobody listens (the incremental engine turns it on).
        self.journal: list[tuple[str, str, object]] | None = None
        # Changes with every change of a hypervisor record: caches of tunnel endpoints key on it.
        # Unique across graphs (a process may hold several, and such caches are process-wide).
        self.hv_generation = next(_GENERATIONS)
        # Security group id -> its rules' ids in creation order (kept by graph_l3.put_sg_rule and
        # remove): a group's node also links every member port, too many to walk for its rules.
        self.sg_rule_index: dict[str, dict[str, None]] = {}

    def _add_node(self, node: tuple[str, str], **attrs: object) -> None:
        """``g.add_node``, and the kind index learns a new node (the only way nodes come into the graph)."""
        self.g.add_node(node, **attrs)
        self._by_kind.setdefault(node[0], {})[node[1]] = None  # (an existing id keeps its place)

    def _record(self, kind: str, ident: str, old: object) -> None:
        if self.journal is not None:
            self.journal.append((kind, ident, old))

    def take_journal(self) -> list[tuple[str, str, object]]:
        """The changes recorded since the last call (and start recording, if not yet)."""
        taken, self.journal = self.journal or [], []
        return taken

    def _require(self, kind: str, ident: str) -> None:
        if self.get(kind, ident) is None:
            raise KeyError(f"{kind} {ident} does not exist")

    # -- mutation ----------------------------------------------------------
    def put_network(self, net: Network) -> None:
        """Add or replace a network."""
        self._record("network", net.id, self.get("network", net.id))
        self._add_node(_n("network", net.id), obj=net)

    def put_subnet(self, subnet: Subnet) -> None:
        """Add or replace a subnet; its network must exist."""
        self._require("network", subnet.network_id)
        self._record("subnet", subnet.id, self.get("subnet", subnet.id))
        node = _n("subnet", subnet.id)
        self._add_node(node, obj=subnet)
        self.g.add_edge(node, _n("network", subnet.network_id))
        self._net_index.setdefault(subnet.network_id, NetworkIndex()).subnets.setdefault(subnet.id)

    def put_port(self, port: Port) -> None:
        """Add or replace a port, re-linking it to its network, binding host, security groups and router."""
        self._require("network", port.network_id)
        self._record("port", port.id, self.get("port", port.id))
        node = _n("port", port.id)
        if node in self.g:  # edges a port's own fields define; others (a floating IP's) stay
            self.g.remove_edges_from([(node, nb) for nb in list(self.g.neighbors(node)) if nb[0] in PORT_LINKS])
        self._add_node(node, obj=port)
        self.g.add_edge(node, _n("network", port.network_id))
        if port.binding_host:
            hv = _n("hv", port.binding_host)
            if hv not in self.g:
                # A port may be bound before its hypervisor registers (Nova binds
                # first); the edge waits on a placeholder node without a record.
                self._add_node(hv, obj=None, ofports={})
            self.g.add_edge(node, hv)
        for sg_id in port.attrs.get("security_groups") or ():
            self.link(node, _n("sg", sg_id))
        if port.device_owner.startswith("network:router") and port.device_id:
            self.link(node, _n("router", port.device_id))
        self._unindex_port(port.id)  # re-added last, as its network edge was: the order ports_of lists
        self._net_index.setdefault(port.network_id, NetworkIndex()).add(port)
        self._port_net[port.id] = port.network_id

    def _unindex_port(self, port_id: str) -> None:
        net_id = self._port_net.pop(port_id, None)
        if net_id is not None and net_id in self._net_index:
            self._net_index[net_id].discard(port_id)

    def put_node(self, kind: str, ident: str, obj: object) -> None:
        """Add or replace a record of any kind, keeping the node's edges."""
        self._record(kind, ident, self.get(kind, ident))
        self._add_node(_n(kind, ident), obj=obj)

    def link(self, a: tuple[str, str], b: tuple[str, str]) -> None:
        """Add an edge; a missing end waits as a placeholder node without a record."""
        for node in (a, b):
            if node not in self.g:
                self._add_node(node, obj=None)
        self.g.add_edge(a, b)

    def put_hypervisor(self, hv: Hypervisor) -> None:
        """Add or replace a hypervisor record, keeping its live port map."""
        node = _n("hv", hv.name)
        old = self.g.nodes[node].get("obj") if node in self.g else None
        self._record("hv", hv.name, old)
        self.hv_generation = next(_GENERATIONS)
        if old is not None:
            self._dpid_to_hv.pop(old.datapath_id, None)
        ofports = self.g.nodes[node].get("ofports", {}) if node in self.g else {}
        self._add_node(node, obj=hv, ofports=ofports)
        self._dpid_to_hv[hv.datapath_id] = hv.name

    def remove(self, kind: str, ident: str) -> None:
        """Remove a node (and its edges); a hypervisor with bound ports keeps a placeholder."""
        node = _n(kind, ident)
        if node not in self.g:
            return
        self._record(kind, ident, self.get(kind, ident))
        if kind == "hv":
            self.hv_generation = next(_GENERATIONS)
            hv = self.g.nodes[node]["obj"]
            if hv is not None:
                self._dpid_to_hv.pop(hv.datapath_id, None)
            if any(n[0] == "port" for n in self.g.neighbors(node)):
                self.g.nodes[node]["obj"] = None
                return
        elif kind == "port":
            self._unindex_port(ident)
        elif kind == "sg_rule":
            rule = self.get(kind, ident)
            if rule is not None:
                self.sg_rule_index.get(rule.security_group_id, {}).pop(ident, None)
        elif kind == "sg":
            self.sg_rule_index.pop(ident, None)
        elif kind == "subnet":
            for nb in self.g.neighbors(node):
                if nb[0] == "network" and nb[1] in self._net_index:
                    self._net_index[nb[1]].subnets.pop(ident, None)
        elif kind == "network":  # its ports and subnets (if any remain) lose their edge to it
            for port_id in self._net_index.pop(ident, _EMPTY_INDEX).ports:
                self._port_net.pop(port_id, None)
        self.g.remove_node(node)
        self._by_kind[kind].pop(ident, None)

    def set_ofports(self, hv_name: str, ofports: dict[str, int]) -> None:
        """Record the OVS port map (name -> OpenFlow port) of a hypervisor's bridge, which its flows use.

        The last one its switch reported: kept while the switch is away (:meth:`set_connected`),
        remembered across restarts (controller.portmaps). Journalled only when it changes.
        """
        node = _n("hv", hv_name)
        if node not in self.g:
            self._add_node(node, obj=None, ofports={})
        old = self.g.nodes[node].get("ofports")
        if old == ofports:
            return
        self._record("ofports", hv_name, old)
        self.g.nodes[node]["ofports"] = dict(ofports)

    def set_connected(self, hv_name: str, connected: bool) -> None:
        """Record whether a hypervisor's bridge is connected now (its ports' status; no flow depends on it)."""
        node = _n("hv", hv_name)
        if node not in self.g:
            self._add_node(node, obj=None, ofports={})
        self.g.nodes[node]["connected"] = connected

    def connected(self, hv_name: str) -> bool:
        """Whether a hypervisor's bridge is connected and reported its ports."""
        data = self.g.nodes.get(_n("hv", hv_name))
        return bool(data and data.get("connected"))

    # -- lookup --------------------------------------------------------------
    def get(self, kind: str, ident: str):
        """Return the record of ``(kind, ident)`` or None."""
        # networkx's own node dict: NodeView.get goes through three layers of
        # Mapping machinery, and this is the compiler's hottest lookup.
        data = self.g._node.get((kind, ident))
        return data.get("obj") if data else None

    def network(self, net_id: str) -> Network | None:
        """Return a network or None."""
        return self.get("network", net_id)

    def port(self, port_id: str) -> Port | None:
        """Return a port or None."""
        return self.get("port", port_id)

    def subnet(self, subnet_id: str) -> Subnet | None:
        """Return a subnet or None."""
        return self.get("subnet", subnet_id)

    def hypervisor(self, name: str) -> Hypervisor | None:
        """Return a registered hypervisor or None."""
        return self.get("hv", name)

    def hypervisor_by_dpid(self, dpid: int) -> Hypervisor | None:
        """Return the hypervisor whose integration bridge has this datapath id."""
        name = self._dpid_to_hv.get(dpid)
        return self.hypervisor(name) if name else None

    def ofports(self, hv_name: str) -> dict[str, int]:
        """The OVS port map of a hypervisor's bridge (its last report; empty if none ever came)."""
        data = self.g.nodes.get(_n("hv", hv_name))
        return data.get("ofports", {}) if data else {}

    def records(self, kind: str) -> Iterator:
        """Iterate over all records of a kind, in the order their nodes came into the graph."""
        nodes = self.g._node
        for ident in self._by_kind.get(kind, ()):
            obj = nodes[(kind, ident)].get("obj")
            if obj is not None:
                yield obj

    def hypervisors(self) -> list[Hypervisor]:
        """All registered hypervisors."""
        return list(self.records("hv"))

    # -- what compilation asks -------------------------------------------------
    def _neighbors(self, node: tuple[str, str], kind: str) -> Iterator:
        # networkx's own adjacency and node dicts, as in get(): its views cost more than the walk.
        adjacent = self.g._adj.get(node)
        if adjacent is None:
            return
        nodes = self.g._node
        for nb in adjacent:
            if nb[0] == kind:
                obj = nodes[nb].get("obj")
                if obj is not None:
                    yield obj

    def ports_on(self, hv_name: str) -> list[Port]:
        """Ports bound to a hypervisor."""
        return list(self._neighbors(_n("hv", hv_name), "port"))

    def ports_of(self, net_id: str) -> list[Port]:
        """Ports of a network, wherever they are bound (from its index, in the order they were put)."""
        return list(self.network_index(net_id).ports.values())

    def subnets_of(self, net_id: str) -> list[Subnet]:
        """Subnets of a network (from its index: the network node has an edge to each of its ports too)."""
        return [s for sid in self.network_index(net_id).subnets if (s := self.get("subnet", sid)) is not None]

    def networks_on(self, hv_name: str) -> set[str]:
        """Ids of the networks that have at least one port on a hypervisor."""
        return {p.network_id for p in self.ports_on(hv_name)}

    def hypervisors_of(self, net_id: str) -> set[str]:
        """Names of the hypervisors that host at least one port of a network."""
        return set(self.network_index(net_id).hosts)

    def network_index(self, net_id: str) -> NetworkIndex:
        """What a network's ports hold (MACs, addresses per subnet, hosts, router interfaces); do not modify."""
        return self._net_index.get(net_id, _EMPTY_INDEX)

    def affected_by_networks(self, net_ids: Iterable[str]) -> set[str]:
        """Hypervisors whose flows depend on any of these networks."""
        hvs: set[str] = set()
        for net_id in net_ids:
            hvs |= self.hypervisors_of(net_id)
        return hvs
