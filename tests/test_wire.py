"""The fast encoder must produce exactly the bytes os-ken itself serialises."""

from __future__ import annotations

import struct

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller import wire
from flows.flow import (
    CT,
    GROUP_ID_MAX,
    IN_PORT,
    LIVE_GROUP_ID,
    Bucket,
    Conjunction,
    DecTtl,
    Group,
    Learn,
    Meter,
    Output,
    PopVlan,
    PushVlan,
    RegMove,
    Resubmit,
    SetField,
    make_flow,
)
from flows.pipeline import PipelineError, stage

DP = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)

CASES = [
    # (stage, priority, match, our actions, os-ken actions, goto)
    ("phy_classify", "vm_port", {"in_port": 7}, [SetField("reg6", 3), SetField("reg7", 9)],
     [parser.OFPActionSetField(reg6=3), parser.OFPActionSetField(reg7=9)], "ls_in_arp_rsp"),
    ("phy_classify", "tunnel", {"in_port": 1, "tunnel_id": 1001}, [SetField("reg4", 1)],
     [parser.OFPActionSetField(reg4=1)], "ls_in_l2_lookup"),
    ("phy_classify", "provider", {"in_port": 2, "vlan_vid": 0x1000 | 101}, [PopVlan()],
     [parser.OFPActionPopVlan()], "ls_in_l2_lookup"),
    ("ls_in_arp_rsp", "answer", {"reg6": 3, "eth_type": 0x806, "arp_op": 1, "arp_tpa": "10.0.0.5"},
     [RegMove("eth_src", "eth_dst", 48), SetField("eth_src", "fa:16:3e:aa:bb:cc"), SetField("arp_op", 2),
      RegMove("arp_sha", "arp_tha", 48), SetField("arp_sha", "fa:16:3e:aa:bb:cc"),
      RegMove("arp_spa", "arp_tpa", 32), SetField("arp_spa", "10.0.0.5"), Output(IN_PORT)],
     [parser.NXActionRegMove(src_field="eth_src", dst_field="eth_dst", n_bits=48),
      parser.OFPActionSetField(eth_src="fa:16:3e:aa:bb:cc"), parser.OFPActionSetField(arp_op=2),
      parser.NXActionRegMove(src_field="arp_sha", dst_field="arp_tha", n_bits=48),
      parser.OFPActionSetField(arp_sha="fa:16:3e:aa:bb:cc"),
      parser.NXActionRegMove(src_field="arp_spa", dst_field="arp_tpa", n_bits=32),
      parser.OFPActionSetField(arp_spa="10.0.0.5"), parser.OFPActionOutput(ofp.OFPP_IN_PORT)], None),
    ("ls_in_l2_lookup", "unicast", {"reg6": 3, "eth_dst": "FA:16:3E:00:00:01", "reg4": (0, 1)},
     [SetField("tunnel_id", 1001), SetField("tun_ipv4_dst", "192.168.100.2"), Output(1)],
     [parser.OFPActionSetField(tunnel_id=1001), parser.OFPActionSetField(tun_ipv4_dst="192.168.100.2"),
      parser.OFPActionOutput(1)], None),
    ("ls_in_l2_lookup", "flood", {"reg6": 3},
     [SetField("reg5", 4), Resubmit("ls_out_deliver"), PushVlan(), SetField("vlan_vid", 0x1065), Output(2)],
     [parser.OFPActionSetField(reg5=4), parser.NXActionResubmitTable(in_port=0xFFF8, table_id=60),
      parser.OFPActionPushVlan(0x8100), parser.OFPActionSetField(vlan_vid=0x1065), parser.OFPActionOutput(2)],
     None),
    ("ls_out_deliver", "drop", {}, [], [], None),
    ("lr_in_ip_routing", "route", {"reg3": 1, "eth_type": 0x800, "ipv4_dst": (0x0A000200, 0xFFFFFF00)},
     [DecTtl(), SetField("reg6", 2), SetField("eth_src", "fa:16:3e:ff:01:02"), RegMove("ipv4_dst", "reg0", 32)],
     [parser.OFPActionDecNwTtl(), parser.OFPActionSetField(reg6=2),
      parser.OFPActionSetField(eth_src="fa:16:3e:ff:01:02"),
      parser.NXActionRegMove(src_field="ipv4_dst", dst_field="reg0", n_bits=32)], "lr_in_arp_resolve"),
    ("lr_in_ip_routing", "route",
     {"reg3": 1, "eth_type": 0x86DD, "ipv6_dst": (0x20010DB8 << 96, ((1 << 64) - 1) << 64)},
     [DecTtl(), SetField("xxreg0", 0x20010DB8 << 96 | 0x10)],
     [parser.OFPActionDecNwTtl(), parser.OFPActionSetField(xxreg0=0x20010DB8 << 96 | 0x10)], "lr_in_arp_resolve"),
    ("lr_in_ip_input", "echo_reply", {"reg3": 1, "reg6": 2, "eth_type": 0x800, "ip_proto": 1, "icmpv4_type": 8,
                                      "ipv4_dst": "10.0.2.1"},
     [SetField("icmpv4_type", 0), Output(IN_PORT)],
     [parser.OFPActionSetField(icmpv4_type=0), parser.OFPActionOutput(ofp.OFPP_IN_PORT)], None),
    ("lr_in_arp_resolve", "resolved", {"reg6": 2, "eth_type": 0x800, "reg0": 0x0A00020A},
     [SetField("eth_dst", "fa:16:3e:00:00:09"), SetField("eth_src", "fe:16:c0:a8:64:01"), Resubmit("ls_in_l2_lookup")],
     [parser.OFPActionSetField(eth_dst="fa:16:3e:00:00:09"), parser.OFPActionSetField(eth_src="fe:16:c0:a8:64:01"),
      parser.NXActionResubmitTable(in_port=0xFFF8, table_id=30)], None),
]


