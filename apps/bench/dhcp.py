"""DHCP: DISCOVER -> ACK latency on the real lab, and what a lease costs the controller.

Setup: ``tenantflow controller`` as a child process, a lab of 2 hypervisors attached through
its unix socket, one network + subnet, ``VMS`` VMs booted with no address (half on each
hypervisor). In each VM a client (scapy, one raw socket) runs ``ROUNDS`` full exchanges,
DISCOVER -> OFFER -> REQUEST -> ACK, ``GAP`` s apart (under the controller's 10 requests a
second per port): the figure is the time from sending the DISCOVER to receiving the ACK, on
the VM's own clock, so it is the whole slow path twice over (switch -> packet-in ->
controller -> packet-out -> VM). The VMs run concurrently, as a boot storm of ``VMS`` VMs.

Figures: latency p50 / p90 / p99 / max in ms, leases per second over the storm, and the
controller's CPU per lease (its CPU over the storm, minus its idle rate, per ACK).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from apps.bench.stats import ms, percentile
from apps.lab.controller import ControllerProcess
from apps.lab.lab import Lab

PREFIX = "tfdh"
GAP = 0.25  # s between one VM's exchanges (two requests each: 8 a second, under the 10 a port allows)

CLIENT = r"""
import json, sys, time
from scapy.all import BOOTP, DHCP, IP, UDP, Ether, conf
mac, rounds, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
chaddr = bytes.fromhex(mac.replace(":", ""))
sock = conf.L2socket(iface="eth0", filter="udp and dst port 68")

def frame(xid, kind, **opts):
    return (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
            / UDP(sport=68, dport=67) / BOOTP(chaddr=chaddr, xid=xid)
            / DHCP(options=[("message-type", kind), *opts.items(), "end"]))

def answer(xid, deadline):
    while time.monotonic() < deadline:
        pkt = sock.recv()
        if pkt is not None and BOOTP in pkt and pkt[BOOTP].xid == xid and pkt[BOOTP].op == 2:
            return pkt
    return None

out = []
for i in range(rounds):
    xid = 0x10000 + i
    t0 = time.monotonic()
    sock.send(frame(xid, "discover"))
    offer = answer(xid, t0 + 2)
    if offer is None:
        out.append(None)
        continue
    server = dict(o for o in offer[DHCP].options if isinstance(o, tuple))["server_id"]
    sock.send(frame(xid, "request", requested_addr=offer[BOOTP].yiaddr, server_id=server))
    ack = answer(xid, t0 + 4)
    ok = ack is not None and dict(o for o in ack[DHCP].options if isinstance(o, tuple))["message-type"] == 5
    out.append(time.monotonic() - t0 if ok else None)
    time.sleep(max(0.0, gap - (time.monotonic() - t0)))
print(json.dumps(out))
"""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(quick: bool = False) -> dict[str, Any]:
    """The boot storm; figures in ms."""
    n_vms, rounds = (4, 5) if quick else (20, 20)
    workdir = tempfile.mkdtemp(prefix="tf-bench-dhcp-")
    ctl = ControllerProcess(os.path.join(workdir, "controller"))
    lab = Lab(prefix=PREFIX, n_hypervisors=2, controller_unix_socket=ctl.unix_socket, api_url=ctl.api_url,
              workdir=os.path.join(workdir, "lab"))
    try:
        ctl.start()
        lab.start()
        lab.register_hypervisors()
        for hv in lab.hypervisors:
            ctl.wait_hypervisor_connected(hv.name)
        net = ctl.create("network", name="dhcp-bench")
        ctl.create("subnet", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4, gateway_ip="10.0.0.1",
                   dns_nameservers=["192.0.2.53"])
        vms = []
        for i in range(n_vms):
            port = ctl.create("port", network_id=net["id"], device_owner="compute:nova",
                              **{"binding:host_id": f"hv{i % 2 + 1}"})
            vms.append(lab.plug_vm(f"d{i}", port, dhcp=True))
        for vm in vms:
            _wait_active(ctl, vm.port_id)
        ctl.request("GET", "/sync?wait=30")
        idle = _idle_rate(ctl.proc.pid)
        cpu0, t0 = cpu_s(ctl.proc.pid), time.monotonic()
        with ThreadPoolExecutor(max_workers=n_vms) as pool:
            results = list(pool.map(lambda vm: _exchanges(vm, rounds), vms))
        wall, cpu = time.monotonic() - t0, cpu_s(ctl.proc.pid) - cpu0
        samples = [s for r in results for s in r if s is not None]
        failed = sum(1 for r in results for s in r if s is None)
        return {"vms": n_vms, "rounds_per_vm": rounds, "leases": len(samples), "failed": failed,
                "latency_ms_p50": ms(statistics.median(samples)) if samples else None,
                "latency_ms_p90": ms(percentile(samples, 90)) if samples else None,
                "latency_ms_p99": ms(percentile(samples, 99)) if samples else None,
                "latency_ms_max": ms(max(samples)) if samples else None,
                "leases_per_s": round(len(samples) / wall, 1),
                "controller_cpu_ms_per_lease": ms((cpu - idle * wall) / len(samples)) if samples else None,
                "controller_idle_cpu_ms_per_s": ms(idle)}
    finally:
        try:
            lab.stop()
        finally:
            ctl.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def _exchanges(vm, rounds: int) -> list[float | None]:
    proc = vm.popen([sys.executable, "-c", CLIENT, vm.port["mac_address"], str(rounds), str(GAP)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60 + rounds * 5)
    if proc.returncode != 0:
        raise RuntimeError(f"DHCP client in {vm.name} failed: {err[-500:]}")
    return json.loads(out)


def _wait_active(ctl: ControllerProcess, port_id: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while ctl.show("port", port_id)["status"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port_id} never ACTIVE\n{ctl.log_tail()}")
        time.sleep(0.05)


def _idle_rate(pid: int, seconds: float = 2.0) -> float:
    """CPU seconds per second the controller spends with nothing to do (echoes, timers)."""
    c0 = cpu_s(pid)
    time.sleep(seconds)
    return (cpu_s(pid) - c0) / seconds
