"""The soak's cloud: a controller process, a lab, a tenant network behind a router, VMs, a floating IP.

Built through the documented interfaces only, in the operator's order (as ``tenantflow demo``
and the end-to-end tests do): ``tenantflow controller`` as a child process, a lab of private-OVS
hypervisors attached over its unix sockets and registered through the API, then everything
else through the Neutron API. Also here: the pings that run between every pair of VMs, the
controller restart, and the comparison of every bridge with its compiled flows.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from apps.lab import sh
from apps.lab.controller import ControllerProcess, compile_stored
from apps.lab.lab import Hypervisor, Lab, LabVM
from apps.lab.sh import wait_until
from controller.switch import learned_cookies
from flows.pipeline import STAGES

PROJECT = "soak"
CIDR, EXT_CIDR, EXT_GATEWAY = "10.30.0.0/24", "172.24.8.0/24", "172.24.8.1"
OFPP_LOCAL = 0xFFFFFFFE
_SWITCH_OWNED = {s.table_id for s in STAGES if s.switch_owned}
_FLOW = re.compile(r"cookie=(0x[0-9a-f]+),.* table=(\d+),")
_PORT = re.compile(r"^\s*(\d+|LOCAL)\(([^)]+)\):", re.M)


def answers(vm: LabVM, dst: str, count: int = 1) -> int:
    """How many of ``count`` pings from ``vm`` to ``dst`` were answered."""
    m = re.search(r"(\d+) received", vm.cmd(f"ping -n -c{count} -i0.2 -W1 {dst}"))
    return int(m.group(1)) if m else 0


class PingStream:
    """``ping -D -O`` from a VM to an address every ``interval`` s until stopped, its output in a file."""

    def __init__(self, src: str, netns: str, dst_name: str, dst: str, interval: float, directory: str) -> None:
        self.src, self.dst_name, self.dst, self.interval = src, dst_name, dst, interval
        self.path = os.path.join(directory, f"ping-{src}-{dst_name}.txt")
        self._read = 0  # how far :meth:`unanswered_since` has read
        with open(self.path, "w") as out:
            # `ip netns exec` execs ping itself: the PID is ping's, and SIGINT makes it print its summary
            self.proc = subprocess.Popen(["ip", "netns", "exec", netns, "ping", "-D", "-O", "-n", "-i", str(interval),
                                          "-W", "1", dst], stdout=out, stderr=subprocess.STDOUT)

    @property
    def pair(self) -> str:
        """``src-dst``, the key of this stream in the results."""
        return f"{self.src}-{self.dst_name}"

    def unanswered_since(self) -> int:
        """"No answer yet" reports since the last call (a live, approximate loss count for the progress line)."""
        with open(self.path) as fh:
            fh.seek(self._read)
            text = fh.read()
        self._read += len(text.encode())
        return text.count("no answer yet")

    def stop(self) -> str:
        """SIGINT (ping prints its summary), reap; the whole output."""
        sh.interrupt(self.proc, timeout=10)
        with open(self.path) as fh:
            return fh.read()


@dataclass
class Cloud:
    """What the soak runs on, and what it knows about it."""

    ctl: ControllerProcess
    lab: Lab
    workdir: str
    net: dict[str, Any] = field(default_factory=dict)
    subnet: dict[str, Any] = field(default_factory=dict)
    sg: dict[str, Any] = field(default_factory=dict)
    ext: dict[str, Any] = field(default_factory=dict)
    out: LabVM | None = None
    vms: dict[str, LabVM] = field(default_factory=dict)  # every VM of the ping mesh
    ips: dict[str, str] = field(default_factory=dict)
    untouched: set[str] = field(default_factory=set)  # mesh VMs whose ports the churn never touches
    fip: dict[str, Any] = field(default_factory=dict)
    fip_holders: list[str] = field(default_factory=list)

    # -- building ----------------------------------------------------------------------
    def build(self, vms_per_hv: int, vm_hosts: int) -> None:
        """External network, tenant network + router, an open-ICMP group, the VMs, one floating IP.

        The untouched VMs and the floating IP's holders go on the first ``vm_hosts`` hypervisors;
        the others are left to the churn (see :class:`apps.soak.churn.Churn`).
        """
        ctl, lab = self.ctl, self.lab
        self.ext = ctl.create("network", name="soak-ext", **{
            "router:external": True, "provider:network_type": "flat", "provider:physical_network": lab.physnet})
        ctl.create("subnet", network_id=self.ext["id"], cidr=EXT_CIDR, gateway_ip=EXT_GATEWAY, enable_dhcp=False,
                   allocation_pools=[{"start": "172.24.8.10", "end": "172.24.8.250"}])
        self.out = lab.add_outside_host("out", f"{EXT_GATEWAY}/24")
        self.net = ctl.create("network", name="soak-net", project_id=PROJECT)
        self.subnet = ctl.create("subnet", network_id=self.net["id"], cidr=CIDR, ip_version=4, project_id=PROJECT)
        router = ctl.create("router", name="soak-router", project_id=PROJECT,
                            external_gateway_info={"network_id": self.ext["id"]})
        ctl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": self.subnet["id"]})
        self.sg = ctl.request("POST", "/v2.0/security-groups",
                              {"security_group": {"name": "soak", "project_id": PROJECT}})["security_group"]
        self.add_rule(protocol="icmp", remote_ip_prefix="0.0.0.0/0")
        hosts = lab.hypervisors[:vm_hosts]
        for hv in hosts:
            for k in range(vms_per_hv):
                name = f"s{hv.index}{chr(ord('a') + k)}"
                self.boot(name, hv.name)
                self.untouched.add(name)
        self.fip_holders = ["f1", "f2"]
        for name, hv in zip(self.fip_holders, (hosts[0], hosts[-1]), strict=True):
            self.boot(name, hv.name)
        self.fip = ctl.create("floatingip", floating_network_id=self.ext["id"], project_id=PROJECT,
                              port_id=self.vms[self.fip_holders[0]].port_id)

    def boot(self, name: str, host: str, mesh: bool = True) -> LabVM:
        """A port on the tenant network bound to ``host`` (Nova's create), a VM plugged on it, ACTIVE."""
        port = self.ctl.create("port", network_id=self.net["id"], project_id=PROJECT, device_owner="compute:nova",
                               security_groups=[self.sg["id"]], **{"binding:host_id": host})
        vm = self.lab.plug_vm(name, port, mtu=int(self.net.get("mtu") or 1450), gateway=self.subnet["gateway_ip"])
        vm.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
        wait_until(lambda: self.ctl.show("port", port["id"])["status"] == "ACTIVE", 15, f"port of {name} ACTIVE")
        if mesh:
            self.vms[name], self.ips[name] = vm, port["fixed_ips"][0]["ip_address"]
        return vm

    def add_rule(self, **attrs: Any) -> dict[str, Any]:
        """An ingress IPv4 rule in the soak's group."""
        body = {"security_group_rule": {"security_group_id": self.sg["id"], "direction": "ingress",
                                        "ethertype": "IPv4", "project_id": PROJECT, **attrs}}
        return dict(self.ctl.request("POST", "/v2.0/security-group-rules", body)["security_group_rule"])

    @property
    def fip_address(self) -> str:
        """The floating IP the outside host pings."""
        return str(self.fip["floating_ip_address"])

    def wait_reachable(self, timeout: float = 30.0) -> None:
        """Every mesh pair answers (the first packet to a new peer may be spent on ARP), and the floating IP."""
        for a, b in combinations(sorted(self.vms), 2):
            wait_until(lambda a=a, b=b: answers(self.vms[a], self.ips[b]), timeout, f"{a} -> {b} answering")
        assert self.out is not None
        wait_until(lambda: answers(self.out, self.fip_address), timeout, "the floating IP answering the outside host")

    def pings(self, interval: float, directory: str) -> list[PingStream]:
        """A ping stream for every unordered pair of mesh VMs (a round trip checks both ways), and outside -> FIP."""
        streams = [PingStream(a, self.vms[a].netns, b, self.ips[b], interval, directory)
                   for a, b in combinations(sorted(self.vms), 2)]
        assert self.out is not None
        streams.append(PingStream("out", self.out.netns, "fip", self.fip_address, interval, directory))
        return streams

    # -- the controller ----------------------------------------------------------------
    def restart(self, sig: int, timeout: float = 30.0) -> tuple[float, float]:
        """Stop the controller with ``sig``, start it on the same state; seconds until every switch is
        synced, and until every hypervisor's OVSDB is connected to it again (its own back-off, up to 8 s)."""
        began = time.monotonic()
        self.ctl.restart(sig)
        n = len(self.lab.hypervisors)
        for hv in self.lab.hypervisors:
            self.ctl.wait_hypervisor_connected(hv.name, timeout=timeout)
        # the gauge is 1 only once a switch's connect-time reconcile has finished
        wait_until(lambda: self.ctl.metrics().get("tenantflow_switch_connected", 0) == n, timeout,
                 "every switch synced after the restart")
        synced = time.monotonic() - began
        for hv in self.lab.hypervisors:
            wait_until(lambda hv=hv: "false" not in hv.vsctl("--bare", "--columns=is_connected", "list", "Manager"),
                     timeout, f"{hv.name}'s OVSDB connected to the controller again", interval=0.2)
        return synced, time.monotonic() - began

    # -- switches against their compiled flows -----------------------------------------
    def switch_differences(self) -> dict[str, dict[str, Any]]:
        """Per hypervisor: its br-int (``ovs-ofctl dump-flows``) against its compiled flows.

        "Compiled" does not ask the controller: its SQLite file is snapshotted and compiled by
        ``flows.compiler`` with the switch's own port map (:func:`compile_stored`). Flows the
        switch learned itself (learn actions, in a switch-owned stage) are not compiled and not
        counted. Returns ``{hv: {"flows", "extra", "missing"}}`` with (table, cookie) lists.
        """
        maps = {hv.name: switch_ofports(hv) for hv in self.lab.hypervisors}
        want = compile_stored(self.ctl.db, maps)
        out = {}
        for hv in self.lab.hypervisors:
            flows = want[hv.name]
            need = Counter((f.table_id, f.cookie) for f in flows)
            have = switch_cookies(hv, learned_cookies(flows))
            out[hv.name] = {"flows": sum(need.values()), "extra": sorted((have - need).elements()),
                            "missing": sorted((need - have).elements())}
        return out

    def wait_switches_equal(self, timeout: float) -> tuple[dict[str, dict[str, Any]], float]:
        """Compare until every switch is equal to its compiled flows or ``timeout``; the last result, seconds."""
        began = time.monotonic()
        while True:
            diff = self.switch_differences()
            if all(not d["extra"] and not d["missing"] for d in diff.values()):
                return diff, time.monotonic() - began
            if time.monotonic() - began > timeout:
                return diff, time.monotonic() - began
            time.sleep(0.5)


def switch_ofports(hv: Hypervisor) -> dict[str, int]:
    """br-int's port map (name -> OpenFlow port), as the switch reports it to a controller."""
    return {m.group(2): OFPP_LOCAL if m.group(1) == "LOCAL" else int(m.group(1))
            for m in _PORT.finditer(hv.ofctl("dump-ports-desc", "br-int"))}


def switch_cookies(hv: Hypervisor, learned: set[int]) -> Counter[tuple[int, int]]:
    """The (table, cookie) multiset on br-int, without the flows the switch learned itself."""
    have: Counter[tuple[int, int]] = Counter()
    for line in hv.ofctl("dump-flows", "br-int").splitlines():
        m = _FLOW.search(line)
        if m is None:
            continue
        cookie, table = int(m.group(1), 16), int(m.group(2))
        if not (cookie in learned and table in _SWITCH_OWNED):
            have[(table, cookie)] += 1
    return have
