"""ICMP errors the routers send that flows cannot build (they quote the offending packet).

Only ``time exceeded`` today, what traceroute needs to show the router hop. Like
OVN's pinctrl, this is the slow path: reached by packet-in from the
``ttl_expired`` flow of ``lr_in_ip_input``, rate-limited per switch, never part
of steady-state traffic.
"""

from __future__ import annotations

import time

from os_ken.lib.packet import ethernet, icmp, ipv4, packet

QUOTE_BYTES = 8  # RFC 792: the original IP header plus the first 64 bits of its payload


def time_exceeded(frame: bytes, router_ip: str, router_mac: str) -> bytes | None:
    """The ICMP time-exceeded frame answering an expired IPv4 ``frame``, or None if it is not IPv4."""
    pkt = packet.Packet(frame)
    eth = pkt.get_protocol(ethernet.ethernet)
    ip = pkt.get_protocol(ipv4.ipv4)
    if eth is None or ip is None:
        return None
    if ip.proto == 1:
        inner = pkt.get_protocol(icmp.icmp)
        if inner is not None and inner.type not in (icmp.ICMP_ECHO_REQUEST, icmp.ICMP_ECHO_REPLY):
            return None  # never answer an ICMP error with an ICMP error
    start = len(eth)  # the quoted IP datagram as it arrived (header and options included)
    quoted = frame[start:start + ip.header_length * 4 + QUOTE_BYTES]
    reply = packet.Packet()
    reply.add_protocol(ethernet.ethernet(dst=eth.src, src=router_mac, ethertype=0x0800))
    reply.add_protocol(ipv4.ipv4(dst=ip.src, src=router_ip, proto=1, ttl=64))
    reply.add_protocol(icmp.icmp(type_=icmp.ICMP_TIME_EXCEEDED, code=0, csum=0,
                                 data=icmp.TimeExceeded(data_len=len(quoted), data=quoted)))
    reply.serialize()
    return bytes(reply.data)


class RateLimiter:
    """A token bucket: at most ``rate`` events a second, bursts of ``burst``."""

    def __init__(self, rate: float = 50.0, burst: int = 20):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        """Take a token if there is one."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class FairLimiter:
    """A token bucket per key (a port) inside one for all (a switch).

    One flooding key empties its own bucket, not the shared one: the others keep their share.
    """

    def __init__(self, rate: float = 100.0, burst: int = 50, per_key_rate: float = 10.0, per_key_burst: int = 10,
                 max_keys: int = 4096):
        self.total = RateLimiter(rate, burst)
        self.per_key_rate, self.per_key_burst, self.max_keys = per_key_rate, per_key_burst, max_keys
        self.keys: dict[object, RateLimiter] = {}

    def allow(self, key: object) -> bool:
        """Take a token from ``key``'s bucket, then from the shared one; False if either is empty."""
        bucket = self.keys.get(key)
        if bucket is None:
            if len(self.keys) >= self.max_keys:  # keys come and go with ports: forget them all now and then
                self.keys.clear()
            bucket = self.keys[key] = RateLimiter(self.per_key_rate, self.per_key_burst)
        return bucket.allow() and self.total.allow()
