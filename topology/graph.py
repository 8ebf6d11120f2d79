"""The logical topology as a networkx graph.

Nodes are ``(kind, id)`` tuples with the record in the ``obj`` attribute:
``("network", id)``, ``("subnet", id)``, ``("port", id)``, ``("hv", name)``.
Edges: subnet-network, port-network, port-hv (the port's binding). Routers, floating
IPs and security groups (``("router", id)``, ``("fip", id)``, ``("sg", id)``,
``("sg_rule", id)``) are added by :mod:`topology.graph_l3`, which also answers
the queries about them.

Besides the logical records, each hypervisor node carries the live state the
controller learns from its switch: ``ofports`` (OVS port name -> OpenFlow port
number). That state is not persisted: a switch reports it on every connect.

The graph is not thread-safe by itself: :class:`topology.state.Topology` wraps it
with the lock and the durable store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import networkx as nx

from topology.model import Hypervisor, Network, Port, Subnet

PORT_LINKS = frozenset({"network", "hv", "sg", "router"})  # neighbour kinds put_port derives from the record


def _n(kind: str, ident: str) -> tuple[str, str]:
    return (kind, ident)


class TopologyGraph:
    """Logical resources and their relations, answering what the compiler asks."""

    def __init__(self) -> None:
        self.g: nx.Graph = nx.Graph()
        self._dpid_to_hv: dict[int, str] = {}

    def _require(self, kind: str, ident: str) -> None:
        if self.get(kind, ident) is None:
            raise KeyError(f"{kind} {ident} does not exist")

    # -- mutation ----------------------------------------------------------
    def put_network(self, net: Network) -> None:
        """Add or replace a network."""
        self.g.add_node(_n("network", net.id), obj=net)

    def put_subnet(self, subnet: Subnet) -> None:
        """Add or replace a subnet; its network must exist."""
        self._require("network", subnet.network_id)
        node = _n("subnet", subnet.id)
        self.g.add_node(node, obj=subnet)
        self.g.add_edge(node, _n("network", subnet.network_id))

    def put_port(self, port: Port) -> None:
        """Add or replace a port, re-linking it to its network, binding host, security groups and router."""
        self._require("network", port.network_id)
        node = _n("port", port.id)
        if node in self.g:  # edges a port's own fields define; others (a floating IP's) stay
            self.g.remove_edges_from([(node, nb) for nb in list(self.g.neighbors(node)) if nb[0] in PORT_LINKS])
        self.g.add_node(node, obj=port)
        self.g.add_edge(node, _n("network", port.network_id))
        if port.binding_host:
            hv = _n("hv", port.binding_host)
            if hv not in self.g:
                # A port may be bound before its hypervisor registers (Nova binds
                # first); the edge waits on a placeholder node without a record.
                self.g.add_node(hv, obj=None, ofports={})
            self.g.add_edge(node, hv)
        for sg_id in port.attrs.get("security_groups") or ():
            self.link(node, _n("sg", sg_id))
        if port.device_owner.startswith("network:router") and port.device_id:
            self.link(node, _n("router", port.device_id))

    def put_node(self, kind: str, ident: str, obj: object) -> None:
        """Add or replace a record of any kind, keeping the node's edges."""
        self.g.add_node(_n(kind, ident), obj=obj)

    def link(self, a: tuple[str, str], b: tuple[str, str]) -> None:
        """Add an edge; a missing end waits as a placeholder node without a record."""
        for node in (a, b):
            if node not in self.g:
                self.g.add_node(node, obj=None)
        self.g.add_edge(a, b)

    def put_hypervisor(self, hv: Hypervisor) -> None:
        """Add or replace a hypervisor record, keeping its live port map."""
        node = _n("hv", hv.name)
        old = self.g.nodes[node].get("obj") if node in self.g else None
        if old is not None:
            self._dpid_to_hv.pop(old.datapath_id, None)
        ofports = self.g.nodes[node].get("ofports", {}) if node in self.g else {}
        self.g.add_node(node, obj=hv, ofports=ofports)
        self._dpid_to_hv[hv.datapath_id] = hv.name

    def remove(self, kind: str, ident: str) -> None:
        """Remove a node (and its edges); a hypervisor with bound ports keeps a placeholder."""
        node = _n(kind, ident)
        if node not in self.g:
            return
        if kind == "hv":
            hv = self.g.nodes[node]["obj"]
            if hv is not None:
                self._dpid_to_hv.pop(hv.datapath_id, None)
            if any(n[0] == "port" for n in self.g.neighbors(node)):
                self.g.nodes[node]["obj"] = None
                return
        self.g.remove_node(node)

    def set_ofports(self, hv_name: str, ofports: dict[str, int]) -> None:
        """Record the live OVS port map (name -> OpenFlow port) of a hypervisor's bridge."""
        node = _n("hv", hv_name)
        if node not in self.g:
            self.g.add_node(node, obj=None, ofports={})
        self.g.nodes[node]["ofports"] = dict(ofports)

    # -- lookup --------------------------------------------------------------
    def get(self, kind: str, ident: str):
        """Return the record of ``(kind, ident)`` or None."""
        data = self.g.nodes.get(_n(kind, ident))
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
        """The live OVS port map of a hypervisor (empty if not connected)."""
        data = self.g.nodes.get(_n("hv", hv_name))
        return data.get("ofports", {}) if data else {}

    def records(self, kind: str) -> Iterator:
        """Iterate over all records of a kind."""
        for node, data in self.g.nodes(data=True):
            if node[0] == kind and data.get("obj") is not None:
                yield data["obj"]

    def hypervisors(self) -> list[Hypervisor]:
        """All registered hypervisors."""
        return list(self.records("hv"))

    # -- what compilation asks -------------------------------------------------
    def _neighbors(self, node: tuple[str, str], kind: str) -> Iterator:
        if node not in self.g:
            return
        for nb in self.g.neighbors(node):
            if nb[0] == kind:
                obj = self.g.nodes[nb].get("obj")
                if obj is not None:
                    yield obj

    def ports_on(self, hv_name: str) -> list[Port]:
        """Ports bound to a hypervisor."""
        return list(self._neighbors(_n("hv", hv_name), "port"))

    def ports_of(self, net_id: str) -> list[Port]:
        """Ports of a network, wherever they are bound."""
        return list(self._neighbors(_n("network", net_id), "port"))

    def subnets_of(self, net_id: str) -> list[Subnet]:
        """Subnets of a network."""
        return list(self._neighbors(_n("network", net_id), "subnet"))

    def networks_on(self, hv_name: str) -> set[str]:
        """Ids of the networks that have at least one port on a hypervisor."""
        return {p.network_id for p in self.ports_on(hv_name)}

    def hypervisors_of(self, net_id: str) -> set[str]:
        """Names of the hypervisors that host at least one port of a network."""
        return {p.binding_host for p in self.ports_of(net_id) if p.binding_host}

    def affected_by_networks(self, net_ids: Iterable[str]) -> set[str]:
        """Hypervisors whose flows depend on any of these networks."""
        hvs: set[str] = set()
        for net_id in net_ids:
            hvs |= self.hypervisors_of(net_id)
        return hvs