CASES += [
    ("ls_in_pre_acl", "track", {"reg7": 9, "eth_type": 0x800}, [SetField("reg8", 3), CT(zone=3, table="ls_in_acl")],
     [parser.OFPActionSetField(reg8=3),
      parser.NXActionCT(flags=0, zone_src="", zone_ofs_nbits=3, recirc_table=6, alg=0, actions=[])], None),
    ("ls_in_acl", "rule", {"reg7": 9, "eth_type": 0x800, "ip_proto": 6, "tcp_dst": (1024, 0xFC00),
                           "ipv4_dst": (0x0A000000, 0xFFFFFF00)},
     [CT(commit=True, zone="reg8")],
     [parser.NXActionCT(flags=1, zone_src="reg8", zone_ofs_nbits=15, recirc_table=255, alg=0, actions=[])],
     "ls_in_arp_rsp"),
    ("ls_out_acl", "established", {"ct_state": (0x28, 0x28)}, [], [], "ls_out_deliver"),
    ("ls_out_acl", "conj", {"reg5": 4, "eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 128},
     [Conjunction(77, 1, 2), Conjunction(78, 1, 3)],
     [parser.NXActionConjunction(clause=0, n_clauses=2, id_=77),
      parser.NXActionConjunction(clause=0, n_clauses=3, id_=78)], None),
    ("ls_out_acl", "conj", {"conj_id": 77}, [CT(commit=True, zone="reg8")],
     [parser.NXActionCT(flags=1, zone_src="reg8", zone_ofs_nbits=15, recirc_table=255, alg=0, actions=[])],
     "ls_out_deliver"),
]


# Groups and NAT (flows.flow.Group, CT.nat): os-ken's OFPActionGroup and NXActionCT carrying an NXActionNAT.
def _nat(flags: int = 0, **ranges: str) -> list:
    return [parser.NXActionNAT(flags=flags, **ranges)]


FF = Group((Bucket((Output(1),), 1), Bucket((SetField("reg6", 7), Resubmit("ls_out_deliver")), 2)))
CASES += [
    ("ls_in_l2_lookup", "unicast", {"reg6": 3, "eth_dst": "fa:16:3e:00:00:01"}, [SetField("reg5", 4), FF],
     [parser.OFPActionSetField(reg5=4), parser.OFPActionGroup(FF.group_id)], None),
    ("ls_in_pre_acl", "track", {"reg7": 9, "eth_type": 0x800}, [CT(zone=3, table="ls_in_acl", nat="")],
     [parser.NXActionCT(flags=0, zone_src="", zone_ofs_nbits=3, recirc_table=6, alg=0, actions=_nat())], None),
    ("ls_in_pre_acl", "track", {"reg7": 9, "eth_type": 0x86DD}, [CT(zone="reg8", table="ls_in_acl", nat="")],
     [parser.NXActionCT(flags=0, zone_src="reg8", zone_ofs_nbits=15, recirc_table=6, alg=0, actions=_nat())], None),
    ("ls_in_acl", "rule", {"reg7": 9, "eth_type": 0x800}, [CT(commit=True, zone=5, nat="src=203.0.113.7")],
     [parser.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=5, recirc_table=255, alg=0,
                        actions=_nat(1, range_ipv4_min="203.0.113.7", range_ipv4_max="203.0.113.7"))], None),
    ("ls_in_pre_acl", "track", {"reg7": 9, "eth_type": 0x86DD},
     [CT(commit=True, zone=5, table="ls_in_acl", nat="src=2001:db8::7")],
     [parser.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=5, recirc_table=6, alg=0,
                        actions=_nat(1, range_ipv6_min="2001:db8::7", range_ipv6_max="2001:db8::7"))], None),
]


