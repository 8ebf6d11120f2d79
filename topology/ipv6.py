"""IPv6 subnet modes and EUI-64 (SLAAC) addresses, with Neutron's rules.

A subnet whose ``ipv6_address_mode`` is ``slaac`` or ``dhcpv6-stateless`` is an
*auto-address* subnet: a port's address there is not allocated but derived
from its MAC (EUI-64, RFC 4291), so every port of the network gets one, and a
requested address must be that one. Router interfaces are the exception: they
take the subnet's gateway address (or an explicit one) as on any subnet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import netaddr

from topology import ipam
from topology.model import FixedIP, Port, Subnet
from topology.model_l3 import ROUTER_OWNERS
from topology.store import Conflict

AUTO_ADDRESS_MODES = ("slaac", "dhcpv6-stateless")
ROUTER_INTERFACE_OWNERS = frozenset({"network:router_interface", "network:router_interface_distributed",
                                     "network:ha_router_replicated_interface"})
# Ports that get no address of an auto-address subnet created after them (Neutron's
# add_auto_addrs_on_network_ports skips ROUTER_INTERFACE_OWNERS_SNAT + ROUTER_PORT_OWNERS).
NO_LATE_AUTO_ADDRESS = ROUTER_OWNERS | {"network:router_centralized_snat"}


def is_auto_address(subnet: Subnet) -> bool:
    """Whether addresses on this subnet are EUI-64 addresses derived from the port's MAC."""
    return subnet.ip_version == 6 and subnet.attrs.get("ipv6_address_mode") in AUTO_ADDRESS_MODES


def eui64(subnet: Subnet, mac: str) -> str:
    """The EUI-64 address of ``mac`` in the subnet's /64 prefix."""
    return str(netaddr.EUI(mac).ipv6(netaddr.IPNetwork(subnet.cidr).network))


def check_modes(values: Mapping[str, Any], cidr: netaddr.IPNetwork) -> None:
    """Validate ``ipv6_ra_mode``/``ipv6_address_mode`` of a new subnet as Neutron does (400s)."""
    ra, addr = values.get("ipv6_ra_mode"), values.get("ipv6_address_mode")
    if ra is None and addr is None:
        return
    if cidr.version == 4:
        raise ipam.invalid_input("ipv6_ra_mode or ipv6_address_mode cannot be set when ip_version is 4")
    if not values.get("enable_dhcp", True):
        raise ipam.invalid_input("ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False")
    if ra is not None and addr is not None and ra != addr:
        raise ipam.invalid_input(f"ipv6_ra_mode set to '{ra}' with ipv6_address_mode set to '{addr}' is not "
                                 "valid. If both attributes are set, they must be the same value")
    if addr in AUTO_ADDRESS_MODES and cidr.prefixlen != 64:
        raise ipam.invalid_input(f"Invalid CIDR {cidr} for IPv6 address mode. OpenStack uses the EUI-64 address "
                                 "format, which requires the prefix to be /64")


def assign(network_id: str, subnets: list[Subnet], requested: list[Mapping[str, str]] | None,
           used: Mapping[str, set[str]], device_owner: str, mac: str) -> tuple[FixedIP, ...]:
    """:func:`topology.ipam.assign_fixed_ips` with auto-address subnets handled Neutron's way.

    No request: the usual picks plus the EUI-64 address on every auto-address
    subnet. Requests naming an auto-address subnet (by id or by an address in it)
    get the EUI-64 address; an explicit different address is a 400. Requests or not,
    a port (not a router interface) has its EUI-64 address on every auto-address subnet
    of its network, as in Neutron (``_get_auto_address_ips`` on create; kept on update).
    """
    auto = {} if device_owner in ROUTER_INTERFACE_OWNERS else {s.id: s for s in subnets if is_auto_address(s)}
    if not auto:
        return ipam.assign_fixed_ips(network_id, subnets, requested, used, device_owner)
    others = [s for s in subnets if s.id not in auto]
    if requested is None:
        base = ipam.assign_fixed_ips(network_id, others, None, used, device_owner) if others else ()
    else:
        rest = []
        for req in requested:
            sub = _auto_target(req, auto)
            if sub is None:
                rest.append(req)
                continue
            want = eui64(sub, mac)
            if req.get("ip_address") is not None and str(ipam.parse_ip(req["ip_address"])) != want:
                raise ipam.invalid_input(f"IPv6 address {req['ip_address']} can not be directly assigned to a port "
                                         f"on subnet {sub.id} since the subnet is configured for automatic "
                                         f"addresses")
        base = ipam.assign_fixed_ips(network_id, others, rest, used, device_owner) if rest else ()
    out = list(base)
    for sub in auto.values():
        addr = eui64(sub, mac)
        if addr in used.get(sub.id, set()):
            raise Conflict("IpAddressAlreadyAllocated", f"IP address {addr} already allocated in subnet {sub.id}")
        out.append(FixedIP(sub.id, addr))
    return tuple(out)


def _auto_target(req: Mapping[str, str], auto: dict[str, Subnet]) -> Subnet | None:
    if req.get("subnet_id") is not None:
        return auto.get(req["subnet_id"])
    if req.get("ip_address") is None:
        return None
    ip = ipam.parse_ip(req["ip_address"])
    return next((s for s in auto.values() if ip in netaddr.IPNetwork(s.cidr)), None)


def readdress(port_fixed_ips: tuple[FixedIP, ...], subnets: dict[str, Subnet], mac: str) -> tuple[FixedIP, ...]:
    """A port's fixed IPs after a MAC change: its EUI-64 addresses follow the new MAC."""
    return tuple(FixedIP(f.subnet_id, eui64(subnets[f.subnet_id], mac))
                 if f.subnet_id in subnets and is_auto_address(subnets[f.subnet_id]) else f
                 for f in port_fixed_ips)


def late_addresses(subnet: Subnet, ports: list[Port]) -> list[Port]:
    """The ports of an auto-address subnet's network, created before it, with their EUI-64 address in it added.

    As Neutron does (``add_auto_addrs_on_network_ports``): without it a VM that configures its
    address from the new prefix's router advertisements would be dropped by its port security.
    Router ports are left alone (an interface on the subnet is added explicitly).
    """
    if not is_auto_address(subnet):
        return []
    return [replace(p, fixed_ips=(*p.fixed_ips, FixedIP(subnet.id, eui64(subnet, p.mac_address))))
            for p in ports if p.device_owner not in NO_LATE_AUTO_ADDRESS
            and not any(f.subnet_id == subnet.id for f in p.fixed_ips)]


def blocks_deletion(subnet: Subnet, port: Port, auto_deletable: frozenset[str]) -> bool:
    """Whether ``port``'s address on ``subnet`` keeps the subnet from being deleted (a 409).

    On an auto-address subnet only a router interface does (Neutron deletes the EUI-64
    addresses of every other port with the subnet); elsewhere any port but the network's own.
    """
    if is_auto_address(subnet):
        return port.device_owner in ROUTER_OWNERS
    return port.device_owner not in auto_deletable
