"""Two writers on one data root: the second gets one clear line (or runs after the first); no row is lost or
doubled; read-only commands need no lock; a dead writer's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import good_rows, write_jsonl

from prismatic import upkeep
from prismatic.config import load_config
from prismatic.tables import open_store

PRISM = [sys.executable, "-m", "prismatic.cli"]
HOLD = """
import sys, time
from prismatic.upkeep import acquire_writer_lock
acquire_writer_lock(sys.argv[1], "ingest")
print("held", flush=True)
time.sleep(120)
"""


def _env() -> dict:
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PRISM_DATA_ROOT": ""}


def test_writer_lock_is_exclusive_reentrant_and_taken_over_from_a_dead_holder(tmp_path):
    root = tmp_path / "lake"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(upkeep.WriterLockError) as e:
            upkeep.acquire_writer_lock(root, "dedup")
        msg = str(e.value)
        assert msg.startswith(f"another prism run is writing {root.resolve()} (pid {holder.pid}, since ")
        assert msg.endswith("`prism ingest`)") and "wait for that run" in e.value.hint
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: no clean-up runs; the kernel drops the flock
        holder.wait()
    assert json.loads((root / upkeep.LOCK_FILE).read_text())["pid"] == holder.pid  # stale info stays behind
    with upkeep.writer_lock(root, "vacuum"):
        info = json.loads((root / upkeep.LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "vacuum"
        with upkeep.writer_lock(root):  # re-entrant within one process (a stage inside `prism run`)
            pass
        assert (root / upkeep.LOCK_FILE).read_text()  # still held after the inner release
        code = f"from prismatic.upkeep import acquire_writer_lock as a; a({str(root)!r})"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and f"(pid {os.getpid()}, since" in other.stderr
    assert (root / upkeep.LOCK_FILE).read_text() == ""  # released: no holder to name


@pytest.mark.spark
def test_a_second_writer_gets_one_clear_line_and_readers_need_no_lock(tmp_path, spark):
    root = tmp_path / "lake"
    settings = load_config(overrides=[f"data_root={root}"])
    f = write_jsonl(tmp_path / "a.jsonl", good_rows(5))
    from prismatic.ingest import ingest

    ingest(open_store(settings, spark), [str(f)], "a", "math", settings)
    g = write_jsonl(tmp_path / "b.jsonl", good_rows(5, start=100))
    with upkeep.writer_lock(root, "synthesize"):
        t0 = time.time()
        w = subprocess.run(
            [*PRISM, "--set", f"data_root={root}", "ingest", str(g), "--source", "b"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=300,
        )
        assert w.returncode == 2, w.stderr[-2000:]
        lines = w.stderr.strip().splitlines()
        assert lines[0] == (
            f"error: another prism run is writing {root.resolve()} (pid {os.getpid()}, since "
            f"{json.loads((root / upkeep.LOCK_FILE).read_text())['since']}, `prism synthesize`)"
        )
        assert lines[1].startswith("hint: wait for that run") and len(lines) == 2
        assert time.time() - t0 < 60  # refused before Spark starts
        r = subprocess.run(
            [*PRISM, "--set", f"data_root={root}", "sql", "SELECT count(*) AS n FROM samples", "--format", "json"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout) == [{"n": 5}]
    assert open_store(settings, spark).count("samples") == 5  # the refused ingest wrote nothing


@pytest.mark.spark
def test_two_ingests_at_once_keep_every_row_once(tmp_path, spark):
    """Two `prism ingest` processes of different files (sharing 50 rows) on one root at the same time."""
    root = tmp_path / "lake"
    files = [write_jsonl(tmp_path / "a.jsonl", good_rows(300)), write_jsonl(tmp_path / "b.jsonl", good_rows(300, 250))]
    cmds = [
        [*PRISM, "--set", f"data_root={root}", "ingest", str(f), "--source", f.stem, "--task", "math"] for f in files
    ]
    logs = [(tmp_path / f"{i}.out", tmp_path / f"{i}.err") for i in range(len(cmds))]
    procs = [
        subprocess.Popen(c, stdout=o.open("w"), stderr=e.open("w"), env=_env())
        for c, (o, e) in zip(cmds, logs, strict=True)
    ]
    results = [(p.wait(timeout=600), e.read_text()) for p, (_, e) in zip(procs, logs, strict=True)]
    assert any(rc == 0 for rc, _ in results), results
    for cmd, (rc, err) in zip(cmds, results, strict=True):
        if rc == 0:
            continue
        assert rc == 2 and "another prism run is writing" in err and "Traceback" not in err, err[-2000:]
        again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)  # then it runs
        assert again.returncode == 0, again.stderr[-2000:]
    store = open_store(load_config(overrides=[f"data_root={root}"]), spark)
    samples = store.read_arrow("samples", ["sample_id", "prompt"])
    assert samples.num_rows == len(set(samples.column("sample_id").to_pylist())) == 550
    assert sorted(samples.column("prompt").to_pylist()) == sorted(r["prompt"] for r in good_rows(550))
    bronze = store.read_arrow("candidates_bronze", ["source", "line"]).to_pylist()
    assert sorted((r["source"], r["line"]) for r in bronze) == [(s, i) for s in ("a", "b") for i in range(1, 301)]
    assert not [p for p in (root / "_staging").rglob("*") if p.is_file()]
    print("outcomes:", [rc for rc, _ in results])
