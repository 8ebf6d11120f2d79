"""``ls_in_dhcp``: the DHCP (IPv4 and IPv6) requests and router solicitations the controller answers.

A local port with an address on a subnet whose ``enable_dhcp`` is true has one flow
here: its DHCP client messages (UDP 68 -> 67, broadcast or unicast renewals alike) go
to the controller (:mod:`controller.dhcp` answers them, back out of the port). Nothing
is flooded, so no other port, local or remote, ever sees a tenant's request. A port
whose subnets all have DHCP off has no flow: its requests go on through the security
groups to the network like any broadcast, where a tenant's own server may answer (as
in Neutron). A port with an address on an IPv6 subnet that has an ``ipv6_ra_mode`` sends its
router solicitations there too (:mod:`controller.ra` advertises the subnet's router); where
no mode is set an outside router may be the one advertising, so they go to the network.
A port on a subnet whose ``ipv6_address_mode`` is dhcpv6-stateful or -stateless sends its
DHCPv6 requests (UDP 546 -> 547) there (:mod:`controller.dhcp6`). Everything else passes on
to ``ls_in_pre_acl``.

The way up is metered on the switch, twice: each port's requests pass the port's own meter
(:func:`port_meter`, :data:`PORT_RATE` a second), then ``ls_in_punt``'s meter for the whole
hypervisor (:data:`HYPERVISOR_METER`). A VM flooding requests fills its own meter, which drops
the excess on its hypervisor; its neighbours keep theirs, and the controller receives at most the
hypervisor's rate from a hypervisor, whatever its VMs send.
"""

from __future__ import annotations

from flows.flow import CONTROLLER, Flow, Meter, Output, make_flow
from flows.pipeline import REG_INPORT
from flows.portsec import (
    DHCP6_CLIENT,
    DHCP6_SERVER,
    DHCP_CLIENT,
    DHCP_SERVER,
    ETH_IPV4,
    ETH_IPV6,
    ICMPV6,
    ROUTER_SOLICIT,
    UDP,
)
from flows.stages import DHCP, PRE_ACL, PUNT
from flows.view import HypervisorView
from topology.graph import TopologyGraph
from topology.graph_l3 import port_subnets
from topology.model import Port, Subnet

DHCP6_MODES = ("dhcpv6-stateful", "dhcpv6-stateless")

PORT_RATE, PORT_BURST = 10, 10
"""What one port may send the controller: requests a second, and a burst (a boot's few exchanges)."""
HYPERVISOR_METER = Meter("hypervisor: address assignment", 100, 50)
"""What one hypervisor's ports together may send the controller (ls_in_punt)."""


def port_meter(port: Port) -> Meter:
    """The meter of a port's DHCP, DHCPv6 and router solicitations (one per port: its scope names the port)."""
    return Meter(f"port {port.key}", PORT_RATE, PORT_BURST)


def dhcp_default() -> list[Flow]:
    """The stage's fall-through, and the way up to the controller (part of every hypervisor's base flows)."""
    return [make_flow(DHCP, "default", {}, goto=PRE_ACL, description="not a DHCP request answered here: on"),
            make_flow(PUNT, "controller", {}, [HYPERVISOR_METER, Output(CONTROLLER)],
                      description="a port's request that passed its own meter: through the hypervisor's, "
                      "to the controller")]


def served_subnet(graph: TopologyGraph, port: Port) -> tuple[Subnet, str] | None:
    """The subnet (with DHCP on) and address a port is offered: its first such IPv4 fixed IP."""
    for fixed in port.fixed_ips:
        subnet = graph.subnet(fixed.subnet_id)
        if subnet is not None and subnet.ip_version == 4 and subnet.enable_dhcp:
            return subnet, fixed.ip_address
    return None


def ra_subnets(graph: TopologyGraph, port: Port) -> list[Subnet]:
    """The IPv6 subnets of a port whose router advertisements the cloud sends (an ``ipv6_ra_mode``)."""
    return [s for s in port_subnets(graph, port) if s.ip_version == 6 and s.attrs.get("ipv6_ra_mode")]


def dhcp6_subnets(graph: TopologyGraph, port: Port) -> list[Subnet]:
    """The IPv6 subnets of a port whose DHCPv6 the cloud serves (``ipv6_address_mode`` dhcpv6-*)."""
    return [s for s in port_subnets(graph, port) if s.ip_version == 6
            and s.attrs.get("ipv6_address_mode") in DHCP6_MODES]


def dhcp_port(graph: TopologyGraph, port: Port) -> list[Flow]:
    """A local port's flows: its DHCP requests (and router solicitations) to the controller, where served."""
    flows = []
    meter = (port_meter(port),)
    served = served_subnet(graph, port)
    if served is not None:
        match = {REG_INPORT: port.key, "eth_type": ETH_IPV4, "ip_proto": UDP, "udp_src": DHCP_CLIENT,
                 "udp_dst": DHCP_SERVER}
        flows.append(make_flow(DHCP, "request", match, meter, PUNT,
                               description=f"port {port.id}: DHCP request: the controller answers ({served[1]})"))
    if dhcp6_subnets(graph, port):
        match = {REG_INPORT: port.key, "eth_type": ETH_IPV6, "ip_proto": UDP, "udp_src": DHCP6_CLIENT,
                 "udp_dst": DHCP6_SERVER}
        flows.append(make_flow(DHCP, "request", match, meter, PUNT,
                               description=f"port {port.id}: DHCPv6 request: the controller answers"))
    if ra_subnets(graph, port):
        match = {REG_INPORT: port.key, "eth_type": ETH_IPV6, "ip_proto": ICMPV6, "icmpv6_type": ROUTER_SOLICIT}
        flows.append(make_flow(DHCP, "router_solicit", match, meter, PUNT,
                               description=f"port {port.id}: router solicitation: the controller advertises"))
    return flows


def dhcp_flows(graph: TopologyGraph, view: HypervisorView) -> list[Flow]:
    """Every ``ls_in_dhcp`` flow of a hypervisor (the full compile's)."""
    return [*dhcp_default(), *(f for port in view.local_ports for f in dhcp_port(graph, port))]
