"""Distributed east-west routing end to end, with real packets (issue #4 acceptance, IPv4).

The real ``tenantflow controller`` process and four lab hypervisors (private OVS in
namespaces on a VXLAN underlay), everything configured through the REST API as
Neutron's clients do: router ``r1`` of project t1 gets three subnets by
``add_router_interface`` (10.1.1.0/24, 10.1.2.0/24, 10.1.3.0/24), then the VMs boot,
each with its default route via its subnet's gateway:

    hv1: v1  (10.1.1.10)            hv2: v2 (10.1.2.10), v1b (10.1.1.11)
    hv3: v3  (10.1.3.10)            hv4: x  (10.9.0.10, an unrelated project's network)

Proofs, all on real frames: ping and TCP between every pair (a reply TTL of 63 from a
Linux VM, whose TTL is 64, is one routed hop; 64 within a subnet); the router's
addresses answer ping from the flows; captures on the hypervisors' underlay NICs
(``underlay0`` in each hypervisor's namespace, where VXLAN leaves and arrives) show
each routed packet crossing once, source hypervisor straight to destination
hypervisor, with the destination network's VNI and the source hypervisor's DVR MAC,
and show hv4 carrying nothing; hv4's bridge holds none of the router's flows; the
controller's packet-in counter stays still; two tenants with the same CIDRs on their
own routers never exchange a packet (the other tenant's ICMP ``InEchos`` counters);
removing an interface cuts its subnet off and leaves no flow of it anywhere, adding it
back restores it.

The VMs' IPv6 is off (routing here is IPv4; issue #4's IPv6 half comes separately):
the guests' router solicitations and MLD reports would otherwise be flooded over the
underlay and blur the captures.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apps.lab import Hypervisor, Lab, LabVM, sh
from apps.lab.controller import ControllerProcess
from tests.e2e_fixtures import (
    ECHO_CLIENT,
    ECHO_SERVER,
    NoPacketIns,
    attached_lab,
    create_network,
    create_port,
    packet_ins,
    require_lab,
    running_controller,
    wait_port_active,
    wait_until,
)
from tests.lab_fixtures import tcp_transfer, wait_listening

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

T1 = "project-t1-" + uuid.uuid4().hex[:8]
OTHER = "project-x-" + uuid.uuid4().hex[:8]
CIDRS = {1: "10.1.1.0/24", 2: "10.1.2.0/24", 3: "10.1.3.0/24"}
# VM name -> (hypervisor, subnet index, address)
LAYOUT = {
    "v1": ("hv1", 1, "10.1.1.10"),
    "v2": ("hv2", 2, "10.1.2.10"),
    "v3": ("hv3", 3, "10.1.3.10"),
    "v1b": ("hv2", 1, "10.1.1.11"),
}
ROUTER_TABLES = (40, 42, 44)  # lr_in_ip_input, lr_in_ip_routing, lr_in_arp_resolve
UNDERLAY_NIC = "underlay0"
VXLAN_PORT = 4789
ECHO_PORT = 7008
MARKER = "7466726f75746564"  # "tfrouted": the payload pattern of the capture marker pings

@dataclass
class Cloud:
    """The module's controller, lab, router r1 and what hangs off it."""

    ctrl: ControllerProcess
    lab: Lab
    workdir: Path
    router: dict[str, Any]
    nets: dict[int, dict[str, Any]]
    subnets: dict[int, dict[str, Any]]
    interfaces: dict[int, dict[str, Any]]  # subnet index -> the interface port (JSON)
    vms: dict[str, LabVM] = field(default_factory=dict)

    def hv(self, name: str) -> Hypervisor:
        return self.lab.hypervisor(name)

    def gateway(self, i: int) -> str:
        return str(self.subnets[i]["gateway_ip"])

    def vni(self, i: int) -> int:
        return int(self.nets[i]["provider:segmentation_id"])

    def router_macs(self) -> set[str]:
        return {p["mac_address"].lower() for p in self.interfaces.values()}


# -- helpers ------------------------------------------------------------------------------


def add_interface(ctrl: ControllerProcess, router_id: str, subnet_id: str) -> dict[str, Any]:
    """PUT add_router_interface by subnet; returns the interface's port."""
    info = ctrl.request("PUT", f"/v2.0/routers/{router_id}/add_router_interface", {"subnet_id": subnet_id})
    assert info["subnet_id"] == subnet_id and info["port_id"], info
    return ctrl.show("port", info["port_id"])


