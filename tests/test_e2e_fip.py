"""Floating IPs end to end: distributed 1:1 NAT on the hosting hypervisor (issue #5 acceptance).

The real controller process and three lab hypervisors; everything through the REST
API. The external network ``ext`` is a flat provider network on ``physnet1`` (every
hypervisor's provider bridge reaches the fabric's provider segment) with
172.24.4.0/24; the "outside host" ``out`` sits on that segment at 172.24.4.1, the
external subnet's gateway (an upstream router, as on a real cloud)::

    hv1: a1 10.0.0.10 (t1, fa1)      hv2: a2 10.0.0.11 (t1, fa2)
    hv3: a3 10.0.0.12 (t1, no FIP)   hv3: b1 10.0.0.10 (t2, fb1: same fixed IP as a1)

Routers r1 (t1) and r2 (t2) each have their gateway on ``ext``. The VMs' ports have
port security on and a "public" security group (ICMP and the echo port open from
anywhere, egress open), so every packet also passes the port's conntrack rules on
the inside of the NAT, as on a real cloud. Proofs on real
frames: the outside host pings and opens TCP connections to each VM by its floating
IP (and reaches the right one of two VMs with the same fixed IP); a VM reaches the
outside host with its floating IP as source (capture on the outside host); only the
hosting hypervisor answers ARP for a floating IP; no floating-IP packet crosses the
underlay; a VM without a floating IP never shows on the external network; hairpin
(a VM to another VM's and to its own floating IP); moves while the outside host
pings cost at most 100 ms of its stream each; disassociation cuts the traffic and
leaves no flow of the address anywhere; bad requests change nothing, on the API or on any switch.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apps.lab import Lab, LabVM, sh
from apps.lab.controller import ApiError, ControllerProcess
from tests.e2e_fixtures import (
    ECHO_CLIENT,
    ECHO_SERVER,
    attached_lab,
    create_network,
    create_port,
    create_security_group,
    create_security_group_rule,
    flows_mentioning,
    pings,
    require_lab,
    running_controller,
    start_echo,
    wait_port_active,
    wait_until,
)
from tests.lab_fixtures import wait_listening

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

T1 = "project-t1-" + uuid.uuid4().hex[:8]
T2 = "project-t2-" + uuid.uuid4().hex[:8]
EXT_CIDR, EXT_GATEWAY = "172.24.4.0/24", "172.24.4.1"
TENANT_CIDR = "10.0.0.0/24"
ECHO_PORT = 7011
VXLAN_PORT = 4789
LAYOUT = {  # VM -> (hypervisor, tenant, fixed IP)
    "a1": ("hv1", T1, "10.0.0.10"),
    "a2": ("hv2", T1, "10.0.0.11"),
    "a3": ("hv3", T1, "10.0.0.12"),
    "b1": ("hv3", T2, "10.0.0.10"),
}


@dataclass
class Cloud:
    """The module's controller, lab, external network, outside host, VMs and floating IPs."""

    ctrl: ControllerProcess
    lab: Lab
    workdir: Path
    ext: dict[str, Any]
    out: LabVM
    vms: dict[str, LabVM] = field(default_factory=dict)
    fips: dict[str, dict[str, Any]] = field(default_factory=dict)  # VM name -> its floating IP

    def fip(self, vm: str) -> str:
        return str(self.fips[vm]["floating_ip_address"])

    def fip_mac(self, vm: str) -> str:
        (port,) = [p for p in self.ctrl.request("GET", "/v2.0/ports?device_owner=network:floatingip")["ports"]
                   if p["device_id"] == self.fips[vm]["id"]]
        return str(port["mac_address"])

    def associate(self, fip: dict[str, Any], vm: str | None) -> dict[str, Any]:
        body = {"port_id": self.vms[vm].port_id if vm else None}
        return self.ctrl.request("PUT", f"/v2.0/floatingips/{fip['id']}", {"floatingip": body})["floatingip"]


def _tenant(ctrl: ControllerProcess, project: str, ext_id: str) -> tuple[dict, dict]:
    net, subnet = create_network(ctrl, f"net-{project}", TENANT_CIDR, project_id=project)
    router = ctrl.create("router", project_id=project, external_gateway_info={"network_id": ext_id})
    ctrl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": subnet["id"]})
    return net, subnet


