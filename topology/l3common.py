"""What the router, floating IP and security group parts of :class:`topology.state.Topology` share.

:class:`L3Base` is a mixin: its methods run on the Topology (``self.graph``,
``self.lock``, the write path of :mod:`topology.core` and the port helpers are the
Topology's). A write's records, service ports included, go to the store in one
:meth:`topology.core.TopologyCore._commit`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

from topology.core import TopologyCore
from topology.model import FixedIP, Network, Port
from topology.model_l3 import FloatingIP, Router, SecurityGroup, SecurityGroupRule
from topology.records import Deleted
from topology.store import NotFound, Unavailable

__all__ = ["Deleted", "L3Base", "L3Record", "new_id", "now"]

PORT_KEY_MAX = 2**31
L3Record = Router | FloatingIP | SecurityGroup | SecurityGroupRule


def now() -> str:
    """A Neutron-style UTC timestamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_id() -> str:
    """A fresh resource id."""
    return str(uuid.uuid4())


class L3Base(TopologyCore):
    """Mixin of :class:`topology.state.Topology`: helpers the router, floating IP and group parts share."""

    def _new_port(self, net: Network, *, project_id: str, owner: str, device_id: str,
                  fixed_ips: tuple[FixedIP, ...], mac: str | None = None) -> Port:
        """A service port (router interface/gateway, floating IP) for the write being built."""
        key = self._next_key("port", 1, PORT_KEY_MAX)
        if key is None:
            raise Unavailable("PortKeyExhausted", "No logical port key is free.")
        stamp = now()
        port = Port(id=new_id(), network_id=net.id, project_id=project_id, key=key,
                    mac_address=mac or self._mac(net.id, None), fixed_ips=fixed_ips, device_owner=owner,
                    device_id=device_id, attrs={"name": "", "created_at": stamp, "updated_at": stamp,
                                                "security_groups": [], "port_security_enabled": False})
        return self._with_status(port)

    def _touch(self, record: Any, **changes: Any) -> Any:
        """The record with ``changes`` and a new ``updated_at``."""
        return replace(record, **changes, attrs={**record.attrs, "updated_at": now()})

    def _l3(self, kind: str, ident: Any, error: str, label: str) -> Any:
        record = self.graph.get(kind, ident) if isinstance(ident, str) else None
        if record is None:
            raise NotFound(error, f"{label} {ident} could not be found.")
        return record
