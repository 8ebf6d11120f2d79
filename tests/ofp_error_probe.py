"""Probe for tests/test_e2e_restart.py: an OpenFlow error inside a bundle, against a real OVS bridge.

Run as ``python tests/ofp_error_probe.py BRIDGE WORKDIR``; prints one JSON object.
It runs in its own process because os-ken's AppManager is a per-process singleton:
the controller started here (``controller.main.start``, the same app, sync engine and
encoder as ``tenantflow controller``, with its REST API) must be the only one.

A valid topology never compiles to a flow OVS refuses, so the bad flow is built
directly as a :class:`flows.flow.Flow` record, bypassing ``make_flow``: it sets
``arp_op`` without matching ``eth_type=0x0806``, which OVS rejects as inconsistent.
The bridge is created in the host's Open vSwitch (userspace datapath, no ports, no
traffic) and always deleted again.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.request
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from controller import metrics  # noqa: E402
from controller.main import parse_args, start  # noqa: E402
from flows.flow import Flow, SetField, make_flow  # noqa: E402
from flows.pipeline import stage  # noqa: E402
from tests.probe_support import free_port, print_and_exit  # noqa: E402
from topology.state import Topology  # noqa: E402

HV = "errhv"


def dpid_for(bridge: str) -> int:
    """A datapath id of our own, distinct per bridge name (concurrent runs use distinct bridges)."""
    return 0x7466E2E000000000 | zlib.crc32(bridge.encode())


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def _cookies(bridge: str) -> list[int]:
    """Cookies of every flow on the bridge, as the switch itself reports them."""
    out = _sh("ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", bridge)
    return [int(line.split("cookie=")[1].split(",")[0], 16) for line in out.splitlines() if "cookie=" in line]


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(what)


class _Collect(logging.Handler):
    """Keeps the controller's ERROR records: the test checks what an operator would read."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def good_flows() -> list[Flow]:
    """Three valid flows of the l2 lookup stage (a network key no topology here uses)."""
    l2, deliver = stage("ls_in_l2_lookup"), stage("ls_out_deliver")
    return [
        make_flow(l2, "unicast", {"reg6": 0x4242, "eth_dst": f"fa:16:3e:00:42:{i:02x}"},
                  [SetField("reg5", 0x4200 + i)], goto=deliver, description=f"probe good flow {i}")
        for i in range(3)
    ]


def bad_flow() -> Flow:
    """set_field arp_op on a flow that does not match ARP: OVS answers OFPBAC_MATCH_INCONSISTENT."""
    table = stage("ls_in_arp_rsp").table_id
    return Flow(table_id=table, priority=100, match=(("reg6", 0x4242),), actions=(SetField("arp_op", 2),),
                goto=None, cookie=(table << 56) | 0xBAD0BAD0BAD0, description="probe bad flow: arp_op without ARP")


def run(bridge: str, workdir: str) -> dict:
    """Start the controller on ``bridge``, push good+bad then good, report what happened."""
    dpid = dpid_for(bridge)
    collect = _Collect()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger().addHandler(collect)
    db = os.path.join(workdir, "probe.sqlite")
    topology = Topology(db)
    topology.register_hypervisor({"name": HV, "datapath_id": f"{dpid:016x}", "tunnel_ip": "192.0.2.1"})
    of_port, api_port = free_port(), free_port()
    args = parse_args(["--db", db, "--of-host", "127.0.0.1", "--of-port", str(of_port), "--allow-tcp",
                       "--unix-socket", "", "--api-host", "127.0.0.1", "--api-port", str(api_port),
                       "--ovsdb-listen", ""])
    _sh("ovs-vsctl", "--if-exists", "del-br", bridge)
    _sh("ovs-vsctl", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev", "fail_mode=secure",
        "protocols=OpenFlow13", f"other-config:datapath-id={dpid:016x}", "other-config:disable-in-band=true")
    try:
        running = start(args, topology=topology)
        app = running.app
        _sh("ovs-vsctl", "set-controller", bridge, f"tcp:127.0.0.1:{of_port}")
        # Connected and synced (the default flows of an empty hypervisor are on the switch).
        sw = _wait(lambda: (s := app.switches.get(dpid)) is not None and s.ready and s.last_push is not None
                   and s.last_push.committed and s, 15, "bridge never connected and synced")
        baseline = sorted(_cookies(bridge))
        good, bad = good_flows(), bad_flow()
        bundles_before = _bundle_counts()
        # good, bad, good: flows before AND after the refused one must be discarded with it
        first = sw.push([], [good[0], bad, *good[1:]])
        after_first = sorted(_cookies(bridge))
        second = sw.push([], good)
        after_second = sorted(_cookies(bridge))
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/v2.0/networks", timeout=5) as resp:
            api_status = resp.status
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5) as resp:
            metrics_text = resp.read().decode()
        return {
            "baseline": baseline,
            "good_cookies": [f.cookie for f in good],
            "bad_cookie": bad.cookie,
            "bad_description": bad.description,
            "first": {"committed": first.committed, "errors": first.errors, "added": first.added},
            "after_first": after_first,
            "second": {"committed": second.committed, "errors": second.errors, "added": second.added},
            "after_second": after_second,
            "bundles_delta": {k: v - bundles_before.get(k, 0) for k, v in _bundle_counts().items()},
            "of_errors": metrics.REGISTRY.get_sample_value("tenantflow_of_errors_total", {"hypervisor": HV}),
            "switch_still_connected": app.switches.get(dpid) is sw and sw.ready,
            "api_status": api_status,
            "metrics_has_discarded": f'tenantflow_bundles_total{{hypervisor="{HV}",outcome="discarded"}} 1.0'
            in metrics_text,
            "error_log": collect.lines,
        }
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", bridge], check=False, capture_output=True)


def _bundle_counts() -> dict[str, float]:
    return {outcome: metrics.REGISTRY.get_sample_value("tenantflow_bundles_total",
                                                      {"hypervisor": HV, "outcome": outcome}) or 0.0
            for outcome in ("committed", "discarded", "failed")}


if __name__ == "__main__":
    print_and_exit(lambda: run(sys.argv[1], sys.argv[2]))
