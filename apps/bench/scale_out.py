"""Scale-out: the scale lab's bridges on one controller instance, then on two, over etcd; then a failover.

N = 1,000 hypervisors (``TENANTFLOW_SCALE_OUT_HVS``; ``--quick``: 30), 20 ports each on 500
overlay networks (``--quick``: 3 on 10), as :mod:`apps.bench.scale`'s overlay topology, in a
one-member etcd (the instances' shared store: one member keeps the two cores for the
instances and the switches; the 3-member case is what ``tests/test_e2e_cluster.py`` runs).
Every bridge connects to both instances' OpenFlow ports from the start; the second instance
is started after the first phase.

1. ``one``: instance c0 alone masters every bridge. ``CREATES`` ports (200; quick 30) from
   4 clients at once, each on a random hypervisor and network, no tap plugged: wall time from
   the first request until every create is acknowledged, every instance's graph holds the
   last one, and no bridge is pending (``GET /sync``: each bridge confirmed its bundle);
   ``creates_per_s`` = creates / that time.
2. ``two``: c1 started; it takes its share (rendezvous hashing: about half; ``rebalance_s``);
   the same creates, the clients spread over both instances.
   ``ratio`` = two's creates_per_s / one's (goal on 2 cores: 1.6). ``cores_used``: CPU seconds per
   second of each part over the phase (each instance, the lab's vswitchds, etcd, this bench, and
   the whole ``machine``, whose 2 cores are the ceiling); ``cores_idle``: the same over 5 s of
   nothing just before.
3. ``failover``: the instance mastering more bridges is SIGKILLed: seconds from the kill
   until the last orphaned bridge granted the survivor's ``ROLE_REQUEST`` (the survivor's
   own record of each grant, ``GET /sync``'s ``master_since``; ``view_changed_s``: when the survivor
   saw the victim leave the cluster's view), until ``/sync`` showed them
   all (it answers after the survivor has built its new share), and until none is pending
   (each read and reconciled); flow-mods the survivor sent meanwhile (0: nothing changed).

``leases``: each instance's lease figures before the failover (and ``leases_after_failover``):
rejoins (its lease expired and it joined again: each a move of its bridges away and back), the
longest wait of a thread of its for the GIL (``interpreter_stall_max_ms``), keepalives held back.

``TENANTFLOW_SCALE_OUT_LOG_LEVEL`` (default ``warning``) is the instances' ``--log-level``, and
``TENANTFLOW_SCALE_OUT_LOGS=DIR`` keeps their logs there (``c0.log``, ``c1.log``): a failover
that took tens of seconds in some runs is explained by them, or not at all.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from typing import Any

from apps.bench.scale import cpu_s, switches_cpu_s
from apps.lab.controller import ControllerProcess, free_port
from apps.lab.etcd import EtcdCluster
from apps.lab.scale import ApiClient, ScaleLab, parallel

CLIENTS = 4
IDLE_S = 5.0  # seconds of nothing before each phase's creates: the parts' idle CPU
LOG_LEVEL = os.environ.get("TENANTFLOW_SCALE_OUT_LOG_LEVEL", "warning")


class Instances:
    """The controller instances of the run, polled through their ``/sync``."""

    def __init__(self, workdir: str, url: str, etcd_pids: list[int | None] | None = None) -> None:
        self.workdir, self.url = workdir, url
        self.etcd_pids = [pid for pid in etcd_pids or [] if pid]
        self.ctls: dict[str, ControllerProcess] = {}

    def start(self, name: str) -> ControllerProcess:
        ctl = ControllerProcess(os.path.join(self.workdir, name), extra_args=[
            "--store", self.url, "--instance", name, "--log-level", LOG_LEVEL])
        self.ctls[name] = ctl.start(60)
        return ctl

    def sync(self) -> dict[str, dict[str, Any]]:
        return {n: c.request("GET", "/sync", timeout=30) for n, c in self.ctls.items()}

    def settled(self, n: int, revision: int = 0) -> bool:
        """Every bridge mastered by a live instance, none pending, every graph at ``revision`` or later (not yet if an
        instance too busy building its share did not answer in time: asked again)."""
        try:
            states = self.sync()
        except OSError:  # (a timeout, a refused connection, urllib's URLError)
            return False
        mastered = {hv for s in states.values() for hv in s["mastered"]}
        return len(mastered) == n and all(not s["pending"] and s.get("revision", 0) >= revision
                                          for s in states.values())

    def wait(self, predicate, timeout: float, interval: float = 0.02) -> float | None:
        t0 = time.perf_counter()
        while not predicate():
            if time.perf_counter() - t0 > timeout:
                return None
            time.sleep(interval)
        return time.perf_counter() - t0

    def stop(self) -> None:
        for ctl in self.ctls.values():
            ctl.stop()


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy so far (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _cpu_budget(lab: ScaleLab, inst: Instances) -> dict[str, float]:
    """CPU seconds so far of each part of the run: the instances, the lab's vswitchds, etcd, this bench, the machine."""
    spent = {name: cpu_s(ctl.proc.pid) for name, ctl in inst.ctls.items() if ctl.proc is not None}
    spent["vswitchds"] = switches_cpu_s(lab)
    spent["etcd"] = sum(cpu_s(pid) for pid in inst.etcd_pids)
    spent["bench"] = sum(os.times()[:2])
    spent["machine"] = _machine_busy_s()
    return spent


