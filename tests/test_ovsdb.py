"""The controller as every hypervisor's OVSDB manager: the gateway tunnel ports, with BFD, on real OVS.

The controller is the real ``tenantflow controller`` process; the hypervisors are the lab's
private OVS instances in namespaces, each attached with the operator steps, the OVSDB
manager (``ovs-vsctl set-manager unix:<the controller's --ovsdb-listen socket>``) among
them. Every check of what a switch holds reads it with ``ovs-vsctl`` in that hypervisor,
never the controller's memory. What is proven:

1. Connections from unregistered hypervisors are kept and identified once registered.
2. With hv1 a gateway (``gateway_for``), hv1 gets a ``tg-`` port to hv2 and to hv3, each
   of those one to hv1: VXLAN on UDP 4790, BFD enabled with the controller's timers; BFD
   comes up at both ends over the lab's underlay, and the metrics and ``GET /ovsdb`` say so.
3. Reconciled, never flushed: a hand-made ``tg-`` port is removed, a hand-made other port
   stays, a ``tg-`` port deleted by hand comes back, a changed BFD timer is put back in
   place (same row), and the ports nobody touched keep their rows.
4. Un-marking the gateway removes every ``tg-`` port and nothing else; marking it again
   brings them back up. With the gateway's underlay link down, the computes' BFD says so
   (measured: about 300 ms, 3 intervals of 100 ms) and comes back up with the link.
5. A controller restart (SIGKILL) rewrites nothing: every Interface row keeps its ``_uuid``,
   BFD stays up without a flap, the new process commits no OVSDB transaction.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_api_client import Api

from apps.lab import Hypervisor, Lab, sh
from apps.lab.controller import ControllerProcess
from apps.lab.ovs import SCHEMA, PrivateOVS
from apps.lab.scale import ScaleLab
from controller.metrics import REGISTRY
from controller.ovsdb import OvsdbManager, parse_listen
from tests.e2e_fixtures import wait_until
from tests.lab_fixtures import lab_prefix, require_lab, unless_able
from topology.gateways import GATEWAY_UDP_PORT, gateway_tunnel_name
from topology.model import TUNNEL_PORT_NAMES
from topology.state import Topology

BFD_MS = 100  # the controller's defaults (--bfd-min-tx / --bfd-min-rx)


# -- reading a hypervisor's OVSDB with ovs-vsctl ------------------------------------------------------
def _value(cell: Any) -> Any:
    """One cell of ``ovs-vsctl -f json`` output as Python (maps as dicts, sets as lists, uuids as strings)."""
    if isinstance(cell, list) and len(cell) == 2 and cell[0] == "map":
        return {k: _value(v) for k, v in cell[1]}
    if isinstance(cell, list) and len(cell) == 2 and cell[0] == "set":
        return [_value(v) for v in cell[1]]
    if isinstance(cell, list) and len(cell) == 2 and cell[0] == "uuid":
        return cell[1]
    return cell


def interfaces(hv: Hypervisor) -> dict[str, dict[str, Any]]:
    """Every Interface row of the hypervisor's database, by name."""
    out = json.loads(hv.vsctl("-f", "json", "--columns=_uuid,name,type,options,bfd,bfd_status", "list", "interface"))
    rows = [dict(zip(out["headings"], map(_value, row), strict=True)) for row in out["data"]]
    return {row["name"]: row for row in rows}


def br_int_ports(hv: Hypervisor) -> set[str]:
    """The names of br-int's ports (``ovs-vsctl list-ports br-int``)."""
    return set(hv.vsctl("list-ports", "br-int").split())


def tg_rows(hv: Hypervisor) -> dict[str, dict[str, Any]]:
    """The hypervisor's gateway tunnel interfaces (on br-int), by name."""
    ports = br_int_ports(hv)
    return {name: row for name, row in interfaces(hv).items() if name.startswith("tg-") and name in ports}


def expected_columns(me: Hypervisor, peer: Hypervisor) -> tuple[str, dict[str, str], dict[str, str]]:
    """The type, options and bfd a tg- port from ``me`` to ``peer`` must have."""
    options = {"remote_ip": peer.tunnel_ip, "local_ip": me.tunnel_ip, "key": "flow", "dst_port": str(GATEWAY_UDP_PORT)}
    bfd = {"enable": "true", "min_tx": str(BFD_MS), "min_rx": str(BFD_MS), "decay_min_rx": "0"}
    return "vxlan", options, bfd


