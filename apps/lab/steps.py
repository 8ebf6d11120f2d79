"""The operator steps that attach a hypervisor to tenantflow, one function per step.

These functions run the commands of README's operator guide ("Attach a hypervisor", "Plug a
VM port"): the lab runs exactly these commands, in this order, on each of its hypervisors, and
an operator runs the same commands by hand on a real compute node (with the host's own
``ovs-vsctl``); ``tests/test_operator_guide.py`` checks that the two say the same, and runs the
guide's own blocks on a lab. Each step takes ``vsctl``, a callable running ``ovs-vsctl ARGS``
against the hypervisor's database, so it works unchanged for a private lab OVS and for a real host.

Order on a compute node:

1. :func:`add_integration_bridge`  -- br-int, userspace datapath, secure fail mode
2. :func:`set_ssl`                 -- (TLS) the host's certificate, the controller's CA
   :func:`link_controller_socket`  -- (a controller on this host) its socket into OVS's run directory
   :func:`set_controller`          -- point br-int at the controller
   :func:`set_manager`             -- and the host's OVSDB (the gateway tunnel ports are the controller's)
1+2, the other way (the controller makes br-int): :func:`name_host`, then (TLS) :func:`set_ssl` or (a
   controller on this host) :func:`link_controller_socket`, and :func:`set_manager`
3. :func:`attach_underlay`         -- the tunnel endpoint IP on an OVS bridge
4. :func:`add_tunnel_ports`        -- flow-based VXLAN, Geneve and GRE ports (the controller's to make
                                      when it is the host's OVSDB manager: only without one)
5. :func:`add_provider_bridge`     -- optional, one per physical network: the bridge and its NIC (the patch
                                      ports and flows are the controller's when it is the host's OVSDB
                                      manager; without one, :func:`patch_provider_bridge` and
                                      :func:`wire_provider_bridge`)
6. :func:`register_hypervisor`     -- tell the controller's API about the node
7. :func:`plug_vif` / :func:`unplug_vif` -- what Nova does per VM port
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from apps.lab import sh
from topology.model import TUNNEL_PORT_NAMES, provider_patch_name, provider_peer_name, tap_name

Vsctl = Callable[..., str]
Ofctl = Callable[..., str]  # runs ``ovs-ofctl ARGS`` against the hypervisor's vswitchd

INTEGRATION_BRIDGE = "br-int"
UNDERLAY_BRIDGE = "br-underlay"
# Where a packaged ovs-vswitchd was built to keep its sockets (``ovs_rundir()``; $OVS_RUNDIR overrides it),
# spelled as OVS spells it: it takes a ``unix:`` controller only when the target starts with exactly this.
OVS_RUNDIR = "/var/run/openvswitch"
SOCKET_LINK = "tenantflow.sock"  # the controller's OpenFlow socket, linked into OVS's run directory


def format_dpid(dpid: int) -> str:
    """A datapath id as OVS's ``other-config:datapath-id`` wants it: 16 hex digits."""
    if not 0 <= dpid < 1 << 64:
        raise ValueError(f"datapath id out of range: {dpid}")
    return f"{dpid:016x}"


def add_integration_bridge(vsctl: Vsctl, dpid: int) -> None:
    """Step 1: create br-int.

    ``ovs-vsctl add-br br-int -- set bridge br-int datapath_type=netdev fail_mode=secure
    protocols=OpenFlow13 other-config:datapath-id=<16 hex> other-config:disable-in-band=true``

    ``datapath_type=netdev``: there is no OVS kernel module, only the userspace datapath.
    ``fail_mode=secure``: without a controller br-int forwards nothing (no NORMAL fallback
    that would leak traffic between tenants). A fixed datapath id lets the controller
    know which registered hypervisor a connecting switch is.
    """
    vsctl(*integration_bridge_args(dpid))


def integration_bridge_args(dpid: int, bridge: str = INTEGRATION_BRIDGE, datapath_type: str = "netdev") -> list[str]:
    """Step 1's ``ovs-vsctl`` arguments (the scale lab: another bridge name, ``datapath_type=dummy``)."""
    return [
        "add-br", bridge,
        "--", "set", "bridge", bridge,
        f"datapath_type={datapath_type}", "fail_mode=secure", "protocols=OpenFlow13",
        f"other-config:datapath-id={format_dpid(dpid)}", "other-config:disable-in-band=true",
    ]  # fmt: skip


