"""The ports the controller keeps on a host's bridges (tunnels, provider patches), read from and written to its
OVSDB replica.

Pure reconciliation over the rows of an :class:`ovs.db.idl.Idl`, no I/O of its own:
:func:`plan` compares what a bridge must have (:func:`topology.gateways.tunnel_ports`:
port name -> ``type`` / ``options:<key>`` / ``bfd:<key>``) with the ports it has whose name
starts with ``tg-`` (:data:`topology.gateways.GATEWAY_PORT_PREFIX`), and :func:`apply` writes
the difference into the IDL's open transaction; the overlay's ports (``tf-vxlan``...) and the
provider patch ports (``phy-<physnet>``/``int-<physnet>``) are made and corrected, never
deleted. No other port is ever touched, and a
port already as desired is never written: rewriting a tunnel interface's options makes
ovs-vswitchd reconfigure it, and its BFD session would start over (the gateway looks down
for the detection time). :func:`bfd_of` reads the BFD state the switch reports.

Provider bridges (a hypervisor's ``bridge_mappings``, physical network -> bridge, as Neutron's OVS
agent takes them): once the operator made the bridge with its NIC, :func:`wanted` adds the patch
pair to br-int's ports and the provider bridge's, and has the provider bridge's own columns made
what :mod:`controller.provider` needs to wire it through: ``fail_mode=secure`` (never a learning
switch) and exactly br-int's controller targets (``connection_mode=out-of-band``: the bridge gets no
hidden in-band flows), so that its OpenFlow connection reaches the controller, which keeps its two
flows. :func:`provider_bridges` names those bridges by datapath id for the OpenFlow side.

The controller's connection handling (:mod:`controller.ovsdb`) monitors only
:data:`MONITORED`: the tables and columns these functions read.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from topology.gateways import GATEWAY_PORT_PREFIX
from topology.model import PORT_ALIAS_SEPARATOR, Hypervisor, provider_patch_ports

DATABASE = "Open_vSwitch"
MONITORED: dict[str, list[str]] = {
    # external_ids: system-id, the host's name (controller.integration); bridges: br-int joins them
    "Open_vSwitch": ["external_ids", "bridges"],
    # fail_mode, controller: a provider bridge's, made secure and given br-int's controllers; those and
    # other_config, protocols, datapath_type: a br-int the controller makes and keeps (controller.integration)
    "Bridge": ["name", "datapath_id", "ports", "fail_mode", "controller", "other_config", "protocols",
               "datapath_type"],
    "Port": ["name", "interfaces"],
    # error: why ovs-vswitchd could not create an interface, shown in the status
    "Interface": ["name", "type", "options", "bfd", "bfd_status", "ofport", "error"],
    "Controller": ["target", "connection_mode", "max_backoff", "inactivity_probe"],
}
PROVIDER_FAIL_MODE = "secure"  # a provider bridge without its controller must not turn into a learning switch
CONNECTION_MODE = "out-of-band"
MAP_COLUMNS = ("options", "bfd")  # the Interface map columns a desired port sets (``options:<key>``...)
BFD_KEYS = ("state", "forwarding", "remote_state", "diagnostic", "remote_diagnostic", "flap_count")

Columns = dict[str, str]  # as topology.gateways.tunnel_ports gives them: "type", "options:key", "bfd:key"


def interface_columns(iface: Any) -> Columns:
    """An Interface row's type and map columns, flattened the way :func:`tunnel_ports` writes them."""
    columns = {"type": iface.type}
    for column in MAP_COLUMNS:
        columns.update({f"{column}:{k}": str(v) for k, v in getattr(iface, column).items()})
    return columns


def split_columns(columns: Columns) -> tuple[str, dict[str, dict[str, str]]]:
    """Flattened columns back into the interface type and each map column's value."""
    maps: dict[str, dict[str, str]] = {column: {} for column in MAP_COLUMNS}
    for key, value in columns.items():
        column, _, item = key.partition(":")
        if key != "type":
            if column not in maps or not item:
                raise ValueError(f"a gateway port sets no column {key!r}")
            maps[column][item] = value
    return columns.get("type", ""), maps


def datapath_id(bridge: Any) -> int | None:
    """A Bridge row's datapath id (ovs-vswitchd fills it in once it runs the bridge), or None."""
    value = bridge.datapath_id
    text = value[0] if isinstance(value, list) and value else value
    try:
        return int(text, 16) if text else None
    except (TypeError, ValueError):
        return None


def is_gateway_port(name: str) -> bool:
    """Whether a port is one of ours: its name starts with ``tg-``."""
    return name.startswith(GATEWAY_PORT_PREFIX)


