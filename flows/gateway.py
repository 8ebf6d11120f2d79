"""Source NAT on gateway hypervisors, chosen by the switches themselves (fast-failover groups).

A router with an external gateway and ``enable_snat`` is scheduled onto an ordered list
of gateway hypervisors (:mod:`topology.gateways`). Its VMs without a floating IP leave
as follows:

- on the VM's own hypervisor the packet is routed as any other (DVR), reaches
  ``lr_in_fip_snat`` without a floating IP, and is sent, with the router's key as tunnel
  key, through a fast-failover group whose buckets output to the router's gateways'
  tunnel ports (``tg-*``, BFD on) in the router's order: the first gateway whose BFD
  session is up gets it. A dead gateway is bypassed by each switch within BFD's detection
  time, with no controller involved;
- on the gateway, ``lr_gw_in`` maps the tunnel key back to the router, which routes the
  packet once more (the SNAT hop), and ``lr_in_fip_snat`` commits it in the router's
  conntrack zone with its source NATed to the router's gateway address, out to the
  external network as floating-IP traffic goes (learned next-hop MAC, provider bridge);
- a reply to the gateway address is un-NATed in the same zone (``ext_in_fip``,
  ``lr_gw_unsnat``) and routed back into the VM's network, where L2 lookup tunnels it
  to the VM's hypervisor like any routed packet.

Only the active gateway answers ARP for the router's gateway address: each gateway's
answer goes through a fast-failover group whose first buckets, empty, watch the tunnels
to the gateways before it in the list, and whose last bucket answers. So a standby
starts answering (and its first packet out moves the external switches' MAC entry)
exactly when it stops seeing the gateways before it, whoever else is down.

Floating-IP traffic never comes here: ``lr_in_fip_snat`` matches it first, on the VM's
own hypervisor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from flows.flow import CT, CT_EST, CT_REL, CT_TRK, IN_PORT, Bucket, Flow, Group, Output, SetField, make_flow
from flows.l2 import arp_reply, to_provider
from flows.nat import ARP_REPLY, ARP_REQUEST, ETH_ARP, ETH_IPV4, Announcement, learn_neighbour
from flows.pipeline import REG_FLAGS, REG_INPORT, REG_NETWORK, REG_ROUTER, stage
from flows.routing import gateway_of, routers_of
from flows.stages import CLASSIFY, EXT_IN_FIP, EXT_RESOLVE, FIP_SNAT
from flows.view import HypervisorView
from topology.gateways import GATEWAY_PORT_PREFIX, SNAT_ZONES, gateway_tunnel_name
from topology.graph import TopologyGraph
from topology.model import Network, dvr_mac
from topology.model_l3 import Router

GW_IN = stage("lr_gw_in")
GW_UNSNAT = stage("lr_gw_unsnat")
ROUTING = stage("lr_in_ip_routing")

def snat_zone(router: Router) -> int:
    """The conntrack zone of a router's source NAT on its gateways: the one stored with it
    (unique among routers, topology.gateways.SNAT_ZONES); a router stored before zones were
    (none yet) gets 0x8000 + the low 15 bits of its key until its gateway is next set."""
    return router.snat_zone or (SNAT_ZONES[0] | (router.key & 0x7FFF))


@dataclass(frozen=True)
class SnatRouter:
    """A router whose gateway this hypervisor reaches (or is), with what its flows need."""

    router: Router
    ext: Network  # the external network
    address: str  # the router's IPv4 gateway address
    mac: str  # its gateway port's MAC
    next_hop: str | None  # the external subnet's gateway
    tunnels: tuple[tuple[str, int | None], ...]  # (gateway, its tg- port here; None: this hypervisor)
    computes: tuple[int, ...] = ()  # on a gateway: its tg- ports to the hypervisors that are not gateways

    @property
    def here(self) -> bool:
        """Whether this hypervisor is one of the router's gateways."""
        return any(port is None for _, port in self.tunnels)


def snat_routers(graph: TopologyGraph, view: HypervisorView) -> list[SnatRouter]:
    """The routers with a scheduled gateway that this hypervisor routes for or is a gateway of."""
    computes = compute_tunnels(graph, view) if view.hv.gateway_for else ()  # once: the same for every router
    out = []
    for router in routers_of(graph, view):
        gateway = gateway_of(graph, router)
        if gateway is None or not router.gateway_hosts:
            continue
        tunnels = gateway_tunnels(graph, view, router)
        here = computes if view.hv.name in router.gateway_hosts else ()
        out.append(SnatRouter(router, gateway.network, str(gateway.ip), gateway.port.mac_address,
                              gateway.subnet_gateway, tunnels, here))
    return out


