"""Spherical (cosine) k-means: a pure numpy core, a distributed Lloyd loop on Spark, the sparse-cluster rule.

Prismatic Synthesis (arXiv 2505.20161) clusters the pool's gradient vectors with spherical k-means
(k = 1 % of the pool, 20 iterations) and keeps new samples whose nearest centroid lies in a cluster smaller
than the median cluster size. This module holds:

* the math as small numpy functions (no Spark): blocked nearest-centroid assignment, per-cluster sums,
  renormalization with deterministic re-seeding of empty clusters, seeded k-means++ / sampled init, the
  objective, :func:`lloyd` (the single-process reference), :func:`choose_k`, :func:`sparse_clusters` and
  :func:`assign`;
* :func:`spherical_kmeans`, the same Lloyd iteration over a Spark DataFrame of ``array<float>`` vectors.
  Each step is ONE Spark job: the centroids travel inside the task closure (PySpark ships a pickled
  command over 1 MB as a broadcast variable), every partition assigns its vectors with a blocked float32
  matrix product and returns one small row (per-cluster float64 sums, counts, objective partial and its
  re-seed candidates); the driver adds the rows and renormalizes. With storage="files" each task also keeps
  its rows' labels and cosine bounds on disk between steps and skips the k-wide product for rows whose label
  provably cannot change (``prune``; same labels, less work once centroids settle), and steps run as RDD
  jobs where a SparkContext exists (less fixed cost per step than a DataFrame job). It takes the
  ``ClusterConfig``; both it and :func:`lloyd` run :func:`lloyd_iterations`, so only the source of each step's
  partials differs;
* :func:`mllib_kmeans`, ``pyspark.ml.clustering.KMeans(distanceMeasure="cosine")``, the reference
  (``cluster.method="mllib"``);
* two-level assignment for the paper's k = 1 % of a large pool (``cluster.assign``: ``auto`` picks it from
  :data:`TWO_LEVEL_MIN_K` clusters): every step the driver clusters the k fine centroids into
  ``k_coarse ≈ sqrt(k)`` cells (:func:`build_coarse_index`, warm-started from the previous step) and ships the
  cells with the centroids; each task compares a row with the coarse centroids, then only with the members of
  its ``nprobe`` nearest cells (:func:`_assign_two_level`), so a step costs ``N (k_coarse + nprobe k / k_coarse) d``
  instead of ``N k d``. Sums, re-seeding and the sparse rule are unchanged; the bound-based pruning is off (its
  bounds assume the flat argmax).

Objective everywhere: sum over points of the cosine to the nearest (unit-normalized) centroid; higher is
better, at most N.

Determinism: for a given seed, results do not depend on the number of partitions, the storage mode or the
reduce mode, up to rounding: float64 sums in another order (~1e-15), and float32 dot products that may differ
in the last bit with the block shape (which can flip only an exact near-tie). Ties in the argmax go to the
lower cluster id; ties in the re-seed order go to the smaller sample id.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from prismatic.config import ClusterConfig

log = logging.getLogger(__name__)

__all__ = [
    "KMeansResult",
    "LloydLoop",
    "LloydResult",
    "assign",
    "assign_blocked",
    "assign_spark",
    "assign_two_level",
    "build_coarse_index",
    "choose_k",
    "cluster_pool",
    "cluster_sums",
    "init_centroids",
    "kmeans_plus_plus",
    "lloyd",
    "lloyd_iterations",
    "lowest_cosine",
    "mllib_kmeans",
    "normalize_rows",
    "objective",
    "renormalize",
    "sparse_clusters",
    "sparse_threshold",
    "spherical_kmeans",
]

SCORE_BUDGET_BYTES = 64 << 20  # the (rows x k) float32 score matrix of one block stays under this
SUM_CHUNK_ROWS = 512  # rows gathered at a time when summing one cluster (keeps the gather in cache)
DEFAULT_RESEED_POOL = 64
PACK_ROWS = 1024  # vectors per cached row in storage="cache"
DRIVER_REDUCE_LIMIT_BYTES = 512 << 20  # partials above this go through a shuffle (reduce="auto")
SHUFFLE_BLOCK_CLUSTERS = 256  # clusters per partial row when reduce="shuffle"
PRUNE_MARGIN = 1e-4  # a kept row's bound gap must exceed this (float32 dot products err by ~1e-6 at d = 1024)


# ----------------------------------------------------------------------------------------------------------
# pure numpy core
# ----------------------------------------------------------------------------------------------------------


def normalize_rows(vectors: Any, *, name: str = "vectors") -> np.ndarray:
    """Return ``vectors`` as a C-contiguous float32 matrix of unit rows.

    Args:
        vectors: (n, d) array-like of finite, nonzero rows.
        name: the argument name used in error messages.

    Raises:
        ValueError: not 2-D, empty dimension, or a row that is non-finite or all zeros (it has no direction).
    """
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} has {int(bad.sum())} rows that are non-finite or all zeros (first: row {first})")
    return (x / norms[:, None].astype(np.float32)).astype(np.float32, copy=False)


def _block_rows(k: int, block_rows: int | None) -> int:
    if block_rows is not None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        return int(block_rows)
    return int(min(16384, max(256, SCORE_BUDGET_BYTES // (4 * max(k, 1)))))


def assign_blocked(
    vectors: np.ndarray, centroids: np.ndarray, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine for unit rows, ``argmax(X @ Cᵀ)`` computed ``block_rows`` rows at a time.

    Memory stays at ``block_rows x k`` float32 scores whatever n is. Ties go to the lower cluster id.

    Args:
        vectors: (n, d) float32 unit rows (see :func:`normalize_rows`).
        centroids: (k, d) float32 unit rows.
        block_rows: rows per matrix product; default keeps the score block under 64 MiB (256 to 16384 rows).

    Returns:
        ``(labels, cosines)``: int32 cluster ids (n,) and float32 cosines to them (n,).
    """
    labels, cosines, _ = _assign_top2(vectors, centroids, block_rows, second=False)
    return labels, cosines


def _assign_top2(
    vectors: np.ndarray, centroids: np.ndarray, block_rows: int | None, second: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`assign_blocked` plus, when ``second``, the best cosine to any OTHER centroid (-inf when k = 1)."""
    x = np.asarray(vectors, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"vectors {x.shape} and centroids {c.shape} must be 2-D with the same dimension")
    if c.shape[0] == 0:
        raise ValueError("centroids must hold at least one row")
    n = x.shape[0]
    ct = np.ascontiguousarray(c.T)
    b = _block_rows(c.shape[0], block_rows)
    labels = np.empty(n, dtype=np.int32)
    cosines = np.empty(n, dtype=np.float32)
    others = np.empty(n, dtype=np.float32) if second else None
    for s in range(0, n, b):
        scores = x[s : s + b] @ ct
        lab = scores.argmax(axis=1)
        labels[s : s + b] = lab
        top = np.take_along_axis(scores, lab[:, None], axis=1)[:, 0]
        cosines[s : s + b] = top
        if others is not None:
            if c.shape[0] == 1:
                others[s : s + b] = -np.inf
            else:
                np.put_along_axis(scores, lab[:, None], -np.inf, axis=1)
                others[s : s + b] = scores.max(axis=1)
    return labels, cosines, others


# ----------------------------------------------------------------------------------------------------------
# two-level assignment (k = 1 % of a large pool)
# ----------------------------------------------------------------------------------------------------------

TWO_LEVEL_MIN_K = 1024  # assign="auto" switches to two-level at this k (bench/kmeans.py --large-k measures it)
DEFAULT_NPROBE = 8
COARSE_ITERATIONS = 4  # Lloyd steps of the coarse centroids over the fine ones from a cold start
COARSE_WARM_ITERATIONS = 1  # ... warm-started from the last step's cells (the fine centroids moved little)
TWO_LEVEL_BLOCK_ROWS = 8192


@dataclass
class CoarseIndex:
    """Coarse cells over the fine centroids: each row scans only its ``nprobe`` nearest cells' fine centroids.

    Attributes:
        coarse: float32 (k_coarse, d) unit coarse centroids (spherical k-means of the fine centroids).
        order: int64 (k,) fine centroid ids grouped by cell (ascending id inside a cell).
        offsets: int64 (k_coarse + 1,) cell ``j`` holds ``order[offsets[j]:offsets[j + 1]]``.
        nprobe: cells scanned per row.
    """

    coarse: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    nprobe: int

    @property
    def k_coarse(self) -> int:
        return int(self.coarse.shape[0])

    def scanned_per_row(self) -> float:
        """Dot products per row in a step: the coarse ones plus the fine centroids of the mean probed cells."""
        sizes = np.diff(self.offsets)
        return float(self.k_coarse + min(self.nprobe, self.k_coarse) * sizes.mean())


def default_k_coarse(k: int) -> int:
    """``ceil(sqrt(k))``: balances the coarse scan (k_coarse) against the fine scan (nprobe * k / k_coarse)."""
    return max(1, int(math.ceil(math.sqrt(k))))


def use_two_level(assign: str, k: int) -> bool:
    """``assign="auto"``: two-level from :data:`TWO_LEVEL_MIN_K` clusters on; ``"flat"`` / ``"two_level"`` as named."""
    if assign not in ("auto", "flat", "two_level"):
        raise ValueError(f"assign must be 'auto', 'flat' or 'two_level', got {assign!r}")
    return assign == "two_level" or (assign == "auto" and k >= TWO_LEVEL_MIN_K)


def build_coarse_index(
    centroids: np.ndarray,
    k_coarse: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    seed: int = 0,
    previous: CoarseIndex | None = None,
) -> CoarseIndex:
    """Cluster the fine centroids into ``k_coarse`` cells (:func:`lloyd`, :data:`COARSE_ITERATIONS` steps, or
    :data:`COARSE_WARM_ITERATIONS` from ``previous``).

    The coarse centroids of ``previous`` (the last Lloyd step's index) seed the run when their shape fits, so
    the cells follow the slowly moving fine centroids; otherwise a seeded sample of fine centroids does. The
    work, ``k * k_coarse * d`` per step, is small next to a data pass (k ≪ N).
    """
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    k = c.shape[0]
    kc = min(k, default_k_coarse(k) if k_coarse is None else int(k_coarse))
    if kc < 1:
        raise ValueError(f"k_coarse must be >= 1, got {k_coarse}")
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    initial = previous.coarse if previous is not None and previous.coarse.shape == (kc, c.shape[1]) else None
    warm = initial is not None
    if initial is None:
        initial = c[np.sort(np.random.default_rng(seed).choice(k, size=kc, replace=False))]
    steps = COARSE_WARM_ITERATIONS if warm else COARSE_ITERATIONS
    res = lloyd(c, initial=initial, iterations=steps, tol=0.0, reseed_pool=kc)
    labels = res.labels.astype(np.int64)
    order = np.lexsort((np.arange(k), labels))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=kc))]).astype(np.int64)
    return CoarseIndex(coarse=res.centroids, order=order.astype(np.int64), offsets=offsets, nprobe=int(nprobe))


def _assign_two_level(
    vectors: np.ndarray,
    centroids: np.ndarray,
    index: CoarseIndex,
    block_rows: int | None = None,
    members: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest fine centroid among the ``nprobe`` nearest coarse cells' members: ``(labels int32, cosines float32)``.

    Per block of rows: one product with the coarse centroids, then for every cell one product of the rows that
    probe it with the cell's members. Work per row: ``(k_coarse + nprobe * k / k_coarse) * d``. Ties go to the
    lower cluster id, as in :func:`assign_blocked`. A row's label is its flat argmax whenever that centroid lies
    in a probed cell (always when ``nprobe >= k_coarse``).
    """
    x = np.asarray(vectors, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1] or index.coarse.shape[1] != c.shape[1]:
        raise ValueError(f"vectors {x.shape}, centroids {c.shape} and the index must share the dimension")
    n, kc = x.shape[0], index.k_coarse
    p = min(index.nprobe, kc)
    if members is None:  # fine centroids grouped by cell (callers with many batches pass it, built once)
        members = np.ascontiguousarray(c[index.order])
    coarse_t = np.ascontiguousarray(index.coarse.T)
    b = int(block_rows) if block_rows is not None else TWO_LEVEL_BLOCK_ROWS
    labels = np.empty(n, dtype=np.int32)
    cosines = np.empty(n, dtype=np.float32)
    with _one_blas_thread():  # the per-cell products are small: threaded BLAS spends more on sync than math
        for s in range(0, n, b):
            _assign_block(x[s : s + b], s, members, coarse_t, index, p, labels, cosines)
    return labels, cosines


@contextlib.contextmanager
def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn, a core dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _assign_block(xb, s, members, coarse_t, index: CoarseIndex, p: int, labels, cosines) -> None:
    """One block of :func:`_assign_two_level`, written into ``labels`` / ``cosines`` from row ``s``."""
    kc = index.k_coarse
    m = len(xb)
    scores = xb @ coarse_t
    probe = np.argpartition(-scores, p - 1, axis=1)[:, :p] if p < kc else np.broadcast_to(np.arange(kc), (m, kc))
    cells = probe.reshape(-1)
    rows = np.repeat(np.arange(m), p)
    by_cell = np.argsort(cells, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(cells, minlength=kc))])
    best = np.full(m, -np.inf, dtype=np.float32)
    lab = np.full(m, np.iinfo(np.int32).max, dtype=np.int64)
    for j in range(kc):
        lo, hi = index.offsets[j], index.offsets[j + 1]
        if hi == lo or starts[j] == starts[j + 1]:
            continue
        r = rows[by_cell[starts[j] : starts[j + 1]]]
        sc = xb[r] @ members[lo:hi].T
        a = sc.argmax(axis=1)  # members of a cell are in ascending id: the first max is the lowest id
        v = sc[np.arange(len(r)), a]
        ids = index.order[lo + a]
        better = (v > best[r]) | ((v == best[r]) & (ids < lab[r]))
        best[r[better]], lab[r[better]] = v[better], ids[better]
    labels[s : s + m] = lab
    cosines[s : s + m] = best


