"""A pure OpenFlow 1.3 pipeline simulator over compiled :class:`~flows.flow.Flow` records.

Like Faucet's ``fakeoftable``: it walks a packet (a dict of header fields)
through exactly the flows :func:`flows.compiler.compile_hypervisor` returns, with
the semantics Open vSwitch gives them, so tests can assert *behaviour* (which
ports a frame leaves on, with which rewrites) instead of flow text.

Semantics followed (as OVS does):

- start at table 0; the highest-priority matching flow wins; two matching flows
  at the same priority are an error in our pipeline (OVS would pick one
  arbitrarily), reported in :attr:`SimResult.errors` (raised when ``strict``);
- matches compare normalised values (MACs, IPv4/IPv6 addresses via netaddr, ints),
  ``(value, mask)`` tuples are masked matches; a match on an ``arp_*`` / ``ipv4_*``
  / ``ipv6_*`` field only matches a packet of the right ``eth_type``;
- ``vlan_vid`` follows OF1.3: a flow's ``0x0000`` (OFPVID_NONE) matches an untagged
  packet and ``0x1000 | vid`` a tagged one; in the packet dict, ``vlan_vid`` holds
  the 12-bit VID and is absent when untagged;
- apply-actions run in order on the packet; ``Output`` emits a copy of the
  current packet; output to the packet's own in_port is skipped (OVS drops it)
  unless the port is ``IN_PORT``; ``Resubmit`` runs a table and comes back with
  the packet and registers as that table left them; ``goto`` continues in the
  next table; no matching flow is a drop (table miss);
- recursion is bounded like OVS (depth 64, 4096 table lookups per packet);
- ``Group`` (fast failover): the first live bucket runs, as OVS runs a bucket: its
  actions as an action set (:func:`bucket_actions`), on a copy of the packet (what the
  bucket changes is gone after the group action); no live bucket drops. A bucket is
  live when it watches no port or a port not declared dead (``dead_ports``: every
  port is live unless a test says otherwise);
- ``CT`` with ``nat``: source NAT and un-NAT of replies, as :mod:`flows.conntrack` models it;
- ``Meter``: the packet passes (recorded in :attr:`SimResult.meters`), unless the meter is
  declared over its rate (``spent_meters``, ids), which drops it, as the switch does.

Registers and ``in_port`` are pipeline metadata and are left out of emitted
packets; tunnel metadata (``tunnel_id``, ``tun_ipv4_dst``) stays in them.

A small :class:`Fabric` joins several simulated switches by their tunnel and
provider ports, to follow a frame across hypervisors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import netaddr

from flows.conntrack import Conntrack, lint_conntrack
from flows.flow import (
    CT,
    IN_PORT,
    Action,
    Conjunction,
    DecTtl,
    Flow,
    Group,
    Learn,
    MatchValue,
    Meter,
    Output,
    PopVlan,
    PushVlan,
    RegMove,
    Resubmit,
    SetField,
    used_groups,
)
from flows.ofctl import action_text, ct_state_text
from flows.pipeline import STAGE_BY_NAME, STAGE_BY_TABLE
from topology.gateways import GATEWAY_PORT_PREFIX, gateway_tunnel_name
from topology.model import TUNNEL_PORT_NAMES

MAX_DEPTH = 64  # OVS's resubmit depth limit
MAX_LOOKUPS = 4096  # OVS's per-packet resubmit budget
OFPVID_PRESENT = 0x1000
ETH_TYPE_ARP, ETH_TYPE_IPV4, ETH_TYPE_IPV6 = 0x0806, 0x0800, 0x86DD

# field -> (kind, width in bits). Kinds: "int", "mac", "ipv4", "ipv6".
FIELDS: dict[str, tuple[str, int]] = {
    "in_port": ("int", 32),
    "eth_src": ("mac", 48),
    "eth_dst": ("mac", 48),
    "eth_type": ("int", 16),
    "vlan_vid": ("int", 13),
    "vlan_pcp": ("int", 3),
    "vlan_inner_vid": ("int", 12),  # the inner tag of a QinQ frame (not matchable in OF1.3)
    "ip_proto": ("int", 8),
    "ipv4_src": ("ipv4", 32),
    "ipv4_dst": ("ipv4", 32),
    "ipv6_src": ("ipv6", 128),
    "ipv6_dst": ("ipv6", 128),
    "arp_op": ("int", 16),
    "arp_spa": ("ipv4", 32),
    "arp_tpa": ("ipv4", 32),
    "arp_sha": ("mac", 48),
    "arp_tha": ("mac", 48),
    "tcp_src": ("int", 16),
    "tcp_dst": ("int", 16),
    "udp_src": ("int", 16),
    "udp_dst": ("int", 16),
    "tunnel_id": ("int", 64),
    "tun_ipv4_src": ("ipv4", 32),
    "tun_ipv4_dst": ("ipv4", 32),
    "metadata": ("int", 64),
    "ipv6_nd_target": ("ipv6", 128),
    "ipv6_nd_sll": ("mac", 48),
    "ipv6_nd_tll": ("mac", 48),
    "nd_reserved": ("int", 32),
    "nd_options_type": ("int", 8),
    "nw_ttl": ("int", 8),  # IPv4 TTL or IPv6 hop limit (64 when a packet does not say)
    "icmpv4_type": ("int", 8),
    "icmpv4_code": ("int", 8),
    "icmpv6_type": ("int", 8),
    "icmpv6_code": ("int", 8),
    **{f"reg{i}": ("int", 32) for i in range(16)},
    **{f"xxreg{i}": ("int", 128) for i in range(4)},
    "ct_state": ("int", 32),  # set only in the copy a ct(table=...) action resumes (flows.conntrack)
    "ct_zone": ("int", 16),
    "conj_id": ("int", 32),  # set only while a completed conjunctive match is looked up again
}

# A field that only exists in packets of one ethertype (OVS's match prerequisites).
PREREQ_ETH_TYPE: dict[str, int] = {
    **{f: ETH_TYPE_ARP for f in ("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha")},
    **{f: ETH_TYPE_IPV4 for f in ("ipv4_src", "ipv4_dst")},
    **{f: ETH_TYPE_IPV6 for f in ("ipv6_src", "ipv6_dst", "icmpv6_type", "icmpv6_code")},
    **{f: ETH_TYPE_IPV4 for f in ("icmpv4_type", "icmpv4_code")},
    **{f: ETH_TYPE_IPV6 for f in ("ipv6_nd_target", "ipv6_nd_sll", "ipv6_nd_tll", "nd_reserved",
                                  "nd_options_type")},
}

# Left out of emitted packets: they never leave the switch.
METADATA = frozenset({"in_port", "metadata", "ct_state", "ct_zone", "conj_id", *(f"reg{i}" for i in range(16)),
                      *(f"xxreg{i}" for i in range(4))})
# Transport fields exist only in packets of their IP protocol (and IPv4 or IPv6).
PREREQ_IP_PROTO: dict[str, int] = {"tcp_src": 6, "tcp_dst": 6, "udp_src": 17, "udp_dst": 17,
                                   "icmpv4_type": 1, "icmpv4_code": 1, "icmpv6_type": 58, "icmpv6_code": 58}
DEFAULT_TTL = 64


class SimulationError(RuntimeError):
    """The pipeline did something OVS would reject or that our pipeline forbids."""

    def __init__(self, message: str, result: SimResult | None = None) -> None:
        super().__init__(message)
        self.result = result


# -- values ----------------------------------------------------------------------
def to_int(name: str, value: int | str) -> int:
    """Normalise a field value (MAC / IP string, int, or ``"0x806"``) to an int."""
    if name not in FIELDS:
        raise SimulationError(f"unknown field {name!r}")
    kind, width = FIELDS[name]
    if isinstance(value, bool):
        raise SimulationError(f"{name}: bad value {value!r}")
    if isinstance(value, int):
        out = value
    elif kind == "mac":
        out = int(netaddr.EUI(value))
    elif kind in ("ipv4", "ipv6"):
        out = int(netaddr.IPAddress(value, 4 if kind == "ipv4" else 6))
    else:
        out = int(value, 0)
    if not 0 <= out < (1 << width):
        raise SimulationError(f"{name}: value {value!r} does not fit in {width} bits")
    return out


def to_display(name: str, value: int) -> int | str:
    """The readable form of a field's int value (canonical MAC / IP string, else the int)."""
    kind = FIELDS[name][0]
    if kind == "mac":
        return str(netaddr.EUI(value, dialect=netaddr.mac_unix_expanded))
    if kind == "ipv4":
        return str(netaddr.IPAddress(value, 4))
    if kind == "ipv6":
        return str(netaddr.IPAddress(value, 6))
    return value


