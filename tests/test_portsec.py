"""Port security (anti-spoofing) on the simulated pipeline: what a secured port may send.

Ports here are in an "open" security group (any ingress, any egress) so that only
port security decides; the ACLs have their own tests (tests/test_acl.py).
"""

from __future__ import annotations

from dataclasses import replace

import netaddr
import pytest

from flows.compiler import compile_hypervisor
from flows.simulate import Fabric, lint
from tests.topo_builders import BROADCAST, Builder, Built, delivered_labels, fabric_of, send
from topology import graph_l3
from topology.model import FixedIP
from topology.model_l3 import SecurityGroup, SecurityGroupRule

OPEN_SG = "sg-open"


def open_group(b: Builder) -> None:
    """A group allowing everything both ways (IPv4 and IPv6)."""
    graph_l3.put_sg(b.graph, SecurityGroup(id=OPEN_SG, project_id="p", name="open"))
    for d in ("ingress", "egress"):
        for e in ("IPv4", "IPv6"):
            graph_l3.put_sg_rule(b.graph, SecurityGroupRule(id=f"open-{d}-{e}", project_id="p",
                                                            security_group_id=OPEN_SG, direction=d, ethertype=e))


@pytest.fixture
def cloud() -> Built:
    """hv0: a (secured, with an allowed pair 10.0.0.128/25 on MAC fa:16:3e:aa:aa:aa), b (secured), off (no port
    security); hv1: c (secured). One network 10.0.0.0/24 (+ IPv6 on a and b), DHCP off: a tenant's own DHCP
    server would answer there (the controller's is tests/test_dhcp.py's)."""
    b = Builder()
    b.hv(0)
    b.hv(1)
    open_group(b)
    net = b.network("n", cidr="10.0.0.0/24", dhcp=False)
    sec = {"port_security_enabled": True, "security_groups": [OPEN_SG]}
    b.port("a", net, "hv0", ip="10.0.0.10", **sec,
           allowed_address_pairs=[{"ip_address": "10.0.0.128/25", "mac_address": "fa:16:3e:aa:aa:aa"}])
    b.port("b", net, "hv0", ip="10.0.0.11", **sec)
    b.port("off", net, "hv0", ip="10.0.0.12")
    b.port("c", net, "hv1", ip="10.0.0.20", **sec)
    built = b.done()
    for label, v6 in (("a", "2001:db8::10"), ("b", "2001:db8::11")):
        p = replace(built.ports[label], fixed_ips=(*built.ports[label].fixed_ips, FixedIP("sub6", v6)))
        b.graph.put_port(p)
        built.ports[label] = p
    return built


def ip(built: Built, src: str, dst: str, **fields) -> dict:
    p, q = built.ports[src], built.ports[dst]
    return {"eth_dst": q.mac_address, "ipv4_src": p.fixed_ips[0].ip_address, "ipv4_dst": q.fixed_ips[0].ip_address,
            "ip_proto": 17, "udp_src": 5000, "udp_dst": 53, **fields}


def test_the_pipeline_lints_clean(cloud: Built) -> None:
    for hv in ("hv0", "hv1"):
        assert lint(compile_hypervisor(cloud.graph, hv)) == []


