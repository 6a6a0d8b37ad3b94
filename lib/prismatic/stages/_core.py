"""Stages: read tables -> call one module's function -> MERGE its output -> report counts.

The modules (``dedup``, ``gradients``, ``diversity``, ``cluster``) hold the logic on DataFrames and arrays;
this file is the only place that knows which table feeds which function. Each stage is idempotent: it MERGEs
on the table key and skips work already recorded, so a crash then a re-run gives the tables of one clean run.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa

from prismatic.config import IDENTIFIER_RE as IDENT_RE
from prismatic.config import Settings
from prismatic.errors import ConservationError, PrismError
from prismatic.spark import task_slots
from prismatic.tables import TableStore

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


def _now() -> datetime:
    return datetime.now(UTC)


# ---- dedup ------------------------------------------------------------------------------------------------


@dataclass
class DedupReport:
    rows: int
    exact: int
    near: int
    new_removed: int
    pool: int
    seconds: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"samples {self.rows} = pool {self.pool} + duplicates {self.rows - self.pool}"
            f" (this run: {self.exact} exact + {self.near} near found, {self.new_removed} newly recorded)"
        )


def dedup_stage(store: TableStore, settings: Settings) -> DedupReport:
    """Exact + near duplicates over all samples -> MERGE into ``duplicates`` (insert-only, keyed by sample_id).

    A sample once recorded as a duplicate stays recorded; ``samples`` itself is never modified, so nothing is
    lost: the pool is ``samples`` minus ``duplicates``. Checked: samples = pool + duplicates.
    """
    from pyspark.sql import functions as F

    from prismatic.dedup import run_dedup

    samples = store.read("samples").select("sample_id", "task", "prompt", "completion")
    dups, stats = run_dedup(samples, settings.dedup)
    dups = dups.join(samples.select("sample_id", "task"), "sample_id").withColumn("created_at", F.current_timestamp())
    res = store.merge("duplicates", dups)
    rows = store.count("samples")
    n_dups = store.count("duplicates")
    pool = store.pool().count()
    if pool + n_dups != rows:
        raise ConservationError(f"samples {rows} != pool {pool} + duplicates {n_dups}")
    return DedupReport(stats.rows, stats.exact, stats.near, res.inserted, pool, dict(stats.seconds))


# ---- scoring ----------------------------------------------------------------------------------------------


@dataclass
class ScoreReport:
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


def _chunks_by_bucket(counts: dict[int, int], rows_per_chunk: int) -> list[list[int]]:
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


def register_spec(store: TableStore, settings: Settings):
    """Resolve the projection spec of the scoring config and record it in ``projection_specs``."""
    from prismatic.gradients.udf import spec_for

    spec = spec_for(settings.scoring)
    store.merge("projection_specs", pa.Table.from_pylist([{**spec.to_row(), "created_at": _now()}]))
    return spec


def register_embedding_spec(store: TableStore, settings: Settings):
    """Resolve the sentence-encoder spec (``diversity.embedding_*``) and record it in ``projection_specs``."""
    from prismatic.embeddings import embedding_spec

    spec = embedding_spec(settings.diversity.embedding_model, settings.diversity.embedding_max_tokens)
    store.merge("projection_specs", pa.Table.from_pylist([{**spec.to_row(), "created_at": _now()}]))
    return spec


def register_feature_spec(store: TableStore, settings: Settings):
    """The spec of the vectors that ``cluster.feature_space`` clusters and filters in: the projection spec of
    ``scoring`` (``gradient``) or the encoder spec of ``diversity.embedding_model`` (``embedding``); recorded."""
    if settings.cluster.feature_space == "embedding":
        return register_embedding_spec(store, settings)
    return register_spec(store, settings)


@dataclass
class EmbedReport:
    spec_id: str
    todo: int = 0
    embedded: int = 0
    skipped: int = 0

    def summary(self) -> str:
        return f"spec {self.spec_id}: {self.todo} to embed ({self.skipped} already done) -> {self.embedded} vectors"


def _pool_where(store: TableStore, columns: list[str], where: str | None):
    """``columns`` of the pool, filtered by a user's SQL ``where`` (``--where``); a bad filter is one PrismError."""
    pool = store.pool().select(*columns)
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


