"""Synthesis yield per generator and prompt variant: generate -> parse -> solve -> vote, on the math seed pool.

Why: whether a synthesis round accepts anything depends on the generator, the prompt templates and the parsers,
and none of that can be tuned by guessing. This script runs the part of a round that those decide, without
Spark, scoring or clustering (the sparse-cluster filter is the loop's business): few-shot exemplar groups from a
seed pool -> problem-generation calls -> :meth:`MathTask.parse_generation` -> ``n`` solutions per candidate ->
the τ-of-n vote. It prints, per variant: calls, candidates, accepted, reasons, tokens and seconds; ``--report``
appends the block to a text file (bench/results/synth_yield.txt) and ``--details`` writes every generation,
candidate and vote as JSON lines for reading.

Variants are named in :data:`VARIANTS` (prompt template and setting overrides on top of conf/prompts.yaml and
the synth defaults). Requests go through the request cache (``--cache``), so re-running after a parser change
re-parses the same generations without generating them again. ``--threads-bench`` measures the local
generator's tokens/s for each torch thread count instead.

Run it under the heavy-job lock (it loads a 0.5B model and keeps the cores busy for minutes):

    flock /tmp/prism-heavy.lock .venv/bin/python bench/synth_yield.py --variants current --calls 6 \
        --report bench/results/synth_yield.txt
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from prismatic.config import GeneratorConfig, SynthConfig  # noqa: E402
from prismatic.synth.cache import SQLiteRequestCache  # noqa: E402
from prismatic.synth.generators import Generator, make_generator  # noqa: E402
from prismatic.synth.tasks import MathTask, NLITask, Prompts, Rejected, load_prompts  # noqa: E402

# name -> overrides: "math.generate" / "math.solve" / "nli.*" replace a template; other keys are SynthConfig fields
VARIANTS: dict[str, dict[str, Any]] = {
    "current": {},
    "one-problem-per-call": {"problems_per_call": 1},
    "answers-384-tokens": {"max_new_tokens": 384},
    "solve-concise": {
        "math.solve": (
            "Solve the following math problem. Reason step by step in a few short lines, then write the final "
            "answer (a number only) inside \\boxed{}.\n\nProblem: {{problem}}"
        )
    },
    # NLI: the solver answered with one bare word (no reasoning) and disagreed with itself on 4 of 6 candidates;
    # say what each label means and ask for one sentence of reasoning before the box
    "nli-solve-defined": {
        "nli.solve": (
            "Premise: {{premise}}\nHypothesis: {{hypothesis}}\n\n"
            "If the premise is true, is the hypothesis definitely true (entailment), definitely false "
            "(contradiction), or possibly true or false (neutral)? Explain in one sentence, then give the final "
            "answer as one word inside \\boxed{}, one of: {{labels}}."
        )
    },
    # exactly m problems in a fixed format, no answers or quotes (Qwen wrote 3-5 quoted problems with answers),
    # and concise solutions (fewer cut off at max tokens, fewer tokens per round)
    "exact-format+concise": {
        "math.generate": (
            "Here are {{k}} example math word problems:\n\n{{exemplars}}\n\n"
            "Write exactly {{m}} new math word problems, different from the examples in topic and setting. Each "
            "must be self-contained, need a few steps of arithmetic, and have exactly one numerical answer. Write "
            "only the problems: no solutions, no answers, no quotes. Use this format:\n"
            "Problem 1: <the problem>\nProblem 2: <the problem>"
        ),
        "math.solve": (
            "Solve the following math problem. Reason step by step in a few short lines, then write the final "
            "answer (a number only) inside \\boxed{}.\n\nProblem: {{problem}}"
        ),
    },
}


@dataclass
class Tally:
    """What one variant produced."""

    calls: int = 0
    generations_failed: int = 0
    candidates: int = 0
    accepted: int = 0
    reasons: Counter = field(default_factory=Counter)
    tokens: int = 0
    answers_cut: int = 0
    answers: int = 0
    seconds: float = 0.0


def seed_items(path: Path, task: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Seed rows as exemplars: math ``{"problem"}``; NLI ``{"premise", "hypothesis", "label"}`` (SNLI fields)."""
    rows = []
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if task == "math":
                rows.append({"problem": d.get("prompt") or d["problem"]})
            elif d.get("gold_label", d.get("label")) in ("entailment", "neutral", "contradiction"):
                rows.append(
                    {
                        "premise": d["sentence1"],
                        "hypothesis": d["sentence2"],
                        "label": d.get("gold_label", d.get("label")),
                    }
                )
            if limit and len(rows) >= limit:
                break
    return rows


