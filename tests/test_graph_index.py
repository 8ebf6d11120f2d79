"""The graph's per-network port indexes and the indexed lowest-free allocation equal a brute-force recomputation."""

from __future__ import annotations

import random
from collections import Counter

import netaddr
import pytest

from topology import graph_l3, ipam
from topology.graph import TopologyGraph
from topology.model import FixedIP, Hypervisor, Network, Port, Subnet
from topology.model_l3 import ROUTER_GATEWAY, ROUTER_INTERFACE, Router

NETS = ("n1", "n2", "n3")
SUBNETS = {"s1": ("n1", "10.0.0.0/28"), "s2": ("n1", "fd00::/124"), "s3": ("n2", "10.0.0.0/28"),
           "s4": ("n3", "10.1.0.0/29")}
ROUTERS = ("r1", "r2")
OWNERS = ("", "compute:nova", "network:dhcp", ROUTER_INTERFACE, ROUTER_GATEWAY, "network:router_interface_distributed")


def _brute_routers_of_network(graph: TopologyGraph, net_id: str) -> list[str]:
    """The walk routers_of_network used to do over every port of the network."""
    out: dict[str, Router] = {}
    for port in graph.ports_of(net_id):
        for nb in graph.g.neighbors(("port", port.id)):
            r = graph.g.nodes[nb].get("obj") if nb[0] == "router" else None
            if r is not None and port.device_owner != ROUTER_GATEWAY:
                out.setdefault(r.id, r)
    return list(out)


def _brute_records(graph: TopologyGraph, kind: str) -> list:
    """What records() did before its index: a walk over every node."""
    return [data["obj"] for node, data in graph.g.nodes(data=True) if node[0] == kind and data.get("obj") is not None]


def _check(graph: TopologyGraph) -> None:
    for kind in ("network", "subnet", "port", "router", "hv", "fip"):
        assert list(graph.records(kind)) == _brute_records(graph, kind), kind  # same records, same order
    assert graph.hypervisors() == _brute_records(graph, "hv")
    for net_id in (*NETS, "ghost"):
        ports = graph.ports_of(net_id)
        index = graph.network_index(net_id)
        assert list(index.ports) == [p.id for p in ports]  # same ports, same order
        node = ("network", net_id)
        linked = [nb[1] for nb in graph.g.neighbors(node) if nb[0] == "subnet"] if node in graph.g else []
        assert [s.id for s in graph.subnets_of(net_id)] == linked
        assert index.macs == dict(Counter(p.mac_address for p in ports))
        held: dict[str, Counter] = {}
        for p in ports:
            for f in p.fixed_ips:
                held.setdefault(f.subnet_id, Counter())[f.ip_address] += 1
        assert {sid: a.counts() for sid, a in index.addresses.items()} == {s: dict(c) for s, c in held.items()}
        for sid, addrs in index.addresses.items():
            assert sorted(addrs._sorted) == addrs._sorted and len(set(addrs._sorted)) == len(addrs._sorted)
            assert {ipam._key_address(k) for k in addrs._sorted} == set(held[sid])
        assert index.hosts == dict(Counter(p.binding_host for p in ports if p.binding_host))
        assert graph.hypervisors_of(net_id) == {p.binding_host for p in ports if p.binding_host}
        assert [r.id for r in graph_l3.routers_of_network(graph, net_id)] == _brute_routers_of_network(graph, net_id)


def _random_port(rng: random.Random, port_id: str) -> Port:
    net_id = rng.choice(NETS)
    subnets = [s for s, (n, _) in SUBNETS.items() if n == net_id] + ["gone"]
    fixed = []
    for _ in range(rng.randint(0, 3)):
        sid = rng.choice(subnets)
        cidr = netaddr.IPNetwork(SUBNETS[sid][1] if sid in SUBNETS else "10.9.0.0/30")
        fixed.append(FixedIP(sid, str(cidr[rng.randrange(cidr.size)])))
    owner = rng.choice(OWNERS)
    device_id = rng.choice(ROUTERS) if owner.startswith("network:router") and rng.random() < 0.9 else ""
    return Port(id=port_id, network_id=net_id, project_id="p", key=0,
                mac_address=f"fa:16:3e:00:00:{rng.randrange(6):02x}", fixed_ips=tuple(fixed),
                binding_host=rng.choice((None, "hv1", "hv2", "hv3")), device_owner=owner, device_id=device_id)


