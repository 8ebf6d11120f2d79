"""Floating-IP NAT on the simulated pipeline: behaviour, not flow text (issue #5).

The real :class:`topology.state.Topology` (a temporary SQLite file) is driven as
the API drives it: an external flat (or VLAN) network on physnet1 with
203.0.113.0/24 (gateway .1), a tenant network 10.0.0.0/24 behind router r1 whose
gateway is on it, VMs v1 (hv1) and v2 (hv2) with floating IPs and v3 (hv2) without.
Each hypervisor's compiled flows are walked with packets entering from its
provider patch port (the outside world) or a VM's tap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.switch import learned_cookies
from flows.compiler import compile_hypervisor, view_of
from flows.flow import CONTROLLER, Learn, make_flow
from flows.nat import LEARNED_IDLE_TIMEOUT, NEXT_HOP_METER, announcements, learned_cookie
from flows.pipeline import STAGE_BY_NAME, PipelineError
from flows.simulate import Pipeline
from topology.model import tap_name
from topology.state import Topology

EXT_GW = "203.0.113.1"
OUTSIDE_MAC = "00:00:5e:00:53:01"
PATCH = 3  # phy-physnet1's OpenFlow port on every hypervisor
MAC_BINDING = STAGE_BY_NAME["lr_in_mac_binding"].table_id


@dataclass
class Cloud:
    topo: Topology
    ext: object
    ports: dict[str, object]
    fips: dict[str, object]
    router_mac: str

    def pipeline(self, hv: str) -> Pipeline:
        return Pipeline(compile_hypervisor(self.topo.graph, hv))

    def ofport(self, vm: str) -> int:
        return self.topo.graph.ofports(self.ports[vm].binding_host)[tap_name(self.ports[vm].id)]

    def fip_mac(self, vm: str) -> str:
        return self.topo.graph.port(self.fips[vm].floating_port_id).mac_address

    def fip_ip(self, vm: str) -> str:
        return self.fips[vm].floating_ip_address


def _cloud(tmp_path: Path, ext_type: str = "flat") -> Cloud:
    topo = Topology(str(tmp_path / "nat.sqlite"))
    for i in (1, 2, 3):
        topo.register_hypervisor({"name": f"hv{i}", "datapath_id": i, "tunnel_ip": f"192.0.2.{i}",
                                  "bridge_mappings": {"physnet1": "br-phys"}})
    provider = {"provider:network_type": ext_type, "provider:physical_network": "physnet1"}
    if ext_type == "vlan":
        provider["provider:segmentation_id"] = 300
    ext = topo.create_network({"name": "ext", "router:external": True, **provider})
    topo.create_subnet({"network_id": ext.id, "cidr": "203.0.113.0/24", "gateway_ip": EXT_GW, "ip_version": 4})
    net = topo.create_network({"name": "n1"})
    sub = topo.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24", "ip_version": 4})
    router = topo.create_router({"name": "r1", "external_gateway_info": {"network_id": ext.id}})
    info = topo.add_router_interface(router.id, {"subnet_id": sub.id})
    ports = {}
    for vm, hv, ip in (("v1", "hv1", "10.0.0.10"), ("v2", "hv2", "10.0.0.11"), ("v3", "hv2", "10.0.0.12")):
        ports[vm] = topo.create_port({"network_id": net.id, "binding:host_id": hv,
                                      "fixed_ips": [{"ip_address": ip}], "port_security_enabled": False,
                                      "security_groups": []})
    for i in (1, 2, 3):
        taps = {tap_name(p.id): 10 + n for n, p in enumerate(ports.values()) if p.binding_host == f"hv{i}"}
        topo.set_live_ofports(f"hv{i}", {"tf-vxlan": 1, "tf-geneve": 2, "phy-physnet1": PATCH, **taps})
    fips = {vm: topo.create_floatingip({"floating_network_id": ext.id, "port_id": ports[vm].id})
            for vm in ("v1", "v2")}
    return Cloud(topo, ext, ports, fips, topo.graph.port(info["port_id"]).mac_address)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = _cloud(tmp_path)
    yield c
    c.topo.close()


def from_outside(cloud: Cloud, **fields) -> dict:
    return {"in_port": PATCH, "eth_src": OUTSIDE_MAC, **fields}


def arp(op: int, spa: str, tpa: str, sha: str = OUTSIDE_MAC, eth_dst: str = "ff:ff:ff:ff:ff:ff") -> dict:
    return {"eth_type": 0x0806, "eth_dst": eth_dst, "arp_op": op, "arp_spa": spa, "arp_tpa": tpa, "arp_sha": sha}


def test_only_the_hosting_hypervisor_holds_a_floating_ip(cloud: Cloud) -> None:
    ip = cloud.fip_ip("v1")
    holders = [hv for hv in ("hv1", "hv2", "hv3")
               if any(ip in repr(f.match) + repr(f.actions) for f in compile_hypervisor(cloud.topo.graph, hv))]
    assert holders == ["hv1"]
    assert not [f for f in compile_hypervisor(cloud.topo.graph, "hv3") if f.table_id == MAC_BINDING and f.priority]


def test_arp_for_a_floating_ip_is_answered_by_its_host_with_its_own_mac(cloud: Cloud) -> None:
    ip = cloud.fip_ip("v1")
    request = from_outside(cloud, **arp(1, EXT_GW, ip))
    pipe = cloud.pipeline("hv1")
    res = pipe.run(request)
    (port, reply), = res.outputs
    assert port == PATCH  # back out of the provider port it came from (IN_PORT)
    assert reply["arp_op"] == 2 and reply["arp_spa"] == ip and reply["arp_sha"] == cloud.fip_mac("v1")
    assert reply["eth_dst"] == OUTSIDE_MAC and reply["arp_tha"] == OUTSIDE_MAC
    # ...and the asker's MAC is learned for the way out
    (learned,) = [f for f in pipe.tables[MAC_BINDING] if f.priority]
    assert dict(learned.match)["reg0"] == int.from_bytes(bytes(int(x) for x in EXT_GW.split(".")), "big")
    assert learned.cookie == learned_cookie(cloud.ext)
    # hv2 hosts another floating IP on the same network and stays silent
    assert cloud.pipeline("hv2").run(request).outputs == []
    # the MACs of the two floating IPs differ (never shared between hosts)
    assert cloud.fip_mac("v1") != cloud.fip_mac("v2")


def test_a_gratuitous_arp_for_the_floating_ip_is_never_answered(cloud: Cloud) -> None:
    # What the new host sends after a move: answering it would pull the external switch's entry back here.
    ip, mac = cloud.fip_ip("v1"), cloud.fip_mac("v1")
    pipe = cloud.pipeline("hv1")
    assert pipe.run(from_outside(cloud, **arp(1, ip, ip, sha=mac))).outputs == []
    assert not [f for f in pipe.tables[MAC_BINDING] if f.priority]  # and nothing learned from it


def test_inbound_is_dnated_routed_and_delivered_to_the_vm(cloud: Cloud) -> None:
    pkt = from_outside(cloud, eth_type=0x0800, eth_dst=cloud.fip_mac("v1"), ipv4_src="198.51.100.7",
                       ipv4_dst=cloud.fip_ip("v1"), nw_ttl=50)
    (port, out), = cloud.pipeline("hv1").run(pkt).outputs
    assert port == cloud.ofport("v1")
    assert out["ipv4_dst"] == "10.0.0.10" and out["ipv4_src"] == "198.51.100.7" and out["nw_ttl"] == 49
    assert out["eth_dst"] == cloud.ports["v1"].mac_address and out["eth_src"] == cloud.router_mac
    # to the right address but another MAC (not ours): dropped
    assert cloud.pipeline("hv1").run({**pkt, "eth_dst": "fa:16:3e:00:00:99"}).outputs == []


def test_outbound_leaves_from_the_floating_ip_once_the_next_hop_is_learned(cloud: Cloud) -> None:
    pipe = cloud.pipeline("hv1")
    vm_pkt = {"in_port": cloud.ofport("v1"), "eth_src": cloud.ports["v1"].mac_address, "eth_dst": cloud.router_mac,
              "eth_type": 0x0800, "ipv4_src": "10.0.0.10", "ipv4_dst": "8.8.8.8", "nw_ttl": 64}
    # Not learned yet: to the controller (which ARPs for the gateway), through the hypervisor's meter; nothing
    # on the wire.
    first = pipe.run(vm_pkt)
    assert first.ports == [CONTROLLER] and first.meters == [NEXT_HOP_METER]
    assert pipe.run(vm_pkt, spent_meters={NEXT_HOP_METER.meter_id}).outputs == []
    pipe.run(from_outside(cloud, **arp(2, EXT_GW, cloud.fip_ip("v1"), eth_dst=cloud.fip_mac("v1"))))
    (port, out), = pipe.run(vm_pkt).outputs
    assert port == PATCH
    assert out["ipv4_src"] == cloud.fip_ip("v1") and out["eth_src"] == cloud.fip_mac("v1")
    assert out["eth_dst"] == OUTSIDE_MAC and out["ipv4_dst"] == "8.8.8.8" and out["nw_ttl"] == 63
    # on-link destination on the external subnet: next hop is the destination itself
    on_link = {**vm_pkt, "ipv4_dst": "203.0.113.50"}
    assert pipe.run(on_link).ports == [CONTROLLER]
    pipe.run(from_outside(cloud, **arp(1, "203.0.113.50", cloud.fip_ip("v1"), sha="00:00:5e:00:53:32")))
    assert [o["eth_dst"] for _, o in pipe.run(on_link).outputs] == ["00:00:5e:00:53:32"]


def test_a_gratuitous_arp_from_the_gateway_updates_its_mac(cloud: Cloud) -> None:
    pipe = cloud.pipeline("hv1")
    pipe.run(from_outside(cloud, **arp(1, EXT_GW, EXT_GW, sha="00:00:5e:00:53:aa")))
    (learned,) = [f for f in pipe.tables[MAC_BINDING] if f.priority]
    assert [a.value for a in learned.actions] == [int("00005e0053aa", 16)]


def test_a_vm_without_floating_ip_never_reaches_the_external_network(cloud: Cloud) -> None:
    pipe = cloud.pipeline("hv2")
    pipe.run(from_outside(cloud, **arp(2, EXT_GW, cloud.fip_ip("v2"), eth_dst=cloud.fip_mac("v2"))))
    pkt = {"in_port": cloud.ofport("v3"), "eth_src": cloud.ports["v3"].mac_address, "eth_dst": cloud.router_mac,
           "eth_type": 0x0800, "ipv4_src": "10.0.0.12", "ipv4_dst": "8.8.8.8", "nw_ttl": 64}
    assert pipe.run(pkt).outputs == []
    # ...and not by spoofing the address of v2, which has one: the SNAT matches the in-port too
    assert pipe.run({**pkt, "ipv4_src": "10.0.0.11"}).outputs == []


def test_hairpin_to_its_own_floating_ip_stays_on_the_hypervisor(cloud: Cloud) -> None:
    pkt = {"in_port": cloud.ofport("v1"), "eth_src": cloud.ports["v1"].mac_address, "eth_dst": cloud.router_mac,
           "eth_type": 0x0800, "ipv4_src": "10.0.0.10", "ipv4_dst": cloud.fip_ip("v1"), "nw_ttl": 64}
    (port, out), = cloud.pipeline("hv1").run(pkt).outputs
    assert port == cloud.ofport("v1")  # back into the very port it came from
    assert out["ipv4_src"] == cloud.fip_ip("v1") and out["ipv4_dst"] == "10.0.0.10"


def test_vlan_external_network_tags_every_frame(tmp_path: Path) -> None:
    cloud = _cloud(tmp_path, "vlan")
    pipe = cloud.pipeline("hv1")
    ip = cloud.fip_ip("v1")
    (port, reply), = pipe.run(from_outside(cloud, vlan_vid=300, **arp(1, EXT_GW, ip))).outputs
    assert reply["vlan_vid"] == 300 and reply["arp_spa"] == ip
    assert pipe.run(from_outside(cloud, **arp(1, EXT_GW, ip))).outputs == []  # untagged: not this network
    inbound = from_outside(cloud, vlan_vid=300, eth_type=0x0800, eth_dst=cloud.fip_mac("v1"),
                           ipv4_src="198.51.100.7", ipv4_dst=ip)
    (port, out), = pipe.run(inbound).outputs
    assert port == cloud.ofport("v1") and "vlan_vid" not in out
    vm_pkt = {"in_port": cloud.ofport("v1"), "eth_src": cloud.ports["v1"].mac_address,
              "eth_dst": cloud.router_mac, "eth_type": 0x0800, "ipv4_src": "10.0.0.10", "ipv4_dst": "8.8.8.8",
              "nw_ttl": 64}
    (port, out), = pipe.run(vm_pkt).outputs
    assert port == PATCH and out["vlan_vid"] == 300 and out["ipv4_src"] == ip
    cloud.topo.close()


def test_move_and_disassociate_follow_the_port(cloud: Cloud) -> None:
    ip = cloud.fip_ip("v1")
    graph = cloud.topo.graph
    assert [a.ip for a in announcements(graph, view_of(graph, "hv1"))] == [ip]
    cloud.topo.update_floatingip(cloud.fips["v1"].id, {"port_id": cloud.ports["v3"].id})
    assert not any(ip in repr(f) for f in compile_hypervisor(graph, "hv1"))
    assert ip in [a.ip for a in announcements(graph, view_of(graph, "hv2"))]
    inbound = from_outside(cloud, eth_type=0x0800, eth_dst=cloud.fip_mac("v1"), ipv4_src="198.51.100.7",
                           ipv4_dst=ip)
    (port, out), = cloud.pipeline("hv2").run(inbound).outputs
    assert port == cloud.ofport("v3") and out["ipv4_dst"] == "10.0.0.12"
    # The learned neighbours stay while a floating IP of that network is hosted, and go with the last one.
    assert learned_cookies(compile_hypervisor(graph, "hv2")) == {learned_cookie(cloud.ext)}
    assert learned_cookies(compile_hypervisor(graph, "hv1")) == set()
    for fip in cloud.fips.values():
        cloud.topo.update_floatingip(fip.id, {"port_id": None})
    for hv in ("hv1", "hv2", "hv3"):
        flows = compile_hypervisor(graph, hv)
        assert not any(ip in repr(f) for f in flows) and learned_cookies(flows) == set()


def test_learn_actions_may_only_write_switch_owned_stages() -> None:
    learn = _learn_into("lr_in_mac_binding")
    make_flow(STAGE_BY_NAME["ext_in_fip"], "arp_learn", {"eth_type": 0x0806}, [learn])
    with pytest.raises(PipelineError, match="not a switch-owned stage"):
        make_flow(STAGE_BY_NAME["ext_in_fip"], "arp_learn", {"eth_type": 0x0806}, [_learn_into("ls_in_l2_lookup")])
    with pytest.raises(PipelineError, match="does not name"):
        make_flow(STAGE_BY_NAME["ext_in_fip"], "arp_learn", {"eth_type": 0x0806},
                  [Learn("lr_in_mac_binding", 100, LEARNED_IDLE_TIMEOUT, 1, (("reg6", "reg6"),), ())])


def _learn_into(name: str) -> Learn:
    table = STAGE_BY_NAME[name].table_id
    return Learn(name, 100, LEARNED_IDLE_TIMEOUT, table << 56 | 7, (("reg6", "reg6"),), (("arp_sha", "eth_dst"),))


def test_an_extra_default_route_replaces_the_gateways_own(cloud: Cloud) -> None:
    def default_routes() -> list:
        return [f for f in compile_hypervisor(cloud.topo.graph, "hv1")
                if f.table_id == STAGE_BY_NAME["lr_in_ip_routing"].table_id and ("ipv4_dst", (0, 0)) in f.match]

    (via_gateway,) = default_routes()
    assert ("reg0", 0xCB007101) in [(a.field, a.value) for a in via_gateway.actions if hasattr(a, "field")]
    (router,) = cloud.topo.graph.records("router")
    cloud.topo.update_router(router.id, {"routes": [{"destination": "0.0.0.0/0", "nexthop": "203.0.113.254"}]})
    (extra,) = default_routes()  # one flow for the destination, never two competing for the same match
    assert ("reg0", 0xCB0071FE) in [(a.field, a.value) for a in extra.actions if hasattr(a, "field")]
