"""The control-plane scale lab: N hypervisors as dummy-datapath Open vSwitch bridges.

``ScaleLab(1000, "tcp:127.0.0.1:6653")`` runs 1,000 integration bridges on
ceil(1000 / 10) = 100 private ovsdb-server + ovs-vswitchd pairs
(``ovs-vswitchd --enable-dummy=override``, bridges ``datapath_type=dummy``): no
kernel device, no namespace, no packet ever forwarded; only the control plane is
real (OVSDB, OpenFlow 1.3 over TCP to the controller, the flow tables). At most
``bridges_per_vswitchd`` (10) bridges share a vswitchd: its main loop walks every
bridge, so with 1,000 in one a single flow-mod takes 0.2 s (LAB.md). Measured here
with 3,000 flows and 20 ports per bridge, one ``ovs-ofctl add-flow`` costs the
vswitchd 12.3 ms of CPU with 100 bridges, 3.2 ms with 25 and 1.0 ms with 10: a
real hypervisor runs one bridge per vswitchd, so fewer is both closer to the cloud
and what lets two cores carry 1,000 of them. Layout::

    <workdir>/vs0/   conf.db, db.sock, *.pid, *.ctl, *.log, br-int@1.mgmt ...
        br-int@1   dummy, fail_mode=secure, OpenFlow13, datapath-id <base>|1, controller
                   tf-vxlan@1, tf-geneve@1   flow-based tunnels, local_ip = hv1's tunnel IP
                   tap<port id[:11]>         one per bound VM port (Nova's name, unique anyway)
        br-int@2 ...
    <workdir>/vs1/ ...

Every bridge is configured with the operator steps' own settings
(:mod:`apps.lab.steps` 1, 2, 4 and 7). Port names are unique within one vswitchd,
so the bridges name their per-bridge ports ``<canonical>@<hypervisor index>``; the
controller counts ``tf-vxlan@7`` as ``tf-vxlan`` (:func:`topology.model.canonical_port_name`).

The host's Open vSwitch is never touched: every tool call names this lab's db
socket, management socket or unixctl socket, with ``OVS_RUNDIR``/``OVS_DBDIR``/
``OVS_LOGDIR`` pointing into the work dir. The daemons are this object's child
processes, started from the thread that calls :meth:`ScaleLab.start` (keep that
thread alive while the lab is up): with ``setpriv --pdeathsig KILL`` the kernel
kills them if that thread dies, and :meth:`ScaleLab.stop` kills them by PID and
removes the work dir, also on an error or Ctrl-C.

The topology goes through the real API (:class:`ApiClient`: a thread pool, one
``http.client`` connection per thread, kept alive when the server allows it).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apps.lab import sh, steps
from apps.lab.controller import ApiError
from apps.lab.ovs import SCHEMA
from apps.progress import Progress
from topology.model import PORT_ALIAS_SEPARATOR, TUNNEL_PORT_NAMES, tap_name

LOG = logging.getLogger(__name__)

DEFAULT_API_URL = "http://127.0.0.1:9696"
DEFAULT_BRIDGES_PER_VSWITCHD = 10
DEFAULT_TUNNEL_CIDR = "172.16.0.0/12"
OFPP_LOCAL = 0xFFFFFFFE
_DEATHSIG = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
_COOKIE = re.compile(r"^\s*cookie=(0x[0-9a-f]+),", re.M)  # a flow's own, not a learn action's
_PORT_DESC = re.compile(r"^\s*(\d+|LOCAL)\(([^)]+)\):", re.M)

T = TypeVar("T")
R = TypeVar("R")


class ScaleLabError(RuntimeError):
    """The scale lab cannot be built, used or torn down as asked."""


def alias(name: str, suffix: object) -> str:
    """``name@suffix``: a port that counts as ``name`` on its bridge (:func:`topology.model.canonical_port_name`)."""
    return f"{name}{PORT_ALIAS_SEPARATOR}{suffix}"


def parallel(fn: Callable[[T], R], items: Iterable[T], workers: int, progress: Progress | None = None,
             weight: Callable[[T], float] = lambda _: 1) -> list[R]:
    """``[fn(x) for x in items]`` on ``workers`` threads; the first error is raised.

    On an error or Ctrl-C the calls not started yet are cancelled and the running ones
    are not waited for (the caller is tearing down anyway). ``progress`` advances by
    ``weight(x)`` as each call ends.
    """
    items = list(items)
    if not items:
        return []
    if progress is not None:
        call = fn

        def fn(item: T) -> R:  # type: ignore[no-redef]
            result = call(item)
            progress.advance(weight(item))
            return result
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))), thread_name_prefix="scale")
    try:
        futures = [pool.submit(fn, item) for item in items]
        results = [f.result() for f in futures]
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (in the main thread): a teardown must not be cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {s: signal.signal(s, lambda sig, _frame: caught.append(sig)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])


# -- the API ------------------------------------------------------------------------------
class ApiClient:
    """The controller's Neutron API for many calls from many threads.

    One ``http.client`` connection per thread, reused as long as the server keeps it
    open (the controller's wsgiref server speaks HTTP/1.0 and closes after each answer;
    http.client then reconnects by itself). Errors raise :class:`apps.lab.controller.ApiError`.
    """

    def __init__(self, base_url: str = DEFAULT_API_URL, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http:// API URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host, self.port, self.prefix = parts.hostname, parts.port or 80, parts.path.rstrip("/")
        self.timeout = timeout
        self.keep_alive: bool | None = None  # did the server keep the last connection open?
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return conn

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call; the decoded JSON answer (None if empty). A reused connection the server dropped is retried."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for attempt in (1, 2):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request(method, self.prefix + path, data, headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if not reused or attempt == 2:
                    raise
        self.keep_alive = not resp.will_close
        if resp.status >= 400:
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(resp.status, payload)
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(raw) if raw else None
        return raw.decode()

    def create(self, kind: str, **attrs: Any) -> dict[str, Any]:
        """POST /v2.0/<kind>s with ``{kind: attrs}``; the created resource."""
        return self.request("POST", f"/v2.0/{kind}s", {kind: attrs})[kind]

    def list(self, kinds: str, query: str = "") -> list[dict[str, Any]]:
        """GET /v2.0/<kinds>[?query]: the collection."""
        return self.request("GET", f"/v2.0/{kinds}" + (f"?{query}" if query else ""))[kinds]

    def wait_up(self, timeout: float = 10.0) -> None:
        """Wait until the API answers ``GET /`` (e.g. a controller just started)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request("GET", "/")
                return
            except (OSError, ApiError) as exc:
                self._local.conn = None
                if time.monotonic() > deadline:
                    raise ScaleLabError(f"cannot reach the API at {self.base_url}: {exc}") from exc
                time.sleep(0.2)

    def metrics(self) -> dict[str, float]:
        """Prometheus samples at /metrics, summed over labels: {sample name: value}."""
        from prometheus_client.parser import text_string_to_metric_families

        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(self.request("GET", "/metrics")):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals


