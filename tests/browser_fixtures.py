"""A real headless Chromium for the topology page's tests: Debian's ``chromium`` and ``chromium-driver``.

Both come from apt (scripts/bootstrap.sh installs them), Selenium from pip (setup.py's test
extras). Nothing is downloaded at run time: Selenium is handed the driver's path, so its
own driver manager never runs. Under ``CI`` a missing browser FAILS the test
(:func:`tests.lab_fixtures.unless_able`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from tests.lab_fixtures import unless_able

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_problem() -> str | None:
    """Why a browser test cannot run here (None if it can)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            return f"{path} missing (apt-get install {package}; scripts/bootstrap.sh)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def chromium(width: int = 1500, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium driven by Selenium, quit on exit (skipped, or failed under CI, if absent)."""
    unless_able(browser_problem(), "browser test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(arg)
    # Its own TMPDIR and profile, removed after: Chromium leaves its singleton socket's directory
    # (org.chromium.Chromium.*) in TMPDIR, one per run, if given the machine's /tmp.
    with tempfile.TemporaryDirectory(prefix="tf-chromium-") as scratch:
        options.add_argument(f"--user-data-dir={scratch}/profile")
        service = Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": scratch})
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()


def browser_errors(driver: Any) -> list[str]:
    """The page's JavaScript errors and failed loads so far (Chromium's console, level SEVERE)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
