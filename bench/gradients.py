"""Benchmark: fast (Kronecker) projected gradients vs the floor, the per-sample loop and the dense reference.

Proxy: SmolLM2-135M-Instruct (``builtin:smollm2``), CPU, d = 1024. Four sets of graded diversity
(``--set-size`` samples each, built from SNLI and templated arithmetic) are scored the same way:

Throughput (samples/s, all 4 sets, batches sorted by length, ``--batch-size``):

* fast     - ``KroneckerProjector.project``: one batched forward + backward with hooks (weights frozen),
             final dense projection to d and normalization included.
* floor    - the same batches, the same forward + backward (weights frozen, gradient flowing from the
             embedding output) with no hooks and no projection: what the fast path cannot beat.
* train    - the same batches, forward + backward with weight gradients (a training step without the
             optimizer), for reference.
* loop     - the paper's per-sample loop: one forward + backward per sample, all weight gradients.
* dense    - the paper's method: loop + dense Rademacher projection of the full 134.5 M-entry gradient.
             Timed on a slice of the parameters (``--dense-params`` rows) and extrapolated to all of them,
             once for a batch of 16 gradients (generation amortized) and once for a single gradient.

Quality (per set, against the exact d = ∞ cosine kernel from full per-sample gradients):

* exact    - per-sample loop gradients in a disk store (``--store-dtype``), Gram accumulated block by block.
* fast     - G-Vendi relative error and Pearson correlation of the off-diagonal cosines, ``--seeds`` seeds.
* dense    - the same for dense Rademacher projections of the stored gradients, on ``--dense-sets`` sets
             (each costs 2·N·|θ|·d flops), and for every set a Gaussian JL simulated from the exact Gram
             (Y = K^½ Z / √d: the distribution a dense Gaussian projection gives; labelled as simulated).

Usage::

    python bench/gradients.py                                  # 4 x 64 samples
    python bench/gradients.py --set-size 16 --seeds 2 --out /tmp/g.txt   # a quick look

Prints a report and writes it to ``--out`` (default bench/results/gradients.txt). Timings are wall-clock
on whatever machine runs this; the header records cores, threads and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from prismatic.assets import asset_path  # noqa: E402
from prismatic.config import ModelConfig, ScoringConfig  # noqa: E402
from prismatic.gradients.exact import exact_from_store, gvendi_from_kernel  # noqa: E402
from prismatic.gradients.kronecker import KroneckerProjector  # noqa: E402
from prismatic.gradients.model import Encoded, collate, completion_nll, load_model  # noqa: E402
from prismatic.gradients.persample import GradientStore, param_layout, per_sample_gradients  # noqa: E402
from prismatic.gradients.projectors import CHUNK_ROWS, DenseRademacherProjector, RademacherGenerator  # noqa: E402
from prismatic.gradients.scoring import Scorer  # noqa: E402

LINES: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    LINES.append(text)


# --------------------------------------------------------------------------------------------- data


def _snli(n_max: int = 3000) -> list[dict]:
    rows = []
    with open(asset_path("snli") / "snli_1.0_test.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["gold_label"] != "-":
                rows.append(r)
            if len(rows) >= n_max:
                break
    return rows


NLI_PROMPT = (
    "Premise: {p}\nHypothesis: {h}\n"
    "Does the premise entail the hypothesis? Answer with one word: entailment, neutral or contradiction."
)


def graded_sets(n: int, seed: int = 0) -> list[tuple[str, list[tuple[str, str]]]]:
    """Four sets of increasing diversity: one arithmetic template, one NLI label, all NLI labels, mixed tasks."""
    rng = random.Random(seed)
    snli = _snli()
    rng.shuffle(snli)
    arith = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        arith.append((f"What is {a} plus {b}?", f"{a} + {b} = {a + b}. The answer is {a + b}."))
    ent = [r for r in snli if r["gold_label"] == "entailment"][:n]
    one_label = [(NLI_PROMPT.format(p=r["sentence1"], h=r["sentence2"]), "entailment") for r in ent]
    all_labels = [(NLI_PROMPT.format(p=r["sentence1"], h=r["sentence2"]), r["gold_label"]) for r in snli[n : 2 * n]]
    mixed: list[tuple[str, str]] = []
    pool = snli[2 * n :]
    names = ["Ana", "Bo", "Chen", "Dara", "Eli"]
    items = ["apples", "books", "coins", "stamps", "marbles"]
    for i in range(n):
        r = pool[i]
        kind = i % 6
        if kind == 0:
            mixed.append((NLI_PROMPT.format(p=r["sentence1"], h=r["sentence2"]), r["gold_label"]))
        elif kind == 1:
            who, what = rng.choice(names), rng.choice(items)
            a, b = rng.randint(10, 99), rng.randint(2, 9)
            mixed.append(
                (
                    f"{who} has {a} {what} and buys {b} bags with {b} {what} in each. How many {what} now?",
                    f"{b} bags of {b} is {b * b}. {a} + {b * b} = {a + b * b}. The answer is {a + b * b}.",
                )
            )
        elif kind == 2:
            mixed.append((f"Rewrite in upper case: {r['sentence1']}", r["sentence1"].upper()))
        elif kind == 3:
            words = r["sentence1"].split()
            mixed.append((f"How many words are in this sentence? {r['sentence1']}", f"It has {len(words)} words."))
        elif kind == 4:
            mixed.append((f"Write a short sentence about this scene: {r['sentence1']}", r["sentence2"]))
        else:
            words = r["sentence2"].rstrip(".").split()
            mixed.append((f"Reverse the order of the words: {r['sentence2']}", " ".join(reversed(words)) + "."))
    return [("arith-template", arith), ("nli-one-label", one_label), ("nli-all-labels", all_labels),
            ("mixed-tasks", mixed)]  # fmt: skip


# --------------------------------------------------------------------------------------------- timing


def floor_step(model, ids: torch.Tensor, labels: torch.Tensor, weight_grads: bool) -> None:
    """Batched forward + backward without hooks: from the embedding leaf (frozen) or with weight gradients."""
    emb = model.get_input_embeddings()
    handle = None
    if weight_grads:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        handle = emb.register_forward_hook(lambda m, i, o: o.detach().requires_grad_(True))
    try:
        logits = model(input_ids=ids, use_cache=False).logits
        loss, _ = completion_nll(logits, labels)
        loss.sum().backward()
    finally:
        if handle is not None:
            handle.remove()
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(False)


def batches_by_length(encs: list[Encoded], size: int) -> list[list[int]]:
    order = sorted(range(len(encs)), key=lambda i: (-len(encs[i]), i))
    return [order[s : s + size] for s in range(0, len(order), size)]


def throughput(model, kp: KroneckerProjector, encs, batch_size: int, train: bool):
    """Interleave fast / floor (/ train) on the same batches, so load changes hit all of them alike."""
    tot = {"fast": 0.0, "floor": 0.0, "train": 0.0}
    per_batch: dict[str, list[float]] = {"fast": [], "floor": [], "train": []}
    vectors = np.zeros((len(encs), kp.d), dtype=np.float32)
    batches = batches_by_length(encs, batch_size)
    warm = [encs[i] for i in batches[-1]]
    ids, labels = collate(warm, 2)
    kp.project(ids, labels, torch.tensor([len(e) for e in warm]))  # warm-up (and the cached final matrix)
    floor_step(model, ids, labels, weight_grads=False)
    for k, idx in enumerate(batches):
        batch = [encs[i] for i in idx]
        ids, labels = collate(batch, 2)
        lengths = torch.tensor([len(e) for e in batch])
        modes = ["fast", "floor"] + (["train"] if train else [])
        if k % 2:
            modes.reverse()
        for mode in modes:
            t0 = time.perf_counter()
            if mode == "fast":
                r = kp.project(ids, labels, lengths)
                vectors[idx] = r.vectors
                if any(r.errors):
                    raise RuntimeError(f"fast projection failed: {r.errors}")
            else:
                floor_step(model, ids, labels, weight_grads=mode == "train")
            dt = time.perf_counter() - t0
            tot[mode] += dt
            per_batch[mode].append(dt)
    return tot, per_batch, vectors


def dense_timing(layout, d: int, rows_budget: int, seed: int) -> dict:
    """Seconds of the dense projection per parameter row, for a batch of 16 and for 1 gradient."""
    sub, acc = [], 0
    for name, size in layout:  # a slice of real blocks: a big embedding-like one and some layers
        take = min(size, rows_budget - acc)
        if take <= 0:
            break
        sub.append((name, take))
        acc += take
    out = {"rows": acc}
    for b in (16, 1):
        proj = DenseRademacherProjector(sub, d, seed)
        g = {n: torch.randn(b, s) for n, s in sub}
        t0 = time.perf_counter()
        proj.project(g)
        out[f"sec_per_row_b{b}"] = (time.perf_counter() - t0) / acc
    gen = RademacherGenerator(d)
    t0 = time.perf_counter()
    n_chunks = max(1, (rows_budget // 4) // CHUNK_ROWS)
    for c in range(n_chunks):
        gen.chunk(seed, "timing", c, CHUNK_ROWS)
    out["gen_entries_per_s"] = n_chunks * CHUNK_ROWS * d / (time.perf_counter() - t0)
    m = torch.empty(CHUNK_ROWS, d)
    t0 = time.perf_counter()
    for _ in range(2):
        m.bernoulli_(0.5)
    out["bernoulli_entries_per_s"] = 2 * CHUNK_ROWS * d / (time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------------------------- quality


def offdiag(k: np.ndarray) -> np.ndarray:
    return k[np.triu_indices(k.shape[0], 1)]


def kernel_of(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return y @ y.T


def compare(k: np.ndarray, exact: np.ndarray, gv_exact: float) -> tuple[float, float]:
    gv = gvendi_from_kernel((k + k.T) / 2)
    return gv / gv_exact - 1, float(np.corrcoef(offdiag(k), offdiag(exact))[0, 1])


def simulated_dense(kernel: np.ndarray, d: int, seed: int) -> np.ndarray:
    """Kernel of Y = K^½ Z / √d, Z Gaussian (N × d): a dense Gaussian JL of vectors whose cosines are K."""
    w, v = np.linalg.eigh(kernel)
    root = v * np.sqrt(np.clip(w, 0, None))
    z = np.random.default_rng(seed).standard_normal((kernel.shape[0], d)) / math.sqrt(d)
    return kernel_of(root @ z)


# --------------------------------------------------------------------------------------------- main


def exact_kernels(args, model, layout, sets, encs_by_set, scratch: Path):
    """Exact (d = inf) kernel of the chosen sets (``--exact-which``, else the first ``--exact-sets``).

    Returns (loop seconds, loop samples, {set index: ExactResult}, {set index: [dense projections per seed]}).
    """
    loop_time, loop_n = 0.0, 0
    exact, dense_real = {}, {}
    which = [int(x) for x in args.exact_which.split(",")] if args.exact_which else range(args.exact_sets)
    for si in which:
        if not 0 <= si < len(sets):
            raise SystemExit(f"--exact-which: no set {si} (there are {len(sets)})")
        encs = encs_by_set[si][: args.exact_size or None]
        t_set = time.perf_counter()
        with GradientStore(layout, len(encs), scratch, max_ram_bytes=0, dtype=args.store_dtype) as store:
            it = per_sample_gradients(model, encs)
            for i in range(len(encs)):
                t0 = time.perf_counter()
                g = next(it)
                loop_time += time.perf_counter() - t0
                loop_n += 1
                store.write(i, g)
                del g
            ex = exact_from_store(store)
            if len(dense_real) < args.dense_sets:
                t0 = time.perf_counter()
                dense_real[si] = [
                    DenseRademacherProjector(layout, args.d, s).project(store.blocks()).numpy()
                    for s in range(args.seeds)
                ]
                say(f"  dense projections of set {si}: {time.perf_counter() - t0:.0f} s for {args.seeds} seeds")
        exact[si] = ex
        took = time.perf_counter() - t_set
        say(f"set {sets[si][0]:15s} exact G-Vendi {ex.gvendi:8.3f}  n={len(encs)}  ({took:.0f} s)")
    return loop_time, loop_n, exact, dense_real


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--embed-block", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3, help="fast-projector seeds for the quality comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--exact-sets", type=int, default=4, help="sets with an exact (d = inf) kernel")
    ap.add_argument("--exact-which", default="", help="comma-separated set indices (overrides --exact-sets)")
    ap.add_argument("--exact-size", type=int, default=0, help="first samples of a set in its exact kernel (0: all)")
    ap.add_argument("--dense-sets", type=int, default=0, help="sets with a real dense projection (slow)")
    ap.add_argument(
        "--dense-params", type=int, default=8_000_000, help="rows timed for the dense projection (0: skip)"
    )
    ap.add_argument("--loop-samples", type=int, default=8, help="loop samples timed when --exact-sets is 0")
    ap.add_argument("--store-dtype", choices=["float32", "float16"], default="float16")
    ap.add_argument("--scratch", default=None, help="folder for the gradient store (default: a temp folder)")
    ap.add_argument("--no-train", action="store_true", help="skip the training-style fwd+bwd timing")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gradients.txt"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()

    say("# bench/gradients.py - projected per-sample gradients on SmolLM2-135M-Instruct (CPU)")
    say(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.processor() or platform.machine()}  "
        f"cores={os.cpu_count()}  torch threads={torch.get_num_threads()}  torch {torch.__version__}  "
        f"load avg before={os.getloadavg()[0]:.1f}")  # fmt: skip
    say(f"# args: {vars(args)}")

    cfg = ScoringConfig(
        model=ModelConfig(path="builtin:smollm2", device="cpu"), d=args.d, block=args.block,
        embed_block=args.embed_block, max_tokens=args.max_tokens, batch_size=args.batch_size,
    )  # fmt: skip
    t0 = time.perf_counter()
    loaded = load_model(cfg.model)
    say(f"model load: {time.perf_counter() - t0:.1f} s (cached safetensors from the GGUF)")
    scorer = Scorer(loaded, cfg)
    model, kp = loaded.model, scorer.backend
    layout = param_layout(model)
    n_params = sum(s for _, s in layout)
    say(f"spec_id {scorer.spec_id}  |theta| = {n_params:,}  D (kronecker blocks) = {kp.final.grad_dim:,}  "
        f"d = {args.d}  block = {args.block}  embed_block = {args.embed_block}")  # fmt: skip

    sets = graded_sets(args.set_size)
    encs_by_set = [[scorer.encode(p, c) for p, c in pairs] for _, pairs in sets]
    for (name, _), encs in zip(sets, encs_by_set, strict=True):
        bad = [e.error for e in encs if e.error]
        if bad:
            raise SystemExit(f"set {name}: {len(bad)} samples cannot be scored: {bad[:3]}")
        lens = [len(e) for e in encs]
        say(f"set {name:15s} n={len(encs)}  tokens mean {np.mean(lens):.0f} max {max(lens)}  "
            f"loss tokens mean {np.mean([e.n_tokens for e in encs]):.1f}")  # fmt: skip
    all_encs = [e for encs in encs_by_set for e in encs]
    n_all = len(all_encs)

    # ---- throughput
    say("")
    say(f"## throughput on {n_all} samples, batch size {args.batch_size} (interleaved per batch)")
    tot, per_batch, fast_vectors = throughput(model, kp, all_encs, args.batch_size, train=not args.no_train)
    rate = {k: n_all / v for k, v in tot.items() if v > 0}
    say(f"fast (kronecker {args.block}x{args.block} -> {args.d}): {rate['fast']:.2f} samples/s  ({tot['fast']:.1f} s)")
    say(f"floor (same fwd+bwd, frozen weights, no hooks): {rate['floor']:.2f} samples/s  ({tot['floor']:.1f} s)")
    if "train" in rate:
        say(f"train-style fwd+bwd (weight gradients):        {rate['train']:.2f} samples/s  ({tot['train']:.1f} s)")
    batch_ratio = np.array(per_batch["floor"]) / np.array(per_batch["fast"])
    q1, med, q3 = np.percentile(batch_ratio, [25, 50, 75])
    say(f"per-batch floor time / fast time: median {med:.2f} (quartiles {q1:.2f} - {q3:.2f}, "
        f"{len(batch_ratio)} batches; robust to load bursts that hit one mode of one batch)")  # fmt: skip

    # ---- exact oracle (also times the per-sample loop)
    say("")
    say(f"## exact kernels (d = inf): per-sample loop, {args.store_dtype} store, Gram block by block")
    own_scratch = args.scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="prism-bench-")) if own_scratch else Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        loop_time, loop_n, exact, dense_real = exact_kernels(args, model, layout, sets, encs_by_set, scratch)
    finally:  # the store's memmap is N x |theta| values (about 17 GB for 64 samples in float16): never leave it
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            (scratch / f"gradients.{args.store_dtype}").unlink(missing_ok=True)
    offsets = np.cumsum([0] + [len(e) for e in encs_by_set])
    if not loop_n:  # no exact sets: time the loop on a few samples
        it = per_sample_gradients(model, all_encs[: args.loop_samples])
        for _ in range(min(args.loop_samples, n_all)):
            t0 = time.perf_counter()
            next(it)
            loop_time += time.perf_counter() - t0
            loop_n += 1
    loop_rate = loop_n / loop_time if loop_time else float("nan")
    say(f"per-sample loop fwd+bwd (all weight gradients): {loop_rate:.2f} samples/s over {loop_n} samples")

    # ---- dense reference timing
    dense_b16 = dense_b1 = float("nan")
    if args.dense_params > 0:
        dt = dense_timing(layout, args.d, args.dense_params, 0)
        dense_b16 = dt["sec_per_row_b16"] * n_params / 16 + 1 / loop_rate
        dense_b1 = dt["sec_per_row_b1"] * n_params + 1 / loop_rate
        say("")
        say("## dense reference (paper's method): timed on a slice, extrapolated to all parameters")
        say(f"projection timed on {dt['rows']:,} of {n_params:,} rows ({n_params * args.d / 1e9:.0f} G matrix "
            f"entries per gradient); generator {dt['gen_entries_per_s'] / 1e9:.2f} G entries/s "
            f"(torch bernoulli_: {dt['bernoulli_entries_per_s'] / 1e9:.3f} G entries/s)")  # fmt: skip
        say(f"dense, batches of 16 gradients: {dense_b16:.1f} s/sample (extrapolated: loop + projection)")
        say(f"dense, one gradient at a time:  {dense_b1:.1f} s/sample (extrapolated: loop + projection)")

    if exact:
        report_quality(args, model, sets, exact, encs_by_set, offsets, fast_vectors, dense_real)

    # ---- ratios
    say("")
    say("## ratios")
    say(f"fast / floor (same frozen-weight fwd+bwd):   {rate['fast'] / rate['floor']:.2f}x throughput (target >= 0.8);"
        f" per-batch median {med:.2f}x")  # fmt: skip
    if "train" in rate:
        say(f"fast / train-style fwd+bwd:                   {rate['fast'] / rate['train']:.2f}x")
    say(f"fast / per-sample loop fwd+bwd:               {rate['fast'] / loop_rate:.2f}x")
    if args.dense_params > 0:
        say(f"fast / dense reference (batches of 16):       {rate['fast'] * dense_b16:,.0f}x (extrapolated)")
        say(f"fast / dense reference (one at a time):       {rate['fast'] * dense_b1:,.0f}x (extrapolated)")
    say(f"# total {time.time() - t_start:.0f} s; load avg after={os.getloadavg()[0]:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(LINES) + "\n")
    return 0


def report_quality(args, model, sets, exact, encs_by_set, offsets, fast_vectors, dense_real) -> None:
    """G-Vendi error and cosine correlation of fast (several seeds) and dense projections against exact."""
    say("")
    say(f"## quality vs exact (G-Vendi relative error; Pearson r of off-diagonal cosines), seeds 0..{args.seeds - 1}")
    fast_seeds: dict[int, list[np.ndarray]] = {}
    for si in exact:
        encs = encs_by_set[si][: args.exact_size or None]  # the samples the exact kernel has
        lo, hi = offsets[si], offsets[si] + len(encs)
        per_seed = [fast_vectors[lo:hi]]
        for s in range(1, args.seeds):
            kps = KroneckerProjector(model, d=args.d, seed=s, block=args.block, embed_block=args.embed_block)
            vec = np.zeros((hi - lo, args.d), dtype=np.float32)
            for idx in batches_by_length(encs, args.batch_size):
                batch = [encs[i] for i in idx]
                ids, labels = collate(batch, 2)
                vec[idx] = kps.project(ids, labels, torch.tensor([len(e) for e in batch])).vectors
            per_seed.append(vec)
        fast_seeds[si] = per_seed
    header = (
        f"{'set':15s} {'exact':>8s} | {'fast G-Vendi (err)':>34s} {'r':>5s} | {'dense-sim G-Vendi err':>24s} {'r':>5s}"
    )
    say(header)
    worst_fast, worst_dense, rs_fast, rs_dense = 0.0, 0.0, [], []
    for si, ex in exact.items():
        f_err, f_r, d_err, d_r = [], [], [], []
        for vec in fast_seeds[si]:
            e, r = compare(kernel_of(vec), ex.kernel, ex.gvendi)
            f_err.append(e)
            f_r.append(r)
        for s in range(args.seeds):
            e, r = compare(simulated_dense(ex.kernel, args.d, s), ex.kernel, ex.gvendi)
            d_err.append(e)
            d_r.append(r)
        worst_fast = max(worst_fast, *map(abs, f_err))
        worst_dense = max(worst_dense, *map(abs, d_err))
        rs_fast += f_r
        rs_dense += d_r
        fe = " ".join(f"{x:+.1%}" for x in f_err)
        de = " ".join(f"{x:+.1%}" for x in d_err)
        say(f"{sets[si][0]:15s} {ex.gvendi:8.3f} | {fe:>34s} {np.mean(f_r):5.3f} | {de:>24s} {np.mean(d_r):5.3f}")
        if si in dense_real:
            re = [compare(kernel_of(y), ex.kernel, ex.gvendi) for y in dense_real[si]]
            say(f"{'':15s} {'':8s} | real dense Rademacher: " + " ".join(f"{e:+.1%} (r {r:.3f})" for e, r in re))
    rank_ok = []
    if len(exact) > 1:
        order = np.argsort([ex.gvendi for ex in exact.values()])
        for s in range(args.seeds):
            gv = [gvendi_from_kernel(kernel_of(fast_seeds[si][s])) for si in exact]
            rank_ok.append(bool((np.argsort(gv) == order).all()))
    say(f"fast: worst |G-Vendi error| {worst_fast:.1%}, mean Pearson r {np.mean(rs_fast):.3f}; same ranking of "
        f"sets as exact for {sum(rank_ok)}/{len(rank_ok)} seeds")  # fmt: skip
    say(f"dense JL (simulated from the exact Gram): worst |error| {worst_dense:.1%}, mean Pearson r "
        f"{np.mean(rs_dense):.3f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
