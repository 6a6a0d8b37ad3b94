"""Rounds within a task, and generate-filter-train rounds, on real Spark + Delta + MLflow with a tiny proxy.

* A mixed math + NLI pool: each task is clustered on its own (``clusters`` / ``assignments`` keyed by task),
  exemplars come from the task's own sparse clusters, and math candidates landing in sparse math clusters are
  accepted; a task too small for the cluster floor is skipped with its reason, never widened to the other pool.
* ``synth.train_each_round``: round 0 (the seed pool) and every round train the lm student (the tiny model) on the
  task's pool and evaluate it ID / OOD; the round's MLflow child run, its ``rounds`` row and ``eval_results`` carry
  the same figures.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
from synth_helpers import math_benchmarks, mixed_generator, nli_pool, seed_pool, tiny_overrides, topics_pool

from prismatic.config import load_config
from prismatic.ingest import ingest
from prismatic.synth.loop import RoundSkipped, _sparse_members, synthesize
from prismatic.synth.rounds import RoundReport
from prismatic.synth.types import Reason, RoundStatus, Status
from prismatic.tables import open_store
from prismatic.vendi import g_vendi

pytestmark = pytest.mark.spark


def _by(rows: list[dict], *keys: str) -> dict:
    return {tuple(r[k] for k in keys): r for r in rows}


def _pool_vendi(store, spec_id: str, task: str, max_round: int) -> float:
    """Independent reference: numpy G-Vendi of the task's pool vectors (no Spark covariance path)."""
    pool = {
        s["sample_id"]
        for s in store.read_arrow("samples").to_pylist()
        if s["task"] == task and s["round"] <= max_round
    }
    dups = {d["sample_id"] for d in store.read_arrow("duplicates").to_pylist()}
    vecs = [
        g["vector"]
        for g in store.read_arrow("gradients").to_pylist()
        if g["spec_id"] == spec_id and g["sample_id"] in pool - dups
    ]
    return g_vendi(np.asarray(vecs, dtype=np.float64))


@pytest.mark.slow  # about 2 min on 2 cores: two tasks, two rounds, scoring and clustering each
def test_mixed_pool_rounds_work_within_each_task(tmp_path, spark, tiny_model):
    # k = 3 clusters per task here; with the median rule two equal small clusters (sizes [8, 6, 6]) leave none
    # strictly below it, so the threshold sits at the upper quartile: the per-task logic is what is tested
    base = tiny_overrides(tmp_path / "lake", tiny_model) + ["synth.tasks=[math, nli]", "cluster.sparse_quantile=0.75"]
    settings = load_config(overrides=base)
    store = open_store(settings, spark)
    ingest(store, [str(topics_pool(tmp_path))], "topics", "math", settings)
    ingest(store, [str(nli_pool(tmp_path, n=20))], "nli_seed", "nli", settings)
    samples = store.read_arrow("samples").to_pylist()
    seed_ids = {t: {s["sample_id"] for s in samples if s["task"] == t} for t in ("math", "nli")}

    reports = synthesize(store, settings, rounds=1, generator=mixed_generator())
    done = RoundStatus.DONE
    assert [(r.round, r.task, r.status) for r in reports] == [(1, "math", done), (1, "nli", done)]
    clusters = [c for c in store.read_arrow("clusters").to_pylist() if c["round"] == 1]
    assignments = [a for a in store.read_arrow("assignments").to_pylist() if a["round"] == 1]
    cands = store.read_arrow("synth_candidates").to_pylist()
    rounds = _by(store.read_arrow("rounds").to_pylist(), "round", "task")
    for task in ("math", "nli"):
        mine = [c for c in clusters if c["task"] == task]
        asg = {a["sample_id"]: a["cluster_id"] for a in assignments if a["task"] == task}
        # the task's pool, and only it, was clustered
        assert set(asg) == seed_ids[task] and sum(c["size"] for c in mine) == len(seed_ids[task])
        sparse = {c["cluster_id"] for c in mine if c["sparse"]}
        members = {sid for sid, cid in asg.items() if cid in sparse}
        task_cands = [c for c in cands if c["task"] == task]
        assert task_cands
        for c in task_cands:  # exemplars from the task's own sparse clusters (no fallback to the whole pool)
            assert set(c["exemplar_ids"]) <= members
        for c in task_cands:
            if c["status"] == Status.ACCEPTED:
                assert c["cluster_id"] in sparse
            if c["reason"] == Reason.DENSE_CLUSTER:
                assert c["cluster_id"] not in sparse
        row = rounds[1, task]
        assert row["status"] == RoundStatus.DONE and row["pool_before"] == len(seed_ids[task])
        assert row["gvendi_before"] == pytest.approx(_pool_vendi(store, reports[0].spec_id, task, 0), rel=1e-6)
        assert row["gvendi_after"] == pytest.approx(_pool_vendi(store, reports[0].spec_id, task, 1), rel=1e-6)
        assert row["emb_vendi_after"] > 1.0
    # the math candidates that land in sparse math clusters are accepted and grow the math pool
    math_rep = reports[0]
    assert math_rep.accepted_candidates >= 1
    synth = [s for s in store.read_arrow("samples").to_pylist() if s["origin"] == "synthetic"]
    assert {s["task"] for s in synth if s["prompt"].startswith("What is")} == {"math"}
    assert rounds[1, "math"]["pool_after"] == len(seed_ids["math"]) + math_rep.accepted_samples

    # a cluster floor the NLI pool is too small for: round 2 skips NLI with its reason and still runs math
    n_nli, n_math = rounds[1, "nli"]["pool_after"], rounds[1, "math"]["pool_after"]
    k_min = n_nli // 2 + 1  # needs 2 * k_min > n_nli rows
    assert 2 * k_min <= n_math
    strict = load_config(overrides=base + [f"cluster.k_min={k_min}"])
    (rep_math, rep_nli) = synthesize(store, strict, rounds=2, generator=mixed_generator())
    assert (rep_math.task, rep_math.status) == ("math", RoundStatus.DONE) and rep_math.k == k_min
    assert (rep_nli.task, rep_nli.status) == ("nli", RoundStatus.SKIPPED)
    assert re.search(rf"task nli: {n_nli} pool rows .* too few to cluster \(need >= {2 * k_min}", rep_nli.detail)
    assert rep_nli.summary().startswith("round 2 (nli): skipped: task nli:")
    row = _by(store.read_arrow("rounds").to_pylist(), "round", "task")[2, "nli"]
    assert row["status"] == RoundStatus.SKIPPED and "too few to cluster" in row["detail"]
    assert not [c for c in store.read_arrow("clusters").to_pylist() if (c["round"], c["task"]) == (2, "nli")]
    assert not [c for c in store.read_arrow("synth_candidates").to_pylist() if (c["round"], c["task"]) == (2, "nli")]


