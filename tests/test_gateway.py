"""Source NAT through HA gateways on the simulated pipeline: behaviour, not flow text (issue #13).

The real :class:`topology.state.Topology` (a temporary SQLite file) driven as the API
drives it: computes hv1 and hv2, gateways gw1 and gw2 (``gateway_for`` physnet1); an
external flat network on physnet1 with 203.0.113.0/24 (gateway .1); a tenant network
10.0.0.0/24 behind router r1, whose gateway is on it and scheduled on [gw1, gw2]; VM v1
on hv1 without a floating IP, v2 on hv2 with one. Every switch reports its ports, the
gateway tunnels (``tg-*``) included, as the OVSDB manager creates them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.compiler import compile_hypervisor
from flows.flow import CONTROLLER
from flows.gateway import snat_zone
from flows.simulate import Pipeline, lint
from topology.gateways import gateway_tunnel_name, tunnel_ports
from topology.model import dvr_mac, tap_name
from topology.state import Topology

EXT_GW, OUTSIDE_MAC, OUTSIDE = "203.0.113.1", "00:00:5e:00:53:01", "198.51.100.7"
EXT6_GW, OUTSIDE6 = "2001:db8:ee::1", "2001:db8:99::7"
PATCH, VXLAN = 3, 1
TUNNEL_IPS = {"hv1": "192.0.2.1", "hv2": "192.0.2.2", "gw1": "192.0.2.11", "gw2": "192.0.2.12"}


@dataclass
class Cloud:
    topo: Topology
    router: object
    ports: dict[str, object]
    router_mac: str  # r1's interface MAC on the tenant subnet

    @property
    def graph(self):
        return self.topo.graph

    def pipeline(self, hv: str) -> Pipeline:
        return Pipeline(compile_hypervisor(self.graph, hv))

    def tg(self, hv: str, peer: str) -> int:
        """The OpenFlow port on ``hv`` of its gateway tunnel to ``peer``."""
        return self.graph.ofports(hv)[gateway_tunnel_name(TUNNEL_IPS[peer])]

    def tap(self, vm: str) -> int:
        port = self.ports[vm]
        return self.graph.ofports(port.binding_host)[tap_name(port.id)]

    def gw_port(self):
        r = self.graph.get("router", self.router.id)
        return self.graph.port(r.gw_port_id)

    @property
    def gw_address(self) -> str:
        return self.gw_port().fixed_ips[0].ip_address

    def from_vm(self, vm: str, dst: str = OUTSIDE) -> dict:
        port = self.ports[vm]
        return {"in_port": self.tap(vm), "eth_src": port.mac_address, "eth_dst": self.router_mac,
                "eth_type": 0x0800, "ipv4_src": port.fixed_ips[0].ip_address, "ipv4_dst": dst, "nw_ttl": 64,
                "ip_proto": 1, "icmpv4_type": 8, "icmpv4_code": 0}


def report_ports(topo: Topology) -> None:
    """Every switch reports its taps, overlay and provider ports and its gateway tunnels."""
    for n, hv in enumerate(("hv1", "hv2", "gw1", "gw2")):
        taps = {tap_name(p.id): 10 + i for i, p in enumerate(topo.graph.ports_on(hv))}
        tunnels = {name: 40 + i for i, name in enumerate(sorted(tunnel_ports(topo.graph, hv)))}
        topo.set_live_ofports(hv, {"tf-vxlan": VXLAN, "tf-geneve": 2, "phy-physnet1": PATCH, **taps, **tunnels})
        assert n == 0 or tunnels


def build(tmp_path: Path, snat: bool = True, gateway: bool = True, v6: bool = False) -> Cloud:
    topo = Topology(str(tmp_path / "gw.sqlite"))
    for i, (name, ip) in enumerate(TUNNEL_IPS.items(), start=1):
        topo.register_hypervisor({"name": name, "datapath_id": i, "tunnel_ip": ip,
                                  "bridge_mappings": {"physnet1": "br-phys"},
                                  "gateway_for": ["physnet1"] if name.startswith("gw") else []})
    ext = topo.create_network({"name": "ext", "router:external": True, "provider:network_type": "flat",
                               "provider:physical_network": "physnet1"})
    ext4 = topo.create_subnet({"network_id": ext.id, "cidr": "203.0.113.0/24", "gateway_ip": EXT_GW, "ip_version": 4})
    ext6 = topo.create_subnet({"network_id": ext.id, "cidr": "2001:db8:ee::/64", "gateway_ip": EXT6_GW,
                               "ip_version": 6}) if v6 else None
    net = topo.create_network({"name": "n1"})
    sub = topo.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24", "ip_version": 4})
    sub6 = topo.create_subnet({"network_id": net.id, "cidr": "2001:db8:10::/64", "ip_version": 6}) if v6 else None
    info = {"network_id": ext.id, "enable_snat": snat}
    if ext6 is not None:
        info["external_fixed_ips"] = [{"subnet_id": ext4.id}, {"subnet_id": ext6.id}]
    router = topo.create_router({"name": "r1", **({"external_gateway_info": info} if gateway else {})})
    iface = topo.add_router_interface(router.id, {"subnet_id": sub.id})
    if sub6 is not None:
        topo.add_router_interface(router.id, {"subnet_id": sub6.id})
    six = [{"subnet_id": sub6.id}] if sub6 is not None else []
    ports = {vm: topo.create_port({"network_id": net.id, "binding:host_id": hv,
                                   "fixed_ips": [{"ip_address": ip}, *six],
                                   "port_security_enabled": False, "security_groups": []})
             for vm, hv, ip in (("v1", "hv1", "10.0.0.10"), ("v2", "hv2", "10.0.0.11"))}
    report_ports(topo)
    if gateway:
        topo.create_floatingip({"floating_network_id": ext.id, "port_id": ports["v2"].id})
    return Cloud(topo, topo.graph.get("router", router.id), ports, topo.graph.port(iface["port_id"]).mac_address)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = build(tmp_path)
    yield c
    c.topo.close()


def outside(**fields) -> dict:
    return {"in_port": PATCH, "eth_src": OUTSIDE_MAC, **fields}


def arp(op: int, spa: str, tpa: str, eth_dst: str = "ff:ff:ff:ff:ff:ff") -> dict:
    return {"eth_type": 0x0806, "eth_dst": eth_dst, "arp_op": op, "arp_spa": spa, "arp_tpa": tpa,
            "arp_sha": OUTSIDE_MAC}


def test_the_router_is_scheduled_on_both_gateways(cloud: Cloud) -> None:
    assert cloud.router.gateway_hosts == ("gw1", "gw2")


def test_a_vm_without_floating_ip_goes_to_the_first_live_gateway(cloud: Cloud) -> None:
    pipe = cloud.pipeline("hv1")
    (port, out), = pipe.run(cloud.from_vm("v1")).outputs
    assert port == cloud.tg("hv1", "gw1") and out["tunnel_id"] == cloud.router.key
    assert out["ipv4_src"] == "10.0.0.10" and out["nw_ttl"] == 63  # routed here, not NATed here
    assert pipe.run(cloud.from_vm("v1"), dead_ports={cloud.tg("hv1", "gw1")}).ports == [cloud.tg("hv1", "gw2")]
    assert pipe.run(cloud.from_vm("v1"), dead_ports={cloud.tg("hv1", "gw1"), cloud.tg("hv1", "gw2")}).ports == []


def test_floating_ip_traffic_stays_on_its_own_hypervisor(cloud: Cloud) -> None:
    pipe = cloud.pipeline("hv2")
    assert pipe.run(cloud.from_vm("v2")).ports == [CONTROLLER]  # its next hop's MAC not learned yet: never a tunnel
    fip = next(iter(cloud.graph.records("fip")))
    pipe.run(outside(**arp(2, EXT_GW, fip.floating_ip_address, eth_dst=cloud.graph.port(fip.floating_port_id)
                               .mac_address)))
    (port, out), = pipe.run(cloud.from_vm("v2")).outputs
    assert port == PATCH and out["ipv4_src"] == fip.floating_ip_address


def test_the_gateway_nats_routes_out_and_un_nats_the_reply_to_the_vm(cloud: Cloud) -> None:
    hv1, gw1 = cloud.pipeline("hv1"), cloud.pipeline("gw1")
    (_, tunnelled), = hv1.run(cloud.from_vm("v1")).outputs
    arrived = {**tunnelled, "in_port": cloud.tg("gw1", "hv1")}
    assert gw1.run(arrived).ports == [CONTROLLER]  # next hop not learned: the controller ARPs for it
    gw1.run(outside(**arp(2, EXT_GW, cloud.gw_address, eth_dst=cloud.gw_port().mac_address)))
    (port, out), = gw1.run(arrived).outputs
    assert port == PATCH
    assert out["ipv4_src"] == cloud.gw_address and out["eth_src"] == cloud.gw_port().mac_address
    assert out["eth_dst"] == OUTSIDE_MAC and out["ipv4_dst"] == OUTSIDE and out["nw_ttl"] == 62  # the SNAT hop
    reply = outside(eth_type=0x0800, eth_dst=cloud.gw_port().mac_address, ipv4_src=OUTSIDE,
                    ipv4_dst=cloud.gw_address, nw_ttl=64, ip_proto=1, icmpv4_type=0, icmpv4_code=0)
    (port, back), = gw1.run(reply).outputs
    assert port == VXLAN and back["tun_ipv4_dst"] == TUNNEL_IPS["hv1"]
    assert back["ipv4_dst"] == "10.0.0.10" and back["eth_dst"] == cloud.ports["v1"].mac_address
    net = cloud.graph.network(cloud.ports["v1"].network_id)
    assert back["tunnel_id"] == net.segmentation_id
    # what nobody asked for is dropped: the gateway address is no way in
    assert gw1.run({**reply, "ipv4_src": "192.0.2.200"}).outputs == []
    assert snat_zone(cloud.router) & 0x8000


def test_only_the_active_gateway_answers_arp_for_the_gateway_address(cloud: Cloud) -> None:
    request = outside(**arp(1, EXT_GW, cloud.gw_address))
    (port, answer), = cloud.pipeline("gw1").run(request).outputs
    assert port == PATCH and answer["arp_op"] == 2 and answer["arp_spa"] == cloud.gw_address
    assert answer["arp_sha"] == cloud.gw_port().mac_address and answer["eth_dst"] == OUTSIDE_MAC
    gw2 = cloud.pipeline("gw2")
    assert gw2.run(request).outputs == [], "gw1 is alive: gw2 stays silent"
    (port, answer), = gw2.run(request, dead_ports={cloud.tg("gw2", "gw1")}).outputs
    assert answer["arp_spa"] == cloud.gw_address
    assert cloud.pipeline("hv1").run(request).outputs == [], "a compute never answers for it"


def test_the_operator_moving_the_router_moves_everything(cloud: Cloud) -> None:
    cloud.topo.update_router(cloud.router.id, {"gateway_hypervisors": ["gw2", "gw1"]})
    assert cloud.pipeline("hv1").run(cloud.from_vm("v1")).ports == [cloud.tg("hv1", "gw2")]
    request = outside(**arp(1, EXT_GW, cloud.gw_address))
    assert cloud.pipeline("gw1").run(request).outputs == []
    assert len(cloud.pipeline("gw2").run(request).outputs) == 1


def test_enable_snat_false_drops_what_has_no_floating_ip(tmp_path: Path) -> None:
    cloud = build(tmp_path, snat=False)
    try:
        assert cloud.pipeline("hv1").run(cloud.from_vm("v1")).outputs == []
        arrived = {**cloud.from_vm("v1"), "in_port": cloud.tg("gw1", "hv1"), "tunnel_id": cloud.router.key}
        assert cloud.pipeline("gw1").run(arrived).outputs == []
        # the gateway address still lives on the active gateway
        assert len(cloud.pipeline("gw1").run(outside(**arp(1, EXT_GW, cloud.gw_address))).outputs) == 1
    finally:
        cloud.topo.close()


def test_a_router_without_gateway_keeps_its_vms_inside(tmp_path: Path) -> None:
    cloud = build(tmp_path, gateway=False)
    try:
        assert cloud.router.gateway_hosts == ()
        assert cloud.pipeline("hv1").run(cloud.from_vm("v1")).outputs == []
        assert not [f for f in compile_hypervisor(cloud.graph, "gw1") if f.table_id in (12, 13) and f.priority]
    finally:
        cloud.topo.close()


def test_every_bucket_runs_as_written(cloud: Cloud) -> None:
    """OVS runs a bucket as an action set: the simulator's lint says where that would differ."""
    for hv in TUNNEL_IPS:
        assert lint(compile_hypervisor(cloud.graph, hv)) == [], hv


