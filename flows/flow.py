"""A small, immutable flow representation and the checked constructor.

A :class:`Flow` is what the compiler emits and what the controller reconciles.
Its cookie = stage table id (top 8 bits) + a 56-bit hash of its content, so the
same flow always gets the same cookie (across controller restarts too) and any
change of match, priority or actions gives a new one. Reconciliation therefore
compares cookies: no need to parse a switch's instructions back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress

from flows.pipeline import COOKIE_STAGE_SHIFT, STAGE_BY_NAME, PipelineError, Stage

MatchValue = int | str | tuple[int, int]
"""An int, an address string (MAC, IPv4, IPv6) or a (value, mask) pair of ints."""


@dataclass(frozen=True, slots=True, repr=False)
class Output:
    """Output to an OpenFlow port number (``IN_PORT`` = 0xfffffff8)."""

    port: int

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return f"Output({self.port})"


IN_PORT = 0xFFFFFFF8
CONTROLLER = 0xFFFFFFFD


@dataclass(frozen=True, slots=True, repr=False)
class SetField:
    """Set a header or register field to a value."""

    field: str
    value: MatchValue

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return f"SetField({self.field!r}, {self.value!r})"


@dataclass(frozen=True, slots=True, repr=False)
class RegMove:
    """Copy all ``n_bits`` of field ``src`` into field ``dst`` (NXAST_REG_MOVE)."""

    src: str
    dst: str
    n_bits: int

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return f"RegMove({self.src!r}, {self.dst!r}, {self.n_bits})"


@dataclass(frozen=True, slots=True, repr=False)
class Resubmit:
    """Run the packet through another table and come back (NXAST_RESUBMIT_TABLE)."""

    table: str  # stage name

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return f"Resubmit({self.table!r})"


@dataclass(frozen=True, slots=True, repr=False)
class DecTtl:
    """Decrement the IPv4 TTL / IPv6 hop limit; a packet whose TTL runs out is dropped."""

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return "DecTtl()"


@dataclass(frozen=True, slots=True, repr=False)
class PushVlan:
    """Push an 802.1Q header (its VID is then set with SetField vlan_vid)."""

    ethertype: int = 0x8100

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return f"PushVlan({self.ethertype:#x})"


@dataclass(frozen=True, slots=True, repr=False)
class PopVlan:
    """Pop the outer 802.1Q header."""

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return "PopVlan()"


@dataclass(frozen=True, slots=True, repr=False)
class Learn:
    """NXAST_LEARN: the switch adds (or refreshes) a flow in stage ``table``, built from this packet.

    The learned flow matches each ``matches`` pair (field of the learned flow, field
    of this packet whose value it takes) and its actions load each ``loads`` pair
    (field of this packet, field of the learned flow to set). It carries ``cookie``
    and ages out after ``idle_timeout`` seconds unused.
    """

    table: str  # stage name; the stage must be declared switch_owned
    priority: int
    idle_timeout: int
    cookie: int
    matches: tuple[tuple[str, str], ...]
    loads: tuple[tuple[str, str], ...]

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return (f"Learn({self.table!r}, {self.priority}, {self.idle_timeout}, {self.cookie:#x}, "
                f"{self.matches!r}, {self.loads!r})")


# ct_state bits (OVS's; os-ken does not name them).
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


@dataclass(frozen=True, slots=True, repr=False)
class CT:
    """NXAST_CT: send the packet through the connection tracker in conntrack ``zone``.

    ``zone`` is an immediate 16-bit zone or the name of a field whose low 16 bits hold
    it (``ct(zone=reg8[0..15])``). ``commit`` stores the connection. With ``table``
    (a stage name) the pipeline forks as in OVS: the tracked packet (``ct_state`` /
    ``ct_zone`` set) resumes in that table, the original goes on untracked after this
    action; our flows therefore end with it.
    """

    commit: bool = False
    zone: int | str = 0
    table: str | None = None
    # NAT: None = none; "" = ct(nat): apply the connection's NAT (un-NAT a reply); "src=<ip>" = source NAT
    # of a new connection to that address (ct(commit, nat(src=<ip>))).
    nat: str | None = None

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash; unchanged for a CT without NAT
        if self.nat is None:
            return f"CT({self.commit}, {self.zone!r}, {self.table!r})"
        return f"CT({self.commit}, {self.zone!r}, {self.table!r}, {self.nat!r})"


@dataclass(frozen=True, slots=True, repr=False)
class Conjunction:
    """NXAST_CONJUNCTION: this flow is clause ``clause`` (1-based) of ``n_clauses`` of conjunctive match ``id``.

    A flow with conjunction actions has no other action and no goto; every flow of one
    conjunctive match (and the flow matching ``conj_id=id``) shares one priority.
    """

    id: int
    clause: int
    n_clauses: int

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return f"Conjunction({self.id}, {self.clause}, {self.n_clauses})"


@dataclass(frozen=True, slots=True, repr=False)
class Bucket:
    """One bucket of a fast-failover group: live while ``watch_port`` is, or while ``watch_group``
    is (a fast-failover group is live while any of its buckets is); neither: always live.

    OVS runs a bucket's actions as an OpenFlow action *set*, not as a list: pop_vlan, push_vlan,
    dec_ttl, then every set_field and move in order, then only ONE of group, output, resubmit,
    ct (the last of the first kind present, in that order); anything else (learn...) is left out
    (``flows.simulate.bucket_actions``; ``flows.simulate.lint`` reports a bucket it would change).
    """

    actions: tuple
    watch_port: int | None = None
    watch_group: Group | None = None

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash; unchanged without a watch group
        if self.watch_group is None:
            return f"Bucket({self.actions!r}, {self.watch_port!r})"
        return f"Bucket({self.actions!r}, {self.watch_port!r}, {self.watch_group!r})"

    @property
    def always_live(self) -> bool:
        """Whether the bucket watches nothing (on the switch it watches LIVE_GROUP_ID)."""
        return self.watch_port is None and self.watch_group is None


GROUP_ID_MAX = 0xFFFFFF00  # OFPG_MAX: ids above are reserved
LIVE_GROUP_ID = 0
"""What a bucket without a watch port watches on the switch: OVS refuses a fast-failover bucket that watches
nothing (OFPGMFC_INVALID_GROUP), so such a bucket watches this group instead, an indirect group of one empty
bucket, which OVS counts as always live. No Group's id is 0 (see Group.group_id); the controller keeps this
group on a switch while a group there needs it (controller.groups)."""


@dataclass(frozen=True, slots=True, repr=False)
class Group:
    """Apply a fast-failover group (OFPGT_FF) defined here: the first live bucket's actions run.

    A bucket is live while its watched port is (OVS counts a port with BFD as live only
    while BFD says so), so the switch itself chooses, with no controller in the loop. The
    group is defined inline, by the flow using it: its OpenFlow id (:attr:`group_id`) is a
    hash of its buckets, so, as with a flow's cookie, the same group has the same id on
    every switch and across restarts, and any change of its buckets gives a new id. The
    controller adds the groups a switch lacks before the flows that use them and deletes
    those no flow uses any more after (see :mod:`controller.groups`).
    """

    buckets: tuple[Bucket, ...]

    @property
    def group_id(self) -> int:
        """The group's OpenFlow id: 1 + a 32-bit hash of its buckets, below OFPG_MAX."""
        digest = int.from_bytes(_blake2b(repr(self.buckets).encode(), digest_size=4).digest(), "big")
        return 1 + digest % (GROUP_ID_MAX - 1)

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return f"Group({self.buckets!r})"


