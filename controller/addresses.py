"""Address assignment's slow path: the packet-ins of ``ls_in_dhcp`` and the periodic router advertisements.

DHCPv4 requests are answered by :mod:`controller.dhcp`, DHCPv6 ones by :mod:`controller.dhcp6`,
router solicitations by :mod:`controller.ra`; both from the topology, straight back out of the asking port. Every
port's requests go through its switch's fair limiter first (a flooding VM uses up its own
share). A thread advertises each advertised subnet's router to every local port of the
bridges this instance masters, every :func:`controller.ra.next_interval` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from controller import dhcp, dhcp6, metrics, ra
from controller.switch import Switch
from flows.flow import Output
from topology.model import Port, tap_name

LOG = logging.getLogger("tenantflow.addresses")
ETH_IPV6 = b"\x86\xdd"
ICMPV6 = 58


class AddressService:
    """Answers ls_in_dhcp's packet-ins and sends the periodic router advertisements."""

    def __init__(self, topology, switches: Callable[[], list[Switch]]) -> None:
        self.topology = topology
        self._switches = switches

    def start(self) -> AddressService:
        """Start the periodic advertisements (a daemon thread: it ends with the process)."""
        threading.Thread(target=self._advertise_forever, name="router-adverts", daemon=True).start()
        return self

    # -- packet-ins ------------------------------------------------------------------------
    def packet_in(self, sw: Switch, msg) -> None:
        """A DHCPv4 request or a router solicitation from a local port: answer it out of that port."""
        fields = dict(msg.match.items())
        port_key, in_port = fields.get("reg7", 0), fields.get("in_port")
        frame = bytes(msg.data)
        kind = _kind(frame)
        if not metrics.packet_in("dhcp" if kind == "dhcp6" else kind, sw.dhcp_limiter.allow(port_key)):
            return
        with self.topology.lock:
            graph = self.topology.graph
            port = next((p for p in graph.ports_on(sw.hv_name or "") if p.key == port_key), None)
            if port is None or in_port is None:  # (the port went away meanwhile)
                return
            lease = dhcp.lease_for(graph, port) if kind == "dhcp" else None
            lease6 = dhcp6.lease6_for(graph, port, dhcp.SETTINGS.domain) if kind == "dhcp6" else None
            adverts = ra.adverts_for(graph, port) if kind == "router_solicit" else []
        if kind == "router_solicit":
            self._send(sw, in_port, ra.answer_solicitation(frame, adverts), port, "router advertisement")
            return
        if lease is not None:
            result = dhcp.answer(frame, lease)
        elif lease6 is not None:
            result = dhcp6.answer6(frame, lease6)
        else:  # (its subnet's DHCP just went off)
            return
        metrics.DHCP_MESSAGES.labels(result.request, result.reply or "none").inc()
        if result.frame is not None:
            self._send(sw, in_port, [result.frame], port, f"DHCP {result.reply}")

    @staticmethod
    def _send(sw: Switch, ofport: int, frames: list[bytes], port: Port, what: str) -> None:
        try:
            for frame in frames:
                sw.packet_out([Output(ofport)], frame)
        except ConnectionError:  # gone meanwhile: the guest asks again
            LOG.info("switch %s: gone before the %s for port %s could be sent", sw.hv_name, what, port.id)

    # -- periodic advertisements ---------------------------------------------------------------
    def _advertise_forever(self) -> None:
        while True:
            time.sleep(ra.next_interval())
            try:
                self.advertise()
            except Exception:  # a bug here must not end the advertisements for good
                LOG.exception("periodic router advertisements failed")

    def advertise(self) -> int:
        """Send every local port of every bridge this instance keeps its advertisements; how many were sent."""
        sent = 0
        for sw in self._switches():
            if not (sw.hv_name and sw.ready and sw.mastering):
                continue
            with self.topology.lock:
                graph = self.topology.graph
                todo = [(port, ra.adverts_for(graph, port)) for port in graph.ports_on(sw.hv_name)]
            for port, adverts in todo:
                ofport = sw.ofports.get(tap_name(port.id))
                if adverts and ofport is not None:
                    frames = [ra.router_advert(a) for a in adverts]
                    self._send(sw, ofport, frames, port, "router advertisement")
                    sent += len(frames)
        metrics.ROUTER_ADVERTS.inc(sent)
        return sent


def _kind(frame: bytes) -> str:
    """What ls_in_dhcp sent up: ``dhcp``, ``dhcp6`` or ``router_solicit`` (by ethertype and next header)."""
    if frame[12:14] != ETH_IPV6:
        return "dhcp"
    return "router_solicit" if len(frame) > 20 and frame[20] == ICMPV6 else "dhcp6"
