"""Distributed floating IPs: stateless 1:1 NAT on the hypervisor that hosts the port.

A floating IP exists as flows only on the hypervisor hosting its port, and on
no other. There, from the external network (a flat or VLAN provider network
with ``router:external``, reached through the provider bridge its physical
network maps to):

- ARP for the floating IP is answered with the floating IP's own MAC (the MAC of
  its ``network:floatingip`` port): unique to the address, so a move to another
  hypervisor changes no ARP cache, only where the external switches deliver it,
  which the gratuitous ARP the controller sends after the move updates;
- IPv4 to that MAC and address has its destination rewritten to the fixed
  address, is routed (TTL, router MAC) into the port's network and delivered.

From the port, traffic routed out of the router's gateway gets the floating IP
as source address and MAC, and leaves through the local provider bridge, never
through another hypervisor. The next hop's MAC on the external network is
learned by the switch itself (an OVS ``learn`` action on ARP addressed to a
floating IP here: replies to our requests, and requests for it); a next hop not
learned yet goes to the controller, which ARPs for it.

Why stateless: a 1:1 mapping is a pure function of the packet, so no
connection state has to exist, be shared or survive anything; a move, a
controller restart or a vswitchd restart loses no NAT state; the NAT is exact
for every protocol (ICMP errors, fragments, SCTP) because no port is rewritten;
and the stateful firewall (conntrack, per port) sees the fixed addresses on
both sides of the NAT. Conntrack NAT would buy nothing a 1:1 mapping needs.

Ports without a floating IP are not NATed (SNAT through a router gateway comes
later): ``lr_in_fip_snat`` drops their external traffic, so a fixed address
never shows on the external network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import netaddr

from flows.flow import CONTROLLER, IN_PORT, DecTtl, Flow, Learn, Meter, Output, Resubmit, SetField, make_flow
from flows.l2 import arp_reply, classify_from_fabric, to_provider
from flows.pipeline import REG_INPORT, REG_NETWORK, REG_NEXTHOP
from flows.stages import EXT_IN_FIP, EXT_OUTPUT, EXT_RESOLVE, FIP_SNAT, L2_LOOKUP, MAC_BINDING
from flows.view import HypervisorView
from topology import graph_l3
from topology.graph import TopologyGraph
from topology.model import Network, Port, provider_patch_name
from topology.model_l3 import ROUTER_INTERFACE, FloatingIP

ETH_ARP, ETH_IPV4 = 0x0806, 0x0800
ARP_REQUEST, ARP_REPLY = 1, 2
UNRESOLVED_MAC = "00:00:00:00:00:00"
NEXT_HOP_METER = Meter("hypervisor: unresolved next hops", 50, 20)
"""What one hypervisor's packets to unlearned next hops may send the controller (a second, a burst)."""
FIP_ARP_REPLY_METER = Meter("hypervisor: ARP replies to floating IPs", 50, 20)
"""What one hypervisor's ARP replies to its floating IPs may send the controller (see :func:`_fip`)."""
LEARNED_IDLE_TIMEOUT = 300  # seconds an unused learned neighbour MAC is kept (an ARP cache entry's life)


@dataclass(frozen=True)
class LocalFip:
    """A floating IP whose port is plugged on this hypervisor, with what its flows need."""

    fip: FloatingIP
    port: Port  # the associated (local) port
    network: Network  # the port's network
    ext: Network  # the external network
    mac: str  # the floating IP's own MAC (its network:floatingip port's)
    router_mac: str  # the router's interface MAC on the port's subnet
    ext_gateway: str | None  # the gateway address of the floating IP's external subnet


@dataclass(frozen=True)
class Announcement:
    """An address the controller announces (gratuitous ARP) from a hypervisor.

    On an external network: a floating IP hosted here, or a router gateway address this
    hypervisor is the active gateway of. ``inside``: a router interface's address, to the
    local ports of a tenant network (its MAC changes when the interface is re-added).
    """

    ext_key: int  # the network's logical key (reg6: lr_in_ext_output's, or L2 lookup's when inside)
    ip: str
    mac: str
    ext_gateway: str | None  # ARPed for at once, so outbound traffic finds its MAC learned
    inside: bool = False
    # A standby gateway's ARP probe (RFC 5227: sender address 0.0.0.0, sender MAC ``mac``, its DVR
    # MAC) for ``ext_gateway``: it learns the next hop's MAC ahead of a failover without claiming
    # any address (the asked updates no ARP cache for a probe).
    probe: bool = False


