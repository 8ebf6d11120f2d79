"""The L2 compiler's behaviour, checked on the simulated pipeline rather than on flow text.

Each test builds a topology (tests/topo_builders.py), compiles the hypervisors and
walks frames through them with flows.simulate: which ports a frame leaves on,
and with which rewrites.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from topo_builders import (
    BROADCAST,
    Builder,
    Built,
    delivered_labels,
    fabric_of,
    mac,
    new_graph,
    provider_pair,
    random_cloud,
    send,
    two_tenants_same_cidr,
)

from flows.compiler import compile_hypervisor
from flows.flow import (
    LEARNS,
    USES_GROUPS,
    USES_METER,
    Bucket,
    Flow,
    Group,
    Learn,
    Meter,
    Output,
    action_traits,
    make_flow,
)
from flows.pipeline import PipelineError, stage
from flows.simulate import lint, simulate
from topology.graph import TopologyGraph
from topology.synthetic import synthetic_cloud

ARP = 0x0806


def arp_request(built: Built, sender: str, target_ip: str) -> dict:
    """An ARP who-has ``target_ip`` from labelled port ``sender``."""
    p = built.ports[sender]
    return {"in_port": built.ofport(sender), "eth_src": p.mac_address, "eth_dst": BROADCAST, "eth_type": ARP,
            "arp_op": 1, "arp_sha": p.mac_address, "arp_spa": p.fixed_ips[0].ip_address,
            "arp_tha": "00:00:00:00:00:00", "arp_tpa": target_ip}


def cookies(graph: TopologyGraph, hv: str) -> set[int]:
    return {f.cookie for f in compile_hypervisor(graph, hv)}


@pytest.fixture
def tenants() -> Built:
    return two_tenants_same_cidr(n_hvs=3)


# -- well-formed output ------------------------------------------------------------------
def test_compiled_flows_are_lint_clean(tenants: Built) -> None:
    for hv in ("hv0", "hv1", "hv2"):
        assert lint(compile_hypervisor(tenants.graph, hv)) == []
    for t in ("vlan", "flat"):
        assert lint(compile_hypervisor(provider_pair(t).graph, "hv0")) == []


# -- unicast -------------------------------------------------------------------------------------
def test_known_unicast_local_delivery(tenants: Built) -> None:
    fab = fabric_of(tenants.graph)
    res = send(fab, tenants, "a0", eth_dst=tenants.ports["a0x"].mac_address)
    assert delivered_labels(tenants, res) == ["a0x"]
    assert len(res.walks) == 1  # nothing crossed the fabric


def test_known_unicast_to_remote_port_goes_through_tunnel(tenants: Built) -> None:
    g = tenants.graph
    dst = tenants.ports["a2"]
    flows = compile_hypervisor(g, "hv0")
    res = simulate(flows, {"in_port": tenants.ofport("a0"), "eth_src": tenants.ports["a0"].mac_address,
                           "eth_dst": dst.mac_address})
    (port, out), = res.outputs
    assert port == g.ofports("hv0")["tf-vxlan"]
    assert out["tunnel_id"] == tenants.networks["a"].segmentation_id
    assert out["tun_ipv4_dst"] == g.hypervisor("hv2").tunnel_ip
    # The receiving hypervisor, on its own flows, delivers it to exactly the destination.
    rx = simulate(compile_hypervisor(g, "hv2"), {**out, "in_port": g.ofports("hv2")["tf-vxlan"]})
    assert rx.ports == [tenants.ofport("a2")]
    # And end to end through the fabric.
    assert delivered_labels(tenants, send(fabric_of(g), tenants, "a0", eth_dst=dst.mac_address)) == ["a2"]


def test_tunnel_frame_with_unknown_vni_is_dropped(tenants: Built) -> None:
    g = tenants.graph
    res = simulate(compile_hypervisor(g, "hv2"), {"in_port": g.ofports("hv2")["tf-vxlan"], "tunnel_id": 4242,
                                                  "eth_dst": tenants.ports["a2"].mac_address})
    assert res.outputs == []


def test_unknown_in_port_is_dropped(tenants: Built) -> None:
    res = simulate(compile_hypervisor(tenants.graph, "hv0"), {"in_port": 4000, "eth_dst": BROADCAST})
    assert res.outputs == [] and res.trace[0].stage == "phy_classify"


# -- flooding ------------------------------------------------------------------------------------
def test_broadcast_reaches_network_once_per_remote_hv_never_sender() -> None:
    b = Builder()
    for i in range(4):
        b.hv(i)
    net, other = b.network("a"), b.network("b")
    for label, hv in [("s", "hv0"), ("l1", "hv0"), ("l2", "hv0"), ("r1", "hv1"), ("r2a", "hv2"), ("r2b", "hv2")]:
        b.port(label, net, hv, ip=None)
    for label, hv in [("o0", "hv0"), ("o1", "hv1"), ("o3", "hv3")]:
        b.port(label, other, hv)
    built = b.done()
    g = built.graph
    res = simulate(compile_hypervisor(g, "hv0"), {"in_port": built.ofport("s"), "eth_dst": BROADCAST})
    tun = g.ofports("hv0")["tf-vxlan"]
    local = sorted(p for p, _ in res.outputs if p != tun)
    assert local == sorted([built.ofport("l1"), built.ofport("l2")])
    remote = sorted(o["tun_ipv4_dst"] for p, o in res.outputs if p == tun)
    assert remote == sorted([g.hypervisor("hv1").tunnel_ip, g.hypervisor("hv2").tunnel_ip])  # not hv3
    assert all(o["tunnel_id"] == net.segmentation_id for p, o in res.outputs if p == tun)
    # End to end: every other port of the network exactly once, nothing of network b.
    delivered = delivered_labels(built, send(fabric_of(g), built, "s", eth_dst=BROADCAST))
    assert delivered == ["l1", "l2", "r1", "r2a", "r2b"]


def test_flood_from_tunnel_goes_to_local_ports_only(tenants: Built) -> None:
    g = tenants.graph
    vni = tenants.networks["a"].segmentation_id
    for dst in (BROADCAST, mac(0xABCDEF)):  # broadcast and unknown unicast
        res = simulate(compile_hypervisor(g, "hv0"), {"in_port": g.ofports("hv0")["tf-vxlan"], "tunnel_id": vni,
                                                      "eth_dst": dst})
        assert sorted(res.ports) == sorted([tenants.ofport("a0"), tenants.ofport("a0x")])


def test_unicast_from_tunnel_for_a_mac_elsewhere_is_not_reflooded(tenants: Built) -> None:
    g = tenants.graph
    res = simulate(compile_hypervisor(g, "hv0"), {"in_port": g.ofports("hv0")["tf-vxlan"],
                                                  "tunnel_id": tenants.networks["a"].segmentation_id,
                                                  "eth_dst": tenants.ports["a1"].mac_address})
    assert g.ofports("hv0")["tf-vxlan"] not in res.ports


# -- ARP responder ---------------------------------------------------------------------------------
def test_arp_request_for_known_ip_is_answered_not_flooded(tenants: Built) -> None:
    req = arp_request(tenants, "a0", "10.0.0.12")  # a2's address, on hv2
    res = simulate(compile_hypervisor(tenants.graph, "hv0"), req)
    (port, out), = res.outputs
    a0, a2 = tenants.ports["a0"], tenants.ports["a2"]
    assert port == tenants.ofport("a0")
    assert out["eth_dst"] == a0.mac_address and out["eth_src"] == a2.mac_address
    assert out["arp_op"] == 2
    assert (out["arp_sha"], out["arp_spa"]) == (a2.mac_address, "10.0.0.12")
    assert (out["arp_tha"], out["arp_tpa"]) == (a0.mac_address, "10.0.0.10")


def test_arp_for_own_address_is_not_answered(tenants: Built) -> None:
    res = simulate(compile_hypervisor(tenants.graph, "hv0"), arp_request(tenants, "a0", "10.0.0.10"))
    assert all(o["arp_op"] == 1 for _, o in res.outputs)  # flooded as a request, no reply
    assert tenants.ofport("a0") not in res.ports


def test_arp_for_unknown_ip_floods_in_network_only(tenants: Built) -> None:
    res = send(fabric_of(tenants.graph), tenants, "a0", **{**arp_request(tenants, "a0", "10.0.0.99"),
                                                           "in_port": tenants.ofport("a0")})
    assert delivered_labels(tenants, res) == ["a0x", "a1", "a2"]


# -- tenant isolation ---------------------------------------------------------------------------------
def test_same_cidr_same_mac_tenants_are_isolated(tenants: Built) -> None:
    fab = fabric_of(tenants.graph)
    for src in ("a0", "a1", "b0", "b2"):
        tenant = src[0]
        same_mac_other = tenants.ports[("b" if tenant == "a" else "a") + "1"].mac_address
        for dst in (BROADCAST, same_mac_other, tenants.ports["a0x"].mac_address):
            got = delivered_labels(tenants, send(fab, tenants, src, eth_dst=dst))
            assert all(label.startswith(tenant) for label in got), (src, dst, got)
            assert got or dst == tenants.ports[src].mac_address  # only a frame to itself goes nowhere
        reply = send(fab, tenants, src, **{**arp_request(tenants, src, "10.0.0.11"), "in_port": tenants.ofport(src)})
        if src.endswith("1"):
            continue  # asks for its own address: flooded, checked above
        (d,) = reply.deliveries
        assert tenants.label_of(d.hv, d.port) == src
        assert d.packet["arp_sha"] == tenants.ports[f"{tenant}1"].mac_address


@pytest.mark.parametrize("seed", range(12))
def test_random_topologies_never_leak_between_networks(seed: int) -> None:
    built = random_cloud(seed)
    fab = fabric_of(built.graph)
    net_of = {label: p.network_id for label, p in built.ports.items()}
    rnd = random.Random(seed)
    macs = [p.mac_address for p in built.ports.values()] + [BROADCAST, mac(0xFFFFFE)]
    senders = [label for label, p in built.ports.items() if p.binding_host]
    for src in senders:
        p = built.ports[src]
        frames = [{"eth_dst": rnd.choice(macs)} for _ in range(4)]
        frames.append({**arp_request(built, src, f"10.0.0.{rnd.randrange(2, 40)}"), "eth_type": ARP} if p.fixed_ips
                      else {"eth_dst": BROADCAST})
        for extra in frames:
            extra.pop("in_port", None)
            res = send(fab, built, src, **extra)
            assert not res.lost
            for d in res.deliveries:
                label = built.label_of(d.hv, d.port)
                assert label is not None and net_of[label] == p.network_id, (seed, src, extra, label)
                assert label != src or d.packet.get("arp_op") == 2  # only an ARP reply goes back


# -- provider networks --------------------------------------------------------------------------------
def test_vlan_provider_network_tags_out_and_untags_in() -> None:
    built = provider_pair("vlan", vlan=100)
    g = built.graph
    patch = g.ofports("hv0")["phy-physnet1"]
    res = simulate(compile_hypervisor(g, "hv0"), {"in_port": built.ofport("p0"),
                                                  "eth_dst": built.ports["p1"].mac_address})
    assert [(p, o.get("vlan_vid")) for p, o in res.outputs] == [(patch, 100)]
    flood = simulate(compile_hypervisor(g, "hv0"), {"in_port": built.ofport("p0"), "eth_dst": BROADCAST})
    assert sorted((p, o.get("vlan_vid")) for p, o in flood.outputs) == sorted([(built.ofport("p0x"), None),
                                                                             (patch, 100)])
    rx = simulate(compile_hypervisor(g, "hv1"), {"in_port": g.ofports("hv1")["phy-physnet1"], "vlan_vid": 100,
                                                 "eth_dst": built.ports["p1"].mac_address})
    (port, out), = rx.outputs
    assert port == built.ofport("p1") and "vlan_vid" not in out
    for wrong in ({"vlan_vid": 101}, {}):  # another VLAN, or untagged, is not this network
        res = simulate(compile_hypervisor(g, "hv1"), {"in_port": g.ofports("hv1")["phy-physnet1"], **wrong,
                                                      "eth_dst": built.ports["p1"].mac_address})
        assert res.outputs == []
    assert delivered_labels(built, send(fabric_of(g), built, "p0", eth_dst=BROADCAST)) == ["p0x", "p1"]


def test_flat_provider_network_is_untagged() -> None:
    built = provider_pair("flat")
    g = built.graph
    res = simulate(compile_hypervisor(g, "hv0"), {"in_port": built.ofport("p0"),
                                                  "eth_dst": built.ports["p1"].mac_address})
    assert [(p, "vlan_vid" in o) for p, o in res.outputs] == [(g.ofports("hv0")["phy-physnet1"], False)]
    tagged = simulate(compile_hypervisor(g, "hv1"), {"in_port": g.ofports("hv1")["phy-physnet1"], "vlan_vid": 5,
                                                     "eth_dst": built.ports["p1"].mac_address})
    assert tagged.outputs == []
    assert delivered_labels(built, send(fabric_of(g), built, "p0", eth_dst=built.ports["p1"].mac_address)) == ["p1"]


# -- the pipeline's declared rules -------------------------------------------------------------------
def test_pipeline_violations_raise_at_make_flow() -> None:
    with pytest.raises(PipelineError, match="not allowed"):
        make_flow(stage("ls_out_deliver"), "deliver", {"eth_dst": "fa:16:3e:00:00:01"})
    with pytest.raises(PipelineError, match="goto"):
        make_flow(stage("phy_classify"), "vm_port", {"in_port": 1}, goto=stage("ls_out_deliver"))
    with pytest.raises(PipelineError, match="priority"):
        make_flow(stage("phy_classify"), "nonsense", {})


def test_a_flow_s_traits_say_what_its_actions_need_however_it_was_built() -> None:
    """Flow.traits (what a full sync asks of every flow instead of walking its actions): from make_flow, Flow(...)
    and dataclasses.replace alike, and on every flow of a compiled cloud the same as its actions say."""
    meter, out = Meter("port 7", 10, 10), Output(1)
    group = Group((Bucket((out,), 2),))
    learn = Learn("lr_in_mac_binding", 100, 300, 0x3100000000000007, (("reg6", "reg6"),), ())
    metered = make_flow(stage("ls_out_deliver"), "deliver", {"reg5": 1}, [meter, out])
    assert metered.traits == USES_METER
    assert make_flow(stage("phy_classify"), "vm_port", {"in_port": 1}, [group]).traits == USES_GROUPS
    built = Flow(0, 1, (), (learn, group), None, 1, "by hand")
    assert built.traits == LEARNS | USES_GROUPS
    assert dataclasses.replace(built, actions=(out, meter)).traits == 0, "a meter counts only as the first action"
    graph = synthetic_cloud(n_hvs=3, ports_per_hv=4, n_networks=2, seed=5)
    for hv in graph.hypervisors():
        for flow in compile_hypervisor(graph, hv.name):
            assert flow.traits == action_traits(flow.actions), flow


# -- determinism and locality ----------------------------------------------------------------------
def test_compilation_is_deterministic(tenants: Built) -> None:
    again = two_tenants_same_cidr(n_hvs=3)
    for hv in ("hv0", "hv1", "hv2"):
        assert cookies(tenants.graph, hv) == cookies(again.graph, hv)
        assert [f.cookie for f in compile_hypervisor(tenants.graph, hv)] == \
               [f.cookie for f in compile_hypervisor(tenants.graph, hv)]


def test_cookies_do_not_depend_on_insertion_order(tenants: Built) -> None:
    """The store may load records in any order: a restarted controller must compute the same cookies."""
    g = tenants.graph
    shuffled = new_graph()
    for hv in reversed(g.hypervisors()):
        shuffled.put_hypervisor(hv)
    for kind, put in (("network", shuffled.put_network), ("subnet", shuffled.put_subnet)):
        for rec in reversed(list(g.records(kind))):
            put(rec)
    for p in reversed(list(g.records("port"))):
        shuffled.put_port(p)
    for hv in g.hypervisors():
        shuffled.set_ofports(hv.name, g.ofports(hv.name))
    for hv in ("hv0", "hv1", "hv2"):
        assert cookies(g, hv) == cookies(shuffled, hv), hv


def test_changing_a_mac_changes_only_flows_mentioning_it(tenants: Built) -> None:
    g = tenants.graph
    before = {hv: compile_hypervisor(g, hv) for hv in ("hv0", "hv1", "hv2")}
    old = tenants.ports["a1"]
    g.put_port(dataclasses.replace(old, mac_address="fa:16:3e:99:99:99"))
    for hv, flows in before.items():
        after = compile_hypervisor(g, hv)
        changed = {f.description for f in flows if f.cookie not in {a.cookie for a in after}}
        assert changed and all(old.mac_address in d or old.id in d for d in changed), (hv, changed)
        assert len(after) == len(flows)


def test_flow_count_is_independent_of_unrelated_parts_of_the_cloud(tenants: Built) -> None:
    g = tenants.graph
    counts = {hv: len(compile_hypervisor(g, hv)) for hv in ("hv0", "hv1", "hv2")}
    base = cookies(g, "hv0")
    b = Builder()
    b.built.graph = g  # grow the same graph
    b._net_n, b._port_n = 100, 1000
    for i in range(3, 8):
        b.hv(i)
    for j in range(5):
        net = b.network(f"far{j}")
        for i in range(3, 8):
            b.port(f"far{j}-{i}", net, f"hv{i}", ip=f"10.0.0.{i}")
    b.done()
    assert {hv: len(compile_hypervisor(g, hv)) for hv in ("hv0", "hv1", "hv2")} == counts
    assert cookies(g, "hv0") == base


def test_synthetic_cloud_is_deterministic_and_compiles() -> None:
    g1 = synthetic_cloud(n_hvs=30, ports_per_hv=5, n_networks=12, seed=7)
    g2 = synthetic_cloud(n_hvs=30, ports_per_hv=5, n_networks=12, seed=7)
    assert cookies(g1, "hv3") == cookies(g2, "hv3")
    assert cookies(g1, "hv3") != cookies(synthetic_cloud(n_hvs=30, ports_per_hv=5, n_networks=12, seed=8), "hv3")
    for hv in ("hv0", "hv29"):
        assert lint(compile_hypervisor(g1, hv)) == []


# -- regressions ---------------------------------------------------------------------------------------
def test_guest_vlan_tag_cannot_cross_into_a_vlan_provider_network() -> None:
    b = Builder()
    b.hv(0)
    b.hv(1)
    flat = b.network("flat", "flat", physical_network="physnet1")
    vlan = b.network("vlan", "vlan", 100, "physnet1")
    b.port("f0", flat, "hv0", ip="198.51.100.10")
    b.port("f1", flat, "hv1", ip="198.51.100.11")
    b.port("v1", vlan, "hv1", ip="203.0.113.11")
    built = b.done()
    # A VM on the flat network sends a broadcast it tagged itself with the other network's VLAN id.
    res = send(fabric_of(built.graph), built, "f0", eth_dst=BROADCAST, vlan_vid=100)
    assert "v1" not in delivered_labels(built, res)


def test_compile_survives_a_port_whose_network_was_removed(tenants: Built) -> None:
    g = tenants.graph
    g.remove("network", tenants.networks["b"].id)
    flows = compile_hypervisor(g, "hv0")
    res = simulate(flows, {"in_port": tenants.ofport("a0"), "eth_dst": BROADCAST})
    assert sorted(res.ports) != []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_broadcast_reaches_every_other_port_of_its_network_exactly_once(seed: int) -> None:
    g = synthetic_cloud(n_hvs=12, ports_per_hv=4, n_networks=6, seed=seed, vlan_fraction=0.3)
    fab = fabric_of(g)
    ports = list(g.records("port"))
    for p in ports:
        res = fab.inject(p.binding_host, {"in_port": g.ofports(p.binding_host)[p.ofport_name],
                                          "eth_src": p.mac_address, "eth_dst": BROADCAST, "eth_type": 0x0800})
        got = sorted((d.hv, d.port) for d in res.deliveries)
        want = sorted((q.binding_host, q.ofport_name) for q in ports if q.network_id == p.network_id and q != p)
        assert got == want, (seed, p.id)
