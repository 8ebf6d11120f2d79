"""The simulator's fast-failover groups, source NAT and gateway tunnels (hand-written flows, as OVS runs them)."""

from __future__ import annotations

import pytest

from apps import trace
from flows.flow import CT, CT_EST, CT_NEW, CT_RPL, CT_TRK, Bucket, Flow, Group, Learn, Output, Resubmit, SetField
from flows.simulate import Fabric, Pipeline, Switch, bucket_actions, lint, normalize_packet, simulate
from topology.gateways import gateway_tunnel_name

MAC_A, MAC_B = "fa:16:3e:00:00:0a", "fa:16:3e:00:00:0b"
DELIVER = 60  # ls_out_deliver: a stage Resubmit can name


def F(table: int, prio: int, match: dict, actions=(), goto: int | None = None, desc: str = "") -> Flow:
    """A flow built without make_flow's pipeline checks (tables here are arbitrary)."""
    return Flow(table, prio, tuple(sorted(match.items())), tuple(actions), goto, 0, desc or f"t{table}p{prio}")


FAILOVER = Group((Bucket((Output(1),), 1), Bucket((SetField("eth_dst", MAC_B), Output(2)), 2),
                  Bucket((Output(3),), None)))


# -- fast failover ---------------------------------------------------------------------------------------
def test_the_first_live_bucket_runs() -> None:
    pipe = Pipeline([F(0, 1, {}, [FAILOVER])])
    assert pipe.run({"in_port": 9}).ports == [1], "every port is live unless declared dead"
    res = pipe.run({"in_port": 9, "eth_dst": MAC_A}, dead_ports={1})
    assert res.outputs == [(2, {"eth_dst": MAC_B})]
    assert res.trace[0].events[:2] == [f"group:{FAILOVER.group_id}: bucket 0 not live (port 1 is down)",
                                       f"group:{FAILOVER.group_id}: bucket 1 (port 2 live): "
                                       f"set_field:{MAC_B}->dl_dst,output:2"]
    assert pipe.run({"in_port": 9}, dead_ports={1, 2}).ports == [3], "no watch port: always live"
    pipe.dead_ports = {1}  # declared on the pipeline: every run sees it
    assert pipe.run({"in_port": 9}).ports == [2]
    no_fallback = Group(FAILOVER.buckets[:2])
    res = Pipeline([F(0, 1, {}, [no_fallback])]).run({"in_port": 9}, dead_ports={1, 2})
    assert res.ports == [] and res.trace[0].events[-1] == f"group:{no_fallback.group_id}: no live bucket: drop"


def test_a_bucket_runs_as_an_action_set_on_a_copy_of_the_packet() -> None:
    """What OVS 3.1 does (seen with ofproto/trace): one output of the bucket, sets first; the packet rolled back."""
    bucket = Bucket((Output(1), Output(2), SetField("eth_dst", MAC_B), Resubmit("ls_out_deliver")), None)
    flows = [F(0, 1, {}, [SetField("reg5", 4), Group((bucket,)), Output(5)]), F(DELIVER, 1, {}, [Output(7)])]
    res = simulate(flows, {"in_port": 9, "eth_dst": MAC_A})
    assert res.outputs == [(2, {"eth_dst": MAC_B}), (5, {"eth_dst": MAC_A})]
    assert res.packet["reg5"] == 4, "what the flow set before the group stays"
    assert bucket_actions(bucket.actions) == (SetField("eth_dst", MAC_B), Output(2))
    assert bucket_actions((SetField("reg6", 1), Resubmit("x"), CT(zone=1, table="y"))) == (
        SetField("reg6", 1), Resubmit("x"))
    assert bucket_actions((SetField("reg6", 1), Learn("t", 1, 1, 0, (), ()))) == (), "no output: nothing runs"
    (problem,) = lint(flows)
    assert "bucket 0: OVS runs [set_field:fa:16:3e:00:00:0b->dl_dst,output:2]" in problem
    assert lint([F(0, 1, {}, [FAILOVER])]) == []


