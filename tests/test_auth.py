"""Issue #14 against a real Keystone: tokens (401), project scoping (404/403), admin-only parts, readers,
the default security group, and openstacksdk / the openstack CLI with passwords.

The personas (tests/keystone_fixtures.py): ``admin``, ``alice`` (member of proj-a), ``bob``
(member of proj-b), ``rita`` (reader of proj-a). One Keystone and one ``--auth keystone``
controller serve the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.keystone_fixtures import KEYSTONE_VENV, PASSWORD, PERSONAS, Keystone, session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def as_(keystone: Keystone, keystone_ctl):
    """``as_(user)``: an API session acting as that persona (None: no token)."""
    return lambda user: session(keystone, keystone_ctl, user)


@pytest.fixture(scope="module")
def world(as_, keystone: Keystone) -> dict:
    """proj-a's resources of every kind (made by alice), its shared network, and an admin's external one."""
    admin, alice = as_("admin"), as_("alice")
    ext = admin.create("network", name="public", **{"router:external": True})
    ext_sub = admin.create("subnet", network_id=ext["id"], cidr="203.0.113.0/24")
    # A's shared network: sharing is the admin's to grant (create_network:shared), the network stays A's
    shared = admin.create("network", name="shared", shared=True, project_id=keystone.projects["proj-a"])
    shared_sub = alice.create("subnet", network_id=shared["id"], cidr="10.9.0.0/24")
    net = alice.create("network", name="a-net")
    sub = alice.create("subnet", network_id=net["id"], cidr="10.1.0.0/24")
    port = alice.create("port", network_id=net["id"])
    router = alice.create("router", name="a-router", external_gateway_info={"network_id": ext["id"]})
    status, _ = alice.call("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
    assert status == 200
    fip = alice.create("floatingip", floating_network_id=ext["id"], port_id=port["id"])
    sg = alice.create("security_group", "security-groups", name="a-web")
    rule = alice.create("security_group_rule", "security-group-rules", security_group_id=sg["id"],
                        direction="ingress", protocol="tcp", port_range_min=80, port_range_max=80)
    return {"ext": ext, "ext_sub": ext_sub, "shared": shared, "shared_sub": shared_sub,
            "networks": net, "subnets": sub, "ports": port, "routers": router, "floatingips": fip,
            "security-groups": sg, "security-group-rules": rule}


A_RESOURCES = ("networks", "subnets", "ports", "routers", "floatingips", "security-groups", "security-group-rules")


def test_missing_invalid_expired_tokens_get_401(as_, keystone: Keystone, keystone_ctl) -> None:
    assert as_(None).call("GET", "/v2.0/networks")[0] == 401
    # the same forger's token with its expiry ahead is accepted: the expired one fails for its expiry alone
    assert as_(None).call("GET", "/v2.0/networks", **{"X-Auth-Token": signed_token(keystone, hours=1)})[0] == 200
    for token in ("garbage", str(uuid.uuid4()), signed_token(keystone, hours=-1)):
        resp = as_(None).http.get(keystone_ctl.api_url + "/v2.0/networks", headers={"X-Auth-Token": token},
                                  timeout=30)
        assert resp.status_code == 401, (token, resp.text)
        assert "Keystone uri" in resp.headers.get("WWW-Authenticate", "")
    # the version document is open, as Neutron's (clients discover the API with it)
    assert as_(None).call("GET", "/")[0] == 200
    # the claimed identity headers are not trusted: the token's project wins
    status, body = as_("bob").call("POST", "/v2.0/networks", {"network": {"name": "x"}},
                                   **{"X-Project-Id": "proj-a-claimed", "X-Roles": "admin"})
    assert status == 201 and body["network"]["project_id"] == keystone.projects["proj-b"], body
    assert as_(None).call("GET", "/metrics")[0] == 401
    assert as_("bob").call("GET", "/metrics")[0] == 403
    assert as_("admin").call("GET", "/metrics")[0] == 200


def signed_token(keystone: Keystone, hours: float) -> str:
    """A token of alice's signed with Keystone's own fernet keys, expiring ``hours`` from now (< 0: past)."""
    script = """
import datetime, sys
conf, user, project, hours = sys.argv[1:]
sys.argv[1:] = []  # oslo.config reads the command line: it must not see ours
from keystone.common import utils
from keystone.server import configure
configure(config_files=[conf])
from keystone.token.token_formatters import ProjectScopedPayload, TokenFormatter
expiry = utils.isotime(datetime.datetime.utcnow() + datetime.timedelta(hours=float(hours)), subsecond=True)
print(TokenFormatter().create_token(user, expiry, ["YWJjZGVmZ2hpamtsbW5vcA"], ProjectScopedPayload,
      methods=["password"], project_id=project))
