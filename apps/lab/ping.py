"""How long a ping stream goes unanswered across a fault: what the failover tests and benches measure."""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Callable

from mininet.node import Host

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", re.M)


def ping_gap(host: Host, dst: str, seconds: float, fault: Callable[[], None], at: float = 1.5,
             interval: float = 0.01, edge: int = 10) -> tuple[float, int]:
    """Ping ``dst`` from ``host`` every ``interval`` s for ``seconds``, run ``fault()`` ``at`` s in:
    (the longest time between two replies, in seconds; how many pings went unanswered).

    No reply among the first or the last ``edge`` pings counts as an outage that never ended
    (``inf``), not as a gap: the stream must be answered before the fault and again after it.
    """
    count = int(seconds / interval)
    proc = host.popen(["ping", "-D", "-n", "-i", str(interval), "-W", "1", "-c", str(count), dst],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(at)
    fault()
    text, _ = proc.communicate(timeout=seconds + 30)
    replies = sorted({int(m.group(2)): float(m.group(1)) for m in _REPLY.finditer(text)}.items())
    lost = count - len(replies)
    if not replies or replies[0][0] > edge or replies[-1][0] < count - edge:
        return math.inf, lost
    stamps = [stamp for _, stamp in replies]
    return max(b - a for a, b in zip(stamps, stamps[1:], strict=False)), lost
