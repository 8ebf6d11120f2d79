"""The durable store: restart reloads exactly what was written; failed writes leave no trace."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict

import pytest

from topology.state import Topology
from topology.store import Conflict, Unavailable


def _state(topo: Topology) -> dict[str, list[dict]]:
    """Every record, attrs included (attrs do not take part in record equality)."""
    return {kind: [asdict(r) for r in topo.graph.records(kind)] for kind in ("network", "subnet", "port", "hv")}


def _rows(path: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def _populate(topo: Topology) -> None:
    topo.register_hypervisor({"name": "hv1", "datapath_id": "0x1", "tunnel_ip": "192.168.100.1",
                              "bridge_mappings": {"physnet1": "br-phys"}})
    topo.register_hypervisor({"name": "hv2", "datapath_id": 2**64 - 1, "tunnel_ip": "192.168.100.2"})
    vx = topo.create_network({"name": "vx", "project_id": "a"})
    vlan = topo.create_network({"provider:network_type": "vlan"})
    flat = topo.create_network({"provider:network_type": "flat", "provider:physical_network": "physnet2"})
    sub = topo.create_subnet({"network_id": vx.id, "cidr": "10.0.0.0/24", "dns_nameservers": ["1.1.1.1"]})
    topo.create_subnet({"network_id": vx.id, "cidr": "fd00::/64", "gateway_ip": None})
    topo.create_subnet({"network_id": vlan.id, "cidr": "10.1.0.0/24",
                        "allocation_pools": [{"start": "10.1.0.100", "end": "10.1.0.110"}]})
    p = topo.create_port({"network_id": vx.id, "binding:host_id": "hv1", "name": "vm1"})
    topo.create_port({"network_id": vx.id, "binding:host_id": "hv9", "fixed_ips": [{"subnet_id": sub.id}]})
    topo.create_port({"network_id": vlan.id, "mac_address": "fa:16:3e:00:00:01", "device_owner": "network:dhcp"})
    topo.create_port({"network_id": flat.id, "binding:profile": {"x": 1}})
    topo.delete_port(p.id)  # a deleted record must stay deleted
    topo.update_network(vx.id, {"name": "vx2", "mtu": 1400})


def test_restart_reloads_everything(tmp_path) -> None:
    db = str(tmp_path / "t.sqlite")
    topo = Topology(db)
    _populate(topo)
    before = _state(topo)
    topo.close()
    again = Topology(db)
    assert _state(again) == before
    assert [n.key for n in again.graph.records("network")] == [1, 2, 3]
    assert [n.segmentation_id for n in again.graph.records("network")] == [1000, 100, None]
    assert [p.key for p in again.graph.records("port")] == [2, 3, 4]
    assert again.graph.hypervisor_by_dpid(2**64 - 1).name == "hv2"
    assert again.graph.hypervisors_of(next(again.graph.records("network")).id) == {"hv9"}
    # Allocation continues after the restart: no key or segment is handed out twice.
    net = again.create_network({})
    assert (net.key, net.segmentation_id) == (4, 1001)
    assert again.create_port({"network_id": before["network"][0]["id"]}).key == 5
    again.close()


def test_sqlite_settings(tmp_path) -> None:
    db = str(tmp_path / "t.sqlite")
    topo = Topology(db)
    conn = topo.store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"networks", "subnets", "ports", "hypervisors"} <= tables
    topo.close()


def test_keys_are_not_reused_at_once(tmp_path) -> None:
    db = str(tmp_path / "t.sqlite")
    topo = Topology(db)
    n1 = topo.create_network({})
    topo.delete_network(n1.id)
    topo.close()
    topo = Topology(db)
    assert topo.create_network({}).key == 2
    topo.close()


def test_segment_pools_and_exhaustion(tmp_path) -> None:
    topo = Topology(str(tmp_path / "t.sqlite"), vni_range=(7, 8), vlan_range=(10, 10),
                    default_network_type="vlan", default_physical_network="physA")
    assert topo.create_network({}).segmentation_id == 10
    assert (topo.create_network({"provider:physical_network": "physB"}).segmentation_id) == 10
    with pytest.raises(Unavailable) as exc:
        topo.create_network({})
    assert exc.value.kind == "NoNetworkAvailable" and exc.value.status == 503
    # An explicitly requested id outside the range is fine; the range is for automatic picks.
    assert topo.create_network({"provider:network_type": "vxlan", "provider:segmentation_id": 8}).segmentation_id == 8
    assert topo.create_network({"provider:network_type": "vxlan"}).segmentation_id == 7
    before = _rows(str(tmp_path / "t.sqlite"))
    with pytest.raises(Unavailable):
        topo.create_network({"provider:network_type": "vxlan"})
    assert topo.create_network({"provider:network_type": "geneve"}).segmentation_id == 7
    with pytest.raises(Conflict):
        topo.create_network({"provider:network_type": "geneve", "provider:segmentation_id": 7})
    assert len(list(topo.graph.records("network"))) == 5
    topo.close()
    assert len(before) < len(_rows(str(tmp_path / "t.sqlite")))


def test_failed_write_changes_neither_store_nor_graph(tmp_path) -> None:
    db = str(tmp_path / "t.sqlite")
    topo = Topology(db)
    _populate(topo)
    events: list[set[str]] = []
    topo.subscribe(events.append)
    before_rows, before_state = _rows(db), _state(topo)
    vx = next(topo.graph.records("network"))
    sub = topo.graph.subnets_of(vx.id)[0]
    taken = topo.graph.ports_of(vx.id)[0].fixed_ips[0]
    failures = [
        lambda: topo.create_network({"provider:segmentation_id": vx.segmentation_id}),
        lambda: topo.create_port({"network_id": vx.id, "fixed_ips": [{"subnet_id": sub.id}, taken.__dict__]}),
        lambda: topo.create_subnet({"network_id": vx.id, "cidr": "10.0.0.128/25"}),
        lambda: topo.delete_network(vx.id),
        lambda: topo.register_hypervisor({"name": "hv3", "datapath_id": 1, "tunnel_ip": "192.168.100.3"}),
        lambda: topo.update_hypervisor("hv1", {"tunnel_ip": "not-an-ip"}),
    ]
    for fail in failures:
        with pytest.raises(Exception) as exc:
            fail()
        assert exc.value.status in (400, 404, 409), exc.value
        assert _rows(db) == before_rows and _state(topo) == before_state
    assert events == []
    topo.close()


def test_status_is_live_not_stored(tmp_path) -> None:
    db = str(tmp_path / "t.sqlite")
    topo = Topology(db)
    net = topo.create_network({})
    port = topo.create_port({"network_id": net.id, "binding:host_id": "hv1"})
    topo.set_live_ofports("hv1", {port.ofport_name: 3})
    assert topo.graph.port(port.id).attrs["status"] == "ACTIVE"
    assert "ACTIVE" not in "".join(_rows(db))
    topo.close()
    topo = Topology(db)
    assert topo.graph.port(port.id).attrs["status"] == "DOWN" and topo.graph.ofports("hv1") == {}
    topo.close()
