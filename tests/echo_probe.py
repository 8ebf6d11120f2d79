"""Probe for tests/test_echo_fastpath.py: echo requests while the app's event thread is stuck.

Run as ``python tests/echo_probe.py fake|ovs WORKDIR [--stock] [--bridge NAME]``; prints one
JSON object. Its own process, because os-ken's AppManager is a per-process singleton.

The controller is the real one (``controller.main.start``: the same app, listeners and
sync engine as ``tenantflow controller``), with one change made here, for the test only:
the app's handler of the first switch event named below waits until the probe releases
it, as a handler does when the controller is overloaded. Behind it, the switch's next
events fill the app's queue (128) and os-ken's receive loop for that switch blocks.

- ``fake``: two fake switches (tests/fake_switch.py), one on TCP and one on the unix
  socket; the TCP one sends a packet-in (the app blocks on it) and 400 more, then each
  sends an echo request. Then the app is released, everything is processed, and the
  switches disconnect: the disconnects are reported and the workers end.
- ``ovs``: a bridge of the host's Open vSwitch with ``inactivity_probe=1000``, which
  OVS raises to its minimum of 5 s (rconn): after 5 s without a message from us it sends
  an echo request and drops the connection if 5 s more pass without one. The probe sends
  the bridge 300 barrier requests through the switch's connection; the app blocks on
  the first reply. Held ``--hold`` seconds (13): does OVS keep the connection?

``--stock`` runs os-ken's own connection handling instead of controller.connection (to
show the test catches the failure it guards against).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from controller import app as of_app  # noqa: E402
from controller import connection, metrics, wire  # noqa: E402
from controller.main import parse_args, start  # noqa: E402
from tests.e2e_fixtures import wait_until  # noqa: E402
from tests.fake_switch import FakeSwitch, packet_in  # noqa: E402
from topology.state import Topology  # noqa: E402

HOLD_LIMIT = 60.0  # a held handler lets go by itself after this, whatever happens to the probe
RELEASE = threading.Event()
HELD = threading.Event()


def hold_first(handler_name: str) -> None:
    """Make the app's handler ``handler_name`` wait for RELEASE on its first call (before instantiation)."""
    original = getattr(of_app.TenantflowApp, handler_name)

    def held(self, ev):
        if not HELD.is_set():
            HELD.set()
            RELEASE.wait(HOLD_LIMIT)
        return original(self, ev)

    held.callers = original.callers  # what set_ev_cls registered: the same events and dispatchers
    held.__name__ = original.__name__
    setattr(of_app.TenantflowApp, handler_name, held)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def _controller(workdir: str, stock: bool, unix_socket: str = ""):
    if stock:
        connection.install = lambda **_: None  # os-ken's own datapath_connection_factory (and TCP listener)
    db = os.path.join(workdir, "echo.sqlite")
    of_port = _free_port()
    args = parse_args(["--db", db, "--of-host", "127.0.0.1", "--of-port", str(of_port), "--allow-tcp",
                       "--unix-socket", unix_socket,
                       "--api-port", "0", "--ovsdb-listen", ""])
    return start(args, topology=Topology(db)), of_port


def packet_ins(label: str) -> float:
    """Packet-ins the app has handled for a switch (its label: no hypervisor is registered)."""
    return metrics.REGISTRY.get_sample_value("tenantflow_packet_ins_total", {"hypervisor": label}) or 0.0


