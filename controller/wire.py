"""Fast OpenFlow 1.3 encoding of :class:`flows.flow.Flow` records.

os-ken builds a message from objects (OFPMatch, OFPAction...) at ~55 us a flow
here, which caps a push at ~18k flows/s before the switch does any work. This
module packs the same bytes directly with ``struct`` (~5 us a flow), for the
subset of OpenFlow our pipeline uses. The OXM field catalogue (class, field
number, width, value type) is taken from os-ken at import, not written out
again; ``tests/test_wire.py`` checks byte-for-byte that every message equals
what os-ken itself serialises.
"""

from __future__ import annotations

import socket
import struct
from functools import cache, lru_cache

import netaddr
from os_ken.lib import type_desc
from os_ken.ofproto import ofproto_common
from os_ken.ofproto import ofproto_v1_3 as ofp

from flows.flow import (
    CT,
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
    flow_meter,
    memo_encoding,
)
from flows.pipeline import STAGE_BY_NAME

OFP_VERSION = ofp.OFP_VERSION
_HEADER = struct.Struct("!BBHI")
_FLOW_MOD = struct.Struct("!BBHIQQBBHHHIIIH2x")  # header + ofp_flow_mod body, 48 bytes
_EXPERIMENTER = struct.Struct("!BBHIII")  # header + experimenter id + exp_type
_BUNDLE_CTRL = struct.Struct("!IHH")
NX_VENDOR = ofproto_common.NX_EXPERIMENTER_ID
NXAST_REG_MOVE = 6
NXAST_REG_LOAD = 7
NXAST_RESUBMIT_TABLE = 14
NXAST_CONJUNCTION = 34
ALL_ONES64 = 0xFFFFFFFFFFFFFFFF

BUNDLE_FLAGS = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED


# Fields OVS has and os-ken's catalogue lacks: OVS encodes them in the
# ERICOXM class 0x1000 (read back from OVS 3.1's own flow stats).
_EXTRA_FIELDS: dict[str, tuple[int, int, type]] = {
    "nd_reserved": (0x10000204, 4, type_desc.Int4),
    "nd_options_type": (0x10000401, 1, type_desc.Int1),
}


@cache
def _field(name: str) -> tuple[int, int, type]:
    """(OXM header as int, value width in bytes, os-ken value type) of a field."""
    if name in _EXTRA_FIELDS:
        return _EXTRA_FIELDS[name]
    num, desc = ofp.oxm_get_field_info_by_name(name)
    buf = bytearray()
    ofp.oxm_serialize_header(num, buf, 0)
    if len(buf) != 4:
        raise ValueError(f"field {name}: experimenter OXM headers are not supported")
    return struct.unpack("!I", buf)[0], desc.size, desc


def oxm_header(name: str) -> int:
    """The OXM header (as an int) field ``name`` is encoded with (in a match, a set_field, a move)."""
    return _field(name)[0]


@lru_cache(maxsize=65536)
def _value_bytes(name: str, value) -> bytes:
    """Encode one field value (int, MAC/IPv4/IPv6 string) to its wire width."""
    _, width, desc = _field(name)
    if isinstance(value, int):
        return value.to_bytes(width, "big")
    try:  # fast paths for the canonical spellings; netaddr for anything else
        if desc is type_desc.MacAddr:
            packed = bytes.fromhex(value.replace(":", ""))
            if len(packed) == 6:
                return packed
        elif desc is type_desc.IPv4Addr:
            return socket.inet_pton(socket.AF_INET, value)
        elif desc is type_desc.IPv6Addr:
            return socket.inet_pton(socket.AF_INET6, value)
    except (ValueError, OSError):
        pass
    if desc is type_desc.MacAddr:
        return netaddr.EUI(value).packed
    if desc in (type_desc.IPv4Addr, type_desc.IPv6Addr):
        return netaddr.IPAddress(value).packed
    raise TypeError(f"field {name}: cannot encode {value!r}")


@lru_cache(maxsize=1 << 17)
def _oxm(name: str, value) -> bytes:
    header, width, _ = _field(name)
    if isinstance(value, tuple):
        val, mask = value
        # hasmask bit set and the length doubled: value then mask
        masked_header = (header & ~0xFF) | 0x100 | (2 * width)
        return struct.pack("!I", masked_header) + _value_bytes(name, val) + _value_bytes(name, mask)
    return struct.pack("!I", header) + _value_bytes(name, value)


