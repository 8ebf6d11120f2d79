"""Prometheus metrics of the controller (served at /metrics on the API port)."""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller import heap

REGISTRY = CollectorRegistry()

FLOW_MODS = Counter(
    "tenantflow_flow_mods_sent", "Flow-mods sent to switches (adds and deletes)", ["hypervisor", "command"],
    registry=REGISTRY,
)
GROUP_MODS = Counter(
    "tenantflow_group_mods_sent", "Group-mods sent to switches (adds and deletes; refused ones too)",
    ["hypervisor", "command"], registry=REGISTRY,
)
METER_MODS = Counter(
    "tenantflow_meter_mods_sent", "Meter-mods sent to switches (adds and deletes; refused ones too)",
    ["hypervisor", "command"], registry=REGISTRY,
)
API_REQUESTS = Counter("tenantflow_api_requests", "API requests answered, by method and HTTP status (401s and "
                       "403s included)", ["method", "status"], registry=REGISTRY)
API_SECONDS = Histogram("tenantflow_api_request_seconds", "Time to answer an API request, by method",
                        ["method"], registry=REGISTRY,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
API_REFUSED = Counter("tenantflow_api_refused", "API requests the HTTP server answered itself, without running "
                      "the API, by status (503 overloaded, 408 not read in time, 400/413/414/431 malformed)",
                      ["status"], registry=REGISTRY)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def counted(app):
    """The API's WSGI ``app``, each answer counted by method and status and timed (the outermost wrapper,
    so that what authentication refuses counts too). Other methods count as ``other``."""
    def wsgi(environ, start_response):
        method = environ.get("REQUEST_METHOD", "")
        method = method if method in _METHODS else "other"
        start = time.perf_counter()
        status = ["500"]

        def seen(code, headers, exc_info=None):
            status[0] = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info) if exc_info else start_response(code, headers)

        try:
            return app(environ, seen)
        finally:
            API_REQUESTS.labels(method, status[0]).inc()
            API_SECONDS.labels(method).observe(time.perf_counter() - start)
    return wsgi


BUNDLES = Counter(
    "tenantflow_bundles", "Bundles sent, by outcome (committed, discarded, failed)", ["hypervisor", "outcome"],
    registry=REGISTRY,
)
OF_ERRORS = Counter("tenantflow_of_errors", "OpenFlow errors received", ["hypervisor"], registry=REGISTRY)
PACKET_INS = Counter("tenantflow_packet_ins", "Packet-ins received", ["hypervisor"], registry=REGISTRY)
PACKET_INS_BY_KIND = Counter("tenantflow_packet_ins_by_kind", "Packet-ins received, by what they are for (dhcp: "
                             "v4 and v6, router_solicit, ttl_expired, next_hop, fip_arp_reply) and whether the "
                             "rate limits let them through",
                             ["kind", "outcome"], registry=REGISTRY)


def packet_in(kind: str, allowed: bool) -> bool:
    """Count one packet-in of ``kind``, handled or cut by a rate limit; returns ``allowed``."""
    PACKET_INS_BY_KIND.labels(kind, "handled" if allowed else "rate_limited").inc()
    return allowed


ROUTER_ADVERTS = Counter("tenantflow_router_adverts_periodic", "Unsolicited router advertisements sent",
                         registry=REGISTRY)
DHCP_MESSAGES = Counter("tenantflow_dhcp_messages", "DHCP client messages answered by the controller: the "
                        "request's type and the reply's (none: no answer)", ["request", "reply"], registry=REGISTRY)
SWITCH_UP = Gauge("tenantflow_switch_connected", "1 while a hypervisor's bridge is connected and synced",
                  ["hypervisor"], registry=REGISTRY)
FLOWS = Gauge("tenantflow_flows", "Flows installed on a hypervisor as the controller knows it", ["hypervisor"],
              registry=REGISTRY)
SYNC_SECONDS = Histogram("tenantflow_sync_seconds", "Time of one compile+diff+push of a hypervisor",
                         registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5, 30))
SYNC_ATTEMPTS = Counter("tenantflow_sync_attempts", "Sync attempts by the slots they took: whole (a bridge read "
                        "and compared whole, --sync-concurrency) or change (a ready bridge's changes, "
                        "--change-concurrency)",
                        ["kind"], registry=REGISTRY)
SYNC_FLOW_MODS = Counter("tenantflow_sync_flow_mods", "Flow-mods committed by syncs, by the slots they took (as "
                         "tenantflow_sync_attempts)", ["kind"], registry=REGISTRY)
