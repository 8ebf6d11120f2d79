"""What a bridge really holds against what it must hold: the controller's side of ``tenantflow check``.

Reconciliation compares cookies only (a cookie names a flow's content, see flows.flow), which
is enough for what the controller itself sent, but not for a flow changed by hand that kept its
cookie (``ovs-ofctl mod-flows`` keeps it). So an audit reads the bridge's flows afresh, whole
(match and instructions, one flow-stats dump over the switch's own connection), and compares
each with the compiled flow of its cookie on its content: table, priority, cookie, timeouts, the
match as a set of OXM fields (OVS writes them in its own order, and leaves out a field whose mask
is all zeros), and the instructions decoded the same way on both sides (OVS writes a move's or a
learn's fields back as NXM headers where we sent OXM ones: the same fields). A flow the switch
learned itself (a learn action's cookie, in a switch-owned stage) is counted apart, neither
missing nor extra. The groups and meters the flows use are compared by id (an id is a hash of
the content, as a cookie is: controller.groups).

Each difference is shown in ovs-ofctl syntax: a missing flow as :func:`flows.ofctl.flow_text`
writes it (``ovs-ofctl add-flow`` takes it back), an extra one decoded from the switch's bytes.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from os_ken.ofproto import ofproto_v1_3 as ofp

from controller import wire
from controller.groups import GROUPS, METERS
from flows.flow import (
    CT,
    Conjunction,
    DecTtl,
    Flow,
    Learn,
    Output,
    PopVlan,
    PushVlan,
    RegMove,
    Resubmit,
    SetField,
)
from flows.ofctl import action_text, field_name, flow_text
from flows.pipeline import STAGE_BY_TABLE

_MULTIPART_REQUEST = struct.Struct("!BBHIHH4x")
_FLOW_STATS_REQUEST = struct.Struct("!B3xII4xQQ")  # table, out_port, out_group, cookie, cookie mask
_MULTIPART_REPLY = struct.Struct("!BBHIHH4x")
_FLOW_STATS = struct.Struct("!HBxIIHHHH4xQQQ")  # ofp_flow_stats up to its match: 48 bytes
_MATCH_HEAD = struct.Struct("!HH")
_OXM_HEAD = struct.Struct("!I")
_EMPTY_MATCH = struct.pack("!HH4x", ofp.OFPMT_OXM, 4)
_RESERVED_PORTS = {ofp.OFPP_IN_PORT: "in_port", ofp.OFPP_TABLE: "TABLE", ofp.OFPP_NORMAL: "NORMAL",
                   ofp.OFPP_FLOOD: "FLOOD", ofp.OFPP_ALL: "ALL", ofp.OFPP_LOCAL: "LOCAL"}


def flow_stats_request(xid: int) -> bytes:
    """An ``OFPMP_FLOW`` request for every flow of every table (what ``ovs-ofctl dump-flows`` asks)."""
    body = _FLOW_STATS_REQUEST.pack(ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0) + _EMPTY_MATCH
    length = _MULTIPART_REQUEST.size + len(body)
    return _MULTIPART_REQUEST.pack(ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REQUEST, length, xid, ofp.OFPMP_FLOW, 0) + body


@dataclass(frozen=True)
class Installed:
    """One flow as the switch reported it: its identity and its encoded content."""

    table_id: int
    priority: int
    cookie: int
    idle_timeout: int
    hard_timeout: int
    match: bytes  # the ofp_match, padded
    instructions: bytes


def installed_flows(replies: Iterable[bytes]) -> list[Installed]:
    """Every flow of a flow-stats dump (its multipart reply messages, whole); ValueError if malformed."""
    flows = []
    for msg in replies:
        if len(msg) < _MULTIPART_REPLY.size:
            raise ValueError(f"flow stats reply of {len(msg)} bytes")
        _, msg_type, length, _, mp_type, _ = _MULTIPART_REPLY.unpack_from(msg)
        if msg_type != ofp.OFPT_MULTIPART_REPLY or mp_type != ofp.OFPMP_FLOW or length != len(msg):
            raise ValueError(f"not a whole flow stats reply (type {msg_type}, multipart {mp_type})")
        at = _MULTIPART_REPLY.size
        while at < length:
            flows.append(_entry(msg, at, length))
            at += struct.unpack_from("!H", msg, at)[0]
    return flows


def _entry(msg: bytes, at: int, end: int) -> Installed:
    (size, table_id, _, _, priority, idle, hard, _, cookie, _, _) = _FLOW_STATS.unpack_from(msg, at)
    if size < _FLOW_STATS.size + _MATCH_HEAD.size or at + size > end:
        raise ValueError(f"flow stats entry of {size} bytes at {at} of {end}")
    match_at = at + _FLOW_STATS.size
    match_len = _MATCH_HEAD.unpack_from(msg, match_at)[1]
    instructions_at = match_at + (match_len + 7) // 8 * 8
    if instructions_at > at + size:
        raise ValueError(f"flow stats entry at {at}: match of {match_len} bytes overruns it")
    return Installed(table_id, priority, cookie, idle, hard, bytes(msg[match_at:instructions_at]),
                     bytes(msg[instructions_at:at + size]))


def oxm_fields(match: bytes) -> frozenset[bytes]:
    """An ofp_match's OXM fields (each header + value [+ mask]) as a set: their order carries no meaning.

    As OVS stores a match: a field whose mask is all zeros matches anything and is left out, one whose
    mask is all ones is an exact match.
    """
    _, length = _MATCH_HEAD.unpack_from(match)
    fields, at = [], _MATCH_HEAD.size
    while at < length:
        (header,) = _OXM_HEAD.unpack_from(match, at)
        size = _OXM_HEAD.size + (header & 0xFF)
        tlv = bytes(match[at:at + size])
        at += size
        if header >> 16 == 0xFFFF:  # an experimenter's field: its id first, kept as sent
            fields.append(tlv)
            continue
        fields += [_normal(h, v, m) for h, v, m in _as_regs(header, tlv)]
    return frozenset(f for f in fields if f)


_NXM_REG = 0x0001 << 16  # class NXM_1: reg0..reg15 are its fields 0..15, xxreg0..3 its fields 111..114
_OXM_PKT_REG = 0x8001 << 16  # class OFPXMC_PACKET_REGS: xreg0..7 (64 bits each)


def _as_regs(header: int, tlv: bytes) -> list[tuple[int, bytes, bytes | None]]:
    """A field as (header without mask bit and length, value, mask or None), a 64-bit ``xreg`` or 128-bit
    ``xxreg`` split into the 32-bit registers it spans: OVS writes a match on those back as ``reg*``."""
    width = (header & 0xFF) // (2 if header & 0x100 else 1)
    value = tlv[4:4 + width]
    mask = tlv[4 + width:] if header & 0x100 else None
    klass, number = header & 0xFFFF0000, (header >> 9) & 0x7F
    if klass == _NXM_REG and 111 <= number <= 114 and width == 16:
        first = (number - 111) * 4
    elif klass == _OXM_PKT_REG and number <= 7 and width == 8:
        first = number * 2
    else:
        return [(header & ~0x1FF, value, mask)]
    return [(_NXM_REG | (first + i) << 9, value[4 * i:4 * i + 4], mask[4 * i:4 * i + 4] if mask else None)
            for i in range(width // 4)]


def _normal(header: int, value: bytes, mask: bytes | None) -> bytes:
    """One field's bytes as OVS stores it: none when its mask is all zeros (it matches anything), exact
    (no mask) when its mask is all ones."""
    width = len(value)
    if mask is not None and not any(mask):
        return b""
    if mask is None or mask == b"\xff" * width:
        return _OXM_HEAD.pack(header | width) + value
    return _OXM_HEAD.pack(header | 0x100 | 2 * width) + value + mask


@dataclass
class Audit:
    """One bridge's installed flows against its compiled ones."""

    compiled: int = 0
    installed: int = 0
    learned: int = 0
    missing: list[Flow] = field(default_factory=list)  # compiled, not on the switch as compiled
    extra: list[Installed] = field(default_factory=list)  # on the switch, not compiled (or not as compiled)

    @property
    def equal(self) -> bool:
        """Whether the switch holds exactly its compiled flows (learned ones aside)."""
        return not self.missing and not self.extra

    def view(self) -> dict:
        """The JSON of ``GET /check/{hypervisor}``: counts, then each difference by stage in ovs-ofctl syntax."""
        return {"equal": self.equal, "compiled": self.compiled, "installed": self.installed, "learned": self.learned,
                "missing": [_difference(f.table_id, f.cookie, flow_text(f)) for f in self.missing],
                "extra": [_difference(f.table_id, f.cookie, installed_text(f)) for f in self.extra]}


