"""One hypervisor's ovsdb-server connected to the controller (its OVSDB manager): the listeners, the schema
handshake and the IDL replica over a connection the server opened.

Why our own listeners and IDL subclass: ``ovs.jsonrpc.Session.open("ptcp:...")`` keeps a single
connection (a new one replaces the old), so the listeners are ours (:class:`ovs.stream.PassiveStream`
over sockets we bind, with a deep backlog), and each accepted stream first has its schema fetched,
then gets its own :class:`ovs.db.idl.Idl` whose session wraps that stream and never reconnects (the
server reconnects, and the new connection gets a new IDL). :mod:`controller.ovsdb` serves them all
from one thread.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import selectors
import socket
import ssl
import warnings
from dataclasses import dataclass
from typing import Any

from controller.integration import IntegrationPlan
from controller.tunnels import DATABASE, MONITORED, Plan
from topology.model import Hypervisor

with warnings.catch_warnings():
    # ovs.poller imports eventlet when it is installed (etcd3gw brings it), which warns it is deprecated
    warnings.simplefilter("ignore")
    import ovs.db.idl
    import ovs.jsonrpc
    import ovs.stream

LOG = logging.getLogger("tenantflow.ovsdb")

BACKLOG = 1024  # hundreds of hypervisors connect at once when the controller starts
KEEPALIVE = (30, 10, 3)  # TCP keepalive (idle s, interval s, probes), as on the OpenFlow connections

Txn = ovs.db.idl.Transaction

# -- listening ------------------------------------------------------------------------------------
def parse_listen(text: str) -> list[str]:
    """``--ovsdb-listen``'s targets: ``pssl:PORT[:IP]``, ``ptcp:PORT[:IP]`` and ``punix:PATH``, by spaces or commas.

    OVS's own syntax (``ovsdb-server --remote``): ``pssl:6640`` listens with TLS on every address,
    ``ptcp:6640:127.0.0.1`` in plain TCP on one (``ptcp:6640:[::1]`` for IPv6). ValueError if one is none of them.
    """
    targets = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    for target in targets:
        _address(target)
    return targets


def _address(target: str) -> tuple[int, Any]:
    """A listen target's socket family and bind address."""
    kind, _, rest = target.partition(":")
    if kind == "punix" and rest:
        return socket.AF_UNIX, rest
    if kind in ("ptcp", "pssl"):
        port, _, host = rest.partition(":")
        host = host.strip("[]") or "0.0.0.0"
        if port.isdigit() and int(port) < 65536:
            return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, int(port))
    raise ValueError(f"{target!r} is not an OVSDB listen target (pssl:PORT[:IP], ptcp:PORT[:IP] or punix:PATH)")


def open_listener(target: str) -> ovs.stream.PassiveStream:
    """Listen on ``target``; OSError if it cannot be bound (the port is taken...).

    Our own socket in a :class:`ovs.stream.PassiveStream`: its ``open`` takes ``ptcp:IP:PORT``
    (not OVS's ``ptcp:PORT:IP``), listens with a backlog of 64 and blocks on accept.
    """
    family, address = _address(target)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            os.makedirs(os.path.dirname(os.path.abspath(address)), exist_ok=True)
            if os.path.exists(address):
                os.unlink(address)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if family == socket.AF_UNIX:
            os.chmod(address, 0o660)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return ovs.stream.PassiveStream(sock, target, None)


def keepalive(sock: socket.socket) -> None:
    """TCP keepalive on an accepted connection: we send no echo requests, a dead host is found by TCP."""
    idle, interval, count = KEEPALIVE
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


# -- one connection -------------------------------------------------------------------------------
def _schema_helper(schema_json: dict) -> ovs.db.idl.SchemaHelper:
    """The server's schema cut down to :data:`MONITORED`."""
    helper = ovs.db.idl.SchemaHelper(None, schema_json)
    for table, columns in MONITORED.items():
        helper.register_columns(table, columns)
    return helper


class _AcceptedIdl(ovs.db.idl.Idl):
    """An IDL over a connection the database server opened to us (we are its manager)."""

    def __init__(self, rpc: ovs.jsonrpc.Connection, helper: ovs.db.idl.SchemaHelper) -> None:
        super().__init__(rpc.name, helper, probe_interval=0)  # its own session is never run: replaced here
        session = ovs.jsonrpc.Session.open_unreliably(rpc)
        session.rpc = rpc  # the Python open_unreliably() (ovs 4.0) drops the connection it wraps; C keeps it
        # The server probes us (its Manager inactivity_probe) and Session.recv() answers; a dead host is
        # TCP keepalive's to find. Our own probes would need a timer per connection in the loop.
        session.reconnect.set_probe_interval(0)
        self._session = session

    def restart_fsm(self) -> None:
        """Ask for the monitor at once, without watching the ``_Server`` database first.

        The IDL watches ``_Server`` to follow a clustered database's leader; a manager
        connection is one standalone server's own, and ``_Server``'s Database row carries the
        whole schema again as text: with the ``ovs`` wheel's pure-Python JSON parser that was
        a third of each connection's set-up CPU (measured: 200 connections, 17.6 -> 10 ms each).
        """
        self.sync_conditions()
        self._Idl__send_monitor_request()  # ovs 4.0's (pinned) name-mangled step; tests/test_ovsdb.py covers it


