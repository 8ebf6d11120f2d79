"""Issue #16 item 2: the topology page (``/ui``) in a real headless Chromium against a real controller and lab.

One controller, a lab of three hypervisors (private OVS instances) and a demo-like cloud made
through the API: an external network, two tenants on the same CIDR, a router with two
subnets, ports on every hypervisor, a floating IP, and two VMs really plugged (their taps on
br-int). The page is asserted on through its DOM (``data-*`` attributes): every network,
subnet, router, floating IP and port is drawn, each port inside the box of the hypervisor the
API binds it to; a port created through the API appears within 2 s; a bridge whose controller
is removed shows ``down`` (and ``up`` again once it is back); a trace run from a port's panel
shows where the packet was delivered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from apps.lab import Lab
from apps.lab.controller import ControllerProcess
from flows.pipeline import STAGE_BY_TABLE
from tests.browser_fixtures import browser_errors, chromium
from tests.e2e_fixtures import (
    attached_lab,
    compiled,
    create_network,
    create_port,
    dump_flows,
    require_lab,
    running_controller,
    wait_until,
)

pytestmark = pytest.mark.ovs

# What the page's DOM holds, read in one call: every drawn element and, for ports, the hypervisor
# box it sits in (its ancestor) and whether it lies inside that box on the screen.
DOM_STATE = """
const inside = (a, b) => { const r = a.getBoundingClientRect(), o = b.getBoundingClientRect();
  return r.left >= o.left && r.right <= o.right && r.top >= o.top && r.bottom <= o.bottom; };
