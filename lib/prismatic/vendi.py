"""G-Vendi, Vendi scores of order q and text-diversity baselines, in pure numpy.

The Vendi score of a set of N samples with a similarity kernel K (K_ii = 1) is the exponential of the Shannon
entropy of the eigenvalues of K / N (Friedman & Dieng, "The Vendi Score", https://arxiv.org/abs/2210.02410):

    VS(K) = exp(-Σ_i λ_i log λ_i),   λ = eig(K / N),   0 log 0 = 0.

With the cosine kernel K = X Xᵀ of unit rows x_i ∈ R^d, the nonzero eigenvalues of K / N are those of the d × d
covariance Σ = (1/N) Σ_i x_i x_iᵀ = Xᵀ X / N, so the score needs only the sums S = Σ_i x_i x_iᵀ and the count N:
O(N d²) time and O(d²) memory, additive over any split of the rows. G-Vendi (Jung et al., "Prismatic Synthesis",
https://arxiv.org/abs/2505.20161) is this score where x_i is the unit-normalized projected gradient of sample i:

    G-Vendi = exp(-Σ_j λ_j log λ_j),   λ = eig(Σ),   Σ = (1/N) Σ_i g_i g_iᵀ,   ‖g_i‖ = 1,
    1 ≤ G-Vendi ≤ min(N, d).

The order-q generalisation (Pasarkar & Dieng, https://arxiv.org/abs/2310.12952) is the exponential of the Rényi
entropy of the same eigenvalues:

    VS_q = (Σ_j λ_j^q)^(1 / (1 - q))   (q ∉ {1, ∞}),   VS_1 = VS,   VS_∞ = 1 / max_j λ_j.

Names follow the paper's notation as the reference implementation (vertaix/Vendi-Score) does: ``score_K`` (from a
kernel), ``score_X`` (from vectors, N × N form), ``score_dual`` (from vectors, d × d form), ``entropy_q``. This module
has its own implementation; it imports only numpy.

Baselines: n-gram entropy and distinct-n of a set of texts, and the mean pairwise cosine similarity of unit vectors
(computable from Σ x_i and N alone).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CovarianceSums",
    "distinct_n",
    "eigenvalues_from_sums",
    "entropy_from_counts",
    "entropy_q",
    "g_vendi",
    "mean_pairwise_cosine",
    "mean_pairwise_cosine_from_sums",
    "ngram_counts",
    "ngram_entropy",
    "ngrams",
    "normalize_q",
    "score_K",
    "score_X",
    "score_dual",
    "score_sums",
    "spectrum",
    "tokenize",
    "unit_rows",
    "vendi_from_eigenvalues",
]

QLike = float | int | str


# ---------------------------------------------------------------------------------------------------------------------
# entropy of a spectrum


def normalize_q(q: QLike) -> float:
    """Return the order ``q`` as a float (``math.inf`` for ``"inf"``), or raise ValueError.

    Args:
        q: a number ≥ 0, ``math.inf``, or the string ``"inf"`` (as the reference implementation accepts).
    """
    if isinstance(q, str):
        if q.strip().lower() in ("inf", "+inf", "infinity"):
            return math.inf
        raise ValueError(f"order q must be a number >= 0 or 'inf', got {q=}")
    if isinstance(q, bool) or not isinstance(q, int | float | np.integer | np.floating):
        raise ValueError(f"order q must be a number >= 0 or 'inf', got {q=}")
    qf = float(q)
    if math.isnan(qf) or qf < 0:
        raise ValueError(f"order q must be a number >= 0 or 'inf', got {q=}")
    return qf


def spectrum(eigenvalues: np.ndarray | Sequence[float], size: int | None = None) -> np.ndarray:
    """Clean a symmetric PSD matrix's eigenvalues into a probability vector.

    Negative eigenvalues are round-off and are set to 0, as are positive ones below the numerical-rank tolerance
    ``max λ · size · eps`` (the tolerance ``numpy.linalg.matrix_rank`` uses); the rest are divided by their sum, so
    that a covariance of rows that are unit only up to float32 round-off still yields a distribution.

    Args:
        eigenvalues: eigenvalues of Σ (d × d) or of K / N (N × N).
        size: the matrix order used for the tolerance; defaults to ``len(eigenvalues)``.

    Returns:
        float64 array of the same length, ≥ 0, summing to 1.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if lam.size == 0:
        raise ValueError("no eigenvalues: the matrix is empty")
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues hold NaN or inf; the input vectors or sums are not finite")
    top = lam.max()
    if top <= 0:
        raise ValueError("all eigenvalues are <= 0: the covariance is zero (no nonzero vectors)")
    tol = top * (size or lam.size) * np.finfo(np.float64).eps
    lam = np.where(lam > tol, lam, 0.0)
    return lam / lam.sum()


