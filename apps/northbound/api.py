"""The Neutron v2.0-shaped REST API as a plain WSGI app (WebOb + Routes).

Resources: ``networks``, ``subnets``, ``ports`` (Neutron's) and ``hypervisors``
(our extension). Each request is parsed and type-checked here, handed to one
:class:`topology.state.Topology` write method (one transaction), and the result
rendered by :mod:`apps.northbound.views`. Errors are Neutron's JSON
``NeutronError`` bodies; nothing unexpected ever leaks a traceback.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import routes
import webob

from apps.northbound import attributes, attributes_l3, collections, extensions, limits, openapi, views, views_l3
from apps.northbound.auth import KEYSTONE, Caller, caller_of
from apps.northbound.guard import Forbidden, Guard, not_found
from apps.northbound.policy import Policy
from topology.model import Hypervisor, Network, Port, Subnet
from topology.model_l3 import FloatingIP, Router, SecurityGroup, SecurityGroupRule
from topology.state import Topology
from topology.store import BadRequest, Conflict, NotFound, StoreUnavailable, TopologyError, Unavailable

LOG = logging.getLogger(__name__)

STORE_RETRY_AFTER = "5"  # s: a write the store could not take (full/read-only disk, etcd without quorum)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


@dataclass(frozen=True)
class Resource:
    """How one REST collection maps onto the topology."""

    member: str  # "network"
    collection: str  # "networks"
    kind: str  # graph node kind
    label: str  # for "<Label> <id> could not be found."
    attributes: dict[str, attributes.Attr]
    render: Callable
    sample: Any  # a minimal record: rendering it tells which keys a filter may name
    create: str  # Topology method names
    update: str
    delete: str
    path: str = ""  # the URL's collection name when it differs from the JSON one ("security-groups")

    @property
    def url(self) -> str:
        """The collection's name in URLs."""
        return self.path or self.collection


RESOURCES = {
    r.url: r for r in (
        Resource("network", "networks", "network", "Network", attributes.NETWORK, views.network,
                 Network("", "", 0, "vxlan", None), "create_network", "update_network", "delete_network"),
        Resource("subnet", "subnets", "subnet", "Subnet", attributes.SUBNET, views.subnet,
                 Subnet("", "", "", "", 4, None), "create_subnet", "update_subnet", "delete_subnet"),
        Resource("port", "ports", "port", "Port", attributes.PORT, views.port,
                 Port("", "", "", 0, ""), "create_port", "update_port", "delete_port"),
        Resource("hypervisor", "hypervisors", "hv", "Hypervisor", attributes.HYPERVISOR, views.hypervisor,
                 Hypervisor("", 0, ""), "register_hypervisor", "update_hypervisor", "delete_hypervisor"),
        Resource("router", "routers", "router", "Router", attributes_l3.ROUTER, views_l3.router,
                 Router("", "", 0), "create_router", "update_router", "delete_router"),
        Resource("floatingip", "floatingips", "fip", "FloatingIP", attributes_l3.FLOATINGIP, views_l3.floatingip,
                 FloatingIP("", "", "", "", ""), "create_floatingip", "update_floatingip", "delete_floatingip"),
        Resource("security_group", "security_groups", "sg", "SecurityGroup", attributes_l3.SECURITY_GROUP,
                 views_l3.security_group, SecurityGroup("", ""), "create_security_group", "update_security_group",
                 "delete_security_group", path="security-groups"),
        Resource("security_group_rule", "security_group_rules", "sg_rule", "SecurityGroupRule",
                 attributes_l3.SECURITY_GROUP_RULE, views_l3.security_group_rule,
                 SecurityGroupRule("", "", "", "ingress", protocol="tcp"), "create_security_group_rule",
                 "update_security_group_rule", "delete_security_group_rule", path="security-group-rules"),
    )
}
ROUTER_ACTIONS = ("add_router_interface", "remove_router_interface")


# The topology's errors as HTTP statuses (the domain knows no HTTP); anything else is a 500.
STATUS_OF = ((BadRequest, 400), (Forbidden, 403), (NotFound, 404), (Conflict, 409), (Unavailable, 503))


def http_status(exc: TopologyError) -> int:
    """The HTTP status of a refused request."""
    if isinstance(exc, HttpError):
        return exc.status
    return next((status for cls, status in STATUS_OF if isinstance(exc, cls)), 500)


