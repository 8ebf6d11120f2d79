"""An engine that builds its hypervisors in the background while writes go on (a controller's start).

:meth:`FlowEngine.warm_up` builds a chunk of hypervisors per hold of the lock; writes made
between chunks reach the built hypervisors as increments and the others with their build. After
every step each built hypervisor must equal the full compile, the others must say they are not
compiled (so no switch is diffed against nothing), and at the end every one is built. No switch.
"""

from __future__ import annotations

import random
from dataclasses import replace

from flows.engine import FlowEngine
from topology import graph_l3, synthetic
from topology.model import Port
from topology.model_l3 import SecurityGroup, SecurityGroupRule

HVS = 9


def cloud():
    graph = synthetic.synthetic_cloud(n_hvs=HVS, ports_per_hv=4, n_networks=3, vlan_fraction=0.34,
                                      port_security=True, seed=5)
    graph_l3.put_sg(graph, SecurityGroup(id="sg", project_id="project-0", name="sg"))
    for port in list(graph.records("port")):
        graph.put_port(replace(port, attrs={**port.attrs, "security_groups": ["sg"]}))
    graph.take_journal()
    return graph


def change(graph, rnd: random.Random, i: int) -> None:
    """One random write: a port moved, a port added, a rule added or removed."""
    ports = sorted(graph.records("port"), key=lambda p: p.id)
    kind = i % 4
    if kind == 0:
        port = rnd.choice(ports)
        graph.put_port(replace(port, binding_host=f"hv{rnd.randrange(HVS)}"))
    elif kind == 1:
        model = rnd.choice(ports)
        graph.put_port(Port(id=f"new-{i}", network_id=model.network_id, project_id=model.project_id,
                            key=10_000 + i, mac_address=f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}",
                            fixed_ips=(), binding_host=f"hv{rnd.randrange(HVS)}", device_owner="compute:nova",
                            attrs={"port_security_enabled": True, "security_groups": ["sg"]}))
    elif kind == 2:
        graph_l3.put_sg_rule(graph, SecurityGroupRule(id=f"r{i}", project_id="project-0", security_group_id="sg",
                                                      direction="ingress", protocol="tcp", port_range_min=i,
                                                      port_range_max=i))
    else:
        rules = graph_l3.sg_rules(graph, "sg")
        if rules:
            graph.remove("sg_rule", rnd.choice(rules).id)
    synthetic.wire_ofports(graph)


def test_writes_during_the_warm_up_reach_every_hypervisor() -> None:
    graph = cloud()
    engine = FlowEngine(graph, build=False)
    heard: list[set[str]] = []
    engine.subscribe(heard.append)
    assert not any(engine.compiles(f"hv{i}") for i in range(HVS))
    rnd = random.Random(7)
    built: list[str] = []
    step = 0
    while True:
        change(graph, rnd, step)
        engine.on_change(set())
        names = engine.warm_step(first=lambda: ["hv7"], chunk=2, budget=float("inf"))
        step += 1
        if not names:
            break
        built += names
        assert engine.mismatches() == [], f"step {step}"
        assert {f"hv{i}" for i in range(HVS) if engine.compiles(f"hv{i}")} == set(built)
        assert set(names) in heard  # the switches of the ones just built hear of them
    assert built[0] == "hv7"  # a connected bridge's hypervisor first
    assert sorted(built) == sorted(f"hv{i}" for i in range(HVS))
    for i in range(step, step + 8):  # all built: every write is an increment everywhere
        change(graph, rnd, i)
        engine.on_change(set())
    assert engine.mismatches() == []
    full = FlowEngine(graph)
    assert all(set(engine.desired(n)) == set(full.desired(n)) for n in full.hvs)


def test_a_hypervisor_registered_during_the_warm_up_is_built_too() -> None:
    graph = cloud()
    engine = FlowEngine(graph, build=False)
    assert len(engine.warm_step(chunk=3, budget=float("inf"))) == 3
    graph.put_hypervisor(synthetic.hypervisor(HVS))
    synthetic.wire_ofports(graph)
    engine.on_change(set())
    assert engine.warm_up(chunk=3) == HVS - 3 + 1
    assert engine.compiles(f"hv{HVS}")
    assert engine.mismatches() == []


def test_a_chunk_ends_when_its_time_is_spent() -> None:
    engine = FlowEngine(cloud(), build=False)
    assert len(engine.warm_step(chunk=5, budget=0.0)) == 1  # at least one per hold, then the budget decides
    assert engine.warm_up(chunk=5, budget=0.0) == HVS - 1
    assert engine.mismatches() == []


def test_a_writer_gets_the_lock_while_the_warm_up_runs() -> None:
    """The warm-up lets go of the lock between holds and waits a moment: a write waiting for it gets it (Python's
    locks are not fair: taken again at once, the lock went back to the warm-up nearly every time)."""
    import threading
    import time

    graph = synthetic.synthetic_cloud(n_hvs=300, ports_per_hv=20, n_networks=50, seed=2)
    engine = FlowEngine(graph, build=False)
    warm = threading.Thread(target=engine.warm_up, kwargs={"budget": 0.002})
    warm.start()
    try:
        while len(engine.hvs) < 10:  # under way
            time.sleep(0.001)
        got = []
        for _ in range(5):
            time.sleep(0.01)  # an API client's pace
            with engine.lock:
                got.append(len(engine.hvs))
    finally:
        warm.join()
    assert len(engine.hvs) == 300
    assert max(got) < 300, f"a write got the lock only after the warm-up: {got}"
    assert len(set(got)) > 1, f"the warm-up made no progress between five writes: {got}"


def test_a_share_gained_is_built_a_chunk_at_a_time_with_writes_in_between_and_lost_ones_are_forgotten() -> None:
    """A cluster's instance gaining bridges (flows.warmup.set_ownership): the gained hypervisors are built a chunk
    per hold of the lock, writes made meanwhile reach them all, the ones lost are dropped at once, and the
    engine ends compiling exactly its share, each hypervisor equal to the full compile."""
    import threading

    graph = cloud()
    engine = FlowEngine(graph)
    engine.set_ownership(lambda name: name in {"hv0", "hv1"})
    assert set(engine.hvs) == {"hv0", "hv1"} and engine.mismatches() == []
    share = {f"hv{i}" for i in range(1, HVS)}
    rnd, steps = random.Random(3), []
    real_step = engine.warm_step

    def step_then_write(first, chunk, budget):  # a write between every two holds of the lock
        built = real_step(first, 2, budget)
        steps.append(built)
        with engine.lock:
            change(graph, rnd, len(steps))
            engine.on_change(set())
        assert "hv0" not in engine.hvs and not engine.compiles("hv0"), "the lost one is gone from the first step"
        return built

    engine.warm_step = step_then_write
    done = threading.Thread(target=engine.set_ownership, args=(lambda name: name in share, lambda: ["hv7"]))
    done.start()
    done.join(30)
    assert not done.is_alive()
    assert steps[0] == ["hv7", "hv2"], "the connected bridge's first, two per hold"
    assert set(engine.hvs) == share and engine.mismatches() == []
    assert engine.compiles("hv5") and not engine.compiles("hv0")
