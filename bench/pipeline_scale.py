"""Scale check: the `prism` commands a user runs first (ingest, dedup, status, sql) on a million rows.

Usage::

    python bench/pipeline_scale.py --rows 1000000 [--out bench/results/pipeline_scale.txt]

Rows come from ``bench/dedup.py``'s generator (math-like and NLI-like texts with planted exact and near
duplicates), written as JSONL files in chunks, plus a share of broken lines (invalid JSON, missing field, empty
text, wrong type) so quarantine is exercised at scale. Each command runs as its own ``prism`` subprocess on a
fresh data root, exactly as a user would type it; the bench prints the seconds of each, checks conservation
(rows read = new samples + duplicates + quarantined, and samples = pool + duplicates after dedup), then runs the
ingest again to show that a re-run writes nothing. It is a check of the whole path, not a comparison.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bad-every", type=int, default=1000, help="one broken line after every N good ones (0: none)")
    ap.add_argument("--chunk", type=int, default=100_000, help="lines per JSONL file")
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--keep", default=None, help="keep the data root in this folder (default: a temp folder)")
    ap.add_argument("--out", default=None, help="also write the report to this file")
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
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
