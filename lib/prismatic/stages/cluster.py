"""Stage cluster: spherical k-means of each task's pool vectors -> ``clusters``, ``assignments``."""

from __future__ import annotations

from prismatic.stages.base import Context, Option, Stage


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

    def run(self, ctx: Context, *, round, task):
        from prismatic.stages._core import cluster_tasks

        return cluster_tasks(ctx.store, ctx.settings, round=round, tasks=list(task) or None)
