"""``tenantflow trace``: walk a packet through a hypervisor's compiled pipeline, like ovn-trace.

Example::

    tenantflow trace --db tenantflow.db --hv hv1 --in-port tap3f2a9c1e-7b \\
        eth_dst=ff:ff:ff:ff:ff:ff eth_type=0x806 arp_op=1 arp_tpa=10.0.0.3

It compiles the hypervisor's flows from the stored topology (nothing is read
from a switch) and simulates them with :mod:`flows.simulate`. Live OpenFlow port
numbers are not stored: pass them with ``--ofports name=num,...``; the ones not
given are numbered like the test topologies (tunnels 1-2, ``phy-*`` from 5,
taps from 10 in port-key order, gateway tunnels ``tg-*`` from 1000) and flagged as
assumed. ``--follow`` carries the frame across the tunnel and provider ports to the
other hypervisors. ``--live`` also asks the hypervisor's own Open vSwitch (``ovs-appctl
ofproto/trace``, here or on ``--appctl TARGET``) and compares the verdicts (apps.trace_live):
exit 1 when they differ. A fast-failover group shows the bucket it took (and why the ones
before it were not live); ``--dead`` declares ports down (``hv:port`` or a port of
``--hv``), to see what a dead gateway tunnel changes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flows.compiler import compile_hypervisor
from flows.simulate import (
    DEFAULT_TTL,
    Fabric,
    SimResult,
    SimulationError,
    Step,
    Switch,
    display_packet,
    normalize_packet,
)
from topology.gateways import GATEWAY_PORT_PREFIX, tunnel_ports
from topology.graph import TopologyGraph
from topology.model import TUNNEL_PORT_NAMES, canonical_port_map, canonical_port_name, provider_patch_name, tap_name

BROADCAST = "ff:ff:ff:ff:ff:ff"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(prog="tenantflow trace", description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="tenantflow.db", help="the topology store: an SQLite file or etcd://HOST:PORT[,...][/prefix]")
    ap.add_argument("--hv", required=True, help="hypervisor name")
    ap.add_argument("--in-port", required=True, help="OpenFlow port number, OVS port name or logical port id")
    ap.add_argument("--ofports", default="", help="live port map: name=num,... (per --hv)")
    ap.add_argument("--follow", action="store_true", help="follow the frame to the other hypervisors")
    ap.add_argument("--dead", default="", help="ports that are down: [hv:]name,... (no hv: a port of --hv)")
    ap.add_argument("--live", action="store_true",
                    help="also trace the packet with the hypervisor's own OVS (ovs-appctl ofproto/trace, run here, or "
                         "on --appctl's target) and compare the verdicts: exit 1 if they differ")
    ap.add_argument("--appctl", default="", metavar="TARGET",
                    help="with --live: the vswitchd to ask (ovs-appctl -t TARGET; default: this host's)")
    ap.add_argument("--bridge", default="br-int", help="with --live: the integration bridge (br-int)")
    ap.add_argument("fields", nargs="*", metavar="field=value", help="packet header fields")
    args = ap.parse_args(list(argv))
    if args.live and args.follow:
        ap.error("--live compares one hypervisor's verdict with its OVS: not with --follow")
    return args


def live_ofports(args: argparse.Namespace) -> None:
    """``--live``: the bridge's real port numbers, read from its vswitchd, go first in ``--ofports``."""
    from apps.trace_live import LiveError, appctl, datapath_ports, ofports_of

    live = ofports_of(datapath_ports(appctl(args.appctl, "dpif/show")), args.bridge)
    if not live:
        raise LiveError(f"no bridge {args.bridge!r} on that vswitchd ({args.appctl or 'this host'}'s)")
    args.dp_ports_map = live
    canonical = canonical_port_map(live)[0]
    args.ofports = ",".join([*(f"{n}={k}" for n, k in canonical.items()), *filter(None, [args.ofports])])


def live_verdict(args: argparse.Namespace, result: SimResult, packet: dict) -> tuple[list[str], bool]:
    """OVS's ``ofproto/trace`` of ``packet`` on the bridge, against the simulator's ``result``: lines, agree?"""
    from apps.trace_live import (
        appctl,
        datapath_actions,
        datapath_ports,
        flow_text,
        odp_names,
        ovs_exits,
        simulated_exits,
        verdict_text,
    )

    ports = datapath_ports(appctl(args.appctl, "dpif/show"))
    flow = flow_text(packet)
    trace = appctl(args.appctl, "ofproto/trace", args.bridge, flow)
    names = {num: name for name, num in args.dp_ports_map.items()}
    tunnels = {n for n in args.dp_ports_map if canonical_port_name(n) in TUNNEL_PORT_NAMES.values()
               or n.startswith(GATEWAY_PORT_PREFIX)}
    sim, ovs = simulated_exits(result, names, tunnels), ovs_exits(trace, odp_names(ports, args.bridge))
    agree = sim == ovs
    lines = [f"== ovs-appctl{' -t ' + args.appctl if args.appctl else ''} ofproto/trace {args.bridge} {flow}"]
    lines += [f"   datapath actions: {a}" for a in datapath_actions(trace)]
    lines += [f"simulator: {verdict_text(sim)}", f"ovs:       {verdict_text(ovs)}",
              "agree" if agree else "DISAGREE: the simulator and the switch differ (tenantflow check shows its flows)"]
    return lines, agree


