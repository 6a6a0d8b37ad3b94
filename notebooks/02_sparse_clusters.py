# Databricks notebook source
# MAGIC %md
# MAGIC # 02 · Sparse clusters
# MAGIC
# MAGIC The spherical k-means clusters of the pool's gradients (`clusters`, `assignments`), by size. Synthesis draws
# MAGIC its few-shot exemplars from the *sparse* clusters (smaller than the configured size quantile, the median by
# MAGIC default): the regions of gradient space the pool covers least. Below, the sparsest clusters with example
# MAGIC samples (`assignments` joined with `samples`, closest to the centroid first).
# MAGIC
# MAGIC Parameters (widgets on Databricks; run as plain Python: env `PRISM_NB_<NAME>` or the default):
# MAGIC * `config`, `catalog`, `schema`: as in 01_explore_pool
# MAGIC * `round`: clustering round to inspect (empty: the latest)
# MAGIC * `clusters`: how many of the sparsest clusters to show (default 5)
# MAGIC * `examples`: samples shown per cluster (default 3)

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

nb = Notebook(globals())
ROUND = nb.param("round", "")
N_CLUSTERS = int(nb.param("clusters", "5"))
N_EXAMPLES = int(nb.param("examples", "3"))
if N_CLUSTERS < 1 or N_EXAMPLES < 1:
    raise ValueError(f"clusters and examples must be at least 1 (got clusters={N_CLUSTERS}, examples={N_EXAMPLES})")
settings, spark, store = nb.open()
where = tables_location(settings, store, "clusters")
print(f"tables: {store.engine} engine, {where}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Clusters of the round, by size

# COMMAND ----------

HAVE_CLUSTERS = store.exists("clusters")
if not HAVE_CLUSTERS:
    print(f"No `clusters` table yet under {where}: run the Cluster task (`prism cluster`) first.")
else:
    clusters = store.read("clusters").select("round", "task", "cluster_id", "size", "sparse", "spec_id")
    if ROUND:
        the_round = int(ROUND)
    else:
        the_round = clusters.agg(F.max("round")).first()[0]
    if the_round is None:
        HAVE_CLUSTERS = False
        print("The clusters table is empty.")
    else:
        clusters = clusters.where(F.col("round") == the_round).orderBy("size", "task", "cluster_id")
        sizes_pd = clusters.toPandas()
        if sizes_pd.empty:
            HAVE_CLUSTERS = False
            print(f"No clusters in round {the_round}.")
        else:
            n_sparse = int(sizes_pd["sparse"].fillna(False).astype(bool).sum())
            print(
                f"round {the_round}: {len(sizes_pd)} clusters, {n_sparse} sparse, "
                f"sizes {int(sizes_pd['size'].min())}..{int(sizes_pd['size'].max())} "
                f"(median {float(sizes_pd['size'].median()):g})"
            )
            nb.show(clusters)

# COMMAND ----------

if HAVE_CLUSTERS:
    ranked = sizes_pd.reset_index(drop=True)
    colors = ["tab:orange" if s else "tab:blue" for s in ranked["sparse"].fillna(False).astype(bool)]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(ranked)), ranked["size"], color=colors)
    ax.set_xlabel("clusters, smallest first")
    ax.set_ylabel("samples")
    ax.set_title(f"Cluster sizes, round {the_round} (orange: sparse)")
    nb.show_figure(fig, "cluster_sizes")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The sparsest clusters with example samples

# COMMAND ----------

if HAVE_CLUSTERS:
    if not store.exists("assignments"):
        print("No `assignments` table yet: the Cluster task writes it next to `clusters`.")
    else:
        sparsest = clusters.limit(N_CLUSTERS)
        closest = Window.partitionBy("task", "cluster_id").orderBy(F.col("cosine").desc(), F.col("sample_id"))
        examples = (
            store.read("assignments")
            .where(F.col("round") == the_round)
            .join(sparsest.select("task", "cluster_id", "size"), ["task", "cluster_id"])  # cluster ids are per task
            .join(store.read("samples").select("sample_id", "source", "origin", "prompt", "completion"), "sample_id")
            .withColumn("example", F.row_number().over(closest))
            .where(F.col("example") <= N_EXAMPLES)
            .select(
                "task",
                "cluster_id",
                "size",
                "example",
                F.round("cosine", 4).alias("cosine"),
                "source",
                "origin",
                F.substring("prompt", 1, 300).alias("prompt"),
                F.substring("completion", 1, 200).alias("completion"),
            )
            .orderBy("size", "task", "cluster_id", "example")
        )
        examples_pd = examples.toPandas()
        if examples_pd.empty:
            print(f"No assigned samples for the sparsest clusters of round {the_round}.")
        elif "dbutils" in globals():
            display(examples)  # noqa: F821
        else:
            for (task, cid), grp in examples_pd.groupby(["task", "cluster_id"], sort=False):
                print(f"\n{task} cluster {cid} ({int(grp['size'].iloc[0])} samples)")
                for row in grp.itertuples():
                    print(f"  #{row.example} cos={row.cosine:.3f} [{row.source}/{row.origin}] {row.prompt}")
