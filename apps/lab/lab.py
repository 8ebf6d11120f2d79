"""The lab: hypervisors (private OVS in namespaces) on a veth underlay, and VMs on them.

Layout for ``Lab(prefix="tf1", n_hypervisors=2, provider=True)``::

    netns tf1-fabric: Linux bridges "underlay" (MTU 1600) and "provider"
        hv1-u, hv2-u  -> veths to each hypervisor's underlay0
        hv1-p, hv2-p  -> veths to each hypervisor's physnet0 (provider only)
    netns tf1-hv1: ovsdb-server + ovs-vswitchd (files in <workdir>/hv1)
        br-underlay (netdev, standalone): underlay0, IP 192.168.100.1/24 (the tunnel IP)
        br-int (netdev, secure): tf-vxlan, tf-geneve, tap<port>..., phy-physnet1
        br-phys (netdev, secure, a wire): physnet0 <-> int-physnet1
    netns tf1-vm-<name>: a Mininet Host, eth0 = the VM end of the tap's veth

Every hypervisor is built with the operator steps of :mod:`apps.lab.steps`, nothing
else. The lab removes exactly what it created: processes by PID (the daemons' pid
files and whatever runs inside its own namespaces), its namespaces (which takes
their veths and taps with them), its work directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mininet.link import Intf
from mininet.node import Host

from apps.lab import sh, steps
from apps.lab.mgmt import ManagementNet
from apps.lab.ovs import PrivateOVS
from apps.lab.pki import Pki
from apps.lab.steps import SOCKET_LINK
from topology.gateways import gateway_tunnel_name
from topology.model import TUNNEL_PORT_NAMES, provider_patch_name

LOG = logging.getLogger(__name__)

DEFAULT_API_URL = "http://127.0.0.1:9696"
UNDERLAY_NIC = "underlay0"  # the hypervisor's "physical" NIC to the underlay
PROVIDER_NIC = "physnet0"  # the hypervisor's NIC to the provider network
PROVIDER_BRIDGE = "br-phys"
MANIFEST = "lab.json"


class LabError(RuntimeError):
    """The lab cannot be built or torn down as asked."""


def _no_move(*_args: Any, **_kwargs: Any) -> bool:
    # Mininet's default moves an interface "into" a host by its name from the ROOT
    # namespace. Our eth0 is born inside the VM's namespace; looking "eth0" up in the
    # root namespace would grab the machine's own NIC.
    return True


class LabVM(Host):
    """A VM: a Mininet ``Host`` (shell in its own namespace, ``vm.cmd(...)``) plus its port."""

    netns: str
    port: dict[str, Any]
    tap: str
    hypervisor: Hypervisor

    @property
    def port_id(self) -> str:
        """The Neutron port id this VM's eth0 is bound to."""
        return str(self.port["id"])


