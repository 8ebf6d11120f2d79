"""``tenantflow demo``: a controller, a lab of hypervisors, two tenants on the same CIDR, who reaches whom.

Everything goes through the documented interfaces, in the operator's order:

1. ``tenantflow controller`` as a child process on its embedded defaults, with a fresh
   SQLite file and unix socket in a work directory (:class:`ControllerProcess`);
2. a lab of N hypervisors (private OVS in namespaces) attached through that unix socket,
   each registered through the REST API (:class:`apps.lab.Lab`: the operator steps);
3. per tenant (project ``tenant-a``, ``tenant-b``): a network with an IPv4 subnet 10.0.0.0/24
   and a SLAAC IPv6 subnet fd00:0:0:1::/64 (both tenants the same), a router on the IPv6
   subnet (its advertisements), through the REST API, and one port per hypervisor bound with
   ``binding:host_id``, plugged the way Nova does it;
4. wait until every port is ACTIVE and the controller has pushed every bridge;
5. every VM, booted with no address, takes its port's IPv4 address by DHCP (busybox ``udhcpc``,
   answered by the controller) and builds its IPv6 address from the router's advertisement
   (the kernel's SLAAC), each the address the API shows for its port;
6. the reachability matrix: each VM pings every other VM's IPv4 address; then the same over
   IPv6 (``ping -6`` to each other VM's SLAAC address).

Both tenants use the same addresses on purpose: tenant B's VMs hold tenant A's
addresses rotated by one hypervisor (``b1`` has ``a2``'s address, ...). So a ping
from ``a1`` to ``b1``'s address *does* get an answer, from ``a2``. A cell is a
reach (✓) only if the ping was answered AND the destination VM itself counted the
echo requests (``Icmp: InEchos`` of its own namespace's ``/proc/net/snmp``); the
source's ARP entry (``ip neigh``) shows whose MAC the address resolved to.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from apps.lab import sh
from apps.lab.controller import ControllerProcess
from apps.lab.lab import Lab, LabVM

TENANTS = ("tenant-a", "tenant-b")
CIDR = "10.0.0.0/24"
CIDR6 = "fd00:0:0:1::/64"
PREFIX = "tfd"  # lab namespaces: tfd-fabric, tfd-hv1, tfd-vm-a1, ...
HOST_OFFSET = 10  # VM addresses start at 10.0.0.11
PING = "ping -c2 -i0.2 -W1 -q"


@dataclass
class DemoVM:
    """One VM of the demo: its tenant, lab VM and the port the API gave it."""

    name: str
    tenant: str
    vm: LabVM
    ip: str
    mac: str
    ip6: str  # its SLAAC address (the EUI-64 of its MAC), as the API shows it

    @property
    def hv(self) -> str:
        """The hypervisor it runs on."""
        return self.vm.hypervisor.name


@dataclass
class Cell:
    """The outcome of one ping of the matrix."""

    replies: int
    echoes_seen: int  # echo requests the destination VM itself received
    neigh_mac: str | None  # what the source's ARP cache says the address is

    @property
    def reached(self) -> bool:
        """Answered, and the destination VM saw the requests: nobody else answered for it."""
        return self.replies > 0 and self.echoes_seen > 0


def _log(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:5.1f}s] {msg}", flush=True)


def _vm_address(tenant_index: int, hv_index: int, n: int) -> str:
    """Tenant A: 10.0.0.(10+i); tenant B the same addresses rotated by one hypervisor."""
    host = (hv_index - 1 + tenant_index) % n + 1
    return f"10.0.0.{HOST_OFFSET + host}"


def create_tenants(ctl: ControllerProcess, lab: Lab) -> list[DemoVM]:
    """Networks, subnets and one bound port per (tenant, hypervisor) through the API; plug the VMs."""
    vms: list[DemoVM] = []
    n = len(lab.hypervisors)
    for t_index, tenant in enumerate(TENANTS):
        net = ctl.create("network", name=f"{tenant}-net", project_id=tenant)
        sub = ctl.create("subnet", network_id=net["id"], cidr=CIDR, ip_version=4, project_id=tenant,
                         name=f"{tenant}-subnet")
        sub6 = ctl.create("subnet", network_id=net["id"], cidr=CIDR6, ip_version=6, project_id=tenant,
                          name=f"{tenant}-subnet6", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
        router = ctl.create("router", name=f"{tenant}-router", project_id=tenant)
        ctl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub6["id"]})
        for hv in lab.hypervisors:
            name = f"{tenant[-1]}{hv.index}"
            ip = _vm_address(t_index, hv.index, n)
            port = ctl.create("port", network_id=net["id"], project_id=tenant, name=name,
                              device_owner="compute:nova", device_id=name, **{"binding:host_id": hv.name},
                              fixed_ips=[{"subnet_id": sub["id"], "ip_address": ip}])
            vm = lab.plug_vm(name, port, mtu=int(net.get("mtu") or 1450), dhcp=True)
            (ip6,) = [f["ip_address"] for f in port["fixed_ips"] if f["subnet_id"] == sub6["id"]]
            vms.append(DemoVM(name, tenant, vm, ip, port["mac_address"], ip6))
    return vms


SLAAC_TIMEOUT = 20.0  # the kernel solicits at link up, again 4 s later, then less and less often


def take_addresses(lab: Lab, vms: list[DemoVM]) -> None:
    """Each VM asks DHCP for its IPv4 address (in parallel, as VMs boot) and builds its IPv6 one from the router's
    advertisement; each must get its own port's."""
    with ThreadPoolExecutor(max_workers=len(vms) or 1) as pool:
        leases = list(pool.map(lambda v: lab.request_address(v.vm), vms))
    wrong = [f"{v.name} got {lease.get('ip')}, its port has {v.ip}" for v, lease in zip(vms, leases, strict=True)
             if lease.get("ip") != v.ip]
    if wrong:
        raise RuntimeError("DHCP gave the wrong address: " + "; ".join(wrong))
    deadline = time.monotonic() + SLAAC_TIMEOUT
    missing = list(vms)
    while missing and time.monotonic() < deadline:
        missing = [v for v in missing if f"inet6 {v.ip6}/64" not in
                   sh.run(["ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"], netns=v.vm.netns)]
        time.sleep(0.2)
    if missing:
        raise RuntimeError("no SLAAC address from the router's advertisement within "
                           f"{SLAAC_TIMEOUT:g} s: " + ", ".join(f"{v.name} (wants {v.ip6})" for v in missing))


