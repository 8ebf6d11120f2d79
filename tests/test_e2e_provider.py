"""Provider bridges wired by the controller (issue #13): the operator makes only the bridge and its NIC.

The real controller process, two lab hypervisors attached with the operator steps (step 5: ``br-phys``
with its NIC ``physnet0``, nothing else) and a host outside the cloud on the provider network. The
controller, as each host's OVSDB manager, patches ``br-phys`` to br-int, makes it secure and points it
at br-int's controllers; over that connection it keeps the bridge's two flows. Proved on the switches
and with packets: the ports, columns and flows appear with no manual step; a flat provider network's
VMs on both hypervisors answer the outside host; a flow deleted by hand comes back and one added by
hand goes; a controller restart sends the provider bridges no flow-mod and the outside host's pings
through them lose nothing; and a bridge patched and wired by hand (the manual way, no manager) is
adopted as it is when the controller becomes its manager: nothing rewritten.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.lab import Lab, LabVM, steps
from apps.lab.controller import ControllerProcess
from apps.lab.lab import PROVIDER_BRIDGE, PROVIDER_NIC
from flows.provider import PROVIDER_COOKIE_STAGE
from tests.e2e_fixtures import (
    attached_lab,
    create_network,
    pings,
    plug_new_vm,
    require_lab,
    running_controller,
    wait_until,
)

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

PROVIDER_CIDR = "198.51.100.0/24"
OUTSIDE = "198.51.100.200"
FLOW = re.compile(r"cookie=(0x[0-9a-f]+), duration=([\d.]+)s, .*priority=(\d+),in_port=(\d+) actions=(\S+)")


@dataclass
class Cloud:
    ctrl: ControllerProcess
    lab: Lab
    vms: dict[str, LabVM]
    outside: LabVM


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    require_lab()
    workdir = tmp_path_factory.mktemp("provider")
    with running_controller(workdir / "controller") as ctrl, \
            attached_lab(ctrl, "tfpv", n_hypervisors=2, provider=True) as lab:
        net, _ = create_network(ctrl, "flat", PROVIDER_CIDR, **{"provider:network_type": "flat",
                                                                "provider:physical_network": "physnet1"})
        vms = {name: plug_new_vm(ctrl, lab, name, net, hv, port_security_enabled=False)
               for name, hv in (("v1", "hv1"), ("v2", "hv2"))}
        outside = lab.add_outside_host("out", f"{OUTSIDE}/24")
        yield Cloud(ctrl, lab, vms, outside)


def wire_flows(lab: Lab, name: str) -> dict[tuple[int, str], tuple[int, float]]:
    """The provider bridge's flows as ``(in_port, actions) -> (cookie, duration)``, ports by number."""
    text = lab.hypervisor(name).ofctl("--no-names", "dump-flows", PROVIDER_BRIDGE)
    flows = {}
    for line in text.splitlines():
        m = FLOW.search(line)
        assert m or "actions=" not in line, f"an unexpected flow on {name}'s {PROVIDER_BRIDGE}: {line}"
        if m:
            assert m[3] == "1", line
            flows[int(m[4]), m[5]] = (int(m[1], 16), float(m[2]))
    return flows


def wanted(lab: Lab, name: str) -> set[tuple[int, str]]:
    """The two wire-through flows of ``name``'s provider bridge, by port number."""
    hv = lab.hypervisor(name)
    nic, patch = hv.ofport(PROVIDER_NIC), hv.ofport("int-physnet1")
    return {(nic, f"output:{patch}"), (patch, f"output:{nic}")}


def provider_status(ctrl: ControllerProcess) -> dict[str, dict]:
    """GET /sync's provider bridges."""
    return dict(ctrl.request("GET", "/sync")["provider_bridges"])


def all_synced(ctrl: ControllerProcess, names: list[str]) -> bool:
    status = provider_status(ctrl)
    return all(status.get(f"{n}/{PROVIDER_BRIDGE}", {}).get("synced") for n in names)


