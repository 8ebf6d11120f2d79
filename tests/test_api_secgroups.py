"""Security groups, rules and port security over real HTTP, with every error case."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_api_client import Api

from topology import graph_l3

MISSING = str(uuid.uuid4())
SG, RULE = "/v2.0/security-groups", "/v2.0/security-group-rules"


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    a = Api(tmp_path / "topology.sqlite")
    yield a
    a.close()


def create(api: Api, path: str, member: str, project: str | None = None, **attrs: Any) -> dict:
    resp = api.request("POST", path, {member: attrs}, headers={"X-Project-Id": project} if project else None)
    assert resp.status_code == 201, resp.text
    return resp.json()[member]


def get(api: Api, path: str, project: str | None = None) -> dict:
    resp = api.request("GET", path, headers={"X-Project-Id": project} if project else None)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _rule_shape(rule: dict) -> tuple:
    return (rule["direction"], rule["ethertype"], rule["protocol"], rule["remote_ip_prefix"],
            rule["remote_group_id"], rule["port_range_min"], rule["port_range_max"])


def test_default_group_on_first_list(api: Api) -> None:
    listed = get(api, SG, "tenant-a")["security_groups"]
    (default,) = listed
    assert default == {**default, "name": "default", "project_id": "tenant-a", "tenant_id": "tenant-a",
                       "stateful": True, "description": "Default security group"}
    sg_id = default["id"]
    assert sorted(_rule_shape(r) for r in default["security_group_rules"]) == [
        ("egress", "IPv4", None, None, None, None, None), ("egress", "IPv6", None, None, None, None, None),
        ("ingress", "IPv4", None, None, sg_id, None, None), ("ingress", "IPv6", None, None, sg_id, None, None)]
    assert all(r["security_group_id"] == sg_id and r["project_id"] == "tenant-a"
               for r in default["security_group_rules"])
    # a second look makes nothing more; another project gets its own
    assert get(api, SG, "tenant-a")["security_groups"] == listed
    assert len(get(api, SG, "tenant-b")["security_groups"]) == 2
    assert len(get(api, RULE)["security_group_rules"]) == 8
    assert get(api, f"{SG}/{sg_id}")["security_group"] == default
    assert len(get(api, f"{SG}?project_id=tenant-b")["security_groups"]) == 1


def test_default_group_on_first_port(api: Api) -> None:
    net = api.create("network", headers={"X-Project-Id": "tenant-a"})
    api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24")
    port = api.create("port", network_id=net["id"], headers={"X-Project-Id": "tenant-a"})
    default = graph_l3.default_sg(api.topology.graph, "tenant-a")
    assert port["security_groups"] == [default.id] and port["port_security_enabled"] is True
    assert port["allowed_address_pairs"] == []
    assert [p.id for p in graph_l3.sg_members(api.topology.graph, default.id)] == [port["id"]]
    second = api.create("port", network_id=net["id"], headers={"X-Project-Id": "tenant-a"})
    assert second["security_groups"] == [default.id]
    assert len(get(api, SG, "tenant-a")["security_groups"]) == 1
    dhcp = api.create("port", network_id=net["id"], device_owner="network:dhcp", headers={"X-Project-Id": "tenant-a"})
    assert dhcp["security_groups"] == []  # network-owned ports get no default group


def test_group_crud(api: Api) -> None:
    web = create(api, SG, "security_group", "tenant-a", name="web", description="web servers")
    assert (web["name"], web["description"], web["stateful"]) == ("web", "web servers", True)
    assert sorted(_rule_shape(r) for r in web["security_group_rules"]) == [
        ("egress", "IPv4", None, None, None, None, None), ("egress", "IPv6", None, None, None, None, None)]
    # creating the first group made the project's default group too
    assert sorted(g["name"] for g in get(api, f"{SG}?project_id=tenant-a")["security_groups"]) == ["default", "web"]
    resp = api.request("PUT", f"{SG}/{web['id']}", {"security_group": {"name": "www", "description": ""}})
    assert resp.status_code == 200 and resp.json()["security_group"]["name"] == "www"
    assert api.request("DELETE", f"{SG}/{web['id']}").status_code == 204
    api.expect_error(404, "SecurityGroupNotFound", "GET", f"{SG}/{web['id']}")
    assert [r for r in get(api, RULE)["security_group_rules"] if r["security_group_id"] == web["id"]] == []


def test_rules(api: Api) -> None:
    sg = create(api, SG, "security_group", "tenant-a", name="web")
    other = create(api, SG, "security_group", "tenant-a", name="db")

    def rule(**attrs: Any) -> dict:
        return create(api, RULE, "security_group_rule", security_group_id=sg["id"], **attrs)

    tcp = rule(direction="ingress", protocol="TCP", port_range_min=80, port_range_max=443,
               remote_ip_prefix="192.168.1.7/24")
    assert _rule_shape(tcp) == ("ingress", "IPv4", "tcp", "192.168.1.0/24", None, 80, 443)
    assert tcp["project_id"] == "tenant-a"
    assert rule(direction="ingress", protocol="17", port_range_min=53, port_range_max=53)["protocol"] == "17"
    assert rule(direction="ingress", protocol=132, port_range_min=9, port_range_max=9)["protocol"] == "132"
    icmp = rule(direction="ingress", protocol="icmp", port_range_min=8, port_range_max=0)
    assert (icmp["port_range_min"], icmp["port_range_max"]) == (8, 0)
    assert rule(direction="ingress", ethertype="ipv6", protocol="ipv6-icmp")["ethertype"] == "IPv6"
    assert rule(direction="egress", ethertype="IPv6", remote_ip_prefix="fd00::1/64")["remote_ip_prefix"] == "fd00::/64"
    remote = rule(direction="ingress", protocol="tcp", port_range_min=22, port_range_max=22,
                  remote_group_id=other["id"])
    assert remote["remote_group_id"] == other["id"]
    assert rule(direction="ingress", protocol="gre")["port_range_min"] is None
    assert rule(direction="ingress", protocol=None, description="any")["description"] == "any"
    shown = get(api, f"{SG}/{sg['id']}")["security_group"]["security_group_rules"]
    assert len(shown) == 2 + 9
    assert {r.id for r in graph_l3.sg_remote_rules(api.topology.graph, other["id"])} == {remote["id"]}
    assert graph_l3.sg_referrers(api.topology.graph, [other["id"]]) == {sg["id"]}
    listed = get(api, f"{RULE}?security_group_id={sg['id']}&protocol=tcp")["security_group_rules"]
    assert {r["id"] for r in listed} == {tcp["id"], remote["id"]}
    assert api.request("DELETE", f"{RULE}/{tcp['id']}").status_code == 204
    api.expect_error(404, "SecurityGroupRuleNotFound", "DELETE", f"{RULE}/{tcp['id']}")
    # deleting a group takes the rules naming it as remote group with it
    assert api.request("DELETE", f"{SG}/{other['id']}").status_code == 204
    api.expect_error(404, "SecurityGroupRuleNotFound", "GET", f"{RULE}/{remote['id']}")


def test_rule_errors(api: Api) -> None:
    sg = create(api, SG, "security_group", "tenant-a", name="web")
    existing = create(api, RULE, "security_group_rule", security_group_id=sg["id"], direction="ingress",
                      protocol="tcp", port_range_min=22, port_range_max=22)
    err = api.expect_error

    def bad(status: int, kind: str, **attrs: Any) -> dict:
        return err(status, kind, "POST", RULE, {"security_group_rule": {"security_group_id": sg["id"], **attrs}})

    bad(400, "HTTPBadRequest")  # no direction
    bad(400, "HTTPBadRequest", direction="sideways")
    bad(400, "HTTPBadRequest", direction="ingress", ethertype="IPv5")
    bad(400, "SecurityGroupRuleInvalidProtocol", direction="ingress", protocol="bogus")
    bad(400, "SecurityGroupRuleInvalidProtocol", direction="ingress", protocol=256)
    bad(400, "SecurityGroupRuleInvalidProtocol", direction="ingress", protocol=-1)
    bad(400, "SecurityGroupInvalidPortRange", direction="ingress", protocol="tcp", port_range_min=90,
        port_range_max=80)
    bad(400, "SecurityGroupInvalidPortRange", direction="ingress", protocol="udp", port_range_min=90)
    bad(400, "SecurityGroupInvalidPortValue", direction="ingress", protocol="tcp", port_range_min=0,
        port_range_max=80)
    bad(400, "HTTPBadRequest", direction="ingress", protocol="tcp", port_range_min=1, port_range_max=70000)
    bad(400, "SecurityGroupProtocolRequiredWithPorts", direction="ingress", port_range_min=80, port_range_max=80)
    bad(400, "SecurityGroupInvalidIcmpValue", direction="ingress", protocol="icmp", port_range_min=300)
    bad(400, "SecurityGroupMissingIcmpType", direction="ingress", protocol="icmp", port_range_max=0)
    bad(400, "SecurityGroupInvalidProtocolForPortRange", direction="ingress", protocol="gre", port_range_min=1,
        port_range_max=2)
    bad(400, "SecurityGroupEthertypeConflictWithProtocol", direction="ingress", protocol="icmpv6")
    bad(400, "SecurityGroupRuleParameterConflict", direction="ingress", remote_ip_prefix="fd00::/64")
    bad(400, "SecurityGroupRuleParameterConflict", direction="ingress", ethertype="IPv6",
        remote_ip_prefix="10.0.0.0/8")
    bad(400, "InvalidCIDR", direction="ingress", remote_ip_prefix="10.0.0.0/40")
    bad(400, "SecurityGroupRemoteGroupAndRemoteIpPrefix", direction="ingress", remote_ip_prefix="10.0.0.0/8",
        remote_group_id=sg["id"])
    bad(404, "SecurityGroupNotFound", direction="ingress", remote_group_id=MISSING)
    err(404, "SecurityGroupNotFound", "POST", RULE, {"security_group_rule": {"security_group_id": MISSING,
                                                                             "direction": "ingress"}})
    message = bad(409, "SecurityGroupRuleExists", direction="ingress", protocol="6", port_range_min=22,
                  port_range_max=22)["message"]
    assert existing["id"] in message
    # egress to anywhere exists already (0.0.0.0/0 is "any")
    bad(409, "SecurityGroupRuleExists", direction="egress", remote_ip_prefix="0.0.0.0/0")
    err(400, "HTTPBadRequest", "PUT", f"{RULE}/{existing['id']}", {"security_group_rule": {"protocol": "udp"}})
    err(400, "HTTPBadRequest", "POST", RULE, {"security_group_rule": {"security_group_id": sg["id"],
                                                                      "direction": "ingress", "colour": "red"}})


def test_group_errors(api: Api) -> None:
    default = get(api, SG, "tenant-a")["security_groups"][0]
    err = api.expect_error
    err(409, "SecurityGroupCannotRemoveDefault", "DELETE", f"{SG}/{default['id']}")
    err(409, "SecurityGroupCannotUpdateDefault", "PUT", f"{SG}/{default['id']}", {"security_group": {"name": "x"}})
    err(409, "SecurityGroupDefaultAlreadyExists", "POST", SG, {"security_group": {"name": "default"}})
    web = create(api, SG, "security_group", "tenant-a", name="web")
    err(409, "SecurityGroupDefaultAlreadyExists", "PUT", f"{SG}/{web['id']}", {"security_group": {"name": "Default"}})
    err(404, "SecurityGroupNotFound", "GET", f"{SG}/{MISSING}")
    err(404, "SecurityGroupNotFound", "PUT", f"{SG}/{MISSING}", {"security_group": {"name": "x"}})
    err(404, "SecurityGroupNotFound", "DELETE", f"{SG}/{MISSING}")
    err(400, "HTTPBadRequest", "POST", SG, {"security_group": {"name": 5}})
    err(400, "HTTPBadRequest", "POST", SG, {"security_group": {"security_group_rules": []}})
    net = api.create("network", headers={"X-Project-Id": "tenant-a"})
    api.create("port", network_id=net["id"], security_groups=[web["id"]], headers={"X-Project-Id": "tenant-a"})
    err(409, "SecurityGroupInUse", "DELETE", f"{SG}/{web['id']}")
    assert api.request("PUT", f"{SG}/{default['id']}", {"security_group": {"description": "d"}}).status_code == 200


def test_port_security(api: Api) -> None:
    net = api.create("network", headers={"X-Project-Id": "tenant-a"})
    api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24")
    web = create(api, SG, "security_group", "tenant-a", name="web")
    db = create(api, SG, "security_group", "tenant-a", name="db")
    theirs = create(api, SG, "security_group", "tenant-b", name="x")
    hdr = {"X-Project-Id": "tenant-a"}
    port = api.create("port", network_id=net["id"], security_groups=[web["id"], db["id"], web["id"]], headers=hdr,
                      allowed_address_pairs=[{"ip_address": "10.0.0.200"},
                                             {"ip_address": "10.1.0.0/16", "mac_address": "FA:16:3E:00:00:AA"}])
    assert port["security_groups"] == [web["id"], db["id"]]
    assert port["allowed_address_pairs"] == [
        {"ip_address": "10.0.0.200", "mac_address": port["mac_address"]},
        {"ip_address": "10.1.0.0/16", "mac_address": "fa:16:3e:00:00:aa"}]
    graph = api.topology.graph
    assert [g.id for g in graph_l3.port_security_groups(graph, graph.port(port["id"]))] == [web["id"], db["id"]]
    assert graph_l3.allowed_address_pairs(graph.port(port["id"]))[0] == ("10.0.0.200", port["mac_address"])
    assert [p["id"] for p in api.list("ports", f"security_groups={db['id']}")] == [port["id"]]
    upd = api.update("port", port["id"], security_groups=[db["id"]])
    assert upd["security_groups"] == [db["id"]]
    assert [p.id for p in graph_l3.sg_members(graph, web["id"])] == []
    err = api.expect_error
    path = f"/v2.0/ports/{port['id']}"
    err(409, "PortSecurityPortHasSecurityGroup", "PUT", path, {"port": {"port_security_enabled": False}})
    err(409, "AddressPairAndPortSecurityRequired", "PUT", path,
        {"port": {"port_security_enabled": False, "security_groups": []}})
    off = api.update("port", port["id"], port_security_enabled=False, security_groups=[], allowed_address_pairs=[])
    assert (off["port_security_enabled"], off["security_groups"], off["allowed_address_pairs"]) == (False, [], [])
    err(400, "PortSecurityAndIPRequiredForSecurityGroups", "PUT", path, {"port": {"security_groups": [db["id"]]}})
    on = api.update("port", port["id"], port_security_enabled=True)
    assert on["security_groups"] == []  # re-enabling does not add groups by itself
    plain = api.create("port", network_id=net["id"], port_security_enabled=False, headers=hdr)
    assert plain["security_groups"] == []
    new = {"network_id": net["id"], "project_id": "tenant-a"}
    err(400, "PortSecurityAndIPRequiredForSecurityGroups", "POST", "/v2.0/ports",
        {"port": {**new, "port_security_enabled": False, "security_groups": [db["id"]]}})
    err(409, "AddressPairAndPortSecurityRequired", "POST", "/v2.0/ports",
        {"port": {**new, "port_security_enabled": False, "allowed_address_pairs": [{"ip_address": "10.0.0.9"}]}})
    err(404, "SecurityGroupNotFound", "POST", "/v2.0/ports", {"port": {**new, "security_groups": [MISSING]}})
    err(404, "SecurityGroupNotFound", "POST", "/v2.0/ports", {"port": {**new, "security_groups": [theirs["id"]]}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/ports", {"port": {**new, "security_groups": "web"}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/ports", {"port": {**new, "allowed_address_pairs": [{"mac": "x"}]}})
    err(400, "InvalidInput", "POST", "/v2.0/ports", {"port": {**new, "allowed_address_pairs": [
        {"ip_address": "10.0.0.300"}]}})
    err(400, "InvalidInput", "POST", "/v2.0/ports", {"port": {**new, "allowed_address_pairs": [
        {"ip_address": "10.0.0.3", "mac_address": "ff:ff:ff:ff:ff:ff"}]}})
    err(400, "DuplicateAddressPairInRequest", "POST", "/v2.0/ports", {"port": {**new, "allowed_address_pairs": [
        {"ip_address": "10.0.0.3"}, {"ip_address": "10.0.0.3"}]}})
    err(400, "AllowedAddressPairExhausted", "POST", "/v2.0/ports", {"port": {**new, "allowed_address_pairs": [
        {"ip_address": f"10.0.0.{i}"} for i in range(11)]}})


def test_a_port_cannot_mix_stateful_and_stateless_groups(api: Api) -> None:
    """Neutron refuses it (409 SecurityGroupConflict), on create and update: the flows decide per group
    whether a connection is committed (flows.acl), which needs a port's groups to agree."""
    net = api.create("network")
    api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24")
    full = create(api, SG, "security_group", name="full")
    bare = create(api, SG, "security_group", name="bare", stateful=False)
    bare2 = create(api, SG, "security_group", name="bare2", stateful=False)
    err = api.expect_error
    err(409, "SecurityGroupConflict", "POST", "/v2.0/ports",
        {"port": {"network_id": net["id"], "security_groups": [full["id"], bare["id"]]}})
    port = api.create("port", network_id=net["id"], security_groups=[bare["id"], bare2["id"]])
    err(409, "SecurityGroupConflict", "PUT", f"/v2.0/ports/{port['id']}",
        {"port": {"security_groups": [bare["id"], full["id"]]}})
    assert api.update("port", port["id"], security_groups=[full["id"]])["security_groups"] == [full["id"]]
    # and a group in use keeps its statefulness (so a port's groups cannot come to disagree later)
    err(409, "SecurityGroupInUse", "PUT", f"{SG}/{full['id']}", {"security_group": {"stateful": False}})


