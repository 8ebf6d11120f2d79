"""EtcdCluster against the real etcd: put/get, leader failover, quorum loss and recovery.

Each three-member test gets its own cluster (about 1 s to start); the whole file takes
well under 30 s on a loaded 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest
from etcd3gw.exceptions import Etcd3Exception

from apps.lab.etcd import EtcdCluster, EtcdError
from tests.etcd_fixtures import (
    ETCD_BINARY,
    etcd,  # noqa: F401  (fixture)
    etcd3,  # noqa: F401  (fixture)
    require_etcd,
)
from tests.lab_fixtures import unless_able


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_one_member_put_get(etcd: EtcdCluster) -> None:  # noqa: F811
    host_port = etcd.endpoints[0].removeprefix("http://")
    assert etcd.url == f"etcd://{host_port}"
    assert etcd.leader() == 0
    client = etcd.client(0)
    assert client.put("/tenantflow/test/one", "value-1")
    assert client.get("/tenantflow/test/one") == [b"value-1"]
    assert client.get("/tenantflow/test/missing") == []


def test_three_members_distinct_ports_and_pids(etcd3: EtcdCluster) -> None:  # noqa: F811
    ports = [m.client_port for m in etcd3.members] + [m.peer_port for m in etcd3.members]
    assert len(set(ports)) == 6
    assert len(set(etcd3.member_pids)) == 3 and all(etcd3.member_pids)
    assert etcd3.url.count(",") == 2
    deadline = time.monotonic() + 10  # a quorum of two made the cluster healthy: the third may lag a moment
    while len(leaders := {(etcd3.status(i, timeout=2) or {}).get("leader") for i in range(3)}) != 1:
        assert time.monotonic() < deadline, f"members disagree on the leader: {leaders}"
        time.sleep(0.1)
    assert leaders != {None}


def test_leader_sigkill_fails_over(etcd3: EtcdCluster) -> None:  # noqa: F811
    old = etcd3.wait_leader()
    pid = etcd3.member_pids[old]
    etcd3.kill(old)
    assert pid is not None and not _alive(pid)
    t0 = time.monotonic()
    new = etcd3.wait_leader(timeout=10)
    took = time.monotonic() - t0
    assert new != old
    assert took < 8, f"new leader after {took:.1f} s"  # 1-2 s election timeout, plus a loaded machine
    etcd3.client(new).put("/tenantflow/test/failover", "after")
    follower = ({0, 1, 2} - {old, new}).pop()
    assert etcd3.client(follower).get("/tenantflow/test/failover") == [b"after"]


def test_write_fails_without_quorum_and_recovers(etcd3: EtcdCluster) -> None:  # noqa: F811
    etcd3.client(0).put("/tenantflow/test/before", "kept")
    etcd3.stop_member(1)
    etcd3.stop_member(2)
    assert etcd3.member_pids[1:] == [None, None]
    with pytest.raises(Etcd3Exception):
        etcd3.client(0, timeout=2).put("/tenantflow/test/lost", "never")
    deadline = time.monotonic() + 5  # a leader left alone steps down after an election timeout (CheckQuorum)
    while etcd3.leader() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert etcd3.leader() is None
    etcd3.restart(1)
    etcd3.restart(2)
    etcd3.wait_healthy(timeout=15)
    etcd3.client(0).put("/tenantflow/test/after", "back")
    assert etcd3.client(2).get("/tenantflow/test/before") == [b"kept"]  # its data dir survived
    assert etcd3.client(1).get("/tenantflow/test/after") == [b"back"]


def test_stop_kills_members_and_removes_workdir(tmp_path) -> None:
    require_etcd()
    with EtcdCluster(1, workdir=str(tmp_path), binary=ETCD_BINARY) as cluster:
        pids = cluster.member_pids
        workdir = cluster.workdir
        assert workdir.startswith(str(tmp_path)) and os.path.isdir(workdir)
    assert not os.path.exists(workdir) and cluster.member_pids == []
    assert not any(_alive(pid) for pid in pids if pid is not None)


def test_members_die_with_the_thread_that_started_them(tmp_path) -> None:
    require_etcd()
    unless_able(None if shutil.which("setpriv") else "setpriv (util-linux) missing: no --pdeathsig", "etcd test")
    cluster = EtcdCluster(1, workdir=str(tmp_path), binary=ETCD_BINARY)
    started: list[int | None] = []

    def start() -> None:
        cluster.start()
        started.append(cluster.member_pids[0])  # read while this thread lives: its end kills the member at once

    starter = threading.Thread(target=start)
    starter.start()
    starter.join(timeout=60)
    try:
        assert started and started[0] is not None, "the member was running while its starter lived"
        deadline = time.monotonic() + 10  # the thread is gone: the kernel sends the member SIGKILL
        while cluster.member_pids[0] is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cluster.member_pids == [None]
    finally:
        cluster.stop()


def test_start_failure_raises_with_log_and_cleans_up(tmp_path) -> None:
    require_etcd()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cluster = EtcdCluster(1, workdir=str(tmp_path), base_port=taken.getsockname()[1], binary=ETCD_BINARY)
        with pytest.raises(EtcdError, match="address already in use"):
            cluster.start(timeout=10)
    assert cluster.workdir == "" and os.listdir(tmp_path) == []