def test_the_controller_patches_secures_and_wires_each_provider_bridge(cloud: Cloud) -> None:
    """No manual step: the patch pair, fail_mode=secure, br-int's controllers, and exactly the two flows."""
    for hv in cloud.lab.hypervisors:
        vsctl = hv.vsctl
        assert vsctl("get", "interface", "phy-physnet1", "type", "options:peer").split() == ["patch", "int-physnet1"]
        assert vsctl("get", "interface", "int-physnet1", "type", "options:peer").split() == ["patch", "phy-physnet1"]
        assert vsctl("port-to-br", "phy-physnet1").strip() == "br-int"
        assert vsctl("port-to-br", "int-physnet1").strip() == PROVIDER_BRIDGE
        assert vsctl("get-fail-mode", PROVIDER_BRIDGE).strip() == "secure"
        assert vsctl("get-controller", PROVIDER_BRIDGE).split() == vsctl("get-controller", "br-int").split()
        rows = vsctl("get", "bridge", PROVIDER_BRIDGE, "controller").strip().strip("[]").split(", ")
        assert {vsctl("get", "controller", row, "connection_mode").strip() for row in rows} == {"out-of-band"}
        flows = wire_flows(cloud.lab, hv.name)
        assert set(flows) == wanted(cloud.lab, hv.name), flows
        assert {cookie >> 56 for cookie, _ in flows.values()} == {PROVIDER_COOKIE_STAGE}
    status = provider_status(cloud.ctrl)
    assert sorted(status) == ["hv1/br-phys", "hv2/br-phys"], status
    assert all(s["connected"] and s["synced"] and s["physical_network"] == "physnet1" for s in status.values())


def test_a_flat_provider_network_reaches_the_outside_through_each_hypervisor(cloud: Cloud) -> None:
    for name in ("v1", "v2"):
        assert pings(cloud.outside, cloud.vms[name].IP(), count=3) == 3, name
    assert pings(cloud.vms["v1"], cloud.vms["v2"].IP(), count=3) == 3


def test_a_flow_changed_by_hand_is_repaired(cloud: Cloud) -> None:
    """Deleted by hand: put back. Added by hand (a learning switch's NORMAL): deleted. Traffic goes on."""
    hv = cloud.lab.hypervisor("hv1")
    before = wire_flows(cloud.lab, "hv1")
    hv.ofctl("del-flows", PROVIDER_BRIDGE, f"in_port={PROVIDER_NIC}")
    hv.ofctl("add-flow", PROVIDER_BRIDGE, "priority=100,actions=NORMAL")
    wait_until(lambda: "NORMAL" not in hv.ofctl("dump-flows", PROVIDER_BRIDGE)
               and set(wire_flows(cloud.lab, "hv1")) == wanted(cloud.lab, "hv1"), 10,
               lambda: f"hv1's provider bridge repaired; log:\n{cloud.ctrl.log_tail()}")
    after = wire_flows(cloud.lab, "hv1")
    assert {k: c for k, (c, _) in after.items()} == {k: c for k, (c, _) in before.items()}
    assert pings(cloud.outside, cloud.vms["v1"].IP(), count=3) == 3


def test_a_controller_restart_sends_the_provider_bridges_nothing(cloud: Cloud) -> None:
    """SIGKILL and restart under a ping through both provider bridges: no flow-mod to them, no flow replaced, no
    ping lost; the OVSDB manager writes nothing either."""
    names = [hv.name for hv in cloud.lab.hypervisors]
    wait_until(lambda: all_synced(cloud.ctrl, names), 10, "provider bridges synced")
    before = {n: wire_flows(cloud.lab, n) for n in names}
    ping = cloud.outside.popen(["ping", "-i", "0.05", "-c", "120", "-W", "1", cloud.vms["v2"].IP()],
                               stdout=-1, text=True)
    cloud.ctrl.restart(signal.SIGKILL)
    wait_until(lambda: all_synced(cloud.ctrl, names), 20,
               lambda: f"provider bridges synced after the restart; log:\n{cloud.ctrl.log_tail()}")
    out, _ = ping.communicate(timeout=30)
    status = provider_status(cloud.ctrl)
    assert [s["flow_mods_sent"] for s in status.values()] == [0, 0], status
    for n in names:
        after = wire_flows(cloud.lab, n)
        assert after.keys() == before[n].keys()
        for key, (cookie, age) in after.items():
            assert cookie == before[n][key][0] and age > before[n][key][1], (n, key)  # kept, never re-added
    metrics = cloud.ctrl.metrics()
    assert metrics.get("tenantflow_gateway_port_changes_total", 0) == 0
    assert re.search(r"120 packets transmitted, 120 received", out), out


