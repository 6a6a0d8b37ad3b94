"""Compute of the bundle's jobs, chosen by bundle variables (databricks.yml ``python.mutators`` runs this at
``databricks bundle validate / deploy``; it needs ``pip install databricks-bundles`` in the bundle's venv).

* ``cpu_compute``: ``serverless`` (default) runs the CPU tasks (Ingest, Dedup, Diversity, Cluster) on serverless jobs
  compute, each in the ``cpu_env`` environment that installs the project's wheel, and drops the CPU job clusters;
  ``classic`` keeps them on the CPU job clusters of the YAML (cpu_pre_cluster, cpu_post_cluster).
* ``cloud``: ``aws`` | ``azure`` | ``gcp``; a node type variable set to ``auto`` (the default) becomes that cloud's
  node type from :data:`NODE_TYPES`; any other value is used as it is.

The GPU tasks always run on the single-node GPU job cluster (serverless jobs compute has no GPU).
"""

from __future__ import annotations

from dataclasses import replace

from databricks.bundles.core import Bundle, Variable, job_mutator
from databricks.bundles.jobs import Environment, Job, JobEnvironment

CPU_CLUSTERS = ("cpu_pre_cluster", "cpu_post_cluster")
GPU_CLUSTER = "gpu_cluster"
SERVERLESS_ENV = "cpu_env"
SERVERLESS_VERSION = "4"  # serverless environment version (Python 3.12)
WHEEL = "../dist/*.whl"  # relative to this file, as in the YAML
NODE_TYPES = {
    "aws": {"cpu": "i3.xlarge", "gpu": "g5.xlarge"},  # A10G 24 GB
    "azure": {"cpu": "Standard_D4ds_v5", "gpu": "Standard_NV36ads_A10_v5"},  # A10 24 GB
    "gcp": {"cpu": "n2-highmem-4", "gpu": "g2-standard-8"},  # L4 24 GB
}


def _var(bundle: Bundle, name: str) -> str:
    return str(bundle.resolve_variable(Variable(path=f"var.{name}", type=str)))


def node_type(bundle: Bundle, value, kind: str) -> str:
    """A cluster's node_type_id: ``auto`` -> the node type of ``var.cloud`` for ``kind`` (cpu | gpu)."""
    resolved = str(bundle.resolve_variable(value))
    if resolved != "auto":
        return resolved
    cloud = _var(bundle, "cloud")
    if cloud not in NODE_TYPES:
        raise ValueError(f"var.cloud is {cloud!r}; one of {', '.join(NODE_TYPES)}")
    return NODE_TYPES[cloud][kind]


@job_mutator
def compute(bundle: Bundle, job: Job) -> Job:
    mode = _var(bundle, "cpu_compute")
    if mode not in ("serverless", "classic"):
        raise ValueError(f"var.cpu_compute is {mode!r}; serverless or classic")
    clusters = []
    for c in job.job_clusters:
        kind = "gpu" if c.job_cluster_key == GPU_CLUSTER else "cpu"
        if kind == "cpu" and mode == "serverless":
            continue
        node = node_type(bundle, c.new_cluster.node_type_id, kind)
        clusters.append(replace(c, new_cluster=replace(c.new_cluster, node_type_id=node)))
    if mode == "classic":
        return replace(job, job_clusters=clusters)
    tasks = [
        replace(t, job_cluster_key=None, environment_key=SERVERLESS_ENV, libraries=[])
        if t.job_cluster_key in CPU_CLUSTERS
        else t
        for t in job.tasks
    ]
    if tasks == job.tasks:
        return replace(job, job_clusters=clusters)
    env = JobEnvironment(
        environment_key=SERVERLESS_ENV,
        spec=Environment(environment_version=SERVERLESS_VERSION, dependencies=[WHEEL]),
    )
    return replace(job, job_clusters=clusters, tasks=tasks, environments=[*job.environments, env])
