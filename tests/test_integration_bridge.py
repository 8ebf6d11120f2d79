"""br-int made and kept by the controller, as the host's OVSDB manager (issue #13, item 3): a host needs only its
name (``external_ids:system-id``), its datapath type and ``set-manager``.

The planning (:mod:`controller.integration`) without a switch first: who a host is, what its br-int lacks,
what a transaction writes. Then the real controller process and lab hypervisors attached README's other
way (``steps.name_host``, the controller's socket linked, ``set-manager``; plus the underlay, which is
the host's networking), every check read from the switch with ``ovs-vsctl``:

- before registration a host naming an unregistered hypervisor gets nothing; once registered, br-int with the
  registered datapath id, in-band off, secure, OpenFlow 1.3, ``netdev``, and the controller as its out-of-band
  controller, connected over OpenFlow; the overlay's tunnel ports follow on it (the datapath-id binding);
- a hand-made br-int with a wrong datapath id and an operator's own controller target is corrected in place (one
  br-int, same row) and its controller left as it was;
- VMs on two such hypervisors ping each other over the overlay;
- a controller restart makes no OVSDB transaction and sends no flow-mod.

And with bare ovsdb-servers and the manager in-process: two hosts naming one hypervisor (the second gets nothing,
logged once, until the first is gone), and over TLS the certificate naming the host (a system-id naming another
hypervisor refused).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from apps.lab import Lab, LabVM, sh, steps
from apps.lab.controller import ControllerProcess
from apps.lab.ovs import SCHEMA, PrivateOVS
from apps.lab.pki import Pki
from controller.integration import (
    UNIX_TARGET,
    BridgeTargets,
    apply_integration,
    find_integration,
    identify,
    parse_targets,
    plan_integration,
)
from controller.metrics import REGISTRY
from controller.ovsdb import TICK, OvsdbManager
from tests.e2e_fixtures import create_network, plug_new_vm, running_controller, wait_in_sync, wait_until
from tests.lab_fixtures import lab_prefix, ping_count, require_lab, unless_able
from topology.model import TUNNEL_PORT_NAMES, Hypervisor
from topology.state import Topology

HV1 = Hypervisor(name="hv1", datapath_id=1, tunnel_ip="192.168.100.1")
HV2 = Hypervisor(name="hv2", datapath_id=2, tunnel_ip="192.168.100.2")
REGISTERED = {"hv1": HV1, "hv2": HV2}


# -- the planning, without a switch -------------------------------------------------------------------
def test_a_host_is_who_its_system_id_or_certificate_names() -> None:
    assert identify("hv1", None, REGISTERED) == (HV1, "")
    assert identify("hv9", None, REGISTERED) == (None, ""), "unregistered: nobody, yet"
    assert identify(None, None, REGISTERED) == (None, "")
    assert identify(None, "hv2", REGISTERED) == (HV2, ""), "over TLS the certificate names the host"
    assert identify("3f2a-random-uuid", "hv2", REGISTERED) == (HV2, "")
    assert identify("hv2", "hv2", REGISTERED) == (HV2, "")
    hv, why = identify("hv1", "hv2", REGISTERED)
    assert hv is None and "certificate names 'hv2'" in why and "hypervisor hv1" in why


def test_bridge_controller_targets() -> None:
    tls = BridgeTargets(ssl_port=6653, tcp_port=None)
    assert tls.for_connection("pssl", ("10.0.0.10", 6640)) == ("ssl:10.0.0.10:6653",)
    assert tls.for_connection("pssl", ("fd00::10", 6640, 0, 0)) == ("ssl:[fd00::10]:6653",)
    assert tls.for_connection("ptcp", ("10.0.0.10", 6640)) == (), "no plain TCP OpenFlow listener"
    assert tls.for_connection("punix", "") == (UNIX_TARGET,)
    assert BridgeTargets(unix=None).for_connection("punix", "") == ()
    assert BridgeTargets(tcp_port=6633).for_connection("ptcp", ("127.0.0.1", 1)) == ("tcp:127.0.0.1:6633",)
    explicit = BridgeTargets(("ssl:10.0.0.10:6653", "ssl:10.0.0.11:6653"), ssl_port=6653)
    assert explicit.for_connection("punix", "") == explicit.explicit, "--bridge-controllers wins"
    assert parse_targets("ssl:10.0.0.10:6653, tcp:[::1]:6653 unix:/var/run/openvswitch/x.sock") == \
        ("ssl:10.0.0.10:6653", "tcp:[::1]:6653", "unix:/var/run/openvswitch/x.sock")
    assert parse_targets("") == ()
    for bad in ("ssl:10.0.0.10", "pssl:6653", "tcp:h:port", "10.0.0.10:6653"):
        with pytest.raises(ValueError):
            parse_targets(bad)


def bridge(name: str, dpid: str | None = None, configured: str | None = None, **columns: Any) -> SimpleNamespace:
    """A Bridge row as the IDL gives it (optional columns as lists)."""
    other = {"datapath-id": configured} if configured else {}
    row = dict(uuid=name, name=name, datapath_id=[dpid] if dpid else [], other_config=other, fail_mode=[],
               protocols=[], datapath_type="", controller=[])
    row.update(columns)
    return SimpleNamespace(**row)


def as_made(dpid: int, **columns: Any) -> SimpleNamespace:
    """br-int as the controller (or README's step 1 with its set-controller) makes it."""
    made = {"other_config": {"datapath-id": f"{dpid:016x}", "disable-in-band": "true"}, "fail_mode": ["secure"],
            "protocols": ["OpenFlow13"], "datapath_type": "netdev",
            "controller": [SimpleNamespace(target="unix:tenantflow.sock")]}
    return bridge("br-int", f"{dpid:016x}", **{**made, **columns})


def test_a_host_without_one_gets_br_int_whole() -> None:
    row, todo = plan_integration({"u": bridge("br-underlay", "aa")}, 1, "netdev", ("unix:tenantflow.sock",))
    assert row is None and todo.create
    assert todo.columns == {"fail_mode": ["secure"], "protocols": ["OpenFlow13"], "datapath_type": "netdev"}
    assert todo.other_config == {"datapath-id": "0000000000000001", "disable-in-band": "true"}
    assert todo.controllers == ("unix:tenantflow.sock",)
    _row, todo = plan_integration({}, 1, None, ())
    assert "datapath_type" not in todo.columns, "no tenantflow-datapath-type: OVS's default"


def test_a_bridge_as_made_is_left_alone() -> None:
    """Nothing to write, whether vswitchd filled in its datapath_id yet or not (the handover)."""
    made = as_made(1)
    assert not plan_integration({"b": made}, 1, "netdev", ("unix:tenantflow.sock",))[1]
    made.datapath_id = []  # just made: the replica has the row, vswitchd has not run it yet
    row, todo = plan_integration({"b": made}, 1, "netdev", ("unix:tenantflow.sock",))
    assert row is made and not todo, "not made a second time"


def test_a_hand_made_br_int_is_corrected_in_place() -> None:
    own = [SimpleNamespace(target="unix:/var/run/openvswitch/mine.sock")]
    hand = bridge("br-int", "00000000000000ff", configured="00000000000000ff", protocols=["OpenFlow10"],
                  controller=own, other_config={"datapath-id": "00000000000000ff", "hwaddr": "aa:bb:cc:dd:ee:ff"})
    row, todo = plan_integration({"b": hand}, 1, "netdev", ("unix:tenantflow.sock",))
    assert row is hand and not todo.create
    assert todo.columns == {"fail_mode": ["secure"], "protocols": ["OpenFlow10", "OpenFlow13"],
                            "datapath_type": "netdev"}
    assert todo.other_config == {"datapath-id": "0000000000000001", "disable-in-band": "true"}
    assert todo.controllers is None, "an operator's own controllers are left alone"
    assert todo.summary().startswith("corrected fail_mode, protocols, datapath_type, other_config:datapath-id")
    upper = as_made(10, other_config={"datapath-id": "000000000000000A", "disable-in-band": "true"})
    assert not plan_integration({"b": upper}, 10, "netdev", ())[1], "the same id spelled otherwise is not rewritten"


def test_the_bridge_carrying_the_datapath_id_is_the_integration_bridge() -> None:
    """An operator's bridge of another name carrying the id is kept as it is named; no br-int is made beside it."""
    mine, other_br_int = bridge("br-mine", "0000000000000001"), bridge("br-int", "00000000000000ff")
    assert find_integration({"a": other_br_int, "b": mine}, 1) is mine
    assert find_integration({"a": other_br_int}, 1) is other_br_int
    assert find_integration({"b": bridge("br-x", None, configured="0000000000000001")}, 1).name == "br-x"
    assert find_integration({}, 1) is None


class FakeTxn:
    """Records what :func:`apply_integration` writes."""

    def __init__(self) -> None:
        self.inserted: list[tuple[str, Any]] = []
        self.idl = SimpleNamespace(tables={t: t for t in ("Interface", "Port", "Bridge", "Controller")})

    def insert(self, table: str) -> Any:
        row = Row(table)
        self.inserted.append((table, row))
        return row


class Row(SimpleNamespace):
    def __init__(self, table: str, **columns: Any) -> None:
        super().__init__(table=table, **columns)
        self.ops: list[tuple] = []

    def verify(self, column: str) -> None:
        self.ops.append(("verify", column))

    def addvalue(self, column: str, value: Any) -> None:
        self.ops.append(("add", column, value))

    def setkey(self, column: str, key: str, value: str) -> None:
        self.ops.append(("setkey", column, key, value))


def test_apply_makes_br_int_as_add_br_does() -> None:
    txn, host = FakeTxn(), Row("Open_vSwitch")
    _row, todo = plan_integration({}, 1, "netdev", ("ssl:10.0.0.10:6653",))
    apply_integration(txn, host, None, todo)
    tables = [t for t, _ in txn.inserted]
    assert tables == ["Interface", "Port", "Bridge", "Controller"]
    iface, port, br, ctl = (r for _, r in txn.inserted)
    assert (iface.name, iface.type) == ("br-int", "internal") and port.interfaces == [iface]
    assert (br.name, br.ports, br.fail_mode, br.protocols, br.datapath_type) == \
        ("br-int", [port], ["secure"], ["OpenFlow13"], "netdev")
    assert br.other_config == {"datapath-id": "0000000000000001", "disable-in-band": "true"}
    assert br.controller == [ctl] and (ctl.target, ctl.connection_mode) == ("ssl:10.0.0.10:6653", ["out-of-band"])
    assert host.ops == [("verify", "bridges"), ("add", "bridges", br)], "joins Open_vSwitch.bridges, verified"


def test_apply_corrects_only_what_differs() -> None:
    txn = FakeTxn()
    hand = Row("Bridge", name="br-int", datapath_id=[], other_config={"datapath-id": "ff", "disable-in-band": "true"},
               fail_mode=["secure"], protocols=["OpenFlow13"], datapath_type="netdev",
               controller=[SimpleNamespace(target="tcp:1.2.3.4:6653")])
    row, todo = plan_integration({"b": hand}, 1, "netdev", ("unix:tenantflow.sock",))
    apply_integration(txn, Row("Open_vSwitch"), row, todo)
    assert txn.inserted == [] and hand.ops == [("setkey", "other_config", "datapath-id", "0000000000000001")]


# -- on real switches ---------------------------------------------------------------------------------------
def columns(lab_hv: Any, table: str, record: str, *names: str) -> dict[str, Any]:
    """Columns of one row as ``ovs-vsctl -f json list`` gives them (maps as dicts, sets as lists)."""
    out = json.loads(lab_hv.vsctl("-f", "json", f"--columns={','.join(names)}", "list", table, record))
    (row,) = out["data"]
    return {name: _value(cell) for name, cell in zip(out["headings"], row, strict=True)}


def _value(cell: Any) -> Any:
    if isinstance(cell, list) and len(cell) == 2 and cell[0] in ("map", "set", "uuid"):
        kind, value = cell
        if kind == "map":
            return {k: _value(v) for k, v in value}
        return [_value(v) for v in value] if kind == "set" else value
    return cell


def bridges(hv: Any) -> list[str]:
    return hv.vsctl("list-br").split()


@dataclass
class Cloud:
    ctrl: ControllerProcess
    lab: Lab
    before: dict[str, list[str]]  # each host's bridges before registration
    hand_made_uuid: str  # hv3's br-int, made by hand before registration
    own_target: str  # hv3's operator-set controller target


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """3 hypervisors attached the other way (named, managed; no br-int); hv3 with a hand-made br-int of a wrong
    datapath id and its own controller target. Registered once every host's OVSDB is connected and read."""
    require_lab()
    with running_controller(tmp_path_factory.mktemp("brint") / "ctl") as ctrl, \
            Lab(prefix=lab_prefix("bi"), n_hypervisors=3, api_url=ctrl.api_url, names_itself=True,
                controller_unix_socket=ctrl.unix_socket, manager_unix_socket=ctrl.ovsdb_socket) as lab:
        hv3 = lab.hypervisor("hv3")
        own = f"unix:{hv3.rundir}/tenantflow.sock"  # the same socket, spelled as an operator's set-controller
        hv3.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev",
                  "other-config:datapath-id=00000000000000ff", "--", "set-controller", "br-int", own)
        hand_made = hv3.vsctl("get", "bridge", "br-int", "_uuid").strip()
        wait_until(lambda: ctrl.request("GET", "/ovsdb")["connections"] == 3, 15, "3 OVSDB connections")
        wait_until(lambda: columns(hv3, "bridge", "br-int", "datapath_id")["datapath_id"] == "00000000000000ff",
                   10, "hv3's hand-made br-int run by its vswitchd")
        time.sleep(1.0)  # every replica is in: a host would have had something made by now if it were to
        before = {hv.name: bridges(hv) for hv in lab.hypervisors}
        lab.register_hypervisors()
        for hv in lab.hypervisors:
            ctrl.wait_hypervisor_connected(hv.name, timeout=15)
        yield Cloud(ctrl, lab, before, hand_made, own)


