"""Build :class:`topology.graph.TopologyGraph` instances for tests and benchmarks.

Everything is built straight from the model records (no store, no API), with
deterministic ids, keys, MACs and OpenFlow port numbers, and the live port map
each hypervisor's switch would report (``graph.set_ofports``): one tap per bound
port, the flow-based tunnel ports and one ``phy-<physnet>`` patch per bridge
mapping. Helpers to compile and simulate a whole cloud sit at the end.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from flows.compiler import compile_hypervisor
from flows.simulate import Fabric, FabricResult, Switch
from topology.graph import TopologyGraph
from topology.model import TUNNEL_PORT_NAMES, FixedIP, Hypervisor, Network, Port, Subnet
from topology.synthetic import (
    hypervisor,
    mac,
    uid,
    wire_ofports,
)

BROADCAST = "ff:ff:ff:ff:ff:ff"


def new_graph() -> TopologyGraph:
    """An empty graph."""
    return TopologyGraph()


@dataclass
class Built:
    """A built graph plus handles on what tests want to name."""

    graph: TopologyGraph
    networks: dict[str, Network] = field(default_factory=dict)
    ports: dict[str, Port] = field(default_factory=dict)

    def ofport(self, label: str) -> int:
        """The OpenFlow port number of a labelled port on its hypervisor."""
        p = self.ports[label]
        return self.graph.ofports(p.binding_host)[p.ofport_name]

    def label_of(self, hv: str, port_name: str) -> str | None:
        """The label of the port whose tap is ``port_name`` on ``hv`` (None: not a labelled port)."""
        for label, p in self.ports.items():
            if p.binding_host == hv and p.ofport_name == port_name:
                return label
        return None


class Builder:
    """Incremental construction with unique keys, ids and MACs."""

    def __init__(self) -> None:
        self.built = Built(new_graph())
        self._net_n = 0
        self._port_n = 0

    @property
    def graph(self) -> TopologyGraph:
        """The graph being built."""
        return self.built.graph

    def hv(self, n: int, physnets: Iterable[str] = ("physnet1",)) -> Hypervisor:
        """Register ``hv<n>``."""
        h = hypervisor(n, physnets)
        self.graph.put_hypervisor(h)
        return h

    def network(self, label: str, network_type: str = "vxlan", segmentation_id: int | None = None,
                physical_network: str | None = None, cidr: str = "10.0.0.0/24", project: str = "",
                dhcp: bool = True) -> Network:
        """Add a network (key = creation order, VNI 1000+key by default) with one IPv4 subnet (DHCP on or off)."""
        self._net_n += 1
        n = self._net_n
        if segmentation_id is None and network_type != "flat":
            segmentation_id = 1000 + n
        if network_type in ("vlan", "flat") and physical_network is None:
            physical_network = "physnet1"
        net = Network(id=uid(1, n), project_id=project or f"project-{label}", key=n, network_type=network_type,
                      segmentation_id=segmentation_id, physical_network=physical_network)
        self.graph.put_network(net)
        self.graph.put_subnet(Subnet(id=uid(2, n), network_id=net.id, project_id=net.project_id, cidr=cidr,
                                     ip_version=4, gateway_ip=None, enable_dhcp=dhcp))
        self.built.networks[label] = net
        return net

    def port(self, label: str, net: Network, hv: str | None, ip: str | None = None,
             mac_address: str | None = None, admin_state_up: bool = True, **security) -> Port:
        """Add a port bound to ``hv`` (key = creation order, MAC unique unless given).

        Port security is off unless ``security`` says otherwise (``port_security_enabled``,
        ``security_groups``, ``allowed_address_pairs``: the port's attrs, as the topology
        stores them): these tests are about forwarding, not filtering.
        """
        self._port_n += 1
        n = self._port_n
        ips = (FixedIP(uid(2, net.key), ip),) if ip else ()
        attrs = {"port_security_enabled": False, **security}
        port = Port(id=uid(3, n), network_id=net.id, project_id=net.project_id, key=n,
                    mac_address=mac_address or mac(n), fixed_ips=ips, binding_host=hv,
                    admin_state_up=admin_state_up, device_owner="compute:nova", attrs=attrs)
        self.graph.put_port(port)
        self.built.ports[label] = port
        return port

    def done(self) -> Built:
        """Wire the port maps and return the result."""
        wire_ofports(self.graph)
        return self.built


def two_tenants_same_cidr(n_hvs: int = 3, network_type: str = "vxlan") -> Built:
    """Tenants ``a`` and ``b``, each one network 10.0.0.0/24 with one port per hypervisor.

    Port ``a<i>`` and ``b<i>`` are both on ``hv<i>`` with the same IP 10.0.0.<i+10>
    and the same MAC: only the logical network keeps them apart. Each tenant also
    has a second port ``a0x`` / ``b0x`` on hv0 (10.0.0.100) for local traffic.
    """
    b = Builder()
    for i in range(n_hvs):
        b.hv(i)
    for tenant in ("a", "b"):
        net = b.network(tenant, network_type, cidr="10.0.0.0/24", project=f"tenant-{tenant}")
        for i in range(n_hvs):
            b.port(f"{tenant}{i}", net, f"hv{i}", ip=f"10.0.0.{i + 10}", mac_address=mac(0x100 + i))
        b.port(f"{tenant}0x", net, "hv0", ip="10.0.0.100", mac_address=mac(0x200))
    return b.done()


def provider_pair(network_type: str = "vlan", vlan: int = 100) -> Built:
    """A provider network (``vlan`` or ``flat`` on physnet1) with ports p0, p0x on hv0 and p1 on hv1."""
    b = Builder()
    b.hv(0)
    b.hv(1)
    net = b.network("p", network_type, vlan if network_type == "vlan" else None, "physnet1")
    b.port("p0", net, "hv0", ip="203.0.113.10")
    b.port("p0x", net, "hv0", ip="203.0.113.11")
    b.port("p1", net, "hv1", ip="203.0.113.20")
    return b.done()


def abc(dhcp: bool = False) -> Built:
    """hv0: ports a, b; hv1: c; on one network (its IPv4 subnet with DHCP on or off), no address yet."""
    b = Builder()
    b.hv(0)
    b.hv(1)
    net = b.network("n", dhcp=dhcp)
    for label, hv in (("a", "hv0"), ("b", "hv0"), ("c", "hv1")):
        b.port(label, net, hv)
    return b.done()


def random_cloud(seed: int, n_hvs: int = 4, n_networks: int = 5, n_ports: int = 24) -> Built:
    """A small random cloud: mixed network types, overlapping CIDRs and reused MACs across networks."""
    rnd = random.Random(seed)
    b = Builder()
    for i in range(n_hvs):
        b.hv(i)
    types = ["vxlan", "geneve", "vlan", "flat", "vxlan"]
    nets = []
    for j in range(n_networks):
        t = types[j % len(types)] if j else "vxlan"
        if t == "flat" and any(n.network_type == "flat" for n in nets):
            t = "vxlan"  # one untagged network per physnet
        nets.append(b.network(f"n{j}", t, 100 + j if t == "vlan" else None, cidr="10.0.0.0/24"))
    for k in range(n_ports):
        net = rnd.choice(nets)
        hv = f"hv{rnd.randrange(n_hvs)}" if rnd.random() > 0.1 else None
        # MACs drawn from a small pool, so different networks often share one.
        b.port(f"x{k}", net, hv, ip=f"10.0.0.{rnd.randrange(2, 40)}", mac_address=mac(rnd.randrange(12)))
    # Drop MAC/IP duplicates inside a network: Neutron forbids them, they are not our subject.
    seen: set[tuple[str, str]] = set()
    for label, p in list(b.built.ports.items()):
        keys = {(p.network_id, p.mac_address)} | {(p.network_id, f.ip_address) for f in p.fixed_ips}
        if keys & seen:
            b.graph.remove("port", p.id)
            del b.built.ports[label]
        seen |= keys
    return b.done()


# -- whole-cloud simulation ------------------------------------------------------------------
def fabric_of(graph: TopologyGraph, learned: bool = True) -> Fabric:
    """Compile every hypervisor and join the switches; with ``learned``, the physical
    network knows on which hypervisor each port's MAC lives (per physnet)."""
    switches = [
        Switch(hv.name, compile_hypervisor(graph, hv.name), graph.ofports(hv.name), hv.tunnel_ip,
               frozenset(TUNNEL_PORT_NAMES.values()))
        for hv in graph.hypervisors()
    ]
    locate = None
    if learned:
        where: dict[tuple[str, str], str] = {}
        for p in graph.records("port"):
            net = graph.network(p.network_id)
            if net and net.physical_network and p.binding_host:
                where[(net.physical_network, p.mac_address)] = p.binding_host

        def locate(physnet: str, eth_dst: str) -> str | None:
            return where.get((physnet, eth_dst))

    return Fabric(switches, locate)


def send(fabric: Fabric, built: Built, label: str, **fields: int | str) -> FabricResult:
    """Inject a frame from labelled port ``label`` (its MAC as eth_src unless given)."""
    p = built.ports[label]
    pkt = {"in_port": built.ofport(label), "eth_src": p.mac_address, "eth_type": 0x0800, **fields}
    return fabric.inject(p.binding_host, pkt)


def delivered_labels(built: Built, result: FabricResult) -> list[str]:
    """Labels of the ports that received a copy, sorted (unlabelled ports as ``hv:name``)."""
    return sorted(built.label_of(d.hv, d.port) or f"{d.hv}:{d.port}" for d in result.deliveries)
