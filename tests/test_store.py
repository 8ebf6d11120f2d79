"""The store contract, one suite for both stores: the embedded SQLite file and a real etcd.

Restart reloads exactly what was written; failed writes leave no trace; whatever
validation did, a store refuses a write that breaks a unique key or a parent, as a
whole; every commit reaches the listener in order. The etcd runs come from
:mod:`tests.etcd_fixtures` (a real one-member cluster, each test on a prefix of its own).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, replace

import pytest

from tests.etcd_fixtures import etcd  # noqa: F401 - fixture
from topology.model import FixedIP, Network, Port, Subnet
from topology.records import Deleted, encode, op_key
from topology.state import Topology
from topology.store import BadRequest, Conflict, NotFound, Stale, Unavailable, open_store


@pytest.fixture(params=["sqlite", "etcd"])
def store_url(request, tmp_path) -> str:
    """Where a test's store lives: an SQLite file, or a fresh prefix on the module's etcd."""
    if request.param == "sqlite":
        return str(tmp_path / "t.sqlite")
    cluster = request.getfixturevalue("etcd")
    return f"{cluster.url}/test-{uuid.uuid4().hex[:12]}"


def _state(topo: Topology) -> dict[str, list[dict]]:
    """Every record, attrs included (attrs do not take part in record equality)."""
    return {kind: [asdict(r) for r in topo.graph.records(kind)] for kind in ("network", "subnet", "port", "hv")}


def _rows(url: str) -> dict:
    """Everything a fresh store object loads from ``url`` (revision aside): records and counters."""
    store = open_store(url)
    try:
        snap = store.load()
    finally:
        store.close()
    return {"records": {k: [encode(r) for r in v] for k, v in snap.records.items()}, "counters": snap.counters}


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


def test_restart_reloads_everything(store_url) -> None:
    db = store_url
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


def test_sqlite_settings(tmp_path) -> None:  # the embedded store's own promises
    db = str(tmp_path / "t.sqlite")
    topo = Topology(db)
    conn = topo.store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"networks", "subnets", "ports", "hypervisors"} <= tables
    topo.close()


def test_keys_are_not_reused_at_once(store_url) -> None:
    db = store_url
    topo = Topology(db)
    n1 = topo.create_network({})
    topo.delete_network(n1.id)
    topo.close()
    topo = Topology(db)
    assert topo.create_network({}).key == 2
    topo.close()


def test_segment_pools_and_exhaustion(store_url) -> None:
    topo = Topology(store_url, vni_range=(7, 8), vlan_range=(10, 10),
                    default_network_type="vlan", default_physical_network="physA")
    assert topo.create_network({}).segmentation_id == 10
    assert (topo.create_network({"provider:physical_network": "physB"}).segmentation_id) == 10
    with pytest.raises(Unavailable) as exc:
        topo.create_network({})
    assert exc.value.kind == "NoNetworkAvailable"
    # An explicitly requested id outside the range is fine; the range is for automatic picks.
    assert topo.create_network({"provider:network_type": "vxlan", "provider:segmentation_id": 8}).segmentation_id == 8
    assert topo.create_network({"provider:network_type": "vxlan"}).segmentation_id == 7
    before = _rows(store_url)
    with pytest.raises(Unavailable):
        topo.create_network({"provider:network_type": "vxlan"})
    assert topo.create_network({"provider:network_type": "geneve"}).segmentation_id == 7
    with pytest.raises(Conflict):
        topo.create_network({"provider:network_type": "geneve", "provider:segmentation_id": 7})
    assert len(list(topo.graph.records("network"))) == 5
    topo.close()
    assert len(before["records"]["network"]) < len(_rows(store_url)["records"]["network"])


def test_failed_write_changes_neither_store_nor_graph(store_url) -> None:
    db = store_url
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
        assert isinstance(exc.value, (BadRequest, NotFound, Conflict)), exc.value
        assert _rows(db) == before_rows and _state(topo) == before_state
    assert events == []
    topo.close()


def test_status_is_live_not_stored(store_url) -> None:
    db = store_url
    topo = Topology(db)
    net = topo.create_network({})
    port = topo.create_port({"network_id": net.id, "binding:host_id": "hv1"})
    topo.set_live_ofports("hv1", {port.ofport_name: 3})
    assert topo.graph.port(port.id).attrs["status"] == "ACTIVE"
    assert "ACTIVE" not in repr(_rows(db))
    topo.close()
    topo = Topology(db)
    assert topo.graph.port(port.id).attrs["status"] == "DOWN" and topo.graph.ofports("hv1") == {}
    topo.close()


# -- the store itself, under the validation: what it refuses whatever the caller checked -----------
class _Log:
    """A store's listener: the commits it delivered."""

    def __init__(self) -> None:
        self.commits: list = []

    def __call__(self, commit) -> None:
        self.commits.append(commit)


