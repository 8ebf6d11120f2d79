"""The parts of the sync engine (controller.switch) that hold no connection: what a sync reports, where its
flows come from, and how flows are named in its log lines."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from controller.cluster import Role
from flows.flow import LEARNS, Flow, Learn
from flows.pipeline import STAGE_BY_TABLE


class SwitchGone(ConnectionError):
    """The connection closed or the switch was stopped: this worker has nothing more to do."""


class ReplyTimeout(ConnectionError):
    """The switch did not answer within REPLY_TIMEOUT (alive but overloaded, or gone silently)."""


class RequestRefused(ConnectionError):
    """The switch answered a request with an OpenFlow error."""


@dataclass
class _Waiter:
    """A reply (or the end of a multipart reply) some worker is waiting for."""

    event: threading.Event = field(default_factory=threading.Event)
    parts: list = field(default_factory=list)
    # A bundle's barrier: (the commit's xid, the commit) to send as soon as it is answered with no message of the
    # bundle refused; ``committing`` once that was sent (the event then waits for the commit's reply).
    commit: tuple[int, bytes] | None = None
    committing: bool = False


@dataclass
class PushResult:
    """Outcome of one sync."""

    added: int = 0
    deleted: int = 0
    committed: bool = True
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0  # encode + send + switch install + commit


def describe(flow: Flow) -> str:
    """A one-line, ovs-ofctl-like rendering of a flow with its description."""
    stage = STAGE_BY_TABLE.get(flow.table_id)
    match = ",".join(f"{k}={v[0]:#x}/{v[1]:#x}" if isinstance(v, tuple) else f"{k}={v}" for k, v in flow.match)
    name = stage.name if stage else str(flow.table_id)
    return (f"table={name} priority={flow.priority} cookie={flow.cookie:#x} {match} "
            f"-> {flow.actions} ({flow.description})")


class FlowSource(Protocol):
    """Where a switch's compiled flows come from (:class:`flows.engine.FlowEngine`)."""

    lock: threading.RLock

    def desired(self, hv_name: str) -> dict[int, Flow]: ...

    def take_changes(self, hv_name: str) -> set[int]: ...

    def compiles(self, hv_name: str) -> bool: ...

    def generation_of(self, hv_name: str) -> int: ...


class RoleSource(Protocol):
    """Which role this instance is to hold on a bridge (:class:`controller.cluster.Cluster`)."""

    def role_for(self, dpid: int) -> Role | None: ...


def _learns(flow: Flow | None) -> bool:
    return flow is not None and bool(flow.traits & LEARNS)


def learned_cookies(flows: Iterable[Flow]) -> set[int]:
    """Cookies of the flows the switch adds itself through the learn actions of ``flows``."""
    return {a.cookie for f in flows if f.traits & LEARNS for a in f.actions if isinstance(a, Learn)}


def _carried(item: object) -> str:
    if item is None:
        return "bundle open"
    if isinstance(item, int):
        return f"delete cookie={item:#x}"
    if isinstance(item, Flow):
        return describe(item)
    return f"delete {item}"  # a flow a subclass names otherwise (controller.provider: as the switch reported it)
