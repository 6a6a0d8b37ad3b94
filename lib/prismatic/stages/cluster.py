"""Stage cluster: spherical k-means of each task's pool vectors -> ``clusters``, ``assignments``.

Clustering is per task (default: each of ``synth.tasks``): rows of other tasks never share a cluster, so the
sparse rule compares a task's regions with each other only. ``cluster.feature_space`` picks the vectors:
``gradient`` (default) clusters the projected gradients of the scoring spec (score them first: ``prism score``);
``embedding`` clusters sentence embeddings of ``diversity.embedding_model``, computing the missing ones first. The
clusters rows carry the spec_id, whose ``projection_specs`` row says the kind. A (round, task) that already has
clusters is not recomputed (idempotent), but only under the same spec: clusters of another feature space are an
error, never mixed. The sparse flag marks clusters strictly below the size at ``cluster.sparse_quantile`` (the
paper's rule, default the median).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from prismatic.config import IDENTIFIER_RE, ClusterConfig
from prismatic.errors import PrismError
from prismatic.stages.base import Context, Option, ReportRows, Stage
from prismatic.stages.common import PoolFilter, now
from prismatic.tables import TableStore


@dataclass
class ClusterReport(ReportRows):
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


@dataclass
class ClusterReports:
    """One :class:`ClusterReport` per task clustered."""

    tasks: list[ClusterReport]

    def summary(self) -> str:
        return "\n".join(r.summary() for r in self.tasks)

    def rows(self) -> list[dict]:
        return [row for r in self.tasks for row in r.rows()]


class TooFewToCluster(PrismError):
    """A task's pool is too small for the configured cluster floor (``cluster.k_min``)."""


def next_round(store: TableStore) -> int:
    """The round a new synthesis pass writes: one past the highest round in ``samples``."""
    from pyspark.sql import functions as F

    r = store.read("samples").agg(F.max("round")).collect()[0][0]
    return int(r or 0) + 1


def min_cluster_rows(cfg: ClusterConfig) -> int:
    """Fewest pool rows a task needs to be clustered: two per cluster of the floor ``cluster.k_min``."""
    return 2 * cfg.k_min


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


def _reused(ctx: Context, rnd: int, task: str, spec_id: str) -> ClusterReport | None:
    """The report of a (round, task) already clustered (under ``spec_id``, else SpecMismatchError), or None."""
    from pyspark.sql import functions as F

    space = ctx.settings.cluster.feature_space
    existing = ctx.store.read("clusters").where((F.col("round") == rnd) & (F.col("task") == task))
    if not existing.limit(1).count():
        return None
    rows = existing.select("size", "sparse", "spec_id").collect()
    check_round_spec(rnd, {r["spec_id"] for r in rows}, spec_id, space)
    n = sum(r["size"] for r in rows)
    sparse = sum(bool(r["sparse"]) for r in rows)
    return ClusterReport(rnd, len(rows), n, sparse, float("nan"), True, spec_id, space, task)


def _task_vectors(ctx: Context, task: str, spec_id: str):
    """(sample_id, vector) of the task's pool under ``spec_id`` and their count; TooFewToCluster below the floor."""
    from pyspark.sql import functions as F

    store, cfg = ctx.store, ctx.settings.cluster
    grads = store.read("gradients").where(F.col("spec_id") == spec_id)
    df = PoolFilter(task=task).apply(store.pool()).select("sample_id").join(grads, "sample_id")
    df = df.select("sample_id", "vector")
    n = df.count()
    need = min_cluster_rows(cfg)
    if n < need:
        space = cfg.feature_space
        hint = (
            "run `prism score` first"
            if space == "gradient" and n == 0
            else (f"ingest more {task} rows or lower cluster.k_min (now {cfg.k_min})")
        )
        raise TooFewToCluster(
            f"task {task}: {n} pool rows with {space} vectors (spec {spec_id}), too few to"
            f" cluster (need >= {need} = 2 * cluster.k_min)",
            hint=hint,
        )
    return df, n


def cluster_task(ctx: Context, round: int | None = None, task: str | None = None) -> ClusterReport:
    """Spherical k-means of one task's pool vectors (``ctx.feature_spec()``) -> ``clusters`` + ``assignments`` of
    ``round`` (default: the next round; task default: the first of ``synth.tasks``).

    Raises:
        SpecMismatchError: ``round`` was clustered under another spec (another feature space or scoring config).
        TooFewToCluster: the task has fewer than ``2 * cluster.k_min`` rows with vectors.
    """
    from pyspark.sql import functions as F

    from prismatic.cluster import cluster_pool, sparse_clusters

    store, cfg = ctx.store, ctx.settings.cluster
    rnd = next_round(store) if round is None else int(round)
    task = task or ctx.settings.synth.task_list[0]
    if not IDENTIFIER_RE.match(task):
        raise PrismError(f"task {task!r} is not a task name (letters, digits, underscore)")
    spec = ctx.feature_spec()
    done = _reused(ctx, rnd, task, spec.spec_id)
    if done is not None:
        return done
    if cfg.feature_space == "embedding":
        from prismatic.stages.embed import embed_pool

        embed_pool(ctx, PoolFilter(task=task))
    df, n = _task_vectors(ctx, task, spec.spec_id)
    res = cluster_pool(df, cfg, n=n)
    sparse = set(int(i) for i in sparse_clusters(res.sizes, cfg.sparse_quantile))
    clusters = res.clusters_arrow()
    for name, values, typ in (
        ("round", [rnd] * res.k, pa.int32()),
        ("task", [task] * res.k, pa.string()),
        ("spec_id", [spec.spec_id] * res.k, pa.string()),
        ("sparse", [i in sparse for i in range(res.k)], pa.bool_()),
        ("created_at", [now()] * res.k, pa.timestamp("us", tz="UTC")),
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
    return ClusterReport(
        rnd, res.k, n, len(sparse), float(res.objective), False, spec.spec_id, cfg.feature_space, task
    )


def cluster_tasks(ctx: Context, round: int | None = None, tasks: list[str] | None = None) -> ClusterReports:
    """:func:`cluster_task` for each task (default ``synth.tasks``), one clustering per task."""
    return ClusterReports([cluster_task(ctx, round=round, task=t) for t in (tasks or ctx.settings.synth.task_list)])


class ClusterStage(Stage):
    name = "cluster"
    help = (
        "Spherical k-means of each task's pool -> `clusters`, `assignments`; marks the sparse clusters."
        " Clusters gradients (the scoring spec) by default, or MiniLM embeddings with"
        " `--set cluster.feature_space=embedding` (the missing embeddings are computed first)."
    )
    section = "cluster"
    reads = ("samples", "duplicates", "gradients", "clusters")
    writes = ("projection_specs", "clusters", "assignments")
    options = (
        Option("round", kind=int, help="round to cluster for (default: the next one)"),
        Option("task", multiple=True, help="task(s) to cluster, each on its own (default synth.tasks)"),
    )

    def run(self, ctx: Context, *, round, task) -> ClusterReports:
        return cluster_tasks(ctx, round=round, tasks=list(task or []) or None)
