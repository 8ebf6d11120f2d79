"""DHCPv6 answers built from the topology (RFC 8415; what OVN's put_dhcpv6_opts does).

For a port with an address on a subnet whose ``ipv6_address_mode`` is:

- ``dhcpv6-stateful``: SOLICIT gets an ADVERTISE, REQUEST / RENEW / REBIND a REPLY, each with
  the port's own fixed IPv6 address in the client's IA_NA (never a pool lease), and the
  subnet's IPv6 DNS servers;
- ``dhcpv6-stateless``: INFORMATION-REQUEST gets a REPLY with the DNS servers (the address
  comes from the router advertisement, :mod:`controller.ra`).

Either ADVERTISE / REPLY also carries the port's IPv6 ``extra_dhcp_opts``
(:mod:`topology.dhcp_opts`: ``dns-server``, ``domain-search``, ``ntp-server``, ``bootfile-url``...),
each replacing the subnet's option of the same code. As dnsmasq serves them (Neutron's DHCP
agent writes them to its options file, as ``dhcp-option`` lines, not forced), a port's option goes to a
client that listed it in its Option Request option (ORO), or that sent no ORO; one the client did
not list is left out and the subnet's option of that code, if any, goes as usual (as dnsmasq then
sends its default DNS server). The information refresh time (option 32) only goes in the REPLY
to an INFORMATION-REQUEST, the one message it is defined for (RFC 8415 21.23).

CONFIRM is answered Success when the client's addresses are the port's, NotOnLink otherwise;
RELEASE and DECLINE get a Success REPLY. A message naming another server's DUID is left alone.
The server's DUID is stable (DUID-LL of :data:`controller.dhcp.SERVER_MAC`), as is its
link-local source address, so a client renews with the same server across controller
restarts and instances.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import netaddr
from os_ken.lib.packet import dhcp6, ethernet, ipv6, packet, udp

from controller.dhcp import SERVER_MAC, Answer, headers
from controller.ra import PREFERRED_LIFETIME, VALID_LIFETIME
from flows.dhcp import dhcp6_subnets
from flows.portsec import DHCP6_CLIENT, DHCP6_SERVER
from topology import dhcp_opts
from topology.graph import TopologyGraph
from topology.model import Port

SERVER_DUID = struct.pack("!HH", 3, 1) + netaddr.EUI(SERVER_MAC).packed  # DUID-LL, Ethernet
SERVER_LLA = str(netaddr.EUI(SERVER_MAC).ipv6_link_local())
OPTION_DNS_SERVERS, OPTION_DOMAIN_LIST, OPTION_INFORMATION_REFRESH_TIME = 23, 24, 32
STATUS_SUCCESS, STATUS_NOT_ON_LINK = 0, 4
NAMES = {dhcp6.DHCPV6_SOLICIT: "solicit", dhcp6.DHCPV6_ADVERTISE: "advertise", dhcp6.DHCPV6_REQUEST: "request",
         dhcp6.DHCPV6_CONFIRM: "confirm", dhcp6.DHCPV6_RENEW: "renew", dhcp6.DHCPV6_REBIND: "rebind",
         dhcp6.DHCPV6_REPLY: "reply", dhcp6.DHCPV6_RELEASE: "release", dhcp6.DHCPV6_DECLINE: "decline",
         dhcp6.DHCPV6_INFORMATION_REQUEST: "information-request"}
CONFIGURED = frozenset({dhcp6.DHCPV6_SOLICIT, dhcp6.DHCPV6_REQUEST, dhcp6.DHCPV6_RENEW, dhcp6.DHCPV6_REBIND,
                        dhcp6.DHCPV6_INFORMATION_REQUEST})  # the messages whose answer carries the options


@dataclass(frozen=True)
class Lease6:
    """What one port is offered by DHCPv6: its address (stateful only), the subnet's DNS servers, its options."""

    address: str | None
    prefix: str
    dns: tuple[str, ...]
    domain: str
    extra: tuple[tuple[int, bytes], ...] = ()  # the port's IPv6 extra_dhcp_opts, encoded


def lease6_for(graph: TopologyGraph, port: Port, domain: str = "") -> Lease6 | None:
    """The DHCPv6 lease of ``port``, or None if none of its subnets is in a DHCPv6 mode (under the lock)."""
    subnets = dhcp6_subnets(graph, port)
    if not subnets:
        return None
    subnet = subnets[0]
    stateful = subnet.attrs.get("ipv6_address_mode") == "dhcpv6-stateful"
    address = next((f.ip_address for f in port.fixed_ips if f.subnet_id == subnet.id), None)
    return Lease6(address=address if stateful else None, prefix=subnet.cidr,
                  dns=tuple(d for d in subnet.attrs.get("dns_nameservers") or () if ":" in d), domain=domain,
                  extra=dhcp_opts.served(port.attrs.get("extra_dhcp_opts") or (), 6))


