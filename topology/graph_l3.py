"""Routers, floating IPs and security groups in the topology graph, and what compilers ask of them.

Nodes: ``("router", id)``, ``("fip", id)``, ``("sg", id)``, ``("sg_rule", id)``.
Edges: router-port (its interfaces and its gateway port; derived from the
port's ``device_owner``/``device_id`` by :meth:`TopologyGraph.put_port`),
port-sg (from the port's ``security_groups``, also by ``put_port``), fip-port
(the associated port), fip-network (the external network), fip-router,
sg_rule-sg (its group, and its remote group). Functions here take a :class:`topology.graph.TopologyGraph`; they
never write anything but the graph.
"""

from __future__ import annotations

from collections.abc import Iterable

from topology.graph import TopologyGraph
from topology.ipv6 import ROUTER_INTERFACE_OWNERS
from topology.model import Network, Port, Subnet
from topology.model_l3 import ROUTER_GATEWAY, FloatingIP, Router, SecurityGroup, SecurityGroupRule


# -- mutation -------------------------------------------------------------------------
def put_router(graph: TopologyGraph, router: Router) -> None:
    """Add or replace a router (its port edges come from the ports)."""
    graph.put_node("router", router.id, router)


def put_fip(graph: TopologyGraph, fip: FloatingIP) -> None:
    """Add or replace a floating IP, re-linking it to its port, network and router."""
    node = ("fip", fip.id)
    if node in graph.g:
        graph.g.remove_edges_from(list(graph.g.edges(node)))
    graph.put_node("fip", fip.id, fip)
    graph.link(node, ("network", fip.floating_network_id))
    if fip.port_id:
        graph.link(node, ("port", fip.port_id))
    if fip.router_id:
        graph.link(node, ("router", fip.router_id))


def put_sg(graph: TopologyGraph, sg: SecurityGroup) -> None:
    """Add or replace a security group (indexing projects' default groups)."""
    graph.put_node("sg", sg.id, sg)
    if sg.is_default:
        graph.g.graph.setdefault("default_sg", {})[sg.project_id] = sg.id


def put_sg_rule(graph: TopologyGraph, rule: SecurityGroupRule) -> None:
    """Add a security group rule, linked to its group and to its remote group."""
    graph.put_node("sg_rule", rule.id, rule)
    graph.sg_rule_index.setdefault(rule.security_group_id, {})[rule.id] = None
    graph.link(("sg_rule", rule.id), ("sg", rule.security_group_id))
    if rule.remote_group_id:
        graph.link(("sg_rule", rule.id), ("sg", rule.remote_group_id))


def _neighbors(graph: TopologyGraph, node: tuple[str, str], kind: str) -> list:
    return list(graph._neighbors(node, kind))


# -- routers --------------------------------------------------------------------------
def router(graph: TopologyGraph, router_id: str) -> Router | None:
    """A router or None."""
    return graph.get("router", router_id)


def router_ports(graph: TopologyGraph, router_id: str) -> list[Port]:
    """Every port of a router: interfaces and gateway."""
    return _neighbors(graph, ("router", router_id), "port")


def router_interfaces(graph: TopologyGraph, router_id: str) -> list[Port]:
    """A router's interface ports (not its gateway port)."""
    return [p for p in router_ports(graph, router_id) if p.device_owner != ROUTER_GATEWAY]


def gateway_port(graph: TopologyGraph, router_id: str) -> Port | None:
    """A router's gateway port on its external network, or None."""
    r = router(graph, router_id)
    return graph.port(r.gw_port_id) if r is not None and r.gw_port_id else None


def port_subnets(graph: TopologyGraph, port: Port) -> list[Subnet]:
    """The subnets a port has an address in (each once, in fixed_ips order)."""
    seen: dict[str, Subnet] = {}
    for f in port.fixed_ips:
        sub = graph.subnet(f.subnet_id)
        if sub is not None:
            seen.setdefault(sub.id, sub)
    return list(seen.values())


def subnet_router_port(graph: TopologyGraph, subnet: Subnet) -> Port | None:
    """The router interface on ``subnet`` that holds its gateway address, else any router interface on it."""
    found = None
    for port in graph.ports_of(subnet.network_id):
        if port.device_owner in ROUTER_INTERFACE_OWNERS:
            for fixed in port.fixed_ips:
                if fixed.subnet_id == subnet.id:
                    if fixed.ip_address == subnet.gateway_ip:
                        return port
                    found = found or port
    return found


def router_subnets(graph: TopologyGraph, router_id: str, *, gateway: bool = False) -> list[Subnet]:
    """The subnets of a router's interfaces (and of its gateway port if ``gateway``)."""
    ports = router_ports(graph, router_id) if gateway else router_interfaces(graph, router_id)
    out: dict[str, Subnet] = {}
    for port in ports:
        for sub in port_subnets(graph, port):
            out.setdefault(sub.id, sub)
    return list(out.values())


def router_networks(graph: TopologyGraph, router_id: str) -> set[str]:
    """Ids of the networks a router is attached to (interfaces and gateway)."""
    return {p.network_id for p in router_ports(graph, router_id)}


