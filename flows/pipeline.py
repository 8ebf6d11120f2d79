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
        "interface MAC of its subnet (dvr_mac). Anything unknown is dropped.",
        allowed_matches=frozenset({"in_port", "tunnel_id", "vlan_vid", "eth_src", "eth_type", "ipv4_dst", "ipv6_dst"}),
        priorities={"dvr_mac": 110, "vm_port": 100, "tunnel": 100, "provider": 100, "drop": 0},
        next_stages=("ls_in_arp_rsp", "ls_in_l2_lookup"),
    ),
    Stage(
        name="ls_in_arp_rsp",
        table_id=20,
        doc="ARP responder: an ARP request for a known port's IPv4 address in the "
        "sender's network is answered here, from the flows, back out of the in_port; "
        "it never floods across hypervisors. Requests a port makes for its own "
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
        "local port (via ls_out_deliver) or straight to the hosting hypervisor "
        "(tunnel with the network's VNI, or the provider network with its VLAN). "
        "Broadcast, multicast and unknown unicast are flooded to the network's local "
        "ports and, only when the packet came from a local port, to each remote "
        "hypervisor that hosts the network: never to any other network.",
        allowed_matches=frozenset(_REGS | {"eth_dst"}),
        priorities={"unicast": 100, "to_router": 100, "flood_from_remote": 10, "flood": 5, "drop": 0},
        next_stages=("lr_in_ip_input", "ls_out_deliver"),
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
        next_stages=("lr_in_arp_resolve",),
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
