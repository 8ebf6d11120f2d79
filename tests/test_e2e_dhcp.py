"""Address assignment on real Open vSwitch: VMs with no address configured ask for one.

IPv4: busybox ``udhcpc``. The controller (``--dhcp-lease-time 10``: renewals every 5 s)
answers from the topology; the client's script (the lab's ``apps.lab.steps.UDHCPC_SCRIPT``)
applies what it gets to the VM's eth0 (address, MTU, routes) and records the options: each
is checked in the VM's interface and routing table, against the API. IPv6: the VM's kernel
(``accept_ra``) solicits the router at link up and builds its address from the advertisement
(``--ra-interval 3``: unsolicited ones every 1-3 s too); ISC ``dhclient -6`` asks DHCPv6.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.lab import steps
from apps.lab.controller import ControllerProcess
from apps.lab.lab import Lab, LabVM
from flows.dhcp import HYPERVISOR_METER, PORT_BURST, PORT_RATE
from tests.e2e_fixtures import attached_lab, create_port, running_controller, wait_port_active, wait_until
from tests.lab_fixtures import lab_prefix, require_lab, unless_able

pytestmark = [pytest.mark.ovs, pytest.mark.lab]

PROJECT = "dhcp-e2e"
LEASE = 10


@dataclass
class Cloud:
    ctrl: ControllerProcess
    lab: Lab
    net: dict
    subnet: dict
    workdir: Path


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    require_lab()
    for tool, package in (("udhcpc", "udhcpc"), ("dhclient", "isc-dhcp-client")):
        unless_able(None if shutil.which(tool) else f"{tool} (Debian package {package}) is not installed", "DHCP e2e")
    workdir = tmp_path_factory.mktemp("e2e-dhcp")
    steps.write_udhcpc_script(str(workdir))
    args = ("--dhcp-lease-time", str(LEASE), "--dhcp-domain", "tenant.test", "--ra-interval", "3")
    with running_controller(workdir / "controller", *args) as ctrl, \
            attached_lab(ctrl, lab_prefix("dh"), n_hypervisors=2) as lab:
        net = ctrl.create("network", name="dhcp", project_id=PROJECT)
        subnet = ctrl.create("subnet", network_id=net["id"], cidr="10.60.0.0/24", ip_version=4, project_id=PROJECT,
                             gateway_ip="10.60.0.1", dns_nameservers=["192.0.2.53", "192.0.2.54"],
                             host_routes=[{"destination": "172.16.0.0/12", "nexthop": "10.60.0.254"}])
        yield Cloud(ctrl, lab, net, subnet, workdir)


def boot(cloud: Cloud, name: str, host: str, net: dict | None = None) -> tuple[LabVM, dict]:
    """A VM whose eth0 has the port's MAC and no address at all (what a stock image boots with)."""
    port = create_port(cloud.ctrl, net or cloud.net, host, name=name, port_security_enabled=True)
    vm = cloud.lab.plug_vm(name, port, mtu=1500, dhcp=True)
    wait_port_active(cloud.ctrl, port["id"])
    assert "inet " not in vm.cmd("ip -4 addr show dev eth0")
    return vm, port


