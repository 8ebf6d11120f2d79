"""IPv6 router advertisements from the controller: which ports solicit it (simulated pipeline), what it
advertises per ipv6_ra_mode, and the frames (built by controller.ra, parsed by scapy)."""

from __future__ import annotations

from dataclasses import replace

import netaddr
import pytest
from scapy.layers.inet6 import (
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether

from controller import ra
from flows.dhcp import HYPERVISOR_METER, port_meter
from flows.flow import CONTROLLER
from tests.topo_builders import Built, abc, delivered_labels, fabric_of, send
from topology.model import FixedIP, Port, Subnet
from topology.model_l3 import ROUTER_INTERFACE

ROUTER_MAC = "fa:16:3e:00:00:fe"
PREFIX = "2001:db8:1::/64"


def cloud(mode: str | None = "slaac", router: bool = True, address_mode: str | None = None) -> Built:
    """hv0: a, b; hv1: c; one network with an IPv4 subnet and the IPv6 subnet PREFIX in ``mode``."""
    built = abc()
    net, graph = built.networks["n"], built.graph
    attrs = {"ipv6_ra_mode": mode, "ipv6_address_mode": address_mode or mode}
    graph.put_subnet(Subnet(id="v6", network_id=net.id, project_id=net.project_id, cidr=PREFIX, ip_version=6,
                            gateway_ip="2001:db8:1::1", attrs={k: v for k, v in attrs.items() if v}))
    for label, port in list(built.ports.items()):
        eui = str(netaddr.EUI(port.mac_address).ipv6(netaddr.IPNetwork(PREFIX).network))
        built.ports[label] = replace(port, fixed_ips=(FixedIP("v6", eui),))
        graph.put_port(built.ports[label])
    if router:
        graph.put_port(Port(id="router-if", network_id=net.id, project_id=net.project_id, key=99,
                            mac_address=ROUTER_MAC, fixed_ips=(FixedIP("v6", "2001:db8:1::1"),),
                            device_owner=ROUTER_INTERFACE, device_id="r1"))
    return built


def solicitation(built: Built, label: str, from_unspecified: bool = False) -> dict:
    port = built.ports[label]
    src = "::" if from_unspecified else str(netaddr.EUI(port.mac_address).ipv6_link_local())
    return {"eth_type": 0x86DD, "eth_dst": "33:33:00:00:00:02", "ipv6_src": src, "ipv6_dst": "ff02::2",
            "ip_proto": 58, "icmpv6_type": 133, "nw_ttl": 255}


# -- the pipeline -----------------------------------------------------------------------------
@pytest.mark.parametrize("unspecified", [False, True])
def test_a_solicitation_goes_to_the_controller_only(unspecified: bool) -> None:
    built = cloud()
    result = send(fabric_of(built.graph), built, "a", **solicitation(built, "a", unspecified))
    assert [(d.hv, d.port) for d in result.deliveries] == [("hv0", str(CONTROLLER))]
    # through the port's meter (the one its DHCP requests pass too), then the hypervisor's
    assert result.walks[0][1].meters == [port_meter(built.ports["a"]), HYPERVISOR_METER]


def test_without_an_ra_mode_solicitations_go_to_the_network() -> None:
    """An outside router may be the one advertising (only ipv6_address_mode set): it must hear them."""
    built = cloud(mode=None, address_mode="slaac")
    result = send(fabric_of(built.graph), built, "a", **solicitation(built, "a"))
    assert delivered_labels(built, result) == ["b", "c"]
    assert ra.adverts_for(built.graph, built.ports["a"]) == []


# -- what is advertised ---------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "managed", "other", "autonomous"), [
    ("slaac", False, False, True), ("dhcpv6-stateless", False, True, True), ("dhcpv6-stateful", True, False, False)])
def test_advert_by_mode(mode: str, managed: bool, other: bool, autonomous: bool) -> None:
    built = cloud(mode)
    assert ra.adverts_for(built.graph, built.ports["a"]) == [ra.Advert(
        router_mac=ROUTER_MAC, router_lla="fe80::f816:3eff:fe00:fe", managed=managed, other=other,
        prefixes=((PREFIX, autonomous),), mtu=1450)]


def test_no_router_no_advert() -> None:
    built = cloud(router=False)
    assert ra.adverts_for(built.graph, built.ports["a"]) == []
    assert ra.answer_solicitation(bytes(Ether() / IPv6() / ICMPv6ND_RS()), []) == []


@pytest.mark.parametrize("mode", ["slaac", "dhcpv6-stateful"])
def test_the_advertisement_frame(mode: str) -> None:
    built = cloud(mode)
    (advert,) = ra.adverts_for(built.graph, built.ports["a"])
    frame = Ether(ra.router_advert(advert))
    assert (frame.src, frame.dst, frame[IPv6].src, frame[IPv6].dst, frame[IPv6].hlim) == (
        ROUTER_MAC, "33:33:00:00:00:01", "fe80::f816:3eff:fe00:fe", "ff02::1", 255)
    adv = frame[ICMPv6ND_RA]
    assert (adv.M, adv.O, adv.routerlifetime, adv.chlim) == (mode == "dhcpv6-stateful", 0, 1800, 64)
    assert frame[ICMPv6NDOptSrcLLAddr].lladdr == ROUTER_MAC and frame[ICMPv6NDOptMTU].mtu == 1450
    pi = frame[ICMPv6NDOptPrefixInfo]
    assert (pi.prefix, pi.prefixlen, pi.L, pi.A) == ("2001:db8:1::", 64, 1, mode == "slaac")
    assert (pi.validlifetime, pi.preferredlifetime) == (ra.VALID_LIFETIME, ra.PREFERRED_LIFETIME)
    assert frame[ICMPv6ND_RA].cksum == Ether(bytes(frame))[ICMPv6ND_RA].cksum  # (scapy recomputes: equal)


def test_a_solicitation_is_answered_to_the_solicitor_or_to_all_nodes() -> None:
    built = cloud()
    adverts = ra.adverts_for(built.graph, built.ports["a"])
    mac = built.ports["a"].mac_address
    lla = str(netaddr.EUI(mac).ipv6_link_local())
    (unicast,) = ra.answer_solicitation(bytes(Ether(src=mac, dst="33:33:00:00:00:02") / IPv6(src=lla, dst="ff02::2")
                                              / ICMPv6ND_RS()), adverts)
    assert (Ether(unicast).dst, Ether(unicast)[IPv6].dst) == (mac, lla)
    (multicast,) = ra.answer_solicitation(bytes(Ether(src=mac, dst="33:33:00:00:00:02") / IPv6(src="::", dst="ff02::2")
                                                / ICMPv6ND_RS()), adverts)
    assert (Ether(multicast).dst, Ether(multicast)[IPv6].dst) == ("33:33:00:00:00:01", "ff02::1")
    assert ra.answer_solicitation(b"\x00" * 30, adverts) == []


def test_interval_is_jittered_within_bounds() -> None:
    import random

    rng = random.Random(7)
    draws = [ra.next_interval(rng) for _ in range(200)]
    assert min(draws) >= ra.INTERVAL[0] and max(draws) <= ra.INTERVAL[1] and len(set(draws)) == 200
