"""Does the shipped SmolLM2 carry a math signal on a CPU, before and after SFT on worked solutions?

The math study (README "A study on math with worked solutions") needs students whose OOD accuracy moves with what
they were trained on. For the math benchmarks offline — GSM-Symbolic with a held-out seed (ID), ASDiv and the
shipped math_ood set (OOD) — this scores the base ``builtin:smollm2`` and the same model after a short SFT on
GSM-Symbolic worked solutions (``answer_cot``, seed 0: the study's pool) by

* greedy generation + math-verify (``train.eval_method=generate``) on a small sample, and
* option log-likelihood on the multiple-choice twin (``<benchmark>+mc4``: the gold answer among 3 answers of other
  problems of the same benchmark, :meth:`~prismatic.train.benchmarks.Benchmark.with_choices`), where a choice that
  ignores the problem scores about 0.25, under each normalization.

Results: ``bench/results/math_eval.json`` and a Markdown table on stdout (kept in ``bench/results/math_eval.txt``).

    SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/math_eval.py --n 100 --n-generate 20 --sft-rows 128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("gsm_symbolic", "asdiv", "data/bench/math_ood.jsonl")


def evaluate(student, benches, gen_benches, settings, label: str) -> list[dict]:
    from prismatic.train.evaluate import evaluate_student, score_math_choices
    from prismatic.train.loglik import NORMALIZE, choose

    cfg = settings.train
    out = []
    for b in benches:
        options = [e["choices"] for e in b.examples]
        t0 = time.perf_counter()
        scores = student.option_scores([e["problem"] for e in b.examples], options, max_tokens=cfg.max_tokens,
                                       batch_size=cfg.eval_batch_size)  # fmt: skip
        secs = round(time.perf_counter() - t0, 1)
        for norm in NORMALIZE:
            picks = [o[k] for o, k in zip(options, choose(scores, norm), strict=True)]
            res = score_math_choices(picks, b)
            out.append({"model": label, "benchmark": b.name, "method": f"loglik ({norm})", "n": res.n,
                        "accuracy": res.accuracy, "chance": 1 / len(options[0]), "seconds": secs})  # fmt: skip
    for b in gen_benches:
        t0 = time.perf_counter()
        res = evaluate_student(student, b, settings, method="generate")
        out.append({"model": label, "benchmark": b.name, "method": "generate", "n": res.n, "accuracy": res.accuracy,
                    "unparsed": res.unparsed, "chance": 0.0, "seconds": round(time.perf_counter() - t0, 1),
                    "sample": (res.predictions[:1] or [None])[0]})  # fmt: skip
    for r in out:
        print(json.dumps(r), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="examples per multiple-choice benchmark (seeded sample)")
    ap.add_argument("--n-generate", type=int, default=20, help="examples per benchmark for generation (0: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--sft-rows", type=int, default=128, help="GSM-Symbolic worked solutions of the SFT (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--root", default="/tmp/prism-math-eval-bench", help="data root and checkpoint folder")
    ap.add_argument("--out", default=str(HERE / "results" / "math_eval.json"))
    args = ap.parse_args()

    import torch

    from prismatic.config import load_config
    from prismatic.gradients.model import resolve_model_path
    from prismatic.train.benchmarks import gsm_symbolic_rows, load_benchmark
    from prismatic.train.lm import LMStudent, sft_rows_to_folder

    torch.set_num_threads(args.threads)
    settings = load_config(
        overrides=[f"data_root={args.root}", "train.model.path=builtin:smollm2", "train.model.device=cpu",
                   "train.task=math", f"train.max_new_tokens={args.max_new_tokens}", "train.max_tokens=384"]
    )  # fmt: skip
    seed = settings.train.seed
    benches = [load_benchmark(f"{s}+mc4").sample(args.n, seed) for s in BENCHMARKS]
    gen = [load_benchmark(s).sample(args.n_generate, seed) for s in BENCHMARKS] if args.n_generate else []
    folder, _, _ = resolve_model_path(settings.train.model)
    results = evaluate(LMStudent(folder, device="cpu"), benches, gen, settings, "smollm2 (base)")
    if args.sft_rows:
        rows = gsm_symbolic_rows(args.sft_rows, seed=0)
        t0 = time.perf_counter()
        tuned = Path(args.root) / "sft-smollm2-gsm"
        res = sft_rows_to_folder(rows, settings.train, tuned)
        print(json.dumps({"sft_steps": res.steps, "first_loss": res.losses[0], "last_loss": res.losses[-1],
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)  # fmt: skip
        label = f"smollm2 + SFT ({args.sft_rows} worked solutions, {res.steps} steps)"
        results += evaluate(LMStudent(tuned, device="cpu"), benches, gen, settings, label)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"results": results}, indent=2, default=str))
    print("\n| model | benchmark | method | n | accuracy | chance | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['benchmark']} | {r['method']} | {r['n']} | {r['accuracy']:.3f} |"
              f" {r['chance']:.2f} | {r['seconds']} |")  # fmt: skip


if __name__ == "__main__":
    main()
