"""What the soak does to the cloud while the pings run: port churn, floating IP moves, group edits.

One operation at a time, from the soak's own thread, each through the Neutron API (and the
lab for what Nova does: plugging and unplugging a VM). Every operation is timed; a failure is
recorded with its cause and the soak goes on (the verdict then fails on it).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from apps.lab.lab import LabVM
from apps.lab.sh import wait_until
from apps.soak.cloud import Cloud, answers

MAX_CHURN_VMS = 4  # ports alive at once that the churn created
MAX_EXTRA_RULES = 3  # rules the churn added to the group, alive at once


class Churn:
    """The operations, their counts, timings and errors."""

    def __init__(self, cloud: Cloud, hosts: list[str], seed: int = 15) -> None:
        self.cloud, self.hosts = cloud, hosts  # where new VMs boot
        self.rng = random.Random(seed)
        self.alive: list[LabVM] = []  # churn VMs, oldest first
        self.rules: list[dict[str, Any]] = []  # rules the churn added, oldest first
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.errors: list[dict[str, Any]] = []
        self.done: dict[str, int] = defaultdict(int)
        self.journal: list[dict[str, Any]] = []  # every operation: when, what, how long
        self.started = time.monotonic()
        self._serial = 0
        self._holder = 0  # index in cloud.fip_holders of the floating IP's port
        self._kinds: list[Callable[[], None]] = [self.port_op, self.fip_move, self.sg_edit]

    def step(self, i: int, at: float) -> None:
        """Operation number ``i`` (the kinds in turn); ``at``: seconds since the start, for the error log."""
        op = self._kinds[i % len(self._kinds)]
        try:
            op()
        except Exception as exc:  # recorded, judged at the end: one bad operation must not end the soak
            self.errors.append({"at_s": round(at, 1), "op": op.__name__, "error": f"{type(exc).__name__}: {exc}"})

    def _timed(self, kind: str, fn: Callable[[], Any], detail: str = "") -> Any:
        began = time.monotonic()
        entry = {"at_s": round(began - self.started, 2), "op": kind, "detail": detail}
        self.journal.append(entry)
        value = fn()
        entry["s"] = round(time.monotonic() - began, 3)
        self.durations[kind].append(time.monotonic() - began)
        self.done[kind] += 1
        return value

    # -- ports ---------------------------------------------------------------------------
    def port_op(self) -> None:
        """Boot a new VM (create, bind, plug, ACTIVE, reaches a mesh VM) or remove the oldest churn VM."""
        grow = len(self.alive) < 2 or (len(self.alive) < MAX_CHURN_VMS and self.rng.random() < 0.5)
        if grow:
            self.boot()
        else:
            self.remove(self.alive.pop(0))

    def boot(self) -> None:
        """A new port on a random hypervisor, its VM plugged, then a ping to a random untouched VM."""
        self._serial += 1
        name = f"c{self._serial}"
        host = self.rng.choice(self.hosts)
        vm = self._timed("port_boot", lambda: self.cloud.boot(name, host, mesh=False), f"{name}@{host}")
        self.alive.append(vm)
        own = vm.port["fixed_ips"][0]["ip_address"]
        self.journal[-1]["detail"] += f" {own} {vm.port['mac_address']}"
        # What a booting guest's network scripts do: announce the address (gratuitous ARP). The
        # API hands out the lowest free address, often one a deleted VM held a moment ago, and
        # without this a peer keeps the old MAC for it in its ARP cache for many seconds.
        vm.cmd(f"timeout 2 arping -q -U -c 1 -i eth0 -S {own} {own}")
        peer = self.rng.choice(sorted(self.cloud.untouched))
        ip = self.cloud.ips[peer]
        try:  # the first packet to a peer may be spent on ARP: a few tries
            self._timed("port_first_reply", lambda: wait_until(lambda: answers(vm, ip), 15, f"{name} -> {peer}"),
                        f"{name} -> {peer}")
        except TimeoutError as exc:
            neigh = {n: v.cmd("ip neigh").strip() for n, v in ((name, vm), (peer, self.cloud.vms[peer]))}
            raise TimeoutError(f"{exc}; neighbours: {neigh}") from None

    def remove(self, vm: LabVM) -> None:
        """What Nova does when a VM is deleted: unplug its tap, then delete its port."""
        port_id, what = vm.port_id, f"{vm.name}@{vm.hypervisor.name}"
        self._timed("port_unplug", lambda: self.cloud.lab.unplug_vm(vm), what)
        self._timed("port_delete", lambda: self.cloud.ctl.delete("port", port_id), what)

    # -- floating IP ---------------------------------------------------------------------
    def fip_move(self) -> None:
        """Re-associate the floating IP with the other holder's port (``PUT /v2.0/floatingips/<id>``)."""
        holders = self.cloud.fip_holders
        self._holder = (self._holder + 1) % len(holders)
        port_id = self.cloud.vms[holders[self._holder]].port_id
        fip_id = self.cloud.fip["id"]
        self._timed("fip_move", lambda: self.cloud.ctl.request(
            "PUT", f"/v2.0/floatingips/{fip_id}", {"floatingip": {"port_id": port_id}}), f"to {holders[self._holder]}")

    # -- security groups -----------------------------------------------------------------
    def sg_edit(self) -> None:
        """Add a TCP rule to the group every VM is in, or delete the oldest such rule.

        The rules open ports nobody uses from a prefix nobody has: they change every
        hypervisor's flows (all VMs are members) without changing what the pings may do.
        """
        if len(self.rules) < MAX_EXTRA_RULES and (not self.rules or self.rng.random() < 0.5):
            port = 20000 + self.rng.randrange(10000)
            rule = self._timed("sg_rule_add", lambda: self.cloud.add_rule(
                protocol="tcp", port_range_min=port, port_range_max=port,
                remote_ip_prefix=f"10.99.{self.rng.randrange(256)}.0/24"), f"tcp {port}")
            self.rules.append(rule)
        else:
            rule = self.rules.pop(0)
            self._timed("sg_rule_delete", lambda: self.cloud.ctl.request(
                "DELETE", f"/v2.0/security-group-rules/{rule['id']}"), f"tcp {rule['port_range_min']}")

    def summary(self) -> dict[str, Any]:
        """Counts per kind, errors, and what the churn left alive at the end."""
        return {"done": dict(sorted(self.done.items())), "total": sum(self.done.values()), "errors": self.errors,
                "churn_vms_alive_at_end": len(self.alive), "extra_rules_at_end": len(self.rules)}
