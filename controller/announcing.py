"""A switch's gratuitous ARPs for the floating IPs it newly hosts, and a standby gateway's probes (a mixin of
:class:`controller.switch.Switch`; the frames come from :mod:`controller.neighbour`)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from controller.neighbour import announcement_actions, announcement_packets
from flows.nat import Announcement

ANNOUNCE_REPEATS = (0.25, 1.0)  # seconds after a floating IP arrives: its gratuitous ARP again


class Announcing:
    """What a switch announces after its syncs. The switch sets ``_announce_fn`` (hypervisor -> what it must
    announce; None: nothing), ``_announced`` (what it returned after the last committed sync), and has
    ``_alive``, ``hv_name`` and ``packet_out``."""

    _announce_fn: Callable[[str], list[Announcement]] | None
    _announced: frozenset
    _alive: bool
    hv_name: str | None
    packet_out: Callable[[list, bytes], None]

    def _announce(self) -> None:
        """Gratuitous ARP for each floating IP this switch newly hosts (after its flows are in).

        Sent again after ANNOUNCE_REPEATS seconds: during a move the old host may still send
        from the floating IP's MAC for a moment (its flows go in another bundle, on another
        switch), and any such frame pulls the external switches' entry back there.
        """
        if self._announce_fn is None or not self._alive:
            return
        current = frozenset(self._announce_fn(self.hv_name))
        new = sorted(current - self._announced, key=lambda a: a.ip)
        self._announced = current
        self._send_announcements(new)
        for delay in ANNOUNCE_REPEATS if new else ():
            timer = threading.Timer(delay, self._repeat_announcements, (new,))
            timer.daemon = True
            timer.start()

    def repeat_probes(self) -> None:
        """Send this switch's ARP probes again (a standby gateway's, see flows.gateway); from any thread."""
        try:
            self._send_announcements([a for a in self._announced if a.probe])
        except ConnectionError:
            pass  # gone: a reconnect announces everything again

    def reannounce(self) -> None:
        """Announce what is new to announce now (another gateway came or went): from any thread."""
        try:
            self._announce()
        except ConnectionError:
            pass  # gone: a reconnect announces everything again

    def _repeat_announcements(self, items: list[Announcement]) -> None:
        try:
            self._send_announcements([a for a in items if a in self._announced])
        except ConnectionError:
            pass  # gone: a reconnect announces everything again

    def _send_announcements(self, items: list[Announcement]) -> None:
        for item in items:
            if self._alive:
                for packet in announcement_packets(item):
                    self.packet_out(announcement_actions(item), packet)