def assumed_ofports(graph: TopologyGraph, hv_name: str) -> dict[str, int]:
    """A plausible port map for a hypervisor whose switch is not connected."""
    ofports = {"tf-vxlan": 1, "tf-geneve": 2}
    hv = graph.hypervisor(hv_name)
    for i, physnet in enumerate(sorted(hv.bridge_mappings if hv else ())):
        ofports[provider_patch_name(physnet)] = 5 + i
    for i, port in enumerate(sorted(graph.ports_on(hv_name), key=lambda p: p.key)):
        ofports[port.ofport_name] = 10 + i
    for i, name in enumerate(sorted(tunnel_ports(graph, hv_name))):
        ofports[name] = 1000 + i
    return ofports


def dead_ports(text: str, hv: str) -> dict[str, set[str]]:
    """``--dead``: hypervisor -> names of its ports that are down."""
    dead: dict[str, set[str]] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        where, sep, name = item.rpartition(":")
        dead.setdefault(where if sep else hv, set()).add(name)
    return dead


def _parse_pairs(text: str, what: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{what}: expected name=value, got {item!r}")
        pairs[name] = value
    return pairs


def build_packet(graph: TopologyGraph, hv: str, ofports: dict[str, int], in_port: str,
                 fields: Sequence[str]) -> dict[str, int | str]:
    """The packet to trace: the given fields, with defaults taken from the sending port.

    Defaults: ``eth_src`` (and ``arp_sha``/``arp_spa`` for ARP) from the logical
    port behind ``in_port``, ``eth_dst`` broadcast, ``eth_type`` ARP when an
    ``arp_*`` field is given, else IPv4; an IP packet's ``nw_ttl`` 64.
    """
    pkt: dict[str, int | str] = {}
    for item in fields:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected field=value, got {item!r}")
        pkt[name] = value
    if in_port.isdigit():
        pkt["in_port"] = int(in_port)
    else:
        name = in_port if in_port in ofports else tap_name(in_port)
        if name not in ofports:
            raise ValueError(f"{hv} has no port {in_port!r} (known: {', '.join(sorted(ofports))})")
        pkt["in_port"] = ofports[name]
    names = {num: name for name, num in ofports.items()}
    port = next((p for p in graph.ports_on(hv) if p.ofport_name == names.get(int(pkt["in_port"]))), None)
    is_arp = any(k.startswith("arp_") for k in pkt)
    pkt.setdefault("eth_type", "0x0806" if is_arp else "0x0800")
    if int(str(pkt["eth_type"]), 0) in (0x0800, 0x86DD):
        # A sent packet's TTL, stated: a flow matching nw_ttl (a router's "expired" flow, on 0 or 1)
        # must see it, as OVS does (and ofproto/trace, which takes 0 for an unnamed field).
        pkt.setdefault("nw_ttl", DEFAULT_TTL)
    pkt.setdefault("eth_dst", BROADCAST)
    if port is not None:
        pkt.setdefault("eth_src", port.mac_address)
        if is_arp:
            pkt.setdefault("arp_op", 1)
            pkt.setdefault("arp_sha", port.mac_address)
            v4 = [f.ip_address for f in port.fixed_ips if ":" not in f.ip_address]
            if v4:
                pkt.setdefault("arp_spa", v4[0])
    return pkt


def _fmt_packet(pkt: dict, before: dict | None = None) -> str:
    shown = []
    for k, v in pkt.items():
        v_text = hex(v) if k == "eth_type" and isinstance(v, int) else str(v)
        changed = before is not None and before.get(k) != v
        shown.append(f"{k}={v_text}{'*' if changed else ''}")
    if before is not None:
        shown += [f"-{k}" for k in before if k not in pkt]
    return " ".join(shown)


def render(hv: str, result: SimResult, packet: dict, port_names: dict[int, str]) -> list[str]:
    """ovn-trace-like lines for one switch's walk: each lookup indented by resubmit depth."""
    before = display_packet(normalize_packet(packet))
    lines = [f"== {hv}: in_port={packet['in_port']} ({port_names.get(int(packet['in_port']), '?')})",
             f"   {_fmt_packet(before)}"]
    lines += _render_steps(result.trace)
    for err in result.errors:
        lines.append(f"   ERROR: {err}")
    if not result.outputs:
        lines.append("   outputs: none (dropped)")
    for port, out in result.outputs:
        lines.append(f"   output {port} ({port_names.get(port, '?')}): {_fmt_packet(out, before)}")
    return lines


def _render_steps(trace: list[Step], call: int = 0) -> list[str]:
    """Lines for the lookups of one resubmit ``call`` (0: the walk from table 0), each
    resubmit's own lookups nested under the event that made them."""
    lines: list[str] = []
    for st in (st for st in trace if st.call == call):
        pad = "   " + "    " * st.depth
        if st.priority is None:
            lines.append(f"{pad}{st.table_id}. {st.stage}: no match, drop")
            continue
        lines.append(f"{pad}{st.table_id}. {st.stage}, priority {st.priority}: {st.description}")
        lines.append(f"{pad}   match: {st.match}")
        if st.actions:
            lines.append(f"{pad}   actions: {', '.join(st.actions)}")
        for i, event in enumerate(st.events):
            lines.append(f"{pad}   -> {event}")
            if i in st.call_at:  # a resubmit, a ct fork: its lookups, nested under it
                lines += _render_steps(trace, st.call_at[i])
    return lines


def prepare(graph: TopologyGraph, args: argparse.Namespace) -> tuple[list[str], dict]:
    """Give every hypervisor of ``graph`` a port map (live, ``--ofports``, else assumed) and build the packet.

    Returns the lines to print first (the assumed port numbers) and the packet.
    """
    lines: list[str] = []
    given = {k: int(v) for k, v in _parse_pairs(args.ofports, "--ofports").items()}
    for hv in graph.hypervisors():
        live = graph.ofports(hv.name)
        extra = given if hv.name == args.hv else {}
        if live and not extra:
            continue
        measured = args.live and hv.name == args.hv  # the switch's own map, nothing assumed beside it
        ofports = {**({} if measured else live or assumed_ofports(graph, hv.name)), **extra}
        if not live and hv.name == args.hv and (assumed := sorted(set(ofports) - set(given))):
            lines.append(f"(assumed ofports on {hv.name}: " + ", ".join(f"{n}={ofports[n]}" for n in assumed) + ")")
        graph.set_ofports(hv.name, ofports)  # only in this process's copy of the graph
    return lines, build_packet(graph, args.hv, graph.ofports(args.hv), args.in_port, args.fields)


def run(graph: TopologyGraph, args: argparse.Namespace) -> tuple[list[str], int]:
    """Trace per ``args`` on ``graph``; return the lines to print and the exit code."""
    if graph.hypervisor(args.hv) is None:
        return [f"unknown hypervisor {args.hv!r}"], 2
    lines, packet = prepare(graph, args)
    names = {hv.name: {n: k for k, n in graph.ofports(hv.name).items()} for hv in graph.hypervisors()}
    dead = dead_ports(args.dead, args.hv)
    if not args.follow:
        sw = Switch(args.hv, compile_hypervisor(graph, args.hv), graph.ofports(args.hv))
        result = sw.pipeline.run(packet, strict=False, dead_ports=sw.port_numbers(dead.get(args.hv, ())))
        lines += render(args.hv, result, packet, names[args.hv])
        if args.live:  # and what the hypervisor's own Open vSwitch says of the same packet
            live_lines, agree = live_verdict(args, result, packet)
            return lines + live_lines, 1 if result.errors or not agree else 0
        return lines, 1 if result.errors else 0
    fabric = Fabric(Switch(hv.name, compile_hypervisor(graph, hv.name), graph.ofports(hv.name), hv.tunnel_ip,
                           frozenset(TUNNEL_PORT_NAMES.values())) for hv in graph.hypervisors())
    res = fabric.inject(args.hv, packet, strict=False, dead_ports=dead)
    for (name, sim), pkt in zip(res.walks, res.entries, strict=True):
        lines += render(name, sim, pkt, names[name])
    lines.append("delivered: " + (", ".join(f"{d.hv}:{d.port}" for d in res.deliveries) or "nowhere"))
    lines += [f"lost: {x}" for x in res.lost]
    return lines, 1 if any(sim.errors for _, sim in res.walks) else 0


def main(argv: Sequence[str]) -> int:
    """Entry point of ``tenantflow trace``."""
    args = parse_args(argv)
    from apps.trace_live import LiveError
    from topology.state import Topology  # lazily: it opens SQLite, and only this path needs it
    from topology.store_check import StoreFault

    try:
        topo = Topology(args.db)
    except StoreFault as fault:  # the controller's own check and line (README "The store")
        print(f"tenantflow trace: {fault.line()}", file=sys.stderr)
        return fault.exit_code
    try:
        if args.live:
            live_ofports(args)
        lines, code = run(topo.graph, args)
    except (ValueError, SimulationError, LiveError) as exc:
        print(f"tenantflow trace: {exc}", file=sys.stderr)
        return 2
    finally:
        close = getattr(topo, "close", None)
        if close:
            close()
    print("\n".join(lines))
    return code