def _flow_gauges(ctl: ControllerProcess) -> dict[str, float]:
    """``tenantflow_flows{hypervisor=...}``: what the controller believes each bridge holds."""
    with urllib.request.urlopen(ctl.api_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.findall(r'^tenantflow_flows\{hypervisor="([^"]+)"\} ([0-9.e+]+)$', text, re.M)
    return {hv: float(v) for hv, v in found}


def flow_count(lab: Lab, hv_name: str) -> int:
    """Flows on a hypervisor's br-int, read from the switch itself."""
    out = lab.hypervisor(hv_name).ofctl("dump-aggregate", "br-int")
    return int(out.split("flow_count=")[1].split()[0])


def wait_pushed(ctl: ControllerProcess, lab: Lab, vms: list[DemoVM], timeout: float = 20.0) -> None:
    """Poll the API until every port is ACTIVE, then until each bridge holds what the controller pushed.

    ACTIVE only says the tap was seen; the push is done when the flow count on the
    switch equals the controller's own ``tenantflow_flows`` gauge and stays so.
    """
    deadline = time.monotonic() + timeout
    pending = {v.vm.port_id for v in vms}
    while pending:
        pending = {pid for pid in pending if ctl.show("port", pid)["status"] != "ACTIVE"}
        if time.monotonic() > deadline:
            raise TimeoutError(f"ports never ACTIVE: {sorted(pending)}\n{ctl.log_tail()}")
        time.sleep(0.05)
    stable, last = 0, None
    while stable < 3:
        gauges = _flow_gauges(ctl)
        counts = {hv.name: flow_count(lab, hv.name) for hv in lab.hypervisors}
        ok = all(gauges.get(name) == count for name, count in counts.items())
        stable = stable + 1 if ok and counts == last else 0
        last = counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"bridges never matched the controller: {counts} vs {gauges}\n{ctl.log_tail()}")
        time.sleep(0.05)


