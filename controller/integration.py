"""The integration bridge, br-int, that the controller makes and keeps on a host that names itself.

What OVN's ovn-controller does for its own br-int: the host says who it is in its database,
``Open_vSwitch external_ids:system-id`` (here: a registered hypervisor's name), and how its
bridges are made (``external_ids:tenantflow-datapath-type``, OVN's ``ovn-bridge-datapath-type``:
``netdev`` for the userspace datapath); its ``ovs-vsctl set-manager`` makes the controller its
OVSDB manager, and the controller makes br-int: the hypervisor's registered datapath id
(``other_config:datapath-id``), ``disable-in-band``, ``fail_mode=secure``, OpenFlow 1.3, and the
controller targets (``--bridge-controllers``, else the address the host reached us at). Over TLS
the host's certificate names it and a system-id naming another hypervisor is refused.

Pure planning over an :class:`ovs.db.idl.Idl`'s rows, no I/O of its own: :func:`identify` says
which hypervisor a host is, :func:`plan_integration` what its br-int lacks (nothing when it is
right: an unchanged bridge is never rewritten), :func:`apply_integration` writes that into the
connection's open transaction, which :mod:`controller.ovsdb` commits with the tunnel ports.
No bridge is ever deleted, and an operator's own controllers (``set-controller``) are kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.tunnels import ControllerSpec, datapath_id, insert_controller
from topology.model import Hypervisor

INTEGRATION_BRIDGE = "br-int"
SYSTEM_ID = "system-id"  # Open_vSwitch external_ids: the host's name (OVN's key)
DATAPATH_TYPE = "tenantflow-datapath-type"  # Open_vSwitch external_ids: br-int's datapath_type (netdev...)
FAIL_MODE = "secure"  # without its controller br-int forwards nothing (no learning switch between tenants)
PROTOCOL = "OpenFlow13"
# A relative unix: target is opened in ovs-vswitchd's own run directory (/var/run/openvswitch on a
# packaged host), which is also the only place it accepts one: the link of README's unix variant.
UNIX_TARGET = "unix:tenantflow.sock"
TARGET = re.compile(r"^(ssl|tcp):(\[[0-9a-fA-F:.]+\]|[\w.-]+):\d{1,5}$|^unix:\S+$")


def host_row(tables: Mapping[str, Any]) -> Any | None:
    """The host's one ``Open_vSwitch`` row (None before the replica has it)."""
    return next(iter(tables["Open_vSwitch"].rows.values()), None)


def identify(system_id: str | None, certificate_name: str | None,
             registered: Mapping[str, Hypervisor]) -> tuple[Hypervisor | None, str]:
    """Which registered hypervisor a host is, by its name: (that hypervisor or None, why it is refused or "").

    Over TLS the certificate's name is the host's identity; a system-id naming another
    registered hypervisor is refused, as a bridge carrying another's datapath id is. Without
    TLS the system-id is (the unix socket and plain TCP trust what a host claims).
    """
    if certificate_name is not None:
        if system_id in registered and system_id != certificate_name:
            return None, (f"its certificate names {certificate_name!r}, but its system-id names hypervisor "
                          f"{system_id}")
        return registered.get(certificate_name), ""
    return registered.get(system_id or ""), ""


def parse_targets(text: str) -> tuple[str, ...]:
    """``--bridge-controllers``: ``ssl:IP:PORT``, ``tcp:IP:PORT`` or ``unix:PATH`` targets, by commas or spaces."""
    targets = tuple(t for t in re.split(r"[\s,]+", text.strip()) if t)
    for target in targets:
        if not TARGET.match(target):
            raise ValueError(f"{target!r} is not an OpenFlow controller target (ssl:IP:PORT, tcp:IP:PORT, unix:PATH)")
    return targets


@dataclass(frozen=True)
class BridgeTargets:
    """Where a br-int the controller makes points: ``explicit`` (``--bridge-controllers``) if given, else this
    controller as the host reached it: over TLS ``ssl:<our address on that connection>:<ssl_port>``, over plain
    TCP ``tcp:...:<tcp_port>``, over the unix socket :data:`UNIX_TARGET`; a port of None: no listener of that kind."""

    explicit: tuple[str, ...] = ()
    ssl_port: int | None = None
    tcp_port: int | None = None
    unix: str | None = UNIX_TARGET

    def for_connection(self, kind: str, sockname: Any) -> tuple[str, ...]:
        """The targets for a host whose manager connection is of ``kind`` (pssl, ptcp, punix), ours at ``sockname``."""
        if self.explicit:
            return self.explicit
        if kind == "punix":
            return (self.unix,) if self.unix else ()
        port = self.ssl_port if kind == "pssl" else self.tcp_port if kind == "ptcp" else None
        if port is None or not isinstance(sockname, tuple):
            return ()
        host = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        return (f"{'ssl' if kind == 'pssl' else 'tcp'}:{host}:{port}",)


