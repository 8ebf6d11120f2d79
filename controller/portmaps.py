"""The bridges' port maps, remembered across controller restarts (a file beside the SQLite store).

A hypervisor's flows name its bridge's OpenFlow port numbers (tunnel ports, taps), which
only its switch knows. Without them a restarted controller compiles every hypervisor
without its ports, then again, whole and under the topology's lock, when its switch
connects and reports them: at 1,000 bridges reconnecting together that was 1,000 such
rebuilds of 4-30 ms of CPU each, and API writes waited behind them for up to 0.3 s.
Remembered, the maps go into the graph before the engine's first build
(:meth:`topology.state.Topology.remember_ofports`); a switch that comes back with the
same ports changes nothing, and one whose ports changed meanwhile changes what any port
change does. The file is a hint, never the truth: flows are pushed to a switch only after
it reported its own map, and a missing or damaged file only costs those rebuilds.

Written by a thread at most every FLUSH_INTERVAL seconds while maps change (a VM's tap
plugged or unplugged, a bridge connecting), and at a clean stop, atomically (a temporary
file renamed over it). Each map is encoded when it changes, so a write joins 1,000 bridges'
strings (it was 8.6 ms of CPU per write at 1,000 bridges encoding them all each time). A
SIGKILL loses at most the last FLUSH_INTERVAL's changes: those bridges are recompiled when
they connect. Not used with the etcd store: there each instance starts without them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

LOG = logging.getLogger(__name__)

FLUSH_INTERVAL = 5.0  # seconds: changes within it go in one write
SUFFIX = ".portmaps.json"


def path_for(store_path: str) -> str:
    """Where the port maps of the SQLite store at ``store_path`` are kept."""
    return store_path + SUFFIX


def read(path: str) -> dict[str, dict[str, int]]:
    """The maps in ``path`` (hypervisor -> port name -> OpenFlow port); empty if missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        LOG.warning("port maps %s not read (%s): every bridge's flows are rebuilt when it connects", path, exc)
        return {}
    return _valid(data) if isinstance(data, dict) else {}


def _valid(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The well-formed entries of a decoded file (anything else is left out)."""
    out = {}
    for name, ofports in data.items():
        if isinstance(ofports, dict) and all(isinstance(k, str) and type(v) is int for k, v in ofports.items()):
            out[str(name)] = ofports
    return out


class PortMapFile:
    """Keeps ``path`` equal to the port maps in a topology's graph (see the module's doc)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._topology = None
        self._maps: dict[str, dict[str, int]] = {}  # hypervisor -> its map (the graph's object: replaced, not edited)
        self._encoded: dict[str, str] = {}  # hypervisor -> its map in JSON
        self._dirty = threading.Event()
        self._writing = threading.Lock()  # the thread's writes and close()'s
        self._closed = False

    def attach(self, topology) -> PortMapFile:
        """Give ``topology`` the remembered maps, then follow its changes and keep writing them."""
        self._topology = topology
        remembered = read(self.path)
        topology.remember_ofports(remembered)
        with topology.lock:
            graph = topology.graph
            self._changed({h.name for h in graph.hypervisors()})
            self._dirty.clear()  # (what it just read is what the file holds, or less)
            topology.subscribe_live(self._changed)
        threading.Thread(target=self._flush_forever, name="portmaps", daemon=True).start()
        LOG.info("port maps of %d bridges remembered from %s", len(remembered), self.path)
        return self

    def _changed(self, hv_names: set[str]) -> None:
        """A live subscriber (under the topology's lock): note the maps, let the thread write them."""
        graph = self._topology.graph
        for name in hv_names:
            ofports = graph.ofports(name)
            if self._maps.get(name) is not ofports:
                self._maps[name] = ofports
                self._encoded[name] = json.dumps(ofports, separators=(",", ":"), sort_keys=True)
                self._dirty.set()

    def _flush_forever(self) -> None:
        while not self._closed:
            self._dirty.wait()
            if self._closed:
                return
            time.sleep(FLUSH_INTERVAL)  # let a burst of changes go in one write
            self.flush()

    def flush(self) -> None:
        """Write the maps now (those of hypervisors still registered)."""
        with self._writing:
            self._dirty.clear()
            graph = self._topology.graph
            entries = [f"{json.dumps(name)}:{text}" for name, text in sorted(self._encoded.items())
                       if text != "{}" and graph.hypervisor(name) is not None]
            self._write("{" + ",".join(entries) + "}")

    def _write(self, text: str) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError as exc:  # a hint only: the next restart rebuilds what it cannot remember
            LOG.warning("port maps not written to %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def close(self) -> None:
        """Write what changed since the last write and stop."""
        self._closed = True
        if self._dirty.is_set():
            self.flush()
        self._dirty.set()  # wake the thread to end
