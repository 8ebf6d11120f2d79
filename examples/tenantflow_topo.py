"""A Mininet topology for tenantflow: one switch playing one hypervisor, hosts playing VMs.

Run (controller and API already up, host OVS started by scripts/start-ovs.sh)::

    mn --custom examples/tenantflow_topo.py --topo tenantflow,ports=<id1>+<id2> \\
       --switch ovs,datapath=user --controller remote,ip=127.0.0.1,port=6653

Mininet's switch lives in the root namespace, so unlike a lab hypervisor it reaches the
controller on 127.0.0.1:6653 directly.

Registering the switch as a hypervisor. The switch ``s1`` gets the fixed datapath id
``00000000006d6e01`` ("mn" 01). Before starting ``mn``, register it under the name
``mn1``; it has no tunnel ports (one switch, no peers), so any tunnel IP will do::

    curl -X POST http://127.0.0.1:9696/v2.0/hypervisors -H 'Content-Type: application/json' \\
      -d '{"hypervisor": {"name": "mn1", "datapath_id": "00000000006d6e01",
                          "tunnel_ip": "127.0.0.1", "bridge_mappings": {}}}'

then create the Neutron ports with ``"binding:host_id": "mn1"`` and pass their ids as
``ports=ID1+ID2+...``. Host ``hN`` is the VM of the N-th port.

Port names. The controller binds an OpenFlow port to a Neutron port by its name, Nova's
``tap`` + the first 11 characters of the port id (``topology.model.tap_name``). So with
``ports=...`` the switch side of host ``hN``'s link is named ``tap<id[:11]>``, and the
host side (``hN-eth0``) gets the port's MAC and first fixed IP, read from the API
(``api=http://127.0.0.1:9696`` by default). Without ``ports`` (``--topo tenantflow,3``)
the hosts are ``h1..hN`` on ``s1-eth1..N`` with 10.0.0.N/24: a plain Mininet network the
controller has no ports for, handy only to check that ``s1`` connects.

Every link turns off tx checksum offload on both ends (``ethtool -K DEV tx off``):
on the userspace datapath, TCP over a veth hangs without it (ping still works).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from mininet.link import Link
from mininet.topo import Topo

SWITCH_DPID = "00000000006d6e01"
HYPERVISOR_NAME = "mn1"
DEFAULT_API_URL = "http://127.0.0.1:9696"


def tap_name(port_id: str) -> str:
    """Nova's tap name for a port (same rule as ``topology.model.tap_name``; kept local so
    ``mn --custom`` works without the tenantflow package on its path)."""
    return "tap" + port_id[:11]


class TxOffLink(Link):
    """A veth link with tx checksum offload off on both ends."""

    def __init__(self, node1: Any, node2: Any, **params: Any) -> None:
        super().__init__(node1, node2, **params)
        for intf in (self.intf1, self.intf2):
            intf.cmd("ethtool", "-K", intf.name, "tx", "off")


def fetch_port(api_url: str, port_id: str) -> dict[str, Any]:
    """GET one Neutron port from the controller's API."""
    with urllib.request.urlopen(f"{api_url.rstrip('/')}/v2.0/ports/{port_id}", timeout=10) as resp:
        return json.loads(resp.read())["port"]


class TenantflowTopo(Topo):
    """One switch ``s1`` (dpid 00000000006d6e01) and one host per Neutron port (or ``n`` plain hosts)."""

    def build(self, n: int = 2, ports: str = "", api: str = DEFAULT_API_URL) -> None:  # type: ignore[override]
        s1 = self.addSwitch("s1", dpid=SWITCH_DPID, protocols="OpenFlow13")
        port_ids = [p for p in str(ports).split("+") if p]
        if port_ids:
            for i, port_id in enumerate(port_ids, start=1):
                port = fetch_port(api, port_id)
                ip = port["fixed_ips"][0]["ip_address"] if port.get("fixed_ips") else None
                host = self.addHost(f"h{i}", mac=port["mac_address"], ip=f"{ip}/24" if ip else None)
                self.addLink(host, s1, intfName2=tap_name(port_id), cls=TxOffLink)
        else:
            for i in range(1, int(n) + 1):
                host = self.addHost(f"h{i}", ip=f"10.0.0.{i}/24", mac=f"00:00:00:00:00:{i:02x}")
                self.addLink(host, s1, cls=TxOffLink)


topos = {"tenantflow": lambda n=2, ports="", api=DEFAULT_API_URL: TenantflowTopo(n=n, ports=ports, api=api)}
