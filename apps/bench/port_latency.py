"""Port latency: from a port API call to the first (or last) packet delivered to the VM behind it.

Setup: ``tenantflow controller`` as a child process (:class:`ControllerProcess`), a lab of
2 hypervisors attached through its unix socket, one network + subnet. A sender VM on hv1
streams UDP datagrams to 10.0.0.100 every 0.5 ms (:mod:`apps.bench.udp_probe`); a resident
VM on hv2 keeps the network present there (the common case: not the host's first port).
The target "VM" is a namespace on hv2 whose receiver records each datagram's kernel
arrival timestamp (``SO_TIMESTAMPNS``). API call times are ``time.time()`` taken just
before the HTTP request is sent; all processes share this machine's clock.

The sender's ARP entry for 10.0.0.100 is set statically to the port's MAC before every
measurement: otherwise the figure would be the guest's ARP retry timer (1 s), not the
network's readiness. The port's MAC and IP are chosen by the client in the POST.

Three figures, each N times (N=20, quick 5), reported as median / p90 / max in ms:

``create_to_first_delivery``
    t0 = POST /v2.0/ports (bound to hv2 with ``binding:host_id``, fixed MAC and IP).
    Then what Nova does once it has the port id: the VM's NIC, already configured inside
    the VM, gets its hypervisor end renamed to ``tap<port id[:11]>`` and is added to br-int
    with Nova's external_ids. End: kernel arrival of the first datagram in the VM. This
    includes our plug tooling (``ip`` + ``ovs-vsctl add-port``, reported as ``plug_done``:
    when add-port returned, relative to t0, and ``plug_done_to_first_delivery``) — it is
    the API-to-traffic time a user sees.
``bind_to_first_delivery``
    The port exists unbound and its tap is already on br-int of hv2 (nothing is delivered:
    checked); t0 = PUT ``binding:host_id=hv2``. Only the controller's path: API → topology
    → compile → bundle push to both hypervisors → datapath.
``delete_to_last_delivery``
    t0 = DELETE /v2.0/ports/<id> of a port receiving the stream (the tap stays plugged);
    end: kernel arrival of the last datagram delivered. Datagrams are still sent for at
    least 0.5 s afterwards, and any arrival in the last 0.2 s of that window is an error.
    Measured after each of the two ports above, so 2N samples.

Resolution: the send interval (0.5 ms) plus the datapath's transit. One warm-up round
(the first port: cold caches in the controller) is run first and reported apart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from apps.bench.stats import latency_summary, ms
from apps.lab import Lab, sh, steps
from apps.lab.controller import ControllerProcess
from topology.model import tap_name

PREFIX = "tfb"
TARGET_IP = "10.0.0.100"
UDP_PORT = 5000
INTERVAL_S = 0.0005
WATCH_S = 0.5  # traffic watched after a delete
QUIET_S = 0.2  # ...of which the last QUIET_S must see no delivery
TIMEOUT_S = 5.0
SPARE_TAP = "tfbspare"  # the VM NIC's hypervisor end before it is named after the port
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Arrivals:
    """Reads the receiver's lines in a thread; arrival timestamps (and sequence numbers), in order."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.times: list[float] = []
        self.seqs: list[int] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            parts = line.split()
            if len(parts) == 3:
                with self._lock:
                    self.times.append(float(parts[0]))
                    self.seqs.append(int(parts[1]))

    def since(self, t0: float) -> list[float]:
        """Arrival times at or after ``t0``."""
        with self._lock:
            return [t for t in self.times if t >= t0]

    def records_since(self, t0: float) -> list[tuple[float, int]]:
        """(arrival time, sequence number) of the datagrams that arrived at or after ``t0``."""
        with self._lock:
            return [(t, q) for t, q in zip(self.times, self.seqs, strict=True) if t >= t0]

    def first_after(self, t0: float, timeout: float = TIMEOUT_S) -> float:
        """The first arrival at or after ``t0``, waiting for it up to ``timeout``."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.since(t0)
            if got:
                return got[0]
            time.sleep(0.001)
        raise TimeoutError(f"no datagram delivered within {timeout}s")


def last_delivery(t0: float, *streams: Arrivals, watch: float = WATCH_S, quiet: float = QUIET_S,
                  timeout: float = TIMEOUT_S) -> float:
    """Seconds from ``t0`` to the last datagram any of ``streams`` got once the traffic stopped (0: none).

    Watches for at least ``watch`` seconds, until nothing arrived for ``quiet`` seconds;
    still arriving ``timeout`` seconds after ``t0`` is an error.
    """
    time.sleep(watch)
    while True:
        got = sorted(t for s in streams for t in s.since(t0))
        now = time.time()
        if not got or now - got[-1] >= quiet:
            break
        if now - t0 > timeout:
            raise RuntimeError(f"datagrams still delivered {now - t0:.1f}s after t0")
        time.sleep(0.05)
    return (got[-1] - t0) if got else 0.0


class Bench:
    """The lab, the controller, the probe stream and the target NIC; one method per measurement."""

    def __init__(self, workdir: str) -> None:
        self.ctl = ControllerProcess(os.path.join(workdir, "controller"))
        self.lab = Lab(prefix=PREFIX, n_hypervisors=2, controller_unix_socket=self.ctl.unix_socket,
                       api_url=self.ctl.api_url, workdir=os.path.join(workdir, "lab"))
        self.target_ns = f"{PREFIX}-vm-target"
        self.procs: list[subprocess.Popen] = []
        self.taps: set[str] = set()
        self.counter = 0

    # -- setup / teardown --------------------------------------------------------
    def start(self) -> None:
        """Controller, lab, network, sender + resident VMs, target namespace, probe stream."""
        self.ctl.start()
        self.lab.start()
        self.lab.register_hypervisors()
        for hv in self.lab.hypervisors:
            self.ctl.wait_hypervisor_connected(hv.name)
        self.net = self.ctl.create("network", name="latency")
        self.subnet = self.ctl.create("subnet", network_id=self.net["id"], cidr="10.0.0.0/24", ip_version=4)
        self.hv2 = self.lab.hypervisor("hv2")
        ports = [self.ctl.create("port", network_id=self.net["id"], **{"binding:host_id": hv})
                 for hv in ("hv1", "hv2")]
        self.tx = self.lab.plug_vm("tx", ports[0])
        resident = self.lab.plug_vm("resident", ports[1])
        self._wait_active(ports[0]["id"], ports[1]["id"])
        out = self.tx.cmd(f"ping -c3 -i0.2 -W1 {resident.port['fixed_ips'][0]['ip_address']}")
        if " 0% packet loss" not in out:
            raise RuntimeError(f"sanity ping across the overlay failed:\n{out}\n{self.ctl.log_tail()}")
        sh.netns_add(self.target_ns)
        self.receiver = self._spawn(self.target_ns, "recv", str(UDP_PORT))
        if self.receiver.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            raise RuntimeError("UDP receiver did not start")
        self.arrivals = Arrivals(self.receiver)
        self._spawn(self.tx.netns, "send", TARGET_IP, str(UDP_PORT), str(INTERVAL_S))

    def _spawn(self, netns: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "apps.bench.udp_probe", *args],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Everything started, by PID / name we created, even after a failure."""
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.terminate()
                proc.wait(timeout=5)
        for tap in list(self.taps):
            with contextlib.suppress(Exception):
                steps.unplug_vif(self.hv2.vsctl, self.hv2.netns, tap)
        if self.target_ns in sh.netns_list():
            sh.kill_pids(sh.netns_pids(self.target_ns))
            sh.netns_del(self.target_ns)
        try:
            self.lab.stop()
        finally:
            self.ctl.stop()

    def _wait_active(self, *port_ids: str) -> None:
        deadline = time.time() + TIMEOUT_S
        while any(self.ctl.show("port", p)["status"] != "ACTIVE" for p in port_ids):
            if time.time() > deadline:
                raise TimeoutError(f"ports not ACTIVE: {port_ids}\n{self.ctl.log_tail()}")
            time.sleep(0.02)

    # -- the target VM's NIC --------------------------------------------------------
    def _prepare_nic(self) -> tuple[str, str]:
        """A fresh MAC; the VM's eth0 configured with it and TARGET_IP, its other end a spare tap.

        Everything on the VM side is ready before the API call, as a booted VM's NIC
        is; the sender's ARP entry points at the new MAC.
        """
        self.counter += 1
        mac = f"fa:16:3e:be:{self.counter >> 8 & 255:02x}:{self.counter & 255:02x}"
        sh.veth_add(SPARE_TAP, self.hv2.netns, "eth0", self.target_ns, mtu=int(self.net.get("mtu") or 1450))
        self.taps.add(SPARE_TAP)
        steps.configure_vm_nic(self.target_ns, {"mac_address": mac, "fixed_ips": [{"ip_address": TARGET_IP}]})
        sh.run(["ip", "neigh", "replace", TARGET_IP, "lladdr", mac, "dev", "eth0", "nud", "permanent"],
               netns=self.tx.netns)
        return mac, TARGET_IP

    def _plug(self, port: dict[str, Any]) -> str:
        """Nova's plug for an existing NIC: name it tap<id[:11]>, add it to br-int with external_ids."""
        tap = tap_name(port["id"])
        sh.run(["ip", "-n", self.hv2.netns, "link", "set", SPARE_TAP, "down", "name", tap])
        self.taps.discard(SPARE_TAP)
        self.taps.add(tap)
        sh.run(["ip", "-n", self.hv2.netns, "link", "set", tap, "up"])
        self.hv2.vsctl(
            "add-port", steps.INTEGRATION_BRIDGE, tap, "--", "set", "interface", tap,
            f"external_ids:iface-id={port['id']}", f"external_ids:attached-mac={port['mac_address']}",
            "external_ids:iface-status=active", "external_ids:vm-uuid=target",
        )  # fmt: skip
        return tap

    def _unplug(self, tap: str) -> None:
        steps.unplug_vif(self.hv2.vsctl, self.hv2.netns, tap)
        self.taps.discard(tap)

    def _port_body(self, mac: str, ip: str, **extra: Any) -> dict[str, Any]:
        return {"network_id": self.net["id"], "mac_address": mac, "device_owner": "compute:nova",
                "fixed_ips": [{"subnet_id": self.subnet["id"], "ip_address": ip}], **extra}

    # -- measurements -------------------------------------------------------------
    def create_then_delete(self) -> tuple[float, float, float, float]:
        """(create→first delivery, create→plug done, API call duration, delete→last delivery), seconds."""
        mac, ip = self._prepare_nic()
        t0 = time.time()
        port = self.ctl.create("port", **self._port_body(mac, ip, **{"binding:host_id": "hv2"}))
        t_api = time.time()
        tap = self._plug(port)
        t_plug = time.time()
        first = self.arrivals.first_after(t0)
        delete = self.delete_to_last(port["id"])
        self._unplug(tap)
        return first - t0, t_plug - t0, t_api - t0, delete

    def bind_then_delete(self) -> tuple[float, float]:
        """(bind→first delivery, delete→last delivery), seconds."""
        mac, ip = self._prepare_nic()
        port = self.ctl.create("port", **self._port_body(mac, ip))
        t_plugged = time.time()
        tap = self._plug(port)
        time.sleep(WATCH_S)
        leaked = self.arrivals.since(t_plugged)
        if leaked:
            raise RuntimeError(f"{len(leaked)} datagrams delivered to an unbound port's tap")
        t0 = time.time()
        self.ctl.request("PUT", f"/v2.0/ports/{port['id']}", {"port": {"binding:host_id": "hv2"}})
        first = self.arrivals.first_after(t0)
        delete = self.delete_to_last(port["id"])
        self._unplug(tap)
        return first - t0, delete

    def delete_to_last(self, port_id: str) -> float:
        """DELETE the port while it receives the stream; seconds to the last datagram delivered."""
        # the stream must be flowing right now, or "last delivered" means nothing
        time.sleep(0.05)
        if not self.arrivals.since(time.time() - 0.02):
            raise RuntimeError("the probe stream is not being delivered before the delete")
        t0 = time.time()
        self.ctl.delete("port", port_id)
        return last_delivery(t0, self.arrivals)


