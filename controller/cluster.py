"""Which controller instance masters which bridge: membership in etcd, rendezvous hashing, generation ids.

Every bridge connects to every instance (``set-controller br-int tcp:A tcp:B tcp:C``); exactly
one instance is its master (OpenFlow 1.3 ``OFPT_ROLE_REQUEST``), the others are slaves that
read (port maps) and never write. Who masters what follows from the set of live instances:

- **Membership.** Each instance holds an etcd lease (``ttl`` s, kept alive three times per
  TTL by a process of its own, ``controller.lease_keeper``, so that a busy interpreter does
  not lose it) and, under it, the key ``<prefix>-cluster/members/<instance>``. An instance
  that dies loses its key at once: its keeper revokes the lease when the controller's pipe
  closes, and every instance holds a TCP connection to every other's peer port, and a peer
  that closes it (a process that died closes all its sockets) or refuses it is revoked too.
  A stopped, wedged or cut-off instance loses it when the lease expires (the TTL).
- **Ownership.** The view is the sorted set of members and the etcd revision of its latest
  change. Bridge ``dpid`` belongs to the member with the highest ``blake2b(member, dpid)``
  (rendezvous hashing): every instance computes the same owner from the same view, bridges
  spread evenly, and a member joining or leaving moves only its share.
- **Generation ids.** A master asks with the view's revision as ``generation_id``. Revisions
  only grow, so a newer view's master always outranks an older one's: the switch demotes
  the old master to slave (its writes are refused from then on) and refuses a deposed
  master's claim (``OFPRRFC_STALE``).
- **Claims.** An instance claims master only while its own lease is alive (a keepalive
  answered within the TTL) and the view lists it; otherwise it declares itself slave
  before sending anything else, on every (re)connection (OpenFlow starts each connection
  as EQUAL, which may write).

:class:`Solo` is the single-instance default (the SQLite store): it masters every bridge and
sends no role request at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.lease_keeper import KeeperProcess
from topology.etcd_watch import PrefixWatch, b64, range_end, unb64

LOG = logging.getLogger("tenantflow.cluster")

DEFAULT_TTL = 5  # s (--lease-ttl): how long a stopped, wedged or cut-off instance keeps its bridges. A dead one
# gives them up at once (its keeper revokes the lease), so the TTL buys no speed there; 2 s left leases expiring
# when etcd, on two cores shared with 100 vswitchds and two busy controllers, answered keepalives late.
STANDING_POLL = 0.1  # s: how soon a change of our standing reaches the switches


@dataclass(frozen=True)
class Role:
    """What an instance must be on a bridge: master (with ``generation``) or slave; None: no request."""

    master: bool
    generation: int | None = None


def rank(member: str, dpid: int) -> bytes:
    """A member's rendezvous weight for a bridge (the highest weight owns it)."""
    return hashlib.blake2b(f"{member}/{dpid:016x}".encode(), digest_size=8).digest()


@dataclass(frozen=True)
class View:
    """The live members and the revision of the membership's latest change (the generation id)."""

    revision: int
    members: tuple[str, ...] = ()
    peers: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, hash=False)
    # dpid -> owner, filled as asked: every switch asks its role, GET /sync and the engine ask ownership of every
    # bridge, many times per view (a hash per member each time cost ~8 µs a bridge, 8 ms a pass over 1,000)
    _owners: dict[int, str | None] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def owner(self, dpid: int) -> str | None:
        """The member that masters bridge ``dpid`` (None: no member)."""
        owner = self._owners.get(dpid, "")
        if owner == "":
            owner = self._owners[dpid] = max(self.members, key=lambda m: rank(m, dpid)) if self.members else None
        return owner


