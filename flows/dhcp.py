"""``ls_in_dhcp``: the DHCP (IPv4) requests the controller answers.

A local port with an address on a subnet whose ``enable_dhcp`` is true has one flow
here: its DHCP client messages (UDP 68 -> 67, broadcast or unicast renewals alike) go
to the controller (:mod:`controller.dhcp` answers them, back out of the port). Nothing
is flooded, so no other port, local or remote, ever sees a tenant's request. A port
whose subnets all have DHCP off has no flow: its requests go on through the security
groups to the network like any broadcast, where a tenant's own server may answer (as
in Neutron). Everything else passes on to ``ls_in_pre_acl``.
"""

from __future__ import annotations

from flows.flow import CONTROLLER, Flow, Output, make_flow
from flows.pipeline import REG_INPORT
from flows.stages import DHCP, PRE_ACL
from flows.view import HypervisorView
from topology.graph import TopologyGraph
from topology.model import Port, Subnet

ETH_IPV4, UDP = 0x0800, 17
DHCP_SERVER_PORT, DHCP_CLIENT_PORT = 67, 68


def dhcp_default() -> list[Flow]:
    """The stage's fall-through (part of every hypervisor's base flows)."""
    return [make_flow(DHCP, "default", {}, goto=PRE_ACL, description="not a DHCP request answered here: on")]


def served_subnet(graph: TopologyGraph, port: Port) -> tuple[Subnet, str] | None:
    """The subnet (with DHCP on) and address a port is offered: its first such IPv4 fixed IP."""
    for fixed in port.fixed_ips:
        subnet = graph.subnet(fixed.subnet_id)
        if subnet is not None and subnet.ip_version == 4 and subnet.enable_dhcp:
            return subnet, fixed.ip_address
    return None


def dhcp_port(graph: TopologyGraph, port: Port) -> list[Flow]:
    """A local port's flow: its DHCP requests to the controller, if one of its subnets serves DHCP."""
    served = served_subnet(graph, port)
    if served is None:
        return []
    match = {REG_INPORT: port.key, "eth_type": ETH_IPV4, "ip_proto": UDP, "udp_src": DHCP_CLIENT_PORT,
             "udp_dst": DHCP_SERVER_PORT}
    return [make_flow(DHCP, "request", match, [Output(CONTROLLER)],
                      description=f"port {port.id}: DHCP request: the controller answers ({served[1]})")]


def dhcp_flows(graph: TopologyGraph, view: HypervisorView) -> list[Flow]:
    """Every ``ls_in_dhcp`` flow of a hypervisor (the full compile's)."""
    return [*dhcp_default(), *(f for port in view.local_ports for f in dhcp_port(graph, port))]
