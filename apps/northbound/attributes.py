"""Neutron's resource attribute maps: which attributes exist, their types, POST/PUT rules.

Like Neutron's ``RESOURCE_ATTRIBUTE_MAP``, this is the API's first line of
validation: unknown attributes, read-only ones and wrong JSON types are
rejected here with a 400; everything that depends on state (does the network
exist, is the address free...) is the topology's job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from topology.store import BadRequest

Converter = Callable[[str, Any], Any]


def _bad(name: str, value: Any, reason: str) -> BadRequest:
    return BadRequest("HTTPBadRequest", f"Invalid input for {name}. Reason: '{value}' {reason}.")


def string(name: str, value: Any) -> str:
    """A string of at most 255 characters."""
    if not isinstance(value, str):
        raise _bad(name, value, "is not a valid string")
    if len(value) > 255:
        raise _bad(name, value[:16] + "...", "exceeds maximum length of 255")
    return value


def string_or_none(name: str, value: Any) -> str | None:
    """A string, or null."""
    return None if value is None else string(name, value)


def boolean(name: str, value: Any) -> bool:
    """A boolean; like Neutron, also "true"/"false" strings and 0/1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _bad(name, value, "cannot be converted to boolean")


def integer(lo: int, hi: int) -> Converter:
    """An integer in [lo, hi] (a JSON number or a decimal string; never a boolean)."""
    def convert(name: str, value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):  # not isdigit(): "²", "--5"
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, value, "is not an integer")
        if not lo <= value <= hi:
            raise _bad(name, value, f"is out of range {lo}-{hi}")
        return value
    return convert


def or_none(convert: Converter) -> Converter:
    """``convert``, or null."""
    return lambda name, value: None if value is None else convert(name, value)


def one_of(*choices: Any) -> Converter:
    """A value among ``choices``."""
    def convert(name: str, value: Any) -> Any:
        if value not in choices:
            raise _bad(name, value, f"is not in {list(choices)}")
        return value
    return convert


def list_of(item: Converter) -> Converter:
    """A JSON list whose items pass ``item``."""
    def convert(name: str, value: Any) -> list:
        if not isinstance(value, list):
            raise _bad(name, value, "is not a list")
        return [item(name, v) for v in value]
    return convert


