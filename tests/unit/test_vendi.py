"""G-Vendi and baselines in pure numpy: invariants, closed forms, the vendi-score package as independent oracle."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from prismatic import vendi
from prismatic.diversity import (
    _partial_batches,
    _plan_slices,
    _read_slices,
    _slice_row_groups,
    _split_groups,
    group_name,
    scope_name,
    vectors_from_arrow,
    vendi_metric,
)
from prismatic.vendi import CovarianceSums

QS = [0.0, 0.5, 1.0, 2.0, 3.5, math.inf]


def rand(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def clustered(n: int, d: int, k: int, noise: float, seed: int = 0) -> np.ndarray:
    """n vectors around k random centres: a set of graded diversity."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    return centres[rng.integers(0, k, n)] + noise * rng.standard_normal((n, d))


# --------------------------------------------------------------------------------------------------------------------
# invariants


@pytest.mark.parametrize("n", [1, 2, 7, 50])
@pytest.mark.parametrize("q", QS)
def test_identical_rows_score_one(n, q):
    x = rand(1, 24, seed=n)
    X = np.repeat(x, n, axis=0) * np.linspace(0.5, 3.0, n)[:, None]  # scaled copies: same direction
    assert vendi.score_dual(X, q=q) == pytest.approx(1.0, abs=1e-12)
    assert vendi.score_X(X, q=q) == pytest.approx(1.0, abs=1e-12)
    assert vendi.score_sums(CovarianceSums.from_vectors(X), q=q) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,d", [(1, 5), (4, 4), (16, 64), (40, 41)])
@pytest.mark.parametrize("q", QS)
def test_orthonormal_rows_score_n(n, d, q):
    Q, _ = np.linalg.qr(rand(d, d, seed=d))
    X = Q[:n] * np.arange(1, n + 1)[:, None]  # orthogonal rows of different lengths
    assert vendi.score_dual(X, q=q) == pytest.approx(n, rel=1e-10)
    assert vendi.score_X(X, q=q) == pytest.approx(n, rel=1e-10)
    assert vendi.g_vendi(X, q=q) == pytest.approx(n, rel=1e-10)


@pytest.mark.parametrize("n,d", [(30, 8), (8, 30), (64, 64), (200, 16)])
@pytest.mark.parametrize("q", QS)
def test_dual_form_equals_kernel_form(n, d, q):
    X = clustered(n, d, k=5, noise=0.3, seed=n + d)
    assert vendi.score_dual(X, q=q) == pytest.approx(vendi.score_X(X, q=q), rel=1e-9, abs=1e-9)
    A = vendi.unit_rows(X)
    assert vendi.score_K(A @ A.T, q=q) == pytest.approx(vendi.score_X(X, q=q), rel=1e-12)


@pytest.mark.parametrize("n,d", [(50, 12), (12, 50)])
def test_bounds(n, d):
    for seed in range(5):
        X = clustered(n, d, k=1 + seed * 3, noise=0.1 * seed, seed=seed)
        v = vendi.g_vendi(X)
        assert 1.0 - 1e-12 <= v <= min(n, d) + 1e-9


