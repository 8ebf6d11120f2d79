"""Security groups, their rules, and the port security attributes of ports, with Neutron's rules.

:class:`SecurityGroups` is a mixin of :class:`topology.state.Topology` (see
:mod:`topology.l3common`). Each project's ``default`` group is made on first
use (listing security groups, or creating a port that needs it) with Neutron's
four default rules, in the same transaction as the write that needed it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import netaddr

from topology import graph_l3, ipam
from topology.core import write
from topology.l3common import Deleted, L3Base, new_id, now
from topology.model import Network, Port
from topology.model_l3 import SecurityGroup, SecurityGroupRule
from topology.store import BadRequest, Conflict, NotFound

PROTOCOLS = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "hopopt": 0, "icmp": 1, "icmpv6": 58, "igmp": 2,
    "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58, "ipv6-nonxt": 59, "ipv6-opts": 60,
    "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46, "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136,
    "vrrp": 112,
}
PORT_PROTOCOLS = {6, 17, 33, 132, 136}  # protocols with port ranges
ICMP_PROTOCOLS = {1, 58}  # port_range_min/max are ICMP type/code
MAX_ADDRESS_PAIRS = 10
ANY = {"0.0.0.0/0", "::/0"}


def protocol_number(protocol: str | None) -> int | None:
    """The IP protocol number of a rule's protocol (name or number string), None for any."""
    if protocol is None:
        return None
    return PROTOCOLS[protocol] if protocol in PROTOCOLS else int(protocol)


def normalize_protocol(value: Any) -> str | None:
    """Neutron's protocol conversion: a known name (lower case), a number 0-255 as a string, or None."""
    if value is None or (isinstance(value, str) and value.lower() == "any"):
        return None
    if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, str) and value.isdigit():
        if 0 <= int(value) <= 255:
            return str(int(value))
    elif isinstance(value, str) and value.lower() in PROTOCOLS:
        return value.lower()
    raise BadRequest("SecurityGroupRuleInvalidProtocol", f"Security group rule protocol {value} not supported. "
                     f"Only protocol values {[None, *sorted(PROTOCOLS)]} and integer representations [0 to 255] "
                     "are supported.")


def parse_ip_or_cidr(value: Any) -> netaddr.IPNetwork | None:
    """An address (as a host network) or a CIDR, strictly (dotted quads only); None if it is neither."""
    if not isinstance(value, str) or value.count("/") > 1:
        return None
    address, _, prefix = value.partition("/")
    try:
        ip = netaddr.IPAddress(address, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError):
        return None
    width = 32 if ip.version == 4 else 128
    if not prefix:
        return netaddr.IPNetwork(f"{ip}/{width}")
    if not prefix.isdigit() or not 0 <= int(prefix) <= width:
        return None
    return netaddr.IPNetwork(f"{ip}/{int(prefix)}")


def _dup_key(rule: SecurityGroupRule) -> tuple:
    """Neutron's duplicate test: names and numbers of a protocol, and 'any' prefixes, are the same."""
    prefix = None if rule.remote_ip_prefix in ANY else rule.remote_ip_prefix
    return (rule.security_group_id, rule.direction, rule.ethertype, protocol_number(rule.protocol),
            rule.port_range_min, rule.port_range_max, prefix, rule.remote_group_id)


