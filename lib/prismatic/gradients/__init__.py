"""Per-sample gradients of a proxy LM, projected to d dimensions (G-Vendi's feature space).

- :mod:`.model` — load the proxy (folder, hub id, GGUF, ``builtin:smollm2``), completion-only encoding.
- :mod:`.spec` — :class:`ProjectionSpec` and ``spec_id``; vectors of two specs never mix.
- :mod:`.projectors` — seeded dense Rademacher projector, chunked and bitwise reproducible; naive oracle.
- :mod:`.persample` — per-sample gradients by a plain loop (the paper's method), gradient store.
- :mod:`.exact` — exact Gram / cosine kernel / G-Vendi of full gradients (d = ∞), dense reference.
- :mod:`.kronecker` — the fast path: one batched forward + backward with hooks, Kronecker blocks.
- :mod:`.scoring` — :class:`Scorer`: batching by length, OOM back-off, error reasons.
- :mod:`.udf` — ``make_score_fn`` for ``DataFrame.mapInPandas``; ``spec_for`` gives the spec row.
- :mod:`.tiny` — a tiny random llama + word-level chat tokenizer for tests and demos.

Heavy modules (torch, transformers) are imported on first use of each submodule, not here.
"""

from __future__ import annotations

__all__ = ["exact", "kronecker", "model", "persample", "projectors", "scoring", "spec", "tiny", "udf"]
