"""Property-based fuzzing of the northbound API of a real controller process (hypothesis).

Thousands of malformed and hostile requests over raw sockets: random methods and
paths (bad UTF-8, traversal, percent-garbage), wrong content types, huge and deeply
nested bodies, invalid JSON and UTF-8, unknown attributes, wrong JSON types and
injection strings in every attribute, next to plausible requests that the API
accepts. Every answer must be below 500, carry no traceback, and every 4xx must be
a NeutronError JSON document. A ledger follows what the accepted (2xx) writes
made; at the end the API, and a second controller started on a copy of the SQLite
file, must show exactly that: no rejected request left anything behind.

Deterministic in CI (``derandomize`` when ``CI`` is set); bounded to well under a minute.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.lab.controller import ControllerProcess

CI = bool(os.environ.get("CI"))
FUZZ = settings(deadline=None, derandomize=CI, database=None, print_blob=not CI,
                suppress_health_check=list(HealthCheck))
SCALE = float(os.environ.get("TENANTFLOW_FUZZ_SCALE", "1"))  # more examples: TENANTFLOW_FUZZ_SCALE=10


def examples(n: int) -> settings:
    return settings(FUZZ, max_examples=max(1, int(n * SCALE)))

COLLECTIONS = ("networks", "subnets", "ports", "hypervisors")
MEMBER = {"networks": "network", "subnets": "subnet", "ports": "port", "hypervisors": "hypervisor"}
AUTO_DELETE_OWNERS = ("network:dhcp", "network:distributed")
MISSING = str(uuid.uuid4())

INJECTIONS = [
    "'; DROP TABLE networks; --", "\" OR 1=1 --", "1' OR '1'='1", "<script>alert(1)</script>", "${jndi:ldap://x/a}",
    "{{7*7}}", "%s%s%s%n", "{0.__class__}", "../../../../etc/passwd", "..%2f..%2f", "\x00", "a\x00b", "\r\nX-Evil: 1",
    "\u202e\u0645", "\U0001f984", "\ud800", "null", "None", "true", "NaN", "1e309", "-0", " ", "", "x" * 255, "x" * 256,
    "é" * 300, "\\", "%", "_", "*", "10.0.0.0/33", "::::", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00",
    "0.0.0.0", "255.255.255.255", "fe80::1%eth0", "10.0.0.1/24", "10.0.0.0/24", "fd00::/64",
]
KNOWN_ATTRS = {
    "networks": ["name", "description", "project_id", "tenant_id", "admin_state_up", "shared", "router:external",
                 "mtu", "provider:network_type", "provider:physical_network", "provider:segmentation_id"],
    "subnets": ["name", "network_id", "cidr", "ip_version", "gateway_ip", "allocation_pools", "enable_dhcp",
                "dns_nameservers", "host_routes", "ipv6_ra_mode", "ipv6_address_mode", "project_id"],
    "ports": ["name", "network_id", "admin_state_up", "mac_address", "fixed_ips", "binding:host_id",
              "binding:vnic_type", "binding:profile", "device_owner", "device_id", "project_id"],
    "hypervisors": ["name", "description", "datapath_id", "tunnel_ip", "bridge_mappings"],
}
ODD_ATTRS = ["id", "status", "colour", "subnets", "created_at", "key", "", " ", "name\x00", "__proto__", "constructor",
             "network_id; --", "fixed_ips[0]", "provider:", "binding:vif_type", "\ud800"]


# -- the wire ------------------------------------------------------------------------------
class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def send(port: int, method: bytes, target: bytes, body: bytes = b"", headers: dict[bytes, bytes] | None = None,
         timeout: float = 15.0) -> Reply:
    """One HTTP/1.1 request over a raw socket (no client-side validation at all), read to the close."""
    head = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    hdrs = {b"Content-Length": str(len(body)).encode(), **(headers or {})}
    head += [k + b": " + v for k, v in hdrs.items() if v is not None]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) and close before reading it all: read its answer
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head_raw, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"no HTTP answer to {method!r} {target[:80]!r}: {raw[:200]!r}"
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        parsed[k.strip().lower()] = v.strip()
    return Reply(status, parsed, payload)


def check_reply(r: Reply, method: bytes, what: str, target: bytes = b"/v2.0") -> None:
    """The invariants of every answer (``/metrics`` is Prometheus' own app: not JSON)."""
    assert r.status < 500, f"{r.status} for {what}: {r.body[:300]!r}"
    assert b"Traceback" not in r.body and b'File "' not in r.body, f"traceback in the body for {what}"
    if method == b"HEAD" or r.status == 204 or target.startswith(b"/metrics"):
        return
    assert r.headers.get("content-type", "").startswith("application/json"), (what, r.headers)
    assert r.headers.get("x-openstack-request-id", "").startswith("req-"), (what, r.headers)
    doc = r.json()
    if r.status >= 400:
        assert set(doc) == {"NeutronError"}, (what, doc)
        err = doc["NeutronError"]
        assert set(err) == {"type", "message", "detail"}, (what, err)
        assert isinstance(err["type"], str) and isinstance(err["message"], str) and err["message"], (what, err)


# -- the ledger of accepted writes ------------------------------------------------------------
class Ledger:
    """What the accepted writes made: {collection: {id: last representation answered}}."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, dict]] = {c: {} for c in COLLECTIONS}
        self.stale: set[str] = set()  # ids whose content changed as a side effect (e.g. a port losing an address)
        self.accepted = 0
        self.rejected = 0
        self.resource_examples = 0
        self.statuses: dict[int, int] = {}

    def ids(self, collection: str) -> list[str]:
        return sorted(self.items[collection])

    def record(self, method: bytes, collection: str, ident: str | None, r: Reply) -> None:
        self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
        if not 200 <= r.status < 300:
            self.rejected += 1
            return
        if method in (b"GET", b"HEAD"):
            return
        self.accepted += 1
        if method == b"POST":
            item = r.json()[MEMBER[collection]]
            assert item["id"] not in self.items[collection]
            self.items[collection][item["id"]] = item
        elif method == b"PUT":
            item = r.json()[MEMBER[collection]]
            assert item["id"] == ident, (ident, item)
            self.items[collection][ident] = item
            self.stale.discard(ident)
        elif method == b"DELETE":
            assert r.status == 204
            gone = self.items[collection].pop(ident)
            if collection == "networks":  # its subnets and auto-deleted ports go with it
                for sub in [s for s in self.items["subnets"].values() if s["network_id"] == ident]:
                    del self.items["subnets"][sub["id"]]
                for port in [p for p in self.items["ports"].values() if p["network_id"] == ident]:
                    assert port["device_owner"] in AUTO_DELETE_OWNERS, port
                    del self.items["ports"][port["id"]]
            elif collection == "subnets":  # DHCP ports lose their address in it
                for port in self.items["ports"].values():
                    if any(f["subnet_id"] == ident for f in port["fixed_ips"]):
                        assert port["device_owner"] in AUTO_DELETE_OWNERS, port
                        self.stale.add(port["id"])
            assert gone["id"] == ident


# Attributes a resource does not control itself: derived from others or live.
DERIVED = {"networks": {"subnets"}, "subnets": set(), "ports": {"status"}, "hypervisors": {"connected"}}


@pytest.fixture(scope="module")
def ctrl(tmp_path_factory) -> Iterator[ControllerProcess]:
    with ControllerProcess(str(tmp_path_factory.mktemp("fuzz"))) as c:
        yield c


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


# -- strategies ------------------------------------------------------------------------------
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
                | st.text(max_size=40) | st.sampled_from(INJECTIONS))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10) | st.sampled_from(ODD_ATTRS), inner, max_size=4),
                           max_leaves=10)


def often(n: int) -> st.SearchStrategy[bool]:
    """True n times out of n + 1 (sampled_from: hypothesis favours small integers, and so 0, heavily)."""
    return st.sampled_from([True] * n + [False])


def deep(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def existing(data: st.DataObject, ledger: Ledger, collection: str, otherwise: str) -> str:
    """Mostly an id that exists now, else ``otherwise``. Draws the same way whatever exists, so that
    hypothesis sees one data-generation structure (the ledger is state outside its control)."""
    use, index = data.draw(often(4)), data.draw(st.integers(0, 2**20))
    ids = ledger.ids(collection)
    return ids[index % len(ids)] if ids and use else otherwise


def plausible(data: st.DataObject, ledger: Ledger, collection: str, name: str, prefix: str) -> Any:
    """A value for ``name`` that the API may well accept, drawn against what exists now; every IPv4
    address of one request is in the /24 ``prefix`` (``10.a.b``), so that gateways, pools and fixed IPs
    fit a subnet's CIDR as often as not."""
    def pick(c: str) -> str:
        return existing(data, ledger, c, MISSING)

    octet = st.integers(0, 255)
    host = st.builds((prefix + ".{}").format, octet)
    if name == "network_id":
        return pick("networks")
    if name == "cidr":
        return data.draw(st.builds((prefix + ".0/{}").format, st.sampled_from([24, 24, 24, 28, 16]))
                         | st.builds("fd00:{:x}::/64".format, st.integers(0, 0xFFFF)))
    if name in ("gateway_ip",):
        return data.draw(st.none() | host)
    if name == "ip_version":
        return data.draw(st.sampled_from([4, 6, "4", 5]))
    if name == "mac_address":
        return data.draw(st.builds("fa:16:3e:{:02x}:{:02x}:{:02x}".format, octet, octet, octet))
    if name == "fixed_ips":
        entry = st.fixed_dictionaries({}, optional={
            "subnet_id": st.just(pick("subnets")),
            "ip_address": host})
        return data.draw(st.none() | st.lists(entry, max_size=2))
    if name == "allocation_pools":
        return data.draw(st.lists(st.fixed_dictionaries({"start": host,
                                                         "end": host}),
                                  max_size=2))
    if name in ("dns_nameservers",):
        return data.draw(st.lists(host, max_size=2))
    if name == "host_routes":
        return data.draw(st.lists(st.fixed_dictionaries({"destination": st.just("192.168.7.0/24"),
                                                         "nexthop": st.builds("10.0.0.{}".format, octet)}), max_size=1))
    if name in ("admin_state_up", "shared", "router:external", "enable_dhcp"):
        return data.draw(st.booleans() | st.sampled_from(["True", "false", 0, 1]))
    if name == "mtu":
        return data.draw(st.integers(60, 9300))
    if name == "provider:network_type":
        return data.draw(st.sampled_from(["vxlan", "geneve", "vlan", "flat", "gre", "local", ""]))
    if name == "provider:physical_network":
        return data.draw(st.sampled_from([None, "physnet1", "physnet2", ""]))
    if name == "provider:segmentation_id":
        return data.draw(st.none() | st.integers(0, 5000) | st.integers(2**24 - 2, 2**24 + 1))
    if name in ("ipv6_ra_mode", "ipv6_address_mode"):
        return data.draw(st.sampled_from([None, "slaac", "dhcpv6-stateful", "dhcpv6-stateless", "eui64"]))
    if name == "device_owner":
        return data.draw(st.sampled_from(["", "compute:nova", "network:dhcp", "network:router_interface", None]))
    if name == "binding:host_id":
        return data.draw(st.sampled_from(["", "hv1", "fuzz-hv", None]))
    if name == "binding:vnic_type":
        return data.draw(st.sampled_from(["normal", "direct"]))
    if name == "binding:profile":
        return data.draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))
    if name == "datapath_id":
        return data.draw(st.integers(0, 2**64) | st.builds("{:016x}".format, st.integers(0, 2**64 - 1))
                         | st.builds("0x{:x}".format, st.integers(0, 2**65)))
    if name == "tunnel_ip":
        return data.draw(st.builds("192.0.2.{}".format, octet) | st.sampled_from(["::1", "300.1.1.1"]))
    if name == "bridge_mappings":
        return data.draw(st.dictionaries(st.sampled_from(["physnet1", "physnet2", ""]),
                                         st.sampled_from(["br-phys", ""]), max_size=2))
    if name in ("project_id", "tenant_id"):
        return data.draw(st.sampled_from(["tenant-a", "tenant-b"]))
    if name == "name" and collection == "hypervisors":
        return data.draw(st.builds("hv-{}".format, st.integers(0, 50)) | st.sampled_from(["a/b", "", "x" * 300]))
    return data.draw(st.text(max_size=20))


