"""IP address and MAC management through the API: auto, explicit, pools, exhaustion, tenants."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_api_client import Api


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    a = Api(tmp_path / "topology.sqlite")
    yield a
    a.close()


def _net_with_subnet(api: Api, cidr: str = "10.0.0.0/24", **subnet: object) -> tuple[str, str]:
    net = api.create("network")["id"]
    return net, api.create("subnet", network_id=net, cidr=cidr, **subnet)["id"]


def _ips(port: dict) -> list[str]:
    return [f["ip_address"] for f in port["fixed_ips"]]


def test_auto_allocation_takes_the_lowest_free_address(api: Api) -> None:
    net, sub = _net_with_subnet(api)
    ports = [api.create("port", network_id=net) for _ in range(3)]
    assert [_ips(p) for p in ports] == [["10.0.0.2"], ["10.0.0.3"], ["10.0.0.4"]]
    assert api.request("DELETE", f"/v2.0/ports/{ports[1]['id']}").status_code == 204
    assert _ips(api.create("port", network_id=net)) == ["10.0.0.3"]
    assert _ips(api.create("port", network_id=net, fixed_ips=[{"subnet_id": sub}])) == ["10.0.0.5"]
    assert api.create("port", network_id=net, fixed_ips=[])["fixed_ips"] == []


def test_explicit_addresses(api: Api) -> None:
    net, sub = _net_with_subnet(api)
    p = api.create("port", network_id=net, fixed_ips=[{"subnet_id": sub, "ip_address": "10.0.0.50"}])
    assert p["fixed_ips"] == [{"subnet_id": sub, "ip_address": "10.0.0.50"}]
    # An address alone finds its subnet; one outside the pools but inside the CIDR is allowed.
    assert api.create("port", network_id=net, fixed_ips=[{"ip_address": "10.0.0.1"}],
                      device_owner="network:router_interface")["fixed_ips"][0]["subnet_id"] == sub
    two = api.create("port", network_id=net, fixed_ips=[{"subnet_id": sub}, {"ip_address": "10.0.0.2"}])
    assert _ips(two) == ["10.0.0.3", "10.0.0.2"]  # the explicit address is claimed before the auto one


def test_gateway_is_reserved_for_router_ports(api: Api) -> None:
    net, _ = _net_with_subnet(api)
    api.expect_error(409, "IpAddressAlreadyAllocated", "POST", "/v2.0/ports",
                     {"port": {"network_id": net, "fixed_ips": [{"ip_address": "10.0.0.1"}]}})
    router = api.create("port", network_id=net, device_owner="network:router_interface",
                        fixed_ips=[{"ip_address": "10.0.0.1"}])
    assert _ips(router) == ["10.0.0.1"]


def test_exhausted_pool(api: Api) -> None:
    net, sub = _net_with_subnet(api, "10.0.0.0/29", allocation_pools=[{"start": "10.0.0.4", "end": "10.0.0.5"}])
    assert [_ips(api.create("port", network_id=net)) for _ in range(2)] == [["10.0.0.4"], ["10.0.0.5"]]
    api.expect_error(409, "IpAddressGenerationFailure", "POST", "/v2.0/ports", {"port": {"network_id": net}})
    api.expect_error(409, "IpAddressGenerationFailure", "POST", "/v2.0/ports",
                     {"port": {"network_id": net, "fixed_ips": [{"subnet_id": sub}]}})
    # Explicit addresses outside the pool are still allowed.
    assert _ips(api.create("port", network_id=net, fixed_ips=[{"ip_address": "10.0.0.6"}])) == ["10.0.0.6"]


def test_next_subnet_when_the_first_is_full(api: Api) -> None:
    net, _ = _net_with_subnet(api, "10.0.0.0/30")  # one usable address after the gateway
    sub2 = api.create("subnet", network_id=net, cidr="10.0.1.0/24")["id"]
    assert _ips(api.create("port", network_id=net)) == ["10.0.0.2"]
    assert api.create("port", network_id=net)["fixed_ips"] == [{"subnet_id": sub2, "ip_address": "10.0.1.2"}]


def test_same_cidr_in_two_tenants(api: Api) -> None:
    a, _ = _net_with_subnet(api, "10.0.0.0/24", project_id="tenant-a")
    b, _ = _net_with_subnet(api, "10.0.0.0/24", project_id="tenant-b")
    pa = api.create("port", network_id=a, project_id="tenant-a")
    pb = api.create("port", network_id=b, project_id="tenant-b")
    assert _ips(pa) == _ips(pb) == ["10.0.0.2"]
    same_mac = api.create("port", network_id=b, mac_address=pa["mac_address"])  # MACs are unique per network
    assert same_mac["mac_address"] == pa["mac_address"]


def test_dual_stack_port_gets_one_address_per_version(api: Api) -> None:
    net, v4 = _net_with_subnet(api)
    v6 = api.create("subnet", network_id=net, cidr="fd00:0:0:1::/64", ip_version=6)["id"]
    port = api.create("port", network_id=net)
    assert port["fixed_ips"] == [{"subnet_id": v4, "ip_address": "10.0.0.2"},
                                 {"subnet_id": v6, "ip_address": "fd00:0:0:1::2"}]
    explicit = api.create("port", network_id=net, fixed_ips=[{"ip_address": "FD00:0:0:1:0:0:0:99"}])
    assert explicit["fixed_ips"] == [{"subnet_id": v6, "ip_address": "fd00:0:0:1::99"}]


def test_ipv6_defaults_are_neutrons(api: Api) -> None:
    """Without a gateway_ip, an IPv6 subnet's gateway is its first host address (::1), as for IPv4 (Neutron's
    behaviour, held by tempest's test_create_delete_subnet_with_default_gw, ebb4fd95), not the subnet-router
    anycast address (the network address, ::): that one is in no pool either. The pool runs to the last
    address (IPv6 has no broadcast). On a SLAAC subnet a port's address is the EUI-64 of its MAC: what the
    VM's kernel builds from the router advertisement."""
    net = api.create("network")["id"]
    plain = api.create("subnet", network_id=net, cidr="2001:db8:1::/64", ip_version=6)
    assert plain["gateway_ip"] == "2001:db8:1::1"
    assert plain["allocation_pools"] == [{"start": "2001:db8:1::2", "end": "2001:db8:1:0:ffff:ffff:ffff:ffff"}]
    slaac = api.create("subnet", network_id=net, cidr="2001:db8:2::/64", ip_version=6, ipv6_ra_mode="slaac",
                       ipv6_address_mode="slaac")
    assert slaac["gateway_ip"] == "2001:db8:2::1"
    port = api.create("port", network_id=net, mac_address="fa:16:3e:12:34:56")
    assert _ips(port) == ["2001:db8:1::2", "2001:db8:2:0:f816:3eff:fe12:3456"]
    # fixed IPs asked for elsewhere, or none kept on update: a port still has its SLAAC address (Neutron's
    # _get_auto_address_ips; a VM's kernel builds it whatever the API says)
    other = api.create("port", network_id=net, mac_address="fa:16:3e:12:34:57",
                       fixed_ips=[{"subnet_id": plain["id"], "ip_address": "2001:db8:1::99"}])
    assert _ips(other) == ["2001:db8:1::99", "2001:db8:2:0:f816:3eff:fe12:3457"]
    updated = api.request("PUT", f"/v2.0/ports/{other['id']}", {"port": {"fixed_ips": []}}).json()["port"]
    assert _ips(updated) == ["2001:db8:2:0:f816:3eff:fe12:3457"]


