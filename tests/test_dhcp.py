"""DHCPv4 from the controller: what the pipeline does with a client's message (simulated), and every answer
(built by controller.dhcp, parsed by scapy)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from controller import dhcp
from controller.icmp import FairLimiter
from flows.dhcp import HYPERVISOR_METER, port_meter
from flows.flow import CONTROLLER
from tests.topo_builders import BROADCAST, Builder, Built, delivered_labels, fabric_of, send
from topology.model import FixedIP, Port
from topology.model_l3 import ROUTER_INTERFACE

GATEWAY, ROUTER_MAC = "10.0.0.1", "fa:16:3e:00:00:fe"


def cloud(dhcp_on: bool = True) -> Built:
    """hv0: a, b (10.0.0.0/24, gateway 10.0.0.1 on a router interface, DNS, host routes); hv1: c;
    another tenant's network with the same CIDR: t on hv0."""
    b = Builder()
    b.hv(0)
    b.hv(1)
    net = b.network("n", dhcp=dhcp_on)
    other = b.network("other", project="tenant-t")
    b.port("a", net, "hv0", ip="10.0.0.10")
    b.port("b", net, "hv0", ip="10.0.0.11")
    b.port("c", net, "hv1", ip="10.0.0.20")
    b.port("t", other, "hv0", ip="10.0.0.10")
    built = b.done()
    graph = built.graph
    subnet = graph.subnets_of(net.id)[0]
    graph.put_subnet(replace(subnet, gateway_ip=GATEWAY, attrs={
        "dns_nameservers": ["192.0.2.53", "2001:db8::53", "192.0.2.54"],
        "host_routes": [{"destination": "172.16.0.0/12", "nexthop": "10.0.0.254"}]}))
    graph.put_port(Port(id="router-if", network_id=net.id, project_id=net.project_id, key=99, mac_address=ROUTER_MAC,
                        fixed_ips=(FixedIP(subnet.id, GATEWAY),), device_owner=ROUTER_INTERFACE, device_id="r1"))
    return built


def client(built: Built, label: str, kind: str, flags: int = 0, ciaddr: str = "0.0.0.0", **opts) -> bytes:
    """A client message from port ``label``, as scapy (and a real client) builds it."""
    mac = built.ports[label].mac_address
    options = [("message-type", kind), *opts.items(), "end"]
    src, dst = (ciaddr, "255.255.255.255") if ciaddr != "0.0.0.0" else ("0.0.0.0", "255.255.255.255")
    return bytes(Ether(src=mac, dst=BROADCAST) / IP(src=src, dst=dst) / UDP(sport=68, dport=67)
                 / BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=0x1234, flags=flags, ciaddr=ciaddr)
                 / DHCP(options=options))


def reply_of(result: dhcp.Answer) -> tuple[Ether, dict]:
    assert result.frame is not None
    frame = Ether(result.frame)
    assert frame[IP].chksum == Ether(bytes(frame))[IP].chksum and frame[UDP].sport == 67 and frame[UDP].dport == 68
    options = {o[0]: o[1:] if len(o) > 2 else o[1] for o in frame[DHCP].options if isinstance(o, tuple)}
    return frame, options


def lease(built: Built, label: str = "a") -> dhcp.Lease:
    got = dhcp.lease_for(built.graph, built.ports[label], dhcp.Settings(lease_time=600, domain="example.test"))
    assert got is not None
    return got


# -- the pipeline -----------------------------------------------------------------------------
def test_a_request_goes_to_the_controller_and_nowhere_else() -> None:
    built = cloud()
    fab = fabric_of(built.graph)
    discover = {"eth_dst": BROADCAST, "ipv4_src": "0.0.0.0", "ipv4_dst": "255.255.255.255", "ip_proto": 17,
                "udp_src": 68, "udp_dst": 67}
    renewal = {**discover, "eth_dst": ROUTER_MAC, "ipv4_src": "10.0.0.10", "ipv4_dst": GATEWAY}
    for fields in (discover, renewal):
        result = send(fab, built, "a", **fields)
        # to the controller, from a's own hypervisor: not to b, c, nor the other tenant's t
        assert [(d.hv, d.port) for d in result.deliveries] == [("hv0", str(CONTROLLER))] and result.lost == []
        assert [p for _, walk in result.walks for p in walk.ports] == [CONTROLLER]
    # anything else, DHCP servers' traffic included, is not for the controller
    other = send(fab, built, "a", **{**discover, "udp_dst": 69})
    assert delivered_labels(built, other) == ["b", "c"]