def test_sparse_members_say_when_a_sparse_cluster_is_empty(tmp_path, spark):
    settings = load_config(overrides=[f"data_root={tmp_path / 'lake'}", "tracking.enabled=false"])
    store = open_store(settings, spark)
    store.merge("assignments", pa.Table.from_pylist(
        [{"round": 1, "task": "math", "sample_id": f"d{i}", "cluster_id": 0, "cosine": 0.9} for i in range(5)]
        + [{"round": 1, "task": "math", "sample_id": "s0", "cluster_id": 2, "cosine": 0.9},
           {"round": 1, "task": "nli", "sample_id": "n0", "cluster_id": 1, "cosine": 0.9}]))  # fmt: skip
    clusters = [
        {"cluster_id": 0, "size": 5, "sparse": False},
        {"cluster_id": 1, "size": 0, "sparse": True},
        {"cluster_id": 2, "size": 1, "sparse": True},
    ]
    report = RoundReport(1, "math")
    assert _sparse_members(store, 1, "math", clusters, report) == {"s0"}  # not n0: cluster 1 of nli is not ours
    assert report.notes == ["task math: sparse clusters [1] of round 1 have no members (no exemplars drawn from them)"]
    with pytest.raises(RoundSkipped, match=r"task math: its 1 sparse clusters have no members"):
        _sparse_members(store, 1, "math", clusters[:2], RoundReport(1, "math"))
    with pytest.raises(RoundSkipped, match="no sparse cluster among k=2"):
        _sparse_members(store, 1, "math", [dict(c, sparse=False) for c in clusters[:2]], RoundReport(1, "math"))


def _fake_answers(prompts, **kw):
    """A student that answers "What is a plus b?" right when a is even, and every other problem wrong."""
    out = []
    for p in prompts:
        m = re.search(r"What is (\d+) plus (\d+)\?", p)
        out.append(f"\\boxed{{{int(m[1]) + int(m[2])}}}" if m and int(m[1]) % 2 == 0 else "\\boxed{-1}")
    return out


