"""Fault injection: ``kill -9`` a stage at a commit point, re-run, and get the tables of a clean run.

Each case runs the stages (ingest, dedup, score, diversity, cluster, one synthesis round) in a child process with
``PRISM_FAULT=<table>:<before|after>_commit:<n>`` (:func:`prismatic.upkeep.fault_point`: SIGKILL, no clean-up), then
re-runs them to the end and compares every table's content hash with a clean run's. Then ``prism vacuum
--retention-hours 0`` must leave no file that the current snapshot does not reference and no staging debris, and
change no row. One cheap case (ingest) runs in the default suite; the full matrix is ``slow``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import good_rows, snapshot, write_jsonl
from synth_helpers import seed_pool, tiny_overrides

from prismatic import upkeep
from prismatic.cli import main
from prismatic.config import load_config
from prismatic.tables import TABLES, open_store

pytestmark = pytest.mark.spark

STAGES = ("ingest", "dedup", "score", "diversity", "cluster", "synth")
# columns that record which run or table version wrote a row (MLflow run ids, versions read / written): a re-run
# after a crash has other ones by construction; every other column must be equal
PROVENANCE = {"rounds": ("mlflow_run_id", "versions_read", "versions_written"), "diversity": ("samples_version",)}

DRIVER = """
import sys
sys.path.insert(0, {helpers!r})
from pathlib import Path
from prismatic.config import load_config
from prismatic.tables import open_store
from prismatic.upkeep import writer_lock
sys.path.insert(0, {here!r})
from test_faults import run_stages
settings = load_config(overrides={overrides!r})
with writer_lock(settings.root, "fault-test"):
    run_stages(open_store(settings), settings, {inputs!r}, {stages!r})
