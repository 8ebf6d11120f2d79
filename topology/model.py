"""Logical resources as immutable records.

Only the attributes the flow compiler or the store needs are typed fields; the
rest of a Neutron resource's attributes (names, descriptions, timestamps and
the like) live in ``attrs`` so that the API can round-trip them unchanged.
Records are frozen: a change is a new record (``dataclasses.replace``), which is
what lets the compiler read a graph without copying it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NETWORK_TYPES = ("vxlan", "geneve", "gre", "vlan", "flat")
OVERLAY_TYPES = ("vxlan", "geneve", "gre")


@dataclass(frozen=True)
class Network:
    """A tenant or provider L2 network."""

    id: str
    project_id: str
    key: int  # unique logical key, the value of reg6 (see flows.pipeline)
    network_type: str  # one of NETWORK_TYPES
    segmentation_id: int | None  # VNI for overlays, VLAN id for vlan, None for flat
    physical_network: str | None = None  # for vlan and flat
    mtu: int = 1450
    admin_state_up: bool = True
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Subnet:
    """An IP subnet of a network."""

    id: str
    network_id: str
    project_id: str
    cidr: str
    ip_version: int
    gateway_ip: str | None
    allocation_pools: tuple[tuple[str, str], ...] = ()
    enable_dhcp: bool = True
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class FixedIP:
    """One address of a port on one subnet."""

    subnet_id: str
    ip_address: str


@dataclass(frozen=True)
class Port:
    """A logical port (a VM NIC, a router interface, a DHCP port...)."""

    id: str
    network_id: str
    project_id: str
    key: int  # unique logical port key, the value of reg5/reg7
    mac_address: str
    fixed_ips: tuple[FixedIP, ...] = ()
    binding_host: str | None = None  # the hypervisor's name (binding:host_id)
    admin_state_up: bool = True
    device_owner: str = ""
    device_id: str = ""
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def ofport_name(self) -> str:
        """The OVS interface name Nova gives this port's tap: ``tap`` + 11 chars of id."""
        return tap_name(self.id)


def tap_name(port_id: str) -> str:
    """Nova's tap device name for a port: ``tap`` + the first 11 characters of its id."""
    return "tap" + port_id[:11]


@dataclass(frozen=True)
class Hypervisor:
    """A compute node: its integration bridge's datapath id and tunnel endpoint.

    ``bridge_mappings`` maps a physical network name to the provider bridge on
    that host; br-int reaches it through the patch port ``phy-<physnet>``.
    """

    name: str
    datapath_id: int
    tunnel_ip: str
    bridge_mappings: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The physical networks this hypervisor is a gateway for: routers whose external network is on
    # one of them may be scheduled here for source NAT (see topology.gateways).
    gateway_for: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.gateway_for, tuple):  # a list, as the store's JSON gives it back
            object.__setattr__(self, "gateway_for", tuple(self.gateway_for))


def provider_patch_name(physical_network: str) -> str:
    """The br-int side of the patch port to a physical network's bridge."""
    return "phy-" + physical_network


def provider_peer_name(physical_network: str) -> str:
    """The provider bridge's side of that patch port (Neutron's OVS agent names the pair the same way)."""
    return "int-" + physical_network


def provider_patch_ports(physical_network: str) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """The patch pair joining br-int to a physical network's bridge, as (br-int's side, the provider bridge's):
    port name -> Interface columns (``type``, ``options:peer``), in :func:`topology.gateways.tunnel_ports`'s form."""
    phy, peer = provider_patch_name(physical_network), provider_peer_name(physical_network)
    return ({phy: {"type": "patch", "options:peer": peer}}, {peer: {"type": "patch", "options:peer": phy}})


DVR_MAC_PREFIX = "fe:16:00:00:00:00"
DVR_MAC_MASK = "ff:ff:00:00:00:00"


def dvr_mac(hv: Hypervisor) -> str:
    """The hypervisor's DVR MAC: ``fe:16`` + its IPv4 tunnel address (unique per host).

    Routed frames leave a hypervisor with it as source MAC (Neutron's "DVR MAC"),
    so a router's interface MAC never appears from many hosts on a fabric.
    Locally administered, unicast, and outside the fa:16:3e range ports get.
    """
    octets = [int(x) for x in hv.tunnel_ip.split(".")] if "." in hv.tunnel_ip else [0, 0, 0, 0]
    return "fe:16:" + ":".join(f"{o:02x}" for o in octets)


TUNNEL_PORT_NAMES = {"vxlan": "tf-vxlan", "geneve": "tf-geneve", "gre": "tf-gre"}
"""The flow-based tunnel port of each overlay type on br-int (remote_ip=flow, key=flow)."""


PORT_ALIAS_SEPARATOR = "@"
"""An OVS port named ``<canonical>@<anything>`` counts as ``<canonical>`` on its bridge (see below)."""


def canonical_port_name(name: str) -> str:
    """The name the topology knows an OVS port by: ``tf-vxlan@hv7`` -> ``tf-vxlan``.

    Port names are unique within one ovs-vswitchd, so bridges that share one (the scale
    lab's hypervisors, :mod:`apps.lab.scale`) cannot each have a port ``tf-vxlan``; they
    name it ``tf-vxlan@<suffix>`` instead. A name without ``@`` (a real hypervisor's
    layout), or one starting with it, is its own canonical name. Only the first 15
    characters of a name reach OpenFlow, so the ``@`` must be within them.
    """
    base, sep, _ = name.partition(PORT_ALIAS_SEPARATOR)
    return base if sep and base else name


def canonical_port_map(ofports: Mapping[str, int]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """A bridge's port map (OVS name -> OpenFlow port) keyed by canonical name, and its clashes.

    When several ports of the bridge count as the same canonical name, the one named exactly
    so wins, else the name that sorts first: the choice depends only on the names. The
    clashes map each such canonical name to every candidate, the chosen one first.
    """
    groups: dict[str, list[str]] = {}
    for name in ofports:
        groups.setdefault(canonical_port_name(name), []).append(name)
    result: dict[str, int] = {}
    clashes: dict[str, list[str]] = {}
    for canonical, names in groups.items():
        names.sort(key=lambda n: (n != canonical, n))
        result[canonical] = ofports[names[0]]
        if len(names) > 1:
            clashes[canonical] = names
    return result, clashes
