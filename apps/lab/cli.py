"""``tenantflow lab``: build a lab, register its hypervisors, wait for Ctrl-C, tear it down.

    tenantflow lab run --hypervisors 3 [--provider] [--controller-socket PATH | --controller TARGET]
    tenantflow lab run --hypervisors 3 --controllers 3 --etcd 3   # its own cluster: etcd + 3 instances
    tenantflow lab run --hypervisors 3 --controllers 1 --tls      # attached over TLS (ovs-pki certificates)
    tenantflow lab down --prefix tf      # clean up after a lab whose process was killed
    tenantflow lab --scale 1000 [--ports-per-hv 20] [--networks 500] [--controller tcp:127.0.0.1:6653] [--api URL]

``--scale N`` is the control-plane scale lab (:mod:`apps.lab.scale`): N hypervisors as
dummy-datapath bridges, at most 10 per private ovs-vswitchd, no namespaces.

``--controllers N`` starts the lab's own controller instances (``tenantflow controller``
processes, state in the lab's work dir) instead of attaching to a running one; with N > 1
they share an etcd cluster of ``--etcd M`` members (default 3) the lab starts too, on
127.0.0.1 with ports and data directories of their own, and every br-int connects to
each instance. With ``--tls`` the hypervisors attach to them over TLS only (OpenFlow and
OVSDB, a certificate per hypervisor from an ``ovs-pki`` CA in their work dir, across a
management network in the root namespace; no plain TCP). Everything stops with the lab.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
from collections.abc import Iterator
from types import FrameType

from apps.lab.controller import ControllerProcess
from apps.lab.etcd import EtcdCluster
from apps.lab.lab import DEFAULT_API_URL, Lab, destroy_stale
from apps.lab.pki import TlsSetup, tls_setup
from apps.lab.scale import DEFAULT_BRIDGES_PER_VSWITCHD, ScaleLab
from apps.lab.scale import describe as describe_scale

DEFAULT_SOCKET = "/run/tenantflow/openflow.sock"
DEFAULT_MANAGER_SOCKET = "/run/tenantflow/ovsdb.sock"  # the controller's default --ovsdb-listen unix socket


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tenantflow lab", description=__doc__.split("\n")[0])
    scale = p.add_argument_group("scale lab", "tenantflow lab --scale N [options]: N hypervisors as dummy-datapath "
                                 "OVS bridges (no namespaces), registered through the API; Ctrl-C tears down")
    scale.add_argument("--scale", type=int, metavar="N", help="build the scale lab with N hypervisors")
    scale.add_argument("--ports-per-hv", type=int, default=0, metavar="K", help="bound VM ports per hypervisor")
    scale.add_argument("--networks", type=int, metavar="M",
                       help="networks to create through the API (default: 1 if --ports-per-hv, else 0)")
    scale.add_argument("--port-security", action="store_true", help="ports with port security (default: off)")
    scale.add_argument("--controller", dest="scale_controller", default="tcp:127.0.0.1:6653", metavar="TARGET",
                       help="OVS controller target of every bridge (default: tcp:127.0.0.1:6653)")
    scale.add_argument("--no-controller", dest="scale_no_controller", action="store_true")
    scale.add_argument("--connect-last", action="store_true",
                       help="connect the bridges only once the topology exists (a cold start of N switches)")
    scale.add_argument("--api", dest="scale_api", default=DEFAULT_API_URL, metavar="URL",
                       help=f"API base URL ({DEFAULT_API_URL})")
    scale.add_argument("--no-register", dest="scale_no_register", action="store_true",
                       help="do not POST the hypervisors to the API")
    scale.add_argument("--bridges-per-vswitchd", type=int, default=DEFAULT_BRIDGES_PER_VSWITCHD, metavar="B",
                       help=f"bridges per ovs-vswitchd ({DEFAULT_BRIDGES_PER_VSWITCHD})")
    scale.add_argument("--workers", type=int, default=8, metavar="W", help="threads running OVS tools (8)")
    scale.add_argument("--api-workers", type=int, default=4, metavar="W", help="threads calling the API (4)")
    scale.add_argument("--connect-timeout", type=float, default=120.0, metavar="S",
                       help="seconds to wait for every bridge's controller connection (120)")
    sub = p.add_subparsers(dest="cmd")
    run = sub.add_parser("run", help="build the lab, register hypervisors, wait for Ctrl-C/SIGTERM, tear down")
    run.add_argument("--prefix", default="tf", help="namespace name prefix (default: tf)")
    run.add_argument("--hypervisors", "-n", type=int, default=2)
    run.add_argument("--provider", action="store_true", help="add br-phys + a provider fabric (physnet1)")
    ctl = run.add_mutually_exclusive_group()
    ctl.add_argument("--controller-socket", default=DEFAULT_SOCKET, help=f"controller unix socket ({DEFAULT_SOCKET})")
    ctl.add_argument("--controller", dest="controller_target", help="an OVS controller target, used verbatim")
    ctl.add_argument("--no-controller", action="store_true")
    ctl.add_argument("--controllers", type=int, default=0, metavar="N",
                     help="start N controller instances of the lab's own (N > 1: a cluster over etcd)")
    run.add_argument("--manager-socket", default=DEFAULT_MANAGER_SOCKET,
                     help=f"the controller's OVSDB unix socket, each hypervisor's manager ({DEFAULT_MANAGER_SOCKET}; "
                          "not with --controller or --no-controller)")
    run.add_argument("--tls", action="store_true",
                     help="with --controllers N: the hypervisors attach over TLS only (an ovs-pki CA, a certificate "
                          "per hypervisor, a management network to the controllers; no plain TCP)")
    run.add_argument("--etcd", type=int, default=None, metavar="M",
                     help="etcd members for --controllers N > 1 (default 3; 1 is a single point of failure)")
    run.add_argument("--api", default=DEFAULT_API_URL, help=f"controller API base URL ({DEFAULT_API_URL})")
    run.add_argument("--no-register", action="store_true", help="do not POST the hypervisors to the API")
    run.add_argument("--register-timeout", type=float, default=10.0, help="seconds to wait for the API")
    down = sub.add_parser("down", help="remove what a killed lab left behind (namespaces, processes, files)")
    down.add_argument("--prefix", default="tf")
    return p


@contextlib.contextmanager
def own_controllers(prefix: str, count: int, members: int | None,
                    tls: bool = False) -> Iterator[tuple[list[ControllerProcess], TlsSetup | None]]:
    """``count`` controller instances of the lab's own (over an etcd cluster when more than one); stopped on exit.

    With ``tls``, also the CA (in their work dir) and the management network the lab needs.
    """
    workdir = os.path.join(tempfile.gettempdir(), f"tenantflow-lab-{prefix}-controllers")
    shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        setup = stack.enter_context(tls_setup(workdir, prefix)) if tls else None
        store: list[str] = []
        if count > 1:
            etcd = stack.enter_context(EtcdCluster(members or 3))
            print(f"etcd: {members or 3} members at {', '.join(etcd.endpoints)}", flush=True)
            store = ["--store", f"{etcd.url}/{prefix}"]
        ctls = []
        for i in range(count):
            extra = [*store, "--instance", f"{prefix}-c{i}"] if store else []
            ctl = ControllerProcess(os.path.join(workdir, f"c{i}"), extra_args=extra,
                                    **(setup.controller_kwargs() if setup else {}))
            stack.callback(ctl.stop)
            ctls.append(ctl.start(30))
        yield ctls, setup


def _register(lab: Lab, timeout: float) -> None:
    # The API may still be starting (e.g. `tenantflow controller &` just before): retry.
    deadline = time.monotonic() + timeout
    pending = list(lab.hypervisors)
    while pending:
        hv = pending[0]
        try:
            hv.register(lab.api_url)
            pending.pop(0)
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach the API at {lab.api_url}: {exc}") from exc
            time.sleep(0.5)


def describe(lab: Lab) -> str:
    """A human summary of the lab: hypervisors, where their files are, how to look at them."""
    lines = [f"lab {lab.prefix!r}: fabric netns {lab.fabric_netns}, work dir {lab.workdir}"]
    for hv in lab.hypervisors:
        maps = ",".join(f"{k}:{v}" for k, v in hv.bridge_mappings.items()) or "-"
        lines.append(
            f"  {hv.name}: netns {hv.netns}  dpid {hv.dpid:016x}  tunnel_ip {hv.tunnel_ip}"
            f"  controller {hv.controller or '-'}  bridge_mappings {maps}"
        )
    if lab.hypervisors:
        hv = lab.hypervisors[0]
        lines.append(f"  e.g.: OVS_RUNDIR={hv.rundir} ovs-ofctl -O OpenFlow13 dump-flows br-int")
        lines.append(f"        ovs-vsctl --db=unix:{hv.rundir}/db.sock show")
    return "\n".join(lines)


def _raise_interrupt(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _scale(args: argparse.Namespace) -> int:
    """``tenantflow lab --scale N``: build, register, populate, summarise, wait for Ctrl-C/SIGTERM, tear down."""
    networks = args.networks if args.networks is not None else (1 if args.ports_per_hv else 0)
    if (networks or args.ports_per_hv) and args.scale_no_register:
        print("tenantflow lab: --networks/--ports-per-hv need the hypervisors registered (drop --no-register)")
        return 2
    target = None if args.scale_no_controller else args.scale_controller
    lab = ScaleLab(args.scale, None if args.connect_last else target,
                   ports_per_hv=args.ports_per_hv, api_url=args.scale_api,
                   bridges_per_vswitchd=args.bridges_per_vswitchd, workers=args.workers,
                   api_workers=args.api_workers)
    old = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM tears down like Ctrl-C
    ready = False
    try:
        with lab:
            print(f"built {args.scale} bridges on {len(lab.vswitchds)} vswitchds in {lab.timings['build_s']:.2f}s",
                  flush=True)
            if not args.scale_no_register:
                took = lab.register()
                print(f"registered {args.scale} hypervisors with {args.scale_api} in {took:.2f}s", flush=True)
                if networks:
                    lab.populate(networks, port_security=args.port_security)
                    print(f"created {networks} networks and {args.ports_per_hv} ports per hypervisor, plugged",
                          flush=True)
            if target and args.connect_last:
                lab.set_controller(target)
            if lab.controller_target:
                up = lab.wait_connected(args.connect_timeout)
                print(f"{up}/{args.scale} bridges connected to {lab.controller_target} "
                      f"({lab.timings['connect_wait_s']:.2f}s)", flush=True)
                if not args.scale_no_register:
                    side = lab.controller_side()
                    print(f"the controller: {side['connected']} of them connected, {side['synced']} switches synced",
                          flush=True)
            print(describe_scale(lab))
            print("Ctrl-C or SIGTERM tears the lab down.", flush=True)
            ready = True
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError, ValueError) as exc:  # ScaleLabError, ApiError, sh.CommandError...
        print(f"tenantflow lab: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
    print("scale lab torn down")
    return 0 if ready else 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tenantflow lab``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.scale is not None:
        if args.cmd is not None:
            parser.error("--scale builds the scale lab: give it without a command")
        return _scale(args)
    if args.cmd is None:
        parser.error("give a command (run, down) or --scale N")
    if args.cmd == "down":
        removed = destroy_stale(args.prefix)
        print(f"removed namespaces: {', '.join(removed) or 'none'}")
        return 0

    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            own = not (args.no_controller or args.controller_target)
            sockets: str | list[str] | None = args.controller_socket if own else None
            managers: str | list[str] | None = args.manager_socket if own else None
            if args.tls and not args.controllers:
                print("tenantflow lab: --tls needs --controllers N (the lab's own, with their certificates)")
                return 2
            tls: dict = {}
            if args.controllers:
                ctls, setup = stack.enter_context(own_controllers(args.prefix, args.controllers, args.etcd, args.tls))
                sockets, args.api = [c.unix_socket for c in ctls], ctls[0].api_url
                managers = [c.ovsdb_socket for c in ctls]
                if setup is not None:
                    sockets, managers, tls = None, None, setup.lab_kwargs(ctls)
                for c in ctls:
                    print(f"controller {c.api_url} (OpenFlow {c.ssl_target if setup else 'unix:' + c.unix_socket}), "
                          f"log {c.log_path}", flush=True)
            lab = stack.enter_context(Lab(prefix=args.prefix, n_hypervisors=args.hypervisors,
                                          controller_unix_socket=sockets,
                                          controller_target=tls.pop("controller_target", args.controller_target),
                                          api_url=args.api, provider=args.provider, manager_unix_socket=managers,
                                          **tls))
            if not args.no_register:
                _register(lab, args.register_timeout)
            print(describe(lab))
            print("registered with " + args.api if not args.no_register else "not registered")
            print("Ctrl-C or SIGTERM tears the lab down.", flush=True)
            while not stop.wait(0.5):
                pass
    except (RuntimeError, OSError) as exc:
        print(f"tenantflow lab: {exc}")
        return 1
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    print(f"lab {args.prefix!r} torn down")
    return 0
