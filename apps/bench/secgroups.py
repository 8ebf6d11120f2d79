"""Security groups (issue #6): TCP through a 50-rule group, compile time at 10,000 ports, remote-group scaling.

``throughput``: real controller process, a 2-hypervisor lab (prefix ``tfbs``), one
network; client VM ``a`` on hv1 (port security off: the comparison isolates the
receiver's filtering), server VM ``b`` on hv2 in group ``fifty``: 51 ingress rules
(ICMP, TCP 5201 for iperf3 and 49 TCP rules iperf3 never matches: 30 single ports,
10 ranges, 9 single ports from a remote prefix) plus the group's two default egress
rules. Rounds alternate between the port as it is and the same port with port
security off (``PUT port_security_enabled=false, security_groups=[]``, then back on
with the group), each run only once hv2's pre-ACL table shows the change; iperf3 TCP
a -> b (:func:`apps.bench.routing._iperf_bps`, vswitchd and iperf3 end pinned per
hypervisor). Ratio of medians (goal >= 0.9). Both states are checked to filter /
not filter: a TCP connect to an unlisted port is refused by the group (times out)
and gets through with port security off.

``compile``: pure compiler, no switch. 10,000 ports on 250 hypervisors (40 each,
placed at random; quick: 2,000 on 50), 100 projects of 100 ports, one network (own /16) per project.
Every port is in its project's 5 groups: ``default`` (ingress from members of
itself, IPv4 and IPv6), ``ssh`` (TCP 22 from anywhere), ``web`` (TCP 80 and 443),
``icmp`` (ICMP v4 and v6), ``app`` (TCP 8000-8999 from members of ``web``, UDP 53
from 10/8), each also with Neutron's two egress rules. Every hypervisor is compiled.

``remote_group``: one network, one group G with an ingress rule "IPv4 from members
of G" (and the two egress rules), N = 10, 100, 1000 member ports. Two layouts:
*spread*: members evenly over 10 hypervisors (N/10 local ports each: a cross
product of local ports and members would be N^2/10 flows per hypervisor), figures
are the median over the 10; *fixed local*: hv0 always hosts 5 members, the other
N-5 are on hv1..hv9, figures are hv0's. For each, total flows and flows of the four
ACL tables (``ls_in_pre_acl``, ``ls_in_acl``, ``ls_out_pre_acl``, ``ls_out_acl``),
and the exponent of a least-squares fit of log(flows) on log(N): 1 is linear, 2
quadratic; below 1 when a part of the count does not depend on N.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import sys
import time
from typing import Any

from apps.bench.routing import _by_stage, _iperf_bps, _wait, controller_and_lab, pin_vswitchds
from apps.bench.stats import gbps_summary, interleaved
from flows.compiler import compile_hypervisor
from flows.pipeline import stage
from topology import graph_l3
from topology.graph import TopologyGraph
from topology.model import FixedIP, Network, Port, Subnet
from topology.model_l3 import SecurityGroup, SecurityGroupRule
from topology.synthetic import hypervisor, mac, uid, wire_ofports

ACL_STAGES = ("ls_in_pre_acl", "ls_in_acl", "ls_out_pre_acl", "ls_out_acl")


# -- synthetic graphs -------------------------------------------------------------------------
class _Groups:
    """A graph builder for groups, rules and secured ports, with deterministic ids."""

    def __init__(self, n_hvs: int) -> None:
        self.g = TopologyGraph()
        for i in range(n_hvs):
            self.g.put_hypervisor(hypervisor(i))
        self.n = {"net": 0, "port": 0, "sg": 0, "rule": 0}

    def _next(self, kind: str) -> int:
        self.n[kind] += 1
        return self.n[kind]

    def network(self, project: str, cidr: str) -> tuple[Network, Subnet]:
        j = self._next("net")
        net = Network(id=uid(1, j), project_id=project, key=j, network_type="vxlan", segmentation_id=5000 + j)
        self.g.put_network(net)
        sub = Subnet(id=uid(2, j), network_id=net.id, project_id=project, cidr=cidr, ip_version=4, gateway_ip=None)
        self.g.put_subnet(sub)
        return net, sub

    def group(self, project: str, name: str, *rules: dict[str, Any], default: bool = False) -> str:
        """A group with ``rules`` (remote_group_id="self" means this group) plus Neutron's two egress rules."""
        sg = SecurityGroup(id=uid(5, self._next("sg")), project_id=project, name=name, is_default=default)
        graph_l3.put_sg(self.g, sg)
        egress = ({"direction": "egress", "ethertype": "IPv4"}, {"direction": "egress", "ethertype": "IPv6"})
        for r in (*rules, *egress):
            r = {"direction": "ingress", **r}
            if r.get("remote_group_id") == "self":
                r["remote_group_id"] = sg.id
            graph_l3.put_sg_rule(self.g, SecurityGroupRule(id=uid(6, self._next("rule")), project_id=project,
                                                           security_group_id=sg.id, **r))
        return sg.id

    def port(self, net: Network, sub: Subnet, ip: str, host: str, groups: list[str]) -> None:
        n = self._next("port")
        self.g.put_port(Port(id=uid(3, n), network_id=net.id, project_id=net.project_id, key=n, mac_address=mac(n),
                             fixed_ips=(FixedIP(sub.id, ip),), binding_host=host, device_owner="compute:nova",
                             attrs={"port_security_enabled": True, "security_groups": list(groups)}))