@dataclass
class Hypervisor:
    """One compute node: a namespace with a private OVS, attached with the operator steps."""

    name: str
    index: int
    dpid: int
    tunnel_ip: str
    tunnel_prefixlen: int
    netns: str
    ovs: PrivateOVS
    bridge_mappings: dict[str, str] = field(default_factory=dict)
    controller: str | None = None
    peer_tunnel_ips: list[str] = field(default_factory=list)
    gateway_for: list[str] = field(default_factory=list)  # physical networks it is a gateway for
    managed: bool = False  # the controller is its OVSDB manager (it patches and wires the provider bridges)
    names_itself: bool = False  # attached by its system-id: the controller makes its br-int once it is registered

    @property
    def rundir(self) -> str:
        """This hypervisor's OVS run directory (db, sockets, pid files, logs)."""
        return self.ovs.rundir

    def vsctl(self, *args: str) -> str:
        """``ovs-vsctl ARGS`` against this hypervisor's database."""
        return self.ovs.vsctl(*args)

    def ofctl(self, *args: str) -> str:
        """``ovs-ofctl -O OpenFlow13 ARGS`` against this hypervisor's vswitchd (``br-int`` works)."""
        return self.ovs.ofctl(*args)

    def appctl(self, *args: str) -> str:
        """``ovs-appctl ARGS`` against this hypervisor's vswitchd."""
        return self.ovs.appctl(*args)

    def br_int_ports(self) -> set[str]:
        """br-int's port names; none while it has no br-int (the controller makes it for a host that names itself)."""
        if steps.INTEGRATION_BRIDGE not in self.vsctl("list-br").split():
            return set()
        return set(self.vsctl("list-ports", steps.INTEGRATION_BRIDGE).split())

    def ofport(self, interface: str) -> int:
        """The OpenFlow port number of ``interface`` on its bridge."""
        return int(self.vsctl("get", "interface", interface, "ofport").strip())

    def register(self, api_url: str = DEFAULT_API_URL) -> dict[str, Any]:
        """POST this hypervisor to the controller's API (operator step 6)."""
        return steps.register_hypervisor(api_url, self.name, self.dpid, self.tunnel_ip, self.bridge_mappings,
                                         gateway_for=self.gateway_for)

    def set_controller(self, target: str | None, max_backoff_ms: int | None = 1000) -> None:
        """Point br-int at ``target`` (operator step 2), or remove it."""
        self.controller = target
        if target is None:
            self.vsctl("del-controller", steps.INTEGRATION_BRIDGE)
        else:
            steps.set_controller(self.vsctl, target, max_backoff_ms)

    def kill_vswitchd(self) -> None:
        """SIGKILL ovs-vswitchd, by the PID in its pid file (a crash), and remove the file it leaves."""
        pid = self.ovs.pid("ovs-vswitchd")
        if not pid:
            raise LabError(f"{self.name}'s ovs-vswitchd is not running")
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.rundir, "ovs-vswitchd.pid"))

    def stop_vswitchd(self) -> None:
        """Stop only ovs-vswitchd (the datapath goes away; the database stays)."""
        self.ovs.stop_vswitchd()

    def start_vswitchd(self) -> None:
        """Start ovs-vswitchd again; it rebuilds bridges and ports from the database, not flows.

        The provider bridges' flows are put back (by the controller, as it keeps them, when it is
        the OVSDB manager: waited for; else by operator step 5's
        :func:`apps.lab.steps.wire_provider_bridge`), and the new vswitchd's tunnel
        neighbour cache, empty, is primed again (see :meth:`prime_tunnel_neighbours`).
        """
        self.ovs.start_vswitchd()
        self.ovs.wait_bridge(steps.INTEGRATION_BRIDGE)
        for physnet, bridge in self.bridge_mappings.items():
            self.ovs.wait_bridge(bridge)
            if not self.managed:
                steps.wire_provider_bridge(self.ofctl, physnet, bridge, PROVIDER_NIC)
        if self.managed:
            self.wait_provider_wired()
        self.prime_tunnel_neighbours()

    def provider_wired(self) -> bool:
        """Whether br-int has each provider bridge's patch port and each provider bridge its two flows."""
        ports = set(self.vsctl("list-ports", steps.INTEGRATION_BRIDGE).split())
        for physnet, bridge in self.bridge_mappings.items():
            flows = [line for line in self.ofctl("dump-flows", bridge).splitlines() if "actions=" in line]
            if provider_patch_name(physnet) not in ports or len(flows) < 2:
                return False
        return True

    def wait_provider_wired(self, timeout: float = 15.0) -> None:
        """Wait until :meth:`provider_wired` (the controller wires a managed hypervisor's provider bridges)."""
        deadline = time.monotonic() + timeout
        while not self.provider_wired():
            if time.monotonic() > deadline:
                raise LabError(f"the controller did not wire {self.name}'s provider bridges within {timeout:g} s")
            time.sleep(0.05)

    def prime_tunnel_neighbours(self) -> None:
        """Ping every peer's tunnel IP once from this hypervisor's namespace.

        OVS's native tunnelling drops the first packet to a peer whose MAC it has not
        learned yet (it ARPs and drops). The ping's ARP exchange passes through
        br-underlay, where OVS snoops it into its tunnel neighbour cache, but only when
        the reply takes the slow path: once a datapath flow matches ARP replies, the
        next peer's reply is not snooped (seen: the first packet to that peer lost in
        about one lab in four). So the kernel's answer is also given to OVS directly.
        """
        for ip in self.peer_tunnel_ips:
            sh.run(["ping", "-c1", "-W1", "-q", ip], netns=self.netns, check=False)
            fields = sh.run(["ip", "neigh", "show", ip], netns=self.netns, check=False).split()
            if "lladdr" in fields:
                mac = fields[fields.index("lladdr") + 1]
                self.appctl("tnl/neigh/set", steps.UNDERLAY_BRIDGE, ip, mac)

    def restart_vswitchd(self) -> None:
        """Stop then start ovs-vswitchd."""
        self.stop_vswitchd()
        self.start_vswitchd()

    def pids(self) -> set[int]:
        """PIDs of this hypervisor's running OVS daemons."""
        return self.ovs.pids()


