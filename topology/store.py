"""The durable topology store: one SQLite file, one table per resource kind.

The store only persists and reloads records; it does not decide anything.
:class:`topology.state.Topology` validates a write fully, then runs it inside
:meth:`Store.transaction` so that either every row of the write is committed or
none is. Uniqueness that must hold even if validation had a bug (logical keys,
segmentation ids, datapath ids, MAC per network, IP per subnet) is also declared
as SQLite constraints, and a violation surfaces as a :class:`Conflict`.

This module also defines the error types of the topology layer: they carry the
Neutron error type name and HTTP status so the northbound API can report them
verbatim, and so can any other caller.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from topology import store_l3
from topology.model import FixedIP, Hypervisor, Network, Port, Subnet


class TopologyError(Exception):
    """A rejected request: ``kind`` is the Neutron error type, ``status`` the HTTP status."""

    status = 500

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class BadRequest(TopologyError):
    """400: the request is malformed or invalid."""

    status = 400


class NotFound(TopologyError):
    """404: a referenced resource does not exist."""

    status = 404


class Conflict(TopologyError):
    """409: the request conflicts with the current state (in use, duplicate...)."""

    status = 409


class Unavailable(TopologyError):
    """503: a pool (VNIs, VLAN ids, keys) is exhausted."""

    status = 503


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
"""


def segment_name(net: Network) -> str | None:
    """The unique segment a network occupies on the fabric (None: it occupies none)."""
    if net.network_type == "flat":
        return f"flat:{net.physical_network}"
    if net.network_type == "vlan":
        return f"vlan:{net.physical_network}:{net.segmentation_id}"
    return f"{net.network_type}:{net.segmentation_id}"


def _dump(record: Any) -> str:
    return json.dumps(asdict(record), sort_keys=True)


def network_from_json(text: str) -> Network:
    """Rebuild a :class:`Network` from its stored JSON."""
    return Network(**json.loads(text))


def subnet_from_json(text: str) -> Subnet:
    """Rebuild a :class:`Subnet` from its stored JSON (pools back to tuples)."""
    d = json.loads(text)
    d["allocation_pools"] = tuple(tuple(p) for p in d["allocation_pools"])
    return Subnet(**d)


def port_from_json(text: str) -> Port:
    """Rebuild a :class:`Port` from its stored JSON (fixed IPs back to records)."""
    d = json.loads(text)
    d["fixed_ips"] = tuple(FixedIP(**f) for f in d["fixed_ips"])
    return Port(**d)


def hypervisor_from_json(text: str) -> Hypervisor:
    """Rebuild a :class:`Hypervisor` from its stored JSON."""
    return Hypervisor(**json.loads(text))


