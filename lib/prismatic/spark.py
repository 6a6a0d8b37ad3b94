"""SparkSession: the active one (Databricks, or a caller's) if there is one, else a local[*] session.

A local session is quiet unless asked (``debug``): the JVM logs through ``conf/log4j2.properties`` (errors only,
and not the task-failure stacks that Spark logs before it raises the same error to Python), and PySpark's own
loggers that print a query's error as a JSON record are silenced, so a failed query is the one line the CLI
prints. With ``debug`` the JVM keeps Spark's default logging and PySpark's loggers stay on.
"""

from __future__ import annotations

import logging
import os
import sys

from prismatic.config import SparkConfig, resource_path
from prismatic.errors import PrismError, first_line

log = logging.getLogger(__name__)

# PySpark logs every analysis / runtime error of a query as a JSON record (with the JVM stack) before raising it
PYSPARK_ERROR_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")
PY4J_LOGGERS = ("py4j", "py4j.java_gateway", "py4j.clientserver")
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def quiet_python_loggers(debug: bool = False) -> None:
    """Silence PySpark's JSON error records and py4j's connection chatter (``debug``: leave them on)."""
    from pyspark.logger import PySparkLogger

    for name in PYSPARK_ERROR_LOGGERS:  # created as PySparkLogger: PySpark calls them with extra keywords
        PySparkLogger.getLogger(name).disabled = not debug
    for name in PY4J_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if debug else logging.CRITICAL)


def get_spark(cfg: SparkConfig | None = None, debug: bool = False):
    """Return the active SparkSession, or build a local one with settings from ``cfg``.

    Local sessions bind to 127.0.0.1 (no network is needed), use Arrow for pandas conversion and run
    Python workers on this interpreter, so the UDFs see the same packages as the driver.

    Args:
        cfg: the ``spark`` config section (validated: master and driver memory are checked in config.py).
        debug: keep Spark's default JVM logging and PySpark's error records (``prism --debug``).

    Raises:
        PrismError: the local JVM did not start (one line; ``debug`` shows its output).
    """
    from pyspark.sql import SparkSession

    quiet_python_loggers(debug)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if on_databricks():  # a Python-file task: the cluster's session, with the cluster's settings
        return SparkSession.builder.getOrCreate()
    cfg = cfg or SparkConfig()
    try:
        spark = _local_builder(cfg, debug).getOrCreate()
    except Exception as e:  # noqa: BLE001 - JAVA_GATEWAY_EXITED, no java on PATH, a port in use: one line
        raise PrismError(
            f"local Spark did not start (master {cfg.master}, driver memory {cfg.driver_memory}): {first_line(e)}",
            hint="check the spark.* settings and that Java 17 or 21 is installed (java -version); --debug shows"
            " the JVM's output",
        ) from e
    spark.sparkContext.setLogLevel("WARN" if debug else "ERROR")
    log.info("started local Spark %s (%s)", spark.version, cfg.master)
    return spark


def _local_builder(cfg: SparkConfig, debug: bool):
    from pyspark.sql import SparkSession

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
    if log4j.exists() and not debug:
        builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile={log4j.as_uri()}")
    for k, v in cfg.extra.items():
        builder = builder.config(k, v)
    return builder


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
    return DELTA_EXTENSION in exts


def require_delta(spark) -> None:
    """Raise one clear error when ``storage.engine: delta-spark`` meets a session without Delta Lake."""
    if spark is not None and not session_has_delta(spark):
        raise PrismError(
            f"storage.engine is delta-spark but this Spark session has no Delta Lake ({DELTA_EXTENSION} is not in"
            " spark.sql.extensions)",
            hint="use storage.engine=auto or delta-rs here (the embedded default), or start Spark with the Delta"
            " jars (pip install delta-spark; configure_spark_with_delta_pip needs Maven)",
        )
