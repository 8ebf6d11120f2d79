"""``tenantflow demo``: the whole story on one lab, checked on real packets, reported in text and HTML.

Everything goes through the documented interfaces, in the operator's order:

1. ``tenantflow controller`` as a child process on its embedded defaults, with a fresh
   SQLite file and unix sockets in a work directory (:class:`ControllerProcess`);
2. a lab of four hypervisors (private OVS in namespaces) built and attached with the operator
   steps (:mod:`apps.lab.steps`) and registered through the REST API: hv1-hv3 computes, hv4
   the gateway for the provider network ``physnet1`` (the controller, as every host's OVSDB
   manager, makes the BFD tunnels to it); an outside host on that provider network;
3. through the REST API: an external network (flat, 172.24.4.0/24); tenants A and B, each with
   a network holding the same 10.0.0.0/24 and fd00:0:0:1::/64 (SLAAC) and a router; A's router
   also joins a second subnet 10.0.1.0/24 and has its gateway on the external network; a
   security group letting SSH (and ping) in; VMs bound to the computes, plugged as Nova does,
   a floating IP on one of them;
4. every VM boots with no address: IPv4 by DHCP (busybox ``udhcpc`` in the VM, answered by the
   controller), IPv6 from its router's advertisement (the kernel's SLAAC);
5. the checks, on real traffic: the IPv4 and IPv6 reachability matrices (:mod:`apps.demo_matrix`)
   with the floating IP, security group and SNAT checks at the same time (their traffic never
   touches the matrices' counters), then routing, then a controller restart under traffic
   (:mod:`apps.demo_checks`);
6. the report (:mod:`apps.demo_report`) on the terminal and as an HTML page; teardown.

Exit status 0 only if every claim held.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from apps import demo_checks, demo_matrix
from apps.demo_report import (
    Claim,
    HypervisorView,
    Matrix,
    NetworkView,
    Report,
    RouterView,
    TopologyView,
    VMView,
    render_claims,
    render_text,
    write_html,
)
from apps.lab import sh
from apps.lab.controller import ControllerProcess
from apps.lab.lab import Lab, LabVM

PREFIX = "tfd"  # lab namespaces: tfd-fabric, tfd-hv1, tfd-vm-a1, ...
HTML = os.path.join("results", "demo.html")
CIDR, CIDR6, CIDR2 = "10.0.0.0/24", "fd00:0:0:1::/64", "10.0.1.0/24"
EXT_CIDR, OUT_IP = "172.24.4.0/24", "172.24.4.1"
GATEWAY = "hv4"
SSH, OTHER_PORT, OUT_PORT = 22, 8080, 80
# name, tenant, hypervisor, network, fixed address. Tenant B holds tenant A's addresses rotated by
# one hypervisor, so a ping to a B address from A is answered, by A's own VM with that address.
LAYOUT = [
    ("a1", "tenant-a", "hv1", "a-net", "10.0.0.11"),
    ("a2", "tenant-a", "hv2", "a-net", "10.0.0.12"),
    ("a3", "tenant-a", "hv3", "a-net", "10.0.0.13"),
    ("a4", "tenant-a", "hv3", "a-net2", "10.0.1.14"),
    ("b1", "tenant-b", "hv1", "b-net", "10.0.0.12"),
    ("b2", "tenant-b", "hv2", "b-net", "10.0.0.13"),
    ("b3", "tenant-b", "hv3", "b-net", "10.0.0.11"),
]
FIP_VM, SNAT_VM = "a1", "a2"  # a1 gets the floating IP and the SSH group; a2 goes out by SNAT
# the story's order, whatever order the checks ran in
CLAIMS = ("isolation", "reachability", "routing (DVR)", "DHCP", "SLAAC", "floating IP", "SNAT", "security group",
          "controller restart")
SLAAC_TIMEOUT = 20.0  # the kernel solicits at link up, again 4 s later, then less and less often


@dataclass
class DemoVM:
    """One VM of the demo: its tenant, lab VM, network and the addresses the API gave its port."""

    name: str
    tenant: str
    vm: LabVM
    network: str
    ip: str
    mac: str
    ip6: str | None = None  # its SLAAC address (EUI-64 of its MAC), as the API shows it
    fip: str | None = None

    @property
    def hv(self) -> str:
        """The hypervisor it runs on."""
        return self.vm.hypervisor.name

    def address(self, family: int) -> str | None:
        """Its fixed address of ``family``."""
        return self.ip6 if family == 6 else self.ip


@dataclass
class Cloud:
    """What the demo built: the controller, the lab, and what the API returned."""

    ctl: ControllerProcess
    lab: Lab
    out: LabVM
    vms: dict[str, DemoVM] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    subnets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # network name -> its subnets
    routers: dict[str, dict[str, Any]] = field(default_factory=dict)
    leases: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def gateway_ip(self) -> str:
        """Tenant A's router's address on the external network (what SNAT makes of its VMs)."""
        info = self.routers["a-router"]["external_gateway_info"]
        return str(info["external_fixed_ips"][0]["ip_address"])


# -- building through the API ----------------------------------------------------------------------
def _router_interface(ctl: ControllerProcess, router: dict[str, Any], subnet: dict[str, Any]) -> None:
    ctl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": subnet["id"]})


def create_networks(cloud: Cloud) -> None:
    """The external network, and per tenant its network(s), subnets and router."""
    ctl = cloud.ctl
    ext = ctl.create("network", name="ext", **{"router:external": True, "provider:network_type": "flat",
                                               "provider:physical_network": cloud.lab.physnet})
    cloud.networks["ext"] = ext
    cloud.subnets["ext"] = [ctl.create("subnet", network_id=ext["id"], cidr=EXT_CIDR, gateway_ip=OUT_IP,
                                       enable_dhcp=False, name="ext-subnet",
                                       allocation_pools=[{"start": "172.24.4.10", "end": "172.24.4.250"}])]
    for tenant in ("tenant-a", "tenant-b"):
        t = tenant[-1]
        net = ctl.create("network", name=f"{t}-net", project_id=tenant)
        v4 = ctl.create("subnet", network_id=net["id"], cidr=CIDR, ip_version=4, project_id=tenant,
                        name=f"{t}-subnet")
        v6 = ctl.create("subnet", network_id=net["id"], cidr=CIDR6, ip_version=6, project_id=tenant,
                        name=f"{t}-subnet6", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
        cloud.networks[f"{t}-net"], cloud.subnets[f"{t}-net"] = net, [v4, v6]
        gateway = {"external_gateway_info": {"network_id": ext["id"]}} if t == "a" else {}
        router = ctl.create("router", name=f"{t}-router", project_id=tenant, **gateway)
        for subnet in (v4, v6):
            _router_interface(ctl, router, subnet)
        cloud.routers[f"{t}-router"] = router
    net2 = ctl.create("network", name="a-net2", project_id="tenant-a")
    v4b = ctl.create("subnet", network_id=net2["id"], cidr=CIDR2, ip_version=4, project_id="tenant-a",
                     name="a-subnet2")
    cloud.networks["a-net2"], cloud.subnets["a-net2"] = net2, [v4b]
    _router_interface(ctl, cloud.routers["a-router"], v4b)
    cloud.routers["a-router"] = ctl.show("router", cloud.routers["a-router"]["id"])


def _ssh_group(ctl: ControllerProcess) -> tuple[str, str]:
    """Tenant A's group ``ssh`` (SSH and ping in from anywhere) and its ``default`` group: their ids."""
    sg = ctl.request("POST", "/v2.0/security-groups", {"security_group": {
        "name": "ssh", "project_id": "tenant-a", "description": "SSH and ping from anywhere"}})["security_group"]
    for rule in ({"protocol": "tcp", "port_range_min": SSH, "port_range_max": SSH}, {"protocol": "icmp"}):
        ctl.request("POST", "/v2.0/security-group-rules", {"security_group_rule": {
            "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4",
            "remote_ip_prefix": "0.0.0.0/0", "project_id": "tenant-a", **rule}})
    groups = ctl.request("GET", "/v2.0/security-groups?project_id=tenant-a&name=default")["security_groups"]
    return sg["id"], groups[0]["id"]


