"""How far does the shipped SmolLM2 sit above a constant answer on the offline NLI benchmark, by evaluation method?

For a seeded sample of ``snli_test`` (the only NLI benchmark offline: the BIG-bench tasks are a 358 MB asset), the
base ``builtin:smollm2`` and, after a short SFT on SNLI train rows (the pool's prompt / label format), the same
model fine-tuned, are scored by

* option log-likelihood (``train.eval_method=loglik``) under each normalization (none / tokens / chars), and
* greedy generation + label parsing (``train.eval_method=generate``),

against the constant answer that is the sample's majority label. Accuracy and balanced accuracy (mean recall per
gold label: 1/3 for any constant answer). Results: ``bench/results/loglik_eval.json`` and a Markdown table on stdout.

    SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python bench/loglik_eval.py --n 300 --sft-rows 256
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent


def evaluate(student, bench, settings, label: str, generate: bool) -> list[dict]:
    from prismatic.train.benchmarks import canonical_label
    from prismatic.train.evaluate import evaluate_student, nli_prompts, score_nli
    from prismatic.train.loglik import NORMALIZE, choose

    cfg = settings.train
    words = list(settings.ingest.nli_labels)
    t0 = time.perf_counter()
    scores = student.option_scores(
        nli_prompts(bench, settings), [words] * len(bench), max_tokens=cfg.max_tokens, batch_size=cfg.eval_batch_size
    )
    secs = time.perf_counter() - t0
    out = []
    for norm in NORMALIZE:
        preds = [canonical_label(words[k]) for k in choose(scores, norm)]
        res = score_nli(preds, bench, "loglik")
        out.append({"model": label, "method": f"loglik ({norm})", "accuracy": res.accuracy,
                    "balanced_accuracy": res.balanced_accuracy, "unparsed": 0, "seconds": round(secs, 1),
                    "predicted": dict(Counter(preds))})  # fmt: skip
    if generate:
        t0 = time.perf_counter()
        res = evaluate_student(student, bench, settings, method="generate")
        out.append({"model": label, "method": "generate", "accuracy": res.accuracy,
                    "balanced_accuracy": res.balanced_accuracy, "unparsed": res.unparsed,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "predicted": dict(Counter(str(p) for p in res.predictions))})  # fmt: skip
    for r in out:
        print(json.dumps(r), flush=True)
    return out


def sft_rows(n: int, seed: int, template: str) -> list[dict]:
    from prismatic.assets import asset_path
    from prismatic.train.benchmarks import NLI3, canonical_label

    rows = []
    with open(asset_path("snli") / "snli_1.0_train_subset.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            lab = canonical_label(r.get("gold_label"))
            if lab in NLI3:
                prompt = template.format(premise=r["sentence1"].strip(), hypothesis=r["sentence2"].strip())
                rows.append({"prompt": prompt, "completion": lab})
    return random.Random(seed).sample(rows, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="snli_test examples (seeded sample)")
    ap.add_argument("--sft-rows", type=int, default=256, help="SNLI train rows of the short SFT (0: skip it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-generate", action="store_true")
    ap.add_argument("--skip-base", action="store_true", help="score only the fine-tuned model (and the constant)")
    ap.add_argument("--root", default="/tmp/prism-loglik-bench", help="data root and checkpoint folder")
    ap.add_argument("--out", default=str(HERE / "results" / "loglik_eval.json"))
    args = ap.parse_args()

    import torch

    from prismatic.config import load_config
    from prismatic.gradients.model import resolve_model_path
    from prismatic.train.benchmarks import load_benchmark
    from prismatic.train.lm import LMStudent, sft_rows_to_folder

    torch.set_num_threads(args.threads)
    settings = load_config(
        overrides=[f"data_root={args.root}", "train.model.path=builtin:smollm2", "train.model.device=cpu",
                   "train.max_new_tokens=8"]
    )  # fmt: skip
    bench = load_benchmark("snli_test").sample(args.n, settings.train.seed)
    gold = Counter(e["label"] for e in bench.examples)
    major, count = gold.most_common(1)[0]
    constant = {"model": "-", "method": f"constant ({major})", "accuracy": count / len(bench), "unparsed": 0,
                "balanced_accuracy": 1 / len(bench.labels), "seconds": 0.0, "predicted": {}}  # fmt: skip
    results = [constant]
    folder, _, _ = resolve_model_path(settings.train.model)
    if not args.skip_base:
        base = LMStudent(folder, device="cpu")
        results += evaluate(base, bench, settings, "smollm2 (base)", not args.no_generate)
        del base
    if args.sft_rows:
        cfg = settings.train
        rows = sft_rows(args.sft_rows, cfg.seed, settings.ingest.nli_prompt_template)
        t0 = time.perf_counter()
        tuned = Path(args.root) / "sft-smollm2"
        res = sft_rows_to_folder(rows, cfg, tuned)
        secs = time.perf_counter() - t0
        print(json.dumps({"sft_steps": res.steps, "first_loss": res.losses[0], "last_loss": res.losses[-1],
                          "seconds": round(secs, 1)}), flush=True)  # fmt: skip
        label = f"smollm2 + SFT ({args.sft_rows} rows, {res.steps} steps)"
        results += evaluate(LMStudent(tuned, device="cpu"), bench, settings, label, not args.no_generate)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": bench.name, "n": len(bench), "gold": dict(gold),
                                          "results": results}, indent=2))  # fmt: skip
    print(f"\n{bench.name}, n = {len(bench)}, gold {dict(gold)}\n")
    print("| model | method | accuracy | balanced accuracy | unparsed | seconds |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['method']} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} |"
              f" {r['unparsed']} | {r['seconds']} |")  # fmt: skip


if __name__ == "__main__":
    main()
