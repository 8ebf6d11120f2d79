"""controller/audit.py without a switch: every flow the compiler makes reads back as ``flow_text`` writes it,
and a flow equal to its compiled one in every field but one is told apart.

The flows of a cloud with most of the pipeline (routers with IPv4 and IPv6, floating IP, source NAT
through fast-failover groups, DHCP meters, learn actions, ports with security groups and a
remote-group rule: conjunctions) are encoded as the controller sends them and read back as a
switch's flow dump carries them (``Installed``). What OVS itself writes back is tested on real
switches in ``tests/test_opscheck.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from controller import audit, wire
from controller.switch import learned_cookies
from flows.compiler import compile_hypervisor
from flows.flow import Flow
from flows.ofctl import flow_text
from flows.simulate import to_int
from tests.test_gateway import Cloud, build, report_ports

HYPERVISORS = ("hv1", "hv2", "gw1", "gw2")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    c = build(tmp_path_factory.mktemp("audit"), v6=True)
    topo = c.topo
    net_id = c.ports["v1"].network_id
    secured = [topo.create_port({"network_id": net_id, "binding:host_id": hv}) for hv in ("hv1", "hv2")]
    group = topo.create_security_group({"name": "web", "project_id": secured[0].project_id})
    topo.create_security_group_rule({"security_group_id": group.id, "direction": "ingress", "ethertype": "IPv4",
                                     "protocol": "tcp", "port_range_min": 80, "port_range_max": 80,
                                     "remote_group_id": group.id})
    for port in secured:
        topo.update_port(port.id, {"security_groups": [group.id]})
    report_ports(topo)
    yield c
    topo.close()


def installed(flow: Flow, **changes) -> audit.Installed:
    """``flow`` as a switch holding it reports it (``changes``: fields that differ)."""
    body = wire.flow_add(flow)[8 + 40:]  # after the header and the flow-mod's fixed part: match, instructions
    match_len = (int.from_bytes(body[2:4], "big") + 7) // 8 * 8
    fields = {"table_id": flow.table_id, "priority": flow.priority, "cookie": flow.cookie, "idle_timeout": 0,
              "hard_timeout": 0, "match": body[:match_len], "instructions": body[match_len:], **changes}
    return audit.Installed(**fields)


def compiled(cloud: Cloud) -> dict[str, list[Flow]]:
    return {hv: compile_hypervisor(cloud.topo.graph, hv) for hv in HYPERVISORS}


def test_every_compiled_flow_reads_back_as_its_ovs_ofctl_text(cloud: Cloud) -> None:
    kinds = set()
    for flows in compiled(cloud).values():
        for flow in flows:
            assert audit.installed_text(installed(flow)) == flow_text(flow)
            kinds |= {type(a).__name__ for a in flow.actions}
    # the cloud has what the decoder must know
    assert {"CT", "Conjunction", "Group", "Learn", "Meter", "RegMove", "Resubmit", "SetField", "DecTtl"} <= kinds


def test_a_switch_holding_its_flows_is_equal_learned_ones_apart(cloud: Cloud) -> None:
    for hv, flows in compiled(cloud).items():
        result = audit.compare({f.cookie: f for f in flows}, [installed(f) for f in flows], learned_cookies(flows))
        assert result.equal and result.missing == result.extra == [] and result.installed == len(flows), hv


@pytest.mark.parametrize("change", ["priority", "idle_timeout", "match", "instructions", "duplicate", "foreign"])
def test_one_difference_is_one_missing_and_one_extra(cloud: Cloud, change: str) -> None:
    flows = compiled(cloud)["hv1"]
    victim = next(f for f in flows if f.actions and f.match)
    other = next(f for f in flows if f.match != victim.match and f.table_id == victim.table_id)
    held = [installed(f) for f in flows if f is not victim]
    altered = {
        "priority": installed(victim, priority=victim.priority + 1),
        "idle_timeout": installed(victim, idle_timeout=30),
        "match": installed(victim, match=installed(other).match),
        "instructions": installed(victim, instructions=installed(other).instructions),
        "duplicate": installed(victim),
        "foreign": installed(victim, cookie=0),
    }[change]
    held += [installed(victim), altered] if change in ("duplicate", "foreign") else [altered]
    result = audit.compare({f.cookie: f for f in flows}, held, learned_cookies(flows))
    assert [audit.installed_text(x) for x in result.extra] == [audit.installed_text(altered)]
    assert result.missing == ([] if change in ("duplicate", "foreign") else [victim])
    view = result.view()
    assert not view["equal"] and {d["stage"] for d in view["extra"]} == {audit.STAGE_BY_TABLE[victim.table_id].name}


def test_a_wide_register_match_reads_back_as_the_registers_it_spans(cloud: Cloud) -> None:
    """OVS writes a match on ``xxreg0`` (an IPv6 next hop in lr_in_arp_resolve) back as ``reg0``..``reg3``
    (reg0 the most significant), and one on ``xreg0`` as ``reg0``, ``reg1``: the same flow; a register of
    another value is not."""
    flows = [f for flows in compiled(cloud).values() for f in flows]
    wide = next(f for f in flows if any(name == "xxreg0" and not isinstance(v, tuple) for name, v in f.match))
    value = to_int("xxreg0", dict(wide.match)["xxreg0"])
    regs = tuple((f"reg{i}", (value >> (96 - 32 * i)) & 0xFFFFFFFF) for i in range(4))
    rest = tuple((n, v) for n, v in wide.match if n != "xxreg0")
    as_written = replace(wide, match=rest + regs, encoded=None)
    assert audit.compare({wide.cookie: wide}, [installed(as_written)], set()).equal
    other = replace(wide, match=rest + regs[:3] + (("reg3", regs[3][1] ^ 1),), encoded=None)
    assert not audit.compare({wide.cookie: wide}, [installed(other)], set()).equal
    xreg = replace(wide, match=rest + (("xreg0", (0x1234 << 32) | 0x5678),), encoded=None)
    split = replace(wide, match=rest + (("reg0", 0x1234), ("reg1", 0x5678)), encoded=None)
    assert audit.compare({wide.cookie: xreg}, [installed(split)], set()).equal
    swapped = replace(wide, match=rest + (("reg0", 0x5678), ("reg1", 0x1234)), encoded=None)
    assert not audit.compare({wide.cookie: xreg}, [installed(swapped)], set()).equal
