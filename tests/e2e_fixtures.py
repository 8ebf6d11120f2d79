"""Shared helpers for end-to-end tests: the real controller process plus a lab wired to it.

An end-to-end test runs ``tenantflow controller`` as a child process
(:class:`apps.lab.controller.ControllerProcess`), builds a lab whose hypervisors
reach it over its OpenFlow unix socket, and drives everything through the REST
API, exactly as an operator and Nova would. Import what you need::

    from tests.e2e_fixtures import controller, attached_lab, plug_new_vm, wait_until

``controller`` is a function-scoped fixture; :func:`running_controller` is the
context manager behind it, for module-scoped fixtures (with ``tmp_path_factory``).
Every helper fails with the controller's log tail attached, since that is where the
cause of an end-to-end failure usually is.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apps.lab import Hypervisor, Lab, LabVM, sh
from apps.lab.controller import ControllerProcess, compile_stored
from apps.lab.pki import TlsSetup, tls_setup
from apps.lab.sh import wait_until
from controller.switch import learned_cookies
from flows.flow import Flow
from flows.pipeline import STAGES
from tests.lab_fixtures import lab_problem, require_lab

__all__ = [
    "Capture",
    "SwitchFlow",
    "TlsSetup",
    "attached_lab",
    "capturing",
    "compiled",
    "compiled_cookies",
    "controller",
    "create_network",
    "create_port",
    "create_security_group",
    "create_security_group_rule",
    "delete_security_group_rule",
    "dump_flows",
    "flows_mentioning",
    "in_sync",
    "lab_problem",
    "plug_new_vm",
    "port_ip",
    "received_frames",
    "require_lab",
    "send_frames",
    "running_controller",
    "tls_setup",
    "switch_cookies",
    "sync_difference",
    "wait_in_sync",
    "wait_port_active",
    "wait_until",
    "was_received",
]



@contextlib.contextmanager
def running_controller(workdir: str | os.PathLike[str], *extra_args: str,
                       tls: TlsSetup | None = None) -> Iterator[ControllerProcess]:
    """A started ``tenantflow controller`` with its state, log and socket in ``workdir``; stopped on exit.

    With ``tls``: switches connect over TLS only (its certificate from ``tls.pki``, listening on
    the management network), with no plain TCP listener at all (no ``--allow-tcp``).
    """
    ctrl = ControllerProcess(str(workdir), extra_args=list(extra_args), **(tls.controller_kwargs() if tls else {}))
    ctrl.start()
    try:
        yield ctrl
    finally:
        ctrl.stop()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    """A running controller process private to this test (state in ``tmp_path``), stopped at teardown."""
    require_lab()
    with running_controller(tmp_path / "controller") as ctrl:
        yield ctrl


@contextlib.contextmanager
def attached_lab(
    ctrl: ControllerProcess,
    prefix: str,
    n_hypervisors: int = 2,
    connect_timeout: float = 15.0,
    tls: TlsSetup | None = None,
    **lab_kwargs: Any,
) -> Iterator[Lab]:
    """A lab whose hypervisors are attached to ``ctrl`` (unix socket), registered and connected.

    With ``tls`` (``ctrl`` started with the same): over TLS instead, OpenFlow and OVSDB, each
    hypervisor with its own certificate, across the management network.
    ``prefix`` must be unique per test module (namespaces are named after it). Extra
    keyword arguments go to :class:`apps.lab.Lab` (``provider=True``...). The lab is torn
    down on exit, whatever happened.
    """
    if tls is None:
        lab_kwargs.setdefault("manager_unix_socket", ctrl.ovsdb_socket)  # operator step 2's set-manager
        lab_kwargs.setdefault("controller_unix_socket", ctrl.unix_socket)
    else:
        lab_kwargs.update(tls.lab_kwargs([ctrl]))
    with Lab(
        prefix=prefix,
        n_hypervisors=n_hypervisors,
        api_url=ctrl.api_url,
        **lab_kwargs,
    ) as lab:
        lab.register_hypervisors()
        for hv in lab.hypervisors:
            ctrl.wait_hypervisor_connected(hv.name, timeout=connect_timeout)
        yield lab


def create_network(
    ctrl: ControllerProcess,
    name: str,
    cidr: str = "10.0.0.0/24",
    project_id: str | None = None,
    **attrs: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST a network (``attrs`` may hold ``provider:*`` keys) and one IPv4 subnet on it; returns both."""
    if project_id is not None:
        attrs["project_id"] = project_id
    net = ctrl.create("network", name=name, **attrs)
    subnet_attrs: dict[str, Any] = {"network_id": net["id"], "cidr": cidr, "ip_version": 4}
    if project_id is not None:
        subnet_attrs["project_id"] = project_id
    subnet = ctrl.create("subnet", **subnet_attrs)
    return net, subnet


