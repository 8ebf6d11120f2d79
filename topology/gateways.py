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
from topology.model import TUNNEL_PORT_NAMES, Hypervisor

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


def overlay_ports(hv: Hypervisor) -> dict[str, dict[str, str]]:
    """The overlay's flow-based tunnel ports ``hv``'s br-int must have (``tf-vxlan``, ``tf-geneve``,
    ``tf-gre``), in :func:`tunnel_ports`'s form: one port per overlay type serves every peer, the
    flows setting the VNI and the remote endpoint. None without a tunnel endpoint."""
    if not hv.tunnel_ip:
        return {}
    return {name: {"type": kind, "options:remote_ip": "flow", "options:key": "flow",
                   "options:local_ip": hv.tunnel_ip}
            for kind, name in TUNNEL_PORT_NAMES.items()}


# -- scheduling ------------------------------------------------------------------------------------
DEFAULT_GATEWAYS_PER_ROUTER = 2
SNAT_ZONES = (0x8000, 0xFFFF)
"""Conntrack zones of routers' source NAT: ports' zones are allocated from 1 up (topology.ctzones),
so a gateway hosting VMs keeps the two apart below 32,768 ports; each router's is unique (a zone
shared by two routers would merge their tenants' connections, overlapping addresses and all)."""


def free_snat_zone(graph: TopologyGraph) -> int | None:
    """The lowest SNAT zone no router holds (None: all 32,768 taken)."""
    used = {r.snat_zone for r in graph.records("router")}
    return next((z for z in range(SNAT_ZONES[0], SNAT_ZONES[1] + 1) if z not in used), None)


def candidates(graph: TopologyGraph, physnet: str | None) -> list[Hypervisor]:
    """The gateway hypervisors for ``physnet`` (that also map it to a provider bridge), by name."""
    if not physnet:
        return []
    return sorted((hv for hv in graph.hypervisors() if physnet in hv.gateway_for and physnet in hv.bridge_mappings),
                  key=lambda hv: hv.name)


def loads(graph: TopologyGraph) -> dict[str, tuple[int, int]]:
    """Each hypervisor's gateway load: (routers it is active for, routers it is listed for)."""
    out: dict[str, tuple[int, int]] = {}
    for router in graph.records("router"):
        for i, name in enumerate(router.gateway_hosts):
            active, listed = out.get(name, (0, 0))
            out[name] = (active + (i == 0), listed + 1)
    return out


def schedule(graph: TopologyGraph, physnet: str | None, count: int, keep: tuple[str, ...] = ()) -> tuple[str, ...]:
    """An ordered gateway list for a router on ``physnet``: ``keep`` (those still candidates), then the
    least-loaded candidates (fewest routers active on it, then fewest listed, then name) up to ``count``."""
    names = [hv.name for hv in candidates(graph, physnet)]
    chosen = [n for n in keep if n in names][:count]
    load = loads(graph)
    rest = sorted((n for n in names if n not in chosen), key=lambda n: (*load.get(n, (0, 0)), n))
    return tuple(chosen + rest[:max(0, count - len(chosen))])


def validate_hosts(graph: TopologyGraph, physnet: str | None, hosts: object) -> tuple[str, ...] | str:
    """An operator's gateway list, checked: the tuple, or what is wrong with it."""
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        return "gateway_hypervisors must be a list of hypervisor names"
    if len(set(hosts)) != len(hosts):
        return "gateway_hypervisors lists a hypervisor twice"
    allowed = {hv.name for hv in candidates(graph, physnet)}
    wrong = [h for h in hosts if h not in allowed]
    if wrong:
        return f"{', '.join(wrong)} is not a gateway hypervisor for physical network {physnet}"
    return tuple(hosts)