def assign_two_level(
    vectors: Any, centroids: Any, index: CoarseIndex | None = None, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`assign` through a :class:`CoarseIndex` (built with defaults when None): ``(labels, cosines)``."""
    x = normalize_rows(vectors, name="vectors")
    c = normalize_rows(centroids, name="centroids")
    return _assign_two_level(x, c, index if index is not None else build_coarse_index(c), block_rows)


def cluster_sums(vectors: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster float64 sums and counts.

    Rows are sorted by label and each cluster is summed ``SUM_CHUNK_ROWS`` rows at a time with float64
    accumulation, so the result does not depend on float32 rounding of long running sums.

    Args:
        vectors: (n, d) rows.
        labels: (n,) cluster ids in ``[0, k)``.
        k: number of clusters.

    Returns:
        ``(sums, counts)``: float64 (k, d) and int64 (k,).
    """
    sums, counts, _ = _cluster_sums(vectors, labels, k)
    return sums, counts


def _cluster_sums(
    vectors: np.ndarray, labels: np.ndarray, k: int, centroids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`cluster_sums`; with ``centroids`` also each row's float32 dot product with its own centroid.

    The dot products come from the same gathered chunks as the sums (one matrix-vector product per chunk),
    so they cost one pass over the rows, not a k-wide matrix product.
    """
    x = np.asarray(vectors)
    lab = np.asarray(labels)
    if x.ndim != 2 or lab.shape != (x.shape[0],):
        raise ValueError(f"labels {lab.shape} must have one entry per row of vectors {x.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    if lab.size and (lab.min() < 0 or lab.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got range [{lab.min()}, {lab.max()}]")
    counts = np.bincount(lab, minlength=k).astype(np.int64)
    dots = np.empty(x.shape[0], dtype=np.float32) if centroids is not None else None
    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for j in np.flatnonzero(counts):
        idx = order[bounds[j] : bounds[j + 1]]
        acc = sums[j]
        for s in range(0, len(idx), SUM_CHUNK_ROWS):
            chunk = x[idx[s : s + SUM_CHUNK_ROWS]]
            acc += np.add.reduce(chunk, axis=0, dtype=np.float64)
            if dots is not None:
                dots[idx[s : s + SUM_CHUNK_ROWS]] = chunk @ centroids[j]
    return sums, counts, dots


def lowest_cosine(cosines: np.ndarray, r: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``r`` points farthest from their centroid: ascending cosine, then ascending id.

    Args:
        cosines: (n,) cosine of each point to its assigned centroid.
        r: how many to return (fewer when n < r).
        ids: (n,) sortable ids for tie-breaking; default the positions themselves.

    Returns:
        int64 positions into ``cosines``, farthest first.
    """
    cos = np.asarray(cosines, dtype=np.float64)
    n = cos.shape[0]
    r = min(int(r), n)
    if r <= 0:
        return np.empty(0, dtype=np.int64)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    if r < n:
        cut = np.partition(cos, r - 1)[r - 1]
        pos = np.flatnonzero(cos <= cut)  # every tie at the cut competes on id
    else:
        pos = np.arange(n)
    order = np.lexsort((ids[pos], cos[pos]))
    return pos[order[:r]].astype(np.int64)


def renormalize(
    sums: np.ndarray,
    counts: np.ndarray,
    previous: np.ndarray,
    reseed_vectors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """New centroids ``sum / ||sum||``; empty clusters re-seeded deterministically.

    A cluster is empty when its count is 0 or its sum has zero norm (points that cancel out). Empty clusters,
    in ascending id, take the rows of ``reseed_vectors`` in order (callers pass the points farthest from their
    centroid, farthest first; see :func:`lowest_cosine`). Empty clusters beyond the candidates keep their
    previous centroid and are re-seeded at a later step.

    Args:
        sums: (k, d) float64 per-cluster sums.
        counts: (k,) per-cluster counts.
        previous: (k, d) centroids that produced the assignment.
        reseed_vectors: (r, d) unit rows, farthest first; may be None or empty.

    Returns:
        ``(centroids, reseeded)``: float32 (k, d) unit rows and the int64 ids of the re-seeded clusters.
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts)
    norms = np.linalg.norm(sums, axis=1)
    empty = (counts == 0) | (norms <= 0) | ~np.isfinite(norms)
    safe = np.where(empty, 1.0, norms)
    centroids = (sums / safe[:, None]).astype(np.float32)
    empty_ids = np.flatnonzero(empty)
    centroids[empty_ids] = np.asarray(previous, dtype=np.float32)[empty_ids]
    n_cand = 0 if reseed_vectors is None else len(reseed_vectors)
    reseeded = empty_ids[:n_cand]
    if len(reseeded):
        centroids[reseeded] = np.asarray(reseed_vectors, dtype=np.float32)[: len(reseeded)]
    return centroids, reseeded.astype(np.int64)


def objective(vectors: np.ndarray, centroids: np.ndarray, block_rows: int | None = None) -> float:
    """Sum over points of the cosine to the nearest unit-normalized centroid (higher is better, at most n).

    Both arguments are normalized here, so centroids from any method (faiss, MLlib) are scored the same way.
    """
    x = normalize_rows(vectors, name="vectors")
    c = normalize_rows(centroids, name="centroids")
    _, cos = assign_blocked(x, c, block_rows)
    return float(cos.sum(dtype=np.float64))


def assign(vectors: Any, centroids: Any, block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine for new vectors (rows and centroids need not be unit length).

    Args:
        vectors: (n, d) finite, nonzero rows.
        centroids: (k, d) finite, nonzero rows (for instance ``KMeansResult.centroids``).
        block_rows: rows per matrix product (see :func:`assign_blocked`).

    Returns:
        ``(labels, cosines)``: int32 cluster ids and float32 cosines.
    """
    x = normalize_rows(vectors, name="vectors")
    c = normalize_rows(centroids, name="centroids")
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"vectors have d = {x.shape[1]} but centroids have d = {c.shape[1]}")
    return assign_blocked(x, c, block_rows)


def kmeans_plus_plus(sample: np.ndarray, k: int, seed: int, n_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding under cosine distance, on unit rows.

    With unit rows ``||x - c||² = 2 (1 - cos)``, so the D² weights of k-means++ (Arthur & Vassilvitskii, 2007)
    are ``1 - max cos`` to the centres chosen so far. Each step draws ``n_trials`` candidates (default
    ``2 + floor(ln k)``, as scikit-learn does) and keeps the one that raises the sample objective most.
    Rows already chosen have weight 0, so the k positions are distinct.

    Args:
        sample: (m, d) unit rows, m >= k.
        k: number of centres.
        seed: numpy Generator seed.
        n_trials: candidates per step.

    Returns:
        int64 positions (k,) of the chosen rows, in the order chosen.
    """
    s = np.asarray(sample, dtype=np.float32)
    m = s.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] (the sample size), got {k}")
    trials = int(n_trials) if n_trials is not None else 2 + int(math.log(k))
    if trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    rng = np.random.default_rng(seed)
    chosen = np.empty(k, dtype=np.int64)
    taken = np.zeros(m, dtype=bool)
    chosen[0] = rng.integers(m)
    taken[chosen[0]] = True
    best = s @ s[chosen[0]]
    for j in range(1, k):
        w = np.maximum(1.0 - best.astype(np.float64), 0.0)
        w[taken] = 0.0
        positive = np.flatnonzero(w)
        if positive.size == 0:  # every free row coincides with a centre: take the first free row
            pick = int(np.flatnonzero(~taken)[0])
            sims = s @ s[pick]
        else:
            cum = np.cumsum(w)
            cand = np.searchsorted(cum, rng.random(trials) * cum[-1], side="right")
            cand = np.minimum(cand, positive[-1])  # rounding at the top end must not land on a zero weight
            sims_all = s @ s[cand].T  # (m, trials)
            gains = np.maximum(sims_all, best[:, None]).sum(axis=0, dtype=np.float64)
            t = int(np.argmax(gains))
            pick, sims = int(cand[t]), sims_all[:, t]
        chosen[j] = pick
        taken[pick] = True
        best = np.maximum(best, sims)
    return chosen


def init_centroids(
    sample: np.ndarray, k: int, seed: int, method: Literal["kmeans++", "sample"] = "kmeans++"
) -> np.ndarray:
    """Seeded initial centroids from a sample of unit rows (row order of ``sample`` matters).

    Args:
        sample: (m, d) unit rows, m >= k.
        k: number of clusters.
        seed: random seed.
        method: ``"kmeans++"`` (greedy k-means++, see :func:`kmeans_plus_plus`) or ``"sample"`` (k distinct
            rows drawn uniformly).

    Returns:
        float32 (k, d) unit centroids.
    """
    s = np.asarray(sample, dtype=np.float32)
    if s.ndim != 2 or not 1 <= k <= s.shape[0]:
        raise ValueError(f"k must be in [1, {s.shape[0] if s.ndim == 2 else 0}] (rows in the sample), got {k}")
    if method == "kmeans++":
        idx = kmeans_plus_plus(s, k, seed)
    elif method == "sample":
        idx = np.random.default_rng(seed).choice(s.shape[0], size=k, replace=False)
    else:
        raise ValueError(f"init must be 'kmeans++' or 'sample', got {method!r}")
    return np.ascontiguousarray(s[idx])


def default_init_sample(n: int, k: int) -> int:
    """Rows drawn to the driver for init: ``32 k`` clamped to [10 000, 100 000], at most n, at least k."""
    return int(min(n, max(k, min(100_000, max(10_000, 32 * k)))))


def choose_k(n: int, fraction: float = 0.01, k_min: int = 2) -> int:
    """Number of clusters for a pool of ``n``: ``floor(fraction * n)``, at least ``k_min``, at most ``n``.

    The paper uses 1 % of the pool. ``fraction * n`` is rounded to 9 decimals before the floor, so
    ``0.29 * 100`` gives 29, not 28.

    Raises:
        ValueError: n < 1, fraction outside (0, 1], or k_min < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if k_min < 1:
        raise ValueError(f"k_min must be >= 1, got {k_min}")
    return int(min(n, max(k_min, math.floor(round(n * fraction, 9)))))


def sparse_threshold(sizes: Any, quantile: float = 0.5) -> float:
    """The size at ``quantile`` of the cluster sizes (numpy's default linear interpolation; 0.5 = median)."""
    s = np.asarray(sizes, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"sizes must be a non-empty 1-D sequence, got shape {s.shape}")
    if (s < 0).any() or not np.isfinite(s).all():
        raise ValueError("sizes must be finite and >= 0")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return float(np.quantile(s, quantile))


def sparse_clusters(sizes: Any, quantile: float = 0.5) -> np.ndarray:
    """Ids of the sparse clusters: size strictly below the size at ``quantile`` (default the median).

    This is the filter of Prismatic Synthesis (arXiv 2505.20161): keep new samples whose nearest centroid is
    in the smaller half of the clusters by size. Tie handling: the threshold is ``np.quantile(sizes,
    quantile)`` (linear interpolation) and the comparison is strict, so clusters whose size equals the
    threshold are NOT sparse; when all sizes are equal no cluster is sparse; with sizes ``[1, 2, 3, 4]`` the
    median is 2.5 and clusters 0 and 1 are sparse; with ``[1, 2, 2, 3]`` the median is 2 and only cluster 0 is.
    Empty clusters (size 0) take part in the quantile and are sparse whenever the threshold is above 0.

    Args:
        sizes: cluster sizes indexed by cluster id.
        quantile: in (0, 1).

    Returns:
        int64 ids of the sparse clusters, ascending.
    """
    t = sparse_threshold(sizes, quantile)
    return np.flatnonzero(np.asarray(sizes, dtype=np.float64) < t).astype(np.int64)


@dataclass
class LloydResult:
    """Outcome of :func:`lloyd`.

    Attributes:
        centroids: float32 (k, d) unit centroids after the last step.
        labels: int32 (n,) nearest final centroid of each row.
        cosines: float32 (n,) cosine to it.
        sizes: int64 (k,) rows per final cluster.
        objective: sum of ``cosines`` (float64).
        history: objective under the centroids entering each step (len = iterations run).
        iterations: Lloyd steps run.
        converged: True when a step left the centroids unchanged (within ``tol``) and the loop stopped.
        reseeded: empty clusters re-seeded, summed over steps.
        init_centroids: the centroids the loop started from.
    """

    centroids: np.ndarray
    labels: np.ndarray
    cosines: np.ndarray
    sizes: np.ndarray
    objective: float
    history: list[float]
    iterations: int
    converged: bool
    reseeded: int
    init_centroids: np.ndarray


def _check_common(k: int, iterations: int, tol: float | None, reseed_pool: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if tol is not None and (tol < 0 or not math.isfinite(tol)):
        raise ValueError(f"tol must be None or a finite number >= 0, got {tol}")
    if reseed_pool < 0:
        raise ValueError(f"reseed_pool must be >= 0, got {reseed_pool}")


def _shift(new: np.ndarray, old: np.ndarray) -> float:
    return float(np.max(np.abs(new.astype(np.float64) - old.astype(np.float64)))) if new.size else 0.0


@dataclass
class LloydLoop:
    """What the Lloyd iterations of :func:`lloyd_iterations` produced (before the final assignment pass).

    Attributes:
        centroids: float32 (k, d) unit centroids after the last step.
        history: objective under the centroids entering each step.
        steps: Lloyd steps run.
        converged: True when a step moved no centroid coordinate by more than ``tol`` and the loop stopped.
        reseeded: empty clusters re-seeded, summed over steps.
    """

    centroids: np.ndarray
    history: list[float] = field(default_factory=list)
    steps: int = 0
    converged: bool = False
    reseeded: int = 0


StepPartials = Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray, np.ndarray]]


def lloyd_iterations(
    centroids: np.ndarray,
    iterations: int,
    tol: float | None,
    partials: StepPartials,
    on_step: Callable[[int, float, int, float], None] | None = None,
) -> LloydLoop:
    """The Lloyd loop shared by :func:`lloyd` (numpy) and :func:`spherical_kmeans` (Spark).

    Each step asks ``partials(centroids)`` for ``(objective, per-cluster float64 sums, counts, re-seed
    candidates farthest first)`` under the current centroids, then renormalizes (:func:`renormalize`). Where the
    partials come from is the only difference between the two implementations.

    Args:
        centroids: (k, d) float32 unit starting centroids.
        iterations: maximum steps.
        tol: stop when no centroid coordinate moves by more than ``tol``; None runs every step.
        partials: the statistics of one step under the given centroids.
        on_step: called after each step with (step number, objective, clusters re-seeded, largest shift).
    """
    loop = LloydLoop(centroids)
    for _ in range(iterations):
        obj, sums, counts, reseed_vectors = partials(loop.centroids)
        loop.history.append(obj)
        new, reseeded = renormalize(sums, counts, loop.centroids, reseed_vectors)
        loop.reseeded += len(reseeded)
        loop.steps += 1
        moved = _shift(new, loop.centroids)
        loop.centroids = new
        if on_step is not None:
            on_step(loop.steps, obj, len(reseeded), moved)
        if tol is not None and moved <= tol:
            loop.converged = True
            break
    return loop


class _IndexCache:
    """The coarse index of the latest centroids, rebuilt (warm-started) whenever the centroids change."""

    def __init__(self, k_coarse: int | None, nprobe: int, seed: int):
        self.k_coarse, self.nprobe, self.seed = k_coarse, nprobe, seed
        self.index: CoarseIndex | None = None
        self.key: np.ndarray | None = None

    def get(self, c: np.ndarray) -> CoarseIndex:
        if self.index is None or self.key is None or not np.array_equal(self.key, c):
            self.index = build_coarse_index(c, self.k_coarse, self.nprobe, self.seed, self.index)
            self.key = c.copy()
        return self.index


def _numpy_partials(
    x: np.ndarray, ids: np.ndarray | None, reseed_pool: int, block_rows: int | None, index: _IndexCache | None = None
) -> StepPartials:
    """One Lloyd step's statistics over all rows in memory: assign, sum per cluster, pick re-seed candidates."""

    def partials(c: np.ndarray):
        if index is not None:
            labels, cos = _assign_two_level(x, c, index.get(c), block_rows)
        else:
            labels, cos = assign_blocked(x, c, block_rows)
        sums, counts = cluster_sums(x, labels, len(c))
        cand = lowest_cosine(cos, reseed_pool, ids)
        return float(cos.sum(dtype=np.float64)), sums, counts, x[cand]

    return partials


def _lloyd_args(
    x: np.ndarray, k: int | None, initial: Any, ids: Any, iterations: int, tol: float | None, reseed_pool: int
) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """Check :func:`lloyd`'s arguments against the rows ``x``; return ``(k, initial unit rows or None, ids)``."""
    n, d = x.shape
    c = None
    if initial is not None:
        c = normalize_rows(initial, name="initial")
        if c.shape[1] != d:
            raise ValueError(f"initial has d = {c.shape[1]} but vectors have d = {d}")
        if k is not None and k != c.shape[0]:
            raise ValueError(f"k = {k} but initial has {c.shape[0]} rows")
        k = c.shape[0]
    if k is None:
        raise ValueError("pass k or initial")
    _check_common(k, iterations, tol, reseed_pool)
    if k > n:
        raise ValueError(f"k = {k} exceeds the number of vectors n = {n}")
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
    return k, c, ids


def _lloyd_init(x: np.ndarray, k: int, seed: int, init: str, init_sample: int | None) -> np.ndarray:
    """Seeded init on ``init_sample`` rows drawn with ``seed`` (sorted, so the sample keeps the rows' order)."""
    n = x.shape[0]
    m = default_init_sample(n, k) if init_sample is None else int(init_sample)
    if not k <= m <= n:
        raise ValueError(f"init_sample must be in [k, n] = [{k}, {n}], got {m}")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    return init_centroids(x[rows], k, seed, init)


def lloyd(
    vectors: Any,
    k: int | None = None,
    iterations: int = 20,
    seed: int = 0,
    *,
    init: Literal["kmeans++", "sample"] = "kmeans++",
    initial: np.ndarray | None = None,
    init_sample: int | None = None,
    tol: float | None = 0.0,
    ids: np.ndarray | None = None,
    reseed_pool: int = DEFAULT_RESEED_POOL,
    block_rows: int | None = None,
    assign: Literal["auto", "flat", "two_level"] = "flat",
    k_coarse: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
) -> LloydResult:
    """Single-process spherical k-means (the reference for :func:`spherical_kmeans`).

    Each step assigns every row to its nearest centroid by cosine, sums the rows per cluster (float64) and
    renormalizes; empty clusters are re-seeded with the ``reseed_pool`` points farthest from their centroid
    (ascending cosine, then ascending id). Given the same initial centroids, the distributed version runs
    exactly these steps (both through :func:`lloyd_iterations`).

    Args:
        vectors: (n, d) finite nonzero rows (normalized here).
        k: number of clusters; may be omitted when ``initial`` is given.
        iterations: maximum Lloyd steps.
        seed: seed of the init.
        init: ``"kmeans++"`` or ``"sample"``, run on ``init_sample`` rows drawn with the seed.
        initial: (k, d) starting centroids; overrides ``init``.
        init_sample: rows drawn for the init (default :func:`default_init_sample`).
        tol: stop when no centroid coordinate moves by more than ``tol`` (0.0: stop when a step changes
            nothing, which never alters the result); None runs every iteration.
        ids: (n,) sortable ids for re-seed tie-breaks (default the row positions).
        reseed_pool: candidates for re-seeding per step (at most this many empty clusters re-seeded per step).
        block_rows: rows per matrix product.
        assign: ``"flat"`` (every row against every centroid), ``"two_level"`` (each row against the members of
            its ``nprobe`` nearest coarse cells, :func:`build_coarse_index` rebuilt every step) or ``"auto"``
            (two-level from :data:`TWO_LEVEL_MIN_K` clusters). Two-level also assigns the final labels.
        k_coarse: coarse cells for two-level (default ``ceil(sqrt(k))``).
        nprobe: cells scanned per row for two-level.

    Returns:
        A :class:`LloydResult`.
    """
    x = normalize_rows(vectors, name="vectors")
    k, c, ids = _lloyd_args(x, k, initial, ids, iterations, tol, reseed_pool)
    if c is None:
        c = _lloyd_init(x, k, seed, init, init_sample)
    cache = _IndexCache(k_coarse, nprobe, seed) if use_two_level(assign, k) else None
    loop = lloyd_iterations(c.copy(), iterations, tol, _numpy_partials(x, ids, reseed_pool, block_rows, cache))
    if cache is not None:
        labels, cos = _assign_two_level(x, loop.centroids, cache.get(loop.centroids), block_rows)
    else:
        labels, cos = assign_blocked(x, loop.centroids, block_rows)
    return LloydResult(
        centroids=loop.centroids,
        labels=labels,
        cosines=cos,
        sizes=np.bincount(labels, minlength=k).astype(np.int64),
        objective=float(cos.sum(dtype=np.float64)),
        history=loop.history,
        iterations=loop.steps,
        converged=loop.converged,
        reseeded=loop.reseeded,
        init_centroids=c,
    )


# ----------------------------------------------------------------------------------------------------------
# per-partition work (runs inside Spark Python workers; numpy + pyarrow only)
# ----------------------------------------------------------------------------------------------------------


class _Partial:
    """One partition's statistics for one Lloyd step: sums, counts, objective and re-seed candidates.

    With ``bounds`` (the partition's state after the previous step: labels, cosine to the own centroid and an
    upper bound on the cosine to any other centroid) and ``drift`` (how far each centroid moved since then),
    rows whose label provably cannot change skip the k-wide matrix product (see :func:`_prune_rows`). With
    ``track``, the state after this step is kept in :attr:`state` for the next one.
    """

    def __init__(
        self,
        centroids: np.ndarray,
        reseed_pool: int,
        with_sums: bool,
        block_rows: int | None,
        bounds: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        drift: np.ndarray | None = None,
        track: bool = False,
        index: CoarseIndex | None = None,
    ):
        self.c = centroids
        self.index = index
        self.members: np.ndarray | None = None
        self.k, self.d = centroids.shape
        self.r = reseed_pool
        self.block_rows = block_rows
        self.sums = np.zeros((self.k, self.d), dtype=np.float64) if with_sums else None
        self.counts = np.zeros(self.k, dtype=np.int64)
        self.obj = 0.0
        self.n = 0
        self.gemm_rows = 0
        self.cand = (np.empty(0), np.empty(0, dtype=object), np.empty((0, self.d), dtype=np.float32))
        two_level = index is not None  # its labels are not the flat argmax, so the bounds would not hold
        self.bounds = bounds if drift is not None and not two_level else None
        self.drift = drift
        self.track = (track or self.bounds is not None) and not two_level
        self._state: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        m = len(x)
        if not m:
            return
        lo, hi = self.n, self.n + m
        keep = None
        if self.index is not None:
            if self.members is None:
                self.members = np.ascontiguousarray(self.c[self.index.order])
            labels, cos = _assign_two_level(x, self.c, self.index, self.block_rows, self.members)
            upper = None
        elif self.bounds is not None and hi <= len(self.bounds[0]):
            labels, upper, keep = _prune_rows(*(b[lo:hi] for b in self.bounds), self.drift)
            need = np.flatnonzero(~keep)
            if need.size:
                lab_n, cos_n, up_n = _assign_top2(x[need], self.c, self.block_rows)
                labels[need], upper[need] = lab_n, up_n
            if not keep.any():
                keep = None
                cos = np.empty(m, dtype=np.float32)
                cos[need] = cos_n
        else:
            labels, cos, upper = _assign_top2(x, self.c, self.block_rows, second=self.track)
            need = slice(None)
        self.gemm_rows += m if keep is None else int(m - keep.sum())
        self.n = hi
        if self.sums is not None or keep is not None:
            s, cnt, dots = _cluster_sums(x, labels, self.k, self.c if keep is not None else None)
            if self.sums is not None:
                self.sums += s
            self.counts += cnt
            if keep is not None:  # kept rows: cosine to their (unchanged) centroid from the summing pass
                cos = dots
                if need.size:
                    cos[need] = cos_n
        else:
            self.counts += np.bincount(labels, minlength=self.k)
        self.obj += float(cos.sum(dtype=np.float64))
        if self.track:
            self._state.append((labels.astype(np.int32, copy=False), cos, upper))
        if self.r:
            pos = lowest_cosine(cos, self.r, ids)
            self.cand = _merge_candidates([self.cand, (cos[pos].astype(np.float64), ids[pos], x[pos])], self.r)

    @property
    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels int32, cosine to the own centroid float32, bound on any other centroid float32) of every row."""
        if not self._state:
            return np.empty(0, np.int32), np.empty(0, np.float32), np.empty(0, np.float32)
        return tuple(np.concatenate(parts) for parts in zip(*self._state, strict=True))  # type: ignore[return-value]


def _prune_rows(
    labels: np.ndarray, own: np.ndarray, other: np.ndarray, drift: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose nearest centroid cannot have changed since the previous step (Hamerly-style bounds).

    For unit x and centroids that moved by ``drift[j] = ||c'_j - c_j||``, ``|x·c'_j - x·c_j| <= drift[j]``. So
    the cosine to the own centroid a is at least ``own - drift[a]`` and to any other at most
    ``other + max_{j != a} drift[j]``; when the first exceeds the second by ``PRUNE_MARGIN`` (far above float32
    rounding of a d-long dot product) the argmax is still a, exactly as the full product would find it.

    Args:
        labels, own, other: the previous step's labels, cosine to the own centroid, and an upper bound on the
            cosine to any other centroid.
        drift: (k,) movement of every centroid since those were computed.

    Returns:
        ``(labels, updated other-bound, keep mask)``; rows outside the mask need the full product.
    """
    drift = np.asarray(drift, dtype=np.float32)
    j1 = int(np.argmax(drift))
    d1 = drift[j1]
    d2 = np.float32(np.max(np.delete(drift, j1))) if len(drift) > 1 else np.float32(0.0)
    low = own - drift[labels]
    up = other + np.where(labels == j1, d2, d1)
    keep = low > up + np.float32(PRUNE_MARGIN)
    return labels.astype(np.int32, copy=True), up.astype(np.float32, copy=False), keep


def _state_path(base: str, step: int) -> str:
    return f"{base}.bounds-{step}.npz"


def _load_bounds(base: str, step: int):
    """A partition's saved state after ``step``, or None when there is none (then the step does full products)."""
    try:
        with np.load(_state_path(base, step)) as z:
            return z["labels"], z["own"], z["other"]
    except (OSError, KeyError, ValueError):
        return None


def _save_bounds(base: str, step: int, state) -> None:
    """Write the state after ``step`` atomically (a retried or speculative task writes the same content) and
    remove the state of ``step - 2``: step ``step + 1`` reads ``step`` only, and a retry of ``step`` still finds
    ``step - 1``."""
    labels, own, other = state
    tmp = f"{_state_path(base, step)}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, labels=labels, own=own, other=other)
    os.replace(tmp, _state_path(base, step))
    try:
        os.remove(_state_path(base, step - 2))
    except OSError:
        pass


def _merge_candidates(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], r: int):
    """The ``r`` lowest (cosine, id) among candidate lists ``(cosines, ids, vectors)``."""
    cos = np.concatenate([p[0] for p in parts])
    ids = np.concatenate([np.asarray(p[1], dtype=object) for p in parts])
    vecs = np.concatenate([p[2] for p in parts])
    keep = lowest_cosine(cos, r, ids)
    return cos[keep], ids[keep], vecs[keep]


