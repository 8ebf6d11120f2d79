"""A real northbound server on 127.0.0.1 over a real SQLite file, and a small client for it.

Shared by the ``test_api*.py`` files (this module holds no tests itself).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import requests

from apps.northbound import make_app, serve
from topology.state import Topology

COLLECTIONS = ("networks", "subnets", "ports", "hypervisors")


class Api:
    """A Topology + API server on a free port; records every subscriber notification."""

    def __init__(self, db_path: Path, extra: dict | None = None, **topology_options: Any) -> None:
        self.db_path = str(db_path)
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
        """Everything the API shows, and every row of the database."""
        shown = {c: self.list(c) for c in COLLECTIONS}
        with sqlite3.connect(self.db_path) as conn:
            rows = list(conn.iterdump())
        return shown, rows

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