def dict_of(keys: set[str], required: set[str] = frozenset()) -> Converter:
    """A JSON object with only ``keys`` (string values), ``required`` among them."""
    def convert(name: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise _bad(name, value, "is not a dictionary")
        if set(value) - keys or required - set(value):
            raise _bad(name, value, f"must have keys {sorted(required)} and may have {sorted(keys)}")
        return {k: string(name, v) for k, v in value.items()}
    return convert


def extra_dhcp_opt(name: str, value: Any) -> dict[str, Any]:
    """One ``{"opt_name", "opt_value", "ip_version"}`` of the extra_dhcp_opt extension (the shape; what
    the name and value mean is checked when the port is written: topology.dhcp_opts)."""
    if not isinstance(value, dict) or set(value) - {"opt_name", "opt_value", "ip_version"} or "opt_name" not in value:
        raise _bad(name, value, "must have opt_name and may have opt_value and ip_version")
    out: dict[str, Any] = {"opt_name": string(name, value["opt_name"]),
                           "opt_value": string_or_none(name, value.get("opt_value"))}
    if value.get("ip_version") is not None:
        out["ip_version"] = integer(4, 6)(name, value["ip_version"])
    return out


extra_dhcp_opt.schema = {  # type: ignore[attr-defined]
    "type": "object", "required": ["opt_name"], "additionalProperties": False,
    "properties": {"opt_name": {"type": "string", "maxLength": 255},
                   "opt_value": {"type": ["string", "null"], "maxLength": 255},
                   "ip_version": {"anyOf": [{"enum": [4, 6]}, {"type": "string", "pattern": "^\\s*[46]\\s*$"}]}}}


def str_map(name: str, value: Any) -> dict[str, str]:
    """A JSON object of strings to strings."""
    if not isinstance(value, dict):
        raise _bad(name, value, "is not a dictionary")
    return {string(name, k): string(name, v) for k, v in value.items()}


def any_dict(name: str, value: Any) -> dict:
    """Any JSON object (e.g. ``binding:profile``, opaque to us)."""
    if not isinstance(value, dict):
        raise _bad(name, value, "is not a dictionary")
    return value


def datapath_id(name: str, value: Any) -> int | str:
    """An int or a string; :func:`topology.state.parse_datapath_id` checks the format."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _bad(name, value, "is not a datapath id")
    return value


@dataclass(frozen=True)
class Attr:
    """One attribute: how to convert it, whether POST/PUT may set it, whether POST needs it."""

    convert: Converter
    post: bool = True
    put: bool = True
    required: bool = False


NAME = Attr(string)
PROJECT = Attr(string, put=False)
COMMON = {"name": NAME, "description": NAME, "project_id": PROJECT, "tenant_id": PROJECT}

NETWORK = {
    **COMMON,
    "admin_state_up": Attr(boolean),
    "shared": Attr(boolean),
    "router:external": Attr(boolean),
    "port_security_enabled": Attr(boolean),
    "mtu": Attr(integer(68, 9216)),
    "provider:network_type": Attr(string),
    "provider:physical_network": Attr(string_or_none),
    "provider:segmentation_id": Attr(or_none(integer(0, 2**24 - 1))),
}

SUBNET = {
    **COMMON,
    "network_id": Attr(string, put=False, required=True),
    "cidr": Attr(string, put=False, required=True),
    "ip_version": Attr(one_of(4, 6), put=False),
    "gateway_ip": Attr(string_or_none),
    "allocation_pools": Attr(or_none(list_of(dict_of({"start", "end"}, {"start", "end"})))),
    "enable_dhcp": Attr(boolean),
    "dns_nameservers": Attr(list_of(string)),
    "host_routes": Attr(list_of(dict_of({"destination", "nexthop"}, {"destination", "nexthop"}))),
    "ipv6_ra_mode": Attr(or_none(one_of("slaac", "dhcpv6-stateful", "dhcpv6-stateless")), put=False),
    "ipv6_address_mode": Attr(or_none(one_of("slaac", "dhcpv6-stateful", "dhcpv6-stateless")), put=False),
}

PORT = {
    **COMMON,
    "network_id": Attr(string, put=False, required=True),
    "admin_state_up": Attr(boolean),
    "mac_address": Attr(string),
    "fixed_ips": Attr(or_none(list_of(dict_of({"subnet_id", "ip_address"})))),
    "binding:host_id": Attr(string_or_none),
    "binding:vnic_type": Attr(one_of("normal")),  # only what an OVS port can be
    "binding:profile": Attr(any_dict),
    "device_owner": Attr(string_or_none),
    "device_id": Attr(string_or_none),
    "security_groups": Attr(list_of(string)),
    "port_security_enabled": Attr(boolean),
    "allowed_address_pairs": Attr(list_of(dict_of({"ip_address", "mac_address"}, {"ip_address"}))),
    "extra_dhcp_opts": Attr(or_none(list_of(extra_dhcp_opt))),
}

HYPERVISOR = {
    "name": Attr(string, put=False, required=True),
    "description": NAME,
    "datapath_id": Attr(datapath_id, required=True),
    "tunnel_ip": Attr(string, required=True),
    "bridge_mappings": Attr(str_map),
    "gateway_for": Attr(list_of(string)),  # physical networks it is a gateway for (topology.gateways)
}


def convert_body(attributes: dict[str, Attr], body: Any, *, create: bool) -> dict[str, Any]:
    """Check a resource body against its attribute map and return the converted values."""
    if not isinstance(body, dict):
        raise BadRequest("HTTPBadRequest", "Resource body must be a JSON object.")
    unknown = sorted(set(body) - set(attributes))
    if unknown:
        raise BadRequest("HTTPBadRequest", f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    values: dict[str, Any] = {}
    for name, value in body.items():
        attr = attributes[name]
        if create and not attr.post:
            raise BadRequest("HTTPBadRequest", f"Attribute '{name}' not allowed in POST")
        if not create and not attr.put:
            raise BadRequest("HTTPBadRequest", f"Cannot update read-only attribute {name}")
        values[name] = attr.convert(name, value)
    if create:
        for name, attr in attributes.items():
            if attr.required and name not in values:
                raise BadRequest("HTTPBadRequest",
                                 f"Failed to parse request. Required attribute '{name}' not specified")
    project, tenant = values.pop("project_id", None), values.pop("tenant_id", None)
    if project and tenant and project != tenant:
        raise BadRequest("HTTPBadRequest", "'project_id' and 'tenant_id' do not match")
    if project or tenant:
        values["project_id"] = project or tenant
    return values
