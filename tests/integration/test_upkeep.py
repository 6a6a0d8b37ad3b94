"""Upkeep: run-owned staging swept when its run is dead, `prism vacuum` on delta-rs, the delta-spark statements,
fault points. The writer lock between processes is in test_concurrency.py; kills of every stage in test_faults.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import good_rows, snapshot, write_jsonl
from pyspark.sql import Row

from prismatic import upkeep
from prismatic.cli import main
from prismatic.config import load_config
from prismatic.errors import PrismError
from prismatic.tables import DeltaSparkStore, open_store, optimize_sql, qualified_name, vacuum_sql


def _dead_tag() -> str:
    """The owner tag of a process that ran and exited (so its pid is free, or reused by someone else)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tag = upkeep.owner_tag(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return tag


def _age(path: Path, hours: float) -> None:
    t = time.time() - hours * 3600
    for p in [path, *path.rglob("*")]:
        os.utime(p, (t, t))


def test_staging_sweep_removes_dead_runs_only(tmp_path):
    base = tmp_path / "_staging"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folders = {
            "mine": upkeep.staging_dir(tmp_path, "ingest").parent,  # this process's run folder
            "live": base / upkeep.owner_tag(live.pid),
            "dead": base / _dead_tag(),
            # our pid with another start time: a dead run whose pid was reused
            "reused": base / f"run-{upkeep._host_tag()}-{os.getpid()}-12345",
            "other_host_new": base / f"run-00000000-{os.getpid()}-1",
            "other_host_old": base / "run-00000001-42-1",
            "legacy_new": base / "ingest-0123456789abcdef",
            "legacy_old": base / "score-fedcba9876543210",
        }
        for f in folders.values():
            (f / "part").mkdir(parents=True, exist_ok=True)
            (f / "part" / "x.parquet").write_bytes(b"x" * 1000)
        _age(folders["other_host_old"], 200)
        _age(folders["legacy_old"], 200)
        rep = upkeep.sweep_staging(tmp_path, dry_run=True)
        assert {p.name for p in rep.removed} == {
            folders[k].name for k in ("dead", "reused", "other_host_old", "legacy_old")
        }
        assert all(f.is_dir() for f in folders.values())  # a dry run changes nothing
        rep = upkeep.sweep_staging(tmp_path)
        assert rep.bytes == 4 * 1000 and rep.live == 2 and rep.unknown == 2
        assert {p.name for p in base.iterdir()} == {
            folders[k].name for k in ("mine", "live", "other_host_new", "legacy_new")
        }
        # retention 0 (prism vacuum --retention-hours 0): owners that cannot be checked go too, live runs stay
        upkeep.sweep_staging(tmp_path, retention_hours=0)
        assert {p.name for p in base.iterdir()} == {folders["mine"].name, folders["live"].name}
    finally:
        live.kill()
        live.wait()


def test_owner_tag_names_this_process():
    tag = upkeep.owner_tag()
    assert upkeep.owner_alive(tag) is True
    assert upkeep.owner_alive(_dead_tag()) is False
    assert upkeep.owner_alive("ingest-0123") is None and upkeep.owner_alive("run-zz-1-2-3") is None


def test_fault_point_kills_at_the_nth_hit(tmp_path):
    code = (
        "from prismatic.upkeep import fault_point\n"
        "for i in range(3):\n"
        "    fault_point('other:after_commit')\n"
        "    fault_point('samples:after_commit')\n"
        "    print(i, flush=True)\n"
    )
    env = {**os.environ, "PRISM_FAULT": "samples:after_commit:2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == -9 and done.stdout.split() == ["0"]
    env.pop("PRISM_FAULT")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["0", "1", "2"]


# ---- delta-spark: the statements, and the order the engine issues them --------------------------------------


def test_delta_spark_upkeep_sql_text():
    q = qualified_name("main", "prismatic", "samples")
    assert optimize_sql(q) == "OPTIMIZE `main`.`prismatic`.`samples`"
    assert vacuum_sql(q, 168) == "VACUUM `main`.`prismatic`.`samples` RETAIN 168 HOURS"
    assert vacuum_sql(q, 0, dry_run=True) == "VACUUM `main`.`prismatic`.`samples` RETAIN 0 HOURS DRY RUN"
    for bad in (-1, 1.5, "168; DROP TABLE samples", True):
        with pytest.raises(ValueError):
            vacuum_sql(q, bad)
    with pytest.raises(ValueError):
        qualified_name("main", "prismatic", "samples RETAIN 0 HOURS")


class _Result:
    def __init__(self, rows):
        self.rows = rows

    def collect(self):
        return self.rows


class FakeDeltaSpark:
    """Records the SQL a DeltaSparkStore issues; answers like Delta on Databricks would."""

    def __init__(self, retention_check: str = "true"):
        self.statements: list[str] = []
        self.conf = {"spark.databricks.delta.retentionDurationCheck.enabled": retention_check}
        self.catalog = type("Catalog", (), {"tableExists": staticmethod(lambda name: True)})()

    def sql(self, text: str) -> _Result:
        self.statements.append(text)
        if text.startswith("OPTIMIZE"):
            return _Result([Row(path="/t", metrics=Row(numFilesAdded=1, numFilesRemoved=3))])
        if text.startswith("VACUUM") and text.endswith("DRY RUN"):
            return _Result([Row(path="/t/part-a.parquet"), Row(path="/t/part-b.parquet")])
        if text.startswith("VACUUM"):
            return _Result([Row(path="/t")])
        if text.startswith("DESCRIBE HISTORY"):
            return _Result([Row(version=9, operation="VACUUM END")])
        raise AssertionError(f"unexpected statement {text}")


def test_delta_spark_vacuum_issues_optimize_then_vacuum():
    settings = load_config(overrides=["storage.catalog=main", "storage.engine=delta-spark"])
    fake = FakeDeltaSpark(retention_check="false")
    fake.conf = type("Conf", (), {"get": staticmethod(fake.conf.get)})()
    up = DeltaSparkStore(settings, fake).vacuum("samples", 0)
    q = "`main`.`prismatic`.`samples`"
    assert fake.statements == [
        f"OPTIMIZE {q}",
        f"VACUUM {q} RETAIN 0 HOURS DRY RUN",
        f"VACUUM {q} RETAIN 0 HOURS",
        f"DESCRIBE HISTORY {q} LIMIT 1",
    ]
    assert (up.compacted, up.written, len(up.removed), up.bytes, up.version) == (3, 1, 2, None, 9)
    fake.statements.clear()
    DeltaSparkStore(settings, fake).vacuum("samples", 200, dry_run=True)  # a dry run changes nothing
    assert fake.statements[0] == f"VACUUM {q} RETAIN 200 HOURS DRY RUN" and len(fake.statements) == 2


def test_delta_spark_vacuum_below_seven_days_needs_the_check_off():
    settings = load_config(overrides=["storage.engine=delta-spark"])
    fake = FakeDeltaSpark(retention_check="true")
    fake.conf = type("Conf", (), {"get": staticmethod(fake.conf.get)})()
    with pytest.raises(PrismError, match="retention check"):
        DeltaSparkStore(settings, fake).vacuum("samples", 24)
    assert fake.statements == []


# ---- delta-rs: prism vacuum ------------------------------------------------------------------------------------


def _parquet_files(table_dir: Path) -> set[str]:
    """Data files in a table folder (not the log, not _-prefixed folders, which Delta leaves alone)."""
    return {
        p.relative_to(table_dir).as_posix()
        for p in table_dir.rglob("*.parquet")
        if not any(part.startswith("_") for part in p.relative_to(table_dir).parts)
    }


def referenced(store, name: str) -> set[str]:
    return {Path(u).relative_to(store.path(name)).as_posix() for u in store._table(name).file_uris()}


def test_vacuum_removes_orphans_and_compacts(tmp_path, capsys):
    root = tmp_path / "lake"
    settings = load_config(overrides=[f"data_root={root}"])
    store = open_store(settings)  # delta-rs without Spark: Arrow merges
    for i in range(4):  # four commits: four small files in one partition
        store.merge(
            "samples",
            pa.Table.from_pylist(
                [
                    {"sample_id": f"s{i}{j}", "task": "math", "prompt": r["prompt"], "completion": r["completion"]}
                    for j, r in enumerate(good_rows(3, start=3 * i))
                ]
            ),
        )
    before = snapshot(store, "samples")
    table_dir = store.path("samples")
    part = next(iter(referenced(store, "samples")))
    orphan = Path(part).parent / "part-00000-killed-writer.parquet"  # what a writer killed before its commit leaves
    shutil.copy(table_dir / part, table_dir / orphan)
    (table_dir / Path(part).parent / "part-00001-truncated.parquet").write_bytes(b"PAR1\x00")
    dead = root / "_staging" / _dead_tag() / "ingest-x"
    dead.mkdir(parents=True)
    (dead / "samples.parquet").write_bytes(b"y" * 5000)
    prism = ["--set", f"data_root={root}", "vacuum"]

    # the default retention (7 days) keeps files that were orphaned a moment ago: a writer may still be committing
    assert main([*prism, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove 0 files" in out and "4 small" in out and "would remove " + str(dead.parent) in out
    assert main([*prism, "--retention-hours", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove samples/{orphan.as_posix()}" in out and "would remove 2 files" in out
    assert (table_dir / orphan).exists() and dead.exists() and store.version("samples") == 4

    assert main([*prism, "--retention-hours", "0"]) == 0
    out = capsys.readouterr().out
    assert "4 -> 1" in out  # four small files compacted into one
    assert "removed 6 files" in out and "staging: 1 folders of dead runs" in out  # 4 compacted + 2 orphans
    assert _parquet_files(table_dir) == referenced(store, "samples") and len(referenced(store, "samples")) == 1
    assert not (root / "_staging").exists() or not any((root / "_staging").iterdir())
    assert snapshot(store, "samples") == before  # the rows did not change

    version = store.version("samples")
    assert main([*prism, "--retention-hours", "0"]) == 0  # nothing left to do: no new version
    assert "removed 0 files" in capsys.readouterr().out and store.version("samples") == version


def test_vacuum_of_an_empty_root_and_a_bad_retention(tmp_path, capsys):
    root = tmp_path / "lake"
    assert main(["--set", f"data_root={root}", "vacuum"]) == 0
    assert "removed 0 files" in capsys.readouterr().out
    assert main(["--set", f"data_root={root}", "vacuum", "--retention-hours", "-1"]) == 2
    assert "must be 0 or more" in capsys.readouterr().err


@pytest.mark.spark
def test_ingest_sweeps_a_killed_ingest_staging(tmp_path, spark):
    """A run's first staging folder sweeps the folders of dead runs (here: a killed ingest's parsed rows)."""
    root = tmp_path / "lake"
    dead = root / "_staging" / _dead_tag() / "ingest-0123"
    dead.mkdir(parents=True)
    (dead / "samples.parquet").write_bytes(b"z" * 100)
    settings = load_config(overrides=[f"data_root={root}"])
    upkeep._SWEPT.discard(root.resolve())
    from prismatic.ingest import ingest

    rep = ingest(
        open_store(settings, spark), [str(write_jsonl(tmp_path / "a.jsonl", good_rows(5)))], "t", "math", settings
    )
    assert rep.total("new_samples") == 5
    assert not dead.parent.exists()
    left = [p for p in (root / "_staging").rglob("*") if p.is_file()]
    assert left == []  # this run's own staging is gone too (its run folder may stay, empty, until it exits)
