"""The controller's part of the routers' gateways (flows.gateway holds their flows).

The switches fail over by themselves (BFD, fast-failover groups); the controller only:

- says what each bridge announces (:meth:`GatewayService.announcements`): the floating IPs it
  hosts, its router interface addresses to its own VMs, the gateway addresses it is the
  active gateway of, and a standby gateway's ARP probes for its routers' next hops;
- tells the other gateways to announce again when a gateway's bridge comes or goes, since
  who is active may have changed;
- keeps a failover when the failed gateway comes back (no preemption): a gateway whose bridge
  leaves goes last in the lists it heads (``topology demote_gateway``);
- repeats the standby probes every :data:`PROBE_INTERVAL`, so their learned MACs never age out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from os_ken.lib import hub

from controller.switch import Switch
from flows.gateway import gateway_announcements, snat_routers
from flows.nat import Announcement, announcements
from flows.routing import interface_announcements
from flows.view import view_of
from topology.model import dvr_mac

LOG = logging.getLogger("tenantflow.gateways")
PROBE_INTERVAL = 60.0  # seconds between a standby gateway's ARP probes (well within LEARNED_IDLE_TIMEOUT)


class GatewayService:
    """Announcements, no-preemption and standby probes of the gateways (see the module's doc)."""

    def __init__(self, topology, switches: Callable[[], list[Switch]], owns: Callable[[str], bool]) -> None:
        self.topology = topology
        self._switches = switches
        self._owns = owns

    def start(self) -> GatewayService:
        """Start repeating the standby gateways' probes."""
        hub.spawn(self._probe_forever)
        return self

    def announcements(self, hv_name: str) -> list[Announcement]:
        """What hypervisor ``hv_name`` announces (Switch's announce_fn), from the topology."""
        with self.topology.lock:
            graph = self.topology.graph
            view = view_of(graph, hv_name)
            items = announcements(graph, view) + interface_announcements(graph, view)
            if view is not None and view.hv.gateway_for:
                items += gateway_announcements(snat_routers(graph, view), graph.connected,
                                               dvr_mac(view.hv))
            return items

    def bridge_came(self, hv_name: str | None) -> None:
        """A bridge connected: if a gateway, the others may have stopped being active."""
        self._reannounce_others(hv_name)

    def bridge_left(self, hv_name: str) -> None:
        """A bridge disconnected: if a gateway, the next one is active now, and stays so."""
        self._reannounce_others(hv_name)
        hv = self.topology.graph.hypervisor(hv_name)
        if hv is not None and hv.gateway_for and self._owns(hv_name):
            hub.spawn(self._demote, hv_name)

    def _reannounce_others(self, hv_name: str | None) -> None:
        hv = self.topology.graph.hypervisor(hv_name) if hv_name else None
        if hv is None or not hv.gateway_for:
            return
        for sw in self._switches():
            other = self.topology.graph.hypervisor(sw.hv_name) if sw.hv_name else None
            if other is not None and other.gateway_for and other.name != hv_name and sw.synced_generation >= 0:
                sw.reannounce()

    def _demote(self, hv_name: str) -> None:
        try:
            moved = self.topology.demote_gateway(hv_name)
        except Exception as exc:  # noqa: BLE001 - a store that fails: the switches have failed over anyway
            LOG.warning("gateway %s left; could not make its routers' next gateway first: %s", hv_name, exc)
            return
        if moved:
            LOG.info("gateway %s left: %d router(s) now lead with their next gateway", hv_name, len(moved))

    def _probe_forever(self) -> None:
        while True:
            hub.sleep(PROBE_INTERVAL)
            for sw in self._switches():
                sw.repeat_probes()
