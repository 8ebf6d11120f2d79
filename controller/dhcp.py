"""DHCP (IPv4) answers built from the topology: the slow path behind ``ls_in_dhcp`` (flows.dhcp).

Like OVN's ``put_dhcp_opts`` and Neutron's OVS-agent DHCP responder, with nothing to run
on the hypervisor: a client message reaches the controller by packet-in, and the answer
goes straight back out of the port it came from. A port is only ever offered its own
fixed IPv4 address (never a pool lease), with its subnet's options:

- subnet mask, router (the gateway, if any), DNS servers (``dns_nameservers``), the
  network's MTU, lease time and domain (``--dhcp-lease-time``, ``--dhcp-domain``);
- classless static routes (option 121) when the subnet has ``host_routes``: those and the
  default route through the gateway (RFC 3442: a client that gets option 121 ignores the
  router option);
- the port's own ``extra_dhcp_opts`` (:mod:`topology.dhcp_opts`: PXE's ``tftp-server``,
  ``bootfile-name``, ``server-ip-address``...), which replace the subnet's of the same number.

DISCOVER gets an OFFER; REQUEST an ACK, or a NAK when it asks for an address that is not
the port's (a changed fixed IP reaches the VM at its next renewal: the renewal's NAK makes
it start over); INFORM an ACK with the options only; RELEASE and DECLINE no answer (a
DECLINE is logged: someone else answers ARP for the port's address). A REQUEST naming
another server is that server's business.

The server is the subnet's gateway (its router interface's MAC when a router is
attached); a subnet without a gateway is served from ``169.254.169.254`` and
:data:`SERVER_MAC` (never a tenant's address): renewals unicast there find no one and
the client rebinds by broadcast, which is answered.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import netaddr
from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp

from flows.dhcp import served_subnet
from flows.portsec import DHCP_CLIENT, DHCP_SERVER
from topology import dhcp_opts
from topology.graph import TopologyGraph
from topology.graph_l3 import subnet_router_port
from topology.model import Port

LOG = logging.getLogger("tenantflow.dhcp")

SERVER_MAC = "fa:16:3e:00:d4:c9"  # the server's MAC where no router interface holds the gateway
NO_GATEWAY_SERVER = "169.254.169.254"
BROADCAST_IP, BROADCAST_MAC = "255.255.255.255", "ff:ff:ff:ff:ff:ff"
DHCP_DECLINE, DHCP_NAK, DHCP_RELEASE, DHCP_INFORM = 4, 6, 7, 8
NAMES = {dhcp.DHCP_DISCOVER: "discover", dhcp.DHCP_OFFER: "offer", dhcp.DHCP_REQUEST: "request",
         DHCP_DECLINE: "decline", dhcp.DHCP_ACK: "ack", DHCP_NAK: "nak", DHCP_RELEASE: "release",
         DHCP_INFORM: "inform"}
BROADCAST_FLAG = 0x8000


@dataclass(frozen=True)
class Settings:
    """What every subnet's leases share (controller flags)."""

    lease_time: int = 86400  # s, Neutron's dhcp_lease_duration
    domain: str = "openstacklocal"  # Neutron's dns_domain


SETTINGS = Settings()  # set by controller.main from its flags


@dataclass(frozen=True)
class Lease:
    """What one port is offered: its address and its subnet's options."""

    ip: str
    prefix_len: int
    server_ip: str
    server_mac: str
    router: str | None
    dns: tuple[str, ...]
    routes: tuple[tuple[str, str], ...]  # (destination CIDR, next hop): option 121, empty without host routes
    mtu: int
    lease_time: int
    domain: str
    extra: tuple[tuple[int, bytes], ...] = ()  # the port's extra_dhcp_opts, encoded (0: siaddr, next-server)


@dataclass(frozen=True)
class Answer:
    """A client message's kind, the reply's kind ("" for none) and the reply frame (None for none)."""

    request: str
    reply: str = ""
    frame: bytes | None = None


