"""The simulator's own semantics, on hand-written flows (the compiler is tested in test_compiler)."""

from __future__ import annotations

import pytest

from flows.flow import IN_PORT, Flow, Output, PopVlan, PushVlan, RegMove, Resubmit, SetField
from flows.simulate import (
    Fabric,
    Pipeline,
    SimulationError,
    Switch,
    display_packet,
    lint,
    normalize_packet,
    simulate,
)


def F(table: int, prio: int, match: dict, actions=(), goto: int | None = None, desc: str = "") -> Flow:
    """A flow built without make_flow's pipeline checks (tables here are arbitrary)."""
    return Flow(table, prio, tuple(sorted(match.items())), tuple(actions), goto, 0, desc or f"t{table}p{prio}")


MAC_A, MAC_B = "fa:16:3e:00:00:0a", "fa:16:3e:00:00:0b"


def test_highest_priority_wins_and_miss_drops() -> None:
    flows = [F(0, 10, {}, [Output(9)]), F(0, 100, {"eth_dst": MAC_A}, [Output(2)])]
    assert simulate(flows, {"in_port": 1, "eth_dst": MAC_A}).ports == [2]
    assert simulate(flows, {"in_port": 1, "eth_dst": MAC_B}).ports == [9]
    res = simulate([F(0, 100, {"eth_dst": MAC_A}, [Output(2)])], {"in_port": 1, "eth_dst": MAC_B})
    assert res.outputs == [] and res.trace[-1].priority is None


def test_tie_at_same_priority_is_reported() -> None:
    flows = [F(0, 100, {"eth_dst": MAC_A}, [Output(2)]), F(0, 100, {"in_port": 1}, [Output(3)])]
    with pytest.raises(SimulationError, match="tie"):
        simulate(flows, {"in_port": 1, "eth_dst": MAC_A})
    res = simulate(flows, {"in_port": 1, "eth_dst": MAC_A}, strict=False)
    assert len(res.errors) == 1 and len(res.outputs) == 1
    # Same key twice: the later replaces the earlier (a flow-mod), no tie.
    assert simulate([F(0, 1, {}, [Output(2)]), F(0, 1, {}, [Output(3)])], {"in_port": 1}).ports == [3]


def test_masked_match() -> None:
    flows = [F(0, 100, {"reg4": (1, 1)}, [Output(2)]), F(0, 50, {"reg4": (0, 1)}, [Output(3)])]
    assert simulate(flows, {"in_port": 1, "reg4": 3}).ports == [2]
    assert simulate(flows, {"in_port": 1, "reg4": 2}).ports == [3]
    assert simulate(flows, {"in_port": 1}).ports == [3]  # registers default to 0


@pytest.mark.parametrize("spelling", ["FA:16:3E:00:00:0A", "fa-16-3e-00-00-0a", "fa:16:3e:0:0:a"])
def test_mac_spellings_match(spelling: str) -> None:
    assert simulate([F(0, 1, {"eth_dst": MAC_A}, [Output(2)])], {"in_port": 1, "eth_dst": spelling}).ports == [2]
    assert simulate([F(0, 1, {"eth_dst": spelling}, [Output(2)])], {"in_port": 1, "eth_dst": MAC_A}).ports == [2]


def test_ipv6_spellings_match() -> None:
    flow = F(0, 1, {"eth_type": 0x86DD, "ipv6_dst": "2001:db8:0:0:0:0:0:1"}, [Output(2)])
    assert simulate([flow], {"in_port": 1, "eth_type": 0x86DD, "ipv6_dst": "2001:DB8::1"}).ports == [2]
    assert simulate([flow], {"in_port": 1, "eth_type": 0x86DD, "ipv6_dst": "2001:db8::2"}).ports == []


def test_arp_match_needs_arp_packet() -> None:
    flow = F(0, 1, {"arp_tpa": "10.0.0.1"}, [Output(2)])
    assert simulate([flow], {"in_port": 1, "eth_type": 0x806, "arp_tpa": "10.0.0.1"}).ports == [2]
    assert simulate([flow], {"in_port": 1, "eth_type": 0x800, "arp_tpa": "10.0.0.1"}).ports == []


def test_output_to_in_port_is_skipped_unless_IN_PORT() -> None:
    res = simulate([F(0, 1, {}, [Output(1), Output(2), Output(IN_PORT)])], {"in_port": 1})
    assert res.ports == [2, 1]
    assert any("skipped" in e for e in res.trace[0].events)


