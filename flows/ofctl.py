"""Render flows in ovs-ofctl syntax: for people reading them, and for ``ovs-ofctl add-flows``."""

from __future__ import annotations

import netaddr

from flows.flow import (
    CONTROLLER,
    CT,
    IN_PORT,
    LIVE_GROUP_ID,
    Bucket,
    Conjunction,
    DecTtl,
    Flow,
    Group,
    Learn,
    Meter,
    Output,
    PopVlan,
    PushVlan,
    RegMove,
    Resubmit,
    SetField,
)
from flows.pipeline import STAGE_BY_NAME

# os-ken's OXM names that ovs-ofctl spells differently.
_OFCTL_NAMES = {"tunnel_id": "tun_id", "tun_ipv4_dst": "tun_dst", "eth_src": "dl_src", "eth_dst": "dl_dst",
                "eth_type": "dl_type", "ipv4_src": "ip_src", "ipv4_dst": "ip_dst", "ip_proto": "nw_proto",
                "icmpv4_type": "icmp_type", "icmpv4_code": "icmp_code", "ipv6_nd_target": "nd_target",
                "ipv6_nd_tll": "nd_tll"}


def field_name(name: str) -> str:
    """The ovs-ofctl name of an OXM field."""
    return _OFCTL_NAMES.get(name, name)


_MAC = {"eth_src", "eth_dst", "arp_sha", "arp_tha", "ipv6_nd_tll"}
_IPV4 = {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa", "tun_ipv4_dst"}
_IPV6 = {"ipv6_src", "ipv6_dst", "ipv6_nd_target"}


def _scalar(name: str, value) -> str:
    if not isinstance(value, int):
        return value
    if name in _MAC:
        return str(netaddr.EUI(value, dialect=netaddr.mac_unix_expanded))
    if name in _IPV4 or name in _IPV6:
        return str(netaddr.IPAddress(value, 4 if name in _IPV4 else 6))
    if name == "in_port":
        return str(value)
    return f"{value:#x}" if value > 9 else str(value)


_CT_FLAGS = (("new", 0x01), ("est", 0x02), ("rel", 0x04), ("rpl", 0x08), ("inv", 0x10), ("trk", 0x20))


def ct_state_text(value) -> str:
    """``+trk+est-rpl`` for a ct_state value (or (value, mask) pair)."""
    val, mask = value if isinstance(value, tuple) else (value, value)
    return "".join(("+" if val & bit else "-") + name for name, bit in _CT_FLAGS if mask & bit)


def _value(value, name: str = "") -> str:
    if name == "ct_state":
        return ct_state_text(value)
    if isinstance(value, tuple):
        return f"{_scalar(name, value[0])}/{_scalar(name, value[1])}"
    return _scalar(name, value)


def action_text(act) -> str:
    """One action in ovs-ofctl syntax."""
    if isinstance(act, Output):
        if act.port == CONTROLLER:  # with the max_len the controller sends (OFPCML_MAX), as OVS dumps it
            return "CONTROLLER:65509"
        return "in_port" if act.port == IN_PORT else f"output:{act.port}"
    if isinstance(act, SetField):
        return f"set_field:{_value(act.value, act.field)}->{field_name(act.field)}"
    if isinstance(act, RegMove):
        return f"move:{field_name(act.src)}[]->{field_name(act.dst)}[]"
    if isinstance(act, Resubmit):
        return f"resubmit(,{STAGE_BY_NAME[act.table].table_id})"
    if isinstance(act, PushVlan):
        return f"push_vlan:{act.ethertype:#x}"
    if isinstance(act, PopVlan):
        return "pop_vlan"
    if isinstance(act, DecTtl):
        return "dec_ttl"
    if isinstance(act, Learn):
        specs = [f"{field_name(dst)}={field_name(src)}" for dst, src in act.matches]
        specs += [f"load:{field_name(src)}[]->{field_name(dst)}[]" for src, dst in act.loads]
        return (f"learn(table={STAGE_BY_NAME[act.table].table_id},idle_timeout={act.idle_timeout},"
                f"priority={act.priority},cookie={act.cookie:#x},{','.join(specs)})")
    if isinstance(act, CT):
        args = ["commit"] if act.commit else []
        args.append(f"zone={field_name(act.zone)}[0..15]" if isinstance(act.zone, str) else f"zone={act.zone}")
        if act.table is not None:
            args.append(f"table={STAGE_BY_NAME[act.table].table_id}")
        if act.nat is not None:  # last, where OVS writes it: ct(commit,...,nat(src=1.2.3.4)), ct(...,nat)
            args.append(f"nat({act.nat})" if act.nat else "nat")
        return f"ct({','.join(args)})"
    if isinstance(act, Conjunction):
        return f"conjunction({act.id},{act.clause}/{act.n_clauses})"
    if isinstance(act, Group):
        return f"group:{act.group_id}"
    if isinstance(act, Meter):  # only ever first: OVS writes the meter instruction before the actions
        return f"meter:{act.meter_id}"
    raise TypeError(f"no ofctl text for {act!r}")


def flow_text(flow: Flow) -> str:
    """The flow as one ``ovs-ofctl add-flow`` line."""
    parts = [f"table={flow.table_id}", f"priority={flow.priority}", f"cookie={flow.cookie:#x}"]
    parts += [f"{field_name(k)}={_value(v, k)}" for k, v in flow.match]
    actions = [action_text(a) for a in flow.actions]
    if flow.goto is not None:
        actions.append(f"goto_table:{flow.goto}")
    return ",".join(parts) + " actions=" + (",".join(actions) if actions else "drop")


def _actions_text(actions) -> str:
    return ",".join(action_text(a) for a in actions) or "drop"


def bucket_text(bucket: Bucket) -> str:
    """One bucket of a fast-failover group, as ``ovs-ofctl add-group`` takes it.

    A bucket without a watch port watches the always-live group (:data:`flows.flow.LIVE_GROUP_ID`,
    :data:`LIVE_GROUP_TEXT`), as the controller encodes it: OVS refuses one that watches nothing.
    """
    if bucket.watch_group is not None:
        watch = f"watch_group:{bucket.watch_group.group_id}"
    else:
        watch = f"watch_group:{LIVE_GROUP_ID}" if bucket.watch_port is None else f"watch_port:{bucket.watch_port}"
    return f"bucket={watch},actions={_actions_text(bucket.actions)}"


def group_text(group: Group) -> str:
    """The group as one ``ovs-ofctl -O OpenFlow13 add-group`` line: ``group_id=<id>,type=ff,bucket=...``."""
    return ",".join([f"group_id={group.group_id}", "type=ff", *map(bucket_text, group.buckets)])


def meter_text(meter: Meter) -> str:
    """The meter as one ``ovs-ofctl -O OpenFlow13 add-meter`` line (what the controller sends)."""
    return f"meter={meter.meter_id},pktps,burst,stats,bands=type=drop,rate={meter.rate},burst_size={meter.burst}"


LIVE_GROUP_TEXT = f"group_id={LIVE_GROUP_ID},type=indirect,bucket=actions=drop"
"""The always-live group the buckets without a watch port watch, as ``ovs-ofctl add-group`` takes it."""