def boot_vms(cloud: Cloud) -> None:
    """One bound port per VM of :data:`LAYOUT`, plugged with no address; the floating IP on :data:`FIP_VM`."""
    ctl = cloud.ctl
    ssh, default = _ssh_group(ctl)
    for name, tenant, hv, network, ip in LAYOUT:
        net = cloud.networks[network]
        v4 = cloud.subnets[network][0]
        extra = {"security_groups": [default, ssh]} if name == FIP_VM else {}
        port = ctl.create("port", network_id=net["id"], project_id=tenant, name=name, device_owner="compute:nova",
                          device_id=name, fixed_ips=[{"subnet_id": v4["id"], "ip_address": ip}],
                          **{"binding:host_id": hv}, **extra)
        vm = cloud.lab.plug_vm(name, port, mtu=int(net.get("mtu") or 1450), dhcp=True)
        ip6 = next((f["ip_address"] for f in port["fixed_ips"] if ":" in f["ip_address"]), None)
        cloud.vms[name] = DemoVM(name, tenant, vm, network, ip, port["mac_address"], ip6)
    fip = ctl.create("floatingip", floating_network_id=cloud.networks["ext"]["id"],
                     port_id=cloud.vms[FIP_VM].vm.port_id, project_id="tenant-a")
    cloud.vms[FIP_VM].fip = str(fip["floating_ip_address"])


