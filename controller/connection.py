"""Switch connections: echo requests answered on arrival, and a disconnect always reported.

Why a busy controller missed OVS's inactivity probes (os-ken 4.2.2, native threads):
os-ken answers ``OFPT_ECHO_REQUEST`` in ``OFPHandler.echo_request_handler``, a
``set_ev_handler`` that ``Datapath._recv_loop`` calls inline, so the echo itself never
waits in an event queue. But that loop first hands every message it parses to the
observing apps (``send_event_to_observers``), and each app's queue is bounded (128
events, ``OSKenApp._events_sem``): while our app's one event thread is busy (a burst of
packet-ins, port status, barrier and stats replies of many bridges, the GIL held by
compile and encode threads), the queue fills, the put blocks, and the receive loop of
that switch stops reading its socket. An echo request behind the backlog is then not
even read until the app catches up; OVS gives up after two probe intervals (5 s + 5 s).
Measured with ``tests/fake_switch.py``: 10 packet-ins queued behind a busy handler, the
echo is answered in 1 ms; 200, and it is not answered at all while the handler is busy.

Two more things os-ken does with a switch's socket matter here:

- its ``_send_loop`` gives up on a switch that does not read for ``socket_timeout``
  (5 s by default): a switch busy installing a big bundle was dropped for that;
- with native threads its ``Datapath.serve`` joins the send thread, which sleeps in
  ``send_q.get()`` until something is sent: after the switch disconnects, nothing is,
  so ``DEAD_DISPATCHER`` was never reported and the switch's worker never stopped.

So every switch socket is wrapped in :class:`FastEchoSocket`: a reactor thread
(controller.reactor, one of a few serving every connection; a TLS connection has a reader
thread of its own) drains the socket as fast as the switch writes, answers each echo
request at once (the only writer besides os-ken's send thread and the sync worker, under
one lock, between whole buffers) and hands everything else, byte for byte, to os-ken's
receive loop. The app may fall behind; the echo replies do not (they wait for the GIL, a
few ms, and at most for one buffer os-ken is writing). :class:`TenantflowDatapath` is
os-ken's ``Datapath`` with that socket, and with a receive loop that ends the send thread
when it ends (so a disconnect is always reported). :func:`install` makes os-ken's TCP listener create it;
``controller.main.serve_unix`` does the same for the unix socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from os_ken.base import app_manager  # noqa: F401  (first: os-ken's controller module imports it back)
from os_ken.controller.controller import Datapath
from os_ken.lib import hub
from os_ken.ofproto.ofproto_parser import msg as _OS_KEN_PARSE

from controller import reactor

LOG = logging.getLogger("tenantflow.connection")

OFPT_ECHO_REQUEST = 2
OFPT_ECHO_REPLY = 3
# Unsolicited (xid 0) messages the sync engine reads itself: flow monitor updates (multipart replies)
# and its pause notices (experimenter messages). No app handles either type unsolicited.
UNSOLICITED_INTERCEPTED = frozenset({4, 19})  # OFPT_EXPERIMENTER, OFPT_MULTIPART_REPLY
HEADER = struct.Struct("!BBHI")
OFP_VERSION = 0x04  # the one version the app speaks (OpenFlow 1.3)
RECV_SIZE = 256 * 1024
MAX_BUFFERED = 64 * 1024 * 1024  # bytes read ahead of os-ken per switch before the reader waits
MAX_BACKLOG = 1024 * 1024  # bytes of replies waiting for a switch to read before we stop reading it (reactor)
IO_TIMEOUT = 60.0  # a write the switch does not take within this long drops the connection
KEEPALIVE = (30, 10, 3)  # TCP keepalive: idle seconds, seconds between probes, probes before giving up
CLOSE_LINGER = 5.0  # how long close() waits for the reader thread to end
SEND_QUEUE_BYTES = 8 * 1024 * 1024  # bytes queued for one switch beyond which senders wait (its worker) or drop
# The most a sync worker writes itself when nothing is queued (TenantflowDatapath.write_through): a change's
# bundle, its commit. More (a whole push's chunks) goes through the send thread, which writes while it encodes.
WRITE_THROUGH_MAX = 64 * 1024
STALLED = "stalled"  # how an end_reason starts when the switch stopped reading (the app logs it as a warning)
MALFORMED = "malformed"  # ... when the switch's byte stream broke the protocol
REPORT_AGAIN_AFTER = 600.0  # seconds before the same malformed kind from the same switch is logged again
_REPORTED: dict[tuple[str, str], float] = {}  # (switch, kind) -> when last logged
_REPORTED_LOCK = threading.Lock()
DUPLICATE = "duplicate datapath id"  # ... when another connection claimed the same datapath id (controller.app)
# What a switch may send a controller in OpenFlow 1.3 (hello, error, echo, experimenter, features reply,
# get-config reply, packet-in, flow removed, port status, multipart reply, barrier reply, queue config
# reply, role reply, get-async reply). Any other type is skipped whole, counted and logged once.
SWITCH_TYPES = frozenset({0, 1, 2, 3, 4, 6, 8, 10, 11, 12, 19, 21, 23, 25, 27})
# Connections the kernel holds for each OpenFlow listener (TCP, TLS, unix) before we accept them. os-ken
# listens with 50: when 1,000 bridges reconnect at once (a controller restart), the queue overflows and
# the kernel drops the handshakes' last ACKs; OVS believes itself connected, gets no answer to its hello
# and echo, and gives up after its inactivity probe ("no response to inactivity probe", 10 bridges of a
# vswitchd at once in the scale bench).
LISTEN_BACKLOG = 1024
_OS_KEN_LISTEN = hub.listen


class MalformedStream(ValueError):
    """The switch's byte stream cannot be framed any more (a wrong version or a length below the header's)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


