"""IPv6 north-south: a router's IPv6 subnets routed out of its IPv6 external subnet, without NAT.

Out (distributed, like floating IPs): the VM's own hypervisor routes the packet to the
external network (default route ``::/0`` via the external subnet's gateway), gives it its
own DVR MAC as source (one MAC per host on the external network, never the router's from
many hosts) and sends it out of its provider bridge; the next hop's MAC is learned by the
switch from Neighbour Advertisements (the controller solicits one, from ``::``, when a packet
finds it unknown: the answer goes to all nodes, so every hypervisor learns it).

In (through the router's active gateway): the upstream routes the tenant prefixes via the
router's IPv6 gateway address; only the active gateway answers Neighbour Solicitations for it
(the same fast-failover gating as ARP for the IPv4 gateway address, flows.gateway), and routes
what it receives into the router's subnets, tunnelled to the VM's hypervisor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from flows.flow import IN_PORT, Flow, Group, Learn, Output, RegMove, Resubmit, SetField, make_flow
from flows.gateway import before_here, compute_tunnels, gateway_tunnels, while_active
from flows.l2 import to_provider
from flows.nat import LEARNED_IDLE_TIMEOUT, UNRESOLVED_MAC, learned_cookie
from flows.nd import FLAG_OVERRIDE, FLAG_ROUTER, FLAG_SOLICITED, NA, NS, OPTION_TLL
from flows.pipeline import REG_FLAGS, REG_NETWORK, REG_NEXTHOP6, REG_ROUTER, stage
from flows.routing import Interface, gateway_of, routers_of
from flows.stages import EXT_IN_FIP, EXT_OUTPUT, EXT_RESOLVE, FIP_SNAT, L2_LOOKUP, MAC_BINDING
from flows.view import HypervisorView
from topology.graph import TopologyGraph
from topology.model import Network, dvr_mac
from topology.model_l3 import Router

ROUTING = stage("lr_in_ip_routing")
ND_TLL = stage("ls_in_nd_rsp_tll")
ETH_IPV6, ICMPV6 = 0x86DD, 58


@dataclass(frozen=True)
class Router6:
    """A router with an IPv6 external gateway that this hypervisor routes for."""

    router: Router
    gateway: Interface  # its IPv6 address on the external network
    watch: tuple[int, ...] | None  # on one of its gateways: the tunnels to those before it; else None
    computes: tuple[int, ...] = ()  # on one of its gateways: its tunnels to the other hypervisors


def routers6(graph: TopologyGraph, view: HypervisorView) -> list[Router6]:
    """The routers with an IPv6 gateway that this hypervisor routes for (or is a gateway of)."""
    computes = compute_tunnels(graph, view) if view.hv.gateway_for else ()  # once: the same for every router
    out = []
    for router in routers_of(graph, view):
        gateway = gateway_of(graph, router, 6)
        if gateway is not None:
            before = before_here(gateway_tunnels(graph, view, router))
            out.append(Router6(router, gateway, before, computes if before is not None else ()))
    return out


def externals6(routers: list[Router6]) -> list[tuple[Network, str | None]]:
    """The external networks these routers reach (for flows.nat.nat_flows: classification, way out)."""
    return [(r.gateway.network, None) for r in routers]


def northsouth6_flows(view: HypervisorView, routers: list[Router6]) -> list[Flow]:
    """Every IPv6 north-south flow of this hypervisor."""
    flows: list[Flow] = []
    for ext in {r.gateway.network.key: r.gateway.network for r in routers}.values():
        flows += _way_out(view, ext)
    for r in routers:
        if r.watch is not None:
            flows += _as_gateway(view, r)
    return flows


def learn_neighbour6(ext: Network) -> Learn:
    """Remember a Neighbour Advertisement's target: (this external network, target) -> sender's MAC."""
    return Learn(MAC_BINDING.name, MAC_BINDING.priority("learned"), LEARNED_IDLE_TIMEOUT, learned_cookie(ext),
                 matches=((REG_NETWORK, REG_NETWORK), (REG_NEXTHOP6, "ipv6_nd_target")),
                 loads=(("eth_src", "eth_dst"),))


def _way_out(view: HypervisorView, ext: Network) -> Iterator[Flow]:
    base = {REG_NETWORK: ext.key, "eth_type": ETH_IPV6}
    yield make_flow(FIP_SNAT, "v6_out", base, [SetField("eth_src", dvr_mac(view.hv))], goto=EXT_RESOLVE,
                    description=f"IPv6 out to network {ext.id}, not translated, from this hypervisor's DVR MAC")
    yield make_flow(EXT_RESOLVE, "lookup", base, [SetField("eth_dst", UNRESOLVED_MAC), Resubmit(MAC_BINDING.name)],
                    goto=EXT_OUTPUT, description=f"IPv6 next hop on network {ext.id}: its learned MAC")
    yield make_flow(EXT_IN_FIP, "arp_learn", {**base, "ip_proto": ICMPV6, "icmpv6_type": NA},
                    [learn_neighbour6(ext)], goto=L2_LOOKUP,
                    description=f"Neighbour Advertisement on network {ext.id}: learn its target's MAC")


def _as_gateway(view: HypervisorView, r: Router6) -> Iterator[Flow]:
    """On one of the router's gateways: its IPv6 gateway address while active, and the way in."""
    ext, ip, mac = r.gateway.network, str(r.gateway.ip), r.gateway.port.mac_address
    base = {REG_NETWORK: ext.key, "eth_type": ETH_IPV6}
    answer = (SetField("icmpv6_type", NA), RegMove("eth_src", "eth_dst", 48), SetField("eth_src", mac),
              RegMove("ipv6_src", "ipv6_dst", 128), SetField("ipv6_src", ip),
              SetField("nd_reserved", FLAG_ROUTER | FLAG_SOLICITED | FLAG_OVERRIDE),
              SetField("nd_options_type", OPTION_TLL), Resubmit(ND_TLL.name))
    yield make_flow(EXT_IN_FIP, "gw_nd", {**base, "ip_proto": ICMPV6, "icmpv6_type": NS, "ipv6_nd_target": ip},
                    [Group(while_active(r.watch, r.computes, answer))],
                    description=f"NS who-has {ip} (router {r.router.id}'s IPv6 gateway): {mac}, while active")
    tag = (to_provider(view, ext) or [])[:-1]  # the VLAN tag, if any: the answer goes back out of in_port
    yield make_flow(ND_TLL, "answer", {**base, "ip_proto": ICMPV6, "icmpv6_type": NA, "ipv6_nd_target": ip},
                    [SetField("ipv6_nd_tll", mac), *tag, Output(IN_PORT)],
                    description=f"NA for {ip}: target link-layer address {mac}, back to the asker")
    yield make_flow(EXT_IN_FIP, "gw_own6", {**base, "ipv6_dst": ip},
                    description=f"to router {r.router.id}'s IPv6 gateway address itself: drop")
    yield make_flow(EXT_IN_FIP, "gw_in6", {**base, "eth_dst": mac},
                    [SetField(REG_ROUTER, r.router.key), SetField(REG_FLAGS, 0)], goto=ROUTING,
                    description=f"IPv6 to router {r.router.id}'s gateway MAC: routed into its subnets")
