"""Port create to flows on the switch (issue #3): how long until the datapath knows a new port.

Setup: ``tenantflow controller`` as a child process (:class:`ControllerProcess`), a lab of
2 hypervisors (prefix ``tfp``) attached through its unix socket, one network + subnet,
and one resident port with its VM already plugged on each of hv1 and hv2 (so the
network is present on both: the common case, not a host's first port).

How a flow's arrival is seen: no polling. On each hypervisor an OpenFlow flow monitor
(``ovs-ofctl -O OpenFlow13 --timestamp monitor br-int watch:!initial,table=N``, the
Nicira flow-monitor extension, over the bridge's management socket in the hypervisor's
run dir, not the controller's connection) streams every flow added, modified or deleted
in table N as ovs-vswitchd commits it (ovs-ofctl prints these updates on stderr,
unbuffered). ``--timestamp`` makes ovs-ofctl stamp each update with the wall clock (UTC)
when it received it, rounded down to the ms; a reader thread also stamps
the line with ``time.time()`` when it reads it. The update's time is the earlier of the reader's
stamp and ovs-ofctl's stamp + 1 ms: both are upper bounds of when ovs-ofctl received it, so
a figure never reads short, and reads long by at most 1 ms plus the pipe's latency. Start
times are ``time.time()`` taken just before the request or command. Everything runs on this
machine: one clock.

Two figures, each N times (N=50, quick 10), reported as median / p90 / max (and min) in ms:

``create_to_remote_l2``
    t0 = just before the client sends ``POST /v2.0/ports`` (``binding:host_id=hv2``, MAC and
    IP chosen by the server). End: the new port's unicast L2 lookup flow (table 30,
    ``dl_dst=<its MAC>``, which sends the frame down the tunnel to hv2) is added on the
    REMOTE hypervisor hv1's br-int. This flow does not wait for the port's tap: the binding
    alone says where the MAC lives. ``create_api_call`` is the POST's own round trip, for
    reference: the write only marks the affected switches dirty and each switch's own thread
    recompiles and pushes, so the flow may land before or after the client has the answer.
``plug_to_local_deliver``
    On the binding host the port's classify and deliver flows need its tap's OpenFlow port,
    and our API does not let the client choose the port id (so the tap cannot be plugged
    before the POST under its future name). So this is measured from what Nova does once it
    has the port: the VM's tap (a veth, created beforehand, as libvirt does) is added with
    ``ovs-vsctl add-port br-int tap<id[:11]> -- set interface ... external_ids:iface-id=<id>
    ...``; t1 = just before that command starts. End: the port's deliver flow (table 60,
    ``actions=output:<the tap's ofport>``) is added on hv2's br-int. This includes
    ovs-vsctl's own run time (it waits for ovs-vswitchd to apply the change), OVS telling the
    controller (PORT_STATUS), the controller's recompile and the bundle push.
    ``plug_command`` is that add-port's own run time, for reference.

Between rounds the port is deleted and its tap unplugged, and the run waits until both
flows are gone again, so every round starts from the same state. One warm-up round is
run first and reported apart.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from typing import Any

from apps.bench.stats import latency_summary, ms
from apps.lab import Lab, sh, steps
from apps.lab.controller import ControllerProcess
from apps.lab.lab import Hypervisor
from topology.model import tap_name

PREFIX = "tfp"
TIMEOUT_S = 10.0
L2_TABLE = 30
DELIVER_TABLE = 60
SPARE_PEER = "tfpvm"  # the VM end of the new tap's veth (stays in the hypervisor's namespace)
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}): ?(.*)$")
_EVENT = re.compile(r"\bevent=(ADDED|MODIFIED|DELETED)\b")


class FlowMonitor:
    """``ovs-ofctl monitor br-int watch:!initial,table=N`` on one hypervisor, its updates timestamped."""

    def __init__(self, hv: Hypervisor, table: int) -> None:
        self.table = table
        self.events: list[tuple[float, str, str]] = []  # (time, ADDED/MODIFIED/DELETED, flow text)
        self._cond = threading.Condition()
        self.proc = hv.ovs.ofctl_popen("--timestamp", "monitor", steps.INTEGRATION_BRIDGE,
                                       f"watch:!initial,table={table}",
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stamp: float | None = None
        for line in self.proc.stdout:  # type: ignore[union-attr]
            now = time.time()
            m = _STAMP.match(line)
            if m:  # "2024-01-01 12:00:00.123: NXST_FLOW_MONITOR reply ..." starts one message
                stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(
                    tzinfo=UTC).timestamp()
                line = m.group(2)
            ev = _EVENT.search(line)
            if ev is None:
                continue
            t = min(now, stamp + 0.001) if stamp is not None else now
            with self._cond:
                self.events.append((t, ev.group(1), line.strip()))
                self._cond.notify_all()

    def wait(self, since: float, pattern: str, kinds: tuple[str, ...] = ("ADDED", "MODIFIED"),
             timeout: float = TIMEOUT_S) -> float:
        """Time of the first update of one of ``kinds`` at or after ``since`` whose flow matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, kind, text in self.events:
                    if t >= since and kind in kinds and rx.search(text):
                        return t
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"table {self.table}: no {'/'.join(kinds)} flow matching {pattern!r} "
                                       f"within {timeout}s; last updates: {self.events[-5:]}")
                self._cond.wait(left)

    def stop(self) -> None:
        """Terminate the monitor (our own child, by its Popen)."""
        with contextlib.suppress(Exception):
            self.proc.terminate()
            self.proc.wait(timeout=5)


