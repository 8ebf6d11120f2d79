"""Distributed east-west routing (DVR) in the pipeline: every hypervisor routes its own VMs.

A router exists only as flows, on every hypervisor that hosts a port of one of
its subnets and on no other. A frame from a local VM to a router interface MAC
is routed where it was sent: TTL decremented, source MAC set to the router
interface on the destination subnet, destination MAC to the destination port's
(known from the topology: no ARP inside the cloud), then handed to L2 lookup of
the destination network, which delivers it locally or tunnels it straight to
the destination's hypervisor with the destination network's VNI.

On the wire between hypervisors a routed frame carries the sending
hypervisor's DVR MAC (:func:`topology.model.dvr_mac`), so one router MAC never
shows up from many hosts on a fabric; the receiving hypervisor gives the frame
back the router interface MAC of the destination subnet before delivery.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import netaddr

from flows.flow import (
    CONTROLLER,
    IN_PORT,
    DecTtl,
    Flow,
    Meter,
    Output,
    PopVlan,
    RegMove,
    Resubmit,
    SetField,
    make_flow,
)
from flows.l2 import unicast_port
from flows.nat import Announcement
from flows.pipeline import (
    FLAG_FROM_REMOTE,
    REG_FLAGS,
    REG_NETWORK,
    REG_NEXTHOP,
    REG_NEXTHOP6,
    REG_ROUTER,
    stage,
)
from flows.stages import CLASSIFY, OFPVID_NONE
from flows.view import HypervisorView
from topology.graph import TopologyGraph
from topology.model import (
    DVR_MAC_MASK,
    DVR_MAC_PREFIX,
    OVERLAY_TYPES,
    TUNNEL_PORT_NAMES,
    Network,
    Port,
    dvr_mac,
    provider_patch_name,
)
from topology.model_l3 import ROUTER_INTERFACE, Router

L2_LOOKUP = stage("ls_in_l2_lookup")
IP_INPUT = stage("lr_in_ip_input")
ROUTING = stage("lr_in_ip_routing")
ARP_RESOLVE = stage("lr_in_arp_resolve")
FIP_SNAT = stage("lr_in_fip_snat")

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
ICMP, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 1, 8, 0
ICMPV6, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 58, 128, 129


@dataclass(frozen=True)
class Interface:
    """One router interface: its port, the subnet address it holds and the subnet's network."""

    port: Port
    ip: netaddr.IPAddress
    cidr: netaddr.IPNetwork
    network: Network
    subnet_gateway: str | None = None  # the subnet's gateway_ip (the external gateway's default next hop)


def routers_of(graph: TopologyGraph, view: HypervisorView) -> list[Router]:
    """Routers with an interface on a network this hypervisor hosts, or scheduled on it as a gateway
    (admin up), by key."""
    found: dict[str, Router] = {}
    if view.hv.gateway_for:  # a gateway routes for the routers it NATs (flows.gateway)
        for router in graph.records("router"):
            if view.hv.name in router.gateway_hosts and router.admin_state_up:
                found[router.id] = router
    for net_id in view.networks:
        for port_id, router_id in graph.network_index(net_id).router_ports.items():
            port = graph.port(port_id)
            if port is not None and port.device_owner == ROUTER_INTERFACE:
                router = graph.get("router", router_id)
                if router is not None and router.admin_state_up:
                    found[router.id] = router
    return sorted(found.values(), key=lambda r: r.key)


def interfaces_of(graph: TopologyGraph, router: Router) -> list[Interface]:
    """Every (port, address, subnet, network) the router is attached with."""
    out = []
    for node in sorted(graph.g.neighbors(("router", router.id))) if ("router", router.id) in graph.g else ():
        port = graph.g.nodes[node].get("obj") if node[0] == "port" else None
        if port is None or port.device_owner != ROUTER_INTERFACE or not port.admin_state_up:
            continue
        net = graph.network(port.network_id)
        for fixed in port.fixed_ips:
            subnet = graph.subnet(fixed.subnet_id)
            if net is not None and subnet is not None:
                out.append(Interface(port, netaddr.IPAddress(fixed.ip_address), netaddr.IPNetwork(subnet.cidr), net))
    return out


