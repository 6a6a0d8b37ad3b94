"""Grouped G-Vendi, text baselines and embedding Vendi on local Spark, checked against the pure numpy functions."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from prismatic import vendi
from prismatic.errors import SpecMismatchError
from prismatic.vendi import CovarianceSums

pytestmark = pytest.mark.spark

D = 24
SOURCES = ["gsm", "snli", None, "synth"]


@pytest.fixture(scope="module")
def data():
    """Vectors in 4 sources of graded diversity (one source null), 2 rounds, one spec."""
    rng = np.random.default_rng(42)
    rows, X, keys = [], [], []
    for s_i, source in enumerate(SOURCES):
        k = [1, 3, 8, 20][s_i]  # clusters per source: diversity grows with s_i
        centres = rng.standard_normal((k, D))
        n = [37, 60, 25, 90][s_i]
        for j in range(n):
            v = centres[rng.integers(k)] + 0.3 * rng.standard_normal(D)
            X.append(v)
            keys.append((source, j % 2))
            rows.append((source, j % 2, "specA", [float(x) for x in v.astype(np.float32)]))
    X = np.array(X, dtype=np.float32)
    return rows, X, keys


@pytest.fixture(scope="module")
def vectors(spark, data):
    rows, _, _ = data
    return spark.createDataFrame(rows, "source string, round int, spec_id string, vector array<float>")


def numpy_by_group(X, keys, select):
    out = {}
    for key in sorted({select(k) for k in keys}, key=str):
        idx = [i for i, k in enumerate(keys) if select(k) == key]
        out[key] = (len(idx), vendi.score_X(X[idx]), vendi.score_dual(X[idx], q=2), vendi.mean_pairwise_cosine(X[idx]))
    return out


def scored_sums(df, group_cols=None, q: float = 1.0, **kw):
    """The keep-the-sums path: per-group sums (``group_sums``), then metrics from them on the driver."""
    from prismatic.diversity import diversity_from_sums, group_sums

    return diversity_from_sums(group_sums(df, group_cols, **kw), q=q)


def metric(rows: pd.DataFrame, group: str, name: str) -> tuple[float, int, str]:
    hit = rows[(rows["group"] == group) & (rows["metric"] == name)]
    assert len(hit) == 1, f"expected one {name} row for {group}, got {len(hit)}"
    r = hit.iloc[0]
    return float(r["value"]), int(r["n"]), r["spec_id"]


def test_grouped_g_vendi_equals_numpy(vectors, data):
    from prismatic.diversity import gradient_diversity, group_name

    _, X, keys = data
    res = gradient_diversity(vectors, "source", q=2)
    assert list(res.rows.columns) == ["scope", "group", "metric", "value", "n", "spec_id"]
    assert set(res.rows["scope"]) == {"source"}
    expected = numpy_by_group(X, keys, lambda k: (k[0],))
    assert len(expected) == 4 and len(res.rows) == 4 * 3
    for key, (n, v1, v2, mc) in expected.items():
        g = group_name(key)
        assert metric(res.rows, g, "g_vendi") == (pytest.approx(v1, rel=1e-9), n, "specA")
        assert metric(res.rows, g, "g_vendi_q2")[0] == pytest.approx(v2, rel=1e-9)
        assert metric(res.rows, g, "g_mean_cosine")[0] == pytest.approx(mc, abs=1e-9)
    # graded diversity comes out ranked
    order = [metric(res.rows, group_name((s,)), "g_vendi")[0] for s in SOURCES]
    assert order == sorted(order)


def test_two_group_columns_and_no_grouping(vectors, data):
    from prismatic.diversity import gradient_diversity, group_name

    _, X, keys = data
    res = gradient_diversity(vectors, ["source", "round"])
    expected = numpy_by_group(X, keys, lambda k: k)
    assert len(res.rows) == 2 * len(expected) == 16
    for key, (n, v1, _, _) in expected.items():
        assert metric(res.rows, group_name(key), "g_vendi")[:2] == (pytest.approx(v1, rel=1e-9), n)
    whole = gradient_diversity(vectors).rows
    assert set(whole["scope"]) == {"all"} and set(whole["group"]) == {"all"}
    assert metric(whole, "all", "g_vendi")[:2] == (pytest.approx(vendi.score_dual(X), rel=1e-9), len(X))
    # the ungrouped path sums partials on the driver; with 7 partitions and fanout 2 it goes through tree levels
    tree = scored_sums(vectors.repartition(7), fanout=2, q=math.inf)
    assert metric(tree.rows, "all", "g_vendi")[0] == pytest.approx(vendi.score_dual(X), rel=1e-9)
    assert metric(tree.rows, "all", "g_vendi_qinf")[0] == pytest.approx(vendi.score_dual(X, q=math.inf), rel=1e-9)
    assert metric(tree.rows, "all", "g_mean_cosine")[0] == pytest.approx(vendi.mean_pairwise_cosine(X), abs=1e-9)
    np.testing.assert_allclose(tree.sums[()].cov_sum, CovarianceSums.from_vectors(X).cov_sum, rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def one_partition(vectors):
    return scored_sums(vectors.coalesce(1), ["source", "round"])


@pytest.mark.parametrize("partitions,fanout", [(4, 32), (7, 2)])
def test_partitioning_does_not_change_results(vectors, one_partition, partitions, fanout):
    """Any number of partitions, with and without tree levels (7 partitions, fanout 2: two levels), same values."""
    base = one_partition
    res = scored_sums(vectors.repartition(partitions), ["source", "round"], fanout=fanout)
    pd.testing.assert_frame_equal(res.rows.drop(columns="value"), base.rows.drop(columns="value"))
    np.testing.assert_allclose(res.rows["value"], base.rows["value"], rtol=1e-10, atol=1e-12)
    assert res.sums.keys() == base.sums.keys()
    for key, s in res.sums.items():
        np.testing.assert_allclose(s.cov_sum, base.sums[key].cov_sum, rtol=1e-10, atol=1e-12)
    # the one-pass path scores each group on an executor: the same rows as scoring the collected sums
    from prismatic.diversity import gradient_diversity

    scored = gradient_diversity(vectors.repartition(partitions), ["source", "round"], fanout=fanout).rows
    pd.testing.assert_frame_equal(scored.drop(columns="value"), base.rows.drop(columns="value"))
    np.testing.assert_allclose(scored["value"], base.rows["value"], rtol=1e-10, atol=1e-12)


def test_kept_sums_equal_numpy_and_extend_incrementally(spark, vectors, data):
    from prismatic.diversity import add_sums, diversity_from_sums, gradient_diversity, group_sums

    rows, X, keys = data
    res = group_sums(vectors, "source")
    for source in SOURCES:
        idx = [i for i, k in enumerate(keys) if k[0] == source]
        ref = CovarianceSums.from_vectors(X[idx])
        got = res.sums[(source,)]
        assert got.n == ref.n
        np.testing.assert_allclose(got.cov_sum, ref.cov_sum, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.vector_sum, ref.vector_sum, rtol=1e-12, atol=1e-12)
        assert res.spec_ids[(source,)] == "specA"
    # round 0 kept as base sums, round 1 passed as new rows: equals scoring everything at once
    old = group_sums(vectors.where("round = 0"), "source")
    new = diversity_from_sums(add_sums(old, group_sums(vectors.where("round = 1 and source != 'gsm'"), "source")))
    full = gradient_diversity(vectors.where("round = 0 or source != 'gsm'"), "source").rows
    pd.testing.assert_frame_equal(new.rows.drop(columns="value"), full.drop(columns="value"))
    np.testing.assert_allclose(new.rows["value"], full["value"], rtol=1e-10, atol=1e-12)
    # base sums of another spec refuse to mix
    with pytest.raises(SpecMismatchError, match="specB"):
        add_sums(
            replace(old, spec_ids=dict.fromkeys(old.sums, "specB")), group_sums(vectors.where("round = 1"), "source")
        )


def test_mixed_spec_ids_raise_unless_grouped_by_spec(spark, data):
    from prismatic.diversity import gradient_diversity

    rows, X, _ = data
    mixed = [(s, r, "specB" if i % 5 == 0 else spec, v) for i, (s, r, spec, v) in enumerate(rows)]
    df = spark.createDataFrame(mixed, "source string, round int, spec_id string, vector array<float>")
    with pytest.raises(SpecMismatchError, match="specA, specB"):
        gradient_diversity(df)
    with pytest.raises(SpecMismatchError):
        gradient_diversity(df, "source")
    by_spec = gradient_diversity(df, "spec_id").rows
    assert set(by_spec["spec_id"]) == {"specA", "specB"}
    idx_b = [i for i in range(len(rows)) if i % 5 == 0]
    assert metric(by_spec, "specB", "g_vendi")[:2] == (pytest.approx(vendi.score_dual(X[idx_b]), rel=1e-9), len(idx_b))
    # a spec column is required unless the caller says there is none
    with pytest.raises(ValueError, match="spec column"):
        gradient_diversity(df.drop("spec_id"))
    labelled = gradient_diversity(df.drop("spec_id"), spec_col=None, spec_id="given").rows
    assert set(labelled["spec_id"]) == {"given"}


def test_double_vectors_and_bad_input(spark):
    from prismatic.diversity import gradient_diversity

    X = np.random.default_rng(0).standard_normal((40, 6))
    df = spark.createDataFrame([("s", x.tolist()) for x in X], "spec_id string, vector array<double>")
    assert metric(gradient_diversity(df).rows, "all", "g_vendi")[0] == pytest.approx(vendi.score_X(X), rel=1e-12)
    zero = spark.createDataFrame([("s", [1.0, 0.0]), ("s", [0.0, 0.0])], "spec_id string, vector array<float>")
    with pytest.raises(Exception, match="norm 0"):
        gradient_diversity(zero)
    ragged = spark.createDataFrame([("s", [1.0, 0.0]), ("s", [1.0])], "spec_id string, vector array<float>")
    with pytest.raises(Exception, match="same length"):
        gradient_diversity(ragged.coalesce(1))
    with pytest.raises(ValueError, match="not in the DataFrame"):
        gradient_diversity(df, "source")
    with pytest.raises(ValueError, match="array<float>"):
        gradient_diversity(df, vector_col="spec_id")


# --------------------------------------------------------------------------------------------------------------------
# direct read: tasks read a plain parquet scan's files with pyarrow (a delta-rs table's current files)


@pytest.fixture(scope="module")
def delta_root(tmp_path_factory, data):
    """The same rows as ``vectors`` in a delta-rs table of 3 files with row groups of 16 rows."""
    import pyarrow as pa
    from deltalake import WriterProperties, write_deltalake

    rows, _, _ = data
    root = tmp_path_factory.mktemp("vectors_delta")
    schema = pa.schema(
        [("source", pa.string()), ("round", pa.int32()), ("spec_id", pa.string()), ("vector", pa.list_(pa.float32()))]
    )
    for i, part in enumerate([rows[:50], rows[50:51], rows[51:]]):  # a one-row file too
        table = pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in part], schema=schema)
        props = WriterProperties(max_row_group_size=16)
        write_deltalake(str(root), table, mode="overwrite" if i == 0 else "append", writer_properties=props)
    return root


@pytest.fixture(scope="module")
def delta_vectors(spark, delta_root):
    from deltalake import DeltaTable

    uris = DeltaTable(str(delta_root)).file_uris()
    assert len(uris) == 3
    return spark.read.option("basePath", str(delta_root)).parquet(*uris)


def test_direct_read_only_for_plain_local_parquet_scans(spark, delta_vectors, vectors):
    from pyspark.sql import functions as F

    from prismatic.diversity import _parquet_scan

    need = ["vector", "spec_id"]
    scan = _parquet_scan(delta_vectors, need)
    assert scan is not None and len(scan.files) == 3 and all(size > 0 for _, size in scan.files)
    assert scan.columns == {"vector": "vector", "spec_id": "spec_id"}
    assert _parquet_scan(delta_vectors.select("spec_id", "vector"), need) is not None
    # Spark resolves names case-insensitively; the files keep theirs
    upper = _parquet_scan(delta_vectors.select("VECTOR", "spec_id"), ["VECTOR", "spec_id"])
    assert upper is not None and upper.columns == {"VECTOR": "vector", "spec_id": "spec_id"}
    # renaming back and forth is optimized away: still the files' own columns
    renamed = delta_vectors.select(F.col("vector").alias("v"), "spec_id").withColumnRenamed("v", "vector")
    assert _parquet_scan(renamed, need) is not None
    for other in [
        delta_vectors.where("round = 1"),
        delta_vectors.limit(10),
        delta_vectors.select(F.col("vector"), F.lit("x").alias("spec_id")),
        delta_vectors.select(F.transform("vector", lambda x: -x).alias("vector"), "spec_id"),
        delta_vectors.unionByName(delta_vectors),
        vectors,
    ]:
        assert _parquet_scan(other, need) is None
    cached = delta_vectors.select("*").cache()  # Spark would read the cache, so the files are not the data
    try:
        assert _parquet_scan(cached, need) is None
    finally:
        cached.unpersist()
    assert _parquet_scan(delta_vectors, need) is not None


@pytest.mark.parametrize("group_cols", [None, "source", ["source", "round"]])
def test_direct_read_equals_dataframe_path(delta_vectors, data, group_cols, caplog):
    """Same rows, sums and values (to 1e-10) as the mapInArrow path, for any number of reading tasks / tree levels."""
    import logging

    _, X, _ = data
    ref = scored_sums(delta_vectors, group_cols, q=2, direct_read=False)
    assert ref.rows["n"].max() <= len(X)
    for read_tasks, fanout in [(None, 32), (1, 32), (7, 2)]:  # 7 tasks of fanout 2: two tree levels
        with caplog.at_level(logging.INFO, logger="prismatic.diversity"):
            caplog.clear()
            got = scored_sums(delta_vectors, group_cols, q=2, read_tasks=read_tasks, fanout=fanout)
        assert "direct parquet read of 3 file(s)" in caplog.text
        if read_tasks:
            assert f"in {read_tasks} task(s)" in caplog.text
        pd.testing.assert_frame_equal(got.rows.drop(columns="value"), ref.rows.drop(columns="value"))
        np.testing.assert_allclose(got.rows["value"], ref.rows["value"], rtol=1e-10, atol=1e-12)
        assert got.sums.keys() == ref.sums.keys() and got.spec_ids == ref.spec_ids
        for key, s in got.sums.items():
            assert s.n == ref.sums[key].n
            np.testing.assert_allclose(s.cov_sum, ref.sums[key].cov_sum, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(s.vector_sum, ref.sums[key].vector_sum, rtol=1e-10, atol=1e-12)
    if group_cols is None:  # and both equal the N x N kernel form
        assert metric(ref.rows, "all", "g_vendi")[0] == pytest.approx(vendi.score_X(X), rel=1e-9)
        assert metric(got.rows, "all", "g_vendi")[0] == pytest.approx(vendi.score_X(X), rel=1e-9)


def test_direct_read_renamed_columns_and_bad_vectors(spark, delta_vectors, data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prismatic.diversity import gradient_diversity

    _, X, _ = data
    upper = gradient_diversity(delta_vectors.select("VECTOR", "spec_id"), vector_col="VECTOR").rows
    assert metric(upper, "all", "g_vendi")[:2] == (pytest.approx(vendi.score_dual(X), rel=1e-9), len(X))
    bad = tmp_path / "bad.parquet"
    vecs = pa.array([[1.0, 0.0], [0.0, 0.0]], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"spec_id": ["s", "s"], "vector": vecs}), bad)
    with pytest.raises(Exception, match="norm 0"):
        gradient_diversity(spark.read.parquet(str(bad)))


def test_text_baselines_equal_pure_functions(spark):
    from prismatic.diversity import text_diversity

    texts = [
        ("a", "The cat sat on the mat."),
        ("a", "The cat sat on the mat!"),
        ("a", "the cat ran"),
        ("b", "Quantum computers use qubits; classical ones use bits."),
        ("b", "Bake the bread at 200 degrees, then let it cool."),
        ("c", "one"),
        (None, "Hello, world. Hello again, world."),
    ]
    df = spark.createDataFrame(texts, "source string, text string").repartition(3)
    for n in (1, 2, 3):
        rows = text_diversity(df, "source", text_col="text", n=n)
        for source in ["a", "b", "c", None]:
            group = [t for s, t in texts if s == source]
            g = "null" if source is None else source
            ent, n_texts, spec = metric(rows, g, f"ngram_entropy_{n}")
            dist = metric(rows, g, f"distinct_{n}")[0]
            assert (n_texts, spec) == (len(group), "text")
            want_ent, want_dist = vendi.ngram_entropy(group, n), vendi.distinct_n(group, n)
            if math.isnan(want_ent):
                assert math.isnan(ent) and math.isnan(dist)
            else:
                assert ent == pytest.approx(want_ent, rel=1e-12)
                assert dist == pytest.approx(want_dist, rel=1e-12)
    whole = text_diversity(df, text_col="text", n=2)
    assert metric(whole, "all", "distinct_2")[0] == pytest.approx(vendi.distinct_n([t for _, t in texts], 2))


@pytest.mark.model
def test_embedding_vendi(spark):
    from prismatic.config import DiversityConfig
    from prismatic.diversity import diversity_report
    from prismatic.embeddings import embed_texts

    diverse = [
        "The stock market fell sharply after the announcement.",
        "My cat loves sleeping in the afternoon sun.",
        "Quantum computers store information in qubits.",
        "Bake the bread at 200 degrees for forty minutes.",
        "The referee showed him a red card in the final minute.",
    ]
    similar = [
        "The cat sat on the mat.",
        "The cat sat on the mat!",
        "A cat sat on the mat.",
        "The cat was sitting on the mat.",
        "The cat sat on a mat.",
    ]
    rows = [("diverse", t) for t in diverse] + [("similar", t) for t in similar]
    # one partition: one Python worker loads the model once; text baselines and embedding Vendi in one report
    df = spark.createDataFrame(rows, "source string, text string").coalesce(1)
    res = diversity_report(df, DiversityConfig(q=2), "source", vector_col=None, text_col="text")
    assert set(res["metric"]) == {"ngram_entropy_2", "distinct_2", "emb_vendi", "emb_vendi_q2", "emb_mean_cosine"}
    assert len(res) == 10
    v_div, n_div, spec = metric(res, "diverse", "emb_vendi")
    v_sim, n_sim, _ = metric(res, "similar", "emb_vendi")
    assert spec == "embedding:builtin:minilm" and n_div == n_sim == 5
    assert 1.0 <= v_sim < v_div <= 5.0
    assert v_div > 3.5 and v_sim < 1.5
    assert metric(res, "similar", "emb_mean_cosine")[0] > 0.8 > metric(res, "diverse", "emb_mean_cosine")[0]
    assert metric(res, "similar", "distinct_2")[0] < metric(res, "diverse", "distinct_2")[0]
    # same as embedding on the driver and scoring with numpy
    E = embed_texts(diverse)
    assert np.allclose((E.astype(np.float64) ** 2).sum(axis=1), 1.0, atol=1e-6)
    assert v_div == pytest.approx(vendi.score_X(E), rel=1e-6)
    assert metric(res, "diverse", "emb_vendi_q2")[0] == pytest.approx(vendi.score_X(E, q=2), rel=1e-6)