def test_invariant_to_row_order_and_partitioning():
    X = clustered(300, 32, k=8, noise=0.5, seed=3)
    whole = CovarianceSums.from_vectors(X)
    perm = np.random.default_rng(1).permutation(len(X))
    assert vendi.score_dual(X[perm]) == pytest.approx(vendi.score_dual(X), rel=1e-12)
    # split into uneven parts (one empty), sum the parts in another order: same sums, same score
    cuts = [0, 0, 17, 150, 151, 300]
    parts = [
        CovarianceSums.from_vectors(X[perm][a:b]) if b > a else CovarianceSums.zeros(32)
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    total = CovarianceSums.zeros(32)
    for p in reversed(parts):
        total += p
    assert total.n == whole.n == 300
    np.testing.assert_allclose(total.cov_sum, whole.cov_sum, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total.vector_sum, whole.vector_sum, rtol=1e-12, atol=1e-12)
    assert vendi.score_sums(total) == pytest.approx(vendi.score_sums(whole), rel=1e-12)
    shuffled = parts[3] + parts[1] + parts[4] + parts[2]
    assert vendi.score_sums(shuffled) == pytest.approx(vendi.score_sums(whole), rel=1e-12)
    # incremental update of one object equals the sum of objects
    inc = CovarianceSums.zeros(32)
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        inc.update(X[perm][a:b])
    np.testing.assert_allclose(inc.cov_sum, whole.cov_sum, rtol=1e-12, atol=1e-12)


def test_float32_input_is_accumulated_in_float64():
    X = clustered(2000, 16, k=4, noise=0.2, seed=5)
    s32 = CovarianceSums.from_vectors(X.astype(np.float32))
    assert s32.cov_sum.dtype == np.float64
    assert vendi.score_sums(s32) == pytest.approx(vendi.score_dual(X.astype(np.float32).astype(np.float64)), rel=1e-12)
    assert vendi.score_sums(s32) == pytest.approx(vendi.score_dual(X), rel=1e-6)


def test_record_roundtrip():
    s = CovarianceSums.from_vectors(rand(20, 9, seed=2))
    rec = s.to_record()
    assert len(rec["cov_upper"]) == 8 * 9 * 10 // 2
    back = CovarianceSums.from_record(rec)
    assert back.n == 20
    np.testing.assert_array_equal(back.cov_sum, s.cov_sum)
    np.testing.assert_array_equal(back.vector_sum, s.vector_sum)


def test_score_sums_from_matrix_and_count():
    X = vendi.unit_rows(rand(40, 10, seed=4))
    assert vendi.score_sums(X.T @ X, n=40) == pytest.approx(vendi.score_dual(X), rel=1e-12)
    with pytest.raises(ValueError, match="pass n"):
        vendi.score_sums(X.T @ X)


# --------------------------------------------------------------------------------------------------------------------
# order q


def test_q_limits_and_monotonicity():
    X = clustered(80, 20, k=6, noise=0.4, seed=7)
    lam = vendi.spectrum(np.linalg.eigvalsh(vendi.unit_rows(X).T @ vendi.unit_rows(X) / 80))
    v1 = vendi.score_dual(X, q=1)
    # Rényi → Shannon as q → 1 from both sides
    assert vendi.score_dual(X, q=1 - 1e-7) == pytest.approx(v1, rel=1e-5)
    assert vendi.score_dual(X, q=1 + 1e-7) == pytest.approx(v1, rel=1e-5)
    # q = ∞ is 1 / max λ, and a large finite q approaches it
    vinf = vendi.score_dual(X, q=math.inf)
    assert vinf == pytest.approx(1 / lam.max(), rel=1e-12)
    assert vendi.score_dual(X, q="inf") == vinf
    assert vendi.score_dual(X, q=400) == pytest.approx(vinf, rel=2e-2)
    # q = 0 is the number of nonzero eigenvalues (the rank), q = 2 the inverse participation ratio
    assert vendi.score_dual(X, q=0) == pytest.approx(np.linalg.matrix_rank(X), rel=1e-12)
    assert vendi.score_dual(X, q=2) == pytest.approx(1 / (lam**2).sum(), rel=1e-12)
    # Rényi entropy is non-increasing in q
    values = [vendi.score_dual(X, q=q) for q in [0, 0.25, 0.5, 1, 1.5, 2, 4, 10, math.inf]]
    assert all(a >= b - 1e-9 for a, b in zip(values[:-1], values[1:], strict=True))


def test_two_vectors_closed_form():
    # two unit vectors at cosine c: K / 2 has eigenvalues (1 ± c) / 2
    for c in [-0.9, 0.0, 0.3, 0.99]:
        X = np.array([[1.0, 0.0], [c, math.sqrt(1 - c * c)]])
        p = np.array([(1 + c) / 2, (1 - c) / 2])
        h = -(p * np.log(p)).sum()
        assert vendi.score_dual(X) == pytest.approx(math.exp(h), rel=1e-12)
        assert vendi.score_dual(X, q=2) == pytest.approx(1 / (p**2).sum(), rel=1e-12)
        assert vendi.mean_pairwise_cosine(X) == pytest.approx(c, abs=1e-15)


def test_entropy_q_conventions():
    assert vendi.entropy_q([1.0, 0.0, 0.0]) == 0.0  # 0 log 0 = 0
    assert vendi.entropy_q([0.5, 0.5, 0.0], q=0) == pytest.approx(math.log(2))
    assert vendi.entropy_q([0.25] * 4, q=3) == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="sum to 1"):
        vendi.entropy_q([0.5, 0.2])


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), "two", None, True])
def test_bad_q_raises(bad):
    with pytest.raises(ValueError, match="order q"):
        vendi.normalize_q(bad)


