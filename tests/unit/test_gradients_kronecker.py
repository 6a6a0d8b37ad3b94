"""Fast (Kronecker) projector against independent references: a plain autograd loop and the exact Gram.

A tiny random llama (2 layers, hidden 32, tied embeddings, padding_idx = <|im_end|>) keeps every
reference cheap. The kernel-accuracy tests use blocks and d sized for this tiny model (see the note at
``test_fast_gvendi_within_3_percent_of_exact_and_ranks_sets``); SmolLM2 figures at the defaults (k = 32,
k_e = 64, sign hash to d = 1024) are measured in bench/gradients.py.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from prismatic.gradients.exact import cosine_kernel, dense_from_store, exact_from_store, gvendi_from_vectors
from prismatic.gradients.kronecker import KroneckerProjector, finish, normalized
from prismatic.gradients.model import collate, encode
from prismatic.gradients.persample import fill_store, per_sample_gradients
from prismatic.gradients.projectors import NaiveProjector, reference_sign_hash
from prismatic.gradients.tiny import tiny_llama, tiny_tokenizer, tiny_words

PAIRS = [
    ("what is 2 plus 3 ?", "5 . the answer is 5"),
    ("premise : the cat sits . hypothesis : the dog runs", "neutral"),
    ("w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10 w11"),
    ("a", "the dog sits . the cat runs . what is 7 ?"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok))


def _encode(tok, pairs, max_tokens=64):
    return [encode(tok, p, c, max_tokens) for p, c in pairs]


def _batch(encs, pad_id=2):
    ids, labels = collate(encs, pad_id)
    return ids, labels, torch.tensor([len(e) for e in encs])


def test_blocks_equal_projected_autograd_per_sample_gradients(tok, model):
    encs = _encode(tok, PAIRS)
    assert any(2 in e.input_ids[:-1] for e in encs)  # padding_idx tokens occur inside the sequences
    kp = KroneckerProjector(model, d=64, seed=1, block=4, embed_block=8)
    blocks, loss, n_tokens = kp.blocks(*_batch(encs))
    ref = list(per_sample_gradients(model, encs))
    names = [n for n, _ in kp.layout]
    assert names == [n for n, _ in model.named_parameters()]  # every parameter, tied embedding once
    assert sum(n in kp.matrices for n in names) == 2 * 7 + 1  # 14 linear weights + the tied embedding
    for b, r in enumerate(ref):
        assert loss[b].item() == pytest.approx(r.loss, rel=1e-5)
        assert n_tokens[b] == r.n_tokens == encs[b].n_tokens
        for name in names:
            g = r.grads[name].double()
            if name in kp.matrices:
                m_o, m_i = (m.double() for m in kp.matrices[name])
                want = (m_o.T @ g @ m_i).reshape(-1)  # P_o G P_iᵀ
            else:
                want = g.reshape(-1)  # norm weights: exact
            got = blocks[name][b].double()
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item()), name
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())  # no weight gradients


def test_sketch_matrices_are_seeded_signs_or_identity(tok, model):
    kp = KroneckerProjector(model, d=64, seed=0, block=4, embed_block=64)
    m_o, m_i = kp.matrices["model.layers.0.mlp.up_proj.weight"]  # (64 x 4), (32 x 4)
    assert m_o.shape == (64, 4) and set(m_o.unique().tolist()) == {-0.5, 0.5}
    e_o, e_i = kp.matrices["model.embed_tokens.weight"]  # k_e >= V and >= h: kept exactly
    assert torch.equal(e_o, torch.eye(len(tok))) and torch.equal(e_i, torch.eye(32))
    again = KroneckerProjector(model, d=64, seed=0, block=4, embed_block=64)
    other = KroneckerProjector(model, d=64, seed=1, block=4, embed_block=64)
    assert torch.equal(again.matrices["model.layers.0.mlp.up_proj.weight"][0], m_o)
    assert not torch.equal(other.matrices["model.layers.0.mlp.up_proj.weight"][0], m_o)


def test_second_stage_is_the_sign_hash_of_the_concatenated_blocks(tok, model):
    encs = _encode(tok, PAIRS)
    kp = KroneckerProjector(model, d=128, seed=2, block=4, embed_block=8)
    assert kp.final_kind == "hash"
    blocks, loss, n_tokens = kp.blocks(*_batch(encs))
    z = torch.cat([blocks[name] for name, _ in kp.layout], dim=1)
    m = np.concatenate([reference_sign_hash(2, f"kronecker-hash/{name}", size, 128) for name, size in kp.layout])
    want = finish(NaiveProjector(m).project(z), loss, n_tokens).vectors
    got = kp.project(*_batch(encs))
    assert got.errors == [None] * len(encs)
    assert np.allclose(got.vectors, want, atol=1e-5)
    dense = KroneckerProjector(model, d=128, seed=2, block=4, embed_block=8, final="dense")
    assert np.allclose(np.linalg.norm(dense.project(*_batch(encs)).vectors, axis=1), 1, atol=1e-6)
    with pytest.raises(ValueError, match="final"):
        KroneckerProjector(model, d=128, final="gaussian")


def test_the_spec_records_the_default_projector():
    import inspect

    from prismatic.config import ScoringConfig
    from prismatic.gradients.spec import ProjectionSpec

    cfg = ScoringConfig()
    defaults = inspect.signature(KroneckerProjector).parameters
    assert (cfg.block, cfg.embed_block) == (defaults["block"].default, defaults["embed_block"].default)
    assert defaults["final"].default == "hash"
    spec = ProjectionSpec.from_config(cfg, "m", "0" * 64)
    assert f"block={cfg.block};embed_block={cfg.embed_block}" in spec.projector and "sign-hash(d" in spec.projector
    other = ProjectionSpec.from_config(cfg.model_copy(update={"block": 8}), "m", "0" * 64)
    assert other.spec_id != spec.spec_id


def test_bias_and_layernorm_blocks_of_a_qwen2_model_match_autograd(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=False, pad_token_id=2, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in qwen.parameters():
            p.normal_(0, 0.3)
    encs = _encode(tok, PAIRS[:3])
    kp = KroneckerProjector(qwen, d=32, seed=0, block=4, embed_block=8, params=r"bias|norm|lm_head")
    blocks, _, _ = kp.blocks(*_batch(encs))
    ref = list(per_sample_gradients(qwen, encs, params=r"bias|norm|lm_head"))
    assert {n for n, _ in kp.layout} == set(ref[0].grads) and any(n.endswith("q_proj.bias") for n in ref[0].grads)
    for b, r in enumerate(ref):
        for name, g in r.grads.items():
            g = g.double()
            if name in kp.matrices:  # the untied lm_head is an output embedding: k_e x k_e block
                m_o, m_i = (m.double() for m in kp.matrices[name])
                g = m_o.T @ g @ m_i
            assert torch.allclose(blocks[name][b].double(), g.reshape(-1), rtol=1e-4, atol=1e-6), name


class _LayerNormLM(torch.nn.Module):
    """Embedding -> LayerNorm -> Linear(+bias) -> GELU -> LayerNorm -> untied head: the LayerNorm path."""

    def __init__(self, vocab: int, h: int = 12):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, h)
        self.ln1, self.ln2 = torch.nn.LayerNorm(h), torch.nn.LayerNorm(h)
        self.mix = torch.nn.Linear(h, h)
        self.head = torch.nn.Linear(h, vocab, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0, 0.5)

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, use_cache=False):
        x = self.embed(input_ids)
        x = x + torch.nn.functional.gelu(self.mix(self.ln1(x))).cumsum(1) / 4  # a causal token mix
        return type("Out", (), {"logits": self.head(self.ln2(x))})()


def test_layernorm_and_bias_blocks_match_autograd_on_a_custom_model(tok):
    torch.manual_seed(0)
    m = _LayerNormLM(len(tok)).eval()
    encs = _encode(tok, PAIRS)
    kp = KroneckerProjector(m, d=16, seed=0, block=4, embed_block=8)
    assert {n for n, _ in kp.layout} == {n for n, _ in m.named_parameters()}
    blocks, _, _ = kp.blocks(*_batch(encs))
    for b, r in enumerate(per_sample_gradients(m, encs)):
        for name, g in r.grads.items():
            g = g.double()
            if name in kp.matrices:
                m_o, m_i = (x.double() for x in kp.matrices[name])
                g = m_o.T @ g @ m_i
            assert torch.allclose(blocks[name][b].double(), g.reshape(-1), rtol=1e-4, atol=1e-6), name


def test_a_sample_alone_and_in_a_padded_batch_give_the_same_vector(tok, model):
    kp = KroneckerProjector(model, d=256, seed=0)
    encs = _encode(tok, PAIRS)
    short = min(range(len(encs)), key=lambda i: len(encs[i]))
    batch = kp.project(*_batch(encs))
    alone = kp.project(*_batch([encs[short]]))
    assert len(encs[short]) < max(len(e) for e in encs)
    assert batch.errors == [None] * 4 and alone.errors == [None]
    assert np.allclose(batch.vectors[short], alone.vectors[0], atol=2e-6)
    assert batch.loss[short] == pytest.approx(alone.loss[0], rel=1e-6)
    assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1, atol=1e-6)
    pad_other = kp.project(*_batch([encs[short], encs[0]], pad_id=7))  # the pad token id does not matter either
    assert np.allclose(pad_other.vectors[0], alone.vectors[0], atol=2e-6)


def test_normalized_input_matches_the_transformers_norm_layers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    x = torch.randn(3, 7, 16) * 4
    rms = LlamaRMSNorm(16, eps=1e-5)  # weight = 1: its output is n_t itself, rounded to the input dtype
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        got = normalized(xd, "rms", 1e-5)
        assert got.dtype == torch.float32
        assert torch.allclose(got, rms.to(dtype)(xd).float(), rtol=1e-6, atol=1e-6), dtype
    xf = x.float()  # the fused float32 path equals the written-out formula
    formula = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(normalized(x, "rms", 1e-5), formula, rtol=1e-6, atol=1e-6)
    ln = torch.nn.LayerNorm(16, eps=1e-5)  # weight 1, bias 0
    assert torch.allclose(normalized(x, "layer", 1e-5), ln(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown norm"):
        normalized(x, "batch", 1e-5)


def test_unusable_rows_are_flagged_not_raised(tok, model):
    y = torch.tensor([[3.0, 4.0], [float("nan"), 1.0], [0.0, 0.0], [1.0, 1.0]])
    r = finish(y, torch.tensor([1.0, 1.0, 1.0, float("inf")]), torch.tensor([3, 3, 3, 3]))
    assert r.errors == [None, "nonfinite_gradient", "zero_gradient", "nonfinite_loss"]
    assert np.allclose(r.vectors[0], [0.6, 0.8]) and np.isnan(r.vectors[1:]).all()
    broken = tiny_llama(len(tok))
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    out = KroneckerProjector(broken, d=32).project(*_batch(_encode(tok, PAIRS[:2])))
    assert out.errors == ["nonfinite_loss", "nonfinite_loss"]


def test_unsupported_parameters_are_a_clear_error(tok):
    m = tiny_llama(len(tok))
    m.model.extra = torch.nn.Conv1d(1, 1, 1)  # a parameter kind the fast projector does not know
    with pytest.raises(ValueError, match="unsupported selected parameters.*extra"):
        KroneckerProjector(m)
    KroneckerProjector(m, params=r"^model\.layers")  # fine once narrowed
    with pytest.raises(ValueError, match="selects no parameter"):
        KroneckerProjector(m, params="nothing-matches")


def graded_sets(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """Four sets of increasing diversity: near-duplicates, one template, two tasks, random word strings."""
    rng = random.Random(seed)
    near = [("what is 2 plus 3 ?", f"the answer is {rng.choice(['5', '5', '5', '6'])} .") for _ in range(n)]
    template = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        template.append((f"what is {a} plus {b} ?", f"the answer is {(a + b) % 10} ."))
    mixed = []
    for i in range(n):
        if i % 2:
            a, b, op = rng.randrange(10), rng.randrange(10), rng.choice(["plus", "minus", "times"])
            mixed.append((f"what is {a} {op} {b} ?", str(rng.randrange(10))))
        else:
            s1, s2 = (f"the {rng.choice(['cat', 'dog'])} {rng.choice(['runs', 'sits'])}" for _ in range(2))
            mixed.append(
                (f"premise : {s1} . hypothesis : {s2}", rng.choice(["entailment", "neutral", "contradiction"]))
            )
    words = tiny_words()
    rand = [
        (" ".join(rng.choices(words, k=rng.randint(3, 12))), " ".join(rng.choices(words, k=rng.randint(2, 10))))
        for _ in range(n)
    ]
    return [near, template, mixed, rand]


@pytest.fixture(scope="module")
def graded(tok, model):
    """Per set: encodings, exact result (d = ∞) and the store of full per-sample gradients."""
    out = []
    for pairs in graded_sets(24):
        encs = _encode(tok, pairs)
        store = fill_store(model, encs)
        out.append((encs, exact_from_store(store), store))
    yield out
    for _, _, store in out:
        store.close()


def test_exact_oracle_is_the_gram_of_flattened_autograd_gradients(graded, model):
    encs, ex, store = graded[2]
    flat = np.stack([g.flat(store.layout).double().numpy() for g in per_sample_gradients(model, encs[:5])])
    assert np.allclose(ex.gram[:5, :5], flat @ flat.T, rtol=1e-6)
    assert np.allclose(ex.kernel[:5, :5], cosine_kernel(flat @ flat.T), atol=1e-9)
    full = np.concatenate([store.block(n) for n, _ in store.layout], axis=1).astype(np.float64)
    assert ex.gvendi == pytest.approx(gvendi_from_vectors(full), rel=1e-9)


def test_float16_store_keeps_the_kernel(graded, model):
    encs, ex, _ = graded[3]
    with fill_store(model, encs, dtype="float16", max_ram_bytes=0) as half:  # max_ram_bytes=0: a disk memmap
        assert half.on_disk and half.scaled and half.block(half.layout[0][0]).dtype == np.float16
        assert np.allclose(half.norms, np.sqrt(np.diag(ex.gram)), rtol=1e-5)
        approx = exact_from_store(half)
    assert np.abs(approx.kernel - ex.kernel).max() < 1e-4  # float16 rounding, averaged over 21K entries
    assert approx.gvendi == pytest.approx(ex.gvendi, rel=1e-4)


def test_graded_sets_are_graded(graded):
    values = [ex.gvendi for _, ex, _ in graded]
    assert values == sorted(values) and values[0] < 1.5 and values[-1] > 20  # N = 24


def test_dense_reference_matches_exact_within_jl_error(graded):
    d = 2048
    tol = math.sqrt(2 / d)  # std of a projected cosine
    for _, ex, store in graded:
        y = dense_from_store(store, d, seed=0).double().numpy()
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        err = np.abs(y @ y.T - ex.kernel)
        assert err.mean() < tol and err.max() < 5 * tol
        assert gvendi_from_vectors(y) == pytest.approx(ex.gvendi, rel=0.05)


def test_fast_gvendi_within_3_percent_of_exact_and_ranks_sets(graded, model):
    """Fast G-Vendi vs exact (d = ∞) on 4 graded sets, for several seeds.

    A random projection's error on G-Vendi shrinks with the number of independent blocks it averages and
    with d. This model has only 15 matrices (SmolLM2: 211) and gradients of dimension 21K, so it needs
    block = 32 (its 64-wide sides still compressed 2x, the 32-wide ones kept exactly; the 64 x 32 embedding
    kept exactly) and d = 8192 to be within 3 % (the second stage is the default sign hash, whose variance
    is that of a dense ±1/√d matrix); with block = 8, d = 1024 its G-Vendi scatters by about ±10 % (and the
    dense d = 1024 reference alone by ±7 %: any projection to d = 1024 has that floor here).
    """
    exact = [ex.gvendi for _, ex, _ in graded]
    for seed in range(3):
        kp = KroneckerProjector(model, d=8192, seed=seed, block=32, embed_block=64, cache_bytes=1 << 30)
        fast = [gvendi_from_vectors(kp.project(*_batch(encs)).vectors) for encs, _, _ in graded]
        rel = [f / e - 1 for f, e in zip(fast, exact, strict=True)]
        assert max(abs(r) for r in rel) < 0.03, (seed, rel)
        assert np.argsort(fast).tolist() == np.argsort(exact).tolist()