def gateway_tunnels(graph: TopologyGraph, view: HypervisorView, router: Router) -> tuple[tuple[str, int | None], ...]:
    """The router's gateways in its order, as this hypervisor reaches them: (name, its tg- port here, or
    None for this hypervisor itself); a gateway whose tunnel is not here (yet) is left out."""
    tunnels: list[tuple[str, int | None]] = []
    for name in router.gateway_hosts:
        hv = graph.hypervisor(name)
        if name == view.hv.name:
            tunnels.append((name, None))
        elif hv is not None and gateway_tunnel_name(hv.tunnel_ip) in view.ofports:
            tunnels.append((name, view.ofports[gateway_tunnel_name(hv.tunnel_ip)]))
    return tuple(tunnels)


def before_here(tunnels: tuple[tuple[str, int | None], ...]) -> tuple[int, ...] | None:
    """The tunnel ports to the gateways before this one (each alive: it answers, not this one); None when
    this hypervisor is not one of the gateways."""
    ports = []
    for _name, ofport in tunnels:
        if ofport is None:
            return tuple(ports)
        ports.append(ofport)
    return None


def compute_tunnels(graph: TopologyGraph, view: HypervisorView) -> tuple[int, ...]:
    """This gateway's tunnel ports to the hypervisors that are not gateways, by port number."""
    ports = []
    for hv in graph.hypervisors():
        port = view.ofports.get(gateway_tunnel_name(hv.tunnel_ip)) if not hv.gateway_for else None
        if port is not None and hv.name != view.hv.name:
            ports.append(port)
    return tuple(sorted(ports))


def while_active(before: tuple[int, ...], computes: tuple[int, ...], actions: tuple) -> tuple[Bucket, ...]:
    """Buckets running ``actions`` only while this gateway is the active one: every gateway before
    it (the tunnels ``before``) is unreachable, and it still reaches a hypervisor that is not a
    gateway (one of ``computes``, if it has any: a gateway cut off the underlay, whose traffic can
    no longer come, must not keep answering for the address beside the gateway that took over)."""
    reach = Group(tuple(Bucket((), port) for port in computes)) if computes else None
    return (*(Bucket((), port) for port in before), Bucket(actions, watch_group=reach))


def gateway_externals(routers: list[SnatRouter]) -> list[tuple[Network, str | None]]:
    """The external networks this hypervisor reaches as a gateway (for flows.nat.nat_flows)."""
    return [(r.ext, r.next_hop) for r in routers if r.here]


def gateway_flows(view: HypervisorView, routers: list[SnatRouter]) -> list[Flow]:
    """Every source-NAT flow of this hypervisor: towards the gateways, and as a gateway."""
    flows: list[Flow] = []
    if any(r.here for r in routers):
        flows += _from_gateway_tunnels(view)
        for ext in {r.ext.key: r.ext for r in routers if r.here}.values():
            flows.append(_probe_answers(view, ext))
    for r in routers:
        if r.router.enable_snat:
            flows += _to_gateway(r)
        if r.here:
            flows += _as_gateway(view, r)
    return flows


def _from_gateway_tunnels(view: HypervisorView) -> Iterator[Flow]:
    yield make_flow(GW_IN, "drop", {}, description="no router of this gateway has that key: drop")
    yield make_flow(GW_UNSNAT, "drop", {}, description="not a reply of a source-NATed connection: drop")
    for name, ofport in sorted(view.ofports.items()):
        if name.startswith(GATEWAY_PORT_PREFIX):
            yield make_flow(CLASSIFY, "gateway_tunnel", {"in_port": ofport}, goto=GW_IN,
                            description=f"from gateway tunnel {name}: source NAT traffic")


def _probe_answers(view: HypervisorView, ext: Network) -> Flow:
    """The answer to this gateway's ARP probe (gateway_announcements): learn the next hop's MAC."""
    return make_flow(
        EXT_IN_FIP, "arp_learn", {REG_NETWORK: ext.key, "eth_type": ETH_ARP, "arp_op": ARP_REPLY,
                                  "eth_dst": dvr_mac(view.hv), "arp_tpa": "0.0.0.0"},
        [learn_neighbour(ext)],
        description=f"answer to this gateway's ARP probe on network {ext.id}: learn the next hop's MAC",
    )


def _snat(r: SnatRouter) -> CT:
    return CT(commit=True, zone=snat_zone(r.router), table=EXT_RESOLVE.name, nat=f"src={r.address}")