def normalize_packet(packet: Mapping[str, int | str]) -> dict[str, int]:
    """Return the packet with every value as an int (``vlan_vid``: the 12-bit VID)."""
    out = {name: to_int(name, v) for name, v in packet.items()}
    for name in ("vlan_vid", "vlan_inner_vid"):
        if name in out:
            out[name] &= 0xFFF  # accept 0x1064 as well as 100
    return out


def display_packet(packet: Mapping[str, int], *, keep_metadata: bool = False) -> dict[str, int | str]:
    """Readable copy of an internal packet; metadata (registers, in_port) dropped unless asked."""
    return {k: to_display(k, v) for k, v in sorted(packet.items()) if keep_metadata or k not in METADATA}


def _packet_value(packet: Mapping[str, int], name: str) -> int | None:
    """The value a flow sees for ``name`` (None: the packet has no such header)."""
    need = PREREQ_ETH_TYPE.get(name)
    if need is not None and packet.get("eth_type") != need:
        return None
    proto = PREREQ_IP_PROTO.get(name)
    if proto is not None and (packet.get("ip_proto") != proto or packet.get("eth_type") not in (0x0800, 0x86DD)):
        return None
    if name == "vlan_vid":
        vid = packet.get("vlan_vid")
        return 0 if vid is None else OFPVID_PRESENT | vid
    if name == "nw_ttl":
        return packet.get(name, DEFAULT_TTL)  # as dec_ttl reads it: a packet that does not say has 64
    return packet.get(name, 0)


