"""The sync worker's repair loop, against a fake datapath (no switch, no os-ken event loop).

A sync that fails (commit refused, a message of the bundle refused, no reply in time)
is retried with backoff after re-reading what the switch holds, until the bridge
equals its compiled flows; changes during a sync are coalesced; a stopped worker ends
at once; at most ``SYNC_SLOTS`` syncs run at a time, admitted in order.

:class:`FakeDatapath` takes the exact bytes the worker writes (``controller.wire``),
keeps a table of cookies the way OVS keeps flows (an ONF bundle applies atomically at
commit, or not at all), and the ids of its groups, and answers in OpenFlow bytes, handed to the switch the way the
connection's reader thread hands them (``FastEchoSocket.intercept``: only the xids the
switch claims, straight to ``Switch._on_message``).
"""

from __future__ import annotations

import functools
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller import metrics, switch
from controller.switch import Switch, SyncSlots, retry_delay
from flows.flow import Flow, SetField, make_flow
from flows.pipeline import stage
from tests import e2e_fixtures

HEADER = struct.Struct("!BBHI")
EXP = struct.Struct("!II")
CTRL = struct.Struct("!IHH")
BUNDLE_REPLY = struct.Struct("!BBHIIIIHH")
ERROR = struct.Struct("!BBHIHH")
EXP_ERROR = struct.Struct("!BBHIHHI")  # OFPET_EXPERIMENTER: type, exp_code, experimenter
MULTIPART = struct.Struct("!BBHIHH4x")
PORT = struct.Struct("!I4x6s2x16sIIIIIIII")
FLOW_STATS = struct.Struct("!HBxIIHHHH4xQQQ")
EMPTY_MATCH = struct.pack("!HH4x", ofp.OFPMT_OXM, 4)
INNER = struct.Struct("!QQBB")  # flow-mod cookie, cookie mask, table, command
GROUP_DESC = struct.Struct("!HBxI")  # ofp_group_desc without buckets: length, type, pad, group id
GROUP_MOD = struct.Struct("!HBxI")  # command, type, pad, group id

wait_until = functools.partial(e2e_fixtures.wait_until, interval=0.005)  # short-lived fake-switch states


def flows(n: int, net: int = 0x4242) -> list[Flow]:
    """``n`` valid flows of the l2 lookup stage."""
    l2, deliver = stage("ls_in_l2_lookup"), stage("ls_out_deliver")
    return [make_flow(l2, "unicast", {"reg6": net, "eth_dst": f"fa:16:3e:00:42:{i:02x}"},
                      [SetField("reg5", 0x4200 + i)], goto=deliver, description=f"test flow {i}")
            for i in range(n)]