def test_allocation_pool_rules(api: Api) -> None:
    net = api.create("network")["id"]
    no_gw = api.create("subnet", network_id=net, cidr="10.0.0.0/24", gateway_ip=None)
    assert no_gw["gateway_ip"] is None
    assert no_gw["allocation_pools"] == [{"start": "10.0.0.1", "end": "10.0.0.254"}]
    mid_gw = api.create("subnet", network_id=net, cidr="10.0.1.0/24", gateway_ip="10.0.1.100")
    assert mid_gw["allocation_pools"] == [{"start": "10.0.1.1", "end": "10.0.1.99"},
                                          {"start": "10.0.1.101", "end": "10.0.1.254"}]

    def bad(status: int, kind: str, pools: list, gateway: str = "10.0.2.1") -> None:
        api.expect_error(status, kind, "POST", "/v2.0/subnets", {"subnet": {
            "network_id": net, "cidr": "10.0.2.0/24", "gateway_ip": gateway, "allocation_pools": pools}})

    bad(400, "OutOfBoundsAllocationPool", [{"start": "10.0.2.10", "end": "10.0.3.5"}])
    bad(400, "OutOfBoundsAllocationPool", [{"start": "10.0.2.0", "end": "10.0.2.5"}])
    bad(400, "InvalidAllocationPool", [{"start": "10.0.2.20", "end": "10.0.2.10"}])
    bad(400, "InvalidAllocationPool", [{"start": "fd00::1", "end": "fd00::5"}])
    bad(409, "OverlappingAllocationPools", [{"start": "10.0.2.10", "end": "10.0.2.20"},
                                            {"start": "10.0.2.15", "end": "10.0.2.30"}])
    bad(409, "GatewayConflictWithAllocationPools", [{"start": "10.0.2.1", "end": "10.0.2.20"}])
    bad(400, "HTTPBadRequest", [{"start": "10.0.2.10"}])
    sub = api.create("subnet", network_id=net, cidr="10.0.2.0/24",
                     allocation_pools=[{"start": "10.0.2.10", "end": "10.0.2.20"}])
    api.expect_error(409, "GatewayConflictWithAllocationPools", "PUT", f"/v2.0/subnets/{sub['id']}",
                     {"subnet": {"gateway_ip": "10.0.2.15"}})
    port = api.create("port", network_id=net, fixed_ips=[{"subnet_id": sub["id"]}])
    api.expect_error(409, "GatewayIpInUse", "PUT", f"/v2.0/subnets/{sub['id']}",
                     {"subnet": {"gateway_ip": _ips(port)[0], "allocation_pools": [
                         {"start": "10.0.2.30", "end": "10.0.2.40"}]}})


