"""Score failures travel as (code, detail) from the scorer to the stage, and progress moves per model batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_gradients_udf import PAIRS  # the same five pairs (one per failure path)

from prismatic.config import ModelConfig, ScoringConfig
from prismatic.gradients import udf
from prismatic.gradients.scoring import Scorer, ScoreResult
from prismatic.gradients.tiny import save_tiny
from prismatic.stages.score import quarantine_row


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> Scorer:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = save_tiny(tmp_path_factory.mktemp("tiny-model"))
    yield Scorer.from_config(
        ScoringConfig(model=ModelConfig(path=str(folder), device="cpu"), d=64, batch_size=2, max_tokens=64)
    )
    torch.set_num_threads(n)


def _failing(scorer, monkeypatch, bad_len: int):
    real = scorer.backend.score_encoded

    def picky(batch, pad_id=None):
        if any(len(e) == bad_len for e in batch):
            raise RuntimeError("boom\nsecond line")
        return real(batch, pad_id)

    monkeypatch.setattr(scorer.backend, "score_encoded", picky)


def test_codes_and_details_are_kept_apart(scorer, monkeypatch):
    bad_len = len(scorer.encode(*PAIRS[4]))
    _failing(scorer, monkeypatch, bad_len)
    out = scorer.score([*PAIRS, ("only prompt", ""), (None, "x")])
    assert [r.code for r in out[:4]] == [None] * 4 and all(r.detail is None for r in out[:4])
    assert (out[4].code, out[4].detail) == ("RuntimeError", "boom")  # the type, then the message's first line
    assert (out[5].code, out[5].detail) == ("empty_completion", None)
    assert out[6].code == "encode" and out[6].detail and "error" not in out[6].detail
    # the one-line text records have always carried
    assert out[4].error == "error:RuntimeError: boom" and out[5].error == "empty_completion"
    assert out[6].error == f"error:encode: {out[6].detail}"


def test_the_score_frame_has_a_code_column_and_a_detail_column(scorer, monkeypatch):
    bad_len = len(scorer.encode(*PAIRS[4]))
    _failing(scorer, monkeypatch, bad_len)
    pdf = pd.DataFrame(
        {"sample_id": list("abcde"), "prompt": [p for p, _ in PAIRS], "completion": [c for _, c in PAIRS]}
    )
    out = udf.score_frame(scorer, pdf)
    assert list(out.columns) == udf.OUTPUT_COLUMNS and "detail" in udf.SCORE_SCHEMA
    assert out["error"][:4].isna().all()
    assert out.loc[4, "error"] == "RuntimeError" and out.loc[4, "detail"] == "boom"
    assert out["detail"][:4].isna().all() and pd.isna(out.loc[4, "loss"]) and out.loc[4, "vector"] is None


def test_quarantine_rows_read_as_before():
    # the rows the stage wrote when failures were strings "error:<type>: msg" parsed back with split(":")
    for code, detail, n_tokens in [("RuntimeError", "boom", 7), ("encode", "bad input", 0), ("oom", None, 12)]:
        old = code if detail is None else f"error:{code}: {detail}"
        row = quarantine_row("spec1", "s1", code, detail, n_tokens)
        assert row["reason"] == old.split(":")[0] and row["detail"] == f"{old} (n_tokens={n_tokens})"
        assert (row["stage"], row["source"], row["item_id"], row["batch_id"]) == ("score", "spec1", "s1", "spec1")


def test_on_batch_is_called_per_model_batch_and_adds_up(scorer):
    calls: list[int] = []
    pairs = [*PAIRS, (None, "x")]  # one pair fails to encode: counted once, up front
    out = scorer.score(pairs, on_batch=calls.append)
    ok = sum(r.code is None for r in out)
    assert ok == 5 and sum(calls) == len(pairs)
    assert calls == [1, 2, 2, 1]  # batch_size 2 over the 5 encodable pairs
    # the result does not depend on the callback
    again = scorer.score(pairs)
    assert all(
        (a.vector is None and b.vector is None) or np.allclose(a.vector, b.vector, atol=3e-6)
        for a, b in zip(out, again, strict=True)
    )


def test_a_result_without_code_has_no_error_text():
    r = ScoreResult(np.zeros(2, np.float32), 0.5, 3, False)
    assert r.code is None and r.error is None
