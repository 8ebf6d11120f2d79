"""DHCP: DISCOVER -> ACK latency on the real lab, what a lease costs the controller, a 1,000-VM boot storm.

Setup: ``tenantflow controller`` as a child process, a lab of 2 hypervisors attached through
its unix socket, one network + subnet, ``VMS`` VMs booted with no address (half on each
hypervisor). In each VM a client (scapy, one raw socket) runs ``ROUNDS`` full exchanges,
DISCOVER -> OFFER -> REQUEST -> ACK, ``GAP`` s apart (under the controller's 10 requests a
second per port): the figure is the time from sending the DISCOVER to receiving the ACK, on
the VM's own clock, so it is the whole slow path twice over (switch -> packet-in ->
controller -> packet-out -> VM). The VMs run concurrently, as a boot storm of ``VMS`` VMs.

Figures: latency p50 / p90 / p99 / max in ms, leases per second over the storm, and the
controller's CPU per lease (its CPU over the storm, minus its idle rate, per ACK).

``storm``: the scale lab (``TENANTFLOW_DHCP_STORM_HVS`` dummy-datapath bridges, default 1,000;
quick 30), one VM port on each, 10 networks. Every VM's DISCOVER is injected at once
(``netdev-dummy/receive`` per port over the vswitchd's unixctl socket, from 16 threads), its
REQUEST as soon as its OFFER shows in the port's transmit capture (``options:tx_pcap``),
until its ACK does: all the VMs' exchanges overlap. Figures: how many got their ACK, the time from the first
DISCOVER to the last ACK (goal: all 1,000 within 5 s), per-VM DISCOVER -> ACK p50 / p99
(capture timestamps), and the controller's CPU per lease.
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

from apps.bench.routing import controller_and_lab
from apps.bench.scale import Sync, cpu_s, idle_cpu_rate
from apps.bench.stats import ms, percentile
from apps.lab.controller import ControllerProcess
from apps.lab.scale import ApiClient, ScaleLab, parallel
from topology.model import tap_name

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


def run(quick: bool = False) -> dict[str, Any]:
    """Both parts; figures in ms."""
    return {"lab": lab_storm(quick), "storm": scale_storm(quick)}


def lab_storm(quick: bool = False) -> dict[str, Any]:
    """The boot storm on the real lab; figures in ms."""
    n_vms, rounds = (4, 5) if quick else (20, 20)
    with controller_and_lab(PREFIX, 2, "dhcp") as (ctl, lab):
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
        ctl.request("GET", "/sync?wait=30", timeout=40)
        idle = idle_cpu_rate(ctl.proc.pid)
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


# -- the 1,000-VM storm on the scale lab --------------------------------------------------------
def scale_storm(quick: bool = False) -> dict[str, Any]:
    """Every VM of the scale lab takes a lease at once (see the module's doc); figures in ms."""
    from ovs.unixctl.client import UnixctlClient
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap

    n = 30 if quick else int(os.environ.get("TENANTFLOW_DHCP_STORM_HVS", "1000"))
    workdir = tempfile.mkdtemp(prefix="tf-bench-dhcp-storm-")
    ctl = ControllerProcess(os.path.join(workdir, "controller"), extra_args=["--log-level", "warning"])
    lab = ScaleLab(n, None, ports_per_hv=1, api_url=ctl.api_url, workdir=os.path.join(workdir, "lab"))

    def frame(mac: str, xid: int, kind: str, **opts: str) -> str:
        return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                     / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=xid)
                     / DHCP(options=[("message-type", kind), *opts.items(), "end"])).hex()

    def reply(pcap: str, xid: int, kind: int, deadline: float):
        seen = 24  # a capture's header: read the packets again only when the file grew
        while time.time() < deadline:
            size = os.path.getsize(pcap)
            for pkt in rdpcap(pcap) if size > seen else ():
                opts = dict(o for o in pkt[DHCP].options if isinstance(o, tuple)) if DHCP in pkt else {}
                if BOOTP in pkt and pkt[BOOTP].xid == xid and opts.get("message-type") == kind:
                    return pkt, opts
            seen = size
            time.sleep(0.005)
        return None, {}

    def receive(hv, tap: str, packet_hex: str) -> None:
        """``ovs-appctl netdev-dummy/receive TAP PACKET``, over the vswitchd's unixctl socket (no process)."""
        error, client = UnixctlClient.create(os.path.join(hv.vswitchd.rundir, "ovs-vswitchd.ctl"))
        if error:
            raise OSError(error, "cannot reach the vswitchd's unixctl socket")
        try:
            error, failure, _ = client.transact("netdev-dummy/receive", [tap, packet_hex])
            if error or failure:
                raise RuntimeError(f"netdev-dummy/receive {tap}: {error or failure}")
        finally:
            client.close()

    def lease(job) -> tuple[float, float] | None:
        """(when its DISCOVER went in, when its ACK came out) for one VM, None if it got none."""
        hv, port = job
        tap, mac, xid = tap_name(port["id"]), port["mac_address"], 0x20000 + hv.index
        pcap = os.path.join(hv.vswitchd.rundir, f"{tap}.pcap")
        t0 = time.time()
        receive(hv, tap, frame(mac, xid, "discover"))
        offer, opts = reply(pcap, xid, 2, t0 + 30)
        if offer is None:
            return None
        receive(hv, tap, frame(mac, xid, "request", requested_addr=offer[BOOTP].yiaddr, server_id=opts["server_id"]))
        ack, _ = reply(pcap, xid, 5, t0 + 30)
        return (t0, float(ack.time)) if ack is not None else None

    try:
        ctl.start(timeout=60)
        lab.start()
        lab.register()
        lab.populate(networks=10, ports_per_hv=1)
        jobs = [(hv, port) for hv in lab.hypervisors for port in hv.ports.values()]
        parallel(lambda vs: vs.vsctl(*[a for hv in vs.hypervisors for port in hv.ports.values() for a in (
            "--", "set", "interface", tap_name(port["id"]),
            f"options:tx_pcap={os.path.join(vs.rundir, tap_name(port['id']))}.pcap")][1:]), lab.vswitchds, lab.workers)
        lab.set_controller(f"tcp:127.0.0.1:{ctl.of_port}")
        if Sync(ApiClient(ctl.api_url, timeout=60), n).wait(600, interval=0.2) is None:
            raise TimeoutError("the scale lab never converged")
        idle = idle_cpu_rate(ctl.proc.pid)
        cpu0, t0 = cpu_s(ctl.proc.pid), time.time()
        with ThreadPoolExecutor(max_workers=16) as pool:
            leases = [r for r in pool.map(lease, jobs) if r is not None]
        cpu, wall = cpu_s(ctl.proc.pid) - cpu0, time.time() - t0
        took = [ack - sent for sent, ack in leases]
        return {"vms": len(jobs), "acknowledged": len(leases),
                "first_discover_to_last_ack_s": round(max(ack for _, ack in leases) - t0, 3) if leases else None,
                "per_vm_ms_p50": ms(statistics.median(took)) if took else None,
                "per_vm_ms_p99": ms(percentile(took, 99)) if took else None,
                "controller_cpu_ms_per_lease": ms((cpu - idle * wall) / len(took)) if took else None}
    finally:
        try:
            lab.stop()
        finally:
            ctl.stop()
            shutil.rmtree(workdir, ignore_errors=True)
