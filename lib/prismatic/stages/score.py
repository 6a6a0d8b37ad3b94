"""Stage score: projected per-sample gradients of the pool under the scoring spec -> ``gradients``.

Work is split by ``bucket`` so each chunk is one Spark job whose output is MERGEd before the next starts: a crash
loses at most one chunk of work and a re-run scores only what is missing. Samples that fail (empty completion
after truncation, non-finite loss or gradient, an exception) go to ``quarantine`` (stage ``score``, source =
spec_id, item_id = sample_id) and are not retried under the same spec. Progress moves per model batch: each
Spark task adds its rows to a count file after every batch (:mod:`prismatic.progress`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field

import pyarrow as pa

from prismatic.errors import ConservationError
from prismatic.progress import ProgressFn, watch_counts
from prismatic.stages.base import Context, Option, ReportRows, Stage
from prismatic.stages.common import PoolFilter, now, pool_without_vectors, run_chunks

log = logging.getLogger(__name__)


@dataclass
class ScoreReport(ReportRows):
    spec_id: str
    todo: int = 0
    scored: int = 0
    quarantined: int = 0
    skipped: int = 0
    reasons: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"spec {self.spec_id}: {self.todo} to score ({self.skipped} already done) -> {self.scored} vectors"
            f" + {self.quarantined} quarantined" + (f" {self.reasons}" if self.reasons else "")
        )


def quarantine_row(spec_id: str, sample_id: str, code: str, detail: str | None, n_tokens) -> dict:
    """The ``quarantine`` row of a failed sample: the code is the reason; a failure with a detail (``encode``, an
    exception) keeps the reason ``error`` and its one-line text (:func:`~prismatic.gradients.scoring.failure_text`)
    in the detail, as the rows have always read."""
    from prismatic.gradients.scoring import failure_text

    return {
        "stage": "score",
        "source": spec_id,
        "file": "",
        "line": 0,
        "item_id": sample_id,
        "reason": code if detail is None else "error",
        "detail": f"{failure_text(code, detail)} (n_tokens={n_tokens})",
        "payload": "",
        "batch_id": spec_id,
        "created_at": now(),
    }


def _todo(ctx: Context, spec_id: str, where: str | None, only: PoolFilter | None, limit: int | None):
    """(pool rows not yet scored nor quarantined under the spec, pool size)."""
    from pyspark.sql import functions as F

    columns = ["sample_id", "prompt", "completion", "task", "bucket"]
    unscored, total = pool_without_vectors(ctx, spec_id, columns, where, only)
    failed = (
        ctx.store.read("quarantine")
        .where((F.col("stage") == "score") & (F.col("source") == spec_id))
        .select(F.col("item_id").alias("sample_id"))
    )
    todo = unscored.join(failed, "sample_id", "left_anti")
    if limit is not None:
        todo = todo.orderBy("sample_id").limit(limit)
    return todo.localCheckpoint(), total


def score_pool(
    ctx: Context,
    only: PoolFilter | None = None,
    *,
    where: str | None = None,
    limit: int | None = None,
    rows_per_chunk: int = 256,
    progress: ProgressFn | None = None,
) -> ScoreReport:
    """Score pool samples not yet scored under ``ctx.spec()``; commit every ~``rows_per_chunk`` samples.

    Args:
        only: the code's typed filter on the pool (the synthesis loop: a task's rounds).
        where: the user's SQL filter (``--where``).
        limit: at most this many samples (smallest sample_id first).
        progress: called with (rows done, rows to do), per model batch.
    """
    from pyspark.sql import functions as F

    from prismatic.gradients.udf import SCORE_SCHEMA, make_score_fn
    from prismatic.upkeep import staging_dir

    spec = ctx.spec()
    todo, total = _todo(ctx, spec.spec_id, where, only, limit)
    report = ScoreReport(spec.spec_id, todo=todo.count())
    report.skipped = total - report.todo if limit is None else 0
    if progress is not None:
        progress(0, report.todo)
    counts_dir = staging_dir(ctx.settings.root, "score-counts")

    def commit(scored, plan) -> None:
        good = scored.where(F.col("error").isNull()).drop("error", "detail")
        res = ctx.store.merge("gradients", good.withColumn("created_at", F.current_timestamp()))
        report.scored += res.inserted
        bad = scored.where(F.col("error").isNotNull()).select("sample_id", "error", "detail", "n_tokens").collect()
        if bad:
            q = [quarantine_row(spec.spec_id, r["sample_id"], r["error"], r["detail"], r["n_tokens"]) for r in bad]
            ctx.store.merge("quarantine", pa.Table.from_pylist(q))
            report.quarantined += len(q)
            for row in q:
                report.reasons[row["reason"]] = report.reasons.get(row["reason"], 0) + 1
        if res.inserted + len(bad) != plan.rows:
            raise ConservationError(f"chunk of {plan.rows} samples gave {res.inserted} vectors + {len(bad)} failures")
        log.info("scored chunk of %d (%d/%d)", plan.rows, report.scored + report.quarantined, report.todo)

    def make_fn(plan):
        return make_score_fn(ctx.settings.scoring, slots=plan.slots, counts_dir=str(counts_dir)), SCORE_SCHEMA

    on_count = (lambda n: progress(min(n, report.todo), report.todo)) if progress is not None else (lambda n: None)
    try:
        with watch_counts(counts_dir, on_count):
            run_chunks(ctx, todo, rows_per_chunk, ctx.settings.scoring.batch_size, "score", make_fn, commit)
    finally:
        shutil.rmtree(counts_dir, ignore_errors=True)
    if progress is not None:
        progress(report.scored + report.quarantined, report.todo)
    return report


class ScoreStage(Stage):
    name = "score"
    help = "Projected per-sample gradients of the pool under the scoring spec -> `gradients`."
    section = "scoring"
    reads = ("samples", "duplicates", "gradients")
    writes = ("projection_specs", "gradients", "quarantine")
    options = (
        Option("where", help="SQL filter on the pool, e.g. \"source = 'snli'\""),
        Option("limit", kind=int, min=1, help="score at most N samples (smallest sample_id first)"),
    )

    def run(self, ctx: Context, *, where, limit) -> ScoreReport:
        with ctx.progress("score") as progress:
            return score_pool(ctx, where=where, limit=limit, progress=progress)

    def pipeline_calls(self, settings):
        return [{"where": settings.demo.get("score_where"), "limit": settings.demo.get("score_limit")}]
