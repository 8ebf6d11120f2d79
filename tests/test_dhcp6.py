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
    DHCP6NTPSubOptMCAddr,
    DHCP6NTPSubOptSrvAddr,
    DHCP6NTPSubOptSrvFQDN,
    DHCP6OptBootFileUrl,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptInfoRefreshTime,
    DHCP6OptNewPOSIXTimeZone,
    DHCP6OptNTPServer,
    DHCP6OptOptReq,
    DHCP6OptServerId,
    DHCP6OptSIPServers,
    DHCP6OptStatusCode,
    DHCP6OptUnknown,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from controller import dhcp, dhcp6
from flows.dhcp import HYPERVISOR_METER, port_meter
from flows.flow import CONTROLLER
from tests.topo_builders import Built, abc, delivered_labels, fabric_of, send
from topology import dhcp_opts
from topology.model import FixedIP, Subnet

PREFIX, ADDRESS = "2001:db8:2::/64", "2001:db8:2::10"


def cloud(mode: str = "dhcpv6-stateful", dhcp4: bool = False) -> Built:
    """hv0: a (ADDRESS on PREFIX in ``mode``, DNS 2001:db8::53; with ``dhcp4``, 10.0.0.10 on the IPv4 subnet
    with DHCP on too), b; hv1: c."""
    built = abc(dhcp=dhcp4)
    net = built.networks["n"]
    built.graph.put_subnet(Subnet(id="v6", network_id=net.id, project_id=net.project_id, cidr=PREFIX, ip_version=6,
                                  gateway_ip="2001:db8:2::1", attrs={
                                      "ipv6_address_mode": mode, "dns_nameservers": ["192.0.2.53", "2001:db8::53"]}))
    v4 = (FixedIP(built.graph.subnets_of(net.id)[0].id, "10.0.0.10"),) if dhcp4 else ()
    built.ports["a"] = replace(built.ports["a"], fixed_ips=(*v4, FixedIP("v6", ADDRESS)))
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


EXTRA6 = [{"opt_name": "dns-server", "opt_value": "[2001:db8::1], 2001:db8::2", "ip_version": 6},
          {"opt_name": "domain-search", "opt_value": "a.example,b.example.", "ip_version": 6},
          {"opt_name": "ntp-server", "opt_value": "2001:db8::123,[ff05::101],ntp.example", "ip_version": 6},
          {"opt_name": "bootfile-url", "opt_value": "tftp://[2001:db8::9]/boot.efi", "ip_version": 6},
          {"opt_name": "bootfile-param", "opt_value": "root=/dev/vda1, console=ttyS0", "ip_version": 6},
          {"opt_name": "sip-server", "opt_value": "2001:db8::5060", "ip_version": 6},
          {"opt_name": "information-refresh-time", "opt_value": "2h", "ip_version": 6},
          {"opt_name": "41", "opt_value": "CET-1CEST", "ip_version": 6},  # posix-timezone, by number: text
          {"opt_name": "dns-server", "opt_value": "192.0.2.99", "ip_version": 4}]  # DHCPv4's: never here
ASKED = (22, 23, 24, 32, 41, 56, 59, 60)


def with_extra(mode: str = "dhcpv6-stateful", dhcp4: bool = False) -> Built:
    """:func:`cloud` where port a has :data:`EXTRA6`, stored as the API stores them."""
    built = cloud(mode, dhcp4)
    port = replace(built.ports["a"], attrs={**built.ports["a"].attrs, "extra_dhcp_opts": dhcp_opts.merged([], EXTRA6)})
    built.graph.put_port(port)
    built.ports["a"] = port
    return built


def codes(frame: Ether) -> list[int]:
    """The option codes of a DHCPv6 answer, in order (scapy's option layers follow the message's)."""
    return [layer.optcode for layer in frame[UDP].payload.payload.iterpayloads()]


def only(frame: Ether, kind: type[Packet]) -> Packet:
    """The one option of ``kind`` in ``frame``."""
    found = [layer for layer in frame[UDP].payload.payload.iterpayloads() if isinstance(layer, kind)]
    assert len(found) == 1, frame.show(dump=True)
    return found[0]


