"""Client-level tests: the real ``tenantflow controller`` process driven by ``openstacksdk`` and the ``openstack`` CLI.

These are the settings the README documents: the SDK with ``auth_type='none'`` and
``network_endpoint_override=http://HOST:9696`` (the unversioned root, where the
version document is; ``.../v2.0`` fails keystoneauth's version discovery, as it
does against Neutron), and the CLI with ``OS_AUTH_TYPE=none`` and ``--os-endpoint``
(or a ``clouds.yaml``). Success paths check what came back and what the API then
shows; error paths check the SDK exception class and that it carries the
NeutronError message. A few raw requests check the JSON wrappers the SDK hides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import openstack
import pytest
from openstack import exceptions as sdk_exc

from apps.lab.controller import ControllerProcess

OPENSTACK_CLI = os.path.join(os.path.dirname(sys.executable), "openstack")
MISSING = str(uuid.uuid4())


@pytest.fixture(scope="module")
def ctrl(tmp_path_factory) -> Iterator[ControllerProcess]:
    with ControllerProcess(str(tmp_path_factory.mktemp("sdk"))) as c:
        yield c


@pytest.fixture(scope="module")
def conn(ctrl: ControllerProcess) -> Iterator[openstack.connection.Connection]:
    c = openstack.connect(auth_type="none", network_endpoint_override=ctrl.api_url)
    yield c
    c.close()


@pytest.fixture
def net(conn):
    """A fresh network with an IPv4 subnet; deleted (with its ports) afterwards."""
    n = conn.network.create_network(name=f"net-{uuid.uuid4().hex[:8]}")
    s = conn.network.create_subnet(network_id=n.id, cidr="10.20.0.0/24", ip_version=4, name="sub4")
    yield n, s
    for p in conn.network.ports(network_id=n.id):
        conn.network.delete_port(p.id)
    conn.network.delete_network(n.id, ignore_missing=True)


def _raises(cls: type[sdk_exc.HttpException], status: int, fragment: str, fn, *args, **kwargs) -> sdk_exc.HttpException:
    """Call ``fn``; it must raise ``cls`` with ``status`` and the NeutronError message containing ``fragment``."""
    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.status_code == status, err
    assert fragment in (err.details or ""), f"{fragment!r} not in the NeutronError message {err.details!r}"
    assert err.request_id and err.request_id.startswith("req-")
    return err


# -- networks ----------------------------------------------------------------------------
def test_network_lifecycle(conn) -> None:
    n = conn.network.create_network(name="blue", project_id="tenant-a", mtu=1400, is_shared=True,
                                    provider_network_type="vxlan", provider_segmentation_id=4321)
    try:
        assert (n.name, n.project_id, n.mtu, n.is_shared) == ("blue", "tenant-a", 1400, True)
        assert (n.provider_network_type, n.provider_segmentation_id) == ("vxlan", 4321)
        assert n.status == "ACTIVE" and n.is_admin_state_up is True and n.is_router_external is False
        got = conn.network.get_network(n.id)
        assert got.id == n.id and got.name == "blue" and got.subnet_ids == []
        # names resolve the way clients look them up: GET /networks/<name> is a 404, then a filtered list
        assert conn.network.find_network("blue").id == n.id
        assert conn.network.find_network("no-such-net") is None
        assert [x.id for x in conn.network.networks(name="blue")] == [n.id]
        assert n.id in {x.id for x in conn.network.networks(project_id="tenant-a")}
        assert n.id not in {x.id for x in conn.network.networks(project_id="tenant-b")}
        up = conn.network.update_network(n, name="blue2", is_admin_state_up=False)
        assert (up.name, up.is_admin_state_up, up.provider_segmentation_id) == ("blue2", False, 4321)
        assert conn.network.get_network(n.id).name == "blue2"
        vlan = conn.network.create_network(provider_network_type="vlan", provider_physical_network="physnet7",
                                           provider_segmentation_id=42)
        assert (vlan.provider_physical_network, vlan.provider_segmentation_id, vlan.mtu) == ("physnet7", 42, 1500)
        conn.network.delete_network(vlan)
    finally:
        conn.network.delete_network(n, ignore_missing=True)
    assert conn.network.find_network(n.id) is None
    _raises(sdk_exc.NotFoundException, 404, f"Network {n.id} could not be found", conn.network.get_network, n.id)


def test_network_errors(conn, net) -> None:
    n, _ = net
    _raises(sdk_exc.NotFoundException, 404, f"Network {MISSING} could not be found.", conn.network.get_network,
            MISSING)
    _raises(sdk_exc.NotFoundException, 404, "could not be found", conn.network.delete_network, MISSING,
            ignore_missing=False)
    conn.network.delete_network(MISSING, ignore_missing=True)  # the SDK swallows exactly our 404
    _raises(sdk_exc.BadRequestException, 400, "network_type value 'local' not supported",
            conn.network.create_network, provider_network_type="local")
    _raises(sdk_exc.BadRequestException, 400, "mtu", conn.network.create_network, mtu=20)
    _raises(sdk_exc.BadRequestException, 400, "Unrecognized attribute(s) 'colour'", conn.network.create_network,
            colour="blue")
    _raises(sdk_exc.ConflictException, 409, "tunnel ID", conn.network.create_network,
            provider_segmentation_id=n.provider_segmentation_id)
    conn.network.create_port(network_id=n.id)
    _raises(sdk_exc.ConflictException, 409, "There are one or more ports still in use on the network",
            conn.network.delete_network, n)
    assert conn.network.get_network(n.id).id == n.id


# -- subnets --------------------------------------------------------------------------------
def test_subnet_lifecycle(conn, net) -> None:
    n, s4 = net
    assert (s4.cidr, s4.gateway_ip, s4.ip_version, s4.is_dhcp_enabled) == ("10.20.0.0/24", "10.20.0.1", 4, True)
    assert s4.allocation_pools == [{"start": "10.20.0.2", "end": "10.20.0.254"}]
    s6 = conn.network.create_subnet(network_id=n.id, cidr="fd00:20::/64", ip_version=6, gateway_ip=None,
                                    dns_nameservers=["fd00::53"],
                                    host_routes=[{"destination": "fd00:99::/64", "nexthop": "fd00:20::9"}])
    assert s6.gateway_ip is None and s6.dns_nameservers == ["fd00::53"]
    assert s6.host_routes == [{"destination": "fd00:99::/64", "nexthop": "fd00:20::9"}]
    assert conn.network.get_network(n.id).subnet_ids == [s4.id, s6.id]
    assert [s.id for s in conn.network.subnets(network_id=n.id, ip_version=6)] == [s6.id]
    assert conn.network.find_subnet("sub4", network_id=n.id).id == s4.id
    up = conn.network.update_subnet(s4, name="renamed", is_dhcp_enabled=False,
                                    allocation_pools=[{"start": "10.20.0.100", "end": "10.20.0.110"}])
    assert (up.name, up.is_dhcp_enabled) == ("renamed", False)
    assert up.allocation_pools == [{"start": "10.20.0.100", "end": "10.20.0.110"}]
    port = conn.network.create_port(network_id=n.id, fixed_ips=[{"subnet_id": s4.id}])
    assert port.fixed_ips == [{"subnet_id": s4.id, "ip_address": "10.20.0.100"}]
    conn.network.delete_port(port)
    conn.network.delete_subnet(s6)
    assert conn.network.get_network(n.id).subnet_ids == [s4.id]
    _raises(sdk_exc.NotFoundException, 404, f"Subnet {s6.id} could not be found", conn.network.get_subnet, s6.id)


def test_subnet_errors(conn, net) -> None:
    n, s4 = net
    _raises(sdk_exc.BadRequestException, 400, "overlaps with another subnet", conn.network.create_subnet,
            network_id=n.id, cidr="10.20.0.128/25", ip_version=4)
    _raises(sdk_exc.BadRequestException, 400, "cidr", conn.network.create_subnet, network_id=n.id, ip_version=4)
    _raises(sdk_exc.BadRequestException, 400, "", conn.network.create_subnet, network_id=n.id,
            cidr="10.300.0.0/24", ip_version=4)
    _raises(sdk_exc.BadRequestException, 400, "", conn.network.create_subnet, network_id=n.id,
            cidr="10.21.0.0/24", gateway_ip="10.99.0.1", ip_version=4)
    _raises(sdk_exc.NotFoundException, 404, f"Network {MISSING} could not be found",
            conn.network.create_subnet, network_id=MISSING, cidr="10.22.0.0/24", ip_version=4)
    conn.network.create_port(network_id=n.id)
    _raises(sdk_exc.ConflictException, 409, "One or more ports have an IP allocation from this subnet",
            conn.network.delete_subnet, s4)


# -- ports ----------------------------------------------------------------------------------
def test_port_lifecycle(conn, net) -> None:
    n, s4 = net
    s6 = conn.network.create_subnet(network_id=n.id, cidr="fd00:21::/64", ip_version=6)
    auto = conn.network.create_port(network_id=n.id, name="vm1", device_owner="compute:nova", device_id="vm-1",
                                    binding_host_id="hv1")
    assert {f["subnet_id"] for f in auto.fixed_ips} == {s4.id, s6.id}  # one address per subnet
    assert {"subnet_id": s4.id, "ip_address": "10.20.0.2"} in auto.fixed_ips
    assert auto.mac_address.startswith("fa:16:3e:") and auto.status == "DOWN"
    assert (auto.binding_host_id, auto.binding_vif_type, auto.device_owner) == ("hv1", "ovs", "compute:nova")
    by_subnet = conn.network.create_port(network_id=n.id, fixed_ips=[{"subnet_id": s4.id}])
    assert by_subnet.fixed_ips == [{"subnet_id": s4.id, "ip_address": "10.20.0.3"}]
    explicit = conn.network.create_port(network_id=n.id, mac_address="fa:16:3e:00:00:99",
                                        fixed_ips=[{"ip_address": "10.20.0.77"}])
    assert explicit.fixed_ips == [{"subnet_id": s4.id, "ip_address": "10.20.0.77"}]
    assert explicit.mac_address == "fa:16:3e:00:00:99" and explicit.binding_host_id == ""
    assert conn.network.get_port(auto.id).fixed_ips == auto.fixed_ips
    assert [p.id for p in conn.network.ports(device_id="vm-1")] == [auto.id]
    assert {p.id for p in conn.network.ports(network_id=n.id)} == {auto.id, by_subnet.id, explicit.id}
    assert conn.network.find_port("vm1").id == auto.id
    up = conn.network.update_port(explicit, name="moved", binding_host_id="hv2",
                                  fixed_ips=[{"subnet_id": s4.id, "ip_address": "10.20.0.78"}])
    assert (up.name, up.binding_host_id, up.mac_address) == ("moved", "hv2", "fa:16:3e:00:00:99")
    assert up.fixed_ips == [{"subnet_id": s4.id, "ip_address": "10.20.0.78"}]
    # the old address is free again
    again = conn.network.create_port(network_id=n.id, fixed_ips=[{"ip_address": "10.20.0.77"}])
    assert again.fixed_ips[0]["ip_address"] == "10.20.0.77"
    # PXE options (extra_dhcp_opt), as Nova's ironic driver sets them
    pxe = conn.network.update_port(auto, extra_dhcp_opts=[{"opt_name": "bootfile-name", "opt_value": "pxe.0"}])
    assert pxe.extra_dhcp_opts == [{"opt_name": "bootfile-name", "opt_value": "pxe.0", "ip_version": 4}]
    conn.network.delete_port(auto)
    _raises(sdk_exc.NotFoundException, 404, f"Port {auto.id} could not be found", conn.network.get_port, auto.id)


def test_port_errors(conn, net) -> None:
    n, s4 = net
    p = conn.network.create_port(network_id=n.id)
    ip = p.fixed_ips[0]["ip_address"]
    _raises(sdk_exc.ConflictException, 409, f"IP address {ip} already allocated", conn.network.create_port,
            network_id=n.id, fixed_ips=[{"ip_address": ip}])
    _raises(sdk_exc.ConflictException, 409, f"The mac address {p.mac_address} is in use",
            conn.network.create_port, network_id=n.id, mac_address=p.mac_address)
    _raises(sdk_exc.BadRequestException, 400, "", conn.network.create_port, network_id=n.id,
            fixed_ips=[{"ip_address": "10.99.0.5"}])
    _raises(sdk_exc.BadRequestException, 400, "", conn.network.create_port, network_id=n.id,
            mac_address="not-a-mac")
    _raises(sdk_exc.NotFoundException, 404, f"Network {MISSING} could not be found", conn.network.create_port,
            network_id=MISSING)
    _raises(sdk_exc.NotFoundException, 404, f"Subnet {MISSING} could not be found", conn.network.create_port,
            network_id=n.id, fixed_ips=[{"subnet_id": MISSING}])
    _raises(sdk_exc.BadRequestException, 400, "network_id", conn.network.update_port, p, network_id=MISSING)
    _raises(sdk_exc.NotFoundException, 404, f"Port {MISSING} could not be found", conn.network.update_port,
            MISSING, name="x")
    # nothing of the failed requests was kept
    assert [x.id for x in conn.network.ports(network_id=n.id)] == [p.id]


# -- the raw wire format the SDK hides --------------------------------------------------------
def _raw(ctrl: ControllerProcess, method: str, path: str, body: object = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(ctrl.api_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        raw, status, headers = err.read(), err.code, dict(err.headers)
    return status, headers, (json.loads(raw) if raw else {})


def test_raw_json_wrappers(ctrl: ControllerProcess) -> None:
    status, headers, doc = _raw(ctrl, "POST", "/v2.0/networks", {"network": {"name": "raw"}})
    assert status == 201 and list(doc) == ["network"] and doc["network"]["name"] == "raw"
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-Openstack-Request-Id"].startswith("req-")
    net_id = doc["network"]["id"]
    status, _, doc = _raw(ctrl, "GET", "/v2.0/networks?name=raw")
    assert status == 200 and "networks" in doc and [n["id"] for n in doc["networks"]] == [net_id]
    status, _, doc = _raw(ctrl, "GET", f"/v2.0/networks/{net_id}")
    assert status == 200 and list(doc) == ["network"]
    status, headers, doc = _raw(ctrl, "GET", f"/v2.0/networks/{MISSING}")
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    assert doc == {"NeutronError": {"type": "NetworkNotFound", "message": f"Network {MISSING} could not be found.",
                                    "detail": ""}}
    status, _, doc = _raw(ctrl, "POST", "/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "10.9.0.0/24"}})
    assert status == 201 and list(doc) == ["subnet"]
    status, _, doc = _raw(ctrl, "POST", "/v2.0/ports", {"port": {"network_id": net_id}})
    assert status == 201 and list(doc) == ["port"] and doc["port"]["fixed_ips"][0]["ip_address"] == "10.9.0.2"
    port_id = doc["port"]["id"]
    status, _, doc = _raw(ctrl, "DELETE", f"/v2.0/networks/{net_id}")
    assert status == 409 and doc["NeutronError"]["type"] == "NetworkInUse"
    status, _, doc = _raw(ctrl, "DELETE", f"/v2.0/ports/{port_id}")
    assert status == 204 and doc == {}
    status, _, _ = _raw(ctrl, "DELETE", f"/v2.0/networks/{net_id}")
    assert status == 204


# -- clouds.yaml and the openstack CLI ------------------------------------------------------
@pytest.fixture(scope="module")
def clouds_yaml(ctrl: ControllerProcess, tmp_path_factory) -> str:
    """The README's clouds.yaml, pointing at the test controller."""
    path = tmp_path_factory.mktemp("cfg") / "clouds.yaml"
    path.write_text(f"""\
clouds:
  tenantflow:
    auth_type: none
    auth:
      endpoint: {ctrl.api_url}
    network_endpoint_override: {ctrl.api_url}
""")
    return str(path)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    return subprocess.run([OPENSTACK_CLI, *args], capture_output=True, text=True, timeout=60, env={**base, **env})


