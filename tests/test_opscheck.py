"""``tenantflow check`` and ``tenantflow trace --live`` on a real lab (issue #16 item 3).

The real controller process, two lab hypervisors (private OVS in namespaces) and the demo's
kinds of paths, everything through the REST API::

    hv1: a1 10.0.0.10, a2 10.0.0.11 (t1 net1)   b1 10.0.0.12 (t2 net3: same CIDR, another tenant)
    hv2: a3 10.0.0.12 (t1 net1)                  c1 10.0.1.10 (t1 net2, routed by r1)
    r1: net1 + net2, its gateway on the flat external network ext; a1 has a floating IP;
    the outside host ``out`` 172.24.4.1 on ext.

``check``: equal (exit 0) on a healthy cloud; a flow deleted, a flow added by hand and a flow
modified in place (``mod-flows`` keeps the cookie) on hv1 are each reported in their stage
(exit 1), in ovs-ofctl syntax that ``ovs-ofctl`` takes back to repair them, after which it is
equal again. ``trace --live``: the simulator's verdict agrees with ``ofproto/trace`` on the
hypervisor's own vswitchd for each path.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apps.lab import Lab, LabVM
from apps.lab.controller import ApiError, ControllerProcess
from tests.e2e_fixtures import (
    attached_lab,
    create_network,
    create_port,
    create_security_group_rule,
    pings,
    require_lab,
    running_controller,
    wait_port_active,
    wait_until,
)
from tests.lab_fixtures import lab_prefix

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

T1 = "project-t1-" + uuid.uuid4().hex[:8]
T2 = "project-t2-" + uuid.uuid4().hex[:8]
EXT_CIDR, EXT_GATEWAY = "172.24.4.0/24", "172.24.4.1"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Cloud:
    """The module's controller, lab, VMs (by name) and ports."""

    ctrl: ControllerProcess
    lab: Lab
    vms: dict[str, LabVM] = field(default_factory=dict)
    subnets: dict[str, dict[str, Any]] = field(default_factory=dict)
    router: dict[str, Any] = field(default_factory=dict)
    fip: dict[str, Any] = field(default_factory=dict)
    out: LabVM | None = None

    def port(self, vm: str) -> dict[str, Any]:
        return self.vms[vm].port

    def ip(self, vm: str) -> str:
        return str(self.port(vm)["fixed_ips"][0]["ip_address"])

    def mac(self, vm: str) -> str:
        return str(self.port(vm)["mac_address"])


def _boot(cloud: Cloud, name: str, net: dict, subnet: dict, host: str, ip: str, project: str) -> None:
    port = create_port(cloud.ctrl, net, host, fixed_ips=[{"ip_address": ip}], project_id=project)
    vm = cloud.lab.plug_vm(name, port, mtu=int(net.get("mtu") or 1450), gateway=subnet["gateway_ip"])
    wait_port_active(cloud.ctrl, port["id"])
    cloud.vms[name] = vm


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    require_lab()
    workdir = tmp_path_factory.mktemp("opscheck")
    # --flow-monitor off: these tests change flows by hand for check and trace --live to find; a controller
    # watching its switches would take each change back within milliseconds (README, Switch connections).
    with (running_controller(workdir, "--flow-monitor", "off") as ctrl,
          attached_lab(ctrl, lab_prefix("op"), 2, provider=True) as lab):
        cloud = Cloud(ctrl, lab)
        ext = ctrl.create("network", name="ext", **{"router:external": True, "provider:network_type": "flat",
                                                    "provider:physical_network": lab.physnet})
        ctrl.create("subnet", network_id=ext["id"], cidr=EXT_CIDR, gateway_ip=EXT_GATEWAY, enable_dhcp=False,
                    allocation_pools=[{"start": "172.24.4.10", "end": "172.24.4.250"}])
        cloud.out = lab.add_outside_host("out", f"{EXT_GATEWAY}/24")
        net1, sub1 = create_network(ctrl, "net1", "10.0.0.0/24", project_id=T1)
        net2, sub2 = create_network(ctrl, "net2", "10.0.1.0/24", project_id=T1)
        net3, sub3 = create_network(ctrl, "net3", "10.0.0.0/24", project_id=T2)
        cloud.subnets = {"net1": sub1, "net2": sub2, "net3": sub3}
        cloud.router = ctrl.create("router", project_id=T1, external_gateway_info={"network_id": ext["id"]})
        for sub in (sub1, sub2):
            ctrl.request("PUT", f"/v2.0/routers/{cloud.router['id']}/add_router_interface", {"subnet_id": sub["id"]})
        _boot(cloud, "a1", net1, sub1, "hv1", "10.0.0.10", T1)
        _boot(cloud, "a2", net1, sub1, "hv1", "10.0.0.11", T1)
        _boot(cloud, "a3", net1, sub1, "hv2", "10.0.0.12", T1)
        _boot(cloud, "c1", net2, sub2, "hv2", "10.0.1.10", T1)
        _boot(cloud, "b1", net3, sub3, "hv1", "10.0.0.12", T2)
        sg = ctrl.request("GET", f"/v2.0/security-groups?project_id={T1}&name=default")["security_groups"][0]
        create_security_group_rule(ctrl, sg["id"], "ingress", protocol="icmp", remote_ip_prefix="0.0.0.0/0",
                                   project_id=T1)
        cloud.fip = ctrl.create("floatingip", floating_network_id=ext["id"], port_id=cloud.vms["a1"].port_id,
                                project_id=T1)
        wait_until(lambda: pings(cloud.vms["a1"], cloud.ip("c1"), 1), 15, lambda: f"a1 -> c1\n{ctrl.log_tail()}")
        wait_until(lambda: pings(cloud.out, cloud.fip["floating_ip_address"], 1), 15,
                   lambda: f"out -> a1's floating IP\n{ctrl.log_tail()}")
        yield cloud


