"""An instance's cluster lease against a real etcd: it survives a busy interpreter, and dies with the instance.

``controller.lease_keeper`` keeps the lease from a process of its own. Shown here with real
etcd (one member) and real processes:

- an interpreter that holds the GIL for 1.5 × the TTL (a C call made without releasing it)
  keeps its lease and its member key: before the keeper, the keepalive thread waited for the
  GIL past the TTL, the lease expired and the instance's bridges moved away and back;
- so does one whose threads wait for the GIL longer than the keeper's patience (``hang``)
  while it works (uses CPU): starved, not wedged;
- a controller process SIGKILLed loses its member key at once (its keeper revokes the lease
  when the controller's pipe closes), not after the TTL, and its keeper exits;
- a controller process SIGSTOPped loses it after the TTL (the keeper sees it stopped and stops
  keeping the lease alive); SIGCONT brings it back with a new lease;
- a wedged one (blocked holding the GIL past ``hang``, using no CPU) loses it too, and rejoins
  when it runs again.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from controller.cluster import Cluster
from tests.etcd_fixtures import etcd  # noqa: F401  (fixture)
from topology.etcd_watch import b64, unb64
from topology.store_etcd import EtcdStore

TTL = 2

INSTANCE = """
import ctypes, sys
from controller.cluster import Cluster
from topology.store_etcd import EtcdStore
cluster = Cluster(EtcdStore(sys.argv[1]), instance="stand-in", ttl=int(sys.argv[2]))
cluster.keeper.hang = float(sys.argv[3])
cluster.start()
print(cluster.keeper.process.pid, flush=True)
for line in sys.stdin:  # "wedge S": block S seconds holding the GIL, using no CPU
    ctypes.PyDLL(None).usleep(int(float(line.split()[1]) * 1e6))
"""


def _member(store: EtcdStore, instance: str) -> dict | None:
    """The member key's value as etcd holds it (None: no such member)."""
    key = store.prefix.rstrip("/") + "-cluster/members/" + instance
    kvs = store.request("/kv/range", {"key": b64(key)}).get("kvs", [])
    return json.loads(unb64(kvs[0]["value"])) if kvs else None


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat", "rb") as f:  # a zombie waiting for its (re)parent counts as gone
        return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"


def _wait(condition, what: str, seconds: float) -> float:
    """Seconds until ``condition()`` held (AssertionError after ``seconds``)."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < seconds, what
        time.sleep(0.02)
    return time.monotonic() - began


@pytest.fixture
def store(etcd) -> EtcdStore:  # noqa: F811
    return EtcdStore(f"{etcd.url}/keeper-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def instance(store: EtcdStore) -> Iterator[tuple[subprocess.Popen, int]]:
    """A stand-in controller process in the cluster (its pid, its keeper's pid); killed at the end."""
    process = subprocess.Popen([sys.executable, "-c", INSTANCE, store.url, str(TTL), "1"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        keeper_pid = int(process.stdout.readline())
        yield process, keeper_pid
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()


def test_a_busy_interpreter_keeps_its_lease(store: EtcdStore) -> None:
    cluster = Cluster(store, instance="busy", ttl=TTL).start()
    try:
        lease = cluster.lease
        assert _member(store, "busy")["lease"] == lease
        ctypes.PyDLL(None).usleep(int(TTL * 1.5 * 1e6))  # holds the GIL: no thread of ours runs for 3 s
        assert cluster.in_good_standing, cluster.status()
        assert _member(store, "busy")["lease"] == lease and cluster.status()["rejoins"] == 0, cluster.status()
        assert cluster.status()["interpreter_stall_max_ms"] >= TTL * 1000, cluster.status()
    finally:
        cluster.close()
    assert _member(store, "busy") is None  # left: the lease revoked


def test_a_starved_but_working_interpreter_keeps_its_lease(store: EtcdStore) -> None:
    cluster = Cluster(store, instance="starved", ttl=TTL)
    cluster.keeper.hang = 1.0
    cluster.start()
    try:
        lease = cluster.lease
        numbers = [random.random() for _ in range(1_000_000)]
        began = time.monotonic()
        sorted(numbers)  # one C call holding the GIL while it works: how long does a million take here?
        size = int(len(numbers) * (TTL * 1.5) / max(time.monotonic() - began, 1e-3))
        numbers = [random.random() for _ in range(size)]
        began = time.monotonic()
        sorted(numbers)  # no other thread runs for about 1.5 × the TTL, the beat thread included
        stalled = time.monotonic() - began
        assert stalled > cluster.keeper.hang + 1, f"the sort took only {stalled:.1f} s"
        assert (_member(store, "starved") or {}).get("lease") == lease, cluster.status()
        assert cluster.status()["rejoins"] == 0, cluster.status()
        assert cluster.in_good_standing, cluster.status()
    finally:
        cluster.close()


def test_a_killed_instance_loses_its_lease_at_once(store: EtcdStore, instance) -> None:
    process, keeper_pid = instance
    assert _member(store, "stand-in") is not None
    process.kill()
    took = _wait(lambda: _member(store, "stand-in") is None, "the member key outlived its killed instance", TTL * 2)
    assert took < TTL / 2, f"the member key went after {took:.2f} s: the TTL, not a revoke"
    _wait(lambda: _gone(keeper_pid), "the keeper outlived its instance", 3)


def test_a_stopped_instance_loses_its_lease_after_the_ttl_and_rejoins(store: EtcdStore, instance) -> None:
    process, _ = instance
    lease = _member(store, "stand-in")["lease"]
    process.send_signal(signal.SIGSTOP)
    took = _wait(lambda: _member(store, "stand-in") is None, "a stopped instance kept its lease", TTL * 3)
    assert took > TTL / 2, f"gone after {took:.2f} s: sooner than a lapsed lease would"
    process.send_signal(signal.SIGCONT)
    _wait(lambda: (_member(store, "stand-in") or {}).get("lease") not in (None, lease),
          "no new lease after SIGCONT", TTL * 2)


def test_a_wedged_instance_loses_its_lease_and_rejoins_when_it_runs_again(store: EtcdStore, instance) -> None:
    process, _ = instance
    lease = _member(store, "stand-in")["lease"]
    process.stdin.write(b"wedge 6\n")  # hang is 1 s: held back from then on, expired a TTL later
    process.stdin.flush()
    took = _wait(lambda: _member(store, "stand-in") is None, "a wedged instance kept its lease", 5.5)
    assert took > TTL / 2, f"gone after {took:.2f} s: sooner than a lapsed lease would"
    _wait(lambda: (_member(store, "stand-in") or {}).get("lease") not in (None, lease),
          "no new lease once it ran again", 6 + TTL * 2)
