"""``/check`` is the controller's status, as ``/sync``: with ``--auth keystone`` only an admin's token reaches it.

The real northbound WSGI app (real SQLite topology) with the ``/check`` mount the controller
gives it; the identity is what keystonemiddleware would have vouched for (its headers). The
switch side is tested on a real lab in ``tests/test_opscheck.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import webob

from apps.northbound.server import make_app
from controller import audit
from topology.state import Topology


@pytest.fixture
def app(tmp_path: Path) -> Iterator:
    topology = Topology(str(tmp_path / "t.sqlite"))
    try:
        yield make_app(topology, extra={"/check": audit.wsgi_app(None)}, auth="keystone")
    finally:
        topology.close()


def ask(app, path: str, roles: str) -> webob.Response:
    req = webob.Request.blank(path, headers={"X-Identity-Status": "Confirmed", "X-Roles": roles,
                                             "X-Project-Id": "p1", "X-User-Id": "u1"})
    return req.get_response(app)


@pytest.mark.parametrize("roles", ["member,reader", "reader"])
def test_check_refused_to_a_project_member_or_reader(app, roles: str) -> None:
    for path in ("/check", "/check/hv1"):
        resp = ask(app, path, roles)
        assert resp.status_int == 403, resp.text
        assert json.loads(resp.body)["NeutronError"]["type"] == "PolicyNotAuthorized"


def test_check_reaches_the_controller_for_an_admin(app) -> None:
    resp = ask(app, "/check/hv1", "admin,member,reader")
    # past the policy: this app has no OpenFlow side to ask
    assert resp.status_int == 503 and json.loads(resp.body) == {"error": "no OpenFlow application running"}
