"""Scorer (batching by length, OOM back-off, error isolation) and the mapInPandas function, on a tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from prismatic.config import ModelConfig, ScoringConfig
from prismatic.gradients import udf
from prismatic.gradients.exact import exact_gvendi
from prismatic.gradients.model import load_model
from prismatic.gradients.scoring import Scorer
from prismatic.gradients.tiny import save_tiny

PAIRS = [
    ("what is 2 plus 3 ?", "5 . the answer is 5"),
    ("premise : the cat sits . hypothesis : the dog runs", "neutral"),
    ("w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10 w11"),
    ("a", "the dog sits . the cat runs . what is 7 ?"),
    ("what is 9 times 9 ?", "1"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    udf.clear_cache()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> ScoringConfig:
    folder = save_tiny(tmp_path_factory.mktemp("tiny-model"))
    return ScoringConfig(model=ModelConfig(path=str(folder), device="cpu"), d=128, batch_size=2, max_tokens=64)


@pytest.fixture(scope="module")
def scorer(cfg) -> Scorer:
    return Scorer.from_config(cfg)


def test_scores_match_one_at_a_time_and_keep_input_order(scorer):
    together = scorer.score(PAIRS)
    alone = [scorer.score([p])[0] for p in PAIRS]
    for a, b, pair in zip(together, alone, PAIRS, strict=True):
        assert a.error is None and b.error is None
        assert a.vector.shape == (128,) and a.vector.dtype == np.float32
        assert np.linalg.norm(a.vector) == pytest.approx(1, abs=1e-5)
        assert np.allclose(a.vector, b.vector, atol=3e-6), pair
        assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.n_tokens == b.n_tokens > 0


def test_out_of_memory_halves_the_batch_and_retries(cfg, monkeypatch):
    sc = Scorer.from_config(cfg.model_copy(update={"batch_size": 4}))
    real = sc.backend.score_encoded
    sizes = []

    def flaky(batch, pad_id=None):
        sizes.append(len(batch))
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch, pad_id)

    monkeypatch.setattr(sc.backend, "score_encoded", flaky)
    out = sc.score(PAIRS)
    assert [r.error for r in out] == [None] * 5 and sc.batch_size == 1
    assert sizes[:3] == [4, 2, 1]  # 4 -> 2 -> 1, then later batches start at the reduced size
    reference = Scorer.from_config(cfg).score(PAIRS)
    assert all(np.allclose(a.vector, b.vector, atol=3e-6) for a, b in zip(out, reference, strict=True))


def test_a_failing_sample_gets_a_reason_and_the_rest_go_on(scorer, monkeypatch):
    real = scorer.backend.score_encoded
    lengths = [len(scorer.encode(p, c)) for p, c in PAIRS]
    bad = lengths[4]  # the 'what is 9 times 9 ?' sample fails whenever it is in a batch
    assert lengths.count(bad) == 1

    def picky(batch, pad_id=None):
        if any(len(e) == bad for e in batch):
            raise RuntimeError("boom")
        return real(batch, pad_id)

    monkeypatch.setattr(scorer.backend, "score_encoded", picky)
    out = scorer.score([*PAIRS, ("only prompt", ""), (None, "x")])
    for r, n in zip(out[:5], lengths, strict=True):
        assert (r.error == "error:RuntimeError: boom") if n == bad else (r.error is None and r.vector is not None)
    assert out[5].error == "empty_completion" and out[5].vector is None
    assert out[6].error.startswith("error:encode:")


def test_dense_kind_is_the_reference_projection_of_per_sample_gradients(cfg):
    dense = Scorer.from_config(cfg.model_copy(update={"kind": "dense", "d": 2048}))
    assert dense.spec.kind == "dense" and dense.spec_id != Scorer.from_config(cfg).spec_id
    out = dense.score(PAIRS)
    y = np.stack([r.vector for r in out]).astype(np.float64)
    loaded = load_model(cfg.model)
    ex = exact_gvendi(loaded.model, [dense.encode(p, c) for p, c in PAIRS])
    assert np.abs(y @ y.T - ex.kernel).max() < 5 * np.sqrt(2 / 2048)
    assert [r.loss for r in out] == pytest.approx(ex.losses.tolist(), rel=1e-5)


def test_score_fn_on_a_pandas_batch(cfg):
    udf.clear_cache()
    fn = udf.make_score_fn(cfg.model_dump())
    pdf = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(PAIRS) + 1)],
            "prompt": [p for p, _ in PAIRS] + ["what is 2 ?"],
            "completion": [c for _, c in PAIRS] + [""],
            "task": ["math"] * (len(PAIRS) + 1),
        }
    )
    outs = list(fn(iter([pdf.iloc[:3], pdf.iloc[3:]])))
    assert len(outs) == 2 and len(udf._SCORERS) == 1  # two batches, one model load
    out = pd.concat(outs, ignore_index=True)
    assert list(out.columns) == udf.OUTPUT_COLUMNS and out["sample_id"].tolist() == pdf["sample_id"].tolist()
    spec = udf.spec_for(cfg)
    assert (out["spec_id"] == spec.spec_id).all() and len(spec.spec_id) == 16
    good = out.iloc[:-1]
    assert good["error"].isna().all() and (good["n_tokens"] > 0).all() and not good["truncated"].any()
    assert all(v.dtype == np.float32 and abs(np.linalg.norm(v) - 1) < 1e-5 for v in good["vector"])
    bad = out.iloc[-1]
    assert bad["error"] == "empty_completion" and bad["vector"] is None and pd.isna(bad["loss"])
    direct = Scorer.from_config(cfg).score(PAIRS)
    assert all(np.allclose(v, r.vector, atol=3e-6) for v, r in zip(good["vector"], direct, strict=True))
    with pytest.raises(ValueError, match="completion"):
        udf.score_frame(udf.get_scorer(cfg), pdf.drop(columns=["completion"]))


@pytest.mark.spark
@pytest.mark.slow
def test_score_fn_in_spark_map_in_pandas(spark, cfg):
    pdf = pd.DataFrame({"sample_id": ["a", "b", "c"], "prompt": [p for p, _ in PAIRS[:3]],
                        "completion": [c for _, c in PAIRS[:3]], "task": ["math"] * 3})  # fmt: skip
    df = spark.createDataFrame(pdf).repartition(2)
    fn = udf.make_score_fn(cfg, slots=2)
    rows = {r["sample_id"]: r for r in df.mapInPandas(fn, udf.SCORE_SCHEMA).collect()}
    assert sorted(rows) == ["a", "b", "c"]
    direct = Scorer.from_config(cfg).score(PAIRS[:3])
    for sid, r in zip("abc", direct, strict=True):
        assert rows[sid]["error"] is None and rows[sid]["spec_id"] == udf.spec_for(cfg).spec_id
        assert np.allclose(np.array(rows[sid]["vector"], dtype=np.float32), r.vector, atol=3e-6)
        assert rows[sid]["n_tokens"] == r.n_tokens and rows[sid]["truncated"] is False


def test_cpu_threads_are_shared_among_concurrent_workers(monkeypatch):
    import torch

    from prismatic.spark import worker_cpu_threads

    monkeypatch.delenv("PRISM_TORCH_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [worker_cpu_threads(s) for s in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv("PRISM_TORCH_THREADS", "3")
    assert worker_cpu_threads(8) == 3
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        udf.limit_cpu_threads(4)
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("PRISM_TORCH_THREADS")
        udf.limit_cpu_threads(4)
        assert torch.get_num_threads() == 2
        udf.limit_cpu_threads(None)  # no slot count: left as it is
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.spark
def test_task_slots_of_the_local_session(spark):
    from prismatic.spark import task_slots

    master = spark.sparkContext.master
    want = spark.sparkContext.defaultParallelism if master == "local[*]" else int(master[6:-1].split(",")[0])
    assert task_slots(spark) == want >= 1
