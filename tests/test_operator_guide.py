"""The operator guide, run as written (issue #16): README's commands cannot drift from the code.

Every fenced block of README's "Operator guide" says, in the HTML comment before it, where it
runs or why it is not run (``tests/guide_blocks.py``); a block that says neither fails here.

``test_the_guide_runs_as_written`` builds a bare lab: a "controller host" (a network namespace
of its own, so its API is on its own ``127.0.0.1:9696`` as the defaults put it, and its ``/run``,
``/var/lib`` and ``/var/log`` bind-mounted from a work directory), two "hypervisors" (namespaces
with a private ovsdb-server and ovs-vswitchd, NICs ``eth0`` on a management network, ``eth1`` on
the underlay and ``eth2`` on the provider network, nothing configured), the fabric between them,
and later a host outside the cloud on the provider network (the upstream router). Then it runs
the guide's blocks, in the guide's order, with ``sh``: ``tenantflow controller`` as written, the
attach steps on hv1 and, with hv2's values, on hv2, the registration, a network, a port per
hypervisor and its tap, a router, floating IP, gateways, IPv6, the API and both clients; and
checks what they did by API answers and packets: both hypervisors connected and synced, the
NICs' ARP and IPv6 off, each VM's address taken by DHCP, a ping from the VM on hv1 to the one on
hv2 over the overlay, the floating IP from outside, source NAT, the upstream router reaching a
VM's SLAAC address. On a hypervisor, OVS's ``/var/run/openvswitch`` and ``/etc/openvswitch`` are
that hypervisor's own directories (``OVS_RUNDIR``: ``ovs-vsctl`` and ``ovs-ofctl`` find its
daemons there; the same directories are also bind-mounted there, so a path the guide gets wrong
never touches the host's OVS), and the controller's ``/run/tenantflow`` its sockets.
``test_the_guide_attaches_over_tls`` and ``test_the_guide_runs_a_cluster`` run the guide's other
two ways (``variant=tls``, ``variant=cluster``) up to "Is a hypervisor connected and synced?".

The other tests hold the guide to ``apps/lab/steps.py`` (the lab's and the e2e tests' only way
to attach a hypervisor) and ``apps/lab/pki.py``, command by command, its synopsis to ``tenantflow
controller --help``, its ``--config`` and policy files to the code that reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from apps.lab import sh, steps
from apps.lab.ovs import PrivateOVS
from apps.lab.pki import Pki
from apps.northbound.policy import defaults as policy_defaults
from controller.main import DEFAULTS, parse_args
from tests import guide_blocks
from tests.guide_blocks import Block, GuideError

REPO = Path(__file__).resolve().parent.parent
API = "http://127.0.0.1:9696"
# The guide's values are hv1's; a block run on another hypervisor gets that one's.
HYPERVISORS = {
    "hv1": {"hv1": "hv1", "0000000000000001": "0000000000000001", "192.168.100.1": "192.168.100.1"},
    "hv2": {"hv1": "hv2", "0000000000000001": "0000000000000002", "192.168.100.1": "192.168.100.2"},
}
PLACEHOLDERS = ("tapPORTIDPORTI", "PORT_ID", "NET_ID", "SUBNET_ID", "MAC", "VM_UUID")
REAL_RUN = sh.run  # before any test records it
CONTROLLER_IP = "10.0.0.10"  # the controller's management address (TLS)
MOUNTS = (("run", "/run"), ("lib", "/var/lib"), ("log", "/var/log"))  # the controller host's own
OUTSIDE = "203.0.113.10"  # a host on the provider network (physnet1), outside the cloud
UPSTREAM6 = "2001:db8:ee::1"  # ... and the gateway of the guide's ext-v6: the upstream router


def _run_blocks(variant: str | None = None) -> list[Block]:
    """The blocks a run of the guide runs (``variant``: that run's, else every variant's), in the guide's order."""
    return [b for b in guide_blocks.blocks() if not b.skip and not b.synopsis and not b.config
            and (variant is None or not b.variants or variant in b.variants)]


# -- the guide's form: every block placed -----------------------------------------------------------


def test_every_block_runs_or_says_why_not() -> None:
    found = guide_blocks.blocks()  # raises GuideError at the first block without a marker
    ran = _run_blocks()
    assert len(ran) >= 9, [b.where for b in ran]
    assert {"controller", "hypervisors"} <= {h for b in ran for h in b.hosts}
    for variant in guide_blocks.VARIANTS:
        starts = [b for b in _run_blocks(variant) if "background" in b.flags and "tenantflow controller" in b.text]
        assert len(starts) == 1, f"{variant}: one block starts the controller(s)"
    for block in found:
        assert block.skip or block.synopsis or block.config or block.hosts, block.where
    # what this test checks after a block names blocks that exist, and the reverse
    ids = {b.id for b in ran if b.id}
    assert set(CHECKS) <= ids, f"checks of blocks the guide no longer has: {set(CHECKS) - ids}"
    assert {b.after for b in ran if b.after} <= ids, "an after=ID names no block"