def _open_to_the_outside(ctrl: ControllerProcess, project: str) -> dict:
    """What a user adds for a public VM: ping and the echo port from anywhere (egress is open by default)."""
    sg = create_security_group(ctrl, "public", project)
    for rule in ({"protocol": "icmp"}, {"protocol": "tcp", "port_range_min": ECHO_PORT, "port_range_max": ECHO_PORT}):
        create_security_group_rule(ctrl, sg["id"], "ingress", remote_ip_prefix="0.0.0.0/0", project_id=project,
                                   **rule)
    return sg


def _boot(cloud: Cloud, name: str, net: dict, subnet: dict, sg: dict) -> LabVM:
    host, project, ip = LAYOUT[name]
    port = create_port(cloud.ctrl, net, host, fixed_ips=[{"ip_address": ip}], project_id=project,
                       security_groups=[sg["id"]])
    vm = cloud.lab.plug_vm(name, port, mtu=int(net.get("mtu") or 1450), gateway=subnet["gateway_ip"])
    vm.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
    wait_port_active(cloud.ctrl, port["id"])
    start_echo(vm, name, ECHO_PORT)
    return vm



@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    require_lab()
    workdir = tmp_path_factory.mktemp("fip")
    with running_controller(workdir) as ctrl, attached_lab(ctrl, "tff", 3, provider=True) as lab:
        ext = ctrl.create("network", name="ext", **{"router:external": True, "provider:network_type": "flat",
                                                    "provider:physical_network": lab.physnet})
        ctrl.create("subnet", network_id=ext["id"], cidr=EXT_CIDR, gateway_ip=EXT_GATEWAY, enable_dhcp=False,
                    allocation_pools=[{"start": "172.24.4.10", "end": "172.24.4.250"}])
        out = lab.add_outside_host("out", f"{EXT_GATEWAY}/24")
        out.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
        start_echo(out, "out", ECHO_PORT)
        cloud = Cloud(ctrl, lab, workdir, ext, out)
        nets = {project: _tenant(ctrl, project, ext["id"]) for project in (T1, T2)}
        groups = {project: _open_to_the_outside(ctrl, project) for project in (T1, T2)}
        for name, (_, project, _) in LAYOUT.items():
            cloud.vms[name] = _boot(cloud, name, *nets[project], groups[project])
        for name in ("a1", "a2", "b1"):
            cloud.fips[name] = ctrl.create("floatingip", floating_network_id=ext["id"],
                                           port_id=cloud.vms[name].port_id, project_id=LAYOUT[name][1])
        for name in ("a1", "a2", "b1"):
            wait_until(lambda n=name: pings(out, cloud.fip(n), 1), 10,
                       lambda n=name: f"outside host reaching {n}'s FIP\n{ctrl.log_tail(60)}")
        yield cloud


# -- helpers -------------------------------------------------------------------------------------

def echo(host: LabVM, *addresses: str, port: int = ECHO_PORT) -> dict[str, str]:
    """TCP to each address's echo server: its answer (``<server name> <token>``) or the error."""
    proc = host.popen([sys.executable, "-c", ECHO_CLIENT, "tok", str(port), *addresses],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}


class Tcpdump:
    """tcpdump on ``dev`` in namespace ``netns`` (a pcap file), read back as text lines."""

    def __init__(self, netns: str, dev: str, path: Path, bpf: str = "") -> None:
        self.netns, self.dev, self.path, self.bpf = netns, dev, path, bpf
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Tcpdump:
        err = self.path.with_suffix(".err")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "tcpdump", "-i", self.dev, "-n", "-e", "-U", "-Z", "root",
             "-w", str(self.path), *self.bpf.split()],
            stdout=subprocess.DEVNULL, stderr=err.open("w"))
        wait_until(lambda: "listening on" in err.read_text(), 5, f"tcpdump on {self.netns}/{self.dev}")
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # let the last frames reach the file
        assert self.proc is not None
        sh.kill_pids([self.proc.pid])

    def lines(self) -> list[str]:
        out = subprocess.run(["tcpdump", "-n", "-e", "-r", str(self.path)], capture_output=True, text=True)
        return out.stdout.splitlines()


# -- the acceptance ------------------------------------------------------------------------------
def test_outside_host_reaches_each_vm_by_its_floating_ip(cloud: Cloud) -> None:
    for name in ("a1", "a2", "b1"):
        assert pings(cloud.out, cloud.fip(name), 5) == 5, name
    answers = echo(cloud.out, cloud.fip("a1"), cloud.fip("a2"), cloud.fip("b1"))
    # a1 and b1 share 10.0.0.10 in two tenants: each floating IP reaches its own VM only.
    assert answers == {cloud.fip("a1"): "a1 tok", cloud.fip("a2"): "a2 tok", cloud.fip("b1"): "b1 tok"}


