"""The topology page's endpoints, on the API's port.

- ``/ui`` (and ``/ui/ui.js``, ``/ui/ui.css``): the page, static files shipped in the package
  (no build chain, nothing fetched from anywhere else: it works offline). They hold no data
  and are served to anyone, as the version document at ``/`` is, so that a browser (which
  cannot send a header when it opens a URL) can load the page; with ``--auth keystone`` the
  page then asks for a token and sends it, as ``X-Auth-Token``, with every request for data.
- ``GET /topology``: the topology as networkx node-link JSON (:class:`apps.ui.topology.TopologyView`),
  what the page polls every second;
- ``GET /topology/ports/<id>/flows``: the flows of a port's hypervisor that name it;
- ``POST /trace``: a packet from a port through the flows (:mod:`apps.ui.trace`).

The three data endpoints are mounted beside ``/sync`` and ``/metrics``
(:class:`apps.northbound.api.NorthboundApp`'s ``extra``): behind keystonemiddleware with
``--auth keystone``, and for admins only (``get_controller_status``): they show every project.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from apps.ui import trace
from apps.ui.topology import TopologyView, port_flows
from flows.flow import Flow

LOG = logging.getLogger(__name__)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]
STATIC_DIR = Path(__file__).parent / "static"
# URL under /ui/ -> (file, content type): the only files served (no path is ever joined from a request).
STATIC = {"": ("index.html", "text/html; charset=utf-8"), "index.html": ("index.html", "text/html; charset=utf-8"),
          "ui.js": ("ui.js", "text/javascript; charset=utf-8"), "ui.css": ("ui.css", "text/css; charset=utf-8")}
# Only our own files, no inline script, no frame: what a page holding an admin token must keep to.
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
]
MAX_TRACE_BODY = 64 * 1024

BridgeStatus = Callable[[], dict[str, dict[str, Any]]]
FlowsOf = Callable[[str], Iterable[Flow]]


def static_in_front(app: WsgiApp) -> WsgiApp:
    """``app`` with the page's static files in front of it (outside any authentication: they hold no data)."""
    def wsgi(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path != "/ui" and not path.startswith("/ui/"):
            return app(environ, start_response)
        if path == "/ui":  # relative URLs in the page resolve under /ui/
            start_response("301 Moved Permanently", [("Location", "/ui/"), ("Content-Length", "0")])
            return [b""]
        entry = STATIC.get(path[len("/ui/"):])
        if entry is None:
            return _json(start_response, 404, _error("HTTPNotFound", "The resource could not be found."))
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _json(start_response, 405, _error("HTTPMethodNotAllowed", "Only GET."), [("Allow", "GET, HEAD")])
        body = (STATIC_DIR / entry[0]).read_bytes()
        start_response("200 OK", [("Content-Type", entry[1]), ("Content-Length", str(len(body))), *SECURITY_HEADERS])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    return wsgi


def endpoints(topology: Any, bridges: BridgeStatus, flows_of: FlowsOf) -> dict[str, WsgiApp]:
    """The data endpoints, by path prefix (for ``NorthboundApp(extra=...)``).

    ``bridges()``: hypervisor -> its bridge's state; ``flows_of(hv)``: the flows the controller
    keeps for ``hv`` (called under the topology's lock).
    """
    view = TopologyView()

    def topology_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        return _guarded(start_response, lambda: _topology(environ, topology, view, bridges, flows_of))

    def trace_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        return _guarded(start_response, lambda: _trace(environ, topology, flows_of))

    return {"/topology": topology_app, "/trace": trace_app}


def _guarded(start_response: Callable, handler: Callable[[], tuple[int, Any, list]]) -> Iterable[bytes]:
    """Run a handler; a refused request is its JSON error, anything unexpected a 500 (logged, no traceback out)."""
    try:
        status, body, headers = handler()
    except trace.TraceError as exc:
        status, body, headers = exc.status, _error(_KINDS.get(exc.status, "HTTPBadRequest"), str(exc)), []
    except Exception:
        LOG.exception("topology page request failed")
        status, body, headers = 500, _error("HTTPInternalServerError", "internal server error"), []
    return _json(start_response, status, body, headers)


_KINDS = {400: "HTTPBadRequest", 404: "PortNotFound", 405: "HTTPMethodNotAllowed", 409: "PortNotPlugged",
          413: "HTTPRequestEntityTooLarge"}


def _topology(environ: dict, topology: Any, view: TopologyView, bridges: BridgeStatus,
              flows_of: FlowsOf) -> tuple[int, Any, list]:
    if environ.get("REQUEST_METHOD") != "GET":
        return 405, _error("HTTPMethodNotAllowed", "Only GET."), [("Allow", "GET")]
    parts = environ.get("PATH_INFO", "").strip("/").split("/")  # already unquoted by the server
    if parts == ["topology"]:
        return 200, view.data(topology, bridges()), []
    if len(parts) == 4 and parts[1] == "ports" and parts[3] == "flows":
        with topology.lock:
            port = topology.graph.port(parts[2])
            if port is None:
                raise trace.TraceError(404, f"Port {parts[2]} could not be found.")
            host = port.binding_host
            flows = list(flows_of(host)) if host and topology.graph.hypervisor(host) else []
            shown = port_flows(topology.graph, port, flows)
        return 200, {"port_id": port.id, "hypervisor": host, "flows": shown}, []
    return 404, _error("HTTPNotFound", "The resource could not be found."), []


def _trace(environ: dict, topology: Any, flows_of: FlowsOf) -> tuple[int, Any, list]:
    if environ.get("REQUEST_METHOD") != "POST":
        return 405, _error("HTTPMethodNotAllowed", "Only POST."), [("Allow", "POST")]
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if not 0 <= length <= MAX_TRACE_BODY:
        raise trace.TraceError(413 if length > 0 else 400, f"a trace request is JSON of at most {MAX_TRACE_BODY} bytes")
    req = trace.parse_request(environ["wsgi.input"].read(length))
    with topology.lock:
        prepared = trace.prepare(topology.graph, req, flows_of)
    return 200, trace.run(prepared), []


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"NeutronError": {"type": kind, "message": message, "detail": ""}}


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Request Entity Too Large", 500: "Internal Server Error"}


def _json(start_response: Callable, status: int, body: Any, headers: list | None = None) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} {_REASONS.get(status, 'Error')}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(headers or [])])
    return [data]
