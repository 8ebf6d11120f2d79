"""Port security (anti-spoofing): the ``ls_in_port_sec`` stage.

Neutron's ``port_security_enabled`` (on by default): a local port may send only
from its MAC and its fixed addresses, or from an allowed address pair's MAC and
address/CIDR (pairs without a MAC use the port's). IPv6 link-local: the EUI-64
address of each of its MACs, as Neutron allows (any other fe80:: source could take
over a neighbour's gateway entry; a guest using RFC 7217 addresses needs them as an
allowed address pair, as on Neutron).
ARP must carry the same sender MAC and address. What a booting guest needs before it
has an address passes: DHCP discover/request from 0.0.0.0 (UDP 68 -> 67), ARP probes
(sender 0.0.0.0), and duplicate address detection, MLD reports and router
solicitations from ``::``. Router advertisements and redirects, DHCP server replies,
and Neighbour Advertisements for addresses the port does not own are dropped.
Anything else, other ethertypes included, is dropped. A port with port security off,
or a trusted port (``device_owner`` ``network:*``, as Neutron's firewalls treat
them), passes everything.
"""

from __future__ import annotations

from collections.abc import Iterator

import netaddr

from flows.flow import Flow, MatchValue, make_flow
from flows.pipeline import REG_INPORT, stage
from flows.stages import DHCP
from topology.graph_l3 import allowed_address_pairs, port_security_enabled
from topology.model import Port

PORT_SEC = stage("ls_in_port_sec")

ETH_ARP, ETH_IPV4, ETH_IPV6 = 0x0806, 0x0800, 0x86DD
UDP, ICMPV6 = 17, 58
DHCP_SERVER, DHCP_CLIENT, DHCP6_CLIENT, DHCP6_SERVER = 67, 68, 546, 547
MLD_REPORT, ROUTER_SOLICIT, ROUTER_ADVERT, NEIGH_SOLICIT, NEIGH_ADVERT, REDIRECT, MLD2_REPORT = \
    131, 133, 134, 135, 136, 137, 143


def is_trusted(port: Port) -> bool:
    """Ports Neutron's firewalls never filter: those the network itself owns (DHCP, routers...)."""
    return port.device_owner.startswith("network:")


def is_secured(port: Port) -> bool:
    """Whether port security (and so security groups) applies to the port."""
    return port_security_enabled(port) and not is_trusted(port)


def prefix_match(net: netaddr.IPNetwork) -> MatchValue | None:
    """A CIDR as a match value: the address for a host route, (value, mask) otherwise, None for /0."""
    if net.prefixlen == 0:
        return None
    if net.prefixlen == (32 if net.version == 4 else 128):
        return str(net.ip)
    return int(net.network), int(net.netmask)


def _with(match: dict[str, MatchValue], field: str, net: netaddr.IPNetwork) -> dict[str, MatchValue]:
    value = prefix_match(net)
    return match if value is None else {**match, field: value}


def port_addresses(port: Port) -> list[tuple[str, netaddr.IPNetwork]]:
    """(MAC, address or CIDR) the port may send from: its fixed addresses, then its allowed address pairs."""
    out = [(port.mac_address, netaddr.IPNetwork(f.ip_address)) for f in port.fixed_ips]
    out += [(mac.lower(), netaddr.IPNetwork(ip)) for ip, mac in allowed_address_pairs(port)]
    seen: dict[tuple[str, str], tuple[str, netaddr.IPNetwork]] = {}
    for mac, net in out:
        seen.setdefault((mac, str(net.cidr)), (mac, net.cidr))
    return list(seen.values())


def port_security_flows(local_ports: list[Port]) -> list[Flow]:
    """Every flow of ``ls_in_port_sec`` for this hypervisor's local ports."""
    flows = [make_flow(PORT_SEC, "default", {}, description="not allowed by port security: drop")]
    for port in local_ports:
        flows += _port_flows(port)
    return list({f.key: f for f in flows}.values())


def local_port_security(port: Port) -> list[Flow]:
    """The ``ls_in_port_sec`` flows of one local port."""
    return list({f.key: f for f in _port_flows(port)}.values())


