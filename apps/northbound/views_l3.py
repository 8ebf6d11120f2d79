"""Routers, floating IPs, security groups and rules -> Neutron-shaped JSON (see :mod:`apps.northbound.views`)."""

from __future__ import annotations

from typing import Any

from topology import graph_l3
from topology.graph import TopologyGraph
from topology.model_l3 import FloatingIP, Router, SecurityGroup, SecurityGroupRule


def _common(record: Router | FloatingIP | SecurityGroup | SecurityGroupRule) -> dict[str, Any]:
    return {"id": record.id, "project_id": record.project_id, "tenant_id": record.project_id}


def _stamps(record: Any) -> dict[str, Any]:
    return {"created_at": record.attrs.get("created_at"), "updated_at": record.attrs.get("updated_at")}


def router(graph: TopologyGraph, r: Router) -> dict[str, Any]:
    """A router as Neutron shows it (router, extraroute and ext-gw-mode extensions)."""
    gateway = None
    if r.gw_network_id:
        port = graph.port(r.gw_port_id) if r.gw_port_id else None
        gateway = {"network_id": r.gw_network_id, "enable_snat": r.enable_snat,
                   "external_fixed_ips": [{"subnet_id": f.subnet_id, "ip_address": f.ip_address}
                                          for f in (port.fixed_ips if port else ())]}
    return {
        **_common(r),
        "name": r.attrs.get("name", ""),
        "description": r.attrs.get("description", ""),
        "admin_state_up": r.admin_state_up,
        "status": "ACTIVE",
        "external_gateway_info": gateway,
        "routes": [{"destination": d, "nexthop": h} for d, h in r.routes],
        "gateway_hypervisors": list(r.gateway_hosts),
        # The first of them whose bridge is connected: the switches decide by BFD, this is what they pick
        # while the controller and the gateway agree on who is reachable.
        "active_gateway_hypervisor": next((h for h in r.gateway_hosts if graph.connected(h)), None),
        **_stamps(r),
    }


def floatingip(graph: TopologyGraph, f: FloatingIP) -> dict[str, Any]:
    """A floating IP as Neutron shows it: ACTIVE while associated, DOWN otherwise."""
    return {
        **_common(f),
        "description": f.attrs.get("description", ""),
        "floating_network_id": f.floating_network_id,
        "floating_ip_address": f.floating_ip_address,
        "port_id": f.port_id,
        "fixed_ip_address": f.fixed_ip_address,
        "router_id": f.router_id,
        "status": "ACTIVE" if f.port_id else "DOWN",
        **_stamps(f),
    }


def security_group_rule(graph: TopologyGraph, r: SecurityGroupRule) -> dict[str, Any]:
    """A security group rule as Neutron shows it."""
    return {
        **_common(r),
        "description": r.attrs.get("description", ""),
        "security_group_id": r.security_group_id,
        "direction": r.direction,
        "ethertype": r.ethertype,
        "protocol": r.protocol,
        "port_range_min": r.port_range_min,
        "port_range_max": r.port_range_max,
        "remote_ip_prefix": r.remote_ip_prefix,
        "remote_group_id": r.remote_group_id,
        **_stamps(r),
    }


def security_group(graph: TopologyGraph, sg: SecurityGroup) -> dict[str, Any]:
    """A security group as Neutron shows it, with its rules."""
    return {
        **_common(sg),
        "name": sg.name,
        "description": sg.attrs.get("description", ""),
        "stateful": sg.stateful,
        "security_group_rules": [security_group_rule(graph, r) for r in graph_l3.sg_rules(graph, sg.id)],
        **_stamps(sg),
    }
