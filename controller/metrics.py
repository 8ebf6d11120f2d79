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