def learned_cookie(ext: Network) -> int:
    """The cookie of every neighbour MAC learned on ``ext`` (one per external network)."""
    return learn_neighbour_on(ext.key).cookie


def local_fips(graph: TopologyGraph, view: HypervisorView) -> list[LocalFip]:
    """The floating IPs this hypervisor serves: associated with a local port, routed, reachable."""
    out = []
    for port in view.local_ports:  # by the port's own edges: never a walk over the cloud's floating IPs
        for fip in graph_l3.fips_of_port(graph, port.id):
            found = _serving(graph, view, fip, port)
            if found is not None:
                out.append(found)
    return sorted(out, key=lambda f: netaddr.IPAddress(f.fip.floating_ip_address))


def _serving(graph: TopologyGraph, view: HypervisorView, fip: FloatingIP, port: Port) -> LocalFip | None:
    router = graph_l3.router(graph, fip.router_id or "")
    ext = graph.network(fip.floating_network_id)
    fip_port = graph.port(fip.floating_port_id)
    if (router is None or not router.admin_state_up or router.gw_network_id != fip.floating_network_id
            or ext is None or fip_port is None or not fip.fixed_ip_address
            or provider_patch_name(ext.physical_network or "") not in view.ofports):
        return None
    fixed = netaddr.IPAddress(fip.fixed_ip_address)
    router_mac = None
    for iface in graph_l3.router_interfaces(graph, router.id):
        if iface.device_owner != ROUTER_INTERFACE or not iface.admin_state_up or iface.network_id != port.network_id:
            continue
        for sub in graph_l3.port_subnets(graph, iface):
            if fixed in netaddr.IPNetwork(sub.cidr):
                router_mac = iface.mac_address
    if router_mac is None:
        return None
    ext_subnet = next((s for s in graph.subnets_of(ext.id)
                       if netaddr.IPAddress(fip.floating_ip_address) in netaddr.IPNetwork(s.cidr)), None)
    return LocalFip(fip, port, view.networks[port.network_id], ext, fip_port.mac_address, router_mac,
                    ext_subnet.gateway_ip if ext_subnet is not None else None)


def announcements(graph: TopologyGraph, view: HypervisorView | None) -> list[Announcement]:
    """The floating IPs to announce (gratuitous ARP) on this hypervisor's external networks."""
    if view is None:
        return []
    return [Announcement(f.ext.key, f.fip.floating_ip_address, f.mac, f.ext_gateway) for f in local_fips(graph, view)]


def nat_flows(view: HypervisorView, fips: list[LocalFip],
              gateways: Iterable[tuple[Network, str | None]] = ()) -> list[Flow]:
    """Every floating-IP flow of this hypervisor (none when it hosts no port with a floating IP), and the
    flows of each external network it reaches: those of its floating IPs and ``gateways``, the
    (external network, its subnet's gateway) pairs of the routers whose source NAT it runs."""
    flows: list[Flow] = []
    externals = {f.ext.id: f.ext for f in fips}
    next_hops: dict[str, set[str]] = {}
    for f in fips:
        next_hops.setdefault(f.ext.id, set()).add(f.ext_gateway or "")
    for ext, hop in gateways:
        externals[ext.id] = ext
        next_hops.setdefault(ext.id, set()).add(hop or "")
    for ext in sorted(externals.values(), key=lambda n: n.key):
        if ext.id not in view.networks:  # else the compiler classifies it already, towards ext_in_fip
            flows += classify_from_fabric(view, ext, EXT_IN_FIP)
        flows += _external_network(view, ext, next_hops[ext.id] - {""})
    for fip in fips:
        flows += _fip(view, fip)
    return flows


def learn_neighbour(ext: Network) -> Learn:
    """Remember the ARP sender: (this external network, its address) -> its MAC, in lr_in_mac_binding."""
    return learn_neighbour_on(ext.key)


def learn_neighbour_on(ext_key: int) -> Learn:
    """:func:`learn_neighbour` for the external network of logical key ``ext_key`` (reg6)."""
    return Learn(MAC_BINDING.name, MAC_BINDING.priority("learned"), LEARNED_IDLE_TIMEOUT,
                 MAC_BINDING.table_id << 56 | ext_key,
                 matches=((REG_NETWORK, REG_NETWORK), (REG_NEXTHOP, "arp_spa")), loads=(("arp_sha", "eth_dst"),))