def remove_interface(ctrl: ControllerProcess, router_id: str, subnet_id: str) -> dict[str, Any]:
    """PUT remove_router_interface by subnet."""
    return ctrl.request("PUT", f"/v2.0/routers/{router_id}/remove_router_interface", {"subnet_id": subnet_id})


def plug_routed_vm(
    ctrl: ControllerProcess, lab: Lab, name: str, net: dict[str, Any], subnet: dict[str, Any], host: str, ip: str
) -> LabVM:
    """A port with ``ip`` bound to ``host``, and a VM on it whose default route is the subnet's gateway."""
    port = create_port(ctrl, net, host, fixed_ips=[{"ip_address": ip}])
    vm = lab.plug_vm(name, port, mtu=int(net.get("mtu") or 1450), gateway=subnet["gateway_ip"])
    vm.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
    wait_port_active(ctrl, port["id"])
    return vm


def ping(vm: LabVM, dst: str, count: int = 2, interval: float = 0.2, ttl: int = 64) -> tuple[int, list[int]]:
    """``count`` pings from ``vm`` (sent with ``ttl``): (answers, the TTL of each answer)."""
    out = vm.cmd(f"ping -c{count} -i{interval} -W1 -t{ttl} {dst}")
    m = re.search(r"(\d+) received", out)
    return (int(m.group(1)) if m else 0), [int(t) for t in re.findall(r"ttl=(\d+)", out)]


def reaches(vm: LabVM, dst: str) -> bool:
    return ping(vm, dst, count=1)[0] == 1


def in_echos(vm: LabVM) -> int:
    """``Icmp: InEchos`` of the VM's namespace: echo requests its kernel received."""
    lines = [ln.split() for ln in vm.cmd("cat /proc/net/snmp").splitlines() if ln.startswith("Icmp:")]
    return int(lines[1][lines[0].index("InEchos")])


def dump_flows(hv: Hypervisor) -> list[str]:
    return hv.ofctl("dump-flows", "br-int").splitlines()


def table_flows(hv: Hypervisor, *tables: int) -> list[str]:
    pattern = re.compile(r"\btable=(\d+),")
    return [ln for ln in dump_flows(hv) if (m := pattern.search(ln)) and int(m.group(1)) in tables]


def n_packets(line: str) -> int:
    m = re.search(r"n_packets=(\d+)", line)
    assert m, line
    return int(m.group(1))


def flows_for_subnet(hv: Hypervisor, cidr: str, macs: set[str]) -> list[str]:
    """Flows of ``hv`` that route to or resolve in ``cidr`` (an address of it in an L3 match or a
    next-hop register) or mention one of ``macs``."""
    net = ipaddress.ip_network(cidr)
    prefix = re.escape(str(net.network_address).rsplit(".", 1)[0] + ".")
    text = re.compile(rf"nw_dst={prefix}|" + "|".join(re.escape(m) for m in macs), re.IGNORECASE)
    out = []
    for line in dump_flows(hv):
        regs = [ipaddress.ip_address(int(h, 16)) for h in re.findall(r"\breg0=0x([0-9a-f]+)", line)]
        if text.search(line) or any(r in net for r in regs):
            out.append(line)
    return out


# -- underlay captures --------------------------------------------------------------------


@dataclass
class Encap:
    """One VXLAN packet seen on an underlay NIC, decoded down to the inner IPv4 header."""

    outer_src: str
    outer_dst: str
    vni: int
    inner_src_mac: str
    inner_dst_mac: str
    inner: str  # "icmp-request", "icmp-reply", "tcp", "arp", "other"
    ip_src: str | None = None
    ip_dst: str | None = None
    ttl: int | None = None


