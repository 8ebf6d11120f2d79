"""A throwaway etcd cluster on 127.0.0.1 for tests and labs: N ``etcd`` members as our child processes.

``with EtcdCluster(3) as cluster:`` starts one static cluster (``--initial-cluster``, state
``new``, a token unique to the object) and waits until a quorum serves a linearizable read.
Its work dir (``m0/`` data dir, ``m0.log``, ``m1/`` ...) is a fresh temp dir, under
``workdir`` if given, else under ``/dev/shm`` when writable (a loaded disk's fdatasync
would stretch every raft round); stop() removes it. Logs are appended across restarts;
errors quote their tails.

Timing: ``--heartbeat-interval 100 --election-timeout 1000``, pinned (also etcd's
defaults): a dead leader is replaced in 1-2 s (raft randomises the timeout in [1, 2) s),
while a member starved of CPU for most of a second on a loaded 2-core machine still
does not start a spurious election, as a lower timeout would risk. ``--pre-vote`` (off
by default in 3.4) keeps a lone survivor or a rejoining member from bumping the term
and unseating a healthy leader.

Members start from the thread that calls start() (keep it alive while the cluster is
up): with ``setpriv --pdeathsig KILL`` the kernel kills them if that thread dies. stop()
kills them by PID only, reaps them and removes the work dir, also on an error or Ctrl-C;
each member has its own session, so a terminal's Ctrl-C reaches only us. At interpreter
exit a cluster still up is stopped too (atexit).

Members get no ``ETCD_*`` variable but ``ETCD_UNSUPPORTED_ARCH`` (needed on architectures
etcd does not officially support): etcd 3.4 reads every flag from ``ETCD_<FLAG>`` too,
exits when one duplicates a command-line flag ("conflicting environment variable ... is
shadowed") and silently uses the others.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import requests

from apps.lab.scale import deferred_signals

if TYPE_CHECKING:
    import etcd3gw

HEARTBEAT_MS = 100
# One API write is one transaction: deleting a network with its ports, addresses and unique
# keys takes more than etcd's default 128 operations (topology.store_etcd says the same).
MAX_TXN_OPS = 10000
ELECTION_MS = 1000
_HOST = "127.0.0.1"
_DEATHSIG = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
_KEEP_ENV = {"ETCD_UNSUPPORTED_ARCH"}
_PROBE_KEY = "X19ldGNkY2x1c3Rlcl9oZWFsdGhfXw=="  # base64("__etcdcluster_health__")


class EtcdError(RuntimeError):
    """The cluster cannot be started, reached or stopped as asked."""


@dataclass
class _Member:
    """One member: its name, ports, data dir, log and (while it runs) its process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    proc: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return f"http://{_HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{_HOST}:{self.peer_port}"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free just now (all bound at once to port 0)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind((_HOST, 0))
        return [s.getsockname()[1] for s in socks]


