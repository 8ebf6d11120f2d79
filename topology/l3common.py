"""What the router, floating IP and security group parts of :class:`topology.state.Topology` share.

:class:`L3Base` is a mixin: its methods run on the Topology (``self.graph``,
``self.store``, ``self.lock``, ``self._apply``, ``self._notify`` and the port
helpers are the Topology's). Records made by one write are persisted by
:meth:`L3Base._put_l3` inside the write's transaction and applied to the graph
by :meth:`L3Base._graph_put_l3` after the commit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from topology import graph_l3, store_l3
from topology.model import FixedIP, Network, Port
from topology.model_l3 import FloatingIP, Router, SecurityGroup, SecurityGroupRule
from topology.store import NotFound, Store, Unavailable

PORT_KEY_MAX = 2**31
L3Record = Router | FloatingIP | SecurityGroup | SecurityGroupRule


def now() -> str:
    """A Neutron-style UTC timestamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_id() -> str:
    """A fresh resource id."""
    return str(uuid.uuid4())


class Deleted:
    """A record to delete: ``Deleted("sg_rule", id)`` in a list of records to write."""

    def __init__(self, kind: str, ident: str) -> None:
        self.kind, self.ident = kind, ident


class L3Base:
    """Mixin of :class:`topology.state.Topology`: persistence and graph helpers for L3 records."""

    def _put_l3(self, tx: Store, records: Iterable[L3Record | Port | Deleted]) -> None:
        """Persist records (ports included) in order, inside the current transaction."""
        for record in records:
            if isinstance(record, Deleted):
                if record.kind == "port":
                    tx.delete("port", record.ident)
                else:
                    store_l3.delete(tx, record.kind, record.ident)
            elif isinstance(record, Port):
                tx.put_port(self._persistable(record))
            else:
                store_l3.put(tx, record)

    def _graph_put_l3(self, records: Iterable[L3Record | Port | Deleted]) -> None:
        """Apply committed records to the graph, in order."""
        for record in records:
            if isinstance(record, Deleted):
                self.graph.remove(record.kind, record.ident)
            elif isinstance(record, Port):
                self.graph.put_port(record)
            elif isinstance(record, Router):
                graph_l3.put_router(self.graph, record)
            elif isinstance(record, FloatingIP):
                graph_l3.put_fip(self.graph, record)
            elif isinstance(record, SecurityGroup):
                graph_l3.put_sg(self.graph, record)
            else:
                graph_l3.put_sg_rule(self.graph, record)

    def _write(self, records: list[L3Record | Port | Deleted], affected_before: set[str] | None = None,
               affected_after: Any = None) -> None:
        """One transaction writing ``records``, then the graph, then one notification.

        ``affected_after`` (a callable) is evaluated on the updated graph; the
        notification is the union of both sets.
        """
        with self.store.transaction() as tx:
            self._put_l3(tx, records)
        self._apply(lambda: self._graph_put_l3(records))
        after = affected_after() if affected_after is not None else set()
        self._notify((affected_before or set()) | after)

    def _load_l3(self) -> list[FloatingIP]:
        """Put the stored groups, rules and routers into the (freshly loaded) graph; return the floating IPs.

        Loading in this order (then the ports, then the floating IPs) makes no
        placeholder node, so every kind's records keep their creation order.
        """
        routers, fips, sgs, rules = store_l3.load(self.store)
        self._graph_put_l3([*sgs, *rules, *routers])
        return fips

    def _new_port(self, tx: Store, net: Network, *, project_id: str, owner: str, device_id: str,
                  fixed_ips: tuple[FixedIP, ...], mac: str | None = None) -> Port:
        """A service port (router interface/gateway, floating IP) created inside ``tx``."""
        key = tx.next_key("port_key", 1, PORT_KEY_MAX, tx.port_key_taken)
        if key is None:
            raise Unavailable("PortKeyExhausted", "No logical port key is free.")
        stamp = now()
        port = Port(id=new_id(), network_id=net.id, project_id=project_id, key=key,
                    mac_address=mac or self._mac(net.id, None), fixed_ips=fixed_ips, device_owner=owner,
                    device_id=device_id, attrs={"name": "", "created_at": stamp, "updated_at": stamp,
                                                "security_groups": [], "port_security_enabled": False})
        tx.put_port(self._persistable(port))
        return self._with_status(port)

    def _touch(self, record: Any, **changes: Any) -> Any:
        """The record with ``changes`` and a new ``updated_at``."""
        return replace(record, **changes, attrs={**record.attrs, "updated_at": now()})

    def _l3(self, kind: str, ident: Any, error: str, label: str) -> Any:
        record = self.graph.get(kind, ident) if isinstance(ident, str) else None
        if record is None:
            raise NotFound(error, f"{label} {ident} could not be found.")
        return record