def test_sdk_from_clouds_yaml(clouds_yaml: str, monkeypatch) -> None:
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", clouds_yaml)
    c = openstack.connect(cloud="tenantflow")
    try:
        n = c.network.create_network(name="from-clouds-yaml")
        assert c.network.find_network("from-clouds-yaml").id == n.id
        c.network.delete_network(n)
    finally:
        c.close()


def test_openstack_cli(ctrl: ControllerProcess, clouds_yaml: str) -> None:
    env = {"OS_AUTH_TYPE": "none"}
    ep = ["--os-endpoint", ctrl.api_url]
    r = _cli(*ep, "network", "create", "cli-net", "-f", "json", env=env)
    assert r.returncode == 0, r.stderr
    net = json.loads(r.stdout)
    assert net["name"] == "cli-net" and net["status"] == "ACTIVE" and net["provider:network_type"] == "vxlan"
    r = _cli(*ep, "subnet", "create", "cli-sub", "--network", "cli-net", "--subnet-range", "10.30.0.0/24",
             "-f", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gateway_ip"] == "10.30.0.1"
    r = _cli(*ep, "port", "create", "cli-port", "--network", "cli-net", "-f", "json", env=env)
    assert r.returncode == 0, r.stderr
    port = json.loads(r.stdout)
    assert "10.30.0.2" in json.dumps(port["fixed_ips"])
    # --os-auth-type on the command line works the same; list through a clouds.yaml too
    r = _cli("--os-auth-type", "none", *ep, "network", "list", "-f", "json", env={})
    assert r.returncode == 0, r.stderr
    assert net["id"] in {n["ID"] for n in json.loads(r.stdout)}
    r = _cli("--os-cloud", "tenantflow", "port", "list", "--network", "cli-net", "-f", "json",
             env={"OS_CLIENT_CONFIG_FILE": clouds_yaml})
    assert r.returncode == 0, r.stderr
    assert [p["ID"] for p in json.loads(r.stdout)] == [port["id"]]
    # errors: the NeutronError message reaches the user, and the exit status is non-zero
    r = _cli(*ep, "network", "delete", "cli-net", env=env)
    assert r.returncode != 0 and "ports still in use" in r.stderr, r.stderr
    r = _cli(*ep, "network", "show", MISSING, env=env)
    assert r.returncode != 0 and "No Network found" in r.stderr, r.stderr
    r = _cli(*ep, "port", "delete", "cli-port", env=env)
    assert r.returncode == 0, r.stderr
    r = _cli(*ep, "network", "delete", "cli-net", env=env)
    assert r.returncode == 0, r.stderr
    assert ctrl.request("GET", "/v2.0/networks?name=cli-net")["networks"] == []


# -- routers, floating IPs, security groups ------------------------------------------------------
@pytest.fixture
def ext_net(conn):
    """An external network with a subnet (the routers' gateway and the floating IPs' pool)."""
    n = conn.network.create_network(name=f"ext-{uuid.uuid4().hex[:6]}", is_router_external=True)
    s = conn.network.create_subnet(network_id=n.id, cidr="203.0.113.0/24", ip_version=4)
    yield n, s
    for fip in conn.network.ips(floating_network_id=n.id):
        conn.network.delete_ip(fip)


def _cleanup_router(conn, router) -> None:
    if conn.network.find_router(router.id) is None:
        return
    conn.network.update_router(router.id, routes=[])
    for p in conn.network.ports(device_id=router.id, device_owner="network:router_interface"):
        conn.network.remove_interface_from_router(router, port_id=p.id)
    conn.network.delete_router(router, ignore_missing=True)


def test_router_lifecycle(conn, net, ext_net) -> None:
    n, s4 = net
    ext, ext_sub = ext_net
    r = conn.network.create_router(name="r1", external_gateway_info={"network_id": ext.id})
    try:
        gw = r.external_gateway_info
        assert gw["network_id"] == ext.id and gw["external_fixed_ips"][0]["subnet_id"] == ext_sub.id
        assert gw["external_fixed_ips"][0]["ip_address"].startswith("203.0.113.")
        assert (r.name, r.status, r.is_admin_state_up, r.routes) == ("r1", "ACTIVE", True, [])
        assert conn.network.find_router("r1").id == r.id
        # an interface by subnet takes the subnet's gateway address
        added = conn.network.add_interface_to_router(r, subnet_id=s4.id)
        assert added["subnet_id"] == s4.id and added["id"] == r.id
        rif = conn.network.get_port(added["port_id"])
        assert rif.device_owner == "network:router_interface" and rif.device_id == r.id
        assert rif.fixed_ips == [{"subnet_id": s4.id, "ip_address": "10.20.0.1"}]
        # an interface by port
        n2 = conn.network.create_network(name="r1-net2")
        s2 = conn.network.create_subnet(network_id=n2.id, cidr="10.21.0.0/24", ip_version=4)
        p2 = conn.network.create_port(network_id=n2.id, fixed_ips=[{"ip_address": "10.21.0.5"}])
        added2 = conn.network.add_interface_to_router(r, port_id=p2.id)
        assert (added2["port_id"], added2["subnet_id"]) == (p2.id, s2.id)
        assert conn.network.get_port(p2.id).device_owner == "network:router_interface"
        # extra routes
        up = conn.network.update_router(r, routes=[{"destination": "192.168.50.0/24", "nexthop": "10.20.0.50"}])
        assert up.routes == [{"destination": "192.168.50.0/24", "nexthop": "10.20.0.50"}]
        assert conn.network.get_router(r.id).routes == up.routes
        # an interface an extra route needs stays; without the route, both go: by subnet, by port
        _raises(sdk_exc.ConflictException, 409, "required by one or more routes",
                conn.network.remove_interface_from_router, r.id, subnet_id=s4.id)
        conn.network.update_router(r.id, routes=[])
        conn.network.remove_interface_from_router(r, subnet_id=s4.id)
        _raises(sdk_exc.NotFoundException, 404, "could not be found", conn.network.get_port, added["port_id"])
        conn.network.remove_interface_from_router(r, port_id=p2.id)
        conn.network.delete_port(p2.id)
        conn.network.delete_network(n2)
        conn.network.delete_router(r)
        _raises(sdk_exc.NotFoundException, 404, f"Router {r.id} could not be found", conn.network.get_router, r.id)
    finally:
        _cleanup_router(conn, r)


def test_router_errors(conn, net, ext_net) -> None:
    n, s4 = net
    ext, _ = ext_net
    r = conn.network.create_router(name="r-err", external_gateway_info={"network_id": ext.id})
    try:
        added = conn.network.add_interface_to_router(r, subnet_id=s4.id)
        _raises(sdk_exc.ConflictException, 409, "still has ports", conn.network.delete_router, r)
        _raises(sdk_exc.ConflictException, 409, "has device owner network:router_interface",
                conn.network.delete_port, added["port_id"])
        _raises(sdk_exc.ConflictException, 409, "One or more ports have an IP allocation from this subnet",
                conn.network.delete_subnet, s4)
        n3 = conn.network.create_network(name="overlapping")
        s3 = conn.network.create_subnet(network_id=n3.id, cidr="10.20.0.0/25", ip_version=4)
        _raises(sdk_exc.BadRequestException, 400, "overlaps with cidr 10.20.0.0/24",
                conn.network.add_interface_to_router, r, subnet_id=s3.id)
        _raises(sdk_exc.NotFoundException, 404, f"has no interface on subnet {s3.id}",
                conn.network.remove_interface_from_router, r, subnet_id=s3.id)
        _raises(sdk_exc.NotFoundException, 404, f"Router {MISSING} could not be found",
                conn.network.add_interface_to_router, MISSING, subnet_id=s4.id)
        _raises(sdk_exc.BadRequestException, 400, "", conn.network.create_router,
                external_gateway_info={"network_id": n.id})  # not an external network
        conn.network.delete_network(n3)
    finally:
        _cleanup_router(conn, r)


def test_floating_ips(conn, net, ext_net) -> None:
    n, s4 = net
    ext, _ = ext_net
    r = conn.network.create_router(name="r-fip", external_gateway_info={"network_id": ext.id})
    try:
        conn.network.add_interface_to_router(r, subnet_id=s4.id)
        vm = conn.network.create_port(network_id=n.id, fixed_ips=[{"subnet_id": s4.id}, {"subnet_id": s4.id}])
        other = conn.network.create_port(network_id=n.id)
        first, second = (f["ip_address"] for f in vm.fixed_ips)
        fip = conn.network.create_ip(floating_network_id=ext.id)
        assert fip.floating_ip_address.startswith("203.0.113.") and fip.port_id is None and fip.status == "DOWN"
        # associate, choosing the second of the port's addresses
        fip = conn.network.update_ip(fip, port_id=vm.id, fixed_ip_address=second)
        assert (fip.port_id, fip.fixed_ip_address, fip.router_id) == (vm.id, second, r.id)
        assert fip.status == "ACTIVE"
        assert [x.id for x in conn.network.ips(port_id=vm.id)] == [fip.id]
        # move it to another port, then disassociate
        fip = conn.network.update_ip(fip, port_id=other.id)
        assert (fip.port_id, fip.fixed_ip_address) == (other.id, other.fixed_ips[0]["ip_address"])
        fip = conn.network.update_ip(fip, port_id=None)
        assert (fip.port_id, fip.fixed_ip_address, fip.router_id) == (None, None, None)
        # at creation, with an address of its own choosing
        fip2 = conn.network.create_ip(floating_network_id=ext.id, port_id=vm.id, fixed_ip_address=first,
                                      floating_ip_address="203.0.113.77")
        assert (fip2.floating_ip_address, fip2.fixed_ip_address) == ("203.0.113.77", first)
        # errors
        _raises(sdk_exc.BadRequestException, 400, "is not a valid external network", conn.network.create_ip,
                floating_network_id=n.id)
        _raises(sdk_exc.ConflictException, 409, "", conn.network.create_ip, floating_network_id=ext.id,
                floating_ip_address="203.0.113.77")
        _raises(sdk_exc.BadRequestException, 400, "does not have fixed ip 10.20.0.250", conn.network.update_ip,
                fip.id, port_id=vm.id, fixed_ip_address="10.20.0.250")
        lonely = conn.network.create_network(name="no-router")
        conn.network.create_subnet(network_id=lonely.id, cidr="10.66.0.0/24", ip_version=4)
        far = conn.network.create_port(network_id=lonely.id)
        _raises(sdk_exc.NotFoundException, 404, "is not reachable from subnet", conn.network.update_ip, fip.id,
                port_id=far.id)
        conn.network.delete_port(far)
        conn.network.delete_network(lonely)
        conn.network.delete_ip(fip2)
        conn.network.delete_ip(fip)
        _raises(sdk_exc.NotFoundException, 404, "could not be found", conn.network.get_ip, fip.id)
    finally:
        for f in conn.network.ips(floating_network_id=ext.id):
            conn.network.delete_ip(f)
        _cleanup_router(conn, r)


def test_security_groups(conn, net) -> None:
    n, _ = net
    project = "default"  # the project of requests without one (no Keystone, no X-Project-Id)
    # the project's default group appears on first use, with Neutron's default rules
    list(conn.network.security_groups())
    (default,) = conn.network.security_groups(project_id=project, name="default")
    assert default.name == "default"
    assert sorted((r["direction"], r["ethertype"]) for r in default.security_group_rules) == [
        ("egress", "IPv4"), ("egress", "IPv6"), ("ingress", "IPv4"), ("ingress", "IPv6")]
    sg = conn.network.create_security_group(name="web", project_id=project)
    assert sorted(r["direction"] for r in sg.security_group_rules) == ["egress", "egress"]
    ssh = conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                                  port_range_min=22, port_range_max=22,
                                                  remote_ip_prefix="0.0.0.0/0", ether_type="IPv4")
    assert (ssh.protocol, ssh.port_range_min, ssh.port_range_max, ssh.remote_ip_prefix) == ("tcp", 22, 22,
                                                                                          "0.0.0.0/0")
    by_number = conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress",
                                                        protocol="17", port_range_min=53, port_range_max=53)
    assert by_number.protocol == "17"
    peers = conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress",
                                                    protocol="icmp", remote_group_id=sg.id)
    assert peers.remote_group_id == sg.id
    shown = conn.network.get_security_group(sg.id)
    assert {ssh.id, by_number.id, peers.id} <= {r["id"] for r in shown.security_group_rules}
    assert [r.id for r in conn.network.security_group_rules(security_group_id=sg.id, protocol="tcp")] == [ssh.id]
    # errors
    _raises(sdk_exc.ConflictException, 409, f"Rule id is {ssh.id}", conn.network.create_security_group_rule,
            security_group_id=sg.id, direction="ingress", protocol="6", port_range_min=22, port_range_max=22,
            remote_ip_prefix="0.0.0.0/0", ether_type="IPv4")
    _raises(sdk_exc.BadRequestException, 400, "", conn.network.create_security_group_rule,
            security_group_id=sg.id, direction="ingress", protocol="tcp", port_range_min=80, port_range_max=22)
    _raises(sdk_exc.BadRequestException, 400, "", conn.network.create_security_group_rule,
            security_group_id=sg.id, direction="sideways")
    _raises(sdk_exc.NotFoundException, 404, f"Security group {MISSING} does not exist",
            conn.network.create_security_group_rule,
            security_group_id=MISSING, direction="ingress")
    # a port with the group, port security and allowed address pairs
    port = conn.network.create_port(network_id=n.id, security_group_ids=[sg.id], project_id=project,
                                    allowed_address_pairs=[{"ip_address": "10.20.0.200"}])
    assert port.security_group_ids == [sg.id] and port.is_port_security_enabled is True
    assert port.allowed_address_pairs == [{"ip_address": "10.20.0.200", "mac_address": port.mac_address}]
    _raises(sdk_exc.ConflictException, 409, f"Security Group {sg.id} in use", conn.network.delete_security_group,
            sg.id)
    _raises(sdk_exc.ConflictException, 409, "Port has security group associated",
            conn.network.update_port, port.id, is_port_security_enabled=False)
    port = conn.network.update_port(port, security_group_ids=[], allowed_address_pairs=[],
                                    is_port_security_enabled=False)
    assert (port.security_group_ids, port.is_port_security_enabled) == ([], False)
    conn.network.delete_security_group_rule(ssh)
    _raises(sdk_exc.NotFoundException, 404, "could not be found", conn.network.get_security_group_rule, ssh.id)
    conn.network.delete_security_group(sg)
    _raises(sdk_exc.NotFoundException, 404, "could not be found", conn.network.get_security_group, sg.id)