def test_ipv6_leaves_from_its_own_hypervisor_and_returns_through_the_active_gateway(tmp_path: Path) -> None:
    cloud = build(tmp_path, v6=True)
    try:
        graph, v1 = cloud.graph, cloud.ports["v1"]
        vm6 = next(f.ip_address for f in v1.fixed_ips if ":" in f.ip_address)
        gw6 = next(f.ip_address for f in cloud.gw_port().fixed_ips if ":" in f.ip_address)
        six = {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 128, "icmpv6_code": 0, "nw_ttl": 64}
        hv1 = cloud.pipeline("hv1")
        out = {"in_port": cloud.tap("v1"), "eth_src": v1.mac_address, "eth_dst": cloud.router_mac,
               "ipv6_src": vm6, "ipv6_dst": OUTSIDE6, **six}
        assert hv1.run(out).ports == [CONTROLLER]  # next hop unknown: the controller solicits it
        na = outside(eth_type=0x86DD, eth_dst="33:33:00:00:00:01", ipv6_src=EXT6_GW, ipv6_dst="ff02::1",
                     ip_proto=58, icmpv6_type=136, icmpv6_code=0, ipv6_nd_target=EXT6_GW)
        hv1.run(na)
        (port, sent), = hv1.run(out).outputs
        assert port == PATCH and sent["ipv6_src"] == vm6 and sent["eth_dst"] == OUTSIDE_MAC
        assert sent["eth_src"] == dvr_mac(graph.hypervisor("hv1"))  # never the router's MAC from many hosts
        ns = outside(eth_type=0x86DD, eth_dst="33:33:ff:00:00:0a", ipv6_src=EXT6_GW, ipv6_dst="ff02::1:ff00:a",
                     ip_proto=58, icmpv6_type=135, icmpv6_code=0, ipv6_nd_target=gw6, nw_ttl=255)
        (port, answer), = cloud.pipeline("gw1").run(ns).outputs
        assert port == PATCH and answer["icmpv6_type"] == 136 and answer["ipv6_nd_tll"] == cloud.gw_port().mac_address
        assert cloud.pipeline("gw2").run(ns).outputs == []  # gw1 alive: gw2 stays silent
        assert len(cloud.pipeline("gw2").run(ns, dead_ports={cloud.tg("gw2", "gw1")}).outputs) == 1
        back = outside(eth_dst=cloud.gw_port().mac_address, ipv6_src=OUTSIDE6, ipv6_dst=vm6,
                       **{**six, "icmpv6_type": 129})
        (port, routed), = cloud.pipeline("gw1").run(back).outputs
        assert port == VXLAN and routed["tun_ipv4_dst"] == TUNNEL_IPS["hv1"] and routed["ipv6_dst"] == vm6
        assert cloud.pipeline("gw1").run({**back, "ipv6_dst": gw6}).outputs == []  # not a way around
    finally:
        cloud.topo.close()


def test_a_gateway_cut_off_from_every_compute_stops_answering(cloud: Cloud) -> None:
    """The underlay cut on gw1 (its external link still up): its BFD to every compute is down, so it
    goes silent for the gateway address, while gw2, which lost gw1 too, takes over."""
    request = outside(**arp(1, EXT_GW, cloud.gw_address))
    cut = {cloud.tg("gw1", "hv1"), cloud.tg("gw1", "hv2"), cloud.tg("gw1", "gw2")}
    assert cloud.pipeline("gw1").run(request, dead_ports=cut).outputs == []
    assert len(cloud.pipeline("gw1").run(request, dead_ports={cloud.tg("gw1", "hv1")}).outputs) == 1  # hv2 left
    assert len(cloud.pipeline("gw2").run(request, dead_ports={cloud.tg("gw2", "gw1")}).outputs) == 1
