"""Routers: gateway, extra routes and interfaces, with Neutron's rules.

:class:`Routers` is a mixin of :class:`topology.state.Topology` (see
:mod:`topology.l3common`). A router's interfaces are ``network:router_interface``
ports whose ``device_id`` is the router; its gateway is a ``network:router_gateway``
port on a ``router:external`` network. Each operation, ports included, is one
transaction; subscribers hear about the hypervisors hosting any network of the
router (before and after the change).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import netaddr

from topology import gateways, graph_l3, ipam
from topology.core import write
from topology.l3common import Deleted, L3Base, new_id, now
from topology.model import Hypervisor, Network, Port, Subnet
from topology.model_l3 import ROUTER_GATEWAY, ROUTER_INTERFACE, Router
from topology.store import BadRequest, Conflict, NotFound, Unavailable

ROUTER_KEY_MAX = 2**24 - 1
MAX_ROUTES = 30


def bad_router(message: str) -> BadRequest:
    """Neutron's ``BadRequest`` for the router resource."""
    return BadRequest("BadRequest", f"Bad router request: {message}.")


def interface_info(router: Router, port: Port) -> dict[str, Any]:
    """The body of add/remove_router_interface's answer, exactly as Neutron shapes it."""
    subnet_ids = list(dict.fromkeys(f.subnet_id for f in port.fixed_ips))
    return {"id": router.id, "tenant_id": router.project_id, "project_id": router.project_id,
            "port_id": port.id, "subnet_id": subnet_ids[0] if subnet_ids else None, "subnet_ids": subnet_ids,
            "network_id": port.network_id}


