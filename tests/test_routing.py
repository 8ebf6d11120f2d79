"""Distributed routing on the simulated pipeline: behaviour, not flow text.

A router with three subnets and VMs spread over hypervisors; packets are
injected at a VM's tap and followed across the simulated fabric (tunnels
included) until they reach VMs.
"""

from __future__ import annotations

import pytest

from flows.compiler import compile_hypervisor
from flows.flow import CONTROLLER
from flows.pipeline import STAGE_BY_NAME
from flows.routing import TTL_METER
from flows.simulate import simulate
from tests.topo_builders import Builder, Built, delivered_labels, fabric_of, send
from topology.model import FixedIP, Network, Port, dvr_mac
from topology.model_l3 import ROUTER_INTERFACE, Router

ROUTER_TABLES = {STAGE_BY_NAME[n].table_id for n in ("lr_in_ip_input", "lr_in_ip_routing", "lr_in_arp_resolve")}


def add_router(b: Builder, label: str, key: int, nets: dict[str, str], routes=()) -> Router:
    """A router with one interface per (network label -> gateway IP), as add_router_interface makes them."""
    router = Router(id=f"router-{label}", project_id="p", key=key, routes=tuple(routes))
    b.graph.put_node("router", router.id, router)
    for net_label, gw in nets.items():
        net = b.built.networks[net_label]
        b._port_n += 1
        port = Port(id=f"rif-{label}-{net_label}-0000", network_id=net.id, project_id="p", key=b._port_n,
                    mac_address=f"fa:16:3e:ff:{key:02x}:{net.key:02x}", fixed_ips=(FixedIP(f"sub-{net.key}", gw),),
                    device_owner=ROUTER_INTERFACE, device_id=router.id)
        b.graph.put_port(port)
        b.built.ports[f"{label}-{net_label}"] = port
    return router


def subnet_of(b: Builder, net: Network, cidr: str) -> None:
    from topology.model import Subnet

    b.graph.put_subnet(Subnet(id=f"sub-{net.key}", network_id=net.id, project_id=net.project_id, cidr=cidr,
                              ip_version=4, gateway_ip=None))


@pytest.fixture
def cloud() -> Built:
    """hv0..hv3; router r1 joins 10.0.1/24, 10.0.2/24, 10.0.3/24; hv3 hosts only an unrelated network."""
    b = Builder()
    for i in range(4):
        b.hv(i)
    nets = {}
    for i in (1, 2, 3):
        nets[i] = b.network(f"n{i}", cidr=f"10.0.{i}.0/24")
        subnet_of(b, nets[i], f"10.0.{i}.0/24")
    other = b.network("other", cidr="10.9.0.0/24")
    b.port("v1", nets[1], "hv0", ip="10.0.1.10")
    b.port("v2", nets[2], "hv1", ip="10.0.2.10")
    b.port("v2b", nets[2], "hv0", ip="10.0.2.11")
    b.port("v3", nets[3], "hv2", ip="10.0.3.10")
    b.port("x", other, "hv3", ip="10.9.0.10")
    add_router(b, "r1", 1, {"n1": "10.0.1.1", "n2": "10.0.2.1", "n3": "10.0.3.1"},
               routes=[("10.0.2.128/25", "10.0.3.10"), ("192.0.2.0/24", "10.0.3.10")])
    return b.done()


def routed(built: Built, src: str, dst_ip: str, ttl: int = 64, **extra):
    gw = built.ports[f"r1-{built.ports[src].network_id and _net_label(built, src)}"]
    return send(fabric_of(built.graph), built, src, eth_dst=gw.mac_address, ipv4_src=built.ports[src].fixed_ips[0]
                .ip_address, ipv4_dst=dst_ip, nw_ttl=ttl, **extra)


def _net_label(built: Built, port_label: str) -> str:
    net_id = built.ports[port_label].network_id
    return next(label for label, net in built.networks.items() if net.id == net_id)


