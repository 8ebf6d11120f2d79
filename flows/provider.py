"""A provider bridge's flows: a wire between its NIC and br-int's patch port, nothing more.

br-int makes every forwarding decision for a physical network (it knows where each port and
floating IP lives, and tags VLANs itself), so the bridge holding the network's NIC only carries
frames through: whatever enters on the NIC goes to the patch port ``int-<physnet>``, whatever
comes from the patch port goes out of the NIC. A MAC-learning (``NORMAL``) bridge there would
decide a second time; with one, OVS 3.1 kept a stale datapath drop for a floating IP moved back
to the same hypervisor until its MAC table changed (README, Known issues).

Pure: :func:`wire_through` takes the bridge's ports as its OpenFlow connection reports them
(name -> port number) and gives the flows, :class:`flows.flow.Flow` like br-int's, in a stage of
their own (:data:`PROVIDER_WIRE`, not part of br-int's pipeline) and with cookies whose top byte
is :data:`PROVIDER_COOKIE_STAGE` (``ovs-ofctl dump-flows br-phys`` reads them apart from any
br-int cookie). They are exactly what README's manual way writes (``priority=1,in_port=eth2,
actions=output:int-physnet1`` and back), so such flows made by hand are kept as they are (the
controller compares content, not cookies: :func:`controller.provider.plan`).
"""

from __future__ import annotations

from collections.abc import Mapping

from flows.flow import Flow, Output, make_flow
from flows.pipeline import COOKIE_STAGE_MASK, COOKIE_STAGE_SHIFT, Stage
from topology.model import provider_peer_name

OFPP_MAX = 0xFFFFFF00  # port numbers above are reserved (LOCAL, CONTROLLER...)
PROVIDER_COOKIE_STAGE = 0xF0  # the provider flows' cookie top byte (br-int's tables use 0-60)
PROVIDER_WIRE = Stage(
    name="provider_wire",
    table_id=0,
    doc="The provider bridge's only table: a frame from a NIC goes to the patch port to br-int "
    "(int-<physnet>), a frame from the patch port out of every NIC (wire). Anything else "
    "(LOCAL's own frames) is dropped by the secure fail mode's empty table.",
    allowed_matches=frozenset({"in_port"}),
    priorities={"wire": 1},
)


def nic_ports(physnet: str, ofports: Mapping[str, int]) -> dict[str, int]:
    """The ports that count as the bridge's NIC side: every port but the patch port and LOCAL (the bridge's own)."""
    patch = provider_peer_name(physnet)
    return {name: number for name, number in ofports.items() if name != patch and 0 < number <= OFPP_MAX}


def wire_through(physnet: str, ofports: Mapping[str, int]) -> list[Flow]:
    """The flows a provider bridge for ``physnet`` must hold, given its ports; none until its patch port and a
    NIC are there (no flow: the secure bridge drops, as it would with a flow to a missing port)."""
    patch = ofports.get(provider_peer_name(physnet))
    nics = nic_ports(physnet, ofports)
    if patch is None or not nics:
        return []
    flows = [_flow(number, [Output(patch)], f"{name} -> br-int") for name, number in sorted(nics.items())]
    flows.append(_flow(patch, [Output(n) for _, n in sorted(nics.items())], f"br-int -> {', '.join(sorted(nics))}"))
    return flows


def _flow(in_port: int, actions: list[Output], description: str) -> Flow:
    flow = make_flow(PROVIDER_WIRE, "wire", {"in_port": in_port}, actions, description=description)
    cookie = (PROVIDER_COOKIE_STAGE << COOKIE_STAGE_SHIFT) | (flow.cookie & ~COOKIE_STAGE_MASK)
    return Flow(flow.table_id, flow.priority, flow.match, flow.actions, flow.goto, cookie, description)
