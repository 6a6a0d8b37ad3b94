"""Benchmark: prismatic's Spark dedup vs datasketch MinHashLSH on the same synthetic rows with planted duplicates.

Usage::

    python bench/dedup.py                          # 1M rows, writes bench/results/dedup.txt
    python bench/dedup.py --rows 100000 --out /tmp/d.txt
    python bench/dedup.py --mllib-rows 100000 --one-core --datasketch-our-bands   # how the results file was made

Data (seeded, ``--seed``): math-like and NLI-like rows, prompt 8-24 and completion 8-40 words drawn from a
Zipf-weighted 60k-word vocabulary, so unrelated rows share only a few common 3-grams. Planted groups, each inside
one task:

- exact copies of a base row, re-cased / re-spaced / fullwidth (identical after normalization, Jaccard 1.0);
- near variants of a base row with 1 to 5 word substitutions, insertions or deletions (true Jaccard from about 0.5
  to 0.97, many just around the threshold), two variants per base for some groups (chains);
- the same text under another task (must not be marked: dedup is per task).

Ground truth: the exact Jaccard of every pair inside a planted group, computed independently with Python sets of
word 3-gram tuples of the normalized text. A pair is *positive* when its Jaccard >= threshold; ground-truth
groups are the connected components of positive pairs.

Metrics, the same for every method: recall = share of positive pairs whose two rows end up in the same predicted
group; precision = share of predicted links (prismatic: each ``(sample_id, kept_id)``; datasketch: each
candidate pair its LSH query returned) whose two rows are in the same ground-truth group. datasketch is used as
its documentation shows: one ``MinHashLSH(threshold, num_perm)`` per task, ``MinHash.generator`` (the streamed
form of ``MinHash.bulk``) over the same normalized word 3-gram shingles, then query-before-insert over the rows
(its candidates are not verified). Both timings include normalization and shingling; prismatic's includes the
Spark jobs and collecting the result, not the Spark start-up or writing the input parquet. datasketch runs in one
Python process (one core); prismatic runs on Spark ``local[*]`` (all cores; ``--one-core`` adds a ``local[1]`` run
in a child process pinned to one CPU, JVM and Python workers included).

Optional rows: ``--mllib-rows N`` times ``method="mllib"`` (Spark MLlib MinHashLSH + approxSimilarityJoin) and the
banded method on an N-row subset holding whole planted groups; ``--datasketch-our-bands`` runs datasketch a second
time with prismatic's bands (``params=(bands, rows_per_band)``) to separate the banding choice from verification.

Prints a report and writes the same text to ``--out`` (default bench/results/dedup.txt; ``--out ''`` skips it).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from prismatic.config import DedupConfig, SparkConfig  # noqa: E402
from prismatic.minhash import candidate_probability  # noqa: E402
from prismatic.normalize import normalize_many  # noqa: E402

FULLWIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})


# ------------------------------------------------------------------------------------------------ data


def _vocab(rng: np.random.Generator, size: int = 60_000) -> tuple[np.ndarray, np.ndarray]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 10, size=size)
    words = {"".join(rng.choice(letters, size=k)) for k in lengths}
    words = np.array(sorted(words))
    p = 1.0 / np.arange(1, len(words) + 1) ** 0.9  # Zipf-like frequencies
    return words, p / p.sum()


def _edit(rng: np.random.Generator, words: list[str], k: int, vocab: np.ndarray) -> list[str]:
    w = list(words)
    for _ in range(k):
        op = rng.integers(3)
        i = int(rng.integers(len(w)))
        new = f"{vocab[rng.integers(len(vocab))]}{rng.integers(10**6)}"
        if op == 0:
            w[i] = new
        elif op == 1:
            w.insert(i, new)
        elif len(w) > 4:
            del w[i]
    return w


def _style(rng: np.random.Generator, text: str) -> str:
    """A different surface form with the same normalized text."""
    choice = rng.integers(3)
    if choice == 0:
        return text.upper()
    if choice == 1:
        return "  " + text.replace(" ", " \t ") + "\n"
    return text.translate(FULLWIDTH)


def make_rows(n: int, seed: int = 0) -> tuple[pd.DataFrame, list[list[int]]]:
    """``n`` rows with planted groups; returns the rows and the planted groups (lists of row positions)."""
    rng = np.random.default_rng(seed)
    vocab, p = _vocab(rng)
    n_exact_groups = n // 100  # ~1 % base rows get 1-2 exact copies
    n_near_groups = n // 25  # ~4 % base rows get 1-2 near variants
    n_cross = n // 200  # same text under the other task
    exact_copies = rng.integers(1, 3, size=n_exact_groups)
    near_copies = rng.integers(1, 3, size=n_near_groups)
    n_base = n - int(exact_copies.sum()) - int(near_copies.sum()) - n_cross
    lp = rng.integers(8, 25, size=n_base)
    lc = rng.integers(8, 41, size=n_base)
    flat = rng.choice(vocab, size=int((lp + lc).sum()), p=p)
    words, pos = [], 0
    for a, b in zip(lp, lc, strict=True):
        words.append((flat[pos : pos + a].tolist(), flat[pos + a : pos + a + b].tolist()))
        pos += a + b
    tasks = np.where(rng.random(n_base) < 0.7, "math", "nli").tolist()
    prompts = [" ".join(w[0]) for w in words]
    comps = [" ".join(w[1]) for w in words]
    groups: list[list[int]] = []
    bases = rng.permutation(n_base)
    cursor = 0

    def take() -> int:
        nonlocal cursor
        cursor += 1
        return int(bases[cursor - 1])

    def add(task: str, prompt: str, comp: str) -> int:
        tasks.append(task)
        prompts.append(prompt)
        comps.append(comp)
        return len(prompts) - 1

    for copies in exact_copies:
        b = take()
        g = [b]
        for _ in range(int(copies)):
            g.append(add(tasks[b], _style(rng, prompts[b]), _style(rng, comps[b])))
        groups.append(g)
    for copies in near_copies:
        b = take()
        g = [b]
        for _ in range(int(copies)):
            pw, cw = words[b]
            k = int(rng.integers(1, 6))
            if rng.random() < 0.5:
                pw = _edit(rng, pw, k, vocab)
            else:
                cw = _edit(rng, cw, k, vocab)
            g.append(add(tasks[b], " ".join(pw), " ".join(cw)))
        groups.append(g)
    for _ in range(n_cross):
        b = take()
        add("nli" if tasks[b] == "math" else "math", prompts[b], comps[b])
    m = len(prompts)
    assert m == n, (m, n)
    df = pd.DataFrame({"task": tasks, "prompt": prompts, "completion": comps})
    df["sample_id"] = [f"{i:012x}" for i in rng.permutation(m)]  # random id order: kept_id is not always the base
    return df[["sample_id", "task", "prompt", "completion"]], groups


def ref_shingles(text: str, ngram: int) -> frozenset:
    words = text.split()
    if len(words) < ngram:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))


def ground_truth(df: pd.DataFrame, groups: list[list[int]], cfg: DedupConfig):
    """Positive pairs (row positions, J >= threshold), their Jaccards, and a row -> ground-truth group map."""
    texts = df["prompt"].to_numpy()
    comps = df["completion"].to_numpy()
    pos_pairs, pos_j, all_j = [], [], []
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for g in groups:
        norm = normalize_many([texts[i] + "\n" + comps[i] for i in g], cfg.normalize)
        sets = [ref_shingles(t, cfg.ngram) for t in norm]
        for x in range(len(g)):
            for y in range(x + 1, len(g)):
                u = len(sets[x] | sets[y])
                j = len(sets[x] & sets[y]) / u if u else 0.0
                all_j.append(j)
                if j >= cfg.threshold:
                    pos_pairs.append((g[x], g[y]))
                    pos_j.append(j)
                    parent[find(g[x])] = find(g[y])
    label = {x: find(x) for x in list(parent)}
    return pos_pairs, np.array(pos_j), np.array(all_j), label


def score(edges: list[tuple[int, int]], pos_pairs, gt_label: dict[int, int]) -> tuple[float, float, int]:
    """(precision, recall, predicted links) of predicted links (row positions) against the ground truth."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    good = 0
    for a, b in edges:
        parent[find(a)] = find(b)
        ga, gb = gt_label.get(a), gt_label.get(b)
        good += ga is not None and ga == gb
    found = sum(1 for a, b in pos_pairs if find(a) == find(b))
    precision = good / len(edges) if edges else 1.0
    recall = found / len(pos_pairs) if pos_pairs else 1.0
    return precision, recall, len(edges)


