"""The API's authorization: one declarative table, enforced by ``oslo.policy`` (``--auth keystone``).

Neutron's default policy for the resources we serve, with its three personas: ``admin``
(everything, every project), a project's ``member`` (reads and writes its project's
resources) and ``reader`` (reads them). Keystone's implied roles make every admin a member
and every member a reader. A project also sees the shared and external networks and their
subnets, and may create ports on a shared network.

Actions are Neutron's names: ``<verb>_<member>`` (``create_network``, ``get_port``, ...) for
a resource and ``<verb>_<member>:<attribute>`` for one attribute, enforced on the
attributes a body sets (create, update) or an answer shows (get: the attribute is left out).
The handlers ask :class:`Policy` and nothing else; the statuses follow Neutron's: 404 for a
resource the caller may not see (as if it did not exist), 403 for one it sees but may not
change, and 403 for a resource without a project (hypervisors) to anyone but an admin.

Operators override any rule with an oslo.policy YAML file (``--policy-file``), as for Neutron.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from typing import Any

from oslo_config import cfg
from oslo_policy import policy as oslo_policy

from apps.northbound.auth import Caller

# The building blocks, as Neutron's neutron/conf/policies/base.py names them.
BASE: dict[str, str] = {
    "context_is_admin": "role:admin",
    "admin_only": "role:admin",
    "project_member": "role:member and project_id:%(project_id)s",
    "project_reader": "role:reader and project_id:%(project_id)s",
    "shared": "True:%(shared)s",  # a literal matched against the target: the network is shared
    "external": "True:%(router:external)s",
    "network_owner_member": "role:member and project_id:%(network:project_id)s",
    "network_owner_reader": "role:reader and project_id:%(network:project_id)s",
    "network_shared": "True:%(network:shared)s",
    "network_external": "True:%(network:router:external)s",
    "sg_owner_member": "role:member and project_id:%(security_group:project_id)s",
    "sg_owner_reader": "role:reader and project_id:%(security_group:project_id)s",
    # Neutron's network_device ("field:port:device_owner=~^network:"): a port the cloud's own services
    # use (router interface, DHCP...), which port security and the security groups trust
    "network_device": "prefix:%(device_owner)s=network:",
}


@oslo_policy.register("prefix")
class PrefixCheck(oslo_policy.Check):
    """``prefix:%(key)s=<prefix>``: true when the target's ``key`` starts with ``<prefix>``.

    What Neutron's ``field:...=~^...`` regex check is used for here, and no more. The key is written
    as a ``%(key)s`` template, so :meth:`Policy._keys` sees that a decision depends on its value.
    """

    def __call__(self, target: dict[str, Any], creds: dict[str, Any], enforcer: Any,
                 current_rule: str | None = None) -> bool:
        try:
            value, _, prefix = (self.match % target).rpartition("=")
        except (KeyError, TypeError, ValueError):  # the target has no such key: nothing to match
            return False
        return bool(prefix) and value.startswith(prefix)


ADMIN = "rule:admin_only"
MEMBER = "rule:admin_only or rule:project_member"
READER = "rule:admin_only or rule:project_reader"
OWNED = {"create": MEMBER, "get": READER, "update": MEMBER, "delete": MEMBER}

# resource -> verb -> rule; then the admin-only attributes of each resource.
TABLE: dict[str, dict[str, str]] = {
    "network": {**OWNED, "get": f"{READER} or rule:shared or rule:external"},
    "subnet": {
        "create": "rule:admin_only or rule:network_owner_member",
        "get": f"{READER} or rule:network_owner_reader or rule:network_shared or rule:network_external",
        "update": "rule:admin_only or rule:network_owner_member",
        "delete": "rule:admin_only or rule:network_owner_member",
    },
    "port": {
        **OWNED,
        "get": f"{READER} or rule:network_owner_reader",
        "update": f"{MEMBER} or rule:network_owner_member",
        "delete": f"{MEMBER} or rule:network_owner_member",
    },
    "router": {**OWNED, "add_router_interface": MEMBER, "remove_router_interface": MEMBER},
    "floatingip": OWNED,
    "security_group": OWNED,
    "security_group_rule": {
        "create": MEMBER,
        "get": f"{READER} or rule:sg_owner_reader",
        "delete": f"{MEMBER} or rule:sg_owner_member",
        "update": f"{MEMBER} or rule:sg_owner_member",
    },
    "hypervisor": {verb: ADMIN for verb in ("create", "get", "update", "delete")},
    "controller_status": {"get": ADMIN},  # /metrics, /sync, /ovsdb, /topology, /trace
}
ADMIN_ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "network": {
        "create": ("shared", "router:external", "provider:network_type", "provider:physical_network",
                   "provider:segmentation_id"),
        "update": ("shared", "router:external", "provider:network_type", "provider:physical_network",
                   "provider:segmentation_id"),
        "get": ("provider:network_type", "provider:physical_network", "provider:segmentation_id"),
    },
    "port": {verb: ("binding:host_id", "binding:profile", "binding:vnic_type", "binding:vif_type",
                    "binding:vif_details") for verb in ("create", "update", "get")},
    "router": {
        "get": ("gateway_hypervisors", "active_gateway_hypervisor"),
        # <attribute>:<key> names a key of a dict attribute, as Neutron's external_gateway_info rules do
        **{verb: ("gateway_hypervisors", "active_gateway_hypervisor", "external_gateway_info:enable_snat",
                  "external_gateway_info:external_fixed_ips") for verb in ("create", "update")},
    },
    "floatingip": {"create": ("floating_ip_address",)},
}
# Attributes of a port only the admin and the network's owner may choose (Neutron's
# ADMIN_OR_NET_OWNER_MEMBER): on a shared network, another project's port takes what it is given.
NET_OWNER = "rule:admin_only or rule:network_owner_member"
NET_OWNER_ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "port": {verb: ("mac_address", "allowed_address_pairs", "fixed_ips:ip_address") for verb in ("create", "update")},
}
# Attributes whose rule depends on the value asked for: a network:* device_owner (a port the cloud's
# services own, trusted by port security) only for the admin and the network's owner (Neutron's
# create_port:device_owner); any other device_owner for whoever may write the port.
VALUE_RULES: dict[str, dict[str, dict[str, str]]] = {
    "port": {verb: {"device_owner": f"not rule:network_device or {NET_OWNER}"} for verb in ("create", "update")},
}


def attribute_rules(member: str, verb: str) -> dict[str, str]:
    """The attribute rules of one resource and verb: {attribute: check}."""
    rules = dict.fromkeys(ADMIN_ATTRIBUTES.get(member, {}).get(verb, ()), ADMIN)
    rules |= dict.fromkeys(NET_OWNER_ATTRIBUTES.get(member, {}).get(verb, ()), NET_OWNER)
    return rules | VALUE_RULES.get(member, {}).get(verb, {})


MEMBER_ACTIONS = ("add_router_interface", "remove_router_interface")  # named as Neutron names them


def action(verb: str, member: str, attribute: str | None = None) -> str:
    """Neutron's name of an action: ``create_port``, ``get_port:binding:host_id``, ``add_router_interface``."""
    name = verb if verb in MEMBER_ACTIONS else f"{verb}_{member}"
    return name + (f":{attribute}" if attribute else "")


