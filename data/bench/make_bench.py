"""Make the shipped math benchmarks of the demo's generate-filter-train rounds (deterministic; re-run to regenerate).

math_id.jsonl: problems from the seed pool's own templates (data/seed/make_seed.py) under another random seed,
so they are in distribution for a student trained on the seed pool (exact seed prompts are dropped).
math_ood.jsonl: two-step problems in phrasings the seed pool never uses (out of distribution).
Each file has a ``.meta.json`` sidecar (name, task, split) read by ``prismatic.train.benchmarks.load_file``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "seed"))

from make_seed import ITEMS, NAMES, add_problem, mul_problem, rate_problem, share_problem, sub_problem  # noqa: E402


def _answer(completion: str) -> str:
    return completion.rsplit("\\boxed{", 1)[1].rstrip("}")


def id_rows(n: int, seed_prompts: set[str]) -> list[dict]:
    r = random.Random(20261207)
    makers = [add_problem, sub_problem, mul_problem, rate_problem, share_problem]
    rows, seen = [], set(seed_prompts)
    while len(rows) < n:
        p = r.choice(makers)(r)
        if p["prompt"] not in seen:
            seen.add(p["prompt"])
            rows.append({"problem": p["prompt"], "answer": _answer(p["completion"])})
    return rows


def ood_rows(n: int) -> list[dict]:
    r = random.Random(20261208)
    rows = []
    while len(rows) < n:
        name, item = r.choice(NAMES), r.choice(ITEMS)
        kind = r.randrange(3)
        if kind == 0:
            a, b, c = r.randint(10, 60), r.randint(2, 30), r.randint(1, 9)
            q = (f"A crate holds {a} {item}. Workers add {b} and then remove {c}. "
                 f"What number of {item} ends up in the crate?")
            ans = a + b - c
        elif kind == 1:
            price, k, paid = r.randint(2, 9), r.randint(2, 8), 100
            q = (f"Each ticket costs {price} dollars. {name} buys {k} tickets with a {paid} dollar note."
                 " Find the change.")
            ans = paid - price * k
        else:
            w, h = r.randint(2, 15), r.randint(2, 15)
            q = f"Find the perimeter, in metres, of a rectangular garden measuring {w} m by {h} m."
            ans = 2 * (w + h)
        rows.append({"problem": q, "answer": str(ans)})
    return rows


def write(name: str, split: str, rows: list[dict]) -> None:
    with open(HERE / f"{name}.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (HERE / f"{name}.meta.json").write_text(json.dumps({"name": name, "task": "math", "split": split}) + "\n")


def main() -> None:
    seed = {json.loads(line)["prompt"] for line in open(HERE.parent / "seed" / "math_seed.jsonl")}
    write("math_id", "id", id_rows(60, seed))
    write("math_ood", "ood", ood_rows(60))


if __name__ == "__main__":
    main()
