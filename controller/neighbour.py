"""ARP the controller sends on external networks for the floating IPs a hypervisor hosts.

The slow path of :mod:`flows.nat`: a gratuitous ARP when a hypervisor starts
hosting a floating IP (after a move, so the external network's switches learn
where its MAC now lives), an ARP request for the external gateway at the same
time (so outbound traffic finds the gateway's MAC already learned), an ARP
request for a next hop a packet found unresolved (packet-in from
``lr_in_ext_output``, rate-limited per switch), and and the neighbour an ARP reply to a
floating IP teaches (packet-in from ``ext_in_fip``), written as a flow at once, as
the switch's own learn action writes it (see :func:`learned_neighbour`). Every answer is learned by the
switch itself (``ext_in_fip``'s learn actions); the controller keeps no state.
Frames are injected through ``lr_in_ext_output``, which knows the provider
port and VLAN of the external network.
"""

from __future__ import annotations

import dataclasses

import netaddr
from os_ken.lib.packet import arp, ethernet, icmpv6, ipv4, ipv6, packet

from flows.flow import Flow, Resubmit, SetField, make_flow
from flows.nat import EXT_OUTPUT, Announcement, learn_neighbour_on
from flows.pipeline import FLAG_FROM_REMOTE, REG_FLAGS, REG_NETWORK, REG_NEXTHOP
from flows.stages import L2_LOOKUP, MAC_BINDING

BROADCAST = "ff:ff:ff:ff:ff:ff"


def arp_request(sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    """A broadcast ARP request (gratuitous when ``target_ip`` is ``sender_ip``)."""
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=BROADCAST, src=sender_mac, ethertype=0x0806))
    pkt.add_protocol(arp.arp_ip(arp.ARP_REQUEST, sender_mac, sender_ip, "00:00:00:00:00:00", target_ip))
    pkt.serialize()
    return bytes(pkt.data)


def announcement_packets(item: Announcement) -> list[bytes]:
    """Gratuitous ARP for the address, then a request for its external gateway's MAC (if any); for a
    probe, only the request, from 0.0.0.0."""
    if item.probe:
        return [arp_request(item.mac, "0.0.0.0", item.ext_gateway)] if item.ext_gateway else []
    if ":" in item.ip:
        return [unsolicited_na(item.mac, item.ip)]
    frames = [arp_request(item.mac, item.ip, item.ip)]
    if item.ext_gateway and item.ext_gateway != item.ip:
        frames.append(arp_request(item.mac, item.ip, item.ext_gateway))
    return frames


def unsolicited_na(mac: str, ip: str) -> bytes:
    """An unsolicited Neighbour Advertisement of a router's address to all nodes: router and
    override flags set, so a neighbour cache holding another MAC for it takes this one (RFC 4861 7.2.6)."""
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst="33:33:00:00:00:01", src=mac, ethertype=0x86DD))
    pkt.add_protocol(ipv6.ipv6(src=ip, dst="ff02::1", nxt=58, hop_limit=255))
    pkt.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_NEIGHBOR_ADVERT, data=icmpv6.nd_neighbor(
        res=0b101, dst=ip, option=icmpv6.nd_option_tla(hw_src=mac))))  # R, not S, O
    pkt.serialize()
    return bytes(pkt.data)


def ext_output_actions(ext_key: int) -> list:
    """Packet-out actions: onto external network ``ext_key`` the way lr_in_ext_output sends."""
    return [SetField(REG_NETWORK, ext_key), Resubmit(EXT_OUTPUT.name)]


def announcement_actions(item: Announcement) -> list:
    """Where an announcement goes: out to its external network, or (inside) to the network's local
    ports only, as a broadcast from another hypervisor is flooded (each hypervisor tells its own)."""
    if not item.inside:
        return ext_output_actions(item.ext_key)
    return [SetField(REG_NETWORK, item.ext_key), SetField(REG_FLAGS, FLAG_FROM_REMOTE), Resubmit(L2_LOOKUP.name)]


def learned_neighbour(ext_key: int, frame: bytes) -> Flow | None:
    """The flow ``ext_in_fip``'s learn action makes of an ARP reply on external network ``ext_key``
    (its sender's address -> its MAC, in lr_in_mac_binding), for the controller to write at once.

    A flow the controller adds makes OVS revalidate its cached datapath flows right away; one
    added by a learn action did not, here: a next hop cached as unresolved stayed so for ~0.5 s
    after its MAC was learned (see :func:`flows.nat._fip`). None if ``frame`` is no ARP reply."""
    reply = packet.Packet(frame).get_protocol(arp.arp)
    if reply is None or reply.opcode != arp.ARP_REPLY:
        return None
    learn = learn_neighbour_on(ext_key)
    flow = make_flow(MAC_BINDING, "learned", {REG_NETWORK: ext_key, REG_NEXTHOP: int(netaddr.IPAddress(reply.src_ip))},
                     [SetField("eth_dst", reply.src_mac)], description="neighbour learned from an ARP reply")
    return dataclasses.replace(flow, cookie=learn.cookie)


def resolve_request(frame: bytes, nexthop: int) -> bytes | None:
    """The ARP request for an unresolved next hop, from the floating IP the packet leaves with."""
    pkt = packet.Packet(frame)
    eth, ip = pkt.get_protocol(ethernet.ethernet), pkt.get_protocol(ipv4.ipv4)
    if eth is None or ip is None or not nexthop:
        return None
    target = ".".join(str(nexthop >> s & 0xFF) for s in (24, 16, 8, 0))
    return arp_request(eth.src, ip.src, target)


def resolve_request6(frame: bytes, nexthop: int) -> bytes | None:
    """The Neighbour Solicitation for an unresolved IPv6 next hop: from ``::`` (no address of ours is
    claimed), to the target's solicited-node group, from the packet's source MAC (this hypervisor's
    DVR MAC). The target answers to all nodes (RFC 4861 7.2.4), so every hypervisor on the
    external network learns its MAC from that one advertisement."""
    eth = packet.Packet(frame).get_protocol(ethernet.ethernet)
    if eth is None or not nexthop:
        return None
    target = netaddr.IPAddress(nexthop, 6)
    group = netaddr.IPAddress(int(netaddr.IPAddress("ff02::1:ff00:0")) | (nexthop & 0xFFFFFF), 6)
    mac = "33:33:" + ":".join(f"{b:02x}" for b in group.packed[-4:])
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=mac, src=eth.src, ethertype=0x86DD))
    pkt.add_protocol(ipv6.ipv6(src="::", dst=str(group), nxt=58, hop_limit=255))
    pkt.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_NEIGHBOR_SOLICIT, data=icmpv6.nd_neighbor(dst=str(target))))
    pkt.serialize()
    return bytes(pkt.data)


def next_hop_request(frame: bytes, registers: dict) -> bytes | None:
    """What to send for the next hop a packet found unresolved (lr_in_ext_output's packet-in, with its
    registers): an ARP request for reg0, or for IPv6 a Neighbour Solicitation for xxreg0 (reg0-reg3)."""
    if frame[12:14] == b"\x86\xdd":
        return resolve_request6(frame, sum(registers.get(f"reg{i}", 0) << (96 - 32 * i) for i in range(4)))
    return resolve_request(frame, registers.get("reg0", 0))