def five_group_cloud(n_hvs: int = 250, n_projects: int = 100, ports_per_project: int = 100,
                     seed: int = 1) -> TopologyGraph:
    """The ``compile`` cloud (module docstring): every port in its project's 5 groups, placed at random."""
    b = _Groups(n_hvs)
    n_ports = n_projects * ports_per_project
    slots = [f"hv{i % n_hvs}" for i in range(n_ports)]
    random.Random(seed).shuffle(slots)
    hosts = iter(slots)
    for p in range(n_projects):
        project = f"project-{p}"
        net, sub = b.network(project, f"10.{p}.0.0/16")
        anywhere = {"remote_ip_prefix": "0.0.0.0/0"}
        web = b.group(project, "web", {"protocol": "tcp", "port_range_min": 80, "port_range_max": 80, **anywhere},
                      {"protocol": "tcp", "port_range_min": 443, "port_range_max": 443, **anywhere})
        groups = [
            b.group(project, "default", {"ethertype": "IPv4", "remote_group_id": "self"},
                    {"ethertype": "IPv6", "remote_group_id": "self"}, default=True),
            b.group(project, "ssh", {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22, **anywhere}),
            web,
            b.group(project, "icmp", {"protocol": "icmp", **anywhere},
                    {"protocol": "icmp", "ethertype": "IPv6", "remote_ip_prefix": "::/0"}),
            b.group(project, "app", {"protocol": "tcp", "port_range_min": 8000, "port_range_max": 8999,
                                     "remote_group_id": web},
                    {"protocol": "udp", "port_range_min": 53, "port_range_max": 53, "remote_ip_prefix": "10.0.0.0/8"}),
        ]
        for k in range(ports_per_project):
            b.port(net, sub, f"10.{p}.{k // 250}.{k % 250 + 2}", next(hosts), groups)
    wire_ofports(b.g)
    return b.g


def remote_group_cloud(n_members: int, layout: str, n_hvs: int = 10, fixed_local: int = 5) -> TopologyGraph:
    """One group of ``n_members`` ports with "ingress IPv4 from members of this group" (module docstring)."""
    b = _Groups(n_hvs)
    net, sub = b.network("p", "10.0.0.0/16")
    sg = b.group("p", "g", {"ethertype": "IPv4", "remote_group_id": "self"})
    for k in range(n_members):
        if layout == "spread":
            host = f"hv{k % n_hvs}"
        else:
            host = "hv0" if k < fixed_local else f"hv{1 + (k - fixed_local) % (n_hvs - 1)}"
        b.port(net, sub, f"10.0.{k // 250}.{k % 250 + 2}", host, [sg])
    wire_ofports(b.g)
    return b.g


def loglog_exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of the least-squares line through (log x, log y)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def _acl_count(flows) -> int:
    by_stage = _by_stage(flows)
    return sum(by_stage.get(s, 0) for s in ACL_STAGES)


def compile_figures(quick: bool = False) -> dict[str, Any]:
    """Compile every hypervisor of the 10,000-port, 5-groups-per-port cloud (quick: 2,000 ports)."""
    n_hvs, n_projects = (50, 20) if quick else (250, 100)
    t0 = time.perf_counter()
    graph = five_group_cloud(n_hvs, n_projects)
    build_s = time.perf_counter() - t0
    gc.freeze()  # as the controller does with its long-lived graph
    try:
        counts, acl, per_hv = [], [], []
        t0 = time.perf_counter()
        for hv in graph.hypervisors():
            t1 = time.perf_counter()
            flows = compile_hypervisor(graph, hv.name)
            per_hv.append(time.perf_counter() - t1)
            counts.append(len(flows))
            acl.append(_acl_count(flows))
        total_s = time.perf_counter() - t0
    finally:
        gc.unfreeze()
    return {
        "compile_hypervisors": n_hvs, "compile_ports": n_projects * 100, "compile_groups_per_port": 5,
        "compile_groups": n_projects * 5, "compile_rules": len(list(graph.records("sg_rule"))),
        "compile_graph_build_s": round(build_s, 3),
        "compile_10k_ports_5_groups_s": round(total_s, 3),
        "compile_per_hv_ms_median": round(statistics.median(per_hv) * 1e3, 2),
        "compile_per_hv_ms_max": round(max(per_hv) * 1e3, 2),
        "compile_flows_per_hv_median": statistics.median(counts),
        "compile_acl_flows_per_hv_median": statistics.median(acl),
        "compile_flows_total": sum(counts),
    }


