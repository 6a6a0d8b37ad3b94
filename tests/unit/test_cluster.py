"""Spherical k-means core (pure numpy): checked against brute force and hand-computed cases, no Spark."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from prismatic import cluster as cl
from prismatic.config import ClusterConfig


def unit(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def separated(n: int, k: int, d: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n unit vectors around k random directions; returns (vectors, true labels, directions)."""
    rng = np.random.default_rng(seed)
    dirs = unit(rng.standard_normal((k, d)))
    labels = rng.integers(k, size=n)
    x = dirs[labels] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return unit(x), labels, dirs


def naive_lloyd(x: np.ndarray, c: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: float64, one point at a time, no empty clusters expected."""
    x = x.astype(np.float64)
    c = c.astype(np.float64)
    for _ in range(steps):
        labels = np.array([int(np.argmax([xi @ cj for cj in c])) for xi in x])
        new = np.array([x[labels == j].sum(axis=0) for j in range(len(c))])
        assert (np.bincount(labels, minlength=len(c)) > 0).all()
        c = new / np.linalg.norm(new, axis=1, keepdims=True)
    labels = np.array([int(np.argmax([xi @ cj for cj in c])) for xi in x])
    return c, labels


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    return sum(Counter(truth[pred == j]).most_common(1)[0][1] for j in np.unique(pred)) / len(truth)


# ---- assignment -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_rows", [1, 7, 64, 10_000, None])
def test_blocked_assignment_equals_brute_force(block_rows):
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((301, 16)))
    c = unit(rng.standard_normal((9, 16)))
    labels, cos = cl.assign_blocked(x, c, block_rows)
    brute = x.astype(np.float64) @ c.astype(np.float64).T
    assert labels.dtype == np.int32 and cos.dtype == np.float32
    np.testing.assert_array_equal(labels, brute.argmax(axis=1))
    np.testing.assert_allclose(cos, brute.max(axis=1), atol=1e-6)


def test_assignment_ties_go_to_lower_cluster_id():
    x = unit([[1.0, 1.0], [1.0, -1.0]])
    c = unit([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # clusters 0 and 1 identical
    labels, _ = cl.assign_blocked(x, c, block_rows=1)
    assert labels.tolist() == [0, 0]


def test_assign_new_vectors_normalizes_inputs():
    c = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    labels, cos = cl.assign([[10.0, 1.0, 0.0], [0.0, 3.0, 4.0]], c)
    assert labels.tolist() == [0, 1]
    np.testing.assert_allclose(cos, [10 / np.sqrt(101), 4 / 5], rtol=1e-6)


def test_assign_rejects_bad_input():
    with pytest.raises(ValueError, match="vectors has 1 rows that are non-finite or all zeros"):
        cl.assign([[0.0, 0.0], [1.0, 0.0]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="non-finite"):
        cl.assign([[np.nan, 1.0]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="d = 3 but centroids have d = 2"):
        cl.assign([[1.0, 0.0, 0.0]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="2-D"):
        cl.assign([1.0, 0.0], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="block_rows must be >= 1"):
        cl.assign([[1.0, 0.0]], [[1.0, 0.0]], block_rows=0)


def test_objective_is_sum_of_best_cosines_of_normalized_centroids():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6))
    c = 3.0 * rng.standard_normal((4, 6))  # not unit: objective normalizes
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    assert cl.objective(x, c) == pytest.approx((xn @ cn.T).max(axis=1).sum(), rel=1e-6)


# ---- sums, renormalization, re-seeding --------------------------------------------------------------------


def test_cluster_sums_and_counts_match_a_loop():
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((1200, 5)))  # > SUM_CHUNK_ROWS rows in some clusters
    labels = rng.integers(0, 3, size=1200)
    labels[labels == 1] = 0  # cluster 1 empty
    sums, counts = cl.cluster_sums(x, labels, 4)
    assert sums.dtype == np.float64 and counts.tolist() == [int((labels == j).sum()) for j in range(4)]
    for j in range(4):
        np.testing.assert_allclose(sums[j], x[labels == j].astype(np.float64).sum(axis=0), atol=1e-9)
    assert counts[1] == 0 and not sums[1].any() and counts[3] == 0
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        cl.cluster_sums(x, labels, 2)


def test_renormalize_divides_by_norm():
    sums = np.array([[3.0, 4.0], [0.0, -2.0]])
    c, reseeded = cl.renormalize(sums, np.array([5, 2]), previous=np.zeros((2, 2)))
    np.testing.assert_allclose(c, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-7)
    assert c.dtype == np.float32 and reseeded.size == 0


def test_empty_clusters_reseeded_with_farthest_points_in_order():
    # cluster 1 got no points; cluster 2's two points cancel (zero sum); both are empty
    sums = np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    counts = np.array([2, 0, 2, 3])
    previous = unit([[1, 0], [0, -1], [-1, 0], [0, 1]])
    far = unit([[1, 1], [-1, 1]])  # farthest first
    c, reseeded = cl.renormalize(sums, counts, previous, far)
    assert reseeded.tolist() == [1, 2]
    np.testing.assert_allclose(c, unit([[1, 0], [1, 1], [-1, 1], [0, 1]]), atol=1e-7)
    # fewer candidates than empty clusters: the rest keep their previous centroid
    c, reseeded = cl.renormalize(sums, counts, previous, far[:1])
    assert reseeded.tolist() == [1]
    np.testing.assert_allclose(c[2], previous[2])


def test_lowest_cosine_orders_by_cosine_then_id():
    cos = np.array([0.5, 0.1, 0.9, 0.1, 0.3, 0.1])
    assert cl.lowest_cosine(cos, 2).tolist() == [1, 3]
    assert cl.lowest_cosine(cos, 4, ids=np.array([60, 50, 40, 30, 20, 10])).tolist() == [5, 3, 1, 4]
    assert cl.lowest_cosine(cos, 10).tolist() == [1, 3, 5, 4, 0, 2]
    assert cl.lowest_cosine(cos, 0).size == 0


def test_lloyd_reseeds_an_empty_cluster_from_the_farthest_point():
    # two tight groups along +x and +y, plus one stray point along -x; centroid 2 points at -y: no points
    x = unit([[1, 0.01], [1, -0.01], [0.01, 1], [-0.01, 1], [-1, 0.2]])
    initial = unit([[1, 0], [0, 1], [0, -1]])
    r = cl.lloyd(x, initial=initial, iterations=1, tol=None)
    # step 1: the stray point goes to centroid 1 (+y; cos 0.196 > 0 for -y); it is the farthest point
    assert r.reseeded == 1
    np.testing.assert_allclose(r.centroids[2], x[4], atol=1e-7)
    assert r.sizes.tolist() == [2, 2, 1] and r.labels.tolist() == [0, 0, 1, 1, 2]


# ---- full runs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_recovers_well_separated_directions(seed):
    x, truth, dirs = separated(4000, 8, 32, noise=0.05, seed=3)
    r = cl.lloyd(x, 8, 20, seed=seed, init="kmeans++")
    assert purity(r.labels, truth) > 0.99
    # every true direction has a centroid within cos 0.99
    assert (dirs @ r.centroids.T).max(axis=1).min() > 0.99
    assert r.sizes.sum() == 4000 and r.objective == pytest.approx(float(r.cosines.sum(dtype=np.float64)))
    np.testing.assert_allclose(np.linalg.norm(r.centroids, axis=1), 1.0, atol=1e-6)


def test_sample_init_draws_k_distinct_rows_of_the_seeded_sample():
    x, _, _ = separated(500, 4, 8, noise=0.3, seed=9)
    c = cl.init_centroids(x, 6, seed=2, method="sample")
    rows = [int(np.flatnonzero((x == ci).all(axis=1))[0]) for ci in c]
    assert len(set(rows)) == 6
    np.testing.assert_array_equal(c, cl.init_centroids(x, 6, seed=2, method="sample"))
    r = cl.lloyd(x, 4, 10, seed=2, init="sample")
    assert r.objective > 0.8 * cl.lloyd(x, 4, 10, seed=2).objective


def test_lloyd_equals_an_independent_naive_implementation():
    x, _, _ = separated(400, 5, 12, noise=0.2, seed=4)
    init = cl.init_centroids(x, 5, seed=0)
    r = cl.lloyd(x, initial=init, iterations=4, tol=None)
    c_ref, labels_ref = naive_lloyd(x, init, 4)
    np.testing.assert_array_equal(r.labels, labels_ref)
    np.testing.assert_allclose(r.centroids, c_ref, atol=1e-6)
    # history[t] is the objective under the centroids entering step t
    assert r.history[0] == pytest.approx(float((x @ init.T).max(axis=1).sum()), rel=1e-6)
    assert all(b >= a - 1e-6 for a, b in zip(r.history, r.history[1:], strict=False))


def test_deterministic_for_a_seed():
    x, _, _ = separated(2000, 6, 16, noise=0.3, seed=5)
    a = cl.lloyd(x, 6, 10, seed=7)
    b = cl.lloyd(x, 6, 10, seed=7)
    np.testing.assert_array_equal(a.init_centroids, b.init_centroids)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = cl.lloyd(x, 6, 10, seed=8)
    assert not np.array_equal(a.init_centroids, c.init_centroids)


def test_early_stop_gives_the_same_result_as_running_on():
    x, _, _ = separated(1500, 4, 8, noise=0.1, seed=6)
    stop = cl.lloyd(x, 4, 30, seed=1, tol=0.0)
    full = cl.lloyd(x, 4, 30, seed=1, tol=None)
    assert stop.converged and stop.iterations < 30 and full.iterations == 30 and not full.converged
    np.testing.assert_array_equal(stop.centroids, full.centroids)
    np.testing.assert_array_equal(stop.labels, full.labels)


def partial_steps(x, c0, steps, prune, batch=97, reseed_pool=4, tmp=None):
    """Run ``steps`` Lloyd steps through the per-partition code (one partition, batches of ``batch`` rows)."""
    ids = np.arange(len(x))
    c, prev, state, out = c0, None, None, []
    for _ in range(steps):
        drift = None if prev is None or not prune else np.linalg.norm(c.astype(np.float64) - prev, axis=1)
        p = cl._Partial(c, reseed_pool, True, 50, state if prune else None, drift, track=prune)
        for s in range(0, len(x), batch):
            p.add(ids[s : s + batch], x[s : s + batch])
        out.append(p)
        state, prev = p.state, c.astype(np.float64)
        c, _ = cl.renormalize(p.sums, p.counts, c, p.cand[2])
    return c, out


def test_pruned_steps_equal_full_products_and_skip_rows():
    x, _, _ = separated(3000, 12, 20, noise=0.25, seed=11)
    c0 = cl.init_centroids(x, 16, seed=0, method="sample")  # 16 > 12 groups: some clusters keep moving
    c_full, full = partial_steps(x, c0, 8, prune=False)
    c_pruned, pruned = partial_steps(x, c0, 8, prune=True)
    np.testing.assert_array_equal(c_full, c_pruned)
    for a, b in zip(full, pruned, strict=True):
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.sums, b.sums)
        assert a.obj == pytest.approx(b.obj, rel=1e-6)
        np.testing.assert_array_equal(a.cand[1].astype(int), b.cand[1].astype(int))
        assert a.gemm_rows == len(x)
    assert pruned[0].gemm_rows == len(x) and pruned[-1].gemm_rows < len(x) // 2
    # the kept state is the true nearest centroid and its cosine, and a valid bound on every other centroid
    labels, own, other = pruned[-1].state
    ref = cl.lloyd(x, initial=c0, iterations=7, tol=None)
    scores = x @ ref.centroids.T
    np.testing.assert_array_equal(labels, scores.argmax(axis=1))
    np.testing.assert_allclose(own, scores.max(axis=1), atol=1e-6)
    np.put_along_axis(scores, labels[:, None].astype(np.int64), -np.inf, axis=1)
    assert (scores.max(axis=1) <= other + 1e-6).all()


def test_prune_rows_keeps_only_provable_labels():
    labels = np.array([0, 1, 1, 2], dtype=np.int32)
    own = np.array([0.9, 0.8, 0.5, 0.7], dtype=np.float32)
    other = np.array([0.5, 0.79, 0.1, 0.2], dtype=np.float32)
    drift = np.array([0.3, 0.0, 0.1], dtype=np.float32)
    lab, up, keep = cl._prune_rows(labels, own, other, drift)
    # row 0: own 0.9 - 0.3 is not above other 0.5 + 0.1 (its largest other drift); row 1: 0.8 vs 0.79 + 0.3;
    # row 2: 0.5 - 0 > 0.1 + 0.3; row 3: 0.7 - 0.1 > 0.2 + 0.3
    np.testing.assert_array_equal(keep, [False, False, True, True])
    np.testing.assert_allclose(up, [0.6, 1.09, 0.4, 0.5], atol=1e-7)
    np.testing.assert_array_equal(lab, labels)
    k1 = cl._prune_rows(np.zeros(2, np.int32), own[:2], np.full(2, -np.inf, np.float32), np.ones(1, np.float32))
    assert k1[2].all()  # one cluster: nothing to switch to


def test_kmeans_plus_plus_distinct_seeded_and_spread():
    x, truth, _ = separated(3000, 10, 24, noise=0.03, seed=8)
    idx = cl.kmeans_plus_plus(x, 10, seed=0)
    assert len(set(idx.tolist())) == 10
    assert len(set(truth[idx].tolist())) == 10  # one seed per well-separated group
    np.testing.assert_array_equal(idx, cl.kmeans_plus_plus(x, 10, seed=0))
    # duplicated rows: k equal to the number of rows still yields k distinct positions
    dup = np.repeat(unit([[1, 0], [0, 1]]), 3, axis=0)
    assert sorted(cl.kmeans_plus_plus(dup, 6, seed=1).tolist()) == list(range(6))


def test_lloyd_argument_errors():
    x = unit(np.eye(3))
    with pytest.raises(ValueError, match="k = 4 exceeds the number of vectors n = 3"):
        cl.lloyd(x, 4)
    with pytest.raises(ValueError, match="pass k or initial"):
        cl.lloyd(x)
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        cl.lloyd(x, 2, iterations=-1)
    with pytest.raises(ValueError, match="k = 3 but initial has 2 rows"):
        cl.lloyd(x, 3, initial=x[:2])
    with pytest.raises(ValueError, match="init must be 'kmeans\\+\\+' or 'sample'"):
        cl.lloyd(x, 2, init="random")
    with pytest.raises(ValueError, match="ids must have shape"):
        cl.lloyd(x, 2, ids=np.arange(2))


# ---- k and the sparse rule --------------------------------------------------------------------------------


def test_choose_k_fraction_and_floor():
    assert cl.choose_k(10_000) == 100  # 1 %
    assert cl.choose_k(150) == 2  # floor(1.5) = 1 -> k_min
    assert cl.choose_k(150, 0.01, k_min=5) == 5
    assert cl.choose_k(100, 0.29) == 29  # not 28 from 0.29 * 100 = 28.999999999999996
    assert cl.choose_k(199, 0.01, k_min=1) == 1
    assert cl.choose_k(3, 0.5, k_min=10) == 3  # never more clusters than points
    for args, match in [((0,), "n must be >= 1"), ((10, 0.0), "fraction"), ((10, 1.5), "fraction"),
                        ((10, 0.1, 0), "k_min")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            cl.choose_k(*args)


@pytest.mark.parametrize(
    ("sizes", "quantile", "expected"),
    [
        ([1, 2, 3, 4], 0.5, [0, 1]),  # median 2.5
        ([4, 1, 3, 2], 0.5, [1, 3]),  # ids, not ranks
        ([1, 2, 2, 3], 0.5, [0]),  # median 2: clusters of size 2 are not below it
        ([5, 5, 5, 5], 0.5, []),  # all equal: none sparse
        ([7], 0.5, []),
        ([0, 3, 9, 10, 10], 0.5, [0, 1]),  # median 9; an empty cluster counts and is sparse
        ([10, 20, 30, 40, 50], 0.25, [0]),  # q25 = 20
        ([10, 20, 30, 40, 50], 0.75, [0, 1, 2]),  # q75 = 40
        ([1, 1, 1, 9], 0.5, []),  # median 1: nothing strictly below
    ],
)
def test_sparse_clusters_hand_computed(sizes, quantile, expected):
    assert cl.sparse_clusters(sizes, quantile).tolist() == expected


def test_sparse_rule_errors():
    with pytest.raises(ValueError, match="non-empty"):
        cl.sparse_clusters([])
    with pytest.raises(ValueError, match="quantile must be in"):
        cl.sparse_clusters([1, 2], 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        cl.sparse_clusters([1, -2])


def test_cluster_config_defaults_match_the_paper():
    cfg = ClusterConfig()
    assert (cfg.k_fraction, cfg.iterations, cfg.sparse_quantile) == (0.01, 20, 0.5)
    assert cfg.method == "blocked" and cfg.storage == "auto" and cfg.tol == 0.0
