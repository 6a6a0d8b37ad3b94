"""MinHash over whole batches in numpy: shingles, signatures, LSH band keys and exact Jaccard.

Everything here is vectorized over a batch of texts (a list, pandas Series or pyarrow array) and deterministic
across processes, machines and batch splits: no Python ``hash`` (randomized per process), no global RNG state.

Pipeline for a batch (``shingle_batch`` -> ``signatures`` -> ``band_keys``):

1. **Normalize** each text with :func:`prismatic.normalize.normalize_text` (whitespace is always collapsed for
   shingling, so tokens are exactly ``str.split()`` words), then tokenize on whitespace.
2. **Token hashes** (uint64). Words: pyarrow splits and dictionary-encodes the batch, and only the distinct words
   are hashed with ``pandas.util.hash_array`` (SipHash-2-4 with pandas' fixed key, so it is stable across
   processes). Characters (``shingle="char"``): ``splitmix64(code point)``.
3. **Shingle hashes** (uint64): the n-gram starting at token ``i`` is
   ``fmix(sum_j h[i + j] * P[j] + len * P[n]  mod 2**64)`` with fixed odd constants ``P`` (position-sensitive) and
   the splitmix64 finalizer ``fmix``. A row with fewer than ``n`` tokens yields one shingle of all its tokens; an
   empty row yields none.
4. **Signature**: for ``k < num_perm``, ``sig[k] = min over shingles x of (a_k * x + b_k) mod 2**64`` with
   ``a_k`` odd and ``a_k, b_k`` drawn from ``numpy.random.default_rng(seed)``; computed as one
   (num_perm x shingles) array per chunk and ``np.minimum.reduceat`` per row. An empty row gets ``2**64 - 1``
   everywhere.
5. **Band keys**: band ``j`` of ``rows_per_band`` values ``v_t`` gives
   ``fmix(sum_t v_t * Q[t] + (j + 1) * Q[r] + salt)`` as int64; ``salt`` separates groups (dedup passes a hash
   of the task) so that equal bands in different tasks do not collide.

**S-curve.** Two sets with Jaccard ``s`` agree on one signature position with probability ``s``; they share at
least one of ``b`` bands of ``r`` rows (become candidates) with probability ``P(s) = 1 - (1 - s**r)**b``
(:func:`candidate_probability`). The default ``b = 20, r = 5`` (100 hash functions) gives
``P(0.8) = 0.99964``, ``P(0.9) = 1 - 2e-11``, ``P(0.7) = 0.97``, ``P(0.5) = 0.47``, ``P(0.3) = 0.048``,
``P(0.2) = 0.0064``, ``P(0.1) = 0.0002``. Candidates are verified with the exact Jaccard of the shingle sets
(:func:`jaccard_rows`), so false candidates cost time, never precision; :func:`choose_bands` picks ``(b, r)`` for
another threshold or recall target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pandas.util import hash_array

from prismatic.config import DedupConfig
from prismatic.normalize import normalize_many

__all__ = [
    "EMPTY",
    "Shingles",
    "band_keys",
    "candidate_probability",
    "choose_bands",
    "fmix64",
    "jaccard",
    "jaccard_rows",
    "permutations",
    "shingle_batch",
    "shingle_hashes",
    "signatures",
    "token_hashes",
]

U64 = np.uint64
EMPTY = np.iinfo(np.uint64).max  # signature value of a row without shingles
_MAX_NGRAM = 64
_CHUNK_ELEMS = 1 << 16  # (perm x shingle) elements per signature chunk: 512 KB, stays in L2 (measured fastest)


def _splitmix_constants(n: int, stream: int) -> np.ndarray:
    """``n`` fixed odd 64-bit constants (splitmix64 outputs of ``stream``), independent of any seed."""
    x = (np.arange(1, n + 1, dtype=U64) + U64(stream)) * U64(0x9E3779B97F4A7C15)
    return fmix64(x) | U64(1)


def fmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 / MurmurHash3 64-bit finalizer (a bijection on uint64 that mixes all bits), vectorized.

    Args:
        x: uint64 array (not modified).

    Returns:
        A new uint64 array.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=U64).copy()
        z ^= z >> U64(30)
        z *= U64(0xBF58476D1CE4E5B9)
        z ^= z >> U64(27)
        z *= U64(0x94D049BB133111EB)
        z ^= z >> U64(31)
    return z


_P = _splitmix_constants(_MAX_NGRAM + 1, stream=0x5348494E474C45)  # shingle position multipliers
_Q = _splitmix_constants(_MAX_NGRAM + 1, stream=0x42414E44)  # band row multipliers


@dataclass(frozen=True)
class Shingles:
    """Shingle hashes of a batch in CSR form: row ``i`` owns ``hashes[offsets[i]:offsets[i + 1]]``.

    A row may repeat a shingle (a repeated phrase); MinHash ignores repeats and :func:`jaccard_rows` removes them.
    """

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len n_rows + 1

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        """Shingles per row (with repeats)."""
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        """Shingle hashes of row ``i``."""
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]

    def take(self, rows: np.ndarray) -> Shingles:
        """The sub-batch of the given row indices (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.counts()[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        idx = _ranges(self.offsets[:-1][rows], counts, int(offsets[-1]))
        return Shingles(self.hashes[idx], offsets)


def _ranges(starts: np.ndarray, counts: np.ndarray, total: int) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), vectorized."""
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    row_of = np.repeat(np.arange(len(counts)), counts)
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    return np.asarray(starts, dtype=np.int64)[row_of] + (np.arange(total, dtype=np.int64) - first[row_of])


def _string_array(texts: Any) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if isinstance(texts, pa.Array):
        arr = texts
    else:
        if hasattr(texts, "tolist"):
            texts = texts.tolist()
        arr = pa.array(texts, type=pa.large_string())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise TypeError(f"expected an array of strings, got {arr.type}")
    if arr.null_count:
        raise ValueError(f"{arr.null_count} null texts in the batch; fill nulls with '' first")
    return arr


def _list_offsets(arr: pa.Array) -> np.ndarray:
    """Offsets of a (large_)list array as int64, honouring the array's slice offset."""
    dtype = np.int64 if pa.types.is_large_list(arr.type) else np.int32
    raw = np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset : arr.offset + len(arr) + 1]
    return raw.astype(np.int64) - int(raw[0])


