"""Distributed spherical k-means on local Spark, checked against the single-process numpy Lloyd run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prismatic import cluster as cl
from prismatic.config import ClusterConfig

pytestmark = pytest.mark.spark

N, D, K = 2400, 24, 10


def unit(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """N vectors around K directions, stored un-normalized (the stage normalizes), ids 0..N-1."""
    rng = np.random.default_rng(2024)
    dirs = unit(rng.standard_normal((K, D)))
    truth = rng.integers(K, size=N)
    raw = (dirs[truth] + 0.12 * rng.standard_normal((N, D))) * rng.uniform(0.5, 3.0, size=(N, 1))
    return raw.astype(np.float32), truth, dirs


def frame(spark, raw: np.ndarray, ids, partitions: int, id_type: str = "bigint"):
    pdf = pd.DataFrame({"sample_id": list(ids), "vector": [row for row in raw]})
    return spark.createDataFrame(pdf, f"sample_id {id_type}, vector array<float>").repartition(partitions)


@pytest.fixture(scope="module")
def df(spark, data):
    raw, _, _ = data
    out = frame(spark, raw, np.arange(N), 3).persist()
    out.count()
    yield out
    out.unpersist()


def labels_of(result, n: int) -> tuple[np.ndarray, np.ndarray]:
    a = result.assignments.toPandas().sort_values("sample_id")
    assert len(a) == n and a["sample_id"].is_unique
    return a["cluster_id"].to_numpy(), a["cosine"].to_numpy()


def test_distributed_equals_numpy_lloyd_for_any_partitioning(df, data):
    raw, _, _ = data
    x = cl.normalize_rows(raw)
    runs = [
        dict(num_partitions=1, storage="files", reduce="driver"),
        dict(num_partitions=3, storage="files", reduce="driver"),
        dict(num_partitions=2, storage="cache", reduce="shuffle"),
    ]
    inits = []
    for kw in runs:
        r = cl.spherical_kmeans(df, K, ClusterConfig(iterations=5, seed=7, tol=None, **kw))
        expected = (kw["storage"], kw["reduce"], kw["num_partitions"], 5)
        assert (r.storage, r.reduce, r.partitions, r.iterations) == expected
        ref = cl.lloyd(x, initial=r.init_centroids, iterations=5, tol=None)
        np.testing.assert_allclose(r.centroids, ref.centroids, atol=1e-5)
        np.testing.assert_array_equal(r.sizes, ref.sizes)
        # float32 dot products may differ in the last bit with the block shape: objectives agree to ~1e-7
        np.testing.assert_allclose(r.history, ref.history, rtol=1e-6)
        assert r.objective == pytest.approx(ref.objective, rel=1e-6)
        labels, cosines = labels_of(r, N)
        np.testing.assert_array_equal(labels, ref.labels)
        np.testing.assert_allclose(cosines, ref.cosines, atol=1e-6)
        assert (r.n, r.d, r.k) == (N, D, K)
        inits.append(r.init_centroids)
    for other in inits[1:]:  # the seeded init sample does not depend on partitioning or storage
        np.testing.assert_array_equal(inits[0], other)


@pytest.mark.parametrize(("init", "storage"), [("kmeans++", "files"), ("sample", "cache")])
def test_init_sample_is_the_spark_sql_hash_order(df, init, storage):
    """The staged sampler picks the rows Spark SQL ranks first by (xxhash64(id, seed), id), in that order."""
    from pyspark.sql import functions as F

    m, seed = 40, 13
    ref = df.orderBy(F.xxhash64("sample_id", F.lit(seed)), "sample_id").limit(m).select("vector").toPandas()["vector"]
    sample = cl.normalize_rows(np.stack(ref.to_list()))
    cfg = ClusterConfig(seed=seed, init=init, init_sample=m, storage=storage, num_partitions=3)
    r = cl.spherical_kmeans(df, K, cfg.model_copy(update={"iterations": 0}))  # init only (configs need >= 1)
    np.testing.assert_array_equal(r.init_centroids, cl.init_centroids(sample, K, seed, init))
    assert r.iterations == 0 and r.sizes.sum() == N


@pytest.fixture
def small_arrow_batches(spark):
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(key)
    spark.conf.set(key, "97")
    yield 97
    spark.conf.set(key, old)


def batches_per_partition(sdf) -> list[int]:
    import pyarrow as pa

    def count(batches):
        yield pa.RecordBatch.from_pylist([{"b": sum(1 for _ in batches)}])

    return [r["b"] for r in sdf.mapInArrow(count, "b long").collect()]


def test_many_arrow_batches_per_partition(spark, data, small_arrow_batches):
    raw, _, _ = data
    sdf = frame(spark, raw, np.arange(N), 2)  # not cached: the batch size applies
    assert min(batches_per_partition(sdf)) > 5
    x = cl.normalize_rows(raw)
    for storage in ("files", "cache"):
        r = cl.spherical_kmeans(sdf, K, ClusterConfig(iterations=3, seed=4, tol=None, storage=storage))
        ref = cl.lloyd(x, initial=r.init_centroids, iterations=3, tol=None)
        np.testing.assert_allclose(r.centroids, ref.centroids, atol=1e-5)
        np.testing.assert_array_equal(r.sizes, ref.sizes)
    # rows of another length in a later batch of the same partition
    rows = [(i, [1.0, float(i)]) for i in range(150)] + [(150, [1.0, 2.0, 3.0])]
    bad = spark.createDataFrame(rows, "sample_id bigint, vector array<double>").coalesce(1)
    for storage in ("files", "cache"):
        with pytest.raises(ValueError, match=r"different lengths \(2 to 3\)"):
            cl.spherical_kmeans(bad, 2, ClusterConfig(storage=storage))


def test_empty_clusters_reseeded_across_partitions_like_numpy(spark, data):
    raw, _, dirs = data
    x = cl.normalize_rows(raw)
    ids = np.array([f"s{i:05d}" for i in range(N)])  # string ids sort like the positions
    sdf = frame(spark, raw, ids, 4, id_type="string")
    # K - 2 real directions plus two centroids pointing away from the data: at least one starts empty
    initial = np.vstack([dirs[: K - 2], -dirs[0], -dirs[1]])
    cfg = ClusterConfig(iterations=4, seed=0, tol=None, reseed_pool=3, storage="files")
    r = cl.spherical_kmeans(sdf, K, cfg, initial=initial)
    ref = cl.lloyd(x, initial=initial, iterations=4, tol=None, ids=ids, reseed_pool=3)
    assert r.reseeded == ref.reseeded >= 1
    np.testing.assert_allclose(r.centroids, ref.centroids, atol=1e-5)
    np.testing.assert_array_equal(r.sizes, ref.sizes)
    a = r.assignments.toPandas().sort_values("sample_id")
    np.testing.assert_array_equal(a["cluster_id"].to_numpy(), ref.labels)


def test_pruned_steps_skip_rows_and_match_full_products(df, data):
    raw, _, _ = data
    runs = {
        name: cl.spherical_kmeans(
            df, K, ClusterConfig(iterations=8, seed=2, tol=None, storage=storage, num_partitions=2), prune=prune
        )
        for name, storage, prune in [("pruned", "files", True), ("full", "files", False), ("cache", "cache", True)]
    }
    ref = cl.lloyd(cl.normalize_rows(raw), initial=runs["full"].init_centroids, iterations=8, tol=None)
    for r in runs.values():
        np.testing.assert_allclose(r.centroids, ref.centroids, atol=1e-5)
        np.testing.assert_array_equal(r.sizes, ref.sizes)
        assert r.objective == pytest.approx(ref.objective, rel=1e-6) and len(r.gemm_rows) == 8
    assert runs["full"].gemm_rows == [N] * 8 and runs["cache"].gemm_rows == [N] * 8  # cache keeps no state
    pruned = runs["pruned"].gemm_rows
    assert pruned[0] == N and pruned[-1] < N // 2


def test_early_stop_records_iterations(df, data):
    raw, _, _ = data
    r = cl.spherical_kmeans(df, K, ClusterConfig(iterations=30, seed=3, tol=0.0))
    ref = cl.lloyd(cl.normalize_rows(raw), initial=r.init_centroids, iterations=30, tol=0.0)
    assert r.converged and r.iterations == ref.iterations < 30 and len(r.history) == r.iterations
    np.testing.assert_allclose(r.centroids, ref.centroids, atol=1e-5)


def test_recovers_directions_and_outputs(df, data):
    _, truth, dirs = data
    r = cl.spherical_kmeans(df, K, ClusterConfig(seed=1))
    assert (dirs @ r.centroids.T).max(axis=1).min() > 0.98
    labels, cosines = labels_of(r, N)
    assert cosines.sum() == pytest.approx(r.objective, rel=1e-6)
    np.testing.assert_array_equal(np.bincount(labels, minlength=K), r.sizes)
    clusters = r.clusters.orderBy("cluster_id").toPandas()
    assert clusters["cluster_id"].tolist() == list(range(K)) and clusters["size"].sum() == N
    np.testing.assert_allclose(np.stack(clusters["centroid"].to_list()), r.centroids, atol=0)
    table = r.clusters_arrow()
    assert table.column_names == ["cluster_id", "centroid", "size"] and table.num_rows == K
    assert r.bytes_per_step["broadcast"] == K * D * 4
    # sparse rule on the result's sizes
    np.testing.assert_array_equal(r.sparse_cluster_ids(), cl.sparse_clusters(r.sizes))


def test_mllib_reference_objective_within_a_few_percent(df):
    ours = cl.spherical_kmeans(df, K, ClusterConfig(iterations=20, seed=5))
    ref = cl.mllib_kmeans(df, K, ClusterConfig(iterations=20, seed=5))
    via_config = cl.spherical_kmeans(df, K, ClusterConfig(iterations=20, seed=5, method="mllib"))
    assert ref.method == "mllib" and ref.sizes.sum() == N and ref.centroids.shape == (K, D)
    assert abs(ref.objective - ours.objective) / ours.objective < 0.03
    assert via_config.method == "mllib" and via_config.objective == pytest.approx(ref.objective, rel=1e-9)


def test_assign_spark_matches_numpy(df, data):
    raw, _, dirs = data
    centroids = 2.0 * dirs  # not unit: normalized inside
    got = df.transform(lambda d: cl.assign_spark(d, centroids)).toPandas().sort_values("sample_id")
    labels, cos = cl.assign(raw, centroids)
    np.testing.assert_array_equal(got["cluster_id"].to_numpy(), labels)
    np.testing.assert_allclose(got["cosine"].to_numpy(), cos, atol=1e-6)


def test_cluster_pool_uses_config(spark, data):
    raw, _, _ = data
    small = frame(spark, raw[:600], np.arange(600), 2)
    cfg = ClusterConfig(k_fraction=0.01, k_min=4, iterations=3, tol=None, seed=2)
    r = cl.cluster_pool(small, cfg, n=600)
    assert (r.k, r.iterations, r.n) == (6, 3, 600)


def test_bad_input_is_a_clear_value_error(spark, data, tmp_path):
    raw, _, _ = data
    good = frame(spark, raw[:20], np.arange(20), 1)
    with pytest.raises(ValueError, match="vector_col = 'vec' is not a column"):
        cl.spherical_kmeans(good, 2, vector_col="vec")
    with pytest.raises(ValueError, match="k = 21 exceeds the number of rows n = 20"):
        cl.spherical_kmeans(good, 21)
    with pytest.raises(ValueError, match="storage must be one of"):
        cl.spherical_kmeans(good, 2, ClusterConfig().model_copy(update={"storage": "disk"}))
    bad_type = spark.createDataFrame([(1, "x")], "sample_id bigint, vector string")
    with pytest.raises(ValueError, match="must be array<float> or array<double>"):
        cl.spherical_kmeans(bad_type, 1)
    rows = [(0, [1.0, 0.0]), (1, None), (2, [0.0, 0.0]), (3, [1.0, 2.0, 3.0])]
    for bad, match in [
        (rows[:2], "1 null vectors"),
        (rows[:1] + rows[2:3], "1 vectors that are non-finite or all zeros"),
        (rows[:1] + rows[3:], "different lengths"),
    ]:
        bdf = spark.createDataFrame(bad, "sample_id bigint, vector array<double>")
        for storage in ("files", "cache"):
            with pytest.raises(ValueError, match=match):
                cl.spherical_kmeans(bdf, 1, ClusterConfig(storage=storage, staging_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []  # staged files are removed on errors too