def gateway_of(graph: TopologyGraph, router: Router, version: int = 4) -> Interface | None:
    """The router's IPv4 (or IPv6) gateway on its external network, or None."""
    port = graph.port(router.gw_port_id) if router.gw_port_id else None
    net = graph.network(port.network_id) if port is not None else None
    if port is None or net is None:
        return None
    for fixed in port.fixed_ips:
        subnet = graph.subnet(fixed.subnet_id)
        if subnet is not None and subnet.ip_version == version:
            return Interface(port, netaddr.IPAddress(fixed.ip_address), netaddr.IPNetwork(subnet.cidr), net,
                             subnet.gateway_ip)
    return None


def router_interface(graph: TopologyGraph, router_key: int, network_key: int) -> tuple[str, str] | None:
    """(IPv4 address, MAC) of the router with ``router_key`` on the network with ``network_key``."""
    for net in graph.records("network"):
        if net.key != network_key:
            continue
        for port in graph.ports_of(net.id):
            router = graph.get("router", port.device_id) if port.device_owner == ROUTER_INTERFACE else None
            if router is None or router.key != router_key:
                continue
            for fixed in port.fixed_ips:
                if ":" not in fixed.ip_address:
                    return fixed.ip_address, port.mac_address
    return None


def routing_flows(graph: TopologyGraph, view: HypervisorView) -> list[Flow]:
    """Every routing flow of this hypervisor (none when it hosts no router's subnet)."""
    flows, routed = routing_base(graph, view)
    for net in routed:
        for port in graph.ports_of(net.id):
            flows += routed_port(graph, view, net, port)
    return flows


def routing_base(graph: TopologyGraph, view: HypervisorView) -> tuple[list[Flow], list[Network]]:
    """The routing flows that do not depend on each port of the routed networks, and those networks (by key)."""
    routers = routers_of(graph, view)
    if not routers:
        return [], []
    flows: list[Flow] = [
        make_flow(IP_INPUT, "default", {}, goto=ROUTING, description="not for the router itself: route it"),
        make_flow(ROUTING, "drop", {}, description="no route: drop"),
        make_flow(ARP_RESOLVE, "drop", {}, description="next hop unknown: drop"),
    ]
    routed_networks: dict[str, Network] = {}
    all_ifaces: list[Interface] = []
    for router in routers:
        ifaces = interfaces_of(graph, router)
        all_ifaces += ifaces
        flows += _to_router(view, router, ifaces)
        flows += _echo_replies(view, router, ifaces)
        flows += _ttl_expired(view, router, ifaces)
        gateways = [g for g in (gateway_of(graph, router), gateway_of(graph, router, 6)) if g is not None]
        flows += _routes(router, ifaces, gateways)
        for iface in ifaces:
            routed_networks[iface.network.id] = iface.network
    routed = sorted(routed_networks.values(), key=lambda n: n.key)
    for net in routed:
        if net.id in view.networks:
            flows += _restore_router_mac(view, net, [i for i in all_ifaces if i.network.id == net.id])
    return flows, routed


def routed_port(graph: TopologyGraph, view: HypervisorView, net: Network, port: Port) -> list[Flow]:
    """A port's flows on a hypervisor routing into its network: its next-hop entries, and its unicast
    flow where the network is reached only through the router (a hosted network has it already)."""
    flows = list(_resolve_port(view, net, port))
    if net.id not in view.networks:
        flows += unicast_port(graph, view, net, port, False)
    return flows


def _to_router(view: HypervisorView, router: Router, ifaces: list[Interface]) -> Iterator[Flow]:
    seen = set()
    for iface in ifaces:
        if iface.network.id not in view.networks or iface.port.id in seen:
            continue
        seen.add(iface.port.id)
        yield make_flow(
            L2_LOOKUP, "to_router",
            {REG_NETWORK: iface.network.key, "eth_dst": iface.port.mac_address, REG_FLAGS: (0, FLAG_FROM_REMOTE)},
            [SetField(REG_ROUTER, router.key)], goto=IP_INPUT,
            description=f"to router {router.id} on network {iface.network.id}",
        )