def tenantflow(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``tenantflow ARGS`` as an operator runs it (the CLI in a child process)."""
    return subprocess.run([sys.executable, "-m", "apps.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# -- tenantflow check ------------------------------------------------------------------------------
def check(cloud: Cloud, *args: str) -> subprocess.CompletedProcess[str]:
    return tenantflow("check", "--url", cloud.ctrl.api_url, *args)


def stage_lines(out: str, hv: str, stage: str) -> list[str]:
    """The ``-``/``+`` flow lines ``check`` printed under ``stage`` of hypervisor ``hv``."""
    block = re.search(rf"^{hv}: .*?(?=^\S|\Z)", out, re.M | re.S)
    assert block, out
    section = re.search(rf"^    {stage} \(table \d+\):\n((?:      [-+] .*\n?)*)", block.group(0), re.M)
    return [line.strip() for line in section.group(1).splitlines() if line.strip()] if section else []


def test_check_equal_on_a_healthy_cloud(cloud: Cloud) -> None:
    result = check(cloud)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"hv1: \d+ flows( \(\+\d+ learned\))?, equal", lines[0]), lines
    assert re.fullmatch(r"hv2: \d+ flows( \(\+\d+ learned\))?, equal", lines[1]), lines
    assert lines[2] == "2 hypervisors: 2 equal, 0 not"
    as_json = check(cloud, "--json", "--hv", "hv2")
    assert as_json.returncode == 0
    (hv2,) = json.loads(as_json.stdout)["hypervisors"]
    assert hv2["hypervisor"] == "hv2" and hv2["equal"] and hv2["compiled"] > 50


def test_check_reports_flows_deleted_added_and_modified_by_hand(cloud: Cloud) -> None:
    hv1 = cloud.lab.hypervisor("hv1")
    a2_port = hv1.ofport(cloud.vms["a2"].tap)
    deliver = next(line for line in hv1.ofctl("dump-flows", "br-int", "table=60").splitlines()
                   if "priority=100" in line and f"actions=output:{a2_port}" in line)
    deleted = re.search(r"cookie=(0x[0-9a-f]+)", deliver).group(1)
    hv1.ofctl("del-flows", "br-int", f"cookie={deleted}/-1")
    hv1.ofctl("add-flow", "br-int", "table=30,priority=200,dl_dst=fa:16:3e:00:00:99,actions=drop")
    arp_next = next(line for line in hv1.ofctl("dump-flows", "br-int", "table=20").splitlines() if "priority=0" in line)
    modified = re.search(r"cookie=(0x[0-9a-f]+)", arp_next).group(1)
    hv1.ofctl("mod-flows", "--strict", "br-int", "table=20,priority=0,actions=drop")  # keeps the cookie
    assert f"cookie={modified}" in next(line for line in hv1.ofctl("dump-flows", "br-int", "table=20").splitlines()
                                        if "priority=0 " in line or "priority=0," in line)

    result = check(cloud)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"^hv1: \d+ compiled, \d+ installed.*: 2 missing, 2 extra", out, re.M), out
    assert re.search(r"^hv2: \d+ flows.*, equal$", out, re.M), out
    (gone,) = stage_lines(out, "hv1", "ls_out_deliver")
    assert gone.startswith(f"- table=60,priority=100,cookie={deleted},"), out
    (added,) = stage_lines(out, "hv1", "ls_in_l2_lookup")
    assert added == "+ table=30,priority=200,cookie=0x0,dl_dst=fa:16:3e:00:00:99 actions=drop", out
    was, now = stage_lines(out, "hv1", "ls_in_arp_rsp")
    assert was == f"- table=20,priority=0,cookie={modified} actions=goto_table:22", out
    assert now == f"+ table=20,priority=0,cookie={modified} actions=drop", out

    # The lines are ovs-ofctl's syntax: an operator repairs the switch with them, and it is equal again.
    for line in (added, now):
        spec = re.sub(r",cookie=0x[0-9a-f]+", "", line[2:]).split(" actions=")[0]
        hv1.ofctl("--strict", "del-flows", "br-int", spec)
    for line in (gone, was):
        hv1.ofctl("add-flow", "br-int", line[2:])
    result = check(cloud)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_meters_and_groups_removed_or_added_by_hand(cloud: Cloud) -> None:
    hv1 = cloud.lab.hypervisor("hv1")
    meter = re.search(r"meter=(\d+)", hv1.ofctl("dump-meters", "br-int")).group(1)
    hv1.ofctl("del-meter", "br-int", f"meter={meter}")  # OVS deletes the flows using it with it
    hv1.ofctl("add-group", "br-int", "group_id=4242,type=all,bucket=actions=drop")
    result = check(cloud)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    meters = re.search(r"^    meters:\n      - (meter=\d+,pktps.*)$", out, re.M)
    assert meters and meters.group(1).startswith(f"meter={meter},"), out
    assert re.search(r"^    groups:\n      \+ group_id=4242$", out, re.M), out
    gone = [line.strip()[2:] for line in out.splitlines() if line.strip().startswith("- table=")]
    assert gone and all(f"meter:{meter}" in line for line in gone), out

    hv1.ofctl("del-groups", "br-int", "group_id=4242")
    hv1.ofctl("add-meter", "br-int", meters.group(1))  # as printed
    for line in gone:
        hv1.ofctl("add-flow", "br-int", line)
    result = check(cloud)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_of_an_unknown_hypervisor_is_a_clear_error(cloud: Cloud) -> None:
    result = check(cloud, "--hv", "nosuch")
    assert result.returncode == 2
    assert "HTTP 404" in result.stderr and "nosuch" in result.stderr and "Traceback" not in result.stderr


def test_check_api_answers_json_for_every_hypervisor_or_one(cloud: Cloud) -> None:
    every = cloud.ctrl.request("GET", "/check")["hypervisors"]
    assert [h["hypervisor"] for h in every] == ["hv1", "hv2"]
    for h in every:
        assert h["connected"] and h["mastered"] and h["equal"] and h["synced"], h
        assert h["installed"] == h["compiled"] + h["learned"] and h["missing"] == h["extra"] == [], h
    hv2 = cloud.ctrl.request("GET", "/check/hv2")["hypervisor"]
    assert hv2["datapath_id"] == f"{cloud.lab.hypervisor('hv2').dpid:016x}"
    with pytest.raises(ApiError) as missing:
        cloud.ctrl.request("GET", "/check/nosuch")
    assert missing.value.status == 404 and "nosuch" in str(missing.value.body)
    with pytest.raises(ApiError) as refused:
        cloud.ctrl.request("POST", "/check/hv1", {})
    assert refused.value.status == 405


# -- tenantflow trace --live --------------------------------------------------------------------------
def router_mac(cloud: Cloud, subnet: str) -> str:
    ports = cloud.ctrl.request("GET", "/v2.0/ports?device_owner=network:router_interface")["ports"]
    return next(p["mac_address"] for p in ports if p["fixed_ips"][0]["subnet_id"] == cloud.subnets[subnet]["id"])


def trace_live(cloud: Cloud, hv: str, in_port: str, *fields: str) -> subprocess.CompletedProcess[str]:
    """``tenantflow trace --live`` on ``hv``, asking that hypervisor's own vswitchd (its unixctl socket)."""
    ctl = cloud.lab.hypervisor(hv).ovs.vswitchd_ctl
    return tenantflow("trace", "--db", cloud.ctrl.db, "--hv", hv, "--in-port", in_port, "--live", "--appctl", ctl,
                      *fields)


def verdicts(out: str) -> tuple[str, str]:
    sim = re.search(r"^simulator: (.*)$", out, re.M)
    ovs = re.search(r"^ovs:       (.*)$", out, re.M)
    assert sim and ovs, out
    return sim.group(1), ovs.group(1)


def icmp(cloud: Cloud, src: str, dst_mac: str, dst_ip: str) -> tuple[str, ...]:
    return (f"eth_dst={dst_mac}", f"ipv4_src={cloud.ip(src)}", f"ipv4_dst={dst_ip}", "ip_proto=1", "icmpv4_type=8")


PATHS = {  # name -> (hypervisor, sender, what the bridge must do with it)
    "same subnet, same host": ("hv1", "a1", "a2 tap"),
    "same subnet, across hosts": ("hv1", "a1", "tunnel to hv2"),
    "routed, across hosts": ("hv1", "a1", "tunnel to hv2"),
    "ARP answered on the host": ("hv1", "a1", "back to a1"),
    "another tenant's address: isolated": ("hv1", "b1", "dropped"),
    "from outside to a floating IP": ("hv1", "phy-physnet1", "a1 tap"),
    "a DHCP request: up to the controller": ("hv2", "c1", "CONTROLLER"),
}


def _path_fields(cloud: Cloud, path: str) -> tuple[str, ...]:
    if path == "same subnet, same host":
        return icmp(cloud, "a1", cloud.mac("a2"), cloud.ip("a2"))
    if path == "same subnet, across hosts":
        return icmp(cloud, "a1", cloud.mac("a3"), cloud.ip("a3"))
    if path == "routed, across hosts":
        return icmp(cloud, "a1", router_mac(cloud, "net1"), cloud.ip("c1"))
    if path == "ARP answered on the host":
        return (f"arp_tpa={cloud.ip('a2')}",)
    if path == "a DHCP request: up to the controller":
        return ("eth_dst=ff:ff:ff:ff:ff:ff", "ipv4_src=0.0.0.0", "ipv4_dst=255.255.255.255", "ip_proto=17",
                "udp_src=68", "udp_dst=67")
    if path == "another tenant's address: isolated":  # b1 (tenant 2, alone in its network on hv1) to a1
        return icmp(cloud, "b1", cloud.mac("a1"), cloud.ip("a1"))
    assert cloud.out is not None
    fip = cloud.fip["floating_ip_address"]
    fip_mac = next(p["mac_address"] for p in cloud.ctrl.request("GET", "/v2.0/ports?device_owner=network:floatingip")
                   ["ports"] if p["device_id"] == cloud.fip["id"])
    out_mac = cloud.out.cmd("cat /sys/class/net/eth0/address").strip()
    return (f"eth_src={out_mac}", f"eth_dst={fip_mac}", f"ipv4_src={EXT_GATEWAY}", f"ipv4_dst={fip}", "ip_proto=1",
            "icmpv4_type=8")


def _expected(cloud: Cloud, what: str) -> str:
    """The verdict (a regular expression) both must give."""
    if what.endswith(" tap"):
        return cloud.vms[what.split()[0]].tap
    if what == "back to a1":
        return cloud.vms["a1"].tap
    if what == "tunnel to hv2":
        return rf"tf-vxlan \(tun_dst={cloud.lab.hypervisor('hv2').tunnel_ip}, key=\d+\)"
    assert what in ("dropped", "CONTROLLER")
    return what


@pytest.mark.parametrize("path", list(PATHS))
def test_trace_live_agrees_with_ofproto_trace(cloud: Cloud, path: str) -> None:
    hv, sender, what = PATHS[path]
    in_port = cloud.vms[sender].port_id if sender in cloud.vms else sender
    result = trace_live(cloud, hv, in_port, *_path_fields(cloud, path))
    assert result.returncode == 0, result.stdout + result.stderr
    sim, ovs = verdicts(result.stdout)
    assert sim == ovs, result.stdout
    assert re.fullmatch(_expected(cloud, what), ovs), result.stdout
    assert result.stdout.rstrip().endswith("agree"), result.stdout


def test_trace_live_reports_a_switch_that_disagrees(cloud: Cloud) -> None:
    """a2's delivery flow on hv1 changed by hand to drop: the simulator still delivers, OVS drops; exit 1."""
    hv1 = cloud.lab.hypervisor("hv1")
    a2_port = hv1.ofport(cloud.vms["a2"].tap)
    (spec,) = [m.group(1) for line in hv1.ofctl("dump-flows", "br-int", "table=60").splitlines()
               if (m := re.search(rf"(priority=\S+) actions=output:{a2_port}$", line))]
    hv1.ofctl("mod-flows", "--strict", "br-int", f"table=60,{spec},actions=drop")
    try:
        result = trace_live(cloud, "hv1", cloud.vms["a1"].port_id, *_path_fields(cloud, "same subnet, same host"))
        assert result.returncode == 1, result.stdout + result.stderr
        assert verdicts(result.stdout) == (cloud.vms["a2"].tap, "dropped"), result.stdout
        assert "DISAGREE" in result.stdout
    finally:
        for line in check(cloud).stdout.splitlines():  # the compiled flow back, as check prints it
            if line.strip().startswith("- "):
                hv1.ofctl("add-flow", "br-int", line.strip()[2:])
    assert check(cloud).returncode == 0