def _os_ken_instructions(flow, actions: list) -> list:
    inst = []
    if actions:
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    if flow.goto is not None:
        inst.append(parser.OFPInstructionGotoTable(flow.goto))
    return inst


def _os_ken_bytes(flow, match: dict, actions: list, xid: int) -> bytes:
    msg = parser.OFPFlowMod(DP, cookie=flow.cookie, table_id=flow.table_id, priority=flow.priority,
                            out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**match),
                            instructions=_os_ken_instructions(flow, actions))
    msg.xid = xid
    msg.serialize()
    return bytes(msg.buf)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_flow_add_matches_os_ken(case):
    stage_name, prio, match, ours, theirs, goto = case
    flow = make_flow(stage(stage_name), prio, match, ours, goto=stage(goto) if goto else None)
    assert wire.flow_add(flow, xid=42) == _os_ken_bytes(flow, match, theirs, 42)
    # encoded once, kept on the flow: again with another xid, and wrapped into a bundle, all as os-ken has it
    assert flow.encoded is not None
    assert wire.flow_add(flow, xid=7) == _os_ken_bytes(flow, match, theirs, 7)
    inner = parser.OFPFlowMod(DP, cookie=flow.cookie, table_id=flow.table_id, priority=flow.priority,
                              out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**match),
                              instructions=_os_ken_instructions(flow, theirs))
    add = parser.ONFBundleAddMsg(DP, 3, wire.BUNDLE_FLAGS, inner, [])
    add.xid = 99
    add.serialize()
    assert wire.bundle_flow_add(3, flow, 99) == bytes(add.buf) == wire.bundle_add(3, wire.flow_add(flow), 99)
    # the memo is no part of the flow's value
    again = make_flow(stage(stage_name), prio, match, ours, goto=stage(goto) if goto else None)
    assert again.encoded is None and again == flow and hash(again) == hash(flow) and repr(again) == repr(flow)


def test_delete_by_cookie_matches_os_ken():
    msg = parser.OFPFlowMod(DP, cookie=0x1E00000000000ABC, cookie_mask=wire.ALL_ONES64, table_id=ofp.OFPTT_ALL,
                            command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                            match=parser.OFPMatch())
    msg.xid = 5
    msg.serialize()
    assert wire.flow_delete_cookie(0x1E00000000000ABC, xid=5) == bytes(msg.buf)