def _external_network(view: HypervisorView, ext: Network, next_hops: set[str]) -> Iterator[Flow]:
    """Per external network served here: learning its gateways, the MAC lookup, the way out."""
    base = {REG_NETWORK: ext.key}
    for gateway in sorted(next_hops, key=netaddr.IPAddress):
        yield make_flow(
            EXT_IN_FIP, "arp_learn", {**base, "eth_type": ETH_ARP, "arp_spa": gateway, "arp_tpa": gateway},
            [learn_neighbour(ext)], goto=L2_LOOKUP,
            description=f"gratuitous ARP from the gateway {gateway} of network {ext.id}: learn its MAC",
        )
    yield make_flow(
        EXT_RESOLVE, "lookup", {**base, "eth_type": ETH_IPV4},
        [SetField("eth_dst", UNRESOLVED_MAC), Resubmit(MAC_BINDING.name)], goto=EXT_OUTPUT,
        description=f"next hop on network {ext.id}: its learned MAC",
    )
    yield make_flow(
        EXT_OUTPUT, "unresolved", {**base, "eth_dst": UNRESOLVED_MAC}, [NEXT_HOP_METER, Output(CONTROLLER)],
        description=f"next hop on network {ext.id} not learned yet: the controller ARPs for it",
    )
    yield make_flow(
        EXT_OUTPUT, "out", base, to_provider(view, ext) or [],
        description=f"out to external network {ext.id} ({ext.network_type} {ext.physical_network})",
    )


def _fip(view: HypervisorView, f: LocalFip) -> Iterator[Flow]:
    ip, fixed, ext = f.fip.floating_ip_address, f.fip.fixed_ip_address, f.ext
    base = {REG_NETWORK: ext.key}
    tag = (to_provider(view, ext) or [])[:-1]  # the VLAN tag, if any: the reply goes back out of in_port
    yield make_flow(
        EXT_IN_FIP, "garp", {**base, "eth_type": ETH_ARP, "arp_spa": ip, "arp_tpa": ip},
        description=f"gratuitous ARP for floating IP {ip}: the address moved to another host; never answer it "
        "(the answer would pull the external switches' entry back here)",
    )
    yield make_flow(
        EXT_IN_FIP, "arp_answer", {**base, "eth_type": ETH_ARP, "arp_op": ARP_REQUEST, "arp_tpa": ip},
        [learn_neighbour(ext), *arp_reply(f.mac, ip, tag + [Output(IN_PORT)])],
        description=f"ARP who-has floating IP {ip}: {f.mac}, from this hypervisor only; learn the asker",
    )
    # Also up to the controller, which has the switch learn it again at once (a packet-out carrying
    # the same learn action): OVS runs a learn action for a packet that hits a cached datapath flow
    # only in its next revalidator pass, up to ~0.5 s later, and after a move the new host's cached
    # flow for this very reply (from the last time it held the address) outlives the learned MAC
    # we deleted when the address left it; meanwhile every packet out to that next hop was dropped.
    yield make_flow(
        EXT_IN_FIP, "arp_learn", {**base, "eth_type": ETH_ARP, "arp_op": ARP_REPLY, "arp_tpa": ip},
        [FIP_ARP_REPLY_METER, learn_neighbour(ext), Output(CONTROLLER)],
        description=f"ARP reply to floating IP {ip}: learn the sender's MAC (and the controller, at once)",
    )
    yield make_flow(
        EXT_IN_FIP, "dnat", {**base, "eth_type": ETH_IPV4, "eth_dst": f.mac, "ipv4_dst": ip},
        [SetField("ipv4_dst", fixed), DecTtl(), SetField("eth_src", f.router_mac),
         SetField("eth_dst", f.port.mac_address), SetField(REG_NETWORK, f.network.key)],
        goto=L2_LOOKUP,
        description=f"floating IP {ip} -> {fixed} (port {f.port.id}): DNAT and route into network {f.network.id}",
    )
    yield make_flow(
        FIP_SNAT, "snat", {**base, REG_INPORT: f.port.key, "eth_type": ETH_IPV4, "ipv4_src": fixed},
        [SetField("ipv4_src", ip), SetField("eth_src", f.mac)], goto=EXT_RESOLVE,
        description=f"{fixed} (port {f.port.id}) leaves as floating IP {ip}",
    )
    yield make_flow(
        EXT_RESOLVE, "local_fip", {**base, "eth_type": ETH_IPV4, REG_NEXTHOP: int(netaddr.IPAddress(ip))},
        # in_port cleared: the hairpin may end at the very port it came from (a VM to its own floating IP).
        [SetField("eth_dst", f.mac), SetField("in_port", 0), Resubmit(EXT_IN_FIP.name)],
        description=f"to floating IP {ip}, hosted here: hairpin without leaving the hypervisor",
    )