def entropy_q(p: np.ndarray | Sequence[float], q: QLike = 1.0) -> float:
    """Rényi entropy of order q of a probability vector, in nats (Shannon entropy at q = 1).

    H_1(p) = -Σ p_i log p_i with 0 log 0 = 0; H_q(p) = log(Σ p_i^q) / (1 - q); H_∞(p) = -log max p_i. Only the
    support (p_i > 0) enters, so H_0 is the log of the number of nonzero entries.

    Args:
        p: nonnegative entries summing to 1.
        q: order, ≥ 0 or ``"inf"``.
    """
    q = normalize_q(q)
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.size == 0 or np.any(p < 0) or not np.all(np.isfinite(p)):
        raise ValueError("p must be a nonempty vector of finite nonnegative numbers")
    if abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"p must sum to 1, sums to {p.sum()!r}")
    p = p[p > 0]
    if q == 1.0:
        return float(-(p * np.log(p)).sum())
    if math.isinf(q):
        return float(-np.log(p.max()))
    return float(np.log((p**q).sum()) / (1.0 - q))


def vendi_from_eigenvalues(
    eigenvalues: np.ndarray | Sequence[float], q: QLike = 1.0, size: int | None = None
) -> float:
    """Vendi score of order q from eigenvalues of Σ or K / N: exp(H_q(λ)) after cleaning with :func:`spectrum`.

    Args:
        eigenvalues: raw eigenvalues (tiny negatives allowed).
        q: order, ≥ 0 or ``"inf"``; 1 gives the (G-)Vendi score of the papers.
        size: matrix order for the rank tolerance (defaults to the number of eigenvalues).
    """
    return float(np.exp(entropy_q(spectrum(eigenvalues, size=size), q)))


# ---------------------------------------------------------------------------------------------------------------------
# vectors and covariance sums