def test_a_resubmit_in_a_bucket_runs_the_table_with_the_bucket_s_changes() -> None:
    group = Group((Bucket((SetField("reg5", 8), Resubmit("ls_out_deliver")), 4),))
    flows = [F(0, 1, {}, [group, Output(5)]), F(DELIVER, 2, {"reg5": 8}, [Output(8)]), F(DELIVER, 1, {}, [Output(9)])]
    res = simulate(flows, {"in_port": 1})
    assert res.ports == [8, 5]
    lines = trace._render_steps(res.trace)
    at = next(i for i, line in enumerate(lines) if "resubmit ls_out_deliver" in line)
    assert "60. ls_out_deliver, priority 2" in lines[at + 1], "the resubmit's lookup is nested under it"


# -- source NAT ----------------------------------------------------------------------------------------------
VM, UPLINK = 10, 1
VM_IP, PEER_IP, SNAT_IP = "10.0.0.5", "198.51.100.9", "203.0.113.7"


def snat_flows(commit_table: bool = True) -> list[Flow]:
    """A VM's traffic source-NATed to SNAT_IP on its way out, the replies un-NATed on their way in (zone 5)."""
    out_ct = CT(commit=True, zone=5, nat=f"src={SNAT_IP}", table="ls_out_deliver" if commit_table else None)
    return [
        F(0, 1, {"in_port": VM, "eth_type": 0x800}, [out_ct] + ([] if commit_table else [Output(UPLINK)])),
        F(0, 1, {"in_port": UPLINK, "eth_type": 0x800}, [CT(zone=5, nat="", table="ls_out_deliver")]),
        F(DELIVER, 1, {"in_port": VM}, [Output(UPLINK)]),
        F(DELIVER, 1, {"in_port": UPLINK, "ct_state": (CT_TRK | CT_EST | CT_RPL, CT_TRK | CT_EST | CT_RPL)},
          [Output(VM)]),
    ]


def tcp(src: str, dst: str, sport: int, dport: int, in_port: int) -> dict:
    return {"in_port": in_port, "eth_type": 0x800, "ip_proto": 6, "ipv4_src": src, "ipv4_dst": dst,
            "tcp_src": sport, "tcp_dst": dport}


@pytest.mark.parametrize("commit_table", [True, False], ids=["ct-table", "ct-then-output"])
def test_source_nat_and_the_reply_un_nat(commit_table: bool) -> None:
    pipe = Pipeline(snat_flows(commit_table))
    (port, out), = pipe.run(tcp(VM_IP, PEER_IP, 40000, 80, VM)).outputs
    assert port == UPLINK and (out["ipv4_src"], out["tcp_src"], out["ipv4_dst"]) == (SNAT_IP, 40000, PEER_IP)
    reply = pipe.run(tcp(PEER_IP, SNAT_IP, 80, 40000, UPLINK))
    (port, out), = reply.outputs
    assert port == VM and (out["ipv4_dst"], out["tcp_dst"], out["ipv4_src"]) == (VM_IP, 40000, PEER_IP)
    assert reply.trace[0].events[0] == (f"ct zone 5: ct(zone=5,table=60,nat) -> ct_state=+est+rpl+trk, "
                                        f"nat: ipv4_dst={VM_IP}")
    # the next packet of the connection is NATed as the first one was; an unrelated packet to the address is not
    (_, out), = pipe.run(tcp(VM_IP, PEER_IP, 40000, 80, VM)).outputs
    assert out["ipv4_src"] == SNAT_IP
    assert pipe.run(tcp(PEER_IP, SNAT_IP, 80, 40001, UPLINK)).ports == [], "no connection: not a reply"


