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
    for name in args.only or list(SECTIONS):
        module = importlib.import_module(SECTIONS[name])
        print(f"bench: running {name} ...", flush=True)
        results["sections"][name] = module.run(quick=args.quick)
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
