"""Short TCP connections for a connection-rate benchmark: an answering server and a connecting loop.

Run inside a host's namespace (``ip netns exec NS python -m apps.bench.tcp_probe ...``):

- ``serve PORT``: prints ``ready`` once listening; for every connection, reads the
  client's request (up to 64 bytes), sends it back and closes (the server closes first,
  so TIME_WAIT stays on its side and the client never runs out of source ports);
- ``connect DST PORT SECONDS``: one connection after another for ``SECONDS``:
  connect, send 32 bytes, read the answer to its end, close. Prints one JSON line:
  ``connections`` completed, ``errors``, ``seconds`` elapsed, each connection's time
  (connect to EOF) as ``p50_ms``/``p99_ms``/``max_ms``, and how many completed ones took
  over SLOW_S (a lost SYN: its first retransmission comes 1 s later).
"""

from __future__ import annotations

import json
import socket
import sys
import time

REQUEST = b"x" * 32
SLOW_S = 0.5


def serve(port: int) -> None:
    """Answer each connection with its own request, then close it; forever."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(512)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(2)
            try:
                conn.sendall(conn.recv(64))
            except OSError:
                pass


def one(dst: str, port: int) -> None:
    """One short connection: connect, request, the whole answer, close."""
    with socket.create_connection((dst, port), timeout=2) as s:
        s.sendall(REQUEST)
        got = b""
        while chunk := s.recv(64):
            got += chunk
    if got != REQUEST:
        raise OSError(f"answer {got!r}")


def connect(dst: str, port: int, seconds: float) -> dict[str, float | int]:
    """Connections one after another for ``seconds``: the figures of the module docstring."""
    times: list[float] = []
    errors = 0
    start = time.perf_counter()
    end = start + seconds
    while (t0 := time.perf_counter()) < end:
        try:
            one(dst, port)
            times.append(time.perf_counter() - t0)
        except OSError:
            errors += 1
    elapsed = time.perf_counter() - start
    times.sort()

    def pick(q: float) -> float:
        return round(times[min(len(times) - 1, int(q * len(times)))] * 1e3, 3) if times else 0.0

    return {"connections": len(times), "errors": errors, "seconds": round(elapsed, 3),
            "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0),
            "slow": sum(1 for t in times if t > SLOW_S)}


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        print(json.dumps(connect(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))), flush=True)
