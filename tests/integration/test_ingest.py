"""Ingest with real local Spark and real Delta tables (delta-rs engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import good_rows, snapshot, write_csv, write_jsonl, write_parquet

from prismatic.config import load_config
from prismatic.errors import InputError
from prismatic.ingest import ingest
from prismatic.tables import open_store

pytestmark = pytest.mark.spark
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, spark):
    settings = load_config(overrides=[f"data_root={tmp_path / 'lake'}", "ingest.max_chars=500"])
    return open_store(settings, spark)


def counts(store):
    return {n: store.count(n) for n in ("candidates_bronze", "samples", "quarantine")}


def test_each_format_lands_in_samples(store, tmp_path):
    rows = good_rows(30)
    write_jsonl(tmp_path / "a.jsonl", rows[:10])
    write_jsonl(tmp_path / "b.jsonl.gz", rows[10:20], gz=True)
    write_parquet(tmp_path / "c.parquet", rows[20:25])
    write_csv(tmp_path / "d.csv", ["prompt", "completion"], [[r["prompt"], r["completion"]] for r in rows[25:]])
    rep = ingest(store, [str(tmp_path / "*.*")], "mixed", "generic", store.settings)
    assert [f.format for f in rep.files] == ["jsonl", "jsonl.gz", "parquet", "csv"]
    assert rep.total("rows_read") == 30 and rep.total("new_samples") == 30 and rep.total("quarantined") == 0
    assert counts(store) == {"candidates_bronze": 30, "samples": 30, "quarantine": 0}
    df = store.read("samples")
    assert df.count() == 30
    assert {r.task for r in df.select("task").distinct().collect()} == {"generic"}
    got = {(r.prompt, r.completion) for r in df.select("prompt", "completion").collect()}
    assert got == {(r["prompt"], r["completion"]) for r in rows}


def test_every_quarantine_reason_and_conservation(store, tmp_path):
    long = "word " * 200
    lines = [
        {"prompt": "ok one", "completion": "fine"},
        b'{"prompt": "broken", ',
        b'{"prompt": "caf\xe9", "completion": "x"}',
        {"prompt": "no completion"},
        {"prompt": "number", "completion": 7},
        {"prompt": "  ", "completion": "empty prompt"},
        [1, 2, 3],
        {"prompt": long, "completion": long},
        {"messages": [{"role": "user", "content": "only user"}]},
        {"messages": [{"role": "user", "content": "chat ok"}, {"role": "assistant", "content": "answer"}]},
        {"prompt": "ok one", "completion": "fine"},
    ]
    f = write_jsonl(tmp_path / "messy.jsonl", lines)
    rep = ingest(store, [str(f)], "messy", "generic", store.settings)
    reasons = dict(rep.reasons)
    assert reasons == {
        "invalid_json": 1,
        "not_utf8": 1,
        "missing_field": 1,
        "wrong_type": 2,
        "empty_text": 1,
        "too_long": 1,
        "bad_messages": 1,
    }
    fr = rep.files[0]
    assert (fr.rows_read, fr.new_samples, fr.duplicates, fr.quarantined) == (11, 2, 1, 8)
    assert fr.rows_read == fr.new_samples + fr.duplicates + fr.quarantined
    q = store.read_arrow("quarantine").to_pylist()
    assert sorted(r["line"] for r in q) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert all(r["stage"] == "ingest" and r["source"] == "messy" and r["detail"] for r in q)
    utf = next(r for r in q if r["reason"] == "not_utf8")
    assert "\\xe9" in utf["payload"]
    assert max(len(r["payload"]) for r in q) <= store.settings.ingest.payload_chars
    bronze = store.read_arrow("candidates_bronze").to_pylist()
    assert len(bronze) == 11 and sum(r["status"] == "quarantined" for r in bronze) == 8
    chat = [r for r in store.read_arrow("samples").to_pylist() if r["messages"]]
    assert len(chat) == 1 and chat[0]["prompt"] == "chat ok" and chat[0]["completion"] == "answer"
    assert json.loads(chat[0]["messages"])[1]["role"] == "assistant"


def test_nli_mapping_and_bad_label(store, tmp_path):
    rows = [
        {"sentence1": "A man plays guitar.", "sentence2": "A person makes music.", "gold_label": "entailment"},
        {"sentence1": "A dog runs.", "sentence2": "A cat sleeps.", "gold_label": "Contradiction"},
        {"sentence1": "Kids play.", "sentence2": "Kids are outside.", "gold_label": "-"},
    ]
    f = write_jsonl(tmp_path / "snli.jsonl", rows)
    settings = load_config(overrides=[f"data_root={store.settings.data_root}"])
    rep = ingest(store, [str(f)], "snli", "nli", settings)
    assert dict(rep.reasons) == {"bad_label": 1} and rep.total("new_samples") == 2
    samples = {r["label"]: r for r in store.read_arrow("samples").to_pylist()}
    assert set(samples) == {"entailment", "contradiction"}
    assert "Premise: A man plays guitar." in samples["entailment"]["prompt"]
    assert samples["contradiction"]["completion"] == "contradiction"


def test_csv_bad_rows(store, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"prompt,completion\nfine,row\nextra,field,here\nshort\ncaf\xe9,x\n")
    rep = ingest(store, [str(path)], "csvsrc", "generic", store.settings)
    assert dict(rep.reasons) == {"bad_csv_row": 2, "not_utf8": 1}
    assert rep.total("new_samples") == 1


def test_reingest_changes_nothing(store, tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", good_rows(20) + [{"prompt": "x"}])
    ingest(store, [str(f)], "s", "generic", store.settings)
    before = {n: snapshot(store, n) for n in ("candidates_bronze", "samples", "quarantine")}
    rep = ingest(store, [str(f)], "s", "generic", store.settings)
    assert rep.total("new_samples") == 0 and rep.total("duplicates") == 20 and rep.total("quarantined") == 1
    assert {n: snapshot(store, n) for n in before} == before


def test_same_text_from_two_sources_is_one_sample(store, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", good_rows(5))
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [{"prompt": "  " + r["prompt"] + "  ", "completion": r["completion"]} for r in good_rows(5)],
    )
    ingest(store, [str(a)], "first", "generic", store.settings)
    rep = ingest(store, [str(b)], "second", "generic", store.settings)
    assert rep.total("new_samples") == 0 and rep.total("duplicates") == 5
    assert store.count("samples") == 5 and store.count("candidates_bronze") == 10


def test_unreadable_file_is_one_error_and_nothing_written(store, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", good_rows(3))
    broken = tmp_path / "broken.jsonl.gz"
    import gzip

    broken.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in good_rows(50, 3)))[:-40])
    with pytest.raises(InputError, match="1 of 1 files cannot be read, so nothing was written: cannot read "):
        ingest(store, [str(broken)], "s", "generic", store.settings)
    assert store.count("samples") == 0 and store.count("candidates_bronze") == 0
    bad_parquet = tmp_path / "x.parquet"
    bad_parquet.write_bytes(b"not parquet at all")
    with pytest.raises(InputError):
        ingest(store, [str(bad_parquet)], "s", "generic", store.settings)
    with pytest.raises(InputError, match="no such file"):
        ingest(store, [str(tmp_path / "missing.jsonl")], "s", "generic", store.settings)
    txt = tmp_path / "notes.txt"
    txt.write_text("plain text")
    with pytest.raises(InputError, match="unknown file type"):
        ingest(store, [str(good), str(txt)], "s", "generic", store.settings)
    assert store.count("samples") == 0  # all inputs are resolved before anything is written


def _cli(data_root: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prismatic.cli",
        "--set",
        f"data_root={data_root}",
        "--set",
        "spark.master=local[1]",
        "--set",
        "spark.driver_memory=1g",
        *args,
    ]


def test_killed_ingest_then_rerun_equals_clean_run(tmp_path, spark):
    """kill -9 between the run's MERGEs (samples committed, bronze not yet), then re-run: the same tables as a clean
    run. The kill is a fault point (``PRISM_FAULT``: the process SIGKILLs itself there), so it is exact."""
    files = [str(write_jsonl(tmp_path / f"part{i}.jsonl", good_rows(400, start=i * 300))) for i in range(6)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    args = ["ingest", *files, "--source", "big", "--task", "generic"]
    killed = subprocess.run(_cli(crashed, *args), env={**env, "PRISM_FAULT": "candidates_bronze:before_commit:1"},
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    s_crashed = open_store(load_config(overrides=[f"data_root={crashed}"]), spark)
    assert s_crashed.count("samples") == 1900 and s_crashed.count("candidates_bronze") == 0  # half committed
    assert subprocess.run(_cli(crashed, *args), env=env, capture_output=True).returncode == 0
    assert subprocess.run(_cli(clean, *args), env=env, capture_output=True).returncode == 0
    s_clean = open_store(load_config(overrides=[f"data_root={clean}"]), spark)
    for name in ("candidates_bronze", "samples", "quarantine"):
        a, b = snapshot(s_crashed, name), snapshot(s_clean, name)
        assert len(a) == len(b) and a == b, name
    assert s_clean.count("samples") == 1900  # 6 files of 400 rows starting 300 apart: ids 0..1899
    assert s_clean.count("candidates_bronze") == 2400
