"""A switch's groups, reconciled the way its flows are: read on connect, never flushed.

Our groups are OpenFlow 1.3 fast-failover groups defined inline by the flows that use
them (:class:`flows.flow.Group`). A group's id is a hash of its buckets, as a flow's
cookie is a hash of the flow: the same group has the same id on every switch and across
restarts, and a changed group is a new id, whose flows change too (their cookies hash
their actions). So reconciling groups needs their ids only, and never modifies a group
(no OFPGC_MODIFY): a change is a new group added and the old one deleted.

- The groups a switch must hold are the groups its desired flows use, with the groups
  their buckets use, and the always-live group (:data:`flows.flow.LIVE_GROUP_ID`) while a
  bucket watches no port.
- On connect, and before each retry, the switch's group ids are read (group desc).
- Before a sync's bundle, the groups that the flows it adds use and the switch lacks are
  added, outside the bundle (an unused group is harmless), nested ones first, and
  confirmed by a barrier: OVS refuses a flow whose group is missing. A refused group fails
  the sync without sending the bundle (its flows would be refused in it) and is logged
  with the group's text; the sync is retried like a refused bundle (after a re-read).
  OFPGMFC_GROUP_EXISTS is no failure: a group with that id has that content.
- After the bundle is committed, the groups no desired flow uses any more are deleted:
  never before, since OVS deletes every flow using a group with the group. A refused
  delete is logged and left for a later sync (an unused group is harmless).

Every group on br-int is ours (ids 0 to OFPG_MAX); reserved ids above are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Protocol

from os_ken.ofproto import ofproto_v1_3 as ofp

from controller import metrics, wire
from flows.flow import GROUP_ID_MAX, LIVE_GROUP_ID, Flow, Group, used_groups
from flows.ofctl import LIVE_GROUP_TEXT, group_text

LOG = logging.getLogger("tenantflow.groups")

Message = Callable[[int], bytes]
"""An OpenFlow message to send, built from the transaction id it is given (see controller.wire)."""


class GroupLink(Protocol):
    """What group reconciliation needs of its switch (:class:`controller.switch.Switch`)."""

    @property
    def label(self) -> str: ...

    def request(self, msg: Message) -> list: ...

    def send_checked(self, messages: Sequence[Message]) -> list[list]: ...


_GROUP = frozenset({Group})


def uses_groups(flow: Flow) -> bool:
    """Whether the flow has a group action (a set test in C: it runs on every flow of a full sync)."""
    return not _GROUP.isdisjoint(map(type, flow.actions))


def required(flows: Iterable[Flow]) -> dict[int, Group | None]:
    """Group id -> group (None: the always-live group) of every group ``flows`` use, in the order to add them."""
    groups: dict[int, Group | None] = {}
    for flow in flows:
        if uses_groups(flow):
            for group in used_groups(flow.actions):
                groups.setdefault(group.group_id, group)
    if any(b.always_live for g in groups.values() if g is not None for b in g.buckets):
        groups = {LIVE_GROUP_ID: None, **groups}  # first: the buckets that watch no port watch it
    return groups


def _add_message(group: Group | None) -> Message:
    return wire.live_group_add if group is None else partial(wire.group_add, group)


def _text(group_id: int, group: Group | None) -> str:
    if group_id == LIVE_GROUP_ID:
        return LIVE_GROUP_TEXT
    return group_text(group) if group is not None else f"group_id={group_id}"


def _exists(err) -> bool:
    """Whether an error says the group is there already (content-addressed ids: then it is the one we want)."""
    return getattr(err, "type", None) == ofp.OFPET_GROUP_MOD_FAILED and err.code == ofp.OFPGMFC_GROUP_EXISTS


class SwitchGroups:
    """The groups of one connected switch: which it holds, which its committed flows use.

    It keeps no reference to its switch (a long-lived switch must hold no reference cycle,
    see controller.heap): each call that talks to the switch is given it.
    """

    def __init__(self) -> None:
        self.present: set[int] = set()  # ids of the groups the switch holds
        self._users: dict[int, frozenset[int]] = {}  # cookie of a committed flow using groups -> their ids

    @property
    def used(self) -> set[int]:
        """Ids of the groups the flows of the last committed sync use."""
        return set().union(*self._users.values())

    def read(self, link: GroupLink) -> None:
        """Read the ids of every group on the switch (what it really holds)."""
        self.present = {gid for part in link.request(wire.group_desc_request) for gid in part}
        LOG.debug("switch %s: %d groups installed", link.label, len(self.present))

    def add_for(self, link: GroupLink, flows: Iterable[Flow]) -> list[str]:
        """Add the groups that ``flows`` (about to be added) use and the switch lacks; the errors, as text."""
        todo = {gid: g for gid, g in required(flows).items() if gid not in self.present}
        if not todo:
            return []
        errors: list[str] = []
        replies = link.send_checked([_add_message(g) for g in todo.values()])
        for (gid, group), errs in zip(todo.items(), replies, strict=True):
            refused = [e for e in errs if not _exists(e)]
            if refused:
                errors += [f"switch {link.label}: {wire.error_text(e)} for add group {_text(gid, group)}"
                           for e in refused]
            else:
                self.present.add(gid)
        metrics.GROUP_MODS.labels(link.label, "add").inc(len(todo))
        for text in errors:
            LOG.error("%s", text)
        LOG.info("switch %s: %d groups added, %d refused", link.label, len(todo) - len(errors), len(errors))
        return errors

    def committed(self, link: GroupLink, full: bool, desired: Mapping[int, Flow], changed: Iterable[int]) -> None:
        """A sync committed ``desired`` (every flow if ``full``, else the ``changed`` cookies that are desired):
        record which groups the flows use, and delete the groups none uses any more."""
        if full:
            self._users = {c: frozenset(required((f,))) for c, f in desired.items() if uses_groups(f)}
        else:
            for cookie in changed:
                flow = desired.get(cookie)
                if flow is not None and uses_groups(flow):
                    self._users[cookie] = frozenset(required((flow,)))
                else:
                    self._users.pop(cookie, None)
        used = self.used
        unused = [gid for gid in sorted(self.present - used, reverse=True) if gid <= GROUP_ID_MAX]
        if unused:  # the always-live group (0) last: groups watching it go first
            self._delete(link, unused)

    def _delete(self, link: GroupLink, group_ids: list[int]) -> None:
        replies = link.send_checked([partial(wire.group_delete, gid) for gid in group_ids])
        refused = 0
        for gid, errs in zip(group_ids, replies, strict=True):
            if errs:  # left in present: the next committed sync tries again
                refused += 1
                for err in errs:
                    LOG.error("switch %s: %s for delete group_id=%d (unused: left for a later sync)", link.label,
                              wire.error_text(err), gid)
            else:
                self.present.discard(gid)
        metrics.GROUP_MODS.labels(link.label, "delete").inc(len(group_ids))
        LOG.info("switch %s: %d unused groups deleted, %d refused", link.label, len(group_ids) - refused, refused)
