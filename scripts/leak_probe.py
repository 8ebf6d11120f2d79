"""Find what a controller process keeps per API operation: a probe for leaks (README "Soak").

Runs the real controller (``python -m apps.cli controller`` arguments) in a child process
with a hook: SIGUSR1 makes it write, to ``$LEAK_PROBE_OUT.N.json``,

- ``frozen``: objects in the GC's permanent generation (``gc.get_freeze_count()``);
- ``cycles``: the reference cycles that were garbage but frozen (controller.heap freezes what
  lives a second, and a frozen cycle is never collected): the heap is unfrozen, collected with
  ``gc.DEBUG_SAVEALL`` and frozen again; their count by type and a few examples;
- ``types``: every tracked object's count by type (after that collection), and with
  ``$LEAK_PROBE_TRACE`` (type names, comma-separated) who refers to two of each, 6 levels up;
- ``caches``: the entries of the process-wide memo tables (flows.units, flows.shared, the
  lru_caches of controller.wire and controller.audit);
- ``tracemalloc``: with ``PYTHONTRACEMALLOC`` set, a snapshot in ``$LEAK_PROBE_OUT.N.snap``.

The driver (``main``) builds a small cloud through the API (hypervisors registered in the
SQLite file beforehand, a fake switch each: tests/fake_switch.py), runs a churn of the
soak's operations (a port created and bound, or deleted; the floating IP moved; a rule added
to or deleted from the group every port is in) over real HTTP, dumps before and after, and
prints the growth per operation.

    python scripts/leak_probe.py --ops 10000 --switches 3 [--rate 20] [--tracemalloc 12]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _type_name(obj: object) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _describe(obj: object) -> str:
    if type(obj).__name__ == "frame":
        code = obj.f_code  # type: ignore[attr-defined]
        return f"frame {code.co_filename}:{obj.f_lineno} {code.co_name}"  # type: ignore[attr-defined]
    if type(obj).__name__ == "function":
        return f"function {obj.__module__}.{obj.__qualname__}"  # type: ignore[attr-defined]
    try:
        return repr(obj)[:200]
    except Exception:  # noqa: BLE001 - a probe: any repr may fail
        return type(obj).__name__


def _chain(obj: object, ignore: set[int], depth: int = 6) -> list:
    """Who refers to ``obj``, and to them, ``depth`` levels up (a tree of descriptions)."""
    if depth == 0:
        return []
    out = []
    for ref in gc.get_referrers(obj):
        if id(ref) in ignore or type(ref).__name__ in ("frame", "list_iterator"):
            continue
        out.append([_describe(ref)[:160], _chain(ref, ignore | {id(obj)}, depth - 1) if len(out) < 3 else []])
        if len(out) >= 4:
            break
    return out


def _caches() -> dict[str, int]:
    """Entries of the controller's process-wide memo tables."""
    from controller import audit, wire
    from flows import shared, units

    sizes = {"flows.units._memo": len(units._memo), "flows.shared._flows": len(shared._flows)}
    for module in (wire, audit):
        for name, fn in vars(module).items():
            if hasattr(fn, "cache_info"):
                sizes[f"{module.__name__}.{name}"] = fn.cache_info().currsize
    return sizes