def name_host(vsctl: Vsctl, name: str, datapath_type: str = "netdev") -> None:
    """Steps 1 and 2, the other way, first: the host names itself, and the controller makes br-int.

    ``ovs-vsctl set open . external-ids:system-id=<name> external-ids:tenantflow-datapath-type=<type>``.
    ``name``: the hypervisor's registered name (as OVN's ``system-id``); once the controller is the
    host's OVSDB manager (:func:`set_manager`) and the hypervisor is registered, it makes br-int as
    step 1 does (its registered datapath id, ``fail_mode=secure``, OpenFlow 1.3, in-band off, this
    datapath type: OVN's ``ovn-bridge-datapath-type``) and points it at itself (``--bridge-controllers``,
    else the address the host reached it at; for a controller on this host ``unix:tenantflow.sock``, in
    OVS's run directory: the link of :func:`link_controller_socket`). Over TLS the host's certificate
    must name the same hypervisor.
    """
    vsctl("set", "open", ".", f"external-ids:system-id={name}",
          f"external-ids:tenantflow-datapath-type={datapath_type}")


def set_controller(vsctl: Vsctl, target: str, max_backoff_ms: int | None = None) -> None:
    """Step 2: point br-int at the controller.

    ``ovs-vsctl set-controller br-int <target>`` then
    ``ovs-vsctl set controller br-int connection-mode=out-of-band``. With a cluster of
    instances, ``target`` lists each (``tcp:A:6653 tcp:B:6653 tcp:C:6653``), and every
    controller record gets the connection mode.

    ``target`` is ``ssl:IP:6653`` (after :func:`set_ssl`), ``tcp:IP:6653`` or ``unix:<path>``;
    OVS only accepts a ``unix:`` path inside its own run directory, so on a host whose controller listens on a unix
    socket elsewhere, link that socket into the run directory first (:func:`link_controller_socket`).
    Out-of-band: the controller is reached through the host's own network stack, never
    through br-int's ports. ``max_backoff_ms`` (optional, lab tuning) caps OVS's
    reconnect back-off, 8 s by default, so a restarted controller is found quickly.
    """
    targets = target.split()  # several: a cluster's instances (each masters its share, see README)
    vsctl("set-controller", INTEGRATION_BRIDGE, *targets)
    extra = [f"max_backoff={max_backoff_ms}"] if max_backoff_ms else []
    if len(targets) == 1:
        vsctl("set", "controller", INTEGRATION_BRIDGE, "connection-mode=out-of-band", *extra)
        return
    for uuid in vsctl("get", "bridge", INTEGRATION_BRIDGE, "controller").strip("[] \n").split(", "):
        vsctl("set", "controller", uuid, "connection-mode=out-of-band", *extra)


def link_controller_socket(socket_path: str, rundir: str = OVS_RUNDIR, name: str = SOCKET_LINK) -> str:
    """Step 2, for a controller on this host: link its OpenFlow socket into OVS's run directory.

    ``ln -sf <socket> <rundir>/tenantflow.sock``; returns the ``unix:`` target for :func:`set_controller`.
    ovs-vswitchd refuses a ``unix:`` controller whose path does not start with its run directory
    ("Not adding Unix domain socket controller ... due to possibility of overwriting local files"),
    and the controller's default socket, ``/run/tenantflow/openflow.sock``, is outside it. A link there
    is accepted and still reaches the socket (in the lab, from any network namespace: a unix socket is
    a file). ``rundir``: the lab's hypervisors each have their own (``OVS_RUNDIR``).
    """
    link = os.path.join(rundir, name)
    sh.run(["ln", "-sf", socket_path, link])
    return f"unix:{link}"


