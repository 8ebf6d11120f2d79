"""Provider bridges' planning without a switch: what a hypervisor's bridge mappings need, and what is left alone.

The OVSDB side (controller.tunnels) plans over rows shaped as the ``ovs`` IDL gives them (optional
columns as lists); the OpenFlow side (controller.provider.plan) over flows as a flow dump gives them,
encoded here as the switch reports them (a hand-made ``output:N`` carries max_len 0). The same plans
run against real Open vSwitch in tests/test_e2e_provider.py.
"""

from __future__ import annotations

import struct
import uuid
from types import SimpleNamespace
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp

from controller import wire
from controller.audit import Installed
from controller.provider import plan as flow_plan
from controller.tunnels import ControllerSpec, apply, plan, provider_bridges, wanted
from flows.flow import Output
from flows.provider import PROVIDER_COOKIE_STAGE, nic_ports, wire_through
from topology.model import Hypervisor

LOCAL = 0xFFFFFFFE
PORTS = {"eth2": 1, "int-physnet1": 2, "br-phys": LOCAL}
TARGET = "unix:/var/run/openvswitch/tenantflow.sock"
HV = Hypervisor("hv1", 1, "192.168.100.1", bridge_mappings={"physnet1": "br-phys"})


# -- the flows -------------------------------------------------------------------------------------------
def test_two_flows_wire_the_nic_to_the_patch_port_and_back() -> None:
    flows = wire_through("physnet1", PORTS)
    assert [(f.table_id, f.priority, f.match, f.actions) for f in flows] == [
        (0, 1, (("in_port", 1),), (Output(2),)),
        (0, 1, (("in_port", 2),), (Output(1),)),
    ]
    assert {f.cookie >> 56 for f in flows} == {PROVIDER_COOKIE_STAGE}
    assert wire_through("physnet1", dict(PORTS)) == flows  # the same cookies every time (a restart's too)


def test_every_port_but_the_patch_and_local_is_the_nic_side() -> None:
    ports = {**PORTS, "bond0": 7}
    assert nic_ports("physnet1", ports) == {"eth2": 1, "bond0": 7}
    flows = wire_through("physnet1", ports)
    assert [f.actions for f in flows if f.match == (("in_port", 2),)] == [(Output(7), Output(1))]
    assert len(flows) == 3


def test_no_flow_until_the_patch_port_and_a_nic_are_there() -> None:
    assert wire_through("physnet1", {"eth2": 1, "br-phys": LOCAL}) == []
    assert wire_through("physnet1", {"int-physnet1": 2, "br-phys": LOCAL}) == []
    assert wire_through("physnet2", PORTS) == []  # int-physnet2 is not there


def found(in_port: int, out_ports: list[int], cookie: int = 0, priority: int = 1, max_len: int = 0) -> Installed:
    """A flow as the switch's dump reports it; by default one made with ``ovs-ofctl add-flow``."""
    actions = b"".join(struct.pack("!HHIH6x", ofp.OFPAT_OUTPUT, 16, port, max_len) for port in out_ports)
    instructions = struct.pack("!HH4x", ofp.OFPIT_APPLY_ACTIONS, 8 + len(actions)) + actions
    return Installed(0, priority, cookie, 0, 0, wire.encode_match((("in_port", in_port),)), instructions)


def test_equal_flows_are_kept_whatever_their_cookie() -> None:
    desired = wire_through("physnet1", PORTS)
    ours = [found(1, [2], desired[0].cookie, max_len=ofp.OFPCML_MAX), found(2, [1], desired[1].cookie)]
    assert flow_plan(desired, ours) == ([], [])
    by_hand = [found(1, [2]), found(2, [1])]  # README's manual commands: cookie 0
    assert flow_plan(desired, by_hand) == ([], [])


def test_other_flows_go_and_missing_ones_come() -> None:
    desired = wire_through("physnet1", PORTS)
    normal = Installed(0, 100, 0, 0, 0, wire.encode_match(()),
                       struct.pack("!HH4x", ofp.OFPIT_APPLY_ACTIONS, 24)
                       + struct.pack("!HHIH6x", ofp.OFPAT_OUTPUT, 16, ofp.OFPP_NORMAL, 0))
    wrong = found(2, [5])  # the patch port's frames to another port
    stale, missing = flow_plan(desired, [found(1, [2]), wrong, normal])
    assert stale == [wrong, normal] and missing == [desired[1]]
    assert flow_plan(desired, [found(1, [2], priority=2), found(2, [1])]) == ([found(1, [2], priority=2)],
                                                                               [desired[0]])


def test_a_stale_flow_is_deleted_exactly_by_its_match() -> None:
    flow = found(1, [2])
    msg = wire.flow_delete_strict(flow.table_id, flow.priority, flow.match, xid=7)
    version, msg_type, length, xid = struct.unpack_from("!BBHI", msg)
    cookie, mask, table, command, _, _, priority = struct.unpack_from("!QQBBHHH", msg, 8)
    assert (version, msg_type, length, xid) == (ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, len(msg), 7)
    assert (cookie, mask, table, command, priority) == (0, 0, 0, ofp.OFPFC_DELETE_STRICT, 1)
    assert msg[48:] == flow.match


# -- the bridges (OVSDB rows as the IDL gives them) ------------------------------------------------------
def _iface(name: str, kind: str, options: dict[str, str]) -> Any:
    return SimpleNamespace(name=name, type=kind, options=dict(options), bfd={})


def _port(name: str, kind: str = "", options: dict[str, str] | None = None) -> Any:
    return SimpleNamespace(name=name, uuid=uuid.uuid4(), interfaces=[_iface(name, kind, options or {})])


