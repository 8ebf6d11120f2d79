"""Flow push rate: the controller's bundle push into a real OVS bridge against
``ovs-ofctl --bundle add-flows`` of the very same flows, in the same run.

The bridge lives in the host's Open vSwitch (userspace datapath), carries no
traffic and is deleted afterwards. The controller runs in this process: the
same os-ken app, sync engine and encoder as ``tenantflow controller``.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from flows.ofctl import flow_text
from topology.model import FixedIP, Hypervisor, Network, Port

BRIDGE = "tfbench0"
DPID = 0x7FBE0C0000000001
ROUNDS = 3


def _sh(*cmd: str, timeout: float = 120) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def populate(graph, n_remote_ports: int) -> None:
    """One bench hypervisor hosting a network whose other ports sit on 200 other hypervisors.

    That compiles to ~2 flows per remote port (ARP answer + unicast to its host).
    """
    graph.put_hypervisor(Hypervisor("bench", DPID, "192.0.2.1"))
    for i in range(200):
        graph.put_hypervisor(Hypervisor(f"peer{i}", 0x100 + i, f"192.0.2.{i + 2}" if i < 250 else "192.0.3.1"))
    net = Network("bench-net", "bench", key=1, network_type="vxlan", segmentation_id=4242)
    graph.put_network(net)
    graph.put_port(Port("benchport-0", net.id, "bench", key=1, mac_address="fa:16:3e:00:00:00",
                        binding_host="bench"))
    for i in range(1, n_remote_ports + 1):
        graph.put_port(Port(f"benchport-{i}", net.id, "bench", key=i + 1,
                            mac_address=f"fa:16:3e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                            fixed_ips=(FixedIP("s", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"),),
                            binding_host=f"peer{i % 200}"))


def _flow_count() -> int:
    out = _sh("ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", BRIDGE)
    return int(out.split("flow_count=")[1].split()[0])


def _ofctl_round(path: str) -> float:
    _sh("ovs-ofctl", "-O", "OpenFlow13", "del-flows", BRIDGE)
    t0 = time.perf_counter()
    _sh("ovs-ofctl", "-O", "OpenFlow13", "--bundle", "add-flows", BRIDGE, path, timeout=600)
    return time.perf_counter() - t0


def _controller_round(app, of_port: int, expect: int) -> tuple[float, int]:
    # A fresh connection to an empty bridge: the controller reads 0 flows and pushes all.
    _sh("ovs-vsctl", "del-controller", BRIDGE)
    _sh("ovs-ofctl", "-O", "OpenFlow13", "del-flows", BRIDGE)
    old = app.switches.get(DPID)
    _sh("ovs-vsctl", "set-controller", BRIDGE, f"tcp:127.0.0.1:{of_port}")
    deadline = time.time() + 600
    while time.time() < deadline:
        sw = app.switches.get(DPID)
        if sw is not None and sw is not old and sw.last_push is not None:
            res = sw.last_push
            if not res.committed:
                raise RuntimeError(f"bench push not committed: {res.errors[:3]}")
            return res.seconds, res.added
        time.sleep(0.02)
    raise RuntimeError("controller never pushed the bench bridge")


def run(quick: bool = False) -> dict:
    """Median push seconds of each side over three rounds, and their rate ratio."""
    from controller.main import parse_args, start
    from topology.state import Topology

    n_remote = 5_000 if quick else 50_000
    tmp = tempfile.mkdtemp(prefix="tf-bench-")
    topology = Topology(os.path.join(tmp, "bench.sqlite"))
    with topology.lock:
        populate(topology.graph, n_remote)
        topology.graph.set_ofports("bench", {})
    of_port = _free_port()
    args = parse_args(["--db", os.path.join(tmp, "bench.sqlite"), "--of-host", "127.0.0.1",
                       "--of-port", str(of_port), "--allow-tcp", "--unix-socket", "", "--api-port", "0",
                       "--ovsdb-listen", ""])
    _sh("ovs-vsctl", "--if-exists", "del-br", BRIDGE)
    _sh("ovs-vsctl", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev", "fail_mode=secure",
        "protocols=OpenFlow13", f"other-config:datapath-id={DPID:016x}", "--",
        "add-port", BRIDGE, "tf-vxlan", "--", "set", "interface", "tf-vxlan", "type=vxlan",
        "options:remote_ip=flow", "options:key=flow")
    try:
        running = start(args, topology=topology)
        ofport = int(_sh("ovs-vsctl", "get", "interface", "tf-vxlan", "ofport"))
        with topology.lock:
            topology.graph.set_ofports("bench", {"tf-vxlan": ofport})
            from flows.compiler import compile_hypervisor

            flows = compile_hypervisor(topology.graph, "bench")
        path = os.path.join(tmp, "flows.txt")
        with open(path, "w") as fh:
            fh.write("\n".join(flow_text(f) for f in flows) + "\n")
        ofctl_s, ctl_s = [], []
        for _ in range(ROUNDS):
            ofctl_s.append(_ofctl_round(path))
            if _flow_count() != len(flows):
                raise RuntimeError(f"ovs-ofctl installed {_flow_count()} flows, expected {len(flows)}")
            seconds, added = _controller_round(running.app, of_port, len(flows))
            if _flow_count() != len(flows) or added != len(flows):
                raise RuntimeError(f"controller installed {_flow_count()} flows ({added} sent), "
                                   f"expected {len(flows)}")
            ctl_s.append(seconds)
        ofctl_med, ctl_med = statistics.median(ofctl_s), statistics.median(ctl_s)
        return {
            "flows": len(flows),
            "ofctl_bundle_s_median": ofctl_med,
            "controller_push_s_median": ctl_med,
            "ofctl_flows_per_s": len(flows) / ofctl_med,
            "controller_flows_per_s": len(flows) / ctl_med,
            "ratio_controller_vs_ofctl": ofctl_med / ctl_med,
            "rounds": ROUNDS,
        }
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", BRIDGE], check=False)
        shutil.rmtree(tmp, ignore_errors=True)  # the state file and a flows file of up to ~25 MB