@pytest.mark.ovs
@pytest.mark.lab
def test_a_named_host_gets_br_int_once_registered(cloud: Cloud) -> None:
    assert cloud.before == {"hv1": ["br-underlay"], "hv2": ["br-underlay"], "hv3": ["br-int", "br-underlay"]}, \
        "nothing made for a system-id naming no registered hypervisor"
    for name in ("hv1", "hv2"):
        hv = cloud.lab.hypervisor(name)
        assert bridges(hv) == ["br-int", "br-underlay"]
        br = columns(hv, "bridge", "br-int", "datapath_id", "other_config", "fail_mode", "protocols",
                     "datapath_type", "controller", "ports")
        assert br["datapath_id"] == f"{hv.dpid:016x}", br
        assert br["other_config"] == {"datapath-id": f"{hv.dpid:016x}", "disable-in-band": "true"}, br
        assert (br["fail_mode"], br["protocols"], br["datapath_type"]) == ("secure", "OpenFlow13", "netdev"), br
        ctl = columns(hv, "controller", br["controller"], "target", "connection_mode")
        assert ctl == {"target": UNIX_TARGET, "connection_mode": "out-of-band"}, ctl
        # (vswitchd refreshes is_connected in the database every few seconds)
        wait_until(lambda hv=hv, c=br["controller"]: columns(hv, "controller", c, "is_connected")["is_connected"],
                   15, f"{name}'s br-int connected to the controller, as OVS sees it")
        assert columns(hv, "interface", "br-int", "type")["type"] == "internal"
        assert set(TUNNEL_PORT_NAMES.values()) <= hv.br_int_ports(), "the datapath-id binding took over"
        assert cloud.ctrl.show("hypervisor", name)["connected"] is True
    log = open(cloud.ctrl.log_path).read()
    assert "the host is hypervisor hv1 (its system-id)" in log and "hv1 br-int created (1 controller(s))" in log
    assert "Traceback" not in log and "dropped" not in log, log


