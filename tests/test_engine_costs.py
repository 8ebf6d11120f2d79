"""What a security-group change costs the incremental engine, counted in units, and that it is still right.

A rule without a remote group is one unit per (member port, rule) (:mod:`flows.engine`): adding
one to a group recomputes exactly one unit per bound member, however many rules the group
already has, and the result equals the full compile (:meth:`FlowEngine.mismatches`). No switch:
the synthetic cloud of :mod:`topology.synthetic` and the engine in-process.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from flows.engine import FlowEngine
from topology import graph_l3, synthetic
from topology.graph import TopologyGraph
from topology.model_l3 import SecurityGroup, SecurityGroupRule

HVS, PORTS_PER_HV = 12, 5
MEMBERS = HVS * PORTS_PER_HV
GROUP, OTHER = "sg-web", "sg-db"


def rule(rule_id: str, group: str = GROUP, **fields) -> SecurityGroupRule:
    """An ingress rule of ``group`` (TCP ``port`` from a prefix unless ``fields`` say otherwise)."""
    port = fields.pop("port", 22)
    values = {"direction": "ingress", "protocol": "tcp", "port_range_min": port, "port_range_max": port,
              "remote_ip_prefix": "192.0.2.0/24", **fields}
    return SecurityGroupRule(id=rule_id, project_id="project-0", security_group_id=group, **values)


@pytest.fixture
def cloud() -> tuple[TopologyGraph, FlowEngine]:
    """One VLAN network on 12 hypervisors, 60 ports with port security, all in GROUP (4 rules); OTHER empty."""
    graph = synthetic.synthetic_cloud(n_hvs=HVS, ports_per_hv=PORTS_PER_HV, n_networks=1, vlan_fraction=1.0,
                                      port_security=True, seed=3)
    for sg_id in (GROUP, OTHER):
        graph_l3.put_sg(graph, SecurityGroup(id=sg_id, project_id="project-0", name=sg_id))
    for i in range(3):
        graph_l3.put_sg_rule(graph, rule(f"r{i}", port=22 + i))
    graph_l3.put_sg_rule(graph, rule("r-egress", direction="egress", protocol=None, port_range_min=None,
                                     port_range_max=None, remote_ip_prefix=None))
    for port in list(graph.records("port")):
        graph.put_port(replace(port, attrs={**port.attrs, "security_groups": [GROUP]}))
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


def holders(engine: FlowEngine, rule_id: str) -> int:
    """Flows on all hypervisors that rule ``rule_id`` contributes (by their description)."""
    return sum(1 for state in engine.hvs.values() for flow in state.flows.values()
               if f"rule {rule_id}" in flow.description)


def test_a_rule_costs_one_unit_per_member_and_equals_the_full_compile(cloud) -> None:
    graph, engine = cloud
    # one unit and one flow per member: the members' 4 other rules and their tracking are not touched
    assert cost_of(engine, lambda: graph_l3.put_sg_rule(graph, rule("r-new", port=8080))) == (MEMBERS, MEMBERS)
    assert engine.mismatches() == []
    assert holders(engine, "r-new") == MEMBERS
    # a port range of 3 pieces (8000-8002: 8000/15 and 8002): still one unit per member, 2 flows each
    assert units_for(engine, lambda: graph_l3.put_sg_rule(
        graph, rule("r-range", port_range_min=8000, port_range_max=8002))) == MEMBERS
    assert holders(engine, "r-range") == 2 * MEMBERS
    assert cost_of(engine, lambda: graph.remove("sg_rule", "r-new")) == (MEMBERS, MEMBERS)
    assert holders(engine, "r-new") == 0
    assert engine.mismatches() == []


def test_a_rule_of_a_group_without_members_costs_nothing(cloud) -> None:
    graph, engine = cloud
    assert units_for(engine, lambda: graph_l3.put_sg_rule(graph, rule("r-other", group=OTHER))) == 0
    assert holders(engine, "r-other") == 0
    assert engine.mismatches() == []


def test_a_port_changing_groups_takes_its_rules_along(cloud) -> None:
    graph, engine = cloud
    graph_l3.put_sg_rule(graph, rule("r-db", group=OTHER, port=5432))
    engine.on_change(set())
    port = next(iter(graph.records("port")))
    graph.put_port(replace(port, attrs={**port.attrs, "security_groups": [OTHER]}))
    engine.on_change(set())
    assert holders(engine, "r-db") == 1
    assert holders(engine, "r0") == MEMBERS - 1
    assert engine.mismatches() == []
    graph.put_port(replace(port, attrs={**port.attrs, "port_security_enabled": False, "security_groups": []}))
    engine.on_change(set())
    assert holders(engine, "r-db") == 0
    assert engine.mismatches() == []


def test_a_group_turned_stateless_rewrites_its_members_rules(cloud) -> None:
    graph, engine = cloud
    graph_l3.put_sg(graph, SecurityGroup(id=GROUP, project_id="project-0", name=GROUP, stateful=False))
    engine.on_change(set())
    assert engine.mismatches() == []
    stateless = [f for s in engine.hvs.values() for f in s.flows.values() if "(stateless)" in f.description]
    assert len(stateless) == 4 * MEMBERS  # each of the 4 rules, on every member


def test_a_remote_group_rule_recomputes_the_member_clauses_not_the_members_rules(cloud) -> None:
    graph, engine = cloud
    remote = rule("r-remote", remote_ip_prefix=None, remote_group_id=GROUP, port=443)
    # each host's clause flow of each member address gains the rule's conjunction: what really changes
    assert units_for(engine, lambda: graph_l3.put_sg_rule(graph, remote)) == HVS * MEMBERS
    assert engine.mismatches() == []