def _list_to_matrix(col) -> tuple[np.ndarray | None, int, int]:
    """(float32 rows or None when lengths differ, min length, max length) of an Arrow list array without nulls."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo != hi or lo == 0:
        return None, lo, hi
    values = col.flatten()
    if values.null_count:
        values = pc.fill_null(values, float("nan"))  # a null element makes its row non-finite
    x = values.to_numpy(zero_copy_only=False).reshape(len(col), lo)
    return x.astype(np.float32, copy=False), lo, hi


def _ids_numpy(arr) -> np.ndarray:
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)


def _new_stats() -> dict[str, int]:
    return {"nulls": 0, "bad": 0, "d_min": 2**31 - 1, "d_max": -1}


def _stats_problem(stats: dict[str, int], vector_col: str) -> str | None:
    if stats["nulls"]:
        return f"vector_col {vector_col!r} has {stats['nulls']} null vectors"
    if stats["d_max"] >= 0 and stats["d_min"] != stats["d_max"]:
        return f"vector_col {vector_col!r} holds vectors of different lengths ({stats['d_min']} to {stats['d_max']})"
    if stats["bad"]:
        return f"vector_col {vector_col!r} has {stats['bad']} vectors that are non-finite or all zeros"
    return None


def _vector_batches(batches, id_col: str, vector_col: str, stats: dict[str, int], hash_col: str | None = None):
    """Yield ``(ids Arrow array, unit float32 rows, int64 hashes or None)`` from input Arrow batches.

    Null, empty, non-finite and all-zero vectors are counted in ``stats`` and skipped, as are batches whose
    rows differ in length; callers turn any count into a ValueError, so no result is built from such rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    for batch in batches:
        if batch.num_rows == 0:
            continue
        col, ids = batch.column(vector_col), batch.column(id_col)
        h = batch.column(hash_col) if hash_col else None
        if col.null_count:
            valid = pc.is_valid(col)
            stats["nulls"] += col.null_count
            col, ids = col.filter(valid), ids.filter(valid)
            h = h.filter(valid) if h is not None else None
            if len(col) == 0:
                continue
        x, lo, hi = _list_to_matrix(col)
        stats["d_min"], stats["d_max"] = min(stats["d_min"], lo), max(stats["d_max"], hi)
        if x is None:
            stats["bad"] += len(col) if lo == hi else 0
            continue
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        bad = ~np.isfinite(norms) | (norms == 0)
        if bad.any():
            stats["bad"] += int(bad.sum())
            keep = np.flatnonzero(~bad)
            x, norms, ids = x[keep], norms[keep], ids.take(pa.array(keep))
            h = h.take(pa.array(keep)) if h is not None else None
        if len(x):
            hashes = h.to_numpy(zero_copy_only=False).astype(np.int64, copy=False) if h is not None else None
            yield ids, np.ascontiguousarray(x / norms[:, None].astype(np.float32), dtype=np.float32), hashes