def create_port(ctrl: ControllerProcess, net: dict[str, Any], host: str, **attrs: Any) -> dict[str, Any]:
    """POST a Nova-style port on ``net`` bound to hypervisor ``host`` (same project as the network)."""
    attrs.setdefault("device_owner", "compute:nova")
    attrs.setdefault("project_id", net["project_id"])
    return ctrl.create("port", network_id=net["id"], **{"binding:host_id": host}, **attrs)


def create_security_group(ctrl: ControllerProcess, name: str, project_id: str, **attrs: Any) -> dict[str, Any]:
    """POST a security group (it comes with Neutron's two open egress rules); ``attrs``: ``stateful``..."""
    body = {"security_group": {"name": name, "project_id": project_id, **attrs}}
    return dict(ctrl.request("POST", "/v2.0/security-groups", body)["security_group"])


def create_security_group_rule(ctrl: ControllerProcess, sg_id: str, direction: str, **attrs: Any) -> dict[str, Any]:
    """POST a rule into group ``sg_id`` (``ethertype`` IPv4 unless given; ``protocol``, ports, remotes...)."""
    attrs.setdefault("ethertype", "IPv4")
    body = {"security_group_rule": {"security_group_id": sg_id, "direction": direction, **attrs}}
    return dict(ctrl.request("POST", "/v2.0/security-group-rules", body)["security_group_rule"])


def delete_security_group_rule(ctrl: ControllerProcess, rule_id: str) -> None:
    """DELETE a security group rule."""
    ctrl.request("DELETE", f"/v2.0/security-group-rules/{rule_id}")


def port_ip(port: dict[str, Any]) -> str:
    """The port's first fixed IP address."""
    return str(port["fixed_ips"][0]["ip_address"])