def test_own_addresses_pass_forged_ones_are_dropped(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    assert delivered_labels(cloud, send(fab, cloud, "a", **ip(cloud, "a", "b"))) == ["b"]
    assert delivered_labels(cloud, send(fab, cloud, "a", **ip(cloud, "a", "c"))) == ["c"]  # across the tunnel
    assert send(fab, cloud, "a", **ip(cloud, "a", "b", ipv4_src="10.0.0.11")).deliveries == []  # b's address
    assert send(fab, cloud, "a", **ip(cloud, "a", "b", eth_src="fa:16:3e:00:00:99")).deliveries == []
    assert send(fab, cloud, "a", **ip(cloud, "a", "b", ipv4_src="192.0.2.1")).deliveries == []


def test_allowed_address_pairs_pass_with_their_own_mac_only(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    pair = {"eth_src": "fa:16:3e:aa:aa:aa", "ipv4_src": "10.0.0.200"}
    assert delivered_labels(cloud, send(fab, cloud, "a", **ip(cloud, "a", "b", **pair))) == ["b"]
    assert send(fab, cloud, "a", **ip(cloud, "a", "b", ipv4_src="10.0.0.200")).deliveries == []  # port MAC
    assert send(fab, cloud, "a", **ip(cloud, "a", "b", **{**pair, "ipv4_src": "10.0.0.100"})).deliveries == []
    arp = {"eth_type": 0x0806, "eth_dst": BROADCAST, "arp_op": 1, "arp_sha": "fa:16:3e:aa:aa:aa",
           "arp_spa": "10.0.0.129", "arp_tpa": "10.0.0.99", "eth_src": "fa:16:3e:aa:aa:aa"}
    assert "b" in delivered_labels(cloud, send(fab, cloud, "a", **arp))


def _arp(built: Built, src: str, **fields) -> dict:
    p = built.ports[src]
    return {"eth_type": 0x0806, "eth_dst": BROADCAST, "arp_op": 1, "arp_sha": p.mac_address,
            "arp_spa": p.fixed_ips[0].ip_address, "arp_tpa": "10.0.0.99", **fields}


def test_arp_with_a_forged_sender_is_dropped(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    assert delivered_labels(cloud, send(fab, cloud, "a", **_arp(cloud, "a"))) == ["b", "c", "off"]
    assert send(fab, cloud, "a", **_arp(cloud, "a", arp_spa="10.0.0.11")).deliveries == []  # b's address
    assert send(fab, cloud, "a", **_arp(cloud, "a", arp_sha="fa:16:3e:00:00:99")).deliveries == []
    # A probe (sender 0.0.0.0) is what a booting guest sends: it passes.
    assert delivered_labels(cloud, send(fab, cloud, "a", **_arp(cloud, "a", arp_spa="0.0.0.0"))) == ["b", "c", "off"]
    # The ARP responder still answers a secured port's request for a known address.
    res = send(fab, cloud, "a", **_arp(cloud, "a", arp_tpa="10.0.0.11"))
    assert [(d.port, d.packet["arp_op"]) for d in res.deliveries] == [(cloud.ports["a"].ofport_name, 2)]


def test_dhcp_request_passes_dhcp_server_replies_from_a_guest_do_not(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    discover = {"eth_dst": BROADCAST, "ipv4_src": "0.0.0.0", "ipv4_dst": "255.255.255.255", "ip_proto": 17,
                "udp_src": 68, "udp_dst": 67}
    assert delivered_labels(cloud, send(fab, cloud, "a", **discover)) == ["b", "c", "off"]
    offer = {**ip(cloud, "a", "b"), "udp_src": 67, "udp_dst": 68}
    assert send(fab, cloud, "a", **offer).deliveries == []
    assert delivered_labels(cloud, send(fab, cloud, "off", **{**offer, "ipv4_src": "10.0.0.12"})) == ["b"]


def _icmp6(built: Built, src: str, icmp_type: int, **fields) -> dict:
    p = built.ports[src]
    return {"eth_type": 0x86DD, "eth_dst": "33:33:00:00:00:01", "ipv6_src": p.fixed_ips[-1].ip_address,
            "ipv6_dst": "ff02::1", "ip_proto": 58, "icmpv6_type": icmp_type, "nw_ttl": 255, **fields}


def test_router_advertisements_redirects_and_foreign_neighbour_advertisements_are_dropped(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    assert send(fab, cloud, "a", **_icmp6(cloud, "a", 134)).deliveries == []  # RA
    assert send(fab, cloud, "a", **_icmp6(cloud, "a", 137)).deliveries == []  # redirect
    assert send(fab, cloud, "a", **_icmp6(cloud, "a", 136, ipv6_nd_target="2001:db8::11")).deliveries == []
    own = send(fab, cloud, "a", **_icmp6(cloud, "a", 136, ipv6_nd_target="2001:db8::10"))
    assert delivered_labels(cloud, own) == ["b", "c", "off"]
    own_lla = str(netaddr.EUI(cloud.ports["a"].mac_address).ipv6_link_local())
    link_local = send(fab, cloud, "a", **_icmp6(cloud, "a", 136, ipv6_src=own_lla, ipv6_nd_target=own_lla))
    assert delivered_labels(cloud, link_local) == ["b", "c", "off"]
    # ...but not for another link-local address (a neighbour's, or the router's)
    assert send(fab, cloud, "a", **_icmp6(cloud, "a", 136, ipv6_src=own_lla, ipv6_nd_target="fe80::1")).deliveries == []
    # Port security off: a router advertisement goes through.
    assert delivered_labels(cloud, send(fab, cloud, "off", **_icmp6(cloud, "off", 134, ipv6_src="fe80::5"))) \
        == ["a", "b", "c"]


def test_duplicate_address_detection_and_mld_from_the_unspecified_address_pass(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    dad = _icmp6(cloud, "a", 135, ipv6_src="::", ipv6_dst="ff02::1:ff00:99", ipv6_nd_target="2001:db8::99",
                 eth_dst="33:33:ff:00:00:99")
    assert "b" in delivered_labels(cloud, send(fab, cloud, "a", **dad))
    mld = _icmp6(cloud, "a", 143, ipv6_src="::", ipv6_dst="ff02::16", eth_dst="33:33:00:00:00:16")
    assert "b" in delivered_labels(cloud, send(fab, cloud, "a", **mld))
    # Anything else from :: is not.
    assert send(fab, cloud, "a", **_icmp6(cloud, "a", 128, ipv6_src="::")).deliveries == []


def test_ipv6_from_own_global_and_own_link_local_address_only(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    b = cloud.ports["b"]
    base = {"eth_type": 0x86DD, "eth_dst": b.mac_address, "ipv6_dst": "2001:db8::11", "ip_proto": 17,
            "udp_src": 1, "udp_dst": 2}
    assert delivered_labels(cloud, send(fab, cloud, "a", **base, ipv6_src="2001:db8::10")) == ["b"]
    own_lla = str(netaddr.EUI(cloud.ports["a"].mac_address).ipv6_link_local())
    assert delivered_labels(cloud, send(fab, cloud, "a", **base, ipv6_src=own_lla)) == ["b"]
    assert send(fab, cloud, "a", **base, ipv6_src="fe80::1234").deliveries == []  # not derived from its MAC
    assert send(fab, cloud, "a", **base, ipv6_src="2001:db8::11").deliveries == []


def test_other_ethertypes_from_a_secured_port_are_dropped(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    lldp = {"eth_type": 0x88CC, "eth_dst": BROADCAST}
    assert send(fab, cloud, "a", **lldp).deliveries == []
    assert delivered_labels(cloud, send(fab, cloud, "off", **lldp)) == ["a", "b", "c"]


def test_port_security_off_lets_anything_through(cloud: Built) -> None:
    fab: Fabric = fabric_of(cloud.graph)
    forged = ip(cloud, "off", "b", eth_src="fa:16:3e:00:00:99", ipv4_src="192.0.2.1")
    assert delivered_labels(cloud, send(fab, cloud, "off", **forged)) == ["b"]
    assert delivered_labels(cloud, send(fab, cloud, "off", **_arp(cloud, "off", arp_spa="10.0.0.10"))) \
        == ["a", "b", "c"]
