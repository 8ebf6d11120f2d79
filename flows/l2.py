"""Logical switching: classification, the ARP responder, L2 lookup, flooding and delivery.

The flows of ``phy_classify``, ``ls_in_arp_rsp``, ``ls_in_l2_lookup`` and
``ls_out_deliver`` for one hypervisor, plus the pipeline's default flows. The
helpers that carry a frame to another hypervisor (:func:`to_fabric`,
:func:`to_provider`) and answer ARP (:func:`arp_reply`) are used by routing and
NAT too.
"""

from __future__ import annotations

from collections.abc import Iterator

from flows.flow import IN_PORT, Flow, Output, PopVlan, PushVlan, RegMove, Resubmit, SetField, make_flow
from flows.pipeline import FLAG_FROM_REMOTE, REG_FLAGS, REG_INPORT, REG_NETWORK, REG_OUTPORT, Stage
from flows.shared import shared_flow
from flows.stages import (
    ARP_REPLY,
    ARP_REQUEST,
    ARP_RSP,
    CLASSIFY,
    DELIVER,
    ETH_TYPE_ARP,
    EXT_IN_FIP,
    EXT_OUTPUT,
    EXT_RESOLVE,
    FIP_SNAT,
    L2_LOOKUP,
    MAC_BINDING,
    ND_RSP,
    ND_TLL,
    OFPVID_NONE,
    OFPVID_PRESENT,
    OUT_PRE_ACL,
    PORT_SEC,
)
from flows.view import HypervisorView
from topology.graph import TopologyGraph
from topology.model import OVERLAY_TYPES, TUNNEL_PORT_NAMES, Network, Port, provider_patch_name

MULTICAST_BIT = 0x010000000000  # the I/G bit of a MAC: set for broadcast and multicast


def default_flows() -> list[Flow]:
    """The lowest-priority flow of each switching and external stage: where a packet matching nothing goes."""
    return list(shared_flow(("default_flows",), _default_flows))


def _default_flows() -> tuple[Flow, ...]:
    return (
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
    )


def classify_local_ports(view: HypervisorView) -> Iterator[Flow]:
    """phy_classify for each plugged local port: its network and logical in-port."""
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


def arp_responder(graph: TopologyGraph, view: HypervisorView, net: Network) -> Iterator[Flow]:
    """ARP requests for the network's known IPv4 addresses, answered on the asker's hypervisor."""
    local_ids = {p.id for p in view.local_ports}
    for port in graph.ports_of(net.id):
        if answered_here(net, port, view.hv.name):
            yield from arp_port(net, port, port.id in local_ids)


def answered_here(net: Network, port: Port, here: str) -> bool:
    """Whether this hypervisor answers ARP and ND for ``port`` and holds a flow per port for it.

    On an overlay, for every port: no request ever needs to cross the fabric. On a provider
    (flat or VLAN) network only for the ports bound here or nowhere (router interfaces): a
    request for a port on another hypervisor goes out to the provider network like any
    broadcast and the port answers itself, so that a hypervisor's flows grow with what it
    hosts, not with the size of the provider network (20,000 ports on 1,000 hypervisors would
    otherwise be 40 million flows).
    """
    return net.network_type in OVERLAY_TYPES or not port.binding_host or port.binding_host == here


def arp_port(net: Network, port: Port, local: bool) -> Iterator[Flow]:
    """One port's ARP answers (and, for a local port, its own requests let through)."""
    for ip in _ipv4s(port):
        match = {REG_NETWORK: net.key, "eth_type": ETH_TYPE_ARP, "arp_op": ARP_REQUEST, "arp_tpa": ip}
        if local:
            yield make_flow(
                ARP_RSP, "own_address", {**match, REG_INPORT: port.key}, goto=ND_RSP,
                description=f"port {port.id} asks for its own {ip}: let it through",
            )
        yield shared_flow(("arp_answer", net.key, ip, port.mac_address, port.id), _arp_answer, match, port, ip)