def unit_rows(X: np.ndarray | Sequence[Sequence[float]], name: str = "X") -> np.ndarray:
    """Return the rows of X scaled to unit L2 norm, as a new float64 array.

    Raises:
        ValueError: X is not 2-D, is empty, holds NaN/inf, or has a row of norm 0.
    """
    A = np.array(X, dtype=np.float64, copy=True)
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (rows = samples), got shape {A.shape}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {A.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", A, A))
    if not np.all(np.isfinite(norms)):
        bad = int(np.flatnonzero(~np.isfinite(norms))[0])
        raise ValueError(f"{name} row {bad} holds NaN or inf")
    if np.any(norms == 0):
        bad = int(np.flatnonzero(norms == 0)[0])
        raise ValueError(f"{name} row {bad} has norm 0 and cannot be unit-normalized")
    A /= norms[:, None]
    return A


@dataclass
class CovarianceSums:
    """Additive sufficient statistics of a set of unit vectors: S = Σ g gᵀ (d × d), Σ g (d) and the count n.

    Sums over any split of the rows add up to the sums over all rows (``a + b``), so G-Vendi of a growing pool costs
    O(new · d²) per round: keep the sums, add the new rows' sums. Accumulation is in float64 whatever the input dtype.

    Attributes:
        cov_sum: S = Σ_i g_i g_iᵀ, float64 (d, d), symmetric.
        vector_sum: Σ_i g_i, float64 (d,).
        n: number of rows summed.
    """

    cov_sum: np.ndarray
    vector_sum: np.ndarray
    n: int

    def __post_init__(self) -> None:
        self.cov_sum = np.asarray(self.cov_sum, dtype=np.float64)
        self.vector_sum = np.asarray(self.vector_sum, dtype=np.float64)
        d = self.vector_sum.shape[0] if self.vector_sum.ndim == 1 else -1
        if d < 1 or self.cov_sum.shape != (d, d):
            raise ValueError(
                f"cov_sum must be (d, d) and vector_sum (d,), got {self.cov_sum.shape} and {self.vector_sum.shape}"
            )
        if isinstance(self.n, bool) or int(self.n) != self.n or self.n < 0:
            raise ValueError(f"n must be a count >= 0, got {self.n!r}")
        self.n = int(self.n)

    @property
    def d(self) -> int:
        """Vector dimension."""
        return int(self.vector_sum.shape[0])

    @classmethod
    def zeros(cls, d: int) -> CovarianceSums:
        """Empty sums of dimension d."""
        if isinstance(d, bool) or int(d) != d or d < 1:
            raise ValueError(f"dimension d must be a positive integer, got {d=}")
        return cls(np.zeros((d, d)), np.zeros(d), 0)

    @classmethod
    def from_vectors(cls, X: np.ndarray, normalize: bool = True) -> CovarianceSums:
        """Sums of the rows of X (unit-normalized first unless ``normalize=False``)."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be a 2-D matrix (rows = samples), got shape {X.shape}")
        return cls.zeros(X.shape[1]).update(X, normalize=normalize)

    def update(self, X: np.ndarray, normalize: bool = True) -> CovarianceSums:
        """Add the rows of X in place (float64 ``Xᵀ X``); returns self.

        Args:
            X: (b, d) matrix of any float dtype; b may be 0.
            normalize: scale rows to unit norm first (rows of norm 0, NaN or inf raise ValueError). With False the
                rows are taken as they are (they must already be unit for G-Vendi to be meaningful).
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.d:
            raise ValueError(f"X must have shape (b, {self.d}), got {X.shape}")
        if X.shape[0] == 0:
            return self
        if normalize:
            A = unit_rows(X)
        else:
            A = np.ascontiguousarray(X, dtype=np.float64)
            if not np.all(np.isfinite(A)):
                raise ValueError("X holds NaN or inf")
        self.cov_sum += A.T @ A  # A.T @ A on one buffer runs as a symmetric rank-k update (syrk)
        self.vector_sum += A.sum(axis=0)
        self.n += A.shape[0]
        return self

    def __add__(self, other: CovarianceSums) -> CovarianceSums:
        if not isinstance(other, CovarianceSums):
            return NotImplemented
        if other.d != self.d:
            raise ValueError(f"cannot add sums of dimension {self.d} and {other.d}")
        return CovarianceSums(self.cov_sum + other.cov_sum, self.vector_sum + other.vector_sum, self.n + other.n)

    def __iadd__(self, other: CovarianceSums) -> CovarianceSums:
        if not isinstance(other, CovarianceSums):
            return NotImplemented
        if other.d != self.d:
            raise ValueError(f"cannot add sums of dimension {self.d} and {other.d}")
        self.cov_sum += other.cov_sum
        self.vector_sum += other.vector_sum
        self.n += other.n
        return self

    def covariance(self) -> np.ndarray:
        """Σ = S / n (uncentered second moment, as in the paper)."""
        if self.n == 0:
            raise ValueError("covariance of zero rows is undefined")
        return self.cov_sum / self.n

    def to_record(self) -> dict[str, int | bytes]:
        """Compact form for storage: n, d, Σ g as float64 bytes, and the upper triangle of S (row-major) as bytes.

        The triangle holds d (d + 1) / 2 values: 4.2 MB at d = 1024 instead of 8.4 MB. Bytes are little-endian.
        """
        iu = np.triu_indices(self.d)
        return {
            "n": self.n,
            "d": self.d,
            "vector_sum": self.vector_sum.astype("<f8").tobytes(),
            "cov_upper": self.cov_sum[iu].astype("<f8").tobytes(),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, int | bytes | bytearray | memoryview]) -> CovarianceSums:
        """Inverse of :meth:`to_record`."""
        d = int(record["d"])  # type: ignore[arg-type]
        vs = np.frombuffer(bytes(record["vector_sum"]), dtype="<f8")  # type: ignore[arg-type]
        up = np.frombuffer(bytes(record["cov_upper"]), dtype="<f8")  # type: ignore[arg-type]
        if vs.size != d or up.size != d * (d + 1) // 2:
            raise ValueError(f"record sizes do not match d={d}: vector_sum {vs.size}, cov_upper {up.size}")
        S = np.zeros((d, d))
        iu = np.triu_indices(d)
        S[iu] = up
        S.T[iu] = up
        return cls(S, vs.astype(np.float64), int(record["n"]))  # type: ignore[arg-type]