@pytest.mark.ovs
@pytest.mark.lab
def test_a_hand_made_br_int_is_corrected_not_duplicated(cloud: Cloud) -> None:
    hv3 = cloud.lab.hypervisor("hv3")
    assert bridges(hv3) == ["br-int", "br-underlay"]
    br = columns(hv3, "bridge", "br-int", "_uuid", "datapath_id", "other_config", "fail_mode", "protocols",
                 "controller")
    assert br["_uuid"] == cloud.hand_made_uuid, "corrected in place"
    assert br["datapath_id"] == f"{hv3.dpid:016x}" and br["other_config"]["datapath-id"] == f"{hv3.dpid:016x}"
    assert (br["fail_mode"], br["protocols"]) == ("secure", "OpenFlow13")
    assert columns(hv3, "controller", br["controller"], "target")["target"] == cloud.own_target, \
        "the operator's own controller target is left alone"
    assert set(TUNNEL_PORT_NAMES.values()) <= hv3.br_int_ports()


@pytest.mark.ovs
@pytest.mark.lab
def test_vms_on_named_hosts_ping_over_the_overlay(cloud: Cloud) -> None:
    net, _ = create_network(cloud.ctrl, "brint-net", "10.9.0.0/24")
    vms: dict[str, LabVM] = {name: plug_new_vm(cloud.ctrl, cloud.lab, f"b{name}", net, name)
                             for name in ("hv1", "hv2")}
    dst = vms["hv2"].port["fixed_ips"][0]["ip_address"]
    wait_until(lambda: ping_count(vms["hv1"], dst, 1) == 1, 15,
               lambda: f"hv1's VM reaching hv2's over the overlay; log:\n{cloud.ctrl.log_tail()}")
    assert ping_count(vms["hv1"], dst, 5) == 5


