"""MinHash, LSH banding, exact Jaccard and the pure graph pieces of dedup (no Spark)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import prismatic.minhash as mh
from prismatic.config import DedupConfig, NormalizeConfig
from prismatic.dedup import bucket_pairs, connected_components, mllib_hash_tables
from prismatic.minhash import (
    EMPTY,
    Shingles,
    band_keys,
    candidate_probability,
    choose_bands,
    jaccard,
    jaccard_rows,
    shingle_batch,
    signatures,
)
from prismatic.normalize import normalize_text

CFG = DedupConfig()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ref_shingles(text: str, n: int = 3, cfg: NormalizeConfig = CFG.normalize) -> set[tuple[str, ...]]:
    """Independent reference: word n-grams as tuples of normalized words (whole row if shorter than n)."""
    words = normalize_text(text, cfg).split()
    if not words:
        return set()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def ref_jaccard(x: str, y: str, n: int = 3) -> float:
    a, b = ref_shingles(x, n), ref_shingles(y, n)
    return len(a & b) / len(a | b) if a | b else 0.0


def random_texts(rng: np.random.Generator, n: int, vocab: int = 500, lo: int = 0, hi: int = 40) -> list[str]:
    words = np.array([f"w{i}" for i in range(vocab)])
    return [" ".join(rng.choice(words, size=rng.integers(lo, hi + 1))) for _ in range(n)]


def mutate(rng: np.random.Generator, text: str, k: int) -> str:
    w = text.split()
    for _ in range(k):
        w[rng.integers(len(w))] = f"new{rng.integers(10**9)}"
    return " ".join(w)


# ------------------------------------------------------------------------------------------------ shingles


def test_shingle_counts_match_reference():
    texts = ["a b c d e", "a b", "", "  ", "x", "a b c a b c a b c", "ＡＢ  c\td", "one two three"]
    sh = shingle_batch(texts, CFG)
    assert sh.n_rows == len(texts)
    for i, t in enumerate(texts):
        assert len(np.unique(sh.row(i))) == len(ref_shingles(t)), t
    assert sh.counts().tolist() == [3, 1, 0, 0, 1, 7, 1, 1]


def test_equal_ngrams_hash_equal_across_rows_and_batches():
    a = shingle_batch(["the cat sat on the mat"], CFG)
    b = shingle_batch(["xx yy", "THE  cat SAT on"], CFG)  # normalizes to "the cat sat on"
    shared = set(a.row(0).tolist()) & set(b.row(1).tolist())
    assert len(shared) == 2  # "the cat sat", "cat sat on"


def test_word_order_and_length_matter():
    h = shingle_batch(["a b c", "c b a", "a b", "a b c d"], DedupConfig(ngram=3))
    assert h.row(0)[0] != h.row(1)[0]
    assert h.row(2)[0] not in set(h.row(3).tolist())  # the 2-word row shingle is not a prefix 3-gram
    assert h.row(0)[0] == h.row(3)[0]


def test_char_shingles():
    cfg = DedupConfig(shingle="char", ngram=3)
    sh = shingle_batch(["abcd", "ab", "", "äbcd"], cfg)
    assert sh.counts().tolist() == [2, 1, 0, 2]
    assert sh.row(0)[1] == sh.row(3)[1]  # "bcd" in both
    assert sh.row(0)[0] != sh.row(3)[0]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_exact_jaccard_matches_python_sets(n):
    rng = np.random.default_rng(n)
    base = random_texts(rng, 300, vocab=60, lo=0, hi=30)
    other = [mutate(rng, t, int(rng.integers(0, 4))) if t and rng.random() < 0.7 else t for t in base]
    rng.shuffle(other[:50])  # some unrelated pairs too
    cfg = DedupConfig(ngram=n)
    got = jaccard_rows(shingle_batch(base, cfg), shingle_batch(other, cfg))
    want = np.array([ref_jaccard(x, y, n) for x, y in zip(base, other, strict=True)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    assert (want > 0).sum() > 100 and (want < 1).sum() > 100  # the check covered a spread of values


def test_jaccard_scalar_helper():
    assert jaccard([1, 2, 3, 3], [2, 3, 4]) == 0.5
    assert jaccard([], []) == 0.0
    with pytest.raises(ValueError, match="equally many rows"):
        jaccard_rows(shingle_batch(["a"], CFG), shingle_batch(["a", "b"], CFG))


def test_take_keeps_rows():
    sh = shingle_batch(["a b c d", "", "x y", "p q r s t"], CFG)
    sub = sh.take(np.array([3, 1, 0]))
    assert sub.counts().tolist() == [3, 0, 2]
    for i, j in enumerate([3, 1, 0]):
        assert np.array_equal(sub.row(i), sh.row(j))


def test_inputs_accepted_and_nulls_rejected():
    texts = ["a b c d", "x y"]
    ref = shingle_batch(texts, CFG)
    for container in (pd.Series, pa.array, lambda v: pa.chunked_array([v[:1], v[1:]])):
        got = shingle_batch(container(texts), CFG)
        assert np.array_equal(got.hashes, ref.hashes) and np.array_equal(got.offsets, ref.offsets)
    with pytest.raises(ValueError, match="null"):
        mh.shingle_hashes(pa.array(["a", None]))
    with pytest.raises(ValueError, match="unknown shingle kind"):
        mh.token_hashes(["a"], kind="byte")


# ------------------------------------------------------------------------------------------------ signatures

SNIPPET = textwrap.dedent(
    """
    import hashlib, sys
    from prismatic.config import DedupConfig
    from prismatic.minhash import shingle_batch, signatures, band_keys
    texts = [line for line in sys.stdin.read().split("\\n---\\n")]
    sig = signatures(shingle_batch(texts, DedupConfig()), 100, 7)
    print(hashlib.sha256(sig.tobytes() + band_keys(sig, 20, 5).tobytes()).hexdigest())
    """
)


def test_signatures_deterministic_across_processes():
    rng = np.random.default_rng(0)
    texts = random_texts(rng, 200, lo=0) + ["Ｆｕｌｌ width", "Straße ist lang"]
    sig = signatures(shingle_batch(texts, CFG), 100, 7)
    mine = hashlib.sha256(sig.tobytes() + band_keys(sig, 20, 5).tobytes()).hexdigest()
    outs = set()
    for seed in ("1", "12345"):  # different str-hash randomization in each child
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=os.path.join(REPO, "lib"))
        res = subprocess.run(
            [sys.executable, "-c", SNIPPET], input="\n---\n".join(texts), capture_output=True, text=True, env=env
        )
        assert res.returncode == 0, res.stderr
        outs.add(res.stdout.strip())
    assert outs == {mine}


def test_signatures_independent_of_batch_split_and_chunking(monkeypatch):
    rng = np.random.default_rng(1)
    texts = random_texts(rng, 500, lo=0, hi=80)
    whole = signatures(shingle_batch(texts, CFG), 64, 3)
    parts = np.concatenate([signatures(shingle_batch(texts[i : i + 37], CFG), 64, 3) for i in range(0, 500, 37)])
    assert np.array_equal(whole, parts)
    monkeypatch.setattr(mh, "_CHUNK_ELEMS", 64 * 5)  # force many tiny chunks (and rows longer than a chunk)
    assert np.array_equal(signatures(shingle_batch(texts, CFG), 64, 3), whole)


def test_signature_is_min_of_universal_hashes():
    sh = shingle_batch(["a b c d e f", "", "q"], CFG)
    a, b = mh.permutations(16, 5)
    sig = signatures(sh, 16, 5)
    for i in (0, 2):
        x = sh.row(i).astype(object)  # Python ints: independent modular arithmetic
        want = [min((int(ak) * int(v) + int(bk)) % 2**64 for v in x) for ak, bk in zip(a, b, strict=True)]
        assert sig[i].tolist() == want
    assert (sig[1] == EMPTY).all()
    assert (a % 2 == 1).all()
    assert not np.array_equal(signatures(sh, 16, 6), sig)  # the seed matters


def test_estimated_jaccard_close_to_exact():
    rng = np.random.default_rng(2)
    base = random_texts(rng, 200, vocab=5000, lo=40, hi=60)
    other = [mutate(rng, t, int(rng.integers(1, 12))) for t in base]
    k = 256
    sa, sb = shingle_batch(base, CFG), shingle_batch(other, CFG)
    est = (signatures(sa, k, 11) == signatures(sb, k, 11)).mean(axis=1)
    exact = jaccard_rows(sa, sb)
    err = est - exact
    sd = np.sqrt(exact * (1 - exact) / k)
    assert np.abs(err).mean() < 0.025
    assert abs(err.mean()) < 0.01  # unbiased
    assert (np.abs(err) <= 4 * sd + 1e-9).mean() > 0.99


def _pairs_with_jaccard(rng, n_pairs: int, size: int, shared: int) -> tuple[Shingles, Shingles]:
    """Random 64-bit shingle sets of ``size`` elements sharing ``shared``: J = shared / (2 size - shared)."""
    tot = n_pairs * (2 * size - shared)
    pool = rng.integers(0, 2**64, size=tot, dtype=np.uint64).reshape(n_pairs, 2 * size - shared)
    a = pool[:, :size].ravel()
    b = np.concatenate([pool[:, :shared], pool[:, size:]], axis=1).ravel()
    off = np.arange(n_pairs + 1, dtype=np.int64) * size
    return Shingles(a, off), Shingles(b, off)


@pytest.mark.parametrize("shared", [67, 82, 89])  # J = 0.504, 0.695, 0.802
def test_band_collision_probability_matches_s_curve(shared):
    rng = np.random.default_rng(shared)
    b, r, size, n = 20, 5, 100, 4000
    sa, sb = _pairs_with_jaccard(rng, n, size, shared)
    j = shared / (2 * size - shared)
    assert np.allclose(jaccard_rows(sa, sb), j)
    ka = band_keys(signatures(sa, b * r, 1), b, r)
    kb = band_keys(signatures(sb, b * r, 1), b, r)
    hit = (ka == kb).any(axis=1).mean()
    p = candidate_probability(j, b, r)
    assert abs(hit - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-3, (hit, p)
    per_band = (ka == kb).mean()
    assert abs(per_band - j**r) <= 4 * np.sqrt(j**r * (1 - j**r) / (n * b)), (per_band, j**r)


def test_band_keys_salt_and_validation():
    sig = signatures(shingle_batch(["a b c d", "a b c d"], CFG), 100, 1)
    assert np.array_equal(band_keys(sig, 20, 5)[0], band_keys(sig, 20, 5)[1])
    salted = band_keys(sig, 20, 5, salt=np.array([1, 2], dtype=np.uint64))
    assert not (salted[0] == salted[1]).any()
    assert len(set(band_keys(sig, 20, 5)[0].tolist())) == 20  # bands do not share keys with each other
    with pytest.raises(ValueError, match="exceeds the signature length"):
        band_keys(sig, 21, 5)


def test_default_bands_meet_recall_target():
    assert CFG.bands * CFG.rows_per_band <= CFG.num_perm
    assert candidate_probability(0.8, CFG.bands, CFG.rows_per_band) >= 0.999
    assert candidate_probability(0.3, CFG.bands, CFG.rows_per_band) < 0.05
    b, r = choose_bands(0.8, 0.999, 128)
    assert (b, r) == (18, 5) and candidate_probability(0.8, b, r) >= 0.999
    b, r = choose_bands(0.5, 0.99, 64)
    assert b * r <= 64 and candidate_probability(0.5, b, r) >= 0.99
    with pytest.raises(ValueError, match="no \\(bands, rows\\)"):
        choose_bands(0.1, 0.999, 8)
    assert mllib_hash_tables(0.8) == 5 and 1 - 0.2**5 >= 0.999 > 1 - 0.2**4


# ------------------------------------------------------------------------------------------------ dedup helpers


def _ref_bucket_pairs(keys, ids, max_pairs):
    out = set()
    for k in set(keys):
        members = sorted({i for kk, i in zip(keys, ids, strict=True) if kk == k})
        n = len(members)
        if n * (n - 1) // 2 <= max_pairs:
            out |= {(members[x], members[y]) for x in range(n) for y in range(x + 1, n)}
        else:
            out |= {(members[0], m) for m in members[1:]}
    return out


def test_bucket_pairs_against_reference():
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 60, size=800)
    ids = rng.integers(-(2**62), 2**62, size=800)
    ids[::7] = ids[1::7][: len(ids[::7])]  # repeated ids (also twice in one bucket)
    for max_pairs in (1, 3, 10, 10**6):
        a, b = bucket_pairs(keys, ids, max_pairs)
        assert (a < b).all()
        assert set(zip(a.tolist(), b.tolist(), strict=True)) == _ref_bucket_pairs(
            keys.tolist(), ids.tolist(), max_pairs
        )
    assert [len(x) for x in bucket_pairs(np.array([5]), np.array([1]), 10)] == [0, 0]


def test_connected_components_smallest_id_and_best_similarity():
    a = ["d", "b", "x", "c", "y"]
    b = ["c", "c", "z", "e", "z"]
    s = [0.9, 0.85, 0.8, 0.95, 1.0]
    got = connected_components(np.array(a), np.array(b), np.array(s)).sort_values("sample_id")
    assert got["sample_id"].tolist() == ["c", "d", "e", "y", "z"]
    assert got["kept_id"].tolist() == ["b", "b", "b", "x", "x"]
    assert got["similarity"].tolist() == [0.95, 0.9, 0.95, 1.0, 1.0]
    assert connected_components(np.array([]), np.array([]), np.array([])).empty


def test_connected_components_long_chain_and_random_graph():
    n = 2000
    ids = np.array([f"n{i:05d}" for i in range(n)])
    perm = np.random.default_rng(4).permutation(n)
    chain = connected_components(ids[perm[:-1]], ids[perm[1:]], np.ones(n - 1))
    assert len(chain) == n - 1 and set(chain["kept_id"]) == {"n00000"}
    rng = np.random.default_rng(5)
    u, v = rng.integers(0, n, 1500), rng.integers(0, n, 1500)
    got = connected_components(ids[u], ids[v], np.ones(1500))
    parent = list(range(n))  # reference: union-find

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(u, v, strict=True):
        rx, ry = find(int(x)), find(int(y))
        parent[max(rx, ry)] = min(rx, ry)
    want = {ids[i]: ids[find(i)] for i in range(n) if find(i) != i}
    assert dict(zip(got["sample_id"], got["kept_id"], strict=True)) == want