def variant_setup(name: str, base: Prompts, task_name: str, settings: dict[str, Any]) -> tuple[Any, SynthConfig]:
    """(task, synth config) of one variant."""
    over = VARIANTS[name]
    templates = {t: dict(kinds) for t, kinds in base.templates.items()}
    fields = dict(settings)
    for key, value in over.items():
        if "." in key:
            t, kind = key.split(".", 1)
            templates[t][kind] = value
        else:
            fields[key] = value
    prompts = Prompts.from_mapping(templates, source=f"variant {name}")
    max_new = fields.pop("max_new_tokens", None)
    cfg = SynthConfig(task=task_name, **fields)
    if max_new is not None:
        cfg = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"max_new_tokens": max_new})})
    task = MathTask(cfg, prompts) if task_name == "math" else NLITask(cfg, prompts)
    return task, cfg


def run_variant(gen: Generator, task: Any, cfg: SynthConfig, seeds: list, calls: int, details) -> Tally:
    """One variant: ``calls`` generation calls, then solve and vote on every parsed candidate."""
    t0 = time.perf_counter()
    tally = Tally(calls=calls)
    rng = random.Random(cfg.seed)
    groups = [rng.sample(seeds, min(cfg.exemplars, len(seeds))) for _ in range(calls)]
    max_tokens = cfg.generator.max_new_tokens
    gens = gen.generate(task.generation_prompts(groups), 1, cfg.problem_temperature, cfg.top_p, max_tokens, cfg.seed)
    candidates = []
    for k, (g,) in enumerate(gens):
        tally.tokens += g.completion_tokens
        if not g.ok:
            tally.generations_failed += 1
            tally.reasons["generator_error"] += 1
            continue
        parsed = task.parse_generation(g.text, truncated=g.finish_reason == "length")
        details.write(
            json.dumps(
                {
                    "kind": "generation",
                    "call": k,
                    "text": g.text,
                    "finish": g.finish_reason,
                    "parsed": None if isinstance(parsed, Rejected) else [str(c) for c in parsed],
                    "rejected": parsed.detail if isinstance(parsed, Rejected) else None,
                }
            )
            + "\n"
        )
        if isinstance(parsed, Rejected):
            tally.reasons[parsed.reason] += 1
            continue
        candidates.extend(parsed[: cfg.problems_per_call])
    tally.candidates = len(candidates)
    if candidates:
        sols = gen.generate(
            task.solution_prompts(candidates),
            cfg.n_solutions,
            cfg.solution_temperature,
            cfg.top_p,
            max_tokens,
            cfg.seed + 1,
        )
        for cand, outs in zip(candidates, sols, strict=True):
            tally.tokens += sum(o.completion_tokens for o in outs)
            tally.answers += len(outs)
            tally.answers_cut += sum(o.finish_reason == "length" for o in outs)
            verdict = task.verify(cand, [o.text for o in outs])
            reason = "accepted" if verdict.accepted else verdict.rejected.reason
            tally.accepted += verdict.accepted
            tally.reasons[reason] += 1
            details.write(
                json.dumps(
                    {
                        "kind": "candidate",
                        "candidate": str(cand),
                        "reason": reason,
                        "detail": verdict.rejected.detail if verdict.rejected else verdict.vote.answer,
                        "solutions": [o.text for o in outs],
                    }
                )
                + "\n"
            )
    tally.seconds = time.perf_counter() - t0
    return tally


