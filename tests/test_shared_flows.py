"""Flows shared between hypervisors (flows/shared.py) are never served stale.

Each test compiles a cloud (filling the shared table), changes what a shared
flow depends on, and checks every hypervisor's flows against a compile with an
empty table: the reference.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from flows import shared
from flows.compiler import compile_hypervisor
from topology.graph import TopologyGraph
from topology.model import FixedIP
from topology.synthetic import synthetic_cloud, wire_ofports


def _cookies(graph: TopologyGraph) -> dict[str, list[int]]:
    return {hv.name: sorted(f.cookie for f in compile_hypervisor(graph, hv.name)) for hv in graph.hypervisors()}


def _fresh(graph: TopologyGraph) -> dict[str, list[int]]:
    shared.clear()
    return _cookies(graph)


@pytest.fixture
def cloud() -> TopologyGraph:
    graph = synthetic_cloud(n_hvs=12, ports_per_hv=4, n_networks=3, port_security=True)
    _cookies(graph)  # fill the shared table
    return graph


def _a_remote_port(graph: TopologyGraph):
    return next(p for p in graph.records("port") if p.binding_host)


def test_sharing_changes_no_flow(cloud) -> None:
    shared.clear()
    cold = _cookies(cloud)
    warm = _cookies(cloud)
    assert cold == warm
    assert len(shared._flows) > 0


@pytest.mark.parametrize("change", ["mac", "address", "move", "tunnel_ip", "tunnel_ofport"])
def test_changed_inputs_are_new_flows(cloud, change) -> None:
    port = _a_remote_port(cloud)
    before = _cookies(cloud)
    if change == "mac":
        cloud.put_port(replace(port, mac_address="fa:16:3e:aa:bb:cc"))
    elif change == "address":
        fixed = port.fixed_ips[0]
        cloud.put_port(replace(port, fixed_ips=(FixedIP(fixed.subnet_id, "10.255.0.77"),)))
    elif change == "move":
        other = next(hv.name for hv in cloud.hypervisors() if hv.name != port.binding_host)
        cloud.put_port(replace(port, binding_host=other))
        wire_ofports(cloud)
    elif change == "tunnel_ip":
        hv = cloud.hypervisor(port.binding_host)
        cloud.put_hypervisor(replace(hv, tunnel_ip="192.0.2.99"))
    else:
        for hv in cloud.hypervisors():
            ofports = dict(cloud.ofports(hv.name))
            ofports["tf-vxlan"], ofports["tf-geneve"] = ofports["tf-geneve"], ofports["tf-vxlan"]
            cloud.set_ofports(hv.name, ofports)
    after = _cookies(cloud)
    assert after != before, "the change must show in some hypervisor's flows"
    assert after == _fresh(cloud)
