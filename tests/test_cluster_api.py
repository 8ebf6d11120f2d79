"""The API of a cluster: three ``tenantflow controller`` processes over a 3-member etcd, no switch needed.

Any instance takes any write; concurrent writers on different instances, one instance
SIGKILLed in the middle, lose no acknowledged write and never share a MAC or an address;
every surviving instance then shows exactly what the store holds. Without a quorum,
writes answer 503 with a NeutronError and change nothing, reads go on, and writes
succeed again once the quorum is back, with no restart.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from apps.lab.controller import ApiError, ControllerProcess
from apps.lab.etcd import EtcdCluster
from tests.e2e_fixtures import wait_until
from tests.etcd_fixtures import ETCD_BINARY, instances, require_etcd
from topology.store import open_store

PREFIX = "capi"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[EtcdCluster, dict[str, ControllerProcess]]]:
    require_etcd()
    work = tmp_path_factory.mktemp("capi")
    with EtcdCluster(3, binary=ETCD_BINARY) as etcd, instances(etcd, work, PREFIX) as ctls:
        yield etcd, ctls


def _stored_ports(etcd: EtcdCluster) -> list:
    store = open_store(f"{etcd.url}/{PREFIX}")
    try:
        return store.load().records["port"]
    finally:
        store.close()


def _shown_ports(ctl: ControllerProcess) -> dict[str, tuple]:
    ports = ctl.request("GET", "/v2.0/ports")["ports"]
    return {p["id"]: (p["mac_address"], tuple(f["ip_address"] for f in p["fixed_ips"])) for p in ports}


def test_four_writers_through_three_instances_one_killed(cluster) -> None:
    etcd, ctls = cluster
    net = ctls["c0"].create("network", name="busy")
    sub = ctls["c1"].create("subnet", network_id=net["id"], cidr="10.20.0.0/24", ip_version=4)
    for ctl in ctls.values():  # every instance sees the others' writes
        wait_until(lambda c=ctl: c.request("GET", f"/v2.0/subnets/{sub['id']}"), 10, "the subnet everywhere")
    acked: list[dict] = []
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    order = ["c0", "c1", "c2", "c2"]  # two writers on the instance that dies

    def writer(k: int) -> None:
        rnd, name = random.Random(k), order[k]
        for _ in range(30):
            body = {"network_id": net["id"], "device_owner": "compute:nova"}
            if rnd.random() < 0.7:  # a small pool: writers collide on purpose
                body["fixed_ips"] = [{"subnet_id": sub["id"], "ip_address": f"10.20.0.{rnd.randint(10, 40)}"}]
            if rnd.random() < 0.5:
                body["mac_address"] = f"fa:16:3e:20:00:{rnd.randint(10, 40):02x}"
            try:
                port = ctls[name].create("port", **body)
            except ApiError as exc:
                if not isinstance(exc.body, dict):  # killed between its status line and its body
                    with lock:
                        outcomes["answer cut"] += 1
                    name = "c0" if name == "c2" else name
                    continue
                with lock:
                    outcomes[f"{exc.status} {exc.body.get('NeutronError', {}).get('type')}"] += 1
                continue
            except OSError:  # its instance is gone: on to a live one, as a load balancer would
                with lock:
                    outcomes["connection lost"] += 1
                name = "c0" if name == "c2" else name
                continue
            with lock:
                acked.append(port)
                outcomes["201"] += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 25, 30, "a quarter of the writes")
    ctls["c2"].kill()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer never finished"
    stored = _stored_ports(etcd)
    ids = Counter(p.id for p in stored)
    assert all(ids[p["id"]] == 1 for p in acked), "an acknowledged write is missing or doubled"
    for values in ([p.mac_address for p in stored], [f.ip_address for p in stored for f in p.fixed_ips],
                   [p.key for p in stored]):
        assert len(values) == len(set(values)), values
    assert outcomes["201"] == len(acked) >= 30 and any(k.startswith("409") for k in outcomes), outcomes
    want = {p.id: (p.mac_address, tuple(f.ip_address for f in p.fixed_ips)) for p in stored}
    for name in ("c0", "c1"):
        wait_until(lambda n=name: _shown_ports(ctls[n]) == want, 10, f"{name} showing the store's ports")


def test_without_quorum_writes_are_503_reads_go_on_and_writes_come_back(cluster) -> None:
    etcd, ctls = cluster
    ctl = ctls["c0"]
    before = ctl.request("GET", "/v2.0/networks")
    stopped = [i for i in range(3) if i != 0][:2]
    for i in stopped:
        etcd.stop_member(i)
    try:
        t0 = time.monotonic()
        with pytest.raises(ApiError) as exc:
            ctl.create("network", name="no-quorum")
        assert exc.value.status == 503, exc.value.body
        error = exc.value.body["NeutronError"]
        assert error["type"] == "StoreUnavailable" and "etcd" in error["message"], error
        assert time.monotonic() - t0 < 30
        assert ctl.request("GET", "/v2.0/networks") == before  # reads from the graph, unchanged
    finally:
        for i in stopped:
            etcd.restart(i)
    etcd.wait_healthy(30)
    made = wait_until(lambda: _try_create(ctl), 30, f"a write after quorum returned\n{ctl.log_tail()}")
    other = ctls["c1"]
    wait_until(lambda: any(n["id"] == made["id"] for n in other.request("GET", "/v2.0/networks")["networks"]),
               10, "the other instance seeing it")
    names = [n["name"] for n in ctl.request("GET", "/v2.0/networks")["networks"]]
    assert "no-quorum" not in names or names.count("no-quorum") == 1  # written once at most (etcd's ambiguity)


def _try_create(ctl: ControllerProcess) -> dict | None:
    try:
        return ctl.create("network", name="after-quorum")
    except (ApiError, OSError):
        return None