def set_ssl(vsctl: Vsctl, private_key: str, certificate: str, ca_cert: str) -> None:
    """Step 2, before the targets when they are ``ssl:``: the host's key, certificate and the controller's CA.

    ``ovs-vsctl set-ssl <hv>-privkey.pem <hv>-cert.pem controllerca/cacert.pem``, the files of
    ``ovs-pki -u req+sign <hv> switch`` (common name: the hypervisor's name, which the controller
    holds against the datapath id) and of ``ovs-pki init`` (the CA that signed the controller's).
    ovs-vswitchd (OpenFlow) and ovsdb-server (OVSDB, started with ``--private-key=db:Open_vSwitch,SSL,
    private_key`` and the like, as ``ovs-ctl`` does) both read them from the database.
    """
    vsctl("set-ssl", private_key, certificate, ca_cert)


def set_manager(vsctl: Vsctl, target: str) -> None:
    """Step 2, second half: make the controller the host's OVSDB manager.

    ``ovs-vsctl set-manager <target>`` (several, space-separated: a cluster's instances, as
    for :func:`set_controller`). ``target`` is ``ssl:CONTROLLER_IP:6640`` (after :func:`set_ssl`),
    ``tcp:CONTROLLER_IP:6640`` (the controller's ``--ovsdb-listen``) or ``unix:<path>``. The
    host's ovsdb-server then connects to the controller, which creates and removes the gateway
    tunnel ports (``tg-*``, VXLAN on UDP 4790 with BFD) on br-int itself, makes the overlay's, and
    patches, secures and points at itself each provider bridge of step 5; it touches no other port.
    ovsdb-server follows the Manager table only when started with
    ``--remote=db:Open_vSwitch,Open_vSwitch,manager_options``, as ``ovs-ctl`` (and so every
    packaged Open vSwitch) starts it.
    """
    vsctl("set-manager", *target.split())


def attach_underlay(vsctl: Vsctl, netns: str, nic: str, tunnel_cidr: str, mtu: int = 1600) -> None:
    """Step 3: put the tunnel endpoint address on an OVS bridge holding the underlay NIC.

    ``ovs-vsctl add-br br-underlay -- set bridge br-underlay datapath_type=netdev
    fail_mode=standalone -- set interface br-underlay mtu_request=<mtu>
    -- add-port br-underlay <nic>``, then ``ip addr add <tunnel ip/len> dev br-underlay``,
    ``ip link set br-underlay up`` and :func:`release_nic_from_kernel` on the NIC.

    Why: the userspace datapath does its own tunnel encapsulation ("native tunnelling").
    It routes ``tun_dst`` with OVS's route table and resolves the next hop's MAC itself,
    and it can only send out of a device that is an OVS bridge. With the address on the
    plain NIC, ``ofproto/trace`` says "native tunnel routing failed" and every
    encapsulated packet is dropped (checked on this machine, OVS 3.1).
    MTU 1600 leaves room for the VXLAN/Geneve headers of 1500-byte inner frames.
    """
    release_nic_from_kernel(netns, nic)
    vsctl(
        "add-br", UNDERLAY_BRIDGE,
        "--", "set", "bridge", UNDERLAY_BRIDGE, "datapath_type=netdev", "fail_mode=standalone",
        "other-config:disable-in-band=true",
        "--", "set", "interface", UNDERLAY_BRIDGE, f"mtu_request={mtu}",
        "--", "add-port", UNDERLAY_BRIDGE, nic,
    )  # fmt: skip
    ip = ["ip", "-n", netns]
    sh.run([*ip, "addr", "add", tunnel_cidr, "dev", UNDERLAY_BRIDGE])
    sh.run([*ip, "link", "set", UNDERLAY_BRIDGE, "up"])


def release_nic_from_kernel(netns: str, nic: str) -> None:
    """Keep the kernel's IP stack off a NIC that a userspace-datapath bridge owns.

    ``ip link set <nic> arp off`` and ``sysctl net.ipv6.conf.<nic>.disable_ipv6=1``.
    The netdev datapath reads the NIC with an AF_PACKET socket, so the kernel still
    receives every frame on it too. With ARP on, the kernel answers the peers' ARP for
    the tunnel IP a second time, with the NIC's own MAC; whichever reply OVS snoops last
    wins, and with the NIC's MAC the peer's encapsulated packets are not terminated
    (seen here: two replies per request). IPv6 off: no router solicitations or MLD
    reports from the NIC itself on the fabric.
    """
    sh.run(["ip", "-n", netns, "link", "set", nic, "arp", "off"])
    sh.run(["sysctl", "-qw", f"net.ipv6.conf.{nic}.disable_ipv6=1"], netns=netns)


