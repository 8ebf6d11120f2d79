"""This instance's cluster lease, kept alive by a small process of its own.

Why a process: the lease is what says this instance is alive, and it must not die of the
instance being busy. In the controller's interpreter, a keepalive thread waits for the GIL
behind hundreds of switch threads: on two loaded cores it waited longer than the TTL, the
lease expired while the instance was well, its bridges moved to another instance and back
(23 such flaps in 13 minutes of the ``scale_out`` bench, each a failover of hundreds of
bridges). The keeper is a separate interpreter doing nothing else: it sends a keepalive
every TTL/3 and publishes, in memory shared with the controller, the monotonic time until
which the lease surely lives (the keepalive's send time + 0.9 × TTL), so the controller
reads its standing without waiting for any thread.

The lease must still die with the instance, and only then:

- **the controller exits or is killed**: the keeper's stdin (a pipe from the controller)
  reaches end of file; it revokes the lease at once (the others take its bridges now, not
  after the TTL) and exits;
- **the controller is stopped** (SIGSTOP, a debugger): its state in ``/proc`` says so; the
  keeper stops keeping the lease alive, which expires after the TTL as it would have before;
- **the controller is wedged**: its beat thread has not run for ``HANG`` s *and* the process
  did no work meanwhile (under 5 % of a core: blocked while holding the GIL, say). The beat thread writes the time
  into the shared memory four times a second; a stale beat alone is not enough, because a
  busy controller's threads can wait for the GIL for tens of seconds (57 s measured in the
  ``scale_out`` bench, 2,000 threads on two loaded cores) while it works. (A controller
  spinning in a C call that holds the GIL would keep its lease: it looks busy; none was seen.)
- **etcd answers that the lease is gone** (it expired while the controller was stopped or cut
  off): standing ends at once, and the keeper joins again with a new lease and member key.

Only the keeper talks to etcd about the lease and the member key; the controller reads the
shared :class:`LeaseState` and watches the members as before (``controller.cluster``).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import faulthandler
import json
import logging
import mmap
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from topology.etcd_watch import b64

LOG = logging.getLogger("tenantflow.cluster")

HANG = 10.0  # s without a beat from the controller's interpreter: it is wedged, let the lease go
BEAT_INTERVAL = 0.25  # s between the controller's beats
POLL = 0.05  # s: how soon the keeper sees its controller stopped or gone
KEEPER_NICE = -10  # the keeper's scheduling priority (when allowed): the scheduler shares cores per thread, and
# a controller's 2,000 threads would otherwise keep its one-thread keeper waiting
BUSY = 0.05  # of a core: a controller using less over HANG s without a beat is wedged, not starved
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class LeaseState(ctypes.Structure):
    """What the keeper and its controller share (one page of memory; aligned 8-byte fields)."""

    _fields_ = [
        ("alive_until", ctypes.c_double),  # monotonic s until which the lease surely lives (0: not standing)
        ("lease", ctypes.c_int64),  # the lease's id (0: none yet)
        ("joins", ctypes.c_int64),  # leases granted so far (1 + rejoins)
        ("beat", ctypes.c_double),  # monotonic s of the controller's last beat
        ("keepalive_max_ms", ctypes.c_double),  # the slowest keepalive's round trip
        ("beat_age_max_ms", ctypes.c_double),  # the longest the controller's interpreter went without a beat
        ("held_back", ctypes.c_int64),  # keepalives not sent because the controller was stopped or wedged
    ]


def shared_state() -> tuple[int, mmap.mmap, LeaseState]:
    """A fresh :class:`LeaseState` in anonymous shared memory: its fd (for the keeper), the map, the view."""
    fd = os.memfd_create("tenantflow-lease", 0)
    os.ftruncate(fd, mmap.PAGESIZE)
    mapped = mmap.mmap(fd, mmap.PAGESIZE)
    return fd, mapped, LeaseState.from_buffer(mapped)


def _attach(fd: int) -> tuple[mmap.mmap, LeaseState]:
    mapped = mmap.mmap(fd, mmap.PAGESIZE)
    return mapped, LeaseState.from_buffer(mapped)


def process_state(pid: int) -> tuple[bool, int]:
    """Whether process ``pid`` is stopped (SIGSTOP, traced; a vanished one counts as stopped), and its CPU ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True, 0
    fields = stat[stat.rindex(b")") + 2:].split()  # fields[0] is the state; utime, stime are the 12th, 13th after it
    return fields[0] in (b"T", b"t"), int(fields[11]) + int(fields[12])