class Routers(L3Base):
    """Mixin of :class:`topology.state.Topology`: routers and their ports."""

    gateways_per_router = gateways.DEFAULT_GATEWAYS_PER_ROUTER  # the longest gateway list a router gets

    def _router(self, router_id: Any) -> Router:
        router = self.graph.get("router", router_id) if isinstance(router_id, str) else None
        if router is None:
            raise NotFound("RouterNotFound", f"Router {router_id} could not be found")
        return router

    def _router_hvs(self, router_id: str) -> set[str]:
        return graph_l3.hypervisors_of_router(self.graph, router_id)

    # -- CRUD -----------------------------------------------------------------------------
    @write
    def create_router(self, values: dict[str, Any]) -> Router:
        """Create a router, with its gateway port if ``external_gateway_info`` names a network."""
        with self.lock:
            stamp = now()
            router = Router(id=new_id(), project_id=values.get("project_id") or self.default_project, key=0,
                            admin_state_up=values.get("admin_state_up", True),
                            attrs={"name": values.get("name") or "", "description": values.get("description") or "",
                                   "created_at": stamp, "updated_at": stamp})
            gw = values.get("external_gateway_info")
            plan = self._plan_gateway(router, gw) if gw else None
            key = self._next_key("router", 1, ROUTER_KEY_MAX)
            if key is None:
                raise Unavailable("RouterKeyExhausted", "No logical router key is free.")
            router = replace(router, key=key)
            records, router = self._apply_gateway(router, plan)
            self._commit([*records, router])
            self._notify(self._router_hvs(router.id))
            return router

    @write
    def update_router(self, router_id: str, values: dict[str, Any]) -> Router:
        """Update name, admin state, gateway (set, change, clear) or extra routes."""
        with self.lock:
            old = self._router(router_id)
            before = self._router_hvs(router_id)
            attrs = {**old.attrs, "updated_at": now()}
            for name in ("name", "description"):
                if name in values:
                    attrs[name] = values[name] or ""
            router = replace(old, attrs=attrs, admin_state_up=values.get("admin_state_up", old.admin_state_up))
            plan = None
            if "external_gateway_info" in values:
                plan = self._plan_gateway(old, values["external_gateway_info"] or None)
            records, router = self._apply_gateway(router, plan) if plan is not None else ([], router)
            if "routes" in values:
                gw_port = next((r for r in records if isinstance(r, Port) and r.device_owner == ROUTER_GATEWAY),
                               None)
                router = replace(router, routes=self._routes(router, values["routes"] or [], gw_port))
            elif plan is not None:
                self._check_routes_still_reachable(router, records)
            if "gateway_hypervisors" in values:
                router = replace(router, gateway_hosts=self._operator_gateways(router, values["gateway_hypervisors"]))
            self._commit([*records, router])
            self._notify(before | self._router_hvs(router_id))
            return router

    @write
    def delete_router(self, router_id: str) -> None:
        """Delete a router and its gateway port (409 RouterInUse while it has interfaces)."""
        with self.lock:
            router = self._router(router_id)
            if graph_l3.router_interfaces(self.graph, router_id):
                raise Conflict("RouterInUse", f"Router {router_id} still has ports")
            if graph_l3.fips_of_router(self.graph, router_id):
                raise Conflict("RouterInUse", f"Router {router_id} has floating IPs")
            affected = self._router_hvs(router_id)
            records = [Deleted("port", router.gw_port_id)] if router.gw_port_id else []
            self._write([*records, Deleted("router", router_id)], affected)

    # -- gateway ----------------------------------------------------------------------------
    def _plan_gateway(self, router: Router, info: dict[str, Any] | None) -> dict[str, Any]:
        """Validate an ``external_gateway_info`` (None: remove the gateway) into a plan for _apply_gateway."""
        if info is None or not info.get("network_id"):
            if info and set(info) - {"network_id"}:
                raise bad_router("network_id is required in external_gateway_info")
            if router.gw_port_id and graph_l3.fips_of_router(self.graph, router.id):
                raise Conflict("RouterExternalGatewayInUseByFloatingIp", f"Gateway cannot be updated for router "
                               f"{router.id}, since a gateway to external network {router.gw_network_id} is "
                               "required by one or more floating IPs.")
            return {"network": None}
        net = self._network(info["network_id"])
        if not graph_l3.is_external(net):
            raise bad_router(f"Network {net.id} is not an external network")
        current = graph_l3.gateway_port(self.graph, router.id)
        same = current is not None and current.network_id == net.id
        if not same and router.gw_port_id and graph_l3.fips_of_router(self.graph, router.id):
            raise Conflict("RouterExternalGatewayInUseByFloatingIp", f"Gateway cannot be updated for router "
                           f"{router.id}, since a gateway to external network {router.gw_network_id} is required "
                           "by one or more floating IPs.")
        requested = info.get("external_fixed_ips")
        mac = current.mac_address if same else self._mac(net.id, None)
        if same and requested is None:
            fixed_ips = current.fixed_ips
        else:
            if requested is not None:
                requested = [dict(r) for r in requested]
            fixed_ips = self._fixed_ips(net.id, requested, ROUTER_GATEWAY, current if same else None, mac=mac)
        if not fixed_ips:
            raise bad_router(f"No IPs available for external network {net.id}")
        self._check_overlap(router, [s for s in (self.graph.subnet(f.subnet_id) for f in fixed_ips) if s],
                            ignore_port=current.id if current else None)
        return {"network": net, "fixed_ips": fixed_ips, "mac": mac, "same": same,
                "enable_snat": info.get("enable_snat", True)}

    def _apply_gateway(self, router: Router, plan: dict[str, Any] | None) -> tuple[list, Router]:
        """The gateway part of a plan: the records to write (before the router) and the new router."""
        if plan is None:
            return [], router
        current = graph_l3.gateway_port(self.graph, router.id)
        records: list = []
        if plan["network"] is None:
            if current is not None:
                records.append(Deleted("port", current.id))
            return records, replace(router, gw_network_id=None, gw_port_id=None, enable_snat=True, gateway_hosts=(),
                                    snat_zone=0)
        if plan["same"]:
            port = replace(current, fixed_ips=plan["fixed_ips"], attrs={**current.attrs, "updated_at": now()})
        else:
            if current is not None:
                records.append(Deleted("port", current.id))
            port = self._new_port(plan["network"], project_id="", owner=ROUTER_GATEWAY, device_id=router.id,
                                  fixed_ips=plan["fixed_ips"], mac=plan["mac"])
        records.append(port)
        keep = router.gateway_hosts if plan["same"] else ()
        hosts = gateways.schedule(self.graph, plan["network"].physical_network, self.gateways_per_router, keep)
        zone = router.snat_zone or gateways.free_snat_zone(self.graph)
        if zone is None:
            raise Unavailable("SnatZonesExhausted", "No conntrack zone is free for another router's source NAT.")
        return records, replace(router, gw_network_id=port.network_id, gw_port_id=port.id,
                                enable_snat=plan["enable_snat"], gateway_hosts=hosts, snat_zone=zone)

    # -- gateway hypervisors -----------------------------------------------------------------
    def _gateway_physnet(self, router: Router) -> str | None:
        net: Network | None = self.graph.network(router.gw_network_id) if router.gw_network_id else None
        return net.physical_network if net is not None else None

    def _operator_gateways(self, router: Router, hosts: object) -> tuple[str, ...]:
        """The gateway list an operator asks for (PUT gateway_hypervisors), checked."""
        if not router.gw_network_id:
            raise bad_router("gateway_hypervisors needs an external gateway")
        checked = gateways.validate_hosts(self.graph, self._gateway_physnet(router), hosts)
        if isinstance(checked, str):
            raise bad_router(checked)
        return checked

    @write
    def demote_gateway(self, name: str) -> list[str]:
        """Hypervisor ``name`` failed as a gateway: it goes last in each list it heads; the router ids.

        The switches have failed over already (BFD, fast-failover groups); this makes the new
        active gateway the first of the list, so that the failed one coming back does not take
        the routers back (which would cut their connections a second time): no preemption.
        """
        with self.lock:
            moved = [replace(r, gateway_hosts=(*r.gateway_hosts[1:], name)) for r in self.graph.records("router")
                     if len(r.gateway_hosts) > 1 and r.gateway_hosts[0] == name]
            if moved:
                self._write(moved, set().union(*(self._router_hvs(r.id) for r in moved)))
            return [r.id for r in moved]

    def _gateway_lists(self, name: str, hv: Hypervisor | None) -> list[Router]:
        """Routers whose gateway list changes as hypervisor ``name`` becomes ``hv`` (None: deleted).

        A new gateway is appended to the lists that are short of gateways_per_router (it never
        takes over an active gateway: the operator moves routers); one that stops being a
        gateway for a router's physical network leaves its list.
        """
        out = []
        for router in self.graph.records("router"):
            if not router.gw_network_id:
                continue
            physnet = self._gateway_physnet(router)
            serves = hv is not None and physnet in hv.gateway_for and physnet in hv.bridge_mappings
            hosts = router.gateway_hosts
            if not serves:
                hosts = tuple(h for h in hosts if h != name)
            elif name not in hosts and len(hosts) < self.gateways_per_router:
                hosts = (*hosts, name)
            if hosts != router.gateway_hosts:
                out.append(replace(router, gateway_hosts=hosts))
        return out

    # -- extra routes ------------------------------------------------------------------------
    def _routes(self, router: Router, routes: list[dict[str, str]], gw_port: Port | None = None
                ) -> tuple[tuple[str, str], ...]:
        """Validate extra routes: each nexthop on a subnet of one of the router's ports, not the router's own."""
        if len(routes) > MAX_ROUTES:
            raise BadRequest("RoutesExhausted", f"Unable to complete operation for {router.id}. The number of "
                             f"routes exceeds the maximum {MAX_ROUTES}.")
        ports = [p for p in graph_l3.router_ports(self.graph, router.id) if p.device_owner != ROUTER_GATEWAY]
        gw = gw_port if gw_port is not None else graph_l3.gateway_port(self.graph, router.id)
        if gw is not None and router.gw_port_id == gw.id:
            ports.append(gw)
        cidrs = [netaddr.IPNetwork(s.cidr) for p in ports for s in graph_l3.port_subnets(self.graph, p)]
        own = {f.ip_address for p in ports for f in p.fixed_ips}
        out: list[tuple[str, str]] = []
        for route in routes:
            shown = f"[{route}]"
            try:
                dest = ipam.parse_cidr(route["destination"])
                hop = ipam.parse_ip(route["nexthop"])
            except (KeyError, TypeError, BadRequest):
                raise BadRequest("InvalidRoutes", f"Invalid format for routes: {shown}, the destination must be "
                                 "a CIDR and the nexthop an IP address") from None
            if dest.version != hop.version:
                raise BadRequest("InvalidRoutes", f"Invalid format for routes: {shown}, the destination and the "
                                 "nexthop must be of the same IP version")
            if str(hop) in own:
                raise BadRequest("InvalidRoutes", f"Invalid format for routes: {shown}, the nexthop is used by "
                                 "router")
            if not any(hop in c for c in cidrs):
                raise BadRequest("InvalidRoutes", f"Invalid format for routes: {shown}, the nexthop is not "
                                 "connected with router")
            entry = (str(dest), str(hop))
            if entry not in out:
                out.append(entry)
        return tuple(out)

    def _check_routes_still_reachable(self, router: Router, records: list) -> None:
        """A gateway change must not strand an extra route whose nexthop was on the old gateway's subnets."""
        if not router.routes:
            return
        gw = next((r for r in records if isinstance(r, Port)), None)
        self._routes(router, [{"destination": d, "nexthop": h} for d, h in router.routes], gw)

    # -- interfaces ----------------------------------------------------------------------------
    def _check_overlap(self, router: Router, subnets: list[Subnet], ignore_port: str | None = None) -> None:
        """400 if one of ``subnets`` is already on the router or overlaps one of its subnets."""
        existing: dict[str, Subnet] = {}
        for port in graph_l3.router_ports(self.graph, router.id):
            if port.id != ignore_port:
                for sub in graph_l3.port_subnets(self.graph, port):
                    existing[sub.id] = sub
        for new in subnets:
            if new.id in existing:
                raise bad_router(f"Router already has a port on subnet {new.id}")
            clash = ipam.overlapping(netaddr.IPNetwork(new.cidr), existing.values())
            if clash is not None:
                raise bad_router(f"Cidr {new.cidr} of subnet {new.id} overlaps with cidr {clash.cidr} of subnet "
                                 f"{clash.id}")

    @staticmethod
    def _interface_ids(values: dict[str, Any]) -> tuple[str | None, str | None]:
        if not isinstance(values, dict) or set(values) - {"subnet_id", "port_id"}:
            raise bad_router("the body takes only subnet_id or port_id")
        subnet_id, port_id = values.get("subnet_id"), values.get("port_id")
        for v in (subnet_id, port_id):
            if v is not None and not isinstance(v, str):
                raise bad_router(f"'{v}' is not a valid id")
        if not subnet_id and not port_id:
            raise bad_router("Either subnet_id or port_id must be specified")
        return subnet_id, port_id

    @write
    def add_router_interface(self, router_id: str, values: dict[str, Any]) -> dict[str, Any]:
        """Attach a subnet (a new port with its gateway address) or an existing port to a router."""
        with self.lock:
            router = self._router(router_id)
            subnet_id, port_id = self._interface_ids(values)
            if subnet_id and port_id:
                raise bad_router("Cannot specify both subnet-id and port-id")
            before = self._router_hvs(router_id)
            if port_id:
                port = self._port(port_id)
                if port.device_id or port.device_owner.startswith("network:"):
                    raise Conflict("PortInUse", f"Unable to complete operation on port {port.id} for network "
                                   f"{port.network_id}. Port already has an attached device {port.device_id}.")
                if not port.fixed_ips:
                    raise bad_router("Router port must have at least one fixed IP")
                subnets = graph_l3.port_subnets(self.graph, port)
                if sum(1 for s in subnets if s.ip_version == 4) > 1:
                    raise bad_router("Cannot have multiple IPv4 subnets on router port")
                self._check_overlap(router, subnets)
                port = replace(port, device_owner=ROUTER_INTERFACE, device_id=router.id,
                               attrs={**port.attrs, "updated_at": now()})
            else:
                subnet = self._subnet(subnet_id)
                if not subnet.gateway_ip:
                    raise bad_router("Subnet for router interface must have a gateway IP")
                self._check_overlap(router, [subnet])
                net = self._network(subnet.network_id)
                mac = self._mac(net.id, None)
                fixed_ips = self._fixed_ips(net.id, [{"subnet_id": subnet.id, "ip_address": subnet.gateway_ip}],
                                            ROUTER_INTERFACE, mac=mac)
                port = self._new_port(net, project_id=subnet.project_id, owner=ROUTER_INTERFACE,
                                      device_id=router.id, fixed_ips=fixed_ips, mac=mac)
            self._commit([port])
            port = self.graph.port(port.id)
            self._notify(before | self._router_hvs(router_id))
            return interface_info(router, port)

    @write
    def remove_router_interface(self, router_id: str, values: dict[str, Any]) -> dict[str, Any]:
        """Detach an interface (by port or by subnet) and delete its port."""
        with self.lock:
            router = self._router(router_id)
            subnet_id, port_id = self._interface_ids(values)
            interfaces = graph_l3.router_interfaces(self.graph, router_id)
            if port_id:
                port = next((p for p in interfaces if p.id == port_id), None)
                if port is None:
                    raise NotFound("RouterInterfaceNotFound", f"Router {router_id} does not have an interface "
                                   f"with id {port_id}")
                if subnet_id and all(f.subnet_id != subnet_id for f in port.fixed_ips):
                    raise BadRequest("SubnetMismatchForPort", f"Subnet {subnet_id} does not match the port "
                                     f"{port_id}")
            else:
                self._subnet(subnet_id)
                port = next((p for p in interfaces if any(f.subnet_id == subnet_id for f in p.fixed_ips)), None)
                if port is None:
                    raise NotFound("RouterInterfaceNotFoundForSubnet", f"Router {router_id} has no interface on "
                                   f"subnet {subnet_id}")
            removed = {f.subnet_id for f in port.fixed_ips}
            # What the errors name: the interface's subnet, or the port (an interface whose
            # addresses were all removed from the port has none).
            named = f"subnet {sorted(removed)[0]}" if removed else f"port {port.id}"
            for fip in graph_l3.fips_of_router(self.graph, router_id):
                fixed_port = self.graph.port(fip.port_id) if fip.port_id else None
                if fixed_port and any(f.subnet_id in removed and f.ip_address == fip.fixed_ip_address
                                      for f in fixed_port.fixed_ips):
                    raise Conflict("RouterInterfaceInUseByFloatingIP", f"Router interface for {named} "
                                   f"on router {router_id} cannot be deleted, as it is "
                                   "required by one or more floating IPs.")
            remaining = [netaddr.IPNetwork(s.cidr) for p in graph_l3.router_ports(self.graph, router_id)
                         if p.id != port.id for s in graph_l3.port_subnets(self.graph, p)]
            for _dest, hop in router.routes:
                if not any(netaddr.IPAddress(hop) in c for c in remaining):
                    raise Conflict("RouterInterfaceInUseByRoute", f"Router interface for {named} "
                                   f"on router {router_id} cannot be deleted, as it is "
                                   "required by one or more routes.")
            before = self._router_hvs(router_id)
            self._write([Deleted("port", port.id)], before)
            return interface_info(router, port)