def body_for(data: st.DataObject, ledger: Ledger, collection: str) -> dict:
    names = data.draw(st.lists(st.sampled_from(KNOWN_ATTRS[collection]), max_size=4, unique=True))
    if collection in ("subnets", "ports") and data.draw(often(5)):
        names = ["network_id", *[n for n in names if n != "network_id"]]
    if collection == "subnets" and data.draw(often(5)):
        names = ["cidr", *[n for n in names if n != "cidr"]]
    if collection == "hypervisors" and data.draw(often(5)):
        names = list(dict.fromkeys(["name", "datapath_id", "tunnel_ip", *names]))
    prefix = "10.{}.{}".format(*data.draw(st.tuples(st.integers(0, 2), st.integers(0, 63))))
    attrs = {}
    for name in names:
        hostile = not data.draw(often(9))
        attrs[name] = data.draw(json_values) if hostile else plausible(data, ledger, collection, name, prefix)
    if not data.draw(often(12)):
        attrs[data.draw(st.sampled_from(ODD_ATTRS))] = data.draw(json_values)
    return attrs


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8", "surrogatepass")


# -- the tests -------------------------------------------------------------------------------
@examples(2500)
@given(data=st.data())
def test_resource_requests(ctrl: ControllerProcess, ledger: Ledger, data: st.DataObject) -> None:
    """Plausible and hostile create/update/delete/show/list requests of every resource."""
    ledger.resource_examples += 1
    collection = data.draw(st.sampled_from(COLLECTIONS))
    member = MEMBER[collection]
    op = data.draw(st.sampled_from(["create"] * 6 + ["update"] * 3 + ["delete"] * 2 + ["show", "list"]))
    target = existing(data, ledger, collection, data.draw(st.sampled_from([MISSING, "nope", "%00", "..", "a" * 300])))
    wrapper = data.draw(st.sampled_from([member] * 12 + [collection, "x"]))
    headers = {b"Content-Type": b"application/json"}
    if not data.draw(often(4)):
        headers[b"X-Project-Id"] = data.draw(st.sampled_from([b"tenant-x", b"", b"\xff\xfe", b"a" * 300]))
    if op == "create":
        method, path, body = b"POST", f"/v2.0/{collection}", encode({wrapper: body_for(data, ledger, collection)})
    elif op == "update":
        attrs = body_for(data, ledger, collection)
        for fixed in ("network_id", "cidr", "ip_version", "name") if collection != "networks" else ():
            if data.draw(often(3)):
                attrs.pop(fixed, None)
        method, path, body = b"PUT", f"/v2.0/{collection}/{target}", encode({wrapper: attrs})
    elif op == "delete":
        method, path, body = b"DELETE", f"/v2.0/{collection}/{target}", b""
    elif op == "show":
        method, path, body = b"GET", f"/v2.0/{collection}/{target}", b""
    else:
        query = data.draw(st.lists(st.sampled_from([*KNOWN_ATTRS[collection], "id", "fields", "colour", "limit"])
                                   .flatmap(lambda k: st.tuples(st.just(k), st.text(max_size=12))), max_size=3))
        qs = "&".join(f"{k}={urllib.parse.quote(v.encode('utf-8', 'surrogatepass'), safe='=,')}" for k, v in query)
        method, path, body = b"GET", f"/v2.0/{collection}?{qs}" if qs else f"/v2.0/{collection}", b""
    target_bytes = path.encode("utf-8", "surrogatepass").replace(b" ", b"%20").replace(b"#", b"%23")
    r = send(ctrl.api_port, method, target_bytes, body, headers)
    what = f"{method.decode()} {path[:100]} {body[:300]!r}"
    check_reply(r, method, what)
    if r.status < 300 and method in (b"POST", b"PUT"):
        assert wrapper == member, what
    ident = target if method in (b"PUT", b"DELETE") else None
    if path.split("?")[0].rstrip("/") in (f"/v2.0/{collection}", f"/v2.0/{collection}/{target}"):
        ledger.record(method, collection, ident, r)


METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"TRACE", b"FOO"])
PATHS = st.one_of(
    st.sampled_from([b"/", b"/v2.0", b"/v2.0/", b"/v2.0/networks", b"/v2.0/networks.json", b"/v2.0/ports/",
                     b"/v2.0/networks/" + MISSING.encode(), b"/v2.0/routers", b"/v2.0//networks", b"/v3",
                     b"/v2.0/networks/../ports", b"/v2.0/%2e%2e/etc/passwd", b"/v2.0/networks/%ff%fe",
                     b"/v2.0/networks/\xff\xfe", b"/v2.0/networks/\xc3\xa9", b"/metrics/../v2.0/networks",
                     b"/v2.0/networks?name=%ff", b"/v2.0/networks?name=%", b"/v2.0/ports?fields=%E2%82",
                     b"/v2.0/networks?" + b"a=b&" * 500, b"/v2.0/" + b"x" * 4000, b"/v2.0/networks/%00",
                     b"/v2.0/networks;drop", b"//v2.0/networks", b"/V2.0/NETWORKS"]),
    st.binary(min_size=1, max_size=60).map(
        lambda b: b"/v2.0/" + bytes(c for c in b if c > 0x20 and c not in b"#?\x7f")),
    st.text(max_size=40).map(lambda t: b"/v2.0/networks?" + t.encode("utf-8", "surrogatepass").hex().encode()),
)
CONTENT_TYPES = st.sampled_from([b"application/json", b"text/plain", b"application/xml", b"multipart/form-data",
                                 b"application/x-www-form-urlencoded", b"application/json; charset=latin-1", b"",
                                 b"\xff\xfe", None])
