"""A resumable watch on every key under an etcd prefix (etcd's v3 JSON gateway, through etcd3gw's session).

etcd3gw's own ``watch_prefix`` hides the end of its stream (a dropped connection just stops the
callbacks), so this reads the gateway's watch stream itself, with the same client objects:
one thread per watch, each response's events handed over whole (etcd never splits the events
of one revision across responses), and on any error a reconnect to the next endpoint that
resumes after the last revision handled. When etcd has compacted that revision away,
``on_compacted`` is called instead (the owner reloads) and returns the revision to go on after.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import requests

LOG = logging.getLogger(__name__)

RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)  # reconnect backoff


def b64(text: str | bytes) -> str:
    """etcd's gateway spells keys and values in base64."""
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def unb64(text: str) -> bytes:
    """A key or value from etcd's gateway."""
    return base64.b64decode(text)


def range_end(prefix: str) -> str:
    """The end of etcd's range for every key starting with ``prefix`` (base64)."""
    raw = prefix.encode()
    return b64(raw[:-1] + bytes([raw[-1] + 1]))


class PrefixWatch:
    """Calls ``handle(events)`` for each response's events under ``prefix``, from revision ``after`` + 1 on."""

    def __init__(self, clients: list[Any], prefix: str, handle: Callable[[list[dict[str, Any]]], None], after: int,
                 on_compacted: Callable[[], int], timeout: float, name: str = "etcd-watch") -> None:
        self.clients, self.prefix, self.handle = clients, prefix, handle
        self.on_compacted, self.timeout = on_compacted, timeout
        self.state = {"connected": False, "revision": after, "reconnects": 0, "resets": 0}
        self.current = 0
        self._stop = threading.Event()
        self._response: requests.Response | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._once()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect, resume after the last revision
                if self._stop.is_set():
                    return
                LOG.warning("etcd watch on %s: %s: reconnecting", self.prefix, exc)
                failures += 1
                self.current = (self.current + 1) % len(self.clients)
            self.state["connected"] = False
            self.state["reconnects"] += 1
            self._stop.wait(RETRY_S[min(failures, len(RETRY_S) - 1)])

    def _once(self) -> None:
        client = self.clients[self.current]
        start = self.state["revision"] + 1
        body = {"create_request": {"key": b64(self.prefix), "range_end": range_end(self.prefix),
                                   "start_revision": start, "progress_notify": True}}
        # No read timeout: a quiet watch is fine (progress notifications arrive every 10 min).
        response = client.session.post(client.get_url("/watch"), json=body, stream=True, timeout=(self.timeout, None))
        self._response = response
        for line in response.iter_lines(chunk_size=None):
            if self._stop.is_set():
                return
            if not line.strip():
                continue
            result = json.loads(line).get("result", {})
            if int(result.get("compact_revision", 0) or 0) >= start:
                self.state["resets"] += 1
                self.state["revision"] = self.on_compacted()
                return
            if result.get("canceled"):
                raise RuntimeError(f"watch canceled: {result.get('cancel_reason', '')}")
            self.state["connected"] = True
            events = result.get("events", [])
            if events:
                self.handle(events)
                self.state["revision"] = int(events[-1]["kv"]["mod_revision"])
        raise RuntimeError("watch stream ended")

    def stop(self) -> None:
        """End the watch (its thread wakes from its read) and wait a little for it."""
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.raw._fp.fp.raw._sock.shutdown(2)  # wake the thread out of its blocking read
            except Exception:  # noqa: BLE001, S110 - already closed
                pass
            response.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
