"""Gateway hypervisors and the scheduling of routers' source NAT on them, over real HTTP (issue #13).

Hypervisors marked ``gateway_for`` a physical network (and mapping it to a bridge) are
candidates; a router whose gateway is on that physical network gets an ordered list of
them, least loaded first, at most ``gateways_per_router`` long; the operator reorders
it with ``gateway_hypervisors``; gateways coming and going join and leave the lists
without ever taking over an active gateway.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_api_client import Api

from topology.gateways import tunnel_ports


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    a = Api(tmp_path / "topology.sqlite")
    yield a
    a.close()


def hv(api: Api, name: str, n: int, gateway: bool = False) -> dict:
    extra = {"gateway_for": ["physnet1"]} if gateway else {}
    return api.create("hypervisor", name=name, datapath_id=n, tunnel_ip=f"192.168.100.{n}",
                      bridge_mappings={"physnet1": "br-ex"}, **extra)


@pytest.fixture
def ext(api: Api) -> dict:
    for i in (1, 2):
        hv(api, f"hv{i}", i)
    for i in (11, 12):
        hv(api, f"gw{i}", i, gateway=True)
    net = api.create("network", name="public", **{"router:external": True, "provider:network_type": "flat",
                                                   "provider:physical_network": "physnet1"})
    api.create("subnet", network_id=net["id"], cidr="203.0.113.0/24")
    return net


def router(api: Api, ext: dict) -> dict:
    return api.create("router", external_gateway_info={"network_id": ext["id"]})


def test_a_gateway_hypervisor_shows_what_it_is_a_gateway_for(api: Api, ext: dict) -> None:
    assert api.show("hypervisor", "gw11")["gateway_for"] == ["physnet1"]
    assert api.show("hypervisor", "hv1")["gateway_for"] == []
    api.expect_error(400, "HTTPBadRequest", "POST", "/v2.0/hypervisors",
                     {"hypervisor": {"name": "x", "datapath_id": 9, "tunnel_ip": "192.168.100.9",
                                     "gateway_for": "physnet1"}})


def test_routers_are_spread_least_loaded_first(api: Api, ext: dict) -> None:
    first, second = router(api, ext), router(api, ext)
    assert first["gateway_hypervisors"] == ["gw11", "gw12"]
    assert first["active_gateway_hypervisor"] is None  # no gateway's bridge is connected here
    api.topology.set_live_ofports("gw12", {"br-int": 0xFFFFFFFE})
    assert api.show("router", first["id"])["active_gateway_hypervisor"] == "gw12"
    assert second["gateway_hypervisors"] == ["gw12", "gw11"]  # gw11 is active for one router already
    assert api.create("router")["gateway_hypervisors"] == []  # no external gateway, no gateways
    cleared = api.update("router", first["id"], external_gateway_info={})
    assert cleared["gateway_hypervisors"] == []


def test_the_operator_moves_a_router_and_bad_lists_change_nothing(api: Api, ext: dict) -> None:
    r = router(api, ext)
    moved = api.update("router", r["id"], gateway_hypervisors=["gw12", "gw11"])
    assert moved["gateway_hypervisors"] == ["gw12", "gw11"]
    path = f"/v2.0/routers/{r['id']}"
    for bad in (["hv1"], ["gw11", "gw11"], ["nope"]):
        api.expect_error(400, "BadRequest", "PUT", path, {"router": {"gateway_hypervisors": bad}})
    api.expect_error(400, "HTTPBadRequest", "PUT", path, {"router": {"gateway_hypervisors": "gw11"}})
    plain = api.create("router")
    api.expect_error(400, "BadRequest", "PUT", f"/v2.0/routers/{plain['id']}",
                     {"router": {"gateway_hypervisors": ["gw11"]}})


def test_gateways_joining_and_leaving_never_take_over_an_active_one(api: Api, ext: dict) -> None:
    r = router(api, ext)
    api.update("hypervisor", "gw11", gateway_for=[])  # gw11 stops being a gateway: it leaves the list
    assert api.show("router", r["id"])["gateway_hypervisors"] == ["gw12"]
    hv(api, "gw13", 13, gateway=True)  # a new gateway fills the list from the end
    assert api.show("router", r["id"])["gateway_hypervisors"] == ["gw12", "gw13"]
    api.request("DELETE", "/v2.0/hypervisors/gw12")
    assert api.show("router", r["id"])["gateway_hypervisors"] == ["gw13"]
    api.restart()  # stored, not recomputed
    assert api.show("router", r["id"])["gateway_hypervisors"] == ["gw13"]


def test_gateway_tunnels_link_every_hypervisor_to_every_gateway(api: Api, ext: dict) -> None:
    graph = api.topology.graph
    assert sorted(tunnel_ports(graph, "hv1")) == ["tg-c0a8640b", "tg-c0a8640c"]
    assert sorted(tunnel_ports(graph, "gw11")) == ["tg-c0a86401", "tg-c0a86402", "tg-c0a8640c"]
    port = tunnel_ports(graph, "hv1")["tg-c0a8640b"]
    assert port["options:remote_ip"] == "192.168.100.11" and port["options:local_ip"] == "192.168.100.1"
    assert port["options:dst_port"] == "4790" and port["bfd:enable"] == "true"


def test_every_router_gets_a_source_nat_zone_of_its_own(api: Api, ext: dict) -> None:
    """Two routers sharing a conntrack zone on a gateway would merge their tenants' connections."""
    def zone(router_id: str) -> int:
        return api.topology.graph.get("router", router_id).snat_zone

    first, second = router(api, ext), router(api, ext)
    assert zone(first["id"]) == 0x8000 and zone(second["id"]) == 0x8001
    api.update("router", first["id"], external_gateway_info={"network_id": ext["id"], "enable_snat": False})
    assert zone(first["id"]) == 0x8000  # kept while the gateway stays on its network
    api.update("router", first["id"], external_gateway_info={})
    assert zone(first["id"]) == 0  # released with the gateway
    third = router(api, ext)
    assert zone(third["id"]) == 0x8000  # the lowest free one
    api.restart()
    assert (zone(second["id"]), zone(third["id"])) == (0x8001, 0x8000)  # stored, not recomputed
