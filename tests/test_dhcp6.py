"""DHCPv6 from the controller: which ports' requests go up (simulated pipeline) and every answer (built by
controller.dhcp6, parsed by scapy)."""

from __future__ import annotations

from dataclasses import replace

import netaddr
import pytest
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_InfoRequest,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from controller import dhcp6
from flows.dhcp import HYPERVISOR_METER, port_meter
from flows.flow import CONTROLLER
from tests.topo_builders import Built, abc, delivered_labels, fabric_of, send
from topology.model import FixedIP, Subnet

PREFIX, ADDRESS = "2001:db8:2::/64", "2001:db8:2::10"


def cloud(mode: str = "dhcpv6-stateful") -> Built:
    """hv0: a (ADDRESS on PREFIX in ``mode``, DNS 2001:db8::53), b; hv1: c."""
    built = abc()
    net = built.networks["n"]
    built.graph.put_subnet(Subnet(id="v6", network_id=net.id, project_id=net.project_id, cidr=PREFIX, ip_version=6,
                                  gateway_ip="2001:db8:2::1", attrs={
                                      "ipv6_address_mode": mode, "dns_nameservers": ["192.0.2.53", "2001:db8::53"]}))
    built.ports["a"] = replace(built.ports["a"], fixed_ips=(FixedIP("v6", ADDRESS),))
    built.graph.put_port(built.ports["a"])
    return built


def lease(built: Built) -> dhcp6.Lease6:
    got = dhcp6.lease6_for(built.graph, built.ports["a"], "tenant.test")
    assert got is not None
    return got


CLIENT_DUID = DUID_LL(lladdr="fa:16:3e:00:00:01")


def client(built: Built, message, *options) -> bytes:
    mac = built.ports["a"].mac_address
    lla = str(netaddr.EUI(mac).ipv6_link_local())
    return bytes(Ether(src=mac, dst="33:33:00:01:00:02") / IPv6(src=lla, dst="ff02::1:2") / UDP(sport=546, dport=547)
                 / message / DHCP6OptClientId(duid=CLIENT_DUID) / b"".join(bytes(o) for o in options))


def reply_of(result) -> Ether:
    assert result.frame is not None
    frame = Ether(result.frame)
    assert frame[UDP].sport == 547 and frame[UDP].dport == 546 and frame[IPv6].src == dhcp6.SERVER_LLA
    assert bytes(frame[DHCP6OptServerId].duid) == dhcp6.SERVER_DUID
    assert bytes(frame[DHCP6OptClientId].duid) == bytes(CLIENT_DUID)
    return frame


def test_requests_go_to_the_controller_where_dhcpv6_is_served() -> None:
    solicit = {"eth_type": 0x86DD, "eth_dst": "33:33:00:01:00:02", "ipv6_src": "fe80::1", "ipv6_dst": "ff02::1:2",
               "ip_proto": 17, "udp_src": 546, "udp_dst": 547}
    built = cloud()
    result = send(fabric_of(built.graph), built, "a", **solicit)
    assert [(d.hv, d.port) for d in result.deliveries] == [("hv0", str(CONTROLLER))]
    assert result.walks[0][1].meters == [port_meter(built.ports["a"]), HYPERVISOR_METER]
    # b has no address on the subnet: its request goes to the network (a server of the tenant's may answer)
    assert delivered_labels(built, send(fabric_of(built.graph), built, "b", **solicit)) == ["a", "c"]


def test_solicit_request_renew_get_the_ports_own_address() -> None:
    built = cloud()
    ia = DHCP6OptIA_NA(iaid=7)
    advertise = reply_of(dhcp6.answer6(client(built, DHCP6_Solicit(trid=0x42), ia), lease(built)))
    assert DHCP6_Advertise in advertise and advertise[DHCP6_Advertise].trid == 0x42
    got = advertise[DHCP6OptIA_NA]
    assert got.iaid == 7 and got[DHCP6OptIAAddress].addr == ADDRESS and got[DHCP6OptIAAddress].validlft > 0
    assert list(advertise[DHCP6OptDNSServers].dnsservers) == ["2001:db8::53"]
    assert [d.rstrip(".") for d in advertise[DHCP6OptDNSDomains].dnsdomains] == ["tenant.test"]
    for message in (DHCP6_Request(trid=1), DHCP6_Renew(trid=2)):
        server = DHCP6OptServerId(duid=dhcp6.SERVER_DUID)
        reply = reply_of(dhcp6.answer6(client(built, message, server, ia), lease(built)))
        assert DHCP6_Reply in reply and reply[DHCP6OptIAAddress].addr == ADDRESS


def test_stateless_answers_information_requests_only() -> None:
    built = cloud("dhcpv6-stateless")
    assert lease(built).address is None
    reply = reply_of(dhcp6.answer6(client(built, DHCP6_InfoRequest(trid=5)), lease(built)))
    assert DHCP6_Reply in reply and DHCP6OptIA_NA not in reply
    assert list(reply[DHCP6OptDNSServers].dnsservers) == ["2001:db8::53"]
    assert dhcp6.answer6(client(built, DHCP6_Solicit(trid=6), DHCP6OptIA_NA(iaid=1)), lease(built)).frame is None


def test_confirm_release_and_another_servers_request() -> None:
    built = cloud()
    ours = DHCP6OptIA_NA(iaid=7, ianaopts=[DHCP6OptIAAddress(addr=ADDRESS)])
    other = DHCP6OptIA_NA(iaid=7, ianaopts=[DHCP6OptIAAddress(addr="2001:db8:2::99")])
    confirm = reply_of(dhcp6.answer6(client(built, DHCP6_Confirm(trid=1), ours), lease(built)))
    assert confirm[DHCP6OptStatusCode].statuscode == 0
    moved = reply_of(dhcp6.answer6(client(built, DHCP6_Confirm(trid=1), other), lease(built)))
    assert moved[DHCP6OptStatusCode].statuscode == 4  # NotOnLink: the client starts over
    release = reply_of(dhcp6.answer6(client(built, DHCP6_Release(trid=2), DHCP6OptServerId(duid=dhcp6.SERVER_DUID),
                                            ours), lease(built)))
    assert release[DHCP6OptStatusCode].statuscode == 0
    elsewhere = DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:09"))
    assert dhcp6.answer6(client(built, DHCP6_Request(trid=3), elsewhere, ours), lease(built)).frame is None


@pytest.mark.parametrize("frame", [b"", b"\x00" * 60,
                                   bytes(Ether() / IPv6() / UDP(sport=547, dport=546) / DHCP6_Reply())])
def test_garbage_and_server_messages_get_nothing(frame: bytes) -> None:
    assert dhcp6.answer6(frame, lease(cloud())).frame is None


def test_no_dhcpv6_mode_no_lease() -> None:
    built = cloud("slaac")
    assert dhcp6.lease6_for(built.graph, built.ports["a"]) is None