@pytest.mark.ovs
@pytest.mark.lab
def test_a_restart_writes_nothing(cloud: Cloud) -> None:
    wait_in_sync(cloud.ctrl, cloud.lab.hypervisors)
    rows = {hv.name: columns(hv, "bridge", "br-int", "_uuid", "controller") for hv in cloud.lab.hypervisors}
    cloud.ctrl.restart(signal.SIGKILL)
    wait_until(lambda: sorted(cloud.ctrl.request("GET", "/ovsdb")["hypervisors"]) == ["hv1", "hv2", "hv3"], 30,
               lambda: f"every host's OVSDB back; log:\n{cloud.ctrl.log_tail()}")
    for hv in cloud.lab.hypervisors:
        cloud.ctrl.wait_hypervisor_connected(hv.name, timeout=15)
    wait_until(lambda: cloud.ctrl.metrics().get("tenantflow_switch_connected", 0) == 3, 15,
               lambda: f"every switch synced after the restart; log:\n{cloud.ctrl.log_tail()}")
    time.sleep(2)  # anything it was going to write, it has written
    metrics = cloud.ctrl.metrics()
    assert metrics.get("tenantflow_ovsdb_transactions_total", 0) == 0, cloud.ctrl.log_tail()
    assert metrics.get("tenantflow_flow_mods_sent_total", 0) == 0, cloud.ctrl.log_tail()
    assert {hv.name: columns(hv, "bridge", "br-int", "_uuid", "controller") for hv in cloud.lab.hypervisors} == rows
    assert all(bridges(hv) == ["br-int", "br-underlay"] for hv in cloud.lab.hypervisors)
    assert "Traceback" not in open(cloud.ctrl.log_path).read()