def expected_ports(lab: Lab, gateways: set[str]) -> dict[str, set[str]]:
    """Each hypervisor's tg- port names: a gateway reaches every other hypervisor, the others every gateway."""
    out = {}
    for me in lab.hypervisors:
        peers = [p for p in lab.hypervisors if p is not me and (me.name in gateways or p.name in gateways)]
        out[me.name] = {gateway_tunnel_name(p.tunnel_ip) for p in peers}
    return out


def all_up(lab: Lab) -> bool:
    """Whether every tg- interface of every hypervisor reports BFD up and forwarding (and there is one)."""
    rows = [row for hv in lab.hypervisors for row in tg_rows(hv).values()]
    return bool(rows) and all(r["bfd_status"].get("state") == "up" and r["bfd_status"].get("forwarding") == "true"
                              for r in rows)


# -- the cloud ----------------------------------------------------------------------------------------
@dataclass
class Cloud:
    """The controller, the lab, and what the fixture saw while setting them up."""

    ctl: ControllerProcess
    lab: Lab
    before_registration: dict[str, Any] = field(default_factory=dict)
    ports_before: dict[str, set[str]] = field(default_factory=dict)
    registered_at: float = 0.0

    def hv(self, name: str) -> Hypervisor:
        return self.lab.hypervisor(name)

    def status(self) -> dict[str, Any]:
        return self.ctl.request("GET", "/ovsdb")

    def set_gateway(self, name: str, physnets: list[str]) -> dict[str, Any]:
        return self.ctl.request("PUT", f"/v2.0/hypervisors/{name}", {"hypervisor": {"gateway_for": physnets}})

    def wait_ports(self, gateways: set[str], timeout: float = 15.0) -> None:
        """Wait until every hypervisor's br-int has exactly the tg- ports ``gateways`` call for."""
        want = expected_ports(self.lab, gateways)
        wait_until(lambda: {hv.name: set(tg_rows(hv)) for hv in self.lab.hypervisors} == want, timeout,
                   lambda: f"tg- ports {want}; have { {hv.name: set(tg_rows(hv)) for hv in self.lab.hypervisors} }"
                           f"; controller log:\n{self.ctl.log_tail()}")

    def bfd(self) -> dict[str, dict[str, Any]]:
        """Every tg- interface's bfd_status, by hypervisor and port."""
        return {hv.name: {n: r["bfd_status"] for n, r in tg_rows(hv).items()} for hv in self.lab.hypervisors}

    def wait_bfd_up(self, timeout: float = 15.0) -> float:
        """Wait until BFD is up on every tg- port; how long it took."""
        t0 = time.monotonic()
        wait_until(lambda: all_up(self.lab), timeout, lambda: f"BFD up everywhere: {self.bfd()}")
        return time.monotonic() - t0


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """Controller + 3 hypervisors managed over OVSDB; registered (hv1 a gateway for physnet1) once all connected."""
    require_lab()
    ctl = ControllerProcess(str(tmp_path_factory.mktemp("tfo") / "ctl")).start()
    lab = Lab(prefix=lab_prefix("o"), n_hypervisors=3, controller_unix_socket=ctl.unix_socket, api_url=ctl.api_url,
              manager_unix_socket=ctl.ovsdb_socket)
    try:
        lab.__enter__()
        c = Cloud(ctl, lab)
        wait_until(lambda: c.status()["connections"] == 3, 15, lambda: f"3 OVSDB connections: {c.status()}")
        time.sleep(0.5)  # their replicas are in: an unregistered hypervisor would show now if it were identified
        c.before_registration = c.status()
        c.ports_before = {hv.name: set(tg_rows(hv)) for hv in lab.hypervisors}
        c.overlay_before = {hv.name: {p for p in br_int_ports(hv) if p.startswith("tf-")} for hv in lab.hypervisors}
        c.registered_at = time.monotonic()
        for hv in lab.hypervisors:
            body = {"name": hv.name, "datapath_id": f"{hv.dpid:016x}", "tunnel_ip": hv.tunnel_ip}
            if hv.name == "hv1":
                body["gateway_for"] = ["physnet1"]
            ctl.request("POST", "/v2.0/hypervisors", {"hypervisor": body})
        yield c
    finally:
        lab.stop()
        ctl.stop()


