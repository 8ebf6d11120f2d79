"""Stateful security groups on OVS conntrack: ``ls_in_pre_acl`` / ``ls_in_acl`` (egress) and
``ls_out_pre_acl`` / ``ls_out_acl`` (ingress).

Neutron's directions are the VM's: *egress* rules filter what a port sends (applied
on its hypervisor right after port security, matched on ``reg7``), *ingress* rules
what it receives (applied on the destination's hypervisor after L2 lookup chose
``reg5``). A packet between two ports therefore passes the sender's egress rules in
the sender's conntrack zone and the receiver's ingress rules in the receiver's zone,
routed or not, on one hypervisor or two.

Per direction: the pre-ACL stage loads the port's zone into ``reg8`` and sends IPv4
and IPv6 to ``ct(zone, table=<acl>)``. In the ACL stage, invalid packets are dropped,
replies and related packets of committed connections pass, and every other packet
(a new connection's, or the original direction of an established one: a removed rule
cuts what it allowed, as Neutron does) must match a rule of the port; then it is
committed (``ct(commit, zone=reg8)``, one action shared by every port) and goes on.

Each port has its own zone (:func:`ct_zones`): stable (stored with the port by the
topology when it is bound), unique per hypervisor, so two tenants' overlapping
addresses never share conntrack state.

A port whose groups are all stateless (Neutron's ``stateful: false``) skips conntrack:
its rules are matched packet by packet and nothing is committed, so a reply passes
only if a rule of the other direction allows it, as Neutron specifies. Whether a plain
rule's match commits is its group's choice (the API refuses a port mixing stateful and
stateless groups, as Neutron does).

Every rule is an OVS conjunctive match, so no rule costs a flow per member port:

- a rule without a remote group ("plain") is part of its group's conjunction (as in
  Neutron's OVS firewall), at the ``rule`` priority: per direction, one flow per local
  member port lists the conjunctions of the port's groups (dimension 1, the port's
  ``acl`` unit), one flow per distinct rule match of the local groups lists the
  conjunctions of the groups having such a rule (dimension 2: identical rules of
  several groups share one flow), and one ``conj_id`` flow per group commits the
  connection (or not: a stateless group) and goes on. A rule added to a group costs one
  flow per match piece on each hypervisor hosting a member, whatever the member count;
- a rule with a remote group is a conjunction of its own, at the ``conj`` priority, so
  "from members of G" costs flows in proportion to (local ports applying it) + (G's
  member addresses) + (port range pieces), never their product.

The two kinds sit at two priorities because their clause flows can have the same match
(a plain rule's port range piece is a remote-group rule's third clause, a plain rule's
/32 prefix a member address clause) and OVS keeps one flow per (table, priority, match);
a packet whose conjunctions at ``conj`` do not complete falls through to those at
``rule`` (OVS's classifier drops back through the priorities of the soft matches).

Ports with port security and no group get no rule: everything but the always-allowed
basics (Neighbour Discovery, MLD, DHCP) is dropped, as Neutron's OVS firewall and OVN's
``neutron_pg_drop`` do. Ports with port security off and trusted ports (``network:*``)
are not filtered.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import netaddr

from flows.flow import CT, CT_INV, CT_REL, CT_RPL, CT_TRK, Conjunction, Flow, MatchValue, SetField, make_flow
from flows.pipeline import REG_CT_ZONE, REG_INPORT, REG_OUTPORT, PipelineError, Stage, stage
from flows.portsec import is_secured, prefix_match
from flows.shared import shared_flow
from topology import graph_l3
from topology.ctzones import ZONE_MAX, ZONE_MIN, stored_zone
from topology.graph import TopologyGraph
from topology.model import Port
from topology.model_l3 import SecurityGroup, SecurityGroupRule
from topology.secgroups import protocol_number

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58



@dataclass(frozen=True)
class Direction:
    """One side of the ACL: its stages, the port register, the remote address fields, what always passes."""

    name: str  # the rule direction it applies: "egress" or "ingress"
    pre: Stage
    acl: Stage
    after: Stage
    reg: str
    remote: dict[int, str]  # eth_type -> field the remote prefix / group address is matched on
    always: tuple[tuple[int, int, str, int], ...]  # (eth_type, ip_proto, field, value)


_ND_MLD = (130, 131, 132, 133, 135, 136, 143)  # MLD, RS, NS, NA (port security vets NA and drops RA)
EGRESS = Direction(
    "egress", stage("ls_in_pre_acl"), stage("ls_in_acl"), stage("ls_in_arp_rsp"), REG_INPORT,
    {ETH_IPV4: "ipv4_dst", ETH_IPV6: "ipv6_dst"},
    (*((ETH_IPV6, ICMPV6, "icmpv6_type", t) for t in _ND_MLD), (ETH_IPV4, UDP, "udp_dst", 67),
     (ETH_IPV6, UDP, "udp_dst", 547)),
)
INGRESS = Direction(
    "ingress", stage("ls_out_pre_acl"), stage("ls_out_acl"), stage("ls_out_deliver"), REG_OUTPORT,
    {ETH_IPV4: "ipv4_src", ETH_IPV6: "ipv6_src"},
    (*((ETH_IPV6, ICMPV6, "icmpv6_type", t) for t in (*_ND_MLD, 134)), (ETH_IPV4, UDP, "udp_dst", 68),
     (ETH_IPV6, UDP, "udp_dst", 546)),
)
COMMIT = CT(commit=True, zone=REG_CT_ZONE)


# -- zones ---------------------------------------------------------------------------------
def ct_zones(ports: Iterable[Port]) -> dict[str, int]:
    """Port id -> conntrack zone for a hypervisor's local ports.

    The zone the topology stored with the port when it was bound; a port without one
    (a graph not made by :class:`topology.state.Topology`, or a duplicate) gets the
    lowest zone no other port uses, in port key order.
    """
    ports = sorted(ports, key=lambda p: p.key)
    zones: dict[str, int] = {}
    used: set[int] = set()
    for p in ports:
        zone = stored_zone(p)
        if zone is not None and zone not in used:
            zones[p.id] = zone
            used.add(zone)
    free = (z for z in range(ZONE_MIN, ZONE_MAX + 1) if z not in used)
    for p in ports:
        if p.id not in zones:
            zones[p.id] = next(free)
    return zones


# -- rule fields ---------------------------------------------------------------------------
def port_masks(lo: int, hi: int, width: int = 16) -> list[MatchValue]:
    """[lo, hi] as the fewest (value, mask) pairs (a single port as a plain int), like Neutron's OVS firewall."""
    if not 0 <= lo <= hi < 1 << width:
        raise ValueError(f"bad port range {lo}-{hi}")
    full = (1 << width) - 1
    out: list[MatchValue] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << width  # the largest aligned block starting at lo...
        while size > hi - lo + 1:  # ...that fits
            size >>= 1
        out.append(lo if size == 1 else (lo, full & ~(size - 1)))
        lo += size
    return out


