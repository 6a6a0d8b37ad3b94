"""Seeded Rademacher projections, generated in chunks and bitwise reproducible (TRAK-style API).

A projection matrix S (n × d) for one named parameter block has entries ±1/√d. It is never held whole:
rows are produced in chunks of :data:`CHUNK_ROWS` rows, each chunk from its own random stream keyed by
``sha256(GENERATOR | seed | block | chunk)``, so any chunk of any block can be made on its own, in any
process, in any order, and ``y = g S`` is accumulated chunk by chunk in O(CHUNK_ROWS · d) memory.

Generation is cheap: a random 64-bit word (numpy ``SFC64``, seeded per chunk through ``SeedSequence``)
gives 64 signs. A sign bit is moved straight into the IEEE-754 sign bit of the float32 constant 1/√d with
integer shifts on preallocated buffers (torch, so it also runs on CUDA), instead of drawing one float per
entry (torch ``bernoulli_``, ≈ 0.08 G entries/s on two cores).

Layout of a chunk: row r takes words ``[r·w, (r+1)·w)`` of the chunk's stream, ``w = ceil(d / 64)``; its
``8w`` bytes are read little-endian and entry ``k = i · 8w + j`` (``i`` < 8, ``j`` < 8w) is negative when
bit ``i`` of byte ``j`` is set; entries ``k ≥ d`` are dropped. :func:`reference_rademacher` implements the
same definition with ``numpy.unpackbits``, as a test oracle.

Outputs are bitwise reproducible across processes and batch sizes: rows are multiplied in fixed-size,
zero-padded micro-batches of :data:`MICRO_BATCH` rows (BLAS picks its kernel by shape, so a fixed shape
gives every row the same reduction order wherever it sits in a batch) and summed over chunks in float64 in
a fixed order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from enum import StrEnum

import numpy as np
import torch

GENERATOR = "prismatic-rademacher/sfc64-sha256/v1"
CHUNK_ROWS = 4096
MICRO_BATCH = 16
_MAX_MATERIALIZE = 1 << 28  # entries: a materialized oracle matrix is for small sizes only


class ProjectionType(StrEnum):
    """Kinds of random matrix (TRAK's ``ProjectionType``); only Rademacher is implemented."""

    rademacher = "rademacher"


def chunk_seed(seed: int, block: str, chunk: int) -> np.random.SeedSequence:
    """The seed sequence of one chunk: 128 bits of ``sha256(GENERATOR | seed | block | chunk)``."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if chunk < 0:
        raise ValueError(f"chunk must be >= 0, got {chunk=}")
    digest = hashlib.sha256(f"{GENERATOR}\x1f{int(seed)}\x1f{block}\x1f{int(chunk)}".encode()).digest()
    return np.random.SeedSequence(int.from_bytes(digest[:16], "little"))


def _words_per_row(d: int) -> int:
    return (d + 63) // 64


def chunk_words(seed: int, block: str, chunk: int, rows: int, d: int) -> np.ndarray:
    """Random 64-bit words of the first ``rows`` rows of a chunk, shape (rows, ceil(d / 64)), little-endian."""
    if not 0 < rows <= CHUNK_ROWS:
        raise ValueError(f"rows must be in 1..{CHUNK_ROWS}, got {rows=}")
    wpr = _words_per_row(d)
    words = np.random.SFC64(chunk_seed(seed, block, chunk)).random_raw(rows * wpr)
    return words.astype("<u8", copy=False).reshape(rows, wpr)


def reference_rademacher(seed: int, block: str, n: int, d: int) -> np.ndarray:
    """Independent numpy implementation of the matrix (n × d, float32): the test oracle, small sizes only."""
    if n * d > _MAX_MATERIALIZE:
        raise ValueError(f"reference matrix of {n} x {d} is too large to materialize")
    scale = np.float32(1.0 / math.sqrt(d))
    parts = []
    for c in range(math.ceil(n / CHUNK_ROWS)):
        rows = min(CHUNK_ROWS, n - c * CHUNK_ROWS)
        nbytes = 8 * _words_per_row(d)
        b = chunk_words(seed, block, c, rows, d).view(np.uint8).reshape(rows, nbytes)
        bits = np.unpackbits(b, axis=1, bitorder="little").reshape(rows, nbytes, 8)  # bits[r, j, i]
        entries = bits.transpose(0, 2, 1).reshape(rows, 8 * nbytes)[:, :d]  # k = i * nbytes + j
        parts.append(np.where(entries.astype(bool), -scale, scale).astype(np.float32))
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, d), np.float32)


class RademacherGenerator:
    """Makes chunks of ±1/√d matrices on a device, reusing its buffers (one generator per thread).

    Args:
        d: number of columns (the projection dimension).
        device: where chunks are made and returned.
    """

    def __init__(self, d: int, device: str | torch.device = "cpu"):
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d=}")
        self.d = int(d)
        self.device = torch.device(device)
        self.nbytes = 8 * _words_per_row(self.d)
        scale = np.float32(1.0 / math.sqrt(self.d))
        self._scale_bits = int(np.array(scale, dtype=np.float32).view(np.int32))
        self._shifts = torch.arange(31, 23, -1, dtype=torch.int32, device=self.device).view(1, 8, 1)
        self._ibuf: torch.Tensor | None = None
        self._obuf: torch.Tensor | None = None

    def chunk(self, seed: int, block: str, chunk: int, rows: int) -> torch.Tensor:
        """Rows ``[chunk · CHUNK_ROWS, chunk · CHUNK_ROWS + rows)`` of block ``block``'s matrix, (rows, d).

        The returned tensor is a view of an internal buffer, valid until the next call.
        """
        words = chunk_words(seed, block, chunk, rows, self.d)
        raw = torch.from_numpy(words.view(np.uint8).reshape(rows, 1, self.nbytes))
        if self._ibuf is None or self._ibuf.shape[0] < rows:
            self._ibuf = torch.empty(CHUNK_ROWS, 1, self.nbytes, dtype=torch.int32, device=self.device)
            self._obuf = torch.empty(CHUNK_ROWS, 8, self.nbytes, dtype=torch.int32, device=self.device)
        ibuf, obuf = self._ibuf[:rows], self._obuf[:rows]
        ibuf.copy_(raw)  # uint8 -> int32 (uploads when the device is a GPU)
        torch.bitwise_left_shift(ibuf, self._shifts, out=obuf)  # bit i of byte j -> bit 31 of entry (i, j)
        obuf.bitwise_and_(-0x80000000).bitwise_or_(self._scale_bits)  # sign bit | bits of 1/sqrt(d)
        return obuf.view(torch.float32).view(rows, 8 * self.nbytes)[:, : self.d]

    def matrix(self, seed: int, block: str, n: int) -> torch.Tensor:
        """The whole (n × d) matrix of a block as a new tensor; for small blocks (P_o, P_i, tests)."""
        if n * self.d > _MAX_MATERIALIZE:
            raise ValueError(f"matrix of {n} x {self.d} is too large to materialize; project in chunks instead")
        out = torch.empty(n, self.d, dtype=torch.float32, device=self.device)
        for c in range(math.ceil(n / CHUNK_ROWS)):
            r0 = c * CHUNK_ROWS
            rows = min(CHUNK_ROWS, n - r0)
            out[r0 : r0 + rows] = self.chunk(seed, block, c, rows)
        return out


def _as_layout(layout: Sequence[tuple[str, int]] | int) -> list[tuple[str, int]]:
    if isinstance(layout, int | np.integer):
        if layout < 1:
            raise ValueError(f"grad_dim must be >= 1, got {layout}")
        return [("", int(layout))]
    out = [(str(name), int(size)) for name, size in layout]
    names = [n for n, _ in out]
    if not out:
        raise ValueError("layout must name at least one parameter block")
    if len(set(names)) != len(names):
        raise ValueError("layout block names must be unique")
    if any(s < 1 for _, s in out):
        raise ValueError(f"every layout block needs size >= 1, got {out}")
    return out


class DenseRademacherProjector:
    """Reference projector y = g S, S = [S_block] stacked, S_block from (seed, namespace/block, chunk).

    E‖y‖² = ‖g‖² and, by Johnson–Lindenstrauss, ⟨y_a, y_b⟩ = ⟨g_a, g_b⟩ ± O(‖g_a‖‖g_b‖/√d).

    Args:
        layout: ``[(block_name, size), ...]`` in gradient order, or a plain ``grad_dim`` (one unnamed block).
        proj_dim: d, the number of output coordinates.
        seed: base seed; the same (seed, block, chunk) always gives the same rows.
        proj_type: only ``"rademacher"``.
        device: where chunks are made and multiplied ("cpu" or "cuda").
        namespace: prefix of every block's key, so two uses of one seed draw independent matrices.
        cache_bytes: keep generated chunks up to this many bytes (the whole matrix when it fits) and reuse
            them in later calls; the arithmetic is the same, so results are bitwise those without a cache.
    """

    def __init__(
        self,
        layout: Sequence[tuple[str, int]] | int,
        proj_dim: int,
        seed: int,
        proj_type: ProjectionType | str = ProjectionType.rademacher,
        device: str | torch.device = "cpu",
        namespace: str = "dense",
        cache_bytes: int = 0,
    ):
        if proj_type not in {t.value for t in ProjectionType}:
            raise ValueError(f"unsupported {proj_type=}; use one of {[t.value for t in ProjectionType]}")
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim=}")
        self.layout = _as_layout(layout)
        self.proj_dim = int(proj_dim)
        self.seed = int(seed)
        self.proj_type = ProjectionType.rademacher
        self.device = torch.device(device)
        self.namespace = namespace
        self.grad_dim = sum(s for _, s in self.layout)
        self._gen = RademacherGenerator(self.proj_dim, self.device)
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self._cache_left = int(cache_bytes)

    def _chunk(self, name: str, c: int, rows: int) -> torch.Tensor:
        hit = self._cache.get((name, c))
        if hit is not None:
            return hit
        s = self._gen.chunk(self.seed, self.key(name), c, rows)
        nbytes = rows * self.proj_dim * 4
        if nbytes <= self._cache_left:
            s = s.clone()
            self._cache[(name, c)] = s
            self._cache_left -= nbytes
        return s

    def key(self, block: str) -> str:
        return f"{self.namespace}/{block}"

    def split(self, grads: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor | np.ndarray]:
        """Cut a flat (B, grad_dim) array into the layout's blocks (views, no copy)."""
        if grads.ndim != 2 or grads.shape[1] != self.grad_dim:
            raise ValueError(f"grads must have shape (B, {self.grad_dim}), got {tuple(grads.shape)}")
        out, off = {}, 0
        for name, size in self.layout:
            out[name] = grads[:, off : off + size]
            off += size
        return out

    def project(self, grads: torch.Tensor | np.ndarray | Mapping[str, torch.Tensor | np.ndarray]) -> torch.Tensor:
        """Project a batch: flat (B, grad_dim) or ``{block: (B, size)}`` (numpy memmaps are fine) -> (B, d).

        Returns:
            float32 tensor on ``device``; row b depends only on row b of the input (bitwise).
        """
        blocks = self.split(grads) if not isinstance(grads, Mapping) else dict(grads)
        sizes = dict(self.layout)
        unknown = set(blocks) - set(sizes)
        missing = set(sizes) - set(blocks)
        if unknown or missing:
            raise ValueError(
                f"grad blocks do not match the layout: unknown={sorted(unknown)} missing={sorted(missing)}"
            )
        batch = {int(x.shape[0]) for x in blocks.values()}
        if len(batch) != 1:
            raise ValueError(f"all blocks need the same batch size, got {sorted(batch)}")
        n_rows = batch.pop()
        acc = torch.zeros(n_rows, self.proj_dim, dtype=torch.float64, device=self.device)
        pad = torch.zeros(MICRO_BATCH, CHUNK_ROWS, dtype=torch.float32, device=self.device)
        part = torch.empty(MICRO_BATCH, self.proj_dim, dtype=torch.float32, device=self.device)
        for name, size in self.layout:
            x = blocks[name]
            if x.ndim != 2 or x.shape[1] != size:
                raise ValueError(f"block {name!r} must have shape (B, {size}), got {tuple(x.shape)}")
            for c in range(math.ceil(size / CHUNK_ROWS)):
                c0 = c * CHUNK_ROWS
                rows = min(CHUNK_ROWS, size - c0)
                s = self._chunk(name, c, rows)
                for b0 in range(0, n_rows, MICRO_BATCH):
                    b1 = min(n_rows, b0 + MICRO_BATCH)
                    piece = x[b0:b1, c0 : c0 + rows]
                    piece = torch.from_numpy(np.ascontiguousarray(piece)) if isinstance(piece, np.ndarray) else piece
                    buf = pad[:, :rows]
                    buf.zero_()
                    buf[: b1 - b0].copy_(piece)
                    torch.mm(buf, s, out=part)
                    acc[b0:b1] += part[: b1 - b0]
        return acc.to(torch.float32)

    def materialize(self) -> torch.Tensor:
        """The whole (grad_dim × d) matrix, for small sizes (the naive oracle)."""
        return torch.cat([self._gen.matrix(self.seed, self.key(n), s).clone() for n, s in self.layout], dim=0)


def hash_words(seed: int, block: str, n: int) -> np.ndarray:
    """One random 64-bit word per row ``0..n-1`` of a block, (n,) uint64: the first word of each row's stream.

    The same chunk streams as the Rademacher generator with one word per row (``d`` ≤ 64), so the key space
    is shared and a block's word ``r`` never depends on ``n``.
    """
    parts = [
        chunk_words(seed, block, c, min(CHUNK_ROWS, n - c * CHUNK_ROWS), 64)[:, 0]
        for c in range(math.ceil(n / CHUNK_ROWS))
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def reference_sign_hash(seed: int, block: str, n: int, d: int) -> np.ndarray:
    """The (n × d) matrix of :class:`SignHashProjector` for one block, float32: the test oracle, small sizes only.

    Row r has a single nonzero entry, in column ``(w >> 1) mod d``, equal to −1 when bit 0 of ``w`` is set
    (``w`` = :func:`hash_words` row r).
    """
    if n * d > _MAX_MATERIALIZE:
        raise ValueError(f"reference matrix of {n} x {d} is too large to materialize")
    w = hash_words(seed, block, n)
    out = np.zeros((n, d), np.float32)
    for r, word in enumerate(w.tolist()):
        out[r, (word >> 1) % d] = -1.0 if word & 1 else 1.0
    return out


class SignHashProjector:
    """Sparse sign-hash projection (count sketch) y = z S: each input coordinate goes to ONE output coordinate.

    Row r of block b's matrix has a single ±1 in column h(r) (seeded per block, see
    :func:`reference_sign_hash`), so E⟨y_a, y_b⟩ = ⟨z_a, z_b⟩ and the variance of that estimate is
    (‖z_a‖²‖z_b‖² + ⟨z_a, z_b⟩² − 2 Σ_r z_ar² z_br²) / d, the same second moment as a dense ±1/√d
    Rademacher matrix, at O(D) cost instead of O(D · d): the second stage of the Kronecker projector, whose
    input (D ≈ 0.9 M for 64 × 64 blocks) would make a dense D × d product dominate the batch. Accurate when
    no single coordinate carries a large share of ‖z‖² (true of sketch outputs: every coordinate of a
    Kronecker block is a ±-weighted sum of the whole layer gradient).

    Sums run in float64 with ``index_add_``, coordinate by coordinate in a fixed order per row on CPU, so a
    row's output does not depend on the other rows of its batch (bitwise; on CUDA the float64 atomics may
    reorder additions, which can move a float32 result by one ulp).

    Args:
        layout: ``[(block_name, size), ...]`` in input order, or a plain input dimension.
        proj_dim: d.
        seed: base seed; (seed, namespace/block) fixes a block's columns and signs.
        device: where the sums run.
        namespace: prefix of every block's key.
    """

    def __init__(
        self,
        layout: Sequence[tuple[str, int]] | int,
        proj_dim: int,
        seed: int,
        device: str | torch.device = "cpu",
        namespace: str = "hash",
    ):
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim=}")
        self.layout = _as_layout(layout)
        self.proj_dim = int(proj_dim)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.namespace = namespace
        self.grad_dim = sum(s for _, s in self.layout)
        self._maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def key(self, block: str) -> str:
        return f"{self.namespace}/{block}"

    def columns(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(column index (size,) int64, sign (size,) float64) of a block, made once and kept."""
        hit = self._maps.get(name)
        if hit is None:
            w = hash_words(self.seed, self.key(name), dict(self.layout)[name])
            col = torch.from_numpy(((w >> np.uint64(1)) % np.uint64(self.proj_dim)).astype(np.int64))
            sign = torch.from_numpy(np.where(w & np.uint64(1), -1.0, 1.0))
            hit = (col.to(self.device), sign.to(self.device))
            self._maps[name] = hit
        return hit

    def project(self, grads: torch.Tensor | np.ndarray | Mapping[str, torch.Tensor | np.ndarray]) -> torch.Tensor:
        """Project a batch: flat (B, grad_dim) or ``{block: (B, size)}`` -> (B, d) float32 on ``device``."""
        if not isinstance(grads, Mapping):
            if grads.ndim != 2 or grads.shape[1] != self.grad_dim:
                raise ValueError(f"grads must have shape (B, {self.grad_dim}), got {tuple(grads.shape)}")
            off, blocks = 0, {}
            for name, size in self.layout:
                blocks[name] = grads[:, off : off + size]
                off += size
        else:
            blocks = dict(grads)
        sizes = dict(self.layout)
        if set(blocks) != set(sizes):
            raise ValueError(
                f"grad blocks do not match the layout: unknown={sorted(set(blocks) - set(sizes))} "
                f"missing={sorted(set(sizes) - set(blocks))}"
            )
        batch = {int(x.shape[0]) for x in blocks.values()}
        if len(batch) != 1:
            raise ValueError(f"all blocks need the same batch size, got {sorted(batch)}")
        acc = torch.zeros(batch.pop(), self.proj_dim, dtype=torch.float64, device=self.device)
        for name, size in self.layout:
            x = blocks[name]
            x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
            if x.ndim != 2 or x.shape[1] != size:
                raise ValueError(f"block {name!r} must have shape (B, {size}), got {tuple(x.shape)}")
            col, sign = self.columns(name)
            acc.index_add_(1, col, x.to(self.device, torch.float64) * sign)
        return acc.to(torch.float32)

    def materialize(self) -> torch.Tensor:
        """The whole (grad_dim × d) matrix, for small sizes (tests)."""
        return torch.cat(
            [torch.from_numpy(reference_sign_hash(self.seed, self.key(n), s, self.proj_dim)) for n, s in self.layout]
        )


class NaiveProjector:
    """Test oracle: y = g M with a materialized matrix M (grad_dim × d) and one plain matmul (float64)."""

    def __init__(self, matrix: torch.Tensor | np.ndarray):
        m = torch.as_tensor(matrix)
        if m.ndim != 2:
            raise ValueError(f"matrix must be 2-D, got shape {tuple(m.shape)}")
        self.matrix = m.to(torch.float64)
        self.grad_dim, self.proj_dim = self.matrix.shape

    def project(self, grads: torch.Tensor | np.ndarray) -> torch.Tensor:
        g = torch.as_tensor(np.asarray(grads) if isinstance(grads, np.ndarray) else grads).to(torch.float64)
        if g.ndim != 2 or g.shape[1] != self.grad_dim:
            raise ValueError(f"grads must have shape (B, {self.grad_dim}), got {tuple(g.shape)}")
        return (g @ self.matrix).to(torch.float32)
