"""The demo's checks beyond the matrices: each drives real traffic and returns a :class:`Claim`.

- :func:`check_routing`: a VM pings a VM of the other subnet on another hypervisor; the reply's
  TTL and a capture of the whole underlay show one routed hop, straight between the two.
- :func:`check_floating_ip`: the outside host opens TCP connections to a VM's floating IP.
- :func:`check_security_group`: on the same VM, SSH (TCP 22) is let in from outside and another
  port, on which the VM listens too, is dropped.
- :func:`check_snat`: a VM without a floating IP connects to the outside host, which sees the
  router's gateway address; the capture shows the way through the gateway hypervisor.
- :func:`check_restart`: the controller is SIGKILLed and restarted while VMs ping each other.

Captures run in the lab's fabric namespace, on every cable at once (``tcpdump -i any``): each
line names the cable (``hv1-u``: hypervisor 1's underlay NIC, ``hv4-p``: hypervisor 4's
provider NIC) and the direction (``Out``: towards that hypervisor; otherwise from it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from apps.demo_report import Claim
from apps.lab import sh
from apps.lab.controller import ControllerProcess
from apps.lab.lab import Lab, LabVM

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_probe.py")
_PACKET_START = re.compile(r"^\d\d:\d\d:\d\d\.\d+ (\S+)\s+(\S+)\s+(.*)$")


# -- helpers ----------------------------------------------------------------------------------------
def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``cond`` until truthy; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def serve(host: LabVM, name: str, *ports: int) -> subprocess.Popen:
    """Start :mod:`apps.demo_probe`'s server in ``host`` on ``ports``; returns once it listens."""
    proc = host.popen([sys.executable, PROBE, "serve", name, *map(str, ports)], stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"probe server in {host.name} did not start: {line}")
    return proc


def connect(host: LabVM, timeout: float, *targets: str) -> dict[str, str]:
    """TCP from ``host`` to each ``ADDRESS:PORT`` (:mod:`apps.demo_probe`): the answer or the error."""
    out = sh.run([sys.executable, PROBE, "connect", str(timeout), *targets], netns=host.netns,
                 timeout=timeout * len(targets) + 10)
    return dict(json.loads(out.strip().splitlines()[-1]))


@dataclass
class Packet:
    """One captured frame: the cable it crossed, the direction, and tcpdump's text of it."""

    cable: str
    outbound: bool  # towards the hypervisor (``Out`` on the fabric's end of its cable)
    text: str

    @property
    def hypervisor(self) -> str:
        """The hypervisor at the other end of the cable (``hv1-u`` -> ``hv1``)."""
        return self.cable.rsplit("-", 1)[0]


