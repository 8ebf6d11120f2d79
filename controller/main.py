"""``tenantflow controller``: os-ken 4.x has no osken-manager, so this is our own main().

Runs in one process: the OpenFlow listener (TCP and a unix socket), the
os-ken application that reconciles every bridge, and the Neutron-compatible
REST API (with Prometheus metrics at /metrics). State lives in one SQLite file.
"""

from __future__ import annotations

import argparse
import configparser
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import urllib.parse
from dataclasses import dataclass

from topology.model import NETWORK_TYPES

LOG = logging.getLogger("tenantflow")

DEFAULTS = {
    "db": "/var/lib/tenantflow/tenantflow.sqlite",
    "store": "",
    "instance": "",
    "peer_host": "127.0.0.1",
    "peer_port": "0",
    "lease_ttl": "5",
    "of_host": "127.0.0.1",  # loopback unless named: anyone who reaches these owns the cloud (issue #14)
    "of_port": "6653",
    "unix_socket": "/run/tenantflow/openflow.sock",
    "api_host": "127.0.0.1",
    "api_port": "9696",
    "api_workers": "16",  # apps.northbound.server.ServerOptions's defaults
    "api_backlog": "0",
    "api_connection_limit": "1000",
    "api_max_queue": "512",
    "api_read_timeout": "30",
    "api_idle_timeout": "60",
    "vni_range": "1000:1999",
    "vlan_range": "100:199",
    "default_network_type": "vxlan",
    "default_physical_network": "physnet1",
    "default_project": "default",
    "log_level": "INFO",
    "sync_concurrency": "4",
    "change_concurrency": "16",
    "flow_monitor": "on",
    "dhcp_lease_time": "86400",
    "dhcp_domain": "openstacklocal",
    "ra_interval": "600",
    "gateways_per_router": "2",
    # None: pssl:6640 on --of-host with the --ssl-* files, and punix:/run/tenantflow/ovsdb.sock
    "ovsdb_listen": None,
    # "": a br-int the controller makes points at this controller as the host reached it (controller.integration)
    "bridge_controllers": "",
    "allow_tcp": "false",
    "of_ssl_port": "6653",
    "ssl_private_key": "",
    "ssl_certificate": "",
    "ssl_ca_cert": "",
    "auth": "",  # "": not chosen (noauth, loopback only); "noauth"; "keystone"
    "policy_file": "",
    "bfd_min_tx": "",  # "": topology.gateways.BfdTimers's
    "bfd_min_rx": "",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Flags override the config file's [controller] section, which overrides the defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    values = dict(DEFAULTS)
    if known.config:
        cfg = configparser.ConfigParser()
        if not cfg.read(known.config):
            raise SystemExit(f"tenantflow controller: cannot read config file {known.config}")
        values.update({k.replace("-", "_"): v for k, v in cfg["controller"].items()} if "controller" in cfg else {})
    p = argparse.ArgumentParser(prog="tenantflow controller", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="INI file with a [controller] section using these option names")
    p.add_argument("--db", default=values["db"], help="SQLite file holding the topology (the embedded store)")
    p.add_argument("--store", default=values["store"],
                   help="the topology store instead of --db: etcd://HOST:PORT[,HOST:PORT...][/prefix], shared by "
                        "every controller instance pointed at it (or an SQLite path)")
    p.add_argument("--instance", default=values["instance"],
                   help="this instance's name in a cluster (etcd store; default: HOSTNAME-APIPORT)")
    p.add_argument("--peer-host", default=values["peer_host"],
                   help="address the other instances reach this one's peer port on (etcd store)")
    p.add_argument("--peer-port", type=int, default=int(values["peer_port"]),
                   help="TCP port the other instances hold a connection to, to see this one die at once (0: any)")
    p.add_argument("--lease-ttl", type=int, default=int(values["lease_ttl"]),
                   help="seconds a stopped, wedged or cut-off instance keeps its bridges (its etcd lease's TTL; "
                        "one that dies or exits gives them up at once)")
    p.add_argument("--of-host", default=values["of_host"], help="OpenFlow listen address (TLS and plain TCP)")
    p.add_argument("--of-port", type=int, default=int(values["of_port"]),
                   help="OpenFlow plain TCP listen port: only with --allow-tcp (0: none)")
    p.add_argument("--allow-tcp", action="store_true", default=_true(values["allow_tcp"]),
                   help="open the plain TCP listeners (--of-port, ptcp: OVSDB targets): anyone reaching them may "
                        "claim any hypervisor; without it switches connect over TLS or the unix sockets only")
    p.add_argument("--of-ssl-port", type=int, default=int(values["of_ssl_port"]),
                   help="OpenFlow TLS listen port (set-controller br-int ssl:IP:PORT), with the --ssl-* files")
    p.add_argument("--ssl-private-key", default=values["ssl_private_key"],
                   help="the controller's private key (PEM; ovs-pki req+sign ctl controller: ctl-privkey.pem)")
    p.add_argument("--ssl-certificate", default=values["ssl_certificate"],
                   help="the controller's certificate (PEM; ctl-cert.pem)")
    p.add_argument("--ssl-ca-cert", default=values["ssl_ca_cert"],
                   help="the CA the switches' certificates are signed by (ovs-pki's switchca/cacert.pem); a switch is "
                        "accepted as hypervisor H only if its certificate's common name is H")
    p.add_argument("--unix-socket", default=values["unix_socket"],
                   help="OpenFlow unix socket for the switches of this host ('' to disable); OVS takes a unix: "
                        "controller only inside its run directory, so link the socket there (README, attach step 2)")
    p.add_argument("--api-host", default=values["api_host"], help="REST API listen address")
    p.add_argument("--api-port", type=int, default=int(values["api_port"]), help="REST API port")
    _api_server_options(p, values)
    p.add_argument("--vni-range", default=values["vni_range"], help="VXLAN/Geneve/GRE tunnel keys to allocate, MIN:MAX")
    p.add_argument("--vlan-range", default=values["vlan_range"], help="VLAN ids to allocate, MIN:MAX")
    p.add_argument("--default-network-type", default=values["default_network_type"],
                   choices=list(NETWORK_TYPES))
    p.add_argument("--default-physical-network", default=values["default_physical_network"])
    p.add_argument("--default-project", default=values["default_project"],
                   help="project_id of resources created with none in the body and no X-Project-Id header")
    p.add_argument("--sync-concurrency", type=int, default=int(values["sync_concurrency"]),
                   help="bridges read and pushed whole at the same time (on connect; the others wait their turn, in "
                        "order)")
    p.add_argument("--change-concurrency", type=int, default=int(values["change_concurrency"]),
                   help="ready bridges taking a change at the same time")
    p.add_argument("--flow-monitor", choices=["on", "off"], default=values["flow_monitor"],
                   help="on: flows changed on a switch by someone else are repaired at once (OVS's flow monitor); "
                        "off: only when the bridge next connects (e.g. to look at a change made by hand)")
    p.add_argument("--dhcp-lease-time", type=int, default=int(values["dhcp_lease_time"]),
                   help="seconds of every DHCP lease (renewals at half of it)")
    p.add_argument("--dhcp-domain", default=values["dhcp_domain"], help="the domain name DHCP gives VMs")
    p.add_argument("--ra-interval", type=float, default=float(values["ra_interval"]),
                   help="most seconds between unsolicited router advertisements (the least: a third of it)")
    p.add_argument("--gateways-per-router", type=int, default=int(values["gateways_per_router"]),
                   help="the longest list of gateway hypervisors a router's source NAT is scheduled on")
    p.add_argument("--ovsdb-listen", default=values["ovsdb_listen"],
                   help="where hypervisors' ovsdb-servers connect to us as their manager (ovs-vsctl set-manager): "
                        "pssl:PORT[:IP] (TLS, with the --ssl-* files), punix:PATH and ptcp:PORT[:IP] (--allow-tcp) "
                        "targets, separated by spaces ('' to disable); default: pssl:6640 (with TLS) and "
                        "punix:/run/tenantflow/ovsdb.sock")
    p.add_argument("--bridge-controllers", default=values["bridge_controllers"],
                   help="OpenFlow targets (ssl:IP:PORT, tcp:IP:PORT, unix:PATH; commas or spaces) of a br-int the "
                        "controller makes on a host that names itself (external_ids:system-id); default: this "
                        "controller as the host reached it over OVSDB: ssl:<that address>:<--of-ssl-port> over TLS, "
                        "unix:tenantflow.sock (in OVS's run directory) over the unix socket")
    from topology.gateways import BfdTimers  # the defaults live with the ports they time

    p.add_argument("--bfd-min-tx", type=int, default=int(values["bfd_min_tx"] or BfdTimers.min_tx),
                   help="BFD transmit interval of the gateway tunnels, ms (a session is down after 3 missed)")
    p.add_argument("--bfd-min-rx", type=int, default=int(values["bfd_min_rx"] or BfdTimers.min_rx),
                   help="BFD receive interval of the gateway tunnels, ms")
    p.add_argument("--auth", default=values["auth"], choices=["", "noauth", "keystone"],
                   help="API authentication: keystone (tokens validated by keystonemiddleware, configured in the "
                        "--config file's [keystone_authtoken]) or noauth (X-Project-Id trusted, every caller admin); "
                        "unset: noauth, and every listener must be on loopback")
    p.add_argument("--policy-file", default=values["policy_file"],
                   help="oslo.policy YAML/JSON file overriding the default policy (with --auth keystone)")
    p.add_argument("--log-level", default=values["log_level"])
    args = p.parse_args(argv)
    _check_transports(p, args)
    server_options(args)  # nonsense --api-* values stop here, before anything listens
    from apps.northbound.auth import check_listeners

    try:
        check_listeners(args)
    except ValueError as exc:
        p.error(str(exc))
    if args.gateways_per_router < 1:
        p.error(f"--gateways-per-router must be at least 1, not {args.gateways_per_router}")
    if not 2 <= args.lease_ttl <= 300:  # etcd's shortest lease is 1.5 election timeouts (1 s by default)
        p.error(f"--lease-ttl must be between 2 and 300 seconds, not {args.lease_ttl}")
    if args.dhcp_lease_time < 10:
        p.error(f"--dhcp-lease-time must be at least 10 seconds, not {args.dhcp_lease_time}")
    if not 3 <= args.ra_interval <= 1800:  # RFC 4861's MaxRtrAdvInterval range (4-1800 s), and tests' 3 s
        p.error(f"--ra-interval must be between 3 and 1800 seconds, not {args.ra_interval:g}")
    for flag, ms in (("--bfd-min-tx", args.bfd_min_tx), ("--bfd-min-rx", args.bfd_min_rx)):
        if not 1 <= ms <= 60000:
            p.error(f"{flag} must be between 1 and 60000 ms, not {ms}")
    return args


def _true(text: str | bool) -> bool:
    """A boolean of the config file (``true``/``yes``/``1``/``on``)."""
    return text if isinstance(text, bool) else text.strip().lower() in ("1", "true", "yes", "on")


def _api_server_options(p: argparse.ArgumentParser, values: dict) -> None:
    """The API server's knobs (apps.northbound.server.ServerOptions)."""
    p.add_argument("--api-workers", type=int, default=int(values["api_workers"]),
                   help="API worker threads: the most requests served at once")
    p.add_argument("--api-backlog", type=int, default=int(values["api_backlog"]),
                   help="API listen backlog (0: the kernel's maximum, net.core.somaxconn)")
    p.add_argument("--api-connection-limit", type=int, default=int(values["api_connection_limit"]),
                   help="open API connections; past it new ones wait in the listen backlog")
    p.add_argument("--api-max-queue", type=int, default=int(values["api_max_queue"]),
                   help="API requests waiting for a worker; past it 503 with Retry-After")
    p.add_argument("--api-read-timeout", type=float, default=float(values["api_read_timeout"]),
                   help="seconds from a request's first byte to its last (else 408 and the connection closed)")
    p.add_argument("--api-idle-timeout", type=float, default=float(values["api_idle_timeout"]),
                   help="seconds an idle keep-alive API connection stays open")


def server_options(args: argparse.Namespace):
    """The API server's options from the parsed flags."""
    from apps.northbound.server import ServerOptions

    if min(args.api_workers, args.api_connection_limit, args.api_max_queue) < 1 or args.api_backlog < 0 \
            or min(args.api_read_timeout, args.api_idle_timeout) <= 0:
        raise SystemExit("tenantflow controller: --api-workers, --api-connection-limit, --api-max-queue and the "
                         "--api-*-timeout options must be positive, --api-backlog 0 or more")
    return ServerOptions(workers=args.api_workers, backlog=args.api_backlog,
                         connection_limit=args.api_connection_limit, max_queue=args.api_max_queue,
                         read_timeout=args.api_read_timeout, idle_timeout=args.api_idle_timeout)


def _check_transports(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """TLS needs all three files; plain TCP only with --allow-tcp (README "Switch identity: TLS")."""
    from controller.integration import parse_targets
    from controller.ovsdb import parse_listen
    from controller.tls import TlsFiles

    files = (args.ssl_private_key, args.ssl_certificate, args.ssl_ca_cert)
    if any(files) and not all(files):
        p.error("TLS needs --ssl-private-key, --ssl-certificate and --ssl-ca-cert together")
    args.tls = TlsFiles(*files) if all(files) else None
    if args.ovsdb_listen is None:  # TLS on the OpenFlow address (loopback unless named), and the local socket
        host = f"[{args.of_host}]" if ":" in args.of_host else args.of_host
        args.ovsdb_listen = (f"pssl:6640:{host} " if args.tls else "") + "punix:/run/tenantflow/ovsdb.sock"
    try:
        targets = parse_listen(args.ovsdb_listen)
    except ValueError as exc:
        p.error(f"--ovsdb-listen: {exc}")
    for target in targets:
        if target.startswith("ptcp:") and not args.allow_tcp:
            p.error(f"--ovsdb-listen {target}: plain TCP lets anyone claim any hypervisor; use pssl: "
                    "(with the --ssl-* files) or punix:, or allow it with --allow-tcp")
        if target.startswith("pssl:") and args.tls is None:
            p.error(f"--ovsdb-listen {target}: pssl: needs --ssl-private-key, --ssl-certificate and --ssl-ca-cert")
    try:
        parse_targets(args.bridge_controllers)
    except ValueError as exc:
        p.error(f"--bridge-controllers: {exc}")
    if args.allow_tcp and args.tls and args.of_port and args.of_port == args.of_ssl_port:
        p.error(f"--of-port and --of-ssl-port are both {args.of_port}: give plain TCP another port (or --of-port 0)")


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    return int(low), int(high)


def serve_unix(path: str) -> threading.Thread:
    """Accept OpenFlow switches on a unix socket.

    OVS refuses a ``unix:`` controller outside its run directory (``/var/run/openvswitch``), so a
    host links ``path`` there and points br-int at the link (:func:`apps.lab.steps.link_controller_socket`,
    README "Attach a hypervisor", step 2).

    Each connection is served like a TCP one (:func:`controller.connection.serve_connection`:
    echo requests answered on arrival), with TCP-level socket options ignored.
    """
    from controller.connection import LISTEN_BACKLOG, serve_connection

    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o660)
    server.listen(LISTEN_BACKLOG)

    def accept_loop() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve_connection, args=(conn, path), kwargs={"unix": True},
                             daemon=True).start()

    thread = threading.Thread(target=accept_loop, name="of-unix", daemon=True)
    thread.start()
    return thread