def test_a_ct_without_nat_tracks_a_reply_but_rewrites_nothing() -> None:
    pipe = Pipeline(snat_flows())
    pipe.run(tcp(VM_IP, PEER_IP, 40000, 80, VM))
    conntrack = pipe.conntrack
    reply = tcp(PEER_IP, SNAT_IP, 80, 40000, UPLINK)
    packet = normalize_packet(reply)
    assert conntrack.track(packet, 5) == CT_TRK | CT_EST | CT_RPL
    assert conntrack.nat_rewrite(packet, 5) == {"ipv4_dst": normalize_packet({"ipv4_dst": VM_IP})["ipv4_dst"]}
    assert conntrack.track(packet, 6) == CT_TRK | CT_NEW, "zones never share connections"
    conntrack.flush(5)
    assert conntrack.track(packet, 5) == CT_TRK | CT_NEW and conntrack.nat_replies == {}


def test_icmp_echo_through_source_nat() -> None:
    pipe = Pipeline(snat_flows())
    echo = {"in_port": VM, "eth_type": 0x800, "ip_proto": 1, "icmpv4_type": 8, "ipv4_src": VM_IP, "ipv4_dst": PEER_IP}
    (_, out), = pipe.run(echo).outputs
    assert out["ipv4_src"] == SNAT_IP
    reply = {**echo, "in_port": UPLINK, "icmpv4_type": 0, "ipv4_src": PEER_IP, "ipv4_dst": SNAT_IP}
    assert pipe.run(reply).outputs == [(VM, {"eth_type": 0x800, "ip_proto": 1, "icmpv4_type": 0,
                                             "ipv4_src": PEER_IP, "ipv4_dst": VM_IP})]


# -- gateway tunnels -----------------------------------------------------------------------------------------
A_IP, B_IP, C_IP = "192.0.2.1", "192.0.2.2", "192.0.2.3"


def gateway_fabric(**switch_args) -> tuple[Fabric, Group]:
    """a sends to gateway b, else gateway c, over the tg- tunnels its flow's group watches."""
    to_b, to_c = gateway_tunnel_name(B_IP), gateway_tunnel_name(C_IP)
    a_ports = {"tapA": 10, to_b: 20, to_c: 21}
    group = Group((Bucket((SetField("tunnel_id", 77), Output(20)), 20), Bucket((SetField("tunnel_id", 77),
                                                                                  Output(21)), 21)))
    a = Switch("a", [F(0, 1, {"in_port": 10}, [group])], a_ports, A_IP, **switch_args)
    back = gateway_tunnel_name(A_IP)
    b = Switch("b", [F(0, 1, {"in_port": 30, "tunnel_id": 77}, [Output(31)])], {back: 30, "tapB": 31}, B_IP)
    c = Switch("c", [F(0, 1, {"in_port": 40, "tunnel_id": 77}, [Output(41)])], {back: 40, "tapC": 41}, C_IP)
    return Fabric([a, b, c]), group


def test_a_gateway_tunnel_reaches_its_remote_end_and_a_dead_one_fails_over() -> None:
    fabric, group = gateway_fabric()
    res = fabric.inject("a", {"in_port": 10})
    assert [(d.hv, d.port) for d in res.deliveries] == [("b", "tapB")]
    assert res.entries[1] == {"in_port": 30, "tunnel_id": 77, "tun_ipv4_src": A_IP}
    dead_b = {"a": {gateway_tunnel_name(B_IP)}}
    res = fabric.inject("a", {"in_port": 10}, dead_ports=dead_b)
    assert [(d.hv, d.port) for d in res.deliveries] == [("c", "tapC")]
    assert f"group:{group.group_id}: bucket 0 not live (port 20 is down)" in res.walks[0][1].trace[0].events
    both = {"a": {gateway_tunnel_name(B_IP), gateway_tunnel_name(C_IP)}}
    res = fabric.inject("a", {"in_port": 10}, dead_ports=both)
    assert res.deliveries == [] and res.lost == [], "no live bucket: dropped on a"
    fabric, _ = gateway_fabric(dead_ports=frozenset({gateway_tunnel_name(B_IP)}))  # declared on the switch
    assert [d.hv for d in fabric.inject("a", {"in_port": 10}).deliveries] == ["c"]


