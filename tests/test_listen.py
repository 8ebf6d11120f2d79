"""Issue #14, item 1: without a chosen ``--auth`` the controller listens on loopback only, and says so."""

from __future__ import annotations

import socket
import sys

import pytest

from apps.lab.controller import ControllerProcess
from controller.main import parse_args


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (None if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet leaves: a UDP connect only picks the source address
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_defaults_are_loopback() -> None:
    args = parse_args([])
    assert (args.api_host, args.of_host, args.auth) == ("127.0.0.1", "127.0.0.1", "")
    assert args.ovsdb_listen.split() == ["punix:/run/tenantflow/ovsdb.sock"] and not args.allow_tcp


@pytest.mark.parametrize("flags", [["--api-host", "0.0.0.0"], ["--of-host", "192.0.2.2", "--allow-tcp"],
                                   ["--ovsdb-listen", "ptcp:6640", "--allow-tcp"],
                                   ["--ovsdb-listen", "ptcp:6640:[::]", "--allow-tcp"],
                                   ["--store", "etcd://127.0.0.1:2379", "--peer-host", "192.0.2.2"]])
def test_other_addresses_need_an_auth_choice(flags: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert "no --auth chosen" in capsys.readouterr().err
    assert parse_args([*flags, "--auth", "noauth"]).auth == "noauth"


def test_keystone_needs_its_config(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--auth", "keystone"])
    assert "[keystone_authtoken]" in capsys.readouterr().err


def test_default_listeners_unreachable_from_outside(tmp_path) -> None:
    """The real process on its default hosts: reachable on 127.0.0.1, refused on the machine's own address."""
    ctl = ControllerProcess(str(tmp_path))
    ctl.argv = lambda: [sys.executable, "-m", "apps.cli", "controller", "--db", ctl.db, "--unix-socket", "",
                        "--allow-tcp", "--of-port", str(ctl.of_port), "--api-port", str(ctl.api_port),
                        "--ovsdb-listen", f"ptcp:{ctl.ovsdb_port}:127.0.0.1"]  # 6640 may be taken: a free port
    with ctl:
        log = open(ctl.log_path).read()
        assert "no --auth chosen" in log and "API 127.0.0.1, OpenFlow 127.0.0.1" in log, log
        outside = _outside_address()
        if outside is None:
            pytest.skip("this machine has no address but loopback")
        for port in (ctl.api_port, ctl.of_port):
            with pytest.raises(ConnectionRefusedError), socket.create_connection((outside, port), timeout=2):
                pass


def test_auth_from_the_ini_file(tmp_path) -> None:
    """The README's INI file: [controller] names the addresses and auth, [keystone_authtoken] the middleware."""
    from apps.northbound.auth import keystone_conf

    ini = tmp_path / "tenantflow.ini"
    ini.write_text("[controller]\nauth = keystone\napi_host = 192.0.2.2\n"
                   "[keystone_authtoken]\nauth_url = http://192.0.2.9:5000/v3\nauth_type = password\n")
    args = parse_args(["--config", str(ini)])
    assert (args.auth, args.api_host) == ("keystone", "192.0.2.2")
    assert keystone_conf(args.config)["auth_url"] == "http://192.0.2.9:5000/v3"
