"""Port security (anti-spoofing) end to end, with real forged frames (issue #6 acceptance, part 1).

The real controller process and two lab hypervisors; everything through the REST API.
One network with 10.40.0.0/24 and 2001:db8:40::/64; every secured port is in an "open"
security group (anything in, anything out) so that only port security decides::

    hv1: a  (attacker: secured)           hv2: t (the target: every frame is captured here)
         p  (the owner of what a forges: secured)
         u  (port security off, no security group)
         w  (secured, with allowed address pairs)

Frames are built with scapy in the test and sent raw out of a VM's eth0 (an
``AF_PACKET`` socket in the VM's namespace); a capture on t, across the tunnel, says
which arrived, byte for byte. Each forged frame is dropped while the owner's version of
it (and the sender's own honest one) arrives in the same capture; the very frames a
forges arrive when u, whose port security is off, sends them.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Reply
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils6 import in6_getnsma, in6_getnsmac, in6_mactoifaceid

from apps.lab import Lab, LabVM
from apps.lab.controller import ControllerProcess
from tests.e2e_fixtures import (
    Capture,
    attached_lab,
    create_port,
    create_security_group,
    create_security_group_rule,
    received_frames,
    require_lab,
    running_controller,
    send_frames,
    wait_in_sync,
    wait_port_active,
    was_received,
)

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

PROJECT = "project-ps-" + uuid.uuid4().hex[:8]
LAYOUT = {  # VM -> (hypervisor, host part of its addresses, port attributes)
    "a": ("hv1", 10, {}),
    "p": ("hv1", 11, {}),
    "u": ("hv1", 12, {"port_security_enabled": False, "security_groups": []}),
    "w": ("hv1", 13, {}),
    "t": ("hv2", 20, {}),
}
PAIR_MAC = "fa:16:3e:00:40:dd"
PAIRS = [  # w's allowed address pairs: an address, a CIDR, an address with its own MAC, an IPv6 address
    {"ip_address": "10.40.0.200"},
    {"ip_address": "10.40.0.208/29"},
    {"ip_address": "10.40.0.220", "mac_address": PAIR_MAC},
    {"ip_address": "2001:db8:40::200"},
]
ALIEN_MAC = "fa:16:3e:66:66:66"  # nobody's


@dataclass
class Cloud:
    ctrl: ControllerProcess
    lab: Lab
    workdir: Path
    sg: dict[str, Any]
    vms: dict[str, LabVM]

    def mac(self, vm: str) -> str:
        return str(self.vms[vm].port["mac_address"])

    def ip(self, vm: str, version: int = 4) -> str:
        return next(a for f in self.vms[vm].port["fixed_ips"] if (":" in (a := f["ip_address"])) == (version == 6))

    def lla(self, vm: str) -> str:
        return "fe80::" + in6_mactoifaceid(self.mac(vm))

    def put_port(self, vm: str, **attrs: Any) -> None:
        self.ctrl.request("PUT", f"/v2.0/ports/{self.vms[vm].port_id}", {"port": attrs})
        wait_in_sync(self.ctrl, self.lab.hypervisors)

    def deliveries(self, sends: list[tuple[str, bytes]], tag: str) -> list[bool]:
        """Send each (VM, frame) in order, twice, with a capture on t: whether each arrived there."""
        (self.workdir / tag).mkdir()
        cap = Capture(self.vms["t"], self.workdir / tag).start()
        try:
            for vm, frame in sends:
                send_frames(self.vms[vm], [frame, frame])
        finally:
            cap.stop()
        received = received_frames(cap)
        return [was_received(received, frame) for _, frame in sends]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    require_lab()
    workdir = tmp_path_factory.mktemp("e2e-portsec")
    prefix = "tfps" + uuid.uuid4().hex[:5]
    with running_controller(workdir / "controller") as ctrl, attached_lab(ctrl, prefix, n_hypervisors=2) as lab:
        net = ctrl.create("network", name="ps", project_id=PROJECT)
        for version, cidr in ((4, "10.40.0.0/24"), (6, "2001:db8:40::/64")):  # DHCP off: the tenant serves it
            ctrl.create("subnet", network_id=net["id"], cidr=cidr, ip_version=version, project_id=PROJECT,
                        enable_dhcp=False)
        sg = create_security_group(ctrl, "open", PROJECT)
        for ethertype in ("IPv4", "IPv6"):
            create_security_group_rule(ctrl, sg["id"], "ingress", ethertype=ethertype)
        vms = {}
        for name, (host, n, attrs) in LAYOUT.items():
            attrs = {"security_groups": [sg["id"]], **attrs}
            if name == "w":
                attrs["allowed_address_pairs"] = PAIRS
            fixed = [{"ip_address": f"10.40.0.{n}"}, {"ip_address": f"2001:db8:40::{n}"}]
            port = create_port(ctrl, net, host, fixed_ips=fixed, **attrs)
            vms[name] = lab.plug_vm(name, port, mtu=int(net.get("mtu") or 1450))
        for vm in vms.values():
            wait_port_active(ctrl, vm.port_id)
        c = Cloud(ctrl, lab, workdir, sg, vms)
        wait_in_sync(ctrl, lab.hypervisors)
        yield c


# -- frames ---------------------------------------------------------------------------------
def udp4(c: Cloud, eth_src: str, ip_src: str, tag: str) -> bytes:
    return bytes(Ether(src=eth_src, dst=c.mac("t")) / IP(src=ip_src, dst=c.ip("t")) / UDP(sport=40000, dport=9)
                 / Raw(tag.encode()))


def udp6(c: Cloud, eth_src: str, ip_src: str, tag: str) -> bytes:
    return bytes(Ether(src=eth_src, dst=c.mac("t")) / IPv6(src=ip_src, dst=c.ip("t", 6))
                 / UDP(sport=40000, dport=9) / Raw(tag.encode()))


def arp_reply(c: Cloud, eth_src: str, sha: str, spa: str) -> bytes:
    return bytes(Ether(src=eth_src, dst=c.mac("t"))
                 / ARP(op=2, hwsrc=sha, psrc=spa, hwdst=c.mac("t"), pdst=c.ip("t")))


def na(c: Cloud, eth_src: str, ip_src: str, target: str) -> bytes:
    """An unsolicited (override) Neighbour Advertisement to t: "``target`` is at ``eth_src``"."""
    return bytes(Ether(src=eth_src, dst=c.mac("t")) / IPv6(src=ip_src, dst=c.ip("t", 6), hlim=255)
                 / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=eth_src))


def ra(eth_src: str, ip_src: str) -> bytes:
    """A Router Advertisement to all nodes (router lifetime 0: t's kernel makes no default route of it)."""
    return bytes(Ether(src=eth_src, dst="33:33:00:00:00:01") / IPv6(src=ip_src, dst="ff02::1", hlim=255)
                 / ICMPv6ND_RA(routerlifetime=0) / ICMPv6NDOptSrcLLAddr(lladdr=eth_src))


def dhcp_offer(c: Cloud, eth_src: str, ip_src: str) -> bytes:
    """A DHCP server's reply (UDP 67 -> 68) to t."""
    return bytes(Ether(src=eth_src, dst=c.mac("t")) / IP(src=ip_src, dst=c.ip("t")) / UDP(sport=67, dport=68)
                 / BOOTP(op=2, yiaddr=c.ip("t"), siaddr=ip_src, chaddr=bytes.fromhex(c.mac("t").replace(":", "")))
                 / DHCP(options=[("message-type", "offer"), ("server_id", ip_src), "end"]))


def dhcp6_reply(c: Cloud, eth_src: str, ip_src: str) -> bytes:
    return bytes(Ether(src=eth_src, dst=c.mac("t")) / IPv6(src=ip_src, dst=c.ip("t", 6)) / UDP(sport=547, dport=546)
                 / DHCP6_Reply(trid=0x4040))


def dhcp_discover(eth_src: str) -> bytes:
    """What a booting guest sends before it has an address: from 0.0.0.0 to broadcast, UDP 68 -> 67."""
    return bytes(Ether(src=eth_src, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                 / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(eth_src.replace(":", "")), xid=0x4040)
                 / DHCP(options=[("message-type", "discover"), "end"]))


def dad(eth_src: str, target: str) -> bytes:
    """IPv6 duplicate address detection: a Neighbour Solicitation from :: to the target's solicited-node group."""
    group = in6_getnsma(socket.inet_pton(socket.AF_INET6, target))
    dst = socket.inet_ntop(socket.AF_INET6, group)
    return bytes(Ether(src=eth_src, dst=in6_getnsmac(group)) / IPv6(src="::", dst=dst, hlim=255)
                 / ICMPv6ND_NS(tgt=target))


def spoof_cases(c: Cloud) -> dict[str, tuple[bytes, str, bytes]]:
    """Case -> (the frame a forges, the owner that may send the legitimate version, that version)."""
    a, p = c.mac("a"), c.mac("p")
    return {
        "source MAC": (udp4(c, p, c.ip("a"), "mac-a"), "p", udp4(c, p, c.ip("p"), "mac-p")),
        "source MAC nobody owns": (udp4(c, ALIEN_MAC, c.ip("a"), "alien-a"), "a", udp4(c, a, c.ip("a"), "alien-own")),
        "source IPv4": (udp4(c, a, c.ip("p"), "ip4-a"), "p", udp4(c, p, c.ip("p"), "ip4-p")),
        "source IPv6": (udp6(c, a, c.ip("p", 6), "ip6-a"), "p", udp6(c, p, c.ip("p", 6), "ip6-p")),
        "ARP sender MAC": (arp_reply(c, a, p, c.ip("a")), "p", arp_reply(c, p, p, c.ip("p"))),
        "ARP sender IP": (arp_reply(c, a, a, c.ip("p")), "p", arp_reply(c, p, p, c.ip("p"))),
        "neighbour advertisement": (na(c, a, c.ip("a", 6), c.ip("p", 6)), "p", na(c, p, c.ip("p", 6), c.ip("p", 6))),
        "DHCP discover with a forged MAC": (dhcp_discover(ALIEN_MAC), "a", dhcp_discover(a)),
        # no owner inside the cloud: the version that must pass is the one from the unsecured port
        "DHCP server reply": (dhcp_offer(c, a, c.ip("a")), "u", dhcp_offer(c, c.mac("u"), c.ip("u"))),
        "DHCPv6 server reply": (dhcp6_reply(c, a, c.ip("a", 6)), "u", dhcp6_reply(c, c.mac("u"), c.ip("u", 6))),
        "router advertisement": (ra(a, c.lla("a")), "u", ra(c.mac("u"), c.lla("u"))),
    }


@pytest.fixture(scope="module")
def spoofing(cloud: Cloud) -> dict[str, tuple[bool, bool, bool]]:
    """Case -> (a's forged frame arrived, the owner's version arrived, the forged frame from u arrived).

    Two captures on t: one with each forged frame from a and the legitimate version from
    its owner, one with the very forged frames from u (the same bytes: they cannot share
    a capture with a's).
    """
    cases = spoof_cases(cloud)
    sends = [s for forged, owner, legit in cases.values() for s in (("a", forged), (owner, legit))]
    first = iter(cloud.deliveries(sends, "spoofing"))
    from_u = cloud.deliveries([("u", forged) for forged, _, _ in cases.values()], "spoofing-from-u")
    return {case: (next(first), next(first), u) for case, u in zip(cases, from_u, strict=True)}


SPOOF_CASES = ["source MAC", "source MAC nobody owns", "source IPv4", "source IPv6", "ARP sender MAC", "ARP sender IP",
               "neighbour advertisement", "DHCP discover with a forged MAC", "DHCP server reply",
               "DHCPv6 server reply", "router advertisement"]


@pytest.mark.parametrize("case", SPOOF_CASES)
def test_forged_frame_is_dropped_and_the_owners_passes(spoofing: dict[str, tuple[bool, bool, bool]], case: str) -> None:
    """The forged frame from a secured port never reaches t; the owner's version of it does."""
    forged, legit, _ = spoofing[case]
    assert not forged, f"{case}: a's forged frame reached t"
    assert legit, f"{case}: the legitimate frame did not reach t (the capture proves nothing)"


@pytest.mark.parametrize("case", SPOOF_CASES)
def test_port_security_off_sends_anything(spoofing: dict[str, tuple[bool, bool, bool]], case: str) -> None:
    """u has port security off and no security group: the very frame a forged reaches t."""
    assert spoofing[case][2], f"{case}: u's frame was dropped although its port security is off"


def test_booting_guest_traffic_passes(cloud: Cloud) -> None:
    """DHCP discover from 0.0.0.0, IPv6 duplicate address detection (NS from ::), a's advertisement of
    its own address, link-local traffic and gratuitous ARP for itself all pass port security."""
    a = cloud.mac("a")
    sends = [
        ("a", dhcp_discover(a)),
        ("a", dad(a, "2001:db8:40::77")),
        ("a", dad(a, cloud.ip("a", 6))),
        ("a", na(cloud, a, cloud.ip("a", 6), cloud.ip("a", 6))),
        ("a", udp6(cloud, a, cloud.lla("a"), "link-local")),
        ("a", bytes(Ether(src=a, dst="ff:ff:ff:ff:ff:ff")
                    / ARP(op=1, hwsrc=a, psrc="0.0.0.0", pdst=cloud.ip("a")))),  # ARP probe
    ]
    got = cloud.deliveries(sends, "boot")
    assert got == [True] * len(sends), got


def test_allowed_address_pairs(cloud: Cloud) -> None:
    """w may send from its pairs (an address, a CIDR, an address on the pair's own MAC, IPv6), on the
    pair's MAC only; not from an address outside them, nor its fixed address on the pair's MAC."""
    w = cloud.mac("w")
    cases = {
        "pair address": (udp4(cloud, w, "10.40.0.200", "pair-ip"), True),
        "inside the pair CIDR": (udp4(cloud, w, "10.40.0.213", "pair-cidr"), True),
        "just outside the pair CIDR": (udp4(cloud, w, "10.40.0.216", "out-cidr"), False),
        "pair with its own MAC": (udp4(cloud, PAIR_MAC, "10.40.0.220", "pair-mac"), True),
        "pair address on the port MAC": (udp4(cloud, w, "10.40.0.220", "pair-wrong-mac"), False),
        "fixed address on the pair MAC": (udp4(cloud, PAIR_MAC, cloud.ip("w"), "fixed-pair-mac"), False),
        "IPv6 pair": (udp6(cloud, w, "2001:db8:40::200", "pair-ip6"), True),
        "IPv6 outside the pairs": (udp6(cloud, w, "2001:db8:40::201", "out-ip6"), False),
        "gratuitous ARP for the pair": (arp_reply(cloud, w, w, "10.40.0.200"), True),
        "ARP for the pair on the pair MAC": (arp_reply(cloud, PAIR_MAC, PAIR_MAC, "10.40.0.220"), True),
        "advertisement for the IPv6 pair": (na(cloud, w, cloud.ip("w", 6), "2001:db8:40::200"), True),
    }
    got = cloud.deliveries([("w", frame) for frame, _ in cases.values()], "pairs")
    wrong = [name for (name, (_, want)), arrived in zip(cases.items(), got, strict=True) if arrived != want]
    assert not wrong, f"delivered contrary to the pairs: {wrong}"


def test_port_security_changes_apply_live_and_leave_no_stale_flow(cloud: Cloud) -> None:
    """PUT on ports, no restart: pairs removed, then back; port security turned off on a, then on again.
    After each change every switch holds exactly its compiled flows and t sees the new behaviour."""
    pair = udp4(cloud, cloud.mac("w"), "10.40.0.200", "live-pair")
    forged = udp4(cloud, cloud.mac("a"), cloud.ip("p"), "live-forged")
    try:
        cloud.put_port("w", allowed_address_pairs=[])
        assert cloud.deliveries([("w", pair)], "pairs-off") == [False]
        cloud.put_port("w", allowed_address_pairs=PAIRS)
        assert cloud.deliveries([("w", pair)], "pairs-on") == [True]

        cloud.put_port("a", port_security_enabled=False, security_groups=[])
        assert cloud.deliveries([("a", forged)], "a-off") == [True]
    finally:
        cloud.put_port("a", port_security_enabled=True, security_groups=[cloud.sg["id"]])
    assert cloud.deliveries([("a", forged), ("a", udp4(cloud, cloud.mac("a"), cloud.ip("a"), "live-own"))],
                            "a-on") == [False, True]