def run(quick: bool = False) -> dict:
    """Warm-up round, then N rounds of create/delete and bind/delete; figures in ms."""
    n = 5 if quick else 20
    workdir = tempfile.mkdtemp(prefix="tf-bench-latency-")
    bench = Bench(workdir)
    try:
        bench.start()
        warm_create, _, _, warm_delete = bench.create_then_delete()
        creates, plugs, apis, binds, deletes = [], [], [], [], []
        for _ in range(n):
            create, plug, api, delete = bench.create_then_delete()
            creates.append(create)
            plugs.append(plug)
            apis.append(api)
            deletes.append(delete)
            bind, delete = bench.bind_then_delete()
            binds.append(bind)
            deletes.append(delete)
        figures: dict[str, Any] = {"rounds": n, "send_interval_ms": INTERVAL_S * 1e3}
        figures |= latency_summary("create_to_first_delivery", creates)
        figures |= latency_summary("create_plug_done", plugs)
        # after our plug tooling returned (may be < 0: OVS reports the port before ovs-vsctl returns)
        figures |= latency_summary("plug_done_to_first_delivery", [c - p for c, p in zip(creates, plugs, strict=True)])
        figures |= latency_summary("create_api_call", apis)
        figures |= latency_summary("bind_to_first_delivery", binds)
        figures |= latency_summary("delete_to_last_delivery", deletes)
        figures |= {"warmup_create_to_first_delivery_ms": ms(warm_create),
                    "warmup_delete_to_last_delivery_ms": ms(warm_delete)}
        return figures
    except Exception as exc:
        raise RuntimeError(f"port latency bench failed: {exc}\ncontroller log:\n{bench.ctl.log_tail()}") from exc
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)
