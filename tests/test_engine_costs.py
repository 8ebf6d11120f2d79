"""What a security-group change costs the incremental engine, counted in units and flows, and that it is still right.

A rule without a remote group is a clause of its group's conjunctive match (:mod:`flows.acl`,
:mod:`flows.engine_groups`): adding one to a group recomputes one unit, and changes one flow,
per match piece on each hypervisor hosting a member, however many members it has there and
however many rules the group already has; the result equals the full compile
(:meth:`FlowEngine.mismatches`). No switch: the synthetic cloud of :mod:`topology.synthetic`
and the engine in-process.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from flows.engine import FlowEngine
from flows.pipeline import STAGE_BY_NAME
from topology import graph_l3, synthetic
from topology.graph import TopologyGraph
from topology.model_l3 import SecurityGroup, SecurityGroupRule

HVS, PORTS_PER_HV = 12, 5
GROUP_HVS = 10  # hv0..hv9: their ports are in GROUP; hv10 and hv11's in OTHER
MEMBERS = GROUP_HVS * PORTS_PER_HV
GROUP, OTHER, EMPTY = "sg-web", "sg-db", "sg-empty"
OUT_ACL = STAGE_BY_NAME["ls_out_acl"].table_id


def rule(rule_id: str, group: str = GROUP, **fields) -> SecurityGroupRule:
    """An ingress rule of ``group`` (TCP ``port`` from a prefix unless ``fields`` say otherwise)."""
    port = fields.pop("port", 22)
    values = {"direction": "ingress", "protocol": "tcp", "port_range_min": port, "port_range_max": port,
              "remote_ip_prefix": "192.0.2.0/24", **fields}
    return SecurityGroupRule(id=rule_id, project_id="project-0", security_group_id=group, **values)


@pytest.fixture
def cloud() -> tuple[TopologyGraph, FlowEngine]:
    """One VLAN network on 12 hypervisors, 60 ports with port security: hv0-hv9's in GROUP (4 rules), hv10 and
    hv11's in OTHER (no rule); EMPTY has no member."""
    graph = synthetic.synthetic_cloud(n_hvs=HVS, ports_per_hv=PORTS_PER_HV, n_networks=1, vlan_fraction=1.0,
                                      port_security=True, seed=3)
    for sg_id in (GROUP, OTHER, EMPTY):
        graph_l3.put_sg(graph, SecurityGroup(id=sg_id, project_id="project-0", name=sg_id))
    for i in range(3):
        graph_l3.put_sg_rule(graph, rule(f"r{i}", port=22 + i))
    graph_l3.put_sg_rule(graph, rule("r-egress", direction="egress", protocol=None, port_range_min=None,
                                     port_range_max=None, remote_ip_prefix=None))
    for port in list(graph.records("port")):
        group = GROUP if int(port.binding_host[2:]) < GROUP_HVS else OTHER
        graph.put_port(replace(port, attrs={**port.attrs, "security_groups": [group]}))
    graph.take_journal()
    engine = FlowEngine(graph)
    assert engine.mismatches() == []
    return graph, engine


def units_for(engine: FlowEngine, change) -> int:
    """Units the engine recomputes for ``change()`` (a graph mutation)."""
    return cost_of(engine, change)[0]


def cost_of(engine: FlowEngine, change) -> tuple[int, int]:
    """(units recomputed, flow contributions counted out and in) for ``change()``."""
    units, flows = engine.stats.units, engine.stats.contributions
    change()
    engine.on_change(set())
    return engine.stats.units - units, engine.stats.contributions - flows


def changed_flows(engine: FlowEngine) -> dict[str, int]:
    """Hypervisor -> how many of its flows were added or removed since the last call (what its switch is sent)."""
    return {name: len(engine.take_changes(name)) for name in sorted(engine.hvs)}


def holders(engine: FlowEngine, rule_id: str) -> int:
    """Flows on all hypervisors that rule ``rule_id`` contributes (their descriptions name it)."""
    return sum(1 for state in engine.hvs.values() for flow in state.flows.values()
               if f"'{rule_id}'" in flow.description)