def test_a_request_passes_its_ports_meter_then_the_hypervisors_and_a_spent_meter_drops_it() -> None:
    built = cloud()
    fab = fabric_of(built.graph)
    discover = {"eth_dst": BROADCAST, "ipv4_src": "0.0.0.0", "ipv4_dst": "255.255.255.255", "ip_proto": 17,
                "udp_src": 68, "udp_dst": 67}
    a_meter, b_meter = port_meter(built.ports["a"]), port_meter(built.ports["b"])
    assert a_meter.meter_id != b_meter.meter_id != HYPERVISOR_METER.meter_id
    walk = send(fab, built, "a", **discover).walks[0][1]
    assert walk.meters == [a_meter, HYPERVISOR_METER] and walk.ports == [CONTROLLER]
    pipe = fab.switches["hv0"].pipeline

    def reached(label: str) -> list[tuple[str, str]]:
        result = send(fab, built, label, **discover)
        assert result.lost == [] and len(result.walks) == 1  # dropped or up: never out to the fabric
        return [(d.hv, d.port) for d in result.deliveries]

    # a floods: its own meter is spent; its requests are dropped on hv0, b's still go up
    pipe.spent_meters = {a_meter.meter_id}
    assert reached("a") == [] and reached("b") == [("hv0", str(CONTROLLER))]
    # the hypervisor's meter spent: nothing goes up, nothing goes anywhere else either
    pipe.spent_meters = {HYPERVISOR_METER.meter_id}
    assert reached("a") == [] and reached("b") == []


def test_no_dhcp_on_the_subnet_the_request_goes_to_the_network() -> None:
    """A tenant's own server may answer there; the other tenant never sees it."""
    built = cloud(dhcp_on=False)
    fab = fabric_of(built.graph)
    discover = {"eth_dst": BROADCAST, "ipv4_src": "0.0.0.0", "ipv4_dst": "255.255.255.255", "ip_proto": 17,
                "udp_src": 68, "udp_dst": 67}
    result = send(fab, built, "a", **discover)
    assert delivered_labels(built, result) == ["b", "c"]
    assert CONTROLLER not in [p for _, walk in result.walks for p in walk.ports]
    assert dhcp.lease_for(built.graph, built.ports["a"]) is None


# -- the answers -------------------------------------------------------------------------------
def test_lease_of_a_port() -> None:
    got = lease(cloud())
    assert got == dhcp.Lease(ip="10.0.0.10", prefix_len=24, server_ip=GATEWAY, server_mac=ROUTER_MAC, router=GATEWAY,
                             dns=("192.0.2.53", "192.0.2.54"),
                             routes=(("172.16.0.0/12", "10.0.0.254"), ("0.0.0.0/0", GATEWAY)), mtu=1450,
                             lease_time=600, domain="example.test")


def test_discover_gets_an_offer_of_the_ports_own_address_with_every_option() -> None:
    built = cloud()
    frame, opts = reply_of(dhcp.answer(client(built, "a", "discover"), lease(built)))
    mac = built.ports["a"].mac_address
    assert (frame.src, frame.dst, frame[IP].src, frame[IP].dst) == (ROUTER_MAC, mac, GATEWAY, "10.0.0.10")
    assert frame[BOOTP].op == 2 and frame[BOOTP].xid == 0x1234 and frame[BOOTP].yiaddr == "10.0.0.10"
    assert frame[BOOTP].chaddr[:6] == bytes.fromhex(mac.replace(":", ""))
    assert opts["message-type"] == 2 and opts["server_id"] == GATEWAY
    assert (opts["lease_time"], opts["renewal_time"], opts["rebinding_time"]) == (600, 300, 525)
    assert opts["subnet_mask"] == "255.255.255.0" and opts["router"] == GATEWAY
    assert opts["name_server"] == ("192.0.2.53", "192.0.2.54") and opts["domain"] == b"example.test"
    assert opts["interface-mtu"] == 1450
    assert list(opts["classless_static_routes"]) == ["172.16.0.0/12:10.0.0.254", "0.0.0.0/0:10.0.0.1"]


def test_a_broadcast_flag_gets_a_broadcast_answer() -> None:
    built = cloud()
    frame, _ = reply_of(dhcp.answer(client(built, "a", "discover", flags=0x8000), lease(built)))
    assert (frame.dst, frame[IP].dst, frame[BOOTP].flags) == (BROADCAST, "255.255.255.255", 0x8000)


def test_request_of_its_address_gets_an_ack_of_another_a_nak() -> None:
    built = cloud()
    ack = dhcp.answer(client(built, "a", "request", requested_addr="10.0.0.10", server_id=GATEWAY), lease(built))
    frame, opts = reply_of(ack)
    assert (ack.request, ack.reply) == ("request", "ack") and opts["message-type"] == 5
    assert frame[BOOTP].yiaddr == "10.0.0.10" and opts["lease_time"] == 600
    nak = dhcp.answer(client(built, "a", "request", requested_addr="10.0.0.77"), lease(built))
    frame, opts = reply_of(nak)
    assert nak.reply == "nak" and opts["message-type"] == 6 and frame[BOOTP].yiaddr == "0.0.0.0"
    assert (frame.dst, frame[IP].dst) == (BROADCAST, "255.255.255.255") and "lease_time" not in opts
    # a renewal names its address in ciaddr and is answered unicast
    renew = dhcp.answer(client(built, "a", "request", ciaddr="10.0.0.10"), lease(built))
    frame, _ = reply_of(renew)
    assert renew.reply == "ack" and frame[IP].dst == "10.0.0.10" and frame[BOOTP].ciaddr == "10.0.0.10"
    # the port's address changed since: the renewal is refused, the client starts over
    moved = replace(lease(built), ip="10.0.0.30")
    assert dhcp.answer(client(built, "a", "request", ciaddr="10.0.0.10"), moved).reply == "nak"
    assert dhcp.answer(client(built, "a", "discover"), moved).frame is not None


