"""Two controller instances over etcd: only the master of a hypervisor's bridge writes its OVSDB.

Every hypervisor's ovsdb-server connects to both instances (``set-manager`` with both
targets, as ``set-controller``), and both read its BFD state; each bridge's gateway tunnel
ports are written by the one instance the cluster's view gives the bridge to, the same one
that masters it over OpenFlow. When that instance dies, the survivor takes over the
hypervisor's OVSDB as well: it finds the ports as they must be and writes nothing, BFD does
not flap, and from then on it is the one that changes them.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.lab import Lab
from apps.lab.controller import ControllerProcess
from apps.lab.etcd import EtcdCluster
from tests.e2e_fixtures import wait_until
from tests.etcd_fixtures import ETCD_BINARY, instances, require_etcd
from tests.lab_fixtures import lab_prefix, require_lab
from tests.test_ovsdb import all_up, expected_ports, tg_rows

pytestmark = [pytest.mark.ovs, pytest.mark.lab]


def transactions(ctl: ControllerProcess) -> dict[str, float]:
    """``tenantflow_ovsdb_transactions_total`` of one instance, by hypervisor."""
    with urllib.request.urlopen(ctl.api_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "tenantflow_ovsdb_transactions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    name = sample.labels["hypervisor"]
                    out[name] = out.get(name, 0.0) + sample.value
    return out


def writers(ctls: dict[str, ControllerProcess]) -> dict[str, list[str]]:
    """hypervisor -> the instances that say they write its OVSDB."""
    out: dict[str, list[str]] = {}
    for name, ctl in ctls.items():
        for hv, state in ctl.request("GET", "/ovsdb")["hypervisors"].items():
            if state["writer"]:
                out.setdefault(hv, []).append(name)
    return out


def masters(ctls: dict[str, ControllerProcess]) -> dict[str, str]:
    """hypervisor -> the instance mastering its bridge over OpenFlow."""
    return {hv: name for name, ctl in ctls.items() for hv in ctl.request("GET", "/sync")["mastered"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, ControllerProcess], Lab]]:
    """A one-member etcd, instances c0 and c1, 3 hypervisors managed by both; hv1 a gateway."""
    require_lab()
    require_etcd()
    work = tmp_path_factory.mktemp("ovsdbcl")
    with EtcdCluster(1, binary=ETCD_BINARY) as etcd, instances(etcd, work, "ovsdb", count=2) as ctls, \
            Lab(prefix=lab_prefix("oc"), n_hypervisors=3, controller_unix_socket=[c.unix_socket for c in ctls.values()],
                manager_unix_socket=[c.ovsdb_socket for c in ctls.values()], api_url=ctls["c0"].api_url) as lab:
        for hv in lab.hypervisors:
            body = {"name": hv.name, "datapath_id": f"{hv.dpid:016x}", "tunnel_ip": hv.tunnel_ip,
                    "gateway_for": ["physnet1"] if hv.name == "hv1" else []}
            ctls["c0"].request("POST", "/v2.0/hypervisors", {"hypervisor": body})
        yield ctls, lab


def test_only_the_master_writes_and_the_survivor_takes_over(cluster) -> None:
    ctls, lab = cluster
    names = ["hv1", "hv2", "hv3"]
    logs = lambda: "\n".join(f"--- {n}:\n{c.log_tail(15)}" for n, c in ctls.items())  # noqa: E731
    want = expected_ports(lab, {"hv1"})
    wait_until(lambda: {hv.name: set(tg_rows(hv)) for hv in lab.hypervisors} == want, 20,
               lambda: f"the tg- ports\n{logs()}")
    wait_until(lambda: all_up(lab), 15, "BFD up everywhere")
    wait_until(lambda: sorted(masters(ctls)) == names and all(len(w) == 1 for w in writers(ctls).values())
               and sorted(writers(ctls)) == names, 20, lambda: f"one writer per hypervisor\n{logs()}")
    who = {hv: w[0] for hv, w in writers(ctls).items()}
    assert who == masters(ctls), "the OVSDB writer is the bridge's OpenFlow master"
    for name, ctl in ctls.items():
        status = ctl.request("GET", "/ovsdb")
        assert sorted(status["hypervisors"]) == names, f"{name} reads every hypervisor's OVSDB"
        written = {hv for hv, n in transactions(ctl).items() if n}
        assert written <= {hv for hv, w in who.items() if w == name}, f"{name} wrote only what it masters"

    victim = who["hv1"]
    survivor = next(n for n in ctls if n != victim)
    before = {hv.name: {n: (r["_uuid"], r["bfd_status"]["flap_count"]) for n, r in tg_rows(hv).items()}
              for hv in lab.hypervisors}
    written_before = transactions(ctls[survivor])
    ctls[victim].kill()
    wait_until(lambda: writers({survivor: ctls[survivor]}) == {hv: [survivor] for hv in names}, 20,
               lambda: f"{survivor} writing every hypervisor\n{logs()}")
    after = {hv.name: {n: (r["_uuid"], r["bfd_status"]["flap_count"]) for n, r in tg_rows(hv).items()}
             for hv in lab.hypervisors}
    assert after == before and all_up(lab), "taken over without a rewrite or a BFD flap"
    assert transactions(ctls[survivor]) == written_before, "the survivor found nothing to write"

    ctls[survivor].request("PUT", "/v2.0/hypervisors/hv1", {"hypervisor": {"gateway_for": []}})
    wait_until(lambda: all(not tg_rows(hv) for hv in lab.hypervisors), 15,
               lambda: f"the survivor removing the ports\n{logs()}")