def _echo_replies(view: HypervisorView, router: Router, ifaces: list[Interface]) -> Iterator[Flow]:
    """Ping to any of the router's addresses, from any of its hosted networks, answered here."""
    ingress = {i.network.id: i for i in ifaces if i.network.id in view.networks}
    for entry in ingress.values():
        for target in ifaces:
            v4 = target.ip.version == 4
            ip_dst, ip_src, scratch, bits = ("ipv4_dst", "ipv4_src", REG_NEXTHOP, 32) if v4 else \
                ("ipv6_dst", "ipv6_src", REG_NEXTHOP6, 128)
            match = {REG_ROUTER: router.key, REG_NETWORK: entry.network.key, "eth_type": ETH_IPV4 if v4 else ETH_IPV6,
                     "ip_proto": ICMP if v4 else ICMPV6, ip_dst: str(target.ip)}
            match["icmpv4_type" if v4 else "icmpv6_type"] = ICMP_ECHO_REQUEST if v4 else ICMPV6_ECHO_REQUEST
            yield make_flow(
                IP_INPUT, "echo_reply", match,
                [RegMove("eth_src", "eth_dst", 48), SetField("eth_src", entry.port.mac_address),
                 RegMove(ip_src, scratch, bits), SetField(ip_src, str(target.ip)), RegMove(scratch, ip_dst, bits),
                 SetField("icmpv4_type" if v4 else "icmpv6_type", ICMP_ECHO_REPLY if v4 else ICMPV6_ECHO_REPLY),
                 Output(IN_PORT)],
                description=f"router {router.id} answers ping to {target.ip} from network {entry.network.id}",
            )


TTL_METER = Meter("hypervisor: ICMP time exceeded", 50, 20)
"""What one hypervisor's expiring packets may send the controller (a second, a burst); the rest drop on it."""


def _ttl_expired(view: HypervisorView, router: Router, ifaces: list[Interface]) -> Iterator[Flow]:
    """IPv4 with TTL 0 or 1 would die here: the controller answers time exceeded (traceroute's hop), at most
    :data:`TTL_METER`'s rate from a hypervisor."""
    for net_key in sorted({i.network.key for i in ifaces if i.network.id in view.networks and i.ip.version == 4}):
        for ttl in (0, 1):  # OVS does not allow a mask on nw_ttl
            yield make_flow(
                IP_INPUT, "ttl_expired",
                {REG_ROUTER: router.key, REG_NETWORK: net_key, "eth_type": ETH_IPV4, "nw_ttl": ttl},
                [TTL_METER, Output(CONTROLLER)],
                description=f"TTL {ttl} expires at router {router.id}: ICMP time exceeded, from the controller",
            )


def _route_actions(iface: Interface, nexthop: netaddr.IPAddress | None) -> list:
    v4 = iface.ip.version == 4
    actions: list = [DecTtl(), SetField(REG_NETWORK, iface.network.key), SetField("eth_src", iface.port.mac_address)]
    if nexthop is None:  # connected: the destination is its own next hop
        actions.append(RegMove("ipv4_dst", REG_NEXTHOP, 32) if v4 else RegMove("ipv6_dst", REG_NEXTHOP6, 128))
    else:
        actions.append(SetField(REG_NEXTHOP if v4 else REG_NEXTHOP6, int(nexthop)))
    return actions


def _routes(router: Router, ifaces: list[Interface], gateways: list[Interface]) -> Iterator[Flow]:
    """Connected subnets, extra routes and the external gateway's, longest prefix first (100 + prefix length).

    One route per destination (the flows' match): connected first, then extra routes in
    their order, then the default route (IPv4, IPv6) via the external subnet's gateway
    unless an extra route already covers it. Out of the gateway a packet goes to
    lr_in_fip_snat: IPv4 leaves as its floating IP or through its router's source NAT,
    IPv6 as it is (flows.gateway).
    """
    seen: set[netaddr.IPNetwork] = set()
    connected = [*ifaces, *gateways]
    for iface in connected:
        if iface.cidr.cidr not in seen:
            seen.add(iface.cidr.cidr)
            yield _route(router, iface, iface.cidr, None, "connected", gateway=iface in gateways)
    hops = [(destination, nexthop, "extra route") for destination, nexthop in router.routes]
    for gateway in gateways:
        if gateway.subnet_gateway:
            default = "0.0.0.0/0" if gateway.ip.version == 4 else "::/0"
            hops.append((default, gateway.subnet_gateway, "default route out of the external gateway"))
    for destination, nexthop, what in hops:
        dest, hop = netaddr.IPNetwork(destination), netaddr.IPAddress(nexthop)
        via = next((i for i in connected if hop in i.cidr and i.ip.version == hop.version), None)
        if via is None or dest.cidr in seen:
            continue  # the API refuses a next hop outside the router's subnets; be safe anyway
        seen.add(dest.cidr)
        yield _route(router, via, dest, hop, f"{what} via {hop}", gateway=via in gateways)


