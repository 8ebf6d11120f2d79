"""Security-group rules without a remote group, kept incrementally (a mixin of :class:`flows.engine.FlowEngine`).

Such a rule is part of its group's conjunctive match (:mod:`flows.acl`): on a hypervisor, a
group is *local* while one of its members is a local port with port security; each local
group has a ``("gconj", group)`` unit (its conj_id flows), each distinct match of the local
groups' plain rules a ``("gclause", direction, match)`` unit (one flow listing the groups
having it), and each local port's membership clauses are in its ``("acl", port)`` unit.
So a rule added to a group recomputes one unit per match piece on each hypervisor where the
group is local, whatever its member count.

The engine keeps, so that none of this walks a group's members:

- per hypervisor (:class:`flows.engine_state.HypervisorFlows`): its local groups with their
  local members, and their conjunction ids; updated when a port's ``acl`` unit is
  recomputed (every change of a port's groups, port security, binding or plugging does that);
- for the whole engine: on which hypervisors each group is local (where its rules go), and
  every plain rule's match pieces by group (what a ``gclause`` unit gathers).
"""

from __future__ import annotations

from flows.acl import Piece, allocate_gcids, gcid_base, port_group_ids, rule_pieces
from flows.engine_state import HypervisorFlows, Plan
from flows.flow import Flow
from flows.units import BaseInfo, UnitKey, gclause_unit, gconj_unit
from topology.graph import TopologyGraph
from topology.model_l3 import SecurityGroupRule


