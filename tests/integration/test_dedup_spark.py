"""find_duplicates on real local Spark against a brute-force reference over planted duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prismatic.config import DedupConfig
from prismatic.normalize import normalize_text

pytestmark = pytest.mark.spark

CFG = DedupConfig()
FULLWIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})


def _words(rng, k):
    return [f"w{int(x)}" for x in rng.integers(0, 3000, size=k)]


def _sub(rng, words, k):
    w = list(words)
    for i in rng.choice(len(w), size=k, replace=False):
        w[i] = f"x{int(rng.integers(10**9))}"
    return w


def make_samples(seed: int = 7) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """~330 rows: random bases plus planted exact copies, near variants above and below 0.8, a chain, cross-task
    copies and an exact copy of a near variant. Returns the rows and named ids for targeted checks."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, str]] = []  # (task, prompt, completion)
    tags: dict[str, list[str]] = {"below": [], "cross": [], "chain": [], "exact_of_near": []}
    bases = []
    for _ in range(240):
        w = _words(rng, int(rng.integers(30, 45)))
        task = "math" if rng.random() < 0.6 else "nli"
        rows.append((task, " ".join(w[:8]), " ".join(w[8:])))
        bases.append((task, w))
    index_of: dict[int, int] = {}

    def add(task, w, style=None):
        p, c = " ".join(w[:8]), " ".join(w[8:])
        if style == "upper":
            p, c = p.upper(), c.upper()
        elif style == "space":
            p, c = "  " + p.replace(" ", "\t "), c + " \n"
        elif style == "full":
            p, c = p.translate(FULLWIDTH), c.translate(FULLWIDTH)
        rows.append((task, p, c))
        return len(rows) - 1

    for i in range(0, 30):  # exact copies, 1-3 each, surface variations
        task, w = bases[i]
        for style in ["upper", "space", "full"][: 1 + i % 3]:
            add(task, w, style)
    for i in range(30, 70):  # near variants: 1 substitution (J ~ 0.85-0.92)
        task, w = bases[i]
        index_of[i] = add(task, _sub(rng, w, 1))
    for i in range(70, 85):  # two variants each, 1 substitution: a triangle
        task, w = bases[i]
        add(task, _sub(rng, w, 1))
        add(task, _sub(rng, w, 1))
    for i in range(85, 100):  # below threshold: 4-5 spread substitutions (J ~ 0.5-0.7)
        task, w = bases[i]
        tags["below"].append(add(task, _sub(rng, w, int(rng.integers(4, 6)))))
    for i in range(100, 110):  # same text under the other task: never a duplicate
        task, w = bases[i]
        tags["cross"].append(add("nli" if task == "math" else "math", w))
    for i in range(110, 114):  # chains A - B - C with J(A, C) below the threshold
        task, w = bases[i]
        b = list(w)
        b[3] = "chainword1"
        c = list(b)
        c[len(c) - 4] = "chainword2"  # far from the first substitution
        tags["chain"] += [i, add(task, b), add(task, c)]
    for i in range(30, 34):  # exact copy (upper-cased) of a near variant
        task, p, c = rows[index_of[i]]
        rows.append((task, p.upper(), c.upper()))
        tags["exact_of_near"] += [i, index_of[i], len(rows) - 1]
    rows.append(("math", "", ""))  # empty texts: exact duplicates of each other, never near
    rows.append(("math", "   ", "\n"))
    rows.append(("nli", "short", "one"))  # shorter than the n-gram: one shingle of the whole row
    rows.append(("nli", "SHORT", "one"))

    ids = [f"id{int(x):06d}" for x in rng.permutation(10**6)[: len(rows)]]  # random order: kept_id is not the base
    df = pd.DataFrame(rows, columns=["task", "prompt", "completion"])
    df.insert(0, "sample_id", ids)
    named = {k: [ids[i] for i in v] for k, v in tags.items()}
    return df, named


def reference(df: pd.DataFrame, cfg: DedupConfig) -> pd.DataFrame:
    """Brute force over all pairs in each task with Python sets: the result find_duplicates must return."""
    norm = [normalize_text(p + "\n" + c, cfg.normalize) for p, c in zip(df.prompt, df.completion, strict=True)]
    sh = []
    for t in norm:
        w = t.split()
        n = cfg.ngram
        sh.append(
            set() if not w else {tuple(w)} if len(w) < n else {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}
        )
    ids = df.sample_id.tolist()
    tasks = df.task.tolist()
    parent = {i: i for i in ids}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    best: dict[str, float] = {}
    for x in range(len(ids)):
        for y in range(x + 1, len(ids)):
            if tasks[x] != tasks[y]:
                continue
            if norm[x] == norm[y]:
                union(ids[x], ids[y])
                continue
            u = len(sh[x] | sh[y])
            j = len(sh[x] & sh[y]) / u if u else 0.0
            if j >= cfg.threshold:
                union(ids[x], ids[y])
                best[ids[x]] = max(best.get(ids[x], 0.0), j)
                best[ids[y]] = max(best.get(ids[y], 0.0), j)
    text_of = dict(zip(ids, norm, strict=True))
    out = []
    for i in ids:
        root = find(i)
        if root == i:
            continue
        if text_of[i] == text_of[root]:
            out.append((i, root, "exact", 1.0))
        else:
            out.append((i, root, "near", best[i]))
    return pd.DataFrame(out, columns=["sample_id", "kept_id", "kind", "similarity"]).sort_values("sample_id")