_PADDING = [b"\0" * n for n in range(8)]


def _pad8(data: bytes) -> bytes:
    return data + _PADDING[-len(data) % 8]


# Nicira-class fields with prerequisites: OVS wants a prerequisite (eth_type) before the
# field that needs it, and the header order would put these first.
_AFTER_PREREQUISITES = frozenset({"nw_ttl"})


def _oxm_order(item: tuple) -> tuple[bool, int]:
    return item[0] in _AFTER_PREREQUISITES, _field(item[0])[0]


def encode_match(match) -> bytes:
    """ofp_match (OXM) for a flow's match tuple, padded to 8 bytes."""
    # Canonical OXM order (by header), the order os-ken itself emits.
    ordered = sorted(match, key=_oxm_order)
    fields = b"".join(_oxm(name, value) for name, value in ordered)
    return _pad8(struct.pack("!HH", ofp.OFPMT_OXM, 4 + len(fields)) + fields)


@lru_cache(maxsize=1 << 17)
def _action(act) -> bytes:
    if isinstance(act, Output):
        return struct.pack("!HHIH6x", ofp.OFPAT_OUTPUT, 16, act.port, ofp.OFPCML_MAX)
    if isinstance(act, SetField) and act.field == "in_port":
        return _load_in_port(int(act.value))
    if isinstance(act, SetField):
        body = _pad8(struct.pack("!HH", ofp.OFPAT_SET_FIELD, 0) + _oxm(act.field, act.value))
        return body[:2] + struct.pack("!H", len(body)) + body[4:]
    if isinstance(act, RegMove):
        return struct.pack(
            "!HHIHHHHII", ofp.OFPAT_EXPERIMENTER, 24, NX_VENDOR, NXAST_REG_MOVE,
            act.n_bits, 0, 0, _field(act.src)[0], _field(act.dst)[0],
        )
    if isinstance(act, Resubmit):
        table_id = STAGE_BY_NAME[act.table].table_id
        return struct.pack(
            "!HHIHHB3x", ofp.OFPAT_EXPERIMENTER, 16, NX_VENDOR, NXAST_RESUBMIT_TABLE, 0xFFF8, table_id
        )
    if isinstance(act, PushVlan):
        return struct.pack("!HHH2x", ofp.OFPAT_PUSH_VLAN, 8, act.ethertype)
    if isinstance(act, PopVlan):
        return struct.pack("!HH4x", ofp.OFPAT_POP_VLAN, 8)
    if isinstance(act, DecTtl):
        return struct.pack("!HH4x", ofp.OFPAT_DEC_NW_TTL, 8)
    if isinstance(act, Learn):
        return _learn(act)
    if isinstance(act, CT):
        return _ct(act)
    if isinstance(act, Conjunction):
        return _conjunction(act)
    if isinstance(act, Group):
        return struct.pack("!HHI", ofp.OFPAT_GROUP, 8, act.group_id)
    raise TypeError(f"cannot encode action {act!r}")


NX_CT_RECIRC_NONE = 0xFF
NX_CT_F_COMMIT = 0x1
NX_NAT_F_SRC = 0x1  # OVS's nx_nat_flags (os-ken does not name them)


def _ct(act: CT) -> bytes:
    """NXAST_CT, serialised by os-ken itself (cached by _action: a handful of distinct ones per switch)."""
    from os_ken.ofproto import nicira_ext
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    if isinstance(act.zone, str):  # the zone is the field's low 16 bits
        zone_src, zone = act.zone, nicira_ext.ofs_nbits(0, 15)
    else:
        zone_src, zone = "", act.zone
    table = STAGE_BY_NAME[act.table].table_id if act.table is not None else NX_CT_RECIRC_NONE
    action = parser.NXActionCT(flags=NX_CT_F_COMMIT if act.commit else 0, zone_src=zone_src, zone_ofs_nbits=zone,
                               recirc_table=table, alg=0, actions=_nat(act.nat))
    return _os_ken_action(action)


