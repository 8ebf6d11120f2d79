"""A few threads reading every switch connection: echo requests answered and replies handed over, never blocking.

Each switch connection used to have its own reader thread (controller.connection), which woke
for every message the switch sent: at 1,000 bridges, a change to 40 of them woke 40 readers
two or three times (the barrier, the commit's reply, the flow monitor's update), each wake a
wait for the interpreter among 4,000 threads. A :class:`Reactor` reads many connections from
one thread with ``epoll`` (:mod:`selectors`): one wake serves every connection that has
something to read, in one pass.

What runs on a reactor must never block, or every connection it serves stops being read
(and their echo requests unanswered): reads and writes are ``os.read``/``os.write`` on the
non-blocking descriptor (a Python socket with a timeout would first wait for it); what cannot
be written at once waits in the connection's backlog and the reactor writes it when the
socket takes more (``want_write``). A connection is added and removed through the reactor's
own thread (``add``, ``remove`` wait for it), so a descriptor is never closed while registered
and a number reused by the next connection never reaches the old one's handler.

TLS connections keep their own reader thread: what an ``ssl.SSLSocket`` holds decrypted is not
seen by ``epoll``.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

LOG = logging.getLogger("tenantflow.connection")

REACTORS = 2  # reactor threads; connections are spread over them in turn
READ_BUFFER = 256 * 1024  # bytes one read of one connection takes at most
OP_WAIT = 5.0  # seconds add() and remove() wait for the reactor's thread to take them


class Served(Protocol):
    """What a reactor serves: a connection that reads and writes when told, without blocking."""

    fd: int  # the descriptor served (kept by the connection: its socket's fileno() is -1 once closed)

    def on_readable(self) -> None: ...
    def on_writable(self) -> None: ...


class Reactor:
    """One thread serving many connections: each ``on_readable``/``on_writable`` called when its socket is ready."""

    def __init__(self, name: str = "of-reactor") -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ops: deque[Callable[[], None]] = deque()
        self._interest: dict[int, int] = {}  # fd -> events registered (0: not registered)
        self._wanted: dict[int, tuple[bool, bool]] = {}  # fd -> (read, write) wanted
        self._conns: dict[int, Served] = {}  # fd -> the connection served on it
        # What each read lands in (one allocation per reactor: os.read(fd, 256 KB) allocated and shrank a
        # 256 KB object per read, 14 us of CPU each, measured, for an 8-byte echo request).
        self.buffer = bytearray(READ_BUFFER)
        self.view = memoryview(self.buffer)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def on_thread(self) -> bool:
        """Whether the caller is this reactor's thread."""
        return threading.current_thread() is self._thread

    def add(self, conn: Served) -> None:
        """Start reading ``conn`` (returns once the reactor has registered it)."""
        self._call(lambda: self._register(conn))

    def remove(self, conn: Served) -> None:
        """Stop serving ``conn``; once this returns its descriptor may be closed."""
        self._call(lambda: self._unregister(conn))

    def want(self, conn: Served, read: bool | None = None, write: bool | None = None) -> None:
        """Change what ``conn`` waits for (None: unchanged); from any thread, applied by the reactor."""
        if self.on_thread:
            self._set_interest(conn, read, write)
        else:
            self._post(lambda: self._set_interest(conn, read, write))

    # -- any thread ------------------------------------------------------------------
    def _call(self, op: Callable[[], None]) -> None:
        if self.on_thread:
            op()
            return
        done = threading.Event()

        def run() -> None:
            try:
                op()
            finally:
                done.set()

        self._post(run)
        if not done.wait(OP_WAIT):
            LOG.error("reactor %s did not take an operation within %g s", self._thread.name, OP_WAIT)

    def _post(self, op: Callable[[], None]) -> None:
        self._ops.append(op)
        with contextlib.suppress(BlockingIOError, InterruptedError):  # (full: a wake is pending anyway)
            self._wake_w.send(b"\0")

    # -- the reactor's thread -------------------------------------------------------------
    def _register(self, conn: Served) -> None:
        fd = conn.fd
        if self._interest.pop(fd, 0):  # a connection never removed (a bug): the descriptor is the new one's now
            LOG.error("reactor %s: descriptor %d registered twice", self._thread.name, fd)
            self._selector.unregister(fd)
        self._wanted[fd] = (True, False)
        self._interest[fd] = 0
        self._conns[fd] = conn
        self._apply(fd, conn)

    def _unregister(self, conn: Served) -> None:
        fd = conn.fd
        if self._conns.get(fd) is not conn:
            return  # removed already
        if self._interest.pop(fd):
            self._selector.unregister(fd)
        del self._wanted[fd], self._conns[fd]

    def _set_interest(self, conn: Served, read: bool | None, write: bool | None) -> None:
        fd = conn.fd
        if self._conns.get(fd) is not conn:
            return  # removed meanwhile (its descriptor maybe another connection's by now)
        was_read, was_write = self._wanted[fd]
        self._wanted[fd] = (was_read if read is None else read, was_write if write is None else write)
        self._apply(fd, conn)

    def _apply(self, fd: int, conn: Served) -> None:
        read, write = self._wanted[fd]
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        old = self._interest[fd]
        if events == old:
            return
        if not old:
            self._selector.register(fd, events, conn)
        elif not events:
            self._selector.unregister(fd)
        else:
            self._selector.modify(fd, events, conn)
        self._interest[fd] = events

    def _loop(self) -> None:
        while True:
            try:
                ready = self._selector.select()
            except (OSError, ValueError):  # (a descriptor gone under us: only ever between ops)
                LOG.exception("reactor %s: select failed", self._thread.name)
                continue
            for key, events in ready:
                conn = key.data
                if conn is None:
                    self._drain_wakes()
                    continue
                if self._conns.get(key.fd) is not conn:  # removed while this pass served another
                    continue
                self._serve(conn, events)
            while self._ops:
                self._ops.popleft()()

    def _serve(self, conn: Served, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                conn.on_writable()
            if events & selectors.EVENT_READ:
                conn.on_readable()
        except Exception:  # a connection's bug must not stop the others' reading
            LOG.exception("reactor %s: serving a connection failed", self._thread.name)

    def _drain_wakes(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(4096):
                pass


_REACTORS: list[Reactor] = []
_NEXT = [0]
_LOCK = threading.Lock()


def next_reactor() -> Reactor:
    """A reactor to serve one more connection (started on first use; connections spread over REACTORS in turn)."""
    with _LOCK:
        while len(_REACTORS) < REACTORS:
            _REACTORS.append(Reactor(f"of-reactor-{len(_REACTORS)}"))
        _NEXT[0] = (_NEXT[0] + 1) % len(_REACTORS)
        return _REACTORS[_NEXT[0]]