# -- one ovsdb-server + ovs-vswitchd ----------------------------------------------------------
class DummyVswitchd:
    """One ovsdb-server and one ``ovs-vswitchd --enable-dummy=override``, all their files in ``rundir``."""

    def __init__(self, index: int, rundir: str, vsctl_timeout: float = 300.0) -> None:
        self.index = index
        self.rundir = rundir
        self.vsctl_timeout = vsctl_timeout
        self.db = os.path.join(rundir, "conf.db")
        self.db_sock = os.path.join(rundir, "db.sock")
        self.env = {"OVS_RUNDIR": rundir, "OVS_DBDIR": rundir, "OVS_LOGDIR": rundir}
        self.procs: dict[str, subprocess.Popen] = {}
        self.hypervisors: list[ScaleHypervisor] = []

    def _file(self, daemon: str, ext: str) -> str:
        return os.path.join(self.rundir, f"{daemon}.{ext}")

    def create_db(self) -> None:
        """Make the run dir and an empty database."""
        os.makedirs(self.rundir)
        sh.run(["ovsdb-tool", "create", self.db, SCHEMA])

    def spawn(self, daemon: str) -> None:
        """Start ``ovsdb-server`` or ``ovs-vswitchd`` as a child (no ``--detach``: its PID is known at once)."""
        if daemon == "ovsdb-server":
            # as ovs-ctl starts it: it connects to the managers set-manager names (operator step 2)
            args = [self.db, f"--remote=punix:{self.db_sock}", "--remote=db:Open_vSwitch,Open_vSwitch,manager_options"]
        else:
            args = [f"unix:{self.db_sock}", "--enable-dummy=override", "--disable-system", "--disable-system-route"]
        argv = [*_DEATHSIG, daemon, *args, f"--pidfile={self._file(daemon, 'pid')}",
                f"--unixctl={self._file(daemon, 'ctl')}", f"--log-file={self._file(daemon, 'log')}",
                "-vconsole:off", "-vsyslog:off"]
        # its own session: a Ctrl-C at the terminal reaches the lab, which then stops it
        self.procs[daemon] = subprocess.Popen(argv, env={**os.environ, **self.env}, cwd=self.rundir,
                                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, daemon: str, timeout: float = 10.0) -> None:
        """Wait until ``daemon`` listens (its socket exists); ovsdb-server's database is then initialised."""
        path = self.db_sock if daemon == "ovsdb-server" else self._file(daemon, "ctl")
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs[daemon]
            if proc.poll() is not None:
                raise ScaleLabError(f"{daemon} of {self.rundir} exited with {proc.returncode}:\n"
                                    + self.log_tail(daemon))
            if os.path.exists(path):
                if daemon != "ovsdb-server":
                    return
                try:  # the socket file exists a moment before it listens
                    self.vsctl("--no-wait", "init", timeout=5)  # no vswitchd yet to acknowledge anything
                    return
                except sh.CommandError:
                    if time.monotonic() > deadline:
                        raise
            if time.monotonic() > deadline:
                raise ScaleLabError(f"{daemon} of {self.rundir} did not come up in {timeout}s")
            time.sleep(0.01)

    def vsctl(self, *args: str, timeout: float | None = None) -> str:
        """``ovs-vsctl ARGS`` against this instance's database (waits for vswitchd unless ``--no-wait``).

        ``timeout``: default ``vsctl_timeout``. A vswitchd busy with a controller's bundles for
        100 bridges took more than 120 s to apply 500 new ports once.
        """
        timeout = timeout or self.vsctl_timeout
        return sh.run(["ovs-vsctl", f"--db=unix:{self.db_sock}", f"--timeout={int(timeout)}", *args],
                      env=self.env, timeout=timeout + 10)

    def appctl(self, *args: str) -> str:
        """``ovs-appctl ARGS`` against this instance's ovs-vswitchd."""
        return sh.run(["ovs-appctl", "-t", self._file("ovs-vswitchd", "ctl"), *args], env=self.env)

    def pids(self) -> dict[str, int]:
        """{daemon: PID} of the daemons still running."""
        return {d: p.pid for d, p in self.procs.items() if p.poll() is None}

    def rss_kib(self) -> dict[str, int]:
        """{daemon: RSS in KiB} of the running daemons."""
        return {d: rss_kib(pid) for d, pid in self.pids().items()}

    def log_tail(self, daemon: str, lines: int = 20) -> str:
        """The end of a daemon's log file."""
        try:
            with open(self._file(daemon, "log")) as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def controller_status(self) -> dict[str, bool]:
        """{bridge: is its controller connection up}, as this vswitchd reports it in OVSDB."""
        def rows(table: str, columns: str) -> list[list[Any]]:
            return json.loads(self.vsctl("--format=json", f"--columns={columns}", "list", table))["data"]

        up = {ref[1]: bool(connected) for ref, connected in rows("controller", "_uuid,is_connected")}
        status = {}
        for name, ctl in rows("bridge", "name,controller"):
            refs = [ctl] if ctl[0] == "uuid" else ctl[1]  # one ref, or ["set", [refs]]
            status[name] = any(up.get(ref[1], False) for ref in refs)
        return status


