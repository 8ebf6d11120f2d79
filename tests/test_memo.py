"""The flow memo tables forget deleted ports (flows.units' memo, flows.shared's table).

The soak saw the controller grow about 3 kB per API operation for as long as it ran
(README, "Soak"): both process-wide memo tables kept every port record (and its flows)
they were ever given, a deleted port's and each superseded version of a live one, until
they held a million entries. They are now swept as they grow. Here a real topology on a
real SQLite file, followed by the incremental engine (as in the controller), creates,
binds, plugs and deletes ports on 3 hypervisors again and again: a weak reference to
every record of every deleted port says how many the process still keeps; they must not
accumulate, and the engine must still equal a full compile. Measured (300 ports, 2 records
each): without the sweeps all 600 records alive, 1,215 memo and 1,824 shared entries; with
them 25 alive, 54 and 61 entries.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from flows import shared, units
from flows.engine import FlowEngine
from topology.model import TUNNEL_PORT_NAMES, tap_name
from topology.state import Topology

HOSTS = ("hv1", "hv2", "hv3")
CYCLES = 300
THRESHOLD = 64  # sweep thresholds for the test (the controller's: 256 entries), so a few hundred ports cross them


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(units, "MEMO_SWEEP_MIN", THRESHOLD)
    monkeypatch.setattr(units, "_sweep_at", THRESHOLD)
    monkeypatch.setattr(shared, "SWEEP_MIN", THRESHOLD)
    monkeypatch.setattr(shared, "_sweep_at", THRESHOLD)
    units._memo.clear()
    shared.clear()
    topo = Topology(str(tmp_path / "memo.sqlite"))
    topo.store._conn.execute("PRAGMA synchronous=OFF")  # a real file; durability is not what is tested
    for i, name in enumerate(HOSTS):
        topo.register_hypervisor({"name": name, "datapath_id": i + 1, "tunnel_ip": f"192.0.2.{i + 1}"})
    engine = FlowEngine.attach(topo)
    net = topo.create_network({"name": "n", "provider:network_type": "vxlan"})
    topo.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24", "ip_version": 4})
    yield topo, engine, net
    topo.close()


def _plug(topo: Topology, host: str) -> None:
    """What the host's switch reports: its tunnel port and the taps of the ports bound there."""
    ofports = {TUNNEL_PORT_NAMES["vxlan"]: 1}
    ofports.update({tap_name(p.id): 10 + p.key for p in topo.graph.ports_on(host)})
    topo.set_live_ofports(host, ofports)


def test_deleted_ports_leave_nothing_in_the_memo_tables(cloud) -> None:
    topo, engine, net = cloud
    keep = [topo.create_port({"network_id": net.id, "binding:host_id": h, "device_owner": "compute:nova"})
            for h in HOSTS]  # live ports on every host: their flows must stay right through the sweeps
    for host in HOSTS:
        _plug(topo, host)
    dead: list[weakref.ref] = []
    for i in range(CYCLES):
        host = HOSTS[i % len(HOSTS)]
        port = topo.create_port({"network_id": net.id, "binding:host_id": host, "device_owner": "compute:nova"})
        versions = [weakref.ref(port)]
        _plug(topo, host)  # ACTIVE: a new record of the port
        versions.append(weakref.ref(topo.graph.port(port.id)))
        topo.delete_port(port.id)
        _plug(topo, host)
        dead += versions
        del port
    gc.collect()
    alive = sum(1 for ref in dead if ref() is not None)
    print(f"records of {CYCLES} deleted ports still alive: {alive}; memo {len(units._memo)}, "
          f"shared {len(shared._flows)} entries")
    assert alive <= 2 * THRESHOLD, f"{alive} records of {CYCLES} deleted ports still held (memo tables)"
    assert len(units._memo) <= 4 * THRESHOLD and len(shared._flows) <= 4 * THRESHOLD
    assert engine.mismatches() == []
    assert all(topo.graph.port(p.id) is not None for p in keep)


class _Flow:
    """Stands for a flow: an object the table holds, or the engine too."""


def test_sweep_keeps_what_is_held_elsewhere_and_drops_the_rest() -> None:
    shared.clear()
    engine = {"held": _Flow(), "held in a tuple": _Flow()}  # what the engine's hypervisors hold
    shared.shared_flow("held", lambda: engine["held"])
    shared.shared_flow("tuple, one held", lambda: (_Flow(), engine["held in a tuple"]))
    shared.shared_flow("alone", _Flow)
    shared.shared_flow("tuple, none held", lambda: (_Flow(), _Flow()))
    shared.shared_flow("none", lambda: None)
    assert shared.sweep() == 3
    assert sorted(shared._flows) == ["held", "tuple, one held"]
    engine.clear()  # the port is gone: nothing holds its flows any more
    assert shared.sweep() == 2
    assert not shared._flows
