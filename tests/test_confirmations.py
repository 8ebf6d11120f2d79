"""GET /sync?wait='s waiters (controller/confirmations.py): woken once, when the last bridge they wait for confirms."""

from __future__ import annotations

import threading
import time

import pytest

from controller import confirmations
from controller.confirmations import Confirmations


class Bridge:
    """What a waiter reads of a switch: alive, and holds(generation)."""

    def __init__(self, generation: int = 0) -> None:
        self.alive = True
        self.generation = generation

    def holds(self, generation: int) -> bool:
        return self.generation >= generation


def keep(sw: Bridge, generation: int | None) -> int | None:
    """The target function of a controller whose flows are all built: the generation asked for."""
    return generation


def waiter(confirmed: Confirmations, pending: dict, timeout: float = 5.0) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append((confirmed.wait(pending, keep, timeout), time.monotonic())))
    thread.start()
    return thread, out


def test_a_waiter_returns_once_the_last_of_its_bridges_confirms_and_not_before() -> None:
    confirmed = Confirmations()
    bridges = [Bridge() for _ in range(3)]
    wakes: list[int] = []
    real = confirmations._Waiting.check

    def counting(self, sw):  # how often the waiter's event is set: exactly once
        real(self, sw)
        wakes.append(self.event.is_set())

    thread, out = waiter(confirmed, {sw: 5 for sw in bridges})
    time.sleep(0.05)
    confirmations._Waiting.check = counting
    try:
        for sw in bridges[:2]:
            sw.generation = 5
            confirmed.confirmed(sw)
        time.sleep(0.1)
        assert not out, "two of three bridges confirmed: still waiting"
        bridges[2].generation = 4  # a confirmation of an older change
        confirmed.confirmed(bridges[2])
        time.sleep(0.1)
        assert not out
        bridges[2].generation = 5
        confirmed.confirmed(bridges[2])
        thread.join(2)
        assert out and out[0][0] is True
        assert wakes == [False, False, False, True], "the event is set by the last confirmation only"
    finally:
        confirmations._Waiting.check = real


def test_a_bridge_that_goes_away_stops_counting_and_a_waiter_with_nothing_pending_returns_at_once() -> None:
    confirmed = Confirmations()
    gone, held = Bridge(), Bridge(generation=9)
    assert confirmed.wait({held: 9}, keep, 5.0) is True
    thread, out = waiter(confirmed, {gone: 3})
    gone.alive = False
    confirmed.confirmed(gone)
    thread.join(2)
    assert out and out[0][0] is True


def test_a_confirmation_nobody_announced_is_found_by_the_recheck_and_a_timeout_says_false(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confirmations, "RECHECK", 0.05)
    confirmed = Confirmations()
    quiet, never = Bridge(), Bridge()
    start = time.monotonic()
    thread, out = waiter(confirmed, {quiet: 2})
    quiet.generation = 2  # no confirmed() call (a role granted does not notify)
    thread.join(2)
    assert out and out[0][0] is True and out[0][1] - start < 1.0
    assert confirmed.wait({never: 1}, keep, 0.2) is False
    assert not confirmed._waiting, "no waiter is left behind"