def _to_gateway(r: SnatRouter) -> Iterator[Flow]:
    """From a local port: to the first live gateway of the router (or NAT here, when it is this one)."""
    buckets = []
    for _name, ofport in r.tunnels:
        if ofport is None:
            buckets.append(Bucket((_snat(r),)))
            break  # this hypervisor's own bucket is always live: none after it is ever chosen
        buckets.append(Bucket((Output(ofport),), ofport))
    if not buckets:
        return
    yield make_flow(
        FIP_SNAT, "to_gateway", {REG_ROUTER: r.router.key, "eth_type": ETH_IPV4},
        [SetField("tunnel_id", r.router.key), Group(tuple(buckets))],
        description=f"router {r.router.id}: no floating IP, out through source NAT on the first live of "
        f"{', '.join(name for name, _ in r.tunnels)}",
    )


def _as_gateway(view: HypervisorView, r: SnatRouter) -> Iterator[Flow]:
    """On one of the router's gateways: its source NAT, and its gateway address while active."""
    router, base = r.router, {REG_NETWORK: r.ext.key}
    if router.enable_snat:
        yield make_flow(GW_IN, "snat", {"tunnel_id": router.key}, [SetField(REG_ROUTER, router.key)], goto=ROUTING,
                        description=f"router {router.id}'s source NAT traffic: route it here")
        yield make_flow(
            FIP_SNAT, "gateway_snat", {REG_ROUTER: router.key, REG_INPORT: 0, "eth_type": ETH_IPV4}, [_snat(r)],
            description=f"router {router.id}: source NAT to {r.address} (zone {snat_zone(router)})",
        )
        yield make_flow(
            EXT_IN_FIP, "gw_unsnat", {**base, "eth_type": ETH_IPV4, "eth_dst": r.mac, "ipv4_dst": r.address},
            [SetField(REG_ROUTER, router.key), CT(zone=snat_zone(router), table=GW_UNSNAT.name, nat="")],
            description=f"to router {router.id}'s gateway address {r.address}: un-NAT in zone {snat_zone(router)}",
        )
        for state in (CT_TRK | CT_EST, CT_TRK | CT_REL):
            # Routed from here on as by a local router: the "came from the fabric" flag (set on the
            # way in from the provider network) would keep L2 lookup from tunnelling it to the VM.
            yield make_flow(
                GW_UNSNAT, "reply", {REG_ROUTER: router.key, "ct_state": (state, state)}, [SetField(REG_FLAGS, 0)],
                goto=ROUTING, description=f"router {router.id}: reply of a source-NATed connection, to the VM",
            )
    tag = (to_provider(view, r.ext) or [])[:-1]  # the VLAN tag, if any: the reply goes back out of in_port
    # A bucket's actions run as an OpenFlow action set (OVS drops a learn there): learn the asker first.
    answer = arp_reply(r.mac, r.address, [*tag, Output(IN_PORT)])
    yield make_flow(
        EXT_IN_FIP, "garp", {**base, "eth_type": ETH_ARP, "arp_spa": r.address, "arp_tpa": r.address},
        description=f"gratuitous ARP for gateway address {r.address}: never answer it",
    )
    yield make_flow(
        EXT_IN_FIP, "gw_arp", {**base, "eth_type": ETH_ARP, "arp_op": ARP_REQUEST, "arp_tpa": r.address},
        [learn_neighbour(r.ext), Group(while_active(before_here(r.tunnels) or (), r.computes, tuple(answer)))],
        description=f"ARP who-has {r.address} (router {router.id}'s gateway): {r.mac}, while this gateway is active",
    )
    yield make_flow(
        EXT_IN_FIP, "arp_learn", {**base, "eth_type": ETH_ARP, "arp_op": ARP_REPLY, "arp_tpa": r.address},
        [learn_neighbour(r.ext)],
        description=f"ARP reply to gateway address {r.address}: learn the sender's MAC",
    )


def gateway_announcements(routers: list[SnatRouter], connected: Callable[[str], bool],
                          dvr_mac: str) -> list[Announcement]:
    """What this hypervisor announces as a gateway: the gateway addresses of the routers it is the
    active gateway of, and for the others an ARP probe for their next hop (from its DVR MAC).

    Active, as the controller sees it: the first gateway of the router's list whose bridge is
    connected. The switches decide by BFD on their own (gw_arp); this only says who sends the
    gratuitous ARP that moves the external switches' entry at once after a failover or a move.
    A standby probes so that, when the switches make it active, the next hop's MAC is learned
    already: with the controller down, nobody would ARP for it (lr_in_ext_output's unresolved).
    """
    out = []
    for r in routers:
        names = [name for name, _ in r.tunnels]
        here = next((name for name, port in r.tunnels if port is None), None)
        active = next((name for name in names if name == here or connected(name)), None)
        if here is not None and active == here:
            out.append(Announcement(r.ext.key, r.address, r.mac, r.next_hop))
        elif here is not None and r.next_hop:
            out.append(Announcement(r.ext.key, "0.0.0.0", dvr_mac, r.next_hop, probe=True))
    return out
