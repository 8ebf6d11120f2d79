"""Source NAT on HA gateway hypervisors, end to end on real OVS (issue #13 acceptance).

The real controller process and a five-hypervisor lab: hv1-hv3 compute, hv4 and hv5
registered as gateways for ``physnet1``; the controller, as every hypervisor's OVSDB
manager, creates the BFD tunnels between them. The external network ``ext`` is flat on
``physnet1``; the outside host ``out`` (172.24.4.1) is the external subnet's gateway::

    hv1: s1 10.0.0.11 (no FIP)   hv2: s2 10.0.0.12 (no FIP)   hv3: f3 10.0.0.13 (FIP)

Proofs on real frames: a VM without a floating IP pings and opens TCP to the outside
host, which sees only the router's gateway address; the floating-IP VM leaves from its
own hypervisor (nothing of it on the gateways' underlay links); the active gateway's
vswitchd killed (with the controller running, and with it stopped) or its underlay link
cut: the gap in replies to pings every 10 ms stays under a second; the failed gateway
coming back does not take the router back.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apps.lab import Lab, LabVM, sh
from apps.lab.controller import ControllerProcess
from apps.lab.ping import ping_gap
from tests.e2e_fixtures import (
    ECHO_CLIENT,
    attached_lab,
    create_network,
    create_port,
    create_security_group,
    create_security_group_rule,
    pings,
    plug_new_vm,
    require_lab,
    running_controller,
    start_echo,
    wait_port_active,
    wait_until,
)

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

PROJECT = "project-snat-" + uuid.uuid4().hex[:8]
EXT_CIDR, EXT_GATEWAY = "172.24.4.0/24", "172.24.4.1"
ECHO_PORT = 7013
LAYOUT = {"s1": ("hv1", "10.0.0.11"), "s2": ("hv2", "10.0.0.12"), "f3": ("hv3", "10.0.0.13")}
GATEWAYS = ("hv4", "hv5")
GAP_LIMIT = 1.0  # seconds: the acceptance (goal 0.5)


@dataclass
class Cloud:
    """The module's controller, lab, outside host, router and VMs."""

    ctrl: ControllerProcess
    lab: Lab
    workdir: Path
    out: LabVM
    router: dict[str, Any]
    ext: dict[str, Any]
    net: dict[str, Any]
    vms: dict[str, LabVM] = field(default_factory=dict)
    fip: str = ""
    gaps: dict[str, float] = field(default_factory=dict)

    @property
    def gateway_address(self) -> str:
        info = self.ctrl.request("GET", f"/v2.0/routers/{self.router['id']}")["router"]["external_gateway_info"]
        return str(info["external_fixed_ips"][0]["ip_address"])

    def gateway_list(self) -> list[str]:
        return list(self.ctrl.request("GET", f"/v2.0/routers/{self.router['id']}")["router"]["gateway_hypervisors"])