def test_routed_to_a_remote_hypervisor_in_one_hop(cloud: Built) -> None:
    res = routed(cloud, "v1", "10.0.2.10")
    assert delivered_labels(cloud, res) == ["v2"]
    (delivery,) = res.deliveries
    assert delivery.packet["nw_ttl"] == 63
    assert delivery.packet["eth_src"] == cloud.ports["r1-n2"].mac_address
    assert delivery.packet["eth_dst"] == cloud.ports["v2"].mac_address
    # One crossing of the underlay, source hypervisor to destination hypervisor, with
    # the destination network's VNI and the source hypervisor's DVR MAC on the wire.
    assert [hv for hv, _ in res.walks] == ["hv0", "hv1"]
    wire = res.entries[1]
    assert wire["tunnel_id"] == cloud.networks["n2"].segmentation_id
    assert wire["eth_src"] == dvr_mac(cloud.graph.hypervisor("hv0"))


def test_routed_locally_when_both_ends_share_a_hypervisor(cloud: Built) -> None:
    res = routed(cloud, "v1", "10.0.2.11")
    assert delivered_labels(cloud, res) == ["v2b"]
    assert [hv for hv, _ in res.walks] == ["hv0"]
    assert res.deliveries[0].packet["eth_src"] == cloud.ports["r1-n2"].mac_address
    assert res.deliveries[0].packet["nw_ttl"] == 63


def test_return_path_and_every_pair(cloud: Built) -> None:
    ips = {"v1": "10.0.1.10", "v2": "10.0.2.10", "v2b": "10.0.2.11", "v3": "10.0.3.10"}
    for src in ips:
        for dst, ip in ips.items():
            if _net_label(cloud, src) == _net_label(cloud, dst):
                continue
            res = routed(cloud, src, ip)
            assert delivered_labels(cloud, res) == [dst], (src, dst)
            assert res.deliveries[0].packet["nw_ttl"] == 63


def test_longest_prefix_wins_and_extra_routes_use_their_next_hop(cloud: Built) -> None:
    # 10.0.2.130 is in both the connected /24 and the extra route /25 via v3: the /25 wins.
    res = routed(cloud, "v1", "10.0.2.130")
    assert delivered_labels(cloud, res) == ["v3"]
    assert res.deliveries[0].packet["ipv4_dst"] == "10.0.2.130"  # routed, not rewritten
    # Outside the /25 the connected /24 still applies.
    assert delivered_labels(cloud, routed(cloud, "v1", "10.0.2.10")) == ["v2"]
    # A destination only an extra route covers.
    assert delivered_labels(cloud, routed(cloud, "v2", "192.0.2.7")) == ["v3"]
    # No route at all: dropped.
    assert routed(cloud, "v1", "198.51.100.1").deliveries == []


def test_ttl_expiry_goes_to_the_controller_not_the_destination(cloud: Built) -> None:
    """TTL 1 expires at the router: no VM gets it; one copy goes to the controller, which answers
    ICMP time exceeded (what traceroute shows as the router hop). TTL 2 arrives."""
    res = routed(cloud, "v1", "10.0.2.10", ttl=1)
    assert [d.port for d in res.deliveries] == [str(CONTROLLER)]
    assert [m for _, walk in res.walks for m in walk.meters] == [TTL_METER]  # the hypervisor's bound on them
    assert delivered_labels(cloud, routed(cloud, "v1", "10.0.2.10", ttl=2)) == ["v2"]


def test_a_packet_that_does_not_say_its_ttl_has_64(cloud: Built) -> None:
    """The simulator's default TTL (64, as a packet trace without nw_ttl= means) is what the TTL
    matches see too: routed, not expired at the router."""
    gw = cloud.ports["r1-n1"]
    res = send(fabric_of(cloud.graph), cloud, "v1", eth_dst=gw.mac_address,
               ipv4_src=cloud.ports["v1"].fixed_ips[0].ip_address, ipv4_dst="10.0.2.10")
    assert delivered_labels(cloud, res) == ["v2"]
    assert res.deliveries[0].packet["nw_ttl"] == 63


