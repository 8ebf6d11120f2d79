"""The authorization table, generated into requests: every route, method and persona against the live server.

For each resource the API serves (:data:`apps.northbound.api.RESOURCES`) and each method, the
expected status is derived from the table alone (:func:`apps.northbound.policy.defaults`,
evaluated by oslo.policy with each persona's Keystone roles and a target built here from
what an admin sees), by Neutron's rules: a resource the persona may not read is not found
(404; 403 for the unowned hypervisors), a write the table refuses on a visible one is 403;
and each attribute with a rule of its own (admin-only, or the network owner's) is refused
(403) when set, and absent when read, by anyone the table refuses. Then the request is
made, with a real token, and must agree.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
from oslo_config import cfg
from oslo_policy import policy as oslo_policy

from apps.northbound.api import RESOURCES, ROUTER_ACTIONS
from apps.northbound.policy import TABLE, action, attribute_rules, defaults
from tests.keystone_fixtures import PERSONAS, Keystone
from tests.keystone_fixtures import session as open_session

pytestmark = pytest.mark.slow

IMPLIED = {"admin": ("admin", "member", "reader"), "member": ("member", "reader"), "reader": ("reader",)}
PARENT = {"subnet": "network", "port": "network", "security_group_rule": "security_group"}
PARENT_ATTR = {"network": "network_id", "security_group": "security_group_id"}
_serial = itertools.count(10)


def _table() -> oslo_policy.Enforcer:
    conf = cfg.ConfigOpts()
    conf([], project="tenantflow-test", default_config_files=[], default_config_dirs=[])
    enforcer = oslo_policy.Enforcer(conf, use_conf=False)
    enforcer.register_defaults(defaults())
    enforcer.load_rules()
    enforcer.rules = oslo_policy.Rules({r.name: r.check for r in defaults()}, "")  # the table, nothing else
    return enforcer


class Oracle:
    """What the table says each persona gets."""

    def __init__(self, keystone: Keystone, admin) -> None:
        self.enforcer = _table()
        self.keystone = keystone
        self.admin = admin

    def creds(self, user: str) -> dict[str, Any]:
        project, role = PERSONAS[user]
        return {"project_id": self.keystone.projects[project], "roles": list(IMPLIED[role])}

    def allows(self, user: str, name: str, target: dict[str, Any]) -> bool:
        return self.enforcer.enforce(name, target, self.creds(user))

    def target(self, member: str, values: dict[str, Any]) -> dict[str, Any]:
        """The item's attributes, and its parent's owner and sharing (read as the admin)."""
        target = {**values, "tenant_id": values.get("project_id")}
        parent = PARENT.get(member)
        if parent:
            url = next(r.url for r in RESOURCES.values() if r.member == parent)
            shown = self.admin.call("GET", f"/v2.0/{url}/{values[PARENT_ATTR[parent]]}")[1][parent]
            for key in ("project_id", "shared", "router:external"):
                target[f"{parent}:{key}"] = shown.get(key, False)
        return target

    def read(self, user: str, member: str, item: dict[str, Any]) -> int:
        """GET's status for the item (200, else 404; 403 for what no project owns)."""
        if self.allows(user, action("get", member), self.target(member, item)):
            return 200
        return 403 if "project_id" not in item else 404

    def write(self, user: str, verb: str, member: str, item: dict[str, Any], body: dict[str, Any]) -> int:
        """PUT / DELETE / router action status: not seen first, then the action, then its attributes."""
        seen = self.read(user, member, item)
        if seen != 200:
            return seen
        target = self.target(member, item)
        if not self.allows(user, action(verb, member), target):
            return 403
        refused = [a for a in body if action(verb, member, a) in self.enforcer.rules
                   and not self.allows(user, action(verb, member, a), target)]
        return 403 if refused else 0  # 0: the table lets it through