def _match_one(name: str, want: MatchValue, have: int | None) -> bool:
    if have is None:
        return False
    if isinstance(want, tuple):
        value, mask = (to_int(name, x) for x in want)
        return have & mask == value & mask
    return have == to_int(name, want)


def _compile_match(flow: Flow) -> list[tuple[str, int, int]]:
    out = []
    for name, want in flow.match:
        if isinstance(want, tuple):
            value, mask = (to_int(name, x) for x in want)
            out.append((name, value & mask, mask))
        else:
            out.append((name, to_int(name, want), -1))
    return out


def flow_matches(flow: Flow, packet: Mapping[str, int]) -> bool:
    """Whether ``flow``'s match covers the (normalised) packet."""
    return all(_match_one(name, want, _packet_value(packet, name)) for name, want in flow.match)


_BUCKET_ENDS = (Group, Output, Resubmit, CT)  # of these, a bucket runs one: the last of the first kind present


def bucket_actions(actions: Iterable[Action]) -> tuple[Action, ...]:
    """The actions OVS runs for a group bucket: its actions as an OpenFlow action *set*, not a list.

    OVS (``ofpacts_execute_action_set``) runs, in this order: the last pop_vlan, the last
    push_vlan, the last dec_ttl, every set_field and move in their order, then the last
    group, or else the last output, or else the last resubmit, or else the last ct; with
    none of those four, nothing at all. Anything else (learn, conjunction) is left out.
    """
    acts = tuple(actions)

    def last(kind: type) -> tuple[Action, ...]:
        found = [a for a in acts if type(a) is kind]
        return tuple(found[-1:])

    end = next((found for kind in _BUCKET_ENDS if (found := last(kind))), ())
    if not end:
        return ()
    sets = tuple(a for a in acts if type(a) in (SetField, RegMove))
    return (*last(PopVlan), *last(PushVlan), *last(DecTtl), *sets, *end)


# -- rendering for traces ------------------------------------------------------------
_HEX_FIELDS = frozenset({"eth_type", "vlan_vid", "tunnel_id", "metadata", *(f"reg{i}" for i in range(8))})


def _fmt_value(name: str, v: MatchValue) -> str:
    if name == "ct_state":
        return ct_state_text(v)
    if isinstance(v, tuple):
        return f"{_fmt_value(name, v[0])}/{_fmt_value(name, v[1])}"
    if isinstance(v, int) and FIELDS.get(name, ("int",))[0] == "int":
        return hex(v) if name in _HEX_FIELDS and v > 9 else str(v)
    return str(to_display(name, to_int(name, v)) if name in FIELDS else v)


def format_match(match: Iterable[tuple[str, MatchValue]]) -> str:
    """``ovs-ofctl``-like text of a match."""
    return ",".join(f"{n}={_fmt_value(n, v)}" for n, v in match) or "(any)"


def table_name(table_id: int) -> str:
    """The stage name of a table id (``table<N>`` for tables outside the pipeline)."""
    st = STAGE_BY_TABLE.get(table_id)
    return st.name if st else f"table{table_id}"


# -- results ---------------------------------------------------------------------------
@dataclass
class Step:
    """One table lookup of a walk: which flow matched (``priority`` None = table miss)."""

    depth: int
    table_id: int
    stage: str
    priority: int | None
    description: str
    match: str
    actions: list[str]
    events: list[str] = field(default_factory=list)  # what the actions did: outputs, skips
    call: int = 0  # which resubmit made this lookup (0: the packet's own walk from table 0)
    resubmits: list[int] = field(default_factory=list)  # the calls this lookup's resubmits (and ct forks) made
    call_at: dict[int, int] = field(default_factory=dict)  # index in events -> the call that event made

    def calling(self, event: str, call: int) -> None:
        """Record an event that makes a call (a resubmit, a ct fork): its lookups nest under it."""
        self.events.append(event)
        self.resubmits.append(call)
        self.call_at[len(self.events) - 1] = call


@dataclass
class SimResult:
    """What became of one packet: emitted copies, the walk, and any pipeline errors."""

    outputs: list[tuple[int, dict[str, int | str]]] = field(default_factory=list)
    trace: list[Step] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    packet: dict[str, int] = field(default_factory=dict)  # final internal state, registers included
    meters: list[Meter] = field(default_factory=list)  # the meters it passed, in order

    @property
    def ports(self) -> list[int]:
        """The OpenFlow ports the packet left on, in emission order."""
        return [p for p, _ in self.outputs]