def eigenvalues_from_sums(sums: CovarianceSums) -> np.ndarray:
    """Raw eigenvalues (ascending, float64) of Σ = S / n via ``numpy.linalg.eigvalsh``."""
    return np.linalg.eigvalsh(sums.covariance())


def score_sums(sums: CovarianceSums | np.ndarray, n: int | None = None, q: QLike = 1.0) -> float:
    """G-Vendi (Vendi of order q) from covariance sums: exp(H_q(eig(S / n))).

    Args:
        sums: a :class:`CovarianceSums`, or the float64 matrix S = Σ g gᵀ of unit rows (then pass ``n``).
        n: number of rows summed into S (only with a matrix).
        q: order, ≥ 0 or ``"inf"``.

    Returns:
        A float in [1, min(n, d)] for unit rows.
    """
    if not isinstance(sums, CovarianceSums):
        S = np.asarray(sums, dtype=np.float64)
        if S.ndim != 2 or S.shape[0] != S.shape[1]:
            raise ValueError(f"S must be a square matrix, got shape {S.shape}")
        if n is None:
            raise ValueError("pass n (the number of rows summed into S) with a matrix S")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n=}")
        lam = np.linalg.eigvalsh(S / n)
        return vendi_from_eigenvalues(lam, q=q, size=S.shape[0])
    if n is not None and n != sums.n:
        raise ValueError(f"n={n} contradicts sums.n={sums.n}")
    if sums.n == 0:
        raise ValueError("no vectors: the Vendi score of an empty set is undefined")
    return vendi_from_eigenvalues(eigenvalues_from_sums(sums), q=q, size=sums.d)


def score_dual(X: np.ndarray, q: QLike = 1.0, normalize: bool = True) -> float:
    """Vendi of order q of the rows of X with the cosine kernel, through the d × d covariance (O(N d²)).

    Args:
        X: (N, d) matrix, N ≥ 1.
        q: order, ≥ 0 or ``"inf"``.
        normalize: unit-normalize the rows first (G-Vendi requires unit rows).
    """
    return score_sums(CovarianceSums.from_vectors(X, normalize=normalize), q=q)


def score_K(K: np.ndarray, q: QLike = 1.0) -> float:
    """Vendi of order q of a similarity kernel K (N × N, symmetric PSD, K_ii = 1): exp(H_q(eig(K / N))).

    This is the definition of https://arxiv.org/abs/2210.02410 (Eq. 1); O(N³), for small N and as a test oracle.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise ValueError(f"K must be a nonempty square matrix, got shape {K.shape}")
    if not np.allclose(K, K.T, rtol=0, atol=1e-10 * max(1.0, float(np.abs(K).max()))):
        raise ValueError("K must be symmetric")
    N = K.shape[0]
    return vendi_from_eigenvalues(np.linalg.eigvalsh(K / N), q=q, size=N)


def score_X(X: np.ndarray, q: QLike = 1.0, normalize: bool = True) -> float:
    """Vendi of order q of the rows of X with the cosine kernel, through the N × N kernel K = X Xᵀ (O(N³)).

    Equal to :func:`score_dual` (the nonzero spectra of X Xᵀ / N and Xᵀ X / N coincide); kept as the oracle.
    """
    A = unit_rows(X) if normalize else np.asarray(X, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"X must be a 2-D matrix (rows = samples), got shape {A.shape}")
    K = A @ A.T
    return score_K((K + K.T) / 2, q=q)


def g_vendi(X: np.ndarray, q: QLike = 1.0) -> float:
    """G-Vendi of the rows of X (unit-normalized inside): exp(-Σ λ log λ), λ = eig((1/N) Σ g_i g_iᵀ).

    Uses the N × N kernel when N < d and the d × d covariance otherwise (the cheaper eigenproblem; same value).
    Prismatic Synthesis, https://arxiv.org/abs/2505.20161; Vendi score, https://arxiv.org/abs/2210.02410.

    Args:
        X: (N, d) gradient (or any) vectors; rows of norm 0 raise ValueError.
        q: order, ≥ 0 or ``"inf"``; 1 is G-Vendi as defined in the paper.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D matrix (rows = samples), got shape {X.shape}")
    if X.shape[0] < X.shape[1]:
        return score_X(X, q=q)
    return score_dual(X, q=q)


