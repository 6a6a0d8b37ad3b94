"""Stage embed: sentence embeddings of the pool (for ``cluster.feature_space = embedding``) -> ``gradients``.

The embedding twin of the score stage: rows carry the :class:`~prismatic.embeddings.EmbeddingSpec` ``spec_id``, a
unit vector, loss null, the tokens the encoder saw and whether the text was truncated. Only missing rows are
computed; work is committed per chunk of buckets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prismatic.errors import ConservationError
from prismatic.progress import ProgressFn
from prismatic.stages.base import Context, Option, ReportRows, Stage
from prismatic.stages.common import PoolFilter, pool_without_vectors, run_chunks

log = logging.getLogger(__name__)


@dataclass
class EmbedReport(ReportRows):
    spec_id: str
    todo: int = 0
    embedded: int = 0
    skipped: int = 0

    def summary(self) -> str:
        return f"spec {self.spec_id}: {self.todo} to embed ({self.skipped} already done) -> {self.embedded} vectors"


def embed_pool(
    ctx: Context,
    only: PoolFilter | None = None,
    *,
    where: str | None = None,
    rows_per_chunk: int = 4096,
    progress: ProgressFn | None = None,
) -> EmbedReport:
    """Sentence embeddings of pool samples not yet embedded under ``ctx.embedding_spec()`` -> ``gradients``.

    Args:
        only: the code's typed filter on the pool (clustering: one task; the synthesis loop: a task's rounds).
        where: the user's SQL filter (``--where``).
        progress: called with (rows done, rows to do) after each committed chunk.
    """
    from pyspark.sql import functions as F

    from prismatic.embeddings import EMBED_SCHEMA, make_embed_fn

    spec = ctx.embedding_spec()
    dcfg = ctx.settings.diversity
    unembedded, total = pool_without_vectors(
        ctx, spec.spec_id, ["sample_id", "prompt", "completion", "bucket"], where, only
    )
    todo = unembedded.localCheckpoint()
    report = EmbedReport(spec.spec_id, todo=todo.count())
    report.skipped = total - report.todo
    if progress is not None:
        progress(0, report.todo)

    def make_fn(plan):
        args = (dcfg.embedding_model, dcfg.embedding_device, dcfg.embedding_batch_size, dcfg.embedding_max_tokens)
        return make_embed_fn(spec.spec_id, *args, slots=plan.slots), EMBED_SCHEMA

    def commit(embedded, plan) -> None:
        res = ctx.store.merge("gradients", embedded.withColumn("created_at", F.current_timestamp()))
        report.embedded += res.inserted
        if res.inserted != plan.rows:
            raise ConservationError(f"chunk of {plan.rows} samples gave {res.inserted} embedding vectors")
        if progress is not None:
            progress(report.embedded, report.todo)
        log.info("embedded chunk of %d (%d/%d)", plan.rows, report.embedded, report.todo)

    run_chunks(ctx, todo, rows_per_chunk, dcfg.embedding_batch_size, "embed", make_fn, commit)
    return report


class EmbedStage(Stage):
    name = "embed"
    help = "Sentence embeddings of the pool under the encoder spec (diversity.embedding_model) -> `gradients`."
    section = "diversity"
    reads = ("samples", "duplicates", "gradients")
    writes = ("projection_specs", "gradients")
    options = (Option("where", help="SQL filter on the pool, e.g. \"task = 'math'\""),)

    def run(self, ctx: Context, *, where) -> EmbedReport:
        with ctx.progress("embed") as progress:
            return embed_pool(ctx, where=where, progress=progress)
