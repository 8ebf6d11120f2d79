"""The topology page's data: the logical graph as networkx node-link JSON, sanitised.

The topology's own graph (:class:`topology.graph.TopologyGraph`) holds records with every
attribute a client ever set (a port's ``binding:profile``, its DHCP options...). The page
gets a new graph built from an allow-list of attributes per kind (:data:`FIELDS`) plus what
the controller knows live (each port's OpenFlow port, each hypervisor's bridge state), so
nothing the page has no use for leaves the controller, whatever a record holds.

Nodes are ``"<kind>:<id>"`` strings (``id`` in the JSON; a hypervisor's id is its name) with a
``kind`` attribute: ``network``, ``subnet``,
``port``, ``router``, ``fip`` and ``hypervisor``. Edges are the graph's own: subnet-network,
port-network, port-hypervisor (its binding), router-port (interfaces and gateway port),
fip-port, fip-network and fip-router. Security groups and their rules stay out (a group
links every member port: a picture of them is a hairball). No I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx

from flows.flow import Flow, Output, SetField
from flows.ofctl import flow_text
from flows.pipeline import STAGE_BY_TABLE
from topology.graph import TopologyGraph
from topology.model import Port

KINDS = {"network": "network", "subnet": "subnet", "port": "port", "router": "router", "fip": "fip",
         "hv": "hypervisor"}

# kind -> (record attribute, JSON key) pairs, and the record's ``attrs`` keys shown as they are.
FIELDS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "network": ((("project_id", "project_id"), ("network_type", "network_type"),
                 ("segmentation_id", "segmentation_id"), ("physical_network", "physical_network"),
                 ("mtu", "mtu"), ("admin_state_up", "admin_state_up")),
                ("name", "shared", "router:external")),
    "subnet": ((("network_id", "network_id"), ("project_id", "project_id"), ("cidr", "cidr"),
                ("ip_version", "ip_version"), ("gateway_ip", "gateway_ip"), ("enable_dhcp", "enable_dhcp")),
               ("name", "ipv6_ra_mode", "ipv6_address_mode")),
    "port": ((("network_id", "network_id"), ("project_id", "project_id"),
              ("mac_address", "mac_address"), ("binding_host", "binding_host"), ("device_owner", "device_owner"),
              ("device_id", "device_id"), ("admin_state_up", "admin_state_up")),
             ("name", "status")),
    "router": ((("project_id", "project_id"), ("gw_network_id", "external_network_id"),
                ("enable_snat", "enable_snat"), ("gateway_hosts", "gateway_hypervisors")),
               ("name",)),
    "fip": ((("project_id", "project_id"), ("floating_network_id", "floating_network_id"),
             ("floating_ip_address", "floating_ip_address"), ("port_id", "port_id"),
             ("fixed_ip_address", "fixed_ip_address"), ("router_id", "router_id")),
            ()),
    "hv": ((("name", "name"), ("tunnel_ip", "tunnel_ip"), ("gateway_for", "gateway_for")), ()),
}


def node_id(kind: str, ident: str) -> str:
    """The page's id of a graph node: ``port:<id>``, ``hypervisor:<name>``..."""
    return f"{KINDS[kind]}:{ident}"