def test_bundle_messages_match_os_ken():
    ctrl = parser.ONFBundleCtrlMsg(DP, 7, ofp.ONF_BCT_COMMIT_REQUEST, wire.BUNDLE_FLAGS, [])
    ctrl.xid = 9
    ctrl.serialize()
    assert wire.bundle_ctrl(7, ofp.ONF_BCT_COMMIT_REQUEST, 9) == bytes(ctrl.buf)

    inner = parser.OFPBarrierRequest(DP)
    add = parser.ONFBundleAddMsg(DP, 7, wire.BUNDLE_FLAGS, inner, [])
    add.xid = 11
    add.serialize()
    assert wire.bundle_add(7, wire.barrier_request(0), 11) == bytes(add.buf)


def test_masked_field_encoding_matches_os_ken():
    flow = make_flow(stage("ls_in_l2_lookup"), "flood_from_remote", {"reg6": 1, "reg4": (1, 1)})
    assert wire.flow_add(flow, 1) == _os_ken_bytes(flow, {"reg6": 1, "reg4": (1, 1)}, [], 1)


def test_nd_extension_fields_use_the_encoding_ovs_reports() -> None:
    """nd_reserved / nd_options_type: os-ken has no encoding; ours is what OVS 3.1 sends back."""
    flow = make_flow(stage("ls_in_nd_rsp"), "answer",
                     {"reg6": 1, "eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135,
                      "ipv6_nd_target": "2001:db8::1"},
                     [SetField("nd_reserved", 0xE0000000), SetField("nd_options_type", 2)])
    msg = wire.flow_add(flow)
    assert bytes.fromhex("0019001010000204e000000000000000") in msg
    assert bytes.fromhex("00190010100004010200000000000000") in msg


def test_learn_action_matches_os_ken():
    learn = Learn("lr_in_mac_binding", 100, 300, 0x3100000000000007, (("reg6", "reg6"), ("reg0", "arp_spa")),
                  (("arp_sha", "eth_dst"),))
    match = {"reg6": 7, "eth_type": 0x0806, "arp_op": 2, "arp_tpa": "203.0.113.10"}
    flow = make_flow(stage("ext_in_fip"), "arp_learn", match, [learn])
    theirs = parser.NXActionLearn(
        table_id=49, idle_timeout=300, priority=100, cookie=0x3100000000000007,
        specs=[parser.NXFlowSpecMatch(src=("reg6", 0), dst=("reg6", 0), n_bits=32),
               parser.NXFlowSpecMatch(src=("arp_spa", 0), dst=("reg0", 0), n_bits=32),
               parser.NXFlowSpecLoad(src=("arp_sha", 0), dst=("eth_dst", 0), n_bits=48)])
    assert wire.flow_add(flow, xid=3) == _os_ken_bytes(flow, match, [theirs], 3)


def test_in_port_is_cleared_with_nxm_reg_load():
    # OpenFlow 1.3 has no writable in_port; OVS takes NXAST_REG_LOAD into NXM_OF_IN_PORT (16 bits).
    encoded = wire._action(SetField("in_port", 0))
    assert struct.unpack("!HHIHHIQ", encoded) == (0xFFFF, 24, 0x2320, 7, 15, 0x00000002, 0)


def test_packet_out_matches_os_ken():
    data = bytes(range(60))
    ours = wire.packet_out([SetField("reg6", 5), Resubmit("lr_in_ext_output")], data, xid=8)
    msg = parser.OFPPacketOut(DP, ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER,
                              [parser.OFPActionSetField(reg6=5), parser.NXActionResubmitTable(in_port=0xFFF8,
                                                                                             table_id=50)], data)
    msg.xid = 8
    msg.serialize()
    assert ours == bytes(msg.buf)


