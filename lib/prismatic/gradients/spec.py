"""Projection spec: everything that determines a gradient vector, hashed into ``spec_id``.

Two vectors are comparable only when they come from the same spec: same proxy weights, same parameter
set, same projection (kind, d, seed, block, generator), same tokenization (chat template, max tokens,
truncation side) and same loss. ``spec_id`` is the first 16 hex characters of the sha256 of the spec's
canonical JSON (sorted keys, no whitespace); every row of ``gradients`` carries it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prismatic.config import ScoringConfig
from prismatic.errors import SpecMismatchError
from prismatic.gradients.projectors import CHUNK_ROWS, GENERATOR, MICRO_BATCH
from prismatic.spec_base import HashedSpec

SPEC_VERSION = 1
LOSS_DEFINITION = "mean NLL over completion tokens (prompt and padding labelled -100), per sample"
KRONECKER_GROUPS = (
    "linear:kron(P_o,P_i)+embedding:kron(rows of P_o,P_i; embed_block)+norm:exact+bias:exact;identity when k>=dim"
    " -> sign-hash(d; one ±1 per coordinate, column (w>>1) mod d, sign bit 0 of w)"
)
DENSE_GROUPS = "all selected parameters:dense"


def projector_id(kind: str, block: int, embed_block: int) -> str:
    """What the projection is: generator version, chunking and, for kronecker, the block groups."""
    base = f"{GENERATOR};chunk_rows={CHUNK_ROWS};micro_batch={MICRO_BATCH}"
    if kind == "kronecker":
        return f"{base};kronecker;block={block};embed_block={embed_block};{KRONECKER_GROUPS}"
    if kind == "dense":
        return f"{base};dense;{DENSE_GROUPS}"
    raise ValueError(f"unknown projection {kind=}; use 'kronecker' or 'dense'")


@dataclass(frozen=True)
class ProjectionSpec(HashedSpec):
    """Identity of a gradient vector space.

    Attributes:
        model_id: proxy name (``builtin:smollm2``, a hub id, or a file / folder name).
        weights_sha256: sha256 of the GGUF file or of the folder's safetensors files.
        params: ``all`` or the regex (``re.search``) of parameter names that were differentiated.
        d: output dimension.
        seed: projection seed.
        kind: ``kronecker`` (fast, default) or ``dense`` (reference).
        block: k, the Kronecker block side (k × k per linear layer); recorded for dense too.
        embed_block: k_e, the block side of the input / output embedding (kronecker).
        dtype: dtype of the model's forward/backward.
        max_tokens, truncation_side, chat_template: tokenization.
        loss: the loss whose gradient is taken.
        projector: generator version, chunking and parameter groups (see :func:`projector_id`).
        version: bump when the computation changes without any field above changing.
    """

    model_id: str
    weights_sha256: str
    params: str = "all"
    d: int = 1024
    seed: int = 0
    kind: str = "kronecker"
    block: int = 32
    embed_block: int = 64
    dtype: str = "float32"
    max_tokens: int = 512
    truncation_side: str = "right"
    chat_template: bool = True
    loss: str = LOSS_DEFINITION
    projector: str = ""
    version: int = SPEC_VERSION

    def __post_init__(self):
        if self.kind not in ("kronecker", "dense"):
            raise ValueError(f"unknown projection kind={self.kind!r}; use 'kronecker' or 'dense'")
        if self.truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side={self.truncation_side!r} must be 'left' or 'right'")
        if len(self.weights_sha256) != 64 or any(c not in "0123456789abcdef" for c in self.weights_sha256):
            raise ValueError(f"weights_sha256={self.weights_sha256!r} must be 64 lowercase hex characters")
        for name in ("d", "block", "embed_block", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.projector:
            object.__setattr__(self, "projector", projector_id(self.kind, self.block, self.embed_block))

    @classmethod
    def from_config(cls, cfg: ScoringConfig, model_id: str, weights_sha256: str) -> ProjectionSpec:
        return cls(
            model_id=model_id,
            weights_sha256=weights_sha256,
            params=cfg.params,
            d=cfg.d,
            seed=cfg.seed,
            kind=cfg.kind,
            block=cfg.block,
            embed_block=cfg.embed_block,
            dtype=cfg.model.dtype,
            max_tokens=cfg.max_tokens,
            truncation_side=cfg.truncation_side,
            chat_template=cfg.chat_template,
        )


def check_same_spec(spec_ids: Iterable[str | None]) -> str:
    """Return the one spec_id of a set of vectors; more than one (or a missing one) is an error.

    Raises:
        SpecMismatchError: the vectors come from different projection specs (or some have none).
        ValueError: no spec_id at all.
    """
    distinct = set(spec_ids)
    if None in distinct:
        raise SpecMismatchError("some vectors carry no spec_id")
    if not distinct:
        raise ValueError("check_same_spec needs at least one spec_id")
    if len(distinct) > 1:
        shown = ", ".join(sorted(distinct)[:5]) + (" ..." if len(distinct) > 5 else "")
        raise SpecMismatchError(f"vectors from {len(distinct)} projection specs cannot be pooled: {shown}")
    return distinct.pop()
