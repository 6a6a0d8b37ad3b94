"""Benchmark: distributed G-Vendi (Spark, d × d sums) vs a single-process baseline and vs the N × N Vendi-Score.

For each N (random unit vectors, d = 1024, float32, written once as a Delta table with delta-rs):

* ours     - ``prismatic.diversity.gradient_diversity`` on ``spark.read.parquet(<the table's current files>)``:
             per-partition float64 ``Xᵀ X`` in mapInArrow, per-group combine and eigvalsh on an executor.
* baseline - one process: pyarrow reads the same files batch by batch, numpy accumulates float64 ``G.T @ G``
             (BLAS on all cores), then eigvalsh on the driver. No Spark.
* vendi-score - the ``vendi-score`` package's ``score_X`` (N × N kernel, O(N³) eigvalsh) on the vectors in memory,
             at N ≤ --vs-max only; compared with our in-memory d × d path (``prismatic.vendi.score_dual``) and with
             the Spark path. Values must agree to 1e-6.

Usage::

    python bench/vendi.py                   # N = 10k, 100k
    python bench/vendi.py --full            # also N = 1M (writes 4 GB of float32 vectors)
    python bench/vendi.py --sizes 20000 --out /tmp/v.txt

Prints a table and the ratios, and writes the same text to ``--out`` (default bench/results/vendi.txt).
Timings are wall-clock on whatever machine runs this; the header records cores, BLAS threads and load.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from prismatic import vendi  # noqa: E402
from prismatic.diversity import gradient_diversity, vectors_from_arrow  # noqa: E402


def parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = 1
    if t.endswith("k"):
        t, mult = t[:-1], 1_000
    elif t.endswith("m"):
        t, mult = t[:-1], 1_000_000
    n = int(float(t) * mult)
    if n < 2:
        raise argparse.ArgumentTypeError(f"size must be >= 2, got {text!r}")
    return n


def write_table(root: Path, n: int, d: int, seed: int, chunk: int = 32_768, row_group: int = 4_096) -> float:
    """Write n random unit vectors (float32) as a Delta table; returns seconds. Streams, so memory stays small."""
    from deltalake import WriterProperties, write_deltalake

    schema = pa.schema(
        [
            pa.field("sample_id", pa.int64(), False),
            pa.field("spec_id", pa.string(), False),
            pa.field("vector", pa.list_(pa.field("element", pa.float32(), False)), False),
        ]
    )

    def batches():
        rng = np.random.default_rng(seed)
        for start in range(0, n, chunk):
            b = min(chunk, n - start)
            X = rng.standard_normal((b, d), dtype=np.float32)
            X /= np.linalg.norm(X, axis=1, keepdims=True)
            offsets = pa.array(np.arange(0, (b + 1) * d, d, dtype=np.int32))
            vec = pa.ListArray.from_arrays(offsets, pa.array(X.ravel()), type=schema.field("vector").type)
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.arange(start, start + b, dtype=np.int64)), pa.array(["bench"] * b), vec], schema=schema
            )

    t0 = time.perf_counter()
    reader = pa.RecordBatchReader.from_batches(schema, batches())
    write_deltalake(
        str(root), reader, mode="overwrite", writer_properties=WriterProperties(max_row_group_size=row_group)
    )
    return time.perf_counter() - t0


def tree_cpu_seconds(root_pid: int | None = None) -> float:
    """CPU seconds (user + sys) of a process and all its live descendants, plus children they have reaped.

    Covers the Spark JVM and its Python workers (descendants of this process), so it measures the work a path
    costs, which other load on a shared machine changes much less than wall-clock time. Linux only (/proc).
    """
    root_pid = root_pid or os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        cpu = sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
        stats[int(entry)] = (ppid, cpu)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def table_files(root: Path) -> list[str]:
    from deltalake import DeltaTable

    return DeltaTable(str(root)).file_uris()


def baseline(files: list[str], batch_rows: int = 16_384) -> tuple[float, int, float]:
    """pyarrow read + numpy float64 G.T @ G + eigvalsh. Returns (G-Vendi, n, seconds)."""
    t0 = time.perf_counter()
    S = None
    n = 0
    dataset = pads.dataset(files, format="parquet")
    for batch in dataset.to_batches(columns=["vector"], batch_size=batch_rows):
        if batch.num_rows == 0:
            continue
        G = vectors_from_arrow(batch.column(0)).astype(np.float64)
        S = G.T @ G if S is None else S.__iadd__(G.T @ G)
        n += G.shape[0]
    value = vendi.score_sums(S, n=n)
    return value, n, time.perf_counter() - t0


def read_matrix(files: list[str]) -> np.ndarray:
    table = pads.dataset(files, format="parquet").to_table(columns=["vector"])
    return vectors_from_arrow(table.column(0))


def ours(spark, files: list[str], root: Path) -> tuple[float, int, float, int]:
    """Spark path end to end (plan, read, sums, eigvalsh, collect). Returns (G-Vendi, n, seconds, partitions)."""
    t0 = time.perf_counter()
    df = spark.read.option("basePath", str(root)).parquet(*files)
    res = gradient_diversity(df)
    row = res.rows[res.rows["metric"] == "g_vendi"].iloc[0]
    elapsed = time.perf_counter() - t0
    return float(row["value"]), int(row["n"]), elapsed, df.rdd.getNumPartitions()


def timed(fn, *args):
    """Run fn(*args) → (result, wall seconds, CPU seconds of this process tree incl. the Spark JVM and workers)."""
    c0, t0 = tree_cpu_seconds(), time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0, tree_cpu_seconds() - c0


def fmt_runs(runs: list[tuple[float, float]]) -> str:
    best_t, best_c = min(r[0] for r in runs), min(r[1] for r in runs)
    each = ", ".join(f"{t:.2f}/{c:.2f}" for t, c in runs)
    return f"{best_t:8.2f} s wall, {best_c:8.2f} s cpu (runs wall/cpu: {each})"


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        return ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in info) or "unknown"
    except ImportError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10k,100k", help="comma-separated N (e.g. 10k,100k,1M)")
    ap.add_argument("--full", action="store_true", help="add N = 1M (4 GB of vectors on disk)")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument(
        "--vs-max",
        type=lambda t: 0 if t.strip() == "0" else parse_size(t),
        default=10_000,
        help="largest N for the vendi-score N × N run (0: skip)",
    )
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--data-dir", default=None, help="where the tables go (default: a temp folder, removed after)")
    ap.add_argument("--keep-data", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs of baseline and ours; the best is kept")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "vendi.txt"))
    args = ap.parse_args(argv)

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.full and 1_000_000 not in sizes:
        sizes.append(1_000_000)
    d = args.dim
    lines: list[str] = []

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def say(msg: str = "") -> None:
        print(msg, flush=True)
        lines.append(msg)
        out.write_text("\n".join(lines) + "\n")  # kept current, so a long run that dies leaves what it measured

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from prismatic.config import SparkConfig
    from prismatic.spark import get_spark

    spark = get_spark(
        SparkConfig(master=args.master, driver_memory=args.driver_memory, shuffle_partitions=4, app_name="bench-vendi")
    )
    import pyspark

    say("G-Vendi benchmark: distributed d x d sums (Spark) vs single-process pyarrow + numpy vs vendi-score N x N")
    say(f"date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {platform.platform()}; python {platform.python_version()}")
    say(
        f"cpu cores {os.cpu_count()}; numpy {np.__version__} ({blas_threads()}); pyspark {pyspark.__version__} "
        f"{args.master}; d = {d}; float32 vectors, float64 sums"
    )
    say(f"load average at start {os.getloadavg()[0]:.2f} (other work on the machine inflates every timing)")
    say("cpu = user + sys seconds of this process and its descendants (Spark JVM, Python workers), from /proc")
    say()

    base_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="prism-bench-vendi-"))
    base_dir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        # warm-up: JVM, Python workers and the code path, on a small table (not timed)
        warm = base_dir / "warmup"
        write_table(warm, 2_000, d, seed=args.seed + 99)
        ours(spark, table_files(warm), warm)

        for n in sizes:
            root = base_dir / f"vectors_{n}"
            wt = write_table(root, n, d, seed=args.seed)
            files = table_files(root)
            size_mb = sum(Path(f.removeprefix("file://")).stat().st_size for f in files) / 1e6
            say(f"N = {n:,}: table written in {wt:.1f} s ({len(files)} file(s), {size_mb:,.0f} MB)")
            # interleaved repeats, best of each: robust to other work on a shared machine
            runs_b, runs_o = [], []
            for _ in range(args.repeat):
                (v_base, n_base, _), t, c = timed(baseline, files)
                runs_b.append((t, c))
                (v_ours, n_ours, _, parts), t, c = timed(ours, spark, files, root)
                runs_o.append((t, c))
            if n_base != n or n_ours != n:
                raise SystemExit(f"row counts differ: baseline {n_base}, ours {n_ours}, written {n}")
            t_base, c_base = min(r[0] for r in runs_b), min(r[1] for r in runs_b)
            t_ours, c_ours = min(r[0] for r in runs_o), min(r[1] for r in runs_o)
            say(f"  baseline  pyarrow + numpy G.T @ G : {fmt_runs(runs_b)}   G-Vendi {v_base:.9f}")
            say(f"  ours      Spark, {parts:3d} partitions   : {fmt_runs(runs_o)}   G-Vendi {v_ours:.9f}")
            say(
                f"  ours / baseline: wall {t_ours / t_base:.2f}x, cpu {c_ours / c_base:.2f}x (best runs)   "
                f"|G-Vendi diff| = {abs(v_ours - v_base):.2e}"
            )
            rec = {"n": n, "t_base": t_base, "t_ours": t_ours, "c_base": c_base, "c_ours": c_ours}
            if n <= args.vs_max:
                from vendi_score import vendi as vs

                X = read_matrix(files)  # float32, as stored
                runs_d = []
                for _ in range(max(3, args.repeat)):  # cheap: best of several, like the other short timings
                    v_dual, t, c = timed(vendi.score_dual, X)  # float64 inside
                    runs_d.append((t, c))
                t_dual = min(r[0] for r in runs_d)
                X64 = X.astype(np.float64)  # given float32 the package would compute K and eigvalsh in float32
                v_vs, t_vs, c_vs = timed(vs.score_X, X64)
                del X64, X
                say(f"  ours      numpy d x d in memory  : {fmt_runs(runs_d)}   G-Vendi {v_dual:.9f}")
                say(f"  vendi-score score_X (N x N)      : {fmt_runs([(t_vs, c_vs)])}   Vendi   {v_vs:.9f}")
                say(
                    f"  vendi-score / ours numpy d x d = {t_vs / t_dual:.0f}x   "
                    f"vendi-score / ours Spark = {t_vs / t_ours:.0f}x   "
                    f"|diff| = {abs(v_dual - v_vs):.2e} (numpy), {abs(v_ours - v_vs):.2e} (Spark)"
                )
                ok = abs(v_dual - v_vs) <= 1e-6 and abs(v_ours - v_vs) <= 1e-6
                say(f"  values equal to 1e-6: {'yes' if ok else 'NO'}")
                rec.update(t_vs=t_vs, t_dual=t_dual)
            results.append(rec)
            if not args.keep_data:
                shutil.rmtree(root, ignore_errors=True)
            say()
    finally:
        if not args.data_dir and not args.keep_data:
            shutil.rmtree(base_dir, ignore_errors=True)
        spark.stop()

    say(f"summary (best of {args.repeat} runs; wall and CPU seconds; ratio > 1 means ours is slower)")
    say(
        f"{'N':>10} {'base wall':>10} {'ours wall':>10} {'ratio':>6} {'base cpu':>9} {'ours cpu':>9} {'ratio':>6}"
        f" {'vendi-score':>12} {'vs/numpy':>9} {'vs/spark':>9}"
    )
    for r in results:
        has_vs = "t_vs" in r
        say(
            f"{r['n']:>10,} {r['t_base']:10.2f} {r['t_ours']:10.2f} {r['t_ours'] / r['t_base']:6.2f}"
            f" {r['c_base']:9.2f} {r['c_ours']:9.2f} {r['c_ours'] / r['c_base']:6.2f}"
            + (
                f" {r['t_vs']:12.1f} {r['t_vs'] / r['t_dual']:9.0f} {r['t_vs'] / r['t_ours']:9.0f}"
                if has_vs
                else f" {'-':>12} {'-':>9} {'-':>9}"
            )
        )
    say(f"load average at end {os.getloadavg()[0]:.2f}")

    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
