"""A real Open vSwitch bridge as :class:`controller.switch.Switch`'s datapath, without os-ken's controller loop.

os-ken's ``AppManager`` is one per process (the probes of ``test_echo_fastpath`` and
``test_e2e_restart`` run it in a subprocess for that); a test that only needs the sync
engine against a real switch connects to the bridge's management socket
(``<rundir>/<bridge>.mgmt``, what ``ovs-ofctl`` uses), says HELLO and asks for the
features itself, and then hands the socket to the controller's own connection code
(:class:`controller.connection.FastEchoSocket`), which passes the switch's replies to
the :class:`~controller.switch.Switch` exactly as in the controller. Everything else the
switch sends (port status...) is read and dropped.

It records the kind of every message the switch is sent, in order (:attr:`OvsDatapath.sent`),
so a test can check what a sync sent and in which order.
"""

from __future__ import annotations

import socket
import struct
import threading

from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp

from controller.connection import FastEchoSocket

HEADER = struct.Struct("!BBHI")
RUNDIR = "/var/run/openvswitch"
_BUNDLE_INNER = 24  # an ONF bundle-add's inner message starts here
_FLOW_MOD_COMMAND = 8 + 17  # a flow-mod's command byte: after header, cookie, cookie mask, table


class OvsDatapath(ofproto_protocol.ProtocolDesc):
    """One OpenFlow 1.3 connection to a bridge of the host's Open vSwitch, as a Switch's ``dp``."""

    def __init__(self, bridge: str, rundir: str = RUNDIR) -> None:
        super().__init__(ofp.OFP_VERSION)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(f"{rundir}/{bridge}.mgmt")
        self.id = _handshake(sock)
        self.socket = FastEchoSocket(sock, unix=True)
        self.sent: list[str] = []  # every message sent, by kind (see _kind), in order
        self._drain = threading.Thread(target=self._drain_loop, name=f"drain-{bridge}", daemon=True)
        self._drain.start()

    def send(self, data: bytes) -> bool:
        """Write raw messages (controller.wire's); False once the connection is gone."""
        self.sent += _kinds(data)
        try:
            self.socket.sendall(data)
        except OSError:
            return False
        return True

    def send_msg(self, msg) -> bool:
        """Write an os-ken message (the port description and flow dump requests)."""
        msg.serialize()
        return self.send(bytes(msg.buf))

    def close(self) -> None:
        """End the connection (the switch stays as it is)."""
        self.socket.close()

    def kinds(self, *wanted: str) -> list[str]:
        """The kinds of the messages sent so far that are among ``wanted``, in order."""
        return [k for k in self.sent if k in wanted]

    def _drain_loop(self) -> None:
        while self.socket.recv(1 << 16):  # what no Switch claimed: read and dropped, so the reader never waits
            pass


def _handshake(sock: socket.socket) -> int:
    """HELLO both ways, then FEATURES_REQUEST: the bridge's datapath id."""
    sock.sendall(HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_HELLO, 8, 1))
    sock.sendall(HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_FEATURES_REQUEST, 8, 2))
    while True:
        head = _read_exactly(sock, HEADER.size)
        _, msg_type, length, _ = HEADER.unpack(head)
        body = _read_exactly(sock, length - HEADER.size)
        if msg_type == ofp.OFPT_FEATURES_REPLY:
            return struct.unpack_from("!Q", body)[0]
        if msg_type == ofp.OFPT_ERROR:
            raise ConnectionError(f"switch refused the handshake: {body.hex()}")


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("switch closed the connection during the handshake")
        data += chunk
    return data


def _kinds(data: bytes) -> list[str]:
    """The kind of each message in ``data``: group_add, group_delete, meter_add, meter_delete, flow_add, flow_delete,
    bundle_open,
    bundle_commit, bundle_discard, barrier, multipart:<type>, or the OpenFlow type number."""
    out = []
    at = 0
    while at + HEADER.size <= len(data):
        _, msg_type, length, _ = HEADER.unpack_from(data, at)
        out.append(_kind(data[at:at + length]))
        at += max(length, HEADER.size)
    return out


_GROUP_COMMANDS = {ofp.OFPGC_ADD: "group_add", ofp.OFPGC_DELETE: "group_delete", ofp.OFPGC_MODIFY: "group_modify"}
_METER_COMMANDS = {ofp.OFPMC_ADD: "meter_add", ofp.OFPMC_DELETE: "meter_delete", ofp.OFPMC_MODIFY: "meter_modify"}
_BUNDLE_CTRL = {ofp.ONF_BCT_OPEN_REQUEST: "bundle_open", ofp.ONF_BCT_COMMIT_REQUEST: "bundle_commit",
                ofp.ONF_BCT_DISCARD_REQUEST: "bundle_discard"}


def _kind(msg: bytes) -> str:
    msg_type = msg[1]
    if msg_type == ofp.OFPT_GROUP_MOD:
        return _GROUP_COMMANDS.get(struct.unpack_from("!H", msg, 8)[0], "group_mod")
    if msg_type == ofp.OFPT_METER_MOD:
        return _METER_COMMANDS.get(struct.unpack_from("!H", msg, 8)[0], "meter_mod")
    if msg_type == ofp.OFPT_BARRIER_REQUEST:
        return "barrier"
    if msg_type == ofp.OFPT_MULTIPART_REQUEST:
        return f"multipart:{struct.unpack_from('!H', msg, 8)[0]}"
    if msg_type == ofp.OFPT_EXPERIMENTER:
        exp_type = struct.unpack_from("!I", msg, 12)[0]
        if exp_type == ofp.ONF_ET_BUNDLE_ADD_MESSAGE:
            command = msg[_BUNDLE_INNER + _FLOW_MOD_COMMAND]
            return "flow_delete" if command in (ofp.OFPFC_DELETE, ofp.OFPFC_DELETE_STRICT) else "flow_add"
        return _BUNDLE_CTRL.get(struct.unpack_from("!H", msg, 20)[0], "bundle_ctrl")
    return str(msg_type)