def _cpu_share(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Cores each part used on average over ``wall`` seconds (the machine's: how much of the 2 cores was left)."""
    return {name: round((after[name] - before.get(name, 0.0)) / wall, 2) for name in after}


def _creates(lab: ScaleLab, inst: Instances, count: int, tag: str, timeout: float) -> dict[str, Any]:
    """``count`` port creates from CLIENTS threads over the live instances; until converged everywhere."""
    rng = random.Random(tag)
    jobs = [(rng.choice(lab.hypervisors), rng.choice(lab.networks), i) for i in range(count)]
    clients = {n: ApiClient(c.api_url, timeout=120) for n, c in inst.ctls.items()}
    names = sorted(clients)
    lock, latencies = threading.Lock(), []

    def create(job) -> None:
        hv, net, i = job
        api = clients[names[i % len(names)]]
        t0 = time.perf_counter()
        api.create("port", network_id=net["id"], project_id=net["project_id"], name=f"{tag}{i}",
                   device_owner="compute:nova", port_security_enabled=False, **{"binding:host_id": hv.name})
        with lock:
            latencies.append(time.perf_counter() - t0)

    idle0 = _cpu_budget(lab, inst)
    time.sleep(IDLE_S)  # what each part spends with nothing changing (echo requests, timers, two controllers' each)
    idle = _cpu_share(idle0, _cpu_budget(lab, inst), IDLE_S)
    cpu0, t0 = _cpu_budget(lab, inst), time.perf_counter()
    parallel(create, jobs, CLIENTS)
    acked = time.perf_counter() - t0
    revision = max(s.get("revision", 0) for s in inst.sync().values())
    waited = inst.wait(lambda: inst.settled(len(lab.hypervisors), revision), timeout)
    total = time.perf_counter() - t0
    cores = _cpu_share(cpu0, _cpu_budget(lab, inst), total)
    latencies.sort()
    return {"creates": count, "instances": len(names), "acked_s": round(acked, 2),
            "converged_s": round(total, 2) if waited is not None else None, "timed_out": waited is None,
            "creates_per_s": round(count / total, 2) if waited is not None else None,
            "api_ms_p50": round(latencies[len(latencies) // 2] * 1000, 1),
            "api_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
            "cores_used": cores, "cores_idle": idle}


def run(quick: bool = False) -> dict[str, Any]:
    """The three phases (see the module's doc); figures as a dict."""
    n = 30 if quick else int(os.environ.get("TENANTFLOW_SCALE_OUT_HVS", "1000"))
    creates = 30 if quick else int(os.environ.get("TENANTFLOW_SCALE_OUT_CREATES", "200"))
    timeout = 120.0 if quick else 900.0
    workdir = tempfile.mkdtemp(prefix="tenantflow-bench-scale-out-")
    out: dict[str, Any] = {"hypervisors": n, "date": time.strftime("%Y-%m-%d")}
    try:
        with EtcdCluster(1) as etcd:
            inst = Instances(workdir, f"{etcd.url}/scale-out", etcd.member_pids)
            try:
                _phases(inst, n, creates, timeout, quick, workdir, out)
            finally:
                inst.stop()
    finally:
        keep = os.environ.get("TENANTFLOW_SCALE_OUT_LOGS")  # a directory: the instances' logs are copied there
        if keep:
            for name in ("c0", "c1"):
                log = os.path.join(workdir, name, "controller.log")
                if os.path.exists(log):
                    os.makedirs(keep, exist_ok=True)
                    shutil.copy(log, os.path.join(keep, f"{name}.log"))
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def _phases(inst: Instances, n: int, creates: int, timeout: float, quick: bool, workdir: str,
            out: dict[str, Any]) -> None:
    c0 = inst.start("c0")
    of1 = free_port()  # c1's OpenFlow port: every bridge gets it before c1 starts
    lab = ScaleLab(n, None, ports_per_hv=3 if quick else 20, api_url=c0.api_url, workdir=os.path.join(workdir, "lab"))
    with lab:
        t0 = time.perf_counter()
        lab.register()
        lab.populate(networks=10 if quick else 500, ports_per_hv=3 if quick else 20)
        out["populate_s"] = round(time.perf_counter() - t0, 1)
        lab.set_controller(f"tcp:127.0.0.1:{c0.of_port} tcp:127.0.0.1:{of1}")
        took = inst.wait(lambda: inst.settled(n), timeout, 0.2)
        out["first_sync_s"] = round(took, 1) if took is not None else None
        out["one"] = _creates(lab, inst, creates, "one", timeout)
        ctl = ControllerProcess(os.path.join(workdir, "c1"), of_port=of1, extra_args=[
            "--store", inst.url, "--instance", "c1", "--log-level", LOG_LEVEL])
        inst.ctls["c1"] = ctl.start(180)  # it loads 20,000 ports from etcd beside a busy c0
        took = inst.wait(lambda: inst.settled(n) and all(len(s["mastered"]) for s in inst.sync().values()),
                         timeout, 0.1)
        out["rebalance_s"] = round(took, 2) if took is not None else None
        out["mastered"] = {name: len(s["mastered"]) for name, s in inst.sync().items()}
        out["two"] = _creates(lab, inst, creates, "two", timeout)
        one, two = out["one"].get("creates_per_s"), out["two"].get("creates_per_s")
        out["ratio"] = round(two / one, 2) if one and two else None
        out["leases"] = _leases(inst)
        out["failover"] = _failover(inst, n, timeout)
        out["leases_after_failover"] = _leases(inst)


LEASE_FIGURES = ("rejoins", "view_changes", "view_revisions", "standing_lapses", "revoked_peers",
                 "keepalives_held_back", "keepalive_max_ms", "interpreter_stall_max_ms")


def _leases(inst: Instances) -> dict[str, dict[str, Any]]:
    """Each live instance's lease figures (controller.cluster's status): a lease that flapped shows in rejoins."""
    try:
        return {name: {k: s.get("cluster", {}).get(k) for k in LEASE_FIGURES} for name, s in inst.sync().items()}
    except OSError:
        return {}


def _failover(inst: Instances, n: int, timeout: float) -> dict[str, Any]:
    states = inst.sync()
    victim = max(states, key=lambda name: len(states[name]["mastered"]))
    survivor = next(name for name in states if name != victim)
    orphans = set(states[victim]["mastered"])
    before = inst.ctls[survivor].metrics()
    t0, killed_at = time.perf_counter(), time.time()
    inst.ctls[victim].kill()
    del inst.ctls[victim]
    def all_mastered() -> bool:
        try:
            return orphans <= set(inst.sync()[survivor]["mastered"])
        except OSError:  # the survivor too busy taking over to answer within 30 s: not yet (counted in the figure)
            return False

    # Polled every 50 ms: the grants are the survivor's own record (master_since), and a GET /sync walks every
    # bridge, so polling it every 5 ms (as this did until 2026-12-07) kept a thread of the survivor busy
    # throughout the failover it measures.
    mastered = inst.wait(all_mastered, timeout, 0.05)
    converged = inst.wait(lambda: inst.settled(n), timeout, 0.01)
    # When each orphan granted the survivor's ROLE_REQUEST, by the survivor's clock (the same machine's).
    state = inst.sync()[survivor]
    since = state.get("master_since", {})
    granted = [since[hv] - killed_at for hv in orphans if hv in since]
    seen = state.get("cluster", {}).get("view_changed_at", 0) - killed_at  # when the survivor saw the victim go
    return {"victim_mastered": len(orphans), "view_changed_s": round(seen, 3),
            "last_role_granted_s": round(max(granted), 3) if len(granted) == len(orphans) else None,
            "median_role_granted_s": round(sorted(granted)[len(granted) // 2], 3) if granted else None,
            "all_mastered_seen_s": round(mastered, 3) if mastered is not None else None,
            "converged_s": round(time.perf_counter() - t0, 3) if converged is not None else None,
            **_failover_counts(before, inst.ctls[survivor].metrics())}


def _failover_counts(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the survivor did meanwhile: flow-mods sent (0: nothing changed), roles granted (each orphan once as
    master, each other bridge once with the new generation), bridges that disconnected (0)."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)
    return {"flow_mods_sent": delta("tenantflow_flow_mods_sent_total"),
            "roles_granted": delta("tenantflow_role_changes_total"),
            "disconnects": delta("tenantflow_switch_disconnects_total")}
