"""Ingest parsed in Spark tasks (``ingest.mode=spark``) against the driver parse: the same rows, reasons and line
numbers, with files split into many tiny byte ranges / row groups so that every boundary case is crossed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import good_rows, snapshot, write_jsonl

from prismatic.config import load_config
from prismatic.errors import InputError
from prismatic.ingest import ingest, plan_units, stage_in_spark
from prismatic.tables import open_store

pytestmark = pytest.mark.spark
REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "bad_input"
MANIFEST = yaml.safe_load((CORPUS / "manifest.yaml").read_text())
TABLES = ("candidates_bronze", "samples", "quarantine")


def _store(root: Path, spark, *overrides: str):
    return open_store(load_config(overrides=[f"data_root={root}", *MANIFEST["settings"], *overrides]), spark)


def _tables(store) -> dict[str, list[dict]]:
    return {t: snapshot(store, t) for t in TABLES}


def _report(rep) -> list[tuple]:
    return [
        (f.file, f.format, f.rows_read, f.new_samples, f.duplicates, f.quarantined, dict(f.reasons), f.encoding,
         f.layout, f.blank_lines, f.payloads_cut)
        for f in rep.files
    ]  # fmt: skip


def test_the_bad_input_corpus_in_tiny_spark_tasks_equals_the_driver_parse(tmp_path, spark):
    """Every corpus file that shares the corpus settings, in one run per mode; Spark splits each file above 64 bytes
    (JSON Lines into 64-byte ranges, Parquet into row groups): the tables must be equal row by row."""
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path / "corpus"
    folder.mkdir()
    module.write_corpus(folder)
    plain = {n: e for n, e in MANIFEST["files"].items() if not {"set", "task", "source"} & set(e)}
    broken = sorted(n for n, e in plain.items() if "error" in e)
    for name in set(MANIFEST["files"]) - set(plain):
        (folder / name).unlink()
    driver = _store(tmp_path / "driver", spark, "ingest.mode=driver")
    tiny = _store(tmp_path / "spark", spark, "ingest.mode=spark", "ingest.split_bytes=64")
    errors = []
    for store in (driver, tiny):
        with pytest.raises(InputError) as err:
            ingest(store, [str(folder)], "corpus", "generic", store.settings)
        errors.append(str(err.value))
        assert all(store.count(t) == 0 for t in TABLES)
    head = f"{len(broken)} of {len(plain)} files cannot be read, so nothing was written"
    assert errors[0].split(": ")[0] == errors[1].split(": ")[0] == head
    assert all(str((folder / n).resolve()) in errors[1] for n in broken)
    for name in broken:
        (folder / name).unlink()
    files = [(p, p.suffix) for p in sorted(folder.iterdir())]
    units = plan_units([(p.resolve(), "jsonl") for p, s in files if s == ".jsonl"], 64, None)
    assert len(units) > 3 * len([1 for _, s in files if s == ".jsonl"])  # the JSON Lines files are really split
    reports = [ingest(s, [str(folder)], "corpus", "generic", s.settings) for s in (driver, tiny)]
    assert _report(reports[0]) == _report(reports[1])
    a, b = _tables(driver), _tables(tiny)
    for t in TABLES:
        assert len(a[t]) == len(b[t]) and a[t] == b[t], t
    assert len(a["candidates_bronze"]) == sum(e["read"] for n, e in plain.items() if n not in broken)


def _lines_file(path: Path) -> dict[int, str]:
    """A JSON Lines file with every line end and boundary case; returns {line number: prompt} of its good rows."""
    pieces = [  # (line content, its end)
        (b'\xef\xbb\xbf{"prompt": "bom first", "completion": "c"}', b"\r\n"),
        (b'{"prompt": "crlf", "completion": "c"}', b"\r\n"),
        (b"", b"\n"),
        (b'{"prompt": "after blank", "completion": "c"}', b"\r"),
        (b'{"prompt": "after lone cr", "completion": "c"}', b"\n"),
        (b"   ", b"\r\n"),
        (b'{"prompt": "' + b"long " * 60 + b'", "completion": "c"}', b"\n"),
        (b'{"prompt": "caf\xc3\xa9 \xe2\x82\xac", "completion": "multibyte"}', b"\r"),
        (b'{"prompt": "bad \xff byte", "completion": "c"}', b"\n"),
        (b'{"broken', b"\r\n"),
    ]
    pieces += [(json.dumps({"prompt": f"row {i}", "completion": "c"}).encode(), b"\r\n" if i % 3 else b"\n")
               for i in range(40)]  # fmt: skip
    pieces += [(b"", b"\n"), (b'{"prompt": "no final newline", "completion": "c"}', b"")]
    path.write_bytes(b"".join(a + b for a, b in pieces))
    good = {}
    for i, (text, _) in enumerate(pieces, 1):
        try:
            obj = json.loads(text.decode("utf-8-sig"))
            good[i] = obj["prompt"]
        except (ValueError, KeyError):
            pass
    return good


@pytest.mark.parametrize("split", [1, 5, 64])
def test_tiny_byte_ranges_give_exact_line_numbers(tmp_path, spark, split):
    path = tmp_path / "edges.jsonl"
    good = _lines_file(path)
    settings = load_config(overrides=[f"data_root={tmp_path / 'lake'}", f"ingest.split_bytes={split}"])
    files = [(path.resolve(), "jsonl")]
    assert len(plan_units(files, split, None)) == -(-path.stat().st_size // split)
    staged, failed, root = stage_in_spark(spark, files, "edges", "generic", settings)
    try:
        assert failed == []
        (s,) = staged
        samples = pq.read_table(s.tables["samples"]).to_pylist()
        assert {r["line"]: r["prompt"].strip() for r in samples} == {k: v.strip() for k, v in good.items()}
        quarantine = {r["line"]: r["reason"] for r in pq.read_table(s.tables["quarantine"]).to_pylist()}
        assert quarantine == {9: "not_utf8", 10: "invalid_json"}
        bronze = pq.read_table(s.tables["candidates_bronze"]).column("line").to_pylist()
        assert bronze == sorted(bronze) and len(bronze) == len(set(bronze)) == s.report.rows_read
        assert (s.report.rows_read, s.report.blank_lines) == (len(good) + 2, 3)
    finally:
        shutil.rmtree(root)


def test_parquet_row_groups_and_csv_in_spark_tasks(tmp_path, spark):
    rows = [*good_rows(25), {"prompt": "no completion"}, *good_rows(10, start=100), {"prompt": "", "completion": "x"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "groups.parquet", row_group_size=4)
    (tmp_path / "quoted.csv").write_text('prompt,completion\n"two\nlines",x\nplain,y\nshort\n', newline="")
    write_jsonl(tmp_path / "small.jsonl", good_rows(3, start=500))
    files = [(p.resolve(), p.suffix[1:]) for p in sorted(tmp_path.glob("*.*"))]
    units = plan_units(files, 64, None)
    assert sum(u.row_groups is not None for u in units) == 10  # 37 rows in groups of 4
    driver = _store(tmp_path / "driver", spark, "ingest.mode=driver")
    tiny = _store(tmp_path / "spark", spark, "ingest.mode=spark", "ingest.split_bytes=64")
    reports = [ingest(s, [str(tmp_path / "*.*")], "mixed", "generic", s.settings) for s in (driver, tiny)]
    assert _report(reports[0]) == _report(reports[1])
    assert _tables(driver) == _tables(tiny)
    q = {(Path(r["file"]).name, r["line"]): r["reason"] for r in tiny.read_arrow("quarantine").to_pylist()}
    assert q == {("groups.parquet", 26): "missing_field", ("groups.parquet", 37): "empty_text",
                 ("quoted.csv", 3): "bad_csv_row"}  # fmt: skip
    again = ingest(tiny, [str(tmp_path / "*.*")], "mixed", "generic", tiny.settings)
    assert again.total("new_samples") == 0 and _tables(tiny) == _tables(driver)


def _cli(data_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "prismatic.cli", "--set", f"data_root={data_root}", "--set", "spark.master=local[2]",
            "--set", "spark.driver_memory=1g", "--set", "ingest.mode=spark", "--set", "ingest.split_bytes=3000",
            *args]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["ingest:staged:1", "candidates_bronze:before_commit:1"])
def test_killed_spark_ingest_then_rerun_equals_a_driver_run(tmp_path, spark, fault):
    """kill -9 after the Spark tasks staged the run, or between its MERGEs; the re-run gives the tables of a clean
    driver-parsed run: nothing lost, nothing doubled."""
    files = [str(write_jsonl(tmp_path / f"part{i}.jsonl", good_rows(400, start=i * 300))) for i in range(3)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SPARK_LOCAL_IP": "127.0.0.1"}
    crashed = tmp_path / "crashed"
    args = ["ingest", *files, "--source", "big", "--task", "generic"]
    killed = subprocess.run(_cli(crashed, *args), env={**env, "PRISM_FAULT": fault}, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = subprocess.run(_cli(crashed, *args), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    clean = _store(tmp_path / "clean", spark, "ingest.mode=driver")
    ingest(clean, files, "big", "generic", clean.settings)
    s_crashed = open_store(load_config(overrides=[f"data_root={crashed}"]), spark)
    for name in TABLES:
        a, b = snapshot(s_crashed, name), snapshot(clean, name)
        assert len(a) == len(b) and a == b, name
    assert clean.count("samples") == 1000 and clean.count("candidates_bronze") == 1200  # ids 0..999
    assert not list((crashed / "_staging").rglob("*.parquet"))
