"""Fixtures for tests that need a real etcd (:class:`apps.lab.etcd.EtcdCluster` on 127.0.0.1).

``etcd`` is one member, shared by a module; ``etcd3`` is three members, fresh for each test
(such tests kill and stop members). Import them into a test module::

    from tests.etcd_fixtures import etcd, etcd3  # noqa: F401  (fixtures)

Without the etcd binary they skip, and FAIL under ``CI``: the suite's one policy,
:func:`tests.lab_fixtures.unless_able`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

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
