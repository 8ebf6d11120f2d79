"""``tenantflow lab``: build a lab, register its hypervisors, wait for Ctrl-C, tear it down.

    tenantflow lab run --hypervisors 3 [--provider] [--controller-socket PATH | --controller TARGET]
    tenantflow lab down --prefix tf      # clean up after a lab whose process was killed
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
import urllib.error
from types import FrameType

from apps.lab.lab import DEFAULT_API_URL, Lab, destroy_stale

DEFAULT_SOCKET = "/run/tenantflow/openflow.sock"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tenantflow lab", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="build the lab, register hypervisors, wait for Ctrl-C/SIGTERM, tear down")
    run.add_argument("--prefix", default="tf", help="namespace name prefix (default: tf)")
    run.add_argument("--hypervisors", "-n", type=int, default=2)
    run.add_argument("--provider", action="store_true", help="add br-phys + a provider fabric (physnet1)")
    ctl = run.add_mutually_exclusive_group()
    ctl.add_argument("--controller-socket", default=DEFAULT_SOCKET, help=f"controller unix socket ({DEFAULT_SOCKET})")
    ctl.add_argument("--controller", dest="controller_target", help="an OVS controller target, used verbatim")
    ctl.add_argument("--no-controller", action="store_true")
    run.add_argument("--api", default=DEFAULT_API_URL, help=f"controller API base URL ({DEFAULT_API_URL})")
    run.add_argument("--no-register", action="store_true", help="do not POST the hypervisors to the API")
    run.add_argument("--register-timeout", type=float, default=10.0, help="seconds to wait for the API")
    down = sub.add_parser("down", help="remove what a killed lab left behind (namespaces, processes, files)")
    down.add_argument("--prefix", default="tf")
    return p


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tenantflow lab``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.cmd == "down":
        removed = destroy_stale(args.prefix)
        print(f"removed namespaces: {', '.join(removed) or 'none'}")
        return 0

    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    lab = Lab(
        prefix=args.prefix,
        n_hypervisors=args.hypervisors,
        controller_unix_socket=None if args.no_controller or args.controller_target else args.controller_socket,
        controller_target=args.controller_target,
        api_url=args.api,
        provider=args.provider,
    )
    try:
        with lab:
            if not args.no_register:
                _register(lab, args.register_timeout)
            print(describe(lab))
            print("registered with " + args.api if not args.no_register else "not registered")
            print("Ctrl-C or SIGTERM tears the lab down.", flush=True)
            while not stop.wait(0.5):
                pass
    except RuntimeError as exc:
        print(f"tenantflow lab: {exc}")
        return 1
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    print(f"lab {args.prefix!r} torn down")
    return 0