class GroupUnits:
    """The group units of :class:`flows.engine.FlowEngine` (see the module's doc). The engine has ``graph``
    and ``hvs``; this keeps ``_local_hvs``, ``_pieces`` and ``_rule_pieces``."""

    graph: TopologyGraph
    hvs: dict[str, HypervisorFlows]
    _local_hvs: dict[str, set[str]]  # group -> the hypervisors it is local on
    _pieces: dict[str, dict[Piece, set[str]]]  # group -> match piece of its plain rules -> those rules' ids
    _rule_pieces: dict[str, tuple[str, tuple[Piece, ...]]]  # plain rule id -> (its group, its pieces) as indexed

    def _reset_groups(self) -> None:
        """Index every plain rule afresh (a full rebuild: the hypervisors' own indexes come with their rebuild)."""
        self._local_hvs, self._pieces, self._rule_pieces = {}, {}, {}
        for rule in self.graph.records("sg_rule"):
            self._index_rule(rule.id, rule)

    def _index_rule(self, rule_id: str, rule: SecurityGroupRule | None) -> tuple[tuple | None, tuple | None]:
        """Index a rule as it is now (None: gone); (what was indexed for it before, what is now).

        Driven by the rule's id and the graph's current record, not by the journal's old record:
        a rule written twice in one batch is indexed once, as it ended up.
        """
        old = self._rule_pieces.pop(rule_id, None)
        if old is not None:
            by_piece = self._pieces.get(old[0], {})
            for piece in old[1]:
                ids = by_piece.get(piece)
                if ids is not None:
                    ids.discard(rule_id)
                    if not ids:
                        del by_piece[piece]
            if not by_piece:
                self._pieces.pop(old[0], None)
        pieces = rule_pieces(rule) if rule is not None else ()
        if not pieces:
            return old, None
        new = self._rule_pieces[rule_id] = (rule.security_group_id, pieces)
        by_piece = self._pieces.setdefault(rule.security_group_id, {})
        for piece in pieces:
            by_piece.setdefault(piece, set()).add(rule_id)
        return old, new

    def _plain_rule_changed(self, plan: Plan, rule_id: str) -> None:
        """A rule was written: where its group is local, the clause units of its old and new match pieces."""
        old, new = self._index_rule(rule_id, self.graph.get("sg_rule", rule_id))
        if old == new:
            return  # not a plain rule, or only its description changed
        for sg_id, pieces in (e for e in (old, new) if e is not None):
            for name in self._local_hvs.get(sg_id, ()):
                for piece in pieces:
                    plan.unit(name, ("gclause", *piece))

    def _group_changed(self, plan: Plan, sg_id: str) -> None:
        """A group was written (statefulness) or deleted: its units wherever it is local."""
        for name in self._local_hvs.get(sg_id, ()):
            for key in self._group_units(sg_id):
                plan.unit(name, key)

    def _group_units(self, sg_id: str) -> set[UnitKey]:
        """The units that change when a group becomes local, or stops being local, on a hypervisor."""
        return {("gconj", sg_id), *(("gclause", *piece) for piece in self._pieces.get(sg_id, ()))}

    def _index_groups(self, state: HypervisorFlows, info: BaseInfo | None) -> None:
        """A hypervisor's local groups afresh, from its local ports (its rebuild; ``info`` None: it is gone)."""
        for sg_id in state.groups:
            self._unlocal(state.name, sg_id)
        state.groups, state.port_groups = {}, {}
        for port in info.view.local_ports if info is not None else ():
            groups = port_group_ids(port)
            if groups:
                state.port_groups[port.id] = groups
                for sg_id in groups:
                    state.groups.setdefault(sg_id, set()).add(port.id)
        for sg_id in state.groups:
            self._local_hvs.setdefault(sg_id, set()).add(state.name)
        state.gcids = allocate_gcids(state.groups)

    def _unlocal(self, name: str, sg_id: str) -> None:
        hvs = self._local_hvs.get(sg_id)
        if hvs is not None:
            hvs.discard(name)
            if not hvs:
                del self._local_hvs[sg_id]

    def _regroup(self, state: HypervisorFlows, port_ids: list[str]) -> set[UnitKey] | None:
        """Local ports whose acl unit is recomputed: count them in their groups as they are now.

        Returns the group units that changed with it (of the groups that became local here or
        stopped being so), or None when the conjunction ids must be allocated afresh (a group
        met another's id, or left while one had moved off its own: see allocate_gcids): the
        caller rebuilds the hypervisor. Its indexes are consistent either way.
        """
        keys: set[UnitKey] = set()
        for port_id in port_ids:
            port = state.info.local_port(port_id) if state.info is not None else None
            new, old = port_group_ids(port), state.port_groups.get(port_id, ())
            if new == old:
                continue
            if new:
                state.port_groups[port_id] = new
            else:
                del state.port_groups[port_id]
            for sg_id in set(old) - set(new):
                members = state.groups[sg_id]
                members.discard(port_id)
                if members:
                    continue
                del state.groups[sg_id]
                self._unlocal(state.name, sg_id)
                keys |= self._group_units(sg_id)
                if state.gcids.pop(sg_id) != gcid_base(sg_id) or any(
                        cid != gcid_base(g) for g, cid in state.gcids.items()):
                    return None
            for sg_id in set(new) - set(old):
                members = state.groups.setdefault(sg_id, set())
                members.add(port_id)
                if len(members) > 1:
                    continue
                self._local_hvs.setdefault(sg_id, set()).add(state.name)
                keys |= self._group_units(sg_id)
                cid = state.gcids[sg_id] = gcid_base(sg_id)
                if cid in (c for g, c in state.gcids.items() if g != sg_id):
                    return None
        return keys

    def _group_unit_keys(self, state: HypervisorFlows) -> list[UnitKey]:
        """Every group unit of a hypervisor (its rebuild)."""
        keys: list[UnitKey] = [("gconj", sg_id) for sg_id in state.groups]
        keys += {("gclause", *piece): None for sg_id in state.groups for piece in self._pieces.get(sg_id, ())}
        return keys

    def _group_unit(self, state: HypervisorFlows, key: UnitKey) -> tuple[Flow, ...]:
        """A ``gconj`` or ``gclause`` unit's flows."""
        if key[0] == "gconj":
            return gconj_unit(self.graph, key[1], state.gcids)
        return gclause_unit(self.graph, (key[1], key[2]), state.groups, self._pieces, state.gcids)