class UnderlayCapture:
    """``tcpdump`` on a hypervisor's underlay NIC (in its namespace): VXLAN and ICMP, into a pcap.

    Stopped after a marker ping (pattern :data:`MARKER`) from the hypervisor's own
    kernel to a peer's tunnel address is in the file: everything that crossed the NIC
    before it has been written (one socket, in order); also proof the capture is not blind.
    """

    def __init__(self, hv: Hypervisor, peer_ip: str, directory: Path) -> None:
        self.hv, self.peer_ip = hv, peer_ip
        self.path = str(directory / f"{hv.name}-underlay.pcap")
        self.errpath = self.path + ".err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> UnderlayCapture:
        with open(self.errpath, "w") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.hv.netns, "tcpdump", "-i", UNDERLAY_NIC, "-n", "-U", "-Z", "root",
                 "-w", self.path, f"udp port {VXLAN_PORT} or icmp"],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump on {self.hv.name} exited: {Path(self.errpath).read_text()}")
            return "listening on" in Path(self.errpath).read_text()

        wait_until(listening, 5, message=f"tcpdump listening on {self.hv.name}'s underlay")
        return self

    def _packets(self) -> list:
        from scapy.utils import PcapReader

        out = []
        with contextlib.suppress(EOFError, ValueError, OSError), PcapReader(self.path) as reader:
            for pkt in reader:
                out.append(pkt)
        return out

    def _has_marker(self) -> bool:
        from scapy.layers.inet import ICMP, IP

        tag = bytes.fromhex(MARKER)
        return any(
            IP in p and ICMP in p and p[IP].src == self.hv.tunnel_ip and tag in bytes(p[ICMP].payload)
            for p in self._packets()
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            sh.run(["ping", "-c1", "-W1", "-p", MARKER, self.peer_ip], netns=self.hv.netns, check=False)
            wait_until(self._has_marker, 5, message=f"the marker ping in {self.hv.name}'s underlay capture")
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def vxlan(self) -> list[Encap]:
        """Every VXLAN packet captured (marker pings and other plain ICMP left out)."""
        from scapy.layers.inet import ICMP, IP, TCP, UDP
        from scapy.layers.l2 import ARP, Ether
        from scapy.layers.vxlan import VXLAN

        out = []
        for p in self._packets():
            if IP not in p or UDP not in p or p[UDP].dport != VXLAN_PORT:
                continue
            vx = p[UDP].payload if VXLAN in p else VXLAN(bytes(p[UDP].payload))
            inner = vx.payload if isinstance(vx.payload, Ether) else Ether(bytes(vx.payload))
            rec = Encap(p[IP].src, p[IP].dst, int(vx.vni), inner.src.lower(), inner.dst.lower(), "other")
            if ARP in inner:
                rec.inner = "arp"
            elif IP in inner:
                ip = inner[IP]
                rec.ip_src, rec.ip_dst, rec.ttl = ip.src, ip.dst, ip.ttl
                if ICMP in inner:
                    rec.inner = {8: "icmp-request", 0: "icmp-reply"}.get(inner[ICMP].type, "other")
                elif TCP in inner:
                    rec.inner = "tcp"
            out.append(rec)
        return out


@contextlib.contextmanager
def underlay_captures(cloud: Cloud, hv_names: list[str], tag: str) -> Iterator[dict[str, UnderlayCapture]]:
    directory = cloud.workdir / tag
    directory.mkdir(exist_ok=True)
    caps: dict[str, UnderlayCapture] = {}
    try:
        for name in hv_names:
            hv = cloud.hv(name)
            peer = next(h for h in cloud.lab.hypervisors if h is not hv)
            caps[name] = UnderlayCapture(hv, peer.tunnel_ip, directory).start()
        yield caps
    finally:
        for cap in caps.values():
            cap.stop()


def dvr_mac(hv: Hypervisor) -> str:
    """fe:16 + the tunnel IPv4 address (topology.model.dvr_mac), computed independently here."""
    return "fe:16:" + ":".join(f"{int(o):02x}" for o in hv.tunnel_ip.split("."))


# -- fixture ------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """Controller + 4 hypervisors; router r1 with three subnets (interfaces first, then the VMs)."""
    require_lab()
    workdir = tmp_path_factory.mktemp("e2e-routing")
    prefix = "tfv" + uuid.uuid4().hex[:5]
    with (
        running_controller(workdir / "controller") as ctrl,
        attached_lab(ctrl, prefix, n_hypervisors=4) as lab,
    ):
        router = ctrl.create("router", name="r1", project_id=T1)
        nets, subnets = {}, {}
        for i, cidr in CIDRS.items():
            nets[i], subnets[i] = create_network(ctrl, f"net{i}", cidr, project_id=T1)
            assert subnets[i]["gateway_ip"] == cidr.replace("0/24", "1")
        c = Cloud(ctrl, lab, workdir, router, nets, subnets, {})
        # VMs first, then the interfaces: a VM booted on a routed subnet AFTER its router has
        # the interface is not reachable from the router's other hypervisors (see
        # test_vm_booted_after_the_router_is_routed_everywhere: the bug it documents).
        for name, (host, i, ip) in LAYOUT.items():
            c.vms[name] = plug_routed_vm(ctrl, lab, name, nets[i], subnets[i], host, ip)
        xnet, xsub = create_network(ctrl, "unrelated", "10.9.0.0/24", project_id=OTHER)
        c.vms["x"] = plug_routed_vm(ctrl, lab, "x", xnet, xsub, "hv4", "10.9.0.10")
        for i in CIDRS:
            c.interfaces[i] = add_interface(ctrl, router["id"], subnets[i]["id"])
            assert c.interfaces[i]["device_owner"] == "network:router_interface"
        for src, dst in itertools.permutations(LAYOUT, 2):
            wait_until(
                lambda s=src, d=dst: reaches(c.vms[s], LAYOUT[d][2]), 15,
                message=lambda s=src, d=dst: f"{s} -> {d} ping; controller log:\n{ctrl.log_tail()}",
            )  # fmt: skip
        yield c


# -- 1. reachability, one hop ---------------------------------------------------------------


def test_every_vm_reaches_every_other_with_ttl_lowered_by_one(cloud: Cloud) -> None:
    """Ping between every ordered pair: all answered; the reply's TTL is 63 across subnets (one
    routed hop on the reply path; the reverse pair checks the request path), 64 within one."""
    with NoPacketIns(cloud.ctrl):
        for src, dst in itertools.permutations(LAYOUT, 2):
            answered, ttls = ping(cloud.vms[src], LAYOUT[dst][2], count=2)
            assert answered == 2, f"{src} -> {dst}"
            want = 64 if LAYOUT[src][1] == LAYOUT[dst][1] else 63
            assert ttls == [want, want], f"{src} -> {dst}: reply TTLs {ttls}, want {want}"


EXPIRED_PROBES = {"count": 0}  # packet-ins the TTL-expiry test causes on purpose


def test_traceroute_shows_one_hop(cloud: Cloud) -> None:
    """traceroute to a VM on another subnet shows exactly one hop, the router's address on the
    source's subnet, then the destination. The hop answers with ICMP time exceeded built by
    the controller (packet-in from the ttl_expired flow: the slow path, as OVN's pinctrl); the
    expired probes never reach the destination (its InEchos do not move for TTL 1)."""
    for src, dst in (("v1", "v2"), ("v2", "v1b"), ("v3", "v1")):
        slow_path_before = packet_ins(cloud.ctrl)
        out = cloud.vms[src].cmd(f"traceroute -n -q 1 -w 1 -m 4 {LAYOUT[dst][2]}")
        hops = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()]
        assert [h[1] for h in hops] == [cloud.gateway(LAYOUT[src][1]), LAYOUT[dst][2]], (src, dst, out)
        target = cloud.vms[dst]
        before = in_echos(target)
        ttl1 = cloud.vms[src].cmd(f"ping -t1 -c2 -i0.2 -W1 {LAYOUT[dst][2]}")
        assert "Time to live exceeded" in ttl1 and " 0 received" in ttl1, (src, dst, ttl1)
        assert in_echos(target) == before, f"{src} -> {dst} with TTL 1 reached {dst}"
        # Exactly one packet-in per expired probe: the traceroute's TTL-1 probe and the two pings.
        assert packet_ins(cloud.ctrl) - slow_path_before == 3
        EXPIRED_PROBES["count"] += 3
        with NoPacketIns(cloud.ctrl):
            answered, ttls = ping(cloud.vms[src], LAYOUT[dst][2], count=2, ttl=2)
            assert answered == 2 and ttls == [63, 63], (src, dst, ttls)
        assert in_echos(target) == before + 2


