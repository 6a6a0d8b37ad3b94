"""SparkSession: the active one (Databricks, or a caller's) if there is one, else a local[*] session."""

from __future__ import annotations

import logging
import os
import sys

from prismatic.config import SparkConfig, resource_path

log = logging.getLogger(__name__)


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(cfg: SparkConfig | None = None):
    """Return the active SparkSession, or build a local one with settings from ``cfg``.

    Local sessions bind to 127.0.0.1 (no network is needed), use Arrow for pandas conversion and run
    Python workers on this interpreter, so the UDFs see the same packages as the driver.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if on_databricks():  # a Python-file task: the cluster's session, with the cluster's settings
        return SparkSession.builder.getOrCreate()
    cfg = cfg or SparkConfig()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_rows))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.adaptive.enabled", "true")
    )
    log4j = resource_path("conf/log4j2.properties").resolve()
    if log4j.exists():
        builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile={log4j.as_uri()}")
    for k, v in cfg.extra.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    log.info("started local Spark %s (%s)", spark.version, cfg.master)
    return spark


def task_slots(spark) -> int:
    """How many tasks one executor (the local JVM in local mode) runs at once: each is one Python worker.

    ``spark.executor.cores / spark.task.cpus`` on a cluster; the local master's thread count (``local[4]``;
    ``local[*]`` = the default parallelism) in local mode.
    """
    conf = spark.sparkContext.getConf()
    task_cpus = max(1, int(conf.get("spark.task.cpus", "1")))
    master = spark.sparkContext.master or ""
    if master.startswith("local"):
        inside = master[master.find("[") + 1 : master.find("]")] if "[" in master else "1"
        cores = int(inside.split(",")[0]) if inside.split(",")[0].isdigit() else spark.sparkContext.defaultParallelism
    else:
        cores = int(conf.get("spark.executor.cores", "0") or 0) or (os.cpu_count() or 1)
    return max(1, cores // task_cpus)


def worker_cpu_threads(slots: int) -> int:
    """Intra-op threads for torch in one of ``slots`` Python workers sharing this machine's cores.

    Each concurrent task's worker would otherwise start one OpenMP thread per core, oversubscribing the
    cores ``slots`` times over. ``PRISM_TORCH_THREADS`` overrides.
    """
    env = os.environ.get("PRISM_TORCH_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(1, slots))


def session_has_delta(spark) -> bool:
    """True when the session can read and write ``format('delta')`` natively (Databricks, delta-spark jars)."""
    if on_databricks():
        return True
    try:
        exts = spark.conf.get("spark.sql.extensions", "") or ""
    except Exception:  # noqa: BLE001 - a session without that conf
        exts = ""
    return "io.delta.sql.DeltaSparkSessionExtension" in exts
