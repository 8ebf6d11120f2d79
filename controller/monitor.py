"""Flows changed on a connected switch by someone else, seen as they happen (OpenFlow flow monitor).

A bridge is read (its cookies) when it connects; after that the controller knows what it
holds from what it sent. A flow deleted, added or modified by hand (``ovs-ofctl``), by
another controller or a script would stay until the next reconnect. So each switch the
controller masters is asked, on connect and before its flows are read, to report every
flow change (Open vSwitch 3.x: the ONF flow monitor extension of OpenFlow 1.3, EXT-187,
``ONFST_FLOW_MONITOR``): the switch then sends an update for each flow added, deleted or
modified, and, for changes made by *this* connection (our bundles, group and meter
mods), one abbreviated update carrying only the xid. Nothing is polled: a bridge nobody
touches costs nothing, at 1,000 bridges as at one.

Each update of someone else's (not abbreviated) that names a cookie the switch does not
learn itself (``flows.flow.Learn``: those come and go with traffic) marks the switch
*tampered*: its worker reads the flows again and compares every cookie, and the cookies
named by the updates are deleted and added again in the same bundle, since a flow
modified in place keeps its cookie and a comparison of cookies would not see it. If the
switch must pause the updates (too many unread) it says so and says again when it
resumes: both mark it tampered too, because updates were lost in between.

What OVS 3.1 accepts as a request differs from the extension's text and from what os-ken
encodes (``ONFFlowMonitorRequest`` strips the ``ofp_match`` header; OVS then answers
``OFPBMC_BAD_LEN``): the request's match is a whole ``ofp_match``. Updates carry the
Nicira event numbers (0 added, 1 deleted, 2 modified, 3 abbreviated) and arrive with xid 0.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from os_ken.ofproto import ofproto_common
from os_ken.ofproto import ofproto_v1_3 as ofp

from controller import metrics

LOG = logging.getLogger("tenantflow.switch")

ONF = ofproto_common.ONF_EXPERIMENTER_ID
FLOW_MONITOR = ofp.ONFMP_FLOW_MONITOR  # 1870: the multipart type of requests and updates
PAUSED, RESUMED = ofp.ONFT_FLOW_MONITOR_PAUSED, ofp.ONFT_FLOW_MONITOR_RESUMED
FLAGS = ofp.ONFFMF_ADD | ofp.ONFFMF_DELETE | ofp.ONFFMF_MODIFY  # no INITIAL (we dump), no OWN, no ACTIONS
EVENTS = {0: "added", 1: "deleted", 2: "modified"}
ABBREV = 3
REPAIR_BURST = 5  # repairs within REPAIR_WINDOW seconds before later ones wait (someone keeps changing flows)
REPAIR_WINDOW = 10.0

_REQUEST = struct.Struct("!BBHIHH4xII")  # multipart request header + experimenter id, exp_type
_MONITOR = struct.Struct("!IHHIB3x")  # id, flags, match length, out port, table id, pad
_EMPTY_MATCH = struct.pack("!HH4x", ofp.OFPMT_OXM, 4)
_REPLY = struct.Struct("!BBHIHH4xII")  # multipart reply header + experimenter id, exp_type
_UPDATE = struct.Struct("!HH")  # length, event
_FULL = struct.Struct("!HHHHHBxQ")  # reason, priority, idle, hard timeout, match length, table, pad, cookie
_NOTICE = struct.Struct("!BBHIII")  # experimenter message: header, experimenter id, exp_type
_CANCEL = struct.Struct("!BBHIIII")  # experimenter message: header, experimenter id, exp_type, monitor id


def request(monitor_id: int, xid: int) -> bytes:
    """The multipart request that starts monitoring every table of the switch (adds, deletes, modifications)."""
    body = _MONITOR.pack(monitor_id, FLAGS, 4, ofp.OFPP_ANY, ofp.OFPTT_ALL) + _EMPTY_MATCH
    return _REQUEST.pack(ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REQUEST, _REQUEST.size + len(body), xid,
                         ofp.OFPMP_EXPERIMENTER, 0, ONF, FLOW_MONITOR) + body


def cancel(monitor_id: int, xid: int) -> bytes:
    """The experimenter message that stops flow monitor ``monitor_id`` (``ONFT_FLOW_MONITOR_CANCEL``)."""
    return _CANCEL.pack(ofp.OFP_VERSION, ofp.OFPT_EXPERIMENTER, _CANCEL.size, xid, ONF, ofp.ONFT_FLOW_MONITOR_CANCEL,
                        monitor_id)


def updates(msg: bytes) -> tuple[list[tuple[str, int, int]], int, bool]:
    """(full updates as (event, table, cookie), abbreviated ones counted, more parts follow) of a monitor reply.

    Raises ValueError on anything malformed or on another multipart reply.
    """
    if len(msg) < _REPLY.size:
        raise ValueError(f"multipart reply of {len(msg)} bytes")
    _, msg_type, length, _, mp_type, flags, experimenter, exp_type = _REPLY.unpack_from(msg)
    if (msg_type != ofp.OFPT_MULTIPART_REPLY or mp_type != ofp.OFPMP_EXPERIMENTER or experimenter != ONF
            or exp_type != FLOW_MONITOR or length != len(msg)):
        raise ValueError(f"not a flow monitor reply (type {msg_type}, multipart {mp_type}, "
                         f"experimenter {experimenter:#x}/{exp_type}, length {length} of {len(msg)})")
    full, abbreviated, at = [], 0, _REPLY.size
    while at < length:
        if at + _UPDATE.size > length:
            raise ValueError(f"flow update header at {at} of {length}")
        size, event = _UPDATE.unpack_from(msg, at)
        if size < 8 or size % 8 or at + size > length:
            raise ValueError(f"flow update of {size} bytes at {at} of {length}")
        if event == ABBREV:
            abbreviated += 1
        elif event in EVENTS and size >= _UPDATE.size + _FULL.size:
            *_, table, cookie = _FULL.unpack_from(msg, at + _UPDATE.size)
            full.append((EVENTS[event], table, cookie))
        else:
            raise ValueError(f"flow update event {event} of {size} bytes")
        at += size
    return full, abbreviated, bool(flags & ofp.OFPMPF_REPLY_MORE)


def notice(msg: bytes) -> str | None:
    """``"paused"`` or ``"resumed"`` for the switch's flow monitor notices, None for another experimenter message."""
    if len(msg) < _NOTICE.size:
        return None
    _, msg_type, _, _, experimenter, exp_type = _NOTICE.unpack_from(msg)
    if msg_type != ofp.OFPT_EXPERIMENTER or experimenter != ONF:
        return None
    return {PAUSED: "paused", RESUMED: "resumed"}.get(exp_type)


