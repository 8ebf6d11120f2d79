"""Which hypervisors each committed write tells subscribers about, and live port status."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_api_client import Api

from flows.compiler import compile_hypervisor
from topology.model import tap_name


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    a = Api(tmp_path / "topology.sqlite")
    for i in (1, 2, 3):
        a.create("hypervisor", name=f"hv{i}", datapath_id=i, tunnel_ip=f"192.168.100.{i}")
    yield a
    a.close()


def _last(api: Api, request: callable) -> set[str]:
    """Run one write and return the single notification it caused."""
    before = len(api.events)
    request()
    assert len(api.events) == before + 1, api.events[before:]
    return api.events[-1]


def test_affected_hypervisors(api: Api) -> None:
    assert api.events == [{"hv1"}, {"hv2"}, {"hv3"}]
    created: dict[str, dict] = {}

    def make(label: str, member: str, **attrs: object) -> None:
        created[label] = api.create(member, **attrs)

    assert _last(api, lambda: make("a", "network")) == set()
    assert _last(api, lambda: make("b", "network")) == set()
    a, b = created["a"]["id"], created["b"]["id"]
    assert _last(api, lambda: make("sa", "subnet", network_id=a, cidr="10.0.0.0/24")) == set()
    assert _last(api, lambda: make("p1", "port", network_id=a, **{"binding:host_id": "hv1"})) == {"hv1"}
    assert _last(api, lambda: make("p2", "port", network_id=a, **{"binding:host_id": "hv2"})) == {"hv1", "hv2"}
    # p3 has no security group: the default group's members' addresses (p4's below) are not in its flows.
    assert _last(api, lambda: make("p3", "port", network_id=b, port_security_enabled=False,
                                   **{"binding:host_id": "hv3"})) == {"hv3"}
    assert _last(api, lambda: make("p4", "port", network_id=a)) == {"hv1", "hv2"}  # unbound: its network's
    p1, p2, p4 = created["p1"]["id"], created["p2"]["id"], created["p4"]["id"]
    # Moving p1 hv1 -> hv3: network a was on {hv1, hv2}, is now on {hv2, hv3}.
    assert _last(api, lambda: api.update("port", p1, **{"binding:host_id": "hv3"})) == {"hv1", "hv2", "hv3"}
    assert _last(api, lambda: api.update("port", p4, name="x")) == {"hv2", "hv3"}
    # hv3 shares network a with hv2 (and b with nobody else).
    assert _last(api, lambda: api.update("hypervisor", "hv3", tunnel_ip="192.168.100.33")) == {"hv2", "hv3"}
    assert _last(api, lambda: api.update("hypervisor", "hv1", tunnel_ip="192.168.100.11")) == {"hv1"}
    assert _last(api, lambda: api.update("network", a, name="renamed")) == {"hv2", "hv3"}
    assert _last(api, lambda: api.update("subnet", created["sa"]["id"], name="s")) == set()
    assert _last(api, lambda: api.request("DELETE", f"/v2.0/ports/{p2}")) == {"hv2", "hv3"}
    assert _last(api, lambda: api.request("DELETE", "/v2.0/hypervisors/hv3")) == {"hv3"}
    assert _last(api, lambda: make("hv4", "hypervisor", name="hv4", datapath_id=4, tunnel_ip="192.168.100.4")) \
        == {"hv4"}
    assert _last(api, lambda: make("p5", "port", network_id=a, **{"binding:host_id": "hv4"})) == {"hv3", "hv4"}
    # A hypervisor registering after its ports were bound brings the hypervisors it shares networks with.
    assert _last(api, lambda: make("hv3", "hypervisor", name="hv3", datapath_id=3, tunnel_ip="192.168.100.3")) \
        == {"hv3", "hv4"}
    assert _last(api, lambda: api.update("hypervisor", "hv4", bridge_mappings={"physnet1": "br-phys"})) == \
        {"hv3", "hv4"}
    for port in (p1, p4, created["p5"]["id"]):
        api.request("DELETE", f"/v2.0/ports/{port}")
    assert _last(api, lambda: api.request("DELETE", f"/v2.0/networks/{a}")) == set()


def test_network_delete_and_subnet_delete_with_dhcp_ports(api: Api) -> None:
    net = api.create("network")["id"]
    sub = api.create("subnet", network_id=net, cidr="10.0.0.0/24")["id"]
    api.create("port", network_id=net, device_owner="network:dhcp", **{"binding:host_id": "hv2"})
    assert _last(api, lambda: api.request("DELETE", f"/v2.0/subnets/{sub}")) == {"hv2"}
    assert _last(api, lambda: api.request("DELETE", f"/v2.0/networks/{net}")) == {"hv2"}


def test_live_ofports_set_port_status(api: Api) -> None:
    net = api.create("network")["id"]
    port = api.create("port", network_id=net, **{"binding:host_id": "hv1"})
    other = api.create("port", network_id=net, **{"binding:host_id": "hv2"})
    assert port["status"] == "DOWN"
    events = len(api.events)
    assert api.topology.set_live_ofports("hv1", {tap_name(port["id"]): 5, "tf-vxlan": 1}) == {"hv1"}
    assert len(api.events) == events  # live state is not a committed write
    assert api.show("port", port["id"])["status"] == "ACTIVE"
    assert api.show("port", other["id"])["status"] == "DOWN"
    assert api.show("hypervisor", "hv1")["connected"] is True
    assert [p["id"] for p in api.list("ports", "status=ACTIVE")] == [port["id"]]
    assert api.update("port", port["id"], admin_state_up=False)["status"] == "DOWN"
    assert api.update("port", port["id"], admin_state_up=True)["status"] == "ACTIVE"
    # A port bound to a hypervisor whose bridge already has its tap is ACTIVE at once.
    assert api.update("port", other["id"], **{"binding:host_id": "hv1"})["status"] == "DOWN"
    api.topology.set_live_ofports("hv1", {tap_name(other["id"]): 6})
    assert api.show("port", port["id"])["status"] == "DOWN"
    assert api.show("port", other["id"])["status"] == "ACTIVE"
    api.restart()  # live state is not persisted
    assert api.show("port", other["id"])["status"] == "DOWN"


def test_the_compiler_reads_what_the_api_wrote(api: Api) -> None:
    net = api.create("network")
    api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24")
    local = api.create("port", network_id=net["id"], **{"binding:host_id": "hv1"})
    api.create("port", network_id=net["id"], **{"binding:host_id": "hv2"})
    api.topology.set_live_ofports("hv1", {tap_name(local["id"]): 5, "tf-vxlan": 1})
    with api.topology.lock:
        flows = compile_hypervisor(api.topology.graph, "hv1")
    text = "\n".join(str(f) for f in flows)
    assert local["mac_address"] in text and "10.0.0.2" in text and "10.0.0.3" in text
    assert "192.168.100.2" in text  # the remote port is reached through hv2's tunnel endpoint
