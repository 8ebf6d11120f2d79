"""Reproduce the bench's ``rss`` phase storm quickly and record who closes the connections and why.

    .venv/bin/python scripts/storm.py [N] [EXTRA] [OUT_DIR]

N hypervisors of the scale lab (overlay: 500 networks scaled to N, 20 ports each), the real
controller process at INFO, then EXTRA port creates in batches of 100 (4 clients), each batch
waited on until converged (as ``apps.bench.scale.ScaleRun.rss_growth``). A monitor samples
the controller every 2 s (threads, CPU, RSS, disconnects). At the end the vswitchds' and the
controller's logs are grepped and a summary is written to OUT_DIR/summary.json (the logs
excerpts beside it); the lab and its work dir are removed. The controller runs under
``scripts/storm_probe.py`` (GC passes over 50 ms and stalls over 0.5 s in its log;
``STORM_PROBE=0``: plain); ``STORM_LEAKS=1`` asks it at the end for the unreachable cycles
a frozen heap would keep (a full pass: the bridges drop the controller meanwhile).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apps.bench.scale import RSS_BATCH, ScaleRun, cpu_s  # noqa: E402
from apps.lab.controller import ControllerProcess  # noqa: E402
from apps.lab.scale import ApiClient, parallel, rss_kib  # noqa: E402

OVS_KEYS = ("inactivity probe", "connection dropped", "Unreasonably long", "OFPBFC_TIMEOUT", "connection closed",
            "disconnecting", "refused", "error", "WARN")
CTL_KEYS = ("disconnected", "closing the connection", "no reply", "sync not committed", "commit refused", "ERROR",
            "WARNING", "connected from")


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread-name prefix (schedstat: run time, and wait-for-CPU time)."""
    run, wait = collections.Counter(), collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = re.sub(r"[-_]?[0-9a-f]{6,}$|-\d+$", "", fh.read().strip())
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                r, w, _ = fh.read().split()
        except OSError:
            continue
        run[name] += int(r) / 1e9
        wait[name] += int(w) / 1e9
    return {"run": dict(run), "wait": dict(wait)}


class Monitor(threading.Thread):
    def __init__(self, run: ScaleRun, out: list) -> None:
        super().__init__(daemon=True)
        self.run_, self.out, self.stop = run, out, threading.Event()
        self.api = ApiClient(run.ctl.api_url, timeout=30)

    def run(self) -> None:
        t0 = time.perf_counter()
        self.dumps = 0
        while not self.stop.wait(2.0):
            pid = self.run_.pid
            watchdog = threading.Timer(3.0, self.spy, (pid,))
            watchdog.start()
            try:
                m = self.api.metrics()
                disc = m.get("tenantflow_switch_disconnects_total", 0.0)
                up = m.get("tenantflow_switch_connected", 0.0)
            except Exception:  # noqa: BLE001
                self.api._local.conn = None
                disc = up = None
            watchdog.cancel()
            self.out.append({"t": round(time.perf_counter() - t0, 1), "threads": threads(pid),
                             "cpu_s": round(cpu_s(pid), 1), "rss_mib": round(rss_kib(pid) / 1024),
                             "disconnects": disc, "synced": up})


    def spy(self, pid: int) -> None:
        """The API has not answered /metrics for 3 s: what does every thread do (and who holds the GIL)?"""
        if self.dumps >= 4:
            return
        self.dumps += 1
        import subprocess
        py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
        t = time.strftime("%H%M%S")
        with open(os.path.join(self.out_dir, f"pyspy-{t}.txt"), "w") as fh:
            subprocess.run([py_spy, "dump", "--pid", str(pid)], stdout=fh, stderr=subprocess.STDOUT, timeout=60)


