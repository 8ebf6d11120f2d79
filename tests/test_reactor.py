"""Switch connections read by a reactor (controller/reactor.py): one connection never holds up the others.

On socketpairs, with a reactor of the test's own: a switch that stops reading while its
echo replies pile up leaves the reactor free to answer another switch (and is itself read
no further until it reads: its replies wait, bounded); an echo reply never
lands inside a buffer another thread is writing; a closed connection's descriptor number,
reused by the next one, is served as the new connection's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time

from controller.connection import MAX_BACKLOG, RECV_SIZE, FastEchoSocket
from controller.reactor import Reactor

HEADER = struct.Struct("!BBHI")


def msg(msg_type: int, xid: int, body: bytes = b"") -> bytes:
    """An OpenFlow 1.3 message."""
    return HEADER.pack(4, msg_type, 8 + len(body), xid) + body


def read_messages(sock: socket.socket, count: int, timeout: float = 3.0) -> list[bytes]:
    """``count`` whole OpenFlow messages from ``sock`` (AssertionError if they do not come in time)."""
    sock.settimeout(timeout)
    buf, out = b"", []
    while len(out) < count:
        while len(buf) >= 8 and len(buf) >= (length := HEADER.unpack_from(buf)[2]):
            out.append(buf[:length])
            buf = buf[length:]
        if len(out) >= count:
            break
        data = sock.recv(65536)
        assert data, "connection closed"
        buf += data
    return out


def test_a_switch_that_reads_nothing_does_not_hold_up_another_on_the_same_reactor() -> None:
    reactor = Reactor("test-reactor")
    ours_a, stuck = socket.socketpair()
    ours_b, live = socket.socketpair()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a = FastEchoSocket(ours_a, unix=True, served_by=reactor)
    b = FastEchoSocket(ours_b, unix=True, served_by=reactor)
    try:
        # 200 echo requests of 60 KB: 12 MB of replies the stuck switch does not read (its buffers hold far less)
        ping = msg(2, 1, b"z" * 60000)
        sender = threading.Thread(target=lambda: [stuck.sendall(ping) for _ in range(200)], daemon=True)
        sender.start()
        deadline = time.monotonic() + 5
        while not a._choked and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        # its replies wait, bounded, and its requests wait in TCP: the reactor wrote what the socket took and
        # stopped reading it
        assert a._choked and sender.is_alive() and 0 < a.echo_replies < 200
        assert a._backlog_bytes() < MAX_BACKLOG + RECV_SIZE
        started = time.monotonic()
        live.sendall(msg(2, 42, b"ping"))
        assert read_messages(live, 1) == [msg(3, 42, b"ping")]
        assert time.monotonic() - started < 1.0
        # once the stuck switch reads, every reply it was owed arrives, whole and in order
        got = read_messages(stuck, 200, timeout=10)
        assert got == [msg(3, 1, b"z" * 60000)] * 200
        sender.join(5)
        deadline = time.monotonic() + 2
        while a._choked and time.monotonic() < deadline:  # (read again once its last replies went out)
            time.sleep(0.01)
        assert not sender.is_alive() and a.echo_replies == 200 and not a._choked
    finally:
        for s in (a, b, stuck, live):
            s.close()


def test_an_echo_reply_lands_between_whole_buffers_of_another_writer() -> None:
    ours, switch = socket.socketpair()
    wrapped = FastEchoSocket(ours, unix=True, served_by=Reactor("test-reactor"))
    chunk = b"".join(msg(10, i, b"c" * 500) for i in range(2000))  # 1 MB in one write, as a bundle's chunk
    try:
        writer = threading.Thread(target=lambda: [wrapped.sendall(chunk) for _ in range(3)], daemon=True)
        writer.start()
        for i in range(20):
            switch.sendall(msg(2, 900 + i))
        got = read_messages(switch, 3 * 2000 + 20, timeout=10)
        writer.join(5)
        replies = [i for i, m in enumerate(got) if m[1] == 3]
        assert [got[i] for i in replies] == [msg(3, 900 + i) for i in range(20)]
        others = [m for m in got if m[1] != 3]
        assert b"".join(others) == chunk * 3
        # a reply is never inside a chunk: before, between or after the three
        bounds = {0, 2000, 4000, 6000}
        assert all(i - n in bounds for n, i in enumerate(replies)), replies
    finally:
        wrapped.close()
        switch.close()


def test_a_closed_connections_descriptor_is_the_next_ones_to_serve() -> None:
    reactor = Reactor("test-reactor")
    for round_ in range(20):
        ours, switch = socket.socketpair()
        wrapped = FastEchoSocket(ours, unix=True, served_by=reactor)
        try:
            switch.sendall(msg(2, round_, b"hi"))
            assert read_messages(switch, 1) == [msg(3, round_, b"hi")]
        finally:
            wrapped.close()
            switch.close()
        assert wrapped.fileno() == -1
    assert not reactor._conns, "every closed connection left the reactor"


def _thread_cpu_s(native_id: int) -> float:
    """CPU seconds one thread of this process has used (``/proc``, in clock ticks)."""
    with open(f"/proc/self/task/{native_id}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_reactor_does_not_spin_while_another_thread_holds_the_write_lock() -> None:
    """A backlog waiting for a full socket, then another thread writing (its lock held) as the socket empties: the
    reactor leaves the backlog to that thread instead of being told "writable" at every turn (a busy loop that
    took the cold start of 1,000 bridges from 24 to 61 s of CPU)."""
    reactor = Reactor("test-reactor")
    ours, switch = socket.socketpair()
    switch.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    wrapped = FastEchoSocket(ours, unix=True, served_by=reactor)
    try:
        data = bytes(range(256)) * 8192  # 2 MB: more than the socket's buffers hold
        wrapped._write_soon(data)  # (from this thread: written until the socket is full, the rest waits)
        assert wrapped._backlog, "the socket took all of it"
        with wrapped._send_lock:  # another writer, mid-write
            switch.settimeout(0.2)
            got = b""
            with contextlib.suppress(TimeoutError):  # the switch reads what came: the socket takes more again
                while True:
                    got += switch.recv(65536)
            switch.settimeout(2)
            cpu0 = _thread_cpu_s(reactor._thread.native_id)
            time.sleep(0.5)
            spent = _thread_cpu_s(reactor._thread.native_id) - cpu0
        assert spent < 0.1, f"the reactor used {spent:.2f} s of CPU in 0.5 s while the lock was held"
        wrapped._flush_nowait()  # what that writer does once it lets go of the lock (sendall)
        while len(got) < len(data):
            got += switch.recv(65536)
        assert got == data
    finally:
        wrapped.close()
        switch.close()
