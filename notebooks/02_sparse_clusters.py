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
ROUND = param("round", "")
N_CLUSTERS = int(param("clusters", "5"))
N_EXAMPLES = int(param("examples", "3"))
if N_CLUSTERS < 1 or N_EXAMPLES < 1:
    raise ValueError(f"clusters and examples must be at least 1 (got clusters={N_CLUSTERS}, examples={N_EXAMPLES})")

overrides = ([f"storage.catalog={CATALOG}"] if CATALOG else []) + ([f"storage.schema_name={SCHEMA}"] if SCHEMA else [])
settings = load_config(CONFIG or None, overrides)
spark = get_spark(settings.spark)
store = open_store(settings, spark)
where = store.qualified("clusters") if store.engine == "delta-spark" else str(settings.root / "tables")
print(f"tables: {store.engine} engine, {where}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Clusters of the round, by size

# COMMAND ----------

HAVE_CLUSTERS = store.exists("clusters")
if not HAVE_CLUSTERS:
    print(f"No `clusters` table yet under {where}: run the Cluster task (`prism cluster`) first.")
else:
    clusters = store.read("clusters").select("round", "cluster_id", "size", "sparse", "spec_id")
    if ROUND:
        the_round = int(ROUND)
    else:
        the_round = clusters.agg(F.max("round")).first()[0]
    if the_round is None:
        HAVE_CLUSTERS = False
        print("The clusters table is empty.")
    else:
        clusters = clusters.where(F.col("round") == the_round).orderBy("size", "cluster_id")
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
            show(clusters)

# COMMAND ----------

if HAVE_CLUSTERS:
    ranked = sizes_pd.reset_index(drop=True)
    colors = ["tab:orange" if s else "tab:blue" for s in ranked["sparse"].fillna(False).astype(bool)]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(ranked)), ranked["size"], color=colors)
    ax.set_xlabel("clusters, smallest first")
    ax.set_ylabel("samples")
    ax.set_title(f"Cluster sizes, round {the_round} (orange: sparse)")
    show_figure(fig, "cluster_sizes")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The sparsest clusters with example samples

# COMMAND ----------

if HAVE_CLUSTERS:
    if not store.exists("assignments"):
        print("No `assignments` table yet: the Cluster task writes it next to `clusters`.")
    else:
        sparsest = clusters.limit(N_CLUSTERS)
        closest = Window.partitionBy("cluster_id").orderBy(F.col("cosine").desc(), F.col("sample_id"))
        examples = (
            store.read("assignments")
            .where(F.col("round") == the_round)
            .join(sparsest.select("cluster_id", "size"), "cluster_id")
            .join(store.read("samples").select("sample_id", "source", "origin", "prompt", "completion"), "sample_id")
            .withColumn("example", F.row_number().over(closest))
            .where(F.col("example") <= N_EXAMPLES)
            .select(
                "cluster_id", "size", "example", F.round("cosine", 4).alias("cosine"), "source", "origin",
                F.substring("prompt", 1, 300).alias("prompt"), F.substring("completion", 1, 200).alias("completion"),
            )
            .orderBy("size", "cluster_id", "example")
        )
        examples_pd = examples.toPandas()
        if examples_pd.empty:
            print(f"No assigned samples for the sparsest clusters of round {the_round}.")
        elif "dbutils" in globals():
            display(examples)  # noqa: F821
        else:
            for cid, grp in examples_pd.groupby("cluster_id", sort=False):
                print(f"\ncluster {cid} ({int(grp['size'].iloc[0])} samples)")
                for row in grp.itertuples():
                    print(f"  #{row.example} cos={row.cosine:.3f} [{row.source}/{row.origin}] {row.prompt}")