"""
    users = user_ids(keystone)
    out = subprocess.run([str(KEYSTONE_VENV / "bin" / "python"), "-c", script, str(keystone.workdir / "keystone.conf"),
                          users["alice"], keystone.projects["proj-a"], str(hours)],
                         check=True, capture_output=True, text=True, timeout=60)
    return out.stdout.strip().splitlines()[-1]


def user_ids(keystone: Keystone) -> dict[str, str]:
    """User ids by name."""
    import requests

    token = keystone.token("admin")
    users = requests.get(f"{keystone.url}/users", headers={"X-Auth-Token": token}, timeout=30).json()["users"]
    return {u["name"]: u["id"] for u in users}


@pytest.mark.parametrize("collection", A_RESOURCES)
def test_other_project_cannot_see_change_or_delete(as_, world: dict, collection: str) -> None:
    item = world[collection]
    member = collection.replace("-", "_")[:-1]
    bob = as_("bob")
    assert bob.call("GET", f"/v2.0/{collection}/{item['id']}")[0] == 404
    listed = bob.call("GET", f"/v2.0/{collection}")[1][collection.replace("-", "_")]
    assert item["id"] not in {i["id"] for i in listed}
    body = {member: {"description": "bob was here"}} if collection != "security-group-rules" else {member: {}}
    assert bob.call("PUT", f"/v2.0/{collection}/{item['id']}", body)[0] == 404
    assert bob.call("DELETE", f"/v2.0/{collection}/{item['id']}")[0] == 404
    # the owner and the admin still see it, unchanged
    for user in ("alice", "admin"):
        status, shown = as_(user).call("GET", f"/v2.0/{collection}/{item['id']}")
        assert status == 200 and shown[member].get("description", "") != "bob was here"


def test_shared_and_external_networks(as_, world: dict, keystone: Keystone) -> None:
    bob = as_("bob")
    shared, ext = world["shared"], world["ext"]
    seen = {n["id"] for n in bob.call("GET", "/v2.0/networks")[1]["networks"]}
    assert {shared["id"], ext["id"]} <= seen and world["networks"]["id"] not in seen
    subnets = {s["id"] for s in bob.call("GET", "/v2.0/subnets")[1]["subnets"]}
    assert {world["shared_sub"]["id"], world["ext_sub"]["id"]} <= subnets
    port = bob.create("port", network_id=shared["id"])
    assert port["project_id"] == keystone.projects["proj-b"] and shared["project_id"] == keystone.projects["proj-a"]
    # A, the network's owner, sees B's port on it; B's port is B's to delete, not A's network to delete
    assert as_("alice").call("GET", f"/v2.0/ports/{port['id']}")[0] == 200
    # seen, not his: 403
    assert bob.call("PUT", f"/v2.0/networks/{shared['id']}", {"network": {"name": "mine"}})[0] == 403
    assert bob.call("DELETE", f"/v2.0/networks/{shared['id']}")[0] == 403
    assert bob.call("DELETE", f"/v2.0/subnets/{world['shared_sub']['id']}")[0] == 403
    # nor does a port on A's private network work: the network is not found
    status, body = bob.call("POST", "/v2.0/ports", {"port": {"network_id": world["networks"]["id"]}})
    assert status == 404 and body["NeutronError"]["type"] == "NetworkNotFound"
    assert bob.call("DELETE", f"/v2.0/ports/{port['id']}")[0] == 204
    # on A's network B takes the MAC and addresses it is given: choosing them is the network owner's
    for chosen in ({"mac_address": "fa:16:3e:0b:0b:0b"}, {"fixed_ips": [{"ip_address": "10.9.0.77"}]},
                   {"allowed_address_pairs": [{"ip_address": "10.9.0.78"}]}):
        status, body = bob.call("POST", "/v2.0/ports", {"port": {"network_id": shared["id"], **chosen}})
        assert status == 403 and body["NeutronError"]["type"] == "PolicyNotAuthorized", (chosen, body)
    by_subnet = bob.create("port", network_id=shared["id"], fixed_ips=[{"subnet_id": world["shared_sub"]["id"]}])
    assert bob.call("DELETE", f"/v2.0/ports/{by_subnet['id']}")[0] == 204
    # nor may B pass its port off as one of the cloud's own (network:*, trusted by port security), there or
    # later; any other owner is B's to give; on its own network the owner may (Neutron's network_device rule)
    status, body = bob.call("POST", "/v2.0/ports", {"port": {"network_id": shared["id"],
                                                             "device_owner": "network:dhcp"}})
    assert status == 403 and "device_owner" in body["NeutronError"]["message"], body
    vm = bob.create("port", network_id=shared["id"], device_owner="compute:nova")
    status, _ = bob.call("PUT", f"/v2.0/ports/{vm['id']}", {"port": {"device_owner": "network:router_interface"}})
    assert status == 403 and bob.call("GET", f"/v2.0/ports/{vm['id']}")[1]["port"]["device_owner"] == "compute:nova"
    assert bob.call("DELETE", f"/v2.0/ports/{vm['id']}")[0] == 204
    alice = as_("alice")
    own = alice.create("port", network_id=shared["id"], device_owner="network:dhcp")
    assert alice.call("DELETE", f"/v2.0/ports/{own['id']}")[0] == 204
    # nor may B name A's resources in its own: a gateway, an interface, a floating IP's port, a rule's group
    status, body = bob.call("POST", "/v2.0/routers", {"router": {
        "external_gateway_info": {"network_id": world["networks"]["id"]}}})
    assert status == 404 and body["NeutronError"]["type"] == "NetworkNotFound", body
    router = bob.create("router", name="b-router")
    status, body = bob.call("PUT", f"/v2.0/routers/{router['id']}/add_router_interface",
                            {"subnet_id": world["subnets"]["id"]})
    assert status == 404 and body["NeutronError"]["type"] == "SubnetNotFound", body
    status, body = bob.call("POST", "/v2.0/floatingips", {"floatingip": {
        "floating_network_id": ext["id"], "port_id": world["ports"]["id"]}})
    assert status == 404 and body["NeutronError"]["type"] == "PortNotFound", body
    status, body = bob.call("POST", "/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": world["security-groups"]["id"], "direction": "ingress"}})
    assert status == 404 and body["NeutronError"]["type"] == "SecurityGroupNotFound", body


def test_admin_only_attributes_and_hypervisors(as_, world: dict) -> None:
    bob, alice, admin = as_("bob"), as_("alice"), as_("admin")
    shared = world["shared"]
    status, body = bob.call("POST", "/v2.0/ports", {"port": {"network_id": shared["id"], "binding:host_id": "hv1"}})
    assert status == 403 and body["NeutronError"]["type"] == "PolicyNotAuthorized"
    assert "binding:host_id" in body["NeutronError"]["message"]
    port = alice.call("GET", f"/v2.0/ports/{world['ports']['id']}")[1]["port"]
    assert not any(k.startswith("binding:") for k in port)
    assert "binding:host_id" in admin.call("GET", f"/v2.0/ports/{world['ports']['id']}")[1]["port"]
    assert alice.call("PUT", f"/v2.0/ports/{port['id']}", {"port": {"binding:host_id": "hv1"}})[0] == 403
    # nor do the answers to its own writes show them
    created = alice.create("port", network_id=world["networks"]["id"])
    status, updated = alice.call("PUT", f"/v2.0/ports/{created['id']}", {"port": {"name": "renamed"}})
    assert status == 200 and not any(k.startswith("binding:") for k in [*created, *updated["port"]])
    assert "provider:network_type" not in alice.create("network", name="own")
    net = alice.call("GET", f"/v2.0/networks/{world['networks']['id']}")[1]["network"]
    assert "provider:network_type" not in net and "provider:network_type" in admin.call(
        "GET", f"/v2.0/networks/{net['id']}")[1]["network"]
    assert alice.call("POST", "/v2.0/networks", {"network": {"shared": True}})[0] == 403
    router = alice.call("GET", f"/v2.0/routers/{world['routers']['id']}")[1]["router"]
    assert "gateway_hypervisors" not in router and "active_gateway_hypervisor" not in router
    assert alice.call("PUT", f"/v2.0/routers/{router['id']}", {"router": {"gateway_hypervisors": ["hv1"]}})[0] == 403
    hv = {"hypervisor": {"name": "hv-auth", "datapath_id": "00000000000000aa", "tunnel_ip": "192.0.2.50"}}
    assert bob.call("POST", "/v2.0/hypervisors", hv)[0] == 403
    assert admin.call("POST", "/v2.0/hypervisors", hv)[0] == 201
    for method, body in (("GET", None), ("PUT", {"hypervisor": {"tunnel_ip": "192.0.2.66"}}), ("DELETE", None)):
        assert bob.call(method, "/v2.0/hypervisors/hv-auth", body)[0] == 403
    assert bob.call("GET", "/v2.0/hypervisors")[0] == 403
    assert admin.call("GET", "/v2.0/hypervisors/hv-auth")[1]["hypervisor"]["tunnel_ip"] == "192.0.2.50"
    assert admin.call("DELETE", "/v2.0/hypervisors/hv-auth")[0] == 204


def test_reader_cannot_write(as_, world: dict) -> None:
    rita = as_("rita")
    net = world["networks"]
    assert rita.call("GET", f"/v2.0/networks/{net['id']}")[0] == 200
    assert rita.call("POST", "/v2.0/networks", {"network": {"name": "r"}})[0] == 403
    assert rita.call("PUT", f"/v2.0/networks/{net['id']}", {"network": {"name": "r"}})[0] == 403
    assert rita.call("DELETE", f"/v2.0/networks/{net['id']}")[0] == 403
    assert rita.call("POST", "/v2.0/ports", {"port": {"network_id": net["id"]}})[0] == 403


def test_default_security_group(as_, keystone: Keystone) -> None:
    """Listing makes the project's default group once; an admin may delete it, its project may not."""
    bob, admin = as_("bob"), as_("admin")
    for port in bob.call("GET", "/v2.0/ports")[1]["ports"]:  # a group in use is never deleted: free it first
        if port["project_id"] == keystone.projects["proj-b"]:
            assert bob.call("DELETE", f"/v2.0/ports/{port['id']}")[0] == 204
    for _ in range(2):
        groups = bob.call("GET", "/v2.0/security-groups?name=default")[1]["security_groups"]
        assert [g["project_id"] for g in groups] == [keystone.projects["proj-b"]]
    status, body = bob.call("DELETE", f"/v2.0/security-groups/{groups[0]['id']}")
    assert status == 409 and body["NeutronError"]["type"] == "SecurityGroupCannotRemoveDefault"
    assert admin.call("DELETE", f"/v2.0/security-groups/{groups[0]['id']}")[0] == 204
    again = bob.call("GET", "/v2.0/security-groups?name=default")[1]["security_groups"]
    assert len(again) == 1 and again[0]["id"] != groups[0]["id"]
    # an unauthenticated caller gets a 401 and no group is made for anyone
    before = len(admin.call("GET", "/v2.0/security-groups")[1]["security_groups"])
    assert as_(None).call("GET", "/v2.0/security-groups", **{"X-Project-Id": "nobody"})[0] == 401
    assert len(admin.call("GET", "/v2.0/security-groups")[1]["security_groups"]) == before