def _arp_answer(match: dict, port: Port, ip: str) -> Flow:
    return make_flow(
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
    """Actions that send a frame of a provider network out of its patch port (None: no bridge mapping)."""
    patch = view.ofports.get(provider_patch_name(net.physical_network or ""))
    if patch is None:
        return None
    if net.network_type == "vlan":
        return [PushVlan(), SetField("vlan_vid", OFPVID_PRESENT | net.segmentation_id), Output(patch)]
    return [Output(patch)]


def l2_lookup(graph: TopologyGraph, view: HypervisorView, net: Network) -> Iterator[Flow]:
    """Known unicast MACs, then flooding (local ports, plus the fabric for frames of local ports)."""
    yield from l2_unicast(graph, view, net)
    yield from flood(graph, view, net)


def flood(graph: TopologyGraph, view: HypervisorView, net: Network) -> Iterator[Flow]:
    """Broadcast and unknown unicast of ``net``: local ports, and the fabric for frames of local ports."""
    local_copies: list = []
    for port in view.local_ports:
        if port.network_id == net.id:
            local_copies += [SetField(REG_OUTPORT, port.key), Resubmit(OUT_PRE_ACL.name)]
    yield make_flow(
        L2_LOOKUP, "flood_from_remote", {REG_NETWORK: net.key, REG_FLAGS: (FLAG_FROM_REMOTE, FLAG_FROM_REMOTE)},
        local_copies, description=f"flood from the fabric in network {net.id}: local ports only",
    )
    fabric, fabric_repr = _flood_to_fabric(graph, view, net)
    yield make_flow(
        L2_LOOKUP, "flood", {REG_NETWORK: net.key}, local_copies + fabric,
        description=f"flood in network {net.id}: local ports and each hypervisor hosting it",
        actions_repr="(" + ", ".join([*map(repr, local_copies), *fabric_repr]) + ")",
    )
    if net.network_type not in OVERLAY_TYPES:
        yield from _provider_unicast(view, net)


def _provider_unicast(view: HypervisorView, net: Network) -> Iterator[Flow]:
    """A provider network's unicast to MACs not on this hypervisor: out to it, or (from it) dropped."""
    unicast = (0, MULTICAST_BIT)
    out = to_provider(view, net)
    if out:
        yield make_flow(
            L2_LOOKUP, "provider_unicast", {REG_NETWORK: net.key, "eth_dst": unicast, REG_FLAGS: (0, FLAG_FROM_REMOTE)},
            out, description=f"unicast to a MAC not on this hypervisor: out to provider network {net.id}",
        )
    yield make_flow(
        L2_LOOKUP, "provider_unicast",
        {REG_NETWORK: net.key, "eth_dst": unicast, REG_FLAGS: (FLAG_FROM_REMOTE, FLAG_FROM_REMOTE)},
        description=f"unicast from provider network {net.id} to a MAC not here: drop (its switches flood "
        "what they have not learned)",
    )


def l2_unicast(graph: TopologyGraph, view: HypervisorView, net: Network) -> Iterator[Flow]:
    """Known unicast MACs of ``net``: to the local port, or straight to the hosting hypervisor."""
    local_ids = {p.id for p in view.local_ports}
    for port in graph.ports_of(net.id):
        yield from unicast_port(graph, view, net, port, port.id in local_ids)


def unicast_port(graph: TopologyGraph, view: HypervisorView, net: Network, port: Port, local: bool) -> Iterator[Flow]:
    """One port's unicast flow here: to the local port, or to the hypervisor it is bound to."""
    if local:
        yield make_flow(
            L2_LOOKUP, "unicast", {REG_NETWORK: net.key, "eth_dst": port.mac_address},
            [SetField(REG_OUTPORT, port.key)], goto=OUT_PRE_ACL,
            description=f"{port.mac_address} is local port {port.id}",
        )
    elif port.binding_host and port.binding_host != view.hv.name and net.network_type in OVERLAY_TYPES:
        flow = remote_unicast(graph, view, net, port)
        if flow is not None:
            yield flow


def remote_unicast(graph: TopologyGraph, view, net: Network, port: Port) -> Flow | None:
    """A remote port's unicast flow, shared by every hypervisor reaching it through the same port number."""
    if net.network_type in OVERLAY_TYPES:
        remote = graph.hypervisor(port.binding_host)
        via = (view.ofports.get(TUNNEL_PORT_NAMES[net.network_type]), remote.tunnel_ip if remote else None)
    else:
        via = (view.ofports.get(provider_patch_name(net.physical_network or "")), None)
    if via[0] is None:
        return None
    key = ("l2_remote", net.key, net.network_type, net.segmentation_id, port.mac_address, port.id,
           port.binding_host, via)
    return shared_flow(key, _build_remote_unicast, graph, view, net, port)


def _build_remote_unicast(graph: TopologyGraph, view, net: Network, port: Port) -> Flow | None:
    actions = to_fabric(view, graph, net, port.binding_host)
    if not actions:
        return None
    return make_flow(
        L2_LOOKUP, "unicast", {REG_NETWORK: net.key, "eth_dst": port.mac_address, REG_FLAGS: (0, FLAG_FROM_REMOTE)},
        actions, description=f"{port.mac_address} is port {port.id} on {port.binding_host}",
    )


def _flood_to_fabric(graph: TopologyGraph, view: HypervisorView, net: Network) -> tuple[list, list[str]]:
    """The flood's copies to the fabric, and each copy's rendering (for the flow's cookie)."""
    if net.network_type not in OVERLAY_TYPES:
        actions = to_provider(view, net) or []
        return actions, [repr(a) for a in actions]
    tun = view.ofports.get(TUNNEL_PORT_NAMES[net.network_type])
    if tun is None:
        return [], []
    hosts = graph.network_index(net.id).sorted_hosts()
    # The copies to every host of the network are the same list on each of them but for
    # their own: built once per (hosts, tunnel port, hypervisor records), then filtered.
    key = ("flood_copies", net.network_type, net.segmentation_id, tun, hosts, graph.hv_generation)
    copies: _FloodCopies = shared_flow(key, _copies_to_hosts, graph, view, net, hosts)
    return copies.without(view.hv.name)


class _FloodCopies:
    """The copies of a flood to each host of a network, laid end to end, and each copy's rendering.

    Every host's flood holds all of them but its own: cut out by slicing (C copies), where picking
    them one by one cost more than the rest of the network's flows.
    """

    __slots__ = ("actions", "bounds", "index", "texts")

    def __init__(self, copies: list[tuple[str, tuple, str]]) -> None:
        self.actions = tuple(a for _, triple, _ in copies for a in triple)
        self.texts = [text for _, _, text in copies]
        self.index = {host: i for i, (host, _, _) in enumerate(copies)}
        self.bounds = [0]
        for _, triple, _ in copies:
            self.bounds.append(self.bounds[-1] + len(triple))

    def without(self, host: str) -> tuple[list, list[str]]:
        """The copies (actions, renderings) but ``host``'s."""
        i = self.index.get(host)
        if i is None:
            return list(self.actions), list(self.texts)
        start, end = self.bounds[i], self.bounds[i + 1]
        return [*self.actions[:start], *self.actions[end:]], self.texts[:i] + self.texts[i + 1:]


def _copies_to_hosts(graph: TopologyGraph, view: HypervisorView, net: Network, hosts: tuple[str, ...]) -> _FloodCopies:
    out = []
    for host in hosts:
        triple = to_fabric(view, graph, net, host)
        if triple:
            out.append((host, tuple(triple), ", ".join(map(repr, triple))))
    return _FloodCopies(out)


def deliver(view: HypervisorView) -> Iterator[Flow]:
    """ls_out_deliver: the logical out-port to its OpenFlow port."""
    for port in view.local_ports:
        yield make_flow(
            DELIVER, "deliver", {REG_OUTPORT: port.key}, [Output(view.ofports[port.ofport_name])],
            description=f"to port {port.id}",
        )
