"""A switch's groups and meters, reconciled the way its flows are: read on connect, never flushed.

Our groups (OpenFlow 1.3 fast-failover groups, :class:`flows.flow.Group`) and meters
(:class:`flows.flow.Meter`) are defined inline by the flows that use them. Each one's id is
a hash of its content, as a flow's cookie is a hash of the flow: the same group or meter
has the same id on every switch and across restarts, and a changed one is a new id, whose
flows change too (their cookies hash their actions). So reconciling them needs their ids
only, and never modifies one (no OFPGC_MODIFY / OFPMC_MODIFY): a change is a new one added
and the old one deleted. Both kinds follow the same rules (:class:`Kind` says how each is
read, added and deleted):

- The groups (meters) a switch must hold are the ones its desired flows use, with the
  groups their buckets use, and the always-live group (:data:`flows.flow.LIVE_GROUP_ID`)
  while a bucket watches no port.
- On connect, and before each retry, the switch's ids are read (group desc, meter config).
- Before a sync's bundle, the ones that the flows it adds use and the switch lacks are
  added, outside the bundle (an unused group or meter is harmless), nested groups first, and
  confirmed by a barrier: OVS refuses a flow whose group or meter is missing. A refused add
  fails the sync without sending the bundle (its flows would be refused in it) and is
  logged with its text; the sync is retried like a refused bundle (after a re-read).
  OFPGMFC_GROUP_EXISTS / OFPMMFC_METER_EXISTS is no failure: that id has that content.
- After the bundle is committed, the ones no desired flow uses any more are deleted:
  never before, since OVS deletes every flow using a group or meter with it. A refused
  delete is logged and left for a later sync (an unused one is harmless).

Every group and meter on br-int is ours (ids up to OFPG_MAX / OFPM_MAX); reserved ids above
(OFPM_CONTROLLER...) are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from os_ken.ofproto import ofproto_v1_3 as ofp
from prometheus_client import Counter

from controller import metrics, wire
from flows.flow import (
    GROUP_ID_MAX,
    LIVE_GROUP_ID,
    METER_ID_MAX,
    USES_GROUPS,
    USES_METER,
    Flow,
    Group,
    Meter,
    used_groups,
)
from flows.ofctl import LIVE_GROUP_TEXT, group_text, meter_text

LOG = logging.getLogger("tenantflow.groups")

Message = Callable[[int], bytes]
"""An OpenFlow message to send, built from the transaction id it is given (see controller.wire)."""


class GroupLink(Protocol):
    """What group and meter reconciliation needs of its switch (:class:`controller.switch.Switch`)."""

    @property
    def label(self) -> str: ...

    def request(self, msg: Message) -> list: ...

    def send_checked(self, messages: Sequence[Message]) -> list[list]: ...


Content = Group | Meter | None
"""What an id stands for (None: the always-live group, which no flow names)."""


@dataclass(frozen=True)
class Kind:
    """How one kind of switch object that flows refer to by id is found in flows, read, added and deleted."""

    name: str  # "group" or "meter", in logs
    trait: int  # the Flow.traits bit of a flow that refers to one (asked of every flow of a full sync)
    required: Callable[[Iterable[Flow]], dict[int, Content]]  # id -> content, in the order to add them
    add: Callable[[Content], Message]
    delete: Callable[[int], Message]
    read: Message  # the multipart request listing the switch's ids
    exists: tuple[int, int]  # the error (type, code) of an add whose id is there already
    text: Callable[[int, Content], str]  # as ovs-ofctl takes it
    max_id: int  # ids above are reserved: never deleted
    mods: Counter  # adds and deletes sent, by hypervisor and command


def required(flows: Iterable[Flow]) -> dict[int, Group | None]:
    """Group id -> group (None: the always-live group) of every group ``flows`` use, in the order to add them."""
    groups: dict[int, Group | None] = {}
    for flow in flows:
        if flow.traits & USES_GROUPS:
            for group in used_groups(flow.actions):
                groups.setdefault(group.group_id, group)
    if any(b.always_live for g in groups.values() if g is not None for b in g.buckets):
        groups = {LIVE_GROUP_ID: None, **groups}  # first: the buckets that watch no port watch it
    return groups


def _group_add(group: Content) -> Message:
    return wire.live_group_add if group is None else partial(wire.group_add, group)


def _group_text(group_id: int, group: Content) -> str:
    if group_id == LIVE_GROUP_ID:
        return LIVE_GROUP_TEXT
    return group_text(group) if isinstance(group, Group) else f"group_id={group_id}"


def required_meters(flows: Iterable[Flow]) -> dict[int, Meter]:
    """Meter id -> meter of every meter ``flows`` use."""
    meters: dict[int, Meter] = {}
    for flow in flows:
        if flow.traits & USES_METER:
            meter = flow.actions[0]  # (a meter is always a flow's first action: flows.flow.flow_meter)
            meters.setdefault(meter.meter_id, meter)
    return meters


def _meter_text(meter_id: int, meter: Content) -> str:
    return meter_text(meter) if isinstance(meter, Meter) else f"meter={meter_id}"


GROUPS = Kind("group", USES_GROUPS, required, _group_add, lambda gid: partial(wire.group_delete, gid),
              wire.group_desc_request, (ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_GROUP_EXISTS), _group_text,
              GROUP_ID_MAX, metrics.GROUP_MODS)
METERS = Kind("meter", USES_METER, required_meters, lambda meter: partial(wire.meter_add, meter),
              lambda mid: partial(wire.meter_delete, mid), wire.meter_config_request,
              (ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_METER_EXISTS), _meter_text, METER_ID_MAX, metrics.METER_MODS)


class SwitchObjects:
    """The groups (or meters) of one connected switch: which it holds, which its committed flows use.

    It keeps no reference to its switch (a long-lived switch must hold no reference cycle,
    see controller.heap): each call that talks to the switch is given it.
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.present: set[int] = set()  # ids of the ones the switch holds
        self._users: dict[int, frozenset[int]] = {}  # cookie of a committed flow using some -> their ids

    @property
    def used(self) -> set[int]:
        """Ids of the ones the flows of the last committed sync use."""
        return set().union(*self._users.values())

    def took(self, link: GroupLink, parts: list) -> None:
        """What the switch answered to ``kind.read`` (sent by the caller, with other requests): the ids it holds."""
        self.present = {oid for part in parts for oid in part}
        LOG.debug("switch %s: %d %ss installed", link.label, len(self.present), self.kind.name)

    def add_for(self, link: GroupLink, flows: Iterable[Flow]) -> list[str]:
        """Add the ones that ``flows`` (about to be added) use and the switch lacks; the errors, as text."""
        kind = self.kind
        todo = {oid: c for oid, c in kind.required(flows).items() if oid not in self.present}
        if not todo:
            return []
        errors: list[str] = []
        replies = link.send_checked([kind.add(c) for c in todo.values()])
        for (oid, content), errs in zip(todo.items(), replies, strict=True):
            refused = [e for e in errs if (getattr(e, "type", None), getattr(e, "code", None)) != kind.exists]
            if refused:
                errors += [f"switch {link.label}: {wire.error_text(e)} for add {kind.name} {kind.text(oid, content)}"
                           for e in refused]
            else:
                self.present.add(oid)
        kind.mods.labels(link.label, "add").inc(len(todo))
        for text in errors:
            LOG.error("%s", text)
        LOG.info("switch %s: %d %ss added, %d refused", link.label, len(todo) - len(errors), kind.name, len(errors))
        return errors

    def committed(self, link: GroupLink, full: bool, desired: Mapping[int, Flow], changed: Iterable[int]) -> None:
        """A sync committed ``desired`` (every flow if ``full``, else the ``changed`` cookies that are desired):
        record which ones the flows use, and delete the ones none uses any more."""
        trait, required_of = self.kind.trait, self.kind.required
        if full:
            self._users = {c: frozenset(required_of((f,))) for c, f in desired.items() if f.traits & trait}
        else:
            for cookie in changed:
                flow = desired.get(cookie)
                if flow is not None and flow.traits & trait:
                    self._users[cookie] = frozenset(required_of((flow,)))
                else:
                    self._users.pop(cookie, None)
        used = self.used
        unused = [oid for oid in sorted(self.present - used, reverse=True) if oid <= self.kind.max_id]
        if unused:  # the always-live group (0) last: groups watching it go first
            self._delete(link, unused)

    def _delete(self, link: GroupLink, ids: list[int]) -> None:
        kind = self.kind
        replies = link.send_checked([kind.delete(oid) for oid in ids])
        refused = 0
        for oid, errs in zip(ids, replies, strict=True):
            if errs:  # left in present: the next committed sync tries again
                refused += 1
                for err in errs:
                    LOG.error("switch %s: %s for delete %s %d (unused: left for a later sync)", link.label,
                              wire.error_text(err), kind.name, oid)
            else:
                self.present.discard(oid)
        kind.mods.labels(link.label, "delete").inc(len(ids))
        LOG.info("switch %s: %d unused %ss deleted, %d refused", link.label, len(ids) - refused, kind.name, refused)
