"""A connection tracker for the pipeline simulator, with the semantics OVS's ``ct`` gives our flows.

One :class:`Conntrack` per simulated switch (:class:`flows.simulate.Pipeline`), so a
test can send a request and then its reply through the same switch. Connections are
keyed by (zone, protocol, source, destination, source port, destination port) in
their original direction; zones never share state.

What :meth:`Conntrack.track` answers (OVS's ``ct_state`` bits, always with ``trk``):

- no committed connection in the zone: ``new`` (a connection that is never committed
  stays ``new``, packet after packet, as in OVS);
- the original direction of a committed connection: ``new`` until a reply was seen,
  then ``est``;
- the reply direction of a committed connection: ``est`` + ``rpl``;
- an ICMP echo reply without a request, or a packet that is not IP: ``inv``.

``commit`` stores a new connection. TCP flags and sequence windows are not modelled;
ICMP echo request/reply are paired (identifier not modelled); other ICMP types are
tracked as their own one-way ``new`` connections; related (ICMP errors, ALGs) is not
modelled.

NAT (:attr:`flows.flow.CT.nat`), source NAT to one address only, deterministically (the
ports are kept): a connection committed with ``nat="src=X"`` is NATed to X, and its
replies (addressed to X) are found by the connection tracker as replies. A ct with any
``nat`` then translates each packet of a NATed connection as OVS does
(:meth:`Conntrack.nat_rewrite`): the original direction's source becomes X, a reply's
destination becomes the original source again (un-NAT). A ct without ``nat`` tracks
them but changes no header.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import netaddr

from flows.flow import CT_EST, CT_INV, CT_NEW, CT_RPL, CT_TRK

ETH_TYPE_IPV4, ETH_TYPE_IPV6 = 0x0800, 0x86DD
TCP, UDP, SCTP, ICMP, ICMPV6 = 6, 17, 132, 1, 58
ECHO = {ICMP: (8, 0), ICMPV6: (128, 129)}  # protocol -> (request type, reply type)


@dataclass
class Connection:
    """A committed connection: its original-direction key, whether a reply was seen, what its source is NATed to."""

    key: tuple
    replied: bool = False
    snat: int | None = None  # the address the original direction's source is translated to (None: no NAT)


def _snat(nat: str | None, pkt: Mapping[str, int]) -> int | None:
    """The address a ct's ``nat`` ("src=<ip>") translates this packet's source to; None for no source NAT."""
    kind, _, address = (nat or "").partition("=")
    if kind != "src" or not address:
        return None
    ip = netaddr.IPAddress(address)
    if (ip.version == 4) != (pkt.get("eth_type") == ETH_TYPE_IPV4):
        return None  # an address of the other family: OVS NATs nothing
    return int(ip)


def _with_source(key: tuple, source: int) -> tuple:
    """An original-direction key with another source address (every key has the source at index 2)."""
    return (*key[:2], source, *key[3:])


def _keys(pkt: Mapping[str, int]) -> tuple[tuple | None, tuple | None] | None:
    """(key if the packet is in the original direction, key if it is a reply); None: not IP."""
    eth_type = pkt.get("eth_type")
    if eth_type == ETH_TYPE_IPV4:
        src, dst = pkt.get("ipv4_src", 0), pkt.get("ipv4_dst", 0)
    elif eth_type == ETH_TYPE_IPV6:
        src, dst = pkt.get("ipv6_src", 0), pkt.get("ipv6_dst", 0)
    else:
        return None
    proto = pkt.get("ip_proto", 0)
    if proto in (TCP, UDP, SCTP):
        name = {TCP: "tcp", UDP: "udp", SCTP: "sctp"}[proto]
        sport, dport = pkt.get(f"{name}_src", 0), pkt.get(f"{name}_dst", 0)
        return (eth_type, proto, src, dst, sport, dport), (eth_type, proto, dst, src, dport, sport)
    if proto in ECHO:
        icmp_type = pkt.get("icmpv4_type" if proto == ICMP else "icmpv6_type", 0)
        request, reply = ECHO[proto]
        if icmp_type == request:
            return (eth_type, proto, src, dst, "echo", None), None
        if icmp_type == reply:
            return None, (eth_type, proto, dst, src, "echo", None)
        return (eth_type, proto, src, dst, icmp_type, None), None
    return (eth_type, proto, src, dst, None, None), (eth_type, proto, dst, src, None, None)


class Conntrack:
    """The connection table of one simulated switch, all zones."""

    def __init__(self) -> None:
        self.connections: dict[tuple, Connection] = {}  # (zone, original key) -> connection
        # (zone, original key as NATed) -> connection: where a reply to a NATed connection finds it
        self.nat_replies: dict[tuple, Connection] = {}

    def track(self, pkt: Mapping[str, int], zone: int, *, commit: bool = False, nat: str | None = None) -> int:
        """The packet's ct_state in ``zone``; with ``commit``, store it if it is a new connection (NATed as
        ``nat`` says: see flows.flow.CT)."""
        keys = _keys(pkt)
        if keys is None:
            return CT_TRK | CT_INV
        fwd, rev = keys
        if fwd is not None and (conn := self.connections.get((zone, fwd))) is not None:
            return CT_TRK | (CT_EST if conn.replied else CT_NEW)
        if rev is not None and (conn := self._replied_to(zone, rev)) is not None:
            conn.replied = True
            return CT_TRK | CT_EST | CT_RPL
        if fwd is None:
            return CT_TRK | CT_INV  # a reply to nothing
        if commit:
            conn = self.connections[(zone, fwd)] = Connection(fwd, snat=_snat(nat, pkt))
            if conn.snat is not None:
                self.nat_replies[(zone, _with_source(fwd, conn.snat))] = conn
        return CT_TRK | CT_NEW

    def _replied_to(self, zone: int, rev: tuple) -> Connection | None:
        """The connection a packet whose reverse key is ``rev`` replies to (NATed or not)."""
        conn = self.connections.get((zone, rev))
        return conn if conn is not None else self.nat_replies.get((zone, rev))

    def nat_rewrite(self, pkt: Mapping[str, int], zone: int) -> dict[str, int]:
        """The header fields a ct with ``nat`` changes in this packet (none unless its connection is NATed).

        The original direction's source becomes the NAT address; a reply's destination (the NAT
        address) becomes the original source again.
        """
        keys = _keys(pkt)
        if keys is None:
            return {}
        fwd, rev = keys
        src, dst = ("ipv4_src", "ipv4_dst") if pkt.get("eth_type") == ETH_TYPE_IPV4 else ("ipv6_src", "ipv6_dst")
        if fwd is not None and (conn := self.connections.get((zone, fwd))) is not None:
            return {src: conn.snat} if conn.snat is not None else {}
        if rev is not None and (conn := self.nat_replies.get((zone, rev))) is not None:
            return {dst: conn.key[2]}
        return {}

    def flush(self, zone: int | None = None) -> None:
        """Forget every connection (of one zone)."""
        self.connections = {k: c for k, c in self.connections.items() if zone is not None and k[0] != zone}
        self.nat_replies = {k: c for k, c in self.nat_replies.items() if zone is not None and k[0] != zone}

    def __len__(self) -> int:
        return len(self.connections)


def lint_conntrack(flows: list, stages: Mapping[str, int], prereq_ip_proto: Mapping[str, int]) -> list[str]:
    """What OVS rejects or mis-runs around ct, conjunctions and transport fields (see flows.simulate.lint).

    A match on a transport field without its ``ip_proto`` and an IPv4/IPv6
    ``eth_type`` (OFPBMC_BAD_PREREQ); a ``ct`` on a flow whose match does not
    say IPv4 or IPv6 (OFPBAC_MATCH_INCONSISTENT); a ``ct(table=...)`` that is not the flow's last
    instruction (the untracked original would run the rest too); a conjunctive match
    whose flows do not share one priority and clause count, misses a clause, or has
    no ``conj_id`` flow at its priority. A security group's conjunction (flows.acl.GCID_BIT)
    may have its members' clause alone: the group has no rule in that direction, so the
    conjunction never completes (OVS accepts it), and its members' flows need not change
    when it gets one.
    """
    from flows.acl import GCID_BIT
    from flows.flow import CT, Conjunction

    problems: list[str] = []
    conj: dict[tuple[int, int], dict] = {}  # (table, id) -> what its flows say
    conj_flows: set[tuple[int, int, int]] = set()  # (table, priority, conj_id) of the flows matching conj_id
    for f in flows:
        where = f"table {f.table_id} prio {f.priority} [{f.description}]"
        match = dict(f.match)
        for name, proto in prereq_ip_proto.items():
            if name in match and (match.get("ip_proto") != proto or match.get("eth_type") not in (0x0800, 0x86DD)):
                problems.append(f"{where}: {name} needs ip_proto={proto} and an IP eth_type in the match")
        if "conj_id" in match:
            conj_flows.add((f.table_id, f.priority, match["conj_id"]))
        for i, a in enumerate(f.actions):
            if isinstance(a, CT):
                if match.get("eth_type") not in (0x0800, 0x86DD):
                    problems.append(f"{where}: ct needs an IPv4 or IPv6 eth_type in the match "
                                    "(OFPBAC_MATCH_INCONSISTENT)")
                if a.table is not None and (i != len(f.actions) - 1 or f.goto is not None):
                    problems.append(f"{where}: ct(table=...) must end the flow")
                if a.table is not None and a.table not in stages:
                    problems.append(f"{where}: ct to unknown table {a.table}")
            elif isinstance(a, Conjunction):
                if f.goto is not None or not all(isinstance(b, Conjunction) for b in f.actions):
                    problems.append(f"{where}: a conjunction flow may have no other action")
                entry = conj.setdefault((f.table_id, a.id), {"prios": set(), "n": set(), "clauses": set()})
                entry["prios"].add(f.priority)
                entry["n"].add(a.n_clauses)
                entry["clauses"].add(a.clause)
    for (table, cid), entry in sorted(conj.items()):
        where = f"table {table} conjunction {cid}"
        if len(entry["prios"]) != 1 or len(entry["n"]) != 1:
            problems.append(f"{where}: flows at priorities {sorted(entry['prios'])} with n {sorted(entry['n'])}")
            continue
        (prio,), (n,) = entry["prios"], entry["n"]
        if entry["clauses"] != set(range(1, n + 1)) and not (cid & GCID_BIT and entry["clauses"] == {1}):
            problems.append(f"{where}: clauses {sorted(entry['clauses'])} of {n}")
        if (table, prio, cid) not in conj_flows:
            problems.append(f"{where}: no conj_id={cid} flow at priority {prio}")
    return problems