# ---------------------------------------------------------------------------------------------------------------------
# mean pairwise cosine


def mean_pairwise_cosine(X: np.ndarray) -> float:
    """Mean cosine similarity over ordered pairs i ≠ j of the rows of X (direct O(N² d) form; N ≥ 2)."""
    A = unit_rows(X)
    N = A.shape[0]
    if N < 2:
        raise ValueError(f"mean pairwise cosine needs at least 2 rows, got {N}")
    K = A @ A.T
    return float((K.sum() - np.trace(K)) / (N * (N - 1)))


def mean_pairwise_cosine_from_sums(vector_sum: np.ndarray | CovarianceSums, n: int | None = None) -> float:
    """Mean pairwise cosine of n unit vectors from their sum: (‖Σ g‖² − n) / (n (n − 1)).

    Σ_{i≠j} g_iᵀ g_j = ‖Σ_i g_i‖² − Σ_i ‖g_i‖² = ‖Σ g‖² − n for unit rows. Returns NaN for n < 2.

    Args:
        vector_sum: Σ g (d,), or a :class:`CovarianceSums` (then ``n`` is taken from it).
        n: number of unit vectors summed.
    """
    if isinstance(vector_sum, CovarianceSums):
        n, s = vector_sum.n, vector_sum.vector_sum
    else:
        s = np.asarray(vector_sum, dtype=np.float64)
        if n is None:
            raise ValueError("pass n with a plain vector sum")
    if n < 2:
        return math.nan
    return float((s @ s - n) / (n * (n - 1)))


# ---------------------------------------------------------------------------------------------------------------------
# text baselines

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercase word and punctuation tokens: runs of word characters, and each other non-space character.

    ``"Hello, World!"`` → ``["hello", ",", "world", "!"]``. The Spark path applies this same function.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    return _TOKEN_RE.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Contiguous n-grams of a token list (none when it is shorter than n)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n-gram order must be an integer >= 1, got {n=}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_counts(texts: Iterable[str], n: int) -> Counter:
    """Counts of every n-gram over all texts (each text tokenized with :func:`tokenize`)."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(ngrams(tokenize(t), n))
    return counts


def entropy_from_counts(counts: Iterable[int] | Mapping[object, int]) -> float:
    """Shannon entropy (nats) of the distribution given by counts: log T − (Σ c log c) / T with T = Σ c.

    Returns NaN when there are no counts.
    """
    c = np.fromiter((counts.values() if isinstance(counts, Mapping) else counts), dtype=np.float64)
    if np.any(c < 0):
        raise ValueError("counts must be >= 0")
    c = c[c > 0]
    if c.size == 0:
        return math.nan
    total = c.sum()
    return float(np.log(total) - (c * np.log(c)).sum() / total)


def ngram_entropy(texts: Iterable[str], n: int = 2) -> float:
    """Shannon entropy (nats) of the n-gram distribution pooled over a set of texts; NaN if no text has n tokens."""
    return entropy_from_counts(ngram_counts(texts, n))


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct-n (Li et al., https://arxiv.org/abs/1510.03055): unique n-grams / total n-grams over the set.

    Returns NaN if no text has n tokens.
    """
    counts = ngram_counts(texts, n)
    total = sum(counts.values())
    return math.nan if total == 0 else len(counts) / total
