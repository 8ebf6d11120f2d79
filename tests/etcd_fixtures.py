"""Fixtures for tests that need a real etcd (:class:`apps.lab.etcd.EtcdCluster` on 127.0.0.1).

``etcd`` is one member, shared by a module; ``etcd3`` is three members, fresh for each test
(such tests kill and stop members). Import them into a test module::

    from tests.etcd_fixtures import etcd, etcd3  # noqa: F401  (fixtures)

Without the etcd binary they skip, and FAIL under ``CI``: the suite's one policy,
:func:`tests.lab_fixtures.unless_able`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.lab.controller import ControllerProcess
from apps.lab.etcd import EtcdCluster
from tests.lab_fixtures import unless_able

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"


def etcd_problem() -> str | None:
    """Why a real etcd cannot run here (None if it can)."""
    if not os.access(ETCD_BINARY, os.X_OK):
        return f"{ETCD_BINARY} not installed (apt-get install etcd-server)"
    return None


def require_etcd() -> None:
    """Skip (or fail under ``CI``) when there is no etcd to run."""
    unless_able(etcd_problem(), "etcd test")


_SHARED: list[EtcdCluster] = []


@contextlib.contextmanager
def instances(etcd: EtcdCluster, workdir: Path, prefix: str, *, own_member_only: bool = False,
              count: int = 3) -> Iterator[dict[str, ControllerProcess]]:
    """``count`` ``tenantflow controller`` processes c0, c1... over ``etcd`` (under ``prefix``), stopped on exit.

    Instance i talks to member i first (then the others, unless ``own_member_only``: a test
    that cuts one instance off etcd cuts its member's client port).
    """
    ctls: dict[str, ControllerProcess] = {}
    try:
        for i in range(count):
            ports = [etcd.members[(i + k) % len(etcd.members)].client_port for k in range(len(etcd.members))]
            ports = ports[:1] if own_member_only else ports
            url = "etcd://" + ",".join(f"127.0.0.1:{p}" for p in ports) + f"/{prefix}"
            ctls[f"c{i}"] = ControllerProcess(str(workdir / f"c{i}"), extra_args=[
                "--store", url, "--instance", f"c{i}"]).start(30)
        yield ctls
    finally:
        for ctl in ctls.values():
            ctl.stop()


def shared_etcd() -> EtcdCluster:
    """One one-member cluster for the whole test process (started on first use, stopped at exit)."""
    if not _SHARED:
        require_etcd()
        _SHARED.append(EtcdCluster(1, binary=ETCD_BINARY).start())
    return _SHARED[0]


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    """A one-member etcd cluster for the whole module."""
    require_etcd()
    with EtcdCluster(1, binary=ETCD_BINARY) as cluster:
        yield cluster


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    """A three-member etcd cluster of this test's own, healthy with a leader."""
    require_etcd()
    with EtcdCluster(3, binary=ETCD_BINARY) as cluster:
        yield cluster
