"""Switches prove who they are (issue #14 item 3): OpenFlow and OVSDB over TLS with ``ovs-pki`` certificates.

The real controller process with no plain TCP listener, two lab hypervisors (private OVS in
namespaces) attached over TLS across a management network, each with its own certificate
(common name: its name), exactly as README's operator guide does it. Then the impostors:

- a bridge with hv2's valid certificate claiming hv1's datapath id: refused on OpenFlow (it
  holds no flow, hv1's own connection is untouched) and, since hv2's database now carries
  hv1's datapath id, hv2's OVSDB connection is refused too, until the bridge is gone;
- an OVS bridge speaking plain OpenFlow to the TLS port, TLS clients without a certificate
  and with one of another CA, on both channels; and no plain TCP listener to fall back to.

Every refusal must show in the controller's log and in ``tenantflow_switch_refusals_total``.
"""

from __future__ import annotations

import re
import socket
import ssl
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.lab import Lab, steps
from apps.lab.controller import ControllerProcess
from apps.lab.pki import Pki
from tests.e2e_fixtures import attached_lab, require_lab, running_controller, tls_setup, wait_until

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

REFUSALS = "tenantflow_switch_refusals_total"


@dataclass
class Cloud:
    """The module's TLS controller and its two-hypervisor lab."""

    ctrl: ControllerProcess
    lab: Lab
    workdir: Path


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """A controller taking switches over TLS only, and hv1, hv2 attached with their certificates."""
    require_lab()
    workdir = tmp_path_factory.mktemp("tls")
    prefix = "tft" + uuid.uuid4().hex[:5]
    with (
        tls_setup(workdir, prefix) as tls,
        running_controller(workdir / "controller", tls=tls) as ctrl,
        attached_lab(ctrl, prefix, n_hypervisors=2, tls=tls) as lab,
    ):
        yield Cloud(ctrl, lab, workdir)


