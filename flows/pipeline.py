"""The integration-bridge pipeline, declared once, as data.

Every flow the compiler builds names its stage; :func:`flows.flow.make_flow`
checks the flow against the stage's declaration (allowed match fields, named
priorities, allowed next stages) so a malformed pipeline fails at compile time,
not as a black hole on a switch.

Registers (named once here, like OVN's ``REGBIT_*``):

- ``reg6`` (:data:`REG_NETWORK`): the logical network's key (not its VNI: VLAN ids
  repeat across physical networks; the key is unique per network).
- ``reg7`` (:data:`REG_INPORT`): the logical port key of the sending local port
  (0 when the packet came from another hypervisor or the provider network).
- ``reg5`` (:data:`REG_OUTPORT`): the logical port key chosen by L2 lookup.
- ``reg4`` (:data:`REG_FLAGS`): flag bits, :data:`FLAG_FROM_REMOTE` set when the
  packet entered from a tunnel or a provider network (it must never be sent back
  to the fabric: that is what keeps floods loop-free).
- ``reg3`` (:data:`REG_ROUTER`): the logical router's key, set when L2 lookup hands
  a frame addressed to a router interface MAC to the routing stages.
- ``reg0`` (:data:`REG_NEXTHOP`): the IPv4 next hop chosen by ``lr_in_ip_routing``
  (the destination itself for a connected subnet); ``xxreg0``
  (:data:`REG_NEXTHOP6`) the same for IPv6.
- ``reg8`` (:data:`REG_CT_ZONE`): the conntrack zone of the port whose security
  groups are being applied (set by ``ls_in_pre_acl`` / ``ls_out_pre_acl`` right before
  ``ct``), so one ``ct(commit, zone=reg8[0..15])`` flow serves every port.

Table ids leave gaps so the stages of later features (port security, ACLs,
routing, NAT) slot in between without renumbering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REG_NETWORK = "reg6"
REG_INPORT = "reg7"
REG_OUTPORT = "reg5"
REG_FLAGS = "reg4"
REG_ROUTER = "reg3"
REG_NEXTHOP = "reg0"
REG_NEXTHOP6 = "xxreg0"
REG_CT_ZONE = "reg8"
FLAG_FROM_REMOTE = 0x1

# The top 8 bits of every cookie carry the table id of the flow's stage, so
# `ovs-ofctl dump-flows br-int cookie=0x1e00000000000000/0xff00000000000000`
# lists one stage. The low 56 bits hash the flow's content (see flows.flow).
COOKIE_STAGE_SHIFT = 56
COOKIE_STAGE_MASK = 0xFF << COOKIE_STAGE_SHIFT


@dataclass(frozen=True)
class Stage:
    """One table of the pipeline."""

    name: str
    table_id: int
    doc: str
    allowed_matches: frozenset[str]
    priorities: dict[str, int] = field(hash=False, compare=False)
    next_stages: tuple[str, ...] = ()
    # Stages a flow may resubmit to and come back from, backwards too (a routed
    # packet re-enters L2 lookup in its destination network). Loop-free because
    # routing rewrites eth_dst to a port's MAC before it resubmits.
    resubmit_stages: tuple[str, ...] = ()
    # Named priorities a flow may add an offset to (routes: base + prefix length).
    ranged: frozenset[str] = frozenset()
    # Flows the switch adds itself (learn actions): reconciliation never deletes them.
    switch_owned: bool = False

    def priority(self, name: str, offset: int = 0) -> int:
        """Return the numeric priority declared under ``name`` (+ ``offset`` for a ranged one)."""
        try:
            base = self.priorities[name]
        except KeyError:
            raise PipelineError(f"stage {self.name} declares no priority {name!r}") from None
        if offset and (name not in self.ranged or not 0 <= offset <= 128):
            raise PipelineError(f"stage {self.name}: priority {name!r} takes no offset {offset}")
        return base + offset


class PipelineError(ValueError):
    """A flow that breaks the pipeline's declared rules."""