def _difference(table_id: int, cookie: int, text: str) -> dict:
    stage = STAGE_BY_TABLE.get(table_id)
    return {"stage": stage.name if stage else f"table{table_id}", "table": table_id, "cookie": f"{cookie:#x}",
            "flow": text}


def compare(compiled: dict[int, Flow], installed: list[Installed], learned_cookies: set[int]) -> Audit:
    """Each compiled flow must be on the switch once, with its content; anything else there is extra.

    ``learned_cookies``: cookies of the compiled learn actions; a flow carrying one in a switch-owned
    stage was added by the switch itself (counted as learned). Instructions are compared as bytes
    first, and decoded only where the bytes differ (the few flows OVS writes back otherwise).
    """
    audit = Audit(compiled=len(compiled), installed=len(installed))
    matched: set[int] = set()
    for flow in installed:
        stage = STAGE_BY_TABLE.get(flow.table_id)
        if flow.cookie in learned_cookies and stage is not None and stage.switch_owned:
            audit.learned += 1
        elif flow.cookie in matched or not same_flow(compiled.get(flow.cookie), flow):
            audit.extra.append(flow)
        else:
            matched.add(flow.cookie)
    audit.missing = sorted((f for c, f in compiled.items() if c not in matched),
                           key=lambda f: (f.table_id, -f.priority, f.cookie))
    audit.extra.sort(key=lambda f: (f.table_id, -f.priority, f.cookie))
    return audit