class EchoSplitter:
    """Splits a switch's byte stream into echo requests, intercepted replies and everything else.

    :meth:`feed` takes bytes as they arrive (any split) and returns the bytes to pass on,
    unchanged and in order, minus every complete ``OFPT_ECHO_REQUEST``, and the replies
    to send for those. A message's header decides where it goes, so everything that is
    not held back is passed on as soon as it arrives, a big reply included.
    A length below the header size counts as 8, as os-ken's receive loop counts it.

    Interception (:meth:`intercept`): each message whose xid ``owns(xid)`` claims is held
    back whole and given to ``handler`` (on the caller's thread) instead of being passed
    on. The sync engine claims the replies and errors it waits for this way (see
    :meth:`FastEchoSocket.intercept`), and the unsolicited messages of
    ``UNSOLICITED_INTERCEPTED``'s types (the flow monitor's, controller.monitor).
    """

    def __init__(self) -> None:
        self.owns: Callable[[int], bool] | None = None
        self.handler: Callable[[bytes], None] | None = None
        # Checks (once set, by FastEchoSocket): every message after the first (the hello) must carry this
        # version and a length of at least a header, else MalformedStream; a type a switch does not send
        # is dropped and told to ``report(kind, detail)``.
        self.version: int | None = None
        self.report: Callable[[str, str], None] | None = None
        self._messages = 0
        self._head = bytearray()  # a header being read
        self._passing = 0  # bytes of the current (passed on) message still to pass on
        self._dropping = 0  # bytes of the current (skipped) message still to drop
        self._held: bytearray | None = None  # the message being held back (echo request or intercepted)
        self._held_len = 0

    def intercept(self, owns: Callable[[int], bool] | None, handler: Callable[[bytes], None] | None) -> None:
        """Give every later message whose xid ``owns`` claims to ``handler`` (not echo requests); None: stop."""
        self.owns, self.handler = owns, handler

    def feed(self, data: bytes) -> tuple[bytes, list[bytes]]:
        """(bytes for os-ken, echo replies to send) for the next ``data`` read from the switch."""
        out: list[bytes] = []
        replies: list[bytes] = []
        view = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if self._dropping:
                take = min(self._dropping, n - i)
                self._dropping -= take
                i += take
            elif self._passing:
                take = min(self._passing, n - i)
                out.append(view[i:i + take])
                self._passing -= take
                i += take
            elif self._held is not None:
                take = min(self._held_len - len(self._held), n - i)
                self._held += view[i:i + take]
                i += take
                if len(self._held) == self._held_len:
                    self._release(bytes(self._held), replies)
            else:
                take = min(HEADER.size - len(self._head), n - i)
                self._head += view[i:i + take]
                i += take
                if len(self._head) == HEADER.size:
                    self._start(out, replies)
        return b"".join(out), replies

    def _start(self, out: list, replies: list[bytes]) -> None:
        """A header is complete: hold its message back, or pass it on."""
        version, msg_type, length, xid = HEADER.unpack(self._head)
        if self.version is not None and not self._checked(version, msg_type, length):
            self._dropping = length - HEADER.size
            self._head.clear()
            return
        length = max(length, HEADER.size)
        owns = self.owns  # once: intercept(None, None) may come from another thread
        if msg_type == OFPT_ECHO_REQUEST or (owns is not None and (
                owns(xid) if xid else msg_type in UNSOLICITED_INTERCEPTED)):
            self._held, self._held_len = bytearray(self._head), length
            if length == HEADER.size:
                self._release(bytes(self._held), replies)
        else:
            out.append(bytes(self._head))
            self._passing = length - HEADER.size
        self._head.clear()

    def _checked(self, version: int, msg_type: int, length: int) -> bool:
        """Whether to keep a message; MalformedStream if the stream can no longer be framed."""
        self._messages += 1
        if self._messages > 1 and version != self.version:
            raise MalformedStream("bad_version", f"message of version {version:#x} (type {msg_type}, length "
                                  f"{length}) on an OpenFlow {self.version:#x} connection")
        if length < HEADER.size:
            raise MalformedStream("bad_length", f"message of length {length} (type {msg_type}), below the "
                                  f"{HEADER.size}-byte header")
        if self._messages > 1 and msg_type not in SWITCH_TYPES:
            if self.report is not None:
                self.report("unknown_type", f"message of type {msg_type} (length {length}), which a switch does "
                            "not send: skipped")
            return False
        return True

    def _release(self, msg: bytes, replies: list[bytes]) -> None:
        """A held-back message is complete: answer it (echo) or hand it to the handler."""
        self._held = None
        if msg[1] == OFPT_ECHO_REQUEST:
            replies.append(echo_reply(msg))
            return
        handler = self.handler
        if handler is None:  # interception ended meanwhile: the request's owner is gone
            return
        try:
            handler(msg)
        except Exception:  # a handler's bug must not end the connection's reader
            LOG.exception("handler of intercepted message (type %d, xid %#x) failed", msg[1],
                          HEADER.unpack_from(msg)[3])


