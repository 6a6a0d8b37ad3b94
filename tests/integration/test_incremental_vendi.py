"""Incremental G-Vendi: stored per-group sums plus the new rows equal a full recompute; a changed set is detected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prismatic import diversity as dv

pytestmark = pytest.mark.spark

D, PER_ROUND, ROUNDS = 12, 120, 3


def reference_gvendi(x: np.ndarray) -> float:
    """exp(entropy) of the eigenvalues of (1/n) Σ g gᵀ over unit rows, straight from numpy."""
    u = x.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(u.T @ u / len(u))
    lam = lam[lam > 1e-15]
    return float(np.exp(-(lam * np.log(lam)).sum()))


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows = []
    for r in range(1, ROUNDS + 1):
        # each round drifts, so the value changes from round to round
        center = rng.standard_normal(D)
        for i in range(PER_ROUND):
            v = center * 0.5 * r + rng.standard_normal(D)
            rows.append({"sample_id": f"r{r}-{i:04d}", "round": r, "source": "ab"[i % 2], "vector": v})
    out = pd.DataFrame(rows)
    out["spec_id"] = "spec-a"
    return out


def frame(spark, pdf: pd.DataFrame):
    sdf = pdf.assign(vector=[np.asarray(v, dtype=np.float32) for v in pdf["vector"]])
    schema = "sample_id string, round int, source string, vector array<float>, spec_id string"
    return spark.createDataFrame(sdf[["sample_id", "round", "source", "vector", "spec_id"]], schema).repartition(3)


def gvendi(rows: pd.DataFrame) -> dict[str, float]:
    g = rows[rows["metric"] == dv.G_VENDI]
    return dict(zip(g["group"], g["value"], strict=True))


def values(res: dv.IncrementalResult) -> dict[str, float]:
    return gvendi(res.result.rows)


def full_values(df, cols) -> dict[str, float]:
    return gvendi(dv.gradient_diversity(df, cols).rows)


@pytest.mark.parametrize("cols", [["source"], pytest.param(None, marks=pytest.mark.slow)])
def test_rounds_add_only_new_rows_and_match_a_full_recompute(spark, pool, cols):
    stored: dict[str, dv.StoredSums] = {}
    for r in range(1, ROUNDS + 1):
        cur = pool[pool["round"] <= r]
        df = frame(spark, cur)
        res = dv.incremental_gradient_diversity(df, stored, cols)
        expect_plan = "full" if r == 1 else "added"
        assert set(res.plan.values()) == {expect_plan}
        assert res.rows_summed == PER_ROUND  # round 1: its own rows; later rounds: only the new ones
        got, full = values(res), full_values(df, cols)
        assert got.keys() == full.keys()
        for g in got:
            assert got[g] == pytest.approx(full[g], rel=1e-9, abs=0)
            part = cur if g == "all" else cur[cur["source"] == g]
            assert got[g] == pytest.approx(reference_gvendi(np.stack(part["vector"].to_list())), rel=1e-6)
            assert res.records[g].n == len(part) and res.records[g].through == r
        # what the stage stores goes through the table's row form
        stored = {g: dv.StoredSums.from_row(rec.to_row()) for g, rec in res.records.items()}
    # a re-query of the same pool reads only the sums
    again = dv.incremental_gradient_diversity(frame(spark, pool), stored, cols)
    assert set(again.plan.values()) == {"reused"} and again.rows_summed == 0 and not again.records
    assert values(again) == pytest.approx(full_values(frame(spark, pool), cols), rel=1e-9)


def test_the_hash_depends_on_the_set_only_and_a_removed_row_forces_a_full_recompute(spark, pool):
    first = dv.incremental_gradient_diversity(frame(spark, pool), {}, None)
    shuffled = pool.sample(frac=1.0, random_state=3)
    same = dv.incremental_gradient_diversity(
        spark.createDataFrame(frame(spark, shuffled).toPandas()).repartition(5), {}, None
    )
    assert same.records["all"].ids_hash == first.records["all"].ids_hash
    stored = {"all": first.records["all"]}
    # a round-1 row removed: the rows up to the stored watermark no longer hash to the stored set
    fewer = pool.drop(index=pool.index[5])
    res = dv.incremental_gradient_diversity(frame(spark, fewer), stored, None)
    assert res.plan == {"all": "full"} and res.rows_summed == len(fewer)
    assert res.records["all"].ids_hash != first.records["all"].ids_hash
    assert values(res)["all"] == pytest.approx(reference_gvendi(np.stack(fewer["vector"].to_list())), rel=1e-6)
    # the same count but a replaced id is caught too
    renamed = pool.copy()
    renamed.loc[renamed.index[7], "sample_id"] = "other"
    res = dv.incremental_gradient_diversity(frame(spark, renamed), stored, None)
    assert res.plan == {"all": "full"}
    # sums of another spec are not used
    other = dv.StoredSums("all", "all", "spec-b", first.records["all"].ids_hash, 3, first.records["all"].sums)
    res = dv.incremental_gradient_diversity(frame(spark, pool), {"all": other}, None, spec_id="spec-a")
    assert res.plan == {"all": "full"}
