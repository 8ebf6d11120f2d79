"""The controller at scale: N hypervisors of the scale lab (:mod:`apps.lab.scale`) on the real
``tenantflow controller`` process, two topologies one after the other.

``overlay``
    500 overlay networks (VXLAN and Geneve alternating), 20 ports per hypervisor, no port
    security (:meth:`ScaleLab.populate`).
``provider``
    One VLAN provider network (``physnet1``) spanning every hypervisor, 20 ports per
    hypervisor, every port in one security group that has a ``remote_ip_prefix`` rule (no
    remote group). Each bridge gets a dummy ``phy-physnet1@<index>`` port and each
    hypervisor is registered with ``bridge_mappings={"physnet1": "br-physnet1"}``.

N = 1,000 (``TENANTFLOW_SCALE_HVS`` overrides; ``--quick``: 30 and smaller counts;
``TENANTFLOW_SCALE_TIMEOUT`` the longest wait in s, default 600; ``TENANTFLOW_SCALE_TOPOLOGIES``
e.g. ``provider``; ``TENANTFLOW_SCALE_PHASES`` e.g. ``cold_start,health``: only those phases
after the build; ``TENANTFLOW_SCALE_CONTROLLER_ARGS`` more flags for the controller, e.g.
``--sync-concurrency 2``). The topology goes through the API with the controller running and the
bridges not yet pointed at it; then every bridge gets the controller at once
(``first_connect_converged_s``), and later creates come in batches of ``RSS_BATCH``. The
lab runs 10 bridges per vswitchd (each walks all its bridges per change: 12.3 ms of CPU per
flow-mod with 100 bridges, 1.0 ms with 10). A storm of thousands of disconnects under
sustained creates, first blamed on the lab's starved vswitchds, was the controller's own:
the garbage collector's full passes over a heap of 2.2 M flows stopped every thread for
seconds, echo replies included (``controller.heap`` keeps that heap out of them).
``switches_cpu_ms_per_create`` reports the vswitchds' cost of a create in every run.

"converged" is always the controller's own ``GET /sync`` showing every hypervisor
connected and none pending (each bridge confirmed every change by a bundle commit),
polled every 5 ms (0.2 s for the long waits). Every wait has a timeout; a timeout is
reported as a figure (``..._timed_out: true``), never a hang. Figures per topology:

1. ``cold_start``: controller stopped (SIGTERM), every bridge's flows deleted, controller
   started on the same SQLite file: wall time from the start of the process to converged,
   and its CPU seconds (``/proc/<pid>/stat``). Baseline in the same run: the flows the
   bridges hold after that cold start, dumped (``dump-flows --no-names``, durations and
   counters stripped), deleted and loaded back with ``ovs-ofctl --bundle add-flows``, one
   thread per vswitchd (the controller stopped meanwhile). ``ratio`` = cold / baseline.
2. ``compile``: in-process, from a snapshot of the controller's SQLite file with every
   bridge's live port map: ``FlowEngine(graph)`` construction (the engine's cold build) and
   the reference ``flows.compiler.compile_hypervisor`` over every hypervisor.
3. ``port_create``: ~50 ports, each on a random hypervisor (and random network in
   ``overlay``): POST, converged (``converged_before_plug``: every bridge holds what the port
   changed: the remote hypervisors' flows for it, its own host's for a tap not plugged yet),
   plug its tap, converged again (``converged_after_plug``). API latency and convergence (from the
   POST to the end) p50/p99; controller CPU and the engine's own CPU
   (``tenantflow_engine_seconds_total``) per create; the hypervisors hosting the network.
4. ``sg_rule`` (``provider``): POST a rule to the group every port is in -> converged, 5 times.
5. ``api_during_cold_start``: port creates from one client, one every ``COLD_CREATE_EVERY_S``
   from the moment the restarted controller's API answers until every bridge is synced.
6. ``restart``: controller restarted on an unchanged topology with the flows in place:
   flow-mods sent after the restart (goal 0), time to converged.
7. ``health``: over the whole topology's run (summed over the controller's lifetimes):
   switch disconnects, bundles discarded/failed, sync retries; the bridges dumped and
   compared with the compiled cookies after each phase; each vswitchd log grepped for
   ``inactivity probe`` and ``OFPBFC_TIMEOUT``.
8. ``rss``: the controller's RSS at the end, and its growth per 1,000 ports over an extra
   batch of 10 % more ports.
9. ``profile``, only with ``TENANTFLOW_SCALE_PROFILE=FILE``: phase 3 again, the controller's CPU
   per create by kind of thread (``/proc`` per thread, named by one ``py-spy dump``). With it,
   phase 4's rules also run under ``py-spy record --gil`` (the stacks of whichever thread holds
   the GIL, in py-spy's raw format): ``FILE.sg_rule.txt``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

from apps.bench.stats import ms, percentile
from apps.lab import sh
from apps.lab.controller import ControllerProcess
from apps.lab.scale import ApiClient, ScaleHypervisor, ScaleLab, alias, parallel, rss_kib
from apps.lab.steps import hypervisor_record
from topology.model import canonical_port_map, provider_patch_name

PHYSNET = "physnet1"
RSS_BATCH = 100  # extra ports created (4 clients) between waits for every bridge to converge
COLD_CREATE_EVERY_S = 0.25  # the pace of the API creates measured while every bridge cold-syncs
SYNC_READS = 20  # GET /sync and GET /sync?wait= timed in the health phase (CPU in 10 ms ticks: averaged)
_VOLATILE = re.compile(r"\s*(duration|n_packets|n_bytes|idle_age|hard_age)=[^,\s]*,?")
_CLK = os.sysconf("SC_CLK_TCK")


# -- small helpers -------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 if it is gone)."""
    return _stat_cpu_s(f"/proc/{pid}/stat")


