"""What several stages share: the typed pool filter, the user's ``--where`` channel, and the chunked
``mapInPandas`` runner that scoring and embedding commit their work through."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prismatic.errors import PrismError
from prismatic.spark import task_slots
from prismatic.stages.base import Context
from prismatic.tables import TableStore

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PoolFilter:
    """A filter the code itself puts on the pool (the synthesis loop, the study): typed, never SQL text.

    The user's ``--where`` is a separate channel (:func:`pool_frame`), checked by the rules of ``prism sql``.

    Args:
        task: only rows of this task.
        round_below: only rows of rounds ``< round_below``.
        round_at_most: only rows of rounds ``<= round_at_most``.
    """

    task: str | None = None
    round_below: int | None = None
    round_at_most: int | None = None

    def apply(self, df):
        """``df`` (with the ``task`` / ``round`` columns this filter names) narrowed to the matching rows."""
        from pyspark.sql import functions as F

        if self.task is not None:
            df = df.where(F.col("task") == self.task)
        if self.round_below is not None:
            df = df.where(F.col("round") < int(self.round_below))
        if self.round_at_most is not None:
            df = df.where(F.col("round") <= int(self.round_at_most))
        return df

    def __str__(self) -> str:
        parts = [f"task={self.task}"] if self.task is not None else []
        parts += [f"round<{self.round_below}"] if self.round_below is not None else []
        parts += [f"round<={self.round_at_most}"] if self.round_at_most is not None else []
        return ", ".join(parts) or "all"


def pool_frame(store: TableStore, columns: list[str], where: str | None = None, only: PoolFilter | None = None):
    """``columns`` of the pool, narrowed by the code's typed filter ``only`` and by a user's SQL ``where``
    (``--where``); a bad user filter is one PrismError."""
    pool = store.pool()
    if only is not None:
        pool = only.apply(pool)
    pool = pool.select(*columns)
    if not where:
        return pool
    from prismatic.errors import first_line
    from prismatic.sqlrun import check_filter

    check_filter(store.spark, where)  # parses, calls no Java, reads no file: the rules of `prism sql`
    try:
        return pool.where(where)
    except Exception as e:  # noqa: BLE001 - a user's SQL filter
        raise PrismError(
            f"--where {where!r} is not a valid filter on samples: {first_line(e)}",
            hint="a SQL boolean expression over the pool's columns, e.g. \"source = 'snli'\"",
        ) from None


def pool_without_vectors(
    ctx: Context, spec_id: str, columns: list[str], where: str | None, only: PoolFilter | None
) -> tuple:
    """(``columns`` of the filtered pool rows that have no ``gradients`` row under ``spec_id``, filtered pool size):
    the work scoring and embedding have left to do."""
    from pyspark.sql import functions as F

    pool = pool_frame(ctx.store, columns, where, only)
    done = ctx.store.read("gradients").where(F.col("spec_id") == spec_id).select("sample_id")
    return pool.join(done, "sample_id", "left_anti"), pool.count()


def chunks_by_bucket(counts: dict[int, int], rows_per_chunk: int) -> list[list[int]]:
    """Group buckets (in order) into chunks of about ``rows_per_chunk`` rows each."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    n = 0
    for b in sorted(counts):
        cur.append(b)
        n += counts[b]
        if n >= rows_per_chunk:
            chunks.append(cur)
            cur, n = [], 0
    if cur:
        chunks.append(cur)
    return chunks


def bucket_counts(todo) -> dict[int, int]:
    """Rows of ``todo`` per ``bucket``."""
    from pyspark.sql import functions as F

    return {r["bucket"]: r["n"] for r in todo.groupBy("bucket").agg(F.count("*").alias("n")).collect()}


@dataclass(frozen=True)
class ChunkPlan:
    """How one chunk runs: its rows and the Spark tasks (and the task slots they share a machine with)."""

    buckets: list[int]
    rows: int
    parts: int
    slots: int


def run_chunks(
    ctx: Context,
    todo,
    rows_per_chunk: int,
    batch_size: int,
    kind: str,
    make_fn: Callable[[ChunkPlan], tuple[Callable, str]],
    commit: Callable[[object, ChunkPlan], None],
) -> None:
    """Map ``todo`` (columns incl. ``sample_id`` and ``bucket``) through ``mapInPandas`` one chunk of buckets at
    a time and ``commit(output DataFrame, plan)`` each chunk before the next starts.

    A chunk's output is staged as parquet under the run's staging folder (``kind``), so a crash loses at most
    one chunk and a re-run does only what is missing. ``make_fn(plan)`` gives the function and its output schema;
    fewer tasks than slots (a small chunk) let each worker use more of the cores.
    """
    from prismatic.upkeep import staging_dir

    spark = ctx.store.spark
    counts = bucket_counts(todo)
    parallelism, slots = max(1, spark.sparkContext.defaultParallelism), task_slots(spark)
    stage_root = staging_dir(ctx.settings.root, kind)  # run-owned: a killed run's folder is swept later
    try:
        for chunk in chunks_by_bucket(counts, rows_per_chunk):
            n = sum(counts[b] for b in chunk)
            parts = max(1, min(parallelism, n // max(1, batch_size)))
            plan = ChunkPlan(chunk, n, parts, min(slots, parts))
            fn, schema = make_fn(plan)
            out_dir = stage_root / f"chunk-{chunk[0]}"
            (
                todo.where(todo["bucket"].isin(chunk))
                .drop("bucket")
                .repartition(parts, "sample_id")
                .sortWithinPartitions("sample_id")
                .mapInPandas(fn, schema)
                .write.mode("overwrite")
                .parquet(str(out_dir))
            )
            commit(spark.read.parquet(str(out_dir)), plan)
            shutil.rmtree(out_dir, ignore_errors=True)
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