def defaults() -> list[oslo_policy.RuleDefault]:
    """Every rule of the table, as oslo.policy's registered defaults."""
    rules = [oslo_policy.RuleDefault(name, check) for name, check in BASE.items()]
    rules += [oslo_policy.RuleDefault(action(verb, member), check)
              for member, verbs in TABLE.items() for verb, check in verbs.items()]
    verbs = {(member, verb) for table in (ADMIN_ATTRIBUTES, NET_OWNER_ATTRIBUTES, VALUE_RULES)
             for member, by_verb in table.items() for verb in by_verb}
    rules += [oslo_policy.RuleDefault(action(verb, member, attr), check)
              for member, verb in sorted(verbs) for attr, check in attribute_rules(member, verb).items()]
    return rules


TEMPLATE = re.compile(r"%\((.+?)\)s")
RELOAD_EVERY = 1.0  # seconds between looks at the policy file's mtime
MAX_DECISIONS = 100_000


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def asks_for_something(value: Any) -> bool:
    """Whether setting an attribute to ``value`` asks for anything (False, None, "", {} and [] ask nothing)."""
    return value not in (None, False, "", {}, [])


def asked(body: dict[str, Any]) -> list[str]:
    """The attributes a body asks for something with: ``name``, and ``name:key`` for the keys of a dict
    (or of the dicts of a list: ``fixed_ips:ip_address``)."""
    names = [k for k, v in body.items() if asks_for_something(v)]
    for name, value in body.items():
        elements = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
        keys = {key for e in elements if isinstance(e, dict) for key, v in e.items() if asks_for_something(v)}
        names += [f"{name}:{key}" for key in sorted(keys)]
    return names