def test_security_groups_apply_to_floating_ip_traffic(cloud: Cloud) -> None:
    closed = ECHO_PORT + 1  # listening in a1, but not opened by its group
    cloud.vms["a1"].popen([sys.executable, "-c", ECHO_SERVER, "a1", str(closed)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(cloud.vms["a1"], closed)  # it listens: only the group can refuse it
    ip = cloud.fip("a1")
    assert "error" in echo(cloud.out, ip, port=closed)[ip]
    assert echo(cloud.out, ip) == {ip: "a1 tok"}  # the open port, same path


def test_vm_reaches_outside_host_from_its_floating_ip(cloud: Cloud) -> None:
    def ping_seen(lines: list[str]) -> bool:
        return any(f"{cloud.fip('a1')} > {EXT_GATEWAY}: ICMP echo request" in line for line in lines)

    def tcp_seen(lines: list[str]) -> bool:
        return any(f"{cloud.fip('b1')}." in line and f"> {EXT_GATEWAY}.{ECHO_PORT}" in line for line in lines)

    with Tcpdump(cloud.out.netns, "eth0", cloud.workdir / "out-src.pcap", "ip") as cap:
        assert pings(cloud.vms["a1"], EXT_GATEWAY, 5) == 5
        assert echo(cloud.vms["b1"], EXT_GATEWAY) == {EXT_GATEWAY: "out tok"}
        # tcpdump -U writes each frame as it sees it; on a loaded machine that can trail the
        # answer: wait (bounded) for the frames this test is about before stopping it.
        with contextlib.suppress(AssertionError, TimeoutError):
            wait_until(lambda: ping_seen(cap.lines()) and tcp_seen(cap.lines()), 5, "the frames in the capture")
    lines = cap.lines()
    assert ping_seen(lines), lines
    assert tcp_seen(lines), lines
    assert not [line for line in lines if "10.0.0." in line], "a fixed address showed on the external network"


def test_fixed_ip_without_floating_ip_never_reaches_the_external_network(cloud: Cloud) -> None:
    with Tcpdump(cloud.out.netns, "eth0", cloud.workdir / "out-nofip.pcap", "ip") as cap:
        assert pings(cloud.vms["a3"], EXT_GATEWAY, 3) == 0
    assert not [line for line in cap.lines() if "10.0.0." in line]


def test_only_the_hosting_hypervisor_answers_arp(cloud: Cloud) -> None:
    fip, mac = cloud.fip("a1"), cloud.fip_mac("a1")
    out = cloud.out.cmd(f"arping -c 3 -w 3 -I eth0 {fip}")
    replies = re.findall(r"bytes from ([0-9a-f:]{17}) \(", out, re.IGNORECASE)
    # One answer per request (a second hypervisor answering would show as "extra"), all with the FIP's MAC.
    assert len(replies) == 3 and {r.lower() for r in replies} == {mac} and "(0 extra)" in out, out
    holders = [hv.name for hv in cloud.lab.hypervisors if flows_mentioning(hv, f"arp_tpa={fip}")]
    assert holders == ["hv1"]


def test_floating_ip_traffic_never_crosses_the_underlay(cloud: Cloud) -> None:
    with Tcpdump(cloud.lab.fabric_netns, "underlay", cloud.workdir / "underlay.pcap", f"udp port {VXLAN_PORT}") as cap:
        assert pings(cloud.out, cloud.fip("a2"), 5) == 5
        assert pings(cloud.vms["a2"], EXT_GATEWAY, 5) == 5
        assert echo(cloud.out, cloud.fip("a2")) == {cloud.fip("a2"): "a2 tok"}
    assert cap.lines() == []


def test_hairpin_to_a_neighbours_and_to_its_own_floating_ip(cloud: Cloud) -> None:
    a1, a2 = cloud.vms["a1"], cloud.vms["a2"]
    # The first packet to a floating IP on another hypervisor may be spent resolving its MAC.
    wait_until(lambda: pings(a2, cloud.fip("a1"), 1), 5, "a2 reaching a1's floating IP")
    assert pings(a2, cloud.fip("a1"), 5) == 5
    assert echo(a2, cloud.fip("a1")) == {cloud.fip("a1"): "a1 tok"}
    assert pings(a1, cloud.fip("a1"), 5) == 5
    assert echo(a1, cloud.fip("a1")) == {cloud.fip("a1"): "a1 tok"}


def test_bad_requests_change_nothing(cloud: Cloud) -> None:
    ctrl = cloud.ctrl
    lonely_net, _ = create_network(ctrl, "unrouted", "10.9.9.0/24")
    lonely = ctrl.create("port", network_id=lonely_net["id"])  # its subnet has no router to the outside
    before_api = ctrl.request("GET", "/v2.0/floatingips")
    before_flows = {hv.name: sorted(hv.ofctl("dump-flows", "br-int", "--no-stats").splitlines())
                    for hv in cloud.lab.hypervisors}
    tenant_net = cloud.vms["a1"].port["network_id"]
    cases = [
        ({"floating_network_id": tenant_net}, 400),  # not an external network
        ({"floating_network_id": cloud.ext["id"], "port_id": cloud.vms["a1"].port_id,
          "fixed_ip_address": "10.0.0.99"}, 400),  # a fixed IP the port does not have
        ({"floating_network_id": cloud.ext["id"], "port_id": cloud.vms["a1"].port_id}, 409),  # a1 has one
    ]
    for body, status in cases:
        with pytest.raises(ApiError) as err:
            ctrl.request("POST", "/v2.0/floatingips", {"floatingip": body})
        assert err.value.status == status, (body, err.value)
    with pytest.raises(ApiError) as err:
        ctrl.request("PUT", f"/v2.0/floatingips/{cloud.fips['a2']['id']}", {"floatingip": {"port_id": lonely["id"]}})
    assert err.value.status == 404  # no route from its subnet to the external network
    assert ctrl.request("GET", "/v2.0/floatingips") == before_api
    after_flows = {hv.name: sorted(hv.ofctl("dump-flows", "br-int", "--no-stats").splitlines())
                   for hv in cloud.lab.hypervisors}
    assert {n: [f for f in fl if "table=49" not in f] for n, fl in after_flows.items()} == \
        {n: [f for f in fl if "table=49" not in f] for n, fl in before_flows.items()}


def learned_neighbours(cloud: Cloud, hv: str) -> list[str]:
    """lr_in_mac_binding's learned flows (priority 100) on ``hv``, without their counters."""
    dump = cloud.lab.hypervisor(hv).ofctl("dump-flows", "br-int", "table=49", "--no-stats")
    return sorted(line.strip() for line in dump.splitlines() if "priority=100" in line)


def test_learned_neighbours_survive_a_controller_restart(cloud: Cloud) -> None:
    assert pings(cloud.vms["a1"], EXT_GATEWAY, 2) == 2
    out_mac = int(cloud.out.cmd("cat /sys/class/net/eth0/address").strip().replace(":", ""), 16)
    learned = learned_neighbours(cloud, "hv1")
    # OVS prints the loaded MAC as a bare hex number (no leading zeros): compare numbers.
    loads = {int(m.group(1), 16) for line in learned if "reg0=0xac180401" in line
             for m in [re.search(r"load:0x([0-9a-f]+)->NXM_OF_ETH_DST", line)] if m}
    assert loads == {out_mac}, learned
    cloud.ctrl.restart()
    for hv in cloud.lab.hypervisors:
        cloud.ctrl.wait_hypervisor_connected(hv.name)
    # The restarted controller reconciles hv1 and leaves what the switch learned alone.
    wait_until(lambda: cloud.ctrl.metrics().get("tenantflow_switch_connected", 0) == 3, 10, "switches synced")
    assert learned_neighbours(cloud, "hv1") == learned
    assert pings(cloud.vms["a1"], EXT_GATEWAY, 3) == 3


MOVES = ("a3", "a1") * 3  # hv1 -> hv3 and back, three times: a return finds hv1's cached datapath flows
MOVE_EVERY_S, PING_EVERY_S = 1.2, 0.05


def unanswered_per_move(out: str, puts: list[float]) -> list[int]:
    """How many echoes went unanswered in each move's window (from its PUT to the next one's), from
    ``ping -D -O``'s timestamped "no answer yet" lines."""
    stamps = [float(m.group(1)) for m in re.finditer(r"\[(\d+\.\d+)\] no answer yet", out)]
    ends = puts[1:] + [float("inf")]
    return [sum(start <= t < end for t in stamps) for start, end in zip(puts, ends, strict=True)]


def test_unanswered_echoes_are_counted_in_the_window_of_their_move() -> None:
    out = "[10.5] no answer yet for icmp_seq=1\n[11.1] no answer yet for icmp_seq=13\n" \
          "[11.15] no answer yet for icmp_seq=14\n[9.0] no answer yet for icmp_seq=0\n"
    assert unanswered_per_move(out, [10.0, 11.0, 12.0]) == [1, 2, 0]


def test_moves_while_the_outside_host_pings_lose_at_most_a_ping_each(cloud: Cloud) -> None:
    """The outside host pings the floating IP every 50 ms while it moves hv1 -> hv3 -> hv1 -> ...

    A move costs at most a ping here (the median over the moves), and none more than a second.
    Before the controller wrote the next hop's MAC itself on an ARP reply to a floating IP
    (controller.neighbour.learned_neighbour), every move back to hv1 lost ~0.5 s of replies (about
    10 pings: a median of 5 here): hv1's cached datapath flow still sent them up as "next hop
    unresolved" until OVS's revalidator ran. The median, not the sum, because a loaded CI machine
    once stalled one move of four for ~0.35 s (7 pings) while the others lost none.
    """
    fip = cloud.fips["a1"]
    ip = cloud.fip("a1")
    count = int((1.0 + len(MOVES) * MOVE_EVERY_S) / PING_EVERY_S)
    try:
        proc = cloud.out.popen(["ping", "-D", "-O", "-i", str(PING_EVERY_S), "-c", str(count), "-W", "1", ip],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        puts = []
        for vm in MOVES:
            puts.append(time.time())
            cloud.associate(fip, vm)
            time.sleep(MOVE_EVERY_S)
        out, _ = proc.communicate(timeout=30)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out
        lost = int(m.group(1)) - int(m.group(2))
        per_move = unanswered_per_move(out, puts)
        print(f"{len(MOVES)} moves, a ping every {PING_EVERY_S * 1e3:.0f} ms: {lost} lost; "
              f"unanswered per move {per_move}")
        assert statistics.median(per_move) <= 1, (lost, per_move, out)
        assert max(per_move) <= 1.0 / PING_EVERY_S, (lost, per_move, out)
        assert echo(cloud.out, ip) == {ip: "a1 tok"}
        assert not flows_mentioning(cloud.lab.hypervisor("hv3"), f"arp_tpa={ip}")
        assert flows_mentioning(cloud.lab.hypervisor("hv1"), f"arp_tpa={ip}")
    finally:
        cloud.associate(fip, "a1")
    wait_until(lambda: echo(cloud.out, ip) == {ip: "a1 tok"}, 10, "the floating IP back at a1")


def test_disassociate_cuts_the_vm_off_and_leaves_no_flow(cloud: Cloud) -> None:
    fip = cloud.fips["b1"]
    ip, mac = cloud.fip("b1"), cloud.fip_mac("b1")
    assert pings(cloud.out, ip, 2) == 2
    cloud.associate(fip, None)
    try:
        wait_until(lambda: not any(flows_mentioning(hv, ip, mac) for hv in cloud.lab.hypervisors), 10,
                   "no flow of the floating IP left")
        assert pings(cloud.out, ip, 3) == 0
        assert "error" in echo(cloud.out, ip)[ip]
        assert pings(cloud.vms["b1"], EXT_GATEWAY, 2) == 0
        # Before giving the address back to the same hypervisor, let its datapath forget the drops
        # (OVS ages an unused datapath flow out after 10 s): OVS 3.1's userspace datapath was once
        # seen keeping a stale datapath drop for the address while it was hit every second, with
        # the OpenFlow tables right (see the README's known issues).
        wait_until(lambda: not datapath_flows(cloud, "hv3", mac), 20, "hv3's datapath forgetting the address")
    finally:
        cloud.associate(fip, "b1")
    wait_until(lambda: pings(cloud.out, ip, 1), 10, lambda: f"the floating IP back at b1\n{diagnose(cloud, ip)}")


def datapath_flows(cloud: Cloud, hv: str, *needles: str) -> list[str]:
    """The datapath (megaflow) entries of ``hv`` mentioning any of ``needles``."""
    dump = cloud.lab.hypervisor(hv).appctl("dpctl/dump-flows").splitlines()
    return [line for line in dump if any(n.lower() in line.lower() for n in needles)]


def diagnose(cloud: Cloud, ip: str) -> str:
    """What a failed floating-IP wait needs: datapath flows of the address, the outside ARP, the log tail."""
    lines = [f"outside neighbours: {cloud.out.cmd('ip neigh').strip()}"]
    for hv in cloud.lab.hypervisors:
        lines += [f"{hv.name} datapath: {line}" for line in datapath_flows(cloud, hv.name, ip)]
        lines += [f"{hv.name} flow: {line}" for line in flows_mentioning(hv, ip)]
    return "\n".join(lines + [cloud.ctrl.log_tail(20)])