@pytest.fixture(scope="module")
def setting(keystone: Keystone, keystone_ctl):
    """Sessions per persona, the oracle, and the admin's external network."""
    sessions = {user: open_session(keystone, keystone_ctl, user) for user in PERSONAS}
    oracle = Oracle(keystone, sessions["admin"])
    ext = sessions["admin"].create("network", name="fuzz-ext", **{"router:external": True})
    ext["subnets"] = [sessions["admin"].create("subnet", network_id=ext["id"], cidr="198.51.100.0/24")["id"]]
    return sessions, oracle, ext


def new_body(member: str, owner, ext: dict) -> dict[str, Any]:
    """A body ``owner`` (a session) may POST for ``member``, with what it needs made first (as ``owner``)."""
    n = next(_serial)
    if member == "subnet":
        return {"network_id": owner.create("network")["id"], "cidr": f"10.{n // 250}.{n % 250}.0/24"}
    if member == "port":
        return {"network_id": owner.create("network")["id"]}
    if member == "floatingip":
        return {"floating_network_id": ext["id"]}
    if member == "security_group_rule":
        sg = owner.create("security_group", "security-groups", name=f"fz{n}")
        return {"security_group_id": sg["id"], "direction": "ingress", "protocol": "tcp",
                "port_range_min": 1000 + n, "port_range_max": 1000 + n}
    if member == "hypervisor":
        return {"name": f"fz-hv{n}", "datapath_id": f"{0xf00000 + n:016x}", "tunnel_ip": f"192.0.2.{n % 250}"}
    return {"name": f"fz-{member}-{n}"}


def _fresh(resource, sessions, ext) -> dict:
    """A new resource of proj-a (alice's), or the admin's for the unowned hypervisors."""
    owner = sessions["admin" if resource.kind == "hv" else "alice"]
    return owner.create(resource.member, resource.url, **new_body(resource.member, owner, ext))


def test_every_resource_is_in_the_table() -> None:
    assert {r.member for r in RESOURCES.values()} <= set(TABLE)
    for member, verbs in TABLE.items():
        if member in {r.member for r in RESOURCES.values()}:
            assert {"create", "get", "update", "delete"} <= set(verbs), member


@pytest.mark.parametrize("url", sorted(RESOURCES))
def test_table_against_live_server(setting, url: str) -> None:
    sessions, oracle, ext = setting
    resource = RESOURCES[url]
    member = resource.member
    admin = sessions["admin"]
    checked = 0
    # the attributes with rules a body may carry (name:key: a key of a dict attribute, or of a list's dicts)
    settable = {verb: [a for a in attribute_rules(member, verb)
                       if getattr(resource.attributes.get(a.partition(":")[0]), flag, False)]
                for verb, flag in (("create", "post"), ("update", "put"))}
    for user, session in sessions.items():
        # what a new resource of this persona's needs first (a network, a group) it makes itself, if it may
        maker = admin if member == "hypervisor" else session if PERSONAS[user][1] != "reader" else sessions["alice"]
        item = admin.call("GET", f"/v2.0/{url}/{_fresh(resource, sessions, ext)['id']}")[1][member]
        # GET member, and the collection lists it exactly when GET shows it
        expected = oracle.read(user, member, item)
        status, body = session.call("GET", f"/v2.0/{url}/{item['id']}")
        assert status == expected, (user, "GET", url, body)
        status, listed = session.call("GET", f"/v2.0/{url}")
        if expected == 403:
            assert status == 403, (user, "GET", url, listed)
        else:
            ids = {i["id"] for i in listed[resource.collection]}
            assert (item["id"] in ids) == (expected == 200), (user, "list", url)
        # GET's attributes with rules: present exactly when the table lets the persona read them
        if expected == 200:
            _check_shown(oracle, user, member, item, body[member])
        # PUT, plainly and with each attribute that has a rule set
        plain = {"description": f"by {user}"}
        expected = oracle.write(user, "update", member, item, plain)
        status, body = session.call("PUT", f"/v2.0/{url}/{item['id']}", {member: plain})
        assert status == (expected or 200), (user, "PUT", url, body)
        if status == 200:
            _check_shown(oracle, user, member, item, body[member])
        for attr in settable["update"]:
            expected = oracle.write(user, "update", member, item, {attr: "x"})
            status, body = session.call("PUT", f"/v2.0/{url}/{item['id']}", {member: _something(attr, ext)})
            assert status == expected if expected else status != 403, (user, "PUT", url, attr, body)
        # POST: a body the persona's own parent makes possible; then one naming proj-a's parent
        values = new_body(member, maker, ext)
        own = oracle.target(member, {**values, "project_id": oracle.creds(user)["project_id"]})
        status, body = session.call("POST", f"/v2.0/{url}", {member: values})
        assert status == (201 if oracle.allows(user, action("create", member), own) else 403), (user, url, body)
        if status == 201:
            _check_shown(oracle, user, member, body[member], body[member])
        for attr in settable["create"]:
            values = {**new_body(member, maker, ext), **_something(attr, ext)}
            allowed = oracle.allows(user, action("create", member), own) and \
                oracle.allows(user, action("create", member, attr), own)
            status, body = session.call("POST", f"/v2.0/{url}", {member: values})
            assert status != 403 if allowed else status == 403, (user, "POST", url, attr, body)
        # DELETE a fresh one
        item = admin.call("GET", f"/v2.0/{url}/{_fresh(resource, sessions, ext)['id']}")[1][member]
        expected = oracle.write(user, "delete", member, item, {})
        status, body = session.call("DELETE", f"/v2.0/{url}/{item['id']}")
        assert status == (expected or 204), (user, "DELETE", url, body)
        checked += 1
    assert checked == len(PERSONAS)