def _route(router: Router, iface: Interface, dest: netaddr.IPNetwork, hop, what: str, gateway: bool = False) -> Flow:
    if dest.version == 4:
        match = {REG_ROUTER: router.key, "eth_type": ETH_IPV4,
                 "ipv4_dst": (int(dest.network), int(dest.netmask))}
    else:
        match = {REG_ROUTER: router.key, "eth_type": ETH_IPV6,
                 "ipv6_dst": (int(dest.network), int(dest.netmask))}
    return make_flow(
        ROUTING, "route", match, _route_actions(iface, hop), goto=FIP_SNAT if gateway else ARP_RESOLVE,
        priority_offset=dest.prefixlen,
        description=f"router {router.id}: {dest.cidr} {what} out of network {iface.network.id}",
    )


def _resolve_port(view: HypervisorView, net: Network, port: Port) -> Iterator[Flow]:
    """Next hop address -> the port's MAC (and this hypervisor's DVR MAC when it lives elsewhere)."""
    if not port.binding_host or port.device_owner.startswith("network:router"):
        return
    rewrite = [SetField("eth_dst", port.mac_address)]
    if port.binding_host != view.hv.name:
        rewrite.append(SetField("eth_src", dvr_mac(view.hv)))
    for fixed in port.fixed_ips:
        addr = netaddr.IPAddress(fixed.ip_address)
        if addr.version == 4:
            match = {REG_NETWORK: net.key, "eth_type": ETH_IPV4, REG_NEXTHOP: int(addr)}
        else:
            match = {REG_NETWORK: net.key, "eth_type": ETH_IPV6, REG_NEXTHOP6: int(addr)}
        yield make_flow(
            ARP_RESOLVE, "resolved", match, [*rewrite, Resubmit(L2_LOOKUP.name)],
            description=f"{addr} in network {net.id} is {port.mac_address} (port {port.id} on "
            f"{port.binding_host})",
        )


def _restore_router_mac(view: HypervisorView, net: Network, ifaces: list[Interface]) -> Iterator[Flow]:
    """Routed frames from other hypervisors: DVR MAC -> the router interface MAC of the destination subnet."""
    if net.network_type in OVERLAY_TYPES:
        port = view.ofports.get(TUNNEL_PORT_NAMES[net.network_type])
        base = {"in_port": port, "tunnel_id": net.segmentation_id}
        pre: list = []
    else:
        port = view.ofports.get(provider_patch_name(net.physical_network or ""))
        if net.network_type == "vlan":
            base = {"in_port": port, "vlan_vid": 0x1000 | net.segmentation_id}
            pre = [PopVlan()]
        else:
            base = {"in_port": port, "vlan_vid": OFPVID_NONE}
            pre = []
    if port is None:
        return
    dvr = (int(netaddr.EUI(DVR_MAC_PREFIX)), int(netaddr.EUI(DVR_MAC_MASK)))
    for iface in ifaces:
        v4 = iface.cidr.version == 4
        match = {**base, "eth_src": dvr, "eth_type": ETH_IPV4 if v4 else ETH_IPV6,
                 "ipv4_dst" if v4 else "ipv6_dst": (int(iface.cidr.network), int(iface.cidr.netmask))}
        yield make_flow(
            CLASSIFY, "dvr_mac", match,
            [*pre, SetField("eth_src", iface.port.mac_address), SetField(REG_NETWORK, net.key),
             SetField(REG_FLAGS, FLAG_FROM_REMOTE)],
            goto=L2_LOOKUP,
            description=f"routed into {iface.cidr} from another hypervisor: source MAC back to the router's",
        )


def interface_announcements(graph: TopologyGraph, view: HypervisorView | None) -> list[Announcement]:
    """The router interface addresses to announce to this hypervisor's local ports.

    A router interface removed and added again gets a new MAC: the VMs' ARP and neighbour
    caches still hold the old one for the subnet's gateway. Announced (gratuitous ARP, or an
    unsolicited Neighbour Advertisement with the override flag, as Neutron's L3 agent does)
    by each hypervisor to its own ports once its flows are in, so the VMs route again at once
    instead of when their cache entry expires.
    """
    if view is None or not view.local_ports:
        return []
    out = []
    for router in routers_of(graph, view):
        for iface in interfaces_of(graph, router):
            if iface.network.id in view.networks:
                out.append(Announcement(iface.network.key, str(iface.ip), iface.port.mac_address, None, inside=True))
    return out