def wait_pushed(cloud: Cloud, timeout: float = 20.0) -> None:
    """Until every port is ACTIVE (its tap seen) and ``GET /sync?wait`` says every bridge holds every change."""
    pending = {v.vm.port_id for v in cloud.vms.values()}

    def all_active() -> bool:
        pending.difference_update({p for p in pending if cloud.ctl.show("port", p)["status"] == "ACTIVE"})
        return not pending

    demo_checks.wait_for(all_active, timeout, "every port ACTIVE")
    answer = cloud.ctl.request("GET", f"/sync?wait={timeout:g}", timeout=timeout + 5)
    if not answer.get("converged"):
        raise TimeoutError(f"the bridges did not converge: {answer}\n{cloud.ctl.log_tail()}")


def _slaac_done(vm: DemoVM) -> bool:
    """Whether the VM holds its port's IPv6 address, past duplicate address detection (usable)."""
    out = sh.run(["ip", "-n", vm.vm.netns, "-6", "addr", "show", "dev", "eth0", "scope", "global"])
    return any(f"inet6 {vm.ip6}/64" in line and "tentative" not in line for line in out.splitlines())


def take_addresses(cloud: Cloud) -> list[Claim]:
    """Every VM asks DHCP for its IPv4 address (in parallel, as VMs boot) and builds its IPv6 one from
    its router's advertisement: the DHCP and SLAAC claims."""
    vms = list(cloud.vms.values())

    def lease(vm: DemoVM) -> dict[str, str]:
        try:
            return cloud.lab.request_address(vm.vm)
        except (sh.CommandError, OSError) as exc:  # no lease: a failed claim, the demo goes on
            return {"error": str(exc).splitlines()[0][-120:]}

    with ThreadPoolExecutor(max_workers=len(vms)) as pool:
        leases = list(pool.map(lease, vms))
    cloud.leases = {v.name: got for v, got in zip(vms, leases, strict=True)}
    right = [v for v in vms if cloud.leases[v.name].get("ip") == v.ip]
    wrong = [f"{v.name} got {cloud.leases[v.name].get('ip') or cloud.leases[v.name].get('error')}, its port has {v.ip}"
             for v in vms if v not in right]
    servers = sorted({got["serverid"] for got in leases if "serverid" in got})
    dhcp = Claim("DHCP", not wrong, f"{len(right)}/{len(vms)} VMs booted with no address got their port's address "
                 f"by DHCP (udhcpc in the VM; the controller answered as {'/'.join(servers)})"
                 + (": " + "; ".join(wrong) if wrong else ""))
    v6 = [v for v in vms if v.ip6]
    deadline = time.monotonic() + SLAAC_TIMEOUT
    missing = list(v6)
    while missing and time.monotonic() < deadline:
        missing = [v for v in missing if not _slaac_done(v)]
        time.sleep(0.1)
    slaac = Claim("SLAAC", not missing, f"{len(v6) - len(missing)}/{len(v6)} VMs on {CIDR6} built their port's "
                  "address from their router's advertisement (kernel SLAAC, EUI-64)"
                  + (": missing " + ", ".join(f"{v.name} ({v.ip6})" for v in missing) if missing else ""))
    return [dhcp, slaac]


