"""The demo's reachability matrices: every VM pings every other VM's address, and who really answered.

Both tenants use the same addresses on purpose: tenant B's VMs hold tenant A's addresses
rotated by one hypervisor (``b1`` has ``a2``'s address, ...). So a ping from ``a1`` to
``b1``'s address *does* get an answer, from ``a2``. A cell is a reach only if the ping was
answered AND the destination VM itself counted the echo requests (``Icmp: InEchos`` of its
own namespace's ``/proc/net/snmp``, ``Icmp6InEchos`` of ``/proc/net/snmp6``); the source's
neighbour entry (``ip neigh``) shows whose MAC the address resolved to.

Pings run in parallel in rounds in which no two go to the same address (and no VM sends two),
so whichever VM answers an address, its counter moved for one ping only. The IPv4 and IPv6
counters are separate, so the two matrices run at the same time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from apps.demo_report import Matrix
from apps.lab import sh
from apps.lab.lab import LabVM

# Three requests 50 ms apart: one lost packet does not make a cell; an address nobody
# answers costs half a second after the last.
PING = ["ping", "-n", "-q", "-c3", "-i0.05", "-W0.5"]


class MatrixVM(Protocol):
    """What the matrix needs of a VM."""

    name: str
    tenant: str
    vm: LabVM
    mac: str

    def address(self, family: int) -> str | None:
        """Its address of ``family`` (None: it has none)."""


@dataclass
class Cell:
    """The outcome of one ping of the matrix."""

    replies: int
    echoes_seen: int  # echo requests the destination VM itself received
    neigh_mac: str | None  # what the source's neighbour cache says the address is

    @property
    def reached(self) -> bool:
        """Answered, and the destination VM saw the requests: nobody else answered for it."""
        return self.replies > 0 and self.echoes_seen > 0


def in_echos(vm: LabVM, family: int) -> int:
    """Echo requests the VM's namespace received, read from ``/proc/<its shell>/net``: per namespace."""
    if family == 6:
        with open(f"/proc/{vm.pid}/net/snmp6") as fh:
            stats = dict(line.split() for line in fh if line.strip())
        return int(stats["Icmp6InEchos"])
    with open(f"/proc/{vm.pid}/net/snmp") as fh:
        header, values = [line.split() for line in fh if line.startswith("Icmp:")][:2]
    return int(values[header.index("InEchos")])


def _neigh_mac(vm: LabVM, address: str) -> str | None:
    match = re.search(r"lladdr (\S+)", sh.run(["ip", "-n", vm.netns, "neigh", "show", address, "dev", "eth0"]))
    return match.group(1) if match else None


def ping(src: MatrixVM, dst: MatrixVM, family: int) -> Cell:
    """``src`` pings ``dst``'s address; what came back and what ``dst`` itself saw."""
    address = dst.address(family)
    assert address is not None
    before = in_echos(dst.vm, family)
    out = sh.run([*PING, f"-{family}", address], netns=src.vm.netns, check=False)
    seen = in_echos(dst.vm, family) - before
    match = re.search(r"(\d+) received", out)
    neigh = _neigh_mac(src.vm, address) if src.tenant != dst.tenant else None
    return Cell(int(match.group(1)) if match else 0, seen, neigh)


def rounds(vms: Sequence[MatrixVM], family: int) -> list[list[tuple[MatrixVM, MatrixVM]]]:
    """Every ordered pair, grouped so that no two pings of a round go to the same address or come from one VM."""
    pending = [(s, d) for s in vms for d in vms if s is not d]
    out = []
    while pending:
        taken: set[str] = set()
        batch = []
        for src, dst in pending:
            address = str(dst.address(family))
            if address not in taken and src.name not in taken:
                batch.append((src, dst))
                taken |= {address, src.name}
        pending = [p for p in pending if p not in batch]
        out.append(batch)
    return out


def ping_matrix(vms: Sequence[MatrixVM], family: int) -> dict[tuple[str, str], Cell]:
    """Ping from each VM to each other VM's address of ``family``, round by round."""
    cells: dict[tuple[str, str], Cell] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(vms))) as pool:
        for batch in rounds(vms, family):
            for (src, dst), cell in zip(batch, pool.map(lambda p: ping(*p, family), batch), strict=True):
                cells[src.name, dst.name] = cell
    return cells


def evidence(vms: Sequence[MatrixVM], cells: dict[tuple[str, str], Cell], family: int) -> list[str]:
    """One line per cross-tenant pair: who answered the address (by the MAC the sender resolved), what the
    destination itself saw."""
    by_mac = {v.mac: v.name for v in vms}
    lines = []
    for src in vms:
        for dst in vms:
            if src.tenant == dst.tenant:
                continue
            cell, address = cells[src.name, dst.name], dst.address(family)
            if address == src.address(family):
                answer = f"{src.name}'s own address too"
            elif cell.replies:
                answer = f"answered by {by_mac.get(cell.neigh_mac or '', cell.neigh_mac or '?')}"
            else:
                answer = "no answer"
            lines.append(f"{src.name} -> {dst.name}'s {address}: {answer}, {dst.name} saw {cell.echoes_seen} "
                         "echo requests")
    return lines


def matrix(vms: Sequence[MatrixVM], family: int) -> tuple[Matrix, dict[tuple[str, str], Cell]]:
    """Run the matrix of ``family`` over the VMs that have such an address; the report's table and the cells."""
    vms = [v for v in vms if v.address(family)]
    cells = ping_matrix(vms, family)
    table = Matrix(family, [v.name for v in vms], {v.name: v.tenant[-1].upper() for v in vms},
                   {pair: cell.reached for pair, cell in cells.items()}, evidence(vms, cells, family))
    return table, cells
