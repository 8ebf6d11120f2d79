"""Figures the benchmarks report the same way: latencies, and interleaved throughput runs."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded to the microsecond."""
    return round(seconds * 1e3, 3)


def percentile(samples: list[float], q: int) -> float:
    """The ``q``-th percentile (0 < q <= 100) by nearest rank."""
    ordered = sorted(samples)
    return ordered[max(0, -(-q * len(ordered) // 100) - 1)]


def latency_summary(name: str, samples: list[float]) -> dict[str, Any]:
    """``<name>_ms_{median,p90,min,max,samples}``: p90 by nearest rank, samples in seconds in."""
    ordered = sorted(samples)
    p90 = percentile(ordered, 90)
    return {
        f"{name}_ms_median": ms(statistics.median(ordered)),
        f"{name}_ms_p90": ms(p90),
        f"{name}_ms_min": ms(ordered[0]),
        f"{name}_ms_max": ms(ordered[-1]),
        f"{name}_ms_samples": [ms(s) for s in samples],
    }


def interleaved(kinds: Sequence[str], rounds: int, run_one: Callable[[str], tuple[float, int]]
                ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Run each kind once per round, the order reversed every other round (so a drift of the
    machine hits every kind alike): ({kind: bit/s of each run}, {kind: TCP retransmits})."""
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    retransmits = dict.fromkeys(kinds, 0)
    for r in range(rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            bps, retrans = run_one(kind)
            runs[kind].append(bps)
            retransmits[kind] += retrans
    return runs, retransmits


def gbps_summary(prefix: str, runs: dict[str, list[float]]) -> dict[str, Any]:
    """``<prefix>_<kind>_gbps`` (each run) and ``<prefix>_<kind>_gbps_median`` for every kind."""
    out: dict[str, Any] = {}
    for kind, bps in runs.items():
        out[f"{prefix}_{kind}_gbps"] = [round(x / 1e9, 3) for x in bps]
    for kind, bps in runs.items():
        out[f"{prefix}_{kind}_gbps_median"] = round(statistics.median(bps) / 1e9, 3)
    return out
