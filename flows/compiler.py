"""compile(graph, hypervisor) -> the flows that hypervisor's br-int must hold.

Pure: reads a :class:`topology.graph.TopologyGraph` and returns a list of
:class:`flows.flow.Flow`; never touches a switch, a socket or a file. Each
feature contributes the flows of its stages from a module of its own, and this
module only assembles them:

- :mod:`flows.l2`: classification, ARP responder, L2 lookup and flooding, delivery;
- :mod:`flows.nd`: IPv6 Neighbour Discovery answers;
- :mod:`flows.portsec`, :mod:`flows.acl`: port security and security groups;
- :mod:`flows.dhcp`: the DHCP requests the controller answers;
- :mod:`flows.routing`: distributed routing;
- :mod:`flows.nat`: floating IPs;
- :mod:`flows.gateway`: source NAT on the routers' gateway hypervisors;
- :mod:`flows.northsouth6`: IPv6 out of the routers' gateways, untranslated.

The stage handles they share are in :mod:`flows.stages`, the per-hypervisor
view in :mod:`flows.view`; no feature module imports this one.

Per-hypervisor flow count grows with what that hypervisor hosts (its ports, and
the ports of the networks it hosts), never with the size of the cloud.
"""

from __future__ import annotations

from flows.acl import acl_flows
from flows.dhcp import dhcp_flows
from flows.flow import Flow
from flows.gateway import gateway_externals, gateway_flows, snat_routers
from flows.l2 import arp_responder, classify_from_fabric, classify_local_ports, default_flows, deliver, l2_lookup
from flows.nat import local_fips, nat_flows
from flows.nd import nd_flows
from flows.northsouth6 import externals6, northsouth6_flows, routers6
from flows.portsec import port_security_flows
from flows.routing import routing_flows
from flows.stages import EXT_IN_FIP, L2_LOOKUP
from flows.view import HypervisorView, view_of
from topology.graph import TopologyGraph

__all__ = ["HypervisorView", "compile_hypervisor", "security_flows", "view_of"]


def compile_hypervisor(graph: TopologyGraph, hv_name: str) -> list[Flow]:
    """Return every flow the integration bridge of ``hv_name`` must hold."""
    view = view_of(graph, hv_name)
    if view is None:
        return []
    fips = local_fips(graph, view)
    snat, r6 = snat_routers(graph, view), routers6(graph, view)
    externals = gateway_externals(snat) + externals6(r6)
    fip_networks = {f.ext.id for f in fips} | {ext.id for ext, _ in externals}
    flows: list[Flow] = []
    flows += default_flows()
    flows += classify_local_ports(view)
    for net in view.networks.values():
        flows += classify_from_fabric(view, net, EXT_IN_FIP if net.id in fip_networks else L2_LOOKUP)
        flows += arp_responder(graph, view, net)
        flows += nd_flows(graph, view, net)
        flows += l2_lookup(graph, view, net)
    flows += deliver(view)
    flows += security_flows(graph, view)
    flows += dhcp_flows(graph, view)
    flows += routing_flows(graph, view)
    flows += nat_flows(view, fips, externals)
    flows += gateway_flows(view, snat)
    flows += northsouth6_flows(view, r6)
    return flows


def security_flows(graph: TopologyGraph, view: HypervisorView) -> list[Flow]:
    """Port security and security groups of the local ports (see :mod:`flows.portsec`, :mod:`flows.acl`)."""
    return port_security_flows(view.local_ports) + acl_flows(graph, view.local_ports)
