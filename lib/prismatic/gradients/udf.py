"""The scoring function for ``DataFrame.mapInPandas``: model and projector loaded once per Python worker.

Usage (the Spark wiring into tables lives in the scoring stage)::

    fn = make_score_fn(settings.scoring.model_dump())
    scored = samples.select("sample_id", "prompt", "completion", "task").mapInPandas(fn, SCORE_SCHEMA)

Each input batch (a pandas DataFrame with ``sample_id, prompt, completion`` and optionally ``task``)
becomes one output DataFrame with one row per input row: ``sample_id, spec_id, vector (float32 list, unit
norm), loss, n_tokens, truncated, error, detail``. ``error`` is null for a good row, else the failure's code
(``empty_completion``, ``nonfinite_loss``, ``nonfinite_gradient``, ``zero_gradient``, ``oom``, ``encode`` or an
exception's type name) with its message in ``detail`` (null for the codes that say it all); then ``vector`` and
``loss`` are null: the caller sends such rows to quarantine. The ``task`` column is accepted and not used
(every task is scored the same way).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from prismatic.config import ScoringConfig

SCORE_SCHEMA = (
    "sample_id string, spec_id string, vector array<float>, loss double, n_tokens int, truncated boolean,"
    " error string, detail string"
)
OUTPUT_COLUMNS = ["sample_id", "spec_id", "vector", "loss", "n_tokens", "truncated", "error", "detail"]
REQUIRED_COLUMNS = ("sample_id", "prompt", "completion")

_SCORERS: dict[str, Any] = {}  # canonical config JSON -> Scorer: one load per Python worker process
_LOCK = threading.Lock()


def _as_config(cfg: ScoringConfig | dict) -> ScoringConfig:
    return cfg if isinstance(cfg, ScoringConfig) else ScoringConfig.model_validate(cfg)


def get_scorer(cfg: ScoringConfig | dict):
    """The cached :class:`~prismatic.gradients.scoring.Scorer` of this config (loaded on first use)."""
    from prismatic.gradients.scoring import Scorer

    cfg = _as_config(cfg)
    key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    with _LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = Scorer.from_config(cfg)
        return _SCORERS[key]


def clear_cache() -> None:
    """Forget loaded scorers (tests; frees the model memory of this process)."""
    with _LOCK:
        _SCORERS.clear()


def score_frame(scorer, pdf: pd.DataFrame, on_batch: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Score one pandas batch into the :data:`SCORE_SCHEMA` columns (one output row per input row);
    ``on_batch(rows)`` after each model batch (see :meth:`~prismatic.gradients.scoring.Scorer.score_encoded`)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in pdf.columns]
    if missing:
        raise ValueError(f"score input lacks columns {missing}; it needs {list(REQUIRED_COLUMNS)}")
    pairs = list(zip(pdf["prompt"].tolist(), pdf["completion"].tolist(), strict=True))
    results = scorer.score(pairs, on_batch) if pairs else []
    return pd.DataFrame(
        {
            "sample_id": pdf["sample_id"].astype(str).tolist(),
            "spec_id": [scorer.spec_id] * len(results),
            "vector": [None if r.vector is None else np.asarray(r.vector, dtype=np.float32) for r in results],
            "loss": pd.array([r.loss if r.code is None else None for r in results], dtype="Float64"),
            "n_tokens": pd.array([r.n_tokens for r in results], dtype="Int32"),
            "truncated": pd.array([r.truncated for r in results], dtype="boolean"),
            "error": pd.array([r.code for r in results], dtype="string"),
            "detail": pd.array([r.detail for r in results], dtype="string"),
        },
        columns=OUTPUT_COLUMNS,
    )


def limit_cpu_threads(slots: int | None) -> None:
    """On a CPU-only worker, give torch its share of the cores when ``slots`` workers run side by side."""
    if not slots:
        return
    import torch

    from prismatic.spark import worker_cpu_threads

    if not torch.cuda.is_available():
        n = worker_cpu_threads(slots)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def make_score_fn(
    scoring_cfg: ScoringConfig | dict, slots: int | None = None, counts_dir: str | None = None
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A ``mapInPandas`` function scoring batches under ``scoring_cfg`` (validated now, on the driver).

    The returned function only closes over a plain dict, so it pickles small; the model is loaded in each
    Python worker the first time it runs there and reused for every later batch and task in that worker.
    ``slots``: how many such workers share one machine's cores (:func:`prismatic.spark.task_slots`); on CPU each
    then runs ``cores // slots`` torch threads instead of one per core. ``counts_dir``: a folder the driver
    watches (:func:`prismatic.progress.watch_counts`); each task adds its rows there after every model batch.
    """
    cfg_dict = _as_config(scoring_cfg).model_dump(mode="json")

    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from prismatic.progress import CountFile

        limit_cpu_threads(slots)
        scorer = get_scorer(cfg_dict)
        on_batch = CountFile(counts_dir) if counts_dir else None
        for pdf in batches:
            yield score_frame(scorer, pdf, on_batch)

    return score_batches


def spec_for(scoring_cfg: ScoringConfig | dict):
    """The :class:`ProjectionSpec` of a config without loading the model (resolves the path and hashes weights).

    A GGUF model is converted to its cached checkpoint here if it was not yet, so workers only load it.
    """
    from prismatic.gradients.model import resolve_model_path
    from prismatic.gradients.spec import ProjectionSpec

    cfg = _as_config(scoring_cfg)
    _, model_id, sha = resolve_model_path(cfg.model)
    return ProjectionSpec.from_config(cfg, model_id, sha)
