"""compile(graph, hypervisor) -> the flows that hypervisor's br-int must hold.

Pure: reads a :class:`topology.graph.TopologyGraph` and returns a list of
:class:`flows.flow.Flow`; never touches a switch, a socket or a file. Each
feature contributes the flows of its stages through a small function; later
features (routing, NAT, security groups) add functions, not special cases.

Per-hypervisor flow count grows with what that hypervisor hosts (its ports, and
the ports of the networks it hosts), never with the size of the cloud.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from flows.flow import IN_PORT, Flow, Output, PopVlan, PushVlan, RegMove, Resubmit, SetField, make_flow
from flows.pipeline import FLAG_FROM_REMOTE, REG_FLAGS, REG_INPORT, REG_NETWORK, REG_OUTPORT, Stage, stage
from topology.graph import TopologyGraph
from topology.model import OVERLAY_TYPES, TUNNEL_PORT_NAMES, Hypervisor, Network, Port, provider_patch_name

CLASSIFY = stage("phy_classify")
ARP_RSP = stage("ls_in_arp_rsp")
ND_RSP = stage("ls_in_nd_rsp")
ND_TLL = stage("ls_in_nd_rsp_tll")
L2_LOOKUP = stage("ls_in_l2_lookup")
DELIVER = stage("ls_out_deliver")
PORT_SEC = stage("ls_in_port_sec")
OUT_PRE_ACL = stage("ls_out_pre_acl")
EXT_IN_FIP = stage("ext_in_fip")
FIP_SNAT = stage("lr_in_fip_snat")
EXT_RESOLVE = stage("lr_in_ext_resolve")
MAC_BINDING = stage("lr_in_mac_binding")
EXT_OUTPUT = stage("lr_in_ext_output")

OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000
ETH_TYPE_ARP = 0x0806
ARP_REQUEST, ARP_REPLY = 1, 2


@dataclass(frozen=True)
class HypervisorView:
    """What one hypervisor's compilation needs, gathered once from the graph."""

    hv: Hypervisor
    ofports: dict[str, int]
    local_ports: list[Port]  # bound here and plugged (their tap is on br-int)
    networks: dict[str, Network]  # networks with a port bound here


def view_of(graph: TopologyGraph, hv_name: str) -> HypervisorView | None:
    """Collect the hypervisor's record, live port map, plugged ports and networks."""
    hv = graph.hypervisor(hv_name)
    if hv is None:
        return None
    ofports = graph.ofports(hv_name)
    bound = graph.ports_on(hv_name)
    networks = {}
    for p in bound:
        net = graph.network(p.network_id)
        if net is not None:
            networks[net.id] = net
    # Sorted by key: flood actions list local ports in this order, and cookies
    # must not depend on the order the graph happened to load them in.
    local = sorted(
        (p for p in bound if p.admin_state_up and p.ofport_name in ofports and p.network_id in networks),
        key=lambda p: p.key,
    )
    return HypervisorView(hv, ofports, local, networks)


def nd_responder(graph: TopologyGraph, view: HypervisorView, net: Network) -> list[Flow]:
    """The network's IPv6 Neighbour Discovery answers (see :mod:`flows.nd`)."""
    from flows.nd import nd_flows

    return nd_flows(graph, view, net)


def compile_hypervisor(graph: TopologyGraph, hv_name: str) -> list[Flow]:
    """Return every flow the integration bridge of ``hv_name`` must hold."""
    view = view_of(graph, hv_name)
    if view is None:
        return []
    # Imported here: these build on this module's L2 helpers.
    from flows.nat import EXT_IN_FIP, local_fips, nat_flows
    from flows.routing import routing_flows

    fips = local_fips(graph, view)
    fip_networks = {f.ext.id for f in fips}
    flows: list[Flow] = []
    flows += _default_flows()
    flows += _classify_local_ports(view)
    for net in view.networks.values():
        flows += classify_from_fabric(view, net, EXT_IN_FIP if net.id in fip_networks else L2_LOOKUP)
        flows += _arp_responder(graph, view, net)
        flows += nd_responder(graph, view, net)
        flows += _l2_lookup(graph, view, net)
    flows += _deliver(view)
    flows += security_flows(graph, view)
    flows += routing_flows(graph, view)
    flows += nat_flows(view, fips)
    return flows


