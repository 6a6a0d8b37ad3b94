"""Stage dedup: exact + near duplicates of ``samples`` -> ``duplicates`` (the pool = samples minus duplicates)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prismatic.errors import ConservationError
from prismatic.stages.base import Context, ReportRows, Stage


@dataclass
class DedupReport(ReportRows):
    samples: int
    exact: int
    near: int
    new_removed: int
    pool: int
    seconds: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"samples {self.samples} = pool {self.pool} + duplicates {self.samples - self.pool}"
            f" (this run: {self.exact} exact + {self.near} near found, {self.new_removed} newly recorded)"
        )


def dedup_pool(ctx: Context) -> DedupReport:
    """Exact + near duplicates over all samples -> MERGE into ``duplicates`` (insert-only, keyed by sample_id).

    A sample once recorded as a duplicate stays recorded; ``samples`` itself is never modified, so nothing is
    lost: the pool is ``samples`` minus ``duplicates``. Checked: samples = pool + duplicates.
    """
    from pyspark.sql import functions as F

    from prismatic.dedup import run_dedup

    store = ctx.store
    samples = store.read("samples").select("sample_id", "task", "prompt", "completion")
    dups, stats = run_dedup(samples, ctx.settings.dedup)
    dups = dups.join(samples.select("sample_id", "task"), "sample_id").withColumn("created_at", F.current_timestamp())
    res = store.merge("duplicates", dups)
    rows = store.count("samples")
    n_dups = store.count("duplicates")
    pool = store.pool().count()
    if pool + n_dups != rows:
        raise ConservationError(f"samples {rows} != pool {pool} + duplicates {n_dups}")
    return DedupReport(stats.rows, stats.exact, stats.near, res.inserted, pool, dict(stats.seconds))


class DedupStage(Stage):
    name = "dedup"
    help = "Remove exact and near duplicates from the pool (recorded in `duplicates`)."
    section = "dedup"
    reads = ("samples", "duplicates")
    writes = ("duplicates",)

    def run(self, ctx: Context) -> DedupReport:
        return dedup_pool(ctx)

    def pipeline_calls(self, settings):
        return [{}]