class Policy:
    """The table above (overridden by ``policy_file``) enforced for one :class:`Caller` at a time."""

    def __init__(self, policy_file: str | None = None) -> None:
        if policy_file and not os.path.isfile(policy_file):
            raise ValueError(f"policy file {policy_file} does not exist")
        conf = cfg.ConfigOpts()
        conf([], project="tenantflow", default_config_files=[], default_config_dirs=[])
        # Our rules name no scope types: Keystone's project-scoped tokens are what Neutron's defaults expect.
        self.enforcer = oslo_policy.Enforcer(conf, policy_file=os.path.abspath(policy_file) if policy_file else
                                             "/nonexistent/tenantflow-policy.yaml")
        self.enforcer.register_defaults(defaults())
        self.enforcer.load_rules()
        # oslo.policy would look for the file on every check (~0.2 ms without one, ~0.07 ms with):
        # we look at its mtime ourselves, at most once every RELOAD_EVERY seconds, and reload then.
        self.enforcer.use_conf = False
        self._file = os.path.abspath(policy_file) if policy_file else None
        self._mtime = self._stat()
        self._checked = time.monotonic()
        self._decisions: dict[tuple, bool] = {}
        self._rule_keys: dict[str, tuple[str, ...]] = {}

    def _stat(self) -> float | None:
        try:
            return os.path.getmtime(self._file) if self._file else None
        except OSError:  # being replaced: keep the rules we have
            return self._mtime

    def _reload_if_changed(self) -> None:
        """Re-read the policy file if it changed (as Neutron does), forgetting every remembered decision."""
        if self._file is None or time.monotonic() - self._checked < RELOAD_EVERY:
            return
        self._checked = time.monotonic()
        mtime = self._stat()
        if mtime != self._mtime:
            self._mtime = mtime
            self.enforcer.load_rules(force_reload=True)
            self.enforcer.use_conf = False  # force_reload turned it on
            self._decisions.clear()
            self._rule_keys.clear()

    def allowed(self, caller: Caller, name: str, target: dict[str, Any]) -> bool:
        """Whether the caller may perform the action ``name`` on ``target``.

        Decisions are remembered by what they depend on (the caller, and the target values the
        rule names): oslo.policy spends ~0.1 ms a check (it inspects every check's signature
        on every call), and a listing asks the same few questions of every item.
        """
        self._reload_if_changed()
        rule = self.enforcer.rules.get(name)
        if rule is None:
            return self.enforcer.enforce(name, target, caller.credentials())  # oslo.policy's default_rule
        key = (name, caller, tuple(_hashable(target.get(k)) for k in self._keys(name, rule)))
        decision = self._decisions.get(key)
        if decision is None:
            if len(self._decisions) > MAX_DECISIONS:
                self._decisions.clear()
            decision = self._decisions[key] = self.enforcer.enforce(name, target, caller.credentials())
        return decision

    def _keys(self, name: str, rule: Any) -> tuple[str, ...]:
        """The target keys a rule (and the rules it names) reads: ``%(key)s`` in its checks."""
        cached = self._rule_keys.get(name)
        if cached is None:
            keys: set[str] = set()
            pending, seen = [rule], set()
            while pending:
                check = pending.pop()
                if id(check) in seen:
                    continue
                seen.add(id(check))
                pending += list(getattr(check, "rules", ()))
                pending += [c for c in (getattr(check, "rule", None),) if c is not None]
                match = getattr(check, "match", None)
                if isinstance(match, str):
                    keys.update(TEMPLATE.findall(match))
                    if getattr(check, "kind", None) == "rule" and match in self.enforcer.rules:
                        pending.append(self.enforcer.rules[match])
            cached = self._rule_keys[name] = tuple(sorted(keys))
        return cached

    def attributes(self, caller: Caller, verb: str, member: str, target: dict[str, Any],
                   names: Iterable[str]) -> list[str]:
        """Those of ``names`` whose ``<verb>_<member>:<name>`` rule refuses the caller."""
        rules = self.enforcer.rules
        return [n for n in names if action(verb, member, n) in rules
                and not self.allowed(caller, action(verb, member, n), target)]

    def shown(self, caller: Caller, member: str, item: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
        """``item`` without the attributes the caller may not read."""
        hidden = self.attributes(caller, "get", member, target, item)
        return {k: v for k, v in item.items() if k not in hidden} if hidden else item