def _in_echos(netns: str, family: int) -> int:
    """Echo requests a namespace received: ``Icmp: InEchos`` (/proc/net/snmp) or ``Icmp6InEchos``
    (/proc/net/snmp6); both are per network namespace."""
    if family == 6:
        stats = dict(ln.split() for ln in sh.run(["cat", "/proc/net/snmp6"], netns=netns).splitlines() if ln.strip())
        return int(stats["Icmp6InEchos"])
    lines = [ln.split() for ln in sh.run(["cat", "/proc/net/snmp"], netns=netns).splitlines()
             if ln.startswith("Icmp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("InEchos")])


def _neigh_mac(vm: LabVM, ip: str) -> str | None:
    match = re.search(r"lladdr (\S+)", sh.run(["ip", "neigh", "show", ip, "dev", "eth0"], netns=vm.netns))
    return match.group(1) if match else None


def _address(vm: DemoVM, family: int) -> str:
    return vm.ip6 if family == 6 else vm.ip


def _ping(src: DemoVM, dst: DemoVM, family: int) -> Cell:
    before = _in_echos(dst.vm.netns, family)
    address = _address(dst, family)
    out = sh.run([*PING.split(), f"-{family}", address], netns=src.vm.netns, check=False)
    seen = _in_echos(dst.vm.netns, family) - before
    match = re.search(r"(\d+) received", out)
    return Cell(int(match.group(1)) if match else 0, seen, _neigh_mac(src.vm, address))


def _rounds(vms: list[DemoVM], family: int = 4) -> list[list[tuple[DemoVM, DemoVM]]]:
    """Every ordered pair, grouped so that no two pings of a round go to the same address (of ``family``).

    Whichever VM actually answers an address (the destination, or the VM of the other
    tenant holding the same address), only one ping of the round can reach it: its
    echo-request counter is then exact while the round runs in parallel.
    """
    pending = [(s, d) for s in vms for d in vms if s is not d]
    rounds = []
    while pending:
        taken: set[str] = set()
        batch = []
        for src, dst in pending:
            address = _address(dst, family)
            if address not in taken and src.name not in taken:
                batch.append((src, dst))
                taken |= {address, src.name}
        pending = [p for p in pending if p not in batch]
        rounds.append(batch)
    return rounds


def ping_matrix(vms: list[DemoVM], family: int = 4) -> dict[tuple[str, str], Cell]:
    """Ping from each VM to each other VM's IPv4 (or IPv6) address, in rounds of pings to distinct addresses."""
    cells: dict[tuple[str, str], Cell] = {}
    with ThreadPoolExecutor(max_workers=len(vms)) as pool:
        for batch in _rounds(vms, family):
            for (src, dst), cell in zip(batch, pool.map(lambda p: _ping(*p, family), batch), strict=True):
                cells[src.name, dst.name] = cell
    return cells


def render(vms: list[DemoVM], cells: dict[tuple[str, str], Cell], family: int = 4) -> list[str]:
    """The matrix (rows: source, columns: destination) and, for IPv4, the cross-tenant evidence."""
    by_mac = {v.mac: v.name for v in vms}
    width = max(4, *(len(v.name) for v in vms)) + 2
    lines = [f"IPv{family} reachability (row pings column's address; ✓ = the column VM itself answered):",
             " " * 10 + "".join(f"{v.name:^{width}}" for v in vms)]
    for src in vms:
        row = "".join(f"{'—' if src is dst else '✓' if cells[src.name, dst.name].reached else '✗':^{width}}"
                      for dst in vms)
        lines.append(f"{src.name:<4}{src.tenant[-1].upper():<6}{row}")
    if family == 6:  # each VM's SLAAC address is its own: another tenant's VM has none of them
        return lines
    lines.append("cross-tenant pings (same address, other tenant):")
    for src in vms:
        for dst in vms:
            if src.tenant == dst.tenant:
                continue
            cell = cells[src.name, dst.name]
            owner = by_mac.get(cell.neigh_mac or "", "nobody")
            if dst.ip == src.ip:
                lines.append(f"  {src.name} -> {dst.ip} ({dst.name}'s address, also {src.name}'s own): "
                             f"{dst.name} saw {cell.echoes_seen} echo requests")
                continue
            lines.append(f"  {src.name} -> {dst.ip} ({dst.name}'s address): {cell.replies} replies, "
                         f"ARP says {cell.neigh_mac or '-'} = {owner}; {dst.name} saw {cell.echoes_seen} echo requests")
    return lines


def verdict(vms: list[DemoVM], cells: dict[tuple[str, str], Cell], family: int = 4) -> tuple[bool, list[str]]:
    """Pass iff every same-tenant pair reaches and no cross-tenant pair does."""
    same = [(s, d) for s in vms for d in vms if s is not d and s.tenant == d.tenant]
    cross = [(s, d) for s in vms for d in vms if s.tenant != d.tenant]
    same_ok = [p for p in same if cells[p[0].name, p[1].name].reached]
    leaks = [p for p in cross if cells[p[0].name, p[1].name].reached]
    lines = [f"IPv{family}: same-tenant pairs reaching: {len(same_ok)}/{len(same)}",
             f"IPv{family}: cross-tenant pairs reaching: {len(leaks)}/{len(cross)}"
             + (": " + ", ".join(f"{s.name}->{d.name}" for s, d in leaks) if leaks else "")]
    ok = len(same_ok) == len(same) and not leaks
    lines.append(f"IPv{family}: tenants isolated: {'yes' if not leaks else 'NO'}; "
                 f"same-tenant reachability: {'complete' if len(same_ok) == len(same) else 'INCOMPLETE'}")
    return ok, lines


def _keep_hint(ctl: ControllerProcess, lab: Lab, vms: list[DemoVM]) -> str:
    hv = lab.hypervisors[0]
    vm = next(v for v in vms if v.hv == hv.name)
    return "\n".join([
        "--keep: everything stays up until Ctrl-C. To look around:",
        f"  OVS_RUNDIR={hv.rundir} ovs-ofctl -O OpenFlow13 dump-flows br-int",
        f"  ovs-ofctl -O OpenFlow13 dump-flows unix:{hv.rundir}/br-int.mgmt",
        f"  ip netns exec {vm.vm.netns} ping -c1 {vms[1].ip}",
        f"  curl -s {ctl.api_url}/v2.0/ports | python3 -m json.tool",
        f"  curl -s {ctl.api_url}/metrics | grep ^tenantflow_",
        f"  {sys.executable} -m apps.cli trace --db {ctl.db} --hv {hv.name} --in-port {vm.vm.tap} "
        f"eth_type=0x0800 eth_src={vm.mac} eth_dst=ff:ff:ff:ff:ff:ff --follow",
        f"  controller log: {ctl.log_path}",
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


def run(args: argparse.Namespace) -> int:
    """The demo proper; the caller's context tears down whatever was built."""
    t0 = time.monotonic()
    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="tenantflow-demo-")
    ctl = ControllerProcess(os.path.join(workdir, "controller"))
    lab = Lab(prefix=args.prefix, n_hypervisors=args.hypervisors, controller_unix_socket=ctl.unix_socket,
              api_url=ctl.api_url, workdir=os.path.join(workdir, "lab"), manager_unix_socket=ctl.ovsdb_socket)
    ok = False
    try:
        with _signals_as_interrupt():
            ctl.start()
            _log(f"controller up (pid {ctl.proc.pid}): API {ctl.api_url}, OpenFlow unix:{ctl.unix_socket}, "
                 f"state {ctl.db}", t0)
            lab.start()
            lab.register_hypervisors()
            for hv in lab.hypervisors:
                ctl.wait_hypervisor_connected(hv.name)
            _log(f"{len(lab.hypervisors)} hypervisors built, attached and registered: "
                 + ", ".join(f"{hv.name} ({hv.tunnel_ip})" for hv in lab.hypervisors), t0)
            vms = create_tenants(ctl, lab)
            _log(f"tenants {', '.join(TENANTS)}: a network with subnets {CIDR} and {CIDR6} (SLAAC) and a router "
                 f"each, {len(vms)} VMs plugged", t0)
            for v in vms:
                print(f"         {v.name}  {v.tenant}  {v.hv:<4} {v.ip:<11} {v.mac}  port {v.vm.port_id}")
            wait_pushed(ctl, lab, vms)
            _log("every port ACTIVE, every bridge holds what the controller compiled", t0)
            take_addresses(lab, vms)
            _log(f"every VM took its port's addresses: IPv4 by DHCP ({len(vms)} leases), IPv6 by SLAAC", t0)
            for v in vms:
                print(f"         {v.name}  {v.ip:<11} {v.ip6}")
            cells = ping_matrix(vms)
            _log("IPv4 pings done", t0)
            cells6 = ping_matrix(vms, 6)
            _log("IPv6 pings done", t0)
            print("\n".join(render(vms, cells) + render(vms, cells6, 6)))
            ok4, lines = verdict(vms, cells)
            ok6, lines6 = verdict(vms, cells6, 6)
            ok = ok4 and ok6
            print("flows per hypervisor: " + ", ".join(f"{hv.name}={flow_count(lab, hv.name)}"
                                                      for hv in lab.hypervisors))
            print("\n".join(lines + lines6))
            print(f"demo {'PASSED' if ok else 'FAILED'} in {time.monotonic() - t0:.1f}s", flush=True)
            if args.keep:
                print(_keep_hint(ctl, lab, vms), flush=True)
                while True:
                    time.sleep(3600)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        ok = False if not args.keep else ok
    except Exception as exc:
        print(f"demo error: {exc}\ncontroller log tail:\n{ctl.log_tail()}", file=sys.stderr)
        ok = False
    finally:
        # No second Ctrl-C may cut the teardown short and leave namespaces behind.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            lab.stop()
            ctl.stop()
            if own_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            print(f"torn down (lab {args.prefix}, controller)", flush=True)
        finally:
            signal.signal(signal.SIGINT, old)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """``tenantflow demo [--hypervisors N] [--keep] [--workdir DIR] [--prefix P]``."""
    p = argparse.ArgumentParser(prog="tenantflow demo", description=__doc__.split("\n")[0])
    p.add_argument("--hypervisors", type=int, default=3, help="how many hypervisors (default 3)")
    p.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    p.add_argument("--workdir", help="state, sockets and logs here (default: a fresh temporary dir)")
    p.add_argument("--prefix", default=PREFIX, help=f"lab name prefix (default {PREFIX})")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.hypervisors < 1:
        p.error("--hypervisors must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