METER_ID_MAX = 0xFFFF0000  # OFPM_MAX: ids above are virtual or reserved


@dataclass(frozen=True, slots=True, repr=False)
class Meter:
    """Police the packet with a meter defined here: past ``rate`` packets a second (bursts of ``burst``),
    the switch drops it; else the flow's actions run (OpenFlow 1.3's meter instruction, ``meter:N``).

    A flow has at most one meter, as its first action (the switch applies it before any action;
    one written later would read as if it came later). To pass a packet through two meters, one
    flow meters it and goes to a table whose flow meters it again (``ls_in_dhcp`` -> ``ls_in_punt``).
    ``scope`` says what the meter bounds (a port, a hypervisor's slow path): flows naming the same
    scope, rate and burst share one meter. Like a group, it is defined inline by the flows using
    it: its id (:attr:`meter_id`) is a hash of its content, the same on every switch and across
    restarts, and the controller adds the meters a switch lacks before the flows that use them
    and deletes the ones no flow uses after (:mod:`controller.groups`).
    """

    scope: str
    rate: int  # packets a second
    burst: int  # packets

    @property
    def meter_id(self) -> int:
        """The meter's OpenFlow id: 1 + a 32-bit hash of its content, below OFPM_MAX."""
        digest = int.from_bytes(_blake2b(repr(self).encode(), digest_size=4).digest(), "big")
        return 1 + digest % (METER_ID_MAX - 1)

    def __repr__(self) -> str:  # plain, fast: it feeds every cookie hash
        return f"Meter({self.scope!r}, {self.rate}, {self.burst})"


Action = Output | SetField | RegMove | Resubmit | PushVlan | PopVlan | DecTtl | Learn | CT | Conjunction | Group | Meter


