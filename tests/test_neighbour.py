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