class FakeDatapath(ofproto_protocol.ProtocolDesc):
    """Just enough of an OVS bridge behind os-ken's Datapath for :class:`controller.switch.Switch`.

    Knobs a test turns: ``refuse_commits`` (that many commits answered with an error,
    the bundle dropped), ``refuse_adds`` (that many bundles get an error on their first
    add), ``lose_commit_replies`` (that many commits applied but never answered),
    ``drop_barriers`` (that many barriers never answered), ``silent`` (answer nothing at
    all), ``barrier_gate`` (an Event the barrier reply waits for, in a thread).
    """

    def __init__(self, dpid: int):
        super().__init__(ofp.OFP_VERSION)
        self.id = dpid
        self.sw: Switch | None = None
        self.flows: Counter[int] = Counter()  # cookie -> flows carrying it, as dump-flows would show
        self.groups: set[int] = set()  # group ids, as dump-groups would show
        self.flow_dumps = 0
        self.commits = 0
        self.flow_mods = 0
        self.closed = 0
        self.refuse_commits = 0
        self.refuse_adds = 0
        self.lose_commit_replies = 0
        self.drop_barriers = 0
        self.silent = False
        self.barrier_gate: threading.Event | None = None
        self.barriers_held = 0  # barriers the gate holds back (answered once it opens)
        self.commit_threads: list[str] = []  # the thread that sent each commit
        self.on_dump: Callable[[FakeDatapath], None] | None = None
        self.socket = SimpleNamespace(intercept=self._intercept)
        self._owns: Callable[[int], bool] = lambda xid: False
        self._deliver: Callable[[bytes], None] = lambda msg: None
        self.ports: dict[str, int] = {"tf-vxlan": 1}  # the bridge's ports, as the port description lists them
        self._bundles: dict[int, list[tuple[int, int]]] = {}
        self._bad_bundles: set[int] = set()

    # -- what os-ken's Datapath offers the worker ---------------------------------
    def _intercept(self, owns: Callable[[int], bool], handler: Callable[[bytes], None]) -> None:
        self._owns, self._deliver = owns, handler

    def reply(self, msg: bytes) -> None:
        """A message from the switch, as the reader thread passes it: to the switch if it claims the xid."""
        owns, deliver = self._owns, self._deliver  # once: a stopped switch lets go of them (intercept(None, None))
        if owns is not None and deliver is not None and owns(HEADER.unpack_from(msg)[3]):
            deliver(msg)

    def send_msg(self, msg) -> bool:
        """Requests built with os-ken's parser: the port description and the flow dump."""
        if self.silent:
            return True
        if isinstance(msg, parser.OFPPortDescStatsRequest):
            body = b"".join(PORT.pack(no, bytes(6), n.encode(), 0, 0, 0, 0, 0, 0, 0, 0)
                            for n, no in self.ports.items())
            self.reply(MULTIPART.pack(4, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), msg.xid, ofp.OFPMP_PORT_DESC, 0)
                       + body)
        elif isinstance(msg, parser.OFPFlowStatsRequest):
            self.flow_dumps += 1
            if self.on_dump is not None:
                self.on_dump(self)
            entries = [FLOW_STATS.pack(FLOW_STATS.size + 8, 0, 0, 0, 0, 0, 0, 0, c, 0, 0) + EMPTY_MATCH
                       for c, n in self.flows.items() for _ in range(n)]
            for at in range(0, max(len(entries), 1), 100):  # in parts, as OVS sends a big dump
                more = at + 100 < len(entries)
                body = b"".join(entries[at:at + 100])
                self.reply(MULTIPART.pack(4, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), msg.xid, ofp.OFPMP_FLOW,
                                          ofp.OFPMPF_REPLY_MORE if more else 0) + body)
        return True

    def send(self, data: bytes) -> bool:
        """Raw bytes from controller.wire: bundle control and adds, barriers, packet-outs."""
        offset = 0
        while offset < len(data):
            _, msg_type, length, xid = HEADER.unpack_from(data, offset)
            if not self.silent:
                self._handle(msg_type, xid, data[offset:offset + length])
            offset += length
        return True

    def write_through(self, data: bytes) -> bool:
        """What the worker and the reply handler write themselves (controller.connection): the same as send."""
        return self.send(data)

    def close(self) -> None:
        """What the worker calls to drop the connection."""
        self.closed += 1

    # -- the switch -----------------------------------------------------------------
    def _handle(self, msg_type: int, xid: int, msg: bytes) -> None:
        if msg_type == ofp.OFPT_MULTIPART_REQUEST:  # the group dump (controller.wire.group_desc_request)
            body = b"".join(GROUP_DESC.pack(GROUP_DESC.size, ofp.OFPGT_FF, gid) for gid in sorted(self.groups))
            self.reply(MULTIPART.pack(4, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), xid, ofp.OFPMP_GROUP_DESC, 0)
                       + body)
            return
        if msg_type == ofp.OFPT_GROUP_MOD:
            command, _, gid = GROUP_MOD.unpack_from(msg, 8)
            (self.groups.add if command == ofp.OFPGC_ADD else self.groups.discard)(gid)
            return
        if msg_type == ofp.OFPT_BARRIER_REQUEST:
            if self.drop_barriers:
                self.drop_barriers -= 1
            elif self.barrier_gate is None:
                self.reply(HEADER.pack(4, ofp.OFPT_BARRIER_REPLY, 8, xid))
            else:
                gate, barrier = self.barrier_gate, HEADER.pack(4, ofp.OFPT_BARRIER_REPLY, 8, xid)
                self.barriers_held += 1
                threading.Thread(target=lambda: (gate.wait(10), self.reply(barrier)), daemon=True).start()
            return
        if msg_type != ofp.OFPT_EXPERIMENTER:
            return
        _, exp_type = EXP.unpack_from(msg, 8)
        if exp_type == ofp.ONF_ET_BUNDLE_ADD_MESSAGE:
            bundle_id = struct.unpack_from("!I", msg, 16)[0]
            cookie, _, _, command = INNER.unpack_from(msg, 24 + 8)
            self.flow_mods += 1
            ops = self._bundles.setdefault(bundle_id, [])
            if not ops and self.refuse_adds and bundle_id not in self._bad_bundles:
                self.refuse_adds -= 1
                self._bad_bundles.add(bundle_id)
                self.reply(ERROR.pack(4, ofp.OFPT_ERROR, 12 + 64, xid, ofp.OFPET_BAD_ACTION,
                                      ofp.OFPBAC_MATCH_INCONSISTENT) + msg[:64])
            ops.append((command, cookie))
            return
        bundle_id, ctrl_type, _ = CTRL.unpack_from(msg, 16)
        if ctrl_type == ofp.ONF_BCT_COMMIT_REQUEST:
            self.commits += 1
            self.commit_threads.append(threading.current_thread().name)
            ops = self._bundles.pop(bundle_id, [])
            if self.refuse_commits:  # as OVS after OFPBFC_TIMEOUT: the bundle is gone, nothing applied
                self.refuse_commits -= 1
                self.reply(EXP_ERROR.pack(4, ofp.OFPT_ERROR, 16 + len(msg), xid, ofp.OFPET_EXPERIMENTER, 2302,
                                          0x4F4E4600) + msg)
                return
            for command, cookie in ops:
                if command == ofp.OFPFC_DELETE:
                    self.flows.pop(cookie, None)
                else:
                    self.flows[cookie] = 1
            if self.lose_commit_replies:
                self.lose_commit_replies -= 1
                return
        elif ctrl_type == ofp.ONF_BCT_DISCARD_REQUEST:
            self._bundles.pop(bundle_id, None)
        self.reply(BUNDLE_REPLY.pack(4, ofp.OFPT_EXPERIMENTER, 24, xid, 0x4F4E4600, ofp.ONF_ET_BUNDLE_CONTROL,
                                     bundle_id, ctrl_type + 1, 0))


