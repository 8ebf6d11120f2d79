"""Real TCP for the demo's checks, run as a script inside a VM's (or the outside host's) namespace.

Standard library only, and run by path (``python apps/demo_probe.py ...``), so it needs no
installed package inside the namespace:

- ``serve NAME PORT [PORT...]``: listens on every port (all addresses), prints ``ready``
  once all are bound, and answers each connection with ``NAME <the client's address>``: the
  answer names the host that really took the connection and the source address it saw
  (what NAT on the way made of the client);
- ``connect TIMEOUT ADDRESS:PORT [ADDRESS:PORT...]``: one connection to each, in turn;
  prints one JSON object ``{"ADDRESS:PORT": answer or "error: ..."}``. A connection the
  network drops ends in ``error: timed out`` after TIMEOUT seconds; one nobody listens for
  in ``error: [Errno 111] Connection refused``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading


def _serve_port(name: str, srv: socket.socket) -> None:
    while True:
        conn, peer = srv.accept()
        with conn:
            try:
                conn.sendall(f"{name} {peer[0]}".encode())
            except OSError:
                pass


def serve(name: str, ports: list[int]) -> None:
    """Answer every connection on each of ``ports`` with ``NAME <client address>``; forever."""
    sockets = []
    for port in ports:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(16)
        sockets.append(srv)
    for srv in sockets:
        threading.Thread(target=_serve_port, args=(name, srv), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def connect(timeout: float, targets: list[str]) -> dict[str, str]:
    """One connection to each ``ADDRESS:PORT``: the server's answer, or the error."""
    out = {}
    for target in targets:
        address, port = target.rsplit(":", 1)
        try:
            with socket.create_connection((address, int(port)), timeout=timeout) as s:
                out[target] = s.recv(256).decode()
        except OSError as exc:
            out[target] = f"error: {exc}"
    return out


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif sys.argv[1] == "connect":
        print(json.dumps(connect(float(sys.argv[2]), sys.argv[3:])), flush=True)
    else:
        sys.exit(f"usage: {sys.argv[0]} serve NAME PORT... | connect TIMEOUT ADDRESS:PORT...")
