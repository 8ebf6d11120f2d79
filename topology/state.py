"""The controller's view of the cloud: the graph, kept durable and consistent.

:class:`Topology` is the only writer of the graph. Every write method follows
the same order (:mod:`topology.core`), under :attr:`Topology.lock`:

1. validate fully against the current graph (raising a
   :class:`topology.store.TopologyError` leaves everything untouched), allocating
   keys and segments from what the graph holds;
2. commit the write's records in ONE store transaction (:mod:`topology.store`);
3. the store's commit stream applies them to the graph (this instance's writes and
   every other instance's);
4. tell subscribers which hypervisors' compiled flows may have changed.

Write methods take Neutron-shaped attribute dicts (``"provider:network_type"``,
``"binding:host_id"``...) already type-checked by the caller (the northbound
API); they re-check everything that depends on state. Attributes that are not
typed fields of a record (name, description, timestamps...) are kept in its
``attrs`` so the API can round-trip them.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace
from typing import Any

import netaddr

from topology import dhcp_opts, graph_l3, ipam, ipv6
from topology.core import write
from topology.ctzones import with_ct_zone
from topology.floatingips import FloatingIPs
from topology.l3common import Deleted
from topology.model import NETWORK_TYPES, OVERLAY_TYPES, FixedIP, Hypervisor, Network, Port, Subnet, tap_name
from topology.routers import Routers
from topology.secgroups import SecurityGroups
from topology.store import BadRequest, Conflict, NotFound, Store, Unavailable, open_store, segment_name

LOG = logging.getLogger(__name__)

NETWORK_KEY_MAX = 2**24 - 1
PORT_KEY_MAX = 2**31
VNI_MAX = 2**24 - 1
VLAN_MAX = 4094
# Neutron deletes these ports itself when their network goes away.
AUTO_DELETE_OWNERS = frozenset({"network:dhcp", "network:distributed"})
# Record fields that are typed; every other attribute goes into `attrs`.
NETWORK_FIELDS = {"id", "project_id", "tenant_id", "admin_state_up", "mtu", "provider:network_type",
                  "provider:physical_network", "provider:segmentation_id", "status", "subnets"}
SUBNET_FIELDS = {"id", "network_id", "project_id", "tenant_id", "cidr", "ip_version", "gateway_ip",
                 "allocation_pools", "enable_dhcp"}
PORT_FIELDS = {"id", "network_id", "project_id", "tenant_id", "mac_address", "fixed_ips", "binding:host_id",
               "admin_state_up", "device_owner", "device_id", "status"}
HV_FIELDS = {"name", "id", "datapath_id", "tunnel_ip", "bridge_mappings", "gateway_for"}


def now() -> str:
    """A Neutron-style UTC timestamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_datapath_id(value: Any) -> int:
    """A datapath id from an int, ``"0x..."`` or exactly 16 hex digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        dpid = value
    elif isinstance(value, str) and value.lower().startswith("0x") and len(value) > 2:
        dpid = _hex(value[2:], value)
    elif isinstance(value, str) and len(value) == 16:
        dpid = _hex(value, value)
    else:
        raise ipam.invalid_input(f"'{value}' is not a valid datapath_id (16 hex digits, 0x... or an integer)")
    if not 0 <= dpid < 2**64:
        raise ipam.invalid_input(f"datapath_id {value} is out of range")
    return dpid


def _hex(digits: str, shown: str) -> int:
    try:
        return int(digits, 16)
    except ValueError:
        raise ipam.invalid_input(f"'{shown}' is not a valid datapath_id") from None


def _extra(values: dict[str, Any], typed: set[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in typed}


class Topology(Routers, FloatingIPs, SecurityGroups):
    """The logical topology: SQLite store + networkx graph + change notification.

    Routers, floating IPs and security groups are in the mixins' modules
    (:mod:`topology.routers`, :mod:`topology.floatingips`, :mod:`topology.secgroups`).
    """

    def __init__(self, store: str | Store, *, vni_range: tuple[int, int] = (1000, 1999),
                 vlan_range: tuple[int, int] = (100, 199), default_project: str = "default",
                 default_network_type: str = "vxlan", default_physical_network: str = "physnet1") -> None:
        """``store``: a :class:`Store`, or what ``--store`` takes (an SQLite path, ``etcd://...``)."""
        if default_network_type not in NETWORK_TYPES:
            raise ValueError(f"unknown network type {default_network_type!r}")
        self.vni_range = vni_range
        self.vlan_range = vlan_range
        self.default_project = default_project
        self.default_network_type = default_network_type
        self.default_physical_network = default_physical_network
        self._init_core(store if isinstance(store, Store) else open_store(store))

    def close(self) -> None:
        """Close the store; the object must not be used afterwards.

        Not under the graph's lock: the store's watch thread may be waiting for it to apply a
        commit, and closing waits for that thread to end.
        """
        self.store.close()

    # -- live state -------------------------------------------------------------------
    def _with_status(self, port: Port) -> Port:
        """The port with its live ``status`` in attrs: ACTIVE when its tap is on its host's bridge."""
        host = port.binding_host
        up = bool(port.admin_state_up and host and self.graph.connected(host)
                  and tap_name(port.id) in self.graph.ofports(host))
        status = "ACTIVE" if up else "DOWN"
        if port.attrs.get("status") == status:
            return port
        return replace(port, attrs={**port.attrs, "status": status})

    def set_live_ofports(self, hv_name: str, ofports: dict[str, int]) -> set[str]:
        """Record a connected hypervisor's OVS port map and refresh its bound ports' status."""
        with self.lock:
            self.graph.set_ofports(hv_name, ofports)
            self.graph.set_connected(hv_name, True)
            self._refresh_status(hv_name)
            return {hv_name}

    def set_disconnected(self, hv_name: str) -> None:
        """A hypervisor's switch went away: its ports go DOWN; its flows (and port map) stay as they are.

        Its compiled flows are what it must hold when it comes back, most likely with the same
        ports: recompiling it without them now, and again with them on its return, would hold
        the topology's lock twice for nothing (every bridge at once when the controller restarts).
        """
        with self.lock:
            self.graph.set_connected(hv_name, False)
            self._refresh_status(hv_name)

    def remember_ofports(self, maps: dict[str, dict[str, int]]) -> None:
        """Port maps the switches reported before a restart (controller.portmaps), for registered hypervisors
        not connected yet: their flows compile against them, and a switch that comes back with the same
        ports finds its flows ready (no recompile under the lock when it connects)."""
        with self.lock:
            for name, ofports in maps.items():
                if self.graph.hypervisor(name) is not None and not self.graph.connected(name):
                    self.graph.set_ofports(name, ofports)
            self._refresh_status(*maps)

    def _refresh_status(self, *hv_names: str) -> None:
        """Its bound ports' status, and the live subscribers hear of the hypervisors (under the lock)."""
        for hv_name in hv_names:
            for port in self.graph.ports_on(hv_name):
                updated = self._with_status(port)
                if updated is not port:
                    self.graph.put_port(updated)
        for callback in list(self._live_subscribers):
            callback(set(hv_names))

    # -- lookups (404s) ---------------------------------------------------------------
    def _network(self, net_id: str) -> Network:
        net = self.graph.network(net_id) if isinstance(net_id, str) else None
        if net is None:
            raise NotFound("NetworkNotFound", f"Network {net_id} could not be found.")
        return net

    def _subnet(self, subnet_id: str) -> Subnet:
        subnet = self.graph.subnet(subnet_id) if isinstance(subnet_id, str) else None
        if subnet is None:
            raise NotFound("SubnetNotFound", f"Subnet {subnet_id} could not be found.")
        return subnet

    def _port(self, port_id: str) -> Port:
        port = self.graph.port(port_id) if isinstance(port_id, str) else None
        if port is None:
            raise NotFound("PortNotFound", f"Port {port_id} could not be found.")
        return port

    def _hypervisor(self, name: str) -> Hypervisor:
        hv = self.graph.hypervisor(name) if isinstance(name, str) else None
        if hv is None:
            raise NotFound("HypervisorNotFound", f"Hypervisor {name} could not be found.")
        return hv

    # -- networks ---------------------------------------------------------------------------
    def _segment(self, values: dict[str, Any]) -> tuple[str, str | None, int | None]:
        """Validate the provider attributes: (network_type, physical_network, segmentation_id or None)."""
        ntype = values.get("provider:network_type") or self.default_network_type
        physnet = values.get("provider:physical_network")
        seg = values.get("provider:segmentation_id")
        if ntype not in NETWORK_TYPES:
            raise ipam.invalid_input(f"network_type value '{ntype}' not supported")
        if ntype in OVERLAY_TYPES:
            if physnet:
                raise ipam.invalid_input(f"provider:physical_network specified for {ntype} network")
            if seg is not None and not 1 <= seg <= VNI_MAX:
                raise ipam.invalid_input(f"{ntype} network segmentation_id {seg} out of range 1-{VNI_MAX}")
            return ntype, None, seg
        physnet = physnet or self.default_physical_network
        if ntype == "flat" and seg is not None:
            raise ipam.invalid_input("provider:segmentation_id specified for flat network")
        if ntype == "vlan" and seg is not None and not 1 <= seg <= VLAN_MAX:
            raise ipam.invalid_input(f"VLAN segmentation_id {seg} out of range 1-{VLAN_MAX}")
        return ntype, physnet, seg

    def _segments_in_use(self, prefix: str) -> set[str]:
        """The segment names of the graph's networks starting with ``prefix``."""
        names = (segment_name(n) for n in self.graph.records("network"))
        return {name for name in names if name and name.startswith(prefix)}

    def _allocate_segment(self, ntype: str, physnet: str | None) -> int:
        lo, hi = self.vni_range if ntype in OVERLAY_TYPES else self.vlan_range
        prefix = f"{ntype}:" if ntype in OVERLAY_TYPES else f"vlan:{physnet}:"
        used = self._segments_in_use(prefix)
        for seg in range(lo, hi + 1):
            if f"{prefix}{seg}" not in used:
                return seg
        raise Unavailable("NoNetworkAvailable",
                          "Unable to create the network. No tenant network is available for allocation.")

    def _check_segment_free(self, net: Network) -> None:
        if segment_name(net) not in self._segments_in_use(segment_name(net) or ""):
            return
        if net.network_type == "flat":
            raise Conflict("FlatNetworkInUse", f"Unable to create the flat network. Physical network "
                           f"{net.physical_network} is in use.")
        if net.network_type == "vlan":
            raise Conflict("VlanIdInUse", f"Unable to create the network. The VLAN {net.segmentation_id} on "
                           f"physical network {net.physical_network} is in use.")
        raise Conflict("TunnelIdInUse", f"Unable to create the network. The tunnel ID {net.segmentation_id} "
                       "is in use.")

    @write
    def create_network(self, values: dict[str, Any]) -> Network:
        """Create a network, allocating its logical key and (unless given) its segmentation id."""
        with self.lock:
            ntype, physnet, seg = self._segment(values)
            stamp = now()
            net = Network(
                id=str(uuid.uuid4()), project_id=values.get("project_id") or self.default_project, key=0,
                network_type=ntype, segmentation_id=seg, physical_network=physnet,
                mtu=values.get("mtu") or (1450 if ntype in OVERLAY_TYPES else 1500),
                admin_state_up=values.get("admin_state_up", True),
                attrs={**_extra(values, NETWORK_FIELDS), "created_at": stamp, "updated_at": stamp},
            )
            if seg is not None or ntype == "flat":
                self._check_segment_free(net)
            key = self._next_key("network", 1, NETWORK_KEY_MAX)
            if key is None:
                raise Unavailable("NoNetworkAvailable", "Unable to create the network. No logical key is free.")
            if seg is None and ntype != "flat":
                seg = self._allocate_segment(ntype, physnet)
            net = replace(net, key=key, segmentation_id=seg)
            self._commit([net])
            self._notify(())  # a network without ports is on no hypervisor
            return net

    @write
    def update_network(self, net_id: str, values: dict[str, Any]) -> Network:
        """Update a network's mutable attributes (provider attributes may only be restated unchanged)."""
        with self.lock:
            old = self._network(net_id)
            for attr, current in (("provider:network_type", old.network_type),
                                  ("provider:physical_network", old.physical_network),
                                  ("provider:segmentation_id", old.segmentation_id)):
                if attr in values and values[attr] != current:
                    raise ipam.invalid_input("Plugin does not support updating provider attributes")
            attrs = {**old.attrs, **_extra(values, NETWORK_FIELDS), "updated_at": now()}
            net = replace(old, mtu=values.get("mtu") or old.mtu, attrs=attrs,
                          admin_state_up=values.get("admin_state_up", old.admin_state_up))
            self._commit([net])
            self._notify(self._dependents(net_id))
            return net

    @write
    def delete_network(self, net_id: str) -> None:
        """Delete a network with its subnets and auto-deletable ports (409 if other ports remain)."""
        with self.lock:
            self._network(net_id)
            ports = self.graph.ports_of(net_id)
            if any(p.device_owner not in AUTO_DELETE_OWNERS for p in ports):
                raise Conflict("NetworkInUse", f"Unable to complete operation on network {net_id}. "
                               "There are one or more ports still in use on the network.")
            subnets = self.graph.subnets_of(net_id)
            affected = self._dependents(net_id)
            self._commit([*(Deleted("port", p.id) for p in ports), *(Deleted("subnet", s.id) for s in subnets),
                          Deleted("network", net_id)])
            self._notify(affected)

    # -- subnets ----------------------------------------------------------------------------
    def _subnet_options(self, values: dict[str, Any]) -> dict[str, Any]:
        """Validate dns_nameservers and host_routes (kept in attrs)."""
        out: dict[str, Any] = {}
        if values.get("dns_nameservers") is not None:
            out["dns_nameservers"] = [str(ipam.parse_ip(ip)) for ip in values["dns_nameservers"]]
        if values.get("host_routes") is not None:
            routes = []
            for route in values["host_routes"]:
                try:
                    dest = ipam.parse_cidr(route["destination"])
                    hop = ipam.parse_ip(route["nexthop"])
                except (KeyError, TypeError):
                    raise ipam.invalid_input("host_routes entries need a destination and a nexthop") from None
                routes.append({"destination": str(dest), "nexthop": str(hop)})
            out["host_routes"] = routes
        return out

    @write
    def create_subnet(self, values: dict[str, Any]) -> Subnet:
        """Create a subnet: CIDR, gateway and pools validated; no overlap within its network."""
        with self.lock:
            network = self._network(values.get("network_id"))
            cidr = ipam.parse_subnet_cidr(values.get("cidr"), values.get("ip_version"))
            ipv6.check_modes(values, cidr)
            gateway = ipam.default_gateway(cidr) if "gateway_ip" not in values else \
                ipam.check_gateway(cidr, values["gateway_ip"])
            if values.get("allocation_pools") is None:
                pools = ipam.default_pools(cidr, gateway)
            else:
                pools = ipam.check_pools(cidr, values["allocation_pools"], gateway)
            clash = ipam.overlapping(cidr, self.graph.subnets_of(network.id))
            if clash is not None:
                raise ipam.invalid_input(f"Requested subnet with cidr: {cidr} for network: {network.id} "
                                         f"overlaps with another subnet")
            stamp = now()
            attrs = {"dns_nameservers": [], "host_routes": [], **_extra(values, SUBNET_FIELDS),
                     **self._subnet_options(values), "created_at": stamp, "updated_at": stamp}
            subnet = Subnet(id=str(uuid.uuid4()), network_id=network.id,
                            project_id=values.get("project_id") or self.default_project, cidr=str(cidr),
                            ip_version=cidr.version, gateway_ip=gateway, allocation_pools=pools,
                            enable_dhcp=values.get("enable_dhcp", True), attrs=attrs)
            # An auto-address subnet gives every port already on the network its EUI-64 address (Neutron).
            late = [replace(p, attrs={**p.attrs, "updated_at": stamp})
                    for p in ipv6.late_addresses(subnet, self.graph.ports_of(network.id))]
            self._commit([subnet, *late])
            self._notify(self._dependents(network.id) if late else ())
            return subnet

    @write
    def update_subnet(self, subnet_id: str, values: dict[str, Any]) -> Subnet:
        """Update name, gateway, pools, DHCP flag, DNS servers or host routes of a subnet."""
        with self.lock:
            old = self._subnet(subnet_id)
            cidr = netaddr.IPNetwork(old.cidr)
            gateway = ipam.check_gateway(cidr, values["gateway_ip"]) if "gateway_ip" in values else old.gateway_ip
            if gateway and gateway != old.gateway_ip:
                for port in self.graph.ports_of(old.network_id):
                    if FixedIP(subnet_id, gateway) in port.fixed_ips:
                        raise Conflict("GatewayIpInUse", f"Current gateway ip {gateway} already in use by port "
                                       f"{port.id}. Unable to update.")
            if values.get("allocation_pools") is not None:
                pools = ipam.check_pools(cidr, values["allocation_pools"], gateway)
            else:
                pools = ipam.check_pools(cidr, [{"start": s, "end": e} for s, e in old.allocation_pools], gateway)
            attrs = {**old.attrs, **_extra(values, SUBNET_FIELDS), **self._subnet_options(values),
                     "updated_at": now()}
            subnet = replace(old, gateway_ip=gateway, allocation_pools=pools, attrs=attrs,
                             enable_dhcp=values.get("enable_dhcp", old.enable_dhcp))
            self._commit([subnet])
            self._notify(())
            return subnet

    @write
    def delete_subnet(self, subnet_id: str) -> None:
        """Delete a subnet (409 if a port other than an auto-deletable one has an address in it)."""
        with self.lock:
            subnet = self._subnet(subnet_id)
            holders = [p for p in self.graph.ports_of(subnet.network_id)
                       if any(f.subnet_id == subnet_id for f in p.fixed_ips)]
            if any(ipv6.blocks_deletion(subnet, p, AUTO_DELETE_OWNERS) for p in holders):
                raise Conflict("SubnetInUse", f"Unable to complete operation on subnet {subnet_id}: One or more "
                               "ports have an IP allocation from this subnet.")
            # Neutron takes the subnet's address away from its DHCP ports (and, on an auto-address
            # subnet, from every port but the routers') rather than refusing.
            stamp = now()
            changed = [replace(p, fixed_ips=tuple(f for f in p.fixed_ips if f.subnet_id != subnet_id),
                               attrs={**p.attrs, "updated_at": stamp}) for p in holders]
            self._commit([*changed, Deleted("subnet", subnet_id)])
            self._notify(self._dependents(subnet.network_id) if changed else ())

    # -- ports ------------------------------------------------------------------------------
    def _mac(self, net_id: str, requested: str | None, port_id: str | None = None) -> str:
        held = self.graph.network_index(net_id).macs  # MAC -> ports of the network having it
        own = self.graph.network_index(net_id).ports.get(port_id) if port_id is not None else None

        def in_use(mac: str) -> bool:  # by a port other than port_id
            return held.get(mac, 0) - (own is not None and own.mac_address == mac) > 0

        if requested is None:
            return ipam.generate_mac(in_use)
        mac = ipam.normalize_mac(requested)
        if in_use(mac):
            raise Conflict("MacAddressInUse", f"Unable to complete operation for network {net_id}. "
                           f"The mac address {mac} is in use.")
        return mac

    def _fixed_ips(self, net_id: str, requested: list[dict[str, str]] | None, device_owner: str,
                   current: Port | None = None, *, mac: str) -> tuple[FixedIP, ...]:
        if requested is not None:
            for req in requested:
                if not isinstance(req, dict) or set(req) - {"subnet_id", "ip_address"}:
                    raise ipam.invalid_input("fixed_ips entries take only subnet_id and ip_address")
                if req.get("subnet_id") is not None:
                    self._subnet(req["subnet_id"])
            if current is not None:
                requested = self._keep_current_ips(current, requested)
        index = self.graph.network_index(net_id)
        used = index.addresses  # subnet id -> addresses held there; read, never modified
        mine = index.ports.get(current.id) if current is not None else None
        if mine is not None:  # the port's own addresses are not in the way of its update (copies those subnets')
            used = dict(used)
            for sid in {f.subnet_id for f in mine.fixed_ips} & used.keys():
                used[sid] = used[sid].without(f.ip_address for f in mine.fixed_ips if f.subnet_id == sid)
        return ipv6.assign(net_id, self.graph.subnets_of(net_id), requested, used, device_owner, mac)

    @staticmethod
    def _keep_current_ips(port: Port, requested: list[dict[str, str]]) -> list[dict[str, str]]:
        """On update, ``{"subnet_id": s}`` keeps the address the port already has in s (as Neutron does)."""
        explicit = {r.get("ip_address") for r in requested}
        spare = [f for f in port.fixed_ips if f.ip_address not in explicit]
        out = []
        for req in requested:
            if req.get("ip_address") is None and req.get("subnet_id"):
                keep = next((f for f in spare if f.subnet_id == req["subnet_id"]), None)
                if keep is not None:
                    spare.remove(keep)
                    req = {"subnet_id": keep.subnet_id, "ip_address": keep.ip_address}
            out.append(req)
        return out

    @write
    def create_port(self, values: dict[str, Any]) -> Port:
        """Create a port: MAC and fixed IPs allocated (or checked), logical key allocated."""
        with self.lock:
            net = self._network(values.get("network_id"))
            owner = values.get("device_owner") or ""
            mac = self._mac(net.id, values.get("mac_address"))
            fixed_ips = self._fixed_ips(net.id, values.get("fixed_ips"), owner, mac=mac)
            project = values.get("project_id") or self.default_project
            security, made = self._port_security(values, net, None, project, mac)  # made: a default group
            stamp = now()
            attrs = {**_extra(values, PORT_FIELDS), **security, "created_at": stamp, "updated_at": stamp}
            if values.get("extra_dhcp_opts") is not None:  # (null values mean nothing on a new port)
                attrs["extra_dhcp_opts"] = dhcp_opts.merged([], values["extra_dhcp_opts"])
            port = Port(id=str(uuid.uuid4()), network_id=net.id, key=0, mac_address=mac, fixed_ips=fixed_ips,
                        project_id=project,
                        binding_host=values.get("binding:host_id") or None,
                        admin_state_up=values.get("admin_state_up", True), device_owner=owner,
                        device_id=values.get("device_id") or "", attrs=attrs)
            port = with_ct_zone(self.graph, port, None)
            before = self._dependents(net.id)
            key = self._next_key("port", 1, PORT_KEY_MAX)
            if key is None:
                raise Unavailable("PortKeyExhausted", "No logical port key is free.")
            port = replace(port, key=key)
            self._commit([*made, port])
            port = self.graph.port(port.id)
            self._notify(before | self._dependents(net.id) | {port.binding_host} | self._sg_dependents(port))
            return port

    @write
    def update_port(self, port_id: str, values: dict[str, Any]) -> Port:
        """Update a port (MAC, fixed IPs, binding, owner, admin state, names...); network_id is fixed."""
        with self.lock:
            old = self._port(port_id)
            if values.get("network_id", old.network_id) != old.network_id:
                raise ipam.invalid_input("network_id cannot be updated")
            owner = (values["device_owner"] or "") if "device_owner" in values else old.device_owner
            mac = self._mac(old.network_id, values["mac_address"], port_id) if "mac_address" in values \
                else old.mac_address
            # null (like absent) keeps the addresses (EUI-64 ones follow the MAC); [] removes them all.
            fixed_ips = ipv6.readdress(old.fixed_ips, {s.id: s for s in self.graph.subnets_of(old.network_id)},
                                       mac) if values.get("fixed_ips") is None else \
                self._fixed_ips(old.network_id, values["fixed_ips"], owner, old, mac=mac)
            security, _ = self._port_security(values, self._network(old.network_id), old, old.project_id, mac)
            host = (values["binding:host_id"] or None) if "binding:host_id" in values else old.binding_host
            attrs = {**old.attrs, **_extra(values, PORT_FIELDS), **security, "updated_at": now()}
            if values.get("extra_dhcp_opts") is not None:
                attrs["extra_dhcp_opts"] = dhcp_opts.merged(old.attrs.get("extra_dhcp_opts") or (),
                                                            values["extra_dhcp_opts"])
            elif "extra_dhcp_opts" in values:  # null: as absent
                attrs["extra_dhcp_opts"] = old.attrs.get("extra_dhcp_opts") or []
            port = replace(old, mac_address=mac, fixed_ips=fixed_ips, binding_host=host, device_owner=owner,
                           device_id=(values["device_id"] or "") if "device_id" in values else old.device_id,
                           admin_state_up=values.get("admin_state_up", old.admin_state_up), attrs=attrs)
            port = with_ct_zone(self.graph, port, old)
            before = self._dependents(old.network_id) | self._sg_port_change(old, port)
            self._commit([port])
            port = self.graph.port(port.id)
            self._notify(before | self._dependents(old.network_id) | {old.binding_host, host}
                         | self._sg_port_change(old, port))
            return port

    @write
    def delete_port(self, port_id: str) -> None:
        """Delete a port, releasing its addresses and key."""
        with self.lock:
            port = self._port(port_id)
            released = self._before_port_delete(port)  # 409 for router/FIP ports; FIPs to disassociate
            affected = self._dependents(port.network_id) | {port.binding_host} | self._sg_dependents(port)
            self._commit([*released, Deleted("port", port_id)])
            self._notify(affected)

    # -- hypervisors --------------------------------------------------------------------------
    def _dependents(self, net_id: str) -> set[str]:
        """Hypervisors whose flows depend on a network (hosting it, or routing to it)."""
        return graph_l3.hypervisors_depending_on(self.graph, (net_id,))

    def _neighbourhood(self, name: str) -> set[str]:
        """A hypervisor and every hypervisor sharing a network with it."""
        return {name} | graph_l3.hypervisors_depending_on(self.graph, self.graph.networks_on(name))

    def _hv_record(self, name: str, values: dict[str, Any], old: Hypervisor | None) -> Hypervisor:
        dpid = parse_datapath_id(values["datapath_id"]) if "datapath_id" in values else old.datapath_id
        tunnel_ip = str(ipam.parse_ip(values["tunnel_ip"], 4)) if "tunnel_ip" in values else old.tunnel_ip
        mappings = values.get("bridge_mappings", old.bridge_mappings if old else {})
        if not isinstance(mappings, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                     for k, v in mappings.items()):
            raise ipam.invalid_input("bridge_mappings must map physical network names to bridge names")
        gateway_for = values.get("gateway_for", old.gateway_for if old else ())
        if not isinstance(gateway_for, (list, tuple)) or not all(isinstance(p, str) and p for p in gateway_for) \
                or len(set(gateway_for)) != len(gateway_for):
            raise ipam.invalid_input("gateway_for must list distinct physical network names")
        other = self.graph.hypervisor_by_dpid(dpid)
        if other is not None and other.name != name:
            raise Conflict("DatapathIdInUse", f"Datapath id {dpid:016x} is already used by hypervisor {other.name}.")
        stamp = now()
        attrs = {**(old.attrs if old else {"created_at": stamp}), **_extra(values, HV_FIELDS), "updated_at": stamp}
        return Hypervisor(name=name, datapath_id=dpid, tunnel_ip=tunnel_ip, bridge_mappings=dict(mappings),
                          attrs=attrs, gateway_for=tuple(gateway_for))

    @write
    def register_hypervisor(self, values: dict[str, Any]) -> Hypervisor:
        """Register a hypervisor (name, datapath_id, tunnel_ip, bridge_mappings, gateway_for)."""
        with self.lock:
            name = values.get("name")
            if not isinstance(name, str) or not name or "/" in name or len(name) > 255:
                raise ipam.invalid_input(f"'{name}' is not a valid hypervisor name")
            for required in ("datapath_id", "tunnel_ip"):
                if values.get(required) is None:
                    raise BadRequest("HTTPBadRequest", f"Failed to parse request. Required attribute "
                                     f"'{required}' not specified")
            if self.graph.hypervisor(name) is not None:
                raise Conflict("HypervisorExists", f"Hypervisor {name} already exists.")
            hv = self._hv_record(name, values, None)
            self._commit([hv, *self._gateway_lists(name, hv)])
            self._notify(self._neighbourhood(name))
            return hv

    @write
    def update_hypervisor(self, name: str, values: dict[str, Any]) -> Hypervisor:
        """Update a hypervisor's datapath id, tunnel IP, bridge mappings or gateway_for (physical networks)."""
        with self.lock:
            old = self._hypervisor(name)
            if values.get("name", name) != name:
                raise ipam.invalid_input("name cannot be updated")
            hv = self._hv_record(name, values, old)
            self._commit([hv, *self._gateway_lists(name, hv)])
            self._notify(self._neighbourhood(name))
            return hv

    @write
    def delete_hypervisor(self, name: str) -> None:
        """Forget a hypervisor (ports stay bound to its name, waiting for it to come back)."""
        with self.lock:
            self._hypervisor(name)
            affected = self._neighbourhood(name)
            self._commit([Deleted("hv", name), *self._gateway_lists(name, None)])
            self._notify(affected)
