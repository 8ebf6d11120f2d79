"""API writes go before a switch's port map (issue #10: API p99 while every bridge cold-syncs).

Recording a port map rebuilds its hypervisor's flows under the topology's lock; when a switch's
worker records it on connect, a write in flight goes first (``TopologyCore.after_writes``), for
at most ``WRITES_FIRST_S``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from topology import core
from topology.state import Topology

HOLD_S = 0.06  # how long the test's subscriber keeps a write in flight


def _topology(path: Path) -> Topology:
    topo = Topology(str(path / "topology.sqlite"))
    topo.register_hypervisor({"name": "hv1", "datapath_id": 1, "tunnel_ip": "192.168.100.1"})
    return topo


def _slow_write_then_port_map(topo: Topology, hold: float) -> list[tuple[str, float]]:
    """A network create that takes ``hold`` s before its lock, and a port map recorded meanwhile: the order."""
    order: list[tuple[str, float]] = []
    in_write = threading.Event()

    latest = topo.store.latest_revision

    def slow() -> int:  # the write's first step, before it takes the topology's lock
        if threading.current_thread().name == "writer":
            in_write.set()
            time.sleep(hold)
        return latest()

    topo.store.latest_revision = slow

    def writer() -> None:
        topo.create_network({"name": "n"})
        order.append(("write", time.monotonic()))

    thread = threading.Thread(target=writer, name="writer")
    thread.start()
    assert in_write.wait(5)
    start = time.monotonic()
    topo.set_live_ofports("hv1", {"tf-vxlan": 1}, after_writes=True)
    order.append(("port map", time.monotonic() - start))
    thread.join(5)
    return order


def test_a_port_map_waits_for_the_write_in_flight(tmp_path: Path) -> None:
    topo = _topology(tmp_path)
    try:
        order = _slow_write_then_port_map(topo, HOLD_S)
        assert [what for what, _ in order] == ["write", "port map"], order
        assert topo.graph.ofports("hv1") == {"tf-vxlan": 1}
    finally:
        topo.close()


def test_a_write_longer_than_the_limit_does_not_hold_a_port_map_back_longer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(core, "WRITES_FIRST_S", 0.05)
    topo = _topology(tmp_path)
    try:
        order = _slow_write_then_port_map(topo, 1.0)
        # The port map went first, after the limit: the write was still on its way.
        assert order[0][0] == "port map" and 0.04 <= order[0][1] < 0.9, order
        assert topo.graph.ofports("hv1") == {"tf-vxlan": 1}
    finally:
        topo.close()


def test_no_write_in_flight_costs_a_port_map_no_wait(tmp_path: Path) -> None:
    topo = _topology(tmp_path)
    try:
        start = time.monotonic()
        topo.set_live_ofports("hv1", {"tf-vxlan": 1}, after_writes=True)
        assert time.monotonic() - start < core.WRITES_FIRST_S / 2
    finally:
        topo.close()
