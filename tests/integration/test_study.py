"""The diversity-vs-OOD study end to end on a tiny NLI pool: Spark scoring (tiny llama), K = 4 probes, MLflow."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from prismatic.config import load_config
from prismatic.ingest import ingest
from prismatic.tables import open_store

pytestmark = pytest.mark.spark

SUBJECTS = ["the cat", "a dog", "the dog", "a cat"]
VERBS = ["runs", "sits"]
LABELS = ["entailment", "neutral", "contradiction"]


def nli_rows(n: int, offset: int = 0) -> list[dict]:
    """Hand-made NLI rows in the tiny model's vocabulary; the label follows from the sentences."""
    rows = []
    for i, (s, v, o) in enumerate(
        itertools.islice(itertools.cycle(itertools.product(SUBJECTS, VERBS, range(6))), offset, offset + n)
    ):
        kind = LABELS[(i + o) % 3]
        other = "sits" if v == "runs" else "runs"
        hyp = {"entailment": f"{s} {v} .", "neutral": f"{s} {v} and is {o} .", "contradiction": f"{s} {other} ."}[kind]
        rows.append({"premise": f"{s} {v} , {o} times .", "hypothesis": hyp, "label": kind})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.timeout(1800)  # ~2 min on an idle 2-core machine; 13 min measured on a heavily shared one
