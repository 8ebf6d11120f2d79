"""Source NAT on HA gateway hypervisors (issue #13): throughput, failover gap, connection rate.

Setup (one lab for the whole section): ``tenantflow controller`` as a child process, the
OVSDB manager of a lab of 5 hypervisors with a provider network (prefix ``tfgw``): hv1-hv3
computes, hv4 and hv5 registered as gateways for ``physnet1`` (the controller creates the
BFD gateway tunnels). Everything through the REST API as in ``tests/test_e2e_snat.py``:
external network ``ext`` (flat, 172.24.4.0/24), the outside host ``out`` on the provider
segment at its gateway 172.24.4.1; a router with its gateway on ``ext`` (scheduled on both
gateways) and an interface on 10.0.0.0/24; on hv1 two identical VMs in group ``public``
(ingress ICMP and TCP 5201, Neutron's egress rules; port security and conntrack on): ``s1``
without a floating IP (leaves through the active gateway, source-NATed there) and ``f1``
with one (NATed on hv1 itself); the reference VM ``e2`` on hv2, same network. Every
measurement is a connection a VM on hv1 opens.

``throughput_{up,down}``
    iperf3 TCP between a VM and ``out`` (``up``: the VM sends; ``down``: ``-R``, ``out``
    sends), ``s1`` through SNAT vs ``f1`` through its floating IP, interleaved, 5 x 5 s
    (first second omitted; quick 3 x 2 s), and as a reference ``s1`` to ``e2`` (east-west,
    L2 over the overlay tunnel). hv1's ovs-vswitchd and the VM's iperf3 on one CPU; the
    gateways' and hv2's vswitchds, the server (``out`` or ``e2``) and ``out``'s receive
    processing (RPS) on the other (:func:`apps.bench.routing.pin_vswitchds`). The SNAT path
    crosses one more vswitchd than the floating IP's (the gateway's, sharing the server's
    CPU on this 2-core machine: a real gateway is a machine of its own), as east-west
    traffic does (hv2's). Medians and the ratios snat / fip and snat / east-west.
``conn_rate``
    connections per second: :mod:`apps.bench.tcp_probe` in the VM opens one short TCP
    connection after another (connect, 32 bytes each way, close) to ``out`` for 5 s (quick
    2 s), 3 rounds each for ``s1`` (SNAT) and ``f1`` (floating IP), interleaved, client and
    server pinned as iperf3's; each new connection is a new conntrack entry on hv1 and, for
    SNAT, a new NAT binding on the gateway. Each run connects to a server port of its own, so
    no run reuses a 4-tuple an earlier one left in TIME_WAIT. Medians, their ratio, and each
    run's per-connection time (connect to EOF).
``conn_reuse``
    the same to ONE server port, one 10 s run each (quick 4 s), with the VM's ephemeral port
    range cut to 4,000 ports: source ports, and so 4-tuples, come back every few seconds
    while the outside host still holds the tuple's previous connection in TIME_WAIT (60 s).
    Through the floating IP (stateless NAT) the server sees the same tuple and TCP timestamps
    that only grow: it accepts the new SYN. Through SNAT, the gateway's conntrack (OVS 3.1
    userspace) maps a reused tuple to another port (the expired connection's reverse tuple
    stays reserved until its sweeper runs), which the outside host may hold in TIME_WAIT for
    another connection with other timestamps: it answers the SYN with that connection's ACK
    and the connect stalls (seen: from ~1,800/s to a few per second, 2 s connect timeouts).
    With the default range the same was seen after 11,000 to 28,000 connections to one
    server port within a minute. Connections/s, failed connects, and those over 0.5 s.
``failover``
    10 failovers (quick 3): ``s1`` pings ``out`` every 10 ms (``ping -D``) for 5 s; 1.5 s
    in, the active gateway's ovs-vswitchd is SIGKILLed. The gap is the longest interval
    between consecutive replies (kernel-stamped by ping, ordered by ``icmp_seq``); no reply
    in the first or last 10 pings is an outage that never ended, a failure. Then the
    vswitchd is started again, and the next round waits until every BFD session is up, the
    controller's ``GET /sync?wait`` and a ping. The controller demotes the failed gateway,
    so the killed gateway alternates between hv4 and hv5. p50 and max of the gaps.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from apps.bench.fip import _receive_on
from apps.bench.routing import _iperf_bps, _wait, controller_and_lab, pin_vswitchds
from apps.bench.secgroups import security_group
from apps.bench.stats import gbps_summary, interleaved, ms, percentile
from apps.lab import Lab, LabVM
from apps.lab.controller import ControllerProcess
from apps.lab.ping import ping_gap

PREFIX = "tfgw"
PROJECT = "bench-gateway"
EXT_CIDR, EXT_GATEWAY = "172.24.4.0/24", "172.24.4.1"
TENANT_CIDR = "10.0.0.0/24"
GATEWAYS = ("hv4", "hv5")
COMPUTE = "hv1"
IPERF_PORT = 5201
CONN_PORT = 7100  # the connection runs' servers: 7100, 7101... (one per run)
REUSE_PORTS = 4000  # the VM's ephemeral port range in the port-reuse runs
PING_INTERVAL_S = 0.01
FAILOVER_RUN_S, FAULT_AT_S = 5.0, 1.5
EDGE_PINGS = 10  # no reply among the first/last this many pings: an outage, not a gap
TIMEOUT_S = 20.0


@dataclass
class GatewayCloud:
    """The controller, the lab, the outside host, the router and the two VMs of the module docstring."""

    ctl: ControllerProcess
    lab: Lab
    out: LabVM
    router_id: str
    vms: dict[str, LabVM] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def gateway_list(self) -> list[str]:
        """The router's gateway hypervisors, the active one first, as the API shows them."""
        router = self.ctl.request("GET", f"/v2.0/routers/{self.router_id}")["router"]
        return list(router["gateway_hypervisors"])

    def ip(self, vm: str) -> str:
        """The first fixed address of VM ``vm``."""
        return str(self.vms[vm].port["fixed_ips"][0]["ip_address"])

    def popen(self, host: LabVM, *argv: str) -> subprocess.Popen:
        """A process in ``host`` that :meth:`stop_procs` ends (by PID)."""
        proc = host.popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        return proc

    def stop_procs(self) -> None:
        """Kill and reap every process started by :meth:`popen`."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        self.procs.clear()


# -- setup ---------------------------------------------------------------------------------------
def build(ctl: ControllerProcess, lab: Lab) -> GatewayCloud:
    """External network, outside host, router, VMs s1 (no FIP) and f1 (FIP) on hv1, e2 on hv2; BFD up."""
    ext = ctl.create("network", name="ext", project_id=PROJECT, **{
        "router:external": True, "provider:network_type": "flat", "provider:physical_network": lab.physnet})
    ctl.create("subnet", network_id=ext["id"], cidr=EXT_CIDR, gateway_ip=EXT_GATEWAY, enable_dhcp=False,
               allocation_pools=[{"start": "172.24.4.10", "end": "172.24.4.250"}], project_id=PROJECT)
    out = lab.add_outside_host("out", f"{EXT_GATEWAY}/24")
    router = ctl.create("router", name="bench-gw", project_id=PROJECT, external_gateway_info={"network_id": ext["id"]})
    net = ctl.create("network", name="bench-snat", project_id=PROJECT)
    sub = ctl.create("subnet", network_id=net["id"], cidr=TENANT_CIDR, ip_version=4, project_id=PROJECT)
    ctl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
    sg = security_group(ctl, PROJECT, "public", [
        {"protocol": "icmp"}, {"protocol": "tcp", "port_range_min": IPERF_PORT, "port_range_max": IPERF_PORT}])
    cloud = GatewayCloud(ctl, lab, out, router["id"])
    for name, host in (("s1", COMPUTE), ("f1", COMPUTE), ("e2", "hv2")):
        port = ctl.create("port", network_id=net["id"], project_id=PROJECT, device_owner="compute:nova",
                          security_groups=[sg["id"]], **{"binding:host_id": host})
        cloud.vms[name] = lab.plug_vm(name, port, mtu=int(net.get("mtu") or 1450), gateway=sub["gateway_ip"])
    for host in (*cloud.vms.values(), out):
        host.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
    _wait(lambda: all(ctl.show("port", vm.port_id)["status"] == "ACTIVE" for vm in cloud.vms.values()),
          TIMEOUT_S, "VM ports ACTIVE", ctl)
    ctl.create("floatingip", floating_network_id=ext["id"], port_id=cloud.vms["f1"].port_id, project_id=PROJECT)
    if sorted(cloud.gateway_list()) != sorted(GATEWAYS):
        raise RuntimeError(f"router scheduled on {cloud.gateway_list()}, not on {GATEWAYS}")
    _wait(lab.gateway_tunnels_up, TIMEOUT_S, "BFD between computes and gateways", ctl)
    for vm in cloud.vms.values():
        _wait(lambda vm=vm: pings(vm), TIMEOUT_S, f"{vm.name} -> outside host ping", ctl)
    _wait(lambda: pings(cloud.vms["s1"], cloud.ip("e2")), TIMEOUT_S, "s1 -> e2 ping", ctl)
    return cloud



def pings(vm: LabVM, dst: str = EXT_GATEWAY) -> bool:
    """One ping from ``vm`` to ``dst`` answered within a second."""
    return " 0% packet loss" in vm.cmd(f"ping -c1 -W1 {dst}")


# -- throughput ----------------------------------------------------------------------------------
def pin(cloud: GatewayCloud) -> tuple[str, str] | None:
    """hv1's vswitchd on one CPU; hv2's, both gateways' and ``out``'s receive work on the other."""
    hv = cloud.lab.hypervisor
    pinning = pin_vswitchds(hv(COMPUTE), hv("hv2"))
    if pinning:
        for name in GATEWAYS:
            pin_vswitchds(hv(COMPUTE), hv(name))
        _receive_on(cloud.out, pinning[1])
    return pinning


# kind: (client VM, server VM or None for the outside host, server address or None for e2's)
ENDS: dict[str, tuple[str, str | None, str | None]] = {
    "snat": ("s1", None, EXT_GATEWAY), "fip": ("f1", None, EXT_GATEWAY), "east_west": ("s1", "e2", None)}


def throughput(cloud: GatewayCloud, pinning: tuple[str, str] | None, quick: bool) -> dict[str, Any]:
    """iperf3 s1 (SNAT) vs f1 (floating IP) with ``out``, and s1 with e2, both directions (module docstring)."""
    seconds, rounds = (2, 3) if quick else (5, 5)
    out: dict[str, Any] = {"throughput_seconds_per_run": seconds, "throughput_rounds": rounds,
                           "throughput_pinned_cpus": list(pinning) if pinning else None,
                           "throughput_active_gateway": cloud.gateway_list()[0]}
    for direction in ("up", "down"):
        def run_one(kind: str, direction: str = direction) -> tuple[float, int]:
            client, server, ip = ENDS[kind]
            return _iperf_bps(cloud.vms[client], cloud.vms[server] if server else cloud.out, ip or cloud.ip("e2"),
                              seconds, pin=pinning, reverse=direction == "down")

        runs, retrans = interleaved(tuple(ENDS), rounds, run_one)
        out |= gbps_summary(f"throughput_{direction}", runs)
        out[f"throughput_{direction}_retransmits"] = retrans
        medians = {kind: statistics.median(bps) for kind, bps in runs.items()}
        out[f"throughput_{direction}_snat_over_fip"] = round(medians["snat"] / medians["fip"], 3)
        out[f"throughput_{direction}_snat_over_east_west"] = round(medians["snat"] / medians["east_west"], 3)
    return out


# -- connection rate -----------------------------------------------------------------------------
def taskset(cpu: str | None) -> list[str]:
    """The argv prefix that runs a command on ``cpu`` (nothing when unpinned)."""
    return ["taskset", "-c", cpu] if cpu else []


def start_server(cloud: GatewayCloud, cpu: str | None, port: int) -> None:
    """An answering server of :mod:`apps.bench.tcp_probe` on the outside host, on ``port``."""
    proc = cloud.popen(cloud.out, *taskset(cpu), sys.executable, "-m", "apps.bench.tcp_probe", "serve", str(port))
    if proc.stdout is None or proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the connection server on port {port} of the outside host did not start")


def connections(cloud: GatewayCloud, kind: str, seconds: float, pinning: tuple[str, str] | None) -> dict[str, Any]:
    """Short connections from ``kind``'s VM to a new server port of the outside host for ``seconds``:
    tcp_probe's figures. A port of its own per run: no run reuses another's 4-tuples."""
    port = CONN_PORT + len(cloud.procs)
    start_server(cloud, pinning[1] if pinning else None, port)
    proc = cloud.vms[ENDS[kind][0]].popen(
        [*taskset(pinning[0] if pinning else None), sys.executable, "-m", "apps.bench.tcp_probe", "connect",
         EXT_GATEWAY, str(port), str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=seconds + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"connection loop of {kind} failed: {stderr[-2000:]}")
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def conn_rate(cloud: GatewayCloud, pinning: tuple[str, str] | None, quick: bool) -> dict[str, Any]:
    """Connections per second through SNAT (s1) and through the floating IP (f1), interleaved."""
    seconds, rounds = (2.0, 2) if quick else (5.0, 3)
    details: dict[str, list[dict[str, Any]]] = {"snat": [], "fip": []}

    def run_one(kind: str) -> tuple[float, int]:
        res = connections(cloud, kind, seconds, pinning)
        details[kind].append(res)
        return res["connections"] / res["seconds"], int(res["errors"])

    rates, errors = interleaved(("snat", "fip"), rounds, run_one)  # (connections/s, failed connects)
    out: dict[str, Any] = {"conn_rate_seconds_per_run": seconds, "conn_rate_rounds": rounds}
    for kind in ("snat", "fip"):
        out[f"conn_rate_{kind}_per_s"] = [round(r, 1) for r in rates[kind]]
        out[f"conn_rate_{kind}_per_s_median"] = round(statistics.median(rates[kind]), 1)
        out[f"conn_rate_{kind}_errors"] = errors[kind]
        for q in ("p50_ms", "p99_ms"):
            out[f"conn_rate_{kind}_conn_{q}"] = [d[q] for d in details[kind]]
    out["conn_rate_snat_over_fip"] = round(out["conn_rate_snat_per_s_median"] / out["conn_rate_fip_per_s_median"], 3)
    return out | port_reuse(cloud, pinning, 4.0 if quick else 10.0)


def port_reuse(cloud: GatewayCloud, pinning: tuple[str, str] | None, seconds: float) -> dict[str, Any]:
    """One more run each with the VM's ephemeral ports cut to REUSE_PORTS: its 4-tuples come back
    every second or two, while the outside host and the conntracks still hold them in TIME_WAIT."""
    out: dict[str, Any] = {"conn_reuse_ephemeral_ports": REUSE_PORTS, "conn_reuse_seconds": seconds}
    for kind in ("snat", "fip"):
        vm = cloud.vms[ENDS[kind][0]]
        vm.cmd(f"sysctl -qw net.ipv4.ip_local_port_range='40000 {40000 + REUSE_PORTS - 1}'")
        try:
            res = connections(cloud, kind, seconds, pinning)
        finally:
            vm.cmd("sysctl -qw net.ipv4.ip_local_port_range='32768 60999'")
        out[f"conn_reuse_{kind}_per_s"] = round(res["connections"] / res["seconds"], 1)
        out[f"conn_reuse_{kind}_errors"] = res["errors"]
        out[f"conn_reuse_{kind}_over_500ms"] = res["slow"]
    return out


# -- failover ------------------------------------------------------------------------------------


def restore(cloud: GatewayCloud, name: str) -> float:
    """Start ``name``'s vswitchd again; wait for every BFD session, /sync and a ping: seconds to BFD up."""
    t0 = time.monotonic()
    cloud.lab.hypervisor(name).start_vswitchd()
    _wait(cloud.lab.gateway_tunnels_up, TIMEOUT_S, f"BFD up again after restoring {name}", cloud.ctl)
    bfd_s = time.monotonic() - t0
    cloud.ctl.request("GET", "/sync?wait=20", timeout=30)
    _wait(lambda: pings(cloud.vms["s1"]), TIMEOUT_S, "s1 -> outside host after the restore", cloud.ctl)
    return bfd_s


