"""What a stage is: a small class that declares its config section, the tables it reads and writes and its
options, and runs against a :class:`Context` to give a :class:`Report`.

The registry (:mod:`prismatic.stages.registry`) lists the stages in pipeline order; the ``prism`` CLI, ``prism
run``, the bundle's ``jobs/<stage>.py`` entry points and the bundle test are all built from it, so a stage is
declared once. The stage's logic lives in its own module (``prismatic.stages.<name>``); pure math stays in the
modules that hold it (``vendi``, ``minhash``, ``cluster``'s numpy core, ``gradients``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from rich.console import Console

from prismatic.config import Settings
from prismatic.progress import StageProgress
from prismatic.tables import TableStore


@dataclass(frozen=True)
class Option:
    """One option of a stage, declared once for the CLI (click) and the job entry points (argparse).

    ``kind`` is ``str``, ``int``, ``float``, ``bool`` or ``Path``. A ``bool`` option is a flag (``--exact``), or
    ``--x/--no-x`` with ``negatable``; ``multiple`` takes the option repeatedly (a list); ``argument`` makes it
    positional (the CLI's ``prism ingest PATHS...``; jobs take it as ``--paths``).
    """

    name: str
    kind: type = str
    default: Any = None
    help: str = ""
    short: str | None = None
    multiple: bool = False
    negatable: bool = False
    required: bool = False
    argument: bool = False
    min: int | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        """The long spelling, ``--group-by`` for ``group_by``."""
        return "--" + self.name.replace("_", "-")


@runtime_checkable
class Report(Protocol):
    """What a stage returns: one human line, and rows for ``--format json`` / ``csv``."""

    def summary(self) -> str: ...

    def rows(self) -> list[dict]: ...


class ReportRows:
    """Mixin for dataclass reports: ``rows()`` is the report's fields as one row (nested values kept)."""

    def rows(self) -> list[dict]:
        return [dataclasses.asdict(self)]  # type: ignore[call-overload]


@dataclass
class Context:
    """What a stage runs with: settings, the table store, specs resolved once per run, progress, timings and
    the MLflow run (or None).

    One context serves a whole ``prism run`` (every stage sees the same resolved spec, registered once) or one
    ``prism <stage>`` command.
    """

    settings: Settings
    store: TableStore
    console: Console = field(default_factory=lambda: Console(stderr=True))
    mlflow_run: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    _specs: dict[str, Any] = field(default_factory=dict, repr=False)

    def _registered(self, kind: str, resolve) -> Any:
        if kind not in self._specs:
            spec = resolve()
            from datetime import UTC, datetime

            import pyarrow as pa

            self.store.merge(
                "projection_specs", pa.Table.from_pylist([{**spec.to_row(), "created_at": datetime.now(UTC)}])
            )
            self._specs[kind] = spec
        return self._specs[kind]

    def spec(self):
        """The projection spec of ``scoring`` (resolved and recorded in ``projection_specs`` once per context)."""
        from prismatic.gradients.udf import spec_for

        return self._registered("gradient", lambda: spec_for(self.settings.scoring))

    def embedding_spec(self):
        """The sentence-encoder spec of ``diversity.embedding_*`` (once per context)."""
        from prismatic.embeddings import embedding_spec

        d = self.settings.diversity
        return self._registered("embedding", lambda: embedding_spec(d.embedding_model, d.embedding_max_tokens))

    def feature_spec(self):
        """The spec of the vectors ``cluster.feature_space`` clusters and filters in."""
        return self.embedding_spec() if self.settings.cluster.feature_space == "embedding" else self.spec()

    def progress(self, description: str) -> StageProgress:
        """The one progress mechanism: a live bar on a terminal, plain timestamped lines in jobs and CI."""
        return StageProgress(self.console, description)

    @contextmanager
    def timer(self, step: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[step]`` (seconds)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - t0

    def with_settings(self, settings: Settings) -> Context:
        """The same store, console and MLflow run under other settings (specs resolved again)."""
        return Context(settings, self.store, self.console, self.mlflow_run, self.timings)


class Stage:
    """A pipeline stage. Subclasses set the class attributes and implement :meth:`run`.

    ``run(ctx, **options)`` receives every declared option by name (the declared default when not given);
    :meth:`pipeline_calls` says what ``prism run`` passes (one call per item; none: not part of ``prism run``).
    """

    name: ClassVar[str]
    help: ClassVar[str]
    section: ClassVar[str | None] = None  # the config section the stage reads (Settings attribute)
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[Option, ...]] = ()
    needs_spark: ClassVar[bool] = True

    def run(self, ctx: Context, **options: Any) -> Report:
        raise NotImplementedError

    def pipeline_calls(self, settings: Settings) -> list[dict[str, Any]]:
        """Options of each call ``prism run`` makes of this stage, in order (default: none)."""
        return []

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def __call__(self, ctx: Context, **options: Any) -> Report:
        """Run with the declared defaults filled in; an unknown option is a programming error."""
        known = self.defaults()
        unknown = set(options) - set(known)
        if unknown:
            raise TypeError(f"stage {self.name}: unknown option(s) {sorted(unknown)}")
        return self.run(ctx, **{**known, **options})


def option_map(stage: Stage) -> Mapping[str, Option]:
    return {o.name: o for o in stage.options}


def as_path(value: Any) -> Path | None:
    return None if value is None else Path(value)