class Lab:
    """A set of hypervisors on one underlay, plus VMs; a context manager that cleans up after itself.

    ``controller_unix_socket``: the controller's OpenFlow unix socket in the root namespace;
    it is symlinked into each hypervisor's run dir and br-int gets
    ``unix:<rundir>/tenantflow.sock`` (a list: a cluster's instances, br-int connects to each).
    ``controller_target``: any other OVS controller
    target, used verbatim. Neither: no controller (br-int is fail_mode=secure, so only
    flows added by hand forward anything). ``manager_unix_socket``: the controller's OVSDB
    unix socket (``--ovsdb-listen punix:PATH``; a list: a cluster's), each hypervisor's
    ovsdb-server connects to it (operator step 2's :func:`apps.lab.steps.set_manager`);
    ovsdb-server has no run-directory rule, so the path is used as it is. ``manager_target``:
    any other OVS manager target, used verbatim.

    TLS: with ``pki`` each hypervisor gets its own certificate (common name: its name) and
    ``ovs-vsctl set-ssl`` (operator step 2) before its targets, which are then ``ssl:`` ones
    (``controller_target``, ``manager_target``); ``management`` cables each hypervisor's
    ``mgmt0`` to the root namespace, where the controller listens (:mod:`apps.lab.mgmt`).
    """

    def __init__(
        self,
        prefix: str = "tf",
        n_hypervisors: int = 2,
        controller_unix_socket: str | list[str] | None = None,
        controller_target: str | None = None,
        api_url: str = DEFAULT_API_URL,
        provider: bool = False,
        physnet: str = "physnet1",
        underlay_cidr: str = "192.168.100.0/24",
        underlay_mtu: int = 1600,
        dpid_base: int | None = None,
        workdir: str | None = None,
        controller_max_backoff_ms: int | None = 1000,
        gateways: Sequence[str] = (),
        manager_unix_socket: str | list[str] | None = None,
        manager_target: str | None = None,
        pki: Pki | None = None,
        management: ManagementNet | None = None,
        names_itself: bool = False,
    ) -> None:
        if controller_unix_socket and controller_target:
            raise ValueError("give controller_unix_socket or controller_target, not both")
        if not 1 <= n_hypervisors <= 200:
            raise ValueError("n_hypervisors must be in 1..200")
        self.prefix = prefix
        self.n_hypervisors = n_hypervisors
        self.controller_unix_socket = controller_unix_socket
        self.controller_target = controller_target
        self.api_url = api_url
        self.provider = provider
        self.physnet = physnet
        self.underlay = ipaddress.ip_network(underlay_cidr)
        self.underlay_mtu = underlay_mtu
        self.controller_max_backoff_ms = controller_max_backoff_ms
        self.gateways = tuple(gateways)  # hypervisors registered as gateways for physnet (provider labs)
        sockets = [manager_unix_socket] if isinstance(manager_unix_socket, str) else manager_unix_socket or []
        self.manager_target = manager_target or " ".join(f"unix:{os.path.abspath(s)}" for s in sockets) or None
        self.pki, self.management = pki, management
        if names_itself and self.manager_target is None:
            raise ValueError("names_itself: the controller makes br-int as the hypervisors' OVSDB manager")
        self.names_itself = names_itself  # attach steps 1+2 the other way (steps.name_host): no br-int of ours
        if dpid_base is None:
            # "tf" + 16 bits of the prefix: two labs on one controller get distinct dpids
            dpid_base = (0x7466 << 48) | ((zlib.crc32(prefix.encode()) & 0xFFFF) << 16)
        self.dpid_base = dpid_base
        self.workdir = workdir or os.path.join(tempfile.gettempdir(), f"tenantflow-lab-{prefix}")
        self.fabric_netns = f"{prefix}-fabric"
        self.hypervisors: list[Hypervisor] = []
        self.vms: dict[str, LabVM] = {}
        self._namespaces: list[str] = []  # every namespace this lab created, in order
        self._lock = threading.Lock()
        self._started = False

    # -- context manager -----------------------------------------------------------
    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop(raise_errors=exc_type is None)

    # -- building --------------------------------------------------------------------
    def start(self) -> None:
        """Build the fabric and every hypervisor (in parallel); see the module docstring."""
        if self._started:
            raise LabError("lab already started")
        names = [self.fabric_netns] + [self._hv_netns(i) for i in range(1, self.n_hypervisors + 1)]
        taken = set(names) & sh.netns_list()
        if taken or os.path.exists(self.workdir):
            raise LabError(
                f"lab {self.prefix!r} seems to exist already ({sorted(taken) or self.workdir}); "
                f"if it is a leftover, run: tenantflow lab down --prefix {self.prefix}"
            )
        os.makedirs(self.workdir)
        self._started = True
        self._add_netns(self.fabric_netns)
        bridges = ["underlay"] + (["provider"] if self.provider else [])
        for br in bridges:
            sh.run(["ip", "-n", self.fabric_netns, "link", "add", br, "type", "bridge"])
            sh.run(["ip", "-n", self.fabric_netns, "link", "set", br, "mtu", str(self.underlay_mtu), "up"])
        hosts = list(self.underlay.hosts())
        with ThreadPoolExecutor(max_workers=min(8, self.n_hypervisors)) as pool:
            indexes = range(1, self.n_hypervisors + 1)
            futures = [pool.submit(self._build_hypervisor, i, str(hosts[i - 1])) for i in indexes]
            errors = [f.exception() for f in futures]
        self.hypervisors.sort(key=lambda hv: hv.index)
        for err in errors:
            if err is not None:
                raise err
        self._prime_tunnel_neighbours()

    def _hv_netns(self, index: int) -> str:
        return f"{self.prefix}-hv{index}"

    def _add_netns(self, name: str) -> None:
        sh.netns_add(name)
        with self._lock:
            self._namespaces.append(name)
            self._write_manifest()

    def _write_manifest(self) -> None:
        # Lets `tenantflow lab down --prefix` clean up after a lab whose process was killed.
        with open(os.path.join(self.workdir, MANIFEST), "w") as f:
            json.dump({"prefix": self.prefix, "namespaces": self._namespaces}, f)

    def _build_hypervisor(self, index: int, tunnel_ip: str) -> None:
        name = f"hv{index}"
        netns = self._hv_netns(index)
        self._add_netns(netns)
        hv = Hypervisor(
            name=name,
            index=index,
            dpid=self.dpid_base | index,
            tunnel_ip=tunnel_ip,
            tunnel_prefixlen=self.underlay.prefixlen,
            netns=netns,
            ovs=PrivateOVS(netns, os.path.join(self.workdir, name)),
            managed=self.manager_target is not None,
            names_itself=self.names_itself,
        )
        with self._lock:
            self.hypervisors.append(hv)
        # the hypervisor's NICs, cabled to the fabric's bridges
        sh.veth_add(UNDERLAY_NIC, netns, f"{name}-u", self.fabric_netns, mtu=self.underlay_mtu)
        sh.run(["ip", "-n", self.fabric_netns, "link", "set", f"{name}-u", "master", "underlay"])
        if self.provider:
            sh.veth_add(PROVIDER_NIC, netns, f"{name}-p", self.fabric_netns)
            sh.run(["ip", "-n", self.fabric_netns, "link", "set", f"{name}-p", "master", "provider"])
        if self.management is not None:
            self.management.attach(netns, index)
        hv.ovs.start()
        # the operator steps, in order
        if self.names_itself:
            steps.name_host(hv.vsctl, name)
        else:
            steps.add_integration_bridge(hv.vsctl, hv.dpid)
        if self.pki is not None:
            cert = self.pki.switch(name)
            steps.set_ssl(hv.vsctl, cert.private_key, cert.certificate, cert.ca_cert)
        target = self._controller_target_for(hv)  # (links the controller's socket into the run directory)
        if target is not None and self.names_itself:
            hv.controller = target  # the controller points br-int at it: unix:tenantflow.sock is that link
        elif target is not None:
            hv.set_controller(target, self.controller_max_backoff_ms)
        if self.manager_target is not None:
            steps.set_manager(hv.vsctl, self.manager_target)
        tunnel_cidr = f"{tunnel_ip}/{self.underlay.prefixlen}"
        steps.attach_underlay(hv.vsctl, netns, UNDERLAY_NIC, tunnel_cidr, self.underlay_mtu)
        if self.manager_target is None:  # else the controller makes them once hv is registered (step 4)
            steps.add_tunnel_ports(hv.vsctl, tunnel_ip)
        if self.provider:
            steps.add_provider_bridge(hv.vsctl, netns, PROVIDER_BRIDGE, PROVIDER_NIC)
            if self.manager_target is None:  # else the controller patches and wires it once hv is registered
                steps.patch_provider_bridge(hv.vsctl, self.physnet, PROVIDER_BRIDGE)
                steps.wire_provider_bridge(hv.ofctl, self.physnet, PROVIDER_BRIDGE, PROVIDER_NIC)
            hv.bridge_mappings[self.physnet] = PROVIDER_BRIDGE
            if name in self.gateways:
                hv.gateway_for.append(self.physnet)
        if not self.names_itself:  # else br-int comes once hv is registered (register_hypervisors waits for it)
            hv.ovs.wait_bridge(steps.INTEGRATION_BRIDGE)

    def _controller_target_for(self, hv: Hypervisor) -> str | None:
        if self.controller_target:
            return self.controller_target
        if not self.controller_unix_socket:
            return None
        # OVS refuses unix: controllers outside its run dir; a symlink there is accepted
        # and still reaches the controller's socket in the root namespace (a unix socket
        # is a file, not bound to a network namespace).
        sockets = self.controller_unix_socket
        if isinstance(sockets, str):
            sockets = [sockets]
        return " ".join(
            steps.link_controller_socket(os.path.abspath(sock), hv.rundir,
                                         SOCKET_LINK if i == 0 else SOCKET_LINK.replace(".sock", f"-{i}.sock"))
            for i, sock in enumerate(sockets))

    def _prime_tunnel_neighbours(self) -> None:
        # Without this, the first packet of every VM pair's first exchange is lost.
        for hv in self.hypervisors:
            hv.peer_tunnel_ips = [peer.tunnel_ip for peer in self.hypervisors if peer is not hv]
        with ThreadPoolExecutor(max_workers=min(8, len(self.hypervisors))) as pool:
            list(pool.map(Hypervisor.prime_tunnel_neighbours, self.hypervisors))

    # -- lookups -------------------------------------------------------------------
    def hypervisor(self, name: str) -> Hypervisor:
        """The hypervisor called ``name`` (``hv1``...)."""
        for hv in self.hypervisors:
            if hv.name == name:
                return hv
        raise KeyError(f"no hypervisor {name!r} in lab {self.prefix!r}")

    def register_hypervisors(self, api_url: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """POST every hypervisor to the controller's API; returns the responses.

        With the controller as OVSDB manager, it then creates each one's overlay tunnel ports
        (operator step 4) and patches and wires its provider bridges (step 5): wait for them, as an
        operator checks ``ovs-vsctl list-ports br-int`` and ``ovs-ofctl dump-flows br-phys``.
        """
        answers = [hv.register(api_url or self.api_url) for hv in self.hypervisors]
        if self.manager_target is not None:
            deadline = time.monotonic() + timeout
            missing = list(self.hypervisors)
            while missing:
                missing = [hv for hv in missing if not set(TUNNEL_PORT_NAMES.values()) <= hv.br_int_ports()]
                if missing and time.monotonic() > deadline:
                    raise LabError(f"the controller made no overlay tunnel ports on {[hv.name for hv in missing]} "
                                   f"within {timeout:g} s of their registration")
                if missing:
                    time.sleep(0.05)
            for hv in self.hypervisors:
                hv.wait_provider_wired(max(0.1, deadline - time.monotonic()) + 5)
        return answers

    def gateway_tunnels_up(self) -> bool:
        """Whether every BFD session of the gateway tunnels is up: each hypervisor's to each gateway,
        and each gateway's to every other hypervisor (as ``ovs-vsctl`` reads them in each one)."""
        for hv in self.hypervisors:
            for peer in self.hypervisors:
                if peer is hv or (hv.name not in self.gateways and peer.name not in self.gateways):
                    continue
                port = gateway_tunnel_name(peer.tunnel_ip)
                if hv.vsctl("--if-exists", "get", "interface", port, "bfd_status:state").strip().strip('"') != "up":
                    return False
        return True

    def namespaces(self) -> list[str]:
        """Names of the namespaces this lab has created and not yet deleted."""
        with self._lock:
            return list(self._namespaces)

    def pids(self) -> set[int]:
        """Every live process this lab owns: OVS daemons, VM shells, anything run in its namespaces."""
        pids: set[int] = set()
        for hv in self.hypervisors:
            pids |= hv.pids()
        for vm in self.vms.values():
            if vm.shell is not None:
                pids.add(vm.pid)
        for ns in self.namespaces():
            pids |= sh.netns_pids(ns)
        return {p for p in pids if sh.pid_alive(p)}

    # -- VMs -------------------------------------------------------------------------
    def plug_vm(
        self,
        name: str,
        port: Mapping[str, Any],
        prefixlen: int = 24,
        mtu: int = 1450,
        gateway: str | None = None,
        hypervisor: str | None = None,
        dhcp: bool = False,
    ) -> LabVM:
        """Boot VM ``name`` with ``port`` (Neutron port JSON) plugged, on ``port['binding:host_id']``.

        ``hypervisor`` overrides the binding. The VM's eth0 gets the port's MAC, its fixed
        IPs with ``prefixlen``, MTU ``mtu`` and a default route via ``gateway`` if given; with
        ``dhcp``, no address at all (as a stock image boots): :meth:`request_address` takes one.
        """
        hv_name = hypervisor or port.get("binding:host_id")
        if not hv_name:
            raise ValueError(f"port {port.get('id')} has no binding:host_id; pass hypervisor=")
        hv = self.hypervisor(hv_name)
        if name in self.vms:
            raise LabError(f"VM {name!r} already exists")
        netns = f"{self.prefix}-vm-{name}"
        vm = LabVM(name)
        vm.netns, vm.port, vm.hypervisor, vm.tap = netns, dict(port), hv, ""
        self.vms[name] = vm
        try:
            sh.netns_attach(netns, vm.pid)
            with self._lock:
                self._namespaces.append(netns)
                self._write_manifest()
            vm.tap = steps.plug_vif(hv.vsctl, hv.netns, netns, port, name, mtu=mtu)
            intf = Intf("eth0", node=vm, moveIntfFn=_no_move)
            cidrs = steps.configure_vm_nic(netns, {**port, "fixed_ips": []} if dhcp else port, prefixlen, gateway)
            intf.mac = port["mac_address"]
            if cidrs:
                intf.ip, plen = cidrs[0].split("/")
                intf.prefixLen = int(plen)
        except BaseException:
            self.unplug_vm(vm)
            raise
        return vm

    def request_address(self, vm: LabVM) -> dict[str, str]:
        """The VM takes its address by DHCP (operator step 8, the guest's); what the lease gave."""
        lease = steps.request_address(vm.netns, self.workdir)
        vm.intf("eth0").ip = lease["ip"]
        return lease

    def add_outside_host(self, name: str, cidr: str, gateway: str | None = None) -> LabVM:
        """A host outside the cloud, on the provider network itself (an upstream router, an Internet client).

        Its ``eth0`` is cabled straight to the fabric's provider bridge, the physical
        network every hypervisor's provider bridge also reaches, with address ``cidr``
        and a default route via ``gateway`` if given. Removed like a VM (:meth:`unplug_vm`).
        """
        if not self.provider:
            raise LabError("an outside host needs a lab with provider=True")
        if name in self.vms:
            raise LabError(f"host {name!r} already exists")
        netns = f"{self.prefix}-out-{name}"
        host = LabVM(name)
        host.netns, host.port, host.tap = netns, {}, ""
        self.vms[name] = host
        try:
            sh.netns_attach(netns, host.pid)
            with self._lock:
                self._namespaces.append(netns)
                self._write_manifest()
            cable = f"out-{name}"[:15]
            sh.veth_add("eth0", netns, cable, self.fabric_netns)
            sh.run(["ip", "-n", self.fabric_netns, "link", "set", cable, "master", "provider"])
            sh.run(["ip", "-n", netns, "addr", "add", cidr, "dev", "eth0"])
            if gateway:
                sh.run(["ip", "-n", netns, "route", "replace", "default", "via", gateway, "dev", "eth0"])
            intf = Intf("eth0", node=host, moveIntfFn=_no_move)
            intf.ip, plen = cidr.split("/")
            intf.prefixLen = int(plen)
        except BaseException:
            self.unplug_vm(host)
            raise
        return host

    def unplug_vm(self, vm: LabVM) -> None:
        """Unplug the VM's tap from br-int, stop everything running in the VM, delete its namespace."""
        if vm.tap:
            steps.unplug_vif(vm.hypervisor.vsctl, vm.hypervisor.netns, vm.tap)
        self._destroy_netns(getattr(vm, "netns", None), vm)
        self.vms.pop(vm.name, None)

    def _destroy_netns(self, netns: str | None, host: Host | None = None) -> None:
        stragglers = sh.netns_pids(netns) if netns else set()
        if host is not None and host.shell is not None:
            stragglers.add(host.pid)
            with contextlib.suppress(Exception):
                host.terminate()  # SIGHUP to the shell's process group, closes the pty
        sh.kill_pids(stragglers | (sh.netns_pids(netns) if netns else set()))
        if netns:
            sh.netns_del(netns)
            with self._lock:
                if netns in self._namespaces:
                    self._namespaces.remove(netns)
                if os.path.isdir(self.workdir):
                    self._write_manifest()

    # -- teardown --------------------------------------------------------------------
    def stop(self, raise_errors: bool = False) -> None:
        """Remove everything the lab created; safe to call twice and after a failed start."""
        errors: list[BaseException] = []

        def attempt(fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # keep tearing down, report at the end
                LOG.warning("lab %s teardown: %s", self.prefix, exc)
                errors.append(exc)

        for vm in list(self.vms.values()):
            attempt(self.unplug_vm, vm)
        for hv in self.hypervisors:
            attempt(hv.ovs.stop)
        for ns in reversed(self.namespaces()):
            # deleting a namespace destroys the veths and taps in it; the fabric's ends
            # of the hypervisors' veths go with their peers
            attempt(self._destroy_netns, ns)
        self.hypervisors = []
        if self._started and os.path.isdir(self.workdir):
            attempt(shutil.rmtree, self.workdir)
        self._started = False
        if errors and raise_errors:
            raise LabError(f"lab {self.prefix!r} teardown had {len(errors)} error(s): {errors[0]}")

    def __iter__(self) -> Iterator[Hypervisor]:
        return iter(self.hypervisors)


def destroy_stale(prefix: str, workdir: str | None = None) -> list[str]:
    """Tear down what a killed lab left: its namespaces (with every process in them) and work dir.

    Reads the manifest the lab keeps in its work dir, so only namespaces that lab created
    are touched. Returns the names of the namespaces removed.
    """
    workdir = workdir or os.path.join(tempfile.gettempdir(), f"tenantflow-lab-{prefix}")
    try:
        with open(os.path.join(workdir, MANIFEST)) as f:
            namespaces = list(json.load(f)["namespaces"])
    except FileNotFoundError:
        namespaces = []
    existing = sh.netns_list()
    removed = []
    for ns in reversed(namespaces):
        if ns in existing:
            sh.kill_pids(sh.netns_pids(ns))
            sh.netns_del(ns)
            removed.append(ns)
    if os.path.isdir(workdir):
        shutil.rmtree(workdir)
    return removed
