"""What reading switch connections costs: a reader thread per connection against the reactors.

In-process, no switch: ``CONNECTIONS`` TCP connections on loopback, each wrapped as the controller
wraps a switch's (:class:`controller.connection.FastEchoSocket`), send ``ROUNDS`` echo requests
each, one round every 50 ms, while ``BUSY`` other threads keep the interpreter busy (as a busy
controller's workers do). Each way runs in a process of its own (``python -m apps.bench.echo
threaded|reactor``: threads never outlive their run); reported: the process's CPU seconds over the
rounds (the busy threads' share, the same in both, included), their ratio, and the difference per
echo request.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

CONNECTIONS = 1000
ROUNDS = 20
BUSY = 20
HEADER = struct.Struct("!BBHI")


def measure(threaded: bool, connections: int, rounds: int, busy: int) -> dict:
    """CPU and wall seconds of ``rounds`` echo requests on each of ``connections`` (in this process)."""
    from controller.connection import FastEchoSocket

    server = socket.create_server(("127.0.0.1", 0), backlog=connections)
    pairs = []
    for _ in range(connections):
        switch = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
        pairs.append((FastEchoSocket(ours, threaded=threaded), switch))
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            sum(range(200))
            time.sleep(0.0005)

    for _ in range(busy):
        threading.Thread(target=keep_busy, daemon=True).start()
    time.sleep(1)
    cpu0, wall0 = sum(os.times()[:2]), time.perf_counter()
    for r in range(rounds):
        for _, switch in pairs:
            switch.sendall(HEADER.pack(4, 2, 8, r))
        for _, switch in pairs:
            assert len(switch.recv(100)) == 8, "echo reply"
        time.sleep(0.05)
    cpu, wall = sum(os.times()[:2]) - cpu0, time.perf_counter() - wall0
    stop.set()
    return {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "echo_requests": rounds * connections}


def run(quick: bool = False) -> dict:
    """Both ways, each in a subprocess; their CPU and its ratio."""
    connections = 200 if quick else CONNECTIONS
    out: dict = {"connections": connections, "rounds": ROUNDS, "busy_threads": BUSY}
    for way in ("threaded", "reactor"):
        done = subprocess.run([sys.executable, "-m", "apps.bench.echo", way, str(connections)], check=True,
                              capture_output=True, text=True, timeout=600)
        out[way] = json.loads(done.stdout.strip().splitlines()[-1])
    threaded, reactor = out["threaded"]["cpu_s"], out["reactor"]["cpu_s"]
    out["cpu_ratio_threaded_to_reactor"] = round(threaded / reactor, 2)
    out["cpu_us_saved_per_echo"] = round((threaded - reactor) / out["reactor"]["echo_requests"] * 1e6, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1] == "threaded", int(sys.argv[2]), ROUNDS, BUSY)))
