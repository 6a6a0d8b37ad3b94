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

from pyspark.sql import functions as F
from pyspark.sql.window import Window

from prismatic.notebook import Notebook, tables_location, use_headless_matplotlib

use_headless_matplotlib(globals())
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

nb = Notebook(globals())
GROUP_BY = nb.param("group_by", "source,round")
settings, spark, store = nb.open()
where = tables_location(settings, store, "samples")
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
        nb.show(sizes)

# COMMAND ----------

if HAVE_POOL:
    by_round = sizes_pd.pivot_table(index="source", columns="round", values="samples", aggfunc="sum", fill_value=0)
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.5 * len(by_round)))
    by_round.plot.barh(stacked=True, ax=ax)
    ax.set_xlabel("samples in the pool")
    ax.set_title("Pool size by source (stacked by round)")
    ax.legend(title="round")
    nb.show_figure(fig, "pool_by_source_round")

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
        nb.show(table)

# COMMAND ----------

if HAVE_DIVERSITY and "g_vendi" in div_pd.columns and {"source", "round"} <= set(div_pd.columns):
    fig, ax = plt.subplots(figsize=(7, 4))
    for (source, spec), grp in div_pd.dropna(subset=["g_vendi"]).groupby(["source", "spec_id"]):
        grp = grp.assign(round=grp["round"].astype(int)).sort_values("round")
        ax.plot(grp["round"], grp["g_vendi"], marker="o", label=f"{source} ({str(spec)[:8]})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_xlabel("round")
    ax.set_ylabel("G-Vendi")
    ax.set_title("G-Vendi by source and round")
    ax.legend(fontsize="small")
    nb.show_figure(fig, "gvendi_by_source_round")
