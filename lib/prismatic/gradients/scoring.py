"""Score (prompt, completion) pairs into unit gradient vectors under one projection spec.

:class:`Scorer` ties a loaded proxy model to a projector (``kronecker``: one batched forward + backward
per batch; ``dense``: the paper's per-sample loop + dense Rademacher reference) and to the
:class:`ProjectionSpec` its vectors belong to. :meth:`Scorer.score` encodes pairs, batches them by token
length (similar lengths together, so little padding), halves the batch size when CUDA runs out of
memory and retries, and isolates a failing sample (its row gets an error code, the rest go on).

A failure is a code and a detail, kept apart all the way to the stage: the codes of the model code
(``empty_completion``, ``nonfinite_loss``, ``nonfinite_gradient``, ``zero_gradient``) and ``oom`` have no
detail; ``encode`` (the pair could not be tokenized) and an exception's type name (``RuntimeError``, raised
while scoring that one sample) carry the message as detail.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prismatic.config import ScoringConfig
from prismatic.gradients.kronecker import BatchResult, KroneckerProjector, finish
from prismatic.gradients.model import Encoded, LoadedModel, encode, load_model, pad_id_of
from prismatic.gradients.persample import fill_store
from prismatic.gradients.projectors import DenseRademacherProjector
from prismatic.gradients.spec import ProjectionSpec

log = logging.getLogger(__name__)
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)


@dataclass
class ScoreResult:
    """One pair's outcome. ``vector`` is float32 (d,) unit norm, or None when ``code`` says why not.

    ``code`` is None for a scored pair, else the failure's code; ``detail`` is the message of an ``encode`` or an
    exception failure (None for the codes that say it all).
    """

    vector: np.ndarray | None
    loss: float | None
    n_tokens: int
    truncated: bool
    code: str | None = None
    detail: str | None = None

    @property
    def error(self) -> str | None:
        """The failure as one line for records: the code, or ``error:<code>: <detail>`` when there is a detail."""
        return failure_text(self.code, self.detail)


def failure_text(code: str | None, detail: str | None) -> str | None:
    """One line for a failure (code, detail): ``oom``, ``error:encode: <message>``, ``error:RuntimeError: boom``."""
    if code is None:
        return None
    return code if detail is None else f"error:{code}: {detail}"


Outcome = tuple[np.ndarray | None, float | None, int, str | None, str | None]  # vector, loss, n_tokens, code, detail


class DenseScorerBackend:
    """The paper's method: per-sample loop gradients, dense Rademacher projection of the full gradient."""

    def __init__(self, model: torch.nn.Module, d: int, seed: int, params: str, device: torch.device):
        self.model, self.params, self.device = model, params, device
        from prismatic.gradients.persample import param_layout

        self.projector = DenseRademacherProjector(param_layout(model, params), d, seed, device=device)

    def score_encoded(self, batch: list[Encoded], pad_id: int | None = None) -> BatchResult:
        with fill_store(self.model, batch, self.params) as store:
            y = self.projector.project(store.blocks())
            return finish(y, torch.from_numpy(store.losses), torch.from_numpy(store.n_tokens))