def test_router_answers_ping_to_its_addresses(cloud: Built) -> None:
    v1 = cloud.ports["v1"]
    flows = compile_hypervisor(cloud.graph, "hv0")
    for target in ("10.0.1.1", "10.0.3.1"):
        res = simulate(flows, {"in_port": cloud.ofport("v1"), "eth_src": v1.mac_address,
                               "eth_dst": cloud.ports["r1-n1"].mac_address, "eth_type": 0x0800, "ip_proto": 1,
                               "icmpv4_type": 8, "ipv4_src": "10.0.1.10", "ipv4_dst": target})
        ((port, reply),) = res.outputs
        assert port == cloud.ofport("v1")
        assert reply["icmpv4_type"] == 0
        assert (reply["ipv4_src"], reply["ipv4_dst"]) == (target, "10.0.1.10")
        assert (reply["eth_src"], reply["eth_dst"]) == (cloud.ports["r1-n1"].mac_address, v1.mac_address)


def test_gateway_arp_is_answered_on_every_hosting_hypervisor(cloud: Built) -> None:
    for label, hv in (("v1", "hv0"), ("v2", "hv1"), ("v3", "hv2")):
        gw_port = cloud.ports[f"r1-{_net_label(cloud, label)}"]
        gw_ip = gw_port.fixed_ips[0].ip_address
        res = simulate(compile_hypervisor(cloud.graph, hv),
                       {"in_port": cloud.ofport(label), "eth_src": cloud.ports[label].mac_address,
                        "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_op": 1, "arp_tpa": gw_ip,
                        "arp_spa": cloud.ports[label].fixed_ips[0].ip_address,
                        "arp_sha": cloud.ports[label].mac_address})
        ((port, reply),) = res.outputs
        assert reply["arp_op"] == 2 and reply["arp_sha"] == gw_port.mac_address


def test_a_hypervisor_without_the_routers_subnets_holds_none_of_its_flows(cloud: Built) -> None:
    flows = compile_hypervisor(cloud.graph, "hv3")
    assert not [f for f in flows if f.table_id in ROUTER_TABLES]
    assert not [f for f in flows if any(k == "reg3" for k, _ in f.match)]
    mentioned = {v for f in flows for _, v in f.match}
    assert not {p.mac_address for label, p in cloud.ports.items() if label.startswith("r1-")} & mentioned
    # ...while every hypervisor hosting one of them does.
    for hv in ("hv0", "hv1", "hv2"):
        assert [f for f in compile_hypervisor(cloud.graph, hv) if f.table_id in ROUTER_TABLES]


def test_a_router_only_routes_between_its_own_interfaces() -> None:
    """Two tenants with the same CIDRs on their own routers: nothing crosses."""
    b = Builder()
    for i in range(2):
        b.hv(i)
    for tenant, key in (("a", 1), ("b", 2)):
        n0 = b.network(f"{tenant}0", cidr="10.0.0.0/24", project=tenant)
        n1 = b.network(f"{tenant}1", cidr="10.0.1.0/24", project=tenant)
        subnet_of(b, n0, "10.0.0.0/24")
        subnet_of(b, n1, "10.0.1.0/24")
        b.port(f"{tenant}-src", n0, "hv0", ip="10.0.0.10")
        b.port(f"{tenant}-dst", n1, "hv1", ip="10.0.1.10")
        b.port(f"{tenant}-dst2", n1, "hv0", ip="10.0.1.11")
        add_router(b, f"r{tenant}", key, {f"{tenant}0": "10.0.0.1", f"{tenant}1": "10.0.1.1"})
    built = b.done()
    fabric = fabric_of(built.graph)
    for tenant, other in (("a", "b"), ("b", "a")):
        gw = built.ports[f"r{tenant}-{tenant}0"].mac_address
        for ip, want in (("10.0.1.10", f"{tenant}-dst"), ("10.0.1.11", f"{tenant}-dst2")):
            res = send(fabric, built, f"{tenant}-src", eth_dst=gw, ipv4_src="10.0.0.10", ipv4_dst=ip, nw_ttl=64)
            assert delivered_labels(built, res) == [want]
        # A frame sent to the OTHER tenant's router MAC is not routed: it stays an unknown
        # unicast in the sender's own network (no port there answers to it).
        foreign = built.ports[f"r{other}-{other}0"].mac_address
        res = send(fabric, built, f"{tenant}-src", eth_dst=foreign, ipv4_src="10.0.0.10", ipv4_dst="10.0.1.10",
                   nw_ttl=64)
        assert all(d.packet.get("nw_ttl") == 64 for d in res.deliveries)
        assert not [d for d in res.deliveries if (built.label_of(d.hv, d.port) or "").startswith(other)]


