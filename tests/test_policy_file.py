"""An operator's oslo.policy file overrides the table (and is re-read when it changes), as Neutron's does."""

from __future__ import annotations

import os
import time

import pytest

from apps.northbound import policy
from apps.northbound.auth import Caller

MEMBER = Caller("proj-a", frozenset({"member", "reader"}))
OWN_PORT = {"project_id": "proj-a", "network:project_id": "proj-a"}


def test_the_file_overrides_the_table(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not policy.Policy().allowed(MEMBER, "create_port:binding:host_id", OWN_PORT)
    path = tmp_path / "policy.yaml"
    path.write_text('"create_port:binding:host_id": "rule:admin_only or rule:project_member"\n')
    rules = policy.Policy(str(path))
    assert rules.allowed(MEMBER, "create_port:binding:host_id", OWN_PORT)
    assert not rules.allowed(MEMBER, "update_port:binding:host_id", OWN_PORT)  # the rest: the table's
    assert rules.allowed(MEMBER, "get_network", {"project_id": "proj-a"})
    # changed on disk: taken at the next look (at most RELOAD_EVERY later), remembered decisions dropped
    monkeypatch.setattr(policy, "RELOAD_EVERY", 0.0)
    path.write_text('"create_port:binding:host_id": "rule:admin_only"\n"get_network": "!"\n')
    later = time.time() + 5
    os.utime(path, (later, later))
    assert not rules.allowed(MEMBER, "create_port:binding:host_id", OWN_PORT)
    assert not rules.allowed(MEMBER, "get_network", {"project_id": "proj-a"})
    assert rules.allowed(MEMBER, "update_network", {"project_id": "proj-a"})  # not in the file: the table's


def test_a_missing_file_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        policy.Policy(str(tmp_path / "nope.yaml"))
