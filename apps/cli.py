"""The ``tenantflow`` command: one entry point, one subcommand per tool."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Modules are imported only when used so
# `tenantflow trace` does not pay for os-ken and `tenantflow controller` not for Mininet.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "controller": ("controller.main", "run the OpenFlow controller and the Neutron-compatible API"),
    "lab": ("apps.lab.cli", "build a lab of hypervisors (private OVS in namespaces) and VMs"),
    "demo": ("apps.demo", "the whole story on a lab, checked on real packets; report in text and HTML"),
    "trace": ("apps.trace", "walk a packet through a hypervisor's compiled pipeline (--live: against OVS's own)"),
    "check": ("apps.check", "compare every connected switch's flows with its compiled flows"),
    "bench": ("apps.bench", "run the benchmarks and write results JSON"),
    "db": ("apps.db", "check, back up (online) and restore the controller's SQLite store"),
}


def _usage() -> str:
    lines = ["usage: tenantflow <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``tenantflow <command> ...`` to the command's ``main(argv)``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    entry = SUBCOMMANDS.get(args[0])
    if entry is None:
        print(f"tenantflow: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