def test_a_block_without_a_marker_fails() -> None:
    readme = "# x\n\n## Operator guide\n\n<!-- doc-test: controller -->\n```sh\ntrue\n```\n\nnew:\n\n```sh\nls\n```\n"
    with pytest.raises(GuideError, match="README.md:12: a ```sh block without"):
        guide_blocks.blocks(readme)
    for bad in ("not run:", "controller sudo", "vm", "hypervisors"):
        with pytest.raises(GuideError):
            text = readme.replace("new:\n\n", f"<!-- doc-test: {bad} -->\n").replace("```sh\nls", "```ini\nls")
            guide_blocks.blocks(text)
    assert len(guide_blocks.blocks(readme.replace("new:\n", "<!-- doc-test: not run: because -->"))) == 2


def test_the_synopsis_lists_every_flag() -> None:
    """The usage block of "Run the controller" names exactly the flags the parser has."""
    (synopsis,) = [b for b in guide_blocks.blocks() if b.synopsis]
    documented = set(re.findall(r"(--[a-z][a-z0-9-]*)", synopsis.text))
    out = subprocess.run([sys.executable, "-m", "apps.cli", "controller", "--help"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    options = out[out.index("options:"):]
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", options, re.M)) - {"--help"}
    assert documented - flags == set(), "the guide's synopsis names flags the controller does not have"
    assert flags - documented == set(), "flags missing from the guide's synopsis"


def test_the_controller_takes_every_configuration_the_guide_shows(tmp_path: Path) -> None:
    """Every ``tenantflow controller`` command of the guide (run or not) and every ``--config`` file it shows
    pass the controller's own checks (a listener the flags refuse, a TLS file missing...)."""
    configs = [b for b in guide_blocks.blocks() if b.config]
    assert configs, "the guide shows no --config file any more"
    names = {rule.name for rule in policy_defaults()}
    for i, block in enumerate(configs):
        if block.lang == "yaml":  # a --policy-file: the rules it overrides and those it refers to exist
            rules = yaml.safe_load(block.text)
            referred = {m for check in rules.values() for m in re.findall(r"rule:([\w:]+)", check)}
            assert set(rules) | referred <= names, f"{block.where}: no such rules {(set(rules) | referred) - names}"
            continue
        path = tmp_path / f"{i}.ini"
        path.write_text(block.text)
        try:
            parse_args(["--config", str(path)])
        except SystemExit:
            pytest.fail(f"{block.where}: tenantflow controller refuses this --config file")
    commands = [argv for b in guide_blocks.blocks() if not b.synopsis and not b.config
                for argv in guide_blocks.commands(b.text) if argv[:2] == ["tenantflow", "controller"]]
    assert len(commands) >= 5, commands
    for argv in commands:
        try:
            parse_args([word for word in argv[2:] if word != "&"])
        except SystemExit:
            pytest.fail(f"tenantflow controller refuses the guide's {' '.join(argv)}")


# -- the guide and apps/lab/steps.py: the same commands ---------------------------------------------


def _steps_commands(monkeypatch: pytest.MonkeyPatch, attach: Callable[..., Any],
                    execute: bool = False) -> list[list[str]]:
    """The commands one of steps' functions runs, recorded (``ip -n NS`` and ``sh.run(netns=)`` are the host's own);
    ``execute``: and run them too (they touch only files of the caller's)."""
    ran: list[list[str]] = []

    def run(argv: list[str], netns: str | None = None, **kwargs: Any) -> str:
        argv = list(argv)
        ran.append(["ip", *argv[3:]] if argv[:2] == ["ip", "-n"] else argv)
        return REAL_RUN(argv, netns, **kwargs) if execute else ""

    monkeypatch.setattr(steps.sh, "run", run)
    attach(lambda *args: ran.append(["ovs-vsctl", *args]) or "", lambda *args: ran.append(["ovs-ofctl", *args]) or "")
    return ran


def _hypervisor_commands(variant: str) -> list[list[str]]:
    """The commands of the guide's attach steps 1 to 5 for ``variant``."""
    blocks = [b for b in _run_blocks(variant) if b.hosts == ("hypervisors",) and "vm" not in b.flags]
    return [argv for block in blocks for argv in guide_blocks.commands(block.text)]


def test_the_lab_runs_the_guides_attach_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """``apps/lab/steps.py`` (how the lab and every e2e test attach a hypervisor) runs exactly the guide's commands."""
    (attach,) = [b for b in _run_blocks() if b.id == "attach"]
    socket = DEFAULTS["unix_socket"]
    ovsdb = "unix:/run/tenantflow/ovsdb.sock"  # the default --ovsdb-listen's punix: path (controller.main)

    def lab_steps(vsctl: Any, ofctl: Any) -> None:
        steps.add_integration_bridge(vsctl, 1)
        steps.set_controller(vsctl, steps.link_controller_socket(socket))
        steps.set_manager(vsctl, ovsdb)
        steps.attach_underlay(vsctl, "hv1", "eth1", "192.168.100.1/24")
        steps.add_provider_bridge(vsctl, "hv1", "br-phys", "eth2")

    assert _hypervisor_commands("unix") == _steps_commands(monkeypatch, lab_steps)
    # the step 4 the guide shows for a controller that is no OVSDB manager, in its comment
    step4 = ["ovs-vsctl", *steps.tunnel_port_args("192.168.100.1", names={"vxlan": "tf-vxlan"})]
    shown = re.search(r"#\s+(ovs-vsctl add-port br-int tf-vxlan .*?local_ip=\S+)", attach.text, re.S)
    assert shown and guide_blocks.commands(shown[1].replace("#", "")) == [step4]
    # and the step 5 it shows for the same case: the patch ports and the two flows, by hand
    manual = re.search(r"#\s+(ovs-vsctl set bridge br-phys fail_mode=secure .*?actions=output:eth2)", attach.text, re.S)

    def by_hand(vsctl: Any, ofctl: Any) -> None:
        steps.patch_provider_bridge(vsctl, "physnet1", "br-phys")
        steps.wire_provider_bridge(ofctl, "physnet1", "br-phys", "eth2")

    assert manual and guide_blocks.commands(manual[1].replace("#", "")) == _steps_commands(monkeypatch, by_hand)


def test_the_lab_names_its_hosts_as_the_guide_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps 1+2 the other way (the controller makes br-int): ``Lab(names_itself=True)``'s steps are the guide's."""
    socket = DEFAULTS["unix_socket"]

    def lab_steps(vsctl: Any, ofctl: Any) -> None:
        steps.name_host(vsctl, "hv1")
        steps.link_controller_socket(socket)
        steps.set_manager(vsctl, "unix:/run/tenantflow/ovsdb.sock")
        steps.attach_underlay(vsctl, "hv1", "eth1", "192.168.100.1/24")
        steps.add_provider_bridge(vsctl, "hv1", "br-phys", "eth2")

    assert _hypervisor_commands("system-id") == _steps_commands(monkeypatch, lab_steps)


def test_the_lab_attaches_over_tls_as_the_guide_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The TLS lab's certificates (``apps/lab/pki.py``) and step 2 (``steps.set_ssl``...) are the guide's commands."""
    from tests.lab_fixtures import unless_able

    unless_able(None if shutil.which("ovs-pki") else "ovs-pki not installed", "the TLS steps' test")
    etc = "/etc/openvswitch"

    def lab_steps(vsctl: Any, ofctl: Any) -> None:
        steps.add_integration_bridge(vsctl, 1)
        steps.set_ssl(vsctl, f"{etc}/hv1-privkey.pem", f"{etc}/hv1-cert.pem", f"{etc}/controllerca-cacert.pem")
        steps.set_controller(vsctl, "ssl:10.0.0.10:6653")
        steps.set_manager(vsctl, "ssl:10.0.0.10:6640")
        steps.attach_underlay(vsctl, "hv1", "eth1", "192.168.100.1/24")
        steps.add_provider_bridge(vsctl, "hv1", "br-phys", "eth2")

    assert _hypervisor_commands("tls") == _steps_commands(monkeypatch, lab_steps)

    def certificates(_vsctl: Any, _ofctl: Any) -> None:
        pki = Pki(str(tmp_path))
        pki.controller()
        pki.switch("hv1")
        pki.switch("hv2")

    made = [[w for w in argv if not w.startswith(("--dir=", "--log="))]
            for argv in _steps_commands(monkeypatch, certificates, execute=True)]
    (ca,) = [b for b in _run_blocks("tls") if "ovs-pki init" in b.text]
    assert guide_blocks.commands(ca.text) == made


def test_the_lab_registers_and_plugs_as_the_guide_does() -> None:
    ran = _run_blocks()
    (register,) = [b for b in ran if "POST http://127.0.0.1:9696/v2.0/hypervisors" in b.text]
    ((*curl, body),) = guide_blocks.commands(register.text)
    assert curl == ["curl", "-s", "-X", "POST", f"{API}/v2.0/hypervisors", "-H", "Content-Type: application/json", "-d"]
    assert json.loads(body) == {"hypervisor": steps.hypervisor_record("hv1", 1, "192.168.100.1",
                                                                      {"physnet1": "br-phys"})}
    (plug,) = [b for b in ran if "vm" in b.flags]
    port = {"id": "PORT_ID", "mac_address": "MAC"}
    assert guide_blocks.commands(plug.text) == [["ovs-vsctl", *steps.vif_port_args("tapPORTIDPORTI", port, "VM_UUID")]]
    # the placeholder's rule, as the guide states it
    assert steps.tap_name("0123456789abcdef") == "tap0123456789a"


# -- the guide, run on a lab ------------------------------------------------------------------------


class GuideLab:
    """A bare cloud for the guide: a controller host, two hypervisors with nothing on their OVS yet."""

    def __init__(self, variant: str = "unix") -> None:
        self.variant = variant  # the guide's run: system-id leaves br-int to the controller (made at registration)
        self.prefix = f"tg{uuid.uuid4().hex[:6]}"
        self.workdir = Path(tempfile.mkdtemp(prefix="tfguide-"))  # short: unix socket paths are < 108 bytes
        self.ctl_netns, self.fabric = f"{self.prefix}-ctl", f"{self.prefix}-fab"
        self.namespaces: list[str] = []
        self.ovs: dict[str, PrivateOVS] = {}
        self.controller: subprocess.Popen | None = None
        self.values: dict[str, dict[str, str]] = {hv: {"VM_UUID": f"vm-{hv}"} for hv in HYPERVISORS}

    # -- building and tearing down
    def _netns(self, name: str) -> str:
        sh.netns_add(name)
        self.namespaces.append(name)
        return name

    def build(self) -> None:
        for d in ("bin", "ctl/run", "ctl/lib", "ctl/log", "ctl/home"):
            (self.workdir / d).mkdir(parents=True)
        shim = self.workdir / "bin" / "tenantflow"  # this checkout's tenantflow, whatever is installed
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m apps.cli "$@"\n')
        shim.chmod(0o755)
        self._netns(self.ctl_netns)
        self._netns(self.fabric)
        for bridge in ("underlay", "provider", "mgmt"):
            sh.run(["ip", "-n", self.fabric, "link", "add", bridge, "type", "bridge"])
            sh.run(["ip", "-n", self.fabric, "link", "set", bridge, "mtu", "1600", "up"])
        self.cable(self.ctl_netns, "eth0", "ctl-m", "mgmt", f"{CONTROLLER_IP}/24")  # the management network
        for i, hv in enumerate(HYPERVISORS, 1):
            netns = self._netns(f"{self.prefix}-{hv}")
            self.cable(netns, "eth0", f"{hv}-m", "mgmt", f"10.0.0.{10 + i}/24")
            self.cable(netns, "eth1", f"{hv}-u", "underlay")
            self.cable(netns, "eth2", f"{hv}-p", "provider")
            self.ovs[hv] = PrivateOVS(netns, str(self.workdir / hv))
            self.ovs[hv].start()
            (self.workdir / hv / "etc").mkdir()

    def cable(self, netns: str, nic: str, cable: str, bridge: str, cidr: str | None = None) -> None:
        """``netns``'s ``nic`` on one of the fabric's bridges (with an address)."""
        sh.veth_add(nic, netns, cable, self.fabric, mtu=1600)
        sh.run(["ip", "-n", self.fabric, "link", "set", cable, "master", bridge])
        if cidr:
            sh.run(["ip", "-n", netns, "addr", "add", cidr, "dev", nic])

    def close(self) -> None:
        if self.controller is not None and self.controller.poll() is None:
            sh.kill_pids([self.controller.pid])
        for ovs in self.ovs.values():
            ovs.stop()
        for netns in reversed(self.namespaces):
            sh.kill_pids(sh.netns_pids(netns))
            sh.netns_del(netns)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- running the guide's blocks
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        path = f"{self.workdir / 'bin'}:{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"
        return {"PATH": path, "PYTHONPATH": str(REPO), **(extra or {})}

    def controller_env(self, text: str) -> dict[str, str]:
        """The controller host's: its own home; ``OS_CLOUD=tenantflow`` for ``openstack`` without options."""
        home = {"HOME": str(self.workdir / "ctl/home")}
        return self.env(home if "--os-" in text or "OS_AUTH_TYPE" in text else {**home, "OS_CLOUD": "tenantflow"})

    def write_files(self, blocks: list[Block]) -> None:
        """The guide's files (``file=PATH``), on the controller's host, before any command runs."""
        for block in blocks:
            if block.file:
                path = Path(block.file.replace("~", str(self.workdir / "ctl/home"), 1))
                assert path.is_relative_to(self.workdir), f"{block.where}: {block.file} is outside the lab"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.text)

    def controller_script(self, text: str) -> str:
        """``text`` on the controller's host: its /run, /var/lib, /var/log its own (``ip netns exec``: own mounts)."""
        ctl = self.workdir / "ctl"
        mounts = " && ".join(f"mount --bind {ctl / own} {path}" for own, path in MOUNTS)
        return f"{mounts}\ncd {ctl}\n{text}"

    def text_for(self, block: Block, hv: str | None) -> str:
        """The block's text with hv's values, the placeholders' values, and (on a hypervisor) its paths."""
        text = block.text
        values = self.values.setdefault(hv, {}) if hv else {**self.values["hv1"], **self.values.setdefault("", {})}
        if hv:
            for guide_value, own in HYPERVISORS[hv].items():
                text = re.sub(rf"(?<![\w.]){re.escape(guide_value)}(?![\w.])", own, text)
        if "PORT_ID" in values:
            values["tapPORTIDPORTI"] = steps.tap_name(values["PORT_ID"])
        for name in PLACEHOLDERS:
            value = values.get(name, self.values.get("", {}).get(name))
            if value is not None:
                text = re.sub(rf"\b{name}\b", value, text)
        if hv and block.hosts == ("hypervisors",):
            own = str(self.workdir / hv)
            for path, mapped in (("/var/run/openvswitch", own), ("/etc/openvswitch", f"{own}/etc"),
                                 ("/run/tenantflow", str(self.workdir / "ctl/run/tenantflow"))):
                text = re.sub(rf"(?<![\w/]){re.escape(path)}\b", mapped, text)
        words = " ".join(" ".join(argv) for argv in guide_blocks.commands(text))  # comments may say MAC
        left = [name for name in PLACEHOLDERS if re.search(rf"\b{name}\b", words)]
        assert not left, f"{block.where}: no value for {left} (an earlier block should have printed it)"
        return text

    def run(self, block: Block) -> None:
        """Run one block where its marker says, as many times as it says; keep the values it printed."""
        if block.file:
            return  # written before the first block (write_files)
        targets = list(HYPERVISORS) if "hypervisors" in block.hosts else [None]
        for hv in targets:
            if "vm" in block.flags:
                self.boot_vm(hv)
            if "certs" in block.flags:
                self.copy_certificates(hv)
            check = CHECKS.get(block.id, lambda *_: None)
            deadline = time.monotonic() + (20 if block.id in ASKED_AGAIN else 0)
            background = "background" in block.flags
            out = self.start_background(block) if background else self.run_once(block, hv)
            while True:
                try:
                    check(self, hv, out)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:  # as an operator asks again, for a while
                        raise
                    time.sleep(0.5)
                    out = out if background else self.run_once(block, hv)
            for name, path in block.captures.items():
                self.values.setdefault(hv or "", {})[name] = guide_blocks.capture(out, path)
        if "vm" in block.flags:
            self.vms_take_addresses_and_ping()

    def run_once(self, block: Block, hv: str | None) -> str:
        text = self.text_for(block, hv)
        try:
            if "controller" in block.hosts:
                if block.lang == "python":
                    script = self.workdir / "ctl/block.py"
                    script.write_text(text)
                    text = f"python {script}"
                return sh.run(["sh", "-ec", self.controller_script(text)], netns=self.ctl_netns,
                              env=self.controller_env(text), timeout=60)
            if "upstream" in block.hosts:
                return sh.run(["sh", "-ec", text], netns=self.outside_host(), env=self.env())
            rundir = str(self.workdir / hv)
            env = self.env({"OVS_RUNDIR": rundir, "OVS_DBDIR": rundir, "OVS_LOGDIR": rundir})
            # and whatever the text maps not (a path the guide got wrong) lands there too, never in the host's OVS
            mounts = f"mount --bind {rundir} /run/openvswitch && mount --bind {rundir}/etc /etc/openvswitch\n"
            return sh.run(["sh", "-ec", mounts + text], netns=self.ovs[hv].netns, env=env, cwd=rundir)
        except sh.CommandError as exc:
            raise AssertionError(f"{block.where} on {hv or 'the controller'} failed:\n{text}\n{exc}\n"
                                 f"{self.controller_log()}") from None

    def start_background(self, block: Block) -> str:
        """Start the daemons a block starts (``tenantflow controller``; or several, each ending in ``&``),
        their output in the lab's controller.log; wait for the API when it starts controllers."""
        jobs = any(line.rstrip().endswith("&") for line in guide_blocks.logical_lines(block.text))
        if jobs:  # the shell returns once it started them; they stay in the controller's namespace
            script = self.controller_script(block.text)
        else:
            (command,) = guide_blocks.commands(block.text)
            script = self.controller_script("exec " + shlex.join(command))
        with open(self.workdir / "controller.log", "ab") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ctl_netns, "sh", "-ec", script], stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, **self.env()},
                                    start_new_session=True)
        if jobs:
            assert proc.wait(30) == 0, f"{block.where} failed\n{self.controller_log()}"
        else:
            self.controller = proc
        if "tenantflow controller" not in block.text:
            return ""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.api("GET", "/v2.0/networks")
                return ""
            except (sh.CommandError, json.JSONDecodeError):
                assert jobs or proc.poll() is None, f"the controller exited:\n{self.controller_log()}"
                assert time.monotonic() < deadline, f"no API on {API} within 30 s\n{self.controller_log()}"
                time.sleep(0.2)

    def controller_log(self) -> str:
        path = self.workdir / "controller.log"
        return "controller log:\n" + "".join(path.read_text().splitlines(True)[-30:]) if path.exists() else ""

    def api(self, method: str, path: str, body: dict | None = None) -> Any:
        """The test's own request to the API, from the controller's host (curl, as the guide)."""
        return self.api_on(9696, method, path, body)

    def api_on(self, port: int, method: str, path: str, body: dict | None = None) -> Any:
        """The test's own request to the API on ``port`` (an instance of a cluster)."""
        data = ["-H", "Content-Type: application/json", "-d", json.dumps(body)] if body is not None else []
        out = sh.run(["curl", "-sf", "-X", method, *data, f"http://127.0.0.1:{port}{path}"], netns=self.ctl_netns)
        return json.loads(out) if out else None

    def copy_certificates(self, hv: str) -> None:
        """What the guide asks of the operator: copy hv's key and certificate and the controllers' CA to it."""
        ctl, etc = self.workdir / "ctl", self.workdir / hv / "etc"
        for name in (f"{hv}-privkey.pem", f"{hv}-cert.pem"):
            shutil.copy(ctl / name, etc / name)
        shutil.copy(ctl / "lib/openvswitch/pki/controllerca/cacert.pem", etc / "controllerca-cacert.pem")

    # -- the VMs
    def boot_vm(self, hv: str) -> None:
        """What libvirt does when the VM starts: its NIC, tap + 11 characters of the port id, with the port's MAC."""
        values = self.values[hv]
        vm = self._netns(f"{self.prefix}-vm-{hv}")
        sh.veth_add(steps.tap_name(values["PORT_ID"]), self.ovs[hv].netns, "eth0", vm, mtu=1450)
        steps.configure_vm_nic(vm, {"mac_address": values["MAC"], "fixed_ips": []})

    def vms_take_addresses_and_ping(self) -> None:
        """Each VM takes its address by DHCP; its port is ACTIVE; the VM on hv1 pings the one on hv2."""
        addresses = {}
        for hv in HYPERVISORS:
            port = self.api("GET", f"/v2.0/ports/{self.values[hv]['PORT_ID']}")["port"]
            assert port["status"] == "ACTIVE", port
            lease = steps.request_address(f"{self.prefix}-vm-{hv}", str(self.workdir))
            assert lease["ip"] == port["fixed_ips"][0]["ip_address"], (lease, port)
            addresses[hv] = lease["ip"]
        self.reaches(f"{self.prefix}-vm-hv1", addresses["hv2"])  # the first packets wait on OVS's ARP for the peer


    def outside_host(self) -> str:
        """A host on the provider network, outside the cloud (the upstream router of ext-v6): only its own
        203.0.113.0/24 and 2001:db8:ee::/64, no default route."""
        netns = f"{self.prefix}-out"
        if netns not in self.namespaces:
            self._netns(netns)
            sh.veth_add("eth0", netns, "out", self.fabric)
            sh.run(["ip", "-n", self.fabric, "link", "set", "out", "master", "provider"])
            sh.run(["ip", "-n", netns, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0"])
            sh.run(["ip", "-n", netns, "addr", "add", f"{UPSTREAM6}/64", "dev", "eth0", "nodad"])
        return netns

    def reaches(self, netns: str, address: str, timeout: float = 15.0) -> None:
        """``netns`` pings ``address``: once answered within ``timeout`` (ARP, BFD), then 3 of 3."""
        deadline = time.monotonic() + timeout
        while " 0% packet loss" not in sh.run(["ping", "-c1", "-W1", address], netns=netns, check=False):
            assert time.monotonic() < deadline, f"{netns} never reached {address}\n{self.controller_log()}"
        out = sh.run(["ping", "-c3", "-i0.2", "-W1", address], netns=netns, check=False)
        assert "3 received" in out, out


# -- what the test checks after a block (by the block's id=) ----------------------------------------


def check_attach(lab: GuideLab, hv: str | None, _out: str) -> None:
    """Steps 3 and 5 kept the kernel off both NICs, and in-band control off every bridge."""
    assert hv is not None
    ovs = lab.ovs[hv]
    for nic in ("eth1", "eth2"):
        assert "NOARP" in sh.run(["ip", "-n", ovs.netns, "link", "show", nic]), nic
        assert sh.run(["sysctl", "-n", f"net.ipv6.conf.{nic}.disable_ipv6"], netns=ovs.netns).strip() == "1", nic
    made = ("br-underlay", "br-phys") if lab.variant == "system-id" else ("br-int", "br-underlay", "br-phys")
    assert "br-int" not in ovs.vsctl("list-br").split() or lab.variant != "system-id", "br-int before registration"
    for bridge in made:
        assert ovs.vsctl("get", "bridge", bridge, "other_config:disable-in-band").strip() == '"true"', bridge


def check_status(lab: GuideLab, hv: str | None, out: str) -> None:
    """The hypervisor's bridge is connected (OVS says so too), and in sync: neither pending nor disconnected."""
    assert hv is not None
    # OVS took step 2's targets (a unix: path outside its run directory it refuses, and logs why)
    connected = lab.ovs[hv].vsctl("--bare", "--columns=is_connected", "list", "controller").split()
    assert connected and set(connected) == {"true"}, connected
    hypervisor, sync = guide_blocks.json_documents(out)
    assert hypervisor["hypervisor"]["name"] == hv and hypervisor["hypervisor"]["connected"] is True, hypervisor
    if lab.variant == "system-id":  # the br-int the controller made: the registered datapath id, in-band off
        config = lab.ovs[hv].vsctl("get", "bridge", "br-int", "other_config")
        assert f'datapath-id="{hypervisor["hypervisor"]["datapath_id"]}"' in config, config
        assert 'disable-in-band="true"' in config, config
    assert sync["converged"] is True and hv not in sync["pending"] + sync["disconnected"], sync


def check_gateway(lab: GuideLab, hv: str | None, out: str) -> None:
    (answer,) = guide_blocks.json_documents(out)
    assert answer["hypervisor"]["name"] == hv and answer["hypervisor"]["gateway_for"] == ["physnet1"], answer
    assert lab.api("GET", f"/v2.0/hypervisors/{hv}")["hypervisor"]["gateway_for"] == ["physnet1"]


def check_fip(lab: GuideLab, hv: str | None, out: str) -> None:
    """The VM on hv1 answers on its floating IP to a host outside the cloud."""
    port_id = lab.values["hv1"]["PORT_ID"]
    (fip,) = [f for f in lab.api("GET", "/v2.0/floatingips")["floatingips"] if f["port_id"] == port_id]
    lab.reaches(lab.outside_host(), fip["floating_ip_address"])


def check_reorder(lab: GuideLab, hv: str | None, out: str) -> None:
    """r1's gateways in the new order, hv2 active; the VM on hv2 (no floating IP) reaches outside by source NAT."""
    (answer,) = guide_blocks.json_documents(out)
    router = answer["router"]
    assert router["gateway_hypervisors"] == ["hv2", "hv1"] and router["active_gateway_hypervisor"] == "hv2", router
    # the outside host has no route back to 10.0.0.0/24: only a reply to the router's address comes back
    lab.reaches(f"{lab.prefix}-vm-hv2", OUTSIDE)


def check_query(lab: GuideLab, hv: str | None, out: str) -> None:
    """The network's ports (no other network's), each with only the fields asked for."""
    (answer,) = guide_blocks.json_documents(out)
    vm_ports = {lab.values[h]["PORT_ID"] for h in HYPERVISORS}
    assert vm_ports <= {p["id"] for p in answer["ports"]}, answer  # and r1's interface, by then
    assert {p["id"] for p in answer["ports"]} == {p["id"] for p in lab.api("GET", "/v2.0/ports")["ports"]
                                                  if p["network_id"] == lab.values[""]["NET_ID"]}, answer
    assert all(set(p) == {"id", "fixed_ips"} for p in answer["ports"]), answer


def check_etcd(lab: GuideLab, hv: str | None, out: str) -> None:
    """The three members answer (the instances need their quorum)."""
    endpoints = ",".join(f"127.0.0.1:2{i}379" for i in range(3))
    health = subprocess.run(["ip", "netns", "exec", lab.ctl_netns, "etcdctl", f"--endpoints={endpoints}", "endpoint",
                             "health"], capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
    health = health.stdout + health.stderr  # etcdctl says it on stderr
    assert health.count("is healthy") == 3, health


def check_ipv6(lab: GuideLab, hv: str | None, out: str) -> None:
    """The upstream router reaches the VM on hv1 at its SLAAC address, routed without NAT."""
    port = lab.api("GET", f"/v2.0/ports/{lab.values['hv1']['PORT_ID']}")["port"]
    (address,) = [f["ip_address"] for f in port["fixed_ips"] if ":" in f["ip_address"]]
    vm = f"{lab.prefix}-vm-hv1"
    # the VM's kernel solicits a router advertisement when IPv6 comes up on its NIC (as at boot)
    for value in ("1", "0"):
        sh.run(["sysctl", "-qw", f"net.ipv6.conf.eth0.disable_ipv6={value}"], netns=vm)
    deadline = time.monotonic() + 15
    while address not in sh.run(["ip", "-6", "addr", "show", "dev", "eth0"], netns=vm):
        assert time.monotonic() < deadline, f"the VM never built {address} from the router's advertisement"
        time.sleep(0.2)
    lab.reaches(lab.outside_host(), address, timeout=20)


CHECKS: dict[str, Callable[[GuideLab, str | None, str], None]] = {
    "attach": check_attach, "status": check_status, "gateway": check_gateway, "query": check_query,
    "fip": check_fip, "reorder": check_reorder, "ipv6": check_ipv6, "etcd": check_etcd,
}
ASKED_AGAIN = {"status", "etcd"}  # a question whose answer comes true in a moment: asked again until it does (20 s)


@contextlib.contextmanager
def guide_lab(variant: str = "unix") -> Iterator[GuideLab]:
    """A built :class:`GuideLab` for that run of the guide, torn down after (also when building it failed)."""
    lab = GuideLab(variant)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def run_guide(lab: GuideLab, blocks: list[Block]) -> None:
    """Run ``blocks`` in the guide's order, each ``after=ID`` one right after the block with that id."""
    later = [b for b in blocks if b.after]
    for block in blocks:
        if block.after:
            continue
        lab.run(block)
        for deferred in [b for b in later if b.after == block.id]:
            lab.run(deferred)


def _lab_tools() -> None:
    from tests.lab_fixtures import unless_able

    missing = [tool for tool in ("udhcpc", "curl", "ovs-pki") if shutil.which(tool) is None]
    unless_able(f"{', '.join(missing)} not installed" if missing else None, "the operator guide's test")


@pytest.mark.ovs
@pytest.mark.lab
def test_the_guide_runs_as_written() -> None:
    """The whole guide, the controller on the hypervisors' host (unix sockets)."""
    _lab_tools()
    with guide_lab() as lab:
        lab.write_files(_run_blocks("unix"))
        run_guide(lab, _run_blocks("unix"))
        assert lab.controller is not None and lab.controller.poll() is None, lab.controller_log()
        os.kill(lab.controller.pid, signal.SIGTERM)  # "SIGTERM stops it"
        assert lab.controller.wait(15) == 0, lab.controller_log()


@pytest.mark.ovs
@pytest.mark.lab
def test_the_guide_attaches_over_tls() -> None:
    """The guide's TLS way, up to "Is a hypervisor connected and synced?": certificates, the controller on its
    management address, the hypervisors over ``ssl:`` (the rest of the guide does not depend on how they attach)."""
    _lab_tools()
    blocks = _run_blocks("tls")
    status = next(i for i, b in enumerate(blocks) if b.id == "status")
    with guide_lab("tls") as lab:
        run_guide(lab, blocks[: status + 1])
        for hv in HYPERVISORS:  # over TLS, and nothing else
            assert lab.ovs[hv].vsctl("get", "controller", "br-int", "target").strip() == f'"ssl:{CONTROLLER_IP}:6653"'


@pytest.mark.ovs
@pytest.mark.lab
def test_the_guide_runs_a_cluster() -> None:
    """The guide's three instances over a 3-member etcd, up to "Is a hypervisor connected and synced?": every
    bridge connected to all three, mastered by one, in sync."""
    _lab_tools()
    blocks = _run_blocks("cluster")
    status = next(i for i, b in enumerate(blocks) if b.id == "status")
    with guide_lab("cluster") as lab:
        run_guide(lab, blocks[: status + 1])
        for hv in HYPERVISORS:
            targets = lab.ovs[hv].vsctl("get-controller", "br-int").split()
            assert sorted(targets) == [f"tcp:{CONTROLLER_IP}:{port}" for port in (6653, 6654, 6655)], targets
            assert lab.ovs[hv].vsctl("get-controller", "br-phys").split() == targets  # the provider bridge's too
        mastered = [lab.api_on(port, "GET", "/sync")["mastered"] for port in (9696, 9697, 9698)]
        assert sorted(sum(mastered, [])) == sorted(HYPERVISORS), mastered  # each bridge by exactly one

        def provider_masters() -> list[str]:  # each provider bridge mastered and synced by its br-int's master
            views = [lab.api_on(port, "GET", "/sync")["provider_bridges"] for port in (9696, 9697, 9698)]
            return sorted(name for view in views for name, p in view.items() if p.get("mastering") and p["synced"])

        sh.wait_until(lambda: provider_masters() == [f"{hv}/br-phys" for hv in sorted(HYPERVISORS)], 10,
                      lambda: f"one master per provider bridge: {provider_masters()}")


@pytest.mark.ovs
@pytest.mark.lab
def test_the_guide_lets_the_controller_make_br_int() -> None:
    """The guide's other way of attach steps 1+2, up to "Is a hypervisor connected and synced?": each host names
    itself and its manager, nothing more; the controller makes its br-int once registered, pointed at itself."""
    _lab_tools()
    blocks = _run_blocks("system-id")
    assert not any(b.id == "bridge" for b in blocks), "step 1 is the controller's in this run"
    status = next(i for i, b in enumerate(blocks) if b.id == "status")
    with guide_lab("system-id") as lab:
        run_guide(lab, blocks[: status + 1])
        for hv in HYPERVISORS:
            assert lab.ovs[hv].vsctl("get-controller", "br-int").split() == ["unix:tenantflow.sock"]
            assert lab.ovs[hv].vsctl("get", "bridge", "br-int", "datapath_type").strip() == "netdev"
