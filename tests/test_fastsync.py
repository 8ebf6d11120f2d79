"""A ready bridge's changes written by the one fast-sync thread (controller.fastsync), against a fake datapath.

The bridge connects through its worker as always; after that a change is written by the
dispatcher's thread and recorded at the commit's reply, while the worker sleeps; whatever
goes wrong (a refused message or commit, no reply) is the worker's again, and the bridge
ends equal to its compiled flows. :class:`FastDatapath` is the retry tests' fake switch
(``tests.test_switch_retry``), which answers inline on the writer's thread, with the
non-waiting write the dispatcher uses and a record of which thread wrote each bundle.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from controller import switch
from controller.fastsync import FastSyncs
from controller.switch import Switch
from flows.dhcp import dhcp_default
from flows.flow import flow_meter
from tests.test_switch_retry import EXP, HEADER, FakeDatapath, FakeSource, equal, flows, sample, wait_until


class FastDatapath(FakeDatapath):
    """The fake switch, with ``write_nowait`` and the name of the thread that wrote each bundle's opening."""

    def __init__(self, dpid: int) -> None:
        super().__init__(dpid)
        self.bundle_writers: list[str] = []

    def send(self, data: bytes, block: bool = True) -> bool:
        if _opens_bundle(data):
            self.bundle_writers.append(threading.current_thread().name)
        return super().send(data)

    def write_nowait(self, data: bytes) -> bool:
        return self.send(data)


def _opens_bundle(data: bytes) -> bool:
    return (data[1] == ofp.OFPT_EXPERIMENTER and EXP.unpack_from(data, 8)[1] == ofp.ONF_ET_BUNDLE_CONTROL
            and data[20:22] == ofp.ONF_BCT_OPEN_REQUEST.to_bytes(2, "big"))


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switch, "RETRY_BASE", 0.05)
    monkeypatch.setattr(switch, "RETRY_CAP", 0.2)
    monkeypatch.setattr(switch, "REPLY_TIMEOUT", 0.5)


def connect(dpid: int, hv: str, compiled: list) -> tuple[Switch, FastDatapath, FakeSource]:
    """A started switch on a fake datapath, with a fast path of its own; connected and equal."""
    dp = FastDatapath(dpid)
    source = FakeSource(hv, compiled)
    sw = Switch(dp, source, lambda s, ports: setattr(s, "ofports", ports), fast=FastSyncs())
    dp.sw = sw
    sw.start(hv)
    wait_until(lambda: equal(sw, dp, compiled) and sw._worker_idle, message="the connect")
    assert dp.bundle_writers == [sw._thread.name], "the connect is the worker's"
    return sw, dp, source


def change(sw: Switch, source: FakeSource, compiled: list) -> None:
    source.set(compiled)
    sw.mark_dirty()


def test_a_change_is_written_by_the_fast_thread_and_recorded_at_the_commit_reply() -> None:
    hv = "fast-change"
    sw, dp, source = connect(0xF1, hv, flows(3))
    try:
        attempts = sample("tenantflow_sync_attempts_total", kind="fast")
        change(sw, source, flows(5))
        wait_until(lambda: equal(sw, dp, flows(5)) and sw.synced_generation == source.generation,
                   message="the change")
        change(sw, source, flows(2))  # and deletes
        wait_until(lambda: equal(sw, dp, flows(2)) and sw.synced_generation == source.generation,
                   message="the deletes")
        assert dp.bundle_writers[1:] == ["fast-sync", "fast-sync"]
        assert dp.flow_dumps == 1 and dp.commits == 3
        assert sample("tenantflow_sync_attempts_total", kind="fast") == attempts + 2
        assert sw.holds(source.generation) and not sw.diverged
    finally:
        sw.stop()
        assert sw.join(2)


def test_changes_while_a_bundle_is_in_flight_go_in_one_more() -> None:
    sw, dp, source = connect(0xF2, "fast-coalesce", flows(2))
    gate = threading.Event()
    try:
        dp.barrier_gate = gate
        change(sw, source, flows(3))
        wait_until(lambda: dp.barriers_held == 1, message="the first bundle's barrier, held")
        for n in range(4, 54):  # 50 changes while it waits for the switch
            change(sw, source, flows(n))
        dp.barrier_gate = None
        gate.set()
        wait_until(lambda: equal(sw, dp, flows(53)), message="every change")
        time.sleep(0.1)
        assert dp.bundle_writers[1:] == ["fast-sync", "fast-sync"], "50 changes in flight cost one more bundle"
        assert source.takes == 3 and dp.commits == 3
    finally:
        gate.set()
        sw.stop()
        assert sw.join(2)