return [...document.querySelectorAll('svg [data-kind]')].map((e) => {
  const hv = e.parentElement.closest('[data-kind="hypervisor"]');
  return {kind: e.dataset.kind, id: e.dataset.id, state: e.dataset.state || null, plugged: e.dataset.plugged || null,
          hv: hv ? hv.dataset.name : null, inside: hv ? inside(e, hv) : null};
});
"""


@dataclass
class Cloud:
    """The controller, the lab and what the test made through the API."""

    ctrl: ControllerProcess
    lab: Lab
    networks: list[dict] = field(default_factory=list)
    subnets: list[dict] = field(default_factory=list)
    routers: list[dict] = field(default_factory=list)
    ports: dict[str, dict] = field(default_factory=dict)  # VM name -> port
    fips: list[dict] = field(default_factory=list)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    require_lab()
    with running_controller(tmp_path_factory.mktemp("ui")) as ctrl, \
            attached_lab(ctrl, "tfui", 3, provider=True, gateways=("hv3",)) as lab:
        c = Cloud(ctrl, lab)
        ext = ctrl.create("network", name="ext", **{"router:external": True, "provider:network_type": "flat",
                                                    "provider:physical_network": lab.physnet})
        c.networks.append(ext)
        c.subnets.append(ctrl.create("subnet", network_id=ext["id"], cidr="172.24.4.0/24", gateway_ip="172.24.4.1",
                                     enable_dhcp=False))
        for tenant, cidrs in (("tenant-a", ("10.0.0.0/24", "10.0.1.0/24")), ("tenant-b", ("10.0.0.0/24",))):
            router = ctrl.create("router", name=f"{tenant}-router", project_id=tenant,
                                 external_gateway_info={"network_id": ext["id"]})
            c.routers.append(router)
            for i, cidr in enumerate(cidrs):
                net, subnet = create_network(ctrl, f"{tenant}-net{i}", cidr, project_id=tenant)
                c.networks.append(net)
                c.subnets.append(subnet)
                ctrl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": subnet["id"]})
                for n in (1, 2, 3):  # the second subnet of tenant-a only on hv2
                    if i == 0 or n == 2:
                        name = f"{tenant[-1]}{n}" + ("-2" if i else "")
                        c.ports[name] = create_port(ctrl, net, f"hv{n}", name=name)
        c.fips.append(ctrl.create("floatingip", floating_network_id=ext["id"], port_id=c.ports["a1"]["id"],
                                  project_id="tenant-a"))
        for name in ("a1", "a3", "a2-2"):  # plugged: their taps on br-int, what a trace starts from and reaches
            lab.plug_vm(name, c.ports[name])
        ctrl.request("GET", "/sync?wait=30")
        yield c


@pytest.fixture(scope="module")
def page(cloud: Cloud) -> Iterator[Any]:
    with chromium() as driver:
        driver.get(cloud.ctrl.api_url + "/ui")
        wait_until(lambda: _dom(driver), 10, "the page's first drawing")
        yield driver
        assert browser_errors(driver) == []


def _dom(driver: Any) -> list[dict]:
    return driver.execute_script(DOM_STATE)


def _click(driver: Any, css: str, top: bool = False) -> None:
    """Click the element ``css`` selects (``top``: 8 px below its top edge, not in its middle).

    The drawing is redone every second: the click is tried again if the element went stale.
    """
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    def attempt() -> bool:
        try:
            el = driver.find_element(By.CSS_SELECTOR, css)
            dy = 8 - el.size["height"] // 2 if top else 0
            ActionChains(driver).move_to_element_with_offset(el, 0, dy).click().perform()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    wait_until(attempt, 5, f"a click on {css}")


def _find(driver: Any, kind: str, ident: str) -> dict | None:
    return next((e for e in _dom(driver) if e["kind"] == kind and e["id"] == ident), None)


def test_renders_every_resource_on_its_hypervisor(cloud: Cloud, page: Any) -> None:
    def drawn() -> dict:
        return {(e["kind"], e["id"]): e for e in _dom(page)}

    # the page may have drawn before the last write: wait for the plugged VMs' ports
    items = wait_until(lambda: (d := drawn()) and all(("port", p["id"]) in d for p in cloud.ports.values()) and d,
                       5, "every port drawn")
    for kind, made in (("network", cloud.networks), ("subnet", cloud.subnets), ("router", cloud.routers),
                       ("fip", cloud.fips)):
        assert {m["id"] for m in made} <= {i for k, i in items if k == kind}, kind
    for name, port in cloud.ports.items():
        el = items[("port", port["id"])]
        assert el["hv"] == port["binding:host_id"], f"{name} drawn on {el['hv']}"
        assert el["inside"], f"{name} drawn outside its hypervisor's box"
    states = {e["id"]: e["state"] for e in items.values() if e["kind"] == "hypervisor"}
    assert states == {"hv1": "up", "hv2": "up", "hv3": "up"}
    # the router interface, gateway and floating IP ports are drawn as their router and FIP, not on a hypervisor
    assert sum(1 for k, _ in items if k == "port") == len(cloud.ports)


def test_a_port_created_through_the_api_appears_within_2s(cloud: Cloud, page: Any) -> None:
    net = cloud.networks[1]
    port = create_port(cloud.ctrl, net, "hv2", name="late")
    created = time.monotonic()
    el = wait_until(lambda: _find(page, "port", port["id"]), 5, "the new port on the page", interval=0.02)
    seen = time.monotonic() - created
    print(f"\nport created through the API drawn {seen:.2f} s later")
    assert el["hv"] == "hv2" and el["inside"]
    assert seen < 2.0
    cloud.ctrl.delete("port", port["id"])
    wait_until(lambda: _find(page, "port", port["id"]) is None, 5, "the deleted port gone from the page")


def test_a_disconnected_bridge_shows_down_then_up(cloud: Cloud, page: Any) -> None:
    hv = cloud.lab.hypervisor("hv2")
    target, plugged = hv.controller, cloud.ports["a2-2"]["id"]
    assert _find(page, "port", plugged)["plugged"] == "true"
    hv.set_controller(None)  # OVS closes its connection to the controller
    try:
        wait_until(lambda: (_find(page, "hypervisor", "hv2") or {}).get("state") == "down", 10, "hv2 shown down")
        assert _find(page, "hypervisor", "hv1")["state"] == "up"
        # its bridge is away: the VM plugged there is shown unplugged (its last port map is only kept for its flows)
        wait_until(lambda: _find(page, "port", plugged)["plugged"] == "false", 5, "a2-2 shown unplugged")
    finally:
        hv.set_controller(target)
    wait_until(lambda: (_find(page, "hypervisor", "hv2") or {}).get("state") == "up", 15, "hv2 shown up again")
    wait_until(lambda: _find(page, "port", plugged)["plugged"] == "true", 5, "a2-2 shown plugged again")


def test_flows_per_stage_of_a_hypervisor(cloud: Cloud, page: Any) -> None:
    """A hypervisor's panel: its flows per stage, compiled and on the bridge, as the switch itself counts them."""
    hv = cloud.lab.hypervisor("hv1")
    cloud.ctrl.request("GET", "/sync?wait=30")
    want = Counter(STAGE_BY_TABLE[f.table_id].name for f in compiled(cloud.ctrl, hv))
    on_bridge = Counter(STAGE_BY_TABLE[f.table].name for f in dump_flows(hv))
    assert want == on_bridge  # synced (nothing learned by the switch here: no external traffic)
    _click(page, 'svg [data-kind="hypervisor"][data-id="hv1"]', top=True)  # its middle may be a port

    def shown() -> tuple[Counter, Counter]:
        rows = page.execute_script(
            "return [...document.querySelectorAll('#stage-flows tr[data-stage]')]"
            ".map((r) => [r.dataset.stage, ...[...r.cells].slice(1).map((c) => c.textContent)]);")
        return Counter({s: int(a) for s, a, _ in rows}), Counter({s: int(b) for s, _, b in rows})

    assert wait_until(lambda: shown()[0] == want and shown(), 5, "hv1's flows per stage")[1] == on_bridge
    assert f"{sum(want.values())} flows" in page.execute_script(
        "return document.querySelector('svg [data-kind=\"hypervisor\"][data-id=\"hv1\"]').textContent")


