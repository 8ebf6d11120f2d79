"""One connected integration bridge: what it holds, and how it is brought to what it must hold.

Reconcile, never flush: on connect the switch's flows are read (cookies only:
a cookie is a hash of the flow's content, see flows.flow) and diffed against
the compiled flows; only the difference is sent, inside one atomic, ordered ONF
bundle. A bundle with any rejected message is discarded, never committed, and
each error is logged with the flow that caused it. A controller restart against
an unchanged topology therefore sends nothing at all.

A :class:`Switch` owns one worker thread: every sync of that bridge runs there,
one at a time, so syncs never interleave; replies from the switch arrive on the
connection's reader thread and are handed over through :class:`_Waiter` objects.
The reader also sends a bundle's commit as soon as its barrier comes back clean
(``_commit_on_barrier``): the worker sleeps once per sync, until the commit's reply.

The worker keeps at it until the bridge equals its compiled flows: a sync that fails
for any reason (a bundle discarded or its commit refused, no reply in time, an error
of ours) is retried with exponential backoff and jitter (``RETRY_BASE`` doubling up to
``RETRY_CAP``), and before each retry what the switch really holds is read again (a
refused commit or a timeout leaves it unknown) and the retry compares every cookie.
Changes are coalesced: at most one sync of a bridge runs, and every change that
arrives while it runs (or while a retry waits) sets one pending flag, so any burst of
changes costs at most one more sync, which takes everything that changed up to its
start. A retry is never brought forward by a change (a stream of changes must not
defeat the backoff).

Syncs are bounded: a whole sync (a bridge read on connect or re-read, every cookie
compared, its flows pushed) holds one of ``SYNC_SLOTS`` (4 by default,
``--sync-concurrency``), handed out in arrival order, so 1,000 bridges connecting at once
are read and pushed a few at a time, in order, instead of all encoding at once on two
cores. A change to ready bridges holds one of ``CHANGE_SLOTS`` instead (16 by default,
``--change-concurrency``): such a sync is a little encoding and two round trips, so four
at a time served a change to 41 bridges in ten rounds of round trips, and a change
waited behind the whole syncs of a cold start.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections import Counter as Multiset
from collections.abc import Callable

from os_ken.ofproto import ofproto_v1_3 as ofp

from controller import metrics, monitor, wire
from controller.announcing import Announcing
from controller.bundles import Bundling
from controller.claiming import Claiming, ClaimRound
from controller.cluster import Role
from controller.confirmations import Confirmations
from controller.groups import GROUPS, METERS, SwitchObjects
from controller.icmp import FairLimiter, RateLimiter
from controller.slots import SyncSlots
from controller.syncing import (
    FlowSource,
    PushResult,
    ReplyTimeout,
    RequestRefused,
    RoleSource,
    SwitchGone,
    _learns,
    _Waiter,
    learned_cookies,
)
from flows.dhcp import HYPERVISOR_METER, PORT_BURST, PORT_RATE
from flows.flow import LEARNS, Flow
from flows.nat import FIP_ARP_REPLY_METER, LEARNED_IDLE_TIMEOUT, NEXT_HOP_METER, Announcement
from flows.routing import TTL_METER

LOG = logging.getLogger("tenantflow.switch")
REPLY_TIMEOUT = 60.0
FLOW_MONITOR = True  # ask each mastered bridge for its flow monitor (--flow-monitor; controller.monitor)
SLOT_PATIENCE = 10.0  # seconds a worker waits for its switch in a sync slot before lending the slot out
RETRY_BASE = 0.5  # seconds before the first retry of a failed sync; doubles with each failure...
RETRY_CAP = 30.0  # ...up to this; each wait is drawn from [delay/2, delay] (jitter)
TIMEOUTS_BEFORE_DROP = 3  # consecutive unanswered requests after which the connection is closed
DEFAULT_SYNC_CONCURRENCY = 4
DEFAULT_CHANGE_CONCURRENCY = 16


SYNC_SLOTS = SyncSlots(DEFAULT_SYNC_CONCURRENCY)  # whole syncs: a (re)connected bridge read and compared whole
CHANGE_SLOTS = SyncSlots(DEFAULT_CHANGE_CONCURRENCY)  # a ready bridge taking the flows changed since its last sync
# Notified whenever a switch confirms a sync or goes away: what GET /sync?wait= sleeps on.
SYNCED = threading.Condition()
CONFIRMED = Confirmations()  # ... and the GET /sync?wait= waiters, woken only once all their bridges have
_DIVERGED: set[Switch] = set()  # connected switches whose last sync failed (a retry is pending)
metrics.BRIDGES_DIVERGED.set_function(lambda: len(_DIVERGED))


class Switch(monitor.FlowMonitoring, Announcing, Claiming, Bundling):
    """State and sync worker of one connected hypervisor bridge."""

    _xids = itertools.count(0x70000000)
    _bundle_ids = itertools.count(1)
    COUNTS_AS_HYPERVISOR = True  # in tenantflow_switch_connected (a provider bridge does not: controller.provider)
    _delete_message = staticmethod(wire.flow_delete_cookie)  # a push's deletes name cookies (a provider's: flows)

    def __init__(self, datapath, source: FlowSource,
                 on_ofports: Callable[[Switch, dict[str, int]], None],
                 announce_fn: Callable[[str], list[Announcement]] | None = None, roles: RoleSource | None = None,
                 claims: ClaimRound | None = None):
        self.dp = datapath
        self._claims = claims  # a round of claims the new master's first read waits for (controller.claiming)
        # A cluster's instance (controller.cluster): the role to hold on this bridge, asked for before
        # anything is sent on each connection. None: the only controller, no role request (EQUAL).
        self._roles = roles
        self.role: Role | None = None  # the role the switch granted on this connection
        self.role_granted_at = 0.0
        self._refused: Role | None = None  # a claim the switch found stale (not asked again)
        self._ports_read = False
        self._announce_fn = announce_fn
        self.dpid: int = datapath.id
        self._hv_name: str | None = None
        self._source = source
        self._full_diff = True  # next sync compares every cookie (connect, or after a failed push)
        self.synced_generation = -1  # the engine generation of the flows the switch last confirmed
        self.synced_at = 0.0  # wall clock of the last completed sync, pushed or with nothing to push (0: none yet)
        self.ports_changed = False  # a port-status event came while connecting (see _connect)
        self._learner_flows: set[int] = set()  # cookies of desired flows carrying a learn action
        self._on_ofports = on_ofports
        self.ofports: dict[str, int] = {}  # OVS port name -> OpenFlow port number
        self._inflight_from: int | None = None  # first xid of the bundle (or group mods) being sent
        self.installed: Multiset[int] = Multiset()  # cookie -> how many flows carry it on the switch
        self.groups = SwitchObjects(GROUPS)  # the groups it holds and its flows use (controller.groups)
        self.meters = SwitchObjects(METERS)  # the same of its meters
        self._learners: set[int] = set()  # cookies of the flows the switch may learn (see learned_cookies)
        self._announced: frozenset = frozenset()  # what announce_fn returned after the last committed sync
        self._announce_due = False  # a sync committed: announce what is new once its slot is given back
        self.ready = False
        self.last_push: PushResult | None = None
        # What the switch's meters let through, bounded again here (the same rates: flows.flow.Meter).
        self.icmp_limiter = RateLimiter(TTL_METER.rate, TTL_METER.burst)  # ICMP errors its packet-ins may draw
        self.arp_limiter = RateLimiter(NEXT_HOP_METER.rate, NEXT_HOP_METER.burst)  # ARPs for unresolved next hops
        self.fip_arp_limiter = RateLimiter(FIP_ARP_REPLY_METER.rate, FIP_ARP_REPLY_METER.burst)  # replies relearned
        self.dhcp_limiter = FairLimiter(HYPERVISOR_METER.rate, HYPERVISOR_METER.burst, PORT_RATE,
                                        PORT_BURST)  # DHCP requests: per port, then for the whole switch
        self._waiters: dict[int, _Waiter] = {}
        self._whole: set[int] = set()  # xids whose multipart replies are wanted whole (dump_flows)
        self._errors: dict[int, list] = {}
        # Flows changed on the switch by someone else (controller.monitor), and the cookies to send again.
        self.tampering = monitor.Tampering()
        self._monitoring = False
        self._monitor_xid = -1
        self._slot: SyncSlots | None = None  # the sync slots this worker holds one of, while it does
        self._replace: set[int] = set()
        self._dirty = threading.Condition()
        self._pending = False
        self._alive = True
        self._thread = threading.Thread(target=self._run, name=f"switch-{self.dpid:016x}", daemon=True)
        sock = getattr(datapath, "socket", None)
        if hasattr(sock, "intercept"):  # our connection (controller.connection): replies come straight here
            sock.intercept(self._owns, self._on_message)

    @property
    def hv_name(self) -> str | None:
        """The hypervisor whose bridge this is (None until one is registered with its datapath id)."""
        return self._hv_name

    @hv_name.setter
    def hv_name(self, name: str | None) -> None:
        self._hv_name = name
        if hasattr(self.dp, "label"):  # our datapath (controller.connection): its metrics say which hypervisor
            self.dp.label = name

    @property
    def ports_known(self) -> bool:
        """Whether the port map was read on this connection (port-status events now edit it)."""
        return self.ready or (self._ports_read and not self.mastering)

    def holds(self, generation: int) -> bool:
        """Whether the switch confirmed (by a bundle commit) every change up to engine ``generation``."""
        return self.ready and self.mastering and self.synced_generation >= generation

    @property
    def alive(self) -> bool:
        """False once the connection ended (the switch is stopped)."""
        return self._alive

    # -- called from os-ken's event thread ---------------------------------
    def start(self, hv_name: str | None) -> None:
        """Begin the connect sequence (port map, flow dump, first reconcile) in the worker."""
        self.hv_name = hv_name
        self._thread.start()

    def on_reply(self, xid: int, body, more: bool = False) -> None:
        """A reply (barrier, bundle control, one part of a multipart) for ``xid``."""
        waiter = self._waiters.get(xid)
        if waiter is None:
            return
        if waiter.commit is not None and xid != waiter.commit[0] and self._commit_on_barrier(waiter):
            return  # the commit's reply wakes the worker
        if body is not None:
            waiter.parts.append(body)
        if not more:
            waiter.event.set()

    def on_error(self, xid: int, msg) -> bool:
        """An OpenFlow error for ``xid``: keep it if it answers one of ours (returns True)."""
        if xid == self._monitor_xid:
            if self._monitoring:  # (else its cancel's: no such monitor, the switch had refused it)
                self._monitoring = False
                LOG.warning("switch %s: no flow monitor (%s): flows changed by hand are repaired at its next "
                            "reconnect only", self.label, wire.error_text(msg))
            return True
        waiter = self._waiters.get(xid)
        pushing = self._inflight_from is not None and xid >= self._inflight_from
        if waiter is None and not pushing:
            return False
        self._errors.setdefault(xid, []).append(msg)
        if waiter is not None:
            waiter.event.set()
        return True

    def _commit_on_barrier(self, waiter: _Waiter) -> bool:
        """A bundle's barrier came back: send its commit from here if no message of the bundle was refused.

        Here is the connection's reader thread, which read the bundle's errors before its barrier
        (a switch answers in order): the worker then wakes once per change, for the commit's reply,
        not also in between to send it. False (the worker decides) if a message was refused, or the
        connection cannot write from here (os-ken's own datapath), or the commit could not be sent.
        """
        write = getattr(self.dp, "write_through", None)
        first = self._inflight_from
        if write is None or first is None or any(xid >= first for xid in self._errors):
            return False
        assert waiter.commit is not None
        waiter.committing = True  # before the write: its reply may be read before write() returns
        sent = write(waiter.commit[1])
        if sent is None:  # something is queued before it: after that
            sent = self.dp.send(waiter.commit[1], block=False)
        waiter.committing = bool(sent)
        return waiter.committing

    def _owns(self, xid: int) -> bool:
        """True if a message with ``xid`` answers a request of ours (asked on the reader thread)."""
        inflight = self._inflight_from
        return xid in self._waiters or (inflight is not None and xid >= inflight) or xid == self._monitor_xid

    def _on_message(self, msg: bytes) -> None:
        """A reply or error to one of our requests, straight off the connection's reader thread.

        Barrier and bundle replies are read from their fixed fields, a flow dump for its cookies
        and a group dump for its ids (:data:`controller.wire.FAST_MULTIPART`); only errors and port lists go
        through os-ken's parser. None of them waits in the app's event queue.
        """
        msg_type, xid = msg[1], wire.xid_of(msg)
        try:
            if not xid or (msg_type == ofp.OFPT_MULTIPART_REPLY
                           and wire.multipart_type(msg) == ofp.OFPMP_EXPERIMENTER):
                self._on_monitor(xid, msg)
            elif msg_type in (ofp.OFPT_BARRIER_REPLY, ofp.OFPT_ROLE_REPLY):
                self.on_reply(xid, None)
            elif msg_type == ofp.OFPT_EXPERIMENTER:
                self.on_reply(xid, wire.bundle_ctrl_type(msg))
            elif msg_type == ofp.OFPT_MULTIPART_REPLY and xid in self._whole:
                self.on_reply(xid, msg, bool(msg[11] & ofp.OFPMPF_REPLY_MORE))  # flags: bytes 10-11
            elif msg_type == ofp.OFPT_MULTIPART_REPLY and (read := wire.FAST_MULTIPART.get(wire.multipart_type(msg))):
                values, more = read(msg)  # a flow dump's cookies, a group dump's ids
                self.on_reply(xid, values, more)
            else:
                parsed = wire.parse(self.dp, msg)
                if msg_type == ofp.OFPT_ERROR:
                    metrics.OF_ERRORS.labels(self.label).inc()
                    self.on_error(xid, parsed)
                elif msg_type == ofp.OFPT_MULTIPART_REPLY:
                    self.on_reply(xid, parsed.body, bool(parsed.flags & ofp.OFPMPF_REPLY_MORE))
                else:
                    LOG.warning("switch %s: unexpected message type %d for xid %#x", self.label, msg_type, xid)
        except ValueError as exc:  # malformed: the request fails (and is retried), the connection stays
            if xid:
                metrics.OF_MALFORMED.labels(self.label, "reply").inc()
                self.on_error(xid, exc)
            else:
                metrics.OF_MALFORMED.labels(self.label, "flow_update").inc()
                LOG.warning("switch %s: malformed flow monitor message: %s; reading its flows again", self.label, exc)
                self._tampered("malformed")

    def mark_dirty(self) -> None:
        """Ask the worker to recompile and sync (coalesces bursts of changes)."""
        with self._dirty:
            self._pending = True
            self._dirty.notify()

    def stop(self) -> None:
        """The switch disconnected: end the worker (wherever it waits), wake every waiter."""
        self._alive = False
        self.ready = False
        _DIVERGED.discard(self)
        for waiter in list(self._waiters.values()):
            waiter.event.set()
        self.mark_dirty()
        self._wake_waiters()
        # The connection's reader held our bound methods (switch -> datapath -> socket -> switch):
        # a reference cycle, which a frozen heap never collects (controller.heap). Break it.
        sock = getattr(self.dp, "socket", None)
        if hasattr(sock, "intercept"):
            sock.intercept(None, None)

    def _wake_waiters(self) -> None:
        """This switch confirmed a sync or went away: whoever waits for that (an audit, GET /sync?wait=) hears it."""
        with SYNCED:
            SYNCED.notify_all()
        CONFIRMED.confirmed(self)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True if it has."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def label(self) -> str:
        """The hypervisor name for metrics and logs (the datapath id until one is registered)."""
        return self.hv_name or f"{self.dpid:016x}"

    @property
    def diverged(self) -> bool:
        """True while the last sync failed and a retry is pending."""
        return self in _DIVERGED

    # -- worker ---------------------------------------------------------------
    def _run(self) -> None:
        """Connect, then sync after each batch of changes; retry a failed sync until one succeeds."""
        failures = timeouts = 0
        try:
            while self._alive:
                if failures:
                    self._backoff(failures)
                elif self.ports_known:
                    self._wait_for_change()
                    self._sleep(self.tampering.repair_delay() if self.tampering.pending else 0)
                if not self._alive:
                    break
                if failures:
                    metrics.SYNC_RETRIES.labels(self.label).inc()
                with self._dirty:
                    self._pending = False  # this attempt compiles every change made so far
                try:
                    ok = self._attempt(reread=failures > 0 or self.tampering.pending)
                    timeouts = 0
                except SwitchGone:
                    raise
                except ReplyTimeout as exc:
                    timeouts += 1
                    if timeouts >= TIMEOUTS_BEFORE_DROP:
                        raise
                    LOG.warning("switch %016x (%s): %s; will re-read it and retry", self.dpid, self.hv_name, exc)
                    ok = False
                except Exception as exc:  # any failure of ours is retried too (a bug must not stop the repair)
                    if failures:
                        LOG.error("switch %016x (%s): sync failed again: %r", self.dpid, self.hv_name, exc)
                    else:
                        LOG.exception("switch %016x (%s): sync failed", self.dpid, self.hv_name)
                    ok = False
                failures = 0 if ok else failures + 1
                self._set_diverged(not ok)
        except SwitchGone as exc:
            LOG.info("switch %016x (%s): worker ends: %s", self.dpid, self.hv_name, exc)
        except ReplyTimeout as exc:
            LOG.warning("switch %016x (%s): %s, %d times in a row: closing the connection (it reconnects and is "
                        "reconciled)", self.dpid, self.hv_name, exc, TIMEOUTS_BEFORE_DROP)
            self._drop_connection()
        finally:
            _DIVERGED.discard(self)

    def _attempt(self, reread: bool) -> bool:
        """One sync in a concurrency slot: (re)read the switch if need be, then sync; True if it is equal now.

        A cluster's instance first claims its role; as a slave it only reads the port map (the
        topology's live port status), and syncs nothing.
        """
        if not self._claim_role():
            while not self._ports_read or self.ports_changed:  # (a port came or went while reading)
                self.ports_changed = False
                self._read_ports()
            return True
        if not self.ready and self._claims is not None:
            self._claims.wait()  # the other bridges changing hands claim first (a failover)
        # A first push after a connect is whole even when the read came earlier (a bridge that connected before
        # the engine had built its hypervisor): it waits for a sync slot like the read did.
        whole = reread or not self.ready or self._full_diff
        slots, kind = (SYNC_SLOTS, "whole") if whole else (CHANGE_SLOTS, "change")
        metrics.SYNC_ATTEMPTS.labels(kind).inc()
        with slots:
            self._slot = slots  # lent to others while the switch keeps us waiting (see _wait)
            try:
                if not self._alive:
                    raise SwitchGone("stopped")
                if not self.ready:
                    self._connect()
                elif reread:
                    self._take_tampering()
                    self._read_installed()
                if self.hv_name is None:
                    return True  # nothing to compile yet: the hypervisor's registration marks us dirty
                result = self.sync()
            finally:
                self._slot = None
        if self._announce_due:
            self._announce_due = False
            self._announce()
        if result.committed:
            metrics.SYNC_FLOW_MODS.labels(kind).inc(result.added + result.deleted)
        if not result.committed and self._alive:
            LOG.warning("switch %016x (%s): sync not committed (%d errors); will re-read it and retry",
                        self.dpid, self.hv_name, len(result.errors))
        return result.committed

    def _set_diverged(self, diverged: bool) -> None:
        if diverged and self._alive:
            _DIVERGED.add(self)
            if self.hv_name and self.COUNTS_AS_HYPERVISOR:
                metrics.SWITCH_UP.labels(self.hv_name).set(0)
        else:
            _DIVERGED.discard(self)

    def _backoff(self, failures: int) -> None:
        """Wait before retry number ``failures``; changes wait for the retry, but not a change of role.

        A cluster's new master claims at once even if its last attempt failed (a port read that
        timed out while it was a slave, say): a failover must not wait out a backoff of up to
        RETRY_CAP. Only stop() and a role to claim cut the wait short.
        """
        self._sleep(retry_delay(failures), until_role_changes=True)

    def _sleep(self, seconds: float, until_role_changes: bool = False) -> None:
        """Wait ``seconds``; stop() cuts it short, and so does a new role from the cluster if ``until_role_changes``.

        (A new one: a role that stays unclaimable, its claim failing, must not turn the backoff into a busy loop.)
        """
        deadline = time.monotonic() + seconds
        role = self._roles.role_for(self.dpid) if until_role_changes and self._roles is not None else None
        with self._dirty:
            while self._alive and (left := deadline - time.monotonic()) > 0:
                if role is not None and self._roles.role_for(self.dpid) != role:
                    return
                self._dirty.wait(left)

    def _wait_for_change(self) -> None:
        with self._dirty:
            while not self._pending and self._alive:
                self._dirty.wait()

    def _drop_connection(self) -> None:
        """Close a connection we can no longer keep in sync: the switch reconnects and is reconciled."""
        if self._alive:
            self.ready = False
            self.dp.close()

    def _connect(self) -> None:
        """Read the bridge's port map and flows; then it is ready to be synced.

        A port added or removed while connecting (its port-status event comes before we are
        ready, and the app cannot apply it to a map it does not have yet) sets
        ``ports_changed``: the map is read again once ready, so that no port is lost.
        """
        self.ports_changed = False
        if FLOW_MONITOR:
            self._start_monitor()  # before the read: a change made during it is reported, not lost
        ofports = self._read_installed(with_ports=True)
        LOG.info("switch %016x (%s): %d ports, %d flows installed", self.dpid, self.hv_name, len(ofports),
                 sum(self.installed.values()))
        self.ready = True
        if self.ports_changed:
            LOG.info("switch %016x (%s): ports changed while connecting: reading them again", self.dpid,
                     self.hv_name)
            self._read_ports()

    def _read_ports(self) -> dict[str, int]:
        return self._took_ports(self.request(self.dp.ofproto_parser.OFPPortDescStatsRequest(self.dp, 0)))

    def _took_ports(self, parts: list) -> dict[str, int]:
        """The port map the switch answered with (port name -> OpenFlow port number), now the topology's."""
        ofports = {p.name.decode() if isinstance(p.name, bytes) else p.name: p.port_no
                   for reply in parts for p in reply}
        self._ports_read = True
        self._on_ofports(self, ofports)
        return ofports

    def _read_installed(self, with_ports: bool = False) -> dict[str, int]:
        """Read the cookies of every flow on the switch into ``installed``, and its groups and meters (what it
        really holds); ``with_ports``: its port map too (returned).

        The requests go out together and the switch answers them in order: one round trip, not
        one each (a connect used to wait for four in turn, a thousand bridges four slots at a time).
        """
        self._errors.clear()  # errors a failed attempt left behind answer nothing any more
        parser = self.dp.ofproto_parser
        requests = [parser.OFPFlowStatsRequest(self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0,
                                               parser.OFPMatch()), self.groups.kind.read, self.meters.kind.read]
        if with_ports:
            requests.insert(0, parser.OFPPortDescStatsRequest(self.dp, 0))
        *ports, flows, groups, meters = self.request_all(requests)
        ofports = self._took_ports(ports[0]) if with_ports else {}
        self.installed = Multiset(cookie for part in flows for cookie in part)
        self.groups.took(self, groups)
        self.meters.took(self, meters)
        self._full_diff = True  # the changes taken by a failed sync are gone: compare every cookie
        LOG.debug("switch %016x (%s): %d flows installed", self.dpid, self.hv_name, sum(self.installed.values()))
        return ofports

    def dump_flows(self, build: Callable[[int], bytes]) -> list[bytes]:
        """Ask the switch now (not our memory) for its flows: the reply messages of the multipart request
        ``build(xid)`` makes, whole (controller.audit reads them). From any thread; beside a running sync."""
        xids: list[int] = []

        def claimed(xid: int) -> bytes:
            xids.append(xid)
            self._whole.add(xid)
            return build(xid)

        try:
            return self.request(claimed)
        finally:
            self._whole.difference_update(xids)

    def request(self, msg) -> list:
        """Send a request, an os-ken message or a function of the xid building its bytes (controller.wire), and
        wait for its (possibly multipart) reply bodies."""
        return self.request_all([msg])[0]

    def request_all(self, messages: list) -> list[list]:
        """:meth:`request` for several requests at once: all sent before any reply is waited for (the switch
        answers in order), the reply bodies of each in the same order."""
        xids = [next(self._xids) for _ in messages]
        waiters = [_Waiter() for _ in messages]
        self._waiters.update(zip(xids, waiters, strict=True))  # before anything is sent: a reply may come at once
        try:
            for msg, xid in zip(messages, xids, strict=True):
                if callable(msg):
                    sent = self._alive and self.dp.send(msg(xid))
                else:
                    msg.xid = xid
                    sent = self._alive and self.dp.send_msg(msg)
                if not sent:
                    raise SwitchGone("switch connection closed")
            for xid, waiter in zip(xids, waiters, strict=True):
                self._wait(waiter, "no reply from switch")
                if xid in self._errors:
                    raise RequestRefused(f"switch refused request: {self._errors.pop(xid)}")
            return [waiter.parts for waiter in waiters]
        finally:
            for xid in xids:
                self._waiters.pop(xid, None)

    def _wait(self, waiter: _Waiter, what: str) -> None:
        """Wait for a reply; SwitchGone if the switch went away meanwhile, ReplyTimeout if none came.

        A switch that keeps us waiting longer than SLOT_PATIENCE (hung, SIGSTOPped: TCP keepalive
        does not see a stopped process) gives its sync slot to the next bridge meanwhile, and takes
        one back first when it answers: a few hung switches must not hold every slot for the
        minute of REPLY_TIMEOUT and stop every other bridge's syncs.
        """
        lends = self._slot is not None and threading.current_thread() is self._thread  # (a check's dump: no slot)
        answered = waiter.event.wait(min(REPLY_TIMEOUT, SLOT_PATIENCE) if lends else REPLY_TIMEOUT)
        if not answered and lends and self._alive:
            with self._slot.lent():
                answered = waiter.event.wait(max(0.0, REPLY_TIMEOUT - SLOT_PATIENCE))
        if not self._alive:
            raise SwitchGone("switch disconnected")
        if not answered:
            raise ReplyTimeout(f"{what} within {REPLY_TIMEOUT:g} s")

    def sync(self) -> PushResult:
        """Send the switch what changed in its compiled flows since the last sync (all of it after a connect).

        The flows come from the incremental engine (:class:`FlowSource`): a sync takes the cookies
        that changed since the previous one, under the engine's lock for as long as reading them
        takes, and pushes outside it. Changes made while a push is under way wait in the engine and
        go in the next bundle, so a burst of changes costs one bundle per switch, not one per change.
        """
        if not self.ready or self.hv_name is None:
            return PushResult(committed=False)
        start = time.perf_counter()
        full = self._full_diff
        with self._source.lock:
            if not self._source.compiles(self.hv_name):
                # A bridge just taken over whose flows the engine is still building: never diff it
                # against nothing (that would delete every flow). The build's end wakes us again.
                return PushResult()
            changed = self._source.take_changes(self.hv_name)
            desired_all = self._source.desired(self.hv_name)
            if not full and (changed & self._learner_flows
                             or any(_learns(desired_all.get(c)) for c in changed)):
                full = True  # what the switch may learn changed: recheck every cookie
            if full:
                desired = dict(desired_all)
            else:
                desired = {c: desired_all[c] for c in changed if c in desired_all}
            n_desired = len(desired_all)
            generation = self._source.generation_of(self.hv_name)
        if full:
            learners = learned_cookies(desired.values())
            stale = [c for c, n in self.installed.items() if c not in learners and (c not in desired or n > 1)]
            stale += [c for c in self._learners - learners if c not in self.installed]
            missing = [f for c, f in desired.items() if self.installed.get(c) != 1]
            # Named by someone else's change: maybe modified in place (same cookie), so deleted and added again.
            replace = [c for c in self._replace if c in desired and self.installed.get(c) == 1]
            stale += replace
            missing += [desired[c] for c in replace]
        else:
            learners = self._learners
            stale = [c for c in changed if c not in desired and c in self.installed and c not in learners]
            stale += [c for c, f in desired.items() if self.installed.get(c, 0) > 1]
            missing = [f for c, f in desired.items() if self.installed.get(c) != 1]
        # Before the bundle whose flows use them (the groups only if the meters went in: a refused add fails the sync).
        ref_errors = self.meters.add_for(self, missing) or self.groups.add_for(self, missing)
        if ref_errors:
            result = self.last_push = PushResult(committed=False, errors=ref_errors)
        elif not stale and not missing:
            result = PushResult()
        else:
            result = self.push(stale, missing)
        if result.committed:
            self._commit_installed(full, desired, changed, stale)
            self.groups.committed(self, full, desired, changed)  # only now: deleting a group deletes its flows
            self.meters.committed(self, full, desired, changed)
            if full:
                self._learner_flows = {c for c, f in desired.items() if f.traits & LEARNS}
            self._learners = learners
            self._full_diff = False
            if full:
                self._replace.clear()
            self.synced_generation = generation  # the switch confirmed (commit reply) every change up to it
            self.synced_at = time.time()
            self._wake_waiters()
            self._announce_due = True  # by _attempt, out of the sync slot (it waits for the topology's lock)
            metrics.SYNC_SECONDS.observe(time.perf_counter() - start)
        else:
            self._full_diff = True  # what the switch holds now is unknown: compare everything next time
        if result.committed and self._alive:
            metrics.FLOWS.labels(self.hv_name).set(n_desired)
        # "connected and synced": only a sync that left the switch equal to the
        # compiled flows says so, and only after it (never on connect alone).
        if self._alive:
            metrics.SWITCH_UP.labels(self.hv_name).set(1 if result.committed else 0)
        return result

    def _commit_installed(self, full: bool, desired: dict[int, Flow], changed: set[int], stale: list[int]) -> None:
        """Record what the switch holds after a committed bundle."""
        if full:
            self.installed = Multiset(desired.keys())
            return
        for cookie in stale:
            self.installed.pop(cookie, None)
        for cookie in desired:
            self.installed[cookie] = 1

    def add_learned(self, flow: Flow) -> bool:
        """Write a flow the switch's own learn action would (a learned neighbour), with its idle timeout.

        Only while a synced flow of this switch learns that cookie: a packet-in that arrives after
        the floating IP left would otherwise leave a flow nothing compiled accounts for."""
        if flow.cookie not in self._learners:
            return False
        self._send(wire.learned_flow_add(flow, LEARNED_IDLE_TIMEOUT))
        return True

    def packet_out(self, actions: list, data: bytes) -> None:
        """Send ``data`` into the pipeline from the controller, running ``actions``."""
        self._send(wire.packet_out(actions, data))

    def _send(self, data: bytes) -> None:
        """Queue ``data`` for the switch. Only the worker waits for room; any other thread (the app's, the
        address service's...) never blocks on one switch: the message is dropped if its queue is full."""
        if not self._alive:
            sent = False
        elif not getattr(self.dp, "bounded_send", False):  # os-ken's own datapath: always waits
            sent = self.dp.send(data)
        elif threading.current_thread() is not self._thread:
            sent = self.dp.send(data, block=False)
        elif (written := self.dp.write_through(data)) is not None:  # the worker: itself, if nothing is queued
            sent = written
        else:  # the worker waits for room (flow control), lending its sync slot if the switch is not reading
            sent = self.dp.out.put(data, block=False)
            if not sent and not self.dp.out.closed:
                with self._slot.lent() if self._slot is not None else contextlib.nullcontext():
                    sent = self.dp.send(data)
        if not sent:
            raise SwitchGone("switch connection closed or its send queue full")

    def _send_and_wait(self, data: bytes, xid: int, waiter: _Waiter | None = None) -> _Waiter:
        waiter = self._waiters[xid] = waiter or _Waiter()
        try:
            self._send(data)
            self._wait(waiter, "no reply from switch")
            return waiter
        finally:
            self._waiters.pop(xid, None)

    def send_checked(self, messages: list[Callable[[int], bytes]]) -> list[list]:
        """Send messages outside any bundle (each built from its xid), then a barrier; the errors each one drew."""
        xids = [next(self._xids) for _ in messages]
        barrier_xid = next(self._xids)
        self._inflight_from = xids[0] if xids else barrier_xid  # errors with these xids are ours from now on
        try:
            data = b"".join(build(xid) for build, xid in zip(messages, xids, strict=True))
            self._send_and_wait(data + wire.barrier_request(barrier_xid), barrier_xid)
        finally:
            self._inflight_from = None
        return [self._errors.pop(xid, []) for xid in xids]


def retry_delay(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` failed syncs in a row: RETRY_BASE doubling up to RETRY_CAP, jittered.

    The wait is drawn from [delay/2, delay], so bridges that failed together do not retry together.
    """
    delay = min(RETRY_CAP, RETRY_BASE * 2 ** min(max(failures, 1) - 1, 32))
    return (rng or random).uniform(delay / 2, delay)