def remote_group_figures(quick: bool = False) -> dict[str, Any]:
    """Flows per hypervisor as a remote group grows, in both layouts (module docstring)."""
    sizes = [10, 100, 1000]
    out: dict[str, Any] = {"remote_group_N": sizes, "remote_group_hypervisors": 10}
    spread_total, spread_acl, fixed_total, fixed_acl = [], [], [], []
    for n in sizes:
        g = remote_group_cloud(n, "spread")
        per_hv = [compile_hypervisor(g, hv.name) for hv in g.hypervisors()]
        spread_total.append(statistics.median(len(f) for f in per_hv))
        spread_acl.append(statistics.median(_acl_count(f) for f in per_hv))
        flows = compile_hypervisor(remote_group_cloud(n, "fixed"), "hv0")
        fixed_total.append(len(flows))
        fixed_acl.append(_acl_count(flows))
    for name, ys in (("spread_flows_per_hv", spread_total), ("spread_acl_flows_per_hv", spread_acl),
                     ("fixed_local_hv0_flows", fixed_total), ("fixed_local_hv0_acl_flows", fixed_acl)):
        out[f"remote_group_{name}"] = ys
        out[f"remote_group_{name}_exponent"] = round(loglog_exponent(sizes, ys), 3)
        # flows added per added member between consecutive N (constant: linear; N^2 would grow 10x per step)
        out[f"remote_group_{name}_per_added_member"] = [
            round((y1 - y0) / (x1 - x0), 3) for x0, x1, y0, y1 in zip(sizes, sizes[1:], ys, ys[1:], strict=False)]
    out["remote_group_spread_local_ports_per_hv"] = [n // 10 for n in sizes]
    out["remote_group_fixed_local_ports_on_hv0"] = 5
    return out


# -- TCP through a 50-rule group on real OVS ---------------------------------------------------------

PREFIX = "tfbs"
IPERF_PORT = 5201
CLOSED_PORT = 7999  # in no rule of the group
TIMEOUT_S = 15.0
CONNECT = ("import socket,sys\ns=socket.socket();s.settimeout(float(sys.argv[3]))\n"
           "try:\n s.connect((sys.argv[1],int(sys.argv[2])));print('open')\nexcept OSError:\n print('closed')")
LISTEN = "import socket,sys,time\ns=socket.socket();s.bind(('',int(sys.argv[1])));s.listen();time.sleep(1e6)"


def security_group(ctl, project: str, name: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    """POST a group (it gets Neutron's two egress rules) with these IPv4 ingress rules (from anywhere unless
    they say ``remote_ip_prefix``); returns the group as the API shows it, with all its rules."""
    sg = ctl.request("POST", "/v2.0/security-groups", {"security_group": {"name": name, "project_id": project}})
    for r in ingress:
        rule = {"security_group_id": sg["security_group"]["id"], "direction": "ingress", "ethertype": "IPv4",
                "project_id": project, "remote_ip_prefix": "0.0.0.0/0", **r}
        ctl.request("POST", "/v2.0/security-group-rules", {"security_group_rule": rule})
    return ctl.request("GET", f"/v2.0/security-groups/{sg['security_group']['id']}")["security_group"]


def _fifty_rules(ctl, project: str) -> dict[str, Any]:
    """Group ``fifty``: ICMP, TCP IPERF_PORT, and 49 TCP rules no iperf3 packet matches (module docstring)."""
    rules: list[dict[str, Any]] = [{"protocol": "icmp"},
                                   {"protocol": "tcp", "port_range_min": IPERF_PORT, "port_range_max": IPERF_PORT}]
    rules += [{"protocol": "tcp", "port_range_min": 6000 + i, "port_range_max": 6000 + i} for i in range(30)]
    rules += [{"protocol": "tcp", "port_range_min": 10000 + 1000 * i, "port_range_max": 10499 + 1000 * i}
              for i in range(10)]
    rules += [{"protocol": "tcp", "port_range_min": 3306, "port_range_max": 3306,
               "remote_ip_prefix": f"192.0.2.{16 * i}/28"} for i in range(9)]
    return security_group(ctl, project, "fifty", rules)


def _tracked(hv) -> int:
    """Flows of hv's ls_out_pre_acl table that send to conntrack (0: no local port is filtered)."""
    dump = hv.ofctl("dump-flows", "br-int", f"table={stage('ls_out_pre_acl').table_id}", "--no-stats")
    return sum(1 for line in dump.splitlines() if "ct(" in line)


def _connects(vm, ip: str, port: int, timeout: float = 1.0) -> bool:
    return vm.popen([sys.executable, "-c", CONNECT, ip, str(port), str(timeout)],
                    stdout=-1, text=True).communicate(timeout=timeout + 10)[0].strip() == "open"


def throughput_figures(quick: bool = False) -> dict[str, Any]:
    """50-rule group vs port security off on the same receiver port, rounds alternating (module docstring)."""
    seconds, rounds = (2, 3) if quick else (5, 5)
    with controller_and_lab(PREFIX, 2, "secgroups") as (ctl, lab):
        try:
            return _throughput(ctl, lab, seconds, rounds)
        except Exception as exc:
            raise RuntimeError(f"secgroups throughput bench failed: {exc}\ncontroller log:\n{ctl.log_tail()}") \
                from exc


def _throughput(ctl, lab, seconds: int, rounds: int) -> dict[str, Any]:
    """TCP through the 50-rule group vs port security off on the same receiver, rounds alternating."""
    project = "bench-sg"
    net = ctl.create("network", name="bench-sg", project_id=project)
    ctl.create("subnet", network_id=net["id"], cidr="10.3.0.0/24", ip_version=4, project_id=project)
    sg = _fifty_rules(ctl, project)
    mtu = int(net.get("mtu") or 1450)
    pa = ctl.create("port", network_id=net["id"], project_id=project, device_owner="compute:nova",
                    port_security_enabled=False, security_groups=[], **{"binding:host_id": "hv1"})
    pb = ctl.create("port", network_id=net["id"], project_id=project, device_owner="compute:nova",
                    security_groups=[sg["id"]], **{"binding:host_id": "hv2"})
    a, b = lab.plug_vm("a", pa, mtu=mtu), lab.plug_vm("b", pb, mtu=mtu)
    ip_b = str(pb["fixed_ips"][0]["ip_address"])
    hv2 = lab.hypervisor("hv2")
    _wait(lambda: " 0% packet loss" in a.cmd(f"ping -c1 -W1 {ip_b}"), TIMEOUT_S, "a -> b ping", ctl)
    listener = b.popen([sys.executable, "-c", LISTEN, str(CLOSED_PORT)], stdout=-1, stderr=-1)

    def secure(on: bool) -> None:
        body = {"port_security_enabled": True, "security_groups": [sg["id"]]} if on else \
            {"port_security_enabled": False, "security_groups": []}
        ctl.request("PUT", f"/v2.0/ports/{pb['id']}", {"port": body})
        _wait(lambda: (_tracked(hv2) > 0) == on, TIMEOUT_S, f"port security {on} on hv2", ctl)

    closed_with_group = not _connects(a, ip_b, CLOSED_PORT)
    secure(False)
    open_without = _connects(a, ip_b, CLOSED_PORT)
    secure(True)
    if not (closed_with_group and open_without):
        raise RuntimeError(f"filtering check failed: closed with the group {closed_with_group}, "
                           f"open without {open_without}")
    pinning = pin_vswitchds(*lab.hypervisors)

    def run_one(kind: str) -> tuple[float, int]:
        secure(kind == "group")
        return _iperf_bps(a, b, ip_b, seconds, pin=pinning)

    runs, retrans = interleaved(("group", "port_security_off"), rounds, run_one)
    with_sg, without = runs["group"], runs["port_security_off"]
    secure(True)
    acl_flows = sum(hv2.ofctl("dump-flows", "br-int", f"table={stage(name).table_id}").count("cookie=")
                    for name in ACL_STAGES)
    listener.kill()
    ratio = statistics.median(with_sg) / statistics.median(without)
    return {
        "throughput_rules_in_group": len(sg["security_group_rules"]),
        "throughput_ingress_rules": sum(r["direction"] == "ingress" for r in sg["security_group_rules"]),
        "throughput_acl_flows_on_hv2": acl_flows,
        "throughput_seconds_per_run": seconds, "throughput_rounds": rounds,
        "throughput_pinned_cpus": list(pinning) if pinning else None,
        **gbps_summary("throughput", runs),
        "throughput_retransmits": retrans,
        "throughput_ratio_50_rules": round(ratio, 3),
        "throughput_goal_0_9_met": ratio >= 0.9,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """All three parts: compile time at 10k ports, remote-group scaling, TCP through a 50-rule group."""
    out = compile_figures(quick)
    out.update(remote_group_figures(quick))
    out.update(throughput_figures(quick))
    return out