class HttpError(TopologyError):
    """An HTTP-level error that is not about topology state (404 path, 405, 413)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(kind, message)
        self.status = status
        self.headers = headers or {}


def json_response(status: int, body: Any = None) -> webob.Response:
    """A JSON response (no body for 204)."""
    resp = webob.Response(status=status, content_type="application/json", charset=None)
    if body is not None:
        resp.body = json.dumps(body).encode()
    return resp


def error_response(status: int, kind: str, message: str) -> webob.Response:
    """Neutron's error body."""
    return json_response(status, {"NeutronError": {"type": kind, "message": message, "detail": ""}})


class NorthboundApp:
    """The WSGI application; one instance per :class:`Topology`."""

    def __init__(self, topology: Topology, extra: dict[str, WsgiApp] | None = None, auth: str = "",
                 policy_file: str = "") -> None:
        """``auth``: "keystone" enforces the policy table (``policy_file`` overriding it) on the identity
        keystonemiddleware vouched for; anything else trusts the X-Project-Id/X-Roles headers and allows all."""
        self.topology = topology
        self.auth = auth
        self.guard = Guard(topology.graph, Policy(policy_file) if auth == KEYSTONE else None, self._view)
        self.extra = dict(extra or {})
        self._openapi: dict | None = None
        self.mapper = routes.Mapper()
        collections = "|".join(RESOURCES)
        self.mapper.connect("/", action="versions")
        self.mapper.connect("/v2.0", action="resources")
        self.mapper.connect("/openapi.json", action="openapi")
        self.mapper.connect("/v2.0/extensions", action="extensions")
        self.mapper.connect("/v2.0/extensions/{alias}", action="extension")
        self.mapper.connect("/v2.0/{collection}", action="collection", requirements={"collection": collections})
        self.mapper.connect("/v2.0/{collection}/{id}", action="member", requirements={"collection": collections})
        self.mapper.connect("/v2.0/routers/{id}/{name}", action="router_action",
                            requirements={"name": "|".join(ROUTER_ACTIONS)})

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request_id = f"req-{uuid.uuid4()}"
        path = environ.get("PATH_INFO", "") or "/"
        mounted = self._mounted(path)
        if mounted is not None and not self.guard.allowed(caller_of(environ, self.auth), "get_controller_status", {}):
            mounted = error_response(403, "PolicyNotAuthorized", "rule:get_controller_status is disallowed by policy")
        if mounted is not None:
            def start(status: str, headers: list, exc_info: Any = None) -> Callable:
                return start_response(status, [*headers, ("X-Openstack-Request-Id", request_id)], exc_info)
            return mounted(environ, start)
        req = webob.Request(environ)
        try:
            resp = self._dispatch(req)
        except HttpError as exc:
            resp = error_response(exc.status, exc.kind, exc.message)
            resp.headers.update(exc.headers)
        except TopologyError as exc:
            resp = error_response(http_status(exc), exc.kind, exc.message)
            if isinstance(exc, StoreUnavailable):  # nothing was written: the same request may succeed later
                resp.headers["Retry-After"] = STORE_RETRY_AFTER
        except UnicodeError:  # a query string or path that is not UTF-8
            resp = error_response(400, "HTTPBadRequest", "The request is not valid UTF-8.")
        except Exception:
            LOG.exception("%s %s %s failed", request_id, req.method, req.path)
            resp = error_response(500, "HTTPInternalServerError",
                                  "Request Failed: internal server error while processing your request.")
        resp.headers["X-Openstack-Request-Id"] = request_id
        return resp(environ, start_response)

    def _mounted(self, path: str) -> WsgiApp | None:
        for prefix, app in self.extra.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return app
        return None

    # -- dispatch ------------------------------------------------------------------
    def _dispatch(self, req: webob.Request) -> webob.Response:
        path = req.path_info.rstrip("/") or "/"
        match = self.mapper.match(path)
        if match is None and path.endswith(".json"):  # old Neutron clients ask for /v2.0/networks.json
            match = self.mapper.match(path[: -len(".json")])
        if match is None:
            raise HttpError(404, "HTTPNotFound", "The resource could not be found.")
        action = match["action"]
        if action in ("versions", "resources"):
            self._allow(req, "GET")
            return json_response(200, self._versions(req) if action == "versions" else self._resources(req))
        if action in ("extensions", "extension", "openapi"):
            self._allow(req, "GET")
            return json_response(200, self._extensions(match.get("alias")) if action != "openapi" else
                                 self.openapi())
        if action == "router_action":
            self._allow(req, "PUT")
            return self._router_action(req, match["id"], match["name"])
        resource = RESOURCES[match["collection"]]
        if resource.kind == "hv":  # no project owns it: anyone the table refuses is forbidden, never "not found"
            self.guard.require(self._caller(req), "get", resource.member, {}, {})
        if action == "collection":
            self._allow(req, "GET", "POST")
            return self._list(req, resource) if req.method == "GET" else self._create(req, resource)
        self._allow(req, "GET", "PUT", "DELETE")
        handler = {"GET": self._show, "PUT": self._update, "DELETE": self._delete}[req.method]
        return handler(req, resource, match["id"])

    @staticmethod
    def _allow(req: webob.Request, *methods: str) -> None:
        if req.method not in methods:
            raise HttpError(405, "HTTPMethodNotAllowed", f"The method {req.method} is not allowed for this "
                            "resource.", {"Allow": ", ".join(methods)})

    def _caller(self, req: webob.Request) -> Caller:
        return caller_of(req.environ, self.auth)

    def _view(self, member: str, ident: str) -> dict[str, Any] | None:
        """A resource as an admin sees it (None if there is none): what the policy's targets are made of."""
        resource = next(r for r in RESOURCES.values() if r.member == member)
        with self.topology.lock:
            record = self.topology.graph.get(resource.kind, ident)
            return None if record is None else self._render(resource, record)

    def _versions(self, req: webob.Request) -> dict:
        href = req.host_url + "/v2.0/"
        return {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [{"href": href, "rel": "self"}]}]}

    def extensions(self) -> list[extensions.Extension]:
        """The Neutron extensions this API implements (computed from its resources and routes)."""
        def has_action(collection: str, action: str) -> bool:
            path = f"/v2.0/{collection}/{openapi.PROBE_ID}/{action}"
            return self.mapper.match(path, environ={"REQUEST_METHOD": "PUT"}) is not None
        return extensions.supported(RESOURCES, has_action)

    def _extensions(self, alias: str | None) -> dict:
        found = {e.alias: e for e in self.extensions()}
        if alias is None:
            return {"extensions": [e.view() for e in found.values()]}
        if alias not in found:
            raise HttpError(404, "HTTPNotFound", f"Extension with alias {alias} does not exist")
        return {"extension": found[alias].view()}

    def openapi(self) -> dict:
        """The OpenAPI document of this app (built once: routes and resources are fixed)."""
        if self._openapi is None:
            self._openapi = openapi.document(self, RESOURCES)
        return self._openapi

    def _resources(self, req: webob.Request) -> dict:
        return {"resources": [
            {"name": r.member, "collection": r.url,
             "links": [{"href": f"{req.host_url}/v2.0/{r.url}", "rel": "self"}]}
            for r in RESOURCES.values()
        ]}

    # -- request bodies -------------------------------------------------------------
    @staticmethod
    def _body(req: webob.Request, resource: Resource, create: bool) -> dict[str, Any]:
        doc = _json_body(req)
        if not isinstance(doc, dict) or resource.member not in doc:
            if isinstance(doc, dict) and resource.collection in doc:
                raise BadRequest("HTTPBadRequest", "Bulk operations are not supported")
            raise BadRequest("HTTPBadRequest", f"Unable to find '{resource.member}' in request body")
        if len(doc) != 1:
            extra = ", ".join(sorted(set(doc) - {resource.member}))
            raise BadRequest("HTTPBadRequest", f"Unrecognized attribute(s) '{extra}'")
        return attributes.convert_body(resource.attributes, doc[resource.member], create=create)

    # -- handlers --------------------------------------------------------------------------
    def _render(self, resource: Resource, record: Any) -> dict[str, Any]:
        return resource.render(self.topology.graph, record)

    def _get(self, resource: Resource, ident: str) -> Any:
        record = self.topology.graph.get(resource.kind, ident)
        if record is None:
            raise NotFound(f"{resource.label}NotFound", f"{resource.label} {ident} could not be found.")
        return record

    def _list(self, req: webob.Request, resource: Resource) -> webob.Response:
        query = collections.parse(req.GET, resource)  # first: a bad query is a 400 before any work

        caller = self._caller(req)

        def find(marker: str) -> dict[str, Any]:
            return self._shown(caller, resource, marker)

        if resource.kind == "sg":
            self._ensure_default_sg(caller)
        with self.topology.lock:
            items = [self._render(resource, r) for r in self.topology.graph.records(resource.kind)]
        items = [i for i in (self.guard.shown(caller, resource.member, item) for item in items) if i is not None]
        return json_response(200, collections.list_body(resource, query, req.path_url, req.GET, items, find))

    def _ensure_default_sg(self, caller: Caller) -> None:
        """Neutron makes the asking project's default group on its first look, once.

        With Keystone, only for a token scoped to a project (an unauthenticated request never gets
        here); with noauth, for the X-Project-Id claimed, else the default project, as before.
        """
        if self.auth == KEYSTONE and not (caller.authenticated and caller.project_id):
            return
        self.topology.ensure_default_security_group(caller.project_id)

    def _shown(self, caller: Caller, resource: Resource, ident: str) -> dict[str, Any]:
        """The resource as the caller may see it; 404 (as if missing) if it may not."""
        with self.topology.lock:
            item = self._render(resource, self._get(resource, ident))
        shown = self.guard.shown(caller, resource.member, item)
        if shown is None:
            raise not_found(resource.label, ident)
        return shown

    def _writable(self, caller: Caller, verb: str, resource: Resource, ident: str,
                  values: dict[str, Any]) -> None:
        """404 unless the caller sees the resource, 403 unless the table lets it ``verb`` it with ``values``."""
        with self.topology.lock:
            item = self._render(resource, self._get(resource, ident))
        self.guard.require_visible(caller, resource.member, item, resource.label)
        self.guard.require_references(caller, resource.member, values)
        self.guard.require(caller, verb, resource.member, self.guard.target(resource.member, item), values)

    def _show(self, req: webob.Request, resource: Resource, ident: str) -> webob.Response:
        fields = req.GET.getall("fields")
        limits.check_query({"fields": fields}, collections.PAGING_PARAMS)
        item = self._shown(self._caller(req), resource, ident)
        return json_response(200, {resource.member: collections.select(item, fields)})

    def _create(self, req: webob.Request, resource: Resource) -> webob.Response:
        values = self._body(req, resource, create=True)
        caller = self._caller(req)
        if "project_id" not in values and resource.kind != "hv" and caller.project_id:
            values["project_id"] = caller.project_id
        if resource.kind == "hv":
            values.pop("project_id", None)
        self.guard.require_references(caller, resource.member, values)
        self.guard.require(caller, "create", resource.member, self.guard.target(resource.member, values), values)
        # The write takes the topology's locks itself (its write lock, then the graph's): never under the graph's.
        record = getattr(self.topology, resource.create)(values)
        with self.topology.lock:
            item = self._render(resource, record)
        return json_response(201, {resource.member: self.guard.redacted(caller, resource.member, item)})

    def _update(self, req: webob.Request, resource: Resource, ident: str) -> webob.Response:
        values = self._body(req, resource, create=False)
        caller = self._caller(req)
        self._writable(caller, "update", resource, ident, values)
        record = getattr(self.topology, resource.update)(ident, values)
        with self.topology.lock:
            item = self._render(resource, record)
        return json_response(200, {resource.member: self.guard.redacted(caller, resource.member, item)})

    def _delete(self, req: webob.Request, resource: Resource, ident: str) -> webob.Response:
        caller = self._caller(req)
        self._writable(caller, "delete", resource, ident, {})
        if resource.kind == "sg":
            self.topology.delete_security_group(ident, admin=caller.is_admin)
        else:
            getattr(self.topology, resource.delete)(ident)
        return json_response(204)

    def _router_action(self, req: webob.Request, router_id: str, name: str) -> webob.Response:
        """``PUT /v2.0/routers/{id}/add_router_interface`` (or remove): an unwrapped {subnet_id | port_id} body."""
        body = _json_body(req)
        if not isinstance(body, dict):
            raise BadRequest("HTTPBadRequest", "Request body must be a JSON object.")
        caller = self._caller(req)
        self._writable(caller, name, RESOURCES["routers"], router_id, {})
        self.guard.require_references(caller, "router_interface", body)
        return json_response(200, getattr(self.topology, name)(router_id, body))


def _json_body(req: webob.Request) -> Any:
    """The request body parsed as JSON by :mod:`apps.northbound.limits`' rules: 413 over its MAX_BODY, else 400."""
    length = req.content_length
    too_large = HttpError(413, "HTTPRequestEntityTooLarge", f"Request body larger than {limits.MAX_BODY} bytes.")
    if length is not None and length > limits.MAX_BODY:
        raise too_large  # the server read the whole body already: answering without reading it resets nothing
    raw = req.body_file.read(limits.MAX_BODY + 1) if req.is_body_readable else b""
    if len(raw) > limits.MAX_BODY:
        raise too_large
    return limits.parse_json(raw)


def make_app(topology: Topology, *, extra: dict[str, WsgiApp] | None = None, auth: str = "",
             policy_file: str = "") -> WsgiApp:
    """The northbound WSGI app; ``extra`` mounts other WSGI apps at paths (e.g. ``/metrics``).

    ``auth="keystone"``: the app enforces the policy table on the identity keystonemiddleware (in
    front of it: :func:`apps.northbound.auth.wrap`) vouched for; else it trusts the headers.
    """
    return NorthboundApp(topology, extra, auth, policy_file)