class ParentWatch:
    """Whether the controller may keep its lease: not stopped, and beating or at least working (see above).

    Working: it used at least ``BUSY`` of a core over the last ``hang`` seconds. Not "any CPU at
    all": threads waiting for a GIL that nobody releases still wake every 5 ms to ask for it.
    """

    def __init__(self, pid: int, state: LeaseState, hang: float) -> None:
        self.pid, self.state, self.hang = pid, state, hang
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def __call__(self) -> bool:
        now = time.monotonic()
        stopped, ticks = process_state(self.pid)
        self._samples.append((now, ticks))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.hang:
            self._samples.popleft()  # keep one sample at least ``hang`` old
        since, ticks_then = self._samples[0]
        working = now - since < self.hang or (ticks - ticks_then) / TICKS_PER_S >= BUSY * (now - since)
        beat_age = now - self.state.beat
        self.state.beat_age_max_ms = max(self.state.beat_age_max_ms, beat_age * 1000)
        return not stopped and (beat_age < self.hang or working)


class Keeper:
    """The keeper's loop, free of process plumbing: ``store.request``, the parent's health and the wait are given.

    ``parent_ok()`` says whether the controller may keep its lease now (running, beating);
    ``wait(s)`` sleeps up to ``s`` and returns True when the controller asked us to leave
    (or vanished).
    """

    def __init__(self, store: Any, state: LeaseState, *, ttl: int, key: str, member: dict[str, Any],
                 parent_ok: Callable[[], bool], wait: Callable[[float], bool]) -> None:
        self.store, self.state, self.ttl = store, state, ttl
        self.key, self.member = key, member
        self.parent_ok, self.wait = parent_ok, wait

    def join(self) -> None:
        """A new lease and our member key under it; standing from the grant on."""
        self.state.alive_until = 0.0
        granted = time.monotonic()
        lease = int(self.store.request("/lease/grant", {"TTL": self.ttl})["ID"])
        value = json.dumps({**self.member, "lease": lease})
        self.store.request("/kv/put", {"key": b64(self.key), "value": b64(value), "lease": lease})
        self.state.lease = lease
        self.state.joins += 1
        # In good standing from the grant on: our member key's put comes back through the
        # controller's watch, maybe before the put's own answer, and must find us standing.
        self.state.alive_until = granted + self.ttl * 0.9
        LOG.info("cluster: joined with lease %x", lease)

    def run(self) -> None:
        """Keep the lease alive until asked to leave (or the controller vanished); then revoke it."""
        period = self.ttl / 3
        due = time.monotonic() + period
        while not self.wait(max(0.0, min(POLL, due - time.monotonic()))):
            if time.monotonic() < due:
                continue
            due = time.monotonic() + period
            if not self.parent_ok():
                self.state.held_back += 1  # stopped or wedged: the lease runs out with the TTL
                continue
            self.keep_alive()
        self.leave()

    def keep_alive(self) -> None:
        """One keepalive: standing extended, or ended (lease gone: join again), or left to run out (no answer)."""
        sent = time.monotonic()
        try:
            answer = self.store.request("/lease/keepalive", {"ID": self.state.lease})
        except Exception as exc:  # noqa: BLE001 - etcd unreachable: our standing runs out with the TTL
            LOG.warning("cluster: keepalive failed: %s", exc)
            return
        took = time.monotonic() - sent
        self.state.keepalive_max_ms = max(self.state.keepalive_max_ms, took * 1000)
        if int(answer.get("result", {}).get("TTL", -1)) > 0:
            self.state.alive_until = sent + self.ttl * 0.9
            return
        LOG.warning("cluster: our lease %x expired: slave everywhere, joining again", self.state.lease)
        self.state.alive_until = 0.0
        try:
            self.join()
        except Exception as exc:  # noqa: BLE001 - etcd unreachable: try again next round
            LOG.warning("cluster: rejoin failed: %s", exc)

    def leave(self) -> None:
        """Revoke our lease: our member key goes with it, the others take our bridges now."""
        self.state.alive_until = 0.0
        try:
            self.store.request("/kv/lease/revoke", {"ID": self.state.lease})
        except Exception:  # noqa: BLE001 - etcd gone: the lease expires on its own
            LOG.info("cluster: could not revoke our lease; it expires in %d s", self.ttl)


