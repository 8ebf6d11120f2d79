"""Neutron's ``extra_dhcp_opt`` extension: the DHCP options a port may carry, checked and encoded.

A port's ``extra_dhcp_opts`` is a list of ``{"opt_name", "opt_value", "ip_version"}``. Names are
the ones Neutron's DHCP agent passes to dnsmasq, for ``ip_version`` 4 (the default) those of
``dnsmasq --help dhcp`` (``tftp-server``, ``bootfile-name``, ``server-ip-address``, ...), for
``ip_version`` 6 those of ``dnsmasq --help dhcp6`` (``dns-server``, ``domain-search``,
``ntp-server``, ``bootfile-url``, ...), or an option number; a name of the other IP version is
refused. Values are dnsmasq's: text, a number, comma-separated addresses (IPv6 ones bare or in
dnsmasq's brackets), comma-separated domain names (DNS wire format, RFC 8415 10), or for
``bootfile-param`` comma-separated parameters (RFC 5970: each with a 16-bit length). DHCPv6's
``ntp-server`` is RFC 5908's: each address a server-address suboption (a multicast one a
multicast-address suboption), each name a server-FQDN suboption. An option number without a
name takes its value as text. A name or value this module cannot encode is refused when the
port is written, never at lease time. On update, options are merged by (name, IP version) as
Neutron does, and an option whose ``opt_value`` is null is removed.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import netaddr

from topology import ipam

ADDRESSES, TEXT, U16, U32, SIADDR = "addresses", "text", "u16", "u32", "siaddr"
DOMAINS, PARAMS, NTP, TIME = "domains", "params", "ntp", "time"  # (DHCPv6's)
# dnsmasq's names (``dnsmasq --help dhcp``) of the options a VM's boot may need -> (code, kind)
NAMED: dict[str, tuple[int, str]] = {
    "router": (3, ADDRESSES), "dns-server": (6, ADDRESSES), "log-server": (7, ADDRESSES),
    "hostname": (12, TEXT), "domain-name": (15, TEXT), "root-path": (17, TEXT), "mtu": (26, U16),
    "ntp-server": (42, ADDRESSES), "netbios-ns": (44, ADDRESSES), "tftp-server": (66, TEXT),
    "bootfile-name": (67, TEXT), "tftp-server-address": (150, ADDRESSES),
    "server-ip-address": (0, SIADDR),  # the BOOTP header's next-server (siaddr), not an option
}
# what the controller itself sets from the subnet (message type, lease times, server id, mask...): not a port's
RESERVED = frozenset({0, 1, 50, 51, 53, 54, 55, 58, 59, 255})
# dnsmasq's DHCPv6 names (``dnsmasq --help dhcp6``) except its internal ones (client-id, ia-na, oro, FQDN...)
NAMED6: dict[str, tuple[int, str]] = {
    "sip-server-domain": (21, DOMAINS), "sip-server": (22, ADDRESSES), "dns-server": (23, ADDRESSES),
    "domain-search": (24, DOMAINS), "nis-server": (27, ADDRESSES), "nis+-server": (28, ADDRESSES),
    "nis-domain": (29, DOMAINS), "nis+-domain": (30, DOMAINS), "sntp-server": (31, ADDRESSES),
    "information-refresh-time": (32, TIME), "posix-timezone": (41, TEXT), "tzdb-timezone": (42, TEXT),
    "ntp-server": (56, NTP), "bootfile-url": (59, TEXT), "bootfile-param": (60, PARAMS),
    "captive-portal": (103, TEXT),
}
# DHCPv6's own machinery, which the server sets or a client or relay sends (RFC 8415 21, RFC 4704's client
# FQDN, RFC 4649's and 4580's relay options, RFC 6939's client link-layer address): not a port's
RESERVED6 = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 25, 26, 37, 38, 39, 79})
NTP_SERVER_ADDRESS, NTP_MULTICAST_ADDRESS, NTP_SERVER_FQDN = 1, 2, 3  # RFC 5908 4's suboptions
TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}  # dnsmasq's suffixes
LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


@dataclass(frozen=True)
class Family:
    """The options of one IP version: dnsmasq's names, the numbers the server keeps, the bounds of options."""

    version: int
    named: Mapping[str, tuple[int, str]]
    reserved: frozenset[int]
    max_code: int
    max_length: int  # of one option's value
    kinds_by_code: Mapping[int, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds_by_code", {code: kind for code, kind in self.named.values() if code})


FAMILIES = {4: Family(4, NAMED, RESERVED, 254, 255), 6: Family(6, NAMED6, RESERVED6, 65535, 65535)}


def code_and_kind(name: str, version: int = 4) -> tuple[int, str]:
    """The option number and value kind of ``name`` (a dnsmasq name or a number) for IP ``version``; 400 if unknown."""
    family = FAMILIES[version]
    if name in family.named:
        return family.named[name]
    if name.isdigit() and 1 <= int(name) <= family.max_code:
        code = int(name)
        if code in family.reserved:
            raise ipam.invalid_input(f"DHCP{'v6' if version == 6 else ''} option {code} is set by the server, "
                                     "not by a port")
        return code, family.kinds_by_code.get(code, TEXT)
    other = next((v for v, f in FAMILIES.items() if v != version and name in f.named), None)
    hint = f"it is an IPv{other} option (ip_version {other})" if other else \
        f"use one of {sorted(family.named)} or an option number"
    raise ipam.invalid_input(f"Unknown extra DHCP option '{name}'{' for IPv6' if version == 6 else ''}: {hint}")


def encode(name: str, value: str, version: int = 4) -> tuple[int, bytes]:
    """(option number, its value's bytes) for IP ``version``; for IPv4, option number 0 for ``server-ip-address``
    (4 address bytes, the BOOTP header's next-server)."""
    code, kind = code_and_kind(name, version)
    family = FAMILIES[version]
    try:
        data = ENCODERS[kind](value, version)
    except (ValueError, netaddr.AddrFormatError, struct.error, UnicodeError):
        raise ipam.invalid_input(f"Invalid value '{value}' for extra DHCP option '{name}'") from None
    if not 1 <= len(data) <= family.max_length:
        raise ipam.invalid_input(f"Invalid value for extra DHCP option '{name}': 1 to {family.max_length} bytes")
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
        if value is not None:
            encode(name, value, int(version))
        out.append({"opt_name": name, "opt_value": value, "ip_version": int(version)})
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


def served(opts: Iterable[Mapping[str, Any]], version: int) -> tuple[tuple[int, bytes], ...]:
    """The stored options of IP ``version``, encoded (as checked when the port was written)."""
    return tuple(encode(o["opt_name"], o["opt_value"], version)
                 for o in opts if int(o.get("ip_version", 4)) == version)


def dns_names(names: Iterable[str]) -> bytes:
    """Domain names in DNS wire format (RFC 1035 3.1, uncompressed as RFC 8415 10 wants them)."""
    return b"".join(b"".join(bytes([len(label)]) + label.encode() for label in name.strip(".").split(".")) + b"\0"
                    for name in names)


def _items(value: str) -> list[str]:
    """The comma-separated items of a value, stripped; ValueError if one is empty."""
    items = [item.strip() for item in value.split(",")]
    if not all(items):
        raise ValueError(value)
    return items


def _address(item: str, version: int) -> netaddr.IPAddress:
    """One address (an IPv6 one bare or in dnsmasq's brackets)."""
    if version == 6 and item.startswith("[") and item.endswith("]"):
        item = item[1:-1]
    return netaddr.IPAddress(item, version)


def _addresses(value: str, version: int) -> bytes:
    return b"".join(_address(a.strip(), version).packed for a in value.split(","))


def _siaddr(value: str, version: int) -> bytes:
    if "," in value:
        raise ValueError(value)
    return _addresses(value, version)


def _domains(value: str, version: int) -> bytes:
    names = [item.rstrip(".") for item in _items(value)]
    if not all(_domain_ok(name) for name in names):
        raise ValueError(value)
    return dns_names(names)


def _domain_ok(name: str) -> bool:
    """A host or domain name of letters, digits, hyphens and underscores, in labels of 1 to 63, 253 at most."""
    return len(name) <= 253 and all(LABEL.fullmatch(label) for label in name.split("."))


def _params(value: str, version: int) -> bytes:
    """RFC 5970 3.2's boot file parameters: each a 16-bit length and its text."""
    return b"".join(struct.pack("!H", len(item.encode())) + item.encode() for item in _items(value))


def _ntp(value: str, version: int) -> bytes:
    """RFC 5908's NTP server option: a suboption per address (server or multicast) or name (server FQDN)."""
    out = b""
    for item in _items(value):
        if ":" in item:
            address = _address(item, version)
            kind, data = NTP_MULTICAST_ADDRESS if address.is_multicast() else NTP_SERVER_ADDRESS, address.packed
        elif netaddr.valid_ipv4(item):  # neither an IPv6 address nor a name
            raise ValueError(item)
        else:
            kind, data = NTP_SERVER_FQDN, _domains(item, version)
        out += struct.pack("!HH", kind, len(data)) + data
    return out


def _time(value: str, version: int) -> bytes:
    """Seconds, or dnsmasq's ``<n>s``, ``m``, ``h``, ``d``, ``w`` (32 bits)."""
    match = re.fullmatch(r"\s*([0-9]+)([smhdw]?)\s*", value, re.IGNORECASE)
    if match is None:
        raise ValueError(value)
    return struct.pack("!I", int(match[1]) * TIME_UNITS[match[2].lower()])


def _number(fmt: str) -> Callable[[str, int], bytes]:
    return lambda value, version: struct.pack(fmt, int(value))


ENCODERS: dict[str, Callable[[str, int], bytes]] = {
    ADDRESSES: _addresses, SIADDR: _siaddr, U16: _number("!H"), U32: _number("!I"),
    TEXT: lambda value, version: value.encode(), DOMAINS: _domains, PARAMS: _params, NTP: _ntp, TIME: _time,
}