class FakeSource:
    """The incremental engine as a switch sees it (``controller.switch.FlowSource``): one hypervisor's flows.

    ``set`` replaces them and records the changed cookies, as a committed write does;
    ``takes`` counts the syncs that took changes.
    """

    def __init__(self, hv: str, compiled: list[Flow]):
        self.lock = threading.RLock()
        self.hv = hv
        self._desired = {f.cookie: f for f in compiled}
        self._changed = set(self._desired)
        self.takes = 0
        self.generation = 1
        self.built = True  # False: the engine has not built the hypervisor yet (the switch must not diff)

    def set(self, compiled: list[Flow]) -> None:
        """New flows for the hypervisor."""
        with self.lock:
            new = {f.cookie: f for f in compiled}
            self._changed |= set(new) ^ set(self._desired)
            self._desired = new
            self.generation += 1

    def generation_of(self, hv_name: str) -> int:
        """How many times the hypervisor's flows were set."""
        return self.generation

    def desired(self, hv_name: str) -> dict[int, Flow]:
        """Every flow the hypervisor must hold, by cookie."""
        assert hv_name == self.hv
        return self._desired

    def compiles(self, hv_name: str) -> bool:
        """It holds the one hypervisor's flows, once built."""
        return self.built and hv_name == self.hv

    def take_changes(self, hv_name: str) -> set[int]:
        """The cookies changed since the last call."""
        assert hv_name == self.hv
        self.takes += 1
        changed, self._changed = self._changed, set()
        return changed