def _net(key: int, seg: int) -> Network:
    return Network(f"n{key}", "p", key, "vxlan", seg)


def _port(ident: str, key: int, mac: str, ip: str = "10.0.0.5", net: str = "n1") -> Port:
    return Port(ident, net, "p", key, mac, (FixedIP("s1", ip),))


def _commit(store, ops, based_on: int, before=None) -> int:
    return store.commit(ops, before=before or {op_key(op): None for op in ops}, counters={}, based_on=based_on)


def _wait(predicate, timeout: float = 5.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the store did not deliver in time"
        time.sleep(0.01)


def test_commits_are_atomic_ordered_and_delivered(store_url) -> None:
    store, log = open_store(store_url), _Log()
    rev0 = store.load().revision
    store.listen(log, rev0)
    sub = Subnet("s1", "n1", "p", "10.0.0.0/24", 4, "10.0.0.1")
    rev1 = store.commit([_net(1, 1000), sub], before={("network", "n1"): None, ("subnet", "s1"): None},
                        counters={"network_key": 2}, based_on=rev0)
    p1 = _port("p1", 1, "fa:16:3e:00:00:01")
    rev2 = _commit(store, [p1], rev1)
    assert rev0 < rev1 < rev2
    _wait(lambda: len(log.commits) == 2)
    assert [c.revision for c in log.commits] == [rev1, rev2]
    assert [(k, i) for k, i, _ in log.commits[0].ops] == [("network", "n1"), ("subnet", "s1")]
    assert log.commits[0].counters == {"network_key": 2} and log.commits[0].origin == store.instance
    snap = store.load()
    assert snap.revision >= rev2 and snap.counters == {"network_key": 2}
    assert [r.id for r in snap.records["port"]] == ["p1"] and snap.records["subnet"] == [sub]
    before = _rows(store_url)
    # Whatever the caller validated: a second holder of a unique value is refused, the whole write with it.
    refused = [
        [_port("p2", 2, "fa:16:3e:00:00:02", "10.0.0.9"), _port("p3", 3, "fa:16:3e:00:00:01", "10.0.0.10")],  # MAC
        [_port("p2", 2, "fa:16:3e:00:00:02", "10.0.0.5")],  # address in the subnet
        [_port("p2", 1, "fa:16:3e:00:00:02", "10.0.0.9")],  # logical key
        [_net(2, 1000)],  # segment
        [_port("p2", 2, "fa:16:3e:00:00:02", "10.0.0.9", net="n9")],  # a missing parent
        [Subnet("s2", "n9", "p", "10.1.0.0/24", 4, None)],  # a missing parent
    ]
    for ops in refused:
        with pytest.raises(Conflict):
            _commit(store, ops, store.load().revision)
        assert _rows(store_url) == before, ops
    # A value freed and taken again in one write is fine: p1 gives up its MAC to p2.
    moved = replace(p1, mac_address="fa:16:3e:00:00:09")
    _commit(store, [moved, _port("p2", 2, "fa:16:3e:00:00:01", "10.0.0.9")], store.load().revision,
            before={("port", "p1"): p1, ("port", "p2"): None})
    assert {p.id: p.mac_address for p in store.load().records["port"]} == {"p1": "fa:16:3e:00:00:09",
                                                                           "p2": "fa:16:3e:00:00:01"}
    store.close()


def test_deleting_a_parent_still_referred_to_is_refused(store_url) -> None:
    store = open_store(store_url)
    sub = Subnet("s1", "n1", "p", "10.0.0.0/24", 4, "10.0.0.1")
    rev = _commit(store, [_net(1, 1000), sub, _port("p1", 1, "fa:16:3e:00:00:01")], store.load().revision)
    before = _rows(store_url)
    with pytest.raises(Conflict):
        store.commit([Deleted("network", "n1")], before={("network", "n1"): _net(1, 1000)}, counters={},
                     based_on=rev)
    assert _rows(store_url) == before
    store.close()


def test_etcd_refuses_a_write_validated_on_a_stale_view(etcd) -> None:  # noqa: F811
    url = f"{etcd.url}/test-{uuid.uuid4().hex[:12]}"
    a, b = open_store(url), open_store(url)
    rev0 = a.load().revision
    rev1 = _commit(a, [_net(1, 1000)], rev0)
    net = _net(1, 1000)
    renamed = replace(net, mtu=1400)
    rev2 = a.commit([renamed], before={("network", "n1"): net}, counters={}, based_on=rev1)
    # b validated an update of n1 on the view at rev1: the store says stale, and where to catch up to.
    with pytest.raises(Stale) as exc:
        b.commit([replace(net, mtu=1300)], before={("network", "n1"): net}, counters={}, based_on=rev1)
    assert exc.value.revision == rev2
    assert b.load().records["network"][0].mtu == 1400
    a.close()
    b.close()
