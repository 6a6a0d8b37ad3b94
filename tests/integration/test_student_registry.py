"""Students as MLflow models: registered in a real local registry, the champion alias moved only by a better OOD
score, ``models:/`` evaluation equal to the folder's, and idempotent evaluation (no new Delta version).

Three probes are trained on the benchmark's own pairs through ``train_stage`` (tracked, so each is logged with the
sklearn flavor and registered): one on the true labels (good), one on a single label (a constant: chance), one on
permuted labels (bad). Their OOD scores are measured by ``eval_stage``; the alias must follow those measurements.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from prismatic.config import load_config

ROWS = [
    ("A dog runs in a park.", "An animal is outside.", "entailment"),
    ("A dog runs in a park.", "The dog is asleep.", "contradiction"),
    ("A dog runs in a park.", "The dog is chasing a ball.", "neutral"),
    ("Two men cook dinner.", "People make food.", "entailment"),
    ("Two men cook dinner.", "Nobody is cooking.", "contradiction"),
    ("Two men cook dinner.", "The men are brothers.", "neutral"),
    ("A child plays the piano.", "Music is being played.", "entailment"),
    ("A child plays the piano.", "The child is swimming.", "contradiction"),
    ("A child plays the piano.", "The child is practicing for a show.", "neutral"),
]
NAME = "prismatic_student"


def write_bench(path, rows):
    path.write_text("".join(json.dumps({"premise": p, "hypothesis": h, "label": lab}) + "\n" for p, h, lab in rows))
    return path


def pairs_of(tag: str, labels: list[str]):
    from prismatic.train.data import NliPairs

    return NliPairs(
        [f"{tag}-{i}" for i in range(len(ROWS))], [r[0] for r in ROWS], [r[1] for r in ROWS], labels,
        [f"{r[0]}\n{r[1]}" for r in ROWS],
    )  # fmt: skip


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Three probes trained, registered and evaluated in the order chance, bad, good; the alias after each."""
    import mlflow

    from prismatic.tables import open_store
    from prismatic.train import eval_stage, train_stage

    tmp = tmp_path_factory.mktemp("registry")
    settings = load_config(overrides=[f"data_root={tmp / 'lake'}", "storage.engine=delta-rs"])
    store = open_store(settings, None)
    bench = write_bench(tmp / "shifted.jsonl", ROWS)
    true = [r[2] for r in ROWS]
    rotate = {"entailment": "neutral", "neutral": "contradiction", "contradiction": "entailment"}
    plan = [("chance", ["neutral"] * len(ROWS)), ("bad", [rotate[x] for x in true]), ("good", true)]
    out: dict = {"settings": settings, "store": store, "bench": bench, "steps": []}
    for tag, labels in plan:
        rep = train_stage(store, settings, "probe", pairs=pairs_of(tag, labels))
        rows = eval_stage(store, settings, model_path=rep.path, benchmarks=[str(bench)])
        client = mlflow.MlflowClient()
        champ = client.get_model_version_by_alias(NAME, "champion")
        out["steps"].append({"tag": tag, "report": rep, "row": rows[0], "champion": str(champ.version)})
    return out


def test_each_tracked_student_is_a_registered_sklearn_model(lake):
    import mlflow

    from prismatic.train.data import embedder_for, pair_features
    from prismatic.train.students import load_student

    reps = [s["report"] for s in lake["steps"]]
    assert [r.registered["version"] for r in reps] == ["1", "2", "3"]
    assert all(r.registered["name"] == NAME for r in reps)
    good = reps[2]
    manifest = json.loads((lake["settings"].root / "students" / good.student_id / "student.json").read_text())
    assert manifest["registered"] == good.registered  # the local folder names its registered version
    info = mlflow.models.get_model_info(f"models:/{NAME}/3")
    assert "sklearn" in info.flavors and info.metadata["student_id"] == good.student_id
    assert info.signature is not None
    # the registered sklearn head predicts exactly what the probe folder predicts, on real pair features
    embed = embedder_for(lake["settings"])
    X = pair_features(embed([r[0] for r in ROWS]), embed([r[1] for r in ROWS]))
    head = mlflow.sklearn.load_model(f"models:/{NAME}/3")
    assert list(head.predict(X)) == load_student(good.path, lake["settings"]).predict_features(X)
    # the one-label student is a constant classifier on both sides too
    const = mlflow.sklearn.load_model(f"models:/{NAME}/1")
    assert set(const.predict(X)) == {"neutral"}


