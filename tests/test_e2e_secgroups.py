"""Stateful security groups end to end: real TCP, UDP and ICMP through OVS conntrack (issue #6 acceptance, part 2).

The real controller process and three lab hypervisors; everything through the REST API.
Tenant A's network 10.50.0.0/24 and its groups: ``srv`` (ingress TCP 7100, UDP 7200 and
ICMP from members of ``cli``), ``cli`` and ``closed`` (Neutron's open egress only),
``open`` (anything in) and the project's ``default`` (egress open, ingress from members).
Tenant B has a network with the same CIDR and the same fixed addresses::

    hv1: s  10.50.0.10 (A, srv)     d1 10.50.0.31 (A, default)   b1 10.50.0.10 (B, closed)
    hv2: c  10.50.0.20 (A, cli)     d2 10.50.0.32 (A, default)   b2 10.50.0.20 (B, closed)
    hv3: m  10.50.0.40 (A, default; joins and leaves cli)        o  10.50.0.50 (A, open)

Every VM runs the same echo server on TCP 7100/7101 and UDP 7200/7201, so a dropped
packet (a timeout) can never be confused with nobody listening (a refusal). After every
rule or group change every switch holds exactly its compiled flows (no restart, no
stale flow) and the traffic follows at once.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from apps.lab import Lab, LabVM
from apps.lab.controller import ControllerProcess
from tests.e2e_fixtures import (
    attached_lab,
    capturing,
    create_port,
    create_security_group,
    create_security_group_rule,
    delete_security_group_rule,
    dump_flows,
    received_frames,
    require_lab,
    running_controller,
    send_frames,
    wait_in_sync,
    wait_port_active,
    wait_until,
    was_received,
)
from tests.lab_fixtures import wait_listening

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

PA = "project-sga-" + uuid.uuid4().hex[:8]
PB = "project-sgb-" + uuid.uuid4().hex[:8]
LAYOUT = {  # VM -> (hypervisor, project, fixed IP, group names)
    "s": ("hv1", PA, "10.50.0.10", ["srv"]),
    "c": ("hv2", PA, "10.50.0.20", ["cli"]),
    "d1": ("hv1", PA, "10.50.0.31", ["default"]),
    "d2": ("hv2", PA, "10.50.0.32", ["default"]),
    "m": ("hv3", PA, "10.50.0.40", ["default"]),
    "o": ("hv3", PA, "10.50.0.50", ["open"]),
    "b1": ("hv1", PB, "10.50.0.10", ["closed"]),
    "b2": ("hv2", PB, "10.50.0.20", ["closed"]),
}
TCP_PORTS, UDP_PORTS = (7100, 7101), (7200, 7201)
TIMEOUT = 1.0  # a probe's wait for an answer: the lab answers in milliseconds

# Echo server: every TCP connection and UDP datagram is answered "<vm name> <what was sent>"
# (TCP: every chunk, for as long as the connection lives).
SERVER = """
import socket, sys, threading
name = sys.argv[1].encode()
def serve_tcp(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(name + b" " + data)
def tcp(port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    while True:
        threading.Thread(target=serve_tcp, args=(srv.accept()[0],), daemon=True).start()
def udp(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("0.0.0.0", port))
    while True:
        data, peer = srv.recvfrom(4096)
        srv.sendto(name + b" " + data, peer)
threads = [threading.Thread(target=tcp, args=(p,)) for p in (7100, 7101)]
threads += [threading.Thread(target=udp, args=(p,)) for p in (7200, 7201)]
for t in threads:
    t.start()
"""

# Probes each "tcp:IP:PORT", "udp:IP:PORT" or "icmp:IP" at once; prints {probe: the answering
# VM's name | "ok" (ping) | "timeout" | "refused" | "error ..."} as JSON.
PROBE = """
import json, socket, subprocess, sys, threading
timeout, out = float(sys.argv[1]), {}
def probe(spec):
    proto, ip, *port = spec.split(":")
    try:
        if proto == "icmp":
            ok = subprocess.run(["ping", "-c1", "-W1", ip], capture_output=True).returncode == 0
            out[spec] = "ok" if ok else "timeout"
            return
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            s.settimeout(timeout)
            s.connect((ip, int(port[0])))
            s.send(b"probe")
            out[spec] = s.recv(256).decode().split()[0]
    except TimeoutError:
        out[spec] = "timeout"
    except ConnectionRefusedError:
        out[spec] = "refused"
    except OSError as exc:
        out[spec] = "error %s" % exc
threads = [threading.Thread(target=probe, args=(spec,)) for spec in sys.argv[2:]]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
"""


@dataclass
class Cloud:
    ctrl: ControllerProcess
    lab: Lab
    workdir: Path
    groups: dict[str, dict[str, Any]]  # tenant A's groups by name, and B's "closed" as "b-closed"
    rules: dict[str, dict[str, Any]]  # srv's ingress rules by protocol
    vms: dict[str, LabVM]

    def ip(self, vm: str) -> str:
        return LAYOUT[vm][2]

    def mac(self, vm: str) -> str:
        return str(self.vms[vm].port["mac_address"])

    def sync(self) -> None:
        """Every switch holds exactly its compiled flows: the change is complete, nothing stale is left."""
        wait_in_sync(self.ctrl, self.lab.hypervisors)

    def set_groups(self, vm: str, *names: str) -> None:
        self.ctrl.request("PUT", f"/v2.0/ports/{self.vms[vm].port_id}",
                          {"port": {"security_groups": [self.groups[n]["id"] for n in names]}})
        self.sync()

    def add_rule(self, group: str, direction: str = "ingress", **attrs: Any) -> dict[str, Any]:
        rule = create_security_group_rule(self.ctrl, self.groups[group]["id"], direction, **attrs)
        self.sync()
        return rule

    def delete_rule(self, rule: dict[str, Any]) -> None:
        delete_security_group_rule(self.ctrl, rule["id"])
        self.sync()


ACL_TABLES = (4, 6, 52, 54)  # ls_in_pre_acl, ls_in_acl, ls_out_pre_acl, ls_out_acl


def acl_flows(cloud: Cloud) -> dict[str, set[int]]:
    """Each hypervisor's ACL flows (their cookies: a cookie is a hash of the flow's content)."""
    return {hv.name: {f.cookie for f in dump_flows(hv) if f.table in ACL_TABLES} for hv in cloud.lab.hypervisors}


def probe(cloud: Cloud, src: str, *specs: str) -> dict[str, str]:
    """Run the probes from VM ``src`` (concurrently: one timeout for all)."""
    proc = cloud.vms[src].popen([sys.executable, "-c", PROBE, str(TIMEOUT), *specs], text=True)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"probe from {src}: {err}"
    return dict(json.loads(out))


def reach(cloud: Cloud, src: str, dst: str, tcp: int = 7100, udp: int = 7200) -> dict[str, str]:
    """TCP, UDP and ICMP from ``src`` to ``dst``: {"tcp"/"udp"/"icmp": outcome}."""
    ip = cloud.ip(dst)
    got = probe(cloud, src, f"tcp:{ip}:{tcp}", f"udp:{ip}:{udp}", f"icmp:{ip}")
    return {spec.split(":")[0]: outcome for spec, outcome in got.items()}


def passes(dst: str) -> dict[str, str]:
    return {"tcp": dst, "udp": dst, "icmp": "ok"}


DROPPED = {"tcp": "timeout", "udp": "timeout", "icmp": "timeout"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    require_lab()
    workdir = tmp_path_factory.mktemp("e2e-secgroups")
    prefix = "tfsg" + uuid.uuid4().hex[:5]
    with running_controller(workdir / "controller") as ctrl, attached_lab(ctrl, prefix, n_hypervisors=3) as lab:
        nets = {}
        for project in (PA, PB):
            nets[project] = ctrl.create("network", name=f"sg-{project}", project_id=project)
            ctrl.create("subnet", network_id=nets[project]["id"], cidr="10.50.0.0/24", ip_version=4,
                        project_id=project)
        groups = {name: create_security_group(ctrl, name, PA) for name in ("srv", "cli", "closed", "open")}
        groups["b-closed"] = create_security_group(ctrl, "closed", PB)
        (groups["default"],) = ctrl.request("GET", f"/v2.0/security-groups?name=default&project_id={PA}")[
            "security_groups"]
        rules = {proto: create_security_group_rule(ctrl, groups["srv"]["id"], "ingress", protocol=proto,
                                                   remote_group_id=groups["cli"]["id"], **ports)
                 for proto, ports in (("tcp", {"port_range_min": 7100, "port_range_max": 7100}),
                                      ("udp", {"port_range_min": 7200, "port_range_max": 7200}), ("icmp", {}))}
        create_security_group_rule(ctrl, groups["open"]["id"], "ingress")
        vms = {}
        for name, (host, project, ip, names) in LAYOUT.items():
            sgs = [groups["b-closed" if project == PB else n]["id"] for n in names]
            port = create_port(ctrl, nets[project], host, fixed_ips=[{"ip_address": ip}], security_groups=sgs)
            vms[name] = vm = lab.plug_vm(name, port, mtu=int(nets[project].get("mtu") or 1450))
            vm.cmd(f"{sys.executable} -c {shlex.quote(SERVER)} {name} >/dev/null 2>&1 &")
        for vm in vms.values():
            wait_port_active(ctrl, vm.port_id)
            for port in TCP_PORTS:
                wait_listening(vm, port)
        c = Cloud(ctrl, lab, workdir, groups, rules, vms)
        c.sync()
        yield c


# -- 2. allowed, disallowed, stateful --------------------------------------------------------
def test_allowed_side_gets_its_replies(cloud: Cloud) -> None:
    """c (cli) opens TCP, UDP and ICMP to s (srv admits cli): each is answered, although cli admits
    nothing in: the replies belong to connections c opened (hv2 -> hv1 and back)."""
    assert reach(cloud, "c", "s") == passes("s")


def test_unsolicited_connection_from_the_other_side_is_dropped(cloud: Cloud) -> None:
    """s's egress is open, but cli admits nothing: s's TCP, UDP and ping to c go unanswered (timeouts, not
    refusals: c's server listens), on the very ports c's connections used the other way."""
    assert reach(cloud, "s", "c") == DROPPED


def test_disallowed_ports_and_sources_are_dropped(cloud: Cloud) -> None:
    """srv admits cli on TCP 7100 / UDP 7200 only: c's TCP 7101 and UDP 7201 are dropped (while a port
    nobody listens on is refused, from the same VM: the probe tells the two apart); a port outside
    cli (d1, default group) gets nothing through to s."""
    ip = cloud.ip("s")
    assert probe(cloud, "c", f"tcp:{ip}:7101", f"udp:{ip}:7201") == {f"tcp:{ip}:7101": "timeout",
                                                                       f"udp:{ip}:7201": "timeout"}
    assert reach(cloud, "d1", "s") == DROPPED
    assert reach(cloud, "c", "o", tcp=7109) == {"tcp": "refused", "udp": "o", "icmp": "ok"}


def test_default_group_open_egress_and_ingress_from_members_only(cloud: Cloud) -> None:
    """default: d1 (hv1) and d2 (hv2) reach each other both ways; m (hv3, default) reaches d1; d1's egress
    reaches o (open) though o is no member; c and o (not members) reach neither d1 nor d2."""
    assert reach(cloud, "d1", "d2") == passes("d2")
    assert reach(cloud, "d2", "d1") == passes("d1")
    assert reach(cloud, "m", "d1") == passes("d1")
    assert reach(cloud, "d1", "o") == passes("o")
    for src, dst in (("c", "d1"), ("o", "d2"), ("o", "d1")):
        assert reach(cloud, src, dst) == DROPPED, (src, dst)


def test_remote_group_rules_follow_membership(cloud: Cloud) -> None:
    """m (hv3) joins cli by PUT: s admits it on TCP, UDP and ICMP; m leaves cli: dropped again. No restart;
    every switch equal to its compiled flows after each change."""
    assert reach(cloud, "m", "s") == DROPPED
    before = acl_flows(cloud)
    try:
        cloud.set_groups("m", "default", "cli")
        assert acl_flows(cloud)["hv1"] != before["hv1"], "m's address was not added to s's remote-group match"
        assert reach(cloud, "m", "s") == passes("s")
        cloud.set_groups("m", "cli")  # leaves default: d1 no longer admits it, s still does
        assert reach(cloud, "m", "d1") == DROPPED
        assert reach(cloud, "m", "s") == passes("s")
    finally:
        cloud.set_groups("m", "default")
    assert acl_flows(cloud) == before, "leaving cli left ACL flows behind"
    assert reach(cloud, "m", "s") == DROPPED
    assert reach(cloud, "m", "d1") == passes("d1")


# -- 3. rule and group changes, live, no stale flow -----------------------------------------
def test_rule_changes_apply_live_and_leave_no_stale_flow(cloud: Cloud) -> None:
    """A prefix rule added to srv admits d1 on TCP 7101 (and c); deleted, both are dropped again. A group
    added to s (UDP 7201 from anywhere) admits d1; s's groups put back, dropped again; the group deleted.
    Each change is live and leaves every switch exactly equal to its compiled flows."""
    ip = cloud.ip("s")
    t7101, u7201 = f"tcp:{ip}:7101", f"udp:{ip}:7201"
    before = acl_flows(cloud)
    rule = cloud.add_rule("srv", protocol="tcp", port_range_min=7101, port_range_max=7101,
                          remote_ip_prefix="10.50.0.0/24")
    assert probe(cloud, "d1", t7101) == {t7101: "s"}
    assert probe(cloud, "c", t7101) == {t7101: "s"}
    cloud.delete_rule(rule)
    assert acl_flows(cloud) == before, "the deleted rule left flows behind"
    assert probe(cloud, "d1", t7101) == {t7101: "timeout"}
    assert probe(cloud, "c", t7101) == {t7101: "timeout"}

    extra = create_security_group(cloud.ctrl, "udp7201", PA)
    cloud.groups["udp7201"] = extra
    try:
        cloud.add_rule("udp7201", protocol="udp", port_range_min=7201, port_range_max=7201)
        assert probe(cloud, "d1", u7201) == {u7201: "timeout"}
        cloud.set_groups("s", "srv", "udp7201")
        assert probe(cloud, "d1", u7201, t7101) == {u7201: "s", t7101: "timeout"}
    finally:
        cloud.set_groups("s", "srv")
    assert probe(cloud, "d1", u7201) == {u7201: "timeout"}
    cloud.ctrl.request("DELETE", f"/v2.0/security-groups/{extra['id']}")
    cloud.sync()
    assert acl_flows(cloud) == before, "the removed group left flows behind"
    assert reach(cloud, "c", "s") == passes("s")


# -- 4. removing a rule cuts what it allowed ------------------------------------------------
LONG_CLIENT = """
import socket, sys, threading, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(None)
out = open(sys.argv[3], "ab", buffering=0)
def read():
    while data := s.recv(4096):
        out.write(data.replace(b"s x", b"."))
threading.Thread(target=read, daemon=True).start()
while True:
    s.sendall(b"x")
    time.sleep(0.05)
"""


class Stream:
    """A counter of answers that grows while traffic passes: a ping or a long-lived TCP connection."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], path: Path, count: Callable[[str], int]) -> None:
        self.name, self.proc, self.path, self._count = name, proc, path, count

    def answers(self) -> int:
        return self._count(self.path.read_text(errors="replace"))

    def flowing(self, timeout: float = 15.0) -> None:
        start = self.answers()
        wait_until(lambda: self.answers() >= start + 5, timeout, f"{self.name} answered again")

    def stopped(self, quiet: float = 1.0) -> None:
        """No answer for ``quiet`` seconds (after what was already in flight)."""
        wait_until(lambda: self._quiet_for(quiet), 5 + quiet, f"{self.name} to stop", interval=quiet)

    def _quiet_for(self, seconds: float) -> bool:
        before = self.answers()
        try:
            wait_until(lambda: self.answers() != before, seconds, interval=0.05)
        except TimeoutError:
            return True
        return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def test_removing_a_rule_cuts_established_connections(cloud: Cloud) -> None:
    """A ping stream and a long-lived TCP connection from c to s, both allowed by srv's rules: deleting
    the rules stops both (conntrack state alone does not keep the original direction passing, as in
    Neutron); re-adding them lets the very same TCP connection and ping carry on."""
    c, s_ip = cloud.vms["c"], cloud.ip("s")
    ping_out, tcp_out = cloud.workdir / "ping-stream.txt", cloud.workdir / "tcp-stream.txt"
    tcp_out.write_bytes(b"")
    with open(ping_out, "w") as out:
        ping = Stream("ping c -> s", c.popen(["ping", "-i", "0.05", s_ip], stdout=out, stderr=subprocess.STDOUT),
                      ping_out, lambda text: text.count(" bytes from "))
    tcp = Stream("TCP c -> s:7100", c.popen([sys.executable, "-c", LONG_CLIENT, s_ip, "7100", str(tcp_out)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                 tcp_out, lambda text: text.count("."))
    try:
        ping.flowing()
        tcp.flowing()
        for proto in ("icmp", "tcp"):
            cloud.delete_rule(cloud.rules[proto])
        ping.stopped()
        tcp.stopped()
        assert tcp.proc.poll() is None, "the TCP client gave up: the connection did not survive the cut"
        ports = {"tcp": {"port_range_min": 7100, "port_range_max": 7100}, "icmp": {}}
        for proto in ("icmp", "tcp"):
            cloud.rules[proto] = cloud.add_rule("srv", protocol=proto, remote_group_id=cloud.groups["cli"]["id"],
                                                **ports[proto])
        ping.flowing()
        tcp.flowing()
    finally:
        ping.kill()
        tcp.kill()


# -- 5. conntrack zones ---------------------------------------------------------------------
def udp(cloud: Cloud, src: str, dst: str, sport: int, dport: int, tag: str) -> bytes:
    return bytes(Ether(src=cloud.mac(src), dst=cloud.mac(dst)) / IP(src=cloud.ip(src), dst=cloud.ip(dst))
                 / UDP(sport=sport, dport=dport) / Raw(tag.encode()))


def test_tenants_with_the_same_addresses_never_share_conntrack_state(cloud: Cloud) -> None:
    """c (A, hv2) sends UDP 5555 -> s:7200 and 5556 -> s:7200 (admitted): committed in c's zone on hv2 and
    s's zone on hv1. s's reply 7200 -> 5555 reaches c (cli admits nothing: only the connection lets it
    in). b1 and b2 (B: the same addresses as s and c, on the same hypervisors) send the identical
    5-tuples: b2's request 5556 -> 7200 and b1's "reply" 7200 -> 5555; neither arrives. (B never sends
    both directions of one 5-tuple: its own connection would then rightly let the other in.) Once B's
    group admits UDP, the same frames do arrive: the captures can see them."""
    hv1, hv2 = cloud.lab.hypervisor("hv1"), cloud.lab.hypervisor("hv2")
    send_frames(cloud.vms["c"], [udp(cloud, "c", "s", sport, 7200, f"zone-a-{sport}") for sport in (5555, 5556)])
    for hv in (hv1, hv2):
        wait_until(lambda hv=hv: all(f"sport={p},dport=7200" in hv.appctl("dpctl/dump-conntrack")
                                     for p in (5555, 5556)), 5, f"A's connections in {hv.name}'s conntrack")
    sends = [("s", udp(cloud, "s", "c", 7200, 5555, "zone-reply-a")),
             ("b2", udp(cloud, "b2", "b1", 5556, 7200, "zone-request-b")),
             ("b1", udp(cloud, "b1", "b2", 7200, 5555, "zone-reply-b"))]
    assert deliveries(cloud, sends, "zones") == [True, False, False]
    rule = cloud.add_rule("b-closed", protocol="udp")
    try:
        assert deliveries(cloud, sends[1:], "zones-admitted") == [True, True]
    finally:
        cloud.delete_rule(rule)


def deliveries(cloud: Cloud, sends: list[tuple[str, bytes]], tag: str) -> list[bool]:
    """Send each (VM, frame) with captures on every destination: whether each arrived at its destination."""
    by_mac = {cloud.mac(name): name for name in LAYOUT}
    dsts = sorted({by_mac[Ether(frame).dst] for _, frame in sends})
    with capturing([cloud.vms[d] for d in dsts], cloud.workdir / tag) as caps:
        for vm, frame in sends:
            send_frames(cloud.vms[vm], [frame])
    received = {d: received_frames(caps[d]) for d in dsts}
    return [was_received(received[by_mac[Ether(frame).dst]], frame) for _, frame in sends]


def test_stateless_group_checks_every_packet_replies_included(cloud: Cloud) -> None:
    group = create_security_group(cloud.ctrl, "stateless", PA, stateful=False)
    cloud.groups["stateless"] = group
    for rule in group["security_group_rules"]:  # a new group's open egress: not wanted here
        delete_security_group_rule(cloud.ctrl, rule["id"])
    for proto, port in (("udp", 7200), ("tcp", 7100)):
        cloud.add_rule("stateless", protocol=proto, port_range_min=port, port_range_max=port)
    cloud.set_groups("o", "stateless")
    try:
        ip = cloud.ip("o")
        specs = (f"udp:{ip}:7200", f"tcp:{ip}:7100")
        # The requests are let in, but no connection is remembered: the answers find no rule.
        assert probe(cloud, "c", *specs) == {specs[0]: "timeout", specs[1]: "timeout"}
        for proto in ("udp", "tcp"):
            cloud.add_rule("stateless", "egress", protocol=proto)
        assert probe(cloud, "c", *specs) == {specs[0]: "o", specs[1]: "o"}
    finally:
        cloud.set_groups("o", "open")