def _keep_lowest(values: np.ndarray, m: int) -> np.ndarray:
    """The values up to the m-th smallest (all ties at the cut kept), unsorted."""
    if len(values) <= m:
        return values
    cut = np.partition(values, m - 1)[m - 1]
    return values[values <= cut]


# ----------------------------------------------------------------------------------------------------------
# where the vectors live between steps
# ----------------------------------------------------------------------------------------------------------

_STATS_FIELDS = ("nulls", "bad", "d_min", "d_max")


def _read_ipc_blocks(path: str):
    """Yield ``(ids, unit rows, hashes)`` from a staged Arrow IPC file; rows are zero-copy page-cache views."""
    import pyarrow as pa

    with pa.memory_map(path, "r") as source:
        reader = pa.ipc.open_file(source)
        for b in range(reader.num_record_batches):
            rb = reader.get_batch(b)
            vec = rb.column(1)
            x = vec.values.to_numpy(zero_copy_only=False).reshape(-1, vec.type.list_size)
            yield _ids_numpy(rb.column(0)), x, rb.column(2).to_numpy()


class _FileStore:
    """storage="files": each partition's unit vectors in one Arrow IPC file, memory-mapped by every step.

    A step then moves no vector data through Spark: each task maps its file (from the page cache after the
    first step). The folder must be readable by every executor: local mode, or a shared path such as
    ``/dbfs/...`` or ``/Volumes/...`` on Databricks. It is deleted by :meth:`close`.
    """

    kind = "files"

    def __init__(self, spark, src, id_col: str, vector_col: str, hash_col: str, sample_cap: int, root: str | None):
        import pyarrow as pa
        from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType

        base = root or tempfile.gettempdir()
        os.makedirs(base, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="prism-kmeans-", dir=base)
        self.spark = spark
        directory = self.dir
        fields = [("path", StringType(), pa.string()), ("n", LongType(), pa.int64())]
        fields += [(f, LongType(), pa.int64()) for f in _STATS_FIELDS]
        fields += [("low_h", ArrayType(LongType()), pa.list_(pa.int64()))]
        schema = StructType([StructField(name, st) for name, st, _ in fields])
        arrow_schema = pa.schema([(name, at) for name, _, at in fields])

        def write(batches):
            from pyspark import TaskContext

            ctx = TaskContext.get()
            part, attempt = (ctx.partitionId(), ctx.attemptNumber()) if ctx else (0, 0)
            path = os.path.join(directory, f"part-{part:05d}-{attempt}-{uuid.uuid4().hex[:8]}.arrow")
            stats, writer, file_schema, n, low = _new_stats(), None, None, 0, np.empty(0, dtype=np.int64)
            try:
                for ids, x, h in _vector_batches(batches, id_col, vector_col, stats, hash_col):
                    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
                    rb = pa.RecordBatch.from_arrays([ids, vec, pa.array(h)], names=["id", "vector", "h"])
                    if writer is None:
                        writer, file_schema = pa.ipc.new_file(path, rb.schema), rb.schema
                    elif not rb.schema.equals(file_schema):
                        continue  # another length: already counted in stats, the driver raises
                    writer.write_batch(rb)
                    n += len(x)
                    low = _keep_lowest(np.concatenate([low, h]), sample_cap)
            finally:
                if writer is not None:
                    writer.close()
            row = {"path": path if n else "", "n": n, **stats, "low_h": low.tolist()}
            yield pa.RecordBatch.from_pylist([row], schema=arrow_schema)

        try:
            meta = src.mapInArrow(write, schema).toArrow().to_pydict()
        except BaseException:
            self.close()
            raise
        self.stats = _sum_stats(meta)
        self.paths = [p for p, c in zip(meta["path"], meta["n"], strict=True) if c > 0]
        self.n = int(sum(meta["n"]))
        self.low_h = np.array([v for part in meta["low_h"] for v in (part or [])], dtype=np.int64)
        self.partitions = len(self.paths)

    def partials(self, fn, schema):
        """DataFrame of ``fn(blocks, path)`` over each staged file, one task per file (``path`` also names the
        file's per-step state, see :func:`_save_bounds`)."""
        paths = list(self.paths)

        def task(batches):
            for batch in batches:
                for i in batch.column(0).to_pylist():
                    yield from fn(_read_ipc_blocks(paths[i]), paths[i])

        return self.spark.range(0, len(paths), numPartitions=max(1, len(paths))).mapInArrow(task, schema)

    def collect(self, fn, schema):
        """``fn(blocks, path)`` over each staged file, collected as one Arrow table.

        With a SparkContext (classic Spark) this is an RDD job that returns the pickled record batches: about
        half the fixed cost of a DataFrame job (no SQL planning, no Arrow <-> row conversion on the way back),
        which is most of a Lloyd step once the rows are pruned. Spark Connect falls back to :meth:`partials`.
        """
        import pyarrow as pa
        from pyspark.sql.pandas.types import to_arrow_schema

        sc = _spark_context(self.spark)
        if sc is None:
            return self.partials(fn, schema).toArrow()
        paths = list(self.paths)

        def task(indexes):
            for i in indexes:
                yield from fn(_read_ipc_blocks(paths[i]), paths[i])

        batches = sc.parallelize(range(len(paths)), max(1, len(paths))).mapPartitions(task).collect()
        return pa.Table.from_batches(batches, schema=to_arrow_schema(schema))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _CacheStore:
    """storage="cache": unit vectors packed ``PACK_ROWS`` to a row (ids array, float32 bytes), persisted in Spark.

    Works on any cluster; each step ships the cached bytes to the Python workers (on the 2-core dev machine
    about 0.3-0.4 GB/s, which is why local runs default to storage="files").
    """

    kind = "cache"

    def __init__(self, spark, src, id_col: str, vector_col: str, hash_col: str, sample_cap: int, id_type):
        import pyarrow as pa
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import to_arrow_schema
        from pyspark.sql.types import ArrayType, BinaryType, IntegerType, LongType, StructField, StructType

        schema = StructType(
            [
                StructField("ids", ArrayType(id_type)),
                StructField("n", IntegerType()),
                StructField("d", IntegerType()),
                StructField("x", BinaryType()),
                StructField("h", BinaryType()),
            ]
            + [StructField(f, LongType()) for f in _STATS_FIELDS]
            + [StructField("low_h", ArrayType(LongType()))]
        )
        arrow_schema = to_arrow_schema(schema)
        id_arrow = arrow_schema.field("ids").type.value_type

        def pack(batches):
            stats, low = _new_stats(), np.empty(0, dtype=np.int64)
            for ids, x, h in _vector_batches(batches, id_col, vector_col, stats, hash_col):
                ids = ids.cast(id_arrow)
                low = _keep_lowest(np.concatenate([low, h]), sample_cap)
                for s in range(0, len(x), PACK_ROWS):
                    blk = x[s : s + PACK_ROWS]
                    ids_list = pa.ListArray.from_arrays(pa.array([0, len(blk)], pa.int32()), ids.slice(s, len(blk)))
                    cols = [
                        ids_list,
                        pa.array([len(blk)], pa.int32()),
                        pa.array([x.shape[1]], pa.int32()),
                        pa.array([blk.tobytes()], pa.binary()),
                        pa.array([h[s : s + PACK_ROWS].tobytes()], pa.binary()),
                    ]
                    clean = {"nulls": 0, "bad": 0, "d_min": x.shape[1], "d_max": x.shape[1]}
                    cols += [pa.array([clean[f]], pa.int64()) for f in _STATS_FIELDS]
                    cols += [pa.array([[]], pa.list_(pa.int64()))]
                    yield pa.RecordBatch.from_arrays(cols, schema=arrow_schema)
            row = {"ids": [], "n": 0, "d": 0, "x": b"", "h": b"", **stats, "low_h": low.tolist()}
            yield pa.RecordBatch.from_pylist([row], schema=arrow_schema)

        self.spark = spark
        # cached column batches hold rows of PACK_ROWS vectors each: keep a batch at 32 rows (~128 MiB at d=1024)
        key = "spark.sql.inMemoryColumnarStorage.batchSize"
        old = _conf_get(spark, key)
        changed = _conf_set(spark, key, "32")
        try:
            self.packed = src.mapInArrow(pack, schema).persist()
        finally:
            if changed:
                _conf_set(spark, key, old) if old is not None else _conf_unset(spark, key)
        # the first action materializes the cache; only the small per-partition stats rows come back
        try:
            meta = self.packed.where(F.col("n") == 0).select(*_STATS_FIELDS, "low_h").toArrow().to_pydict()
            self.n = int(self.packed.agg(F.sum("n")).collect()[0][0] or 0)
        except BaseException:
            self.close()
            raise
        self.stats = _sum_stats(meta)
        self.low_h = np.array([v for part in meta["low_h"] for v in (part or [])], dtype=np.int64)
        self.partitions = _num_partitions(self.packed) or 0

    def partials(self, fn, schema):
        """DataFrame of ``fn(blocks, None)`` over each cached partition (no per-step state: tasks may move)."""

        def task(batches):
            def blocks():
                for batch in batches:
                    ids_col, x_col, h_col = batch.column(0), batch.column(3), batch.column(4)
                    ns = batch.column(1).to_numpy(zero_copy_only=False)
                    ds = batch.column(2).to_numpy(zero_copy_only=False)
                    for i in range(batch.num_rows):
                        if ns[i]:
                            x = np.frombuffer(x_col[i].as_buffer(), dtype=np.float32).reshape(int(ns[i]), int(ds[i]))
                            yield _ids_numpy(ids_col[i].values), x, np.frombuffer(h_col[i].as_buffer(), np.int64)

            yield from fn(blocks(), None)

        return self.packed.select("ids", "n", "d", "x", "h").mapInArrow(task, schema)

    def collect(self, fn, schema):
        """:meth:`partials` collected as one Arrow table."""
        return self.partials(fn, schema).toArrow()

    def close(self) -> None:
        self.packed.unpersist()