def test_a_refused_message_is_discarded_and_the_worker_rereads_and_retries() -> None:
    hv = "fast-refused"
    sw, dp, source = connect(0xF3, hv, flows(2))
    try:
        retries = sample("tenantflow_sync_retries_total", hypervisor=hv)
        dp.refuse_adds = 1
        change(sw, source, flows(4))
        wait_until(lambda: equal(sw, dp, flows(4)), message="the retry")
        assert dp.bundle_writers == [sw._thread.name, "fast-sync", sw._thread.name]
        assert sample("tenantflow_bundles_total", hypervisor=hv, outcome="discarded") == 1
        assert sample("tenantflow_sync_retries_total", hypervisor=hv) == retries + 1
        assert dp.flow_dumps == 2 and not dp._bundles, "re-read before the retry; the refused bundle discarded"
    finally:
        sw.stop()
        assert sw.join(2)


def test_a_refused_commit_is_retried_by_the_worker() -> None:
    hv = "fast-commit-refused"
    sw, dp, source = connect(0xF4, hv, flows(2))
    try:
        dp.refuse_commits = 1
        change(sw, source, flows(3))
        wait_until(lambda: equal(sw, dp, flows(3)), message="the retry")
        assert sample("tenantflow_bundles_total", hypervisor=hv, outcome="failed") == 1
        assert dp.bundle_writers[1:] == ["fast-sync", sw._thread.name] and dp.flow_dumps == 2
    finally:
        sw.stop()
        assert sw.join(2)


def test_a_bundle_never_answered_is_given_to_the_worker_after_the_reply_timeout() -> None:
    hv = "fast-timeout"
    sw, dp, source = connect(0xF5, hv, flows(2))
    try:
        dp.drop_barriers = 1
        change(sw, source, flows(4))
        time.sleep(0.2)
        assert not sw.holds(source.generation), "not confirmed: the barrier is not answered"
        wait_until(lambda: equal(sw, dp, flows(4)) and sw.holds(source.generation), timeout=5,
                   message="the worker's retry after the timeout")
        assert dp.flow_dumps == 2 and dp.bundle_writers[-1] == sw._thread.name
    finally:
        sw.stop()
        assert sw.join(2)


def test_a_change_using_a_meter_is_left_to_the_worker() -> None:
    """Its meter must be added and confirmed before the bundle: a round trip of its own, the worker's."""
    sw, dp, source = connect(0xF6, "fast-meter", flows(2))
    punt = dhcp_default()[1]  # through the hypervisor's meter to the controller
    assert flow_meter(punt.actions) is not None
    try:
        change(sw, source, [*flows(2), punt])
        wait_until(lambda: equal(sw, dp, [*flows(2), punt]), message="the metered flow")
        assert dp.bundle_writers == [sw._thread.name, sw._thread.name] and source.takes == 2
        change(sw, source, [*flows(3), punt])
        wait_until(lambda: equal(sw, dp, [*flows(3), punt]), message="the next change")
        assert dp.bundle_writers[-1] == "fast-sync"
    finally:
        sw.stop()
        assert sw.join(2)


def test_a_switch_gone_with_a_bundle_in_flight_records_nothing() -> None:
    sw, dp, source = connect(0xF7, "fast-gone", flows(2))
    gate = threading.Event()
    try:
        dp.barrier_gate = gate
        change(sw, source, flows(3))
        wait_until(lambda: dp.barriers_held == 1, message="the bundle's barrier, held")
        sw.stop()
        assert sw.join(2)
        gate.set()
        time.sleep(0.1)
        assert not sw.holds(source.generation) and sw._fast_ctx is None
        assert dp.flows == Counter({f.cookie: 1 for f in flows(2)}), "never committed"
    finally:
        gate.set()


def test_the_fake_switch_reports_bundle_openings() -> None:
    """(The fixture's own check: only a bundle's opening counts.)"""
    assert _opens_bundle(HEADER.pack(4, ofp.OFPT_EXPERIMENTER, 24, 1) + EXP.pack(0x4F4E4600, ofp.ONF_ET_BUNDLE_CONTROL)
                         + b"\x00\x00\x00\x01" + ofp.ONF_BCT_OPEN_REQUEST.to_bytes(2, "big") + b"\x00\x00")
    assert not _opens_bundle(HEADER.pack(4, ofp.OFPT_BARRIER_REQUEST, 8, 1))
