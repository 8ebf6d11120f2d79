"""Conntrack zones of bound ports: what keeps two ports' connection state apart on a hypervisor.

A port's zone (16 bits; zone 0, OVS's default, is never used) is allocated when the
port is bound to a host, as the lowest zone no other port bound there holds, and
stored with the port (in its attrs, under :data:`CT_ZONE_ATTR`; the API does not show
it). It never changes while the port stays on that host: changing it would cut
every connection the port has. Unbinding the port releases it. The flow compiler
(:func:`flows.acl.ct_zones`) reads it.
"""

from __future__ import annotations

from dataclasses import replace

from topology.graph import TopologyGraph
from topology.model import Port
from topology.store import Unavailable

CT_ZONE_ATTR = "ct_zone"
ZONE_MIN, ZONE_MAX = 1, 0xFFFF


def stored_zone(port: Port | None) -> int | None:
    """The zone stored with a port (None: none)."""
    zone = port.attrs.get(CT_ZONE_ATTR) if port is not None else None
    return zone if isinstance(zone, int) and not isinstance(zone, bool) and ZONE_MIN <= zone <= ZONE_MAX else None


def with_ct_zone(graph: TopologyGraph, port: Port, old: Port | None) -> Port:
    """The port with its zone: kept while it stays bound to the same host, a new one on a new host, none unbound."""
    attrs = {k: v for k, v in port.attrs.items() if k != CT_ZONE_ATTR}
    host = port.binding_host
    if not host:
        return replace(port, attrs=attrs)
    kept = stored_zone(old) if old is not None and old.binding_host == host else None
    if kept is None:
        used = {stored_zone(p) for p in graph.ports_on(host) if p.id != port.id}
        kept = next((z for z in range(ZONE_MIN, ZONE_MAX + 1) if z not in used), None)
        if kept is None:
            raise Unavailable("ConntrackZonesExhausted", f"No conntrack zone is free on host {host}.")
    return replace(port, attrs={**attrs, CT_ZONE_ATTR: kept})
