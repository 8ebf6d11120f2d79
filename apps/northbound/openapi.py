"""The OpenAPI 3.1 document of the northbound API, generated from its routes and attribute maps.

Nothing here is written per resource:

- paths come from the app's ``routes.Mapper``: a route variable whose
  requirement is an alternation of names (``{collection}`` ->
  ``networks|subnets|...``) is expanded into one path per name, any other
  variable stays a path parameter;
- the methods of each path are the ones the dispatcher itself allows: the
  document asks it (an in-process ``OPTIONS`` request, which it refuses with
  a 405 and an ``Allow`` header before doing anything);
- request and response schemas come from :mod:`apps.northbound.schema`
  (attribute maps + views), query parameters from what a collection may be
  filtered on.

``tests/test_openapi.py`` keeps it true against the live server.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

from apps.northbound import collections, schema

VERSION = "2.0"
NAME_ALTERNATION = re.compile(r"^[A-Za-z0-9_:.-]+(\|[A-Za-z0-9_:.-]+)*$")
VARIABLE = re.compile(r"\{([^}/]+)\}")
PROBE_ID = "openapi-probe"

ERROR = {"$ref": "#/components/schemas/NeutronError"}
LINK = {"type": "object", "properties": {"href": {"type": "string"}, "rel": {"type": "string"}},
        "required": ["href", "rel"], "additionalProperties": False}
EXTENSION = {"type": "object", "properties": {k: {"type": "string"} for k in ("name", "alias", "description",
                                                                              "updated")}
             | {"links": {"type": "array", "items": LINK}},
             "required": ["name", "alias", "description", "updated", "links"], "additionalProperties": False}
_IFACE = {"type": "object", "properties": {k: {"type": "string"} for k in ("id", "tenant_id", "project_id",
                                                                         "port_id", "network_id")}
          | {"subnet_id": {"type": ["string", "null"]}, "subnet_ids": {"type": "array", "items": {"type": "string"}}},
          "required": ["id", "tenant_id", "project_id", "port_id", "subnet_id", "subnet_ids", "network_id"],
          "additionalProperties": False}
_BY_SUBNET_OR_PORT = {"type": "object", "properties": {"subnet_id": {"type": "string"}, "port_id": {"type": "string"}}}
# Neutron's member actions (PUT /v2.0/<collection>/{id}/<action>, unwrapped bodies): request, answer.
ACTION_SHAPES: dict[str, tuple[dict, dict]] = {
    "add_router_interface": (_BY_SUBNET_OR_PORT, _IFACE),
    "remove_router_interface": (_BY_SUBNET_OR_PORT, _IFACE),
}
ERROR_TEXT = {400: "Invalid request (bad input, unknown attribute or filter)",
              403: "Refused by the policy (--auth keystone): a resource seen but not the caller's to change, or an "
                   "attribute it may not set",
              404: "No such resource, or not one the caller may see",
              409: "Conflict with the current state", 413: "Request body too large"}
# keystonemiddleware's own answer to a missing, invalid or expired token (--auth keystone): never reaches the app.
UNAUTHORIZED = {"description": "No valid X-Auth-Token (--auth keystone)", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "integer"}, "title": {"type": "string"}, "message": {"type": "string"}}}},
    "required": ["error"]}}}}


def _json(schema_: dict) -> dict:
    return {"application/json": {"schema": schema_}}


def _wrap(key: str, inner: dict, links: bool = False) -> dict:
    wrapped = {"type": "object", "properties": {key: inner}, "required": [key], "additionalProperties": False}
    if links:
        wrapped["properties"][f"{key}_links"] = {"type": "array", "items": LINK}
    return wrapped


def _responses(ok: int, body: dict | None, errors: tuple[int, ...], description: str) -> dict:
    request_id = {"X-Openstack-Request-Id": {"schema": {"type": "string", "pattern": "^req-"},
                                             "description": "The request's id, also in the controller's log"}}
    out: dict[str, Any] = {str(ok): {"description": description, "headers": request_id}}
    if body is not None:
        out[str(ok)]["content"] = _json(body)
    # What may be missing may also be refused by the policy (a write on a resource seen, an attribute)
    for code in sorted((*errors, 403) if 404 in errors else errors):
        out[str(code)] = {"description": ERROR_TEXT[code], "headers": request_id, "content": _json(ERROR)}
    return out


def _query_param(name: str, schema_: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema_, "description": description}


FIELDS = _query_param("fields", {"type": "array", "items": {"type": "string"}},
                      "Only these attributes of each resource (repeat the parameter for several)")
PROJECT_HEADER = {"name": "X-Project-Id", "in": "header", "required": False, "schema": {"type": "string"},
                  "description": "The project of a created resource when its body names none (no Keystone)"}


def _list_params(resource: Any) -> list[dict]:
    params = [
        FIELDS,
        _query_param("limit", {"type": "integer", "minimum": 0}, "Page size (0: everything)"),
        _query_param("marker", {"type": "string"}, "The id of the last resource of the previous page"),
        _query_param("page_reverse", {"type": "boolean"}, "Page backwards from the marker"),
        _query_param("sort_key", {"type": "array", "items": {"type": "string"}},
                     "Sort on these attributes (as many as sort_dir)"),
        _query_param("sort_dir", {"type": "array", "items": {"enum": ["asc", "desc"]}},
                     "asc or desc, one per sort_key"),
    ]
    for key, kind in schema.value_kinds(resource).items():
        if kind == "object" or key in collections.PAGING_PARAMS:
            continue
        what = {"boolean": "true or false", "integer": "an integer", "array": "a member of the list",
                "objects": "key=value of one element (e.g. ip_address=10.0.0.3)"}.get(kind, "the exact value")
        params.append(_query_param(key, {"type": "array", "items": {"type": "string"}},
                                   f"Filter: {what}; several values match any"))
    return params


def _operations(resources: dict[str, Any], action: str, values: dict[str, str],
                methods: list[str]) -> dict[str, dict]:
    """The OpenAPI operations of one concrete path."""
    resource = resources.get(values.get("collection", ""))
    ops: dict[str, dict] = {}
    for method in methods:
        op: dict[str, Any]
        if action == "versions":
            body = {"type": "object", "properties": {"versions": {"type": "array", "items": {
                "type": "object", "properties": {"id": {"type": "string"}, "status": {"type": "string"},
                                                 "links": {"type": "array", "items": LINK}},
                "required": ["id", "status", "links"]}}}, "required": ["versions"]}
            op = {"summary": "API versions", "responses": _responses(200, body, (400,), "The versions")}
        elif action == "resources":
            item = {"type": "object", "properties": {"name": {"type": "string"}, "collection": {"type": "string"},
                                                     "links": {"type": "array", "items": LINK}},
                    "required": ["name", "collection", "links"]}
            op = {"summary": "The v2.0 resources",
                  "responses": _responses(200, _wrap("resources", {"type": "array", "items": item}), (400,),
                                          "The collections served")}
        elif action == "extensions":
            op = {"summary": "The extensions implemented",
                  "responses": _responses(200, _wrap("extensions", {"type": "array", "items": EXTENSION}), (400,),
                                          "Every extension")}
        elif action == "extension":
            op = {"summary": "One extension", "responses": _responses(200, _wrap("extension", EXTENSION),
                                                                      (400, 404), "The extension")}
        elif action == "openapi":
            op = {"summary": "This document", "responses": _responses(200, {"type": "object"}, (400,),
                                                                      "The OpenAPI document")}
        elif action == "collection" and resource is not None:
            ref = {"$ref": f"#/components/schemas/{resource.member}"}
            if method == "GET":
                op = {"summary": f"List {resource.collection}", "parameters": _list_params(resource),
                      "responses": _responses(200, _wrap(resource.collection, {"type": "array", "items": ref},
                                                         links=True), (400, 404), f"The {resource.collection}")}
            else:
                op = {"summary": f"Create a {resource.member}", "parameters": [PROJECT_HEADER],
                      "requestBody": {"required": True, "content": _json(
                          {"$ref": f"#/components/schemas/{resource.member}_create"})},
                      "responses": _responses(201, _wrap(resource.member, ref), (400, 404, 409, 413),
                                              f"The new {resource.member}")}
        elif action == "member" and resource is not None:
            ref = {"$ref": f"#/components/schemas/{resource.member}"}
            if method == "GET":
                op = {"summary": f"Show a {resource.member}", "parameters": [FIELDS],
                      "responses": _responses(200, _wrap(resource.member, ref), (400, 404), f"The {resource.member}")}
            elif method == "PUT":
                op = {"summary": f"Update a {resource.member}",
                      "requestBody": {"required": True, "content": _json(
                          {"$ref": f"#/components/schemas/{resource.member}_update"})},
                      "responses": _responses(200, _wrap(resource.member, ref), (400, 404, 409, 413),
                                              f"The updated {resource.member}")}
            else:
                op = {"summary": f"Delete a {resource.member}",
                      "responses": _responses(204, None, (400, 404, 409), "Deleted")}
        elif method == "PUT" and _action_name(values) in ACTION_SHAPES:
            request, answer = ACTION_SHAPES[_action_name(values)]
            op = {"summary": _action_name(values).replace("_", " "),
                  "requestBody": {"required": True, "content": _json(request)},
                  "responses": _responses(200, answer, (400, 404, 409, 413), "Done")}
        else:  # a route this module has no shape for: documented, loosely
            body_ok = method != "DELETE"
            op = {"summary": f"{method} {action}",
                  "responses": _responses(200 if body_ok else 204, {"type": "object"} if body_ok else None,
                                          (400, 404, 409), "Done")}
            if method in ("POST", "PUT"):
                op["requestBody"] = {"required": True, "content": _json({"type": "object"})}
        op["operationId"] = "_".join([method.lower(), action, *values.values()])
        ops[method.lower()] = op
    return ops


def _action_name(values: dict[str, str]) -> str:
    """The member action a route's fixed values name (the last one: ``add_router_interface``)."""
    return list(values.values())[-1] if values else ""