# -- the checks -------------------------------------------------------------------------------------
def matrix_claims(m4: Matrix, m6: Matrix) -> list[Claim]:
    """Isolation and same-tenant reachability, from both matrices."""
    counts = {}
    for matrix in (m4, m6):
        same = [(s, d) for s in matrix.names for d in matrix.names if s != d
                and matrix.tenants[s] == matrix.tenants[d]]
        cross = [(s, d) for s in matrix.names for d in matrix.names if matrix.tenants[s] != matrix.tenants[d]]
        counts[matrix.family] = (sum(matrix.reached[p] for p in same), len(same),
                                 [p for p in cross if matrix.reached[p]], len(cross))
    leaks = counts[4][2] + counts[6][2]
    example = next((n for n in m4.notes if "answered by" in n), "")
    isolation = Claim("isolation", not leaks,
                      f"both on {CIDR} and {CIDR6}: {len(counts[4][2])}/{counts[4][3]} IPv4 and "
                      f"{len(counts[6][2])}/{counts[6][3]} IPv6 cross-tenant pings reached the other tenant"
                      + (f" ({', '.join(f'{s}->{d}' for s, d in leaks)})" if leaks else f"; e.g. {example}"))
    full = all(counts[f][0] == counts[f][1] for f in (4, 6))
    reach = Claim("reachability", full,
                  f"same-tenant pairs reached: IPv4 {counts[4][0]}/{counts[4][1]} (a4 on {CIDR2} via a-router), "
                  f"IPv6 {counts[6][0]}/{counts[6][1]}")
    return [isolation, reach]


def concurrent_checks(cloud: Cloud, workdir: str) -> tuple[list[Matrix], list[Claim]]:
    """The matrices, the floating IP, security group and SNAT checks, all at once: (matrices, claims)."""
    vms = list(cloud.vms.values())
    a1, a2 = cloud.vms[FIP_VM], cloud.vms[SNAT_VM]
    assert a1.fip is not None
    jobs: dict[str, Callable[[], Any]] = {
        "m4": lambda: demo_matrix.matrix(vms, 4)[0],
        "m6": lambda: demo_matrix.matrix(vms, 6)[0],
        "fip": lambda: [
            demo_checks.check_floating_ip(cloud.lab, cloud.out, OUT_IP, a1.vm, a1.fip, SSH, workdir),
            demo_checks.check_security_group(cloud.out, a1.fip, a2.vm, a1.ip, a1.name, SSH, OTHER_PORT)],
        "snat": lambda: [demo_checks.check_snat(cloud.lab, a2.vm, a2.ip, OUT_IP, OUT_PORT, cloud.gateway_ip,
                                                GATEWAY, workdir)],
    }
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        results = {key: f.result() for key, f in futures.items()}
    return [results["m4"], results["m6"]], [*matrix_claims(results["m4"], results["m6"]),
                                              *results["fip"], *results["snat"]]


