"""Prometheus metrics of the controller (served at /metrics on the API port)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

FLOW_MODS = Counter(
    "tenantflow_flow_mods_sent", "Flow-mods sent to switches (adds and deletes)", ["hypervisor", "command"],
    registry=REGISTRY,
)
BUNDLES = Counter(
    "tenantflow_bundles", "Bundles sent, by outcome (committed, discarded, failed)", ["hypervisor", "outcome"],
    registry=REGISTRY,
)
OF_ERRORS = Counter("tenantflow_of_errors", "OpenFlow errors received", ["hypervisor"], registry=REGISTRY)
PACKET_INS = Counter("tenantflow_packet_ins", "Packet-ins received", ["hypervisor"], registry=REGISTRY)
SWITCH_UP = Gauge("tenantflow_switch_connected", "1 while a hypervisor's bridge is connected and synced",
                  ["hypervisor"], registry=REGISTRY)
FLOWS = Gauge("tenantflow_flows", "Flows installed on a hypervisor as the controller knows it", ["hypervisor"],
              registry=REGISTRY)
SYNC_SECONDS = Histogram("tenantflow_sync_seconds", "Time of one compile+diff+push of a hypervisor",
                         registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5, 30))
SYNC_RETRIES = Counter("tenantflow_sync_retries", "Syncs retried after a failed one (discarded or refused bundle, "
                       "no reply in time, an error)", ["hypervisor"], registry=REGISTRY)
DISCONNECTS = Counter("tenantflow_switch_disconnects", "Times a bridge's OpenFlow connection ended",
                      ["hypervisor"], registry=REGISTRY)
BRIDGES_DIVERGED = Gauge("tenantflow_bridges_diverged", "Connected bridges whose last sync did not leave them equal "
                         "to their compiled flows (a retry is pending)", registry=REGISTRY)


class EngineCollector:
    """The incremental engine's counters (flows.engine.Stats), read at each scrape."""

    def __init__(self, stats) -> None:
        self.stats = stats

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        s = self.stats
        for name, value, doc in (
            ("tenantflow_engine_changes", s.changes, "Journal entries (changed records) the engine applied"),
            ("tenantflow_engine_units", s.units, "Unit recomputations (a port, network, address... on one hypervisor)"),
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
