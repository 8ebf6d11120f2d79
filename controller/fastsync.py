"""A change's bundles to ready bridges, written by one thread for every bridge instead of each bridge's worker.

Why: a change to 41 bridges woke 41 sync workers (controller.switch), and each woke again at
its commit's reply: on two cores and a few thousand threads every wake waits for the one
interpreter, and the bench measured 0.4-0.6 ms of worker CPU per bridge (``profile`` phase of
``make bench`` section ``scale``) for work that costs 0.13 ms in one thread. A security-group
rule on 1,000 bridges paid that 1,000 times.

What: when a bridge is marked dirty and its worker has nothing else to do (the bridge is
ready and mastered, no sync runs and no retry waits, no role is to be claimed, no flow changed
by someone else waits for repair), it is offered to :class:`FastSyncs`. Its one thread takes
the bridge's changes from the engine, diffs them against what the switch holds and writes the
bundle (open, deletes, adds, barrier) without waiting for anything; then the next bridge. The
connection's reader sends the commit when the barrier comes back clean, as for the worker's
syncs, and at the commit's reply records what the switch holds (``_fast_answered``). Changes
that come meanwhile wait for that reply and go in one more bundle (coalesced as the worker
coalesces them). Everything else is the worker's, as before: a change whose flows learn or use
groups or meters (their adds wait for replies of their own), one of more than ``FAST_MAX``
messages (the worker streams it), a bundle refused or unanswered within the reply timeout (the
worker re-reads the switch and retries with backoff).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial

from os_ken.ofproto import ofproto_v1_3 as ofp

from controller import metrics, wire
from controller.syncing import PushResult, SyncDiff, _Waiter
from flows.flow import USES_GROUPS, USES_METER

LOG = logging.getLogger("tenantflow.fastsync")
FAST_MAX = 512  # bundle messages: a bigger change is the worker's (it encodes while the switch installs)
SWEEP_INTERVAL = 1.0  # seconds between checks for bundles unanswered past their deadline
IDLE, QUEUED, INFLIGHT = "idle", "queued", "inflight"  # a switch's fast sync: none, offered, its bundle written


class FastSyncs:
    """The one thread that writes the change bundles of every ready bridge (see the module's doc)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queued: dict = {}  # switches offered, in order (a dict as an ordered set)
        self._announcing: dict = {}  # switches whose committed change may have something to announce
        self._deadlines: dict = {}  # switch -> time.monotonic() by which its bundle must be answered
        self._thread: threading.Thread | None = None

    def offer(self, sw) -> None:
        """Write ``sw``'s changes soon (from any thread)."""
        self._put(self._queued, sw)

    def announce(self, sw) -> None:
        """Work out ``sw``'s announcements (gratuitous ARPs) soon: they wait for the topology's lock."""
        self._put(self._announcing, sw)

    def sent(self, sw, timeout: float) -> None:
        """``sw``'s bundle is being written: answered within ``timeout`` seconds, or it is given to its worker."""
        with self._cond:
            self._deadlines[sw] = time.monotonic() + timeout

    def done(self, sw) -> None:
        """``sw``'s bundle was answered (or the switch is gone)."""
        with self._cond:
            self._deadlines.pop(sw, None)

    def _put(self, where: dict, sw) -> None:
        with self._cond:
            where[sw] = None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fast-sync", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            queued, announcing, expired = self._next()
            for sw in expired:
                self._guarded(sw._fast_expired, sw)
            for sw in queued:
                self._guarded(sw._fast_sync, sw)
            for sw in announcing:
                self._guarded(sw._fast_announce, sw)

    def _next(self) -> tuple[list, list, list]:
        """Wait for work: (switches offered, switches to announce for, switches whose bundle is overdue)."""
        with self._cond:
            while True:
                now = time.monotonic()
                expired = [sw for sw, deadline in self._deadlines.items() if deadline <= now]
                for sw in expired:
                    del self._deadlines[sw]
                if self._queued or self._announcing or expired:
                    queued, self._queued = list(self._queued), {}
                    announcing, self._announcing = list(self._announcing), {}
                    return queued, announcing, expired
                self._cond.wait(SWEEP_INTERVAL if self._deadlines else None)

    @staticmethod
    def _guarded(step, sw) -> None:
        try:
            step()
        except Exception:  # one bridge's failure must not stop every other bridge's changes
            LOG.exception("switch %s: change not written by the fast path; its worker takes over", sw.label)
            sw._fast_give_up()


@dataclass
class _FastBundle:
    """One change bundle in flight: what it carries, and what to record once the switch confirms it."""

    diff: SyncDiff
    start: float
    bundle_id: int
    open_xid: int
    barrier_xid: int
    commit_xid: int
    by_xid: dict = field(default_factory=dict)  # xid -> the flow added or the cookie deleted
    result: PushResult = field(default_factory=PushResult)


class FastSyncing:
    """The fast path's side of controller.switch.Switch (a mixin: it uses the switch's state and locks)."""

    def _fast_ready_locked(self) -> bool:
        """Whether the dispatcher may write this bridge's next change (under ``self._dirty``)."""
        return (self._fast is not None and self._worker_idle and not self._pending and self._alive and self.ready
                and self.hv_name is not None and not self._full_diff and not self._replace
                and not self.tampering.pending and self.mastering
                and (self._roles is None or self._roles.role_for(self.dpid) == self.role))

    def _fast_sync(self) -> None:
        """On the dispatcher's thread: write this bridge's changes as one bundle, or leave them to the worker."""
        with self._dirty:
            if self._fast_state != QUEUED:
                return
            if not self._fast_ready_locked():
                self._fast_state = IDLE
                self._wake_worker_locked()
                return
            self._fast_state, self._fast_more = INFLIGHT, False
        start = time.perf_counter()
        diff = self._diff(False)
        if diff is None:  # not built yet: the build's end marks the bridge dirty again
            self._fast_idle(failed=False)
            return
        if self._needs_worker(diff):
            self._handed = diff  # its sync takes this diff (the changes are taken from the engine)
            self._fast_idle(failed=False, to_worker=True)
            return
        metrics.SYNC_ATTEMPTS.labels("fast").inc()
        if not diff.stale and not diff.missing:
            self._record(diff, start)
            self._report(True, diff.n_desired)
            self._fast_idle(failed=False)
            return
        self._fast_write(diff, start)

    def _needs_worker(self, diff: SyncDiff) -> bool:
        """A change the fast path leaves to the worker (see the module's doc)."""
        if diff.full or len(diff.stale) + len(diff.missing) > FAST_MAX:
            return True
        if any(f.traits & (USES_GROUPS | USES_METER) for f in diff.desired.values()):
            return True
        return self.groups.used_by_any(diff.changed) or self.meters.used_by_any(diff.changed)

    def _fast_write(self, diff: SyncDiff, start: float) -> None:
        """Encode the bundle and its barrier, and write them without waiting (the reader takes it from there)."""
        bundle_id = next(self._bundle_ids) & 0xFFFFFFFF
        open_xid = next(self._xids)
        ctx = _FastBundle(diff, start, bundle_id, open_xid, 0, 0)
        messages = [wire.bundle_ctrl(bundle_id, ofp.ONF_BCT_OPEN_REQUEST, open_xid),
                    *self._bundle_messages(bundle_id, diff.stale, diff.missing, ctx.by_xid, ctx.result)]
        ctx.barrier_xid, ctx.commit_xid = next(self._xids), next(self._xids)
        messages.append(wire.barrier_request(ctx.barrier_xid))
        waiter = _Waiter(commit=(ctx.commit_xid, wire.bundle_ctrl(bundle_id, ofp.ONF_BCT_COMMIT_REQUEST,
                                                                  ctx.commit_xid)),
                         on_done=partial(self._fast_answered, ctx))
        # All of it before the write: the replies may be read (and this bundle recorded) before it returns.
        self._fast_ctx = ctx
        self._inflight_from = open_xid
        self._waiters[ctx.barrier_xid] = self._waiters[ctx.commit_xid] = waiter
        self._fast.sent(self, self._reply_timeout())
        data = b"".join(messages)
        written = getattr(self.dp, "write_nowait", None)
        sent = written(data) if written is not None else None
        if sent is None:  # something is queued for the switch, or another thread is writing: after that
            sent = self.dp.send(data, block=False)
        if not sent:  # the connection is closing (or its queue is full): the worker finds out
            self._fast_abandon(ctx, "connection closed or its send queue full")

    def _fast_answered(self, ctx: _FastBundle, xid: int) -> None:
        """The switch answered the bundle's barrier (and a message was refused) or its commit; on the reader."""
        if not self._fast_take(ctx):
            return
        result = ctx.result
        if xid == ctx.commit_xid:
            result = self._committed(result, self._errors.pop(ctx.commit_xid, []))
        else:  # its barrier: some message was refused (or the commit could not be written from there)
            result.committed = False
            result.errors += self._refusals(ctx.open_xid, ctx.by_xid)
            self._discard_quietly(ctx.bundle_id)
        result.seconds = time.perf_counter() - ctx.start
        self.last_push = result
        if result.committed:
            metrics.SYNC_FLOW_MODS.labels("fast").inc(result.added + result.deleted)
            self._record(ctx.diff, ctx.start)
            self._report(True, ctx.diff.n_desired)
            self._fast.announce(self)
        else:
            LOG.warning("switch %016x (%s): change not committed (%d errors); will re-read it and retry",
                        self.dpid, self.hv_name, len(result.errors))
            self._full_diff = True
            self._report(False, ctx.diff.n_desired)
        self._fast_idle(failed=not result.committed)

    def _fast_take(self, ctx: _FastBundle) -> bool:
        """Whether ``ctx`` is still the bundle in flight (then it no longer is); once per bundle, whoever asks."""
        with self._dirty:
            if self._fast_ctx is not ctx:
                return False
            self._fast_ctx = None
        self._fast.done(self)
        self._waiters.pop(ctx.barrier_xid, None)
        self._waiters.pop(ctx.commit_xid, None)
        self._inflight_from = None
        return True

    def _fast_expired(self) -> None:
        """On the dispatcher: no answer within the reply timeout; the worker re-reads the switch and retries."""
        ctx = self._fast_ctx
        if ctx is None or not self._fast_take(ctx):
            return
        LOG.warning("switch %016x (%s): no reply to a change's bundle within %g s; will re-read it and retry",
                    self.dpid, self.hv_name, self._reply_timeout())
        self._full_diff = True
        self._fast_idle(failed=True)

    def _fast_abandon(self, ctx: _FastBundle, why: str) -> None:
        if self._fast_take(ctx):
            LOG.debug("switch %016x (%s): change bundle not written: %s", self.dpid, self.hv_name, why)
            self._full_diff = True
            self._fast_idle(failed=True)

    def _fast_give_up(self) -> None:
        """A bug of ours on the fast path: whatever was taken, the worker compares every cookie."""
        ctx = self._fast_ctx
        if ctx is not None:
            self._fast_take(ctx)
        self._full_diff = True
        self._fast_idle(failed=True)

    def _fast_idle(self, failed: bool, to_worker: bool = False) -> None:
        """The fast sync is over: the next change goes the fast way again, or to the worker (``failed``: as a
        failed sync, retried after a backoff and a re-read)."""
        offer = False
        with self._dirty:
            self._fast_state = IDLE
            more, self._fast_more = self._fast_more, False
            if failed:
                self._fast_failed = True
            if failed or to_worker or (more and not self._fast_ready_locked()):
                self._wake_worker_locked()
            elif more:
                self._fast_state, offer = QUEUED, True
            self._dirty.notify_all()  # a worker waiting for the fast path to end
        if offer:
            self._fast.offer(self)

    def _fast_stop(self) -> None:
        """The switch disconnected: nothing in flight any more."""
        ctx = self._fast_ctx
        if ctx is not None:
            self._fast_take(ctx)
        with self._dirty:
            self._fast_state = IDLE
            self._dirty.notify_all()

    def _fast_announce(self) -> None:
        with contextlib.suppress(ConnectionError):  # gone: a reconnect announces everything again
            self._announce()

    def _discard_quietly(self, bundle_id: int) -> None:
        """Discard a bundle that will not be committed (its reply answers nobody; a reconnect forgets it anyway)."""
        xid = next(self._xids)
        self._waiters[xid] = _Waiter(on_done=lambda _xid: (self._waiters.pop(xid, None), self._errors.pop(xid, None)))
        metrics.BUNDLES.labels(self.hv_name, "discarded").inc()
        with contextlib.suppress(ConnectionError):
            self._send(wire.bundle_ctrl(bundle_id, ofp.ONF_BCT_DISCARD_REQUEST, xid))
