"""Three controller instances over a 3-member etcd share the bridges; failures lose no packet.

Real parts throughout: a 3-member etcd cluster (Debian's etcd), three ``tenantflow
controller`` processes (``--store etcd://...``, each talking to its own etcd member), three
hypervisors (private OVS instances in namespaces) whose br-int connects to all three, VMs
pinging every 10 ms across hypervisors while, one after the other:

(a) the instance mastering the pinging VM's bridge is SIGKILLed: the others take its
    bridges (new ROLE_REQUEST, higher generation) and a port created through a survivor
    reaches the orphaned bridge;
(b) the etcd leader is SIGKILLed: writes go on after the election;
(c) one instance is cut off from etcd (nft drops its member's client port): its lease
    expires, the other takes its bridges; when the cut heals it rejoins and gets its share;
(d) etcd loses its quorum: writes answer 503, and succeed again once it is back.

In each, not one ping is lost: the bridges keep their flows, and a new master reconciles
(reads, diffs) rather than flushing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.lab import Lab
from apps.lab.controller import ApiError, ControllerProcess
from apps.lab.etcd import EtcdCluster
from tests.e2e_fixtures import create_network, plug_new_vm, port_ip, require_lab, wait_until
from tests.etcd_fixtures import ETCD_BINARY, instances, require_etcd
from tests.lab_fixtures import ping_count
from tests.loss_evidence import Ping, Witness

pytestmark = pytest.mark.ovs

NFT_TABLE = "tenantflow_e2e_cluster"


class Cloud:
    """The etcd cluster, the instances (by name), the lab, one network."""

    def __init__(self, etcd: EtcdCluster, ctls: dict[str, ControllerProcess], lab: Lab) -> None:
        self.etcd, self.ctls, self.lab = etcd, ctls, lab
        self.member_of = {name: i for i, name in enumerate(ctls)}  # instance -> the etcd member it talks to
        self.dead: set[str] = set()

    def live(self) -> dict[str, ControllerProcess]:
        return {n: c for n, c in self.ctls.items() if n not in self.dead}

    def any(self, but: str | None = None) -> ControllerProcess:
        return next(c for n, c in self.live().items() if n != but)

    def masters(self) -> dict[str, str]:
        """hypervisor -> the instance that masters its bridge (as each live instance reports)."""
        out = {}
        for name, ctl in self.live().items():
            try:
                for hv in ctl.request("GET", "/sync", timeout=2)["mastered"]:
                    out[hv] = name
            except OSError:
                pass
        return out

    def settled(self) -> bool:
        """Every bridge mastered by a live instance, none pending anywhere."""
        if set(self.masters()) != {hv.name for hv in self.lab.hypervisors}:
            return False
        return all(not c.request("GET", "/sync", timeout=2)["pending"] for c in self.live().values())

    def logs(self) -> str:
        return "\n".join(f"--- {n}:\n{c.log_tail(15)}" for n, c in self.ctls.items())


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> Iterator[Cloud]:
    require_lab()
    require_etcd()
    work = tmp_path_factory.mktemp("cluster")
    try:
        with EtcdCluster(3, binary=ETCD_BINARY) as etcd, instances(etcd, work, "e2e", own_member_only=True) as ctls, \
                Lab(prefix="tfcl", n_hypervisors=3, controller_unix_socket=[c.unix_socket for c in ctls.values()],
                    api_url=ctls["c0"].api_url) as lab:
            lab.register_hypervisors()
            cloud = Cloud(etcd, ctls, lab)
            wait_until(cloud.settled, 30, lambda: f"bridges mastered and synced\n{cloud.logs()}")
            yield cloud
    finally:
        subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True)


def _reach(src, dst_ip: str) -> bool:
    return ping_count(src, dst_ip, count=1) == 1


def test_bridges_are_split_and_failures_lose_no_ping(cloud: Cloud, tmp_path: Path) -> None:
    ctls, lab = cloud.ctls, cloud.lab
    masters = cloud.masters()
    assert len(set(masters.values())) >= 2, f"3 bridges over 3 instances, spread: {masters}"
    net, _ = create_network(ctls["c0"], "shared")
    vm1 = plug_new_vm(ctls["c0"], lab, "vm1", net, "hv1")
    vm2 = plug_new_vm(ctls["c1"], lab, "vm2", net, "hv2")
    plug_new_vm(ctls["c2"], lab, "vm3", net, "hv3")
    wait_until(lambda: _reach(vm1, port_ip(vm2.port)), 15, lambda: f"vm1 reaching vm2\n{cloud.logs()}")

    # (a) the master of vm1's bridge dies
    victim = cloud.masters()["hv1"]
    seen = Witness(lab.hypervisors)
    ping = Ping(vm1, port_ip(vm2.port), count=600, interval=0.01, workdir=tmp_path)
    seen.event("ping started")
    time.sleep(0.5)
    t0 = time.monotonic()
    ctls[victim].kill()
    seen.event(f"{victim} killed")
    cloud.dead.add(victim)
    wait_until(lambda: "hv1" in cloud.masters(), 10, lambda: f"hv1 mastered again\n{cloud.logs()}", interval=0.01)
    took_over = time.monotonic() - t0
    _granted(seen, cloud, "hv1")
    wait_until(cloud.settled, 15, lambda: f"settled after the kill\n{cloud.logs()}")
    sent = _no_loss("a", ping, seen, tmp_path)
    # Plugged once the stream is counted: adding a port to a userspace-datapath vswitchd can drop a
    # packet in flight there (README "Soak"; a CI run lost echo 35 ~30 ms before vm4's tap was added
    # on hv1, the failover long done), which is OVS reconfiguring its ports, not the failover.
    survivor = cloud.any()
    vm4 = plug_new_vm(survivor, lab, "vm4", net, "hv1")  # through a survivor, onto the orphaned bridge
    seen.event("vm4 plugged")
    wait_until(lambda: _reach(vm2, port_ip(vm4.port)), 10, lambda: f"vm2 reaching vm4\n{cloud.logs()}")
    assert took_over < 5, f"(a) hv1 had no master for {took_over:.2f} s"
    print(f"(a) {victim} killed: hv1 mastered again after {took_over:.3f} s; {sent} pings, all answered")

    # (b) the etcd leader dies: the dead instance's member is made leader first, so no survivor loses its endpoint
    dead_member = cloud.member_of[victim]
    leader = cloud.etcd.leader()
    if leader != dead_member:
        target = int(cloud.etcd.status(dead_member)["header"]["member_id"])
        subprocess.run(["etcdctl", f"--endpoints={cloud.etcd.endpoints[leader]}", "move-leader", f"{target:x}"],
                       check=True, capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        wait_until(lambda: cloud.etcd.leader() == dead_member, 10, "the leader moved")
    seen = Witness(lab.hypervisors)
    ping = Ping(vm1, port_ip(vm2.port), count=400, interval=0.01, workdir=tmp_path)
    seen.event("ping started")
    time.sleep(0.5)
    cloud.etcd.kill(dead_member)
    seen.event("etcd leader killed")
    vm5 = wait_until(lambda: _try_plug(survivor, lab, "vm5", net, "hv3"), 20, lambda: f"a write\n{cloud.logs()}")
    seen.event("vm5 plugged")
    wait_until(lambda: _reach(vm1, port_ip(vm5.port)), 10, lambda: f"vm1 reaching vm5\n{cloud.logs()}")
    _no_loss("b", ping, seen, tmp_path)

    # (c) one survivor is cut off from etcd; the other takes its bridges; it comes back
    cut, other = sorted(cloud.live())
    port = cloud.etcd.members[cloud.member_of[cut]].client_port
    seen = Witness(lab.hypervisors)
    ping = Ping(vm1, port_ip(vm2.port), count=800, interval=0.01, workdir=tmp_path)
    seen.event("ping started")
    time.sleep(0.5)
    seen.event(f"{cut} cut off etcd")
    _nft(f"add table inet {NFT_TABLE}",
         f"add chain inet {NFT_TABLE} out {{ type filter hook output priority 0 ; }}",
         f"add rule inet {NFT_TABLE} out tcp dport {port} drop",
         f"add rule inet {NFT_TABLE} out tcp sport {port} drop")
    try:
        wait_until(lambda: set(cloud.masters().values()) == {other} and len(cloud.masters()) == 3
                   and not ctls[other].request("GET", "/sync")["pending"], 20,
                   lambda: f"{other} mastering every bridge\n{cloud.logs()}", interval=0.05)
        for hv in ("hv1", "hv2"):  # the pinging VMs' bridges: when the new master's role was granted
            _granted(seen, cloud, hv)
    finally:
        _nft(f"delete table inet {NFT_TABLE}")
        seen.event("cut healed")
    wait_until(lambda: cut in cloud.masters().values() and cloud.settled(), 30,
               lambda: f"{cut} back with its share\n{cloud.logs()}")
    seen.event(f"{cut} back with its share")
    _no_loss("c", ping, seen, tmp_path)
    vm6 = plug_new_vm(ctls[cut], lab, "vm6", net, "hv2")  # after the count, as vm4 (a)
    seen.event("vm6 plugged")
    wait_until(lambda: _reach(vm1, port_ip(vm6.port)), 10, lambda: f"vm1 reaching vm6\n{cloud.logs()}")

    # (d) etcd loses its quorum (one member is dead since (b); one more stops): writes answer 503,
    # the bridges keep every flow, and writes come back with the quorum, nothing restarted.
    second = next(i for i in range(3) if i != dead_member and cloud.member_of[other] != i)
    seen = Witness(lab.hypervisors)
    ping = Ping(vm1, port_ip(vm2.port), count=500, interval=0.01, workdir=tmp_path)
    seen.event("ping started")
    cloud.etcd.stop_member(second)
    seen.event("quorum lost")
    try:
        with pytest.raises(ApiError) as refused:
            ctls[other].create("network", name="no-quorum")
        assert refused.value.status == 503, refused.value.body
    finally:
        cloud.etcd.restart(second)
        seen.event("member restarted")
    vm7 = wait_until(lambda: _try_plug(ctls[other], lab, "vm7", net, "hv3"), 30, lambda: f"a write\n{cloud.logs()}")
    seen.event("vm7 plugged")
    wait_until(lambda: _reach(vm1, port_ip(vm7.port)), 10, lambda: f"vm1 reaching vm7\n{cloud.logs()}")
    _no_loss("d", ping, seen, tmp_path)


def _no_loss(scenario: str, ping: Ping, seen: Witness, keep: Path) -> int:
    """Every echo of ``ping`` answered (how many were sent); if not, what the switches saw when one was lost."""
    sent, received = ping.finish(timeout=30)
    assert sent == received, (f"({scenario}) lost {sent - received} of {sent} pings\n"
                              f"{seen.report(ping, sent, 0.01, keep)}\n{ping.output()[-400:]}")
    return sent


def _granted(seen: Witness, cloud: Cloud, hv: str) -> None:
    """Note when ``hv``'s bridge granted its present master the role (the instance's own clock)."""
    master = cloud.masters().get(hv)
    if master is not None:
        since = cloud.ctls[master].request("GET", "/sync", timeout=2)["master_since"].get(hv)
        seen.event(f"{hv} granted master to {master}", at=since)


def _try_plug(ctl: ControllerProcess, lab: Lab, name: str, net: dict, host: str):
    try:
        return plug_new_vm(ctl, lab, name, net, host)
    except Exception:  # noqa: BLE001 - the store is electing a leader: 503 meanwhile
        return None


def _nft(*commands: str) -> None:
    for command in commands:
        subprocess.run(["nft", *command.split()], check=True, capture_output=True)
