"""The topology page's endpoints over real HTTP on a real controller (no switch connected).

``/ui``: the page's static files (self-contained: nothing named outside the controller);
``GET /topology``: networkx node-link data, sanitised (an attribute the page has no use for
never leaves the controller); ``GET /topology/ports/ID/flows``; ``POST /trace``'s refusals,
each a JSON error that changes nothing. The page itself, a trace that runs, and bridges
connected: tests/test_ui.py.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest

from apps.lab.controller import ControllerProcess
from apps.ui.wsgi import STATIC_DIR
from tests.e2e_fixtures import create_network, create_port, running_controller

SECRET = "s3cr3t-profile-value"


@pytest.fixture(scope="module")
def ctrl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    with running_controller(tmp_path_factory.mktemp("ui-api")) as c:
        c.create("hypervisor", name="hv1", datapath_id="00000000000000a1", tunnel_ip="192.0.2.1")
        net, subnet = create_network(c, "net", "10.0.0.0/24", project_id="p1")
        router = c.create("router", name="r", project_id="p1")
        c.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": subnet["id"]})
        create_port(c, net, "hv1", name="vm1", **{"binding:profile": {"token": SECRET}},
                    extra_dhcp_opts=[{"opt_name": "bootfile-name", "opt_value": SECRET}])
        yield c


def http(ctrl: ControllerProcess, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request: (status, headers, body), errors included."""
    req = urllib.request.Request(ctrl.api_url + path, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answer a redirect as it is."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_page_files_are_served_and_self_contained(ctrl: ControllerProcess) -> None:
    status, headers, _ = http(ctrl, "GET", "/ui")
    assert status == 301 and headers["Location"] == "/ui/"
    status, headers, body = http(ctrl, "GET", "/ui/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="ui.js"' in body and "script-src 'self'" in headers["Content-Security-Policy"]
    for name, kind in (("ui.js", "text/javascript"), ("ui.css", "text/css")):
        status, headers, body = http(ctrl, "GET", f"/ui/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)
        assert body == (STATIC_DIR / name).read_bytes()
    for path in ("/ui/nope.js", "/ui/../setup.py", "/ui/static/ui.js"):
        status, _, body = http(ctrl, "GET", path)
        assert status == 404 and json.loads(body)["NeutronError"]["type"] == "HTTPNotFound"
    assert http(ctrl, "POST", "/ui/", b"{}")[0] == 405
    # offline: no file names anything outside the controller (the SVG namespace is a name, not a fetch)
    for path in Path(STATIC_DIR).iterdir():
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text), path.name


def test_topology_is_sanitised_node_link_data(ctrl: ControllerProcess) -> None:
    status, _, body = http(ctrl, "GET", "/topology")
    assert status == 200 and SECRET.encode() not in body
    data = json.loads(body)
    graph = nx.node_link_graph(data, edges="links")
    kinds = {n: a["kind"] for n, a in graph.nodes(data=True)}
    assert all(node.startswith(kind + ":") for node, kind in kinds.items())
    (port,) = [n for n, a in graph.nodes(data=True) if a["kind"] == "port" and a.get("name") == "vm1"]
    attrs = graph.nodes[port]
    assert attrs["binding_host"] == "hv1" and attrs["ofport"] is None  # no switch: not plugged
    assert graph.has_edge(port, "hypervisor:hv1") and graph.has_edge(port, f"network:{attrs['network_id']}")
    hv = graph.nodes["hypervisor:hv1"]
    assert hv["state"] == "down" and hv["connected"] is False and hv["last_sync"] is None
    assert hv["flow_count"] == sum(hv["flows"].values()) > 0  # compiled for it, connected or not
    (router,) = [n for n, a in graph.nodes(data=True) if a["kind"] == "router"]
    assert any(kinds[nb] == "port" for nb in graph.neighbors(router))  # its interface
    assert data["graph"]["revision"] > 0


def test_port_flows(ctrl: ControllerProcess) -> None:
    port = ctrl.request("GET", "/v2.0/ports?name=vm1")["ports"][0]
    status, _, body = http(ctrl, "GET", f"/topology/ports/{port['id']}/flows")
    answer = json.loads(body)
    assert status == 200 and answer["hypervisor"] == "hv1" and answer["flows"]
    mac = port["mac_address"]
    # the ARP answer for it among them, and nothing of another port (the router interface's MAC)
    assert any(f["stage"] == "ls_in_arp_rsp" and mac in f["text"] for f in answer["flows"])
    router_mac = ctrl.request("GET", "/v2.0/ports?device_owner=network:router_interface")["ports"][0]["mac_address"]
    assert not [f for f in answer["flows"] if router_mac in f["text"] and mac not in f["text"]]
    status, _, body = http(ctrl, "GET", "/topology/ports/no-such-port/flows")
    assert status == 404 and json.loads(body)["NeutronError"]["type"] == "PortNotFound"
    assert http(ctrl, "POST", "/topology", b"{}")[0] == 405


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"not json", 400, "not JSON"),
    (b"[" * 5000 + b"]" * 5000, 400, "Malformed request body"),  # apps.northbound.limits' rules, not a 500
    (b'{"port_id": "PORT", "packet": {"ip_ttl": NaN}}', 400, "NaN is not a JSON number"),
    (b'{"packet": "ipv4_dst=10.0.0.3"}', 400, "port_id"),
    (b'{"port_id": "PORT", "packet": "bogus=1"}', 400, "unknown packet field 'bogus'"),
    (b'{"port_id": "PORT", "packet": "ipv4_dst"}', 400, "expected field=value"),
    (b'{"port_id": "PORT", "packet": "ipv4_dst=10.0.0.999"}', 400, "ipv4_dst: not a valid value"),
    (b'{"port_id": "PORT", "follow": "yes"}', 400, "follow"),
    (b'{"port_id": "nope"}', 404, "could not be found"),
    (b'{"port_id": "PORT"}', 409, "not plugged"),
])
def test_trace_refusals(ctrl: ControllerProcess, body: bytes, status: int, says: str) -> None:
    port = ctrl.request("GET", "/v2.0/ports?name=vm1")["ports"][0]
    before = ctrl.request("GET", "/sync")["revision"]
    got, headers, answer = http(ctrl, "POST", "/trace", body.replace(b"PORT", port["id"].encode()),
                                {"Content-Type": "application/json"})
    assert got == status and headers["Content-Type"] == "application/json"
    assert says in json.loads(answer)["NeutronError"]["message"]
    assert ctrl.request("GET", "/sync")["revision"] == before


def test_trace_method_and_size(ctrl: ControllerProcess) -> None:
    assert http(ctrl, "GET", "/trace")[0] == 405
    assert http(ctrl, "POST", "/trace", b"{" + b" " * 70000 + b"}")[0] == 413