def token_hashes(texts: Any, kind: str = "word") -> tuple[np.ndarray, np.ndarray]:
    """Hash the tokens of already-normalized texts.

    Args:
        texts: normalized texts (list / Series / pyarrow string array, no nulls). Words are split on Unicode
            whitespace by Arrow; texts from :func:`shingle_batch` hold single ASCII spaces only.
        kind: ``"word"`` (split on whitespace) or ``"char"`` (every code point is a token).

    Returns:
        ``(hashes, offsets)``: uint64 token hashes in row order and int64 row offsets (len n_rows + 1).
    """
    arr = _string_array(texts)
    if kind == "word":
        words = pc.utf8_split_whitespace(arr)
        offsets = _list_offsets(words)
        flat = words.flatten()
        if len(flat) and pc.any(pc.equal(pc.binary_length(flat), 0)).as_py():
            # leading/trailing whitespace or empty rows give empty tokens: drop them and rebuild offsets
            keep = pc.greater(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False)
            row_of = np.repeat(np.arange(len(arr)), np.diff(offsets))
            flat = flat.filter(pa.array(keep))
            counts = np.bincount(row_of[keep], minlength=len(arr))
            offsets = np.zeros(len(arr) + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
        if len(flat) == 0:
            return np.zeros(0, dtype=U64), offsets
        enc = pc.dictionary_encode(flat)
        uniq = enc.dictionary.to_numpy(zero_copy_only=False)
        hashes = hash_array(uniq, categorize=False)[enc.indices.to_numpy()]
        return hashes.astype(U64, copy=False), offsets
    if kind == "char":
        values = arr.to_pylist()
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        offsets = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        cps = np.frombuffer("".join(values).encode("utf-32-le"), dtype=np.uint32)
        return fmix64(cps.astype(U64) + U64(0x632D6370)), offsets
    raise ValueError(f"unknown shingle kind {kind!r} (allowed: word, char)")


def shingle_hashes(texts: Any, ngram: int = 3, kind: str = "word") -> Shingles:
    """n-gram shingle hashes of already-normalized texts (module docstring, step 3).

    Args:
        texts: normalized texts (list / Series / pyarrow string array, no nulls).
        ngram: tokens per shingle (1..64). A row with fewer tokens yields one shingle of all of them.
        kind: ``"word"`` or ``"char"`` tokens.

    Returns:
        :class:`Shingles` with one row per text.
    """
    if not 1 <= ngram <= _MAX_NGRAM:
        raise ValueError(f"ngram must be in 1..{_MAX_NGRAM}, got {ngram}")
    tok, toff = token_hashes(texts, kind)
    counts = np.diff(toff)
    n_sh = np.where(counts > 0, np.maximum(counts - ngram + 1, 1), 0)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(n_sh, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return Shingles(np.zeros(0, dtype=U64), offsets)
    starts = _ranges(toff[:-1], n_sh, total)  # global token index where each shingle starts
    glen = np.repeat(np.minimum(counts, ngram), n_sh)  # tokens in each shingle
    last = len(tok) - 1
    with np.errstate(over="ignore"):
        acc = glen.astype(U64) * _P[ngram]
        for j in range(ngram):
            vals = tok[np.minimum(starts + j, last)] * _P[j]
            if j:
                vals[glen <= j] = 0
            acc += vals
    return Shingles(fmix64(acc), offsets)


def shingle_batch(texts: Any, cfg: DedupConfig | None = None) -> Shingles:
    """Normalize a batch of raw texts and shingle it as ``cfg`` says (``cfg.normalize``, ``shingle``, ``ngram``).

    Whitespace is collapsed even when ``collapse_whitespace`` is off: word tokens do not depend on spacing, and
    char shingles then see one space wherever the text had any run of whitespace.

    Args:
        texts: raw texts (list / Series / pyarrow string array, no nulls).
        cfg: dedup settings (default :class:`DedupConfig`).

    Returns:
        :class:`Shingles` with one row per text.
    """
    cfg = cfg or DedupConfig()
    ncfg = cfg.normalize
    if not ncfg.collapse_whitespace:  # tokens are whitespace-separated either way; collapse so Python defines it
        ncfg = ncfg.model_copy(update={"collapse_whitespace": True})
    return shingle_hashes(normalize_many(texts, ncfg), cfg.ngram, cfg.shingle)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` of the universal hash functions ``h_k(x) = a_k * x + b_k mod 2**64`` (``a_k`` odd).

    Args:
        num_perm: number of hash functions.
        seed: any int; the same seed gives the same functions in every process.

    Returns:
        Two uint64 arrays of length ``num_perm``.
    """
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    rng = np.random.default_rng(np.random.SeedSequence([0x4D696E48, seed & (2**64 - 1)]))
    a = rng.integers(0, 2**64, size=num_perm, dtype=U64, endpoint=False) | U64(1)
    b = rng.integers(0, 2**64, size=num_perm, dtype=U64, endpoint=False)
    return a, b


def signatures(shingles: Shingles, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (module docstring, step 4).

    Args:
        shingles: shingle hashes of a batch.
        num_perm: signature length.
        seed: hash-function seed.

    Returns:
        ``(n_rows, num_perm)`` uint64; rows without shingles hold :data:`EMPTY`.
    """
    a, b = permutations(num_perm, seed)
    n = shingles.n_rows
    out = np.full((n, num_perm), EMPTY, dtype=U64)
    counts = shingles.counts()
    rows = np.flatnonzero(counts > 0)
    if len(rows) == 0:
        return out
    per_chunk = max(1, _CHUNK_ELEMS // num_perm)  # shingles per chunk
    ends = shingles.offsets[rows + 1]
    i = 0
    a_col, b_col = a[:, None], b[:, None]
    while i < len(rows):
        lo = int(shingles.offsets[rows[i]])
        # take rows while the chunk stays within per_chunk shingles (always at least one row)
        j = int(np.searchsorted(ends, lo + per_chunk, side="right"))
        j = max(j, i + 1)
        hi = int(ends[j - 1])
        x = shingles.hashes[lo:hi]
        buf = np.empty((num_perm, hi - lo), dtype=U64)
        with np.errstate(over="ignore"):
            np.multiply(a_col, x[None, :], out=buf)
            buf += b_col
        starts = shingles.offsets[rows[i:j]] - lo
        out[rows[i:j]] = np.minimum.reduceat(buf, starts, axis=1).T
        i = j
    return out


def band_keys(sigs: np.ndarray, bands: int, rows_per_band: int, salt: np.ndarray | None = None) -> np.ndarray:
    """LSH band keys (module docstring, step 5).

    Args:
        sigs: ``(n_rows, >= bands * rows_per_band)`` uint64 signatures; the first ``bands * rows_per_band``
            columns are used.
        bands: number of bands ``b``.
        rows_per_band: signature values per band ``r``.
        salt: optional uint64 per row (e.g. a task hash); rows with different salts never share a key.

    Returns:
        ``(n_rows, bands)`` int64 keys; rows share a key in band ``j`` iff (up to 2**-64 collisions) their band
        ``j`` values and salts are equal.
    """
    n, k = sigs.shape
    if bands * rows_per_band > k:
        raise ValueError(f"bands * rows_per_band = {bands * rows_per_band} exceeds the signature length {k}")
    if rows_per_band > _MAX_NGRAM:
        raise ValueError(f"rows_per_band must be <= {_MAX_NGRAM}, got {rows_per_band}")
    v = sigs[:, : bands * rows_per_band].reshape(n, bands, rows_per_band)
    with np.errstate(over="ignore"):
        acc = (v * _Q[:rows_per_band]).sum(axis=2, dtype=U64)
        acc += np.arange(1, bands + 1, dtype=U64) * _Q[rows_per_band]
        if salt is not None:
            acc += np.asarray(salt, dtype=U64)[:, None]
    return fmix64(acc).view(np.int64)


def jaccard(a: Any, b: Any) -> float:
    """Exact Jaccard ``|A & B| / |A | B|`` of two shingle collections (repeats ignored); 0.0 if both are empty."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def _row_keys(sh: Shingles) -> tuple[np.ndarray, np.ndarray]:
    """Unique per-row shingle keys ``fmix(hash + row * C)`` and the row each one belongs to."""
    row_of = np.repeat(np.arange(sh.n_rows, dtype=np.int64), sh.counts())
    with np.errstate(over="ignore"):
        keys = fmix64(sh.hashes ^ fmix64(row_of.astype(U64) + U64(0x6A61636361726421)))
    uniq, first = np.unique(keys, return_index=True)
    return uniq, row_of[first]


def jaccard_rows(a: Shingles, b: Shingles) -> np.ndarray:
    """Exact Jaccard of row ``i`` of ``a`` with row ``i`` of ``b``, for every ``i``, vectorized.

    Shingles are compared by their 64-bit hashes, so the result is the Jaccard of the shingle sets unless two
    distinct shingles of one pair collide in 64 bits. A pair of empty rows gets 0.0.

    Args:
        a: shingles of the left rows.
        b: shingles of the right rows (same number of rows).

    Returns:
        float64 array of length ``n_rows``.
    """
    if a.n_rows != b.n_rows:
        raise ValueError(f"jaccard_rows needs equally many rows, got {a.n_rows} and {b.n_rows}")
    n = a.n_rows
    ka, ra = _row_keys(a)
    kb, rb = _row_keys(b)
    size_a = np.bincount(ra, minlength=n)
    size_b = np.bincount(rb, minlength=n)
    _, ia, _ = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    inter = np.bincount(ra[ia], minlength=n)
    union = size_a + size_b - inter
    out = np.zeros(n, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def candidate_probability(s: float | np.ndarray, bands: int, rows_per_band: int) -> float | np.ndarray:
    """``P(candidate) = 1 - (1 - s**r)**b`` for Jaccard ``s`` (the LSH S-curve)."""
    s = np.asarray(s, dtype=np.float64)
    p = -np.expm1(bands * np.log1p(-(s**rows_per_band)))
    return float(p) if p.ndim == 0 else p


def choose_bands(threshold: float, recall: float = 0.999, max_perm: int = 128) -> tuple[int, int]:
    """Smallest-cost ``(bands, rows_per_band)`` with ``P(candidate | threshold) >= recall``.

    Among the feasible pairs with ``b * r <= max_perm`` it takes the largest ``r`` (steepest S-curve, fewest false
    candidates below the threshold) and for it the smallest ``b``.

    Args:
        threshold: Jaccard at which candidates must be found.
        recall: required candidate probability at ``threshold``.
        max_perm: largest signature length allowed.

    Returns:
        ``(bands, rows_per_band)``.

    Raises:
        ValueError: nothing fits in ``max_perm``.
    """
    if not (0 < threshold <= 1 and 0 < recall < 1):
        raise ValueError(f"need 0 < threshold <= 1 and 0 < recall < 1, got {threshold=}, {recall=}")
    best = None
    for r in range(1, max_perm + 1):
        q = threshold**r
        if q >= 1:
            b = 1
        elif q <= 0:
            break
        else:
            b = math.ceil(math.log1p(-recall) / math.log1p(-q))
        if b * r <= max_perm:
            best = (b, r)
    if best is None:
        raise ValueError(f"no (bands, rows) with bands * rows <= {max_perm} reaches {recall=} at {threshold=}")
    return best
