"""A management network between the root namespace (the controller) and the lab's hypervisors.

OVS speaks TLS only over TCP (``ssl:IP:PORT``: no TLS on a unix socket), and a controller on
127.0.0.1 in the root namespace is unreachable from inside a hypervisor's namespace (LAB.md).
So a TLS lab cables each hypervisor's ``mgmt0`` to a Linux bridge in the root namespace that
holds the controller's address, as a real cloud's management network does. It exists before
the controller starts (the controller binds that address) and outlives the lab.
"""

from __future__ import annotations

import ipaddress
import re
import zlib

from apps.lab import sh

NIC = "mgmt0"  # the hypervisor's management NIC
SUPERNET = ipaddress.ip_network("172.30.0.0/16")  # one /24 per management network


class ManagementNet:
    """A root-namespace bridge ``<prefix>-mg`` with the first address of a free /24 of 172.30.0.0/16."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.bridge = f"{prefix}-mg"[:15]
        self.network: ipaddress.IPv4Network | None = None

    @property
    def address(self) -> str:
        """The controller's address on it."""
        assert self.network is not None, "management network not started"
        return str(self.network.network_address + 1)

    def __enter__(self) -> ManagementNet:
        out = sh.run(["ip", "-4", "-o", "addr", "show"])
        used = [ipaddress.ip_interface(m) for m in re.findall(r"inet (\S+)", out)]
        subnets = list(SUPERNET.subnets(new_prefix=24))
        start = zlib.crc32(self.prefix.encode()) % len(subnets)
        for i in range(len(subnets)):  # the prefix's own /24, or the next one nobody has an address in
            candidate = subnets[(start + i) % len(subnets)]
            if not any(iface.network.overlaps(candidate) for iface in used):
                self.network = candidate
                break
        else:
            raise RuntimeError("no free /24 in 172.30.0.0/16 for a management network")
        sh.run(["ip", "link", "add", self.bridge, "type", "bridge"])
        try:
            sh.run(["ip", "addr", "add", f"{self.address}/24", "dev", self.bridge])
            sh.run(["ip", "link", "set", self.bridge, "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the bridge (the hypervisors' cables go with their namespaces)."""
        sh.run(["ip", "link", "del", self.bridge], check=False)

    def attach(self, netns: str, index: int) -> str:
        """Cable hypervisor ``index``'s namespace to the bridge (its ``mgmt0``, ``.10+index``); its address."""
        assert self.network is not None, "management network not started"
        root_end = f"{self.prefix}m{index}"[:15]
        sh.run(["ip", "link", "add", NIC, "netns", netns, "type", "veth", "peer", "name", root_end])
        sh.run(["ip", "link", "set", root_end, "master", self.bridge, "up"])
        address = str(self.network.network_address + 10 + index)
        sh.run(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", NIC])
        sh.run(["ip", "-n", netns, "link", "set", NIC, "up"])
        return address