def test_tcp_between_every_pair(cloud: Cloud) -> None:
    """A TCP echo in every VM, signed with the VM's name: every pair connects, to the right VM;
    plus a second of iperf3 across a routed hop."""
    vms = [cloud.vms[n] for n in LAYOUT]
    servers = [
        vm.popen([sys.executable, "-c", ECHO_SERVER, vm.name, str(ECHO_PORT)], stdout=subprocess.DEVNULL) for vm in vms
    ]
    try:
        for vm in vms:
            wait_listening(vm, ECHO_PORT)
        with NoPacketIns(cloud.ctrl):
            clients = []
            for src in LAYOUT:
                token = f"{src}-{uuid.uuid4().hex[:6]}"
                targets = [LAYOUT[d][2] for d in LAYOUT if d != src]
                proc = cloud.vms[src].popen(
                    [sys.executable, "-c", ECHO_CLIENT, token, str(ECHO_PORT), *targets],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                clients.append((src, token, proc))
            for src, token, proc in clients:
                out, err = proc.communicate(timeout=30)
                assert proc.returncode == 0, err
                replies = json.loads(out)
                for dst in LAYOUT:
                    if dst != src:
                        assert replies[LAYOUT[dst][2]] == f"{dst} {token}", (src, dst, replies)
            end = tcp_transfer(cloud.vms["v1"], cloud.vms["v3"], LAYOUT["v3"][2], port=5311)
        assert end["sum_received"]["bytes"] > 1_000_000, end["sum_received"]
    finally:
        for proc in servers:
            proc.kill()
            proc.wait(timeout=5)


def test_router_answers_ping_to_every_gateway_from_the_flows(cloud: Cloud) -> None:
    """Every VM pings each of the router's three addresses: answered, by its own hypervisor's
    table-40 echo flows (their counters count the pings)."""
    with NoPacketIns(cloud.ctrl):
        for name in LAYOUT:
            vm, hv = cloud.vms[name], cloud.vms[name].hypervisor
            for i in CIDRS:
                gw = cloud.gateway(i)

                def hits(gw: str = gw, hv: Hypervisor = hv) -> int:
                    return sum(
                        n_packets(ln) for ln in table_flows(hv, 40) if f"nw_dst={gw}," in ln and "icmp_type=8" in ln
                    )

                before = hits()
                answered, _ = ping(vm, gw, count=2)
                assert answered == 2, f"{name} -> router {gw}"
                # flow counters follow the datapath's with a revalidator delay
                wait_until(
                    lambda b=before, h=hits: h() - b >= 2,
                    5,
                    message=f"{hv.name}'s echo flows for {gw} to count {name}'s pings",
                )


# -- 2. the bystander hypervisor, and one crossing per packet ---------------------------------


def test_hv4_holds_no_router_flow(cloud: Cloud) -> None:
    hv4 = cloud.hv("hv4")
    assert table_flows(hv4, *ROUTER_TABLES) == []
    macs = cloud.router_macs()
    assert not [ln for ln in dump_flows(hv4) if any(m in ln.lower() for m in macs)]
    assert not [ln for ln in dump_flows(hv4) if "reg3=" in ln]
    # ...while every hypervisor hosting one of the router's subnets holds its stages
    for name in ("hv1", "hv2", "hv3"):
        assert {
            int(re.search(r"table=(\d+)", ln).group(1)) for ln in table_flows(cloud.hv(name), *ROUTER_TABLES)
        } == set(ROUTER_TABLES), name


def test_each_routed_packet_crosses_the_underlay_once_and_hv4_carries_nothing(cloud: Cloud) -> None:
    """N pings v1 -> v2 while every hypervisor's underlay NIC is captured:

    - hv1 sends exactly N VXLAN echo requests, all to hv2's tunnel address, with net2's VNI,
      inner source MAC hv1's DVR MAC (never a router MAC), inner destination v2's MAC, TTL 63;
      hv2 receives exactly those N and sends exactly N replies back to hv1 (net1's VNI, hv2's
      DVR MAC); nothing is sent towards hv3 or hv4;
    - hv3's and hv4's captures hold no VXLAN packet at all (they did see their marker ping).
    """
    n = 5
    hv1, hv2, hv3, hv4 = (cloud.hv(f"hv{i}") for i in range(1, 5))
    v1, v2 = cloud.vms["v1"], cloud.vms["v2"]
    with NoPacketIns(cloud.ctrl), underlay_captures(cloud, ["hv1", "hv2", "hv3", "hv4"], "once") as caps:
        answered, ttls = ping(v1, LAYOUT["v2"][2], count=n, interval=0.1)
        assert answered == n and ttls == [63] * n
    sent1 = [e for e in caps["hv1"].vxlan() if e.outer_src == hv1.tunnel_ip]
    got1 = [e for e in caps["hv1"].vxlan() if e.outer_dst == hv1.tunnel_ip]
    requests = [e for e in sent1 if e.inner == "icmp-request"]
    assert len(requests) == n, sent1
    for e in requests:
        assert (e.outer_dst, e.vni) == (hv2.tunnel_ip, cloud.vni(2)), e
        assert (e.inner_src_mac, e.inner_dst_mac) == (dvr_mac(hv1), v2.MAC()), e
        assert (e.ip_src, e.ip_dst, e.ttl) == (LAYOUT["v1"][2], LAYOUT["v2"][2], 63), e
    assert [e for e in sent1 if e.outer_dst != hv2.tunnel_ip] == [], "hv1 sent VXLAN elsewhere than hv2"
    replies = [e for e in got1 if e.inner == "icmp-reply"]
    assert len(replies) == n, got1
    for e in replies:
        assert (e.outer_src, e.vni) == (hv2.tunnel_ip, cloud.vni(1)), e
        assert (e.inner_src_mac, e.inner_dst_mac) == (dvr_mac(hv2), v1.MAC()), e
        assert (e.ip_src, e.ip_dst, e.ttl) == (LAYOUT["v2"][2], LAYOUT["v1"][2], 63), e
    # hv2's side: the same N requests in, N replies out, nothing else routed anywhere
    in2 = [e for e in caps["hv2"].vxlan() if e.inner == "icmp-request"]
    out2 = [e for e in caps["hv2"].vxlan() if e.inner == "icmp-reply"]
    assert len(in2) == n and all(e.outer_src == hv1.tunnel_ip and e.outer_dst == hv2.tunnel_ip for e in in2)
    assert len(out2) == n and all(e.outer_dst == hv1.tunnel_ip for e in out2)
    # no router MAC ever on the wire
    macs = cloud.router_macs()
    for name in ("hv1", "hv2"):
        assert not [e for e in caps[name].vxlan() if e.inner_src_mac in macs], f"a router MAC left {name}"
    for hv in (hv3, hv4):
        assert caps[hv.name].vxlan() == [], f"{hv.name}'s underlay carried VXLAN: {caps[hv.name].vxlan()}"


def test_full_mesh_under_capture_never_touches_hv4(cloud: Cloud) -> None:
    """All routed pairs ping (ping + TCP handshake via the echo-less connect) while hv4's underlay is
    captured: no VXLAN packet at all reaches or leaves hv4; hv3 sees only traffic of v3."""
    with NoPacketIns(cloud.ctrl), underlay_captures(cloud, ["hv3", "hv4"], "mesh") as caps:
        for src, dst in itertools.permutations(LAYOUT, 2):
            assert ping(cloud.vms[src], LAYOUT[dst][2], count=1, interval=0.1)[0] == 1, (src, dst)
    assert caps["hv4"].vxlan() == []
    v3_ip = LAYOUT["v3"][2]
    seen3 = caps["hv3"].vxlan()
    assert seen3, "hv3's capture saw none of v3's traffic: blind"
    assert all(v3_ip in (e.ip_src, e.ip_dst) for e in seen3 if e.ip_src), seen3


# -- 3. two tenants on the same CIDRs, each with its own router -----------------------------


def test_two_tenants_with_the_same_cidrs_on_their_own_routers_stay_apart(cloud: Cloud) -> None:
    """Tenants A and B: each a router between 10.0.0.0/24 and 10.0.1.0/24, VMs on the very same
    addresses (<t>0 10.0.0.10 on hv1, <t>1 10.0.1.10 on hv2, <t>1b 10.0.1.11 on hv1). Each
    tenant reaches across its own router (TTL 63, the right VM answers: its InEchos count
    moves, the twin's does not); a frame a VM sends to the OTHER tenant's router MAC is not
    routed (nothing answers, no counter of either tenant moves)."""
    ctrl, lab = cloud.ctrl, cloud.lab
    tenants: dict[str, dict[str, Any]] = {}
    for t in ("a", "b"):
        project = f"project-{t}-{uuid.uuid4().hex[:8]}"
        router = ctrl.create("router", name=f"r{t}", project_id=project)
        n0, s0 = create_network(ctrl, f"{t}-net0", "10.0.0.0/24", project_id=project)
        n1, s1 = create_network(ctrl, f"{t}-net1", "10.0.1.0/24", project_id=project)
        gw0 = add_interface(ctrl, router["id"], s0["id"])
        add_interface(ctrl, router["id"], s1["id"])
        vms = {
            f"{t}0": plug_routed_vm(ctrl, lab, f"{t}0", n0, s0, "hv1", "10.0.0.10"),
            f"{t}1": plug_routed_vm(ctrl, lab, f"{t}1", n1, s1, "hv2", "10.0.1.10"),
            f"{t}1b": plug_routed_vm(ctrl, lab, f"{t}1b", n1, s1, "hv1", "10.0.1.11"),
        }
        tenants[t] = {"router": router, "gw0_mac": gw0["mac_address"], "vms": vms}
    for t in ("a", "b"):
        for dst_ip in ("10.0.1.10", "10.0.1.11"):
            wait_until(
                lambda t=t, ip=dst_ip: reaches(tenants[t]["vms"][f"{t}0"], ip),
                15,
                message=lambda t=t, ip=dst_ip: f"{t}0 -> {ip}; controller log:\n{ctrl.log_tail()}",
            )
    all_vms = [vm for t in tenants.values() for vm in t["vms"].values()]
    with NoPacketIns(ctrl):
        for t, other in (("a", "b"), ("b", "a")):
            mine = tenants[t]["vms"]
            for src, dst, ip in (
                (f"{t}0", f"{t}1", "10.0.1.10"),
                (f"{t}0", f"{t}1b", "10.0.1.11"),
                (f"{t}1", f"{t}0", "10.0.0.10"),
                (f"{t}1b", f"{t}0", "10.0.0.10"),
            ):
                before = {vm.name: in_echos(vm) for vm in all_vms}
                answered, ttls = ping(mine[src], ip, count=3, interval=0.1)
                assert answered == 3 and ttls == [63] * 3, (src, ip, answered, ttls)
                moved = {vm.name: in_echos(vm) - before[vm.name] for vm in all_vms}
                assert moved[dst] == 3, (src, dst, moved)
                assert all(v == 0 for k, v in moved.items() if k != dst), f"{src} -> {ip} reached {moved}"
            # the other tenant's router MAC as next hop: not routed by either router
            src = mine[f"{t}0"]
            src.cmd(f"ip neigh replace 10.0.0.1 lladdr {tenants[other]['gw0_mac']} dev eth0 nud permanent")
            try:
                before = {vm.name: in_echos(vm) for vm in all_vms}
                assert ping(src, "10.0.1.10", count=3, interval=0.1)[0] == 0
                assert ping(src, "10.0.1.11", count=2, interval=0.1)[0] == 0
                moved = {k: in_echos(vm) - before[k] for k, vm in ((vm.name, vm) for vm in all_vms)}
                assert all(v == 0 for v in moved.values()), f"the foreign router routed: {moved}"
            finally:
                src.cmd("ip neigh del 10.0.0.1 dev eth0")
            assert ping(src, "10.0.1.10", count=1)[0] == 1  # own router again
    for t in tenants.values():
        for vm in t["vms"].values():
            lab.unplug_vm(vm)


# -- 4. removing an interface, adding it back -------------------------------------------------


def test_removing_an_interface_cuts_its_subnet_and_leaves_no_flow(cloud: Cloud) -> None:
    """remove_router_interface (subnet 3): v3 is cut off from the other subnets both ways, the
    other pairs keep routing, and no hypervisor keeps a flow of 10.1.3.0/24's routing (its CIDR
    or addresses in an L3 match or next-hop register, its interface MAC); hv3 keeps no router
    stage at all. add_router_interface again (a new port, a new MAC): routing to v3 is back."""
    ctrl, lab = cloud.ctrl, cloud.lab
    v1, v2, v3, v1b = (cloud.vms[n] for n in ("v1", "v2", "v3", "v1b"))
    old = cloud.interfaces[3]
    # not vacuous: before the removal, each of hv1..hv3 does hold flows of 10.1.3.0/24's routing
    for name in ("hv1", "hv2", "hv3"):
        assert flows_for_subnet(cloud.hv(name), CIDRS[3], {old["mac_address"].lower()}), name
    remove_interface(ctrl, cloud.router["id"], cloud.subnets[3]["id"])
    wait_until(lambda: not reaches(v1, LAYOUT["v3"][2]), 5, message="v1 -> v3 to be cut")
    with NoPacketIns(ctrl):
        assert ping(v1, LAYOUT["v3"][2], count=2)[0] == 0
        assert ping(v2, LAYOUT["v3"][2], count=2)[0] == 0
        assert ping(v3, LAYOUT["v1"][2], count=2)[0] == 0
        assert ping(v3, cloud.gateway(3), count=1)[0] == 0
        assert ping(v1, cloud.gateway(3), count=1)[0] == 0  # the router no longer holds 10.1.3.1
        for src, dst in (("v1", "v2"), ("v2", "v1"), ("v1b", "v2"), ("v2", "v1b")):
            answered, ttls = ping(cloud.vms[src], LAYOUT[dst][2], count=2)
            assert answered == 2 and ttls == [63, 63], (src, dst, ttls)
    gone_mac = {old["mac_address"].lower()}

    def leftovers() -> dict[str, list[str]]:
        found = {hv.name: flows_for_subnet(hv, CIDRS[3], gone_mac) for hv in lab.hypervisors}
        # the L2 side of net3 on hv3 stays (v3's own port); only its routing must go
        found = {
            k: [
                ln
                for ln in v
                if not (
                    k == "hv3" and re.search(r"table=(20|30|60),", ln) and old["mac_address"].lower() not in ln.lower()
                )
            ]
            for k, v in found.items()
        }
        return {k: v for k, v in found.items() if v}

    wait_until(lambda: not leftovers(), 5, message=lambda: f"no flow of 10.1.3.0/24's routing: {leftovers()}")
    assert table_flows(cloud.hv("hv3"), *ROUTER_TABLES) == []

    # v3 pings v1 every 50 ms while the interface comes back (a new port, a new MAC): v3's kernel
    # caches 10.1.3.1 at the old MAC, and learns the new one from the gratuitous ARP each
    # hypervisor sends its VMs once its flows are in, not from its cache's expiry (~30 s).
    pinger = v3.popen(["ping", "-D", "-n", "-i", "0.05", "-W", "1", "-c", "100", LAYOUT["v1"][2]],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    new = add_interface(ctrl, cloud.router["id"], cloud.subnets[3]["id"])
    added = time.time()
    cloud.interfaces[3] = new
    assert new["fixed_ips"][0]["ip_address"] == cloud.gateway(3)
    out, _ = pinger.communicate(timeout=30)
    replies = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    assert replies and replies[0] - added < 1.0, (added, out[-1500:])
    for src, dst in (("v1", "v3"), ("v3", "v1"), ("v3", "v2"), ("v1b", "v3")):
        wait_until(
            lambda s=src, d=dst: reaches(cloud.vms[s], LAYOUT[d][2]),
            10,
            message=lambda s=src, d=dst: f"{s} -> {d} after re-adding\n{ctrl.log_tail()}",
        )
    with NoPacketIns(ctrl):
        for src, dst in (("v1", "v3"), ("v3", "v1"), ("v2", "v3"), ("v3", "v1b")):
            answered, ttls = ping(cloud.vms[src], LAYOUT[dst][2], count=2)
            assert answered == 2 and ttls == [63, 63], (src, dst, ttls)
        assert ping(v3, cloud.gateway(3), count=1)[0] == 1
    assert table_flows(cloud.hv("hv4"), *ROUTER_TABLES) == []


def test_vm_booted_after_the_router_is_routed_everywhere(cloud: Cloud) -> None:
    """A VM booted on net2 (on hv3) once r1 has its interfaces is reachable from v1 (hv1, net1
    only) across the router: hv1 must be recompiled when the port appears (regression: it
    was not, its table 44 had no entry for 10.1.2.20 and dropped v1's packets)."""
    ctrl, lab = cloud.ctrl, cloud.lab
    vm = plug_routed_vm(ctrl, lab, "v2c", cloud.nets[2], cloud.subnets[2], "hv3", "10.1.2.20")
    try:
        # hv3 itself was recompiled (the binding host): v3 -> v2c routes locally
        wait_until(lambda: reaches(cloud.vms["v3"], "10.1.2.20"), 10, message="v3 -> v2c (both on hv3)")
        wait_until(lambda: reaches(cloud.vms["v1"], "10.1.2.20"), 4, message="v1 (hv1) -> v2c (hv3), routed")
    finally:
        lab.unplug_vm(vm)
        ctrl.delete("port", vm.port_id)


def test_deleted_routed_port_leaves_no_flow_anywhere(cloud: Cloud) -> None:
    """DELETE v1b's port (net1, on hv2): no hypervisor keeps a flow mentioning its MAC or routing
    to its address (regression: hv3, hosting only net3, was not recompiled and kept its
    table-44 resolution of 10.1.1.11 and its table-30 unicast towards hv2)."""
    ctrl, lab = cloud.ctrl, cloud.lab
    v1b = cloud.vms["v1b"]
    mac = v1b.MAC().lower()
    hv3 = cloud.hv("hv3")
    assert [ln for ln in dump_flows(hv3) if mac in ln.lower()], "hv3 knows v1b before: the check is not vacuous"
    ctrl.delete("port", v1b.port_id)
    lab.unplug_vm(v1b)
    del cloud.vms["v1b"]

    def leftovers() -> dict[str, list[str]]:
        found = {
            hv.name: [ln for ln in dump_flows(hv) if mac in ln.lower() or "reg0=0xa01010b," in ln]
            for hv in lab.hypervisors
        }
        return {k: v for k, v in found.items() if v}

    wait_until(lambda: not leftovers(), 4, message=lambda: f"no flow of the deleted port v1b: {leftovers()}")


def test_no_packet_in_at_all(cloud: Cloud) -> None:
    """After all of the above, the controller's only packet-ins are the expired probes the
    traceroute test sent on purpose (the counter is live: see test_e2e_isolation)."""
    assert packet_ins(cloud.ctrl) == EXPIRED_PROBES["count"]