def _eth_type(rule: SecurityGroupRule) -> int:
    return ETH_IPV6 if rule.ethertype == "IPv6" else ETH_IPV4


def rule_matches(rule: SecurityGroupRule) -> tuple[dict[str, MatchValue], list[dict[str, MatchValue]]]:
    """(protocol part, alternatives for the port range part) of a rule's match, without remotes or ports.

    ``icmp`` on IPv6 means ICMPv6, as in Neutron. Port ranges are matched for TCP and UDP
    (the fields OVS has here); other protocols match on the protocol alone.
    """
    eth = _eth_type(rule)
    base: dict[str, MatchValue] = {"eth_type": eth}
    proto = protocol_number(rule.protocol)
    if proto is None:
        return base, [{}]
    if proto == ICMP and eth == ETH_IPV6:
        proto = ICMPV6
    base["ip_proto"] = proto
    pmin, pmax = rule.port_range_min, rule.port_range_max
    if proto in (ICMP, ICMPV6) and pmin is not None:
        prefix = "icmpv4" if proto == ICMP else "icmpv6"
        base[f"{prefix}_type"] = pmin
        if pmax is not None:
            base[f"{prefix}_code"] = pmax
        return base, [{}]
    if proto in (TCP, UDP) and pmin is not None and pmax is not None:
        field = "tcp_dst" if proto == TCP else "udp_dst"
        return base, [{field: v} for v in port_masks(pmin, pmax)]
    return base, [{}]