def _sdk(keystone: Keystone, user: str):
    import openstack

    return openstack.connect(auth_url=keystone.url, username=user, password=PASSWORD,
                             project_name=PERSONAS[user][0], user_domain_id="default", project_domain_id="default",
                             region_name="RegionOne")


def test_openstacksdk_with_passwords(keystone: Keystone, keystone_ctl) -> None:
    """The SDK authenticates with a password and finds the API in Keystone's catalog."""
    from openstack import exceptions

    alice, bob = _sdk(keystone, "alice"), _sdk(keystone, "bob")
    net = alice.network.create_network(name=f"sdk-{uuid.uuid4().hex[:6]}")
    assert net.project_id == keystone.projects["proj-a"]
    assert net.id in {n.id for n in alice.network.networks()}
    assert net.id not in {n.id for n in bob.network.networks()}
    with pytest.raises(exceptions.NotFoundException):
        bob.network.get_network(net.id)
    with pytest.raises(exceptions.NotFoundException):
        bob.network.delete_network(net.id, ignore_missing=False)
    alice.network.delete_network(net)


def test_openstack_cli_with_passwords(keystone: Keystone, keystone_ctl, tmp_path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(f"""clouds:
  tenantflow:
    auth:
      auth_url: {keystone.url}
      username: alice
      password: {PASSWORD}
      project_name: proj-a
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
""")
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(clouds)}
    cli = os.path.join(os.path.dirname(sys.executable), "openstack")
    name = f"cli-{uuid.uuid4().hex[:6]}"
    out = subprocess.run([cli, "--os-cloud", "tenantflow", "network", "create", name, "-f", "json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["project_id"] == keystone.projects["proj-a"]
    bad = subprocess.run([cli, "--os-cloud", "tenantflow", "--os-password", "wrong", "network", "list"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "401" in bad.stderr + bad.stdout


def test_refusals_answer_as_documented(as_, world: dict) -> None:
    """401, 403 and 404 under Keystone are in the OpenAPI document, with the documented bodies."""
    from tests.test_openapi import check

    doc = as_("admin").call("GET", "/openapi.json")[1]
    net = world["networks"]["id"]
    for user, method, path, template, body, status in (
            (None, "GET", "/v2.0/networks", "/v2.0/networks", None, 401),
            (None, "GET", f"/v2.0/networks/{net}", "/v2.0/networks/{id}", None, 401),
            ("rita", "PUT", f"/v2.0/networks/{net}", "/v2.0/networks/{id}", {"network": {"name": "r"}}, 403),
            ("bob", "DELETE", f"/v2.0/networks/{net}", "/v2.0/networks/{id}", None, 404),
            ("bob", "GET", "/v2.0/hypervisors", "/v2.0/hypervisors", None, 403),
            ("alice", "POST", "/v2.0/networks", "/v2.0/networks", {"network": {"shared": True}}, 403)):
        resp = as_(user).http.request(method, as_(user).url + path, json=body, timeout=30)
        assert resp.status_code == status, (user, method, path, resp.text)
        check(doc, template, method, resp)