def dump(path: str) -> None:
    """Write the heap figures described in the module docstring to ``path``.json (and .snap)."""
    report: dict[str, Any] = {"frozen_before": gc.get_freeze_count(), "caches": _caches()}
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        report["collected"] = gc.collect()
        garbage = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    report["cycles"] = Counter(_type_name(o) for o in garbage).most_common(40)
    report["frames"] = Counter(_describe(o) for o in garbage if type(o).__name__ == "frame").most_common(30)
    report["functions"] = Counter(_describe(o) for o in garbage if type(o).__name__ == "function").most_common(20)
    del garbage
    gc.collect()  # free them for good (else the next dump would find the same cycles again)
    objects = gc.get_objects()
    report["types"] = dict(Counter(_type_name(o) for o in objects))
    report["allocated_blocks"] = sys.getallocatedblocks()  # every live object, tracked by the GC or not
    with open("/proc/self/smaps_rollup") as fh:  # anonymous (heap) against file-backed (SQLite's mapped -shm)
        report["smaps_kb"] = {line.split(":")[0]: int(line.split()[1]) for line in fh if line.split()[-1] == "kB"}
    wanted = set(filter(None, os.environ.get("LEAK_PROBE_TRACE", "").split(",")))
    report["referrers"] = {}
    for name in wanted:
        found = [o for o in objects if _type_name(o) == name]
        picked = found[len(found) // 2:len(found) // 2 + 2]  # from the middle: not the first (templates, live)
        ignore = {id(objects), id(found), id(picked), id(sys._getframe())}
        del found
        report["referrers"][name] = [_chain(o, ignore) for o in picked]
        del picked
    del objects
    gc.freeze()
    report["frozen_after"] = gc.get_freeze_count()
    import tracemalloc

    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(path + ".snap")
    with open(path + ".json", "w") as fh:
        json.dump(report, fh)


def child(argv: list[str]) -> int:
    """The controller with the SIGUSR1 hook (the arguments of ``tenantflow controller``)."""
    sys.path.insert(0, ROOT)
    out = os.environ["LEAK_PROBE_OUT"]
    seq = iter(range(1_000_000))
    signal.signal(signal.SIGUSR1, lambda *_: dump(f"{out}.{next(seq)}"))
    from controller.main import main as controller_main

    return controller_main(argv)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    sys.exit(child(sys.argv[2:]))


# -- the driver ---------------------------------------------------------------------------------
def _controller(workdir: str, extra_env: dict[str, str], db: str):
    from apps.lab.controller import ControllerProcess

    class Probed(ControllerProcess):
        def argv(self) -> list[str]:
            base = super().argv()  # [python, -m, apps.cli, controller, ...]
            return [sys.executable, os.path.abspath(__file__), "--child", *base[4:]]

        def start(self, timeout: float = 300.0):
            os.environ.update(extra_env)
            return super().start(timeout)

    return Probed(workdir, db=db)


class Cloud:
    """A network with a router to an external one, a group, two floating IP holders."""

    def __init__(self, ctl, hosts: list[str]) -> None:
        self.ctl, self.hosts = ctl, hosts
        ext = ctl.create("network", name="ext", **{"router:external": True, "provider:network_type": "flat",
                                                   "provider:physical_network": "physnet1"})
        ctl.create("subnet", network_id=ext["id"], cidr="172.24.8.0/24", gateway_ip="172.24.8.1", enable_dhcp=False)
        self.net = ctl.create("network", name="net", project_id="p")
        sub = ctl.create("subnet", network_id=self.net["id"], cidr="10.0.0.0/16", ip_version=4, project_id="p")
        router = ctl.create("router", name="r", project_id="p", external_gateway_info={"network_id": ext["id"]})
        ctl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
        self.sg = ctl.request("POST", "/v2.0/security-groups",
                              {"security_group": {"name": "sg", "project_id": "p"}})["security_group"]
        self.n = 0
        self.holders = [self.port(f"f{i}")["id"] for i in range(2)]
        self.fip = ctl.create("floatingip", floating_network_id=ext["id"], project_id="p", port_id=self.holders[0])
        self.alive: list[str] = []
        self.rules: list[str] = []

    def port(self, name: str) -> dict:
        return self.ctl.create("port", network_id=self.net["id"], project_id="p", name=name,
                               device_owner="compute:nova", security_groups=[self.sg["id"]],
                               **{"binding:host_id": self.hosts[self.n % len(self.hosts)]})

    def step(self) -> None:
        """One operation of the soak's churn, in turn: a port, the floating IP, a rule."""
        self.n += 1
        kind = self.n % 3
        if kind == 0:
            if len(self.alive) < 3:
                self.alive.append(self.port(f"c{self.n}")["id"])
            else:
                self.ctl.delete("port", self.alive.pop(0))
        elif kind == 1:
            self.ctl.request("PUT", f"/v2.0/floatingips/{self.fip['id']}",
                             {"floatingip": {"port_id": self.holders[self.n // 3 % 2]}})
        elif len(self.rules) < 3:
            body = {"security_group_rule": {"security_group_id": self.sg["id"], "direction": "ingress",
                                            "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 20000 + self.n,
                                            "port_range_max": 20000 + self.n, "remote_ip_prefix": "10.99.0.0/24"}}
            self.rules.append(self.ctl.request("POST", "/v2.0/security-group-rules", body)["security_group_rule"]["id"])
        else:
            self.ctl.request("DELETE", f"/v2.0/security-group-rules/{self.rules.pop(0)}")


def _snap(ctl, out: str, n: int) -> dict:
    time.sleep(1.5)  # what the last operation left lives past a freeze
    ctl.proc.send_signal(signal.SIGUSR1)
    path = f"{out}.{n}.json"
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    with open(path) as fh:
        report = json.load(fh)
    with open(f"/proc/{ctl.proc.pid}/status") as fh:
        report["rss_kb"] = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return report


def main() -> None:
    """Drive the churn and print what grew per operation."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=1500)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--workdir", default="/tmp/leak_probe")
    p.add_argument("--tracemalloc", type=int, default=0, help="frames per traceback (0: off)")
    p.add_argument("--switches", type=int, default=0, help="fake switches (tests/fake_switch.py), hv1..hvN")
    p.add_argument("--rate", type=float, default=0, help="operations a second (0: as fast as they go)")
    p.add_argument("--packet-ins", action="store_true",
                   help="with each operation, each fake switch sends an echo request and a packet-in")
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    os.makedirs(args.workdir, exist_ok=True)
    db = os.path.join(args.workdir, f"probe{os.getpid()}.sqlite")
    if args.switches:
        from topology.state import Topology

        topology = Topology(db)
        for i in range(args.switches):
            topology.register_hypervisor({"name": f"hv{i + 1}", "datapath_id": f"{0xD0 + i:016x}",
                                          "tunnel_ip": f"192.0.2.{i + 1}"})
        topology.close()
    out = os.path.join(args.workdir, f"dump{os.getpid()}")
    env = {"LEAK_PROBE_OUT": out}
    if args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = str(args.tracemalloc)
    ctl = _controller(os.path.join(args.workdir, f"ctl{os.getpid()}"), env, db)
    with ctl:
        switches = []
        if args.switches:
            from tests.fake_switch import FakeSwitch, packet_in

            switches = [FakeSwitch(("127.0.0.1", ctl.of_port), 0xD0 + i) for i in range(args.switches)]
        cloud = Cloud(ctl, [f"hv{i + 1}" for i in range(max(1, args.switches))])
        pace = 1 / args.rate if args.rate else 0.0
        for _ in range(args.warmup):
            cloud.step()
            time.sleep(pace)
        before = _snap(ctl, out, 0)
        t0 = time.monotonic()
        for i in range(args.ops):
            cloud.step()
            for sw in switches if args.packet_ins else ():
                sw.echo(i)
                sw.send(packet_in(i))
            time.sleep(pace)
        took = time.monotonic() - t0
        after = _snap(ctl, out, 1)
        for sw in switches:
            sw.close()
    ops = args.ops
    print(f"{ops} operations in {took:.1f} s; RSS {before['rss_kb']} -> {after['rss_kb']} kB: "
          f"{(after['rss_kb'] - before['rss_kb']) * 1024 / ops:.0f} B/op")
    print(f"frozen {before['frozen_after']} -> {after['frozen_before']} "
          f"({(after['frozen_before'] - before['frozen_after']) / ops:.1f}/op); "
          f"of them garbage cycles: {after['collected']} ({after['collected'] / ops:.1f}/op)")
    print(f"allocated blocks {before['allocated_blocks']} -> {after['allocated_blocks']} "
          f"({(after['allocated_blocks'] - before['allocated_blocks']) / ops:+.1f}/op)")
    print("cache entries:", {k: f"{before['caches'][k]} -> {v} ({(v - before['caches'][k]) / ops:+.2f}/op)"
                             for k, v in after["caches"].items()})
    print("garbage cycles by type:", after["cycles"][:25])
    print("frames in them:", after["frames"][:20])
    print("functions in them:", after["functions"][:10])
    grew = Counter({t: c - before["types"].get(t, 0) for t, c in after["types"].items()})
    for name, chains in after["referrers"].items():
        print(name, json.dumps(chains, indent=1)[:6000])
    print("live objects grown by type:", [(t, n) for t, n in grew.most_common(20) if n > 0])
    if args.tracemalloc:
        import tracemalloc

        a = tracemalloc.Snapshot.load(f"{out}.1.snap")
        b = tracemalloc.Snapshot.load(f"{out}.0.snap")
        for stat in a.compare_to(b, "traceback")[:8]:
            print(f"{stat.size_diff / ops:+.0f} B/op {stat.count_diff:+d} blocks")
            for line in stat.traceback.format()[-16:]:
                print("   ", line)


if __name__ == "__main__" and not (len(sys.argv) > 1 and sys.argv[1] == "--child"):
    main()
