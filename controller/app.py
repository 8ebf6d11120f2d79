"""The os-ken application: a thin shim between OpenFlow events and the sync engine.

Everything here runs on os-ken's event thread and only hands events on: the
incremental engine (flows/engine.py) keeps what each switch must hold up to date
with every committed write, controller.switch makes it so. The engine tells us
which hypervisors' flows changed; only their switches are woken.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from controller import heap, metrics, tls
from controller.addresses import AddressService
from controller.claiming import ClaimRound, await_claims
from controller.cluster import Solo
from controller.connection import DUPLICATE, STALLED
from controller.gateways import GatewayService
from controller.icmp import time_exceeded
from controller.neighbour import ext_output_actions, learned_neighbour, next_hop_request
from controller.provider import ProviderBridges
from controller.switch import CONFIRMED, Switch
from flows.engine import FlowEngine
from flows.flow import Output
from flows.pipeline import stage
from flows.routing import router_interface
from flows.stages import EXT_IN_FIP, EXT_OUTPUT, PUNT
from topology.model import canonical_port_map

LOG = logging.getLogger("tenantflow.app")
IP_INPUT_TABLE = stage("lr_in_ip_input").table_id
EXT_OUTPUT_TABLE = EXT_OUTPUT.table_id
EXT_IN_FIP_TABLE = EXT_IN_FIP.table_id  # ARP replies to floating IPs: learned at once
PUNT_TABLE = PUNT.table_id  # address assignment's requests come up from ls_in_punt, through its meters

# Set by controller.main before os-ken instantiates the app (os-ken builds apps itself).
TOPOLOGY = None
CLUSTER = None  # a controller.cluster.Cluster when this instance is one of several (None: the only one)
DUPLICATE_BURST = 3  # connections replacing a live one with the same datapath id within DUPLICATE_WINDOW s...
DUPLICATE_WINDOW = 60.0
DUPLICATE_HOLD = 5.0  # ...then newcomers are refused this long, doubling at each new burst up to the cap
DUPLICATE_HOLD_CAP = 300.0
UNKNOWN_GRACE = 10.0  # s an unknown bridge may wait for its host's OVSDB to name it a provider bridge before a warning


class TenantflowApp(app_manager.OSKenApp):
    """Keeps every connected integration bridge equal to its compiled flows."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if TOPOLOGY is None:
            raise RuntimeError("controller.app.TOPOLOGY must be set before the app starts")
        self.topology = TOPOLOGY
        self.switches: dict[int, Switch] = {}  # dpid -> switch
        self._duplicates = DuplicateGuard()  # connections claiming a connected bridge's datapath id
        # Every hypervisor's flows, kept up to date by each committed write (under the
        # topology's lock); switches take the changes and push them outside it.
        # A single controller builds them in the background (FlowEngine.warm_up, started below), so its API and
        # OpenFlow side open at once and bridges connect meanwhile; a cluster's instance builds its share now.
        self.engine = FlowEngine.attach(self.topology, build=CLUSTER is not None)
        # From now on what lives a second is frozen out of the collector's full passes, which
        # stopped the whole process for seconds at 1,000 bridges (controller.heap).
        heap.install()
        metrics.register_engine(self.engine.stats)
        self.engine.subscribe(self._topology_changed)
        # DHCP and router solicitations answered, router advertisements sent (controller.addresses)
        self.addresses = AddressService(self.topology, lambda: list(self.switches.values())).start()
        # What each bridge announces; gateways' arrivals and departures (controller.gateways)
        self.gateways = GatewayService(self.topology, lambda: list(self.switches.values()), self._owns).start()
        # One of a cluster's instances: compile and push only the bridges this one masters.
        self.cluster = CLUSTER or Solo()
        self.claims = ClaimRound()  # a change of ownership's claims before the new masters' reads
        # Provider bridges (controller.provider): named by the OVSDB manager (follow_providers), wired here.
        self.providers = ProviderBridges(None if isinstance(self.cluster, Solo) else self.cluster)
        if CLUSTER is None:
            threading.Thread(target=self._warm_up, name="engine-warm-up", daemon=True).start()
        else:
            self.topology.subscribe(self._name_switches)
            self.engine.set_ownership(self._owns)
            self.cluster.subscribe(self._ownership_changed)
            metrics.register_cluster(self.cluster, self.topology.store, lambda: list(self.switches.values()))

    def _warm_up(self) -> None:
        """Build every hypervisor's flows, the connected bridges' first (see FlowEngine.warm_up)."""
        start = time.monotonic()
        built = self.engine.warm_up(self._connected_names)
        LOG.info("flows of %d hypervisors built in %.1f s", built, time.monotonic() - start)

    def _owns(self, hv_name: str) -> bool:
        """Whether the cluster's view gives this instance the bridge of ``hv_name`` (under the topology's lock)."""
        hv = self.topology.graph.hypervisor(hv_name)
        return hv is not None and self.cluster.owns(hv.datapath_id)

    def _connected_names(self) -> list[str]:
        """The hypervisors of the connected bridges: what a warm-up builds first."""
        return [sw.hv_name for sw in list(self.switches.values()) if sw.hv_name]

    def _ownership_changed(self) -> None:
        """The cluster's members changed (or our standing): the switches claim their roles, then our share compiles.

        Roles first, and the bridges changing hands before the others (whose claims only carry
        the view's new generation): a bridge whose master died gets its new one within a round
        trip, not after the engine has built every bridge we gained or the new masters have read
        them (controller.claiming.ClaimRound: with such work running, each of the 500 claims' hand-offs
        waited for the GIL; the last grant came 1-50 s after the kill).
        """
        switches = list(self.switches.values())
        deadline = self.claims.run(switches)
        self.providers.mark_dirty()
        await_claims(switches, deadline)
        # A chunk per hold of the lock (flows.warmup): building 500 gained bridges in one hold kept the API
        # (and GET /sync) waiting for the whole build.
        self.engine.set_ownership(self._owns, self._connected_names)

    # -- topology side -------------------------------------------------------
    def _topology_changed(self, hv_names: set[str]) -> None:
        """Wake the switches of the hypervisors whose flows changed (may be called from any thread)."""
        self._name_switches()
        graph = self.topology.graph
        by_name: dict[str, Switch] | None = None
        for name in hv_names:  # by datapath id: one create touches a few bridges of 1,000
            hv = graph.hypervisor(name)
            sw = self.switches.get(hv.datapath_id) if hv is not None else None
            if sw is None or sw.hv_name != name:  # not connected, or its datapath id just changed (walk once)
                if by_name is None:
                    by_name = {s.hv_name: s for s in list(self.switches.values()) if s.hv_name}
                sw = by_name.get(name)
            if sw is not None:
                sw.mark_dirty()

    def _name_switches(self, _affected: object = None) -> None:
        """Bridges that connected before their hypervisor was registered get its name once it is.

        Their ports were read on connect; now the topology learns them. (A topology subscriber
        too: a cluster's instance hears from the engine only of the hypervisors it compiles.)
        """
        for sw in list(self.switches.values()):
            if sw.hv_name is None:
                hv = self.topology.graph.hypervisor_by_dpid(sw.dpid)
                if hv is not None and self._refused(sw.dp, hv):
                    self.switches.pop(sw.dpid, None)
                    sw.stop()
                elif hv is not None:
                    sw.hv_name = hv.name
                    self._set_ofports(sw, sw.ofports)
                    sw.mark_dirty()

    def follow_providers(self, source) -> None:
        """Take the provider bridges the OVSDB manager ``source`` names (controller.main, when it runs one)."""
        self.providers.follow(source, self._providers_changed)

    def _providers_changed(self) -> None:
        """The OVSDB manager named provider bridges anew: a held bridge that is one is handed over; one held only
        because its certificate names a hypervisor whose database does not name it (TLS) is refused now."""
        for sw in list(self.switches.values()):
            if sw.hv_name is not None:
                continue
            bridge = self.providers.identify(sw.dpid)
            if bridge is None and not self._refused(sw.dp, None):
                continue
            self.switches.pop(sw.dpid, None)
            sw.stop()
            if bridge is not None and not self._refused(sw.dp, self.topology.graph.hypervisor(bridge.hypervisor)):
                self.providers.connect(sw.dp, bridge)

    def _still_unknown(self, sw: Switch) -> None:
        """A bridge no hypervisor (nor any host's OVSDB) claimed within UNKNOWN_GRACE seconds: a warning."""
        if sw.alive and sw.hv_name is None and self.switches.get(sw.dpid) is sw:
            LOG.warning("bridge %016x connected but no hypervisor has that datapath id yet (nor is it a provider "
                        "bridge any connected host's OVSDB names)", sw.dpid)

    def sync_status(self) -> dict:
        """Which bridges hold every change so far (confirmed by the switch's bundle commit), which not yet.

        ``pending``: connected bridges whose last confirmed sync is older than their flows' last
        change; ``disconnected``: registered hypervisors without a connected bridge. One pass over
        the switches under the lock (at 1,000 bridges every ``GET /sync`` walks them all).
        """
        solo = isinstance(self.cluster, Solo)
        with self.topology.lock:
            generation_of, compiles = self.engine.generation_of, self.engine.compiles
            names = {hv.name for hv in self.topology.graph.hypervisors()}
            connected: set[str] = set()
            pending: list[str] = []
            unmastered: list[str] = []
            since: dict[str, float | None] = {}
            for sw in list(self.switches.values()):
                name = sw.hv_name
                if not name or name in connected:
                    continue
                connected.add(name)
                owned = solo or self._owns(name)
                if owned and sw.mastering:
                    since[name] = sw.role_granted_at
                    if not compiles(name) or not sw.holds(generation_of(name)):
                        pending.append(name)
                elif owned:  # ours, by the view, but not granted yet
                    unmastered.append(name)
            return {"generation": self.engine.generation, "connected": len(connected),
                    "pending": sorted(pending) + sorted(unmastered),
                    "disconnected": sorted(names - connected), "mastered": sorted(since),
                    "revision": self.topology.revision,
                    "master_since": since,
                    "cluster": self.cluster.status(), "provider_bridges": self.providers.status()}

    def _behind(self) -> dict[Switch, int | None]:
        """The connected bridges this instance keeps that do not hold their flows' last change yet: switch ->
        the engine generation they must reach, None while their flows are not built yet (under the topology's
        lock; one pass over the switches)."""
        generation_of, compiles = self.engine.generation_of, self.engine.compiles
        owns = None if isinstance(self.cluster, Solo) else self._owns
        behind: dict[Switch, int | None] = {}
        for sw in list(self.switches.values()):
            name = sw.hv_name
            if name and (owns is None or owns(name)):
                generation = generation_of(name) if compiles(name) else None
                if generation is None or not sw.holds(generation):
                    behind[sw] = generation
        return behind

    def _target(self, sw: Switch, generation: int | None) -> int | None:
        """The generation ``sw`` must reach: ``generation``, or for a bridge whose flows were not built yet (None)
        the one they were built at, if they are by now (else still None)."""
        name = sw.hv_name
        if generation is None and name is not None and self.engine.compiles(name):
            return self.engine.generation_of(name)
        return generation

    def wait_synced(self, timeout: float) -> bool:
        """Wait until every connected bridge this instance masters holds every change made before the call.

        At most ``timeout`` seconds; True if they all do. Bridges that disconnect meanwhile stop
        counting (``sync_status`` lists them as disconnected). What ``GET /sync?wait=`` answers
        after, instead of a client polling: a poll of 1,000 bridges' status costs milliseconds.
        """
        with self.topology.lock:
            behind = self._behind()
        return CONFIRMED.wait(behind, self._target, timeout)

    # -- switch side -------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            hv = self.topology.graph.hypervisor_by_dpid(dp.id)
            provider = self.providers.identify(dp.id) if hv is None else None
            if provider is not None:  # a hypervisor's provider bridge (controller.provider), if its certificate agrees
                if not self._refused(dp, self.topology.graph.hypervisor(provider.hypervisor)):
                    self.providers.connect(dp, provider)
                return
            if self._refused(dp, hv):  # before anything else: an impostor must not even replace the bridge
                return
            old = self.switches.get(dp.id)
            if old is not None and old.alive and not self._replaces(old, dp):
                return
            self.switches.pop(dp.id, None)
            if old is not None:  # a new connection of the same bridge replaces the old one
                self._disconnected(old)
            hv_name = hv.name if hv else None
            if hv is None and self.providers.following:  # maybe a provider bridge its host's OVSDB names soon
                LOG.info("bridge %016x connected but no hypervisor has that datapath id yet: held (a provider bridge "
                         "whose host's OVSDB is not read yet?)", dp.id)
            elif hv is None:
                LOG.warning("bridge %016x connected but no hypervisor has that datapath id yet", dp.id)
            roles = None if isinstance(self.cluster, Solo) else self.cluster
            sw = Switch(dp, self.engine, self._ports_read, self.gateways.announcements, roles, self.claims)
            self.switches[dp.id] = sw
            sw.start(hv_name)
            if hv is None and self.providers.following:
                timer = threading.Timer(UNKNOWN_GRACE, self._still_unknown, (sw,))
                timer.daemon = True
                timer.start()
        elif ev.state == DEAD_DISPATCHER and dp.id is not None and not self.providers.disconnected(dp):
            sw = self.switches.get(dp.id)
            if sw is not None and sw.dp is dp:
                del self.switches[dp.id]
                self._disconnected(sw)
                if sw.hv_name:
                    self.topology.set_disconnected(sw.hv_name)
                    self.gateways.bridge_left(sw.hv_name)

    def _replaces(self, old: Switch, dp) -> bool:
        """A second connection claims a connected bridge's datapath id: whether it replaces the first.

        Usually the bridge itself reconnected before its old connection was seen gone: the newer
        one wins, and the older is closed (its reason, ``duplicate datapath id``, is the warning the
        disconnect logs). But two live switches claiming one id would take it from each other at
        every reconnect, each time a full read and push: after DUPLICATE_BURST replacements within
        DUPLICATE_WINDOW seconds the connected one keeps it and newcomers are closed for a hold-down
        that doubles (5 s up to 5 min), logged once per hold-down. Counted either way.
        """
        label = old.label
        metrics.DUPLICATE_DPIDS.labels(label).inc()
        hold = self._duplicates.refuse(dp.id)
        if hold:
            if hold.logged:
                LOG.debug("bridge %016x: another connection from %s refused (duplicate datapath id)", dp.id,
                          dp.address)
            else:
                LOG.warning("bridge %016x (%s): %d connections claimed its datapath id within %g s (two switches "
                            "with one id?): keeping the one from %s, refusing others for %g s", dp.id, label,
                            hold.count, DUPLICATE_WINDOW, old.dp.address, hold.seconds)
            _end(dp, f"{DUPLICATE}: refused, the one from {old.dp.address} keeps it")
            return False
        _end(old.dp, f"{DUPLICATE}: a newer connection from {dp.address} claims it")
        return True

    def _refused(self, dp, hv) -> bool:
        """Refuse (close, log, count) a TLS switch whose certificate names another hypervisor than ``hv``.

        ``hv``: the hypervisor registered with the switch's datapath id (None: none yet). A switch
        without TLS names nobody and is trusted (the unix socket; plain TCP only with --allow-tcp).
        One with an unregistered datapath id is refused if its certificate names a registered
        hypervisor (whose datapath id is another), and checked again when its id is registered.
        """
        name = getattr(dp, "certificate_name", None)
        if name is None:
            return False
        if hv is not None and hv.name == name:
            return False
        if hv is None:
            claimed = self.topology.graph.hypervisor(name)
            if claimed is None or (self.providers.following and not self.providers.ruled_out(dp.id, name)):
                return False  # (held: maybe that hypervisor's provider bridge, its OVSDB not read yet)
            detail = f"hypervisor {name} has datapath id {claimed.datapath_id:016x}"
        else:
            detail = f"datapath id {dp.id:016x} is hypervisor {hv.name}'s"
        tls.refuse("openflow", tls.NAME_MISMATCH, dp.address,
                   f"its certificate names {name!r}, but it claims datapath id {dp.id:016x}: {detail}")
        # Not dp.close(): that queues the DEAD state change to this app from its own event thread,
        # which blocks while the app's queue is full. The connection's end reports it instead.
        with contextlib.suppress(OSError):
            dp.socket.shutdown(socket.SHUT_RDWR)
        return True

    def _switch_of(self, msg):
        """The switch a message came from: None if its connection is not the switch's (one refused, or replaced)."""
        sw = self.switches.get(msg.datapath.id)
        return sw if sw is not None and sw.dp is msg.datapath else None

    def _disconnected(self, sw: Switch) -> None:
        """A bridge's connection ended: stop its worker (it ends on its own), count it."""
        sw.stop()
        metrics.DISCONNECTS.labels(sw.label).inc()
        if sw.hv_name:
            metrics.SWITCH_UP.labels(sw.hv_name).set(0)
        reason = getattr(getattr(sw.dp, "socket", None), "end_reason", "") or "reason unknown"
        # A stall or a duplicate is the controller's decision: a warning (its one log line). A malformed
        # stream's cause was logged already (controller.connection, rate-limited); any other end is ordinary.
        LOG.log(logging.WARNING if reason.startswith((STALLED, DUPLICATE)) else logging.INFO,
                "bridge %016x (%s) disconnected: %s", sw.dpid, sw.hv_name, reason)

    def _ports_read(self, sw: Switch, ofports: dict[str, int]) -> None:
        """A bridge's port map, read on connect: recorded; a gateway's arrival may change who is active."""
        arrived = bool(sw.hv_name) and not self.topology.graph.connected(sw.hv_name)
        self._set_ofports(sw, ofports)
        if arrived:
            self.gateways.bridge_came(sw.hv_name)

    def _set_ofports(self, sw: Switch, ofports: dict[str, int]) -> None:
        """Record a bridge's OVS port map (name -> OpenFlow port) in the topology, by canonical name.

        ``sw.ofports`` keeps the names the switch reported (port-status events edit it);
        the topology gets them canonical (``tf-vxlan@hv7`` counts as ``tf-vxlan``, see
        :func:`topology.model.canonical_port_name`), so the compiler finds the tunnel
        ports of bridges that share one vswitchd. Names that clash are logged.
        """
        sw.ofports = ofports
        if sw.hv_name is None:
            return
        canonical, clashes = canonical_port_map(ofports)
        for name, candidates in clashes.items():
            LOG.warning("switch %s: ports %s all count as %r; using %r", sw.hv_name, ", ".join(candidates),
                        name, candidates[0])
        self.topology.set_live_ofports(sw.hv_name, canonical)
        # Export this hypervisor's event counters at 0 from the start: a labelled counter
        # has no series until its first increment, and an absent series reads as "no data",
        # not as "no packet-in / no error" (alerts on rate() and increase() never fire).
        metrics.PACKET_INS.labels(sw.hv_name)
        metrics.OF_ERRORS.labels(sw.hv_name)
        metrics.SYNC_RETRIES.labels(sw.hv_name)
        metrics.DISCONNECTS.labels(sw.hv_name)

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        LOG.info("bridge %016x connected from %s", ev.msg.datapath_id, ev.msg.datapath.address)

    # Replies to a switch's requests reach it straight from its connection (Switch._on_message);
    # these handlers serve connections that cannot hand them over (os-ken's own socket).
    def _multipart_part(self, msg, values) -> None:
        """One part of a multipart reply, as the values its switch's request waits for."""
        sw = self._switch_of(msg)
        if sw is not None:
            sw.on_reply(msg.xid, values, bool(msg.flags & ofproto_v1_3.OFPMPF_REPLY_MORE))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc(self, ev):
        self._multipart_part(ev.msg, ev.msg.body)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev):
        self._multipart_part(ev.msg, [s.cookie for s in ev.msg.body])

    @set_ev_cls(ofp_event.EventOFPGroupDescStatsReply, MAIN_DISPATCHER)
    def _group_desc(self, ev):
        self._multipart_part(ev.msg, [s.group_id for s in ev.msg.body])

    @set_ev_cls(ofp_event.EventOFPMeterConfigStatsReply, MAIN_DISPATCHER)
    def _meter_config(self, ev):
        self._multipart_part(ev.msg, [s.meter_id for s in ev.msg.body])

    @set_ev_cls(ofp_event.EventOFPRoleReply, MAIN_DISPATCHER)
    def _role_reply(self, ev):
        sw = self._switch_of(ev.msg)
        if sw is not None:
            sw.on_reply(ev.msg.xid, None)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev):
        sw = self._switch_of(ev.msg)
        if sw is not None:
            sw.on_reply(ev.msg.xid, None)

    @set_ev_cls(ofp_event.ofp_msg_to_ev_cls(ofproto_v1_3_parser.ONFBundleCtrlMsg), MAIN_DISPATCHER)
    def _bundle_reply(self, ev):
        sw = self._switch_of(ev.msg)
        if sw is not None:
            sw.on_reply(ev.msg.xid, ev.msg.type)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        dp = ev.msg.datapath
        sw = self._switch_of(ev.msg)
        name = sw.hv_name if sw else f"{dp.id:016x}" if dp.id else "?"
        metrics.OF_ERRORS.labels(name or "?").inc()
        if sw is None or not sw.on_error(ev.msg.xid, ev.msg):
            LOG.error("switch %s: unsolicited OpenFlow error type=%s code=%s", name, ev.msg.type, ev.msg.code)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        provider = self.providers.switch_of(ev.msg.datapath)
        sw = provider or self._switch_of(ev.msg)
        if sw is None:
            return
        if not sw.ports_known:  # its port map is being read: read again once connected (nothing lost)
            sw.ports_changed = True
            return
        ofports = dict(sw.ofports)
        desc = ev.msg.desc
        if ev.msg.reason == ofproto_v1_3.OFPPR_DELETE:
            ofports.pop(_name(desc), None)
        else:
            ofports[_name(desc)] = desc.port_no
        if provider is not None:
            provider.ofports = ofports  # its own ports: nothing in the topology names them
        else:
            self._set_ofports(sw, ofports)
        sw.mark_dirty()

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        msg = ev.msg
        sw = self._switch_of(msg)
        metrics.PACKET_INS.labels(sw.hv_name if sw and sw.hv_name else "?").inc()
        if sw is None:
            return
        if msg.table_id == PUNT_TABLE:
            self.addresses.packet_in(sw, msg)
            return
        if msg.table_id == EXT_OUTPUT_TABLE:
            self._resolve_next_hop(sw, msg)
            return
        if msg.table_id == EXT_IN_FIP_TABLE:
            self._relearn(sw, msg)
            return
        if msg.table_id != IP_INPUT_TABLE:
            return
        if not metrics.packet_in("ttl_expired", sw.icmp_limiter.allow()):
            return
        # An IPv4 packet whose TTL expires at a router (lr_in_ip_input's ttl_expired).
        fields = dict(msg.match.items())
        with self.topology.lock:
            iface = router_interface(self.topology.graph, fields.get("reg3", 0), fields.get("reg6", 0))
        if iface is None:
            return
        reply = time_exceeded(bytes(msg.data), *iface)
        if reply is None:
            return
        try:  # never waits for a switch that stopped reading (controller.connection.SendQueue)
            sw.packet_out([Output(fields["in_port"])], reply)
        except ConnectionError:
            LOG.info("switch %s: gone (or not reading) before the ICMP time exceeded could be sent", sw.hv_name)


    def _relearn(self, sw: Switch, msg) -> None:
        """ext_in_fip's ARP reply to a floating IP: write what the switch's learn action learns, at once."""
        if not metrics.packet_in("fip_arp_reply", sw.fip_arp_limiter.allow()):
            return
        ext_key = dict(msg.match.items()).get("reg6")
        flow = learned_neighbour(ext_key, bytes(msg.data)) if ext_key else None
        if flow is None:
            return
        try:
            sw.add_learned(flow)
        except ConnectionError:  # gone: the switch's own learn action still runs, later
            LOG.info("switch %s: gone before an ARP reply could be learned", sw.hv_name)

    def _resolve_next_hop(self, sw: Switch, msg) -> None:
        """lr_in_ext_output's unresolved: ARP for the next hop; the switch learns the answer."""
        if not metrics.packet_in("next_hop", sw.arp_limiter.allow()):
            return
        fields = dict(msg.match.items())
        request = next_hop_request(bytes(msg.data), fields)
        if request is not None and fields.get("reg6"):
            try:
                sw.packet_out(ext_output_actions(fields["reg6"]), request)
            except ConnectionError:  # the switch went away meanwhile: its reconnect starts over
                LOG.info("switch %s: gone before the ARP for %#x could be sent", sw.hv_name, fields.get("reg0", 0))