def _port_flows(port: Port) -> Iterator[Flow]:
    base: dict[str, MatchValue] = {REG_INPORT: port.key}
    if not is_secured(port):
        yield make_flow(PORT_SEC, "disabled", base, goto=DHCP,
                        description=f"port {port.id}: port security off: anything passes")
        return
    pairs = port_addresses(port)
    macs = list(dict.fromkeys([port.mac_address, *(mac for mac, _ in pairs)]))
    for mac in macs:
        yield from _boot_flows(port, base, mac)
    for mac, net in pairs:
        src = {**base, "eth_src": mac}
        if net.version == 4:
            yield make_flow(PORT_SEC, "allow", _with({**src, "eth_type": ETH_IPV4}, "ipv4_src", net), goto=DHCP,
                            description=f"port {port.id}: IPv4 from {mac} {net}")
            yield make_flow(PORT_SEC, "allow", _with({**src, "eth_type": ETH_ARP, "arp_sha": mac}, "arp_spa", net),
                            goto=DHCP, description=f"port {port.id}: ARP from {mac} {net}")
        else:
            yield make_flow(PORT_SEC, "allow", _with({**src, "eth_type": ETH_IPV6}, "ipv6_src", net), goto=DHCP,
                            description=f"port {port.id}: IPv6 from {mac} {net}")
            yield _na_ok(port, src, net)
    yield from _block_flows(port, base)


def _na_ok(port: Port, src: dict[str, MatchValue], net: netaddr.IPNetwork) -> Flow:
    match = _with({**src, "eth_type": ETH_IPV6, "ip_proto": ICMPV6, "icmpv6_type": NEIGH_ADVERT}, "ipv6_nd_target",
                  net)
    return make_flow(PORT_SEC, "nd_ok", match, goto=DHCP,
                     description=f"port {port.id}: neighbour advertisement for its own {net}")


def _boot_flows(port: Port, base: dict[str, MatchValue], mac: str) -> Iterator[Flow]:
    """What a guest sends before it has an address, and IPv6 link-local, from one of its MACs."""
    src = {**base, "eth_src": mac}
    yield make_flow(PORT_SEC, "boot", {**src, "eth_type": ETH_IPV4, "ipv4_src": "0.0.0.0", "ip_proto": UDP,
                                       "udp_src": DHCP_CLIENT, "udp_dst": DHCP_SERVER}, goto=DHCP,
                    description=f"port {port.id}: DHCP request from 0.0.0.0 ({mac})")
    yield make_flow(PORT_SEC, "boot", {**src, "eth_type": ETH_ARP, "arp_sha": mac, "arp_spa": "0.0.0.0"},
                    goto=DHCP, description=f"port {port.id}: ARP probe from {mac}")
    for icmp_type in (MLD_REPORT, ROUTER_SOLICIT, NEIGH_SOLICIT, MLD2_REPORT):
        yield make_flow(PORT_SEC, "boot", {**src, "eth_type": ETH_IPV6, "ipv6_src": "::", "ip_proto": ICMPV6,
                                           "icmpv6_type": icmp_type}, goto=DHCP,
                        description=f"port {port.id}: DAD / MLD / RS (ICMPv6 {icmp_type}) from :: ({mac})")
    link_local = netaddr.IPNetwork(f"{netaddr.EUI(mac).ipv6_link_local()}/128")
    yield make_flow(PORT_SEC, "allow", _with({**src, "eth_type": ETH_IPV6}, "ipv6_src", link_local), goto=DHCP,
                    description=f"port {port.id}: IPv6 link-local {link_local.ip} of {mac}")
    yield _na_ok(port, src, link_local)


def _block_flows(port: Port, base: dict[str, MatchValue]) -> Iterator[Flow]:
    """What a guest must never send, whatever its addresses: above every allow."""
    icmp6 = {**base, "eth_type": ETH_IPV6, "ip_proto": ICMPV6}
    for icmp_type, what in ((NEIGH_ADVERT, "neighbour advertisement for an address it does not own"),
                            (ROUTER_ADVERT, "router advertisement"), (REDIRECT, "ICMPv6 redirect")):
        yield make_flow(PORT_SEC, "block", {**icmp6, "icmpv6_type": icmp_type},
                        description=f"port {port.id}: {what}: drop")
    yield make_flow(PORT_SEC, "block", {**base, "eth_type": ETH_IPV4, "ip_proto": UDP, "udp_src": DHCP_SERVER},
                    description=f"port {port.id}: DHCP server reply from a guest: drop")
    yield make_flow(PORT_SEC, "block", {**base, "eth_type": ETH_IPV6, "ip_proto": UDP, "udp_src": DHCP6_SERVER},
                    description=f"port {port.id}: DHCPv6 server reply from a guest: drop")
