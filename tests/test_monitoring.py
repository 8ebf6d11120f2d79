"""The alert rules and the dashboard in ``examples/monitoring`` name only metrics a running controller has.

A controller on its embedded defaults, and one instance of a cluster over a real etcd (whose
cluster and store metrics a single instance has not), are scraped; every ``tenantflow_*`` name
in an alert's expression or a dashboard panel's query must be one of their metric families
(with Prometheus's ``_total``, ``_bucket``... sample suffixes). The rules file is also checked
for the shape Prometheus loads (and by ``promtool check rules`` where it is installed).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from apps.lab.controller import ApiError, ControllerProcess
from tests.etcd_fixtures import etcd, instances  # noqa: F401  (fixtures)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "monitoring"
ALERTS, DASHBOARD = EXAMPLES / "alerts.yml", EXAMPLES / "grafana-dashboard.json"
METRIC = re.compile(r"\btenantflow_[a-z0-9_]+")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def families(ctl: ControllerProcess) -> set[str]:
    """The metric family names a controller's /metrics exposes."""
    with urllib.request.urlopen(ctl.api_url + "/metrics", timeout=5) as resp:
        return {f.name for f in text_string_to_metric_families(resp.read().decode())}


@pytest.fixture(scope="module")
def exposed(etcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:  # noqa: F811
    """Every family a single controller or a cluster's instance exposes."""
    workdir = tmp_path_factory.mktemp("monitoring")
    ctl = ControllerProcess(str(workdir / "single")).start()
    try:
        names = families(ctl)
    finally:
        ctl.stop()
    with instances(etcd, workdir, "/monitoring", count=1) as ctls:
        names |= families(ctls["c0"])
    yield names


def named_metrics(texts: list[str]) -> set[str]:
    return {m for text in texts for m in METRIC.findall(text)}


def unknown(names: set[str], exposed: set[str]) -> list[str]:
    """The names that are no exposed family, with or without a sample suffix."""
    def known(name: str) -> bool:
        return name in exposed or any(name.endswith(s) and name[: -len(s)] in exposed for s in SUFFIXES)
    return sorted(n for n in names if not known(n))


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def test_the_alert_rules_have_the_shape_prometheus_loads() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert groups and all(set(g) == {"name", "rules"} and g["rules"] for g in groups)
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"} and rule["expr"].strip(), rule
        assert rule["labels"]["severity"] in ("page", "warn") and {"summary", "description"} <= set(rule["annotations"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    if shutil.which("promtool"):
        out = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_metric_the_alerts_and_the_dashboard_name_exists(exposed: set[str]) -> None:
    alerts = named_metrics([r["expr"] for r in alert_rules()])
    panels = named_metrics(dashboard_queries())
    assert len(alerts) >= 10 and len(panels) >= 15
    assert unknown(alerts, exposed) == [] and unknown(panels, exposed) == []
    # the check itself: a name no controller exposes is caught
    assert unknown({"tenantflow_flows", "tenantflow_sync_seconds_bucket", "tenantflow_no_such_total"},
                   exposed) == ["tenantflow_no_such_total"]


def test_api_answers_are_counted_by_method_and_status(tmp_path) -> None:
    """What an operator pages on for the API (its 5xx) is counted: every answer, by method and status."""
    ctl = ControllerProcess(str(tmp_path / "api")).start()
    try:
        def count(method: str, status: str) -> float:
            with urllib.request.urlopen(ctl.api_url + "/metrics", timeout=5) as resp:
                text = resp.read().decode()
            wanted = {"method": method, "status": status}
            return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                       if s.name == "tenantflow_api_requests_total" and s.labels == wanted)

        before = {k: count(*k) for k in (("GET", "200"), ("GET", "404"), ("POST", "400"), ("POST", "201"))}
        ctl.request("GET", "/v2.0/networks")
        for status, bad in ((404, lambda: ctl.request("GET", "/v2.0/networks/nope")),
                            (400, lambda: ctl.request("POST", "/v2.0/networks",
                                                      {"network": {"admin_state_up": "maybe"}}))):
            with pytest.raises(ApiError) as refused:
                bad()
            assert refused.value.status == status
        ctl.create("network", name="counted")
        after = {k: count(*k) for k in before}
        # the scrapes themselves are GETs answered 200 too: at least the one listing
        assert after[("GET", "200")] >= before[("GET", "200")] + 1
        assert {k: after[k] - before[k] for k in (("GET", "404"), ("POST", "400"), ("POST", "201"))} == {
            ("GET", "404"): 1, ("POST", "400"): 1, ("POST", "201"): 1}
    finally:
        ctl.stop()