def embed_stage(
    store: TableStore,
    settings: Settings,
    where: str | None = None,
    rows_per_chunk: int = 4096,
    progress: Progress | None = None,
) -> EmbedReport:
    """Sentence embeddings of pool samples not yet embedded under the encoder's spec -> MERGE into ``gradients``.

    The embedding twin of :func:`score_stage` (for ``cluster.feature_space = "embedding"``): rows carry the
    :class:`~prismatic.embeddings.EmbeddingSpec` ``spec_id``, a unit vector, loss null, the tokens the encoder saw
    and whether the text was truncated. Only missing rows are computed; work is committed per chunk of buckets.
    """
    from pyspark.sql import functions as F

    from prismatic.embeddings import EMBED_SCHEMA, make_embed_fn

    spec = register_embedding_spec(store, settings)
    dcfg = settings.diversity
    spark = store.spark
    pool = _pool_where(store, ["sample_id", "prompt", "completion", "bucket"], where)
    total = pool.count()
    done = store.read("gradients").where(F.col("spec_id") == spec.spec_id).select("sample_id")
    todo = pool.join(done, "sample_id", "left_anti").localCheckpoint()
    counts = {r["bucket"]: r["n"] for r in todo.groupBy("bucket").agg(F.count("*").alias("n")).collect()}
    report = EmbedReport(spec.spec_id, todo=sum(counts.values()))
    report.skipped = total - report.todo
    parallelism, slots = max(1, spark.sparkContext.defaultParallelism), task_slots(spark)
    from prismatic.upkeep import staging_dir

    stage_root = staging_dir(settings.root, "embed")  # run-owned: a killed run's folder is swept later
    try:
        for chunk in _chunks_by_bucket(counts, rows_per_chunk):
            n = sum(counts[b] for b in chunk)
            parts = max(1, min(parallelism, n // max(1, dcfg.embedding_batch_size)))
            # fewer tasks than slots (a small chunk): each worker may use more of the cores
            fn = make_embed_fn(
                spec.spec_id,
                dcfg.embedding_model,
                dcfg.embedding_device,
                dcfg.embedding_batch_size,
                dcfg.embedding_max_tokens,
                slots=min(slots, parts),
            )
            out_dir = stage_root / f"chunk-{chunk[0]}"
            (
                todo.where(F.col("bucket").isin(chunk))
                .drop("bucket")
                .repartition(parts, "sample_id")
                .sortWithinPartitions("sample_id")
                .mapInPandas(fn, EMBED_SCHEMA)
                .write.mode("overwrite")
                .parquet(str(out_dir))
            )
            embedded = spark.read.parquet(str(out_dir)).withColumn("created_at", F.current_timestamp())
            res = store.merge("gradients", embedded)
            report.embedded += res.inserted
            if res.inserted != n:
                raise ConservationError(f"chunk of {n} samples gave {res.inserted} embedding vectors")
            shutil.rmtree(out_dir, ignore_errors=True)
            if progress is not None:
                progress(report.embedded, report.todo)
            log.info("embedded chunk of %d (%d/%d)", n, report.embedded, report.todo)
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
    return report


def score_stage(
    store: TableStore,
    settings: Settings,
    where: str | None = None,
    limit: int | None = None,
    rows_per_chunk: int = 256,
    progress: Progress | None = None,
) -> ScoreReport:
    """Score pool samples not yet scored under the config's spec; commit every ~``rows_per_chunk`` samples.

    Work is split by ``bucket`` so each chunk is one Spark job whose output is MERGEd before the next starts:
    a crash loses at most one chunk of work and a re-run scores only what is missing. Samples that fail
    (empty completion after truncation, non-finite loss or gradient) go to ``quarantine`` (stage ``score``,
    source = spec_id, item_id = sample_id) and are not retried under the same spec.
    """
    from pyspark.sql import functions as F

    from prismatic.gradients.udf import SCORE_SCHEMA, make_score_fn

    spec = register_spec(store, settings)
    spark = store.spark
    pool = _pool_where(store, ["sample_id", "prompt", "completion", "task", "bucket"], where)
    total = pool.count()
    done = store.read("gradients").where(F.col("spec_id") == spec.spec_id).select("sample_id")
    failed = (
        store.read("quarantine")
        .where((F.col("stage") == "score") & (F.col("source") == spec.spec_id))
        .select(F.col("item_id").alias("sample_id"))
    )
    todo = pool.join(done, "sample_id", "left_anti").join(failed, "sample_id", "left_anti")
    if limit is not None:
        todo = todo.orderBy("sample_id").limit(limit)
    todo = todo.localCheckpoint()
    counts = {r["bucket"]: r["n"] for r in todo.groupBy("bucket").agg(F.count("*").alias("n")).collect()}
    report = ScoreReport(spec.spec_id, todo=sum(counts.values()))
    report.skipped = total - report.todo if limit is None else 0
    parallelism, slots = max(1, spark.sparkContext.defaultParallelism), task_slots(spark)
    from prismatic.upkeep import staging_dir

    stage_root = staging_dir(settings.root, "score")  # run-owned: a killed run's folder is swept later
    try:
        for chunk in _chunks_by_bucket(counts, rows_per_chunk):
            part = todo.where(F.col("bucket").isin(chunk))
            n = sum(counts[b] for b in chunk)
            parts = max(1, min(parallelism, n // max(1, settings.scoring.batch_size)))
            # fewer tasks than slots (a small chunk): each worker may use more of the cores
            fn = make_score_fn(settings.scoring, slots=min(slots, parts))
            out_dir = stage_root / f"chunk-{chunk[0]}"
            part.repartition(parts, "sample_id").sortWithinPartitions("sample_id").mapInPandas(
                fn, SCORE_SCHEMA
            ).write.mode("overwrite").parquet(str(out_dir))
            scored = spark.read.parquet(str(out_dir))
            good = scored.where(F.col("error").isNull()).drop("error").withColumn("created_at", F.current_timestamp())
            bad = scored.where(F.col("error").isNotNull())
            res = store.merge("gradients", good)
            report.scored += res.inserted
            bad_rows = bad.select("sample_id", "error", "n_tokens").collect()
            if bad_rows:
                q = [
                    {
                        "stage": "score",
                        "source": spec.spec_id,
                        "file": "",
                        "line": 0,
                        "item_id": r["sample_id"],
                        "reason": r["error"].split(":")[0],
                        "detail": f"{r['error']} (n_tokens={r['n_tokens']})",
                        "payload": "",
                        "batch_id": spec.spec_id,
                        "created_at": _now(),
                    }
                    for r in bad_rows
                ]
                store.merge("quarantine", pa.Table.from_pylist(q))
                report.quarantined += len(q)
                for row in q:
                    report.reasons[row["reason"]] = report.reasons.get(row["reason"], 0) + 1
            if res.inserted + len(bad_rows) != n:
                raise ConservationError(f"chunk of {n} samples gave {res.inserted} vectors + {len(bad_rows)} failures")
            shutil.rmtree(out_dir, ignore_errors=True)
            if progress is not None:
                progress(report.scored + report.quarantined, report.todo)
            log.info("scored chunk of %d (%d/%d)", n, report.scored + report.quarantined, report.todo)
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
    return report


# ---- diversity --------------------------------------------------------------------------------------------

GROUPABLE = ("source", "task", "round", "origin", "cluster")
EXACT_MAX_N = 500


def _pool_with_vectors(store: TableStore, spec_id: str, group_by: list[str]):
    from pyspark.sql import functions as F

    pool = store.pool().select("sample_id", "source", "task", "round", "origin", "prompt", "completion")
    grads = store.read("gradients").where(F.col("spec_id") == spec_id).select("sample_id", "spec_id", "vector")
    df = pool.join(grads, "sample_id")
    if "cluster" in group_by:
        asg = store.read("assignments")
        last = asg.agg(F.max("round")).collect()[0][0]
        if last is None:
            raise PrismError("--group-by cluster needs clusters", hint="run `prism cluster` first")
        # cluster ids are per (round, task): the group names both
        asg = asg.where(F.col("round") == last).select(
            "sample_id", F.concat_ws(":", "task", F.col("cluster_id").cast("string")).alias("cluster")
        )
        df = df.join(asg, "sample_id")
    return df.withColumn("text", F.concat_ws("\n", "prompt", "completion"))


def diversity_stage(
    store: TableStore,
    settings: Settings,
    group_by: list[str] | None = None,
    exact: bool = False,
    baselines: bool = True,
    embedding: bool = True,
):
    """G-Vendi (and baselines) of the scored pool, overall and per group -> MERGE into ``diversity``.

    Rows are keyed by (scope, group_key, metric, spec_id, samples_version): the same pool version gives the
    same rows, so re-running changes nothing; a grown pool adds rows under its new version.

    Returns:
        pandas DataFrame of the rows written (scope, group_key, metric, value, n, spec_id).
    """
    import pandas as pd

    from prismatic.diversity import diversity_report

    group_by = [g.strip() for g in (group_by or []) if g.strip()]
    bad = [g for g in group_by if g not in GROUPABLE]
    if bad:
        raise PrismError(f"--group-by {bad} not allowed; choose from {', '.join(GROUPABLE)}")
    spec = register_spec(store, settings)
    df = _pool_with_vectors(store, spec.spec_id, group_by).localCheckpoint()
    n = df.count()
    if n == 0:
        raise PrismError(f"no scored samples under spec {spec.spec_id}", hint="run `prism score` first")
    frames = []
    for cols in [None] + ([group_by] if group_by else []):
        frames.append(
            diversity_report(
                df,
                settings.diversity,
                cols,
                vector_col="vector",
                text_col="text" if baselines else None,
                spec_col="spec_id",
                embedding=embedding and baselines,
            )
        )
    rows = pd.concat(frames, ignore_index=True)
    if exact:
        rows = pd.concat([rows, exact_diversity(df, settings, spec)], ignore_index=True)
    version = store.version("samples")
    out = rows.rename(columns={"group": "group_key"}).assign(samples_version=version, created_at=_now())
    out["spec_id"] = out["spec_id"].fillna("")
    store.merge("diversity", pa.Table.from_pandas(out, preserve_index=False))
    return out[["scope", "group_key", "metric", "value", "n", "spec_id"]]


def exact_diversity(df, settings: Settings, spec) -> pd.DataFrame:  # noqa: F821
    """Exact G-Vendi (d = ∞: the N × N kernel of full per-sample gradients) for calibrating on small sets."""
    import pandas as pd

    from prismatic.gradients.exact import exact_gvendi
    from prismatic.gradients.udf import get_scorer

    rows = df.select("sample_id", "prompt", "completion").orderBy("sample_id").limit(EXACT_MAX_N + 1).collect()
    if len(rows) > EXACT_MAX_N:
        raise PrismError(
            f"--exact is for small sets (at most {EXACT_MAX_N} scored samples)",
            hint="pass --where / use a smaller pool to calibrate",
        )
    scorer = get_scorer(settings.scoring)
    encoded = [scorer.encode(r["prompt"], r["completion"]) for r in rows]
    encoded = [e for e in encoded if not e.error]
    res = exact_gvendi(scorer.loaded.model, encoded, settings.scoring.params)
    return pd.DataFrame(
        [
            {
                "scope": "all",
                "group": "all",
                "metric": "g_vendi_exact",
                "value": res.gvendi,
                "n": len(encoded),
                "spec_id": f"exact:{spec.weights_sha256[:16]}",
            }
        ]
    )


# ---- clustering -------------------------------------------------------------------------------------------


@dataclass
class ClusterReport:
    round: int
    k: int
    n: int
    sparse: int
    objective: float
    reused: bool
    spec_id: str = ""
    feature_space: str = "gradient"
    task: str = ""

    def summary(self) -> str:
        verb = "already clustered" if self.reused else "clustered"
        return (
            f"round {self.round} ({self.task}): {verb} {self.n} {self.feature_space} vectors (spec {self.spec_id})"
            f" into k={self.k} clusters, {self.sparse} sparse (objective {self.objective:.2f})"
        )


class TooFewToCluster(PrismError):
    """A task's pool is too small for the configured cluster floor (``cluster.k_min``)."""


def next_round(store: TableStore) -> int:
    """The round a new synthesis pass writes: one past the highest round in ``samples``."""
    from pyspark.sql import functions as F

    r = store.read("samples").agg(F.max("round")).collect()[0][0]
    return int(r or 0) + 1


def min_cluster_rows(settings: Settings) -> int:
    """Fewest pool rows a task needs to be clustered: two per cluster of the floor ``cluster.k_min``."""
    return 2 * settings.cluster.k_min


def cluster_stage(
    store: TableStore, settings: Settings, round: int | None = None, task: str | None = None
) -> ClusterReport:
    """Spherical k-means of one task's pool vectors (one spec) -> ``clusters`` + ``assignments`` of ``round``.

    Clustering is per task (default: the first of ``synth.tasks``): rows of other tasks never share a cluster, so
    the sparse rule compares a task's regions with each other only. ``cluster.feature_space`` picks the vectors:
    ``gradient`` (default) clusters the projected gradients of the scoring spec (score them first: ``prism
    score``); ``embedding`` clusters sentence embeddings of ``diversity.embedding_model``, computing the missing
    ones first (:func:`embed_stage`). The clusters rows carry the spec_id, whose ``projection_specs`` row says
    the kind. A (round, task) that already has clusters is not recomputed (idempotent), but only under the same
    spec: clusters of another feature space are an error, never mixed. The sparse flag marks clusters strictly
    below the size at ``cluster.sparse_quantile`` (the paper's rule, default the median).

    Raises:
        SpecMismatchError: ``round`` was clustered under another spec (another feature space or scoring config).
        TooFewToCluster: the task has fewer than ``2 * cluster.k_min`` rows with vectors.
    """
    from pyspark.sql import functions as F

    from prismatic.cluster import cluster_pool, sparse_clusters

    rnd = next_round(store) if round is None else int(round)
    task = task or settings.synth.task_list[0]
    if not IDENT_RE.match(task):
        raise PrismError(f"task {task!r} is not a task name (letters, digits, underscore)")
    space = settings.cluster.feature_space
    spec = register_feature_spec(store, settings)
    existing = store.read("clusters").where((F.col("round") == rnd) & (F.col("task") == task))
    if existing.limit(1).count():
        rows = existing.select("size", "sparse", "spec_id").collect()
        check_round_spec(rnd, {r["spec_id"] for r in rows}, spec.spec_id, space)
        n = sum(r["size"] for r in rows)
        return ClusterReport(
            rnd, len(rows), n, sum(bool(r["sparse"]) for r in rows), float("nan"), True, spec.spec_id, space, task
        )
    if space == "embedding":
        embed_stage(store, settings, where=f"task = '{task}'")
    df = (
        store.pool()
        .where(F.col("task") == task)
        .select("sample_id")
        .join(store.read("gradients").where(F.col("spec_id") == spec.spec_id), "sample_id")
        .select("sample_id", "vector")
    )
    n = df.count()
    need = min_cluster_rows(settings)
    if n < need:
        hint = (
            "run `prism score` first"
            if space == "gradient" and n == 0
            else (f"ingest more {task} rows or lower cluster.k_min (now {settings.cluster.k_min})")
        )
        raise TooFewToCluster(
            f"task {task}: {n} pool rows with {space} vectors (spec {spec.spec_id}), too few to"
            f" cluster (need >= {need} = 2 * cluster.k_min)",
            hint=hint,
        )
    res = cluster_pool(df, settings.cluster, n=n)
    sparse = set(int(i) for i in sparse_clusters(res.sizes, settings.cluster.sparse_quantile))
    clusters = res.clusters_arrow()
    for name, values, typ in (
        ("round", [rnd] * res.k, pa.int32()),
        ("task", [task] * res.k, pa.string()),
        ("spec_id", [spec.spec_id] * res.k, pa.string()),
        ("sparse", [i in sparse for i in range(res.k)], pa.bool_()),
        ("created_at", [_now()] * res.k, pa.timestamp("us", tz="UTC")),
    ):
        clusters = clusters.append_column(name, pa.array(values, typ))
    asg = res.assignments.select(
        F.lit(rnd).cast("int").alias("round"),
        F.lit(task).alias("task"),
        "sample_id",
        F.col("cluster_id").cast("int"),
        F.col("cosine").cast("double"),
        F.current_timestamp().alias("created_at"),
    )
    store.merge("assignments", asg)
    store.merge("clusters", clusters)  # last: its presence marks the (round, task) as clustered
    return ClusterReport(rnd, res.k, n, len(sparse), float(res.objective), False, spec.spec_id, space, task)


def cluster_tasks(
    store: TableStore, settings: Settings, round: int | None = None, tasks: list[str] | None = None
) -> list[ClusterReport]:
    """:func:`cluster_stage` for each task (default ``synth.tasks``), one clustering per task."""
    return [cluster_stage(store, settings, round=round, task=t) for t in (tasks or settings.synth.task_list)]


def check_round_spec(rnd: int, found: set[str | None], spec_id: str, feature_space: str) -> None:
    """Clusters of round ``rnd`` must all be under ``spec_id``; else raise :class:`SpecMismatchError`."""
    from prismatic.errors import SpecMismatchError

    if found != {spec_id}:
        shown = ", ".join(sorted(str(s) for s in found))
        raise SpecMismatchError(
            f"round {rnd} was clustered under spec {shown}, but cluster.feature_space={feature_space} asks for"
            f" spec {spec_id}: vectors of two specs are never compared",
            hint="run with the feature space (and scoring / embedding config) that clustered this round, or use"
            " another data_root for the other feature space",
        )