def _nat(nat: str | None) -> list:
    """The NXAST_NAT inside a ct (flows.flow.CT.nat): none; "" = ct(nat); "src=<ip>" = nat(src=<ip>)."""
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    if nat is None:
        return []
    if nat == "":  # no flags, no range: apply the connection's own NAT (un-NAT a reply)
        return [parser.NXActionNAT(flags=0)]
    kind, _, address = nat.partition("=")
    if kind != "src" or not address:
        raise ValueError(f"ct nat {nat!r}: only '' and 'src=<address>' are supported")
    version = netaddr.IPAddress(address).version
    ranges = {f"range_ipv{version}_min": address, f"range_ipv{version}_max": address}
    return [parser.NXActionNAT(flags=NX_NAT_F_SRC, **ranges)]


def _conjunction(act: Conjunction) -> bytes:
    """NXAST_CONJUNCTION: on the wire the clause number is 0-based (ovs-ofctl's k/n is 1-based)."""
    return struct.pack("!HHIHBBI", ofp.OFPAT_EXPERIMENTER, 16, NX_VENDOR, NXAST_CONJUNCTION, act.clause - 1,
                       act.n_clauses, act.id)


def _learn(act: Learn) -> bytes:
    """NXAST_LEARN, serialised by os-ken itself: rare (a few per switch) and cached by _action."""
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    specs = [parser.NXFlowSpecMatch(src=(src, 0), dst=(dst, 0), n_bits=_field(dst)[1] * 8)
             for dst, src in act.matches]
    specs += [parser.NXFlowSpecLoad(src=(src, 0), dst=(dst, 0), n_bits=_field(dst)[1] * 8) for src, dst in act.loads]
    action = parser.NXActionLearn(table_id=STAGE_BY_NAME[act.table].table_id, specs=specs,
                                  idle_timeout=act.idle_timeout, priority=act.priority, cookie=act.cookie)
    return _os_ken_action(action)


# OpenFlow 1.3 has no writable in_port; OVS takes NXAST_REG_LOAD to NXM_OF_IN_PORT (16 bits), as OVN does.
NXAST_REG_LOAD = 7
NXM_OF_IN_PORT = 0x00000002


def _load_in_port(value: int) -> bytes:
    return struct.pack("!HHIHHIQ", ofp.OFPAT_EXPERIMENTER, 24, NX_VENDOR, NXAST_REG_LOAD, 15, NXM_OF_IN_PORT, value)


def _os_ken_action(action) -> bytes:
    """An os-ken action object's bytes, padded: os-ken writes the padded length in the header but not the padding."""
    buf = bytearray()
    action.serialize(buf, 0)
    return _pad8(bytes(buf))


def encode_instructions(flow: Flow) -> bytes:
    """Meter (when the first action is one), apply-actions (when there are others), goto-table (when there is
    a goto)."""
    out = b""
    actions = flow.actions
    meter = flow_meter(actions)
    if meter is not None:
        out += struct.pack("!HHI", ofp.OFPIT_METER, 8, meter.meter_id)
        actions = actions[1:]
    if actions:
        acts = b"".join(_action(a) for a in actions)
        out += struct.pack("!HH4x", ofp.OFPIT_APPLY_ACTIONS, 8 + len(acts)) + acts
    if flow.goto is not None:
        out += struct.pack("!HHB3x", ofp.OFPIT_GOTO_TABLE, 8, flow.goto)
    return out


_FLOW_MOD_BODY = struct.Struct("!QQBBHHHIIIH2x")  # ofp_flow_mod after its header, 40 bytes


def _flow_add_body(flow: Flow) -> bytes:
    """What follows the header in :func:`flow_add`'s message; encoded once per flow, then kept on it."""
    body = flow.encoded
    if body is None:
        body = _add_body(flow, encode_instructions(flow))
        memo_encoding(flow, body)  # two threads may race here: they store equal bytes
    return body


def _add_body(flow: Flow, instructions: bytes, idle_timeout: int = 0) -> bytes:
    """A flow-mod ADD's body (after the header): its fixed part, ``flow``'s match, ``instructions``."""
    return _FLOW_MOD_BODY.pack(
        flow.cookie, 0, flow.table_id, ofp.OFPFC_ADD, idle_timeout, 0, flow.priority,
        ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY, 0,
    ) + encode_match(flow.match) + instructions


def flow_add(flow: Flow, xid: int = 0) -> bytes:
    """An OFPT_FLOW_MOD ADD installing ``flow`` (replaces one with the same key)."""
    body = _flow_add_body(flow)
    return _HEADER.pack(OFP_VERSION, ofp.OFPT_FLOW_MOD, 8 + len(body), xid) + body