def udhcpc(cloud: Cloud, vm: LabVM, *args: str) -> tuple[subprocess.Popen, Path]:
    state = cloud.workdir / f"{vm.name}.lease"
    proc = vm.popen(steps.udhcpc_argv(str(cloud.workdir / "udhcpc.script"), "eth0", *args),
                    env={**os.environ, "STATE": str(state)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True)
    return proc, state


def lease_of(state: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in state.read_text().splitlines()) if state.exists() else {}


def test_a_booting_vm_gets_its_address_gateway_dns_mtu_and_routes(cloud: Cloud) -> None:
    vm, port = boot(cloud, "v1", "hv1")
    proc, state = udhcpc(cloud, vm, "-q", "-n")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    got = lease_of(state)
    address = port["fixed_ips"][0]["ip_address"]
    assert (got["ip"], got["subnet"], got["router"], got["serverid"]) == (address, "255.255.255.0", "10.60.0.1",
                                                                            "10.60.0.1")
    assert got["dns"].split() == ["192.0.2.53", "192.0.2.54"] and got["domain"] == "tenant.test"
    assert got["mtu"] == str(cloud.net["mtu"]) and got["lease"] == str(LEASE)
    assert got["staticroutes"].split() == ["172.16.0.0/12", "10.60.0.254", "0.0.0.0/0", "10.60.0.1"]
    # ...and the VM's network is configured with it
    assert f"inet {address}/24" in vm.cmd("ip -4 addr show dev eth0")
    assert f"mtu {cloud.net['mtu']}" in vm.cmd("ip link show dev eth0")
    routes = vm.cmd("ip -4 route show")
    assert "default via 10.60.0.1 dev eth0" in routes and "172.16.0.0/12 via 10.60.0.254 dev eth0" in routes


def test_a_changed_address_reaches_the_vm_at_its_next_renewal(cloud: Cloud) -> None:
    vm, port = boot(cloud, "v2", "hv2")
    proc, state = udhcpc(cloud, vm)
    try:
        old = port["fixed_ips"][0]["ip_address"]
        wait_until(lambda: lease_of(state).get("ip") == old, 15, "the first lease")
        new = "10.60.0.77"
        cloud.ctrl.request("PUT", f"/v2.0/ports/{port['id']}",
                           {"port": {"fixed_ips": [{"subnet_id": cloud.subnet["id"], "ip_address": new}]}})
        # the renewal at LEASE/2 asks for the old address: NAK, then a new DISCOVER gets the new one
        wait_until(lambda: lease_of(state).get("ip") == new, LEASE + 10, "the new address after a renewal")
        addrs = vm.cmd("ip -4 addr show dev eth0")
        assert f"inet {new}/24" in addrs and old not in addrs
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_no_answer_where_dhcp_is_off(cloud: Cloud) -> None:
    net = cloud.ctrl.create("network", name="nodhcp", project_id=PROJECT)
    cloud.ctrl.create("subnet", network_id=net["id"], cidr="10.61.0.0/24", ip_version=4, project_id=PROJECT,
                      enable_dhcp=False)
    vm, _ = boot(cloud, "v3", "hv1", net)
    proc, state = udhcpc(cloud, vm, "-q", "-n", "-t", "3")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0 and not state.exists(), out
    assert "inet " not in vm.cmd("ip -4 addr show dev eth0")


def v6_network(cloud: Cloud, name: str, cidr: str, mode: str) -> tuple[dict, dict]:
    """A network with an IPv6 subnet in ``mode`` (ra and address mode), on a router."""
    net = cloud.ctrl.create("network", name=name, project_id=PROJECT)
    subnet = cloud.ctrl.create("subnet", network_id=net["id"], cidr=cidr, ip_version=6, project_id=PROJECT,
                               ipv6_ra_mode=mode, ipv6_address_mode=mode)
    router = cloud.ctrl.create("router", name=f"r-{name}", project_id=PROJECT)
    cloud.ctrl.request("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": subnet["id"]})
    return net, subnet


def default_via_router(vm: LabVM) -> str:
    """The VM's IPv6 default route learned from an advertisement ('' until there is one)."""
    return next((line for line in vm.cmd("ip -6 route show default").splitlines() if "proto ra" in line), "")


def test_slaac_builds_the_address_the_api_shows(cloud: Cloud) -> None:
    net, _ = v6_network(cloud, "slaac", "2001:db8:60::/64", "slaac")
    vm, port = boot(cloud, "v4", "hv1", net)
    (address,) = [f["ip_address"] for f in port["fixed_ips"] if ":" in f["ip_address"]]
    wait_until(lambda: f"inet6 {address}/64" in vm.cmd("ip -6 addr show dev eth0 scope global"), 15,
               lambda: f"{address} on eth0: {vm.cmd('ip -6 addr show dev eth0')}")
    route = wait_until(lambda: default_via_router(vm), 5, "a default route from the advertisement")
    assert "via fe80::" in route
    assert vm.cmd("sysctl -n net.ipv6.conf.eth0.mtu").strip() == str(net["mtu"])  # the MTU option