_L2 = {"eth_src", "eth_dst", "eth_type"}
_ARP = {"arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"}
_REGS = {REG_NETWORK, REG_INPORT, REG_OUTPORT, REG_FLAGS}

STAGES: tuple[Stage, ...] = (
    Stage(
        name="phy_classify",
        table_id=0,
        doc="Physical to logical: maps the OpenFlow in_port (a VM port, the tunnel "
        "port with its VNI, a provider patch port with its VLAN) to the logical "
        "network key and logical in-port. A routed frame from another hypervisor "
        "carries that hypervisor's DVR MAC as source: it is given back the router "
        "interface MAC of its subnet (dvr_mac). On a gateway hypervisor, what arrives on a "
        "gateway tunnel port (tg-*, UDP 4790) is source-NAT traffic of a router, to "
        "lr_gw_in (gateway_tunnel). Anything unknown is dropped.",
        allowed_matches=frozenset({"in_port", "tunnel_id", "vlan_vid", "eth_src", "eth_type", "ipv4_dst", "ipv6_dst"}),
        priorities={"dvr_mac": 110, "vm_port": 100, "tunnel": 100, "provider": 100, "gateway_tunnel": 100,
                    "drop": 0},
        next_stages=("ls_in_port_sec", "ls_in_arp_rsp", "ls_in_l2_lookup", "ext_in_fip", "lr_gw_in"),
    ),
    Stage(
        name="ls_in_port_sec",
        table_id=2,
        doc="Port security (anti-spoofing) of the sending local port. With port security "
        "on, a port may send only from its MAC and its fixed addresses (or an allowed "
        "address pair's MAC and address/CIDR), IPv6 link-local (fe80::/64) included (allow); "
        "ARP only with its own sender MAC and address (allow); a booting VM's DHCP "
        "request from 0.0.0.0, ARP probe (sender 0.0.0.0), and DAD / MLD / router "
        "solicitation from :: pass too (boot). Neighbour Advertisements for addresses it "
        "owns pass (nd_ok); any other advertisement, router advertisements and redirects, "
        "and DHCP server replies (UDP source port 67 / 547) are dropped (block). Everything "
        "else from a secured port, other ethertypes included, is dropped (default). A port "
        "with port security off passes everything (disabled).",
        allowed_matches=frozenset({REG_INPORT, "eth_src", "eth_type", "ipv4_src", "ipv6_src", "arp_sha", "arp_spa",
                                   "ip_proto", "udp_src", "udp_dst", "icmpv6_type", "ipv6_nd_target"}),
        priorities={"nd_ok": 140, "block": 130, "boot": 110, "allow": 100, "disabled": 100, "default": 0},
        next_stages=("ls_in_dhcp",),
    ),
    Stage(
        name="ls_in_dhcp",
        table_id=3,
        doc="Address assignment: a DHCP client message (UDP 68 -> 67) from a local port that has "
        "an address on a subnet with enable_dhcp goes to the controller, which answers it "
        "with that address and the subnet's options, straight back to the port (request: "
        "never flooded, never seen by another port); so does a router solicitation from a "
        "port on an IPv6 subnet with an ipv6_ra_mode (router_solicit), answered with the "
        "router advertisement of the subnet's router; and a DHCPv6 client message (UDP 546 -> 547) "
        "from a port on a subnet whose ipv6_address_mode is dhcpv6-stateful or -stateless "
        "(request). Anything else, and DHCP from a port "
        "whose subnets have DHCP off (a tenant's own server may answer), goes on to the "
        "security groups (default). What goes to the controller first passes the sending port's "
        "own meter (meter:N, per port), then ls_in_punt.",
        allowed_matches=frozenset({REG_INPORT, "eth_type", "ip_proto", "udp_src", "udp_dst", "icmpv6_type"}),
        priorities={"request": 100, "router_solicit": 100, "default": 0},
        next_stages=("ls_in_pre_acl", "ls_in_punt"),
    ),
    Stage(
        name="ls_in_punt",
        table_id=5,
        doc="The address-assignment slow path's way to the controller, shared by every local port: "
        "a packet that passed its port's meter in ls_in_dhcp passes the hypervisor's meter here, "
        "then goes to the controller (controller). So a flooding VM fills only its own meter's "
        "share and the hypervisor's meter bounds what the controller receives from it; both drop "
        "on the switch. Only ls_in_dhcp leads here.",
        allowed_matches=frozenset(),
        priorities={"controller": 0},
    ),
    Stage(
        name="ls_in_pre_acl",
        table_id=4,
        doc="Before the egress security-group rules of the sending port (Neutron's "
        "egress: from the VM). IPv4/IPv6 from a port with port security goes to the "
        "connection tracker in the port's zone (reg8 := zone, then ct(zone, "
        "table=ls_in_acl)) (track; a port whose groups are all stateless goes to ls_in_acl "
        "untracked); with no security group it has no rule there, so it "
        "is dropped, as in Neutron. Neighbour Discovery, MLD and DHCP/DHCPv6 client "
        "requests are never filtered by security groups (always); nor is anything from "
        "a port with port security off or a trusted network:* port, nor ARP (default).",
        allowed_matches=frozenset({REG_INPORT, "eth_type", "ip_proto", "udp_src", "udp_dst", "icmpv6_type"}),
        priorities={"always": 110, "track": 100, "default": 0},
        next_stages=("ls_in_acl", "ls_in_arp_rsp"),
    ),
    Stage(
        name="ls_in_acl",
        table_id=6,
        doc="The sending port's egress security-group rules, on tracked packets: "
        "conntrack-invalid is dropped (invalid); replies and related packets of "
        "committed connections pass (established); every other packet (a new "
        "connection's or an established one's original direction: so a removed rule cuts "
        "connections it allowed) passes only if one of the port's egress rules allows it, "
        "then is committed (ct(commit, zone=reg8); not for a stateless group). Every rule "
        "is an OVS conjunctive match. rule: the rules without a remote group, one "
        "conjunction per group: a flow per local port with port security (reg7) names "
        "its groups' conjunctions (clause 1), a flow per distinct rule match of the "
        "hypervisor's groups (the rule's fields) names those of the groups having it "
        "(clause 2), a conj_id flow per group and IP version goes on; so a rule costs a "
        "flow per hypervisor, not per member. conj: each remote-group rule a conjunction "
        "of its own, linear in members + ports; a priority above rule because its clause "
        "flows can have the same match as a rule's. Anything else is dropped (drop).",
        allowed_matches=frozenset({REG_INPORT, "ct_state", "conj_id", "eth_type", "ip_proto", "ipv4_dst", "ipv6_dst",
                                   "tcp_dst", "udp_dst", "icmpv4_type", "icmpv4_code", "icmpv6_type",
                                   "icmpv6_code"}),
        priorities={"invalid": 200, "established": 190, "conj": 110, "rule": 100, "drop": 0},
        next_stages=("ls_in_arp_rsp",),
    ),
    Stage(
        name="ext_in_fip",
        table_id=10,
        doc="From an external network (a provider network with router:external), on a "
        "hypervisor that hosts ports with floating IPs on it: an ARP request for one of "
        "those floating IPs is answered with the floating IP's own MAC (arp_answer: only "
        "the hosting hypervisor answers, no MAC is shared between hosts; a gratuitous ARP "
        "for it, sent by its new host after a move, is never answered: garp) and an ARP for "
        "or from a floating IP teaches lr_in_mac_binding the sender's MAC (arp_learn); "
        "an IPv4 packet to a floating IP's MAC and address is DNATed to the fixed address "
        "(stateless 1:1), routed into the port's network and handed to L2 lookup (dnat). "
        "On a gateway hypervisor of a router: an ARP request for the router's gateway "
        "address is answered only while this gateway is the active one, i.e. every gateway "
        "before it in the router's list is unreachable (gw_arp: a fast-failover group whose "
        "buckets watch the tunnels to those gateways); IPv4 to the gateway address goes "
        "through the router's conntrack zone to be un-NATed (gw_unsnat), on to lr_gw_unsnat. "
        "IPv6 (no NAT): a Neighbour Advertisement teaches lr_in_mac_binding its sender's MAC "
        "(arp_learn); on the active gateway a Neighbour Solicitation for the router's IPv6 "
        "gateway address is answered (gw_nd, gated as gw_arp, finished by ls_in_nd_rsp_tll), "
        "IPv6 to the router's gateway MAC is routed by the router into its subnets (gw_in6), "
        "except what is addressed to the gateway address itself (gw_own6, dropped). "
        "Everything else goes on to L2 lookup of the external network (default).",
        allowed_matches=frozenset({REG_NETWORK, "eth_type", "eth_dst", "arp_op", "arp_spa", "arp_tpa", "ipv4_dst",
                                   "ipv6_dst", "ip_proto", "icmpv6_type", "ipv6_nd_target"}),
        priorities={"garp": 110, "arp_answer": 100, "arp_learn": 100, "dnat": 100, "gw_arp": 100, "gw_unsnat": 100,
                    "gw_nd": 100, "gw_own6": 95, "gw_in6": 90, "default": 0},
        next_stages=("lr_gw_unsnat", "ls_in_l2_lookup", "lr_in_ip_routing"),
        resubmit_stages=("ls_in_nd_rsp_tll",),
    ),
    Stage(
        name="lr_gw_in",
        table_id=12,
        doc="Gateway hypervisor, from a gateway tunnel: the tunnel key names the router "
        "whose source NAT the sending hypervisor chose this gateway for; the packet (routed "
        "there already) is routed again by that router here (snat: reg3 := the router; one "
        "more hop, as Neutron's SNAT namespace is) and so reaches lr_in_fip_snat. Unknown "
        "key: drop.",
        allowed_matches=frozenset({"tunnel_id"}),
        priorities={"snat": 100, "drop": 0},
        next_stages=("lr_in_ip_routing",),
    ),
    Stage(
        name="lr_gw_unsnat",
        table_id=13,
        doc="Gateway hypervisor, after the router's conntrack zone un-NATed a packet to its "
        "gateway address: a reply (or related ICMP) of a connection the router source-NATed "
        "goes to routing, now addressed to the VM's fixed address (reply); anything else "
        "to the gateway address is dropped: nothing outside opens a connection through SNAT.",
        allowed_matches=frozenset({REG_ROUTER, "ct_state"}),
        priorities={"reply": 100, "drop": 0},
        next_stages=("lr_in_ip_routing",),
    ),
    Stage(
        name="ls_in_arp_rsp",
        table_id=20,
        doc="ARP responder: an ARP request for a known port's IPv4 address in the "
        "sender's network is answered here, from the flows, back out of the in_port; "
        "on an overlay it never floods across hypervisors. On a provider network only "
        "the ports bound here or nowhere are answered here: a request for a port on "
        "another hypervisor crosses the physical network like any broadcast and that "
        "port answers itself. Requests a port makes for its own "
        "address (gratuitous ARP, duplicate detection) pass on unanswered.",
        allowed_matches=frozenset({REG_NETWORK, REG_INPORT, "eth_type", "arp_op", "arp_tpa"}),
        priorities={"own_address": 110, "answer": 100, "default": 0},
        next_stages=("ls_in_nd_rsp",),
    ),
    Stage(
        name="ls_in_nd_rsp",
        table_id=22,
        doc="IPv6 Neighbour Discovery responder: a Neighbour Solicitation for a known "
        "port's IPv6 address (a router interface's included) is turned, in place, into "
        "the Neighbour Advertisement (flags: router for a router port, solicited, "
        "override) and finished by ls_in_nd_rsp_tll, from the flows. Duplicate address "
        "detection (source ::) and a port asking for its own address pass on unanswered.",
        allowed_matches=frozenset({REG_NETWORK, REG_INPORT, "eth_type", "ip_proto", "icmpv6_type",
                                   "ipv6_nd_target", "ipv6_src"}),
        priorities={"own_address": 110, "dad": 110, "answer": 100, "default": 0},
        next_stages=("ls_in_l2_lookup",),
        resubmit_stages=("ls_in_nd_rsp_tll",),
    ),
    Stage(
        name="ls_in_nd_rsp_tll",
        table_id=23,
        doc="Second half of the ND responder, reached by resubmit only: now that the "
        "packet is an advertisement, OVS lets the target link-layer address be set; "
        "the answer goes back out of the in_port.",
        allowed_matches=frozenset({REG_NETWORK, "eth_type", "ip_proto", "icmpv6_type", "ipv6_nd_target"}),
        priorities={"answer": 100, "drop": 0},
    ),
    Stage(
        name="ls_in_l2_lookup",
        table_id=30,
        doc="L2 lookup within the logical network: a frame from a local port to a "
        "router interface MAC goes to the router's stages (to_router); a known unicast MAC goes to its "
        "local port (via its ingress ACL, ls_out_pre_acl) or straight to the hosting hypervisor "
        "(tunnel with the network's VNI, or the provider network with its VLAN). "
        "Broadcast, multicast and unknown unicast are flooded to the network's local "
        "ports and, only when the packet came from a local port, to each remote "
        "hypervisor that hosts the network: never to any other network. On a provider "
        "(flat or VLAN) network the physical switches know where each MAC is, so no "
        "hypervisor holds a flow per remote port: unicast from a local port to any MAC "
        "not local goes out to the provider network, and unicast from the provider "
        "network to a MAC not here is dropped (provider_unicast).",
        allowed_matches=frozenset(_REGS | {"eth_dst"}),
        priorities={"unicast": 100, "to_router": 100, "provider_unicast": 50, "flood_from_remote": 10, "flood": 5,
                    "drop": 0},
        next_stages=("lr_in_ip_input", "ls_out_pre_acl", "ls_out_deliver"),
    ),
    Stage(
        name="lr_in_ip_input",
        table_id=40,
        doc="Router input: an ICMP echo request to one of the router's own addresses "
        "(IPv4 or IPv6) is answered here, out of the in_port (echo_reply); an IPv4 packet "
        "whose TTL would expire here goes to the controller, which answers ICMP time "
        "exceeded from the router's address (ttl_expired: what traceroute shows; "
        "rate-limited, never in steady-state traffic); everything else goes on to routing.",
        allowed_matches=frozenset({REG_ROUTER, REG_NETWORK, "eth_type", "ip_proto", "icmpv4_type", "ipv4_dst",
                                   "icmpv6_type", "ipv6_dst", "nw_ttl"}),
        priorities={"echo_reply": 100, "ttl_expired": 95, "default": 0},
        next_stages=("lr_in_ip_routing",),
    ),
    Stage(
        name="lr_in_ip_routing",
        table_id=42,
        doc="Routing, longest prefix first (priority 100 + prefix length): the router's "
        "connected subnets and its extra routes. Decrements the TTL / hop limit "
        "(an expired packet is dropped), sets the source MAC to the router "
        "interface on the destination network, the logical network to that network "
        "and the next hop (reg0 / xxreg0). No route: drop.",
        allowed_matches=frozenset({REG_ROUTER, "eth_type", "ipv4_dst", "ipv6_dst"}),
        priorities={"route": 100, "drop": 0},
        ranged=frozenset({"route"}),
        next_stages=("lr_in_arp_resolve", "lr_in_fip_snat"),
    ),
    Stage(
        name="lr_in_arp_resolve",
        table_id=44,
        doc="Next hop to MAC, from the topology (no ARP inside the cloud): sets the "
        "destination MAC to the next hop port's MAC and, when that port lives on "
        "another hypervisor, the source MAC to this hypervisor's DVR MAC; then the "
        "frame re-enters L2 lookup in its destination network. Unknown next hop: drop.",
        allowed_matches=frozenset({REG_ROUTER, REG_NETWORK, REG_NEXTHOP, REG_NEXTHOP6, "eth_type"}),
        priorities={"resolved": 100, "drop": 0},
        resubmit_stages=("ls_in_l2_lookup",),
    ),
    Stage(
        name="lr_in_fip_snat",
        table_id=46,
        doc="Routed out of the external gateway: a packet from a local port's fixed "
        "address that has a floating IP (matched on the in-port and the fixed address) "
        "leaves with the floating IP as source address and the floating IP's MAC as "
        "source MAC (snat). Only the hypervisor hosting the port holds the flow. Any other "
        "source leaves through its router's source NAT, if the router has one: on a "
        "gateway hypervisor, a packet that came from a gateway tunnel (reg7 = 0) is "
        "committed in the router's conntrack zone with its source NATed to the router's "
        "gateway address (gateway_snat); from a local port, it goes to the router's "
        "active gateway: tunnel key := the router's key, then a fast-failover group whose "
        "buckets output to the gateways' tunnel ports in the router's order, each live while "
        "BFD says its gateway is (to_gateway; on a gateway itself, its own bucket NATs "
        "here). IPv6 is not translated: it leaves from this hypervisor with its DVR MAC as "
        "source MAC (v6_out). No floating IP and no SNAT: dropped, fixed addresses never show "
        "on the external network (default).",
        allowed_matches=frozenset({REG_NETWORK, REG_INPORT, REG_ROUTER, "eth_type", "ipv4_src"}),
        priorities={"snat": 100, "v6_out": 100, "gateway_snat": 90, "to_gateway": 80, "drop": 0},
        next_stages=("lr_in_ext_resolve",),
    ),
    Stage(
        name="lr_in_ext_resolve",
        table_id=48,
        doc="Next hop on the external network to MAC. A floating IP hosted here "
        "(hairpin: a VM to its own or a neighbour's floating IP) is taken straight back to "
        "ext_in_fip with the in-port cleared, never onto the wire (local_fip); any other "
        "next hop is looked up in lr_in_mac_binding (lookup), then sent by lr_in_ext_output.",
        allowed_matches=frozenset({REG_NETWORK, REG_NEXTHOP, "eth_type"}),
        priorities={"local_fip": 110, "lookup": 100, "drop": 0},
        next_stages=("lr_in_ext_output",),
        resubmit_stages=("ext_in_fip", "lr_in_mac_binding"),
    ),
    Stage(
        name="lr_in_mac_binding",
        table_id=49,
        doc="External neighbours' MACs, learned by the switch itself (OVS learn action in "
        "ext_in_fip) from ARP addressed to a floating IP hosted here: (external network, "
        "next hop) -> eth_dst; IPv6 neighbours from Neighbour Advertisements (next hop in "
        "xxreg0). These flows belong to the switch: reconciliation leaves them "
        "alone and they age out after LEARNED_IDLE_TIMEOUT seconds unused. Miss: eth_dst "
        "stays 00:00:00:00:00:00 (default).",
        allowed_matches=frozenset({REG_NETWORK, REG_NEXTHOP, REG_NEXTHOP6}),
        priorities={"learned": 100, "default": 0},
        switch_owned=True,
    ),
    Stage(
        name="lr_in_ext_output",
        table_id=50,
        doc="Out to the external network through the provider bridge (out). A next hop "
        "whose MAC is not known yet goes to the controller, which sends an ARP request "
        "for it from the floating IP (unresolved; rate-limited, the packet is dropped, as "
        "OVN does); the reply is learned by ext_in_fip.",
        allowed_matches=frozenset({REG_NETWORK, "eth_dst"}),
        priorities={"unresolved": 110, "out": 100, "drop": 0},
    ),
    Stage(
        name="ls_out_pre_acl",
        table_id=52,
        doc="Before the ingress security-group rules of the destination local port "
        "(reg5; Neutron's ingress: to the VM), reached from L2 lookup (goto for unicast, "
        "resubmit for each copy of a flood). IPv4/IPv6 to a port with port security goes "
        "to the connection tracker in that port's zone (reg8 := zone, then ct(zone, "
        "table=ls_out_acl)) (track; untracked for a port whose groups are all stateless). "
        "Neighbour Discovery, MLD, router advertisements and "
        "DHCP/DHCPv6 server replies are never filtered by security groups (always); nor is "
        "anything to a port with port security off or a trusted network:* port, nor ARP "
        "(default).",
        allowed_matches=frozenset({REG_OUTPORT, "eth_type", "ip_proto", "udp_src", "udp_dst", "icmpv6_type"}),
        priorities={"always": 110, "track": 100, "default": 0},
        next_stages=("ls_out_acl", "ls_out_deliver"),
    ),
    Stage(
        name="ls_out_acl",
        table_id=54,
        doc="The destination port's ingress security-group rules, on tracked packets, "
        "with the same structure as ls_in_acl: invalid dropped (invalid), replies and "
        "related pass (established), anything else passes only if an ingress rule of the "
        "port allows it (rule: per-group conjunctions, the port on reg5; conj: "
        "remote-group rules; remote prefixes and groups matched on the source address), "
        "committed in the port's zone; else dropped (drop).",
        allowed_matches=frozenset({REG_OUTPORT, "ct_state", "conj_id", "eth_type", "ip_proto", "ipv4_src",
                                   "ipv6_src", "tcp_dst", "udp_dst", "icmpv4_type", "icmpv4_code", "icmpv6_type",
                                   "icmpv6_code"}),
        priorities={"invalid": 200, "established": 190, "conj": 110, "rule": 100, "drop": 0},
        next_stages=("ls_out_deliver",),
    ),
    Stage(
        name="ls_out_deliver",
        table_id=60,
        doc="Logical to physical: outputs to the OpenFlow port of the logical out-port "
        "chosen in reg5. A packet is never sent back out of the port it came from.",
        allowed_matches=frozenset({REG_OUTPORT}),
        priorities={"deliver": 100, "drop": 0},
        next_stages=(),
    ),
)

STAGE_BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
STAGE_BY_TABLE: dict[int, Stage] = {s.table_id: s for s in STAGES}


def stage(name: str) -> Stage:
    """Return the stage declared as ``name``."""
    return STAGE_BY_NAME[name]


def _check_declaration() -> None:
    """Fail at import if the declaration itself is inconsistent."""
    for st in STAGES:
        for nxt in st.resubmit_stages:
            if nxt not in STAGE_BY_NAME:
                raise PipelineError(f"{st.name} names unknown resubmit stage {nxt}")
        for nxt in st.next_stages:
            target = STAGE_BY_NAME.get(nxt)
            if target is None:
                raise PipelineError(f"{st.name} names unknown next stage {nxt}")
            if target.table_id <= st.table_id:
                raise PipelineError(f"{st.name} -> {nxt}: goto must move forward")
        if not 0 <= st.table_id < 255:
            raise PipelineError(f"{st.name}: table id out of range")
    if len(STAGE_BY_TABLE) != len(STAGES) or len(STAGE_BY_NAME) != len(STAGES):
        raise PipelineError("duplicate stage name or table id")


_check_declaration()
