"""Evaluation on tiny hand-made benchmarks: known accuracies, 2-way mapping, unparseable answers count as wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prismatic.config import load_config
from prismatic.train.benchmarks import NLI2, NLI3, Benchmark, load_file
from prismatic.train.evaluate import evaluate_student, math_correct, parse_nli_answer, score_math, score_nli
from prismatic.train.probe import ProbeStudent

NLI_ROWS = [
    {"premise": "A dog runs in a park.", "hypothesis": "An animal is outside.", "label": "entailment"},
    {"premise": "A dog runs in a park.", "hypothesis": "The dog is asleep.", "label": "contradiction"},
    {"premise": "A dog runs in a park.", "hypothesis": "The dog is chasing a ball.", "label": "neutral"},
    {"premise": "Two men cook.", "hypothesis": "People make food.", "label": "entailment"},
    {"premise": "Two men cook.", "hypothesis": "Nobody is cooking.", "label": "contradiction"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def constant_probe(label: str, labels=("contradiction", "entailment", "neutral"), dim=4) -> ProbeStudent:
    """A probe that always predicts ``label`` (zero weights, one positive intercept): its accuracy is known."""
    intercept = np.array([1.0 if x == label else 0.0 for x in labels])
    return ProbeStudent(np.zeros((len(labels), 4 * dim)), intercept, list(labels))


MINILM_DIM = 384  # all-MiniLM-L6-v2: eval_stage embeds with the real encoder


def fake_embed(texts):
    return np.stack([np.full(4, float(len(t) % 7) + 1, np.float32) for t in texts])


@pytest.mark.parametrize(("text", "label"), [
    ("Entailment.", "entailment"), ("The answer is neutral", "neutral"), ("it contradicts", "contradiction"),
    ("non-entailment", "non-entailment"), ("Not entailed, I think", "non-entailment"),
    ("not_entailment", "non-entailment"), ("Yes", "entailment"), ("no.", "non-entailment"),
    ("neutral, not contradiction", "neutral"), ("I am not sure", None), ("", None), (None, None),
])  # fmt: skip
def test_parse_nli_answer(text, label):
    assert parse_nli_answer(text) == label


def test_score_nli_counts_unparseable_as_wrong():
    b = Benchmark("t", "nli", "id", [dict(r) for r in NLI_ROWS], NLI3)
    preds = ["entailment", "neutral", "neutral", None, "contradiction"]
    res = score_nli(preds, b)
    expected = sum(p == r["label"] for p, r in zip(preds, NLI_ROWS, strict=True))
    assert (res.n, res.correct, res.unparsed) == (5, expected, 1) and res.accuracy == pytest.approx(3 / 5)


def test_two_way_benchmark_folds_three_way_predictions():
    rows = [
        {"premise": "p", "hypothesis": "h", "label": lab}
        for lab in ["entailment", "non-entailment", "non-entailment", "non-entailment"]
    ]
    b = Benchmark("two", "nli", "ood", rows, NLI2)
    res = score_nli(["entailment", "neutral", "contradiction", "entailment"], b)
    assert (res.correct, res.unparsed, res.accuracy) == (3, 0, 0.75)
    assert res.predictions == ["entailment", "non-entailment", "non-entailment", "entailment"]


def test_balanced_accuracy_is_the_mean_recall_per_gold_label():
    rows = [
        {"premise": "p", "hypothesis": "h", "label": lab}
        for lab in ["entailment", "non-entailment", "non-entailment", "non-entailment"]
    ]
    b = Benchmark("two", "nli", "ood", rows, NLI2)
    # a constant majority answer: accuracy 3/4, but recall 0 on entailment and 1 on non-entailment -> 1/2
    const = score_nli(["contradiction"] * 4, b)
    assert const.accuracy == 0.75 and const.balanced_accuracy == 0.5
    # recall 1 on entailment, 2/3 on non-entailment (one unparsed answer counts as wrong)
    res = score_nli(["entailment", "neutral", None, "contradiction"], b)
    assert res.balanced_accuracy == pytest.approx((1 + 2 / 3) / 2)
    three = score_nli(
        ["entailment", "neutral", "neutral", "entailment", "entailment"],
        Benchmark("t", "nli", "id", [dict(r) for r in NLI_ROWS], NLI3),
    )
    assert three.balanced_accuracy == pytest.approx((1.0 + 0.0 + 1.0) / 3)  # entailment, contradiction, neutral
    assert np.isnan(
        score_math(["1"], Benchmark("m", "math", "ood", [{"problem": "?", "answer": "1"}])).balanced_accuracy
    )


def test_math_verify_scoring():
    assert math_correct("The answer is \\boxed{9}.", "9") is True
    assert math_correct("So x = 1/2", "0.5") is True
    assert math_correct("It is 10", "9") is False
    assert math_correct("I do not know", "9") is None
    assert math_correct("", "9") is None
    b = Benchmark("m", "math", "ood", [{"problem": "p", "answer": a} for a in ["9", "4", "\\frac{1}{2}", "7"]])
    res = score_math(["\\boxed{9}", "5", "$0.5$", "no idea"], b)
    assert (res.n, res.correct, res.unparsed) == (4, 2, 1) and res.accuracy == 0.5


def test_probe_accuracy_on_hand_made_files(tmp_path):
    """Constant probes have known accuracies: the share of their label (2-way: after folding)."""
    settings = load_config(overrides=[f"data_root={tmp_path}"])
    three = load_file(write_jsonl(tmp_path / "three.jsonl", NLI_ROWS))
    two = load_file(write_jsonl(tmp_path / "two.jsonl", [
        {"premise": r["premise"], "hypothesis": r["hypothesis"],
         "label": "entailment" if r["label"] == "entailment" else "not_entailment"} for r in NLI_ROWS]))  # fmt: skip
    assert two.labels == NLI2
    known = [("entailment", 2 / 5, 2 / 5), ("neutral", 1 / 5, 3 / 5), ("contradiction", 2 / 5, 3 / 5)]
    for label, acc3, acc2 in known:
        probe = constant_probe(label)
        assert evaluate_student(probe, three, settings, embed=fake_embed).accuracy == pytest.approx(acc3)
        assert evaluate_student(probe, two, settings, embed=fake_embed).accuracy == pytest.approx(acc2)
    math = Benchmark("m", "math", "ood", [{"problem": "1+1", "answer": "2"}])
    with pytest.raises(Exception, match="NLI only"):
        evaluate_student(constant_probe("neutral"), math, settings, embed=fake_embed)


def test_eval_stage_writes_eval_results_once(tmp_path):
    """eval_stage: latest student by default, rows MERGEd on (student, benchmark, method), MLflow metrics logged;
    an unchanged re-evaluation writes nothing."""
    from prismatic.tables import open_store
    from prismatic.train import eval_stage
    from prismatic.train.students import MANIFEST

    settings = load_config(overrides=[f"data_root={tmp_path / 'lake'}", "storage.engine=delta-rs"])
    store = open_store(settings, None)
    bench = write_jsonl(tmp_path / "bench.jsonl", NLI_ROWS)
    for sid, label, when in [
        ("old", "neutral", "2020-01-01T00:00:00+00:00"),
        ("new", "entailment", "2021-01-01T00:00:00+00:00"),
    ]:
        folder = constant_probe(label, dim=MINILM_DIM).save(settings.root / "students" / sid)
        (folder / MANIFEST).write_text(
            json.dumps(
                {"student_id": sid, "kind": "probe", "created_at": when, "lineage": {"subset_id": f"sub-{sid}"}}
            )
        )
    rows = eval_stage(store, settings, benchmarks=[str(bench)])
    assert [(r["run_id"], r["benchmark"], r["accuracy"], r["n"]) for r in rows] == [("new", "bench", 0.4, 5)]
    version = store.version("eval_results")
    again = eval_stage(store, settings, benchmarks=[str(bench)])  # same student, same data: skipped
    assert [(r["status"], r["accuracy"]) for r in again] == [("unchanged", 0.4)]
    assert store.version("eval_results") == version
    eval_stage(store, settings, model_path=settings.root / "students" / "old", benchmarks=[f"again={bench}"])
    table = sorted(
        (r["run_id"], r["benchmark"], r["accuracy"], r["subset_id"])
        for r in store.read_arrow("eval_results").to_pylist()
    )
    assert table == [("new", "bench", 0.4, "sub-new"), ("old", "again", 0.2, "sub-old")]

    import mlflow

    from prismatic import tracking

    tracking.setup(settings)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len([r for r in runs if r.info.run_name == "eval"]) == 2  # the unchanged re-evaluation logged no run
    assert {r.data.metrics["bench_accuracy"] for r in runs if "bench_accuracy" in r.data.metrics} == {0.4}
