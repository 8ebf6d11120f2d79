"""Distributed routing (issue #4): flows per hypervisor as routers grow, and east-west TCP through a router.

``flows``: pure compile on synthetic graphs (no I/O). Every tenant has one router with
``S`` subnets (one network each, all tenants on the same CIDRs 10.<s>.0.0/24) and ``P``
VMs per subnet. The measured hypervisor ``hv0`` always hosts the same thing: 3 VMs on
each of the first 2 subnets of the *focus* tenant's router (the focus tenant's other VMs
live on hv1..hv4) plus 4 VMs of an L2-only network. Three sweeps, each reporting hv0's
compiled flow count (and, for the cloud sweep, a bystander hypervisor's):

- ``cloud``: the rest of the cloud grows (hypervisors with 20 VMs each, of other
  tenants with their own routers): 10 -> 100 -> 1000 hypervisors. hv0's count must
  stay flat: it holds nothing of routers it does not serve.
- ``subnets``: the focus router gets more subnets (S = 2..32, P = 10), hv0 hosting the
  same 6 VMs: grows linearly (per subnet: a route, a ping answer per hosted ingress,
  the next-hop resolutions and remote L2 unicast of its ports).
- ``ports``: the focus router's subnets get more VMs elsewhere (P = 5..80, S = 4):
  linear too (one next-hop resolution per routed-to port, plus its L2 unicast when hv0
  does not host that network).

``throughput``: the real controller and a 2-hypervisor lab (prefix ``tfw``). Router
with 10.1.1.0/24 and 10.1.2.0/24, VM ``ra`` on hv1 (subnet 1), ``rb`` on hv2 (subnet 2);
plus one L2 network 10.2.0.0/24 with ``la`` on hv1 and ``lb`` on hv2. iperf3 TCP, 5 s
(first second omitted; quick: 2 s), 5 rounds (quick 3), routed and L2 alternating which
goes first; figure: median routed / median L2 throughput (goal: >= 0.95), with the
per-round ratios and the L2 runs' own spread (max/min) beside it. Each hypervisor's
ovs-vswitchd and its iperf3 end are pinned to one CPU (the same for both kinds): on a
2-core machine the scheduler's placement otherwise swings a run by up to 2x. Both
streams run entirely in the datapath's megaflow cache (one megaflow each; the routed
one adds set(eth), set(ipv4(ttl)) before tnl_push; no upcall during a run); loss on
the lab's veth underlay (AF_PACKET) makes single runs vary by +-20% anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from apps.bench.stats import gbps_summary, interleaved
from flows.compiler import compile_hypervisor
from flows.pipeline import STAGE_BY_TABLE
from topology.graph import TopologyGraph
from topology.model import FixedIP, Network, Port, Subnet
from topology.model_l3 import ROUTER_INTERFACE, Router
from topology.synthetic import hypervisor, mac, uid, wire_ofports

# -- flows per hypervisor ---------------------------------------------------------------

FOCUS_HOSTS = ("hv1", "hv2", "hv3", "hv4")  # where the focus tenant's VMs not on hv0 live
HV0_VMS_PER_SUBNET = 3
HV0_ROUTED_SUBNETS = 2
HV0_L2_VMS = 4
BACKGROUND_VMS_PER_HV = 20
BACKGROUND_SUBNETS, BACKGROUND_VMS_PER_SUBNET = 4, 10


class _Cloud:
    """A graph builder with global counters for keys, MACs and ids."""

    def __init__(self, n_hvs: int) -> None:
        self.g = TopologyGraph()
        for i in range(n_hvs):
            self.g.put_hypervisor(hypervisor(i))
        self.n_net = self.n_port = self.n_router = 0

    def network(self, project: str, cidr: str) -> tuple[Network, Subnet]:
        self.n_net += 1
        j = self.n_net
        net = Network(id=uid(1, j), project_id=project, key=j, network_type="vxlan", segmentation_id=5000 + j)
        self.g.put_network(net)
        sub = Subnet(id=uid(2, j), network_id=net.id, project_id=project, cidr=cidr, ip_version=4,
                     gateway_ip=cidr.replace("0/24", "1"))
        self.g.put_subnet(sub)
        return net, sub

    def vm(self, net: Network, sub: Subnet, ip: str, host: str) -> None:
        self.n_port += 1
        n = self.n_port
        self.g.put_port(Port(id=uid(3, n), network_id=net.id, project_id=net.project_id, key=n, mac_address=mac(n),
                             fixed_ips=(FixedIP(sub.id, ip),), binding_host=host, device_owner="compute:nova"))

    def router(self, project: str, subnets: list[tuple[Network, Subnet]]) -> None:
        """A router with an interface (the subnet's gateway address) on each subnet, as add_router_interface makes."""
        self.n_router += 1
        router = Router(id=uid(4, self.n_router), project_id=project, key=self.n_router)
        self.g.put_node("router", router.id, router)
        for net, sub in subnets:
            self.n_port += 1
            n = self.n_port
            self.g.put_port(Port(id=uid(3, n), network_id=net.id, project_id=project, key=n, mac_address=mac(n),
                                 fixed_ips=(FixedIP(sub.id, sub.gateway_ip),), device_owner=ROUTER_INTERFACE,
                                 device_id=router.id))

    def tenant(self, project: str, n_subnets: int, vms_per_subnet: int, hosts) -> None:
        """A routed tenant: ``n_subnets`` subnets of ``vms_per_subnet`` VMs each, placed by ``hosts`` (an iterator)."""
        subnets = [self.network(project, f"10.{s}.0.0/24") for s in range(n_subnets)]
        for s, (net, sub) in enumerate(subnets):
            for k in range(vms_per_subnet):
                self.vm(net, sub, f"10.{s}.{k // 200}.{k % 200 + 10}", next(hosts))
        self.router(project, subnets)


def build(n_hvs: int, n_subnets: int, vms_per_subnet: int) -> TopologyGraph:
    """The cloud of the ``flows`` sweeps (see the module docstring)."""
    c = _Cloud(n_hvs)
    # the focus tenant: hv0 hosts HV0_VMS_PER_SUBNET VMs on each of its first HV0_ROUTED_SUBNETS subnets
    subnets = [c.network("focus", f"10.{s}.0.0/24") for s in range(n_subnets)]
    spread = 0
    for s, (net, sub) in enumerate(subnets):
        for k in range(vms_per_subnet):
            on_hv0 = s < HV0_ROUTED_SUBNETS and k < HV0_VMS_PER_SUBNET
            host = "hv0" if on_hv0 else FOCUS_HOSTS[spread % len(FOCUS_HOSTS)]
            spread += 0 if on_hv0 else 1
            c.vm(net, sub, f"10.{s}.{k // 200}.{k % 200 + 10}", host)
    c.router("focus", subnets)
    # an L2-only network of another tenant on hv0 (and on hv1)
    l2net, l2sub = c.network("l2only", "10.200.0.0/24")
    for k in range(HV0_L2_VMS):
        c.vm(l2net, l2sub, f"10.200.0.{k + 10}", "hv0" if k % 2 == 0 else "hv1")
        c.vm(l2net, l2sub, f"10.200.0.{k + 110}", "hv0" if k % 2 else "hv1")
    # background: the hypervisors after the focus ones host BACKGROUND_VMS_PER_HV VMs each,
    # of routed tenants filled in turn (their VMs on consecutive hypervisors)
    first = 1 + len(FOCUS_HOSTS)
    background_hosts = [f"hv{i}" for i in range(first, n_hvs) for _ in range(BACKGROUND_VMS_PER_HV)]
    per_tenant = BACKGROUND_SUBNETS * BACKGROUND_VMS_PER_SUBNET
    hosts = iter(background_hosts)
    for t in range(len(background_hosts) // per_tenant):
        c.tenant(f"bg-{t}", BACKGROUND_SUBNETS, BACKGROUND_VMS_PER_SUBNET, hosts)
    wire_ofports(c.g)
    return c.g


def _by_stage(flows) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in flows:
        name = STAGE_BY_TABLE[f.table_id].name
        out[name] = out.get(name, 0) + 1
    return out


def _count(graph: TopologyGraph, hv: str) -> int:
    return len(compile_hypervisor(graph, hv))


def _increments(xs: list[int], ys: list[int]) -> list[float]:
    """Flows added per unit of x between consecutive points (constant: linear)."""
    return [round((y1 - y0) / (x1 - x0), 2) for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False)]


def flows_figures(quick: bool = False) -> dict[str, Any]:
    """The three sweeps of hv0's compiled flow count (see the module docstring)."""
    out: dict[str, Any] = {}
    # 1. the cloud grows around hv0 (hv0's load fixed: S=4, P=10)
    sizes = [10, 100] if quick else [10, 100, 1000]
    hv0, bystander, routers, t_compile = [], [], [], []
    for n in sizes:
        g = build(n, 4, 10)
        hv0.append(_count(g, "hv0"))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            compile_hypervisor(g, "hv0")
            times.append(time.perf_counter() - t0)
        t_compile.append(round(statistics.median(times) * 1e3, 2))
        bystander.append(_count(g, f"hv{1 + len(FOCUS_HOSTS)}"))  # hosts 20 VMs of background tenants
        routers.append(len(list(g.records("router"))))
        if n == sizes[-1]:
            out["hv0_flows_by_stage"] = _by_stage(compile_hypervisor(g, "hv0"))
    out["cloud_hypervisors"] = sizes
    out["cloud_routers"] = routers
    out["cloud_hv0_flows"] = hv0
    out["cloud_hv0_compile_ms_median"] = t_compile
    out["cloud_bystander_flows"] = bystander
    out["cloud_hv0_flat"] = len(set(hv0)) == 1
    # 2. the focus router's subnets grow (P=10); hv0 still hosts 6 VMs on 2 of them
    subnets = [2, 4, 8, 16] if quick else [2, 4, 8, 16, 32]
    counts = [_count(build(20, s, 10), "hv0") for s in subnets]
    out["subnets_S"] = subnets
    out["subnets_hv0_flows"] = counts
    out["subnets_flows_per_added_subnet"] = _increments(subnets, counts)
    out["subnets_linear"] = len(set(out["subnets_flows_per_added_subnet"])) == 1
    # 3. the focus router's subnets get more VMs elsewhere (S=4)
    ports = [5, 10, 20, 40] if quick else [5, 10, 20, 40, 80]
    counts = [_count(build(20, 4, p), "hv0") for p in ports]
    out["ports_P"] = ports
    out["ports_hv0_flows"] = counts
    out["ports_flows_per_added_vm_per_subnet"] = _increments(ports, counts)
    out["ports_linear"] = len(set(out["ports_flows_per_added_vm_per_subnet"])) == 1
    return out


# -- east-west TCP throughput on real OVS ---------------------------------------------------

PREFIX = "tfw"
IPERF_PORT = 5201
ROUNDS = 5  # quick: 3
TIMEOUT_S = 15.0


def _wait(cond, timeout: float, what: str, ctl=None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}" + (f"\n{ctl.log_tail()}" if ctl else ""))
        time.sleep(0.05)


def _iperf_bps(client, server, ip: str, seconds: int, omit: int = 1, pin: tuple[str, str] | None = None,
               reverse: bool = False) -> tuple[float, int]:
    """One iperf3 TCP run client -> server at ``ip`` (server -> client with ``reverse``, iperf3 ``-R``):
    (received bit/s, retransmits); the server is killed by PID."""
    cpin = ["taskset", "-c", pin[0]] if pin else []
    spin = ["taskset", "-c", pin[1]] if pin else []
    srv = server.popen([*spin, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: f":{IPERF_PORT} " in server.cmd(f"ss -Hltn 'sport = :{IPERF_PORT}'"), 5, "iperf3 listening")
        argv = [*cpin, "iperf3", "-c", ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", str(omit), "-J",
                *(["-R"] if reverse else [])]
        cli = client.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out, _ = cli.communicate(timeout=seconds + 30)
        data = json.loads(out)
        if "error" in data:
            raise RuntimeError(f"iperf3 {client.name} -> {ip}: {data['error']}")
        end = data["end"]
        return float(end["sum_received"]["bits_per_second"]), int(end["sum_sent"].get("retransmits", 0))
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait(timeout=5)


def pin_vswitchds(client_hv, server_hv) -> tuple[str, str] | None:
    """Pin the client side's ovs-vswitchd to one CPU, the server side's to another: (client CPU, server CPU).

    Give the same pair to :func:`_iperf_bps` so each iperf3 end shares its hypervisor's
    CPU: the same placement for every kind of run (unpinned, the scheduler's choices
    swing a run by 2x on a 2-core machine). None (nothing pinned) on a single CPU.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    pinning = (str(cpus[0]), str(cpus[1]))
    for hv, cpu in zip((client_hv, server_hv), pinning, strict=True):
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(hv.ovs.pid("ovs-vswitchd"))], check=True,
                       stdout=subprocess.DEVNULL)
    return pinning


@contextlib.contextmanager
def controller_and_lab(prefix: str, n_hypervisors: int, tag: str, manager: bool = False,
                       **lab_kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """A ``tenantflow controller`` process and a lab of ``n_hypervisors`` attached to it, registered and
    connected; yields (controller, lab); both stopped and their work dir removed on exit. With
    ``manager`` the controller is also every hypervisor's OVSDB manager (operator step 2's
    ``set-manager``: it creates the gateway tunnels); ``lab_kwargs`` go to :class:`apps.lab.Lab`
    (``provider=True``, ``gateways=(...)``...)."""
    from apps.lab import Lab
    from apps.lab.controller import ControllerProcess

    workdir = tempfile.mkdtemp(prefix=f"tenantflow-bench-{tag}-")
    ctl = ControllerProcess(os.path.join(workdir, "controller"))
    if manager:
        lab_kwargs["manager_unix_socket"] = ctl.ovsdb_socket
    lab = Lab(prefix=prefix, n_hypervisors=n_hypervisors, controller_unix_socket=ctl.unix_socket,
              api_url=ctl.api_url, workdir=os.path.join(workdir, "lab"), **lab_kwargs)
    try:
        ctl.start()
        lab.start()
        lab.register_hypervisors()
        for hv in lab.hypervisors:
            ctl.wait_hypervisor_connected(hv.name)
        yield ctl, lab
    finally:
        try:
            lab.stop()
        finally:
            ctl.stop()
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def routed_lab() -> Iterator[tuple[Any, dict[str, Any], Any]]:
    """Controller + 2-hypervisor lab: router over 10.1.1/24 (ra, hv1) and 10.1.2/24 (rb, hv2), L2 network
    10.2.0/24 (la on hv1, lb on hv2); yields (lab, {name: VM}, ip(name)); everything removed on exit."""
    with controller_and_lab(PREFIX, 2, "routing") as (ctl, lab):
        router = ctl.create("router", name="bench-router")
        nets = {}
        for name, cidr in (("r1", "10.1.1.0/24"), ("r2", "10.1.2.0/24"), ("l2", "10.2.0.0/24")):
            net = ctl.create("network", name=f"bench-{name}")
            nets[name] = (net, ctl.create("subnet", network_id=net["id"], cidr=cidr, ip_version=4))
        vms = {}
        for vm_name, net_name, host in (("ra", "r1", "hv1"), ("rb", "r2", "hv2"), ("la", "l2", "hv1"),
                                        ("lb", "l2", "hv2")):
            net, sub = nets[net_name]
            port = ctl.create("port", network_id=net["id"], device_owner="compute:nova", **{"binding:host_id": host})
            vms[vm_name] = lab.plug_vm(vm_name, port, mtu=int(net.get("mtu") or 1450), gateway=sub["gateway_ip"])
        # the VMs first, then the interfaces (add_router_interface recompiles all the router's hypervisors)
        for name in ("r1", "r2"):
            ctl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": nets[name][1]["id"]})

        def ip(vm: str) -> str:
            return str(vms[vm].port["fixed_ips"][0]["ip_address"])

        for a, b in (("ra", "rb"), ("rb", "ra"), ("la", "lb")):
            _wait(lambda a=a, b=b: " 0% packet loss" in vms[a].cmd(f"ping -c1 -W1 {ip(b)}"), TIMEOUT_S,
                  f"{a} -> {b} ping", ctl)
        ttl = vms["ra"].cmd(f"ping -c1 -W1 {ip('rb')}")
        if "ttl=63" not in ttl:
            raise RuntimeError(f"ra -> rb is not one routed hop:\n{ttl}")
        yield lab, vms, ip


def throughput_figures(quick: bool = False, rounds: int | None = None, pin: bool = True) -> dict[str, Any]:
    """Routed vs L2 east-west TCP between the same two hypervisors, interleaved (module docstring)."""
    seconds = 2 if quick else 5
    rounds = rounds or (3 if quick else ROUNDS)
    with routed_lab() as (lab, vms, ip):
        pinning = pin_vswitchds(*lab.hypervisors) if pin else None
        ends = {"l2": ("la", "lb"), "routed": ("ra", "rb")}

        def run_one(kind: str) -> tuple[float, int]:
            a, b = ends[kind]
            return _iperf_bps(vms[a], vms[b], ip(b), seconds, pin=pinning)

        runs, retrans = interleaved(("l2", "routed"), rounds, run_one)
        routed, l2 = runs["routed"], runs["l2"]
        ratio = statistics.median(routed) / statistics.median(l2)
        paired = [r / x for r, x in zip(routed, l2, strict=True)]
        return {
            "throughput_seconds_per_run": seconds,
            "throughput_rounds": rounds,
            "throughput_pinned_cpus": list(pinning) if pinning else None,
            **gbps_summary("throughput", runs),
            "throughput_retransmits": retrans,
            "throughput_routed_over_l2": round(ratio, 3),
            "throughput_routed_over_l2_per_round": [round(x, 3) for x in paired],
            "throughput_routed_over_l2_median_of_rounds": round(statistics.median(paired), 3),
            # the run-to-run noise of one kind (max/min): a ratio closer to 1 than this is noise
            "throughput_l2_spread": round(max(l2) / min(l2), 3),
            "throughput_goal_0_95_met": ratio >= 0.95,
        }


def run(quick: bool = False) -> dict[str, Any]:
    """Both parts: compiled flows per hypervisor, and the routed/L2 throughput ratio."""
    out = {f"flows_{k}": v for k, v in flows_figures(quick).items()}
    out.update(throughput_figures(quick))
    return out