@dataclass
class Tampering:
    """What someone else changed on one switch since its worker last looked (fed on the connection's reader thread)."""

    events: Counter = field(default_factory=Counter)  # "added" / "deleted" / "modified" / "paused" / "resumed"
    cookies: set[int] = field(default_factory=set)  # cookies the updates named (each is deleted and added again)
    examples: list[str] = field(default_factory=list)  # a few, for the log line
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _repairs: deque = field(default_factory=lambda: deque(maxlen=REPAIR_BURST))

    def note(self, event: str, table: int | None = None, cookie: int | None = None) -> None:
        """One change seen (reader thread)."""
        with self._lock:
            self.events[event] += 1
            if cookie is not None:
                self.cookies.add(cookie)
                if len(self.examples) < 3:
                    self.examples.append(f"{event} table={table} cookie={cookie:#x}")

    @property
    def pending(self) -> bool:
        """Whether changes were seen that no repair has taken yet."""
        return bool(self.events)

    def take(self) -> tuple[Counter, set[int], list[str]]:
        """Everything seen so far, cleared (worker thread): (events, cookies, examples)."""
        with self._lock:
            taken = self.events, self.cookies, self.examples
            self.events, self.cookies, self.examples = Counter(), set(), []
        return taken

    def repair_delay(self, now: float | None = None) -> float:
        """Seconds to wait before the next repair: 0, unless REPAIR_BURST repairs ran within REPAIR_WINDOW.

        Someone who keeps changing the flows (a second controller, a script in a loop) must not
        turn the repair into a busy loop of dumps and bundles: past the burst, a repair waits as
        long as the window's oldest one is younger than REPAIR_WINDOW.
        """
        now = time.monotonic() if now is None else now
        if len(self._repairs) < REPAIR_BURST:
            return 0.0
        return max(0.0, self._repairs[0] + REPAIR_WINDOW - now)

    def repaired(self, now: float | None = None) -> None:
        """A repair ran (worker thread)."""
        self._repairs.append(time.monotonic() if now is None else now)


