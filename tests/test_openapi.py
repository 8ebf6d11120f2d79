"""/openapi.json is true: every documented path and method answers a success case with a documented status
and a body its schema accepts, documented errors are real, and every route the server answers is documented.

A resource added to the API is documented by itself (the document is generated); this test then needs
to know how to make one: add it to FACTORIES (and its member actions to ACTIONS).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import jsonschema
import pytest
from test_api_client import Api

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
MISSING = str(uuid.uuid4())

Made = dict[str, dict[str, Any]]


def _external_net(api: Api, made: Made) -> str:
    if "_external" not in made:
        net = api.create("network", **{"router:external": True})
        api.create("subnet", network_id=net["id"], cidr="172.24.4.0/24")
        made["_external"] = net
    return made["_external"]["id"]


# How to make one of each resource (its POST body), in dependency order; may create helpers.
FACTORIES: dict[str, Callable[[Api, Made], dict[str, Any]]] = {
    "hypervisors": lambda api, made: {"name": "oa-hv", "datapath_id": 77, "tunnel_ip": "192.168.100.77"},
    "networks": lambda api, made: {"name": "oa-net"},
    "subnets": lambda api, made: {"network_id": made["networks"]["id"], "cidr": "10.20.0.0/24"},
    "security-groups": lambda api, made: {"name": "oa-sg"},
    "security-group-rules": lambda api, made: {"security_group_id": made["security-groups"]["id"],
                                               "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                                               "port_range_min": 22, "port_range_max": 22},
    "ports": lambda api, made: {"network_id": made["networks"]["id"], "binding:host_id": "oa-hv"},
    "routers": lambda api, made: {"name": "oa-router",
                                  "external_gateway_info": {"network_id": _external_net(api, made)}},
    "floatingips": lambda api, made: {"floating_network_id": _external_net(api, made)},
}
# Member actions: (collection, action) -> PUT body, run in this order.
ACTIONS: dict[tuple[str, str], Callable[[Made], dict[str, Any]]] = {
    ("routers", "add_router_interface"): lambda made: {"subnet_id": made["subnets"]["id"]},
    ("routers", "remove_router_interface"): lambda made: {"subnet_id": made["subnets"]["id"]},
}


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Api]:
    a = Api(tmp_path_factory.mktemp("openapi") / "topology.sqlite")
    yield a
    a.close()


@pytest.fixture(scope="module")
def doc(api: Api) -> dict:
    resp = api.request("GET", "/openapi.json")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    return resp.json()


def check(doc: dict, path: str, method: str, resp: Any) -> None:
    """``resp`` answers a documented status, with the documented request id header and body."""
    op = doc["paths"][path][method.lower()]
    code = str(resp.status_code)
    assert code in op["responses"], f"{method} {path}: {code} is not documented: {resp.text[:300]}"
    documented = op["responses"][code]
    for header, spec in documented.get("headers", {}).items():
        assert header in resp.headers, f"{method} {path}: no {header}"
        jsonschema.validate(resp.headers[header], spec["schema"])
    content = documented.get("content")
    if content is None:
        assert resp.content == b"", f"{method} {path}: {code} has an undocumented body"
        return
    assert resp.headers["Content-Type"].startswith("application/json")
    schema = {**content["application/json"]["schema"], "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(resp.json())


def template_of(doc: dict, collection: str, member: bool = False) -> str:
    path = f"/v2.0/{collection}" + ("/{id}" if member else "")
    assert path in doc["paths"], f"{path} is not documented"
    return path


def test_document_is_well_formed(doc: dict) -> None:
    assert doc["openapi"].startswith("3.1") and doc["info"]["version"] == "2.0"
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert name
    for path, ops in doc["paths"].items():
        variables = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, op in ops.items():
            assert method.upper() in METHODS and op["responses"] and op["operationId"]
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == variables, (method, path)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_every_documented_operation_answers_as_documented(api: Api, doc: dict) -> None:
    collections = [r["collection"] for r in api.request("GET", "/v2.0").json()["resources"]]
    unknown = [c for c in collections if c not in FACTORIES]
    assert not unknown, f"add a factory for {unknown} to tests/test_openapi.py FACTORIES"
    done: set[tuple[str, str]] = set()

    def run(method: str, path: str, template: str, body: Any = None) -> Any:
        resp = api.request(method, path, body)
        check(doc, template, method, resp)
        done.add((template, method))
        return resp

    for path in ("/", "/v2.0", "/openapi.json", "/v2.0/extensions"):
        assert run("GET", path, path).status_code == 200
    alias = api.request("GET", "/v2.0/extensions").json()["extensions"][0]["alias"]
    assert run("GET", f"/v2.0/extensions/{alias}", "/v2.0/extensions/{alias}").status_code == 200
    run("GET", "/v2.0/extensions/no-such-alias", "/v2.0/extensions/{alias}")

    made: Made = {}
    order = [c for c in FACTORIES if c in collections]
    for collection in order:
        listing, item = template_of(doc, collection), template_of(doc, collection, member=True)
        member = next(r["name"] for r in api.request("GET", "/v2.0").json()["resources"]
                      if r["collection"] == collection)
        resp = run("POST", f"/v2.0/{collection}", listing, {member: FACTORIES[collection](api, made)})
        assert resp.status_code == 201, resp.text
        made[collection] = resp.json()[member]
        ident = made[collection]["id"]
        assert run("GET", f"/v2.0/{collection}", listing).status_code == 200
        assert run("GET", f"/v2.0/{collection}?limit=1", listing).status_code == 200
        assert run("GET", f"/v2.0/{collection}/{ident}", item).status_code == 200
        update = doc["components"]["schemas"][f"{member}_update"]["properties"][member]["properties"]
        key = next(k for k in ("description", "name") if k in update)
        resp = run("PUT", f"/v2.0/{collection}/{ident}", item, {member: {key: "openapi"}})
        assert resp.status_code == 200 and resp.json()[member][key] == "openapi"
        # documented errors are real
        assert run("GET", f"/v2.0/{collection}/{MISSING}", item).status_code == 404
        assert run("DELETE", f"/v2.0/{collection}/{MISSING}", item).status_code == 404
        assert run("POST", f"/v2.0/{collection}", listing, {member: {"undocumented": 1}}).status_code == 400
        assert run("GET", f"/v2.0/{collection}?undocumented=1", listing).status_code == 400
        assert run("GET", f"/v2.0/{collection}?limit=1&marker={MISSING}", listing).status_code == 404

    for path, ops in doc["paths"].items():  # member actions (PUT /v2.0/<collection>/{id}/<action>)
        parts = path.split("/")
        if len(parts) == 5 and parts[3] == "{id}":
            for method in ops:
                action = ACTIONS.get((parts[2], parts[4]))
                assert action is not None, f"add {method.upper()} {path} to tests/test_openapi.py ACTIONS"
                resp = run(method.upper(), path.replace("{id}", made[parts[2]]["id"]), path, action(made))
                assert resp.status_code < 300, resp.text

    for collection in reversed(order):
        resp = run("DELETE", f"/v2.0/{collection}/{made[collection]['id']}", template_of(doc, collection, True))
        assert resp.status_code == 204, resp.text

    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert documented - done == set(), "documented but never exercised"


def test_documented_filters_find_the_resource(api: Api, doc: dict) -> None:
    net = api.create("network", name="filtered", shared=True)
    api.create("subnet", network_id=net["id"], cidr="10.30.0.0/24")
    port = api.create("port", network_id=net["id"], device_id="vm-1")
    hv = api.create("hypervisor", name="hv-f", datapath_id=91, tunnel_ip="192.168.100.91")
    checked = 0
    for collection, item in (("networks", api.show("network", net["id"])), ("ports", port),
                             ("hypervisors", hv)):
        op = doc["paths"][f"/v2.0/{collection}"]["get"]
        for param in op["parameters"]:
            key, value = param["name"], item.get(param["name"])
            if key not in item or value is None or value == [] or value == {}:
                continue
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, list):
                value = (f"{next(iter(value[0]))}={next(iter(value[0].values()))}" if isinstance(value[0], dict)
                         else value[0])
            resp = api.request("GET", f"/v2.0/{collection}?{urlencode({key: str(value)})}")
            check(doc, f"/v2.0/{collection}", "GET", resp)
            assert item["id"] in [i["id"] for i in resp.json()[collection]], (collection, key, value)
            checked += 1
    assert checked >= 25


def test_every_route_the_server_answers_is_documented(api: Api, doc: dict) -> None:
    net = api.create("network", name="probe")
    resources = api.request("GET", "/v2.0").json()["resources"]
    candidates = {"/": "/", "/v2.0": "/v2.0", "/openapi.json": "/openapi.json", "/v2.0/extensions":
                  "/v2.0/extensions", "/v2.0/extensions/provider": "/v2.0/extensions/{alias}"}
    for r in resources:
        candidates[f"/v2.0/{r['collection']}"] = f"/v2.0/{r['collection']}"
        candidates[f"/v2.0/{r['collection']}/{MISSING}"] = f"/v2.0/{r['collection']}/{{id}}"
    candidates[f"/v2.0/networks/{net['id']}"] = "/v2.0/networks/{id}"
    for path, template in candidates.items():
        assert template in doc["paths"], f"{path} is answered but {template} is not documented"
        for method in METHODS:
            body = {"x": {}} if method in ("POST", "PUT") else None
            resp = api.request(method, path, body)
            assert resp.status_code != 404 or resp.json()["NeutronError"]["type"] != "HTTPNotFound", (method, path)
            documented = method.lower() in doc["paths"][template]
            assert (resp.status_code != 405) == documented, (method, path, resp.status_code)
            if resp.status_code == 405:
                allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
                assert allowed == {m.upper() for m in doc["paths"][template]}, (path, allowed)
    for path in ("/v2.0/nothing", "/v2.0/networks/a/b", "/v3", "/openapi.yaml"):
        resp = api.request("GET", path)
        assert resp.status_code == 404 and resp.json()["NeutronError"]["type"] == "HTTPNotFound"
        assert not any(p == path for p in doc["paths"])