def answer6(frame: bytes, lease: Lease6) -> Answer:
    """The reply to one client frame (as it left the port) for a port offered ``lease``."""
    # (os-ken's udp hands ports 546 / 547 to its DHCPv6 parser)
    eth, ip, datagram, msg = headers(frame, ethernet.ethernet, ipv6.ipv6, udp.udp, dhcp6.dhcp6) or (None,) * 4
    if eth is None or ip is None or datagram is None or msg is None or datagram.dst_port != DHCP6_SERVER:
        return Answer("malformed")
    opts = _options(msg)
    kind = msg.msg_type
    name = NAMES.get(kind, f"type{kind}")
    client = opts.get(dhcp6.DHCPV6_OPTION_CLIENTID)
    server = opts.get(dhcp6.DHCPV6_OPTION_SERVERID)
    if client is None and kind != dhcp6.DHCPV6_INFORMATION_REQUEST or server not in (None, SERVER_DUID):
        return Answer(name)  # no client id where one is required, or another server's business
    reply: list[tuple[int, bytes]] = []
    if kind in (dhcp6.DHCPV6_SOLICIT, dhcp6.DHCPV6_REQUEST, dhcp6.DHCPV6_RENEW, dhcp6.DHCPV6_REBIND):
        ia = opts.get(dhcp6.DHCPV6_OPTION_IA_NA)
        if lease.address is None or ia is None or len(ia) < 12:
            return Answer(name)  # stateless: addresses come from the advertisement
        reply.append((dhcp6.DHCPV6_OPTION_IA_NA, _ia_na(ia[:4], lease.address)))
        out_type = dhcp6.DHCPV6_ADVERTISE if kind == dhcp6.DHCPV6_SOLICIT else dhcp6.DHCPV6_REPLY
    elif kind == dhcp6.DHCPV6_INFORMATION_REQUEST:
        out_type = dhcp6.DHCPV6_REPLY
    elif kind == dhcp6.DHCPV6_CONFIRM:
        asked = _ia_addresses(opts.get(dhcp6.DHCPV6_OPTION_IA_NA, b""))
        ours = asked == {lease.address} if lease.address else all(a in netaddr.IPNetwork(lease.prefix) for a in asked)
        reply.append((dhcp6.DHCPV6_OPTION_STATUS_CODE, _status(STATUS_SUCCESS if ours else STATUS_NOT_ON_LINK)))
        out_type = dhcp6.DHCPV6_REPLY
    elif kind in (dhcp6.DHCPV6_RELEASE, dhcp6.DHCPV6_DECLINE):
        reply.append((dhcp6.DHCPV6_OPTION_STATUS_CODE, _status(STATUS_SUCCESS)))
        out_type = dhcp6.DHCPV6_REPLY
    else:
        return Answer(name)
    head = [(dhcp6.DHCPV6_OPTION_CLIENTID, client)] if client is not None else []
    head.append((dhcp6.DHCPV6_OPTION_SERVERID, SERVER_DUID))
    if kind in CONFIGURED:
        reply += _configuration(lease, _requested(opts.get(dhcp6.DHCPV6_OPTION_ORO)),
                                kind == dhcp6.DHCPV6_INFORMATION_REQUEST)
    body = dhcp6.dhcp6(out_type, dhcp6.options([dhcp6.option(c, d) for c, d in head + reply]),
                       transaction_id=msg.transaction_id)
    frame_out = packet.Packet()
    frame_out.add_protocol(ethernet.ethernet(dst=eth.src, src=SERVER_MAC, ethertype=0x86DD))
    frame_out.add_protocol(ipv6.ipv6(src=SERVER_LLA, dst=ip.src, nxt=17, hop_limit=255))
    frame_out.add_protocol(udp.udp(src_port=DHCP6_SERVER, dst_port=DHCP6_CLIENT))
    frame_out.add_protocol(body)
    frame_out.serialize()
    return Answer(name, NAMES[out_type], bytes(frame_out.data))


def _configuration(lease: Lease6, requested: set[int] | None, information: bool) -> list[tuple[int, bytes]]:
    """The subnet's options, and the port's that the client asked for (``requested``: None without an ORO),
    which replace the subnet's of the same code; ``information``: in reply to an INFORMATION-REQUEST."""
    subnet = []
    if lease.dns:
        subnet.append((OPTION_DNS_SERVERS, b"".join(netaddr.IPAddress(d).packed for d in lease.dns)))
        if lease.domain:
            subnet.append((OPTION_DOMAIN_LIST, dhcp_opts.dns_names([lease.domain])))
    port = [(code, data) for code, data in lease.extra if (requested is None or code in requested)
            and (information or code != OPTION_INFORMATION_REFRESH_TIME)]
    return [o for o in subnet if o[0] not in {code for code, _ in port}] + port


def _requested(oro: bytes | None) -> set[int] | None:
    """The option codes of an Option Request option (RFC 8415 21.7), None without one."""
    return None if oro is None else {int.from_bytes(oro[at:at + 2], "big") for at in range(0, len(oro) - 1, 2)}


def _options(msg: dhcp6.dhcp6) -> dict[int, bytes]:
    opts = msg.options.option_list if msg.options is not None else []
    return {o.code: bytes(o.data) for o in opts if isinstance(o, dhcp6.option)}


def _ia_na(iaid: bytes, address: str) -> bytes:
    """IA_NA (RFC 8415 21.4): the client's IAID, T1 and T2, one IAADDR with the port's address."""
    iaaddr = netaddr.IPAddress(address).packed + struct.pack("!II", PREFERRED_LIFETIME, VALID_LIFETIME)
    return iaid + struct.pack("!II", PREFERRED_LIFETIME // 2, PREFERRED_LIFETIME * 4 // 5) + struct.pack(
        "!HH", dhcp6.DHCPV6_OPTION_IAADDR, len(iaaddr)) + iaaddr


def _ia_addresses(ia: bytes) -> set[str]:
    """The addresses of the IAADDR options inside an IA_NA."""
    out, at = set(), 12
    while at + 4 <= len(ia):
        code, length = struct.unpack_from("!HH", ia, at)
        if code == dhcp6.DHCPV6_OPTION_IAADDR and length >= 16:
            out.add(str(netaddr.IPAddress(int.from_bytes(ia[at + 4:at + 20], "big"), 6)))
        at += 4 + length
    return out


def _status(code: int) -> bytes:
    return struct.pack("!H", code)
