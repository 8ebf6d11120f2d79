"""Several Topology instances on one real etcd: one shared truth, every graph kept equal to it.

What a cluster of controllers relies on below the OpenFlow side: any instance accepts any
write; each instance's graph follows every commit from the watch; concurrent writers on
different instances never both take a MAC, an address or a key; a write made while etcd
has no quorum answers 503 and changes nothing, and writes resume when quorum returns.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import asdict

import pytest

from tests.etcd_fixtures import etcd, etcd3  # noqa: F401 - fixtures
from topology.records import KINDS, encode
from topology.state import Topology
from topology.store import Conflict, StoreUnavailable, TopologyError, open_store


def _url(cluster) -> str:
    return f"{cluster.url}/test-{uuid.uuid4().hex[:12]}"


def _graph(topo: Topology) -> dict[str, list[str]]:
    """Every record of a graph, attrs included, live status left out."""
    out = {}
    for kind in KINDS:
        records = []
        for r in topo.graph.records(kind):
            d = asdict(r)
            d.get("attrs", {}).pop("status", None)
            records.append(repr(sorted(d.items(), key=lambda kv: kv[0])))
        out[kind] = sorted(records)
    return out


def _stored(url: str) -> dict[str, list[str]]:
    store = open_store(url)
    try:
        snap = store.load()
    finally:
        store.close()
    out = {}
    for kind, records in snap.records.items():
        out[kind] = sorted(repr(sorted(asdict(r).items(), key=lambda kv: kv[0])) for r in records)
    return out


def _settle(*topos: Topology, timeout: float = 10.0) -> None:
    """Wait until every instance's graph holds the store's latest commit."""
    store = open_store(topos[0].store.url)
    try:
        target = store.load().revision
    finally:
        store.close()
    deadline = time.monotonic() + timeout
    while any(t.revision < target for t in topos):
        # the latest revision may be another prefix's: settle on equal revisions among us
        if time.monotonic() > deadline:
            if len({t.revision for t in topos}) == 1:
                return
            raise AssertionError(f"instances stuck at {[t.revision for t in topos]} < {target}")
        time.sleep(0.01)


def _base(topo: Topology):
    topo.register_hypervisor({"name": "hv1", "datapath_id": 1, "tunnel_ip": "192.168.100.1"})
    net = topo.create_network({"project_id": "p"})
    sub = topo.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24", "project_id": "p"})
    return net, sub


def test_every_instance_sees_every_write(etcd) -> None:  # noqa: F811
    url = _url(etcd)
    a, b = Topology(url), Topology(url)
    events: list[set[str]] = []
    b.subscribe(events.append)
    net, sub = _base(a)
    port = b.create_port({"network_id": net.id, "binding:host_id": "hv1", "project_id": "p"})  # B, on A's network
    assert b.graph.port(port.id) is not None  # read-your-writes
    router = a.create_router({"project_id": "p"})
    a.add_router_interface(router.id, {"subnet_id": sub.id})
    _settle(a, b)
    assert _graph(a) == _graph(b) == _stored(url)
    assert any("hv1" in e for e in events), "B's subscribers heard of A's writes on hv1"
    assert b.stats["remote_commits"] >= 3 and a.stats["remote_commits"] >= 1
    with pytest.raises(Conflict):
        b.delete_network(net.id)  # in use: a port and a router interface, whoever wrote them
    a.close()
    b.close()


def test_concurrent_writers_on_two_instances_never_share_an_address(etcd) -> None:  # noqa: F811
    url = _url(etcd)
    a, b = Topology(url), Topology(url)
    net, sub = _base(a)
    _settle(a, b)
    made: list = []
    refused: list[str] = []
    lock = threading.Lock()

    def writer(topo: Topology, seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(15):
            # a small pool of addresses and MACs: writers collide on purpose
            want = {"network_id": net.id, "project_id": "p",
                    "fixed_ips": [{"subnet_id": sub.id, "ip_address": f"10.0.0.{rnd.randint(10, 30)}"}],
                    "mac_address": f"fa:16:3e:00:00:{rnd.randint(10, 30):02x}"}
            try:
                port = topo.create_port(want)
            except TopologyError as exc:
                with lock:
                    refused.append(exc.kind)
                continue
            with lock:
                made.append(port)

    threads = [threading.Thread(target=writer, args=(t, i)) for i, t in enumerate((a, a, b, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _settle(a, b)
    stored = open_store(url)
    ports = stored.load().records["port"]
    stored.close()
    # Every acknowledged write is stored exactly once; no MAC, address or key twice.
    assert sorted(p.id for p in made) == sorted(p.id for p in ports)
    for attr in (lambda p: p.mac_address, lambda p: p.fixed_ips[0].ip_address, lambda p: p.key):
        values = [attr(p) for p in ports]
        assert len(values) == len(set(values))
    assert set(refused) <= {"MacAddressInUse", "IpAddressAlreadyAllocated", "Conflict"}, refused
    assert len(made) + len(refused) == 60 and made and refused
    assert _graph(a) == _graph(b) == _stored(url)
    a.close()
    b.close()


def test_without_quorum_writes_answer_503_and_resume_after(etcd3) -> None:  # noqa: F811
    url = etcd3.url + "/quorum"
    topo = Topology(url)
    net, _ = _base(topo)
    topo.store.timeout = 2.0
    for client in topo.store.clients:
        client.timeout = 2.0
    before = _graph(topo)
    leader = etcd3.leader()
    others = [i for i in range(3) if i != leader]
    for i in others:
        etcd3.stop_member(i)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as exc:
        topo.create_port({"network_id": net.id, "project_id": "p"})
    assert exc.value.kind == "StoreUnavailable" and time.monotonic() - t0 < 15
    assert _graph(topo) == before  # reads go on from the graph, unchanged
    for i in others:
        etcd3.restart(i)
    etcd3.wait_healthy(30)
    deadline = time.monotonic() + 30
    while True:  # the same instance, no restart: writes succeed again
        try:
            port = topo.create_port({"network_id": net.id, "project_id": "p"})
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert topo.graph.port(port.id) is not None
    other = Topology(url)
    assert _graph(other) == _graph(topo)
    # The watch of the first instance survived: a write through the second reaches it.
    net2 = other.create_network({"project_id": "p"})
    deadline = time.monotonic() + 10
    while topo.graph.network(net2.id) is None:
        assert time.monotonic() < deadline, "the watch did not resume"
        time.sleep(0.02)
    other.close()
    topo.close()


def test_records_round_trip_through_etcd_as_stored_text(etcd) -> None:  # noqa: F811
    url = _url(etcd)
    topo = Topology(url)
    _base(topo)
    topo.ensure_default_security_group("p")
    again = Topology(url)
    for kind in KINDS:
        assert [encode(r) for r in again.graph.records(kind)] == [encode(r) for r in topo.graph.records(kind)]
    topo.close()
    again.close()