def _sum_stats(meta: dict[str, list]) -> dict[str, int]:
    return {
        "nulls": int(sum(meta["nulls"])),
        "bad": int(sum(meta["bad"])),
        "d_min": int(min(meta["d_min"], default=0)),
        "d_max": int(max(meta["d_max"], default=-1)),
    }


def _conf_get(spark, key: str) -> str | None:
    try:
        return spark.conf.get(key, None)
    except Exception:  # noqa: BLE001 - a session that does not expose the key
        return None


def _conf_set(spark, key: str, value: str) -> bool:
    try:
        spark.conf.set(key, value)
        return True
    except Exception:  # noqa: BLE001 - not settable here: keep the session's value
        return False


def _conf_unset(spark, key: str) -> None:
    try:
        spark.conf.unset(key)
    except Exception:  # noqa: BLE001
        pass


# ----------------------------------------------------------------------------------------------------------
# partial rows and their reduction
# ----------------------------------------------------------------------------------------------------------


def _partial_schema(id_type):
    from pyspark.sql.types import ArrayType, BinaryType, DoubleType, IntegerType, LongType, StructField, StructType

    return StructType(
        [
            StructField("block", IntegerType()),  # -1: objective, n, candidates (and all k clusters for reduce=driver)
            StructField("part", LongType()),
            StructField("counts", BinaryType()),  # int64
            StructField("sums", BinaryType()),  # float64, row-major (clusters in the block, d)
            StructField("obj", DoubleType()),
            StructField("n", LongType()),
            StructField("gemm", LongType()),  # rows that needed the k-wide product (the rest were pruned)
            StructField("cand_cos", ArrayType(DoubleType())),
            StructField("cand_ids", ArrayType(id_type)),
            StructField("cand_vecs", BinaryType()),  # float32 (candidates, d)
        ]
    )