def add_tunnel_ports(vsctl: Vsctl, tunnel_ip: str) -> None:
    """Step 4: the flow-based tunnel ports, one per overlay type.

    ``ovs-vsctl add-port br-int tf-vxlan -- set interface tf-vxlan type=vxlan
    options:remote_ip=flow options:key=flow options:local_ip=<tunnel ip>`` and the same
    for ``tf-geneve`` with ``type=geneve`` and ``tf-gre`` with ``type=gre``. One port serves
    every peer: the controller's
    flows set ``tunnel_id`` (the VNI) and ``tun_dst`` before ``output:tf-vxlan``.
    """
    vsctl(*tunnel_port_args(tunnel_ip))


def tunnel_port_args(
    tunnel_ip: str, bridge: str = INTEGRATION_BRIDGE, names: Mapping[str, str] = TUNNEL_PORT_NAMES
) -> list[str]:
    """Step 4's ``ovs-vsctl`` arguments; ``names``: overlay type -> port name (the scale lab's aliases)."""
    args: list[str] = []
    for kind, port in names.items():
        args += [
            "--", "add-port", bridge, port,
            "--", "set", "interface", port, f"type={kind}",
            "options:remote_ip=flow", "options:key=flow", f"options:local_ip={tunnel_ip}",
        ]  # fmt: skip
    return args[1:]


def add_provider_bridge(vsctl: Vsctl, netns: str, bridge: str, nic: str) -> None:
    """Step 5 (optional): a provider bridge with its NIC, as Neutron operators make br-ex.

    :func:`release_nic_from_kernel` on the NIC (``ip link set <nic> arp off``, IPv6 off: the
    kernel must not answer on a NIC the userspace datapath owns), then ``ovs-vsctl add-br <bridge>
    -- set bridge <bridge> datapath_type=netdev other-config:disable-in-band=true -- add-port
    <bridge> <nic>``. In-band off: OVS would otherwise add hidden flows for in-band control on a
    bridge with an address. The hypervisor is then registered with ``bridge_mappings={physnet:
    bridge}``, and the controller, as the host's OVSDB manager, makes the rest (README, attach step 5):
    the patch pair to br-int, ``fail_mode=secure``, br-int's controllers on the bridge, and over
    that connection its two flows. ``netns``: the hypervisor's network namespace (the lab's).
    """
    release_nic_from_kernel(netns, nic)
    vsctl(
        "add-br", bridge,
        "--", "set", "bridge", bridge, "datapath_type=netdev", "other-config:disable-in-band=true",
        "--", "add-port", bridge, nic,
    )  # fmt: skip


def patch_provider_bridge(vsctl: Vsctl, physnet: str, bridge: str) -> None:
    """Step 5 without the controller as OVSDB manager (``--ovsdb-listen ''``): what it would make, by hand.

    ``ovs-vsctl set bridge <bridge> fail_mode=secure -- add-port br-int phy-<physnet> -- set
    interface phy-<physnet> type=patch options:peer=int-<physnet> -- add-port <bridge>
    int-<physnet> -- set interface int-<physnet> type=patch options:peer=phy-<physnet>``, then
    :func:`wire_provider_bridge`. A controller that becomes the manager later adopts all of it as it
    is (equal ports and flows are not written again).
    """
    phy, peer = provider_patch_name(physnet), provider_peer_name(physnet)
    vsctl(
        "set", "bridge", bridge, "fail_mode=secure",
        "--", "add-port", INTEGRATION_BRIDGE, phy,
        "--", "set", "interface", phy, "type=patch", f"options:peer={peer}",
        "--", "add-port", bridge, peer,
        "--", "set", "interface", peer, "type=patch", f"options:peer={phy}",
    )  # fmt: skip