SYNC_RETRIES = Counter("tenantflow_sync_retries", "Syncs retried after a failed one (discarded or refused bundle, "
                       "no reply in time, an error)", ["hypervisor"], registry=REGISTRY)
DISCONNECTS = Counter("tenantflow_switch_disconnects", "Times a bridge's OpenFlow connection ended",
                      ["hypervisor"], registry=REGISTRY)
SWITCH_REFUSALS = Counter("tenantflow_switch_refusals", "Switch connections refused for their identity "
                          "(controller.tls): "
                          "channel openflow or ovsdb; reason no_certificate, untrusted_certificate, handshake_failed, "
                          "no_name or name_mismatch (the certificate names another hypervisor than the datapath id's)",
                          ["channel", "reason"], registry=REGISTRY)
BRIDGES_DIVERGED = Gauge("tenantflow_bridges_diverged", "Connected bridges whose last sync did not leave them equal "
                         "to their compiled flows (a retry is pending)", registry=REGISTRY)
GC_FROZEN = Gauge("tenantflow_gc_frozen_objects", "Objects in the garbage collector's permanent generation "
                  "(controller.heap): the live heap, plus any reference cycle that died after it was frozen "
                  "(a leak: this must not grow with reconnects or writes undone); counted anew at each scrape "
                  "while that takes under 50 ms, else every 1,000 times what it took", registry=REGISTRY)
GC_FROZEN.set_function(heap.frozen_objects)
ROLE_CHANGES = Counter("tenantflow_role_changes", "Roles a bridge granted this instance (a cluster's: master or "
                       "slave)", ["role"], registry=REGISTRY)


class ClusterCollector:
    """This instance's standing in a cluster and its store's watch (controller.cluster), read at each scrape."""

    def __init__(self, cluster, store, switches) -> None:
        self.cluster, self.store, self.switches = cluster, store, switches

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.cluster.status()
        members = GaugeMetricFamily("tenantflow_cluster_member", "1 for each live instance of the cluster, as this "
                                    "instance sees it", labels=["instance"])
        for name in status.get("members", []):
            members.add_metric([name], 1)
        yield members
        yield GaugeMetricFamily("tenantflow_cluster_in_good_standing", "1 while this instance's lease lives and the "
                                "view lists it (only then does it claim bridges)",
                                value=1 if status.get("in_good_standing") else 0)
        yield GaugeMetricFamily("tenantflow_cluster_view_revision", "etcd revision of the membership's latest change "
                                "(the generation id of this instance's role requests)",
                                value=status.get("view_revision", 0))
        mastered = GaugeMetricFamily("tenantflow_bridge_mastered", "1 for each connected bridge this instance "
                                     "masters, 0 for those it is a slave of", labels=["hypervisor"])
        for sw in list(self.switches()):
            mastered.add_metric([sw.label], 1 if sw.mastering else 0)
        yield mastered
        for key in ("revoked_peers", "rejoins", "view_changes", "view_revisions", "standing_lapses", "keeper_restarts",
                    "keepalives_held_back"):
            yield CounterMetricFamily(f"tenantflow_cluster_{key}", f"Cluster events: {key.replace('_', ' ')}",
                                      value=status.get(key, 0))
        yield GaugeMetricFamily("tenantflow_cluster_keepalive_max_seconds", "The slowest lease keepalive's round "
                                "trip to etcd so far", value=status.get("keepalive_max_ms", 0) / 1000)
        yield GaugeMetricFamily("tenantflow_cluster_interpreter_stall_max_seconds", "The longest this instance's "
                                "interpreter went without running its beat thread (its lease keeper lets the "
                                "lease go past 10 s)", value=status.get("interpreter_stall_max_ms", 0) / 1000)
        watch = self.store.status()
        yield GaugeMetricFamily("tenantflow_store_watch_connected", "1 while the store's watch is connected",
                                value=1 if watch.get("connected") else 0)
        yield GaugeMetricFamily("tenantflow_store_revision", "The last store revision this instance's graph holds",
                                value=watch.get("revision", 0))
        yield CounterMetricFamily("tenantflow_store_watch_reconnects", "Times the store's watch reconnected",
                                  value=watch.get("reconnects", 0))


def register_cluster(cluster, store, switches) -> None:
    """Export a cluster instance's state (once per process)."""
    try:
        REGISTRY.register(ClusterCollector(cluster, store, switches))
    except ValueError:
        pass


