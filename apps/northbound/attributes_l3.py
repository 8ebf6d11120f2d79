"""Attribute maps of routers, floating IPs, security groups and rules (see :mod:`apps.northbound.attributes`).

Converters defined here carry their JSON Schema as a ``schema`` attribute, so
the OpenAPI document (:mod:`apps.northbound.schema`) describes them too.
"""

from __future__ import annotations

from typing import Any

from apps.northbound.attributes import (
    COMMON,
    NAME,
    PROJECT,
    Attr,
    _bad,
    boolean,
    dict_of,
    integer,
    list_of,
    one_of,
    or_none,
    string,
    string_or_none,
)

FIXED_IP = dict_of({"subnet_id", "ip_address"})
ROUTE = dict_of({"destination", "nexthop"}, {"destination", "nexthop"})


def gateway_info(name: str, value: Any) -> dict[str, Any] | None:
    """A router's ``external_gateway_info``: {network_id, enable_snat, external_fixed_ips}, or null/{}."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(name, value, "is not a dictionary")
    unknown = set(value) - {"network_id", "enable_snat", "external_fixed_ips"}
    if unknown:
        raise _bad(name, value, f"has unknown keys {sorted(unknown)}")
    out: dict[str, Any] = {}
    if "network_id" in value:
        out["network_id"] = string_or_none(name, value["network_id"])
    if "enable_snat" in value:
        out["enable_snat"] = boolean(name, value["enable_snat"])
    if value.get("external_fixed_ips") is not None:
        out["external_fixed_ips"] = list_of(FIXED_IP)(name, value["external_fixed_ips"])
    return out


gateway_info.schema = {"anyOf": [{"type": "null"}, {
    "type": "object", "additionalProperties": False,
    "properties": {"network_id": {"type": ["string", "null"]}, "enable_snat": {"type": "boolean"},
                   "external_fixed_ips": {"anyOf": [{"type": "null"}, {"type": "array", "items": {
                       "type": "object", "additionalProperties": False,
                       "properties": {"subnet_id": {"type": "string"}, "ip_address": {"type": "string"}}}}]}}}]}


def ethertype(name: str, value: Any) -> str:
    """``IPv4`` or ``IPv6``, in any case (Neutron converts it)."""
    if isinstance(value, str):
        for choice in ("IPv4", "IPv6"):
            if value.lower() == choice.lower():
                return choice
    raise _bad(name, value, "is not in ['IPv4', 'IPv6']")


ethertype.schema = {"enum": ["IPv4", "IPv6"]}


def protocol(name: str, value: Any) -> str | int | None:
    """A protocol name or number (checked by the topology, which has Neutron's list), or null."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return string(name, value)


protocol.schema = {"anyOf": [{"type": "string", "maxLength": 255}, {"type": "integer"}, {"type": "null"}]}

ROUTER = {
    **COMMON,
    "admin_state_up": Attr(boolean),
    "external_gateway_info": Attr(gateway_info),
    "routes": Attr(or_none(list_of(ROUTE)), post=False),  # extraroute: PUT only, as Neutron
    # Where the gateway's source NAT runs (ours; admin): the operator moves it by reordering.
    "gateway_hypervisors": Attr(list_of(string), post=False),
}

FLOATINGIP = {
    "description": NAME,
    "project_id": PROJECT,
    "tenant_id": PROJECT,
    "floating_network_id": Attr(string, put=False, required=True),
    "floating_ip_address": Attr(string_or_none, put=False),
    "subnet_id": Attr(string_or_none, put=False),
    "port_id": Attr(string_or_none),
    "fixed_ip_address": Attr(string_or_none),
}

SECURITY_GROUP = {
    **COMMON,
    "stateful": Attr(boolean),
}

SECURITY_GROUP_RULE = {
    "description": NAME,
    "project_id": PROJECT,
    "tenant_id": PROJECT,
    "security_group_id": Attr(string, put=False, required=True),
    "direction": Attr(one_of("ingress", "egress"), put=False, required=True),
    "ethertype": Attr(ethertype, put=False),
    "protocol": Attr(protocol, put=False),
    "port_range_min": Attr(or_none(integer(0, 65535)), put=False),
    "port_range_max": Attr(or_none(integer(0, 65535)), put=False),
    "remote_ip_prefix": Attr(string_or_none, put=False),
    "remote_group_id": Attr(string_or_none, put=False),
}