def test_flows_follow_the_routers_interfaces(cloud: Built) -> None:
    """Removing an interface removes every flow for that subnet; the rest keeps routing."""
    before = {f.cookie for f in compile_hypervisor(cloud.graph, "hv0")}
    cloud.graph.remove("port", cloud.ports["r1-n3"].id)
    after = compile_hypervisor(cloud.graph, "hv0")
    text = " ".join(repr(f.match) + repr(f.actions) for f in after if f.table_id in ROUTER_TABLES)
    assert "10.0.3" not in text and cloud.ports["r1-n3"].mac_address not in text
    assert delivered_labels(cloud, routed(cloud, "v1", "10.0.2.10")) == ["v2"]
    assert routed(cloud, "v1", "10.0.3.10").deliveries == []
    assert before != {f.cookie for f in after}
    # hv2 hosted only n3: no router flows left there.
    assert not [f for f in compile_hypervisor(cloud.graph, "hv2") if f.table_id in ROUTER_TABLES]


def test_routing_flows_pass_the_switch_rules(cloud: Built) -> None:
    """What OVS would reject (missing prerequisites, bad gotos) is caught before any switch sees it."""
    from flows.simulate import lint

    for hv in ("hv0", "hv1", "hv2", "hv3"):
        assert lint(compile_hypervisor(cloud.graph, hv)) == []


# -- IPv6 -----------------------------------------------------------------------------------
@pytest.fixture
def cloud6() -> Built:
    """Dual-stack: router r1 on 2001:db8:1::/64 and 2001:db8:2::/64 (plus their IPv4 subnets)."""
    from topology.model import Subnet

    b = Builder()
    for i in range(3):
        b.hv(i)
    nets = {}
    for i in (1, 2):
        nets[i] = b.network(f"n{i}", cidr=f"10.0.{i}.0/24")
        b.graph.put_subnet(Subnet(id=f"sub6-{i}", network_id=nets[i].id, project_id="p", cidr=f"2001:db8:{i}::/64",
                                  ip_version=6, gateway_ip=f"2001:db8:{i}::1"))
    for label, net, hv, v6 in (("v1", 1, "hv0", "2001:db8:1::10"), ("v2", 2, "hv1", "2001:db8:2::10")):
        b._port_n += 1
        port = Port(id=f"{label}-port-000000", network_id=nets[net].id, project_id="p", key=b._port_n,
                    mac_address=f"fa:16:3e:00:0{net}:10", fixed_ips=(FixedIP(f"sub6-{net}", v6),), binding_host=hv,
                    device_owner="compute:nova", attrs={"port_security_enabled": False})
        b.graph.put_port(port)
        b.built.ports[label] = port
    router = Router(id="router-r1", project_id="p", key=1)
    b.graph.put_node("router", router.id, router)
    for i in (1, 2):
        b._port_n += 1
        port = Port(id=f"rif-r1-n{i}-0000", network_id=nets[i].id, project_id="p", key=b._port_n,
                    mac_address=f"fa:16:3e:ff:01:0{i}", fixed_ips=(FixedIP(f"sub6-{i}", f"2001:db8:{i}::1"),),
                    device_owner=ROUTER_INTERFACE, device_id=router.id)
        b.graph.put_port(port)
        b.built.ports[f"r1-n{i}"] = port
    return b.done()


