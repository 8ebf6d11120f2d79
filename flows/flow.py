"""A small, immutable flow representation and the checked constructor.

A :class:`Flow` is what the compiler emits and what the controller reconciles.
Its cookie = stage table id (top 8 bits) + a 56-bit hash of its content, so the
same flow always gets the same cookie (across controller restarts too) and any
change of match, priority or actions gives a new one. Reconciliation therefore
compares cookies: no need to parse a switch's instructions back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flows.pipeline import COOKIE_STAGE_SHIFT, PipelineError, Stage

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


Action = Output | SetField | RegMove | Resubmit | PushVlan | PopVlan | DecTtl


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

    @property
    def key(self) -> tuple[int, int, tuple[tuple[str, MatchValue], ...]]:
        """What OpenFlow identifies a flow by: table, priority and match."""
        return (self.table_id, self.priority, self.match)


def _content_hash(table_id: int, priority: int, match: tuple, actions: tuple, goto: int | None) -> int:
    text = repr((table_id, priority, match, actions, goto)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=7).digest(), "big")


def make_flow(
    stage: Stage,
    priority: str,
    match: dict[str, MatchValue],
    actions: list[Action] | tuple[Action, ...] = (),
    goto: Stage | None = None,
    description: str = "",
    priority_offset: int = 0,
) -> Flow:
    """Build a flow of ``stage``, checked against the pipeline declaration.

    ``priority`` is one of the stage's named priorities. Raises
    :class:`PipelineError` for a match field the stage does not allow, or a goto
    or resubmit to a stage not in its ``next_stages``.
    """
    bad = set(match) - stage.allowed_matches
    if bad:
        raise PipelineError(f"{stage.name}: match on {sorted(bad)} not allowed")
    if goto is not None and goto.name not in stage.next_stages:
        raise PipelineError(f"{stage.name}: goto {goto.name} not allowed")
    for act in actions:
        if isinstance(act, Resubmit) and act.table not in stage.next_stages + stage.resubmit_stages:
            raise PipelineError(f"{stage.name}: resubmit to {act.table} not allowed")
    prio = stage.priority(priority, priority_offset)
    match_t = tuple(sorted(match.items()))
    actions_t = tuple(actions)
    goto_id = goto.table_id if goto is not None else None
    cookie = (stage.table_id << COOKIE_STAGE_SHIFT) | _content_hash(
        stage.table_id, prio, match_t, actions_t, goto_id
    )
    return Flow(stage.table_id, prio, match_t, actions_t, goto_id, cookie, description)