def same_flow(flow: Flow | None, found: Installed) -> bool:
    """Whether the switch's flow is ``flow``, its cookie aside (see the module's docstring)."""
    if flow is None or (flow.table_id, flow.priority, 0, 0) != (found.table_id, found.priority, found.idle_timeout,
                                                                 found.hard_timeout):
        return False
    if oxm_fields(wire.encode_match(flow.match)) != oxm_fields(found.match):
        return False
    instructions = wire.encode_instructions(flow)
    if instructions == found.instructions or instructions == _oxm_moves(found.instructions):
        return True
    return instructions_text(instructions) == instructions_text(found.instructions)


_NX_MOVE = struct.Struct("!HHIH")  # an action's type and length, the experimenter (NX), its subtype
_MOVE_FIELDS = struct.Struct("!II")  # NXAST_REG_MOVE's source and destination field headers, at byte 16


def _oxm_moves(instructions: bytes) -> bytes:
    """The instructions with each move's fields named by OXM headers, as we send them (OVS writes NXM
    ones back for the fields NXM has): a byte compare then holds for the many ARP responder flows."""
    out = bytearray(instructions)
    at = 0
    while at + 8 <= len(out):
        inst_type, inst_len = _MATCH_HEAD.unpack_from(out, at)
        if inst_len < 8:
            break
        if inst_type == ofp.OFPIT_APPLY_ACTIONS:
            act = at + 8
            while act + 16 <= at + inst_len:
                act_type, act_len, vendor, subtype = _NX_MOVE.unpack_from(out, act)
                if act_len < 8:
                    break
                if act_type == ofp.OFPAT_EXPERIMENTER and vendor == wire.NX_VENDOR and subtype == wire.NXAST_REG_MOVE:
                    src, dst = _MOVE_FIELDS.unpack_from(out, act + 16)
                    _MOVE_FIELDS.pack_into(out, act + 16, _oxm_header(src), _oxm_header(dst))
                act += act_len
        at += inst_len
    return bytes(out)


