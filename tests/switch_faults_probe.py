"""Probe for tests/test_switch_faults.py: switches that flap, stall, send garbage or share a datapath id.

Run as ``python tests/switch_faults_probe.py flap|stall|garbage|duplicate WORKDIR``; prints one JSON
object. Its own process, because os-ken's AppManager is a per-process singleton. The controller is
the real one (``controller.main.start``: the same app, listeners, sync engine and API as
``tenantflow controller``), on plain TCP on loopback; the switches are tests/fake_switch.py over
real TCP sockets, each hypervisor's flows kept in a ``bridge`` that outlives its connections, as
OVS keeps them. "Compiled" is computed independently (:func:`apps.lab.controller.compile_stored`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import struct
import sys
import threading
import time
import urllib.request
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apps.lab.controller import compile_stored  # noqa: E402
from controller import connection, metrics, switch  # noqa: E402
from controller.main import parse_args, start  # noqa: E402
from flows.flow import Output  # noqa: E402
from tests.e2e_fixtures import wait_until  # noqa: E402
from tests.fake_switch import FakeSwitch, message  # noqa: E402
from tests.probe_support import free_port, print_and_exit  # noqa: E402
from topology.state import Topology  # noqa: E402


class Collect(logging.Handler):
    """Every WARNING and above the controller logs, and whether any carried a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        self.tracebacks += bool(record.exc_info)

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines)


