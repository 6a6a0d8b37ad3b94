"""Two-level (coarse-then-fine) k-means assignment, checked against flat assignment and brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prismatic import cluster as cl
from prismatic.config import ClusterConfig

N, D, K, DIRECTIONS = 5000, 32, 50, 50


def unit(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    rng = np.random.default_rng(7)
    dirs = unit(rng.standard_normal((DIRECTIONS, D)))
    raw = dirs[rng.integers(DIRECTIONS, size=N)] + (0.8 / np.sqrt(D)) * rng.standard_normal((N, D))
    return unit(raw)


def test_assignment_is_the_best_centroid_of_the_probed_cells(x):
    rng = np.random.default_rng(1)
    c = unit(rng.standard_normal((200, D)))
    index = cl.build_coarse_index(c, k_coarse=15, nprobe=3)
    assert sorted(index.order.tolist()) == list(range(200))
    labels, cos = cl.assign_two_level(x[:600], c, index)
    # brute force: every score, the probed cells from the coarse scores, the best member among them
    scores = x[:600].astype(np.float64) @ c.T.astype(np.float64)
    cell_of = np.empty(200, dtype=np.int64)
    for j in range(index.k_coarse):
        cell_of[index.order[index.offsets[j] : index.offsets[j + 1]]] = j
    coarse = x[:600].astype(np.float64) @ index.coarse.T.astype(np.float64)
    probed = np.argsort(-coarse, axis=1)[:, :3]
    allowed = (cell_of[None, :] == probed[:, :, None]).any(axis=1)
    expect = np.where(allowed, scores, -np.inf).max(axis=1)
    np.testing.assert_allclose(cos, expect, atol=1e-5)
    np.testing.assert_allclose(scores[np.arange(600), labels], cos, atol=1e-5)
    assert allowed[np.arange(600), labels].all()
    # every cell probed: exactly the flat argmax
    full = cl.build_coarse_index(c, k_coarse=15, nprobe=15)
    lab_all, _ = cl.assign_two_level(x[:600], c, full)
    np.testing.assert_array_equal(lab_all, cl.assign_blocked(x[:600], c)[0])


def test_two_level_lloyd_objective_within_one_percent_of_flat(x):
    flat = cl.lloyd(x, K, iterations=20, seed=0, assign="flat")
    two = cl.lloyd(x, K, iterations=20, seed=0, assign="two_level", nprobe=4, initial=flat.init_centroids)
    assert cl.build_coarse_index(flat.centroids).k_coarse == 8  # 4 of 8 cells: half the fine products
    rel = (two.objective - flat.objective) / flat.objective
    assert abs(rel) < 0.01, rel
    # the objective is the same function of the centroids for both
    assert two.objective == pytest.approx(float(two.cosines.sum(dtype=np.float64)), rel=1e-9)
    # same init and near-equal centroids: most rows keep the flat label
    assert (two.labels == flat.labels).mean() > 0.9
    # the labels are (nearly always) the flat argmax under the two-level centroids
    flat_under_two, _ = cl.assign_blocked(x, two.centroids)
    assert (flat_under_two == two.labels).mean() > 0.97


def test_auto_switches_at_the_threshold():
    assert not cl.use_two_level("auto", cl.TWO_LEVEL_MIN_K - 1)
    assert cl.use_two_level("auto", cl.TWO_LEVEL_MIN_K)
    assert cl.use_two_level("two_level", 2) and not cl.use_two_level("flat", 10**6)
    with pytest.raises(ValueError):
        cl.use_two_level("ivf", 10)
    assert ClusterConfig().assign == "auto"
    with pytest.raises(ValueError):
        ClusterConfig(assign="ivf")


def test_empty_clusters_are_reseeded(x):
    # 10 exact copies of centroid 0 lose every tie to it (lower id wins): empty after the first step, they are
    # refilled by the re-seed rule from the rows farthest from their centroids, as in flat Lloyd
    start = cl.lloyd(x, K, iterations=0, seed=0).init_centroids.copy()
    start[K - 10 :] = start[0]
    flat = cl.lloyd(x, initial=start, iterations=20, tol=None, assign="flat")
    two = cl.lloyd(x, initial=start, iterations=20, tol=None, assign="two_level", nprobe=4)
    first = cl.lloyd(x, initial=start, iterations=1, tol=None, assign="two_level", nprobe=4)
    assert first.reseeded == 10
    assert two.reseeded >= 10
    assert (two.sizes > 0).all()
    rel = (two.objective - flat.objective) / flat.objective
    assert abs(rel) < 0.01, rel


@pytest.mark.spark
def test_spark_two_level_equals_numpy_two_level(spark, x):
    m = 2400
    pdf = pd.DataFrame({"sample_id": np.arange(m), "vector": list(x[:m])})
    df = spark.createDataFrame(pdf, "sample_id bigint, vector array<float>").repartition(2)
    init = cl.lloyd(x[:m], 40, iterations=0, seed=0).init_centroids
    cfg = ClusterConfig(assign="two_level", nprobe=3, iterations=6, tol=None, storage="files")
    res = cl.spherical_kmeans(df, 40, cfg, initial=init)
    ref = cl.lloyd(x[:m], initial=init, iterations=6, tol=None, assign="two_level", nprobe=3)
    assert res.assign == "two_level"
    np.testing.assert_allclose(res.centroids, ref.centroids, atol=1e-5)
    assert res.objective == pytest.approx(ref.objective, rel=1e-6)
    np.testing.assert_array_equal(res.sizes, ref.sizes)
    a = res.assignments.toPandas().sort_values("sample_id")
    np.testing.assert_array_equal(a["cluster_id"].to_numpy(), ref.labels)
