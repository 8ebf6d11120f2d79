"""The topology page with ``--auth keystone``: the page loads, its data needs an admin's token.

Against the session's real Keystone and ``--auth keystone`` controller (tests/conftest.py).
The page's files hold no data and load without a token; ``/topology``, a port's flows and
``/trace`` answer 401 without one and 403 to a project member (they show every project). In
Chromium, the page asks for a token, keeps the one pasted in ``sessionStorage`` and sends it as
``X-Auth-Token``: with an admin's it draws the cloud.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser_fixtures import chromium
from tests.e2e_fixtures import wait_until
from tests.keystone_fixtures import Keystone, session

pytestmark = pytest.mark.slow

DATA = (("GET", "/topology"), ("GET", "/topology/ports/x/flows"), ("POST", "/trace"))


def test_data_needs_an_admin_token(keystone: Keystone, keystone_ctl: Any) -> None:
    anonymous, alice, admin = (session(keystone, keystone_ctl, u) for u in (None, "alice", "admin"))
    page = anonymous.http.get(keystone_ctl.api_url + "/ui/", timeout=10)
    assert page.status_code == 200 and b"ui.js" in page.content
    for method, path in DATA:
        assert anonymous.call(method, path, {"port_id": "x"})[0] == 401, path
        status, body = alice.call(method, path, {"port_id": "x"})
        assert status == 403 and body["NeutronError"]["type"] == "PolicyNotAuthorized", path
    status, body = admin.call("GET", "/topology")
    assert status == 200 and "nodes" in body


def test_page_asks_for_a_token_and_uses_it(keystone: Keystone, keystone_ctl: Any) -> None:
    from selenium.webdriver.common.by import By

    admin = session(keystone, keystone_ctl, "admin")
    net = admin.create("network", name="ui-auth-net")
    with chromium() as driver:
        driver.get(keystone_ctl.api_url + "/ui/")
        form = driver.find_element(By.ID, "token-form")
        wait_until(lambda: form.is_displayed(), 10, "the token form")
        assert "401" in driver.find_element(By.ID, "status").text
        driver.find_element(By.ID, "token").send_keys(keystone.tokens["admin"])
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        drawn = f'svg [data-kind="network"][data-id="{net["id"]}"]'
        wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, drawn), 10, "the network drawn with the token")
        assert driver.execute_script("return sessionStorage.getItem('tenantflow-token')") == keystone.tokens["admin"]
        assert not form.is_displayed()
        driver.find_element(By.ID, "forget-token").click()
        assert driver.execute_script("return sessionStorage.getItem('tenantflow-token')") is None
        wait_until(lambda: "401" in driver.find_element(By.ID, "status").text, 5, "401 again without it")
