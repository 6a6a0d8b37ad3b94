"""Progress of long stages: a live bar on a terminal, plain timestamped lines in job logs and CI.

A rich bar draws nothing when the output is not a terminal (a Databricks job log, CI, ``| tee``), so a
long scoring stage would look hung. :class:`StageProgress` prints one line at most every ``every`` seconds
there instead (done / total, rate, estimated time left), plus a last line when the stage ends.

Work done in Spark's Python workers reports per batch through small files: each worker process keeps its
running row count in its own file under a folder of the run's staging area (:class:`CountFile`), and a driver
thread sums the folder into the progress sink (:func:`watch_counts`). Spark's own task counts would move only
when a whole partition is done; accumulators only when a task ends.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

ProgressFn = Callable[[int, int], None]  # progress(done, total): what a stage reports to


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class RateColumn(ProgressColumn):
    """Rows per second of a task (rich's own speed estimate)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.2f}/s", style="progress.data.speed")


class StageProgress:
    """Callable ``(done, total)`` progress sink for one stage; use as a context manager. Thread-safe: a driver
    thread summing worker counts may call it while the stage's own thread does."""

    def __init__(self, console: Console, description: str, every: float = 30.0, clock=time.monotonic):
        self.console, self.description, self.every, self.clock = console, description, every, clock
        self.live = console.is_terminal
        self._bar: Progress | None = None
        self._task = None
        self._start = self._last = 0.0
        self._state: tuple[int, int | None] = (0, None)
        self._printed: tuple[int, int | None] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> StageProgress:
        self._start = self._last = self.clock()
        if self.live:
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                RateColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=None)
        return self

    def __call__(self, done: int, total: int | None = None) -> None:
        with self._lock:
            self._state = (int(done), None if total is None else int(total))
            if self._bar is not None:
                self._bar.update(self._task, completed=done, total=total)
                return
            now = self.clock()
            if now - self._last >= self.every:
                self._last, self._printed = now, self._state
                self.console.print(self.line(now))

    def line(self, now: float | None = None) -> str:
        """``score: 256/585 (44%), 0.53/s, 6m12s elapsed, about 10m20s left``."""
        done, total = self._state
        elapsed = (self.clock() if now is None else now) - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{done}/{total} ({done / total:.0%})" if total else f"{done}"]
        parts.append(f"{rate:.2f}/s, {_duration(elapsed)} elapsed")
        if total and rate > 0 and done < total:
            parts.append(f"about {_duration((total - done) / rate)} left")
        return f"{self.description}: " + ", ".join(parts)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif exc[0] is None and self._printed not in (None, self._state):
            self.console.print(self.line())  # a last line when the stage reported before


class CountFile:
    """Worker side: this process's running count of finished rows, in its own file under ``folder``.

    Call it with each batch's row count. The file is replaced atomically, so a reader sees a whole number. Progress
    is best effort: a folder that cannot be written (a worker that does not see the driver's file system) turns
    the counter off, never the work.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.n"
        self.n = 0
        self.ok = True

    def __call__(self, rows: int) -> None:
        self.n += int(rows)
        if not self.ok:
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(str(self.n))
            os.replace(tmp, self.path)
        except OSError:
            self.ok = False


def count_files(folder: Path) -> int:
    """The sum of the :class:`CountFile` counts under ``folder`` (0 when it does not exist)."""
    total = 0
    try:
        paths = list(Path(folder).glob("*.n"))
    except OSError:
        return 0
    for p in paths:
        try:
            total += int(p.read_text() or 0)
        except (OSError, ValueError):
            continue  # replaced or removed under us: the next poll counts it
    return total


@contextmanager
def watch_counts(folder: Path, on_count: Callable[[int], None], every: float = 1.0) -> Iterator[Path]:
    """Create ``folder`` and, while the block runs, call ``on_count(sum of its counts)`` every ``every`` seconds
    from a daemon thread (and once more at the end)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def poll() -> None:
        last = -1
        while not stop.wait(every):
            n = count_files(folder)
            if n != last:
                on_count(n)
                last = n

    thread = threading.Thread(target=poll, name="progress-counts", daemon=True)
    thread.start()
    try:
        yield folder
    finally:
        stop.set()
        thread.join()
        on_count(count_files(folder))
