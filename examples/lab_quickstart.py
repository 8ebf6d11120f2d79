"""Two VMs on two lab hypervisors, wired by a running tenantflow controller.

Start the controller first (its unix socket and API are the defaults below), then::

    .venv/bin/python examples/lab_quickstart.py [--api http://127.0.0.1:9696] [--socket PATH]

It builds a 2-hypervisor lab attached to the controller's unix socket, registers the
hypervisors, creates a network, a subnet and one port per hypervisor through the
Neutron API, plugs a VM on each port and pings across the VXLAN overlay.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apps.lab import Lab  # noqa: E402


def post(api: str, path: str, body: dict) -> dict:
    """POST JSON to the API and return the decoded answer."""
    req = urllib.request.Request(
        api + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def main() -> int:
    """Build, wire, ping, tear down; exit status 0 when the ping got through."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api", default="http://127.0.0.1:9696")
    ap.add_argument("--socket", default="/run/tenantflow/openflow.sock")
    ap.add_argument("--prefix", default="tfq")
    args = ap.parse_args()
    with Lab(prefix=args.prefix, n_hypervisors=2, controller_unix_socket=args.socket, api_url=args.api) as lab:
        lab.register_hypervisors()
        net = post(args.api, "/v2.0/networks", {"network": {"name": "quickstart"}})["network"]
        post(args.api, "/v2.0/subnets", {"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/24", "ip_version": 4}})
        ports = [
            post(args.api, "/v2.0/ports", {"port": {"network_id": net["id"], "binding:host_id": hv.name}})["port"]
            for hv in lab.hypervisors
        ]
        vms = [lab.plug_vm(f"vm{i}", port, mtu=net.get("mtu", 1450)) for i, port in enumerate(ports, start=1)]
        time.sleep(1.0)  # let the controller see the new taps and push their flows
        dst = ports[1]["fixed_ips"][0]["ip_address"]
        out = vms[0].cmd(f"ping -c3 -W1 {dst}")
        print(out)
        return 0 if " 0% packet loss" in out else 1


if __name__ == "__main__":
    sys.exit(main())