def _controller(target: str, mode: str | None = "out-of-band", backoff: int | None = 1000) -> Any:
    return SimpleNamespace(target=target, connection_mode=[mode] if mode else [],
                           max_backoff=[backoff] if backoff else [], inactivity_probe=[])


def _bridge(name: str, ports: list[Any], dpid: str, fail_mode: str | None = None,
            controllers: list[Any] | None = None) -> Any:
    return SimpleNamespace(name=name, uuid=uuid.uuid4(), ports=ports, datapath_id=[dpid],
                           fail_mode=[fail_mode] if fail_mode else [], controller=controllers or [])


def _bridges(*rows: Any) -> dict[Any, Any]:
    return {row.uuid: row for row in rows}


def _br_int(*ports: Any) -> Any:
    return _bridge("br-int", list(ports), "0000000000000001", "secure", [_controller(TARGET)])


def test_a_mapped_bridge_gets_the_patch_pair_secure_mode_and_br_ints_controllers() -> None:
    br_int, br_phys = _br_int(), _bridge("br-phys", [_port("eth2")], "00002ef8f1492d4b")
    plans = [(row.name, plan(row, ports, (), controllers)) for row, ports, controllers
             in wanted(_bridges(br_int, br_phys), br_int, HV, {})]
    assert [(name, p.create, p.fail_mode, p.controllers) for name, p in plans] == [
        ("br-int", {"phy-physnet1": {"type": "patch", "options:peer": "int-physnet1"}}, None, None),
        ("br-phys", {"int-physnet1": {"type": "patch", "options:peer": "phy-physnet1"}}, "secure",
         frozenset({ControllerSpec(TARGET, 1000)})),
    ]
    assert provider_bridges(_bridges(br_int, br_phys), br_int, HV)[0].datapath_id == 0x2EF8F1492D4B


def test_a_bridge_not_made_yet_wants_nothing() -> None:
    br_int = _br_int()
    assert [(row.name, ports) for row, ports, _ in wanted(_bridges(br_int), br_int, HV, {})] == [("br-int", {})]
    assert provider_bridges(_bridges(br_int), br_int, HV) == []


def test_a_bridge_patched_by_hand_is_adopted_and_nothing_written() -> None:
    """The manual way's ports and fail mode, br-int's controllers already there: every plan is empty."""
    br_int = _br_int(_port("phy-physnet1", "patch", {"peer": "int-physnet1"}))
    br_phys = _bridge("br-phys", [_port("eth2"), _port("int-physnet1", "patch", {"peer": "phy-physnet1"})],
                      "00002ef8f1492d4b", "secure", [_controller(TARGET)])
    for row, ports, controllers in wanted(_bridges(br_int, br_phys), br_int, HV, {}):
        assert not plan(row, ports, (), controllers), row.name


def test_differing_columns_are_corrected_and_the_nic_untouched() -> None:
    br_int = _br_int(_port("phy-physnet1", "patch", {"peer": "wrong"}))
    br_phys = _bridge("br-phys", [_port("eth2"), _port("int-physnet1", "patch", {"peer": "phy-physnet1"})],
                      "00002ef8f1492d4b", "standalone", [_controller(TARGET, mode=None), _controller("tcp:1:2")])
    (_, int_ports, _), (_, phys_ports, controllers) = wanted(_bridges(br_int, br_phys), br_int, HV, {})
    int_plan, phys_plan = plan(br_int, int_ports), plan(br_phys, phys_ports, (), controllers)
    assert list(int_plan.update) == ["phy-physnet1"] and not int_plan.create and not int_plan.delete
    assert not phys_plan.create and not phys_plan.update and not phys_plan.delete  # eth2 is never touched
    assert phys_plan.fail_mode == "secure" and phys_plan.controllers == frozenset({ControllerSpec(TARGET, 1000)})
    assert "fail_mode controllers" in phys_plan.summary()


def test_without_controllers_on_br_int_the_bridges_are_left_theirs() -> None:
    br_int = _bridge("br-int", [], "0000000000000001", "secure")
    br_phys = _bridge("br-phys", [_port("eth2")], "00002ef8f1492d4b", "secure", [_controller("tcp:1:2")])
    (_, _, _), (_, ports, controllers) = wanted(_bridges(br_int, br_phys), br_int, HV, {})
    assert plan(br_phys, ports, (), controllers).controllers is None


class _Txn:
    """Collects what apply() inserts (the IDL's Transaction.insert, as far as apply uses it)."""

    def __init__(self) -> None:
        self.idl = SimpleNamespace(tables={"Controller": "Controller", "Interface": "Interface", "Port": "Port"})
        self.rows: list[Any] = []

    def insert(self, table: str) -> Any:
        row = SimpleNamespace(table=table)
        self.rows.append(row)
        return row


def test_apply_sets_the_bridge_columns_with_new_controller_rows() -> None:
    verified: list[str] = []
    br_phys = _bridge("br-phys", [], "00002ef8f1492d4b", "standalone", [_controller("tcp:1:2")])
    br_phys.verify = verified.append
    todo = plan(br_phys, {}, (), frozenset({ControllerSpec(TARGET, 1000, 5000)}))
    txn = _Txn()
    apply(txn, br_phys, todo)
    assert br_phys.fail_mode == ["secure"] and verified == ["controller"]
    (row,) = br_phys.controller
    assert (row.table, row.target, row.connection_mode, row.max_backoff, row.inactivity_probe) == (
        "Controller", TARGET, ["out-of-band"], [1000], [5000])