def test_study_k4_tables_mlflow_and_correlations(tmp_path, spark, tiny_model):
    from prismatic.stages.base import Context
    from prismatic.stages.score import score_pool
    from prismatic.train import study_stage

    pool = write_jsonl(
        tmp_path / "pool.jsonl",
        [{"sentence1": r["premise"], "sentence2": r["hypothesis"], "gold_label": r["label"]} for r in nli_rows(48)],
    )
    id_file = write_jsonl(tmp_path / "id.jsonl", nli_rows(12, offset=7))
    ood3 = write_jsonl(
        tmp_path / "ood_three.jsonl",
        [
            {"premise": f"{s} sits .", "hypothesis": h, "label": lab}
            for s in SUBJECTS
            for h, lab in [
                (f"{s} runs .", "contradiction"),
                (f"{s} sits .", "entailment"),
                ("a cat is 3 .", "neutral"),
            ]
        ],
    )
    ood2 = write_jsonl(
        tmp_path / "ood_two.jsonl",
        [
            {"premise": f"{s} runs .", "hypothesis": h, "label": lab}
            for s in SUBJECTS
            for h, lab in [(f"{s} runs .", "entailment"), (f"{s} sits .", "not_entailment")]
        ],
    )
    settings = load_config(overrides=[
        f"data_root={tmp_path / 'lake'}", "storage.engine=delta-rs", f"scoring.model.path={tiny_model}",
        "scoring.d=64", "scoring.block=2", "scoring.max_tokens=64", "scoring.chat_template=false",
        "spark.master=local[1]", "study.subsets=4", "study.subset_size=12", "study.clusters=4",
        "study.cluster_levels=[1,2,4]", "study.random_fraction=0.25", f"study.id_benchmark={id_file}",
        "study.id_size=null", "study.ood_benchmarks=[]", f"study.ood_files=[{ood3},{ood2}]", "study.bootstrap=200",
        "cluster.iterations=5",
    ])  # fmt: skip
    store = open_store(settings, spark)
    ingest(store, [str(pool)], "snli", "nli", settings)
    score_pool(Context(settings, store))
    report = study_stage(store, settings)

    # four equal-size subsets: three drawn from 1, 2, 4 clusters, one uniformly at random
    assert len(report.subsets) == 4
    assert sorted(s["n_clusters"] for s in report.subsets) == [0, 1, 2, 4]
    assert all(s["size"] == 12 for s in report.subsets)
    metrics = [
        "g_vendi",
        "g_mean_cosine",
        "emb_vendi",
        "emb_mean_cosine",
        "ngram_entropy_2",
        "distinct_2",
        "label_entropy",
        "mean_chars",
        "mean_loss",
    ]
    assert report.metrics == metrics

    # the study table: per subset design / diversity / accuracy rows, per metric two correlation rows
    rows = [r for r in store.read_arrow("study").to_pylist() if r["study_id"] == report.study_id]
    corr = {r["metric"]: r for r in rows if r["kind"] == "correlation"}
    assert set(corr) == {f"{p}.{m}" for p in ("rho", "rho_id", "rho_bal") for m in metrics}
    assert {r["subset_id"] for r in rows if r["kind"] == "diversity"} == {s["subset_id"] for s in report.subsets}
    assert len([r for r in rows if r["kind"] == "diversity"]) == 4 * len(metrics)

    # MLflow: a parent with one child per subset; rho recomputed here from the children's logged values
    import mlflow

    from prismatic import tracking

    tracking.setup(settings)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = next(r for r in runs if r.info.run_name == "study")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and all(c.info.run_name.startswith("study-subset-") for c in children)
    ood_mean = [c.data.metrics["ood_accuracy"] for c in children]
    for c in children:
        accs = [c.data.metrics["ood_three_accuracy"], c.data.metrics["ood_two_accuracy"]]
        assert c.data.metrics["ood_accuracy"] == pytest.approx(np.mean(accs))
        bal = [c.data.metrics["ood_three_balanced_accuracy"], c.data.metrics["ood_two_balanced_accuracy"]]
        assert c.data.metrics["ood_balanced_accuracy"] == pytest.approx(np.mean(bal))
    # the chance-corrected target, recomputed from the children's logged values
    bal_mean = [c.data.metrics["ood_balanced_accuracy"] for c in children]
    if np.ptp(bal_mean) > 0 and np.ptp([c.data.metrics["g_vendi"] for c in children]) > 0:
        assert corr["rho_bal.g_vendi"]["value"] == pytest.approx(
            spearmanr([c.data.metrics["g_vendi"] for c in children], bal_mean).statistic
        )
    for m in metrics:
        xs = [c.data.metrics.get(m, math.nan) for c in children]
        if np.ptp(xs) == 0 or np.ptp(ood_mean) == 0:
            assert math.isnan(corr[f"rho.{m}"]["value"])
            continue
        expected = spearmanr(xs, ood_mean).statistic
        assert corr[f"rho.{m}"]["value"] == pytest.approx(expected)
        assert parent.data.metrics[f"rho.{m}"] == pytest.approx(expected)
        assert corr[f"rho.{m}"]["p_value"] == pytest.approx(spearmanr(xs, ood_mean).pvalue)
    # G-Vendi of a subset recomputed from the gradients table and the subset's logged sample ids
    from prismatic.diversity import vectors_from_arrow
    from prismatic.vendi import g_vendi

    grads = store.read_arrow("gradients")
    child = children[0]
    ids = mlflow.artifacts.load_dict(f"{child.info.artifact_uri}/subset_ids.json")["sample_ids"]
    assert len(ids) == 12
    pos = {s: i for i, s in enumerate(grads["sample_id"].to_pylist())}
    vecs = vectors_from_arrow(grads["vector"].take([pos[s] for s in ids]))
    assert child.data.metrics["g_vendi"] == pytest.approx(g_vendi(vecs), rel=1e-6)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {
        "rho_by_metric.png",
        "rho_by_metric_balanced.png",
        "ranked_metrics.json",
        "ranked_metrics.md",
        "subsets.json",
        "scatter",
        "scatter_balanced",
    } <= arts
    scatters = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "scatter")}
    assert {f"scatter/{m}.png" for m in metrics} <= scatters

    # every subset's student was evaluated on the three benchmarks, recorded in eval_results
    ev = [r for r in store.read_arrow("eval_results").to_pylist() if r["study_id"] == report.study_id]
    assert len(ev) == 12 and {r["benchmark"] for r in ev} == {"id", "ood_three", "ood_two"}

    # a second run with the same inputs returns the recorded study
    again = study_stage(store, settings)
    assert again.reused and again.study_id == report.study_id
    for c in report.correlations:
        assert again.rho(c["metric"], c["target"]) == pytest.approx(c["rho"], nan_ok=True)
    assert len(again.correlations) == len(report.correlations) == 3 * len(metrics)
