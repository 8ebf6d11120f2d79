"""A real northbound server on 127.0.0.1 over a real store, and a small client for it.

Shared by the ``test_api*.py`` files (this module holds no tests itself). The store is a
real SQLite file, or, with ``TENANTFLOW_TEST_STORE=etcd`` (``make test`` runs the API suites
both ways), a prefix of its own on a real etcd (:func:`tests.etcd_fixtures.shared_etcd`).
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import requests

from apps.northbound import make_app, serve
from topology.records import encode
from topology.state import Topology
from topology.store import open_store

COLLECTIONS = ("networks", "subnets", "ports", "hypervisors")


class Api:
    """A Topology + API server on a free port; records every subscriber notification."""

    def __init__(self, db_path: Path, extra: dict | None = None, store: str | None = None,
                 **topology_options: Any) -> None:
        """``store``: "sqlite" or "etcd" (default: ``TENANTFLOW_TEST_STORE``, else sqlite)."""
        self.db_path = str(db_path)
        if (store or os.environ.get("TENANTFLOW_TEST_STORE")) == "etcd":
            from tests.etcd_fixtures import shared_etcd
            self.db_path = f"{shared_etcd().url}/api-{uuid.uuid4().hex[:12]}"
        self.extra = extra
        self.options = topology_options
        self.session = requests.Session()
        self._start()

    def _start(self) -> None:
        self.topology = Topology(self.db_path, **self.options)
        self.events: list[set[str]] = []
        self.topology.subscribe(self.events.append)
        self.server = serve(make_app(self.topology, extra=self.extra), "127.0.0.1", 0)
        self.url = self.server.url

    def close(self) -> None:
        """Stop the server and close the store."""
        self.server.shutdown()
        self.topology.close()

    def restart(self) -> None:
        """A fresh Topology and server on the same database file (a controller restart)."""
        self.close()
        self._start()

    # -- HTTP --------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> requests.Response:
        """One HTTP request; ``body`` is sent as JSON, ``data`` raw."""
        return self.session.request(method, self.url + path, json=body, data=data, headers=headers, timeout=10)

    def create(self, member: str, headers: dict[str, str] | None = None, **attrs: Any) -> dict[str, Any]:
        """POST a resource and return it (asserting 201)."""
        resp = self.request("POST", f"/v2.0/{member}s", {member: attrs}, headers=headers)
        assert resp.status_code == 201, resp.text
        return resp.json()[member]

    def show(self, member: str, ident: str) -> dict[str, Any]:
        """GET one resource (asserting 200)."""
        resp = self.request("GET", f"/v2.0/{member}s/{ident}")
        assert resp.status_code == 200, resp.text
        return resp.json()[member]

    def update(self, member: str, ident: str, **attrs: Any) -> dict[str, Any]:
        """PUT a resource's attributes (asserting 200)."""
        resp = self.request("PUT", f"/v2.0/{member}s/{ident}", {member: attrs})
        assert resp.status_code == 200, resp.text
        return resp.json()[member]

    def list(self, collection: str, query: str = "") -> list[dict[str, Any]]:
        """GET a collection, optionally filtered (asserting 200)."""
        resp = self.request("GET", f"/v2.0/{collection}" + (f"?{query}" if query else ""))
        assert resp.status_code == 200, resp.text
        return resp.json()[collection]

    def snapshot(self) -> tuple[dict[str, list], list[str]]:
        """Everything the API shows, and everything stored (every row of an SQLite file)."""
        shown = {c: self.list(c) for c in COLLECTIONS}
        if not self.db_path.startswith("etcd://"):
            with sqlite3.connect(self.db_path) as conn:
                return shown, list(conn.iterdump())
        store = open_store(self.db_path)
        try:
            snap = store.load()
        finally:
            store.close()
        stored = [f"{k}:{encode(r)}" for k, records in snap.records.items() for r in records]
        return shown, [*stored, *(f"{k}={v}" for k, v in sorted(snap.counters.items()))]

    def expect_error(self, status: int, kind: str, method: str, path: str, body: Any = None, *,
                     data: bytes | None = None) -> dict[str, Any]:
        """Send a request that must fail with ``status``/``kind`` and change nothing."""
        before = self.snapshot()
        events = len(self.events)
        resp = self.request(method, path, body, data=data)
        assert resp.status_code == status, resp.text
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["X-Openstack-Request-Id"].startswith("req-")
        error = resp.json()["NeutronError"]
        assert error["type"] == kind, error
        assert set(error) == {"type", "message", "detail"} and "Traceback" not in resp.text
        assert self.snapshot() == before
        assert len(self.events) == events, "a failed write notified subscribers"
        return error
