"""Fast-failover groups and meters on a real Open vSwitch: encoding, reconciliation, failover with real packets.

The sync engine (:class:`controller.switch.Switch`) runs here against a bridge of the host's
Open vSwitch, over the bridge's management socket (``tests/ovs_datapath.py``), with the flows
a test gives it (``FakeSource``, the engine as a switch sees it). What it holds is read back
with ``ovs-ofctl``; what it was sent, and in which order, from the connection.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from controller import switch
from controller.switch import Switch
from flows.flow import (
    CT,
    LIVE_GROUP_ID,
    Bucket,
    Flow,
    Group,
    Learn,
    Meter,
    Output,
    PushVlan,
    RegMove,
    Resubmit,
    SetField,
    make_flow,
    used_groups,
)
from flows.ofctl import LIVE_GROUP_TEXT, flow_text, group_text, meter_text
from flows.pipeline import stage
from flows.simulate import Pipeline
from tests.e2e_fixtures import wait_until
from tests.ovs_datapath import OvsDatapath
from tests.test_switch_retry import FakeSource

pytestmark = pytest.mark.ovs

HV = "hv-groups"
DELIVER = stage("ls_out_deliver")
FLOW_MODS = ("group_add", "group_delete", "group_modify", "flow_add", "flow_delete", "bundle_open")
METER_MODS = ("meter_add", "meter_delete", "meter_modify", "flow_add", "flow_delete", "bundle_open", "bundle_commit")


def sh(*cmd: str) -> str:
    """Run a command; its stdout (raises on failure)."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def ofctl(*args: str) -> str:
    """``ovs-ofctl -O OpenFlow13 ARGS``."""
    return sh("ovs-ofctl", "-O", "OpenFlow13", *args)


def dump_groups(bridge: str) -> dict[int, str]:
    """Group id -> its dump-groups line, as OVS has it."""
    lines = [line.strip() for line in ofctl("dump-groups", bridge).splitlines() if "group_id=" in line]
    return {int(re.match(r"group_id=(\d+)", line).group(1)): line for line in lines}


def dump_flows(bridge: str) -> list[str]:
    """The bridge's flows as dump-flows writes them, without statistics, sorted."""
    return sorted(line.strip() for line in ofctl("--no-stats", "dump-flows", bridge).splitlines()
                  if "actions=" in line)


def flow_cookies(bridge: str) -> set[int]:
    return {int(re.search(r"cookie=(0x[0-9a-f]+)", line).group(1), 16) for line in dump_flows(bridge)}


def group_durations(bridge: str) -> dict[int, float]:
    """Group id -> how long the switch has had it (seconds)."""
    out = ofctl("dump-group-stats", bridge)
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"group_id=(\d+),duration=([\d.]+)s", out)}


def bucket_packets(bridge: str, group_id: int) -> list[int]:
    """Packets each bucket of the group has carried."""
    line = next(line for line in ofctl("dump-group-stats", bridge).splitlines() if f"group_id={group_id}," in line)
    return [int(n) for n in re.findall(r"bucket\d+:packet_count=(\d+)", line)]


@contextlib.contextmanager
def new_bridge() -> Iterator[str]:
    """A netdev bridge of the host's OVS, OpenFlow 1.3, fail-secure (no flows: drops); deleted after."""
    name = f"tfg{uuid.uuid4().hex[:8]}"
    sh("ovs-vsctl", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev", "fail_mode=secure",
       "protocols=OpenFlow13", "other-config:disable-in-band=true")
    try:
        yield name
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", name], capture_output=True, check=False)