def test_trace_from_a_port(cloud: Cloud, page: Any) -> None:
    from selenium.webdriver.common.by import By

    a1, a3 = cloud.ports["a1"], cloud.ports["a3"]
    _click(page, f'svg [data-kind="port"][data-id="{a1["id"]}"]')
    flows = wait_until(lambda: page.find_element(By.ID, "port-flows").get_attribute("data-count"), 5, "its flows")
    assert int(flows) > 0
    packet = page.find_element(By.ID, "trace-packet")
    packet.clear()
    packet.send_keys(f"ipv4_dst={a3['fixed_ips'][0]['ip_address']}")
    page.find_element(By.ID, "trace-run").click()
    summary = page.find_element(By.ID, "trace-summary")
    wait_until(lambda: summary.get_attribute("data-state") in ("done", "error"), 10, "the trace's answer")
    assert summary.get_attribute("data-state") == "done", summary.text
    # a1 (hv1) to a3 (hv3), same network: over the tunnel, delivered to a3's port only
    assert summary.get_attribute("data-delivered").split() == [a3["id"]]
    output = page.find_element(By.ID, "trace-output").text
    assert "== hv1:" in output and "== hv3:" in output and "ls_in_port_sec" in output


def test_trace_routed_through_the_api(cloud: Cloud) -> None:
    """POST /trace on its own: a1 (hv1, 10.0.0.0/24) to a2-2 (hv2, 10.0.1.0/24), routed in one hop on hv1."""
    a1, target = cloud.ports["a1"], cloud.ports["a2-2"]
    answer = cloud.ctrl.request("POST", "/trace", {"port_id": a1["id"],
                                                   "packet": f"ipv4_dst={target['fixed_ips'][0]['ip_address']}"})
    assert [d["port_id"] for d in answer["delivered"]] == [target["id"]]
    assert answer["delivered"][0]["hypervisor"] == "hv2" and not answer["errors"]
    text = "\n".join(answer["lines"])
    assert "lr_in_ip_routing" in text and text.index("== hv1:") < text.index("lr_in_ip_routing") < text.index("== hv2:")