def test_stateful_subnet_advertises_without_the_prefix_for_slaac(cloud: Cloud) -> None:
    """M flag, prefix not autonomous: the kernel takes the router, and builds no address itself."""
    net, _ = v6_network(cloud, "stateful", "2001:db8:61::/64", "dhcpv6-stateful")
    vm, _ = boot(cloud, "v5", "hv2", net)
    wait_until(lambda: default_via_router(vm), 15, "a default route from the advertisement")
    assert "2001:db8:61:" not in vm.cmd("ip -6 addr show dev eth0")


def test_advertisements_come_unsolicited_too(cloud: Cloud) -> None:
    net, _ = v6_network(cloud, "periodic", "2001:db8:62::/64", "slaac")
    vm, _ = boot(cloud, "v6", "hv1", net)
    wait_until(lambda: default_via_router(vm), 15, "a default route from the advertisement")
    vm.cmd("sysctl -qw net.ipv6.conf.eth0.router_solicitations=0")  # it asks no more: what comes is periodic
    out = vm.cmd("timeout 8 tcpdump -c 1 -nl -i eth0 'icmp6 and ip6[40] == 134' 2>&1")
    assert "router advertisement" in out and "ff02::1" in out, out


def dhclient6(cloud: Cloud, vm: LabVM, *flags: str) -> dict[str, str]:
    """ISC ``dhclient -6`` once in ``vm`` (files in the test's directory, never the host's); what it was given."""
    base = cloud.workdir / f"{vm.name}.dhclient6"
    script = base.with_suffix(".sh")
    script.write_text("#!/bin/sh\n"  # dhclient gives its script its own environment: the paths are written in
                      f"env | grep -E '^(reason|new_ip6_address|new_ip6_prefixlen|new_dhcp6_name_servers|"
                      f"new_dhcp6_domain_search)=' > '{base}'.\"$reason\"\n"
                      'if [ -n "$new_ip6_address" ]; then ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" '
                      'dev "$interface" nodad; fi\n')
    script.chmod(0o755)
    wait_until(lambda: "tentative" not in vm.cmd("ip -6 addr show dev eth0 scope link")
               and "inet6 fe80" in vm.cmd("ip -6 addr show dev eth0 scope link"), 10, "eth0's link-local address")
    pid = base.with_suffix(".pid")

    def given() -> dict[str, str]:
        got: dict[str, str] = {}
        for state in sorted(cloud.workdir.glob(f"{base.name}.*")):
            if state.suffix.lstrip(".").isupper():  # one file per reason the script was called with
                got.update(line.split("=", 1) for line in state.read_text().splitlines() if "=" in line)
        return got

    try:
        out = vm.cmd(f"timeout 20 dhclient -6 {' '.join(flags)} -1 -v -sf {script} -lf {base}.leases -pf {pid} "
                     "eth0 2>&1")
        return wait_until(given, 5, lambda: f"dhclient's script called; dhclient said:\n{out}")
    finally:
        if pid.exists():
            vm.cmd(f"kill {pid.read_text().strip()}")


def test_dhcpv6_stateful_gives_the_ports_own_address_and_dns(cloud: Cloud) -> None:
    net = cloud.ctrl.create("network", name="stateful6", project_id=PROJECT)
    cloud.ctrl.create("subnet", network_id=net["id"], cidr="2001:db8:63::/64", ip_version=6, project_id=PROJECT,
                      ipv6_address_mode="dhcpv6-stateful", dns_nameservers=["2001:db8::53"])
    vm, port = boot(cloud, "v7", "hv2", net)
    (address,) = [f["ip_address"] for f in port["fixed_ips"]]
    got = dhclient6(cloud, vm)
    assert got.get("new_ip6_address") == address and got.get("new_dhcp6_name_servers") == "2001:db8::53", got
    assert got.get("new_dhcp6_domain_search", "").rstrip(".") == "tenant.test"
    assert f"inet6 {address}/" in vm.cmd("ip -6 addr show dev eth0")