def test_the_lab_names_its_hosts_as_the_step_says() -> None:
    ran: list[tuple[str, ...]] = []
    steps.name_host(lambda *args: ran.append(args) or "", "hv1")
    assert ran == [("set", "open", ".", "external-ids:system-id=hv1", "external-ids:tenantflow-datapath-type=netdev")]


# -- bare ovsdb-servers and the manager in-process: two hosts naming one hypervisor, identity over TLS -------------
def _bare_tools() -> None:
    missing = [t for t in ("ovsdb-server", "ovsdb-tool", "ovs-vsctl") if shutil.which(t) is None]
    unless_able(f"{missing[0]} not installed" if missing else None, "OVSDB test")


def _bare(tmp_path: Any, name: str, *settings: str) -> PrivateOVS:
    """An ovsdb-server without its ovs-vswitchd (nothing fills in datapath_id), ``ovs-vsctl --no-wait`` ``settings``."""
    db = PrivateOVS("", str(tmp_path / name))
    os.makedirs(db.rundir)
    sh.run(["ovsdb-tool", "create", db.db, SCHEMA])
    db.start_ovsdb()
    if settings:
        db.vsctl("--no-wait", *settings)
    return db


def _bridges(db: PrivateOVS) -> list[str]:
    return db.vsctl("list-br").split()


@contextlib.contextmanager
def _managed(tmp_path: Any, n: int, listen: str, **kwargs: Any) -> Iterator[tuple[OvsdbManager, Topology]]:
    """A topology of hypervisors hv1..hv<n> (datapath ids 1..n) and an OVSDB manager for it on ``listen``."""
    _bare_tools()
    topo = Topology(str(tmp_path / "topology.sqlite"))
    for i in range(1, n + 1):
        topo.register_hypervisor({"name": f"hv{i}", "datapath_id": i, "tunnel_ip": f"10.1.0.{i}"})
    manager = OvsdbManager(topo, [listen], **kwargs).start()
    try:
        yield manager, topo
    finally:
        manager.stop()
        topo.close()


