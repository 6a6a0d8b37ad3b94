"""The bad-input corpus (tests/bad_input) and the whole-run rules of ingest, on real Delta tables.

Ingest parses on the driver and commits with delta-rs, so none of this needs a Spark session: the store is opened
without one. Each corpus file is ingested into a fresh lake and must give the manifest's counts, reasons and notes
(and the same again, writing nothing, when ingested a second time), or its one error line with nothing written.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from prismatic.config import load_config
from prismatic.errors import InputError
from prismatic.ingest import ingest
from prismatic.tables import open_store

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "bad_input"
MANIFEST = yaml.safe_load((CORPUS / "manifest.yaml").read_text())
TABLES = ("candidates_bronze", "samples", "quarantine")


def _make_corpus():
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    _make_corpus().write_corpus(folder)
    return folder


@pytest.fixture
def lake(tmp_path):
    """A fresh lake per case: Delta merges slow down as a table gathers many small files."""
    return open_store(load_config(overrides=[f"data_root={tmp_path / 'lake'}", *MANIFEST["settings"]]))


def _counts(store) -> dict[str, int]:
    return {t: store.count(t) for t in TABLES}


def _file_rows(store, table: str, path: Path) -> list[dict]:
    return [r for r in store.read_arrow(table).to_pylist() if r["file"] == str(path.resolve())]


def test_manifest_names_every_corpus_file_and_there_are_at_least_50_kinds():
    names = set(_make_corpus().cases())
    assert names == set(MANIFEST["files"])
    assert len(names) >= 50


def _check_file(f, exp: dict) -> None:
    reasons = exp.get("reasons", {})
    got = (f.rows_read, f.new_samples, f.duplicates, f.quarantined, dict(f.reasons), f.blank_lines, f.encoding,
           f.payloads_cut)  # fmt: skip
    want = (exp["read"], exp["new"], exp.get("dup", 0), sum(reasons.values()), reasons, exp.get("blank", 0),
            exp.get("encoding", "utf-8"), exp.get("cut", 0))  # fmt: skip
    assert got == want, f.file


@pytest.mark.parametrize("name", sorted(MANIFEST["files"]))
def test_corpus_file(name, corpus, lake):
    exp = MANIFEST["files"][name]
    settings = load_config(
        overrides=[f"data_root={lake.settings.data_root}", *MANIFEST["settings"], *exp.get("set", [])]
    )
    path = corpus / name
    before = _counts(lake)
    if "error" in exp:
        with pytest.raises(InputError) as err:
            ingest(lake, [str(path)], exp.get("source", "corpus"), exp.get("task", "generic"), settings)
        assert re.search(exp["error"], str(err.value)), str(err.value)
        assert "\n" not in str(err.value)
        assert _counts(lake) == before  # nothing of the file was written
        return
    rep = ingest(lake, [str(path)], exp.get("source", "corpus"), exp.get("task", "generic"), settings)
    (f,) = rep.files
    _check_file(f, exp)
    reasons = exp.get("reasons", {})
    if "note" in exp:
        assert any(re.search(exp["note"], n) for n in rep.notes()), rep.notes()
    after = _counts(lake)
    assert {t: after[t] - before[t] for t in TABLES} == {
        "candidates_bronze": exp["read"],
        "samples": exp["new"],
        "quarantine": sum(reasons.values()),
    }
    q = _file_rows(lake, "quarantine", path)
    assert Counter(r["reason"] for r in q) == Counter(reasons)
    assert all(r["detail"] and len(r["payload"]) <= settings.ingest.payload_chars for r in q)
    bronze = _file_rows(lake, "candidates_bronze", path)
    assert all(len(r["payload"]) <= settings.ingest.payload_chars for r in bronze)
    assert sum(r["payload_truncated"] for r in bronze) == exp.get("cut", 0)
    again = ingest(lake, [str(path)], exp.get("source", "corpus"), exp.get("task", "generic"), settings)
    assert (again.total("new_samples"), again.total("duplicates")) == (0, exp["new"] + exp.get("dup", 0))
    assert not again.files[0].changed and _counts(lake) == after  # a re-run changes nothing


def test_the_whole_corpus_as_one_folder_into_one_data_root(corpus, tmp_path):
    """One run over every corpus file that shares the corpus settings: the unreadable files are named together and
    nothing is written; without them the same folder lands file by file with the manifest's counts, and the tables
    hold exactly the rows read (counts in = counts out)."""
    plain = {n: e for n, e in MANIFEST["files"].items() if not {"set", "task", "source"} & set(e)}
    broken = sorted(n for n, e in plain.items() if "error" in e)
    folder = tmp_path / "all"
    folder.mkdir()
    for name in plain:
        shutil.copy(corpus / name, folder / name)
    store = open_store(load_config(overrides=[f"data_root={tmp_path / 'lake'}", *MANIFEST["settings"]]))
    with pytest.raises(InputError) as err:
        ingest(store, [str(folder)], "corpus", "generic", store.settings)
    msg = str(err.value)
    assert msg.startswith(f"{len(broken)} of {len(plain)} files cannot be read, so nothing was written: ")
    assert all(str((folder / n).resolve()) in msg for n in broken) and "\n" not in msg
    assert _counts(store) == dict.fromkeys(TABLES, 0)
    for name in broken:
        (folder / name).unlink()
    rep = ingest(store, [str(folder)], "corpus", "generic", store.settings)
    assert sorted(Path(f.file).name for f in rep.files) == sorted(set(plain) - set(broken))
    for f in rep.files:
        _check_file(f, plain[Path(f.file).name])
    assert _counts(store) == {"candidates_bronze": rep.total("rows_read"), "samples": rep.total("new_samples"),
                              "quarantine": rep.total("quarantined")}  # fmt: skip
    assert rep.total("rows_read") == sum(e["read"] for n, e in plain.items() if n not in broken)


# ---- whole-run rules -----------------------------------------------------------------------------------------


def _good(tag: str, n: int) -> bytes:
    return b"".join(json.dumps({"prompt": f"{tag} {i}", "completion": "c"}).encode() + b"\n" for i in range(n))


@pytest.fixture
def store(tmp_path):
    return open_store(load_config(overrides=[f"data_root={tmp_path / 'lake'}"]))


def test_a_folder_commits_all_its_files_or_none_and_names_what_it_skipped(tmp_path, store):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(_good("a", 3))
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(_good("b", 300))[:-30])  # truncated
    (folder / "c.jsonl").write_bytes(_good("c", 2))
    (folder / "notes.txt").write_text("not data")
    (folder / "_SUCCESS").write_text("")
    with pytest.raises(
        InputError, match=r"1 of 3 files cannot be read, so nothing was written: cannot read .*b\.jsonl"
    ):
        ingest(store, [str(folder)], "s", "generic", store.settings)
    assert _counts(store) == dict.fromkeys(TABLES, 0)
    (folder / "b.jsonl.gz").unlink()
    rep = ingest(store, [str(folder)], "s", "generic", store.settings)
    assert [Path(f.file).name for f in rep.files] == ["a.jsonl", "c.jsonl"] and rep.total("new_samples") == 5
    notes = rep.notes()
    assert "skipped 1 hidden files (names starting with . or _)" in notes
    assert any(n.startswith(f"skipped {folder / 'notes.txt'}: unsupported file type") for n in notes)


@pytest.mark.parametrize("batch_rows", [200_000, 4])
def test_rows_shared_by_two_files_of_one_run_are_new_once(tmp_path, batch_rows):
    """Files are committed together, up to ingest.batch_rows rows per MERGE; the earlier file (in path order) owns
    a row two files share, whether they share a commit or not."""
    store = open_store(load_config(overrides=[f"data_root={tmp_path / 'lake'}", f"ingest.batch_rows={batch_rows}"]))
    rows = [json.dumps({"prompt": f"shared {i}", "completion": "c"}).encode() + b"\n" for i in range(8)]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "_delta_log").mkdir()
    (folder / "_delta_log" / "0.json").write_text("{}")  # under a hidden folder: not data
    (folder / "a.jsonl").write_bytes(b"".join(rows[:5]))
    (folder / "b.jsonl").write_bytes(b"".join(rows[3:]))
    rep = ingest(store, [str(folder / "b.jsonl"), str(folder / "a.jsonl")], "s", "generic", store.settings)
    got = {Path(f.file).name: (f.rows_read, f.new_samples, f.duplicates) for f in rep.files}
    assert got == {"a.jsonl": (5, 5, 0), "b.jsonl": (5, 3, 2)}
    owner = {r["prompt"]: Path(r["file"]).name for r in store.read_arrow("samples").to_pylist()}
    assert owner == {f"shared {i}": "a.jsonl" if i < 5 else "b.jsonl" for i in range(8)}
    assert _counts(store) == {"candidates_bronze": 10, "samples": 8, "quarantine": 0}
    assert store.version("samples") == (1 if batch_rows > 10 else 2)  # created, then one MERGE per group of files
    (folder / "c.jsonl").write_bytes(rows[0] + json.dumps({"prompt": "fresh", "completion": "c"}).encode() + b"\n")
    again = ingest(store, [str(folder)], "s", "generic", store.settings)
    got = {Path(f.file).name: (f.new_samples, f.duplicates, f.changed) for f in again.files}
    assert got == {"a.jsonl": (0, 5, False), "b.jsonl": (0, 5, False), "c.jsonl": (1, 1, False)}
    assert "skipped 1 hidden files (names starting with . or _)" in again.notes()
    assert _counts(store) == {"candidates_bronze": 12, "samples": 9, "quarantine": 0}


def test_an_edited_file_replaces_its_bronze_rows_and_says_so(tmp_path, store):
    f = tmp_path / "a.jsonl"
    f.write_bytes(_good("v1", 4) + b"broken\n")
    ingest(store, [str(f)], "s", "generic", store.settings)
    f.write_bytes(_good("v2", 2))  # edited in place: other text, fewer lines
    rep = ingest(store, [str(f)], "s", "generic", store.settings)
    (fr,) = rep.files
    assert fr.changed and fr.stale_rows == 3 and fr.new_samples == 2
    assert any("changed since it was last ingested" in n for n in rep.notes())
    bronze = sorted(store.read_arrow("candidates_bronze").to_pylist(), key=lambda r: r["line"])
    assert [json.loads(r["payload"])["prompt"] for r in bronze] == ["v2 0", "v2 1"]
    assert store.count("quarantine") == 0  # the broken line of the first version is gone with it
    assert store.count("samples") == 6  # the pool only grows: v1's samples stay
    again = ingest(store, [str(f)], "s", "generic", store.settings)
    assert not again.files[0].changed and again.total("new_samples") == 0


def test_a_50_mb_row_is_quarantined_without_being_held_whole(tmp_path, store):
    f = tmp_path / "big.jsonl"
    with open(f, "wb") as out:
        out.write(_good("before", 1))
        out.write(b'{"prompt": "' + b"x" * (50 << 20) + b'", "completion": "c"}\n')
        out.write(_good("after", 1))
    tracemalloc.start()
    rep = ingest(store, [str(f)], "s", "generic", store.settings)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert dict(rep.reasons) == {"row_too_large": 1} and rep.total("new_samples") == 2
    assert peak < 20 << 20, f"peak Python allocation {peak >> 20} MB while reading a 50 MB line"
    row = next(r for r in store.read_arrow("candidates_bronze").to_pylist() if r["line"] == 2)
    assert row["payload_truncated"] and len(row["payload"]) == store.settings.ingest.payload_chars


def test_arguments_and_paths_that_are_refused(tmp_path, store):
    from prismatic.inputs import resolve_input_path

    f = tmp_path / "a.jsonl"
    f.write_bytes(_good("a", 1))
    with pytest.raises(InputError, match="--limit -5 must be a whole number >= 1"):
        ingest(store, [str(f)], "s", "generic", store.settings, limit=-5)
    with pytest.raises(InputError, match="unknown file type"):
        (tmp_path / "x.txt").write_text("hi")
        ingest(store, [str(tmp_path / "x.txt")], "s", "generic", store.settings)
    for escape in ("asset:snli/../../../../tmp/x.jsonl", "asset:snli//etc/hostname"):
        with pytest.raises(InputError, match="points outside the folder of asset 'snli'"):
            resolve_input_path(escape)
    assert _counts(store) == dict.fromkeys(TABLES, 0)


def test_cli_limit_below_one_is_a_usage_error(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes(_good("a", 1))
    proc = subprocess.run(
        [sys.executable, "-m", "prismatic.cli", "--set", f"data_root={tmp_path / 'lake'}", "ingest", str(f),
         "--source", "s", "--limit", "-5"], capture_output=True, text=True, env={**os.environ}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--limit" in proc.stderr and not (tmp_path / "lake" / "tables").exists()


def test_a_bronze_table_written_before_payload_truncated_gets_the_column(tmp_path, store):
    """Migration: a candidates_bronze table of an older prismatic (no payload_truncated) is altered on the next
    write; its rows read the new column as null, and the new rows carry the flag."""
    from deltalake import write_deltalake

    from prismatic.tables import TABLES as DEFS

    schema = DEFS["candidates_bronze"].schema
    old_schema = schema.remove(schema.get_field_index("payload_truncated"))
    old_row = {"source": "old", "file": "/x.jsonl", "line": 1, "batch_id": "0" * 16, "format": "jsonl",
               "payload": "{}", "status": "valid", "ingested_at": None}  # fmt: skip
    write_deltalake(str(store.path("candidates_bronze")), pa.Table.from_pylist([old_row], old_schema))
    f = tmp_path / "a.jsonl"
    f.write_bytes(json.dumps({"prompt": "p " + "y" * 3000, "completion": "c"}).encode() + b"\n")
    rep = ingest(store, [str(f)], "s", "generic", store.settings)
    assert rep.total("payloads_cut") == 1
    rows = {r["source"]: r for r in store.read_arrow("candidates_bronze").to_pylist()}
    assert rows["old"]["payload_truncated"] is None and rows["s"]["payload_truncated"] is True
    assert len(rows["s"]["payload"]) == store.settings.ingest.payload_chars
