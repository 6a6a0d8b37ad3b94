"""Prompt templates, problem / NLI parsers and the task interface (prismatic.synth.tasks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prismatic.config import REPO_ROOT, SynthConfig
from prismatic.errors import ConfigError
from prismatic.synth.tasks import (
    MathProblem,
    MathTask,
    NLIItem,
    NLITask,
    Prompts,
    Rejected,
    build_nli_prompts,
    build_nli_solution_prompts,
    build_problem_prompts,
    build_solution_prompts,
    get_task,
    load_prompts,
    parse_nli,
    parse_problems,
    render,
    sample_exemplar_groups,
)
from prismatic.synth.types import Reason

EXEMPLARS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A train travels 60 km in 1.5 hours. What is its average speed in km/h?",
    "What is the sum of the first 10 positive integers?",
    "A rectangle is 4 cm by 7 cm. What is its area?",
    "If 5 pens cost $2.50, how much do 8 pens cost?",
]


@pytest.fixture(scope="module")
def prompts() -> Prompts:
    return load_prompts(REPO_ROOT / "conf" / "prompts.yaml")


# ---------------------------------------------------------------- templates


def test_shipped_prompts_file_is_valid_and_found_from_any_cwd(tmp_path, monkeypatch, prompts):
    monkeypatch.chdir(tmp_path)
    assert load_prompts("conf/prompts.yaml").templates == prompts.templates
    assert r"\boxed{}" in prompts.get("math", "solve")


def test_render_keeps_latex_braces_and_requires_values():
    assert render(r"Put it in \boxed{} : {{ x }}", x="{{y}}") == r"Put it in \boxed{} : {{y}}"
    with pytest.raises(KeyError, match="problem"):
        render("{{problem}}")


def test_prompts_file_missing_placeholder_is_a_config_error(tmp_path, prompts):
    data = {t: dict(v) for t, v in prompts.templates.items()}
    data["math"]["solve"] = "Solve it."
    with pytest.raises(ConfigError, match=r"math.solve lacks \{\{problem\}\}"):
        Prompts.from_mapping(data)
    bad = tmp_path / "p.yaml"
    bad.write_text("math: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_prompts(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_prompts(tmp_path / "nope.yaml")


def test_build_problem_prompts(prompts):
    cfg = SynthConfig(problems_per_call=2)
    groups = sample_exemplar_groups(EXEMPLARS, k=5, groups=3, seed=1)
    assert len(groups) == 3 and all(len(set(g)) == 5 for g in groups)
    assert sample_exemplar_groups(EXEMPLARS, 5, 3, seed=1) == groups  # seeded
    out = build_problem_prompts(groups, cfg, prompts)
    assert len(out) == 3
    for g, p in zip(groups, out, strict=True):
        assert "Write 2 new math word problems" in p and "Here are 5 example" in p
        assert all(x in p for x in g)
        assert "{{" not in p
    with pytest.raises(ValueError, match="empty"):
        build_problem_prompts([[]], cfg, prompts)


def test_build_solution_prompts(prompts):
    (p,) = build_solution_prompts("What is 2 + 2?", prompts)
    assert "What is 2 + 2?" in p and r"\boxed{}" in p
    assert len(build_solution_prompts([MathProblem("a b c"), {"problem": "d e f"}], prompts)) == 2


def test_nli_prompts_do_not_leak_the_label_to_the_solver(prompts):
    ex = [{"premise": "A man sleeps.", "hypothesis": "A man is awake.", "label": "contradiction"}]
    (gen,) = build_nli_prompts([ex], SynthConfig(task="nli"), prompts)
    assert "A man sleeps." in gen and "contradiction" in gen and "entailment, neutral or contradiction" in gen
    (solve,) = build_nli_solution_prompts([NLIItem("A dog runs.", "An animal moves.", "entailment")], prompts)
    assert "A dog runs." in solve and "An animal moves." in solve
    assert "Label:" not in solve


# ---------------------------------------------------------------- problem parser


def test_parse_problems_markers_with_preamble_and_solutions():
    text = """Sure! Here are two new problems:

**Problem 1:** A baker makes 24 muffins and sells 3/4 of them. How many muffins are left?

Solution: 24 * 1/4 = 6, so \\boxed{6}.