def test_l3_raw_json_wrappers(ctrl: ControllerProcess) -> None:
    status, _, doc = _raw(ctrl, "POST", "/v2.0/routers", {"router": {"name": "raw-r"}})
    assert status == 201 and list(doc) == ["router"]
    rid = doc["router"]["id"]
    status, _, doc = _raw(ctrl, "GET", "/v2.0/routers?name=raw-r")
    assert status == 200 and [r["id"] for r in doc["routers"]] == [rid]
    status, _, doc = _raw(ctrl, "PUT", f"/v2.0/routers/{rid}/add_router_interface", {"subnet_id": MISSING})
    assert status == 404 and doc["NeutronError"]["type"] == "SubnetNotFound"
    status, _, doc = _raw(ctrl, "POST", "/v2.0/security-groups", {"security_group": {"name": "raw-sg"}})
    assert status == 201 and list(doc) == ["security_group"]
    status, _, doc = _raw(ctrl, "GET", "/v2.0/security-group-rules?security_group_id=" + doc["security_group"]["id"])
    assert status == 200 and len(doc["security_group_rules"]) == 2
    status, _, doc = _raw(ctrl, "GET", "/v2.0/floatingips")
    assert status == 200 and "floatingips" in doc
    status, _, doc = _raw(ctrl, "GET", f"/v2.0/floatingips/{MISSING}")
    assert status == 404 and doc["NeutronError"]["type"] == "FloatingIPNotFound"
    assert _raw(ctrl, "DELETE", f"/v2.0/routers/{rid}")[0] == 204
