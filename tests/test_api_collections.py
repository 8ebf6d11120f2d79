"""Collections as Neutron serves them, over real HTTP: filters, fields, sorting, pagination and links,
the extensions resource, request ids, the project without Keystone, 404/405 for wrong paths and methods.

Reference: neutron/api/api_common.py (get_filters, get_sorts, get_limit_and_marker,
get_pagination_links) and the ML2 plugin's native sorting/pagination.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
from test_api_client import Api

from controller.main import parse_args


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    a = Api(tmp_path / "topology.sqlite")
    yield a
    a.close()


def ids(items: list[dict]) -> list[str]:
    return [i["id"] for i in items]


def get(api: Api, path: str) -> dict:
    resp = api.request("GET", path)
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Openstack-Request-Id"].startswith("req-")
    return resp.json()


@pytest.fixture
def nets(api: Api) -> list[dict]:
    """Five networks: names b, a, c, a, e; the 3rd flat (null segmentation id), the 4th disabled."""
    made = [
        api.create("network", name="b", shared=True),
        api.create("network", name="a", headers={"X-Project-Id": "p2"}),
        api.create("network", name="c", **{"provider:network_type": "flat"}),
        api.create("network", name="a", admin_state_up=False),
        api.create("network", name="e", mtu=1400),
    ]
    return [api.show("network", n["id"]) for n in made]


# -- filters -------------------------------------------------------------------------------


def test_filters_or_within_a_key_and_across_keys(api: Api, nets: list[dict]) -> None:
    assert ids(api.list("networks", "name=a")) == [nets[1]["id"], nets[3]["id"]]
    assert ids(api.list("networks", "name=a&name=e")) == [nets[1]["id"], nets[3]["id"], nets[4]["id"]]
    assert ids(api.list("networks", "name=a&admin_state_up=true")) == [nets[1]["id"]]
    assert ids(api.list("networks", f"id={nets[2]['id']}&id={nets[0]['id']}")) == [nets[0]["id"], nets[2]["id"]]
    assert ids(api.list("networks", "project_id=p2")) == ids(api.list("networks", "tenant_id=p2")) == [nets[1]["id"]]
    assert api.list("networks", "name=a&name=zz&project_id=nope") == []


@pytest.mark.parametrize("true,false", [("true", "false"), ("True", "False"), ("TRUE", "FaLsE"), ("1", "0")])
def test_boolean_filters_convert_like_neutron(api: Api, nets: list[dict], true: str, false: str) -> None:
    assert ids(api.list("networks", f"admin_state_up={false}")) == [nets[3]["id"]]
    assert len(api.list("networks", f"admin_state_up={true}")) == 4
    assert ids(api.list("networks", f"shared={true}")) == [nets[0]["id"]]
    assert len(api.list("networks", f"admin_state_up={true}&admin_state_up={false}")) == 5


def test_integer_filters(api: Api, nets: list[dict]) -> None:
    assert ids(api.list("networks", "mtu=1400")) == [nets[4]["id"]]
    assert len(api.list("networks", "mtu=1450&mtu=1500")) == 4
    seg = nets[0]["provider:segmentation_id"]
    assert ids(api.list("networks", f"provider:segmentation_id={seg}")) == [nets[0]["id"]]
    assert ids(api.list("networks", "provider:network_type=flat")) == [nets[2]["id"]]


def test_bad_filters_are_400(api: Api, nets: list[dict]) -> None:
    err = api.expect_error
    assert "colour" in err(400, "HTTPBadRequest", "GET", "/v2.0/networks?colour=blue")["message"]
    err(400, "HTTPBadRequest", "GET", "/v2.0/networks?name=a&colour=blue&size=2")
    err(400, "HTTPBadRequest", "GET", "/v2.0/ports?binding:profile=x")  # a dict is not filterable
    err(400, "HTTPBadRequest", "GET", "/v2.0/hypervisors?bridge_mappings=x")
    assert "maybe" in err(400, "InvalidInput", "GET", "/v2.0/networks?admin_state_up=maybe")["message"]
    err(400, "InvalidInput", "GET", "/v2.0/networks?admin_state_up=")
    err(400, "InvalidInput", "GET", "/v2.0/networks?mtu=big")
    err(400, "InvalidInput", "GET", "/v2.0/networks?provider:segmentation_id=1.5")
    err(400, "InvalidInput", "GET", "/v2.0/ports?fixed_ips=10.0.0.3")  # not key=value


def test_list_and_list_of_object_filters(api: Api) -> None:
    net = api.create("network")
    other = api.create("network")
    s1 = api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24")
    s2 = api.create("subnet", network_id=net["id"], cidr="10.1.0.0/24")
    p1 = api.create("port", network_id=net["id"], fixed_ips=[{"subnet_id": s1["id"], "ip_address": "10.0.0.3"},
                                                          {"subnet_id": s2["id"], "ip_address": "10.1.0.30"}])
    p2 = api.create("port", network_id=net["id"], fixed_ips=[{"subnet_id": s1["id"], "ip_address": "10.0.0.30"}],
                    device_owner="compute:nova")
    assert ids(api.list("networks", f"subnets={s2['id']}")) == [net["id"]]
    assert ids(api.list("ports", "fixed_ips=ip_address%3D10.0.0.3")) == [p1["id"]]
    assert ids(api.list("ports", "fixed_ips=ip_address%3D10.0.0.3&fixed_ips=ip_address%3D10.0.0.30")) == \
        [p1["id"], p2["id"]]
    assert ids(api.list("ports", f"fixed_ips=subnet_id%3D{s1['id']}")) == [p1["id"], p2["id"]]
    assert ids(api.list("ports", f"fixed_ips=subnet_id%3D{s2['id']}")) == [p1["id"]]
    # one element must match every key given: 10.0.0.30 is on s1, not on s2
    assert api.list("ports", f"fixed_ips=subnet_id%3D{s2['id']}&fixed_ips=ip_address%3D10.0.0.30") == []
    assert ids(api.list("ports", f"fixed_ips=subnet_id%3D{s1['id']}&fixed_ips=ip_address%3D10.0.0.30")) == [p2["id"]]
    assert ids(api.list("ports", "fixed_ips=ip_address_substr%3D.0.3")) == [p1["id"], p2["id"]]
    assert ids(api.list("ports", "fixed_ips=ip_address_substr%3D10.1.")) == [p1["id"]]
    # empty-string-filtering: an empty value matches the empty string
    assert ids(api.list("ports", "device_owner=")) == [p1["id"]]
    assert ids(api.list("ports", f"network_id={net['id']}&device_owner=compute:nova")) == [p2["id"]]
    assert api.list("ports", f"network_id={other['id']}") == []
    assert ids(api.list("subnets", "ip_version=4&cidr=10.1.0.0/24")) == [s2["id"]]


# -- fields -----------------------------------------------------------------------------------


def test_fields(api: Api, nets: list[dict]) -> None:
    assert api.list("networks", "name=b&fields=id&fields=name") == [{"id": nets[0]["id"], "name": "b"}]
    assert api.list("networks", "name=b&fields=mtu") == [{"mtu": 1450}]
    assert api.list("networks", "name=b&fields=mtu&fields=nonsense") == [{"mtu": 1450}]
    assert api.list("networks", "name=b&fields=nonsense") == [{}]
    assert api.list("networks", "name=b&fields=") == [nets[0]]
    assert api.list("networks", "name=b&fields=provider:network_type") == [{"provider:network_type": "vxlan"}]
    shown = get(api, f"/v2.0/networks/{nets[0]['id']}?fields=name&fields=shared")
    assert shown == {"network": {"name": "b", "shared": True}}


# -- sorting ------------------------------------------------------------------------------------


def test_sorting(api: Api, nets: list[dict]) -> None:
    by_name = sorted(nets, key=lambda n: (n["name"]))  # stable: the two a's in creation order
    assert ids(api.list("networks", "sort_key=name&sort_dir=asc")) == ids(by_name)
    assert [n["name"] for n in api.list("networks", "sort_key=name&sort_dir=desc")] == ["e", "c", "b", "a", "a"]
    both = api.list("networks", "sort_key=name&sort_dir=asc&sort_key=admin_state_up&sort_dir=asc")
    assert ids(both)[:2] == [nets[3]["id"], nets[1]["id"]]  # false sorts before true
    both = api.list("networks", "sort_key=name&sort_dir=asc&sort_key=admin_state_up&sort_dir=desc")
    assert ids(both)[:2] == [nets[1]["id"], nets[3]["id"]]
    assert ids(api.list("networks", "sort_key=mtu&sort_dir=asc"))[0] == nets[4]["id"]
    # nulls first ascending (the flat network has no segmentation id), last descending
    assert ids(api.list("networks", "sort_key=provider:segmentation_id&sort_dir=asc"))[0] == nets[2]["id"]
    assert ids(api.list("networks", "sort_key=provider:segmentation_id&sort_dir=desc"))[-1] == nets[2]["id"]
    assert ids(api.list("networks", "name=a&sort_key=id&sort_dir=desc")) == \
        sorted([nets[1]["id"], nets[3]["id"]], reverse=True)


def test_bad_sorting_is_400(api: Api, nets: list[dict]) -> None:
    err = api.expect_error
    err(400, "HTTPBadRequest", "GET", "/v2.0/networks?sort_key=name")
    err(400, "HTTPBadRequest", "GET", "/v2.0/networks?sort_dir=asc")
    err(400, "HTTPBadRequest", "GET", "/v2.0/networks?sort_key=name&sort_dir=asc&sort_key=id")
    assert "colour" in err(400, "HTTPBadRequest", "GET", "/v2.0/networks?sort_key=colour&sort_dir=asc")["message"]
    err(400, "HTTPBadRequest", "GET", "/v2.0/networks?sort_key=subnets&sort_dir=asc")
    err(400, "HTTPBadRequest", "GET", "/v2.0/ports?sort_key=fixed_ips&sort_dir=asc")
    err(400, "HTTPBadRequest", "GET", "/v2.0/networks?sort_key=name&sort_dir=up")
    err(400, "HTTPBadRequest", "GET", "/v2.0/networks?sort_key=name&sort_dir=ASC")


# -- pagination ------------------------------------------------------------------------------------


def link(body: dict, collection: str, rel: str) -> str | None:
    found = [lk["href"] for lk in body.get(f"{collection}_links", []) if lk["rel"] == rel]
    assert len(found) <= 1
    return found[0] if found else None


def follow(api: Api, href: str) -> dict:
    assert href.startswith(api.url + "/v2.0/")
    return get(api, href[len(api.url):])


def test_pagination_forward_and_back_with_links(api: Api, nets: list[dict]) -> None:
    by_id = sorted(ids(nets))
    page = get(api, "/v2.0/networks?limit=2")
    assert ids(page["networks"]) == by_id[:2]  # paging sorts by id
    assert page["networks_links"] == [
        {"rel": "next", "href": f"{api.url}/v2.0/networks?limit=2&marker={by_id[1]}"},
        {"rel": "previous", "href": f"{api.url}/v2.0/networks?limit=2&marker={by_id[0]}&page_reverse=True"},
    ]
    seen = ids(page["networks"])
    while (href := link(page, "networks", "next")) is not None:
        page = follow(api, href)
        seen += ids(page["networks"])
    assert seen == by_id
    assert len(page["networks"]) == 1  # the last page came back short: no next link, but a previous one
    assert link(page, "networks", "previous") == \
        f"{api.url}/v2.0/networks?limit=2&marker={by_id[4]}&page_reverse=True"
    back = follow(api, link(page, "networks", "previous"))
    assert ids(back["networks"]) == by_id[2:4]
    assert link(back, "networks", "next") == f"{api.url}/v2.0/networks?limit=2&marker={by_id[3]}"
    back = follow(api, link(back, "networks", "previous"))
    assert ids(back["networks"]) == by_id[0:2]
    back = follow(api, link(back, "networks", "previous"))
    assert back["networks"] == [] and link(back, "networks", "previous") is None
    assert link(back, "networks", "next") == f"{api.url}/v2.0/networks?limit=2"


def test_page_reverse_without_marker_is_the_last_page(api: Api, nets: list[dict]) -> None:
    by_id = sorted(ids(nets))
    page = get(api, "/v2.0/networks?limit=2&page_reverse=True")
    assert ids(page["networks"]) == by_id[3:]
    assert ids(get(api, "/v2.0/networks?limit=10&page_reverse=true")["networks"]) == by_id
    assert ids(get(api, f"/v2.0/networks?limit=10&marker={by_id[2]}&page_reverse=True")["networks"]) == by_id[:2]


def test_pagination_keeps_the_query(api: Api, nets: list[dict]) -> None:
    query = "name=a&name=b&name=c&fields=name&sort_key=name&sort_dir=desc&limit=2"
    page = get(api, f"/v2.0/networks?{query}")
    assert page["networks"] == [{"name": "c"}, {"name": "b"}]  # only the fields asked for, even when paging
    href = link(page, "networks", "next")
    assert urlsplit(href).path == "/v2.0/networks"
    assert parse_qsl(urlsplit(href).query) == [("name", "a"), ("name", "b"), ("name", "c"), ("fields", "name"),
                                               ("sort_key", "name"), ("sort_dir", "desc"), ("limit", "2"),
                                               ("marker", nets[0]["id"])]
    rest = follow(api, href)
    # the two "a" networks, ordered by id after name (paging adds id as the last sort key)
    assert rest["networks"] == [{"name": "a"}, {"name": "a"}]
    assert ids(api.list("networks", "name=a&sort_key=name&sort_dir=desc&limit=5")) == \
        sorted([nets[1]["id"], nets[3]["id"]])


def test_marker_of_a_filtered_out_resource_pages_from_its_position(api: Api, nets: list[dict]) -> None:
    by_id = sorted(ids(nets))
    enabled = [i for i in by_id if i != nets[3]["id"]]
    got = ids(api.list("networks", f"admin_state_up=true&limit=10&marker={nets[3]['id']}"))
    assert got == [i for i in enabled if i > nets[3]["id"]]


def test_pagination_errors_and_edges(api: Api, nets: list[dict]) -> None:
    err = api.expect_error
    missing = str(uuid.uuid4())
    assert missing in err(404, "NetworkNotFound", "GET", f"/v2.0/networks?limit=2&marker={missing}")["message"]
    err(404, "PortNotFound", "GET", f"/v2.0/ports?limit=1&marker={missing}")
    err(400, "BadRequest", "GET", "/v2.0/networks?limit=two")
    err(400, "BadRequest", "GET", "/v2.0/networks?limit=-1")
    body = get(api, "/v2.0/networks?limit=0")
    assert len(body["networks"]) == 5 and "networks_links" not in body
    body = get(api, f"/v2.0/networks?marker={missing}")  # a marker without a limit is ignored
    assert len(body["networks"]) == 5 and "networks_links" not in body
    assert "networks_links" not in get(api, "/v2.0/networks")
    body = get(api, "/v2.0/networks?limit=5")  # a full page: Neutron still offers next
    assert len(body["networks"]) == 5 and link(body, "networks", "next") is not None
    assert follow(api, link(body, "networks", "next")) == {
        "networks": [], "networks_links": [{"rel": "previous", "href": f"{api.url}/v2.0/networks?limit=5&"
                                                                       "page_reverse=True"}]}


def test_every_collection_pages(api: Api) -> None:
    for n in range(3):
        api.create("hypervisor", name=f"hv{n}", datapath_id=n + 1, tunnel_ip=f"192.168.100.{n + 1}")
    page = get(api, "/v2.0/hypervisors?limit=2&sort_key=name&sort_dir=desc")
    assert [h["name"] for h in page["hypervisors"]] == ["hv2", "hv1"]
    assert [h["name"] for h in follow(api, link(page, "hypervisors", "next"))["hypervisors"]] == ["hv0"]
    net = api.create("network")
    api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24")
    made = [api.create("port", network_id=net["id"])["id"] for _ in range(3)]
    page = get(api, "/v2.0/ports?limit=2")
    assert ids(page["ports"]) == sorted(made)[:2]
    assert ids(get(api, "/v2.0/subnets?limit=1")["subnets"]) != []


# -- extensions -----------------------------------------------------------------------------------

ALWAYS = {"pagination", "sorting", "filter-validation", "empty-string-filtering", "ip-substring-filtering",
          "project-id", "standard-attr-description", "standard-attr-timestamp", "net-mtu", "net-mtu-writable",
          "provider", "external-net", "binding"}


def test_extensions(api: Api) -> None:
    listed = get(api, "/v2.0/extensions")["extensions"]
    aliases = [e["alias"] for e in listed]
    assert len(aliases) == len(set(aliases))
    assert ALWAYS <= set(aliases)
    for ext in listed:
        assert set(ext) == {"name", "alias", "description", "updated", "links"} and ext["links"] == []
        assert ext["name"] and ext["description"] and ext["updated"][:2] in ("20",)
        assert get(api, f"/v2.0/extensions/{ext['alias']}") == {"extension": ext}
    provider = get(api, "/v2.0/extensions/provider")["extension"]
    assert provider == {"name": "Provider Network", "alias": "provider", "links": [],
                        "description": "Expose mapping of virtual networks to physical networks",
                        "updated": "2012-09-07T10:00:00-00:00"}
    served = {r["collection"] for r in get(api, "/v2.0")["resources"]}
    # an extension for a resource is listed only when the resource is served
    assert "router" not in aliases or {"routers", "floatingips"} <= served
    assert "extraroute" not in aliases or "routers" in served
    assert "security-group" not in aliases or {"security-groups", "security-group-rules"} <= served
    api.create("network")
    net_keys = set(api.list("networks")[0])
    assert "port-security" not in aliases or "port_security_enabled" in net_keys
    api.expect_error(404, "HTTPNotFound", "GET", "/v2.0/extensions/no-such-thing")
    api.expect_error(405, "HTTPMethodNotAllowed", "POST", "/v2.0/extensions", {"extension": {}})
    api.expect_error(405, "HTTPMethodNotAllowed", "DELETE", "/v2.0/extensions/provider")
    assert get(api, "/v2.0/extensions.json") == {"extensions": listed}


# -- request ids, projects, wrong paths and methods ------------------------------------------------


def test_every_answer_has_a_request_id(api: Api) -> None:
    net = api.create("network")
    answers = [
        api.request("GET", "/"), api.request("GET", "/v2.0/networks"), api.request("GET", "/openapi.json"),
        api.request("POST", "/v2.0/networks", {"network": {}}), api.request("DELETE", f"/v2.0/networks/{net['id']}"),
        api.request("GET", "/v2.0/nothing"), api.request("PATCH", "/v2.0/networks"),
        api.request("GET", "/v2.0/networks?colour=x"), api.request("HEAD", "/v2.0/networks"),
        api.request("GET", "/v2.0/extensions/nope"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 201, 204, 404, 405, 400, 405, 404]
    request_ids = [r.headers["X-Openstack-Request-Id"] for r in answers]
    assert all(i.startswith("req-") for i in request_ids) and len(set(request_ids)) == len(answers)


def test_project_from_body_header_or_default(tmp_path) -> None:
    api = Api(tmp_path / "t.sqlite", default_project="ops")
    try:
        assert api.create("network")["project_id"] == "ops"
        assert api.create("network", headers={"X-Project-Id": "hdr"})["project_id"] == "hdr"
        assert api.create("network", project_id="body", headers={"X-Project-Id": "hdr"})["project_id"] == "body"
        assert api.create("network", tenant_id="legacy")["tenant_id"] == "legacy"
        net = api.create("network", headers={"X-Project-Id": "hdr"})
        sub = api.create("subnet", network_id=net["id"], cidr="10.0.0.0/24", headers={"X-Project-Id": "hdr"})
        port = api.create("port", network_id=net["id"])
        assert (sub["project_id"], port["project_id"]) == ("hdr", "ops")
    finally:
        api.close()
    assert parse_args(["--default-project", "admin"]).default_project == "admin"
    assert parse_args([]).default_project == "default"


def test_wrong_paths_and_methods(api: Api) -> None:
    err = api.expect_error
    net = api.create("network")
    for path in ("/v2.0/routerz", "/v2.0/networks/x/y", "/v2.1", "/v2.0/extensions/a/b", "/openapi.yaml"):
        err(404, "HTTPNotFound", "GET", path)
    for method, path in (("PATCH", "/v2.0/networks"), ("PUT", "/v2.0/networks"), ("DELETE", "/v2.0/networks"),
                         ("POST", f"/v2.0/networks/{net['id']}"), ("PATCH", f"/v2.0/networks/{net['id']}"),
                         ("POST", "/"), ("DELETE", "/v2.0"), ("PUT", "/openapi.json")):
        err(405, "HTTPMethodNotAllowed", method, path)
    # HEAD: Neutron answers 405 (no body, as HEAD never has one) and says what is allowed
    resp = api.request("HEAD", "/v2.0/networks")
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET, POST" and resp.content == b""
    resp = api.request("OPTIONS", f"/v2.0/networks/{net['id']}")
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET, PUT, DELETE"
    assert resp.json()["NeutronError"]["type"] == "HTTPMethodNotAllowed"


def test_integer_strings_are_checked_not_crashed_on(api: Api) -> None:
    for text in ("²", "--5", "1_000", "٣"):  # isdigit() says yes to some of these, int() says no (or yes)
        api.expect_error(400, "HTTPBadRequest", "POST", "/v2.0/networks", {"network": {"mtu": text}})
    assert api.create("network", mtu=" 1400 ")["mtu"] == 1400


def test_openstacksdk_pages_through_the_links(api: Api, nets: list[dict]) -> None:
    """A real client follows ``networks_links`` (limit pages, sort, marker) and finds everything once."""
    import openstack

    conn = openstack.connect(auth_type="none", network_endpoint_override=api.url)
    try:
        got = [n.id for n in conn.network.networks(limit=2)]
        assert got == sorted(ids(nets))
        names = [n.name for n in conn.network.networks(limit=2, sort_key="name", sort_dir="desc")]
        assert names == ["e", "c", "b", "a", "a"]
        assert [n.id for n in conn.network.networks(name="a", is_admin_state_up=False)] == [nets[3]["id"]]
        aliases = {e.alias for e in conn.network.extensions()}
        assert {"pagination", "sorting", "provider", "external-net"} <= aliases
        assert conn.network.find_extension("provider").name == "Provider Network"
    finally:
        conn.close()
