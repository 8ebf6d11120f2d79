"""A fake OpenFlow 1.3 switch over a real socket, for controller tests that need no Open vSwitch.

It speaks just enough of the protocol for os-ken to take it through the handshake
(HELLO, FEATURES_REPLY, an empty port description) and for :mod:`controller.switch`
to read it (a flow dump, barrier and bundle replies, the flow monitor's empty reply), and
lets a test send what a switch sends unprompted: echo requests (their replies are timed)
and packet-ins. Given a ``bridge`` (a Counter of cookies), it keeps flows as OVS does across
its connections: a committed bundle's adds and deletes by cookie apply to it, and a flow
dump lists it. ``stop_reading()`` makes it stop reading its socket (a stalled switch).
Nothing here is the controller's code: every byte is packed by hand.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter

OFP13 = 0x04
HELLO, ECHO_REQUEST, ECHO_REPLY, EXPERIMENTER, FEATURES_REQUEST, FEATURES_REPLY = 0, 2, 3, 4, 5, 6
PACKET_IN, MULTIPART_REQUEST, MULTIPART_REPLY, BARRIER_REQUEST, BARRIER_REPLY = 10, 18, 19, 20, 21
ONF_EXPERIMENTER_ID = 0x4F4E4600
ONF_ET_BUNDLE_CONTROL = 2300
HEADER = struct.Struct("!BBHI")
ONF_ET_BUNDLE_ADD = 2301
ONF_FLOW_MONITOR = 1870
BUNDLE_COMMIT, BUNDLE_DISCARD = 4, 6
FLOW_DELETE = 3
FLOW_STATS = struct.Struct("!HBxIIHHHH4xQQQ")  # an ofp_flow_stats entry without its match (the cookie at byte 24)
EMPTY_MATCH = struct.pack("!HH4x", 1, 4)


def message(msg_type: int, xid: int, body: bytes = b"") -> bytes:
    """One OpenFlow 1.3 message."""
    return HEADER.pack(OFP13, msg_type, 8 + len(body), xid) + body


def packet_in(xid: int, data: bytes = b"\xff" * 60) -> bytes:
    """An OFPT_PACKET_IN from table 0 with an empty match."""
    body = struct.pack("!IHBBQ", 0xFFFFFFFF, len(data), 0, 0, 0) + struct.pack("!HH4x", 1, 4) + b"\0\0" + data
    return message(PACKET_IN, xid, body)


class FakeSwitch:
    """One connection to a controller, answered by a reader thread."""

    def __init__(self, address, dpid: int, *, connect_timeout: float = 5.0, bridge: Counter | None = None,
                 rcvbuf: int | None = None):
        self.sock = self._connect(address, connect_timeout, rcvbuf)
        self.dpid = dpid
        self.bridge = bridge if bridge is not None else Counter()  # cookie -> flows, kept across connections
        self._bundles: dict[int, list[tuple[int, int]]] = {}
        self._reading = threading.Event()
        self._reading.set()
        self.closed = threading.Event()
        self.features_sent = threading.Event()
        self.flow_dumps = 0
        self.echo_replies: dict[int, float] = {}  # xid -> monotonic time the reply arrived
        self._echo_cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, name=f"fake-switch-{dpid:x}", daemon=True)
        self.send(message(HELLO, 1))
        self._reader.start()

    @staticmethod
    def _connect(address, timeout: float, rcvbuf: int | None = None) -> socket.socket:
        """Connect, retrying while the controller's listener is not up yet."""
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            if rcvbuf:  # before connecting: the window the controller may fill while we do not read
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
                sock.settimeout(None)
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- what the test does ------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Write raw bytes to the controller."""
        with self._send_lock:
            self.sock.sendall(data)

    def echo(self, xid: int, payload: bytes = b"probe") -> float:
        """Send an echo request; return when it was sent (monotonic)."""
        sent = time.monotonic()
        self.send(message(ECHO_REQUEST, xid, payload))
        return sent

    def wait_echo_reply(self, xid: int, timeout: float) -> float | None:
        """Monotonic time the reply to ``xid`` arrived, or None if none came within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._echo_cond:
            while xid not in self.echo_replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed.is_set():
                    return self.echo_replies.get(xid)
                self._echo_cond.wait(left)
            return self.echo_replies[xid]

    def stop_reading(self) -> None:
        """Stop reading the socket (a hung switch): what the controller writes piles up in the kernel buffers."""
        self._reading.clear()

    def close(self) -> None:
        """Disconnect."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(5)

    # -- what the switch answers ---------------------------------------------------
    def _read_loop(self) -> None:
        buf = bytearray()
        try:
            while True:
                self._reading.wait()
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 8:
                    _, msg_type, length, xid = HEADER.unpack_from(buf)
                    if len(buf) < length:
                        break
                    body = bytes(buf[8:length])
                    del buf[:length]
                    self._answer(msg_type, xid, body)
        except OSError:
            pass
        finally:
            self.closed.set()
            with self._echo_cond:
                self._echo_cond.notify_all()

    def _answer(self, msg_type: int, xid: int, body: bytes) -> None:
        if msg_type == FEATURES_REQUEST:
            self.send(message(FEATURES_REPLY, xid, struct.pack("!QIBB2xII", self.dpid, 0, 254, 0, 0, 0)))
            self.features_sent.set()
        elif msg_type == MULTIPART_REQUEST:
            (mp_type,) = struct.unpack_from("!H", body)
            if mp_type == 1:
                self.flow_dumps += 1
                self._flow_dump(xid)
            elif mp_type == 0xFFFF:  # an experimenter multipart: the flow monitor's request, answered empty
                self.send(message(MULTIPART_REPLY, xid, struct.pack("!HH4xII", mp_type, 0, ONF_EXPERIMENTER_ID,
                                                                    ONF_FLOW_MONITOR)))
            else:
                self.send(message(MULTIPART_REPLY, xid, struct.pack("!HH4x", mp_type, 0)))
        elif msg_type == BARRIER_REQUEST:
            self.send(message(BARRIER_REPLY, xid))
        elif msg_type == ECHO_REQUEST:
            self.send(message(ECHO_REPLY, xid, body))
        elif msg_type == ECHO_REPLY:
            with self._echo_cond:
                self.echo_replies[xid] = time.monotonic()
                self._echo_cond.notify_all()
        elif msg_type == EXPERIMENTER and len(body) >= 16:
            exp_id, exp_type, bundle_id, ctrl_type, flags = struct.unpack_from("!IIIHH", body)
            if exp_id == ONF_EXPERIMENTER_ID and exp_type == ONF_ET_BUNDLE_ADD and len(body) >= 42:
                cookie, _, _, command = struct.unpack_from("!QQBB", body, 24)  # the inner flow-mod's
                self._bundles.setdefault(bundle_id, []).append((command, cookie))
            elif exp_id == ONF_EXPERIMENTER_ID and exp_type == ONF_ET_BUNDLE_CONTROL:
                ops = self._bundles.pop(bundle_id, [])
                if ctrl_type == BUNDLE_COMMIT:
                    for command, cookie in ops:
                        if command == FLOW_DELETE:
                            self.bridge.pop(cookie, None)
                        else:
                            self.bridge[cookie] = 1
                self.send(message(EXPERIMENTER, xid, struct.pack("!IIIHH", exp_id, exp_type, bundle_id,
                                                                 ctrl_type + 1, flags)))

    def _flow_dump(self, xid: int) -> None:
        """The bridge's flows, as a flow dump lists them (cookies only matter here), 100 a part."""
        entries = [FLOW_STATS.pack(FLOW_STATS.size + 8, 0, 0, 0, 0, 0, 0, 0, c, 0, 0) + EMPTY_MATCH
                   for c, n in list(self.bridge.items()) for _ in range(n)]
        for at in range(0, max(len(entries), 1), 100):
            more = 1 if at + 100 < len(entries) else 0
            self.send(message(MULTIPART_REPLY, xid, struct.pack("!HH4x", 1, more) + b"".join(entries[at:at + 100])))
