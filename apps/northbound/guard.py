"""The handlers' one door to authorization: targets built from the graph, decisions from the policy table.

:class:`Guard` turns the table of :mod:`apps.northbound.policy` into Neutron's answers: a
resource the caller may not read is not found (404, the same error as a missing one), a
write it may not make on a resource it sees is forbidden (403), and attributes it may not
read are left out. Without a policy (``noauth``) it allows everything, as before issue #14.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apps.northbound.auth import Caller
from apps.northbound.policy import Policy, action, asked
from topology.graph import TopologyGraph
from topology.store import NotFound, TopologyError

# The parent whose owner and sharing a resource's rules name, by the attribute that points at it.
PARENTS = {"subnet": ("network_id", "network", "Network"), "port": ("network_id", "network", "Network"),
           "security_group_rule": ("security_group_id", "sg", "SecurityGroup")}
PARENT_PREFIX = {"network": "network", "sg": "security_group"}
# What a body may name, by attribute: (attribute, member it names).
REFERENCES = {
    "subnet": (("network_id", "network"),),
    "port": (("network_id", "network"), ("security_groups", "security_group")),
    "floatingip": (("floating_network_id", "network"), ("port_id", "port")),
    "security_group_rule": (("security_group_id", "security_group"), ("remote_group_id", "security_group")),
    "router": (("external_gateway_info:network_id", "network"),),
    "router_interface": (("subnet_id", "subnet"), ("port_id", "port")),
}
LABELS = {"network": "Network", "port": "Port", "subnet": "Subnet", "security_group": "SecurityGroup"}


class Forbidden(TopologyError):
    """403: the policy refuses an action on a resource the caller can see."""

    status = 403


def forbidden(name: str) -> Forbidden:
    """Neutron's error for an action the policy refuses."""
    return Forbidden("PolicyNotAuthorized", f"rule:{name} is disallowed by policy")


def not_found(label: str, ident: str) -> NotFound:
    """The error of a missing resource: also what a resource the caller may not see gets."""
    return NotFound(f"{label}NotFound", f"{label} {ident} could not be found.")


class Guard:
    """Policy decisions for the handlers (``policy`` None: noauth, everything allowed)."""

    def __init__(self, graph: TopologyGraph, policy: Policy | None,
                 view: Callable[[str, str], dict[str, Any] | None]) -> None:
        """``view(member, id)``: the resource as an admin sees it (None if missing)."""
        self.graph = graph
        self.policy = policy
        self.view = view

    def target(self, member: str, values: dict[str, Any]) -> dict[str, Any]:
        """What the rules of ``member`` match against: its attributes and its parent's owner and sharing."""
        target = {**values, "tenant_id": values.get("project_id")}
        parent = PARENTS.get(member)
        if parent:
            record = self.graph.get(parent[1], values.get(parent[0]) or "")
            prefix = PARENT_PREFIX[parent[1]]
            target[f"{prefix}:project_id"] = getattr(record, "project_id", None)
            attrs = getattr(record, "attrs", {})
            target[f"{prefix}:shared"] = attrs.get("shared", False)
            target[f"{prefix}:router:external"] = attrs.get("router:external", False)
        return target

    def allowed(self, caller: Caller, name: str, target: dict[str, Any]) -> bool:
        """The table's answer (always yes without a policy)."""
        return self.policy is None or self.policy.allowed(caller, name, target)

    def shown(self, caller: Caller, member: str, item: dict[str, Any]) -> dict[str, Any] | None:
        """``item`` as the caller may read it: None if it may not see it, else without hidden attributes."""
        if self.policy is None:
            return item
        target = self.target(member, item)
        if not self.policy.allowed(caller, action("get", member), target):
            return None
        return self.policy.shown(caller, member, item, target)

    def redacted(self, caller: Caller, member: str, item: dict[str, Any]) -> dict[str, Any]:
        """``item`` (one the caller just wrote) without the attributes it may not read."""
        if self.policy is None:
            return item
        return self.policy.shown(caller, member, item, self.target(member, item))

    def require_visible(self, caller: Caller, member: str, item: dict[str, Any], label: str) -> None:
        """404 unless the caller may see ``item``; 403 instead for a resource no project owns (hypervisors)."""
        if self.allowed(caller, action("get", member), self.target(member, item)):
            return
        if "project_id" not in item:
            raise forbidden(action("get", member))
        raise not_found(label, item.get("id", ""))

    def require_references(self, caller: Caller, member: str, values: dict[str, Any]) -> None:
        """404 when a resource a body names (its network, port, groups) exists but is not the caller's to see.

        The same answer as for a missing one, so a project cannot probe another's ids, nor attach
        its ports, routers or rules to them.
        """
        if self.policy is None:
            return
        for attr, ref in REFERENCES.get(member, ()):
            outer, _, key = attr.partition(":")  # name:key: a key of a dict attribute
            idents = values.get(outer)
            if key:
                idents = idents.get(key) if isinstance(idents, dict) else None
            for ident in idents if isinstance(idents, list) else [idents]:
                item = self.view(ref, ident) if isinstance(ident, str) else None
                if item is not None:  # a missing one is the write's own 404 (or 400)
                    self.require_visible(caller, ref, item, LABELS[ref])

    def require(self, caller: Caller, verb: str, member: str, target: dict[str, Any],
                body: dict[str, Any]) -> None:
        """403 unless the caller may ``verb`` the ``member`` ``target`` setting ``body``'s attributes."""
        if self.policy is None:
            return
        name = action(verb, member)
        if not self.policy.allowed(caller, name, target):
            raise forbidden(name)
        # the attributes' rules see the values asked for (a device_owner's rule depends on it)
        refused = self.policy.attributes(caller, verb, member, {**target, **body}, asked(body))
        if refused:
            raise forbidden(action(verb, member, refused[0]))