class Solo:
    """One instance, masters every bridge: no role requests (OpenFlow's EQUAL), nothing to watch."""

    instance = "solo"

    def role_for(self, dpid: int) -> Role | None:
        """None: send no role request."""
        return None

    def owns(self, dpid: int) -> bool:
        """Every bridge is ours."""
        return True

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Ownership never changes."""

    def status(self) -> dict[str, Any]:
        """Nothing to report but the mode."""
        return {"mode": "solo"}

    def close(self) -> None:
        """Nothing to release."""


class Cluster:
    """This instance's membership in etcd, the current view, and the roles it implies."""

    def __init__(self, store: Any, *, instance: str, peer_host: str = "127.0.0.1", peer_port: int = 0,
                 ttl: int = DEFAULT_TTL, api_url: str = "") -> None:
        self.store, self.instance, self.ttl = store, instance, ttl
        self.prefix = store.prefix.rstrip("/") + "-cluster/members/"
        self.view = View(0)
        self.view_changed_at = 0.0
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._peers: dict[str, socket.socket] = {}
        self.stats = {"revoked_peers": 0, "view_changes": 0, "view_revisions": 0, "standing_lapses": 0,
                      "keeper_restarts": 0}
        self._listener = socket.create_server((peer_host, peer_port))
        self.peer = f"{peer_host}:{self._listener.getsockname()[1]}"
        self.api_url = api_url
        self.keeper = KeeperProcess(getattr(store, "url", ""), ttl=ttl, key=self.prefix + instance,
                                    member={"peer": self.peer, "api": api_url})
        self._watch: PrefixWatch | None = None

    @property
    def lease(self) -> int:
        """Our lease's id (the keeper's; 0 before the first grant)."""
        return int(self.keeper.state.lease)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Cluster:
        """Join: the lease keeper (lease, member key), the members watch, our peer port; wait to see us listed."""
        threading.Thread(target=self._accept_peers, name="cluster-peers", daemon=True).start()
        self.keeper.start(timeout)
        LOG.info("cluster: %s joined with lease %x (peer port %s)", self.instance, self.lease, self.peer)
        revision = self._load_view()
        self._watch = PrefixWatch(self.store.clients, self.prefix, self._on_events, revision, self._load_view,
                                  self.store.timeout, name="cluster-watch")
        threading.Thread(target=self._follow_standing, name="cluster-standing", daemon=True).start()
        deadline = time.monotonic() + timeout
        while self.instance not in self.view.members:
            if time.monotonic() > deadline:
                raise RuntimeError(f"instance {self.instance} did not see itself join the cluster in {timeout} s")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        """Leave at once (our lease revoked by the keeper: the others take our bridges now, not after the TTL)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self.keeper.stop()
        self._listener.close()
        for sock in list(self._peers.values()):
            sock.close()

    # -- the view --------------------------------------------------------------------------------
    def _load_view(self) -> int:
        answer = self.store.request("/kv/range", {"key": b64(self.prefix), "range_end": range_end(self.prefix)})
        peers = {unb64(kv["key"]).decode()[len(self.prefix):]: json.loads(unb64(kv.get("value", "")))
                 for kv in answer.get("kvs", [])}
        revision = int(answer["header"]["revision"])
        self._set_view(View(revision, tuple(sorted(peers)), peers))
        return revision

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        peers = dict(self.view.peers)
        for event in events:
            name = unb64(event["kv"]["key"]).decode()[len(self.prefix):]
            if event.get("type") == "DELETE":
                peers.pop(name, None)
            else:
                peers[name] = json.loads(unb64(event["kv"].get("value", "")))
        revision = int(events[-1]["kv"]["mod_revision"])
        self._set_view(View(revision, tuple(sorted(peers)), peers))

    def _set_view(self, view: View) -> None:
        with self._lock:
            if view.revision <= self.view.revision:
                return
            changed = view.members != self.view.members
            self.view = view
        self.stats["view_revisions"] += 1  # (each a new generation id: the next claim on each bridge carries it)
        if changed:
            self.stats["view_changes"] += 1
            self.view_changed_at = time.time()  # wall clock: what a failover's measure compares with the kill
            LOG.info("cluster: view %d: %s", view.revision, ", ".join(view.members) or "(none)")
            self._dial_peers(view)
            for callback in list(self._callbacks):
                callback()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever the set of members (so ownership) changes."""
        self._callbacks.append(callback)

    # -- roles -----------------------------------------------------------------------------------
    @property
    def in_good_standing(self) -> bool:
        """Our lease surely lives and the view lists us: only then may we claim a bridge."""
        return time.monotonic() < self.keeper.state.alive_until and self.instance in self.view.members

    def owns(self, dpid: int) -> bool:
        """Whether the view gives bridge ``dpid`` to this instance (what it compiles; it claims it in good standing)."""
        return self.view.owner(dpid) == self.instance

    def role_for(self, dpid: int) -> Role:
        """The role to ask bridge ``dpid`` for: master with the view's generation, or slave."""
        view = self.view
        if self.in_good_standing and view.owner(dpid) == self.instance:
            return Role(True, view.revision)
        return Role(False, view.revision)

    def status(self) -> dict[str, Any]:
        """The members, our standing, the view's revision (the generation id) and counters."""
        state = self.keeper.state
        return {"mode": "cluster", "instance": self.instance, "members": list(self.view.members),
                "view_revision": self.view.revision, "view_changed_at": self.view_changed_at,
                "in_good_standing": self.in_good_standing,
                "lease": f"{self.lease:x}", **self.stats, "rejoins": max(0, int(state.joins) - 1),
                "keepalive_max_ms": round(state.keepalive_max_ms, 1),
                "interpreter_stall_max_ms": round(state.beat_age_max_ms, 1),
                "keepalives_held_back": int(state.held_back)}

    # -- following our lease (kept by controller.lease_keeper) ----------------------------------
    def _follow_standing(self) -> None:
        """Tell the switches when our standing changes: lost (slave everywhere) or regained (claim our bridges).

        The keeper extends or ends our standing in shared memory; this thread only notices the
        change (within STANDING_POLL) and brings back a keeper that died.
        """
        standing, joins = self.in_good_standing, self.keeper.state.joins
        while not self._stop.wait(STANDING_POLL):
            if not self.keeper.running and not self._stop.is_set():
                self._restart_keeper()
            now_standing, now_joins = self.in_good_standing, self.keeper.state.joins
            if now_standing != standing or now_joins != joins:
                LOG.info("cluster: lease %x %s", self.lease,
                         "in good standing: claiming our bridges" if now_standing else "lapsed: slave everywhere")
                if standing and not now_standing:
                    self.stats["standing_lapses"] += 1
                standing, joins = now_standing, now_joins
                self._notify()

    def _restart_keeper(self) -> None:
        LOG.error("cluster: the lease keeper exited (%s): starting another, with a new lease",
                  self.keeper.process.returncode if self.keeper.process else "never started")
        self.stats["keeper_restarts"] += 1
        try:
            self.keeper.start()
        except RuntimeError as exc:
            LOG.error("cluster: %s", exc)

    def _notify(self) -> None:
        for callback in list(self._callbacks):
            callback()

    # -- peers: a dead process is seen at once ------------------------------------------------------
    def _accept_peers(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn, None), daemon=True).start()

    def _dial_peers(self, view: View) -> None:
        for name, info in view.peers.items():
            if name == self.instance or name in self._peers or not info.get("peer"):
                continue
            host, _, port = info["peer"].rpartition(":")
            try:
                sock = socket.create_connection((host, int(port)), timeout=1.0)
            except ConnectionRefusedError:
                self._revoke(name, info, "refused our peer connection")
                continue
            except OSError as exc:
                LOG.info("cluster: peer %s unreachable (%s): its lease decides", name, exc)
                continue
            sock.settimeout(None)
            self._peers[name] = sock
            threading.Thread(target=self._hold, args=(sock, (name, info)), daemon=True).start()

    def _hold(self, sock: socket.socket, peer: tuple[str, dict[str, Any]] | None) -> None:
        """Block on a peer connection; when the peer closes it, revoke that peer's lease."""
        try:
            while sock.recv(64):
                pass
        except OSError:
            pass
        finally:
            sock.close()
        if peer is None or self._stop.is_set():
            return
        name, info = peer
        self._peers.pop(name, None)
        if self.view.peers.get(name, {}).get("lease") == info.get("lease"):
            self._revoke(name, info, "closed its peer connection")

    def _revoke(self, name: str, info: dict[str, Any], why: str) -> None:
        """A peer that died: revoke its lease so its bridges move now, not after the TTL."""
        LOG.warning("cluster: %s %s: revoking its lease", name, why)
        self.stats["revoked_peers"] += 1
        try:
            self.store.request("/kv/lease/revoke", {"ID": int(info["lease"])})
        except Exception as exc:  # noqa: BLE001 - already gone, or etcd unreachable: the TTL decides
            LOG.info("cluster: revoking %s's lease: %s", name, exc)