def security_flows(graph: TopologyGraph, view: HypervisorView) -> list[Flow]:
    """Port security and security groups of the local ports (see :mod:`flows.portsec`, :mod:`flows.acl`)."""
    from flows.acl import acl_flows
    from flows.portsec import port_security_flows

    return port_security_flows(view.local_ports) + acl_flows(graph, view.local_ports)


def _default_flows() -> list[Flow]:
    return [
        make_flow(CLASSIFY, "drop", {}, description="unknown in_port: drop"),
        make_flow(ARP_RSP, "default", {}, goto=ND_RSP, description="not for the ARP responder"),
        make_flow(ND_RSP, "default", {}, goto=L2_LOOKUP, description="not for the ND responder"),
        make_flow(ND_TLL, "drop", {}, description="not an answer of ours: drop"),
        make_flow(L2_LOOKUP, "drop", {}, description="no logical network: drop"),
        make_flow(DELIVER, "drop", {}, description="no logical out-port: drop"),
        make_flow(EXT_IN_FIP, "default", {}, goto=L2_LOOKUP, description="not for a floating IP here"),
        make_flow(FIP_SNAT, "drop", {}, description="no floating IP: no external access (fixed IPs stay inside)"),
        make_flow(EXT_RESOLVE, "drop", {}, description="no external network here: drop"),
        make_flow(MAC_BINDING, "default", {}, description="neighbour not learned: eth_dst stays unset"),
        make_flow(EXT_OUTPUT, "drop", {}, description="no external network here: drop"),
    ]


def _classify_local_ports(view: HypervisorView) -> Iterator[Flow]:
    for port in view.local_ports:
        net = view.networks[port.network_id]
        # Untagged only: a guest's own 802.1Q tag must never reach a provider
        # network, where it would land the frame in another tenant's VLAN.
        yield make_flow(
            CLASSIFY, "vm_port",
            {"in_port": view.ofports[port.ofport_name], "vlan_vid": OFPVID_NONE},
            [SetField(REG_NETWORK, net.key), SetField(REG_INPORT, port.key)],
            goto=PORT_SEC,
            description=f"from port {port.id} into network {net.id}",
        )


def classify_from_fabric(view: HypervisorView, net: Network, goto: Stage = L2_LOOKUP) -> Iterator[Flow]:
    """Packets of ``net`` arriving from other hypervisors (tunnel) or the provider network.

    An external network's frames go to ``ext_in_fip`` first where floating IPs are hosted.
    """
    mark = [SetField(REG_NETWORK, net.key), SetField(REG_FLAGS, FLAG_FROM_REMOTE)]
    if net.network_type in OVERLAY_TYPES:
        tun = view.ofports.get(TUNNEL_PORT_NAMES[net.network_type])
        if tun is None:
            return
        yield make_flow(
            CLASSIFY, "tunnel",
            {"in_port": tun, "tunnel_id": net.segmentation_id},
            mark, goto=L2_LOOKUP,
            description=f"{net.network_type} VNI {net.segmentation_id} into network {net.id}",
        )
        return
    patch = view.ofports.get(provider_patch_name(net.physical_network or ""))
    if patch is None:
        return
    if net.network_type == "vlan":
        match = {"in_port": patch, "vlan_vid": OFPVID_PRESENT | net.segmentation_id}
        actions = [PopVlan(), *mark]
    else:
        match = {"in_port": patch, "vlan_vid": OFPVID_NONE}
        actions = mark
    yield make_flow(
        CLASSIFY, "provider", match, actions, goto=goto,
        description=f"{net.network_type} {net.physical_network}:{net.segmentation_id} into network {net.id}",
    )


def _ipv4s(port: Port) -> Iterator[str]:
    for fip in port.fixed_ips:
        if ":" not in fip.ip_address:
            yield fip.ip_address


def _arp_responder(graph: TopologyGraph, view: HypervisorView, net: Network) -> Iterator[Flow]:
    local_keys = {p.id for p in view.local_ports}
    for port in graph.ports_of(net.id):
        for ip in _ipv4s(port):
            match = {REG_NETWORK: net.key, "eth_type": ETH_TYPE_ARP, "arp_op": ARP_REQUEST, "arp_tpa": ip}
            if port.id in local_keys:
                yield make_flow(
                    ARP_RSP, "own_address", {**match, REG_INPORT: port.key}, goto=ND_RSP,
                    description=f"port {port.id} asks for its own {ip}: let it through",
                )
            yield make_flow(
                ARP_RSP, "answer", match, arp_reply(port.mac_address, ip),
                description=f"answer ARP who-has {ip} with {port.mac_address} (port {port.id})",
            )