def test_outputs_are_copies_of_the_packet_at_that_point() -> None:
    flows = [F(0, 1, {}, [Output(2), SetField("eth_dst", MAC_B), Output(3)])]
    res = simulate(flows, {"in_port": 1, "eth_dst": MAC_A, "reg5": 7})
    assert [o["eth_dst"] for _, o in res.outputs] == [MAC_A, MAC_B]
    assert "reg5" not in res.outputs[0][1] and "in_port" not in res.outputs[0][1]


def test_resubmit_returns_and_registers_persist() -> None:
    deliver = 60  # ls_out_deliver
    flows = [
        F(0, 1, {}, [SetField("reg5", 1), Resubmit("ls_out_deliver"), SetField("reg5", 2),
                     Resubmit("ls_out_deliver"), Output(99)]),
        F(deliver, 10, {"reg5": 1}, [Output(11), SetField("reg3", 5)]),
        F(deliver, 10, {"reg5": 2, "reg3": 5}, [Output(12)]),
    ]
    assert simulate(flows, {"in_port": 1}).ports == [11, 12, 99]


def test_goto_continues_with_rewritten_packet() -> None:
    flows = [F(0, 1, {}, [SetField("reg6", 4)], goto=20), F(20, 1, {"reg6": 4}, [Output(2)])]
    res = simulate(flows, {"in_port": 1})
    assert res.ports == [2] and [s.table_id for s in res.trace] == [0, 20]
    with pytest.raises(SimulationError, match="forward"):
        simulate([F(20, 1, {}, goto=0), F(0, 1, {}, goto=20)], {"in_port": 1})


def test_reg_move_swaps_like_an_arp_responder() -> None:
    flows = [F(0, 1, {"eth_type": 0x806}, [RegMove("eth_src", "eth_dst", 48), SetField("eth_src", MAC_B),
                                           RegMove("arp_spa", "arp_tpa", 32), Output(IN_PORT)])]
    res = simulate(flows, {"in_port": 1, "eth_src": MAC_A, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x806,
                           "arp_spa": "10.0.0.5", "arp_tpa": "10.0.0.6"})
    (port, out), = res.outputs
    assert port == 1 and out["eth_dst"] == MAC_A and out["eth_src"] == MAC_B and out["arp_tpa"] == "10.0.0.5"


def test_vlan_push_pop_and_match() -> None:
    push = [F(0, 1, {"vlan_vid": 0}, [PushVlan(), SetField("vlan_vid", 0x1000 | 100), Output(2)])]
    (_, out), = simulate(push, {"in_port": 1}).outputs
    assert out["vlan_vid"] == 100
    assert simulate(push, {"in_port": 1, "vlan_vid": 100}).ports == []  # tagged: no match on OFPVID_NONE
    pop = [F(0, 1, {"vlan_vid": 0x1000 | 100}, [PopVlan(), Output(2)])]
    (_, out), = simulate(pop, {"in_port": 1, "vlan_vid": 0x1064}).outputs
    assert "vlan_vid" not in out
    assert simulate(pop, {"in_port": 1, "vlan_vid": 101}).ports == []
    with pytest.raises(SimulationError, match="untagged"):
        simulate([F(0, 1, {}, [PopVlan()])], {"in_port": 1})
    # Push onto a tagged frame: QinQ, the outer tag first; pop brings the inner one back.
    qinq = [F(0, 1, {}, [PushVlan(), SetField("vlan_vid", 0x1000 | 100), Output(2), PopVlan(), Output(3)])]
    (_, out2), (_, out3) = simulate(qinq, {"in_port": 1, "vlan_vid": 7}).outputs
    assert (out2["vlan_vid"], out2["vlan_inner_vid"]) == (100, 7)
    assert out3["vlan_vid"] == 7 and "vlan_inner_vid" not in out3
    with pytest.raises(SimulationError, match="untagged"):
        simulate([F(0, 1, {}, [SetField("vlan_vid", 0x1005)])], {"in_port": 1})


def test_recursion_is_bounded() -> None:
    loop = [F(0, 1, {}, [Resubmit("phy_classify")])]
    with pytest.raises(SimulationError, match="recursion"):
        simulate(loop, {"in_port": 1})


