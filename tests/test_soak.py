"""The soak (issue #15): its short CI version on a real lab, and the arithmetic of its end conditions.

``test_short_soak_meets_every_end_condition`` runs ``tenantflow soak --minutes 1.2`` exactly as an
operator would (a child process: controller, 4 private-OVS hypervisors, 8 VMs pinging each other
every 100 ms, port churn, floating IP moves, group edits, a controller restart every 24 s) and
fails on any end condition the soak reports as failed, naming it. The other tests check how the
figures are computed from what the soak records, without a lab.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps.soak import analysis
from apps.soak.analysis import Sample
from tests.lab_fixtures import require_lab

ROOT = Path(__file__).resolve().parent.parent


def _ping_output(seqs: list[int], transmitted: int, late: dict[int, float] | None = None) -> str:
    """What ``ping -D -O`` prints: a reply line per answered sequence number (mod 65536), the summary."""
    lines = ["PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data."]
    for seq, stamp in (late or {}).items():
        lines.append(f"[{stamp:.6f}] no answer yet for icmp_seq={seq % 65536}")
    lines += [f"[1.0] 64 bytes from 10.0.0.2: icmp_seq={s % 65536} ttl=64 time=0.{s % 9 + 1} ms" for s in seqs]
    lines.append(f"{transmitted} packets transmitted, {len(seqs)} received, 0% packet loss, time 1ms")
    return "\n".join(lines)


def test_lost_pings_are_the_unanswered_ones_before_the_in_flight_tail() -> None:
    text = _ping_output([s for s in range(1, 101) if s not in (7, 50, 99)], 100, late={7: 12.5, 8: 12.6})
    r = analysis.parse_ping(text, tail=2)
    # 99 and 100 were in flight when ping was stopped: not counted; 8 was late but answered
    assert (r.sent, r.lost, r.lost_at) == (98, [7, 50], [12.5])
    assert r.median_rtt_ms is not None and 0.1 <= r.median_rtt_ms <= 0.9


def test_sequence_numbers_wrapping_at_65536_are_not_counted_as_losses() -> None:
    # past 65535 ping prints 0, 1, ...: 65540 is printed as 4, which was answered the first time round
    r = analysis.parse_ping(_ping_output([s for s in range(1, 65546) if s != 65540], 65545), tail=0)
    assert (r.sent, r.lost) == (65545, [65540])


def test_a_stream_that_did_not_end_normally_is_an_error() -> None:
    with pytest.raises(ValueError, match="no ping summary"):
        analysis.parse_ping("PING 10.0.0.2\n", tail=0)


def _run(cycle: float, rss: list[list[int]], fds: int = 20) -> list[Sample]:
    """Samples every second, one list of RSS values per restart cycle (process ``pid`` = cycle + 100)."""
    return [Sample(i * cycle + k, 100 + i, value, fds)
            for i, values in enumerate(rss) for k, value in enumerate(values)]


def test_rss_growth_compares_the_last_cycle_s_end_with_the_second_cycle_after_warm_up() -> None:
    flat = [1000] * 40
    # the first cycle (warm-up) grows a lot and does not count; later ones are flat
    samples = _run(40, [list(range(500, 900, 10)), flat, flat, flat])
    s = analysis.memory_summary(samples, 40, [40, 80, 120], 160)
    assert s["rss_growth"] == 0 and s["fds_flat"] is True
    # 10% more at the end of the last cycle: a leak within a process
    leaky = flat[:30] + [1100] * 10
    s = analysis.memory_summary(_run(40, [flat, flat, leaky]), 40, [40, 80], 120)
    assert s["rss_growth"] == pytest.approx(0.10) and not analysis.RSS_LIMIT > s["rss_growth"]
    # every cycle 4% above the previous one: state growing across restarts
    s = analysis.memory_summary(_run(40, [flat, flat, [1040] * 40, [1082] * 40]), 40, [40, 80, 120], 160)
    assert s["rss_growth"] == pytest.approx(0.082)


def test_fds_are_flat_only_without_growth_after_warm_up() -> None:
    samples = _run(40, [[1000] * 40] * 3)
    grown = [Sample(s.t, s.pid, s.rss_kb, 20 + (s.t > 110)) for s in samples]  # one more fd held at the end
    assert analysis.memory_summary(samples, 40, [40, 80], 120)["fds_flat"] is True
    assert analysis.memory_summary(grown, 40, [40, 80], 120)["fds_flat"] is False


def test_without_a_restart_there_is_no_post_warm_up_figure_and_the_verdict_fails() -> None:
    s = analysis.memory_summary(_run(40, [[1000] * 40]), 40, [], 40)
    assert s["rss_growth"] is None
    verdict = analysis.verdict({"memory": s, "switches": {}, "pings": {"untouched_lost": 0, "untouched_pairs": 1},
                                "operations": {"errors": []}, "restarts": {"count": 0, "planned": 0}})
    assert verdict["rss_growth_under_5pct"] is False and verdict["fds_flat"] is False


@pytest.mark.ovs
@pytest.mark.lab
def test_short_soak_meets_every_end_condition(tmp_path: Path) -> None:
    """``tenantflow soak --minutes 1.2``: every end condition holds, and the run did what it says."""
    require_lab()
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "soak", "--minutes", "1.2", "--out", str(out),
                           "--workdir", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.exists(), f"no results (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    s = json.loads(out.read_text())
    failed = [name for name, ok in s["verdict"].items() if not ok]
    assert not failed and proc.returncode == 0, (
        f"soak end conditions failed: {failed}\nerrors: {s['operations']['errors'][:5]}\n"
        f"memory: {json.dumps({k: v for k, v in s['memory'].items() if k != 'cycles'})}\n"
        f"switches: {s['switches']}\n{proc.stdout[-3000:]}")
    # the run really churned, restarted and pinged (a soak that did nothing would pass the rest)
    ops = s["operations"]["done"]
    assert all(ops.get(kind, 0) >= 3 for kind in ("port_boot", "port_delete", "fip_move", "sg_rule_add")), ops
    assert s["restarts"]["count"] == 2 and {r["signal"] for r in s["restarts"]["each"]} == {"SIGTERM", "SIGKILL"}
    assert s["pings"]["untouched_pairs"] == 15 and s["pings"]["sent"] > 15 * 900
    assert "ETA" in proc.stdout
    print(f"short soak: {sum(ops.values())} operations, RSS growth {s['memory']['rss_growth']:+.2%}, "
          f"fds {s['memory']['fds_after_warmup']}, {s['pings']['untouched_lost']} lost on untouched pairs, "
          f"median resync {s['restarts']['median_resync_s']} s")