@pytest.fixture
def bridge() -> Iterator[str]:
    with new_bridge() as name:
        yield name


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed sync is retried within a fraction of a second."""
    monkeypatch.setattr(switch, "RETRY_BASE", 0.05)
    monkeypatch.setattr(switch, "RETRY_CAP", 0.2)


@dataclass
class Connected:
    """A Switch syncing one real bridge, and the connection it talks over."""

    sw: Switch
    dp: OvsDatapath
    source: FakeSource

    def set(self, flows: list[Flow]) -> None:
        """New desired flows, synced (as a committed topology write does)."""
        self.source.set(flows)
        self.sw.mark_dirty()
        self.wait()

    def wait(self) -> None:
        wait_until(lambda: self.sw.holds(self.source.generation), message="the bridge to hold its flows")

    def close(self) -> None:
        self.sw.stop()
        assert self.sw.join(5)
        self.dp.close()


@contextlib.contextmanager
def connected(bridge: str, source: FakeSource, wait: bool = True) -> Iterator[Connected]:
    """A started Switch on a new connection to ``bridge``, synced (unless not ``wait``); disconnected after."""
    dp = OvsDatapath(bridge)
    sw = Switch(dp, source, lambda s, ports: setattr(s, "ofports", ports))
    conn = Connected(sw, dp, source)
    sw.start(HV)
    try:
        if wait:
            conn.wait()
        yield conn
    finally:
        conn.close()


def ff(*ports: int | None, reg6: int | None = None) -> Group:
    """A fast-failover group: bucket i outputs to ports[i], watching it (None: always live, outputs to 9)."""
    buckets = []
    for port in ports:
        actions = (SetField("reg6", reg6),) if reg6 is not None else ()
        buckets.append(Bucket((*actions, Output(port if port is not None else 9)), port))
    return Group(tuple(buckets))


def deliver(reg5: int, *actions) -> Flow:
    """A flow of the deliver stage (table 60) for packets with ``reg5``."""
    return make_flow(DELIVER, "deliver", {"reg5": reg5}, list(actions), description=f"test deliver {reg5}")


def before(sent: list[str], first: str, then: str) -> bool:
    """Every ``first`` message was sent before every ``then`` message (and both were)."""
    firsts = [i for i, k in enumerate(sent) if k == first]
    thens = [i for i, k in enumerate(sent) if k == then]
    return bool(firsts and thens) and max(firsts) < min(thens)


# -- reconciliation ---------------------------------------------------------------------------------
def test_groups_go_in_before_the_flows_that_use_them(bridge: str) -> None:
    inner = ff(1, 2)
    outer = Group((Bucket((inner,), 3), Bucket((SetField("reg6", 3), Output(2)), None)))  # nests inner; always live
    flows = [deliver(7, inner), deliver(8, outer)]
    with connected(bridge, FakeSource(HV, flows)) as conn:
        groups = dump_groups(bridge)
        assert set(groups) == {LIVE_GROUP_ID, inner.group_id, outer.group_id}
        assert groups[inner.group_id] == group_text(inner)
        assert groups[outer.group_id] == (f"group_id={outer.group_id},type=ff,bucket=watch_port:3,actions=group:"
                                          f"{inner.group_id},bucket=watch_group:0,actions=set_field:0x3->reg6,"
                                          "output:2")
        assert groups[LIVE_GROUP_ID] == LIVE_GROUP_TEXT
        assert flow_cookies(bridge) == {f.cookie for f in flows}
        assert any(f"actions=group:{outer.group_id}" in line for line in dump_flows(bridge))
        # added outside the bundle, confirmed, then the bundle: the live group first, a nested group before its user
        assert conn.dp.kinds(*FLOW_MODS) == ["group_add"] * 3 + ["bundle_open", "flow_add", "flow_add"]
        assert before(conn.dp.sent, "group_add", "barrier")
        assert sorted(conn.sw.groups.present) == sorted(groups)


def test_a_changed_group_is_added_before_and_the_old_one_deleted_after_the_bundle(bridge: str) -> None:
    old, new = ff(1, 2), ff(1, 3)
    with connected(bridge, FakeSource(HV, [deliver(7, old), deliver(8, Output(4))])) as conn:
        assert set(dump_groups(bridge)) == {old.group_id}
        conn.dp.sent.clear()
        conn.set([deliver(7, new), deliver(8, Output(4))])
        assert set(dump_groups(bridge)) == {new.group_id}
        sent = conn.dp.kinds(*FLOW_MODS, "bundle_commit")
        assert sent == ["group_add", "bundle_open", "flow_delete", "flow_add", "bundle_commit", "group_delete"]
        assert flow_cookies(bridge) == {deliver(7, new).cookie, deliver(8, Output(4)).cookie}
        # the last flow using groups goes: its group after it (the live group too, with the last bucket watching it)
        conn.set([deliver(8, Output(4))])
        assert dump_groups(bridge) == {}
        conn.set([deliver(7, ff(None, 2))])
        assert set(dump_groups(bridge)) == {LIVE_GROUP_ID, ff(None, 2).group_id}
        conn.set([deliver(7, ff(1, 2))])
        assert set(dump_groups(bridge)) == {ff(1, 2).group_id}
        # a group two flows use stays while one of them does
        conn.set([deliver(7, ff(1, 2)), deliver(8, ff(1, 2))])
        conn.set([deliver(8, ff(1, 2))])
        assert set(dump_groups(bridge)) == {ff(1, 2).group_id}
        assert flow_cookies(bridge) == {deliver(8, ff(1, 2)).cookie}
        assert "group_modify" not in conn.dp.sent


def test_a_reconnect_sends_nothing_when_all_is_in_place_and_removes_stale_groups(bridge: str) -> None:
    kept, dropped = ff(1, 2), ff(3, 4)
    flows = [deliver(7, kept), deliver(8, dropped)]
    source = FakeSource(HV, flows)
    with connected(bridge, source):
        pass
    durations = group_durations(bridge)
    time.sleep(0.2)
    with connected(bridge, FakeSource(HV, flows)) as again:
        assert again.dp.kinds(*FLOW_MODS) == [], "a reconnect to a bridge that holds it all sends nothing"
        assert "multipart:7" in again.dp.sent, "it read the groups"
    after = group_durations(bridge)
    assert set(after) == set(durations) and all(after[g] >= durations[g] + 0.2 for g in after), "not re-added"
    # while no controller is connected: the topology changes, and someone adds a group of their own
    ofctl("add-group", bridge, "group_id=4242,type=ff,bucket=watch_port:1,actions=output:1")
    changed = [deliver(7, kept), deliver(9, ff(5, 6))]
    with connected(bridge, FakeSource(HV, changed)) as third:
        assert set(dump_groups(bridge)) == {kept.group_id, ff(5, 6).group_id}
        assert flow_cookies(bridge) == {f.cookie for f in changed}
        assert third.dp.kinds(*FLOW_MODS, "bundle_commit") == [
            "group_add", "bundle_open", "flow_delete", "flow_add", "bundle_commit", "group_delete", "group_delete"]


def test_a_refused_group_is_logged_and_does_not_wedge_the_switch(bridge: str, caplog: pytest.LogCaptureFixture) -> None:
    bad = Group((Bucket((PushVlan(0x1234), Output(1)), 1),))  # OVS: push_vlan takes 0x8100 or 0x88a8 only
    good = [deliver(7, ff(1, 2)), deliver(8, Output(3))]
    caplog.set_level(logging.ERROR, logger="tenantflow.groups")
    with connected(bridge, FakeSource(HV, [deliver(7, bad), deliver(8, Output(3))]), wait=False) as conn:
        wait_until(lambda: conn.sw.diverged and conn.sw.ready, message="the failed sync")
        wait_until(lambda: any("add group" in r.getMessage() for r in caplog.records), message="the error logged")
        text = next(r.getMessage() for r in caplog.records if "add group" in r.getMessage())
        assert "OFPBAC_BAD_ARGUMENT" in text and group_text(bad) in text and HV in text
        assert "bundle_open" not in conn.dp.sent, "its flows would be refused: no bundle is sent"
        assert flow_cookies(bridge) == set() and dump_groups(bridge) == {}
        conn.set(good)  # retried after a backoff; the next retry takes the change
        assert set(dump_groups(bridge)) == {ff(1, 2).group_id}
        assert flow_cookies(bridge) == {f.cookie for f in good} and not conn.sw.diverged
        assert conn.sw.alive


# -- the encoding as OVS reads it --------------------------------------------------------------------
def rich_flows() -> list[Flow]:
    """Flows and groups with every kind of action, CT with NAT included, in flows and in buckets."""
    learn = Learn("lr_in_mac_binding", 100, 300, 0x3100000000000007, (("reg6", "reg6"), ("reg0", "arp_spa")),
                  (("arp_sha", "eth_dst"),))
    snat = CT(commit=True, zone="reg8", table="ls_in_acl", nat="src=203.0.113.7")
    group = Group((
        Bucket((SetField("tunnel_id", 1001), SetField("tun_ipv4_dst", "192.0.2.9"), Output(5)), 5),
        Bucket((SetField("reg6", 7), RegMove("reg6", "reg7", 32), snat), 6),
        Bucket((ff(1, 2),), None),
    ))
    pre_acl, acl = stage("ls_in_pre_acl"), stage("ls_in_acl")
    return [
        make_flow(pre_acl, "track", {"reg7": 9, "eth_type": 0x800}, [group]),
        make_flow(pre_acl, "track", {"reg7": 10, "eth_type": 0x800}, [CT(zone=3, table="ls_in_acl", nat="")]),
        make_flow(pre_acl, "track", {"reg7": 11, "eth_type": 0x86DD},
                  [CT(commit=True, zone="reg8", table="ls_in_acl", nat="src=2001:db8::7")]),
        make_flow(acl, "rule", {"reg7": 9, "eth_type": 0x800}, [CT(commit=True, zone=5, nat="src=198.51.100.1")],
                  goto=stage("ls_in_arp_rsp")),
        make_flow(stage("ext_in_fip"), "arp_learn", {"reg6": 7, "eth_type": 0x806, "arp_op": 2},
                  [learn, Group((Bucket((Resubmit("ls_in_l2_lookup"),), 4),))]),
    ]


def test_our_encoding_and_our_ofctl_text_are_the_same_flows_and_groups_to_ovs(bridge: str) -> None:
    """What the controller sends (controller.wire) and what flows.ofctl writes for ovs-ofctl: OVS reads them alike."""
    flows = rich_flows()
    with connected(bridge, FakeSource(HV, flows)):
        pass
    groups = {g.group_id: g for f in flows for g in used_groups(f.actions)}
    with new_bridge() as by_text:
        ofctl("add-group", by_text, LIVE_GROUP_TEXT)
        for group in groups.values():
            ofctl("add-group", by_text, group_text(group))
        for flow in flows:
            ofctl("add-flow", by_text, flow_text(flow))
        assert dump_groups(bridge) == dump_groups(by_text)
        assert dump_flows(bridge) == dump_flows(by_text)
    dumped = "\n".join(dump_flows(bridge)) + "\n".join(dump_groups(bridge).values())
    for text in ("ct(table=6,zone=3,nat)", "nat(src=203.0.113.7)", "nat(src=2001:db8::7)",
                 "ct(commit,zone=5,nat(src=198.51.100.1))", "watch_group:0"):
        assert text in dumped
    assert set(dump_groups(bridge)) == {LIVE_GROUP_ID, *groups}


# -- failover, with real packets ------------------------------------------------------------------------
@dataclass
class Wired:
    """A bridge whose OpenFlow ports 1 and 2 are veths, their other ends in a namespace of the test's own."""

    bridge: str
    ns: str
    peers: dict[int, str]  # OpenFlow port -> the veth end in the namespace

    def set_link(self, port: int, up: bool) -> None:
        """Bring the far end of a port's veth up or down: the port's carrier follows (as a tunnel's BFD would)."""
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", self.peers[port], "up" if up else "down")
        state = "LIVE" if up else "LINK_DOWN"
        wait_until(lambda: re.search(rf"\n {port}\(.*\n.*\n\s+state:\s+{state}", ofctl("show", self.bridge)),
                   message=f"port {port} {state}")

    def received(self, port: int) -> int:
        """Packets the far end of a port's veth has received."""
        path = f"/sys/class/net/{self.peers[port]}/statistics/rx_packets"
        return int(sh("ip", "netns", "exec", self.ns, "cat", path))

    def inject(self, reg5: int, count: int = 3) -> None:
        """``count`` IPv4 frames into the deliver stage (table 60) with ``reg5`` set, as packet-outs."""
        frame = "ffffffffffff" "fa163e000001" "0800" "4500001400000000" "40ff0000" "0a000001" "0a000002"
        for _ in range(count):
            ofctl("packet-out", self.bridge, f"in_port=controller packet={frame} "
                  f"actions=set_field:{reg5}->reg5,resubmit(,{DELIVER.table_id})")