def wire_provider_bridge(ofctl: Ofctl, physnet: str, bridge: str, nic: str) -> None:
    """Step 5's flows, by hand (without the controller as OVSDB manager): the provider bridge is a wire between
    its NIC and br-int, nothing more (the flows :func:`flows.provider.wire_through` gives the controller).

    ``ovs-ofctl add-flow <bridge> priority=1,in_port=<nic>,actions=output:int-<physnet>`` and
    the reverse. br-int makes every forwarding decision (it knows where each port
    and floating IP lives); a MAC-learning (NORMAL) bridge in front of it would
    decide a second time, and with one OVS 3.1 kept a stale datapath drop for a
    floating IP re-associated to the same hypervisor until its MAC table changed.
    OVS keeps no flows over a vswitchd restart: run this again after one
    (``ovs-ctl restart`` saves and restores them itself; the controller puts them back itself).
    """
    peer = provider_peer_name(physnet)
    ofctl("add-flow", bridge, f"priority=1,in_port={nic},actions=output:{peer}")
    ofctl("add-flow", bridge, f"priority=1,in_port={peer},actions=output:{nic}")


def hypervisor_record(
    name: str, dpid: int, tunnel_ip: str, bridge_mappings: Mapping[str, str] | None = None,
    gateway_for: Sequence[str] = (),
) -> dict[str, Any]:
    """Step 6's body: ``{"name", "datapath_id" (16 hex), "tunnel_ip", "bridge_mappings"}``, and
    ``"gateway_for"`` (the physical networks it is a gateway for) when it is a gateway."""
    record = {
        "name": name,
        "datapath_id": format_dpid(dpid),
        "tunnel_ip": tunnel_ip,
        "bridge_mappings": dict(bridge_mappings or {}),
    }
    if gateway_for:
        record["gateway_for"] = list(gateway_for)
    return record