**Problem 2:** A car uses 8 liters of fuel per 100 km. How much fuel does it need for 250 km?
"""
    out = parse_problems(text)
    assert out == [
        "A baker makes 24 muffins and sells 3/4 of them. How many muffins are left?",
        "A car uses 8 liters of fuel per 100 km. How much fuel does it need for 250 km?",
    ]


A = "Alice reads 12 pages a day for a week. How many pages?"
B = "A box holds 6 eggs; how many boxes for 45 eggs?"


@pytest.mark.parametrize(
    "text",
    [
        f"Problem 1: {A}\nProblem 2: {B}",
        f"### Problem 1\n{A}\n\n### Problem 2\n{B}",
        f"1. {A}\n2. {B}",
        f"Question 1) {A}\n\nQuestion 2) {B}",
        f"Problem: {A}\nProblem: {B}",
        f"New problem #1 - {A}\n\nNew problem #2 - {B}",
    ],
)
def test_parse_problems_formats(text):
    assert parse_problems(text) == [A, B]


def test_parse_problems_unmarked_single_problem_and_limits():
    out = parse_problems("Here is a new problem:\nA tank fills at 5 L/min. How long to fill 60 L?")
    assert out == ["A tank fills at 5 L/min. How long to fill 60 L?"]
    text = "Problem 1: one two three four five?\nProblem 2: six seven eight nine ten?\nProblem 3: a b c d e?"
    assert len(parse_problems(text, max_problems=2)) == 2
    # repeats and fragments are dropped
    assert parse_problems(
        "Problem 1: How many legs do 3 cats have?\nProblem 2: How many legs do 3 cats have?\nProblem 3: ok"
    ) == ["How many legs do 3 cats have?"]


def test_parse_problems_keeps_instructions_that_start_with_answer():
    text = f"Problem 1: A rope is 3 m long and is cut into 4 equal parts.\nAnswer in centimeters.\nProblem 2: {B}"
    assert parse_problems(text)[0] == "A rope is 3 m long and is cut into 4 equal parts.\nAnswer in centimeters."
    assert parse_problems(f"Problem 1: {A}\n**Answer:** 84\nProblem 2: {B}") == [A, B]
    assert parse_problems(f"Problem 1: {A}\nStep 1: multiply.\n\nProblem 2: {B}\n### Solution\n6 * 8") == [A, B]


def test_parse_problems_real_smollm2_output():
    # a generation of SmolLM2-135M-Instruct on the shipped prompt, cut off at max_tokens
    text = """ Here are 5 example math word problems:

Problem 1: What is the cost of 8 coffee cups?

Rule: Cm = m*n, where cm = m*n is the area of a rectangle.
The answer is 15 * n (n should be a positive integer).

Problem 2: A snail is at the bottom of a 20-foot well. Each day, it climbs 3 feet up and sleeps 2 feet down. \
How many days will it take for the snail to reach the top of the well?