def _head_row(part: int, obj: float, n: int, gemm: int, cand, counts: bytes = b"", sums: bytes = b"") -> dict:
    cos, ids, vecs = cand
    return {
        "block": -1, "part": part, "counts": counts, "sums": sums, "obj": obj, "n": n, "gemm": gemm,
        "cand_cos": cos.tolist(), "cand_ids": list(ids.tolist()),
        "cand_vecs": np.ascontiguousarray(vecs, dtype=np.float32).tobytes(),
    }  # fmt: skip


def _block_row(block: int, part: int, counts: np.ndarray, sums: np.ndarray | None) -> dict:
    return {
        "block": block, "part": part, "counts": counts.tobytes(), "sums": b"" if sums is None else sums.tobytes(),
        "obj": 0.0, "n": 0, "gemm": 0, "cand_cos": [], "cand_ids": [], "cand_vecs": b"",
    }  # fmt: skip


def _partial_batch(p: _Partial, part: int, block_clusters: int | None, arrow_schema):
    """One partition's partials: a single row (reduce=driver) or a head row plus one row per cluster block."""
    import pyarrow as pa

    if block_clusters is None:
        sums = p.sums.tobytes() if p.sums is not None else b""
        rows = [_head_row(part, p.obj, p.n, p.gemm_rows, p.cand, p.counts.tobytes(), sums)]
    else:
        rows = [_head_row(part, p.obj, p.n, p.gemm_rows, p.cand)]
        for b, lo in enumerate(range(0, p.k, block_clusters)):
            cnt = p.counts[lo : lo + block_clusters]
            if cnt.any():  # blocks without points send nothing
                rows.append(_block_row(b, part, cnt, None if p.sums is None else p.sums[lo : lo + block_clusters]))
    return pa.RecordBatch.from_pylist(rows, schema=arrow_schema)


def _candidates_of(rows: dict[str, list], i: int, d: int):
    cos = np.asarray(rows["cand_cos"][i] or [], dtype=np.float64)
    ids = np.empty(len(cos), dtype=object)
    ids[:] = rows["cand_ids"][i] or []
    vecs = np.frombuffer(rows["cand_vecs"][i] or b"", dtype=np.float32).reshape(len(cos), d)
    return cos, ids, vecs


def _reduce_partials(table, k: int, d: int, r: int, with_sums: bool, block_clusters: int | None):
    """Driver side: add the partial rows, in (block, partition) order so the float64 sums are deterministic.

    Returns:
        ``(counts, sums or None, objective, n, (cand cosines, cand ids, cand vectors), rows through the k-wide
        product)``.
    """
    rows = table.to_pydict()
    counts = np.zeros(k, dtype=np.int64)
    sums = np.zeros((k, d), dtype=np.float64) if with_sums else None
    obj, n, gemm = 0.0, 0, 0
    cands = [(np.empty(0), np.empty(0, dtype=object), np.empty((0, d), dtype=np.float32))]
    for i in sorted(range(table.num_rows), key=lambda i: (rows["block"][i], rows["part"][i])):
        block = rows["block"][i]
        if block < 0:
            obj += rows["obj"][i]
            n += rows["n"][i]
            gemm += rows["gemm"][i] or 0
            cands.append(_candidates_of(rows, i, d))
            lo, hi = 0, k
        else:
            lo, hi = block * block_clusters, min(k, (block + 1) * block_clusters)
        if rows["counts"][i]:
            counts[lo:hi] += np.frombuffer(rows["counts"][i], dtype=np.int64)
        if with_sums and rows["sums"][i]:
            sums[lo:hi] += np.frombuffer(rows["sums"][i], dtype=np.float64).reshape(hi - lo, d)
    return counts, sums, obj, n, _merge_candidates(cands, r), gemm


def _shuffle_combiner(block_clusters: int, k: int, d: int, r: int, arrow_schema):
    """``applyInArrow`` function: add one group's partial rows across partitions (in partition order)."""

    def combine(table):
        import pyarrow as pa

        rows = table.to_pydict()
        order = sorted(range(table.num_rows), key=lambda i: rows["part"][i])
        block = rows["block"][order[0]]
        if block < 0:
            cands = [_candidates_of(rows, i, d) for i in order]
            obj = sum(rows["obj"][i] for i in order)
            n = sum(rows["n"][i] for i in order)
            gemm = sum(rows["gemm"][i] for i in order)
            out = _head_row(0, obj, n, gemm, _merge_candidates(cands, r))
        else:
            width = min(k, (block + 1) * block_clusters) - block * block_clusters
            counts = np.zeros(width, dtype=np.int64)
            sums = None
            for i in order:
                counts += np.frombuffer(rows["counts"][i], dtype=np.int64)
                if rows["sums"][i]:
                    s = np.frombuffer(rows["sums"][i], dtype=np.float64).reshape(width, d)
                    sums = s.copy() if sums is None else sums + s
            out = _block_row(block, 0, counts, sums)
        return pa.Table.from_pylist([out], schema=arrow_schema)

    return combine


