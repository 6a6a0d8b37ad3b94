"""The stage functions on a small pool: the typed pool filter against the SQL it replaced, scoring through one
context (the spec resolved once), and progress that moves per model batch, not per committed chunk."""

from __future__ import annotations

import pytest
from helpers import good_rows, write_jsonl
from synth_helpers import tiny_overrides

from prismatic.config import load_config
from prismatic.ingest import ingest
from prismatic.stages.base import Context
from prismatic.stages.common import PoolFilter
from prismatic.stages.score import score_pool
from prismatic.tables import open_store

pytestmark = pytest.mark.spark


def test_pool_filter_matches_the_sql_it_replaces(spark):
    rows = [(f"s{i}", task, rnd) for i, (task, rnd) in enumerate((t, r) for t in ("math", "nli") for r in range(4))]
    rows.append(("q", "o'brien", 1))  # a name the f-string SQL could not even quote
    df = spark.createDataFrame(rows, "sample_id string, task string, round int")

    def ids(frame):
        return sorted(r["sample_id"] for r in frame.select("sample_id").collect())

    for task in ("math", "nli"):
        for rnd in range(5):
            # the strings the synthesis loop, the study and clustering passed through `--where` before
            for typed, sql in [
                (PoolFilter(task=task, round_below=rnd), f"round < {rnd} AND task = '{task}'"),
                (PoolFilter(task=task, round_at_most=rnd), f"task = '{task}' AND round <= {rnd}"),
                (PoolFilter(task=task), f"task = '{task}'"),
                (PoolFilter(round_at_most=rnd), f"round <= {rnd}"),
            ]:
                assert ids(typed.apply(df)) == ids(df.where(sql)), (typed, sql)
    assert ids(PoolFilter(task="o'brien").apply(df)) == ["q"]
    assert ids(PoolFilter().apply(df)) == ids(df)
    assert str(PoolFilter(task="math", round_below=3)) == "task=math, round<3" and str(PoolFilter()) == "all"


def test_score_pool_one_spec_typed_filter_and_per_batch_progress(tmp_path, spark, tiny_model, monkeypatch):
    from prismatic.progress import watch_counts
    from prismatic.stages import score as score_module

    settings = load_config(overrides=[*tiny_overrides(tmp_path / "lake", tiny_model), "scoring.batch_size=2"])
    store = open_store(settings, spark)
    ingest(store, [str(write_jsonl(tmp_path / "a.jsonl", good_rows(24)))], "a", "math", settings)
    ingest(store, [str(write_jsonl(tmp_path / "b.jsonl", good_rows(6, start=100)))], "b", "generic", settings)
    ctx = Context(settings, store)

    # only the typed filter's rows are scored; the spec row is recorded once per context
    first = score_pool(ctx, PoolFilter(task="generic"))
    assert (first.todo, first.scored + first.quarantined, first.skipped) == (6, 6, 0)
    generic = {r["sample_id"] for r in store.read("samples").where("task = 'generic'").collect()}
    assert {r["sample_id"] for r in store.read("gradients").collect()} == generic
    specs_version = store.version("projection_specs")
    assert [r["spec_id"] for r in store.read("projection_specs").collect()] == [first.spec_id]

    # the rest, with a progress sink polled often: it must move inside the one chunk, batch by batch
    monkeypatch.setattr(score_module, "watch_counts", lambda folder, on_count: watch_counts(folder, on_count, 0.01))
    seen: list[tuple[int, int]] = []
    rest = score_pool(ctx, rows_per_chunk=10_000, progress=lambda done, total: seen.append((done, total)))
    assert (rest.todo, rest.skipped, rest.scored + rest.quarantined) == (24, 6, 24)
    assert store.version("projection_specs") == specs_version  # no second MERGE of the same spec
    assert seen[0] == (0, 24) and seen[-1] == (24, 24) and {t for _, t in seen} == {24}
    inside = {d for d, _ in seen if 0 < d < 24}
    assert inside  # one chunk: only the per-batch counts can give these
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