class EngineCollector:
    """The incremental engine's counters (flows.engine_state.Stats), read at each scrape."""

    def __init__(self, stats) -> None:
        self.stats = stats

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        s = self.stats
        for name, value, doc in (
            ("tenantflow_engine_changes", s.changes, "Journal entries (changed records) the engine applied"),
            ("tenantflow_engine_units", s.units, "Unit recomputations (a port, network, address... on one hypervisor)"),
            ("tenantflow_engine_contributions", s.contributions,
             "Flows counted out of and into hypervisors by the units that changed (what changes cost, in flows)"),
            ("tenantflow_engine_hypervisor_rebuilds", s.hypervisor_rebuilds,
             "Hypervisors whose every unit was recomputed (a hypervisor record or tunnel/patch port changed)"),
            ("tenantflow_engine_full_rebuilds", s.full_rebuilds,
             "Rebuilds of every hypervisor (at start, or after the topology reloaded its graph)"),
            ("tenantflow_engine_seconds", s.seconds, "CPU time spent applying changes (the writes' share)"),
        ):
            yield CounterMetricFamily(name, doc, value=value)


def register_engine(stats) -> None:
    """Export an engine's counters (once per process: the registry refuses a second collector of the same names)."""
    try:
        REGISTRY.register(EngineCollector(stats))
    except ValueError:  # already registered (tests that start several apps in one process)
        pass


OVSDB_TRANSACTIONS = Counter("tenantflow_ovsdb_transactions", "Transactions written to a hypervisor's OVSDB (its "
                             "gateway tunnel ports), by outcome (committed, retried, failed)",
                             ["hypervisor", "outcome"], registry=REGISTRY)
GATEWAY_PORT_CHANGES = Counter("tenantflow_gateway_port_changes", "Gateway tunnel ports (tg-) written to a "
                               "hypervisor's OVSDB: created, updated (type, options or bfd corrected), deleted",
                               ["hypervisor", "change"], registry=REGISTRY)


class OvsdbCollector:
    """The OVSDB manager's connections and each hypervisor's gateway tunnels (controller.ovsdb), read at each scrape."""

    def __init__(self, manager) -> None:
        self.manager = manager

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from controller.tunnels import tunnels_up

        published = self.manager.published()
        yield GaugeMetricFamily("tenantflow_ovsdb_connections", "OVSDB servers connected to this instance (as "
                                "their manager), identified or not", value=self.manager.status()["connections"])
        managed = GaugeMetricFamily("tenantflow_ovsdb_hypervisor", "1 for each hypervisor whose OVSDB is connected "
                                    "and written by this instance, 0 if another instance writes it",
                                    labels=["hypervisor"])
        tunnels = GaugeMetricFamily("tenantflow_gateway_tunnels", "A hypervisor's gateway tunnel ports by BFD "
                                    "state: up (BFD up and forwarding) or down (anything else)",
                                    labels=["hypervisor", "state"])
        for name, p in sorted(published.items()):
            managed.add_metric([name], 1 if p.writer else 0)
            up, down = tunnels_up(list(p.tunnels.values()))
            tunnels.add_metric([name, "up"], up)
            tunnels.add_metric([name, "down"], down)
        yield managed
        yield tunnels


def register_ovsdb(manager) -> None:
    """Export an OVSDB manager's state (once per process)."""
    try:
        REGISTRY.register(OvsdbCollector(manager))
    except ValueError:
        pass


FOREIGN_CHANGES = Counter("tenantflow_foreign_flow_changes", "Flow changes made on a switch by someone else (by "
                          "hand, another controller), as its flow monitor reported them: added, deleted, modified; "
                          "paused/resumed/malformed (updates lost: the flows were read again); each is repaired",
                          ["hypervisor", "event"], registry=REGISTRY)
OF_MALFORMED = Counter("tenantflow_of_malformed", "Malformed or unexpected OpenFlow messages from switches, by what "
                       "was wrong (bad_version, bad_length, unknown_type, unparsable, reply, flow_update)",
                       ["hypervisor", "kind"], registry=REGISTRY)
SWITCH_STALLS = Counter("tenantflow_switch_stalls", "Switch connections closed because the switch took none of our "
                        "data for the write timeout (it stopped reading)", ["hypervisor"], registry=REGISTRY)
SEND_DROPPED = Counter("tenantflow_switch_send_dropped", "Messages (packet-outs) dropped because the switch's send "
                       "queue was full (it reads slower than we write)", ["hypervisor"], registry=REGISTRY)
DUPLICATE_DPIDS = Counter("tenantflow_switch_duplicate_dpid", "Connections that claimed the datapath id of a "
                          "connected bridge (the older one is closed; past a burst, newcomers are refused for a while)",
                          ["hypervisor"], registry=REGISTRY)