BODIES = st.one_of(
    st.binary(max_size=200),
    json_values.map(encode),
    st.builds(lambda d, w: encode({w: d}), json_values, st.sampled_from(["network", "subnet", "port", "hypervisor"])),
    st.sampled_from([b"", b"{", b"{}", b"null", b"[]", b"\"network\"", b'{"network": {"name": "\xff"}}',
                     b'{"network": {"name": "\\ud800"}}', b'{"network": {"mtu": NaN}}', b'{"network": {"mtu": 1e400}}',
                     b'{"network": {}, "network": {"name": 1}}', b'\xef\xbb\xbf{"network": {}}',
                     b'{"network": {"name": "a"}}' + b" " * 10000, b"<network><name>x</name></network>"]),
    st.integers(1000, 100_000).map(lambda n: deep(n)),
    st.integers(1000, 100_000).map(lambda n: b'{"network": ' + deep(n, "{\"a\":", "}").replace(b"}", b"", 1)),
    st.sampled_from([b'{"network": {"name": "' + b"x" * (1024 * 1024 + 10) + b'"}}',
                     b'{"network": {"description": "' + b"y" * 900_000 + b'"}}']),
)


@examples(1500)
@given(method=METHODS, target=PATHS, ctype=CONTENT_TYPES, body=BODIES,
       length=st.sampled_from(["exact", "exact", "exact", "short", "none"]))
