"""Benchmark: distributed spherical k-means (ours, Spark) vs faiss-cpu vs Spark MLlib cosine KMeans.

Data: N unit vectors (float32) drawn around ``--directions`` random unit directions,
``x = normalize(u + sigma * g / sqrt(d))`` with ``g ~ N(0, I)`` (``--noise`` sigma; 1.0 puts a point at cosine
~0.7 from its direction), written once as parquet and read back by Spark like a table.

Methods, all with the same k, iterations and seed, scored by ONE objective: the sum over all N points of the
cosine to the nearest unit-normalized centroid, computed by ``prismatic.cluster.objective`` on the driver:

* ours (files / cache) - ``prismatic.cluster.spherical_kmeans`` on local[*]: staging pass, seeded k-means++ on a
  driver sample, Lloyd steps of one Spark job each, final sizes pass. The time includes reading the parquet
  table; "steps s" is the Lloyd loop plus the final pass alone. "ours (files)" is the default: rows whose
  label provably cannot change (bounds kept between steps) skip the k-wide product, with the same labels as
  full products; "ours (files, no pruning)" (``prune=False``) and "ours (cache)" do every product, the same
  work as faiss. The note gives the share of row-steps that needed the product.
  "ours (files, 1 partition)" runs every step as one task (``num_partitions=1``): against "ours (files)" it shows
  what a second task slot buys, the local stand-in for adding executors.
* faiss (all points) - ``faiss.Kmeans(d, k, niter, spherical=True, seed)`` on the vectors in memory with every
  point and no early stop (``max_points_per_centroid`` large, ``early_stop_threshold=-1``): exactly the work of
  ours with ``tol=None``, the reference of the ratios. It is timed before and again after ours.
* faiss (default call) - the same call with faiss's defaults: it trains on 256 * k sampled points (51 200 for
  k = 200) and stops once the objective stops changing; shown next to "ours (files, early stop)" (``tol=0``,
  stops once a step leaves the centroids unchanged).
* faiss (read + all points) - the same, timed from the parquet files (pyarrow read into memory first): what
  ours reads, so the like-for-like end-to-end reference.
* Before the first "ours" run an untimed warm-up on 4,096 rows starts the session's Python workers (a fresh
  session's first jobs pay ~10 s of process start-up and imports that a long-lived session has paid).
* numpy lloyd (1 process) - ``prismatic.cluster.lloyd``: our Lloyd steps without Spark (BLAS on all cores).
* mllib - ``prismatic.cluster.mllib_kmeans``: ``pyspark.ml.clustering.KMeans(distanceMeasure="cosine", seed)``.
  It compares points to centres one by one, so it runs at ``--mllib-n`` points (ours and faiss are rerun at that
  size for its objective) and its time is extrapolated linearly to N (cost per iteration is proportional to N k d).

Usage::

    python bench/kmeans.py                               # N = 200k, d = 1024, k = 200, 500 directions, 20 iters
    python bench/kmeans.py --n 50000 --mllib-n 0         # smaller, skip MLlib
    python bench/kmeans.py --storages files,cache --out /tmp/kmeans.txt

Prints a table and writes the same text to ``--out`` (default bench/results/kmeans.txt). Each method gets its
wall-clock seconds and the CPU seconds of this process tree (driver, JVM, Python workers: read from /proc, Linux
only). On a shared machine other jobs stretch wall time (and CPU time too, through cache and memory
contention), so the load average is recorded next to every measurement and faiss is timed again right after ours.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from prismatic import cluster as cl  # noqa: E402


def parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = 1
    if t.endswith("k"):
        t, mult = t[:-1], 1_000
    elif t.endswith("m"):
        t, mult = t[:-1], 1_000_000
    n = int(float(t) * mult)
    if n < 0:
        raise argparse.ArgumentTypeError(f"size must be >= 0, got {text!r}")
    return n


def make_data(n: int, d: int, directions: int, noise: float, seed: int) -> np.ndarray:
    """n unit float32 vectors around ``directions`` random directions, generated in chunks."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((directions, d)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        blk = dirs[rng.integers(directions, size=m)] + (noise / np.sqrt(d)) * rng.standard_normal(
            (m, d), dtype=np.float32
        )
        x[s : s + m] = blk / np.linalg.norm(blk, axis=1, keepdims=True)
    return x