Rules: (day """
    assert parse_problems(text, truncated=True) == [
        "What is the cost of 8 coffee cups?",
        "A snail is at the bottom of a 20-foot well. Each day, it climbs 3 feet up and sleeps 2 feet down. "
        "How many days will it take for the snail to reach the top of the well?",
    ]
    garbled = "Addressed to #1 and 2:\n1. The area of a rectangle is fixed to 4 cm by 7 cm here.\n2. 2. Answer: 20."
    assert parse_problems(garbled) == ["The area of a rectangle is fixed to 4 cm by 7 cm here."]


def test_parse_problems_drops_a_cut_off_last_problem():
    text = f"Problem 1: {A}\nProblem 2: A shop sells 3 kinds of tea and each"
    assert parse_problems(text, truncated=True) == [A]
    assert parse_problems(text) == [A, "A shop sells 3 kinds of tea and each"]
    r = parse_problems("Problem 1: A shop sells 3 kinds of tea and each", truncated=True)
    assert isinstance(r, Rejected) and "cut off" in r.detail


def test_parse_problems_real_qwen_output_with_quoted_problems():
    # Qwen2.5-Coder-0.5B (bench/synth_yield.py): each problem quoted, repeating its marker, then an answer line
    text = (
        'Problem 1:\n"Problem 1: The student scored 250 out of 500 marks. How many marks did she lose?"\n'
        "Answer: 250\n\nProblem 2:\n\u201cProblem 2: A box holds 12 pens. How many pens are in 3 boxes?\u201d\n"
        'Answer: 36\n\nProblem 3:\n"Sam has 4 apples and buys 6 more. How many apples does he have?"'
    )
    assert parse_problems(text) == [
        "The student scored 250 out of 500 marks. How many marks did she lose?",
        "A box holds 12 pens. How many pens are in 3 boxes?",
        "Sam has 4 apples and buys 6 more. How many apples does he have?",
    ]
    # quotes inside a problem are kept
    assert parse_problems('Problem 1: Ann said "hi" to 3 friends. How many friends did she greet?') == [
        'Ann said "hi" to 3 friends. How many friends did she greet?'
    ]


def test_parse_problems_cuts_analysis_and_steps_sections():
    # real Qwen2.5-Coder-0.5B output: the problem is followed by its own working under "Analysis:" / "Steps:"
    text = (
        "Problem 1: Chloe packs 3 boxes with 5 shells in each box. How many shells does she pack?\nAnalysis:\n"
        "- Calculate: 3 * 5 = 15\n\nProblem 2: Rosa has 40 stamps and receives 72 more. How many stamps does she"
        " have now?\nSteps:\n1. Identify the stamps she had (40).\n2. Add 72."
    )
    assert parse_problems(text) == [
        "Chloe packs 3 boxes with 5 shells in each box. How many shells does she pack?",
        "Rosa has 40 stamps and receives 72 more. How many stamps does she have now?",
    ]


def test_parse_problems_numbered_list_inside_a_marked_problem_stays_in_it():
    text = (
        f"Problem 1: Three friends:\n1. Ann has 3 coins.\n2. Bob has 5 coins.\nHow many coins in all?\nProblem 2: {B}"
    )
    out = parse_problems(text)
    assert out == ["Three friends:\n1. Ann has 3 coins.\n2. Bob has 5 coins.\nHow many coins in all?", B]


@pytest.mark.parametrize("text", ["", "   \n", "Problem 1:\nProblem 2:", "ok", "Problem 1: hi"])
def test_parse_problems_unparseable(text):
    r = parse_problems(text)
    assert isinstance(r, Rejected) and r.reason == Reason.UNPARSEABLE and r.detail


# ---------------------------------------------------------------- NLI parser


def test_parse_nli_messy_output():
    text = """Here are the examples:

**Premise 1:** A woman is riding a bicycle down
a busy street.
**Hypothesis 1:** A person is outdoors.
**Label 1:** Entailment

- Premise: Two kids play chess in a park.
- Hypothesis: The kids are asleep.
- Label: contradicts

Premise: A chef cooks pasta.
Hypothesis: The chef is famous.
Label: maybe
"""
    out = parse_nli(text)
    assert out == [
        NLIItem("A woman is riding a bicycle down a busy street.", "A person is outdoors.", "entailment"),
        NLIItem("Two kids play chess in a park.", "The kids are asleep.", "contradiction"),
    ]


def test_parse_nli_rejections_say_why():
    r = parse_nli("Premise: A cat sleeps.\nHypothesis: The cat is tired.\nLabel: perhaps")
    assert isinstance(r, Rejected) and r.reason == Reason.UNPARSEABLE and "unknown label 'perhaps'" in r.detail
    r = parse_nli("Premise: A cat sleeps.\nLabel: neutral")
    assert isinstance(r, Rejected) and "missing hypothesis" in r.detail
    r = parse_nli("just some prose")
    assert isinstance(r, Rejected) and "no Premise" in r.detail
    assert isinstance(parse_nli(""), Rejected)


def test_parse_nli_custom_labels():
    text = "Premise: It rains.\nHypothesis: The ground is wet.\nLabel: non-entailment"
    out = parse_nli(text, labels=("entailment", "non-entailment"))
    assert out == [NLIItem("It rains.", "The ground is wet.", "non-entailment")]


# ---------------------------------------------------------------- task interface


def test_math_task_end_to_end(prompts):
    cfg = SynthConfig(task="math", tau=2, n_solutions=3)
    task = get_task(cfg, prompts)
    assert isinstance(task, MathTask)
    cands = task.parse_generation("Problem 1: What is 6 times 7 exactly?\nProblem 2: What is 10 minus 4 today?")
    assert [c.problem for c in cands] == ["What is 6 times 7 exactly?", "What is 10 minus 4 today?"]
    assert len(task.solution_prompts(cands)) == 2
    sols = [r"6*7 = \boxed{42}", r"\boxed{41}", r"it is \boxed{42.0}"]
    verdict = task.verify(cands[0], sols)
    assert verdict.accepted
    assert task.samples(cands[0], verdict, sols) == [
        {"prompt": "What is 6 times 7 exactly?", "completion": sols[0]},
        {"prompt": "What is 6 times 7 exactly?", "completion": sols[2]},
    ]
    bad = task.verify(cands[1], [r"\boxed{6}", r"\boxed{5}", "no idea"])
    assert not bad.accepted and bad.rejected.reason == Reason.NO_CONSENSUS and "groups [1, 1]" in bad.rejected.detail
    assert task.samples(cands[1], bad, []) == []


def test_nli_task_requires_agreement_with_generated_label(prompts):
    cfg = SynthConfig(task="nli", tau=2, n_solutions=3)
    task = get_task(cfg, prompts, sample_template="P: {premise} H: {hypothesis}")
    assert isinstance(task, NLITask)
    item = NLIItem("A dog runs in a field.", "An animal is moving.", "entailment")
    ok = task.verify(item, [r"\boxed{entailment}", "Answer: entailment", r"\boxed{neutral}"])
    assert ok.accepted
    assert task.samples(item, ok, []) == [
        {"prompt": "P: A dog runs in a field. H: An animal is moving.", "completion": "entailment"}
    ]
    wrong = task.verify(item, [r"\boxed{neutral}", r"\boxed{neutral}", r"\boxed{entailment}"])
    assert (
        not wrong.accepted
        and wrong.rejected.reason == Reason.NO_CONSENSUS
        and "generator labelled" in wrong.rejected.detail
    )


def test_get_task_uses_the_configured_prompts_file(tmp_path, prompts):
    import yaml

    data = {t: dict(v) for t, v in prompts.templates.items()}
    data["math"]["solve"] = r"CUSTOM {{problem}} \boxed{}"
    path = Path(tmp_path) / "prompts.yaml"
    path.write_text(yaml.safe_dump(data))
    task = get_task(SynthConfig(prompts_file=str(path)))
    assert task.solution_prompts([MathProblem("x y z")]) == [r"CUSTOM x y z \boxed{}"]
