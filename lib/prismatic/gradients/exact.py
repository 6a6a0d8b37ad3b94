"""Exact oracle (d = ∞) and dense reference projection from stored per-sample gradients.

For N samples with full per-sample gradients g_i ∈ R^|θ| (plain loop, :mod:`prismatic.gradients.persample`):

    Gram:    G_ij = ⟨g_i, g_j⟩ = Σ_blocks ⟨g_i^(b), g_j^(b)⟩        (float64, one parameter block at a time)
    kernel:  K_ij = G_ij / √(G_ii G_jj)                             (cosine of unit-normalized gradients)
    G-Vendi: exp(−Σ λ log λ),  λ = eig(K / N)                      (``numpy.linalg.eigvalsh``)

Only one block of every sample is read at a time (column chunks of at most ``chunk`` values), so memory
beyond the store is O(N · chunk + N²). The same store gives the dense reference projection
y_i = Σ_blocks g_i^(b) S^(b) (:class:`DenseRademacherProjector`), i.e. the paper's method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prismatic.gradients.model import Encoded
from prismatic.gradients.persample import GradientStore, fill_store
from prismatic.gradients.projectors import DenseRademacherProjector
from prismatic.vendi import score_K


def gram_from_store(store: GradientStore, chunk: int = 1 << 20) -> np.ndarray:
    """G = Σ_blocks X_b X_bᵀ in float64, reading each block in column chunks of ``chunk`` values per row."""
    n = store.n
    gram = np.zeros((n, n), dtype=np.float64)
    for name, size in store.layout:
        x = store.block(name)
        step = max(1, chunk)
        for c0 in range(0, size, step):
            part = np.asarray(x[:, c0 : c0 + step], dtype=np.float64)
            gram += part @ part.T
    return (gram + gram.T) / 2


def cosine_kernel(gram: np.ndarray) -> np.ndarray:
    """K_ij = G_ij / √(G_ii G_jj); a zero or non-finite diagonal entry is an error (that sample has no gradient)."""
    gram = np.asarray(gram, dtype=np.float64)
    diag = np.diag(gram)
    bad = np.flatnonzero(~np.isfinite(diag) | (diag <= 0))
    if bad.size:
        raise ValueError(f"samples {bad[:10].tolist()} have a zero or non-finite gradient norm")
    s = 1.0 / np.sqrt(diag)
    k = gram * s[:, None] * s[None, :]
    np.fill_diagonal(k, 1.0)
    return k


def gvendi_from_kernel(kernel: np.ndarray) -> float:
    """G-Vendi of a cosine kernel: exp(−Σ λ log λ), λ = eig(K / N) (``prismatic.vendi.score_K``)."""
    return score_K(kernel)


def gvendi_from_vectors(x: np.ndarray | torch.Tensor) -> float:
    """G-Vendi of row vectors (unit-normalized here) through their N × N cosine kernel."""
    x = np.asarray(x, dtype=np.float64)
    return gvendi_from_kernel(x @ x.T / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(x, axis=1)))


@dataclass
class ExactResult:
    """Exact (d = ∞) statistics of a set: Gram, cosine kernel, G-Vendi, per-sample losses and token counts."""

    gram: np.ndarray
    kernel: np.ndarray
    gvendi: float
    losses: np.ndarray
    n_tokens: np.ndarray


def exact_from_store(store: GradientStore, chunk: int = 1 << 20) -> ExactResult:
    gram = gram_from_store(store, chunk)
    kernel = cosine_kernel(gram)
    return ExactResult(gram, kernel, gvendi_from_kernel(kernel), store.losses.copy(), store.n_tokens.copy())


def exact_gvendi(
    model: torch.nn.Module,
    samples: Sequence[Encoded],
    params: str = "all",
    max_ram_bytes: int = 2 << 30,
    dtype: str = "float32",
) -> ExactResult:
    """Exact G-Vendi of a small set (N up to a few hundred): per-sample loop, then block-by-block Gram.

    With ``dtype="float16"`` the store keeps unit-scaled directions (see :class:`GradientStore`) and the
    returned ``gram`` is that of the scaled rows; ``kernel`` and ``gvendi`` are unaffected.
    """
    with fill_store(model, samples, params, max_ram_bytes=max_ram_bytes, dtype=dtype) as store:
        return exact_from_store(store)


def dense_from_store(
    store: GradientStore, proj_dim: int, seed: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Dense Rademacher reference projection of every stored gradient, (N, d) float32, not normalized."""
    projector = DenseRademacherProjector(store.layout, proj_dim, seed, device=device)
    return projector.project(store.blocks())
