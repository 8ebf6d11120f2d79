"""The control-plane scale lab (apps/lab/scale.py) on real Open vSwitch, at a small scale.

6 hypervisors as dummy-datapath bridges on 2 private vswitchds (3 bridges each, the
per-vswitchd limit made small), attached over OpenFlow TCP to the real
``tenantflow controller`` process; hypervisors, networks and bound ports created
through the real HTTP API. What is proven:

1. Each bridge is laid out as the operator steps say, with its per-bridge ports named
   ``<canonical>@<index>`` (port names are unique within a vswitchd), and holds exactly
   the flows compiled for it: the topology from a snapshot of the controller's SQLite
   file, the bridge's own port map canonicalised, :func:`flows.compiler.compile_hypervisor`.
   Networks alternate VXLAN and Geneve and span hypervisors, so the compiled flows use
   both aliased tunnel ports: a controller that did not count ``tf-vxlan@3`` as
   ``tf-vxlan`` would compile no tunnel flow and fail the comparison.
2. Teardown leaves no process and no directory behind: after a normal exit, an error,
   a Ctrl-C in the middle of the build, and in the CLI (``tenantflow lab --scale``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from apps.lab import sh
from apps.lab.controller import ApiError, ControllerProcess
from apps.lab.scale import ScaleLab
from tests.e2e_fixtures import wait_until
from tests.lab_fixtures import require_lab
from topology.model import TUNNEL_PORT_NAMES, tap_name

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

ROOT = Path(__file__).resolve().parent.parent


def host_bridges() -> str:
    """The host OVS's bridges (empty if it is not running): the scale lab must never change them."""
    return sh.run(["ovs-vsctl", "--timeout=3", "list-br"], check=False)


def assert_gone(pids: set[int], workdir: str) -> None:
    """No daemon of the lab left, no work dir left."""
    assert pids, "the lab had processes"
    assert not [p for p in pids if sh.pid_alive(p)], "every daemon the lab started is gone"
    assert workdir and not os.path.exists(workdir), f"{workdir} removed"


def converged(lab: ScaleLab, ctl: ControllerProcess) -> dict[str, Counter[int]] | None:
    """The compiled cookies if every bridge holds exactly them, else None."""
    expected = lab.compiled_cookies(ctl.db)
    return None if lab.verify(expected) else expected