# -- the report -------------------------------------------------------------------------------------
def topology_view(cloud: Cloud | None, lab: Lab) -> TopologyView:
    """What the HTML page draws, from what the API returned."""
    hvs = [HypervisorView(hv.name, hv.tunnel_ip, hv.name == GATEWAY) for hv in lab.hypervisors]
    view = TopologyView(hvs, [], [], [], underlay=f"underlay {lab.underlay} (VXLAN between every pair of "
                        f"hypervisors; provider network {lab.physnet} on each one's br-phys)")
    if cloud is None:
        return view
    view.outside = ("out", OUT_IP)
    for name, net in cloud.networks.items():
        view.networks.append(NetworkView(name, "" if name == "ext" else str(net["project_id"])[-1].upper(),
                                         [s["cidr"] for s in cloud.subnets[name]], name == "ext"))
    by_subnet = {s["id"]: name for name, subnets in cloud.subnets.items() for s in subnets}
    for name, router in cloud.routers.items():
        ports = cloud.ctl.request("GET", f"/v2.0/ports?device_id={router['id']}")["ports"]
        nets = sorted({by_subnet[f["subnet_id"]] for p in ports for f in p["fixed_ips"]
                       if by_subnet.get(f["subnet_id"]) not in (None, "ext")})
        gw = router.get("external_gateway_info") or None
        view.routers.append(RouterView(name, str(router["project_id"])[-1].upper(), nets,
                                       gw["external_fixed_ips"][0]["ip_address"] if gw else None,
                                       list(router.get("gateway_hypervisors") or [])))
    for v in cloud.vms.values():
        view.vms.append(VMView(v.name, v.tenant[-1].upper(), v.hv, v.network, v.ip, v.ip6, v.fip))
    return view


class Timeline:
    """The demo's progress lines, printed as they come and kept for the report."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:5.1f}s] {msg}"
        self.lines.append(line)
        print(line, flush=True)

    @property
    def seconds(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.t0


def _keep_hint(cloud: Cloud) -> str:
    hv = cloud.lab.hypervisors[0]
    a1 = cloud.vms[FIP_VM]
    return "\n".join([
        "--keep: everything stays up until Ctrl-C. To look around:",
        f"  ovs-ofctl -O OpenFlow13 dump-flows unix:{hv.rundir}/br-int.mgmt",
        f"  ip netns exec {a1.vm.netns} ping -c1 {cloud.vms['a4'].ip}",
        f"  ip netns exec {cloud.out.netns} ping -c1 {a1.fip}",
        f"  curl -s {cloud.ctl.api_url}/v2.0/ports | python3 -m json.tool",
        f"  curl -s {cloud.ctl.api_url}/metrics | grep ^tenantflow_",
        f"  {sys.executable} -m apps.cli trace --db {cloud.ctl.db} --hv {hv.name} --in-port {a1.vm.tap} "
        f"eth_type=0x0800 eth_src={a1.mac} eth_dst=ff:ff:ff:ff:ff:ff --follow",
        f"  controller log: {cloud.ctl.log_path}",
    ])


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt, so the finally blocks tear down.

    SIGINT too: a demo started in the background by a shell inherits SIGINT ignored.
    """

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- the run ----------------------------------------------------------------------------------------
def build(ctl: ControllerProcess, lab: Lab, log: Timeline) -> Cloud:
    """Controller, lab, the cloud through the API, VMs plugged and their flows pushed."""
    ctl.start()
    log(f"controller up (pid {ctl.proc.pid if ctl.proc else '?'}): API {ctl.api_url}, state {ctl.db}")
    lab.start()
    lab.register_hypervisors()
    for hv in lab.hypervisors:
        ctl.wait_hypervisor_connected(hv.name)
    log(f"{len(lab.hypervisors)} hypervisors built with the operator steps, registered and connected: "
        + ", ".join(f"{hv.name} ({hv.tunnel_ip}{', gateway' if hv.name == GATEWAY else ''})" for hv in lab.hypervisors))
    out = lab.add_outside_host("out", f"{OUT_IP}/24")
    sh.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], netns=out.netns)
    cloud = Cloud(ctl, lab, out)
    create_networks(cloud)
    boot_vms(cloud)
    log(f"through the API: ext {EXT_CIDR}; a-net and b-net both {CIDR} + {CIDR6} (SLAAC), a-net2 {CIDR2}; "
        f"a-router (gateway {cloud.gateway_ip} on ext, SNAT on {GATEWAY}), b-router; "
        f"{len(cloud.vms)} VMs plugged, floating IP {cloud.vms[FIP_VM].fip} on {FIP_VM}")
    wait_pushed(cloud)
    log("every port ACTIVE, every bridge holds what the controller compiled (GET /sync?wait)")
    return cloud