class Store:
    """SQLite persistence of networks, subnets, ports and hypervisors.

    Not thread-safe by itself: the owning :class:`Topology` serialises every
    call with its lock (the connection is shared between the API's threads).
    """

    def __init__(self, db_path: str) -> None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction
        # is exactly the span of `transaction()`, never an implicit one.
        self._conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed write survives power loss, not just a process crash.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(SCHEMA + store_l3.SCHEMA)  # routers, floating IPs, security groups
        self._in_tx = False

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """Run the body in one transaction: commit on success, roll back on any exception."""
        if self._in_tx:
            raise RuntimeError("nested store transaction")
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_tx = True
        try:
            yield self
        except sqlite3.IntegrityError as exc:
            self._conn.execute("ROLLBACK")
            raise Conflict("Conflict", f"Conflict with stored state: {exc}") from exc
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")
        finally:
            self._in_tx = False

    def _exec(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        if not self._in_tx:
            raise RuntimeError("store write outside a transaction")
        return self._conn.execute(sql, params)

    # -- allocation ----------------------------------------------------------
    def next_key(self, counter: str, lo: int, hi: int, taken: Callable[[int], bool]) -> int | None:
        """Allocate an int in [lo, hi] that ``taken`` rejects not, or None if all are taken.

        Keys go up from a persisted counter and only wrap around when the range
        is used up, so a deleted resource's key is not handed out again at once
        (a switch may still hold flows with it until its next sync).
        """
        row = self._exec("SELECT value FROM meta WHERE name = ?", (counter,)).fetchone()
        start = row[0] if row and lo <= row[0] <= hi else lo
        candidate = start
        while taken(candidate):
            candidate = lo if candidate >= hi else candidate + 1
            if candidate == start:
                return None
        self._exec(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (counter, candidate + 1),
        )
        return candidate

    def network_key_taken(self, key: int) -> bool:
        """Whether a network already has this logical key."""
        return self._conn.execute("SELECT 1 FROM networks WHERE key = ?", (key,)).fetchone() is not None

    def port_key_taken(self, key: int) -> bool:
        """Whether a port already has this logical key."""
        return self._conn.execute("SELECT 1 FROM ports WHERE key = ?", (key,)).fetchone() is not None

    def segments_in_use(self, prefix: str) -> set[str]:
        """The stored segment names starting with ``prefix``."""
        rows = self._conn.execute("SELECT segment FROM networks WHERE segment LIKE ? ESCAPE '\\'",
                                  (prefix.replace("%", "\\%").replace("_", "\\_") + "%",))
        return {r[0] for r in rows}

    # -- writes (inside a transaction) ----------------------------------------------
    # Upserts keep the row's rowid, so load order (rowid) stays creation order.
    def put_network(self, net: Network) -> None:
        """Insert or update a network."""
        self._exec(
            "INSERT INTO networks (id, key, segment, body) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "key = excluded.key, segment = excluded.segment, body = excluded.body",
            (net.id, net.key, segment_name(net), _dump(net)),
        )

    def put_subnet(self, subnet: Subnet) -> None:
        """Insert or update a subnet."""
        self._exec(
            "INSERT INTO subnets (id, network_id, body) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "network_id = excluded.network_id, body = excluded.body",
            (subnet.id, subnet.network_id, _dump(subnet)),
        )

    def put_port(self, port: Port) -> None:
        """Insert or update a port and replace its IP allocations."""
        self._exec(
            "INSERT INTO ports (id, network_id, key, mac_address, body) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET network_id = excluded.network_id, key = excluded.key, "
            "mac_address = excluded.mac_address, body = excluded.body",
            (port.id, port.network_id, port.key, port.mac_address, _dump(port)),
        )
        self._exec("DELETE FROM ip_allocations WHERE port_id = ?", (port.id,))
        for fip in port.fixed_ips:
            self._exec(
                "INSERT INTO ip_allocations (subnet_id, ip_address, port_id) VALUES (?, ?, ?)",
                (fip.subnet_id, fip.ip_address, port.id),
            )

    def put_hypervisor(self, hv: Hypervisor) -> None:
        """Insert or update a hypervisor."""
        self._exec(
            "INSERT INTO hypervisors (name, datapath_id, body) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "datapath_id = excluded.datapath_id, body = excluded.body",
            (hv.name, f"{hv.datapath_id:016x}", _dump(hv)),
        )

    def delete(self, kind: str, ident: str) -> None:
        """Delete one record; ``kind`` is ``network``, ``subnet``, ``port`` or ``hv``."""
        table, column = {
            "network": ("networks", "id"), "subnet": ("subnets", "id"),
            "port": ("ports", "id"), "hv": ("hypervisors", "name"),
        }[kind]
        self._exec(f"DELETE FROM {table} WHERE {column} = ?", (ident,))

    # -- load ----------------------------------------------------------------------
    def load(self) -> tuple[list[Network], list[Subnet], list[Port], list[Hypervisor]]:
        """Every stored record, each kind in creation order."""
        def rows(table: str) -> list[str]:
            return [r[0] for r in self._conn.execute(f"SELECT body FROM {table} ORDER BY rowid")]

        return (
            [network_from_json(b) for b in rows("networks")],
            [subnet_from_json(b) for b in rows("subnets")],
            [port_from_json(b) for b in rows("ports")],
            [hypervisor_from_json(b) for b in rows("hypervisors")],
        )