_FLOW_STATS_HEAD = struct.Struct("!HBxIIHHHH4xQQQ")  # ofp_flow_stats up to its match


def _flow_stats_reply(flows, xid: int, more: bool) -> bytes:
    """An OFPMP_FLOW reply as OVS sends it, its entries built from our own encodings."""
    entries = b""
    for i, flow in enumerate(flows):
        body = wire.encode_match(flow.match) + wire.encode_instructions(flow)
        entries += _FLOW_STATS_HEAD.pack(_FLOW_STATS_HEAD.size + len(body), flow.table_id, i, 7, flow.priority,
                                         0, 0, 0, flow.cookie, 3 * i, 100 * i) + body
    head = struct.pack("!BBHIHH4x", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(entries), xid,
                       ofp.OFPMP_FLOW, ofp.OFPMPF_REPLY_MORE if more else 0)
    return head + entries


def test_flow_stats_cookies_read_what_os_ken_parses():
    from os_ken.ofproto.ofproto_parser import msg as parse

    flows = [make_flow(stage(c[0]), c[1], c[2], c[3], goto=stage(c[5]) if c[5] else None) for c in CASES]
    for more in (False, True):
        raw = _flow_stats_reply(flows, 77, more)
        parsed = parse(DP, ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, len(raw), 77, raw)
        cookies, has_more = wire.flow_stats_cookies(raw)
        assert cookies == [s.cookie for s in parsed.body] == [f.cookie for f in flows]
        assert has_more is more is bool(parsed.flags & ofp.OFPMPF_REPLY_MORE)
    assert wire.flow_stats_cookies(_flow_stats_reply([], 1, False)) == ([], False)


def test_flow_stats_cookies_refuse_malformed_replies():
    flows = [make_flow(stage("ls_out_deliver"), "drop", {}, [])]
    raw = _flow_stats_reply(flows, 1, False)
    for bad in (raw[:12], raw[:-1], raw[:16] + struct.pack("!H", 8) + raw[18:],  # truncated; entry too short
                raw[:1] + bytes([ofp.OFPT_ECHO_REPLY]) + raw[2:], raw[:9] + bytes([ofp.OFPMP_TABLE]) + raw[10:]):
        with pytest.raises(ValueError):
            wire.flow_stats_cookies(bad)


# -- groups ------------------------------------------------------------------------------------------
def _serialized(msg, xid: int) -> bytes:
    msg.xid = xid
    msg.serialize()
    return bytes(msg.buf)


def test_group_add_matches_os_ken() -> None:
    """A fast-failover group, its buckets' actions encoded as a flow's are; no watch port: the live group."""
    learn = Learn("lr_in_mac_binding", 100, 300, 0x3100000000000007, (("reg6", "reg6"),), (("arp_sha", "eth_dst"),))
    group = Group((
        Bucket((SetField("tunnel_id", 1001), SetField("tun_ipv4_dst", "192.0.2.9"), Output(5)), 5),
        Bucket((SetField("reg6", 7), CT(commit=True, zone="reg8", table="ls_in_acl", nat="src=1.2.3.4")), 6),
        Bucket((learn, FF, Resubmit("ls_out_deliver")), None),
    ))
    theirs = parser.OFPGroupMod(DP, ofp.OFPGC_ADD, ofp.OFPGT_FF, group.group_id, [
        parser.OFPBucket(watch_port=5, actions=[parser.OFPActionSetField(tunnel_id=1001),
                                                parser.OFPActionSetField(tun_ipv4_dst="192.0.2.9"),
                                                parser.OFPActionOutput(5)]),
        parser.OFPBucket(watch_port=6, actions=[
            parser.OFPActionSetField(reg6=7),
            parser.NXActionCT(flags=1, zone_src="reg8", zone_ofs_nbits=15, recirc_table=6, alg=0,
                              actions=_nat(1, range_ipv4_min="1.2.3.4", range_ipv4_max="1.2.3.4"))]),
        parser.OFPBucket(watch_port=ofp.OFPP_ANY, watch_group=LIVE_GROUP_ID, actions=[
            parser.NXActionLearn(table_id=49, idle_timeout=300, priority=100, cookie=0x3100000000000007,
                                 specs=[parser.NXFlowSpecMatch(src=("reg6", 0), dst=("reg6", 0), n_bits=32),
                                        parser.NXFlowSpecLoad(src=("arp_sha", 0), dst=("eth_dst", 0), n_bits=48)]),
            parser.OFPActionGroup(FF.group_id), parser.NXActionResubmitTable(in_port=0xFFF8, table_id=60)]),
    ])
    assert wire.group_add(group, 21) == _serialized(theirs, 21)
    assert LIVE_GROUP_ID < group.group_id < GROUP_ID_MAX  # never the live group's id, never a reserved one


