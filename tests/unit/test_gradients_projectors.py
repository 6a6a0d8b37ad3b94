"""Dense Rademacher and sign-hash projectors: generator vs independent numpy oracles, determinism, JL properties."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from prismatic.gradients.projectors import (
    CHUNK_ROWS,
    MICRO_BATCH,
    DenseRademacherProjector,
    NaiveProjector,
    RademacherGenerator,
    SignHashProjector,
    chunk_words,
    hash_words,
    reference_rademacher,
    reference_sign_hash,
)

LAYOUT = [("a.weight", 5000), ("b.bias", 37), ("c.weight", CHUNK_ROWS)]  # crosses chunk edges


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("d", [1024, 100, 8])
def test_generator_matches_numpy_reference(d):
    n = CHUNK_ROWS + 123
    got = RademacherGenerator(d).matrix(7, "blk", n).numpy()
    want = reference_rademacher(7, "blk", n, d)
    assert got.shape == want.shape == (n, d)
    assert np.array_equal(got, want)


def test_entries_are_balanced_signs_and_columns_nearly_orthogonal():
    d, n = 256, 8192
    m = RademacherGenerator(d).matrix(0, "x", n).double()
    assert set(torch.unique(m).tolist()) == {-1 / math.sqrt(d), 1 / math.sqrt(d)}
    signs = torch.sign(m)
    assert abs(signs.mean().item()) < 4 / math.sqrt(n * d)
    gram = m.T @ m / n * d  # E = I; off-diagonal std 1/sqrt(n)
    off = gram - torch.eye(d, dtype=torch.float64)
    assert off.abs().max().item() < 6 / math.sqrt(n)
    assert torch.allclose(torch.diagonal(gram), torch.ones(d, dtype=torch.float64))


def test_streams_depend_on_seed_block_and_chunk_and_prefixes_agree():
    a = chunk_words(1, "blk", 0, 64, 1024)
    assert not np.array_equal(a, chunk_words(2, "blk", 0, 64, 1024))
    assert not np.array_equal(a, chunk_words(1, "blk2", 0, 64, 1024))
    assert not np.array_equal(a, chunk_words(1, "blk", 1, 64, 1024))
    assert np.array_equal(a[:10], chunk_words(1, "blk", 0, 10, 1024))  # a partial chunk is a prefix
    with pytest.raises(ValueError, match="rows"):
        chunk_words(1, "blk", 0, CHUNK_ROWS + 1, 1024)
    with pytest.raises(ValueError, match="seed"):
        chunk_words("1", "blk", 0, 1, 1024)


def _reference_matrix(seed: int, layout, d: int, namespace: str = "dense") -> np.ndarray:
    return np.concatenate([reference_rademacher(seed, f"{namespace}/{n}", s, d) for n, s in layout])


def test_project_equals_naive_matmul_oracle():
    d = 256
    g = torch.randn(21, sum(s for _, s in LAYOUT), generator=torch.Generator().manual_seed(0))
    proj = DenseRademacherProjector(LAYOUT, proj_dim=d, seed=3)
    got = proj.project(g)
    oracle = NaiveProjector(_reference_matrix(3, LAYOUT, d)).project(g)
    assert got.shape == (21, d) and got.dtype == torch.float32
    assert torch.allclose(got, oracle, rtol=1e-5, atol=1e-5 * oracle.abs().max().item())
    assert torch.equal(proj.materialize(), torch.from_numpy(_reference_matrix(3, LAYOUT, d)))
    blocks = proj.split(g)  # the dict form gives the same bits as the flat form
    assert torch.equal(proj.project({k: v.numpy() for k, v in blocks.items()}), got)


def test_project_is_bitwise_independent_of_batch_composition():
    d = 512
    n_rows = 2 * MICRO_BATCH + 5
    g = torch.randn(n_rows, sum(s for _, s in LAYOUT), generator=torch.Generator().manual_seed(1))
    proj = DenseRademacherProjector(LAYOUT, proj_dim=d, seed=11)
    full = proj.project(g)
    alone = torch.cat([proj.project(g[i : i + 1]) for i in range(n_rows)])
    assert torch.equal(full, alone)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(2))
    assert torch.equal(proj.project(g[perm]), full[perm])
    assert torch.equal(proj.project(g[3:8]), full[3:8])
    cached = DenseRademacherProjector(LAYOUT, proj_dim=d, seed=11, cache_bytes=1 << 30)
    assert torch.equal(cached.project(g), full) and torch.equal(cached.project(g), full)  # 2nd call: from cache


_CHILD = textwrap.dedent(
    """
    import hashlib, sys, torch
    torch.set_num_threads(1)
    from prismatic.gradients.projectors import DenseRademacherProjector
    layout = [("a.weight", 5000), ("b.bias", 37)]
    g = torch.arange(7 * 5037, dtype=torch.float64).reshape(7, 5037).sin().float()
    y = DenseRademacherProjector(layout, proj_dim=300, seed=5).project(g)
    sys.stdout.write(hashlib.sha256(y.numpy().tobytes()).hexdigest())
    """
)


def test_project_is_bitwise_reproducible_across_processes():
    layout = [("a.weight", 5000), ("b.bias", 37)]
    g = torch.arange(7 * 5037, dtype=torch.float64).reshape(7, 5037).sin().float()
    here = hashlib.sha256(DenseRademacherProjector(layout, proj_dim=300, seed=5).project(g).numpy().tobytes())
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here.hexdigest()


def test_johnson_lindenstrauss_norms_and_inner_products():
    d, n = 1024, 20_000
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(64, n, generator=gen, dtype=torch.float64)
    g[32:] = g[:32] + 0.5 * torch.randn(32, n, generator=gen, dtype=torch.float64)  # correlated pairs
    y = DenseRademacherProjector(n, proj_dim=d, seed=0).project(g.float()).double()
    ratio = y.norm(dim=1) / g.norm(dim=1)
    tol = math.sqrt(2 / d)  # std of ‖y‖² / ‖g‖²
    assert abs(ratio.pow(2).mean().item() - 1) < 3 * tol / math.sqrt(64) + 1e-3
    assert (ratio.pow(2) - 1).abs().max().item() < 5 * tol
    cos_g = torch.nn.functional.cosine_similarity(g[:32], g[32:])
    cos_y = torch.nn.functional.cosine_similarity(y[:32], y[32:])
    assert (cos_g - cos_y).abs().max().item() < 5 * tol


def test_inputs_are_validated():
    proj = DenseRademacherProjector(LAYOUT, proj_dim=16, seed=0)
    with pytest.raises(ValueError, match="shape"):
        proj.project(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="missing"):
        proj.project({"a.weight": torch.zeros(2, 5000)})
    with pytest.raises(ValueError, match="proj_type"):
        DenseRademacherProjector(10, proj_dim=16, seed=0, proj_type="gaussian")
    with pytest.raises(ValueError, match="unique"):
        DenseRademacherProjector([("a", 1), ("a", 2)], proj_dim=16, seed=0)
    with pytest.raises(ValueError, match="too large"):
        RademacherGenerator(1024).matrix(0, "x", 1 << 20)


def test_memmap_blocks_project_like_arrays(tmp_path):
    g = np.random.default_rng(0).standard_normal((9, 5037)).astype(np.float32)
    mm = np.memmap(tmp_path / "g.f32", dtype=np.float32, mode="w+", shape=g.shape)
    mm[:] = g
    layout = [("a.weight", 5000), ("b.bias", 37)]
    proj = DenseRademacherProjector(layout, proj_dim=64, seed=2)
    assert torch.equal(proj.project({"a.weight": mm[:, :5000], "b.bias": mm[:, 5000:]}), proj.project(g))


# ------------------------------------------------------------------ sign hash (the Kronecker projector's second stage)


@pytest.mark.parametrize("d", [1024, 100])
def test_sign_hash_equals_a_matmul_with_its_reference_matrix(d):
    g = torch.randn(7, sum(n for _, n in LAYOUT), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    proj = SignHashProjector(LAYOUT, proj_dim=d, seed=3)
    m = np.concatenate([reference_sign_hash(3, f"hash/{n}", size, d) for n, size in LAYOUT])
    want = NaiveProjector(m).project(g)
    got = proj.project(g)
    assert got.dtype == torch.float32 and got.shape == (7, d)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(proj.materialize(), torch.from_numpy(m))


def test_sign_hash_rows_hold_one_sign_and_fill_columns_evenly():
    n, d = 4 * CHUNK_ROWS + 5, 64
    m = reference_sign_hash(0, "x", n, d)
    assert (np.count_nonzero(m, axis=1) == 1).all() and set(np.unique(m)) == {-1.0, 0.0, 1.0}
    per_col = np.count_nonzero(m, axis=0)
    assert np.abs(per_col - n / d).max() < 6 * math.sqrt(n / d)  # a multinomial count per column
    assert abs(m.sum()) < 6 * math.sqrt(n)  # balanced signs
    w = hash_words(0, "x", n)
    assert np.array_equal(w[:100], hash_words(0, "x", 100))  # a row's word does not depend on n
    assert not np.array_equal(w[:100], hash_words(1, "x", 100))
    assert not np.array_equal(w[:100], hash_words(0, "y", 100))


def test_sign_hash_is_bitwise_independent_of_batch_composition_and_takes_memmaps(tmp_path):
    g = np.random.default_rng(0).standard_normal((9, 5037)).astype(np.float32)
    layout = [("a.weight", 5000), ("b.bias", 37)]
    proj = SignHashProjector(layout, proj_dim=64, seed=2)
    full = proj.project(torch.from_numpy(g))
    one_by_one = torch.cat([proj.project(torch.from_numpy(g[i : i + 1])) for i in range(9)])
    assert torch.equal(full, one_by_one)
    mm = np.memmap(tmp_path / "g.f32", dtype=np.float32, mode="w+", shape=g.shape)
    mm[:] = g
    assert torch.equal(proj.project({"a.weight": mm[:, :5000], "b.bias": mm[:, 5000:]}), full)
    again = SignHashProjector(layout, proj_dim=64, seed=2).project(torch.from_numpy(g))
    assert torch.equal(again, full)


def test_sign_hash_keeps_norms_and_inner_products_like_a_dense_projection():
    d, n = 1024, 20_000
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(64, n, generator=gen, dtype=torch.float64)
    g[32:] = g[:32] + 0.5 * torch.randn(32, n, generator=gen, dtype=torch.float64)  # correlated pairs
    y = SignHashProjector(n, proj_dim=d, seed=0).project(g).double()
    ratio = y.norm(dim=1).pow(2) / g.norm(dim=1).pow(2)
    tol = math.sqrt(2 / d)  # std of ‖y‖² / ‖g‖², as for a dense ±1/√d matrix
    assert abs(ratio.mean().item() - 1) < 3 * tol / math.sqrt(64) + 1e-3
    assert (ratio - 1).abs().max().item() < 5 * tol
    cos_g = torch.nn.functional.cosine_similarity(g[:32], g[32:])
    cos_y = torch.nn.functional.cosine_similarity(y[:32], y[32:])
    assert (cos_g - cos_y).abs().max().item() < 5 * tol


def test_sign_hash_inputs_are_validated():
    proj = SignHashProjector(LAYOUT, proj_dim=16, seed=0)
    with pytest.raises(ValueError, match="shape"):
        proj.project(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="missing"):
        proj.project({"a.weight": torch.zeros(2, 5000)})
    with pytest.raises(ValueError, match="proj_dim"):
        SignHashProjector(10, proj_dim=0, seed=0)