class Bench:
    """Controller, lab, resident VMs, one flow monitor per hypervisor; one method per round."""

    def __init__(self, workdir: str) -> None:
        self.ctl = ControllerProcess(os.path.join(workdir, "controller"), extra_args=["--log-level", "WARNING"])
        self.lab = Lab(prefix=PREFIX, n_hypervisors=2, controller_unix_socket=self.ctl.unix_socket,
                       api_url=self.ctl.api_url, workdir=os.path.join(workdir, "lab"))
        self.monitors: list[FlowMonitor] = []
        self.taps: set[str] = set()

    def start(self) -> None:
        self.ctl.start()
        self.lab.start()
        self.lab.register_hypervisors()
        for hv in self.lab.hypervisors:
            self.ctl.wait_hypervisor_connected(hv.name)
        self.hv1, self.hv2 = self.lab.hypervisor("hv1"), self.lab.hypervisor("hv2")
        self.net = self.ctl.create("network", name="port-to-flows")
        self.ctl.create("subnet", network_id=self.net["id"], cidr="10.0.0.0/22", ip_version=4)
        residents = [self.ctl.create("port", network_id=self.net["id"], device_owner="compute:nova",
                                     **{"binding:host_id": hv}) for hv in ("hv1", "hv2")]
        for i, port in enumerate(residents):
            self.lab.plug_vm(f"r{i + 1}", port)
        deadline = time.monotonic() + TIMEOUT_S
        while any(self.ctl.show("port", p["id"])["status"] != "ACTIVE" for p in residents):
            if time.monotonic() > deadline:
                raise TimeoutError("resident ports never became ACTIVE")
            time.sleep(0.02)
        self.remote_l2 = FlowMonitor(self.hv1, L2_TABLE)
        self.local_deliver = FlowMonitor(self.hv2, DELIVER_TABLE)
        self.monitors = [self.remote_l2, self.local_deliver]
        time.sleep(0.2)  # the monitors' requests are in before the first round

    def stop(self) -> None:
        for mon in self.monitors:
            mon.stop()
        for tap in list(self.taps):
            with contextlib.suppress(Exception):
                steps.unplug_vif(self.hv2.vsctl, self.hv2.netns, tap)
        try:
            self.lab.stop()
        finally:
            self.ctl.stop()

    def round(self) -> tuple[float, float, float, float]:
        """(POST → hv1 table 30 flow, POST round trip, add-port → hv2 table 60 flow, add-port run time), s."""
        body = {"port": {"network_id": self.net["id"], "device_owner": "compute:nova", "binding:host_id": "hv2"}}
        t0 = time.time()
        port = self.ctl.request("POST", "/v2.0/ports", body)["port"]
        t_api = time.time()
        mac = port["mac_address"].lower()
        remote = self.remote_l2.wait(t0, rf"dl_dst={re.escape(mac)}\b")

        tap = tap_name(port["id"])
        sh.veth_add(tap, self.hv2.netns, SPARE_PEER, self.hv2.netns, mtu=int(self.net.get("mtu") or 1450))
        self.taps.add(tap)
        t1 = time.time()
        self.hv2.vsctl(
            "add-port", steps.INTEGRATION_BRIDGE, tap, "--", "set", "interface", tap,
            f"external_ids:iface-id={port['id']}", f"external_ids:attached-mac={port['mac_address']}",
            "external_ids:iface-status=active", "external_ids:vm-uuid=port-to-flows",
        )  # fmt: skip
        t_plugged = time.time()
        ofport = self.hv2.ofport(tap)
        out = rf"actions=output:{ofport}$"
        local = self.local_deliver.wait(t1, out)

        t_del = time.time()
        self.ctl.delete("port", port["id"])
        steps.unplug_vif(self.hv2.vsctl, self.hv2.netns, tap)
        self.taps.discard(tap)
        self.remote_l2.wait(t_del, rf"dl_dst={re.escape(mac)}\b", kinds=("DELETED",))
        self.local_deliver.wait(t_del, out, kinds=("DELETED",))
        return remote - t0, t_api - t0, local - t1, t_plugged - t1


def run(quick: bool = False) -> dict:
    """Warm-up round, then N rounds; figures in ms."""
    n = 10 if quick else 50
    workdir = tempfile.mkdtemp(prefix="tf-bench-p2f-")
    bench = Bench(workdir)
    try:
        bench.start()
        warm_remote, _, warm_local, _ = bench.round()
        remotes, apis, locals_, plugs = [], [], [], []
        for _ in range(n):
            remote, api, local, plug = bench.round()
            remotes.append(remote)
            apis.append(api)
            locals_.append(local)
            plugs.append(plug)
        figures: dict[str, Any] = {"rounds": n}
        figures |= latency_summary("create_to_remote_l2", remotes)
        figures |= latency_summary("create_api_call", apis)
        figures |= latency_summary("plug_to_local_deliver", locals_)
        figures |= latency_summary("plug_command", plugs)
        figures |= {"warmup_create_to_remote_l2_ms": ms(warm_remote),
                    "warmup_plug_to_local_deliver_ms": ms(warm_local)}
        return figures
    except Exception as exc:
        raise RuntimeError(f"port-to-flows bench failed: {exc}\ncontroller log:\n{bench.ctl.log_tail()}") from exc
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)