def connect(dpid: int, hv: str, compiled: list[Flow],
            setup: Callable[[FakeDatapath], None] | None = None) -> tuple[Switch, FakeDatapath, FakeSource]:
    """A started Switch on a fake datapath; returns it, the datapath and its flow source."""
    dp = FakeDatapath(dpid)
    source = FakeSource(hv, compiled)
    sw = Switch(dp, source, lambda s, ports: setattr(s, "ofports", ports))
    dp.sw = sw
    if setup is not None:
        setup(dp)
    sw.start(hv)
    return sw, dp, source


def sample(name: str, **labels: str) -> float:
    """A metric's current value (0 when it has no series yet)."""
    return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0


def equal(sw: Switch, dp: FakeDatapath, compiled: list[Flow]) -> bool:
    """The bridge holds exactly the compiled flows, the last sync committed, no retry is pending."""
    return (dp.flows == Counter({f.cookie: 1 for f in compiled}) and sw.last_push is not None
            and sw.last_push.committed and not sw.diverged)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff in milliseconds, timeouts in a fraction of a second."""
    monkeypatch.setattr(switch, "RETRY_BASE", 0.05)
    monkeypatch.setattr(switch, "RETRY_CAP", 0.2)
    monkeypatch.setattr(switch, "REPLY_TIMEOUT", 0.5)


def test_a_refused_commit_is_retried_after_a_reread_until_the_bridge_is_equal() -> None:
    hv, compiled = "retry-commit", flows(5)
    seen_during_retry: list[tuple[float, bool]] = []

    def setup(dp: FakeDatapath) -> None:
        dp.refuse_commits = 1
        # The re-read before the retry: the bridge is counted as diverged at that moment.
        dp.on_dump = lambda d: d.flow_dumps == 2 and seen_during_retry.append(
            (metrics.REGISTRY.get_sample_value("tenantflow_bridges_diverged"), d.sw.diverged))

    retries = sample("tenantflow_sync_retries_total", hypervisor=hv)
    sw, dp, source = connect(0xA1, hv, compiled, setup)
    try:
        wait_until(lambda: equal(sw, dp, compiled), message="the bridge to equal its compiled flows")
        assert dp.commits == 2, "one refused commit, then one accepted"
        assert dp.flow_dumps == 2, "read on connect, read again before the retry"
        assert seen_during_retry and seen_during_retry[0][0] >= 1 and seen_during_retry[0][1]
        assert sample("tenantflow_sync_retries_total", hypervisor=hv) == retries + 1
        assert sample("tenantflow_bundles_total", hypervisor=hv, outcome="failed") == 1
        assert sample("tenantflow_bundles_total", hypervisor=hv, outcome="committed") == 1
        assert sample("tenantflow_switch_connected", hypervisor=hv) == 1
        assert source.takes == 2 and dp.closed == 0
        time.sleep(0.3)
        assert dp.commits == 2 and dp.flow_dumps == 2, "nothing more once the bridge is equal"
    finally:
        sw.stop()
        assert sw.join(2)
    assert not sw.diverged


def test_a_discarded_bundle_is_retried() -> None:
    hv, compiled = "retry-discard", flows(4)
    sw, dp, _ = connect(0xA2, hv, compiled, lambda dp: setattr(dp, "refuse_adds", 2))
    try:
        wait_until(lambda: equal(sw, dp, compiled), message="the bridge to equal its compiled flows")
        assert sample("tenantflow_bundles_total", hypervisor=hv, outcome="discarded") == 2
        assert sample("tenantflow_sync_retries_total", hypervisor=hv) == 2
        assert dp.flow_dumps == 3 and dp.commits == 1
    finally:
        sw.stop()
        assert sw.join(2)


def test_a_lost_commit_reply_times_out_and_the_reread_finds_the_flows_installed() -> None:
    """No reply in time leaves ``installed`` unknown: the re-read shows the commit did land, nothing is resent."""
    hv, compiled = "retry-timeout", flows(6)
    sw, dp, _ = connect(0xA3, hv, compiled, lambda dp: setattr(dp, "lose_commit_replies", 1))
    try:
        wait_until(lambda: sample("tenantflow_sync_retries_total", hypervisor=hv) == 1 and dp.flow_dumps == 2
                   and not sw.diverged, message="the retry")
        assert dp.flows == Counter({f.cookie: 1 for f in compiled})
        assert dp.commits == 1 and dp.flow_mods == 6, "the retry found the flows there and sent nothing"
        assert dp.closed == 0, "one timeout does not drop the connection"
    finally:
        sw.stop()
        assert sw.join(2)


def test_changes_taken_by_a_sync_that_timed_out_are_pushed_by_the_retry() -> None:
    """The engine hands each change out once: after a failed incremental sync the retry compares everything."""
    hv = "retry-incremental"
    sw, dp, source = connect(0xAA, hv, flows(2))
    try:
        wait_until(lambda: equal(sw, dp, flows(2)), message="the first sync")
        dp.drop_barriers = 1  # the next push never hears back: ReplyTimeout, its bundle never committed
        source.set(flows(4))
        sw.mark_dirty()
        wait_until(lambda: equal(sw, dp, flows(4)), message="the retry to push the two new flows")
        assert sample("tenantflow_sync_retries_total", hypervisor=hv) == 1 and dp.flow_dumps == 2
    finally:
        sw.stop()
        assert sw.join(2)


def test_the_reread_sees_what_changed_on_the_switch_meanwhile() -> None:
    hv, compiled = "retry-stray", flows(3)
    stray = flows(1, net=0x999)[0].cookie

    def setup(dp: FakeDatapath) -> None:
        dp.refuse_commits = 1
        dp.on_dump = lambda d: d.flow_dumps == 2 and d.flows.update({stray: 1})  # someone added a flow

    sw, dp, _ = connect(0xA4, hv, compiled, setup)
    try:
        wait_until(lambda: equal(sw, dp, compiled), message="the stray flow to be deleted")
        assert stray not in dp.flows and dp.flow_dumps == 2
    finally:
        sw.stop()
        assert sw.join(2)


def test_a_switch_that_never_answers_is_dropped_after_repeated_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switch, "REPLY_TIMEOUT", 0.1)
    hv = "retry-silent"
    sw, dp, _ = connect(0xA5, hv, flows(2), lambda dp: setattr(dp, "silent", True))
    assert sw.join(5), "the worker ends"
    assert dp.closed == 1, "after TIMEOUTS_BEFORE_DROP unanswered requests the connection is closed"
    assert sample("tenantflow_sync_retries_total", hypervisor=hv) == switch.TIMEOUTS_BEFORE_DROP - 1
    assert not sw.diverged


def test_stop_during_backoff_ends_the_worker_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switch, "RETRY_BASE", 30.0)
    monkeypatch.setattr(switch, "RETRY_CAP", 30.0)
    hv = "retry-stop"
    sw, dp, _ = connect(0xA6, hv, flows(2), lambda dp: setattr(dp, "refuse_commits", 100))
    wait_until(lambda: sw.diverged, message="the first failure")
    assert metrics.REGISTRY.get_sample_value("tenantflow_bridges_diverged") >= 1
    started = time.monotonic()
    sw.stop()
    assert sw.join(2) and time.monotonic() - started < 1, "stop() cuts the 15-30 s backoff short"
    assert not sw.diverged and dp.closed == 0 and dp.commits == 1


def test_a_stopped_worker_waiting_for_a_reply_ends_without_touching_the_connection() -> None:
    gate = threading.Event()
    sw, dp, _ = connect(0xA7, "retry-stop-push", flows(2), lambda dp: setattr(dp, "barrier_gate", gate))
    try:
        wait_until(lambda: dp.flow_mods == 2, message="the push to be under way")
        sw.stop()
        assert sw.join(2)
        assert dp.closed == 0 and dp.commits == 0 and not sw.diverged
    finally:
        gate.set()


def test_changes_during_a_sync_are_coalesced_into_one_more() -> None:
    hv = "retry-coalesce"
    gate = threading.Event()
    sw, dp, source = connect(0xA8, hv, flows(2), lambda dp: setattr(dp, "barrier_gate", gate))
    try:
        wait_until(lambda: dp.flow_mods == 2, message="the first push to be under way")
        for n in range(3, 53):  # 50 changes while the push waits for the switch
            source.set(flows(n))
            sw.mark_dirty()
        dp.barrier_gate = None
        gate.set()
        wait_until(lambda: equal(sw, dp, flows(52)), message="the changed flows")
        time.sleep(0.2)
        assert source.takes == 2, "50 changes during one sync cost exactly one more"
        assert dp.commits == 2 and dp.flow_mods == 2 + 50
    finally:
        sw.stop()
        assert sw.join(2)


def test_a_bundle_whose_barrier_comes_back_clean_is_committed_by_the_reply_s_thread() -> None:
    """The worker sends the bundle and its barrier, then sleeps until the commit's reply: the thread that reads
    the barrier's reply (the connection's reader) sends the commit, so the worker wakes once per sync."""
    hv, gate = "retry-commit-on-barrier", threading.Event()
    sw, dp, source = connect(0xAE, hv, flows(3), lambda dp: setattr(dp, "barrier_gate", gate))
    try:
        wait_until(lambda: dp.barriers_held == 1, message="the first bundle's barrier")
        gate.set()  # its reply comes from another thread, as from the reader
        wait_until(lambda: equal(sw, dp, flows(3)), message="the flows")
        source.set(flows(4))
        sw.mark_dirty()
        wait_until(lambda: equal(sw, dp, flows(4)), message="the change")
        assert dp.commits == 2 and sw._thread.name not in dp.commit_threads, dp.commit_threads
    finally:
        sw.stop()
        assert sw.join(2)


class HeldReplies(FakeDatapath):
    """A switch slow to answer: it keeps every reply until ``release()``, and counts the requests sent meanwhile."""

    def __init__(self, dpid: int) -> None:
        super().__init__(dpid)
        self.held: list[bytes] | None = []
        self.requests = 0

    def send_msg(self, msg) -> bool:
        self.requests += 1
        return super().send_msg(msg)

    def send(self, data: bytes) -> bool:
        self.requests += data[1] == ofp.OFPT_MULTIPART_REQUEST
        return super().send(data)

    def reply(self, msg: bytes) -> None:
        if self.held is None:
            super().reply(msg)
        else:
            self.held.append(msg)

    def release(self) -> None:
        held, self.held = self.held or [], None
        for msg in held:
            super().reply(msg)


def test_a_connect_reads_ports_flows_groups_and_meters_in_one_round_trip() -> None:
    """The four reads of a connecting bridge go out together: nothing waits for one reply before the next
    request (at a thousand bridges, four round trips each under the sync slots were most of a cold start)."""
    dp, source = HeldReplies(0xAF), FakeSource("retry-one-round-trip", flows(3))
    sw = Switch(dp, source, lambda s, ports: setattr(s, "ofports", ports))
    dp.sw = sw
    sw.start("retry-one-round-trip")
    try:
        # (and the flow monitor's request before them: answered by no reply the sync waits for)
        wait_until(lambda: dp.requests == 5, message="the port, flow, group and meter reads, unanswered")
        assert dp.commits == 0 and not sw.ready
        dp.release()
        wait_until(lambda: equal(sw, dp, flows(3)), message="the first sync")
        assert sw.ofports == {"tf-vxlan": 1} and dp.flow_dumps == 1
    finally:
        sw.stop()
        assert sw.join(2)


def test_changes_during_a_backoff_wait_for_the_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switch, "RETRY_BASE", 0.4)
    monkeypatch.setattr(switch, "RETRY_CAP", 0.4)
    sw, dp, source = connect(0xA9, "retry-no-shortcut", flows(2), lambda dp: setattr(dp, "refuse_commits", 1))
    try:
        wait_until(lambda: sw.diverged, message="the first failure")
        failed_at = time.monotonic()
        for _ in range(20):
            sw.mark_dirty()
            time.sleep(0.005)
        wait_until(lambda: not sw.diverged, message="the retry")
        assert time.monotonic() - failed_at >= 0.19, "the backoff (0.2-0.4 s) was not cut short by changes"
        time.sleep(0.1)
        assert source.takes == 2, "the changes were folded into the retry"
    finally:
        sw.stop()
        assert sw.join(2)


def test_retry_delay_doubles_to_the_cap_with_jitter() -> None:
    import random

    rng = random.Random(1)
    for failures, full in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0), (5000, 30.0)]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(switch, "RETRY_BASE", 0.5)
            mp.setattr(switch, "RETRY_CAP", 30.0)
            delays = [retry_delay(failures, rng) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays), failures
        assert max(delays) - min(delays) > full / 4, "jittered"


def test_sync_slots_bound_concurrency_and_admit_in_order() -> None:
    slots = SyncSlots(2)
    inside, peak, order = [0], [0], []
    lock = threading.Lock()

    def worker(i: int) -> None:
        with slots:
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
                order.append(i)
            time.sleep(0.03)
            with lock:
                inside[0] -= 1

    threads = []
    for i in range(8):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.005)  # arrival order 0, 1, 2, ...
    for t in threads:
        t.join(5)
    assert peak[0] == 2 and order == list(range(8))
    slots.set_limit(1)
    with pytest.raises(ValueError):
        slots.set_limit(0)


def test_cold_syncs_of_many_bridges_run_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switch, "SYNC_SLOTS", SyncSlots(3))
    inside, peak = [0], [0]
    lock = threading.Lock()

    def slow_dump(dp: FakeDatapath) -> None:  # a connect-time read inside the slot
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.02)
        with lock:
            inside[0] -= 1

    compiled = flows(3)
    started = [connect(0xB00 + i, f"cold-{i}", compiled, lambda dp: setattr(dp, "on_dump", slow_dump))
               for i in range(12)]
    try:
        for sw, dp, _ in started:
            wait_until(lambda sw=sw, dp=dp: equal(sw, dp, compiled), message="every bridge synced")
        assert peak[0] == 3
    finally:
        for sw, _, _ in started:
            sw.stop()
            assert sw.join(2)


def test_a_switch_that_keeps_its_worker_waiting_lends_its_sync_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung switch (no reply) must not hold a sync slot for the minute of REPLY_TIMEOUT: with one slot, another
    bridge connects and is synced while the hung one's worker still waits."""
    monkeypatch.setattr(switch, "SYNC_SLOTS", SyncSlots(1))
    monkeypatch.setattr(switch, "REPLY_TIMEOUT", 5.0)
    monkeypatch.setattr(switch, "SLOT_PATIENCE", 0.1)
    hung, hung_dp, _ = connect(0xC1, "hung", flows(2), lambda dp: setattr(dp, "silent", True))
    try:
        time.sleep(0.05)  # the hung one asked first and holds the slot
        sw, dp, _ = connect(0xC2, "healthy", flows(3))
        started = time.monotonic()
        wait_until(lambda: equal(sw, dp, flows(3)), 3, message="the healthy bridge synced")
        assert time.monotonic() - started < 2, "it waited for the slot no longer than the patience, not 5 s"
        assert hung.alive and not hung.ready, "the hung one's worker still waits for its reply"
        sw.stop()
        assert sw.join(2)
    finally:
        hung.stop()
        assert hung.join(2)