@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    require_lab()
    workdir = tmp_path_factory.mktemp("snat")
    with running_controller(workdir) as ctrl, \
            attached_lab(ctrl, "tfs", 5, provider=True, gateways=GATEWAYS) as lab:
        ext = ctrl.create("network", name="ext", **{"router:external": True, "provider:network_type": "flat",
                                                    "provider:physical_network": lab.physnet})
        ctrl.create("subnet", network_id=ext["id"], cidr=EXT_CIDR, gateway_ip=EXT_GATEWAY, enable_dhcp=False,
                    allocation_pools=[{"start": "172.24.4.10", "end": "172.24.4.250"}])
        out = lab.add_outside_host("out", f"{EXT_GATEWAY}/24")
        out.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
        start_echo(out, "out", ECHO_PORT)
        net, subnet = create_network(ctrl, "net-snat", "10.0.0.0/24", project_id=PROJECT)
        router = ctrl.create("router", project_id=PROJECT, external_gateway_info={"network_id": ext["id"]})
        ctrl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": subnet["id"]})
        cloud = Cloud(ctrl, lab, workdir, out, router, ext, net)
        sg = create_security_group(ctrl, "public", PROJECT)
        create_security_group_rule(ctrl, sg["id"], "ingress", remote_ip_prefix="0.0.0.0/0", project_id=PROJECT,
                                   protocol="icmp")
        for name, (host, ip) in LAYOUT.items():
            port = create_port(ctrl, net, host, fixed_ips=[{"ip_address": ip}], project_id=PROJECT,
                               security_groups=[sg["id"]])
            vm = lab.plug_vm(name, port, mtu=int(net.get("mtu") or 1450), gateway=subnet["gateway_ip"])
            vm.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            wait_port_active(ctrl, port["id"])
            cloud.vms[name] = vm
        fip = ctrl.create("floatingip", floating_network_id=ext["id"], port_id=cloud.vms["f3"].port_id,
                          project_id=PROJECT)
        cloud.fip = str(fip["floating_ip_address"])
        wait_until(lab.gateway_tunnels_up, 20, lambda: f"BFD between computes and gateways\n{ctrl.log_tail(40)}")
        for name in LAYOUT:
            wait_until(lambda n=name: pings(cloud.vms[n], EXT_GATEWAY, 1), 10,
                       lambda n=name: f"{n} reaching the outside host\n{ctrl.log_tail(60)}")
        yield cloud
        if cloud.gaps:
            print("\nfailover gaps (s):", {k: round(v, 3) for k, v in cloud.gaps.items()})


# -- helpers -------------------------------------------------------------------------------------

def echo(host: LabVM, address: str) -> str:
    """TCP to the echo server at ``address``: its answer (``<server name> <token>``) or the error."""
    proc = host.popen([sys.executable, "-c", ECHO_CLIENT, "tok", str(ECHO_PORT), address],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])[address] if out.strip() else err


def capture(netns: str, dev: str, path: Path, bpf: str, *extra: str) -> subprocess.Popen:
    """tcpdump into ``path``; stop it with :func:`stop_capture`."""
    err = path.with_suffix(".err")
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-i", dev, "-n", "-U", "--immediate-mode",
                             "-w", str(path), *extra, *bpf.split()], stdout=subprocess.DEVNULL, stderr=err.open("w"))
    wait_until(lambda: "listening on" in err.read_text(), 5, f"tcpdump on {netns}/{dev}")
    return proc


def stop_capture(proc: subprocess.Popen, path: Path, *extra: str) -> list[str]:
    time.sleep(0.3)
    sh.kill_pids([proc.pid])
    read = subprocess.run(["tcpdump", "-n", "-r", str(path), *extra], capture_output=True, text=True)
    return read.stdout.splitlines()


def reply_gap(vm: LabVM, dst: str, seconds: float, fault: Callable[[], None]) -> float:
    """Ping ``dst`` every 10 ms for ``seconds``, ``fault`` after 1.5 s: the longest gap between replies."""
    return ping_gap(vm, dst, seconds, fault)[0]



def restore(cloud: Cloud, name: str) -> None:
    """Bring gateway ``name``'s vswitchd back and wait for BFD and the controller's sync."""
    cloud.lab.hypervisor(name).start_vswitchd()
    wait_until(cloud.lab.gateway_tunnels_up, 20, "BFD back up")
    cloud.ctrl.request("GET", "/sync?wait=20")


def underlay(lab: Lab, name: str, state: str) -> None:
    sh.run(["ip", "-n", lab.fabric_netns, "link", "set", f"{name}-u", state])


# -- the acceptance ------------------------------------------------------------------------------
def test_router_is_scheduled_on_both_gateways(cloud: Cloud) -> None:
    assert sorted(cloud.gateway_list()) == sorted(GATEWAYS)
    router = cloud.ctrl.request("GET", f"/v2.0/routers/{cloud.router['id']}")["router"]
    assert router["active_gateway_hypervisor"] == cloud.gateway_list()[0]
    hv = cloud.ctrl.request("GET", f"/v2.0/hypervisors/{GATEWAYS[0]}")["hypervisor"]
    assert hv["gateway_for"] == [cloud.lab.physnet]