# -- 1, 2: identification, creation, BFD ----------------------------------------------------------------
@pytest.mark.ovs
@pytest.mark.lab
def test_ports_created_and_bfd_up(cloud: Cloud, record_property) -> None:
    assert cloud.before_registration["connections"] == 3
    assert cloud.before_registration["hypervisors"] == {}, "nothing identified before registration"
    assert cloud.ports_before == {"hv1": set(), "hv2": set(), "hv3": set()}
    cloud.wait_ports({"hv1"})
    ports_at = time.monotonic() - cloud.registered_at
    cloud.wait_bfd_up()
    up_at = time.monotonic() - cloud.registered_at
    record_property("registration_to_ports_s", round(ports_at, 2))
    record_property("registration_to_bfd_up_s", round(up_at, 2))
    print(f"tg- ports {ports_at:.2f} s and BFD up everywhere {up_at:.2f} s after registration")
    for me in cloud.lab.hypervisors:
        for peer in cloud.lab.hypervisors:
            name = gateway_tunnel_name(peer.tunnel_ip)
            row = tg_rows(me).get(name)
            if row is None:
                continue
            kind, options, bfd = expected_columns(me, peer)
            assert (row["type"], row["options"], row["bfd"]) == (kind, options, bfd), (me.name, name, row)
    # Each end's own state is the truth; the remote_state ovs-vswitchd writes lags (its status refresh, ~5 s).
    wait_until(lambda: all(r["bfd_status"].get("remote_state") == "up" for hv in cloud.lab.hypervisors
                           for r in tg_rows(hv).values()), 15, lambda: f"remote_state up: {cloud.bfd()}")
    hv1 = cloud.ctl.show("hypervisor", "hv1")
    assert hv1["gateway_for"] == ["physnet1"] and cloud.ctl.show("hypervisor", "hv2")["gateway_for"] == []
    status = cloud.status()
    assert sorted(status["hypervisors"]) == ["hv1", "hv2", "hv3"]
    assert all(h["writer"] for h in status["hypervisors"].values())
    assert set(status["hypervisors"]["hv1"]["tunnels"]) == expected_ports(cloud.lab, {"hv1"})["hv1"]
    wait_until(lambda: tunnel_gauge(cloud.ctl) == {"up": 4, "down": 0}, 10,
               lambda: f"the gateway tunnel gauge to show 4 up, 0 down: {tunnel_gauge(cloud.ctl)}")