# -- the simulator ---------------------------------------------------------------------------
class Pipeline:
    """A switch's flow tables, indexed once; :meth:`run` walks packets through them.

    Flows with the same (table, priority, match) replace each other in list order,
    as a later flow-mod replaces an earlier one on a switch.
    """

    def __init__(self, flows: Iterable[Flow], stages: Mapping[str, int] | None = None) -> None:
        self.stages = dict(stages) if stages is not None else {n: s.table_id for n, s in STAGE_BY_NAME.items()}
        by_key: dict[tuple, Flow] = {}
        for f in flows:
            by_key[f.key] = f
        self.tables: dict[int, list[Flow]] = {}
        for f in by_key.values():
            self.tables.setdefault(f.table_id, []).append(f)
        for flows_ in self.tables.values():
            flows_.sort(key=lambda f: -f.priority)
        # Matches normalised once: (field, value, mask) with mask -1 for an exact match.
        self._compiled = {id(f): _compile_match(f) for fl in self.tables.values() for f in fl}
        self.conntrack = Conntrack()  # survives runs: a reply finds its request's connection
        self.dead_ports: set[int] = set()  # ports a bucket watches in vain (every other port is live)
        self.spent_meters: set[int] = set()  # ids of meters over their rate: they drop (every other one passes)

    def add(self, flow: Flow) -> None:
        """Install one flow as a flow-mod ADD would (replacing the flow with the same key)."""
        table = [f for f in self.tables.get(flow.table_id, []) if f.key != flow.key]
        table.append(flow)
        table.sort(key=lambda f: -f.priority)
        self.tables[flow.table_id] = table
        self._compiled[id(flow)] = _compile_match(flow)

    def learn(self, act: Learn, packet: Mapping[str, int]) -> Flow:
        """What an OVS learn action does: add the flow built from ``packet``'s fields (see flows.flow.Learn)."""
        for _, src in (*act.matches, *((s, d) for s, d in act.loads)):
            need = PREREQ_ETH_TYPE.get(src)
            if need is not None and packet.get("eth_type") != need:
                raise _Abort(f"learn: {src} on a packet with eth_type {packet.get('eth_type', 0):#06x}")
        match = tuple(sorted((dst, _packet_value(packet, src) or 0) for dst, src in act.matches))
        actions = tuple(SetField(dst, _packet_value(packet, src) or 0) for src, dst in act.loads)
        flow = Flow(self.stages[act.table], act.priority, match, actions, None, act.cookie,
                    f"learned: {format_match(match)}")
        self.add(flow)
        return flow

    def lookup(self, table_id: int, packet: Mapping[str, int]) -> list[Flow]:
        """All flows of the highest matching priority in a table (more than one = a tie).

        Conjunctive matches as OVS's classifier does them: flows whose actions are
        ``conjunction`` only count above the best ordinary match; at the highest such
        priority where some conjunction ``id`` has a matching flow for each of its
        clauses, the table is looked up again with ``conj_id = id``. Incomplete
        conjunctions are ignored.
        """
        found: list[Flow] = []
        soft: list[Flow] = []
        for f in self.tables.get(table_id, ()):
            if found and f.priority < found[0].priority:
                break
            if all((have := _packet_value(packet, name)) is not None and have & mask == value
                   for name, value, mask in self._compiled[id(f)]):
                (soft if f.actions and type(f.actions[0]) is Conjunction else found).append(f)
        floor = found[0].priority if found else -1
        for prio in sorted({f.priority for f in soft if f.priority > floor}, reverse=True):
            clauses: dict[tuple[int, int], set[int]] = {}
            for f in soft:
                if f.priority == prio:
                    for a in f.actions:
                        clauses.setdefault((a.id, a.n_clauses), set()).add(a.clause)
            done = sorted(cid for (cid, n), got in clauses.items() if len(got) == n)
            if done:
                again = self.lookup(table_id, {**packet, "conj_id": done[0]})
                return [f for f in again if not (f.actions and type(f.actions[0]) is Conjunction)]
        return found

    def run(self, packet: Mapping[str, int | str], *, strict: bool = True,
            dead_ports: Iterable[int] = (), spent_meters: Iterable[int] = ()) -> SimResult:
        """Walk ``packet`` (must carry ``in_port``) from table 0; raise on errors when ``strict``.

        ``dead_ports``: ports that are down for this packet, besides :attr:`dead_ports` (a group's
        bucket watching one is not live). ``spent_meters``: ids of meters over their rate for this
        packet, besides :attr:`spent_meters` (a packet through one is dropped).
        """
        pkt = normalize_packet(packet)
        if "in_port" not in pkt:
            raise SimulationError("packet has no in_port")
        res = SimResult()
        walk = _Walk(self, pkt, res, self.dead_ports.union(dead_ports))
        walk.spent_meters = self.spent_meters.union(spent_meters)
        try:
            walk.table(0, 0)
        except _Abort as exc:
            res.errors.append(str(exc))
        except _Dropped:
            pass
        res.packet = pkt
        if strict and res.errors:
            raise SimulationError("; ".join(res.errors), res)
        return res


