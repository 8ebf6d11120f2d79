"""Helpers and fixtures for tests that run on the lab (real private OVS hypervisors).

Import what you need into your test module, e.g.
``from tests.lab_fixtures import make_port, lab_prefix, ping_count, tcp_transfer``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from apps.lab import Hypervisor, Lab, LabVM, sh


def lab_problem() -> str | None:
    """Why lab tests cannot run here (None if they can): root and the OVS/ip binaries.

    Unlike other OVS tests, the lab needs no running host Open vSwitch: every
    hypervisor starts its own private ovsdb-server and ovs-vswitchd.
    """
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ovs-vsctl", "ovs-ofctl", "ovsdb-server", "ovsdb-tool", "ovs-vswitchd", "ip", "ethtool", "mnexec"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def host_ovs_problem() -> str | None:
    """Why a test of the host's own Open vSwitch cannot run here (None if it can)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ovs-vsctl", "ovsdb-server", "ovs-vswitchd", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    try:
        subprocess.run(["ovs-vsctl", "--timeout=3", "show"], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError):
        return "the host's Open vSwitch is not running (scripts/start-ovs.sh)"
    return None


def unless_able(problem: str | None, what: str) -> None:
    """The suite's one policy for a test this machine cannot run: skip, but FAIL under ``CI``."""
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} cannot run in CI: {problem}")
    pytest.skip(problem)


def require_lab() -> None:
    """Skip (or fail under ``CI``) when the lab cannot run (for module-scoped lab fixtures)."""
    unless_able(lab_problem(), "lab test")


def lab_prefix(tag: str = "t") -> str:
    """A namespace prefix unique to this test run, so parallel runs never collide."""
    return f"tl{tag}{uuid.uuid4().hex[:6]}"


def make_port(
    host: str,
    ip: str,
    mac: str | None = None,
    port_id: str | None = None,
    subnet_id: str = "subnet-lab",
    network_id: str = "net-lab",
) -> dict:
    """A Neutron port dict as the API returns it, for plugging without a controller."""
    pid = port_id or str(uuid.uuid4())
    if mac is None:
        mac = "fa:16:3e:" + ":".join(uuid.uuid4().hex[i : i + 2] for i in (0, 2, 4))
    return {
        "id": pid,
        "network_id": network_id,
        "mac_address": mac,
        "fixed_ips": [{"subnet_id": subnet_id, "ip_address": ip}],
        "binding:host_id": host,
        "admin_state_up": True,
    }


def ping_count(vm: LabVM, dst: str, count: int = 3, interval: float = 0.2) -> int:
    """How many of ``count`` pings from ``vm`` to ``dst`` were answered."""
    out = vm.cmd(f"ping -c{count} -i{interval} -W1 {dst}")
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


def wait_listening(vm: LabVM, port: int, timeout: float = 5.0) -> None:
    """Wait until a TCP socket listens on ``port`` inside ``vm``."""
    deadline = time.monotonic() + timeout
    while f":{port} " not in vm.cmd(f"ss -Hltn 'sport = :{port}'"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port} in {vm.name}")
        time.sleep(0.05)


def tcp_transfer(client: LabVM, server: LabVM, server_ip: str, seconds: int = 1, port: int = 5201) -> dict:
    """Run iperf3 from ``client`` to ``server`` and return iperf3's end summary (``sum_received``...).

    Retransmits are normal on the netdev datapath (LAB.md): look at bytes, not at retransmits.
    ``seconds`` is whole seconds: iperf3 reads ``-t 0.5`` as 0, which means "forever".
    """
    server.cmd(f"iperf3 -s -1 -D -p {port}")
    wait_listening(server, port)
    out = client.cmd(f"timeout 20 iperf3 -c {server_ip} -p {port} -t {seconds} -J")
    data = json.loads(out[out.index("{") :])
    if "error" in data:
        raise AssertionError(f"iperf3: {data['error']}")
    return data["end"]


def install_tunnel_flows(hv: Hypervisor, vm: LabVM, peer: Hypervisor, vni: int, kind: str = "vxlan") -> None:
    """By hand, what the controller would do for one VM and one peer: VM -> tunnel, tunnel -> VM.

    ``kind`` is ``vxlan`` or ``geneve`` (tunnel port ``tf-vxlan``/``tf-geneve``). OVS's
    ``ovs-ofctl`` calls the OXM ``tun_ipv4_dst`` field ``tun_dst``.
    """
    port = f"tf-{kind}"
    hv.ofctl(
        "add-flow", "br-int",
        f"in_port={vm.tap},actions=set_field:{vni}->tunnel_id,set_field:{peer.tunnel_ip}->tun_dst,output:{port}",
    )  # fmt: skip
    hv.ofctl("add-flow", "br-int", f"in_port={port},tun_id={vni},actions=output:{vm.tap}")


def flow_packets(hv: Hypervisor, match: str) -> int:
    """Total ``n_packets`` of the br-int flows whose text contains ``match``."""
    total = 0
    for line in hv.ofctl("dump-flows", "br-int").splitlines():
        m = re.search(r"n_packets=(\d+)", line)
        if m and match in line:
            total += int(m.group(1))
    return total


@dataclass
class HostSnapshot:
    """What the machine has that a lab could leak: named namespaces and root-namespace links."""

    netns: set[str]
    links: set[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        """Snapshot ``ip netns list`` and ``ip link`` (root namespace) now."""
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        links = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
        return cls(netns=sh.netns_list(), links=links)


@pytest.fixture
def lab_factory() -> Iterator:
    """``lab_factory(**Lab kwargs)`` builds and enters a Lab; every lab is torn down after the test."""
    labs: list[Lab] = []

    def build(**kwargs: object) -> Lab:
        kwargs.setdefault("prefix", lab_prefix())
        lab = Lab(**kwargs)  # type: ignore[arg-type]
        lab.__enter__()
        labs.append(lab)
        return lab

    require_lab()
    yield build
    for lab in reversed(labs):
        lab.stop()