class EtcdCluster:
    """N etcd members on 127.0.0.1 as one static cluster; a context manager (see the module doc)."""

    def __init__(self, members: int = 1, *, workdir: str | None = None, base_port: int | None = None,
                 binary: str = "etcd") -> None:
        """``members`` etcd processes; ports ``base_port + 2i`` (client) and ``+ 1`` (peer), else free ones."""
        if members < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self.size = members
        self.parent_dir = workdir
        self.base_port = base_port
        self.binary = binary
        self.token = f"etcdcluster-{uuid.uuid4().hex}"
        self.workdir = ""
        self.members: list[_Member] = []
        self.session = requests.Session()
        self.session.trust_env = False  # an http_proxy must never see 127.0.0.1

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member and wait until the cluster is healthy; on any failure stop it all and raise."""
        if self.members:
            raise EtcdError("this cluster is already started")
        atexit.register(self.stop)  # a script that forgets stop() still leaves no work dir behind
        try:
            self._layout()
            for i in range(self.size):
                self._spawn(i, "new")
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _layout(self) -> None:
        """Make the work dir and choose each member's ports and paths."""
        parent = self.parent_dir or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="etcd-", dir=parent)
        if self.base_port is None:
            ports = free_ports(2 * self.size)
        else:  # a taken port makes its member exit at once: start() then raises with its log
            ports = list(range(self.base_port, self.base_port + 2 * self.size))
        self.members = [_Member(f"m{i}", ports[2 * i], ports[2 * i + 1], os.path.join(self.workdir, f"m{i}"),
                                os.path.join(self.workdir, f"m{i}.log")) for i in range(self.size)]

    def _argv(self, m: _Member, state: str) -> list[str]:
        """The member's command line: everything on flags, nothing from a config file."""
        cluster = ",".join(f"{p.name}={p.peer_url}" for p in self.members)
        return [*_DEATHSIG, self.binary, "--name", m.name, "--data-dir", m.data_dir,
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", self.token, "--heartbeat-interval", str(HEARTBEAT_MS),
                "--election-timeout", str(ELECTION_MS), "--pre-vote", "--max-txn-ops", str(MAX_TXN_OPS),
                "--logger", "zap", "--log-outputs", "stderr"]

    def _spawn(self, i: int, state: str) -> None:
        """Start member ``i`` as our child, its output appended to its log."""
        m = self.members[i]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD") or k in _KEEP_ENV}
        with open(m.log_path, "a") as log:
            log.write(f"--- etcdcluster: starting {m.name} (initial-cluster-state {state}) ---\n")
            log.flush()
            m.proc = subprocess.Popen(self._argv(m, state), env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        """SIGKILL every member by PID (their data is thrown away), reap them, remove the work dir. Idempotent."""
        with deferred_signals():
            for i, m in enumerate(self.members):
                if m.proc is not None:
                    self._end(i, signal.SIGKILL, 5.0)
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""
            self.members = []
            self.session.close()
        atexit.unregister(self.stop)

    # -- members --------------------------------------------------------------------------------
    def _end(self, i: int, sig: int, timeout: float) -> None:
        """Send ``sig`` to member ``i`` (our child, by PID), wait up to ``timeout`` s, then SIGKILL; reap it."""
        proc = self._member(i).proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)  # our child, not yet reaped: its PID cannot be anyone else's
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.members[i].proc = None

    def _member(self, i: int) -> _Member:
        if not 0 <= i < len(self.members):
            raise EtcdError(f"no member {i} (the cluster has {len(self.members)} running or stopped)")
        return self.members[i]

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (a crash: no leadership transfer) and reap it."""
        self._end(i, signal.SIGKILL, 5.0)

    def stop_member(self, i: int, timeout: float = 10.0) -> None:
        """SIGTERM member ``i`` (a leader hands over first), SIGKILL after ``timeout`` s; reap it."""
        self._end(i, signal.SIGTERM, timeout)

    def restart(self, i: int) -> None:
        """Start stopped member ``i`` again on its data dir (state ``existing``); no wait (see wait_healthy)."""
        m = self._member(i)
        if m.proc is not None and m.proc.poll() is None:
            raise EtcdError(f"member {i} is running (pid {m.proc.pid})")
        self._spawn(i, "existing")

    # -- what runs where ------------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL, ``http://127.0.0.1:PORT``, running or not, in member order."""
        return [m.client_url for m in self.members]

    @property
    def url(self) -> str:
        """The controller's ``--store`` form: ``etcd://127.0.0.1:P1,127.0.0.1:P2,...``."""
        return "etcd://" + ",".join(f"{_HOST}:{m.client_port}" for m in self.members)

    @property
    def member_pids(self) -> list[int | None]:
        """Each member's PID, None for one that is not running."""
        return [m.proc.pid if m.proc is not None and m.proc.poll() is None else None for m in self.members]

    def log_tail(self, i: int, lines: int = 15) -> str:
        """The last ``lines`` lines of member ``i``'s log."""
        try:
            with open(self._member(i).log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def client(self, i: int = 0, timeout: float = 5.0) -> etcd3gw.Etcd3Client:
        """An etcd3gw client of member ``i`` (gateway path ``/v3/``, no proxy, ``timeout`` s per call)."""
        import etcd3gw  # here: its import (futurist, eventlet) costs ~0.3 s of CPU the cluster itself never needs

        m = self._member(i)
        session = requests.Session()
        session.trust_env = False
        return etcd3gw.Etcd3Client(host=_HOST, port=m.client_port, timeout=timeout, api_path="/v3/",
                                   session=session)

    # -- health ---------------------------------------------------------------------------------
    def _post(self, i: int, path: str, body: dict, timeout: float) -> dict | None:
        """POST a gateway call to member ``i``; its JSON answer, or None if it did not answer 200."""
        m = self.members[i]
        if m.proc is None:
            return None
        try:
            resp = self.session.post(f"{m.client_url}/v3/{path}", json=body, timeout=timeout)
        except requests.RequestException:
            return None
        return resp.json() if resp.status_code == 200 else None

    def status(self, i: int, timeout: float = 0.5) -> dict | None:
        """Member ``i``'s ``/v3/maintenance/status`` answer, None if it does not answer."""
        self._member(i)
        return self._post(i, "maintenance/status", {}, timeout)

    def leader(self, timeout: float = 0.5) -> int | None:
        """Index of the member that answers as leader (``leader == header.member_id``), None if none does.

        After a partition two members may both claim it for a moment: the higher raft term wins.
        """
        best: tuple[int, int] | None = None
        for i in range(len(self.members)):
            st = self.status(i, timeout)
            if st and st.get("leader") and st["leader"] == st.get("header", {}).get("member_id"):
                term = int(st.get("raftTerm", 0))
                if best is None or term > best[0]:
                    best = (term, i)
        return None if best is None else best[1]

    def wait_leader(self, timeout: float = 10.0) -> int:
        """Wait until some member answers as leader; its index."""
        deadline = time.monotonic() + timeout
        while (found := self.leader()) is None:
            self._check_alive()
            if time.monotonic() > deadline:
                raise EtcdError(f"no etcd leader after {timeout} s\n{self._tails()}")
            time.sleep(0.05)
        return found

    def readable(self, timeout: float = 1.0) -> bool:
        """True when some running member serves a linearizable range (its leader confirmed by a quorum)."""
        return any(self._post(i, "kv/range", {"key": _PROBE_KEY}, timeout) is not None
                   for i in range(len(self.members)))

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Wait until a quorum answers (a linearizable read succeeds) and a leader is elected.

        Raises :class:`EtcdError` with the log tails on timeout or when a member we did not stop exited.
        """
        deadline = time.monotonic() + timeout
        while not (self.readable() and self.leader() is not None):
            self._check_alive()
            if time.monotonic() > deadline:
                raise EtcdError(f"etcd cluster {self.url} not healthy after {timeout} s\n{self._tails()}")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        """Raise :class:`EtcdError` if a member we started (and did not stop) has exited."""
        for i, m in enumerate(self.members):
            if m.proc is not None and m.proc.poll() is not None:
                raise EtcdError(f"etcd member {m.name} exited with {m.proc.returncode}; "
                                f"{m.log_path}:\n{self.log_tail(i)}")

    def _tails(self) -> str:
        return "\n".join(f"== {m.name} ({m.log_path}):\n{self.log_tail(i, 8)}" for i, m in enumerate(self.members))