class _Abort(Exception):
    """Stops a walk (recursion limit, an action OVS would reject)."""


class _Dropped(Exception):
    """The packet was dropped by an action (dec_ttl on an expiring TTL): not an error."""


class _Walk:
    def __init__(self, pipe: Pipeline, pkt: dict[str, int], res: SimResult, dead_ports: set[int]) -> None:
        self.pipe, self.pkt, self.res = pipe, pkt, res
        self.dead_ports = dead_ports
        self.spent_meters: set[int] = set()
        self.lookups = 0
        self.calls = 0

    def table(self, table_id: int, depth: int, call: int = 0) -> None:
        """Look up one table, apply its flow's actions, follow its goto."""
        while True:
            self.lookups += 1
            if depth > MAX_DEPTH or self.lookups > MAX_LOOKUPS:
                raise _Abort(f"recursion limit reached in {table_name(table_id)}")
            found = self.pipe.lookup(table_id, self.pkt)
            if not found:
                self.res.trace.append(Step(depth, table_id, table_name(table_id), None, "table miss: drop", "", [],
                                           call=call))
                return
            if len(found) > 1 and any((f.actions, f.goto) != (found[0].actions, found[0].goto) for f in found):
                # A tie between flows with the same instructions is harmless (OVS picks either).
                descs = " | ".join(f.description or format_match(f.match) for f in found)
                self.res.errors.append(f"{table_name(table_id)}: {len(found)} flows tie at priority "
                                       f"{found[0].priority}: {descs}")
            flow = found[0]
            step = Step(depth, table_id, table_name(table_id), flow.priority, flow.description,
                        format_match(flow.match), [action_text(a) for a in flow.actions], call=call)
            self.res.trace.append(step)
            for act in flow.actions:
                self.action(act, step, depth)
            if flow.goto is None:
                return
            if flow.goto <= table_id:
                raise _Abort(f"{table_name(table_id)}: goto {flow.goto} does not move forward")
            step.events.append(f"goto {table_name(flow.goto)}")
            table_id = flow.goto

    def action(self, act: Action, step: Step, depth: int) -> None:
        pkt = self.pkt
        if isinstance(act, Output):
            port = pkt["in_port"] if act.port == IN_PORT else act.port
            if act.port != IN_PORT and port == pkt["in_port"]:
                step.events.append(f"output:{port} skipped: it is the in_port")
                return
            out = display_packet(pkt)
            self.res.outputs.append((port, out))
            step.events.append(f"output:{port}")
        elif isinstance(act, SetField):
            self._check_prereq(act.field, "set_field")
            value = to_int(act.field, act.value)
            if act.field == "vlan_vid":
                if "vlan_vid" not in pkt:
                    raise _Abort("set_field vlan_vid on an untagged packet (push_vlan first)")
                value &= 0xFFF
            pkt[act.field] = value
        elif isinstance(act, RegMove):
            self._check_prereq(act.src, "move")
            self._check_prereq(act.dst, "move")
            mask = (1 << act.n_bits) - 1
            if act.n_bits > min(FIELDS[act.src][1], FIELDS[act.dst][1]):
                raise _Abort(f"move {act.src}->{act.dst}: {act.n_bits} bits do not fit")
            src = _packet_value(pkt, act.src) or 0
            pkt[act.dst] = (pkt.get(act.dst, 0) & ~mask) | (src & mask)
        elif isinstance(act, Resubmit):
            target = self.pipe.stages.get(act.table)
            if target is None:
                raise _Abort(f"resubmit to unknown table {act.table!r}")
            self.calls += 1
            step.calling(f"resubmit {act.table}", self.calls)
            self.table(target, depth + 1, self.calls)
        elif isinstance(act, PushVlan):
            # OF1.3: the new outer tag copies the VID of the tag it covers (0 when untagged).
            # OVS handles at most two tags (FLOW_MAX_VLAN_HEADERS).
            if "vlan_inner_vid" in pkt:
                raise _Abort("push_vlan on a packet that already has two VLAN tags")
            if "vlan_vid" in pkt:
                pkt["vlan_inner_vid"] = pkt["vlan_vid"]
            pkt["vlan_vid"] = pkt.get("vlan_vid", 0)
        elif isinstance(act, DecTtl):
            if pkt.get("eth_type") not in (ETH_TYPE_IPV4, ETH_TYPE_IPV6):
                raise _Abort("dec_ttl on a packet that is neither IPv4 nor IPv6")
            ttl = pkt.get("nw_ttl", DEFAULT_TTL)
            if ttl <= 1:
                step.events.append("dec_ttl: TTL expired: drop")
                raise _Dropped()
            pkt["nw_ttl"] = ttl - 1
        elif isinstance(act, CT):
            self.conntrack(act, step, depth)
        elif isinstance(act, Group):
            self.group(act, step, depth)
        elif isinstance(act, Meter):
            if act.meter_id in self.spent_meters:
                step.events.append(f"meter:{act.meter_id} ({act.scope}) over its {act.rate}/s: drop")
                raise _Dropped()
            self.res.meters.append(act)
            step.events.append(f"meter:{act.meter_id} ({act.scope}: {act.rate}/s, bursts of {act.burst})")
        elif isinstance(act, Conjunction):
            raise _Abort("conjunction action executed (a conjunctive flow with other actions?)")
        elif isinstance(act, Learn):
            self.pipe.learn(act, pkt)
            step.events.append(f"learn into {act.table}")
        elif isinstance(act, PopVlan):
            if "vlan_vid" not in pkt:
                raise _Abort("pop_vlan on an untagged packet")
            del pkt["vlan_vid"]
            if "vlan_inner_vid" in pkt:
                pkt["vlan_vid"] = pkt.pop("vlan_inner_vid")
        else:
            raise _Abort(f"unknown action {act!r}")

    def conntrack(self, act: CT, step: Step, depth: int) -> None:
        """ct: track (and commit) in the zone, NAT if asked; with a table, the tracked copy resumes there (OVS's
        fork), NATed; without, the packet itself is NATed (the datapath rewrites it) and goes on."""
        pkt = self.pkt
        zone = act.zone if isinstance(act.zone, int) else pkt.get(act.zone, 0) & 0xFFFF
        conntrack = self.pipe.conntrack
        state = conntrack.track(pkt, zone, commit=act.commit, nat=act.nat)
        nat = conntrack.nat_rewrite(pkt, zone) if act.nat is not None else {}
        event = f"ct zone {zone}: {action_text(act)} -> {format_match([('ct_state', state)])}"
        if nat:
            event += ", nat: " + ",".join(f"{k}={to_display(k, v)}" for k, v in nat.items())
        if act.table is None:
            step.events.append(event)
            pkt.update(nat)  # the datapath NATs the packet; without recirculation its ct fields are unchanged
            return
        target = self.pipe.stages.get(act.table)
        if target is None:
            raise _Abort(f"ct to unknown table {act.table!r}")
        self.calls += 1
        step.calling(event, self.calls)
        self.pkt = {**pkt, **nat, "ct_state": state, "ct_zone": zone}
        try:
            self.table(target, depth + 1, self.calls)
        finally:
            self.pkt = pkt  # the original goes on, untracked

    def _group_live(self, group: Group) -> bool:
        """A fast-failover group is live while any of its buckets is (OVS's group_is_alive)."""
        return any((b.watch_port is None or b.watch_port not in self.dead_ports)
                   and (b.watch_group is None or self._group_live(b.watch_group)) for b in group.buckets)

    def group(self, act: Group, step: Step, depth: int) -> None:
        """A fast-failover group: its first live bucket runs as OVS runs one (bucket_actions), on a copy of the
        packet (OVS rolls the packet back after the group); no live bucket: nothing happens (a drop)."""
        for i, bucket in enumerate(act.buckets):
            if bucket.watch_port is not None and bucket.watch_port in self.dead_ports:
                step.events.append(f"group:{act.group_id}: bucket {i} not live (port {bucket.watch_port} is down)")
                continue
            if bucket.watch_group is not None and not self._group_live(bucket.watch_group):
                step.events.append(f"group:{act.group_id}: bucket {i} not live "
                                   f"(group {bucket.watch_group.group_id} has no live bucket)")
                continue
            run = bucket_actions(bucket.actions)
            watch = ("always live" if bucket.always_live else f"port {bucket.watch_port} live"
                     if bucket.watch_port is not None else f"group {bucket.watch_group.group_id} live")
            step.events.append(f"group:{act.group_id}: bucket {i} ({watch}): "
                               + (",".join(action_text(a) for a in run) or "drop"))
            saved = dict(self.pkt)
            try:
                for a in run:
                    self.action(a, step, depth)
            finally:
                self.pkt.clear()
                self.pkt.update(saved)
            return
        step.events.append(f"group:{act.group_id}: no live bucket: drop")

    def _check_prereq(self, name: str, what: str) -> None:
        if name not in FIELDS:
            raise _Abort(f"{what}: unknown field {name!r}")
        need = PREREQ_ETH_TYPE.get(name)
        if need is not None and self.pkt.get("eth_type") != need:
            raise _Abort(f"{what} {name} on a packet with eth_type {self.pkt.get('eth_type', 0):#06x}")