def check_extra(frame: Ether) -> None:
    """Every option of :data:`EXTRA6` but the refresh time, as scapy reads it."""
    assert list(only(frame, DHCP6OptDNSServers).dnsservers) == ["2001:db8::1", "2001:db8::2"]  # not the subnet's
    assert list(only(frame, DHCP6OptDNSDomains).dnsdomains) == ["a.example.", "b.example."]  # not tenant.test
    ntp = only(frame, DHCP6OptNTPServer).ntpserver
    assert [type(o) for o in ntp] == [DHCP6NTPSubOptSrvAddr, DHCP6NTPSubOptMCAddr, DHCP6NTPSubOptSrvFQDN]
    assert [ntp[0].addr, ntp[1].addr, ntp[2].fqdn] == ["2001:db8::123", "ff05::101", b"ntp.example."]
    assert only(frame, DHCP6OptBootFileUrl).optdata == b"tftp://[2001:db8::9]/boot.efi"
    param = only(frame, DHCP6OptUnknown)  # (scapy has no class for option 60: RFC 5970's length-prefixed list)
    assert param.optcode == 60 and param.data == b"\x00\x0eroot=/dev/vda1\x00\x0dconsole=ttyS0"
    assert list(only(frame, DHCP6OptSIPServers).sipservers) == ["2001:db8::5060"]
    assert only(frame, DHCP6OptNewPOSIXTimeZone).optdata == b"CET-1CEST"


def test_a_ports_ipv6_extra_dhcp_opts_are_served_and_replace_the_subnets() -> None:
    built = with_extra()
    ia, asked = DHCP6OptIA_NA(iaid=7), DHCP6OptOptReq(reqopts=list(ASKED))
    advertise = reply_of(dhcp6.answer6(client(built, DHCP6_Solicit(trid=1), ia, asked), lease(built)))
    assert DHCP6_Advertise in advertise and advertise[DHCP6OptIAAddress].addr == ADDRESS
    check_extra(advertise)
    # no refresh time but in reply to an INFORMATION-REQUEST; the DHCPv4 option nowhere
    assert sorted(codes(advertise)) == [1, 2, 3, 22, 23, 24, 41, 56, 59, 60]
    server = DHCP6OptServerId(duid=dhcp6.SERVER_DUID)
    reply = reply_of(dhcp6.answer6(client(built, DHCP6_Request(trid=2), server, ia, asked), lease(built)))
    assert DHCP6_Reply in reply and sorted(codes(reply)) == sorted(codes(advertise))
    check_extra(reply)


def test_stateless_information_request_gets_them_with_the_refresh_time() -> None:
    built = with_extra("dhcpv6-stateless")
    reply = reply_of(dhcp6.answer6(client(built, DHCP6_InfoRequest(trid=5), DHCP6OptOptReq(reqopts=list(ASKED))),
                                   lease(built)))
    assert DHCP6_Reply in reply and sorted(codes(reply)) == [1, 2, *ASKED]
    check_extra(reply)
    assert only(reply, DHCP6OptInfoRefreshTime).reftime == 7200


def test_a_ports_options_go_where_the_client_asked_for_them_as_dnsmasq_serves_them() -> None:
    built = with_extra()
    ia = DHCP6OptIA_NA(iaid=7)

    def advertise(*options) -> Ether:
        return reply_of(dhcp6.answer6(client(built, DHCP6_Solicit(trid=1), ia, *options), lease(built)))

    plain = advertise(DHCP6OptOptReq(reqopts=[23, 24]))  # what an OS's client asks for
    assert codes(plain) == [1, 2, 3, 23, 24] and list(plain[DHCP6OptDNSServers].dnsservers) == [
        "2001:db8::1", "2001:db8::2"]
    # not asked for: the port's dns-server is not served, the subnet's is (dnsmasq: its default DNS server)
    pxe = advertise(DHCP6OptOptReq(reqopts=[59, 24]))
    assert codes(pxe) == [1, 2, 3, 23, 24, 59] and list(pxe[DHCP6OptDNSServers].dnsservers) == ["2001:db8::53"]
    assert list(pxe[DHCP6OptDNSDomains].dnsdomains) == ["a.example.", "b.example."]
    # no ORO at all: every option (the refresh time still only for an INFORMATION-REQUEST)
    everything = advertise()
    assert sorted(codes(everything)) == [1, 2, 3, 22, 23, 24, 41, 56, 59, 60]
    check_extra(everything)


def test_confirm_and_release_carry_no_options() -> None:
    built = with_extra()
    ours = DHCP6OptIA_NA(iaid=7, ianaopts=[DHCP6OptIAAddress(addr=ADDRESS)])
    asked = DHCP6OptOptReq(reqopts=list(ASKED))
    confirm = reply_of(dhcp6.answer6(client(built, DHCP6_Confirm(trid=1), ours, asked), lease(built)))
    release = reply_of(dhcp6.answer6(client(built, DHCP6_Release(trid=2), DHCP6OptServerId(duid=dhcp6.SERVER_DUID),
                                            ours, asked), lease(built)))
    assert codes(confirm) == codes(release) == [1, 2, 13]


def test_the_dhcpv4_lease_and_the_dhcpv6_one_each_take_their_own() -> None:
    built = with_extra(dhcp4=True)
    assert [code for code, _ in lease(built).extra] == [23, 24, 56, 59, 60, 22, 32, 41]
    v4 = dhcp.lease_for(built.graph, built.ports["a"])
    assert v4 is not None and v4.extra == ((6, bytes([192, 0, 2, 99])),)
