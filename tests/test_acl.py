"""Stateful security groups on the simulated pipeline: rules, replies, zones, remote groups, changes.

Packets are injected at a VM's tap and followed across the simulated fabric; each
switch keeps its connection table between packets (and across a recompile, as a
real switch keeps conntrack when its flows change).
"""

from __future__ import annotations

import pytest

from flows.acl import ct_zones, port_masks
from flows.compiler import compile_hypervisor
from flows.pipeline import STAGE_BY_NAME
from flows.simulate import Fabric, lint
from tests.test_routing import add_router, subnet_of
from tests.topo_builders import Builder, Built, delivered_labels, fabric_of, send
from topology import graph_l3
from topology.model_l3 import SecurityGroup, SecurityGroupRule

SEC = {"port_security_enabled": True}


def group(b: Builder, sg_id: str, *rules: dict) -> None:
    graph_l3.put_sg(b.graph, SecurityGroup(id=sg_id, project_id="p", name=sg_id))
    for i, r in enumerate(rules):
        rule = SecurityGroupRule(id=f"{sg_id}-r{i}", project_id="p", security_group_id=sg_id, **r)
        graph_l3.put_sg_rule(b.graph, rule)


def default_group(b: Builder, sg_id: str = "default") -> None:
    """Neutron's default group: egress open, ingress from members only."""
    group(b, sg_id, *({"direction": "egress", "ethertype": e} for e in ("IPv4", "IPv6")),
          *({"direction": "ingress", "ethertype": e, "remote_group_id": sg_id} for e in ("IPv4", "IPv6")))


def refresh(fab: Fabric, graph) -> Fabric:
    """Recompile every switch; keep each switch's connection table (the flows change, conntrack does not)."""
    new = fabric_of(graph)
    for name, sw in new.switches.items():
        sw.pipeline.conntrack = fab.switches[name].pipeline.conntrack
    return new


def tcp(built: Built, src: str, dst: str, sport: int = 40000, dport: int = 80, **extra) -> dict:
    p, q = built.ports[src], built.ports[dst]
    return {"eth_dst": q.mac_address, "ipv4_src": p.fixed_ips[0].ip_address, "ipv4_dst": q.fixed_ips[0].ip_address,
            "ip_proto": 6, "tcp_src": sport, "tcp_dst": dport, **extra}


@pytest.fixture
def cloud() -> Built:
    """a, b (default group) and web (group web: ingress TCP 80 from anywhere, ICMP echo request from
    10.0.0.0/28, egress open) on hv0/hv1; x without port security on hv1."""
    b = Builder()
    b.hv(0)
    b.hv(1)
    default_group(b)
    group(b, "web", {"direction": "egress"}, {"direction": "ingress", "protocol": "tcp", "port_range_min": 80,
                                              "port_range_max": 80, "remote_ip_prefix": "0.0.0.0/0"},
          {"direction": "ingress", "protocol": "icmp", "port_range_min": 8, "remote_ip_prefix": "10.0.0.0/28"})
    net = b.network("n", cidr="10.0.0.0/24")
    b.port("a", net, "hv0", ip="10.0.0.10", **SEC, security_groups=["default"])
    b.port("b", net, "hv1", ip="10.0.0.11", **SEC, security_groups=["default"])
    b.port("web", net, "hv0", ip="10.0.0.20", **SEC, security_groups=["web"])
    b.port("x", net, "hv1", ip="10.0.0.30")
    return b.done()


def test_port_masks_cover_exactly_the_range() -> None:
    assert port_masks(80, 80) == [80]
    assert port_masks(0, 65535) == [(0, 0)]
    assert port_masks(1024, 2047) == [(1024, 0xFC00)]
    for lo, hi in ((1, 65535), (1000, 1999), (22, 23), (5, 300), (65535, 65535)):
        pieces = port_masks(lo, hi)
        covered = {p for p in range(65536) for v in pieces
                   if (p == v if isinstance(v, int) else p & v[1] == v[0])}
        assert covered == set(range(lo, hi + 1)), (lo, hi)
    assert len(port_masks(1, 65535)) == 16  # as Neutron's OVS firewall decomposes it


def test_pipelines_lint_clean(cloud: Built) -> None:
    for hv in ("hv0", "hv1"):
        assert lint(compile_hypervisor(cloud.graph, hv)) == []


