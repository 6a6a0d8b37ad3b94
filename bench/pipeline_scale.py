"""Scale check: the `prism` commands a user runs first (ingest, dedup, status, sql) on a million rows.

Usage::

    python bench/pipeline_scale.py --rows 1000000 [--out bench/results/pipeline_scale.txt]

Rows come from ``bench/dedup.py``'s generator (math-like and NLI-like texts with planted exact and near
duplicates), written as JSONL files in chunks, plus a share of broken lines (invalid JSON, missing field, empty
text, wrong type) so quarantine is exercised at scale. Each command runs as its own ``prism`` subprocess on a
fresh data root, exactly as a user would type it; the bench prints the seconds of each, checks conservation
(rows read = new samples + duplicates + quarantined, and samples = pool + duplicates after dedup), then runs the
ingest again to show that a re-run writes nothing. It is a check of the whole path, not a comparison.

``--parse`` adds (``--parse-only``: runs only) the comparison of where ingest parses: the same input, each setting
in its own process on a fresh data root: today's driver parse, Spark tasks on ``local[1]`` and on ``local[*]``; the
session start is not in the times; the parse (read, validate, write staging) and the commit (MERGE) are timed
apart, and the three must stage the same rows with the same reasons.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRISM = [sys.executable, "-m", "prismatic.cli"]


def load_generator():
    spec = importlib.util.spec_from_file_location("bench_dedup", REPO / "bench" / "dedup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_rows


def write_inputs(folder: Path, rows: int, seed: int, bad_every: int, chunk: int) -> dict[str, int]:
    """JSONL files per task under folder/<task>/; returns the line count per task (bad lines included)."""
    df, _ = load_generator()(rows, seed)
    counts: dict[str, int] = {}
    for task, part in df.groupby("task", sort=True):
        out = folder / task
        out.mkdir(parents=True)
        recs = part[["prompt", "completion"]].to_dict("records")
        lines = []
        for i, r in enumerate(recs):
            lines.append(json.dumps(r, ensure_ascii=False))
            if bad_every and i % bad_every == 0:  # one broken line of each kind in turn
                kind = (i // bad_every) % 4
                lines.append(
                    [
                        '{"prompt": "unterminated',
                        json.dumps({"prompt": r["prompt"]}),
                        json.dumps({"prompt": "  ", "completion": r["completion"]}),
                        json.dumps({"prompt": r["prompt"], "completion": 7}),
                    ][kind]
                )
        for j in range(0, len(lines), chunk):
            (out / f"part-{j // chunk:04d}.jsonl").write_text("\n".join(lines[j : j + chunk]) + "\n")
        counts[str(task)] = len(lines)
    return counts


def prism(args: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(PRISM + args, env=env, capture_output=True, text=True, cwd=REPO)
    secs = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(
            f"prism {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return secs, done.stdout


CONSERVATION = r"rows read (\d+) = new samples (\d+) \+ duplicates (\d+) \+ quarantined (\d+)"


def numbers(pattern: str, text: str) -> tuple[int, ...]:
    m = re.search(pattern, text.replace(",", ""))
    if not m:
        raise SystemExit(f"expected /{pattern}/ in:\n{text[-2000:]}")
    return tuple(int(g) for g in m.groups())


PARSE_SETTINGS = (("driver", None), ("spark", "local[1]"), ("spark", "local[*]"))


def parse_worker(mode: str, master: str, folder: str, root: str, split_bytes: int) -> dict:
    """One ingest of ``folder`` into a fresh ``root``: seconds of Spark start, parse and commit (in this process)."""
    from prismatic.config import SparkConfig, load_config
    from prismatic.ingest import _earlier_batches, commit, resolve_inputs, stage_file, stage_in_spark
    from prismatic.spark import get_spark
    from prismatic.tables import open_store

    t0 = time.perf_counter()
    spark = get_spark(SparkConfig(master=master, driver_memory="3g")) if mode == "spark" else None
    if spark is not None:
        spark.range(0, 2, 1, 2).count()  # the first job also starts the Python workers' JVM side
    started = time.perf_counter() - t0
    settings = load_config(overrides=[f"data_root={root}", f"ingest.mode={mode}", f"ingest.split_bytes={split_bytes}"])
    store = open_store(settings, spark)
    files = resolve_inputs([folder])
    t0 = time.perf_counter()
    if mode == "spark":
        staged, failed, stage_root = stage_in_spark(spark, files, "scale", "generic", settings)
        assert not failed, failed
    else:
        staged = [stage_file(p, f, "scale", "generic", settings) for p, f in files]
    parsed = time.perf_counter() - t0
    t0 = time.perf_counter()
    reps = commit(store, staged, _earlier_batches(store, "scale", [s.report.file for s in staged]))
    committed = time.perf_counter() - t0
    reasons: dict[str, int] = {}
    for r in reps:
        for k, v in r.reasons.items():
            reasons[k] = reasons.get(k, 0) + v
    slots = spark.sparkContext.defaultParallelism if spark is not None else 1
    if spark is not None:
        spark.stop()  # a session left to interpreter teardown can abort the process after its result
    return {
        "start": started, "parse": parsed, "commit": committed, "read": sum(r.rows_read for r in reps),
        "new": sum(r.new_samples for r in reps), "quarantined": sum(r.quarantined for r in reps), "reasons": reasons,
        "slots": slots,
    }  # fmt: skip


def parse_section(folder: Path, tmp: Path, split_bytes: int, say) -> None:
    lines = sum(1 for p in folder.rglob("*.jsonl") for _ in open(p, "rb"))
    size = sum(p.stat().st_size for p in folder.rglob("*.jsonl"))
    say(f"## where ingest parses: {lines:,} JSONL lines, {size / 1e6:.0f} MB in {len(list(folder.rglob('*.jsonl')))}"
        f" files, ingest.split_bytes {split_bytes >> 20} MiB")  # fmt: skip
    results = {}
    for k, (mode, master) in enumerate(PARSE_SETTINGS):
        name = mode if master is None else f"spark {master}"
        call = f"parse_worker({mode!r}, {master!r}, {str(folder)!r}, {str(tmp / f'parse-{k}')!r}, {split_bytes})"
        code = (
            f"import json, sys; sys.path.insert(0, 'bench'); from pipeline_scale import parse_worker; "
            f"print('RESULT', json.dumps({call}))"
        )
        env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
        if "RESULT " not in done.stdout:
            raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        if done.returncode != 0:  # the ingest finished and reported; only the process exit failed: say so
            say(f"note: {name} exited with {done.returncode} after its result: {done.stderr.strip()[-200:]}")
        results[name] = json.loads(done.stdout.split("RESULT ", 1)[1])
    first = next(iter(results.values()))
    for name, r in results.items():
        assert (r["read"], r["new"], r["quarantined"], r["reasons"]) == (
            first["read"], first["new"], first["quarantined"], first["reasons"]), (name, r, first)  # fmt: skip
    assert first["read"] <= lines, (first["read"], lines)  # blank lines are not rows
    base = results["driver"]["parse"]
    say(f"{'parse in':<20}{'slots':>6}{'start s':>9}{'parse s':>9}{'rows/s':>10}{'vs driver':>10}{'commit s':>10}")
    for name, r in results.items():
        say(f"{name:<20}{r['slots']:>6}{r['start']:>9.1f}{r['parse']:>9.1f}{r['read'] / r['parse']:>10,.0f}"
            f"{base / r['parse']:>9.2f}x{r['commit']:>10.1f}")  # fmt: skip
    one, many = results["spark local[1]"], results["spark local[*]"]
    say(f"speed-up local[*] over local[1]: {one['parse'] / many['parse']:.2f}x on {many['slots']} slots;"
        f" every setting staged {first['read']:,} rows = {first['new']:,} new + {first['quarantined']:,} quarantined"
        f" ({', '.join(f'{k} {v}' for k, v in sorted(first['reasons'].items()))})")  # fmt: skip
    rate = first["read"] / one["parse"]
    say(
        f"per-core rate in Spark tasks: {rate:,.0f} rows/s; 100M lines over N workers of c cores, parse only:"
        f" 1e8 / ({rate:,.0f} * N * c) s, e.g. {1e8 / (rate * 16 * 8):.0f} s on 16 workers x 8 cores,"
        f" {1e8 / (rate * 4 * 4):.0f} s on 4 x 4 (driver parse here: {1e8 / (first['read'] / base) / 60:.0f} min)"
    )
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bad-every", type=int, default=1000, help="one broken line after every N good ones (0: none)")
    ap.add_argument("--chunk", type=int, default=100_000, help="lines per JSONL file")
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--keep", default=None, help="keep the data root in this folder (default: a temp folder)")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    ap.add_argument("--parse", action="store_true", help="also compare driver vs Spark-task parsing")
    ap.add_argument("--parse-only", action="store_true", help="only the parse comparison")
    ap.add_argument("--split-mib", type=int, default=64, help="ingest.split_bytes in MiB for the parse comparison")
    ap.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = ap.parse_args(argv)

    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    tmp = Path(tempfile.mkdtemp(prefix="prism-scale-"))
    root = Path(args.keep) if args.keep else tmp / "lake"
    env = dict(
        os.environ, COLUMNS="250", PRISM_DATA_ROOT=str(root), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable
    )
    common = ["--set", f"spark.driver_memory={args.driver_memory}"]
    try:
        t0 = time.perf_counter()
        counts = write_inputs(tmp / "in", args.rows, args.seed, args.bad_every, args.chunk)
        say(
            f"# prism at scale  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {os.cpu_count()} cores  "
            f"load {os.getloadavg()[0]:.1f}"
        )
        say(
            f"input: {args.rows:,} generated rows + broken lines = {sum(counts.values()):,} JSONL lines in "
            f"{len(list((tmp / 'in').rglob('*.jsonl')))} files ({time.perf_counter() - t0:.0f} s to write)"
        )
        say()
        if args.parse or args.parse_only:
            parse_section(tmp / "in", tmp, args.split_mib << 20, say)
            say()
        if args.parse_only:
            return _write(args, lines, tmp)
        timings: list[tuple[str, float, str]] = []
        total_read = total_new = total_dup = total_q = 0
        for task, n in counts.items():
            secs, out = prism(
                common + ["ingest", str(tmp / "in" / task), "--source", f"scale_{task}", "--task", "generic"], env
            )
            read, new, dup, q = numbers(CONSERVATION, out)
            assert read == n and read == new + dup + q, (task, n, read, new, dup, q)
            total_read, total_new = total_read + read, total_new + new
            total_dup, total_q = total_dup + dup, total_q + q
            timings.append((f"ingest {task}", secs, f"{read:,} read = {new:,} new + {dup:,} dup + {q:,} quarantined"))
        secs, out = prism(common + ["dedup"], env)
        samples, pool, dups = numbers(r"samples (\d+) = pool (\d+) \+ duplicates (\d+)", out)
        assert samples == total_new == pool + dups, (samples, total_new, pool, dups)
        timings.append(("dedup (exact + MinHash LSH)", secs, f"{samples:,} samples = {pool:,} pool + {dups:,} dup"))
        secs, out = prism(common + ["status"], env)
        timings.append(("status", secs, "every table: rows, version, last operation"))
        secs, out = prism(
            common
            + ["sql", "--format", "json", "SELECT source, count(*) AS n FROM pool GROUP BY source ORDER BY source"],
            env,
        )
        by_source = {r["source"]: r["n"] for r in json.loads(out[out.index("[") :])}
        assert sum(by_source.values()) == pool, (by_source, pool)
        timings.append(("sql (pool by source)", secs, json.dumps(by_source)))
        for task, n in counts.items():
            secs, out = prism(
                common + ["ingest", str(tmp / "in" / task), "--source", f"scale_{task}", "--task", "generic"], env
            )
            read, new, dup, q = numbers(CONSERVATION, out)
            assert new == 0 and read == n, (task, read, new)
            timings.append((f"re-ingest {task}", secs, f"{new} new rows (idempotent)"))
        say(f"{'command':<30}{'seconds':>9}  result")
        for name, secs, note in timings:
            say(f"{name:<30}{secs:>9.1f}  {note}")
        say()
        say(
            f"conservation: {total_read:,} lines read = {total_new:,} samples + {total_dup:,} duplicates at ingest "
            f"+ {total_q:,} quarantined; samples {samples:,} = pool {pool:,} + near/exact duplicates {dups:,}"
        )
        say("each time includes starting the `prism` process and its local Spark session (about 10 s here)")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return _write(args, lines, tmp)


def _write(args, lines: list[str], tmp: Path) -> int:
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        old = Path(args.out).read_text() + "\n" if args.append and Path(args.out).exists() else ""
        Path(args.out).write_text(old + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
