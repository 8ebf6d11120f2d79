"""Render flows in ovs-ofctl syntax: for people reading them, and for ``ovs-ofctl add-flows``."""

from __future__ import annotations

from flows.flow import IN_PORT, Flow, Output, PopVlan, PushVlan, RegMove, Resubmit, SetField
from flows.pipeline import STAGE_BY_NAME

# os-ken's OXM names that ovs-ofctl spells differently.
_OFCTL_NAMES = {"tunnel_id": "tun_id", "tun_ipv4_dst": "tun_dst", "eth_src": "dl_src", "eth_dst": "dl_dst",
                "eth_type": "dl_type"}


def field_name(name: str) -> str:
    """The ovs-ofctl name of an OXM field."""
    return _OFCTL_NAMES.get(name, name)


def _value(value) -> str:
    if isinstance(value, tuple):
        return f"{value[0]:#x}/{value[1]:#x}"
    if isinstance(value, int):
        return f"{value:#x}" if value > 9 else str(value)
    return value


def action_text(act) -> str:
    """One action in ovs-ofctl syntax."""
    if isinstance(act, Output):
        return "in_port" if act.port == IN_PORT else f"output:{act.port}"
    if isinstance(act, SetField):
        return f"set_field:{_value(act.value)}->{field_name(act.field)}"
    if isinstance(act, RegMove):
        return f"move:{field_name(act.src)}[]->{field_name(act.dst)}[]"
    if isinstance(act, Resubmit):
        return f"resubmit(,{STAGE_BY_NAME[act.table].table_id})"
    if isinstance(act, PushVlan):
        return f"push_vlan:{act.ethertype:#x}"
    if isinstance(act, PopVlan):
        return "pop_vlan"
    raise TypeError(f"no ofctl text for {act!r}")


def flow_text(flow: Flow) -> str:
    """The flow as one ``ovs-ofctl add-flow`` line."""
    parts = [f"table={flow.table_id}", f"priority={flow.priority}", f"cookie={flow.cookie:#x}"]
    parts += [f"{field_name(k)}={_value(v)}" for k, v in flow.match]
    actions = [action_text(a) for a in flow.actions]
    if flow.goto is not None:
        actions.append(f"goto_table:{flow.goto}")
    return ",".join(parts) + " actions=" + (",".join(actions) if actions else "drop")