def test_live_group_delete_and_group_desc_request_match_os_ken() -> None:
    live = parser.OFPGroupMod(DP, ofp.OFPGC_ADD, ofp.OFPGT_INDIRECT, LIVE_GROUP_ID, [parser.OFPBucket(actions=[])])
    assert wire.live_group_add(3) == _serialized(live, 3)
    delete = parser.OFPGroupMod(DP, ofp.OFPGC_DELETE, ofp.OFPGT_ALL, FF.group_id, [])
    assert wire.group_delete(FF.group_id, 4) == _serialized(delete, 4)
    assert wire.group_desc_request(5) == _serialized(parser.OFPGroupDescStatsRequest(DP, 0), 5)


def _group_desc_reply(groups: list[Group], xid: int, more: bool) -> bytes:
    """An OFPMP_GROUP_DESC reply as OVS sends it, its entries cut from our own group mods."""
    entries = b""
    for group in groups:
        buckets = wire.group_add(group)[16:]
        entries += struct.pack("!HBxI", 8 + len(buckets), ofp.OFPGT_FF, group.group_id) + buckets
    head = struct.pack("!BBHIHH4x", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(entries), xid,
                       ofp.OFPMP_GROUP_DESC, ofp.OFPMPF_REPLY_MORE if more else 0)
    return head + entries


def test_group_desc_ids_read_what_os_ken_parses() -> None:
    from os_ken.ofproto.ofproto_parser import msg as parse

    groups = [FF, Group((Bucket((Output(2),), 2),)), Group((Bucket((FF,), None), Bucket((Output(3),), 3)))]
    for more in (False, True):
        raw = _group_desc_reply(groups, 8, more)
        parsed = parse(DP, ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, len(raw), 8, raw)
        ids, has_more = wire.group_desc_ids(raw)
        assert ids == [s.group_id for s in parsed.body] == [g.group_id for g in groups]
        assert [len(s.buckets) for s in parsed.body] == [2, 1, 2]
        assert has_more is more
        assert wire.FAST_MULTIPART[wire.multipart_type(raw)] is wire.group_desc_ids
    assert wire.group_desc_ids(_group_desc_reply([], 1, False)) == ([], False)
    raw = _group_desc_reply([FF], 1, False)
    for bad in (raw[:12], raw[:-1], raw[:16] + struct.pack("!H", 6) + raw[18:],  # truncated; entry too short
                raw[:9] + bytes([ofp.OFPMP_FLOW]) + raw[10:]):  # another multipart type
        with pytest.raises(ValueError):
            wire.group_desc_ids(bad)


def test_ct_nat_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="nat"):
        wire._action(CT(commit=True, zone=1, nat="dst=1.2.3.4"))


# -- meters --------------------------------------------------------------------------------------
PORT_METER = Meter("port 7", 10, 10)


