"""The embedded store: one SQLite file, one table per record kind (the default).

One controller process owns the file. Each :meth:`SqliteStore.commit` is one SQLite
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, ``synchronous=FULL``: a committed write
survives power loss). The record kinds' unique keys (:mod:`topology.records`) are held
in the ``unique_keys`` table, whose primary key refuses a second holder; the tables'
own constraints and foreign keys say the same for the oldest rules (logical keys,
segments, MAC per network, address per subnet), and the parents. A violation rolls
the whole write back and surfaces as :class:`topology.store.Conflict`.

One process writes, so a write is never validated on a stale view here: ``before`` and
``based_on`` are not needed (etcd uses them). Each commit bumps the ``revision`` counter
and is delivered to the listener synchronously, in the committing thread.

Faults (README "The store: backups and faults"): the file is checked before it is opened
(:func:`topology.store_check.check`), and the controller holds an exclusive lock on it while
open; a damaged, foreign or unusable file raises :class:`topology.store_check.StoreFault`. A write the disk
refuses (full, read-only, I/O error) is rolled back whole and raises
:class:`topology.store.StoreUnavailable` (503): the graph, which changes only on a
delivered commit, stays equal to the file, and the next write tries the disk again.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Mapping, Sequence

from topology import store_check
from topology.records import KINDS, Deleted, Op, Record, decode, encode, kind_of, op_key, segment_name
from topology.store import Commit, Conflict, Listener, Snapshot, Store, StoreUnavailable
from topology.store_check import APPLICATION_ID, SCHEMA_VERSION, FileLock, StoreFault

LOG = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY,
    key INTEGER NOT NULL UNIQUE,
    segment TEXT UNIQUE,            -- 'vxlan:1001', 'vlan:physnet1:101', 'flat:physnet1'
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS subnets (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks(id),
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ports (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks(id),
    key INTEGER NOT NULL UNIQUE,
    mac_address TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (network_id, mac_address)
);
CREATE TABLE IF NOT EXISTS ip_allocations (
    subnet_id TEXT NOT NULL REFERENCES subnets(id),
    ip_address TEXT NOT NULL,
    port_id TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
    PRIMARY KEY (subnet_id, ip_address)
);
CREATE TABLE IF NOT EXISTS hypervisors (
    name TEXT PRIMARY KEY,
    datapath_id TEXT NOT NULL UNIQUE,  -- 16 hex digits: a 64-bit dpid does not fit SQLite's signed INTEGER
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS routers (
    id TEXT PRIMARY KEY,
    key INTEGER NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS floatingips (
    id TEXT PRIMARY KEY,
    floating_port_id TEXT NOT NULL UNIQUE REFERENCES ports(id),
    port_id TEXT REFERENCES ports(id),
    fixed_ip_address TEXT,
    body TEXT NOT NULL,
    UNIQUE (port_id, fixed_ip_address)
);
CREATE TABLE IF NOT EXISTS security_groups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS security_groups_one_default ON security_groups (project_id) WHERE is_default = 1;
CREATE TABLE IF NOT EXISTS security_group_rules (
    id TEXT PRIMARY KEY,
    security_group_id TEXT NOT NULL REFERENCES security_groups(id),
    remote_group_id TEXT REFERENCES security_groups(id),
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS unique_keys (
    key TEXT PRIMARY KEY,           -- topology.records: 'mac/<network>/<mac>', 'ct-zone/<host>/<zone>'...
    holder TEXT NOT NULL            -- '<kind>/<id>'
);
"""

# kind -> (table, identity column, extra columns computed from the record)
_TABLES = {
    "network": ("networks", "id", lambda n: {"key": n.key, "segment": segment_name(n)}),
    "subnet": ("subnets", "id", lambda s: {"network_id": s.network_id}),
    "port": ("ports", "id", lambda p: {"network_id": p.network_id, "key": p.key, "mac_address": p.mac_address}),
    "hv": ("hypervisors", "name", lambda h: {"datapath_id": f"{h.datapath_id:016x}"}),
    "router": ("routers", "id", lambda r: {"key": r.key}),
    "fip": ("floatingips", "id", lambda f: {"floating_port_id": f.floating_port_id, "port_id": f.port_id,
                                            "fixed_ip_address": f.fixed_ip_address}),
    "sg": ("security_groups", "id", lambda g: {"project_id": g.project_id, "is_default": int(g.is_default)}),
    "sg_rule": ("security_group_rules", "id", lambda r: {"security_group_id": r.security_group_id,
                                                         "remote_group_id": r.remote_group_id}),
}
assert set(_TABLES) == set(KINDS)


