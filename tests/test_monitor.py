"""controller.monitor: the flow monitor's messages as Open vSwitch 3.1 sends them, and the repair bound.

The bytes below were captured from OVS 3.1.0 (a bridge monitored with ``monitor.request``, then
``ovs-ofctl add-flow`` / ``mod-flows`` / ``del-flows`` and a bundle of the monitoring connection's
own); tests/test_e2e_restart.py runs the whole repair against real OVS.
"""

from __future__ import annotations

import struct

import pytest

from controller import monitor

HEADER = struct.Struct("!BBHI")
BODY = "ffff0000000000004f4e46000000074e"  # multipart experimenter, ONF, flow monitor


def reply(hex_body: str, xid: int = 0) -> bytes:
    body = bytes.fromhex(BODY + hex_body)
    return HEADER.pack(4, 19, 8 + len(body), xid) + body


def test_updates_as_ovs_sends_them() -> None:
    added = "0020000000000005000000000004030000000000000000420001000400000000"
    modified = "0020000200000005000000000004030000000000000000420001000400000000"
    deleted = "0020000100020005000000000004030000000000000000430001000400000000"
    assert monitor.updates(reply(added)) == ([("added", 3, 0x42)], 0, False)
    assert monitor.updates(reply(modified + deleted)) == ([("modified", 3, 0x42), ("deleted", 3, 0x43)], 0, False)
    assert monitor.updates(reply("0008000300000061")) == ([], 1, False), "our own change: abbreviated, xid only"
    assert monitor.updates(reply("", xid=7)) == ([], 0, False), "the request's (empty) reply"


@pytest.mark.parametrize("bad", [
    "0020000000000005",  # an update longer than the message
    "0006000300000061",  # a length not a multiple of 8
    "0008000900000000",  # an unknown event
])
def test_malformed_updates_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        monitor.updates(reply(bad))


def test_request_and_notices() -> None:
    req = monitor.request(1, 0x55)
    version, msg_type, length, xid = HEADER.unpack_from(req)
    assert (version, msg_type, length, xid) == (4, 18, len(req), 0x55)
    # id 1; add, delete, modify; the match a whole (empty) ofp_match: what OVS 3.1 accepts
    assert req[16:] == bytes.fromhex("4f4e46000000074e" "00000001000e0004ffffffffff000000" "0001000400000000")
    paused = struct.pack("!BBHIII", 4, 4, 16, 0, 0x4F4E4600, 1871)
    assert monitor.notice(paused) == "paused" and monitor.notice(paused[:-4] + struct.pack("!I", 1872)) == "resumed"
    assert monitor.notice(struct.pack("!BBHIII", 4, 4, 16, 0, 0x2320, 1871)) is None


def test_someone_who_keeps_changing_flows_gets_a_bounded_repair_rate() -> None:
    seen = monitor.Tampering()
    for t in range(monitor.REPAIR_BURST):
        assert seen.repair_delay(now=100.0 + t) == 0
        seen.repaired(now=100.0 + t)
    assert seen.repair_delay(now=105.0) == pytest.approx(monitor.REPAIR_WINDOW - 5.0)
    assert seen.repair_delay(now=100.0 + monitor.REPAIR_WINDOW) == 0
    seen.note("deleted", 30, 0x42)
    seen.note("paused")
    events, cookies, examples = seen.take()
    assert events == {"deleted": 1, "paused": 1} and cookies == {0x42} and not seen.pending
