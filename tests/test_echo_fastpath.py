"""Echo requests are answered however busy the controller is (controller/connection.py).

The unit tests check the stream splitting and the socket wrapper on a socketpair. The
probe tests (tests/echo_probe.py, in a subprocess: os-ken's AppManager is one per
process) run the real controller with its app's event thread stuck in a handler and
the switch's events piling up behind it: a fake OpenFlow switch over TCP and over the
unix socket (no root needed), and a real OVS bridge with a short inactivity probe. Each
probe also runs with os-ken's own connection handling (``--stock``), which must fail
the same check: the tests would catch the fast path going missing.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from controller.connection import EchoSplitter, FastEchoSocket, echo_reply
from tests.lab_fixtures import host_ovs_problem, unless_able

HEADER = struct.Struct("!BBHI")
PROBE = Path(__file__).with_name("echo_probe.py")


def msg(msg_type: int, xid: int, body: bytes = b"", length: int | None = None) -> bytes:
    """An OpenFlow 1.3 message (``length`` overrides the header's length field)."""
    return HEADER.pack(4, msg_type, 8 + len(body) if length is None else length, xid) + body


def test_splitter_takes_out_echo_requests_and_passes_the_rest_unchanged_at_any_split() -> None:
    rng = random.Random(7)
    others = [msg(10, i, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))) for i in range(60)]
    echoes = [msg(2, 1000 + i, b"x" * rng.randrange(0, 40)) for i in range(20)]
    stream_msgs = others + echoes
    rng.shuffle(stream_msgs)
    stream = b"".join(stream_msgs)
    expected_rest = b"".join(m for m in stream_msgs if m[1] != 2)
    expected_replies = [echo_reply(m) for m in stream_msgs if m[1] == 2]
    for trial in range(30):
        splitter, rest, replies, i = EchoSplitter(), b"", [], 0
        while i < len(stream):
            step = rng.choice([1, 2, 3, 7, 8, 9, 64, 1000]) if trial else len(stream)
            out, rep = splitter.feed(stream[i:i + step])
            rest += out
            replies += rep
            i += step
        assert rest == expected_rest and replies == expected_replies


def test_echo_reply_keeps_version_xid_and_data() -> None:
    assert echo_reply(msg(2, 0xDEADBEEF, b"hello")) == msg(3, 0xDEADBEEF, b"hello")
    assert echo_reply(HEADER.pack(1, 2, 8, 5)) == HEADER.pack(1, 3, 8, 5)


def test_splitter_counts_a_too_short_length_as_a_header_like_os_ken() -> None:
    out, replies = EchoSplitter().feed(msg(10, 1, length=0) + msg(2, 2, length=4) + msg(21, 3))
    assert out == msg(10, 1, length=0) + msg(21, 3) and replies == [HEADER.pack(4, 3, 4, 2)]


def test_socket_answers_echoes_itself_and_hands_over_everything_else() -> None:
    ours, switch = socket.socketpair()
    wrapped = FastEchoSocket(ours, unix=True)
    try:
        wrapped.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # ignored on a unix socket
        wrapped.settimeout(0.2)
        switch.sendall(msg(10, 1, b"pkt") + msg(2, 2, b"ping") + msg(21, 3))
        switch.settimeout(2)
        assert switch.recv(100) == msg(3, 2, b"ping"), "answered by the reader thread, nobody called recv"
        got = b""
        while len(got) < len(msg(10, 1, b"pkt") + msg(21, 3)):
            got += wrapped.recv(8)
        assert got == msg(10, 1, b"pkt") + msg(21, 3)
        with pytest.raises(TimeoutError):
            wrapped.recv(8)  # os-ken's receive loop takes a timeout and goes round again
        wrapped.sendall(msg(5, 9))
        assert switch.recv(100) == msg(5, 9)
        assert wrapped.echo_replies == 1
        switch.close()
        deadline = time.monotonic() + 2
        while wrapped.recv(8) != b"":
            assert time.monotonic() < deadline
    finally:
        wrapped.close()
        switch.close()
    assert wrapped.fileno() == -1, "the real socket is closed"