def test_train_each_round_logs_accuracies_in_rounds_and_mlflow(tmp_path, spark, tiny_model, monkeypatch):
    from prismatic.train.lm import LMStudent
    from prismatic.train.students import ids_sha, read_manifest

    monkeypatch.setattr(LMStudent, "generate", lambda self, prompts, **kw: _fake_answers(prompts))
    id_bench, ood_bench = math_benchmarks(tmp_path)
    settings = load_config(overrides=tiny_overrides(tmp_path / "lake", tiny_model) + [
        "synth.train_each_round=true", "train.student=lm", f"train.model.path={tiny_model}", "train.max_steps=2",
        "train.batch_size=8", "train.max_tokens=64",
        f"train.benchmarks=[{id_bench}, {ood_bench}]", f"synth.eval_sets=[{id_bench}, {ood_bench}]",
    ])  # fmt: skip
    store = open_store(settings, spark)
    ingest(store, [str(seed_pool(tmp_path))], "seed", "math", settings)
    reports = synthesize(store, settings, rounds=2, generator=mixed_generator())
    assert [(r.round, r.task, r.status) for r in reports] == [(r, "math", RoundStatus.DONE) for r in (0, 1, 2)]
    # accuracies computed independently of the pipeline: the fake student's rule on the benchmark files
    id_rows = [json.loads(x) for x in id_bench.read_text().splitlines()]
    expected_id = sum(int(re.search(r"What is (\d+)", r["problem"])[1]) % 2 == 0 for r in id_rows) / len(id_rows)
    rounds = _by(store.read_arrow("rounds").to_pylist(), "round")
    evals = _by(store.read_arrow("eval_results").to_pylist(), "run_id", "benchmark")
    samples = store.read_arrow("samples").to_pylist()

    import mlflow

    from prismatic import tracking

    tracking.setup(settings)
    all_runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    runs = {r.info.run_name: r for r in all_runs}
    parent = runs["synthesize"]
    for rep in reports:
        row = rounds[(rep.round,)]
        assert row["status"] == RoundStatus.DONE and row["student_id"] == rep.student_id
        assert row["id_accuracy"] == pytest.approx(expected_id) and row["ood_accuracy"] == 0.0
        accs = json.loads(row["accuracies"])
        assert accs == {
            "sums_id": {"split": "id", "accuracy": pytest.approx(expected_id), "n": 10},
            "sums_ood": {"split": "ood", "accuracy": 0.0, "n": 8},
        }
        for bench, acc in accs.items():  # eval_results holds the same figures for that student
            assert evals[rep.student_id, bench]["accuracy"] == pytest.approx(acc["accuracy"])
        # the student saw exactly the task's pool of rounds <= r
        ids = [s["sample_id"] for s in samples if s["task"] == "math" and s["round"] <= rep.round]
        manifest = read_manifest(tmp_path / "lake" / "students" / rep.student_id)
        assert manifest["lineage"]["sample_ids_sha256"] == ids_sha(ids) and row["pool_after"] == len(ids)
        # the round's MLflow child run carries the same figures, tags and lineage
        run = runs[f"round-{rep.round}-math"]
        m, tags = run.data.metrics, run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags["prismatic.stage"] == "synthesize.round"
        assert tags["git_commit"] == parent.data.tags["git_commit"] and tags["student_id"] == rep.student_id
        assert run.data.params["student_id"] == rep.student_id
        assert m["id_accuracy"] == pytest.approx(row["id_accuracy"]) and m["ood_accuracy"] == row["ood_accuracy"]
        assert m["sums_id_accuracy"] == pytest.approx(expected_id) and m["sums_ood_accuracy"] == 0.0
        assert m["gvendi_after"] == pytest.approx(row["gvendi_after"]) and m["pool_after"] == row["pool_after"]
        assert m["emb_vendi_after"] == pytest.approx(row["emb_vendi_after"])
        assert m["tokens_generated"] == row["tokens"] == rep.tokens
        versions_read = json.loads(row["versions_read"])
        assert versions_read["samples"] is not None and tags["versions_read.samples"] == str(versions_read["samples"])
    # round 0 is the seed pool: no generation, G-Vendi before = after
    r0 = rounds[(0,)]
    assert r0["candidates"] == 0 and r0["gvendi_before"] == r0["gvendi_after"] and r0["pool_after"] == 40
    assert rounds[(1,)]["gvendi_before"] == pytest.approx(r0["gvendi_after"])
    # tokens: each generation call counted once, so the candidates' tokens add up to the round's
    cands = store.read_arrow("synth_candidates").to_pylist()
    for rnd in (1, 2):
        assert sum(c["tokens"] for c in cands if c["round"] == rnd) == rounds[(rnd,)]["tokens"] > 0
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert "gvendi_vs_ood.png" in arts
    # the train / eval runs nest under the round's run; a round that accepted nothing trains on the same ids, so it
    # reuses the previous round's checkpoint (same student id, no train run); its evaluation is unchanged (same
    # student, same benchmark content and method), so no eval run either: the round reads the stored accuracies
    seen: set[str] = set()
    for prev, rep in zip([None, *reports], reports, strict=False):
        if prev is not None:
            assert (rep.student_id == prev.student_id) == (rep.accepted_samples == 0)
        rid = runs[f"round-{rep.round}-math"].info.run_id
        nested = {r.data.tags["prismatic.stage"] for r in all_runs if r.data.tags.get("mlflow.parentRunId") == rid}
        assert nested == (set() if rep.student_id in seen else {"train-lm", "eval"})
        seen.add(rep.student_id)
    # nothing left to do: a re-run trains nothing and writes nothing
    versions = store.versions()
    assert synthesize(store, settings, rounds=2, generator=mixed_generator()) == []
    assert store.versions() == versions