def test_vm_without_fip_leaves_as_the_router_gateway_address(cloud: Cloud) -> None:
    path = cloud.workdir / "snat-out.pcap"
    cap = capture(cloud.out.netns, "eth0", path, "ip")
    assert pings(cloud.vms["s1"], EXT_GATEWAY, 5) == 5
    assert echo(cloud.vms["s2"], EXT_GATEWAY) == "out tok"
    lines = stop_capture(cap, path)
    gw = cloud.gateway_address
    assert any(f"{gw} > {EXT_GATEWAY}: ICMP echo request" in line for line in lines), lines
    assert any(f"{gw}." in line and f"> {EXT_GATEWAY}.{ECHO_PORT}" in line for line in lines), lines
    assert not [line for line in lines if "10.0.0." in line], "a fixed address showed on the external network"


def test_floating_ip_traffic_never_touches_a_gateway(cloud: Cloud) -> None:
    caps = {}
    for name in GATEWAYS:
        path = cloud.workdir / f"underlay-{name}.pcap"
        caps[name] = (capture(cloud.lab.fabric_netns, f"{name}-u", path, "udp port 4789 or udp port 4790"), path)
    assert pings(cloud.vms["f3"], EXT_GATEWAY, 5) == 5
    for name, (proc, path) in caps.items():
        lines = stop_capture(proc, path, "-T", "vxlan")
        assert lines, f"{name}: the capture saw nothing, not even BFD"
        assert not [line for line in lines if "10.0.0.13" in line or cloud.fip in line], (name, lines)
    # ...while the SNAT traffic of s1 does cross the active gateway's underlay link
    active = cloud.gateway_list()[0]
    path = cloud.workdir / "underlay-snat.pcap"
    proc = capture(cloud.lab.fabric_netns, f"{active}-u", path, "udp port 4790")
    assert pings(cloud.vms["s1"], EXT_GATEWAY, 3) == 3
    lines = stop_capture(proc, path, "-T", "vxlan")
    assert [line for line in lines if "10.0.0.11" in line], (active, lines[:20], path.with_suffix(".err").read_text())


def test_killed_gateway_fails_over_in_the_dataplane(cloud: Cloud) -> None:
    active, standby = cloud.gateway_list()
    gap = reply_gap(cloud.vms["s1"], EXT_GATEWAY, 5, cloud.lab.hypervisor(active).kill_vswitchd)
    cloud.gaps["vswitchd killed"] = gap
    assert gap < GAP_LIMIT
    wait_until(lambda: cloud.gateway_list()[0] == standby, 10, "the controller keeping the new active gateway")
    restore(cloud, active)
    # back, but not preempting: the gap while it returns is nothing like an outage
    back = reply_gap(cloud.vms["s1"], EXT_GATEWAY, 3, lambda: None)
    assert back < 0.5 and cloud.gateway_list() == [standby, active]


def test_failover_with_the_controller_stopped(cloud: Cloud) -> None:
    active, _standby = cloud.gateway_list()
    cloud.ctrl.stop()
    try:
        gap = reply_gap(cloud.vms["s2"], EXT_GATEWAY, 5, cloud.lab.hypervisor(active).kill_vswitchd)
        cloud.gaps["vswitchd killed, controller stopped"] = gap
        assert gap < GAP_LIMIT
    finally:
        cloud.ctrl.start()
        cloud.ctrl.request("GET", "/sync?wait=30")
    restore(cloud, active)
    assert pings(cloud.vms["s2"], EXT_GATEWAY, 5) >= 4


def test_underlay_cut_fails_over(cloud: Cloud) -> None:
    active = cloud.gateway_list()[0]
    try:
        gap = reply_gap(cloud.vms["s1"], EXT_GATEWAY, 5, lambda: underlay(cloud.lab, active, "down"))
        cloud.gaps["underlay cut"] = gap
        assert gap < GAP_LIMIT
        # the cut gateway, still on the external network, has gone silent for the gateway address:
        # one answer per ARP request (from the new active gateway), not two
        answers = cloud.out.cmd(f"arping -c 3 -I eth0 {cloud.gateway_address}")
        assert len(re.findall(r"bytes from", answers)) == 3 and "(0 extra)" in answers, answers
    finally:
        underlay(cloud.lab, active, "up")
    wait_until(cloud.lab.gateway_tunnels_up, 20, "BFD back up")
    assert pings(cloud.vms["s1"], EXT_GATEWAY, 5) >= 4


