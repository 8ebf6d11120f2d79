"""Issue #14, item 1: without a chosen ``--auth`` the controller listens on loopback only, and says so."""

from __future__ import annotations

import ipaddress
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


def listening(ports: set[int]) -> dict[int, set[str]]:
    """The IPv4 and IPv6 addresses the given TCP ports listen on (/proc/net/tcp and tcp6, state LISTEN)."""
    found: dict[int, set[str]] = {}
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as fh:
            for line in list(fh)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port = local.split(":")
                if state == "0A" and int(port, 16) in ports:
                    raw = bytes.fromhex(address)  # the kernel writes each 32-bit word in host (little-endian) order
                    ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4)))
                    found.setdefault(int(port, 16), set()).add(str(ip))
    return found


def test_default_listeners_unreachable_from_outside(tmp_path) -> None:
    """The real process on its default hosts: reachable on 127.0.0.1, refused on the machine's own address."""
    ctl = ControllerProcess(str(tmp_path))
    ctl.argv = lambda: [sys.executable, "-m", "apps.cli", "controller", "--db", ctl.db, "--unix-socket", "",
                        "--allow-tcp", "--of-port", str(ctl.of_port), "--api-port", str(ctl.api_port),
                        "--ovsdb-listen", f"ptcp:{ctl.ovsdb_port}:127.0.0.1"]  # 6640 may be taken: a free port
    with ctl:
        log = open(ctl.log_path).read()
        assert "no --auth chosen" in log and "API 127.0.0.1, OpenFlow 127.0.0.1" in log, log
        # what the kernel says each port is bound to: loopback only, on any machine
        ports = {ctl.api_port, ctl.of_port, ctl.ovsdb_port}
        assert {port: addresses for port, addresses in listening(ports).items()} == \
            {port: {"127.0.0.1"} for port in ports}
        outside = _outside_address()  # and, where the machine has another address, a connect there is refused
        for port in (ctl.api_port, ctl.of_port) if outside is not None else ():
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
