"""The soak's figures, from what it recorded: ping outputs, RSS/fd samples, operation timings.

Pure functions over plain data (no processes, no lab), so the soak's end conditions can
be read, and tested, apart from the hour it takes to produce their inputs.

Definitions (the README's soak section repeats them):

* **Lost pings**: a ping stream (``ping -D -O -n -i INTERVAL``) is stopped with SIGINT at the
  end; every sequence number it sent, except the last ``tail`` (still in flight when it was
  stopped), that never got a reply is lost. Sequence numbers wrap at 65536 (109 min at 10/s):
  they are unwrapped in order of appearance.
* **Warm-up**: the first restart cycle (the first controller process, which also built the
  topology), plus, in every later process, its first :data:`PROCESS_WARMUP` of the cycle (the
  connect-time resync and its first operations allocate what a fresh process then keeps).
* **RSS growth**: the median RSS of the *last* process over the last quarter of its life,
  against the median RSS of the *second* process (the first after warm-up) over the quarter
  of a cycle right after its own warm-up. Early-in-cycle against late-in-cycle on purpose: a leak
  inside one process and state that grows from cycle to cycle both raise it.
* **Open fds flat**: after warm-up, the fd count of every sample stays within
  :data:`FD_SLACK` of the baseline window's median (a sample may catch the soak's own API
  connection open), and the last quarter's median equals the baseline's.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

PROCESS_WARMUP = 0.10  # of a restart cycle: a later process's own warm-up
WINDOW = 0.25  # of a restart cycle: the baseline and final windows
FD_SLACK = 2
RSS_LIMIT = 0.05

_REPLY = re.compile(r"icmp_seq=(\d+) ttl=\d+ time=([0-9.]+) ms")
_NO_ANSWER = re.compile(r"^\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)", re.M)
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class PingResult:
    """One ping stream's outcome."""

    sent: int  # counted: every sequence number but the in-flight tail
    lost: list[int]  # unwrapped sequence numbers never answered
    rtt_ms: list[float]
    lost_at: list[float]  # epoch seconds ping reported "no answer yet" for a lost one

    @property
    def median_rtt_ms(self) -> float | None:
        """The median round trip, None without any reply."""
        return statistics.median(self.rtt_ms) if self.rtt_ms else None


def _unwrap(seqs: Iterable[int]) -> Iterator[int]:
    """Sequence numbers as ping prints them (mod 65536), made monotonic in order of appearance."""
    base, last = 0, None
    for seq in seqs:
        if last is not None and seq + base < last - 32768:
            base += 65536
        last = seq + base
        yield last


def parse_ping(text: str, tail: int) -> PingResult:
    """What a stopped ``ping -D -O`` printed, as :class:`PingResult`; ``tail``: in-flight sequence numbers ignored."""
    summary = _SUMMARY.search(text)
    if summary is None:
        raise ValueError("no ping summary: the stream did not end normally")
    transmitted = int(summary.group(1))
    replies = [(int(m.group(1)), float(m.group(2))) for m in _REPLY.finditer(text)]
    answered = set(_unwrap(seq for seq, _ in replies))
    counted = max(0, transmitted - tail)
    lost = [seq for seq in range(1, counted + 1) if seq not in answered]
    unanswered = dict(zip(_unwrap(int(m.group(2)) for m in _NO_ANSWER.finditer(text)),
                          (float(m.group(1)) for m in _NO_ANSWER.finditer(text)), strict=True))
    lost_at = [unanswered[seq] for seq in lost if seq in unanswered]
    return PingResult(counted, lost, [rtt for _, rtt in replies], lost_at)


@dataclass(frozen=True)
class Sample:
    """One look at the controller process: when (s since the soak's start), which process, RSS, fds."""

    t: float
    pid: int
    rss_kb: int
    fds: int


def cycles(samples: Sequence[Sample]) -> list[list[Sample]]:
    """The samples split by controller process (a restart cycle each), in order."""
    out: list[list[Sample]] = []
    for s in samples:
        if not out or out[-1][0].pid != s.pid:
            out.append([])
        out[-1].append(s)
    return out