def simulate(flows: Iterable[Flow], packet: Mapping[str, int | str], *, strict: bool = True) -> SimResult:
    """Walk one packet through ``flows`` (see :class:`Pipeline`)."""
    return Pipeline(flows).run(packet, strict=strict)


# -- static checks ------------------------------------------------------------------------------
def lint(flows: Iterable[Flow], stages: Mapping[str, int] | None = None) -> list[str]:
    """Problems OVS would reject at flow-mod time, or that silently replace flows.

    Unknown fields, a match or a set-field on ``arp_*``/``ipv4_*``/``ipv6_*`` without
    the matching ``eth_type`` in the flow's match (OFPBMC_BAD_PREREQ), a goto that
    does not move forward, a resubmit to an unknown table, and two flows with the
    same (table, priority, match) but different instructions (the second replaces
    the first on the switch).
    """
    stages = stages if stages is not None else {n: s.table_id for n, s in STAGE_BY_NAME.items()}
    problems: list[str] = []
    seen: dict[tuple, Flow] = {}
    flows_ = list(flows)
    for f in flows_:
        where = f"{table_name(f.table_id)} prio {f.priority} [{f.description}]"
        match = dict(f.match)
        eth_type = match.get("eth_type")
        fields = list(match) + [a.field for a in f.actions if isinstance(a, SetField)]
        fields += [n for a in f.actions if isinstance(a, RegMove) for n in (a.src, a.dst)]
        for name in fields:
            if name not in FIELDS:
                problems.append(f"{where}: unknown field {name}")
            elif name in PREREQ_ETH_TYPE and eth_type != PREREQ_ETH_TYPE[name]:
                problems.append(f"{where}: {name} needs eth_type={PREREQ_ETH_TYPE[name]:#06x} in the match")
        if f.goto is not None and f.goto <= f.table_id:
            problems.append(f"{where}: goto {f.goto} does not move forward")
        for a in f.actions:
            if isinstance(a, Resubmit) and a.table not in stages:
                problems.append(f"{where}: resubmit to unknown table {a.table}")
        problems += _lint_buckets(where, f.actions)
        old = seen.get(f.key)
        if old is not None and (old.actions, old.goto) != (f.actions, f.goto):
            problems.append(f"{where}: replaces [{old.description}] (same table, priority and match)")
        seen[f.key] = f
    problems += lint_conntrack(flows_, stages, PREREQ_IP_PROTO)
    return problems


