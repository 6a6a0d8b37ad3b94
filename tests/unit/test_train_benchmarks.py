"""Benchmark loaders on tiny hand-made files in each source's layout (no download, no model)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from prismatic.assets import ASSETS
from prismatic.errors import InputError
from prismatic.train.benchmarks import (
    NLI2,
    NLI3,
    canonical_label,
    collapse_label,
    gsm_symbolic_rows,
    infer_labels,
    leading_number,
    load_asdiv,
    load_benchmark,
    load_bigbench_task,
    load_champ,
    load_file,
    load_gsm_symbolic,
    load_snli,
    split_bigbench_nli,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_nli_file_three_way(tmp_path):
    f = write_jsonl(tmp_path / "mine.jsonl", [
        {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": "Entailment"},
        {"premise": "A dog runs.", "hypothesis": "A cat sleeps.", "label": "neutral"},
        {"premise": "A dog runs.", "hypothesis": "The dog sits still.", "label": "contradiction"},
    ])  # fmt: skip
    b = load_benchmark(str(f))
    assert (b.name, b.task, b.split, b.labels) == ("mine", "nli", "ood", NLI3)
    assert [e["label"] for e in b.examples] == ["entailment", "neutral", "contradiction"]


def test_user_nli_file_two_way_synonyms_and_named_spec(tmp_path):
    f = write_jsonl(tmp_path / "two.jsonl", [
        {"premise": "p1", "hypothesis": "h1", "label": "not_entailment"},
        {"premise": "p2", "hypothesis": "h2", "label": "entailment"},
        {"premise": "p3", "hypothesis": "h3", "label": "non-entailment"},
    ])  # fmt: skip
    b = load_benchmark(f"custom={f}")
    assert b.name == "custom" and b.labels == NLI2
    assert [e["label"] for e in b.examples] == ["non-entailment", "entailment", "non-entailment"]


def test_sidecar_declares_label_map(tmp_path):
    f = write_jsonl(tmp_path / "rte.jsonl", [
        {"premise": "p1", "hypothesis": "h1", "label": 1},
        {"premise": "p2", "hypothesis": "h2", "label": 0},
    ])  # fmt: skip
    (tmp_path / "rte.meta.json").write_text(json.dumps({
        "name": "rte", "split": "id", "labels": list(NLI2), "label_map": {"1": "entailment", "0": "non-entailment"},
    }))  # fmt: skip
    b = load_file(f)
    assert (b.name, b.split, b.labels) == ("rte", "id", NLI2)
    assert [e["label"] for e in b.examples] == ["entailment", "non-entailment"]


def test_bad_label_and_bad_rows_are_clear_errors(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"premise": "p", "hypothesis": "h", "label": "entailment"},
        {"premise": "p", "hypothesis": "h", "label": "maybe"},
    ])  # fmt: skip
    with pytest.raises(InputError, match="not NLI labels"):
        load_file(f)
    g = write_jsonl(tmp_path / "empty_text.jsonl", [{"premise": " ", "hypothesis": "h", "label": "neutral"}])
    with pytest.raises(InputError, match="empty_text.jsonl:1"):
        load_file(g)
    with pytest.raises(InputError, match="unknown benchmark"):
        load_benchmark("no_such_benchmark")


def test_math_file_aliases(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"problem": "1+1?", "answer": 2}, {"question": "2+2?", "solution": "4"}])
    b = load_file(f)
    assert b.task == "math" and b.labels == ()
    assert b.examples == [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}]


def test_snli_layout_drops_no_gold(tmp_path):
    f = write_jsonl(tmp_path / "snli_1.0_test.jsonl", [
        {"sentence1": "A man eats.", "sentence2": "Someone eats.", "gold_label": "entailment"},
        {"sentence1": "A man eats.", "sentence2": "A man sleeps.", "gold_label": "-"},
        {"sentence1": "A man eats.", "sentence2": "He is hungry.", "gold_label": "neutral"},
    ])  # fmt: skip
    b = load_snli(f)
    assert len(b) == 2 and b.skipped == {"no_gold_label": 1} and b.labels == NLI3


BIGBENCH_EXAMPLES = {
    "presuppositions_as_nli": [
        {"input": "Sentence 1: The cat stopped eating. \nSentence 2: The cat was eating.\n\nThe answer is: ",
         "target_scores": {"entailment": 1, "neutral": 0, "contradiction": 0}},
        {"input": "Sentence 1: Ann left. \nSentence 2: Ann never left.\n\nThe answer is: ",
         "target_scores": {"entailment": 0, "neutral": 0, "contradiction": 1}},
    ],
    "epistemic_reasoning": [
        {"input": "Premise: Amelia assumes that Joseph knows that a dog runs. Hypothesis: Joseph knows that a dog"
                  " runs.",
         "target_scores": {"entailment": 0, "non-entailment": 1}},
    ],
    "analytic_entailment": [
        {"input": "Lina met two nurses. So, Lina met at least one woman.",
         "target_scores": {"entailment": 0, "no-entailment": 1}},
        {"input": "Beth owns a two-story house. Therefore she owns a house.",
         "target_scores": {"entailment": 1, "no-entailment": 0}},
        {"input": "A tie.", "target_scores": {"entailment": 1, "no-entailment": 1}},
    ],
    "entailed_polarity": [
        {"input": "Fact: The report was admitted to be incorrect. Q: Was the report incorrect?",
         "target_scores": {"no": 0.0, "yes": 1.0}},
        {"input": "Fact: Ed failed to open the door. Q: Did Ed open the door?",
         "target_scores": {"no": 1.0, "yes": 0.0}},
    ],
}  # fmt: skip


@pytest.mark.parametrize("task", sorted(BIGBENCH_EXAMPLES))
def test_bigbench_task_json_layout(tmp_path, task):
    d = tmp_path / "bigbench" / "benchmark_tasks" / task
    d.mkdir(parents=True)
    (d / "task.json").write_text(json.dumps({"name": task, "examples": BIGBENCH_EXAMPLES[task]}))
    b = load_bigbench_task(d / "task.json")
    assert b.name == task and b.task == "nli" and b.split == "ood"
    expected = {
        "presuppositions_as_nli": [("The cat stopped eating.", "The cat was eating.", "entailment"),
                                   ("Ann left.", "Ann never left.", "contradiction")],
        "epistemic_reasoning": [("Amelia assumes that Joseph knows that a dog runs.", "Joseph knows that a dog runs.",
                                 "non-entailment")],
        "analytic_entailment": [("Lina met two nurses.", "Lina met at least one woman.", "non-entailment"),
                                ("Beth owns a two-story house.", "She owns a house.", "entailment")],
        "entailed_polarity": [("The report was admitted to be incorrect.", "Was the report incorrect?", "entailment"),
                              ("Ed failed to open the door.", "Did Ed open the door?", "non-entailment")],
    }[task]  # fmt: skip
    assert [(e["premise"], e["hypothesis"], e["label"]) for e in b.examples] == expected
    assert b.labels == (NLI3 if task == "presuppositions_as_nli" else NLI2)
    if task == "analytic_entailment":
        assert b.skipped == {"tied_gold": 1}
    # the same file through the generic entry point
    assert load_benchmark(str(d / "task.json")).examples == b.examples


def test_bigbench_builtin_resolves_through_the_asset(tmp_path, monkeypatch):
    root = tmp_path / "assets"
    d = root / "bigbench" / "bigbench" / "benchmark_tasks" / "entailed_polarity"
    d.mkdir(parents=True)
    (d / "task.json").write_text(json.dumps({"examples": BIGBENCH_EXAMPLES["entailed_polarity"]}))
    (root / "bigbench" / ".complete").write_text("test\n")
    monkeypatch.setenv("PRISM_ASSETS", str(root))
    # a one-task stand-in: the asset's members (checked on every load) narrowed to the file written above
    member = "bigbench/benchmark_tasks/entailed_polarity/task.json"
    fake = dataclasses.replace(ASSETS["bigbench"], members={member: ""})
    monkeypatch.setitem(ASSETS, "bigbench", fake)
    b = load_benchmark("entailed_polarity")
    assert b.name == "entailed_polarity" and len(b) == 2


def test_asdiv_layout_leading_number(tmp_path):
    f = write_jsonl(tmp_path / "test.jsonl", [
        {"passage": "Seven red apples and two green apples are in the basket.",
         "question": "How many apples are in the basket?", "answer": "9 apples"},
        {"passage": "Mrs. Hilt has two pennies.", "question": "Who has more money?", "answer": "Mrs. Hilt"},
        {"passage": "A road is long.", "question": "How long?", "answer": "1,250 km"},
    ])  # fmt: skip
    b = load_asdiv(f)
    assert [e["answer"] for e in b.examples] == ["9", "1250"]
    assert b.examples[0]["problem"].startswith("Seven red apples") and b.examples[0]["problem"].endswith("basket?")
    assert b.skipped == {"non_numeric": 1}


def test_champ_layout(tmp_path):
    f = tmp_path / "v0.json"
    f.write_text(json.dumps({"problems": {
        "P_2": {"_text": "What is 2+3?", "_answer": "5", "category": "x"},
        "P_1": {"_text": "Find x if x^2=4 and x>0.", "_answer": "2"},
        "P_3": {"_text": "", "_answer": "1"},
    }, "concepts": {}}))  # fmt: skip
    b = load_champ(f)
    assert b.examples == [
        {"problem": "Find x if x^2=4 and x>0.", "answer": "2"},
        {"problem": "What is 2+3?", "answer": "5"},
    ]
    assert b.skipped == {"malformed": 1}


def test_gsm_symbolic_generator_and_missing_package():
    calls = []

    def fake_create(name, size, seed):
        calls.append((name, size, seed))
        return [{"question": f"What is {i} + {seed}?", "answer": str(i + seed), "metadata": {}} for i in range(size)]

    b = load_gsm_symbolic(size=3, seed=7, create_dataset=fake_create)
    assert calls == [("gsm_symbolic", 3, 7)]
    assert [e["answer"] for e in b.examples] == ["7", "8", "9"] and b.split == "id"
    try:
        import reasoning_gym  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"needs reasoning-gym: pip install -e '\.\[gsm\]'"):
            load_gsm_symbolic(size=2)


def test_gsm_symbolic_rows_carry_the_worked_solution():
    def fake_create(name, size, seed):
        items = [{"question": f" Q{i}? ", "answer": str(i), "metadata": {"answer_cot": f"{i} = {i}\n#### {i}"}}
                 for i in range(size)]  # fmt: skip
        items[1]["metadata"] = {}  # no worked solution: left out
        return items

    rows = gsm_symbolic_rows(3, seed=0, create_dataset=fake_create)
    assert rows == [{"prompt": "Q0?", "completion": "0 = 0\n#### 0"}, {"prompt": "Q2?", "completion": "2 = 2\n#### 2"}]


def _math_bench(answers):
    from prismatic.train.benchmarks import Benchmark

    return Benchmark("m", "math", "ood", [{"problem": f"p{i}", "answer": a} for i, a in enumerate(answers)])


def test_with_choices_draws_distractors_from_other_answers():
    answers = ["1", "2", "3", "1,000", "1000.0", "5", "6", "7"]
    b = _math_bench(answers).with_choices(4, seed=0)
    assert b.name == "m+mc4" and b.task == "math" and b.split == "ood" and len(b) == len(answers)
    gold_values = {"1", "2", "3", "1,000", "1000.0", "5", "6", "7"}
    golds = []
    for e, a in zip(b.examples, answers, strict=True):
        opts = e["choices"]
        assert e["answer"] == a and a in opts and len(opts) == 4 == len(set(opts))
        assert set(opts) <= gold_values  # every distractor is another problem's answer
        if a in ("1,000", "1000.0"):  # the same value written twice is never its own distractor
            assert not {"1,000", "1000.0"} - {a} & set(opts)
        golds.append(opts.index(a))
    assert len(set(golds)) > 1  # the gold answer's position is shuffled
    assert b.examples == _math_bench(answers).with_choices(4, seed=0).examples  # seeded
    assert b.examples != _math_bench(answers).with_choices(4, seed=1).examples
    with pytest.raises(InputError, match="distinct answers"):
        _math_bench(["1", "2", "2.0"]).with_choices(3)
    with pytest.raises(InputError, match="math"):
        load_snli_like().with_choices(4)


def load_snli_like():
    from prismatic.train.benchmarks import Benchmark

    return Benchmark("n", "nli", "id", [{"premise": "a", "hypothesis": "b", "label": "neutral"}], NLI3)


def test_mc_suffix_loads_the_multiple_choice_twin(tmp_path):
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]
    f = write_jsonl(tmp_path / "sums.jsonl", rows)
    b = load_benchmark(f"{f}+mc3")
    assert b.name == "sums+mc3" and all(len(e["choices"]) == 3 for e in b.examples)
    named = load_benchmark(f"mine={f}+mc3")
    assert named.name == "mine+mc3" and [e["answer"] for e in named.examples] == [e["answer"] for e in b.examples]
    from prismatic.train.evaluate import has_choices

    assert has_choices(b) and not has_choices(load_benchmark(str(f)))


def test_labels_helpers():
    assert canonical_label("Not Entailment") == "non-entailment"
    assert canonical_label("no-entailment") == canonical_label("NO") == "non-entailment"
    assert canonical_label("maybe") is None
    assert collapse_label("neutral", NLI2) == "non-entailment"
    assert collapse_label("contradiction", NLI2) == "non-entailment"
    assert collapse_label("non-entailment", NLI3) is None
    assert infer_labels(["entailment", "neutral"]) == NLI3
    assert infer_labels(["yes", "no"]) == NLI2
    with pytest.raises(InputError):
        infer_labels(["entailment", "neutral", "non-entailment"])
    assert leading_number("9 apples") == "9" and leading_number("-2.5 m") == "-2.5"
    assert leading_number("Yes") is None
    assert split_bigbench_nli("single sentence only") is None


def test_sample_is_seeded_and_named(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"problem": f"{i}+1?", "answer": str(i + 1)} for i in range(50)])
    b = load_file(f)
    s1, s2, s3 = b.sample(10, 0), b.sample(10, 0), b.sample(10, 1)
    assert s1.name == "m@10:0" and len(s1) == 10
    assert s1.examples == s2.examples and s1.examples != s3.examples
    assert s1.fingerprint() == s2.fingerprint() != b.fingerprint()
    assert b.sample(None) is b and b.sample(500) is b
