"""A sync's bundle: encoded, streamed to the switch, committed only if no message of it was refused.

One ONF bundle per sync, ordered and atomic: the deletes (by cookie) and then the adds, streamed
in chunks of ``STREAM_CHUNK`` messages so the switch installs while we encode, then a barrier.
The connection's reader sends the commit as soon as the barrier comes back clean
(controller.switch ``_commit_on_barrier``); a bundle with any refused message is discarded,
never committed, and each error is logged with the flow that caused it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from os_ken.ofproto import ofproto_v1_3 as ofp

from controller import metrics, wire
from controller.syncing import PushResult, _carried, _Waiter
from flows.flow import Flow

LOG = logging.getLogger("tenantflow.switch")  # (the sync's log lines, wherever their code lives)
STREAM_CHUNK = 2048  # bundle messages per socket write while streaming a push


class Bundling:
    """The bundle side of controller.switch.Switch (a mixin: it uses the switch's xids, waiters and sends)."""

    def push(self, delete_cookies: Iterable, add_flows: Iterable[Flow]) -> PushResult:
        """Send deletes (by cookie) then adds in one atomic bundle; commit only if none was refused."""
        start = time.perf_counter()
        result = self._push(delete_cookies, add_flows)
        result.seconds = time.perf_counter() - start
        self.last_push = result
        return result

    def _push(self, delete_cookies: Iterable, add_flows: Iterable[Flow]) -> PushResult:
        bundle_id = next(self._bundle_ids) & 0xFFFFFFFF
        open_xid = next(self._xids)
        by_xid: dict[int, Flow | int] = {}  # what each bundle message carried: a flow, or a cookie to delete
        result = PushResult()
        # Errors may come back while later messages are still being encoded:
        # from here on, every error with one of this push's xids is ours.
        self._inflight_from = open_xid
        try:
            barrier = self._stream(bundle_id, open_xid, delete_cookies, add_flows, by_xid, result)
        finally:
            self._inflight_from = None
        assert barrier.commit is not None
        if barrier.committing:  # the barrier came back clean and the reader sent the commit (_commit_on_barrier)
            return self._committed(result, self._errors.pop(barrier.commit[0], []))
        refused = [(xid, err) for xid in [open_xid, *by_xid] for err in self._errors.pop(xid, [])]
        if refused:
            result.committed = False
            for xid, err in refused:
                text = f"switch {self.hv_name}: {wire.error_text(err)} for {_carried(by_xid.get(xid))}"
                LOG.error("%s", text)
                result.errors.append(text)
            self._bundle_ctrl(bundle_id, ofp.ONF_BCT_DISCARD_REQUEST)
            metrics.BUNDLES.labels(self.hv_name, "discarded").inc()
            return result
        return self._committed(result, self._bundle_ctrl(bundle_id, ofp.ONF_BCT_COMMIT_REQUEST))

    def _committed(self, result: PushResult, commit_errors: list) -> PushResult:
        """The commit's answer: the bundle applied, or (errors) refused whole."""
        if commit_errors:
            result.committed = False
            result.errors += [f"switch {self.hv_name}: commit refused: {wire.error_text(e)}" for e in commit_errors]
            LOG.error("%s", "; ".join(result.errors))
            metrics.BUNDLES.labels(self.hv_name, "failed").inc()
            return result
        metrics.BUNDLES.labels(self.hv_name, "committed").inc()
        metrics.FLOW_MODS.labels(self.hv_name, "add").inc(result.added)
        metrics.FLOW_MODS.labels(self.hv_name, "delete").inc(result.deleted)
        LOG.info("switch %s: committed bundle: %d added, %d deleted", self.hv_name, result.added, result.deleted)
        return result

    def _stream(self, bundle_id: int, open_xid: int, delete_cookies: Iterable, add_flows: Iterable[Flow],
                by_xid: dict[int, object], result: PushResult) -> _Waiter:
        """Encode and send the bundle in chunks, so the switch installs while we encode; then a barrier, whose
        answer is waited for (and the commit's too when the barrier came back clean: see _commit_on_barrier)."""
        chunk = [wire.bundle_ctrl(bundle_id, ofp.ONF_BCT_OPEN_REQUEST, open_xid)]
        xids = self._xids
        for cookie in delete_cookies:
            xid = next(xids)
            chunk.append(wire.bundle_add(bundle_id, self._delete_message(cookie), xid))
            by_xid[xid] = cookie
            result.deleted += 1
        for flow in add_flows:
            xid = next(xids)
            chunk.append(wire.bundle_flow_add(bundle_id, flow, xid))
            by_xid[xid] = flow
            result.added += 1
            if len(chunk) >= STREAM_CHUNK:
                self._send(b"".join(chunk))
                chunk = []
        barrier_xid, commit_xid = next(xids), next(xids)
        chunk.append(wire.barrier_request(barrier_xid))
        waiter = _Waiter(commit=(commit_xid, wire.bundle_ctrl(bundle_id, ofp.ONF_BCT_COMMIT_REQUEST, commit_xid)))
        self._waiters[commit_xid] = waiter  # (first: the commit's reply may come before _send_and_wait returns)
        try:
            return self._send_and_wait(b"".join(chunk), barrier_xid, waiter)
        finally:
            self._waiters.pop(commit_xid, None)

    def _bundle_ctrl(self, bundle_id: int, ctrl_type: int) -> list:
        """Send a bundle control request, wait for its reply, return the errors it drew."""
        xid = next(self._xids)
        self._send_and_wait(wire.bundle_ctrl(bundle_id, ctrl_type, xid), xid)
        return self._errors.pop(xid, [])
