"""The equal-budget guidance experiment (``prism experiment guidance``) on a tiny pool with the scripted generator
and the tiny model, and the two loop switches it is built on (``synth.exemplar_draw``, ``synth.sparse_filter``)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from synth_helpers import math_benchmarks, scripted_generator, tiny_overrides, topics_pool

from prismatic.config import load_config
from prismatic.errors import PrismError
from prismatic.synth.loop import Candidate, _filter_by_gradient, exemplar_source
from prismatic.synth.types import Reason, Status

# ---- the switches, on their own (no Spark, no model) ------------------------------------------------------------


def test_random_draw_takes_the_whole_pool_whatever_the_clusters():
    pool = [{"sample_id": f"s{i}", "prompt": f"p{i}"} for i in range(6)]
    assert exemplar_source(pool, {"s1", "s4"}) == [pool[1], pool[4]]  # sparse: only the members
    assert exemplar_source(pool, None) == pool  # random: every row, members or not
    assert exemplar_source(pool, set()) == []


class _Scorer:
    """Scores a sample as the unit vector of its prompt's first number's axis (a hand-made gradient)."""

    def score(self, pairs):
        out = []
        for prompt, _ in pairs:
            v = np.zeros(3, dtype=np.float32)
            v[int(re.search(r"\d+", prompt)[0])] = 1.0
            out.append(SimpleNamespace(vector=v, loss=0.5, n_tokens=4, truncated=False, error=None))
        return out


def _candidates():
    cands = []
    for axis in (0, 1, 2):
        c = Candidate(f"c{axis}", f"{axis} q", [])
        c.samples = [{"prompt": f"{axis} q", "completion": "a"}]
        cands.append(c)
    return cands


def test_sparse_filter_off_keeps_candidates_of_dense_clusters():
    centroids = np.eye(3, dtype=np.float32)  # cluster i = axis i; only cluster 2 is sparse
    on = _candidates()
    _filter_by_gradient(on, centroids, {2}, _Scorer())
    assert [(c.status, c.cluster_id) for c in on] == [
        (Status.REJECTED, 0),
        (Status.REJECTED, 1),
        (Status.ACCEPTED, 2),
    ]
    assert {c.reason for c in on[:2]} == {Reason.DENSE_CLUSTER}
    off = _candidates()
    _filter_by_gradient(off, centroids, {2}, _Scorer(), keep_dense=True)
    assert [(c.status, c.cluster_id) for c in off] == [
        (Status.ACCEPTED, 0),
        (Status.ACCEPTED, 1),
        (Status.ACCEPTED, 2),
    ]
    assert all(len(c.samples) == 1 and c.samples[0]["vector"] is not None for c in off)
    # no centroids (the embedding arm with the filter off): every scored sample kept, no nearest cluster claimed
    none = _candidates()
    _filter_by_gradient(none, None, {2}, _Scorer(), keep_dense=True)
    assert all(c.status is Status.ACCEPTED and c.cluster_id is None for c in none)


def test_arm_and_seed_lists_are_checked():
    from prismatic.synth.guidance import parse_arms, parse_seeds

    assert parse_arms("gradient, unguided") == ["gradient", "unguided"]
    assert parse_seeds("0,1") == [0, 1]
    for bad in ("", "gradient,gradient", "grad"):
        with pytest.raises(PrismError):
            parse_arms(bad)
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(PrismError):
            parse_seeds(bad)


# ---- the experiment end to end --------------------------------------------------------------------------------


def _fake_answers(prompts):
    """The lm student's answers without generating: the problem's first number (right for no benchmark row)."""
    return [re.search(r"\d+", p)[0] if re.search(r"\d+", p) else "" for p in prompts]


@pytest.mark.spark
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "arms",
    [
        pytest.param(["gradient", "unguided"], id="two-arms"),
        # every arm: about twice as long (the embedding arm loads the sentence encoder)
        pytest.param(["gradient", "unguided", "random_exemplar", "embedding"], id="four-arms", marks=pytest.mark.slow),
    ],
)
def test_guidance_arms_rows_mlflow_children_and_resume(tmp_path, spark, tiny_model, monkeypatch, arms):
    from prismatic.ingest import ingest
    from prismatic.stages.base import Context
    from prismatic.synth.guidance import arm_root, experiment_guidance
    from prismatic.tables import open_store
    from prismatic.train.lm import LMStudent

    monkeypatch.setattr(LMStudent, "generate", lambda self, prompts, **kw: _fake_answers(prompts))
    id_bench, ood_bench = math_benchmarks(tmp_path)
    settings = load_config(overrides=tiny_overrides(tmp_path / "lake", tiny_model) + [
        "synth.round_student=lm", f"train.model.path={tiny_model}", "train.max_steps=1", "train.batch_size=8",
        "train.max_tokens=64", "train.eval_method=generate", "train.register_model=false",
        "cluster.sparse_quantile=0.75",
        f"synth.round_benchmarks=[{id_bench}, {ood_bench}]", "synth.calls_per_round=3",
    ])  # fmt: skip
    store = open_store(settings, spark)
    ingest(store, [str(topics_pool(tmp_path))], "topics", "math", settings)
    seed_ids = {s["sample_id"] for s in store.read_arrow("samples").to_pylist()}
    ctx = Context(settings, store)
    rep = experiment_guidance(ctx, arms, [0], rounds=1, generator=scripted_generator())
    rows = {(r["arm"], r["seed"]): r for r in store.read_arrow("guidance").to_pylist()}
    assert set(rows) == {(a, 0) for a in arms} and not any(r.skipped for r in rep.results)

    for arm in arms:
        row = rows[(arm, 0)]
        arm_store = open_store(settings.model_copy(update={"data_root": str(arm_root(settings, arm, 0))}), spark)
        samples = arm_store.read_arrow("samples").to_pylist()
        # the same seed pool in each arm; the pool after = seed + what the arm accepted
        assert {s["sample_id"] for s in samples if s["round"] == 0} == seed_ids
        synth = [s for s in samples if s["round"] == 1]
        assert row["pool_before"] == len(seed_ids) and row["pool_after"] == len(seed_ids) + len(synth)
        assert row["accepted_samples"] == len(synth) and row["rounds"] == 1
        cands = arm_store.read_arrow("synth_candidates").to_pylist()
        assert row["candidates"] == len(cands) and row["tokens_used"] == sum(c["tokens"] for c in cands) > 0
        assert row["accepted"] == sum(c["status"] == Status.ACCEPTED for c in cands)
        assert row["budget_kind"] == "calls" and row["budget"] == 3 and row["calls_used"] == 3
        # the student: trained on exactly the arm's grown pool; its accuracies are eval_results' figures
        evals = {e["benchmark"]: e for e in arm_store.read_arrow("eval_results").to_pylist()}
        accs = json.loads(row["accuracies"])
        assert set(accs) == {"sums_id", "sums_ood"} and row["student_id"]
        for bench, a in accs.items():
            assert evals[bench]["run_id"] == row["student_id"] and evals[bench]["accuracy"] == a["accuracy"]
        assert row["ood_accuracy"] == accs["sums_ood"]["accuracy"]
        # G-Vendi after: the arm's own round figure
        rnd = {r["round"]: r for r in arm_store.read_arrow("rounds").to_pylist()}[1]
        assert row["g_vendi_after"] == pytest.approx(rnd["gvendi_after"]) and row["embedding_vendi_after"] > 0

        clusters = {(c["cluster_id"]): c for c in arm_store.read_arrow("clusters").to_pylist()}
        sparse = {cid for cid, c in clusters.items() if c["sparse"]}
        members = {
            a["sample_id"] for a in arm_store.read_arrow("assignments").to_pylist() if a["cluster_id"] in sparse
        }
        exemplars = {e for c in cands for e in c["exemplar_ids"]}
        if arm in ("gradient", "embedding"):
            assert exemplars <= members  # guided: exemplars only from sparse clusters
        else:
            assert exemplars - members  # random draw: exemplars from dense clusters too
        accepted_clusters = {c["cluster_id"] for c in cands if c["status"] == Status.ACCEPTED}
        if arm == "unguided":
            assert Reason.DENSE_CLUSTER not in {c["reason"] for c in cands}
        if arm in ("gradient", "random_exemplar"):
            assert accepted_clusters <= sparse
    # the unguided arm kept what the filter would have dropped, on the same generator
    if "random_exemplar" in arms:
        assert rows[("unguided", 0)]["accepted"] >= rows[("random_exemplar", 0)]["accepted"]

    import mlflow

    from prismatic import tracking

    tracking.setup(settings)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = next(r for r in runs if r.info.run_name == "guidance")
    children = {r.data.params["arm"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(arms)
    for arm, run in children.items():
        row, m = rows[(arm, 0)], run.data.metrics
        assert run.info.run_id == row["mlflow_run_id"] and row["mlflow_parent_run_id"] == parent.info.run_id
        for key in ("accepted", "candidates", "tokens_used", "pool_after", "g_vendi_after", "ood_accuracy"):
            assert m[key] == pytest.approx(row[key]), (arm, key)
        assert m["embedding_vendi_after"] == pytest.approx(row["embedding_vendi_after"])
        assert m["sums_id_accuracy"] == pytest.approx(json.loads(row["accuracies"])["sums_id"]["accuracy"])
        assert run.data.params["budget"] == "calls:3" and run.data.tags["student_id"] == row["student_id"]
        # the arm's own synthesize run nests under its child
        assert any(
            r.info.run_name == "synthesize" and r.data.tags.get("mlflow.parentRunId") == run.info.run_id for r in runs
        )
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert "guidance.png" in arts

    # a re-run skips every finished arm: no new rows, the table's version unchanged
    version = store.version("guidance")
    again = experiment_guidance(ctx, arms, [0], rounds=1, generator=scripted_generator())
    assert all(r.skipped for r in again.results) and len(again.results) == len(arms)
    assert store.version("guidance") == version and store.count("guidance") == len(arms)
