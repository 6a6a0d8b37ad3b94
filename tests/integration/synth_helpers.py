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
        f"data_root={root}", f"scoring.model.path={model_dir}", "scoring.d=64", "scoring.block=2",
        "scoring.max_tokens=64", "scoring.chat_template=false", "synth.calls_per_round=6", "cluster.k_min=3",
        "cluster.k_fraction=0.1", "cluster.iterations=5", "spark.master=local[1]", "spark.driver_memory=1g",
        "dedup.near=true",
    ]


def seed_pool(tmp_path: Path, n: int = 40) -> Path:
    """``n`` solved "What is a plus a+3?" problems as a JSONL seed file, in the scripted generator's style."""
    rows = [
        {"prompt": f"What is {a} plus {a + 3}?", "completion": f"{a} + {a + 3} = {2 * a + 3}. \\boxed{{{2 * a + 3}}}"}
        for a in range(1, n + 1)
    ]
    return write_jsonl(tmp_path / "seed.jsonl", rows)
