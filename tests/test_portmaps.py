"""Remembered port maps (controller.portmaps): a restart compiles against the bridges' last maps.

On a real SQLite file, without a switch: the first controller records its bridges' maps and
writes them; a second one on the same file starts with them, its ports DOWN until the switches
come back, its flows already those of a full compile with the maps, and a switch that comes back
with the same ports costs no hypervisor rebuild. A disconnect keeps a hypervisor's flows.
"""

from __future__ import annotations

import logging

import pytest

from controller.portmaps import PortMapFile, path_for, read
from flows.compiler import compile_hypervisor
from flows.engine import FlowEngine
from topology.model import TUNNEL_PORT_NAMES, tap_name
from topology.state import Topology

HOSTS = ["hv1", "hv2", "hv3"]


def _cloud(db: str) -> tuple[Topology, list]:
    topo = Topology(db)
    for i, name in enumerate(HOSTS):
        topo.register_hypervisor({"name": name, "datapath_id": i + 1, "tunnel_ip": f"192.0.2.{i + 1}"})
    net = topo.create_network({"name": "n", "provider:network_type": "vxlan"})
    topo.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24", "ip_version": 4})
    ports = [topo.create_port({"network_id": net.id, "binding:host_id": h, "device_owner": "compute:nova"})
             for h in HOSTS]
    return topo, ports


def _maps(topo: Topology) -> dict[str, dict[str, int]]:
    """What each host's switch reports: its tunnel port (renumbered per host) and its taps."""
    return {h: {TUNNEL_PORT_NAMES["vxlan"]: 7 + i, **{tap_name(p.id): 20 + p.key for p in topo.graph.ports_on(h)}}
            for i, h in enumerate(HOSTS)}


def _status(topo: Topology, port_id: str) -> str:
    return topo.graph.port(port_id).attrs.get("status")


def _cookies(engine: FlowEngine, name: str) -> set[int]:
    return set(engine.desired(name))


def test_a_restart_compiles_against_the_remembered_maps(tmp_path) -> None:
    db = str(tmp_path / "state.sqlite")
    topo, ports = _cloud(db)
    remembered = PortMapFile(path_for(db)).attach(topo)
    engine = FlowEngine.attach(topo)
    maps = _maps(topo)
    for name, ofports in maps.items():
        topo.set_live_ofports(name, ofports)
    assert {_status(topo, p.id) for p in ports} == {"ACTIVE"}
    before = {name: _cookies(engine, name) for name in HOSTS}
    remembered.close()
    topo.close()
    assert read(path_for(db)) == maps

    again = Topology(db)
    PortMapFile(path_for(db)).attach(again)
    assert {name: again.graph.ofports(name) for name in HOSTS} == maps
    assert not any(again.graph.connected(name) for name in HOSTS)
    assert {_status(again, p.id) for p in ports} == {"DOWN"}  # no switch is back yet
    engine = FlowEngine.attach(again)
    for name in HOSTS:  # the flows of a full compile with the maps, the same as before the restart
        assert _cookies(engine, name) == {f.cookie for f in compile_hypervisor(again.graph, name)} == before[name]
    rebuilds = engine.stats.hypervisor_rebuilds
    generation = engine.generation
    for name, ofports in maps.items():  # the switches come back unchanged: nothing to compile
        again.set_live_ofports(name, dict(ofports))
    assert engine.stats.hypervisor_rebuilds == rebuilds and engine.generation == generation
    assert {_status(again, p.id) for p in ports} == {"ACTIVE"}
    again.close()


def test_a_switch_that_comes_back_changed_gets_its_changes(tmp_path) -> None:
    db = str(tmp_path / "state.sqlite")
    topo, ports = _cloud(db)
    remembered = PortMapFile(path_for(db)).attach(topo)
    maps = _maps(topo)
    for name, ofports in maps.items():
        topo.set_live_ofports(name, ofports)
    remembered.close()
    topo.close()

    again = Topology(db)
    PortMapFile(path_for(db)).attach(again)
    engine = FlowEngine.attach(again)
    renumbered = {**maps["hv1"], TUNNEL_PORT_NAMES["vxlan"]: 99}  # its tunnel port was made again meanwhile
    again.set_live_ofports("hv1", renumbered)
    assert engine.mismatches() == []
    assert _cookies(engine, "hv1") != {f.cookie for f in compile_hypervisor_with(again, "hv1", maps["hv1"])}
    again.close()


def compile_hypervisor_with(topo: Topology, name: str, ofports: dict[str, int]) -> list:
    """A full compile of ``name`` as if its bridge still had ``ofports`` (on the same graph, put back after)."""
    live = topo.graph.ofports(name)
    topo.graph.set_ofports(name, ofports)
    try:
        return compile_hypervisor(topo.graph, name)
    finally:
        topo.graph.set_ofports(name, live)
        topo.graph.take_journal()


def test_a_disconnect_keeps_the_flows_and_downs_the_ports(tmp_path) -> None:
    topo, ports = _cloud(str(tmp_path / "state.sqlite"))
    engine = FlowEngine.attach(topo)
    for name, ofports in _maps(topo).items():
        topo.set_live_ofports(name, ofports)
    flows = _cookies(engine, "hv1")
    rebuilds = engine.stats.hypervisor_rebuilds
    topo.set_disconnected("hv1")
    assert _status(topo, ports[0].id) == "DOWN" and not topo.graph.connected("hv1")
    assert _cookies(engine, "hv1") == flows and engine.stats.hypervisor_rebuilds == rebuilds
    assert engine.mismatches() == []
    topo.close()


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"hv1": {"tf-vxlan": "seven"}}'])
def test_a_damaged_file_is_a_restart_without_maps(tmp_path, caplog, content: str) -> None:
    db = str(tmp_path / "state.sqlite")
    topo, _ = _cloud(db)
    topo.close()
    with open(path_for(db), "w", encoding="utf-8") as f:
        f.write(content)
    again = Topology(db)
    with caplog.at_level(logging.WARNING, logger="controller.portmaps"):
        remembered = PortMapFile(path_for(db)).attach(again)
    assert not any(again.graph.ofports(name) for name in HOSTS)
    assert FlowEngine.attach(again).mismatches() == []
    again.set_live_ofports("hv2", {TUNNEL_PORT_NAMES["vxlan"]: 3})
    remembered.flush()  # and the file is whole again
    assert read(path_for(db)) == {"hv2": {TUNNEL_PORT_NAMES["vxlan"]: 3}}
    again.close()


def test_maps_of_deleted_or_unknown_hypervisors_are_not_remembered(tmp_path) -> None:
    db = str(tmp_path / "state.sqlite")
    topo, ports = _cloud(db)
    remembered = PortMapFile(path_for(db)).attach(topo)
    for name, ofports in _maps(topo).items():
        topo.set_live_ofports(name, ofports)
    topo.set_live_ofports("stranger", {"tf-vxlan": 1})  # a bridge no hypervisor claims (yet)
    topo.delete_port(ports[2].id)
    topo.delete_hypervisor("hv3")
    remembered.flush()
    assert sorted(read(path_for(db))) == ["hv1", "hv2"]
    remembered.close()
    topo.close()