@lru_cache(maxsize=1024)
def _oxm_header(header: int) -> int:
    """The OXM header of the field an NXM ``header`` names (itself when it has none, or is one)."""
    try:
        num, _ = ofp.oxm_parse_header(struct.pack("!I", header), 0)
        return wire.oxm_header(_oxm_name(ofp.oxm_to_user_header(num)))
    except Exception:  # a field os-ken does not know: compared as is
        return header


# -- an installed flow in ovs-ofctl syntax ------------------------------------------------------
def installed_text(flow: Installed) -> str:
    """The flow as one ``ovs-ofctl add-flow`` line, decoded from what the switch reported (best effort for
    actions the compiler never writes: their os-ken rendering)."""
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    match = parser.OFPMatch.parser(flow.match, 0)
    parts = [f"table={flow.table_id}", f"priority={flow.priority}", f"cookie={flow.cookie:#x}"]
    parts += [f"{k}={v}" for k, v in (("idle_timeout", flow.idle_timeout), ("hard_timeout", flow.hard_timeout)) if v]
    fields = sorted(_known(name, value) for name, value in match.items())
    parts += [_match_text(name, value) for name, value in fields]
    return ",".join(parts) + " actions=" + instructions_text(flow.instructions)


def instructions_text(instructions: bytes) -> str:
    """A flow's instructions as ovs-ofctl writes its actions (``drop`` for none), decoded from OpenFlow."""
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    actions: list[str] = []
    at = 0
    while at < len(instructions):
        inst = parser.OFPInstruction.parser(instructions, at)
        at += inst.len
        if isinstance(inst, parser.OFPInstructionMeter):
            actions.append(f"meter:{inst.meter_id}")
        elif isinstance(inst, parser.OFPInstructionGotoTable):
            actions.append(f"goto_table:{inst.table_id}")
        elif isinstance(inst, parser.OFPInstructionActions) and inst.type == ofp.OFPIT_APPLY_ACTIONS:
            actions += [_safe_action_text(a) for a in inst.actions]
        else:
            actions.append(repr(inst))
    return ",".join(actions) if actions else "drop"


def _match_text(name: str, value) -> str:
    from flows.ofctl import _value  # the same value rendering as a compiled flow's
    from flows.simulate import SimulationError

    if name == "in_port" and value in _RESERVED_PORTS:
        return f"in_port={_RESERVED_PORTS[value]}"
    try:
        return f"{field_name(name)}={_value(_ints(name, value), name)}"
    except (SimulationError, ValueError, TypeError):  # a field none of our flows uses: as os-ken reads it
        return f"{name}={value}"


def _known(name: str, value) -> tuple[str, object]:
    """A match field as os-ken reads it, with our name and an int for the fields it lacks (base64 bytes)."""
    ours = _extra_names().get(name)
    if ours is None:
        return name, value
    raw = [base64.b64decode(v) for v in (value if isinstance(value, tuple) else (value,))]
    ints = [int.from_bytes(b, "big") for b in raw]
    return ours, tuple(ints) if isinstance(value, tuple) else ints[0]


@lru_cache(maxsize=1)
def _extra_names() -> dict[str, str]:
    """os-ken's name (``field_N``) of each field it lacks and controller.wire encodes (nd_reserved...) -> ours."""
    names = {}
    for ours in ("nd_reserved", "nd_options_type"):
        num, _ = ofp.oxm_parse_header(struct.pack("!I", wire.oxm_header(ours)), 0)
        names[ofp.oxm_to_user_header(num)] = ours
    return names


def _ints(name: str, value):
    """os-ken's match value (a string for addresses, a (value, mask) tuple) as flows.ofctl renders ints."""
    from flows.simulate import to_int

    if isinstance(value, tuple):
        return tuple(_ints(name, v) for v in value)
    return to_int(name, value) if isinstance(value, str) else value


