"""Floating IPs: an address of an external network, mapped to a port's fixed address, with Neutron's rules.

:class:`FloatingIPs` is a mixin of :class:`topology.state.Topology` (see
:mod:`topology.l3common`). The address is held by a ``network:floatingip``
port on the external network (so IPAM and the store keep it unique); the
mapping needs a router whose gateway is on that external network and which
has an interface on the fixed address's subnet (that router is ``router_id``).
Subscribers hear about the hypervisor of the associated port (before and after).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import netaddr

from topology import graph_l3, ipam
from topology.core import write
from topology.l3common import Deleted, L3Base, new_id, now
from topology.model import Port
from topology.model_l3 import FLOATINGIP_OWNER, FloatingIP
from topology.store import BadRequest, Conflict, NotFound


def bad_fip(message: str) -> BadRequest:
    """Neutron's ``BadRequest`` for the floatingip resource."""
    return BadRequest("BadRequest", f"Bad floatingip request: {message}.")


class FloatingIPs(L3Base):
    """Mixin of :class:`topology.state.Topology`: floating IPs."""

    def _fip(self, fip_id: Any) -> FloatingIP:
        fip = self.graph.get("fip", fip_id) if isinstance(fip_id, str) else None
        if fip is None:
            raise NotFound("FloatingIPNotFound", f"Floating IP {fip_id} could not be found")
        return fip

    def _fip_hvs(self, *fips: FloatingIP | None) -> set[str]:
        hosts = set()
        for fip in fips:
            port = self.graph.port(fip.port_id) if fip is not None and fip.port_id else None
            if port is not None and port.binding_host:
                hosts.add(port.binding_host)
        return hosts

    def _association(self, fip: FloatingIP, port_id: Any, fixed_ip: Any) -> dict[str, Any]:
        """Validate mapping ``fip`` to (port, fixed address): the fields to set on the record."""
        if port_id is None:
            if fixed_ip is not None:
                raise bad_fip("fixed_ip_address cannot be specified without a port_id")
            return {"port_id": None, "fixed_ip_address": None, "router_id": None}
        port = self._port(port_id)
        if port.device_owner.startswith("network:"):
            raise bad_fip(f"Port {port.id} is owned by a network device ({port.device_owner}) and cannot have a "
                          "floating IP")
        v4 = [f for f in port.fixed_ips if netaddr.IPAddress(f.ip_address).version == 4]
        if fixed_ip is not None:
            try:
                wanted = str(ipam.parse_ip(fixed_ip, 4))
            except BadRequest:
                raise bad_fip(f"Port {port.id} does not have fixed ip {fixed_ip}") from None
            chosen = next((f for f in v4 if f.ip_address == wanted), None)
            if chosen is None:
                raise bad_fip(f"Port {port.id} does not have fixed ip {fixed_ip}")
        elif not v4:
            raise bad_fip(f"Cannot add floating IP to port {port.id} that has no fixed IPv4 addresses")
        elif len(v4) > 1:
            raise bad_fip(f"Port {port.id} has multiple fixed IPv4 addresses. Must provide a specific IPv4 address "
                          "when assigning a floating IP")
        else:
            chosen = v4[0]
        router = graph_l3.router_of_subnet_for_external(self.graph, chosen.subnet_id, fip.floating_network_id)
        if router is None:
            raise NotFound("ExternalGatewayForFloatingIPNotFound", f"External network {fip.floating_network_id} is "
                           f"not reachable from subnet {chosen.subnet_id}.  Therefore, cannot associate Port "
                           f"{port.id} with a Floating IP.")
        for other in graph_l3.fips_of_port(self.graph, port.id):
            if other.id != fip.id and other.fixed_ip_address == chosen.ip_address:
                raise Conflict("FloatingIPPortAlreadyAssociated", f"Cannot associate floating IP "
                               f"{fip.floating_ip_address} ({fip.id}) with port {port.id} using fixed IP "
                               f"{chosen.ip_address}, as that fixed IP already has a floating IP on external "
                               f"network {other.floating_network_id}.")
        return {"port_id": port.id, "fixed_ip_address": chosen.ip_address, "router_id": router.id}

    def _fip_address(self, net_id: str, address: Any, subnet_id: Any, mac: str):
        """The floating IP port's fixed IPs: the requested address, or the first free one of an IPv4 subnet."""
        v4 = [s for s in self.graph.subnets_of(net_id) if s.ip_version == 4]
        if subnet_id is not None:
            sub = self._subnet(subnet_id)
            if sub.network_id != net_id:
                raise bad_fip(f"Subnet {subnet_id} is not on network {net_id}")
            v4 = [sub]
        if not v4:
            raise bad_fip(f"Network {net_id} does not contain any IPv4 subnet")
        if address is not None:
            request = [{"ip_address": address, **({"subnet_id": subnet_id} if subnet_id else {})}]
            return self._fixed_ips(net_id, request, FLOATINGIP_OWNER, mac=mac)
        last: Exception | None = None
        for sub in v4:
            try:
                return self._fixed_ips(net_id, [{"subnet_id": sub.id}], FLOATINGIP_OWNER, mac=mac)
            except Conflict as exc:  # this subnet is full: try the next one
                last = exc
        raise last

    @write
    def create_floatingip(self, values: dict[str, Any]) -> FloatingIP:
        """Allocate a floating IP on an external network, optionally associated with a port."""
        with self.lock:
            net = self._network(values.get("floating_network_id"))
            if not graph_l3.is_external(net):
                raise bad_fip(f"Network {net.id} is not a valid external network")
            stamp = now()
            fip = FloatingIP(id=new_id(), project_id=values.get("project_id") or self.default_project,
                             floating_network_id=net.id, floating_ip_address="", floating_port_id="",
                             attrs={"description": values.get("description") or "", "created_at": stamp,
                                    "updated_at": stamp})
            assoc = self._association(fip, values.get("port_id"), values.get("fixed_ip_address"))
            mac = self._mac(net.id, None)
            fixed_ips = self._fip_address(net.id, values.get("floating_ip_address"), values.get("subnet_id"), mac)
            port = self._new_port(net, project_id="", owner=FLOATINGIP_OWNER, device_id=fip.id,
                                  fixed_ips=fixed_ips, mac=mac)
            fip = replace(fip, floating_ip_address=fixed_ips[0].ip_address, floating_port_id=port.id, **assoc)
            self._commit([port, fip])
            self._notify(self._fip_hvs(fip))
            return fip

    @write
    def update_floatingip(self, fip_id: str, values: dict[str, Any]) -> FloatingIP:
        """Associate (``port_id``), move to another port, disassociate (``port_id`` null), or describe."""
        with self.lock:
            old = self._fip(fip_id)
            fip = self._touch(old)
            if "description" in values:
                fip = replace(fip, attrs={**fip.attrs, "description": values["description"] or ""})
            if "port_id" in values:
                fip = replace(fip, **self._association(old, values["port_id"], values.get("fixed_ip_address")))
            elif values.get("fixed_ip_address") is not None:
                fip = replace(fip, **self._association(old, old.port_id, values["fixed_ip_address"]))
            before = self._fip_hvs(old)
            self._write([fip], before, lambda: self._fip_hvs(fip))
            return fip

    @write
    def delete_floatingip(self, fip_id: str) -> None:
        """Release a floating IP and its address."""
        with self.lock:
            fip = self._fip(fip_id)
            self._write([Deleted("fip", fip_id), Deleted("port", fip.floating_port_id)], self._fip_hvs(fip))

    # -- hooks for port writes ----------------------------------------------------------------
    def _before_port_delete(self, port: Port) -> list[FloatingIP]:
        """409 for ports only their router or floating IP may delete; the floating IPs to disassociate."""
        owner = port.device_owner
        if owner.startswith("network:router") and graph_l3.router(self.graph, port.device_id) is not None:
            raise Conflict("ServicePortInUse", f"Port {port.id} cannot be deleted directly via the port API: has "
                           f"device owner {owner}.")
        if owner == FLOATINGIP_OWNER and self.graph.get("fip", port.device_id) is not None:
            raise Conflict("ServicePortInUse", f"Port {port.id} cannot be deleted directly via the port API: has "
                           f"device owner {owner}.")
        return [self._touch(f, port_id=None, fixed_ip_address=None, router_id=None)
                for f in graph_l3.fips_of_port(self.graph, port.id)]
