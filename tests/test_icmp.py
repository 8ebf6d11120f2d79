"""The controller's ICMP time-exceeded answers, built and parsed back with scapy."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Ether

from controller.icmp import RateLimiter, time_exceeded


def test_time_exceeded_quotes_the_expired_packet_from_the_router() -> None:
    probe = Ether(src="fa:16:3e:00:00:01", dst="fa:16:3e:ff:01:01") / \
        IP(src="10.0.1.10", dst="10.0.2.10", ttl=1) / UDP(sport=40000, dport=33434) / (b"x" * 20)
    out = Ether(time_exceeded(bytes(probe), "10.0.1.1", "fa:16:3e:ff:01:01"))
    assert (out.src, out.dst) == ("fa:16:3e:ff:01:01", "fa:16:3e:00:00:01")
    assert (out[IP].src, out[IP].dst) == ("10.0.1.1", "10.0.1.10")
    assert out[ICMP].type == 11 and out[ICMP].code == 0
    # Checksums as scapy computes them: rebuild and compare.
    rebuilt = Ether(bytes(out))
    del rebuilt[IP].chksum, rebuilt[ICMP].chksum
    assert Ether(bytes(rebuilt))[ICMP].chksum == out[ICMP].chksum
    assert out[IPerror].dst == "10.0.2.10" and out[UDPerror].dport == 33434


def test_no_error_about_an_error_and_nothing_for_non_ipv4() -> None:
    err = Ether() / IP(src="10.0.1.10", dst="10.0.2.10", ttl=1) / ICMP(type=3, code=1)
    assert time_exceeded(bytes(err), "10.0.1.1", "fa:16:3e:ff:01:01") is None
    assert time_exceeded(bytes(Ether(type=0x86DD) / (b"\0" * 40)), "10.0.1.1", "fa:16:3e:ff:01:01") is None


def test_rate_limiter_caps_bursts() -> None:
    limiter = RateLimiter(rate=0.001, burst=3)
    assert [limiter.allow() for _ in range(5)] == [True, True, True, False, False]
