"""Routers, router interfaces, extra routes, floating IPs and IPv6 SLAAC over real HTTP, with every error case."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import netaddr
import pytest
from test_api_client import Api

from topology import graph_l3

MISSING = str(uuid.uuid4())


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    a = Api(tmp_path / "topology.sqlite")
    yield a
    a.close()


def put(api: Api, path: str, body: dict, status: int = 200) -> dict:
    resp = api.request("PUT", path, body)
    assert resp.status_code == status, resp.text
    return resp.json()


@pytest.fixture
def cloud(api: Api) -> dict:
    """An external network with a subnet, two tenant networks with subnets, hypervisors and bound VM ports."""
    for i in (1, 2, 3):
        api.create("hypervisor", name=f"hv{i}", datapath_id=i, tunnel_ip=f"192.168.100.{i}")
    ext = api.create("network", name="public", **{"router:external": True})
    ext_sub = api.create("subnet", network_id=ext["id"], cidr="203.0.113.0/24")
    net1 = api.create("network", name="n1")
    sub1 = api.create("subnet", network_id=net1["id"], cidr="10.0.1.0/24")
    net2 = api.create("network", name="n2")
    sub2 = api.create("subnet", network_id=net2["id"], cidr="10.0.2.0/24")
    vm1 = api.create("port", network_id=net1["id"], **{"binding:host_id": "hv1"})
    vm2 = api.create("port", network_id=net2["id"], **{"binding:host_id": "hv2"})
    return {"ext": ext, "ext_sub": ext_sub, "net1": net1, "sub1": sub1, "net2": net2, "sub2": sub2,
            "vm1": vm1, "vm2": vm2}


def test_network_attributes(api: Api) -> None:
    net = api.create("network")
    assert (net["router:external"], net["shared"], net["port_security_enabled"]) == (False, False, True)
    assert (net["status"], net["admin_state_up"], net["mtu"]) == ("ACTIVE", True, 1450)
    off = api.create("network", port_security_enabled=False, shared=True, **{"router:external": True})
    assert (off["port_security_enabled"], off["shared"], off["router:external"]) == (False, True, True)
    api.create("subnet", network_id=off["id"], cidr="10.9.0.0/24")
    port = api.create("port", network_id=off["id"])  # inherits the network's port security: no groups
    assert port["port_security_enabled"] is False and port["security_groups"] == []
    assert [n["id"] for n in api.list("networks", "router:external=true")] == [off["id"]]
    assert api.update("network", net["id"], port_security_enabled=False)["port_security_enabled"] is False


def test_router_crud_and_gateway(api: Api, cloud: dict) -> None:
    ext = cloud["ext"]
    router = api.create("router", name="r1", headers={"X-Project-Id": "tenant-a"})
    assert router == {**router, "name": "r1", "project_id": "tenant-a", "tenant_id": "tenant-a",
                      "admin_state_up": True, "status": "ACTIVE", "external_gateway_info": None, "routes": []}
    assert api.show("router", router["id"]) == router
    gw = api.update("router", router["id"], external_gateway_info={"network_id": ext["id"]})
    info = gw["external_gateway_info"]
    assert info["network_id"] == ext["id"] and info["enable_snat"] is True
    assert info["external_fixed_ips"] == [{"subnet_id": cloud["ext_sub"]["id"], "ip_address": "203.0.113.2"}]
    (gw_port,) = api.list("ports", "device_owner=network:router_gateway")
    assert (gw_port["device_id"], gw_port["network_id"]) == (router["id"], ext["id"])
    assert gw_port["fixed_ips"] == info["external_fixed_ips"] and gw_port["security_groups"] == []
    # enable_snat and external_fixed_ips update the same port
    again = api.update("router", router["id"], external_gateway_info={
        "network_id": ext["id"], "enable_snat": False, "external_fixed_ips": [{"ip_address": "203.0.113.50"}]})
    assert again["external_gateway_info"]["enable_snat"] is False
    assert again["external_gateway_info"]["external_fixed_ips"][0]["ip_address"] == "203.0.113.50"
    assert [p["id"] for p in api.list("ports", "device_owner=network:router_gateway")] == [gw_port["id"]]
    # created with a gateway, explicit address
    r2 = api.create("router", external_gateway_info={"network_id": ext["id"],
                                                     "external_fixed_ips": [{"subnet_id": cloud["ext_sub"]["id"],
                                                                             "ip_address": "203.0.113.9"}]})
    assert r2["external_gateway_info"]["external_fixed_ips"][0]["ip_address"] == "203.0.113.9"
    assert [r["id"] for r in api.list("routers", "name=r1")] == [router["id"]]
    # clearing the gateway deletes its port
    assert api.update("router", router["id"], external_gateway_info=None)["external_gateway_info"] is None
    assert [p["device_id"] for p in api.list("ports", "device_owner=network:router_gateway")] == [r2["id"]]
    assert api.update("router", router["id"], name="renamed", admin_state_up=False)["admin_state_up"] is False
    assert api.request("DELETE", f"/v2.0/routers/{r2['id']}").status_code == 204
    assert api.list("ports", "device_owner=network:router_gateway") == []
    api.expect_error(404, "RouterNotFound", "GET", f"/v2.0/routers/{r2['id']}")


def test_gateway_errors(api: Api, cloud: dict) -> None:
    router = api.create("router")
    err = api.expect_error
    path = f"/v2.0/routers/{router['id']}"
    err(400, "BadRequest", "PUT", path, {"router": {"external_gateway_info": {"network_id": cloud["net1"]["id"]}}})
    err(404, "NetworkNotFound", "PUT", path, {"router": {"external_gateway_info": {"network_id": MISSING}}})
    err(400, "HTTPBadRequest", "PUT", path, {"router": {"external_gateway_info": {"network_id": cloud["ext"]["id"],
                                                                                  "colour": "red"}}})
    err(400, "HTTPBadRequest", "PUT", path, {"router": {"external_gateway_info": "public"}})
    err(400, "InvalidIpForSubnet", "PUT", path, {"router": {"external_gateway_info": {
        "network_id": cloud["ext"]["id"], "external_fixed_ips": [{"subnet_id": cloud["ext_sub"]["id"],
                                                                  "ip_address": "10.0.0.5"}]}}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/routers", {"router": {"routes": []}})  # extraroute: PUT only
    err(400, "HTTPBadRequest", "POST", "/v2.0/routers", {"router": {"distributed": True}})
    empty_ext = api.create("network", **{"router:external": True})
    err(400, "BadRequest", "PUT", path, {"router": {"external_gateway_info": {"network_id": empty_ext["id"]}}})
    api.update("router", router["id"], external_gateway_info={"network_id": cloud["ext"]["id"]})
    taken = api.show("router", router["id"])["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
    err(409, "IpAddressAlreadyAllocated", "POST", "/v2.0/routers", {"router": {"external_gateway_info": {
        "network_id": cloud["ext"]["id"], "external_fixed_ips": [{"ip_address": taken}]}}})
    (gw_port,) = api.list("ports", "device_owner=network:router_gateway")
    err(409, "ServicePortInUse", "DELETE", f"/v2.0/ports/{gw_port['id']}")
    err(409, "NetworkInUse", "DELETE", f"/v2.0/networks/{cloud['ext']['id']}")
    err(409, "SubnetInUse", "DELETE", f"/v2.0/subnets/{cloud['ext_sub']['id']}")


def _add(api: Api, router_id: str, status: int = 200, **body: str) -> dict:
    return put(api, f"/v2.0/routers/{router_id}/add_router_interface", body, status)


def _remove(api: Api, router_id: str, status: int = 200, **body: str) -> dict:
    return put(api, f"/v2.0/routers/{router_id}/remove_router_interface", body, status)


def test_router_interfaces(api: Api, cloud: dict) -> None:
    router = api.create("router", headers={"X-Project-Id": "tenant-a"})
    rid = router["id"]
    info = _add(api, rid, subnet_id=cloud["sub1"]["id"])
    assert set(info) == {"id", "tenant_id", "project_id", "port_id", "subnet_id", "subnet_ids", "network_id"}
    assert info == {**info, "id": rid, "tenant_id": "tenant-a", "project_id": "tenant-a",
                    "subnet_id": cloud["sub1"]["id"], "subnet_ids": [cloud["sub1"]["id"]],
                    "network_id": cloud["net1"]["id"]}
    port = api.show("port", info["port_id"])
    assert (port["device_owner"], port["device_id"]) == ("network:router_interface", rid)
    assert port["fixed_ips"] == [{"subnet_id": cloud["sub1"]["id"], "ip_address": "10.0.1.1"}]  # the gateway IP
    # by port: an existing port becomes the interface
    spare = api.create("port", network_id=cloud["net2"]["id"], fixed_ips=[{"ip_address": "10.0.2.200"}])
    info2 = _add(api, rid, port_id=spare["id"])
    assert (info2["port_id"], info2["subnet_id"], info2["network_id"]) == \
        (spare["id"], cloud["sub2"]["id"], cloud["net2"]["id"])
    assert api.show("port", spare["id"])["device_owner"] == "network:router_interface"
    graph = api.topology.graph
    assert {p.id for p in graph_l3.router_interfaces(graph, rid)} == {info["port_id"], spare["id"]}
    assert {s.id for s in graph_l3.router_subnets(graph, rid)} == {cloud["sub1"]["id"], cloud["sub2"]["id"]}
    assert graph_l3.hypervisors_of_router(graph, rid) == {"hv1", "hv2"}
    assert [r.id for r in graph_l3.routers_of_network(graph, cloud["net1"]["id"])] == [rid]
    # remove by subnet and by port: the port goes away, the answer has the same shape
    out = _remove(api, rid, subnet_id=cloud["sub1"]["id"])
    assert out == info
    api.expect_error(404, "PortNotFound", "GET", f"/v2.0/ports/{info['port_id']}")
    assert _remove(api, rid, port_id=spare["id"]) == info2
    assert api.list("ports", f"device_id={rid}") == []
    assert api.request("DELETE", f"/v2.0/routers/{rid}").status_code == 204


def test_router_interface_errors(api: Api, cloud: dict) -> None:
    router = api.create("router")
    rid = router["id"]
    err = api.expect_error
    add, remove = f"/v2.0/routers/{rid}/add_router_interface", f"/v2.0/routers/{rid}/remove_router_interface"
    err(404, "RouterNotFound", "PUT", f"/v2.0/routers/{MISSING}/add_router_interface", {"subnet_id": MISSING})
    err(404, "SubnetNotFound", "PUT", add, {"subnet_id": MISSING})
    err(404, "PortNotFound", "PUT", add, {"port_id": MISSING})
    err(400, "BadRequest", "PUT", add, {})
    err(400, "BadRequest", "PUT", add, {"subnet_id": cloud["sub1"]["id"], "port_id": cloud["vm1"]["id"]})
    err(400, "BadRequest", "PUT", add, {"network_id": cloud["net1"]["id"]})
    err(400, "HTTPBadRequest", "PUT", add, data=b"{nope")
    err(400, "HTTPBadRequest", "PUT", add, ["subnet_id"])
    err(405, "HTTPMethodNotAllowed", "POST", add, {"subnet_id": cloud["sub1"]["id"]})
    err(404, "HTTPNotFound", "PUT", f"/v2.0/routers/{rid}/add_router_gateway", {})
    no_gw_net = api.create("network")
    no_gw = api.create("subnet", network_id=no_gw_net["id"], cidr="10.0.3.0/24", gateway_ip=None)
    err(400, "BadRequest", "PUT", add, {"subnet_id": no_gw["id"]})
    _add(api, rid, subnet_id=cloud["sub1"]["id"])
    err(400, "BadRequest", "PUT", add, {"subnet_id": cloud["sub1"]["id"]})  # already attached
    overlap_net = api.create("network")
    overlap = api.create("subnet", network_id=overlap_net["id"], cidr="10.0.1.128/25")
    message = err(400, "BadRequest", "PUT", add, {"subnet_id": overlap["id"]})["message"]
    assert "overlaps" in message
    bare = api.create("port", network_id=cloud["net2"]["id"], fixed_ips=[])
    err(400, "BadRequest", "PUT", add, {"port_id": bare["id"]})
    err(409, "PortInUse", "PUT", add, {"port_id": api.create("port", network_id=cloud["net2"]["id"],
                                                             device_id="vm-7")["id"]})
    other = api.create("router")
    info = _add(api, other["id"], subnet_id=cloud["sub2"]["id"])
    err(409, "PortInUse", "PUT", add, {"port_id": info["port_id"]})  # in use by another router
    err(404, "RouterInterfaceNotFound", "PUT", remove, {"port_id": info["port_id"]})
    err(404, "RouterInterfaceNotFound", "PUT", remove, {"port_id": cloud["vm1"]["id"]})
    err(404, "RouterInterfaceNotFoundForSubnet", "PUT", remove, {"subnet_id": cloud["sub2"]["id"]})
    err(404, "SubnetNotFound", "PUT", remove, {"subnet_id": MISSING})
    (mine,) = api.list("ports", f"device_id={rid}")
    err(400, "SubnetMismatchForPort", "PUT", remove, {"port_id": mine["id"], "subnet_id": cloud["sub2"]["id"]})
    err(409, "RouterInUse", "DELETE", f"/v2.0/routers/{rid}")
    err(409, "ServicePortInUse", "DELETE", f"/v2.0/ports/{mine['id']}")
    err(409, "SubnetInUse", "DELETE", f"/v2.0/subnets/{cloud['sub1']['id']}")
    err(409, "NetworkInUse", "DELETE", f"/v2.0/networks/{cloud['net1']['id']}")


def test_router_overlap_with_gateway_subnet(api: Api, cloud: dict) -> None:
    router = api.create("router", external_gateway_info={"network_id": cloud["ext"]["id"]})
    net = api.create("network")
    sub = api.create("subnet", network_id=net["id"], cidr="203.0.113.0/25")
    api.expect_error(400, "BadRequest", "PUT", f"/v2.0/routers/{router['id']}/add_router_interface",
                     {"subnet_id": sub["id"]})


def test_extra_routes(api: Api, cloud: dict) -> None:
    router = api.create("router", external_gateway_info={"network_id": cloud["ext"]["id"]})
    rid = router["id"]
    _add(api, rid, subnet_id=cloud["sub1"]["id"])
    routes = [{"destination": "172.16.0.0/16", "nexthop": "10.0.1.50"},
              {"destination": "0.0.0.0/0", "nexthop": "203.0.113.254"},
              {"destination": "172.16.0.0/16", "nexthop": "10.0.1.50"}]
    updated = api.update("router", rid, routes=routes)
    assert updated["routes"] == routes[:2]  # duplicates collapse
    assert api.topology.graph.get("router", rid).routes == (("172.16.0.0/16", "10.0.1.50"),
                                                             ("0.0.0.0/0", "203.0.113.254"))
    err = api.expect_error
    path = f"/v2.0/routers/{rid}"
    for bad in ({"destination": "172.17.0.0/16", "nexthop": "10.0.2.5"},  # not on the router's subnets
                {"destination": "172.17.0.0/16", "nexthop": "10.0.1.1"},  # the router's own address
                {"destination": "172.17.0.1/16", "nexthop": "10.0.1.5"},  # not a network address
                {"destination": "fd00::/64", "nexthop": "10.0.1.5"},
                {"destination": "nope", "nexthop": "10.0.1.5"}):
        err(400, "InvalidRoutes", "PUT", path, {"router": {"routes": [bad]}})
    err(400, "HTTPBadRequest", "PUT", path, {"router": {"routes": [{"destination": "10.1.0.0/16"}]}})
    err(400, "RoutesExhausted", "PUT", path, {"router": {"routes": [
        {"destination": f"172.20.{i}.0/24", "nexthop": "10.0.1.50"} for i in range(31)]}})
    # the interface the nexthop needs cannot go; the gateway neither
    err(409, "RouterInterfaceInUseByRoute", "PUT", f"{path}/remove_router_interface",
        {"subnet_id": cloud["sub1"]["id"]})
    err(400, "InvalidRoutes", "PUT", path, {"router": {"external_gateway_info": None}})
    assert api.update("router", rid, routes=None)["routes"] == []
    _remove(api, rid, subnet_id=cloud["sub1"]["id"])


def _routed(api: Api, cloud: dict) -> dict:
    router = api.create("router", external_gateway_info={"network_id": cloud["ext"]["id"]})
    _add(api, router["id"], subnet_id=cloud["sub1"]["id"])
    _add(api, router["id"], subnet_id=cloud["sub2"]["id"])
    return router


def test_floating_ips(api: Api, cloud: dict) -> None:
    router = _routed(api, cloud)
    ext = cloud["ext"]["id"]
    fip = api.create("floatingip", floating_network_id=ext, headers={"X-Project-Id": "tenant-a"})
    assert fip == {**fip, "floating_network_id": ext, "port_id": None, "fixed_ip_address": None, "router_id": None,
                   "status": "DOWN", "project_id": "tenant-a", "tenant_id": "tenant-a"}
    assert netaddr.IPAddress(fip["floating_ip_address"]) in netaddr.IPNetwork("203.0.113.0/24")
    (held,) = api.list("ports", "device_owner=network:floatingip")
    assert held["device_id"] == fip["id"] and held["fixed_ips"][0]["ip_address"] == fip["floating_ip_address"]
    # associate, move, disassociate
    vm1, vm2 = cloud["vm1"], cloud["vm2"]
    events = len(api.events)
    assoc = api.update("floatingip", fip["id"], port_id=vm1["id"])
    assert api.events[events:] == [{"hv1"}]  # the hypervisor of the port
    assert assoc == {**assoc, "port_id": vm1["id"], "fixed_ip_address": vm1["fixed_ips"][0]["ip_address"],
                     "router_id": router["id"], "status": "ACTIVE"}
    graph = api.topology.graph
    assert [f.id for f in graph_l3.fips_of_port(graph, vm1["id"])] == [fip["id"]]
    assert [f.id for f in graph_l3.fips_of_router(graph, router["id"])] == [fip["id"]]
    moved = api.update("floatingip", fip["id"], port_id=vm2["id"])
    assert api.events[-1] == {"hv1", "hv2"}
    assert (moved["port_id"], moved["fixed_ip_address"]) == (vm2["id"], vm2["fixed_ips"][0]["ip_address"])
    assert graph_l3.fips_of_port(graph, vm1["id"]) == []
    free = api.update("floatingip", fip["id"], port_id=None)
    assert (free["port_id"], free["fixed_ip_address"], free["router_id"], free["status"]) == (None, None, None, "DOWN")
    # created associated, with an explicit address; a port with two addresses needs fixed_ip_address
    two = api.create("port", network_id=cloud["net1"]["id"], fixed_ips=[{"ip_address": "10.0.1.20"},
                                                                        {"ip_address": "10.0.1.21"}])
    fip2 = api.create("floatingip", floating_network_id=ext, floating_ip_address="203.0.113.77",
                      port_id=two["id"], fixed_ip_address="10.0.1.21", description="web")
    assert (fip2["floating_ip_address"], fip2["fixed_ip_address"], fip2["description"]) == \
        ("203.0.113.77", "10.0.1.21", "web")
    fip3 = api.create("floatingip", floating_network_id=ext, port_id=two["id"], fixed_ip_address="10.0.1.20")
    assert [f["id"] for f in api.list("floatingips", f"port_id={two['id']}")] == [fip2["id"], fip3["id"]]
    # deleting the port disassociates its floating IPs; deleting a floating IP releases its address and port
    assert api.request("DELETE", f"/v2.0/ports/{two['id']}").status_code == 204
    assert api.show("floatingip", fip2["id"])["port_id"] is None
    assert api.request("DELETE", f"/v2.0/floatingips/{fip2['id']}").status_code == 204
    assert len(api.list("ports", "device_owner=network:floatingip")) == 2
    again = api.create("floatingip", floating_network_id=ext, floating_ip_address="203.0.113.77")
    assert again["floating_ip_address"] == "203.0.113.77"


def test_floating_ip_errors(api: Api, cloud: dict) -> None:
    router = _routed(api, cloud)
    ext = cloud["ext"]["id"]
    err = api.expect_error
    err(400, "BadRequest", "POST", "/v2.0/floatingips", {"floatingip": {"floating_network_id": cloud["net1"]["id"]}})
    err(404, "NetworkNotFound", "POST", "/v2.0/floatingips", {"floatingip": {"floating_network_id": MISSING}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/floatingips", {"floatingip": {}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/floatingips", {"floatingip": {"floating_network_id": ext,
                                                                             "name": "x"}})
    err(400, "InvalidIpForNetwork", "POST", "/v2.0/floatingips",
        {"floatingip": {"floating_network_id": ext, "floating_ip_address": "198.51.100.1"}})
    err(404, "PortNotFound", "POST", "/v2.0/floatingips", {"floatingip": {"floating_network_id": ext,
                                                                           "port_id": MISSING}})
    vm1 = cloud["vm1"]
    err(400, "BadRequest", "POST", "/v2.0/floatingips", {"floatingip": {
        "floating_network_id": ext, "port_id": vm1["id"], "fixed_ip_address": "10.0.1.99"}})
    two = api.create("port", network_id=cloud["net1"]["id"], fixed_ips=[{"ip_address": "10.0.1.20"},
                                                                        {"ip_address": "10.0.1.21"}])
    err(400, "BadRequest", "POST", "/v2.0/floatingips", {"floatingip": {"floating_network_id": ext,
                                                                         "port_id": two["id"]}})
    unrouted_net = api.create("network")
    api.create("subnet", network_id=unrouted_net["id"], cidr="10.0.9.0/24")
    lonely = api.create("port", network_id=unrouted_net["id"])
    err(404, "ExternalGatewayForFloatingIPNotFound", "POST", "/v2.0/floatingips",
        {"floatingip": {"floating_network_id": ext, "port_id": lonely["id"]}})
    (iface,) = [p for p in api.list("ports", f"device_id={router['id']}") if p["network_id"] == cloud["net1"]["id"]]
    err(400, "BadRequest", "POST", "/v2.0/floatingips", {"floatingip": {"floating_network_id": ext,
                                                                         "port_id": iface["id"]}})
    fip = api.create("floatingip", floating_network_id=ext, port_id=vm1["id"])
    err(409, "FloatingIPPortAlreadyAssociated", "POST", "/v2.0/floatingips",
        {"floatingip": {"floating_network_id": ext, "port_id": vm1["id"]}})
    other = api.create("floatingip", floating_network_id=ext)
    err(409, "FloatingIPPortAlreadyAssociated", "PUT", f"/v2.0/floatingips/{other['id']}",
        {"floatingip": {"port_id": vm1["id"]}})
    err(409, "IpAddressAlreadyAllocated", "POST", "/v2.0/floatingips",
        {"floatingip": {"floating_network_id": ext, "floating_ip_address": fip["floating_ip_address"]}})
    err(400, "HTTPBadRequest", "PUT", f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"floating_network_id": ext}})
    err(404, "FloatingIPNotFound", "PUT", f"/v2.0/floatingips/{MISSING}", {"floatingip": {"port_id": None}})
    err(404, "FloatingIPNotFound", "DELETE", f"/v2.0/floatingips/{MISSING}")
    (held,) = [p for p in api.list("ports", "device_owner=network:floatingip") if p["device_id"] == fip["id"]]
    err(409, "ServicePortInUse", "DELETE", f"/v2.0/ports/{held['id']}")
    # the router's interface and gateway are needed by the floating IP
    rpath = f"/v2.0/routers/{router['id']}"
    err(409, "RouterInterfaceInUseByFloatingIP", "PUT", f"{rpath}/remove_router_interface",
        {"subnet_id": cloud["sub1"]["id"]})
    err(409, "RouterExternalGatewayInUseByFloatingIp", "PUT", rpath, {"router": {"external_gateway_info": None}})
    err(409, "RouterInUse", "DELETE", rpath)


def test_ipv6_slaac(api: Api) -> None:
    net = api.create("network")
    v4 = api.create("subnet", network_id=net["id"], cidr="10.5.0.0/24")
    slaac = api.create("subnet", network_id=net["id"], cidr="fd00:5::/64", ip_version=6,
                       ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    assert (slaac["ipv6_ra_mode"], slaac["ipv6_address_mode"]) == ("slaac", "slaac")
    mac = "fa:16:3e:12:34:56"
    port = api.create("port", network_id=net["id"], mac_address=mac)
    eui = str(netaddr.EUI(mac).ipv6(netaddr.IPNetwork("fd00:5::/64").network))
    assert eui == "fd00:5::f816:3eff:fe12:3456"
    assert port["fixed_ips"] == [{"subnet_id": v4["id"], "ip_address": "10.5.0.2"},
                                 {"subnet_id": slaac["id"], "ip_address": eui}]
    # by subnet: the EUI-64 address; an explicit address must be that one
    p2 = api.create("port", network_id=net["id"], fixed_ips=[{"subnet_id": slaac["id"]}])
    assert p2["fixed_ips"][0]["ip_address"] == str(netaddr.EUI(p2["mac_address"]).ipv6(netaddr.IPAddress("fd00:5::")))
    mac3 = "fa:16:3e:00:00:03"
    p3 = api.create("port", network_id=net["id"], mac_address=mac3,
                    fixed_ips=[{"ip_address": "fd00:5::f816:3eff:fe00:3"}])
    assert p3["fixed_ips"] == [{"subnet_id": slaac["id"], "ip_address": "fd00:5::f816:3eff:fe00:3"}]
    api.expect_error(400, "InvalidInput", "POST", "/v2.0/ports", {"port": {
        "network_id": net["id"], "fixed_ips": [{"subnet_id": slaac["id"], "ip_address": "fd00:5::99"}]}})
    # the address follows a MAC change
    moved = api.update("port", port["id"], mac_address="fa:16:3e:65:43:21")
    assert moved["fixed_ips"][1]["ip_address"] == "fd00:5::f816:3eff:fe65:4321"
    # a router interface takes the gateway address, not an EUI-64 one
    router = api.create("router")
    info = _add(api, router["id"], subnet_id=slaac["id"])
    assert api.show("port", info["port_id"])["fixed_ips"] == [{"subnet_id": slaac["id"], "ip_address": "fd00:5::1"}]
    stateful = api.create("subnet", network_id=api.create("network")["id"], cidr="fd00:6::/64", ip_version=6,
                          ipv6_address_mode="dhcpv6-stateful", gateway_ip=None)
    assert stateful["gateway_ip"] is None and stateful["ipv6_ra_mode"] is None
    err = api.expect_error
    net_id = net["id"]
    err(400, "InvalidInput", "POST", "/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "fd00:7::/80",
                                                                   "ip_version": 6, "ipv6_address_mode": "slaac"}})
    err(400, "InvalidInput", "POST", "/v2.0/subnets", {"subnet": {
        "network_id": net_id, "cidr": "fd00:7::/64", "ipv6_ra_mode": "slaac", "ipv6_address_mode": "dhcpv6-stateful"}})
    err(400, "InvalidInput", "POST", "/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "10.7.0.0/24",
                                                                   "ipv6_ra_mode": "slaac"}})
    err(400, "InvalidInput", "POST", "/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "fd00:7::/64",
                                                                   "enable_dhcp": False, "ipv6_address_mode": "slaac"}})
    err(400, "HTTPBadRequest", "POST", "/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "fd00:7::/64",
                                                                     "ipv6_address_mode": "eui64"}})
    err(400, "InvalidInput", "POST", "/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "fd00:5::/96",
                                                                   "ip_version": 6}})  # overlaps


def test_an_auto_address_subnet_addresses_the_ports_already_there(api: Api) -> None:
    """Neutron's add_auto_addrs_on_network_ports: a SLAAC (or DHCPv6-stateless) subnet added to a network gives
    every port already on it, router ports aside, its EUI-64 address (else port security would drop the address
    the VM builds from the router advertisements); deleting the subnet takes them back."""
    net = api.create("network")["id"]
    v4 = api.create("subnet", network_id=net, cidr="10.8.0.0/24")
    vm = api.create("port", network_id=net, mac_address="fa:16:3e:00:08:01", device_owner="compute:nova")
    router = api.create("router")
    _add(api, router["id"], subnet_id=v4["id"])
    interface = next(p for p in api.list("ports", f"network_id={net}")
                     if p["device_owner"] == "network:router_interface")
    before = api.show("port", vm["id"])["updated_at"]
    slaac = api.create("subnet", network_id=net, cidr="fd00:8::/64", ip_version=6, ipv6_ra_mode="slaac",
                       ipv6_address_mode="slaac")
    stateless = api.create("subnet", network_id=net, cidr="fd00:9::/64", ip_version=6,
                           ipv6_address_mode="dhcpv6-stateless")
    stateful = api.create("subnet", network_id=net, cidr="fd00:a::/64", ip_version=6,
                          ipv6_address_mode="dhcpv6-stateful")
    got = api.show("port", vm["id"])
    assert got["fixed_ips"] == [{"subnet_id": v4["id"], "ip_address": vm["fixed_ips"][0]["ip_address"]},
                                {"subnet_id": slaac["id"], "ip_address": "fd00:8::f816:3eff:fe00:801"},
                                {"subnet_id": stateless["id"], "ip_address": "fd00:9::f816:3eff:fe00:801"}]
    assert got["updated_at"] >= before
    assert stateful["id"] not in {f["subnet_id"] for f in got["fixed_ips"]}  # allocated only when asked for
    assert api.show("port", interface["id"])["fixed_ips"] == interface["fixed_ips"]  # router ports untouched
    # the subnet goes, and so do the addresses it gave (only a router interface on it would keep it: 409)
    assert api.request("DELETE", f"/v2.0/subnets/{slaac['id']}").status_code == 204
    assert {f["subnet_id"] for f in api.show("port", vm["id"])["fixed_ips"]} == {v4["id"], stateless["id"]}
    _add(api, router["id"], subnet_id=stateless["id"])
    api.expect_error(409, "SubnetInUse", "DELETE", f"/v2.0/subnets/{stateless['id']}")
    assert {f["subnet_id"] for f in api.show("port", vm["id"])["fixed_ips"]} == {v4["id"], stateless["id"]}


def test_l3_notifications(api: Api, cloud: dict) -> None:
    def last(request) -> set[str]:
        before = len(api.events)
        request()
        assert len(api.events) == before + 1, api.events[before:]
        return api.events[-1]

    created: dict = {}
    assert last(lambda: created.update(r=api.create("router"))) == set()
    rid = created["r"]["id"]
    assert last(lambda: _add(api, rid, subnet_id=cloud["sub1"]["id"])) == {"hv1"}
    assert last(lambda: _add(api, rid, subnet_id=cloud["sub2"]["id"])) == {"hv1", "hv2"}
    assert last(lambda: api.update("router", rid, external_gateway_info={"network_id": cloud["ext"]["id"]})) \
        == {"hv1", "hv2"}
    assert last(lambda: api.update("router", rid, routes=[{"destination": "172.16.0.0/12",
                                                           "nexthop": "10.0.2.9"}])) == {"hv1", "hv2"}
    assert last(lambda: _remove(api, rid, subnet_id=cloud["sub1"]["id"])) == {"hv1", "hv2"}


def test_l3_restart_reloads(api: Api, cloud: dict) -> None:
    router = _routed(api, cloud)
    api.update("router", router["id"], routes=[{"destination": "172.16.0.0/12", "nexthop": "10.0.2.9"}])
    fip = api.create("floatingip", floating_network_id=cloud["ext"]["id"], port_id=cloud["vm1"]["id"])
    shown = {c: api.list(c) for c in ("routers", "floatingips", "ports", "networks", "subnets")}
    graph = api.topology.graph
    before = (sorted(graph.g.nodes), sorted(tuple(sorted(e)) for e in graph.g.edges), graph.get("router", router["id"]))
    api.restart()
    assert {c: api.list(c) for c in shown} == shown
    graph = api.topology.graph
    assert (sorted(graph.g.nodes), sorted(tuple(sorted(e)) for e in graph.g.edges),
            graph.get("router", router["id"])) == before
    assert graph.get("router", router["id"]).key == before[2].key
    assert graph_l3.fips_of_port(graph, cloud["vm1"]["id"])[0].id == fip["id"]
    # allocation goes on: a new router gets a new key
    assert api.topology.graph.get("router", api.create("router")["id"]).key == before[2].key + 1


def test_removing_an_interface_port_without_addresses_is_a_clear_409(api: Api, cloud: dict) -> None:
    # Found by the property test: the error message took the interface's first subnet, and an
    # interface port whose addresses were removed has none (a 500 with a traceback, before).
    router = api.create("router")
    rid = router["id"]
    port = api.create("port", network_id=cloud["net1"]["id"], fixed_ips=[{"ip_address": "10.0.1.5"}])
    _add(api, rid, port_id=port["id"])
    api.update("router", rid, routes=[{"destination": "172.16.0.0/16", "nexthop": "10.0.1.50"}])
    api.update("port", port["id"], fixed_ips=[])
    reply = api.expect_error(409, "RouterInterfaceInUseByRoute", "PUT",
                             f"/v2.0/routers/{rid}/remove_router_interface", {"port_id": port["id"]})
    assert f"port {port['id']}" in reply["message"]
    api.update("router", rid, routes=None)
    assert _remove(api, rid, port_id=port["id"])["port_id"] == port["id"]
