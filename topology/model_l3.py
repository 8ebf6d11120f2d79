"""Routers, floating IPs and security groups as immutable records (see :mod:`topology.model`).

What the later compilers need is typed: a router's logical key, gateway and
extra routes; a floating IP's address and the (port, fixed address) it maps
to; every field of a security group rule. Names, descriptions and timestamps
live in ``attrs``. Router interface and gateway ports are ordinary
:class:`topology.model.Port` records (``device_owner`` ``network:router_*``,
``device_id`` the router's id); so is the port that holds a floating IP's
address on the external network (``network:floatingip``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROUTER_INTERFACE = "network:router_interface"
ROUTER_GATEWAY = "network:router_gateway"
FLOATINGIP_OWNER = "network:floatingip"
ROUTER_OWNERS = frozenset({ROUTER_INTERFACE, ROUTER_GATEWAY, "network:router_interface_distributed",
                           "network:ha_router_replicated_interface"})
SERVICE_OWNERS = ROUTER_OWNERS | {FLOATINGIP_OWNER}  # ports only their owner may delete


@dataclass(frozen=True)
class Router:
    """A logical router; its interfaces are the ports whose ``device_id`` is its id."""

    id: str
    project_id: str
    key: int  # unique logical router key (for the routing stage's registers)
    admin_state_up: bool = True
    gw_network_id: str | None = None  # external network of the gateway, if any
    gw_port_id: str | None = None  # the network:router_gateway port on it
    enable_snat: bool = True
    routes: tuple[tuple[str, str], ...] = ()  # extra routes: (destination CIDR, nexthop)
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The gateway hypervisors its gateway is scheduled on, in priority order (topology.gateways).
    gateway_hosts: tuple[str, ...] = ()
    # The conntrack zone of its source NAT on its gateways, unique among routers (0: none yet).
    snat_zone: int = 0


@dataclass(frozen=True)
class FloatingIP:
    """A public address of an external network, optionally mapped to a port's fixed address."""

    id: str
    project_id: str
    floating_network_id: str
    floating_ip_address: str
    floating_port_id: str  # the network:floatingip port holding the address
    port_id: str | None = None  # the associated port
    fixed_ip_address: str | None = None
    router_id: str | None = None  # the router that NATs it (computed at association)
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class SecurityGroup:
    """A security group; its rules are :class:`SecurityGroupRule` records."""

    id: str
    project_id: str
    name: str = ""
    is_default: bool = False
    stateful: bool = True
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class SecurityGroupRule:
    """One rule: traffic in ``direction`` matching all the given fields is allowed."""

    id: str
    project_id: str
    security_group_id: str
    direction: str  # "ingress" or "egress"
    ethertype: str = "IPv4"  # or "IPv6"
    protocol: str | None = None  # a name ("tcp") or a number as a string ("132"), None: any
    port_range_min: int | None = None  # ICMP: type
    port_range_max: int | None = None  # ICMP: code
    remote_ip_prefix: str | None = None  # normalised CIDR
    remote_group_id: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __hash__(self) -> int:
        # Cached: a rule is part of the memo key of its flows for every member port (flows.acl), so
        # adding one to a group of 20,000 ports hashed it 60,000 times over its ten fields.
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.id, self.project_id, self.signature()))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        # String hashes differ between processes: a copy made elsewhere hashes itself again.
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def signature(self) -> tuple:
        """What makes two rules duplicates (Neutron compares every field but ids and description)."""
        return (self.security_group_id, self.direction, self.ethertype, self.protocol, self.port_range_min,
                self.port_range_max, self.remote_ip_prefix, self.remote_group_id)