def _configure_os_ken(args: argparse.Namespace) -> None:
    from os_ken import cfg

    cfg.CONF(args=[], project="os_ken")
    cfg.CONF.set_override("ofp_listen_host", args.of_host)
    # Always a port: without one os-ken listens on 6653 and 6633 (connection.install keeps it off
    # unless plain TCP is allowed; TLS is our own listener, controller.tls).
    cfg.CONF.set_override("ofp_tcp_listen_port", args.of_port or 6653)
    cfg.CONF.set_override("ofp_ssl_listen_port", None)
    # Liveness, both ways (README "Switch connections"): OVS probes us (inactivity_probe,
    # 5 s by default) and controller.connection answers on arrival, however busy the app.
    # We never probe the switches: a switch busy committing a big bundle answers nothing
    # for seconds, and dropping it then throws the bundle away and makes it reconnect and
    # be re-read under load. A dead switch is seen by TCP, by OVS closing the connection,
    # or by the sync engine's reply timeout (controller.switch.REPLY_TIMEOUT).
    cfg.CONF.set_override("maximum_unreplied_echo_requests", 0)


@dataclass
class Running:
    """A started controller: its topology, its os-ken app and its API server."""

    topology: object
    app: object
    api: object
    services: list
    ovsdb: object = None  # the controller.ovsdb.OvsdbManager (None: --ovsdb-listen '')
    portmaps: object = None  # the controller.portmaps.PortMapFile (None: the etcd store, or a topology given)


