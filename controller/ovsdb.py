"""The controller as every hypervisor's OVSDB manager: it keeps the tunnel ports (overlay; gateways', with BFD),
the provider bridges' patch ports and controllers, and the br-int of a host that names itself.

Each hypervisor runs ``ovs-vsctl set-manager tcp:CONTROLLER:6640`` (a cluster: one target per
instance, like ``set-controller``); its ovsdb-server connects to us and we monitor, through the
``ovs`` library's IDL, just the tables and columns :mod:`controller.tunnels` reads. A
connection is the hypervisor whose datapath id one of its bridges carries (``Bridge.datapath_id``,
which ovs-vswitchd fills in); one that matches no registered hypervisor is kept and checked
again whenever the hypervisors change (registered later, or its bridge created later).

A host may also name itself, as OVN's hosts do: its ``external_ids:system-id`` (over TLS, its
certificate) a registered hypervisor's name. Then it needs no br-int of its own making: the
controller makes it, or corrects it, in the same transaction as the ports
(:mod:`controller.integration`); once ovs-vswitchd runs it and fills in its datapath id, the binding
above takes over (the row is found by name meanwhile, so a transaction in flight never makes it
twice). Only the first live connection claiming a hypervisor (by name or a bridge's datapath id)
has its br-int written: a second host of the same name would make a second bridge of the same id.

On its bridge, that hypervisor must have the overlay's flow-based tunnel ports
(:func:`topology.gateways.overlay_ports`: ``tf-vxlan``, ``tf-geneve``, ``tf-gre``, created and
corrected, never deleted) and exactly :func:`topology.gateways.tunnel_ports`'s
``tg-`` ports: they are reconciled, never flushed (one transaction per connection and pass:
missing ports created, differing ones corrected, ``tg-`` ports not desired deleted, no other
port touched, an unchanged port never rewritten), on connect, on every change of the
hypervisors (a registration, a gateway marked or unmarked) and of what the switch holds (a
``tg-`` port made or removed by hand). Each provider bridge its ``bridge_mappings`` names that the host
has gets the patch pair to br-int, ``fail_mode=secure`` and br-int's controllers
(:func:`controller.tunnels.wanted`), in the same transaction, by the same rules; the provider bridges
found are published by datapath id (:meth:`OvsdbManager.provider_bridges`) for the OpenFlow side
(:mod:`controller.provider`), which keeps their flows. With several controller instances, only the one the
cluster's view gives the bridge to (the instance that masters it over OpenFlow, while in good
standing) writes; every instance accepts connections and reads the BFD state.

One IDL per connection, on listeners of our own (:mod:`controller.ovsdb_connection`). One thread
serves every connection; a selector tells it which sockets have something, so hundreds of idle
connections cost nothing between their messages.

Only this module, :mod:`controller.ovsdb_connection`, :mod:`controller.integration` and
:mod:`controller.tunnels` use the ``ovs`` library; nothing here touches os-ken or OpenFlow.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller import metrics, tls
from controller.integration import (
    DATAPATH_TYPE,
    SYSTEM_ID,
    BridgeTargets,
    IntegrationPlan,
    apply_integration,
    host_row,
    identify,
    plan_integration,
)
from controller.ovsdb_connection import (  # noqa: F401 (parse_listen, open_listener: this module's API too)
    Bound,
    Handshake,
    ManagerConnection,
    keepalive,
    open_listener,
    parse_listen,
)
from controller.tunnels import (
    ProviderBridge,
    apply,
    bfd_of,
    datapath_id,
    plan,
    provider_bridges,
    wanted,
)
from topology.gateways import BfdTimers, is_gateway, overlay_ports, tunnel_ports
from topology.model import Hypervisor

with warnings.catch_warnings():
    # ovs.poller imports eventlet when it is installed (etcd3gw brings it), which warns it is deprecated
    warnings.simplefilter("ignore")
    import ovs.db.idl
    import ovs.jsonrpc
    import ovs.stream

LOG = logging.getLogger("tenantflow.ovsdb")

TICK = 5.0  # s: the hypervisors and each bridge's writer are checked at least this often
RETRY = (0.1, 30.0)  # s: the first and the longest wait before a failed transaction is tried again
Txn = ovs.db.idl.Transaction


# -- the manager ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Published:
    """What one hypervisor's OVSDB shows, for readers in other threads (replaced whole, never edited)."""

    connection: str
    writer: bool
    tunnels: dict[str, dict[str, Any]]
    providers: tuple[ProviderBridge, ...] = ()  # its provider bridges that exist and run