def _window(cycle: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in cycle if start <= s.t < end]


def memory_summary(samples: Sequence[Sample], cycle_s: float, restarts: Sequence[float],
                   end_s: float) -> dict[str, Any]:
    """RSS growth and fd flatness after warm-up (module docstring), with the series summarised per cycle.

    ``restarts``: when each restarted process was ready, every switch synced (s since the start);
    ``end_s``: the run's end.
    """
    bounds = [0.0, *restarts, end_s]
    per_cycle = cycles(samples)
    summary: dict[str, Any] = {"cycles": [], "warmup": "the first restart cycle, then the first "
                               f"{PROCESS_WARMUP:.0%} of each later cycle", "cycle_s": cycle_s}
    for i, cyc in enumerate(per_cycle):
        rss = [s.rss_kb for s in cyc]
        fds = [s.fds for s in cyc]
        summary["cycles"].append({
            "pid": cyc[0].pid, "start_s": round(bounds[i] if i < len(bounds) else cyc[0].t, 1),
            "samples": len(cyc), "rss_kb": {"min": min(rss), "median": statistics.median(rss), "max": max(rss),
                                            "first": rss[0], "last": rss[-1]},
            "fds": {"min": min(fds), "median": statistics.median(fds), "max": max(fds)},
        })
    if len(per_cycle) < 2 or len(bounds) < 3:
        summary.update(rss_growth=None, fds_flat=None, problem="fewer than two restart cycles: no post-warm-up data")
        return summary
    second, last = per_cycle[1], per_cycle[-1]
    base_from = bounds[1] + PROCESS_WARMUP * cycle_s
    baseline = _window(second, base_from, base_from + WINDOW * cycle_s)
    final = _window(last, end_s - WINDOW * cycle_s, end_s + 1)
    post = [s for i, cyc in enumerate(per_cycle) if i for s in cyc if s.t >= bounds[i] + PROCESS_WARMUP * cycle_s]
    if not baseline or not final:
        summary.update(rss_growth=None, fds_flat=None, problem="no samples in the baseline or final window")
        return summary
    base_rss = statistics.median(s.rss_kb for s in baseline)
    final_rss = statistics.median(s.rss_kb for s in final)
    base_fds = statistics.median(s.fds for s in baseline)
    final_fds = statistics.median(s.fds for s in final)
    spread = [min(s.fds for s in post), max(s.fds for s in post)]
    summary.update(
        baseline={"from_s": round(base_from, 1), "samples": len(baseline), "rss_kb": base_rss, "fds": base_fds},
        final={"samples": len(final), "rss_kb": final_rss, "fds": final_fds},
        rss_growth=round(final_rss / base_rss - 1, 4),
        fds_after_warmup=spread,
        fds_flat=final_fds == base_fds and spread[1] - base_fds <= FD_SLACK and base_fds - spread[0] <= FD_SLACK,
    )
    return summary


def durations_summary(durations: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per operation kind: how many, median and max seconds."""
    return {kind: {"count": len(ds), "median_s": round(statistics.median(ds), 3), "max_s": round(max(ds), 3)}
            for kind, ds in sorted(durations.items()) if ds}


def verdict(summary: dict[str, Any]) -> dict[str, bool]:
    """The soak's end conditions, each True when it holds (the soak fails unless all are)."""
    memory = summary["memory"]
    growth = memory.get("rss_growth")
    return {
        "rss_growth_under_5pct": growth is not None and growth < RSS_LIMIT,
        "fds_flat": bool(memory.get("fds_flat")),
        "switches_equal_compiled": all(not d["extra"] and not d["missing"] for d in summary["switches"].values()),
        "no_loss_between_untouched": summary["pings"]["untouched_lost"] == 0
        and summary["pings"]["untouched_pairs"] > 0,
        "operations_ok": not summary["operations"]["errors"],
        "restarts_done": summary["restarts"]["count"] >= summary["restarts"]["planned"],
    }