def echo_reply(request: bytes) -> bytes:
    """The OFPT_ECHO_REPLY to an echo request: same version, xid and data."""
    version, _, length, xid = HEADER.unpack_from(request)
    return HEADER.pack(version, OFPT_ECHO_REPLY, length, xid) + request[HEADER.size:length]


class FastEchoSocket:
    """A switch's socket as os-ken's ``Datapath`` uses it, with echo requests answered on arrival.

    The socket is read by a reactor (:mod:`controller.reactor`: a few threads serve every
    connection), a TLS one (or any with ``threaded``) by a reader thread of its own.
    ``recv`` serves what was read ahead (``MAX_BUFFERED`` at most, then reading stops until
    os-ken catches up, and TCP pushes back on the switch), honouring the timeout os-ken
    sets; ``sendall`` writes under the lock the echo replies share (on the reactor's thread,
    which must never block, it leaves what the socket does not take to the reactor). The real
    socket's own timeout is ``IO_TIMEOUT``: os-ken's 5 s ``socket_timeout`` only paces its
    receive loop, and a switch that is slow to read (installing a big bundle) is given a
    minute, as long as the sync engine waits for its replies. On a unix socket TCP options
    are ignored (os-ken sets TCP_NODELAY on every switch socket); on TCP, keepalive is on
    (``KEEPALIVE``): we send the switches no echo requests, and a switch whose host
    vanished without closing the connection is still seen gone, in about a minute.
    """

    def __init__(self, sock: socket.socket, *, unix: bool = False, max_buffered: int = MAX_BUFFERED,
                 threaded: bool = False, served_by: reactor.Reactor | None = None):
        self._sock = sock
        self._unix = unix
        self._max_buffered = max_buffered
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._inbox = bytearray()
        self._eof = False
        self._closed = False
        self._timeout: float | None = None
        self.echo_replies = 0
        self.end_reason = ""  # why the connection ended, once it has (for the disconnect's log line)
        self._splitter = EchoSplitter()
        self._splitter.version = OFP_VERSION
        sock.settimeout(IO_TIMEOUT)
        if not unix:
            _keepalive(sock)
        # A plain socket is read by a reactor (controller.reactor); a TLS one by a thread of its own.
        self._backlog: deque[bytes | memoryview] = deque()  # bytes to write before anything else (reactor mode)
        self._paused = False  # reading stopped: os-ken is MAX_BUFFERED behind (reactor mode)
        self._choked = False  # reading stopped: MAX_BACKLOG of replies wait for the switch to read (reactor mode)
        self._reactor: reactor.Reactor | None = None
        self._reader: threading.Thread | None = None
        if isinstance(sock, socket.socket) and not threaded:
            self.fd = sock.fileno()
            self._reactor = served_by or reactor.next_reactor()
            self._reactor.add(self)
        else:
            self._reader = threading.Thread(target=self._read_loop, name="of-reader", daemon=True)
            self._reader.start()

    # -- the socket interface os-ken uses -------------------------------------------
    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes the switch sent, echo requests left out; b"" at the end."""
        with self._cond:
            if not self._inbox and not self._eof:
                self._cond.wait_for(lambda: self._inbox or self._eof, self._timeout)
            if self._inbox:
                data = bytes(self._inbox[:bufsize])
                del self._inbox[:bufsize]
                self._cond.notify_all()
                if self._paused and len(self._inbox) < self._max_buffered:
                    self._paused = False
                    self._reactor.want(self, read=not self._choked)
                return data
            if self._eof:
                return b""
        raise TimeoutError("timed out")

    def sendall(self, data: bytes) -> None:
        """Write ``data`` whole; an echo reply never lands inside it.

        On the reactor's own thread nothing may block: ``data`` is written as far as the socket takes
        it and the rest left to the reactor (:meth:`_write_soon`).
        """
        if self._reactor is None:
            with self._send_lock:
                self._sock.sendall(data)
            return
        if self._reactor.on_thread:
            self._write_soon(data)
            return
        with self._send_lock:
            while self._backlog:  # what the reactor could not write yet goes first
                self._sock.sendall(self._backlog.popleft())
            self._sock.sendall(data)
        if self._backlog:  # an echo reply came while we wrote
            self._flush_nowait()

    def settimeout(self, value: float | None) -> None:
        """The timeout of :meth:`recv` (the real socket keeps ``IO_TIMEOUT``)."""
        self._timeout = value

    def setsockopt(self, level: int, option: int, value) -> None:
        """Set a socket option; TCP-level ones are ignored on a unix socket."""
        if self._unix and level == socket.IPPROTO_TCP:
            return
        self._sock.setsockopt(level, option, value)

    def shutdown(self, how: int) -> None:
        """Shut down one or both directions of the real socket (os-ken's way to end a connection)."""
        self._ended("closed by the controller (shutdown)")
        self._sock.shutdown(how)

    def end(self, reason: str) -> None:
        """End the connection in both directions for ``reason`` (the first reason given is the one kept)."""
        self._ended(reason)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # the reader's recv returns: os-ken sees the end

    def intercept(self, owns: Callable[[int], bool] | None, handler: Callable[[bytes], None] | None) -> None:
        """Hand each message whose xid ``owns`` claims to ``handler``, whole, on the reader thread (None: stop).

        Such messages never reach os-ken: not its parser (a flow dump is 2,000 objects per
        bridge, built to read their cookies) and not the app's one event thread, where every
        barrier and bundle reply of every bridge used to queue behind all the others'.
        ``owns`` is asked once per message, on the reader thread: it must be cheap.
        """
        self._splitter.intercept(owns, handler)

    def close(self) -> None:
        """End the connection: wake and end the reader, then close the real socket."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # a reader blocked in recv or sendall returns
        if self._reactor is not None:
            self._reactor.remove(self)  # before the descriptor is closed (and its number reused)
            with self._send_lock:
                self._backlog.clear()
                self._sock.close()
            self._at_eof()
            return
        if threading.current_thread() is not self._reader:
            self._reader.join(CLOSE_LINGER)
        self._sock.close()

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._sock, name)

    # -- reading: the reactor's calls, or the reader thread -----------------------------
    def on_readable(self) -> None:
        """The reactor's call: read what the switch sent (never blocks)."""
        if self._eof or self._closed:
            return
        try:
            n = os.readv(self.fd, [self._reactor.buffer])
            data = bytes(self._reactor.view[:n])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._ended(f"read failed: {exc}")
            data = None
        if not data:
            if data is not None:
                self._ended("closed by the switch")
            self._stop_reading()
        elif not self._take(data):
            self._stop_reading()

    def on_writable(self) -> None:
        """The reactor's call: the socket takes more; write the backlog (and read again once it is short)."""
        if self._flush_nowait():
            self._reactor.want(self, write=False)
        if self._choked and self._backlog_bytes() < MAX_BACKLOG:
            self._choked = False
            with self._cond:
                self._reactor.want(self, read=not self._paused)

    def _stop_reading(self) -> None:
        """The stream ended (or broke): the reactor stops serving it; os-ken's recv sees the end."""
        self._reactor.remove(self)
        self._at_eof()

    def _read_loop(self) -> None:
        try:
            while not self._closed:
                try:
                    data = self._sock.recv(RECV_SIZE)
                except TimeoutError:
                    continue
                except OSError as exc:
                    self._ended(f"read failed: {exc}")
                    break
                if not data:
                    self._ended("closed by the switch")
                    break
                if not self._take(data):
                    break
        finally:
            self._at_eof()

    def _take(self, data: bytes) -> bool:
        """Split what was read: echo requests answered, the rest handed over; False once the connection ends."""
        splitter = self._splitter
        try:
            passed, replies = splitter.feed(data)
        except MalformedStream as exc:  # nothing after this can be framed: end the connection
            if splitter.report is not None:
                splitter.report(exc.kind, str(exc))
            self.end(f"{MALFORMED}: {exc}")
            return False
        for reply in replies:
            if not self._answer(reply):
                return False
        if self._backlog and self._reactor is not None and self._backlog_bytes() >= MAX_BACKLOG:
            # A switch that sends and does not read: no more of its requests until it reads our answers
            # (as a blocked write would have, without blocking every other connection of the reactor).
            self._choked = True
            self._reactor.want(self, read=False)
        return not passed or self._hand_over(passed)

    def _backlog_bytes(self) -> int:
        return sum(len(item) for item in list(self._backlog))

    def _at_eof(self) -> None:
        self._ended("closed by the controller")
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _ended(self, reason: str) -> None:
        """Record why the connection ended (the first reason only; ours if we closed it)."""
        if not self.end_reason:
            self.end_reason = "closed by the controller" if self._closed else reason

    def _answer(self, reply: bytes) -> bool:
        if self._reactor is not None:
            self.echo_replies += 1
            self._write_soon(reply)  # (a failure shuts the connection: the reactor reads its end)
            return True
        try:
            self.sendall(reply)
        except OSError as exc:  # the connection is going: its end is seen by recv
            LOG.debug("echo reply not sent: %s", exc)
            self._ended(f"echo reply not sent: {exc}")
            return False
        self.echo_replies += 1
        return True

    def _hand_over(self, data: bytes) -> bool:
        with self._cond:
            if self._reactor is None:
                self._cond.wait_for(lambda: len(self._inbox) < self._max_buffered or self._closed)
            if self._closed:
                return False
            self._inbox += data
            self._cond.notify_all()
            if self._reactor is not None and len(self._inbox) >= self._max_buffered:
                self._paused = True  # os-ken is that far behind: stop reading (TCP pushes back on the switch)
                self._reactor.want(self, read=False)
        return True

    # -- writing without blocking (reactor mode) -----------------------------------------
    def _write_soon(self, data: bytes) -> None:
        """Write ``data`` after everything before it, as far as the socket takes it now; the reactor writes the
        rest when it takes more. Never blocks."""
        self._backlog.append(data)
        self._flush_nowait()

    def _flush_nowait(self) -> bool:
        """Write the backlog as far as the socket takes it; False if the socket is full (the reactor then writes
        the rest when it takes more).

        True also when another thread is writing: that thread writes the backlog, after its own data
        (:meth:`sendall` calls this again once it let go of the lock). The reactor must not wait on the
        socket meanwhile: it would be told the socket takes more at every turn while the lock is held
        (a busy loop, the whole time a sync streams a big push into a slow switch).
        """
        while self._backlog:
            if not self._send_lock.acquire(blocking=False):
                return True
            try:
                done = self._write_backlog()
            finally:
                self._send_lock.release()
            if not done:
                self._reactor.want(self, write=True)
                return False
        return True

    def _write_backlog(self) -> bool:
        """(Under the send lock.) Write the backlog without blocking; True if it is all written (or dropped: the
        connection failed, and is shut down)."""
        backlog = self._backlog
        while backlog:
            head = backlog[0]
            try:
                n = os.write(self.fd, head) if self._sock.fileno() >= 0 else -1
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                n, reason = -1, f"write failed: {exc}"
            else:
                reason = "closed by the controller"
            if n < 0:  # the connection failed (or was closed): its end is seen by the reader
                backlog.clear()
                self._ended(reason)
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                return True
            if n < len(head):
                backlog[0] = memoryview(head)[n:]
                return False
            backlog.popleft()
        return True


def _keepalive(sock: socket.socket) -> None:
    """Turn TCP keepalive on with ``KEEPALIVE``'s timing (where the platform has the options)."""
    idle, interval, count = KEEPALIVE
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


class SendQueue:
    """What waits to be written to one switch, bounded in bytes (``limit``; one message alone may exceed it).

    os-ken's queue holds 16 messages of any size and every sender waits for room, the app's
    one event thread included: a switch that stopped reading blocked every bridge's packet-ins
    behind one DHCP answer. Here only a sender that asks to (the switch's own worker) waits for
    room; any other gets False at once and the message is dropped (a packet-out: the guest asks
    again). :meth:`close` drops what is queued and wakes everyone.
    """

    def __init__(self, limit: int = SEND_QUEUE_BYTES):
        self.limit = limit
        self.queued = 0  # bytes put and not yet written
        self._items: deque[tuple[bytes, bool]] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, data: bytes, close_socket: bool = False, block: bool = True) -> bool:
        """Queue ``data``; False if closed, or full and ``block`` is False."""
        with self._cond:
            while not self._closed and self.queued and self.queued + len(data) > self.limit:
                if not block:
                    return False
                self._cond.wait()
            if self._closed:
                return False
            self._items.append((data, close_socket))
            self.queued += len(data)
            self._cond.notify_all()
            return True

    def claim_idle(self, n: int) -> bool:
        """Reserve the connection for ``n`` bytes the caller writes itself; call :meth:`written` after.

        Only when nothing is queued or being written (what it writes then overtakes nothing that
        was put before it) and the queue is open; False otherwise (queue it instead).
        """
        with self._cond:
            if self._closed or self.queued:
                return False
            self.queued += n
            return True

    def get(self) -> tuple[bytes, bool] | None:
        """The next message to write (waits for one); None once closed."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            return None if self._closed else self._items.popleft()

    def written(self, n: int) -> None:
        """``n`` bytes of what :meth:`get` gave were written (or given up): room for the waiting senders."""
        with self._cond:
            self.queued = max(0, self.queued - n)  # (0 after close(), which dropped the count)
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Drop everything queued; every put fails and every get returns None from now on."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self.queued = 0
            self._cond.notify_all()


class TenantflowDatapath(Datapath):
    """os-ken's ``Datapath`` on a :class:`FastEchoSocket`, a bounded :class:`SendQueue`, and a send thread that
    ends with its receive loop.

    A switch that takes nothing we write for ``IO_TIMEOUT`` (it stopped reading: hung, SIGSTOPped)
    is *stalled*: the connection is closed both ways, once, counted
    (``tenantflow_switch_stalls_total``), and the app logs it as one warning line; the switch's
    reconnection is reconciled like any other. Until then at most ``SEND_QUEUE_BYTES`` wait for it.

    ``certificate_name``: the hypervisor the switch's TLS certificate names (None: no TLS, a
    unix socket or plain TCP), held against its datapath id by the app (:mod:`controller.tls`).
    ``label``: the name metrics give the switch (its hypervisor's, set by controller.switch).
    """

    bounded_send = True  # send() takes block= (controller.switch asks whether it may)

    def __init__(self, sock: socket.socket, address, *, unix: bool = False, certificate_name: str | None = None):
        self.certificate_name = certificate_name
        self.label: str | None = None
        self.out = SendQueue()
        super().__init__(FastEchoSocket(sock, unix=unix), address)
        self.socket._splitter.report = self.report_malformed

    def report_malformed(self, kind: str, detail: str) -> None:
        """A malformed or unexpected message from the switch: counted each time, logged once per switch and kind
        every REPORT_AGAIN_AFTER seconds (a switch that reconnects and sends the same garbage again does not fill
        the log: OVS reconnects every second or so)."""
        from controller import metrics

        metrics.OF_MALFORMED.labels(self._label(), kind).inc()
        key = (self._label() if self.id is not None else str(self.address[0]), kind)
        now = time.monotonic()
        with _REPORTED_LOCK:
            if now - _REPORTED.get(key, -REPORT_AGAIN_AFTER) < REPORT_AGAIN_AFTER:
                return
            _REPORTED[key] = now
        LOG.warning("switch %s from %s: %s (counted in tenantflow_of_malformed_total{kind=%r}; not logged again for "
                    "%g s)", self._label(), self.address, detail, kind, REPORT_AGAIN_AFTER)

    def send(self, buf: bytes, close_socket: bool = False, *, block: bool = True) -> bool:
        """Queue ``buf`` for the switch (see :class:`SendQueue`); False if it was not queued."""
        if self.out.put(buf, close_socket, block):
            return True
        if not block and not self.out.closed:
            from controller import metrics
            metrics.SEND_DROPPED.labels(self._label()).inc()
        return False

    def write_through(self, buf: bytes) -> bool | None:
        """Write ``buf`` from the calling thread now, if nothing is queued for the switch: True once written,
        False if the connection failed (it is closed), None if the queue is busy or ``buf`` is big (send it).

        What a sync worker's change costs in thread hand-offs: through the send thread, each bundle
        and each commit woke one more thread, and on a busy controller every wake waits for the
        interpreter among thousands. A write the switch does not take within ``IO_TIMEOUT`` is a
        stall, as in the send thread.
        """
        if self.out.closed:
            return False
        if len(buf) > WRITE_THROUGH_MAX or not self.out.claim_idle(len(buf)):
            return None
        try:
            self.socket.sendall(buf)
            return True
        except TimeoutError:
            self._stalled()
        except OSError as exc:
            LOG.debug("switch %s: write failed: %s", self._label(), exc)
            self.out.close()
            self._close_write()
        finally:
            self.out.written(len(buf))
        return False

    def _label(self) -> str:
        return self.label or (f"{self.id:016x}" if self.id is not None else "?")

    def _send_loop(self) -> None:
        """Write what is queued until the connection ends; a switch that takes nothing for IO_TIMEOUT is closed."""
        try:
            while (item := self.out.get()) is not None:
                buf, close_socket = item
                try:
                    self.socket.sendall(buf)
                finally:
                    self.out.written(len(buf))
                if close_socket:
                    break
        except TimeoutError:
            self._stalled()
        except OSError as exc:
            LOG.debug("switch %s: write failed: %s", self._label(), exc)
        finally:
            self.out.close()
            self._close_write()

    def _stalled(self) -> None:
        from controller import metrics

        metrics.SWITCH_STALLS.labels(self._label()).inc()
        self.socket.end(f"{STALLED}: took none of our data for {IO_TIMEOUT:g} s (it stopped reading); "
                        f"closed by the controller")

    def _recv_loop(self) -> None:
        try:
            super()._recv_loop()  # returns with the socket closed
        finally:
            # Wake the send thread (it sleeps in get()): it ends, Datapath.serve returns, and
            # os-ken reports DEAD_DISPATCHER.
            self.out.close()
            # The reader's splitter held our bound method (datapath -> socket -> splitter -> datapath): a
            # cycle, which a frozen heap never collects (controller.heap). Break it.
            self.socket._splitter.report = None


def serve_connection(sock: socket.socket, address, *, unix: bool = False, certificate_name: str | None = None) -> None:
    """Serve one switch connection until it ends (os-ken's ``datapath_connection_factory``)."""
    LOG.debug("switch connected from %s", address)
    with contextlib.closing(TenantflowDatapath(sock, address, unix=unix,
                                               certificate_name=certificate_name)) as datapath:
        try:
            datapath.serve()
        except Exception:  # a malformed message makes os-ken's parser raise: drop this switch only
            LOG.exception("switch %s from %s: connection failed",
                          f"{datapath.id:016x}" if datapath.id is not None else "?", address)


def install(tcp: bool = True) -> None:
    """Make os-ken's OpenFlow listener serve its switches with :func:`serve_connection` (``tcp``), or not listen.

    os-ken's ``OpenFlowController.server_loop`` hands each accepted socket to the module
    function ``datapath_connection_factory`` and takes no other factory, so that name is
    pointed here (os-ken's files are not changed). os-ken always listens on plain TCP and has
    no "off": without ``tcp`` (plain TCP not allowed, README "Switch identity: TLS") its
    OpenFlow handler gets a controller whose server loop returns at once. Call before the apps
    are instantiated: the listener starts then.
    """
    from os_ken.controller import controller as os_ken_controller
    from os_ken.controller import ofp_handler

    os_ken_controller.datapath_connection_factory = serve_connection
    hub.listen = _listen  # os-ken's StreamServer looks it up at each call
    os_ken_controller.ofproto_parser.msg = _parse_reported
    ofp_handler.OpenFlowController = os_ken_controller.OpenFlowController if tcp else _NotListening


def _listen(addr, family: int = socket.AF_INET, backlog: int = LISTEN_BACKLOG, **options) -> socket.socket:
    """os-ken's ``hub.listen`` with a queue deep enough for every bridge reconnecting at once (LISTEN_BACKLOG)."""
    return _OS_KEN_LISTEN(addr, family, max(backlog, LISTEN_BACKLOG), **options)


def _parse_reported(datapath, version, msg_type, msg_len, xid, buf):
    """os-ken's ``ofproto_parser.msg``, without its traceback per message a switch sends malformed.

    os-ken logs each unparsable message with ``LOG.exception`` (a traceback and a hex dump) and
    skips it: a switch sending a stream of them filled the log. Here the message is skipped too,
    and counted and logged once per connection and kind (:meth:`TenantflowDatapath.report_malformed`).
    """
    from os_ken.ofproto import ofproto_parser

    parser = ofproto_parser._MSG_PARSERS.get(version)
    if parser is None:
        return _OS_KEN_PARSE(datapath, version, msg_type, msg_len, xid, buf)  # raises: unknown version
    try:
        return parser(datapath, version, msg_type, msg_len, xid, buf)
    except Exception as exc:
        report = getattr(datapath, "report_malformed", None)
        if report is None:
            return _OS_KEN_PARSE(datapath, version, msg_type, msg_len, xid, buf)
        report("unparsable", f"unparsable message of type {msg_type} (length {msg_len}): {exc!r}: skipped")
        return None


class _NotListening:
    """os-ken's OpenFlow controller without its plain TCP listener (our TLS and unix listeners serve)."""

    def __call__(self) -> None:
        return None