class Scorer:
    """A proxy model + projector + spec; call :meth:`score` with (prompt, completion) pairs.

    Args:
        loaded: the model from :func:`prismatic.gradients.model.load_model`.
        cfg: scoring settings (d, seed, kind, block, params, max_tokens, truncation_side, batch_size, ...).
    """

    def __init__(self, loaded: LoadedModel, cfg: ScoringConfig):
        self.loaded, self.cfg = loaded, cfg
        if cfg.chat_template and not getattr(loaded.tokenizer, "chat_template", None):
            raise ValueError(
                f"scoring.chat_template is true but the tokenizer of {loaded.model_id!r} has no chat template; "
                "set scoring.chat_template=false to score 'prompt completion' as plain text"
            )
        self.spec = ProjectionSpec.from_config(cfg, loaded.model_id, loaded.weights_sha256)
        self.pad_id = pad_id_of(loaded.tokenizer, loaded.model)
        if cfg.kind == "kronecker":
            self.backend = KroneckerProjector(
                loaded.model,
                d=cfg.d,
                seed=cfg.seed,
                block=cfg.block,
                embed_block=cfg.embed_block,
                params=cfg.params,
                device=loaded.device,
            )
        elif cfg.kind == "dense":
            self.backend = DenseScorerBackend(loaded.model, cfg.d, cfg.seed, cfg.params, loaded.device)
        else:
            raise ValueError(f"unknown scoring.kind={cfg.kind!r}")
        self.batch_size = cfg.batch_size

    @classmethod
    def from_config(cls, cfg: ScoringConfig) -> Scorer:
        return cls(load_model(cfg.model), cfg)

    @property
    def spec_id(self) -> str:
        return self.spec.spec_id

    def encode(self, prompt: str, completion: str) -> Encoded:
        c = self.cfg
        return encode(
            self.loaded.tokenizer, prompt, completion, c.max_tokens, c.truncation_side, c.chat_template,
            c.min_completion_tokens,
        )  # fmt: skip

    def _run(self, batch: list[Encoded]) -> list[Outcome]:
        """Score one batch; on OOM halve (sticky for later batches); on another error isolate samples."""
        try:
            r = self.backend.score_encoded(batch, self.pad_id)
            return [
                (None if r.errors[i] else r.vectors[i], float(r.loss[i]), int(r.n_tokens[i]), r.errors[i], None)
                for i in range(len(batch))
            ]
        except OOM_ERRORS:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) == 1:
                return [(None, None, batch[0].n_tokens, "oom", None)]
            half = len(batch) // 2
            self.batch_size = max(1, min(self.batch_size, half))
            log.warning("out of memory on a batch of %d; retrying with batch size %d", len(batch), self.batch_size)
            step, out = self.batch_size, []
            for s in range(0, len(batch), step):
                out.extend(self._run(batch[s : s + step]))  # a deeper OOM halves again inside
            return out
        except Exception as e:  # noqa: BLE001 - one bad sample must not stop the stage
            if len(batch) > 1:
                return [x for e1 in batch for x in self._run([e1])]
            detail = str(e).splitlines()[0][:300] if str(e) else ""
            return [(None, None, batch[0].n_tokens, type(e).__name__, detail)]

    def score_encoded(
        self, encoded: Sequence[Encoded], on_batch: Callable[[int], None] | None = None
    ) -> list[ScoreResult]:
        """Score already-encoded samples, batched by token length; results in input order.

        ``on_batch(rows)`` is called after each batch the model ran (and once for the samples that failed to
        encode), so a caller can report progress per batch; the calls add up to ``len(encoded)``.
        """
        results: list[ScoreResult | None] = [None] * len(encoded)
        todo = []
        for i, e in enumerate(encoded):
            if e.error:
                results[i] = ScoreResult(None, None, e.n_tokens, e.truncated, e.error)
            else:
                todo.append(i)
        if on_batch is not None and len(todo) < len(encoded):
            on_batch(len(encoded) - len(todo))
        todo.sort(key=lambda i: (-len(encoded[i]), i))
        pos = 0
        while pos < len(todo):
            idx = todo[pos : pos + self.batch_size]
            pos += len(idx)
            for i, (vec, loss, n, code, detail) in zip(idx, self._run([encoded[i] for i in idx]), strict=True):
                results[i] = ScoreResult(vec, loss, n, encoded[i].truncated, code, detail)
            if on_batch is not None:
                on_batch(len(idx))
        return results  # type: ignore[return-value]

    def score(
        self, pairs: Sequence[tuple[str, str]], on_batch: Callable[[int], None] | None = None
    ) -> list[ScoreResult]:
        """Score (prompt, completion) pairs; an unencodable pair gets the code ``encode``, not an exception."""
        results: list[ScoreResult | None] = [None] * len(pairs)
        encoded, at = [], []
        for i, (prompt, completion) in enumerate(pairs):
            try:
                encoded.append(self.encode(prompt, completion))
                at.append(i)
            except ValueError as e:
                results[i] = ScoreResult(None, None, 0, False, "encode", str(e))
        if on_batch is not None and len(encoded) < len(pairs):
            on_batch(len(pairs) - len(encoded))
        for i, r in zip(at, self.score_encoded(encoded, on_batch), strict=True):
            results[i] = r
        return results  # type: ignore[return-value]