def test_dhcpv6_stateless_gives_the_dns_servers(cloud: Cloud) -> None:
    net = cloud.ctrl.create("network", name="stateless6", project_id=PROJECT)
    cloud.ctrl.create("subnet", network_id=net["id"], cidr="2001:db8:64::/64", ip_version=6, project_id=PROJECT,
                      ipv6_address_mode="dhcpv6-stateless", dns_nameservers=["2001:db8::54"])
    vm, _ = boot(cloud, "v8", "hv1", net)
    got = dhclient6(cloud, vm, "-S")
    assert got.get("new_dhcp6_name_servers") == "2001:db8::54" and "new_ip6_address" not in got, got


FLOOD = """
import sys, time
from scapy.all import BOOTP, DHCP, IP, UDP, Ether, conf
mac, seconds = sys.argv[1], float(sys.argv[2])
frame = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
              / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=1)
              / DHCP(options=[("message-type", "discover"), "end"]))
sock = conf.L2socket(iface="eth0")
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    sock.send(frame)
    sent += 1
print(sent)
"""


def labelled(ctrl: ControllerProcess, name: str, **labels: str) -> float:
    """One labelled sample of the controller's /metrics (0 if absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(ctrl.api_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def meter_stats(vm: LabVM) -> dict[int, tuple[int, int]]:
    """Meter id -> (packets in, packets its band dropped) of every meter on the VM's hypervisor, as OVS counts."""
    out = vm.hypervisor.ofctl("meter-stats", "br-int")
    return {int(m.group(1)): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"meter:(\d+) .*?packet_in_count:(\d+).*?packet_count:(\d+)", out, re.S)}


def test_a_flooding_vm_does_not_keep_another_from_its_lease(cloud: Cloud) -> None:
    """Thousands of DISCOVERs a second from one VM; its neighbour on the same hypervisor still gets its lease
    within 2 s. The switch drops the flood in the flooder's own meter: the controller receives the meter's rate
    of it, and answers those only."""
    flooder, _ = boot(cloud, "f1", "hv1")
    vm, port = boot(cloud, "g1", "hv1")
    offers = ("tenantflow_dhcp_messages_total", {"request": "discover", "reply": "offer"})
    packet_ins = ("tenantflow_packet_ins_by_kind_total", {"kind": "dhcp"})
    offers0, ins0 = labelled(cloud.ctrl, offers[0], **offers[1]), labelled(cloud.ctrl, packet_ins[0], **packet_ins[1])
    seconds = 5.0
    flood = flooder.popen([sys.executable, "-c", FLOOD, flooder.port["mac_address"], str(seconds)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # the flood under way
        t0 = time.monotonic()
        proc, state = udhcpc(cloud, vm, "-q", "-n")
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        sent_text, err = flood.communicate(timeout=30)
    sent = int(sent_text.strip() or 0)
    assert proc.returncode == 0 and lease_of(state)["ip"] == port["fixed_ips"][0]["ip_address"], out
    assert took < 2.0, f"the neighbour's lease took {took:.2f} s under the flood"
    assert sent / seconds > 1000, f"the flood sent only {sent} DISCOVERs in {seconds:g} s: {err}"
    answered = labelled(cloud.ctrl, offers[0], **offers[1]) - offers0
    received = labelled(cloud.ctrl, packet_ins[0], **packet_ins[1]) - ins0
    # one meter took the flood, a port's, and dropped all but its rate, on the switch...
    meters = meter_stats(flooder)
    busiest = max(meters, key=lambda m: meters[m][0])
    metered, dropped = meters[busiest]
    assert f"rate={PORT_RATE} " in flooder.hypervisor.ofctl("dump-meters", "br-int", f"meter={busiest}")
    bound = PORT_BURST + PORT_RATE * (seconds + 2)
    # (the userspace datapath drops part of the flood before any flow: it reads its ports in turn)
    assert metered > 100 * bound and metered - dropped <= bound, (metered, dropped, sent)
    # ...then the hypervisor's, which let all of that through (and the neighbour's few)
    hv_in, hv_dropped = meters[HYPERVISOR_METER.meter_id]
    assert hv_dropped == 0 and metered - dropped <= hv_in
    # ...so the controller received that rate of the flood (and the neighbour's few), far below the hypervisor's
    assert received <= bound + 10 < HYPERVISOR_METER.rate * seconds, (received, sent)
    assert answered <= bound + 1, answered
