"""``tenantflow soak``: an hour of churn on a real lab, under ping between every pair of VMs.

A controller process and a lab of private-OVS hypervisors (by default 3 with 2 untouched VMs
each, 2 more VMs taking turns holding a floating IP, and a 4th hypervisor where the churn boots
its VMs), every pair of VMs pinging each other every 100 ms, the outside host pinging the
floating IP. Meanwhile one operation after another: a new VM's port created,
bound, plugged, checked and later unplugged and deleted; the floating IP moved between its two
holders; TCP rules added to and removed from the group every VM is in; and every
``--restart-every`` minutes the controller restarted (SIGTERM and SIGKILL in turn). The
controller's RSS and open fds are sampled all along.

At the end (:func:`apps.soak.analysis.verdict`): RSS growth under 5% after warm-up, fds flat,
every bridge equal to its compiled flows (dumped with ``ovs-ofctl`` and compared with a
compilation of the stored topology, not with the controller's memory), no ping lost between
VMs whose ports the churn never touched, no operation failed, every restart done. Results in
``--out`` (``results/soak.json``); exit status 1 unless every condition holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from apps.lab.controller import ControllerProcess
from apps.lab.lab import Lab
from apps.soak import analysis
from apps.soak.churn import Churn
from apps.soak.cloud import Cloud, PingStream


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see ``tenantflow soak --help``)."""
    p = argparse.ArgumentParser(prog="tenantflow soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="how long the churn runs (default 60)")
    p.add_argument("--restart-every", type=float, default=None, metavar="MIN",
                   help="minutes between controller restarts (default 10, or a third of --minutes if shorter)")
    p.add_argument("--hypervisors", type=int, default=3, help="hypervisors with untouched VMs (default 3)")
    p.add_argument("--vms-per-hypervisor", type=int, default=2, help="untouched VMs per hypervisor (default 2)")
    p.add_argument("--churn-everywhere", action="store_true",
                   help="boot the churn's VMs on every hypervisor, not on one of their own (see the README: "
                        "the userspace datapath drops a packet in flight when a port is added to its vswitchd)")
    p.add_argument("--ping-interval", type=float, default=0.1, help="seconds between pings of a pair (default 0.1)")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between two operations (default 1)")
    p.add_argument("--sample-every", type=float, default=None, help="seconds between RSS/fd samples")
    p.add_argument("--out", default="results/soak.json", help="the results JSON (default results/soak.json)")
    p.add_argument("--workdir", default=None, help="controller state, logs, ping outputs (default: a temp dir)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.ping_interval < 0.01 or args.hypervisors < 2:
        p.error("--minutes must be > 0, --ping-interval >= 0.01, --hypervisors >= 2")
    if args.restart_every is None:
        args.restart_every = min(10.0, args.minutes / 3)
    if args.sample_every is None:
        args.sample_every = min(5.0, max(1.0, args.minutes * 60 / 200))
    return args


class Sampler(threading.Thread):
    """Reads the controller process's RSS and open fds from /proc every ``every`` s."""

    def __init__(self, ctl: ControllerProcess, started: float, every: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.ctl, self.started, self.every = ctl, started, every
        self.samples: list[analysis.Sample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            sample = self.sample()
            if sample is not None:
                self.samples.append(sample)

    def sample(self) -> analysis.Sample | None:
        """One look, or None while the process is being restarted."""
        proc = self.ctl.proc
        if proc is None or proc.poll() is not None:
            return None
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        except (OSError, StopIteration):
            return None
        return analysis.Sample(round(time.monotonic() - self.started, 2), proc.pid, rss, fds)


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60:d}:{int(seconds) % 60:02d}"


class Progress:
    """A line on the terminal every ``every`` s: elapsed/total, ETA, operations, restarts, RSS, losses."""

    def __init__(self, total: float, every: float, streams: list[PingStream], untouched: set[str]) -> None:
        self.total, self.every = total, every
        self.streams = [s for s in streams if s.src in untouched and s.dst_name in untouched]
        self.unanswered = 0  # counted live from ping's "no answer yet": late ones included
        self.interval = streams[0].interval if streams else 0.0
        self.next = every

    def maybe(self, now: float, churn: Churn, restarts: int, sampler: Sampler) -> None:
        """Print the line if it is time."""
        if now < self.next:
            return
        self.next = (now // self.every + 1) * self.every
        self.unanswered += sum(s.unanswered_since() for s in self.streams)
        last = sampler.samples[-1] if sampler.samples else None
        mem = f"RSS {last.rss_kb / 1024:.1f} MB, {last.fds} fds" if last else "RSS -"
        print(f"soak {_clock(now)}/{_clock(self.total)} ETA {_clock(max(0.0, self.total - now))} | "
              f"ops {sum(churn.done.values())} ({len(churn.errors)} failed) | restarts {restarts} | {mem} | "
              f"untouched pairs: {self.unanswered} pings late (over {self.interval:g} s) or lost so far", flush=True)


@contextlib.contextmanager
def cloud_running(args: argparse.Namespace, workdir: str) -> Iterator[Cloud]:
    """Controller + attached lab + the soak's topology, all torn down on exit."""
    ctl = ControllerProcess(os.path.join(workdir, "controller"))
    ctl.start()
    try:
        lab = Lab(prefix=f"tfs{uuid.uuid4().hex[:4]}", n_hypervisors=args.hypervisors + 1, provider=True,
                  controller_unix_socket=ctl.unix_socket, manager_unix_socket=ctl.ovsdb_socket,
                  api_url=ctl.api_url, workdir=os.path.join(workdir, "lab"))
        with lab:
            lab.register_hypervisors()
            for hv in lab.hypervisors:
                ctl.wait_hypervisor_connected(hv.name, timeout=20)
            cloud = Cloud(ctl, lab, workdir)
            cloud.build(args.vms_per_hypervisor, args.hypervisors)
            cloud.wait_reachable()
            yield cloud
    finally:
        ctl.stop()


def soak(cloud: Cloud, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """Run the pings and the churn for ``--minutes``; every figure of the results JSON."""
    total, every = args.minutes * 60, args.restart_every * 60
    planned = [k * every for k in range(1, int(total // every) + 1) if k * every < total - 1]
    streams = cloud.pings(args.ping_interval, workdir)
    started = time.monotonic()
    sampler = Sampler(cloud.ctl, started, args.sample_every)
    sampler.start()
    hvs = [hv.name for hv in cloud.lab.hypervisors]
    churn = Churn(cloud, hvs if args.churn_everywhere else hvs[args.hypervisors:])
    churn.started, epoch0 = started, time.time() - (time.monotonic() - started)
    progress = Progress(total, 60.0 if total >= 600 else 15.0, streams, cloud.untouched)
    restarts: list[dict[str, Any]] = []
    print(f"soak: {len(cloud.vms)} VMs ({len(cloud.untouched)} untouched), {len(streams)} ping streams every "
          f"{args.ping_interval}s, restart every {args.restart_every:g} min, {args.minutes:g} min; "
          f"work dir {workdir}", flush=True)
    i = 0
    try:
        while (now := time.monotonic() - started) < total:
            if planned and now >= planned[0]:
                planned.pop(0)
                restarts.append(_restart(cloud, churn, len(restarts), now))
            churn.step(i, now)
            i += 1
            progress.maybe(time.monotonic() - started, churn, len(restarts), sampler)
            time.sleep(max(0.0, min(args.pause, total - (time.monotonic() - started))))
        end_s = time.monotonic() - started
    finally:
        sampler.halt.set()
        outputs = {s.pair: (s, s.stop()) for s in streams}
    switches, converge_s = cloud.wait_switches_equal(timeout=20)
    summary = _summary(cloud, args, churn, restarts, sampler.samples, outputs, switches, converge_s, end_s,
                       len(restarts) + len(planned))
    summary["started_epoch"] = round(epoch0, 3)
    for pair in summary["pings"]["pairs"].values():  # epoch -> seconds since the start, like the journal
        pair["lost_at_s"] = [round(t - epoch0, 2) for t in pair.pop("lost_at_epoch")]
    with open(os.path.join(workdir, "operations.json"), "w") as fh:
        json.dump({"restarts": restarts, "operations": churn.journal}, fh, indent=0)
    summary["journal"] = os.path.join(workdir, "operations.json")
    return summary


def _restart(cloud: Cloud, churn: Churn, n: int, now: float) -> dict[str, Any]:
    sig = signal.SIGTERM if n % 2 == 0 else signal.SIGKILL
    resync = ovsdb = None
    try:
        resync, ovsdb = cloud.restart(sig)
    except Exception as exc:  # judged at the end; the next operation will show whether it came back
        churn.errors.append({"at_s": round(now, 1), "op": "restart", "error": f"{type(exc).__name__}: {exc}"})
    print(f"soak {_clock(now)}: controller restarted ({signal.Signals(sig).name}), every switch synced "
          f"{resync and round(resync, 2)} s after the signal, every OVSDB back {ovsdb and round(ovsdb, 2)} s",
          flush=True)
    return {"at_s": round(now, 1), "signal": signal.Signals(sig).name, "resync_s": resync and round(resync, 3),
            "ovsdb_back_s": ovsdb and round(ovsdb, 3)}


def _summary(cloud: Cloud, args: argparse.Namespace, churn: Churn, restarts: list[dict[str, Any]],
             samples: list[analysis.Sample], outputs: dict[str, tuple[PingStream, str]],
             switches: dict[str, Any], converge_s: float, end_s: float, planned: int) -> dict[str, Any]:
    tail = int(2.0 / args.ping_interval)  # in flight when stopped: not counted
    pairs: dict[str, Any] = {}
    untouched_lost = untouched_pairs = 0
    for pair, (stream, text) in outputs.items():
        r = analysis.parse_ping(text, tail)
        untouched = stream.src in cloud.untouched and stream.dst_name in cloud.untouched
        pairs[pair] = {"untouched": untouched, "sent": r.sent, "lost": len(r.lost),
                       "median_rtt_ms": r.median_rtt_ms and round(r.median_rtt_ms, 3),
                       "lost_at_epoch": [round(t, 1) for t in r.lost_at[:20]]}
        if untouched:
            untouched_pairs += 1
            untouched_lost += len(r.lost)
    resyncs = sorted(r["resync_s"] for r in restarts if r["resync_s"] is not None)
    rtts = sorted(p["median_rtt_ms"] for p in pairs.values() if p["median_rtt_ms"] is not None)
    summary: dict[str, Any] = {
        "minutes": args.minutes, "ran_s": round(end_s, 1), "restart_every_min": args.restart_every,
        "hypervisors": len(cloud.lab.hypervisors), "churn_hosts": churn.hosts,
        "vms": sorted(cloud.vms), "untouched_vms": sorted(cloud.untouched),
        "ping_interval_s": args.ping_interval,
        "pings": {"untouched_pairs": untouched_pairs, "untouched_lost": untouched_lost,
                  "touched_lost": sum(p["lost"] for p in pairs.values() if not p["untouched"]),
                  "sent": sum(p["sent"] for p in pairs.values()),
                  "median_rtt_ms": rtts[len(rtts) // 2] if rtts else None,
                  "floating_ip": {"lost": pairs.get("out-fip", {}).get("lost"),
                                  "moves": churn.done.get("fip_move", 0)}, "pairs": pairs},
        "restarts": {"count": len(restarts), "planned": planned,
                     "median_resync_s": resyncs[len(resyncs) // 2] if resyncs else None, "each": restarts},
        "operations": {**churn.summary(), "timings": analysis.durations_summary(churn.durations)},
        "memory": analysis.memory_summary(samples, args.restart_every * 60,
                                          [r["at_s"] + (r["ovsdb_back_s"] or 0) for r in restarts], end_s),
        "samples": [[s.t, s.pid, s.rss_kb, s.fds] for s in samples],
        "switches": switches, "switches_checked_within_s": round(converge_s, 2),
        "controller_log": cloud.ctl.log_path,
    }
    summary["verdict"] = analysis.verdict(summary)
    summary["passed"] = all(summary["verdict"].values())
    return summary


def main(argv: list[str] | None = None) -> int:
    """``tenantflow soak [--minutes N] [--out FILE]``: 0 when every end condition holds, else 1."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("tenantflow soak: needs root (network namespaces and Open vSwitch)", file=sys.stderr)
        return 2
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="tenantflow-soak-"))
    os.makedirs(workdir, exist_ok=True)
    try:
        with cloud_running(args, workdir) as cloud:
            summary = soak(cloud, args, workdir)
    except KeyboardInterrupt:  # the lab and the controller are gone by now (cloud_running)
        print(f"tenantflow soak: interrupted; lab and controller removed, logs and pings in {workdir}",
              file=sys.stderr)
        return 130
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as fh:
        json.dump(summary, fh, indent=1)
    os.replace(args.out + ".tmp", args.out)
    _report(summary, args.out)
    return 0 if summary["passed"] else 1


def _report(s: dict[str, Any], out: str) -> None:
    mem = s["memory"]
    growth = mem.get("rss_growth")
    print(f"soak done in {_clock(s['ran_s'])}: {s['operations']['total']} operations "
          f"({len(s['operations']['errors'])} failed), {s['restarts']['count']}/{s['restarts']['planned']} restarts "
          f"(median resync {s['restarts']['median_resync_s']} s)")
    print(f"  pings: {s['pings']['untouched_lost']} lost of {s['pings']['untouched_pairs']} untouched pairs; "
          f"{s['pings']['touched_lost']} lost on touched pairs and the floating IP; median RTT "
          f"{s['pings']['median_rtt_ms']} ms")
    print(f"  RSS growth after warm-up: {'-' if growth is None else f'{growth:+.2%}'}; fds flat: {mem.get('fds_flat')} "
          f"{mem.get('fds_after_warmup')}; switches equal to compiled: {s['verdict']['switches_equal_compiled']}")
    for name, ok in s["verdict"].items():
        print(f"  {'PASS' if ok else 'FAIL'} {name}")
    print(f"results: {out}")