class KeeperProcess:
    """The controller's side: the keeper process, the shared state and the beat thread."""

    def __init__(self, store_url: str, *, ttl: int, key: str, member: dict[str, Any], hang: float = HANG) -> None:
        self.store_url, self.ttl, self.key, self.member, self.hang = store_url, ttl, key, member, hang
        self._fd, self._map, self.state = shared_state()
        self.process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._beating = False

    def start(self, timeout: float = 10.0) -> None:
        """Start the keeper; return once it holds a lease and our member key (RuntimeError with its why if not)."""
        self.state.beat = time.monotonic()
        self.state.alive_until, self.state.lease = 0.0, 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "controller.lease_keeper", "--store", self.store_url, "--ttl", str(self.ttl),
             "--key", self.key, "--member", json.dumps(self.member), "--parent", str(os.getpid()),
             "--shared-fd", str(self._fd), "--hang", str(self.hang)],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(self._fd,))
        if not self._beating:  # one beat thread, however many keepers this instance started
            self._beating = True
            threading.Thread(target=self._beat, name="cluster-beat", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.state.lease:
            if self.process.poll() is not None:
                why = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
                raise RuntimeError(f"the cluster lease keeper could not join: {why or self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the cluster lease keeper did not join within {timeout} s")
            time.sleep(0.01)
        # From here on its errors are only logged (by the controller's stderr, which it shares).
        threading.Thread(target=self._relay_stderr, args=(self.process,), daemon=True).start()

    @property
    def running(self) -> bool:
        """Whether the keeper process still runs."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Ask the keeper to revoke our lease and exit (killed if it does not within 3 s)."""
        self._stop.set()
        process = self.process
        if process is None:
            return
        try:
            process.stdin.close()  # end of file: leave
        except OSError:
            pass
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _beat(self) -> None:
        # TENANTFLOW_STALL_DUMP_S=S (a diagnostic): when no beat comes for S seconds, faulthandler's own C thread
        # writes every thread's stack to stderr (the log): who held the interpreter while nothing else ran.
        dump_after = float(os.environ.get("TENANTFLOW_STALL_DUMP_S", "0") or 0)
        while not self._stop.wait(BEAT_INTERVAL):
            self.state.beat = time.monotonic()
            if dump_after > 0:
                faulthandler.dump_traceback_later(dump_after, file=sys.stderr)
        if dump_after > 0:
            faulthandler.cancel_dump_traceback_later()  # stopping: the threads ending are no stall

    @staticmethod
    def _relay_stderr(process: subprocess.Popen[bytes]) -> None:
        for line in process.stderr or ():
            sys.stderr.write(line.decode(errors="replace"))


def _wait_on(stream: Any) -> Callable[[float], bool]:
    """A wait that ends early (True) when ``stream`` (our stdin: the controller's pipe) is closed or written."""
    def wait(seconds: float) -> bool:
        readable, _, _ = select.select([stream], [], [], seconds)
        return bool(readable)
    return wait


def main(argv: list[str] | None = None) -> int:
    """The keeper process: join, keep the lease alive for the controller ``--parent``, revoke it when it is gone."""
    p = argparse.ArgumentParser(prog="python -m controller.lease_keeper", description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--ttl", type=int, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--member", required=True, help="the member key's value (JSON), the lease's id added")
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--shared-fd", type=int, required=True)
    p.add_argument("--hang", type=float, default=HANG)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s lease-keeper %(levelname)s %(message)s")
    from topology.store_etcd import EtcdStore  # only here: the module needs no etcd client to be imported

    try:  # first in line for a core: a keepalive is a few hundred bytes every TTL/3, and must not wait
        os.setpriority(os.PRIO_PROCESS, 0, KEEPER_NICE)
    except OSError:  # not allowed (not root, no CAP_SYS_NICE): it keeps the controller's priority
        pass
    _mapped, state = _attach(args.shared_fd)
    store = EtcdStore(args.store, timeout=max(0.5, args.ttl / 3))

    keeper = Keeper(store, state, ttl=args.ttl, key=args.key, member=json.loads(args.member),
                    parent_ok=ParentWatch(args.parent, state, args.hang), wait=_wait_on(sys.stdin))
    try:
        keeper.join()
    except Exception as exc:  # noqa: BLE001 - the controller shows this and stops
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    keeper.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