def test_macs(api: Api) -> None:
    net, _ = _net_with_subnet(api)
    macs = {api.create("port", network_id=net, fixed_ips=[])["mac_address"] for _ in range(20)}
    assert len(macs) == 20 and all(m.startswith("fa:16:3e:") and len(m) == 17 for m in macs)
    assert api.create("port", network_id=net, mac_address="FA-16-3E-AA-BB-CC")["mac_address"] == "fa:16:3e:aa:bb:cc"


def test_port_update_addresses(api: Api) -> None:
    net, sub = _net_with_subnet(api)
    port = api.create("port", network_id=net)
    assert _ips(port) == ["10.0.0.2"]
    # Restating the subnet keeps the address; adding one more allocates the next free one.
    assert _ips(api.update("port", port["id"], fixed_ips=[{"subnet_id": sub}, {"subnet_id": sub}])) == \
        ["10.0.0.2", "10.0.0.3"]
    assert _ips(api.update("port", port["id"], fixed_ips=[{"ip_address": "10.0.0.40"}])) == ["10.0.0.40"]
    assert _ips(api.create("port", network_id=net)) == ["10.0.0.2"]  # the old addresses were released
    moved = api.update("port", port["id"], mac_address="fa:16:3e:00:00:07")
    assert moved["mac_address"] == "fa:16:3e:00:00:07" and _ips(moved) == ["10.0.0.40"]
    api.expect_error(409, "IpAddressAlreadyAllocated", "PUT", f"/v2.0/ports/{port['id']}",
                     {"port": {"fixed_ips": [{"ip_address": "10.0.0.2"}]}})
    assert _ips(api.update("port", port["id"], fixed_ips=None)) == ["10.0.0.40"]  # null: unchanged
    assert _ips(api.update("port", port["id"], fixed_ips=[])) == []


def test_concurrent_creates_get_distinct_addresses_and_keys(api: Api) -> None:
    net, _ = _net_with_subnet(api)
    with ThreadPoolExecutor(max_workers=8) as pool:
        ports = list(pool.map(lambda _: api.request("POST", "/v2.0/ports", {"port": {"network_id": net}}), range(24)))
    assert all(r.status_code == 201 for r in ports)
    ips = {p.json()["port"]["fixed_ips"][0]["ip_address"] for p in ports}
    assert len(ips) == 24 and len({p.key for p in api.topology.graph.ports_of(net)}) == 24