def start(args: argparse.Namespace, topology=None) -> Running:
    """Start the OpenFlow listeners, the os-ken app and the API; return at once.

    ``topology`` defaults to the one in ``args.store`` (else the SQLite file ``args.db``). os-ken's app
    manager is a per-process singleton: start at most one controller per process.
    """
    from os_ken.base import app_manager

    from controller import app as of_app
    from controller import connection, dhcp, ra, switch
    from controller.metrics import REGISTRY

    portmaps = None
    if topology is None:
        from topology.state import Topology
        from topology.store import open_store

        where = args.store or args.db
        if not where.startswith("etcd://"):
            _make_parent(where)
        topology = Topology(
            open_store(where, exclusive=True), vni_range=_range(args.vni_range), vlan_range=_range(args.vlan_range),
            default_network_type=args.default_network_type,
            default_physical_network=args.default_physical_network, default_project=args.default_project,
        )
        if not where.startswith("etcd://"):  # before the engine's first build, which compiles against them
            from controller.portmaps import PortMapFile, path_for

            portmaps = PortMapFile(path_for(where.removeprefix("sqlite://"))).attach(topology)
    topology.gateways_per_router = args.gateways_per_router
    of_app.TOPOLOGY = topology
    of_app.CLUSTER = _join_cluster(args, topology)
    switch.SYNC_SLOTS.set_limit(args.sync_concurrency)
    switch.CHANGE_SLOTS.set_limit(args.change_concurrency)
    switch.FLOW_MONITOR = args.flow_monitor == "on"
    dhcp.SETTINGS = dhcp.Settings(lease_time=args.dhcp_lease_time, domain=args.dhcp_domain)
    ra.INTERVAL = (args.ra_interval / 3, args.ra_interval)
    # The topology graph lives as long as the process: move it (and os-ken's
    # tables) out of the GC's young generations so compiles don't rescan it.
    gc.freeze()
    _configure_os_ken(args)
    connection.install(tcp=bool(args.allow_tcp and args.of_port))
    manager = app_manager.AppManager.get_instance()
    manager.load_apps(["controller.app"])
    services = manager.instantiate_apps(**manager.create_contexts())
    if args.unix_socket:
        serve_unix(args.unix_socket)
    if args.tls is not None:
        from controller.tls import serve_openflow

        serve_openflow(args.of_host, args.of_ssl_port, args.tls)
    ovsdb_manager = _start_ovsdb(args, topology, of_app.CLUSTER)
    if ovsdb_manager is not None:  # it names the provider bridges whose flows the OpenFlow side keeps
        manager.applications.get("TenantflowApp").follow_providers(ovsdb_manager)
    api = None
    if args.api_port:
        from prometheus_client import make_wsgi_app

        from apps.northbound.server import make_app, serve

        app = manager.applications.get("TenantflowApp")
        from controller import audit

        extra = {"/metrics": make_wsgi_app(REGISTRY), "/sync": _sync_status_app(app), "/check": audit.wsgi_app(app)}
        if ovsdb_manager is not None:
            extra["/ovsdb"] = lambda environ, start_response: _json(start_response, "200 OK", ovsdb_manager.status())
        extra.update(_topology_page(topology, app))
        from apps.northbound.auth import wrap
        from controller.metrics import API_REFUSED, counted

        northbound = make_app(topology, extra=extra, auth=args.auth, policy_file=args.policy_file)
        from apps.ui.wsgi import static_in_front

        # The page's static files in front of authentication (they hold no data); its data behind it.
        api = serve(counted(static_in_front(wrap(northbound, args))), args.api_host, args.api_port,
                    server_options(args), on_refused=lambda status: API_REFUSED.labels(str(status)).inc())
        gc.freeze()  # and the API's (keystonemiddleware's, oslo.policy's): built once, kept for good
    from apps.northbound.auth import describe

    LOG.info("tenantflow controller: %s", describe(args))
    listening = [f"tcp:{args.of_host}:{args.of_port}"] if args.allow_tcp and args.of_port else []
    listening += [f"ssl:{args.of_host}:{args.of_ssl_port}"] if args.tls else []
    listening += [f"unix:{args.unix_socket}"] if args.unix_socket else []
    LOG.info("tenantflow controller: OpenFlow on %s, API on %s:%d, state in %s", " ".join(listening) or "nothing",
             args.api_host, args.api_port, topology.store.url)
    return Running(topology, manager.applications.get("TenantflowApp"), api, services, ovsdb_manager, portmaps)