def routers_of_network(graph: TopologyGraph, net_id: str) -> list[Router]:
    """Routers with an interface on a network (for distributed routing), from the network's index."""
    out: dict[str, Router] = {}
    for port_id, router_id in graph.network_index(net_id).router_ports.items():
        r = graph.get("router", router_id)
        if r is not None and graph.g.has_edge(("port", port_id), ("router", router_id)):
            out.setdefault(r.id, r)
    return list(out.values())


def hypervisors_of_router(graph: TopologyGraph, router_id: str) -> set[str]:
    """Hypervisors hosting a port of any network the router is attached to, and its gateway hypervisors."""
    router = graph.get("router", router_id)
    gateways = set(router.gateway_hosts) if router is not None else set()
    return graph.affected_by_networks(router_networks(graph, router_id)) | gateways


def hypervisors_depending_on(graph: TopologyGraph, net_ids: Iterable[str]) -> set[str]:
    """Hypervisors whose compiled flows mention these networks' ports.

    Those hosting the networks, and, through distributed routing, every hypervisor
    hosting another subnet of a router attached to them: they route to these ports
    (next-hop and unicast flows), so a port change here must recompile them too.
    """
    hvs: set[str] = set()
    for net_id in net_ids:
        hvs |= graph.hypervisors_of(net_id)
        for r in routers_of_network(graph, net_id):
            hvs |= hypervisors_of_router(graph, r.id)
    return hvs


def router_of_subnet_for_external(graph: TopologyGraph, subnet_id: str, ext_net_id: str) -> Router | None:
    """The router with an interface on ``subnet_id`` and its gateway on ``ext_net_id`` (FIP reachability)."""
    sub = graph.subnet(subnet_id)
    if sub is None:
        return None
    for r in routers_of_network(graph, sub.network_id):
        if r.gw_network_id != ext_net_id:
            continue
        if any(f.subnet_id == subnet_id for p in router_interfaces(graph, r.id) for f in p.fixed_ips):
            return r
    return None


def is_external(net: Network | None) -> bool:
    """Whether a network is external (``router:external``)."""
    return bool(net is not None and net.attrs.get("router:external"))


# -- floating IPs --------------------------------------------------------------------
def fips_of_port(graph: TopologyGraph, port_id: str) -> list[FloatingIP]:
    """Floating IPs associated with a port."""
    return _neighbors(graph, ("port", port_id), "fip")


def fips_of_router(graph: TopologyGraph, router_id: str) -> list[FloatingIP]:
    """Floating IPs NATed by a router."""
    return _neighbors(graph, ("router", router_id), "fip")


def fip_of_port_port(graph: TopologyGraph, floating_port_id: str) -> FloatingIP | None:
    """The floating IP whose address a ``network:floatingip`` port holds."""
    port = graph.port(floating_port_id)
    return graph.get("fip", port.device_id) if port is not None and port.device_id else None


# -- security groups ---------------------------------------------------------------
def sg_rules(graph: TopologyGraph, sg_id: str) -> list[SecurityGroupRule]:
    """A security group's rules, in creation order (from the graph's index: the group's node links its members too)."""
    return [r for rule_id in graph.sg_rule_index.get(sg_id, ())
            if (r := graph.get("sg_rule", rule_id)) is not None and r.security_group_id == sg_id]


def sg_remote_rules(graph: TopologyGraph, sg_id: str) -> list[SecurityGroupRule]:
    """Rules (of any group) whose remote group is ``sg_id``."""
    return [r for r in _neighbors(graph, ("sg", sg_id), "sg_rule") if r.remote_group_id == sg_id]


def sg_members(graph: TopologyGraph, sg_id: str) -> list[Port]:
    """Ports in a security group."""
    return _neighbors(graph, ("sg", sg_id), "port")


def port_security_groups(graph: TopologyGraph, port: Port) -> list[SecurityGroup]:
    """A port's security groups (in the port's order)."""
    return [sg for sg_id in port.attrs.get("security_groups") or () if (sg := graph.get("sg", sg_id))]


def port_security_enabled(port: Port) -> bool:
    """Whether anti-spoofing and security groups apply to a port (Neutron's port_security_enabled)."""
    return port.attrs.get("port_security_enabled", True)


def allowed_address_pairs(port: Port) -> list[tuple[str, str]]:
    """A port's allowed (ip_address or CIDR, mac_address) pairs, MAC defaulted to the port's."""
    return [(p["ip_address"], p.get("mac_address") or port.mac_address)
            for p in port.attrs.get("allowed_address_pairs") or ()]


def default_sg(graph: TopologyGraph, project_id: str) -> SecurityGroup | None:
    """A project's ``default`` security group, or None if it was not made yet."""
    sg_id = graph.g.graph.get("default_sg", {}).get(project_id)
    return graph.get("sg", sg_id) if sg_id else None


def sg_referrers(graph: TopologyGraph, sg_ids: Iterable[str]) -> set[str]:
    """Ids of the groups having a rule with one of ``sg_ids`` as remote group."""
    return {r.security_group_id for sg_id in set(sg_ids) for r in sg_remote_rules(graph, sg_id)}


def hypervisors_of_sgs(graph: TopologyGraph, sg_ids: Iterable[str]) -> set[str]:
    """Hypervisors hosting a member port of any of these groups."""
    return {p.binding_host for sg_id in set(sg_ids) for p in sg_members(graph, sg_id) if p.binding_host}
