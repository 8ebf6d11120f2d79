"""Gateway hypervisors: the tunnels with BFD that reach them, and the routers scheduled on them.

A hypervisor registered with ``gateway_for`` (physical network names) may carry the
source NAT of routers whose external network is on one of those physical networks.
Each such router holds an ordered list of gateway hypervisors (its schedule, stored
with the router); the first live one is active.

Every hypervisor that may need a gateway reaches each gateway through a tunnel port of
its own (:func:`tunnel_ports`): VXLAN on :data:`GATEWAY_UDP_PORT`, not the overlay's
4789, so these ports carry only traffic to and from gateways and the overlay's
flow-based port keeps everything else; with BFD on, so that the port is live only
while the gateway answers, which is what the switches' fast-failover groups watch
(:mod:`flows.gateway`). A gateway has such a port to every other hypervisor (BFD
needs both ends, and a standby gateway watches the ones before it). The controller
creates and removes these ports itself, as each hypervisor's OVSDB manager
(:mod:`controller.ovsdb`); nothing here touches a switch.
"""

from __future__ import annotations

from dataclasses import dataclass

import netaddr

from topology.graph import TopologyGraph
from topology.model import Hypervisor

GATEWAY_UDP_PORT = 4790
"""UDP destination port of the gateway tunnels (the overlay's VXLAN uses 4789)."""

GATEWAY_PORT_PREFIX = "tg-"
"""Names of the gateway tunnel ports: ``tg-`` + the remote tunnel IPv4 address in hex. The
controller owns every port so named on br-int and no other."""


@dataclass(frozen=True)
class BfdTimers:
    """BFD timers of the gateway tunnels, in milliseconds.

    OVS declares a session down after 3 intervals without a packet (its multiplier is
    fixed at 3): the defaults detect a dead gateway in about 300 ms.
    """

    min_tx: int = 100
    min_rx: int = 100
    decay_min_rx: int = 0  # 0: no decay (an idle session keeps its fast timers)


def gateway_tunnel_name(tunnel_ip: str) -> str:
    """The name of the port reaching the hypervisor at ``tunnel_ip``: ``tg-0a000002`` for 10.0.0.2."""
    return f"{GATEWAY_PORT_PREFIX}{int(netaddr.IPAddress(tunnel_ip)):08x}"


def is_gateway(hv: Hypervisor) -> bool:
    """Whether the hypervisor is a gateway for any physical network."""
    return bool(hv.gateway_for)


def tunnel_peers(graph: TopologyGraph, hv_name: str) -> list[Hypervisor]:
    """The hypervisors ``hv_name`` has a gateway tunnel to, by name.

    A gateway reaches every other hypervisor; any other hypervisor reaches every gateway.
    """
    me = graph.hypervisor(hv_name)
    if me is None:
        return []
    others = [hv for hv in graph.hypervisors() if hv.name != hv_name and hv.tunnel_ip != me.tunnel_ip]
    if not is_gateway(me):
        others = [hv for hv in others if is_gateway(hv)]
    return sorted(others, key=lambda hv: hv.name)


def tunnel_ports(graph: TopologyGraph, hv_name: str, timers: BfdTimers = BfdTimers()) -> dict[str, dict[str, str]]:
    """The gateway tunnel ports ``hv_name``'s br-int must have: port name -> its Interface columns.

    Each value maps ``type`` to the interface type and ``options:<key>`` / ``bfd:<key>``
    to the entries of those map columns (as ``ovs-vsctl`` would set them).
    """
    me = graph.hypervisor(hv_name)
    if me is None:
        return {}
    ports = {}
    for peer in tunnel_peers(graph, hv_name):
        ports[gateway_tunnel_name(peer.tunnel_ip)] = {
            "type": "vxlan",
            "options:remote_ip": peer.tunnel_ip,
            "options:local_ip": me.tunnel_ip,
            "options:key": "flow",
            "options:dst_port": str(GATEWAY_UDP_PORT),
            "bfd:enable": "true",
            "bfd:min_tx": str(timers.min_tx),
            "bfd:min_rx": str(timers.min_rx),
            "bfd:decay_min_rx": str(timers.decay_min_rx),
        }
    return ports