def test_a_dead_gateway_tunnel_carries_nothing() -> None:
    to_b = gateway_tunnel_name(B_IP)
    a = Switch("a", [F(0, 1, {"in_port": 10}, [Output(20)])], {"tapA": 10, to_b: 20}, A_IP)
    b = Switch("b", [F(0, 1, {}, [Output(31)])], {gateway_tunnel_name(A_IP): 30, "tapB": 31}, B_IP)
    fabric = Fabric([a, b])
    assert [d.hv for d in fabric.inject("a", {"in_port": 10}).deliveries] == ["b"]
    for dead in ({"a": {to_b}}, {"b": {gateway_tunnel_name(A_IP)}}):  # down at either end
        res = fabric.inject("a", {"in_port": 10}, dead_ports=dead)
        assert res.deliveries == [] and res.lost == [f"a: {to_b} to b: the tunnel is down"]
    alone = Fabric([a, Switch("b", [], {"tapB": 31}, B_IP)])  # b has no tunnel back to a
    assert "no hypervisor at its remote end" in alone.inject("a", {"in_port": 10}).lost[0]


def test_trace_shows_the_bucket_taken() -> None:
    fabric, group = gateway_fabric()
    res = fabric.inject("a", {"in_port": 10}, dead_ports={"a": {gateway_tunnel_name(B_IP)}})
    lines = trace.render("a", res.walks[0][1], {"in_port": 10}, {10: "tapA"})
    text = "\n".join(lines)
    assert f"-> group:{group.group_id}: bucket 0 not live (port 20 is down)" in text
    assert f"-> group:{group.group_id}: bucket 1 (port 21 live): set_field:0x4d->tun_id,output:21" in text
    assert trace.dead_ports("tg-c0000202,hv2:tg-c0000201", "hv1") == {"hv1": {"tg-c0000202"},
                                                                     "hv2": {"tg-c0000201"}}


def test_trace_nests_the_lookups_of_a_ct_fork_under_it() -> None:
    flows = [F(0, 1, {"eth_type": 0x800}, [CT(zone=1, table="ls_out_deliver")]), F(DELIVER, 1, {}, [Output(3)])]
    res = simulate(flows, {"in_port": 1, "eth_type": 0x800, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2"})
    lines = trace._render_steps(res.trace)
    at = next(i for i, line in enumerate(lines) if "-> ct zone 1" in line)
    assert "60. ls_out_deliver, priority 1" in lines[at + 1] and "-> output:3" in lines[-1]


def test_ofctl_text_of_groups_and_nat() -> None:
    """What flows.ofctl writes (tests/test_groups.py checks OVS reads it as it reads our encoding)."""
    from flows.ofctl import LIVE_GROUP_TEXT, action_text, group_text

    assert action_text(CT(commit=True, zone=5, table="ls_out_deliver", nat="src=1.2.3.4")) == \
        "ct(commit,zone=5,table=60,nat(src=1.2.3.4))"
    assert action_text(CT(zone="reg8", nat="")) == "ct(zone=reg8[0..15],nat)"
    assert action_text(CT(zone=3)) == "ct(zone=3)", "unchanged without NAT"
    assert action_text(FAILOVER) == f"group:{FAILOVER.group_id}"
    assert group_text(FAILOVER) == (f"group_id={FAILOVER.group_id},type=ff,bucket=watch_port:1,actions=output:1,"
                                    f"bucket=watch_port:2,actions=set_field:{MAC_B}->dl_dst,output:2,"
                                    "bucket=watch_group:0,actions=output:3")
    assert LIVE_GROUP_TEXT == "group_id=0,type=indirect,bucket=actions=drop"