def test_request_for_another_server_release_decline_get_nothing() -> None:
    built = cloud()
    for frame in (client(built, "a", "request", requested_addr="10.0.0.10", server_id="10.0.0.2"),
                  client(built, "a", "release", ciaddr="10.0.0.10"),
                  client(built, "a", "decline", requested_addr="10.0.0.10")):
        result = dhcp.answer(frame, lease(built))
        assert result.reply == "" and result.frame is None


def test_inform_gets_the_options_only() -> None:
    built = cloud()
    result = dhcp.answer(client(built, "a", "inform", ciaddr="10.0.0.10"), lease(built))
    frame, opts = reply_of(result)
    assert result.reply == "ack" and frame[BOOTP].yiaddr == "0.0.0.0" and frame[IP].dst == "10.0.0.10"
    assert "lease_time" not in opts and opts["router"] == GATEWAY


@pytest.mark.parametrize("frame", [b"", b"\x00" * 20, bytes(Ether() / IP() / UDP(sport=68, dport=67) / b"junk"),
                                   bytes(Ether() / IP() / UDP(sport=67, dport=68) / BOOTP(op=2)
                                         / DHCP(options=[("message-type", "offer"), "end"]))])
def test_garbage_and_server_messages_get_nothing(frame: bytes) -> None:
    result = dhcp.answer(frame, lease(cloud()))
    assert result.frame is None


def test_without_gateway_or_router() -> None:
    built = cloud()
    subnet = built.graph.subnets_of(built.networks["n"].id)[0]
    built.graph.put_subnet(replace(subnet, gateway_ip=None, attrs={}))
    got = lease(built)
    assert (got.server_ip, got.server_mac, got.router, got.routes, got.dns) == (
        dhcp.NO_GATEWAY_SERVER, dhcp.SERVER_MAC, None, (), ())
    _, opts = reply_of(dhcp.answer(client(built, "a", "discover"), got))
    assert "router" not in opts and "classless_static_routes" not in opts and opts["server_id"] == "169.254.169.254"


def test_a_ports_extra_dhcp_opts_are_served_and_replace_the_subnets() -> None:
    built = cloud()
    extra = [{"opt_name": "tftp-server", "opt_value": "192.0.2.9", "ip_version": 4},
             {"opt_name": "bootfile-name", "opt_value": "pxelinux.0", "ip_version": 4},
             {"opt_name": "server-ip-address", "opt_value": "192.0.2.9", "ip_version": 4},
             {"opt_name": "router", "opt_value": "10.0.0.254", "ip_version": 4},
             {"opt_name": "150", "opt_value": "192.0.2.10,192.0.2.11", "ip_version": 4}]
    port = replace(built.ports["a"], attrs={**built.ports["a"].attrs, "extra_dhcp_opts": extra})
    built.graph.put_port(port)
    built.ports["a"] = port
    frame, opts = reply_of(dhcp.answer(client(built, "a", "discover"), lease(built)))
    raw = {o[0]: o[1] for o in frame[DHCP].options if isinstance(o, tuple)}
    assert raw["tftp_server_name"] == b"192.0.2.9" and raw["boot-file-name"] == b"pxelinux.0"
    assert frame[BOOTP].siaddr == "192.0.2.9"
    assert opts["router"] == "10.0.0.254"  # the port's, not the subnet's gateway
    assert [o for o in frame[DHCP].options if isinstance(o, tuple) and o[0] == "router"] == [("router", "10.0.0.254")]
    assert opts["tftp_server_address"] == ("192.0.2.10", "192.0.2.11")
    # a NAK carries none of them
    _, nak = reply_of(dhcp.answer(client(built, "a", "request", requested_addr="10.0.0.99"), lease(built)))
    assert "tftp_server_name" not in nak and "router" not in nak


def test_fair_limiter_keeps_a_share_for_every_port() -> None:
    limiter = FairLimiter(rate=0.001, burst=30, per_key_rate=0.001, per_key_burst=5)
    assert sum(limiter.allow("flooder") for _ in range(1000)) == 5
    # the shared bucket lost only the flooder's 5: the others share the remaining 25
    assert sum(limiter.allow(f"port{i}") for i in range(40) for _ in range(2)) == 25