def test_a_rule_costs_one_flow_per_piece_per_hypervisor_hosting_a_member(cloud) -> None:
    graph, engine = cloud
    changed_flows(engine)
    group_hvs = {f"hv{i}": 1 for i in range(GROUP_HVS)}
    none = {f"hv{i}": 0 for i in range(GROUP_HVS, HVS)}
    # one unit and one flow per hypervisor of the group, for 5 members each: not one per member
    assert cost_of(engine, lambda: graph_l3.put_sg_rule(graph, rule("r-new", port=8080))) == (GROUP_HVS, GROUP_HVS)
    assert changed_flows(engine) == {**group_hvs, **none}
    assert engine.mismatches() == []
    assert holders(engine, "r-new") == GROUP_HVS
    (flow,) = [f for f in engine.desired("hv0").values() if "'r-new'" in f.description]
    assert flow.table_id == OUT_ACL and ("tcp_dst", 8080) in flow.match and "reg5" not in dict(flow.match)
    # a port range of 2 pieces (8000-8002: 8000/15 and 8002): two flows per hypervisor
    assert units_for(engine, lambda: graph_l3.put_sg_rule(
        graph, rule("r-range", port_range_min=8000, port_range_max=8002))) == 2 * GROUP_HVS
    assert changed_flows(engine) == {**{h: 2 for h in group_hvs}, **none}
    assert holders(engine, "r-range") == 2 * GROUP_HVS
    # removed: exactly those flows go
    before = {name: set(engine.desired(name)) for name in engine.hvs}
    assert cost_of(engine, lambda: graph.remove("sg_rule", "r-new")) == (GROUP_HVS, GROUP_HVS)
    assert changed_flows(engine) == {**group_hvs, **none}
    assert holders(engine, "r-new") == 0
    assert all(set(engine.desired(name)) < before[name] for name in group_hvs)
    assert engine.mismatches() == []


def test_a_rule_of_a_group_without_members_costs_nothing(cloud) -> None:
    graph, engine = cloud
    changed_flows(engine)
    assert units_for(engine, lambda: graph_l3.put_sg_rule(graph, rule("r-empty", group=EMPTY))) == 0
    assert holders(engine, "r-empty") == 0
    assert set(changed_flows(engine).values()) == {0}
    assert engine.mismatches() == []


def test_identical_rules_of_two_groups_share_one_clause_flow(cloud) -> None:
    graph, engine = cloud
    port = next(p for p in graph.ports_on("hv0"))
    graph.put_port(replace(port, attrs={**port.attrs, "security_groups": [OTHER]}))  # OTHER is local on hv0 too
    engine.on_change(set())
    # the same rule as GROUP's r0: where both groups are local (hv0), r0's clause flow now lists both groups
    assert units_for(engine, lambda: graph_l3.put_sg_rule(graph, rule("o0", group=OTHER, port=22))) == 3
    assert engine.mismatches() == []
    (shared,) = [f for f in engine.desired("hv0").values() if "'o0'" in f.description]
    assert "'r0'" in shared.description and len(shared.actions) == 2
    assert [f for f in engine.desired("hv1").values() if "'o0'" in f.description] == []
    assert len([f for f in engine.desired("hv10").values() if "'o0'" in f.description]) == 1


def test_a_port_changing_groups_takes_its_rules_along(cloud) -> None:
    graph, engine = cloud
    graph_l3.put_sg_rule(graph, rule("r-db", group=OTHER, port=5432))
    engine.on_change(set())
    assert holders(engine, "r-db") == 2  # hv10, hv11
    port = next(p for p in graph.ports_on("hv0"))
    # the port's own 5 units on hv0 (port, net, in, acl, anti), and OTHER becoming local there: its conj_id
    # flows and its rule's clause (GROUP's units stay: it keeps members on hv0)
    assert units_for(engine, lambda: graph.put_port(
        replace(port, attrs={**port.attrs, "security_groups": [OTHER]}))) == 5 + 2
    assert holders(engine, "r-db") == 3
    assert holders(engine, "r0") == GROUP_HVS  # GROUP keeps 4 members on hv0
    assert engine.mismatches() == []
    graph.put_port(replace(port, attrs={**port.attrs, "port_security_enabled": False, "security_groups": []}))
    engine.on_change(set())
    assert holders(engine, "r-db") == 2
    assert engine.mismatches() == []


def test_a_group_turned_stateless_rewrites_its_conj_id_flows(cloud) -> None:
    graph, engine = cloud
    graph_l3.put_sg(graph, SecurityGroup(id=GROUP, project_id="project-0", name=GROUP, stateful=False))
    engine.on_change(set())
    assert engine.mismatches() == []
    stateless = [f for s in engine.hvs.values() for f in s.flows.values()
                 if f"group {GROUP} allows it (stateless)" in f.description]
    assert len(stateless) == 4 * GROUP_HVS  # 2 directions x 2 IP versions, once per hypervisor, not per member


def test_a_group_renamed_costs_nothing(cloud) -> None:
    graph, engine = cloud
    assert units_for(engine, lambda: graph_l3.put_sg(
        graph, SecurityGroup(id=GROUP, project_id="project-0", name="renamed"))) == 0
    assert engine.mismatches() == []


def test_a_remote_group_rule_recomputes_the_member_clauses_not_the_members_rules(cloud) -> None:
    graph, engine = cloud
    remote = rule("r-remote", remote_ip_prefix=None, remote_group_id=GROUP, port=443)
    # each host's clause flow of each member address gains the rule's conjunction: what really changes
    assert units_for(engine, lambda: graph_l3.put_sg_rule(graph, remote)) == GROUP_HVS * MEMBERS
    assert engine.mismatches() == []