class SqliteStore(Store):
    """SQLite persistence of every record kind (one process; thread-safe by its own lock)."""

    def __init__(self, db_path: str, *, exclusive: bool = False) -> None:
        """Check the file and open it (creating it if missing); :class:`StoreFault` if it cannot serve.

        ``exclusive`` (the controller): hold the file's lock while open, so that no other controller
        and no restore touches it (a reader such as ``tenantflow trace`` opens it without).
        """
        self.url = db_path
        self.instance = uuid.uuid4().hex
        self._listener: Listener | None = None
        self._lock: FileLock | None = None
        self._exclusive = exclusive
        self._failing = False  # the last write failed on the disk (logged once until one succeeds)
        if store_check.check_file(db_path) and exclusive:
            self._lock = FileLock(db_path)  # before SQLite's check: no restore may swap the file under it
        try:
            store_check.check(db_path)
            self._open(db_path)
        except BaseException:
            if getattr(self, "_conn", None) is not None:
                self._conn.close()
            if self._lock is not None:
                self._lock.release()
            raise

    def _open(self, db_path: str) -> None:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly a commit().
            self._conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
            if self._exclusive and self._lock is None:  # a new file
                self._lock = FileLock(db_path)
            self._conn.execute("PRAGMA busy_timeout = 5000")  # `tenantflow db backup` reads may hold it briefly
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed write survives power loss, not just a process crash.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(SCHEMA)
            self._stamp()
            self._fill_unique_keys()
        except sqlite3.Error as exc:
            raise store_check.fault_of(exc, db_path) or StoreFault("malformed", db_path, f"SQLite: {exc}") from None

    def _stamp(self) -> None:
        """Mark the file as a tenantflow store (SQLite's application_id) of this schema version."""
        if self._conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if self._conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _fill_unique_keys(self) -> None:
        """A file written before the unique_keys table existed gets it filled from its records (once)."""
        if self._conn.execute("SELECT 1 FROM unique_keys LIMIT 1").fetchone() is not None:
            return
        rows = [(key, f"{name}/{KINDS[name].ident(r)}") for name, records in self._records().items()
                for r in records for key in KINDS[name].unique(r)]
        if rows:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT OR IGNORE INTO unique_keys (key, holder) VALUES (?, ?)", rows)
            self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the database connection."""
        self._listener = None
        try:
            self._conn.close()  # the last connection checkpoints the WAL into the file
        except sqlite3.Error as exc:  # a full or read-only disk: the WAL keeps every commit, read at the next start
            LOG.warning("closing the store %s: %s (its WAL keeps the commits)", self.url, exc)
        if self._lock is not None:
            self._lock.release()

    # -- reads ---------------------------------------------------------------------------
    def _records(self) -> dict[str, list[Record]]:
        return read_records(self._conn, self.url)

    def _meta(self) -> dict[str, int]:
        return dict(self._conn.execute("SELECT name, value FROM meta"))

    def load(self) -> Snapshot:
        """Every stored record, each kind in creation order (rowid: upserts keep it)."""
        try:
            counters = self._meta()
            records = self._records()
        except sqlite3.Error as exc:
            raise store_check.fault_of(exc, self.url) or StoreFault("malformed", self.url, f"SQLite: {exc}") from None
        revision = counters.pop("revision", 0)
        return Snapshot(revision, records, counters)

    def _old(self, kind: str, ident: str) -> Record | None:
        table, column, _ = _TABLES[kind]
        row = self._conn.execute(f"SELECT body FROM {table} WHERE {column} = ?", (ident,)).fetchone()
        return decode(kind, row[0]) if row else None

    # -- writes -----------------------------------------------------------------------------
    def commit(self, ops: Sequence[Op], *, before: Mapping[tuple[str, str], Record | None] | None = None,
               counters: Mapping[str, int] | None = None, based_on: int = 0) -> int:
        """One transaction: every op, the unique keys they take and free, counters, the revision.

        :class:`StoreUnavailable` if the disk refuses it (full, read-only, I/O error): nothing was written.
        """
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            self._refused(exc)
            raise
        revision = -1
        try:
            applied = [self._write_op(op) for op in ops]
            for name, value in (counters or {}).items():
                self._set_meta(name, value)
            revision = (self._meta().get("revision") or 0) + 1
            self._set_meta("revision", revision)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback()
            raise Conflict("Conflict", f"Conflict with stored state: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            self._rollback()
            if not self._committed_after_all(revision):
                self._refused(exc)
                raise
        except BaseException:
            self._rollback()
            raise
        if self._failing:
            LOG.warning("the store %s takes writes again", self.url)
            self._failing = False
        if self._listener is not None:
            self._listener(Commit(revision, applied, dict(counters or {}), self.instance))
        return revision

    def _rollback(self) -> None:
        """End a failed transaction, if SQLite has not already rolled it back itself (it may, on a full disk)."""
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:  # the next BEGIN reports what is still wrong
                LOG.warning("rolling back a failed write to %s: %s", self.url, exc)

    def _committed_after_all(self, revision: int) -> bool:
        """Whether the file holds ``revision`` though its COMMIT reported an error (made durable, then failed)."""
        if revision < 0 or self._conn.in_transaction:  # not that far, or still our own uncommitted view
            return False
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        except sqlite3.Error:
            return False
        return row is not None and row[0] == revision

    def _refused(self, exc: sqlite3.DatabaseError) -> None:
        """Raise a write the disk refused as the API's 503 (return: another error, raised as it is: a 500)."""
        fault = store_check.fault_of(exc, self.url)
        if fault is None or fault.kind == "foreign":
            return
        if not self._failing:  # once per outage, not once per refused write
            LOG.error("a write to the store %s failed, nothing was written: %s; writes answer 503 until "
                      "the store takes them again", self.url, exc)
        self._failing = True
        state = store_check.disk_state(self.url)
        what = {"unwritable": f"cannot be written ({state or 'its disk is full or read-only'})",
                "unreadable": "cannot be written (an I/O error: its disk may be failing)",
                "in-use": "is locked by another process"}.get(fault.kind, "is damaged (see `tenantflow db check`)")
        raise StoreUnavailable("StoreUnavailable", f"The topology store {what}: {exc}. Nothing was written; "
                               "reads go on, and writes resume once the store can take them.") from exc

    def _write_op(self, op: Op) -> tuple[str, str, Record | None]:
        kind, ident = op_key(op)
        old = self._old(kind, ident)
        new = None if isinstance(op, Deleted) else op
        old_keys = set(KINDS[kind].unique(old)) if old is not None else set()
        new_keys = set(KINDS[kind].unique(new)) if new is not None else set()
        holder = f"{kind}/{ident}"
        for key in sorted(old_keys - new_keys):
            self._conn.execute("DELETE FROM unique_keys WHERE key = ?", (key,))
        for key in sorted(new_keys - old_keys):
            try:
                self._conn.execute("INSERT INTO unique_keys (key, holder) VALUES (?, ?)", (key, holder))
            except sqlite3.IntegrityError:
                other = self._conn.execute("SELECT holder FROM unique_keys WHERE key = ?", (key,)).fetchone()
                raise sqlite3.IntegrityError(f"{key} is held by {other[0] if other else '?'}") from None
        if new is None:
            self._delete(kind, ident)
        else:
            self._put(new)
        return kind, ident, new

    def _put(self, record: Record) -> None:
        kind = kind_of(record)
        table, column, extra = _TABLES[kind.name]
        values = {column: kind.ident(record), **extra(record), "body": encode(record)}
        names = list(values)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != column)
        # An upsert keeps the row's rowid, so load order stays creation order.
        self._conn.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                           f"ON CONFLICT({column}) DO UPDATE SET {updates}", tuple(values.values()))
        if kind.name == "port":
            self._conn.execute("DELETE FROM ip_allocations WHERE port_id = ?", (record.id,))
            self._conn.executemany("INSERT INTO ip_allocations (subnet_id, ip_address, port_id) VALUES (?, ?, ?)",
                                   [(f.subnet_id, f.ip_address, record.id) for f in record.fixed_ips])

    def _delete(self, kind: str, ident: str) -> None:
        table, column, _ = _TABLES[kind]
        self._conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (ident,))

    def _set_meta(self, name: str, value: int) -> None:
        self._conn.execute("INSERT INTO meta (name, value) VALUES (?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    def listen(self, listener: Listener, after: int) -> None:
        """Deliver this process's later commits (it is the only writer) to ``listener``."""
        self._listener = listener


def read_records(conn: sqlite3.Connection, path: str) -> dict[str, list[Record]]:
    """Every stored record, each kind in creation order; :class:`StoreFault` if one cannot be decoded."""
    out: dict[str, list[Record]] = {}
    for name, (table, _, _) in _TABLES.items():
        out[name] = []
        for rowid, body in conn.execute(f"SELECT rowid, body FROM {table} ORDER BY rowid"):
            try:
                out[name].append(decode(name, body))
            except Exception as exc:  # noqa: BLE001 - whatever a damaged body makes decode raise
                raise StoreFault("malformed", path, f"row {rowid} of {table} cannot be read ({exc})") from None
    return out
