"""Sentence embeddings for the embedding-Vendi baseline (default: all-MiniLM-L6-v2, offline from the asset cache).

The model is loaded with plain ``transformers`` (``AutoTokenizer`` + ``AutoModel``), token embeddings are mean-pooled
over the attention mask and L2-normalized, which is what the all-MiniLM-L6-v2 model card prescribes
(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2). ``embedding_model`` may be ``builtin:minilm`` (the
shipped copy, see ``prismatic.assets``), a local directory, or a hub id (for a user with network access).

For Spark, :func:`embed_partitions` returns an iterator-of-pandas function for ``DataFrame.mapInPandas`` that loads
the model once per Python worker (module-level cache) and appends an ``array<float>`` column of unit vectors.

As a feature space for clustering and the synthesis filter (``cluster.feature_space = "embedding"``), sample
embeddings are identified by an :class:`EmbeddingSpec` (encoder, weights hash, d, truncation, pooling) and stored in
``gradients`` under its ``spec_id``; :func:`make_embed_fn` computes such rows in Spark, :func:`embed_samples` on the
driver, both from the same :func:`feature_text`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prismatic.spec_base import HashedSpec

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
# builtin name -> asset name in prismatic.assets
BUILTIN_MODELS = {"minilm": "minilm"}
DEFAULT_MODEL = "builtin:minilm"
DEFAULT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's sentence_bert_config max_seq_length

_CACHE: dict[tuple, TextEmbedder] = {}
_CACHE_LOCK = threading.Lock()


def resolve_model(model: str) -> str:
    """Turn ``builtin:<name>`` into the cached asset's folder; return a path or hub id unchanged.

    Raises:
        ValueError: an unknown builtin name or an empty string.
        prismatic.errors.AssetError: the builtin asset is missing and cannot be fetched.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"embedding_model must be 'builtin:minilm', a local path or a hub id, got {model!r}")
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin embedding model {model!r}; known: {sorted(BUILTIN_MODELS)}")
        from prismatic.assets import asset_path

        return str(asset_path(BUILTIN_MODELS[name]))
    return model


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu`` / ``cuda`` / ``cuda:N`` pass through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"{device=} was asked for but torch sees no CUDA device")
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device=}")


def _default_max_tokens(path: str) -> int | None:
    cfg = Path(path) / "sentence_bert_config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text()).get("max_seq_length")
            return int(value) if value else None
        except (OSError, ValueError):
            return None
    return None