def _expansions(route: Any) -> list[tuple[str, dict[str, str]]]:
    """Concrete (OpenAPI path, fixed values) pairs for one route."""
    results = [(route.routepath, {})]
    for name in VARIABLE.findall(route.routepath):
        req = (route.reqs or {}).get(name)
        if req and NAME_ALTERNATION.match(req):
            results = [(path.replace("{" + name + "}", choice), {**fixed, name: choice})
                       for path, fixed in results for choice in req.split("|")]
    return results


def allowed_methods(app: Any, path: str) -> list[str]:
    """The methods the dispatcher allows on ``path`` (asked with OPTIONS, refused with a 405 and ``Allow``)."""
    concrete = VARIABLE.sub(PROBE_ID, path)
    status: list[str] = []
    headers: list[tuple[str, str]] = []

    def start_response(s: str, h: list, exc_info: Any = None) -> Callable:
        status.append(s)
        headers.extend(h)
        return lambda data: None

    environ = {"REQUEST_METHOD": "OPTIONS", "PATH_INFO": concrete, "SCRIPT_NAME": "", "QUERY_STRING": "",
               "SERVER_NAME": "openapi", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
               "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
               "wsgi.run_once": False}
    b"".join(app(environ, start_response))
    allow = next((v for k, v in headers if k.lower() == "allow"), "")
    if not status or not status[0].startswith("405") or not allow:
        return ["GET"]
    return [m.strip() for m in allow.split(",") if m.strip() and m.strip() not in ("HEAD", "OPTIONS")]


