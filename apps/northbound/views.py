"""Records -> Neutron-shaped JSON dicts, with Neutron's attribute names and defaults.

Called with the topology lock held (a network's view lists its subnets from the
graph); the result is plain data, safe to serialise after the lock is released.
"""

from __future__ import annotations

from typing import Any

from topology.graph import TopologyGraph
from topology.model import Hypervisor, Network, Port, Subnet


def _common(record: Network | Subnet | Port) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.attrs.get("name", ""),
        "description": record.attrs.get("description", ""),
        "project_id": record.project_id,
        "tenant_id": record.project_id,
        "created_at": record.attrs.get("created_at"),
        "updated_at": record.attrs.get("updated_at"),
    }


def network(graph: TopologyGraph, net: Network) -> dict[str, Any]:
    """A network as Neutron shows it (with the provider extension)."""
    return {
        **_common(net),
        "admin_state_up": net.admin_state_up,
        "status": "ACTIVE",
        "subnets": [s.id for s in graph.subnets_of(net.id)],
        "mtu": net.mtu,
        "shared": net.attrs.get("shared", False),
        "router:external": net.attrs.get("router:external", False),
        "port_security_enabled": net.attrs.get("port_security_enabled", True),
        "provider:network_type": net.network_type,
        "provider:physical_network": net.physical_network,
        "provider:segmentation_id": net.segmentation_id,
    }


def subnet(graph: TopologyGraph, sub: Subnet) -> dict[str, Any]:
    """A subnet as Neutron shows it."""
    return {
        **_common(sub),
        "network_id": sub.network_id,
        "cidr": sub.cidr,
        "ip_version": sub.ip_version,
        "gateway_ip": sub.gateway_ip,
        "allocation_pools": [{"start": s, "end": e} for s, e in sub.allocation_pools],
        "enable_dhcp": sub.enable_dhcp,
        "dns_nameservers": sub.attrs.get("dns_nameservers", []),
        "host_routes": sub.attrs.get("host_routes", []),
        "ipv6_ra_mode": sub.attrs.get("ipv6_ra_mode"),
        "ipv6_address_mode": sub.attrs.get("ipv6_address_mode"),
        "subnetpool_id": None,
    }


def port(graph: TopologyGraph, p: Port) -> dict[str, Any]:
    """A port as Neutron shows it (with the port binding extension)."""
    bound = p.binding_host is not None
    return {
        **_common(p),
        "network_id": p.network_id,
        "admin_state_up": p.admin_state_up,
        "status": p.attrs.get("status", "DOWN"),
        "mac_address": p.mac_address,
        "fixed_ips": [{"subnet_id": f.subnet_id, "ip_address": f.ip_address} for f in p.fixed_ips],
        "device_owner": p.device_owner,
        "device_id": p.device_id,
        "security_groups": p.attrs.get("security_groups", []),
        "port_security_enabled": p.attrs.get("port_security_enabled", True),
        "allowed_address_pairs": p.attrs.get("allowed_address_pairs", []),
        "extra_dhcp_opts": p.attrs.get("extra_dhcp_opts", []),
        "binding:host_id": p.binding_host or "",
        "binding:vnic_type": p.attrs.get("binding:vnic_type", "normal"),
        "binding:profile": p.attrs.get("binding:profile", {}),
        "binding:vif_type": "ovs" if bound else "unbound",
        "binding:vif_details": {"port_filter": False, "ovs_hybrid_plug": False} if bound else {},
    }


def hypervisor(graph: TopologyGraph, hv: Hypervisor) -> dict[str, Any]:
    """A hypervisor (our extension): its id is its name; ``connected`` when its switch reported ports."""
    return {
        "id": hv.name,
        "name": hv.name,
        "description": hv.attrs.get("description", ""),
        "datapath_id": f"{hv.datapath_id:016x}",
        "tunnel_ip": hv.tunnel_ip,
        "bridge_mappings": dict(hv.bridge_mappings),
        "gateway_for": list(hv.gateway_for),
        "connected": graph.connected(hv.name),
        "created_at": hv.attrs.get("created_at"),
        "updated_at": hv.attrs.get("updated_at"),
    }
