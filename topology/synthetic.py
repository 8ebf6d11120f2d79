"""Deterministic synthetic clouds, built straight from the model records.

Used by the benchmarks (``make bench``) and the tests: ids, keys, MACs and
OpenFlow port numbers are deterministic, and each hypervisor gets the live port
map its switch would report (one tap per bound port, the flow-based tunnel
ports, one ``phy-<physnet>`` patch per bridge mapping).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from topology.graph import TopologyGraph
from topology.model import FixedIP, Hypervisor, Network, Port, Subnet, provider_patch_name

TUNNEL_OFPORTS = {"tf-vxlan": 1, "tf-geneve": 2}
FIRST_PROVIDER_OFPORT = 5
FIRST_TAP_OFPORT = 10


def uid(kind: int, n: int) -> str:
    """A UUID-shaped id whose first 11 characters (the tap name) are unique per (kind, n)."""
    return f"{kind:02x}{n:06x}-{n % 0x100:02x}00-4000-8000-{n:012x}"


def mac(n: int) -> str:
    """The ``n``-th OpenStack-style MAC (fa:16:3e:xx:xx:xx)."""
    return f"fa:16:3e:{(n >> 16) & 0xFF:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"


def hypervisor(n: int, physnets: Iterable[str] = ("physnet1",)) -> Hypervisor:
    """Hypervisor ``hv<n>`` with tunnel IP 192.168.<n/250>.<n%250+1> and a bridge per physnet."""
    return Hypervisor(
        name=f"hv{n}",
        datapath_id=0x1000 + n,
        tunnel_ip=f"192.168.{n // 250}.{n % 250 + 1}",
        bridge_mappings={p: f"br-{p}" for p in physnets},
    )


def wire_ofports(graph: TopologyGraph, hv_names: Iterable[str] | None = None) -> None:
    """Give each hypervisor the port map its switch would report, sorted for determinism (and connected)."""
    names = list(hv_names) if hv_names is not None else [hv.name for hv in graph.hypervisors()]
    for name in names:
        ofports = dict(TUNNEL_OFPORTS)
        hv = graph.hypervisor(name)
        for i, physnet in enumerate(sorted(hv.bridge_mappings if hv else ())):
            ofports[provider_patch_name(physnet)] = FIRST_PROVIDER_OFPORT + i
        for i, port in enumerate(sorted(graph.ports_on(name), key=lambda p: p.key)):
            ofports[port.ofport_name] = FIRST_TAP_OFPORT + i
        graph.set_ofports(name, ofports)
        graph.set_connected(name, True)


def synthetic_cloud(n_hvs: int = 1000, ports_per_hv: int = 20, n_networks: int = 500, seed: int = 0,
                    vlan_fraction: float = 0.1, port_security: bool = False) -> TopologyGraph:
    """A deterministic large cloud for benchmarks: ``n_hvs * ports_per_hv`` ports on random networks.

    Ports have port security as ``port_security`` says, and no security group.

    Networks are vxlan (a few geneve, ``vlan_fraction`` VLAN on physnet1); every
    network has the same CIDR 10.0.0.0/16 (tenants overlap); MACs are unique.
    """
    rnd = random.Random(seed)
    g = TopologyGraph()
    for i in range(n_hvs):
        g.put_hypervisor(hypervisor(i))
    nets = []
    for j in range(n_networks):
        r = rnd.random()
        t = "vlan" if r < vlan_fraction else "geneve" if r < vlan_fraction + 0.05 else "vxlan"
        seg = 100 + j if t == "vlan" else 5000 + j
        net = Network(id=uid(1, j), project_id=f"project-{j % 97}", key=j + 1, network_type=t,
                      segmentation_id=seg, physical_network="physnet1" if t == "vlan" else None)
        g.put_network(net)
        g.put_subnet(Subnet(id=uid(2, j), network_id=net.id, project_id=net.project_id, cidr="10.0.0.0/16",
                            ip_version=4, gateway_ip="10.0.0.1"))
        nets.append(net)
    per_net = [0] * n_networks
    n = 0
    for i in range(n_hvs):
        for _ in range(ports_per_hv):
            j = rnd.randrange(n_networks)
            k = per_net[j]
            per_net[j] += 1
            ip = f"10.0.{k // 250}.{k % 250 + 2}"
            g.put_port(Port(id=uid(3, n), network_id=nets[j].id, project_id=nets[j].project_id, key=n + 1,
                            mac_address=mac(n), fixed_ips=(FixedIP(uid(2, j), ip),), binding_host=f"hv{i}",
                            device_owner="compute:nova", attrs={"port_security_enabled": port_security}))
            n += 1
    wire_ofports(g)
    return g