def routed_paths(app: Any) -> list[tuple[str, str, dict[str, str]]]:
    """Every (OpenAPI path, route action, fixed values) the app routes, in route order."""
    paths = []
    for route in app.mapper.matchlist:
        action = (route.defaults or {}).get("action", "")
        for path, fixed in _expansions(route):
            paths.append((path, action, fixed))
    return paths


def document(app: Any, resources: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` (an :class:`apps.northbound.api.NorthboundApp`) serving ``resources``."""
    paths: dict[str, dict] = {}
    for path, action, fixed in routed_paths(app):
        if path in paths:
            continue
        methods = allowed_methods(app, path)
        ops = _operations(resources, action, fixed, methods)
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in VARIABLE.findall(path)]
        for op in ops.values():
            if params:
                op["parameters"] = params + op.get("parameters", [])
            if path != "/":  # the version document is open, as Neutron's
                op["responses"]["401"] = UNAUTHORIZED
        paths[path] = ops
    components: dict[str, Any] = {
        "NeutronError": _wrap("NeutronError", {
            "type": "object", "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                                             "detail": {"type": "string"}},
            "required": ["type", "message", "detail"], "additionalProperties": False}),
    }
    for resource in resources.values():
        components[resource.member] = schema.resource_schema(resource)
        components[f"{resource.member}_create"] = _wrap(resource.member, schema.body_schema(resource, create=True))
        components[f"{resource.member}_update"] = _wrap(resource.member, schema.body_schema(resource, create=False))
    return {
        "openapi": "3.1.0",
        "info": {"title": "tenantflow northbound API (OpenStack Networking v2.0)", "version": VERSION,
                 "description": "The Neutron v2.0 API subset tenantflow implements; GET /v2.0/extensions lists "
                                "the extensions. With --auth keystone every call but GET / needs a Keystone token "
                                "(X-Auth-Token) and the policy table applies; with noauth the project is the "
                                "body's project_id, else the X-Project-Id header, else the default project."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"keystone": {
            "type": "apiKey", "in": "header", "name": "X-Auth-Token",
            "description": "A Keystone token (--auth keystone; none with noauth)"}}},
        "security": [{"keystone": []}, {}],  # {}: noauth
    }