@dataclass
class Plan:
    """What one bridge's transaction must do to its ``tg-`` ports."""

    create: dict[str, Columns] = field(default_factory=dict)
    update: dict[str, tuple[Any, Columns]] = field(default_factory=dict)  # name -> (Interface row, columns)
    delete: list[Any] = field(default_factory=list)  # Port rows
    blocked: list[str] = field(default_factory=list)  # wanted, but another bridge has a port of that name
    fail_mode: str | None = None  # a provider bridge's fail_mode to set
    controllers: frozenset[ControllerSpec] | None = None  # a provider bridge's Controller rows to set (exactly)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete or self.fail_mode or self.controllers is not None)

    def summary(self) -> str:
        """``+2 ~0 -1``-style counts, for the logs (and what a provider bridge's own columns got)."""
        extra = "".join([" fail_mode" if self.fail_mode else "", " controllers" if self.controllers is not None
                         else ""])
        return f"+{len(self.create)} ~{len(self.update)} -{len(self.delete)}{extra}"


@dataclass(frozen=True)
class ControllerSpec:
    """One OpenFlow controller of a bridge, as a provider bridge copies it from br-int."""

    target: str
    max_backoff: int | None = None
    inactivity_probe: int | None = None


@dataclass(frozen=True)
class ProviderBridge:
    """A bridge a hypervisor's ``bridge_mappings`` names, as that hypervisor's OVSDB shows it."""

    hypervisor: str
    hypervisor_dpid: int  # its br-int's: a cluster's instance masters the provider bridge with it
    physnet: str
    bridge: str
    datapath_id: int  # the provider bridge's own (what its OpenFlow connection claims)


def _optional(value: Any) -> Any:
    """An optional column's value (the IDL gives ``[]`` or ``[value]``), or None."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def controller_specs(bridge: Any) -> frozenset[ControllerSpec]:
    """A bridge's controllers (target, max_backoff, inactivity_probe)."""
    return frozenset(ControllerSpec(c.target, _optional(c.max_backoff), _optional(c.inactivity_probe))
                     for c in bridge.controller)


def _mapped(bridges: dict[Any, Any], integration: Any, hv: Hypervisor) -> list[tuple[str, Any]]:
    """(physnet, Bridge row) for each of ``hv``'s bridge mappings whose bridge this database has, by physnet."""
    if not hv.bridge_mappings:  # (most of the scale lab's hundreds of bridges per database)
        return []
    by_name = {row.name: row for row in bridges.values() if row.uuid != integration.uuid}
    return [(physnet, by_name[name]) for physnet, name in sorted(hv.bridge_mappings.items()) if name in by_name]


def wanted(bridges: dict[Any, Any], integration: Any, hv: Hypervisor,
           desired: dict[str, Columns]) -> list[tuple[Any, dict[str, Columns], frozenset[ControllerSpec] | None]]:
    """What each of ``hv``'s bridges must hold: (Bridge row, its ports as :func:`plan` takes them, and for a
    provider bridge the controllers it must have, else None).

    ``desired``: br-int's own (tunnel) ports; the patch port to each provider bridge that exists is
    added to them. A mapping whose bridge the operator has not made yet wants nothing (it is looked
    at again when the database changes).
    """
    ports = dict(desired)
    providers = []
    controllers = controller_specs(integration)
    for physnet, row in _mapped(bridges, integration, hv):
        int_side, provider_side = provider_patch_ports(physnet)
        ports.update(int_side)
        providers.append((row, provider_side, controllers))
    return [(integration, ports, None), *providers]


def provider_bridges(bridges: dict[Any, Any], integration: Any, hv: Hypervisor) -> list[ProviderBridge]:
    """``hv``'s provider bridges that exist here and run (ovs-vswitchd gave them a datapath id)."""
    found = []
    for physnet, row in _mapped(bridges, integration, hv):
        dpid = datapath_id(row)
        if dpid is not None:
            found.append(ProviderBridge(hv.name, hv.datapath_id, physnet, row.name, dpid))
    return found


def _sound(port: Any) -> Any | None:
    """The port's one interface if it is shaped as we make them (one interface, same name), else None."""
    interfaces = port.interfaces
    if len(interfaces) == 1 and interfaces[0].name == port.name:
        return interfaces[0]
    return None


def plan(bridge: Any, desired: dict[str, Columns], taken: Collection[str] = (),
         controllers: frozenset[ControllerSpec] | None = None) -> Plan:
    """The changes that make ``bridge``'s ``tg-`` ports exactly ``desired``, and its overlay tunnel ports
    (the other names of ``desired``) present and as desired; empty when they are.

    A ``tg-`` port not desired, a second port of the same name, or one not shaped as we
    make them (not exactly one interface of its own name) is deleted (and, if desired,
    created again); a desired one whose interface's type, options or bfd differ is updated
    in place; every other port of the bridge is left alone. An overlay tunnel port
    (``tf-vxlan``...) is created when missing and corrected in place, never deleted (an
    operator may have made it); one named ``<name>@<anything>`` stands for it (several
    bridges of one vswitchd, README) and is left as it is. A missing port whose name is
    ``taken`` (by a port of another bridge: OVSDB keeps port and interface names unique) is
    not created but listed in ``blocked``: that port is not ours to move, and creating ours
    would fail the whole transaction.

    ``controllers`` (a provider bridge's: br-int's controllers): its fail_mode must be secure and
    its Controller rows exactly these, out-of-band; while br-int has none, its controllers are left as
    they are.
    """
    result = Plan()
    kept: set[str] = set()
    for port in sorted(bridge.ports, key=lambda p: str(p.uuid)):
        name = port.name
        iface = _sound(port)
        if not is_gateway_port(name):
            if name in desired and name not in kept and iface is not None:  # an overlay port: correct, keep
                kept.add(name)
                if interface_columns(iface) != desired[name]:
                    result.update[name] = (iface, desired[name])
            elif (base := name.partition(PORT_ALIAS_SEPARATOR)[0]) in desired:  # an alias (or an odd one): not ours
                kept.add(base)
            continue
        if name not in desired or name in kept or iface is None:
            result.delete.append(port)
            continue
        kept.add(name)
        if interface_columns(iface) != desired[name]:
            result.update[name] = (iface, desired[name])
    missing = [name for name in desired if name not in kept]
    result.blocked = sorted(name for name in missing if name in taken)
    result.create = {name: desired[name] for name in missing if name not in taken}
    if controllers is not None:
        _plan_provider(bridge, controllers, result)
    return result


