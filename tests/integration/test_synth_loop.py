"""The synthesis loop on real Spark + Delta + MLflow, with a tiny proxy and a scripted generator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import snapshot
from synth_helpers import scripted_generator, seed_pool, tiny_overrides

from prismatic.config import load_config
from prismatic.ingest import ingest
from prismatic.synth.loop import synthesize
from prismatic.synth.types import Reason, RoundStatus, Status
from prismatic.tables import open_store

pytestmark = pytest.mark.spark


def test_two_rounds_tables_and_mlflow(tmp_path, spark, tiny_model):
    settings = load_config(overrides=tiny_overrides(tmp_path / "lake", tiny_model))
    store = open_store(settings, spark)
    ingest(store, [str(seed_pool(tmp_path))], "seed", "math", settings)
    reports = synthesize(store, settings, rounds=2, generator=scripted_generator())
    assert [r.round for r in reports] == [1, 2]
    cands = store.read_arrow("synth_candidates").to_pylist()
    assert {c["round"] for c in cands} == {1, 2}
    assert {c["reason"] for c in cands} <= set(Reason)
    assert {Reason.UNPARSEABLE, Reason.NO_CONSENSUS} <= {c["reason"] for c in cands}
    for r in reports:
        mine = [c for c in cands if c["round"] == r.round]
        assert r.generated == len(mine)
        assert r.accepted_candidates == sum(c["status"] == Status.ACCEPTED for c in mine)
        assert sum(r.reasons.values()) == len(mine)
    samples = store.read_arrow("samples").to_pylist()
    synth = [s for s in samples if s["origin"] == "synthetic"]
    assert len(synth) == sum(r.accepted_samples for r in reports)
    accepted_prompts = {c["prompt"] for c in cands if c["status"] == Status.ACCEPTED}
    assert {s["prompt"] for s in synth} == accepted_prompts
    # every accepted sample was scored under the pool's spec and landed in a sparse cluster of its round
    grads = {g["sample_id"] for g in store.read_arrow("gradients").to_pylist()}
    assert {s["sample_id"] for s in synth} <= grads
    clusters = store.read_arrow("clusters").to_pylist()
    sparse = {(c["round"], c["cluster_id"]) for c in clusters if c["sparse"]}
    for c in cands:
        if c["status"] == Status.ACCEPTED:
            assert (c["round"], c["cluster_id"]) in sparse
        if c["reason"] == Reason.DENSE_CLUSTER:
            assert (c["round"], c["cluster_id"]) not in sparse
    rounds = {r["round"]: r for r in store.read_arrow("rounds").to_pylist()}
    assert {k: v["status"] for k, v in rounds.items()} == {1: RoundStatus.DONE, 2: RoundStatus.DONE}

    import mlflow

    from prismatic import tracking

    tracking.setup(settings)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    assert {"synthesize", "round-1-math", "round-2-math"} <= set(by_name)
    parent = by_name["synthesize"].info.run_id
    for r in reports:
        run = by_name[f"round-{r.round}-math"]
        assert run.data.tags["mlflow.parentRunId"] == parent
        m = run.data.metrics
        assert m["candidates"] == r.generated and m["accepted"] == r.accepted_candidates
        assert m["gvendi_after"] == pytest.approx(rounds[r.round]["gvendi_after"])
        assert m[f"reason.{Reason.NO_CONSENSUS}"] == r.reasons[Reason.NO_CONSENSUS]
        arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert {"cluster_sizes.png", "gvendi_by_round.png", "candidates_sample.json"} <= arts
    # a third call with rounds=2 does nothing
    assert synthesize(store, settings, rounds=2, generator=scripted_generator()) == []


SCRIPT = """
import sys
sys.path.insert(0, {helpers!r})
from synth_helpers import scripted_generator, tiny_overrides
from pathlib import Path
from prismatic.config import load_config
from prismatic.spark import get_spark
from prismatic.tables import open_store
from prismatic.synth.loop import synthesize
settings = load_config(overrides=tiny_overrides(Path({root!r}), Path({model!r})))
store = open_store(settings, get_spark(settings.spark))
synthesize(store, settings, rounds=2, generator=scripted_generator())
"""


@pytest.mark.timeout(1800)
def test_killed_loop_resumes_without_double_rows(tmp_path, spark, tiny_model):
    here = os.path.dirname(__file__)
    results = {}
    seed = seed_pool(tmp_path)  # one file for both runs: its batch_id hashes the path, size and mtime
    for name in ("crashed", "clean"):
        root = tmp_path / name
        settings = load_config(overrides=tiny_overrides(root, tiny_model))
        ingest(open_store(settings, spark), [str(seed)], "seed", "math", settings)
        script = SCRIPT.format(helpers=here, root=str(root), model=str(tiny_model))
        if name == "crashed":
            proc = subprocess.Popen(
                [sys.executable, "-c", script],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            log_dir = root / "tables" / "synth_candidates" / "_delta_log"
            deadline = time.time() + 600
            while time.time() < deadline and proc.poll() is None:
                if log_dir.is_dir() and len(list(log_dir.glob("*.json"))) >= 2:  # round 1 candidates written
                    break
                time.sleep(0.1)
            assert proc.poll() is None, "the loop ended before it could be killed"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        results[name] = open_store(load_config(overrides=tiny_overrides(root, tiny_model)), spark)
    for table in ("samples", "synth_candidates", "gradients", "clusters", "assignments"):
        a, b = snapshot(results["crashed"], table), snapshot(results["clean"], table)
        if table in ("gradients", "clusters"):
            key = "vector" if table == "gradients" else "centroid"
            for ra, rb in zip(a, b, strict=True):
                assert ra.pop(key) == pytest.approx(rb.pop(key), abs=1e-5)
        assert a == b, table
    rounds = snapshot(results["crashed"], "rounds")
    assert [r["round"] for r in rounds] == [1, 2] and all(r["status"] == RoundStatus.DONE for r in rounds)
    assert json.loads(rounds[0]["counts"])["generated"] > 0
