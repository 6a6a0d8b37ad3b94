"""The study's pure parts: subset design, metrics, Spearman with a bootstrap interval (no Spark, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from prismatic.train.study import cluster_levels, label_entropy, plan_subsets, spearman_ci, subset_metrics
from prismatic.vendi import distinct_n, g_vendi, ngram_entropy


def clustered(n_per=30, k=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.repeat(np.arange(k), n_per)[rng.permutation(n_per * k)]


def test_cluster_levels():
    assert cluster_levels(16) == [1, 2, 4, 8, 16]
    assert cluster_levels(6) == [1, 2, 4, 6]
    assert cluster_levels(6, [4, 1, 4]) == [1, 4]


def test_plans_are_equal_size_and_drawn_from_their_clusters():
    cluster_of = clustered()
    plans = plan_subsets(cluster_of, size=24, k=6, n_subsets=10, random_fraction=0.2, seed=3)
    assert len(plans) == 10
    assert [p.strategy for p in plans].count("random") == 2
    assert [p.n_clusters for p in plans if p.strategy == "clusters"] == [1, 2, 4, 6, 1, 2, 4, 6]
    for p in plans:
        assert len(p.rows) == 24 == len(set(p.rows.tolist()))
        if p.strategy == "clusters":
            assert set(cluster_of[p.rows].tolist()) <= set(p.clusters)
            assert len(p.clusters) == p.n_clusters  # every cluster holds 30 >= 24 rows: no extension needed
    again = plan_subsets(cluster_of, size=24, k=6, n_subsets=10, random_fraction=0.2, seed=3)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(plans, again, strict=True))
    other = plan_subsets(cluster_of, size=24, k=6, n_subsets=10, random_fraction=0.2, seed=4)
    assert not all(np.array_equal(a.rows, b.rows) for a, b in zip(plans, other, strict=True))


def test_small_clusters_are_extended_until_the_subset_fits():
    cluster_of = np.array([0] * 5 + [1] * 5 + [2] * 40)
    plans = plan_subsets(cluster_of, size=12, k=3, n_subsets=6, levels=[1], random_fraction=0.0, seed=0)
    for p in plans:
        assert len(p.rows) == 12 and sum((cluster_of == c).sum() for c in p.clusters) >= 12
        assert set(cluster_of[p.rows].tolist()) <= set(p.clusters)


def test_balanced_draws():
    cluster_of = clustered(n_per=30, k=2)
    labels = np.arange(60) % 3
    plans = plan_subsets(cluster_of, size=12, k=2, n_subsets=3, random_fraction=0.34, seed=1, labels=labels)
    for p in plans:
        assert np.bincount(labels[p.rows], minlength=3).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="exceeds the pool"):
        plan_subsets(cluster_of, size=61, k=2, n_subsets=2)


def test_spearman_ci_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=24)
    y = x + rng.normal(scale=0.8, size=24)
    rho, lo, hi, p = spearman_ci(x, y, n_boot=500, ci=0.9, seed=1)
    ref = spearmanr(x, y)
    assert rho == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert -1 <= lo <= rho <= hi <= 1
    # the interval is the percentile interval of resampled rho (recomputed here with the same draws)
    idx = np.random.default_rng(1).integers(0, 24, size=(500, 24))
    boots = [spearmanr(x[r], y[r]).statistic for r in idx if np.ptp(x[r]) and np.ptp(y[r])]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.05, 0.95])))
    assert all(math.isnan(v) for v in spearman_ci([1, 2, 3], [5, 5, 5]))
    assert all(math.isnan(v) for v in spearman_ci([1, 2], [1, 2]))


def test_subset_metrics():
    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(10, 16))
    emb = np.eye(10, 12)
    texts = [f"the cat number {i} sits" for i in range(10)]
    m = subset_metrics(vecs, emb, texts, ["a"] * 5 + ["b"] * 5, ngram=2)
    assert m["g_vendi"] == pytest.approx(g_vendi(vecs))
    assert m["emb_vendi"] == pytest.approx(10.0)  # orthonormal rows: Vendi = n
    assert m["ngram_entropy_2"] == pytest.approx(ngram_entropy(texts, 2))
    assert m["distinct_2"] == pytest.approx(distinct_n(texts, 2))
    assert m["label_entropy"] == pytest.approx(math.log(2))
    assert label_entropy(["x"] * 4) == 0.0
    assert "emb_vendi" not in subset_metrics(vecs, None, texts, None)
    assert m["mean_chars"] == pytest.approx(np.mean([len(t) for t in texts]))
    assert "mean_loss" not in m
    assert subset_metrics(vecs, None, texts, None, loss=np.array([1.0, 2.0, 4.5]))["mean_loss"] == pytest.approx(2.5)


def test_study_config_is_a_complete_study():
    """conf/study.yaml validates and asks for what issue #6 needs: K >= 24 probe students, NLI."""
    from pathlib import Path

    from prismatic.config import load_config

    path = Path(__file__).resolve().parents[2] / "conf" / "study.yaml"
    s = load_config(path)
    assert s.study.subsets >= 24 and s.study.student == "probe" and s.study.task == "nli"
    assert s.ingest.sources["snli"].premise == "sentence1" and s.ingest.sources["snli"].label == "gold_label"
    plans = plan_subsets(
        clustered(n_per=200, k=s.study.clusters),
        s.study.subset_size,
        s.study.clusters,
        s.study.subsets,
        random_fraction=s.study.random_fraction,
        seed=s.study.seed,
    )
    assert len(plans) == s.study.subsets and sorted({p.n_clusters for p in plans}) == [0, 1, 2, 4, 8, 16]


def test_math_study_config_scores_worked_solutions_by_multiple_choice():
    """conf/study-math.yaml: lm students on the math pool, every benchmark a +mc twin (a loglik-scored choice)."""
    from pathlib import Path

    from prismatic.config import load_config
    from prismatic.train.benchmarks import Benchmark
    from prismatic.train.evaluate import method_for

    s = load_config(Path(__file__).resolve().parents[2] / "conf" / "study-math.yaml")
    assert s.study.task == s.train.task == "math" and s.study.student == s.train.student == "lm"
    specs = [s.study.id_benchmark, *s.study.ood_benchmarks, *s.study.ood_files]
    assert all(b.endswith("+mc4") for b in specs)
    mc = Benchmark("b", "math", "ood", [{"problem": "p", "answer": "1", "choices": ["1", "2"]}])
    assert s.train.eval_method == "loglik" and method_for("lm", mc, s) == "loglik"
    plans = plan_subsets(
        clustered(n_per=60, k=s.study.clusters), s.study.subset_size, s.study.clusters, s.study.subsets,
        random_fraction=s.study.random_fraction, seed=s.study.seed,
    )  # fmt: skip
    assert len(plans) == s.study.subsets and sorted({p.n_clusters for p in plans}) == [0, 1, 2, 4, 8]
