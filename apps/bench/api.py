"""Northbound API figures: port creates (throughput, p50/p99 latency), listing and filtering ports.

Against a real ``tenantflow controller`` child process (its own SQLite file, WAL,
synchronous=FULL: every create is one fsync'ed transaction) over real HTTP on
127.0.0.1, one new connection per request (what the figures measured before the server
kept connections alive). Issue #3's goals: p99 of a port create under 20 ms, listing 10,000
ports under 0.5 s. Then a burst: 200 clients at once, each on its own keep-alive connection,
creating and deleting ports (issue #15: no reset, no 5xx, the p99 each client sees).
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from apps.lab.controller import ControllerProcess

CONCURRENT_CLIENTS = 4
BURST_CLIENTS = 200
RESETS = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


def _call(port: int, method: str, path: str, body: dict | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, json.dumps(body).encode() if body is not None else None,
                     {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _create_ports(port: int, net_id: str, n: int, latencies: list[float],
                  headers: dict[str, str] | None = None) -> None:
    for i in range(n):
        t0 = time.perf_counter()
        status, raw = _call(port, "POST", "/v2.0/ports", {"port": {"network_id": net_id, "name": f"bench-{i}",
                                                                    "device_owner": "compute:nova"}}, headers)
        latencies.append(time.perf_counter() - t0)
        if status != 201:
            raise RuntimeError(f"port create answered {status}: {raw[:200]!r}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _in_threads(n: int, target) -> float:
    """Seconds ``target(i)`` took in ``n`` threads, i = 0 .. n-1, started together."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def _timed_get(port: int, path: str, expect: int, collection: str = "ports", rounds: int = 5) -> float:
    """Median seconds of ``rounds`` GETs (answer read and decoded) that must list ``expect`` items."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        status, raw = _call(port, "GET", path)
        items = json.loads(raw)[collection]
        times.append(time.perf_counter() - t0)
        if status != 200 or len(items) != expect:
            raise RuntimeError(f"GET {path}: {status}, {len(items)} items, expected {expect}")
    return statistics.median(times)


def run(quick: bool = False) -> dict:
    """Create N ports with one client, list and filter them, then create more with 4 concurrent clients."""
    n = 1_000 if quick else 10_000
    n_concurrent = 400 if quick else 2_000
    with tempfile.TemporaryDirectory(prefix="tf-bench-api-") as tmp, \
            ControllerProcess(tmp, extra_args=["--log-level", "WARNING"]) as ctrl:
        api = ctrl.api_port
        net_a = ctrl.create("network", name="bench-a")
        ctrl.create("subnet", network_id=net_a["id"], cidr="10.0.0.0/16")
        net_b = ctrl.create("network", name="bench-b")
        ctrl.create("subnet", network_id=net_b["id"], cidr="10.1.0.0/20")

        single: list[float] = []
        t0 = time.perf_counter()
        _create_ports(api, net_a["id"], n, single)
        single_s = time.perf_counter() - t0

        list_s = _timed_get(api, "/v2.0/ports", n)
        list_ids_s = _timed_get(api, "/v2.0/ports?fields=id", n)

        per_client = n_concurrent // CONCURRENT_CLIENTS
        lat_lists: list[list[float]] = [[] for _ in range(CONCURRENT_CLIENTS)]
        errors: list[BaseException] = []

        def client(i: int) -> None:
            try:
                _create_ports(api, net_b["id"], per_client, lat_lists[i])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        concurrent_s = _in_threads(CONCURRENT_CLIENTS, client)
        if errors:
            raise RuntimeError(f"concurrent creates failed: {errors[0]}")
        concurrent = [x for lat in lat_lists for x in lat]
        total = n + per_client * CONCURRENT_CLIENTS

        filter_small_s = _timed_get(api, f"/v2.0/ports?network_id={net_b['id']}", per_client * CONCURRENT_CLIENTS)
        filter_big_s = _timed_get(api, f"/v2.0/ports?network_id={net_a['id']}", n)
        list_all_s = _timed_get(api, "/v2.0/ports", total, rounds=3)
        show_lat = []
        for p in json.loads(_call(api, "GET", "/v2.0/ports?fields=id&limit=200")[1])["ports"]:
            t1 = time.perf_counter()
            _call(api, "GET", f"/v2.0/ports/{p['id']}")
            show_lat.append(time.perf_counter() - t1)
        return {
            "ports_created_single_client": n,
            "create_per_s_single_client": n / single_s,
            "create_p50_ms": statistics.median(single) * 1e3,
            "create_p99_ms": _pct(single, 0.99) * 1e3,
            "create_max_ms": max(single) * 1e3,
            "create_p99_goal_ms": 20.0,
            f"list_{n}_ports_s": list_s,
            f"list_{n}_ports_fields_id_s": list_ids_s,
            "list_goal_s": 0.5,
            f"concurrent_{CONCURRENT_CLIENTS}_clients_ports": per_client * CONCURRENT_CLIENTS,
            "concurrent_create_per_s": per_client * CONCURRENT_CLIENTS / concurrent_s,
            "concurrent_create_p50_ms": statistics.median(concurrent) * 1e3,
            "concurrent_create_p99_ms": _pct(concurrent, 0.99) * 1e3,
            f"filter_network_{per_client * CONCURRENT_CLIENTS}_of_{total}_s": filter_small_s,
            f"filter_network_{n}_of_{total}_s": filter_big_s,
            f"list_{total}_ports_s": list_all_s,
            "show_port_p50_ms": statistics.median(show_lat) * 1e3,
            **_burst(api, 3 if quick else 10),
            **_keystone_vs_noauth(quick),
        }


def _burst(api: int, rounds: int) -> dict:
    """``BURST_CLIENTS`` keep-alive clients started at once, each ``rounds`` times: create a port, delete it."""
    status, raw = _call(api, "POST", "/v2.0/networks", {"network": {"name": "bench-burst"}})
    net_id = json.loads(raw)["network"]["id"]
    _call(api, "POST", "/v2.0/subnets", {"subnet": {"network_id": net_id, "cidr": "10.2.0.0/16"}})
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(BURST_CLIENTS)

    def timed(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None) -> tuple[int, bytes]:
        t0 = time.perf_counter()
        try:
            conn.request(method, path, json.dumps(body).encode() if body else None,
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            code, raw = resp.status, resp.read()
        except RESETS:
            code, raw = 0, b""
            conn.close()  # reconnects on the next request
        with lock:
            latencies.append(time.perf_counter() - t0)
            statuses[code] = statuses.get(code, 0) + 1
        return code, raw

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", api, timeout=60)
        barrier.wait()
        for r in range(rounds):
            code, raw = timed(conn, "POST", "/v2.0/ports", {"port": {"network_id": net_id, "name": f"burst-{i}-{r}"}})
            if code == 201:
                timed(conn, "DELETE", f"/v2.0/ports/{json.loads(raw)['port']['id']}", None)
        conn.close()

    took = _in_threads(BURST_CLIENTS, client)
    return {
        "burst_clients": BURST_CLIENTS,
        "burst_requests": len(latencies),
        "burst_per_s": len(latencies) / took,
        "burst_p50_ms": statistics.median(latencies) * 1e3,
        "burst_p99_ms": _pct(latencies, 0.99) * 1e3,
        "burst_resets": statuses.get(0, 0),
        "burst_5xx": sum(n for code, n in statuses.items() if code >= 500),
    }


AUTH_BLOCK = 100  # creates per turn: the two controllers take turns, so both see the same machine


def _keystone_vs_noauth(quick: bool) -> dict:
    """Port create latency with every request's Keystone token validated (keystonemiddleware, its token
    cache on, the policy table enforced) vs noauth: two fresh controllers of this run, in turns.

    Issue #14's goal: the Keystone p99 at most 1.5x the noauth one. Needs the Keystone venv
    (``make deps``); without it the figures say why they are missing.
    """
    from apps.keystone_lab import keystone_controller, keystone_problem, start_keystone

    problem = keystone_problem()
    if problem:
        return {"keystone_create_p99": f"not measured: {problem}"}
    n = 400 if quick else 2_000
    with tempfile.TemporaryDirectory(prefix="tf-bench-auth-") as tmp:
        keystone = start_keystone(Path(tmp) / "keystone")
        try:
            with keystone_controller(keystone, Path(tmp) / "ks-ctl", "--log-level", "WARNING") as ks, \
                    ControllerProcess(os.path.join(tmp, "noauth"), extra_args=["--auth", "noauth", "--log-level",
                                                                              "WARNING"]) as plain:
                token = {"X-Auth-Token": keystone.token("alice")}
                nets = {}
                for name, ctl, headers in (("keystone", ks, token), ("noauth", plain, {})):
                    status, raw = _call(ctl.api_port, "POST", "/v2.0/networks", {"network": {"name": "b"}}, headers)
                    net = json.loads(raw)["network"]
                    _call(ctl.api_port, "POST", "/v2.0/subnets", {"subnet": {"network_id": net["id"],
                                                                            "cidr": "10.0.0.0/16"}}, headers)
                    _create_ports(ctl.api_port, net["id"], 20, [], headers)  # warm: the token is cached now
                    nets[name] = (ctl.api_port, net["id"], headers)
                latencies: dict[str, list[float]] = {"keystone": [], "noauth": []}
                for _ in range(n // AUTH_BLOCK):
                    for name, (port, net_id, headers) in nets.items():
                        _create_ports(port, net_id, AUTH_BLOCK, latencies[name], headers)
        finally:
            keystone.stop()
    p99 = {name: _pct(values, 0.99) * 1e3 for name, values in latencies.items()}
    return {
        "auth_ports_created_each": n,
        "create_p50_ms_noauth": statistics.median(latencies["noauth"]) * 1e3,
        "create_p50_ms_keystone": statistics.median(latencies["keystone"]) * 1e3,
        "create_p99_ms_noauth": p99["noauth"],
        "create_p99_ms_keystone": p99["keystone"],
        "create_p99_keystone_over_noauth": p99["keystone"] / p99["noauth"],
        "create_p99_keystone_goal_ratio": 1.5,
    }