def _make_parent(path: str) -> None:
    """The store file's directory (a StoreFault if it cannot be made)."""
    from topology.store_check import os_fault

    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as exc:
        raise os_fault(exc, path) from None


def start_or_exit(args: argparse.Namespace) -> Running:
    """:func:`start`, or one line on stderr and the store fault's exit code (README "The store: backups and faults").

    Only the store's faults end here: anything else is a bug, and its traceback is wanted.
    """
    from topology.store import StoreUnavailable
    from topology.store_check import KINDS, StoreFault

    try:
        return start(args)
    except StoreFault as fault:
        line, code = fault.line(), fault.exit_code
    except StoreUnavailable as exc:  # etcd: no endpoint answered the first load
        kind = KINDS["unreachable"]
        line, code = f"store {args.store} is unreachable: {exc.message}; {kind.remedy}", kind.code
    print(f"tenantflow controller: {line}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(code)  # threads os-ken or the etcd client may have started must not keep the process up


def bridge_targets(args: argparse.Namespace):
    """Where a br-int the controller makes points: ``--bridge-controllers``, else each host's way to us (its
    manager connection's kind and address) with our listener of that kind (controller.integration.BridgeTargets)."""
    from controller.integration import UNIX_TARGET, BridgeTargets, parse_targets

    return BridgeTargets(parse_targets(args.bridge_controllers), args.of_ssl_port if args.tls else None,
                         args.of_port if args.allow_tcp and args.of_port else None,
                         UNIX_TARGET if args.unix_socket else None)


def _start_ovsdb(args: argparse.Namespace, topology, cluster):
    """The OVSDB manager that keeps the gateway tunnel ports (None if ``--ovsdb-listen`` is empty)."""
    from controller import metrics, ovsdb
    from topology.gateways import BfdTimers

    try:
        manager = ovsdb.start(topology, args.ovsdb_listen, BfdTimers(args.bfd_min_tx, args.bfd_min_rx), cluster,
                              args.tls, bridge_targets(args))
    except OSError as exc:
        raise SystemExit(f"tenantflow controller: cannot listen for OVSDB on {args.ovsdb_listen!r}: {exc}") from exc
    if manager is not None:
        metrics.register_ovsdb(manager)
    return manager


def _topology_page(topology, app) -> dict:
    """``/topology`` and ``/trace``, the topology page's data (apps.ui.wsgi), on the controller's state."""
    from apps.ui.wsgi import endpoints
    from controller import bridge_status

    return endpoints(topology, lambda: bridge_status.bridge_status(app),
                     lambda hv: bridge_status.flows_of(app, hv))


def _join_cluster(args: argparse.Namespace, topology):
    """With the etcd store, this instance joins the cluster that shares the bridges (None: the only one)."""
    from topology.store_etcd import EtcdStore

    if not isinstance(topology.store, EtcdStore):
        return None
    from controller.cluster import Cluster

    name = args.instance or f"{socket.gethostname()}-{args.api_port}"
    cluster = Cluster(topology.store, instance=name, peer_host=args.peer_host, peer_port=args.peer_port,
                      ttl=args.lease_ttl, api_url=f"http://{args.api_host}:{args.api_port}")
    return cluster.start()


def _sync_status_app(app):
    """``GET /sync``: the engine's generation and the bridges not yet confirmed up to date (JSON).

    What an operator (and the benchmark) waits on after a change: a change is in place on
    every bridge once ``pending`` is empty, each bridge having confirmed it by committing
    its bundle. A read of the controller's state, never of the switches.
    ``?wait=S`` (at most MAX_SYNC_WAIT s) first waits until every connected bridge holds every
    change made before the request, like ``ovn-nbctl --wait=hv``; ``converged`` says whether
    they do.
    """
    def wsgi(environ, start_response):
        try:
            wait = _sync_wait(environ.get("QUERY_STRING", ""))
        except ValueError as exc:
            return _json(start_response, "400 Bad Request", {"error": str(exc)})
        status = {}
        if app is not None:
            converged = app.wait_synced(wait) if wait else None
            status = app.sync_status()
            if converged is not None:
                status["converged"] = converged and not status["pending"]
        return _json(start_response, "200 OK", status)

    return wsgi


MAX_SYNC_WAIT = 300.0


def _sync_wait(query: str) -> float:
    """The ``wait`` parameter of ``GET /sync`` in seconds (0 if absent); ValueError if it is no number in range."""
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("wait")
    if not values:
        return 0.0
    try:
        wait = float(values[-1])
    except ValueError:
        raise ValueError(f"wait must be a number of seconds, not {values[-1]!r}") from None
    if not 0 <= wait <= MAX_SYNC_WAIT:
        raise ValueError(f"wait must be between 0 and {MAX_SYNC_WAIT:g} seconds, not {values[-1]}")
    return wait


def _json(start_response, status: str, value) -> list[bytes]:
    body = json.dumps(value).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def main(argv: list[str] | None = None) -> int:
    """Run the controller until SIGTERM/SIGINT."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    running = start_or_exit(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    LOG.info("tenantflow controller: stopping")
    if running.api is not None:
        running.api.shutdown()
    if running.ovsdb is not None:
        running.ovsdb.stop()
    from controller import app as of_app

    if of_app.CLUSTER is not None:  # leave now: the others take our bridges at once, not after the lease's TTL
        of_app.CLUSTER.close()
    if running.portmaps is not None:
        running.portmaps.close()
    running.topology.close()
    # Switch flows stay on the bridges (fail_mode=secure): a restart reconciles
    # them without a packet lost. os-ken's own shutdown path raises on
    # HubThread.kill, so the remaining daemon threads end with the process.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