def _ns(built: Built, label: str, target: str, src: str | None = None) -> dict:
    port = built.ports[label]
    return {"in_port": built.ofport(label), "eth_src": port.mac_address, "eth_dst": "33:33:ff:00:00:01",
            "eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135, "ipv6_nd_target": target,
            "ipv6_src": src if src is not None else port.fixed_ips[0].ip_address, "ipv6_dst": "ff02::1:ff00:1",
            "ipv6_nd_sll": port.mac_address, "nd_options_type": 1, "nw_ttl": 255}


def test_gateway_neighbour_solicitation_is_answered_from_the_flows(cloud6: Built) -> None:
    gw = cloud6.ports["r1-n1"]
    res = simulate(compile_hypervisor(cloud6.graph, "hv0"), _ns(cloud6, "v1", "2001:db8:1::1"))
    ((port, na),) = res.outputs
    assert port == cloud6.ofport("v1")
    assert na["icmpv6_type"] == 136 and na["ipv6_nd_target"] == "2001:db8:1::1"
    assert na["ipv6_nd_tll"] == gw.mac_address and na["nd_options_type"] == 2
    assert na["nd_reserved"] == 0xE0000000  # router, solicited, override
    assert (na["ipv6_src"], na["ipv6_dst"]) == ("2001:db8:1::1", "2001:db8:1::10")
    assert (na["eth_src"], na["eth_dst"]) == (gw.mac_address, cloud6.ports["v1"].mac_address)


def test_duplicate_address_detection_is_never_answered(cloud6: Built) -> None:
    res = simulate(compile_hypervisor(cloud6.graph, "hv0"), _ns(cloud6, "v1", "2001:db8:1::1", src="::"))
    assert all(out.get("icmpv6_type") != 136 for _, out in res.outputs)


def test_ipv6_routed_in_one_hop_with_hop_limit_lowered(cloud6: Built) -> None:
    res = send(fabric_of(cloud6.graph), cloud6, "v1", eth_type=0x86DD, eth_dst=cloud6.ports["r1-n1"].mac_address,
               ipv6_src="2001:db8:1::10", ipv6_dst="2001:db8:2::10", nw_ttl=64)
    assert delivered_labels(cloud6, res) == ["v2"]
    (delivery,) = res.deliveries
    assert delivery.packet["nw_ttl"] == 63
    assert delivery.packet["eth_src"] == cloud6.ports["r1-n2"].mac_address
    assert [hv for hv, _ in res.walks] == ["hv0", "hv1"]
    assert res.entries[1]["eth_src"] == dvr_mac(cloud6.graph.hypervisor("hv0"))


def test_router_answers_ping6(cloud6: Built) -> None:
    v1 = cloud6.ports["v1"]
    res = simulate(compile_hypervisor(cloud6.graph, "hv0"),
                   {"in_port": cloud6.ofport("v1"), "eth_src": v1.mac_address,
                    "eth_dst": cloud6.ports["r1-n1"].mac_address, "eth_type": 0x86DD, "ip_proto": 58,
                    "icmpv6_type": 128, "ipv6_src": "2001:db8:1::10", "ipv6_dst": "2001:db8:2::1"})
    ((port, reply),) = res.outputs
    assert reply["icmpv6_type"] == 129
    assert (reply["ipv6_src"], reply["ipv6_dst"]) == ("2001:db8:2::1", "2001:db8:1::10")