def learned_flow_add(flow: Flow, idle_timeout: int, xid: int = 0) -> bytes:
    """:func:`flow_add` for a flow a learn action would write, aging out after ``idle_timeout`` seconds
    unused; its SetField actions go as NXAST_REG_LOAD, as OVS writes a learn's loads, so the switch
    holds (and a dump shows) the same flow whoever wrote it."""
    loads = b""
    for act in flow.actions:
        if not isinstance(act, SetField):
            raise TypeError(f"a learned flow only loads fields, not {act!r}")
        header, width, _ = _field(act.field)
        value = int.from_bytes(_value_bytes(act.field, act.value), "big")
        loads += struct.pack("!HHIHHIQ", ofp.OFPAT_EXPERIMENTER, 24, NX_VENDOR, NXAST_REG_LOAD,
                             width * 8 - 1, header, value)  # ofs 0, n_bits: the whole field
    body = _add_body(flow, struct.pack("!HH4x", ofp.OFPIT_APPLY_ACTIONS, 8 + len(loads)) + loads, idle_timeout)
    return _HEADER.pack(OFP_VERSION, ofp.OFPT_FLOW_MOD, 8 + len(body), xid) + body


_EMPTY_MATCH = encode_match(())


def flow_delete_cookie(cookie: int, xid: int = 0) -> bytes:
    """An OFPT_FLOW_MOD DELETE of every flow, in any table, carrying exactly ``cookie``."""
    return _FLOW_MOD.pack(
        OFP_VERSION, ofp.OFPT_FLOW_MOD, 48 + len(_EMPTY_MATCH), xid,
        cookie, ALL_ONES64, ofp.OFPTT_ALL, ofp.OFPFC_DELETE, 0, 0, ofp.OFP_DEFAULT_PRIORITY,
        ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY, 0,
    ) + _EMPTY_MATCH


def flow_delete_strict(table_id: int, priority: int, match: bytes, xid: int = 0) -> bytes:
    """An OFPT_FLOW_MOD DELETE_STRICT of the one flow with this table, priority and ``match`` (an ofp_match as a
    flow dump gives it, padded), whatever its cookie: a flow made by hand carries none of ours."""
    return _FLOW_MOD.pack(
        OFP_VERSION, ofp.OFPT_FLOW_MOD, 48 + len(match), xid,
        0, 0, table_id, ofp.OFPFC_DELETE_STRICT, 0, 0, priority,
        ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY, 0,
    ) + match


_GROUP_MOD = struct.Struct("!BBHIHBxI")  # header + command, type, pad, group id: 16 bytes
_BUCKET = struct.Struct("!HHII4x")  # ofp_bucket: length, weight, watch port, watch group, pad: 16 bytes


def group_add(group: Group, xid: int = 0) -> bytes:
    """An OFPT_GROUP_MOD ADD of ``group``: fast failover (OFPGT_FF), its id ``group.group_id``.

    Its always-live buckets watch group ``LIVE_GROUP_ID`` (flows.flow), which must be on the switch first
    (:func:`live_group_add`).
    """
    buckets = b"".join(_bucket(b) for b in group.buckets)
    return _GROUP_MOD.pack(OFP_VERSION, ofp.OFPT_GROUP_MOD, _GROUP_MOD.size + len(buckets), xid, ofp.OFPGC_ADD,
                           ofp.OFPGT_FF, group.group_id) + buckets


def _bucket(bucket: Bucket) -> bytes:
    """One ofp_bucket of a fast-failover group: it watches its port, or (no port: always live) the live group."""
    actions = b"".join(_action(a) for a in bucket.actions)  # a flow's action encoder: buckets take any action
    if bucket.watch_group is not None:
        watch_port, watch_group = ofp.OFPP_ANY, bucket.watch_group.group_id
    elif bucket.watch_port is None:
        watch_port, watch_group = ofp.OFPP_ANY, LIVE_GROUP_ID
    else:
        watch_port, watch_group = bucket.watch_port, ofp.OFPG_ANY
    return _BUCKET.pack(_BUCKET.size + len(actions), 0, watch_port, watch_group) + actions