# ------------------------------------------------------------------------------------------------ methods


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its children (the Spark JVM and its Python workers)."""
    try:
        import psutil
    except ImportError:  # optional: only the CPU column is lost
        return float("nan")
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def run_datasketch(
    df: pd.DataFrame, cfg: DedupConfig, params: tuple[int, int] | None = None
) -> tuple[list[tuple[int, int]], float, tuple[int, int]]:
    """datasketch MinHashLSH per task, query-before-insert; ``params=(b, r)`` overrides its own band choice."""
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    texts = (df["prompt"] + "\n" + df["completion"]).tolist()
    norm = normalize_many(texts, cfg.normalize)
    del texts
    n = cfg.ngram

    def shingles():  # streamed: 1M rows of shingle lists would not fit next to Spark on this machine
        for t in norm:
            w = t.split(" ")
            if len(w) < n:
                yield [" ".join(w).encode()]
            else:
                yield [" ".join(w[i : i + n]).encode() for i in range(len(w) - n + 1)]

    edges: list[tuple[int, int]] = []
    lshs: dict[str, MinHashLSH] = {}
    used = (0, 0)
    minhashes = MinHash.generator(shingles(), num_perm=cfg.num_perm, seed=cfg.seed)
    for i, (task, m) in enumerate(zip(df["task"].tolist(), minhashes, strict=True)):
        lsh = lshs.get(task)
        if lsh is None:
            lsh = lshs[task] = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=params)
            used = (lsh.b, lsh.r)
        for j in lsh.query(m):
            edges.append((j, i))
        lsh.insert(i, m)
    return edges, time.perf_counter() - t0, used


def _links(out: pd.DataFrame, df_ids: pd.Series) -> list[tuple[int, int]]:
    """``(sample_id, kept_id)`` rows of a dedup result as pairs of row positions in the generated frame."""
    pos = pd.Series(np.arange(len(df_ids)), index=df_ids.to_numpy())
    a = pos.loc[out["sample_id"].to_numpy()].to_numpy()
    b = pos.loc[out["kept_id"].to_numpy()].to_numpy()
    return list(zip(a.tolist(), b.tolist(), strict=True))


def run_prismatic(spark, path: str, df_ids: pd.Series | None, cfg: DedupConfig):
    from prismatic.dedup import run_dedup

    t0 = time.perf_counter()
    samples = spark.read.parquet(path)
    result, stats = run_dedup(samples, cfg)
    out = result.toPandas()
    seconds = time.perf_counter() - t0
    return (_links(out, df_ids) if df_ids is not None else None), seconds, stats, out


CHILD_TAG = "ONE_CORE_RESULT "


def one_core_child(path: str, out_path: str, driver_memory: str, cfg: DedupConfig) -> int:
    """``--one-core-child``: prismatic on Spark ``local[1]`` in this process, which the parent pinned to one CPU
    (the JVM and its Python workers inherit the affinity). Writes the result rows to ``out_path`` and prints one
    JSON line (seconds, cpu seconds, stage seconds)."""
    import json

    from prismatic.spark import get_spark

    spark = get_spark(
        SparkConfig(master="local[1]", driver_memory=driver_memory, shuffle_partitions=8, arrow_batch_rows=10_000)
    )
    spark.read.parquet(path).count()  # warm-up, as in the parent
    cpu0 = tree_cpu_seconds()
    _, secs, stats, out = run_prismatic(spark, path, None, cfg)
    cpu = tree_cpu_seconds() - cpu0
    out.to_parquet(out_path)
    spark.stop()
    info = {"seconds": secs, "cpu": cpu, "stages": stats.seconds, "affinity": sorted(os.sched_getaffinity(0))}
    info.update(exact=stats.exact, near=stats.near, cand=stats.candidate_pairs, verified=stats.verified_pairs)
    print(CHILD_TAG + json.dumps(info), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ main


REFERENCE = (
    "reference (issue #3, measured by the issue author on their machine, 200k rows): datasketch MinHashLSH 20 s, "
    "recall 0.73; Spark MLlib MinHashLSH + similarity join 45 s, recall 1.0"
)
GOAL = "goal: recall >= 0.99 and precision >= 0.99 at <= 1.5x datasketch's seconds, same rows, same machine"

SCALE_NOTE = """\
How it scales out. datasketch keeps one in-memory index in one Python process: its time grows linearly with the
rows on one core, and its storage back ends share the index, not the hashing, so more cores or machines do not
help. prismatic's work is per-partition numpy in mapInArrow (normalize, sha256, shingles, MinHash, band keys: the
"sketch" stage) plus Spark shuffles keyed by a hash (exact key; band-key group; candidate pair); every stage runs
on as many executors as there are partitions, and the band keys travel as packed binary blobs (bands x 16 bytes
per row), not as rows. Only the verified-pair graph may come to the driver, and only up to driver_max_edges pairs
(else connected components run in Spark). Candidate and verified pairs grow with the duplicates, not with N^2."""


def _versions() -> str:
    import importlib.metadata as md

    out = [f"python {platform.python_version()}"]
    for pkg in ("numpy", "pyarrow", "pyspark", "datasketch"):
        try:
            out.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            out.append(f"{pkg} -")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--mllib-rows", type=int, default=0, help="also time method=mllib on this many rows (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--driver-memory", default="6g")
    ap.add_argument("--skip-datasketch", action="store_true")
    ap.add_argument(
        "--datasketch-our-bands", action="store_true", help="also run datasketch with prismatic's bands x rows"
    )
    ap.add_argument(
        "--one-core", action="store_true", help="also time prismatic on Spark local[1] pinned to one CPU (scaling)"
    )
    ap.add_argument("--one-core-child", nargs=2, metavar=("PARQUET", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "dedup.txt"), help="report file ('' = none)")
    args = ap.parse_args(argv)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    cfg = DedupConfig(threshold=args.threshold)
    if args.one_core_child:
        return one_core_child(*args.one_core_child, args.driver_memory, cfg)
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    t = time.perf_counter()
    df, groups = make_rows(args.rows, args.seed)
    pos_pairs, pos_j, all_j, gt_label = ground_truth(df, groups, cfg)
    gen_s = time.perf_counter() - t
    say(f"# dedup bench  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {os.cpu_count()} cores")
    say(f"{platform.platform()}; {_versions()}; load average at start {os.getloadavg()[0]:.1f}")
    say(REFERENCE)
    say(GOAL)
    say(
        f"rows {len(df):,}  planted groups {len(groups):,}  planted pairs {len(all_j):,}  "
        f"positive (J >= {cfg.threshold}) {len(pos_pairs):,}  below threshold {int((all_j < cfg.threshold).sum()):,}  "
        f"(generated in {gen_s:.0f} s)"
    )
    hist, edges_ = np.histogram(all_j, bins=[0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0001])
    say(
        "planted-pair Jaccard histogram: "
        + ", ".join(f"[{a:.2f},{b:.2f}) {c}" for a, b, c in zip(edges_, edges_[1:], hist, strict=False))
    )
    say(
        f"config: word {cfg.ngram}-gram shingles, threshold {cfg.threshold}, num_perm {cfg.num_perm}; prismatic bands "
        f"{cfg.bands} x {cfg.rows_per_band} (P(candidate | J={cfg.threshold}) = "
        f"{candidate_probability(cfg.threshold, cfg.bands, cfg.rows_per_band):.5f}), candidates verified by exact "
        f"Jaccard"
    )
    say()

    results = []  # (name, seconds, cpu seconds, precision, recall, links, (load start, load end))

    def spark_session(master: str):
        from prismatic.spark import get_spark

        return get_spark(
            SparkConfig(master=master, driver_memory=args.driver_memory, shuffle_partitions=8, arrow_batch_rows=10_000)
        )

    def timed_prismatic(spark, name, path, c, pairs):
        load0, cpu0 = os.getloadavg()[0], tree_cpu_seconds()
        e, s, st, _ = run_prismatic(spark, path, df["sample_id"], c)
        cpu = tree_cpu_seconds() - cpu0
        p, r, k = score(e, pairs, gt_label)
        results.append((name, s, cpu, p, r, k, (load0, os.getloadavg()[0])))
        say(f"{name}: stages (s) {st.seconds}")
        say(
            f"{' ' * len(name)}  {st.exact:,} exact + {st.near:,} near; "
            f"{'MLlib join' if c.method == 'mllib' else f'{st.candidate_pairs:,}'} candidate pairs, "
            f"{st.verified_pairs:,} verified; components on {st.components_on or '-'}"
        )
        gc.collect()

    main_name = "prismatic (banded, Spark local[*])"
    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    try:
        path = str(tmp / "samples")
        os.makedirs(path)
        n_files = 8
        table = pa.Table.from_pandas(df, preserve_index=False)
        step = -(-len(df) // n_files)
        for k in range(n_files):
            pq.write_table(table.slice(k * step, step), f"{path}/part-{k:02d}.parquet")
        del table

        spark = spark_session("local[*]")
        spark.read.parquet(path).count()  # warm-up: JVM, file listing
        timed_prismatic(spark, main_name, path, cfg, pos_pairs)

        if args.mllib_rows:
            # whole planted groups for ~10 % of the subset, the rest unrelated rows; positions stay those of df
            members: list[int] = []
            for k in np.random.default_rng(args.seed).permutation(len(groups)):  # exact and near groups alike
                g = groups[k]
                if len(members) + len(g) > args.mllib_rows // 10:
                    break
                members += g
            in_groups = {i for g in groups for i in g}
            others = [i for i in range(len(df)) if i not in in_groups][: args.mllib_rows - len(members)]
            keep = set(members) | set(others)
            sub = df.iloc[sorted(keep)]
            sub_pos = [(a, b) for a, b in pos_pairs if a in keep and b in keep]
            sub_path = str(tmp / "samples_mllib")
            pq.write_table(pa.Table.from_pandas(sub, preserve_index=False), sub_path + ".parquet")
            mcfg = cfg.model_copy(update={"method": "mllib"})
            for name, c in (("prismatic (banded)", cfg), ("prismatic (mllib)", mcfg)):
                timed_prismatic(spark, f"{name} @ {len(sub):,} rows", sub_path + ".parquet", c, sub_pos)

        spark.stop()  # free the JVM's memory before the next session / datasketch's in-memory index
        if args.one_core:  # a child process pinned to CPU 0 (this JVM already runs on every core)
            import json
            import subprocess

            res_path = str(tmp / "one_core.parquet")
            cmd = [sys.executable, __file__, "--one-core-child", path, res_path]
            cmd += ["--driver-memory", args.driver_memory, "--threshold", str(args.threshold)]
            load0 = os.getloadavg()[0]
            proc = subprocess.run(
                cmd, preexec_fn=lambda: os.sched_setaffinity(0, {0}), capture_output=True, text=True, check=False
            )
            tagged = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_TAG)]
            if proc.returncode or not tagged:
                raise RuntimeError(f"one-core child failed ({proc.returncode}): {proc.stderr[-2000:]}")
            info = json.loads(tagged[-1][len(CHILD_TAG) :])
            name = "prismatic (banded, local[1], pinned to 1 CPU)"
            p, r, k = score(_links(pd.read_parquet(res_path), df["sample_id"]), pos_pairs, gt_label)
            results.append((name, info["seconds"], info["cpu"], p, r, k, (load0, os.getloadavg()[0])))
            say(f"{name}: stages (s) {info['stages']}  (CPUs allowed: {info['affinity']})")
            say(
                f"{' ' * len(name)}  {info['exact']:,} exact + {info['near']:,} near; {info['cand']:,} candidate "
                f"pairs, {info['verified']:,} verified"
            )

        if not args.skip_datasketch:
            runs = [None, (cfg.bands, cfg.rows_per_band)] if args.datasketch_our_bands else [None]
            for params in runs:
                load0, cpu0 = os.getloadavg()[0], time.process_time()  # datasketch runs in this process only
                edges, secs, used = run_datasketch(df, cfg, params)
                cpu = time.process_time() - cpu0
                p, r, k = score(edges, pos_pairs, gt_label)
                how = "its own choice" if params is None else "prismatic's"
                name = f"datasketch MinHashLSH (b={used[0]}, r={used[1]}, {how})"
                results.append((name, secs, cpu, p, r, k, (load0, os.getloadavg()[0])))
                del edges
                gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    say()
    base = next((s for n, s, *_ in results if n.startswith("datasketch")), None)
    say(
        f"{'method':<52} {'seconds':>8} {'vs datasketch':>13} {'cpu s':>7} {'precision':>9} {'recall':>7} "
        f"{'links':>8}  load avg (start, end)"
    )
    for name, s, cpu, p, r, k, (l0, l1) in results:
        ratio = f"{s / base:.2f}x" if base and "@" not in name else "-"
        say(f"{name:<52} {s:>8.1f} {ratio:>13} {cpu:>7.0f} {p:>9.4f} {r:>7.4f} {k:>8,}  {l0:.1f}, {l1:.1f}")
    say("seconds: wall clock; cpu s: user + sys of the process tree (Spark JVM and Python workers included)")
    say()
    ours = next(x for x in results if x[0] == main_name)
    if base:
        met = ours[3] >= 0.99 and ours[4] >= 0.99 and ours[1] <= 1.5 * base
        say(
            f"goal at {len(df):,} rows: {'met' if met else 'NOT met'} (precision {ours[3]:.4f}, recall {ours[4]:.4f}, "
            f"{ours[1] / base:.2f}x datasketch's seconds)"
        )
    one = next((x for x in results if "pinned" in x[0]), None)
    if one:
        say(
            f"cores: 1 CPU (local[1], pinned) {one[1]:.1f} s -> {os.cpu_count()} CPUs (local[*]) {ours[1]:.1f} s, "
            f"speed-up {one[1] / ours[1]:.2f}x"
        )
    say(SCALE_NOTE)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