def _plain(value: Any) -> Any:
    """A JSON value of a record's attribute (tuples as lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


DOWN = {"state": "down", "connected": False}


@dataclass
class Snapshot:
    """What the page's graph is made of, copied under the topology's lock and read outside it.

    Records are immutable and a bridge's port map is replaced, never changed in place
    (:meth:`TopologyGraph.set_ofports`): references to them stay true after the lock is let go.
    """

    records: dict[str, list[Any]]
    edges: list[tuple[tuple[str, str], tuple[str, str]]]
    ofports: dict[str, dict[str, int]]  # hypervisor -> its bridge's port map
    connected: frozenset[str]  # the hypervisors whose bridges are connected

    @classmethod
    def take(cls, graph: TopologyGraph) -> Snapshot:
        """Copy what :func:`build` needs (under the topology's lock)."""
        records = {kind: list(graph.records(kind)) for kind in KINDS}
        edges = [(a, b) for a, b in graph.g.edges() if a[0] in KINDS and b[0] in KINDS]
        return cls(records, edges, {hv.name: graph.ofports(hv.name) for hv in records["hv"]},
                   frozenset(hv.name for hv in records["hv"] if graph.connected(hv.name)))


def node_attrs(snap: Snapshot, kind: str, record: Any) -> dict[str, Any]:
    """The allowed attributes of one record, plus what the page needs computed."""
    fields, attr_keys = FIELDS[kind]
    out: dict[str, Any] = {"kind": KINDS[kind]}
    out.update({key: _plain(getattr(record, name)) for name, key in fields})
    attrs = getattr(record, "attrs", {}) or {}
    out.update({key: attrs[key] for key in attr_keys if key in attrs})
    if kind == "port":
        out["fixed_ips"] = [{"subnet_id": f.subnet_id, "ip_address": f.ip_address} for f in record.fixed_ips]
        host = record.binding_host or ""  # (a bridge away keeps its last map: the tap may be gone meanwhile)
        out["ofport"] = snap.ofports.get(host, {}).get(record.ofport_name) if host in snap.connected else None
    elif kind == "router":
        out["active_gateway_hypervisor"] = next((h for h in record.gateway_hosts if h in snap.connected), None)
    elif kind == "hv":
        out["datapath_id"] = f"{record.datapath_id:016x}"
        out["bridge_mappings"] = dict(record.bridge_mappings)
    return out


def build(snap: Snapshot) -> dict[str, Any]:
    """``networkx.node_link_data`` of the sanitised graph (``links`` for its edges), without bridge states."""
    g = nx.Graph()
    for kind, records in snap.records.items():
        for record in records:
            g.add_node(node_id(kind, record.name if kind == "hv" else record.id), **node_attrs(snap, kind, record))
    for a, b in snap.edges:
        ida, idb = node_id(*a), node_id(*b)
        if ida in g and idb in g:  # both ends are records (not placeholders)
            g.add_edge(ida, idb)
    return nx.node_link_data(g, edges="links")


def with_bridges(data: dict[str, Any], bridges: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """``data`` (from :func:`build`, left as it is) with each hypervisor's bridge state and ``meta`` as its graph's."""
    nodes = [n if n["kind"] != "hypervisor" else {**n, **bridges.get(n["name"], DOWN)} for n in data["nodes"]]
    return {**data, "graph": meta, "nodes": nodes}


class TopologyView:
    """The page's node-link data, built again only when the topology or a bridge's port map changed.

    At 1,000 hypervisors and 20,000 ports a build takes about a second: under the topology's
    lock, every second, it would hold up every write. Under the lock only the cache's key is
    read (the graph, its revision, each port map's identity) and, when it changed, the
    snapshot taken; the build runs outside it. Each answer adds the bridges' states (cheap).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._data: dict[str, Any] | None = None
        self._guard = threading.Lock()

    def data(self, topology: Any, bridges: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The JSON of ``GET /topology`` for ``topology`` (a :class:`topology.state.Topology`)."""
        snap = None
        with topology.lock:
            graph, revision = topology.graph, topology.revision
            maps = [(hv.name, graph.ofports(hv.name), graph.connected(hv.name)) for hv in graph.hypervisors()]
            with self._guard:
                fresh = self._data is not None and self._same(graph, revision, maps)
                data = self._data
            if not fresh:
                snap = Snapshot.take(graph)
        if snap is not None:
            data = build(snap)
            with self._guard:
                self._key, self._data = (graph, revision, maps), data
        return with_bridges(data, bridges, {"generated_at": time.time(), "revision": revision})

    def _same(self, graph: TopologyGraph, revision: int, maps: list[tuple[str, dict, bool]]) -> bool:
        old_graph, old_revision, old_maps = self._key
        return (old_graph is graph and old_revision == revision and len(old_maps) == len(maps)
                and all(a[0] == b[0] and a[1] is b[1] and a[2] == b[2] for a, b in zip(old_maps, maps, strict=True)))


def port_flows(graph: TopologyGraph, port: Port, flows: Iterable[Flow]) -> list[dict[str, Any]]:
    """The flows of ``port``'s hypervisor that name it, in table and priority order.

    Naming it: a match on its OpenFlow port, its logical key (``reg7`` in, ``reg5`` out), its
    MAC or one of its addresses (the tunnel ports' flows for it included); or an action
    setting ``reg5``/``reg7`` to its key or sending to its OpenFlow port.
    """
    named = _names(graph, port)
    ofport = named["in_port"]
    picked = [f for f in flows if _names_port(f, named, port.key, ofport)]
    picked.sort(key=lambda f: (f.table_id, -f.priority, f.cookie))
    return [flow_view(f) for f in picked]


def flow_view(flow: Flow) -> dict[str, Any]:
    """One flow as the page shows it."""
    stage = STAGE_BY_TABLE.get(flow.table_id)
    return {"stage": stage.name if stage else str(flow.table_id), "table": flow.table_id,
            "priority": flow.priority, "cookie": f"{flow.cookie:#018x}", "description": flow.description,
            "text": flow_text(flow)}


def _names(graph: TopologyGraph, port: Port) -> dict[str, Any]:
    """The values that name ``port`` in a match."""
    addresses = {f.ip_address.lower() for f in port.fixed_ips}
    ofport = graph.ofports(port.binding_host).get(port.ofport_name) if port.binding_host else None
    return {"in_port": ofport, "mac": port.mac_address.lower(), "addresses": addresses}


_ADDRESS_FIELDS = frozenset({"arp_tpa", "arp_spa", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst", "ipv6_nd_target"})
_KEY_FIELDS = frozenset({"reg5", "reg7"})


def _names_port(flow: Flow, named: dict[str, Any], key: int, ofport: int | None) -> bool:
    for name, value in flow.match:
        if name == "in_port" and ofport is not None and value == ofport:
            return True
        if name in _KEY_FIELDS and value == key:
            return True
        if name in ("eth_src", "eth_dst", "arp_sha", "arp_tha") and isinstance(value, str) \
                and value.lower() == named["mac"]:
            return True
        if name in _ADDRESS_FIELDS and isinstance(value, str) and value.lower() in named["addresses"]:
            return True
    return any(_acts_on(act, key, ofport) for act in flow.actions)


def _acts_on(act: object, key: int, ofport: int | None) -> bool:
    if isinstance(act, SetField):
        return act.field in _KEY_FIELDS and act.value == key
    return isinstance(act, Output) and ofport is not None and act.port == ofport


