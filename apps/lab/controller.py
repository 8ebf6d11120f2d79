"""Run ``tenantflow controller`` as a child process, the way an operator would, and talk to it.

The demo, the end-to-end tests and the benchmarks all use this: the controller is
the real command (``python -m apps.cli controller ...``), its API is real HTTP,
its state a real SQLite file; SIGKILL and restart are real too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from controller.tls import TlsFiles


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int, exclude: tuple[int, ...] = ()) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 nobody listens on right now, none of ``exclude``.

    Held all at once while chosen: ports picked one after the other may repeat (a scale-out bench
    gave an instance's API the OpenFlow port it had been given minutes before, still unbound).
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            if (port := s.getsockname()[1]) not in exclude:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


class ApiError(RuntimeError):
    """A non-2xx answer from the API, with its status and NeutronError body."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ControllerProcess:
    """One controller child process with its own state file, ports and socket.

    ``tls``: the controller's key, certificate and the switches' CA (:class:`apps.lab.pki.Pki`):
    OpenFlow over TLS on ``ssl_port`` and OVSDB on ``pssl:``, both on ``ssl_host`` (an address the
    hypervisors' namespaces reach). ``allow_tcp``: the plain TCP listeners too (``--allow-tcp``),
    which the tests and benchmarks that point bridges at ``tcp:127.0.0.1`` need.
    """

    def __init__(self, workdir: str, *, db: str | None = None, api_port: int | None = None,
                 of_port: int | None = None, unix_socket: str | None = None, extra_args: list[str] | None = None,
                 tls: TlsFiles | None = None, ssl_host: str = "127.0.0.1", allow_tcp: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.db = db or os.path.join(workdir, "tenantflow.sqlite")
        api, of, ovsdb, ssl, ovsdb_ssl = free_ports(5, exclude=(api_port or 0, of_port or 0))
        self.api_port = api_port or api
        self.of_port = of_port or of
        self.unix_socket = unix_socket or os.path.join(workdir, "openflow.sock")
        # OVSDB (the controller as the hypervisors' manager): the lab's reach the unix socket
        self.ovsdb_port = ovsdb
        self.ovsdb_socket = os.path.join(workdir, "ovsdb.sock")
        self.tls, self.ssl_host, self.allow_tcp = tls, ssl_host, allow_tcp
        self.ssl_port = ssl if tls else 0  # OpenFlow over TLS
        self.ovsdb_ssl_port = ovsdb_ssl if tls else 0
        self.log_path = os.path.join(workdir, "controller.log")
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ssl_target(self) -> str:
        """The OVS controller target of the TLS listener (``ssl:IP:PORT``)."""
        return f"ssl:{self.ssl_host}:{self.ssl_port}"

    @property
    def ovsdb_ssl_target(self) -> str:
        """The OVS manager target of the OVSDB TLS listener (``ssl:IP:PORT``)."""
        return f"ssl:{self.ssl_host}:{self.ovsdb_ssl_port}"

    def argv(self) -> list[str]:
        """The command line: the documented ``tenantflow controller`` flags."""
        ovsdb = [f"punix:{self.ovsdb_socket}"]
        transport = ["--of-port", str(self.of_port) if self.allow_tcp else "0"]
        if self.allow_tcp:
            transport.append("--allow-tcp")
            ovsdb.insert(0, f"ptcp:{self.ovsdb_port}:127.0.0.1")
        if self.tls is not None:
            transport += ["--ssl-private-key", self.tls.private_key, "--ssl-certificate", self.tls.certificate,
                          "--ssl-ca-cert", self.tls.ca_cert, "--of-ssl-port", str(self.ssl_port)]
            ovsdb.append(f"pssl:{self.ovsdb_ssl_port}:{self.ssl_host}")
        # one --of-host for TCP and TLS: the TLS listener's address when there is one
        host = self.ssl_host if self.tls is not None else "127.0.0.1"
        return [sys.executable, "-m", "apps.cli", "controller", "--db", self.db, "--of-host", host, *transport,
                "--unix-socket", self.unix_socket, "--api-host", "127.0.0.1", "--api-port", str(self.api_port),
                "--ovsdb-listen", " ".join(ovsdb), *self.extra_args]

    def start(self, timeout: float = 15.0) -> ControllerProcess:
        """Start the process and wait until its API answers."""
        log = open(self.log_path, "a")  # noqa: SIM115 - the child keeps it
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            try:
                self.request("GET", "/")
                return self
            except (OSError, ApiError):
                time.sleep(0.05)
        raise RuntimeError(f"controller API did not come up in {timeout}s; see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the controller (and only it) and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM, the operator's way to stop it."""
        self.kill(signal.SIGTERM)

    def restart(self, sig: int = signal.SIGKILL) -> ControllerProcess:
        """Kill with ``sig`` and start again on the same state file, ports and socket."""
        self.kill(sig)
        return self.start()

    def __enter__(self) -> ControllerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the controller's log, for failure messages."""
        try:
            with open(self.log_path) as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    # -- API ----------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """One API call; returns the decoded JSON (None for 204); raises ApiError for 4xx/5xx."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(err.code, payload) from None

    def create(self, kind: str, **attrs: Any) -> dict:
        """POST /v2.0/<kind>s with ``{kind: attrs}``; returns the created resource."""
        return self.request("POST", f"/v2.0/{kind}s", {kind: attrs})[kind]

    def delete(self, kind: str, ident: str) -> None:
        """DELETE /v2.0/<kind>s/<id>."""
        self.request("DELETE", f"/v2.0/{kind}s/{ident}")

    def show(self, kind: str, ident: str) -> dict:
        """GET /v2.0/<kind>s/<id>."""
        return self.request("GET", f"/v2.0/{kind}s/{ident}")[kind]

    def metrics(self) -> dict[str, float]:
        """Prometheus samples at /metrics, summed over labels: {sample name: value}."""
        with urllib.request.urlopen(self.api_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def wait_hypervisor_connected(self, name: str, timeout: float = 10.0) -> None:
        """Wait until the hypervisor's bridge has connected and reported its ports."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.show("hypervisor", name).get("connected"):
                return
            time.sleep(0.05)
        raise TimeoutError(f"hypervisor {name} never connected; controller log:\n{self.log_tail()}")


def compile_stored(db_path: str, port_maps: dict[str, dict[str, int]]) -> dict[str, list]:
    """What each bridge must hold, independently of the controller's memory: ``{hypervisor: flows}``.

    The controller's SQLite file is snapshotted with the backup API (a consistent read that
    does not block the controller), loaded by the same ``Topology`` the controller uses, given
    each bridge's live port map canonicalised as the controller does (``tf-vxlan@x`` counts as
    ``tf-vxlan``), and compiled by the reference ``flows.compiler.compile_hypervisor``.
    """
    import shutil
    import sqlite3
    import tempfile

    from flows.compiler import compile_hypervisor
    from topology.model import canonical_port_map
    from topology.state import Topology

    tmp = tempfile.mkdtemp(prefix="tenantflow-compile-")
    try:
        copy = os.path.join(tmp, "snapshot.sqlite")
        src, dst = sqlite3.connect(db_path), sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        topo = Topology(copy)
        try:
            for name, ofports in port_maps.items():
                topo.set_live_ofports(name, canonical_port_map(ofports)[0])
            return {name: compile_hypervisor(topo.graph, name) for name in port_maps}
        finally:
            topo.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
