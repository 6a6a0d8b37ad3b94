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


def test_count_files_sum_what_workers_wrote(tmp_path):
    from prismatic.progress import CountFile, count_files

    a, b = CountFile(tmp_path), CountFile(tmp_path)
    assert a.path != b.path and count_files(tmp_path) == 0
    for n in (2, 2, 1):
        a(n)
    b(3)
    assert count_files(tmp_path) == 8
    assert sorted(int(p.read_text()) for p in tmp_path.glob("*.n")) == [3, 5]
    assert not list(tmp_path.glob("*.tmp"))  # replaced atomically


def test_a_count_file_that_cannot_be_written_turns_itself_off(tmp_path):
    from prismatic.progress import CountFile

    c = CountFile(tmp_path / "missing" / "folder")
    c(4)
    c(1)  # no error: progress never stops the work
    assert not c.ok and c.n == 5


def test_watch_counts_reports_from_a_thread_and_once_at_the_end(tmp_path):
    import threading

    from prismatic.progress import CountFile, watch_counts

    seen: list[int] = []
    first = threading.Event()

    def on_count(n):
        seen.append(n)
        first.set()

    with watch_counts(tmp_path / "counts", on_count, every=0.01) as folder:
        w = CountFile(folder)
        w(3)
        assert first.wait(5)  # the thread saw the first batch while the block still ran
        w(4)
    assert seen[0] == 3 and seen[-1] == 7 and seen == sorted(seen)


def test_live_bar_has_rate_and_time_left_columns():
    from rich.progress import TimeRemainingColumn

    from prismatic.progress import RateColumn

    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    with StageProgress(console, "score") as p:
        assert p.live
        kinds = {type(c) for c in p._bar.columns}
        assert RateColumn in kinds and TimeRemainingColumn in kinds
        p(5, 10)
        task = p._bar.tasks[0]
        assert (task.completed, task.total) == (5, 10)