class FabricCapture:
    """``tcpdump -i any`` in the lab's fabric namespace (every hypervisor's cables), as text."""

    def __init__(self, lab: Lab, path: str, bpf: str, *options: str) -> None:
        self.lab, self.path, self.bpf, self.options = lab, path, bpf, options
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> FabricCapture:
        err = self.path + ".err"
        with open(self.path, "w") as out, open(err, "w") as errf:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.lab.fabric_netns, "tcpdump", "-i", "any",
                                          "-n", "-l", *self.options, *self.bpf.split()], stdout=out, stderr=errf)
        wait_for(lambda: "listening on" in open(err).read(), 5, "tcpdump to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # tcpdump reads its socket asynchronously: let it write the last frames
        if self.proc is not None:
            sh.kill_pids([self.proc.pid])

    def packets(self) -> list[Packet]:
        """The frames captured, continuation lines (``-v``, a tunnel's inner packet) joined to their frame."""
        packets: list[Packet] = []
        with open(self.path) as fh:
            for line in fh:
                match = _PACKET_START.match(line)
                if match:
                    packets.append(Packet(match[1], match[2] == "Out", match[3]))
                elif packets:
                    packets[-1].text += " " + line.strip()
        return packets


def _hvs(packets: list[Packet]) -> str:
    return ", ".join(sorted({p.cable for p in packets})) or "none"


# -- routing ----------------------------------------------------------------------------------------
def check_routing(lab: Lab, src: LabVM, src_ip: str, dst: LabVM, dst_ip: str, workdir: str) -> Claim:
    """``src`` pings ``dst`` (another subnet, another hypervisor): one hop, straight across the underlay."""
    src_hv, dst_hv = src.hypervisor, dst.hypervisor
    with FabricCapture(lab, os.path.join(workdir, "routing.txt"), "udp port 4789", "-v") as cap:
        out = sh.run(["ping", "-n", "-c3", "-i0.1", "-W1", dst_ip], netns=src.netns, check=False)
    ttls = [int(t) for t in re.findall(r"ttl=(\d+)", out)]
    request, reply = f"{src_ip} > {dst_ip}: ICMP echo request", f"{dst_ip} > {src_ip}: ICMP echo reply"
    requests = [p for p in cap.packets() if request in p.text]
    replies = [p for p in cap.packets() if reply in p.text]
    inner_ttls = {int(t) for p in requests + replies for t in re.findall(r"ttl (\d+), id \d+, offset \d+, flags "
                                                                          r"\[[^]]*\], proto ICMP", p.text)}

    def straight(packets: list[Packet], a: str, b: str) -> bool:
        # each frame leaves hypervisor a and reaches hypervisor b, on no other cable
        return bool(packets) and {(p.hypervisor, p.outbound) for p in packets} == {(a, False), (b, True)}

    ok = (len(ttls) == 3 and set(ttls) == {63} and inner_ttls == {63}
          and straight(requests, src_hv.name, dst_hv.name) and straight(replies, dst_hv.name, src_hv.name))
    seen = "/".join(map(str, sorted(set(ttls) | inner_ttls))) or "-"
    proof = (f"{src.name} ({src_hv.name}) -> {dst.name} ({dst_hv.name}, other subnet): {len(ttls)}/3 replies, "
             f"TTL {seen} = 64 - 1, one routed hop; underlay: {src_hv.name} -> {dst_hv.name} direct, seen only on "
             f"{_hvs(requests + replies)}")
    return Claim("routing (DVR)", ok, proof)


# -- floating IP, security group, SNAT --------------------------------------------------------------
def check_floating_ip(lab: Lab, out: LabVM, out_ip: str, vm: LabVM, fip: str, port: int, workdir: str) -> Claim:
    """The outside host connects to ``vm`` by its floating IP; only ``vm``'s hypervisor carries it."""
    # IP only: an ARP request for the address is broadcast to every hypervisor, whoever answers it
    with FabricCapture(lab, os.path.join(workdir, "fip.txt"), f"ip and host {fip}") as cap:
        answer = connect(out, 3.0, f"{fip}:{port}")[f"{fip}:{port}"]
    carriers = {p.hypervisor for p in cap.packets() if p.cable.endswith("-p")}
    hv = vm.hypervisor.name
    ok = answer == f"{vm.name} {out_ip}" and carriers == {hv}
    proof = (f"outside host {out_ip} -> {vm.name}'s {fip}, TCP {port}: {answer!r} (the VM, seeing the client's own "
             f"address); carried by {', '.join(sorted(carriers)) or 'no hypervisor'}'s provider NIC only: NAT there")
    return Claim("floating IP", ok, proof)


def check_security_group(out: LabVM, fip: str, neighbour: LabVM, fixed_ip: str, vm_name: str, allowed: int,
                         refused: int) -> Claim:
    """From outside: ``allowed`` (SSH) answered, ``refused`` dropped; a group member reaches ``refused``."""
    answers = connect(out, 1.5, f"{fip}:{allowed}", f"{fip}:{refused}")
    inside = connect(neighbour, 3.0, f"{fixed_ip}:{refused}")[f"{fixed_ip}:{refused}"]
    ssh, other = answers[f"{fip}:{allowed}"], answers[f"{fip}:{refused}"]
    ok = ssh.startswith(f"{vm_name} ") and other == "error: timed out" and inside.startswith(f"{vm_name} ")
    proof = (f"outside -> {vm_name} TCP {allowed}: {'answered' if ssh.startswith(vm_name) else ssh}; TCP {refused}: "
             f"{'dropped (no answer in 1.5 s)' if other == 'error: timed out' else other}; {neighbour.name} (default "
             f"group) {'is answered' if inside.startswith(vm_name) else 'gets ' + inside} on {refused}: the VM listens")
    return Claim("security group", ok, proof)


def check_snat(lab: Lab, vm: LabVM, fixed: str, out_ip: str, port: int, gateway_ip: str, gateway_hv: str,
               workdir: str) -> Claim:
    """``vm`` (``fixed``, no floating IP) connects out; the outside host sees the router's gateway address."""
    bpf = f"udp port 4790 or (ip and (host {gateway_ip} or host {fixed}))"  # IP only, as for the floating IP
    with FabricCapture(lab, os.path.join(workdir, "snat.txt"), bpf, "-T", "vxlan") as cap:
        answer = connect(vm, 3.0, f"{out_ip}:{port}")[f"{out_ip}:{port}"]
    flow = f"{fixed}."
    tunnelled = [p for p in cap.packets() if p.cable.endswith("-u") and flow in p.text and f"> {out_ip}.{port}" in
                 p.text]
    outside = [p for p in cap.packets() if p.cable.endswith("-p")]
    hv = vm.hypervisor.name
    ok = (answer == f"out {gateway_ip}" and {(p.hypervisor, p.outbound) for p in tunnelled} == {(hv, False),
                                                                                              (gateway_hv, True)}
          and {p.hypervisor for p in outside} == {gateway_hv} and not any(fixed in p.text for p in outside))
    seen = answer.split()[-1] if answer.startswith("out ") else answer
    proof = (f"{vm.name} ({hv}, no floating IP) -> outside host TCP {port}: seen from {seen} (the router's gateway "
             f"address); path {hv} -> {gateway_hv} (gateway tunnel) -> {', '.join(sorted({p.cable for p in outside}))}"
             f"; {fixed} never on the provider network")
    return Claim("SNAT", ok, proof)


# -- controller restart -----------------------------------------------------------------------------
_FLOW = re.compile(r"cookie=(0x[0-9a-f]+), duration=([0-9.]+)s, table=(\d+), n_packets=\d+, n_bytes=\d+, "
                   r"(?:[a-z_]+=[^ ,]+, )*(\S*?) actions=")
LEARNED_TABLE = 49  # the switch's own learned MAC bindings come and go by themselves


def _flows(lab: Lab) -> dict[tuple[str, int, str, str], float]:
    """Every compiled flow on every br-int, keyed by (hypervisor, table, cookie, match): its age."""
    flows = {}
    for hv in lab.hypervisors:
        for m in _FLOW.finditer(hv.ofctl("dump-flows", "br-int")):
            cookie, age, table, spec = m.groups()
            if int(table) != LEARNED_TABLE:
                flows[hv.name, int(table), cookie, spec] = float(age)
    return flows


@contextlib.contextmanager
def _pinging(pairs: list[tuple[LabVM, str]], interval: float) -> Iterator[list[subprocess.Popen]]:
    """A ping stream from each VM to its address, until the caller stops it (SIGINT: ping prints its summary)."""
    procs = [vm.popen(["ping", "-n", "-i", str(interval), "-W", "1", ip], stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True) for vm, ip in pairs]
    try:
        yield procs
    finally:
        sh.kill_pids([p.pid for p in procs if p.poll() is None])


def stream_losses(output: str) -> tuple[int, int]:
    """(requests, unanswered) of a ping stream stopped by SIGINT.

    The last request may have been on its way when the stream was stopped: unanswered, it is
    left out (the stream was stopped, nothing was lost). Any other request without its reply counts.
    """
    match = re.search(r"(\d+) packets transmitted", output)
    sent = int(match[1]) if match else 0
    answered = {int(seq) for seq in re.findall(r"bytes from .*icmp_seq=(\d+)", output)}
    counted = sent if sent in answered else max(0, sent - 1)
    return counted, len(set(range(1, counted + 1)) - answered)


def restart_controller(ctl: ControllerProcess, lab: Lab, timeout: float = 20.0) -> float:
    """SIGKILL the controller, start it again on the same state; seconds until every bridge is synced again."""
    killed = time.monotonic()
    ctl.kill(signal.SIGKILL)
    ctl.start()
    wait_for(lambda: ctl.metrics().get("tenantflow_switch_connected", 0) == len(lab.hypervisors), timeout,
             "every bridge connected and synced after the restart")
    return time.monotonic() - killed


def check_restart(ctl: ControllerProcess, lab: Lab, pairs: list[tuple[LabVM, str]], interval: float = 0.02,
                  after: float = 1.0) -> Claim:
    """Ping streams between VMs across a controller SIGKILL + restart (and ``after`` s more): every request
    answered, no flow touched."""
    before = _flows(lab)
    with _pinging(pairs, interval) as procs:
        time.sleep(0.5)
        resynced = restart_controller(ctl, lab)
        time.sleep(after)
        running = all(p.poll() is None for p in procs)  # the streams outlived the restart
        for p in procs:
            p.send_signal(signal.SIGINT)
        outputs = [p.communicate(timeout=10)[0] for p in procs]
    counts = [stream_losses(out) for out in outputs]
    sent, lost = sum(c[0] for c in counts), sum(c[1] for c in counts)
    metrics = ctl.metrics()
    mods = int(metrics.get("tenantflow_flow_mods_sent_total", 0))
    now = _flows(lab)
    untouched = sum(key in now and now[key] >= age for key, age in before.items())  # none re-added
    ok = running and sent > 0 and lost == 0 and mods == 0 and untouched == len(before)
    proof = (f"SIGKILL + restart under {len(pairs)} ping streams ({interval * 1000:.0f} ms): {lost}/{sent} lost; "
             f"bridges synced {resynced:.1f} s after the kill{'' if running else ', but a stream had ended'}; "
             f"{mods} flow-mods sent, {untouched}/{len(before)} flows untouched")
    return Claim("controller restart", ok, proof)
