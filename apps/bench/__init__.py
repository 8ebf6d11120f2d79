"""``make bench``: the benchmarks, figures written to a JSON results file and printed as a table.

Speed targets live here, never in unit tests. Each section returns a dict of
figures; ratios are always taken between two measurements of the same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

from apps.progress import Progress, human, on_terminal

SECTIONS = {
    "compile": "apps.bench.compile_scale",
    "push": "apps.bench.push_rate",
    "port_latency": "apps.bench.port_latency",
    "routing": "apps.bench.routing",
    "api": "apps.bench.api",
    "port_to_flows": "apps.bench.port_to_flows",
    "fip": "apps.bench.fip",
    "secgroups": "apps.bench.secgroups",
    "scale": "apps.bench.scale",
    "scale_out": "apps.bench.scale_out",
    "dhcp": "apps.bench.dhcp",
    "ovsdb": "apps.bench.ovsdb",
    "gateway": "apps.bench.gateway",
    "store": "apps.bench.store",
    "echo": "apps.bench.echo",
}


def _table(results: dict) -> str:
    lines = [f"{'section':<14} {'figure':<44} value", "-" * 72]
    for section, figures in results["sections"].items():
        for key, value in figures.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            elif isinstance(value, (list, dict)):
                value = json.dumps(value)[:60]
            lines.append(f"{section:<14} {key:<44} {value}")
    return "\n".join(lines)


def _last_durations(path: str) -> dict[str, float]:
    """How long each section took in the results file's last run (for the ETA): {} if unknown."""
    try:
        with open(path) as fh:
            durations = json.load(fh).get("durations", {})
        return {k: float(v) for k, v in durations.items() if k in SECTIONS and float(v) > 0}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _eta(progress: Progress, done: int, total: int, from_last_run: bool) -> str:
    """`` (section 3/13, 4 min 10 s so far, ETA 9 min 02 s)`` on a terminal (nothing otherwise).

    The ETA is what the sections left took in the last run (the results file keeps each one's
    duration); without a last run, the time so far per section done, times the sections left.
    """
    if not on_terminal():
        return ""
    eta = progress.total - progress.done if from_last_run else progress.eta()
    tail = f", ETA {human(eta)}" if eta is not None else ""
    return f" (section {done + 1}/{total}, {human(progress.elapsed)} so far{tail})"


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmark sections and write the results file."""
    p = argparse.ArgumentParser(prog="tenantflow bench")
    p.add_argument("--out", default="results/bench.json")
    p.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only these sections")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "sections": {}}
    names = args.only or list(SECTIONS)
    last = _last_durations(args.out)
    weight = {n: last.get(n, sum(last.values()) / len(last) if last else 1.0) for n in names}
    progress = Progress("bench", sum(weight.values()), enabled=False)  # its ETA, printed between sections
    results["durations"] = {}
    for i, name in enumerate(names):
        module = importlib.import_module(SECTIONS[name])
        print(f"bench: running {name} ...{_eta(progress, i, len(names), bool(last))}", flush=True)
        t0 = time.monotonic()
        results["sections"][name] = module.run(quick=args.quick)
        results["durations"][name] = round(time.monotonic() - t0, 1)
        progress.advance(weight[name])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(_table(results))
    print(f"\nresults written to {args.out}", flush=True)
    # The push section runs an os-ken controller inside this process; os-ken's hub
    # threads are not daemons and cannot be stopped (controller.main ends the same
    # way), so a plain return would leave `make bench` hanging after its results.
    sys.stderr.flush()
    os._exit(0)