def register_hypervisor(
    api_url: str,
    name: str,
    dpid: int,
    tunnel_ip: str,
    bridge_mappings: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    gateway_for: Sequence[str] = (),
) -> dict[str, Any]:
    """Step 6: ``POST <api>/v2.0/hypervisors`` with the node's name, dpid and tunnel IP.

    Body: ``{"hypervisor": {"name", "datapath_id" (16 hex), "tunnel_ip", "bridge_mappings"}}``.
    Returns the decoded JSON response; raises ``RuntimeError`` with the API's message
    on an HTTP error.
    """
    body = {"hypervisor": hypervisor_record(name, dpid, tunnel_ip, bridge_mappings, gateway_for)}
    req = urllib.request.Request(
        api_url.rstrip("/") + "/v2.0/hypervisors",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise RuntimeError(f"registering hypervisor {name}: HTTP {exc.code}: {detail}") from exc
    return json.loads(raw) if raw else {}


def plug_vif(
    vsctl: Vsctl,
    hv_netns: str,
    vm_netns: str,
    port: Mapping[str, Any],
    vm_name: str,
    mtu: int = 1450,
    vm_dev: str = "eth0",
) -> str:
    """Step 7: plug a VM's port the way Nova does; returns the tap name.

    A veth whose hypervisor end is ``tap<first 11 chars of the port id>`` and whose VM
    end is ``eth0`` in the VM's namespace, both with MTU ``mtu`` (the network's: 1450
    for overlays) and tx checksum offload off; then
    ``ovs-vsctl add-port br-int <tap> -- set interface <tap> external_ids:iface-id=<port id>
    external_ids:attached-mac=<mac> external_ids:iface-status=active
    external_ids:vm-uuid=<vm>``. The controller finds the logical port by the tap's NAME
    (OpenFlow reports port names and numbers, not OVSDB's ``external_ids``): a port named
    otherwise is not found, whatever its ``iface-id``, which is set for OVSDB's readers, as
    Nova does. The VM's addressing is :func:`configure_vm_nic`.
    """
    tap = tap_name(port["id"])
    sh.veth_add(tap, hv_netns, vm_dev, vm_netns, mtu=mtu)
    vsctl(*vif_port_args(tap, port, vm_name))
    return tap


def vif_port_args(tap: str, port: Mapping[str, Any], vm_name: str, bridge: str = INTEGRATION_BRIDGE) -> list[str]:
    """Step 7's ``ovs-vsctl`` arguments: the tap on the bridge with Nova's ``external_ids``."""
    return [
        "add-port", bridge, tap,
        "--", "set", "interface", tap,
        f"external_ids:iface-id={port['id']}",
        f"external_ids:attached-mac={port['mac_address']}",
        "external_ids:iface-status=active",
        f"external_ids:vm-uuid={vm_name}",
    ]  # fmt: skip


# What a guest's network scripts do with a DHCP lease (busybox udhcpc's event script): apply it to
# the NIC (address, MTU, routes: classless static routes, else the router) and, if $STATE is set,
# record what came (one "name=value" per line) in that file.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$subnet" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    elif [ -n "$router" ]; then
      ip route replace default via "${router%% *}" dev "$interface"
    fi
    if [ -n "$STATE" ]; then
      {
        echo "ip=$ip"; echo "subnet=$subnet"; echo "router=$router"; echo "dns=$dns"; echo "domain=$domain"
        echo "mtu=$mtu"; echo "staticroutes=$staticroutes"; echo "lease=$lease"; echo "serverid=$serverid"
      } > "$STATE.tmp" && mv "$STATE.tmp" "$STATE"
    fi
    ;;
esac
"""


def udhcpc_argv(script: str, vm_dev: str = "eth0", *extra: str) -> list[str]:
    """busybox ``udhcpc`` in the foreground on ``vm_dev``, asking for the MTU and classless routes too."""
    return ["udhcpc", "-f", "-i", vm_dev, "-s", script, "-O", "mtu", "-O", "staticroutes", "-t", "5", "-T", "1",
            *extra]


def write_udhcpc_script(directory: str) -> str:
    """:data:`UDHCPC_SCRIPT` as an executable file in ``directory``; its path."""
    path = os.path.join(directory, "udhcpc.script")
    # Written aside and renamed into place: VMs booting in parallel each write it while others
    # already run it, and rewriting a file being executed fails ("Text file busy").
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w") as fh:
        fh.write(UDHCPC_SCRIPT)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def request_address(vm_netns: str, workdir: str, vm_dev: str = "eth0") -> dict[str, str]:
    """Step 8, inside the VM: take an address by DHCP, as a stock image boots; what the lease gave.

    ``udhcpc -q -n`` (exits once bound, fails if no server answers) with :data:`UDHCPC_SCRIPT`;
    the lease's options are returned as ``{"ip": ..., "router": ..., "mtu": ...}``.
    """
    state = os.path.join(workdir, f"{vm_netns}.lease")
    sh.run(udhcpc_argv(write_udhcpc_script(workdir), vm_dev, "-q", "-n"), netns=vm_netns, env={"STATE": state})
    with open(state) as fh:
        return dict(line.split("=", 1) for line in fh.read().splitlines() if "=" in line)


def configure_vm_nic(
    vm_netns: str,
    port: Mapping[str, Any],
    prefixlen: int = 24,
    gateway: str | None = None,
    vm_dev: str = "eth0",
) -> list[str]:
    """Inside the VM: the port's MAC, its fixed IPs (``prefixlen`` for IPv4, /64 for IPv6), a default route.

    What cloud-init does from the metadata; returns the ``ip/len`` strings configured.
    """
    ip = ["ip", "-n", vm_netns]
    sh.run([*ip, "link", "set", vm_dev, "down"])
    sh.run([*ip, "link", "set", vm_dev, "address", port["mac_address"]])
    sh.run([*ip, "link", "set", vm_dev, "up"])
    cidrs = []
    for fixed in port.get("fixed_ips", []):
        addr = ipaddress.ip_address(fixed["ip_address"])
        cidr = f"{addr}/{prefixlen if addr.version == 4 else 64}"
        # nodad: the address is usable at once instead of after IPv6 duplicate detection
        extra = ["nodad"] if addr.version == 6 else []
        sh.run([*ip, "addr", "add", cidr, "dev", vm_dev, *extra])
        cidrs.append(cidr)
    if gateway:
        sh.run([*ip, "route", "replace", "default", "via", gateway, "dev", vm_dev])
    return cidrs


def unplug_vif(vsctl: Vsctl, hv_netns: str, tap: str) -> None:
    """Unplug: ``ovs-vsctl --if-exists del-port br-int <tap>``, then delete the veth."""
    vsctl("--if-exists", "del-port", INTEGRATION_BRIDGE, tap)
    sh.link_del(hv_netns, tap)