@dataclass
class IntegrationPlan:
    """What one transaction must do for a host's br-int: make it, or set the columns that differ."""

    create: bool = False
    columns: dict[str, Any] = field(default_factory=dict)  # Bridge column -> value (fail_mode, protocols...)
    other_config: dict[str, str] = field(default_factory=dict)  # keys to set, the others kept
    controllers: tuple[str, ...] | None = None  # Controller rows to give it (it has none)

    def __bool__(self) -> bool:
        return self.create or bool(self.columns or self.other_config or self.controllers)

    def summary(self) -> str:
        """For the logs: ``created`` or the columns corrected."""
        if self.create:
            return f"created ({len(self.controllers or ())} controller(s))"
        changed = [*self.columns, *(f"other_config:{k}" for k in self.other_config)]
        changed += ["controller"] if self.controllers else []
        return "corrected " + ", ".join(changed)


def configured_dpid(bridge: Any) -> int | None:
    """A Bridge row's ``other_config:datapath-id`` (what it was made with; ovs-vswitchd fills in datapath_id)."""
    try:
        return int(bridge.other_config.get("datapath-id", ""), 16)
    except ValueError:
        return None


def find_integration(bridges: Mapping[Any, Any], dpid: int) -> Any | None:
    """The host's bridge for datapath id ``dpid``: one carrying it (run or configured), else the one named br-int."""
    carrying = [row for row in bridges.values() if dpid in (datapath_id(row), configured_dpid(row))]
    if carrying:  # br-int first, then by name: stable whatever the replica's order
        return min(carrying, key=lambda row: (row.name != INTEGRATION_BRIDGE, row.name))
    return next((row for row in bridges.values() if row.name == INTEGRATION_BRIDGE), None)


def _optional(value: Any) -> Any:
    """An optional column's value (the IDL gives ``[]`` or ``[value]``), or None."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def wanted_columns(dpid: int, datapath_type: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """br-int's columns and other_config keys as the controller makes them."""
    columns: dict[str, Any] = {"fail_mode": [FAIL_MODE], "protocols": [PROTOCOL]}
    if datapath_type:
        columns["datapath_type"] = datapath_type
    return columns, {"datapath-id": f"{dpid:016x}", "disable-in-band": "true"}


def plan_integration(bridges: Mapping[Any, Any], dpid: int, datapath_type: str | None,
                     targets: tuple[str, ...]) -> tuple[Any | None, IntegrationPlan]:
    """(the host's br-int row or None, what it lacks) for a hypervisor of datapath id ``dpid``.

    No bridge for it (:func:`find_integration`): br-int is made whole. One: only what differs
    is set: its datapath id, in-band control off, ``fail_mode=secure``, OpenFlow 1.3 among its
    protocols (an operator's other versions kept), the datapath type when the host names one, and
    ``targets`` as controllers only while it has none.
    """
    row = find_integration(bridges, dpid)
    columns, other_config = wanted_columns(dpid, datapath_type)
    if row is None:
        return None, IntegrationPlan(True, columns, other_config, targets)
    todo = IntegrationPlan()
    if _optional(row.fail_mode) != FAIL_MODE:
        todo.columns["fail_mode"] = [FAIL_MODE]
    if PROTOCOL not in row.protocols:
        todo.columns["protocols"] = sorted({*row.protocols, PROTOCOL})
    if datapath_type and row.datapath_type != datapath_type:
        todo.columns["datapath_type"] = datapath_type
    if configured_dpid(row) != dpid:
        todo.other_config["datapath-id"] = other_config["datapath-id"]
    if row.other_config.get("disable-in-band") != "true":
        todo.other_config["disable-in-band"] = "true"
    if not row.controller and targets:
        todo.controllers = targets
    return row, todo


def apply_integration(txn: Any, host: Any, bridge: Any | None, todo: IntegrationPlan) -> None:
    """Write ``todo`` into ``txn`` (an open :class:`ovs.db.idl.Transaction`): make br-int, or correct ``bridge``.

    A new bridge is made as ``ovs-vsctl add-br`` makes one (its internal port and interface of
    its own name) and joins ``Open_vSwitch.bridges`` by mutation, with that column verified
    unchanged since read: two writers making br-int at once (a cluster's master handing over)
    cannot both commit; the second sees it and has nothing left to do.
    """
    if todo.create:
        bridge = _insert_bridge(txn, host)
        bridge.other_config = todo.other_config
    else:  # key by key: an operator's other keys (and one written meanwhile) are kept
        for key, value in sorted(todo.other_config.items()):
            bridge.setkey("other_config", key, value)
    for column, value in todo.columns.items():
        setattr(bridge, column, value)
    if todo.controllers:
        bridge.verify("controller")
        bridge.controller = [insert_controller(txn, ControllerSpec(target)) for target in todo.controllers]


def _insert_bridge(txn: Any, host: Any) -> Any:
    """A new br-int with its internal port, added to the host's bridges."""
    tables = txn.idl.tables
    iface = txn.insert(tables["Interface"])
    iface.name, iface.type = INTEGRATION_BRIDGE, "internal"
    port = txn.insert(tables["Port"])
    port.name, port.interfaces = INTEGRATION_BRIDGE, [iface]
    bridge = txn.insert(tables["Bridge"])
    bridge.name, bridge.ports = INTEGRATION_BRIDGE, [port]
    host.verify("bridges")
    host.addvalue("bridges", bridge)
    return bridge