def tunnel_gauge(ctl: ControllerProcess) -> dict[str, float]:
    """``tenantflow_gateway_tunnels`` summed over hypervisors, by state."""
    with urllib.request.urlopen(ctl.api_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {"up": 0.0, "down": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name == "tenantflow_gateway_tunnels":
            for sample in family.samples:
                out[sample.labels["state"]] += sample.value
    return out


# -- 3: reconciled, never flushed ------------------------------------------------------------------------
@pytest.mark.ovs
@pytest.mark.lab
def test_hand_made_ports_reconciled(cloud: Cloud) -> None:
    cloud.wait_ports({"hv1"})
    cloud.wait_bfd_up()
    hv1, hv2, hv3 = (cloud.hv(n) for n in ("hv1", "hv2", "hv3"))
    to_hv2, to_hv3, to_hv1 = (gateway_tunnel_name(h.tunnel_ip) for h in (hv2, hv3, hv1))
    before = {hv.name: {n: r["_uuid"] for n, r in tg_rows(hv).items()} for hv in cloud.lab.hypervisors}
    stray = gateway_tunnel_name("10.255.0.254")
    hv2.vsctl("add-port", "br-int", stray, "--", "set", "interface", stray, "type=vxlan",
              "options:remote_ip=10.255.0.254", "bfd:enable=true")
    hv2.vsctl("add-port", "br-int", "handmade0", "--", "set", "interface", "handmade0", "type=internal")
    hv3.vsctl("set", "interface", to_hv1, "bfd:min_tx=1000", "options:dst_port=4791")
    hv1.vsctl("del-port", "br-int", to_hv2)

    cloud.wait_ports({"hv1"})
    wait_until(lambda: tg_rows(hv3)[to_hv1]["bfd"]["min_tx"] == str(BFD_MS), 10, "hv3's BFD timer put back")
    assert "handmade0" in br_int_ports(hv2), "a port that is not ours stays"
    after = {hv.name: {n: r["_uuid"] for n, r in tg_rows(hv).items()} for hv in cloud.lab.hypervisors}
    assert after["hv3"][to_hv1] == before["hv3"][to_hv1], "corrected in place, not recreated"
    kind, options, bfd = expected_columns(hv3, hv1)
    row = tg_rows(hv3)[to_hv1]
    assert (row["type"], row["options"], row["bfd"]) == (kind, options, bfd)
    assert after["hv1"][to_hv2] != before["hv1"][to_hv2], "the deleted port was made again"
    assert after["hv1"][to_hv3] == before["hv1"][to_hv3] and after["hv2"] == before["hv2"], \
        "the ports nobody touched were not rewritten"
    cloud.wait_bfd_up()
    hv2.vsctl("del-port", "br-int", "handmade0")


def overlay_rows(hv: Hypervisor) -> dict[str, dict[str, Any]]:
    """The hypervisor's br-int interfaces whose names start with ``tf-`` (the overlay's tunnel ports, aliases)."""
    ports = br_int_ports(hv)
    return {name: row for name, row in interfaces(hv).items() if name.startswith("tf-") and name in ports}


@pytest.mark.ovs
@pytest.mark.lab
def test_overlay_tunnel_ports_are_the_controllers_to_make(cloud: Cloud) -> None:
    """Operator step 4 is the controller's: tf-vxlan, tf-geneve and tf-gre appear once a hypervisor is
    registered, with its tunnel endpoint; a wrong option is put back in place; a port named tf-gre@... (the
    scale lab's aliases) stands for tf-gre; none is ever deleted."""
    assert cloud.overlay_before == {"hv1": set(), "hv2": set(), "hv3": set()}, "nothing before registration"
    wanted = {name: kind for kind, name in TUNNEL_PORT_NAMES.items()}
    for hv in cloud.lab.hypervisors:
        wait_until(lambda hv=hv: set(overlay_rows(hv)) == set(wanted), 10, f"{hv.name}'s overlay ports")
        for name, row in overlay_rows(hv).items():
            assert row["type"] == wanted[name]
            assert row["options"] == {"remote_ip": "flow", "key": "flow", "local_ip": hv.tunnel_ip}, (hv.name, row)
    hv2, hv3 = cloud.hv("hv2"), cloud.hv("hv3")
    before = overlay_rows(hv2)["tf-vxlan"]["_uuid"]
    hv2.vsctl("set", "interface", "tf-vxlan", "options:local_ip=10.255.0.1")
    wait_until(lambda: overlay_rows(hv2)["tf-vxlan"]["options"]["local_ip"] == hv2.tunnel_ip, 10, "local_ip put back")
    assert overlay_rows(hv2)["tf-vxlan"]["_uuid"] == before, "corrected in place"
    hv3.vsctl("del-port", "br-int", "tf-gre", "--", "add-port", "br-int", "tf-gre@x", "--", "set", "interface",
              "tf-gre@x", "type=gre", "options:remote_ip=flow", "options:key=flow", f"options:local_ip={hv3.tunnel_ip}")
    time.sleep(1.0)  # the controller saw the change (it reacts within a poll)
    assert set(overlay_rows(hv3)) == {"tf-vxlan", "tf-geneve", "tf-gre@x"}, "an alias stands for tf-gre"
    hv3.vsctl("del-port", "br-int", "tf-gre@x")
    wait_until(lambda: "tf-gre" in overlay_rows(hv3), 10, "tf-gre made again once its alias went")


# -- 4: un-marking the gateway ------------------------------------------------------------------------------
@pytest.mark.ovs
@pytest.mark.lab
def test_unmark_gateway_removes_ports_and_nothing_else(cloud: Cloud, record_property) -> None:
    cloud.wait_ports({"hv1"})
    others = {hv.name: {p for p in br_int_ports(hv) if not p.startswith("tg-")} for hv in cloud.lab.hypervisors}
    assert all({"tf-vxlan", "tf-geneve"} <= ports for ports in others.values())
    assert cloud.set_gateway("hv1", [])["hypervisor"]["gateway_for"] == []
    cloud.wait_ports(set())
    assert {hv.name: br_int_ports(hv) for hv in cloud.lab.hypervisors} == others
    wait_until(lambda: tunnel_gauge(cloud.ctl) == {"up": 0, "down": 0}, 10, "no gateway tunnel left in the gauge")

    t0 = time.monotonic()
    cloud.set_gateway("hv1", ["physnet1"])
    cloud.wait_ports({"hv1"})
    cloud.wait_bfd_up()
    record_property("remark_to_bfd_up_s", round(time.monotonic() - t0, 2))
    assert {hv.name: {p for p in br_int_ports(hv) if not p.startswith("tg-")} for hv in cloud.lab.hypervisors} \
        == others


# -- 4b: a dead gateway ----------------------------------------------------------------------------------------
@pytest.mark.ovs
@pytest.mark.lab
def test_bfd_sees_the_gateway_go_and_come_back(cloud: Cloud, record_property) -> None:
    """hv1's underlay link down: both computes' tunnels to it go down (3 x 100 ms), the gauge says so; then back."""
    cloud.wait_ports({"hv1"})
    cloud.wait_bfd_up()
    hv1 = cloud.hv("hv1")
    port = gateway_tunnel_name(hv1.tunnel_ip)
    computes = [cloud.hv("hv2"), cloud.hv("hv3")]

    def states() -> list[str]:
        return [tg_rows(hv)[port]["bfd_status"].get("state") for hv in computes]

    t0 = time.monotonic()
    sh.run(["ip", "-n", hv1.netns, "link", "set", "underlay0", "down"])
    try:
        wait_until(lambda: states() == ["down", "down"], 5, lambda: f"the computes' {port} down: {states()}",
                   interval=0.01)
        seen = time.monotonic() - t0
        record_property("gateway_down_seen_ms", round(seen * 1000))
        print(f"gateway's link down: both computes' BFD down after {seen * 1000:.0f} ms")
        wait_until(lambda: tunnel_gauge(cloud.ctl)["down"] >= 2, 10, "the gauge counting them down")
    finally:
        sh.run(["ip", "-n", hv1.netns, "link", "set", "underlay0", "up"])
    cloud.wait_bfd_up()
    wait_until(lambda: tunnel_gauge(cloud.ctl) == {"up": 4, "down": 0}, 10, "the gauge: 4 up again")


# -- 5: restart ------------------------------------------------------------------------------------------------
@pytest.mark.ovs
@pytest.mark.lab
def test_restart_rewrites_nothing(cloud: Cloud, record_property) -> None:
    cloud.wait_ports({"hv1"})
    cloud.wait_bfd_up()
    before = {hv.name: {n: (r["_uuid"], r["bfd_status"]["flap_count"]) for n, r in tg_rows(hv).items()}
              for hv in cloud.lab.hypervisors}
    t0 = time.monotonic()
    cloud.ctl.restart()  # SIGKILL, then the same state file and sockets
    wait_until(lambda: sorted(cloud.status()["hypervisors"]) == ["hv1", "hv2", "hv3"], 30,
               lambda: f"every hypervisor's OVSDB back: {cloud.status()}; log:\n{cloud.ctl.log_tail()}")
    record_property("restart_to_ovsdb_identified_s", round(time.monotonic() - t0, 2))
    wait_until(lambda: tunnel_gauge(cloud.ctl) == {"up": 4, "down": 0}, 10, "the restarted gauge: 4 up")
    time.sleep(2)  # anything it was going to write, it has written
    after = {hv.name: {n: (r["_uuid"], r["bfd_status"]["flap_count"]) for n, r in tg_rows(hv).items()}
             for hv in cloud.lab.hypervisors}
    assert after == before, "same rows, no BFD flap"
    assert all_up(cloud.lab)
    totals = cloud.ctl.metrics()
    assert totals.get("tenantflow_ovsdb_transactions_total", 0) == 0
    assert totals.get("tenantflow_gateway_port_changes_total", 0) == 0


# -- the API and the options, without OVS ----------------------------------------------------------------------
@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    a = Api(tmp_path / "topology.sqlite")
    yield a
    a.close()


def test_api_gateway_for(api: Api) -> None:
    hv = api.create("hypervisor", name="gw1", datapath_id=1, tunnel_ip="192.168.100.1", gateway_for=["physnet1"])
    assert hv["gateway_for"] == ["physnet1"]
    assert api.create("hypervisor", name="c1", datapath_id=2, tunnel_ip="192.168.100.2")["gateway_for"] == []
    assert api.topology.graph.hypervisor("gw1").gateway_for == ("physnet1",)
    assert api.update("hypervisor", "gw1", gateway_for=["physnet1", "physnet2"])["gateway_for"] == \
        ["physnet1", "physnet2"]
    assert api.update("hypervisor", "gw1", tunnel_ip="192.168.100.11")["gateway_for"] == ["physnet1", "physnet2"]
    for bad in ("physnet1", [""], ["a", "a"], [1], {"physnet1": True}):
        api.expect_error(400, "HTTPBadRequest" if not isinstance(bad, list) or bad == [1] else "InvalidInput",
                         "PUT", "/v2.0/hypervisors/gw1", {"hypervisor": {"gateway_for": bad}})
    api.restart()  # the same file, read again: it was stored
    assert api.topology.graph.hypervisor("gw1").gateway_for == ("physnet1", "physnet2")
    assert api.show("hypervisor", "gw1")["gateway_for"] == ["physnet1", "physnet2"]


def test_listen_targets() -> None:
    assert parse_listen("ptcp:6640 punix:/run/tenantflow/ovsdb.sock") == \
        ["ptcp:6640", "punix:/run/tenantflow/ovsdb.sock"]
    assert parse_listen("ptcp:6640:127.0.0.1,ptcp:6641:[::1]") == ["ptcp:6640:127.0.0.1", "ptcp:6641:[::1]"]
    assert parse_listen("") == []
    for bad in ("tcp:1.2.3.4:6640", "ptcp:", "ptcp:http", "ptcp:70000", "punix:"):
        with pytest.raises(ValueError):
            parse_listen(bad)


# -- many servers, one big transaction: bare ovsdb-servers (no vswitchd, no namespace), the manager in-process --
def test_many_servers_and_a_large_transaction(tmp_path) -> None:
    """40 ovsdb-servers connect at once; the gateway's 699 ports (a transaction bigger than the socket's buffer).

    Their bridges' datapath ids are set by hand (ovs-vswitchd would fill them in). A second
    manager, as after a restart, finds everything in place and commits nothing.
    """
    missing = [t for t in ("ovsdb-server", "ovsdb-tool", "ovs-vsctl") if shutil.which(t) is None]
    unless_able(f"{missing[0]} not installed" if missing else None, "OVSDB test")
    registered, servers = 700, 40
    topo = Topology(str(tmp_path / "topology.sqlite"))
    for i in range(1, registered + 1):
        topo.register_hypervisor({"name": f"hv{i}", "datapath_id": i, "tunnel_ip": f"10.1.{i // 250}.{i % 250 + 1}",
                                  **({"gateway_for": ["physnet1"]} if i == 1 else {})})
    dbs = [PrivateOVS("", str(tmp_path / f"s{i}")) for i in range(1, servers + 1)]
    sock = str(tmp_path / "ovsdb.sock")
    manager = None
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: _bare_server(dbs[i - 1], i), range(1, servers + 1)))
        manager = OvsdbManager(topo, [f"punix:{sock}"]).start()
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda db: db.vsctl("--no-wait", "set-manager", f"unix:{sock}"), dbs))

        def ports(db: PrivateOVS) -> set[str]:
            return {p for p in db.vsctl("list-ports", "br-int").split() if p.startswith("tg-")}

        wait_until(lambda: len(ports(dbs[0])) == registered - 1 and all(len(ports(db)) == 1 for db in dbs[1:]),
                   60, lambda: f"every server's tg- ports: {[len(ports(db)) for db in dbs]}")
        print(f"{servers} servers, {registered - 1} ports on the gateway: written {time.monotonic() - t0:.2f} s "
              "after the first set-manager")
        assert len(manager.bfd_status("hv1")) == registered - 1
        assert all(e["enabled"] for e in manager.bfd_status("hv1").values())
        rows = interfaces_of(dbs[0])
        written = _transactions()
        manager.stop()
        manager = OvsdbManager(topo, [f"punix:{sock}"]).start()  # as after a restart
        wait_until(lambda: len(manager.status()["hypervisors"]) == servers, 30,
                   lambda: f"every server back: {manager.status()['connections']}")
        time.sleep(1)
        assert _transactions() == written, "nothing written after the restart"
        assert interfaces_of(dbs[0]) == rows
    finally:
        if manager is not None:
            manager.stop()
        for db in dbs:
            db.stop()
        topo.close()