def _stat_cpu_s(path: str) -> float:
    """utime + stime in seconds of a ``/proc/.../stat`` file (0 if it is gone)."""
    try:
        with open(path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def switches_cpu_s(lab: ScaleLab) -> float:
    """CPU seconds of every ovs-vswitchd of the lab so far (the switches' own share of a change)."""
    return sum(cpu_s(vs.pids()["ovs-vswitchd"]) for vs in lab.vswitchds if "ovs-vswitchd" in vs.pids())


def thread_cpu_s(pid: int) -> dict[int, float]:
    """Each thread's CPU seconds (user + system) so far: thread id -> seconds."""
    return {int(tid): _stat_cpu_s(f"/proc/{pid}/task/{tid}/stat") for tid in os.listdir(f"/proc/{pid}/task")}


def idle_cpu_rate(pid: int, seconds: float = 3.0) -> float:
    """The controller's CPU seconds per second with nothing changing (echo replies, timers)."""
    c0, t0 = cpu_s(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_s(pid) - c0) / (time.perf_counter() - t0)


def summary(prefix: str, samples: list[float]) -> dict[str, Any]:
    """``<prefix>_ms_p50/p99/max`` (nearest rank) of samples in seconds."""
    if not samples:
        return {f"{prefix}_ms_p50": None, f"{prefix}_ms_p99": None}
    return {f"{prefix}_ms_p50": ms(statistics.median(samples)), f"{prefix}_ms_p99": ms(percentile(samples, 99)),
            f"{prefix}_ms_max": ms(max(samples))}


def labelled(api: ApiClient, name: str, label: str) -> dict[str, float]:
    """{label value: sample value summed over the other labels} of one metric sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(api.request("GET", "/metrics")):
        for s in family.samples:
            if s.name == name:
                key = s.labels.get(label, "")
                out[key] = out.get(key, 0.0) + s.value
    return out


def reset(api: ApiClient) -> None:
    """Drop this thread's connection of ``api`` (after a failed call it may be half used)."""
    conn = getattr(api._local, "conn", None)
    if conn is not None:
        conn.close()
    api._local.conn = None


class Sync:
    """``GET /sync?wait=`` until every hypervisor is connected and none pending (the controller says when)."""

    LONGEST_WAIT = 30.0  # s one request waits (under the API client's timeout)

    def __init__(self, api: ApiClient, n: int) -> None:
        self.api, self.n = api, n
        self.last: dict[str, Any] = {}

    def done(self, wait: float = 0.0) -> bool:
        """Whether every bridge is connected and up to date, after waiting up to ``wait`` s for the latter."""
        try:
            s = self.last = self.api.request("GET", f"/sync?wait={wait:.3f}" if wait > 0 else "/sync")
        except (OSError, http.client.HTTPException):
            reset(self.api)
            return False
        return s.get("connected") == self.n and not s.get("pending") and not s.get("disconnected")

    def wait(self, timeout: float, interval: float = 0.005) -> float | None:
        """Seconds until converged (from now), None on timeout.

        The controller answers once the connected bridges hold every change so far (no polling
        of its status, which costs it milliseconds a read at 1,000 bridges); ``interval`` only
        paces the rounds while bridges are still connecting.
        """
        t0 = time.perf_counter()
        deadline = t0 + timeout
        while True:
            if self.done(min(max(deadline - time.perf_counter(), 0.0), self.LONGEST_WAIT)):
                return time.perf_counter() - t0
            if time.perf_counter() > deadline:
                return None
            time.sleep(interval)

    def state(self) -> dict[str, Any]:
        s = self.last
        return {"connected": s.get("connected"), "pending": len(s.get("pending") or []),
                "disconnected": len(s.get("disconnected") or []), "pending_sample": (s.get("pending") or [])[:5]}


# -- the run --------------------------------------------------------------------------------
class ScaleRun:
    """One topology on one lab and one controller, phase by phase; ``figures`` collects the results."""

    def __init__(self, kind: str, n: int, quick: bool, workdir: str) -> None:
        self.kind, self.n, self.quick = kind, n, quick
        self.workdir = workdir
        flags = shlex.split(os.environ.get("TENANTFLOW_SCALE_CONTROLLER_ARGS", ""))
        self.ctl = ControllerProcess(os.path.join(workdir, "ctl"), extra_args=["--log-level", "warning", *flags])
        self.api = ApiClient(self.ctl.api_url, timeout=120)
        self.sync = Sync(self.api, n)
        self.lab: ScaleLab | None = None
        self.rng = random.Random(1)
        self.figures: dict[str, Any] = {"hypervisors": n}
        self.totals: Counter[str] = Counter()  # health counters summed over the controller's lifetimes
        self.verifications: dict[str, int] = {}
        self.ports: list[tuple[ScaleHypervisor, dict[str, Any]]] = []
        self.sg: dict[str, Any] | None = None
        self.net: dict[str, Any] | None = None
        self.ports_per_hv = 5 if quick else 20
        # the longest wait (a timeout is a figure); TENANTFLOW_SCALE_TIMEOUT overrides
        self.long = float(os.environ.get("TENANTFLOW_SCALE_TIMEOUT", 120 if quick else 600))

    # -- controller lifetime ---------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.ctl.proc is not None
        return self.ctl.proc.pid

    def harvest(self) -> None:
        """Add this controller lifetime's health counters to the totals (before stopping it)."""
        if self.ctl.proc is None or self.ctl.proc.poll() is not None:
            return
        try:
            m = self.api.metrics()
            for k in ("tenantflow_switch_disconnects_total", "tenantflow_sync_retries_total",
                      "tenantflow_of_errors_total"):
                self.totals[k] += m.get(k, 0.0)
            for outcome, v in labelled(self.api, "tenantflow_bundles_total", "outcome").items():
                self.totals[f"bundles_{outcome}"] += v
            self.totals["bridges_diverged_at_stop"] += m.get("tenantflow_bridges_diverged", 0.0)
        except Exception:  # noqa: BLE001 - counters lost are counters lost, not a failed run
            reset(self.api)

    def stop_controller(self) -> None:
        self.harvest()
        self.ctl.stop()

    # -- building -----------------------------------------------------------------------------
    def build(self) -> None:
        t0 = time.perf_counter()
        self.ctl.start(timeout=60)
        # The bridges connect once the topology is in: 20,000 creates each pushed at once to
        # 1,000 connected bridges starved the controller's echo replies (see the module doc).
        lab = self.lab = ScaleLab(self.n, None, ports_per_hv=self.ports_per_hv,
                                  api_url=self.ctl.api_url, workdir=os.path.join(self.workdir, "lab"))
        lab.start()
        if self.kind == "provider":
            self.add_patch_ports()
            self.api.wait_up()
            mappings = {PHYSNET: "br-" + PHYSNET}
            parallel(lambda hv: self.api.create("hypervisor", **hypervisor_record(hv.name, hv.dpid, hv.tunnel_ip,
                                                                                  mappings)),
                     lab.hypervisors, lab.api_workers)
            self.populate_provider()
        else:
            lab.register()
            lab.populate(networks=15 if self.quick else 500, ports_per_hv=self.ports_per_hv,
                         network_types=("vxlan", "geneve"))
            self.ports = [(hv, p) for hv in lab.hypervisors for p in hv.ports.values()]
        t1 = time.perf_counter()
        lab.set_controller(f"tcp:127.0.0.1:{self.ctl.of_port}")
        took = self.sync.wait(self.long, interval=0.2)
        self.figures["build"] = {"ports": len(self.ports), "seconds": round(time.perf_counter() - t0, 2),
                                 "first_connect_converged_s": round(time.perf_counter() - t1, 2) if took else None,
                                 "timed_out": took is None,
                                 **{k: round(v, 2) for k, v in lab.timings.items()}}
        if took is None:
            self.figures["build"]["sync"] = self.sync.state()
        self.check("build")

    def add_patch_ports(self) -> None:
        """A dummy ``phy-physnet1@<index>`` on every bridge (what the controller counts as ``phy-physnet1``)."""
        assert self.lab is not None
        name = provider_patch_name(PHYSNET)

        def on(vs) -> None:
            args: list[str] = []
            for hv in vs.hypervisors:
                args += ["--", "add-port", hv.bridge, alias(name, hv.index)]
            vs.vsctl(*args[1:])

        parallel(on, self.lab.vswitchds, self.lab.workers)

    def populate_provider(self) -> None:
        assert self.lab is not None
        lab, api = self.lab, self.api
        self.sg = api.request("POST", "/v2.0/security-groups", {"security_group": {
            "name": "scale-sg", "project_id": "scale-p"}})["security_group"]
        self.add_rule(22, "192.0.2.0/24")
        self.net = api.create("network", name="scale-vlan", project_id="scale-p",
                              **{"provider:network_type": "vlan", "provider:physical_network": PHYSNET})
        api.create("subnet", network_id=self.net["id"], project_id="scale-p", ip_version=4, cidr="10.0.0.0/16",
                   name="scale-vlan-subnet")
        self.figures["network"] = {k: self.net.get(k) for k in ("provider:network_type", "provider:physical_network",
                                                                "provider:segmentation_id")}
        t0 = time.perf_counter()
        jobs = [(hv, j) for hv in lab.hypervisors for j in range(self.ports_per_hv)]
        made = parallel(lambda job: (job[0], self.new_port(job[0], f"vm{job[1]}")), jobs, lab.api_workers)
        lab.timings["ports_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        lab.plug_many(made)
        lab.timings["plug_s"] = time.perf_counter() - t1
        self.ports += made

    def add_rule(self, port: int, prefix: str) -> None:
        """An ingress TCP rule from ``prefix`` (no remote group) in the group every port is in."""
        assert self.sg is not None
        self.api.request("POST", "/v2.0/security-group-rules", {"security_group_rule": {
            "security_group_id": self.sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
            "port_range_min": port, "port_range_max": port, "remote_ip_prefix": prefix}})

    def new_port(self, hv: ScaleHypervisor, name: str, net: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST one port bound to ``hv`` (provider: on the VLAN network, in the group)."""
        if self.kind == "provider":
            assert self.net is not None and self.sg is not None
            return self.api.create("port", network_id=self.net["id"], project_id="scale-p", name=f"{hv.name}-{name}",
                                   device_owner="compute:nova", device_id=f"{hv.name}-{name}",
                                   security_groups=[self.sg["id"]], **{"binding:host_id": hv.name})
        assert net is not None
        return self.api.create("port", network_id=net["id"], project_id=net["project_id"], name=f"{hv.name}-{name}",
                               device_owner="compute:nova", device_id=f"{hv.name}-{name}",
                               port_security_enabled=False, **{"binding:host_id": hv.name})

    def random_port(self, name: str) -> tuple[ScaleHypervisor, dict[str, Any] | None]:
        assert self.lab is not None
        hv = self.rng.choice(self.lab.hypervisors)
        net = None if self.kind == "provider" else self.rng.choice(self.lab.networks)
        return hv, net

    # -- verification -------------------------------------------------------------------------
    def snapshot(self) -> str:
        path = os.path.join(self.workdir, "snapshot.sqlite")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        src, dst = sqlite3.connect(self.ctl.db), sqlite3.connect(path)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        return path

    def compiled(self, timings: dict[str, Any] | None = None) -> dict[str, Counter[int]]:
        """Each hypervisor's cookies as compiled by the engine from a snapshot of the db, with the live port maps.

        With ``timings``: also the engine's cold build time and the reference full compile's.
        """
        from flows.compiler import compile_hypervisor
        from flows.engine import FlowEngine
        from topology.state import Topology

        assert self.lab is not None
        maps = self.lab.port_maps()
        topo = Topology(self.snapshot())
        try:
            for name, ofports in maps.items():
                topo.set_live_ofports(name, canonical_port_map(ofports)[0])
            t0 = time.perf_counter()
            engine = FlowEngine(topo.graph)
            build_s = time.perf_counter() - t0
            expected = {name: Counter(engine.desired(name).keys()) for name in maps}
            if timings is not None:
                timings["engine_build_s"] = round(build_s, 3)
                t0 = time.perf_counter()
                per_hv = []
                flows = 0
                for name in maps:
                    t1 = time.perf_counter()
                    compiled = compile_hypervisor(topo.graph, name)
                    per_hv.append(time.perf_counter() - t1)
                    flows += len(compiled)
                    if Counter(f.cookie for f in compiled) != expected[name]:
                        timings.setdefault("engine_differs_from_compiler", []).append(name)
                timings["full_compile_s"] = round(time.perf_counter() - t0, 3)
                timings["compile_per_hv_ms_p50"] = ms(statistics.median(per_hv))
                timings["flows_total"] = flows
                timings["flows_per_hv_median"] = statistics.median(sum(c.values()) for c in expected.values())
            return expected
        finally:
            topo.close()

    def check(self, phase: str) -> int:
        """Dump every bridge, compare with the compiled cookies; the number of bridges that differ (recorded)."""
        assert self.lab is not None
        bad = self.lab.verify(self.compiled())
        self.verifications[phase] = len(bad)
        if bad:
            name, (extra, missing) = sorted(bad.items())[0]
            self.verifications[f"{phase}_example"] = (  # type: ignore[assignment]
                f"{name}: {sum(extra.values())} extra {[hex(c) for c in list(extra)[:4]]}, "
                f"{sum(missing.values())} missing {[hex(c) for c in list(missing)[:4]]}")
            self.verifications[f"{phase}_bridges"] = sorted(bad)[:10]  # type: ignore[assignment]
        return len(bad)

    # -- phases ---------------------------------------------------------------------------------
    def port_creates(self) -> None:
        """Phase 3: POST + plug + converged, one port at a time."""
        assert self.lab is not None
        count = 10 if self.quick else 50
        api_s, conv_s, plug_s, after_plug_s, hosts, timeouts = [], [], [], [], [], 0
        before_plug_s: list[float] = []  # POST -> every bridge holds what the port changed, its tap not there yet
        hosts_of = self.hosts_by_network()
        idle = idle_cpu_rate(self.pid)
        # The scrapes stay outside the measured window: a /metrics answer at 1,000 bridges is not a create's cost.
        eng0 = self.api.metrics().get("tenantflow_engine_seconds_total", 0.0)
        t_start, vs0 = time.perf_counter(), switches_cpu_s(self.lab)
        cpu0 = cpu_s(self.pid)
        for i in range(count):
            hv, net = self.random_port(f"lat{i}")
            t0 = time.perf_counter()
            port = self.new_port(hv, f"lat{i}", net)
            api_s.append(time.perf_counter() - t0)
            if self.sync.wait(30) is not None:  # as Nova does: the port first, its VM's tap later
                before_plug_s.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            self.lab.plug(hv, port)
            plug_s.append(time.perf_counter() - t1)
            self.ports.append((hv, port))
            took = self.sync.wait(30)
            if took is not None:
                after_plug_s.append(took)
            if took is None:
                timeouts += 1
                if timeouts >= 3:
                    break
            else:
                conv_s.append(time.perf_counter() - t0)
            key = port["network_id"]
            hosts_of.setdefault(key, set()).add(hv.name)
            hosts.append(len(hosts_of[key]))
        cpu1, eng1 = cpu_s(self.pid), self.api.metrics().get("tenantflow_engine_seconds_total", 0.0)
        wall, vs1 = time.perf_counter() - t_start, switches_cpu_s(self.lab)
        self.figures["port_create"] = {
            "count": len(api_s), **summary("api", api_s), **summary("converged", conv_s), "timeouts": timeouts,
            **summary("converged_before_plug", before_plug_s),
            **summary("plug", plug_s), **summary("converged_after_plug", after_plug_s),
            "controller_cpu_ms_per_create": ms((cpu1 - cpu0) / len(api_s)),
            # minus what it spends anyway meanwhile (answering every bridge's echo requests)
            "controller_idle_cpu_ms_per_s": ms(idle),
            "controller_cpu_above_idle_ms_per_create": ms((cpu1 - cpu0 - idle * wall) / len(api_s)),
            "switches_cpu_ms_per_create": ms((vs1 - vs0) / len(api_s)),
            "engine_cpu_ms_per_create": ms((eng1 - eng0) / len(api_s)),
            "affected_hypervisors_median": statistics.median(hosts),
            "model_ms_median": round(20 + 0.1 * statistics.median(hosts), 1),  # "20 ms + 0.1 ms per affected hv"
        }
        self.check("port_create")

    def profile(self) -> None:
        """Only with TENANTFLOW_SCALE_PROFILE=FILE: where phase 3's controller CPU goes, by thread.

        py-spy cannot sample a process of 4,000 threads at any useful rate; so phase 3 runs again
        with each thread's CPU time read from ``/proc/<pid>/task`` before and after, and one
        ``py-spy dump`` names the threads (kind: the thread's name without its per-bridge suffix).
        Figures under ``port_create_profiled``; the threads' CPU by kind, and the dump, in FILE.
        """
        before = thread_cpu_s(self.pid)
        saved = self.figures.pop("port_create", None)
        try:
            with self.gil_profile("port_create"):
                self.port_creates()
        finally:
            after = thread_cpu_s(self.pid)
            self.figures["port_create_profiled"] = self.figures.pop("port_create", None)
            if saved is not None:
                self.figures["port_create"] = saved
        dump = subprocess.run([os.path.join(os.path.dirname(sys.executable), "py-spy"), "dump", "--pid",
                               str(self.pid)], capture_output=True, text=True, timeout=600).stdout
        names = {int(tid): name for tid, name in re.findall(r'^Thread (\d+) \(\w+\): "([^"]*)"', dump, re.M)}
        by_kind: Counter[str] = Counter()
        for tid, cpu in after.items():
            by_kind[re.sub(r"[-_]?[0-9a-f]{6,}$|-\d+$", "", names.get(tid, "?"))] += cpu - before.get(tid, 0.0)
        count = (self.figures["port_create_profiled"] or {}).get("count") or 1
        table = {kind: round(1000 * cpu / count, 2) for kind, cpu in by_kind.most_common()}
        self.figures["port_create_profiled"]["thread_cpu_ms_per_create"] = dict(list(table.items())[:12])
        with open(os.environ["TENANTFLOW_SCALE_PROFILE"], "w") as fh:
            json.dump({"thread_cpu_ms_per_create": table}, fh, indent=1)
            fh.write("\n" + dump)

    @contextlib.contextmanager
    def gil_profile(self, phase: str):
        """With TENANTFLOW_SCALE_PROFILE=FILE: the block under ``py-spy record --gil`` (raw stacks in FILE.PHASE.txt).

        Only the GIL holder is sampled: with thousands of mostly blocked threads, that is where the CPU goes.
        """
        target = os.environ.get("TENANTFLOW_SCALE_PROFILE")
        if not target:
            yield
            return
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--gil",
                                "--nonblocking", "--rate", "200", "--format", "raw", "--output",
                                f"{target}.{phase}.txt", "--pid", str(self.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # it attaches
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # it writes what it sampled and exits
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()

    def hosts_by_network(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for hv, port in self.ports:
            out.setdefault(port["network_id"], set()).add(hv.name)
        return out

    def sg_rules(self) -> None:
        """Phase 4 (provider): a rule added to the group every port is in -> converged."""
        assert self.sg is not None
        samples, timeouts = [], 0
        cpu0 = cpu_s(self.pid)
        with self.gil_profile("sg_rule"):
            for i in range(5):
                t0 = time.perf_counter()
                self.add_rule(8000 + i, f"198.51.100.{i * 16}/28")
                if self.sync.wait(self.long, interval=0.005) is None:
                    timeouts += 1
                else:
                    samples.append(time.perf_counter() - t0)
        self.figures["sg_rule"] = {"repetitions": 5, "converged_ms_p50": ms(statistics.median(samples)) if samples
                                   else None, "converged_ms_max": ms(max(samples)) if samples else None,
                                   "timeouts": timeouts, "controller_cpu_s_per_rule": round((cpu_s(self.pid) - cpu0)
                                                                                            / 5, 3)}
        self.check("sg_rule")

    def rss_growth(self) -> None:
        """Phase 8: RSS before and after 10 % more ports (created through the API and plugged)."""
        assert self.lab is not None
        extra = max(10, len(self.ports) // 10)
        rss0 = rss_kib(self.pid)
        jobs = []
        for i in range(extra):
            hv, net = self.random_port(f"x{i}")
            jobs.append((hv, net, i))
        create_s, took, created = 0.0, 0.0, 0
        for at in range(0, len(jobs), RSS_BATCH):
            # In batches, each waited on: what the section measures is the cost of a change, not a
            # backlog (at N = 1,000 the lab's vswitchds spend about 0.2 s of CPU per create).
            t0 = time.perf_counter()
            made = parallel(lambda job: (job[0], self.new_port(job[0], f"x{job[2]}", job[1])),
                            jobs[at:at + RSS_BATCH], self.lab.api_workers)
            create_s += time.perf_counter() - t0
            self.lab.plug_many(made)
            self.ports += made
            created += len(made)
            waited = self.sync.wait(self.long, interval=0.05)
            if waited is None:
                took = None
                break
        rss1 = rss_kib(self.pid)
        self.figures["rss"] = {"before_mib": round(rss0 / 1024, 1), "after_mib": round(rss1 / 1024, 1),
                               "extra_ports": created, "extra_ports_create_s": round(create_s, 2),
                               "batch": RSS_BATCH,
                               "growth_mib_per_1000_ports": round((rss1 - rss0) / 1024 / max(created, 1) * 1000, 1),
                               "converged_timed_out": took is None}

    def cold_start(self) -> None:
        """Phases 1 and 5: stop, delete every bridge's flows, start; API creates while it syncs."""
        assert self.lab is not None
        lab = self.lab
        self.stop_controller()
        parallel(lambda vs: [hv.ofctl("del-flows") for hv in vs.hypervisors], lab.vswitchds, lab.workers)
        t0 = time.perf_counter()
        self.ctl.start(timeout=self.long)
        api_up = time.perf_counter() - t0
        # phase 5 on its own thread (one client), while this one polls /sync: a create every
        # COLD_CREATE_EVERY_S from the API's start until every bridge is synced, so that they span the
        # whole cold sync (back to back, 100 creates were all done in its first seconds, before most
        # bridges had even reconnected)
        creates: list[tuple[float, float]] = []  # (end, latency)
        errors: list[str] = []
        made: list[tuple[ScaleHypervisor, dict[str, Any]]] = []
        converged = threading.Event()
        client = ApiClient(self.ctl.api_url, timeout=60)
        worker = threading.Thread(target=self._create_with(client, 100_000, creates, made, errors,
                                                           every=COLD_CREATE_EVERY_S, stop=converged),
                                  name="cold-creates", daemon=True)
        worker.start()
        pend_sync = Sync(ApiClient(self.ctl.api_url, timeout=60), self.n)
        took = pend_sync.wait(self.long, interval=0.05)
        cold_s = time.perf_counter() - t0 if took is not None else None
        t_conv = time.perf_counter()
        converged.set()
        cpu = cpu_s(self.pid)
        worker.join(timeout=self.long)
        state_after = pend_sync.state()
        self.ports += made
        # the creates changed the topology: wait for them too before dumping
        self.sync.wait(self.long, interval=0.05)
        bad = self.check("cold_start")
        baseline = self.baseline()
        self.figures["cold_start"] = {
            "cold_start_s": round(cold_s, 3) if cold_s is not None else None, "timed_out": cold_s is None,
            "api_up_s": round(api_up, 3), "controller_cpu_s": round(cpu, 2), "diverged_bridges": bad,
            **baseline,
            "ratio": round(cold_s / baseline["baseline_s"], 3) if cold_s and baseline.get("baseline_s") else None,
        }
        if cold_s is None:
            self.figures["cold_start"]["sync"] = state_after
        self.figures["api_during_cold_start"] = {
            "creates": len(creates), "every_s": COLD_CREATE_EVERY_S,
            "created_before_converged": sum(1 for end, _ in creates if end <= t_conv),
            **summary("api", [lat for _, lat in creates]), "errors": errors[:3], "error_count": len(errors)}

    def _create_with(self, client: ApiClient, count: int, out: list[tuple[float, float]],
                     made: list[tuple[ScaleHypervisor, dict[str, Any]]], errors: list[str],
                     every: float = 0.0, stop: threading.Event | None = None) -> Callable[[], None]:
        """Up to ``count`` port creates, one every ``every`` s (0: back to back), until ``stop`` is set."""
        run = ScaleRun.__new__(ScaleRun)  # a view of this run with its own API client
        run.__dict__.update(self.__dict__)
        run.api = client
        run.rng = random.Random(2)
        stop = stop or threading.Event()

        def go() -> None:
            for i in range(count):
                if stop.wait(every) if every else stop.is_set():
                    return
                hv, net = run.random_port(f"cold{i}")
                t1 = time.perf_counter()
                try:
                    port = run.new_port(hv, f"cold{i}", net)
                except Exception as exc:  # noqa: BLE001 - reported as a figure
                    errors.append(repr(exc))
                    continue
                end = time.perf_counter()
                out.append((end, end - t1))
                made.append((hv, port))

        return go

    def baseline(self) -> dict[str, Any]:
        """Dump every bridge, stop the controller, del-flows, time ``--bundle add-flows`` of the dumps."""
        assert self.lab is not None
        lab = self.lab
        flows_dir = os.path.join(self.workdir, "flows")
        os.makedirs(flows_dir, exist_ok=True)

        def dump(hv: ScaleHypervisor) -> int:
            text = sh.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "--no-names", hv.target],
                          env=hv.vswitchd.env)
            lines = [_VOLATILE.sub(" ", line).strip() for line in text.splitlines()
                     if line.strip() and not line.startswith("OFPST_FLOW")]
            with open(os.path.join(flows_dir, f"{hv.index}.flows"), "w") as fh:
                fh.write("\n".join(lines) + "\n")
            return len(lines)

        counts = parallel(dump, lab.hypervisors, lab.workers)
        self.stop_controller()
        parallel(lambda vs: [hv.ofctl("del-flows") for hv in vs.hypervisors], lab.vswitchds, lab.workers)

        def load(vs) -> None:
            for hv in vs.hypervisors:
                for attempt in range(3):  # at 1,000 bridges a connect now and then ends in "Broken pipe":
                    try:                  # nothing was added (a bundle is all or nothing), so again
                        sh.run(["ovs-ofctl", "-O", "OpenFlow13", "--bundle", "add-flows", hv.target,
                                os.path.join(flows_dir, f"{hv.index}.flows")], env=vs.env, timeout=600)
                        break
                    except sh.CommandError:
                        if attempt == 2:
                            raise
                        retried.append(hv.name)
                        time.sleep(0.5)

        retried: list[str] = []
        t0 = time.perf_counter()
        parallel(load, lab.vswitchds, len(lab.vswitchds))
        took = time.perf_counter() - t0
        shutil.rmtree(flows_dir, ignore_errors=True)
        return {"baseline_s": round(took, 3), "baseline_retries": len(retried), "flows_total": sum(counts),
                "flows_per_hv_median": statistics.median(counts), "flows_per_hv_max": max(counts)}

    def restart(self) -> None:
        """Phase 6: the controller started with every flow in place (the baseline loaded them)."""
        self.ctl.stop()  # already stopped by the baseline: a no-op
        t0 = time.perf_counter()
        self.ctl.start(timeout=self.long)
        took = self.sync.wait(self.long, interval=0.05)
        total = time.perf_counter() - t0
        mods = labelled(self.api, "tenantflow_flow_mods_sent_total", "command")
        self.figures["restart"] = {"converged_s": round(total, 3) if took is not None else None,
                                   "timed_out": took is None, "flow_mods_sent": sum(mods.values()),
                                   "flow_mods_by_command": mods, "diverged_bridges": self.check("restart")}

    def compile_figures(self) -> None:
        timings: dict[str, Any] = {}
        self.compiled(timings)
        self.figures["compile"] = timings

    def scrape_costs(self) -> dict[str, float]:
        """Wall and controller CPU time of two ``GET /metrics`` in a row (a scrape must stay cheap at 1,000 bridges:
        the frozen-objects gauge walked the collector's permanent generation at each one, controller.heap), and of
        one ``GET /sync`` and one ``GET /sync?wait=`` on converged bridges (averaged over SYNC_READS of each)."""
        out: dict[str, float] = {}
        if self.ctl.proc is None or self.ctl.proc.poll() is not None:  # (the cold start's baseline stopped it)
            return out
        for which in ("first", "second"):
            cpu0, t0 = cpu_s(self.pid), time.perf_counter()
            m = self.api.metrics()
            out[f"{which}_ms"] = ms(time.perf_counter() - t0)
            out[f"{which}_cpu_ms"] = ms(cpu_s(self.pid) - cpu0)
        out["frozen_objects"] = m.get("tenantflow_gc_frozen_objects", 0.0)
        # What a bench's (or an orchestrator's) wait for convergence costs the controller, converged or not.
        for query in ("/sync", "/sync?wait=1"):
            cpu0, t0 = cpu_s(self.pid), time.perf_counter()
            for _ in range(SYNC_READS):
                self.api.request("GET", query)
            key = "sync_wait" if "wait" in query else "sync"
            out[f"{key}_ms"] = ms((time.perf_counter() - t0) / SYNC_READS)
            out[f"{key}_cpu_ms"] = ms((cpu_s(self.pid) - cpu0) / SYNC_READS)
        return out

    def health(self) -> None:
        """Phase 7 (and 8's end RSS): counters over the run, final dump, OVS logs."""
        assert self.lab is not None
        rss = self.figures.setdefault("rss", {})  # (absent when TENANTFLOW_SCALE_PHASES left the rss phase out)
        rss["end_mib"] = round(rss_kib(self.pid) / 1024, 1)
        rss["ports_total"] = len(self.ports)
        self.figures["metrics_scrape"] = self.scrape_costs()
        final = self.check("final")
        self.harvest()
        logs: Counter[str] = Counter()
        samples: list[str] = []
        for vs in self.lab.vswitchds:
            with contextlib.suppress(OSError), open(os.path.join(vs.rundir, "ovs-vswitchd.log")) as fh:
                for line in fh:
                    for key in ("inactivity probe", "OFPBFC_TIMEOUT"):
                        if key in line:
                            logs[key] += 1
                            if len(samples) < 4:
                                samples.append(f"vs{vs.index}: {line.strip()[:300]}")
        warnings: list[str] = []
        with contextlib.suppress(OSError), open(self.ctl.log_path) as fh:
            for line in fh:
                if ("WARNING" in line or "ERROR" in line) and "no hypervisor has that datapath id" not in line:
                    warnings.append(line.strip()[:300])
        self.figures["health"] = {
            "switch_disconnects": self.totals["tenantflow_switch_disconnects_total"],
            "sync_retries": self.totals["tenantflow_sync_retries_total"],
            "of_errors": self.totals["tenantflow_of_errors_total"],
            "bundles": {k[len("bundles_"):]: v for k, v in self.totals.items() if k.startswith("bundles_")},
            "bundles_discarded_or_failed": self.totals["bundles_discarded"] + self.totals["bundles_failed"],
            "diverged_bridges_final": final,
            "verifications": dict(self.verifications),
            "ovs_inactivity_probe": logs["inactivity probe"], "ovs_OFPBFC_TIMEOUT": logs["OFPBFC_TIMEOUT"],
            "ovs_log_samples": samples,
            "controller_warnings": len(warnings), "controller_warning_samples": warnings[:4],
        }

    def run(self) -> dict[str, Any]:
        phases: list[tuple[str, Callable[[], None]]] = [
            ("build", self.build), ("port_create", self.port_creates)]
        if self.kind == "provider":
            phases.append(("sg_rule", self.sg_rules))
        if os.environ.get("TENANTFLOW_SCALE_PROFILE"):
            phases.append(("profile", self.profile))
        phases += [("rss", self.rss_growth), ("cold_start", self.cold_start), ("restart", self.restart),
                   ("compile", self.compile_figures), ("health", self.health)]
        only = os.environ.get("TENANTFLOW_SCALE_PHASES")  # e.g. "cold_start,health": the build always runs
        if only:
            phases = [(name, phase) for name, phase in phases if name == "build" or name in only.split(",")]
        t_all = time.perf_counter()
        try:
            for name, phase in phases:
                t0 = time.perf_counter()
                print(f"bench scale [{self.kind}]: {name} ...", flush=True)
                phase()
                self.progress(name)
                print(f"bench scale [{self.kind}]: {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
        except Exception as exc:  # noqa: BLE001 - the figures so far, and the error, are the result
            self.figures["error"] = f"{name}: {exc!r}"
            self.figures["traceback"] = traceback.format_exc()[-2000:]
            self.figures["controller_log_tail"] = self.ctl.log_tail(20)
            print(f"bench scale [{self.kind}]: FAILED in {name}: {exc!r}", flush=True)
        finally:
            self.figures["seconds"] = round(time.perf_counter() - t_all, 1)
            self.teardown()
        return self.figures

    def progress(self, phase: str) -> None:
        """Health counters so far (this controller lifetime's plus the earlier ones') after ``phase``."""
        if self.ctl.proc is None or self.ctl.proc.poll() is not None:
            return
        try:
            m = self.api.metrics()
            self.figures.setdefault("health_by_phase", {})[phase] = {
                "switch_disconnects": self.totals["tenantflow_switch_disconnects_total"]
                + m.get("tenantflow_switch_disconnects_total", 0.0),
                "sync_retries": self.totals["tenantflow_sync_retries_total"]
                + m.get("tenantflow_sync_retries_total", 0.0),
                "rss_mib": round(rss_kib(self.pid) / 1024, 1)}
        except Exception:  # noqa: BLE001
            reset(self.api)

    def teardown(self) -> None:
        try:
            if self.lab is not None:
                self.lab.stop()
        finally:
            self.ctl.stop()


def run(quick: bool = False) -> dict[str, Any]:
    """Both topologies, one after the other (the first torn down before the second is built)."""
    n = 30 if quick else int(os.environ.get("TENANTFLOW_SCALE_HVS", "1000"))
    out: dict[str, Any] = {"hypervisors": n, "date": time.strftime("%Y-%m-%d")}
    kinds = os.environ.get("TENANTFLOW_SCALE_TOPOLOGIES", "overlay,provider").split(",")
    for kind in kinds:
        workdir = tempfile.mkdtemp(prefix=f"tenantflow-bench-scale-{kind}-")
        try:
            out[kind] = ScaleRun(kind, n, quick, workdir).run()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        partial = os.environ.get("TENANTFLOW_SCALE_PARTIAL")  # each topology's figures as soon as they exist
        if partial:
            with open(partial, "w") as fh:
                json.dump(out, fh, indent=2)
    return out