def _lint_buckets(where: str, actions: Iterable[Action]) -> list[str]:
    """Group buckets whose actions OVS would not run as written (it runs an action set: bucket_actions)."""
    problems = []
    for group in used_groups(actions):
        for i, bucket in enumerate(group.buckets):
            run = bucket_actions(bucket.actions)
            if run != tuple(bucket.actions):
                problems.append(f"{where}: group {group.group_id} bucket {i}: OVS runs "
                                f"[{','.join(map(action_text, run)) or 'drop'}], not "
                                f"[{','.join(map(action_text, bucket.actions))}] (a bucket is an action set)")
    return problems


# -- several switches ----------------------------------------------------------------------------------
@dataclass
class Switch:
    """One simulated hypervisor bridge and how it is wired to the fabric."""

    name: str
    flows: list[Flow]
    ofports: dict[str, int]  # OVS port name -> OpenFlow port
    tunnel_ip: str | None = None
    tunnel_ports: frozenset[str] = frozenset(TUNNEL_PORT_NAMES.values())
    provider_prefix: str = "phy-"
    dead_ports: frozenset[str] = frozenset()  # names of its ports that are down (a gateway tunnel whose BFD failed)

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(self.flows)
        self.port_names = {num: name for name, num in self.ofports.items()}

    def port_numbers(self, names: Iterable[str]) -> set[int]:
        """The OpenFlow numbers of the named ports it has."""
        return {self.ofports[n] for n in names if n in self.ofports}


@dataclass
class Delivery:
    """A copy of the frame that left a switch on a non-fabric port (a VM's tap)."""

    hv: str
    port: str
    packet: dict[str, int | str]


@dataclass
class FabricResult:
    """Every VM-facing delivery of one injected frame, and every switch's walk."""

    deliveries: list[Delivery] = field(default_factory=list)
    walks: list[tuple[str, SimResult]] = field(default_factory=list)
    entries: list[dict[str, int | str]] = field(default_factory=list)  # the packet each walk started from
    lost: list[str] = field(default_factory=list)  # frames the fabric could not carry