def stop_processes(procs: Sequence[subprocess.Popen], timeout: float = 5.0) -> None:
    """SIGTERM each (our own children, by PID), wait up to ``timeout`` s, SIGKILL the rest; all reaped."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


# -- hypervisors ------------------------------------------------------------------------------
@dataclass
class ScaleHypervisor:
    """One hypervisor of the scale lab: a bridge ``br-int@<index>`` on one of the lab's vswitchds."""

    name: str
    index: int
    dpid: int
    tunnel_ip: str
    vswitchd: DummyVswitchd
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)  # port id -> the API's port, plugged here

    @property
    def bridge(self) -> str:
        """The bridge's name: ``br-int@<index>`` (counts as ``br-int``)."""
        return alias(steps.INTEGRATION_BRIDGE, self.index)

    def port_name(self, canonical: str) -> str:
        """This bridge's OVS name for a per-bridge port, e.g. ``tf-vxlan`` -> ``tf-vxlan@7``."""
        return alias(canonical, self.index)

    @property
    def target(self) -> str:
        """The bridge's OpenFlow management socket, for ``ovs-ofctl``."""
        return f"unix:{os.path.join(self.vswitchd.rundir, self.bridge)}.mgmt"

    def ofctl(self, command: str, *args: str) -> str:
        """``ovs-ofctl -O OpenFlow13 COMMAND <this bridge> ARGS`` against its private vswitchd."""
        return sh.run(["ovs-ofctl", "-O", "OpenFlow13", command, self.target, *args], env=self.vswitchd.env)

    def dump_cookies(self) -> Counter[int]:
        """The cookies of every flow on the bridge, as a multiset (``ovs-ofctl dump-flows``)."""
        return Counter(int(c, 16) for c in _COOKIE.findall(self.ofctl("dump-flows")))

    def port_map(self) -> dict[str, int]:
        """The bridge's ports as it reports them to a controller: {OVS name: OpenFlow port}."""
        return {name: OFPP_LOCAL if num == "LOCAL" else int(num)
                for num, name in _PORT_DESC.findall(self.ofctl("dump-ports-desc"))}