def threads_bench(gen_cfg: GeneratorConfig, counts: list[int], max_tokens: int) -> list[str]:
    """tokens/s of the local generator at each torch thread count (same prompts and seeds each time)."""
    from prismatic.synth.generators import LocalGenerator

    prompts = ["Write one short math word problem about apples.", "Solve 17 * 23 step by step."]
    lines = []
    for th in counts:
        gen = LocalGenerator(gen_cfg.model, device="cpu", batch_size=gen_cfg.batch_size, threads=th)
        gen._ensure_loaded()
        gen.generate(prompts[:1], 1, 1.0, 0.95, 8, 0)  # warm-up, untimed
        t0 = time.perf_counter()
        out = gen.generate(prompts, 4, 1.0, 0.95, max_tokens, 1)
        dt = time.perf_counter() - t0
        toks = sum(g.completion_tokens for row in out for g in row)
        lines.append(f"threads={th}: {toks} tokens in {dt:.1f} s = {toks / dt:.2f} tokens/s (8 rows, batch 8)")
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", default="builtin:qwen-coder-0.5b", help="local model (builtin:, .gguf, folder)")
    ap.add_argument("--task", choices=["math", "nli"], default="math")
    ap.add_argument("--seed-file", default=None, help="default: data/seed/math_seed.jsonl or the SNLI asset")
    ap.add_argument("--variants", default="current", help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--calls", type=int, default=6, help="problem-generation calls per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the local generator")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cache", default="/tmp/prism-synth-yield-cache", help="request cache folder ('' = none)")
    ap.add_argument("--details", default="/tmp/prism-synth-yield-details.jsonl")
    ap.add_argument("--report", default=None, help="append the summary to this file")
    ap.add_argument("--note", default="", help="a line added to the report block")
    ap.add_argument("--threads-bench", default=None, help="comma-separated thread counts: measure tokens/s only")
    args = ap.parse_args(argv)

    gen_cfg = GeneratorConfig(model=args.generator, device="cpu", threads=args.threads, batch_size=args.batch_size)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    if args.threads_bench:
        lines = threads_bench(gen_cfg, [int(x) for x in args.threads_bench.split(",")], 96)
        block = [f"== threads bench {stamp}, generator {args.generator} ({args.note})", *lines]
    else:
        block = yield_bench(args, gen_cfg, stamp)
    if args.report:
        with open(args.report, "a") as f:
            f.write("\n".join(block) + "\n\n")
    return 0


def yield_bench(args: argparse.Namespace, gen_cfg: GeneratorConfig, stamp: str) -> list[str]:
    default_seed = "data/seed/math_seed.jsonl" if args.task == "math" else None
    if args.seed_file or default_seed:
        seed_path = REPO / (args.seed_file or default_seed)
    else:
        from prismatic.assets import asset_path

        seed_path = asset_path("snli") / "snli_1.0_train_subset.jsonl"
    seeds = seed_items(seed_path, args.task, limit=None if args.task == "math" else 2000)
    cache = SQLiteRequestCache(args.cache) if args.cache else None
    gen = make_generator(gen_cfg, cache)
    base = load_prompts(REPO / "conf/prompts.yaml")
    block = [
        f"== {stamp}, generator {args.generator}, task {args.task}, {args.calls} calls/variant, seed "
        f"{args.seed}, threads {args.threads}{', ' + args.note if args.note else ''}"
    ]
    with open(args.details, "w") as details:
        for name in args.variants.split(","):
            task, cfg = variant_setup(name, base, args.task, {"seed": args.seed})
            t = run_variant(gen, task, cfg, seeds, args.calls, details)
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(t.reasons.items(), key=lambda kv: -kv[1]))
            line = (
                f"{name:24s} candidates {t.candidates:3d}  accepted {t.accepted:3d}  reasons: {reasons}  | "
                f"answers cut at max tokens {t.answers_cut}/{t.answers}, tokens {t.tokens}, {t.seconds:.0f} s"
            )
            print(line, flush=True)
            block.append(line)
    return block


if __name__ == "__main__":
    raise SystemExit(main())
