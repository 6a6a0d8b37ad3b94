"""The `prism` CLI in-process on the shared Spark session: output, errors as one line, sql, status."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import good_rows, write_jsonl

from prismatic.assets import ASSETS
from prismatic.cli import main

pytestmark = pytest.mark.spark


@pytest.fixture
def root(tmp_path, spark):
    return tmp_path / "lake"


def prism(root, *args):
    return main(["--set", f"data_root={root}", *args])


def test_ingest_sql_status(root, tmp_path, capsys):
    f = write_jsonl(tmp_path / "a.jsonl", good_rows(12) + [{"prompt": "p"}])
    assert prism(root, "ingest", str(f), "--source", "demo", "--task", "math") == 0
    out = capsys.readouterr().out
    assert "conservation ok: rows read 13 = new samples 12 + duplicates 0 + quarantined 1" in out
    assert "missing_field=1" in out
    assert prism(root, "sql", "SELECT task, count(*) AS n FROM samples GROUP BY task", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == [{"task": "math", "n": 12}]
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("-- two statements\nSELECT count(*) AS n FROM quarantine;\nSELECT count(*) AS m FROM pool;\n")
    assert prism(root, "sql", "-f", str(sql_file), "--format", "csv") == 0
    assert capsys.readouterr().out.split() == ["n", "1", "m", "12"]
    assert prism(root, "status") == 0
    out = capsys.readouterr().out
    assert "samples" in out and "MERGE" in out


def test_errors_are_one_line_with_hint(root, tmp_path, capsys):
    assert prism(root, "--set", "dedup.threshold=2", "status") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: config key 'dedup.threshold'") and err[1].startswith("hint:")
    assert prism(root, "ingest", str(tmp_path / "nope.jsonl"), "--source", "x") == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "Traceback" not in err
    assert prism(root, "sql", "SELEC 1") == 2
    assert "SQL failed" in capsys.readouterr().err
    assert prism(root, "ingest", str(tmp_path), "--source", "bad name!") == 2


def test_ingest_reads_an_asset_path(root, tmp_path, monkeypatch, capsys):
    assets = tmp_path / "assets"
    data = assets / "snli" / "data"
    rows = [{"sentence1": "A dog runs.", "sentence2": "An animal moves.", "gold_label": "entailment"},
            {"sentence1": "A man sleeps.", "sentence2": "A man runs.", "gold_label": "contradiction"}]  # fmt: skip
    data.mkdir(parents=True)
    write_jsonl(data / "tiny.jsonl", rows)
    (assets / "snli" / ".complete").write_text("test\n")  # as `prism assets fetch` leaves a verified asset
    monkeypatch.setenv("PRISM_ASSETS", str(assets))
    # a stand-in asset: its members (verified on every use) narrowed to the file written above
    monkeypatch.setitem(ASSETS, "snli", dataclasses.replace(ASSETS["snli"], members={"data/tiny.jsonl": ""}))
    assert prism(root, "ingest", "asset:snli/tiny.jsonl", "--source", "snli", "--task", "nli") == 0
    assert "conservation ok: rows read 2 = new samples 2 + duplicates 0 + quarantined 0" in capsys.readouterr().out


def test_a_bad_where_filter_is_one_clear_error(root, tmp_path, spark):
    from prismatic.config import load_config
    from prismatic.errors import PrismError
    from prismatic.stages import _pool_where
    from prismatic.tables import open_store

    f = write_jsonl(tmp_path / "a.jsonl", good_rows(12))
    assert prism(root, "ingest", str(f), "--source", "demo", "--task", "math") == 0
    store = open_store(load_config(overrides=[f"data_root={root}"]), spark)
    assert _pool_where(store, ["sample_id", "source"], "source = 'demo'").count() == 12
    assert _pool_where(store, ["sample_id"], None).count() == 12
    with pytest.raises(PrismError, match="--where 'no_such_col = 1' is not a valid filter on samples"):
        _pool_where(store, ["sample_id"], "no_such_col = 1")