@pytest.mark.parametrize("name", ROUTER_ACTIONS)
def test_router_actions_against_live_server(setting, name: str) -> None:
    sessions, oracle, ext = setting
    for user, session in sessions.items():
        alice = sessions["alice"]
        router = alice.create("router", name=f"fz-r-{uuid.uuid4().hex[:4]}")
        subnet = alice.create("subnet", **new_body("subnet", alice, ext))
        if name == "remove_router_interface":
            assert alice.call("PUT", f"/v2.0/routers/{router['id']}/add_router_interface",
                              {"subnet_id": subnet["id"]})[0] == 200
        expected = oracle.write(user, name, "router", router, {})
        status, body = session.call("PUT", f"/v2.0/routers/{router['id']}/{name}", {"subnet_id": subnet["id"]})
        assert status == (expected or 200), (user, name, body)


def _check_shown(oracle: Oracle, user: str, member: str, item: dict[str, Any], shown: dict[str, Any]) -> None:
    """An answer shows each attribute with a get rule exactly when the table lets ``user`` read it."""
    target = oracle.target(member, item)
    for attr in attribute_rules(member, "get"):
        assert (attr in shown) == oracle.allows(user, action("get", member, attr), target), (user, member, attr)


def _something(attr: str, ext: dict) -> dict[str, Any]:
    """A body setting ``attr`` to a value that asks for something (the attribute rules are about asking)."""
    outer, _, key = attr.partition(":")
    if outer == "external_gateway_info":  # a key of the gateway, on the admin's external network
        value = {"enable_snat": True, "external_fixed_ips": [{"subnet_id": ext["subnets"][0]}]}[key]
        return {outer: {"network_id": ext["id"], key: value}}
    if attr == "fixed_ips:ip_address":
        return {"fixed_ips": [{"ip_address": f"10.{next(_serial) % 250}.0.9"}]}
    if attr == "mac_address":
        return {attr: f"fa:16:3e:00:{next(_serial) // 256 % 256:02x}:{next(_serial) % 256:02x}"}
    if attr == "allowed_address_pairs":
        return {attr: [{"ip_address": "10.250.0.9"}]}
    return {attr: {"shared": True, "router:external": True, "provider:network_type": "vxlan",
                   "provider:segmentation_id": 1500 + next(_serial), "binding:profile": {"k": "v"},
                   "binding:vnic_type": "normal", "gateway_hypervisors": ["fz-none"],
                   "floating_ip_address": "198.51.100.77"}.get(attr, "hv-fz")}