def test_set_field_on_wrong_ethertype_is_an_error() -> None:
    with pytest.raises(SimulationError, match="arp_op"):
        simulate([F(0, 1, {}, [SetField("arp_op", 2)])], {"in_port": 1, "eth_type": 0x800})


def test_lint() -> None:
    assert lint([F(0, 1, {"eth_type": 0x806, "arp_tpa": "10.0.0.1"}, [SetField("arp_op", 2)])]) == []
    problems = lint([
        F(0, 1, {"arp_tpa": "10.0.0.1"}),  # no eth_type: OVS rejects
        F(0, 2, {"bogus": 1}),
        F(20, 1, {}, goto=0),
        F(0, 3, {}, [Resubmit("nowhere")]),
        F(0, 4, {}, [Output(1)]), F(0, 4, {}, [Output(2)]),
    ])
    assert len(problems) == 5, problems


def test_packet_normalisation_round_trip() -> None:
    pkt = normalize_packet({"in_port": "3", "eth_type": "0x806", "eth_dst": "FA:16:3E:0:0:1",
                            "arp_tpa": "10.0.0.3", "ipv6_src": "2001:DB8:0::1"})
    assert display_packet(pkt, keep_metadata=True) == {
        "arp_tpa": "10.0.0.3", "eth_dst": "fa:16:3e:00:00:01", "eth_type": 0x806, "in_port": 3,
        "ipv6_src": "2001:db8::1"}
    with pytest.raises(SimulationError):
        normalize_packet({"nonsense": 1})
    with pytest.raises(SimulationError):
        normalize_packet({"reg0": 1 << 32})


def test_pipeline_reuse_does_not_leak_state() -> None:
    pipe = Pipeline([F(0, 1, {"reg0": 0}, [SetField("reg0", 1), Output(2)])])
    assert pipe.run({"in_port": 1}).ports == [2]
    assert pipe.run({"in_port": 1}).ports == [2]


def test_fabric_follows_tunnels() -> None:
    a = Switch("a", [F(0, 1, {"in_port": 10}, [SetField("tunnel_id", 7), SetField("tun_ipv4_dst", "192.0.2.2"),
                                               Output(1)])], {"tf-vxlan": 1, "tapA": 10}, "192.0.2.1")
    b = Switch("b", [F(0, 1, {"in_port": 1, "tunnel_id": 7}, [Output(20)])], {"tf-vxlan": 1, "tapB": 20},
               "192.0.2.2")
    res = Fabric([a, b]).inject("a", {"in_port": 10})
    assert [(d.hv, d.port) for d in res.deliveries] == [("b", "tapB")]
    assert res.entries[1]["tun_ipv4_src"] == "192.0.2.1" and res.entries[1]["tunnel_id"] == 7
    assert "tunnel_id" not in res.deliveries[0].packet  # a VM gets the bare frame


# -- tenantflow trace ------------------------------------------------------------------------------
def test_trace_arp_walk_and_follow(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from topo_builders import two_tenants_same_cidr

    from apps import trace

    built = two_tenants_same_cidr(n_hvs=2)
    for hv in ("hv0", "hv1"):
        built.graph.set_ofports(hv, {})  # as loaded from the store: no live port map
    fake = types.ModuleType("topology.state")
    fake.Topology = lambda db_path: types.SimpleNamespace(graph=built.graph, close=lambda: None)
    monkeypatch.setitem(sys.modules, "topology.state", fake)
    a0 = built.ports["a0"]
    code = trace.main(["--db", "x.db", "--hv", "hv0", "--in-port", a0.id, "--ofports", f"{a0.ofport_name}=42",
                       "eth_type=0x806", "arp_tpa=10.0.0.11"])
    text = capsys.readouterr().out
    assert code == 0
    assert "ls_in_arp_rsp, priority 100" in text and "output 42" in text and "arp_op=2*" in text
    code = trace.main(["--hv", "hv0", "--in-port", "42", "--follow", "eth_dst=" + built.ports["a1"].mac_address])
    text = capsys.readouterr().out
    assert code == 0 and "== hv1: in_port=1 (tf-vxlan)" in text
    assert text.strip().endswith(f"delivered: hv1:{built.ports['a1'].ofport_name}")
    assert trace.main(["--hv", "nope", "--in-port", "1"]) == 2
    assert trace.main(["--hv", "hv0", "--in-port", "no-such-port"]) == 2
