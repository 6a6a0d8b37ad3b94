"""The shipped SmolLM2-135M-Instruct proxy: real loading path, completion-only mask, finite loss, fast blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prismatic.config import ModelConfig, ScoringConfig
from prismatic.gradients.kronecker import KroneckerProjector
from prismatic.gradients.model import IGNORE_INDEX, collate, load_model, weights_sha256
from prismatic.gradients.persample import per_sample_gradients
from prismatic.gradients.scoring import Scorer

pytestmark = pytest.mark.model
SMOLLM2_GGUF_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PROMPT = "What is 12 plus 30?"
COMPLETION = "12 + 30 = 42. The answer is 42."


@pytest.fixture(scope="module")
def scorer():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield Scorer(load_model(ModelConfig(path="builtin:smollm2", device="cpu")), ScoringConfig(d=1024))
    torch.set_num_threads(n)


def test_builtin_smollm2_loads_from_the_converted_cache(scorer):
    loaded = scorer.loaded
    record = json.loads((loaded.path / "prismatic_source.json").read_text())
    assert record["source_sha256"] == SMOLLM2_GGUF_SHA and list(loaded.path.glob("*.safetensors"))
    # the spec names what was loaded (the converted safetensors), recomputed here from the files themselves
    assert loaded.model_id == "builtin:smollm2" and loaded.weights_sha256 == weights_sha256(loaded.path)
    assert loaded.weights_sha256 == record["weights_sha256"] != SMOLLM2_GGUF_SHA
    assert scorer.spec.weights_sha256 == loaded.weights_sha256 and scorer.spec.kind == "kronecker"
    m = loaded.model
    assert type(m).__name__ == "LlamaForCausalLM" and m.config.num_hidden_layers == 30
    assert m.lm_head.weight is m.model.embed_tokens.weight and m.model.embed_tokens.padding_idx == 2
    assert not any(p.requires_grad for p in m.parameters())


def test_completion_only_mask_and_finite_loss(scorer):
    tok = scorer.loaded.tokenizer
    e = scorer.encode(PROMPT, COMPLETION)
    start = e.labels.index(next(v for v in e.labels if v != IGNORE_INDEX))
    assert all(v == IGNORE_INDEX for v in e.labels[:start])
    assert e.labels[start:] == e.input_ids[start:]
    assert tok.decode(e.input_ids[start:]) == COMPLETION + "<|im_end|>"
    assert tok.decode(e.input_ids[:start]).endswith(f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    assert e.n_tokens == len(e) - start and not e.truncated
    out = scorer.score([(PROMPT, COMPLETION), ("Is the sky green? Answer yes or no.", "no")])
    assert [r.error for r in out] == [None, None]
    assert all(np.isfinite(r.loss) and 0 < r.loss < 10 for r in out)
    assert out[0].loss < 3  # an easy sum: the instruct model is not guessing
    v = np.stack([r.vector for r in out])
    assert v.shape == (2, 1024) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_fast_blocks_equal_autograd_on_the_real_model(scorer):
    model = scorer.loaded.model
    params = r"layers\.29\.(self_attn\.o_proj|mlp\.down_proj|post_attention_layernorm)|^model\.norm"
    encs = [scorer.encode(PROMPT, COMPLETION), scorer.encode("Hi", "Hello! How can I help?")]
    kp = KroneckerProjector(model, d=256, seed=0, block=8, params=params)
    ids, labels = collate(encs, pad_id=2)
    blocks, loss, _ = kp.blocks(ids, labels, torch.tensor([len(e) for e in encs]))
    for b, r in enumerate(per_sample_gradients(model, encs, params=params)):
        assert loss[b].item() == pytest.approx(r.loss, rel=1e-4)
        assert len(r.grads) == 4
        for name, g in r.grads.items():
            g = g.double()
            if name in kp.matrices:
                m_o, m_i = (m.double() for m in kp.matrices[name])
                g = m_o.T @ g @ m_i
            got = blocks[name][b].double()
            assert torch.allclose(got, g.reshape(-1), rtol=1e-3, atol=1e-4 * g.abs().max().item()), name