def member_addresses(graph: TopologyGraph, sg_id: str, eth_type: int) -> list[MatchValue]:
    """The addresses of a group's members of one IP version (fixed and allowed pairs), as match values."""
    from flows.portsec import port_addresses

    version = 6 if eth_type == ETH_IPV6 else 4
    out: dict[MatchValue, None] = {}
    for port in sorted(graph_l3.sg_members(graph, sg_id), key=lambda p: p.key):
        for _, net in port_addresses(port):
            if net.version == version:
                value = prefix_match(net)
                if value is not None:
                    out[value] = None
    return list(out)


def conj_ids(rules: Iterable[SecurityGroupRule]) -> dict[str, int]:
    """Rule id -> conjunction id: content-derived (a hash of the rule id), nonzero, unique here.

    A collision (1 in 2^31 per pair) moves the later rule id, in id order, to the next
    free value; ids therefore stay stable as rules come and go.
    """
    out: dict[str, int] = {}
    used: set[int] = set()
    for rule_id in sorted({r.id for r in rules}):
        cid = int.from_bytes(hashlib.blake2b(rule_id.encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF or 1
        while cid in used:
            cid = cid % 0x7FFFFFFF + 1
        used.add(cid)
        out[rule_id] = cid
    return out


# -- flows ---------------------------------------------------------------------------------
MemberSpec = dict[tuple[str, int, str], tuple[Conjunction, ...]]
"""(direction, eth_type, remote group id) -> the member-address clauses of the rules naming that group
(empty while the group has no member address of that IP version: such a rule is not live)."""


def acl_flows(graph: TopologyGraph, local_ports: list[Port]) -> list[Flow]:
    """Every flow of the four ACL stages for a hypervisor's local ports."""
    def members_of(sg_id: str, eth: int) -> list[MatchValue]:
        key = (sg_id, eth)
        if key not in cache:
            cache[key] = member_addresses(graph, sg_id, eth)
        return cache[key]

    cache: dict[tuple[str, int], list[MatchValue]] = {}
    flows, spec = acl_base(graph, local_ports, lambda sg_id, eth: bool(members_of(sg_id, eth)))
    zones = ct_zones(local_ports)
    gcids = allocate_gcids(g for port in local_ports for g in port_group_ids(port))
    for port in local_ports:
        flows += acl_port(graph, port, zones[port.id], gcids)
    flows += group_flows(graph, gcids)
    addresses = {(d, eth, a) for d, eth, sg_id in spec for a in members_of(sg_id, eth)}
    for d, eth, address in sorted(addresses, key=repr):
        flows += member_clause(spec, d, eth, address, lambda sg_id, e, a: a in members_of(sg_id, e))
    return _dedupe(flows)


def acl_base(graph: TopologyGraph, local_ports: list[Port],
             has_members: Callable[[str, int], bool]) -> tuple[list[Flow], MemberSpec]:
    """The ACL flows of the local ports except the member-address clauses, and what those clauses need.

    A remote-group rule's member-address clause is one flow per address of the group, shared by
    every rule (of any local port) naming a group that holds the address: :func:`member_clause`
    builds it from the returned spec, one address at a time, so that a member joining or leaving a
    group costs one flow per hypervisor, not a recompilation of the hypervisor's rules.
    ``has_members(group, eth_type)``: whether the group has a member address of that IP version.
    """
    secured = [p for p in local_ports if is_secured(p)]
    rules_of = {p.id: _port_rules(graph, p) for p in secured}
    ids = conj_ids(r for rules in rules_of.values() for r in rules if r.remote_group_id)
    flows: list[Flow] = []
    spec: dict[tuple[str, int, str], set[Conjunction]] = {}
    for d in (EGRESS, INGRESS):
        flows += shared_flow(("acl_defaults", d.name), lambda d: tuple(_defaults(d)), d)  # the same everywhere
        conj: dict[tuple, list[Conjunction]] = {}  # clause flow (match items) -> its conjunction actions
        conj_rules: dict[str, SecurityGroupRule] = {}
        for port in secured:  # (the ports' own flows, and the rules without a remote group: acl_port, group_flows)
            for rule in rules_of[port.id]:
                if rule.direction == d.name and rule.remote_group_id:
                    conj_rules[rule.id] = rule
                    _clause(conj, (d.reg, port.key), rule, ids[rule.id], 1)
        stateful = _stateful_rules(graph, conj_rules.values())
        flows += _conjunctions(d, conj, conj_rules, ids, stateful, has_members, spec)
    return _dedupe(flows), {k: tuple(sorted(v, key=lambda a: (a.id, a.clause))) for k, v in spec.items()}


def acl_port(graph: TopologyGraph, port: Port, zone: int, gcids: dict[str, int]) -> list[Flow]:
    """One local port's own ACL flows: into conntrack in its zone, and its membership clauses.

    ``gcids``: the local groups' conjunction ids (:func:`allocate_gcids`). What the port's groups'
    rules match is shared by every member here (:func:`group_flows`), so these flows depend
    only on the port, its zone and its groups: a rule added to a group changes none of them.
    """
    if not is_secured(port):
        return []
    return [*acl_track(graph, port, zone), *_membership(graph, port, gcids)]


def acl_track(graph: TopologyGraph, port: Port, zone: int, stateless: bool | None = None) -> list[Flow]:
    """A local port's way into its ACL stages (conntrack in its zone, or none for stateless groups)."""
    if not is_secured(port):
        return []
    if stateless is None:
        stateless = _stateless(graph, port)
    return [*_track(EGRESS, port, zone, stateless), *_track(INGRESS, port, zone, stateless)]


# -- rules without a remote group: one conjunctive match per group --------------------------------------
Piece = tuple[str, tuple[tuple[str, MatchValue], ...]]
"""(direction, match items): one flow's worth of a plain rule (a rule has one per port range piece)."""
GCID_BIT = 0x80000000  # set in every group's conjunction id, never in a remote-group rule's (conj_ids)


def port_group_ids(port: Port | None) -> tuple[str, ...]:
    """The ids of the groups whose rules filter a port (none without port security), as its record lists them."""
    if port is None or not is_secured(port):
        return ()
    return tuple(dict.fromkeys(port.attrs.get("security_groups") or ()))


@functools.lru_cache(maxsize=1 << 16)
def gcid_base(sg_id: str) -> int:
    """A group's preferred conjunction id: a hash of its id, with GCID_BIT set (see :func:`allocate_gcids`)."""
    return GCID_BIT | int.from_bytes(hashlib.blake2b(sg_id.encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF


def allocate_gcids(group_ids: Iterable[str]) -> dict[str, int]:
    """Group id -> its conjunction id on a hypervisor whose local ports are in ``group_ids``.

    Content-derived (:func:`gcid_base`), so every increment agrees, and unique among the
    hypervisor's groups: two groups sharing an id would let a member of one pass the other's
    rules. A collision (1 in 2^31 per pair of local groups) moves the later group, in id order,
    to the next free value, as :func:`conj_ids` does; the incremental engine rebuilds the
    hypervisor when a change meets one (flows.engine_groups). The same id serves both directions:
    conjunction ids are per table. GCID_BIT keeps them apart from the remote-group rules' ids.
    """
    out: dict[str, int] = {}
    used: set[int] = set()
    for sg_id in sorted(set(group_ids)):
        cid = gcid_base(sg_id)
        while cid in used:
            cid = GCID_BIT | ((cid + 1) & 0x7FFFFFFF)
        used.add(cid)
        out[sg_id] = cid
    return out


def rule_pieces(rule: SecurityGroupRule) -> tuple[Piece, ...]:
    """A plain rule's matches (one per port range piece), without the port; none for a remote-group rule."""
    if not _plain(rule):
        return ()
    return shared_flow(("acl_pieces", rule), _build_pieces, rule)


def _build_pieces(rule: SecurityGroupRule) -> tuple[Piece, ...]:
    d = _DIRECTIONS[rule.direction]
    base, alternatives = _rule_base(d, rule)
    return tuple(dict.fromkeys((d.name, tuple(sorted({**base, **alt}.items()))) for alt in alternatives))


def group_flows(graph: TopologyGraph, gcids: dict[str, int]) -> list[Flow]:
    """The local groups' conjunctions (``gcids``: their ids here): each group's conj_id flows, and one flow
    per distinct match of their plain rules, shared by every group having it."""
    flows: list[Flow] = []
    clauses: dict[Piece, dict[str, list[str]]] = {}
    for sg_id in sorted(gcids):
        sg = graph.get("sg", sg_id)
        if sg is None:
            continue
        flows += gconj_flows(sg, gcids[sg_id])
        for rule in graph_l3.sg_rules(graph, sg_id):
            for piece in rule_pieces(rule):
                clauses.setdefault(piece, {}).setdefault(sg_id, []).append(rule.id)
    for (direction, match), groups in clauses.items():
        flows += gclause_flow(direction, match, groups, gcids)
    return flows


def gconj_flows(sg: SecurityGroup, cid: int) -> tuple[Flow, ...]:
    """A group's conj_id flows: a packet one of its rules allows, from or to one of its members, goes on
    (committed, unless the group is stateless)."""
    return shared_flow(("acl_gconj", sg.id, sg.stateful, cid), lambda: tuple(_build_gconj(sg, cid)))


def _build_gconj(sg: SecurityGroup, cid: int) -> Iterator[Flow]:
    for d in (EGRESS, INGRESS):
        for eth in (ETH_IPV4, ETH_IPV6):  # eth_type: OVS refuses ct() on a flow whose match does not say IP
            yield make_flow(d.acl, "rule", {"conj_id": cid, "eth_type": eth}, [COMMIT] if sg.stateful else [],
                            goto=d.after, description=f"{d.name}: a rule of group {sg.id} allows it"
                            + ("" if sg.stateful else " (stateless)"))


def gclause_flow(direction: str, match: tuple[tuple[str, MatchValue], ...], groups: Mapping[str, Iterable[str]],
                 gcids: dict[str, int]) -> tuple[Flow, ...]:
    """The rule clause of the groups ``groups`` (group -> ids of its rules having this match): one flow
    (none without a group), whatever the number of groups, rules and members."""
    if not groups:
        return ()
    acts = tuple(sorted((Conjunction(gcids[g], 2, 2) for g in groups), key=lambda a: a.id))
    rules = tuple(sorted({r for ids in groups.values() for r in ids}))
    key = ("acl_gclause", direction, match, acts, rules, tuple(sorted(groups)))
    return shared_flow(key, lambda: (make_flow(
        _DIRECTIONS[direction].acl, "rule", dict(match), acts,
        description=f"{direction}: rules {list(rules)} of groups {sorted(groups)}"),))


def _membership(graph: TopologyGraph, port: Port, gcids: dict[str, int]) -> list[Flow]:
    """A local port's membership clauses: its packets are candidates for its groups' conjunctions."""
    groups = [sg.id for sg in graph_l3.port_security_groups(graph, port)]
    if not groups:
        return []  # no group: no rule allows anything (the drop)
    acts = tuple(sorted({Conjunction(gcids[g], 1, 2) for g in groups}, key=lambda a: a.id))
    key = ("acl_membership", port.key, port.id, acts, tuple(sorted(set(groups))))
    return list(shared_flow(key, lambda: tuple(
        make_flow(d.acl, "rule", {d.reg: port.key}, acts,
                  description=f"{d.name} of port {port.id}: member of groups {sorted(set(groups))}")
        for d in (EGRESS, INGRESS))))


def member_clause(spec: MemberSpec, direction: str, eth: int, address: MatchValue,
                  holds: Callable[[str, int, MatchValue], bool]) -> list[Flow]:
    """The member-address clause flow of ``address`` (none if no live rule's group holds it).

    ``holds(group, eth_type, address)``: whether the group has a member with that address.
    """
    acts: set[Conjunction] = set()
    for (d, e, sg_id), clauses in spec.items():
        if d == direction and e == eth and holds(sg_id, eth, address):
            acts.update(clauses)
    if not acts:
        return []
    d = EGRESS if direction == EGRESS.name else INGRESS
    ordered = sorted(acts, key=lambda a: (a.id, a.clause))
    return [make_flow(d.acl, "conj", {"eth_type": eth, d.remote[eth]: address}, ordered,
                      description=f"{d.name}: clause of remote-group rules {[a.id for a in ordered]}")]


_DIRECTIONS = {d.name: d for d in (EGRESS, INGRESS)}


def _plain(rule: SecurityGroupRule) -> bool:
    """A rule of its group's conjunction (no remote group: those are conjunctions of their own, in the base unit)."""
    return not rule.remote_group_id and rule.direction in _DIRECTIONS


def _port_rules(graph: TopologyGraph, port: Port) -> list[SecurityGroupRule]:
    """The rules of a port's groups, in group then creation order."""
    return [r for sg in graph_l3.port_security_groups(graph, port) for r in graph_l3.sg_rules(graph, sg.id)]


def _stateless(graph: TopologyGraph, port: Port) -> bool:
    """A port whose groups are all stateless (Neutron's ``stateful: false``): no conntrack at all.

    Its rules are matched packet by packet, replies included: what they do not allow in
    either direction is dropped. A port with any stateful group is tracked (the API refuses
    the mix, as Neutron does; should a graph hold one, the port is tracked and each group's
    conjunction commits, or not, as its group says: see :func:`gconj_flows`).
    """
    groups = graph_l3.port_security_groups(graph, port)
    return bool(groups) and not any(sg.stateful for sg in groups)


def _stateful_rules(graph: TopologyGraph, rules: Iterable[SecurityGroupRule]) -> set[str]:
    """Ids of the rules that belong to a stateful group (their conjunctive match commits the connection)."""
    return {r.id for r in rules if (sg := graph.get("sg", r.security_group_id)) is None or sg.stateful}


def _defaults(d: Direction) -> Iterator[Flow]:
    yield make_flow(d.pre, "default", {}, goto=d.after,
                    description=f"{d.name}: not IP, or a port without port security: no ACL")
    for eth, proto, field, value in d.always:
        yield make_flow(d.pre, "always", {"eth_type": eth, "ip_proto": proto, field: value}, goto=d.after,
                        description=f"{d.name}: {field}={value} is never filtered by security groups")
    yield make_flow(d.acl, "invalid", {"ct_state": (CT_TRK | CT_INV, CT_TRK | CT_INV)},
                    description=f"{d.name}: conntrack says invalid: drop")
    yield make_flow(d.acl, "established", {"ct_state": (CT_TRK | CT_RPL, CT_TRK | CT_RPL)}, goto=d.after,
                    description=f"{d.name}: reply of a committed connection")
    yield make_flow(d.acl, "established", {"ct_state": (CT_TRK | CT_REL, CT_TRK | CT_REL | CT_RPL)}, goto=d.after,
                    description=f"{d.name}: related to a committed connection")
    yield make_flow(d.acl, "drop", {}, description=f"{d.name}: no security group rule allows it: drop")


def _track(d: Direction, port: Port, zone: int, stateless: bool = False) -> tuple[Flow, ...]:
    return shared_flow(("acl_track", d.name, port.key, port.id, zone, stateless),
                       lambda: tuple(_build_track(d, port, zone, stateless)))


def _build_track(d: Direction, port: Port, zone: int, stateless: bool) -> Iterator[Flow]:
    for eth in (ETH_IPV4, ETH_IPV6):
        if stateless:
            yield make_flow(d.pre, "track", {d.reg: port.key, "eth_type": eth}, goto=d.acl,
                            description=f"{d.name} of port {port.id}: stateless groups, no conntrack")
            continue
        yield make_flow(d.pre, "track", {d.reg: port.key, "eth_type": eth},
                        [SetField(REG_CT_ZONE, zone), CT(zone=zone, table=d.acl.name)],
                        description=f"{d.name} of port {port.id}: conntrack in zone {zone}")


def _rule_base(d: Direction, rule: SecurityGroupRule) -> tuple[dict[str, MatchValue], list[dict[str, MatchValue]]]:
    """A rule's match without the port: (the common part, the port range alternatives)."""
    base, alternatives = rule_matches(rule)
    if rule.remote_ip_prefix:
        value = prefix_match(netaddr.IPNetwork(rule.remote_ip_prefix))
        if value is not None:
            base = {**base, d.remote[base["eth_type"]]: value}
    return base, alternatives


def _n_clauses(rule: SecurityGroupRule) -> int:
    return 3 if len(rule_matches(rule)[1]) > 1 else 2


def _clause(conj: dict[tuple, list[Conjunction]], extra: tuple[str, MatchValue], rule: SecurityGroupRule, cid: int,
            clause: int) -> None:
    """Add one clause flow (merged with any clause flow of the same match: OVS keeps one flow per match)."""
    base, alternatives = rule_matches(rule)
    n = _n_clauses(rule)
    if clause == 1:  # the port, with the protocol part (and the whole match when there are no port pieces)
        matches = [{**base, extra[0]: extra[1], **(alternatives[0] if n == 2 else {})}]
    elif clause == 2:  # one member address
        matches = [{"eth_type": base["eth_type"], extra[0]: extra[1]}]
    else:  # the port range pieces
        matches = [{**base, **alt} for alt in alternatives]
    for m in matches:
        conj.setdefault(tuple(sorted(m.items())), []).append(Conjunction(cid, clause, n))


def _conjunctions(d: Direction, conj: dict[tuple, list[Conjunction]], rules: dict[str, SecurityGroupRule],
                  ids: dict[str, int], stateful: set[str], has_members: Callable[[str, int], bool],
                  spec: dict[tuple[str, int, str], set[Conjunction]]) -> list[Flow]:
    """Remote-group rules: port-range clauses, the conj_id flows, the merged clause flows; the member clauses' spec."""
    flows: list[Flow] = []
    for rule in rules.values():
        eth = _eth_type(rule)
        clauses = spec.setdefault((d.name, eth, rule.remote_group_id or ""), set())
        if not has_members(rule.remote_group_id or "", eth):
            continue  # no member address: the conjunction can never complete (its port clauses go too)
        cid = ids[rule.id]
        clauses.add(Conjunction(cid, 2, _n_clauses(rule)))
        if _n_clauses(rule) == 3:
            _clause(conj, ("", 0), rule, cid, 3)
        # eth_type too: OVS refuses ct() on a flow whose match does not say IPv4 or IPv6.
        flows.append(make_flow(d.acl, "conj", {"conj_id": cid, "eth_type": eth},
                               [COMMIT] if rule.id in stateful else [], goto=d.after,
                               description=f"{d.name}: rule {rule.id} (remote group {rule.remote_group_id})"))
    live = {dict(f.match)["conj_id"] for f in flows}
    for items, actions in conj.items():
        acts = sorted({a for a in actions if a.id in live}, key=lambda a: (a.id, a.clause))
        if acts:
            flows.append(make_flow(d.acl, "conj", dict(items), acts,
                                   description=f"{d.name}: clause of remote-group rules {[a.id for a in acts]}"))
    return flows


def _dedupe(flows: list[Flow]) -> list[Flow]:
    """One flow per (table, priority, match); two different flows there would replace each other."""
    out: dict[tuple, Flow] = {}
    for f in flows:
        old = out.get(f.key)
        if old is not None and (old.actions, old.goto) != (f.actions, f.goto):
            raise PipelineError(f"{f.description} and {old.description}: same match, different actions")
        out.setdefault(f.key, f)
    return list(out.values())
