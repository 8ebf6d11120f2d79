"""``tenantflow trace --live``: the simulator's verdict against Open vSwitch's own ``ofproto/trace``.

On the hypervisor (or wherever its vswitchd's unixctl socket is reachable: ``--appctl
TARGET`` is ``ovs-appctl -t TARGET``, e.g. a lab hypervisor's ``<rundir>/ovs-vswitchd.ctl``):

1. the bridge's port map is read from the vswitchd (``dpif/show``: each port's OpenFlow
   and datapath numbers), so the simulation runs with the live OpenFlow port numbers;
2. the same packet, written in ovs-ofctl's flow syntax, is traced by OVS itself
   (``ofproto/trace BRIDGE FLOW``), conntrack recirculations included (OVS resumes them as
   ``trk,new``, as the simulator tracks a first packet);
3. both verdicts are reduced to where the packet leaves the bridge: each output port by
   name, with the tunnel's destination and key for a tunnel port, ``CONTROLLER`` for a
   packet-in; nothing is a drop. OVS's are read from its datapath actions: a port number
   there is mapped back to the bridge's port (a port of a bridge reached through a patch
   port counts as that patch port; what a tunnel then sends on the underlay is not the
   bridge's), ``tnl_push`` to its tunnel port, destination and VNI.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import netaddr

from flows.flow import CONTROLLER
from flows.ofctl import field_name
from flows.simulate import ETH_TYPE_IPV4, ETH_TYPE_IPV6, FIELDS, SimResult, normalize_packet


class LiveError(RuntimeError):
    """OVS could not be asked (no ovs-appctl, no such target or bridge)."""


def appctl(target: str, *args: str, timeout: float = 30.0) -> str:
    """``ovs-appctl [-t TARGET] ARGS``: its output; LiveError with its message if it fails."""
    argv = ["ovs-appctl", *(["-t", target] if target else []), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LiveError(f"{' '.join(argv[:4])}...: {exc}") from None
    if proc.returncode != 0:
        raise LiveError(f"{' '.join(argv[:4])}...: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


@dataclass(frozen=True)
class DpPort:
    """One port of ``dpif/show``: its bridge, OpenFlow and datapath numbers, and its patch peer if any."""

    bridge: str
    name: str
    ofport: int
    odp: int | None
    peer: str | None


_DP_PORT = re.compile(r"^\s{4}(\S+) (\d+)/(\d+|none):(.*)$")
_DP_BRIDGE = re.compile(r"^\s{2}(\S+):\s*$")


def datapath_ports(text: str) -> list[DpPort]:
    """Every port ``ovs-appctl dpif/show`` lists."""
    ports, bridge = [], ""
    for line in text.splitlines():
        if m := _DP_BRIDGE.match(line):
            bridge = m.group(1)
        elif (m := _DP_PORT.match(line)) and bridge:
            peer = re.search(r"peer=([^,)\s]+)", m.group(4))
            ports.append(DpPort(bridge, m.group(1), int(m.group(2)), None if m.group(3) == "none" else int(m.group(3)),
                                peer.group(1) if peer else None))
    return ports


def ofports_of(ports: list[DpPort], bridge: str) -> dict[str, int]:
    """The bridge's port map: name -> OpenFlow port number (its own LOCAL port left out)."""
    return {p.name: p.ofport for p in ports if p.bridge == bridge and p.name != bridge}


def odp_names(ports: list[DpPort], bridge: str) -> dict[int, str]:
    """Datapath port number -> the bridge's port a packet leaving by it left the bridge by.

    The bridge's own ports are themselves; every port of a bridge one of its patch ports leads to
    counts as that patch port (OVS follows patch ports inside one datapath pass).
    """
    names = {p.odp: p.name for p in ports if p.bridge == bridge and p.odp is not None and p.name != bridge}
    by_name = {p.name: p for p in ports}
    for patch in (p for p in ports if p.bridge == bridge and p.peer):
        peer = by_name.get(patch.peer or "")
        if peer is not None:
            names.update({q.odp: patch.name for q in ports if q.bridge == peer.bridge and q.odp is not None})
    return names


