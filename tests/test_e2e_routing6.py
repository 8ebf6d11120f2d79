"""Distributed routing over IPv6 on real OVS: the gateway answers Neighbour Solicitation
and ping6 from the flows, and dual-stack VMs on different hypervisors and subnets reach
each other (ICMPv6 and TCP) with the hop limit lowered by exactly one.

Three hypervisors; one router with an IPv4 and an IPv6 subnet on each of two networks
(interfaces added by subnet through the API); VMs: a (net1, hv1), b (net2, hv2), c (net1, hv3).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from apps.lab import Lab, LabVM
from apps.lab.controller import ControllerProcess
from tests.e2e_fixtures import attached_lab, plug_new_vm, running_controller, wait_until

pytestmark = [pytest.mark.ovs, pytest.mark.lab]


@dataclass
class Cloud6:
    ctrl: ControllerProcess
    lab: Lab
    vms: dict[str, LabVM]
    v6: dict[str, str]  # vm -> its IPv6 address
    gw6: dict[int, str]  # net index -> IPv6 gateway
    router_macs: set[str]
    router_id: str = ""
    subnets6: dict[int, str] = field(default_factory=dict)  # net index -> its IPv6 subnet's id


def _packet_ins(ctrl: ControllerProcess) -> float:
    return ctrl.metrics().get("tenantflow_packet_ins_total", 0.0)


@pytest.fixture(scope="module")
def cloud6() -> Iterator[Cloud6]:
    with tempfile.TemporaryDirectory(prefix="tf-r6-") as tmp, running_controller(tmp) as ctrl, \
            attached_lab(ctrl, "tfr6", n_hypervisors=3) as lab:
        router = ctrl.create("router", name="r6", project_id="t6")
        nets, gw6, subnets6 = {}, {}, {}
        for i in (1, 2):
            net = ctrl.create("network", name=f"n{i}", project_id="t6")
            s4 = ctrl.create("subnet", network_id=net["id"], cidr=f"10.6.{i}.0/24", ip_version=4, project_id="t6")
            s6 = ctrl.create("subnet", network_id=net["id"], cidr=f"2001:db8:{i}::/64", ip_version=6,
                             project_id="t6")
            nets[i] = net
            gw6[i], subnets6[i] = s6["gateway_ip"], s6["id"]
            for subnet in (s4, s6):
                ctrl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": subnet["id"]})
        vms, v6 = {}, {}
        for name, i, host in (("a", 1, "hv1"), ("b", 2, "hv2"), ("c", 1, "hv3")):
            vm = plug_new_vm(ctrl, lab, f"r6{name}", nets[i], host)
            four = next(f["ip_address"] for f in vm.port["fixed_ips"] if ":" not in f["ip_address"])
            six = next(f["ip_address"] for f in vm.port["fixed_ips"] if ":" in f["ip_address"])
            vm.cmd(f"ip route replace default via 10.6.{i}.1; ip -6 route replace default via {gw6[i]}")
            vms[name], v6[name] = vm, six
            assert four.startswith(f"10.6.{i}.")
        router_ports = ctrl.request("GET", f"/v2.0/ports?device_id={router['id']}")["ports"]

        yield Cloud6(ctrl, lab, vms, v6, gw6, {p["mac_address"].lower() for p in router_ports}, router["id"],
                     subnets6)


def ping6(vm: LabVM, ip: str, count: int = 2) -> tuple[int, list[int]]:
    out = vm.cmd(f"ping -6 -n -c {count} -i 0.2 -W 1 {ip}")
    return len(re.findall(r"bytes from", out)), [int(t) for t in re.findall(r"ttl=(\d+)", out)]


def test_gateway_neighbour_discovery_and_ping6_answered_from_the_flows(cloud6: Cloud6) -> None:
    before = _packet_ins(cloud6.ctrl)
    for name, net in (("a", 1), ("b", 2), ("c", 1)):
        vm, gw = cloud6.vms[name], cloud6.gw6[net]
        vm.cmd(f"ip -6 neigh flush dev eth0 to {gw}")
        answered, _ = ping6(vm, gw, count=2)
        assert answered == 2, f"{name} -> gateway {gw}"
        neigh = vm.cmd(f"ip -6 neigh show {gw}").lower()
        # Resolved by the flows' NA, with the router flag, to a router interface MAC.
        assert "router" in neigh and any(mac in neigh for mac in cloud6.router_macs), neigh
    assert _packet_ins(cloud6.ctrl) == before


def test_ipv6_routed_between_hypervisors_in_one_hop(cloud6: Cloud6) -> None:
    before = _packet_ins(cloud6.ctrl)
    for src, dst in (("a", "b"), ("b", "a"), ("c", "b"), ("b", "c")):
        answered, ttls = ping6(cloud6.vms[src], cloud6.v6[dst], count=3)
        assert answered == 3 and ttls == [63, 63, 63], (src, dst, ttls)
    # Same subnet, different hypervisors: switched, not routed.
    answered, ttls = ping6(cloud6.vms["a"], cloud6.v6["c"])
    assert answered == 2 and ttls == [64, 64]
    assert _packet_ins(cloud6.ctrl) == before


def test_tcp_over_ipv6_across_the_router(cloud6: Cloud6) -> None:
    server = cloud6.vms["b"]
    pid = server.cmd(
        "python3 -c \"import socket;s=socket.socket(socket.AF_INET6);s.setsockopt(socket.SOL_SOCKET,"
        "socket.SO_REUSEADDR,1);s.bind(('::',7007));s.listen(4)\n"
        "while True:\n c,_=s.accept();c.sendall(b'hello from b '+c.recv(64));c.close()\" "
        ">/dev/null 2>&1 & echo $!").strip().splitlines()[-1]
    try:
        def answer() -> str:
            out = cloud6.vms["a"].cmd(
                "python3 -c \"import socket;c=socket.create_connection(('" + cloud6.v6["b"] + "',7007),timeout=2);"
                "c.sendall(b'a');print(c.recv(64).decode())\" 2>&1")
            return out.strip() if "hello from b a" in out else ""

        assert wait_until(answer, 10, message="a TCP answer from b over IPv6") == "hello from b a"
    finally:
        server.cmd(f"kill {int(pid)}")


def test_a_re_added_ipv6_interface_is_used_again_at_once(cloud6: Cloud6) -> None:
    """remove_router_interface then add_router_interface (a new port, a new MAC) for net1's IPv6
    subnet: a's neighbour cache holds the old MAC for its gateway; the unsolicited Neighbour
    Advertisement each hypervisor sends its VMs once its flows are in fixes it at once."""
    ctrl, a = cloud6.ctrl, cloud6.vms["a"]
    path = f"/v2.0/routers/{cloud6.router_id}"
    assert ping6(a, cloud6.v6["b"], count=1)[0] == 1  # the cache holds the gateway's current MAC
    ctrl.request("PUT", f"{path}/remove_router_interface", {"subnet_id": cloud6.subnets6[1]})
    wait_until(lambda: ping6(a, cloud6.v6["b"], count=1)[0] == 0, 5, message="a cut off from b")
    pinger = a.popen(["ping", "-6", "-D", "-n", "-i", "0.05", "-W", "1", "-c", "100", cloud6.v6["b"]],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctrl.request("PUT", f"{path}/add_router_interface", {"subnet_id": cloud6.subnets6[1]})
    added = time.time()
    out, _ = pinger.communicate(timeout=30)
    replies = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    assert replies and replies[0] - added < 1.0, (added, out[-1500:])
