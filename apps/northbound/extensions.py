"""``GET /v2.0/extensions``: exactly the Neutron extensions this API implements.

Each extension (name, alias, description and timestamp as ``neutron-lib``
defines them) names what it needs from the live API: collections, attributes
shown by a collection, member actions (``PUT /v2.0/routers/{id}/add_router_interface``).
The list is computed from the API's resources and routes, so an extension
appears the moment its resource or attribute is added, and never before.
Shim extensions (``pagination``, ``sorting``, ``filter-validation``...) name
what :mod:`apps.northbound.collections` implements for every collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from apps.northbound import schema


@dataclass(frozen=True)
class Extension:
    alias: str
    name: str
    description: str
    updated: str
    collections: tuple[str, ...] = ()  # each must be served
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # collection -> keys it must show
    actions: tuple[tuple[str, str], ...] = ()  # (collection, member action) each must be routed

    def view(self) -> dict[str, Any]:
        """As Neutron shows an extension."""
        return {"name": self.name, "alias": self.alias, "description": self.description,
                "updated": self.updated, "links": []}


EXTENSIONS = (
    # shims: what every collection GET does (apps.northbound.collections)
    Extension("pagination", "Pagination support", "Extension that indicates that pagination is enabled.",
              "2016-06-12T00:00:00-00:00"),
    Extension("sorting", "Sorting support", "Extension that indicates that sorting is enabled.",
              "2016-06-12T00:00:00-00:00"),
    Extension("filter-validation", "Filter parameters validation", "Provides validation on filter parameters.",
              "2018-07-04T10:00:00-00:00"),
    Extension("empty-string-filtering", "Empty String Filtering Extension",
              "Allow filtering by attributes with empty string value", "2018-05-01T10:00:00-00:00"),
    Extension("ip-substring-filtering", "IP address substring filtering",
              "Provides IP address substring filtering when listing ports", "2017-11-28T09:00:00-00:00",
              attributes={"ports": ("fixed_ips",)}),
    Extension("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled.",
              "2016-09-09T09:09:09-09:09", attributes={"networks": ("project_id",)}),
    # attributes of the core resources
    Extension("standard-attr-description", "standard-attr-description",
              "Extension to add descriptions to standard attributes", "2016-02-10T10:00:00-00:00",
              attributes={"networks": ("description",), "subnets": ("description",), "ports": ("description",)}),
    Extension("standard-attr-timestamp", "Resource timestamps",
              "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard "
              "attributes.", "2016-09-12T10:00:00-00:00",
              attributes={c: ("created_at", "updated_at") for c in ("networks", "subnets", "ports")}),
    Extension("net-mtu", "Network MTU", "Provides MTU attribute for a network resource.",
              "2015-03-25T10:00:00-00:00", attributes={"networks": ("mtu",)}),
    Extension("net-mtu-writable", "Network MTU (writable)", "Provides a writable MTU attribute for a network "
              "resource.", "2017-07-12T00:00:00-00:00", attributes={"networks": ("mtu",)}),
    Extension("provider", "Provider Network", "Expose mapping of virtual networks to physical networks",
              "2012-09-07T10:00:00-00:00",
              attributes={"networks": ("provider:network_type", "provider:physical_network",
                                       "provider:segmentation_id")}),
    Extension("external-net", "Neutron external network", "Adds external network attribute to network resource.",
              "2013-01-14T10:00:00-00:00", attributes={"networks": ("router:external",)}),
    Extension("binding", "Port Binding", "Expose port bindings of a virtual port to external application",
              "2014-02-03T10:00:00-00:00",
              attributes={"ports": ("binding:host_id", "binding:vnic_type", "binding:profile", "binding:vif_type",
                                    "binding:vif_details")}),
    Extension("port-security", "Port Security", "Provides port security", "2012-07-23T10:00:00-00:00",
              attributes={"networks": ("port_security_enabled",), "ports": ("port_security_enabled",)}),
    Extension("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs",
              "2013-07-23T10:00:00-00:00", attributes={"ports": ("allowed_address_pairs",)}),
    Extension("extra_dhcp_opt", "Neutron Extra DHCP options", "Extra options configuration for DHCP. For "
              "example PXE boot options to DHCP clients can be specified (e.g. tftp-server, server-ip-address, "
              "bootfile-name)", "2013-03-17T12:00:00-00:00", attributes={"ports": ("extra_dhcp_opts",)}),
    # resources
    Extension("security-group", "security-group", "The security groups extension.", "2012-10-05T10:00:00-00:00",
              collections=("security-groups", "security-group-rules"),
              attributes={"ports": ("security_groups",)}),
    Extension("router", "Neutron L3 Router", "Router abstraction for basic L3 forwarding between L2 Neutron "
              "networks and access to external networks via a NAT gateway.", "2012-07-20T10:00:00-00:00",
              collections=("routers", "floatingips"),
              attributes={"routers": ("external_gateway_info",)},
              actions=(("routers", "add_router_interface"), ("routers", "remove_router_interface"))),
    Extension("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router",
              "2013-02-01T10:00:00-00:00", collections=("routers",), attributes={"routers": ("routes",)}),
    Extension("ext-gw-mode", "Neutron L3 Configurable external gateway mode",
              "Extension of the router abstraction for specifying whether SNAT should occur on the external "
              "gateway", "2013-03-28T10:00:00-00:00", collections=("routers",)),
)
# ext-gw-mode also needs `enable_snat` inside external_gateway_info: not visible in a sample view, so it
# is checked by REQUIRES_GW_SNAT below against the router attribute's schema.


def _gateway_takes_snat(resources: dict[str, Any]) -> bool:
    router = resources.get("routers")
    attr = getattr(router, "attributes", {}).get("external_gateway_info") if router else None
    if attr is None:
        return False
    found = schema.converter_schema(attr.convert)
    return "enable_snat" in repr(found)


EXTRA_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {"ext-gw-mode": _gateway_takes_snat}


def supported(resources: dict[str, Any], has_action: Callable[[str, str], bool]) -> list[Extension]:
    """The extensions whose every requirement the API meets.

    ``resources``: collection name -> resource (``apps.northbound.api.RESOURCES``);
    ``has_action(collection, action)``: whether ``PUT /v2.0/<collection>/{id}/<action>`` is routed.
    """
    found = []
    for ext in EXTENSIONS:
        if not all(c in resources for c in ext.collections):
            continue
        if not all(c in resources and set(keys) <= _shown(resources[c]) for c, keys in ext.attributes.items()):
            continue
        if not all(has_action(c, a) for c, a in ext.actions):
            continue
        check = EXTRA_CHECKS.get(ext.alias)
        if check is not None and not check(resources):
            continue
        found.append(ext)
    return found


def _shown(resource: Any) -> set[str]:
    return set(schema.sample_view(resource))


def by_alias(extensions: Iterable[Extension]) -> dict[str, Extension]:
    return {e.alias: e for e in extensions}
