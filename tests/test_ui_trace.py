"""``POST /trace``'s walk (apps/ui/trace.py) on compiled flows and the simulator, without a controller.

The packet's defaults (addresses from the port, ICMP echo, TTL 64, the destination MAC of the
next hop: the port on the same network, else the router interface) and where the walk ends,
on a graph built from records (tests/topo_builders.py). What the endpoint adds (HTTP, the
controller's flows, refusals) is in tests/test_ui_api.py and tests/test_ui.py.
"""

from __future__ import annotations

import pytest

from apps.ui.trace import TraceError, TraceRequest, prepare, run
from flows.compiler import compile_hypervisor
from tests.test_routing import add_router
from tests.topo_builders import Builder, Built
from topology.model import FixedIP, Port, Subnet


@pytest.fixture
def built() -> Built:
    """hv0..hv2; router r1 on n1 (10.0.1/24, 2001:db8:1::/64) and n2 (10.0.2/24, 2001:db8:2::/64)."""
    b = Builder()
    for i in range(3):
        b.hv(i)
    nets = {i: b.network(f"n{i}", cidr=f"10.0.{i}.0/24") for i in (1, 2)}
    for i, net in nets.items():
        b.graph.put_subnet(Subnet(id=f"sub6-{i}", network_id=net.id, project_id="p", cidr=f"2001:db8:{i}::/64",
                                  ip_version=6, gateway_ip=f"2001:db8:{i}::1"))
    b.port("v1", nets[1], "hv0", ip="10.0.1.10")
    b.port("v1b", nets[1], "hv1", ip="10.0.1.11")
    b.port("v2", nets[2], "hv2", ip="10.0.2.10")
    add_router(b, "r1", 1, {"n1": "10.0.1.1", "n2": "10.0.2.1"})
    for i, net in nets.items():  # the interfaces' addresses on the networks' own subnets, IPv4 and IPv6
        rif = b.built.ports[f"r1-n{i}"]
        v4 = b.graph.subnets_of(net.id)[0].id
        b.graph.put_port(Port(**{**_fields(rif), "fixed_ips": (FixedIP(v4, f"10.0.{i}.1"),
                                                               FixedIP(f"sub6-{i}", f"2001:db8:{i}::1"))}))
    for label, i in (("v1", 1), ("v2", 2)):  # and the VMs'
        p = b.graph.port(b.built.ports[label].id)
        b.graph.put_port(Port(**{**_fields(p), "fixed_ips": (*p.fixed_ips, FixedIP(f"sub6-{i}", f"2001:db8:{i}::10"))}))
    return b.done()


def _fields(port: Port) -> dict:
    return {f: getattr(port, f) for f in Port.__dataclass_fields__}


def trace(built: Built, label: str, packet: str, follow: bool = True) -> dict:
    port = built.graph.port(built.ports[label].id)
    req = TraceRequest(port.id, tuple(packet.split()), follow)
    return run(prepare(built.graph, req, lambda hv: compile_hypervisor(built.graph, hv)))


def delivered(built: Built, answer: dict) -> list[str]:
    labels = {p.id: label for label, p in built.ports.items()}
    return [labels.get(d["port_id"], f"{d['hypervisor']}:{d['port']}") for d in answer["delivered"]]


def test_a_ping_on_the_same_network_goes_to_that_port(built: Built) -> None:
    answer = trace(built, "v1", "ipv4_dst=10.0.1.11")
    v1, v1b = built.ports["v1"], built.ports["v1b"]
    sent = answer["packet"]
    assert (sent["eth_src"], sent["eth_dst"], sent["ipv4_src"]) == (v1.mac_address, v1b.mac_address, "10.0.1.10")
    assert (sent["ip_proto"], sent["icmpv4_type"], sent["nw_ttl"]) == ("1", "8", "64")
    assert delivered(built, answer) == ["v1b"] and not answer["errors"]


def test_a_ping_off_the_subnet_goes_to_the_gateway_and_is_routed(built: Built) -> None:
    answer = trace(built, "v1", "ipv4_dst=10.0.2.10")
    assert answer["packet"]["eth_dst"] == built.ports["r1-n1"].mac_address
    assert delivered(built, answer) == ["v2"]
    assert any("lr_in_ip_routing" in line for line in answer["lines"])


def test_ipv6_defaults(built: Built) -> None:
    answer = trace(built, "v1", "ipv6_dst=2001:db8:2::10")
    sent = answer["packet"]
    assert (sent["eth_type"], sent["ipv6_src"], sent["icmpv6_type"]) == ("0x86dd", "2001:db8:1::10", "128")
    assert sent["eth_dst"] == built.ports["r1-n1"].mac_address
    assert delivered(built, answer) == ["v2"]


def test_given_fields_win_and_follow_off_stays_on_the_first_hypervisor(built: Built) -> None:
    answer = trace(built, "v1", "ipv4_dst=10.0.1.11 ip_proto=6 tcp_dst=22 nw_ttl=9", follow=False)
    sent = answer["packet"]
    assert (sent["ip_proto"], sent["tcp_dst"], sent["nw_ttl"]) == ("6", "22", "9") and "icmpv4_type" not in sent
    assert [d["hypervisor"] for d in answer["delivered"]] == ["hv0"]  # out of its tunnel port, not followed
    assert answer["delivered"][0]["port_id"] is None and answer["delivered"][0]["port"].startswith("tf-")
    assert sum(line.startswith("== ") for line in answer["lines"]) == 1


def test_an_expiring_packet_goes_to_the_controller(built: Built) -> None:
    answer = trace(built, "v1", "ipv4_dst=10.0.2.10 nw_ttl=1")
    assert [(d["hypervisor"], d["port"]) for d in answer["delivered"]] == [("hv0", "controller")]


def test_a_port_without_a_host_or_tap(built: Built) -> None:
    with pytest.raises(TraceError) as err:
        trace(built, "r1-n1", "ipv4_dst=10.0.1.10")
    assert err.value.status == 409 and "bound to no registered hypervisor" in str(err.value)
    built.graph.set_connected("hv1", False)  # v1b's bridge gone (its last port map kept)
    with pytest.raises(TraceError) as err:
        trace(built, "v1b", "ipv4_dst=10.0.1.10")
    assert err.value.status == 409 and "not plugged" in str(err.value)