def test_tiny_negative_eigenvalues_are_clipped():
    lam = np.array([-1e-17, 1e-18, 0.5, 0.5])
    assert vendi.vendi_from_eigenvalues(lam) == pytest.approx(2.0, rel=1e-15)
    with pytest.raises(ValueError, match="zero"):
        vendi.spectrum([0.0, -1e-19])


# --------------------------------------------------------------------------------------------------------------------
# independent oracle: the vendi-score package (vertaix/Vendi-Score)


@pytest.mark.parametrize("n,d,k,noise", [(40, 16, 3, 0.2), (120, 32, 10, 1.0), (25, 100, 25, 0.5), (60, 8, 1, 0.0)])
def test_matches_vendi_score_package(n, d, k, noise):
    vs = pytest.importorskip("vendi_score.vendi")
    X = clustered(n, d, k=k, noise=noise, seed=n)
    ref = vs.score_X(X)  # N × N kernel of sklearn-normalized rows, scipy eigvalsh (its score_X ignores q)
    assert vendi.g_vendi(X) == pytest.approx(ref, rel=1e-9)
    assert vendi.score_dual(X) == pytest.approx(ref, rel=1e-9)
    assert vendi.score_sums(CovarianceSums.from_vectors(X.astype(np.float32))) == pytest.approx(ref, rel=1e-6)
    A = vendi.unit_rows(X)
    for q in [2, 3.5, "inf"]:
        assert vendi.score_dual(X, q=q) == pytest.approx(vs.score_dual(X, q=q), rel=1e-9)
        assert vendi.score_K(A @ A.T, q=q) == pytest.approx(vs.score_K(A @ A.T, q=q), rel=1e-9)
    # q < 1 weights tiny eigenvalues up (λ^q); the package keeps round-off eigenvalues (~1e-17) that we zero below
    # the rank tolerance, which moves its value by ~1e-7 relative
    assert vendi.score_dual(X, q=0.5) == pytest.approx(vs.score_dual(X, q=0.5), rel=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# mean pairwise cosine


def test_mean_pairwise_cosine_hand_example():
    X = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 5.0]])  # pairs: (1,2) cos 1, the others 0 → 2 / 6
    assert vendi.mean_pairwise_cosine(X) == pytest.approx(1 / 3)
    s = CovarianceSums.from_vectors(X)
    assert vendi.mean_pairwise_cosine_from_sums(s) == pytest.approx(1 / 3)
    assert vendi.mean_pairwise_cosine_from_sums(np.array([2.0, 1.0]), 3) == pytest.approx(1 / 3)
    assert math.isnan(vendi.mean_pairwise_cosine_from_sums(np.array([1.0, 0.0]), 1))