def test_socket_answers_echoes_while_nobody_reads_and_its_buffer_is_full() -> None:
    """os-ken's receive loop blocked (a full app queue): echoes still come back; the rest waits, bounded."""
    ours, switch = socket.socketpair()
    wrapped = FastEchoSocket(ours, unix=True, max_buffered=4096)
    try:
        bulk = b"".join(msg(10, i, b"y" * 200) for i in range(100))  # 20 KB nobody reads
        threading.Thread(target=switch.sendall, args=(bulk,), daemon=True).start()
        time.sleep(0.2)
        # the reader holds ~4 KB and waits; the kernel buffers hold some more; the echo is behind them
        switch.settimeout(3)
        got = b""
        started = time.monotonic()

        def drain() -> None:  # os-ken's loop wakes up later and reads everything
            time.sleep(0.3)
            n = 0
            while n < len(bulk):
                n += len(wrapped.recv(65536))

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        switch.sendall(msg(2, 77, b"late"))
        got = switch.recv(100)
        assert got == msg(3, 77, b"late") and time.monotonic() - started < 2
        reader.join(3)
        assert not reader.is_alive()
    finally:
        wrapped.close()
        switch.close()


def test_tcp_switch_sockets_have_keepalive() -> None:
    """We send switches no echo requests: a switch whose host vanished is found by TCP keepalive."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        wrapped = FastEchoSocket(conn)
        try:
            assert wrapped.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert wrapped.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert wrapped.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        finally:
            wrapped.close()
            client.close()


def run_probe(*args: str, timeout: float = 120) -> dict:
    """Run tests/echo_probe.py with ``args``; its JSON result."""
    proc = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=PROBE.parent.parent)
    assert proc.returncode == 0, f"probe failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_stuck_app_does_not_delay_echo_replies_fake_switch(tmp_path: Path) -> None:
    r = run_probe("fake", str(tmp_path))
    # The app was stuck (not one of the 401 packet-ins handled) and both switches had their answer at once.
    assert r["handled_when_answered"] == 0
    assert all(lat is not None and lat < 0.5 for lat in r["echo_latency"].values()), r["echo_latency"]
    assert set(r["echo_latency"]) == {"e1", "e2"}, "TCP and unix socket"
    # Nothing lost or reordered on the way: every packet-in reached the app once released.
    assert r["handled_after_release"] == 401 and r["echo_latency_after"] < 0.5
    # A disconnect is reported (DEAD_DISPATCHER), counted once per switch, and its worker ends.
    assert r["workers_ended"] is True and r["disconnects"] == {"e1": 1.0, "e2": 1.0}


def test_the_fake_switch_probe_catches_os_ken_s_own_echo_handling(tmp_path: Path) -> None:
    r = run_probe("fake", str(tmp_path), "--stock")
    assert r["handled_when_answered"] == 0 and r["echo_latency"] == {"e1": None}


@pytest.mark.ovs
@pytest.mark.slow
@pytest.mark.parametrize("stock", [False, True], ids=["fast-path", "stock-os-ken"])
def test_a_stuck_app_keeps_a_real_ovs_bridge_connected(tmp_path: Path, stock: bool) -> None:
    """inactivity_probe=1000 (OVS makes it 5 s): the app stuck 13 s; OVS must not drop us (and does with stock)."""
    unless_able(host_ovs_problem(), "real-OVS test")
    bridge = f"tfecho{uuid.uuid4().hex[:6]}"
    r = run_probe("ovs", str(tmp_path), "--bridge", bridge, *(["--stock"] if stock else []))
    assert r["inactivity_probe"] == "1000"
    dropped = [line for line in r["ovs_log"] if "inactivity probe" in line]
    if stock:
        assert dropped and r["reconnected"] and r["disconnects"] >= 1, r
    else:
        assert not dropped and not r["reconnected"] and r["disconnects"] == 0, r
        assert r["fast_path_echo_replies"] >= 1, "OVS probed and the reader thread answered"
    assert bridge not in subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout.split()


def test_splitter_hands_claimed_messages_whole_to_the_handler_at_any_split() -> None:
    rng = random.Random(11)

    def part(xid: int, more: bool, size: int) -> bytes:
        return msg(19, xid, struct.pack("!HH4x", 1, 1 if more else 0) + bytes(rng.randrange(256) for _ in range(size)))
    claimed_msgs = [part(500, True, 300), part(500, True, 0), msg(21, 502), part(500, False, 77)]
    after = part(500, False, 5)  # same xid after the last part: no longer claimed
    others = [msg(10, i, b"y" * rng.randrange(0, 200)) for i in range(10)] + [part(501, False, 20), msg(10, 0)]
    stream_msgs = [others[0], msg(2, 9, b"e"), claimed_msgs[0], others[1], claimed_msgs[1], *others[2:6],
                   claimed_msgs[2], claimed_msgs[3], after, *others[6:]]
    stream = b"".join(stream_msgs)
    for trial in range(30):
        got: list[bytes] = []
        claimed = {500, 502, 0}  # xid 0 (asynchronous messages) is never claimed

        def handler(m: bytes, got=got, claimed=claimed) -> None:
            got.append(m)
            if m[1] != 19 or not m[11] & 1:  # the reply's last part ends the claim
                claimed.discard(HEADER.unpack_from(m)[3])

        splitter, rest, replies, i = EchoSplitter(), b"", [], 0
        splitter.intercept(claimed.__contains__, handler)
        while i < len(stream):
            step = rng.choice([1, 2, 5, 8, 13, 100, 4096]) if trial else len(stream)
            out, rep = splitter.feed(stream[i:i + step])
            rest += out
            replies += rep
            i += step
        assert got == claimed_msgs
        assert rest == b"".join(m for m in stream_msgs if m not in claimed_msgs and m[1] != 2)
        assert replies == [echo_reply(msg(2, 9, b"e"))] and claimed == {0}


def test_a_failing_handler_loses_nothing_else() -> None:
    def broken(_: bytes) -> None:
        raise RuntimeError("bug")
    splitter = EchoSplitter()
    splitter.intercept(lambda xid: xid == 3, broken)
    out, replies = splitter.feed(msg(19, 3, struct.pack("!HH4x", 1, 0)) + msg(10, 4) + msg(2, 5))
    assert out == msg(10, 4) and replies == [echo_reply(msg(2, 5))]


def test_a_worker_writes_itself_only_when_nothing_waits_before_it() -> None:
    """write_through: written at once by the caller when the send queue is idle (no send thread runs here);
    refused (None: queue it) while anything queued waits, and for a big write; False once the switch is gone."""
    from controller.connection import WRITE_THROUGH_MAX, TenantflowDatapath

    ours, switch = socket.socketpair()
    dp = TenantflowDatapath(ours, ("unix", 0), unix=True)  # never served: nothing drains its queue
    try:
        switch.settimeout(3)
        assert dp.write_through(msg(20, 1)) is True
        assert switch.recv(100) == msg(20, 1)
        assert dp.write_through(b"x" * (WRITE_THROUGH_MAX + 1)) is None
        assert dp.send(msg(20, 2))  # queued: a later write must not overtake it
        assert dp.write_through(msg(20, 3)) is None and dp.out.queued == len(msg(20, 2))
        item = dp.out.get()
        assert item is not None
        dp.out.written(len(item[0]))
        switch.close()
        assert [dp.write_through(msg(20, 4)) for _ in range(2)] == [False, False] and dp.out.closed
    finally:
        dp.socket.close()