def test_champion_moves_only_when_a_version_beats_it(lake):
    import mlflow

    steps = {s["tag"]: s for s in lake["steps"]}
    score = {t: s["row"]["balanced_accuracy"] for t, s in steps.items()}
    assert score["bad"] < score["chance"] < score["good"]  # the three students are ordered as designed
    assert score["chance"] == pytest.approx(1 / 3)  # a constant answer: chance on three gold labels
    # first scored -> champion; worse -> kept; better -> moved
    assert [s["champion"] for s in lake["steps"]] == ["1", "1", "3"]
    assert "first scored" in steps["chance"]["row"]["champion"]
    assert "does not beat" in steps["bad"]["row"]["champion"] and "kept" in steps["bad"]["row"]["champion"]
    assert "beats" in steps["good"]["row"]["champion"] and "champion -> v3" in steps["good"]["row"]["champion"]
    client = mlflow.MlflowClient()
    v2 = client.get_model_version(NAME, "2")
    assert float(v2.tags["prismatic.ood_score"]) == pytest.approx(score["bad"], abs=1e-6)
    assert v2.tags["prismatic.champion_decision"] == steps["bad"]["row"]["champion"]


def test_eval_of_the_champion_uri_matches_the_folder_and_reruns_change_nothing(lake):
    import mlflow

    from prismatic.stages.base import Context
    from prismatic.stages.eval import EvalStage
    from prismatic.train import eval_stage
    from prismatic.train.benchmarks import load_file
    from prismatic.train.evaluate import evaluate_student
    from prismatic.train.students import load_student

    settings, store = lake["settings"], lake["store"]
    good = lake["steps"][2]["report"]
    spec = f"again={lake['bench']}"  # a benchmark name this student has no row for yet
    want = evaluate_student(load_student(good.path, settings), load_file(lake["bench"], "again"), settings)
    # `prism eval --model models:/prismatic_student@champion -b again=FILE`, through the stage the CLI builds
    stage = EvalStage()
    rows = stage.run(Context(settings, store), model=f"models:/{NAME}@champion", benchmark=[spec], method=None)
    row = rows[0]
    assert row["status"] == "evaluated" and row["run_id"] == good.student_id
    assert row["accuracy"] == pytest.approx(want.accuracy) and row["n"] == len(ROWS)
    assert row["model"] == f"models:/{NAME}@champion"
    assert (row["model_uri"], row["model_version"]) == (f"models:/{NAME}/3", "3")
    stored = {(r["run_id"], r["benchmark"]): r for r in store.read_arrow("eval_results").to_pylist()}
    assert stored[(good.student_id, "again")]["model_version"] == "3"

    # the same student on the same content with the same method again: no table version, no MLflow run
    version = store.version("eval_results")
    n_runs = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    again = eval_stage(store, settings, model_path=good.path, benchmarks=[str(lake["bench"]), spec])
    assert [r["status"] for r in again] == ["unchanged", "unchanged"]
    assert [r["accuracy"] for r in again] == [stored[(good.student_id, b)]["accuracy"] for b in ("shifted", "again")]
    assert store.version("eval_results") == version
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == n_runs
    assert str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version) == "3"


def test_loglik_and_generate_rows_coexist_and_changed_content_is_reevaluated(tmp_path, tiny_model):
    from prismatic.tables import open_store
    from prismatic.train import eval_stage

    settings = load_config(
        overrides=[f"data_root={tmp_path / 'lake'}", "storage.engine=delta-rs", "tracking.enabled=false"]
    )
    store = open_store(settings, None)
    bench = write_bench(tmp_path / "pairs.jsonl", ROWS[:4])
    loglik = eval_stage(store, settings, model_path=tiny_model, benchmarks=[str(bench)], method="loglik")
    generate = eval_stage(store, settings, model_path=tiny_model, benchmarks=[str(bench)], method="generate")
    table = store.read_arrow("eval_results").to_pylist()
    assert sorted(r["eval_method"] for r in table) == ["generate", "loglik"]
    assert {(r["run_id"], r["benchmark"]) for r in table} == {(loglik[0]["run_id"], "pairs")}
    assert generate[0]["status"] == "evaluated"
    version = store.version("eval_results")
    for method in ("loglik", "generate"):
        rerun = eval_stage(store, settings, model_path=tiny_model, benchmarks=[str(bench)], method=method)
        assert rerun[0]["status"] == "unchanged"
    assert store.version("eval_results") == version
    write_bench(bench, ROWS[:5])  # the benchmark's content changed: evaluated again, its row replaced
    changed = eval_stage(store, settings, model_path=tiny_model, benchmarks=[str(bench)], method="loglik")
    assert changed[0]["status"] == "evaluated" and changed[0]["n"] == 5
    assert store.version("eval_results") == version + 1
    rows = {r["eval_method"]: r for r in store.read_arrow("eval_results").to_pylist()}
    assert (rows["loglik"]["n"], rows["generate"]["n"]) == (5, 4)
    assert np.isfinite(rows["loglik"]["accuracy"])