def flow_text(packet: Mapping[str, int | str]) -> str:
    """The packet in ovs-ofctl's flow syntax, as ``ofproto/trace`` takes it.

    IPv4 and IPv6 packets carry a TTL of 64 unless given (the simulator's default; OVS's is 0,
    which a router's dec_ttl would drop).
    """
    pkt = normalize_packet(packet)
    if pkt.get("eth_type") in (ETH_TYPE_IPV4, ETH_TYPE_IPV6):
        pkt.setdefault("nw_ttl", 64)
    first = [k for k in ("in_port", "eth_src", "eth_dst", "eth_type", "ip_proto") if k in pkt]  # prerequisites first
    return ",".join(_field_text(k, pkt[k]) for k in first + sorted(set(pkt) - set(first)))


def _field_text(name: str, value: int) -> str:
    kind = FIELDS.get(name, ("int", 0))[0]
    if name == "vlan_vid":
        return f"dl_vlan={value}"
    if kind == "mac":
        return f"{field_name(name)}={netaddr.EUI(value, dialect=netaddr.mac_unix_expanded)}"
    if kind in ("ipv4", "ipv6"):
        return f"{field_name(name)}={netaddr.IPAddress(value, 4 if kind == 'ipv4' else 6)}"
    if name == "eth_type":
        return f"dl_type={value:#06x}"
    return f"{field_name(name)}={value}"


@dataclass(frozen=True, order=True)
class Exit:
    """Where a packet leaves the bridge: a port (by name), with a tunnel's destination and key."""

    port: str
    tun_dst: str = ""
    key: int | None = None

    def __str__(self) -> str:
        if self.tun_dst or self.key is not None:
            return f"{self.port} (tun_dst={self.tun_dst}, key={self.key})"
        return self.port


def simulated_exits(result: SimResult, names: Mapping[int, str], tunnel_ports: set[str]) -> list[Exit]:
    """The simulator's verdict: each output, by port name (a tunnel port with its destination and key)."""
    exits = []
    for port, pkt in result.outputs:
        name = "CONTROLLER" if port == CONTROLLER else names.get(port, str(port))
        if name in tunnel_ports:
            exits.append(Exit(name, str(pkt.get("tun_ipv4_dst", "")), int(pkt.get("tunnel_id", 0))))
        else:
            exits.append(Exit(name))
    return sorted(exits)


def datapath_actions(trace: str) -> list[str]:
    """Every ``Datapath actions:`` line of an ``ofproto/trace`` (one per conntrack recirculation)."""
    return [line.split(":", 1)[1].strip() for line in trace.splitlines() if line.startswith("Datapath actions:")]


def ovs_exits(trace: str, names: Mapping[int, str]) -> list[Exit]:
    """OVS's verdict, from its datapath actions (see the module's docstring)."""
    exits = []
    for actions in datapath_actions(trace):
        tunnel: tuple[str, int | None] | None = None  # set(tunnel(...)) before an output (the kernel datapath's way)
        for act in _split(actions):
            if act.isdigit():
                name = names.get(int(act))
                if name is not None:
                    exits.append(Exit(name, *tunnel) if tunnel else Exit(name))
            elif act.startswith("tnl_push("):
                port = re.search(r"tnl_port\((\d+)\)", act)
                name = names.get(int(port.group(1))) if port else None
                if name is not None:
                    exits.append(Exit(name, *_tunnel_of(act)))
            elif act.startswith("set(tunnel("):
                tunnel = _tunnel_of(act)
            elif act.startswith("userspace(") and "controller(" in act:
                exits.append(Exit("CONTROLLER"))
    return sorted(exits)


def _tunnel_of(act: str) -> tuple[str, int | None]:
    """(destination, key) of a ``tnl_push(...)`` header or ``set(tunnel(...))``."""
    dst = re.search(r"ipv4\(src=[^,]+,dst=([0-9.]+)", act) or re.search(r"dst=([0-9.]+)", act)
    key = re.search(r"(?:vni|key|tun_id)=(0x[0-9a-f]+|\d+)", act)
    return (dst.group(1) if dst else ""), (int(key.group(1), 0) if key else None)


def _split(actions: str) -> list[str]:
    """Datapath actions at the top level (commas inside parentheses belong to their action)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(actions):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(actions[start:i].strip())
            start = i + 1
    out.append(actions[start:].strip())
    return [a for a in out if a]


def verdict_text(exits: list[Exit]) -> str:
    """``tf-vxlan (tun_dst=..., key=1000), tap0`` or ``dropped``."""
    return ", ".join(map(str, exits)) if exits else "dropped"
