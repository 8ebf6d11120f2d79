"""``trace --live``'s reading of OVS's answers (apps/trace_live.py), on text OVS 3.1 wrote in the lab.

The agreement itself is tested against real switches in ``tests/test_opscheck.py``; these pin how
ports, patch ports, tunnels and packet-ins are read, without OVS.
"""

from __future__ import annotations

from apps.trace_live import Exit, datapath_ports, flow_text, odp_names, ofports_of, ovs_exits, simulated_exits
from flows.flow import CONTROLLER
from flows.simulate import SimResult

DPIF_SHOW = """netdev@ovs-netdev: hit:14 missed:33
  br-int:
    br-int 65534/1: (tap)
    phy-physnet1 1/none: (patch: peer=int-physnet1)
    tap8eeea345-b0 5/9: (system)
    tap90b3b104-0c 6/10: (system)
    tf-vxlan 4/8: (vxlan: key=flow, local_ip=192.168.100.1, remote_ip=flow)
  br-phys:
    br-phys 65534/4: (tap)
    int-physnet1 1/none: (patch: peer=phy-physnet1)
    physnet0 2/5: (system)
  br-underlay:
    br-underlay 65534/2: (tap)
    underlay0 1/3: (system)
"""

TUNNEL = ("Datapath actions: ct(commit,zone=1),set(eth(src=fe:16:c0:a8:64:01,dst=fa:16:3e:f6:27:a1)),"
          "set(ipv4(ttl=63)),tnl_push(tnl_port(8),header(size=50,type=4,eth(dst=6a:b3:f0:c8:ba:4a,"
          "src=6a:27:27:06:04:43,dl_type=0x0800),ipv4(src=192.168.100.1,dst=192.168.100.2,proto=17,tos=0,ttl=64,"
          "frag=0x4000),udp(src=0,dst=4789,csum=0x0),vxlan(flags=0x8000000,vni=0x3e9)),out_port(2)),3")


def names() -> dict[int, str]:
    return odp_names(datapath_ports(DPIF_SHOW), "br-int")


def test_port_maps_of_one_bridge() -> None:
    ports = datapath_ports(DPIF_SHOW)
    assert ofports_of(ports, "br-int") == {"phy-physnet1": 1, "tap8eeea345-b0": 5, "tap90b3b104-0c": 6, "tf-vxlan": 4}
    # br-phys's ports count as the patch port that leads there; br-underlay's (after a tunnel push) as nothing
    assert names() == {9: "tap8eeea345-b0", 10: "tap90b3b104-0c", 8: "tf-vxlan", 4: "phy-physnet1",
                       5: "phy-physnet1"}


def test_exits_across_conntrack_recirculations_and_a_tunnel() -> None:
    trace = f"Datapath actions: ct(zone=1),recirc(0x1)\n...\n{TUNNEL}\n"
    assert ovs_exits(trace, names()) == [Exit("tf-vxlan", "192.168.100.2", 1001)]


def test_local_delivery_patch_port_packet_in_and_drop() -> None:
    assert ovs_exits("Datapath actions: ct(commit,zone=2),10", names()) == [Exit("tap90b3b104-0c")]
    assert ovs_exits("Datapath actions: push_vlan(vid=100,pcp=0),5", names()) == [Exit("phy-physnet1")]
    packet_in = ("Datapath actions: meter(0),meter(1),userspace(pid=0,controller(reason=1,dont_send=0,continuation=0,"
                 "recirc_id=1,rule_cookie=0x5,controller_id=0,max_len=65535))")
    assert ovs_exits(packet_in, names()) == [Exit("CONTROLLER")]
    assert ovs_exits("Datapath actions: drop", names()) == []


def test_simulator_exits_by_name_with_tunnel_metadata() -> None:
    result = SimResult(outputs=[(4, {"tun_ipv4_dst": "192.168.100.2", "tunnel_id": 1001}), (6, {}),
                                (CONTROLLER, {})])
    exits = simulated_exits(result, {4: "tf-vxlan", 6: "tap90b3b104-0c"}, {"tf-vxlan"})
    assert exits == sorted([Exit("tf-vxlan", "192.168.100.2", 1001), Exit("tap90b3b104-0c"), Exit("CONTROLLER")])


def test_packet_in_ovs_flow_syntax_prerequisites_first_and_a_ttl() -> None:
    text = flow_text({"in_port": 5, "eth_dst": "fa:16:3e:00:00:02", "eth_type": "0x0800", "ipv4_dst": "10.0.0.2",
                      "icmpv4_type": 8, "ip_proto": 1})
    assert text == "in_port=5,dl_dst=fa:16:3e:00:00:02,dl_type=0x0800,nw_proto=1,icmp_type=8,ip_dst=10.0.0.2,nw_ttl=64"
