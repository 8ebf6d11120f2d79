"""IPv6 router advertisements built from the topology (what Neutron's radvd and OVN's put_nd_ra_opts do).

A subnet with an ``ipv6_ra_mode`` is advertised by its router: the router interface that
holds the subnet's address (the gateway) sends the advertisement from its link-local
address (EUI-64 of its MAC) and its MAC, with:

- flags by mode: ``slaac`` none, ``dhcpv6-stateless`` O (other configuration by DHCPv6),
  ``dhcpv6-stateful`` M (addresses by DHCPv6);
- one prefix option per such subnet on that interface: on-link (L), and autonomous (A,
  the guest builds its EUI-64 address: what the API shows) unless the mode is stateful;
- the source link-layer address and the network's MTU;
- a router lifetime of :data:`ROUTER_LIFETIME` (the router is the default router).

A subnet with a mode but no router attached gets nothing (as in Neutron, where radvd runs in
the router); one with only an ``ipv6_address_mode`` expects an outside router to advertise.
Sent in answer to a router solicitation (ls_in_dhcp's router_solicit, unicast to the
solicitor, or to all nodes when it solicited from ``::``), and periodically to every local
port (:func:`next_interval`, jittered).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import netaddr
from os_ken.lib.packet import ethernet, icmpv6, ipv6, packet

from controller.dhcp import headers
from flows.dhcp import ra_subnets
from topology.graph import TopologyGraph
from topology.graph_l3 import subnet_router_port
from topology.model import Port

ROUTER_LIFETIME = 1800  # s (RFC 4861's default: 3 x MaxRtrAdvInterval)
VALID_LIFETIME, PREFERRED_LIFETIME = 2592000, 604800  # s, radvd's defaults
INTERVAL = (200.0, 600.0)  # s between unsolicited advertisements: RFC 4861's Min/MaxRtrAdvInterval
ALL_NODES_IP, ALL_NODES_MAC = "ff02::1", "33:33:00:00:00:01"
M_FLAG, O_FLAG = 2, 1  # os-ken's nd_router_advert.res (shifted into the flags byte)
L_FLAG, A_FLAG = 4, 2  # os-ken's nd_option_pi.res1
_MTU_OPTION = struct.Struct("!BBHI")  # RFC 4861 4.6.4: type 5, length 1 (8 octets), reserved, MTU


@dataclass(frozen=True)
class Advert:
    """One router interface's advertisement on a port's network."""

    router_mac: str
    router_lla: str
    managed: bool
    other: bool
    prefixes: tuple[tuple[str, bool], ...]  # (prefix CIDR, autonomous)
    mtu: int


def adverts_for(graph: TopologyGraph, port: Port) -> list[Advert]:
    """What the routers of ``port``'s advertised subnets tell it (under the topology's lock)."""
    net = graph.network(port.network_id)
    subnets = ra_subnets(graph, port)
    if net is None or not subnets:
        return []
    by_router: dict[str, list] = {}
    for subnet in subnets:
        router = subnet_router_port(graph, subnet)
        if router is not None:
            by_router.setdefault(router.mac_address, []).append(subnet)
    out = []
    for mac, advertised in by_router.items():
        modes = [s.attrs.get("ipv6_ra_mode") for s in advertised]
        out.append(Advert(router_mac=mac, router_lla=str(netaddr.EUI(mac).ipv6_link_local()),
                          managed="dhcpv6-stateful" in modes, other="dhcpv6-stateless" in modes,
                          prefixes=tuple((s.cidr, mode != "dhcpv6-stateful") for s, mode in zip(advertised, modes,
                                                                                                strict=True)),
                          mtu=net.mtu))
    return out


def router_advert(advert: Advert, dst_mac: str = ALL_NODES_MAC, dst_ip: str = ALL_NODES_IP) -> bytes:
    """The advertisement frame (hop limit 255, as RFC 4861 requires of every ND message)."""
    # (the MTU option as bytes: os-ken's nd_option_mtu cannot be serialized inside an advertisement)
    options = [icmpv6.nd_option_sla(hw_src=advert.router_mac), _MTU_OPTION.pack(5, 1, 0, advert.mtu)]
    for cidr, autonomous in advert.prefixes:
        net = netaddr.IPNetwork(cidr)
        options.append(icmpv6.nd_option_pi(pl=net.prefixlen, res1=L_FLAG | (A_FLAG if autonomous else 0),
                                           val_l=VALID_LIFETIME, pre_l=PREFERRED_LIFETIME, prefix=str(net.network)))
    flags = (M_FLAG if advert.managed else 0) | (O_FLAG if advert.other else 0)
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=dst_mac, src=advert.router_mac, ethertype=0x86DD))
    out.add_protocol(ipv6.ipv6(src=advert.router_lla, dst=dst_ip, nxt=58, hop_limit=255))
    out.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_ROUTER_ADVERT, data=icmpv6.nd_router_advert(
        ch_l=64, res=flags, rou_l=ROUTER_LIFETIME, options=options)))
    out.serialize()
    return bytes(out.data)


def answer_solicitation(frame: bytes, adverts: list[Advert]) -> list[bytes]:
    """The advertisements answering a router solicitation ``frame`` (none if it is no solicitation)."""
    eth, ip, icmp = headers(frame, ethernet.ethernet, ipv6.ipv6, icmpv6.icmpv6) or (None, None, None)
    if eth is None or ip is None or icmp is None or icmp.type_ != icmpv6.ND_ROUTER_SOLICIT:
        return []
    # RFC 4861 6.2.6: to the solicitor if it has an address (it gave its link-layer one), else to all nodes
    dst_mac, dst_ip = (eth.src, ip.src) if ip.src != "::" else (ALL_NODES_MAC, ALL_NODES_IP)
    return [router_advert(a, dst_mac, dst_ip) for a in adverts]


def next_interval(rng: random.Random | None = None) -> float:
    """Seconds until the next unsolicited advertisement, drawn uniformly from :data:`INTERVAL`."""
    return (rng or random).uniform(*INTERVAL)
