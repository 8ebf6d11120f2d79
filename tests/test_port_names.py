"""Port-name aliases: an OVS port ``<canonical>@<anything>`` counts as ``<canonical>`` on its bridge.

Bridges sharing one ovs-vswitchd (the scale lab) cannot all have a port ``tf-vxlan``;
the controller must still hand the compiler ``tf-vxlan``, and a real hypervisor's plain
names must pass unchanged.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from controller.app import TenantflowApp
from topology.model import TUNNEL_PORT_NAMES, canonical_port_map, canonical_port_name, tap_name


@pytest.mark.parametrize("name,expected", [
    ("tf-vxlan", "tf-vxlan"),
    ("tf-vxlan@hv0007", "tf-vxlan"),
    ("tf-geneve@7", "tf-geneve"),
    ("br-int@12", "br-int"),
    ("tap0123456789a", "tap0123456789a"),
    ("phy-physnet1@x@y", "phy-physnet1"),  # only the first @ counts
    ("tf-vxlan@", "tf-vxlan"),
    ("@tf-vxlan", "@tf-vxlan"),  # nothing before the @: not an alias
    ("", ""),
])
def test_canonical_port_name(name: str, expected: str) -> None:
    assert canonical_port_name(name) == expected


def test_plain_layout_is_unchanged() -> None:
    ofports = {"tf-vxlan": 1, "tf-geneve": 2, "phy-physnet1": 3, tap_name("abcdef012345-x"): 4, "br-int": 0xFFFFFFFE}
    assert canonical_port_map(ofports) == (ofports, {})


def test_aliases_map_to_canonical_names() -> None:
    ofports = {"tf-vxlan@hv7": 1, "tf-geneve@hv7": 2, "tf-gre@hv7": 5, "tap0123456789a": 3, "br-int@hv7": 0xFFFFFFFE}
    result, clashes = canonical_port_map(ofports)
    assert result == {"tf-vxlan": 1, "tf-geneve": 2, "tf-gre": 5, "tap0123456789a": 3, "br-int": 0xFFFFFFFE}
    assert clashes == {}
    assert set(TUNNEL_PORT_NAMES.values()) <= result.keys()


def test_clashes_pick_deterministically() -> None:
    # the exact name wins over any alias, whatever the order the switch reported them in
    for ofports in ({"tf-vxlan@b": 5, "tf-vxlan": 9, "tf-vxlan@a": 3},
                    {"tf-vxlan": 9, "tf-vxlan@a": 3, "tf-vxlan@b": 5}):
        result, clashes = canonical_port_map(ofports)
        assert result == {"tf-vxlan": 9}
        assert clashes == {"tf-vxlan": ["tf-vxlan", "tf-vxlan@a", "tf-vxlan@b"]}
    # no exact name: the alias that sorts first
    for ofports in ({"tf-geneve@z": 1, "tf-geneve@m": 2}, {"tf-geneve@m": 2, "tf-geneve@z": 1}):
        assert canonical_port_map(ofports) == ({"tf-geneve": 2}, {"tf-geneve": ["tf-geneve@m", "tf-geneve@z"]})


class _Topology:
    def __init__(self) -> None:
        self.recorded: dict[str, dict[str, int]] = {}

    def set_live_ofports(self, hv_name: str, ofports: dict[str, int]) -> set[str]:
        self.recorded[hv_name] = dict(ofports)
        return {hv_name}


def test_the_controller_records_canonical_names(caplog: pytest.LogCaptureFixture) -> None:
    """controller.app's _set_ofports: the topology sees canonical names, the switch keeps the raw ones."""
    app = SimpleNamespace(topology=_Topology())
    sw = SimpleNamespace(hv_name="hv7", ofports={})
    raw = {"tf-vxlan@7": 1, "tf-geneve@7": 2, "tap0123456789a": 3, "br-int@7": 0xFFFFFFFE}
    with caplog.at_level(logging.WARNING, logger="tenantflow.app"):
        TenantflowApp._set_ofports(app, sw, raw)  # type: ignore[arg-type]
    assert sw.ofports == raw, "port-status events edit the switch's own names"
    assert app.topology.recorded["hv7"] == {"tf-vxlan": 1, "tf-geneve": 2, "tap0123456789a": 3, "br-int": 0xFFFFFFFE}
    assert not caplog.records

    raw = {"tf-vxlan@7": 1, "tf-vxlan": 4, "tf-geneve@7": 2}
    with caplog.at_level(logging.WARNING, logger="tenantflow.app"):
        TenantflowApp._set_ofports(app, sw, raw)  # type: ignore[arg-type]
    assert app.topology.recorded["hv7"] == {"tf-vxlan": 4, "tf-geneve": 2}
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "tf-vxlan, tf-vxlan@7" in caplog.records[0].getMessage() and "hv7" in caplog.records[0].getMessage()

    # a bridge not registered yet: nothing reaches the topology
    unknown = SimpleNamespace(hv_name=None, ofports={})
    TenantflowApp._set_ofports(app, unknown, {"tf-vxlan@9": 1})  # type: ignore[arg-type]
    assert unknown.ofports == {"tf-vxlan@9": 1} and set(app.topology.recorded) == {"hv7"}
