"""SQLite persistence of routers, floating IPs and security groups (see :mod:`topology.store`).

Functions over a :class:`topology.store.Store` (always inside its
``transaction()`` for writes). Uniqueness that must hold whatever validation
did is declared here too: a router's key, one default security group per
project, one floating IP per (port, fixed address). A floating IP's address is
an IP allocation of its ``network:floatingip`` port, so the ``ip_allocations``
table keeps it unique.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from topology.model_l3 import FloatingIP, Router, SecurityGroup, SecurityGroupRule

if TYPE_CHECKING:
    from topology.store import Store

SCHEMA = """
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
"""

TABLES = {"router": "routers", "fip": "floatingips", "sg": "security_groups", "sg_rule": "security_group_rules"}


def _dump(record: Any) -> str:
    return json.dumps(asdict(record), sort_keys=True)


def router_key_taken(store: Store, key: int) -> bool:
    """Whether a router already has this logical key."""
    return store._conn.execute("SELECT 1 FROM routers WHERE key = ?", (key,)).fetchone() is not None


def put(store: Store, record: Router | FloatingIP | SecurityGroup | SecurityGroupRule) -> None:
    """Insert or update one record (inside a transaction)."""
    if isinstance(record, Router):
        sql, params = ("INSERT INTO routers (id, key, body) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                       "key = excluded.key, body = excluded.body", (record.id, record.key, _dump(record)))
    elif isinstance(record, FloatingIP):
        sql, params = ("INSERT INTO floatingips (id, floating_port_id, port_id, fixed_ip_address, body) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET floating_port_id = "
                       "excluded.floating_port_id, port_id = excluded.port_id, fixed_ip_address = "
                       "excluded.fixed_ip_address, body = excluded.body",
                       (record.id, record.floating_port_id, record.port_id, record.fixed_ip_address, _dump(record)))
    elif isinstance(record, SecurityGroup):
        sql, params = ("INSERT INTO security_groups (id, project_id, is_default, body) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(id) DO UPDATE SET project_id = excluded.project_id, "
                       "is_default = excluded.is_default, body = excluded.body",
                       (record.id, record.project_id, int(record.is_default), _dump(record)))
    elif isinstance(record, SecurityGroupRule):
        sql, params = ("INSERT INTO security_group_rules (id, security_group_id, remote_group_id, body) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET security_group_id = "
                       "excluded.security_group_id, remote_group_id = excluded.remote_group_id, body = excluded.body",
                       (record.id, record.security_group_id, record.remote_group_id, _dump(record)))
    else:
        raise TypeError(f"not an L3 record: {record!r}")
    store._exec(sql, params)


def delete(store: Store, kind: str, ident: str) -> None:
    """Delete one record; ``kind`` is ``router``, ``fip``, ``sg`` or ``sg_rule``."""
    store._exec(f"DELETE FROM {TABLES[kind]} WHERE id = ?", (ident,))


def load(store: Store) -> tuple[list[Router], list[FloatingIP], list[SecurityGroup], list[SecurityGroupRule]]:
    """Every stored L3 record, each kind in creation order."""
    def rows(table: str) -> list[dict]:
        return [json.loads(r[0]) for r in store._conn.execute(f"SELECT body FROM {table} ORDER BY rowid")]

    routers = []
    for d in rows("routers"):
        d["routes"] = tuple(tuple(r) for r in d["routes"])
        routers.append(Router(**d))
    return (routers, [FloatingIP(**d) for d in rows("floatingips")],
            [SecurityGroup(**d) for d in rows("security_groups")],
            [SecurityGroupRule(**d) for d in rows("security_group_rules")])