def wait_port_active(ctrl: ControllerProcess, port_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the API shows the port ``ACTIVE`` (its tap was seen on its host); returns the port."""

    def active() -> dict[str, Any] | None:
        port = ctrl.show("port", port_id)
        return port if port["status"] == "ACTIVE" else None

    return wait_until(
        active,
        timeout,
        message=lambda: f"port {port_id} ACTIVE; controller log:\n{ctrl.log_tail()}",
    )


def plug_new_vm(
    ctrl: ControllerProcess,
    lab: Lab,
    name: str,
    net: dict[str, Any],
    host: str,
    fixed_ips: list[dict[str, str]] | None = None,
    wait_active: bool = True,
    **port_attrs: Any,
) -> LabVM:
    """Create a port on ``net`` bound to ``host`` through the API and boot VM ``name`` on it.

    The VM's NIC gets the network's MTU (1450 on overlays) and every fixed IP of the
    port. With ``wait_active`` the call returns once the controller has seen the tap;
    that does not mean every peer hypervisor has its flows yet: poll for traffic.
    """
    if fixed_ips is not None:
        port_attrs["fixed_ips"] = fixed_ips
    port = create_port(ctrl, net, host, **port_attrs)
    vm = lab.plug_vm(name, port, mtu=int(net.get("mtu") or 1450))
    if wait_active:
        wait_port_active(ctrl, port["id"])
    return vm


def flows_mentioning(hv: Hypervisor, *needles: str, bridge: str = "br-int") -> list[str]:
    """The ``dump-flows`` lines of ``hv``'s bridge containing any of ``needles`` (case-insensitive)."""
    pattern = re.compile("|".join(re.escape(n) for n in needles), re.IGNORECASE)
    return [line for line in hv.ofctl("dump-flows", bridge).splitlines() if pattern.search(line)]


MARKER_ETHERTYPE = 0x88B5  # IEEE 802 "local experimental": nothing else sends it
MARKER_SENDER = """
import socket, sys
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind(("eth0", 0))
    s.send(mac + mac + b"\\x88\\xb5" + b"tenantflow capture marker".ljust(46, b"\\0"))
"""
FRAME_RE = re.compile(r"^\S+ (?P<src>[0-9a-f]{2}(?::[0-9a-f]{2}){5}) > (?P<dst>[0-9a-f]{2}(?::[0-9a-f]{2}){5}),")


class Capture:
    """``tcpdump`` on a VM's ``eth0`` into a pcap file: started before the traffic, stopped by PID after.

    The file is written packet by packet (``-U``), so nothing is lost when it stops.
    ``-Z root``: Debian's tcpdump otherwise drops to user ``tcpdump`` and may not be
    allowed to write into the test's temporary directory.
    """

    def __init__(self, vm: LabVM, directory: str | os.PathLike[str], bpf: tuple[str, ...] = ()) -> None:
        self.vm = vm
        self.path = os.path.join(directory, f"{vm.name}.pcap")
        self.errpath = self.path + ".err"
        self.bpf = bpf
        self.proc: subprocess.Popen[bytes] | None = None
        self._markers_sent = 0

    def start(self, timeout: float = 5.0) -> Capture:
        """Start tcpdump in the VM's namespace and wait until it is listening."""
        with open(self.errpath, "w") as err:
            self.proc = self.vm.popen(
                ["tcpdump", "-i", "eth0", "-n", "-U", "-Z", "root", "-w", self.path, *self.bpf],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump in {self.vm.name} exited: {Path(self.errpath).read_text()}")
            return "listening on" in Path(self.errpath).read_text()

        wait_until(listening, timeout, message=f"tcpdump listening in {self.vm.name}")
        return self

    def send_marker(self) -> None:
        """Send one marker frame (ethertype :data:`MARKER_ETHERTYPE`) out of the VM's eth0.

        Addressed to the VM's own MAC: the hypervisor never sends a frame back out of
        its in_port, so the marker goes nowhere, but the capture sees it leave.
        """
        self._markers_sent += 1
        self.vm.cmd(f"{sys.executable} -c {shlex.quote(MARKER_SENDER)} {self.vm.port['mac_address']}")

    def wait_marker(self, timeout: float = 5.0) -> None:
        """Wait until every marker sent so far is in the pcap file."""

        def written() -> bool:
            return len(self.lines(check=False, ethertype=MARKER_ETHERTYPE)) >= self._markers_sent

        wait_until(written, timeout, message=f"the capture marker in {self.vm.name}'s pcap")

    def sync(self) -> None:
        """Make sure everything that crossed eth0 so far is in the pcap file.

        tcpdump reads the packet socket asynchronously: stopped right after the traffic,
        it may never write the last frames. A frame sent after the traffic and found in
        the file proves every earlier frame was processed (one socket, in order).
        """
        self.send_marker()
        self.wait_marker()

    def stop(self, sync: bool = True) -> None:
        """Sync (unless told not to), then SIGINT tcpdump (by its PID) and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if sync:
            self.sync()
        sh.interrupt(self.proc)

    def lines(self, check: bool = True, ethertype: int | None = None) -> list[str]:
        """The capture decoded by ``tcpdump -r -n -e`` (link-level headers: source and destination MAC).

        Capture markers are left out unless ``ethertype`` selects them (a BPF filter).
        ``check=False``: tolerate a file still being written (a truncated last record).
        """
        bpf = [f"ether proto {ethertype:#x}"] if ethertype else [f"not ether proto {MARKER_ETHERTYPE:#x}"]
        out = subprocess.run(["tcpdump", "-r", self.path, "-n", "-e", *bpf], capture_output=True, text=True)
        if check and out.returncode != 0:
            raise RuntimeError(f"tcpdump -r {self.path}: {out.stderr}")
        return out.stdout.splitlines()

    def frames_from(self, *macs: str) -> list[str]:
        """Captured frames whose Ethernet source is one of ``macs``."""
        wanted = {m.lower() for m in macs}
        return [line for line in self.lines() if (m := FRAME_RE.match(line)) and m["src"] in wanted]

    def mentioning(self, *needles: str) -> list[str]:
        """Captured frames whose decoded line contains any of ``needles`` (MACs, addresses...)."""
        lowered = [n.lower() for n in needles]
        return [line for line in self.lines() if any(n in line.lower() for n in lowered)]


@contextlib.contextmanager
def capturing(
    vms: list[LabVM], directory: str | os.PathLike[str], bpf: tuple[str, ...] = ()
) -> Iterator[dict[str, Capture]]:
    """Capture on every VM of ``vms`` for the duration of the block; ``{vm name: Capture}``.

    The captures are stopped when the block exits; read them afterwards.
    """
    os.makedirs(directory, exist_ok=True)
    captures: dict[str, Capture] = {}
    try:
        for vm in vms:
            captures[vm.name] = Capture(vm, directory, bpf).start()
        yield captures
    finally:
        # markers first, all at once, then wait for each: one round trip, not one per VM
        for cap in captures.values():
            cap.send_marker()
        for cap in captures.values():
            cap.wait_marker()
            cap.stop(sync=False)


# -- raw frames -----------------------------------------------------------------------------
FRAME_SENDER = """
import socket, sys
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind(("eth0", 0))
    for frame in sys.argv[1:]:
        s.send(bytes.fromhex(frame))
"""


def send_frames(vm: LabVM, frames: list[bytes]) -> None:
    """Send each frame, as built (e.g. ``bytes(scapy packet)``), out of the VM's eth0: what a guest
    that forges its headers puts on the wire."""
    args = " ".join(f.hex() for f in frames)
    out = vm.cmd(f"{sys.executable} -c {shlex.quote(FRAME_SENDER)} {args}; echo rc=$?")
    assert out.strip().endswith("rc=0"), f"sending raw frames from {vm.name}: {out}"


def received_frames(capture: Capture) -> list[bytes]:
    """The raw bytes of every frame in a stopped :class:`Capture` (markers included)."""
    from scapy.utils import RawPcapReader

    with RawPcapReader(capture.path) as reader:
        return [bytes(data) for data, _ in reader]


def was_received(received: list[bytes], frame: bytes) -> bool:
    """Whether ``frame`` arrived unchanged (trailing Ethernet padding aside)."""
    return any(r[: len(frame)] == frame for r in received)


# -- traffic helpers shared by the real-packet tests ---------------------------------------
PACKET_INS = "tenantflow_packet_ins_total"

# An echo server that answers every TCP connection with its VM's name and what it was sent:
# a reply names the VM that really received the connection, whatever its IP says.
ECHO_SERVER = """
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(16)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.settimeout(2)
        try:
            conn.sendall(name.encode() + b" " + conn.recv(256))
        except OSError:
            pass
"""

# Connects to each address in turn and prints {address: reply or "error: ..."} as JSON.
ECHO_CLIENT = """
import json, socket, sys
token, port, out = sys.argv[1], int(sys.argv[2]), {}
for ip in sys.argv[3:]:
    try:
        with socket.create_connection((ip, port), timeout=2) as s:
            s.sendall(token.encode())
            s.shutdown(socket.SHUT_WR)
            out[ip] = s.recv(256).decode()
    except OSError as exc:
        out[ip] = "error: %s" % exc
print(json.dumps(out))
"""


def packet_ins(ctrl: ControllerProcess) -> float:
    """The controller's packet-in counter (absent until the first packet-in: a labelled counter)."""
    return ctrl.metrics().get(PACKET_INS, 0.0)


class NoPacketIns:
    """Context manager: the controller's packet-in counter must not move inside the block."""

    def __init__(self, ctrl: ControllerProcess) -> None:
        self.ctrl = ctrl

    def __enter__(self) -> NoPacketIns:
        self.before = packet_ins(self.ctrl)
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            after = packet_ins(self.ctrl)
            assert after == self.before, f"packet-ins moved {self.before} -> {after} during steady-state traffic"


# -- switches equal to the compiled flows --------------------------------------------------
# "Compiled" is computed independently of the controller's memory: the topology is read
# from a snapshot of the controller's SQLite file, the port map from the switch itself,
# and flows.compiler.compile_hypervisor does the rest.
OFPP_LOCAL = 0xFFFFFFFE
_SWITCH_OWNED = {s.table_id: s.switch_owned for s in STAGES}


@dataclass(frozen=True)
class SwitchFlow:
    """One flow as ``ovs-ofctl dump-flows`` shows it."""

    cookie: int
    table: int
    n_packets: int
    duration: float
    spec: str  # "priority=...,<match>": with the table, what --strict del-flows needs


_FLOW_LINE = re.compile(
    r"cookie=(0x[0-9a-f]+), duration=([0-9.]+)s, table=(\d+), n_packets=(\d+), n_bytes=\d+, "
    r"(?:[a-z_]+=[^ ,]+, )*(\S*?) actions="
)


def dump_flows(hv: Hypervisor) -> list[SwitchFlow]:
    """Every flow on ``hv``'s br-int, read from the switch."""
    flows = []
    for line in hv.ofctl("dump-flows", "br-int").splitlines():
        m = _FLOW_LINE.search(line)
        if m:
            cookie, duration, table, n_packets, spec = m.groups()
            flows.append(SwitchFlow(int(cookie, 16), int(table), int(n_packets), float(duration), spec))
        elif "cookie=" in line:
            raise AssertionError(f"cannot parse dump-flows line: {line!r}")
    return flows


def switch_cookies(hv: Hypervisor, learned: AbstractSet[int] = frozenset()) -> Counter[tuple[int, int]]:
    """The (table, cookie) multiset on ``hv``'s br-int, without the flows the switch learned itself.

    ``learned``: the cookies of the compiled learn actions (:func:`controller.switch.learned_cookies`); a flow
    with one of them in a ``switch_owned`` stage (``lr_in_mac_binding``, table 49) was added by
    the switch, not compiled, and is left out.
    """
    return Counter((f.table, f.cookie) for f in dump_flows(hv)
                   if not (f.cookie in learned and _SWITCH_OWNED.get(f.table)))


def switch_ofports(hv: Hypervisor) -> dict[str, int]:
    """br-int's port map (name -> OpenFlow port), as the switch reports it to a controller."""
    ports = {}
    for m in re.finditer(r"^\s*(\d+|LOCAL)\(([^)]+)\):", hv.ofctl("dump-ports-desc", "br-int"), re.M):
        ports[m.group(2)] = OFPP_LOCAL if m.group(1) == "LOCAL" else int(m.group(1))
    return ports


def compiled(ctl: ControllerProcess, hv: Hypervisor) -> list[Flow]:
    """What ``hv`` must hold: the controller's stored topology plus the switch's live port map, compiled.

    The SQLite file is snapshotted with the backup API (a consistent read that does not
    block the controller), then loaded by the same :class:`Topology` the controller uses.
    """
    return compile_stored(ctl.db, {hv.name: switch_ofports(hv)})[hv.name]


def compiled_cookies(ctl: ControllerProcess, hv: Hypervisor) -> Counter[tuple[int, int]]:
    """The (table, cookie) multiset ``hv`` must hold (each exactly once)."""
    return Counter((f.table_id, f.cookie) for f in compiled(ctl, hv))


Cookies = Counter[tuple[int, int]]  # (table, cookie) -> how many flows


def sync_difference(ctl: ControllerProcess, hv: Hypervisor) -> tuple[Cookies, Cookies]:
    """(extra, missing): what ``hv``'s br-int holds beyond its compiled flows, and what it lacks.

    Switch-learned flows (table 49) are not compiled and are not counted as extra.
    """
    flows = compiled(ctl, hv)
    want = Counter((f.table_id, f.cookie) for f in flows)
    have = switch_cookies(hv, learned_cookies(flows))
    return have - want, want - have


def in_sync(ctl: ControllerProcess, hvs: list[Hypervisor]) -> bool:
    """True when every hypervisor's br-int holds exactly its compiled flows (switch-learned ones aside)."""
    return all(sync_difference(ctl, hv) == (Counter(), Counter()) for hv in hvs)


def wait_in_sync(ctl: ControllerProcess, hvs: list[Hypervisor], timeout: float = 15.0) -> None:
    """Wait until :func:`in_sync`; on timeout show the differences and the controller's log."""

    def explain() -> str:
        lines = []
        for hv in hvs:
            extra, missing = sync_difference(ctl, hv)
            lines.append(f"{hv.name}: extra {sorted(extra)} missing {sorted(missing)}")
        return "switches equal to the compiled flows:\n" + "\n".join(lines) + "\n" + ctl.log_tail()

    wait_until(lambda: in_sync(ctl, hvs), timeout, explain, interval=0.1)


def pings(host: LabVM, dst: str, count: int = 3, interval: float = 0.2) -> int:
    """How many of ``count`` pings from ``host`` to ``dst`` were answered."""
    out = host.cmd(f"ping -c{count} -i{interval} -W1 {dst}")
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


def start_echo(host: LabVM, name: str, port: int) -> None:
    """Run the echo server (``ECHO_SERVER``, answering ``<name> <token>``) in ``host`` on TCP ``port``."""
    from tests.lab_fixtures import wait_listening

    host.popen([sys.executable, "-c", ECHO_SERVER, name, str(port)], stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL)
    wait_listening(host, port)
