"""What a lost ping leaves behind: which echo went unanswered, when, and what the switches saw then.

A test that asserts "not one ping lost" and fails on a loaded machine once in a while needs
more than "lost 1 of 800": :class:`Ping` runs ``ping -D -O`` (a wall-clock stamp on every
line, a line for every echo still unanswered when the next one leaves), so the lost echo's
sequence number and send time are known; :class:`Witness` snapshots each hypervisor's
datapath counters (``dpif-netdev/pmd-stats-show``'s failed upcalls, ``coverage/show``'s drops)
before a scenario, and :meth:`Witness.report` says what changed, the events of the scenario
(cut, takeover, ...) relative to the lost echo, the vswitchd log lines around it, and keeps
the vswitchd logs beside the ping log (the lab deletes its run directories on teardown).

A reply that comes back late is not lost: ping (iputils) counts it whenever it arrives, except
after its last echo, when it waits only twice the longest round trip seen so far and exits.
:class:`Ping` therefore sends a few echoes more than it counts, and :meth:`Ping.unanswered`
marks an echo after which nothing was answered (``tail``).
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from apps.lab import Hypervisor, LabVM
from tests.test_e2e_restart import Ping as _Ping

_REPLY = re.compile(r"\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+) .*time=([\d.]+) ms")
_NO_ANSWER = re.compile(r"\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)")
_COVERAGE = re.compile(r"^(\S+)\s+.*total:\s*(\d+)", re.M)
_PMD = re.compile(r"^\s*(miss with failed upcall|miss with success upcall|packets received):\s*(\d+)", re.M)
# coverage counters that name a packet dropped or a datapath operation that failed
_DROPPY = re.compile(r"drop|fail|error|lost|duplicate|flow_limit|overflow", re.I)


class Ping(_Ping):
    """:class:`tests.test_e2e_restart.Ping` with ``-D -O`` (every line stamped, unanswered echoes reported).

    ``count`` echoes are counted; ``GRACE`` more follow them and are not, so that the last
    counted reply has their time to come back before ping exits (ping waits only twice the
    longest round trip after its last echo: on a loaded machine a slow last reply would be
    counted lost). A counted echo that is dropped is still missing at the end.
    """

    FLAGS = ("-D", "-O")
    GRACE = 50

    def __init__(self, vm: LabVM, dst: str, count: int, interval: float, workdir: Path) -> None:
        super().__init__(vm, dst, count + self.GRACE, interval, workdir)
        self.count = count

    def finish(self, timeout: float) -> tuple[int, int]:
        """Wait for the end; (counted echoes, how many of them were answered)."""
        super().finish(timeout)
        got = self.replies_by_seq()
        return self.count, sum(1 for seq in range(1, self.count + 1) if seq in got)

    def replies_by_seq(self) -> dict[int, tuple[float, float]]:
        """icmp_seq -> (wall-clock time the reply came, round trip in s)."""
        return {int(s): (float(t), float(rtt) / 1000) for t, s, rtt in _REPLY.findall(self.output())}

    def unanswered(self, sent: int, interval: float) -> list[tuple[int, float | None, bool]]:
        """(icmp_seq, wall-clock send time, tail) of each echo never answered.

        The send time is that of ping's "no answer yet for icmp_seq=N-1" line (printed as echo
        N leaves; the pace is not ``interval``: under load ``-i 0.01`` sends one every 14 to
        19 ms here), else the nearest earlier answered echo's (its reply time less its round
        trip) plus ``interval`` per sequence number in between. ``tail``: no later echo was
        answered either (ping had stopped waiting: maybe a late reply, not a drop).
        """
        got = self.replies_by_seq()
        leaving = {int(s) + 1: float(t) for t, s in _NO_ANSWER.findall(self.output())}
        last = max(got, default=0)
        out = []
        for seq in (s for s in range(1, sent + 1) if s not in got):
            before = max((s for s in got if s < seq), default=None)
            when = None if before is None else got[before][0] - got[before][1] + (seq - before) * interval
            out.append((seq, leaving.get(seq, when), seq > last))
        return out


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S.%f")[:-3]


class Witness:
    """Counters of the hypervisors before a scenario, events during it, and a report if a ping was lost."""

    def __init__(self, hypervisors: list[Hypervisor]) -> None:
        self.hypervisors = hypervisors
        self.events: list[tuple[float, str]] = []
        self.before = {hv.name: self._counters(hv) for hv in hypervisors}

    def event(self, what: str, at: float | None = None) -> None:
        """Note ``what`` happened now, or at wall-clock time ``at`` (e.g. a role grant the controller timed)."""
        self.events.append((time.time() if at is None else at, what))

    @staticmethod
    def _counters(hv: Hypervisor) -> dict[str, int]:
        try:
            text = hv.appctl("coverage/show") + hv.appctl("dpif-netdev/pmd-stats-show")
        except Exception:  # noqa: BLE001 - a vswitchd that is down has no counters
            return {}
        counters = {name: int(v) for name, v in _COVERAGE.findall(text)}
        counters.update((name, int(v)) for name, v in _PMD.findall(text))
        return counters

    def report(self, ping: Ping, sent: int, interval: float, keep: Path) -> str:
        """What explains the lost echoes of ``ping``; the vswitchd logs are copied into ``keep``."""
        lost = ping.unanswered(sent, interval)
        lines = []
        t0 = next((t for t, _ in self.events), None)
        for seq, when, tail in lost:
            rel = f", {when - t0:+.3f} s from {self.events[0][1]}" if when is not None and t0 is not None else ""
            at = _stamp(when) if when is not None else "?"
            lines.append(f"echo {seq} sent ~{at}{rel}{' (after the last reply: late, or lost?)' if tail else ''}")
        lines.append("events: " + "; ".join(f"{_stamp(t)} {what}" for t, what in sorted(self.events)))
        times = [w for _, w, _ in lost if w is not None]
        for hv in self.hypervisors:
            after = self._counters(hv)
            before = self.before[hv.name]
            changed = {k: after[k] - before.get(k, 0) for k in after
                       if (_DROPPY.search(k) or k.startswith("miss with")) and after[k] != before.get(k, 0)}
            lines.append(f"{hv.name} counters changed: {changed or 'none of the drop/failure ones'}")
            log = Path(hv.rundir) / "ovs-vswitchd.log"
            if log.exists():
                shutil.copy(log, keep / f"{hv.name}-ovs-vswitchd.log")
                lines += [f"  {line}" for line in _log_around(log.read_text(errors="replace"), times, 1.0)]
        lines.append(f"logs kept in {keep}")
        return "\n".join(lines)


def _log_around(text: str, times: list[float], window: float) -> list[str]:
    """vswitchd log lines within ``window`` s of any of ``times`` (its stamps are UTC, ms)."""
    out = []
    for line in text.splitlines():
        try:
            t = datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
        if any(abs(t - w) <= window for w in times):
            out.append(line[:240])
    return out[-40:]