def test_bridges_hold_exactly_the_compiled_flows(tmp_path: Path) -> None:
    require_lab()
    before = host_bridges()
    with ControllerProcess(str(tmp_path / "ctl")) as ctl:
        lab = ScaleLab(6, f"tcp:127.0.0.1:{ctl.of_port}", ports_per_hv=3, bridges_per_vswitchd=3,
                       api_url=ctl.api_url)
        with lab:
            pids, workdir = lab.pids(), lab.workdir
            assert [len(vs.hypervisors) for vs in lab.vswitchds] == [3, 3] and len(pids) == 4
            assert len({hv.dpid for hv in lab}) == 6
            for hv in lab:
                names = {name: hv.port_name(name) for name in TUNNEL_PORT_NAMES.values()}
                assert set(hv.port_map()) == {hv.bridge, *names.values()}
                assert names["tf-vxlan"] == f"tf-vxlan@{hv.index}" and len(names["tf-geneve"]) <= 15
                vsctl = hv.vswitchd.vsctl
                assert vsctl("get", "bridge", hv.bridge, "datapath_type", "fail_mode", "protocols").split() == [
                    "dummy", "secure", '[OpenFlow13]']
                assert f"{hv.dpid:016x}" in vsctl("get", "bridge", hv.bridge, "other-config:datapath-id")
                opts = vsctl("get", "interface", names["tf-geneve"], "options")
                assert "remote_ip=flow" in opts and "key=flow" in opts and hv.tunnel_ip in opts

            lab.register()
            lab.populate(networks=4)  # vxlan, geneve, vxlan, geneve; 3 ports per hypervisor
            assert {n["provider:network_type"] for n in lab.networks} == {"vxlan", "geneve"}
            assert all(len(hv.ports) == 3 for hv in lab)
            wait_until(lambda: lab.controller_side() == {"connected": 6, "synced": 6}, 20,
                       lambda: f"every switch connected and synced; log:\n{ctl.log_tail()}")
            expected = wait_until(lambda: converged(lab, ctl), 20, lambda: "bridges equal to the compiled flows: "
                                  f"{lab.verify(lab.compiled_cookies(ctl.db))}\n{ctl.log_tail()}", interval=0.2)
            assert all(sum(c.values()) > 20 for c in expected.values())
            for hv in lab:  # the tunnel ports, under their aliases, carry traffic both ways
                flows, ofports = hv.ofctl("dump-flows"), hv.port_map()
                for kind in ("vxlan", "geneve"):  # the populated networks' types
                    name = TUNNEL_PORT_NAMES[kind]
                    num = ofports[hv.port_name(name)]
                    assert re.search(rf"output:{num}\b", flows), (hv.name, name)
                    assert re.search(rf"in_port={num}\b", flows), (hv.name, name)
            statuses = {p["id"]: p["status"] for p in lab.api.list("ports")}
            assert statuses and set(statuses.values()) == {"ACTIVE"}

            # a port created while every vswitchd is stopped: GET /sync?wait= waits (and says it gave up),
            # then answers only once every bridge holds the port's flows (verified at once, no polling)
            daemons = [vs.pids()["ovs-vswitchd"] for vs in lab.vswitchds]
            for pid in daemons:
                os.kill(pid, signal.SIGSTOP)
            try:
                hv2 = lab.hypervisor("hv2")
                port = lab.api.create("port", network_id=lab.networks[1]["id"], port_security_enabled=False,
                                      device_owner="compute:nova", **{"binding:host_id": "hv2"})
                t0 = time.monotonic()
                status = lab.api.request("GET", "/sync?wait=1")
                assert time.monotonic() - t0 >= 1.0 and status["converged"] is False and status["pending"]
            finally:
                for pid in daemons:
                    os.kill(pid, signal.SIGCONT)
            status = lab.api.request("GET", "/sync?wait=20")
            assert status["converged"] is True and status["pending"] == [] and status["connected"] == 6
            assert converged(lab, ctl) is not None, lab.verify(lab.compiled_cookies(ctl.db))
            for bad in ("soon", "-1", "nan", "301"):
                with pytest.raises(ApiError) as refused:
                    lab.api.request("GET", f"/sync?wait={bad}")
                assert refused.value.status == 400 and "wait must be" in refused.value.body["error"]

            # the port plugged, then unplugged: the bridges follow each time
            assert lab.plug("hv2", port) == tap_name(port["id"]) in hv2.port_map()
            after = wait_until(lambda: converged(lab, ctl), 20, "the new port's flows", interval=0.2)
            assert after["hv2"] != expected["hv2"]
            lab.unplug(hv2, port["id"])
            wait_until(lambda: converged(lab, ctl), 20, "the unplugged port's flows gone", interval=0.2)
    assert_gone(pids, workdir)
    assert host_bridges() == before, "the host's Open vSwitch untouched"


def test_teardown_after_an_error_and_a_ctrl_c_in_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    require_lab()
    with pytest.raises(RuntimeError, match="boom"):
        with ScaleLab(4, None, bridges_per_vswitchd=2) as lab:
            pids, workdir = lab.pids(), lab.workdir
            assert len(pids) == 4 and len(lab.controller_status()) == 4
            raise RuntimeError("boom")
    assert_gone(pids, workdir)

    lab = ScaleLab(4, None, bridges_per_vswitchd=2)
    seen: dict[str, object] = {}

    def interrupted(_vs: object) -> None:  # the daemons are up, the bridges not yet
        seen.update(pids=lab.pids(), workdir=lab.workdir)
        raise KeyboardInterrupt

    monkeypatch.setattr(lab, "_add_bridges", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with lab:
            pass
    assert_gone(seen["pids"], seen["workdir"])  # type: ignore[arg-type]


def test_cli_builds_registers_and_tears_down_on_ctrl_c(tmp_path: Path) -> None:
    require_lab()
    with ControllerProcess(str(tmp_path / "ctl")) as ctl:
        cmd = [sys.executable, "-m", "apps.cli", "lab", "--scale", "3", "--bridges-per-vswitchd", "2",
               "--ports-per-hv", "2", "--networks", "2", "--controller", f"tcp:127.0.0.1:{ctl.of_port}",
               "--api", ctl.api_url, "--connect-timeout", "20"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out: list[str] = []
        try:
            deadline = time.monotonic() + 30
            assert proc.stdout is not None
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                out.append(line)
                if line.startswith("Ctrl-C or SIGTERM"):
                    break
            text = "".join(out)
            assert "Ctrl-C or SIGTERM" in text, text
            assert "3/3 bridges connected" in text and "3 of them connected" in text, text
            assert len(ctl.request("GET", "/v2.0/ports")["ports"]) == 6
            pids = {int(p) for p in re.findall(r" pid (\d+)", text)}
            workdir = re.search(r"work dir (\S+)", text).group(1)  # type: ignore[union-attr]
            assert len(pids) == 4 and all(sh.pid_alive(p) for p in pids) and os.path.isdir(workdir)
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, text + rest
        assert "scale lab torn down" in rest
    assert_gone(pids, workdir)