def live_group_add(xid: int = 0) -> bytes:
    """An OFPT_GROUP_MOD ADD of group ``LIVE_GROUP_ID``: an indirect group of one empty bucket, always live."""
    bucket = _BUCKET.pack(_BUCKET.size, 0, ofp.OFPP_ANY, ofp.OFPG_ANY)
    return _GROUP_MOD.pack(OFP_VERSION, ofp.OFPT_GROUP_MOD, _GROUP_MOD.size + len(bucket), xid, ofp.OFPGC_ADD,
                           ofp.OFPGT_INDIRECT, LIVE_GROUP_ID) + bucket


def group_delete(group_id: int, xid: int = 0) -> bytes:
    """An OFPT_GROUP_MOD DELETE of group ``group_id`` (OVS deletes the flows that use it too)."""
    return _GROUP_MOD.pack(OFP_VERSION, ofp.OFPT_GROUP_MOD, _GROUP_MOD.size, xid, ofp.OFPGC_DELETE, ofp.OFPGT_ALL,
                           group_id)


_METER_MOD = struct.Struct("!BBHIHHI")  # header + command, flags, meter id: 16 bytes
_DROP_BAND = struct.Struct("!HHII4x")  # ofp_meter_band_drop: type, length, rate, burst size, pad: 16 bytes
_METER_FLAGS = ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS


def meter_add(meter: Meter, xid: int = 0) -> bytes:
    """An OFPT_METER_MOD ADD of ``meter``: one drop band of ``meter.rate`` packets a second, bursts of
    ``meter.burst``, with statistics (``ovs-ofctl meter-stats`` shows what it dropped)."""
    band = _DROP_BAND.pack(ofp.OFPMBT_DROP, _DROP_BAND.size, meter.rate, meter.burst)
    return _METER_MOD.pack(OFP_VERSION, ofp.OFPT_METER_MOD, _METER_MOD.size + len(band), xid, ofp.OFPMC_ADD,
                           _METER_FLAGS, meter.meter_id) + band


def meter_delete(meter_id: int, xid: int = 0) -> bytes:
    """An OFPT_METER_MOD DELETE of meter ``meter_id`` (OVS deletes the flows that use it too)."""
    return _METER_MOD.pack(OFP_VERSION, ofp.OFPT_METER_MOD, _METER_MOD.size, xid, ofp.OFPMC_DELETE, 0, meter_id)


_MULTIPART_REQUEST = struct.Struct("!BBHIHH4x")  # header + multipart type, flags, pad


def meter_config_request(xid: int) -> bytes:
    """An OFPMP_METER_CONFIG multipart request: every meter on the switch (read with :func:`meter_config_ids`)."""
    body = struct.pack("!I4x", ofp.OFPM_ALL)
    return _MULTIPART_REQUEST.pack(OFP_VERSION, ofp.OFPT_MULTIPART_REQUEST, _MULTIPART_REQUEST.size + len(body),
                                   xid, ofp.OFPMP_METER_CONFIG, 0) + body


def group_desc_request(xid: int) -> bytes:
    """An OFPMP_GROUP_DESC multipart request: every group on the switch (read with :func:`group_desc_ids`)."""
    return _MULTIPART_REQUEST.pack(OFP_VERSION, ofp.OFPT_MULTIPART_REQUEST, _MULTIPART_REQUEST.size, xid,
                                   ofp.OFPMP_GROUP_DESC, 0)


_XID = struct.Struct("!I")


def with_xid(msg: bytes, xid: int) -> bytes:
    """The same message with another transaction id."""
    return msg[:4] + _XID.pack(xid) + msg[8:]


def bundle_ctrl(bundle_id: int, ctrl_type: int, xid: int, flags: int = BUNDLE_FLAGS) -> bytes:
    """An ONF (OpenFlow 1.3 extension) bundle control message."""
    return _EXPERIMENTER.pack(
        OFP_VERSION, ofp.OFPT_EXPERIMENTER, 24, xid, ofproto_common.ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_CONTROL
    ) + _BUNDLE_CTRL.pack(bundle_id, ctrl_type, flags)


_BUNDLE_ADD_HEAD = struct.Struct("!BBHIIIIHH")  # experimenter header + bundle_id, pad, flags


