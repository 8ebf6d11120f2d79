"""The SQLite store's fault checks at scale: what the start-up integrity check costs on a big store.

A 20,000-port store (the synthetic cloud's records, each port with the attributes an API
create gives it) is written in one transaction, then timed: ``PRAGMA quick_check`` (what
every start runs; cold, its pages evicted from the page cache first, and warm),
``integrity_check`` (``tenantflow db check --full``), the whole opening
of the store (check, lock, schema) plus the load of every record the controller does
anyway, and an online backup (``tenantflow db backup``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import replace

from apps import db
from topology import store_check
from topology.store_sqlite import SqliteStore
from topology.synthetic import synthetic_cloud


def build_store(path: str, n_ports: int) -> None:
    """An SQLite store at ``path`` holding a synthetic cloud of ``n_ports`` ports (20 per hypervisor)."""
    n_hvs = max(1, n_ports // 20)
    graph = synthetic_cloud(n_hvs=n_hvs, ports_per_hv=20, n_networks=max(1, n_hvs // 2), seed=3)
    stamp = "2026-01-01T00:00:00Z"
    ops: list = list(graph.records("hv")) + list(graph.records("network")) + list(graph.records("subnet"))
    ops += [replace(p, attrs={**p.attrs, "name": f"vm-{p.key}", "description": "", "created_at": stamp,
                              "updated_at": stamp, "binding:vnic_type": "normal", "security_groups": [],
                              "revision_number": 1, "tags": []}) for p in graph.records("port")]
    store = SqliteStore(path)
    try:
        store.commit(ops, counters={"port_key": n_ports + 1})
    finally:
        store.close()


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _pragma(path: str, name: str) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute(f"PRAGMA {name}").fetchall() == [("ok",)]
    finally:
        conn.close()


def _evicted(path: str) -> str:
    """``path`` with its pages dropped from the page cache (this file's only): the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return path


def _open_and_load(path: str) -> None:
    store = SqliteStore(path)
    try:
        store.load()
    finally:
        store.close()


def run(quick: bool = False) -> dict:
    """Build the store, then time each check (best of 3: the machine is shared)."""
    n_ports = 2000 if quick else 20000
    tmp = tempfile.mkdtemp(prefix="tenantflow-bench-store-")
    try:
        path = os.path.join(tmp, "store.sqlite")
        build_s = _timed(lambda: build_store(path, n_ports))
        figures = {"ports": n_ports, "file_mb": os.path.getsize(path) / 2**20, "build_s": build_s}
        # Cold first: the file's pages evicted, as at a start after a reboot (then the warm runs).
        started = time.perf_counter()
        _pragma(_evicted(path), "quick_check")
        figures["quick_check_cold_s"] = time.perf_counter() - started
        runs = {
            "quick_check_s": lambda: _pragma(path, "quick_check"),
            "integrity_check_s": lambda: _pragma(path, "integrity_check"),
            "start_check_s": lambda: store_check.check(path),
            "open_and_load_s": lambda: _open_and_load(path),
            "backup_s": lambda: db.backup(path, os.path.join(tmp, "backup.sqlite")),
        }
        for name, fn in runs.items():
            figures[name] = min(_timed(fn) for _ in range(3))
        return figures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
