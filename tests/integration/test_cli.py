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
    from prismatic.stages.common import pool_frame
    from prismatic.tables import open_store

    f = write_jsonl(tmp_path / "a.jsonl", good_rows(12))
    assert prism(root, "ingest", str(f), "--source", "demo", "--task", "math") == 0
    store = open_store(load_config(overrides=[f"data_root={root}"]), spark)
    assert pool_frame(store, ["sample_id", "source"], "source = 'demo'").count() == 12
    assert pool_frame(store, ["sample_id"], None).count() == 12
    with pytest.raises(PrismError, match="--where 'no_such_col = 1' is not a valid filter on samples"):
        pool_frame(store, ["sample_id"], "no_such_col = 1")


# ---- --format json / csv -------------------------------------------------------------------------------------------


def test_stage_reports_and_status_as_json_and_csv(root, tmp_path, spark, capsys):
    import csv
    import io

    from prismatic.config import load_config
    from prismatic.tables import open_store

    a = write_jsonl(tmp_path / "a.jsonl", good_rows(8) + [{"prompt": "p"}])
    b = write_jsonl(tmp_path / "b.jsonl", good_rows(3, start=8) + good_rows(2))  # 2 rows already in a.jsonl
    capsys.readouterr()
    assert prism(root, "ingest", str(a), str(b), "--source", "demo", "--task", "math", "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)  # one document, nothing else on stdout
    assert [(r["file"], r["rows_read"], r["quarantined"], r["reasons"]) for r in rows] == [
        (str(a), 9, 1, {"missing_field": 1}),
        (str(b), 5, 0, {}),
    ]
    store = open_store(load_config(overrides=[f"data_root={root}"]), spark)
    assert sum(r["new_samples"] for r in rows) == store.count("samples") == 11
    assert sum(r["duplicates"] for r in rows) == 2 and sum(r["quarantined"] for r in rows) == store.count("quarantine")

    assert prism(root, "dedup", "--format", "csv") == 0
    (dd,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert int(dd["pool"]) == store.pool().count() and int(dd["samples"]) == store.count("samples")
    assert int(dd["new_removed"]) == store.count("duplicates") == int(dd["samples"]) - int(dd["pool"])

    for fmt in ("json", "csv"):
        assert prism(root, "status", "--format", fmt) == 0
        text = capsys.readouterr().out
        got = json.loads(text) if fmt == "json" else list(csv.DictReader(io.StringIO(text)))
        by_name = {r["table"]: r for r in got}
        assert {"samples", "quarantine", "candidates_bronze", "duplicates"} <= set(by_name)
        for name, r in by_name.items():
            assert int(r["rows"]) == store.count(name) and int(r["version"]) == store.version(name), (fmt, name)
            assert r["last_operation"] and not r["unreadable"]


def test_sql_statements_as_one_json_array_or_json_lines(root, tmp_path, capsys):
    f = write_jsonl(tmp_path / "a.jsonl", good_rows(5) + [{"prompt": "p"}])
    assert prism(root, "ingest", str(f), "--source", "demo", "--task", "math") == 0
    capsys.readouterr()
    text = "SELECT count(*) AS n FROM samples; SELECT reason, count(*) AS m FROM quarantine GROUP BY reason"
    assert prism(root, "sql", text, "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"statement": "SELECT count(*) AS n FROM samples", "rows": [{"n": 5}]},
        {"statement": "SELECT reason, count(*) AS m FROM quarantine GROUP BY reason",
         "rows": [{"reason": "missing_field", "m": 1}]},
    ]  # fmt: skip
    assert prism(root, "sql", text, "--format", "jsonl") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(ln)["rows"] for ln in lines] == [[{"n": 5}], [{"reason": "missing_field", "m": 1}]]
    assert prism(root, "sql", "SELECT * FROM samples WHERE task = 'nli'", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == []  # no rows is an empty array, not nothing


def test_piped_query_table_keeps_long_values(root, tmp_path, capsys):
    """`prism sql ... | cat` once wrapped and cut the table at 80 columns."""
    f = write_jsonl(tmp_path / "a.jsonl", good_rows(2))
    assert prism(root, "ingest", str(f), "--source", "demo", "--task", "math") == 0
    capsys.readouterr()
    assert prism(root, "sql", "SELECT sample_id, prompt, completion, source, task FROM samples ORDER BY prompt") == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(ln for ln in lines if "Question 0: what is 0 plus 1?" in ln)
    assert "It is 1." in first and "demo" in first and len(first) > 100  # one row, one line, nothing cut


def test_diversity_as_json_matches_the_gradients(root, tmp_path, spark, tiny_model, capsys):
    import numpy as np

    from prismatic.config import load_config
    from prismatic.tables import open_store
    from prismatic.vendi import score_dual

    sets = ["--set", f"scoring.model.path={tiny_model}", "--set", "scoring.d=32", "--set", "scoring.max_tokens=32"]
    f = write_jsonl(tmp_path / "a.jsonl", good_rows(10))
    assert prism(root, *sets, "ingest", str(f), "--source", "demo", "--task", "math") == 0
    assert prism(root, *sets, "score") == 0
    capsys.readouterr()
    assert prism(root, *sets, "diversity", "--no-baselines", "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    (g,) = [r for r in rows if r["metric"] == "g_vendi" and r["scope"] == "all"]  # the whole pool
    settings = load_config(overrides=[f"data_root={root}", *sets[1::2]])
    vectors = np.array([r["vector"] for r in open_store(settings, spark).read_arrow("gradients").to_pylist()])
    assert g["n"] == len(vectors) == 10
    assert g["value"] == pytest.approx(score_dual(vectors), rel=1e-6)


def test_run_is_the_registry_in_order_on_one_context(tmp_path, spark, tiny_model, capsys):
    """`prism run`: each stage's pipeline calls in the registry's order, one spec registered, one MLflow parent run
    whose metrics are the stages' counts and G-Vendi."""
    import mlflow
    import yaml

    from prismatic import tracking
    from prismatic.config import load_config
    from prismatic.tables import open_store

    root = tmp_path / "lake"
    a = write_jsonl(tmp_path / "a.jsonl", good_rows(9) + [{"prompt": "p"}])
    b = write_jsonl(tmp_path / "b.jsonl", good_rows(4, start=20))
    config = {
        "data_root": str(root),
        "scoring": {"model": {"path": str(tiny_model)}, "d": 32, "max_tokens": 32, "chat_template": False},
        "demo": {
            "inputs": [{"path": str(a), "source": "one", "task": "math"}, {"path": str(b), "source": "two"}],
            "synth_rounds": 0,
            "train": False,
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["--config", str(tmp_path / "run.yaml"), "run"]) == 0
    out = capsys.readouterr().out
    heads = [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0] in {"ingest", "dedup", "score",
             "diversity", "synthesize", "train", "eval"}]  # fmt: skip
    assert heads == ["ingest", "ingest", "dedup", "score", "diversity"]
    assert "ingest one: rows read 10 = new samples 9 + duplicates 0 + quarantined 1" in out
    assert "(quarantine: {'missing_field': 1})" in out

    settings = load_config(tmp_path / "run.yaml")
    store = open_store(settings, spark)
    pool = store.pool().count()
    assert store.count("projection_specs") == 1 and store.count("gradients") == pool  # the spec registered once
    div = {r["group_key"]: r for r in store.read_arrow("diversity").to_pylist() if r["metric"] == "g_vendi"}
    for source in ("one", "two"):  # the default grouping: source,round (group_key <source>/<round>)
        g = div[f"{source}/0"]
        assert f"{source}/0: G-Vendi {g['value']:.2f} (n={g['n']})" in out
    # sql/pool_by_source_round.sql reads what `prism run` wrote: a G-Vendi for every (source, round)
    from prismatic.config import REPO_ROOT
    from prismatic.sqlrun import run_sql

    by_group, _ = [rows for _, rows in run_sql(store, (REPO_ROOT / "sql/pool_by_source_round.sql").read_text())]
    assert {(r["source"], r["round"]): r["g_vendi"] for r in by_group} == {
        (s, 0): pytest.approx(div[f"{s}/0"]["value"], abs=1e-4) for s in ("one", "two")
    }

    tracking.setup(settings)
    (parent,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                 if r.info.run_name == "pipeline"]  # fmt: skip
    m = parent.data.metrics
    assert (m["pool"], m["scored"], m["score_quarantined"]) == (pool, pool, 0)
    assert m["duplicates_exact"] + m["duplicates_near"] == store.count("duplicates") == 13 - pool
    assert m["g_vendi.source_round.one/0"] == pytest.approx(div["one/0"]["value"])
    assert parent.data.params  # the flattened config, as before
    assert parent.data.tags["prismatic.stage"] == "pipeline" and parent.data.tags["git_commit"]
    assert mlflow.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
