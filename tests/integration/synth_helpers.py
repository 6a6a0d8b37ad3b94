"""A scripted arithmetic generator (a test double for the LLM) and a tiny-model config for loop tests."""

from __future__ import annotations

import random
import re
from pathlib import Path

from helpers import write_jsonl

from prismatic.synth.generators import FakeGenerator

SOLVE_RE = re.compile(r"Problem: What is (\d+) plus (\d+)\?")


def arithmetic_script(prompt: str, j: int, seed: int) -> str:
    """Problem prompts -> two 'What is a plus b?' problems; solve prompts -> boxed sums (the third one wrong
    for odd a, so some pass 2-of-3; a multiple of 3 gets three different answers: no consensus)."""
    m = SOLVE_RE.search(prompt)
    if m:
        a, b = int(m[1]), int(m[2])
        ans = a + b if (j < 2 or a % 2 == 0) else a + b + 1
        if a % 3 == 0:  # no consensus: three different answers
            ans = a + b + j
        return f"Adding {a} and {b} gives {ans}. \\boxed{{{ans}}}"
    rng = random.Random(seed)
    if rng.random() < 0.15:
        return "Sorry."
    pairs = [(rng.randint(1, 400), rng.randint(1, 400)) for _ in range(2)]
    return "\n".join(f"Problem {i + 1}: What is {a} plus {b}?" for i, (a, b) in enumerate(pairs))


def scripted_generator() -> FakeGenerator:
    return FakeGenerator(arithmetic_script, model="arithmetic-script")


def tiny_overrides(root: Path, model_dir: Path) -> list[str]:
    return [
        f"data_root={root}",
        f"scoring.model.path={model_dir}",
        "scoring.d=64",
        "scoring.block=2",
        "scoring.max_tokens=64",
        "scoring.chat_template=false",
        "synth.calls_per_round=6",
        "cluster.k_min=3",
        "cluster.k_fraction=0.1",
        "cluster.iterations=5",
        "spark.master=local[1]",
        "spark.driver_memory=1g",
        "dedup.near=true",
    ]


def seed_pool(tmp_path: Path, n: int = 40) -> Path:
    """``n`` solved "What is a plus a+3?" problems as a JSONL seed file, in the scripted generator's style."""
    rows = [
        {"prompt": f"What is {a} plus {a + 3}?", "completion": f"{a} + {a + 3} = {2 * a + 3}. \\boxed{{{2 * a + 3}}}"}
        for a in range(1, n + 1)
    ]
    return write_jsonl(tmp_path / "seed.jsonl", rows)


# ---- NLI in the same scripted style, and a mixed math + NLI pool -------------------------------------------------

ANIMALS = ["dog", "cat", "horse", "goat", "fox", "owl", "duck", "seal"]
PLACES = ["park", "barn", "yard", "field", "garden", "river", "forest", "beach"]
# hypothesis pattern -> its label (the generator labels by the same rule, so the solvers agree with it)
NLI_RULES = [
    ("An animal is outside.", "entailment"),
    ("Nothing is outside.", "contradiction"),
    ("The animal is hungry.", "neutral"),
]
NLI_SOLVE_RE = re.compile(r"Hypothesis: (?P<h>[^\n]+)")


def nli_triples(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    out = []
    for _ in range(n):
        hyp, label = NLI_RULES[rng.randrange(len(NLI_RULES))]
        out.append(
            (
                f"A {rng.choice(ANIMALS)} is sleeping in the {rng.choice(PLACES)} number {rng.randint(1, 999)}.",
                hyp,
                label,
            )
        )
    return out


def mixed_script(prompt: str, j: int, seed: int) -> str:
    """:func:`arithmetic_script` for math prompts; for NLI prompts (they name a premise): a generation prompt
    (its exemplars carry labels) gets two labelled triples, a solver prompt gets the rule's label boxed."""
    if "Premise:" not in prompt:
        return arithmetic_script(prompt, j, seed)
    if "Label:" in prompt:
        triples = nli_triples(random.Random(seed), 2)
        return "\n\n".join(f"Premise: {p}\nHypothesis: {h}\nLabel: {lab}" for p, h, lab in triples)
    m = NLI_SOLVE_RE.search(prompt)
    label = dict(NLI_RULES).get(m["h"].strip() if m else "", "neutral")
    return f"The hypothesis is {label}. \\boxed{{{label}}}"


def mixed_generator() -> FakeGenerator:
    return FakeGenerator(mixed_script, model="mixed-script")


def nli_pool(tmp_path: Path, n: int = 30, seed: int = 7) -> Path:
    """``n`` NLI rows in the mixed script's style as a JSONL file (premise / hypothesis / label)."""
    rows = [{"premise": p, "hypothesis": h, "label": lab} for p, h, lab in nli_triples(random.Random(seed), n)]
    return write_jsonl(tmp_path / "nli.jsonl", rows)


def topics_pool(tmp_path: Path, per_topic: int = 14) -> Path:
    """Three topics of ``per_topic`` samples and six samples in the scripted generator's style ("What is a plus
    b?"): the six are a small (sparse) cluster that the generated candidates land in, so some are accepted."""
    rows = []
    for a in range(1, per_topic + 1):
        rows += [
            {
                "prompt": f"Tom has {a} apples and buys {a + 4} more. How many apples does he have now?",
                "completion": f"He has {a} + {a + 4} = {2 * a + 4} apples. \\boxed{{{2 * a + 4}}}",
            },
            {
                "prompt": f"A rectangle is {a} cm wide and {a + 2} cm long. What is its area?",
                "completion": f"The area is {a} * {a + 2} = {a * (a + 2)} square cm. \\boxed{{{a * (a + 2)}}}",
            },
            {
                "prompt": f"A train travels {10 * a} km in 2 hours. What is its average speed?",
                "completion": f"Speed is {10 * a} / 2 = {5 * a} km per hour. \\boxed{{{5 * a}}}",
            },
        ]
    for a, b in [(311, 122), (250, 143), (402, 219), (188, 377), (129, 264), (333, 101)]:
        answer = f"Adding {a} and {b} gives {a + b}. \\boxed{{{a + b}}}"
        rows.append({"prompt": f"What is {a} plus {b}?", "completion": answer})
    return write_jsonl(tmp_path / "topics.jsonl", rows)


def math_benchmarks(tmp_path: Path) -> tuple[Path, Path]:
    """An ID (the seed style) and an OOD (another phrasing) math benchmark file, each with its split sidecar."""
    bench = {
        "sums_id": [{"problem": f"What is {a} plus {a + 5}?", "answer": str(2 * a + 5)} for a in range(50, 60)],
        "sums_ood": [
            {"problem": f"Compute the total of {a} and {3 * a}.", "answer": str(4 * a)} for a in range(2, 10)
        ],
    }
    paths = []
    for name, rows in bench.items():
        path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        (tmp_path / f"{name}.meta.json").write_text(
            f'{{"name": "{name}", "task": "math", "split": "{name.split("_")[1]}"}}'
        )
        paths.append(path)
    return paths[0], paths[1]