class TextEmbedder:
    """A transformers encoder with mean pooling and L2 normalization.

    Args:
        model: ``builtin:minilm``, a local sentence-transformers / transformers folder, or a hub id.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: texts per forward pass.
        max_tokens: truncation length; default the model folder's ``sentence_bert_config.json`` value, else 256.
    """

    def __init__(
        self, model: str = DEFAULT_MODEL, device: str = "auto", batch_size: int = 64, max_tokens: int | None = None
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size=}")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 2):
            raise ValueError(f"max_tokens must be an integer >= 2, got {max_tokens=}")
        self.model_id = model
        self.path = resolve_model(model)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        # safetensors only: what embedding_spec hashes is what is loaded (and no pickle is ever unpickled)
        self.model = AutoModel.from_pretrained(self.path, use_safetensors=True).to(self.device).eval()
        self.max_tokens = max_tokens or _default_max_tokens(self.path) or DEFAULT_MAX_TOKENS
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts → float32 (len(texts), dim) with unit rows.

        Texts are sorted by length so that each batch pads little; the output keeps the input order.

        Raises:
            ValueError: a text is not a string (e.g. None).
        """
        torch = self._torch
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"text {i} is {type(t).__name__}, not a string (null texts cannot be embedded)")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state  # (b, t, h)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
        return out

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Untruncated token counts (special tokens included) of ``texts``: int64 (len(texts),)."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        enc = self.tokenizer(list(texts), truncation=False, padding=False, verbose=False)
        return np.asarray([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


def get_embedder(
    model: str = DEFAULT_MODEL, device: str = "auto", batch_size: int = 64, max_tokens: int | None = None
) -> TextEmbedder:
    """Return a process-wide cached :class:`TextEmbedder` (one load per Python worker)."""
    key = (model, device, batch_size, max_tokens)
    with _CACHE_LOCK:
        emb = _CACHE.get(key)
        if emb is None:
            log.info("loading embedding model %s", model)
            emb = _CACHE[key] = TextEmbedder(model, device=device, batch_size=batch_size, max_tokens=max_tokens)
        return emb


def embed_texts(
    texts: Sequence[str],
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    batch_size: int = 64,
    max_tokens: int | None = None,
) -> np.ndarray:
    """Embed texts with the cached model: float32 (n, dim), unit rows."""
    return get_embedder(model, device, batch_size, max_tokens).embed(texts)


def embed_partitions(
    text_col: str,
    out_col: str = "vector",
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    batch_size: int = 64,
    max_tokens: int | None = None,
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Build a ``mapInPandas`` function that appends ``out_col`` (array<float>, unit vectors) to each batch.

    The model loads on the first batch a worker sees and stays cached for the worker's life. Use with
    :func:`embedding_schema`::

        df.mapInPandas(embed_partitions("text"), embedding_schema(df.schema, "vector"))

    Args:
        text_col: column of strings (nulls raise ValueError).
        out_col: name of the new vector column (must not exist).
        model, device, batch_size, max_tokens: as in :class:`TextEmbedder`.
    """

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if text_col not in pdf.columns:
                raise ValueError(f"text column {text_col!r} is not in the batch (columns: {list(pdf.columns)})")
            vecs = embed_texts(pdf[text_col].tolist(), model, device, batch_size, max_tokens) if len(pdf) else None
            out = pdf.copy()
            out[out_col] = list(vecs) if vecs is not None else pd.Series([], dtype=object)
            yield out

    return run


def embedding_schema(schema, out_col: str = "vector"):
    """Input Spark schema plus ``out_col: array<float>`` (the output schema of :func:`embed_partitions`)."""
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

    if out_col in schema.fieldNames():
        raise ValueError(f"output column {out_col!r} already exists in the input")
    return StructType([*schema.fields, StructField(out_col, ArrayType(FloatType(), containsNull=False), False)])


# ---- embeddings as a feature space (cluster.feature_space = "embedding") ------------------------------------

EMBEDDING_KIND = "embedding"
EMBEDDING_SPEC_VERSION = 1
POOLING = "mean over attention mask"
NORMALIZATION = "l2"
FEATURE_TEXT = "prompt + '\\n' + completion"
EMBED_SCHEMA = "sample_id string, spec_id string, vector array<float>, loss double, n_tokens int, truncated boolean"


def feature_text(prompt: str | None, completion: str | None) -> str:
    """The text a sample is embedded as (same as the embedding-Vendi baseline: ``concat_ws('\\n', ...)``)."""
    return "\n".join(p for p in (prompt, completion) if p is not None)


