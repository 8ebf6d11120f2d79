"""Figures the latency benchmarks report the same way."""

from __future__ import annotations

import statistics
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