def arp_reply(mac: str, ip: str, out: list | None = None) -> list:
    """Turn an ARP request into the reply, in place, and send it back (``out``; default: out of in_port)."""
    return [
        RegMove("eth_src", "eth_dst", 48),
        SetField("eth_src", mac),
        SetField("arp_op", ARP_REPLY),
        RegMove("arp_sha", "arp_tha", 48),
        SetField("arp_sha", mac),
        RegMove("arp_spa", "arp_tpa", 32),
        SetField("arp_spa", ip),
        *(out if out is not None else [Output(IN_PORT)]),
    ]


def to_fabric(view: HypervisorView, graph: TopologyGraph, net: Network, hv_name: str) -> list | None:
    """Actions that carry a frame of ``net`` to hypervisor ``hv_name`` (None: unreachable)."""
    if net.network_type in OVERLAY_TYPES:
        tun = view.ofports.get(TUNNEL_PORT_NAMES[net.network_type])
        remote = graph.hypervisor(hv_name)
        if tun is None or remote is None:
            return None
        return [SetField("tunnel_id", net.segmentation_id), SetField("tun_ipv4_dst", remote.tunnel_ip), Output(tun)]
    return to_provider(view, net)


def to_provider(view: HypervisorView, net: Network) -> list | None:
    patch = view.ofports.get(provider_patch_name(net.physical_network or ""))
    if patch is None:
        return None
    if net.network_type == "vlan":
        return [PushVlan(), SetField("vlan_vid", OFPVID_PRESENT | net.segmentation_id), Output(patch)]
    return [Output(patch)]


def _l2_lookup(graph: TopologyGraph, view: HypervisorView, net: Network) -> Iterator[Flow]:
    yield from l2_unicast(graph, view, net)
    local_copies: list = []
    for port in view.local_ports:
        if port.network_id == net.id:
            local_copies += [SetField(REG_OUTPORT, port.key), Resubmit(OUT_PRE_ACL.name)]
    yield make_flow(
        L2_LOOKUP, "flood_from_remote", {REG_NETWORK: net.key, REG_FLAGS: (FLAG_FROM_REMOTE, FLAG_FROM_REMOTE)},
        local_copies, description=f"flood from the fabric in network {net.id}: local ports only",
    )
    yield make_flow(
        L2_LOOKUP, "flood", {REG_NETWORK: net.key}, local_copies + _flood_to_fabric(graph, view, net),
        description=f"flood in network {net.id}: local ports and each hypervisor hosting it",
    )


def l2_unicast(graph: TopologyGraph, view: HypervisorView, net: Network) -> Iterator[Flow]:
    """Known unicast MACs of ``net``: to the local port, or straight to the hosting hypervisor."""
    local_ids = {p.id for p in view.local_ports}
    here = view.hv.name
    for port in graph.ports_of(net.id):
        match = {REG_NETWORK: net.key, "eth_dst": port.mac_address}
        if port.id in local_ids:
            yield make_flow(
                L2_LOOKUP, "unicast", match, [SetField(REG_OUTPORT, port.key)], goto=OUT_PRE_ACL,
                description=f"{port.mac_address} is local port {port.id}",
            )
        elif port.binding_host and port.binding_host != here:
            actions = to_fabric(view, graph, net, port.binding_host)
            if actions:
                yield make_flow(
                    L2_LOOKUP, "unicast", {**match, REG_FLAGS: (0, FLAG_FROM_REMOTE)}, actions,
                    description=f"{port.mac_address} is port {port.id} on {port.binding_host}",
                )


def _flood_to_fabric(graph: TopologyGraph, view: HypervisorView, net: Network) -> list:
    if net.network_type not in OVERLAY_TYPES:
        return to_provider(view, net) or []
    actions: list = []
    for hv_name in sorted(graph.hypervisors_of(net.id) - {view.hv.name}):
        actions += to_fabric(view, graph, net, hv_name) or []
    return actions


def _deliver(view: HypervisorView) -> Iterator[Flow]:
    for port in view.local_ports:
        yield make_flow(
            DELIVER, "deliver", {REG_OUTPORT: port.key}, [Output(view.ofports[port.ofport_name])],
            description=f"to port {port.id}",
        )