def write_parquet(x: np.ndarray, folder: Path, files: int) -> None:
    """Write (sample_id bigint, vector array<float>) in ``files`` parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    n, d = x.shape
    bounds = np.linspace(0, n, files + 1).astype(int)
    for f in range(files):
        lo, hi = bounds[f], bounds[f + 1]
        with pq.ParquetWriter(
            folder / f"part-{f:03d}.parquet",
            pa.schema([("sample_id", pa.int64()), ("vector", pa.list_(pa.float32()))]),
        ) as w:
            for s in range(lo, hi, 8192):
                e = min(hi, s + 8192)
                vec = pa.ListArray.from_arrays(
                    pa.array(np.arange(0, (e - s + 1) * d, d, dtype=np.int32)), pa.array(x[s:e].reshape(-1))
                )
                w.write_batch(
                    pa.record_batch([pa.array(np.arange(s, e, dtype=np.int64)), vec], names=["sample_id", "vector"])
                )


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its descendants (the JVM and its Python workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    me, total = os.getpid(), 0.0
    for pid, c in cpu.items():
        p = pid
        while p > 1 and p != me:
            p = parent.get(p, 0)
        if p == me:
            total += c
    return total


CPU: dict[str, float] = {}


@dataclass
class Row:
    method: str
    n: int
    wall: float  # seconds
    cpu: float  # CPU seconds of the whole process tree (driver, JVM, Python workers)
    steps: float | None  # ours: Lloyd loop + final pass; mllib: fit
    iterations: int
    objective: float
    note: str


def timed(fn, label: str | None = None):
    """(result, wall seconds); CPU seconds of the process tree go to CPU[label]."""
    c0, t0 = tree_cpu_seconds(), time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    if label:
        CPU[label] = tree_cpu_seconds() - c0
    return out, secs


def run_faiss(x: np.ndarray, k: int, iterations: int, seed: int, all_points: bool):
    """faiss spherical k-means; returns (centroids, seconds, iterations run).

    ``all_points``: no subsampling and no early stop (``early_stop_threshold=-1``), i.e. exactly ``iterations``
    Lloyd steps over every point, the same work as ours with tol=None. Otherwise the plain call, whose defaults
    train on 256 * k sampled points and stop when the objective stops changing.
    """
    import faiss

    kw = {"max_points_per_centroid": int(np.ceil(len(x) / k)) + 1, "early_stop_threshold": -1.0} if all_points else {}
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, spherical=True, seed=seed, verbose=False, **kw)
    _, secs = timed(lambda: km.train(x), "faiss")
    return km.centroids.copy(), secs, len(km.iteration_stats)


def load_avg() -> str:
    """1-minute load average (the machine's other work slows every method)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=parse_size, default=200_000, help="points (default 200k)")
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--k", type=int, default=None, help="default 200 (--large-k: 1 %% of N)")
    ap.add_argument("--directions", type=int, default=500)
    ap.add_argument("--noise", type=float, default=1.0, help="noise norm relative to the direction (default 1.0)")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mllib-n", type=parse_size, default=10_000, help="points for MLlib (0 skips it)")
    ap.add_argument("--storages", default="files,cache", help="ours: comma list of files, cache")
    ap.add_argument("--skip-numpy", action="store_true", help="skip the single-process numpy Lloyd run")
    ap.add_argument("--skip-no-prune", action="store_true", help="skip ours (files) with prune=False")
    ap.add_argument("--no-scaling", dest="scaling", action="store_false", help="skip ours (files) with one partition")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kmeans.txt")
    ap.add_argument("--large-k", action="store_true", help="only the large-k section (k = 1 %% of N unless --k)")
    ap.add_argument("--nprobe", type=int, default=8, help="--large-k: coarse cells scanned per row")
    ap.add_argument("--flat-steps", type=int, default=2, help="--large-k: flat Lloyd steps timed (and compared)")
    ap.add_argument("--two-level-steps", type=int, default=4, help="--large-k: two-level Lloyd steps timed")
    ap.add_argument("--cores-per-worker", type=int, default=8, help="--large-k projection: cores per worker")
    ap.add_argument("--proj-rows", type=int, default=16384, help="--large-k projection: rows timed at that shape")
    ap.add_argument(
        "--crossover", type=lambda t: [int(v) for v in t.split(",")], default=[256, 512, 1024, 2048],
        help="--large-k: k values of the crossover table",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.large_k:
        return large_k_main(args)
    args.k = 200 if args.k is None else args.k
    if args.k < 1 or args.n < args.k:
        ap.error(f"--n ({args.n}) must be >= --k ({args.k}) >= 1")
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    for s in storages:
        if s not in ("files", "cache"):
            ap.error(f"--storages: unknown storage {s!r} (files, cache)")

    import faiss
    import pyspark

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from prismatic.config import ClusterConfig, SparkConfig
    from prismatic.spark import get_spark

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    n, d, k, it = args.n, args.d, args.k, args.iterations
    say("# spherical k-means benchmark (bench/kmeans.py)")
    say(
        f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  host {platform.node()}  cores {os.cpu_count()}  "
        f"load avg (1 min) at start {load_avg()}"
    )
    say(
        f"python {platform.python_version()}  numpy {np.__version__}  faiss {faiss.__version__}  "
        f"pyspark {pyspark.__version__}  master {args.master}  driver memory {args.driver_memory}"
    )
    say(
        f"data: N = {n:,} x d = {d}, unit float32 around {args.directions} directions, noise {args.noise}; "
        f"k = {k}, {it} iterations, seed {args.seed}"
    )
    say("objective = sum over all N points of cos(x, nearest unit centroid), same function for every method")
    say()

    tmp = Path(tempfile.mkdtemp(prefix="prism-bench-kmeans-"))
    rows: list[Row] = []
    mllib_rows: list[Row] = []
    results = {}
    try:
        x, secs = timed(lambda: make_data(n, d, args.directions, args.noise, args.seed))
        say(f"generated vectors in {secs:.1f} s")
        files = max(1, os.cpu_count() or 1)
        _, secs = timed(lambda: write_parquet(x, tmp / "vectors", files))
        say(f"wrote parquet ({files} files) in {secs:.1f} s")

        spark = get_spark(SparkConfig(master=args.master, driver_memory=args.driver_memory, shuffle_partitions=4))
        df = spark.read.parquet(str(tmp / "vectors"))

        def faiss_row(name: str, xs: np.ndarray, all_points: bool, note: str) -> Row:
            c, secs, iters = run_faiss(xs, k, it, args.seed, all_points)
            say(f"{name} at {len(xs):,}: {secs:.2f} s")
            obj = cl.objective(xs, c)
            return Row(name, len(xs), secs, CPU["faiss"], None, iters, obj, f"{note}load {load_avg()}")

        def ours_row(
            name: str, frame, xs: np.ndarray, storage: str, tol: float | None, prune: bool = True, **kw
        ) -> Row:
            cfg = ClusterConfig(iterations=it, seed=args.seed, tol=tol, storage=storage, **kw)
            r, secs = timed(lambda: cl.spherical_kmeans(frame, k, cfg, prune=prune), "ours")
            obj = cl.objective(xs, r.centroids)
            assert abs(obj - r.objective) <= 1e-5 * obj, (obj, r.objective)
            phases = ", ".join(f"{p} {v:.1f}" for p, v in r.seconds.items())
            say(f"{name} at {len(xs):,}: {secs:.2f} s ({phases})")
            results.setdefault(storage, r)
            steps = r.seconds["steps"] + r.seconds["final"]
            share = sum(r.gemm_rows) / max(1, len(r.gemm_rows) * r.n) * 100
            note = f"{r.partitions} partitions; k-wide product on {share:.0f} % of row-steps; {phases}; "
            note += f"load {load_avg()}"
            return Row(name, len(xs), secs, CPU["ours"], steps, r.iterations, obj, note)

        rows.append(faiss_row("faiss (all points)", x, True, "every point, no early stop; "))

        def read_then_faiss():
            import pyarrow.parquet as pq

            col = pq.read_table(tmp / "vectors", columns=["vector"]).column("vector").combine_chunks()
            xs = np.ascontiguousarray(col.values.to_numpy().reshape(len(col), -1))
            return run_faiss(xs, k, it, args.seed, True)[0]

        c, secs = timed(read_then_faiss, "faiss")
        say(f"faiss (all points) after a pyarrow read of the parquet at {n:,}: {secs:.2f} s")
        note = f"the same, timed from the parquet files (what ours reads); load {load_avg()}"
        rows.append(Row("faiss (read + all points)", n, secs, CPU["faiss"], None, it, cl.objective(x, c), note))
        # a fresh session's first Python-worker jobs pay process start-up and imports (about 10 s here); a
        # long-lived session (a Databricks cluster, a synthesis loop) has paid it, so warm up untimed
        warm = ClusterConfig(iterations=2, seed=args.seed, tol=None)
        _, secs = timed(lambda: cl.spherical_kmeans(df.where("sample_id < 4096"), k, warm))
        say(f"warm-up (untimed in the table): ours on 4,096 rows, 2 steps, {secs:.1f} s")
        if not args.skip_numpy:
            r, secs = timed(lambda: cl.lloyd(x, k, it, seed=args.seed, tol=None), "numpy")
            obj = cl.objective(x, r.centroids)
            note = f"no Spark, BLAS on all cores; load {load_avg()}"
            rows.append(Row("numpy lloyd (1 process)", n, secs, CPU["numpy"], None, r.iterations, obj, note))
            say(f"numpy lloyd: {secs:.2f} s")
        for storage in storages:
            rows.append(ours_row(f"ours ({storage})", df, x, storage, None))
            if storage == "files" and not args.skip_no_prune:
                rows.append(ours_row("ours (files, no pruning)", df, x, "files", None, prune=False))
        # faiss again right after ours: on a shared machine the load drifts, so both timings are reported
        rows.append(faiss_row("faiss (all points), again", x, True, "rerun after ours; "))
        sub = f"{min(n, 256 * k):,}"
        note = f"plain Kmeans(d, k, niter, spherical, seed): trains on {sub} sampled points, early stop; "
        rows.append(faiss_row("faiss (default call)", x, False, note))
        rows.append(ours_row("ours (files, early stop)", df, x, "files", 0.0))
        if args.scaling and "files" in storages:
            # one task per step instead of one per core: what the second core (task slot) buys
            rows.append(ours_row("ours (files, 1 partition)", df, x, "files", None, num_partitions=1))
        if results:
            r = next(iter(results.values()))
            out = tmp / "assignments"
            _, secs = timed(lambda: r.assignments.write.mode("overwrite").parquet(str(out)))
            say(f"assignments pass (write {n:,} rows of sample_id, cluster_id, cosine to parquet): {secs:.2f} s")

        if args.mllib_n:
            m = min(args.mllib_n, n)
            xs = x[:m]
            small = df.where(f"sample_id < {m}")
            res, secs = timed(lambda: cl.mllib_kmeans(small, k, ClusterConfig(iterations=it, seed=args.seed)), "mllib")
            fit = res.seconds["fit"]
            note = f"fit {fit:.1f} s, extrapolated to N = {n:,}: {fit * n / m:.0f} s; load {load_avg()}"
            obj = cl.objective(xs, res.centroids)
            mllib_rows.append(Row("mllib (cosine)", m, secs, CPU["mllib"], fit, res.iterations, obj, note))
            say(f"mllib at {m:,}: {secs:.2f} s (fit {fit:.2f})")
            mllib_rows.append(faiss_row("faiss (all points)", xs, True, ""))
            mllib_rows.append(ours_row("ours (files)", small, xs, "files", None))
        spark.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def table(title: str, entries: list[Row], ref_name: str) -> None:
        ref = next(e for e in entries if e.method == ref_name)
        say()
        say(title)
        say(
            f"{'method':<27}{'N':>9}{'iters':>6}{'wall s':>9}{'x ref':>7}{'cpu s':>9}{'x ref':>7}{'steps s':>9}"
            f"{'objective':>13}{'vs ref':>9}  note"
        )
        for e in entries:
            st = f"{e.steps:.1f}" if e.steps is not None else "-"
            rel = (e.objective - ref.objective) / ref.objective * 100
            say(
                f"{e.method:<27}{e.n:>9,}{e.iterations:>6}{e.wall:>9.1f}{e.wall / ref.wall:>7.2f}{e.cpu:>9.1f}"
                f"{e.cpu / ref.cpu:>7.2f}{st:>9}{e.objective:>13.1f}{rel:>+8.2f}%  {e.note}"
            )

    table(f"## N = {n:,} (x ref and vs ref: against faiss using every point)", rows, "faiss (all points)")
    if mllib_rows:
        table(f"## MLlib at N = {mllib_rows[0].n:,} (same k, iterations, seed)", mllib_rows, "faiss (all points)")

    if results:
        r = next(iter(results.values()))
        b = r.bytes_per_step
        say()
        say("## scale-out (bytes per Lloyd step, from KMeansResult.bytes_per_step)")
        say(
            f"broadcast: k x d float32 = {b['broadcast'] / 2**20:.2f} MiB to every task (PySpark ships the "
            "pickled closure as a broadcast when it exceeds 1 MB)"
        )
        say(
            f"partials: k x (d + 1) float64 + {cl.DEFAULT_RESEED_POOL} re-seed candidates = "
            f"{b['partials_per_partition'] / 2**20:.2f} MiB per partition; with P partitions the driver receives "
            f"P x that (reduce=driver), or k x (d + 1) x 8 = {k * (d + 1) * 8 / 2**20:.2f} MiB after an "
            "executor-side sum per block of 256 clusters (reduce=shuffle, chosen automatically above 512 MiB)"
        )
        say(
            f"vector data: storage=files moves none after staging (each task memory-maps its Arrow file); "
            f"storage=cache ships N x d x 4 = {n * d * 4 / 2**20:.0f} MiB from the JVM cache to the Python "
            "workers every step"
        )
        say(
            f"pruning state: each storage=files task writes its rows' label and two cosine bounds (12 bytes a row, "
            f"{n * 12 / 2**20:.1f} MiB for all N) next to its staged file and reads them back the next step; the "
            "driver ships the k centroid shifts. A task that finds no state (another executor, a lost file) does "
            "full products, so pruning never changes the result, only the work"
        )
        say(
            "compute per step is at most N x k x d multiply-adds split over the P tasks (less once pruning skips "
            "rows), so steps scale with cores until the per-step fixed cost (job scheduling + P x partials) "
            "dominates: keep P near the core count. A Lloyd step needs all partials before the next broadcast, "
            "so steps stay sequential: more executors shorten each step, not the number of steps"
        )
    say(f"load avg (1 min) at end {load_avg()}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# large k (k = 1 % of N): two-level vs flat assignment, per Lloyd step, one core
# ----------------------------------------------------------------------------------------------------------

LARGE_K_HEADER = "# large k: two-level vs flat Lloyd steps (bench/kmeans.py --large-k)"


def _one_thread():
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _our_steps(x: np.ndarray, start: np.ndarray, steps: int, cache) -> tuple[list[float], list[float], np.ndarray]:
    """Lloyd steps of ``prismatic.cluster`` (the per-partition kernels: assignment, float64 sums, re-seed
    candidates) on one core: (CPU seconds per step, objective under the centroids entering each step, centroids)."""
    times: list[float] = []
    tick = [time.process_time()]

    def on_step(*_):
        now = time.process_time()
        times.append(now - tick[0])
        tick[0] = now

    with _one_thread():
        loop = cl.lloyd_iterations(
            start.copy(), steps, None, cl._numpy_partials(x, None, cl.DEFAULT_RESEED_POOL, None, cache), on_step
        )
    return times, loop.history, loop.centroids


def _faiss_steps(x: np.ndarray, start: np.ndarray, steps: int, ivf: tuple[int, int] | None):
    """faiss Clustering from the same start on one thread: flat (IndexFlatIP) or IVF (IndexIVFFlat with
    ``(nlist, nprobe)``, its coarse quantizer trained once on the start centroids). (CPU s per step, centroids)."""
    import faiss

    faiss.omp_set_num_threads(1)
    k, d = start.shape
    cp = faiss.ClusteringParameters()
    cp.niter, cp.spherical, cp.max_points_per_centroid, cp.min_points_per_centroid = steps, True, 1 << 30, 1
    cp.seed = 0
    clus = faiss.Clustering(d, k, cp)
    clus.centroids.resize(start.size)
    faiss.copy_array_to_vector(np.ascontiguousarray(start).reshape(-1), clus.centroids)
    if ivf is None:
        index = faiss.IndexFlatIP(d)
    else:
        nlist, nprobe = ivf
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(start)
        index.nprobe = nprobe
    t0 = time.process_time()
    clus.train(x, index)
    secs = time.process_time() - t0
    c = faiss.vector_to_array(clus.centroids).reshape(k, d)
    return secs / steps, c


def large_k_main(args) -> int:
    n, d = args.n, args.d
    k = args.k if args.k else max(2, n // 100)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(LARGE_K_HEADER)
    say(
        f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  cores {os.cpu_count()}  load avg (1 min) at start {load_avg()}"
        f"  python {platform.python_version()}  numpy {np.__version__}"
    )
    say(
        f"data: N = {n:,} x d = {d}, unit float32 around {args.directions} directions, noise {args.noise}; "
        f"k = {k:,} (1 % of N), seed {args.seed}; every method on ONE core (BLAS / OpenMP limited to 1 thread), "
        "from the same start centroids (a seeded sample of rows); seconds are CPU seconds of this process (on a"
        " loaded machine wall time measures the other jobs), i.e. per-core costs"
    )
    x = make_data(n, d, args.directions, args.noise, args.seed)
    rng = np.random.default_rng(args.seed)
    start = x[np.sort(rng.choice(n, size=k, replace=False))].copy()
    kc = cl.default_k_coarse(k)
    nprobe = args.nprobe
    flat_steps, two_steps = args.flat_steps, args.two_level_steps

    # crossover: one assignment pass at growing k decides assign="auto"
    say()
    say("## crossover (one assignment pass of 20,000 rows, CPU s on one core; assign=auto: two-level from 1,024)")
    say(f"{'k':>7}{'k_coarse':>9}{'flat s':>9}{'two-level s':>12}{'speed-up':>9}")
    xs = x[:20_000]
    for kk in args.crossover:
        c = x[rng.choice(n, size=kk, replace=False)]
        with _one_thread():
            index = cl.build_coarse_index(c, nprobe=nprobe)
            t0 = time.process_time()
            cl.assign_blocked(xs, c)
            tf = time.process_time() - t0
            t0 = time.process_time()
            cl._assign_two_level(xs, c, index)
            tt = time.process_time() - t0
        say(f"{kk:>7,}{index.k_coarse:>9}{tf:>9.2f}{tt:>12.2f}{tf / tt:>9.2f}")

    say()
    say(f"## N = {n:,}, k = {k:,}: CPU seconds per Lloyd step (one core) and objective after the same steps")
    cache = cl._IndexCache(None, nprobe, args.seed)
    t_two, h_two, c_two = _our_steps(x, start, two_steps, cache)
    idx = cache.get(c_two)
    obj_two_at = h_two[flat_steps] if len(h_two) > flat_steps else cl.objective(x, c_two)
    say(f"ours two-level: {two_steps} steps, {np.mean(t_two):.1f} s/step (k_coarse {idx.k_coarse}, nprobe {nprobe})")
    t_flat, h_flat, c_flat = _our_steps(x, start, flat_steps, None)
    obj_flat = cl.objective(x, c_flat)
    say(f"ours flat: {flat_steps} steps, {np.mean(t_flat):.1f} s/step")
    fs_flat, fc_flat = _faiss_steps(x, start, flat_steps, None)
    say(f"faiss flat: {fs_flat:.1f} s/step")
    fs_ivf, fc_ivf = _faiss_steps(x, start, flat_steps, (kc, nprobe))
    say(f"faiss IVF: {fs_ivf:.1f} s/step")
    rows = [
        ("ours flat", np.mean(t_flat), flat_steps, obj_flat, "assign='flat': k-wide products"),
        (
            "ours two-level",
            np.mean(t_two),
            flat_steps,
            obj_two_at,
            f"k_coarse {idx.k_coarse}, nprobe {nprobe}: {idx.scanned_per_row():.0f} dot products a row of {k:,};"
            f" coarse index rebuilt each step on the driver",
        ),
        ("faiss flat (IndexFlatIP)", fs_flat, flat_steps, cl.objective(x, fc_flat), "faiss.Clustering, 1 thread"),
        (
            "faiss IVF (IndexIVFFlat)",
            fs_ivf,
            flat_steps,
            cl.objective(x, fc_ivf),
            f"nlist {kc}, nprobe {nprobe}, quantizer trained once on the start centroids, 1 thread",
        ),
    ]
    say()
    say(f"{'method':<27}{'cpu s':>8}{'x flat':>8}{'steps':>6}{'objective':>13}{'vs flat':>9}  note")
    for name, secs, st, obj, note in rows:
        say(
            f"{name:<27}{secs:>8.1f}{np.mean(t_flat) / secs:>8.2f}{st:>6}{obj:>13.1f}"
            f"{(obj - obj_flat) / obj_flat * 100:>+8.2f}%  {note}"
        )
    if two_steps > flat_steps:
        say(
            f"ours two-level after {two_steps} steps: objective {cl.objective(x, c_two):.1f} "
            f"({(cl.objective(x, c_two) - obj_flat) / obj_flat * 100:+.2f}% vs flat after {flat_steps})"
        )

    # projection to 10M x 1024 at k = 100,000 on 16 workers: per-row CPU cost measured AT that shape (d, k) on a
    # few rows, so the rates include what changes with the shape (cell sizes, gathers, the coarse scan)
    pn, pd_, pk, workers, cores = 10_000_000, 1024, 100_000, 16, args.cores_per_worker
    slots = workers * cores
    say()
    say(f"## projection: N = {pn:,} x d = {pd_} at k = {pk:,} on {workers} workers x {cores} cores ({slots} tasks)")
    cents = make_data(pk, pd_, args.directions * 20, args.noise, args.seed + 1)
    rows_p = make_data(args.proj_rows, pd_, args.directions * 20, args.noise, args.seed + 2)

    def marginal(fn, m: int) -> float:
        """CPU seconds a row: (time of m rows - time of m / 4 rows) / (3 m / 4), so per-call set-up (the k x d
        transposed or cell-grouped copy of the centroids, once per task in a step) drops out."""
        t0 = time.process_time()
        fn(rows_p[: m // 4])
        t1 = time.process_time()
        fn(rows_p[:m])
        t2 = time.process_time()
        return ((t2 - t1) - (t1 - t0)) / (m - m // 4)

    with _one_thread():
        t0 = time.process_time()
        pidx = cl.build_coarse_index(cents, nprobe=nprobe)
        t_cold = time.process_time() - t0
        moved = cents + 0.02 * np.random.default_rng(5).standard_normal(cents.shape, dtype=np.float32) / np.sqrt(pd_)
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        t0 = time.process_time()
        cl.build_coarse_index(moved, nprobe=nprobe, previous=pidx)  # what steps 2.. do: warm start
        t_index = time.process_time() - t0
        del moved
        members = np.ascontiguousarray(cents[pidx.order])
        t_two_row = marginal(lambda r: cl._assign_two_level(r, cents, pidx, None, members), len(rows_p))
        m_flat = max(4, args.proj_rows // 16)
        t_flat_row = marginal(lambda r: cl.assign_blocked(r, cents), m_flat)
    p_flat = pn * t_flat_row / slots
    p_two = pn * t_two_row / slots
    say(
        f"measured at d = {pd_}, k = {pk:,} (centroids: {pk:,} unit vectors around {args.directions * 20:,} "
        f"directions): flat {t_flat_row * 1e3:.2f} ms a row ({m_flat:,} rows); two-level {t_two_row * 1e3:.3f} ms a "
        f"row ({len(rows_p):,} rows; k_coarse {pidx.k_coarse}, nprobe {nprobe}, {pidx.scanned_per_row():,.0f} dot "
        f"products a row); coarse index on the driver (one core): {t_cold:.1f} s at the first step, {t_index:.1f} s "
        "warm-started (later steps)"
    )
    say(
        f"flat: {pn:,} rows x {t_flat_row * 1e3:.2f} ms / {slots} = {p_flat:,.0f} s per step "
        f"({20 * p_flat / 3600:.1f} h for 20)"
    )
    say(
        f"two-level: {pn:,} rows x {t_two_row * 1e3:.3f} ms / {slots} = {p_two:,.0f} s per step, + index "
        f"{t_index:.0f} s = {p_two + t_index:,.0f} s per step ({20 * (p_two + t_index) / 60:.0f} min for 20)"
    )
    say(
        f"speed-up per step at that k: {p_flat / (p_two + t_index):.0f}x (goal >= 10x; {p_flat / p_two:.0f}x for the "
        "tasks alone); the Spark job's fixed costs per step (scheduling, k x (d + 1) float64 partials per task, "
        "reduce=shuffle above 512 MiB) are the same for both and not included"
    )
    say(f"load avg (1 min) at end {load_avg()}")

    old = args.out.read_text() if args.out.exists() else ""
    if LARGE_K_HEADER in old:
        old = old[: old.index(LARGE_K_HEADER)].rstrip("\n") + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text((old + "\n" if old else "") + "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