class Cloud:
    """The controller with a few hypervisors registered (fake datapath ids), its API, and their bridges."""

    def __init__(self, workdir: str, hypervisors: dict[str, int]):
        self.log = Collect()
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger().addHandler(self.log)
        logging.getLogger("tenantflow").setLevel(logging.INFO)
        self.db = os.path.join(workdir, "faults.sqlite")
        topology = Topology(self.db)
        for i, (name, dpid) in enumerate(hypervisors.items()):
            topology.register_hypervisor({"name": name, "datapath_id": f"{dpid:016x}", "tunnel_ip": f"192.0.2.{i + 1}"})
        self.of_port, api_port = free_port(), free_port()
        args = parse_args(["--db", self.db, "--of-host", "127.0.0.1", "--of-port", str(self.of_port), "--allow-tcp",
                           "--unix-socket", "", "--api-host", "127.0.0.1", "--api-port", str(api_port),
                           "--ovsdb-listen", ""])
        self.api = f"http://127.0.0.1:{api_port}"
        self.running = start(args, topology=topology)
        self.app = self.running.app
        self.hypervisors = hypervisors
        self.bridges = {name: Counter() for name in hypervisors}
        self.net = self.call("POST", "/v2.0/networks", {"network": {"name": "faults"}})["network"]
        self.call("POST", "/v2.0/subnets", {"subnet": {"network_id": self.net["id"], "cidr": "10.9.0.0/24",
                                                       "ip_version": 4}})

    def call(self, method: str, path: str, body=None) -> dict:
        req = urllib.request.Request(self.api + path, data=json.dumps(body).encode() if body else None,
                                     method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else {}

    def port(self, hv: str) -> dict:
        """A port bound to ``hv`` (its flows change)."""
        return self.call("POST", "/v2.0/ports", {"port": {"network_id": self.net["id"], "device_owner": "compute:nova",
                                                          "binding:host_id": hv}})["port"]

    def connect(self, hv: str, **kw) -> FakeSwitch:
        return FakeSwitch(("127.0.0.1", self.of_port), self.hypervisors[hv], bridge=self.bridges[hv], **kw)

    def compiled(self, hv: str) -> Counter:
        """The cookies ``hv`` must hold, compiled from the stored topology (no ports on a fake bridge)."""
        return Counter(f.cookie for f in compile_stored(self.db, {hv: {}})[hv])

    def equal(self, hv: str) -> bool:
        sw = self.app.switches.get(self.hypervisors[hv])
        return (sw is not None and sw.holds(self.app.engine.generation_of(hv)) and not sw.diverged
                and self.bridges[hv] == self.compiled(hv))

    def wait_equal(self, hv: str, timeout: float = 15) -> None:
        wait_until(lambda: self.equal(hv), timeout, f"{hv} equal to its compiled flows")


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0


def census() -> dict:
    """Threads by name, and the objects the collector tracks (after a full collection, nothing frozen)."""
    gc.disable()  # controller.heap freezes only while the collector is enabled: none during the count
    try:
        time.sleep(0.1)  # a freeze under way ends
        frozen = gc.get_freeze_count()  # a cycle frozen and then dropped stays here for good: a leak
        gc.unfreeze()  # what controller.heap froze counts too
        gc.collect()
        objs = gc.get_objects()
    finally:
        gc.enable()
    kinds = Counter(type(o).__name__ for o in objs)
    return {"threads": threading.active_count(),
            "thread_names": sorted(Counter(t.name.split("-")[0] for t in threading.enumerate()).items()),
            "objects": len(objs), "frozen": frozen,
            "connections": {k: kinds[k] for k in ("Switch", "TenantflowDatapath", "FastEchoSocket", "SendQueue")},
            "timers": sum(isinstance(t, threading.Timer) for t in threading.enumerate())}


# -- modes -----------------------------------------------------------------------------------------
def run_flap(workdir: str) -> dict:
    """100 connections of one bridge within a minute, with its flows wiped or tampered now and then."""
    cloud = Cloud(workdir, {"flaphv": 0xF1A9})
    for _ in range(3):
        cloud.port("flaphv")
    fake = cloud.connect("flaphv")
    cloud.wait_equal("flaphv")
    fake.close()
    wait_until(lambda: not cloud.app.switches, 10, "the warm-up connection gone")
    time.sleep(1.5)  # the heap thread's freeze and the workers' ends settle
    before = census()
    rng, stray, started = random.Random(15), 0x0BAD0000000000, time.monotonic()
    for i in range(100):
        if i % 10 == 3:
            cloud.bridges["flaphv"].clear()  # as after a vswitchd restart: every flow gone
        if i % 10 == 7:
            cloud.bridges["flaphv"][stray + i] = 1  # a stray flow, added while disconnected
        fake = cloud.connect("flaphv")
        fake.features_sent.wait(5)  # handshaken: every connection is a bridge the app saw (and counts gone)
        # Up for a moment (sometimes synced, sometimes cut mid-sync); now and then long enough for
        # controller.heap to freeze the connection's objects (a cycle among them would never be freed).
        time.sleep(1.1 if i % 10 == 5 else rng.uniform(0.0, 0.25))
        fake.close()
    flap_seconds = time.monotonic() - started
    final = cloud.connect("flaphv")
    cloud.wait_equal("flaphv")
    # The final connection: its reader, os-ken's two threads, its worker, and the fake switch's reader.
    wait_until(lambda: threading.active_count() <= before["threads"] + 5, 15,
               lambda: f"the flapped connections' threads gone: {census()['thread_names']} vs {before['thread_names']}")
    final.close()
    wait_until(lambda: not cloud.app.switches, 10, "the final connection gone")
    time.sleep(1.5)
    after = census()
    return {"flap_seconds": flap_seconds, "before": before, "after": after,
            "disconnects": sample("tenantflow_switch_disconnects_total", hypervisor="flaphv"),
            "tracebacks": cloud.log.tracebacks}


def run_stall(workdir: str) -> dict:
    """One bridge stops reading; another bridge, the API and the memory carry on; then it is disconnected."""
    connection.IO_TIMEOUT = 3.0  # the stall bound (60 s in production), short for the test
    cloud = Cloud(workdir, {"stallhv": 0x57A1, "okhv": 0x0C0C})
    stalled, ok = cloud.connect("stallhv", rcvbuf=4096), cloud.connect("okhv")
    cloud.wait_equal("stallhv")
    cloud.wait_equal("okhv")
    sw = cloud.app.switches[0x57A1]
    stalled.stop_reading()
    # From this (non-worker) thread, as the app's packet-in handler sends: 8,000 packet-outs of 1.4 KB.
    frame, slowest, dropped0 = b"\x00" * 1400, 0.0, sample("tenantflow_switch_send_dropped_total", hypervisor="stallhv")
    peak = 0
    for _ in range(8000):
        t = time.monotonic()
        try:
            sw.packet_out([Output(1)], frame)
        except ConnectionError:
            pass
        slowest = max(slowest, time.monotonic() - t)
        peak = max(peak, sw.dp.out.queued)
    # ...and its worker has a push to make: ports bound to it (the API answers meanwhile).
    api_seconds = []
    for _ in range(3):
        t = time.monotonic()
        cloud.port("stallhv")
        api_seconds.append(time.monotonic() - t)
    # The other bridge is served meanwhile: a change reaches it, its echo is answered.
    t = time.monotonic()
    cloud.port("okhv")
    cloud.wait_equal("okhv")
    ok_sync = time.monotonic() - t
    sent = ok.echo(77)
    got = ok.wait_echo_reply(77, 3.0)
    peak = max(peak, sw.dp.out.queued)
    wait_until(lambda: 0x57A1 not in cloud.app.switches, 15, "the stalled switch disconnected")
    stalled_ok_after = cloud.equal("okhv")
    return {"slowest_packet_out": slowest, "dropped": sample("tenantflow_switch_send_dropped_total",
                                                             hypervisor="stallhv") - dropped0,
            "peak_queued": peak, "queue_limit": connection.SEND_QUEUE_BYTES, "api_seconds": api_seconds,
            "ok_sync_seconds": ok_sync, "ok_echo": None if got is None else got - sent,
            "ok_still_equal": stalled_ok_after,
            "stalls": sample("tenantflow_switch_stalls_total", hypervisor="stallhv"),
            "stall_log_lines": cloud.log.count("stalled"), "log": cloud.log.lines[-10:],
            "tracebacks": cloud.log.tracebacks}


def run_garbage(workdir: str) -> dict:
    """Unknown types, unparsable bodies, a bad length, a wrong version: counted, logged once, never a crash."""
    cloud = Cloud(workdir, {"garbhv": 0x6A7B})
    cloud.port("garbhv")
    fake = cloud.connect("garbhv")
    cloud.wait_equal("garbhv")
    first = cloud.app.switches[0x6A7B]
    for _ in range(3):
        fake.send(message(99, 0, b"\x01" * 8))  # a type OpenFlow 1.3 does not have
        fake.send(message(14, 0, b"\x00" * 40))  # a flow-mod: a switch never sends one
        fake.send(message(12, 0, b"\x00" * 8))  # a port status far too short for its body
    sent = fake.echo(5)
    echo_after_junk = fake.wait_echo_reply(5, 3.0)
    cloud.port("garbhv")  # still synced after the junk
    cloud.wait_equal("garbhv")
    same_connection = cloud.app.switches.get(0x6A7B) is first
    fake.send(struct.pack("!BBHI", 4, 10, 4, 0))  # a length below the header: the stream cannot be framed
    wait_until(lambda: fake.closed.is_set(), 10, "the connection with a bad length closed")
    fake = cloud.connect("garbhv")
    cloud.wait_equal("garbhv")
    fake.send(bytes(random.Random(1).randrange(256) for _ in range(64)).replace(b"\x04", b"\x05"))  # no 1.3 header
    wait_until(lambda: fake.closed.is_set(), 10, "the connection sending garbage closed")
    fake = cloud.connect("garbhv")
    cloud.wait_equal("garbhv")
    with urllib.request.urlopen(cloud.api + "/v2.0/networks", timeout=5) as resp:
        api_status = resp.status
    kinds = {k: sample("tenantflow_of_malformed_total", hypervisor="garbhv", kind=k)
             for k in ("unknown_type", "unparsable", "bad_length", "bad_version")}
    return {"echo_after_junk": None if echo_after_junk is None else echo_after_junk - sent,
            "same_connection_after_junk": same_connection, "kinds": kinds, "api_status": api_status,
            "log_lines": {k: cloud.log.count(f"kind='{k}'") for k in kinds}, "tracebacks": cloud.log.tracebacks,
            "log": cloud.log.lines[-12:], "equal_at_end": cloud.equal("garbhv")}


def run_duplicate(workdir: str) -> dict:
    """Two connections claiming one datapath id: the newer wins once; a fight is held down, logged once."""
    cloud = Cloud(workdir, {"duphv": 0xD0D0})
    cloud.port("duphv")
    a = cloud.connect("duphv")
    cloud.wait_equal("duphv")
    b = cloud.connect("duphv")
    wait_until(lambda: a.closed.is_set(), 10, "the older connection closed")
    wait_until(lambda: cloud.app.switches[0xD0D0].dp.address[1] == b.sock.getsockname()[1], 10, "the newer one in")
    cloud.wait_equal("duphv")
    replaced_log = cloud.log.count("duplicate datapath id: a newer connection")
    # Now two live switches keep claiming it: a, then b again, a...: past the burst newcomers are refused.
    fighters, refused = [b], 0
    for _ in range(6):
        fighters.append(cloud.connect("duphv"))
        time.sleep(0.3)
    holder = cloud.app.switches[0xD0D0]
    for f in fighters:
        refused += f.closed.is_set()
    time.sleep(0.5)
    cloud.wait_equal("duphv")
    return {"replaced_log_lines": replaced_log, "refused_or_replaced": refused,
            "holder_alive": holder.alive and any(not f.closed.is_set() for f in fighters),
            "open_fighters": sum(not f.closed.is_set() for f in fighters),
            "hold_log_lines": cloud.log.count("refusing others"),
            "duplicates": sample("tenantflow_switch_duplicate_dpid_total", hypervisor="duphv"),
            "tracebacks": cloud.log.tracebacks, "log": cloud.log.lines[-8:]}


def main() -> dict:
    """Run the mode named on the command line."""
    mode, workdir = sys.argv[1], sys.argv[2]
    switch.REPLY_TIMEOUT = 10.0
    return {"flap": run_flap, "stall": run_stall, "garbage": run_garbage, "duplicate": run_duplicate}[mode](workdir)


if __name__ == "__main__":
    print_and_exit(main)