def _safe_action_text(act) -> str:
    """:func:`_action_text`, or os-ken's rendering of an action it cannot write as ovs-ofctl does."""
    from flows.simulate import SimulationError

    try:
        return _action_text(act)
    except (SimulationError, ValueError, TypeError, KeyError):
        return repr(act)


def _action_text(act) -> str:
    """One os-ken action in ovs-ofctl syntax, through the compiler's own action rendering where it can."""
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    if isinstance(act, parser.OFPActionOutput):
        if act.port in _RESERVED_PORTS:
            return _RESERVED_PORTS[act.port]
        if act.port == ofp.OFPP_CONTROLLER:
            return f"CONTROLLER:{act.max_len}"
        return action_text(Output(act.port))
    if isinstance(act, parser.OFPActionSetField):
        name, value = _known(act.key, act.value)
        return action_text(SetField(name, _ints(name, value)))
    if isinstance(act, parser.OFPActionGroup):
        return f"group:{act.group_id}"
    if isinstance(act, parser.OFPActionPushVlan):
        return action_text(PushVlan(act.ethertype))
    if isinstance(act, parser.OFPActionPopVlan):
        return action_text(PopVlan())
    if isinstance(act, parser.OFPActionDecNwTtl):
        return action_text(DecTtl())
    return _nx_action_text(act)


def _nx_action_text(act) -> str:
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    if isinstance(act, parser.NXActionResubmitTable):
        stage = STAGE_BY_TABLE.get(act.table_id)
        return action_text(Resubmit(stage.name)) if stage else f"resubmit(,{act.table_id})"
    if isinstance(act, parser.NXActionConjunction):
        return action_text(Conjunction(act.id, act.clause + 1, act.n_clauses))
    if isinstance(act, parser.NXActionRegMove):
        return action_text(RegMove(_oxm_name(act.src_field), _oxm_name(act.dst_field), act.n_bits))
    if isinstance(act, parser.NXActionRegLoad) and _oxm_name(act.dst) == "in_port":  # how we write in_port
        return action_text(SetField("in_port", act.value))
    if isinstance(act, parser.NXActionCT):
        return _ct_text(act)
    if isinstance(act, parser.NXActionLearn):
        return _learn_text(act)
    return repr(act)


def _oxm_name(name: str) -> str:
    """os-ken's name of a field read back as an NXM header (``eth_src_nxm``) is the OXM field's (``eth_src``)."""
    return name.removesuffix("_nxm")


def _ct_text(act) -> str:
    stage = STAGE_BY_TABLE.get(act.recirc_table)
    zone: int | str = act.zone_src if act.zone_src else act.zone_ofs_nbits
    nat = None
    for inner in act.actions:
        low = getattr(inner, "range_ipv4_min", "") or getattr(inner, "range_ipv6_min", "")
        nat = f"src={low}" if inner.flags & wire.NX_NAT_F_SRC and low else ""
    ct = CT(bool(act.flags & wire.NX_CT_F_COMMIT), zone, stage.name if stage else None, nat)
    return action_text(ct)


def _learn_text(act) -> str:
    matches, loads = [], []
    for spec in act.specs:
        dst = _oxm_name(spec.dst[0])
        pair = (dst, _oxm_name(spec.src[0])) if isinstance(spec.src, tuple) else (dst, str(spec.src))
        (matches if type(spec).__name__ == "NXFlowSpecMatch" else loads).append(pair)
    stage = STAGE_BY_TABLE.get(act.table_id)
    learn = Learn(stage.name if stage else str(act.table_id), act.priority, act.idle_timeout, act.cookie,
                  tuple(matches), tuple((src, dst) for dst, src in loads))
    try:
        return action_text(learn)
    except KeyError:
        return repr(act)


# -- the controller's endpoint: GET /check, GET /check/{hypervisor} ------------------------------
SETTLE = 5.0  # s an audit waits for a bridge's sync in flight to commit (what it compares against would move)
ATTEMPTS = 3  # dumps tried while the compiled flows keep changing under one


