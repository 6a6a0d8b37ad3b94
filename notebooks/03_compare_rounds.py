# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Compare rounds and studies
# MAGIC
# MAGIC Does more gradient diversity give a better out-of-distribution student? Every synthesis round and every study
# MAGIC subset is an MLflow run (the experiment of the config's `tracking.experiment`; on Databricks the bundle's
# MAGIC experiment). This notebook puts them side by side: G-Vendi of the training data against the student's OOD
# MAGIC accuracy, then the accuracies per benchmark from `eval_results` and the per-subset values of the `study` table.
# MAGIC
# MAGIC Parameters (widgets on Databricks; run as plain Python: env `PRISM_NB_<NAME>` or the default):
# MAGIC * `config`, `catalog`, `schema`: as in 01_explore_pool
# MAGIC * `experiment`: MLflow experiment (empty: the config's `tracking.experiment`)
# MAGIC * `x_metric`: diversity metric logged on the runs (default `g_vendi`)
# MAGIC * `y_metric`: accuracy metric logged on the runs (default `ood_accuracy`)

# COMMAND ----------

# MAGIC %pip install --quiet ..

# COMMAND ----------

if "dbutils" in globals():  # Databricks: load the package that the cell above installed
    dbutils.library.restartPython()  # noqa: F821

# COMMAND ----------

from pyspark.sql import functions as F

from prismatic.notebook import Notebook, use_headless_matplotlib
from prismatic.tracking import runs_dataframe

use_headless_matplotlib(globals())
import matplotlib.pyplot as plt  # noqa: E402

nb = Notebook(globals())
EXPERIMENT = nb.param("experiment", "")
X_METRIC = nb.param("x_metric", "g_vendi")
Y_METRIC = nb.param("y_metric", "ood_accuracy")
settings, spark, store = nb.open([f"tracking.experiment={EXPERIMENT}"] if EXPERIMENT else [])
print(f"tables: {store.engine} engine; MLflow experiment: {settings.tracking.experiment}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Rounds and study runs in MLflow

# COMMAND ----------

runs = runs_dataframe(settings) if settings.tracking.enabled else None
x_col, y_col = f"metrics.{X_METRIC}", f"metrics.{Y_METRIC}"
HAVE_RUNS = runs is not None and not runs.empty
if runs is None:
    print("MLflow tracking is disabled in this config (tracking.enabled: false).")
elif runs.empty:
    print(f"No runs in the experiment {settings.tracking.experiment!r} yet: run the pipeline or `prism study` first.")
else:
    runs = runs.copy()
    runs["run"] = runs.get("tags.mlflow.runName", runs["run_id"]).fillna(runs["run_id"])
    runs["stage"] = runs["tags.prismatic.stage"].fillna("run") if "tags.prismatic.stage" in runs else "run"
    runs["kind"] = runs["stage"].astype(str).str.split(r"[-_:/ ]", n=1, regex=True).str[0]  # round-2 -> round
    metric_cols = sorted(c for c in runs.columns if c.startswith("metrics."))
    print(f"{len(runs)} runs; metrics logged: {', '.join(c[len('metrics.') :] for c in metric_cols) or 'none'}")
    shown = ["run", "stage", "start_time"] + [c for c in (x_col, y_col) if c in runs.columns]
    nb.show(runs[shown].sort_values("start_time"))

# COMMAND ----------

if HAVE_RUNS:
    missing = [c[len("metrics.") :] for c in (x_col, y_col) if c not in runs.columns]
    pairs = runs.dropna(subset=[x_col, y_col]) if not missing else runs.iloc[0:0]
    if missing:
        print(f"No run logged {', '.join(missing)}: set the x_metric / y_metric widgets to metrics listed above.")
    elif pairs.empty:
        print(f"No run logged both {X_METRIC} and {Y_METRIC}.")
    else:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for kind, grp in pairs.groupby("kind"):
            ax.scatter(grp[x_col], grp[y_col], label=str(kind))
            for _, r in grp.iterrows():
                ax.annotate(str(r["run"]), (r[x_col], r[y_col]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(X_METRIC)
        ax.set_ylabel(Y_METRIC)
        ax.set_title(f"{Y_METRIC} vs {X_METRIC} (MLflow runs)")
        ax.legend(fontsize="small")
        nb.show_figure(fig, "mlflow_diversity_vs_accuracy")
        print(f"{len(pairs)} runs with both metrics; Spearman rho = {pairs[x_col].corr(pairs[y_col], 'spearman'):.3f}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Accuracy per benchmark (`eval_results`)

# COMMAND ----------

if not store.exists("eval_results"):
    print("No `eval_results` table yet: the Eval task (`prism eval`) writes it.")
else:
    acc = (
        store.read("eval_results")
        .withColumn("eval_method", F.coalesce("eval_method", F.lit("unrecorded")))  # rows older than the column
        .groupBy("run_id", "model", "eval_method")  # loglik and generate rows of one student are kept apart
        .pivot("benchmark")
        .agg(F.round(F.first("accuracy"), 4))
        .orderBy("run_id")
    )
    if acc.isEmpty():
        print("The eval_results table is empty.")
    else:
        nb.show(acc)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Study subsets (`study` table): diversity vs OOD accuracy per subset

# COMMAND ----------

if not store.exists("study"):
    print("No `study` table yet: the study job (`prism study`) writes it.")
else:
    study_pd = (
        store.read("study")
        .where(F.col("metric").isin(X_METRIC, Y_METRIC))
        .groupBy("study_id", "subset_id")
        .pivot("metric", [X_METRIC, Y_METRIC])
        .agg(F.first("value"))
        .dropna()
        .toPandas()
    )
    if study_pd.empty:
        print(f"No study subset has both {X_METRIC} and {Y_METRIC}.")
    else:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for study_id, grp in study_pd.groupby("study_id"):
            rho = grp[X_METRIC].corr(grp[Y_METRIC], "spearman")
            ax.scatter(grp[X_METRIC], grp[Y_METRIC], label=f"{study_id} (rho {rho:.2f}, {len(grp)} subsets)")
            print(f"study {study_id}: {len(grp)} subsets, Spearman rho({X_METRIC}, {Y_METRIC}) = {rho:.3f}")
        ax.set_xlabel(X_METRIC)
        ax.set_ylabel(Y_METRIC)
        ax.set_title("Study subsets")
        ax.legend(fontsize="small")
        nb.show_figure(fig, "study_diversity_vs_accuracy")
