"""The ARP the controller sends for floating IPs (controller/neighbour.py), read back with scapy."""

from __future__ import annotations

from scapy.layers.l2 import ARP, Ether

from controller.neighbour import announcement_packets, arp_request, ext_output_actions, resolve_request
from flows.flow import Resubmit, SetField
from flows.nat import Announcement

FIP, FIP_MAC, GATEWAY = "203.0.113.10", "fa:16:3e:00:00:0a", "203.0.113.1"


def test_announcement_is_a_gratuitous_arp_then_a_request_for_the_gateway() -> None:
    garp, ask = (Ether(frame) for frame in announcement_packets(Announcement(7, FIP, FIP_MAC, GATEWAY)))
    for frame in (garp, ask):
        assert frame.dst == "ff:ff:ff:ff:ff:ff" and frame.src == FIP_MAC
        assert frame[ARP].op == 1 and frame[ARP].hwsrc == FIP_MAC and frame[ARP].psrc == FIP
    assert garp[ARP].pdst == FIP  # gratuitous: sender and target are the floating IP
    assert ask[ARP].pdst == GATEWAY
    assert len(announcement_packets(Announcement(7, FIP, FIP_MAC, None))) == 1  # no gateway: no request


def test_an_unresolved_packet_makes_a_request_from_its_floating_ip() -> None:
    from scapy.layers.inet import IP, UDP

    frame = bytes(Ether(src=FIP_MAC, dst="00:00:00:00:00:00") / IP(src=FIP, dst="198.51.100.9") / UDP())
    request = Ether(resolve_request(frame, 0xCB007101))  # reg0 = next hop 203.0.113.1
    assert request[ARP].pdst == "203.0.113.1" and request[ARP].psrc == FIP and request[ARP].hwsrc == FIP_MAC
    assert resolve_request(frame, 0) is None  # no next hop in the packet-in: nothing to ask
    assert resolve_request(bytes(Ether(src=FIP_MAC) / ARP()), 0xCB007101) is None  # not IPv4: ignored


def test_frames_enter_through_the_external_output_stage() -> None:
    assert ext_output_actions(7) == [SetField("reg6", 7), Resubmit("lr_in_ext_output")]
    assert Ether(arp_request(FIP_MAC, FIP, GATEWAY))[ARP].hwdst == "00:00:00:00:00:00"


def test_an_arp_reply_to_a_floating_ip_becomes_the_flow_the_switch_would_learn() -> None:
    import struct

    from controller import wire
    from controller.neighbour import learned_neighbour
    from flows.nat import LEARNED_IDLE_TIMEOUT, learn_neighbour_on
    from flows.stages import MAC_BINDING

    gw_mac = "52:54:00:12:34:56"
    reply = bytes(Ether(src=gw_mac, dst=FIP_MAC) / ARP(op=2, hwsrc=gw_mac, psrc=GATEWAY, hwdst=FIP_MAC, pdst=FIP))
    flow = learned_neighbour(7, reply)
    learn = learn_neighbour_on(7)
    assert flow is not None
    # What ext_in_fip's learn action writes: its table, priority and cookie; (network, sender) -> sender's MAC.
    assert (flow.table_id, flow.priority, flow.cookie) == (MAC_BINDING.table_id, learn.priority, learn.cookie)
    assert dict(flow.match) == {"reg6": 7, "reg0": 0xCB007101}
    assert flow.actions == (SetField("eth_dst", gw_mac),)
    msg = wire.learned_flow_add(flow, LEARNED_IDLE_TIMEOUT)
    assert struct.unpack_from("!H", msg, 8 + 18)[0] == LEARNED_IDLE_TIMEOUT == learn.idle_timeout
    # The MAC as NXAST_REG_LOAD (Nicira, subtype 7) into all 48 bits of eth_dst, as OVS writes a learn's load.
    assert msg[-24:] == struct.pack("!HHIHHIQ", 0xFFFF, 24, 0x2320, 7, 47, wire.oxm_header("eth_dst"),
                                    0x525400123456)
    request = bytes(Ether(src=gw_mac, dst=FIP_MAC) / ARP(op=1, hwsrc=gw_mac, psrc=GATEWAY, pdst=FIP))
    assert learned_neighbour(7, request) is None  # only replies
    assert learned_neighbour(7, bytes(Ether(src=gw_mac) / (b"\x00" * 46))) is None  # not ARP