@pytest.mark.parametrize("seed", range(20))
def test_indexes_equal_a_recomputation_after_random_changes(seed: int) -> None:
    rng = random.Random(seed)
    graph = TopologyGraph()
    for net_id in NETS:
        graph.put_network(Network(id=net_id, project_id="p", key=1, network_type="vxlan", segmentation_id=1))
    for sid, (net_id, cidr) in SUBNETS.items():
        graph.put_subnet(Subnet(id=sid, network_id=net_id, project_id="p", cidr=cidr,
                                ip_version=netaddr.IPNetwork(cidr).version, gateway_ip=None))
    for rid in ROUTERS:
        graph_l3.put_router(graph, Router(id=rid, project_id="p", key=1))
    port_ids = [f"port{i}" for i in range(12)]
    for _ in range(300):
        op = rng.random()
        if op < 0.55:  # create or replace (a replaced port may even move to another network)
            port = _random_port(rng, rng.choice(port_ids))
            if graph.network(port.network_id) is None:
                with pytest.raises(KeyError):  # refused before anything changed
                    graph.put_port(port)
            else:
                graph.put_port(port)
        elif op < 0.8:
            graph.remove("port", rng.choice(port_ids))
        elif op < 0.87:  # a router goes (its interfaces' edges with it) or comes back (without them)
            rid = rng.choice(ROUTERS)
            if rng.random() < 0.5:
                graph.remove("router", rid)
            else:
                graph_l3.put_router(graph, Router(id=rid, project_id="p", key=1))
        elif op < 0.92:  # a network goes (its remaining ports lose their edge) or comes back
            net_id = rng.choice(NETS)
            if rng.random() < 0.3:
                graph.remove("network", net_id)
            elif graph.network(net_id) is None:
                graph.put_network(Network(id=net_id, project_id="p", key=1, network_type="vxlan",
                                          segmentation_id=1))
        elif op < 0.94:
            graph.remove("subnet", rng.choice(list(SUBNETS)))
        elif op < 0.96:  # a hypervisor registers (maybe over the placeholder a bound port left) or goes
            name = rng.choice(("hv1", "hv2", "hv3"))
            if rng.random() < 0.5:
                graph.remove("hv", name)
            else:
                graph.put_hypervisor(Hypervisor(name=name, datapath_id=int(name[2:]), tunnel_ip=f"192.0.2.{name[2:]}"))
        else:  # a subnet comes back, or is put again (even naming another network: the old edge stays)
            sid = rng.choice(list(SUBNETS))
            net_id, cidr = SUBNETS[sid] if rng.random() < 0.7 else (rng.choice(NETS), SUBNETS[sid][1])
            if graph.network(net_id) is not None:
                graph.put_subnet(Subnet(id=sid, network_id=net_id, project_id="p", cidr=cidr,
                                        ip_version=netaddr.IPNetwork(cidr).version, gateway_ip=None))
        _check(graph)
    for port_id in port_ids:
        graph.remove("port", port_id)
    _check(graph)
    assert all(not graph.network_index(n).ports for n in NETS)


def _brute_lowest_free(subnet: Subnet, used: set[str]) -> str | None:
    for start, end in subnet.allocation_pools:
        for ip in netaddr.IPRange(start, end):
            if str(ip) not in used:
                return str(ip)
    return None


@pytest.mark.parametrize("cidr", ["10.0.0.0/27", "fd00::/122", "10.0.0.0/29"])
def test_lowest_free_equals_a_walk_from_the_pool_start(cidr: str) -> None:
    rng = random.Random(cidr)
    net = netaddr.IPNetwork(cidr)
    hosts = [str(ip) for ip in net]
    for _ in range(300):
        a, b, c = sorted(rng.sample(range(len(hosts)), 3))
        pools = ((hosts[a], hosts[b]), (hosts[b + 1], hosts[-1])) if b + 1 < len(hosts) else ((hosts[a], hosts[c]),)
        subnet = Subnet(id="s", network_id="n", project_id="p", cidr=str(net), ip_version=net.version,
                        gateway_ip=None, allocation_pools=pools)
        held = rng.sample(hosts, rng.randrange(len(hosts) + 1)) + ["garbage", "10.0.0.0/30"]
        index = ipam.AddressIndex(held)
        for addr in rng.sample(held, len(held) // 3):  # some released again
            index.discard(addr)
            held.remove(addr)
        extra = rng.sample(hosts, rng.randrange(4))
        taken = ipam.Taken(index)
        for addr in extra:
            taken.add(addr)
        expected = _brute_lowest_free(subnet, set(held) | set(extra))
        assert ipam.lowest_free(subnet, taken) == expected
        assert ipam.lowest_free(subnet, set(held) | set(extra)) == expected  # plain sets still work
        assert set(index) == set(held)  # Taken never writes into the index


def test_allocation_after_releases_takes_the_lowest_again() -> None:
    subnet = Subnet(id="s", network_id="n", project_id="p", cidr="10.0.0.0/24", ip_version=4,
                    gateway_ip="10.0.0.1", allocation_pools=(("10.0.0.2", "10.0.0.254"),))
    index = ipam.AddressIndex()
    for _ in range(200):
        index.add(ipam.lowest_free(subnet, ipam.Taken(index)))
    assert ipam.lowest_free(subnet, index) == "10.0.0.202"
    index.discard("10.0.0.77")
    index.discard("10.0.0.3")
    assert ipam.lowest_free(subnet, index) == "10.0.0.3"
    index.add("10.0.0.3")
    assert ipam.lowest_free(subnet, index) == "10.0.0.77"
    assert ipam.lowest_free(subnet, index.without(["10.0.0.2"])) == "10.0.0.2"
    assert "10.0.0.2" in index