class OvsdbManager:
    """Accepts the hypervisors' ovsdb-servers and keeps their gateway tunnel ports (one thread for all)."""

    def __init__(self, topology: Any, listen: list[str], timers: BfdTimers | None = None,
                 cluster: Any = None, tls_files: tls.TlsFiles | None = None,
                 targets: BridgeTargets | None = None) -> None:
        self.topology, self.listen, self.cluster = topology, listen, cluster
        self.targets = targets or BridgeTargets()  # a br-int we make: its controllers
        if any(t.startswith("pssl:") for t in listen) and tls_files is None:
            raise ValueError("pssl: targets need the controller's key, certificate and CA (TlsFiles)")
        self._ssl = tls_files.server_context() if tls_files is not None else None
        self.timers = timers or BfdTimers()
        self._listeners: list[ovs.stream.PassiveStream] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()  # the flags other threads set, and what readers read
        self._flags = {"topology": True, "ownership": True}
        self._published: dict[str, Published] = {}
        self._providers: dict[int, ProviderBridge] = {}  # every connected host's provider bridges, by datapath id
        self._read: frozenset[str] = frozenset()  # the hypervisors whose databases they come from
        self._provider_subscribers: list[Callable[[], None]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The loop thread's own (no lock):
        self._conns: set[ManagerConnection] = set()
        self._handshakes: dict[ssl.SSLSocket, Handshake] = {}  # TLS connections not yet established
        self._again: set[ManagerConnection] = set()  # to serve in the next round without waiting
        self._retrying: set[ManagerConnection] = set()  # a transaction failed: tried again at its retry_at
        self._accepted = 0
        self._hvs: frozenset[tuple[Hypervisor, tuple]] = frozenset()  # with their bridge mappings (not compared)
        self._gateways: frozenset[Hypervisor] = frozenset()
        self._by_dpid: dict[int, Hypervisor] = {}
        self._by_name: dict[str, Hypervisor] = {}
        self._claims: dict[str, ManagerConnection] = {}  # hypervisor -> the one connection that may make its br-int
        self._versions = [0, 0]  # [every hypervisor, the gateways]: bumped when that set changes
        self._next_tick = 0.0

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> OvsdbManager:
        """Listen (OSError if a target cannot be bound), subscribe to changes, start the thread."""
        try:
            self._listeners = [open_listener(t) for t in self.listen]
        except OSError:
            for listener in self._listeners:
                listener.close()
            raise
        for listener in self._listeners:
            self._selector.register(listener.socket, selectors.EVENT_READ, listener)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.topology.subscribe(lambda _affected: self._flag("topology"))
        if self.cluster is not None:
            self.cluster.subscribe(lambda: self._flag("ownership"))
        self._thread = threading.Thread(target=self._loop, name="ovsdb", daemon=True)
        self._thread.start()
        if self._ssl is not None:
            tls.export_refusals("ovsdb")
        LOG.info("OVSDB manager listening on %s", ", ".join(self.addresses()))
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, close every connection and listener (a unix socket's file is removed)."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        for conn in list(self._conns):
            conn.close()
        for sock in list(self._handshakes):
            sock.close()
        for listener in self._listeners:
            listener.socket.close()
            if listener.name.startswith("punix:"):
                _unlink(listener.name[len("punix:"):])

    def addresses(self) -> list[str]:
        """The targets listened on, a TCP port 0 as the port it got (``ptcp:PORT:IP``, ``punix:PATH``)."""
        out = []
        for listener in self._listeners:
            if listener.socket.family == socket.AF_UNIX:
                out.append(listener.name)
            else:
                host, port = listener.socket.getsockname()[:2]
                out.append(f"{listener.name.partition(':')[0]}:{port}:{host}")
        return out

    # -- what other threads read ----------------------------------------------------------------------
    def bfd_status(self, hv_name: str) -> dict[str, dict[str, Any]]:
        """A hypervisor's gateway tunnels as its switch reports them: port name -> BFD state.

        Each entry: ``state``, ``forwarding``, ``remote_state``, ``diagnostic``... as in
        ``Interface.bfd_status``, plus ``enabled``, ``remote_ip``, ``ofport`` (and ``error`` if
        ovs-vswitchd could not create the interface). Empty when its OVSDB is not connected.
        """
        with self._lock:
            published = self._published.get(hv_name)
        return {name: dict(entry) for name, entry in published.tunnels.items()} if published else {}

    def status(self) -> dict[str, Any]:
        """Listeners, connections, and per connected hypervisor: connection, whether we write it, tunnels."""
        with self._lock:
            published = dict(self._published)
        return {"listening": self.addresses(), "connections": len(self._conns),
                "hypervisors": {name: {"connection": p.connection, "writer": p.writer, "tunnels": p.tunnels,
                                       "provider_bridges": {b.physnet: {"bridge": b.bridge,
                                                                        "datapath_id": f"{b.datapath_id:016x}"}
                                                            for b in p.providers}}
                                for name, p in sorted(published.items())}}

    def published(self) -> dict[str, Published]:
        """Every connected hypervisor's :class:`Published` state (for the metrics)."""
        with self._lock:
            return dict(self._published)

    def provider_bridges(self) -> dict[int, ProviderBridge]:
        """The provider bridges of the hypervisors whose OVSDB is connected, by their datapath id."""
        with self._lock:
            return dict(self._providers)

    def subscribe_providers(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on this manager's thread) whenever :meth:`provider_bridges` changes."""
        self._provider_subscribers.append(callback)

    # -- waking the loop (any thread; topology subscribers run under the topology's lock) --------------
    def _flag(self, name: str) -> None:
        if self._stopping.is_set():  # (subscriptions outlive a stopped manager: nothing to unsubscribe)
            return
        with self._lock:
            self._flags[name] = True
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # the pipe is full: the loop is awake already
            pass

    def _take_flags(self) -> dict[str, bool]:
        with self._lock:
            flags, self._flags = self._flags, {"topology": False, "ownership": False}
        return flags

    # -- the loop ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._round()
            except Exception:  # a bug must not end the thread: the next round starts over
                LOG.exception("OVSDB manager: round failed")
                time.sleep(0.1)
        self._selector.close()

    def _round(self) -> None:
        """Wait for something to do (I/O, a flag, a timer), then do it."""
        events = self._selector.select(self._timeout())
        ready, self._again = set(self._again), set()
        for key, _mask in events:
            if key.data is None:
                _drain(self._wake_r)
            elif isinstance(key.data, ManagerConnection):
                ready.add(key.data)
            elif isinstance(key.data, Handshake):
                ready |= self._shake(key.data)
            else:
                ready |= self._accept(key.data)
        now = time.monotonic()
        for hs in [h for h in self._handshakes.values() if now >= h.deadline]:
            self._end_handshake(hs, tls.HANDSHAKE, f"no TLS handshake within {tls.HANDSHAKE_TIMEOUT:g} s")
        flags = self._take_flags()
        recheck = flags["ownership"]
        if flags["topology"] or now >= self._next_tick:  # the tick: also what a missed notification hid
            recheck |= self._refresh_topology() or now >= self._next_tick
            self._next_tick = now + TICK
        for conn in ready:
            self._serve(conn, io=True)
        if recheck:
            targets = [c for c in self._conns if c not in ready]
        else:
            targets = [c for c in self._retrying if c not in ready and c.txn is None and now >= c.retry_at]
        for conn in targets:
            self._serve(conn, io=False)

    def _timeout(self) -> float:
        if self._again:
            return 0.0
        now = time.monotonic()
        due = [c.retry_at for c in self._retrying if c.txn is None]
        due += [h.deadline for h in self._handshakes.values()]
        return max(0.0, min([self._next_tick, *due]) - now)

    def _accept(self, listener: ovs.stream.PassiveStream) -> set[ManagerConnection]:
        """Every connection waiting on ``listener``, accepted."""
        accepted = set()
        while True:
            error, stream = listener.accept()
            if error:
                if error != errno.EAGAIN:
                    LOG.warning("OVSDB manager: accept on %s: %s", listener.name, os.strerror(error))
                return accepted
            if stream.socket.family != socket.AF_UNIX:
                keepalive(stream.socket)
            if listener.name.startswith("pssl:"):
                self._start_handshake(stream)
                continue
            accepted.add(self._connected(stream))

    def _connected(self, stream: ovs.stream.Stream, certificate_name: str | None = None) -> ManagerConnection:
        """A server's connection is ready for OVSDB: start its handshake (schema, then the IDL)."""
        self._accepted += 1
        conn = ManagerConnection(stream, self._accepted, certificate_name)
        self._conns.add(conn)
        self._selector.register(conn.sock, conn.events, conn)
        LOG.info("ovsdb %s: connected%s", conn.name, f" (certificate of {certificate_name})" if certificate_name
                 else "")
        return conn

    # -- TLS (pssl:) ---------------------------------------------------------------------------------
    def _start_handshake(self, stream: ovs.stream.Stream) -> None:
        """Wrap an accepted TCP connection in TLS; its handshake goes on in the loop, never blocking it."""
        peer = stream.name.partition(":")[2]
        sock = self._ssl.wrap_socket(stream.socket, server_side=True, do_handshake_on_connect=False)
        stream.socket = None  # detached into ``sock``: the stream must not close it
        hs = Handshake(sock, peer, time.monotonic() + tls.HANDSHAKE_TIMEOUT)
        self._handshakes[sock] = hs
        self._selector.register(sock, selectors.EVENT_READ, hs)
        self._shake(hs)

    def _shake(self, hs: Handshake) -> set[ManagerConnection]:
        """Take the handshake a step; once done (a trusted certificate naming someone), the connection."""
        try:
            hs.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(hs.sock, selectors.EVENT_READ, hs)
            return set()
        except ssl.SSLWantWriteError:
            self._selector.modify(hs.sock, selectors.EVENT_WRITE, hs)
            return set()
        except (ssl.SSLError, OSError) as exc:
            self._end_handshake(hs, tls.handshake_reason(exc), f"TLS handshake failed: {exc}")
            return set()
        name = tls.certificate_name(hs.sock)
        if name is None:
            self._end_handshake(hs, tls.NO_NAME, "its certificate has no common name")
            return set()
        self._end_handshake(hs)
        return {self._connected(ovs.stream.SSLStream(hs.sock, f"pssl:{hs.peer}", 0), name)}

    def _end_handshake(self, hs: Handshake, reason: str | None = None, detail: str = "") -> None:
        """Stop watching a handshake; with a ``reason``, it failed: refuse (log, count) and close."""
        self._handshakes.pop(hs.sock, None)
        self._selector.unregister(hs.sock)
        if reason is not None:
            tls.refuse("ovsdb", reason, hs.peer, detail)
            hs.sock.close()

    def _serve(self, conn: ManagerConnection, io: bool) -> None:
        """I/O on one connection (if ``io``: it has some), then whatever its news or ours call for."""
        try:
            if io:
                conn.run()
                if not conn.alive:
                    self._drop(conn)
                    return
                if conn.buffered():
                    self._again.add(conn)
            self._update(conn, time.monotonic())
        except Exception:  # one connection's trouble (a bug of ours included) must not stop the others
            LOG.exception("ovsdb %s: dropped after an error", conn.name)
            self._drop(conn)

    def _watch(self, conn: ManagerConnection) -> None:
        """Have the selector watch for what the connection waits on: input, and room for queued output.

        After anything that may have sent (a transaction too big for the socket's buffer stays
        queued, and nothing else would wake us to send the rest).
        """
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.wants_write() else 0)
        if events != conn.events:
            conn.events = events
            self._selector.modify(conn.sock, events, conn)

    def _drop(self, conn: ManagerConnection) -> None:
        self._conns.discard(conn)
        self._again.discard(conn)
        self._retrying.discard(conn)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.close()
        self._release(conn)
        with self._lock:
            for name in [n for n, p in self._published.items() if p.connection == conn.name]:
                del self._published[name]
        self._providers_changed()
        LOG.info("ovsdb %s (%s): disconnected", conn.name, ", ".join(b.hv.name for b in conn.bridges.values())
                 or "no hypervisor")

    # -- what each bridge must hold ------------------------------------------------------------------------
    def _refresh_topology(self) -> bool:
        """Take the registered hypervisors; True if they changed (a desired port set may have)."""
        with self.topology.lock:
            # equal records: name, dpid, tunnel IP, gateway_for; their bridge mappings compared apart
            hvs = frozenset((hv, _mappings(hv)) for hv in self.topology.graph.hypervisors())
        if hvs == self._hvs:
            return False
        gateways = frozenset(hv for hv, _ in hvs if is_gateway(hv))
        self._versions[0] += 1
        if gateways != self._gateways:
            self._versions[1] += 1
        self._hvs, self._gateways = hvs, gateways
        self._by_dpid = {hv.datapath_id: hv for hv, _ in hvs}
        self._by_name = {hv.name: hv for hv, _ in hvs}
        return True

    def _writes(self, hv: Hypervisor) -> bool:
        """Whether this instance writes ``hv``'s OVSDB: the cluster's view gives its bridge to us, in good standing."""
        if self.cluster is None:
            return True
        return bool(self.cluster.owns(hv.datapath_id) and getattr(self.cluster, "in_good_standing", True))

    def _key(self, hv: Hypervisor) -> tuple:
        """What ``tunnel_ports(hv)`` depends on: its record, every hypervisor (a gateway's) or the gateways; whether
        we write it; its bridge mappings (the provider bridges its ports and theirs depend on)."""
        return hv, self._versions[0] if is_gateway(hv) else self._versions[1], self._writes(hv), _mappings(hv)

    def _bind(self, conn: ManagerConnection) -> bool:
        """Match the connection's bridges to hypervisors by datapath id; True if a bridge's desired ports changed."""
        bound, todo, seen = {}, [], set()
        # br-int first: if two bridges carried one datapath id, the integration bridge gets the ports
        for uuid, row in sorted(conn.idl.tables["Bridge"].rows.items(), key=lambda i: (i[1].name != "br-int",
                                                                                     i[1].name)):
            dpid = datapath_id(row)
            hv = self._by_dpid.get(dpid) if dpid is not None else None
            if hv is None or hv.name in seen:
                continue
            if conn.certificate_name not in (None, hv.name):
                conn.refused = (f"its certificate names {conn.certificate_name!r}, but its bridge {row.name} carries "
                                f"datapath id {dpid:016x}, hypervisor {hv.name}'s")
                return False
            seen.add(hv.name)
            key, old = self._key(hv), conn.bridges.get(uuid)
            if old is not None and old.key == key:
                bound[uuid] = old
            else:
                bound[uuid] = Bound(hv, key, None)
                # news for the log: a bridge bound, or bound to another hypervisor, or its writer changed
                news = old is None or old.hv.name != hv.name or old.key[2] != key[2]
                todo.append((row.name, bound[uuid], news))
        if todo:
            with self.topology.lock:
                graph = self.topology.graph
                for _name, b, _news in todo:
                    b.desired = ({**overlay_ports(b.hv), **tunnel_ports(graph, b.hv.name, self.timers)}
                                 if b.key[2] else None)
            for name, b, news in todo:
                (LOG.info if news else LOG.debug)(
                    "ovsdb %s: bridge %s is hypervisor %s (%s): %d gateway tunnel(s) wanted", conn.name, name,
                    b.hv.name, "ours to write" if b.desired is not None else "another instance writes it",
                    len(b.desired or {}))
        changed = bool(todo) or bound.keys() != conn.bridges.keys()
        conn.bridges = bound
        return changed

    def _identify(self, conn: ManagerConnection) -> bool:
        """Name the host by its certificate or system-id (:func:`controller.integration.identify`); True if what it
        names, or whether we write that hypervisor, changed. Sets ``conn.refused`` for a system-id naming a hypervisor
        its certificate does not."""
        host = host_row(conn.idl.tables)
        system_id = host.external_ids.get(SYSTEM_ID) if host is not None else None
        hv, why = identify(system_id, conn.certificate_name, self._by_name)
        conn.refused = why
        key = (hv, self._writes(hv)) if hv is not None else None
        if why or key == conn.identity:
            return False
        if hv is not None and (conn.identity is None or conn.identity[0].name != hv.name):
            LOG.info("ovsdb %s: the host is hypervisor %s (its %s)", conn.name, hv.name,
                     "certificate" if conn.certificate_name else SYSTEM_ID)
        conn.identity = key
        return True

    def _claimed(self, conn: ManagerConnection, name: str) -> bool:
        """Whether ``conn`` is the connection that may make and correct hypervisor ``name``'s br-int: the first live
        one claiming it (by name or a bridge's datapath id). Two hosts naming one hypervisor would each make a bridge
        with its datapath id; the second writes nothing, and says so once."""
        owner = self._claims.get(name)
        if owner is None or owner not in self._conns or name not in owner.names():
            owner = self._claims[name] = conn
        if owner is conn:
            conn.duplicate = "" if conn.duplicate == name else conn.duplicate
            return True
        if conn.duplicate != name:
            conn.duplicate = name
            LOG.warning("ovsdb %s: hypervisor %s is claimed by connection %s too (a system-id, certificate or "
                        "bridge datapath id naming it): its br-int is not made or corrected from this one while "
                        "that one is connected", conn.name, name, owner.name)
        return False

    def _release(self, conn: ManagerConnection) -> None:
        """A connection gone: its claims are free, and those waiting on them look again."""
        for name in [n for n, owner in self._claims.items() if owner is conn]:
            del self._claims[name]
        for other in self._conns:
            if other.duplicate:
                other.stale = True
                self._again.add(other)

    def _plan_integration(self, conn: ManagerConnection) -> tuple[str, Any, IntegrationPlan] | None:
        """(hypervisor, its br-int row or None, what it lacks) for a host that names a hypervisor we write, or None."""
        for b in conn.bridges.values():  # (claim what it carries first: a host naming that one must wait)
            self._claimed(conn, b.hv.name)
        if conn.identity is None or not conn.identity[1] or not self._claimed(conn, conn.identity[0].name):
            return None
        hv, host = conn.identity[0], host_row(conn.idl.tables)
        if host is None:  # (a database never initialised: no row to add a bridge to)
            return None
        targets = self.targets.for_connection(conn.kind, conn.sock.getsockname())
        row, todo = plan_integration(conn.idl.tables["Bridge"].rows, hv.datapath_id,
                                     host.external_ids.get(DATAPATH_TYPE), targets)
        if todo.create and not targets:  # (once: it is made once) it waits for an operator's set-controller
            LOG.warning("ovsdb %s: making hypervisor %s's br-int without controllers: no --bridge-controllers, and "
                        "no OpenFlow listener of this connection's kind (%s)", conn.name, hv.name, conn.kind)
        return (hv.name, row, todo) if todo else None

    # -- reconciling ---------------------------------------------------------------------------------------
    def _update(self, conn: ManagerConnection, now: float) -> None:
        """After news on ``conn`` or the topology: bind, publish, finish or start a transaction."""
        idl = conn.idl
        if idl is not None and idl.has_ever_connected():  # its replica is in
            replica_changed = idl.change_seqno != conn.seen_seqno
            conn.seen_seqno = idl.change_seqno
            bound = self._bind(conn)
            named = not conn.refused and self._identify(conn)
            if conn.refused:  # before anything is written or published
                tls.refuse("ovsdb", tls.NAME_MISMATCH, conn.name, conn.refused)
                self._drop(conn)
                return
            if bound or replica_changed:
                self._publish(conn)
            # a connection waiting on another's claim looks again at every tick (that one may be gone)
            conn.stale |= bound or replica_changed or named or bool(conn.duplicate)
            if conn.txn is None or self._finish(conn, now):
                if conn.stale and now >= conn.retry_at:
                    self._reconcile(conn, now)
        self._watch(conn)

    def _reconcile(self, conn: ManagerConnection, now: float) -> None:
        """One transaction making every bound hypervisor's ``tg-`` ports, and its provider bridges' patch ports and
        columns, what they must be (none if they are)."""
        conn.stale = False
        rows = conn.idl.tables["Bridge"].rows
        names = {uuid: {port.name for port in row.ports} for uuid, row in rows.items()}
        plans, claimed = [], set()  # claimed: names this transaction creates on a bridge before
        blocked: dict[str, list[str]] = {}
        for uuid, b in sorted(conn.bridges.items(), key=lambda item: item[1].hv.name):
            if b.desired is None:
                continue
            for row, desired, controllers in wanted(rows, rows[uuid], b.hv, b.desired):
                taken = claimed.union(*(n for other, n in names.items() if other != row.uuid))
                todo = plan(row, desired, taken, controllers)
                plans.append((b.hv.name, row, todo))
                claimed |= set(todo.create)
                blocked.setdefault(b.hv.name, []).extend(todo.blocked)
        self._report_blocked(conn, blocked)
        plans = [entry for entry in plans if entry[2]]
        integration = self._plan_integration(conn)
        if not plans and integration is None:
            return
        txn = Txn(conn.idl)
        names = {n for n, _, _ in plans} | ({integration[0]} if integration else set())
        txn.add_comment("tenantflow: br-int, tunnel and provider ports of " + ", ".join(sorted(names)))
        if integration is not None:
            name, row, todo = integration
            apply_integration(txn, host_row(conn.idl.tables), row, todo)
            conn.txn_integration = (name, todo)
        for _name, bridge, todo in plans:
            apply(txn, bridge, todo)
        conn.txn, conn.txn_plans = txn, [(name, bridge.name, todo) for name, bridge, todo in plans]
        txn.commit()
        self._finish(conn, now)

    def _report_blocked(self, conn: ManagerConnection, blocked: dict[str, list[str]]) -> None:
        """Log the ports a hypervisor cannot have (their name is another bridge's port's), when that changes."""
        blocked = {name: ports for name, ports in blocked.items() if ports}
        for name, ports in blocked.items():
            if conn.blocked.get(name) != ports:
                LOG.warning("ovsdb %s: hypervisor %s: not creating %s: another bridge has a port of that name",
                            conn.name, name, ", ".join(ports))
        conn.blocked = blocked

    def _finish(self, conn: ManagerConnection, now: float) -> bool:
        """Settle the transaction in flight if its answer came; False while it has not."""
        status = conn.txn.commit()  # after the first call: only reports the status
        if status == Txn.INCOMPLETE:
            return False
        error, plans, integration = conn.txn.get_error(), conn.txn_plans, conn.txn_integration
        conn.txn, conn.txn_plans, conn.txn_integration = None, [], None
        conn.stale = True  # look again: a success leaves nothing to do (the update precedes the reply)
        ok = status in (Txn.SUCCESS, Txn.UNCHANGED)
        outcome = "committed" if ok else "retried" if status == Txn.TRY_AGAIN else "failed"
        names = {name for name, _bridge, _todo in plans} | ({integration[0]} if integration else set())
        for name in sorted(names):
            metrics.OVSDB_TRANSACTIONS.labels(name, outcome).inc()
        for name, _bridge, todo in plans:
            if ok:
                for change, count in (("created", len(todo.create)), ("updated", len(todo.update)),
                                      ("deleted", len(todo.delete))):
                    metrics.GATEWAY_PORT_CHANGES.labels(name, change).inc(count)
        summary = ", ".join([f"{name} br-int {todo.summary()}" for name, todo in ([integration] if integration else [])]
                            + [f"{name} {bridge} {todo.summary()}" for name, bridge, todo in plans])
        if ok:
            conn.backoff, conn.retry_at = 0.0, 0.0
            self._retrying.discard(conn)
            LOG.info("ovsdb %s: ports written: %s", conn.name, summary)
            return True
        conn.backoff = min(max(conn.backoff * 2, RETRY[0]), RETRY[1])
        conn.retry_at = now + conn.backoff
        self._retrying.add(conn)
        log = LOG.info if status == Txn.TRY_AGAIN else LOG.warning
        log("ovsdb %s: transaction (%s) %s: %s; again in %.1f s", conn.name, summary, status, error, conn.backoff)
        return True

    def _publish(self, conn: ManagerConnection) -> None:
        """Share each bound bridge's BFD state and provider bridges with the readers (the API, the metrics, the
        OpenFlow side)."""
        rows = conn.idl.tables["Bridge"].rows
        fresh = {b.hv.name: Published(conn.name, b.desired is not None, bfd_of(rows[uuid]),
                                      tuple(provider_bridges(rows, rows[uuid], b.hv)))
                 for uuid, b in conn.bridges.items() if uuid in rows}
        with self._lock:
            for name in [n for n, p in self._published.items() if p.connection == conn.name and n not in fresh]:
                del self._published[name]
            self._published.update(fresh)
        self._providers_changed()

    def _providers_changed(self) -> None:
        """Recollect the provider bridges from what is published; tell the subscribers if they changed."""
        with self._lock:
            providers = {b.datapath_id: b for p in self._published.values() for b in p.providers}
            read = frozenset(self._published)  # (whose databases are read: a held bridge may be ruled out)
            if (providers, read) == (self._providers, self._read):
                return
            self._providers, self._read = providers, read
        for callback in self._provider_subscribers:
            try:
                callback()
            except Exception:  # a subscriber's bug must not stop this thread's round
                LOG.exception("OVSDB manager: provider bridge subscriber failed")


def _mappings(hv: Hypervisor) -> tuple:
    """A hypervisor's bridge mappings, hashable (its record's equality leaves them out)."""
    return tuple(sorted(hv.bridge_mappings.items()))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def start(topology: Any, listen: str, timers: BfdTimers, cluster: Any = None,
          tls_files: tls.TlsFiles | None = None, bridge_targets: BridgeTargets | None = None) -> OvsdbManager | None:
    """The controller's OVSDB manager on ``listen`` (``--ovsdb-listen``; None if it lists nothing)."""
    targets = parse_listen(listen)
    if not targets:
        return None
    return OvsdbManager(topology, targets, timers, cluster, tls_files, bridge_targets).start()