def test_default_group_members_reach_each_other_outsiders_do_not(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    assert delivered_labels(cloud, send(fab, cloud, "a", **tcp(cloud, "a", "b", dport=22))) == ["b"]
    assert send(fab, cloud, "x", **tcp(cloud, "x", "b", dport=22)).deliveries == []  # not a member
    assert send(fab, cloud, "web", **tcp(cloud, "web", "a", dport=22)).deliveries == []
    # Egress is open: a reaches x (no port security: no ingress rules either).
    assert delivered_labels(cloud, send(fab, cloud, "a", **tcp(cloud, "a", "x", dport=9))) == ["x"]


def test_port_rule_allows_only_its_port_and_replies_pass_both_ways(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    assert delivered_labels(cloud, send(fab, cloud, "a", **tcp(cloud, "a", "web", dport=80))) == ["web"]
    assert send(fab, cloud, "a", **tcp(cloud, "a", "web", dport=81)).deliveries == []
    # web's reply enters a, whose ingress only admits members: it passes as a reply.
    reply = tcp(cloud, "web", "a", sport=80, dport=40000)
    assert delivered_labels(cloud, send(fab, cloud, "web", **reply)) == ["a"]
    # The same packet from a port a never sent to is no reply: dropped. (a's attempt on 81 was committed in
    # a's zone by its open egress before web's ingress dropped it, so a reply from 81 would pass.)
    assert send(fab, cloud, "web", **tcp(cloud, "web", "a", sport=82, dport=40000)).deliveries == []


def test_unsolicited_packet_is_dropped_and_uncommitted_connection_stays_new(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    # x -> web on 22: dropped at web's ingress, so never committed; web's "reply" is no reply either.
    assert send(fab, cloud, "x", **tcp(cloud, "x", "web", sport=5555, dport=22)).deliveries == []
    assert send(fab, cloud, "web", **tcp(cloud, "web", "x", sport=22, dport=5555)).deliveries != []  # egress open
    assert send(fab, cloud, "x", **tcp(cloud, "x", "a", sport=5555, dport=22)).deliveries == []


def test_icmp_type_and_remote_prefix(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    web = cloud.ports["web"]
    ping = {"eth_dst": web.mac_address, "ipv4_dst": "10.0.0.20", "ip_proto": 1, "icmpv4_type": 8, "icmpv4_code": 0}
    assert delivered_labels(cloud, send(fab, cloud, "a", ipv4_src="10.0.0.10", **ping)) == ["web"]  # in /28
    assert send(fab, cloud, "x", ipv4_src="10.0.0.30", **ping).deliveries == []  # outside 10.0.0.0/28
    assert send(fab, cloud, "a", ipv4_src="10.0.0.10", **{**ping, "icmpv4_type": 13}).deliveries == []
    echo_reply = {"eth_dst": cloud.ports["a"].mac_address, "ipv4_src": "10.0.0.20", "ipv4_dst": "10.0.0.10",
                  "ip_proto": 1, "icmpv4_type": 0, "icmpv4_code": 0}
    assert delivered_labels(cloud, send(fab, cloud, "web", **echo_reply)) == ["a"]
    # An echo reply nobody asked for is invalid.
    assert send(fab, cloud, "web", **{**echo_reply, "eth_dst": cloud.ports["b"].mac_address,
                                      "ipv4_dst": "10.0.0.11"}).deliveries == []


def test_removing_a_rule_cuts_established_connections(cloud: Built) -> None:
    fab = fabric_of(cloud.graph)
    request = tcp(cloud, "a", "web", dport=80)
    assert delivered_labels(cloud, send(fab, cloud, "a", **request)) == ["web"]
    assert delivered_labels(cloud, send(fab, cloud, "web", **tcp(cloud, "web", "a", 80, 40000))) == ["a"]
    assert delivered_labels(cloud, send(fab, cloud, "a", **request)) == ["web"]  # established
    cloud.graph.remove("sg_rule", "web-r1")
    fab = refresh(fab, cloud.graph)
    assert send(fab, cloud, "a", **request).deliveries == []
    # Adding it back (a new rule) lets the connection's packets through again.
    graph_l3.put_sg_rule(cloud.graph, SecurityGroupRule(id="web-again", project_id="p", security_group_id="web",
                                                        direction="ingress", protocol="tcp", port_range_min=80,
                                                        port_range_max=80))
    fab = refresh(fab, cloud.graph)
    assert delivered_labels(cloud, send(fab, cloud, "a", **request)) == ["web"]


def test_no_stale_flows_after_a_rule_goes(cloud: Built) -> None:
    before = {f.cookie for f in compile_hypervisor(cloud.graph, "hv0")}
    cloud.graph.remove("sg_rule", "web-r1")
    after = compile_hypervisor(cloud.graph, "hv0")
    assert not any("web-r1" in f.description for f in after)
    gone = before - {f.cookie for f in after}
    assert gone and {f.cookie for f in after} <= before  # only that rule's flows left


def test_port_with_security_but_no_group_gets_only_the_basics() -> None:
    b = Builder()
    b.hv(0)
    net = b.network("n", dhcp=False)  # (DHCP off: the request goes to the network, where x may serve it)
    b.port("bare", net, "hv0", ip="10.0.0.5", **SEC)
    b.port("x", net, "hv0", ip="10.0.0.6")
    built = b.done()
    fab = fabric_of(built.graph)
    assert send(fab, built, "x", **tcp(built, "x", "bare")).deliveries == []
    assert send(fab, built, "bare", **tcp(built, "bare", "x")).deliveries == []
    dhcp = {"eth_dst": "ff:ff:ff:ff:ff:ff", "ipv4_src": "0.0.0.0", "ipv4_dst": "255.255.255.255", "ip_proto": 17,
            "udp_src": 68, "udp_dst": 67}
    assert delivered_labels(built, send(fab, built, "bare", **dhcp)) == ["x"]


def test_overlapping_tenants_never_share_connection_state() -> None:
    """Same addresses, same hypervisor, two tenants: tenant a's connection is no connection in tenant b."""
    b = Builder()
    b.hv(0)
    for t in ("a", "b"):
        group(b, f"sg-{t}", {"direction": "egress"})
        net = b.network(t, project=f"tenant-{t}")
        b.port(f"{t}1", net, "hv0", ip="10.0.0.1", mac_address="fa:16:3e:00:00:01", **SEC, security_groups=[f"sg-{t}"])
        b.port(f"{t}2", net, "hv0", ip="10.0.0.2", mac_address="fa:16:3e:00:00:02", **SEC, security_groups=[f"sg-{t}"])
    built = b.done()
    zones = ct_zones(built.graph.ports_on("hv0"))
    assert len(set(zones.values())) == 4
    fab = fabric_of(built.graph)
    # No ingress rule anywhere: a1's request dies at a2, but a1's open egress committed it in a1's zone,
    # so a2's answer is a reply there.
    assert send(fab, built, "a1", **tcp(built, "a1", "a2")).deliveries == []
    assert delivered_labels(built, send(fab, built, "a2", **tcp(built, "a2", "a1", 80, 40000))) == ["a1"]
    # The very same packet in tenant b, on the same switch: b1 never sent anything, so it is dropped.
    assert send(fab, built, "b2", **tcp(built, "b2", "b1", 80, 40000)).deliveries == []


def test_routed_traffic_passes_both_ends_rules() -> None:
    b = Builder()
    for i in range(2):
        b.hv(i)
    group(b, "client", {"direction": "egress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 23})
    group(b, "server", {"direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
                        "remote_ip_prefix": "10.0.1.0/24"}, {"direction": "egress"})
    n1, n2 = b.network("n1", cidr="10.0.1.0/24"), b.network("n2", cidr="10.0.2.0/24")
    subnet_of(b, n1, "10.0.1.0/24")
    subnet_of(b, n2, "10.0.2.0/24")
    b.port("v1", n1, "hv0", ip="10.0.1.10", **SEC, security_groups=["client"])
    b.port("v2", n2, "hv1", ip="10.0.2.10", **SEC, security_groups=["server"])
    add_router(b, "r1", 1, {"n1": "10.0.1.1", "n2": "10.0.2.1"})
    built = b.done()
    fab = fabric_of(built.graph)
    gw1, gw2 = built.ports["r1-n1"].mac_address, built.ports["r1-n2"].mac_address

    def routed(dport: int) -> list[str]:
        pkt = {"eth_dst": gw1, "ipv4_src": "10.0.1.10", "ipv4_dst": "10.0.2.10", "ip_proto": 6, "tcp_src": 999,
               "tcp_dst": dport, "nw_ttl": 64}
        return delivered_labels(built, send(fab, built, "v1", **pkt))

    assert routed(22) == ["v2"]
    assert routed(23) == []  # client egress allows it, server ingress does not
    assert routed(80) == []  # client egress does not
    back = {"eth_dst": gw2, "ipv4_src": "10.0.2.10", "ipv4_dst": "10.0.1.10", "ip_proto": 6, "tcp_src": 22,
            "tcp_dst": 999, "nw_ttl": 64}
    assert delivered_labels(built, send(fab, built, "v2", **back)) == ["v1"]  # the reply, through both zones


def _remote_group_cloud(n_members: int, n_local: int = 3) -> Built:
    """n_local ports of group S on hv0 (S: ingress TCP 1000-1999 from members of G); n_members of G on hv1."""
    b = Builder()
    b.hv(0)
    b.hv(1)
    group(b, "G", {"direction": "egress"})
    group(b, "S", {"direction": "ingress", "protocol": "tcp", "port_range_min": 1000, "port_range_max": 1999,
                   "remote_group_id": "G"}, {"direction": "egress"})
    net = b.network("n", cidr="10.0.0.0/16")
    for i in range(n_local):
        b.port(f"s{i}", net, "hv0", ip=f"10.0.1.{i + 1}", **SEC, security_groups=["S"])
    for i in range(n_members):
        b.port(f"g{i}", net, "hv1", ip=f"10.0.{2 + i // 250}.{i % 250 + 1}", **SEC, security_groups=["G"])
    b.port("other", net, "hv1", ip="10.0.9.9", **SEC, security_groups=["S"])
    return b.done()


def test_remote_group_rule_allows_members_only() -> None:
    built = _remote_group_cloud(4)
    assert lint(compile_hypervisor(built.graph, "hv0")) == []
    fab = fabric_of(built.graph)
    assert delivered_labels(built, send(fab, built, "g2", **tcp(built, "g2", "s1", dport=1500))) == ["s1"]
    assert send(fab, built, "g2", **tcp(built, "g2", "s1", dport=2000)).deliveries == []  # out of range
    assert send(fab, built, "other", **tcp(built, "other", "s1", dport=1500)).deliveries == []  # not in G


def test_remote_group_membership_change_takes_effect() -> None:
    built = _remote_group_cloud(2)
    fab = fabric_of(built.graph)
    assert send(fab, built, "other", **tcp(built, "other", "s0", dport=1000)).deliveries == []
    other = built.ports["other"]
    from dataclasses import replace

    built.graph.put_port(replace(other, attrs={**other.attrs, "security_groups": ["S", "G"]}))
    fab = refresh(fab, built.graph)
    assert delivered_labels(built, send(fab, built, "other", **tcp(built, "other", "s0", dport=1000))) == ["s0"]


def _acl_flows(n_members: int, n_local: int = 3) -> int:
    built = _remote_group_cloud(n_members, n_local)
    acl = STAGE_BY_NAME["ls_out_acl"].table_id
    return sum(1 for f in compile_hypervisor(built.graph, "hv0") if f.table_id == acl)


def test_remote_group_flows_grow_linearly() -> None:
    """Members + local ports, never members x ports: one more member is one more flow, whatever the ports."""
    n = 40
    assert _acl_flows(2 * n) - _acl_flows(n) == n
    assert _acl_flows(4 * n) - _acl_flows(2 * n) == 2 * n
    # per local port: its remote-group rule's port clause, and its membership clause (its groups' other rules)
    assert _acl_flows(n, n_local=6) - _acl_flows(n, n_local=3) == 2 * 3


# -- the topology side: zones stored with bound ports, and who recompiles ----------------------------------
def test_topology_allocates_stable_zones_and_notifies_remote_group_dependents(tmp_path) -> None:
    from topology.ctzones import CT_ZONE_ATTR
    from topology.state import Topology

    topo = Topology(str(tmp_path / "t.sqlite"))
    events: list[set[str]] = []
    topo.subscribe(events.append)
    for i in (1, 2):
        topo.register_hypervisor({"name": f"hv{i}", "datapath_id": i, "tunnel_ip": f"192.168.100.{i}"})
    net, other = topo.create_network({"project_id": "p"}), topo.create_network({"project_id": "p"})
    for n in (net, other):
        topo.create_subnet({"network_id": n.id, "cidr": "10.0.0.0/24", "ip_version": 4, "project_id": "p"})
    g = topo.create_security_group({"project_id": "p", "name": "g"})
    s = topo.create_security_group({"project_id": "p", "name": "s"})
    topo.create_security_group_rule({"security_group_id": s.id, "direction": "ingress", "remote_group_id": g.id})

    def port(host: str | None, groups: list[str], network=net):
        return topo.create_port({"network_id": network.id, "project_id": "p", "binding:host_id": host,
                                 "security_groups": groups, "device_owner": "compute:nova"})

    s1, s2 = port("hv1", [s.id]), port("hv1", [s.id])
    assert (s1.attrs[CT_ZONE_ATTR], s2.attrs[CT_ZONE_ATTR]) == (1, 2)
    events.clear()
    # A new member of g, on another network: hv1 (where s's members apply "from g") recompiles.
    g1 = port("hv2", [g.id], other)
    assert events == [{"hv1", "hv2"}] and g1.attrs[CT_ZONE_ATTR] == 1
    events.clear()
    topo.update_port(g1.id, {"name": "renamed"})  # neither groups nor addresses: only its own host
    assert events == [{"hv2"}]
    # Zones are stable while bound where they are; a move gets the lowest free zone there; unbinding frees it.
    assert topo.update_port(s2.id, {"name": "x"}).attrs[CT_ZONE_ATTR] == 2
    topo.delete_port(s1.id)
    moved = topo.update_port(g1.id, {"binding:host_id": "hv1"})
    assert moved.attrs[CT_ZONE_ATTR] == 1
    assert CT_ZONE_ATTR not in topo.update_port(moved.id, {"binding:host_id": ""}).attrs
    # Stored, and not shown by the API.
    topo.close()
    again = Topology(str(tmp_path / "t.sqlite"))
    assert again.graph.port(s2.id).attrs[CT_ZONE_ATTR] == 2
    from apps.northbound import views

    assert CT_ZONE_ATTR not in views.port(again.graph, again.graph.port(s2.id))
    again.close()


def test_stateless_group_matches_every_packet_and_lets_no_reply_through_by_itself() -> None:
    b = Builder()
    b.hv(0)
    b.hv(1)
    graph_l3.put_sg(b.graph, SecurityGroup(id="sl", project_id="p", name="sl", stateful=False))
    graph_l3.put_sg_rule(b.graph, SecurityGroupRule(id="sl-in", project_id="p", security_group_id="sl",
                                                    direction="ingress", protocol="tcp", port_range_min=80,
                                                    port_range_max=80))
    net = b.network("n", cidr="10.0.0.0/24")
    b.port("client", net, "hv0", ip="10.0.0.10")  # port security off: only the server filters
    b.port("srv", net, "hv1", ip="10.0.0.20", **SEC, security_groups=["sl"])
    built = b.done()
    fab = fabric_of(built.graph)
    assert delivered_labels(built, send(fab, built, "client", **tcp(built, "client", "srv"))) == ["srv"]
    # The server's answer: no egress rule, and a stateless group keeps no connection to let it out.
    reply = tcp(built, "srv", "client", sport=80, dport=40000)
    assert send(fab, built, "srv", **reply).deliveries == []
    assert len(fab.switches["hv1"].pipeline.conntrack) == 0  # nothing was ever tracked
    graph_l3.put_sg_rule(built.graph, SecurityGroupRule(id="sl-out", project_id="p", security_group_id="sl",
                                                        direction="egress", protocol="tcp"))
    fab = fabric_of(built.graph)
    assert delivered_labels(built, send(fab, built, "srv", **reply)) == ["client"]
    # still packet by packet: another port is not let in by the connection it belongs to
    assert send(fab, built, "client", **tcp(built, "client", "srv", dport=81)).deliveries == []
    assert lint(compile_hypervisor(built.graph, "hv1")) == []


# -- rules without a remote group: one conjunctive match per group ------------------------------------------
def _groups_cloud() -> Built:
    """On hv0: a in group A (ingress TCP 80), b in B (ingress TCP 443 and 22), c in C (ingress TCP 22, the same
    rule as B's); client x (no port security) on hv1. No egress rule anywhere."""
    b = Builder()
    b.hv(0)
    b.hv(1)
    tcp_in = {"direction": "ingress", "protocol": "tcp"}
    group(b, "A", {**tcp_in, "port_range_min": 80, "port_range_max": 80})
    group(b, "B", {**tcp_in, "port_range_min": 443, "port_range_max": 443},
          {**tcp_in, "port_range_min": 22, "port_range_max": 22})
    group(b, "C", {**tcp_in, "port_range_min": 22, "port_range_max": 22})
    net = b.network("n", cidr="10.0.0.0/24")
    for i, g in enumerate("abc"):
        b.port(g, net, "hv0", ip=f"10.0.0.{10 + i}", **SEC, security_groups=[g.upper()])
    b.port("x", net, "hv1", ip="10.0.0.30")
    return b.done()


def test_a_member_passes_its_group_s_rule_and_is_committed() -> None:
    built = _groups_cloud()
    assert lint(compile_hypervisor(built.graph, "hv0")) == []
    fab = fabric_of(built.graph)
    assert delivered_labels(built, send(fab, built, "x", **tcp(built, "x", "a", dport=80))) == ["a"]
    zone = ct_zones(built.graph.ports_on("hv0"))[built.ports["a"].id]
    assert [z for z, _ in fab.switches["hv0"].pipeline.conntrack.connections] == [zone]  # committed in a's zone
    # a has no egress rule: its answer passes only as the reply of that committed connection
    assert delivered_labels(built, send(fab, built, "a", **tcp(built, "a", "x", sport=80, dport=40000))) == ["x"]
    assert send(fab, built, "a", **tcp(built, "a", "x", sport=81, dport=40000)).deliveries == []


def test_another_group_s_rule_on_the_same_hypervisor_lets_nothing_in() -> None:
    built = _groups_cloud()
    fab = fabric_of(built.graph)
    assert delivered_labels(built, send(fab, built, "x", **tcp(built, "x", "b", dport=443))) == ["b"]
    # B's and C's rules are in hv0's table, a is in neither group
    for dport in (443, 22):
        assert send(fab, built, "x", **tcp(built, "x", "a", dport=dport)).deliveries == []
    assert send(fab, built, "x", **tcp(built, "x", "c", dport=443)).deliveries == []
    assert send(fab, built, "x", **tcp(built, "x", "b", dport=80)).deliveries == []


def test_two_groups_with_the_same_rule_share_one_clause_flow() -> None:
    built = _groups_cloud()
    acl = STAGE_BY_NAME["ls_out_acl"]
    clause = [f for f in compile_hypervisor(built.graph, "hv0")
              if f.table_id == acl.table_id and ("tcp_dst", 22) in f.match]
    assert len(clause) == 1 and clause[0].priority == acl.priorities["rule"]
    assert len(clause[0].actions) == 2 and "'B-r1'" in clause[0].description and "'C-r0'" in clause[0].description
    fab = fabric_of(built.graph)
    assert delivered_labels(built, send(fab, built, "x", **tcp(built, "x", "b", dport=22))) == ["b"]
    assert delivered_labels(built, send(fab, built, "x", **tcp(built, "x", "c", dport=22))) == ["c"]


def test_a_rule_and_a_remote_group_rule_with_the_same_match_do_not_replace_each_other() -> None:
    """A plain rule's port range piece is a remote-group rule's third clause, match for match: the two kinds of
    conjunction sit at two priorities, so neither flow replaces the other, and each still does its job."""
    built = _remote_group_cloud(2, n_local=2)  # S: ingress TCP 1000-1999 from members of G
    graph_l3.put_sg(built.graph, SecurityGroup(id="P", project_id="p", name="P"))
    graph_l3.put_sg_rule(built.graph, SecurityGroupRule(id="P-r0", project_id="p", security_group_id="P",
                                                        direction="ingress", protocol="tcp", port_range_min=1000,
                                                        port_range_max=1999))
    from dataclasses import replace

    s1 = built.ports["s1"]
    built.graph.put_port(replace(s1, attrs={**s1.attrs, "security_groups": ["P"]}))  # s1: from anywhere
    flows = compile_hypervisor(built.graph, "hv0")
    assert lint(flows) == []
    acl = STAGE_BY_NAME["ls_out_acl"].table_id
    piece = [f for f in flows if f.table_id == acl and ("tcp_dst", port_masks(1000, 1999)[0]) in f.match
             and "reg5" not in dict(f.match)]
    assert len({f.priority for f in piece}) == 2  # the remote-group rule's clause and P's rule's, one each
    fab = fabric_of(built.graph)
    assert delivered_labels(built, send(fab, built, "g0", **tcp(built, "g0", "s0", dport=1500))) == ["s0"]
    assert send(fab, built, "other", **tcp(built, "other", "s0", dport=1500)).deliveries == []  # not in G
    assert delivered_labels(built, send(fab, built, "other", **tcp(built, "other", "s1", dport=1500))) == ["s1"]
    assert send(fab, built, "other", **tcp(built, "other", "s1", dport=2000)).deliveries == []