def lease_for(graph: TopologyGraph, port: Port, settings: Settings | None = None) -> Lease | None:
    """The lease ``port`` is offered, or None if none of its subnets serves DHCP (under the topology's lock).

    ``settings``: :data:`SETTINGS` unless given.
    """
    settings = settings or SETTINGS
    served = served_subnet(graph, port)
    net = graph.network(port.network_id)
    if served is None or net is None:
        return None
    subnet, address = served
    gateway = subnet.gateway_ip
    router = subnet_router_port(graph, subnet) if gateway else None
    holds_gateway = router is not None and any(f.ip_address == gateway for f in router.fixed_ips)
    server_mac = router.mac_address if holds_gateway else SERVER_MAC
    host_routes = tuple((r["destination"], r["nexthop"]) for r in subnet.attrs.get("host_routes") or ()
                        if netaddr.IPNetwork(r["destination"]).version == 4)
    if host_routes and gateway and all(netaddr.IPNetwork(d).prefixlen for d, _ in host_routes):
        host_routes += (("0.0.0.0/0", gateway),)
    return Lease(ip=address, prefix_len=netaddr.IPNetwork(subnet.cidr).prefixlen,
                 server_ip=gateway or NO_GATEWAY_SERVER, server_mac=server_mac, router=gateway,
                 dns=tuple(d for d in subnet.attrs.get("dns_nameservers") or () if ":" not in d),
                 routes=host_routes, mtu=net.mtu, lease_time=settings.lease_time, domain=settings.domain,
                 extra=dhcp_opts.served(port.attrs.get("extra_dhcp_opts") or (), 4))


def headers(frame: bytes, *kinds: type) -> tuple | None:
    """The headers of each of ``kinds`` os-ken finds in ``frame`` (None where absent); None if it cannot parse it."""
    try:
        pkt = packet.Packet(frame)
    except Exception:  # noqa: BLE001 - os-ken's parsers raise anything on garbage
        return None
    return tuple(pkt.get_protocol(kind) for kind in kinds)


def answer(frame: bytes, lease: Lease) -> Answer:
    """The reply to one client frame (as it left the port) for a port offered ``lease``."""
    eth, ip, msg = headers(frame, ethernet.ethernet, ipv4.ipv4, dhcp.dhcp) or (None, None, None)
    if eth is None or ip is None or msg is None or msg.op != dhcp.DHCP_BOOT_REQUEST:
        return Answer("malformed")
    options = _options(msg)
    kind = options.get(dhcp.DHCP_MESSAGE_TYPE_OPT, b"\0")[0]
    name = NAMES.get(kind, f"type{kind}")
    if kind == dhcp.DHCP_DISCOVER:
        return Answer(name, "offer", _reply(eth, msg, lease, dhcp.DHCP_OFFER))
    if kind == dhcp.DHCP_REQUEST:
        server = options.get(dhcp.DHCP_SERVER_IDENTIFIER_OPT)
        if server is not None and server != netaddr.IPAddress(lease.server_ip).packed:
            return Answer(name)  # the client chose another server's offer
        wanted = options.get(dhcp.DHCP_REQUESTED_IP_ADDR_OPT)
        asked = str(netaddr.IPAddress(int.from_bytes(wanted, "big"))) if wanted and len(wanted) == 4 else msg.ciaddr
        if asked != lease.ip:
            return Answer(name, "nak", _reply(eth, msg, lease, DHCP_NAK))
        return Answer(name, "ack", _reply(eth, msg, lease, dhcp.DHCP_ACK))
    if kind == DHCP_INFORM:
        return Answer(name, "ack", _reply(eth, msg, lease, dhcp.DHCP_ACK, inform=True))
    if kind == DHCP_DECLINE:
        LOG.warning("DHCP: %s declined %s (another host answers ARP for it)", eth.src, lease.ip)
    return Answer(name)


def _options(msg: dhcp.dhcp) -> dict[int, bytes]:
    opts = msg.options.option_list if msg.options is not None else []
    return {o.tag: bytes(o.value) for o in opts if isinstance(o, dhcp.option)}


