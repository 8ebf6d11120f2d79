"""Shared pytest setup.

Tests that need root and Open vSwitch are marked ``ovs``. Outside CI they skip
when the machine cannot run them; with ``CI`` set they FAIL instead, so a CI
machine that silently lost OVS can never pass.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ovs: needs root and a real Open vSwitch")
    config.addinivalue_line("markers", "lab: runs private OVS hypervisors: needs root and the binaries, "
                            "not the host's running Open vSwitch")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(autouse=True)
def _require_ovs(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("ovs") is None:
        return
    from tests.lab_fixtures import host_ovs_problem, lab_problem, unless_able

    if request.node.get_closest_marker("lab") is not None:
        unless_able(lab_problem(), "lab test")
    else:
        unless_able(host_ovs_problem(), "real-OVS test")


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory):
    """One real Keystone for the whole session (tests/keystone_fixtures.py); FAILS under CI if it cannot run."""
    from tests.keystone_fixtures import keystone_problem, running_keystone
    from tests.lab_fixtures import unless_able

    unless_able(keystone_problem(), "Keystone test")
    yield from running_keystone(tmp_path_factory.mktemp("keystone"))


@pytest.fixture(scope="session")
def keystone_ctl(keystone, tmp_path_factory: pytest.TempPathFactory):
    """A controller with ``--auth keystone`` on the port the Keystone catalog names, for the session."""
    from tests.keystone_fixtures import keystone_controller

    with keystone_controller(keystone, tmp_path_factory.mktemp("keystone-ctl")) as ctl:
        yield ctl