def test_a_metered_flow_matches_os_ken() -> None:
    """The meter instruction first, then the rest of the actions (if any), then the goto."""
    match = {"reg7": 7, "eth_type": 0x0800, "ip_proto": 17, "udp_src": 68, "udp_dst": 67}
    metered = make_flow(stage("ls_in_dhcp"), "request", match, [PORT_METER], goto=stage("ls_in_punt"))
    theirs = parser.OFPFlowMod(DP, cookie=metered.cookie, table_id=3, priority=metered.priority,
                               out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**match),
                               instructions=[parser.OFPInstructionMeter(PORT_METER.meter_id),
                                             parser.OFPInstructionGotoTable(5)])
    assert wire.flow_add(metered, 9) == _serialized(theirs, 9)
    hv_meter = Meter("hypervisor", 100, 50)
    punt = make_flow(stage("ls_in_punt"), "controller", {}, [hv_meter, Output(0xFFFFFFFD)])
    theirs = parser.OFPFlowMod(DP, cookie=punt.cookie, table_id=5, priority=0, out_port=ofp.OFPP_ANY,
                               out_group=ofp.OFPG_ANY, match=parser.OFPMatch(), instructions=[
                                   parser.OFPInstructionMeter(hv_meter.meter_id),
                                   parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS,
                                                                [parser.OFPActionOutput(0xFFFFFFFD)])])
    assert wire.flow_add(punt, 10) == _serialized(theirs, 10)


def test_a_meter_is_a_flows_first_action_and_only_one() -> None:
    punt, dhcp = stage("ls_in_punt"), stage("ls_in_dhcp")
    for actions in ([Output(1), PORT_METER], [PORT_METER, PORT_METER, Output(1)], [Meter("x", 0, 1), Output(1)],
                    [Group((Bucket((PORT_METER, Output(1)), 1),))]):
        with pytest.raises(PipelineError, match="meter"):
            make_flow(punt, "controller", {}, actions)
    assert make_flow(dhcp, "request", {"reg7": 1}, [PORT_METER], goto=punt).actions == (PORT_METER,)
    # its content names it: another rate is another meter, and so another flow
    assert Meter("port 7", 20, 10).meter_id != PORT_METER.meter_id == Meter("port 7", 10, 10).meter_id
    assert 0 < PORT_METER.meter_id <= 0xFFFF0000


def test_meter_mods_and_config_request_match_os_ken() -> None:
    band = parser.OFPMeterBandDrop(rate=10, burst_size=10)
    add = parser.OFPMeterMod(DP, ofp.OFPMC_ADD, ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS,
                             PORT_METER.meter_id, [band])
    assert wire.meter_add(PORT_METER, 3) == _serialized(add, 3)
    delete = parser.OFPMeterMod(DP, ofp.OFPMC_DELETE, 0, PORT_METER.meter_id, [])
    assert wire.meter_delete(PORT_METER.meter_id, 4) == _serialized(delete, 4)
    request = parser.OFPMeterConfigStatsRequest(DP, 0, ofp.OFPM_ALL)
    assert wire.meter_config_request(5) == _serialized(request, 5)


def test_meter_config_ids_read_what_os_ken_parses() -> None:
    from os_ken.ofproto.ofproto_parser import msg as parse

    meters = [PORT_METER, Meter("hypervisor", 100, 50)]
    entries = b"".join(struct.pack("!HHI", 8 + 16, 0, m.meter_id) + wire.meter_add(m)[16:] for m in meters)
    for more in (False, True):
        raw = struct.pack("!BBHIHH4x", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(entries), 6,
                          ofp.OFPMP_METER_CONFIG, ofp.OFPMPF_REPLY_MORE if more else 0) + entries
        parsed = parse(DP, ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, len(raw), 6, raw)
        ids, has_more = wire.meter_config_ids(raw)
        assert ids == [c.meter_id for c in parsed.body] == [m.meter_id for m in meters] and has_more is more
        assert [c.bands[0].rate for c in parsed.body] == [10, 100]
        assert wire.FAST_MULTIPART[wire.multipart_type(raw)] is wire.meter_config_ids
    with pytest.raises(ValueError):
        wire.meter_config_ids(raw[:-1])