def test_ipv6_leaves_untranslated_from_the_vm_s_own_hypervisor(cloud: Cloud) -> None:
    """An IPv6 external subnet: the router's IPv6 subnets are routed out without NAT, each packet out
    of its VM's own hypervisor; the upstream reaches them via the router's IPv6 gateway address (the
    route the README shows), answered by the active gateway."""
    ctrl, lab = cloud.ctrl, cloud.lab
    ext6 = ctrl.create("subnet", network_id=cloud.ext["id"], cidr="2001:db8:ee::/64", ip_version=6,
                       gateway_ip="2001:db8:ee::1", enable_dhcp=False)
    router = ctrl.request("GET", f"/v2.0/routers/{cloud.router['id']}")["router"]
    kept = router["external_gateway_info"]["external_fixed_ips"]
    router = ctrl.request("PUT", f"/v2.0/routers/{cloud.router['id']}", {"router": {"external_gateway_info": {
        "network_id": cloud.ext["id"], "external_fixed_ips": [*kept, {"subnet_id": ext6["id"]}]}}})["router"]
    gw6 = next(f["ip_address"] for f in router["external_gateway_info"]["external_fixed_ips"] if ":" in f["ip_address"])
    tenant6 = ctrl.create("subnet", network_id=cloud.net["id"], cidr="2001:db8:10::/64", ip_version=6,
                          project_id=PROJECT)
    ctrl.request("PUT", f"/v2.0/routers/{cloud.router['id']}/add_router_interface", {"subnet_id": tenant6["id"]})
    vm = plug_new_vm(ctrl, lab, "s6", cloud.net, "hv1", project_id=PROJECT)
    vm6 = next(f["ip_address"] for f in vm.port["fixed_ips"] if ":" in f["ip_address"])
    vm.cmd(f"ip -6 route replace default via {tenant6['gateway_ip']}")
    out = cloud.out
    out.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.eth0.disable_ipv6=0")
    out.cmd("ip -6 addr add 2001:db8:ee::1/64 dev eth0 nodad")
    out.cmd(f"ip -6 route replace 2001:db8:10::/64 via {gw6}")  # the upstream's route (README)
    wait_until(lambda: "bytes from" in vm.cmd("ping -6 -n -c1 -W1 2001:db8:ee::1"), 15,
               lambda: f"{vm6} -> 2001:db8:ee::1\n{ctrl.log_tail(40)}")
    paths = {name: cloud.workdir / f"v6-{name}.pcap" for name in ("out", "hv1", *GATEWAYS)}
    caps = {"out": capture(out.netns, "eth0", paths["out"], "ip6")}
    for name in ("hv1", *GATEWAYS):
        caps[name] = capture(lab.fabric_netns, f"{name}-p", paths[name], "ip6")
    answered = vm.cmd("ping -6 -n -c5 -i0.2 -W1 2001:db8:ee::1")
    lines = {name: stop_capture(proc, paths[name]) for name, proc in caps.items()}
    assert "5 received" in answered, answered
    request = f"{vm6} > 2001:db8:ee::1: ICMP6, echo request"
    assert sum(request in line for line in lines["out"]) == 5, lines["out"]  # untranslated
    assert sum(request in line for line in lines["hv1"]) == 5, lines["hv1"]  # out of its own hypervisor
    for name in GATEWAYS:
        assert not [line for line in lines[name] if request in line], (name, lines[name])
    active = cloud.gateway_list()[0]  # the way back: through the active gateway
    assert sum(f"> {vm6}: ICMP6, echo reply" in line for line in lines[active]) == 5, lines[active]