def failover_once(cloud: GatewayCloud) -> dict[str, Any]:
    """Kill the active gateway under the ping stream, then restore it (module docstring)."""
    active, standby = cloud.gateway_list()[:2]
    gap, lost = ping_gap(cloud.vms["s1"], EXT_GATEWAY, FAILOVER_RUN_S, cloud.lab.hypervisor(active).kill_vswitchd,
                         at=FAULT_AT_S, interval=PING_INTERVAL_S, edge=EDGE_PINGS)
    try:
        _wait(lambda: cloud.gateway_list()[0] == standby, 10, "the controller demoting the killed gateway")
        demoted = True
    except TimeoutError:
        demoted = False
    return {"killed": active, "gap": gap, "lost": lost, "demoted": demoted, "bfd_up_s": restore(cloud, active)}


def failovers(cloud: GatewayCloud, quick: bool) -> dict[str, Any]:
    """p50 / max of the reply gap over the failover rounds; failures are outages that never ended."""
    rounds = [failover_once(cloud) for _ in range(3 if quick else 10)]
    gaps = [r["gap"] for r in rounds if math.isfinite(r["gap"])]
    return {
        "failover_rounds": len(rounds),
        "failover_failures": len(rounds) - len(gaps),
        "failover_gap_ms_p50": ms(statistics.median(gaps)) if gaps else None,
        "failover_gap_ms_p90": ms(percentile(gaps, 90)) if gaps else None,
        "failover_gap_ms_max": ms(max(gaps)) if gaps else None,  # of the gaps that ended
        "failover_gap_ms_samples": [ms(r["gap"]) if math.isfinite(r["gap"]) else None for r in rounds],
        "failover_pings_lost": [r["lost"] for r in rounds],
        "failover_killed": [r["killed"] for r in rounds],
        "failover_demoted": sum(r["demoted"] for r in rounds),
        "failover_restore_to_bfd_up_s_median": round(statistics.median(r["bfd_up_s"] for r in rounds), 3),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Throughput, connection rate, then the failovers (they restart vswitchds, undoing the pinning)."""
    with controller_and_lab(PREFIX, 5, "gateway", manager=True, provider=True, gateways=GATEWAYS) as (ctl, lab):
        cloud = build(ctl, lab)
        try:
            out: dict[str, Any] = {"hypervisors": len(lab.hypervisors), "gateways": list(GATEWAYS)}
            pinning = pin(cloud)
            out |= throughput(cloud, pinning, quick)
            out |= conn_rate(cloud, pinning, quick)
            cloud.stop_procs()
            out |= failovers(cloud, quick)
            return out
        except Exception as exc:
            raise RuntimeError(f"gateway bench failed: {exc}\ncontroller log:\n{ctl.log_tail()}") from exc
        finally:
            cloud.stop_procs()