def test_two_hosts_naming_one_hypervisor(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The first connection naming hv1 gets its br-int; the second gets nothing and is logged once; once the first
    is gone, the second gets it."""
    sock = str(tmp_path / "ovsdb.sock")
    dbs: list[PrivateOVS] = []
    with _managed(tmp_path, 1, f"punix:{sock}") as (manager, _topo), caplog.at_level(logging.INFO, "tenantflow"):
        try:
            for name in ("a", "b"):
                dbs.append(_bare(tmp_path, name, "set", "open", ".", "external-ids:system-id=hv1"))
            first, second = dbs
            first.vsctl("--no-wait", "set-manager", f"unix:{sock}")
            wait_until(lambda: _bridges(first) == ["br-int"], 10, "the first host's br-int")
            second.vsctl("--no-wait", "set-manager", f"unix:{sock}")
            wait_until(lambda: manager.status()["connections"] == 2, 10, "both connected")
            wait_until(lambda: "claimed by connection" in caplog.text, 10, "the second claim logged")
            time.sleep(TICK + 0.5)  # a tick: it is looked at again, and logged no second time
            assert _bridges(second) == [], "nothing made from the second"
            assert caplog.text.count("hypervisor hv1 is claimed by connection") == 1, caplog.text
            other = json.loads(first.vsctl("-f", "json", "--columns=other_config,fail_mode,protocols", "list",
                                           "bridge", "br-int"))["data"][0]
            assert other[0] == ["map", [["datapath-id", "0000000000000001"], ["disable-in-band", "true"]]], other
            assert first.vsctl("get-controller", "br-int").split() == [UNIX_TARGET]
            assert first.vsctl("get", "interface", "br-int", "type").strip() == "internal"
            first.vsctl("--no-wait", "del-manager")  # the first host goes: the second's claim stands
            wait_until(lambda: _bridges(second) == ["br-int"], 10, "the second host's br-int once the first left")
            assert _bridges(first) == ["br-int"], "never deleted"
        finally:
            for db in dbs:
                db.stop()


def test_over_tls_the_certificate_names_the_host(tmp_path: Any) -> None:
    """A host with hv1's certificate and no system-id gets hv1's br-int, pointed at ``ssl:<the address it reached>:
    <the TLS port>``; one with hv2's certificate whose system-id names hv1 is refused (name_mismatch), nothing made."""
    unless_able(None if shutil.which("ovs-pki") else "ovs-pki not installed", "the TLS identity test")
    pki = Pki(str(tmp_path / "pki"))
    dbs: list[PrivateOVS] = []
    with _managed(tmp_path, 2, "pssl:0:127.0.0.1", tls_files=pki.controller(),
                  targets=BridgeTargets(ssl_port=6653)) as (manager, _topo):
        try:
            port = manager.addresses()[0].split(":")[1]
            refused = _refusals()
            for name, settings in (("hv1", ()), ("hv2", ("--", "set", "open", ".", "external-ids:system-id=hv1"))):
                cert = pki.switch(name)
                db = _bare(tmp_path, name, "set-ssl", cert.private_key, cert.certificate, cert.ca_cert, *settings)
                db.vsctl("--no-wait", "set-manager", f"ssl:127.0.0.1:{port}")
                dbs.append(db)
            wait_until(lambda: _bridges(dbs[0]) == ["br-int"], 15, "hv1's br-int, named by its certificate")
            assert dbs[0].vsctl("get-controller", "br-int").split() == ["ssl:127.0.0.1:6653"]
            wait_until(lambda: _refusals() > refused, 15, "hv2's connection refused: its system-id names hv1")
            assert _bridges(dbs[1]) == []
        finally:
            for db in dbs:
                db.stop()


def _refusals() -> float:
    """This process's ``tenantflow_switch_refusals_total{channel="ovsdb",reason="name_mismatch"}``."""
    return sum(s.value for m in REGISTRY.collect() if m.name == "tenantflow_switch_refusals" for s in m.samples
               if s.name.endswith("_total") and s.labels == {"channel": "ovsdb", "reason": "name_mismatch"})