def _bare_server(db: PrivateOVS, index: int) -> None:
    """An ovsdb-server (its ovs-vswitchd not started) whose br-int has datapath id ``index``."""
    os.makedirs(db.rundir, exist_ok=True)
    sh.run(["ovsdb-tool", "create", db.db, SCHEMA])
    db.start_ovsdb()
    db.vsctl("--no-wait", "add-br", "br-int", "--", "set", "bridge", "br-int", f"datapath_id={index:016x}")


def interfaces_of(db: PrivateOVS) -> dict[str, str]:
    """Interface name -> _uuid in a bare server's database."""
    out = json.loads(db.vsctl("-f", "json", "--columns=_uuid,name", "list", "interface"))
    return {row[1]: row[0][1] for row in out["data"]}


def _transactions() -> float:
    """This process's ``tenantflow_ovsdb_transactions_total``, over every label."""
    return sum(s.value for m in REGISTRY.collect() if m.name == "tenantflow_ovsdb_transactions"
               for s in m.samples if s.name.endswith("_total"))


# -- one OVSDB connection, several hypervisors: the scale lab (dummy bridges, 2 per vswitchd) --------------------
@pytest.mark.ovs
@pytest.mark.lab
def test_one_connection_serves_each_bridge(tmp_path) -> None:
    """The scale lab's hv1 (a gateway) and hv2 share a vswitchd, hv3 has one: 2 connections, each bridge its ports.

    OVSDB keeps port names unique in a database: a tg- port the gateway wants, whose name
    a port of another bridge has, is not created (the rest of the transaction goes through),
    and is once that port is gone.
    """
    require_lab()
    with ControllerProcess(str(tmp_path / "ctl")) as ctl, \
            ScaleLab(3, f"tcp:127.0.0.1:{ctl.of_port}", bridges_per_vswitchd=2, api_url=ctl.api_url,
                     workdir=str(tmp_path / "lab")) as lab:
        lab.register()
        lab.set_manager(f"unix:{ctl.ovsdb_socket}")
        hv1, hv2, hv3 = (lab.hypervisor(n) for n in ("hv1", "hv2", "hv3"))
        assert hv1.vswitchd is hv2.vswitchd and hv3.vswitchd is not hv1.vswitchd
        late = gateway_tunnel_name("172.31.0.9")  # a hypervisor registered below, with no bridge of its own here
        hv1.vswitchd.vsctl("add-br", "br-other", "--", "set", "bridge", "br-other", "datapath_type=dummy",
                           "--", "add-port", "br-other", late)
        ctl.request("PUT", "/v2.0/hypervisors/hv1", {"hypervisor": {"gateway_for": ["physnet1"]}})
        ctl.request("POST", "/v2.0/hypervisors", {"hypervisor": {"name": "hv9", "datapath_id": "00000000000000f9",
                                                                 "tunnel_ip": "172.31.0.9"}})

        def tg_ports(hv) -> set[str]:
            return {p for p in hv.vswitchd.vsctl("list-ports", hv.bridge).split() if p.startswith("tg-")}

        to = {hv.name: gateway_tunnel_name(hv.tunnel_ip) for hv in lab}
        want = {"hv1": {to["hv2"], to["hv3"]}, "hv2": {to["hv1"]}, "hv3": {to["hv1"]}}
        wait_until(lambda: {hv.name: tg_ports(hv) for hv in lab} == want, 20,
                   lambda: f"tg- ports per bridge: { {hv.name: tg_ports(hv) for hv in lab} }\n{ctl.log_tail()}")
        status = ctl.request("GET", "/ovsdb")
        assert status["connections"] == 2 and sorted(status["hypervisors"]) == ["hv1", "hv2", "hv3"]
        assert status["hypervisors"]["hv1"]["connection"] == status["hypervisors"]["hv2"]["connection"]
        assert "not creating " + late in ctl.log_tail(200)
        assert hv1.vswitchd.vsctl("list-ports", "br-other").split() == [late], "another bridge's port left alone"
        hv1.vswitchd.vsctl("del-br", "br-other")
        wait_until(lambda: tg_ports(hv1) == want["hv1"] | {late}, 10, lambda: f"{late} made: {ctl.log_tail()}")
