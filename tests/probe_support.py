"""What the controller probes (tests/*_probe.py, each the real controller in its own process) share."""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from collections.abc import Callable


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_and_exit(run: Callable[[], dict]) -> None:
    """Print ``run()``'s result as one JSON line and leave; on failure print the traceback and exit 1.

    os-ken's threads do not shut down cleanly (HubThread.kill): leave with os._exit, on failure
    too, or the interpreter would wait for them forever.
    """
    try:
        result = run()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)
