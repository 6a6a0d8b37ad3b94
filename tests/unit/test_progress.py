"""StageProgress: plain lines when the output is not a terminal (job logs, CI), throttled, with an estimate."""

from __future__ import annotations

import io

from rich.console import Console

from prismatic.progress import StageProgress


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_are_throttled_and_estimate_time_left():
    buf, clock = io.StringIO(), Clock()
    console = Console(file=buf, force_terminal=False, width=200)
    with StageProgress(console, "score", every=30, clock=clock) as p:
        assert not p.live
        clock.t += 10
        p(10, 100)  # within the first 30 s: nothing printed
        clock.t += 30
        p(40, 100)  # 40 s elapsed, 1/s -> 60 s left
        clock.t += 5
        p(45, 100)  # throttled
        clock.t += 55
        p(100, 100)
    lines = buf.getvalue().splitlines()
    assert lines == [
        "score: 40/100 (40%), 1.00/s, 40s elapsed, about 1m00s left",
        "score: 100/100 (100%), 1.00/s, 1m40s elapsed",
    ]


def test_last_line_when_the_end_was_not_printed():
    buf, clock = io.StringIO(), Clock()
    console = Console(file=buf, force_terminal=False, width=200)
    with StageProgress(console, "score", every=30, clock=clock) as p:
        clock.t += 40
        p(40, 50)
        clock.t += 10
        p(50, 50)  # throttled, printed on exit
    assert buf.getvalue().splitlines()[-1] == "score: 50/50 (100%), 1.00/s, 50s elapsed"


def test_short_stage_prints_nothing_and_unknown_total_is_a_count():
    buf, clock = io.StringIO(), Clock()
    console = Console(file=buf, force_terminal=False, width=200)
    with StageProgress(console, "study", every=30, clock=clock) as p:
        clock.t += 3
        p(2)
    assert buf.getvalue() == ""
    assert p.line() == "study: 2, 0.67/s, 3s elapsed"
