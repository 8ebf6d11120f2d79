"""Progress and ETA on a terminal only (apps/progress.py), as the scale lab and the bench use it (issue #16 item 5)."""

from __future__ import annotations

import io
import os
import threading

import pytest

from apps.lab.scale import ScaleLab
from apps.progress import CLEAR, Progress, human
from tests.lab_fixtures import require_lab


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_silent_unless_the_stream_is_a_terminal() -> None:
    out = io.StringIO()
    with Progress("work", 10, stream=out) as progress:
        for _ in range(10):
            progress.advance()
    assert out.getvalue() == ""
    assert progress.done == 10


def test_line_with_counts_percent_elapsed_and_eta() -> None:
    clock, out = Clock(), Terminal()
    progress = Progress("scale lab: bridges", 100, stream=out, unit="bridges", interval=0, clock=clock)
    assert progress.eta() is None
    clock.now += 10
    progress.advance(25)
    assert progress.line() == "scale lab: bridges: 25/100 bridges (25%), 10 s, ETA 30 s"
    clock.now += 170
    progress.update(90)
    assert progress.line() == "scale lab: bridges: 90/100 bridges (90%), 3 min 00 s, ETA 20 s"
    progress.close()
    drawn = out.getvalue()
    assert drawn.startswith(CLEAR) and drawn.endswith("100 bridges (90%), 3 min 00 s, ETA 20 s\n")
    assert drawn.count("\n") == 1  # one line, redrawn in place


def test_redrawn_at_most_every_interval() -> None:
    clock, out = Clock(), Terminal()
    progress = Progress("x", 1000, stream=out, interval=1.0, clock=clock)
    for _ in range(500):
        progress.advance()
    assert out.getvalue().count(CLEAR) == 1  # the first advance only: no time passed
    clock.now += 1.5
    progress.advance()
    assert out.getvalue().count(CLEAR) == 2


def test_threads_advance_one_counter() -> None:
    progress = Progress("x", 8000, stream=io.StringIO())
    threads = [threading.Thread(target=lambda: [progress.advance() for _ in range(1000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert progress.done == 8000


def test_human_durations() -> None:
    assert [human(s) for s in (0.4, 59, 61, 3599, 3725)] == ["0 s", "59 s", "1 min 01 s", "59 min 59 s", "1 h 02 min"]


@pytest.mark.ovs
@pytest.mark.lab
@pytest.mark.parametrize("shown", [True, None])
def test_scale_lab_shows_its_progress_on_a_terminal_only(shown: bool | None, capsys: pytest.CaptureFixture) -> None:
    """Forced on, the scale lab draws each phase's line; left to detect it (pytest's capture is no terminal),
    it prints nothing."""
    require_lab()
    with ScaleLab(4, None, bridges_per_vswitchd=2, progress=shown, workdir=None) as lab:
        assert len(lab.hypervisors) == 4 and os.path.isdir(lab.workdir)
    out = capsys.readouterr().out
    if shown:
        assert "scale lab: bridges: 4/4 bridges (100%)" in out
    else:
        assert "scale lab" not in out
