"""Make the shipped seed data (deterministic; re-run to regenerate the .jsonl files beside this script).

math_seed.jsonl: arithmetic word problems written from templates made for this project, each with a short
worked solution ending in \\boxed{answer}; a few exact and near duplicates are planted on purpose so the demo
shows dedup at work. messy.jsonl: one row per quarantine reason, plus good rows, to show the quarantine.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam", "Mira",
         "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "beads"]


def add_problem(r: random.Random) -> dict:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(3, 90), r.randint(2, 60)
    return {"prompt": f"{n} has {a} {it} and gets {b} more. How many {it} does {n} have now?",
            "completion": f"{n} starts with {a} {it} and gets {b} more, so {a} + {b} = {a + b}. \\boxed{{{a + b}}}"}


def sub_problem(r: random.Random) -> dict:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a = r.randint(20, 120)
    b = r.randint(1, a - 1)
    return {"prompt": f"{n} had {a} {it} and gave away {b}. How many {it} are left?",
            "completion": f"{a} - {b} = {a - b}, so {n} has {a - b} {it} left. \\boxed{{{a - b}}}"}


def mul_problem(r: random.Random) -> dict:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 12), r.randint(2, 15)
    return {"prompt": f"{n} packs {it} into {a} boxes with {b} {it} in each box. How many {it} are packed?",
            "completion": f"{a} boxes times {b} {it} is {a} * {b} = {a * b}. \\boxed{{{a * b}}}"}


def rate_problem(r: random.Random) -> dict:
    n = r.choice(NAMES)
    speed, hours = r.randint(3, 60), r.randint(2, 9)
    return {"prompt": f"{n} cycles at {speed} km per hour for {hours} hours. How far does {n} travel in km?",
            "completion": f"Distance = speed * time = {speed} * {hours} = {speed * hours} km. \\boxed{{{speed * hours}}}"}


def share_problem(r: random.Random) -> dict:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    k, each = r.randint(2, 9), r.randint(2, 20)
    total = k * each
    return {"prompt": f"{n} shares {total} {it} equally among {k} friends. How many {it} does each friend get?",
            "completion": f"{total} / {k} = {each}, so each friend gets {each} {it}. \\boxed{{{each}}}"}


def main() -> None:
    r = random.Random(20261125)
    makers = [add_problem, sub_problem, mul_problem, rate_problem, share_problem]
    rows = [r.choice(makers)(r) for _ in range(300)]
    # planted: 6 exact duplicates after normalization (case / spacing) and 6 near duplicates (one word changed)
    for i in range(6):
        src = rows[i * 7]
        rows.append({"prompt": "  " + src["prompt"].upper() + " ", "completion": src["completion"].upper()})
    for i in range(6):
        src = rows[i * 11 + 3]
        rows.append({"prompt": src["prompt"].replace(" How many", " Then how many", 1), "completion": src["completion"]})
    with open(HERE / "math_seed.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    messy = [
        json.dumps({"prompt": "What is 2 + 2?", "completion": "2 + 2 = 4. \\boxed{4}"}),
        json.dumps({"messages": [{"role": "user", "content": "What is 3 * 5?"},
                                 {"role": "assistant", "content": "3 * 5 = 15. \\boxed{15}"}]}),
        '{"prompt": "broken json", "completion": ',
        json.dumps({"prompt": "no completion here"}),
        json.dumps({"prompt": "a number", "completion": 42}),
        json.dumps({"prompt": "   ", "completion": "blank prompt"}),
        json.dumps(["a", "list", "not", "an", "object"]),
        json.dumps({"messages": [{"role": "user", "content": "ends with the user"}]}),
        json.dumps({"prompt": "very long " * 3000, "completion": "x"}),
    ]
    with open(HERE / "messy.jsonl", "wb") as f:
        for line in messy:
            f.write(line.encode() + b"\n")
        f.write(b'{"prompt": "caf\xe9 latin-1 bytes", "completion": "x"}\n')


if __name__ == "__main__":
    main()