def test_hostile_requests(ctrl: ControllerProcess, ledger: Ledger, method: bytes, target: bytes,
                          ctype: bytes | None, body: bytes, length: str) -> None:
    """Random methods, paths, content types, lengths and bodies: never a 5xx, never a traceback."""
    headers = {b"Content-Type": ctype}
    if length == "short":  # a body cut short (declared length and bytes agree: anything else is a protocol error)
        body = body[: len(body) // 2]
    elif length == "none":  # no Content-Length: no body
        headers[b"Content-Length"], body = None, b""
    before = {c: ctrl.request("GET", f"/v2.0/{c}")[c] for c in ("networks",)} if method == b"POST" else None
    r = send(ctrl.api_port, method, target, body, headers)
    check_reply(r, method, f"{method!r} {target[:100]!r} {ctype!r} {body[:200]!r}", target)
    if target.startswith(b"/metrics"):  # Prometheus' app answers any method; it writes nothing
        assert r.status < 300 or r.status == 405
    elif r.status < 300 and method not in (b"GET", b"HEAD"):
        # an accepted write through this path: learn what it made (only /v2.0/<collection>[/<id>] accept writes)
        parts = target.split(b"?")[0].decode().strip("/").removesuffix(".json").split("/")
        assert parts[0] == "v2.0" and parts[1] in COLLECTIONS, (target, r.status)
        ledger.record(method, parts[1], parts[2] if len(parts) > 2 else None, r)
    elif before is not None:
        assert {c: ctrl.request("GET", f"/v2.0/{c}")[c] for c in before} == before


def test_http_level_errors_are_neutron_json(ctrl: ControllerProcess) -> None:
    """Requests http.server rejects before the app sees them still get a NeutronError (not an HTML page)."""
    for target, headers, status in ((b"/v2.0/\xa0!", {}, 400), (b"/" + b"x" * 70_000, {}, 414),
                                    (b"/v2.0/networks", {f"X-H{i}".encode(): b"y" for i in range(120)}, 431)):
        r = send(ctrl.api_port, b"GET", target, b"", headers)
        assert r.status == status
        check_reply(r, b"GET", repr(target[:40]))


def test_unread_body_does_not_cut_the_answer(ctrl: ControllerProcess, ledger: Ledger) -> None:
    """A body the API does not read (a GET's) is drained before the close: a RST would cut a large answer."""
    for _ in range(150):
        r = send(ctrl.api_port, b"POST", b"/v2.0/networks", encode({"network": {"description": "d" * 255}}))
        ledger.record(b"POST", "networks", None, r)
    for _ in range(10):
        r = send(ctrl.api_port, b"GET", b"/v2.0/networks", b"x" * 3_000_000, {b"Content-Type": b"application/json"})
        assert r.status == 200 and len(r.json()["networks"]) == len(ledger.items["networks"])


def _shown(api: ControllerProcess) -> dict[str, dict[str, dict]]:
    return {c: {i["id"]: i for i in api.request("GET", f"/v2.0/{c}")[c]} for c in COLLECTIONS}


def test_store_holds_exactly_what_was_accepted(ctrl: ControllerProcess, ledger: Ledger, tmp_path) -> None:
    """After the fuzzing: the API and a controller started on a copy of the state file show exactly the ledger."""
    shown = _shown(ctrl)
    for c in COLLECTIONS:
        assert set(shown[c]) == set(ledger.items[c]), f"{c}: API shows {len(shown[c])}, ledger has " \
            f"{len(ledger.items[c])}; extra {set(shown[c]) - set(ledger.items[c])}, " \
            f"missing {set(ledger.items[c]) - set(shown[c])}"
        for ident, item in ledger.items[c].items():
            if ident in ledger.stale:
                continue
            now = {k: v for k, v in shown[c][ident].items() if k not in DERIVED[c]}
            assert now == {k: v for k, v in item.items() if k not in DERIVED[c]}, (c, ident)
    # a consistent copy of the live database (WAL included), opened by a fresh controller
    copy = str(tmp_path / "copy.sqlite")
    with sqlite3.connect(ctrl.db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with ControllerProcess(str(tmp_path / "fresh"), db=copy) as fresh:
        assert _shown(fresh) == shown
    # not a vacuous run: the fuzzer made things and was refused things
    if ledger.resource_examples >= 2500 * SCALE:
        assert ledger.accepted >= 50 and ledger.rejected >= 500, (ledger.accepted, ledger.rejected)
        assert sum(len(v) for v in ledger.items.values()) > 0
    print(f"fuzz: {ledger.accepted} writes accepted, {ledger.rejected} requests rejected, statuses "
          f"{dict(sorted(ledger.statuses.items()))}, kept {({c: len(v) for c, v in ledger.items.items()})}")
    log = open(ctrl.log_path).read()
    assert "Traceback" not in log, ctrl.log_tail(80)
