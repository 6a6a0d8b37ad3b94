"""prismatic.tracking: stage runs compose (a stage inside `prism run` becomes a child run, not an error)."""

from __future__ import annotations

import mlflow

from prismatic import tracking
from prismatic.config import load_config


def test_run_inside_an_active_run_is_nested(tmp_path):
    settings = load_config(overrides=[f"data_root={tmp_path}", "tracking.experiment=nesting"])
    with tracking.run(settings, "pipeline") as outer:
        with tracking.run(settings, "synthesize", params={"rounds": 1}) as inner:  # nested not asked for
            assert inner.info.run_id != outer.info.run_id
        with tracking.run(settings, "train", nested=True) as child:
            pass
    client = mlflow.tracking.MlflowClient()
    for r in (inner, child):
        got = client.get_run(r.info.run_id)
        assert got.data.tags["mlflow.parentRunId"] == outer.info.run_id
        assert got.data.tags["prismatic.stage"] in ("synthesize", "train")
    assert client.get_run(inner.info.run_id).data.params == {"rounds": "1"}
    assert "mlflow.parentRunId" not in client.get_run(outer.info.run_id).data.tags
    assert mlflow.active_run() is None