def flow_meter(actions: tuple[Action, ...]) -> Meter | None:
    """The meter a flow's packets pass first, if any (it can only be the first action)."""
    return actions[0] if actions and type(actions[0]) is Meter else None


def used_groups(actions: Iterable[Action]) -> Iterator[Group]:
    """The groups ``actions`` use, each after the groups its buckets use (the order a switch must add them in)."""
    for act in actions:
        if type(act) is Group:
            for bucket in act.buckets:
                if bucket.watch_group is not None:  # watched: on the switch before the group watching it
                    yield from used_groups((bucket.watch_group,))
                yield from used_groups(bucket.actions)
            yield act


@dataclass(frozen=True, slots=True)
class Flow:
    """One OpenFlow 1.3 flow: apply-actions, then optionally goto a later table."""

    table_id: int
    priority: int
    match: tuple[tuple[str, MatchValue], ...]
    actions: tuple[Action, ...]
    goto: int | None
    cookie: int
    description: str
    # The flow's OpenFlow encoding, filled in by whoever encodes it first (controller.wire): a flow
    # shared by every hypervisor of a network is encoded once, not once per bridge. Not part of
    # the flow's value (no compare, no hash, no repr).
    encoded: bytes | None = field(default=None, compare=False, repr=False)
    # What its actions need besides the flow itself (LEARNS, USES_GROUPS, USES_METER bits), worked out once
    # when it is built: a full sync asks it of every flow of a bridge, several times (controller.switch, .groups).
    traits: int = field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:  # (Flow(...) only: make_flow builds it without __init__, see _new_flow)
        _set_traits(self, action_traits(self.actions))

    @property
    def key(self) -> tuple[int, int, tuple[tuple[str, MatchValue], ...]]:
        """What OpenFlow identifies a flow by: table, priority and match."""
        return (self.table_id, self.priority, self.match)


LEARNS, USES_GROUPS, USES_METER = 1, 2, 4  # Flow.traits


def action_traits(actions: tuple[Action, ...]) -> int:
    """The Flow.traits of a flow with ``actions``: whether it learns, uses groups, passes a meter first."""
    kinds = set(map(type, actions))
    return ((LEARNS if Learn in kinds else 0) | (USES_GROUPS if Group in kinds else 0)
            | (USES_METER if flow_meter(actions) is not None else 0))


_set_traits = Flow.traits.__set__  # type: ignore[attr-defined]
_blake2b = hashlib.blake2b
# Actions that name stages, or have rules of their own.
_CHECKED = frozenset({CT, Conjunction, Resubmit, Learn, Group, Meter})

# Flow's generated __init__ sets each field through object.__setattr__ (it is frozen): a quarter of
# make_flow's time. make_flow sets the slots straight through their descriptors instead (C calls).
_new = object.__new__
_FLOW_SLOTS = tuple(getattr(Flow, name).__set__
                    for name in ("table_id", "priority", "match", "actions", "goto", "cookie", "description",
                                 "encoded", "traits"))
memo_encoding = Flow.encoded.__set__  # type: ignore[attr-defined]
"""``memo_encoding(flow, data)``: keep ``data`` as the flow's ``encoded`` (the dataclass is frozen)."""


def _new_flow(table_id: int, priority: int, match: tuple, actions: tuple, goto: int | None, cookie: int,
              description: str, traits: int) -> Flow:
    """``Flow(...)``, built faster (the same object: make_flow has checked what __init__ would not)."""
    flow = _new(Flow)
    s_table, s_priority, s_match, s_actions, s_goto, s_cookie, s_description, s_encoded, s_traits = _FLOW_SLOTS
    s_table(flow, table_id)
    s_priority(flow, priority)
    s_match(flow, match)
    s_actions(flow, actions)
    s_goto(flow, goto)
    s_cookie(flow, cookie)
    s_description(flow, description)
    s_encoded(flow, None)
    s_traits(flow, traits)
    return flow