def run_checks(cloud: Cloud, report: Report, log: Timeline, workdir: str) -> None:
    """Addresses, then the checks in three phases; each claim into ``report`` as it is made."""
    servers = [demo_checks.serve(cloud.vms[FIP_VM].vm, FIP_VM, SSH, OTHER_PORT),
               demo_checks.serve(cloud.out, "out", OUT_PORT)]
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:  # BFD comes up while the VMs take their addresses
            bfd = pool.submit(demo_checks.wait_for, cloud.lab.gateway_tunnels_up, 20, "BFD to the gateway")
            report.claims += take_addresses(cloud)
            bfd.result()
        log("addresses taken: " + ", ".join(f"{v.name} {v.ip}" for v in cloud.vms.values()))
        report.matrices, claims = concurrent_checks(cloud, workdir)
        report.claims += claims
        log("matrices, floating IP, security group and SNAT checked")
        a1, a4 = cloud.vms[FIP_VM], cloud.vms["a4"]
        report.claims.append(demo_checks.check_routing(cloud.lab, a1.vm, a1.ip, a4.vm, a4.ip, workdir))
        log("routing checked")
        pairs = [(a1.vm, a4.ip), (cloud.vms["b1"].vm, cloud.vms["b3"].ip)]
        report.claims.append(demo_checks.check_restart(cloud.ctl, cloud.lab, pairs))
        log("controller restart checked")
    finally:
        report.claims.sort(key=lambda c: CLAIMS.index(c.name) if c.name in CLAIMS else len(CLAIMS))
        sh.kill_pids([p.pid for p in servers])


def run(args: argparse.Namespace) -> int:
    """The demo proper; tears down whatever was built, writes the report, returns the exit status."""
    log = Timeline()
    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="tenantflow-demo-")
    ctl = ControllerProcess(os.path.join(workdir, "controller"))
    lab = Lab(prefix=args.prefix, n_hypervisors=4, controller_unix_socket=ctl.unix_socket, api_url=ctl.api_url,
              workdir=os.path.join(workdir, "lab"), manager_unix_socket=ctl.ovsdb_socket, provider=True,
              gateways=(GATEWAY,))
    report = Report(TopologyView([], [], [], []))
    checked = False
    try:
        with _signals_as_interrupt():
            cloud = build(ctl, lab, log)
            report.topology = topology_view(cloud, lab)
            run_checks(cloud, report, log, workdir)
            checked = True
            if args.keep:
                print("\n".join(render_claims(report.claims)) + "\n" + _keep_hint(cloud), flush=True)
                while True:
                    time.sleep(3600)
    except KeyboardInterrupt:
        if not checked:  # with --keep, Ctrl-C after the checks is the way out, not a failure
            report.error = "interrupted"
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        print(f"demo error: {exc}\ncontroller log tail:\n{ctl.log_tail()}", file=sys.stderr)
    finally:
        # No second Ctrl-C may cut the teardown short and leave namespaces behind.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if not report.topology.hypervisors and lab.hypervisors:
                report.topology = topology_view(None, lab)
            lab.stop()
            ctl.stop()
            if own_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            log(f"torn down (lab {args.prefix}, controller)")
        finally:
            signal.signal(signal.SIGINT, old)
    report.seconds, report.log = log.seconds, log.lines
    print(render_text(report))
    print(f"HTML report: {write_html(report, args.html)}", flush=True)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """``tenantflow demo [--html PATH] [--keep] [--workdir DIR] [--prefix P]``."""
    p = argparse.ArgumentParser(prog="tenantflow demo", description=__doc__.split("\n")[0])
    p.add_argument("--html", default=HTML, help=f"write the HTML report here (default {HTML})")
    p.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C (after the checks)")
    p.add_argument("--workdir", help="state, sockets and logs here (default: a fresh temporary dir)")
    p.add_argument("--prefix", default=PREFIX, help=f"lab name prefix (default {PREFIX})")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
