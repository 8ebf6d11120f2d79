"""The durable topology store: what every implementation promises, and the topology's errors.

A store persists and reloads records (:mod:`topology.records`); it decides nothing.
:class:`topology.state.Topology` validates a write against its graph, then hands the
store the write's operations in one :meth:`Store.commit`: every operation is stored,
or none. Two implementations keep the same contract (``tests/test_store_contract.py``
runs one suite against both):

- :class:`topology.store_sqlite.SqliteStore`, the embedded default: one SQLite file,
  one process;
- :class:`topology.store_etcd.EtcdStore` (``--store etcd://HOST:2379[,HOST:2379...]``):
  several controller instances share it, each keeping its graph current from a watch.

Whatever validation did, a store refuses a write that would break a record kind's
unique keys or parents (:mod:`topology.records`) with :class:`Conflict`, and one that
was validated on an older view of a record, unique key or guard than the store's
with :class:`Stale` (the writer catches up and validates again).

Every committed write is delivered, in revision order, to the store's listener
(:meth:`Store.listen`) as a :class:`Commit`: the one path by which a graph learns of
any write, its own instance's included.

The error types of the topology layer carry a type name (Neutron's, e.g.
``PortNotFound``) and a class; only the northbound API maps the class to an HTTP status.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from topology.records import Op, Record, segment_name

__all__ = ["BadRequest", "Commit", "Conflict", "NotFound", "Snapshot", "Stale", "Store", "StoreUnavailable",
           "TopologyError", "Unavailable", "open_store", "segment_name"]


class TopologyError(Exception):
    """A rejected request: ``kind`` names the error (Neutron's type names: ``PortNotFound``...).

    The domain knows no HTTP: the northbound API maps each class to a status
    (:func:`apps.northbound.api.http_status`).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class BadRequest(TopologyError):
    """The request is malformed or invalid."""


class NotFound(TopologyError):
    """A referenced resource does not exist."""


class Conflict(TopologyError):
    """The request conflicts with the current state (in use, duplicate...)."""


class Unavailable(TopologyError):
    """A pool (VNIs, VLAN ids, keys) is exhausted, or the store cannot take writes."""


class StoreUnavailable(Unavailable):
    """The store cannot take writes now (etcd without quorum, unreachable): nothing was written."""


class Stale(Exception):
    """A write validated on an older view than the store's: catch up to ``revision`` and validate again."""

    def __init__(self, revision: int, detail: str = "") -> None:
        super().__init__(f"stale write (store at revision {revision}) {detail}".strip())
        self.revision = revision


@dataclass
class Commit:
    """One committed write: its revision, its operations in order (record None: deleted), counters it set."""

    revision: int
    ops: list[tuple[str, str, Record | None]]
    counters: dict[str, int] = field(default_factory=dict)
    origin: str = ""  # the committing store object's instance id
    snapshot: Snapshot | None = None  # set: the store lost the thread of commits; rebuild from this


@dataclass
class Snapshot:
    """Every stored record (per kind, in creation order), the allocation counters, at one revision."""

    revision: int
    records: dict[str, list[Record]]
    counters: dict[str, int]


Listener = Callable[[Commit], None]


class Store(ABC):
    """A durable, transactional home for the topology's records."""

    url: str = ""
    instance: str = ""  # this store object's id: the origin of its own commits

    @abstractmethod
    def load(self) -> Snapshot:
        """Every stored record and counter, consistently, at the store's current revision."""

    @abstractmethod
    def commit(self, ops: Sequence[Op], *, before: Mapping[tuple[str, str], Record | None],
               counters: Mapping[str, int], based_on: int) -> int:
        """Store ``ops`` atomically and return the new revision.

        ``before``: each written record as the writer's view (at revision ``based_on``)
        holds it, None where it holds none. Raises :class:`Conflict` (a unique key or
        parent rule refuses the write), :class:`Stale` (the writer's view is out of date)
        or :class:`StoreUnavailable` (nothing was written).
        """

    @abstractmethod
    def listen(self, listener: Listener, after: int) -> None:
        """Deliver every commit after revision ``after`` to ``listener``, in order, one at a time."""

    @abstractmethod
    def close(self) -> None:
        """Stop delivering and release the store's resources."""

    def latest_revision(self) -> int:
        """The revision of the latest commit of anyone's (0: only this process writes, nothing to wait for)."""
        return 0

    def status(self) -> dict[str, object]:
        """What an operator wants to know about the store (its kind, reachability...)."""
        return {"url": self.url}


def open_store(url: str, *, exclusive: bool = False) -> Store:
    """The store a ``--store`` value names: ``etcd://HOST:PORT[,HOST:PORT...][/prefix]`` or an SQLite path.

    ``exclusive``: an SQLite file is held by this process alone while open (the controller's).
    """
    if url.startswith("etcd://"):
        from topology.store_etcd import EtcdStore
        return EtcdStore(url)
    from topology.store_sqlite import SqliteStore
    return SqliteStore(url.removeprefix("sqlite://"), exclusive=exclusive)