@dataclass
class Bound:
    """A bridge of a connection that is a registered hypervisor's, and what it must hold."""

    hv: Hypervisor
    key: tuple  # what ``desired`` was computed from (see OvsdbManager._key)
    desired: dict[str, dict[str, str]] | None  # its tg- ports; None: another instance writes it


class ManagerConnection:
    """One ovsdb-server connected to us: the schema handshake, then an IDL replica of :data:`MONITORED`."""

    def __init__(self, stream: ovs.stream.Stream, number: int, certificate_name: str | None = None) -> None:
        self.name = f"{stream.name}#{number}"
        self.certificate_name = certificate_name  # the hypervisor its TLS certificate names (None: no TLS)
        self.sock: socket.socket = stream.socket
        self.rpc = ovs.jsonrpc.Connection(stream)
        self.idl: _AcceptedIdl | None = None
        self.events = selectors.EVENT_READ  # what the selector watches its socket for
        self.bridges: dict[Any, Bound] = {}  # Bridge row uuid -> its hypervisor
        self.seen_seqno = 0  # the IDL's change_seqno the last plan saw
        self.stale = True  # a plan must look again (the replica or what is desired changed)
        self.txn: Txn | None = None  # in flight
        self.txn_plans: list[tuple[str, str, Plan]] = []  # (hypervisor, bridge, what the transaction in flight does)
        self.blocked: dict[str, list[str]] = {}  # hypervisor -> ports it cannot have (logged once)
        self.retry_at = 0.0
        self.backoff = 0.0
        self.refused = ""  # why its identity is refused (its certificate names another hypervisor)
        self.identity: tuple[Hypervisor, bool] | None = None  # the hypervisor it names itself, whether we write it
        self.duplicate = ""  # a hypervisor another connection claims first (logged once)
        self.txn_integration: tuple[str, IntegrationPlan] | None = None  # (hypervisor, br-int's plan) in flight
        request = ovs.jsonrpc.Message.create_request("get_schema", [DATABASE])
        self._schema_id = request.id
        self.rpc.send(request)

    @property
    def kind(self) -> str:
        """How the host reached us: ``pssl``, ``ptcp`` or ``punix`` (the listener's kind)."""
        if isinstance(self.sock, ssl.SSLSocket):
            return "pssl"
        return "punix" if self.sock.family == socket.AF_UNIX else "ptcp"

    def names(self) -> set[str]:
        """The hypervisors it claims: the one it names itself, and those whose datapath id a bridge of it carries."""
        return {b.hv.name for b in self.bridges.values()} | ({self.identity[0].name} if self.identity else set())

    @property
    def alive(self) -> bool:
        """Whether the connection is still open."""
        return self.rpc.get_status() == 0

    def run(self) -> None:
        """Send what is queued, take in what arrived (never blocks)."""
        if self.idl is None:
            self._handshake()
        else:
            self.idl.run()

    def wants_write(self) -> bool:
        """Whether output waits for the socket to take it."""
        return self.rpc.get_backlog() > 0

    def buffered(self) -> bool:
        """Whether input was read off the socket but not processed yet (the IDL takes 50 messages a run).

        Under TLS also what the TLS layer decrypted and holds: the selector cannot see it.
        """
        return bool(self.rpc.input) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    def _handshake(self) -> None:
        """Wait for the schema; with it, start the IDL (which asks the server for its monitor)."""
        self.rpc.run()
        while self.alive:
            error, msg = self.rpc.recv()
            if error:
                return  # nothing more yet (EAGAIN), or the end (the status says so)
            if msg.type == ovs.jsonrpc.Message.T_REQUEST and msg.method == "echo":
                self.rpc.send(ovs.jsonrpc.Message.create_reply(msg.params, msg.id))
            elif msg.id == self._schema_id:
                if msg.type != ovs.jsonrpc.Message.T_REPLY:
                    LOG.warning("ovsdb %s: no %s database: %s", self.name, DATABASE, msg.error)
                    self.rpc.error(errno.EPROTO)
                    return
                self.idl = _AcceptedIdl(self.rpc, _schema_helper(msg.result))
                self.idl.run()
                return

    def system_id(self) -> str:
        """The host's ``external_ids:system-id`` (Open_vSwitch table), or its connection name."""
        if self.idl is not None:
            for row in self.idl.tables["Open_vSwitch"].rows.values():
                return row.external_ids.get("system-id", self.name)
        return self.name

    def close(self) -> None:
        """Close the connection (the server reconnects after its back-off)."""
        if self.idl is not None:
            self.idl.close()
        elif self.rpc.stream is not None:
            self.rpc.close()


@dataclass
class Handshake:
    """A TLS connection whose handshake is under way (pssl:)."""

    sock: ssl.SSLSocket
    peer: str
    deadline: float
