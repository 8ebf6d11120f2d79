"""What one hypervisor's compilation needs, gathered once from the graph."""

from __future__ import annotations

from dataclasses import dataclass

from topology.graph import TopologyGraph
from topology.model import Hypervisor, Network, Port


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