def audit_switch(sw, engine, settle: float = SETTLE) -> dict:
    """Dump ``sw``'s flows now and compare them with the engine's compiled flows of its hypervisor.

    A sync in flight is let commit first (up to ``settle`` s), and the dump is taken again if the
    compiled flows changed while it was read, so a write racing the check does not read as a
    difference. ``synced``: whether the switch had confirmed the flows compared against.
    """
    from controller.switch import SYNCED, learned_cookies

    hv = sw.hv_name
    for _ in range(ATTEMPTS):
        with SYNCED:
            SYNCED.wait_for(lambda: sw.holds(engine.generation_of(hv)) or not sw.alive, settle)
        with engine.lock:
            generation = engine.generation_of(hv)
            desired = dict(engine.desired(hv))
        replies = sw.dump_flows(flow_stats_request)
        with engine.lock:
            if engine.generation_of(hv) == generation:
                break
    result = compare(desired, installed_flows(replies), learned_cookies(desired.values()))
    objects = {kind.name + "s": audit_objects(sw, kind, desired.values()) for kind in (GROUPS, METERS)}
    equal = result.equal and not any(o["missing"] or o["extra"] for o in objects.values())
    return {**result.view(), **objects, "equal": equal, "synced": sw.holds(generation)}


def audit_objects(sw, kind, flows: Iterable[Flow]) -> dict:
    """The switch's groups (or meters) against the ones the compiled ``flows`` use, by id (an id is a hash
    of the content, as a cookie is: controller.groups): the missing ones as ``ovs-ofctl add-group`` (or
    ``add-meter``) takes them, the extra ids (ours only: reserved ids above ``max_id`` are not)."""
    wanted = kind.required(flows)
    held = {oid for part in sw.request(kind.read) for oid in part}
    return {"compiled": len(wanted), "installed": len(held),
            "missing": [kind.text(oid, content) for oid, content in wanted.items() if oid not in held],
            "extra": sorted(oid for oid in held - set(wanted) if oid <= kind.max_id)}


def check_hypervisor(app, name: str) -> dict:
    """``GET /check/{name}``: the hypervisor's bridge audited, or why it cannot be (not connected, another
    instance's); KeyError if no such hypervisor is registered."""
    with app.topology.lock:
        hv = app.topology.graph.hypervisor(name)
        if hv is None:
            raise KeyError(name)
        owned = app._owns(name)
    sw = next((s for s in list(app.switches.values()) if s.hv_name == name and s.alive), None)
    out = {"hypervisor": name, "datapath_id": f"{hv.datapath_id:016x}", "connected": sw is not None}
    if sw is None:
        return out
    if not (owned and sw.mastering and app.engine.compiles(name)):
        return {**out, "mastered": False}
    try:
        return {**out, "mastered": True, **audit_switch(sw, app.engine)}
    except ConnectionError as exc:  # gone, or no answer, while being read
        return {**out, "connected": False, "error": str(exc)}


def wsgi_app(app):
    """The ``/check`` mount of the API (admin only, as /sync): every hypervisor, or ``/check/{name}``."""
    import json

    def answer(start_response, status: str, value) -> list[bytes]:
        body = json.dumps(value).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def wsgi(environ, start_response):
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET"), ("Content-Length", "0")])
            return [b""]
        if app is None:
            return answer(start_response, "503 Service Unavailable", {"error": "no OpenFlow application running"})
        name = environ.get("PATH_INFO", "").rstrip("/").removeprefix("/check").strip("/")
        if not name:
            with app.topology.lock:
                names = sorted(hv.name for hv in app.topology.graph.hypervisors())
            return answer(start_response, "200 OK", {"hypervisors": [check_hypervisor(app, n) for n in names]})
        try:
            return answer(start_response, "200 OK", {"hypervisor": check_hypervisor(app, name)})
        except KeyError:
            return answer(start_response, "404 Not Found", {"error": f"no hypervisor named {name!r}"})

    return wsgi
