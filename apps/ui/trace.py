"""``POST /trace``: a packet from a port, walked through the flows its hypervisor holds, like ``tenantflow trace``.

The request names a port and the packet's fields; the walk is the simulator's
(:mod:`flows.simulate`) on the flows the controller keeps for each hypervisor (the same
the switches hold once synced) with the live OpenFlow port numbers, followed across the
fabric to the other hypervisors when ``follow`` is set. Nothing is sent to a switch.

Fields the request leaves out are taken from the port, so ``ipv4_dst=10.0.0.7`` alone is a
ping: the port's MAC and address as source, ICMP echo, and as destination MAC the port
holding that address on the same network, else the router interface of the port's subnet
(the gateway), else broadcast. ``arp_tpa=...`` alone is an ARP request from the port.

The graph is read under the topology's lock (:func:`prepare`); the walk runs outside it
(:func:`run`) on copies of the flows and port maps, so a long trace never holds up a write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import netaddr

from apps.northbound import limits
from apps.trace import build_packet, render
from flows.flow import CONTROLLER, Flow
from flows.simulate import FIELDS, Fabric, SimulationError, Switch, to_int
from topology import graph_l3
from topology.graph import TopologyGraph
from topology.model import TUNNEL_PORT_NAMES, Port
from topology.store import BadRequest

MAX_FIELDS = 32


class TraceError(ValueError):
    """A trace that cannot be run as asked: ``status`` 400 (bad request), 404 (no port) or 409 (not plugged)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TraceRequest:
    """What ``POST /trace`` asked."""

    port_id: str
    fields: tuple[str, ...]
    follow: bool


@dataclass
class Prepared:
    """A trace ready to run outside the lock: the packet and copies of what it walks through."""

    hypervisor: str
    packet: dict[str, int | str]
    switches: list[Switch]
    ports: dict[tuple[str, str], str]  # (hypervisor, OVS port name) -> the logical port id behind it
    follow: bool


