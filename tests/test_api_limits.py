"""Input rules and request-cost bounds of the API (apps/northbound/limits.py), as Neutron's.

A real server on 127.0.0.1 over a real store: each refusal is a 400 NeutronError and leaves
the API's view and every stored row exactly as they were (``Api.expect_error``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing

import pytest

from apps.northbound import limits
from tests.test_api_client import Api


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    with closing(Api(tmp_path / "topology.sqlite")) as served:
        yield served


@pytest.fixture
def net(api: Api) -> str:
    return api.create("network", name="net1")["id"]


def nested(depth: int) -> str:
    """``{"a": {"a": ... {}}}`` as JSON text: ``depth`` objects (built as text: json.dumps recurses)."""
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def test_deep_binding_profile_is_400_not_500(api: Api, net: str) -> None:
    for depth in (limits.MAX_DEPTH, 600, 5000):  # the port's body adds 2 levels around the profile
        body = f'{{"port": {{"network_id": "{net}", "binding:profile": {nested(depth)}}}}}'
        error = api.expect_error(400, "HTTPBadRequest", "POST", "/v2.0/ports", data=body.encode())
        assert "nested deeper" in error["message"] or error["message"] == "Malformed request body", error
    deep_list: list = []
    for _ in range(limits.MAX_DEPTH):  # arrays count as much as objects
        deep_list = [deep_list]
    deep_list = json.dumps({"port": {"network_id": net, "binding:profile": {"x": deep_list}}})
    api.expect_error(400, "HTTPBadRequest", "POST", "/v2.0/ports", data=deep_list.encode())
    # just within the bound: accepted, stored and shown as sent
    profile = json.loads(nested(limits.MAX_DEPTH - 2))
    port = api.create("port", network_id=net, **{"binding:profile": profile})
    assert api.show("port", port["id"])["binding:profile"] == profile


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1.5e400"])
def test_no_nan_or_infinity_anywhere(api: Api, net: str, number: bytes) -> None:
    body = b'{"port": {"network_id": "' + net.encode() + b'", "binding:profile": {"x": [1, ' + number + b"]}}}"
    error = api.expect_error(400, "HTTPBadRequest", "POST", "/v2.0/ports", data=body)
    assert error["message"].startswith("Malformed request body"), error
    api.expect_error(400, "HTTPBadRequest", "POST", "/v2.0/networks", data=b'{"network": {"mtu": ' + number + b"}}")
    # a finite float is still a number
    port = api.create("port", network_id=net, **{"binding:profile": {"x": 1.5e300}})
    assert api.show("port", port["id"])["binding:profile"] == {"x": 1.5e300}


def test_no_lone_surrogates(api: Api, net: str) -> None:
    for raw in (b'{"network": {"name": "a\\ud800b"}}',  # an escaped lone surrogate, high
                b'{"network": {"name": "\\udfff"}}',  # low
                b'{"network": {"description": "x", "\\ud800": 1}}',  # in a key
                b'{"network": {"name": "a\xed\xa0\x80b"}}',  # a surrogate encoded in UTF-8 (CESU-style)
                b'{"port": {"network_id": "NET", "binding:profile": {"k": ["\\ud83d"]}}}'):
        api.expect_error(400, "HTTPBadRequest", "POST", "/v2.0/networks" if b"network\"" in raw[:12] else
                         "/v2.0/ports", data=raw.replace(b"NET", net.encode()))
    # a proper pair, escaped or not, is one character and welcome
    made = api.create("network", name="\U0001f984")
    assert api.show("network", made["id"])["name"] == "\U0001f984"
    resp = api.request("POST", "/v2.0/networks", data=b'{"network": {"name": "\\ud83e\\udd84"}}')
    assert resp.status_code == 201 and resp.json()["network"]["name"] == "\U0001f984"


def test_prefix_length_zero_subnet_refused(api: Api, net: str) -> None:
    for cidr, version in (("0.0.0.0/0", 4), ("::/0", 6)):
        error = api.expect_error(400, "InvalidInput", "POST", "/v2.0/subnets",
                                 {"subnet": {"network_id": net, "cidr": cidr, "ip_version": version}})
        assert error["message"] == "Invalid input for operation: 0 is not allowed as CIDR prefix length.", error
    # a /0 is still a route's destination
    subnet = api.create("subnet", network_id=net, cidr="10.0.0.0/24", ip_version=4,
                        host_routes=[{"destination": "0.0.0.0/0", "nexthop": "10.0.0.254"}])
    assert subnet["host_routes"] == [{"destination": "0.0.0.0/0", "nexthop": "10.0.0.254"}]


def test_query_cost_is_bounded(api: Api, net: str) -> None:
    too_many = {
        "sort keys": "&".join(["sort_key=name&sort_dir=asc"] * 2400),
        "fields": "&".join(f"fields=f{i}" for i in range(limits.MAX_FIELDS + 1)),
        "filter values": "&".join(f"name=n{i}" for i in range(limits.MAX_FILTER_VALUES + 1)),
    }
    for what, query in too_many.items():
        start = time.perf_counter()
        error = api.expect_error(400, "HTTPBadRequest", "GET", f"/v2.0/networks?{query}")
        assert error["message"].startswith(f"Too many {what} in the query"), error
        assert time.perf_counter() - start < 5  # generous: it was 3 s of CPU for the sort keys alone
    api.expect_error(400, "HTTPBadRequest", "GET", f"/v2.0/networks/{net}?{too_many['fields']}")
    # at the bounds: answered
    at_bound = "&".join(["sort_key=name&sort_dir=asc"] * limits.MAX_SORT_KEYS)
    assert [n["id"] for n in api.list("networks", at_bound)] == [net]
    names = "&".join(f"name=n{i}" for i in range(limits.MAX_FILTER_VALUES - 1)) + "&name=net1"
    assert [n["id"] for n in api.list("networks", names)] == [net]


def test_oversized_body_is_413_and_the_server_goes_on(api: Api) -> None:
    big = b'{"network": {"name": "' + b"x" * limits.MAX_BODY + b'"}}'
    api.expect_error(413, "HTTPRequestEntityTooLarge", "POST", "/v2.0/networks", data=big)
    assert api.request("GET", "/v2.0/networks").status_code == 200