def test_secgroup_notifications(api: Api) -> None:
    for i in (1, 2):
        api.create("hypervisor", name=f"hv{i}", datapath_id=i, tunnel_ip=f"192.168.100.{i}")
    net = api.create("network")
    api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24")
    web = create(api, SG, "security_group", name="web")
    api.create("port", network_id=net["id"], security_groups=[web["id"]], **{"binding:host_id": "hv1"})
    api.create("port", network_id=net["id"], **{"binding:host_id": "hv2"})  # in the default group
    before = len(api.events)
    rule = create(api, RULE, "security_group_rule", security_group_id=web["id"], direction="ingress",
                  protocol="tcp", port_range_min=80, port_range_max=80)
    assert api.events[before:] == [{"hv1"}]  # the hypervisors of the group's members
    assert api.request("DELETE", f"{RULE}/{rule['id']}").status_code == 204
    assert api.events[-1] == {"hv1"}
    unused = create(api, SG, "security_group", name="unused")
    assert api.events[-1] == set()
    assert api.request("DELETE", f"{SG}/{unused['id']}").status_code == 204
    assert api.events[-1] == set()


def test_secgroups_restart_reloads(api: Api) -> None:
    net = api.create("network", headers={"X-Project-Id": "tenant-a"})
    web = create(api, SG, "security_group", "tenant-a", name="web", stateful=False)
    create(api, RULE, "security_group_rule", security_group_id=web["id"], direction="ingress", protocol="icmp",
           remote_group_id=web["id"])
    api.create("port", network_id=net["id"], security_groups=[web["id"]], headers={"X-Project-Id": "tenant-a"},
               allowed_address_pairs=[{"ip_address": "10.0.0.0/24"}])
    shown = (get(api, SG)["security_groups"], get(api, RULE)["security_group_rules"], api.list("ports"))
    graph = api.topology.graph
    edges = sorted(tuple(sorted(e)) for e in graph.g.edges)
    api.restart()
    assert (get(api, SG)["security_groups"], get(api, RULE)["security_group_rules"], api.list("ports")) == shown
    assert sorted(tuple(sorted(e)) for e in api.topology.graph.g.edges) == edges
    assert graph_l3.default_sg(api.topology.graph, "tenant-a").name == "default"
    assert len(get(api, f"{SG}?project_id=tenant-a", "tenant-a")["security_groups"]) == 2  # no second default


def test_admin_deletes_a_default_group(api: Api) -> None:
    """Neutron lets an admin (X-Roles, trusted without Keystone) delete a project's default group; the
    project's next listing makes it again, once."""
    (default,) = get(api, SG, "tenant-a")["security_groups"]
    resp = api.request("DELETE", f"{SG}/{default['id']}", headers={"X-Project-Id": "ops", "X-Roles": "member"})
    assert resp.status_code == 409, resp.text
    resp = api.request("DELETE", f"{SG}/{default['id']}", headers={"X-Project-Id": "ops", "X-Roles": "admin,member"})
    assert resp.status_code == 204, resp.text
    assert api.topology.graph.get("sg", default["id"]) is None
    for _ in range(2):
        (again,) = [g for g in get(api, SG, "tenant-a")["security_groups"] if g["project_id"] == "tenant-a"]
        assert again["name"] == "default" and again["id"] != default["id"]