class Fabric:
    """Switches joined by a tunnel underlay and provider networks.

    A tunnel output reaches the switch whose ``tunnel_ip`` is the frame's
    ``tun_ipv4_dst``, on its tunnel port of the same name. An output on a gateway tunnel,
    ``tg-<remote tunnel IP in hex>`` (a VXLAN port with a fixed remote: topology.gateways),
    reaches that switch on its ``tg-`` port named after the sender's tunnel IP, its
    ``tunnel_id`` kept; a gateway tunnel that is down at either end carries nothing. A provider output on
    ``phy-<physnet>`` reaches the other switches' ``phy-<physnet>`` port: only the
    one ``locate(physnet, eth_dst)`` names when it names one (a physical switch
    that learned the MAC), else all of them (flooding).
    """

    def __init__(self, switches: Iterable[Switch],
                 locate: Callable[[str, str], str | None] | None = None, max_hops: int = 64) -> None:
        self.switches = {s.name: s for s in switches}
        self.by_tunnel_ip = {
            int(netaddr.IPAddress(s.tunnel_ip)): s.name for s in self.switches.values() if s.tunnel_ip
        }
        self.locate = locate
        self.max_hops = max_hops

    def inject(self, hv: str, packet: Mapping[str, int | str], *, strict: bool = True,
               dead_ports: Mapping[str, Iterable[str]] | None = None) -> FabricResult:
        """Send ``packet`` (its ``in_port`` on switch ``hv``) and follow it across the fabric.

        ``dead_ports``: hypervisor -> names of its ports that are down for this packet, besides
        each switch's own ``dead_ports`` (a test kills a gateway tunnel this way).
        """
        res = FabricResult()
        dead = {name: sw.port_numbers({*sw.dead_ports, *(dead_ports or {}).get(name, ())})
                for name, sw in self.switches.items()}
        queue: list[tuple[str, dict]] = [(hv, dict(packet))]
        while queue:
            if len(res.walks) >= self.max_hops:
                raise SimulationError(f"fabric: more than {self.max_hops} hops (a forwarding loop?)")
            name, pkt = queue.pop(0)
            sw = self.switches[name]
            sim = sw.pipeline.run(pkt, strict=strict, dead_ports=dead[name])
            res.walks.append((name, sim))
            res.entries.append(pkt)
            for port, out in sim.outputs:
                port_name = sw.port_names.get(port, str(port))
                if port_name.startswith(GATEWAY_PORT_PREFIX):
                    queue += self._through_gateway_tunnel(sw, port_name, out, res, dead)
                elif port_name in sw.tunnel_ports:
                    queue += self._through_tunnel(sw, port_name, out, res)
                elif port_name.startswith(sw.provider_prefix):
                    queue += self._through_provider(sw, port_name, out)
                else:
                    # Tunnel metadata stays in the switch: a VM gets the bare frame.
                    frame = {k: v for k, v in out.items() if k not in ("tunnel_id", "tun_ipv4_src", "tun_ipv4_dst")}
                    res.deliveries.append(Delivery(name, port_name, frame))
        return res

    def _through_tunnel(self, sw: Switch, port_name: str, out: dict, res: FabricResult) -> list[tuple[str, dict]]:
        dst = out.get("tun_ipv4_dst")
        peer = self.by_tunnel_ip.get(int(netaddr.IPAddress(dst))) if dst else None
        if peer is None or port_name not in self.switches[peer].ofports:
            res.lost.append(f"{sw.name}: {port_name} to {dst}: no such tunnel endpoint")
            return []
        pkt = {k: v for k, v in out.items() if k != "tun_ipv4_dst"}
        pkt["tun_ipv4_src"] = sw.tunnel_ip
        pkt["in_port"] = self.switches[peer].ofports[port_name]
        return [(peer, pkt)]

    def _through_gateway_tunnel(self, sw: Switch, port_name: str, out: dict, res: FabricResult,
                                dead: Mapping[str, set[int]]) -> list[tuple[str, dict]]:
        """A fixed-remote VXLAN port: to the switch whose tunnel IP its name holds, on the port named after ours."""
        try:
            peer_name = self.by_tunnel_ip.get(int(port_name[len(GATEWAY_PORT_PREFIX):], 16))
        except ValueError:  # not tg-<hex>: no gateway tunnel of ours
            peer_name = None
        peer = self.switches.get(peer_name) if peer_name is not None else None
        back = gateway_tunnel_name(sw.tunnel_ip) if sw.tunnel_ip else None
        if peer is None or back not in peer.ofports:
            res.lost.append(f"{sw.name}: {port_name}: no hypervisor at its remote end has a tunnel back")
            return []
        if sw.ofports[port_name] in dead[sw.name] or peer.ofports[back] in dead[peer.name]:
            res.lost.append(f"{sw.name}: {port_name} to {peer.name}: the tunnel is down")
            return []
        pkt = {k: v for k, v in out.items() if k != "tun_ipv4_dst"}  # the port's remote, not the flow's, decides
        pkt["tun_ipv4_src"] = sw.tunnel_ip
        pkt["in_port"] = peer.ofports[back]
        return [(peer.name, pkt)]

    def _through_provider(self, sw: Switch, port_name: str, out: dict) -> list[tuple[str, dict]]:
        # Tunnel metadata does not survive a physical network.
        pkt = {k: v for k, v in out.items() if k not in ("tunnel_id", "tun_ipv4_dst", "tun_ipv4_src")}
        target = self.locate(port_name[len(sw.provider_prefix):], str(out.get("eth_dst"))) if self.locate else None
        hops = []
        for peer in self.switches.values():
            if peer.name == sw.name or port_name not in peer.ofports:
                continue
            if target is not None and peer.name != target:
                continue
            hops.append((peer.name, {**pkt, "in_port": peer.ofports[port_name]}))
        return hops