"""


def run_stages(store, settings, inputs: list[str], stages) -> None:
    """The stages in pipeline order (the driver of each case, in a child process or in the test's)."""
    if "ingest" in stages:
        from prismatic.ingest import ingest

        ingest(store, inputs, "seed", "math", settings)
    if "dedup" in stages:
        from prismatic.stages.base import Context
        from prismatic.stages.dedup import dedup_pool

        dedup_pool(Context(settings, store))
    if "score" in stages:
        from prismatic.stages.base import Context
        from prismatic.stages.score import score_pool

        score_pool(Context(settings, store), rows_per_chunk=8)  # several gradients commits: kills between chunks
    if "diversity" in stages:
        from prismatic.stages.base import Context
        from prismatic.stages.diversity import measure_diversity

        measure_diversity(Context(settings, store), group_by=["source"], embedding=False)
    if "cluster" in stages:
        from prismatic.stages.base import Context
        from prismatic.stages.cluster import cluster_tasks

        cluster_tasks(Context(settings, store), round=1)
    if "synth" in stages:
        from synth_helpers import scripted_generator

        from prismatic.synth.loop import synthesize

        synthesize(store, settings, rounds=1, generator=scripted_generator())


def _canon(v):
    if isinstance(v, float):
        return None if math.isnan(v) else float(f"{v:.5g}")  # scoring in other batches differs in the last bits
    if isinstance(v, list):
        return [_canon(x) for x in v]
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    return v


def table_rows(store, name: str) -> list[dict]:
    """The table's rows without run metadata (timestamps, run ids, versions), sorted by key."""
    drop = PROVENANCE.get(name, ())
    return [{k: v for k, v in r.items() if k not in drop} for r in snapshot(store, name)]


def content_hash(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(_canon(rows), sort_keys=True, default=str).encode()).hexdigest()


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


def hashes(store) -> dict[str, str]:
    return {n: content_hash(table_rows(store, n)) for n in TABLES if store.exists(n)}


def assert_same_tables(got, want) -> dict[str, str]:
    """Every table of ``want`` in ``got`` with the same rows; equal hashes, or floats equal to 1e-4."""
    assert sorted(n for n in TABLES if got.exists(n)) == sorted(n for n in TABLES if want.exists(n))
    out = {}
    for name in TABLES:
        if not want.exists(name):
            continue
        a, b = table_rows(got, name), table_rows(want, name)
        ha, hb = content_hash(a), content_hash(b)
        if ha != hb:  # a float on a rounding edge: compare with a tolerance
            assert len(a) == len(b), f"{name}: {len(a)} rows after the crash and re-run, {len(b)} in a clean run"
            bad = [(x, y) for x, y in zip(a, b, strict=True) if not _close(x, y)]
            assert not bad, f"{name}: {len(bad)} rows differ, first: {bad[0]}"
        out[name] = ha
    return out


def data_files(table_dir: Path) -> set[str]:
    """Data files in a table folder: everything but the Delta log."""
    return {
        p.relative_to(table_dir).as_posix()
        for p in table_dir.rglob("*")
        if p.is_file() and not p.relative_to(table_dir).parts[0].startswith("_")
    }


def assert_no_orphans_after_vacuum(root: Path, store) -> None:
    """``prism vacuum --retention-hours 0``: afterwards every data file is referenced by the current snapshot, no
    staging is left, and no row changed."""
    before = hashes(store)
    assert main(["--set", f"data_root={root}", "vacuum", "--retention-hours", "0"]) == 0
    for name in TABLES:
        if not store.exists(name):
            continue
        base = store.path(name)
        referenced = {Path(u).relative_to(base).as_posix() for u in store._table(name).file_uris()}
        assert data_files(base) == referenced, f"{name}: files no snapshot references are left"
    staging = root / upkeep.STAGING
    assert not staging.exists() or not [p for p in staging.rglob("*") if p.is_file()]
    assert hashes(store) == before  # compaction and vacuum change no row


def crash_then_rerun(tmp_path: Path, spark, fault: str, overrides_of, inputs: list[str], stages) -> Path:
    """Run ``stages`` in a child killed at ``fault``; then run them to the end here. Returns the data root."""
    root = tmp_path / ("crash-" + fault.replace(":", "-"))
    overrides = overrides_of(root)
    env = {**os.environ, upkeep.FAULT_ENV: fault, "SPARK_LOCAL_IP": "127.0.0.1"}
    here = os.path.dirname(__file__)
    script = DRIVER.format(helpers=here, here=here, overrides=overrides, inputs=inputs, stages=tuple(stages))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == -9, f"{fault} was never reached (rc {done.returncode}): {done.stderr[-3000:]}"
    settings = load_config(overrides=overrides)
    with upkeep.writer_lock(root, "rerun"):  # the dead child's lock is free (the kernel dropped it)
        run_stages(open_store(settings, spark), settings, inputs, stages)
    return root


# ---- the cheap case: a killed ingest (default suite) ----------------------------------------------------------


def test_ingest_killed_between_its_commits_then_rerun_equals_clean_and_vacuum_leaves_no_orphans(tmp_path, spark):
    files = [
        str(write_jsonl(tmp_path / f"part{i}.jsonl", good_rows(200, start=150 * i) + [{"prompt": "only"}]))
        for i in range(3)
    ]  # overlapping rows and one quarantined row per file

    def overrides_of(root: Path) -> list[str]:
        return [f"data_root={root}", "spark.master=local[1]", "spark.driver_memory=1g"]

    # the run's quarantine and samples committed (one MERGE per table for all files), its bronze rows not yet;
    # its staging is debris too
    root = crash_then_rerun(
        tmp_path, spark, "candidates_bronze:before_commit:1", overrides_of, files, ("ingest", "dedup")
    )
    clean = tmp_path / "clean"
    settings = load_config(overrides=overrides_of(clean))
    run_stages(open_store(settings, spark), settings, files, ("ingest", "dedup"))
    crashed_store = open_store(load_config(overrides=overrides_of(root)), spark)
    got = assert_same_tables(crashed_store, open_store(settings, spark))
    assert {"samples", "candidates_bronze", "quarantine", "duplicates"} <= set(got)
    assert crashed_store.count("samples") == 500  # 3 × 200 rows, 150 apart: ids 0..499
    assert_no_orphans_after_vacuum(root, crashed_store)


# ---- the full matrix (slow): every stage, before and after its commits -----------------------------------------

FAULTS = [
    ("ingest", "samples:after_commit:1"),
    ("dedup", "duplicates:before_commit:1"),
    ("dedup", "duplicates:after_commit:1"),
    ("score", "gradients:before_commit:2"),
    ("score", "gradients:after_commit:3"),
    ("diversity", "diversity:before_commit:1"),
    ("diversity", "diversity:after_commit:1"),
    ("cluster", "assignments:after_commit:1"),
    ("cluster", "clusters:before_commit:1"),
    ("synth", "synth_candidates:after_commit:1"),
    ("synth", "rounds:before_commit:1"),
]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, spark, tiny_model):
    base = tmp_path_factory.mktemp("faults")
    seed = str(seed_pool(base))  # one file for every run: its batch_id hashes the path, size and mtime

    def overrides_of(root: Path) -> list[str]:
        return [*tiny_overrides(root, tiny_model), "tracking.enabled=false"]

    settings = load_config(overrides=overrides_of(base / "clean"))
    run_stages(open_store(settings, spark), settings, [seed], STAGES)
    return base, seed, overrides_of, open_store(settings, spark)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize(("stage", "fault"), FAULTS, ids=[f for _, f in FAULTS])
def test_killed_stage_then_rerun_equals_clean_run(stage, fault, clean_run, spark, tmp_path):
    base, seed, overrides_of, clean = clean_run
    root = crash_then_rerun(tmp_path, spark, fault, overrides_of, [seed], STAGES)
    crashed = open_store(load_config(overrides=overrides_of(root)), spark)
    got = assert_same_tables(crashed, clean)
    assert {"samples", "gradients", "diversity", "clusters", "synth_candidates", "rounds"} <= set(got), stage
    assert_no_orphans_after_vacuum(root, crashed)