def make_flow(
    stage: Stage,
    priority: str,
    match: dict[str, MatchValue],
    actions: list[Action] | tuple[Action, ...] = (),
    goto: Stage | None = None,
    description: str = "",
    priority_offset: int = 0,
    actions_repr: str | None = None,
) -> Flow:
    """Build a flow of ``stage``, checked against the pipeline declaration.

    ``actions_repr``, if given, must be ``repr(tuple(actions))`` (built by a caller that holds
    the pieces' renderings already: a flood's hundreds of copies).
    ``priority`` is one of the stage's named priorities. Raises
    :class:`PipelineError` for a match field the stage does not allow, or a goto
    or resubmit to a stage not in its ``next_stages``.
    """
    if not stage.allowed_matches.issuperset(match):
        bad = set(match) - stage.allowed_matches
        raise PipelineError(f"{stage.name}: match on {sorted(bad)} not allowed")
    if goto is not None and goto.name not in stage.next_stages:
        raise PipelineError(f"{stage.name}: goto {goto.name} not allowed")
    actions_t = tuple(actions)
    traits = 0
    if not _CHECKED.isdisjoint(map(type, actions_t)):  # most flows' actions (a flood's hundreds) need no check
        _check_actions(stage, actions_t, goto)
        traits = action_traits(actions_t)
    prio = stage.priorities.get(priority) if not priority_offset else None
    if prio is None:  # an offset, or no such priority (raises)
        prio = stage.priority(priority, priority_offset)
    table_id = stage.table_id
    match_t = tuple(sorted(match.items()))
    goto_id = goto.table_id if goto is not None else None
    # The cookie: a hash of the flow's content as text, repr((table_id, prio, match_t, actions_t, goto_id)),
    # put together from pieces (the match's items from a cache, the actions' maybe rendered already).
    if actions_repr is None or len(actions_t) <= 1:
        actions_repr = repr(actions_t)
    text = f"({table_id!r}, {prio!r}, {_match_repr(match_t)}, {actions_repr}, {goto_id!r})"
    cookie = (table_id << COOKIE_STAGE_SHIFT) | int.from_bytes(_blake2b(text.encode(), digest_size=7).digest(), "big")
    return _new_flow(table_id, prio, match_t, actions_t, goto_id, cookie, description, traits)


def _match_repr(match: tuple[tuple[str, MatchValue], ...]) -> str:
    """``repr(match)``, each (field, value) item's rendering cached: the same few recur in many flows.

    Sound because match values are ints, strings or pairs of ints (MatchValue), which render alike
    whenever they are equal (a bool, equal to 0 or 1 but rendered otherwise, is no match value).
    """
    try:
        parts = [_ITEM_REPR[item] for item in match]
    except KeyError:
        if len(_ITEM_REPR) >= _ITEM_REPR_MAX:
            _ITEM_REPR.clear()
        parts = [_ITEM_REPR.setdefault(item, repr(item)) for item in match]
    if len(parts) == 1:
        return f"({parts[0]},)"
    return "(" + ", ".join(parts) + ")"


_ITEM_REPR: dict[tuple[str, MatchValue], str] = {}
_ITEM_REPR_MAX = 1_000_000  # emptied when full (it refills with what is in use)


def _check_actions(stage: Stage, actions: tuple[Action, ...], goto: Stage | None, in_bucket: bool = False) -> None:
    """The actions that name other stages or come with rules of their own (see make_flow)."""
    # Picked out in C: a flood's hundreds of copies are plain but for a resubmit per local port.
    for act in compress(actions, map(_CHECKED.__contains__, map(type, actions))):
        kind = type(act)
        if kind is Meter and (in_bucket or flow_meter(actions) is None or act.rate < 1 or act.burst < 1
                              or sum(type(a) is Meter for a in actions) > 1):
            raise PipelineError(f"{stage.name}: a meter is a flow's first action (never in a group's bucket), "
                                "with a rate and a burst")
        if kind is CT and act.table is not None and act.table not in stage.next_stages:
            raise PipelineError(f"{stage.name}: ct(table={act.table}) not allowed")
        if kind is Conjunction and (goto is not None or not all(isinstance(a, Conjunction) for a in actions)
                                    or not 1 <= act.clause <= act.n_clauses or act.n_clauses < 2):
            raise PipelineError(f"{stage.name}: a conjunction flow has only valid conjunction actions, no goto")
        if kind is Resubmit and act.table not in stage.next_stages + stage.resubmit_stages:
            raise PipelineError(f"{stage.name}: resubmit to {act.table} not allowed")
        if kind is Learn:
            _check_learn(stage, act)
        if kind is Group:
            for bucket in act.buckets:  # a bucket's actions obey the stage's rules as the flow's own do
                _check_actions(stage, tuple(bucket.actions), goto, in_bucket=True)


def _check_learn(stage: Stage, act: Learn) -> None:
    """A learn action may only write into a switch-owned stage, with that stage's matches and cookie."""
    target = STAGE_BY_NAME.get(act.table)
    if target is None or not target.switch_owned:
        raise PipelineError(f"{stage.name}: learn into {act.table}, which is not a switch-owned stage")
    bad = {dst for dst, _ in act.matches} - target.allowed_matches
    if bad:
        raise PipelineError(f"{stage.name}: learned flow in {target.name} may not match on {sorted(bad)}")
    if act.cookie >> COOKIE_STAGE_SHIFT != target.table_id:
        raise PipelineError(f"{stage.name}: learned cookie {act.cookie:#x} does not name {target.name}")