class _Runner:
    """Runs one Lloyd step as one Spark job over a store, with the chosen reduce.

    With ``prune`` and a store that keeps per-partition state (storage="files"), every step saves each row's
    label and cosine bounds next to the staged file, and the next step skips the k-wide product for rows
    whose bounds prove the label unchanged (:func:`_prune_rows`): the same labels as full products, less work
    once centroids settle. ``gemm_rows`` counts the rows that needed the product in the last step.
    """

    def __init__(
        self,
        store,
        k: int,
        d: int,
        id_type,
        reseed_pool: int,
        block_rows: int | None,
        reduce: str,
        prune: bool,
        index: _IndexCache | None = None,
    ):
        from pyspark.sql.pandas.types import to_arrow_schema

        self.store, self.k, self.d, self.r = store, k, d, reseed_pool
        self.block_rows = block_rows
        self.schema = _partial_schema(id_type)
        self.arrow_schema = to_arrow_schema(self.schema)
        self.block_clusters = SHUFFLE_BLOCK_CLUSTERS if reduce == "shuffle" else None
        self.index = index  # two-level: the coarse index of each step's centroids (built on the driver)
        self.prune = bool(prune) and store.kind == "files" and index is None
        self.steps_run = 0
        self.prev: np.ndarray | None = None  # centroids of the last step (its state is on disk)
        self.gemm_rows = 0
        self.gemm_history: list[int] = []  # gemm_rows of every Lloyd step (not the final pass)

    def step(self, centroids: np.ndarray, with_sums: bool = True):
        """Partials of every partition under ``centroids``, reduced: see :func:`_reduce_partials`."""
        c = np.ascontiguousarray(centroids, dtype=np.float32)  # shipped in the closure (broadcast when > 1 MB)
        r, block_rows, block_clusters, arrow_schema = self.r, self.block_rows, self.block_clusters, self.arrow_schema
        step, prune = self.steps_run, self.prune
        index = self.index.get(c) if self.index is not None else None
        drift = None
        if prune and self.prev is not None:
            diff = c.astype(np.float64) - self.prev.astype(np.float64)
            drift = np.sqrt(np.einsum("ij,ij->i", diff, diff)).astype(np.float32)

        def fn(blocks, path):
            from pyspark import TaskContext

            ctx = TaskContext.get()
            track = prune and path is not None
            bounds = _load_bounds(path, step - 1) if track and drift is not None else None
            p = _Partial(c, r, with_sums, block_rows, bounds, drift, track, index)
            for ids, x, _ in blocks:
                p.add(ids, x)
            if track:
                _save_bounds(path, step, p.state)
            yield _partial_batch(p, ctx.partitionId() if ctx else 0, block_clusters, arrow_schema)

        if block_clusters is not None:
            combine = _shuffle_combiner(block_clusters, self.k, self.d, self.r, self.arrow_schema)
            table = self.store.partials(fn, self.schema).groupBy("block").applyInArrow(combine, self.schema).toArrow()
        else:
            table = self.store.collect(fn, self.schema)
        *out, self.gemm_rows = _reduce_partials(table, self.k, self.d, self.r, with_sums, block_clusters)
        self.steps_run += 1
        self.prev = c
        return tuple(out)

    def lloyd_partials(self, centroids: np.ndarray):
        """One Lloyd step for :func:`lloyd_iterations`: ``(objective, sums, counts, re-seed vectors)``."""
        counts, sums, obj, seen, (_, _, cand_vecs) = self.step(centroids)
        if seen != self.store.n:
            raise RuntimeError(f"a k-means step saw {seen} rows, expected {self.store.n}: the staged vectors changed")
        self.gemm_history.append(self.gemm_rows)
        return obj, sums, counts, cand_vecs

    def log_step(self, step: int, obj: float, reseeded: int, moved: float) -> None:
        log.info(
            "k-means step %d: objective %.6f, %d re-seeded, max shift %.3g, %d of %d rows through the k-wide "
            "product", step, obj, reseeded, moved, self.gemm_rows, self.store.n,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# public Spark API
# ----------------------------------------------------------------------------------------------------------


@dataclass
class KMeansResult:
    """Outcome of :func:`spherical_kmeans`.

    Attributes:
        method: ``"blocked"`` (ours) or ``"mllib"``.
        k: clusters. n: rows clustered. d: dimension. seed: the seed used.
        centroids: float32 (k, d) unit centroids.
        sizes: int64 (k,) points per cluster under the final centroids.
        objective: sum of cosines to the nearest final centroid (float64).
        history: objective under the centroids entering each Lloyd step (empty for MLlib).
        iterations: Lloyd steps run.
        converged: True when the loop stopped early because the centroids stopped moving.
        reseeded: empty clusters re-seeded, summed over steps.
        init_centroids: starting centroids (None for MLlib).
        assignments: lazy DataFrame ``(<id_col>, cluster_id int, cosine float)`` over the input DataFrame.
        seconds: wall time per phase (prepare, init, steps, final, total; fit for MLlib).
        storage: ``files`` / ``cache`` (``mllib`` for MLlib). reduce: ``driver`` / ``shuffle``.
        partitions: tasks per step.
        gemm_rows: per Lloyd step, rows that went through the k-wide product (n without pruning).
        bytes_per_step: ``broadcast`` (k·d·4), ``partials_per_partition`` and ``partials_to_driver``.
        assign: ``flat`` or ``two_level`` (``cluster.assign``; two-level also assigns ``assignments``).
    """

    method: str
    k: int
    n: int
    d: int
    seed: int
    centroids: np.ndarray
    sizes: np.ndarray
    objective: float
    history: list[float]
    iterations: int
    converged: bool
    reseeded: int
    init_centroids: np.ndarray | None
    assignments: Any
    seconds: dict[str, float] = field(default_factory=dict)
    storage: str = ""
    reduce: str = ""
    partitions: int = 0
    bytes_per_step: dict[str, int] = field(default_factory=dict)
    spark: Any = field(default=None, repr=False)
    gemm_rows: list[int] = field(default_factory=list)
    assign: str = "flat"

    def clusters_arrow(self):
        """``clusters`` rows as a pyarrow Table: cluster_id int32, centroid list<float32>, size int64."""
        import pyarrow as pa

        flat = pa.array(np.ascontiguousarray(self.centroids, dtype=np.float32).reshape(-1))
        offsets = pa.array(np.arange(0, (self.k + 1) * self.d, self.d, dtype=np.int32))
        return pa.table(
            {
                "cluster_id": pa.array(np.arange(self.k, dtype=np.int32)),
                "centroid": pa.ListArray.from_arrays(offsets, flat),
                "size": pa.array(np.asarray(self.sizes, dtype=np.int64)),
            }
        )

    @property
    def clusters(self):
        """``clusters`` rows as a Spark DataFrame: cluster_id int, centroid array<float>, size bigint."""
        return self.spark.createDataFrame(
            self.clusters_arrow().to_pandas(), "cluster_id int, centroid array<float>, size bigint"
        )

    def sparse_cluster_ids(self, quantile: float = 0.5) -> np.ndarray:
        """:func:`sparse_clusters` of this result's sizes."""
        return sparse_clusters(self.sizes, quantile)


def _spark_master(spark) -> str:
    return _conf_get(spark, "spark.master") or ""


def _spark_context(spark):
    """The session's SparkContext, or None on Spark Connect (no RDD API there)."""
    try:
        return spark.sparkContext
    except Exception:  # noqa: BLE001 - Spark Connect raises here
        return None


def _default_parallelism(spark) -> int | None:
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        return None


def _num_partitions(df) -> int | None:
    try:
        return int(df.rdd.getNumPartitions())
    except Exception:  # noqa: BLE001 - Spark Connect has no RDD API
        return None


def _check_columns(df, vector_col: str, id_col: str):
    """Validate the two columns; return the Spark type of the id column."""
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, MapType, StructType

    fields = {f.name: f for f in df.schema.fields}
    for arg, col in (("vector_col", vector_col), ("id_col", id_col)):
        if col not in fields:
            raise ValueError(f"{arg} = {col!r} is not a column of the DataFrame (columns: {sorted(fields)})")
    if vector_col == id_col:
        raise ValueError(f"vector_col and id_col must differ, both are {id_col!r}")
    vt = fields[vector_col].dataType
    if not (isinstance(vt, ArrayType) and isinstance(vt.elementType, (FloatType, DoubleType))):
        raise ValueError(f"vector_col {vector_col!r} must be array<float> or array<double>, got {vt.simpleString()}")
    it = fields[id_col].dataType
    if isinstance(it, (ArrayType, MapType, StructType)):
        raise ValueError(f"id_col {id_col!r} must be an atomic type (string, long, ...), got {it.simpleString()}")
    return it


def assign_spark(
    df, centroids: Any, vector_col: str = "vector", id_col: str = "sample_id", index: CoarseIndex | None = None
):
    """Lazy DataFrame ``(<id_col>, cluster_id int, cosine float)``: nearest centroid by cosine for every row.

    Vectors are normalized; a null, non-finite, all-zero or wrong-length vector fails the job with a
    ValueError naming the column.

    Args:
        df: DataFrame with ``id_col`` and ``vector_col`` (array<float> or array<double>).
        centroids: (k, d) centroids (normalized here), e.g. ``KMeansResult.centroids``.
        vector_col: vector column.
        id_col: id column, copied to the output.
        index: assign through this :class:`CoarseIndex` of ``centroids`` (two-level) instead of every centroid.
    """
    import pyarrow as pa
    from pyspark.sql.types import FloatType, IntegerType, StructField, StructType

    id_type = _check_columns(df, vector_col, id_col)
    c = normalize_rows(centroids, name="centroids")
    d = c.shape[1]
    schema = StructType(
        [StructField(id_col, id_type), StructField("cluster_id", IntegerType()), StructField("cosine", FloatType())]
    )

    def fn(batches):
        stats = _new_stats()
        for ids, x, _ in _vector_batches(batches, id_col, vector_col, stats):
            problem = _stats_problem(stats, vector_col)
            if problem is None and x.shape[1] != d:
                problem = f"vector_col {vector_col!r} has d = {x.shape[1]} but the centroids have d = {d}"
            if problem:
                raise ValueError(problem)
            labels, cos = assign_blocked(x, c) if index is None else _assign_two_level(x, c, index)
            cols = [ids, pa.array(labels), pa.array(cos)]
            yield pa.RecordBatch.from_arrays(cols, names=[id_col, "cluster_id", "cosine"])
        problem = _stats_problem(stats, vector_col)
        if problem:
            raise ValueError(problem)

    return df.select(id_col, vector_col).mapInArrow(fn, schema)


def _sample_from_store(store, m: int, id_type) -> np.ndarray:
    """The m staged rows with the smallest ``(xxhash64(id, seed), id)``, in that order: one Spark job.

    Staging kept each partition's smallest hashes, so the driver knows the m-th smallest hash ``t`` overall;
    every task returns its rows with hash <= t (m of them, more only on 64-bit hash ties). The result is the
    same for any partitioning or storage.
    """
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import ArrayType, BinaryType, IntegerType, LongType, StructField, StructType

    t = int(np.partition(store.low_h, m - 1)[m - 1])
    schema = StructType(
        [
            StructField("ids", ArrayType(id_type)),
            StructField("h", ArrayType(LongType())),
            StructField("d", IntegerType()),
            StructField("x", BinaryType()),
        ]
    )
    arrow_schema = to_arrow_schema(schema)

    def fn(blocks, _path):
        ids_out, h_out, x_out, d = [], [], [], 0
        for ids, x, h in blocks:
            sel = np.flatnonzero(h <= t)
            if len(sel):
                ids_out.extend(ids[sel].tolist())
                h_out.extend(h[sel].tolist())
                x_out.append(np.ascontiguousarray(x[sel]))
                d = x.shape[1]
        data = np.concatenate(x_out).tobytes() if x_out else b""
        yield pa.RecordBatch.from_pylist([{"ids": ids_out, "h": h_out, "d": d, "x": data}], schema=arrow_schema)

    rows = store.collect(fn, schema).to_pylist()
    keys, vecs = [], []
    for row in rows:
        if row["ids"]:
            x = np.frombuffer(row["x"], dtype=np.float32).reshape(len(row["ids"]), row["d"])
            keys.extend(zip(row["h"], row["ids"], strict=True))
            vecs.append(x)
    x = np.concatenate(vecs)
    order = sorted(range(len(keys)), key=lambda i: keys[i])[:m]
    return np.ascontiguousarray(x[order])


def _fit_mllib(df, vector_col: str, k: int, iterations: int, seed: int, tol: float | None):
    """Centroids from ``pyspark.ml.clustering.KMeans(distanceMeasure="cosine")`` (k-means|| init, seeded)."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    feats = df.select(array_to_vector(F.col(vector_col)).alias("features"))
    km = KMeans(
        k=k,
        seed=int(seed),
        maxIter=max(1, int(iterations)),
        distanceMeasure="cosine",
        featuresCol="features",
        tol=float(tol) if tol is not None else 0.0,
    )
    model = km.fit(feats)
    centers = np.array([np.asarray(c, dtype=np.float64) for c in model.clusterCenters()])
    try:
        steps = int(model.summary.numIter)
    except Exception:  # noqa: BLE001 - no summary on some back ends
        steps = iterations
    return normalize_rows(centers, name="MLlib centroids"), steps


def _final_from_assignments(assignments, k: int) -> tuple[np.ndarray, float, int]:
    from pyspark.sql import functions as F

    agg = assignments.groupBy("cluster_id").agg(F.count("*").alias("size"), F.sum("cosine").alias("obj"))
    sizes = np.zeros(k, dtype=np.int64)
    obj = 0.0
    for row in sorted(agg.collect(), key=lambda r: r["cluster_id"]):
        sizes[row["cluster_id"]] = row["size"]
        obj += float(row["obj"])
    return sizes, obj, int(sizes.sum())


class _Laps:
    """Wall seconds per phase: ``lap(name)`` records the time since the previous lap (or the start)."""

    def __init__(self) -> None:
        self.start = self.tick = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.tick
        self.tick = now

    def done(self) -> dict[str, float]:
        self.seconds["total"] = time.perf_counter() - self.start
        return self.seconds


def _resolve_config(cfg: ClusterConfig | None) -> ClusterConfig:
    if cfg is None:
        from prismatic.config import ClusterConfig

        return ClusterConfig()
    return cfg


def _check_inputs(df, k: int, cfg: ClusterConfig, vector_col: str, id_col: str):
    """Validate k against the config and the two columns; return the Spark type of the id column.

    The config is validated when it is built; these checks also hold for one built with ``model_copy``.
    """
    for arg, value, allowed in (
        ("method", cfg.method, ("blocked", "mllib")),
        ("init", cfg.init, ("kmeans++", "sample")),
        ("storage", cfg.storage, ("auto", "files", "cache")),
        ("reduce", cfg.reduce, ("auto", "driver", "shuffle")),
        ("assign", cfg.assign, ("auto", "flat", "two_level")),
    ):
        if value not in allowed:
            raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")
    if cfg.num_partitions is not None and cfg.num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {cfg.num_partitions}")
    if cfg.init_sample is not None and cfg.init_sample < k:
        raise ValueError(f"init_sample must be >= k = {k}, got {cfg.init_sample}")
    _check_common(k, cfg.iterations, cfg.tol, cfg.reseed_pool)
    _block_rows(k, cfg.block_rows)
    return _check_columns(df, vector_col, id_col)


def _sample_cap(cfg: ClusterConfig, k: int) -> int:
    """Rows the init sample may hold: ``init_sample``, else :func:`default_init_sample` before n is known."""
    return int(cfg.init_sample) if cfg.init_sample is not None else default_init_sample(2**62, k)


def _stage_vectors(df, k: int, cfg: ClusterConfig, vector_col: str, id_col: str, id_type):
    """Validate, normalize and stage the vectors once, with their seeded init hash: a ``_FileStore`` or a
    ``_CacheStore`` (``storage="auto"``: files when the master is ``local[...]``)."""
    from pyspark.sql import functions as F

    spark = df.sparkSession
    hash_col = "__prism_init_hash"
    src = df.select(id_col, vector_col, F.xxhash64(F.col(id_col), F.lit(int(cfg.seed))).alias(hash_col))
    sample_cap = _sample_cap(cfg, k)
    current = _num_partitions(src)
    target = cfg.num_partitions if cfg.num_partitions is not None else _default_parallelism(spark)
    if target is not None and current is not None and current > target:
        src = src.coalesce(target)
    elif cfg.num_partitions is not None and current != cfg.num_partitions:
        src = src.repartition(cfg.num_partitions)
    storage = cfg.storage
    if storage == "auto":
        storage = "files" if _spark_master(spark).startswith("local") else "cache"
    if storage == "files":
        return _FileStore(spark, src, id_col, vector_col, hash_col, sample_cap, cfg.staging_dir)
    return _CacheStore(spark, src, id_col, vector_col, hash_col, sample_cap, id_type)


def _staged_shape(store, k: int, vector_col: str) -> tuple[int, int]:
    """(n, d) of the staged vectors; ValueError for bad vectors, no rows, or k > n."""
    problem = _stats_problem(store.stats, vector_col)
    if problem:
        raise ValueError(problem)
    if store.n == 0:
        raise ValueError("the DataFrame has no rows to cluster")
    if k > store.n:
        raise ValueError(f"k = {k} exceeds the number of rows n = {store.n}")
    return store.n, store.stats["d_max"]


def _pick_reduce(reduce: str, partitions: int, k: int, d: int) -> str:
    """``"auto"``: shuffle when the driver would receive more than ``DRIVER_REDUCE_LIMIT_BYTES`` per step."""
    if reduce != "auto":
        return reduce
    return "shuffle" if partitions * k * (d + 1) * 8 > DRIVER_REDUCE_LIMIT_BYTES else "driver"


def _start_centroids(store, k: int, d: int, cfg: ClusterConfig, initial: np.ndarray | None, id_type) -> np.ndarray:
    """``initial`` (checked against (k, d)) or the seeded init on the driver sample (:func:`_sample_from_store`)."""
    if initial is not None:
        if initial.shape != (k, d):
            raise ValueError(f"initial must have shape ({k}, {d}), got {initial.shape}")
        return initial
    sample = _sample_from_store(store, min(_sample_cap(cfg, k), store.n), id_type)
    return init_centroids(sample, k, cfg.seed, cfg.init)


def _index_cache(cfg: ClusterConfig, k: int) -> _IndexCache | None:
    """The two-level index builder when ``cfg.assign`` picks two-level at this k (None: flat products)."""
    if not use_two_level(cfg.assign, k):
        return None
    return _IndexCache(cfg.k_coarse, cfg.nprobe, cfg.seed)


def _bytes_per_step(k: int, d: int, partitions: int, reduce: str, reseed_pool: int) -> dict[str, int]:
    return {
        "broadcast": k * d * 4,
        "partials_per_partition": k * (d + 1) * 8 + reseed_pool * (d * 4 + 16),
        "partials_to_driver": (partitions if reduce == "driver" else 1) * k * (d + 1) * 8,
    }


def spherical_kmeans(
    df,
    k: int,
    cfg: ClusterConfig | None = None,
    *,
    vector_col: str = "vector",
    id_col: str = "sample_id",
    initial: Any = None,
    prune: bool = True,
) -> KMeansResult:
    """Distributed spherical k-means over a DataFrame of vectors, configured by a ``ClusterConfig``.

    Each Lloyd step is one Spark job: the centroids (k·d float32) go out with the task closure, every partition
    assigns its rows by a blocked float32 matrix product and returns one row of partials (float64 per-cluster
    sums, counts, objective and its ``reseed_pool`` points farthest from their centroid); the driver adds them
    and runs the same :func:`lloyd_iterations` as :func:`lloyd`, so both give the same labels from the same init.

    Phases (``KMeansResult.seconds``): prepare (stage the vectors: ``storage="files"``, one Arrow IPC file per
    partition under ``staging_dir``, memory-mapped by every step; ``"cache"``, packed rows in Spark's cache),
    init (the ``init_sample`` rows with the smallest ``xxhash64(id, seed)`` come to the driver, which runs
    ``init``; independent of partitioning), steps, final (sizes and objective under the final centroids).
    ``reduce="shuffle"`` adds partials per block of ``SHUFFLE_BLOCK_CLUSTERS`` clusters on the executors
    (``"auto"``: when the driver would receive over 512 MiB per step). ``assignments`` is a lazy DataFrame over
    ``df``, which should therefore be a table read or persisted.

    Args:
        df: DataFrame with ``id_col`` (unique, atomic type) and ``vector_col`` (array<float> or array<double>;
            rows are normalized; null, non-finite, all-zero or wrong-length vectors raise ValueError).
        k: number of clusters, 1 <= k <= number of rows (see :func:`choose_k`).
        cfg: the ``cluster`` settings (default ``ClusterConfig()``): iterations, seed, init, init_sample, tol,
            storage, staging_dir, reduce, num_partitions, reseed_pool, block_rows; ``method="mllib"`` runs
            :func:`mllib_kmeans` instead.
        vector_col: vector column.
        id_col: id column; also breaks ties in the re-seed order.
        initial: (k, d) starting centroids; skips the init.
        prune: storage="files" only: keep each row's label and cosine bounds between steps and skip the k-wide
            product for rows whose bounds prove the label unchanged (see :func:`_prune_rows`); the labels are
            those of full products. ``KMeansResult.gemm_rows`` shows the effect.

    Raises:
        ValueError: a bad argument or bad vectors (named in the message).
    """
    cfg = _resolve_config(cfg)
    if cfg.method == "mllib":
        return mllib_kmeans(df, k, cfg, vector_col=vector_col, id_col=id_col)
    laps = _Laps()
    id_type = _check_inputs(df, k, cfg, vector_col, id_col)
    if initial is not None:
        initial = normalize_rows(initial, name="initial")
        if initial.shape[0] != k:
            raise ValueError(f"initial has {initial.shape[0]} rows but k = {k}")
    store = _stage_vectors(df, k, cfg, vector_col, id_col, id_type)
    try:
        n, d = _staged_shape(store, k, vector_col)
        reduce = _pick_reduce(cfg.reduce, store.partitions, k, d)
        laps.lap("prepare")
        start = _start_centroids(store, k, d, cfg, initial, id_type)
        laps.lap("init")
        cache = _index_cache(cfg, k)
        runner = _Runner(store, k, d, id_type, cfg.reseed_pool, cfg.block_rows, reduce, prune, cache)
        loop = lloyd_iterations(start.copy(), cfg.iterations, cfg.tol, runner.lloyd_partials, runner.log_step)
        laps.lap("steps")
        sizes, _, obj, _, _ = runner.step(loop.centroids, with_sums=False)
        laps.lap("final")
    finally:
        store.close()
    c = loop.centroids
    index = cache.get(c) if cache is not None else None
    return KMeansResult(
        method="blocked", k=k, n=n, d=d, seed=cfg.seed, centroids=c, sizes=sizes, objective=obj,
        history=loop.history, iterations=loop.steps, converged=loop.converged, reseeded=loop.reseeded,
        init_centroids=start, assignments=assign_spark(df, c, vector_col, id_col, index),
        gemm_rows=runner.gemm_history, seconds=laps.done(), storage=store.kind, reduce=reduce,
        partitions=store.partitions, assign="two_level" if index is not None else "flat",
        bytes_per_step=_bytes_per_step(k, d, store.partitions, reduce, cfg.reseed_pool), spark=df.sparkSession,
    )  # fmt: skip


def mllib_kmeans(
    df, k: int, cfg: ClusterConfig | None = None, *, vector_col: str = "vector", id_col: str = "sample_id"
) -> KMeansResult:
    """The reference: ``pyspark.ml.clustering.KMeans(distanceMeasure="cosine")`` with its k-means|| init.

    Uses ``cfg.iterations``, ``cfg.seed`` and ``cfg.tol``; sizes, objective and assignments come from the same
    final pass as :func:`spherical_kmeans` (:func:`assign_spark`), so the objectives compare directly.
    """
    cfg = _resolve_config(cfg)
    laps = _Laps()
    _check_inputs(df, k, cfg, vector_col, id_col)
    src = df.select(id_col, vector_col)
    n = src.count()
    if k > n:
        raise ValueError(f"k = {k} exceeds the number of rows n = {n}")
    centroids, steps = _fit_mllib(src, vector_col, k, cfg.iterations, cfg.seed, cfg.tol)
    laps.lap("fit")
    assignments = assign_spark(df, centroids, vector_col, id_col)
    sizes, obj, _ = _final_from_assignments(assignments, k)
    laps.lap("final")
    d = centroids.shape[1]
    return KMeansResult(
        method="mllib", k=k, n=n, d=d, seed=cfg.seed, centroids=centroids, sizes=sizes, objective=obj,
        history=[], iterations=steps, converged=steps < cfg.iterations, reseeded=0, init_centroids=None,
        assignments=assignments, seconds=laps.done(), storage="mllib", reduce="mllib",
        partitions=_num_partitions(src) or 0, bytes_per_step={"broadcast": k * d * 8}, spark=df.sparkSession,
    )  # fmt: skip


def cluster_pool(
    df, cfg: ClusterConfig, vector_col: str = "vector", id_col: str = "sample_id", n: int | None = None
) -> KMeansResult:
    """Cluster a pool with a :class:`prismatic.config.ClusterConfig`: ``k = choose_k(n, k_fraction, k_min)``.

    Args:
        df: the pool's vectors (one spec_id).
        cfg: the ``cluster`` section of the settings (``method`` picks ours or the MLlib reference).
        vector_col: vector column.
        id_col: id column.
        n: rows in ``df`` when already known (else counted).
    """
    if n is None:
        n = df.count()
    return spherical_kmeans(df, choose_k(n, cfg.k_fraction, cfg.k_min), cfg, vector_col=vector_col, id_col=id_col)
