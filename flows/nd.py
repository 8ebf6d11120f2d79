"""IPv6 Neighbour Discovery answered from the flows (no packet-in, no agent).

An NS for a known port's address is rewritten in place into the NA, in two
tables because of how OVS checks prerequisites: ``nd_tll`` may only be set on a
packet that matches as an advertisement, so ``ls_in_nd_rsp`` turns the
solicitation into an advertisement (type 136, addresses swapped, flags, option
type 2) and resubmits to ``ls_in_nd_rsp_tll``, which matches it as one, sets the
target link-layer address and sends it back out of the in_port. OVS fixes the
ICMPv6 checksum for every field it rewrites.
"""

from __future__ import annotations

from collections.abc import Iterator

import netaddr

from flows.flow import IN_PORT, Flow, Output, RegMove, Resubmit, SetField, make_flow
from flows.l2 import answered_here
from flows.pipeline import REG_INPORT, REG_NETWORK, stage
from flows.shared import shared_flow
from topology.graph import TopologyGraph
from topology.model import Network, Port

ND_RSP = stage("ls_in_nd_rsp")
ND_TLL = stage("ls_in_nd_rsp_tll")
L2_LOOKUP = stage("ls_in_l2_lookup")

ETH_IPV6, ICMPV6 = 0x86DD, 58
NS, NA = 135, 136
FLAG_ROUTER, FLAG_SOLICITED, FLAG_OVERRIDE = 0x80000000, 0x40000000, 0x20000000
OPTION_TLL = 2


def _ipv6s(port: Port) -> Iterator[str]:
    for fixed in port.fixed_ips:
        if ":" in fixed.ip_address:
            yield str(netaddr.IPAddress(fixed.ip_address))


def nd_flows(graph: TopologyGraph, view, net: Network) -> Iterator[Flow]:
    """Answer NS for every IPv6 address of the network's ports; let DAD and self-queries through."""
    local = {p.id for p in view.local_ports}
    dad = shared_flow(("nd_dad", net.key), _dad, net)
    any_v6 = False
    for port in graph.ports_of(net.id):
        if not answered_here(net, port, view.hv.name):
            continue
        for flow in nd_port(net, port, port.id in local):
            if flow is dad:
                any_v6 = True  # one per network, however many ports have IPv6 addresses
            else:
                yield flow
    if any_v6:
        yield dad


def nd_port(net: Network, port: Port, local: bool) -> Iterator[Flow]:
    """One port's NS answers (and own-address pass for a local port), plus the network's DAD pass if it has IPv6."""
    ns = {REG_NETWORK: net.key, "eth_type": ETH_IPV6, "ip_proto": ICMPV6, "icmpv6_type": NS}
    router = port.device_owner.startswith("network:router")
    flags = FLAG_SOLICITED | FLAG_OVERRIDE | (FLAG_ROUTER if router else 0)
    any_v6 = False
    for ip in _ipv6s(port):
        any_v6 = True
        if local:
            yield make_flow(
                ND_RSP, "own_address", {**ns, "ipv6_nd_target": ip, REG_INPORT: port.key}, goto=L2_LOOKUP,
                description=f"port {port.id} asks for its own {ip}: let it through",
            )
        yield from shared_flow(("nd_answer", net.key, ip, port.mac_address, port.id, flags),
                               _answer, net, port, ip, flags)
    if any_v6:
        yield shared_flow(("nd_dad", net.key), _dad, net)


def _dad(net: Network) -> Flow:
    ns = {REG_NETWORK: net.key, "eth_type": ETH_IPV6, "ip_proto": ICMPV6, "icmpv6_type": NS}
    return make_flow(
        ND_RSP, "dad", {**ns, "ipv6_src": "::"}, goto=L2_LOOKUP,
        description=f"duplicate address detection in network {net.id}: never answered from the flows",
    )


def _answer(net: Network, port: Port, ip: str, flags: int) -> tuple[Flow, Flow]:
    """The two flows answering an NS for ``ip`` (shared by every hypervisor hosting the network)."""
    ns = {REG_NETWORK: net.key, "eth_type": ETH_IPV6, "ip_proto": ICMPV6, "icmpv6_type": NS}
    return (
        make_flow(
            ND_RSP, "answer", {**ns, "ipv6_nd_target": ip},
            [SetField("icmpv6_type", NA), RegMove("eth_src", "eth_dst", 48), SetField("eth_src", port.mac_address),
             RegMove("ipv6_src", "ipv6_dst", 128), SetField("ipv6_src", ip), SetField("nd_reserved", flags),
             SetField("nd_options_type", OPTION_TLL), Resubmit(ND_TLL.name)],
            description=f"answer NS who-has {ip} with {port.mac_address} (port {port.id})",
        ),
        make_flow(
            ND_TLL, "answer",
            {REG_NETWORK: net.key, "eth_type": ETH_IPV6, "ip_proto": ICMPV6, "icmpv6_type": NA,
             "ipv6_nd_target": ip},
            [SetField("ipv6_nd_tll", port.mac_address), Output(IN_PORT)],
            description=f"NA for {ip}: target link-layer address {port.mac_address}, back to the asker",
        ),
    )
