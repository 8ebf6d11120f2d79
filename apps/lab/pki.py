"""The lab's certificates, made with ``ovs-pki`` exactly as README's operator guide does it.

``ovs-pki init`` makes two CAs: ``switchca`` signs the hypervisors' certificates (the
controller's ``--ssl-ca-cert`` is its ``cacert.pem``), ``controllerca`` the controller's (each
hypervisor's ``ovs-vsctl set-ssl`` gets its ``cacert.pem``). ``ovs-pki -u req+sign hv1 switch``
writes ``hv1-privkey.pem`` and ``hv1-cert.pem`` whose common name is ``hv1``: the hypervisor the
controller accepts that switch as.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from apps.lab import sh
from apps.lab.mgmt import ManagementNet
from controller.tls import TlsFiles


@dataclass(frozen=True)
class SwitchCertificate:
    """What one hypervisor's ``ovs-vsctl set-ssl`` takes: its key, its certificate, the controller's CA."""

    private_key: str
    certificate: str
    ca_cert: str


class Pki:
    """An ``ovs-pki`` CA pair in ``directory`` (created on first use), and certificates signed by it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.pkidir = os.path.join(directory, "pki")
        self._lock = threading.Lock()  # the lab builds its hypervisors in parallel; one CA signs at a time

    def _ovs_pki(self, *args: str) -> None:
        os.makedirs(self.directory, exist_ok=True)
        sh.run(["ovs-pki", f"--dir={self.pkidir}", f"--log={os.path.join(self.directory, 'ovs-pki.log')}", *args],
               cwd=self.directory)

    def _init(self) -> None:
        if not os.path.isdir(self.pkidir):
            self._ovs_pki("init")

    def _signed(self, name: str, kind: str) -> tuple[str, str]:
        """``NAME-privkey.pem`` and ``NAME-cert.pem``, common name ``NAME``, signed by the ``kind`` CA."""
        key, cert = (os.path.join(self.directory, f"{name}-{part}.pem") for part in ("privkey", "cert"))
        with self._lock:
            self._init()
            if not os.path.exists(cert):
                self._ovs_pki("-u", "req+sign", name, kind)
        return key, cert

    def controller(self, name: str = "ctl") -> TlsFiles:
        """The controller's ``--ssl-private-key``, ``--ssl-certificate`` and ``--ssl-ca-cert`` (the switches' CA)."""
        key, cert = self._signed(name, "controller")
        return TlsFiles(key, cert, os.path.join(self.pkidir, "switchca", "cacert.pem"))

    def switch(self, name: str) -> SwitchCertificate:
        """Hypervisor ``name``'s certificate (common name ``name``), and the CA its controller's is signed by."""
        key, cert = self._signed(name, "switch")
        return SwitchCertificate(key, cert, os.path.join(self.pkidir, "controllerca", "cacert.pem"))


@dataclass
class TlsSetup:
    """What a TLS lab needs besides the controller: the ``ovs-pki`` CA and the management network."""

    pki: Pki
    management: ManagementNet

    def controller_kwargs(self) -> dict[str, Any]:
        """:class:`apps.lab.controller.ControllerProcess`'s arguments: its certificate, TLS on the
        management network, and no plain TCP listener at all (no ``--allow-tcp``)."""
        return {"tls": self.pki.controller(), "ssl_host": self.management.address, "allow_tcp": False}

    def lab_kwargs(self, controllers: Sequence[Any]) -> dict[str, Any]:
        """:class:`apps.lab.Lab`'s arguments: a certificate per hypervisor, ``ssl:`` targets of every controller."""
        return {"controller_target": " ".join(c.ssl_target for c in controllers),
                "manager_target": " ".join(c.ovsdb_ssl_target for c in controllers),
                "pki": self.pki, "management": self.management}


@contextlib.contextmanager
def tls_setup(workdir: str | os.PathLike[str], prefix: str) -> Iterator[TlsSetup]:
    """An ``ovs-pki`` CA in ``workdir/pki`` and a management network named after ``prefix`` (removed on exit)."""
    with ManagementNet(prefix) as management:
        yield TlsSetup(Pki(os.path.join(os.fspath(workdir), "pki")), management)
