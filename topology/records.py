"""The stored record kinds, declared once: identity, encoding, and what must stay unique.

Every store (:mod:`topology.store_sqlite`, :mod:`topology.store_etcd`) persists the same
eight kinds of record and enforces the same rules, whatever validation did above it:

- **unique keys**: a value two records may never share (a port's logical key, a MAC in
  its network, an address in its subnet, a conntrack zone on its host, a segment...).
  SQLite declares them as constraints; etcd holds one index key per value, created only
  if absent (compare-and-swap), so two instances writing at once cannot both take it.
- **parents**: the records a record refers to, which must exist when it is written
  and cannot be deleted while it refers to them.
- **guards**: a value two concurrent writes must not both change on stale knowledge
  (the subnets of one network must not overlap, so every subnet write of a network
  touches its guard; a write validated on an older view fails and is retried).

A write is a list of operations, in order: a record to put (create or replace) or a
:class:`Deleted`. Order matters: a floating IP follows its port, a port its network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from topology.model import FixedIP, Hypervisor, Network, Port, Subnet
from topology.model_l3 import FloatingIP, Router, SecurityGroup, SecurityGroupRule

Record = Network | Subnet | Port | Hypervisor | Router | FloatingIP | SecurityGroup | SecurityGroupRule


class Deleted:
    """A record to delete: ``Deleted("sg_rule", id)`` in a list of operations."""

    __slots__ = ("kind", "ident")

    def __init__(self, kind: str, ident: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        self.kind, self.ident = kind, ident

    def __repr__(self) -> str:
        return f"Deleted({self.kind!r}, {self.ident!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Deleted) and (self.kind, self.ident) == (other.kind, other.ident)

    def __hash__(self) -> int:
        return hash((self.kind, self.ident))


Op = Record | Deleted


def segment_name(net: Network) -> str | None:
    """The unique segment a network occupies on the fabric (None: it occupies none)."""
    if net.network_type == "flat":
        return f"flat:{net.physical_network}"
    if net.network_type == "vlan":
        return f"vlan:{net.physical_network}:{net.segmentation_id}"
    return f"{net.network_type}:{net.segmentation_id}"


def _port_unique(port: Port) -> tuple[str, ...]:
    keys = [f"port-key/{port.key}", f"mac/{port.network_id}/{port.mac_address}"]
    keys += [f"ip/{f.subnet_id}/{f.ip_address}" for f in port.fixed_ips]
    zone = port.attrs.get("ct_zone")
    if port.binding_host and isinstance(zone, int):
        keys.append(f"ct-zone/{port.binding_host}/{zone}")
    return tuple(dict.fromkeys(keys))


def _port_parents(port: Port) -> tuple[tuple[str, str], ...]:
    return (("network", port.network_id), *(("subnet", s) for s in dict.fromkeys(f.subnet_id for f in port.fixed_ips)))


def _fip_unique(fip: FloatingIP) -> tuple[str, ...]:
    keys = [f"fip-port/{fip.floating_port_id}"]
    if fip.port_id:
        keys.append(f"fip-assoc/{fip.port_id}/{fip.fixed_ip_address}")
    return tuple(keys)


def _rule_parents(rule: SecurityGroupRule) -> tuple[tuple[str, str], ...]:
    parents = [("sg", rule.security_group_id)]
    if rule.remote_group_id and rule.remote_group_id != rule.security_group_id:
        parents.append(("sg", rule.remote_group_id))
    return tuple(parents)


def _decode_subnet(d: dict[str, Any]) -> Subnet:
    d["allocation_pools"] = tuple(tuple(p) for p in d["allocation_pools"])
    return Subnet(**d)


def _decode_port(d: dict[str, Any]) -> Port:
    d["fixed_ips"] = tuple(FixedIP(**f) for f in d["fixed_ips"])
    return Port(**d)


def _decode_router(d: dict[str, Any]) -> Router:
    d["routes"] = tuple(tuple(r) for r in d["routes"])
    d["gateway_hosts"] = tuple(d.get("gateway_hosts", ()))
    return Router(**d)


def _none(_record: Any) -> tuple:
    return ()


@dataclass(frozen=True)
class Kind:
    """One kind of stored record and the rules every store enforces for it."""

    name: str
    cls: type
    ident: Callable[[Any], str]
    decode: Callable[[dict[str, Any]], Any]
    unique: Callable[[Any], tuple[str, ...]] = _none
    parents: Callable[[Any], tuple[tuple[str, str], ...]] = _none
    guards: Callable[[Any], tuple[str, ...]] = _none


def _id(record: Any) -> str:
    return record.id


# In load order: a kind only refers to kinds before it (a floating IP to its ports, a rule to its groups).
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("network", Network, _id, lambda d: Network(**d),
         unique=lambda n: (f"network-key/{n.key}", *((f"segment/{segment_name(n)}",) if segment_name(n) else ()))),
    Kind("subnet", Subnet, _id, _decode_subnet,
         parents=lambda s: (("network", s.network_id),), guards=lambda s: (f"subnets-of/{s.network_id}",)),
    Kind("hv", Hypervisor, lambda h: h.name, lambda d: Hypervisor(**d),
         unique=lambda h: (f"datapath-id/{h.datapath_id:016x}",)),
    Kind("sg", SecurityGroup, _id, lambda d: SecurityGroup(**d),
         unique=lambda g: (f"default-sg/{g.project_id}",) if g.is_default else ()),
    Kind("sg_rule", SecurityGroupRule, _id, lambda d: SecurityGroupRule(**d),
         parents=_rule_parents, guards=lambda r: (f"rules-of/{r.security_group_id}",)),
    Kind("router", Router, _id, _decode_router,
         unique=lambda r: (f"router-key/{r.key}", *((f"snat-zone/{r.snat_zone}",) if r.snat_zone else ())),
         guards=lambda r: (f"router/{r.id}",)),
    Kind("port", Port, _id, _decode_port, unique=_port_unique, parents=_port_parents,
         guards=lambda p: (f"router/{p.device_id}",) if p.device_owner.startswith("network:router") else ()),
    Kind("fip", FloatingIP, _id, lambda d: FloatingIP(**d), unique=_fip_unique,
         parents=lambda f: (("port", f.floating_port_id), *((("port", f.port_id),) if f.port_id else ()))),
)}
_BY_CLASS = {k.cls: k for k in KINDS.values()}


def kind_of(record: Record) -> Kind:
    """The :class:`Kind` of a record."""
    try:
        return _BY_CLASS[type(record)]
    except KeyError:
        raise TypeError(f"not a stored record: {record!r}") from None


def op_key(op: Op) -> tuple[str, str]:
    """(kind name, identity) of the record an operation writes or deletes."""
    if isinstance(op, Deleted):
        return op.kind, op.ident
    kind = kind_of(op)
    return kind.name, kind.ident(op)


def encode(record: Record) -> str:
    """A record as the JSON every store keeps (sorted keys: equal records, equal text)."""
    return json.dumps(asdict(record), sort_keys=True)


def decode(kind: str, text: str | bytes) -> Record:
    """The record of ``kind`` stored as ``text``."""
    return KINDS[kind].decode(json.loads(text))


def unique_keys(records: Iterable[Record | None]) -> set[str]:
    """The unique keys the records hold together."""
    return {key for r in records if r is not None for key in kind_of(r).unique(r)}