def _jaccard_of(df: pd.DataFrame, a: str, b: str) -> float:
    sets = []
    for x in (a, b):
        row = df[df.sample_id == x].iloc[0]
        w = normalize_text(row.prompt + "\n" + row.completion, CFG.normalize).split()
        sets.append({tuple(w[i : i + 3]) for i in range(len(w) - 2)})
    return len(sets[0] & sets[1]) / len(sets[0] | sets[1])


def _root(result: pd.DataFrame, sample: str) -> str:
    hit = result.kept_id[result.sample_id == sample]
    return hit.iloc[0] if len(hit) else sample


def _run(spark, df, cfg=CFG, partitions=None):
    from prismatic.dedup import find_duplicates

    sdf = spark.createDataFrame(df)
    if partitions:
        sdf = sdf.repartition(partitions)
    got = find_duplicates(sdf, cfg)
    assert [(f.name, f.dataType.simpleString()) for f in got.schema.fields] == [
        ("sample_id", "string"),
        ("kept_id", "string"),
        ("kind", "string"),
        ("similarity", "double"),
    ]
    return got.toPandas().sort_values("sample_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def planted():
    df, named = make_samples()
    return df, named, reference(df, CFG).reset_index(drop=True)


@pytest.fixture(scope="module")
def banded(spark, planted):
    return _run(spark, planted[0])


def test_reference_covers_every_case(planted):
    df, named, ref = planted
    kinds = ref.kind.value_counts()
    assert kinds["exact"] >= 60 and kinds["near"] >= 70
    assert ref.similarity[ref.kind == "near"].between(0.8, 0.99).all()
    assert not set(named["below"]) & set(ref.sample_id) and not set(named["cross"]) & set(ref.sample_id)
    triples = named["exact_of_near"] + named["chain"]
    for k in range(0, len(triples), 3):  # base, variant, copy-of-variant / chain A, B, C: one group each
        assert len({_root(ref, x) for x in triples[k : k + 3]}) == 1
    chain = named["chain"]
    for a, b, c in zip(chain[::3], chain[1::3], chain[2::3], strict=True):  # links above the threshold, ends below it
        assert _jaccard_of(df, a, b) >= 0.8 and _jaccard_of(df, b, c) >= 0.8 and _jaccard_of(df, a, c) < 0.8


def test_planted_duplicates_match_brute_force(banded, planted):
    _, _, ref = planted
    assert banded.sample_id.tolist() == ref.sample_id.tolist()
    assert banded.kept_id.tolist() == ref.kept_id.tolist()
    assert banded.kind.tolist() == ref.kind.tolist()
    np.testing.assert_allclose(banded.similarity, ref.similarity, rtol=0, atol=1e-12)


def test_kept_rows_survive_and_group_min(banded, planted):
    df, named, _ = planted
    assert not set(banded.kept_id) & set(banded.sample_id)  # a kept id is never itself removed
    assert (banded.kept_id < banded.sample_id).all()  # the smallest sample_id of the group is kept
    assert banded.sample_id.is_unique
    assert not set(named["below"]) & set(banded.sample_id)
    assert not set(named["cross"]) & set(banded.sample_id)
    triples = named["exact_of_near"] + named["chain"]
    for k in range(0, len(triples), 3):
        assert len({_root(banded, x) for x in triples[k : k + 3]}) == 1


def test_deterministic_across_batches_and_row_order(spark, planted, banded):
    df = planted[0]
    old = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    try:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "17")  # many small Arrow batches
        one = _run(spark, df.sample(frac=1.0, random_state=3), partitions=1)
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", old)
    pd.testing.assert_frame_equal(one, banded)


def test_partitions_and_components_in_spark_agree(spark, planted, banded):
    # 7 input partitions, and the connected components computed by the Spark path instead of the driver
    got = _run(spark, planted[0], CFG.model_copy(update={"driver_max_edges": 0}), partitions=7)
    pd.testing.assert_frame_equal(got, banded)


def test_star_buckets_agree(spark, planted, banded):
    # every bucket of 2+ members is linked to its min instead of all pairs; the planted groups still connect
    got = _run(spark, planted[0], CFG.model_copy(update={"max_bucket_pairs": 1}))
    assert got.sample_id.tolist() == banded.sample_id.tolist() and got.kept_id.tolist() == banded.kept_id.tolist()
    assert got.kind.tolist() == banded.kind.tolist()
    # fewer pairs are compared, so the best neighbour can only be worse, never below the threshold
    assert (got.similarity <= banded.similarity + 1e-12).all() and (got.similarity >= CFG.threshold).all()


def test_mllib_method_agrees(spark, planted, banded):
    got = _run(spark, planted[0], CFG.model_copy(update={"method": "mllib"}))
    assert got.sample_id.tolist() == banded.sample_id.tolist()
    assert got.kept_id.tolist() == banded.kept_id.tolist()
    assert got.kind.tolist() == banded.kind.tolist()
    np.testing.assert_allclose(got.similarity, banded.similarity, rtol=0, atol=1e-9)


def test_exact_only_and_errors(spark, planted, banded):
    from prismatic.dedup import find_duplicates

    df = planted[0]
    got = _run(spark, df, CFG.model_copy(update={"near": False}))
    assert set(got.kind) == {"exact"} and (got.similarity == 1.0).all()
    exact_rows = banded[banded.kind == "exact"]
    assert set(exact_rows.sample_id) <= set(got.sample_id)
    with pytest.raises(ValueError, match="missing: completion"):
        find_duplicates(spark.createDataFrame(df.drop(columns=["completion"])), CFG)
    bad = df.head(5).copy()
    bad.loc[2, "sample_id"] = None
    with pytest.raises(Exception, match="null sample_id"):
        find_duplicates(spark.createDataFrame(bad), CFG)