def parse_request(body: bytes) -> TraceRequest:
    """The JSON body ``{"port_id": ..., "packet": "field=value ...", "follow": bool}``; TraceError 400 if bad.

    ``packet`` may also be a list of ``field=value`` strings or an object of fields.
    """
    try:
        doc = limits.parse_json(body or b"{}")  # the API's rules for a body: depth, UTF-8, finite numbers
    except BadRequest as exc:
        raise TraceError(400, f"the body is not JSON as the API takes it: {exc.message}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("port_id"), str) or not doc["port_id"]:
        raise TraceError(400, 'expected {"port_id": "<port id>", "packet": "field=value ...", "follow": true}')
    packet = doc.get("packet", "")
    if isinstance(packet, str):
        fields = packet.split()
    elif isinstance(packet, dict):
        fields = [f"{k}={v}" for k, v in packet.items()]
    elif isinstance(packet, list) and all(isinstance(x, str) for x in packet):
        fields = list(packet)
    else:
        raise TraceError(400, "packet must be a string of field=value pairs, a list of them or an object")
    if len(fields) > MAX_FIELDS:
        raise TraceError(400, f"at most {MAX_FIELDS} packet fields")
    for item in fields:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise TraceError(400, f"expected field=value, got {item!r}")
        if name not in FIELDS:
            raise TraceError(400, f"unknown packet field {name!r} (known: {', '.join(sorted(FIELDS))})")
        try:
            to_int(name, value)
        except (SimulationError, netaddr.AddrFormatError, ValueError) as exc:
            raise TraceError(400, f"{name}: not a valid value: {value!r} ({exc})") from None
    follow = doc.get("follow", True)
    if not isinstance(follow, bool):
        raise TraceError(400, "follow must be true or false")
    return TraceRequest(doc["port_id"], tuple(fields), follow)


def prepare(graph: TopologyGraph, req: TraceRequest, flows_of: Callable[[str], Iterable[Flow]]) -> Prepared:
    """Under the topology's lock: the packet, and each plugged hypervisor's flows and port map, copied.

    ``flows_of(hv)``: the flows the controller keeps for ``hv``.
    """
    port = graph.port(req.port_id)
    if port is None:
        raise TraceError(404, f"Port {req.port_id} could not be found.")
    hv = port.binding_host
    if not hv or graph.hypervisor(hv) is None:
        raise TraceError(409, f"port {port.id} is bound to no registered hypervisor: nowhere to trace from")
    ofports = dict(graph.ofports(hv)) if graph.connected(hv) else {}  # (a bridge away keeps its last map)
    if port.ofport_name not in ofports:
        raise TraceError(409, f"port {port.id} is not plugged: {hv}'s bridge has no {port.ofport_name} "
                              "(or is not connected)")
    fields = with_defaults(graph, port, list(req.fields))
    try:
        packet = build_packet(graph, hv, ofports, port.ofport_name, fields)
    except ValueError as exc:
        raise TraceError(400, str(exc)) from None
    names = [hv] if not req.follow else [h.name for h in graph.hypervisors() if graph.connected(h.name)]
    switches = [Switch(name, list(flows_of(name)), {**graph.ofports(name), "controller": CONTROLLER},
                       graph.hypervisor(name).tunnel_ip, frozenset(TUNNEL_PORT_NAMES.values())) for name in names]
    ports = {(p.binding_host, p.ofport_name): p.id for name in names for p in graph.ports_on(name)}
    return Prepared(hv, packet, switches, ports, req.follow)


def with_defaults(graph: TopologyGraph, port: Port, fields: list[str]) -> list[str]:
    """``fields`` completed from the port: source addresses, ICMP echo, the destination's MAC."""
    given = dict(f.partition("=")[::2] for f in fields)
    out = list(fields)

    def default(name: str, value: object) -> None:
        if name not in given and value is not None:
            given[name] = str(value)
            out.append(f"{name}={value}")

    for version, dst, src, proto, icmp in ((4, "ipv4_dst", "ipv4_src", 1, "icmpv4_type=8"),
                                           (6, "ipv6_dst", "ipv6_src", 58, "icmpv6_type=128")):
        if dst not in given:
            continue
        default("eth_type", "0x0800" if version == 4 else "0x86dd")
        default("nw_ttl", 64)  # shown in the packet sent: the simulator's own default, said out loud
        default(src, next((f.ip_address for f in port.fixed_ips if _version(f.ip_address) == version), None))
        if "ip_proto" not in given:
            default("ip_proto", proto)
            default(*icmp.split("="))
        default("eth_dst", _next_hop_mac(graph, port, given[dst]))
    return out


def _version(address: str) -> int:
    return 6 if ":" in address else 4


def _next_hop_mac(graph: TopologyGraph, port: Port, dst: str) -> str | None:
    """The MAC a VM on ``port`` sends to for ``dst``: the port holding it on its network, else its gateway's."""
    try:
        target = netaddr.IPAddress(dst)
    except (netaddr.AddrFormatError, ValueError):
        raise TraceError(400, f"not an IP address: {dst!r}") from None
    for other in graph.ports_of(port.network_id):
        if any(netaddr.IPAddress(f.ip_address) == target for f in other.fixed_ips):
            return other.mac_address
    for subnet in graph_l3.port_subnets(graph, port):
        if subnet.ip_version == target.version:
            router_port = graph_l3.subnet_router_port(graph, subnet)
            if router_port is not None:
                return router_port.mac_address
    return None


def run(prep: Prepared) -> dict[str, Any]:
    """Walk the packet (outside the lock); the answer of ``POST /trace``."""
    try:
        if not prep.follow:
            sw = prep.switches[0]
            walks = [(sw.name, sw.pipeline.run(prep.packet, strict=False), prep.packet)]
            outputs = [(sw.name, sw.port_names.get(port, str(port))) for port, _ in walks[0][1].outputs]
            lost: list[str] = []
        else:
            res = Fabric(prep.switches).inject(prep.hypervisor, prep.packet, strict=False)
            walks = [(name, sim, pkt) for (name, sim), pkt in zip(res.walks, res.entries, strict=True)]
            outputs = [(d.hv, d.port) for d in res.deliveries]
            lost = list(res.lost)
    except (SimulationError, ValueError, KeyError, TypeError) as exc:
        raise TraceError(400, f"the packet cannot be simulated: {exc}") from None
    by_name = {sw.name: sw for sw in prep.switches}
    lines: list[str] = []
    for name, sim, pkt in walks:
        lines += render(name, sim, pkt, by_name[name].port_names)
    delivered = [{"hypervisor": hv, "port": name, "port_id": prep.ports.get((hv, name))} for hv, name in outputs]
    lines.append("delivered: " + (", ".join(f"{d['hypervisor']}:{d['port']}" for d in delivered) or "nowhere"))
    lines += [f"lost: {x}" for x in lost]
    return {"hypervisor": prep.hypervisor, "packet": {k: str(v) for k, v in prep.packet.items()},
            "delivered": delivered, "lost": lost, "errors": [e for _, sim, _ in walks for e in sim.errors],
            "lines": lines}