def refusals(ctrl: ControllerProcess) -> dict[tuple[str, str], float]:
    """``tenantflow_switch_refusals_total`` by (channel, reason)."""
    with urllib.request.urlopen(ctrl.api_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.findall(rf'{REFUSALS}{{channel="(\w+)",reason="(\w+)"}} ([0-9.e+]+)', text)
    return {(channel, reason): float(value) for channel, reason, value in found}


def refused(ctrl: ControllerProcess, channel: str, reason: str, more_than: float = 0.0) -> bool:
    """Whether the refusals of (channel, reason) went above ``more_than``."""
    return refusals(ctrl).get((channel, reason), 0.0) > more_than


def _tls_client(host: str, port: int, cert: tuple[str, str] | None, ca: str) -> None:
    """A TLS handshake and a read, as a switch would start; raises if the controller ends it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    if cert is not None:
        ctx.load_cert_chain(cert[1], cert[0])
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as sock:
        # TLS 1.3: the client's handshake ends before the server checked its certificate;
        # the refusal arrives on the first read (an alert, or the connection closed).
        sock.sendall(b"\x04\x00\x00\x08\x00\x00\x00\x01")  # an OFPT_HELLO
        if not sock.recv(1):
            raise ConnectionError("closed")


def test_hypervisors_attach_over_tls(cloud: Cloud) -> None:
    """Both bridges are connected over ssl: and hold their flows; both ovsdb-servers over TLS; nothing refused."""
    ctrl = cloud.ctrl
    for hv in cloud.lab.hypervisors:
        assert hv.vsctl("get", "controller", "br-int", "target").strip().strip('"') == ctrl.ssl_target
        # (ovs-vswitchd writes the connection's status into its database every few seconds)
        wait_until(lambda h=hv: h.vsctl("get", "controller", "br-int", "is_connected").strip() == "true", 10,
                   message=f"{hv.name}'s controller connection in its database")
        assert hv.ofctl("dump-flows", "br-int").count("cookie=") > 10, f"{hv.name} holds no flows"
    status = ctrl.request("GET", "/ovsdb")
    assert sorted(status["hypervisors"]) == ["hv1", "hv2"], status
    assert all(h["connection"].startswith("pssl:") for h in status["hypervisors"].values()), status
    assert f"pssl:{ctrl.ovsdb_ssl_port}:{ctrl.ssl_host}" in status["listening"], status
    assert not any(refusals(ctrl).values()), refusals(ctrl)
    assert (("openflow", "name_mismatch") in refusals(ctrl)), "the refusal counters are exported at 0"


def test_no_plain_tcp_listener(cloud: Cloud) -> None:
    """Without --allow-tcp nothing listens on the plain TCP OpenFlow and OVSDB ports."""
    for port in (cloud.ctrl.of_port, cloud.ctrl.ovsdb_port):
        for host in ("127.0.0.1", cloud.ctrl.ssl_host):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, port), timeout=2).close()


def test_impostor_with_valid_certificate_is_refused(cloud: Cloud) -> None:
    """A bridge on hv2 (hv2's valid certificate) claiming hv1's datapath id gets no flow, on either channel."""
    ctrl, lab = cloud.ctrl, cloud.lab
    hv1, hv2 = lab.hypervisor("hv1"), lab.hypervisor("hv2")
    hv1_flows = hv1.ofctl("dump-flows", "br-int", "--no-stats")
    before = refusals(ctrl)
    hv2.vsctl("add-br", "br-imp", "--", "set", "bridge", "br-imp", "datapath_type=netdev", "fail_mode=secure",
              "protocols=OpenFlow13", f"other-config:datapath-id={steps.format_dpid(hv1.dpid)}",
              "other-config:disable-in-band=true")
    try:
        hv2.vsctl("set-controller", "br-imp", ctrl.ssl_target, "--", "set", "controller", "br-imp",
                  "max_backoff=1000")
        # refused at least twice: it reconnected (OVS retries) and was refused again, never let in
        wait_until(lambda: refused(ctrl, "openflow", "name_mismatch", before.get(("openflow", "name_mismatch"), 0) + 1),
                   15, message=lambda: f"the impostor's refusals; log:\n{ctrl.log_tail()}")
        assert hv2.ofctl("dump-flows", "br-imp").count("cookie=") == 0, "the impostor received flows"
        # hv2's database now names hv1's datapath id: its OVSDB connection is refused as well
        wait_until(lambda: refused(ctrl, "ovsdb", "name_mismatch", before.get(("ovsdb", "name_mismatch"), 0)), 15,
                   message=lambda: f"hv2's OVSDB refusal; log:\n{ctrl.log_tail()}")
        log = Path(ctrl.log_path).read_text()
        assert re.search(r"openflow connection from .* refused \(name_mismatch\): its certificate names 'hv2', "
                         rf"but it claims datapath id {hv1.dpid:016x}", log), log[-3000:]
        assert re.search(r"ovsdb connection from .* refused \(name_mismatch\): its certificate names 'hv2'", log)
        # the real hv1 was never replaced: still connected, its flows as they were
        assert hv1.vsctl("get", "controller", "br-int", "is_connected").strip() == "true"
        assert hv1.ofctl("dump-flows", "br-int", "--no-stats") == hv1_flows
        assert ctrl.request("GET", "/sync")["pending"] == []
    finally:
        hv2.vsctl("del-br", "br-imp")
    # once the impostor is gone hv2's OVSDB is accepted again
    wait_until(lambda: "hv2" in ctrl.request("GET", "/ovsdb")["hypervisors"], 20,
               message=lambda: f"hv2's OVSDB back; log:\n{ctrl.log_tail()}")


def test_early_bridge_is_checked_when_its_datapath_id_is_registered(cloud: Cloud) -> None:
    """A bridge with a certificate of "hvx" (no such hypervisor) and an unregistered datapath id waits, like
    any early bridge; once its datapath id is registered as hv9 it is refused, holding no flow.

    OVS reads a new ``set-ssl`` for new connections only: hv2's own stay as they are meanwhile.
    """
    ctrl, hv2 = cloud.ctrl, cloud.lab.hypervisor("hv2")
    own, other = cloud.lab.pki.switch("hv2"), cloud.lab.pki.switch("hvx")
    dpid = 0x7466_0000_0000_0E09
    before = refusals(ctrl).get(("openflow", "name_mismatch"), 0)
    log = Path(ctrl.log_path)
    steps.set_ssl(hv2.vsctl, other.private_key, other.certificate, other.ca_cert)
    hv2.vsctl("add-br", "br-early", "--", "set", "bridge", "br-early", "datapath_type=netdev", "fail_mode=secure",
              "protocols=OpenFlow13", f"other-config:datapath-id={steps.format_dpid(dpid)}")
    try:
        hv2.vsctl("set-controller", "br-early", ctrl.ssl_target)
        wait_until(lambda: f"bridge {dpid:016x} connected but no hypervisor" in log.read_text(), 10,
                   message=lambda: ctrl.log_tail())
        assert refusals(ctrl).get(("openflow", "name_mismatch"), 0) == before  # it claims nobody yet
        steps.register_hypervisor(ctrl.api_url, "hv9", dpid, "192.168.100.9")
        try:
            wait_until(lambda: refused(ctrl, "openflow", "name_mismatch", before), 10,
                       message=lambda: f"the refusal once hv9 is registered\n{ctrl.log_tail()}")
            assert f"its certificate names 'hvx', but it claims datapath id {dpid:016x}: datapath id {dpid:016x} " \
                   "is hypervisor hv9's" in log.read_text()
            assert ctrl.show("hypervisor", "hv9").get("connected") is not True
            assert hv2.ofctl("dump-flows", "br-early").count("cookie=") == 0
        finally:
            ctrl.request("DELETE", "/v2.0/hypervisors/hv9")
    finally:
        hv2.vsctl("del-br", "br-early")
        steps.set_ssl(hv2.vsctl, own.private_key, own.certificate, own.ca_cert)
    assert ctrl.show("hypervisor", "hv2").get("connected"), "hv2's own connection was disturbed"


def test_plain_tcp_needs_allow_tcp_and_tls_all_three_files() -> None:
    """The controller's flags: ptcp: and pssl: targets only when allowed and configured; TLS files together."""
    from controller.main import parse_args

    tls = ["--ssl-private-key", "k.pem", "--ssl-certificate", "c.pem", "--ssl-ca-cert", "ca.pem"]
    for argv in (["--ovsdb-listen", "ptcp:6640"], ["--ovsdb-listen", "pssl:6640"], tls[:4],
                 [*tls, "--allow-tcp"]):  # the last: --of-port and --of-ssl-port both 6653
        with pytest.raises(SystemExit):
            parse_args(argv)
    assert parse_args([]).ovsdb_listen == "punix:/run/tenantflow/ovsdb.sock"
    assert parse_args(tls).ovsdb_listen == "pssl:6640:127.0.0.1 punix:/run/tenantflow/ovsdb.sock"
    assert parse_args(["--allow-tcp", "--ovsdb-listen", "ptcp:6640:127.0.0.1"]).allow_tcp
    assert parse_args([*tls, "--of-host", "192.0.2.2"]).of_host == "192.0.2.2"  # TLS only: no --auth needed


def test_bridge_without_certificate_cannot_connect(cloud: Cloud) -> None:
    """Plain OpenFlow to the TLS port, and TLS without a certificate or with another CA's: refused, counted."""
    ctrl, hv1 = cloud.ctrl, cloud.lab.hypervisor("hv1")
    before = refusals(ctrl)

    def more(channel: str, reason: str) -> bool:
        return refused(ctrl, channel, reason, before.get((channel, reason), 0))

    # an OVS bridge without TLS (a tcp: target) at the TLS port
    hv1.vsctl("add-br", "br-plain", "--", "set", "bridge", "br-plain", "datapath_type=netdev", "fail_mode=secure",
              "protocols=OpenFlow13", "other-config:datapath-id=00000000000000ee")
    try:
        hv1.vsctl("set-controller", "br-plain", f"tcp:{ctrl.ssl_host}:{ctrl.ssl_port}")
        wait_until(lambda: more("openflow", "handshake_failed"), 15, message=lambda: ctrl.log_tail())
        assert hv1.vsctl("get", "controller", "br-plain", "is_connected").strip() == "false"
        assert hv1.ofctl("dump-flows", "br-plain").count("cookie=") == 0
    finally:
        hv1.vsctl("del-br", "br-plain")
    # TLS clients: no certificate, and a certificate of another CA (a rogue ovs-pki), on both channels
    rogue = Pki(str(cloud.workdir / "rogue")).switch("hv1")
    ca = cloud.lab.pki.switch("hv1").ca_cert  # the clients trust the controller: only their side is wrong
    for port, channel in ((ctrl.ssl_port, "openflow"), (ctrl.ovsdb_ssl_port, "ovsdb")):
        for cert, reason in ((None, "no_certificate"), ((rogue.private_key, rogue.certificate),
                                                        "untrusted_certificate")):
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                _tls_client(ctrl.ssl_host, port, cert, ca)
            wait_until(lambda c=channel, r=reason: more(c, r), 5,
                       message=lambda c=channel, r=reason: f"{c} {r} refusal\n" + ctrl.log_tail())
    log = Path(ctrl.log_path).read_text()
    for channel in ("openflow", "ovsdb"):
        for reason in ("no_certificate", "untrusted_certificate"):
            assert f"{channel} connection from" in log and f"refused ({reason})" in log
