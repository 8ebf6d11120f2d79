"""Neutron's ``extra_dhcp_opt`` extension: the DHCP options a port may carry, checked and encoded.

A port's ``extra_dhcp_opts`` is a list of ``{"opt_name", "opt_value", "ip_version"}``. Names are
the ones Neutron's DHCP agent passes to dnsmasq (``tftp-server``, ``bootfile-name``,
``server-ip-address``, ...) or an option number; values are dnsmasq's: text, a number, or
comma-separated addresses. Only IPv4 options are served (``ip_version`` 4, the default); a
name or value this module cannot encode is refused when the port is written, never at lease
time. On update, options are merged by (name, IP version) as Neutron does, and an option
whose ``opt_value`` is null is removed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

import netaddr

from topology import ipam

ADDRESSES, TEXT, U16, U32, SIADDR = "addresses", "text", "u16", "u32", "siaddr"
# dnsmasq's names (``dnsmasq --help dhcp``) of the options a VM's boot may need -> (code, kind)
NAMED: dict[str, tuple[int, str]] = {
    "router": (3, ADDRESSES), "dns-server": (6, ADDRESSES), "log-server": (7, ADDRESSES),
    "hostname": (12, TEXT), "domain-name": (15, TEXT), "root-path": (17, TEXT), "mtu": (26, U16),
    "ntp-server": (42, ADDRESSES), "netbios-ns": (44, ADDRESSES), "tftp-server": (66, TEXT),
    "bootfile-name": (67, TEXT), "tftp-server-address": (150, ADDRESSES),
    "server-ip-address": (0, SIADDR),  # the BOOTP header's next-server (siaddr), not an option
}
KINDS_BY_CODE = {code: kind for code, kind in NAMED.values() if code}
# what the controller itself sets from the subnet (message type, lease times, server id, mask...): not a port's
RESERVED = frozenset({0, 1, 50, 51, 53, 54, 55, 58, 59, 255})


def code_and_kind(name: str) -> tuple[int, str]:
    """The option number and value kind of ``name`` (a dnsmasq name or a number); 400 if unknown."""
    if name in NAMED:
        return NAMED[name]
    if name.isdigit() and 1 <= int(name) <= 254:
        code = int(name)
        if code in RESERVED:
            raise ipam.invalid_input(f"DHCP option {code} is set by the server, not by a port")
        return code, KINDS_BY_CODE.get(code, TEXT)
    raise ipam.invalid_input(f"Unknown extra DHCP option '{name}': use one of {sorted(NAMED)} or an option number")


def encode(name: str, value: str) -> tuple[int, bytes]:
    """(option number, its value's bytes); option number 0 for ``server-ip-address`` (4 address bytes)."""
    code, kind = code_and_kind(name)
    try:
        if kind in (ADDRESSES, SIADDR):
            addresses = [netaddr.IPAddress(a.strip(), 4) for a in value.split(",")]
            if kind == SIADDR and len(addresses) != 1:
                raise ValueError
            return code, b"".join(a.packed for a in addresses)
        if kind in (U16, U32):
            return code, struct.pack("!H" if kind == U16 else "!I", int(value))
    except (ValueError, netaddr.AddrFormatError, struct.error):
        raise ipam.invalid_input(f"Invalid value '{value}' for extra DHCP option '{name}'") from None
    data = value.encode()
    if not 1 <= len(data) <= 255:
        raise ipam.invalid_input(f"Invalid value for extra DHCP option '{name}': 1 to 255 bytes")
    return code, data


def checked(opts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The options of a request, each checked (names, values, IP versions), as stored."""
    out = []
    for opt in opts:
        name, value, version = opt.get("opt_name"), opt.get("opt_value"), opt.get("ip_version", 4)
        if not isinstance(name, str) or not (value is None or isinstance(value, str)):
            raise ipam.invalid_input("extra_dhcp_opts entries need an opt_name and an opt_value (text or null)")
        if version not in (4, 6, "4", "6"):
            raise ipam.invalid_input(f"Invalid ip_version '{version}' for extra DHCP option '{name}'")
        if int(version) == 6:
            raise ipam.invalid_input("Extra DHCP options for IPv6 are not supported")
        if value is not None:
            encode(name, value)
        out.append({"opt_name": name, "opt_value": value, "ip_version": 4})
    return out


def merged(old: Iterable[Mapping[str, Any]], update: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Neutron's update: by (name, IP version), the new value replaces the old; a null value removes it."""
    by_key = {(o["opt_name"], o["ip_version"]): dict(o) for o in old}
    for opt in checked(update):
        key = (opt["opt_name"], opt["ip_version"])
        if opt["opt_value"] is None:
            by_key.pop(key, None)
        else:
            by_key[key] = opt
    return list(by_key.values())
