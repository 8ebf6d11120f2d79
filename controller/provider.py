"""Provider bridges over OpenFlow: the controller keeps each one's two wire-through flows.

Neutron's OVS agent wires a ``bridge_mappings`` bridge itself; so do we, in two halves. The OVSDB
half (:mod:`controller.tunnels`, :mod:`controller.ovsdb`) makes the patch pair to br-int, sets the
bridge ``fail_mode=secure`` and points its controller at exactly br-int's targets; this module is
the OpenFlow half: it recognises the bridge's connection and keeps its flows
(:func:`flows.provider.wire_through`: NIC -> ``int-<physnet>`` and back).

Why the bridge gets a controller connection of its own, rather than the flows being written some
other way: flows are OpenFlow state, and OpenFlow is the only channel that reads them back, is told
of changes made by hand (the flow monitor) and writes them atomically (a bundle); OVSDB holds no
flows, and writing them over a hypervisor's shell would be a third channel to secure; a learning
(``NORMAL``) provider bridge needs no flows but decides forwarding a second time behind br-int
(README, Known issues), and putting the NIC on br-int itself would drop Neutron's bridge_mappings
model, where the operator owns the physical bridge (bonds, the host's own address on it). The
connection reaches the controller by the very targets br-int uses (the same TLS certificate, the
same unix socket, a cluster's same instances), so the bridge needs nothing an operator must
configure, and a cluster's instance masters it exactly when it masters its hypervisor's br-int
(the same role requests, :class:`_BridgeRoles`).

Who is who: a connecting datapath id that is no hypervisor's br-int is a provider bridge if a
host's OVSDB, read by the manager, says so (:meth:`controller.ovsdb.OvsdbManager.provider_bridges`:
its bridge named in the hypervisor's ``bridge_mappings``, its datapath id as ovs-vswitchd filled it
in). A bridge that connects before its host's database is read (a controller restart: both
reconnect, in any order) is held by the app as any unknown bridge and handed over here once it is
named (:meth:`ProviderBridges.refresh`).

Reconcile, never flush, by content: a :class:`ProviderSwitch` is a :class:`controller.switch.Switch`
(its worker, retries, role claim, flow monitor and bundles) whose sync reads the bridge's flows
whole, keeps every one equal in content to a wanted flow whatever its cookie (flows made by hand
with README's manual commands are adopted: no write), deletes any other one exactly
(``DELETE_STRICT``: a hand-made flow has cookie 0, which a delete by cookie would take with the
adopted ones) and adds what is missing, in one atomic bundle; nothing is sent when they are equal,
so a controller restart sends no flow-mod to it. The bridge's port list (every port but the patch
port and LOCAL counts as its NIC) and any flow changed on the switch by someone else (the flow
monitor) start a sync. (Open vSwitch itself empties a bridge's flow table when it is given its first
controller: a bridge wired by hand loses its flows once, at the manager's write, until this sync.)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from controller import wire
from controller.audit import Installed, flow_stats_request, installed_flows, same_flow
from controller.cluster import Role
from controller.switch import SYNCED, Switch
from controller.syncing import PushResult, RoleSource
from controller.tunnels import ProviderBridge
from flows.flow import Flow
from flows.provider import wire_through

LOG = logging.getLogger("tenantflow.provider")


def plan(desired: list[Flow], found: list[Installed]) -> tuple[list[Installed], list[Flow]]:
    """(the bridge's flows to delete, the flows to add) that make ``found`` hold exactly ``desired``.

    A found flow equal in content to a desired one (table, priority, timeouts, match, instructions;
    not its cookie) is kept: one made by hand is adopted. Every other found flow is deleted; every
    desired flow not found is added. Empty lists when the bridge holds what it must.
    """
    missing, stale = list(desired), []
    for flow in found:
        same = next((wanted for wanted in missing if same_flow(wanted, flow)), None)
        if same is None:
            stale.append(flow)
        else:
            missing.remove(same)
    return stale, missing


class _BridgeRoles:
    """The role a provider bridge is claimed with: the one its hypervisor's br-int is (a RoleSource)."""

    def __init__(self, roles: RoleSource, hypervisor_dpid: int) -> None:
        self.roles, self.hypervisor_dpid = roles, hypervisor_dpid

    def role_for(self, dpid: int) -> Role | None:
        """The role the cluster gives the hypervisor's br-int (``dpid``, the provider bridge's own, aside)."""
        return self.roles.role_for(self.hypervisor_dpid)


def _keep_ports(sw: Switch, ofports: dict[str, int]) -> None:
    """A provider bridge's port map is its own: nothing in the topology names its ports."""
    sw.ofports = ofports


class ProviderSwitch(Switch):
    """One connected provider bridge, kept equal to :func:`flows.provider.wire_through` of its ports."""

    MONITOR_ID = 2  # the app may have started monitor 1 on this connection while it held it
    COUNTS_AS_HYPERVISOR = False

    def __init__(self, datapath: Any, bridge: ProviderBridge, roles: RoleSource | None) -> None:
        super().__init__(datapath, None, _keep_ports, None, roles)
        self.bridge = bridge
        self.flow_mods = 0  # flow-mods this process sent the bridge (GET /sync: provider_bridges)
        self.syncs = 0  # syncs that read the bridge (and sent what differed, if anything)
        self.in_sync = False  # the last sync left it holding its flows

    @property
    def name(self) -> str:
        """``<hypervisor>/<bridge>``: its name in the logs and metrics."""
        return f"{self.bridge.hypervisor}/{self.bridge.bridge}"

    def _read_installed(self, with_ports: bool = False) -> dict[str, int]:
        """Nothing before a sync but the port map if asked (each sync reads the bridge's flows itself, whole: there
        are two)."""
        self._errors.clear()
        return self._read_ports() if with_ports else {}

    def sync(self) -> PushResult:
        """Read the bridge's flows; send, in one bundle, only what makes them :func:`wire_through`'s."""
        if not self.ready:
            return PushResult(committed=False)
        found = installed_flows(self.dump_flows(flow_stats_request))
        stale, missing = plan(wire_through(self.bridge.physnet, self.ofports), found)
        result = self.push(stale, missing) if stale or missing else PushResult()
        self.syncs += 1
        self.in_sync = result.committed
        if result.committed:
            self.flow_mods += result.added + result.deleted
            self.synced_at = time.time()
            with SYNCED:
                SYNCED.notify_all()
        return result

    def _delete_message(self, flow: Installed) -> bytes:
        """A flow found on the bridge, deleted exactly (by table, priority and match: any cookie)."""
        return wire.flow_delete_strict(flow.table_id, flow.priority, flow.match)

    def status(self) -> dict[str, Any]:
        """What GET /sync shows of it."""
        return {"hypervisor": self.bridge.hypervisor, "physical_network": self.bridge.physnet,
                "bridge": self.bridge.bridge, "datapath_id": f"{self.dpid:016x}", "connected": self.alive,
                "mastering": self.mastering, "synced": self.in_sync, "flow_mods_sent": self.flow_mods,
                "syncs": self.syncs}


class ProviderSource(Protocol):
    """Where the provider bridges are named (:class:`controller.ovsdb.OvsdbManager`)."""

    def provider_bridges(self) -> dict[int, ProviderBridge]: ...

    def published(self) -> dict[str, Any]: ...

    def subscribe_providers(self, callback: Any) -> None: ...


@dataclass
class ProviderBridges:
    """The provider bridges connected over OpenFlow, and which datapath ids are provider bridges."""

    roles: RoleSource | None = None  # a cluster (None: the only instance, no role requests)
    source: ProviderSource | None = None  # None: no OVSDB manager, no provider bridge is ours

    def __post_init__(self) -> None:
        self.known: dict[int, ProviderBridge] = {}
        self.read: frozenset[str] = frozenset()  # hypervisors whose OVSDB is read
        self.switches: dict[int, ProviderSwitch] = {}
        self._lock = threading.Lock()

    @property
    def following(self) -> bool:
        """Whether an OVSDB manager names provider bridges (else every unknown bridge is just unknown)."""
        return self.source is not None

    def follow(self, source: ProviderSource, on_change: Any) -> None:
        """Take the provider bridges ``source`` names, now and whenever they change (then call ``on_change()``)."""
        self.source = source

        def changed() -> None:
            self.refresh()
            on_change()

        source.subscribe_providers(changed)
        changed()

    def refresh(self) -> None:
        """Read the names again; a connected bridge whose mapping changed (another physical network) is synced."""
        if self.source is None:
            return
        known, read = self.source.provider_bridges(), frozenset(self.source.published())
        with self._lock:
            self.known, self.read = known, read
            switches = list(self.switches.values())
        for sw in switches:
            bridge = known.get(sw.dpid)
            if bridge is not None and bridge != sw.bridge:
                sw.bridge = bridge
                sw.mark_dirty()

    def identify(self, dpid: int) -> ProviderBridge | None:
        """The provider bridge with datapath id ``dpid``, if a host's OVSDB names one."""
        with self._lock:
            return self.known.get(dpid)

    def ruled_out(self, dpid: int, hypervisor: str) -> bool:
        """Whether ``hypervisor``'s OVSDB is read and names no provider bridge ``dpid``."""
        with self._lock:
            return hypervisor in self.read and self.known.get(dpid) is None

    def connect(self, dp: Any, bridge: ProviderBridge) -> ProviderSwitch:
        """Keep the connection of provider bridge ``bridge`` (a newer one of the same bridge replaces the older)."""
        roles = _BridgeRoles(self.roles, bridge.hypervisor_dpid) if self.roles is not None else None
        sw = ProviderSwitch(dp, bridge, roles)
        with self._lock:
            old, self.switches[dp.id] = self.switches.get(dp.id), sw
        if old is not None:
            old.stop()
        LOG.info("bridge %016x connected from %s: hypervisor %s's provider bridge %s (physical network %s)", dp.id,
                 dp.address, bridge.hypervisor, bridge.bridge, bridge.physnet)
        sw.start(sw.name)
        return sw

    def switch_of(self, dp: Any) -> ProviderSwitch | None:
        """The provider switch on this connection, if it is one."""
        sw = self.switches.get(dp.id) if dp.id is not None else None
        return sw if sw is not None and sw.dp is dp else None

    def disconnected(self, dp: Any) -> bool:
        """A connection ended: True if it was a provider bridge's (its worker is stopped)."""
        sw = self.switch_of(dp)
        if sw is None:
            return False
        with self._lock:
            if self.switches.get(dp.id) is sw:
                del self.switches[dp.id]
        sw.stop()
        LOG.info("bridge %016x (%s) disconnected", sw.dpid, sw.name)
        return True

    def mark_dirty(self) -> None:
        """Every provider switch claims its role again and syncs (the cluster's view changed)."""
        for sw in list(self.switches.values()):
            sw.mark_dirty()

    def status(self) -> dict[str, dict[str, Any]]:
        """Each known provider bridge (``<hypervisor>/<bridge>``): connected, mastered, in sync, flow-mods sent."""
        with self._lock:
            known, switches = dict(self.known), dict(self.switches)
        out = {}
        for dpid, bridge in known.items():
            sw = switches.get(dpid)
            out[f"{bridge.hypervisor}/{bridge.bridge}"] = sw.status() if sw is not None else {
                "hypervisor": bridge.hypervisor, "physical_network": bridge.physnet, "bridge": bridge.bridge,
                "datapath_id": f"{dpid:016x}", "connected": False}
        return dict(sorted(out.items()))