def bundle_add(bundle_id: int, inner: bytes, xid: int, flags: int = BUNDLE_FLAGS) -> bytes:
    """Wrap one message into a bundle; its xid becomes ``xid`` too, as the extension requires."""
    return _BUNDLE_ADD_HEAD.pack(
        OFP_VERSION, ofp.OFPT_EXPERIMENTER, 24 + len(inner), xid, ofproto_common.ONF_EXPERIMENTER_ID,
        ofp.ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, 0, flags,
    ) + inner[:4] + _XID.pack(xid) + inner[8:]


_BUNDLE_ADD_FLOW = struct.Struct("!BBHIIIIHHBBHI")  # _BUNDLE_ADD_HEAD, then the flow-mod's header


def bundle_flow_add(bundle_id: int, flow: Flow, xid: int, flags: int = BUNDLE_FLAGS) -> bytes:
    """``bundle_add(bundle_id, flow_add(flow), xid)`` in one pack: what a cold sync sends two million times."""
    body = _flow_add_body(flow)
    inner = 8 + len(body)
    return _BUNDLE_ADD_FLOW.pack(
        OFP_VERSION, ofp.OFPT_EXPERIMENTER, 24 + inner, xid, ofproto_common.ONF_EXPERIMENTER_ID,
        ofp.ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, 0, flags, OFP_VERSION, ofp.OFPT_FLOW_MOD, inner, xid,
    ) + body


_PACKET_OUT = struct.Struct("!BBHIIIH6x")


def packet_out(actions, data: bytes, xid: int = 0, in_port: int = ofp.OFPP_CONTROLLER) -> bytes:
    """An OFPT_PACKET_OUT injecting ``data`` with ``actions`` (no buffered packet)."""
    acts = b"".join(_action(a) for a in actions)
    return _PACKET_OUT.pack(OFP_VERSION, ofp.OFPT_PACKET_OUT, 24 + len(acts) + len(data), xid, ofp.OFP_NO_BUFFER,
                            in_port, len(acts)) + acts + data


def barrier_request(xid: int) -> bytes:
    """An OFPT_BARRIER_REQUEST."""
    return _HEADER.pack(OFP_VERSION, ofp.OFPT_BARRIER_REQUEST, 8, xid)


# -- decoding: the one reply read without os-ken's parser ----------------------------------
_MULTIPART_REPLY = struct.Struct("!BBHIHH4x")  # header + multipart type, flags
_ENTRY_LENGTH = struct.Struct("!H")  # a multipart entry (ofp_flow_stats, ofp_group_desc) starts with its length...
_FLOW_STATS_COOKIE = struct.Struct("!Q")  # ...and a flow's has its cookie at byte 24
_FLOW_STATS_COOKIE_AT = 24


def xid_of(msg: bytes) -> int:
    """A message's transaction id."""
    return _XID.unpack_from(msg, 4)[0]


def multipart_type(msg: bytes) -> int:
    """A multipart reply's type (OFPMP_*); ValueError if too short to have one."""
    if len(msg) < _MULTIPART_REPLY.size:
        raise ValueError(f"multipart reply of {len(msg)} bytes")
    return _MULTIPART_REPLY.unpack_from(msg)[4]


_BUNDLE_CTRL_REPLY = struct.Struct("!BBHIIIIHH")  # experimenter header, bundle id, type, flags


def bundle_ctrl_type(msg: bytes) -> int:
    """An ONF bundle control reply's type (ONF_BCT_*); ValueError if it is not one."""
    if len(msg) < _BUNDLE_CTRL_REPLY.size:
        raise ValueError(f"experimenter message of {len(msg)} bytes")
    _, _, _, _, experimenter, exp_type, _, ctrl_type, _ = _BUNDLE_CTRL_REPLY.unpack_from(msg)
    if experimenter != ofproto_common.ONF_EXPERIMENTER_ID or exp_type != ofp.ONF_ET_BUNDLE_CONTROL:
        raise ValueError(f"experimenter message {experimenter:#x}/{exp_type} is no bundle control reply")
    return ctrl_type


def parse(datapath, msg: bytes):
    """os-ken's object for one whole message (errors, port lists: the rare replies); ValueError if unparsable."""
    from os_ken.ofproto.ofproto_parser import msg as os_ken_msg

    version, msg_type, length, xid = _HEADER.unpack_from(msg)
    try:
        return os_ken_msg(datapath, version, msg_type, length, xid, msg)
    except Exception as exc:  # os-ken raises anything on bad input
        raise ValueError(f"unparsable message type {msg_type}: {exc!r}") from exc


