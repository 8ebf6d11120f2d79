"""An instance's standing follows its lease: lost when keepalives go unanswered, regained (and its
bridges claimed again) when they are answered again (``controller.cluster.Cluster``; etcd faked:
the keepalive's answers are what the test says).

Found by the cluster e2e under load: during an etcd leader election both survivors' keepalives
went unanswered past the TTL, both declared themselves slave everywhere, and nobody claimed a
bridge again once the election was over.
"""

from __future__ import annotations

import threading
import time

from controller.cluster import Cluster, View
from topology.store import StoreUnavailable


class FakeStore:
    """Just what the keepalive loop uses: ``request`` answering or failing on demand."""

    prefix, timeout = "/test/", 1.0

    def __init__(self) -> None:
        self.failing = False

    def request(self, path: str, body: dict) -> dict:
        if self.failing:
            raise StoreUnavailable("StoreUnavailable", "The topology store (etcd) is unavailable")
        return {"result": {"TTL": "1"}}


def test_standing_lapses_with_unanswered_keepalives_and_comes_back_with_a_claim() -> None:
    store = FakeStore()
    cluster = Cluster(store, instance="me", ttl=1)
    cluster.view = View(5, ("me",))
    cluster.lease, cluster._alive_until = 1, time.monotonic() + 0.9
    calls: list[bool] = []
    cluster.subscribe(lambda: calls.append(cluster.in_good_standing))
    threading.Thread(target=cluster._keepalive_loop, daemon=True).start()
    try:
        assert cluster.role_for(7).master
        store.failing = True
        time.sleep(1.5)
        assert not cluster.in_good_standing and not cluster.role_for(7).master
        assert calls and calls[-1] is False  # told to step down: slave everywhere
        store.failing = False
        deadline = time.monotonic() + 2
        while not (calls and calls[-1] is True):
            assert time.monotonic() < deadline, f"no claim after the lease answered again: {calls}"
            time.sleep(0.02)
        assert cluster.role_for(7).master and cluster.role_for(7).generation == 5
    finally:
        cluster._stop.set()
        cluster._listener.close()