def _plan_provider(bridge: Any, controllers: frozenset[ControllerSpec], result: Plan) -> None:
    """A provider bridge's own columns: secure, and br-int's controllers (out-of-band) once br-int has some."""
    if _optional(bridge.fail_mode) != PROVIDER_FAIL_MODE:
        result.fail_mode = PROVIDER_FAIL_MODE
    modes = {_optional(c.connection_mode) for c in bridge.controller}
    if controllers and (controller_specs(bridge) != controllers or modes != {CONNECTION_MODE}
                        or len(bridge.controller) != len(controllers)):
        result.controllers = controllers


def apply(txn: Any, bridge: Any, todo: Plan) -> None:
    """Write ``todo`` into ``txn`` (an open :class:`ovs.db.idl.Transaction` on ``bridge``'s IDL).

    Ports join and leave ``Bridge.ports`` by mutation (insert/delete of one element), and the
    transaction verifies ``Bridge.ports`` unchanged since it was read when it adds or removes
    any: two writers creating the same port at once (a cluster's master handing over) cannot
    both commit, the second sees the port and has nothing left to do.
    """
    if todo.create or todo.delete:
        bridge.verify("ports")
    for port in todo.delete:
        interfaces = list(port.interfaces)
        bridge.delvalue("ports", port)
        port.delete()
        for iface in interfaces:
            iface.delete()
    tables = txn.idl.tables
    for name, columns in sorted(todo.create.items()):
        iface = txn.insert(tables["Interface"])
        iface.name = name
        _set_interface(iface, columns, existing=False)
        port = txn.insert(tables["Port"])
        port.name = name
        port.interfaces = [iface]
        bridge.addvalue("ports", port)
    for iface, columns in todo.update.values():
        _set_interface(iface, columns, existing=True)
    if todo.fail_mode:
        bridge.fail_mode = [todo.fail_mode]
    if todo.controllers is not None:
        bridge.verify("controller")
        bridge.controller = [insert_controller(txn, spec) for spec in sorted(todo.controllers, key=lambda c: c.target)]


def insert_controller(txn: Any, spec: ControllerSpec) -> Any:
    """A new Controller row (the bridge's old ones are not roots: the database drops them with the reference)."""
    row = txn.insert(txn.idl.tables["Controller"])
    row.target = spec.target
    row.connection_mode = [CONNECTION_MODE]
    if spec.max_backoff is not None:
        row.max_backoff = [spec.max_backoff]
    if spec.inactivity_probe is not None:
        row.inactivity_probe = [spec.inactivity_probe]
    return row


def _set_interface(iface: Any, columns: Columns, existing: bool) -> None:
    """Set an interface's type and map columns; on an existing row only the columns that differ."""
    kind, maps = split_columns(columns)
    if not existing or iface.type != kind:
        iface.type = kind
    for column, value in maps.items():
        if not existing or getattr(iface, column) != value:
            setattr(iface, column, value)


def bfd_of(bridge: Any) -> dict[str, dict[str, Any]]:
    """The BFD state of ``bridge``'s ``tg-`` interfaces: port name -> bfd_status keys, remote_ip, ofport, error."""
    result = {}
    for port in bridge.ports:
        if not is_gateway_port(port.name):
            continue
        for iface in port.interfaces:
            status = iface.bfd_status
            entry: dict[str, Any] = {key: status[key] for key in BFD_KEYS if key in status}
            entry["enabled"] = iface.bfd.get("enable") == "true"
            entry["remote_ip"] = iface.options.get("remote_ip")
            entry["ofport"] = iface.ofport[0] if iface.ofport else None
            if iface.error:
                entry["error"] = iface.error[0]
            result[iface.name] = entry
    return result


def tunnels_up(ports: Collection[dict[str, Any]]) -> tuple[int, int]:
    """How many of these BFD entries are up (state up and forwarding) and how many are not."""
    up = sum(1 for p in ports if p.get("state") == "up" and p.get("forwarding") == "true")
    return up, len(ports) - up