def _reply(eth: ethernet.ethernet, msg: dhcp.dhcp, lease: Lease, kind: int, inform: bool = False) -> bytes:
    """The reply frame, addressed as RFC 2131 4.1 says (from a server on the client's own link)."""
    opts = [(dhcp.DHCP_MESSAGE_TYPE_OPT, bytes([kind])), (dhcp.DHCP_SERVER_IDENTIFIER_OPT, _ip(lease.server_ip))]
    if kind != DHCP_NAK:
        if not inform:
            opts += [(dhcp.DHCP_IP_ADDR_LEASE_TIME_OPT, struct.pack("!I", lease.lease_time)),
                     (dhcp.DHCP_RENEWAL_TIME_OPT, struct.pack("!I", lease.lease_time // 2)),
                     (dhcp.DHCP_REBINDING_TIME_OPT, struct.pack("!I", lease.lease_time * 7 // 8))]
        opts.append((dhcp.DHCP_SUBNET_MASK_OPT, _ip(str(netaddr.IPNetwork(f"0.0.0.0/{lease.prefix_len}").netmask))))
        if lease.router:
            opts.append((dhcp.DHCP_GATEWAY_ADDR_OPT, _ip(lease.router)))
        if lease.dns:
            opts.append((dhcp.DHCP_DNS_SERVER_ADDR_OPT, b"".join(_ip(d) for d in lease.dns)))
        if lease.domain:
            opts.append((dhcp.DHCP_DOMAIN_NAME_OPT, lease.domain.encode()))
        opts.append((dhcp.DHCP_INTERFACE_MTU_OPT, struct.pack("!H", lease.mtu)))
        if lease.routes:
            opts.append((dhcp.DHCP_CLASSLESS_ROUTE_OPT, classless_routes(lease.routes)))
        extra = [(code, data) for code, data in lease.extra if code]  # a port's own replace the subnet's
        opts = [o for o in opts if o[0] not in {code for code, _ in extra}] + extra
    yiaddr = lease.ip if kind in (dhcp.DHCP_OFFER, dhcp.DHCP_ACK) and not inform else "0.0.0.0"
    ciaddr = msg.ciaddr if kind == dhcp.DHCP_ACK else "0.0.0.0"
    if kind == DHCP_NAK or (msg.ciaddr == "0.0.0.0" and msg.flags & BROADCAST_FLAG):
        ip_dst, eth_dst = BROADCAST_IP, BROADCAST_MAC
    else:
        ip_dst, eth_dst = (msg.ciaddr if msg.ciaddr != "0.0.0.0" else yiaddr), eth.src
    next_server = next((str(netaddr.IPAddress(int.from_bytes(data, "big"))) for code, data in lease.extra
                        if code == 0 and kind != DHCP_NAK), "0.0.0.0")
    body = dhcp.dhcp(op=dhcp.DHCP_BOOT_REPLY, chaddr=msg.chaddr, xid=msg.xid, flags=msg.flags, ciaddr=ciaddr,
                     yiaddr=yiaddr, siaddr=next_server, giaddr=msg.giaddr,
                     options=dhcp.options([dhcp.option(tag, value) for tag, value in opts]))
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=eth_dst, src=lease.server_mac, ethertype=0x0800))
    out.add_protocol(ipv4.ipv4(src=lease.server_ip, dst=ip_dst, proto=17, ttl=64))
    out.add_protocol(udp.udp(src_port=DHCP_SERVER, dst_port=DHCP_CLIENT))
    out.add_protocol(body)
    out.serialize()
    return bytes(out.data)


def classless_routes(routes: tuple[tuple[str, str], ...]) -> bytes:
    """Option 121 (RFC 3442): per route, the prefix length, the destination's significant octets, the router."""
    out = b""
    for dest, hop in routes:
        net = netaddr.IPNetwork(dest)
        out += bytes([net.prefixlen]) + net.network.packed[:(net.prefixlen + 7) // 8] + _ip(hop)
    return out


def _ip(address: str) -> bytes:
    return netaddr.IPAddress(address).packed
