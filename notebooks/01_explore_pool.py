# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Explore the pool
# MAGIC
# MAGIC How big the pool is by source, round and task, and how diverse it is: the `diversity` table (G-Vendi and the
# MAGIC baselines) by source and round, as the Diversity task wrote it.
# MAGIC
# MAGIC Parameters (widgets on Databricks; run as plain Python: env `PRISM_NB_<NAME>` or the default):
# MAGIC * `config`: YAML config (Databricks: `../conf/databricks.yaml`; locally: `conf/default.yaml`)
# MAGIC * `catalog`, `schema`: Unity Catalog location of the tables (empty: the config's `storage` section)
# MAGIC * `group_by`: diversity scope to show (default `source,round`, the pipeline job's `--group-by`)
# MAGIC
# MAGIC Locally the tables are the Delta folders under `PRISM_DATA_ROOT` (default `./lakehouse`):
# MAGIC `python notebooks/01_explore_pool.py`. Set `PRISM_NB_FIGURES=<folder>` to save the plots as PNG.

# COMMAND ----------

# MAGIC %pip install --quiet ..

# COMMAND ----------

if "dbutils" in globals():  # Databricks: load the package that the cell above installed
    dbutils.library.restartPython()  # noqa: F821

# COMMAND ----------

import os
from pathlib import Path

import matplotlib

if "dbutils" not in globals() and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # plain Python run: no display needed
import matplotlib.pyplot as plt
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from prismatic.config import load_config
from prismatic.spark import get_spark, on_databricks
from prismatic.tables import open_store


def param(name: str, default: str) -> str:
    """A text widget on Databricks; run as plain Python, the env var PRISM_NB_<NAME> or the default."""
    if "dbutils" in globals():
        dbutils.widgets.text(name, default)  # noqa: F821
        return dbutils.widgets.get(name).strip()  # noqa: F821
    return os.environ.get(f"PRISM_NB_{name.upper()}", default).strip()


def show(df, n: int = 50) -> None:
    """Databricks display(), else a plain text table."""
    if "dbutils" in globals():
        display(df)  # noqa: F821
    else:
        df.show(n, truncate=80)


def show_figure(fig, name: str) -> None:
    """Databricks display(), else a PNG under PRISM_NB_FIGURES (when set)."""
    if "dbutils" in globals():
        display(fig)  # noqa: F821
    elif os.environ.get("PRISM_NB_FIGURES"):
        out = Path(os.environ["PRISM_NB_FIGURES"])
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"{name}.png", dpi=80, bbox_inches="tight")
        print(f"figure saved: {out / f'{name}.png'}")
    plt.close(fig)


CONFIG = param("config", "../conf/databricks.yaml" if on_databricks() else "")
CATALOG = param("catalog", "")
SCHEMA = param("schema", "")
GROUP_BY = param("group_by", "source,round")

overrides = ([f"storage.catalog={CATALOG}"] if CATALOG else []) + ([f"storage.schema_name={SCHEMA}"] if SCHEMA else [])
settings = load_config(CONFIG or None, overrides)
spark = get_spark(settings.spark)
store = open_store(settings, spark)
where = store.qualified("samples") if store.engine == "delta-spark" else str(settings.root / "tables")
print(f"tables: {store.engine} engine, {where}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Pool size by source, round and task
# MAGIC The pool is `samples` minus the rows that dedup recorded in `duplicates`.

# COMMAND ----------

HAVE_POOL = store.exists("samples")
if not HAVE_POOL:
    print(f"No `samples` table yet under {where}: run the pipeline first (`prism run`, or the bundle's pipeline job).")
else:
    sizes = (
        store.pool()
        .groupBy("source", "round", "task")
        .agg(
            F.count(F.lit(1)).alias("samples"),
            F.sum((F.col("origin") == "synthetic").cast("int")).alias("synthetic"),
        )
        .orderBy("source", "round", "task")
    )
    sizes_pd = sizes.toPandas()
    if sizes_pd.empty:
        HAVE_POOL = False
        print("The pool is empty: every sample is a duplicate, or nothing was ingested yet.")
    else:
        print(f"pool: {int(sizes_pd['samples'].sum())} samples from {sizes_pd['source'].nunique()} sources")
        show(sizes)

# COMMAND ----------

if HAVE_POOL:
    by_round = sizes_pd.pivot_table(index="source", columns="round", values="samples", aggfunc="sum", fill_value=0)
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.5 * len(by_round)))
    by_round.plot.barh(stacked=True, ax=ax)
    ax.set_xlabel("samples in the pool")
    ax.set_title("Pool size by source (stacked by round)")
    ax.legend(title="round")
    show_figure(fig, "pool_by_source_round")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Diversity by source and round
# MAGIC One row per group and projection spec, the latest measurement (highest `samples` version) of each metric:
# MAGIC `g_vendi` (gradient Vendi, the paper's metric), `g_mean_cosine`, `emb_vendi`, `ngram_entropy_2`, `distinct_2`.

# COMMAND ----------

HAVE_DIVERSITY = store.exists("diversity")
if not HAVE_DIVERSITY:
    print("No `diversity` table yet: run the Score and Diversity tasks (`prism score`, `prism diversity`).")
else:
    div = store.read("diversity").where(F.col("scope") == GROUP_BY)
    latest = Window.partitionBy("group_key", "metric", "spec_id").orderBy(
        F.col("samples_version").desc(), F.col("created_at").desc()
    )
    cols = [c.strip() for c in GROUP_BY.split(",")]
    parts = F.split(F.col("group_key"), "/")
    table = (
        div.withColumn("_rk", F.row_number().over(latest))
        .where("_rk = 1")
        .select(*[parts.getItem(i).alias(c) for i, c in enumerate(cols)], "spec_id", "metric", "value", "n")
        .groupBy(*cols, "spec_id")
        .pivot("metric")
        .agg(F.first("value"))
        .orderBy(*cols)
    )
    div_pd = table.toPandas()
    if div_pd.empty:
        HAVE_DIVERSITY = False
        print(f"The diversity table has no rows with scope {GROUP_BY!r} (scopes are the --group-by columns).")
    else:
        show(table)

# COMMAND ----------

if HAVE_DIVERSITY and "g_vendi" in div_pd.columns and {"source", "round"} <= set(div_pd.columns):
    fig, ax = plt.subplots(figsize=(7, 4))
    for (source, spec), grp in div_pd.dropna(subset=["g_vendi"]).groupby(["source", "spec_id"]):
        grp = grp.assign(round=grp["round"].astype(int)).sort_values("round")
        ax.plot(grp["round"], grp["g_vendi"], marker="o", label=f"{source} ({str(spec)[:8]})")
    ax.set_xlabel("round")
    ax.set_ylabel("G-Vendi")
    ax.set_title("G-Vendi by source and round")
    ax.legend(fontsize="small")
    show_figure(fig, "gvendi_by_source_round")
