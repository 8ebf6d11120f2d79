"""Full compile of a synthetic cloud: time and flows per hypervisor."""

from __future__ import annotations

import gc
import statistics
import time

from flows.compiler import compile_hypervisor
from topology.synthetic import synthetic_cloud


def run(quick: bool = False) -> dict:
    """Compile every hypervisor of a 1,000-hypervisor cloud (20 ports each, 500 networks)."""
    n_hvs, ports_per_hv, n_networks = (100, 20, 50) if quick else (1000, 20, 500)
    t0 = time.perf_counter()
    graph = synthetic_cloud(n_hvs=n_hvs, ports_per_hv=ports_per_hv, n_networks=n_networks, seed=1)
    build_s = time.perf_counter() - t0
    # As the controller does after loading its topology: the long-lived graph
    # goes to the permanent GC generation, so collections do not rescan it.
    gc.freeze()
    counts = []
    per_hv_s = []
    t0 = time.perf_counter()
    for hv in graph.hypervisors():
        t1 = time.perf_counter()
        counts.append(len(compile_hypervisor(graph, hv.name)))
        per_hv_s.append(time.perf_counter() - t1)
    total_s = time.perf_counter() - t0
    return {
        "hypervisors": n_hvs, "ports": n_hvs * ports_per_hv, "networks": n_networks,
        "graph_build_s": build_s,
        "full_compile_s": total_s,
        "compile_per_hv_median_ms": statistics.median(per_hv_s) * 1e3,
        "compile_per_hv_p99_ms": sorted(per_hv_s)[int(0.99 * (len(per_hv_s) - 1))] * 1e3,
        "flows_total": sum(counts),
        "flows_per_hv_median": statistics.median(counts),
        "flows_per_hv_max": max(counts),
        "flows_per_hv_min": min(counts),
    }
