"""A thousand bridges reconnecting at once are all taken: the OpenFlow listeners' accept queues are deep.

os-ken listens with a backlog of 50. When more bridges connect than the controller has accepted
yet (a restart at 1,000 bridges), the kernel drops the handshakes past the queue: OVS's side of
such a connection may believe itself established, get no answer, and give up after its
inactivity probe (seen in the scale bench: 10 bridges of one vswitchd at once). Here a listener
made as os-ken makes it, after :func:`controller.connection.install`, takes 300 connections that
nobody accepts yet, each within a second.
"""

from __future__ import annotations

import contextlib
import socket

from os_ken.lib import hub

from controller import connection

CONNECTIONS = 300


def test_os_kens_listener_queues_every_reconnecting_bridge() -> None:
    connection.install()
    server = hub.StreamServer(("127.0.0.1", 0), lambda sock, addr: None)  # as os-ken's OpenFlowController
    port = server.server.getsockname()[1]
    with contextlib.ExitStack() as stack:
        stack.callback(server.server.close)
        for i in range(CONNECTIONS):
            client = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            client.settimeout(1.0)
            try:
                client.connect(("127.0.0.1", port))
            except OSError as exc:
                raise AssertionError(f"connection {i + 1} of {CONNECTIONS} not taken: {exc!r}") from exc
        accepted = 0
        server.server.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            while accepted < CONNECTIONS:
                server.server.accept()[0].close()
                accepted += 1
    assert accepted == CONNECTIONS