def stop_all(started: list[tuple[Switch, FakeDatapath, FakeSource]], gate: threading.Event) -> None:
    """Let every held barrier go, then stop each switch's worker."""
    gate.set()
    for sw, _, _ in started:
        sw.stop()
        assert sw.join(2)


def test_a_change_to_many_bridges_is_not_served_a_round_trip_after_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole syncs are bounded by SYNC_SLOTS; a change to ready bridges takes CHANGE_SLOTS. With ONE sync slot, a
    change to four synced bridges has all four bundles out while no switch has answered yet (a change to 41
    bridges is not ten rounds of round trips four at a time); with one pool for both, the three others never
    send theirs."""
    monkeypatch.setattr(switch, "SYNC_SLOTS", SyncSlots(1))
    monkeypatch.setattr(switch, "CHANGE_SLOTS", SyncSlots(8))
    monkeypatch.setattr(switch, "REPLY_TIMEOUT", 10.0)
    gate, compiled, changed = threading.Event(), flows(3), flows(4)
    started = [connect(0xD00 + i, f"fan-{i}", compiled) for i in range(4)]
    try:
        for sw, dp, _ in started:
            wait_until(lambda sw=sw, dp=dp: equal(sw, dp, compiled), message="every bridge synced")
        for sw, dp, source in started:
            dp.barrier_gate = gate
            source.set(changed)
            sw.mark_dirty()
        wait_until(lambda: sum(dp.barriers_held for _, dp, _ in started) == 4, 3,
                   message="every bridge's bundle out before any barrier is answered")
        assert not any(equal(sw, dp, changed) for sw, dp, _ in started), "nothing committed before its barrier"
        gate.set()
        for sw, dp, _ in started:
            wait_until(lambda sw=sw, dp=dp: equal(sw, dp, changed), message="every bridge took the change")
    finally:
        stop_all(started, gate)


def test_a_first_push_after_the_build_is_whole_and_bounded_by_the_sync_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bridges that connected before the engine built their hypervisors (a cold start with the warm-up) push all
    their flows later: those pushes are whole syncs, bounded by SYNC_SLOTS, not by the wide CHANGE_SLOTS."""
    monkeypatch.setattr(switch, "SYNC_SLOTS", SyncSlots(1))
    monkeypatch.setattr(switch, "CHANGE_SLOTS", SyncSlots(8))
    monkeypatch.setattr(switch, "REPLY_TIMEOUT", 10.0)
    gate, compiled = threading.Event(), flows(3)

    def unbuilt(dp: FakeDatapath) -> None:
        dp.barrier_gate = gate
        dp.sw._source.built = False  # before its worker starts

    started = [connect(0xE00 + i, f"late-{i}", compiled, unbuilt) for i in range(3)]
    try:
        wait_until(lambda: all(sw.ready for sw, _, _ in started), message="every bridge read")
        for sw, _, source in started:
            source.built = True
            sw.mark_dirty()
        wait_until(lambda: sum(dp.barriers_held for _, dp, _ in started) >= 1, message="a first push out")
        time.sleep(0.3)  # room for the others to send theirs, if they could
        assert sum(dp.barriers_held for _, dp, _ in started) == 1, "one whole push at a time"
        gate.set()
        for sw, dp, _ in started:
            wait_until(lambda sw=sw, dp=dp: equal(sw, dp, compiled), message="every bridge synced")
    finally:
        stop_all(started, gate)


def test_a_port_added_while_connecting_is_not_lost() -> None:
    # The port-status event of a port added between reading the port map and being ready cannot
    # be applied (there is no map yet): the app flags it and the switch reads the map again.
    def port_arrives(dp: FakeDatapath) -> None:
        if "tapnew" not in dp.ports:
            dp.ports["tapnew"] = 7
            dp.sw.ports_changed = True  # what TenantflowApp._port_status does before the switch is ready

    sw, dp, _ = connect(0x77, "hv-ports", [], setup=lambda dp: setattr(dp, "on_dump", port_arrives))
    try:
        wait_until(lambda: sw.ready and sw.ofports.get("tapnew") == 7, message="the new port in the switch's map")
    finally:
        sw.stop()