@contextlib.contextmanager
def plugged(bridge: str, namespaces: dict[int, str]) -> Iterator[dict[int, str]]:
    """A veth from each OpenFlow port ``namespaces`` names (its ``ofport_request``) into that namespace, up;
    yields port -> the veth end in the namespace. The namespaces are made here; all is deleted after."""
    tag = uuid.uuid4().hex[:6]
    made, outs = [], []
    try:
        for ns in dict.fromkeys(namespaces.values()):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        peers = {}
        for port, ns in namespaces.items():
            out, peer = f"tfg{tag}o{port}", f"tfg{tag}p{port}"
            sh("ip", "link", "add", out, "type", "veth", "peer", "name", peer, "netns", ns)
            outs.append(out)
            # no IPv6 on either end: the kernel's own router solicitations would count as received
            sh("sysctl", "-qw", f"net.ipv6.conf.{out}.disable_ipv6=1")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{peer}.disable_ipv6=1")
            sh("ip", "link", "set", out, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            sh("ovs-vsctl", "add-port", bridge, out, "--", "set", "interface", out, f"ofport_request={port}")
            peers[port] = peer
        yield peers
    finally:
        for out in outs:  # the veth before the namespace: netns deletion is asynchronous
            subprocess.run(["ovs-vsctl", "--if-exists", "del-port", bridge, out], capture_output=True, check=False)
            subprocess.run(["ip", "link", "del", out], capture_output=True, check=False)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def wired(bridge: str) -> Iterator[Wired]:
    ns = f"tfg{uuid.uuid4().hex[:8]}"
    with plugged(bridge, {1: ns, 2: ns}) as peers:
        wired = Wired(bridge, ns, peers)
        for port in peers:
            wired.set_link(port, True)
        yield wired


def test_a_fast_failover_group_takes_the_next_live_bucket_when_a_port_goes_down(wired: Wired) -> None:
    watched = ff(1, 2)  # port 1, else port 2
    fallback = Group((Bucket((Output(1),), 1), Bucket((Output(2),), None)))  # port 1, else always port 2
    with connected(wired.bridge, FakeSource(HV, [deliver(7, watched), deliver(8, fallback)])):
        for reg5, group in ((7, watched), (8, fallback)):
            rx = wired.received(1), wired.received(2)
            wired.inject(reg5)
            assert bucket_packets(wired.bridge, group.group_id) == [3, 0]
            assert wired.received(1) - rx[0] == 3 and wired.received(2) == rx[1]
        wired.set_link(1, False)
        for reg5, group in ((7, watched), (8, fallback)):
            rx2 = wired.received(2)
            wired.inject(reg5)
            assert bucket_packets(wired.bridge, group.group_id) == [3, 3], "the second bucket, no controller involved"
            assert wired.received(2) - rx2 == 3
        wired.set_link(1, True)
        rx1 = wired.received(1)
        wired.inject(7)
        assert bucket_packets(wired.bridge, watched.group_id) == [6, 3] and wired.received(1) - rx1 == 3


# -- source NAT in a bucket, with real packets; the simulator agrees -------------------------------------------
VM_MAC, PEER_MAC = "02:00:00:00:00:05", "02:00:00:00:00:09"
VM_IP, PEER_IP, SNAT_IP = "10.0.0.5", "198.51.100.9", "203.0.113.7"
SNAT_ZONE = 4242  # the host's userspace datapath has one conntrack for every bridge: a zone no one else uses


def snat_flows() -> list[Flow]:
    """Port 1 (a VM) reaches port 2 (the outside) source-NATed to SNAT_IP, by a bucket watching port 2;
    replies from port 2 are un-NATed (ct(nat)); then plain L2 delivery by destination MAC."""
    classify, l2 = stage("phy_classify"), stage("ls_in_l2_lookup")
    snat = CT(commit=True, zone=SNAT_ZONE, table="ls_in_l2_lookup", nat=f"src={SNAT_IP}")
    return [
        make_flow(classify, "vm_port", {"in_port": 1, "eth_type": 0x800}, [Group((Bucket((snat,), 2),))]),
        make_flow(classify, "tunnel", {"in_port": 2, "eth_type": 0x800},
                  [CT(zone=SNAT_ZONE, table="ls_in_l2_lookup", nat="")]),
        make_flow(l2, "unicast", {"eth_dst": PEER_MAC}, [Output(2)]),
        make_flow(l2, "unicast", {"eth_dst": VM_MAC}, [Output(1)]),
    ]


def in_ns(ns: str, *cmd: str) -> str:
    return sh("ip", "netns", "exec", ns, *cmd)


def test_source_nat_in_a_bucket_on_real_packets_as_the_simulator_has_it(bridge: str) -> None:
    tag = uuid.uuid4().hex[:6]
    vm, peer = f"tfg{tag}vm", f"tfg{tag}pe"
    with plugged(bridge, {1: vm, 2: peer}) as ends, connected(bridge, FakeSource(HV, snat_flows())):
        # Static neighbours: no ARP to forward. The outside has no route to the VM's own address, so an
        # answered ping proves both translations: the request left as SNAT_IP, the reply came back un-NATed.
        for ns, dev, mac, addr, far, far_mac in ((vm, ends[1], VM_MAC, f"{VM_IP}/24", PEER_IP, PEER_MAC),
                                                  (peer, ends[2], PEER_MAC, f"{PEER_IP}/24", SNAT_IP, VM_MAC)):
            in_ns(ns, "ip", "link", "set", dev, "address", mac)
            in_ns(ns, "ip", "addr", "add", addr, "dev", dev)
            in_ns(ns, "ip", "route", "add", f"{far}/32", "dev", dev)
            in_ns(ns, "ip", "neigh", "replace", far, "lladdr", far_mac, "dev", dev, "nud", "permanent")
        out = in_ns(vm, "ping", "-c3", "-i0.2", "-W2", PEER_IP)
        assert " 3 received" in out, out
        tracked = [line for line in sh("ovs-appctl", "dpctl/dump-conntrack", f"zone={SNAT_ZONE}").splitlines()
                   if f"src={VM_IP},dst={PEER_IP}" in line]
        assert tracked and f"reply=(src={PEER_IP},dst={SNAT_IP}" in tracked[0], tracked
    subprocess.run(["ovs-appctl", "dpctl/flush-conntrack", f"zone={SNAT_ZONE}"], capture_output=True, check=False)
    # the simulator, on the same flows
    pipe = Pipeline(snat_flows())
    echo = {"in_port": 1, "eth_dst": PEER_MAC, "eth_type": 0x800, "ip_proto": 1, "icmpv4_type": 8,
            "ipv4_src": VM_IP, "ipv4_dst": PEER_IP}
    (port, sent), = pipe.run(echo).outputs
    assert port == 2 and sent["ipv4_src"] == SNAT_IP
    reply = {**echo, "in_port": 2, "eth_dst": VM_MAC, "icmpv4_type": 0, "ipv4_src": PEER_IP, "ipv4_dst": SNAT_IP}
    (port, back), = pipe.run(reply).outputs
    assert port == 1 and (back["ipv4_src"], back["ipv4_dst"]) == (PEER_IP, VM_IP)


# -- meters -------------------------------------------------------------------------------------------
def dump_meters(bridge: str) -> dict[int, str]:
    """Meter id -> its dump-meters entry on one line, as OVS has it."""
    text = " ".join(ofctl("dump-meters", bridge).split("\n", 1)[1].split())
    return {int(m.group(1)): m.group(0).strip() for m in re.finditer(r"meter=(\d+) .*?(?= meter=|$)", text)}


def metered(reg5: int, meter: Meter) -> Flow:
    return deliver(reg5, meter, Output(reg5))


def test_meters_go_in_before_the_flows_that_use_them_and_leave_after_the_last(bridge: str) -> None:
    port7, port8 = Meter("port 7", 10, 10), Meter("port 8", 10, 10)
    flows = [metered(7, port7), metered(8, port8), deliver(9, Output(9))]
    with connected(bridge, FakeSource(HV, flows)) as conn:
        meters = dump_meters(bridge)
        assert set(meters) == {port7.meter_id, port8.meter_id} == conn.sw.meters.present
        assert meters[port7.meter_id] == (f"meter={port7.meter_id} pktps burst stats bands= type=drop rate=10 "
                                          "burst_size=10")
        assert any(f"actions=meter:{port7.meter_id},output:7" in line for line in dump_flows(bridge))
        assert conn.dp.kinds(*METER_MODS) == ["meter_add"] * 2 + ["bundle_open"] + ["flow_add"] * 3 + ["bundle_commit"]
        assert before(conn.dp.sent, "meter_add", "barrier")
        # a new rate is a new meter (and so new flows): added before the bundle, the old one deleted after it
        conn.dp.sent.clear()
        faster = Meter("port 7", 20, 10)
        conn.set([metered(7, faster), metered(8, port8), deliver(9, Output(9))])
        assert set(dump_meters(bridge)) == {faster.meter_id, port8.meter_id}
        assert conn.dp.kinds(*METER_MODS) == ["meter_add", "bundle_open", "flow_delete", "flow_add", "bundle_commit",
                                              "meter_delete"]
        conn.set([deliver(9, Output(9))])
        assert dump_meters(bridge) == {} and flow_cookies(bridge) == {deliver(9, Output(9)).cookie}
        assert "meter_modify" not in conn.dp.sent


def test_a_reconnect_sends_no_meter_when_all_is_in_place_and_removes_stale_ones(bridge: str) -> None:
    kept = Meter("port 7", 10, 10)
    flows = [metered(7, kept), metered(8, Meter("port 8", 10, 10))]
    with connected(bridge, FakeSource(HV, flows)):
        pass
    with connected(bridge, FakeSource(HV, flows)) as again:
        assert again.dp.kinds(*METER_MODS) == [], "a reconnect to a bridge that holds it all sends nothing"
        assert f"multipart:{ofp_meter_config()}" in again.dp.sent, "it read the meters"
    ofctl("add-meter", bridge, "meter=4242,pktps,bands=type=drop,rate=1")  # not ours: no flow of ours uses it
    with connected(bridge, FakeSource(HV, [metered(7, kept)])) as third:
        assert set(dump_meters(bridge)) == {kept.meter_id}
        assert third.dp.kinds("meter_add", "meter_delete") == ["meter_delete", "meter_delete"]


def ofp_meter_config() -> int:
    from os_ken.ofproto import ofproto_v1_3 as ofp

    return ofp.OFPMP_METER_CONFIG


def test_our_meter_text_is_what_the_controller_sends(bridge: str) -> None:
    """``flows.ofctl.meter_text`` (what a reader types to reproduce a bridge) and the controller's meter-mod
    give OVS the same meter, and the same flows."""
    flows = [metered(7, Meter("port 7", 10, 10)), deliver(8, Meter("hypervisor", 100, 50), Output(0xFFFFFFFD))]
    with connected(bridge, FakeSource(HV, flows)):
        pass
    with new_bridge() as by_text:
        for meter in {Meter("port 7", 10, 10), Meter("hypervisor", 100, 50)}:
            ofctl("add-meter", by_text, meter_text(meter))
        for flow in flows:
            ofctl("add-flow", by_text, flow_text(flow))
        assert dump_meters(bridge) == dump_meters(by_text) and len(dump_meters(bridge)) == 2
        assert dump_flows(bridge) == dump_flows(by_text)