def grep_logs(run: ScaleRun, out_dir: str) -> dict:
    assert run.lab is not None
    counts: collections.Counter[str] = collections.Counter()
    samples: dict[str, list[str]] = collections.defaultdict(list)
    with open(os.path.join(out_dir, "ovs-excerpt.log"), "w") as ex:
        for vs in run.lab.vswitchds:
            try:
                with open(os.path.join(vs.rundir, "ovs-vswitchd.log")) as fh:
                    lines = fh.readlines()
            except OSError:
                continue
            for line in lines:
                hit = [k for k in OVS_KEYS if k in line]
                for k in hit:
                    counts[k] += 1
                    if len(samples[k]) < 6:
                        samples[k].append(f"vs{vs.index}: {line.strip()[:300]}")
                if hit and vs.index < 5:
                    ex.write(f"vs{vs.index}: {line}")
    ctl: collections.Counter[str] = collections.Counter()
    ctl_samples: dict[str, list[str]] = collections.defaultdict(list)
    with open(run.ctl.log_path) as fh:
        for line in fh:
            for k in CTL_KEYS:
                if k in line:
                    ctl[k] += 1
                    if len(ctl_samples[k]) < 6:
                        ctl_samples[k].append(line.strip()[:300])
    shutil.copy(run.ctl.log_path, os.path.join(out_dir, "controller.log"))
    return {"ovs": dict(counts), "ovs_samples": samples, "controller": dict(ctl), "controller_samples": ctl_samples}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    extra = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    out_dir = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="storm-out-")
    os.makedirs(out_dir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="tenantflow-storm-")
    run = ScaleRun("overlay", n, False, workdir)
    run.ctl = ControllerProcess(os.path.join(workdir, "ctl"), extra_args=["--log-level", "info"])
    if os.environ.get("STORM_PROBE", "1") == "1":
        plain = run.ctl.argv
        probe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "storm_probe.py")
        run.ctl.argv = lambda: [sys.executable, probe, *plain()[3:]]
    Monitor.out_dir = out_dir
    run.api = ApiClient(run.ctl.api_url, timeout=120)
    run.sync.api = run.api
    run.check = lambda phase: 0  # no dumps: reach the storm quickly
    samples: list = []
    summary: dict = {"n": n, "extra": extra}
    mon = None
    try:
        # 500 networks at N = 1000: keep ~40 hosts per network at other N
        orig_populate = None
        if n != 1000:
            from apps.lab.scale import ScaleLab
            orig_populate = ScaleLab.populate

            def populate(self, networks, **kw):
                return orig_populate(self, max(1, networks * n // 1000), **kw)
            ScaleLab.populate = populate
        t0 = time.perf_counter()
        run.build()
        summary["build"] = run.figures["build"]
        print("built", json.dumps(run.figures["build"]), flush=True)
        mon = Monitor(run, samples)
        mon.start()
        c0 = cpu_s(run.pid)
        summary["after_build"] = {"threads": threads(run.pid), "rss_mib": round(rss_kib(run.pid) / 1024),
                                  "disconnects": run.api.metrics().get("tenantflow_switch_disconnects_total")}
        tc0 = thread_cpu(run.pid)
        batches = []
        for at in range(0, extra, RSS_BATCH):
            jobs = [(*run.random_port(f"x{i}"), i) for i in range(at, min(extra, at + RSS_BATCH))]
            tb = time.perf_counter()
            made = parallel(lambda job: (job[0], run.new_port(job[0], f"x{job[2]}", job[1])), jobs,
                            run.lab.api_workers)
            t_api = time.perf_counter() - tb
            run.lab.plug_many(made)
            run.ports += made
            waited = run.sync.wait(run.long, interval=0.05)
            disc = run.api.metrics().get("tenantflow_switch_disconnects_total")
            batches.append({"api_s": round(t_api, 2), "converged_s": round(time.perf_counter() - tb, 2)
                            if waited is not None else None, "disconnects": disc})
            print("batch", batches[-1], flush=True)
            if waited is None:
                summary["sync_state"] = run.sync.state()
                break
        tc1 = thread_cpu(run.pid)
        summary["batches"] = batches
        summary["controller_cpu_s"] = round(cpu_s(run.pid) - c0, 1)
        summary["thread_cpu_delta"] = {k: {name: round(v - tc0[k].get(name, 0), 1) for name, v in tc1[k].items()
                                           if v - tc0[k].get(name, 0) > 0.5} for k in ("run", "wait")}
        summary["seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        if mon is not None:
            mon.stop.set()
        if run.ctl.proc is not None and run.ctl.proc.poll() is None and os.environ.get("STORM_LEAKS") == "1":
            # a full pass over the whole heap: seconds to minutes at N = 1,000, the bridges drop us meanwhile
            os.kill(run.pid, signal.SIGUSR1)  # the probe counts what cycles are unreachable (our child, by PID)
            time.sleep(30)
        summary["samples"] = samples
        try:
            if run.lab is not None:
                summary["logs"] = grep_logs(run, out_dir)
        except Exception as exc:  # noqa: BLE001
            summary["logs_error"] = repr(exc)
        run.harvest()
        summary["totals"] = dict(run.totals)
        with open(os.path.join(out_dir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
        run.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
        print("summary in", out_dir, flush=True)


if __name__ == "__main__":
    main()