class ScaleLab:
    """N hypervisors as dummy-datapath bridges on ceil(N / ``bridges_per_vswitchd``) vswitchds.

    A context manager: entering builds everything (:meth:`start`), leaving tears it all
    down (:meth:`stop`), also on an error or Ctrl-C. ``controller_target`` (e.g.
    ``tcp:127.0.0.1:6653``) goes on every bridge with ``connection-mode=out-of-band``
    and ``max_backoff`` (operator step 2); None: no controller. :meth:`register` and
    :meth:`populate` create the hypervisors, networks and ``ports_per_hv`` bound ports
    per hypervisor through the API at ``api_url``; :meth:`plug` adds one port's tap.
    ``workers`` threads run the OVS tools, ``api_workers`` the API calls (more than 4
    gained nothing against the controller here: its writes are serialised). ``timings``
    collects the seconds each phase took.
    """

    def __init__(
        self,
        n_hypervisors: int,
        controller_target: str | None = None,
        *,
        ports_per_hv: int = 0,
        api_url: str = DEFAULT_API_URL,
        bridges_per_vswitchd: int = DEFAULT_BRIDGES_PER_VSWITCHD,
        name_prefix: str = "hv",
        tunnel_cidr: str = DEFAULT_TUNNEL_CIDR,
        dpid_base: int | None = None,
        workdir: str | None = None,
        max_backoff_ms: int | None = 1000,
        workers: int = 8,
        api_workers: int = 4,
        vsctl_timeout: float = 300.0,
        progress: bool | None = None,
    ) -> None:
        if not 1 <= n_hypervisors <= 0xFFFF:
            raise ValueError("n_hypervisors must be in 1..65535")
        if bridges_per_vswitchd < 1 or ports_per_hv < 0:
            raise ValueError("bridges_per_vswitchd must be >= 1 and ports_per_hv >= 0")
        self.n_hypervisors = n_hypervisors
        self.controller_target = controller_target
        self.ports_per_hv = ports_per_hv
        self.api_url = api_url
        self.bridges_per_vswitchd = bridges_per_vswitchd
        self.name_prefix = name_prefix
        self.tunnel_net = ipaddress.ip_network(tunnel_cidr)
        if self.tunnel_net.num_addresses < n_hypervisors + 2:
            raise ValueError(f"{tunnel_cidr} has too few addresses for {n_hypervisors} tunnel endpoints")
        self.dpid_base = dpid_base
        self.max_backoff_ms = max_backoff_ms
        self.workers = workers
        self.api_workers = api_workers
        self.vsctl_timeout = vsctl_timeout
        self.progress = progress  # progress lines while building (None: only on a terminal, apps.progress)
        self._workdir_arg = workdir
        self.workdir = ""
        self.vswitchds: list[DummyVswitchd] = []
        self.hypervisors: list[ScaleHypervisor] = []
        self.networks: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self._by_name: dict[str, ScaleHypervisor] = {}
        self._api: ApiClient | None = None

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> ScaleLab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()

    def __iter__(self) -> Iterator[ScaleHypervisor]:
        return iter(self.hypervisors)

    @property
    def api(self) -> ApiClient:
        """The client for ``api_url`` (shared by the lab's threads)."""
        if self._api is None or self._api.base_url != self.api_url.rstrip("/"):
            self._api = ApiClient(self.api_url)
        return self._api

    # -- building -------------------------------------------------------------------------
    def _phase(self, label: str, total: float, unit: str) -> Progress:
        """A progress line for one phase of building (shown on a terminal only, unless told)."""
        return Progress(label, total, unit=unit, enabled=self.progress)

    def start(self) -> None:
        """Start the vswitchds (daemons from this thread, the rest in parallel) and create every bridge."""
        if self.workdir:
            raise ScaleLabError("scale lab already started")
        t0 = time.perf_counter()
        if self._workdir_arg:
            os.makedirs(self._workdir_arg)  # must not exist: stop() removes it whole
            self.workdir = self._workdir_arg
        else:
            self.workdir = tempfile.mkdtemp(prefix="tenantflow-scale-")
        base = self.dpid_base
        if base is None:  # "ts" + 16 bits of the work dir: two scale labs on one controller differ
            base = (0x7473 << 48) | ((zlib.crc32(self.workdir.encode()) & 0xFFFF) << 16)
        n, n_vs = self.n_hypervisors, math.ceil(self.n_hypervisors / self.bridges_per_vswitchd)
        self.vswitchds = [DummyVswitchd(i, os.path.join(self.workdir, f"vs{i}"), self.vsctl_timeout)
                          for i in range(n_vs)]
        self.hypervisors, self._by_name, self.networks, self.timings = [], {}, [], {}
        for i in range(1, n + 1):
            vs = self.vswitchds[(i - 1) * n_vs // n]  # contiguous, balanced blocks
            hv = ScaleHypervisor(f"{self.name_prefix}{i}", i, base | i, str(self.tunnel_net.network_address + i), vs)
            vs.hypervisors.append(hv)
            self.hypervisors.append(hv)
            self._by_name[hv.name] = hv
        parallel(DummyVswitchd.create_db, self.vswitchds, self.workers)
        for vs in self.vswitchds:
            vs.spawn("ovsdb-server")
        parallel(lambda vs: vs.wait_ready("ovsdb-server"), self.vswitchds, self.workers)
        for vs in self.vswitchds:
            vs.spawn("ovs-vswitchd")
        parallel(lambda vs: vs.wait_ready("ovs-vswitchd"), self.vswitchds, self.workers)
        self.timings["daemons_s"] = time.perf_counter() - t0
        with self._phase("scale lab: bridges", n, "bridges") as progress:
            parallel(self._add_bridges, self.vswitchds, self.workers, progress, lambda vs: len(vs.hypervisors))
        self.timings["build_s"] = time.perf_counter() - t0

    def set_manager(self, target: str | None) -> None:
        """Operator step 2's ``set-manager`` on every vswitchd's database (None: ``del-manager``).

        One OVSDB connection per vswitchd serves all its bridges: the controller matches each
        bridge to its hypervisor by datapath id.
        """
        parallel(lambda vs: vs.vsctl(*(["set-manager", *target.split()] if target else ["del-manager"])),
                 self.vswitchds, self.workers)

    def _add_bridges(self, vs: DummyVswitchd, chunk: int = 100) -> None:
        """Operator steps 1, 2 and 4 for each bridge, ``chunk`` bridges per OVSDB transaction."""
        for at in range(0, len(vs.hypervisors), chunk):
            args: list[str] = []
            for hv in vs.hypervisors[at:at + chunk]:
                args += ["--", *self._bridge_args(hv)]
            vs.vsctl(*args[1:])

    def _bridge_args(self, hv: ScaleHypervisor) -> list[str]:
        args = steps.integration_bridge_args(hv.dpid, hv.bridge, datapath_type="dummy")
        names = {kind: hv.port_name(name) for kind, name in TUNNEL_PORT_NAMES.items()}
        args += ["--", *steps.tunnel_port_args(hv.tunnel_ip, hv.bridge, names)]
        if self.controller_target:
            args += ["--", *self._controller_args(hv, self.controller_target)]
        return args

    def _controller_args(self, hv: ScaleHypervisor, target: str) -> list[str]:
        # step 2 (set-controller, then connection-mode) as one record, in the caller's transaction
        # ``target``: one or more (space-separated: a cluster's instances, each bridge connects to all)
        backoff = [f"max_backoff={self.max_backoff_ms}"] if self.max_backoff_ms else []
        refs, args = [], []
        for i, one in enumerate(target.split()):
            refs.append(f"@ctl{hv.index}x{i}")
            args += [f"--id={refs[-1]}", "create", "controller", f"target={json.dumps(one)}",
                     "connection-mode=out-of-band", *backoff, "--"]
        return [*args, "set", "bridge", hv.bridge, f"controller=[{','.join(refs)}]"]

    def set_controller(self, target: str | None) -> None:
        """Point every bridge at ``target`` (None: no controller), one transaction per vswitchd.

        E.g. build with no controller, create the topology, then connect all N bridges at
        once: the controller's cold start at scale.
        """
        def apply(vs: DummyVswitchd) -> None:
            args: list[str] = []
            for hv in vs.hypervisors:
                args += ["--", *(self._controller_args(hv, target) if target
                                 else ["clear", "bridge", hv.bridge, "controller"])]
            vs.vsctl(*args[1:])

        parallel(apply, self.vswitchds, self.workers)
        self.controller_target = target

    # -- the API ------------------------------------------------------------------------------
    def register(self, timeout: float = 10.0) -> float:
        """Operator step 6 for every hypervisor, in parallel; returns (and records) the seconds it took."""
        self.api.wait_up(timeout)
        t0 = time.perf_counter()
        with self._phase("scale lab: registered", len(self.hypervisors), "hypervisors") as progress:
            parallel(lambda hv: self.api.create("hypervisor", **steps.hypervisor_record(hv.name, hv.dpid,
                                                                                        hv.tunnel_ip)),
                     self.hypervisors, self.api_workers, progress)
        self.timings["register_s"] = took = time.perf_counter() - t0
        return took

    def populate(self, networks: int, ports_per_hv: int | None = None,
                 network_types: Sequence[str] = ("vxlan", "geneve"), port_security: bool = False) -> None:
        """Create ``networks`` networks (types cycled from ``network_types``, one project each) with
        a subnet, then ``ports_per_hv`` ports bound to each hypervisor through the API, and plug them.

        Hypervisor ``i``'s ``j``-th port is on network ``(i * ports_per_hv + j) % networks``,
        so each network spans about ``N * ports_per_hv / networks`` hypervisors. Every subnet
        has the same CIDR (tenants overlap), sized for its ports. ``port_security`` off
        (the default): no security group, as in the compile benchmark.
        """
        k = self.ports_per_hv if ports_per_hv is None else ports_per_hv
        if networks < 1:
            raise ValueError("populate needs at least one network")
        self.api.wait_up()
        per_net = math.ceil(len(self.hypervisors) * k / networks)
        prefix = 24
        while 2 ** (32 - prefix) - 3 < per_net:
            prefix -= 1
        t0 = time.perf_counter()
        start = len(self.networks)

        def make_network(j: int) -> dict[str, Any]:
            net = self.api.create("network", name=f"scale-net{j}", project_id=f"scale-p{j}",
                                  **{"provider:network_type": network_types[j % len(network_types)]})
            self.api.create("subnet", network_id=net["id"], project_id=net["project_id"], ip_version=4,
                            cidr=f"10.0.0.0/{prefix}", name=f"scale-subnet{j}")
            return net

        with self._phase("scale lab: networks", networks, "networks") as progress:
            nets = parallel(make_network, range(start, start + networks), self.api_workers, progress)
        self.networks += nets
        self.timings["networks_s"] = time.perf_counter() - t0

        def make_port(job: tuple[int, int]) -> tuple[ScaleHypervisor, dict[str, Any]]:
            pos, j = job
            hv, net = self.hypervisors[pos], nets[(pos * k + j) % networks]
            port = self.api.create("port", network_id=net["id"], project_id=net["project_id"],
                                   name=f"{hv.name}-vm{j}", device_owner="compute:nova",
                                   device_id=f"{hv.name}-vm{j}", port_security_enabled=port_security,
                                   **{"binding:host_id": hv.name})
            return hv, port

        t1 = time.perf_counter()
        jobs = [(pos, j) for pos in range(len(self.hypervisors)) for j in range(k)]
        with self._phase("scale lab: ports", len(jobs), "ports") as progress:
            made = parallel(make_port, jobs, self.api_workers, progress)
        self.timings["ports_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        with self._phase("scale lab: plugged", len(made), "ports") as progress:
            self.plug_many(made, progress=progress)
        self.timings["plug_s"] = time.perf_counter() - t2

    # -- ports --------------------------------------------------------------------------------
    def hypervisor(self, name: str) -> ScaleHypervisor:
        """The hypervisor called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no hypervisor {name!r} in this scale lab") from None

    def _hv(self, hv: ScaleHypervisor | str) -> ScaleHypervisor:
        return self.hypervisor(hv) if isinstance(hv, str) else hv

    def plug(self, hv: ScaleHypervisor | str, port: Mapping[str, Any]) -> str:
        """Operator step 7 on ``hv``'s bridge for an API port (a dummy interface ``tap<id[:11]>``); the tap name."""
        self.plug_many([(self._hv(hv), port)])
        return tap_name(port["id"])

    def plug_many(self, items: Iterable[tuple[ScaleHypervisor | str, Mapping[str, Any]]], chunk: int = 500,
                  progress: Progress | None = None) -> None:
        """Plug many ports: one OVSDB transaction per ``chunk`` ports of a vswitchd, vswitchds in parallel."""
        by_vs: dict[int, list[tuple[ScaleHypervisor, Mapping[str, Any]]]] = {}
        for hv, port in items:
            hv = self._hv(hv)
            by_vs.setdefault(hv.vswitchd.index, []).append((hv, port))

        def plug_on(batch: list[tuple[ScaleHypervisor, Mapping[str, Any]]]) -> None:
            vs = batch[0][0].vswitchd
            for at in range(0, len(batch), chunk):
                args: list[str] = []
                for hv, port in batch[at:at + chunk]:
                    vm = str(port.get("device_id") or port["id"])
                    args += ["--", *steps.vif_port_args(tap_name(port["id"]), port, vm, hv.bridge)]
                vs.vsctl(*args[1:])
                for hv, port in batch[at:at + chunk]:
                    hv.ports[port["id"]] = dict(port)
                if progress is not None:
                    progress.advance(len(batch[at:at + chunk]))

        parallel(plug_on, by_vs.values(), self.workers)

    def unplug(self, hv: ScaleHypervisor | str, port_id: str) -> None:
        """Remove a port's tap from ``hv``'s bridge (``del-port``)."""
        hv = self._hv(hv)
        hv.vswitchd.vsctl("--if-exists", "del-port", hv.bridge, tap_name(port_id))
        hv.ports.pop(port_id, None)

    # -- looking at the switches ------------------------------------------------------------
    def dump_cookies(self, hv: ScaleHypervisor | str) -> Counter[int]:
        """The multiset of flow cookies on ``hv``'s bridge."""
        return self._hv(hv).dump_cookies()

    def dump_all(self, hvs: Iterable[ScaleHypervisor | str] | None = None) -> dict[str, Counter[int]]:
        """{hypervisor: its cookies} for ``hvs`` (default all), dumped in parallel."""
        chosen = [self._hv(h) for h in hvs] if hvs is not None else self.hypervisors
        return dict(zip([h.name for h in chosen], parallel(ScaleHypervisor.dump_cookies, chosen, self.workers),
                        strict=True))

    def verify(self, expected: Mapping[str, Counter[int]]) -> dict[str, tuple[Counter[int], Counter[int]]]:
        """Compare each named hypervisor's bridge with its expected cookie multiset.

        Returns {hypervisor: (extra, missing)} for those that differ; empty when all match.
        Flows a switch learns by itself (``lr_in_mac_binding``) count as extra: compare
        those separately if floating IPs are in play.
        """
        have = self.dump_all(expected)
        bad = {}
        for name, want in expected.items():
            extra, missing = have[name] - want, want - have[name]
            if extra or missing:
                bad[name] = (extra, missing)
        return bad

    def port_maps(self) -> dict[str, dict[str, int]]:
        """{hypervisor: its bridge's port map as reported to a controller}, in parallel."""
        maps = parallel(ScaleHypervisor.port_map, self.hypervisors, self.workers)
        return {hv.name: m for hv, m in zip(self.hypervisors, maps, strict=True)}

    def compiled_cookies(self, db_path: str) -> dict[str, Counter[int]]:
        """What each bridge must hold, independently of the controller's memory.

        The controller's SQLite file is snapshotted (a consistent read), loaded by the same
        ``Topology`` the controller uses, given each bridge's live port map canonicalised as
        the controller does, and compiled by ``flows.compiler.compile_hypervisor``.
        """
        from apps.lab.controller import compile_stored

        return {name: Counter(f.cookie for f in flows)
                for name, flows in compile_stored(db_path, self.port_maps()).items()}

    def controller_status(self) -> dict[str, bool]:
        """{hypervisor: its bridge's controller connection is up}, from every vswitchd's OVSDB."""
        status: dict[str, bool] = {}
        for vs, states in zip(self.vswitchds, parallel(DummyVswitchd.controller_status, self.vswitchds,
                                                       self.workers), strict=True):
            for hv in vs.hypervisors:
                status[hv.name] = states.get(hv.bridge, False)
        return status

    def controller_side(self) -> dict[str, int]:
        """What the controller says: ``connected`` (hypervisors of this lab whose bridge reported its
        ports, from the API) and ``synced`` (``tenantflow_switch_connected``, summed over everyone's)."""
        names = set(self._by_name)
        listed = self.api.list("hypervisors", "fields=name&fields=connected")
        connected = sum(1 for h in listed if h["name"] in names and h.get("connected"))
        return {"connected": connected, "synced": int(self.api.metrics().get("tenantflow_switch_connected", 0))}

    def wait_connected(self, timeout: float = 60.0, interval: float = 0.5) -> int:
        """Wait until every bridge reports its controller connected (or ``timeout``); how many are.

        This is the switches' side, read from OVSDB (``Controller.is_connected``), which
        ovs-vswitchd refreshes only every few seconds: it lags the connection by up to ~5 s.
        """
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        with self._phase("scale lab: connected", len(self.hypervisors), "bridges") as progress:
            while True:
                up = sum(self.controller_status().values())
                progress.update(up)
                if up == len(self.hypervisors) or time.monotonic() > deadline:
                    self.timings["connect_wait_s"] = time.perf_counter() - t0
                    return up
                time.sleep(interval)

    def pids(self) -> set[int]:
        """PIDs of every daemon of this lab still running."""
        return {pid for vs in self.vswitchds for pid in vs.pids().values()}

    def rss_kib(self) -> dict[int, dict[str, int]]:
        """{vswitchd index: {daemon: RSS in KiB}}."""
        return {vs.index: vs.rss_kib() for vs in self.vswitchds}

    # -- teardown -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Kill every daemon of the lab by PID (vswitchds first) and remove the work dir.

        Ctrl-C and SIGTERM wait until this is done (when called from the main thread).
        The controller keeps what was registered and created through the API.
        """
        with deferred_signals():
            stop_processes([vs.procs["ovs-vswitchd"] for vs in self.vswitchds if "ovs-vswitchd" in vs.procs])
            stop_processes([vs.procs["ovsdb-server"] for vs in self.vswitchds if "ovsdb-server" in vs.procs])
            if self.workdir and os.path.isdir(self.workdir):
                shutil.rmtree(self.workdir, ignore_errors=True)
            left = [vs.rundir for vs in self.vswitchds if vs.pids()]
            self.workdir = ""
        if left:
            raise ScaleLabError(f"scale lab teardown: daemons of {left} still running")


def describe(lab: ScaleLab) -> str:
    """A human summary: hypervisors, vswitchds with their PIDs and RSS, timings, how to look at a bridge."""
    first, last = lab.hypervisors[0], lab.hypervisors[-1]
    lines = [f"scale lab: {len(lab.hypervisors)} hypervisors ({first.name}..{last.name}) on "
             f"{len(lab.vswitchds)} vswitchds (at most {lab.bridges_per_vswitchd} bridges each), "
             f"work dir {lab.workdir}",
             f"  controller {lab.controller_target or '-'}; ports plugged: "
             f"{sum(len(hv.ports) for hv in lab.hypervisors)}; networks created: {len(lab.networks)}",
             "  timings: " + ", ".join(f"{k} {v:.2f}" for k, v in lab.timings.items())]
    rss = lab.rss_kib()
    for vs in lab.vswitchds:
        pids = vs.pids()
        lines.append(f"  vs{vs.index}: {vs.hypervisors[0].bridge}..{vs.hypervisors[-1].bridge}  "
                     + "  ".join(f"{d} pid {pid} rss {rss[vs.index].get(d, 0) / 1024:.1f} MiB"
                                 for d, pid in sorted(pids.items())))
    lines.append(f"  e.g.: ovs-ofctl -O OpenFlow13 dump-flows '{first.target}'")
    lines.append(f"        ovs-vsctl --db=unix:{first.vswitchd.db_sock} show")
    return "\n".join(lines)