@dataclass(frozen=True)
class EmbeddingSpec(HashedSpec):
    """Identity of a sentence-embedding vector space, stored in ``projection_specs`` next to the projection specs.

    Embedding vectors live in ``gradients`` under this spec's ``spec_id`` (loss null), so clustering, the
    sparse-cluster filter and nearest-centroid assignment reuse the gradient code paths and their spec checks.

    Attributes:
        model_id: ``builtin:<name>``, a local folder's name, or a hub id.
        weights_sha256: sha256 of the safetensors files that are loaded (``prismatic.gradients.model.weights_sha256``;
            the encoder is loaded with ``use_safetensors=True``, so nothing else is).
        d: embedding dimension (the encoder's hidden size; 384 for all-MiniLM-L6-v2).
        max_tokens: truncation length (right side).
        pooling, normalization, text, dtype: how a sample becomes a unit vector.
        kind: always ``embedding`` (the ``kind`` column of ``projection_specs``).
        version: bump when the computation changes without any field above changing.
    """

    model_id: str
    weights_sha256: str
    d: int
    max_tokens: int
    pooling: str = POOLING
    normalization: str = NORMALIZATION
    text: str = FEATURE_TEXT
    truncation_side: str = "right"
    dtype: str = "float32"
    kind: str = EMBEDDING_KIND
    version: int = EMBEDDING_SPEC_VERSION

    def __post_init__(self):
        if self.kind != EMBEDDING_KIND:
            raise ValueError(f"EmbeddingSpec kind must be {EMBEDDING_KIND!r}, got {self.kind!r}")
        if len(self.weights_sha256) != 64 or any(c not in "0123456789abcdef" for c in self.weights_sha256):
            raise ValueError(f"weights_sha256={self.weights_sha256!r} must be 64 lowercase hex characters")
        for name in ("d", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


def _local_model_dir(model: str) -> Path:
    """The local folder of ``model`` (builtin, path, or a hub id resolved through the local hub cache)."""
    path = resolve_model(model)
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path))


def embedding_spec(model: str = DEFAULT_MODEL, max_tokens: int | None = None) -> EmbeddingSpec:
    """The :class:`EmbeddingSpec` of an encoder config without loading the model (hashes its weights).

    Args:
        model: as in :class:`TextEmbedder`.
        max_tokens: as in :class:`TextEmbedder` (default: the folder's ``max_seq_length``, else 256).
    """
    from transformers import AutoConfig

    from prismatic.gradients.model import weights_sha256

    folder = _local_model_dir(model)
    if model.startswith(BUILTIN_PREFIX) or not Path(model).exists():
        model_id = model
    else:
        model_id = Path(model).resolve().name
    d = int(AutoConfig.from_pretrained(str(folder)).hidden_size)
    tokens = max_tokens or _default_max_tokens(str(folder)) or DEFAULT_MAX_TOKENS
    return EmbeddingSpec(model_id=model_id, weights_sha256=weights_sha256(folder), d=d, max_tokens=tokens)


def embed_samples(
    prompts: Sequence[str | None],
    completions: Sequence[str | None],
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    batch_size: int = 64,
    max_tokens: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embed samples as :func:`feature_text` → (float32 (n, d) unit rows, n_tokens int32, truncated bool).

    ``n_tokens`` is the length the encoder saw (at most its ``max_tokens``); ``truncated`` says the text was longer.
    """
    emb = get_embedder(model, device, batch_size, max_tokens)
    texts = [feature_text(p, c) for p, c in zip(prompts, completions, strict=True)]
    full = emb.token_counts(texts)
    return emb.embed(texts), np.minimum(full, emb.max_tokens).astype(np.int32), full > emb.max_tokens


def make_embed_fn(
    spec_id: str,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    batch_size: int = 64,
    max_tokens: int | None = None,
    slots: int | None = None,
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A ``mapInPandas`` function: ``sample_id, prompt, completion`` batches → rows of :data:`EMBED_SCHEMA`
    (``gradients`` rows under ``spec_id``, loss null). The encoder loads once per Python worker; ``slots`` as in
    :func:`prismatic.gradients.udf.make_score_fn`."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from prismatic.gradients.udf import limit_cpu_threads

        limit_cpu_threads(slots)
        for pdf in batches:
            if len(pdf):
                vecs, n_tok, trunc = embed_samples(
                    pdf["prompt"].tolist(), pdf["completion"].tolist(), model, device, batch_size, max_tokens
                )
            else:
                vecs, n_tok, trunc = [], [], []
            yield pd.DataFrame(
                {
                    "sample_id": pdf["sample_id"].astype(str).tolist(),
                    "spec_id": [spec_id] * len(pdf),
                    "vector": list(vecs),
                    "loss": pd.array([None] * len(pdf), dtype="Float64"),
                    "n_tokens": pd.array(list(n_tok), dtype="Int32"),
                    "truncated": pd.array(list(trunc), dtype="boolean"),
                }
            )

    return run
