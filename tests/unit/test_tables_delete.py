"""TableStore.delete takes a typed match (column -> value or values), never SQL text."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from prismatic.config import load_config
from prismatic.tables import delete_predicate, open_store, table_def

SYNTH = table_def("synth_candidates")


def test_predicate_quotes_values_and_checks_columns():
    assert delete_predicate(SYNTH, {"round": 2, "task": "it's"}) == "round = 2 AND task = 'it''s'"
    hostile = "x' OR '1' = '1"  # stays one quoted literal
    assert delete_predicate(SYNTH, {"task": hostile}) == "task = 'x'' OR ''1'' = ''1'"
    assert delete_predicate(SYNTH, {"reason": {"b", "a"}}) == "reason IN ('a', 'b')"
    assert delete_predicate(SYNTH, {"reason": []}) == "1 = 0"
    with pytest.raises(ValueError, match="no column 'nope'"):
        delete_predicate(SYNTH, {"nope": 1})
    with pytest.raises(ValueError, match="at least one column"):
        delete_predicate(SYNTH, {})
    with pytest.raises(TypeError, match="ints and strings only"):
        delete_predicate(SYNTH, {"round": True})
    with pytest.raises(TypeError, match="ints and strings only"):
        delete_predicate(SYNTH, {"round": 1.5})


def test_delta_rs_delete_removes_exactly_the_matching_rows(tmp_path):
    store = open_store(load_config(None, [f"data_root={tmp_path}"]))
    td = table_def("quarantine")
    now = datetime.now(UTC)
    rows = [
        {f.name: None for f in td.schema}
        | {"batch_id": b, "stage": st, "line": i, "source": "s", "reason": "x", "file": "f", "created_at": now}
        for i, (b, st) in enumerate([("aa", "ingest"), ("aa", "score"), ("bb", "ingest"), ("cc", "ingest")])
    ]
    store.merge("quarantine", pa.Table.from_pylist(rows, schema=td.schema))
    assert store.delete("quarantine", {"batch_id": {"aa", "bb"}, "stage": "ingest"}) == 2
    left = sorted((r["batch_id"], r["stage"]) for r in store.read_arrow("quarantine").to_pylist())
    assert left == [("aa", "score"), ("cc", "ingest")]
    assert store.delete("quarantine", {"batch_id": "it's"}) == 0