def error_text(err) -> str:
    """Render an OFPErrorMsg (standard or experimenter), or a malformed reply's ValueError, readably."""
    if isinstance(err, ValueError):
        return f"malformed reply: {err}"
    etype, code = getattr(err, "type", "?"), getattr(err, "code", "?")
    name = ""
    try:
        name = f" {ofp.ofp_error_type_to_str(etype)}/{ofp.ofp_error_code_to_str(etype, code)}"
    except Exception:  # experimenter errors have no names in os-ken
        name = f" exp_type={getattr(err, 'exp_type', '?')}"
    return f"OpenFlow error type={etype} code={code}{name}"


def flow_stats_cookies(msg: bytes) -> tuple[list[int], bool]:
    """The cookies of one ``OFPMP_FLOW`` multipart reply, and whether more parts follow.

    A connecting switch's flow dump only needs its cookies (a cookie names the flow's
    content, see flows.flow): reading them at fixed offsets costs a fraction of parsing
    every match and instruction into objects. Raises ValueError on anything malformed.
    """
    return _entry_fields(msg, ofp.OFPMP_FLOW, _FLOW_STATS_COOKIE, _FLOW_STATS_COOKIE_AT, "flow stats")


_GROUP_DESC_ID = struct.Struct("!I")  # ofp_group_desc: length, type, pad, then the group id at byte 4
_GROUP_DESC_ID_AT = 4


def group_desc_ids(msg: bytes) -> tuple[list[int], bool]:
    """The group ids of one ``OFPMP_GROUP_DESC`` multipart reply, and whether more parts follow.

    A group's id names its content (flows.flow.Group), so, as with a flow dump's cookies,
    the ids are all reconciliation needs of the buckets. Raises ValueError on anything malformed.
    """
    return _entry_fields(msg, ofp.OFPMP_GROUP_DESC, _GROUP_DESC_ID, _GROUP_DESC_ID_AT, "group desc")


_METER_CONFIG_ID = struct.Struct("!I")  # ofp_meter_config: length, flags, then the meter id at byte 4
_METER_CONFIG_ID_AT = 4


def meter_config_ids(msg: bytes) -> tuple[list[int], bool]:
    """The meter ids of one ``OFPMP_METER_CONFIG`` multipart reply, and whether more parts follow (a meter's
    id names its content, flows.flow.Meter). Raises ValueError on anything malformed."""
    return _entry_fields(msg, ofp.OFPMP_METER_CONFIG, _METER_CONFIG_ID, _METER_CONFIG_ID_AT, "meter config")


def _entry_fields(msg: bytes, mp_type: int, value: struct.Struct, value_at: int, what: str) -> tuple[list[int], bool]:
    """One fixed-offset field of every entry of a multipart reply of ``mp_type`` (each entry starts with its
    16-bit length), and whether more parts follow. Raises ValueError on anything malformed."""
    if len(msg) < _MULTIPART_REPLY.size:
        raise ValueError(f"multipart reply of {len(msg)} bytes")
    _, msg_type, length, _, got_type, flags = _MULTIPART_REPLY.unpack_from(msg)
    if msg_type != ofp.OFPT_MULTIPART_REPLY or got_type != mp_type or length != len(msg):
        raise ValueError(f"not a whole {what} reply (type {msg_type}, multipart {got_type}, "
                         f"length {length} of {len(msg)})")
    values = []
    at = _MULTIPART_REPLY.size
    while at < length:
        (entry,) = _ENTRY_LENGTH.unpack_from(msg, at)
        if entry < value_at + value.size or at + entry > length:
            raise ValueError(f"{what} entry of {entry} bytes at {at} of {length}")
        values.append(value.unpack_from(msg, at + value_at)[0])
        at += entry
    return values, bool(flags & ofp.OFPMPF_REPLY_MORE)


FAST_MULTIPART = {ofp.OFPMP_FLOW: flow_stats_cookies, ofp.OFPMP_GROUP_DESC: group_desc_ids,
                  ofp.OFPMP_METER_CONFIG: meter_config_ids}
"""Multipart replies read at fixed offsets (no os-ken parse): multipart type -> reader of (values, more)."""