def test_mean_pairwise_cosine_from_sums_matches_direct():
    X = clustered(150, 12, k=4, noise=0.6, seed=11)
    A = vendi.unit_rows(X)
    K = A @ A.T
    direct = (K.sum() - np.trace(K)) / (150 * 149)
    assert vendi.mean_pairwise_cosine_from_sums(CovarianceSums.from_vectors(X)) == pytest.approx(direct, abs=1e-12)
    assert vendi.mean_pairwise_cosine(X) == pytest.approx(direct, abs=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# text baselines


def test_tokenize_and_ngrams():
    assert vendi.tokenize("Hello, World!  x2") == ["hello", ",", "world", "!", "x2"]
    assert vendi.tokenize("") == []
    assert vendi.ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert vendi.ngrams(["a"], 2) == []
    with pytest.raises(ValueError, match="n-gram order"):
        vendi.ngrams(["a"], 0)
    with pytest.raises(ValueError, match="string"):
        vendi.tokenize(None)


def test_distinct_n_and_entropy_hand_computed():
    texts = ["the cat sat", "the cat ran"]
    # bigrams: (the,cat) ×2, (cat,sat), (cat,ran) → 3 distinct of 4
    assert vendi.distinct_n(texts, 2) == pytest.approx(3 / 4)
    p = np.array([2, 1, 1]) / 4
    assert vendi.ngram_entropy(texts, 2) == pytest.approx(-(p * np.log(p)).sum())
    # unigrams: the ×2, cat ×2, sat, ran → 4 / 6
    assert vendi.distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert vendi.ngram_entropy(["a a a a"], 1) == 0.0
    assert vendi.ngram_entropy(["a b c d"], 1) == pytest.approx(math.log(4))
    assert math.isnan(vendi.distinct_n(["one"], 2))
    assert math.isnan(vendi.ngram_entropy(["one", ""], 3))


def test_entropy_from_counts_equals_direct_formula():
    counts = Counter({"x": 5, "y": 3, "z": 1, "w": 1})
    total = 10
    direct = -sum(c / total * math.log(c / total) for c in counts.values())
    assert vendi.entropy_from_counts(counts) == pytest.approx(direct, rel=1e-14)
    assert vendi.entropy_from_counts([5, 3, 1, 1, 0]) == pytest.approx(direct, rel=1e-14)


# --------------------------------------------------------------------------------------------------------------------
# input errors


def test_bad_vectors_raise():
    with pytest.raises(ValueError, match="norm 0"):
        vendi.g_vendi(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        vendi.score_dual(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        vendi.g_vendi(np.ones(3))
    with pytest.raises(ValueError, match="empty set"):
        vendi.score_dual(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="shape"):
        CovarianceSums.zeros(3).update(np.ones((2, 4)))
    with pytest.raises(ValueError, match="dimension"):
        CovarianceSums.zeros(3) + CovarianceSums.zeros(4)
    with pytest.raises(ValueError, match="symmetric"):
        vendi.score_K(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="zero rows"):
        CovarianceSums.zeros(3).covariance()


# --------------------------------------------------------------------------------------------------------------------
# Arrow helpers used by the Spark workers (no JVM needed)


def test_vectors_from_arrow_views_lists():
    X = rand(6, 4).astype(np.float32)
    col = pa.array(list(X), type=pa.list_(pa.float32()))
    np.testing.assert_array_equal(vectors_from_arrow(col), X)
    np.testing.assert_array_equal(vectors_from_arrow(col.slice(2, 3)), X[2:5])  # slicing offset respected
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 4)
    np.testing.assert_array_equal(vectors_from_arrow(fixed), X)
    with pytest.raises(ValueError, match="same length"):
        vectors_from_arrow(pa.array([[1.0, 2.0], [1.0]], type=pa.list_(pa.float32())))
    with pytest.raises(ValueError, match="null vectors"):
        vectors_from_arrow(pa.array([[1.0], None], type=pa.list_(pa.float32())))
    with pytest.raises(ValueError, match="array of floats"):
        vectors_from_arrow(pa.array([1.0, 2.0]))


def test_split_groups_with_nulls_and_two_columns():
    batch = pa.RecordBatch.from_pydict({"a": ["x", None, "x", "y", None], "b": [1, 1, 1, 2, 2]})
    got = {key: (None if rows is None else sorted(rows.tolist())) for key, _, rows in _split_groups(batch, ["a", "b"])}
    assert got == {("x", 1): [0, 2], (None, 1): [1], ("y", 2): [3], (None, 2): [4]}
    assert [k for k, _, r in _split_groups(batch, [])] == [()]
    one = pa.RecordBatch.from_pydict({"a": ["z", "z"]})
    assert [(k, r) for k, _, r in _split_groups(one, ["a"])] == [(("z",), None)]


def test_slices_cover_every_row_once():
    rows = [4, 0, 4, 3, 1]  # an empty row group too
    for k in range(1, 15):
        got = []
        for j in range(k):
            groups, first, lo, hi = _slice_row_groups(rows, j, k)
            assert hi - lo in (12 // k, 12 // k + 1)
            if groups:
                starts = np.concatenate([[0], np.cumsum(rows)])
                assert first == starts[groups[0]] <= lo and hi <= starts[groups[-1] + 1]
                assert all(rows[g] for g in groups)
            got += range(lo, hi)
        assert got == list(range(12))


def test_plan_slices_balances_bytes():
    files = [("a", 100), ("b", 10), ("c", 10)]
    plan = _plan_slices(files, 2)
    assert len(plan) == 2
    assert sorted(u for t in plan for u in t) == [("a", 0, 2), ("a", 1, 2), ("b", 0, 1), ("c", 0, 1)]
    assert sorted(len(t) for t in plan) == [2, 2]  # 50 + 10 bytes each
    assert _plan_slices([("one", 40)], 4) == [[("one", j, 4)] for j in range(4)]  # one file still fills 4 tasks
    many = _plan_slices([(f"f{i}", 7) for i in range(40)], 3)
    assert sorted(len(t) for t in many) == [13, 13, 14]
    assert _plan_slices([("x", 5)], 1) == [[("x", 0, 1)]]


def _parquet(path, n=23, d=5, row_group=4, seed=0, with_spec=True):
    import pyarrow.parquet as pq

    X = rand(n, d, seed=seed).astype(np.float32)
    cols = {
        "Vec": pa.array(list(X), type=pa.list_(pa.float32())),
        "src": pa.array([f"s{i % 3}" for i in range(n)]),
        "round": pa.array(np.arange(n) % 2, type=pa.int32()),
    }
    if with_spec:
        cols["spec_id"] = pa.array(["A"] * n)
    pq.write_table(pa.table(cols), path, row_group_size=row_group)
    return X


def test_read_slices_returns_each_row_once_with_dataframe_names_and_types(tmp_path):
    X1 = _parquet(tmp_path / "a.parquet", n=23, seed=1)
    X2 = _parquet(tmp_path / "b.parquet", n=9, seed=2, with_spec=False)  # spec column missing: read as nulls
    columns = {"vector": "Vec", "source": "src", "round": "round", "spec_id": "spec_id"}
    types = {"source": pa.string(), "round": pa.int64(), "spec_id": pa.string()}
    for k in (1, 2, 5, 30):
        units = [(str(tmp_path / f), j, k) for f in ("a.parquet", "b.parquet") for j in range(k)]
        batches = list(_read_slices(units, columns, types, batch_bytes=64))  # tiny batches: many per row group
        table = pa.Table.from_batches(batches)
        assert table.schema.names == ["vector", "source", "round", "spec_id"]
        assert table.schema.field("round").type == pa.int64()
        np.testing.assert_array_equal(vectors_from_arrow(table["vector"]), np.concatenate([X1, X2]))
        assert table["round"].to_pylist() == [i % 2 for i in range(23)] + [i % 2 for i in range(9)]
        assert table["spec_id"].to_pylist() == ["A"] * 23 + [None] * 9


def test_partials_of_file_slices_equal_the_sums_of_all_rows(tmp_path):
    X = _parquet(tmp_path / "a.parquet", n=40, seed=3, row_group=7)
    columns = {"vector": "Vec", "src": "src", "spec_id": "spec_id"}
    types = {"src": pa.string(), "spec_id": pa.string()}
    total = {}
    for j in range(3):
        rows = _read_slices([(str(tmp_path / "a.parquet"), j, 3)], columns, types)
        for b in _partial_batches(rows, "vector", ["src"], "spec_id", 1, part=j):
            rec = b.to_pylist()[0]
            s = CovarianceSums.from_record(
                {
                    "n": rec["__prism_n"],
                    "d": rec["__prism_d"],
                    "vector_sum": rec["__prism_vsum"],
                    "cov_upper": rec["__prism_cov"],
                }
            )
            assert rec["__prism_specs"] == ["A"] and rec["__prism_part"] == j
            total[rec["src"]] = total[rec["src"]] + s if rec["src"] in total else s
    for g in range(3):
        ref = CovarianceSums.from_vectors(X[np.arange(40) % 3 == g])
        assert total[f"s{g}"].n == ref.n
        np.testing.assert_allclose(total[f"s{g}"].cov_sum, ref.cov_sum, rtol=1e-12, atol=1e-14)


def test_sums_seam_adds_rounds_and_scores_like_numpy():
    """group_sums' output type, added across rounds and scored on the driver, equals scoring all rows at once."""
    from prismatic.diversity import GroupSums, add_sums, diversity_from_sums
    from prismatic.errors import SpecMismatchError

    rng = np.random.default_rng(3)
    old = {("a",): rng.standard_normal((30, 8)), ("b",): rng.standard_normal((12, 8))}
    new = {("a",): rng.standard_normal((20, 8)), ("c",): rng.standard_normal((9, 8))}

    def sums(rows):
        return GroupSums(
            ["source"], {k: CovarianceSums.from_vectors(x) for k, x in rows.items()}, dict.fromkeys(rows, "s")
        )

    res = diversity_from_sums(add_sums(sums(old), sums(new)), q=2)
    everything = {("a",): np.vstack([old[("a",)], new[("a",)]]), ("b",): old[("b",)], ("c",): new[("c",)]}
    assert sorted(res.sums) == sorted(everything) and set(res.rows["scope"]) == {"source"}
    for key, x in everything.items():
        got = res.rows[res.rows["group"] == key[0]].set_index("metric")
        assert got.loc["g_vendi", "value"] == pytest.approx(vendi.score_dual(x), rel=1e-10)
        assert got.loc["g_vendi_q2", "value"] == pytest.approx(vendi.score_dual(x, q=2), rel=1e-10)
        assert got.loc["g_mean_cosine", "value"] == pytest.approx(vendi.mean_pairwise_cosine(x), abs=1e-10)
        assert (got["n"] == len(x)).all() and (got["spec_id"] == "s").all()
    other = GroupSums(["source"], sums(new).sums, dict.fromkeys(new, "t"))
    with pytest.raises(SpecMismatchError, match="s, t"):
        add_sums(sums(old), other)
    with pytest.raises(ValueError, match="grouped by"):
        add_sums(sums(old), GroupSums(["round"]))


def test_names():
    assert scope_name([]) == "all" and group_name(()) == "all"
    assert scope_name(["source", "round"]) == "source,round"
    assert group_name(("gsm", None, 3)) == "gsm/null/3"
    assert vendi_metric("g_vendi", 1) == "g_vendi"
    assert vendi_metric("g_vendi", 2.0) == "g_vendi_q2"
    assert vendi_metric("emb_vendi", math.inf) == "emb_vendi_qinf"


def test_embedding_model_resolution(tmp_path):
    from prismatic.embeddings import embedding_schema, resolve_device, resolve_model

    assert resolve_model(str(tmp_path)) == str(tmp_path)  # a local folder passes through
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ValueError, match="unknown builtin"):
        resolve_model("builtin:nope")
    with pytest.raises(ValueError, match="embedding_model"):
        resolve_model("  ")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField("text", StringType())])
    assert embedding_schema(schema, "vec").fieldNames() == ["text", "vec"]
    with pytest.raises(ValueError, match="already exists"):
        embedding_schema(schema, "text")
