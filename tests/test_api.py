"""The northbound API over real HTTP: CRUD of each resource, Neutron's shapes and every error case."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import netaddr
import pytest
from test_api_client import Api

from controller import dhcp6


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    a = Api(tmp_path / "topology.sqlite")
    yield a
    a.close()


@pytest.fixture
def world(api: Api) -> dict:
    """A network with a subnet, a bound port and a hypervisor."""
    hv = api.create("hypervisor", name="hv1", datapath_id="0000000000000001", tunnel_ip="192.168.100.1")
    net = api.create("network", name="net1")
    sub = api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4)
    port = api.create("port", network_id=net["id"], **{"binding:host_id": "hv1"})
    return {"hv": hv, "net": net, "subnet": sub, "port": port}


def test_versions_and_resources(api: Api) -> None:
    resp = api.request("GET", "/")
    assert resp.status_code == 200
    assert resp.headers["X-Openstack-Request-Id"].startswith("req-")
    (version,) = resp.json()["versions"]
    assert version["id"] == "v2.0" and version["status"] == "CURRENT"
    assert version["links"][0]["href"] == api.url + "/v2.0/"
    resources = api.request("GET", "/v2.0").json()["resources"]
    assert {r["collection"] for r in resources} == {"networks", "subnets", "ports", "hypervisors", "routers",
                                                    "floatingips", "security-groups", "security-group-rules"}
    assert api.request("GET", "/v2.0/").status_code == 200
    ids = {api.request("GET", "/").headers["X-Openstack-Request-Id"] for _ in range(3)}
    assert len(ids) == 3


def test_network_crud_and_defaults(api: Api) -> None:
    net = api.create("network", name="blue", headers={"X-Project-Id": "tenant-a"})
    assert net["project_id"] == net["tenant_id"] == "tenant-a"
    assert net["admin_state_up"] is True and net["status"] == "ACTIVE"
    assert net["mtu"] == 1450 and net["provider:network_type"] == "vxlan"
    assert net["provider:physical_network"] is None and net["provider:segmentation_id"] == 1000
    assert net["shared"] is False and net["router:external"] is False and net["subnets"] == []
    other = api.create("network", name="red", project_id="tenant-b", headers={"X-Project-Id": "tenant-a"})
    assert other["project_id"] == "tenant-b" and other["provider:segmentation_id"] == 1001
    assert api.create("network", tenant_id="tenant-c")["project_id"] == "tenant-c"
    assert api.create("network")["project_id"] == "default"
    assert api.show("network", net["id"]) == net
    assert [n["id"] for n in api.list("networks", "name=blue")] == [net["id"]]
    assert len(api.list("networks", "name=blue&name=red")) == 2
    assert [n["name"] for n in api.list("networks", "project_id=tenant-a")] == ["blue"]
    assert api.list("networks", "name=nope") == []
    shown = api.list("networks", "name=blue&fields=id&fields=name")
    assert shown == [{"id": net["id"], "name": "blue"}]
    updated = api.update("network", net["id"], name="blue2", admin_state_up=False, mtu=1400)
    assert (updated["name"], updated["admin_state_up"], updated["mtu"]) == ("blue2", False, 1400)
    assert updated["provider:segmentation_id"] == 1000
    assert api.list("networks", "admin_state_up=false")[0]["id"] == net["id"]
    resp = api.request("DELETE", f"/v2.0/networks/{net['id']}")
    assert resp.status_code == 204 and resp.content == b""
    api.expect_error(404, "NetworkNotFound", "GET", f"/v2.0/networks/{net['id']}")


def test_network_types(api: Api) -> None:
    vlan = api.create("network", **{"provider:network_type": "vlan"})
    assert (vlan["mtu"], vlan["provider:physical_network"], vlan["provider:segmentation_id"]) == (1500, "physnet1", 100)
    vlan2 = api.create("network", **{"provider:network_type": "vlan", "provider:physical_network": "physnet2"})
    assert vlan2["provider:segmentation_id"] == 100  # VLAN ids are per physical network
    flat = api.create("network", **{"provider:network_type": "flat"})
    assert (flat["mtu"], flat["provider:segmentation_id"]) == (1500, None)
    geneve = api.create("network", **{"provider:network_type": "geneve", "provider:segmentation_id": 5000})
    assert geneve["provider:segmentation_id"] == 5000 and geneve["mtu"] == 1450
    assert api.create("network", **{"provider:segmentation_id": 5000})["provider:network_type"] == "vxlan"


def test_subnet_crud(api: Api) -> None:
    net = api.create("network")
    sub = api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4, name="s4",
                     dns_nameservers=["8.8.8.8"], host_routes=[{"destination": "10.9.0.0/16", "nexthop": "10.0.0.9"}])
    assert sub["gateway_ip"] == "10.0.0.1" and sub["enable_dhcp"] is True
    assert sub["allocation_pools"] == [{"start": "10.0.0.2", "end": "10.0.0.254"}]
    assert sub["dns_nameservers"] == ["8.8.8.8"] and sub["host_routes"][0]["nexthop"] == "10.0.0.9"
    assert sub["project_id"] == sub["tenant_id"] == "default"
    v6 = api.create("subnet", network_id=net["id"], cidr="fd00:1::/64", ip_version=6)
    assert v6["gateway_ip"] == "fd00:1::1"
    assert v6["allocation_pools"] == [{"start": "fd00:1::2", "end": "fd00:1::ffff:ffff:ffff:ffff"}]
    assert api.show("network", net["id"])["subnets"] == [sub["id"], v6["id"]]
    assert [s["id"] for s in api.list("subnets", f"network_id={net['id']}&ip_version=6")] == [v6["id"]]
    upd = api.update("subnet", sub["id"], name="renamed", gateway_ip="10.0.0.254", enable_dhcp=False,
                     allocation_pools=[{"start": "10.0.0.10", "end": "10.0.0.20"}])
    assert (upd["name"], upd["gateway_ip"], upd["enable_dhcp"]) == ("renamed", "10.0.0.254", False)
    assert upd["allocation_pools"] == [{"start": "10.0.0.10", "end": "10.0.0.20"}]
    assert upd["cidr"] == "10.0.0.0/24" and upd["created_at"] == sub["created_at"]
    assert api.update("subnet", sub["id"], gateway_ip=None)["gateway_ip"] is None
    assert api.request("DELETE", f"/v2.0/subnets/{sub['id']}").status_code == 204
    assert api.show("network", net["id"])["subnets"] == [v6["id"]]
    api.expect_error(404, "SubnetNotFound", "GET", f"/v2.0/subnets/{sub['id']}")


def test_port_crud(api: Api, world: dict) -> None:
    port = world["port"]
    assert port["status"] == "DOWN" and port["binding:host_id"] == "hv1" and port["binding:vif_type"] == "ovs"
    assert port["fixed_ips"] == [{"subnet_id": world["subnet"]["id"], "ip_address": "10.0.0.2"}]
    assert port["mac_address"].startswith("fa:16:3e:") and len(port["security_groups"]) == 1  # the default group
    assert port["device_owner"] == "" and port["admin_state_up"] is True
    unbound = api.create("port", network_id=world["net"]["id"], name="vm2", device_owner="compute:nova",
                         device_id="vm-2")
    assert unbound["binding:host_id"] == "" and unbound["binding:vif_type"] == "unbound"
    assert api.show("port", port["id"]) == port
    assert [p["id"] for p in api.list("ports", "device_id=vm-2")] == [unbound["id"]]
    assert [p["id"] for p in api.list("ports", "fixed_ips=ip_address%3D10.0.0.2")] == [port["id"]]
    assert len(api.list("ports", f"network_id={world['net']['id']}")) == 2
    upd = api.update("port", unbound["id"], name="vm2b", admin_state_up=False, **{"binding:host_id": "hv1"})
    assert (upd["name"], upd["admin_state_up"], upd["binding:host_id"]) == ("vm2b", False, "hv1")
    assert upd["fixed_ips"] == unbound["fixed_ips"] and upd["mac_address"] == unbound["mac_address"]
    assert api.update("port", unbound["id"], **{"binding:host_id": ""})["binding:host_id"] == ""
    assert api.request("DELETE", f"/v2.0/ports/{unbound['id']}").status_code == 204
    api.expect_error(404, "PortNotFound", "DELETE", f"/v2.0/ports/{unbound['id']}")
    assert [p["id"] for p in api.list("ports")] == [port["id"]]


def test_port_extra_dhcp_opts(api: Api, world: dict) -> None:
    """Neutron's extra_dhcp_opt: stored and shown, merged by name on update, removed by a null value;
    a name or value the server cannot encode is refused and nothing changes."""
    net = world["net"]["id"]
    pxe = [{"opt_name": "tftp-server", "opt_value": "192.0.2.9"}, {"opt_name": "bootfile-name", "opt_value": "pxe.0"}]
    port = api.create("port", network_id=net, extra_dhcp_opts=pxe)
    assert port["extra_dhcp_opts"] == [{**o, "ip_version": 4} for o in pxe]
    assert api.show("port", port["id"])["extra_dhcp_opts"] == port["extra_dhcp_opts"]
    assert world["port"]["extra_dhcp_opts"] == []
    upd = api.update("port", port["id"], extra_dhcp_opts=[{"opt_name": "bootfile-name", "opt_value": "grub.efi"},
                                                          {"opt_name": "tftp-server", "opt_value": None},
                                                          {"opt_name": "150", "opt_value": "192.0.2.10,192.0.2.11"}])
    assert {o["opt_name"]: o["opt_value"] for o in upd["extra_dhcp_opts"]} == {"bootfile-name": "grub.efi",
                                                                              "150": "192.0.2.10,192.0.2.11"}
    for bad, kind, text in (
            ([{"opt_name": "no-such-option", "opt_value": "x"}], "InvalidInput", "Unknown extra DHCP option"),
            ([{"opt_name": "router", "opt_value": "not-an-address"}], "InvalidInput", "Invalid value"),
            ([{"opt_name": "53", "opt_value": "1"}], "InvalidInput", "set by the server"),
            ([{"opt_name": "mtu", "opt_value": "1500", "ip_version": 6}], "InvalidInput", "an IPv4 option"),
            ([{"opt_value": "1"}], "HTTPBadRequest", "opt_name"), ("tftp-server", "HTTPBadRequest", "not a list")):
        error = api.expect_error(400, kind, "PUT", f"/v2.0/ports/{port['id']}", {"port": {"extra_dhcp_opts": bad}})
        assert text in error["message"], error
    assert api.show("port", port["id"])["extra_dhcp_opts"] == upd["extra_dhcp_opts"]
    assert "extra_dhcp_opt" in {e["alias"] for e in api.request("GET", "/v2.0/extensions").json()["extensions"]}


def test_port_ipv6_extra_dhcp_opts(api: Api, world: dict) -> None:
    """IPv6 extra_dhcp_opts (dnsmasq's DHCPv6 names): shown as given, merged by (name, IP version) apart from an
    IPv4 option of the same name, kept across a restart, what the DHCPv6 server serves; a name of the other IP
    version, a reserved number or a value that cannot be encoded is a 400 and nothing changes."""
    net = world["net"]["id"]
    api.create("subnet", network_id=net, cidr="2001:db8:5::/64", ip_version=6, ipv6_address_mode="dhcpv6-stateful")
    opts = [{"opt_name": "dns-server", "opt_value": "2001:db8::1", "ip_version": 6},
            {"opt_name": "bootfile-url", "opt_value": "http://[2001:db8::9]/boot.ipxe", "ip_version": 6},
            {"opt_name": "dns-server", "opt_value": "192.0.2.53", "ip_version": 4}]
    port = api.create("port", network_id=net, extra_dhcp_opts=opts)
    assert port["extra_dhcp_opts"] == opts and api.show("port", port["id"])["extra_dhcp_opts"] == opts
    upd = api.update("port", port["id"], extra_dhcp_opts=[
        {"opt_name": "dns-server", "opt_value": "[2001:db8::2]", "ip_version": 6},
        {"opt_name": "bootfile-url", "opt_value": None, "ip_version": 6},
        {"opt_name": "ntp-server", "opt_value": "ntp.example", "ip_version": "6"}])
    assert upd["extra_dhcp_opts"] == [{"opt_name": "dns-server", "opt_value": "[2001:db8::2]", "ip_version": 6},
                                      opts[2], {"opt_name": "ntp-server", "opt_value": "ntp.example", "ip_version": 6}]
    for bad, text in (
            ({"opt_name": "mtu", "opt_value": "1500", "ip_version": 6}, "it is an IPv4 option"),
            ({"opt_name": "bootfile-url", "opt_value": "http://x/", "ip_version": 4}, "it is an IPv6 option"),
            ({"opt_name": "no-such-option", "opt_value": "x", "ip_version": 6}, "Unknown extra DHCP option"),
            ({"opt_name": "65536", "opt_value": "x", "ip_version": 6}, "Unknown extra DHCP option"),
            ({"opt_name": "3", "opt_value": "x", "ip_version": 6}, "set by the server"),  # IA_NA
            ({"opt_name": "dns-server", "opt_value": "192.0.2.1", "ip_version": 6}, "Invalid value"),
            ({"opt_name": "domain-search", "opt_value": "a..example", "ip_version": 6}, "Invalid value"),
            ({"opt_name": "ntp-server", "opt_value": "192.0.2.1", "ip_version": 6}, "Invalid value"),
            ({"opt_name": "bootfile-param", "opt_value": "a,,b", "ip_version": 6}, "Invalid value"),
            ({"opt_name": "information-refresh-time", "opt_value": "soon", "ip_version": 6}, "Invalid value"),
            ({"opt_name": "bootfile-url", "opt_value": "", "ip_version": 6}, "1 to 65535 bytes"),
            ({"opt_name": "dns-server", "opt_value": "2001:db8::3", "ip_version": 5}, "Invalid ip_version")):
        # a good option first: the request changes nothing at all
        body = {"port": {"extra_dhcp_opts": [{"opt_name": "sip-server", "opt_value": "2001:db8::7", "ip_version": 6},
                                             bad]}}
        error = api.expect_error(400, "InvalidInput", "PUT", f"/v2.0/ports/{port['id']}", body)
        assert text in error["message"], (bad, error)
    assert api.show("port", port["id"])["extra_dhcp_opts"] == upd["extra_dhcp_opts"]
    api.restart()
    assert api.show("port", port["id"])["extra_dhcp_opts"] == upd["extra_dhcp_opts"]
    with api.topology.lock:
        lease = dhcp6.lease6_for(api.topology.graph, api.topology.graph.port(port["id"]))
    assert lease is not None and lease.address is not None
    assert lease.extra == ((23, netaddr.IPAddress("2001:db8::2").packed),
                           (56, b"\x00\x03\x00\x0d\x03ntp\x07example\x00"))  # RFC 5908: a server-FQDN suboption


def test_hypervisor_crud(api: Api) -> None:
    hv = api.create("hypervisor", name="hv1", datapath_id="00000000000000ab", tunnel_ip="192.168.100.1",
                    bridge_mappings={"physnet1": "br-phys"})
    assert hv == {**hv, "id": "hv1", "name": "hv1", "datapath_id": "00000000000000ab",
                  "tunnel_ip": "192.168.100.1", "bridge_mappings": {"physnet1": "br-phys"}, "connected": False}
    assert api.create("hypervisor", name="hv2", datapath_id=2, tunnel_ip="192.168.100.2")["datapath_id"] == \
        "0000000000000002"
    assert api.create("hypervisor", name="hv3", datapath_id="0xFF", tunnel_ip="192.168.100.3")["datapath_id"] == \
        "00000000000000ff"
    assert [h["name"] for h in api.list("hypervisors")] == ["hv1", "hv2", "hv3"]
    assert api.list("hypervisors", "tunnel_ip=192.168.100.2")[0]["id"] == "hv2"
    upd = api.update("hypervisor", "hv2", tunnel_ip="192.168.100.22", datapath_id="0x22")
    assert (upd["tunnel_ip"], upd["datapath_id"]) == ("192.168.100.22", "0000000000000022")
    assert api.topology.graph.hypervisor_by_dpid(0x22).name == "hv2"
    assert api.topology.graph.hypervisor_by_dpid(2) is None
    assert api.request("DELETE", "/v2.0/hypervisors/hv3").status_code == 204
    api.expect_error(404, "HypervisorNotFound", "GET", "/v2.0/hypervisors/hv3")


def test_network_delete_takes_dhcp_ports_and_subnets(api: Api) -> None:
    net = api.create("network")
    sub = api.create("subnet", network_id=net["id"], cidr="10.1.0.0/24")
    api.create("port", network_id=net["id"], device_owner="network:dhcp")
    assert api.request("DELETE", f"/v2.0/networks/{net['id']}").status_code == 204
    assert api.list("ports") == [] and api.list("subnets") == []
    api.expect_error(404, "SubnetNotFound", "GET", f"/v2.0/subnets/{sub['id']}")


def test_subnet_delete_takes_the_dhcp_ports_address(api: Api) -> None:
    net = api.create("network")
    sub = api.create("subnet", network_id=net["id"], cidr="10.1.0.0/24")
    dhcp = api.create("port", network_id=net["id"], device_owner="network:dhcp")
    assert dhcp["fixed_ips"][0]["subnet_id"] == sub["id"]
    assert api.request("DELETE", f"/v2.0/subnets/{sub['id']}").status_code == 204
    assert api.show("port", dhcp["id"])["fixed_ips"] == []


MISSING = str(uuid.uuid4())


def test_request_errors(api: Api, world: dict) -> None:
    net, port = world["net"]["id"], world["port"]["id"]
    err = api.expect_error
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", data=b"{not json")
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", data=b"")
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", ["network"])
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"netwerk": {}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {}, "extra": 1})
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"networks": [{}]})
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": "x"})
    message = err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {"colour": "blue"}})["message"]
    assert "colour" in message
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {"admin_state_up": "maybe"}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {"name": 7}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {"name": "x" * 256}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {"status": "DOWN"}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {"project_id": "a", "tenant_id": "b"}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {"provider:segmentation_id": True}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {"mtu": 20}})
    err(400, "InvalidInput", "POST", "/v2.0/networks", {"network": {"provider:network_type": "local"}})
    err(400, "InvalidInput", "POST", "/v2.0/networks",
        {"network": {"provider:network_type": "flat", "provider:segmentation_id": 5}})
    err(400, "InvalidInput", "POST", "/v2.0/networks",
        {"network": {"provider:network_type": "vlan", "provider:segmentation_id": 4095}})
    err(400, "InvalidInput", "POST", "/v2.0/networks",
        {"network": {"provider:network_type": "vxlan", "provider:physical_network": "physnet1"}})
    err(400, "InvalidInput", "PUT", f"/v2.0/networks/{net}", {"network": {"provider:segmentation_id": 1999}})
    err(400, "HTTPBadRequest", "PUT", f"/v2.0/ports/{port}", {"port": {"network_id": net}})
    err(400, "HTTPBadRequest", "PUT", f"/v2.0/ports/{port}", {"port": {"id": "x"}})
    err(400, "HTTPBadRequest", "GET", "/v2.0/ports?colour=blue")
    err(400, "HTTPBadRequest", "POST", "/v2.0/ports", {"port": {}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/subnets", {"subnet": {"network_id": net}})


def test_not_found_errors(api: Api, world: dict) -> None:
    err = api.expect_error
    for member, kind in (("network", "NetworkNotFound"), ("subnet", "SubnetNotFound"), ("port", "PortNotFound"),
                         ("hypervisor", "HypervisorNotFound")):
        err(404, kind, "GET", f"/v2.0/{member}s/{MISSING}")
        err(404, kind, "PUT", f"/v2.0/{member}s/{MISSING}", {member: {"description": "x"}})
        err(404, kind, "DELETE", f"/v2.0/{member}s/{MISSING}")
    assert MISSING in err(404, "NetworkNotFound", "POST", "/v2.0/ports", {"port": {"network_id": MISSING}})["message"]
    err(404, "NetworkNotFound", "POST", "/v2.0/subnets", {"subnet": {"network_id": MISSING, "cidr": "10.5.0.0/24"}})
    err(404, "SubnetNotFound", "POST", "/v2.0/ports",
        {"port": {"network_id": world["net"]["id"], "fixed_ips": [{"subnet_id": MISSING}]}})
    err(404, "HTTPNotFound", "GET", "/v2.0/routerz")
    err(404, "HTTPNotFound", "GET", "/v3")
    err(405, "HTTPMethodNotAllowed", "DELETE", "/v2.0/networks")
    err(405, "HTTPMethodNotAllowed", "POST", f"/v2.0/networks/{world['net']['id']}", {"network": {}})


def test_conflict_errors(api: Api, world: dict) -> None:
    net, sub, port = world["net"], world["subnet"], world["port"]
    err = api.expect_error
    err(409, "NetworkInUse", "DELETE", f"/v2.0/networks/{net['id']}")
    err(409, "SubnetInUse", "DELETE", f"/v2.0/subnets/{sub['id']}")
    err(409, "TunnelIdInUse", "POST", "/v2.0/networks",
        {"network": {"provider:segmentation_id": net["provider:segmentation_id"]}})
    api.create("network", **{"provider:network_type": "vlan", "provider:segmentation_id": 150})
    err(409, "VlanIdInUse", "POST", "/v2.0/networks",
        {"network": {"provider:network_type": "vlan", "provider:segmentation_id": 150}})
    api.create("network", **{"provider:network_type": "flat"})
    err(409, "FlatNetworkInUse", "POST", "/v2.0/networks", {"network": {"provider:network_type": "flat"}})
    err(409, "IpAddressAlreadyAllocated", "POST", "/v2.0/ports",
        {"port": {"network_id": net["id"], "fixed_ips": [{"ip_address": port["fixed_ips"][0]["ip_address"]}]}})
    err(409, "MacAddressInUse", "POST", "/v2.0/ports",
        {"port": {"network_id": net["id"], "mac_address": port["mac_address"].upper()}})
    other = api.create("port", network_id=net["id"])
    err(409, "MacAddressInUse", "PUT", f"/v2.0/ports/{other['id']}", {"port": {"mac_address": port["mac_address"]}})
    err(409, "HypervisorExists", "POST", "/v2.0/hypervisors",
        {"hypervisor": {"name": "hv1", "datapath_id": 9, "tunnel_ip": "192.168.100.9"}})
    err(409, "DatapathIdInUse", "POST", "/v2.0/hypervisors",
        {"hypervisor": {"name": "hv9", "datapath_id": 1, "tunnel_ip": "192.168.100.9"}})


def test_invalid_values(api: Api, world: dict) -> None:
    net, sub = world["net"]["id"], world["subnet"]["id"]
    err = api.expect_error
    for cidr in ("10.0.0.0/33", "banana", "10.0.0.1/24", "10.0.0.0", "fd00::/200"):
        err(400, "InvalidInput", "POST", "/v2.0/subnets", {"subnet": {"network_id": net, "cidr": cidr}})
    err(400, "InvalidInput", "POST", "/v2.0/subnets", {"subnet": {"network_id": net, "cidr": "10.0.0.0/25"}})
    err(400, "InvalidInput", "POST", "/v2.0/subnets",
        {"subnet": {"network_id": net, "cidr": "10.7.0.0/24", "ip_version": 6}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/subnets", {"subnet": {"network_id": net, "cidr": "10.7.0.0/24",
                                                                   "ip_version": 5}})
    err(400, "InvalidInput", "POST", "/v2.0/subnets",
        {"subnet": {"network_id": net, "cidr": "10.7.0.0/24", "gateway_ip": "10.8.0.1"}})
    err(400, "InvalidInput", "POST", "/v2.0/subnets",
        {"subnet": {"network_id": net, "cidr": "10.7.0.0/24", "dns_nameservers": ["nope"]}})
    for mac in ("zz:zz", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"):
        err(400, "InvalidInput", "POST", "/v2.0/ports", {"port": {"network_id": net, "mac_address": mac}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/ports", {"port": {"network_id": net, "mac_address": 12}})
    err(400, "InvalidInput", "POST", "/v2.0/ports", {"port": {"network_id": net, "fixed_ips": [{"ip_address": "x"}]}})
    err(400, "InvalidIpForSubnet", "POST", "/v2.0/ports",
        {"port": {"network_id": net, "fixed_ips": [{"subnet_id": sub, "ip_address": "10.9.9.9"}]}})
    err(400, "InvalidIpForSubnet", "POST", "/v2.0/ports",
        {"port": {"network_id": net, "fixed_ips": [{"subnet_id": sub, "ip_address": "10.0.0.255"}]}})
    err(400, "InvalidIpForNetwork", "POST", "/v2.0/ports",
        {"port": {"network_id": net, "fixed_ips": [{"ip_address": "10.9.9.9"}]}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/ports", {"port": {"network_id": net, "fixed_ips": [{"x": "y"}]}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/ports", {"port": {"network_id": net, "fixed_ips": "10.0.0.5"}})
    for dpid in ("xyz", "0x", "123", "0x1" + "0" * 16, -1):
        err(400, "InvalidInput", "POST", "/v2.0/hypervisors",
            {"hypervisor": {"name": "hvx", "datapath_id": dpid, "tunnel_ip": "192.168.100.9"}})
    err(400, "InvalidInput", "POST", "/v2.0/hypervisors",
        {"hypervisor": {"name": "hvx", "datapath_id": 7, "tunnel_ip": "fd00::1"}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/hypervisors",
        {"hypervisor": {"name": "hvx", "datapath_id": 7, "tunnel_ip": "192.168.100.9", "bridge_mappings": ["x"]}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/hypervisors", {"hypervisor": {"name": "hvx", "datapath_id": 7}})


def test_oversized_body_is_413(api: Api) -> None:
    big = b'{"network": {"name": "' + b"x" * (1024 * 1024) + b'"}}'
    api.expect_error(413, "HTTPRequestEntityTooLarge", "POST", "/v2.0/networks", data=big)
    assert api.request("GET", "/").status_code == 200  # the server is still serving


def test_bad_bytes_are_400(api: Api) -> None:
    api.expect_error(400, "HTTPBadRequest", "POST", "/v2.0/networks", data=b"[" * 200_000 + b"]" * 200_000)
    api.expect_error(400, "HTTPBadRequest", "POST", "/v2.0/networks", data=b'{"network": {"name": "\xff"}}')
    api.expect_error(400, "HTTPBadRequest", "GET", "/v2.0/networks?name=%ff")


def test_extra_apps_are_mounted(tmp_path) -> None:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("tf_test_total", "a test counter", registry=registry).inc()
    api = Api(tmp_path / "t.sqlite", extra={"/metrics": prometheus_client.make_wsgi_app(registry)})
    try:
        resp = api.request("GET", "/metrics")
        assert resp.status_code == 200 and "tf_test_total 1.0" in resp.text
        assert resp.headers["X-Openstack-Request-Id"].startswith("req-")
        assert api.request("GET", "/v2.0/networks").status_code == 200
    finally:
        api.close()


def test_unexpected_exception_is_a_generic_500(tmp_path) -> None:
    api = Api(tmp_path / "t.sqlite", store="sqlite")  # this store's own failure, whatever TENANTFLOW_TEST_STORE
    api.topology.store.close()  # every later database access raises sqlite3.ProgrammingError
    resp = api.request("POST", "/v2.0/networks", {"network": {}})
    assert resp.status_code == 500
    assert resp.json()["NeutronError"]["type"] == "HTTPInternalServerError"
    assert "Traceback" not in resp.text and "sqlite" not in resp.text.lower()
    assert resp.headers["X-Openstack-Request-Id"].startswith("req-")
    api.server.shutdown()