class SecurityGroups(L3Base):
    """Mixin of :class:`topology.state.Topology`: security groups, rules, port security."""

    # -- lookups ------------------------------------------------------------------------
    def _sg(self, sg_id: Any, project_id: str | None = None) -> SecurityGroup:
        sg = self.graph.get("sg", sg_id) if isinstance(sg_id, str) else None
        if sg is None or (project_id is not None and sg.project_id != project_id):
            raise NotFound("SecurityGroupNotFound", f"Security group {sg_id} does not exist")
        return sg

    # -- the default group ------------------------------------------------------------------
    def _default_sg_records(self, project_id: str) -> list:
        """The records of a project's default group if it has none yet (else [])."""
        if graph_l3.default_sg(self.graph, project_id) is not None:
            return []
        stamp = now()
        sg = SecurityGroup(id=new_id(), project_id=project_id, name="default", is_default=True,
                           attrs={"description": "Default security group", "created_at": stamp,
                                  "updated_at": stamp})
        rules = [SecurityGroupRule(id=new_id(), project_id=project_id, security_group_id=sg.id, direction=d,
                                   ethertype=e, remote_group_id=sg.id if d == "ingress" else None,
                                   attrs={"description": "", "created_at": stamp, "updated_at": stamp})
                 for d in ("egress", "ingress") for e in ("IPv4", "IPv6")]
        return [sg, *rules]

    @write
    def ensure_default_security_group(self, project_id: str | None) -> SecurityGroup:
        """A project's default group, made (one transaction) if it does not exist yet."""
        with self.lock:
            project_id = project_id or self.default_project
            records = self._default_sg_records(project_id)
            if records:
                self._write(records)
            return graph_l3.default_sg(self.graph, project_id)

    # -- groups ---------------------------------------------------------------------------
    @write
    def create_security_group(self, values: dict[str, Any]) -> SecurityGroup:
        """Create a group with Neutron's two egress rules (the project's default group is made first)."""
        with self.lock:
            project = values.get("project_id") or self.default_project
            if (values.get("name") or "").lower() == "default":
                raise Conflict("SecurityGroupDefaultAlreadyExists", "Default security group already exists.")
            records = self._default_sg_records(project)
            stamp = now()
            attrs = {"description": values.get("description") or "", "created_at": stamp, "updated_at": stamp}
            sg = SecurityGroup(id=new_id(), project_id=project, name=values.get("name") or "",
                               stateful=values.get("stateful", True), attrs=attrs)
            records.append(sg)
            records += [SecurityGroupRule(id=new_id(), project_id=project, security_group_id=sg.id,
                                          direction="egress", ethertype=e, attrs={**attrs, "description": ""})
                        for e in ("IPv4", "IPv6")]
            self._write(records)
            return sg

    @write
    def update_security_group(self, sg_id: str, values: dict[str, Any]) -> SecurityGroup:
        """Update a group's name, description or statefulness (the default group keeps its name)."""
        with self.lock:
            old = self._sg(sg_id)
            name = values.get("name", old.name) or ""
            if old.is_default and name != old.name:
                raise Conflict("SecurityGroupCannotUpdateDefault", "Updating default security group not allowed.")
            if not old.is_default and name.lower() == "default":
                raise Conflict("SecurityGroupDefaultAlreadyExists", "Default security group already exists.")
            attrs = {**old.attrs, "updated_at": now()}
            if "description" in values:
                attrs["description"] = values["description"] or ""
            sg = replace(old, name=name, stateful=values.get("stateful", old.stateful), attrs=attrs)
            if sg.stateful != old.stateful and graph_l3.sg_members(self.graph, sg_id):
                raise Conflict("SecurityGroupInUse", f"Security Group {sg_id} in use.")
            self._write([sg], graph_l3.hypervisors_of_sgs(self.graph, [sg_id]))
            return sg

    @write
    def delete_security_group(self, sg_id: str, *, admin: bool = False) -> None:
        """Delete a group and its rules (409 if a port uses it, or it is a project's default group and
        the caller is no admin: Neutron lets an admin remove it, and the project's next look makes it again)."""
        with self.lock:
            sg = self._sg(sg_id)
            if sg.is_default and not admin:
                raise Conflict("SecurityGroupCannotRemoveDefault",
                               "Insufficient rights for removing default security group.")
            if graph_l3.sg_members(self.graph, sg_id):
                raise Conflict("SecurityGroupInUse", f"Security Group {sg_id} in use.")
            # Other groups' rules naming it as remote group go with it (Neutron's ON DELETE CASCADE).
            referring = graph_l3.sg_remote_rules(self.graph, sg_id)
            own = graph_l3.sg_rules(self.graph, sg_id)
            records = [Deleted("sg_rule", r.id) for r in {r.id: r for r in [*referring, *own]}.values()]
            affected = graph_l3.hypervisors_of_sgs(self.graph, {r.security_group_id for r in referring})
            self._write([*records, Deleted("sg", sg_id)], affected)

    # -- rules ------------------------------------------------------------------------------
    @write
    def create_security_group_rule(self, values: dict[str, Any]) -> SecurityGroupRule:
        """Create a rule: Neutron's checks of protocol, ports, ethertype and remotes; duplicates are 409."""
        with self.lock:
            rule = self._rule(values)
            key = _dup_key(rule)
            for other in graph_l3.sg_rules(self.graph, rule.security_group_id):
                if _dup_key(other) == key:
                    raise Conflict("SecurityGroupRuleExists",
                                   f"Security group rule already exists. Rule id is {other.id}.")
            self._write([rule], graph_l3.hypervisors_of_sgs(self.graph, [rule.security_group_id]))
            return rule

    def _rule(self, values: dict[str, Any]) -> SecurityGroupRule:
        sg = self._sg(values.get("security_group_id"))
        direction = values.get("direction")
        if direction not in ("ingress", "egress"):
            raise ipam.invalid_input(f"'{direction}' is not in ['ingress', 'egress']")
        ethertype = values.get("ethertype") or "IPv4"
        protocol = normalize_protocol(values.get("protocol"))
        pmin, pmax = values.get("port_range_min"), values.get("port_range_max")
        self._check_ports(protocol, pmin, pmax)
        number = protocol_number(protocol)
        if number == 58 and ethertype == "IPv4":
            raise BadRequest("SecurityGroupEthertypeConflictWithProtocol", f"Invalid ethertype {ethertype} for "
                             f"protocol {protocol}.")
        prefix, remote = values.get("remote_ip_prefix"), values.get("remote_group_id")
        if prefix is not None and remote is not None:
            raise BadRequest("SecurityGroupRemoteGroupAndRemoteIpPrefix",
                             "Only remote_ip_prefix or remote_group_id may be provided.")
        if prefix is not None:
            cidr = parse_ip_or_cidr(prefix)
            if cidr is None:
                raise BadRequest("InvalidCIDR", f"Invalid CIDR {prefix} given as IP prefix.")
            if f"IPv{cidr.version}" != ethertype:
                raise BadRequest("SecurityGroupRuleParameterConflict",
                                 f"Conflicting value ethertype {ethertype} for CIDR {prefix}")
            prefix = str(cidr.cidr)
        if remote is not None:
            self._sg(remote)
        stamp = now()
        return SecurityGroupRule(id=new_id(), project_id=values.get("project_id") or sg.project_id,
                                 security_group_id=sg.id, direction=direction, ethertype=ethertype,
                                 protocol=protocol, port_range_min=pmin, port_range_max=pmax,
                                 remote_ip_prefix=prefix, remote_group_id=remote,
                                 attrs={"description": values.get("description") or "", "created_at": stamp,
                                        "updated_at": stamp})

    @staticmethod
    def _check_ports(protocol: str | None, pmin: int | None, pmax: int | None) -> None:
        if pmin is None and pmax is None:
            return
        if protocol is None:
            raise BadRequest("SecurityGroupProtocolRequiredWithPorts",
                             "Must also specify protocol if port range is given.")
        number = protocol_number(protocol)
        if number in PORT_PROTOCOLS:
            if pmin == 0 or pmax == 0:
                raise BadRequest("SecurityGroupInvalidPortValue", "Invalid value for port 0.")
            if pmin is None or pmax is None or pmin > pmax:
                raise BadRequest("SecurityGroupInvalidPortRange",
                                 "For TCP/UDP protocols, port_range_min must be <= port_range_max")
        elif number in ICMP_PROTOCOLS:
            for value, field, attr in ((pmin, "type", "port_range_min"), (pmax, "code", "port_range_max")):
                if value is not None and not 0 <= value <= 255:
                    raise BadRequest("SecurityGroupInvalidIcmpValue", f"Invalid value for ICMP {field} ({attr}) "
                                     f"{value}. It must be 0 to 255.")
            if pmin is None:
                raise BadRequest("SecurityGroupMissingIcmpType", f"ICMP code (port-range-max) {pmax} is provided "
                                 "but ICMP type (port-range-min) is missing.")
        else:
            raise BadRequest("SecurityGroupInvalidProtocolForPortRange", f"Invalid protocol {protocol} for port "
                             "range, only supported for TCP, UDP, UDPLITE, SCTP and DCCP.")

    @write
    def update_security_group_rule(self, rule_id: str, values: dict[str, Any]) -> SecurityGroupRule:
        """Rules are immutable in Neutron: only ``description`` (the API rejects everything else)."""
        with self.lock:
            old = self._l3("sg_rule", rule_id, "SecurityGroupRuleNotFound", "Security group rule")
            rule = self._touch(old)
            if "description" in values:
                rule = replace(rule, attrs={**rule.attrs, "description": values["description"] or ""})
            self._write([rule])
            return rule

    @write
    def delete_security_group_rule(self, rule_id: str) -> None:
        """Delete a rule."""
        with self.lock:
            rule = self._l3("sg_rule", rule_id, "SecurityGroupRuleNotFound", "Security group rule")
            self._write([Deleted("sg_rule", rule_id)],
                        graph_l3.hypervisors_of_sgs(self.graph, [rule.security_group_id]))

    # -- ports ----------------------------------------------------------------------------------
    def _port_security(self, values: dict[str, Any], net: Network, old: Port | None, project_id: str,
                       mac: str) -> tuple[dict[str, Any], list]:
        """A port's ``port_security_enabled``, ``security_groups`` and ``allowed_address_pairs``.

        Returns the attrs to store and the records to create with the port (the
        project's default group when the port is the first to need it).
        """
        enabled = values.get("port_security_enabled")
        if enabled is None:
            enabled = old.attrs.get("port_security_enabled", True) if old is not None else \
                net.attrs.get("port_security_enabled", True)
        records: list = []
        if values.get("security_groups") is not None:
            groups = list(dict.fromkeys(values["security_groups"]))
            if len({self._sg(sg_id, project_id).stateful for sg_id in groups}) > 1:
                # Neutron's rule, and what lets the flows decide per group whether a connection is
                # committed (flows.acl): a port's groups are all stateful or all stateless.
                raise Conflict("SecurityGroupConflict", "Error Cannot apply both stateful and stateless security "
                               "groups on the same port at the same time. while attempting the operation.")
        elif old is not None:
            groups = list(old.attrs.get("security_groups") or [])
        else:
            owner = values.get("device_owner") or ""
            groups = []
            if enabled and not owner.startswith("network:"):
                records = self._default_sg_records(project_id)
                default = records[0] if records else graph_l3.default_sg(self.graph, project_id)
                groups = [default.id]
        if groups and not enabled:
            if old is not None and values.get("security_groups") is None:
                raise Conflict("PortSecurityPortHasSecurityGroup", "Port has security group associated. Cannot "
                               "disable port security or IP address until security group is removed.")
            raise BadRequest("PortSecurityAndIPRequiredForSecurityGroups", "Port security must be enabled and "
                             "port must have an IP address in order to use security groups.")
        if values.get("allowed_address_pairs") is not None:
            pairs = self._address_pairs(values["allowed_address_pairs"], mac)
        else:
            pairs = list(old.attrs.get("allowed_address_pairs") or []) if old is not None else []
        if pairs and not enabled:
            raise Conflict("AddressPairAndPortSecurityRequired", "Port Security must be enabled in order to have "
                           "allowed address pairs on a port.")
        attrs = {"port_security_enabled": enabled, "security_groups": groups, "allowed_address_pairs": pairs}
        return attrs, records

    @staticmethod
    def _address_pairs(requested: list, mac: str) -> list[dict[str, str]]:
        if len(requested) > MAX_ADDRESS_PAIRS:
            raise BadRequest("AllowedAddressPairExhausted",
                             f"The number of allowed address pair exceeds the maximum {MAX_ADDRESS_PAIRS}.")
        pairs: list[dict[str, str]] = []
        for pair in requested:
            if not isinstance(pair, dict) or "ip_address" not in pair:
                raise BadRequest("AllowedAddressPairsMissingIP", "AllowedAddressPair must contain ip_address")
            ip = pair["ip_address"]
            net = parse_ip_or_cidr(ip)
            if net is None:
                raise ipam.invalid_input(f"'{ip}' is not a valid IP address or CIDR")
            entry = {"ip_address": str(net.ip) if "/" not in ip else str(net),
                     "mac_address": ipam.normalize_mac(pair["mac_address"]) if pair.get("mac_address") else mac}
            if entry in pairs:
                raise BadRequest("DuplicateAddressPairInRequest", "Request contains duplicate address pair: "
                                 f"mac_address {entry['mac_address']} ip_address {entry['ip_address']}.")
            pairs.append(entry)
        return pairs

    def _sg_dependents(self, *ports: Port | None) -> set[str]:
        """Hypervisors whose ACLs depend on these ports' memberships and addresses (remote-group rules).

        Those hosting a member of any group with a rule whose remote group is one of
        these ports' groups: their conjunctive matches list the members' addresses.
        Every port write (create, update, delete) adds them to its notification.
        """
        groups = {sg for p in ports if p is not None and (p.fixed_ips or p.attrs.get("allowed_address_pairs"))
                  for sg in p.attrs.get("security_groups") or ()}  # a member without addresses adds no flow
        if not groups:
            return set()
        return graph_l3.hypervisors_of_sgs(self.graph, graph_l3.sg_referrers(self.graph, groups))

    def _sg_port_change(self, old: Port, new: Port) -> set[str]:
        """:meth:`_sg_dependents` of a port update, when it changed its groups or addresses (else none)."""
        def member(p: Port) -> tuple:
            return (tuple(p.attrs.get("security_groups") or ()), p.fixed_ips,
                    tuple((a["ip_address"], a.get("mac_address")) for a in p.attrs.get("allowed_address_pairs") or ()))

        return self._sg_dependents(old, new) if member(old) != member(new) else set()
