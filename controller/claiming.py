"""A cluster's instance claims its role on a bridge before it sends anything else (a mixin of
:class:`controller.switch.Switch`; the roles come from :mod:`controller.cluster`).

OpenFlow 1.3 role requests carry a generation id: the switch refuses a claim older than one
it granted (``OFPRRFC_STALE``), and makes the previous master a slave when a newer one claims.
So a deposed master can never write, whichever way it comes back (see ``controller.cluster``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from os_ken.ofproto import ofproto_v1_3 as ofp

from controller import metrics
from controller.cluster import Role
from controller.syncing import RequestRefused, RoleSource

LOG = logging.getLogger("tenantflow.switch")
CLAIM_WAIT = 2.0  # s at most a new master's read waits for the other bridges' claims (ClaimRound)


class ClaimRound:
    """While bridges change hands, the new masters' reads wait until the role claims are answered.

    A failover's claims are round trips: each wakes a worker and a connection's reader for a
    moment. Reading a gained bridge's ~2,000 flows holds the GIL for milliseconds at a time, and
    with such a thread running every other thread waits CPython's switch interval (5 ms) for the
    GIL: 500 claims queued behind the first reads took seconds. So the reads (and the build of
    the gained bridges' flows) start once every claim is answered, or after CLAIM_WAIT.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()

    def wait(self) -> None:
        """Wait (at most CLAIM_WAIT) until the round ends."""
        self._open.wait(CLAIM_WAIT)

    def run(self, switches: list[Claiming]) -> float:
        """Wake ``switches`` to claim what a new view gives: those changing hands (role_flips) first, the others
        (a new generation of the same role) once those are answered. Returns the deadline (CLAIM_WAIT from now)
        the caller may wait for every claim until (:func:`await_claims`)."""
        flipping = [sw for sw in switches if sw.role_flips]
        deadline = time.monotonic() + CLAIM_WAIT
        self._open.clear()  # new masters wait before reading...
        try:
            for sw in flipping:
                sw.mark_dirty()
            await_claims(flipping, deadline)
        finally:
            self._open.set()  # ...until every orphan's claim is answered (or CLAIM_WAIT passed)
        flipped = set(flipping)
        for sw in switches:
            if sw not in flipped:
                sw.mark_dirty()
        return deadline


def await_claims(switches: list[Claiming], deadline: float) -> None:
    """Wait until each of ``switches`` holds the role the cluster gives this instance (or ``deadline``)."""
    while time.monotonic() < deadline and not all(sw.role_settled for sw in switches):
        time.sleep(0.005)


class Claiming:
    """The role this instance holds on one bridge. The switch sets ``_roles`` (None: the only controller, no role
    request), ``role``, ``role_granted_at``, ``_refused``, and has ``dp``, ``dpid``, ``hv_name``, ``ready``,
    ``_alive``, ``request`` and ``_set_diverged``."""

    _roles: RoleSource | None
    role: Role | None
    role_granted_at: float
    _refused: Role | None
    dp: object
    dpid: int
    hv_name: str | None
    ready: bool
    _alive: bool
    request: Callable[[object], list]
    mark_dirty: Callable[[], None]
    _set_diverged: Callable[[bool], None]
    _stop_monitor: Callable[[], None]

    @property
    def mastering(self) -> bool:
        """Whether this instance keeps the bridge's flows (always, unless it is one of a cluster's)."""
        return self._roles is None or (self.role is not None and self.role.master)

    @property
    def role_flips(self) -> bool:
        """Whether the cluster now gives this instance the other role than the switch granted (or none was granted):
        a failover's orphan, a bridge handed away; not a mere new generation of the same role."""
        wanted = self._roles.role_for(self.dpid) if self._roles is not None else None
        return wanted is not None and self._alive and (self.role is None or self.role.master != wanted.master)

    @property
    def role_settled(self) -> bool:
        """Whether the switch holds the role the cluster gives this instance now (or was refused it, or is gone)."""
        wanted = self._roles.role_for(self.dpid) if self._roles is not None else None
        return wanted is None or wanted in (self.role, self._refused) or not self._alive

    def _claim_role(self) -> bool:
        """Hold the role the cluster gives this instance on the bridge; True if it is the master."""
        wanted = self._roles.role_for(self.dpid) if self._roles is not None else None
        if wanted is None:
            return True
        if wanted == self.role or wanted == self._refused:
            return self.mastering
        parser = self.dp.ofproto_parser  # type: ignore[attr-defined]
        request = parser.OFPRoleRequest(self.dp, ofp.OFPCR_ROLE_MASTER if wanted.master else ofp.OFPCR_ROLE_SLAVE,
                                        wanted.generation or 0)
        try:
            self.request(request)
        except RequestRefused as exc:  # OFPRRFC_STALE: a master of a newer view got there first
            LOG.info("switch %016x (%s): role %s (generation %s) refused: %s", self.dpid, self.hv_name,
                     "master" if wanted.master else "slave", wanted.generation, exc)
            self._refused = wanted
            if self.role is not None and self.role.master:
                self.role = Role(False, wanted.generation)  # it demoted us when the newer master came
            return False
        was_master = self.role is not None and self.role.master
        self.role, self._refused = wanted, None
        if not (wanted.master and was_master):  # master since: a new generation of the same role is not a new grant
            self.role_granted_at = time.time()  # wall clock: what a failover's measure compares with the kill
        metrics.ROLE_CHANGES.labels("master" if wanted.master else "slave").inc()
        LOG.info("switch %016x (%s): %s (generation %s)", self.dpid, self.hv_name,
                 "master" if wanted.master else "slave", wanted.generation)
        if not (wanted.master and was_master):
            self.ready = False  # a new master reads what the bridge holds before it changes anything
        if not wanted.master:
            self._set_diverged(False)
            self._stop_monitor()
        return wanted.master