def run_fake(workdir: str, stock: bool) -> dict:
    """Two fake switches, the app stuck on the first one's packet-in."""
    hold_first("_packet_in")
    unix_path = os.path.join(workdir, "of.sock")
    running, of_port = _controller(workdir, stock, "" if stock else unix_path)
    app = running.app
    switches = {0xE1: FakeSwitch(("127.0.0.1", of_port), 0xE1)}
    if not stock:
        switches[0xE2] = FakeSwitch(unix_path, 0xE2)
    for dpid in switches:
        wait_until(lambda d=dpid: (s := app.switches.get(d)) is not None and s.ready, 10, f"switch {dpid:x} ready")
    tcp = switches[0xE1]
    tcp.send(packet_in(100))
    wait_until(HELD.is_set, 5, "the app to take the first packet-in")
    tcp.send(b"".join(packet_in(101 + i) for i in range(400)))
    time.sleep(0.3)  # os-ken's receive loop fills the app's queue and blocks
    result: dict = {"stock": stock, "echo_latency": {}, "handled_when_answered": None}
    for n, (dpid, fake) in enumerate(switches.items()):
        sent = fake.echo(7 + n)
        got = fake.wait_echo_reply(7 + n, 3.0)
        result["echo_latency"][f"{dpid:x}"] = None if got is None else got - sent
    result["handled_when_answered"] = packet_ins("?")
    RELEASE.set()
    if stock:
        return result
    # Released: every packet-in reaches the app, in order and whole; echoes still answered.
    wait_until(lambda: packet_ins("?") >= 401, 30, "the app never handled the 401 packet-ins")
    result["handled_after_release"] = packet_ins("?")
    sent = tcp.echo(20)
    got = tcp.wait_echo_reply(20, 3.0)
    result["echo_latency_after"] = None if got is None else got - sent
    # Disconnect: reported (DEAD_DISPATCHER), counted, and each worker ends.
    workers = {dpid: app.switches[dpid] for dpid in switches}
    for fake in switches.values():
        fake.close()
    wait_until(lambda: not any(d in app.switches for d in switches), 10, "a disconnect was never reported")
    result["workers_ended"] = all(sw.join(5) for sw in workers.values())
    result["disconnects"] = {f"{d:x}": metrics.REGISTRY.get_sample_value(
        "tenantflow_switch_disconnects_total", {"hypervisor": f"{d:016x}"}) for d in switches}
    return result


def ovs_log(bridge: str, target: str) -> list[str]:
    """What ovs-vswitchd logged about the bridge's connection to ``target`` (this run's controller)."""
    path = "/var/log/openvswitch/ovs-vswitchd.log"
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as fh:
        return [line.rstrip() for line in fh if f"{bridge}<->{target}" in line]


def run_ovs(workdir: str, stock: bool, bridge: str, hold: float) -> dict:
    """A real bridge probing us while the app is stuck for ``hold`` seconds."""
    hold_first("_barrier")
    dpid = 0x7466EC0000000000 | zlib.crc32(bridge.encode())
    running, of_port = _controller(workdir, stock)
    app = running.app
    _sh("ovs-vsctl", "--if-exists", "del-br", bridge)
    try:
        _sh("ovs-vsctl", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev", "fail_mode=secure",
            "protocols=OpenFlow13", f"other-config:datapath-id={dpid:016x}", "other-config:disable-in-band=true")
        _sh("ovs-vsctl", "set-controller", bridge, f"tcp:127.0.0.1:{of_port}", "--",
            "set", "controller", bridge, "inactivity_probe=1000", "max_backoff=1000")
        sw = wait_until(lambda: (s := app.switches.get(dpid)) is not None and s.ready and s, 15, "bridge connected")
        # 300 barrier replies: the app blocks on the first, the rest fill its queue.
        sw.dp.send(b"".join(wire.barrier_request(0x60000000 + i) for i in range(300)))
        wait_until(HELD.is_set, 5, "the app never took the first barrier reply")
        time.sleep(hold)
        same_switch = app.switches.get(dpid) is sw
        RELEASE.set()
        time.sleep(1.0)
        return {
            "stock": stock,
            "inactivity_probe": _sh("ovs-vsctl", "get", "controller", bridge, "inactivity_probe").strip(),
            "ovs_log": ovs_log(bridge, f"tcp:127.0.0.1:{of_port}"),
            "same_connection": same_switch,
            "fast_path_echo_replies": getattr(sw.dp.socket, "echo_replies", None),
            "reconnected": app.switches.get(dpid) is not sw,
            "disconnects": metrics.REGISTRY.get_sample_value("tenantflow_switch_disconnects_total",
                                                             {"hypervisor": f"{dpid:016x}"}) or 0.0,
        }
    finally:
        RELEASE.set()
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", bridge], check=False, capture_output=True)


def main() -> None:
    """Parse the arguments, run one mode, print its JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["fake", "ovs"])
    p.add_argument("workdir")
    p.add_argument("--stock", action="store_true")
    p.add_argument("--bridge", default="tfecho0")
    p.add_argument("--hold", type=float, default=13.0, help="ovs: seconds the app stays stuck")
    a = p.parse_args()
    result = run_fake(a.workdir, a.stock) if a.mode == "fake" else run_ovs(a.workdir, a.stock, a.bridge, a.hold)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    # os-ken's threads do not shut down cleanly (HubThread.kill): leave with os._exit,
    # on failure too, or the interpreter would wait for them forever.
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)