@dataclass
class _Hold:
    """A datapath id's hold-down: newcomers refused until ``until``."""

    until: float = 0.0
    seconds: float = 0.0
    count: int = 0
    logged: bool = False


class DuplicateGuard:
    """Counts, per datapath id, connections that replaced a live one; past a burst, holds the id down."""

    def __init__(self) -> None:
        self._seen: dict[int, deque] = {}
        self._holds: dict[int, _Hold] = {}

    def refuse(self, dpid: int, now: float | None = None) -> _Hold | None:
        """A newcomer claims ``dpid`` (held by a live connection): its hold-down if it is to be refused, else None."""
        now = time.monotonic() if now is None else now
        hold = self._holds.get(dpid)
        if hold is not None and now < hold.until:
            hold.count += 1
            refused = _Hold(hold.until, hold.seconds, hold.count, hold.logged)
            hold.logged = True
            return refused
        seen = self._seen.setdefault(dpid, deque(maxlen=DUPLICATE_BURST))
        seen.append(now)
        if len(seen) < DUPLICATE_BURST or now - seen[0] > DUPLICATE_WINDOW:
            return None
        seconds = min(DUPLICATE_HOLD_CAP, hold.seconds * 2 if hold is not None else DUPLICATE_HOLD)
        self._holds[dpid] = _Hold(now + seconds, seconds, len(seen), True)
        seen.clear()
        return _Hold(now + seconds, seconds, DUPLICATE_BURST)


def _end(dp, reason: str) -> None:
    """Close a switch connection both ways, recording ``reason`` (os-ken's close() would wait on the app's queue)."""
    sock = getattr(dp, "socket", None)
    if hasattr(sock, "end"):
        sock.end(reason)
    else:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _name(port) -> str:
    return port.name.decode() if isinstance(port.name, bytes) else port.name