class FlowMonitoring:
    """What :class:`controller.switch.Switch` does with its flow monitor (a mixin: these methods use its state)."""

    MONITOR_ID = 1  # the id of its flow monitor on the connection (one per connection and id)
    label: str  # (the switch's; annotations only: Switch defines them)
    mastering: bool
    _xids: Iterator[int]
    tampering: Tampering
    _monitoring: bool
    _monitor_xid: int
    _send: Callable[[bytes], None]
    _replace: set[int]
    _learners: set[int]

    def _on_monitor(self, xid: int, msg: bytes) -> None:
        """The flow monitor's reply, updates (xid 0) and pause notices (controller.monitor), on the reader thread."""
        if msg[1] == ofp.OFPT_EXPERIMENTER:
            if (said := notice(msg)) is not None:
                self._tampered(said)
            return
        if msg[1] != ofp.OFPT_MULTIPART_REPLY:
            return  # nothing else comes unsolicited that we read (os-ken had no handler either)
        full, _, _ = updates(msg)
        learners = self._learners  # flows the switch learns itself come and go with traffic
        for event, table, cookie in full:
            if cookie not in learners:
                self._tampered(event, table, cookie)

    def _tampered(self, event: str, table: int | None = None, cookie: int | None = None) -> None:
        """Someone else changed the switch's flows: the worker reads them again and repairs (if we master it)."""
        if self.mastering and self._monitoring:
            self.tampering.note(event, table, cookie)
            self.mark_dirty()

    def _take_tampering(self) -> None:
        """Before a re-read: log and count what someone else changed; its cookies are sent again by the sync."""
        if not self.tampering.pending:
            return
        events, cookies, examples = self.tampering.take()
        self.tampering.repaired()
        self._replace |= cookies
        for event, n in events.items():
            metrics.FOREIGN_CHANGES.labels(self.label, event).inc(n)
        LOG.warning("switch %s: flows changed on the switch by someone else (%s; e.g. %s): repairing", self.label,
                    ", ".join(f"{n} {e}" for e, n in sorted(events.items())), "; ".join(examples) or "-")

    def _start_monitor(self) -> None:
        """Ask the switch to report flow changes (controller.monitor), once per connection.

        Not waited for: the switch answers in order, so the flow dump sent next is read after the
        monitor started (a change made during the dump is reported, not lost). A refusal (an error
        with its xid, see :meth:`on_error`) is logged; a switch that ignores it costs nothing.
        """
        if self._monitoring:
            return
        self._monitor_xid = next(self._xids)
        self._send(request(self.MONITOR_ID, self._monitor_xid))
        self._monitoring = True

    def _stop_monitor(self) -> None:
        """Made a slave: stop the switch's reports (each flow another instance writes would be encoded for us, and
        read here, for nothing: a slave repairs nothing). A master again reads the bridge and asks anew."""
        if not self._monitoring:
            return
        self._monitoring = False
        self._monitor_xid = next(self._xids)  # an error it draws (no such monitor) is ours, and quiet
        self._send(cancel(self.MONITOR_ID, self._monitor_xid))
