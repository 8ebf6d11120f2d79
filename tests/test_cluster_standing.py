"""An instance's standing follows its lease: lost when keepalives go unanswered, regained (and its
bridges claimed again) when they are answered again (``controller.cluster.Cluster`` following a
``controller.lease_keeper.Keeper`` run in a thread; etcd faked: the keepalive's answers are what
the test says).

Found by the cluster e2e under load: during an etcd leader election both survivors' keepalives
went unanswered past the TTL, both declared themselves slave everywhere, and nobody claimed a
bridge again once the election was over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from controller.cluster import Cluster, View
from controller.lease_keeper import Keeper, KeeperProcess
from topology.store import StoreUnavailable


class FakeStore:
    """Just what the keeper uses: ``request`` answering or failing on demand."""

    prefix, timeout = "/test/", 1.0

    def __init__(self) -> None:
        self.failing = False
        self.expired = False
        self.granted = 0

    def request(self, path: str, body: dict) -> dict:
        if self.failing:
            raise StoreUnavailable("StoreUnavailable", "The topology store (etcd) is unavailable")
        if path == "/lease/grant":
            self.granted += 1
            self.expired = False
            return {"ID": str(100 + self.granted)}
        if path == "/lease/keepalive":
            return {"result": {"TTL": "-1" if self.expired else "1"}}
        return {}


@pytest.fixture
def standing(monkeypatch) -> Iterator[tuple[Cluster, FakeStore, list[bool], list[bool]]]:
    """A cluster following a keeper run in a thread (not a process): (cluster, its store, [parent ok], the
    standings its subscribers were told of)."""
    monkeypatch.setattr(KeeperProcess, "running", True)
    store, parent, calls = FakeStore(), [True], []
    cluster = Cluster(store, instance="me", ttl=1)
    cluster.view = View(5, ("me",))
    stop = threading.Event()
    keeper = Keeper(store, cluster.keeper.state, ttl=1, key="/test-cluster/members/me", member={},
                    parent_ok=lambda: parent[0], wait=stop.wait)
    keeper.join()
    threading.Thread(target=keeper.run, daemon=True).start()
    threading.Thread(target=cluster._follow_standing, daemon=True).start()
    cluster.subscribe(lambda: calls.append(cluster.in_good_standing))
    try:
        yield cluster, store, parent, calls
    finally:
        stop.set()
        cluster._stop.set()
        cluster._listener.close()


def _wait_for(condition, what: str, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_standing_lapses_with_unanswered_keepalives_and_comes_back_with_a_claim(standing) -> None:
    cluster, store, _parent, calls = standing
    assert cluster.role_for(7).master
    store.failing = True
    time.sleep(1.5)
    assert not cluster.in_good_standing and not cluster.role_for(7).master
    _wait_for(lambda: calls and calls[-1] is False, f"not told to step down: {calls}")
    store.failing = False
    _wait_for(lambda: calls and calls[-1] is True, f"no claim after the lease answered again: {calls}")
    assert cluster.role_for(7).master and cluster.role_for(7).generation == 5
    assert store.granted == 1 and cluster.status()["rejoins"] == 0  # the same lease, answered again


def test_a_stopped_controller_lets_its_lease_go_and_an_expired_lease_is_replaced(standing) -> None:
    cluster, store, parent, calls = standing
    first = cluster.lease
    parent[0] = False  # the controller stopped (or wedged): no keepalive goes out for it
    time.sleep(1.2)
    assert not cluster.in_good_standing and cluster.keeper.state.held_back >= 2
    _wait_for(lambda: calls and calls[-1] is False, f"not told to step down: {calls}")
    store.expired = True  # meanwhile etcd let the lease expire
    parent[0] = True
    _wait_for(lambda: cluster.lease != first and cluster.in_good_standing, "no new lease")
    _wait_for(lambda: calls and calls[-1] is True, f"no claim with the new lease: {calls}")
    assert store.granted == 2 and cluster.status()["rejoins"] == 1
