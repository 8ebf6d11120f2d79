"""Bench section ``ovsdb``: N hypervisors' ovsdb-servers connecting at once to the controller as manager.

The controller is the real process; each "hypervisor" is a bare ovsdb-server (no
ovs-vswitchd: only the control plane is measured) whose br-int carries the datapath id a
registered hypervisor has (set by hand; ovs-vswitchd would fill it in). hv1 is a gateway,
so it must get N-1 ``tg-`` ports in one transaction and every other server one. Figures:

- ``connect_to_written_s``: from the first ``set-manager`` (all N issued in parallel, their
  own time included) until every server holds its ports as the controller's replicas show
  them (each server's own update after the commit; polling N ``ovs-vsctl`` would load the
  machine), then checked once with ``ovs-vsctl`` on every server;
- ``cpu_ms_per_connection``: the controller's CPU over that time, per server (the schema
  handshake and the replica's first fill dominate it);
- ``idle_cpu_ms_per_s``: with N connections open and nothing changing;
- ``unmark_s``: ``gateway_for`` emptied until every ``tg-`` port is gone everywhere;
- ``restart_transactions``: after a SIGKILL and restart of the controller, once every server
  is identified again: the OVSDB transactions it committed (must be 0).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from apps.bench.scale import cpu_s, idle_cpu_rate
from apps.lab import sh
from apps.lab.controller import ControllerProcess
from apps.lab.ovs import SCHEMA, PrivateOVS


def _server(db: PrivateOVS, index: int) -> None:
    """A bare ovsdb-server whose br-int has datapath id ``index``."""
    os.makedirs(db.rundir, exist_ok=True)
    sh.run(["ovsdb-tool", "create", db.db, SCHEMA])
    db.start_ovsdb()
    db.vsctl("--no-wait", "add-br", "br-int", "--", "set", "bridge", "br-int", f"datapath_id={index:016x}")


def _tg_count(db: PrivateOVS) -> int:
    return sum(1 for p in db.vsctl("list-ports", "br-int").split() if p.startswith("tg-"))


def _wait(cond: Any, timeout: float, what: str) -> float:
    """Seconds until ``cond()`` holds; TimeoutError after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"bench ovsdb: {what} not within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def run(quick: bool = False) -> dict[str, Any]:
    """The section's figures (see the module docstring)."""
    n = 50 if quick else 500
    work = tempfile.mkdtemp(prefix="tenantflow-bench-ovsdb-")
    dbs = [PrivateOVS("", os.path.join(work, f"s{i}")) for i in range(1, n + 1)]
    ctl = ControllerProcess(os.path.join(work, "ctl"))
    pool = ThreadPoolExecutor(16)
    try:
        list(pool.map(lambda i: _server(dbs[i - 1], i), range(1, n + 1)))
        ctl.start()
        for i in range(1, n + 1):
            ctl.create("hypervisor", name=f"hv{i}", datapath_id=f"{i:016x}", tunnel_ip=f"10.1.{i // 250}.{i % 250 + 1}",
                       **({"gateway_for": ["physnet1"]} if i == 1 else {}))
        pid, c0, t0 = ctl.proc.pid, cpu_s(ctl.proc.pid), time.monotonic()
        list(pool.map(lambda db: db.vsctl("--no-wait", "set-manager", f"unix:{ctl.ovsdb_socket}"), dbs))
        set_manager_s = time.monotonic() - t0

        def replicas() -> dict[str, int]:
            return {name: len(h["tunnels"]) for name, h in ctl.request("GET", "/ovsdb")["hypervisors"].items()}

        want = {f"hv{i}": n - 1 if i == 1 else 1 for i in range(1, n + 1)}
        _wait(lambda: replicas() == want, 300, "every server's tg- ports")
        figures: dict[str, Any] = {"servers": n, "connect_to_written_s": round(time.monotonic() - t0, 2),
                                   "of_which_set_manager_calls_s": round(set_manager_s, 2),
                                   "cpu_ms_per_connection": round((cpu_s(pid) - c0) / n * 1000, 1)}
        counts = list(pool.map(_tg_count, dbs))
        if counts != [want[f"hv{i}"] for i in range(1, n + 1)]:
            raise AssertionError(f"bench ovsdb: the servers' tg- ports differ from the replicas': {counts[:10]}...")
        figures["idle_cpu_ms_per_s"] = round(idle_cpu_rate(pid, 5.0) * 1000, 1)
        ctl.restart()
        _wait(lambda: len(ctl.request("GET", "/ovsdb")["hypervisors"]) == n, 120, "every server identified again")
        time.sleep(2)
        figures["restart_transactions"] = ctl.metrics().get("tenantflow_ovsdb_transactions_total", 0)
        ctl.request("PUT", "/v2.0/hypervisors/hv1", {"hypervisor": {"gateway_for": []}})
        figures["unmark_s"] = round(_wait(lambda: not any(replicas().values()), 120, "every tg- port gone"), 2)
        if any(pool.map(_tg_count, dbs)):
            raise AssertionError("bench ovsdb: tg- ports left on a server")
        return figures
    finally:
        ctl.stop()
        pool.shutdown()
        for db in dbs:
            db.stop()
        shutil.rmtree(work, ignore_errors=True)