def test_a_bridge_connecting_before_its_database_is_read_is_held_then_taken_over(cloud: Cloud) -> None:
    """After a restart the provider bridges reconnect over OpenFlow while no host's OVSDB is connected (their
    managers removed meanwhile): each is held as an unknown bridge, then taken over once its database is read,
    with no flow-mod and no warning."""
    lab, ctrl = cloud.lab, cloud.ctrl
    dpids = {hv.name: int(hv.vsctl("get", "bridge", PROVIDER_BRIDGE, "datapath_id").strip().strip('"'), 16)
             for hv in lab.hypervisors}
    for hv in lab.hypervisors:
        hv.vsctl("del-manager")
    log = Path(ctrl.log_path)
    start = len(log.read_text())
    ctrl.restart(signal.SIGKILL)
    for dpid in dpids.values():
        wait_until(lambda d=dpid: f"bridge {d:016x} connected but no hypervisor" in log.read_text()[start:], 15,
                   lambda: f"the provider bridges held; log:\n{ctrl.log_tail()}")
    assert provider_status(ctrl) == {}
    for hv in lab.hypervisors:
        steps.set_manager(hv.vsctl, lab.manager_target)
    wait_until(lambda: all_synced(ctrl, list(dpids)), 15, lambda: f"taken over; log:\n{ctrl.log_tail()}")
    assert [s["flow_mods_sent"] for s in provider_status(ctrl).values()] == [0, 0]
    warnings = [line for line in log.read_text()[start:].splitlines() if "WARNING" in line]
    assert not warnings, warnings
    assert pings(cloud.outside, cloud.vms["v1"].IP(), count=3) == 3


def test_a_bridge_wired_by_hand_is_adopted(tmp_path: Path) -> None:
    """The manual way (no OVSDB manager: README step 5's fallback), then the controller made the manager: the
    hand-made patch ports and fail mode are kept as they are (only the bridge's controllers are written). OVS
    itself empties a bridge's flow table when it gets its first controller, so the controller writes the two
    flows once; flows made by hand equal to them later (cookie 0) are kept as they are: no flow-mod."""
    require_lab()
    with running_controller(tmp_path / "controller") as ctrl, \
            attached_lab(ctrl, "tfpa", n_hypervisors=1, provider=True, manager_unix_socket=None) as lab:
        hv = lab.hypervisor("hv1")
        ports = {name: hv.vsctl("get", "interface", name, "_uuid").strip()
                 for name in ("phy-physnet1", "int-physnet1", "tf-vxlan")}
        assert {c for c, _ in wire_flows(lab, "hv1").values()} == {0}
        assert provider_status(ctrl) == {}
        steps.set_manager(hv.vsctl, f"unix:{ctrl.ovsdb_socket}")
        wait_until(lambda: all_synced(ctrl, ["hv1"]), 15, lambda: f"hv1/br-phys synced; log:\n{ctrl.log_tail()}")
        assert {name: hv.vsctl("get", "interface", name, "_uuid").strip() for name in ports} == ports
        assert hv.vsctl("get-controller", PROVIDER_BRIDGE).split() == hv.vsctl("get-controller", "br-int").split()
        assert ctrl.metrics().get("tenantflow_gateway_port_changes_total", 0) == 0
        assert set(wire_flows(lab, "hv1")) == wanted(lab, "hv1")
        status = provider_status(ctrl)["hv1/br-phys"]
        # the operator wires it by hand again (README's commands): each add replaces the controller's flow
        steps.wire_provider_bridge(hv.ofctl, "physnet1", PROVIDER_BRIDGE, PROVIDER_NIC)
        wait_until(lambda: provider_status(ctrl)["hv1/br-phys"]["syncs"] > status["syncs"], 10,
                   lambda: f"a sync after the change by hand; log:\n{ctrl.log_tail()}")
        assert provider_status(ctrl)["hv1/br-phys"]["flow_mods_sent"] == status["flow_mods_sent"]
        flows = wire_flows(lab, "hv1")
        assert set(flows) == wanted(lab, "hv1") and {c for c, _ in flows.values()} == {0}
