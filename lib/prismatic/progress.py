"""Progress of long stages: a live bar on a terminal, plain timestamped lines in job logs and CI.

A rich bar draws nothing when the output is not a terminal (a Databricks job log, CI, ``| tee``), so a
long scoring stage would look hung. :class:`StageProgress` prints one line at most every ``every`` seconds
there instead (done / total, rate, estimated time left), plus a last line when the stage ends.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class StageProgress:
    """Callable ``(done, total)`` progress sink for one stage; use as a context manager."""

    def __init__(self, console: Console, description: str, every: float = 30.0, clock=time.monotonic):
        self.console, self.description, self.every, self.clock = console, description, every, clock
        self.live = console.is_terminal
        self._bar: Progress | None = None
        self._task = None
        self._start = self._last = 0.0
        self._state: tuple[int, int | None] = (0, None)
        self._printed: tuple[int, int | None] | None = None

    def __enter__(self) -> StageProgress:
        self._start = self._last = self.clock()
        if self.live:
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=None)
        return self

    def __call__(self, done: int, total: int | None = None) -> None:
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
