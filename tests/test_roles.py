"""A deposed master cannot write: OpenFlow roles as Open vSwitch enforces them, and as our switches claim them.

Part one, against a real Open vSwitch bridge (a dummy-datapath bridge of the scale lab, no
controller code at all: two hand-driven OpenFlow connections): once a master of a newer
generation claims the bridge, the old master's flow-mods are refused (``OFPBRC_IS_SLAVE``)
and its claim with its old generation too (``OFPRRFC_STALE``), on its live connection and
after it reconnects (a new connection starts EQUAL; declared slave, it can write nothing).

Part two, our side (:class:`controller.switch.Switch` on a fake datapath): the first thing
a cluster's instance sends on a connection is its role request; a slave, or a master whose
claim the switch found stale, reads the port map and sends nothing else, ever.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from apps.lab.scale import ScaleLab
from controller import monitor
from controller.claiming import ClaimRound
from controller.cluster import Role
from controller.switch import Switch
from tests.lab_fixtures import require_lab
from tests.test_switch_retry import ERROR, HEADER, FakeDatapath, FakeSource, flows, wait_until

ROLE = struct.Struct("!BBHII4xQ")  # header, role, pad, generation id
STUB = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)


# -- part one: what Open vSwitch does ------------------------------------------------------------
class RawController:
    """One OpenFlow connection from the bridge, driven by hand (messages packed here or by os-ken's parser)."""

    def __init__(self, listener: socket.socket) -> None:
        listener.settimeout(20)
        self.sock, _ = listener.accept()
        self.sock.settimeout(10)
        self.buf = b""
        self.xid = 100
        self.sock.sendall(HEADER.pack(4, ofp.OFPT_HELLO, 8, 1))
        self.read_until(lambda t, x: t == ofp.OFPT_HELLO)

    def reconnect(self, listener: socket.socket) -> None:
        """Close this connection and take the bridge's next one on ``listener``."""
        self.sock.close()
        self.__init__(listener)  # type: ignore[misc]

    def read_until(self, done) -> list[tuple[int, int, bytes]]:
        """Messages up to and including the first for which ``done(type, xid)``; echo requests answered."""
        seen = []
        while True:
            while len(self.buf) < 8 or len(self.buf) < HEADER.unpack_from(self.buf)[2]:
                chunk = self.sock.recv(65536)
                assert chunk, "the bridge closed the connection"
                self.buf += chunk
            length = HEADER.unpack_from(self.buf)[2]
            msg, self.buf = self.buf[:length], self.buf[length:]
            _, msg_type, _, xid = HEADER.unpack_from(msg)
            if msg_type == ofp.OFPT_ECHO_REQUEST:
                self.sock.sendall(HEADER.pack(4, ofp.OFPT_ECHO_REPLY, length, xid) + msg[8:])
                continue
            seen.append((msg_type, xid, msg))
            if done(msg_type, xid):
                return seen

    def call(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Send ``data`` then a barrier; every message that answered before the barrier's reply."""
        self.xid += 1
        barrier = self.xid
        self.sock.sendall(data + HEADER.pack(4, ofp.OFPT_BARRIER_REQUEST, 8, barrier))
        return self.read_until(lambda t, x: t == ofp.OFPT_BARRIER_REPLY and x == barrier)

    def role(self, role: int, generation: int) -> tuple[int, int]:
        """A role request: (message type of the answer, role granted or error code)."""
        self.xid += 1
        answers = self.call(ROLE.pack(4, ofp.OFPT_ROLE_REQUEST, ROLE.size, self.xid, role, generation))
        kind, _, msg = next(a for a in answers if a[0] in (ofp.OFPT_ROLE_REPLY, ofp.OFPT_ERROR))
        return (kind, ROLE.unpack_from(msg)[4]) if kind == ofp.OFPT_ROLE_REPLY else (kind, ERROR.unpack_from(msg)[5])

    def add_flow(self, cookie: int) -> list[tuple[int, int]]:
        """A flow-mod adding a flow with ``cookie``: the errors it drew, as (type, code)."""
        self.xid += 1
        mod = parser.OFPFlowMod(STUB, cookie=cookie, table_id=0, command=ofp.OFPFC_ADD, priority=cookie,
                                match=parser.OFPMatch(eth_type=0x88B5), instructions=[])
        mod.xid = self.xid
        mod.serialize()
        return [ERROR.unpack_from(m)[4:6] for t, _, m in self.call(bytes(mod.buf)) if t == ofp.OFPT_ERROR]


def _listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


@contextlib.contextmanager
def _two_controllers() -> Iterator[tuple[ScaleLab, socket.socket, RawController, RawController]]:
    """One real bridge whose two controllers are raw connections: (lab, a's listener, a, b), all closed after."""
    require_lab()
    old, new = _listener(), _listener()
    targets = f"tcp:127.0.0.1:{old.getsockname()[1]} tcp:127.0.0.1:{new.getsockname()[1]}"
    try:
        with ScaleLab(1, targets, bridges_per_vswitchd=1) as lab:
            a, b = RawController(old), RawController(new)
            try:
                yield lab, old, a, b
            finally:
                a.sock.close()
                b.sock.close()
    finally:
        old.close()
        new.close()


@pytest.mark.ovs
def test_open_vswitch_refuses_a_deposed_masters_writes_and_stale_claims() -> None:
    with _two_controllers() as (lab, old, a, b):
        hv = lab.hypervisors[0]
        assert a.role(ofp.OFPCR_ROLE_MASTER, 10) == (ofp.OFPT_ROLE_REPLY, ofp.OFPCR_ROLE_MASTER)
        assert a.add_flow(0xA) == []  # the master writes
        assert b.role(ofp.OFPCR_ROLE_MASTER, 11) == (ofp.OFPT_ROLE_REPLY, ofp.OFPCR_ROLE_MASTER)
        # a is deposed on its live connection: its flow-mods and its old claim are refused.
        assert a.add_flow(0xB) == [(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE)]
        assert a.role(ofp.OFPCR_ROLE_MASTER, 10) == (ofp.OFPT_ERROR, ofp.OFPRRFC_STALE)
        # a reconnects: OpenFlow starts it EQUAL; it declares itself slave first, then can write nothing.
        a.reconnect(old)
        assert a.role(ofp.OFPCR_ROLE_SLAVE, 11) == (ofp.OFPT_ROLE_REPLY, ofp.OFPCR_ROLE_SLAVE)
        assert a.add_flow(0xC) == [(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE)]
        assert a.role(ofp.OFPCR_ROLE_MASTER, 10) == (ofp.OFPT_ERROR, ofp.OFPRRFC_STALE)
        assert b.add_flow(0xD) == []  # the current master still writes
        cookies = set(hv.dump_cookies())
        assert {0xA, 0xD} <= cookies and not {0xB, 0xC} & cookies, cookies


@pytest.mark.ovs
def test_open_vswitch_stops_a_cancelled_flow_monitor() -> None:
    """A demoted instance cancels its flow monitor (controller.monitor.cancel): Open vSwitch takes that encoding."""
    with _two_controllers() as (lab, _, a, b):
        assert a.role(ofp.OFPCR_ROLE_MASTER, 10) == (ofp.OFPT_ROLE_REPLY, ofp.OFPCR_ROLE_MASTER)
        a.xid += 1
        assert not [m for t, _, m in a.call(monitor.request(1, a.xid)) if t == ofp.OFPT_ERROR]
        assert b.role(ofp.OFPCR_ROLE_MASTER, 11) == (ofp.OFPT_ROLE_REPLY, ofp.OFPCR_ROLE_MASTER)
        assert b.add_flow(0xE) == []
        assert 0xE in _reported(a, 5.0), "the monitor reports the new master's flow"
        a.xid += 1
        assert not [m for t, _, m in a.call(monitor.cancel(1, a.xid)) if t == ofp.OFPT_ERROR]
        assert b.add_flow(0xF) == []
        assert 0xF in set(lab.hypervisors[0].dump_cookies())
        assert _reported(a, 1.0) == set(), "a cancelled monitor reports nothing"


def _reported(ctl: RawController, seconds: float) -> set[int]:
    """Cookies of the flow monitor's full updates ``ctl`` reads within ``seconds`` (until the first, if any)."""
    ctl.sock.settimeout(seconds)
    try:
        for t, _, msg in ctl.read_until(lambda t, x: t == ofp.OFPT_MULTIPART_REPLY and x == 0):
            if t == ofp.OFPT_MULTIPART_REPLY:
                return {cookie for _, _, cookie in monitor.updates(msg)[0]}
    except TimeoutError:
        return set()
    finally:
        ctl.sock.settimeout(10)
    return set()


# -- part two: what our switches send ------------------------------------------------------------------
class RoleDatapath(FakeDatapath):
    """A fake datapath that answers role requests (or finds them stale) and logs what the switch sent, in order."""

    def __init__(self, dpid: int, stale: bool = False) -> None:
        super().__init__(dpid)
        self.stale = stale
        self.sent: list[str] = []

    def send_msg(self, msg) -> bool:
        if isinstance(msg, parser.OFPRoleRequest):
            self.sent.append("master" if msg.role == ofp.OFPCR_ROLE_MASTER else "slave")
            msg.serialize()
            if self.stale:
                self.reply(ERROR.pack(4, ofp.OFPT_ERROR, 12 + len(msg.buf), msg.xid, ofp.OFPET_ROLE_REQUEST_FAILED,
                                      ofp.OFPRRFC_STALE) + bytes(msg.buf))
            else:
                self.reply(ROLE.pack(4, ofp.OFPT_ROLE_REPLY, ROLE.size, msg.xid, msg.role, msg.generation_id))
            return True
        self.sent.append(type(msg).__name__)
        return super().send_msg(msg)

    def send(self, data: bytes) -> bool:
        self.sent.append(_kind(data))
        return super().send(data)


def _kind(data: bytes) -> str:
    """What raw bytes the switch wrote were: its flow monitor's request or cancel (controller.monitor), or a write."""
    msg_type = data[1]
    if msg_type == ofp.OFPT_MULTIPART_REQUEST and struct.unpack_from("!H", data, 8)[0] == ofp.OFPMP_EXPERIMENTER:
        return "monitor"
    if msg_type == ofp.OFPT_EXPERIMENTER and struct.unpack_from("!I", data, 12)[0] == ofp.ONFT_FLOW_MONITOR_CANCEL:
        return "monitor-cancel"
    return "write"


class Roles:
    """A cluster's answer for one bridge, changed by the test."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def role_for(self, dpid: int) -> Role:
        return self.role


def _start(role: Role, stale: bool = False) -> tuple[Switch, RoleDatapath, FakeSource, Roles]:
    dp, source, roles = RoleDatapath(0x5A, stale), FakeSource("roles-hv", flows(3)), Roles(role)
    sw = Switch(dp, source, lambda s, ports: setattr(s, "ofports", ports), roles=roles)
    dp.sw = sw
    sw.start("roles-hv")
    return sw, dp, source, roles


@pytest.mark.parametrize("stale", [False, True])
def test_a_slave_or_a_stale_claim_sends_nothing_but_its_role_request_and_a_port_read(stale: bool) -> None:
    role = Role(True, 5) if stale else Role(False, 5)
    sw, dp, source, _ = _start(role, stale)
    try:
        wait_until(lambda: "OFPPortDescStatsRequest" in dp.sent, 5, "the port read")
        source.set(flows(4))
        sw.mark_dirty()
        time.sleep(0.3)
        assert dp.sent[0] == ("master" if stale else "slave"), dp.sent  # before anything else
        assert set(dp.sent[1:]) == {"OFPPortDescStatsRequest"}, dp.sent  # no flow dump, no bundle, ever
        assert not dp.flows and not sw.mastering
    finally:
        sw.stop()


def test_a_master_claims_first_and_a_demoted_one_stops_writing() -> None:
    sw, dp, source, roles = _start(Role(True, 5))
    try:
        wait_until(lambda: dp.flows and sw.last_push is not None, 5, "the first sync")
        # (the flow monitor's request before the reads: controller.monitor)
        assert dp.sent[:4] == ["master", "monitor", "OFPPortDescStatsRequest", "OFPFlowStatsRequest"], dp.sent
        roles.role = Role(False, 9)  # a newer view gives the bridge to another instance
        sw.mark_dirty()
        wait_until(lambda: "monitor-cancel" in dp.sent, 5, "the slave declaration, then the monitor's cancel")
        # A slave repairs nothing: the switch stops reporting what the new master writes (each report costs both).
        assert dp.sent[dp.sent.index("slave") + 1] == "monitor-cancel", dp.sent
        writes = dp.sent.count("write")
        source.set(flows(6))
        sw.mark_dirty()
        time.sleep(0.3)
        assert dp.sent.count("write") == writes and not sw.mastering
        roles.role = Role(True, 12)  # ours again: claimed, monitored, re-read, reconciled
        sw.mark_dirty()
        wait_until(lambda: len(dp.flows) == 6, 5, "the reconcile after the claim")
        assert dp.sent[dp.sent.index("monitor-cancel") + 1:][:4] == [
            "master", "monitor", "OFPPortDescStatsRequest", "OFPFlowStatsRequest"], dp.sent
    finally:
        sw.stop()


class LoggedRoleDatapath(RoleDatapath):
    """A RoleDatapath writing what it is sent to a log shared by several bridges; role replies ``delay`` s late."""

    def __init__(self, dpid: int, log: list[tuple[int, str, int]], delay: float = 0.0) -> None:
        super().__init__(dpid)
        self.log, self.delay = log, delay

    def send_msg(self, msg) -> bool:
        if isinstance(msg, parser.OFPRoleRequest):
            self.log.append((self.id, "master" if msg.role == ofp.OFPCR_ROLE_MASTER else "slave", msg.generation_id))
            if self.delay:
                msg.serialize()
                reply = ROLE.pack(4, ofp.OFPT_ROLE_REPLY, ROLE.size, msg.xid, msg.role, msg.generation_id)
                threading.Timer(self.delay, self._late, (reply, msg.generation_id)).start()
                return True
        else:
            self.log.append((self.id, type(msg).__name__, 0))
        return super().send_msg(msg)

    def _late(self, reply: bytes, generation: int) -> None:
        self.log.append((self.id, "granted", generation))
        self.reply(reply)


class ViewRoles:
    """A cluster's answer per bridge: the generation, and the bridges it gives this instance."""

    def __init__(self, generation: int, ours: set[int]) -> None:
        self.generation, self.ours = generation, ours

    def role_for(self, dpid: int) -> Role:
        return Role(dpid in self.ours, self.generation)


def test_a_failover_claims_the_orphans_first_and_reads_them_once_every_orphan_is_claimed() -> None:
    # Found by the scale_out bench: all 1,000 bridges claimed at once and the first new masters started reading
    # their ~2,000 flows each while other orphans still waited to claim; the last grant came seconds late.
    log: list[tuple[int, str, int]] = []
    kept, orphan, slow_orphan = 0x61, 0x62, 0x63
    roles = ViewRoles(5, {kept})
    dps = {kept: LoggedRoleDatapath(kept, log), orphan: LoggedRoleDatapath(orphan, log),
           slow_orphan: LoggedRoleDatapath(slow_orphan, log, delay=0.5)}
    claims = ClaimRound()
    switches = []
    for dpid, dp in dps.items():
        sw = Switch(dp, FakeSource(f"hv{dpid:x}", flows(3)), lambda s, ports: setattr(s, "ofports", ports),
                    roles=roles, claims=claims)
        dp.sw = sw
        switches.append(sw)
        sw.start(f"hv{dpid:x}")
    try:
        wait_until(lambda: all(sw.role_settled for sw in switches) and switches[0].last_push is not None, 5,
                   "the first claims")
        log.clear()
        roles.generation, roles.ours = 9, {kept, orphan, slow_orphan}  # the other instance died
        claims.run(switches)
        wait_until(lambda: all(sw.role_settled and sw.ready for sw in switches), 5, "the new claims and reads")
        claimed = [(dpid, gen) for dpid, kind, gen in log if kind == "master"]
        assert claimed[:2] in ([(orphan, 9), (slow_orphan, 9)], [(slow_orphan, 9), (orphan, 9)]), log
        assert claimed[2:] == [(kept, 9)], log  # the bridge we kept: its new generation after the orphans'
        first_read = next(i for i, (dpid, kind, _) in enumerate(log) if dpid == orphan and kind != "master")
        assert first_read > log.index((slow_orphan, "granted", 9)), f"read before every orphan was claimed: {log}"
    finally:
        for sw in switches:
            sw.stop()


class FailingSource(FakeSource):
    """A flow source whose compile fails while ``failing``: the switch's sync fails and it backs off."""

    failing = True

    def desired(self, hv_name: str):
        if self.failing:
            raise RuntimeError("compile failed (the test says so)")
        return super().desired(hv_name)


def test_a_new_role_is_claimed_at_once_even_during_a_backoff(monkeypatch) -> None:
    # Found by the scale_out bench: orphaned bridges granted the survivor master tens of seconds
    # after the kill; a worker waiting out a backoff (up to RETRY_CAP) heard no change of role.
    monkeypatch.setattr("controller.switch.RETRY_BASE", 20.0)  # the first retry in 10-20 s
    dp, source, roles = RoleDatapath(0x5B), FailingSource("roles-hv", flows(3)), Roles(Role(True, 5))
    sw = Switch(dp, source, lambda s, ports: setattr(s, "ofports", ports), roles=roles)
    dp.sw = sw
    sw.start("roles-hv")
    try:
        wait_until(lambda: sw.diverged, 5, "the failed sync")  # now in its backoff
        roles.role = Role(False, 9)  # a newer view gives the bridge to another instance
        sw.mark_dirty()
        wait_until(lambda: "slave" in dp.sent, 2, f"the slave declaration during the backoff: {dp.sent}")
        source.failing = False
        roles.role = Role(True, 12)  # and back to us: claimed at once, then synced
        sw.mark_dirty()
        wait_until(lambda: dp.sent.count("master") == 2, 2, f"the claim: {dp.sent}")
        wait_until(lambda: len(dp.flows) == 3, 5, "the sync after the claim")
    finally:
        sw.stop()
